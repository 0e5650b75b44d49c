"""Mode objects: shorthands, network checks, raw Pyro SVI on CGModel, any guide, pickling,
and predict on any Pyro model + guide — each against a ground truth."""

import functools
import io
import math
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal

from pyrocg import infer, layers, models, modes
from pyrocg.data import DataSplits, Split


def toy_data(n=150, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, k, generator=g)).argmax(-1)
    cut = int(0.8 * n)
    return DataSplits(Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:]), Split(x[cut:], y[cut:]),
                      "classification", "toy", (d,), num_classes=k)


# -- shorthands ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, params, expected", [
    ("feedforward", {}, modes.FeedForward()),
    ("pcff", {"rate": 0.3}, modes.PCFF(0.3)),
    ("pcff", {"rate": {"hidden*": 1.0}, "default": 0.2}, modes.PCFF({"hidden*": 1.0}, 0.2)),
    ("dropout", {}, modes.Dropout()),
    ("mc-dropout", {}, modes.MCDropout()),
    ("bayes", {"local_reparam": True}, modes.BayesianWeights(local_reparam=True)),
    ("bayes", {"prior": modes.GaussianPrior(2.0)},
     modes.BayesianWeights(prior=modes.GaussianPrior(2.0))),
    ("pcff-sampling", {"rate": 0.4}, modes.AncestralSampling(0.4)),
])
def test_shorthands_resolve_to_mode_objects(name, params, expected):
    mode = modes.get_mode(name, **params)
    assert type(mode) is type(expected) and mode == expected
    assert mode.name == name and modes.MODES[name] is type(mode)
    assert modes.get_mode(mode) is mode  # objects pass through
    # CGModel resolves with the same function (its own `prior` is the prior of any mode).
    net = models.mlp(4, [6], 3, dropout=0.2)
    cg = infer.CGModel(net, infer.Categorical(10), name, **params)
    if "prior" in params:
        assert cg.prior == params["prior"] and cg.mode == modes.BayesianWeights()
    else:
        assert cg.mode == expected


def test_mode_attributes_are_the_modes_semantics():
    table = {  # stochastic prediction, default passes, uses dropout, random weights
        modes.FeedForward(): (False, 1, False, False),
        modes.PCFF(0.3): (False, 1, False, False),
        modes.Dropout(): (False, 1, True, False),
        modes.MCDropout(): (True, 100, True, False),
        modes.BayesianWeights(): (True, 100, False, True),
        modes.AncestralSampling(): (True, 100, False, False),
    }
    for mode, expected in table.items():
        got = (mode.stochastic_prediction, mode.num_samples, mode.uses_dropout,
               mode.random_weights)
        assert got == expected, mode
    assert modes.AncestralSampling().rate == 1.0 and modes.PCFF().rate == 0.5
    assert modes.mode_parameters("bayes") == ("prior", "guide", "local_reparam", "init_scale")


@pytest.mark.parametrize("make, exc, match", [
    (lambda: modes.get_mode("gibbs"), ValueError,
     r"unknown mode 'gibbs'; expected one of \('feedforward', 'pcff', 'dropout', 'mc-dropout', "
     r"'bayes', 'pcff-sampling', 'pcff-learned', 'dropout-learned'\)"),
    (lambda: modes.get_mode("pcff", rate=1.5), ValueError, r"rate must be a number in \[0, 1\]"),
    (lambda: modes.PCFF({"hidden*": -0.1}), ValueError, r"rate\['hidden\*'\]"),
    (lambda: modes.PCFF(True), ValueError, "rate must be a number"),
    (lambda: modes.get_mode("feedforward", rate=0.3), TypeError,
     "mode 'feedforward' takes no parameter 'rate' \\(its parameters: none\\)"),
    (lambda: modes.get_mode("pcff", p=0.3), TypeError,
     "takes no parameter 'p' \\(its parameters: rate, default\\)"),
    (lambda: modes.get_mode(modes.PCFF(), rate=0.1), TypeError, "already built"),
    (lambda: modes.get_mode(3), TypeError, "mode must be a Mode or one of"),
    (lambda: modes.BayesianWeights(init_scale=0.0), ValueError, "init_scale"),
    (lambda: modes.BayesianWeights(guide=3), TypeError, "guide must be"),
    (lambda: modes.BayesianWeights(prior=1.0), TypeError, "prior must be a GaussianPrior"),
    (lambda: modes.BayesianWeights(local_reparam=1), TypeError, "local_reparam must be a bool"),
    (lambda: modes.BayesianWeights(guide=AutoNormal, local_reparam=True), ValueError,
     "leave guide=None"),
    (lambda: infer.CGModel(models.mlp(4, [6], 3), infer.Categorical(10),
                           modes.BayesianWeights(prior=modes.GaussianPrior(1.0)),
                           prior=modes.GaussianPrior(2.0)), ValueError, "prior is given twice"),
    (lambda: infer.CGModel(models.mlp(4, [6], 3), infer.Categorical(10),
                           modes.BayesianWeights(guide=lambda m: "not a module")), TypeError,
     "must return an nn.Module"),
])
def test_bad_modes_and_parameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# -- every mode x every model builder -----------------------------------------------------

