"""The deterministic feed-forward mode."""

from __future__ import annotations

from .base import FEEDFORWARD, CGMessenger

__all__ = ["FeedForwardMessenger"]


class FeedForwardMessenger(CGMessenger):
    """Collapse every chain-graph node to its feed-forward statistic ``q = E[T(X)]``.

    Dropout nodes take their mean too, so the network is the plain deterministic network
    (``torch.nn.Dropout`` in ``eval()``). No site adds to the log-density.
    """

    handler_name = "feedforward"

    def choose(self, name, role):
        return FEEDFORWARD
