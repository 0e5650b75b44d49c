"""Local reparametrisation of Gaussian weights (Kingma, Salimans & Welling, 2015).

With independent Gaussian weights ``w ~ N(loc, scale^2)`` a unit's energy ``e = b + sum_j
w_j x_j`` is Gaussian given its input: ``N(b_loc + loc . x, b_scale^2 + scale^2 . x^2)``.
Sampling the energy instead of the weights gives every datum (and every pass) its own
weight draw at the cost of two deterministic maps, and a gradient estimator of lower
variance, because the noise no longer couples the data of a mini-batch. The expected
log-likelihood — the ELBO's data term — is unchanged: it depends on each datum's marginal
only.

Inside :func:`local_reparam`, :class:`~pyrocg.layers.Dense` and ``Conv*`` layers whose
weights are listed sample their energies this way. :class:`pyrocg.infer.CGModel` with
``modes.BayesianWeights(local_reparam=True)`` sets it up from its mean-field guide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from .base import broadcast_apply

__all__ = ["GaussianWeights", "local_reparam", "gaussian_weights_of", "sample_energy"]


@dataclass
class GaussianWeights:
    """Independent Gaussian weights of one linear map; a ``None`` scale is a point value."""

    weight_loc: torch.Tensor
    weight_scale: torch.Tensor
    bias_loc: torch.Tensor | None = None
    bias_scale: torch.Tensor | None = None


_ACTIVE: ContextVar[dict[int, GaussianWeights] | None] = ContextVar("pyrocg_local_reparam",
                                                                    default=None)


@contextmanager
def local_reparam(weights: Mapping[nn.Module, GaussianWeights]) -> Iterator[None]:
    """Within the block, the modules in ``weights`` sample energies, not weights.

    Keys are the modules that own the parameters: a :class:`~pyrocg.layers.Dense` layer,
    or the ``.conv`` module of a ``Conv*`` layer.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of modules to GaussianWeights, got "
                        f"{type(weights).__name__}")
    for m, w in weights.items():
        if not isinstance(m, nn.Module) or not isinstance(w, GaussianWeights):
            raise TypeError(f"weights must map nn.Module to GaussianWeights, got "
                            f"{type(m).__name__} -> {type(w).__name__}")
    token = _ACTIVE.set({id(m): w for m, w in weights.items()})
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def gaussian_weights_of(module: nn.Module) -> GaussianWeights | None:
    """The Gaussian weights active for ``module``, or ``None`` outside :func:`local_reparam`."""
    active = _ACTIVE.get()
    return None if active is None else active.get(id(module))


def sample_energy(
    linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    x: torch.Tensor,
    w: GaussianWeights,
    unit_dims: int,
) -> torch.Tensor:
    """One Gaussian energy draw per row of ``x``: ``linear(x, loc, b_loc) + sqrt(linear(x^2,
    scale^2, b_scale^2)) * eps``; ``linear(rows, weight, bias)`` is the layer's map."""
    mean = broadcast_apply(lambda r: linear(r, w.weight_loc, w.bias_loc), x, unit_dims)
    b_var = None if w.bias_scale is None else w.bias_scale.pow(2)
    var = broadcast_apply(lambda r: linear(r * r, w.weight_scale.pow(2), b_var), x, unit_dims)
    # Noise at the full (expanded) shape: copies of an input are independent passes.
    eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)
    # The floor keeps sqrt's gradient finite where an input row is all zeros.
    return mean + var.clamp_min(1e-16).sqrt() * eps
