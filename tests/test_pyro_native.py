"""pyrocg networks through Pyro's own machinery: plates, PyroSample priors and autoguides,
enumeration, replay/condition and guides around the mode handlers."""

import itertools
import math
from collections import OrderedDict

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal
from pyro.nn import PyroSample

from pyrocg import handlers, layers, models
from pyrocg.infer.discrete import infer_discrete
from pyrocg.nodes import BinaryNode

MODES = {
    "none": None,
    "feedforward": handlers.feedforward,
    "pcff": lambda: handlers.pcff(0.5),
    "mc_dropout": handlers.mc_dropout,
    "marginalize_dropout": handlers.marginalize_dropout,
}


def _handled(mode, fn):
    return fn if MODES[mode] is None else MODES[mode]()(fn)


def _samples(tr):
    return {n: s for n, s in tr.nodes.items() if s["type"] == "sample"}


# --- 1. categorical layers inside a plate --------------------------------------------------

@pytest.mark.parametrize("mode", list(MODES))
def test_categorical_layer_shapes_and_log_density_inside_a_plate(mode):
    net = layers.Sequential(OrderedDict(
        cat=layers.Dense(4, 3, node="categorical"), out=layers.Dense(3, 2, node=None)))
    x = torch.randn(5, 4)

    def model(x):
        with pyro.plate("data", 5):
            return net(x)

    tr = poutine.trace(_handled(mode, model)).get_trace(x)
    out, site = tr.nodes["_RETURN"]["value"], tr.nodes["cat"]
    assert out.shape == (5, 2)
    value = site["value"]
    assert value.shape == (5, 3)
    energy = F.linear(x, net.cat.weight, net.cat.bias)
    if site["is_observed"]:  # a mode chose the value: no log-density
        assert mode not in ("none", "marginalize_dropout")
        assert float(site["fn"].log_prob(value).abs().sum()) == 0.0
        if mode in ("feedforward", "mc_dropout"):
            assert torch.allclose(value, torch.softmax(energy, -1))
    else:  # ancestral: one-hot values, each datum's log p counted once
        assert torch.equal(value.sum(-1), torch.ones(5))
        hand = (value * torch.log_softmax(energy, -1)).sum(-1)
        tr.compute_log_prob()
        assert site["log_prob"].shape == (5,)
        assert torch.allclose(site["log_prob"], hand)
        assert torch.allclose(tr.log_prob_sum(), hand.sum())
    assert torch.allclose(out, F.linear(value, net.out.weight, net.out.bias), atol=1e-6)


# --- 2. the standard Pyro BNN idiom ---------------------------------------------------------

def _bayesian_mlp():
    net = models.mlp(4, [6], 3, dropout=0.2)
    for module, name, shape in ((net.hidden1, "weight", (6, 4)), (net.hidden1, "bias", (6,)),
                                (net.out, "weight", (3, 6)), (net.out, "bias", (3,))):
        setattr(module, name, PyroSample(dist.Normal(0.0, 1.0).expand(shape).to_event(len(shape))))
    return net


def _toy_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


@pytest.mark.parametrize("guide_cls", [AutoNormal, AutoDelta, AutoLowRankMultivariateNormal])
@pytest.mark.parametrize("handler", [handlers.feedforward, handlers.mc_dropout])
def test_pyrosample_priors_and_autoguides_train_with_the_net_outside_the_plate(guide_cls, handler):
    net = _bayesian_mlp()
    x, y = _toy_data()

    def model(x, y=None):
        with handler():  # the network outside any plate: only the labels are in one
            logits = net(x)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = guide_cls(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(150)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-20:]) / 20 < 0.9 * sum(losses[:5]) / 5
    sites = {n: s for n, s in _samples(poutine.trace(guide).get_trace(x, y)).items()
             if not s["infer"].get("is_auxiliary")}
    assert set(sites) == {"hidden1.weight", "hidden1.bias", "out.weight", "out.bias"}

    # Weights fixed (the guide's median): feed-forward output equals the plain PyTorch
    # network, and it has learnt the labels.
    weights = {n: v.detach() for n, v in guide.median(x, y).items()}
    with handlers.feedforward():
        got = poutine.condition(net, data=weights)(x)
    majority = float(torch.bincount(y).max()) / len(y)
    assert float((got.argmax(-1) == y).double().mean()) >= 0.7 > majority + 0.1
    plain = F.linear(torch.relu(F.linear(x, weights["hidden1.weight"], weights["hidden1.bias"])),
                     weights["out.weight"], weights["out.bias"])
    assert torch.allclose(got, plain, atol=1e-6)


