"""Decoding features against brute-force enumeration: constraints, partial labels, k-best,
max-marginals, KL / cross-entropy, the exported decoder; gradcheck; torch-struct."""

import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrocg.structured import MISSING, CRFDecoder, KMaxSemiring, LinearChainCRF, chain


def _random_crf(seed, batch, length, tags, per_position, ragged, constrained, g=None):
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(batch, length, tags, dtype=torch.float64, generator=g)
    shape = (batch, length - 1, tags, tags) if per_position else (tags, tags)
    trans = torch.randn(*shape, dtype=torch.float64, generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g) if ragged else None
    kw = {"start": torch.randn(tags, dtype=torch.float64, generator=g),
          "end": torch.randn(tags, dtype=torch.float64, generator=g)}
    if constrained:
        allowed = torch.rand(tags, tags, generator=g) < 0.7
        allowed[:, 0] = True  # tag 0 is always reachable: some path is possible
        kw["allowed"] = allowed
        kw["allowed_start"] = torch.rand(tags, generator=g) < 0.7
        kw["allowed_start"][0] = True
        kw["allowed_end"] = torch.rand(tags, generator=g) < 0.7
        kw["allowed_end"][0] = True
    return LinearChainCRF(unary, trans, lengths, **kw)


def _enumerate(crf, b):
    """All sequences of batch element ``b`` (padded with 0) and their log potentials, by
    explicit loops over the definition (constraints as -inf)."""
    length, tags = crf.unary.shape[-2:]
    n = length if crf.lengths is None else int(crf.lengths[b])
    rows = []
    for seq in itertools.product(range(tags), repeat=n):
        s = crf.start[seq[0]].item() + crf.end[seq[-1]].item()
        s += sum(crf.unary[b, i, seq[i]].item() for i in range(n))
        for i in range(n - 1):
            t = crf.transitions if crf.transitions.dim() == 2 else crf.transitions[b, i]
            s += t[seq[i], seq[i + 1]].item()
            if crf.allowed is not None and not crf.allowed[seq[i], seq[i + 1]]:
                s = float("-inf")
        if crf.allowed_start is not None and not (crf.allowed_start[seq[0]] and crf.allowed_end[seq[-1]]):
            s = float("-inf")
        rows.append((tuple(seq) + (0,) * (length - n), s))
    return rows


SETTINGS = {"max_examples": 15, "deadline": None}
CASE = {"seed": st.integers(0, 2**16), "batch": st.integers(1, 3), "length": st.integers(1, 4),
        "tags": st.integers(1, 3), "per_position": st.booleans(), "ragged": st.booleans(),
        "constrained": st.booleans()}


@settings(**SETTINGS)
@given(**CASE)
def test_constrained_crf_matches_brute_force(seed, batch, length, tags, per_position, ragged, constrained):
    crf = _random_crf(seed, batch, length, tags, per_position, ragged, constrained)
    samples = crf.sample((200,))
    for b in range(batch):
        rows = _enumerate(crf, b)
        scores = torch.tensor([s for _, s in rows], dtype=torch.float64)
        log_z = scores.logsumexp(0)
        assert torch.allclose(crf.log_partition[b], log_z)
        probs = (scores - log_z).exp()
        marg = torch.zeros(length, tags, dtype=torch.float64)
        n = length if crf.lengths is None else int(crf.lengths[b])
        for (seq, _), p in zip(rows, probs, strict=True):
            for i in range(n):
                marg[i, seq[i]] += p
        assert torch.allclose(crf.marginals[b], marg)
        assert torch.allclose(crf.entropy()[b], -torch.special.xlogy(probs, probs).sum())
        best = scores.max()
        assert torch.isclose(crf.score(crf.argmax)[b], best)
        # samples never take a forbidden path
        possible = {seq for seq, s in rows if s > float("-inf")}
        assert {tuple(s) for s in samples[:, b].tolist()} <= possible
        # max-marginals: best score through (i, c) minus the best score
        mm = torch.full((length, tags), float("-inf"), dtype=torch.float64)
        for seq, s in rows:
            for i in range(n):
                mm[i, seq[i]] = max(mm[i, seq[i]], s - best)
        mm[n:] = 0
        assert torch.allclose(crf.max_marginals[b], mm)


