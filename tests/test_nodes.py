"""Node families against closed forms, Monte-Carlo estimates and numerical integration."""

import math

import pytest
import torch
import torch.nn.functional as F

from pyrocg.nodes import (
    BinaryNode,
    CategoricalNode,
    GaussianNode,
    LeakyReLUNode,
    RectifiedGaussianNode,
    ReLUNode,
    SoftplusNode,
    resolve_node,
)

E = [-2.0, -0.3, 0.0, 0.7, 2.5]

FAMILIES = {
    "binary": lambda e: BinaryNode(e),
    "sign": lambda e: BinaryNode(e, low=-1.0, high=1.0),
    "binary_gumbel": lambda e: BinaryNode(e, low=-0.5, high=2.0, estimator="gumbel"),
    "relu": ReLUNode,
    "softplus": SoftplusNode,
    "leaky_relu": lambda e: LeakyReLUNode(e, 0.1),
    "gaussian": lambda e: GaussianNode(e, 0.7),
    "rectified": lambda e: RectifiedGaussianNode(e, 1.3),
}
CONTINUOUS = ["relu", "softplus", "leaky_relu", "gaussian", "rectified"]


def energies(device, dtype=torch.float64):
    return torch.tensor(E, dtype=dtype, device=device)


@pytest.mark.parametrize("family", list(FAMILIES) + ["categorical"])
def test_monte_carlo_mean_matches_mean(family, device):
    n = 100_000
    if family == "categorical":
        node = CategoricalNode(torch.tensor([[0.2, -1.0, 2.0], [0.0, 0.0, 0.0]], device=device))
    else:
        node = FAMILIES[family](energies(device))
    x = node.sample((n,)).double()
    se = x.std(0) / math.sqrt(n)
    err = (x.mean(0) - node.mean.double()).abs()
    assert torch.all(err <= 4 * se + 1e-9), (err, se)
    # The variance formula too: 5 standard errors of the sample variance, (m4 - var^2) / n.
    c = x - x.mean(0)
    var_se = ((c**4).mean(0) - c.pow(2).mean(0) ** 2).clamp_min(0).sqrt() / math.sqrt(n)
    assert torch.all((x.var(0) - node.variance.double()).abs() <= 5 * var_se + 1e-9)


@pytest.mark.parametrize("family", ["binary", "sign", "binary_gumbel"])
def test_discrete_log_prob_sums_to_one(family, device):
    node = FAMILIES[family](energies(device))
    values = node.enumerate_support()
    assert torch.allclose(node.log_prob(values).exp().sum(0), torch.ones(5, dtype=torch.float64,
                                                                          device=device))


def test_categorical_log_prob_sums_to_one(device):
    node = CategoricalNode(torch.randn(4, 5, device=device))
    total = node.log_prob(node.enumerate_support()).exp().sum(0)
    assert torch.allclose(total, torch.ones(4, device=device))


def _integrate(log_density, lo, hi, n=200_001):
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.trapezoid(log_density(x).exp(), x)


@pytest.mark.parametrize("family", CONTINUOUS)
@pytest.mark.parametrize("e", E)
def test_continuous_log_prob_integrates_to_one(family, e):
    node = FAMILIES[family](torch.tensor(e, dtype=torch.float64))
    s = float(node.scale)
    # Grids scale with s: at e = 0 a ReLU node's s = |tanh(e)| is (clamped) tiny.
    lo, hi = e - 12 * s, e + 12 * s
    pos_hi = max(hi, 12 * s)
    if family in ("relu", "softplus", "rectified"):
        atom = node.log_prob(torch.tensor(0.0, dtype=torch.float64)).exp()
        total = atom + _integrate(node.log_prob, 0.0, pos_hi)
    elif family == "leaky_relu":
        k = node.negative_slope
        neg_lo = k * min(lo, -12 * s)
        total = _integrate(node.log_prob, neg_lo, 0.0) + _integrate(node.log_prob, 0.0, pos_hi)
    else:
        total = _integrate(node.log_prob, lo, hi)
    assert abs(float(total) - 1.0) < 2e-3


