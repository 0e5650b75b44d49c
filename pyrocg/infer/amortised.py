"""Amortised variational inference over the hidden nodes of a chain-graph network.

Run with no mode handler, a chain-graph network is a stochastic feed-forward network (a
sigmoid belief net for binary nodes): every layer is a latent sample site with an exact
log-density (rectified nodes: an atom at 0 plus a Gaussian density; binary and categorical
nodes: discrete). Instead of collapsing the nodes (feed-forward, PCFF), :class:`AmortisedModel`
*infers* them: an inference network ``q(h | x, y) = prod_l q(h_l | h_{l-1}, y)`` — one site per
layer, of the layer's own node family — is the guide, and Pyro's ELBO trains network and guide
together::

    log p(y | x) >= E_q[ log p(y | h_L) + sum_l log p(h_l | h_{l-1}) - log q(h | x, y) ].

Discrete nodes are trained by the score function (``TraceGraph_ELBO``, with a learned
input-dependent baseline per site, as NVIL) or by a straight-through relaxation; rectified
and Gaussian nodes are reparametrised. Prediction samples the nodes ancestrally (``T`` passes averaged) and
:func:`marginal_log_likelihood` estimates ``log p(y | x)`` by importance sampling with the
guide as proposal (or the prior, for a network trained any other way), with its standard
error.

>>> import torch
>>> from pyrocg import infer, models
>>> net = models.mlp(4, [6], 3, node="binary")                    # a sigmoid belief net
>>> model = infer.AmortisedModel(net, infer.Categorical(20))
>>> x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
>>> loss = model.loss(x, y)                                       # -ELBO / N, differentiable
>>> est = infer.marginal_log_likelihood(model, x, y, num_samples=50)
>>> est.pointwise.shape, est.num_samples, bool((est.stderr >= 0).all())
(torch.Size([20]), 50, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.nn import PyroModule
from pyro.poutine.messenger import Messenger
from torch import nn

from .. import handlers
from ..layers import Dense, Flatten
from ..layers.site import site_distribution
from ..modes import GaussianPrior, Mode
from ..nodes import BinaryNode, CategoricalNode, CGNode
from .likelihoods import Categorical, Gaussian, Likelihood
from .model import CGModel

__all__ = [
    "AmortisedVI",
    "AmortisedModel",
    "InferenceNetwork",
    "ImportanceEstimate",
    "marginal_log_likelihood",
    "GUIDE_ESTIMATORS",
    "DifferentiableTraceGraph",
]

#: Gradient estimators of the guide's discrete nodes: the score function (unbiased, Pyro's
#: ``TraceGraph_ELBO``) or straight-through (biased, low variance).
GUIDE_ESTIMATORS = ("score", "straight_through")


def node_layers(net: nn.Module, mode: str = "AmortisedVI") -> list[Dense]:
    """The node layers of ``net``, in order, checking that it is a chain of dense layers (a
    :func:`pyrocg.models.mlp` without dropout) ending in a linear read-out."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
    children = list(net.named_children())
    layers: list[Dense] = []
    for i, (name, layer) in enumerate(children):
        last = i == len(children) - 1
        if isinstance(layer, Flatten) and not layers:
            continue
        if not isinstance(layer, Dense) or (layer.node is None) != last:
            raise ValueError(
                f"{mode} infers the nodes of a chain of Dense layers ending in a linear "
                f"read-out (models.mlp without dropout); layer {name!r} is "
                f"{type(layer).__name__} with node={getattr(layer, 'node', None)!r}")
        if not last:
            layers.append(layer)
    if not layers:
        raise ValueError(f"{mode} needs hidden node layers, but this network has none")
    return layers


class _Ancestral(Messenger):
    """No mode decision: every node site stays a latent site, valued by the guide."""


class _NeedsLikelihood(nn.Module):
    def forward(self, *args, **kwargs):
        raise TypeError("AmortisedVI's guide is an inference network built on the likelihood: "
                        "use pyrocg.infer.AmortisedModel(net, likelihood) instead of "
                        "CGModel(net, likelihood, AmortisedVI())")


