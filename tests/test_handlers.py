"""Execution modes: equivalences between handlers and composition with Pyro's own."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyrocg import handlers, layers, models
from pyrocg.handlers import node_of


def gaussian_net():
    # Gaussian nodes: a sampled element never equals its feed-forward value.
    return models.mlp(6, [40, 30], 3, node="gaussian")


def site_values(fn, *args):
    tr = poutine.trace(fn).get_trace(*args)
    return {n: s for n, s in tr.nodes.items() if s["type"] == "sample"}, tr


def test_pcff_zero_is_feedforward(device):
    net = models.mlp(6, [8, 8], 3, dropout=0.2).to(device)
    x = torch.randn(5, 6, device=device)
    with handlers.feedforward():
        ff = net(x)
    with handlers.pcff(0.0):
        assert torch.equal(net(x), ff)
    assert torch.equal(handlers.pcff(net, 0.0)(x), ff)  # functional form


def test_pcff_one_is_unhandled_sampling_under_same_seed(device):
    net = models.mlp(6, [8, 8], 3, node="softplus").to(device)
    x = torch.randn(5, 6, device=device)
    plain = poutine.seed(net, rng_seed=3)(x)
    full = poutine.seed(handlers.pcff(net, 1.0), rng_seed=3)(x)
    assert torch.equal(plain, full)
    with handlers.feedforward():
        assert not torch.allclose(net(x), plain)


def test_pcff_samples_the_requested_fraction_of_elements():
    net, x = gaussian_net(), torch.randn(200, 6)
    sites, _ = site_values(handlers.pcff(net, 0.3), x)
    for name in ("hidden1", "hidden2"):
        s = sites[name]
        ff = node_of(s["fn"]).feedforward
        frac = (s["value"] != ff).double().mean()
        assert abs(float(frac) - 0.3) < 0.02, (name, frac)
        assert s["is_observed"] and float(s["fn"].log_prob(s["value"]).sum()) == 0.0


def test_pcff_per_layer_rates():
    net, x = gaussian_net(), torch.randn(50, 6)
    sites, _ = site_values(handlers.pcff(net, {"hidden1": 1.0, "hid*": 0.5}, default=0.0), x)
    h1, h2 = sites["hidden1"], sites["hidden2"]
    assert bool((h1["value"] != node_of(h1["fn"]).feedforward).all())
    frac2 = (h2["value"] != node_of(h2["fn"]).feedforward).double().mean()
    assert 0.4 < float(frac2) < 0.6
    sites, _ = site_values(handlers.pcff(net, {"hidden2": 1.0}), x)
    assert torch.equal(sites["hidden1"]["value"], node_of(sites["hidden1"]["fn"]).feedforward)


def test_pcff_gradients_flow_through_samples():
    net = models.mlp(6, [8], 3, node="binary")
    out = handlers.pcff(net, 0.5)(torch.randn(4, 6))
    out.sum().backward()
    assert net.hidden1.weight.grad is not None and net.hidden1.weight.grad.abs().sum() > 0


def test_mc_dropout_and_marginalize_dropout(device):
    net = models.mlp(6, [50], 3, node="gaussian", dropout=0.4).to(device)
    x = torch.randn(30, 6, device=device)
    sites, _ = site_values(handlers.mc_dropout(net), x)
    mask, hidden = sites["drop1"], sites["hidden1"]
    assert mask["value"].unique().tolist() == [0.0, pytest.approx(1 / 0.6)]
    assert abs(float((mask["value"] == 0).double().mean()) - 0.4) < 0.05
    assert torch.equal(hidden["value"], node_of(hidden["fn"]).feedforward)

    sites, _ = site_values(handlers.marginalize_dropout(net), x)
    assert torch.allclose(sites["drop1"]["value"], torch.ones_like(sites["drop1"]["value"]))
    assert not sites["hidden1"]["is_observed"]  # nodes untouched: ancestral sampling
    with handlers.marginalize_dropout(), handlers.pcff(0.0):
        a = net(x)
    with handlers.feedforward():
        assert torch.allclose(a, net(x))


def test_mc_dropout_vectorised_passes_are_independent():
    net = models.mlp(6, [16], 3, dropout=0.5)
    x = torch.randn(4, 6)
    out = handlers.mc_dropout(net)(x.expand(20, 4, 6))
    assert out.shape == (20, 4, 3)
    assert out.std(0).min() > 0  # different masks per pass


def test_trace_condition_and_innermost_wins():
    net, x = gaussian_net(), torch.randn(4, 6)
    v = torch.zeros(4, 40)
    with handlers.feedforward():
        with poutine.condition(data={"hidden1": v}):
            sites, _ = site_values(net, x)
    assert torch.equal(sites["hidden1"]["value"], v)
    h2 = sites["hidden2"]
    assert torch.allclose(h2["value"], net.hidden2.bias.expand(4, 30))  # energy of 0 input
    # Replaying an ancestral-sampling trace inside feedforward(): replay is innermost, wins.
    sites1, tr = site_values(net, x)
    with handlers.feedforward():
        sites2, _ = site_values(poutine.replay(net, trace=tr), x)
    assert torch.equal(sites1["hidden2"]["value"], sites2["hidden2"]["value"])
    # A handled trace's sites are observed; reproduce them by conditioning on its values.
    sites1, _ = site_values(handlers.pcff(net, 0.5), x)
    data = {n: s["value"] for n, s in sites1.items()}
    sites3, _ = site_values(poutine.condition(net, data=data), x)
    assert torch.equal(sites1["hidden2"]["value"], sites3["hidden2"]["value"])


def test_block_scale_and_seed_compose():
    net, x = gaussian_net(), torch.randn(4, 6)
    with poutine.trace() as tr, poutine.block(hide=["hidden1"]), handlers.pcff(0.5):
        net(x)
    assert "hidden1" not in tr.trace.nodes and "hidden2" in tr.trace.nodes
    a = poutine.seed(handlers.pcff(net, 0.5), rng_seed=1)(x)
    b = poutine.seed(handlers.pcff(net, 0.5), rng_seed=1)(x)
    c = poutine.seed(handlers.pcff(net, 0.5), rng_seed=2)(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with poutine.trace() as tr, poutine.scale(scale=3.0), handlers.feedforward():
        net(x)
    assert tr.trace.nodes["hidden1"]["scale"] == 3.0


def test_plates_and_particle_dimension(device):
    net = models.mlp(6, [8], 3, node="gaussian").to(device)
    x = torch.randn(5, 6, device=device)

    def model(x):
        with pyro.plate("particles", 4, dim=-2), pyro.plate("data", x.shape[-2], dim=-1):
            return net(x.expand(4, 5, 6))

    with poutine.trace() as tr, handlers.pcff(0.5):
        out = model(x)
    assert out.shape == (4, 5, 3)
    site = tr.trace.nodes["hidden1"]
    assert site["fn"].batch_shape == (4, 5) and site["fn"].event_shape == (8,)
    tr.trace.compute_log_prob()
    assert site["log_prob"].shape == (4, 5)


def test_svi_raises_no_warning_and_learns(device):
    torch.manual_seed(0)
    net = models.mlp(2, [16], 2, dropout=0.1).to(device)
    x = torch.randn(64, 2, device=device)
    y = (x[:, 0] > 0).long()

    def model(x, y):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=net(x)), obs=y)

    svi = pyro.infer.SVI(handlers.pcff(model, 0.3), lambda x, y: None,
                         pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(60)]  # filterwarnings=error: any warning fails
    assert losses[-1] < 0.5 * losses[0]


def test_unhandled_model_samples_every_node():
    net = models.mlp(6, [8], 3, dropout=0.3)
    sites, tr = site_values(net, torch.randn(2, 6))
    assert {"hidden1", "drop1"} <= set(sites)
    assert not any(s["is_observed"] for s in sites.values())
    tr.compute_log_prob()
    assert torch.isfinite(tr.log_prob_sum())


def test_binary_network_feedforward_and_sampling():
    net = models.mlp(4, [6], 2, node="sign")
    sites, _ = site_values(handlers.pcff(net, 1.0), torch.randn(3, 4))
    assert set(sites["hidden1"]["value"].detach().unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: handlers.pcff(1.5), r"rate must be a number in \[0, 1\]"),
        (lambda: handlers.pcff(-0.1), "rate"),
        (lambda: handlers.pcff({"hidden1": 2.0}), r"rate\['hidden1'\]"),
        (lambda: handlers.pcff(0.5, default=3), "default"),
        (lambda: handlers.pcff("half"), "rate"),
    ],
)
def test_bad_rates(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_handlers_ignore_non_cg_sites():
    def model():
        return pyro.sample("z", dist.Normal(0.0, 1.0))

    with poutine.trace() as tr, handlers.feedforward():
        model()
    assert not tr.trace.nodes["z"]["is_observed"]
    assert isinstance(layers.Dense(2, 2), pyro.nn.PyroModule)


@pytest.mark.parametrize("mode", ["mc_dropout", "pcff"])
def test_plates_outside_the_handler_get_independent_draws(mode, device):
    """A plate wrapped around a handled model (vectorised ELBO particles, parallel
    Predictive) gives each of its members its own draw, as a plate inside the model does."""
    net = models.mlp(6, [16, 16], 3, node="gaussian", dropout=0.5).to(device)
    x = torch.randn(4, 6, device=device)
    handler = handlers.mc_dropout if mode == "mc_dropout" else lambda: handlers.pcff(0.5)

    def model(x):
        with pyro.plate("data", 4, dim=-1):
            return net(x)

    with poutine.trace() as tr, pyro.plate("particles", 7, dim=-2), handler():
        out = model(x)
    assert out.shape == (7, 4, 3)
    assert out.std(0).min() > 0
    site = "drop1" if mode == "mc_dropout" else "hidden1"
    assert tr.trace.nodes[site]["value"].shape == (7, 4, 16)
    # Inside or outside: the same distribution of outputs (same mean within MC error).
    pyro.set_rng_seed(0)
    with pyro.plate("particles", 4000, dim=-2), handler():
        outer = model(x)
    with handler():
        inner = pyro.plate("particles", 4000, dim=-2)(model)(x.expand(4000, 4, 6))
    se = ((outer.var(0) + inner.var(0)) / 4000).sqrt()
    assert ((outer.mean(0) - inner.mean(0)).abs() <= 5 * se + 1e-6).all()


def test_parallel_predictive_and_vectorised_particles():
    torch.manual_seed(0)
    net = models.mlp(2, [16], 2, dropout=0.3)
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()

    def model(x, y=None):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            logits = net(x)
            pyro.deterministic("probs", logits.softmax(-1), event_dim=1)
            return pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    mc = handlers.mc_dropout(model)
    with torch.no_grad():
        probs = pyro.infer.Predictive(mc, num_samples=30, parallel=True,
                                      return_sites=["probs"])(x)["probs"]
    assert probs.shape == (30, 64, 2)
    assert probs.std(0).min() > 0  # one mask per predictive sample, not one shared mask
    elbo = pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(handlers.pcff(model, 0.3), lambda x, y: None,
                         pyro.optim.Adam({"lr": 0.05}), elbo)
    losses = [svi.step(x, y) for _ in range(60)]  # filterwarnings=error: any warning fails
    assert losses[-1] < 0.5 * losses[0]
