"""Mean-field CRFs against naive loop references and exact enumeration."""

import itertools

import pytest
import torch

from pyrocg.structured.meanfield import (
    GridMeanFieldCRF,
    MultiLabelMeanFieldCRF,
    gaussian_kernel,
    grid_mean_field,
    multilabel_mean_field,
)


def _neighbours(h, w, neighbourhood):
    offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if neighbourhood == 8:
        offsets += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    for i, j in itertools.product(range(h), range(w)):
        yield (i, j), [(i + a, j + b) for a, b in offsets if 0 <= i + a < h and 0 <= j + b < w]


def _naive_grid(unary, compat, num_iters, neighbourhood, kernel=None):
    """Synchronous mean field written with explicit loops over pixels, neighbours, labels."""
    batch, h, w, c = unary.shape
    q = unary.softmax(-1)
    for _ in range(num_iters):
        new = torch.empty_like(q)
        for b in range(batch):
            for (i, j), nbrs in _neighbours(h, w, neighbourhood):
                logits = unary[b, i, j].clone()
                for lab in range(c):
                    for ni, nj in nbrs:
                        for other in range(c):
                            logits[lab] += compat[lab, other] * q[b, ni, nj, other]
                    if kernel is not None:
                        for k in range(h * w):
                            ki, kj = divmod(k, w)
                            for other in range(c):
                                logits[lab] += (
                                    kernel[b, i * w + j, k] * compat[lab, other] * q[b, ki, kj, other]
                                )
                new[b, i, j] = logits.softmax(-1)
        q = new
    return q


@pytest.mark.parametrize("neighbourhood", [4, 8])
def test_grid_matches_naive_loops(neighbourhood):
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=g)
    compat = torch.randn(3, 3, dtype=torch.float64, generator=g)
    compat = compat + compat.T
    got = grid_mean_field(unary, compat, 4, neighbourhood)
    assert torch.allclose(got, _naive_grid(unary, compat, 4, neighbourhood))


def test_dense_kernel_matches_naive_loops():
    g = torch.Generator().manual_seed(1)
    unary = torch.randn(1, 3, 3, 2, dtype=torch.float64, generator=g)
    features = torch.randn(1, 3, 3, 2, dtype=torch.float64, generator=g)
    kernel = gaussian_kernel(features, 0.7)
    compat = 0.5 * torch.eye(2, dtype=torch.float64)
    got = grid_mean_field(unary, compat, 3, neighbourhood=None, dense_kernel=kernel)
    want = _naive_grid(unary, compat, 3, 4, kernel=kernel)
    # the naive version also has local edges; compare against local + dense instead
    got_both = grid_mean_field(unary, compat, 3, neighbourhood=4, dense_kernel=kernel)
    assert torch.allclose(got_both, want)
    assert not torch.allclose(got, want)


def test_two_node_fixed_point():
    """A 1x2 grid: the converged mean field satisfies the fixed-point equations exactly."""
    unary = torch.tensor([[[[0.3, -0.2]], [[-0.5, 0.4]]]], dtype=torch.float64).transpose(1, 2)
    compat = torch.tensor([[0.8, -0.1], [-0.1, 0.5]], dtype=torch.float64)
    q = grid_mean_field(unary, compat, 200, 4, damping=0.5)
    q0, q1 = q[0, 0, 0], q[0, 0, 1]
    assert torch.allclose(q0, (unary[0, 0, 0] + compat @ q1).softmax(-1))
    assert torch.allclose(q1, (unary[0, 0, 1] + compat @ q0).softmax(-1))


