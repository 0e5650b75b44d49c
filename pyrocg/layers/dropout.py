"""Dropout as an auxiliary Bernoulli node entering the next layer's energy."""

from __future__ import annotations

import math

import torch
from pyro.nn import PyroModule

from ..nodes import BinaryNode
from ..nodes._random import bernoulli
from .base import DROPOUT_ROLE, sample_site

__all__ = ["Dropout", "MaskNode"]


class MaskNode(BinaryNode):
    """The dropout node: :class:`~pyrocg.nodes.BinaryNode` on ``{0, 1/keep}`` with the same
    probability ``keep`` everywhere (the energy is one value expanded over the layer), known
    as a number — so draws need no pass over the energies and its mean is exactly 1, as in
    ``torch.nn.Dropout``'s ``eval()``.

    :param energy: the constant energy ``logit(keep) * keep``, expanded to the mask's shape.
    :param keep: the probability of ``1/keep`` (``1 - p``).
    """

    def __init__(self, energy: torch.Tensor, keep: float):
        super().__init__(energy, 0.0, 1.0 / keep, estimator=None)
        self.keep = keep

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MaskNode, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.keep = self.keep
        return new

    @property
    def ones(self) -> torch.Tensor:
        """The mean mask, one 1.0 expanded (the same tensor each time it is asked for)."""
        ones = self.__dict__.get("_ones")
        if ones is None:
            ones = self.__dict__["_ones"] = self.energy.new_ones(()).expand(self.batch_shape)
        return ones

    @property
    def feedforward(self) -> torch.Tensor:
        return self.ones

    @property
    def mean(self) -> torch.Tensor:
        return self.feedforward

    def _bits(self, sample_shape) -> torch.Tensor:
        e = self.energy
        return bernoulli(self.keep, self._extended_shape(sample_shape), e.dtype, e.device)


class Dropout(PyroModule):
    """Auxiliary nodes ``D_j`` multiplying the previous layer's statistic, ``e_i = b_i +
    sum_j D_j w_ji T(x_j)``.

    ``D_j`` is a :class:`~pyrocg.nodes.BinaryNode` on ``{0, 1/(1-p)}`` kept with probability
    ``1 - p`` (inverted dropout), so its mean is 1: marginalising ``D`` (the feed-forward and
    :func:`~pyrocg.handlers.marginalize_dropout` modes) leaves the network unchanged, exactly
    like :class:`torch.nn.Dropout` in ``eval()``, and sampling ``D`` is ``train()`` dropout.

    :param p: drop probability in ``[0, 1)``; ``p = 0`` emits no site.

    Input and output ``(*sample, batch, *units)``; the site has the input's shape.
    """

    def __init__(self, p: float = 0.5, unit_dims: int = 1):
        super().__init__()
        if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
        self.p, self.unit_dims = float(p), unit_dims

    @property
    def site_name(self) -> str:
        return self._pyro_name or "dropout"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        keep = 1.0 - self.p
        high = 1.0 / keep
        # P(D = high) = sigmoid(high * e) = keep  =>  e = logit(keep) / high.
        energy = x.new_full((), math.log(keep / self.p) / high).expand(x.shape)
        node = MaskNode(energy, keep)
        # Not enumerable: a mask has 2**units configurations.
        mask = sample_site(self.site_name, node, self.unit_dims, DROPOUT_ROLE, enumerable=False)
        if mask is node.ones:
            return x  # the mean mask (marginalised dropout): nothing to multiply
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
