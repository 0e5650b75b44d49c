"""A layer of nodes whose energy is its (optionally normalised) input."""

from __future__ import annotations

import torch

from .base import CGLayer, check_input, make_norm

__all__ = ["Activation"]


class Activation(CGLayer):
    """Nodes with energy ``e = norm(x)``: the pre-activation of refinement modules.

    :param node: node family.
    :param norm: ``"batch"``, ``"layer"`` or ``None``.
    :param num_features: channels (dim ``-3`` when ``spatial``) or features (dim ``-1``).
    :param spatial: input is ``(..., C, H, W)`` rather than ``(..., features)``.
    """

    def __init__(
        self,
        node="relu",
        norm: str | None = None,
        num_features: int | None = None,
        spatial: bool = False,
    ):
        super().__init__(node)
        if norm is not None and (not isinstance(num_features, int) or num_features < 1):
            raise ValueError(
                f"norm={norm!r} needs num_features, a positive int, got {num_features!r}"
            )
        self.unit_dims = 3 if spatial else 1
        self.num_features = num_features
        self.norm = make_norm(norm, num_features, spatial) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.unit_dims
        check_input(x, self.site_name, n + 1, (self.num_features,) + (None,) * (n - 1))
        if self.norm is not None:
            x = self.norm(x.reshape((-1,) + x.shape[-n:])).reshape(x.shape)
        return self.emit(x)