BUILDERS = {
    "mlp": lambda: models.mlp(6, [5], 3),
    "mlp-dropout": lambda: models.mlp(6, [5, 5], 3, dropout=0.2),
    "cnn": lambda: models.cnn(1, 3, image_size=8, channels=(2, 2), hidden=4),
    "cnn-dropout": lambda: models.cnn(1, 3, image_size=8, channels=(2, 2), hidden=4, dropout=0.3),
    "resnet20": lambda: models.resnet20(1, 3),
    "linear": lambda: models.mlp(6, [], 3),
    "indrnn": lambda: layers.Sequential(layers.IndRNN(3, 4), layers.Dense(4, 2, node=None)),
}
INPUTS = {"mlp": (6,), "mlp-dropout": (6,), "cnn": (1, 8, 8), "cnn-dropout": (1, 8, 8),
          "linear": (6,)}
MODES = {
    "feedforward": modes.FeedForward(),
    "pcff": modes.PCFF(0.3),
    "pcff-sampling": modes.AncestralSampling(0.5),
    "dropout": modes.Dropout(),
    "mc-dropout": modes.MCDropout(),
    "bayes": modes.BayesianWeights(),
    "bayes-lrt": modes.BayesianWeights(local_reparam=True),
    "pcff-learned": modes.LearnedPCFF(),
    "dropout-learned": modes.LearnedDropout(),
}
DROPOUT_ERROR = r"needs dropout nodes, but this network has no pyrocg.layers.Dropout.*dropout=0.2"
NODES_ERROR = r"samples node sites, but this network has none.*use FeedForward"
LRT_ERROR = r"local_reparam=True\): local reparametrisation covers .*Dense and Conv layers only"
# The ground truth: which mode does not fit which network, and why.
MISFITS = {
    ("dropout", b): ("Dropout " + DROPOUT_ERROR) for b in ("mlp", "cnn", "resnet20", "linear",
                                                          "indrnn")
} | {
    ("mc-dropout", b): ("MCDropout " + DROPOUT_ERROR) for b in ("mlp", "cnn", "resnet20",
                                                               "linear", "indrnn")
} | {
    ("pcff", "linear"): "PCFF " + NODES_ERROR,
    ("pcff-sampling", "linear"): "AncestralSampling " + NODES_ERROR,
    ("bayes-lrt", "indrnn"): LRT_ERROR,
    ("pcff-learned", "linear"): "LearnedPCFF " + NODES_ERROR,
} | {
    ("dropout-learned", b): ("LearnedDropout " + DROPOUT_ERROR) for b in (
        "mlp", "cnn", "resnet20", "linear", "indrnn")
}


@pytest.mark.parametrize("builder", list(BUILDERS))
@pytest.mark.parametrize("mode_name", list(MODES))
def test_mode_checks_the_network(mode_name, builder):
    torch.manual_seed(0)
    net, mode = BUILDERS[builder](), MODES[mode_name]
    error = MISFITS.get((mode_name, builder))
    if error:
        with pytest.raises(ValueError, match=error):
            infer.CGModel(net, infer.Categorical(10), mode)
        return
    model = infer.CGModel(net, infer.Categorical(10), mode)
    if builder in INPUTS:  # a training step and a prediction run (resnet20: construction)
        x, y = torch.randn((4,) + INPUTS[builder]), torch.tensor([0, 1, 2, 0])
        assert torch.isfinite(model.loss(x, y))
        pred = infer.predict(model, x, y, num_samples=3)
        assert pred.outputs.shape == (3 if mode.stochastic_prediction else 1, 4, 3)


