"""The deterministic feed-forward mode."""

from __future__ import annotations

from .base import FEEDFORWARD, CGMessenger

__all__ = ["FeedForwardMessenger"]


class FeedForwardMessenger(CGMessenger):
    """Collapse every chain-graph node to its feed-forward statistic ``q = E[T(X)]``.

    Dropout nodes take their mean too, so the network is the plain deterministic network
    (``torch.nn.Dropout`` in ``eval()``). No site adds to the log-density.

    With the same weights it equals the plain PyTorch network (``pyrocg.reference``):

    >>> import torch
    >>> from pyrocg import handlers, models
    >>> from pyrocg.reference import copy_weights, plain_mlp
    >>> net, plain = models.mlp(4, [8], 3, dropout=0.5), plain_mlp(4, [8], 3)
    >>> copy_weights(net, plain)
    >>> x = torch.randn(5, 4)  # (batch, features)
    >>> with handlers.feedforward():
    ...     logits = net(x)  # (batch, classes)
    >>> torch.allclose(logits, plain(x))
    True
    """

    handler_name = "feedforward"

    def choose(self, name, role):
        return FEEDFORWARD
