"""Refinement module: the residual block read as a side chain that refines ``X^l``."""

from __future__ import annotations

import torch

from .activation import Activation
from .base import CGLayer
from .conv import Conv2d

__all__ = ["RefineBlock"]


class RefineBlock(CGLayer):
    """Pre-activation residual block ``t <- t + conv(act(conv(act(t))))`` (He et al. 2016).

    ``act`` is a node layer whose energy is the normalised input; the shortcut is the
    identity, or a 1x1 convolution of the first activation when the shape changes.

    :param in_channels: channels of ``t``.
    :param out_channels: channels of the output (default ``in_channels``).
    :param stride: stride of the first convolution (and of the shortcut).
    :param node: node family of both activations.
    :param norm: normalisation of the energies.

    Input ``(*sample, batch, C, H, W)``.
    """

    unit_dims = 3

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        node="relu",
        norm: str | None = "batch",
    ):
        super().__init__(None)
        out_channels = out_channels or in_channels
        self.act1 = Activation(node, norm, in_channels, spatial=True)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, node=None)
        self.act2 = Activation(node, norm, out_channels, spatial=True)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, node=None)
        self.shortcut = (
            Conv2d(in_channels, out_channels, 1, stride, bias=False, node=None)
            if stride != 1 or out_channels != in_channels
            else None
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        a = self.act1(t)
        r = self.conv2(self.act2(self.conv1(a)))
        return (t if self.shortcut is None else self.shortcut(a)) + r
