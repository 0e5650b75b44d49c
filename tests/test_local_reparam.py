"""Local reparametrisation of Bayesian weights: exact energy moments, the same ELBO as
weight sampling, lower gradient variance, vectorised prediction."""

import pytest
import torch
import torch.nn.functional as F

from pyrocg import handlers, infer, layers, models
from pyrocg.data import DataSplits, Split
from pyrocg.layers import GaussianWeights, local_reparam


def _gaussian(shape_w, shape_b, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = GaussianWeights(torch.randn(shape_w, generator=g).to(device),
                        (0.1 + torch.rand(shape_w, generator=g)).to(device),
                        torch.randn(shape_b, generator=g).to(device),
                        (0.1 + torch.rand(shape_b, generator=g)).to(device))
    return w


@pytest.mark.parametrize("kind", ["dense", "conv2d"])
def test_energy_draws_have_the_weight_distributions_moments(kind, device):
    """Energies for N copies of one input: mean and variance per unit match the closed form
    ``N(loc . x + b_loc, scale^2 . x^2 + b_scale^2)`` within Monte-Carlo error, and copies
    are independent draws."""
    torch.manual_seed(0)
    n = 20000
    if kind == "dense":
        layer = layers.Dense(6, 4, node=None).to(device)
        owner, x = layer, torch.randn(1, 6, device=device)
        w = _gaussian((4, 6), (4,), device)
        linear = F.linear
    else:
        layer = layers.Conv2d(2, 3, 3, padding=1, node=None).to(device)
        owner, x = layer.conv, torch.randn(1, 2, 4, 4, device=device)
        w = _gaussian((3, 2, 3, 3), (3,), device)
        linear = lambda r, wt, b: F.conv2d(r, wt, b, padding=1)  # noqa: E731
    with local_reparam({owner: w}):
        e = layer(x.expand((n,) + x.shape[1:]))
    mean = linear(x, w.weight_loc, w.bias_loc)[0]
    var = linear(x * x, w.weight_scale**2, w.bias_scale**2)[0]
    assert e.shape == (n,) + mean.shape
    se_mean = (var / n).sqrt()
    assert ((e.mean(0) - mean).abs() <= 4.5 * se_mean).all()
    assert ((e.var(0) / var - 1).abs() <= 4.5 * (2 / n) ** 0.5).all()
    # Outside the context the layer is deterministic with its own parameters again.
    assert torch.equal(layer(x), layer(x))


def test_dense_energies_match_explicit_per_datum_weight_draws():
    torch.manual_seed(1)
    layer = layers.Dense(5, 3, node=None)
    w = _gaussian((3, 5), (3,), "cpu", seed=3)
    x = torch.randn(1, 5).expand(40000, 5)
    with local_reparam({layer: w}):
        lrt = layer(x)
    W = w.weight_loc + w.weight_scale * torch.randn(40000, 3, 5)
    b = w.bias_loc + w.bias_scale * torch.randn(40000, 3)
    direct = torch.einsum("noi,ni->no", W, x) + b
    for q in (0.1, 0.5, 0.9):  # same distribution: quantiles agree
        assert torch.allclose(lrt.quantile(q, 0), direct.quantile(q, 0), atol=0.05 * direct.std(0).max())


def _toy(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(-1)
    return x, y


def _pair(width=16, batch_prior=True):
    torch.manual_seed(0)
    net = models.mlp(5, [width], 3)
    prior = infer.GaussianPrior(1.0, biases=batch_prior)
    ws = infer.CGModel(net, infer.Categorical(200), infer.BayesianWeights(prior, init_scale=0.3))
    lrt = infer.CGModel(net, infer.Categorical(200),
                        infer.BayesianWeights(prior, init_scale=0.3, local_reparam=True))
    lrt.guide.load_state_dict(ws.guide.state_dict())
    return ws, lrt


def test_same_elbo_as_weight_sampling_and_lower_gradient_variance():
    """Both estimate the same negative ELBO (Monte-Carlo KL vs closed form, one weight draw
    per batch vs per datum); the local reparametrisation's gradient varies less."""
    ws, lrt = _pair()
    x, y = _toy()
    stats = {}
    for name, model in (("ws", ws), ("lrt", lrt)):
        losses, grads = [], []
        for _ in range(1500):
            model.zero_grad()
            loss = model.loss(x, y)
            loss.backward()
            losses.append(loss.item())
            grads.append(model.guide.loc("hidden1.weight").grad.clone())
        L, G = torch.tensor(losses), torch.stack(grads)
        stats[name] = (L.mean(), L.var() / len(L), G.mean(0), G.var(0))
    (m1, v1, g1, gv1), (m2, v2, g2, gv2) = stats["ws"], stats["lrt"]
    assert abs(m1 - m2) <= 4 * (v1 + v2).sqrt()
    se = ((gv1 + gv2) / 1500).sqrt()
    assert ((g1 - g2).abs() <= 5 * se + 1e-6).float().mean() > 0.98
    assert gv2.sum() < 0.5 * gv1.sum()


def test_trains_and_predicts_all_passes_at_once():
    x, y = _toy(300)
    data = DataSplits(Split(x[:200], y[:200]), Split(x[200:], y[200:]), Split(x[200:], y[200:]),
                      "classification", "toy", (5,), num_classes=3)
    _, model = _pair()
    hist = infer.fit(model, data, infer.TrainConfig(epochs=15, batch_size=32, lr=0.02,
                                                    eval_samples=5, progress=False))
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["val_accuracy"] > 0.7
    pred = infer.predict(model, data.test.x, data.test.y, num_samples=50)
    assert pred.outputs.shape == (50, 100, 3)
    assert pred.outputs.std(0).min() > 0  # every pass and datum its own draw
    # All passes at once = the same distribution as separate single passes.
    vec = infer.predict(model, data.test.x, num_samples=400).probs
    loop = torch.cat([infer.predict(model, data.test.x, num_samples=1).probs
                      for _ in range(400)])
    se = ((vec.var(0) + loop.var(0)) / 400).sqrt()
    assert ((vec.mean(0) - loop.mean(0)).abs() <= 5 * se + 1e-6).all()


def test_unsupported_uses_give_clear_errors():
    net = models.mlp(5, [4], 3)
    with pytest.raises(TypeError, match="mode 'feedforward' takes no parameter 'local_reparam'"):
        infer.CGModel(net, infer.Categorical(10), "feedforward", local_reparam=True)
    with pytest.raises(ValueError, match="leave guide=None"):
        infer.BayesianWeights(guide=infer.MeanFieldNormalGuide, local_reparam=True)
    rnn = layers.Sequential(layers.IndRNN(3, 4), layers.Dense(4, 2, node=None))
    with pytest.raises(ValueError, match=r"local_reparam=True\): .*Dense and Conv layers only"
                       r".*\['0.weight', '0.recurrent_weight'\]"):
        infer.CGModel(rnn, infer.Categorical(10), "bayes", local_reparam=True)
    with pytest.raises(TypeError, match="mapping of modules to GaussianWeights"):
        with local_reparam([net.hidden1]):
            pass
    with pytest.raises(TypeError, match="nn.Module to GaussianWeights, got Dense -> tuple"):
        with local_reparam({net.hidden1: (1, 2)}):
            pass
    # Handlers still act on the nodes above the sampled energies.
    model = infer.CGModel(net, infer.Categorical(10), "bayes", local_reparam=True)
    with handlers.feedforward():
        out = model.forward_predict(torch.randn(2, 5))
    assert out.shape == (2, 3)