def test_log_prob_matches_histogram_of_samples():
    # The rectified density and atom agree with where samples actually fall.
    node = RectifiedGaussianNode(torch.tensor(0.4, dtype=torch.float64), 1.0)
    x = node.sample((200_000,))
    atom = float(node.log_prob(torch.zeros((), dtype=torch.float64)).exp())
    assert abs(float((x == 0).double().mean()) - atom) < 0.005
    in_bin = ((x > 1.0) & (x < 1.2)).double().mean()
    assert abs(float(in_bin) - float(_integrate(node.log_prob, 1.0, 1.2, 2001))) < 0.003


def test_feedforward_gaps_within_spec_bounds():
    e = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    assert (SoftplusNode(e).mean - F.softplus(e)).abs().max() <= 0.0155
    assert (ReLUNode(e).mean - F.relu(e)).abs().max() <= 0.0371
    assert (LeakyReLUNode(e, 0.1).mean - F.leaky_relu(e, 0.1)).abs().max() <= 0.0371
    # And the gaps are real: the bounds are nearly attained (so the test can fail).
    assert (SoftplusNode(e).mean - F.softplus(e)).abs().max() > 0.015
    assert (ReLUNode(e).mean - F.relu(e)).abs().max() > 0.036
    # Binary, categorical and Gaussian feed-forward statistics are exact means.
    assert torch.allclose(BinaryNode(e, -1.0, 1.0).feedforward, torch.tanh(e))
    assert torch.allclose(BinaryNode(e).feedforward, torch.sigmoid(e))
    assert torch.allclose(BinaryNode(e, -1.0, 3.0).feedforward, BinaryNode(e, -1.0, 3.0).mean)
    assert torch.equal(GaussianNode(e).feedforward, GaussianNode(e).mean)
    c = torch.randn(7, 4)
    assert torch.allclose(CategoricalNode(c).feedforward, torch.softmax(c, -1))


@pytest.mark.parametrize("family", ["binary", "sign", "relu", "softplus", "leaky_relu",
                                    "gaussian", "rectified"])
def test_rsample_gradient_matches_finite_difference_of_mean(family, device):
    e = energies(device).requires_grad_()
    n = 400_000
    node = FAMILIES[family](e)
    node.rsample((n,)).mean(0).sum().backward()
    h = 1e-4
    with torch.no_grad():
        fd = (FAMILIES[family](e + h).mean - FAMILIES[family](e - h).mean) / (2 * h)
    assert torch.allclose(e.grad, fd, atol=0.02), (e.grad, fd)


def test_categorical_straight_through_gradient():
    e = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64)
    (CategoricalNode(e).rsample((1000,)) @ w).mean().backward()
    ref = torch.autograd.functional.jacobian(lambda z: (torch.softmax(z, -1) @ w).mean() / 1, e)
    assert torch.allclose(e.grad, ref * 1.0, atol=1e-10)


def test_gumbel_relaxations_are_differentiable_and_temperature_controls_hardness():
    e = torch.zeros(20_000, requires_grad=True)
    soft = BinaryNode(e, estimator="gumbel", temperature=5.0).rsample()
    hard = BinaryNode(e, estimator="gumbel", temperature=0.05).rsample()
    assert soft.requires_grad
    # Low temperature pushes values to the two endpoints, high keeps them near 1/2.
    assert ((hard < 0.05) | (hard > 0.95)).float().mean() > 0.9
    assert ((soft > 0.3) & (soft < 0.7)).float().mean() > 0.7
    g = CategoricalNode(torch.zeros(10, 3, requires_grad=True), estimator="gumbel").rsample()
    assert torch.allclose(g.sum(-1), torch.ones(10))


def test_expand_and_shapes():
    node = ReLUNode(torch.randn(3))
    big = node.expand((2, 3))
    assert big.batch_shape == (2, 3) and big.sample().shape == (2, 3)
    assert torch.equal(big.feedforward[0], node.feedforward)
    cat = CategoricalNode(torch.randn(3, 4)).expand((5, 3))
    assert cat.sample().shape == (5, 3, 4)
    b = BinaryNode(torch.randn(3), -1.0, 1.0).expand((2, 3))
    assert b.low == -1.0 and set(b.sample().unique().tolist()) <= {-1.0, 1.0}