# --- 3. exact enumeration of small discrete layers -----------------------------------------

def _sigmoid_belief_net(units, node="binary", in_features=4, classes=3):
    torch.manual_seed(1)
    return layers.Sequential(OrderedDict(
        hidden=layers.Dense(in_features, units, node=node),
        out=layers.Dense(units, classes, node=None))).double()


def _brute_force(net, x, y, units, values):
    """log p(y_i | x_i) and the MAP configuration per datum, over every configuration."""
    energy = F.linear(x, net.hidden.weight, net.hidden.bias)
    best_lp, best, total = None, None, []
    for config in itertools.product(values, repeat=units):
        h = torch.tensor(config, dtype=x.dtype).expand(x.shape[0], units)
        lp = BinaryNode(energy).log_prob(h).sum(-1)
        lp = lp + torch.log_softmax(F.linear(h, net.out.weight, net.out.bias), -1).gather(
            -1, y[:, None])[:, 0]
        total.append(lp)
        if best_lp is None:
            best_lp, best = lp, h.clone()
        else:
            better = lp > best_lp
            best_lp = torch.where(better, lp, best_lp)
            best = torch.where(better[:, None], h, best)
    return torch.logsumexp(torch.stack(total), 0), best


@pytest.mark.parametrize("units", [1, 3])
def test_trace_enum_elbo_equals_brute_force_marginal_likelihood(units):
    net = _sigmoid_belief_net(units)
    x = torch.randn(7, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 1])

    @config_enumerate
    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=net(x)), obs=y)

    def guide(x, y):
        pass

    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    exact, map_config = _brute_force(net, x, y, units, (0.0, 1.0))
    losses = [elbo.loss(model, guide, x, y) for _ in range(3)]
    assert losses[0] == losses[1] == losses[2]  # exact, not Monte Carlo
    assert abs(losses[0] - float(-exact.sum().detach())) < 1e-5
    # Differentiable and exact: the gradient matches the brute-force objective's.
    loss = elbo.differentiable_loss(model, guide, x, y)
    g = torch.autograd.grad(loss, net.hidden.weight)[0]
    g_exact = torch.autograd.grad(-_brute_force(net, x, y, units, (0.0, 1.0))[0].sum(),
                                  net.hidden.weight)[0]
    assert torch.allclose(g, g_exact, atol=1e-8)

    tr = poutine.trace(infer_discrete(model, first_available_dim=-2, temperature=0)).get_trace(x, y)
    site = tr.nodes["hidden"]
    assert not site["is_observed"] and site["value"].shape == (7, units)
    assert torch.equal(site["value"], map_config)


def test_categorical_layer_enumerates_its_categories():
    torch.manual_seed(0)
    net = layers.Sequential(OrderedDict(
        cat=layers.Dense(4, 5, node="categorical"), out=layers.Dense(5, 2, node=None))).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0])

    @config_enumerate
    def model(x, y):
        with pyro.plate("data", 6):
            pyro.sample("y", dist.Categorical(logits=net(x)), obs=y)

    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda x, y: None, x, y)
    prior = torch.log_softmax(F.linear(x, net.cat.weight, net.cat.bias), -1)  # (6, 5)
    lik = torch.log_softmax(F.linear(torch.eye(5, dtype=x.dtype), net.out.weight, net.out.bias), -1)
    exact = torch.logsumexp(prior + lik[:, y].T, -1).sum()
    assert abs(loss + float(exact.detach())) < 1e-8


def test_too_large_a_layer_gives_a_clear_error():
    net = _sigmoid_belief_net(13)
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 1, 2])

    @config_enumerate
    def model(x, y):
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Categorical(logits=net(x)), obs=y)

    with pytest.raises(ValueError, match=r"layer 'hidden'.*2\*\*13 = 8.19e\+03"):
        TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda x, y: None, x, y)


