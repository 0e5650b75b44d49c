"""LinearChainCRF and the chain dynamic programme against brute-force enumeration."""

import itertools
import math

import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrocg.structured import LinearChainCRF, LogSemiring, MaxSemiring, chain


def _problem(batch, length, tags, per_position, start_end, ragged, dtype=torch.float64, g=None):
    unary = torch.randn(batch, length, tags, dtype=dtype, generator=g)
    shape = (batch, length - 1, tags, tags) if per_position else (tags, tags)
    transitions = torch.randn(*shape, dtype=dtype, generator=g)
    lengths = None
    if ragged:
        lengths = torch.randint(1, length + 1, (batch,), generator=g)
        lengths[0] = length
    kw = {}
    if start_end:
        kw = {
            "start": torch.randn(tags, dtype=dtype, generator=g),
            "end": torch.randn(tags, dtype=dtype, generator=g),
        }
    return unary, transitions, lengths, kw


def _brute(unary, transitions, lengths, start=None, end=None):
    """Enumerate every tag sequence of every batch element with explicit loops.

    Returns per batch element a list of (sequence padded with 0, score)."""
    batch, length, tags = unary.shape
    out = []
    for b in range(batch):
        n = length if lengths is None else int(lengths[b])
        rows = []
        for seq in itertools.product(range(tags), repeat=n):
            s = sum(float(unary[b, i, seq[i]]) for i in range(n))
            for i in range(n - 1):
                t = transitions if transitions.dim() == 2 else transitions[b, i]
                s += float(t[seq[i], seq[i + 1]])
            if start is not None:
                s += float(start[seq[0]]) + float(end[seq[-1]])
            rows.append((tuple(seq) + (0,) * (length - n), s))
        out.append(rows)
    return out


def _exact(rows):
    scores = torch.tensor([s for _, s in rows], dtype=torch.float64)
    log_z = torch.logsumexp(scores, 0)
    return log_z, (scores - log_z).exp()


CASES = [
    # batch, length, tags, per_position, start_end, ragged
    (3, 1, 3, False, True, False),
    (2, 4, 2, False, False, False),
    (4, 5, 3, True, False, True),
    (4, 6, 2, False, True, True),
    (3, 4, 4, True, True, True),
]


@pytest.mark.parametrize("case", CASES)
def test_against_brute_force(case):
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    unary, transitions, lengths, kw = _problem(*case, g=g)
    crf = LinearChainCRF(unary, transitions, lengths, **kw)
    brute = _brute(unary, transitions, lengths, **kw)
    batch, length, tags = unary.shape
    entropy = crf.entropy()
    for b, rows in enumerate(brute):
        log_z, probs = _exact(rows)
        assert torch.allclose(crf.log_partition[b], log_z)
        # log_prob of every sequence (others in the batch get the same tags) sums to 1
        seqs = torch.tensor([seq for seq, _ in rows])
        value = seqs.unsqueeze(1).expand(len(rows), batch, length)
        lp = crf.log_prob(value)[:, b]
        assert torch.allclose(lp.exp(), probs)
        assert torch.allclose(lp.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
        # marginals
        marg = torch.zeros(length, tags, dtype=torch.float64)
        for (seq, _), p in zip(rows, probs, strict=True):
            n = length if lengths is None else int(lengths[b])
            for i in range(n):
                marg[i, seq[i]] += p
        assert torch.allclose(crf.marginals[b], marg)
        # argmax and entropy
        best = rows[int(probs.argmax())][0]
        assert crf.argmax[b].tolist() == list(best)
        assert torch.allclose(entropy[b], -(probs * probs.log()).sum())


@pytest.mark.parametrize("method", ["sequential", "scan"])
@pytest.mark.parametrize("semiring", [LogSemiring, MaxSemiring])
def test_chain_methods_agree_with_brute_force(method, semiring):
    g = torch.Generator().manual_seed(1)
    unary, transitions, lengths, _ = _problem(4, 6, 3, True, False, True, g=g)
    crf = LinearChainCRF(unary, transitions, lengths)
    init, edges = crf._potentials
    got = chain.log_partition(edges, lengths, init, semiring, method)
    for b, rows in enumerate(_brute(unary, transitions, lengths)):
        scores = torch.tensor([s for _, s in rows], dtype=torch.float64)
        want = torch.logsumexp(scores, 0) if semiring is LogSemiring else scores.max()
        assert torch.allclose(got[b], want)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4),
    steps=st.integers(0, 40),
    tags=st.integers(1, 5),
    ragged=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_scan_equals_sequential(batch, steps, tags, ragged, seed):
    g = torch.Generator().manual_seed(seed)
    edges = torch.randn(batch, steps, tags, tags, dtype=torch.float64, generator=g)
    init = torch.randn(batch, tags, dtype=torch.float64, generator=g)
    lengths = torch.randint(1, steps + 2, (batch,), generator=g) if ragged else None
    for semiring in (LogSemiring, MaxSemiring):
        seq = chain.log_partition(edges, lengths, init, semiring, "sequential")
        scan = chain.log_partition(edges, lengths, init, semiring, "scan")
        assert torch.allclose(seq, scan)
    fused = chain.log_partition(edges, lengths, init, LogSemiring, "fused")
    assert torch.allclose(fused, chain.log_partition(edges, lengths, init, method="sequential"))
    score, path = chain.viterbi(edges, lengths, init)
    assert torch.allclose(score, chain.log_partition(edges, lengths, init, MaxSemiring))


