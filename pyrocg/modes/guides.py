"""Guides over network weights, as :class:`~pyro.nn.PyroModule` s whose parameters Pyro sees.

Every guide here keeps its parameters as attributes of PyroModules, so accessing them inside
the guide emits ``pyro.param`` statements: ``pyro.infer.SVI`` (which optimises the
parameters of the ``param`` sites it traces) trains them exactly as :func:`pyrocg.infer.fit`
does, and ``pyro.settings.set(module_local_params=True)`` keeps them out of the global param
store. As with any PyroModule, call ``pyro.clear_param_store()`` between models when you
train with raw SVI in the global store.
"""

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
from .priors import GaussianPrior

__all__ = ["WeightModel", "EmptyGuide", "MeanFieldNormalGuide", "LocalReparamGuide",
           "DropoutWeightGuide", "local_reparam_owners"]


def _key(name: str) -> str:
    return name.replace(".", "__")


class WeightModel:
    """The weight part of a Bayesian network's model: ``prior.sample(net)``, one global sample
    site per random parameter, named like the parameter. Guide builders receive it (an
    autoguide built on it covers exactly the weights, never the network's node sites).

    :param net: the network.
    :param prior: the prior over its weights.
    """

    def __init__(self, net: nn.Module, prior: GaussianPrior):
        self.net, self.prior = net, prior

    def __call__(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return self.prior.sample(self.net)

    def values(self) -> dict[str, torch.Tensor]:
        """The network's current values of the random parameters (a guide's initial locations)."""
        params = dict(self.net.named_parameters())
        return {n: params[n].detach() for n in self.prior.names(self.net)}


class EmptyGuide(PyroModule):
    """The guide of a model without latent sites: point-estimate weights, and chain-graph nodes
    whose values the mode handlers choose inside the model."""

    def __init__(self):
        super().__init__(name="EmptyGuide")

    def forward(self, *args, **kwargs) -> None:
        return None


def local_reparam_owners(net: nn.Module, names: list[str]) -> list[tuple[nn.Module, str, str]]:
    """``(owning module, "weight" | "bias", name)`` of each random parameter, for
    :func:`pyrocg.layers.local_reparam`.

    :raises ValueError: when a parameter is not the weight or bias of a
        :class:`~pyrocg.layers.Dense` or ``Conv*`` layer (nothing else has a local
        reparametrisation here).
    """
    owners = {id(m.conv) for m in net.modules() if isinstance(m, (Conv1d, Conv2d))}
    owners |= {id(m) for m in net.modules() if isinstance(m, Dense)}
    found, bad = [], []
    for name in names:
        path, _, attr = name.rpartition(".")
        module = net.get_submodule(path)
        if id(module) in owners and attr in ("weight", "bias"):
            found.append((module, attr, name))
        else:
            bad.append(name)
    if bad:
        raise ValueError(f"local reparametrisation covers the weights and biases of Dense "
                         f"and Conv layers only; these random parameters are not: {bad}")
    return found


class MeanFieldNormalGuide(PyroModule):
    """Mean-field Normal guide ``q(w) = prod N(loc, scale^2)`` over named weights.

    Locations start at the network's current weights (its usual initialisation), scales at
    ``init_scale`` (``scale = softplus(rho)``). The parameters are ``guide.locs.<name>`` and
    ``guide.rhos.<name>`` (dots of the weight's name replaced by ``__``).

    :param net: the network.
    :param names: parameter names (as in ``net.named_parameters()``) to treat as random.
    :param init_scale: initial standard deviation.
    """

    def __init__(self, net: nn.Module, names: list[str], init_scale: float = 0.01):
        super().__init__(name=type(self).__name__)
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) \
                or not init_scale > 0:
            raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
        params = dict(net.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"the network has no parameters named {missing}")
        if not names:
            raise ValueError("MeanFieldNormalGuide needs at least one random parameter")
        self.names = list(names)
        self.locs, self.rhos = PyroModule(), PyroModule()
        # softplus^-1(init_scale): scales stay positive without a constraint.
        rho = float(torch.log(torch.expm1(torch.tensor(float(init_scale)))))
        for n in names:
            setattr(self.locs, _key(n), nn.Parameter(params[n].detach().clone()))
            setattr(self.rhos, _key(n), nn.Parameter(torch.full_like(params[n].detach(), rho)))

    def loc(self, name: str) -> torch.Tensor:
        return getattr(self.locs, _key(name))

    def scale(self, name: str) -> torch.Tensor:
        return F.softplus(getattr(self.rhos, _key(name)))

    def kl(self, prior_scale: float) -> torch.Tensor:
        """``KL(q || p)`` in closed form for the prior ``N(0, prior_scale^2)`` on each weight."""
        total = 0.0
        for name in self.names:
            loc, scale = self.loc(name), self.scale(name)
            total = total + (math.log(prior_scale) - scale.log()
                             + (scale.pow(2) + loc.pow(2)) / (2 * prior_scale**2) - 0.5).sum()
        return total

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Draw every random weight (a global sample site named like the parameter)."""
        out = {}
        for name in self.names:
            loc = self.loc(name)
            out[name] = pyro.sample(name, dist.Normal(loc, self.scale(name)).to_event(loc.dim()))
        return out


class LocalReparamGuide(MeanFieldNormalGuide):
    """The mean-field Normal guide for the local reparametrisation (Kingma et al. 2015): the
    weights are never drawn, each datum's energies are (:func:`pyrocg.layers.local_reparam`),
    and the KL term is in closed form in the model. So, as a Pyro guide, it has no sample
    sites; calling it returns the Gaussian weights per owning module (and emits its
    parameters as ``param`` sites, wherever it is called).

    :param net: the network; every random parameter must be the weight or bias of a
        :class:`~pyrocg.layers.Dense` or ``Conv*`` layer (``ValueError`` otherwise).
    :param names: parameter names to treat as random.
    :param init_scale: initial standard deviation.
    """

    def __init__(self, net: nn.Module, names: list[str], init_scale: float = 0.01):
        super().__init__(net, names, init_scale)
        self._owners = (local_reparam_owners(net, self.names),)  # a tuple: no submodules

    def forward(self, *args, **kwargs) -> dict[nn.Module, GaussianWeights]:
        out: dict[nn.Module, GaussianWeights] = {}
        for module, attr, name in self._owners[0]:
            if module not in out:
                out[module] = GaussianWeights(module.weight, None, module.bias, None)
            loc, scale = self.loc(name), self.scale(name)
            if attr == "weight":
                out[module].weight_loc, out[module].weight_scale = loc, scale
            else:
                out[module].bias_loc, out[module].bias_scale = loc, scale
        for w in out.values():
            if w.weight_scale is None:  # a random bias over a point-estimate weight
                w.weight_scale = torch.zeros_like(w.weight_loc)
        return out


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

    Use it with Bayesian weights as a builder, e.g.
    ``BayesianWeights(guide=functools.partial(DropoutWeightGuide, p=0.3))`` with a prior
    on the Dense weights only (``GaussianPrior(s)``, no biases).

    :param net: the network, or the :class:`WeightModel` a guide builder receives.
    :param p: drop probability in ``[0, 1)``.
    :param layers: site-name prefixes of the Dense layers to cover (default: all).
    """

    def __init__(self, net: nn.Module | WeightModel, p: float, layers: list[str] | None = None):
        super().__init__(name=type(self).__name__)
        if isinstance(net, WeightModel):
            net = net.net
        if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.names: list[str] = []
        self.means = PyroModule()
        for module in net.modules():
            if isinstance(module, Dense) and (layers is None or module.site_name in layers):
                w = torch.empty(module.out_features, module.in_features)
                nn.init.kaiming_uniform_(w, a=5**0.5)
                setattr(self.means, _key(module.site_name), nn.Parameter(w))
                self.names.append(module.site_name)
        if not self.names:
            raise ValueError("DropoutWeightGuide found no Dense layer to cover")
        #: Masks to use instead of fresh draws (for tests and replays); ``None``: draw.
        self.fixed_masks: dict[str, torch.Tensor] | None = None
        self.last_masks: dict[str, torch.Tensor] = {}

    def mean(self, name: str) -> torch.Tensor:
        """``M`` of the Dense layer with site name ``name``."""
        return getattr(self.means, _key(name))

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        keep = 1.0 - self.p
        out = {}
        for name in self.names:
            m = self.mean(name)
            if self.fixed_masks is not None:
                z = self.fixed_masks[name]
            else:
                z = torch.empty(m.shape[-1], dtype=m.dtype, device=m.device).bernoulli_(keep)
            self.last_masks[name] = z
            out[f"{name}.weight"] = pyro.sample(f"{name}.weight",
                                                dist.Delta(m * (z / keep), event_dim=2))
        return out
