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

    def choose(self, name, role):
        return SAMPLE if role == DROPOUT_ROLE else FEEDFORWARD


class MarginalizeDropoutMessenger(CGMessenger):
    """Replace dropout nodes by their mean (test-time dropout); other nodes are untouched."""

    def choose(self, name, role):
        return FEEDFORWARD if role == DROPOUT_ROLE else None
