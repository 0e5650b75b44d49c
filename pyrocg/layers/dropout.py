"""Dropout as an auxiliary Bernoulli node entering the next layer's energy."""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule

from ..nodes import BinaryNode
from ..nodes._random import bernoulli
from .base import DROPOUT_ROLE, sample_site

__all__ = ["Dropout", "MaskNode"]


class MaskNode(BinaryNode):
    """The dropout node: :class:`~pyrocg.nodes.BinaryNode` on ``{0, 1/keep}`` with the same
    probability ``keep`` everywhere, known as a number — so draws need no pass over
    energies, its mean is exactly 1 (``torch.nn.Dropout``'s ``eval()``), and the constant
    energy ``logit(keep) * keep`` is only built when something asks for it (``log_prob``).

    :param like: a tensor of the mask's shape, dtype and device (the layer's input).
    :param keep: the probability of ``1/keep`` (``1 - p``), in ``(0, 1]``.
    """

    def __init__(self, like: torch.Tensor, keep: float):
        # BinaryNode's checks are the layer's (it validated p); this runs on every pass.
        self._like, self.keep, self._energy, self._ones = like, keep, None, None
        self.low, self.high = 0.0, 1.0 / keep
        self.estimator, self.temperature = None, 1.0
        TorchDistribution.__init__(self, like.shape, validate_args=False)

    @property
    def energy(self) -> torch.Tensor:
        if self._energy is None:
            # P(D = high) = sigmoid(high * e) = keep  =>  e = logit(keep) / high.
            logit = math.log(self.keep / (1.0 - self.keep)) if self.keep < 1 else math.inf
            self._energy = self._like.new_full((), logit * self.keep).expand(self.batch_shape)
        return self._energy

    @energy.setter
    def energy(self, value: torch.Tensor) -> None:
        self._energy = value

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MaskNode, _instance)
        batch_shape = torch.Size(batch_shape)
        new._like, new.keep, new._ones = self._like, self.keep, None
        new._energy = None if self._energy is None else self._energy.expand(batch_shape)
        new.low, new.high = self.low, self.high
        new.estimator, new.temperature = None, 1.0
        TorchDistribution.__init__(new, batch_shape, validate_args=False)
        return new

    @property
    def ones(self) -> torch.Tensor:
        """The mean mask, one 1.0 expanded (the same tensor each time it is asked for)."""
        if self._ones is None:
            self._ones = self._like.new_ones(()).expand(self.batch_shape)
        return self._ones

    @property
    def feedforward(self) -> torch.Tensor:
        return self.ones

    @property
    def mean(self) -> torch.Tensor:
        return self.ones

    def _bits(self, sample_shape) -> torch.Tensor:
        like = self._like
        return bernoulli(self.keep, self._extended_shape(sample_shape), like.dtype, like.device)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        # BinaryNode.sample for {0, 1/keep}, without its generic affine map.
        return self._bits(sample_shape).mul_(self.high)


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
        node = MaskNode(x, 1.0 - self.p)
        # Not enumerable: a mask has 2**units configurations.
        mask = sample_site(self.site_name, node, self.unit_dims, DROPOUT_ROLE, enumerable=False)
        if mask is node.ones:
            return x  # the mean mask (marginalised dropout): nothing to multiply
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
