"""One dynamic programme for linear chains over semirings, and the quantities derived from it.

A chain (:class:`Chain`) of ``N`` nodes with ``C`` states is given by

* ``nodes`` ``(batch, N, C)``: log potentials of the nodes' states (start/end folded in);
* ``transitions`` ``(C, C)`` shared, or per-position ``(batch, N-1, C, C)``: log potential of
  ``y_n = i, y_{n+1} = j`` in ``transitions[..., n, i, j]``;
* ``lengths`` ``(batch,)`` (optional): the number of nodes of each chain, ``1 <= lengths <= N``.
  Positions past a chain's end never enter any result and get exactly zero gradient; they may
  hold anything, NaN included.

``-inf`` potentials forbid a state or transition (e.g. allowed-transition constraints). The one
programme is the semiring forward recursion ``alpha_{n+1} = (alpha_n ⊗ T_n) ⊗ u_{n+1}``; its
total ``⊕_y ⊗ potentials`` is computed by one of three backends, chosen in one place
(:func:`choose_method`):

* ``"fused"`` (log semiring, the optimised backend): forward–backward in probability space,
  messages renormalised as often as the potentials' spread requires, one ``(C, C)`` product per
  step, the marginals (the gradient) a hand-written backward pass; used whenever the
  potentials' spread allows it (at most 60 nats per step in float32, 600 in float64);
* ``"sequential"``: the recursion in log space with every message renormalised by its
  (detached) maximum, autograd through the loop (twice differentiable), O(N C²);
* ``"scan"``: a parallel associative scan (tree of semiring ``C × C`` products, every product
  renormalised), O(N C³) work and O(log N) depth, for long chains on a GPU.

Renormalising keeps every message within a few nats of 0, so float32 results are exact to
rounding at any length and scale. Derived quantities: marginals (the gradient of log Z),
entropy, KL divergence and cross-entropy (from local conditionals, never a difference of two
large numbers), Viterbi and k-best paths (max / k-max semirings with back-pointers),
max-marginals, exact samples.

>>> import torch
>>> edges = torch.zeros(1, 2, 2, 2)  # 3 binary nodes, all potentials zero: Z = 2**3
>>> log_partition(edges, init=torch.zeros(1, 2)).exp()
tensor([8.])
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from pyrocg.structured.semirings import KMaxSemiring, LogSemiring, MaxSemiring, Semiring, log_zero

__all__ = [
    "Chain",
    "choose_method",
    "crf_log_partition",
    "crf_viterbi",
    "entropy",
    "log_partition",
    "marginals",
    "sample",
    "topk",
    "viterbi",
]

# On a GPU every kernel launch costs about as much as a small step, so the O(log N) depth of
# the scan wins as soon as the chain is moderately long. On a CPU the fused backend is as fast
# as the scan even for long chains with few states (benchmarks/crf.py), so it is never chosen.
_GPU_SCAN_MIN_STEPS = 32
_GPU_SCAN_MAX_WORK = 2**28  # batch * steps * C**3 elements materialised by the first level
# Largest spread (max − min over finite entries) of one step's potentials for which the fused
# pass runs in probability space: every kernel entry is then >= exp(-spread) relative to its
# maximum, so nothing that matters underflows (float32 normals reach exp(-87)).
_EXP_SPREAD = {torch.float64: 600.0, torch.float32: 60.0}
# Growth budget (in nats) of un-normalised messages between two renormalisations: with the
# potentials shifted to a maximum of 0, a step changes a message's scale by at most its spread
# (or log C), so messages stay within exp(±budget) of 1 — inside float32's exp(±87) with room
# for the entries that matter (float32 resolves exp(-16.6)). 60 instead of 30 nats halves the
# renormalisations (~25% of the fused pass at C = 20, benchmarks/crf.py).
_EXP_BUDGET = {torch.float64: 300.0, torch.float32: 60.0}
# Viterbi: back-pointers + pointer doubling beyond this length for few states (measured)
_VITERBI_DOUBLING_MIN_LENGTH = 256
_VITERBI_DOUBLING_MAX_STATES = 12
_METHODS = ("auto", "fused", "sequential", "scan")


def choose_method(
    semiring: type[Semiring],
    batch: int,
    steps: int,
    num_states: int,
    device: torch.device,
    *,
    fused_ok: bool = True,
    create_graph: bool = False,
) -> str:
    """The one place that picks a backend for ``"auto"``.

    :param semiring: the semiring of the programme (``"fused"`` exists for the log semiring).
    :param steps: ``N - 1``, the number of transitions.
    :param fused_ok: the potentials' spread allows probability space.
    :param create_graph: the result must be twice differentiable (the fused pass is not).
    :returns: ``"fused"``, ``"sequential"`` or ``"scan"``.
    """
    if device.type != "cpu" and steps >= _GPU_SCAN_MIN_STEPS:
        if batch * steps * num_states**3 <= _GPU_SCAN_MAX_WORK:
            return "scan"
    if semiring is LogSemiring and fused_ok and not create_graph:
        return "fused"
    return "sequential"


def _spread(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``max − min`` over ``dims`` ignoring forbidden (``<= log_zero / 2``) entries; NaN stays,
    and all entries forbidden is ``inf`` (probability space would divide 0 by 0)."""
    hi = x.amax(dims)
    low = torch.where(x > log_zero(x.dtype) / 2, x, x.new_tensor(math.inf)).amin(dims)
    return torch.where(low == math.inf, math.inf, hi - low)