@dataclass(frozen=True, repr=False)
class AmortisedVI(Mode):
    """Variational inference over the hidden nodes with an inference-network guide
    (:class:`AmortisedModel` builds it): training leaves every node a latent site valued
    by the guide; prediction samples the nodes ancestrally, ``T`` passes averaged.
    Weights are point estimates (a MAP prior factor, if a prior is given)."""

    name: ClassVar[str] = "amortised"
    uses_nodes: ClassVar[bool] = True
    stochastic_prediction: ClassVar[bool] = True
    closed_form_objective: ClassVar[bool] = False

    def train_handler(self) -> Messenger:
        return _Ancestral()

    def predict_handler(self) -> Messenger:
        return handlers.pcff(1.0)

    def check(self, net: nn.Module) -> None:
        super().check(net)
        node_layers(net, type(self).__name__)

    def build_guide(self, net: nn.Module, prior: GaussianPrior | None) -> nn.Module:
        return _NeedsLikelihood()


class _Baseline(nn.Linear):
    """A per-datum baseline ``b(x, y)`` of a score-function site (Mnih & Gregor's NVIL):
    a linear map of the guide's input features to one number per datum, trained by
    ``TraceGraph_ELBO``'s baseline loss."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features).squeeze(-1)


class InferenceNetwork(PyroModule):
    """The guide ``q(h | x, y) = prod_l q(h_l | h_{l-1}, y)``: one site per node layer of
    ``net``, named like it and of its node family, with energy
    ``A_l [h_{l-1}, enc(y)] + c_l`` (``h_0 = x``; ``enc``: one-hot labels, or the targets).

    :param net: a chain of :class:`~pyrocg.layers.Dense` layers ending in a read-out.
    :param likelihood: the model's :class:`~pyrocg.infer.Categorical` or
        :class:`~pyrocg.infer.Gaussian` likelihood (its data plate and label width).
    :param estimator: ``"score"`` (discrete nodes not reparametrised: score function) or
        ``"straight_through"``.
    :param init_from_model: start at the model's conditional ``p(h_l | h_{l-1})`` (the
        ``h`` part of ``A_l`` is the layer's weight, the label part zero).

    Call as ``guide(x, y)``, ``x`` ``(batch, in_features)``, ``y`` ``(batch,)``.
    """

    def __init__(self, net: nn.Module, likelihood: Likelihood, estimator: str = "score",
                 init_from_model: bool = True):
        super().__init__()
        if estimator not in GUIDE_ESTIMATORS:
            raise ValueError(f"estimator must be one of {GUIDE_ESTIMATORS}, got {estimator!r}")
        if not isinstance(likelihood, (Categorical, Gaussian)):
            raise TypeError(f"InferenceNetwork supports the Categorical and Gaussian "
                            f"likelihoods, got {type(likelihood).__name__}")
        layers = node_layers(net, "InferenceNetwork")
        readout = list(net.children())[-1]
        self.label_features = readout.out_features
        self.one_hot = isinstance(likelihood, Categorical)
        self.estimator = estimator
        self.__dict__["_likelihood"] = likelihood  # its plate only; not a submodule
        self.sites = [layer.site_name for layer in layers]
        self.__dict__["_factories"] = [layer._node_factory for layer in layers]
        self.maps = nn.ModuleList()
        for layer in layers:
            lin = nn.Linear(layer.in_features + self.label_features, layer.out_features)
            if init_from_model:
                with torch.no_grad():
                    lin.weight.zero_()
                    lin.weight[:, : layer.in_features].copy_(layer.weight)
                    lin.bias.copy_(layer.bias if layer.bias is not None else 0.0)
            self.maps.append(lin)
        # one input-dependent baseline per site for the score function (zero at the start)
        self.baselines = nn.ModuleList()
        if estimator == "score":
            for _ in layers:
                base = _Baseline(layers[0].in_features + self.label_features, 1)
                nn.init.zeros_(base.weight)
                nn.init.zeros_(base.bias)
                self.baselines.append(base)

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """The label features ``(batch, label_features)`` the guide conditions on."""
        if self.one_hot:
            return nn.functional.one_hot(y, self.label_features).to(
                self.maps[0].weight.dtype)
        return y.reshape(y.shape[0], -1).to(self.maps[0].weight.dtype)

    def node(self, index: int, energy: torch.Tensor) -> CGNode:
        """The node distribution of the guide's ``index``-th site given its energy."""
        node = self._factories[index](energy)
        est = None if self.estimator == "score" else self.estimator
        if isinstance(node, BinaryNode):
            return BinaryNode(energy, node.low, node.high, estimator=est)
        if isinstance(node, CategoricalNode):
            return CategoricalNode(energy, estimator=est)
        return node

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if y is None:
            raise ValueError("the inference network q(h | x, y) needs the labels y")
        lik = self._likelihood
        if x.dim() != 2 or y.shape[:1] != x.shape[:1]:
            raise ValueError(f"x must be (batch, features) and y (batch, ...) with the same "
                             f"batch, got {tuple(x.shape)} and {tuple(y.shape)}")
        label = self.encode(y)
        features = torch.cat([x, label], -1)
        h = x
        with lik.plate(x):
            for i, (name, lin) in enumerate(zip(self.sites, self.maps, strict=True)):
                node = self.node(i, lin(torch.cat([h, label], -1)))
                infer = {}
                if not node.has_rsample and self.baselines:
                    infer["baseline"] = {"nn_baseline": self.baselines[i],
                                         "nn_baseline_input": features.detach()}
                h = pyro.sample(name, site_distribution(node, 1, name), infer=infer)


