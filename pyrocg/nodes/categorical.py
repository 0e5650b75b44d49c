"""Categorical nodes with one-hot values (softmax in the feed-forward pass)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import constraints

from .base import CGNode, apply_once, check_energy
from .binary import check_estimator

__all__ = ["CategoricalNode"]


class CategoricalNode(CGNode):
    r"""Categorical node over ``K`` categories, values one-hot, ``P(X = k | e) = softmax(e)_k``.

    :param energy: energies of shape ``(..., K)``; the last dimension is the event.
    :param estimator: ``"straight_through"`` (one-hot forward, softmax gradient),
        ``"gumbel"`` (Gumbel-softmax relaxation) or ``None``.
    :param temperature: temperature of the Gumbel-softmax relaxation.

    >>> node = CategoricalNode(torch.zeros(2, 3))
    >>> node.feedforward
    tensor([[0.3333, 0.3333, 0.3333],
            [0.3333, 0.3333, 0.3333]])
    >>> node.sample().sum(-1)
    tensor([1., 1.])
    """

    support = constraints.one_hot
    has_enumerate_support = True

    def __init__(
        self,
        energy: torch.Tensor,
        estimator: str | None = "straight_through",
        temperature: float = 1.0,
        validate_args: bool | None = None,
    ):
        check_energy(energy, min_dim=1)
        if energy.shape[-1] < 2:
            raise ValueError(
                f"CategoricalNode needs at least 2 categories in the last dim of energy, "
                f"got shape {tuple(energy.shape)}"
            )
        check_estimator(estimator, temperature)
        self.energy = energy
        self.estimator, self.temperature = estimator, float(temperature)
        super().__init__(energy.shape[:-1], energy.shape[-1:], validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.estimator is not None

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.energy, -1)

    @property
    def feedforward(self) -> torch.Tensor:
        return apply_once(lambda e: torch.softmax(e, -1), self.energy)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        p = self.probs
        return p * (1 - p)

    def expand(self, batch_shape, _instance=None):
        new = self._expand_energy(CategoricalNode, batch_shape, _instance, self.event_shape)
        new.estimator, new.temperature = self.estimator, self.temperature
        super(CategoricalNode, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def _one_hot_sample(self, sample_shape) -> torch.Tensor:
        probs = self.probs.detach().expand(self._extended_shape(sample_shape))
        k = probs.shape[-1]
        idx = torch.multinomial(probs.reshape(-1, k), 1).reshape(probs.shape[:-1])
        return F.one_hot(idx, k).to(probs.dtype)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self._one_hot_sample(sample_shape)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        if self.estimator is None:
            raise NotImplementedError("CategoricalNode(estimator=None) has no rsample")
        if self.estimator == "straight_through":
            p = self.probs.expand(self._extended_shape(sample_shape))
            return self._one_hot_sample(sample_shape) + (p - p.detach())
        e = self.energy.expand(self._extended_shape(sample_shape))
        return F.gumbel_softmax(e, tau=self.temperature, hard=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (value * torch.log_softmax(self.energy, -1)).sum(-1)

    def entropy(self) -> torch.Tensor:
        logp = torch.log_softmax(self.energy, -1)
        return -(logp.exp() * logp).sum(-1)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        k = self.event_shape[0]
        values = torch.eye(k, dtype=self.energy.dtype, device=self.energy.device)
        values = values.reshape((k,) + (1,) * len(self.batch_shape) + (k,))
        if expand:
            values = values.expand((k,) + self.batch_shape + (k,))
        return values
