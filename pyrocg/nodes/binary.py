"""Binary nodes ``X in {low, high}`` (sigmoid for {0, 1}, tanh for {-1, 1})."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import constraints

from ._random import bernoulli
from .base import CGNode, apply_once, check_energy

__all__ = ["BinaryNode", "ESTIMATORS"]

#: Gradient estimators offered by discrete nodes for ``rsample``.
ESTIMATORS = ("straight_through", "gumbel", None)


def check_estimator(estimator: str | None, temperature: float) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")


class _TwoPoint(constraints.Constraint):
    is_discrete = True
    event_dim = 0

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high
        super().__init__()

    def check(self, value):
        return (value == self.low) | (value == self.high)

    def __repr__(self):
        return f"TwoPoint({self.low}, {self.high})"


class BinaryNode(CGNode):
    r"""Binary node with values ``{low, high}`` and CPD
    ``P(X = x | e) = sigmoid((2x - (low + high)) e)``.

    The feed-forward statistic ``(d/2) tanh(d e / 2) + (low + high)/2`` (``d = high - low``)
    equals the exact mean: sigmoid for ``{0, 1}``, tanh for ``{-1, 1}``.

    :param energy: energies, any shape ``(..., )``; this is the batch shape.
    :param low: the smaller value ``alpha``.
    :param high: the larger value ``beta``.
    :param estimator: gradient estimator of :meth:`rsample`: ``"straight_through"`` (hard
        sample forward, gradient of the mean backward), ``"gumbel"`` (binary concrete
        relaxation, values inside ``(low, high)``) or ``None`` (no reparametrisation).
    :param temperature: temperature of the ``"gumbel"`` relaxation.

    >>> node = BinaryNode(torch.tensor([0.0, 2.0]))
    >>> node.feedforward
    tensor([0.5000, 0.8808])
    >>> bool(torch.allclose(node.feedforward, node.mean))
    True
    """

    has_enumerate_support = True

    def __init__(
        self,
        energy: torch.Tensor,
        low: float = 0.0,
        high: float = 1.0,
        estimator: str | None = "straight_through",
        temperature: float = 1.0,
        validate_args: bool | None = None,
    ):
        check_energy(energy)
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float))):
            raise TypeError(f"low and high must be numbers, got {low!r} and {high!r}")
        if not low < high:
            raise ValueError(f"BinaryNode needs low < high, got low={low}, high={high}")
        check_estimator(estimator, temperature)
        self.energy = energy
        self.low, self.high = float(low), float(high)
        self.estimator, self.temperature = estimator, float(temperature)
        super().__init__(energy.shape, validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.estimator is not None

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return _TwoPoint(self.low, self.high)

    @property
    def logits(self) -> torch.Tensor:
        """Log-odds of ``X = high``."""
        return (self.high - self.low) * self.energy

    @property
    def probs(self) -> torch.Tensor:
        """Probability of ``X = high``."""
        return torch.sigmoid(self.logits)

    @property
    def feedforward(self) -> torch.Tensor:
        d, mid = self.high - self.low, 0.5 * (self.low + self.high)
        return apply_once(lambda e: 0.5 * d * torch.tanh(0.5 * (d * e)) + mid, self.energy)

    @property
    def mean(self) -> torch.Tensor:
        return self.low + (self.high - self.low) * self.probs

    @property
    def variance(self) -> torch.Tensor:
        p = self.probs
        return (self.high - self.low) ** 2 * p * (1 - p)

    def expand(self, batch_shape, _instance=None):
        new = self._expand_energy(BinaryNode, batch_shape, _instance)
        new.low, new.high = self.low, self.high
        new.estimator, new.temperature = self.estimator, self.temperature
        super(BinaryNode, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _bits(self, sample_shape) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        e = self.energy
        if e.dim() and not any(e.stride()):
            # One energy broadcast over the layer (dropout masks): draw from a 0-dim
            # probability instead of materialising a full probability tensor first.
            p = torch.sigmoid((self.high - self.low) * e.reshape(-1)[0].detach())
        else:
            p = self.probs.detach()
        return bernoulli(p, shape, e.dtype, e.device)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            bits = self._bits(sample_shape)
            bits = bits.mul_(self.high - self.low)
            return bits.add_(self.low) if self.low else bits

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        if self.estimator is None:
            raise NotImplementedError("BinaryNode(estimator=None) has no rsample")
        shape = self._extended_shape(sample_shape)
        if self.estimator == "straight_through":
            p = self.probs.expand(shape)
            bits = bernoulli(p, shape, p.dtype, p.device) + (p - p.detach())
        else:  # binary concrete: sigmoid((logit + logistic noise) / temperature)
            u = torch.rand(shape, dtype=self.energy.dtype, device=self.energy.device)
            u = u.clamp(torch.finfo(u.dtype).tiny, 1 - torch.finfo(u.dtype).eps)
            bits = torch.sigmoid((self.logits + torch.log(u) - torch.log1p(-u)) / self.temperature)
        return self.low + (self.high - self.low) * bits

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        bits = (value - self.low) / (self.high - self.low)
        logits = self.logits
        return bits * F.logsigmoid(logits) + (1 - bits) * F.logsigmoid(-logits)

    def entropy(self) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        e = self.energy
        values = torch.tensor([self.low, self.high], dtype=e.dtype, device=e.device)
        values = values.reshape((2,) + (1,) * len(self.batch_shape))
        if expand:
            values = values.expand((2,) + self.batch_shape)
        return values
