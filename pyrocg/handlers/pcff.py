"""Partially collapsed feed-forward (PCFF)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from numbers import Real

from ..layers.base import DROPOUT_ROLE
from .base import FEEDFORWARD, SAMPLE, CGMessenger

__all__ = ["PCFFMessenger"]


def _check_rate(rate, what: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, Real) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{what} must be a number in [0, 1], got {rate!r}")
    return float(rate)


class PCFFMessenger(CGMessenger):
    """Sample each node *element* with probability ``rate``, else use its feed-forward value.

    ``rate=0`` is the feed-forward network, ``rate=1`` full ancestral (forward) sampling.
    Gradients flow through reparametrised samples (straight-through or Gumbel for discrete
    nodes).

    :param rate: a number in ``[0, 1]``, or a mapping from site names (``fnmatch`` patterns,
        e.g. ``"stage2.*"``) to rates; the first matching pattern wins.
    :param default: rate of sites that match no pattern of a mapping.
    :param sample_dropout: sample dropout nodes (standard dropout training on top of PCFF);
        by default they are marginalised, so ``pcff(0)`` equals ``feedforward()``.

    Input ``(*sample, batch, features)``; each element of each node site is decided
    independently.

    >>> import pyro, torch
    >>> from pyrocg import handlers, models
    >>> net = models.mlp(4, [8], 3)
    >>> x = torch.randn(5, 4)
    >>> with handlers.feedforward():
    ...     ff = net(x)
    >>> with handlers.pcff(0.0):  # rate 0 is the feed-forward network
    ...     torch.equal(net(x), ff)
    True
    >>> with pyro.poutine.trace() as tr, handlers.pcff({"hidden1": 1.0}):
    ...     out = net(x)  # every hidden1 element sampled, (batch, classes)
    >>> tr.trace.nodes["hidden1"]["is_observed"]  # chosen by the handler: no log-density
    True
    """

    handler_name = "pcff"

    def __init__(
        self,
        rate: float | Mapping[str, float] = 0.5,
        default: float = 0.0,
        sample_dropout: bool = False,
    ):
        super().__init__()
        if isinstance(rate, Mapping):
            self.rates = {str(k): _check_rate(v, f"rate[{k!r}]") for k, v in rate.items()}
            self.rate = None
        else:
            self.rate, self.rates = _check_rate(rate, "rate"), {}
        self.default = _check_rate(default, "default")
        self.sample_dropout = bool(sample_dropout)

    def rate_of(self, name: str) -> float:
        """The sampling rate of the site ``name``."""
        if self.rate is not None:
            return self.rate
        for pattern, rate in self.rates.items():
            if fnmatch.fnmatchcase(name, pattern):
                return rate
        return self.default

    def choose(self, name, role):
        if role == DROPOUT_ROLE:
            return SAMPLE if self.sample_dropout else FEEDFORWARD
        rate = self.rate_of(name)
        return FEEDFORWARD if rate == 0 else SAMPLE if rate == 1 else rate
