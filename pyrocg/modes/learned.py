"""Learned stochasticity: PCFF sampling rates and dropout rates as variational parameters.

The chain-graph view makes the stochasticity of a network a set of random nodes with exact
densities, so its rates can be learned inside a variational objective instead of tuned by
a grid search. The rates live in a :class:`LearnedRates` module — the guide of these modes,
trained with the weights — and each mode adds the matching KL term to the ELBO, so that a
rate is not a free knob that collapses to 0:

* :class:`LearnedPCFF` (``"pcff-learned"``): each node element is sampled with a learned
  per-layer (or per-unit) rate ``r`` through a relaxed Bernoulli (Concrete) selection. The
  selection ``S`` of a unit is a global variable, ``q(S) = Bernoulli(r)`` against the prior
  ``p(S) = Bernoulli(r0)`` (``prior_rate``, default 1/2), re-drawn for every datum as the
  Monte-Carlo estimate of ``E_q[sum_n log p(y_n | x_n, S)]`` (Gal's argument for dropout).
  ELBO ``= E_q[log-likelihood] - K * KL(Bernoulli(r) || Bernoulli(r0))`` over the ``K``
  node units of a datum; for ``r0 = 1/2`` the KL is ``log 2 - H(r)``, Concrete dropout's
  entropy term. There is no weight term: a collapsed node does not rescale any weight.
* :class:`LearnedDropout` (``"dropout-learned"``): the dropout nodes' rates are learned.
  Bernoulli dropout layers learn ``p`` by **Concrete dropout** (Gal, Hron & Kendall 2017):
  ``KL = l^2 ||W||^2 / (2 (1 - p)) - K H(p)`` for the weights ``W`` the layer feeds (our
  inverted dropout: ``W = (1 - p) M`` in Gal's notation, whose term is
  ``l^2 (1 - p) ||M||^2 / 2``), ``l^2 = 1 / scale^2`` of the model's
  :class:`~pyrocg.modes.GaussianPrior` (which already counts ``||W||^2 / (2 scale^2)``;
  the mode adds the rest, ``p / (1 - p)`` times it), and the entropy term as
  ``K KL(Bernoulli(p) || Bernoulli(1/2))``. Gaussian dropout layers learn their variance
  ``alpha`` by **variational dropout** (Kingma, Salimans & Welling 2015) with the
  log-uniform prior, whose KL per weight is Molchanov, Ashukha & Vetrov (2017)'s
  approximation ``-KL ~ k1 sigmoid(k2 + k3 log alpha) - log(1 + 1/alpha) / 2 - k1``
  (``k1, k2, k3 = 0.63576, 1.87320, 1.48695``), counted once per weight the noisy unit
  feeds; ``alpha <= 1`` as in Kingma et al. Prediction is MC-VI: ``T`` passes with hard
  Bernoulli masks (or Gaussian noise) at the learned rates.

Both KL terms are global (counted once per data set, like the weight prior): the loss per
datum carries them divided by ``N``.

>>> import torch
>>> from pyrocg import infer, models, modes
>>> net = models.mlp(4, [8], 3)
>>> model = infer.CGModel(net, infer.Categorical(100), modes.LearnedPCFF(init=0.2))
>>> x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
>>> model.initialize(x, y)                   # the rates are created on a first batch
>>> {k: round(float(v), 3) for k, v in modes.learned_rates(model).items()}
{'hidden1': 0.2}
>>> model.loss(x, y).backward()
>>> model.guide.logit("hidden1").grad is not None   # the rate is trained with the weights
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from pyro.poutine.messenger import Messenger
from torch import nn

from .. import handlers
from ..handlers.base import node_of
from ..handlers.learned import TARGETS, base_site, using_rates
from ..layers import Dropout as DropoutLayer
from ..layers import GaussianDropout as GaussianDropoutLayer
from ..layers.base import DROPOUT_ROLE, NODE_ROLE, ROLE_KEY
from ..layers.dropout import MaskNode
from ..layers.gaussian_noise import GaussianNoiseNode
from . import Mode, WeightDraw
from .priors import GaussianPrior

__all__ = ["LearnedRates", "LearnedDraw", "LearnedPCFF", "LearnedDropout", "learned_rates",
           "bernoulli_kl", "variational_dropout_kl"]

#: Molchanov et al. (2017)'s constants of the negative KL of variational dropout.
_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695


def bernoulli_kl(logit: torch.Tensor, prior_rate: float) -> torch.Tensor:
    """``KL(Bernoulli(sigmoid(logit)) || Bernoulli(prior_rate))`` elementwise.

    >>> float(bernoulli_kl(torch.tensor(0.0), 0.5))
    0.0
    """
    r = torch.sigmoid(logit)
    log_r, log_1mr = F.logsigmoid(logit), F.logsigmoid(-logit)
    return r * (log_r - math.log(prior_rate)) + (1 - r) * (log_1mr - math.log1p(-prior_rate))


def variational_dropout_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """``KL(q || p)`` per weight of variational dropout with the log-uniform prior, by
    Molchanov et al. (2017)'s approximation; it decreases to 0 as ``alpha`` grows.

    >>> kl = variational_dropout_kl(torch.tensor([-4.0, 0.0, 8.0]))
    >>> bool(kl[0] > kl[1] > kl[2] > 0)
    True
    """
    neg_kl = (_K1 * torch.sigmoid(_K2 + _K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - _K1)
    return -neg_kl


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _check_open_rate(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{what} must be a number in (0, 1), got {value!r}")
    return float(value)


class LearnedRates(PyroModule):
    """The learned rates of a network's sites: the guide of :class:`LearnedPCFF` and
    :class:`LearnedDropout`.

    One parameter per layer (or per unit: ``per_unit``; per channel for convolutions) for
    each site of the target: ``"nodes"`` (PCFF sampling rates of node sites, as log-odds) or
    ``"dropout"`` (drop probabilities of Bernoulli dropout layers as log-odds, variances of
    Gaussian dropout layers as ``log alpha``). The parameters are created by
    :meth:`initialize` on a first batch (:meth:`pyrocg.infer.CGModel.initialize`, which
    :func:`~pyrocg.infer.fit` calls), as an autoguide's are.

    :param net: the chain-graph network (kept as a reference, not a submodule).
    :param target: ``"nodes"`` or ``"dropout"``.
    :param per_unit: one rate per unit instead of one per layer.
    :param init: initial rate (PCFF: sampling rate, default 0.1; dropout: drop probability,
        default the layer's own ``p`` or ``alpha``).
    :param max_alpha: the largest variance of a Gaussian dropout node.
    """

    def __init__(self, net: nn.Module, target: str, per_unit: bool = False,
                 init: float | None = None, max_alpha: float = 1.0):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if not isinstance(per_unit, bool):
            raise TypeError(f"per_unit must be True or False, got {per_unit!r}")
        if init is not None:
            init = _check_open_rate(init, "init")
        self.__dict__["_net"] = net  # a reference: its parameters are the model's, not ours
        self.target, self.per_unit, self.init = target, per_unit, init
        self.max_alpha = float(max_alpha)
        #: site -> {"kind", "key", "units" (units per datum), "fan_out"/"weight"}
        self._sites: dict[str, dict] = {}

    # -- building -------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        """Whether :meth:`initialize` has created the parameters."""
        return bool(self._sites)

    def initialize(self, x: torch.Tensor) -> None:
        """Create one parameter per target site of the network, found by running it
        feed-forward (no gradient, evaluation mode, RNG untouched) on the first rows of
        ``x`` ``(batch, *features)``.

        :raises ValueError: if the network has no site of the target.
        """
        if self._sites:
            return
        net = self._net
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), poutine.block():
                trace = poutine.trace(handlers.feedforward(net)).get_trace(x[:2])
        finally:
            net.train(was_training)
        layers = {m.site_name: m for m in net.modules()
                  if isinstance(m, (DropoutLayer, GaussianDropoutLayer))}
        role = NODE_ROLE if self.target == "nodes" else DROPOUT_ROLE
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or (site.get("infer") or {}).get(ROLE_KEY) != role:
                continue
            base = base_site(name)
            if base in self._sites:
                continue
            node = node_of(site["fn"])
            units = tuple((node.batch_shape + node.event_shape)[1:])
            self._add_site(base, node, units, layers.get(base), x)
        if not self._sites:
            what = "node sites" if self.target == "nodes" else "dropout nodes"
            raise ValueError(f"LearnedRates: this network has no {what} to learn rates of")

    def _add_site(self, name: str, node: Any, units: tuple, layer: Any, x: torch.Tensor) -> None:
        if isinstance(node, GaussianNoiseNode):
            kind = "gaussian"
            a = layer.alpha if layer is not None else 1.0
            a = float(a.mean()) if isinstance(a, torch.Tensor) else float(a)
            if self.init is not None:
                a = self.init / (1.0 - self.init)
            start = math.log(min(max(a, 1e-8), self.max_alpha))
        elif isinstance(node, MaskNode) or self.target == "nodes":
            kind = "bernoulli" if isinstance(node, MaskNode) else "node"
            default = 0.1 if kind == "node" else (layer.p if layer is not None else 0.5)
            start = _logit(self.init if self.init is not None else default)
        else:
            return  # a dropout-role node of another family: left to its own rate
        shape = (units[0],) + (1,) * (len(units) - 1) if self.per_unit and units else ()
        key = "rate_" + name.replace(".", "__")
        value = torch.full(shape, start, dtype=x.dtype, device=x.device)
        setattr(self, key, nn.Parameter(value))
        info = {"kind": kind, "key": key, "units": math.prod(units)}
        if kind != "node":
            info["weight"] = self._fed_weight(layer, units)
        self._sites[name] = info

    def _fed_weight(self, layer: Any, units: tuple) -> tuple[nn.Module, str] | None:
        """The (module, name) of the dense weight ``(out, in)`` the dropout ``layer`` feeds:
        the next weighted module after it whose input width is the layer's."""
        if layer is None or not units:
            return None
        mods = list(self._net.modules())
        after = mods[mods.index(layer) + 1:] if layer in mods else []
        for m in after:
            w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
            if isinstance(w, nn.Parameter):
                return (m, "weight") if w.dim() == 2 and w.shape[1] == units[-1] else None
        return None

    def forward(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> None:
        """As a guide: creates the parameters on the first call; draws nothing (the rates
        enter the model through the mode's handler)."""
        if not self._sites:
            if x is None:
                raise ValueError("LearnedRates needs a first batch x to create its rates")
            self.initialize(x)

    # -- the rates ------------------------------------------------------------------------
    def _param(self, name: str) -> tuple[dict, torch.Tensor] | None:
        info = self._sites.get(name)
        if info is None:
            if not self._sites:
                raise ValueError("LearnedRates are not initialised: call "
                                 "model.initialize(x, y) (fit does) before using them")
            return None
        return info, getattr(self, info["key"])

    def logit(self, name: str) -> torch.Tensor | None:
        """The log-odds of site ``name``'s rate (PCFF: sampled; Bernoulli dropout:
        dropped), or ``None`` if the site has no learned Bernoulli rate."""
        found = self._param(name)
        if found is None or found[0]["kind"] == "gaussian":
            return None
        return found[1]

    def log_alpha(self, name: str) -> torch.Tensor | None:
        """``log alpha`` (clamped at ``log max_alpha``) of a Gaussian dropout site ``name``,
        or ``None``."""
        found = self._param(name)
        if found is None or found[0]["kind"] != "gaussian":
            return None
        return found[1].clamp(max=math.log(self.max_alpha))

    def rates(self) -> dict[str, torch.Tensor]:
        """The learned rates per site (detached): PCFF sampling rates, dropout
        probabilities, or Gaussian dropout variances ``alpha`` — a 0-dim tensor per layer, or
        one per unit.

        :raises ValueError: before :meth:`initialize`.
        """
        if not self._sites:
            raise ValueError("LearnedRates are not initialised: call model.initialize(x, y)")
        out = {}
        for name, info in self._sites.items():
            v = getattr(self, info["key"]).detach()
            if info["kind"] == "gaussian":
                out[name] = v.clamp(max=math.log(self.max_alpha)).exp()
            else:
                out[name] = torch.sigmoid(v)
            out[name] = out[name].reshape(out[name].shape[:1]) if v.dim() else out[name]
        return out

    def kl(self, prior: GaussianPrior | None, prior_rate: float = 0.5) -> torch.Tensor:
        """The KL term of the rates (see the module docstring), a global term of the ELBO:
        ``ELBO = E[log-likelihood] + log p(w) - kl``.

        :param prior: the model's weight prior (Concrete dropout's weight term uses its
            ``l^2 = 1 / scale^2``; ``None``: no weight term).
        :param prior_rate: the Bernoulli prior rate of the selections/masks.
        """
        total = None
        selected = set(prior.names(self._net)) if prior is not None else set()
        names = {id(p): n for n, p in self._net.named_parameters()}
        for info in self._sites.values():
            value = getattr(self, info["key"])
            per = info["units"] / value.numel()  # units sharing each parameter element
            if info["kind"] == "gaussian":
                owner = info.get("weight")
                fan_out = owner[0]._parameters[owner[1]].shape[0] if owner else 1
                log_alpha = value.clamp(max=math.log(self.max_alpha))
                term = variational_dropout_kl(log_alpha).sum() * (per * fan_out)
            else:
                term = bernoulli_kl(value, prior_rate).sum() * per
                owner = info.get("weight")
                if info["kind"] == "bernoulli" and owner is not None:
                    w = owner[0]._parameters[owner[1]]
                    if names.get(id(w)) in selected:
                        p = torch.sigmoid(value).reshape(-1)  # per input unit, or one
                        col = (w * w).sum(0) if p.numel() > 1 else (w * w).sum()
                        # The prior counted ||W||^2 / (2 s^2); Gal's term is that / (1 - p).
                        term = term + (col * (p / (1 - p))).sum() * (0.5 / prior.scale**2)
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return f"target={self.target!r}, per_unit={self.per_unit}, sites={list(self._sites)}"


@dataclass
class LearnedDraw(WeightDraw):
    """The network's point weights, run with the learned ``rates`` active
    (:func:`pyrocg.handlers.using_rates`)."""

    rates: Any = None

    def __call__(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with using_rates(self.rates):
            return super().__call__(net, x)


class _LearnedMode(Mode):
    """What the learned modes share: the rates as guide, their KL in the objective."""

    target: ClassVar[str] = ""

    def _check_common(self) -> None:
        if self.init is not None:
            _check_open_rate(self.init, "init")
        if not isinstance(self.per_unit, bool):
            raise TypeError(f"per_unit must be True or False, got {self.per_unit!r}")
        _check_open_rate(self.prior_rate, "prior_rate")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, Real) \
                or not self.temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")

    def train_handler(self) -> Messenger:
        return handlers.learned(self.target, relaxed=True, temperature=self.temperature)

    def build_guide(self, net: nn.Module, prior: GaussianPrior | None) -> nn.Module:
        return LearnedRates(net, self.target, self.per_unit, self.init)

    def weight_model(self, net: nn.Module, prior: GaussianPrior | None,
                     guide: nn.Module) -> WeightDraw:
        if not guide.initialized:
            raise ValueError(f"{type(self).__name__}: the learned rates are created on a first "
                             "batch; run the guide first (as SVI does) or call "
                             "model.initialize(x, y)")
        if prior is not None:
            pyro.factor("weight_prior", prior.log_prob(net))
        pyro.factor("rates_kl", -guide.kl(prior, self.prior_rate))
        return LearnedDraw(rates=guide)

    def closed_form_weights(self, net: nn.Module, prior: GaussianPrior | None,
                            guide: nn.Module) -> tuple[WeightDraw, torch.Tensor] | None:
        if not guide.initialized:
            return None  # Pyro's path: the guide runs first and creates the rates
        log_prior = 0.0 if prior is None else prior.log_prob(net)
        return LearnedDraw(rates=guide), log_prior - guide.kl(prior, self.prior_rate)

    def predict_weights(self, net: nn.Module, guide: nn.Module, *args: Any) -> WeightDraw:
        if not guide.initialized and args:
            guide.initialize(args[0])  # predicting before training: the initial rates
        return LearnedDraw(rates=guide)


@dataclass(frozen=True, repr=False)
class LearnedPCFF(_LearnedMode):
    """PCFF with learned sampling rates (see the module docstring); feed-forward
    prediction.

    :param init: initial sampling rate in ``(0, 1)`` (default 0.1).
    :param per_unit: one rate per unit (per channel for convolutions) instead of per layer.
    :param prior_rate: the Bernoulli prior rate ``r0`` of the selections.
    :param temperature: temperature of the Concrete relaxation.
    """

    name: ClassVar[str] = "pcff-learned"
    uses_nodes: ClassVar[bool] = True
    target: ClassVar[str] = "nodes"
    init: float | None = 0.1
    per_unit: bool = False
    prior_rate: float = 0.5
    temperature: float = 0.1

    def __post_init__(self):
        self._check_common()


@dataclass(frozen=True, repr=False)
class LearnedDropout(_LearnedMode):
    """Dropout with learned rates — Concrete dropout for Bernoulli layers, variational
    dropout for Gaussian ones (see the module docstring) — and MC-VI prediction (``T``
    passes with hard masks at the learned rates, averaged).

    :param init: initial drop probability in ``(0, 1)`` (Gaussian layers: the variance
        ``init / (1 - init)``); default each layer's own ``p`` or ``alpha``.
    :param per_unit: one rate per unit instead of per layer.
    :param prior_rate: the Bernoulli prior of the masks in the entropy term (1/2: Gal's).
    :param temperature: temperature of the Concrete relaxation (Gal et al.: 0.1).
    """

    name: ClassVar[str] = "dropout-learned"
    uses_dropout: ClassVar[bool] = True
    stochastic_prediction: ClassVar[bool] = True
    target: ClassVar[str] = "dropout"
    init: float | None = None
    per_unit: bool = False
    prior_rate: float = 0.5
    temperature: float = 0.1

    def __post_init__(self):
        self._check_common()

    def predict_handler(self) -> Messenger:
        return handlers.learned("dropout", relaxed=False, temperature=self.temperature)


def learned_rates(model: Any) -> dict[str, torch.Tensor]:
    """The learned rates of a :class:`~pyrocg.infer.CGModel` in a learned mode, per site
    (:meth:`LearnedRates.rates`).

    :raises ValueError: if the model's mode learns no rates, or before its first batch.
    """
    guide = getattr(model, "guide", None)
    if not isinstance(guide, LearnedRates):
        mode = getattr(model, "mode", None)
        raise ValueError(f"the model's mode {mode!r} learns no rates; use modes.LearnedPCFF() "
                         "or modes.LearnedDropout()")
    return guide.rates()

