"""CRF output layer: learned intra-layer (pairwise) potentials over the output labels."""

from __future__ import annotations

import torch
from pyro.nn import PyroModule
from torch import nn

__all__ = ["ChainCRF"]


class ChainCRF(PyroModule):
    """Linear-chain CRF output layer with learned transitions (and start/end potentials).

    Turns unary energies ``(batch, length, tags)`` from the layers beneath — which run in
    any mode (feed-forward, PCFF, MC dropout) — into a
    :class:`~pyrocg.structured.LinearChainCRF` distribution over tag sequences.

    :param num_tags: number of tags ``C``.
    :param start_end: learn potentials of the first and last tag.

    >>> crf = ChainCRF(3)
    >>> dist = crf(torch.randn(2, 5, 3))
    >>> dist.argmax.shape
    torch.Size([2, 5])
    """

    def __init__(self, num_tags: int, start_end: bool = True):
        super().__init__()
        if not isinstance(num_tags, int) or num_tags < 2:
            raise ValueError(f"num_tags must be an int >= 2, got {num_tags!r}")
        self.num_tags = num_tags
        # Zero potentials: the CRF starts as independent per-position softmaxes.
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start = nn.Parameter(torch.zeros(num_tags)) if start_end else None
        self.end = nn.Parameter(torch.zeros(num_tags)) if start_end else None

    def forward(self, unary: torch.Tensor, lengths: torch.Tensor | None = None):
        from ..structured import LinearChainCRF

        if unary.shape[-1] != self.num_tags:
            raise ValueError(
                f"unary must have shape (..., length, {self.num_tags}), got {tuple(unary.shape)}"
            )
        start = None if self.start is None else self.start.to(unary.dtype)
        end = None if self.end is None else self.end.to(unary.dtype)
        return LinearChainCRF(unary, self.transitions.to(unary.dtype), lengths, start=start, end=end)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}, start_end={self.start is not None}"
