"""Deterministic statistics of a layer: pooling and reshaping (no nodes, no sites)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule

from .base import broadcast_apply

__all__ = ["AvgPool2d", "MaxPool2d", "GlobalAvgPool2d", "Flatten"]


class _Pool2d(PyroModule):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 4:
            raise ValueError(
                f"{type(self).__name__}: input must be (..., batch, C, H, W), got {tuple(x.shape)}"
            )
        def pool(rows: torch.Tensor) -> torch.Tensor:
            y = self._pool(rows.reshape((-1,) + rows.shape[-3:]))
            return y.reshape(rows.shape[:-3] + y.shape[1:])

        # Stride-0 copies (MC passes before the first random site) are pooled once.
        return broadcast_apply(pool, x, 3)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(_Pool2d):
    """Average pooling: a linear statistic of the previous layer."""

    def _pool(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class MaxPool2d(_Pool2d):
    """Max pooling: a deterministic statistic of the previous layer."""

    def _pool(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2d(PyroModule):
    """Average over the spatial dims: ``(..., C, H, W) -> (..., C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class Flatten(PyroModule):
    """Flatten the trailing unit dims from ``start_dim`` (negative) on; leading dims pass."""

    def __init__(self, start_dim: int = -3):
        super().__init__()
        if not isinstance(start_dim, int) or start_dim >= -1:
            raise ValueError(f"start_dim must be a negative int below -1, got {start_dim!r}")
        self.start_dim = start_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(self.start_dim)