@settings(**SETTINGS)
@given(**CASE, k=st.integers(1, 6))
def test_topk_matches_brute_force(seed, batch, length, tags, per_position, ragged, constrained, k):
    crf = _random_crf(seed, batch, length, tags, per_position, ragged, constrained)
    paths, scores = crf.topk(k)
    assert paths.shape == (k, batch, length) and scores.shape == (k, batch)
    for b in range(batch):
        want = sorted((s for _, s in _enumerate(crf, b)), reverse=True)
        want = torch.tensor((want + [float("-inf")] * k)[:k], dtype=torch.float64)
        assert torch.allclose(scores[:, b], want)
        finite = torch.isfinite(want)
        got = paths[finite, b]
        assert len({tuple(p) for p in got.tolist()}) == int(finite.sum())  # distinct paths
        assert torch.allclose(crf.score(paths)[finite, b], scores[finite, b])
    assert torch.equal(crf.topk(1)[0][0], crf.argmax) or torch.allclose(
        crf.score(crf.topk(1)[0][0]), crf.score(crf.argmax))


@settings(**SETTINGS)
@given(**CASE)
def test_kl_and_cross_entropy_match_brute_force(seed, batch, length, tags, per_position, ragged, constrained):
    p = _random_crf(seed, batch, length, tags, per_position, ragged, constrained)
    q = _random_crf(seed + 1, batch, length, tags, per_position, False, False)
    q = LinearChainCRF(q.unary, q.transitions, p.lengths, start=q.start, end=q.end)
    kl = torch.distributions.kl_divergence(p, q)
    ce = p.cross_entropy(q)
    for b in range(batch):
        sp = torch.tensor([s for _, s in _enumerate(p, b)], dtype=torch.float64)
        sq = torch.tensor([s for _, s in _enumerate(q, b)], dtype=torch.float64)
        lp, lq = sp - sp.logsumexp(0), sq - sq.logsumexp(0)
        pp = lp.exp()
        assert torch.allclose(ce[b], -(pp * lq).sum())
        assert torch.allclose(kl[b], (pp * (torch.where(pp > 0, lp, 0) - lq)).sum())
    assert torch.allclose(torch.distributions.kl_divergence(p, p), torch.zeros(batch, dtype=torch.float64),
                          atol=1e-10)


@settings(**SETTINGS)
@given(**CASE, frac=st.floats(0.0, 1.0))
def test_partial_labels_match_brute_force(seed, batch, length, tags, per_position, ragged, constrained, frac):
    crf = _random_crf(seed, batch, length, tags, per_position, ragged, constrained)
    g = torch.Generator().manual_seed(seed)
    tags_ = crf.sample((2,))
    unknown = torch.rand(tags_.shape, generator=g) < frac
    partial = tags_.masked_fill(unknown, MISSING)
    got = crf.log_prob(partial)
    for s in range(2):
        for b in range(batch):
            rows = _enumerate(crf, b)
            scores = torch.tensor([sc for _, sc in rows], dtype=torch.float64)
            n = length if crf.lengths is None else int(crf.lengths[b])
            keep = torch.tensor([all(partial[s, b, i] in (MISSING, seq[i]) for i in range(n))
                                 for seq, _ in rows])
            want = scores[keep].logsumexp(0) - scores.logsumexp(0)
            assert torch.allclose(got[s, b], want)


