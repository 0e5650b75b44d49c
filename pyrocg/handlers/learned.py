"""Learned stochasticity: PCFF selections and dropout nodes drawn with *learned* rates.

The rates are parameters held outside the handler (by :class:`pyrocg.modes.LearnedRates`,
the guide of the learned modes), reached through a ``rates`` object with

* ``rates.logit(name)`` — the log-odds of the Bernoulli rate of a site (PCFF: the
  probability that a node element is sampled; Bernoulli dropout: the drop probability),
  a tensor broadcasting against the site's units, or ``None`` if the site has none;
* ``rates.log_alpha(name)`` — the log-variance of a Gaussian-dropout site, or ``None``.

Draws are differentiable in the rates:

* ``relaxed=True`` (training): the selection/mask is a **binary Concrete** (relaxed
  Bernoulli) draw ``sigmoid((logit + log u - log(1 - u)) / temperature)``, ``u ~ U(0, 1)``
  (Maddison et al. 2017; Gal, Hron & Kendall 2017, who use ``temperature = 0.1``). A PCFF
  node takes the blend ``statistic + m * (draw - statistic)`` (exact at ``m in {0, 1}``);
  a dropout node takes
  ``(1 - drop) / (1 - p)`` (inverted dropout, mean 1 as ``p`` moves).
* ``relaxed=False`` (MC prediction): hard Bernoulli draws with the learned rates.
* Gaussian dropout nodes are reparametrised either way: ``1 + sqrt(alpha) * eps``.

Sites without a learned rate keep their own (a dropout node is sampled with its layer's
``p``); every other chain-graph site is collapsed to its feed-forward value.

>>> import torch
>>> from pyrocg import handlers, models
>>> class Half:                                   # a fixed "learned" rate: 1/2
...     def logit(self, name): return torch.zeros(())
...     def log_alpha(self, name): return None
>>> net = models.mlp(4, [8], 3)
>>> with handlers.learned("nodes", rates=Half()):
...     y = net(torch.randn(5, 4))                # half of hidden1's elements sampled
>>> y.shape
torch.Size([5, 3])
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from numbers import Real
from typing import Any

import torch

from ..layers.base import DROPOUT_ROLE, NODE_ROLE
from ..layers.dropout import MaskNode
from ..layers.gaussian_noise import GaussianNoiseNode
from ..nodes import CGNode
from .base import FEEDFORWARD, SAMPLE, CGMessenger, _value

__all__ = ["LearnedRatesMessenger", "using_rates", "active_rates", "relaxed_bernoulli",
           "TARGETS", "base_site"]

#: What a learned-rate handler learns: the PCFF selection of node sites, or dropout nodes.
TARGETS = ("nodes", "dropout")

_ACTIVE: ContextVar[Any] = ContextVar("pyrocg_learned_rates", default=None)
_TIME_STEP = re.compile(r"\.t\d+$")


def base_site(name: str) -> str:
    """The layer a site belongs to: an IndRNN's per-step sites ``layer.t3`` share
    ``layer``'s rate."""
    return _TIME_STEP.sub("", name)


@contextlib.contextmanager
def using_rates(rates: Any) -> Iterator[None]:
    """Within the block, learned-rate handlers built without ``rates`` use these."""
    token = _ACTIVE.set(rates)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_rates() -> Any:
    """The rates of the innermost :func:`using_rates` block, or ``None``."""
    return _ACTIVE.get()


def relaxed_bernoulli(logit: torch.Tensor, shape: torch.Size, temperature: float) -> torch.Tensor:
    """Binary Concrete draws of ``shape`` with log-odds ``logit`` (broadcasting), in
    ``(0, 1)``, differentiable in ``logit``; as ``temperature -> 0`` they become
    Bernoulli(``sigmoid(logit)``) draws.

    >>> m = relaxed_bernoulli(torch.tensor(0.0), torch.Size([10000]), 0.01)
    >>> bool(((m < 0.01) | (m > 0.99)).float().mean() > 0.95), abs(float(m.mean()) - 0.5) < 0.03
    (True, True)
    """
    u = torch.rand(shape, dtype=logit.dtype, device=logit.device)
    tiny = torch.finfo(u.dtype).tiny
    u = u.clamp(tiny, 1.0 - torch.finfo(u.dtype).eps)
    return torch.sigmoid((logit + (torch.log(u) - torch.log1p(-u))) / temperature)


