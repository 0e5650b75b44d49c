"""Independently recurrent layer: conditional independence of units through time."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import CGLayer, check_input

__all__ = ["IndRNN"]


class IndRNN(CGLayer):
    """IndRNN layer (Li et al. 2018) as a chain graph:
    ``P(X^t_i | X^{l-1,t}, X^{t-1}_i)`` with energy ``e^t = W x^t + u * h^{t-1} + b``.

    The recurrence is element-wise (``u`` has one weight per unit), so units stay
    conditionally independent given the previous layer and their own past. Each time step is
    one sample site ``"{name}.t{step}"`` because step ``t`` needs the value drawn at ``t-1``.

    :param input_size: features per time step.
    :param hidden_size: units.
    :param node: node family.
    :param max_recurrent: ``|u|`` is initialised in ``(0, max_recurrent)``.

    Input ``(*sample, batch, time, input_size)``, output ``(*sample, batch, time, hidden_size)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        node="relu",
        bias: bool = True,
        max_recurrent: float = 1.0,
    ):
        super().__init__(node)
        for arg, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{arg} must be a positive int, got {v!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight = nn.Parameter(torch.empty(hidden_size, input_size))
        self.recurrent_weight = nn.Parameter(torch.empty(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.recurrent_weight, 0.0, max_recurrent)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        check_input(x, self.site_name, 3, (None, self.input_size))
        drive = F.linear(x, self.weight, self.bias)  # all time steps in one matmul
        h = drive.new_zeros(drive.shape[:-2] + drive.shape[-1:]) if h0 is None else h0
        outputs = []
        for t in range(drive.shape[-2]):
            h = self.emit(drive[..., t, :] + self.recurrent_weight * h, f"{self.site_name}.t{t}")
            outputs.append(h)
        return torch.stack(outputs, dim=-2)
