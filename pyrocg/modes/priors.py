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

    @classmethod
    def from_length_scale(cls, length_scale: float, dropout: float, dataset_size: int,
                          tau: float, biases: bool = False) -> GaussianPrior:
        """Gal & Ghahramani's dropout prior: length-scale ``l``, dropout rate ``p``, model
        precision ``tau``, i.e. the weight decay

        ``lambda = l^2 (1 - p) / (2 N tau)``

        of their objective ``(1/2N) sum_i (y_i - f(x_i))^2 + lambda sum ||W||^2`` (weights
        only; Keras' ``l2(lambda)`` regulariser of their code). With a unit-variance Gaussian
        likelihood (``Gaussian(N, 1.0, learn_scale=False)``, per datum ``(y - f)^2 / 2`` plus a
        constant) pyrocg's per-datum MAP objective is exactly that objective: this prior has
        :meth:`weight_decay` ``2 lambda`` (pyrocg's decay ``wd`` adds ``wd/2 ||W||^2``), so its
        scale is ``sqrt(tau) / (l sqrt(1 - p))``. The same minimiser, scaled by ``tau``, is
        the likelihood of precision ``tau`` with the prior ``N(0, 1 / (l^2 (1 - p)))``.

        Their Keras code minimises the mean squared error *without* the ``1/2``; that is
        the same minimiser as ``tau' = 2 tau`` here.

        :param length_scale: prior length-scale ``l > 0`` (their code: ``1e-2``).
        :param dropout: dropout rate ``p`` in ``[0, 1)``.
        :param dataset_size: training-set size ``N``.
        :param tau: model precision ``tau > 0`` (the grid value of their protocol).
        :param biases: put the prior on biases too (their code does not).

        >>> prior = GaussianPrior.from_length_scale(1e-2, 0.05, 400, tau=0.5)
        >>> lam = 1e-2**2 * (1 - 0.05) / (2 * 400 * 0.5)
        >>> math.isclose(prior.weight_decay(400), 2 * lam)
        True
        >>> math.isclose(prior.scale, math.sqrt(0.5) / (1e-2 * math.sqrt(1 - 0.05)))
        True
        """
        for name, v in (("length_scale", length_scale), ("tau", tau)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    0 < v < math.inf):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (
                0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
        lam = length_scale**2 * (1.0 - dropout) / (2.0 * dataset_size * tau)
        return cls.from_weight_decay(2.0 * lam, dataset_size, biases)

    def weight_decay(self, dataset_size: int) -> float:
        """The SGD weight decay ``wd`` (``wd/2 ||w||^2`` per datum) of this prior as a MAP
        prior: ``1 / (scale^2 N)``."""
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
        owners = self._owners(net)
        if any(n not in m._parameters for m, n in owners):  # one became a PyroSample: relist
            self.__dict__.pop("_owners_cache")
            owners = self._owners(net)
        sq = None
        for m, n in owners:
            p = m._parameters[n].reshape(-1)
            sq = torch.dot(p, p) if sq is None else sq.add(torch.dot(p, p))
        return 0.0 if sq is None else sq.mul(-0.5 / self.scale**2)

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
