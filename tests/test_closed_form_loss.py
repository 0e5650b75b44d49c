"""CGModel.loss computes point-weight objectives directly: the same value, gradients and
random draws as Pyro's Trace_ELBO on CGModel.model / CGModel.guide."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyrocg import infer, models, modes

MODES = [modes.FeedForward(), modes.PCFF(0.3), modes.Dropout(), modes.MCDropout(),
         modes.AncestralSampling(0.5), modes.PCFF({"hidden1": 1.0}, default=0.2),
         modes.BayesianWeights(), modes.BayesianWeights(local_reparam=True)]


def _model(mode, likelihood, prior):
    torch.manual_seed(0)
    net = models.mlp(7, [12, 9], 3 if likelihood == "categorical" else 1, dropout=0.2,
                     node="softplus")
    lik = infer.Categorical(200) if likelihood == "categorical" else infer.Gaussian(200)
    # float64: Bayesian weights of scale 0.01 amplify float32 rounding of (w - loc) / scale^2
    # in the gradients of both paths alike; in float64 they must agree to 1e-9.
    return infer.CGModel(net, lik, mode,
                         prior=infer.GaussianPrior(0.5) if prior else None).double()


@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("likelihood", ["categorical", "gaussian"])
@pytest.mark.parametrize("mode", MODES, ids=repr)
def test_closed_form_loss_equals_trace_elbo(mode, likelihood, prior):
    cg = _model(mode, likelihood, prior)
    assert cg._closed_form
    assert cg.mode.closed_form_weights(cg.net, cg.prior, cg.guide) is not None
    x = torch.randn(16, 7, dtype=torch.float64)
    y = (torch.randint(0, 3, (16,)) if likelihood == "categorical"
         else torch.randn(16, dtype=torch.float64))
    pyro.set_rng_seed(4)
    direct = cg.loss(x, y)
    g_direct = torch.autograd.grad(direct, list(cg.parameters()), allow_unused=True)
    pyro.set_rng_seed(4)
    reference = cg.pyro_loss(x, y)
    g_ref = torch.autograd.grad(reference, list(cg.parameters()), allow_unused=True)
    assert torch.allclose(direct, reference, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_direct, g_ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    # The random state moved the same way: the draws were the same.
    assert torch.equal(torch.rand(3), (pyro.set_rng_seed(4), cg.loss(x, y), torch.rand(3))[2])


def test_pyro_path_when_a_handler_is_active_or_weights_are_random():
    cg = _model(modes.MCDropout(), "categorical", False)
    x, y = torch.randn(8, 7, dtype=torch.float64), torch.randint(0, 3, (8,))
    with poutine.trace() as tr:  # someone is listening: the model runs through Pyro
        cg.loss(x, y)
    assert "y" in tr.trace.nodes and "drop1" in tr.trace.nodes
    with poutine.trace() as tr:
        cg._closed_form_loss(x, y, *cg.mode.closed_form_weights(cg.net, cg.prior, cg.guide))
    assert "y" not in tr.trace.nodes
    bayes = infer.CGModel(models.mlp(7, [5], 3), infer.Categorical(10),
                          modes.BayesianWeights(guide=AutoNormal))
    assert bayes.mode.closed_form_weights(bayes.net, bayes.prior, bayes.guide) is None
    crf = infer.CGModel(models.mlp(7, [5], 3), infer.ChainCRFLikelihood(
        __import__("pyrocg").layers.ChainCRF(3), 10), "feedforward")
    assert not crf._closed_form


def test_pyrosample_priors_on_the_net_take_pyros_path():
    import pyro.distributions as dist
    from pyro.nn import PyroSample

    cg = _model(modes.FeedForward(), "categorical", False)
    assert cg._closed_form
    cg.net.out.bias = PyroSample(dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
                                 .expand([3]).to_event(1))
    assert not cg._closed_form
    x, y = torch.randn(8, 7, dtype=torch.float64), torch.randint(0, 3, (8,))
    with pytest.warns(UserWarning, match="model but not guide"):  # Pyro's own warning
        pyro.set_rng_seed(1)
        a = cg.loss(x, y)
        pyro.set_rng_seed(1)
        b = cg.pyro_loss(x, y)
    assert torch.equal(a, b)


def test_closed_form_loss_states_the_net_parameters_in_the_param_store():
    """The direct path skips PyroModule's per-step pyro.param statement of plain parameters
    only after the module has made it once: the param store holds the network's parameters
    (the same tensors) exactly as after Pyro's path, and a parameter replaced by a
    PyroSample prior afterwards still becomes a sample site."""
    cg = _model(modes.Dropout(), "gaussian", True)
    x, y = torch.randn(16, 7, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    for _ in range(3):
        cg.loss(x, y)
    stored = dict(pyro.get_param_store().named_parameters())
    for name, p in cg.net.named_parameters():
        assert stored[name] is p
    from pyro.nn import PyroSample

    cg.net.hidden1.weight = PyroSample(
        pyro.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
        .expand([12, 7]).to_event(2))
    # the MAP prior's parameter list follows the change
    rest = [p.detach() for n, p in cg.net.named_parameters()
            if n.endswith("weight") and n != "hidden1.weight"]
    want = -sum(float(p.pow(2).sum()) for p in rest) / (2 * 0.5**2)
    assert float(cg.prior.log_prob(cg.net).detach()) == pytest.approx(want, rel=1e-12)
    with poutine.trace() as tr, __import__("pyrocg").handlers.feedforward():
        cg.net(x)
    assert tr.trace.nodes["hidden1.weight"]["type"] == "sample"