def test_padding_never_leaks():
    g = torch.Generator().manual_seed(2)
    unary, transitions, lengths, kw = _problem(3, 6, 3, True, True, False, g=g)
    lengths = torch.tensor([6, 3, 1])
    crf = LinearChainCRF(unary, transitions, lengths, **kw)
    garbage_unary = unary.clone()
    garbage_trans = transitions.clone()
    for b, n in enumerate(lengths.tolist()):
        garbage_unary[b, n:] = torch.randn(6 - n, 3, dtype=unary.dtype) * 1e4
        garbage_trans[b, max(n - 1, 0) :] = float("-inf")
    other = LinearChainCRF(garbage_unary, garbage_trans, lengths, **kw)
    assert torch.equal(crf.log_partition, other.log_partition)
    assert torch.equal(crf.marginals, other.marginals)
    assert torch.equal(crf.argmax, other.argmax)
    assert torch.allclose(crf.entropy(), other.entropy())
    tags = crf.sample((4,))
    assert torch.equal(crf.log_prob(tags), other.log_prob(tags))
    padded = tags.clone()
    padded[:, 1, 3:] = -100  # padding values are ignored
    assert torch.equal(crf.log_prob(tags), crf.log_prob(padded))


def test_gradients_zero_at_padding():
    unary = torch.randn(2, 5, 3, requires_grad=True)
    crf = LinearChainCRF(unary, torch.randn(3, 3), torch.tensor([5, 2]))
    crf.log_partition.sum().backward()
    assert torch.all(unary.grad[1, 2:] == 0)
    assert torch.allclose(unary.grad, crf.marginals)


def test_sample_matches_exact_distribution():
    """Chi-square goodness of fit of 20000 samples over all 3**4 = 81 sequences."""
    g = torch.Generator().manual_seed(3)
    unary, transitions, _, kw = _problem(2, 4, 3, False, True, False, g=g)
    lengths = torch.tensor([4, 2])
    crf = LinearChainCRF(unary, transitions, lengths, **kw)
    num = 20000
    samples = crf.sample((num,))
    assert samples.shape == (num, 2, 4) and samples.dtype == torch.long
    assert torch.all(samples[:, 1, 2:] == 0)
    for b, rows in enumerate(_brute(unary, transitions, lengths, **kw)):
        _, probs = _exact(rows)
        index = {seq: i for i, (seq, _) in enumerate(rows)}
        counts = torch.zeros(len(rows), dtype=torch.float64)
        for seq in map(tuple, samples[:, b].tolist()):
            counts[index[seq]] += 1
        expected = probs * num
        stat = ((counts - expected) ** 2 / expected).sum().item()
        dof = len(rows) - 1
        # Wilson–Hilferty 1e-4 upper quantile of chi2(dof); conservative for a fixed seed.
        z = 3.72
        threshold = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
        assert stat < threshold, (stat, threshold)


