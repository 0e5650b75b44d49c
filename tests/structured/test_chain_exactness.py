"""float32 against float64 at length 4000 and at potentials of ±1e4, on every backend.

One float64 reference per set of potentials is shared by all backends. The entropy has one
implementation (local conditionals), so it is checked once per set. With ``requires_grad``,
``log_partition`` runs the backend it runs without (its gradient is what ``marginals``
returns), while ``marginals`` must stay differentiable and may switch to a twice
differentiable backend: that case is computed only where the backend differs.
"""

import pytest
import torch

from pyrocg.structured import LinearChainCRF, LogSemiring
from pyrocg.structured.chain import Chain


def _potentials(length, tags, scale, seed, batch=2):
    g = torch.Generator().manual_seed(seed)
    if scale == "uniform":  # potentials uniform in ±1e4
        unary = (torch.rand(batch, length, tags, dtype=torch.float64, generator=g) * 2 - 1) * 1e4
        trans = (torch.rand(tags, tags, dtype=torch.float64, generator=g) * 2 - 1) * 1e4
    else:
        unary = torch.randn(batch, length, tags, dtype=torch.float64, generator=g) * scale
        trans = torch.randn(tags, tags, dtype=torch.float64, generator=g) * scale
    # float32 inputs; the reference is float64 on the same (rounded) numbers
    return unary.float().double(), trans.float().double()


def _check(unary, trans, tol_marg, tol_ent_abs=None, tol_ent_rel=None):
    """float32 log Z (1e-6 relative), marginals and entropy vs float64 on every backend,
    without and with ``requires_grad``; returns the backends run."""
    lengths = torch.tensor([unary.shape[1], unary.shape[1] * 3 // 4])
    ref = Chain(unary, trans, lengths)
    log_z64, marg64, _ = ref.marginals()
    valid = (torch.arange(unary.shape[1]) < lengths[:, None]).double()

    def check_marginals(marg, where):
        # probabilities up to the tolerance: at ±1e4 the log-space backends add float32
        # numbers of size 1e4 (ulp 1e-3), so a position's gradient sums to 1 ± 3e-4
        assert (marg >= 0).all() and (marg <= 1 + tol_marg).all(), where
        assert (marg.sum(-1).double() - valid).abs().max() < tol_marg, where
        err = (marg.double() - marg64).abs().max()
        assert err < tol_marg, f"{where}: marginals off by {err:.2e}"

    def check_log_z(log_z, where):
        err = ((log_z.double() - log_z64).abs() / log_z64.abs()).max()
        assert err < 1e-6, f"{where}: log Z off by {err:.2e} relative"

    u32, t32 = unary.float(), trans.float()
    ran = set()
    for method in ("fused", "sequential", "scan"):
        ch = Chain(u32, t32, lengths)
        backend = ch.method(LogSemiring, method)[0]
        if backend not in ran:  # "fused" falls back to "sequential" when the spread is large
            ran.add(backend)
            check_log_z(ch.log_partition(method=method), backend)
            log_z, marg, _ = ch.marginals(method=method)
            check_log_z(log_z, backend)
            check_marginals(marg, backend)
        graph_backend = ch.method(LogSemiring, method, create_graph=True)[0]
        if graph_backend != backend:  # requires_grad: marginals through another backend
            u, t = u32.clone().requires_grad_(), t32.clone().requires_grad_()
            log_z, marg, _ = Chain(u, t, lengths).marginals(method=method)
            assert marg.requires_grad
            check_log_z(log_z, f"{graph_backend} (requires_grad)")
            check_marginals(marg, f"{graph_backend} (requires_grad)")
    ent64 = ref.entropy()
    err = (Chain(u32, t32, lengths).entropy().double() - ent64).abs()
    if tol_ent_rel is not None:
        assert (err / ent64.abs()).max() < tol_ent_rel
    if tol_ent_abs is not None:
        assert err.max() < tol_ent_abs
    return ran


@pytest.mark.parametrize("tags", [4, 12])
def test_float32_long_chain(tags):
    unary, trans = _potentials(4000, tags, 1.0, seed=tags)
    ran = _check(unary, trans, tol_marg=1e-4, tol_ent_rel=1e-3)
    assert ran == {"fused", "sequential", "scan"}
    # what "auto" picks is among them: fused on a CPU, sequential with requires_grad
    ch = Chain(unary.float(), trans.float())
    assert ch.method()[0] == "fused"
    assert ch.method(create_graph=True)[0] == "sequential"


@pytest.mark.parametrize(("length", "tags"), [(10_000, 4), (2000, 12)])
def test_float32_extreme_potentials(length, tags):
    unary, trans = _potentials(length, tags, "uniform", seed=length + tags)
    # probability space would underflow: "auto" (and "fused") take the log-space loop
    assert Chain(unary.float(), trans.float()).method()[0] == "sequential"
    ran = _check(unary, trans, tol_marg=1e-3, tol_ent_abs=1e-2)
    assert ran == {"sequential", "scan"}


def test_float64_entropy_at_extreme_potentials():
    """The float64 entropy at ±1e4 against a closed form: with zero transitions the
    positions are independent and the entropy is the sum of the per-position entropies
    (near-ties keep each one away from 0)."""
    g = torch.Generator().manual_seed(0)
    unary = (torch.rand(3, 6, 3, dtype=torch.float64, generator=g) * 2 - 1) * 1e4
    unary[:, :, 0] = unary[:, :, 1] + torch.rand(3, 6, dtype=torch.float64, generator=g)  # near ties
    trans = torch.zeros(3, 3, dtype=torch.float64)
    crf = LinearChainCRF(unary, trans)
    p = unary.softmax(-1)
    want = -(p * p.clamp_min(1e-300).log()).sum((-2, -1))
    assert torch.allclose(crf.entropy(), want, atol=1e-6, rtol=0)
