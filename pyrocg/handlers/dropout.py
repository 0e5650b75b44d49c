"""Dropout modes: MC dropout (sampled masks, deterministic nodes) and marginalised dropout."""

from __future__ import annotations

from ..layers.base import DROPOUT_ROLE
from .base import FEEDFORWARD, SAMPLE, CGMessenger

__all__ = ["MCDropoutMessenger", "MarginalizeDropoutMessenger"]


class MCDropoutMessenger(CGMessenger):
    """Sample dropout nodes, collapse every other node to its feed-forward value.

    This is ``torch.nn.Dropout`` in ``train()`` mode, and — kept at test time with
    predictions averaged over passes — MC-dropout variational inference (Gal & Ghahramani).
    Run ``T`` passes at once by giving the input a leading sample dimension.

    Input ``(*sample, batch, features)`` gives output ``(*sample, batch, out)``: one pass per
    leading sample index, each with its own masks.

    >>> import torch
    >>> from pyrocg import handlers, models
    >>> net = models.mlp(4, [16], 3, dropout=0.5)
    >>> with handlers.mc_dropout():
    ...     passes = net(torch.randn(5, 4).expand(10, 5, 4))  # T=10 passes, one batch
    >>> passes.shape, bool(passes.std(0).gt(0).any())
    (torch.Size([10, 5, 3]), True)
    """

    handler_name = "mc_dropout"

    def choose(self, name, role):
        return SAMPLE if role == DROPOUT_ROLE else FEEDFORWARD


class MarginalizeDropoutMessenger(CGMessenger):
    """Replace dropout nodes by their mean; **every other node is left alone**.

    Alone, this is *not* ``torch.nn.Dropout.eval()``: the node sites stay unhandled, so
    they are sampled ancestrally. For the plain deterministic network (eval-mode dropout)
    use :func:`~pyrocg.handlers.feedforward`, which marginalises dropout *and* collapses the
    nodes. This handler is the building block for combining dropout-free prediction with
    another node treatment, e.g. ``marginalize_dropout()`` around ``pcff(1.0)`` (sample
    every node, dropout at its mean).

    >>> import pyro, torch
    >>> from pyrocg import handlers, models
    >>> net = models.mlp(4, [16], 3, dropout=0.5)
    >>> with pyro.poutine.trace() as tr, handlers.marginalize_dropout():
    ...     out = net(torch.randn(5, 4))  # (batch, classes)
    >>> tr.trace.nodes["drop1"]["value"].unique().tolist()  # the mean of each dropout node
    [1.0]
    >>> tr.trace.nodes["hidden1"]["is_observed"]  # the node site is left to ancestral sampling
    False
    """

    handler_name = "marginalize_dropout"

    def choose(self, name, role):
        return FEEDFORWARD if role == DROPOUT_ROLE else None