def test_support_validation():
    node = BinaryNode(torch.zeros(2), validate_args=True)
    with pytest.raises(ValueError):
        node.log_prob(torch.tensor([0.5, 1.0]))
    rg = RectifiedGaussianNode(torch.zeros(2), 1.0, validate_args=True)
    with pytest.raises(ValueError):
        rg.log_prob(torch.tensor([-0.5, 1.0]))


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: BinaryNode([0.0]), TypeError, "torch.Tensor"),
        (lambda: BinaryNode(torch.zeros(2, dtype=torch.long)), TypeError, "floating-point"),
        (lambda: BinaryNode(torch.zeros(2), low=1.0, high=1.0), ValueError, "low < high"),
        (lambda: BinaryNode(torch.zeros(2), estimator="reinforce"), ValueError, "estimator"),
        (lambda: BinaryNode(torch.zeros(2), temperature=0.0), ValueError, "temperature"),
        (lambda: CategoricalNode(torch.zeros(3, 1)), ValueError, "at least 2 categories"),
        (lambda: CategoricalNode(torch.zeros(())), ValueError, "at least 1 dimension"),
        (lambda: GaussianNode(torch.zeros(2), scale=-1.0), ValueError, "scale must be positive"),
        (lambda: RectifiedGaussianNode(torch.zeros(2), torch.ones(3)), ValueError, "broadcast"),
        (lambda: RectifiedGaussianNode(torch.zeros(2), 1.0, 1.5), ValueError, "negative_slope"),
        (lambda: LeakyReLUNode(torch.zeros(2), 0.0), ValueError, "negative_slope"),
        (lambda: resolve_node("swish"), ValueError, "unknown node 'swish'"),
        (lambda: resolve_node(torch.nn.ReLU), TypeError, "CGNode"),
    ],
)
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("p", [0.5, 0.3, torch.tensor(0.5), torch.tensor([0.1, 0.5, 0.9])])
def test_fast_bernoulli_is_unbiased_and_independent(p, device):
    """The CPU fast paths (one random bit per element for p = 1/2, uniform comparison
    otherwise) match the target probability per element and show no bit-position bias or
    correlation between neighbours, within 4 standard errors."""
    from pyrocg.nodes._random import bernoulli

    torch.manual_seed(0)
    shape = (4000, 64, 3)
    x = bernoulli(p, torch.Size(shape), torch.float32, device)
    assert x.shape == shape and x.dtype == torch.float32 and x.device.type == device.type
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    pt = torch.as_tensor(p, dtype=torch.float64).expand(3)
    n = 4000 * 64
    per_elem = x.double().mean((0, 1))
    assert ((per_elem - pt).abs() <= 4 * (pt * (1 - pt) / n).sqrt()).all()
    # Each of the 64 positions of a word: its own frequency is right.
    by_pos = x[..., 0].double().mean(0)
    se = math.sqrt(float(pt[0] * (1 - pt[0])) / 4000)
    assert (by_pos - pt[0]).abs().max() <= 4.5 * se
    # Neighbouring elements (same word) are uncorrelated.
    flat = x[..., 0].reshape(-1).double()
    c = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1]
    assert abs(float(c)) <= 4 / math.sqrt(flat.numel())


@pytest.mark.parametrize("make", [
    lambda e: ReLUNode(e), lambda e: LeakyReLUNode(e, 0.1),
    lambda e: GaussianNode(e, 0.7), lambda e: SoftplusNode(e),
    lambda e: BinaryNode(e)])
def test_rsample_where_is_a_draw_where_kept_and_the_statistic_elsewhere(make):
    e = torch.randn(50, 40, requires_grad=True)
    node = make(e)
    mask = (torch.rand(50, 40) < 0.3).float()
    torch.manual_seed(5)
    got = node.rsample_where(mask)
    torch.manual_seed(5)  # the generic form: one full draw blended with the statistic
    draw = node.rsample()
    want = torch.where(mask.bool(), draw, node.feedforward)
    assert torch.equal(got, want)
    g_got = torch.autograd.grad(got.sum(), e)[0]
    g_want = torch.autograd.grad(want.sum(), e)[0]
    assert torch.allclose(g_got, g_want, atol=1e-6)


