"""Gaussian dropout nodes: moments against the closed form, equivalence with plain-PyTorch
Gaussian dropout under the same noise, the sampled/marginalised handlers, the dropout modes
and Pyro's machinery (trace, replay, condition, Predictive)."""

import math
from collections import OrderedDict

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrocg import handlers, infer, layers, modes
from pyrocg.layers import GaussianDropout, GaussianNoiseNode


def _net(alpha=0.3, hidden=6):
    return layers.Sequential(OrderedDict(
        hidden1=layers.Dense(5, hidden, node="relu"),
        noise1=GaussianDropout(alpha),
        out=layers.Dense(hidden, 3, node=None)))


class PlainGaussianDropout(nn.Module):
    """Gaussian dropout in plain PyTorch: ``x * (1 + sqrt(alpha) * eps)`` in training."""

    def __init__(self, alpha):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        if not self.training:
            return x
        return x * (1 + math.sqrt(self.alpha) * torch.randn_like(x))


def _plain_twin(net, alpha):
    plain = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), PlainGaussianDropout(alpha), nn.Linear(6, 3))
    with torch.no_grad():
        plain[0].weight.copy_(net.hidden1.weight)
        plain[0].bias.copy_(net.hidden1.bias)
        plain[3].weight.copy_(net.out.weight)
        plain[3].bias.copy_(net.out.bias)
    return plain


