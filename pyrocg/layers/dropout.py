"""Dropout as an auxiliary Bernoulli node entering the next layer's energy."""

from __future__ import annotations

import math

import pyro
import torch
from pyro.nn import PyroModule

from ..nodes import BinaryNode
from .base import DROPOUT_ROLE, ROLE_KEY

__all__ = ["Dropout"]


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
        mask = pyro.sample(
            self.site_name,
            BinaryNode(energy, 0.0, high, estimator=None).to_event(self.unit_dims),
            infer={ROLE_KEY: DROPOUT_ROLE},
        )
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
