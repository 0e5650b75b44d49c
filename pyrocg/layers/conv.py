"""Convolutional chain-graph layers: one node per output channel and position."""

from __future__ import annotations

import torch
from pyro.nn import PyroModule
from torch import nn

from .base import CGLayer, broadcast_apply, check_input, make_norm
from .reparam import gaussian_weights_of, sample_energy

__all__ = ["Conv1d", "Conv2d"]


class _ConvNd(CGLayer):
    _conv_cls: type[nn.Module]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        node="relu",
        norm: str | None = None,
    ):
        super().__init__(node)
        for arg, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{arg} must be a positive int, got {v!r}")
        # The torch module owns weight/bias with torch's layout and initialisation.
        self.conv = self._conv_cls(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self.norm = make_norm(norm, out_channels, spatial=True)
        self.in_channels, self.out_channels = in_channels, out_channels

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv.bias

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        n = self.unit_dims
        check_input(x, self.site_name, n + 1, (self.in_channels,) + (None,) * (n - 1))
        def conv(rows: torch.Tensor) -> torch.Tensor:
            e = self.conv(rows.reshape((-1,) + rows.shape[-n:]))
            return e.reshape(rows.shape[:-n] + e.shape[1:])

        gaussian = gaussian_weights_of(self.conv)
        if gaussian is not None:  # Bayesian weights, local reparametrisation
            def linear(rows, weight, bias):
                e = self.conv._conv_forward(rows.reshape((-1,) + rows.shape[-n:]), weight, bias)
                return e.reshape(rows.shape[:-n] + e.shape[1:])

            e = sample_energy(linear, x, gaussian, n)
            if self.norm is not None:
                e = self.norm(e.reshape((-1,) + e.shape[-n:])).reshape(e.shape)
            return e
        if self.norm is not None:  # batch statistics see every row, copies included
            e = conv(x)
            return self.norm(e.reshape((-1,) + e.shape[-n:])).reshape(e.shape)
        return broadcast_apply(conv, x, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emit(self.energy(x))

    def extra_repr(self) -> str:
        return f"{self.conv.extra_repr()}, {super().extra_repr()}"


class Conv1d(_ConvNd):
    """1-D convolution layer, arguments as :class:`torch.nn.Conv1d` plus ``node`` and ``norm``.

    Input ``(*sample, batch, channels, length)``.
    """

    unit_dims = 2
    _conv_cls = PyroModule[nn.Conv1d]


class Conv2d(_ConvNd):
    """2-D convolution layer, arguments as :class:`torch.nn.Conv2d` plus ``node`` and ``norm``.

    Input ``(*sample, batch, channels, height, width)``.

    >>> layer = Conv2d(1, 2, 3, padding=1)
    >>> layer(torch.rand(5, 1, 8, 8)).shape
    torch.Size([5, 2, 8, 8])
    """

    unit_dims = 3
    _conv_cls = PyroModule[nn.Conv2d]
