"""Shared machinery of the chain-graph node families.

A node family is a Pyro distribution over the value of one unit of a layer given its
*energy* ``e = b + sum_j w_ji T(x_j)``. Besides the usual distribution interface every node
has :attr:`CGNode.feedforward`, the closed-form statistic the feed-forward pass propagates.
``feedforward`` and ``mean`` are kept apart on purpose: for rectified nodes the familiar
activation (ReLU, softplus, ...) only approximates the exact mean, and that gap is testable.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution

__all__ = ["CGNode", "check_energy", "apply_once"]


def apply_once(fn, x: torch.Tensor, trailing_dims: int = 1) -> torch.Tensor:
    """``fn(x)`` for a map acting on each row of the last ``trailing_dims`` dims
    independently, computed once over the stride-0 copies among the leading dims
    (``x.expand(T, ...)`` for T prediction passes: before the first random site every pass
    is the same) and expanded back — a view, exact, and autograd sums the gradient over the
    copies."""
    lead = x.dim() - trailing_dims
    copies = [d for d in range(lead) if x.stride(d) == 0 and x.shape[d] > 1]
    if not copies:
        return fn(x)
    index = tuple(slice(0, 1) if d in copies else slice(None) for d in range(lead))
    y = fn(x[index])
    return y.expand(x.shape[:lead] + y.shape[lead:])


def check_energy(energy: object, name: str = "energy", min_dim: int = 0) -> torch.Tensor:
    """Validate an energy: a floating-point :class:`torch.Tensor` of ``min_dim`` dims or more."""
    if not isinstance(energy, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(energy).__name__}")
    if not energy.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {energy.dtype}")
    if energy.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {tuple(energy.shape)}"
        )
    return energy


class CGNode(TorchDistribution):
    """Base class of node families: a distribution parametrised by an ``energy`` tensor.

    Subclasses define :attr:`feedforward`, ``mean``, ``sample``/``rsample`` and ``log_prob``.
    """

    # Energies are not value-checked: a check is a full pass over every layer plus a device
    # sync on each forward. Non-finite losses are caught where they matter (training loop).
    arg_constraints: dict = {}

    energy: torch.Tensor

    @property
    def feedforward(self) -> torch.Tensor:
        """The feed-forward statistic ``q = E[T(X)]`` (or its closed-form approximation)."""
        raise NotImplementedError

    def rsample_where(self, mask: torch.Tensor) -> torch.Tensor:
        """A reparametrised draw where ``mask`` is 1 and the feed-forward statistic where it
        is 0 (``mask``: a boolean or 0/1 float tensor of the full sample shape,
        ``(*batch, *event)``).

        This is the partially collapsed value PCFF propagates. The generic form blends a full
        draw with the statistic (``lerp`` by the mask: exact at 0 and 1); nodes whose
        statistic *is* their zero-noise draw override it and skip the blend.
        """
        value = self.rsample(mask.shape[: mask.dim() - len(self.batch_shape)
                                       - len(self.event_shape)])
        if mask.dtype == torch.bool:
            mask = mask.to(value.dtype)
        return torch.lerp(self.feedforward.expand(value.shape), value, mask)

    def _expand_energy(self, cls: type, batch_shape: torch.Size, _instance, event_shape=()):
        new = self._get_checked_instance(cls, _instance)
        new.energy = self.energy.expand(torch.Size(batch_shape) + torch.Size(event_shape))
        return new