def test_mc_dropout_check_prevents_identical_passes():
    """The bug the check closes: MC dropout on a net without dropout gave T identical
    passes; the check refuses it, and with dropout the passes differ."""
    net = models.mlp(6, [8], 3)
    with handlers_mc_dropout():
        passes = net(torch.randn(1, 6).expand(5, 1, 6))
    assert torch.equal(passes[0], passes[4])  # what the mode would have averaged
    with pytest.raises(ValueError, match="MCDropout needs dropout nodes"):
        infer.CGModel(net, infer.Categorical(10), "mc-dropout")
    model = infer.CGModel(models.mlp(6, [8], 3, dropout=0.5), infer.Categorical(10), "mc-dropout")
    out = infer.predict(model, torch.randn(1, 6), num_samples=5).outputs
    assert not torch.equal(out[0], out[4])


def handlers_mc_dropout():
    from pyrocg import handlers

    return handlers.mc_dropout()


# -- raw Pyro SVI -------------------------------------------------------------------------

def _bayes_model(guide=None, local_reparam=False, n=64):
    torch.manual_seed(0)
    net = models.mlp(5, [8], 3)
    mode = modes.BayesianWeights(prior=modes.GaussianPrior(1.0, biases=True), guide=guide,
                                 local_reparam=local_reparam, init_scale=0.1)
    return infer.CGModel(net, infer.Categorical(n), mode)


@pytest.mark.parametrize("kind", ["mean-field", "local-reparam", "autonormal"])
def test_raw_pyro_svi_trains_the_guide_and_matches_fit_objective(kind):
    data = toy_data()
    model = _bayes_model(guide=AutoNormal if kind == "autonormal" else None,
                         local_reparam=kind == "local-reparam", n=len(data.train))
    x, y = data.train.x[:32], data.train.y[:32]
    model.initialize(x, y)
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    # Same draws, same objective: SVI's loss is the ELBO, CGModel.loss the ELBO per datum.
    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        ours = model.loss(x, y).item()
        pyro.set_rng_seed(seed)
        theirs = svi.evaluate_loss(x, y)
        assert math.isclose(theirs, len(data.train) * ours, rel_tol=1e-5)
    before = {n: p.detach().clone() for n, p in model.guide.named_parameters()}
    assert before  # the guide has parameters, and Pyro's param store sees them:
    stored = {id(p) for _, p in pyro.get_param_store().named_parameters()}
    assert all(id(p) in stored for p in model.guide.parameters())
    pyro.set_rng_seed(0)
    first = sum(svi.evaluate_loss(x, y) for _ in range(20))
    for _ in range(40):
        svi.step(x, y)
    pyro.set_rng_seed(0)
    last = sum(svi.evaluate_loss(x, y) for _ in range(20))
    moved = [n for n, p in model.guide.named_parameters() if not torch.equal(p, before[n])]
    assert sorted(moved) == sorted(before)  # every guide parameter moved
    assert last < first


