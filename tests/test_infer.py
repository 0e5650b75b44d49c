"""Objectives, guides, predictive and the training loop against plain-PyTorch ground truth."""

import math
from collections import OrderedDict

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F

from pyrocg import handlers, infer, layers, models
from pyrocg.data import DataSplits, Split


def toy_data(n=120, d=5, k=3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, k, generator=g)
    y = (x @ w).argmax(-1)
    x, y = x.to(device), y.to(device)
    cut = int(0.8 * n)
    return DataSplits(Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:]), Split(x[cut:], y[cut:]),
                      "classification", "toy", (d,), num_classes=k)


def test_weight_decay_prior_equals_sgd_weight_decay():
    data = toy_data()
    n, wd = len(data.train), 1e-2
    net = models.mlp(5, [7], 3)
    model = infer.CGModel(net, infer.Categorical(n), prior=infer.GaussianPrior.from_weight_decay(wd, n))
    x, y = data.train.x[:16], data.train.y[:16]
    model.loss(x, y).backward()
    ours = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with handlers.feedforward():
        plain = F.cross_entropy(net(x), y)
    l2 = sum(p.pow(2).sum() for name, p in net.named_parameters() if name.endswith("weight"))
    (plain + 0.5 * wd * l2).backward()
    for a, (name, p) in zip(ours, net.named_parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6), name


def _dropout_setup(p=0.3, s=0.7, batch=6):
    torch.manual_seed(1)
    net = layers.Sequential(OrderedDict(hidden1=layers.Dense(4, 8), out=layers.Dense(8, 3, node=None)))
    prior = infer.GaussianPrior(s)
    guide = infer.DropoutWeightGuide(net, p)
    keep = 1 - p
    guide.fixed_masks = {"hidden1": torch.bernoulli(torch.full((4,), keep)),
                         "out": torch.bernoulli(torch.full((8,), keep))}
    x, y = torch.randn(batch, 4), torch.randint(0, 3, (batch,))
    lik = infer.Categorical(batch)  # dataset = batch: no subsampling rescale

    def model(x, y):
        weights = prior.sample(net)
        with lik.plate(x):
            with handlers.feedforward():
                out = torch.func.functional_call(net, weights, (x,), strict=False)
            lik(out, y)

    return net, guide, model, x, y, keep, s