def test_weak_coupling_approaches_exact_marginals():
    """3x3 binary grid, all 512 states enumerated: mean-field error shrinks with coupling."""
    g = torch.Generator().manual_seed(2)
    unary = torch.randn(1, 3, 3, 2, dtype=torch.float64, generator=g)
    edges = {tuple(sorted((a, b))) for a, nbrs in _neighbours(3, 3, 4) for b in nbrs}
    states = torch.tensor(list(itertools.product(range(2), repeat=9)))  # (512, 9)
    flat_unary = unary.view(9, 2)
    errors = []
    for weight in (0.2, 0.05):
        compat = weight * torch.eye(2, dtype=torch.float64)
        score = flat_unary[torch.arange(9), states].sum(-1)
        for a, b in edges:
            ia, ib = a[0] * 3 + a[1], b[0] * 3 + b[1]
            score = score + compat[states[:, ia], states[:, ib]]
        probs = (score - score.logsumexp(0)).exp()
        exact = torch.stack([(probs[:, None] * (states == k)).sum(0) for k in range(2)], -1)
        q = grid_mean_field(unary, compat, 50, 4).view(9, 2)
        errors.append((q - exact).abs().max().item())
    assert errors[1] < errors[0] / 4  # error is O(weight²)
    assert errors[1] < 2e-3


def test_multilabel_matches_loops_and_fixed_point():
    g = torch.Generator().manual_seed(3)
    unary = torch.randn(2, 4, dtype=torch.float64, generator=g)
    w = torch.randn(4, 4, dtype=torch.float64, generator=g) * 0.3
    w = w + w.T
    got = multilabel_mean_field(unary, w, 3)
    q = unary.sigmoid()
    for _ in range(3):
        new = torch.empty_like(q)
        for b in range(2):
            for i in range(4):
                field = unary[b, i] + sum(w[i, j] * q[b, j] for j in range(4) if j != i)
                new[b, i] = torch.sigmoid(field)
        q = new
    assert torch.allclose(got, q)
    fixed = multilabel_mean_field(unary, w, 300, damping=0.5)
    wz = w - torch.diag(torch.diag(w))
    assert torch.allclose(fixed, (unary + fixed @ wz.T).sigmoid())


def test_multilabel_weak_coupling_exact():
    g = torch.Generator().manual_seed(4)
    unary = torch.randn(1, 5, dtype=torch.float64, generator=g)
    w = torch.randn(5, 5, dtype=torch.float64, generator=g) * 0.02
    w = w + w.T
    wz = w - torch.diag(torch.diag(w))
    states = torch.tensor(list(itertools.product(range(2), repeat=5)), dtype=torch.float64)
    score = states @ unary[0] + 0.5 * ((states @ wz) * states).sum(-1)
    exact = ((score - score.logsumexp(0)).exp()[:, None] * states).sum(0)
    q = multilabel_mean_field(unary, w, 50)[0]
    assert (q - exact).abs().max() < 1e-3


def test_modules_train_and_state_dict(device):
    torch.manual_seed(0)
    grid = GridMeanFieldCRF(3, num_iters=3, compatibility="learned", dense=True, bandwidth=2.0)
    grid = grid.to(device)
    unary = torch.randn(2, 4, 4, 3, device=device, requires_grad=True)
    features = torch.randn(2, 4, 4, 3, device=device)
    labels = torch.randint(0, 3, (2, 4, 4), device=device)
    loss = grid.loss(unary, labels, features)
    loss.backward()
    assert torch.isfinite(loss) and grid.compat_param.grad is not None
    assert grid.dense_weight.grad is not None and unary.grad is not None
    assert set(grid.state_dict()) == {"compat_param", "dense_weight", "bandwidth"}
    assert torch.equal(grid.compatibility, grid.compatibility.T)

    multi = MultiLabelMeanFieldCRF(4).to(device)
    opt = torch.optim.SGD(multi.parameters(), lr=0.5)
    logits = torch.zeros(64, 4, device=device)
    shared = torch.randint(0, 2, (64, 1), device=device)
    labels = shared.expand(64, 4)  # perfectly correlated labels: couplings should grow
    for _ in range(20):
        opt.zero_grad()
        multi.loss(logits, labels).backward()
        opt.step()
    off_diag = multi.coupling[~torch.eye(4, dtype=torch.bool, device=device)]
    assert (off_diag > 0).all()
    assert set(multi.state_dict()) == {"coupling_param"}


