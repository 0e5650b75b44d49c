"""The distribution of a layer's sample site: its units' nodes, and their joint enumeration.

The units of a layer are conditionally independent given the previous layer, so the site
is the node distribution with the unit dimensions reinterpreted as event dimensions (the
data dimension stays a batch dimension, for the user's ``pyro.plate``). A plain
:class:`~torch.distributions.Independent` has no ``enumerate_support`` (torch cannot know
that the joint support is small), so Pyro's ``config_enumerate`` would skip the site and
``TraceEnum_ELBO`` would silently fall back to Monte Carlo. :class:`LayerSite` enumerates
the joint configurations of a layer of discrete nodes — ``v ** n`` of them for ``n`` units
of ``v`` values each — and refuses, naming the layer, when there are more than
:data:`MAX_JOINT_SUPPORT`.

>>> import torch
>>> from pyrocg.nodes import BinaryNode
>>> site = LayerSite(BinaryNode(torch.zeros(5, 3)), 1, "hidden1")   # 5 data, 3 units
>>> site.batch_shape, site.event_shape
(torch.Size([5]), torch.Size([3]))
>>> site.enumerate_support(expand=False).shape                     # 2**3 configurations
torch.Size([8, 1, 3])
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Independent

from ..nodes import CGNode

__all__ = ["LayerSite", "MAX_JOINT_SUPPORT", "site_distribution"]

#: Most joint configurations a layer site enumerates (``2**12``: 12 binary units).
MAX_JOINT_SUPPORT = 2**12


class LayerSite(Independent):
    """A layer's nodes as one site, enumerable jointly when they are discrete.

    :param node: the node distribution of every unit, batch shape ``(*batch, *units)``.
    :param unit_dims: how many trailing batch dimensions of ``node`` are units.
    :param site: the site's name, for error messages.
    """

    def __init__(self, node: CGNode, unit_dims: int, site: str = "layer",
                 validate_args: bool | None = None):
        super().__init__(node, unit_dims, validate_args=validate_args)
        self.site = site

    @property
    def has_enumerate_support(self) -> bool:  # type: ignore[override]
        # True for every discrete layer, small or not: config_enumerate then marks it, and a
        # layer too large to enumerate raises a clear error instead of being skipped.
        return bool(self.base_dist.has_enumerate_support)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LayerSite, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.site = self.site
        return new

    def support_size(self) -> int:
        """Number of joint configurations of the units of one datum."""
        values = self.base_dist.enumerate_support(expand=False).shape[0]
        return values ** self._num_units()

    def _num_units(self) -> int:
        return math.prod(self.base_dist.batch_shape[len(self.batch_shape):])

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        """Every joint configuration of the layer's units, ``(S, *batch, *units[, K])``
        (``S = v ** n``; batch dims of size 1 unless ``expand``), in lexicographic order.

        :raises ValueError: when ``S`` exceeds :data:`MAX_JOINT_SUPPORT`.
        """
        if not self.has_enumerate_support:
            raise NotImplementedError(f"layer {self.site!r}: {type(self.base_dist).__name__} "
                                      f"nodes are not discrete and cannot be enumerated")
        node = self.base_dist
        per_unit = node.enumerate_support(expand=False)  # (v, 1, ..., 1[, K])
        v, n = per_unit.shape[0], self._num_units()
        size = v**n
        if size > MAX_JOINT_SUPPORT:
            raise ValueError(
                f"layer {self.site!r} has {n} units of {v} values: exact enumeration needs its "
                f"joint support of {v}**{n} = {size:.3g} configurations, more than "
                f"{MAX_JOINT_SUPPORT}; enumerate smaller layers only (leave this site out of "
                f"config_enumerate, e.g. infer={{'enumerate': None}}) or use Monte Carlo")
        per_unit = per_unit.reshape((v,) + node.event_shape)
        # digits[s, j]: the value index of unit j in configuration s (first unit slowest).
        powers = v ** torch.arange(n - 1, -1, -1, device=per_unit.device)
        digits = torch.arange(size, device=per_unit.device).unsqueeze(-1) // powers % v
        units = node.batch_shape[len(self.batch_shape):]
        values = per_unit[digits].reshape((size,) + units + node.event_shape)
        values = values.reshape((size,) + (1,) * len(self.batch_shape) + self.event_shape)
        if expand:
            values = values.expand((size,) + self.batch_shape + self.event_shape)
        return values


def site_distribution(node: CGNode, unit_dims: int, site: str):
    """The site of a layer of ``node`` with ``unit_dims`` unit dimensions: a
    :class:`LayerSite` for discrete nodes (so Pyro can enumerate it), else the cheaper
    ``node.to_event``. A node with its own event dims (categorical: the categories) spends
    them first on the units."""
    if len(node.event_shape) > 1 or (node.event_shape and unit_dims != 1):
        raise ValueError(
            f"layer {site!r}: {type(node).__name__} has event shape {tuple(node.event_shape)} "
            f"(its categories are the layer's units), so it fits a layer with one unit "
            f"dimension (Dense), not one with {unit_dims} (a convolution's channels and "
            f"positions)")
    unit_batch_dims = unit_dims - len(node.event_shape)
    if node.has_enumerate_support:
        return LayerSite(node, unit_batch_dims, site)
    return node.to_event(unit_batch_dims) if unit_batch_dims else node