def test_stability_extreme_potentials_long_chain():
    g = torch.Generator().manual_seed(4)
    length, tags = 10_000, 4
    unary64 = (torch.rand(2, length, tags, dtype=torch.float64, generator=g) * 2 - 1) * 1e4
    trans64 = (torch.rand(tags, tags, dtype=torch.float64, generator=g) * 2 - 1) * 1e4
    lengths = torch.tensor([length, 7_321])
    ref = LinearChainCRF(unary64, trans64, lengths)
    init, edges = ref._potentials
    want = chain.log_partition(edges, lengths, init, method="sequential")
    for method in ("sequential", "scan", "fused"):
        got64 = chain.log_partition(edges, lengths, init, method=method)
        assert torch.allclose(got64, want, rtol=1e-12)
        got32 = chain.log_partition(edges.float(), lengths, init.float(), method=method)
        assert torch.isfinite(got32).all()
        assert torch.allclose(got32.double(), want, rtol=1e-5)
    crf = LinearChainCRF(unary64.float().requires_grad_(), trans64.float(), lengths)
    crf.log_partition.sum().backward()
    assert torch.isfinite(crf.unary.grad).all()
    assert torch.isfinite(crf.marginals).all()
    assert torch.isfinite(crf.entropy()).all()
    assert torch.equal(crf.argmax[:, :100], ref.argmax[:, :100])


def test_pyro_sample_site_and_batch_shapes():
    unary = torch.randn(2, 3, 5, 4)  # two batch dims
    crf = LinearChainCRF(unary, torch.randn(4, 4), torch.tensor([[5, 1, 3], [2, 4, 5]]))
    assert crf.batch_shape == (2, 3) and crf.event_shape == (5,)
    assert crf.log_partition.shape == (2, 3)
    assert crf.marginals.shape == (2, 3, 5, 4)
    assert crf.sample((7,)).shape == (7, 2, 3, 5)
    assert crf.entropy().shape == (2, 3)
    tags = crf.sample()
    trace = pyro.poutine.trace(lambda: pyro.sample("y", crf, obs=tags)).get_trace()
    assert torch.allclose(trace.log_prob_sum(), crf.log_prob(tags).sum())
    expanded = LinearChainCRF(torch.randn(1, 5, 4), torch.randn(4, 4)).expand((3,))
    assert expanded.batch_shape == (3,) and expanded.log_partition.shape == (3,)


