"""Gal & Ghahramani's MC-dropout variational family as a Pyro guide over weights."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from ..layers import Conv1d, Conv2d, Dense
from ..layers.reparam import GaussianWeights

__all__ = ["DropoutWeightGuide", "MeanFieldNormalGuide"]


class DropoutWeightGuide(PyroModule):
    """``q(W) : W = M diag(z) / (1 - p)``, ``z_j ~ Bernoulli(1 - p)`` for each Dense layer.

    With a Gaussian prior ``N(0, s^2)`` on ``W`` (:meth:`GaussianPrior.sample`), the
    Monte-Carlo ELBO of this guide is the dropout loss plus an L2 term on the masked weights
    (``||M diag(z)/(1-p)||^2 / (2 s^2)`` per data set; ``(1-p)``-weighted L2 in expectation):
    dropout training *is* variational inference. Dividing by ``1 - p`` (inverted dropout)
    makes ``M`` the same parameter as the weights of the chain-graph form, where dropout is
    an auxiliary node ``D`` multiplying the layer's input.

    The masks are one per mini-batch here (a weight sample), whereas the chain-graph form
    draws one per datum; both are unbiased estimates of the same objective.

    :param net: the network; its model draws the weights with :meth:`GaussianPrior.sample`.
    :param p: drop probability in ``[0, 1)``.
    :param layers: site-name prefixes of the Dense layers to cover (default: all).
    """

    def __init__(self, net: nn.Module, p: float, layers: list[str] | None = None):
        super().__init__()
        if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.names: list[str] = []
        self.means = nn.ParameterDict()
        for module in net.modules():
            if isinstance(module, Dense) and (layers is None or module.site_name in layers):
                w = torch.empty(module.out_features, module.in_features)
                nn.init.kaiming_uniform_(w, a=5**0.5)
                self.means[module.site_name.replace(".", "__")] = nn.Parameter(w)
                self.names.append(module.site_name)
        if not self.names:
            raise ValueError("DropoutWeightGuide found no Dense layer to cover")
        #: Masks to use instead of fresh draws (for tests and replays); ``None``: draw.
        self.fixed_masks: dict[str, torch.Tensor] | None = None
        self.last_masks: dict[str, torch.Tensor] = {}

    def forward(self, *args, **kwargs) -> None:
        keep = 1.0 - self.p
        for name in self.names:
            m = self.means[name.replace(".", "__")]
            if self.fixed_masks is not None:
                z = self.fixed_masks[name]
            else:
                z = torch.empty(m.shape[-1], dtype=m.dtype, device=m.device).bernoulli_(keep)
            self.last_masks[name] = z
            pyro.sample(f"{name}.weight", dist.Delta(m * (z / keep), event_dim=2))


class MeanFieldNormalGuide(nn.Module):
    """Mean-field Normal guide ``q(w) = prod N(loc, scale^2)`` over named weights.

    Locations start at the network's current weights (its usual initialisation), scales at
    ``init_scale``. A plain ``nn.Module``: parameters live in the guide, so ``state_dict()``,
    ``.to(device)`` and several models side by side just work.

    :param net: the network.
    :param names: parameter names (as in ``net.named_parameters()``) to treat as random.
    :param init_scale: initial standard deviation.
    """

    def __init__(self, net: nn.Module, names: list[str], init_scale: float = 0.01):
        super().__init__()
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        params = dict(net.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"the network has no parameters named {missing}")
        self.names = list(names)
        key = self._key
        self.locs = nn.ParameterDict({key(n): nn.Parameter(params[n].detach().clone())
                                      for n in names})
        # softplus^-1(init_scale): scales stay positive without a constraint.
        rho = float(torch.log(torch.expm1(torch.tensor(float(init_scale)))))
        self.rhos = nn.ParameterDict({key(n): nn.Parameter(torch.full_like(params[n].detach(), rho))
                                      for n in names})

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def scale(self, name: str) -> torch.Tensor:
        return F.softplus(self.rhos[self._key(name)])

    def kl(self, prior_scale: float) -> torch.Tensor:
        """``KL(q || p)`` in closed form for the prior ``N(0, prior_scale^2)`` on each weight."""
        total = 0.0
        for name in self.names:
            loc, scale = self.locs[self._key(name)], self.scale(name)
            total = total + (math.log(prior_scale) - scale.log()
                             + (scale.pow(2) + loc.pow(2)) / (2 * prior_scale**2) - 0.5).sum()
        return total

    def _owners(self, net: nn.Module) -> list[tuple[nn.Module, str, str]]:
        """``(owning module, "weight" | "bias", name)`` per random parameter, checked once
        per network (the walk over its modules stays out of the training step)."""
        cached = getattr(self, "_owners_cache", None)
        if cached is not None and cached[0] is net:
            return cached[1]
        owners = {id(m.conv) for m in net.modules() if isinstance(m, (Conv1d, Conv2d))}
        owners |= {id(m) for m in net.modules() if isinstance(m, Dense)}
        found, bad = [], []
        for name in self.names:
            path, _, attr = name.rpartition(".")
            module = net.get_submodule(path)
            if id(module) in owners and attr in ("weight", "bias"):
                found.append((module, attr, name))
            else:
                bad.append(name)
        if bad:
            raise ValueError(f"local reparametrisation covers the weights and biases of Dense "
                             f"and Conv layers only; these random parameters are not: {bad}")
        self._owners_cache = (net, found)  # a tuple: not registered as a submodule
        return found

    def gaussian_weights(self, net: nn.Module) -> dict[nn.Module, GaussianWeights]:
        """The guide's weights per owning module, for :func:`pyrocg.layers.local_reparam`.

        :raises ValueError: when a random parameter is not the weight or bias of a
            :class:`~pyrocg.layers.Dense` or ``Conv*`` layer (nothing else has a local
            reparametrisation here).
        """
        out: dict[nn.Module, GaussianWeights] = {}
        for module, attr, name in self._owners(net):
            if module not in out:
                out[module] = GaussianWeights(module.weight, None, module.bias, None)
            loc, scale = self.locs[self._key(name)], self.scale(name)
            if attr == "weight":
                out[module].weight_loc, out[module].weight_scale = loc, scale
            else:
                out[module].bias_loc, out[module].bias_scale = loc, scale
        for w in out.values():
            if w.weight_scale is None:  # a random bias over a point-estimate weight
                w.weight_scale = torch.zeros_like(w.weight_loc)
        return out

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            loc = self.locs[self._key(name)]
            out[name] = pyro.sample(
                name, dist.Normal(loc, self.scale(name)).to_event(loc.dim())
            )
        return out