def test_log_prob_partial_sets_and_errors():
    crf = _random_crf(0, 2, 3, 3, False, False, False)
    allowed = torch.ones(2, 3, 3, dtype=torch.bool)
    assert torch.allclose(crf.log_prob_partial(allowed), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    tags = crf.argmax
    assert torch.allclose(crf.log_prob_partial(torch.nn.functional.one_hot(tags, 3).bool()),
                          crf.log_prob(tags))
    with pytest.raises(TypeError, match="allowed must be a bool"):
        crf.log_prob_partial(allowed.float())
    with pytest.raises(ValueError, match="allowed must have shape"):
        crf.log_prob_partial(allowed[:, :2])
    with pytest.raises(ValueError, match="or -2 for an unknown tag"):
        crf.log_prob(torch.tensor([[0, -3, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="k must be a positive int"):
        crf.topk(0)
    with pytest.raises(TypeError, match="allowed must be a bool"):
        LinearChainCRF(crf.unary, crf.transitions, allowed=torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"allowed_end must have shape \(3,\)"):
        LinearChainCRF(crf.unary, crf.transitions, allowed_end=torch.ones(4, dtype=torch.bool))
    other = LinearChainCRF(crf.unary[:, :2], crf.transitions)
    with pytest.raises(ValueError, match="same batch shape, length and tags"):
        crf.kl_divergence(other)


def test_bio_constraints_hold_in_decoding_and_sampling():
    # tags: O=0, B=1, I=2; I may only follow B or I, and cannot start a sequence
    allowed = torch.ones(3, 3, dtype=torch.bool)
    allowed[0, 2] = False
    allowed_start = torch.tensor([True, True, False])
    unary = torch.randn(4, 12, 3)
    unary[..., 2] += 3.0  # the unconstrained decoder would choose I everywhere
    crf = LinearChainCRF(unary, torch.zeros(3, 3), allowed=allowed, allowed_start=allowed_start)
    for paths in (crf.argmax[None], crf.sample((50,)), crf.topk(5)[0]):
        prev, nxt = paths[..., :-1], paths[..., 1:]
        assert not ((prev == 0) & (nxt == 2)).any()
        assert not (paths[..., 0] == 2).any()
    assert (crf.marginals[:, 0, 2] == 0).all()


def test_gradient_of_log_partition_is_the_marginals():
    g = torch.Generator().manual_seed(3)
    unary = torch.randn(2, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    trans = torch.randn(3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    lengths = torch.tensor([4, 2])
    torch.autograd.gradcheck(lambda u, t: LinearChainCRF(u, t, lengths).log_partition, (unary, trans))
    crf = LinearChainCRF(unary, trans, lengths)
    (grad,) = torch.autograd.grad(crf.log_partition.sum(), unary)
    assert torch.allclose(grad, crf.marginals)
    for method in ("fused", "sequential", "scan"):
        ch = chain.Chain(unary, trans, lengths)
        torch.autograd.gradcheck(lambda u, t, m=method: chain.Chain(u, t, lengths).log_partition(method=m),
                                 (unary, trans))
        assert torch.allclose(ch.marginals(method)[1], grad)


def test_kmax_semiring_log_partition_equals_topk_scores():
    g = torch.Generator().manual_seed(4)
    edges = torch.randn(3, 5, 3, 3, dtype=torch.float64, generator=g)
    lengths = torch.tensor([6, 3, 1])
    scores, _ = chain.topk(edges, 4, lengths)
    for method in ("sequential", "auto"):
        got = chain.log_partition(edges, lengths, semiring=KMaxSemiring(4), method=method)
        assert torch.allclose(got, scores)


def test_decoder_exports_and_matches_viterbi():
    g = torch.Generator().manual_seed(5)
    unary = torch.randn(4, 9, 3, generator=g)
    trans, start, end = (torch.randn(*s, generator=g) for s in ((3, 3), (3,), (3,)))
    allowed = torch.ones(3, 3, dtype=torch.bool)
    allowed[0, 2] = False
    lengths = torch.tensor([9, 4, 1, 7])
    crf = LinearChainCRF(unary, trans, lengths, start=start, end=end, allowed=allowed)
    decoder = CRFDecoder(trans, start, end, allowed=allowed)
    program = torch.export.export(decoder, (unary, lengths))
    assert torch.equal(program.module()(unary, lengths), crf.argmax)
    other = torch.randn(4, 9, 3, generator=g)
    want = LinearChainCRF(other, trans, lengths, start=start, end=end, allowed=allowed).argmax
    assert torch.equal(program.module()(other, lengths), want)


def test_matches_torch_struct():
    torch_struct = pytest.importorskip("torch_struct")
    g = torch.Generator().manual_seed(6)
    batch, length, tags = 3, 7, 4
    unary = torch.randn(batch, length, tags, dtype=torch.float64, generator=g)
    trans = torch.randn(tags, tags, dtype=torch.float64, generator=g)
    lengths = torch.tensor([7, 5, 2])
    crf = LinearChainCRF(unary, trans, lengths)

    def ts_edges(unary, trans):  # torch-struct: edges[b, n, z_{n+1}, z_n], node 0 in edge 0
        edges = trans + unary[:, 1:, None, :]
        edges[:, 0] += unary[:, 0, :, None]
        return edges.transpose(-1, -2).contiguous()

    edges = ts_edges(unary, trans)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch_struct.LinearChainCRF(edges, lengths=lengths)
        assert torch.allclose(crf.log_partition, ref.partition)
        node = ref.marginals.sum(-1)  # (B, N-1, C) marginals of nodes 1..N-1
        assert torch.allclose(crf.marginals[:, 1:][lengths[:, None] > torch.arange(1, length)],
                              node[lengths[:, None] > torch.arange(1, length)])
        assert torch.allclose(crf.entropy(), ref.entropy)
        kmax = torch_struct.LinearChainCRF(edges, lengths=lengths).topk(3)
        assert kmax.shape[0] == 3
        other = LinearChainCRF(unary.flip(-1), trans.T.contiguous(), lengths)
        q = torch_struct.LinearChainCRF(ts_edges(other.unary, other.transitions), lengths=lengths)
        assert torch.allclose(crf.cross_entropy(other), ref.cross_entropy(q))
        assert torch.allclose(crf.kl_divergence(other), ref.kl(q))