def test_mode_handlers_leave_enumerated_sites_to_the_enumerator():
    # A relu layer collapsed by feedforward(), a binary layer above it enumerated exactly.
    torch.manual_seed(2)
    net = layers.Sequential(OrderedDict(
        feat=layers.Dense(4, 5), hidden=layers.Dense(5, 2, node="binary"),
        out=layers.Dense(2, 3, node=None))).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0])

    def model(x, y):
        with pyro.plate("data", 6):
            pyro.sample("y", dist.Categorical(logits=net(x)), obs=y)

    feat = torch.relu(F.linear(x, net.feat.weight, net.feat.bias))
    sub = layers.Sequential(OrderedDict(hidden=net.hidden, out=net.out))
    exact, _ = _brute_force(sub, feat, y, 2, (0.0, 1.0))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    # config_enumerate inside or outside the mode handler: the same exact objective.
    for wrapped in (handlers.feedforward(config_enumerate(model)),
                    config_enumerate(handlers.feedforward(model))):
        loss = elbo.loss(wrapped, lambda x, y: None, x, y)
        assert abs(loss + float(exact.sum().detach())) < 1e-8


# --- 4. outer Pyro handlers take precedence ------------------------------------------------

def test_predictive_and_vectorised_particles_on_the_bnn_idiom():
    net = _bayesian_mlp()
    x, y = _toy_data(12)

    def model(x, y=None, handler=handlers.mc_dropout):
        with handler():
            logits = net(x)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = AutoNormal(model)
    guide(x, y)  # build its parameters
    pred = pyro.infer.Predictive(model, guide=guide, num_samples=30,
                                 return_sites=["y", "drop1"])(x)
    # A site with no batch dims (the net is outside the plate) gets Pyro's padding dim, as
    # pyro.deterministic does.
    assert pred["y"].shape == (30, 12) and pred["drop1"].shape == (30, 1, 12, 6)
    masks = pred["drop1"][:, 0]
    assert not torch.equal(masks[0], masks[1])  # independent masks per draw, keep rate 0.8
    assert abs(float((masks > 0).double().mean()) - 0.8) < 0.05

    # Vectorised ELBO particles draw weights with batch dims (particles, 1, out, in): Dense
    # layers broadcast them against the data. A point guide makes every particle equal.
    delta = AutoDelta(lambda x, y: model(x, y, handlers.feedforward))
    delta(x, y)
    ff = (x, y, handlers.feedforward)
    one = Trace_ELBO().loss(model, lambda *a: delta(x, y), *ff)
    vec = Trace_ELBO(num_particles=7, vectorize_particles=True, max_plate_nesting=1).loss(
        model, lambda *a: delta(x, y), *ff)
    assert abs(one - vec) < 1e-3 * abs(one)


def _gaussian_dropout_net():
    return models.mlp(6, [10, 8], 3, node="gaussian", dropout=0.3)


def _plated(net):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            return net(x)
    return model


@pytest.mark.parametrize("mode", [m for m in MODES if m != "none"])
def test_replay_and_condition_outside_equal_inside(mode):
    net, x = _gaussian_dropout_net(), torch.randn(5, 6)
    model = _plated(net)
    ancestral = poutine.trace(model).get_trace(x)
    data = {n: s["value"] for n, s in _samples(ancestral).items()}
    runs = {
        "replay inside": _handled(mode, poutine.replay(model, trace=ancestral)),
        "replay outside": poutine.replay(_handled(mode, model), trace=ancestral),
        "condition inside": _handled(mode, poutine.condition(model, data=data)),
        "condition outside": poutine.condition(_handled(mode, model), data=data),
    }
    traces = {k: poutine.trace(f).get_trace(x) for k, f in runs.items()}
    for kind in ("replay", "condition"):
        inside, outside = traces[f"{kind} inside"], traces[f"{kind} outside"]
        for name in data:
            assert torch.equal(inside.nodes[name]["value"], data[name])
            assert torch.equal(outside.nodes[name]["value"], data[name])
            assert inside.nodes[name]["is_observed"] == outside.nodes[name]["is_observed"]
        assert torch.equal(inside.nodes["_RETURN"]["value"], outside.nodes["_RETURN"]["value"])
        lp_in, lp_out = inside.log_prob_sum(), outside.log_prob_sum()
        assert torch.allclose(lp_in, lp_out) and float(lp_in.detach()) < 0  # densities counted
    assert torch.allclose(traces["replay outside"].log_prob_sum(), ancestral.log_prob_sum())