def test_entropy_is_differentiable():
    unary = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    trans = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda u, t: LinearChainCRF(u, t, torch.tensor([4, 3])).entropy(), (unary, trans)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"unary": torch.ones(2, 3, 4, dtype=torch.long)}, TypeError, "unary must be a float"),
        ({"unary": torch.ones(4)}, ValueError, "unary must have shape"),
        ({"transitions": torch.ones(3, 3)}, ValueError, r"transitions must have shape \(4, 4\)"),
        ({"transitions": torch.ones(2, 3, 4, 4)}, ValueError, r"\(2, 2, 4, 4\)"),
        ({"transitions": torch.ones(4, 4, dtype=torch.float64)}, TypeError, "dtype of unary"),
        ({"transitions": [[0.0]]}, TypeError, "transitions must be a torch.Tensor"),
        ({"lengths": torch.tensor([3, 0])}, ValueError, r"lengths must lie in \[1, 3\]"),
        ({"lengths": torch.tensor([3, 4])}, ValueError, r"got \[4\]"),
        ({"lengths": torch.tensor([3.0, 2.0])}, TypeError, "lengths must be an integer"),
        ({"lengths": torch.tensor([3])}, ValueError, r"lengths must have shape \(2,\)"),
        ({"start": torch.ones(3)}, ValueError, r"start must have shape \(4,\)"),
        ({"end": torch.ones(4, dtype=torch.int32)}, TypeError, "end must be a floating"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {"unary": torch.zeros(2, 3, 4), "transitions": torch.zeros(4, 4), **kwargs}
    with pytest.raises(error, match=match):
        LinearChainCRF(**args)


def test_bad_tags():
    crf = LinearChainCRF(torch.zeros(2, 3, 4), torch.zeros(4, 4), torch.tensor([3, 2]))
    with pytest.raises(ValueError, match=r"tags must lie in \[0, 4\)"):
        crf.log_prob(torch.tensor([[0, 1, 4], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"tags must lie in \[0, 4\)"):
        crf.log_prob(torch.tensor([[0, 1, 2], [-1, 0, 0]]))
    with pytest.raises(TypeError, match="tags must be an integer"):
        crf.log_prob(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"tags must have shape \(\.\.\., 2, 3\)"):
        crf.log_prob(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="tags must have length 3"):
        crf.log_prob(torch.zeros(2, 1, dtype=torch.long))
    full = LinearChainCRF(torch.zeros(2, 3, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"tags must lie in \[0, 4\)"):
        full.log_prob(torch.tensor([[0, 1, 2], [0, 0, 5]]))


def test_on_device(device):
    unary = torch.randn(3, 50, 5, device=device, requires_grad=True)
    lengths = torch.tensor([50, 20, 1], device=device)
    crf = LinearChainCRF(unary, torch.randn(5, 5, device=device), lengths)
    cpu = LinearChainCRF(unary.detach().cpu(), crf.transitions.cpu(), lengths.cpu())
    assert torch.allclose(crf.log_partition.cpu(), cpu.log_partition, atol=1e-4)
    assert torch.allclose(crf.marginals.cpu(), cpu.marginals, atol=1e-5)
    assert torch.equal(crf.argmax.cpu(), cpu.argmax)
    assert crf.sample((2,)).device.type == device.type
    init, edges = crf._potentials
    for method in ("sequential", "scan"):
        got = chain.log_partition(edges, lengths, init, method=method)
        assert torch.allclose(got.cpu(), cpu.log_partition, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4])  # probability-space and log-space paths
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_gradient_matches_autograd(scale, dtype):
    g = torch.Generator().manual_seed(5)
    edges = torch.randn(4, 30, 5, 5, dtype=dtype, generator=g) * scale
    init = torch.randn(4, 5, dtype=dtype, generator=g) * scale
    lengths = torch.tensor([31, 10, 1, 2])
    edges[1, 9:] = float("-inf")  # garbage past the end must not leak
    edges[2] = float("nan")
    grads = {}
    for method in ("sequential", "fused"):
        e = edges.clone().requires_grad_()
        i = init.clone().requires_grad_()
        log_z = chain.log_partition(e, lengths, i, method=method)
        (log_z * torch.arange(1.0, 5.0, dtype=dtype)).sum().backward()
        grads[method] = (log_z, i.grad, e.grad)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    for want, got in zip(grads["sequential"], grads["fused"], strict=True):
        assert torch.isfinite(got).all()
        assert torch.allclose(got, want, **tol)


@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_factored_crf_pass_matches_generic(scale, dtype):
    g = torch.Generator().manual_seed(6)
    unary = torch.randn(4, 25, 6, dtype=dtype, generator=g) * scale
    trans = torch.randn(6, 6, dtype=dtype, generator=g) * scale
    lengths = torch.tensor([25, 9, 1, 2])
    unary[1, 9:] = float("-inf")  # garbage past the end must not leak
    unary[2, 1:] = float("nan")
    out = {}
    for method in ("sequential", "fused"):
        u = unary.clone().requires_grad_()
        t = trans.clone().requires_grad_()
        log_z = chain.crf_log_partition(u, t, lengths, method=method)
        (log_z * torch.arange(1.0, 5.0, dtype=dtype)).sum().backward()
        out[method] = (log_z, u.grad, t.grad)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    for want, got in zip(out["sequential"], out["fused"], strict=True):
        assert torch.isfinite(got).all()
        assert torch.allclose(got, want, **tol)


@pytest.mark.parametrize("length", [40, 300])  # backtracking loop / pointer doubling
def test_factored_viterbi_matches_generic(length):
    g = torch.Generator().manual_seed(7)
    unary = torch.randn(5, length, 4, generator=g)
    trans = torch.randn(4, 4, generator=g)
    lengths = torch.tensor([length, 17, 1, 2, length - 1])
    want = chain.viterbi(trans + unary[:, 1:, None, :], lengths, unary[:, 0])
    got = chain.crf_viterbi(unary, trans, lengths)
    assert torch.allclose(got[0], want[0])
    valid = torch.arange(length) < lengths[:, None]
    assert torch.equal(got[1][valid], want[1][valid])
