"""Learned PCFF and dropout rates: the relaxed objective's gradients against finite
differences, the same loss through Pyro's ELBO, and the rates moving to the optimum of
synthetic problems whose objective is known in closed form."""

import math
from collections import OrderedDict

import pyro
import pytest
import torch

from pyrocg import handlers, infer, layers, models, modes
from pyrocg.modes.learned import bernoulli_kl, variational_dropout_kl

N, D = 200, 4


def _fixed_weights_fit(model, x, y, steps=400, lr=0.05):
    """Train only the rates (weights frozen); the mean rate per site over the last 100
    steps."""
    for p in model.net.parameters():
        p.requires_grad_(False)
    model.initialize(x, y)
    opt = torch.optim.Adam(model.guide.parameters(), lr=lr)
    tail = []
    for step in range(steps):
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
        if step >= steps - 100:
            tail.append({k: float(v.mean()) for k, v in modes.learned_rates(model).items()})
    return {k: sum(t[k] for t in tail) / len(tail) for k in tail[0]}


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g, dtype=torch.float64)


def _bisect(f, lo, hi, iters=200):
    """The root of increasing ``f`` on ``[lo, hi]``."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def test_learned_pcff_rate_moves_to_the_closed_form_optimum():
    # hidden Gaussian nodes N(e, 1) read out by v = 0.1: the expected loss per datum is
    # A * r + const (A = s^2 sum v^2 / (2 sigma^2)), plus K KL(r || 1/2) / N, minimised at
    # r* = sigmoid(-A N / K).
    torch.set_default_dtype(torch.float64)
    try:
        x = _data()
        net = layers.Sequential(OrderedDict(hidden1=layers.Dense(D, 4, node="gaussian"),
                                            out=layers.Dense(4, 1, node=None)))
        with torch.no_grad():
            net.out.weight.fill_(0.1)
        with handlers.feedforward():
            y = net(x).squeeze(-1).detach()
        model = infer.CGModel(net, infer.Gaussian(N, 1.0, learn_scale=False),
                              modes.LearnedPCFF(init=0.6))
        rate = _fixed_weights_fit(model, x, y)["hidden1"]
    finally:
        torch.set_default_dtype(torch.float32)
    a, k = 4 * 0.1**2 / 2, 4
    optimum = 1 / (1 + math.exp(a * N / k))
    # The Concrete relaxation (temperature 0.1) shrinks E[m^2] below r by ~7%: a bias of
    # ~0.015 here; the tolerance covers it and the Monte-Carlo wander of the rate.
    assert abs(rate - optimum) < 0.04, (rate, optimum)
    assert abs(rate - optimum) < abs(0.6 - optimum) / 5


@pytest.mark.parametrize("with_prior", [True, False])
def test_concrete_dropout_rate_moves_to_the_closed_form_optimum(with_prior):
    # Input dropout before a fixed linear read-out w: the expected loss per datum is
    # B p / (1 - p) + const with B = mean_n sum_j w_j^2 x_nj^2 / (2 sigma^2); the KL adds
    # (K KL(p || 1/2) + p / (1 - p) ||w||^2 / (2 s^2)) / N (Gal, Hron & Kendall's terms).
    torch.set_default_dtype(torch.float64)
    try:
        x = _data(1)
        net = models.mlp(D, [], 1, input_dropout=0.5)
        w = torch.tensor([[0.1, -0.07, 0.08, 0.03]])
        with torch.no_grad():
            net.out.weight.copy_(w)
            net.out.bias.zero_()
        y = (x @ w.T).squeeze(-1)
        prior = infer.GaussianPrior(0.1) if with_prior else None
        model = infer.CGModel(net, infer.Gaussian(N, 1.0, learn_scale=False),
                              modes.LearnedDropout(), prior=prior)
        rate = _fixed_weights_fit(model, x, y)["drop0"]
        b = float(((w**2) * x**2).sum(-1).mean() / 2)
        c = float((w**2).sum() / (2 * 0.1**2)) if with_prior else 0.0
    finally:
        torch.set_default_dtype(torch.float32)

    def slope(p):  # dF/dp
        return (b + c / N) / (1 - p) ** 2 + D / N * math.log(p / (1 - p))

    optimum = _bisect(slope, 1e-6, 0.5)
    assert 0.05 < optimum < 0.45
    assert abs(rate - optimum) < 0.04, (rate, optimum)
    assert abs(rate - optimum) < abs(0.5 - optimum) / 3


def test_variational_dropout_alpha_moves_to_the_optimum():
    # Gaussian noise xi ~ N(1, alpha) on the inputs of a fixed read-out: loss B alpha +
    # D KL_VD(alpha) / N (one weight per noisy input); the optimum by a fine grid.
    torch.set_default_dtype(torch.float64)
    try:
        x = _data(2)
        net = layers.Sequential(OrderedDict(noise=layers.GaussianDropout(0.9),
                                            out=layers.Dense(D, 1, node=None)))
        w = torch.tensor([[0.2, -0.2, 0.15, 0.1]])
        with torch.no_grad():
            net.out.weight.copy_(w)
            net.out.bias.zero_()
        y = (x @ w.T).squeeze(-1)
        model = infer.CGModel(net, infer.Gaussian(N, 1.0, learn_scale=False),
                              modes.LearnedDropout())
        alpha = _fixed_weights_fit(model, x, y, steps=600)["noise"]
        b = float(((w**2) * x**2).sum(-1).mean() / 2)
        grid = torch.linspace(-6, 0, 60001)
        objective = b * grid.exp() + D / N * variational_dropout_kl(grid)
        optimum = float(grid[objective.argmin()].exp())
    finally:
        torch.set_default_dtype(torch.float32)
    assert 0.05 < optimum < 0.8
    assert abs(math.log(alpha) - math.log(optimum)) < 0.15, (alpha, optimum)


def _loss_at(model, x, y, param, value, seed=3):
    with torch.no_grad():
        param.copy_(value)
    pyro.set_rng_seed(seed)  # the same uniforms and node noise at every evaluation
    return model.loss(x, y)


@pytest.mark.parametrize("mode,kwargs", [
    (modes.LearnedPCFF(per_unit=True, init=0.3), {"node": "softplus"}),
    (modes.LearnedPCFF(init=0.3), {"node": "relu"}),
    (modes.LearnedDropout(), {"dropout": 0.3, "input_dropout": 0.2}),
    (modes.LearnedDropout(per_unit=True, temperature=0.3), {"dropout": 0.3}),
])
def test_gradient_of_the_relaxed_objective_matches_finite_differences(mode, kwargs):
    torch.set_default_dtype(torch.float64)
    try:
        net = models.mlp(5, [6, 4], 3, **kwargs)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
        model = infer.CGModel(net, infer.Categorical(50), mode, prior=infer.GaussianPrior(1.0))
        model.initialize(x, y)
        for param in model.guide.parameters():
            base = param.detach().clone()
            loss = _loss_at(model, x, y, param, base)
            (grad,) = torch.autograd.grad(loss, param)
            h = 1e-6
            for i in range(min(base.numel(), 3)):
                step = torch.zeros_like(base).view(-1)
                step[i] = h
                up = _loss_at(model, x, y, param, base + step.view_as(base))
                down = _loss_at(model, x, y, param, base - step.view_as(base))
                fd = float((up - down).detach()) / (2 * h)
                assert abs(fd - float(grad.view(-1)[i])) < 1e-6 + 1e-5 * abs(fd), (fd, grad)
            with torch.no_grad():
                param.copy_(base)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("mode,kwargs", [
    (modes.LearnedPCFF(init=0.4), {}),
    (modes.LearnedDropout(), {"dropout": 0.3}),
])
def test_closed_form_loss_equals_pyro_elbo(mode, kwargs):
    # The learned modes' direct loss and Trace_ELBO on model/guide: same value, gradients.
    torch.set_default_dtype(torch.float64)
    try:
        net = models.mlp(5, [6], 3, **kwargs)
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        model = infer.CGModel(net, infer.Categorical(40), mode, prior=infer.GaussianPrior(1.0))
        model.initialize(x, y)
        params = list(model.parameters())
        pyro.set_rng_seed(7)
        a = model.loss(x, y)
        ga = torch.autograd.grad(a, params)
        pyro.set_rng_seed(7)
        b = model.pyro_loss(x, y)
        gb = torch.autograd.grad(b, params)
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    for u, v in zip(ga, gb, strict=True):
        assert torch.allclose(u, v, rtol=1e-10, atol=1e-12)


def test_kl_terms_match_their_formulas():
    # Concrete dropout: K KL(p || 1/2) + p/(1-p) ||W||^2 / (2 s^2) for one dropout layer.
    net = models.mlp(3, [5], 2, dropout=0.25)
    model = infer.CGModel(net, infer.Categorical(10), modes.LearnedDropout(),
                          prior=infer.GaussianPrior(2.0))
    model.initialize(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    p = 0.25
    kl_bern = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    w2 = float((net.out.weight.detach()**2).sum())
    want = 5 * kl_bern + p / (1 - p) * w2 / (2 * 2.0**2)
    assert float(model.guide.kl(model.prior).detach()) == pytest.approx(want, rel=1e-5)
    # Bernoulli KL against a direct sum; Molchanov's formula at a few points.
    logit = torch.tensor([-2.0, 0.3, 1.5], dtype=torch.float64)
    r = torch.sigmoid(logit)
    direct = r * torch.log(r / 0.2) + (1 - r) * torch.log((1 - r) / 0.8)
    assert torch.allclose(bernoulli_kl(logit, 0.2), direct)
    la = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    neg = k1 / (1 + torch.exp(-(k2 + k3 * la))) - 0.5 * torch.log1p(torch.exp(-la)) - k1
    assert torch.allclose(variational_dropout_kl(la), -neg)


def test_prediction_uses_hard_masks_at_the_learned_rate():
    net = models.mlp(4, [400], 2, dropout=0.3)
    model = infer.CGModel(net, infer.Categorical(10), modes.LearnedDropout())
    x = torch.randn(50, 4)
    model.initialize(x, torch.zeros(50, dtype=torch.long))
    with torch.no_grad():
        model.guide.rate_drop1.fill_(math.log(0.2 / 0.8))
    with pyro.poutine.trace() as tr:
        model.forward_predict(x)
    mask = tr.trace.nodes["drop1"]["value"]
    zeros = float((mask == 0).double().mean())
    values = mask.unique()
    assert values.numel() == 2 and float(values[0]) == 0.0
    assert float(values[1]) == pytest.approx(1 / 0.8)
    assert abs(zeros - 0.2) < 4 * math.sqrt(0.2 * 0.8 / mask.numel())
    assert model.mode.stochastic_prediction and model.mode.num_samples == 100


def test_learned_pcff_predicts_feed_forward_and_reports_rates():
    net = models.mlp(4, [6, 5], 3)
    model = infer.CGModel(net, infer.Categorical(10), "pcff-learned", per_unit=True, init=0.25)
    x = torch.randn(7, 4)
    model.initialize(x, torch.zeros(7, dtype=torch.long))
    rates = modes.learned_rates(model)
    assert list(rates) == ["hidden1", "hidden2"]
    assert rates["hidden1"].shape == (6,) and torch.allclose(rates["hidden1"], torch.tensor(0.25))
    with handlers.feedforward():
        want = net(x)
    assert torch.equal(model.forward_predict(x), want)


def test_learned_modes_check_their_inputs():
    with pytest.raises(ValueError, match="init must be a number in \\(0, 1\\)"):
        modes.LearnedPCFF(init=1.0)
    with pytest.raises(ValueError, match="temperature"):
        modes.LearnedDropout(temperature=0)
    with pytest.raises(TypeError, match="per_unit"):
        modes.LearnedDropout(per_unit=1)
    with pytest.raises(ValueError, match="prior_rate"):
        modes.LearnedPCFF(prior_rate=0.0)
    with pytest.raises(ValueError, match="needs dropout nodes"):
        infer.CGModel(models.mlp(4, [6], 3), infer.Categorical(10), modes.LearnedDropout())
    with pytest.raises(ValueError, match="learns no rates"):
        modes.learned_rates(infer.CGModel(models.mlp(4, [6], 3), infer.Categorical(10)))
    model = infer.CGModel(models.mlp(4, [6], 3), infer.Categorical(10), modes.LearnedPCFF())
    with pytest.raises(ValueError, match="not initialised"):
        modes.learned_rates(model)
    with pytest.raises(ValueError, match="needs its rates"):
        with handlers.learned("nodes"):
            models.mlp(4, [6], 3)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="target must be one of"):
        handlers.learned("weights")


def test_fit_trains_a_learned_dropout_rate(device):
    # One training run through fit: the rate is a parameter of the model and moves.
    data = infer_data(device)
    net = models.mlp(8, [16], 2, dropout=0.5)
    model = infer.CGModel(net, infer.Categorical(len(data.train)), modes.LearnedDropout()).to(
        device)
    infer.fit(model, data, infer.TrainConfig(epochs=3, batch_size=32, lr=0.05, progress=False,
                                             log_epochs=False))
    rate = modes.learned_rates(model)["drop1"]
    assert rate.device.type == device.type
    assert float(rate) != pytest.approx(0.5, abs=1e-3)
    out = infer.predict(model, data.test.x, num_samples=4)
    assert out.outputs.shape == (4, len(data.test), 2)


def infer_data(device):
    from pyrocg.data import DataSplits, Split

    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 8, generator=g)
    y = (x[:, 0] > 0).long()
    x, y = x.to(device), y.to(device)
    return DataSplits(Split(x[:100], y[:100]), Split(x[100:130], y[100:130]),
                      Split(x[130:], y[130:]), "classification", "toy", (8,), num_classes=2)


def test_cli_trains_learned_rates_and_reports_them(tmp_path, capsys):
    import json

    from pyrocg.cli import main

    out, ck = tmp_path / "run.json", tmp_path / "run.pt"
    assert main(["train", "--mode", "dropout-learned", "--p", "0.25", "--epochs", "1",
                 "--quiet", "--samples", "3", "--json", str(out), "--checkpoint", str(ck)]) == 0
    rates = json.loads(out.read_text())["test"]["rates"]
    assert set(rates) == {"drop1", "drop2"} and all(0 < r < 1 for r in rates.values())
    assert "learned rates:" in capsys.readouterr().out
    # The checkpoint holds the rates and evaluates.
    assert main(["evaluate", "--checkpoint", str(ck), "--samples", "3"]) == 0
