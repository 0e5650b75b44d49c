"""The layer base class: compute an energy, emit the layer's nodes as one sample site.

Layers never branch on an execution mode. They compute energies and call ``pyro.sample`` on
a node distribution; the handlers in :mod:`pyrocg.handlers` decide what value comes back.
Shapes follow ``(*sample, batch, *units)``: the data dimension is a batch dimension (so the
site sits inside the user's ``pyro.plate`` over data), the units are event dimensions, and any
extra leading dimensions (vectorised particles, MC samples) pass through.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

import pyro
import torch
from pyro.nn import PyroModule
from pyro.poutine.runtime import am_i_wrapped
from torch import nn

from ..nodes import CGNode, resolve_node
from ..nodes.base import apply_once
from ..validation import check_finite, layer_checks_enabled
from .site import site_distribution

__all__ = [
    "CGLayer",
    "ROLE_KEY",
    "NODE_ROLE",
    "DROPOUT_ROLE",
    "make_norm",
    "check_input",
    "broadcast_apply",
    "linear",
    "sample_site",
    "DIRECT_DECIDER",
    "parameter",
]

#: Key in a sample site's ``infer`` dict that marks chain-graph sites, and its values.
ROLE_KEY = "pyrocg"
NODE_ROLE = "node"
DROPOUT_ROLE = "dropout"

NORMS = ("batch", "layer", None)


def make_norm(norm: str | None, num_features: int, spatial: bool) -> nn.Module | None:
    """Normalisation as a reparametrisation of the energy (not a node of its own)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "batch":
        return nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)
    if norm == "layer":
        # GroupNorm with one group normalises over (C, H, W) with per-channel affine.
        return nn.GroupNorm(1, num_features) if spatial else nn.LayerNorm(num_features)
    return None


def check_input(x: object, layer: str, min_dim: int, features: tuple[int | None, ...]) -> None:
    """Raise a clear error unless ``x`` is a float tensor whose trailing dims match ``features``
    (``None`` = any size)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{layer}: input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{layer}: input must have at least {min_dim} dims (..., batch, {features}), "
            f"got shape {tuple(x.shape)}"
        )
    if layer_checks_enabled():
        check_finite(x, f"{layer}: input")
    trailing = tuple(x.shape[x.dim() - len(features) :])
    if any(f is not None and f != t for f, t in zip(features, trailing, strict=True)):
        want = tuple("*" if f is None else f for f in features)
        raise ValueError(
            f"{layer}: expected input of shape (..., {', '.join(map(str, want))}), "
            f"got {tuple(x.shape)}"
        )


def broadcast_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    unit_dims: int) -> torch.Tensor:
    """``fn(x)`` where ``fn`` maps each row of units independently, computed once per distinct
    row (:func:`pyrocg.nodes.base.apply_once`): stride-0 leading copies — T MC passes before
    the first random site — cost one pass, not T."""
    return apply_once(fn, x, unit_dims)


#: A callable ``(name, role, node) -> value | None`` that decides sites without Pyro's effect
#: stack (:meth:`pyrocg.handlers.CGMessenger.deciding`), or ``None``.
DIRECT_DECIDER: ContextVar[Callable | None] = ContextVar("pyrocg_direct_decider", default=None)


def sample_site(name: str, node: CGNode, unit_dims: int, role: str,
                enumerable: bool = True) -> torch.Tensor:
    """Emit ``node`` (one unit per element of its trailing ``unit_dims``) as the sample site
    ``name`` of ``role`` and return its value.

    Inside a mode handler's :meth:`~pyrocg.handlers.CGMessenger.deciding` block, with no
    Pyro handler listening, the handler decides the value directly (the same value and
    draws as through ``pyro.sample``, without building the site's message).
    """
    decide = DIRECT_DECIDER.get()
    if decide is not None and not am_i_wrapped():
        value = decide(name, role, node)
        if value is not None:
            return value
    if enumerable:
        fn = site_distribution(node, unit_dims, name)
    else:
        fn = node.to_event(unit_dims) if unit_dims else node
    return pyro.sample(name, fn, infer={ROLE_KEY: role})


def parameter(module: PyroModule, name: str) -> torch.Tensor | None:
    """``getattr(module, name)`` — without PyroModule's ``pyro.param`` statement for a plain
    parameter when nothing can listen to it: inside a direct decision (no Pyro handler on
    the stack), once the module has made the statement before, so that the parameter is in
    Pyro's param store as usual. The statement costs ~4 µs per parameter and step, a tenth
    of a small network's training step. ``PyroSample``/``PyroParam`` attributes (not in
    ``_parameters``) always take PyroModule's path.
    """
    params = module._parameters
    if name in params and DIRECT_DECIDER.get() is not None and not am_i_wrapped():
        stated = module.__dict__.setdefault("_pyrocg_stated", set())
        if name in stated:
            return params[name]
        value = getattr(module, name)
        if module._pyro_context.active:
            stated.add(name)
        return value
    return getattr(module, name)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear``, also for weights with batch dims ``(*w_batch, out, in)``: vectorised
    weight draws (``Predictive(parallel=True)``, vectorised ELBO particles over
    ``PyroSample`` priors) whose batch dims align with — broadcast against — the batch dims
    of ``x`` ``(*x_batch, in)``; a bias ``(*w_batch, out)`` likewise."""
    if weight.dim() == 2:
        return torch.nn.functional.linear(x, weight, bias)
    try:
        out = torch.matmul(x.unsqueeze(-2), weight.transpose(-1, -2)).squeeze(-2)
        return out if bias is None else out + bias
    except RuntimeError:
        raise ValueError(
            f"weights of shape {tuple(weight.shape)} (batch dims {tuple(weight.shape[:-2])}) do "
            f"not broadcast against inputs of shape {tuple(x.shape)}; vectorised weight draws "
            f"need their plate dims (note Predictive(parallel=True) drops them for global "
            f"sites with event dims: use parallel=False)") from None


class CGLayer(PyroModule):
    """Base class of layers that emit chain-graph nodes.

    :param node: node family of the layer's units (see :func:`pyrocg.nodes.resolve_node`),
        or ``None`` for a linear read-out that returns its energy and emits no site.
    """

    #: Number of trailing unit dimensions of the layer's output (event dims of its site).
    unit_dims: int = 1

    def __init__(self, node: str | Callable[[torch.Tensor], CGNode] | None = "relu"):
        super().__init__()
        self.node = node
        self._node_factory = resolve_node(node)

    @property
    def site_name(self) -> str:
        """The readable, unique name of this layer's sample site (its module path)."""
        return self._pyro_name or type(self).__name__.lower()

    def emit(self, energy: torch.Tensor, name: str | None = None) -> torch.Tensor:
        """Emit the nodes with this energy as one sample site and return their value."""
        if self._node_factory is None:
            return energy
        name = name or self.site_name
        if layer_checks_enabled():
            check_finite(energy, f"{name}: energy")
        return sample_site(name, self._node_factory(energy), self.unit_dims, NODE_ROLE)

    def extra_repr(self) -> str:
        return f"node={self.node!r}"