def _accumulator(x: torch.Tensor) -> torch.dtype:
    """dtype of running log normalisers: float64 (a sum of up to N terms as large as the
    potentials loses ~sqrt(N) ulps in float32), except where the device lacks it."""
    return x.dtype if x.device.type == "mps" else torch.float64


def _max(x: torch.Tensor, dims: tuple[int, ...] | int) -> torch.Tensor:
    """Detached renormaliser: the maximum over ``dims`` (kept), 0 where it is not finite."""
    m = x.detach().amax(dims, keepdim=True)
    return torch.where(torch.isfinite(m), m, 0)


class _Fused(torch.autograd.Function):
    """Log partition of a :class:`Chain` by forward–backward in probability space.

    ``p_{n+1} = (p_n @ exp(T_n)) ⊙ exp(u_{n+1})``, renormalised every ``every`` steps; each
    chain is read at its own last node. The backward pass runs on sequences right-aligned so
    that no step needs masking, reuses the forward normalisers (Rabiner scaling), and gives
    node marginals and (summed or per-position) edge marginals as vectorised products.
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, nodes, trans, lengths, every: int):
        batch, n, c = nodes.shape
        per_position = trans.dim() == 4
        umax = nodes.amax(-1, keepdim=True)
        eu = (nodes - umax).exp()
        if per_position:
            tmax = trans.amax((-2, -1))  # (B, N-1)
            et = (trans - tmax[..., None, None]).exp()
        else:
            tmax = trans.amax().expand(batch, n - 1)
            et = (trans - trans.amax()).exp()
        p = eu[:, 0]
        probs, norms = [p], []
        one = torch.ones(batch, 1, dtype=nodes.dtype, device=nodes.device)
        for step in range(1, n):
            k = et[:, step - 1] if per_position else et
            p = (torch.bmm(p.unsqueeze(1), k).squeeze(1) if per_position else p @ k) * eu[:, step]
            if step % every == 0 or step == n - 1:
                # an impossible chain (every state forbidden) stays 0 and gets log Z = -inf
                norm = p.sum(-1, keepdim=True).clamp_min_(torch.finfo(p.dtype).tiny)
                p = p / norm
            else:
                norm = one
            probs.append(p)
            norms.append(norm)
        probs = torch.stack(probs, 1)
        # the running log normaliser is a sum of N terms as large as the potentials: it is
        # accumulated in float64 (float32 loses ~sqrt(N) ulps of the total)
        acc = _accumulator(nodes)
        log_scale = umax[:, :1, 0].to(acc)
        norms = torch.cat(norms, -1) if norms else umax[:, 1:, 0]
        if n > 1:
            log_step = norms.log().to(acc) + umax[:, 1:, 0].to(acc) + tmax.to(acc)
            log_scale = torch.cat([log_scale, log_scale + log_step.cumsum(-1)], -1)
        last = (lengths - 1)[:, None]
        p_last = probs.gather(1, last[..., None].expand(batch, 1, c)).squeeze(1)
        ctx.save_for_backward(probs, eu, et, norms, lengths)
        out = log_scale.gather(1, last).squeeze(1) + p_last.sum(-1).log()
        return out.to(nodes.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        probs, eu, et, norms, lengths = ctx.saved_tensors
        batch, n, c = probs.shape
        per_position = et.dim() == 4
        pos = torch.arange(n, device=probs.device)
        node_valid = pos < lengths[:, None]
        shift = (n - lengths)[:, None]
        ragged = bool((shift > 0).any().item())
        # q_{L-1} = 1, q_m = exp(T_m) @ (eu_{m+1} / c_{m+1} ⊙ q_{m+1})
        scaled = eu[:, 1:] / norms.unsqueeze(-1)
        et_r = et
        if ragged:  # right-align every sequence: its last node sits at n - 1
            index = (pos[1:] - shift).clamp_min(0)
            src = (index - 1).clamp_min(0)
            scaled = torch.where(
                (index > 0)[..., None], scaled.gather(1, src[..., None].expand(-1, -1, c)), 1.0
            )
            if per_position:
                eye = torch.eye(c, dtype=et.dtype, device=et.device)
                et_r = torch.where(
                    (index > 0)[..., None, None],
                    et.gather(1, src[..., None, None].expand(-1, -1, c, c)),
                    eye,
                )
        beta = torch.ones(batch, c, dtype=probs.dtype, device=probs.device)
        betas = [beta]
        if per_position:
            for m in range(n - 2, -1, -1):
                beta = torch.bmm(et_r[:, m], (scaled[:, m] * beta).unsqueeze(-1)).squeeze(-1)
                betas.append(beta)
        else:
            et_t = et.T.contiguous()
            for u in reversed(scaled.unbind(1)):
                beta = (u * beta) @ et_t
                betas.append(beta)
        betas.reverse()
        betas = torch.stack(betas, 1)
        if ragged:  # back to left-aligned
            index = (pos + shift).clamp_max(n - 1)[..., None].expand(batch, n, c)
            betas = betas.gather(1, index)
        zero = torch.zeros((), dtype=probs.dtype, device=probs.device)
        node = torch.where(node_valid[..., None], probs * betas, zero)
        weight = grad[:, None] / node.sum(-1).masked_fill(~node_valid, 1)
        grad_nodes = node * weight[..., None]
        grad_trans = None
        if ctx.needs_input_grad[1]:
            if n == 1:
                grad_trans = torch.zeros_like(et)
            else:
                into = torch.where(node_valid[:, 1:, None], eu[:, 1:] * betas[:, 1:], zero)
                if per_position:
                    pred = torch.bmm(probs[:, :-1].reshape(-1, 1, c), et.reshape(-1, c, c))
                    pred = pred.view(batch, n - 1, c)
                else:
                    pred = probs[:, :-1] @ et  # (B, N-1, C)
                norm = (pred * into).sum(-1).masked_fill(~node_valid[:, 1:], 1)
                w = (grad[:, None] / norm)[..., None]
                if per_position:
                    grad_trans = et * probs[:, :-1, :, None] * (into * w)[:, :, None, :]
                else:
                    outer = probs[:, :-1].flatten(0, 1).T @ (into * w).flatten(0, 1)
                    grad_trans = et * outer
        return grad_nodes, grad_trans, None, None


class Chain:
    """A batch of chains: node potentials, transitions and lengths, and the one programme.

    :param nodes: ``(batch, N, C)`` node log potentials.
    :param transitions: ``(C, C)`` shared or ``(batch, N-1, C, C)`` per-position log
        potentials ``[from, to]``.
    :param lengths: ``(batch,)`` integer number of nodes in ``[1, N]``, or ``None``.

    Every method costs O(N C²) per chain (the scan O(N C³) work, O(log N) depth).

    >>> import torch
    >>> ch = Chain(torch.zeros(2, 3, 2), torch.zeros(2, 2), torch.tensor([3, 1]))
    >>> ch.log_partition().exp()  # 2**3 and 2**1 sequences
    tensor([8., 2.])
    >>> ch.topk(2)[0]  # the two best scores of each chain
    tensor([[0., 0.],
            [0., 0.]])
    """

    def __init__(
        self, nodes: torch.Tensor, transitions: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> None:
        if nodes.dim() != 3:
            raise ValueError(f"nodes must have shape (batch, N, C), got {tuple(nodes.shape)}")
        batch, n, c = nodes.shape
        if transitions.shape not in ((c, c), (batch, n - 1, c, c)):
            raise ValueError(
                f"transitions must have shape ({c}, {c}) or ({batch}, {n - 1}, {c}, {c}), "
                f"got {tuple(transitions.shape)}"
            )
        self.batch, self.length, self.num_states = batch, n, c
        self.ragged = lengths is not None
        if lengths is None:
            lengths = torch.full((batch,), n, dtype=torch.long, device=nodes.device)
        self.lengths = lengths.to(device=nodes.device, dtype=torch.long)
        node_valid = torch.arange(n, device=nodes.device) < self.lengths[:, None]
        self.valid = node_valid[:, 1:]  # (B, N-1): edge n lies inside the chain
        if self.ragged:  # padding may hold anything (NaN included): never let it in
            zero = torch.zeros((), dtype=nodes.dtype, device=nodes.device)
            nodes = torch.where(node_valid[..., None], nodes, zero)
            if transitions.dim() == 4:
                transitions = torch.where(self.valid[..., None, None], transitions, zero)
        self.nodes, self.transitions = nodes, transitions

    # -- the programme --------------------------------------------------------------------

    def _log_space(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Potentials with forbidden entries (``-inf``) replaced by the finite log-zero."""
        low = log_zero(self.nodes.dtype)
        return self.nodes.clamp_min(low), self.transitions.clamp_min(low)

    def _step(self, trans: torch.Tensor, n: int) -> torch.Tensor:
        return trans[:, n] if trans.dim() == 4 else trans.unsqueeze(0)

    def _sequential(self, semiring: type[Semiring]) -> torch.Tensor:
        """Forward recursion in log space, every message renormalised by its maximum."""
        nodes, trans = self._log_space()
        dims = tuple(range(1, 2 + semiring.extra))
        alpha = semiring.convert(nodes[:, 0])
        offset = _max(alpha, dims)
        alpha = alpha - offset
        offset = offset.to(_accumulator(nodes))  # a sum of N large terms: float64
        for n in range(self.length - 1):
            new = semiring.vecmat(alpha, self._step(trans, n))
            new = new + nodes[:, n + 1].view(self.batch, -1, *(1,) * semiring.extra)
            c = _max(new, dims)
            valid = self.valid[:, n].view(-1, *(1,) * len(dims))
            alpha = torch.where(valid, new - c, alpha)
            offset = offset + torch.where(valid, c, 0)
        offset = offset.flatten(1)[:, 0]
        out = semiring.total(alpha) + offset.view(-1, *(1,) * semiring.extra)
        return out.to(nodes.dtype)

    def _scan(self, semiring: type[Semiring]) -> torch.Tensor:
        """Parallel associative scan over renormalised ``C × C`` edge matrices."""
        nodes, trans = self._log_space()
        c = self.num_states
        edges = trans + nodes[:, 1:, None, :]
        if self.ragged:
            one = semiring.one_matrix(c, edges.dtype, edges.device)
            edges = torch.where(self.valid[..., None, None], edges, one)
        acc = _accumulator(nodes)  # the offsets sum N terms as large as the potentials
        offset = nodes.new_zeros(self.batch, dtype=acc)
        if edges.shape[1]:
            m = _max(edges, (-2, -1))
            edges = edges - m
            offset = m.sum((1, 2, 3), dtype=acc)
        while edges.shape[1] > 1:
            odd = edges.shape[1] % 2
            paired = semiring.matmul(edges[:, 0 : edges.shape[1] - odd : 2], edges[:, 1::2])
            m = _max(paired, (-2, -1))
            paired = paired - m
            offset = offset + m.sum((1, 2, 3), dtype=acc)
            edges = torch.cat([paired, edges[:, edges.shape[1] - 1 :]], dim=1) if odd else paired
        alpha = nodes[:, 0]
        if edges.shape[1]:
            alpha = semiring.vecmat(alpha, edges[:, 0])
        return (semiring.total(alpha) + offset).to(nodes.dtype)

    def _fused_every(self) -> int | None:
        """Renormalisation interval of the fused pass, or ``None`` when probability space
        would underflow (or the dtype is not float32/64, or the potentials hold NaN/inf)."""
        limit = _EXP_SPREAD.get(self.nodes.dtype)
        if limit is None:
            return None
        spread = _spread(self.nodes, (-1,))  # (B, N)
        if self.transitions.dim() == 4:
            step = _spread(self.transitions, (-2, -1)) + spread[:, 1:]
            total = torch.cat([spread[:, :1], step], 1).amax()
        else:
            total = spread.amax() + _spread(self.transitions, (-2, -1))
        total = float(total.item())
        if not total <= limit:  # false for nan
            return None
        return max(1, int(_EXP_BUDGET[self.nodes.dtype] // max(total, math.log(self.num_states), 1.0)))

    def method(self, semiring: type[Semiring] = LogSemiring, method: str = "auto",
               create_graph: bool = False) -> tuple[str, int | None]:
        """Resolve ``method`` (see :func:`choose_method`) → ``(backend, fused interval)``."""
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if method == "fused" and semiring is not LogSemiring:
            raise ValueError("method='fused' supports only the LogSemiring")
        every = None
        if method in ("auto", "fused") and semiring is LogSemiring:
            every = self._fused_every()
        if method == "auto":
            method = choose_method(
                semiring, self.batch, self.length - 1, self.num_states, self.nodes.device,
                fused_ok=every is not None, create_graph=create_graph,
            )
        elif method == "fused" and every is None:
            method = "sequential"  # extreme potentials: log space
        return method, every

    def log_partition(self, semiring: type[Semiring] = LogSemiring, method: str = "auto") -> torch.Tensor:
        """Semiring sum over all state sequences ``(batch, *value)`` (``log Z`` for the log
        semiring, the best score for max, the ``k`` best for k-max); ``-inf`` when every
        sequence is forbidden."""
        backend, every = self.method(semiring, method)
        if backend == "fused":
            out = _Fused.apply(self.nodes, self.transitions, self.lengths, every)
        elif backend == "scan":
            out = self._scan(semiring)
        else:
            out = self._sequential(semiring)
        return out.masked_fill(out <= log_zero(out.dtype) / 2, -math.inf)

    def marginals(self, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log Z`` ``(batch,)``, node marginals ``(batch, N, C)`` and edge marginals summed
        over positions ``(batch, C, C)`` for shared transitions or per position
        ``(batch, N-1, C, C)``, as the gradient of ``log Z``; differentiable when the
        potentials require grad (then through a twice-differentiable backend)."""
        nodes, trans = self.nodes, self.transitions
        create_graph = torch.is_grad_enabled() and (nodes.requires_grad or trans.requires_grad)
        with torch.enable_grad():
            u = nodes if nodes.requires_grad else nodes.detach().requires_grad_()
            t = trans if trans.requires_grad else trans.detach().requires_grad_()
            leaf = Chain.__new__(Chain)
            leaf.__dict__.update(self.__dict__, nodes=u, transitions=t)
            backend, every = leaf.method(LogSemiring, method, create_graph)
            if backend == "fused":
                log_z = _Fused.apply(u, t, self.lengths, every)
            else:
                log_z = leaf.log_partition(LogSemiring, backend)
            node_m, edge_m = torch.autograd.grad(
                log_z.sum(), (u, t), create_graph=create_graph, materialize_grads=True
            )
        if t.dim() == 2:  # shared transitions: the gradient sums over the batch
            edge_m = None
        if not create_graph:
            log_z = log_z.detach()
        return log_z.masked_fill(log_z <= log_zero(log_z.dtype) / 2, -math.inf), node_m, edge_m

    def backward_messages(self, semiring: type[Semiring] = LogSemiring) -> torch.Tensor:
        """Renormalised backward messages ``(batch, N, C)``: ``beta[:, n, i]`` is the semiring
        sum over all suffixes from state ``i`` at node ``n`` (node ``n`` excluded), up to a
        per-node constant. Past a chain's end they are ``one``."""
        nodes, trans = self._log_space()
        beta = nodes.new_zeros(self.batch, self.num_states)
        betas = [beta]
        for n in range(self.length - 2, -1, -1):
            new = semiring.matvec(self._step(trans, n), nodes[:, n + 1] + beta)
            new = new - _max(new, -1)
            beta = torch.where(self.valid[:, n, None], new, beta)
            betas.append(beta)
        betas.reverse()
        return torch.stack(betas, 1)

    def forward_messages(self, semiring: type[Semiring] = LogSemiring) -> torch.Tensor:
        """Renormalised forward messages ``(batch, N, C)`` (node ``n`` included), up to a
        per-node constant; past a chain's end the last message is repeated."""
        nodes, trans = self._log_space()
        alpha = nodes[:, 0] - _max(nodes[:, 0], -1)
        alphas = [alpha]
        for n in range(self.length - 1):
            new = semiring.vecmat(alpha, self._step(trans, n)) + nodes[:, n + 1]
            new = new - _max(new, -1)
            alpha = torch.where(self.valid[:, n, None], new, alpha)
            alphas.append(alpha)
        return torch.stack(alphas, 1)

    def conditionals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The chain as a Markov chain: ``log p(y_0)`` ``(batch, C)`` and
        ``log p(y_{n+1} = j | y_n = i)`` ``(batch, N-1, C, C)`` (the identity past each
        chain's end), from backward messages: exact in float32 at any scale."""
        nodes, trans = self._log_space()
        beta = self.backward_messages()
        log_p0 = (nodes[:, 0] + beta[:, 0]).log_softmax(-1)
        into = (nodes[:, 1:] + beta[:, 1:]).unsqueeze(-2)  # (B, N-1, 1, C)
        cond = (trans + into).log_softmax(-1)
        if self.ragged:
            eye = LogSemiring.one_matrix(self.num_states, cond.dtype, cond.device)
            cond = torch.where(self.valid[..., None, None], cond, eye)
        return log_p0, cond

    def node_marginals(self) -> torch.Tensor:
        """``p(y_n = c)`` ``(batch, N, C)`` (the last node's marginal repeated past the end)."""
        return self.marginals()[1]

    def cross_entropy(self, other: Chain) -> torch.Tensor:
        """``H(p, q) = −E_p[log q(y)]`` ``(batch,)`` of this chain ``p`` and ``other`` ``q``
        (same shape and lengths), as the sum of local conditional cross-entropies."""
        return self._local_sum(other, entropy_only=False)

    def kl_divergence(self, other: Chain) -> torch.Tensor:
        """``KL(p || q)`` ``(batch,)``, a sum of non-negative local conditional KLs."""
        return self._local_sum(other, entropy_only=False, kl=True)

    def entropy(self) -> torch.Tensor:
        """Entropy ``(batch,)``: ``H(y_0) + Σ_n E[H(y_{n+1} | y_n)]``; differentiable."""
        return self._local_sum(self, entropy_only=True)

    def _local_sum(self, other: Chain, entropy_only: bool, kl: bool = False) -> torch.Tensor:
        log_p0, cond_p = self.conditionals()
        if entropy_only:
            log_q0, cond_q = log_p0, cond_p
        else:
            if other.nodes.shape != self.nodes.shape or not torch.equal(other.lengths, self.lengths):
                raise ValueError("both chains must have the same shape and lengths")
            log_q0, cond_q = other.conditionals()
        # node marginals from the conditionals (probability space: stochastic matrices)
        p0 = log_p0.exp()
        probs = cond_p.exp()
        mu = [p0]
        for n in range(self.length - 2):
            mu.append(torch.bmm(mu[-1].unsqueeze(1), probs[:, n]).squeeze(1))
        local_q = -(probs * cond_q).sum(-1)  # (B, N-1, C): cross-entropy of each row
        first = -(p0 * log_q0).sum(-1)
        if kl:
            local_q = local_q + (probs * cond_p).sum(-1)
            first = first + (p0 * log_p0).sum(-1)
        total = first
        if self.length > 1:
            total = first + (torch.stack(mu, 1) * local_q).sum((-2, -1))  # mu: (B, N-1, C)
        # a forbidden (log-zero) transition of q where p has mass: infinite
        return total.masked_fill(total >= -log_zero(total.dtype) / 2, math.inf)

    # -- decoding ---------------------------------------------------------------------------

    def topk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best state sequences: scores ``(batch, k)`` (decreasing; ``-inf`` when
        fewer than ``k`` sequences are possible) and paths ``(batch, k, N)`` (long; past a
        chain's end the last state is repeated). The k-max semiring with back-pointers;
        cost O(N C² k log k)."""
        semiring = KMaxSemiring(k)
        with torch.no_grad():
            nodes, trans = self._log_space()
            c = self.num_states
            alpha = semiring.convert(nodes[:, 0])  # (B, C, k)
            offset = alpha.amax((1, 2))
            alpha = alpha - offset[:, None, None]
            offset = offset.to(_accumulator(nodes))
            keep = torch.arange(c * k, device=nodes.device).view(1, c, k)
            pointers = []
            for n in range(self.length - 1):
                cand = alpha[:, :, None] + self._step(trans, n)[..., None]  # (B, Ci, Cj, k)
                cand = cand.transpose(1, 2).flatten(2)  # (B, Cj, Ci * k)
                new, ptr = cand.topk(k, dim=-1)
                new = new + nodes[:, n + 1, :, None]
                m = new.amax((1, 2))
                new = new - m[:, None, None]
                valid = self.valid[:, n]
                alpha = torch.where(valid[:, None, None], new, alpha)
                offset = offset + torch.where(valid, m, 0)
                pointers.append(torch.where(valid[:, None, None], ptr, keep))
            scores, flat = alpha.flatten(1).topk(k, dim=-1)
            scores = (scores + offset[:, None]).to(nodes.dtype)
            state, rank = flat // k, flat % k
            path = [state]
            for ptr in reversed(pointers):
                back = ptr.flatten(1).gather(1, state * k + rank)
                state, rank = back // k, back % k
                path.append(state)
            path.reverse()
            paths = torch.stack(path, -1)
        return scores.masked_fill(scores <= log_zero(scores.dtype) / 2, -math.inf), paths

    def max_marginals(self) -> torch.Tensor:
        """``max_{y: y_n = c} score(y) − max_y score(y)`` ``(batch, N, C)``: ``<= 0``, and 0
        on the Viterbi path (``-inf`` for forbidden states)."""
        with torch.no_grad():
            x = self.forward_messages(MaxSemiring) + self.backward_messages(MaxSemiring)
            x = x - x.amax(-1, keepdim=True)
        return x.masked_fill(x <= log_zero(x.dtype) / 2, -math.inf)

    def viterbi(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Best score ``(batch,)`` and path ``(batch, N)`` (long; past a chain's end the last
        state is repeated). Max-messages in a states-major layout, renormalised as often as
        the spread requires; back-tracking from the stored messages (no back-pointers) or, for
        long chains with few states, from vectorised back-pointers by pointer doubling."""
        with torch.no_grad():
            nodes, trans = self._log_space()
            batch, n, c = nodes.shape
            per_position = trans.dim() == 4
            # states-major layout (C, B): the step tensor is (C_from, C_to, B), contiguous,
            # and the reduction runs over its outermost dimension
            umax = nodes.amax(-1, keepdim=True)
            unary_t = (nodes - umax).permute(1, 2, 0).contiguous()  # (N, C, B)
            if per_position:
                tmax = trans.amax((-2, -1))  # (B, N-1)
                trans_t = (trans - tmax[..., None, None]).permute(1, 2, 3, 0).contiguous()
            else:
                trans_t = (trans - trans.amax()).unsqueeze(-1).contiguous()
            t_spread = _spread(trans, (-2, -1))
            t_spread = t_spread.amax() if t_spread.numel() else 0.0
            spread = float((_spread(nodes, (-1,)).amax() + t_spread).item())
            every = max(1, int(64 // spread)) if spread > 0 else 64
            alpha = unary_t[0]
            alphas = [alpha]
            for m in range(1, n):
                step = trans_t[m - 1] if per_position else trans_t
                alpha = (alpha.unsqueeze(1) + step).amax(0) + unary_t[m]
                if m % every == 0:
                    alpha = alpha - alpha.amax(0)
                alphas.append(alpha)
            stacked = torch.stack(alphas, 0)  # (N, C, B)
            if n > _VITERBI_DOUBLING_MIN_LENGTH and c <= _VITERBI_DOUBLING_MAX_STATES:
                scores = stacked[:-1].unsqueeze(2) + (trans_t if per_position else trans_t[None])
                pointers = scores.max(1).indices  # (N-1, C_to, B)
                path = _pointer_doubling(
                    stacked.permute(2, 0, 1), pointers.permute(2, 0, 1), self.lengths
                )
            else:
                path = self._backtrack(stacked.permute(2, 0, 1).contiguous(), trans)
            best = self.score(path)
        return best, path

    def _backtrack(self, alphas: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """Back-tracking from stored max-messages ``(B, N, C)`` on right-aligned sequences."""
        batch, n, c = alphas.shape
        pos = torch.arange(n, device=alphas.device)
        shift = None
        per_position = trans.dim() == 4
        if self.ragged:
            shift = (n - self.lengths)[:, None]
            if bool((shift > 0).any().item()):  # right-align: last node at n - 1
                index = (pos - shift).clamp_min(0)
                alphas = alphas.gather(1, index[..., None].expand(batch, n, c))
                if per_position:
                    src = index[:, :-1].clamp_max(n - 2)
                    trans = trans.gather(1, src[..., None, None].expand(-1, -1, c, c))
            else:
                shift = None
        state = alphas[:, -1].argmax(-1)
        into = trans.transpose(-1, -2).contiguous()  # into[..., j, :] = transitions[..., :, j]
        states = [state]
        rows = torch.arange(batch, device=alphas.device)
        for m in range(n - 2, -1, -1):
            col = into[rows, m, state] if per_position else into[state]
            state = (alphas[:, m] + col).argmax(-1)
            states.append(state)
        states.reverse()
        path = torch.stack(states, 1)
        if shift is not None:
            path = path.gather(1, (pos + shift).clamp_max(n - 1))
        return path

    def score(self, path: torch.Tensor) -> torch.Tensor:
        """Log potential ``(..., batch)`` of state sequences ``(..., batch, N)`` (positions past
        a chain's end are ignored)."""
        nodes, trans = self.nodes, self.transitions
        path = path.masked_fill(path >= self.num_states, 0)
        total = nodes.expand(path.shape + (self.num_states,)).gather(-1, path[..., None])[..., 0]
        node_valid = torch.arange(self.length, device=path.device) < self.lengths[:, None]
        total = torch.where(node_valid, total, 0).sum(-1)
        if self.length > 1:
            prev, nxt = path[..., :-1], path[..., 1:]
            if trans.dim() == 2:
                pair = trans[prev, nxt]
            else:
                flat = trans.flatten(-2).expand(path.shape[:-1] + (self.length - 1, -1))
                pair = flat.gather(-1, (prev * self.num_states + nxt)[..., None])[..., 0]
            total = total + torch.where(self.valid, pair, 0).sum(-1)
        return total

    def sample(self, num_samples: int = 1) -> torch.Tensor:
        """Exact samples ``(num_samples, batch, N)`` (long) from the Markov-chain form
        (:meth:`conditionals`); past a chain's end the last state is repeated."""
        with torch.no_grad():
            log_p0, cond = self.conditionals()
            shape = (num_samples, self.batch, self.num_states)

            def draw(logits: torch.Tensor) -> torch.Tensor:
                gumbel = -torch.empty_like(logits).exponential_().log()
                return (logits + gumbel).argmax(-1)

            state = draw(log_p0.expand(shape))
            path = [state]
            for n in range(self.length - 1):
                rows = cond[:, n].expand(num_samples, -1, -1, -1)
                state = draw(rows.gather(2, state[..., None, None].expand(*shape[:2], 1, shape[2]))[:, :, 0])
                path.append(state)
        return torch.stack(path, -1)


def _pointer_doubling(alphas: torch.Tensor, pointers: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Best path from max-messages ``(B, N, C)`` and back-pointers ``(B, N-1, C)``:
    ``log2(N)`` vectorised gathers instead of ``N`` sequential ones."""
    batch, n, c = alphas.shape
    identity = torch.arange(c, device=alphas.device).expand(batch, c)
    maps = torch.cat([pointers, identity.unsqueeze(1)], dim=1)
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, c)
    alpha = alphas.gather(1, index).squeeze(1)
    past_end = torch.arange(n, device=alphas.device) >= (lengths[:, None] - 1)
    maps = torch.where(past_end[..., None], identity.unsqueeze(1), maps)
    last = alpha.argmax(-1, keepdim=True)
    # maps[:, m] sends the state of node m+1 to the best state of node m; after round k,
    # maps[:, m] sends node min(m + 2^k, N-1) to node m. The identity tail keeps hops in range.
    buf = torch.cat([maps, identity.unsqueeze(1).expand(batch, n, c)], dim=1)
    hop = 1
    while hop < n:
        buf[:, :n] = buf[:, :n].gather(-1, buf[:, hop : hop + n])
        hop *= 2
    return buf[:, :n].gather(-1, last.unsqueeze(1).expand(batch, n, 1)).squeeze(-1)


# -- edge-potential functions (general edges ``(batch, N-1, C, C)`` with unaries folded in) ---


def _edge_chain(edges: torch.Tensor, lengths: torch.Tensor | None, init: torch.Tensor | None) -> Chain:
    if edges.dim() != 4 or edges.shape[-1] != edges.shape[-2]:
        raise ValueError(f"edges must have shape (batch, N-1, C, C), got {tuple(edges.shape)}")
    batch, steps, c, _ = edges.shape
    if init is None:
        init = edges.new_zeros(batch, c)
    nodes = torch.cat([init.unsqueeze(1), init.new_zeros(batch, steps, c)], 1)
    return Chain(nodes, edges, lengths)


def log_partition(
    edges: torch.Tensor,
    lengths: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    semiring: type[Semiring] = LogSemiring,
    method: str = "auto",
) -> torch.Tensor:
    """Semiring sum over all state sequences of the product of their potentials.

    :param edges: ``(batch, N-1, C, C)`` log potentials, ``edges[b, n, i, j]`` for
        ``y_n = i, y_{n+1} = j``.
    :param lengths: ``(batch,)`` integer number of nodes in ``[1, N]``; ``None`` = all ``N``.
    :param init: ``(batch, C)`` log potentials of node 0; ``None`` = zeros.
    :param semiring: :class:`LogSemiring` (log Z), :class:`MaxSemiring` (Viterbi score) or a
        :func:`KMaxSemiring` (``(batch, k)`` best scores).
    :param method: ``"auto"`` (:func:`choose_method`), ``"fused"``, ``"sequential"`` or
        ``"scan"`` (see the module docstring).
    :returns: ``(batch,)`` (``(batch, k)`` for k-max).
    """
    return _edge_chain(edges, lengths, init).log_partition(semiring, method)


def crf_log_partition(
    unary: torch.Tensor,
    transitions: torch.Tensor,
    lengths: torch.Tensor | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """Log partition of a chain whose edges factor as ``transitions[i, j] + unary[n+1, j]``,
    without building the ``(batch, N-1, C, C)`` edges: :meth:`Chain.log_partition`.

    :param unary: ``(batch, N, C)`` node log potentials (start/end potentials folded in).
    :param transitions: ``(C, C)`` or ``(batch, N-1, C, C)`` ``[from, to]`` log potentials.
    :param lengths: ``(batch,)`` number of nodes in ``[1, N]``.
    :returns: ``(batch,)``.
    """
    return Chain(unary, transitions, lengths).log_partition(LogSemiring, method)


def marginals(
    edges: torch.Tensor,
    lengths: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log partition and marginals, as the gradient of the log partition.

    :returns: ``log_z`` ``(batch,)``, node-0 marginals ``(batch, C)`` and edge marginals
        ``(batch, N-1, C, C)`` (exactly zero past each chain's end). They stay differentiable
        when the inputs require grad.
    """
    log_z, node_m, edge_m = _edge_chain(edges, lengths, init).marginals(method)
    return log_z, node_m[:, 0], edge_m


def entropy(
    edges: torch.Tensor, lengths: torch.Tensor | None = None, init: torch.Tensor | None = None
) -> torch.Tensor:
    """Entropy ``(batch,)`` of the Gibbs distribution of the chain (:meth:`Chain.entropy`)."""
    return _edge_chain(edges, lengths, init).entropy()


def viterbi(
    edges: torch.Tensor, lengths: torch.Tensor | None = None, init: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best score ``(batch,)`` and path ``(batch, N)`` (:meth:`Chain.viterbi`)."""
    return _edge_chain(edges, lengths, init).viterbi()


def crf_viterbi(
    unary: torch.Tensor, transitions: torch.Tensor, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`Chain.viterbi` for edges ``transitions[i, j] + unary[n+1, j]``.

    :param unary: ``(batch, N, C)`` (start/end folded in).
    :param transitions: ``(C, C)`` or ``(batch, N-1, C, C)``.
    """
    return Chain(unary, transitions, lengths).viterbi()


def topk(
    edges: torch.Tensor,
    k: int,
    lengths: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best scores ``(batch, k)`` and paths ``(batch, k, N)`` (:meth:`Chain.topk`)."""
    return _edge_chain(edges, lengths, init).topk(k)


def sample(
    edges: torch.Tensor,
    lengths: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    num_samples: int = 1,
) -> torch.Tensor:
    """Exact samples ``(num_samples, batch, N)`` (:meth:`Chain.sample`)."""
    return _edge_chain(edges, lengths, init).sample(num_samples)
