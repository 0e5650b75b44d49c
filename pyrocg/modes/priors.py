"""Priors over network weights: weight decay as a Gaussian prior, and Bayesian layers."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

__all__ = ["GaussianPrior", "weight_parameters"]


def weight_parameters(net: nn.Module) -> list[tuple[PyroModule, str, nn.Parameter]]:
    """``(module, name, parameter)`` of every weight and bias of the chain-graph layers.

    Normalisation parameters (inside plain ``nn.BatchNorm``/``LayerNorm`` modules) are not
    included: they reparametrise energies and carry no prior.
    """
    found = []
    for module in net.modules():
        if not isinstance(module, PyroModule):
            continue
        for name, p in list(module._parameters.items()):
            if p is not None and name in ("weight", "bias", "recurrent_weight"):
                found.append((module, name, p))
    return found


class GaussianPrior:
    """Independent ``N(0, scale^2)`` prior on every weight (and bias, if ``biases``).

    As a MAP prior it is weight decay: with the per-datum objective that pyrocg minimises,
    ``weight_decay = 1 / (scale^2 * dataset_size)`` (see :meth:`from_weight_decay`).

    :param scale: prior standard deviation.
    :param biases: put the prior on biases too.
    """

    def __init__(self, scale: float = 1.0, biases: bool = False):
        if not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"prior scale must be a positive number, got {scale!r}")
        self.scale, self.biases = float(scale), bool(biases)

    def __repr__(self) -> str:
        return f"GaussianPrior({self.scale!r}, biases={self.biases})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GaussianPrior):
            return NotImplemented
        return (self.scale, self.biases) == (other.scale, other.biases)

    def __hash__(self) -> int:
        return hash((self.scale, self.biases))

    @classmethod
    def from_weight_decay(cls, weight_decay: float, dataset_size: int, biases: bool = False):
        """The prior whose MAP objective equals SGD with this ``weight_decay``."""
        if not weight_decay > 0:
            raise ValueError(f"weight_decay must be positive, got {weight_decay}")
        return cls(1.0 / math.sqrt(weight_decay * dataset_size), biases)

    def weight_decay(self, dataset_size: int) -> float:
        return 1.0 / (self.scale**2 * dataset_size)

    def _selected(self, net):
        return [(m, n, p) for m, n, p in weight_parameters(net) if self.biases or n != "bias"]

    def _owners(self, net: nn.Module) -> list[tuple[nn.Module, str]]:
        # (module, name) of the selected parameters, found once per network: the walk over
        # its modules would otherwise run on every training step. Parameters are read
        # afresh each time, so replacing one is seen.
        cached = self.__dict__.get("_owners_cache")
        if cached is None or cached[0] is not net:
            cached = (net, [(m, n) for m, n, _ in self._selected(net)])
            self.__dict__["_owners_cache"] = cached
        return cached[1]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_owners_cache"}

    def log_prob(self, net: nn.Module) -> torch.Tensor:
        """``log p(w)`` up to an additive constant: ``-||w||^2 / (2 scale^2)``."""
        sq = sum(torch.dot(p.reshape(-1), p.reshape(-1))
                 for p in (m._parameters[n] for m, n in self._owners(net)))
        return -0.5 * sq / self.scale**2

    def names(self, net: nn.Module) -> list[str]:
        """Names (as in ``net.named_parameters()``) of the parameters under this prior."""
        ids = {id(p) for _, _, p in self._selected(net)}
        return [n for n, p in net.named_parameters() if id(p) in ids]

    def sample(self, net: nn.Module) -> dict[str, torch.Tensor]:
        """Draw the selected weights as global sample sites named like the parameters.

        Run the network on them with ``torch.func.functional_call(net, weights, x)``; call
        this outside any data plate (weights are global).
        """
        params = dict(net.named_parameters())
        return {
            name: pyro.sample(
                name,
                dist.Normal(params[name].new_zeros(()), self.scale)
                .expand(params[name].shape)
                .to_event(params[name].dim()),
            )
            for name in self.names(net)
        }
