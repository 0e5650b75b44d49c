"""One generic dynamic programme for linear chains, parametrised by a semiring.

A chain of ``N`` nodes with ``C`` states is given by

* ``edges`` ``(batch, N-1, C, C)``: log potential of the transition from state ``i`` at node
  ``n`` to state ``j`` at node ``n+1`` in ``edges[:, n, i, j]`` (unary potentials of node
  ``n+1`` folded in);
* ``init`` ``(batch, C)`` (optional): log potential of the state of node 0 (its unary, plus a
  start potential); left out it is the semiring one, so the first node is free;
* ``lengths`` ``(batch,)`` (optional): the number of nodes of each chain, ``1 <= lengths <= N``.
  Edges past the end are replaced by the semiring identity matrix, so padding never leaks into
  any result and its gradient is exactly zero.

The quantity ``⊕_{y} init[y_0] ⊗ ⊗_n edges[n, y_n, y_{n+1}]`` is computed either

* sequentially (forward algorithm): ``N-1`` steps of a ``(batch, C) × (C, C)`` semiring
  vector-matrix product, O(N C²) work, O(N) depth; or
* by a parallel associative scan (tree reduction) of semiring ``C × C`` matrix products,
  O(N C³) work but O(log N) depth, the better choice on a GPU for long chains.

:func:`log_partition` picks one with :func:`choose_method`. Gradients of the log semiring
result are marginals (:func:`marginals`); :func:`viterbi` and :func:`sample` give the mode and
exact samples (forward filtering, backward sampling).

>>> import torch
>>> edges = torch.zeros(1, 2, 2, 2)  # 3 binary nodes, all potentials zero: Z = 2**3
>>> log_partition(edges, init=torch.zeros(1, 2)).exp()
tensor([8.])
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from pyrocg.structured.semirings import LogSemiring, Semiring

__all__ = [
    "choose_method",
    "crf_log_partition",
    "crf_viterbi",
    "edge_mask",
    "entropy",
    "forward_messages",
    "log_partition",
    "marginals",
    "mask_edges",
    "sample",
    "viterbi",
]

# Measured with benchmarks/crf.py on a 2-core CPU: the Python loop costs ~10 µs per step, the
# scan does C times more arithmetic; the scan only wins on CPU for long chains with few
# states. On a GPU every kernel launch costs about as much as a small step, so the O(log N)
# depth of the scan wins as soon as the chain is moderately long.
_CPU_SCAN_MIN_STEPS = 512
_CPU_SCAN_MAX_STATES = 8
_CPU_SCAN_MAX_WORK = 2**24  # batch * steps * C**3 elements materialised by the first level
_GPU_SCAN_MIN_STEPS = 32
# crf_viterbi: backpointers + pointer doubling beyond this length for few states (measured)
_VITERBI_DOUBLING_MIN_LENGTH = 256
_VITERBI_DOUBLING_MAX_STATES = 12
_GPU_SCAN_MAX_WORK = 2**28


def choose_method(batch: int, steps: int, num_states: int, device: torch.device) -> str:
    """Return ``"scan"`` or ``"sequential"`` for a chain with ``steps = N - 1`` edges."""
    work = batch * steps * num_states**3
    if device.type == "cpu":
        use_scan = (
            steps >= _CPU_SCAN_MIN_STEPS and num_states <= _CPU_SCAN_MAX_STATES and work <= _CPU_SCAN_MAX_WORK
        )
    else:
        use_scan = steps >= _GPU_SCAN_MIN_STEPS and work <= _GPU_SCAN_MAX_WORK
    return "scan" if use_scan else "sequential"


def edge_mask(lengths: torch.Tensor | None, steps: int, device: torch.device) -> torch.Tensor:
    """``(batch, steps)`` bool: edge ``n`` lies inside the chain (``n + 1 < lengths``)."""
    if lengths is None:
        return torch.ones(1, steps, dtype=torch.bool, device=device)
    return torch.arange(steps, device=device) < (lengths.to(device).unsqueeze(-1) - 1)


def mask_edges(
    edges: torch.Tensor, lengths: torch.Tensor | None, semiring: type[Semiring] = LogSemiring
) -> torch.Tensor:
    """Replace edges past each chain's end by the semiring identity matrix.

    :param edges: ``(batch, N-1, C, C)``.
    :param lengths: ``(batch,)`` number of nodes, or ``None`` for full chains.
    """
    if lengths is None:
        return edges
    valid = edge_mask(lengths, edges.shape[1], edges.device)
    one = semiring.one_matrix(edges.shape[-1], edges.dtype, edges.device)
    return torch.where(valid[:, :, None, None], edges, one)


def _init_or_one(init: torch.Tensor | None, edges: torch.Tensor) -> torch.Tensor:
    if init is not None:
        return init
    return edges.new_zeros(edges.shape[0], edges.shape[-1])


def _sequential(edges: torch.Tensor, init: torch.Tensor, semiring: type[Semiring]) -> torch.Tensor:
    alpha = init
    # unbind (not edges[:, n]) so that autograd stacks the step gradients once instead of
    # scattering each into a zero tensor of the full size (O(N²) memory traffic).
    for step in edges.unbind(1):
        alpha = semiring.sum(alpha.unsqueeze(-1) + step, dim=-2)
    return semiring.sum(alpha, dim=-1)


def _scan(edges: torch.Tensor, init: torch.Tensor, semiring: type[Semiring]) -> torch.Tensor:
    chain = edges
    while chain.shape[1] > 1:
        odd = chain.shape[1] % 2
        paired = semiring.matmul(chain[:, 0 : chain.shape[1] - odd : 2], chain[:, 1::2])
        chain = torch.cat([paired, chain[:, chain.shape[1] - 1 :]], dim=1) if odd else paired
    if chain.shape[1] == 0:
        return semiring.sum(init, dim=-1)
    total = semiring.sum(init.unsqueeze(-1) + chain[:, 0], dim=-2)
    return semiring.sum(total, dim=-1)


# Largest spread (max − min) of one edge matrix, or of ``init``, for which the fused forward
# pass runs in probability space: every message entry then stays >= exp(-spread) relative to
# its maximum, so nothing that matters underflows (float32 normals reach exp(-87)).
_EXP_SPREAD = {torch.float64: 600.0, torch.float32: 60.0}


def _spread_ok(init: torch.Tensor, edges: torch.Tensor, valid: torch.Tensor) -> bool:
    limit = _EXP_SPREAD.get(edges.dtype)
    if limit is None:
        return False
    spread = (edges.amax((-2, -1)) - edges.amin((-2, -1))).masked_fill(~valid, 0)
    init_spread = init.amax(-1) - init.amin(-1)
    # written so that nan or inf fail the test (and take the log-space path)
    return bool(((spread <= limit).all() & (init_spread <= limit).all()).item())


class _ForwardBackward(torch.autograd.Function):
    """Log partition with a hand-written forward-backward pass in probability space.

    Valid only when :func:`_spread_ok`. Messages are propagated with per-step normalisation,
    each step a batched vector-matrix product (no ``logsumexp``, no ``exp`` in the loop); the
    edge marginals (the gradient) are then one vectorised, locally normalised product
    ``p_n[i] K_n[i, j] q_{n+1}[j]``, accurate however large log Z is.
    Not twice differentiable: :func:`marginals` uses the autograd loop when a graph is needed.
    """

    @staticmethod
    def forward(ctx, init: torch.Tensor, edges: torch.Tensor, valid: torch.Tensor):
        c = edges.shape[-1]
        # padded steps become the identity (kernel I, scale 0), so no per-step masking
        emax = edges.amax((-2, -1)).masked_fill(~valid, 0)
        eye = torch.eye(c, dtype=edges.dtype, device=edges.device)
        kernel = torch.where(valid[..., None, None], (edges - emax[..., None, None]).exp(), eye)
        imax = init.amax(-1, keepdim=True)
        p = (init - imax).exp()
        probs, norms = [p], []
        for k in kernel.unbind(1):
            p = torch.bmm(p.unsqueeze(1), k).squeeze(1)
            norm = p.sum(-1, keepdim=True)
            p = p / norm
            probs.append(p)
            norms.append(norm)
        probs = torch.stack(probs, 1)
        norms = torch.cat(norms, -1) if norms else emax
        ctx.save_for_backward(probs, kernel, norms, valid)
        log_z = imax.squeeze(-1) + (norms.log() + emax).sum(-1) + p.sum(-1).log()
        return log_z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        probs, kernel, norms, valid = ctx.saved_tensors
        # Rabiner scaling: dividing by the forward normalisers keeps sum_i p_n[i] q_n[i] = 1,
        # so the backward messages stay in range without a data-dependent rescale.
        inv_norms = norms.reciprocal().unsqueeze(-1).unbind(1)
        beta = torch.ones_like(probs[:, 0])
        betas = [beta]
        for n in range(kernel.shape[1] - 1, -1, -1):
            beta = torch.bmm(kernel[:, n], beta.unsqueeze(-1)).squeeze(-1) * inv_norms[n]
            betas.append(beta)
        betas.reverse()
        betas = torch.stack(betas, 1)
        joint = probs[:, :-1, :, None] * kernel * betas[:, 1:, None, :]
        scale = (grad[:, None] / joint.sum((-2, -1))).masked_fill(~valid, 0)
        node0 = probs[:, 0] * betas[:, 0]
        init_grad = node0 * (grad[:, None] / node0.sum(-1, keepdim=True))
        return init_grad, joint * scale[..., None, None], None


# Growth budget (in nats) of un-normalised messages between two normalisations.
_EXP_BUDGET = {torch.float64: 300.0, torch.float32: 30.0}


class _FactoredForwardBackward(torch.autograd.Function):
    """:class:`_ForwardBackward` for edges that factor as ``transitions[i, j] + unary[n+1, j]``.

    Then ``K_n = exp(T) ⊙ exp(u_{n+1})[None, :]``: the loops need one ``(batch, C) @ (C, C)``
    product per step and no ``(batch, N, C, C)`` tensor is ever built; the transition gradient
    is a single ``(C, batch·N) @ (batch·N, C)`` product. Messages are renormalised only every
    ``every`` steps, as often as the spread of the potentials requires; backward messages use
    the same normalisers (Rabiner scaling) on sequences right-aligned so that the loop needs
    no masking.
    """

    @staticmethod
    def forward(ctx, unary, transitions, lengths, every: int):
        batch, n, c = unary.shape
        node_valid = torch.arange(n, device=unary.device) < lengths[:, None]
        umax = unary.amax(-1, keepdim=True)
        # sanitise padding (may hold -inf/nan); it is never read by the results
        eu = torch.where(node_valid[..., None], (unary - umax).exp(), 1.0)
        tmax = transitions.amax()
        et = (transitions - tmax).exp()
        p = eu[:, 0]
        probs, norms = [p], []
        one = torch.ones(batch, 1, dtype=unary.dtype, device=unary.device)
        for step, u in enumerate(eu[:, 1:].unbind(1), 1):
            p = (p @ et) * u
            if step % every == 0 or step == n - 1:
                norm = p.sum(-1, keepdim=True)
                p = p / norm
            else:
                norm = one
            probs.append(p)
            norms.append(norm)
        probs = torch.stack(probs, 1)
        log_scale = umax[:, :1, 0]
        norms = torch.cat(norms, -1) if norms else umax[:, 1:, 0]
        if n > 1:
            log_step = norms.log() + umax[:, 1:, 0] + tmax
            log_scale = torch.cat([log_scale, log_scale + log_step.cumsum(-1)], -1)
        last = (lengths - 1)[:, None]
        p_last = probs.gather(1, last[..., None].expand(batch, 1, c)).squeeze(1)
        ctx.save_for_backward(probs, eu, et, norms, lengths)
        return log_scale.gather(1, last).squeeze(1) + p_last.sum(-1).log()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        probs, eu, et, norms, lengths = ctx.saved_tensors
        batch, n, c = probs.shape
        pos = torch.arange(n, device=probs.device)
        node_valid = pos < lengths[:, None]
        shift = (n - lengths)[:, None]
        ragged = bool((shift > 0).any().item())
        # q_{L-1} = 1, q_m = (eu_{m+1} / c_{m+1} ⊙ q_{m+1}) @ exp(T)^T
        scaled = eu[:, 1:] / norms.unsqueeze(-1)
        if ragged:  # right-align every sequence: its last node sits at n - 1
            index = (pos[1:] - shift).clamp_min(0)[..., None].expand(batch, n - 1, c)
            scaled = torch.where(index > 0, scaled.gather(1, (index - 1).clamp_min(0)), 1.0)
        et_t = et.T.contiguous()
        beta = torch.ones(batch, c, dtype=probs.dtype, device=probs.device)
        betas = [beta]
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
        grad_unary = node * weight[..., None]
        grad_trans = None
        if ctx.needs_input_grad[1]:
            grad_trans = torch.zeros_like(et)
            if n > 1:
                into = torch.where(node_valid[:, 1:, None], eu[:, 1:] * betas[:, 1:], zero)
                pred = probs[:, :-1] @ et  # (B, N-1, C)
                norm = (pred * into).sum(-1).masked_fill(~node_valid[:, 1:], 1)
                w = grad[:, None] / norm
                outer = probs[:, :-1].flatten(0, 1).T @ (into * w[..., None]).flatten(0, 1)
                grad_trans = et * outer
        return grad_unary, grad_trans, None, None


def crf_log_partition(
    unary: torch.Tensor,
    transitions: torch.Tensor,
    lengths: torch.Tensor | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """Log partition of a chain whose edges factor as ``transitions[i, j] + unary[n+1, j]``.

    :param unary: ``(batch, N, C)`` node log potentials (start/end potentials folded in).
    :param transitions: ``(C, C)`` shared ``[from, to]`` log potentials.
    :param lengths: ``(batch,)`` number of nodes in ``[1, N]``.
    :param method: as in :func:`log_partition`; ``"auto"``/``"fused"`` use a factored
        forward-backward pass (O(N C²), no ``(batch, N, C, C)`` tensor) whenever
        ``spread(transitions) + spread(unary[n])`` stays within the probability-space limit.
    :returns: ``(batch,)``, equal to ``log_partition(transitions + unary[:, 1:, None, :],
        lengths, unary[:, 0])``.
    """
    batch, n, c = unary.shape
    if method == "auto":
        method = choose_method(batch, n - 1, c, unary.device)
        if method == "sequential":
            method = "fused"
    limit = _EXP_SPREAD.get(unary.dtype)
    if method == "fused" and limit is not None:
        lengths_ = torch.full((batch,), n, device=unary.device) if lengths is None else lengths
        lengths_ = lengths_.to(unary.device)
        node_valid = torch.arange(n, device=unary.device) < lengths_[:, None]
        spread = (unary.amax(-1) - unary.amin(-1)).masked_fill(~node_valid, 0)
        t_spread = transitions.amax() - transitions.amin()
        total = float((spread.amax() + t_spread).item())
        if total <= limit:  # false for nan
            budget = _EXP_BUDGET[unary.dtype]
            every = max(1, int(budget // max(total, math.log(c), 1.0)))
            return _FactoredForwardBackward.apply(unary, transitions, lengths_, every)
    edges = transitions + unary[:, 1:, None, :]
    return log_partition(edges, lengths, unary[:, 0], LogSemiring, method)


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
    :param semiring: :class:`LogSemiring` (log Z) or :class:`MaxSemiring` (Viterbi score).
    :param method: ``"sequential"`` (autograd through the forward loop), ``"fused"`` (log
        semiring only: hand-written forward-backward in probability space, fastest, but not
        twice differentiable; falls back to ``"sequential"`` when one edge matrix spreads over
        more than 60 (float32) or 600 (float64) nats),
        ``"scan"``, or ``"auto"``: :func:`choose_method`, with ``"fused"`` for the log semiring
        instead of ``"sequential"``.
    :returns: ``(batch,)``.

    Cost: O(N C²) work sequentially, O(N C³) work and O(log N) depth for the scan.
    """
    if edges.dim() != 4 or edges.shape[-1] != edges.shape[-2]:
        raise ValueError(f"edges must have shape (batch, N-1, C, C), got {tuple(edges.shape)}")
    init = _init_or_one(init, edges)
    if method == "auto":
        method = choose_method(edges.shape[0], edges.shape[1], edges.shape[-1], edges.device)
        if method == "sequential" and semiring is LogSemiring:
            method = "fused"
    if method == "fused":
        if semiring is not LogSemiring:
            raise ValueError("method='fused' supports only the LogSemiring")
        full = torch.full((edges.shape[0],), edges.shape[1] + 1, device=edges.device)
        lengths_ = full if lengths is None else lengths.to(edges.device)
        valid = torch.arange(edges.shape[1], device=edges.device) < (lengths_[:, None] - 1)
        if _spread_ok(init, edges, valid):
            return _ForwardBackward.apply(init, edges, valid)
        method = "sequential"  # extreme potentials: log space, exact local softmax gradients
    masked = mask_edges(edges, lengths, semiring)
    if method == "sequential":
        return _sequential(masked, init, semiring)
    if method == "scan":
        return _scan(masked, init, semiring)
    raise ValueError(f"method must be 'auto', 'fused', 'sequential' or 'scan', got {method!r}")