@pytest.mark.parametrize("mode", ["pcff", "mc_dropout", "feedforward"])
def test_replaying_a_handled_trace_from_outside_reproduces_it(mode):
    net, x = _gaussian_dropout_net(), torch.randn(5, 6)
    handled = _handled(mode, _plated(net))
    tr = poutine.trace(handled).get_trace(x)
    again = poutine.trace(poutine.replay(handled, trace=tr)).get_trace(x)
    for name, site in _samples(tr).items():
        assert torch.equal(again.nodes[name]["value"], site["value"]), name
        assert again.nodes[name]["is_observed"] == site["is_observed"]
    assert torch.equal(again.nodes["_RETURN"]["value"], tr.nodes["_RETURN"]["value"])
    assert float(again.log_prob_sum().detach()) == float(tr.log_prob_sum().detach()) == 0.0


def test_a_guide_over_a_handled_site_is_used_and_its_density_counted():
    net, x = models.mlp(6, [10], 3, node="gaussian", dropout=0.3), torch.randn(5, 6)
    y = torch.tensor([0, 1, 2, 0, 1])

    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            with handlers.mc_dropout():
                logits = net(x)
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    def guide(x, y):  # a dropout posterior of its own over the mask
        with pyro.plate("data", x.shape[0]):
            pyro.sample("drop1", BinaryNode(torch.full((5, 10), 0.9), 0.0, 1 / 0.7,
                                            estimator=None).to_event(1))

    guide_tr = poutine.trace(poutine.seed(guide, 0)).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, y)
    mask = guide_tr.nodes["drop1"]["value"]
    assert torch.equal(model_tr.nodes["drop1"]["value"], mask)
    assert not model_tr.nodes["drop1"]["is_observed"]
    # log p(y | mask) + log p(mask) under the model's own dropout prior; nodes collapsed.
    with handlers.feedforward():
        logits = poutine.condition(net, data={"drop1": mask})(x)
    keep = 0.7
    prior = BinaryNode(torch.full((5, 10), math.log(keep / 0.3) * keep), 0.0, 1 / keep,
                       estimator=None)
    hand = dist.Categorical(logits=logits).log_prob(y).sum() + prior.log_prob(mask).sum()
    assert torch.allclose(model_tr.log_prob_sum(), hand, atol=1e-5)
    # The ELBO of that draw counts both densities: log p(y, mask) - log q(mask).
    elbo = Trace_ELBO().loss(model, poutine.seed(guide, 0), x, y)
    q = guide_tr.nodes["drop1"]["fn"].log_prob(mask).sum()
    assert abs(-elbo - float((hand - q).detach())) < 1e-4


def test_dense_takes_weights_with_batch_dims():
    from pyrocg.layers.base import linear

    x, w, b = torch.randn(12, 4), torch.randn(3, 1, 6, 4), torch.randn(3, 1, 6)
    out = linear(x, w, b)
    assert out.shape == (3, 12, 6)
    for k in range(3):
        assert torch.allclose(out[k], F.linear(x, w[k, 0], b[k, 0]), atol=1e-6)
    with pytest.raises(ValueError, match="parallel=False"):
        linear(x, torch.randn(30, 6, 4), None)


def test_categorical_nodes_on_a_convolution_are_refused():
    conv = layers.Conv2d(1, 3, 3, node="categorical")
    with pytest.raises(ValueError, match="categories are the layer's units"):
        conv(torch.randn(2, 1, 5, 5))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"fn": 3}, TypeError, "fn must be a model"),
    ({"fn": lambda: None, "temperature": 0.5}, ValueError, "temperature must be 0"),
    ({"fn": lambda: None, "first_available_dim": 1}, ValueError, "first_available_dim"),
])
def test_infer_discrete_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        infer_discrete(**kwargs)
