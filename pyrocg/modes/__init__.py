"""Execution modes as first-class objects — the only place that knows which modes exist.

A mode is a small, picklable strategy object. It owns

* its **handlers**: :meth:`Mode.train_handler` runs the network in a training pass,
  :meth:`Mode.predict_handler` in a prediction pass (:mod:`pyrocg.handlers`);
* its **weight model and guide**: a MAP prior factor on point weights, or random weights
  with a guide (:class:`BayesianWeights` takes any Pyro guide, autoguides included);
* its **check** of a network (:meth:`Mode.check` raises a ``ValueError`` naming what is
  missing and the fix);
* whether prediction is **stochastic** and its default number of passes.

:class:`pyrocg.infer.CGModel` combines a network, a likelihood and a mode. Strings are
accepted as shorthands, resolved by :func:`get_mode` only::

    >>> import torch
    >>> from pyrocg import infer, models, modes
    >>> modes.get_mode("pcff", rate=0.3)
    PCFF(rate=0.3, default=0.0)
    >>> modes.MCDropout().check(models.mlp(4, [8], 3))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: MCDropout needs dropout nodes, but this network has no ...Dropout with p > 0; ...
    >>> net = models.mlp(4, [8], 3, dropout=0.2)
    >>> model = infer.CGModel(net, infer.Categorical(100), modes.MCDropout())
    >>> model.mode.stochastic_prediction, model.mode.num_samples
    (True, 100)
    >>> infer.predict(model, torch.randn(5, 4), num_samples=7).outputs.shape
    torch.Size([7, 5, 3])

The modes, by shorthand (training pass; prediction):

* ``"feedforward"`` — :class:`FeedForward`: feed-forward; one feed-forward pass.
* ``"pcff"`` — :class:`PCFF`: PCFF(rate); one feed-forward pass.
* ``"dropout"`` — :class:`Dropout`: dropout nodes sampled; one feed-forward pass.
* ``"mc-dropout"`` — :class:`MCDropout`: dropout nodes sampled; T such passes averaged.
* ``"bayes"`` — :class:`BayesianWeights`: weights drawn from the guide; T weight draws.
* ``"pcff-sampling"`` — :class:`AncestralSampling`: PCFF(rate); T PCFF(rate) passes.
* ``"pcff-learned"`` — :class:`LearnedPCFF`: PCFF with learned rates; one feed-forward pass.
* ``"dropout-learned"`` — :class:`LearnedDropout`: dropout with learned rates (Concrete /
  variational dropout); T passes at the learned rates (:mod:`pyrocg.modes.learned`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide, init_to_value
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.func import functional_call

from .. import handlers
from ..layers import CGLayer
from ..layers import Dropout as DropoutLayer
from ..layers import GaussianDropout as GaussianDropoutLayer
from ..layers.reparam import GaussianWeights, local_reparam
from . import guides, priors
from .guides import (
    DropoutWeightGuide,
    EmptyGuide,
    LocalReparamGuide,
    MeanFieldNormalGuide,
    WeightModel,
)
from .priors import GaussianPrior

__all__ = [
    "Mode",
    "FeedForward",
    "PCFF",
    "Dropout",
    "MCDropout",
    "BayesianWeights",
    "AncestralSampling",
    "WeightDraw",
    "LearnedPCFF",
    "LearnedDropout",
    "LearnedRates",
    "learned_rates",
    "MODES",
    "get_mode",
    "mode_parameters",
    "GaussianPrior",
    "MeanFieldNormalGuide",
    "LocalReparamGuide",
    "DropoutWeightGuide",
    "EmptyGuide",
    "WeightModel",
    "guides",
    "priors",
]


@dataclass
class WeightDraw:
    """The weights of one pass: parameters replaced by drawn values, and/or Gaussian weights
    whose energies the layers sample per datum (local reparametrisation); empty = the
    network's own parameters.

    Call it as ``draw(net, x)`` to run the network on these weights.
    """

    values: dict[str, torch.Tensor] | None = None
    gaussian: Mapping[nn.Module, GaussianWeights] | None = None

    def __call__(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        context = local_reparam(self.gaussian) if self.gaussian else contextlib.nullcontext()
        with context:
            if self.values:
                return functional_call(net, self.values, (x,), strict=False)
            return net(x)


def _has_dropout(net: nn.Module) -> bool:
    # Bernoulli or Gaussian (multiplicative-noise) dropout nodes: the dropout role.
    return any(isinstance(m, (DropoutLayer, GaussianDropoutLayer)) and m.p > 0
               for m in net.modules())


def _has_nodes(net: nn.Module) -> bool:
    return any(isinstance(m, CGLayer) and m.node is not None for m in net.modules())


def _check_rate(rate: Any, what: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, Real) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{what} must be a number in [0, 1], got {rate!r}")
    return float(rate)


class Mode:
    """Base class of the modes (see the module docstring). Subclasses are frozen dataclasses
    whose fields are the mode's parameters; they set the class attributes below and override
    the handlers, and Bayesian modes the weight model and guide."""

    #: The shorthand that :func:`get_mode` resolves to this class.
    name: ClassVar[str] = ""
    #: Prediction averages several stochastic passes.
    stochastic_prediction: ClassVar[bool] = False
    #: The network needs dropout nodes (``layers.Dropout`` with ``p > 0``).
    uses_dropout: ClassVar[bool] = False
    #: The network needs node sites (the mode samples them).
    uses_nodes: ClassVar[bool] = False
    #: Weights are random (they have a guide), not point estimates.
    random_weights: ClassVar[bool] = False
    #: The training objective is exactly the data log-likelihood of the handled network plus
    #: the MAP prior factor: the training handler decides every node site (no log-density)
    #: and the weights are points. :meth:`closed_form_weights` then gives the weight terms
    #: and :class:`~pyrocg.infer.CGModel` computes the loss directly instead of tracing the
    #: model on every step (same value, gradients and draws).
    closed_form_objective: ClassVar[bool] = True

    @property
    def num_samples(self) -> int:
        """Default number of prediction passes: 100 for stochastic prediction, else 1."""
        return 100 if self.stochastic_prediction else 1

    @property
    def vectorized_prediction(self) -> bool:
        """Prediction passes run at once over a leading sample dimension of the input."""
        return True

    # -- handlers -------------------------------------------------------------------------
    def train_handler(self) -> Messenger:
        """A fresh handler for one training pass."""
        raise NotImplementedError

    def predict_handler(self) -> Messenger:
        """A fresh handler for one prediction pass (feed-forward by default)."""
        return handlers.feedforward()

    # -- the network ----------------------------------------------------------------------
    def check(self, net: nn.Module) -> None:
        """Raise a ``ValueError`` (naming this mode and the fix) if ``net`` lacks what this
        mode needs.

        :param net: a chain-graph network.
        """
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
        mode = type(self).__name__
        if self.uses_dropout and not _has_dropout(net):
            raise ValueError(
                f"{mode} needs dropout nodes, but this network has no pyrocg.layers.Dropout "
                "with p > 0; build it with dropout (e.g. models.mlp(..., dropout=0.2)) or "
                "choose a mode without dropout (FeedForward, PCFF)")
        if self.uses_nodes and not _has_nodes(net):
            raise ValueError(
                f"{mode} samples node sites, but this network has none (every layer is a "
                "linear read-out, node=None); give it hidden layers with nodes or use "
                "FeedForward")

    # -- weights --------------------------------------------------------------------------
    def resolve_prior(self, prior: GaussianPrior | None) -> GaussianPrior | None:
        """The prior :class:`~pyrocg.infer.CGModel` uses, given the one it was passed: for
        point weights a MAP prior (weight decay) or ``None``."""
        return prior

    def build_guide(self, net: nn.Module, prior: GaussianPrior | None) -> nn.Module:
        """The guide of the weights (a module whose parameters are trained) under the prior
        :meth:`resolve_prior` gave: empty for point weights."""
        return EmptyGuide()

    def weight_model(self, net: nn.Module, prior: GaussianPrior | None,
                     guide: nn.Module) -> WeightDraw:
        """The weight part of the model of a training pass (called inside the Pyro model):
        here a MAP prior factor on the point weights."""
        if prior is not None:
            pyro.factor("weight_prior", prior.log_prob(net))
        return WeightDraw()

    def predict_weights(self, net: nn.Module, guide: nn.Module, *args: Any) -> WeightDraw:
        """The weights of one prediction pass (no sample sites escape): the point weights."""
        return WeightDraw()

    def closed_form_weights(self, net: nn.Module, prior: GaussianPrior | None,
                            guide: nn.Module) -> tuple[WeightDraw, torch.Tensor | float] | None:
        """The weights of one training pass and their ELBO term ``log p(w) - log q(w)`` —
        what :meth:`weight_model` and the guide contribute, with the same random draws —
        when the mode can give them without Pyro (:attr:`closed_form_objective`), else
        ``None``. Point weights: the MAP prior factor."""
        if not self.closed_form_objective:
            return None
        return WeightDraw(), 0.0 if prior is None else prior.log_prob(net)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                           for f in dataclasses.fields(self) if f.repr)  # type: ignore[arg-type]
        return f"{type(self).__name__}({fields})"


@dataclass(frozen=True, repr=False)
class FeedForward(Mode):
    """The deterministic network: every node at its feed-forward value (``E[T(X)]``), in
    training and prediction."""

    name: ClassVar[str] = "feedforward"

    def train_handler(self) -> Messenger:
        return handlers.feedforward()


@dataclass(frozen=True, repr=False)
class PCFF(Mode):
    """Partially collapsed feed-forward training (each node element sampled with probability
    ``rate``), feed-forward prediction.

    :param rate: a number in ``[0, 1]``, or a mapping from site-name ``fnmatch`` patterns to
        rates (as :func:`pyrocg.handlers.pcff`).
    :param default: rate of the sites no pattern of a mapping matches.
    """

    name: ClassVar[str] = "pcff"
    uses_nodes: ClassVar[bool] = True
    rate: float | Mapping[str, float] = 0.5
    default: float = 0.0

    def __post_init__(self):
        if isinstance(self.rate, Mapping):
            object.__setattr__(self, "rate", {str(k): _check_rate(v, f"rate[{k!r}]")
                                              for k, v in self.rate.items()})
        else:
            object.__setattr__(self, "rate", _check_rate(self.rate, "rate"))
        object.__setattr__(self, "default", _check_rate(self.default, "default"))

    def train_handler(self) -> Messenger:
        return handlers.pcff(self.rate, default=self.default)

    def check(self, net: nn.Module) -> None:
        super().check(net)
        _check_patterns(self, net)


def _check_patterns(mode: PCFF | AncestralSampling, net: nn.Module) -> None:
    """A rate pattern that matches no node site is a typo: it would silently leave those
    sites at the default rate."""
    if not isinstance(mode.rate, Mapping):
        return
    names = set()
    for m in net.modules():
        if isinstance(m, CGLayer) and m.node is not None:
            names.add(m.site_name)
            names.add(f"{m.site_name}.t0")  # IndRNN: one site per time step
    unmatched = [p for p in mode.rate if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(
            f"{type(mode).__name__}: rate pattern(s) {unmatched} match no node site of this "
            f"network; its node sites are {sorted(n for n in names if not n.endswith('.t0'))}")


@dataclass(frozen=True, repr=False)
class Dropout(Mode):
    """Dropout training (dropout nodes sampled, all other nodes feed-forward) and
    feed-forward prediction (dropout nodes at their mean): ``torch.nn.Dropout``'s
    ``train()``/``eval()``. Needs ``layers.Dropout`` nodes with ``p > 0``."""

    name: ClassVar[str] = "dropout"
    uses_dropout: ClassVar[bool] = True

    def train_handler(self) -> Messenger:
        return handlers.mc_dropout()


@dataclass(frozen=True, repr=False)
class MCDropout(Dropout):
    """Dropout training, and MC-dropout prediction (Gal & Ghahramani): dropout nodes sampled
    in every prediction pass too, passes averaged."""

    name: ClassVar[str] = "mc-dropout"
    stochastic_prediction: ClassVar[bool] = True

    def predict_handler(self) -> Messenger:
        return handlers.mc_dropout()


@dataclass(frozen=True, repr=False)
class AncestralSampling(Mode):
    """PCFF training and stochastic prediction by forward (ancestral) sampling of the nodes,
    each element with probability ``rate`` (``1``: every node sampled).

    :param rate: a number in ``[0, 1]`` or a mapping of site patterns to rates.
    :param default: rate of the sites no pattern of a mapping matches.
    """

    name: ClassVar[str] = "pcff-sampling"
    stochastic_prediction: ClassVar[bool] = True
    uses_nodes: ClassVar[bool] = True
    rate: float | Mapping[str, float] = 1.0
    default: float = 0.0

    __post_init__ = PCFF.__post_init__

    def train_handler(self) -> Messenger:
        return handlers.pcff(self.rate, default=self.default)

    def predict_handler(self) -> Messenger:
        return handlers.pcff(self.rate, default=self.default)

    def check(self, net: nn.Module) -> None:
        super().check(net)
        _check_patterns(self, net)


GuideSpec = nn.Module | type | Callable[[WeightModel], nn.Module] | None


@dataclass(frozen=True, repr=False)
class BayesianWeights(Mode):
    """Random weights with a variational guide; the network runs feed-forward given them.

    The model draws each weight under ``prior`` as a global sample site named like the
    parameter (:meth:`GaussianPrior.sample`); prediction averages passes with independent
    weight draws from the guide.

    :param prior: the prior (default ``GaussianPrior(1.0)``, weights only); may be given to
        :class:`~pyrocg.infer.CGModel` instead, not to both.
    :param guide: ``None`` for the mean-field Normal guide (:class:`MeanFieldNormalGuide`);
        an autoguide class such as ``pyro.infer.autoguide.AutoNormal`` (built on the weight
        model, locations initialised at the network's weights); a builder ``WeightModel ->
        guide`` (e.g. ``functools.partial(AutoLowRankMultivariateNormal, rank=5)`` or
        ``functools.partial(DropoutWeightGuide, p=0.3)``); or a guide module itself. A
        guide is an ``nn.Module`` (a PyroModule) so that :func:`~pyrocg.infer.fit` trains
        its parameters.
    :param local_reparam: sample each datum's energies instead of one weight draw per
        mini-batch (:mod:`pyrocg.layers.reparam`), with the KL term in closed form: lower-
        variance gradients, and prediction runs all passes at once. Needs the mean-field
        guide and random parameters of Dense/Conv layers only.
    :param init_scale: initial standard deviation of the mean-field guide.
    """

    name: ClassVar[str] = "bayes"
    closed_form_objective: ClassVar[bool] = False
    stochastic_prediction: ClassVar[bool] = True
    random_weights: ClassVar[bool] = True
    prior: GaussianPrior | None = None
    guide: GuideSpec = None
    local_reparam: bool = False
    init_scale: float = 0.01

    def __post_init__(self):
        if self.prior is not None and not isinstance(self.prior, GaussianPrior):
            raise TypeError(f"prior must be a GaussianPrior, got {type(self.prior).__name__}")
        if self.guide is not None and not callable(self.guide):
            raise TypeError(f"guide must be a guide module, an autoguide class or a builder, "
                            f"got {type(self.guide).__name__}")
        if not isinstance(self.local_reparam, bool):
            raise TypeError(f"local_reparam must be a bool, got {self.local_reparam!r}")
        if self.local_reparam and self.guide is not None:
            raise ValueError("local_reparam=True integrates the weights out under the mean-field "
                             "Normal guide; leave guide=None")
        if isinstance(self.init_scale, bool) or not isinstance(self.init_scale, Real) \
                or not self.init_scale > 0:
            raise ValueError(f"init_scale must be a positive number, got {self.init_scale!r}")

    @property
    def vectorized_prediction(self) -> bool:
        return self.local_reparam

    def train_handler(self) -> Messenger:
        return handlers.feedforward()

    def resolve_prior(self, prior: GaussianPrior | None) -> GaussianPrior:
        if prior is not None and self.prior is not None:
            raise ValueError("the prior is given twice: to BayesianWeights(prior=...) and to "
                             "CGModel(prior=...); give it once")
        return prior or self.prior or GaussianPrior(1.0)

    def check(self, net: nn.Module) -> None:
        super().check(net)
        names = (self.prior or GaussianPrior(1.0)).names(net)
        if not names:
            raise ValueError("BayesianWeights: the prior selects no parameter of this network "
                             "(no weights of pyrocg layers); nothing would be random")
        if self.local_reparam:
            try:
                guides.local_reparam_owners(net, names)
            except ValueError as err:
                raise ValueError(f"BayesianWeights(local_reparam=True): {err}; use "
                                 "local_reparam=False (weight sampling) for them") from None

    def build_guide(self, net: nn.Module, prior: GaussianPrior | None) -> nn.Module:
        prior = prior or self.resolve_prior(None)  # CGModel passes the resolved prior
        names = prior.names(net)
        if not names:
            raise ValueError("BayesianWeights: the prior selects no parameter of this network")
        if self.local_reparam:
            return LocalReparamGuide(net, names, self.init_scale)
        if self.guide is None:
            return MeanFieldNormalGuide(net, names, self.init_scale)
        if isinstance(self.guide, nn.Module):
            return self.guide
        model = WeightModel(net, prior)
        if isinstance(self.guide, type) and issubclass(self.guide, AutoGuide):
            guide = self.guide(model, init_loc_fn=init_to_value(values=model.values()))
        else:
            guide = self.guide(model)
        if not isinstance(guide, nn.Module):
            raise TypeError(f"the guide builder returned a {type(guide).__name__}; it must "
                            "return an nn.Module (e.g. a PyroModule or an autoguide) so that "
                            "its parameters are trained")
        return guide

    def weight_model(self, net: nn.Module, prior: GaussianPrior | None,
                     guide: nn.Module) -> WeightDraw:
        if self.local_reparam:
            gaussian = guide()  # emits the guide's parameters as param sites
            # Analytic -KL(q || p): the weights are never drawn, each datum's energies are.
            pyro.factor("weights_kl", -guide.kl(prior.scale))
            return WeightDraw(gaussian=gaussian)
        return WeightDraw(values=prior.sample(net))  # global sites, outside the data plate

    def closed_form_weights(self, net: nn.Module, prior: GaussianPrior | None,
                            guide: nn.Module) -> tuple[WeightDraw, torch.Tensor | float] | None:
        # Our own guides only (an autoguide or a custom guide goes through Pyro).
        if type(guide) is LocalReparamGuide:
            return WeightDraw(gaussian=guide()), -guide.kl(prior.scale)
        if type(guide) is not MeanFieldNormalGuide:
            return None
        values = guide()  # its own draws, in its order: the same random stream as in SVI
        log_ratio = 0.0
        const = math.log(prior.scale) + 0.5 * math.log(2 * math.pi)
        for name, w in values.items():
            log_q = pyro.distributions.Normal(guide.loc(name), guide.scale(name)).log_prob(w)
            log_ratio = log_ratio + (-(w**2) / (2 * prior.scale**2) - const).sum() - log_q.sum()
        return WeightDraw(values=values), log_ratio

    def predict_weights(self, net: nn.Module, guide: nn.Module, *args: Any) -> WeightDraw:
        if self.local_reparam:
            return WeightDraw(gaussian=guide())
        with poutine.block():
            trace = poutine.trace(guide).get_trace(*args)
        params = dict(net.named_parameters())
        return WeightDraw(values={n: s["value"] for n, s in trace.nodes.items()
                                  if s["type"] == "sample" and n in params})


from .learned import (  # noqa: E402  (they build on Mode and WeightDraw above)
    LearnedDropout,
    LearnedPCFF,
    LearnedRates,
    learned_rates,
)

#: Shorthand -> mode class; :func:`get_mode` resolves names with it.
MODES: dict[str, type[Mode]] = {cls.name: cls for cls in (
    FeedForward, PCFF, Dropout, MCDropout, BayesianWeights, AncestralSampling, LearnedPCFF,
    LearnedDropout)}


def mode_parameters(mode: str | type[Mode] | Mode) -> tuple[str, ...]:
    """The parameters a mode takes (its constructor's keywords).

    >>> mode_parameters("pcff")
    ('rate', 'default')
    """
    cls = _mode_class(mode) if isinstance(mode, str) else mode
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def _mode_class(name: str) -> type[Mode]:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}; expected one of {tuple(MODES)}") from None


def get_mode(mode: str | Mode, **params: Any) -> Mode:
    """The mode object of ``mode``: a :class:`Mode` is returned as it is, a shorthand
    (``"feedforward"``, ``"pcff"``, ``"dropout"``, ``"mc-dropout"``, ``"bayes"``,
    ``"pcff-sampling"``) is built with ``params``. The one place strings resolve.

    :param mode: a mode or its shorthand.
    :param params: the mode's parameters (shorthands only; see :func:`mode_parameters`).
    :raises ValueError: unknown name, or a parameter out of range.
    :raises TypeError: a parameter the mode does not take, or parameters with a mode object.

    >>> get_mode("mc-dropout")
    MCDropout()
    >>> get_mode("dropout", rate=0.3)
    Traceback (most recent call last):
    ...
    TypeError: mode 'dropout' takes no parameter 'rate' (its parameters: none)
    """
    if isinstance(mode, Mode):
        if params:
            raise TypeError(f"parameters {sorted(params)} are for shorthands; {mode!r} is "
                            "already built")
        return mode
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a Mode or one of {tuple(MODES)}, got "
                        f"{type(mode).__name__}")
    cls = _mode_class(mode)
    accepted = mode_parameters(cls)
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise TypeError(f"mode {mode!r} takes no parameter {unknown[0]!r} (its parameters: "
                        f"{', '.join(accepted) or 'none'})")
    return cls(**params)