def forward_messages(
    edges: torch.Tensor,
    lengths: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    semiring: type[Semiring] = LogSemiring,
) -> torch.Tensor:
    """All forward messages ``alpha`` ``(batch, N, C)``; ``alpha[:, n, j]`` sums every prefix
    ending in state ``j`` at node ``n``. Past a chain's end the last message is repeated.
    Cost O(N C²)."""
    init = _init_or_one(init, edges)
    alphas = [init]
    for step in mask_edges(edges, lengths, semiring).unbind(1):
        alphas.append(semiring.sum(alphas[-1].unsqueeze(-1) + step, dim=-2))
    return torch.stack(alphas, dim=1)


def marginals(
    edges: torch.Tensor,
    lengths: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log partition and marginals, as the gradient of the log partition.

    :returns: ``log_z`` ``(batch,)``, node-0 marginals ``(batch, C)`` and edge marginals
        ``(batch, N-1, C, C)`` (exactly zero past each chain's end). They stay differentiable
        when the inputs require grad (so an entropy built on them can be back-propagated).
    """
    init = _init_or_one(init, edges)
    create_graph = torch.is_grad_enabled() and (edges.requires_grad or init.requires_grad)
    with torch.enable_grad():
        e = edges if edges.requires_grad else edges.detach().requires_grad_()
        i = init if init.requires_grad else init.detach().requires_grad_()
        if create_graph and method in ("auto", "fused"):
            # the fused pass is once differentiable; marginals must stay differentiable
            method = choose_method(e.shape[0], e.shape[1], e.shape[-1], e.device)
        log_z = log_partition(e, lengths, i, LogSemiring, method)
        init_m, edge_m = torch.autograd.grad(
            log_z.sum(), (i, e), create_graph=create_graph, materialize_grads=True
        )
    if not create_graph:
        log_z = log_z.detach()
    return log_z, init_m, edge_m


def entropy(
    edges: torch.Tensor,
    lengths: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """Entropy ``H = log Z − E[score]`` ``(batch,)`` of the Gibbs distribution of the chain,
    with ``E[score]`` from the marginals. Cost: one forward and one backward pass."""
    init = _init_or_one(init, edges)
    log_z, init_m, edge_m = marginals(edges, lengths, init, method)
    valid = edge_mask(lengths, edges.shape[1], edges.device)[:, :, None, None]
    # where() before the product: padded potentials may be -inf and 0 * -inf is nan.
    safe_edges = torch.where(valid, edges, torch.zeros((), dtype=edges.dtype))
    expected = (init_m * init).sum(-1) + (edge_m * safe_edges).sum((-3, -2, -1))
    return log_z - expected


def _backtrack(
    alphas: list[torch.Tensor], pointers: list[torch.Tensor], lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score and path from forward max-messages and backpointers (see :func:`viterbi`)."""
    alpha = alphas[-1]
    batch, c = alpha.shape
    identity = torch.arange(c, device=alpha.device).expand(batch, c)
    maps = torch.stack([*pointers, identity], dim=1)
    n = maps.shape[1]
    if lengths is not None:
        # no masking in the forward loop: read each chain at its own last node and replace
        # the backpointers past it by the identity map
        lengths = lengths.to(alpha.device)
        index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, c)
        alpha = torch.stack(alphas, 1).gather(1, index).squeeze(1)
        past_end = torch.arange(n, device=alpha.device) >= (lengths[:, None] - 1)
        maps = torch.where(past_end[..., None], identity.unsqueeze(1), maps)
    score, last = alpha.max(dim=-1, keepdim=True)
    # maps[:, m] sends the state of node m+1 to the best state of node m. Pointer doubling:
    # after round k, maps[:, m] sends node min(m + 2^k, N-1) to node m, so log2(N) vectorised
    # gathers replace N sequential ones. The identity tail makes every hop in range.
    buf = torch.cat([maps, identity.unsqueeze(1).expand(batch, n, c)], dim=1)
    hop = 1
    while hop < n:
        buf[:, :n] = buf[:, :n].gather(-1, buf[:, hop : hop + n])
        hop *= 2
    path = buf[:, :n].gather(-1, last.unsqueeze(1).expand(batch, n, 1)).squeeze(-1)
    return score.squeeze(-1), path


def viterbi(
    edges: torch.Tensor,
    lengths: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best state sequence by max-product with backpointers.

    :returns: score ``(batch,)`` and path ``(batch, N)`` (long); past a chain's end the path
        repeats the last state (callers mask it). Cost O(N C²), not differentiable in the path.
    """
    with torch.no_grad():
        alpha = _init_or_one(init, edges)
        alphas, pointers = [alpha], []
        for step in edges.unbind(1):
            alpha, best_prev = (alpha.unsqueeze(-1) + step).max(dim=-2)
            alphas.append(alpha)
            pointers.append(best_prev)
        return _backtrack(alphas, pointers, lengths)


def crf_viterbi(
    unary: torch.Tensor, transitions: torch.Tensor, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`viterbi` for edges ``transitions[i, j] + unary[n+1, j]``, without building them.

    The forward loop keeps only max-messages (an outer-dimension ``amax``, much faster on CPU
    than ``max`` with indices); the backward loop recovers each state from the stored
    message and one column of ``transitions``, on sequences right-aligned so that no step
    needs masking. Cost O(N C²).

    :param unary: ``(batch, N, C)`` (start/end folded in).
    :param transitions: ``(C, C)``.
    :returns: score ``(batch,)`` and path ``(batch, N)`` as :func:`viterbi`.
    """
    with torch.no_grad():
        batch, n, c = unary.shape
        # states-major layout (C, B): the step tensor is (C_from, C_to, B), contiguous, and
        # the reduction runs over its outermost dimension
        unary_t = unary.permute(1, 2, 0).contiguous()  # (N, C, B)
        trans = transitions.unsqueeze(-1).contiguous()  # (C_from, C_to, 1)
        alpha = unary_t[0]
        alphas = [alpha]
        for u in unary_t[1:].unbind(0):
            alpha = (alpha.unsqueeze(1) + trans).amax(0) + u
            alphas.append(alpha)
        if n > _VITERBI_DOUBLING_MIN_LENGTH and c <= _VITERBI_DOUBLING_MAX_STATES:
            # long chains, few states: all backpointers in one vectorised (C, N, C, B)
            # reduction, then pointer doubling replaces the N-step backtracking loop
            stacked = torch.stack(alphas, 0)  # (N, C, B)
            scores = stacked[:-1].transpose(0, 1).unsqueeze(2) + trans.unsqueeze(1)
            pointers = scores.max(0).indices  # (N-1, C_to, B)
            return _backtrack(
                list(stacked.transpose(1, 2).unbind(0)),
                list(pointers.transpose(1, 2).unbind(0)),
                lengths,
            )
        alphas = torch.stack(alphas, 0).permute(2, 0, 1).contiguous()  # (B, N, C)
        pos = torch.arange(n, device=unary.device)
        shift = None
        if lengths is not None:
            shift = (n - lengths.to(unary.device))[:, None]
            if bool((shift > 0).any().item()):  # right-align: last node at n - 1
                index = (pos - shift).clamp_min(0)[..., None].expand(batch, n, c)
                alphas = alphas.gather(1, index)
            else:
                shift = None
        score, state = alphas[:, -1].max(-1)
        into = transitions.T.contiguous()  # into[j] = transitions[:, j]
        states = [state]
        for m in range(n - 2, -1, -1):
            state = (alphas[:, m] + into[state]).argmax(-1)
            states.append(state)
        states.reverse()
        path = torch.stack(states, 1)
        if shift is not None:
            path = path.gather(1, (pos + shift).clamp_max(n - 1))
        return score, path


def sample(
    edges: torch.Tensor,
    lengths: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    num_samples: int = 1,
) -> torch.Tensor:
    """Exact samples by forward filtering, backward sampling.

    :returns: ``(num_samples, batch, N)`` long; past a chain's end the last state is repeated.
        Cost O(N C²) for the messages plus O(num_samples N C) for the backward pass.
    """
    with torch.no_grad():
        alphas = forward_messages(edges, lengths, init, LogSemiring)
        masked = mask_edges(edges, lengths, LogSemiring)
        batch, n, c = alphas.shape

        def draw(logits: torch.Tensor) -> torch.Tensor:
            # Gumbel-max; centring first so that the noise is not lost against scores ~1e8.
            logits = logits - logits.amax(-1, keepdim=True)
            gumbel = -torch.empty_like(logits).exponential_().log()
            return (logits + gumbel).argmax(-1)

        state = draw(alphas[:, -1].expand(num_samples, batch, c))
        path = [state]
        for pos in range(n - 2, -1, -1):
            # column of the transition matrix into the sampled next state: (S, B, C)
            into = masked[:, pos].expand(num_samples, batch, c, c)
            column = into.gather(-1, state[..., None, None].expand(num_samples, batch, c, 1))
            state = draw(alphas[:, pos] + column.squeeze(-1))
            path.append(state)
        path.reverse()
    return torch.stack(path, dim=-1)