def test_guide_parameters_have_readable_names_in_the_param_store():
    model = _bayes_model()
    model.loss(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    keys = set(pyro.get_param_store().keys())
    assert {"MeanFieldNormalGuide.locs.hidden1__weight",
            "MeanFieldNormalGuide.rhos.out__bias"} <= keys


# -- any guide ----------------------------------------------------------------------------

GUIDES = {
    "AutoNormal": (AutoNormal, True),
    "AutoDelta": (AutoDelta, False),  # a point mass: every pass the same weights
    "AutoLowRankMultivariateNormal": (functools.partial(AutoLowRankMultivariateNormal, rank=2),
                                      True),
}


@pytest.mark.parametrize("name", list(GUIDES))
def test_autoguides_train_with_fit_and_predict(name):
    guide, stochastic = GUIDES[name]
    data = toy_data()
    model = _bayes_model(guide=guide, n=len(data.train))
    hist = infer.fit(model, data, infer.TrainConfig(epochs=12, batch_size=30, lr=0.03,
                                                    eval_samples=4, progress=False))
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert hist[-1]["val_accuracy"] > 0.6
    pred = infer.predict(model, data.test.x, data.test.y, num_samples=6)
    assert pred.outputs.shape == (6, len(data.test), 3)
    spread = pred.outputs.std(0).max()
    assert spread > 1e-4 if stochastic else spread == 0
    assert torch.isfinite(pred.pointwise_log_lik).all()


def test_autoguide_starts_at_the_network_weights():
    model = _bayes_model(guide=AutoDelta)
    model.initialize(torch.randn(2, 5), torch.tensor([0, 1]))
    draw = model.sample_weights(torch.randn(2, 5))
    for n, p in model.net.named_parameters():
        assert torch.equal(draw.values[n], p.detach()), n


def test_dropout_weight_guide_as_a_builder():
    data = toy_data()
    torch.manual_seed(0)
    mode = modes.BayesianWeights(prior=modes.GaussianPrior(1.0),  # Dense weights only
                                 guide=functools.partial(modes.DropoutWeightGuide, p=0.3))
    model = infer.CGModel(models.mlp(5, [16], 3), infer.Categorical(len(data.train)), mode)
    assert isinstance(model.guide, modes.DropoutWeightGuide)
    assert model.guide.names == ["hidden1", "out"]
    hist = infer.fit(model, data, infer.TrainConfig(epochs=12, batch_size=30, lr=0.02,
                                                    eval_samples=4, progress=False))
    assert hist[-1]["loss"] < hist[0]["loss"]
    # Prediction: weight draws are masked means, W = M diag(z) / (1 - p).
    draw = model.sample_weights(data.test.x)
    z = model.guide.last_masks["hidden1"]
    assert torch.allclose(draw.values["hidden1.weight"], model.guide.mean("hidden1") * z / 0.7)
    pred = infer.predict(model, data.test.x, num_samples=5)
    assert pred.outputs.std(0).max() > 0


# -- pickling -----------------------------------------------------------------------------

PICKLE_MODES = dict(MODES) | {"bayes-autonormal": modes.BayesianWeights(guide=AutoNormal)}


def _roundtrips(model):
    yield "pickle", pickle.loads(pickle.dumps(model))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    yield "torch.save", torch.load(buf, weights_only=False)


@pytest.mark.parametrize("mode_name", list(PICKLE_MODES))
def test_trained_model_pickles_and_predicts_identically(mode_name):
    data = toy_data(n=60)
    torch.manual_seed(0)
    net = models.mlp(5, [8], 3, dropout=0.2)
    model = infer.CGModel(net, infer.Categorical(len(data.train)), PICKLE_MODES[mode_name])
    infer.fit(model, data, infer.TrainConfig(epochs=2, batch_size=16, eval_samples=2,
                                             progress=False))
    x, y = data.test.x, data.test.y
    pyro.set_rng_seed(7)
    expected = infer.predict(model, x, y, num_samples=4)
    pyro.set_rng_seed(7)
    expected_loss = model.loss(x, y)
    for how, copy in _roundtrips(model):
        pyro.clear_param_store()  # as in a fresh process
        assert copy.mode == model.mode
        for (k, a), (k2, b) in zip(model.state_dict().items(), copy.state_dict().items(),
                                   strict=True):
            assert k == k2 and torch.equal(a, b), (how, k)
        pyro.set_rng_seed(7)
        got = infer.predict(copy, x, y, num_samples=4)
        assert torch.equal(got.outputs, expected.outputs), how
        assert torch.equal(got.pointwise_log_lik, expected.pointwise_log_lik), how
        pyro.set_rng_seed(7)
        assert torch.equal(copy.loss(x, y), expected_loss), how


# -- predict on any Pyro model + guide ----------------------------------------------------

def regression_model(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[-2]):
        mean = pyro.deterministic("mean", (x * w).sum(-1) + b)
        return pyro.sample("obs", dist.Normal(mean, 0.5), obs=y)


@pytest.mark.parametrize("parallel", [False, True])
def test_predict_any_pyro_model_and_guide(parallel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.5 * torch.randn(10, generator=g)
    guide = AutoNormal(regression_model)
    svi = SVI(regression_model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(50):
        svi.step(x, y)
    pred = infer.predict(regression_model, x, y, num_samples=7, guide=guide, parallel=parallel,
                         return_sites=["w", "b", "mean", "_RETURN"])
    s = pred.sites
    assert s["w"].shape == (7, 3) and s["b"].shape == (7,) and s["mean"].shape == (7, 10)
    assert torch.equal(s["_RETURN"], y.expand(7, 10))  # observed: the data
    # Ground truth by hand from the returned draws: exact, unmasked pointwise log-likelihoods.
    mean = x @ s["w"].T + s["b"]  # (10, 7)
    assert torch.allclose(s["mean"], mean.T, atol=1e-5)
    ll = dist.Normal(mean.T, 0.5).log_prob(y)
    assert torch.allclose(pred.log_lik, ll, atol=1e-5)
    assert torch.allclose(pred.pointwise_log_lik, torch.logsumexp(ll, 0) - math.log(7))
    assert s["w"].std(0).min() > 0  # different posterior draws per pass
    # Without y: the observed site is predicted (drawn), no log-likelihood.
    post = infer.predict(regression_model, x, num_samples=5, guide=guide, parallel=parallel)
    assert post.sites["obs"].shape == (5, 10) and post.log_lik is None
    assert torch.allclose(post.mean, post.sites["obs"].mean(0))
    assert not torch.equal(post.sites["obs"][0], post.sites["obs"][1])


def test_predict_a_cgmodel_through_its_pyro_model_and_guide():
    """CGModel.model and .guide are an ordinary pair: predict_pyro on them gives the
    likelihood's own pointwise log-likelihood of the training pass."""
    model = _bayes_model(n=10)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    pred = infer.predict(model.model, x, y, num_samples=4, guide=model.guide,
                         return_sites=["_RETURN", "hidden1.weight"])
    logits = pred.sites["_RETURN"]
    assert logits.shape == (4, 6, 3) and pred.sites["hidden1.weight"].shape == (4, 8, 5)
    assert torch.allclose(pred.log_lik, torch.log_softmax(logits, -1).gather(
        -1, y.expand(4, 6)[..., None])[..., 0], atol=1e-6)


def test_cgmodel_predict_returns_sites():
    model = infer.CGModel(models.mlp(5, [8], 3, dropout=0.3), infer.Categorical(10), "mc-dropout")
    pred = infer.predict(model, torch.randn(6, 5), num_samples=5, chunk_size=2,
                         return_sites=["drop1", "hidden1"])
    drop = pred.sites["drop1"]
    assert drop.shape == (5, 6, 8) and pred.sites["hidden1"].shape == (5, 6, 8)
    assert ((drop == 0) | torch.isclose(drop, torch.tensor(1 / 0.7))).all()
    # The passes' outputs follow from the returned masks and node values.
    with torch.no_grad():
        out = model.net.out(pred.sites["hidden1"] * drop)
    assert torch.allclose(out, pred.outputs, atol=1e-5)
    with pytest.raises(ValueError, match="no site 'nope'"):
        infer.predict(model, torch.randn(2, 5), num_samples=2, return_sites=["nope"])


def test_predict_pyro_bad_input():
    with pytest.raises(ValueError, match="name the one of the log-likelihood with obs_site"):
        def two_obs(x, y=None):
            pyro.sample("a", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))
            pyro.sample("b", dist.Normal(0.0, 1.0), obs=torch.tensor(1.0))
        infer.predict(two_obs, torch.randn(2, 3), torch.zeros(2), num_samples=2)
    with pytest.raises(ValueError, match="no site 'z'"):
        infer.predict(regression_model, torch.randn(2, 3), num_samples=2, return_sites=["z"])
    with pytest.raises(ValueError, match="num_samples"):
        infer.predict(regression_model, torch.randn(2, 3), num_samples=0)
    cg = infer.CGModel(models.mlp(5, [4], 3), infer.Categorical(10))
    with pytest.raises(TypeError, match="a CGModel predicts with its own guide"):
        infer.predict(cg, torch.randn(2, 5), guide=cg.guide)


def test_pcff_rate_patterns_must_match_a_node_site():
    net = models.mlp(4, [8, 8], 3)
    CGModel = infer.CGModel
    CGModel(net, infer.Categorical(10), modes.PCFF({"hidden1": 0.5, "hid*": 0.2}))
    for mode in (modes.PCFF({"hiden1": 0.5}), modes.AncestralSampling({"hidden1": 1.0, "x*": 1.0})):
        with pytest.raises(ValueError, match=r"match no node site.*'hidden1', 'hidden2'"):
            CGModel(net, infer.Categorical(10), mode)