def test_mc_dropout_guide_elbo_gradient_is_dropout_loss_plus_l2():
    net, guide, model, x, y, keep, s = _dropout_setup()
    loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x, y)
    params = [guide.mean("hidden1"), guide.mean("out"), net.hidden1.bias, net.out.bias]
    ours = torch.autograd.grad(loss, params)
    # Plain PyTorch: dropout with the same masks (inverted scaling), summed CE, L2 on W.
    z1, z2 = guide.fixed_masks["hidden1"], guide.fixed_masks["out"]
    w1, w2 = params[0] * z1 / keep, params[1] * z2 / keep
    h = F.relu(F.dropout(x, 0.0) * z1 / keep @ params[0].T + params[2])
    logits = (h * z2 / keep) @ params[1].T + params[3]
    l2 = (w1.pow(2).sum() + w2.pow(2).sum()) / (2 * s**2)
    plain = F.cross_entropy(logits, y, reduction="sum") + l2
    for a, b in zip(ours, torch.autograd.grad(plain, params), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # Values agree up to the Gaussian normalising constant of the prior.
    const = (w1.numel() + w2.numel()) * math.log(s * math.sqrt(2 * math.pi))
    assert math.isclose(loss.item(), plain.item() + const, rel_tol=1e-5)


def test_mc_dropout_guide_agrees_with_chain_graph_dropout_nodes():
    net, guide, model, x, y, keep, s = _dropout_setup()
    cg = layers.Sequential(OrderedDict(
        drop0=layers.Dropout(1 - keep), hidden1=layers.Dense(4, 8),
        drop1=layers.Dropout(1 - keep), out=layers.Dense(8, 3, node=None)))
    with torch.no_grad():
        cg.hidden1.weight.copy_(guide.mean("hidden1"))
        cg.out.weight.copy_(guide.mean("out"))
        cg.hidden1.bias.copy_(net.hidden1.bias)
        cg.out.bias.copy_(net.out.bias)
    masks = {"drop0": (guide.fixed_masks["hidden1"] / keep).expand(6, 4),
             "drop1": (guide.fixed_masks["out"] / keep).expand(6, 8)}
    with handlers.mc_dropout(), poutine.condition(data=masks):
        cg_out = cg(x)
    tr = poutine.trace(guide).get_trace(x, y)
    weights = {n: tr.nodes[n]["value"] for n in ("hidden1.weight", "out.weight")}
    with handlers.feedforward():
        w_out = torch.func.functional_call(net, weights, (x,), strict=False)
    assert torch.allclose(cg_out, w_out, atol=1e-6)


def test_vectorised_predictive_equals_loop_of_single_passes(device):
    data = toy_data(device=device)
    net = models.mlp(5, [16, 16], 3, dropout=0.3).to(device)
    model = infer.CGModel(net, infer.Categorical(len(data.train)), mode="mc-dropout")
    x, y = data.test.x, data.test.y
    with poutine.trace() as tr:
        pred = infer.predict(model, x, y, num_samples=9, chunk_size=9)
    masks = {n: tr.trace.nodes[n]["value"] for n in ("drop1", "drop2")}
    assert masks["drop1"].shape == (9, len(y), 16)
    for t in range(9):
        with poutine.condition(data={n: m[t] for n, m in masks.items()}):
            out = model.forward_predict(x)
        assert torch.allclose(out, pred.outputs[t], atol=1e-6)
        ll = torch.log_softmax(out, -1).gather(-1, y[:, None])[:, 0]
        assert torch.allclose(pred.log_lik[t], ll, atol=1e-6)
    ref = torch.logsumexp(pred.log_lik, 0) - math.log(9)
    assert torch.allclose(pred.pointwise_log_lik, ref)
    assert torch.allclose(pred.mean, pred.probs.mean(0), atol=1e-6)
    # Chunking changes nothing but memory: same shapes, same statistics family.
    chunked = infer.predict(model, x, y, num_samples=9, chunk_size=4)
    assert chunked.outputs.shape == pred.outputs.shape
    assert torch.allclose(chunked.mean.sum(-1), torch.ones(len(y), device=device))
    assert pred.outputs.device.type == device.type


def test_deterministic_modes_predict_once_and_match_feedforward():
    data = toy_data()
    net = models.mlp(5, [8], 3, dropout=0.2)
    model = infer.CGModel(net, infer.Categorical(len(data.train)), mode="dropout")
    pred = infer.predict(model, data.test.x, num_samples=50)
    assert pred.outputs.shape[0] == 1
    with handlers.feedforward():
        assert torch.allclose(pred.outputs[0], net(data.test.x))


def _params(model):
    return [p.detach().clone() for p in model.state_dict().values()]


@pytest.mark.parametrize("mode", [infer.PCFF(0.4), infer.MCDropout()], ids=["pcff", "mc-dropout"])
def test_resume_after_interrupt_gives_identical_parameters(tmp_path, mode, device):
    data = toy_data(device=device)
    cfg = dict(batch_size=16, optimizer="sgd", lr=0.05, milestones=(2,), eval_samples=3,
               progress=False)

    def make():
        torch.manual_seed(123)
        return infer.CGModel(models.mlp(5, [12], 3, dropout=0.2 if mode.uses_dropout else 0.0),
                             infer.Categorical(len(data.train)), mode).to(device)

    full = make()
    hist_full = infer.fit(full, data, infer.TrainConfig(epochs=4, **cfg))
    ck = tmp_path / "run.pt"
    part = make()
    infer.fit(part, data, infer.TrainConfig(epochs=2, **cfg), checkpoint=ck)
    resumed = make()
    torch.manual_seed(999)  # a fresh process would be in some other RNG state
    hist = infer.fit(resumed, data, infer.TrainConfig(epochs=4, **cfg), checkpoint=ck, resume=True)
    for a, b in zip(_params(full), _params(resumed), strict=True):
        assert torch.equal(a, b)
    assert [h["loss"] for h in hist] == [h["loss"] for h in hist_full]


def test_nan_loss_stops_cleanly_with_last_good_checkpoint_kept(tmp_path):
    data = toy_data()
    model = infer.CGModel(models.mlp(5, [8], 3), infer.Categorical(len(data.train)))
    ck = tmp_path / "run.pt"
    cfg = infer.TrainConfig(epochs=1, batch_size=16, progress=False)
    infer.fit(model, data, cfg, checkpoint=ck)
    good = infer.load_checkpoint(ck)
    bad_x = data.train.x.clone()
    bad_x[5, 0] = float("nan")
    bad = DataSplits(Split(bad_x, data.train.y), data.val, data.test, "classification", "toy",
                     (5,), num_classes=3)
    from pyrocg.validation import validation_enabled

    # The data check (on by default) refuses NaN features before training; with it off the
    # NaN reaches the loss and training stops there.
    with pytest.raises(ValueError, match=r"data.train.x has 1 NaN .* at index \(5, 0\)"):
        infer.fit(model, bad, infer.TrainConfig(epochs=3, batch_size=16, progress=False),
                  checkpoint=ck, resume=True)
    with validation_enabled(False), pytest.raises(
            infer.TrainingDiverged, match="loss became nan at epoch 2.*is kept"):
        infer.fit(model, bad, infer.TrainConfig(epochs=3, batch_size=16, progress=False),
                  checkpoint=ck, resume=True)
    after = infer.load_checkpoint(ck)
    assert after["epoch"] == 1
    for k, v in good["model"].items():
        assert torch.equal(v, after["model"][k])
    assert not list(tmp_path.glob(".*.tmp"))  # no torn temporary files left behind


def test_bayes_mode_trains_and_has_predictive_spread(device):
    data = toy_data(device=device)
    model = infer.CGModel(models.mlp(5, [16], 3), infer.Categorical(len(data.train)), mode="bayes",
                          prior=infer.GaussianPrior(1.0, biases=True)).to(device)
    hist = infer.fit(model, data, infer.TrainConfig(epochs=15, batch_size=32, lr=0.02,
                                                    eval_samples=5, progress=False))
    assert hist[-1]["loss"] < hist[0]["loss"]
    pred = infer.predict(model, data.test.x, data.test.y, num_samples=10)
    assert pred.outputs.shape == (10, len(data.test), 3)
    assert pred.outputs.std(0).mean() > 1e-3  # different weight draws
    assert hist[-1]["val_accuracy"] > 0.6
    names = [n for n, _ in model.named_parameters()]
    assert any("locs" in n for n in names) and any("rhos" in n for n in names)


def test_training_learns_and_matches_plain_feedforward_accuracy():
    data = toy_data(n=400)
    model = infer.CGModel(models.mlp(5, [32], 3), infer.Categorical(len(data.train)))
    hist = infer.fit(model, data, infer.TrainConfig(epochs=20, batch_size=32, lr=0.01,
                                                    progress=False))
    assert hist[-1]["val_accuracy"] > 0.85
    res = infer.evaluate(model, data.test.x, data.test.y)
    with handlers.feedforward():
        acc = (model.net(data.test.x).argmax(-1) == data.test.y).double().mean()
    assert math.isclose(res["accuracy"], float(acc), rel_tol=1e-6)


def test_arviz_loo_from_prediction():
    data = toy_data()
    model = infer.CGModel(models.mlp(5, [16], 3, dropout=0.3), infer.Categorical(len(data.train)),
                          mode="mc-dropout")
    pred = infer.predict(model, data.test.x, data.test.y, num_samples=40)
    from pyrocg.diagnostics import to_inference_data

    idata = to_inference_data(pred, data.test.y, chains=2)
    assert idata.log_likelihood["y"].shape == (2, 20, len(data.test))
    values = torch.as_tensor(idata.log_likelihood["y"].values).reshape(40, -1)
    assert torch.allclose(values.double(), pred.log_lik.double())


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: infer.CGModel(models.mlp(5, [4], 3), infer.Categorical(10), mode="gibbs"),
         ValueError, "unknown mode 'gibbs'"),
        (lambda: infer.CGModel(models.mlp(5, [4], 3), infer.Categorical(10), "pcff", rate=1.5),
         ValueError, r"rate must be a number in \[0, 1\]"),
        (lambda: infer.CGModel(models.mlp(5, [4], 3), infer.Categorical(10), rate=0.5),
         TypeError, "mode 'feedforward' takes no parameter 'rate'"),
        (lambda: infer.CGModel(models.mlp(5, [4], 3), "categorical"), TypeError, "Likelihood"),
        (lambda: infer.Categorical(0), ValueError, "dataset_size"),
        (lambda: infer.TrainConfig(optimizer="lbfgs"), ValueError, "optimizer"),
        (lambda: infer.TrainConfig(epochs=0), ValueError, "epochs"),
        (lambda: infer.GaussianPrior(-1.0), ValueError, "prior scale"),
        (lambda: infer.load_checkpoint("/nonexistent/ck.pt"), FileNotFoundError, "no checkpoint"),
    ],
)
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_labels_and_features():
    model = infer.CGModel(models.mlp(5, [4], 3), infer.Categorical(10))
    with pytest.raises(ValueError, match=r"labels y must be in \[0, 3\)"):
        model.loss(torch.randn(4, 5), torch.tensor([0, 1, 3, 2]))
    with pytest.raises(TypeError, match="int64"):
        model.loss(torch.randn(4, 5), torch.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 5\)"):
        model.loss(torch.randn(4, 6), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="num_samples"):
        infer.predict(model, torch.randn(4, 5), num_samples=0)
    mc = infer.CGModel(models.mlp(5, [4], 3, dropout=0.5), infer.Categorical(10), "mc-dropout")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        infer.predict(mc, torch.randn(4, 5), num_samples=3, chunk_size=0)
    with pytest.raises(ValueError, match="memory_budget must be a positive int"):
        infer.predict(mc, torch.randn(4, 5), num_samples=3, memory_budget=2.5)


