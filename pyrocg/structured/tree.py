"""Tree-structured CRFs: exact belief propagation on a tree of discrete label variables.

A tree over ``V`` variables with ``C`` labels each is given by a parent array (the root's
parent is ``-1``); the model is

``p(y) ∝ exp( Σ_v unary[v, y_v] + Σ_{v ≠ root} edge[e(v), y_parent(v), y_v] )``

with edge ``e(v)`` of child ``v`` numbered in increasing order of the children: ``e(v) = v``
for ``v`` below the root, ``v - 1`` above it (so a path ``parents = [-1, 0, 1, ...]`` has
``edge[n] = transitions[n]`` of a linear chain).

Inference is one pass up the tree over a semiring, level by level (all nodes of one depth
at once, batched), then one pass down:

* up, log semiring (``logsumexp``, ``+``): every message is renormalised (its own
  ``logsumexp`` is moved into an accumulated normaliser), so no quantity grows with the
  tree and float32 stays exact at any size and potential scale. The normalisers sum to
  ``log Z``; its autograd gradient is the marginals.
* down: the root's label distribution and each child's conditional
  ``p(y_v | y_parent)`` are local softmaxes of the up-pass scores, giving node and edge
  marginals (probabilities times conditionals), exact samples (Gumbel-max draws from the
  conditionals: forward filtering, backward sampling from the root) and the entropy as a
  sum of local conditional entropies (never ``log Z - E[score]``, a difference of two large
  numbers);
* the same passes over the max semiring give the most probable labelling (MAP).

Cost O(V C²) per example and a Python loop over the tree's depth, not its nodes.
:func:`chow_liu_tree` learns a tree over multi-label outputs from training labels, and
:class:`TreeCRFLikelihood` puts a :class:`MultiLabelTreeCRF` on a network.

>>> import torch
>>> tree = Tree([-1, 0, 0, 1])  # node 0 is the root; 1 and 2 its children; 3 a child of 1
>>> crf = TreeCRF(torch.zeros(2, 4, 2), torch.zeros(3, 2, 2), tree)
>>> crf.log_partition.exp()  # no potentials: Z = 2**4
tensor([16., 16.])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pyro
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.distributions.utils import lazy_property

from ..infer.likelihoods import Likelihood
from ..nodes.base import check_energy
from ..validation import is_validation_enabled

__all__ = [
    "MultiLabelTreeCRF",
    "Tree",
    "TreeCRF",
    "TreeCRFLikelihood",
    "chow_liu_tree",
    "mutual_information",
]


# -- the tree and its level schedule --------------------------------------------------------


class _Schedule:
    """Index tensors of a :class:`Tree` on one device."""

    def __init__(self, tree: Tree, device: torch.device) -> None:
        def to(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)

        self.parent_pos = [None] + [to(p) for p in tree._parent_pos[1:]]
        self.order = to(tree._order)
        self.node_position = to(tree._node_position)
        self.edge_order = to(tree._edge_order)
        self.edge_position = to(tree._edge_position)
        self.edge_parent = to(tree._edges[:, 0])
        self.edge_child = to(tree._edges[:, 1])


class Tree:
    """A rooted tree over ``V`` variables given by a parent array, with its level schedule.

    :param parents: ``(V,)`` integers (a sequence or an integer tensor): ``parents[v]`` is
        the parent of node ``v``, ``-1`` for the one root. Every node must reach the root.

    Nodes are grouped by depth (:attr:`levels`); the edge of a non-root node ``v`` is
    number ``v`` if ``v < root``, else ``v - 1`` (:attr:`edges` lists ``(parent, child)`` in
    that order). Index tensors are built once and cached per device.

    >>> tree = Tree([1, -1, 1, 2])
    >>> tree.root, tree.num_nodes, tree.depth
    (1, 4, 2)
    >>> tree.edges.tolist()  # (parent, child) of edges 0, 1, 2
    [[1, 0], [1, 2], [2, 3]]
    >>> [level.tolist() for level in tree.levels]
    [[1], [0, 2], [3]]
    """

    def __init__(self, parents: Sequence[int] | torch.Tensor) -> None:
        if isinstance(parents, torch.Tensor):
            if parents.is_floating_point() or parents.is_complex() or parents.dtype == torch.bool:
                raise TypeError(f"parents must be an integer tensor, got dtype {parents.dtype}")
            if parents.dim() != 1:
                raise ValueError(f"parents must be one-dimensional (V,), got shape {tuple(parents.shape)}")
            plist = [int(p) for p in parents.tolist()]
        elif isinstance(parents, (Sequence, np.ndarray)) and not isinstance(parents, (str, bytes)):
            plist = list(parents)
            for p in plist:
                if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
                    raise TypeError(f"parents must hold integers, got {p!r} ({type(p).__name__})")
            plist = [int(p) for p in plist]
        else:
            raise TypeError(
                f"parents must be a sequence of ints or an integer tensor, got {type(parents).__name__}"
            )
        num = len(plist)
        if num == 0:
            raise ValueError("parents must name at least one node (the root, parent -1)")
        bad = [(v, p) for v, p in enumerate(plist) if p < -1 or p >= num or p == v]
        if bad:
            raise ValueError(
                f"parents[v] must be -1 (the root) or another node in [0, {num}); got "
                + ", ".join(f"parents[{v}] = {p}" for v, p in bad[:5])
            )
        roots = [v for v, p in enumerate(plist) if p == -1]
        if len(roots) != 1:
            raise ValueError(f"parents must have exactly one root (parent -1), got {len(roots)}: {roots[:5]}")
        root = roots[0]
        children: list[list[int]] = [[] for _ in range(num)]
        for v, p in enumerate(plist):
            if p >= 0:
                children[p].append(v)
        levels = [[root]]
        seen = 1
        while True:
            nxt = [c for v in levels[-1] for c in children[v]]
            if not nxt:
                break
            levels.append(nxt)
            seen += len(nxt)
        if seen != num:
            reached = {v for level in levels for v in level}
            cut = [v for v in range(num) if v not in reached]
            raise ValueError(f"parents contain a cycle: nodes {cut[:5]} do not reach the root {root}")
        self.root = root
        self.num_nodes = num
        self.parents = torch.tensor(plist, dtype=torch.long)
        self.levels = [torch.tensor(level, dtype=torch.long) for level in levels]
        position = [0] * num
        for level in levels:
            for i, v in enumerate(level):
                position[v] = i
        self._parent_pos = [None] + [
            torch.tensor([position[plist[v]] for v in level], dtype=torch.long) for level in levels[1:]
        ]
        order = torch.cat(self.levels)
        self._order = order
        self._node_position = torch.empty_like(order)
        self._node_position[order] = torch.arange(num)
        non_root = order[1:]
        self._edge_order = non_root - (non_root > root).long()
        self._edge_position = torch.empty_like(self._edge_order)
        self._edge_position[self._edge_order] = torch.arange(num - 1)
        child = torch.tensor([v for v in range(num) if v != root], dtype=torch.long)
        self._edges = torch.stack([self.parents[child], child], dim=-1).reshape(num - 1, 2)
        self._schedules: dict[torch.device, _Schedule] = {}

    @classmethod
    def path(cls, num_nodes: int) -> Tree:
        """The path ``0 - 1 - ... - (num_nodes - 1)`` rooted at 0 (a linear chain).

        >>> Tree.path(3).parents.tolist()
        [-1, 0, 1]
        """
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
            raise ValueError(f"num_nodes must be a positive int, got {num_nodes!r}")
        return cls(list(range(-1, num_nodes - 1)))

    @property
    def depth(self) -> int:
        """Number of edges on the longest root-to-leaf path (0 for a single node)."""
        return len(self.levels) - 1

    @property
    def edges(self) -> torch.Tensor:
        """``(V - 1, 2)`` long: ``(parent, child)`` of every edge, in edge order."""
        return self._edges

    def schedule(self, device: torch.device | str) -> _Schedule:
        """The level schedule's index tensors on ``device`` (built once per device)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._schedules:
            self._schedules[device] = _Schedule(self, device)
        return self._schedules[device]

    def __repr__(self) -> str:
        return f"Tree(num_nodes={self.num_nodes}, root={self.root}, depth={self.depth})"


