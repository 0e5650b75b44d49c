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
from torch.distributions.utils import lazy_property

from pyrocg.structured import chain

from ..nodes.base import check_energy
from ..validation import is_validation_enabled

__all__ = ["LinearChainCRF"]


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
        )
        new._check_values = self._check_values
        return new

    # -- flattened chain view -------------------------------------------------------------

    def _flat_lengths(self) -> torch.Tensor | None:
        return None if self.lengths is None else self.lengths.reshape(-1)

    @lazy_property
    def _node_potentials(self) -> torch.Tensor:
        """Unary ``(B, length, C)`` with batch flattened and start/end folded in."""
        length, num_tags = self.unary.shape[-2:]
        unary = self.unary.reshape(-1, length, num_tags)
        if self.end is not None:
            lengths = self._flat_lengths()
            if lengths is None:
                unary = torch.cat([unary[:, :-1], unary[:, -1:] + self.end], dim=1)
            else:
                last = torch.arange(length, device=unary.device) == (lengths[:, None] - 1)
                unary = torch.where(last[..., None], unary + self.end, unary)
        if self.start is not None:
            unary = torch.cat([unary[:, :1] + self.start, unary[:, 1:]], dim=1)
        return unary

    @lazy_property
    def _potentials(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``init`` ``(B, C)`` and ``edges`` ``(B, length - 1, C, C)`` with batch flattened."""
        length, num_tags = self.unary.shape[-2:]
        unary = self._node_potentials
        transitions = self.transitions
        if transitions.dim() > 2:
            # explicit batch size: -1 is ambiguous for a length-1 chain's (B, 0, C, C)
            transitions = transitions.reshape(unary.shape[0], length - 1, num_tags, num_tags)
        return unary[:, 0], transitions + unary[:, 1:, None, :]

    def _unflatten(self, x: torch.Tensor, event: tuple[int, ...] = ()) -> torch.Tensor:
        return x.reshape(self.batch_shape + event)

    # -- inference --------------------------------------------------------------------------

    def _requires_grad(self) -> bool:
        params = (self.unary, self.transitions, self.start, self.end)
        return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params)

    def _constant_graph(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            leaf = self._node_potentials.detach().requires_grad_()
            log_z = chain.crf_log_partition(leaf, self.transitions.detach(), self._flat_lengths())
        return leaf, log_z

    @lazy_property
    def log_partition(self) -> torch.Tensor:
        """Log normaliser ``log Z`` ``(batch,)``, differentiable. Cost O(length · tags²)."""
        log_z = self._compute_log_partition()
        self._check_possible(log_z)
        return log_z

    def _compute_log_partition(self) -> torch.Tensor:
        if self.transitions.dim() == 2:
            # shared transitions: factored pass, no (batch, length, C, C) tensor
            if self._requires_grad():
                log_z = chain.crf_log_partition(self._node_potentials, self.transitions, self._flat_lengths())
                return self._unflatten(log_z)
            # constants: keep the graph of a detached leaf so that .marginals needs only
            # the backward pass
            self._marginal_graph = self._constant_graph()
            return self._unflatten(self._marginal_graph[1].detach())
        init, edges = self._potentials
        return self._unflatten(chain.log_partition(edges, self._flat_lengths(), init))

    @lazy_property
    def marginals(self) -> torch.Tensor:
        """``p(y_n = c)`` ``(batch, length, tags)`` as the gradient of ``log Z``; zero at
        padding. Differentiable when the potentials require grad."""
        shape = tuple(self.unary.shape[-2:])
        if self.transitions.dim() == 2 and not self._requires_grad():
            graph = self.__dict__.pop("_marginal_graph", None)
            leaf, log_z = graph if graph is not None else self._constant_graph()
            self._check_possible(log_z)
            self.__dict__.setdefault("log_partition", self._unflatten(log_z.detach()))
            (nodes,) = torch.autograd.grad(log_z.sum(), leaf)
            return self._unflatten(nodes, shape)
        init, edges = self._potentials
        log_z, init_m, edge_m = chain.marginals(edges, self._flat_lengths(), init)
        self._check_possible(log_z)
        nodes = torch.cat([init_m.unsqueeze(1), edge_m.sum(-2)], dim=1)
        return self._unflatten(nodes, shape)

    @lazy_property
    def argmax(self) -> torch.Tensor:
        """Most probable tag sequence (Viterbi) ``(batch, length)`` long; padding is 0."""
        if self.transitions.dim() == 2:
            unary = self._node_potentials.detach()
            best, path = chain.crf_viterbi(unary, self.transitions.detach(), self._flat_lengths())
        else:
            init, edges = self._potentials
            best, path = chain.viterbi(edges.detach(), self._flat_lengths(), init.detach())
        self._check_possible(best)
        return self._unflatten(self._zero_padding(path), (self.unary.shape[-2],))

    @property
    def mode(self) -> torch.Tensor:
        return self.argmax

    def _zero_padding(self, path: torch.Tensor) -> torch.Tensor:
        lengths = self._flat_lengths()
        if lengths is None:
            return path
        valid = torch.arange(path.shape[-1], device=path.device) < lengths[:, None]
        return path.masked_fill(~valid, 0)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Exact samples ``sample_shape + (batch, length)`` (long) by forward filtering,
        backward sampling; padding is 0. Cost O(length · tags²) + O(samples · length · tags).
        """
        sample_shape = torch.Size(sample_shape)
        if self._check_values:
            self._check_possible(self.log_partition)
        init, edges = self._potentials
        paths = chain.sample(
            edges.detach(), self._flat_lengths(), init.detach(), max(1, math.prod(sample_shape))
        )
        paths = self._zero_padding(paths)
        return paths.reshape(sample_shape + self.batch_shape + self.event_shape)

    def entropy(self) -> torch.Tensor:
        """Exact entropy ``(batch,)`` = ``log Z − E[score]``; differentiable."""
        if self._check_values:
            self._check_possible(self.log_partition)
        init, edges = self._potentials
        return self._unflatten(chain.entropy(edges, self._flat_lengths(), init))

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

        Tags at padding positions are ignored (any value is accepted there).
        """
        self._check_tags(tags)
        length, num_tags = self.unary.shape[-2:]
        tags = tags.to(self.unary.device)
        shape = torch.broadcast_shapes(tags.shape, self.batch_shape + (length,))
        tags = tags.expand(shape)
        valid = None
        if self.lengths is not None:
            pos = torch.arange(length, device=tags.device)
            valid = pos < self.lengths.unsqueeze(-1)
            if self._validate_args:
                in_range = (tags >= 0) & (tags < num_tags)
                bad = valid & ~in_range
                if bad.any():
                    raise ValueError(
                        f"tags must lie in [0, {num_tags}) at valid positions, got {tags[bad][:5].tolist()}"
                    )
            tags = tags.masked_fill(~valid, 0)
        elif self._validate_args and ((tags < 0) | (tags >= num_tags)).any():
            bad = (tags < 0) | (tags >= num_tags)
            raise ValueError(f"tags must lie in [0, {num_tags}), got {tags[bad][:5].tolist()}")
        unary = self.unary.expand(shape + (num_tags,)).gather(-1, tags.unsqueeze(-1))
        unary = unary.squeeze(-1)
        prev, nxt = tags[..., :-1], tags[..., 1:]
        if self.transitions.dim() == 2:
            pair = self.transitions[prev, nxt]
        else:
            flat = self.transitions.flatten(-2).expand(shape[:-1] + (length - 1, -1))
            pair = flat.gather(-1, (prev * num_tags + nxt).unsqueeze(-1)).squeeze(-1)
        if valid is not None:
            zero = torch.zeros((), dtype=unary.dtype, device=unary.device)
            unary = torch.where(valid, unary, zero)
            pair = torch.where(valid[..., 1:], pair, zero)
        total = unary.sum(-1) + pair.sum(-1)
        if self.start is not None:
            total = total + self.start[tags[..., 0]]
        if self.end is not None:
            if self.lengths is None:
                last = tags[..., -1]
            else:
                index = (self.lengths - 1).expand(shape[:-1]).unsqueeze(-1)
                last = tags.gather(-1, index).squeeze(-1)
            total = total + self.end[last]
        return total

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``score(value) − log Z`` ``(..., batch)`` for tags ``(..., batch, length)``."""
        return self.score(value) - self.log_partition