def test_moments_match_the_closed_form():
    # y = x * xi, xi ~ N(1, alpha): E[y] = x, Var[y] = alpha x^2; n draws, 5 standard errors.
    alpha, n = 0.4, 200_000
    x = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    with handlers.mc_dropout():
        y = GaussianDropout(alpha)(x.expand(n, 3))
    mean, var = y.mean(0), y.var(0)
    sd = (alpha * x**2).sqrt()
    assert torch.all((mean - x).abs() < 5 * sd / math.sqrt(n))
    # Var of a Gaussian sample variance: 2 sigma^4 / (n - 1).
    assert torch.all((var - alpha * x**2).abs() < 5 * math.sqrt(2 / n) * alpha * x**2)
    node = GaussianNoiseNode(x, alpha)
    assert torch.equal(node.mean, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(node.variance, torch.full((3,), alpha, dtype=torch.float64))


def test_per_unit_variances():
    alpha = torch.tensor([0.0, 0.25, 1.0])
    with handlers.mc_dropout():
        y = GaussianDropout(alpha)(torch.ones(100_000, 3))
    assert float(y[:, 0].var()) == 0.0
    assert torch.allclose(y.var(0)[1:], alpha[1:], rtol=0.03)


def test_log_prob_is_the_normal_density():
    node = GaussianNoiseNode(torch.zeros(4, dtype=torch.float64), 0.3)
    value = torch.tensor([0.2, 1.0, 1.7, 3.0], dtype=torch.float64)
    want = dist.Normal(torch.tensor(1.0, dtype=torch.float64), math.sqrt(0.3)).log_prob(value)
    assert torch.allclose(node.log_prob(value), want)
    assert torch.allclose(node.entropy(), dist.Normal(1.0, math.sqrt(0.3)).entropy().double())


def test_equals_plain_pytorch_gaussian_dropout_under_the_same_noise():
    torch.manual_seed(0)
    net = _net(0.3)
    plain = _plain_twin(net, 0.3)
    x = torch.randn(8, 5)
    pyro.set_rng_seed(11)
    with handlers.mc_dropout():
        ours = net(x)
    torch.manual_seed(11)
    theirs = plain.train()(x)
    assert torch.allclose(ours, theirs, atol=1e-6)
    # Gradients too.
    pyro.set_rng_seed(12)
    with handlers.mc_dropout():
        g1 = torch.autograd.grad(net(x).square().sum(), net.hidden1.weight)[0]
    torch.manual_seed(12)
    g2 = torch.autograd.grad(plain(x).square().sum(), plain[0].weight)[0]
    assert torch.allclose(g1, g2, atol=1e-5)
    # Marginalised: the plain network in eval().
    with handlers.feedforward():
        assert torch.allclose(net(x), plain.eval()(x), atol=1e-6)


def test_replayed_noise_reproduces_the_plain_computation():
    net = _net(0.5)
    plain = _plain_twin(net, 0.5)
    x = torch.randn(4, 5)
    with pyro.poutine.trace() as tr, handlers.mc_dropout():
        ours = net(x)
    xi = tr.trace.nodes["noise1"]["value"]
    h = plain[1](plain[0](x))
    assert torch.allclose(ours, plain[3](h * xi), atol=1e-6)
    with pyro.poutine.replay(trace=tr.trace), handlers.mc_dropout():  # replay from outside
        assert torch.equal(net(x), ours)


def test_marginalize_dropout_puts_noise_at_its_mean_and_leaves_nodes_sampled():
    net = _net(0.5)
    x = torch.randn(3, 5)
    with pyro.poutine.trace() as tr, handlers.marginalize_dropout():
        net(x)
    noise = tr.trace.nodes["noise1"]
    assert noise["is_observed"] and torch.equal(noise["value"], torch.ones(3, 6))
    assert not tr.trace.nodes["hidden1"]["is_observed"]  # the ReLU nodes: ancestral


def test_unhandled_model_samples_the_noise_with_its_density():
    net = _net(0.2)
    x = torch.randn(3, 5)
    with pyro.plate("data", 3):
        tr = pyro.poutine.trace(net).get_trace(x)
    site = tr.nodes["noise1"]
    assert not site["is_observed"]
    want = dist.Normal(1.0, math.sqrt(0.2)).log_prob(site["value"]).sum(-1)
    assert torch.allclose(site["fn"].log_prob(site["value"]), want, atol=1e-6)
    # condition fixes it, as for any site
    fixed = torch.full((3, 6), 1.5)
    with pyro.plate("data", 3):
        tr2 = pyro.poutine.trace(pyro.poutine.condition(net, {"noise1": fixed})).get_trace(x)
    assert torch.equal(tr2.nodes["noise1"]["value"], fixed)


def test_predictive_returns_noise_sites():
    net = _net(0.3)
    x = torch.randn(4, 5)

    def model(x):
        with pyro.plate("data", x.shape[0]), handlers.mc_dropout():
            return net(x)

    samples = pyro.infer.Predictive(model, num_samples=5, return_sites=["noise1"])(x)
    assert samples["noise1"].shape == (5, 4, 6)
    assert samples["noise1"].std() > 0


def test_dropout_modes_train_and_predict_gaussian_dropout(device):
    torch.manual_seed(0)
    net = _net(0.3).to(device)
    x = torch.randn(6, 5, device=device)
    y = torch.randint(0, 3, (6,), device=device)
    mc = infer.CGModel(net, infer.Categorical(60), modes.MCDropout())
    out = infer.predict(mc, x, num_samples=7).outputs
    assert out.shape == (7, 6, 3) and out.device.type == device.type
    assert out.std(0).max() > 0  # passes differ: MC-VI prediction
    loss = mc.loss(x, y)
    loss.backward()
    assert net.hidden1.weight.grad is not None
    det = infer.CGModel(net, infer.Categorical(60), modes.Dropout())
    with handlers.feedforward():
        want = net(x)
    assert torch.allclose(det.forward_predict(x), want)


def test_learned_alpha_is_trained_and_reported(device):
    net = _net(0.5).to(device)
    model = infer.CGModel(net, infer.Categorical(60), modes.LearnedDropout(per_unit=True))
    x = torch.randn(6, 5, device=device)
    y = torch.randint(0, 3, (6,), device=device)
    model.initialize(x, y)
    alpha = modes.learned_rates(model)["noise1"]
    assert alpha.shape == (6,) and torch.allclose(alpha, torch.tensor(0.5, device=device))
    model.loss(x, y).backward()
    assert model.guide.rate_noise1.grad.abs().sum() > 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        GaussianDropout(-0.1)
    with pytest.raises(ValueError, match="1-D"):
        GaussianDropout(torch.ones(2, 2))
    with pytest.raises(ValueError, match="p must be in"):
        GaussianDropout.from_p(1.0)
    with pytest.raises(ValueError, match="unit_dims"):
        GaussianDropout(0.1, unit_dims=0)
    with pytest.raises(ValueError, match="2 variances for 3 units"):
        GaussianDropout([0.1, 0.2])(torch.ones(4, 3))
    with pytest.raises(TypeError, match="floating-point"):
        GaussianDropout(0.1)(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="does not broadcast"):
        GaussianNoiseNode(torch.zeros(2, 3), torch.ones(4))
    assert GaussianDropout(0.0)(torch.ones(2, 3)).equal(torch.ones(2, 3))  # no site
    assert GaussianDropout.from_p(0.2).alpha == pytest.approx(0.25)