def test_bad_inputs():
    with pytest.raises(ValueError, match="neighbourhood must be 4 or 8"):
        GridMeanFieldCRF(3, neighbourhood=6)
    with pytest.raises(ValueError, match="compatibility must be"):
        GridMeanFieldCRF(3, compatibility="wrong")
    with pytest.raises(ValueError, match="damping"):
        grid_mean_field(torch.zeros(1, 2, 2, 2), torch.zeros(2, 2), damping=1.0)
    with pytest.raises(ValueError, match=r"compatibility must have shape \(2, 2\)"):
        grid_mean_field(torch.zeros(1, 2, 2, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"unary must have shape \(batch, H, W, C\)"):
        grid_mean_field(torch.zeros(2, 2, 2), torch.zeros(2, 2))
    with pytest.raises(TypeError, match="unary must be a floating"):
        grid_mean_field(torch.zeros(1, 2, 2, 2, dtype=torch.long), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="features"):
        GridMeanFieldCRF(2, dense=True)(torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"labels must have shape \(1, 2, 2\)"):
        GridMeanFieldCRF(2).loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        GridMeanFieldCRF(2).loss(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match=r"coupling must have shape \(3, 3\)"):
        multilabel_mean_field(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 3\)"):
        MultiLabelMeanFieldCRF(3).loss(torch.zeros(2, 3), torch.zeros(2, 2))


def test_one_surrogate_loss_modules_and_likelihoods():
    """The modules' ``loss`` and the likelihoods' surrogate are the same function: the
    cross-entropy of the marginals (float64, naive formula), damping included; no clamp, so a
    confident mistake keeps its gradient in float32."""
    from pyrocg.structured import GridCRFLikelihood, MultiLabelCRFLikelihood
    from pyrocg.structured.meanfield import surrogate_log_lik

    g = torch.Generator().manual_seed(5)
    grid = GridMeanFieldCRF(3, num_iters=3, damping=0.3).double()
    unary = torch.randn(2, 4, 5, 3, dtype=torch.float64, generator=g)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    q = grid(unary)
    want = -q.gather(-1, labels[..., None]).log().squeeze(-1)  # (batch, H, W)
    assert torch.allclose(grid.loss(unary, labels), want.mean())
    lik = GridCRFLikelihood(grid, dataset_size=10)
    got = lik.log_likelihood(unary.movedim(-1, -3), labels)  # network output (batch, C, H, W)
    assert torch.allclose(got, -want.sum((-2, -1)))

    multi = MultiLabelMeanFieldCRF(4, num_iters=3, damping=0.5).double()
    with torch.no_grad():
        multi.coupling_param.copy_(torch.randn(4, 4, dtype=torch.float64, generator=g))
    logits = torch.randn(6, 4, dtype=torch.float64, generator=g)
    y = torch.randint(0, 2, (6, 4), generator=g)
    p = multi(logits)
    want = -(y * p.log() + (1 - y) * (1 - p).log())  # (batch, L)
    assert torch.allclose(multi.loss(logits, y), want.mean())
    lik = MultiLabelCRFLikelihood(multi, dataset_size=10)
    assert torch.allclose(lik.log_likelihood(logits, y), -want.sum(-1))
    # sample dims in front of the network output broadcast over the labels
    assert lik.log_likelihood(logits.expand(3, 6, 4), y).shape == (3, 6)

    # float32, a confident mistake: q(label) rounds to 0 (or 1 - q to 0), yet the loss is the
    # exact -log q and its gradient is the plain softmax/sigmoid one
    z = torch.tensor([[30.0, -30.0, 0.0]], requires_grad=True)
    loss = MultiLabelMeanFieldCRF(3, num_iters=0).loss(z, torch.tensor([[0, 1, 1]]))
    loss.backward()
    assert torch.allclose(loss, torch.tensor((30.0 + 30.0 + 0.6931472) / 3))
    assert torch.allclose(z.grad, (z.sigmoid() - torch.tensor([0.0, 1.0, 1.0])).detach() / 3)
    log_q = torch.tensor([[0.0, -200.0]])
    assert surrogate_log_lik(log_q, torch.tensor([1])).item() == -200.0
