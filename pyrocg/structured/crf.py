"""Linear-chain conditional random field as a Pyro distribution over tag sequences.

``p(y | x) ∝ exp(start[y_0] + Σ_n unary[n, y_n] + Σ_n trans[n, y_n, y_{n+1}] + end[y_{L-1}])``
with ``unary`` from a network and the pairwise ``transitions`` learned. Exact inference is the
generic chain dynamic programme of :mod:`pyrocg.structured.chain`; this class only folds the
potentials into edges and exposes the results as lazy properties.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import lazy_property

from pyrocg.structured import chain

from ..nodes.base import check_energy
from ..validation import is_validation_enabled

__all__ = ["MISSING", "LinearChainCRF"]


def _check_float(name: str, value: object) -> torch.Tensor:
    return check_energy(value, name)


class LinearChainCRF(TorchDistribution):
    """Linear-chain CRF over integer tag sequences of (ragged) length.

    The event is a whole tag sequence: ``event_shape = (length,)`` and
    ``batch_shape = unary.shape[:-2]``, so ``pyro.sample("y", crf, obs=tags)`` scores observed
    sequences with :meth:`log_prob`.

    :param unary: ``(batch, length, tags)`` float log potentials (e.g. network outputs).
    :param transitions: ``(tags, tags)`` log potentials ``[from_tag, to_tag]`` shared by all
        positions, or per-position ``(batch, length - 1, tags, tags)``.
    :param lengths: ``(batch,)`` integer number of valid positions in ``[1, length]``;
        ``None`` means all positions are valid. Positions past a sequence's end are ignored:
        their tags are not scored, marginals there are zero and decoded/sampled tags are 0.
    :param validate_args: check the potentials' values and the tags in :meth:`log_prob`
        (shapes are always checked); ``None`` follows :mod:`pyrocg.validation` for the
        potentials. Checked potentials must be finite or ``-inf`` (an impossible tag or
        transition) at valid positions -- NaN or ``+inf`` there is a :class:`ValueError`,
        while padding positions may hold anything, NaN included -- and must leave at least
        one possible tag sequence (``log Z > -inf``), checked when ``log Z``, marginals,
        Viterbi paths, samples or the entropy are computed.
    :param start: optional ``(tags,)`` log potentials of the first tag.
    :param end: optional ``(tags,)`` log potentials of the last valid tag.
    :param allowed: optional bool ``(tags, tags)`` allowed transitions ``[from, to]`` (e.g.
        BIO: no ``O → I``); forbidden transitions get potential ``-inf``, so the constraint
        holds alike in ``log Z``, marginals, samples, Viterbi and k-best paths.
    :param allowed_start: optional bool ``(tags,)`` allowed first tags.
    :param allowed_end: optional bool ``(tags,)`` allowed last (valid) tags.

    Lazy properties :attr:`log_partition` ``(batch,)``, :attr:`marginals`
    ``(batch, length, tags)`` and :attr:`argmax` ``(batch, length)``; :meth:`sample` draws
    exact samples, :meth:`entropy` is exact. Each costs O(length · tags²) per sequence (a
    forward pass, plus a backward pass for marginals and entropy); long chains may use a
    parallel scan of depth O(log length) (:func:`pyrocg.structured.chain.choose_method`).

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> unary = torch.randn(2, 4, 3)  # (batch, length, tags)
    >>> crf = LinearChainCRF(unary, torch.zeros(3, 3), lengths=torch.tensor([4, 2]))
    >>> crf.batch_shape, crf.event_shape
    (torch.Size([2]), torch.Size([4]))
    >>> crf.argmax.shape  # Viterbi path, (batch, length), padding is 0
    torch.Size([2, 4])
    >>> crf.argmax[0].equal(unary[0].argmax(-1))  # no transitions: per-position argmax
    True
    >>> crf.marginals.sum(-1).round(decimals=4)  # (batch, length, tags), zero at padding
    tensor([[1., 1., 1., 1.],
            [1., 1., 0., 0.]])
    >>> crf.log_prob(crf.sample((5,))).shape
    torch.Size([5, 2])
    """

    # Values are checked by _check_potentials (padding may hold NaN, which constraints.real
    # would refuse), not by torch's argument validation.
    arg_constraints: dict = {}
    has_enumerate_support = False
    has_rsample = False

    def __init__(
        self,
        unary: torch.Tensor,
        transitions: torch.Tensor,
        lengths: torch.Tensor | None = None,
        validate_args: bool | None = None,
        *,
        start: torch.Tensor | None = None,
        end: torch.Tensor | None = None,
        allowed: torch.Tensor | None = None,
        allowed_start: torch.Tensor | None = None,
        allowed_end: torch.Tensor | None = None,
    ) -> None:
        _check_float("unary", unary)
        if unary.dim() < 2 or unary.shape[-1] < 1 or unary.shape[-2] < 1:
            raise ValueError(
                f"unary must have shape (batch, length, tags) with length, tags >= 1, "
                f"got {tuple(unary.shape)}"
            )
        *batch, length, num_tags = unary.shape
        batch_shape = torch.Size(batch)
        _check_float("transitions", transitions)
        if transitions.dtype != unary.dtype:
            raise TypeError(
                f"transitions must have the dtype of unary ({unary.dtype}), got {transitions.dtype}"
            )
        shared = (num_tags, num_tags)
        per_position = (*batch_shape, length - 1, num_tags, num_tags)
        if transitions.dim() == 2:
            if tuple(transitions.shape) != shared:
                raise ValueError(
                    f"transitions must have shape {shared} (tags, tags) or {per_position} "
                    f"(batch, length - 1, tags, tags), got {tuple(transitions.shape)}"
                )
        elif tuple(transitions.shape) != per_position:
            raise ValueError(
                f"transitions must have shape {shared} (tags, tags) or {per_position} "
                f"(batch, length - 1, tags, tags), got {tuple(transitions.shape)}"
            )
        for name, value in (("start", start), ("end", end)):
            if value is None:
                continue
            _check_float(name, value)
            if tuple(value.shape) != (num_tags,):
                raise ValueError(f"{name} must have shape ({num_tags},) (tags,), got {tuple(value.shape)}")
            if value.dtype != unary.dtype:
                raise TypeError(f"{name} must have the dtype of unary ({unary.dtype}), got {value.dtype}")
        for name, value, shape in (
            ("allowed", allowed, (num_tags, num_tags)),
            ("allowed_start", allowed_start, (num_tags,)),
            ("allowed_end", allowed_end, (num_tags,)),
        ):
            if value is None:
                continue
            if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
                raise TypeError(f"{name} must be a bool tensor, got {getattr(value, 'dtype', type(value))}")
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
        if lengths is not None:
            if not isinstance(lengths, torch.Tensor):
                raise TypeError(f"lengths must be a torch.Tensor, got {type(lengths).__name__}")
            if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
                raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
            if tuple(lengths.shape) != tuple(batch_shape):
                raise ValueError(
                    f"lengths must have shape {tuple(batch_shape)} (batch,), got {tuple(lengths.shape)}"
                )
            bad = (lengths < 1) | (lengths > length)
            if bad.any():
                raise ValueError(
                    f"lengths must lie in [1, {length}] (1 <= lengths <= unary.shape[-2]), "
                    f"got {lengths[bad][:5].tolist()}"
                )
            lengths = lengths.to(device=unary.device, dtype=torch.long)
        self.unary = unary
        self.transitions = transitions
        self.lengths = lengths
        self.start = start
        self.end = end
        self.allowed = allowed
        self.allowed_start = allowed_start
        self.allowed_end = allowed_end
        self.num_tags = num_tags
        self._check_values = is_validation_enabled() if validate_args is None else validate_args
        if self._check_values:
            self._check_potentials()
        super().__init__(batch_shape, torch.Size([length]), validate_args=validate_args)

    def _check_potentials(self) -> None:
        """NaN or +inf at a valid position is an error; padding may hold anything."""
        length = self.unary.shape[-2]
        valid = None
        if self.lengths is not None:
            valid = torch.arange(length, device=self.unary.device) < self.lengths.unsqueeze(-1)
        checks = [("unary", self.unary, None if valid is None else valid.unsqueeze(-1))]
        per_position = self.transitions.dim() > 2
        edge_mask = None if valid is None or not per_position else valid[..., 1:, None, None]
        checks.append(("transitions", self.transitions, edge_mask))
        checks += [(name, t, None) for name, t in (("start", self.start), ("end", self.end))
                   if t is not None]
        for name, t, mask in checks:
            bad = torch.isnan(t) | torch.isposinf(t)
            if mask is not None:
                bad = bad & mask
            if bool(bad.any()):
                index = tuple(bad.nonzero()[0].tolist())
                where = " (a valid position)" if mask is not None else ""
                raise ValueError(
                    f"{name} holds {t[index].item()} at index {index}{where}; potentials must "
                    "be finite or -inf (an impossible tag or transition)"
                )

    def _check_possible(self, log_z: torch.Tensor) -> None:
        """Every path impossible (log Z = -inf), or an overflow (+inf/NaN), is an error."""
        if not self._check_values:
            return
        log_z = log_z.detach()
        if bool(torch.isfinite(log_z).all()):
            return
        impossible = torch.isneginf(log_z)
        if bool(impossible.any()):
            which = [tuple(i) for i in impossible.reshape(self.batch_shape).nonzero().tolist()][:5]
            raise ValueError(
                f"the potentials make every tag sequence impossible (log Z = -inf) for batch "
                f"element(s) {which}: -inf transitions, start or end potentials (or unary "
                "potentials) forbid every path"
            )
        raise ValueError(
            f"log Z is {log_z[~torch.isfinite(log_z)][0].item()}: the potentials overflow "
            f"{self.unary.dtype}; scale them down"
        )

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.integer_interval(0, self.num_tags - 1), 1)

    def expand(self, batch_shape, _instance=None) -> LinearChainCRF:
        batch_shape = torch.Size(batch_shape)
        length, num_tags = self.unary.shape[-2:]
        transitions = self.transitions
        if transitions.dim() > 2:
            transitions = transitions.expand(batch_shape + transitions.shape[-3:])
        lengths = None if self.lengths is None else self.lengths.expand(batch_shape)
        new = type(self)(
            self.unary.expand(batch_shape + (length, num_tags)),
            transitions,
            lengths,
            validate_args=False,  # the potentials were checked; log Z still is below
            start=self.start,
            end=self.end,
            allowed=self.allowed,
            allowed_start=self.allowed_start,
            allowed_end=self.allowed_end,
        )
        new._check_values = self._check_values
        return new

    # -- flattened chain view -------------------------------------------------------------

    def _flat_lengths(self) -> torch.Tensor | None:
        return None if self.lengths is None else self.lengths.reshape(-1)

    def _nodes(self, unary: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Node potentials ``(B, length, C)``, batch flattened, start/end and the start/end
        constraints folded in."""
        length, num_tags = unary.shape[-2:]
        unary = unary.reshape(-1, length, num_tags)
        end, start = self.end, self.start
        if self.allowed_end is not None:
            end = _forbid(end, self.allowed_end, unary)
        if self.allowed_start is not None:
            start = _forbid(start, self.allowed_start, unary)
        if end is not None:
            lengths = self._flat_lengths() if lengths is None else lengths
            if lengths is None:
                unary = torch.cat([unary[:, :-1], unary[:, -1:] + end], dim=1)
            else:
                last = torch.arange(length, device=unary.device) == (lengths[:, None] - 1)
                unary = torch.where(last[..., None], unary + end, unary)
        if start is not None:
            unary = torch.cat([unary[:, :1] + start, unary[:, 1:]], dim=1)
        return unary

    @lazy_property
    def _transitions(self) -> torch.Tensor:
        """Transitions ``(C, C)`` or ``(B, length - 1, C, C)`` with the constraints folded in."""
        length, num_tags = self.unary.shape[-2:]
        transitions = self.transitions
        if transitions.dim() > 2:
            # explicit batch size: -1 is ambiguous for a length-1 chain's (B, 0, C, C)
            batch = self.batch_shape.numel()
            transitions = transitions.reshape(batch, length - 1, num_tags, num_tags)
        if self.allowed is not None:
            transitions = _forbid(transitions, self.allowed, transitions)
        return transitions

    @lazy_property
    def _chain(self) -> chain.Chain:
        return chain.Chain(self._nodes(self.unary), self._transitions, self._flat_lengths())

    @property
    def _potentials(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``init`` ``(B, C)`` and ``edges`` ``(B, length - 1, C, C)`` (batch flattened)."""
        ch = self._chain
        return ch.nodes[:, 0], ch.transitions + ch.nodes[:, 1:, None, :]

    def _unflatten(self, x: torch.Tensor, event: tuple[int, ...] = ()) -> torch.Tensor:
        return x.reshape(self.batch_shape + event)

    # -- inference --------------------------------------------------------------------------

    def _requires_grad(self) -> bool:
        params = (self.unary, self.transitions, self.start, self.end)
        return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params)

    @lazy_property
    def log_partition(self) -> torch.Tensor:
        """Log normaliser ``log Z`` ``(batch,)``, differentiable. Cost O(length · tags²)."""
        if self._requires_grad():
            log_z = self._chain.log_partition()
        else:
            # constants: keep the graph of a detached leaf so that .marginals needs only the
            # backward pass
            ch = self._chain
            with torch.enable_grad():
                leaf = ch.nodes.detach().requires_grad_()
                const = chain.Chain.__new__(chain.Chain)
                const.__dict__.update(ch.__dict__, nodes=leaf, transitions=ch.transitions.detach())
                log_z = const.log_partition()
            self._marginal_graph = (leaf, log_z)
            log_z = log_z.detach()
        self._check_possible(log_z)
        return self._unflatten(log_z)

    @lazy_property
    def marginals(self) -> torch.Tensor:
        """``p(y_n = c)`` ``(batch, length, tags)`` as the gradient of ``log Z``; zero at
        padding. Differentiable when the potentials require grad."""
        shape = tuple(self.unary.shape[-2:])
        graph = self.__dict__.pop("_marginal_graph", None)
        if graph is None and not self._requires_grad():
            self.log_partition  # noqa: B018 - builds the graph
            graph = self.__dict__.pop("_marginal_graph", None)
        if graph is not None and graph[1].requires_grad:
            leaf, log_z = graph
            (nodes,) = torch.autograd.grad(log_z.sum(), leaf)
        else:
            log_z, nodes, _ = self._chain.marginals()
            self._check_possible(log_z)
        return self._unflatten(nodes, shape)

    @lazy_property
    def argmax(self) -> torch.Tensor:
        """Most probable tag sequence (Viterbi) ``(batch, length)`` long; padding is 0."""
        best, path = self._chain.viterbi()
        self._check_possible(best)
        return self._unflatten(self._zero_padding(path), (self.unary.shape[-2],))

    @property
    def mode(self) -> torch.Tensor:
        return self.argmax

    def topk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most probable tag sequences (a k-max semiring with back-pointers).

        :param k: number of sequences, ``k >= 1``.
        :returns: paths ``(k, batch, length)`` (long, padding 0; best first) and their scores
            ``(k, batch)`` (equal to :meth:`score` of the paths, so ``log_prob`` is
            ``scores - log_partition``; ``-inf`` where fewer than ``k`` sequences are
            possible, the path then being meaningless). Cost O(length · tags² · k log k).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        scores, paths = self._chain.topk(k)
        paths = self._zero_padding(paths.transpose(0, 1))
        exact = self._chain.score(paths)
        scores = scores.T
        scores = torch.where(torch.isfinite(scores), exact, scores)
        length = self.unary.shape[-2]
        return paths.reshape((k,) + self.batch_shape + (length,)), scores.reshape((k,) + self.batch_shape)

    @lazy_property
    def max_marginals(self) -> torch.Tensor:
        """``max_{y: y_n = c} score(y) − max_y score(y)`` ``(batch, length, tags)``: 0 on the
        Viterbi path, ``<= 0`` elsewhere, ``-inf`` for forbidden tags; 0 at padding."""
        mm = self._chain.max_marginals()
        if self.lengths is not None:
            valid = torch.arange(mm.shape[1], device=mm.device) < self._flat_lengths()[:, None]
            mm = mm.masked_fill(~valid[..., None], 0.0)
        return self._unflatten(mm, tuple(self.unary.shape[-2:]))

    def _zero_padding(self, path: torch.Tensor) -> torch.Tensor:
        lengths = self._flat_lengths()
        if lengths is None:
            return path
        valid = torch.arange(path.shape[-1], device=path.device) < lengths[:, None]
        return path.masked_fill(~valid, 0)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Exact samples ``sample_shape + (batch, length)`` (long) from the chain's Markov
        form (backward messages, then forward sampling); padding is 0.
        Cost O(length · tags²) + O(samples · length · tags)."""
        sample_shape = torch.Size(sample_shape)
        if self._check_values:
            self._check_possible(self.log_partition)
        paths = self._chain.sample(max(1, math.prod(sample_shape)))
        paths = self._zero_padding(paths)
        return paths.reshape(sample_shape + self.batch_shape + self.event_shape)

    def entropy(self) -> torch.Tensor:
        """Exact entropy ``(batch,)`` as ``H(y_0) + Σ_n E[H(y_{n+1} | y_n)]`` (local
        conditional entropies: stable at any length and scale); differentiable."""
        if self._check_values:
            self._check_possible(self.log_partition)
        return self._unflatten(self._chain.entropy())

    def _check_other(self, other: LinearChainCRF) -> None:
        if not isinstance(other, LinearChainCRF):
            raise TypeError(f"other must be a LinearChainCRF, got {type(other).__name__}")
        if other.batch_shape != self.batch_shape or other.unary.shape[-2:] != self.unary.shape[-2:]:
            raise ValueError(
                f"both CRFs must have the same batch shape, length and tags, got "
                f"{tuple(self.unary.shape)} and {tuple(other.unary.shape)}"
            )
        mine = self._chain.lengths
        if not torch.equal(mine, other._chain.lengths.to(mine.device)):
            raise ValueError("both CRFs must have the same lengths")

    def cross_entropy(self, other: LinearChainCRF) -> torch.Tensor:
        """``H(p, q) = −E_p[log q(y)]`` ``(batch,)`` with ``p = self``, ``q = other`` (same
        shapes and lengths): a sum of local conditional cross-entropies; differentiable."""
        self._check_other(other)
        return self._unflatten(self._chain.cross_entropy(other._chain))

    def kl_divergence(self, other: LinearChainCRF) -> torch.Tensor:
        """``KL(self || other)`` ``(batch,)``; also ``torch.distributions.kl_divergence``."""
        self._check_other(other)
        return self._unflatten(self._chain.kl_divergence(other._chain))

    def _check_tags(self, tags: torch.Tensor) -> None:
        if not isinstance(tags, torch.Tensor):
            raise TypeError(f"tags must be a torch.Tensor, got {type(tags).__name__}")
        if tags.is_floating_point() or tags.is_complex() or tags.dtype == torch.bool:
            raise TypeError(f"tags must be an integer tensor, got dtype {tags.dtype}")
        expected = self.batch_shape + self.event_shape
        try:
            torch.broadcast_shapes(tags.shape, expected)
        except RuntimeError:
            raise ValueError(
                f"tags must have shape (..., {', '.join(map(str, expected))}) "
                f"(sample..., batch, length), got {tuple(tags.shape)}"
            ) from None
        if tags.shape[-1] != self.event_shape[0]:
            raise ValueError(
                f"tags must have length {self.event_shape[0]} in the last dimension, "
                f"got shape {tuple(tags.shape)}"
            )

    def score(self, tags: torch.Tensor) -> torch.Tensor:
        """Unnormalised log potential of ``tags`` ``(..., batch, length)`` → ``(..., batch)``.

        Tags at padding positions are ignored (any value is accepted there); forbidden tags or
        transitions score ``-inf``.
        """
        self._check_tags(tags)
        return self._score(self._validated(tags))

    def _validated(self, tags: torch.Tensor, missing_ok: bool = False) -> torch.Tensor:
        length, num_tags = self.unary.shape[-2:]
        tags = tags.to(self.unary.device)
        shape = torch.broadcast_shapes(tags.shape, self.batch_shape + (length,))
        tags = tags.expand(shape)
        if self._validate_args:
            bad = (tags < 0) | (tags >= num_tags)
            if missing_ok:
                bad = bad & (tags != MISSING)
            if self.lengths is not None:
                bad = bad & (torch.arange(length, device=tags.device) < self.lengths.unsqueeze(-1))
            if bad.any():
                extra = f" (or {MISSING} for an unknown tag)" if missing_ok else ""
                where = " at valid positions" if self.lengths is not None else ""
                raise ValueError(
                    f"tags must lie in [0, {num_tags}){extra}{where}, got {tags[bad][:5].tolist()}"
                )
        return tags

    def _score(self, tags: torch.Tensor) -> torch.Tensor:
        length = self.unary.shape[-2]
        lead = tags.shape[: tags.dim() - len(self.batch_shape) - 1]
        flat = tags.reshape(lead + (-1, length)).clamp_min(0)
        return self._chain.score(flat).reshape(tags.shape[:-1])

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(value)`` ``(..., batch)`` for tags ``(..., batch, length)``:
        ``score(value) − log Z``.

        Partially labelled sequences: a tag of ``-2`` (:data:`MISSING`) at a position means
        "unknown" and is marginalised over, i.e. ``log Σ_{y consistent} p(y)`` (the log
        partition of the chain restricted to the known tags, minus ``log Z``); see
        :meth:`log_prob_partial` for per-position sets of allowed tags.
        """
        self._check_tags(value)
        tags = self._validated(value, missing_ok=True)
        if bool((tags == MISSING).any()):
            num_tags = self.unary.shape[-1]
            known = torch.nn.functional.one_hot(tags.clamp_min(0), num_tags).bool()
            allowed = known | (tags == MISSING).unsqueeze(-1)
            return self.log_prob_partial(allowed)
        return self._score(tags) - self.log_partition

    def log_prob_partial(self, allowed: torch.Tensor) -> torch.Tensor:
        """``log p(y_n ∈ allowed[..., n] for all n)`` ``(..., batch)``: the probability of
        the set of tag sequences with each tag in its allowed set (positions past a
        sequence's end are ignored).

        :param allowed: bool ``(..., batch, length, tags)``; a row of all ``True`` is an
            unknown tag, a one-hot row an observed tag.
        """
        length, num_tags = self.unary.shape[-2:]
        if not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool:
            raise TypeError(f"allowed must be a bool tensor, got {getattr(allowed, 'dtype', type(allowed))}")
        expected = self.batch_shape + (length, num_tags)
        if allowed.dim() < len(expected) or allowed.shape[-len(expected):] != expected:
            raise ValueError(
                f"allowed must have shape (..., {', '.join(map(str, expected))}), got {tuple(allowed.shape)}"
            )
        allowed = allowed.to(self.unary.device)
        lead = allowed.shape[: allowed.dim() - len(expected)]
        unary = self.unary.masked_fill(~allowed, -math.inf)
        lengths = self._flat_lengths()
        transitions = self._transitions
        reps = max(1, lead.numel())
        if lengths is not None:
            lengths = lengths.repeat(reps)
        nodes = self._nodes(unary, lengths)  # (S * B, length, C)
        if transitions.dim() > 2:
            transitions = transitions.repeat(reps, 1, 1, 1)
        restricted = chain.Chain(nodes, transitions, lengths).log_partition()
        return restricted.reshape(lead + self.batch_shape) - self.log_partition


MISSING = -2
"""The tag value of an unknown (unlabelled) position in :meth:`LinearChainCRF.log_prob`."""


def _forbid(potentials: torch.Tensor | None, allowed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``potentials`` (zeros if ``None``) with ``-inf`` where ``allowed`` is false."""
    if potentials is None:
        potentials = torch.zeros(allowed.shape, dtype=like.dtype, device=like.device)
    return potentials.masked_fill(~allowed.to(potentials.device), -math.inf)


@register_kl(LinearChainCRF, LinearChainCRF)
def _kl_crf_crf(p: LinearChainCRF, q: LinearChainCRF) -> torch.Tensor:
    return p.kl_divergence(q)


class CRFDecoder(torch.nn.Module):
    """Viterbi decoding as a plain module for deployment: exports with :func:`torch.export.export`
    (no data-dependent control flow; the exported program is specialised to the example's
    length, so pad inputs to it and pass ``lengths``).

    :param transitions: ``(tags, tags)`` log potentials ``[from, to]``.
    :param start: optional ``(tags,)`` log potentials of the first tag.
    :param end: optional ``(tags,)`` log potentials of the last valid tag.
    :param allowed: optional bool ``(tags, tags)`` allowed transitions.
    :param allowed_start: optional bool ``(tags,)`` allowed first tags.
    :param allowed_end: optional bool ``(tags,)`` allowed last tags.

    ``forward(unary (batch, length, tags), lengths (batch,)) -> (batch, length)`` long paths,
    0 past each length: the same paths as :attr:`LinearChainCRF.argmax` (up to exact ties).

    >>> import torch
    >>> trans = torch.randn(3, 3)
    >>> unary, lengths = torch.randn(2, 6, 3), torch.tensor([6, 4])
    >>> decoder = CRFDecoder(trans)
    >>> program = torch.export.export(decoder, (unary, lengths))
    >>> program.module()(unary, lengths).equal(LinearChainCRF(unary, trans, lengths).argmax)
    True
    """

    def __init__(
        self,
        transitions: torch.Tensor,
        start: torch.Tensor | None = None,
        end: torch.Tensor | None = None,
        allowed: torch.Tensor | None = None,
        allowed_start: torch.Tensor | None = None,
        allowed_end: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        _check_float("transitions", transitions)
        if transitions.dim() != 2 or transitions.shape[0] != transitions.shape[1]:
            raise ValueError(f"transitions must have shape (tags, tags), got {tuple(transitions.shape)}")
        c = transitions.shape[0]
        zeros = torch.zeros(c, dtype=transitions.dtype, device=transitions.device)
        low = chain.log_zero(transitions.dtype)
        parts = {"transitions": (transitions, allowed), "start": (start, allowed_start),
                 "end": (end, allowed_end)}
        for name, (value, mask) in parts.items():
            value = zeros if value is None else value
            if mask is not None:
                value = value.masked_fill(~mask.to(value.device), -math.inf)
            self.register_buffer(name, value.detach().clamp_min(low))

    def forward(self, unary: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch, length, c = unary.shape
        pos = torch.arange(length, device=unary.device)
        last = (pos == (lengths[:, None] - 1)).to(unary.dtype)
        nodes = unary.clamp_min(chain.log_zero(unary.dtype)) + last[..., None] * self.end
        alpha = nodes[:, 0] + self.start
        keep = torch.arange(c, device=unary.device).expand(batch, c)
        pointers = []
        for n in range(1, length):
            best, ptr = (alpha.unsqueeze(-1) + self.transitions).max(1)
            new = best + nodes[:, n]
            new = new - new.amax(-1, keepdim=True)
            valid = (lengths > n)[:, None]
            alpha = torch.where(valid, new, alpha)
            pointers.append(torch.where(valid, ptr, keep))
        state = alpha.argmax(-1)
        path = [state]
        for ptr in reversed(pointers):
            state = ptr.gather(1, state[:, None])[:, 0]
            path.append(state)
        path.reverse()
        out = torch.stack(path, 1)
        return torch.where(pos < lengths[:, None], out, torch.zeros_like(out))