def test_row_chunks_keep_the_shared_trunk_computed_once_and_assemble_exactly():
    from pyrocg.infer.predictive import _per_pass

    torch.manual_seed(0)
    net = models.cnn(1, 4, 8, channels=(4, 6), hidden=16, dropout=0.3)
    model = infer.CGModel(net, infer.Categorical(100), "mc-dropout")
    model.eval()
    x, y = torch.rand(10, 1, 8, 8), torch.randint(0, 4, (10,))
    # The conv trunk sits below the first dropout site: it costs nothing per pass; what
    # does is drop1 (24 flattened trunk values), hidden (16), drop2 (16) and the output (4).
    T, per_pass = 50, _per_pass(model, x)
    assert per_pass == 24 + 16 + 16 + 4
    budget = per_pass * T * 3  # three rows with all T passes per chunk
    pyro.set_rng_seed(1)
    chunked = infer.predict(model, x, y, num_samples=T, memory_budget=budget)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        _per_pass(model, x)  # predict's probe pass draws first
        parts = [model.forward_predict(x[i:i + 3].expand((T,) + x[i:i + 3].shape))
                 for i in range(0, 10, 3)]
    assert torch.equal(chunked.outputs, torch.cat(parts, dim=1))
    ll = torch.log_softmax(chunked.outputs, -1).gather(-1, y.expand(T, 10)[..., None])[..., 0]
    assert torch.allclose(chunked.log_lik, ll, atol=1e-6)
    # Same predictive distribution as all passes in one batch (T = 2000: MC error ~0.01).
    pyro.set_rng_seed(2)
    a = infer.predict(model, x, num_samples=2000, memory_budget=per_pass * 2000 * 3).mean
    b = infer.predict(model, x, num_samples=2000, chunk_size=2000).mean
    assert (a - b).abs().max() < 0.03