class DifferentiableTraceGraph(TraceGraph_ELBO):
    """Pyro's ``TraceGraph_ELBO`` with a ``differentiable_loss``: a tensor whose value is
    the negative ELBO estimate and whose gradient is that of ``TraceGraph_ELBO``'s
    surrogate loss (score-function terms with Rao-Blackwellisation over the plates and the
    sites' baselines) — the gradient ``loss_and_grads`` back-propagates."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo, surrogate = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        return surrogate + (-elbo - surrogate).detach()


class AmortisedModel(CGModel):
    """A :class:`~pyrocg.infer.CGModel` whose hidden nodes are inferred by amortised VI:
    mode :class:`AmortisedVI`, guide an :class:`InferenceNetwork` (or ``guide``), objective
    ``TraceGraph_ELBO`` when the guide has discrete nodes scored by the score function, else
    ``Trace_ELBO``. Train it with :func:`~pyrocg.infer.fit` or Pyro's ``SVI`` on
    :meth:`model` and :attr:`guide` like any CGModel.

    :param net: a chain of Dense layers with nodes, ending in a linear read-out.
    :param likelihood: :class:`~pyrocg.infer.Categorical` or :class:`~pyrocg.infer.Gaussian`.
    :param prior: optional :class:`~pyrocg.modes.GaussianPrior` (weight decay on the net).
    :param num_particles: ELBO particles.
    :param estimator: the inference network's gradient estimator for discrete nodes.
    :param guide: a guide module ``guide(x, y)`` with one site per node layer (default: an
        :class:`InferenceNetwork`).
    """

    def __init__(self, net: nn.Module, likelihood: Likelihood,
                 prior: GaussianPrior | None = None, num_particles: int = 1,
                 estimator: str = "score", guide: nn.Module | None = None):
        super().__init__(net, likelihood, AmortisedVI(), prior, num_particles)
        if guide is not None and not isinstance(guide, nn.Module):
            raise TypeError(f"guide must be an nn.Module, got {type(guide).__name__}")
        self.guide = guide if guide is not None else InferenceNetwork(net, likelihood, estimator)
        discrete = any(layer._node_factory(torch.zeros(1, 2)).has_enumerate_support
                       for layer in node_layers(net))
        score = discrete and estimator == "score"
        self.elbo = (DifferentiableTraceGraph if score else Trace_ELBO)(num_particles=num_particles)


@dataclass
class ImportanceEstimate:
    """An importance-sampling estimate of ``log p(y_i | x_i)`` per datum.

    :ivar pointwise: ``(batch,)`` ``log (1/K sum_k w_ik)``.
    :ivar stderr: ``(batch,)`` its Monte-Carlo standard error (delta method,
        ``sd(w) / (sqrt(K) mean(w))``).
    :ivar ess: ``(batch,)`` effective sample size ``(sum w)^2 / sum w^2``.
    :ivar num_samples: ``K``.
    :ivar proposal: ``"guide"`` or ``"prior"``.
    """

    pointwise: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    num_samples: int
    proposal: str

    @property
    def mean(self) -> float:
        """The mean test log-likelihood per datum."""
        return float(self.pointwise.mean())

    @property
    def mean_stderr(self) -> float:
        """Monte-Carlo standard error of :attr:`mean` (independent across data)."""
        return float(self.stderr.pow(2).sum().sqrt() / self.stderr.numel())


def _in_data_plate(site: dict) -> bool:
    return any(f.name == "data" for f in site["cond_indep_stack"])


def _guide_log_weights(model: AmortisedModel, x: torch.Tensor, y: torch.Tensor,
                       k: int) -> torch.Tensor:
    """``log p(y, h | x) - log q(h | x, y)`` ``(k, batch)`` for ``k`` guide draws."""
    b = x.shape[0]
    xk = x.repeat((k,) + (1,) * (x.dim() - 1))
    yk = y.repeat((k,) + (1,) * (y.dim() - 1))
    with poutine.block():
        guide_tr = poutine.trace(model.guide).get_trace(xk, yk)
        model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(xk, yk)
    log_w = xk.new_zeros(k * b)
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        for site in tr.nodes.values():
            if site["type"] == "sample" and _in_data_plate(site):
                log_w = log_w + sign * site["fn"].log_prob(site["value"]).reshape(k * b)
    return log_w.reshape(k, b)


def _prior_log_weights(model: CGModel, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """``log p(y | h)`` ``(k, batch)`` for ``k`` ancestral draws of the nodes (point weights)."""
    with poutine.block(), handlers.pcff(1.0):
        out = model.likelihood.output(model.net, x.expand((k,) + x.shape))
    return model.likelihood.log_likelihood(out, y)


def marginal_log_likelihood(model: CGModel, x: torch.Tensor, y: torch.Tensor,
                            num_samples: int = 100, proposal: str | None = None,
                            chunk_size: int | None = None) -> ImportanceEstimate:
    """Importance-sampling estimate of the chain-graph marginal likelihood
    ``log p(y | x) = log E_q[p(y, h | x) / q(h | x, y)]`` of each datum.

    :param model: an :class:`AmortisedModel` (proposal ``"guide"``), or any
        :class:`~pyrocg.infer.CGModel` with point weights whose net is read as a stochastic
        network (proposal ``"prior"``: ancestral draws, weights ``p(y | h)``).
    :param x: inputs ``(batch, in_features)``.
    :param y: targets ``(batch,)``.
    :param num_samples: ``K`` proposals per datum.
    :param proposal: ``"guide"`` or ``"prior"`` (default: the guide where there is one).
    :param chunk_size: proposals per vectorised pass (default: all at once up to 2**22
        values).
    :returns: an :class:`ImportanceEstimate` (estimates are lower bounds in expectation,
        consistent as ``K`` grows).
    """
    if not isinstance(model, CGModel):
        raise TypeError(f"model must be a CGModel, got {type(model).__name__}")
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() < 2 or y.shape[:1] != x.shape[:1] or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty (batch, ...) and y (batch, ...) with the same "
                         f"batch, got {tuple(x.shape)} and {tuple(y.shape)}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    has_guide = isinstance(model, AmortisedModel)
    proposal = proposal or ("guide" if has_guide else "prior")
    if proposal not in ("guide", "prior"):
        raise ValueError(f"proposal must be 'guide' or 'prior', got {proposal!r}")
    if proposal == "guide" and not has_guide:
        raise ValueError("proposal='guide' needs an AmortisedModel (a guide over the nodes); "
                         "use proposal='prior' for this model")
    if model.mode.random_weights:
        raise ValueError("marginal_log_likelihood takes models with point weights")
    if chunk_size is None:
        width = max(m.out_features for m in model.net.modules() if isinstance(m, Dense))
        chunk_size = max(1, min(num_samples, 2**22 // max(1, x.shape[0] * width)))
    weights = _guide_log_weights if proposal == "guide" else _prior_log_weights
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            log_w = torch.cat([weights(model, x, y, min(chunk_size, num_samples - i))
                               for i in range(0, num_samples, chunk_size)])
    finally:
        model.train(was_training)
    k = num_samples
    top = log_w.amax(0)
    w = (log_w - top).exp()
    mean = w.mean(0)
    sd = w.std(0, unbiased=True) if k > 1 else torch.zeros_like(mean)
    return ImportanceEstimate(
        pointwise=top + mean.log(),
        stderr=sd / (math.sqrt(k) * mean),
        ess=w.sum(0).pow(2) / w.pow(2).sum(0),
        num_samples=k,
        proposal=proposal,
    )