def _as_tree(tree: object) -> Tree:
    return tree if isinstance(tree, Tree) else Tree(tree)  # type: ignore[arg-type]


# -- the dynamic programme ------------------------------------------------------------------


class _LogSumExpShifted(torch.autograd.Function):
    """``logsumexp`` over the last dimension of scores whose row maximum is 0 (or rows that
    are all ``-inf``): ``log Σ exp``, with no further shift, and a gradient that is 0, not
    NaN, on an all ``-inf`` row."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.exp().sum(-1).log()
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, out = ctx.saved_tensors
        return grad.unsqueeze(-1) * torch.nan_to_num((x - out.unsqueeze(-1)).exp(), nan=0.0)


def _logsumexp_shifted(x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _LogSumExpShifted.apply(x)
    return x.exp().sum(-1).log()


def _upward(
    unary: list[torch.Tensor],
    edges: list[torch.Tensor | None],
    parent_pos: list[torch.Tensor | None],
    log: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None], list[torch.Tensor | None]]:
    """One pass from the leaves to the root over the log semiring (``logsumexp``, ``+``) or,
    with ``log=False``, the max semiring (``max``, ``+``).

    :param unary: per level ``d``, ``(B, n_d, C)`` unary potentials of its nodes.
    :param edges: per level ``d >= 1``, ``(B, n_d, C, C)`` or ``(n_d, C, C)`` potentials
        ``[parent label, own label]`` of the edges to the parents.
    :returns: the total ``(B,)`` (log Z or the best score); per level the inside scores
        ``(B, n_d, C)`` (unary plus the children's renormalised messages); per level
        ``d >= 1`` the scores ``t[b, k, y_parent, y] = edge + inside`` less their row maximum
        ``(B, n_d, C, C)``, and (log semiring) their row ``logsumexp`` ``(B, n_d, C)``, from
        which the downward pass reads the conditionals ``p(y | y_parent)`` or the choices.

    Every maximum is taken without gradient: the results do not depend on the shifts, which
    only keep each ``logsumexp`` on numbers of order one (full float32 precision) and every
    message at most ``log C`` (the maxima go into the total instead).
    """
    depth = len(unary)
    inside: list[torch.Tensor] = [None] * depth  # type: ignore[list-item]
    scores: list[torch.Tensor | None] = [None] * depth
    rows: list[torch.Tensor | None] = [None] * depth
    inside[-1] = unary[-1]
    lowest = torch.finfo(unary[-1].dtype).min
    totals = []
    for d in range(depth - 1, 0, -1):
        t = edges[d] + inside[d].unsqueeze(-2)  # (B, n, C_parent, C)
        top = t.detach().amax(-1, keepdim=True)  # (B, n, C_parent, 1)
        peak = top.amax(-2, keepdim=True)  # (B, n, 1, 1); -inf: an impossible subtree
        totals.append(peak.flatten(-3).sum(-1))
        # clamps: a parent label that the subtree forbids gets -inf, not NaN
        top = top.clamp_min(lowest)
        shifted = t - top
        message = (top - peak.clamp_min(lowest)).squeeze(-1)  # (B, n, C_parent), <= 0
        if log:
            rows[d] = _logsumexp_shifted(shifted)  # in [0, log C], or -inf
            message = message + rows[d]
        inside[d - 1] = unary[d - 1].index_add(1, parent_pos[d], message)
        scores[d] = shifted
    top = inside[0].detach().amax(-1, keepdim=True)  # (B, 1, 1)
    totals.append(top.flatten(-2).squeeze(-1))
    if log:
        totals.append(_logsumexp_shifted(inside[0] - top.clamp_min(lowest)).squeeze(-1))
    total = torch.stack(totals, -1).sum(-1)
    return total, inside, scores, rows


def _downward(
    root: torch.Tensor,
    scores: list[torch.Tensor | None],
    parent_pos: list[torch.Tensor | None],
    pick: Callable[[torch.Tensor], torch.Tensor],
    sample_dims: int,
) -> list[torch.Tensor]:
    """Choose labels from the root down: ``pick`` maps scores ``(..., C)`` to labels.

    :param root: ``(B, 1, C)`` root scores. ``scores[d]``: ``(B, n_d, C, C)``.
    :param sample_dims: number of leading sample dimensions ``pick`` adds (0 or 1).
    :returns: per level ``(S..., B, n_d)`` long labels.
    """
    labels = [pick(root)]
    for d in range(1, len(scores)):
        t = scores[d]
        parent = labels[d - 1].index_select(-1, parent_pos[d])  # (S..., B, n)
        if sample_dims:
            t = t.expand(parent.shape[:1] + t.shape)
        index = parent[..., None, None].expand(parent.shape + (1, t.shape[-1]))
        labels.append(pick(t.gather(-2, index).squeeze(-2)))
    return labels


def _gumbel_pick(num: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def pick(logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() == 3:  # the root (B, 1, C): add the sample dim
            logits = logits.expand((num,) + logits.shape)
        gumbel = -torch.empty_like(logits).exponential_().log()
        return (logits + gumbel).argmax(-1)

    return pick


# -- the distribution -------------------------------------------------------------------------


class TreeCRF(TorchDistribution):
    """CRF over the labels of a tree of ``V`` discrete variables (exact belief propagation).

    The event is the whole labelling: ``event_shape = (V,)``, ``batch_shape =
    unary.shape[:-2]``, so ``pyro.sample("y", crf, obs=labels)`` scores observed labellings
    with :meth:`log_prob`.

    :param unary: ``(batch, V, C)`` float log potentials (e.g. network outputs).
    :param edge_potentials: ``(batch, V - 1, C, C)`` or, shared by the batch,
        ``(V - 1, C, C)`` log potentials ``[parent label, child label]`` of the edges, in the
        tree's edge order (:attr:`Tree.edges`).
    :param tree: a :class:`Tree` or its parent array ``(V,)`` (the root's parent is -1).
    :param validate_args: check the potentials' values and the labels in :meth:`log_prob`
        (shapes are always checked); ``None`` follows :mod:`pyrocg.validation` for the
        potentials. Potentials must be finite or ``-inf`` (an impossible label or pair of
        labels -- e.g. variables with fewer than ``C`` labels: ``-inf`` unary potentials on
        the missing ones) and leave at least one possible labelling (``log Z > -inf``).

    Lazy properties :attr:`log_partition` ``(batch,)``, :attr:`marginals`
    ``(batch, V, C)``, :attr:`edge_marginals` ``(batch, V - 1, C, C)`` and :attr:`argmax`
    ``(batch, V)``; :meth:`sample` draws exact samples, :meth:`entropy` is exact. Each costs
    O(V · C²) per example and one step per level of the tree.

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> tree = Tree([-1, 0, 0, 1, 1])  # (V,) parent array
    >>> unary = torch.randn(3, 5, 2)  # (batch, V, C)
    >>> crf = TreeCRF(unary, torch.randn(4, 2, 2), tree)  # edges shared by the batch
    >>> crf.batch_shape, crf.event_shape
    (torch.Size([3]), torch.Size([5]))
    >>> crf.marginals.sum(-1).round(decimals=4)  # (batch, V, C)
    tensor([[1., 1., 1., 1., 1.],
            [1., 1., 1., 1., 1.],
            [1., 1., 1., 1., 1.]])
    >>> crf.argmax.shape, crf.sample((10,)).shape
    (torch.Size([3, 5]), torch.Size([10, 3, 5]))
    >>> crf.log_prob(crf.argmax).exp() >= crf.log_prob(crf.sample((10,))).exp().amax(0)
    tensor([True, True, True])
    """

    arg_constraints: dict = {}
    has_enumerate_support = False
    has_rsample = False

    def __init__(
        self,
        unary: torch.Tensor,
        edge_potentials: torch.Tensor,
        tree: Tree | Sequence[int] | torch.Tensor,
        validate_args: bool | None = None,
    ) -> None:
        check_energy(unary, "unary")
        check_energy(edge_potentials, "edge_potentials")
        tree = _as_tree(tree)
        num = tree.num_nodes
        if unary.dim() < 2 or unary.shape[-2] != num or unary.shape[-1] < 1:
            raise ValueError(
                f"unary must have shape (batch, V, C) with V = {num} nodes of the tree and C >= 1, "
                f"got {tuple(unary.shape)}"
            )
        *batch, _, num_classes = unary.shape
        batch_shape = torch.Size(batch)
        if edge_potentials.dtype != unary.dtype:
            raise TypeError(
                f"edge_potentials must have the dtype of unary ({unary.dtype}), got {edge_potentials.dtype}"
            )
        if edge_potentials.device != unary.device:
            raise ValueError(
                f"edge_potentials must be on the device of unary ({unary.device}), "
                f"got {edge_potentials.device}"
            )
        shared = (num - 1, num_classes, num_classes)
        if tuple(edge_potentials.shape) not in (shared, (*batch_shape, *shared)):
            raise ValueError(
                f"edge_potentials must have shape {shared} (V - 1, C, C) or "
                f"{(*batch_shape, *shared)} (batch, V - 1, C, C), got {tuple(edge_potentials.shape)}"
            )
        self.unary = unary
        self.edge_potentials = edge_potentials
        self.tree = tree
        self.num_classes = num_classes
        self._check_values = is_validation_enabled() if validate_args is None else validate_args
        if self._check_values:
            for name, t in (("unary", unary), ("edge_potentials", edge_potentials)):
                total = float(t.detach().sum())  # finite or -inf: no NaN, no +inf (one pass)
                if math.isfinite(total) or total == -math.inf:
                    continue
                bad = torch.isnan(t) | torch.isposinf(t)
                if bool(bad.any()):
                    index = tuple(bad.nonzero()[0].tolist())
                    raise ValueError(
                        f"{name} holds {t[index].item()} at index {index}; potentials must be "
                        "finite or -inf (an impossible label or pair of labels)"
                    )
        super().__init__(batch_shape, torch.Size([num]), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.integer_interval(0, self.num_classes - 1), 1)

    def expand(self, batch_shape, _instance=None) -> TreeCRF:
        batch_shape = torch.Size(batch_shape)
        edges = self.edge_potentials
        if edges.dim() > 3:
            edges = edges.expand(batch_shape + edges.shape[-3:])
        new = type(self)(
            self.unary.expand(batch_shape + self.unary.shape[-2:]), edges, self.tree, validate_args=False
        )
        new._check_values = self._check_values
        return new

    # -- level view ------------------------------------------------------------------------

    @property
    def _schedule(self) -> _Schedule:
        return self.tree.schedule(self.unary.device)

    @lazy_property
    def _levels(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Unary ``(B, n_d, C)`` and edges ``(B or -, n_d, C, C)`` per level, batch flattened."""
        s = self._schedule
        num, c = self.unary.shape[-2:]
        flat = self.batch_shape.numel()
        sizes = [len(level) for level in self.tree.levels]
        unary = self.unary.reshape(flat, num, c).index_select(1, s.order).split(sizes, 1)
        edges = self.edge_potentials
        if edges.dim() > 3:
            edges = edges.reshape(flat, num - 1, c, c).index_select(1, s.edge_order).split(sizes[1:], 1)
        else:
            edges = edges.index_select(0, s.edge_order).split(sizes[1:], 0)
        return list(unary), [None, *edges]

    def _unflatten(self, x: torch.Tensor, event: tuple[int, ...] = ()) -> torch.Tensor:
        return x.reshape(self.batch_shape + event)

    def _check_possible(self, total: torch.Tensor) -> None:
        if not self._check_values:
            return
        total = total.detach()
        if math.isfinite(float(total.sum())):
            return
        if bool(torch.isneginf(total).any()):
            which = torch.isneginf(total).reshape(self.batch_shape).nonzero().tolist()[:5]
            raise ValueError(
                f"the potentials make every labelling impossible (log Z = -inf) for batch "
                f"element(s) {[tuple(i) for i in which]}: -inf unary or edge potentials forbid "
                "every labelling"
            )
        raise ValueError(
            f"log Z is {total[~torch.isfinite(total)][0].item()}: the potentials overflow "
            f"{self.unary.dtype}; scale them down"
        )

    @lazy_property
    def _log_pass(self) -> tuple[torch.Tensor, list, list, list]:
        unary, edges = self._levels
        passes = _upward(unary, edges, self._schedule.parent_pos)
        self._check_possible(passes[0])
        return passes

    # -- inference ------------------------------------------------------------------------

    @lazy_property
    def log_partition(self) -> torch.Tensor:
        """Log normaliser ``log Z`` ``(batch,)``, differentiable; its gradient with respect
        to the potentials is :attr:`marginals` and :attr:`edge_marginals`."""
        return self._unflatten(self._log_pass[0])

    @lazy_property
    def _down(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor]:
        """Per level node marginals ``(B, n_d, C)``, edge marginals ``(B, n_d, C, C)`` and
        the entropy ``(B,)``, from the root's distribution and the conditionals."""
        _, inside, scores, rows = self._log_pass
        lowest = torch.finfo(inside[0].dtype).min
        log_root = inside[0].log_softmax(-1)  # (B, 1, C)
        nodes = [log_root.exp()]
        pairs: list[torch.Tensor | None] = [None]
        # clamp: 0 · log 0 = 0 (an impossible label), with a zero gradient
        entropy = [-(nodes[0] * log_root.clamp_min(lowest)).sum((-2, -1))]
        parent_pos = self._schedule.parent_pos
        for d in range(1, len(scores)):
            log_cond = scores[d] - rows[d].clamp_min(lowest).unsqueeze(-1)  # log p(y | y_parent)
            pair = nodes[d - 1].index_select(1, parent_pos[d]).unsqueeze(-1) * log_cond.exp()
            pairs.append(pair)
            nodes.append(pair.sum(-2))
            entropy.append(-(pair * log_cond.clamp_min(lowest)).sum((-3, -2, -1)))
        total = entropy[0] if len(entropy) == 1 else torch.stack(entropy, -1).sum(-1)
        return nodes, pairs, total

    @lazy_property
    def marginals(self) -> torch.Tensor:
        """``p(y_v = c)`` ``(batch, V, C)``; differentiable."""
        nodes = torch.cat(self._down[0], 1).index_select(1, self._schedule.node_position)
        return self._unflatten(nodes, tuple(self.unary.shape[-2:]))

    @lazy_property
    def edge_marginals(self) -> torch.Tensor:
        """``p(y_parent = a, y_child = b)`` ``(batch, V - 1, C, C)`` in edge order;
        differentiable."""
        num, c = self.unary.shape[-2:]
        pairs = self._down[1][1:]
        if not pairs:
            return self.unary.new_zeros(self.batch_shape + (0, c, c))
        edges = torch.cat(pairs, 1).index_select(1, self._schedule.edge_position)
        return self._unflatten(edges, (num - 1, c, c))

    def entropy(self) -> torch.Tensor:
        """Exact entropy ``(batch,)``, differentiable: the root's entropy plus every child's
        conditional entropy given its parent, averaged over the parent's marginal."""
        return self._unflatten(self._down[2])

    @lazy_property
    def argmax(self) -> torch.Tensor:
        """Most probable labelling (MAP, max-product) ``(batch, V)`` long."""
        unary, edges = self._levels
        with torch.no_grad():
            best, inside, scores, _ = _upward(unary, edges, self._schedule.parent_pos, log=False)
            self._check_possible(best)
            labels = _downward(inside[0], scores, self._schedule.parent_pos, lambda x: x.argmax(-1), 0)
        return self._unflatten(self._gather_nodes(labels), self.event_shape)

    @property
    def mode(self) -> torch.Tensor:
        return self.argmax

    def _gather_nodes(self, labels: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(labels, -1).index_select(-1, self._schedule.node_position)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Exact samples ``sample_shape + (batch, V)`` (long): the root from its marginal,
        then each level from ``p(y_v | y_parent)``. Cost O(V C²) + O(samples · V · C)."""
        sample_shape = torch.Size(sample_shape)
        num = max(1, sample_shape.numel())
        with torch.no_grad():
            _, inside, scores, _ = self._log_pass
            inside0 = inside[0].detach()
            scores = [None if t is None else t.detach() for t in scores]
            labels = _downward(inside0, scores, self._schedule.parent_pos, _gumbel_pick(num), 1)
        return self._gather_nodes(labels).reshape(sample_shape + self.batch_shape + self.event_shape)

    # -- scoring -------------------------------------------------------------------------

    def _check_labels(self, value: torch.Tensor) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(value).__name__}")
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got dtype {value.dtype}")
        expected = self.batch_shape + self.event_shape
        try:
            shape = torch.broadcast_shapes(value.shape, expected)
        except RuntimeError:
            raise ValueError(
                f"labels must have shape (..., {', '.join(map(str, expected))}) (sample..., batch, V), "
                f"got {tuple(value.shape)}"
            ) from None
        if value.shape[-1:] != self.event_shape:
            raise ValueError(f"labels must have V = {self.event_shape[0]} in the last dimension, "
                             f"got shape {tuple(value.shape)}")
        if self._validate_args:
            bad = (value < 0) | (value >= self.num_classes)
            if bool(bad.any()):
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got {value[bad][:5].tolist()}")
        return value.to(self.unary.device).long().expand(shape)

    def score(self, value: torch.Tensor) -> torch.Tensor:
        """Unnormalised log potential of labellings ``(..., batch, V)`` → ``(..., batch)``."""
        value = self._check_labels(value)
        num, c = self.unary.shape[-2:]
        unary = self.unary.expand(value.shape + (c,)).gather(-1, value.unsqueeze(-1)).squeeze(-1)
        total = unary.sum(-1)
        if num == 1:
            return total
        s = self._schedule
        pair_index = value.index_select(-1, s.edge_parent) * c + value.index_select(-1, s.edge_child)
        flat = self.edge_potentials.flatten(-2)  # (..., V - 1, C * C)
        flat = flat.expand(value.shape[:-1] + flat.shape[-2:])
        return total + flat.gather(-1, pair_index.unsqueeze(-1)).squeeze(-1).sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``score(value) − log Z`` ``(..., batch)`` for labels ``(..., batch, V)``."""
        return self.score(value) - self.log_partition


# -- learning the tree ------------------------------------------------------------------------


def _check_labels_matrix(labels: object, num_classes: int | None) -> tuple[torch.Tensor, int]:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor (N, V), got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer or bool tensor (N, V), got dtype {labels.dtype}")
    if labels.dim() != 2 or labels.shape[0] < 1 or labels.shape[1] < 1:
        raise ValueError(f"labels must have shape (N, V) with N, V >= 1, got {tuple(labels.shape)}")
    labels = labels.long()
    if num_classes is None:
        num_classes = max(2, int(labels.max()) + 1)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return labels, num_classes


def mutual_information(
    labels: torch.Tensor, num_classes: int | None = None, pseudo_count: float = 0.0
) -> torch.Tensor:
    """Empirical mutual information (nats) between every pair of label columns.

    :param labels: ``(N, V)`` integer labels in ``[0, num_classes)``.
    :param num_classes: ``C`` (default: the largest label + 1, at least 2).
    :param pseudo_count: added to every cell of each pair's ``C × C`` count table.
    :returns: ``(V, V)`` symmetric, in float64 on the labels' device; the diagonal is each
        column's entropy. Cost O(N V² C²).

    >>> y = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]])
    >>> mutual_information(y).div(math.log(2)).round(decimals=3)  # in bits
    tensor([[1., 1., 0.],
            [1., 1., 0.],
            [0., 0., 1.]], dtype=torch.float64)
    """
    labels, c = _check_labels_matrix(labels, num_classes)
    if not (isinstance(pseudo_count, (int, float)) and not isinstance(pseudo_count, bool)
            and 0.0 <= pseudo_count < math.inf):
        raise ValueError(f"pseudo_count must be a finite number >= 0, got {pseudo_count!r}")
    one_hot = torch.nn.functional.one_hot(labels, c).to(torch.float64)  # (N, V, C)
    joint = torch.einsum("nia,njb->ijab", one_hot, one_hot) + pseudo_count
    joint = joint / joint.sum((-2, -1), keepdim=True)
    pi = joint.sum(-1, keepdim=True)
    pj = joint.sum(-2, keepdim=True)
    ratio = joint / (pi * pj)
    zero = torch.zeros((), dtype=joint.dtype, device=joint.device)
    terms = torch.where(joint > 0, joint * ratio.log(), zero)
    return terms.sum((-2, -1))


def chow_liu_tree(
    labels: torch.Tensor, num_classes: int | None = None, root: int = 0, pseudo_count: float = 0.0
) -> Tree:
    """The Chow–Liu tree of multi-label data: the maximum spanning tree of the pairwise
    :func:`mutual_information` of the label columns (the tree-structured distribution
    closest in KL divergence to the empirical one), rooted at ``root``.

    :param labels: ``(N, V)`` integer training labels (0/1 for multi-label outputs).
    :param num_classes: ``C`` (default: the largest label + 1, at least 2).
    :param root: the node to root the tree at.
    :param pseudo_count: smoothing of the count tables (see :func:`mutual_information`).
    :returns: a :class:`Tree`. Cost O(N V² C²) for the information, O(V²) for Prim's
        algorithm.

    >>> y = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0], [1, 1, 1]])
    >>> chow_liu_tree(y).parents.tolist()  # columns 0 and 1 agree: an edge
    [-1, 0, 0]
    """
    info = mutual_information(labels, num_classes, pseudo_count).cpu().numpy()
    num = info.shape[0]
    if isinstance(root, bool) or not isinstance(root, int) or not 0 <= root < num:
        raise ValueError(f"root must be an int in [0, {num}), got {root!r}")
    parents = np.full(num, -1, dtype=np.int64)
    in_tree = np.zeros(num, dtype=bool)
    in_tree[root] = True
    best = info[root].copy()
    best_from = np.full(num, root, dtype=np.int64)
    for _ in range(num - 1):
        candidates = np.where(in_tree, -np.inf, best)
        v = int(np.argmax(candidates))
        parents[v] = best_from[v]
        in_tree[v] = True
        better = info[v] > best
        best = np.where(better, info[v], best)
        best_from = np.where(better, v, best_from)
    return Tree(parents.tolist())


# -- a layer and a likelihood ---------------------------------------------------------------


class MultiLabelTreeCRF(nn.Module):
    """Tree CRF over ``V`` labels with learned edge potentials (e.g. a :func:`chow_liu_tree`
    over multi-label outputs), the exact counterpart of
    :class:`~pyrocg.structured.MultiLabelMeanFieldCRF`.

    :param tree: a :class:`Tree` or its parent array ``(V,)``.
    :param num_classes: ``C`` labels per variable (2 for multi-label outputs).

    Called on network outputs it returns a :class:`TreeCRF`: ``(batch, V)`` logits when
    ``C = 2`` (unary potentials ``[0, logit]``, so zero edge potentials give independent
    sigmoids), else ``(batch, V, C)`` unary potentials. Edge potentials ``(V - 1, C, C)``
    start at zero.

    >>> import torch
    >>> layer = MultiLabelTreeCRF([-1, 0, 0, 2])
    >>> logits = torch.randn(3, 4)  # (batch, V)
    >>> torch.allclose(layer(logits).marginals[..., 1], logits.sigmoid())  # zero edges
    True
    """

    def __init__(self, tree: Tree | Sequence[int] | torch.Tensor, num_classes: int = 2) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.tree = _as_tree(tree)
        self.num_classes = num_classes
        num = self.tree.num_nodes
        self.edge_potentials = nn.Parameter(torch.zeros(num - 1, num_classes, num_classes))

    def unary(self, output: torch.Tensor) -> torch.Tensor:
        """Unary potentials ``(..., V, C)`` from network outputs."""
        check_energy(output, "output")
        num, c = self.tree.num_nodes, self.num_classes
        if c == 2 and output.shape[-1:] == (num,):
            return torch.stack([torch.zeros_like(output), output], -1)
        if output.dim() >= 2 and output.shape[-2:] == (num, c):
            return output
        expected = f"(batch, {num}) logits or " if c == 2 else ""
        raise ValueError(f"output must have shape {expected}(batch, {num}, {c}), got {tuple(output.shape)}")

    def forward(self, output: torch.Tensor, validate_args: bool | None = None) -> TreeCRF:
        """The :class:`TreeCRF` of network outputs ``(batch, V)`` (logits, ``C = 2``) or
        ``(batch, V, C)``. Under ``torch.no_grad()`` (prediction) the potentials are
        detached, so that the distribution's lazy properties record no autograd graph."""
        unary = self.unary(output)
        edges = self.edge_potentials.to(unary.dtype)
        if not torch.is_grad_enabled():
            unary, edges = unary.detach(), edges.detach()
        return TreeCRF(unary, edges, self.tree, validate_args)


class TreeCRFLikelihood(Likelihood):
    """Multi-label (or multi-class-per-node) targets ``y ~ TreeCRF`` with learned edge
    potentials: an exact likelihood (observed ``pyro.sample`` site ``"y"``).

    :param crf: a :class:`MultiLabelTreeCRF`.
    :param dataset_size: number of training data.

    Targets ``y`` are ``(batch, V)`` integers in ``[0, C)``. :meth:`probs` gives the
    marginals (``P(y_v = 1)`` ``(batch, V)`` for binary labels); :meth:`decode` the MAP
    labelling; :meth:`metrics` reports label accuracy and exact match of both.

    >>> import torch
    >>> from pyrocg import infer, models
    >>> lik = TreeCRFLikelihood(MultiLabelTreeCRF([-1, 0, 0]), dataset_size=10)
    >>> model = infer.CGModel(models.mlp(5, [8], 3), lik)
    >>> x, y = torch.randn(4, 5), torch.randint(0, 2, (4, 3))
    >>> model.loss(x, y).shape
    torch.Size([])
    """

    def __init__(self, crf: MultiLabelTreeCRF, dataset_size: int) -> None:
        super().__init__(dataset_size)
        if not isinstance(crf, MultiLabelTreeCRF):
            raise TypeError(f"crf must be a MultiLabelTreeCRF, got {type(crf).__name__}")
        self.crf = crf

    def dist(self, output: torch.Tensor) -> TreeCRF:
        return self.crf(output)

    def _binary(self) -> bool:
        return self.crf.num_classes == 2

    def check_target(self, output: torch.Tensor, y: torch.Tensor) -> None:
        if (not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex()
                or y.dtype == torch.bool):
            raise TypeError(f"labels y must be an integer tensor, got {getattr(y, 'dtype', type(y))}")
        logits = self._binary() and output.shape[-1] == self.crf.tree.num_nodes
        batch = output.shape[-2:-1] if logits else output.shape[-3:-2]
        expected = tuple(batch) + (self.crf.tree.num_nodes,)
        if tuple(y.shape) != expected:
            raise ValueError(f"labels y must have shape (batch, V) = {expected}, got {tuple(y.shape)}")
        if y.numel() and bool(((y < 0) | (y >= self.crf.num_classes)).any()):
            raise ValueError(f"labels y must lie in [0, {self.crf.num_classes})")

    def forward(self, output: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            self.check_target(output, y)
            y = y.long()
        return pyro.sample(self.site, self.dist(output), obs=y)

    def log_likelihood(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.check_target(output, y)
        return self.dist(output).log_prob(y.long())

    def probs(self, output: torch.Tensor) -> torch.Tensor:
        """Marginals: ``P(y_v = 1)`` ``(..., batch, V)`` for binary labels, else
        ``(..., batch, V, C)``."""
        marginals = self.dist(output).marginals
        return marginals[..., 1] if self._binary() else marginals

    def decode(self, output: torch.Tensor) -> torch.Tensor:
        """The most probable labelling (MAP) ``(batch, V)``."""
        return self.dist(output).argmax

    def metrics(self, output: torch.Tensor, mean: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Label accuracy and exact match of thresholded marginals (``mean``, the predictive
        mean of :meth:`probs`) and of the MAP labelling of ``output``."""
        pred = (mean > 0.5).long() if self._binary() else mean.argmax(-1)
        best = self.decode(output)
        y = y.long()
        return {"label_accuracy": float((pred == y).double().mean()),
                "exact_match": float((pred == y).all(-1).double().mean()),
                "map_label_accuracy": float((best == y).double().mean()),
                "map_exact_match": float((best == y).all(-1).double().mean())}
