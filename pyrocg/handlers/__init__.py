"""Execution modes as Pyro effect handlers.

The same chain-graph model runs as a deterministic network, with PCFF, with MC dropout or
with ancestral sampling, depending only on the handler around it::

    >>> import torch, pyro
    >>> from pyrocg import handlers, models
    >>> net = models.mlp(4, [8], 3)
    >>> x = torch.randn(5, 4)
    >>> with handlers.feedforward():
    ...     logits = net(x)                      # the plain network
    >>> with pyro.poutine.trace() as tr, handlers.pcff(0.3):
    ...     noisy = net(x)                       # 30% of the node elements sampled
    >>> tr.trace.nodes["hidden1"]["is_observed"]  # contributes no log-density
    True
    >>> mc = handlers.mc_dropout(net)(x.expand(10, 5, 4))  # 10 MC passes in one batch

Each handler is a context manager, a decorator and a function wrapper; all compose with
Pyro's own (``trace``, ``condition``, ``replay``, ``scale``, ``seed``, ``block``, ``plate``,
guides, enumeration). A value that Pyro's ``replay``/``condition`` or a guide gives a site —
inside or outside the mode handler — wins, with its log-density counted, exactly as for an
ordinary site. No handler = ancestral sampling. Eval-mode dropout is ``feedforward()``;
``marginalize_dropout()`` alone leaves the nodes sampled.
"""

from __future__ import annotations

import functools

from .base import CGMessenger, node_of
from .dropout import MarginalizeDropoutMessenger, MCDropoutMessenger
from .feedforward import FeedForwardMessenger
from .learned import LearnedRatesMessenger, active_rates, using_rates
from .pcff import PCFFMessenger

__all__ = [
    "feedforward",
    "pcff",
    "mc_dropout",
    "marginalize_dropout",
    "learned",
    "using_rates",
    "active_rates",
    "LearnedRatesMessenger",
    "CGMessenger",
    "FeedForwardMessenger",
    "PCFFMessenger",
    "MCDropoutMessenger",
    "MarginalizeDropoutMessenger",
    "node_of",
]


def _make_handler(cls: type[CGMessenger]):
    """Functional wrapper of a messenger: ``h(*args)`` gives the messenger (context manager,
    decorator), ``h(fn, *args)`` the wrapped function. A fresh messenger per call."""

    @functools.wraps(cls, updated=())
    def handler(*args, **kwargs):
        if args and callable(args[0]):
            fn, args = args[0], args[1:]
            return functools.update_wrapper(cls(*args, **kwargs)(fn), fn, updated=())
        if "fn" in kwargs:
            fn = kwargs.pop("fn")
            return functools.update_wrapper(cls(*args, **kwargs)(fn), fn, updated=())
        return cls(*args, **kwargs)

    handler.__doc__ = cls.__doc__
    handler.__name__ = handler.__qualname__ = cls.handler_name
    return handler


feedforward = _make_handler(FeedForwardMessenger)
pcff = _make_handler(PCFFMessenger)
mc_dropout = _make_handler(MCDropoutMessenger)
marginalize_dropout = _make_handler(MarginalizeDropoutMessenger)
learned = _make_handler(LearnedRatesMessenger)
