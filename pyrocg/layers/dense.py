"""Fully connected chain-graph layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import CGLayer, broadcast_apply, check_input, linear, make_norm, parameter
from .reparam import gaussian_weights_of, sample_energy

__all__ = ["Dense"]


class Dense(CGLayer):
    """Dense layer: energy ``e = x W^T + b`` (optionally normalised), nodes of family ``node``.

    Parameters are laid out like :class:`torch.nn.Linear`: ``weight`` ``(out, in)``, ``bias``
    ``(out,)``, with the same initialisation.

    :param in_features: size of the input's last dimension.
    :param out_features: number of units.
    :param node: node family name or class; ``None`` returns the energy (a read-out layer).
    :param bias: learn a bias.
    :param norm: ``"batch"``, ``"layer"`` or ``None``: a reparametrisation of the energy.

    Input ``(*sample, batch, in_features)``, output ``(*sample, batch, out_features)``.

    >>> import pyrocg
    >>> layer = Dense(4, 3)
    >>> with pyrocg.handlers.feedforward():
    ...     y = layer(torch.ones(2, 4))
    >>> bool(torch.equal(y, torch.relu(torch.nn.functional.linear(torch.ones(2, 4),
    ...                  layer.weight, layer.bias))))
    True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        node="relu",
        bias: bool = True,
        norm: str | None = None,
    ):
        super().__init__(node)
        for arg, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{arg} must be a positive int, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.norm = make_norm(norm, out_features, spatial=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same scheme as nn.Linear so that swapping layers changes nothing.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.site_name, 1, (self.in_features,))
        gaussian = gaussian_weights_of(self)
        if gaussian is not None:  # Bayesian weights, local reparametrisation
            e = sample_energy(F.linear, x, gaussian, 1)
            if self.norm is not None:
                e = self.norm(e.reshape(-1, self.out_features)).reshape(e.shape)
            return e
        # PyroSample priors draw them here, once
        weight, bias = parameter(self, "weight"), parameter(self, "bias")
        if self.norm is not None:  # batch statistics see every row, copies included
            e = linear(x, weight, bias)
            return self.norm(e.reshape(-1, self.out_features)).reshape(e.shape)
        if weight.dim() > 2:  # vectorised weight draws: every pass differs already
            return linear(x, weight, bias)
        return broadcast_apply(lambda rows: F.linear(rows, weight, bias), x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emit(self.energy(x))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {super().extra_repr()}"