class LearnedRatesMessenger(CGMessenger):
    """Draw the ``target`` sites with learned rates (see the module docstring); collapse
    every other chain-graph site to its feed-forward value.

    :param target: ``"nodes"`` (learned PCFF: each node element sampled with its site's
        learned rate, dropout nodes at their mean) or ``"dropout"`` (dropout nodes drawn
        with learned rates — Concrete dropout for Bernoulli nodes, variational dropout for
        Gaussian ones — and every node feed-forward).
    :param relaxed: Concrete (relaxed) selections, differentiable in the rates (training);
        ``False``: hard Bernoulli draws (MC prediction).
    :param temperature: temperature of the relaxation, ``> 0``.
    :param rates: the rates object; default: that of the enclosing :func:`using_rates`.
    """

    handler_name = "learned"

    def __init__(self, target: str = "nodes", relaxed: bool = True, temperature: float = 0.1,
                 rates: Any = None):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if not isinstance(relaxed, bool):
            raise TypeError(f"relaxed must be True or False, got {relaxed!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, Real) \
                or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if rates is not None and not (hasattr(rates, "logit") and hasattr(rates, "log_alpha")):
            raise TypeError("rates must have logit(name) and log_alpha(name) methods (e.g. a "
                            f"pyrocg.modes.LearnedRates), got {type(rates).__name__}")
        self.target, self.relaxed, self.temperature = target, relaxed, float(temperature)
        self.rates = rates

    def _rates(self) -> Any:
        rates = self.rates if self.rates is not None else _ACTIVE.get()
        if rates is None:
            raise ValueError(
                "a learned-rate handler needs its rates: pass rates=... or run inside "
                "handlers.using_rates(rates) (a CGModel with a learned mode does this)")
        return rates

    def choose(self, name, role):
        wanted = NODE_ROLE if self.target == "nodes" else DROPOUT_ROLE
        if role != wanted:
            return FEEDFORWARD
        return ("learned", base_site(name))

    def value(self, action, node: CGNode) -> torch.Tensor:
        if not isinstance(action, tuple):
            return _value(action, node)
        name, rates = action[1], self._rates()
        shape = node.batch_shape + node.event_shape
        if isinstance(node, GaussianNoiseNode):
            log_alpha = rates.log_alpha(name)
            if log_alpha is None:
                return _value(SAMPLE, node)
            eps = torch.randn(shape, dtype=log_alpha.dtype, device=log_alpha.device)
            return 1.0 + torch.exp(0.5 * log_alpha) * eps
        logit = rates.logit(name)
        if logit is None:
            return _value(SAMPLE if self.target == "dropout" else FEEDFORWARD, node)
        if not self.relaxed:
            logit = logit.detach()  # hard draws: prediction, no gradient to the rates
        if isinstance(node, MaskNode):  # logit = log-odds of dropping
            if self.relaxed:
                keep = 1.0 - relaxed_bernoulli(logit, shape, self.temperature)
            else:
                keep = torch.bernoulli(torch.sigmoid(-logit).expand(shape))
            return keep / torch.sigmoid(-logit)
        if not self.relaxed:
            return node.rsample_where(torch.bernoulli(torch.sigmoid(logit).expand(shape)))
        # The generic blend ``lerp(statistic, draw, m)`` (CGNode.rsample_where), not a node's
        # fast path: those take 0/1 masks and need not pass a gradient to the mask.
        return CGNode.rsample_where(node, relaxed_bernoulli(logit, shape, self.temperature))
