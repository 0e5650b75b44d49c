"""float32 against float64 at length 4000 and at potentials of ±1e4, on every backend."""

import pytest
import torch

from pyrocg.structured import LinearChainCRF
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


def _check(unary, trans, method, tol_marg, tol_ent_abs=None, tol_ent_rel=None):
    """float32 log Z, marginals, d(log Z)/d(unary) and entropy vs float64, without and with
    ``requires_grad`` (which takes the twice-differentiable path for marginals)."""
    lengths = torch.tensor([unary.shape[1], unary.shape[1] * 3 // 4])
    ref = Chain(unary, trans, lengths)
    log_z64, marg64, _ = ref.marginals()
    ent64 = ref.entropy()
    for requires_grad in (False, True):
        u32 = unary.float().requires_grad_(requires_grad)
        t32 = trans.float().requires_grad_(requires_grad)
        ch = Chain(u32, t32, lengths)
        log_z = ch.log_partition(method=method)
        assert ((log_z.double() - log_z64).abs() / log_z64.abs()).max() < 1e-6
        if requires_grad:
            (grad,) = torch.autograd.grad(log_z.sum(), u32)
            assert (grad.double() - marg64).abs().max() < tol_marg
        _, marg, _ = ch.marginals(method=method)
        assert (marg >= 0).all() and (marg <= 1 + 1e-6).all()
        assert (marg.double() - marg64).abs().max() < tol_marg
        err = (ch.entropy().double() - ent64).abs()
        if tol_ent_rel is not None:
            assert (err / ent64.abs()).max() < tol_ent_rel
        if tol_ent_abs is not None:
            assert err.max() < tol_ent_abs


# "auto" is the fused backend on a CPU (and the log-space loop for marginals that must stay
# differentiable); the scan is what "auto" picks on a GPU.
@pytest.mark.parametrize(("tags", "method"), [(4, "auto"), (4, "scan"), (12, "sequential")])
def test_float32_long_chain(tags, method):
    unary, trans = _potentials(4000, tags, 1.0, seed=tags)
    _check(unary, trans, method, tol_marg=1e-4, tol_ent_rel=1e-3)


@pytest.mark.parametrize(("length", "tags", "method"), [(10_000, 4, "auto"), (2000, 12, "auto"),
                                                        (2000, 4, "scan")])
def test_float32_extreme_potentials(length, tags, method):
    unary, trans = _potentials(length, tags, "uniform", seed=length + tags)
    _check(unary, trans, method, tol_marg=1e-3, tol_ent_abs=1e-2)


def test_float64_entropy_at_extreme_potentials():
    """The float64 entropy against an independent float64 computation: log Z minus the
    expected score evaluated in extended precision is not available, so compare the local
    formula with brute-force-free exact marginals of a short chain at ±1e4 scale."""
    g = torch.Generator().manual_seed(0)
    unary = (torch.rand(3, 6, 3, dtype=torch.float64, generator=g) * 2 - 1) * 1e4
    unary[:, :, 0] = unary[:, :, 1] + torch.rand(3, 6, dtype=torch.float64, generator=g)  # near ties
    trans = torch.zeros(3, 3, dtype=torch.float64)
    crf = LinearChainCRF(unary, trans)
    # independent positions: the entropy is the sum of the per-position entropies
    p = unary.softmax(-1)
    want = -(p * p.clamp_min(1e-300).log()).sum((-2, -1))
    assert torch.allclose(crf.entropy(), want, atol=1e-6, rtol=0)