def test_relu_scale_is_abs_tanh():
    e = torch.linspace(-12, 12, 10001)
    s = ReLUNode(e).scale
    assert torch.allclose(s, torch.tanh(e).abs().clamp_min(s.min()), atol=3e-7)


def test_dropout_mask_node_is_the_binary_node_it_stands_for():
    from pyrocg.layers.dropout import MaskNode

    keep = 0.7
    like = torch.zeros(2000, 30)
    mask = MaskNode(like, keep)
    ref = BinaryNode(torch.full((2000, 30), math.log(keep / (1 - keep)) * keep), 0.0, 1 / keep,
                     estimator=None)
    values = mask.sample()
    assert values.unique().tolist() == [0.0, pytest.approx(1 / keep)]
    assert abs(float((values > 0).double().mean()) - keep) < 0.01
    assert torch.allclose(mask.log_prob(values), ref.log_prob(values))
    assert torch.equal(mask.mean, torch.ones(2000, 30)) and torch.allclose(ref.mean, mask.mean)
    wide = mask.expand((3, 2000, 30))
    assert wide.sample().shape == (3, 2000, 30) and wide.keep == keep
    assert torch.allclose(wide.log_prob(values), ref.log_prob(values).expand(3, 2000, 30))


@pytest.mark.parametrize("p", [0.3, 0.05, 0.999])
def test_fast_bernoulli_mask_is_unbiased_and_independent(p, device):
    """PCFF's boolean selection (32 random bits per element on CPU): the target probability,
    no position bias inside a 64-bit word, no correlation between neighbours."""
    from pyrocg.nodes._random import bernoulli_mask

    torch.manual_seed(1)
    m = bernoulli_mask(p, torch.Size((2000, 128)), device)
    assert m.dtype == torch.bool and m.shape == (2000, 128) and m.device.type == device.type
    n, se = m.numel(), math.sqrt(p * (1 - p) / m.numel())
    assert abs(float(m.double().mean()) - p) <= 4 * se
    # the two 32-bit halves of each word
    halves = m.reshape(-1, 2).double().mean(0)
    assert ((halves - p).abs() <= 4 * math.sqrt(p * (1 - p) / (n / 2))).all()
    flat = m.reshape(-1).double()
    c = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1]
    assert abs(float(c)) <= 4 / math.sqrt(n)


def test_partial_relu_draw_backward_is_the_derivative():
    """ReLU's hand-fused partially collapsed draw: gradcheck in float64, and the same value
    and gradient as the draw written with autograd."""
    from pyrocg.nodes.rectified import _PartialReLUDraw

    torch.manual_seed(0)
    e = torch.randn(30, 20, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(30, 20, dtype=torch.float64) * (torch.rand(30, 20) < 0.4)
    assert torch.autograd.gradcheck(lambda x: _PartialReLUDraw.apply(x, noise), (e,))
    got = _PartialReLUDraw.apply(e, noise)
    want = torch.relu(e + torch.tanh(e).abs() * noise)
    assert torch.allclose(got, want, atol=1e-12)
    g = torch.randn(30, 20, dtype=torch.float64)
    assert torch.allclose(torch.autograd.grad(got, e, g)[0], torch.autograd.grad(want, e, g)[0],
                          atol=1e-12)


def test_relu_rsample_where_differentiates_a_soft_mask():
    """A relaxed mask that requires grad (learned rates) gets its pathwise gradient from the
    ReLU node's draw, not the silent zero of the fused hard-mask path."""
    torch.manual_seed(0)
    e = torch.randn(40, 10, dtype=torch.float64)
    m = torch.rand(40, 10, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    got = ReLUNode(e).rsample_where(m)
    (g,) = torch.autograd.grad(got.sum(), m)
    torch.manual_seed(3)
    noise = torch.randn(40, 10, dtype=torch.float64)
    want = torch.relu(e + ReLUNode(e).scale * noise * m)
    (g_want,) = torch.autograd.grad(want.sum(), m)
    assert torch.allclose(got, want) and torch.allclose(g, g_want) and g.abs().sum() > 0
