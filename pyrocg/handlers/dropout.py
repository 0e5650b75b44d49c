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
    """

    handler_name = "marginalize_dropout"

    def choose(self, name, role):
        return FEEDFORWARD if role == DROPOUT_ROLE else None
