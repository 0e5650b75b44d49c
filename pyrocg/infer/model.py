"""A chain-graph network, its likelihood, prior, mode and guide combined into a Pyro model."""

from __future__ import annotations

import contextlib
from numbers import Real

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from torch import nn
from torch.func import functional_call

from ..layers.reparam import local_reparam
from .guides import MeanFieldNormalGuide
from .likelihoods import Likelihood
from .modes import get_mode
from .priors import GaussianPrior

__all__ = ["CGModel"]


class CGModel(nn.Module):
    """Network + likelihood + prior + mode (+ guide for Bayesian weights), TyXe-style.

    :param net: a chain-graph network (e.g. :func:`pyrocg.models.mlp`).
    :param likelihood: a :class:`~pyrocg.infer.likelihoods.Likelihood`.
    :param mode: ``"feedforward"``, ``"pcff"``, ``"dropout"``, ``"mc-dropout"``, ``"bayes"``
        or ``"pcff-sampling"`` (see :data:`pyrocg.infer.modes.MODES`).
    :param rate: PCFF sampling rate (``pcff`` modes).
    :param prior: a :class:`GaussianPrior`: weight decay for point-estimate modes, the prior
        of the weights for ``"bayes"`` (default ``GaussianPrior(1.0)`` there).
    :param guide_init_scale: initial std of the mean-field Normal guide (``"bayes"``).
    :param local_reparam: ``"bayes"`` only: sample each datum's energies instead of one weight
        draw per mini-batch (:mod:`pyrocg.layers.reparam`), with the KL term in closed
        form; lower-variance gradients, and prediction runs all passes at once.

    The objective (:meth:`loss`) is the negative ELBO divided by the data set size, so
    learning rates mean what they mean in plain PyTorch.
    """

    def __init__(
        self,
        net: nn.Module,
        likelihood: Likelihood,
        mode: str = "feedforward",
        rate: float = 0.5,
        prior: GaussianPrior | None = None,
        guide_init_scale: float = 0.01,
        num_particles: int = 1,
        local_reparam: bool = False,
    ):
        super().__init__()
        if not isinstance(likelihood, Likelihood):
            raise TypeError(
                f"likelihood must be a pyrocg Likelihood, got {type(likelihood).__name__}"
            )
        if isinstance(rate, bool) or not isinstance(rate, Real) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
        self.mode = get_mode(mode)
        self.rate = float(rate)
        self.net, self.likelihood = net, likelihood
        self.prior = prior
        self.elbo = Trace_ELBO(num_particles=num_particles)
        if local_reparam and not self.mode.bayesian:
            raise ValueError(f"local_reparam=True needs mode='bayes', got mode={mode!r}")
        self.local_reparam = bool(local_reparam)
        if self.mode.bayesian:
            self.prior = prior or GaussianPrior(1.0)
            self.guide = MeanFieldNormalGuide(net, self.prior.names(net), guide_init_scale)
            if self.local_reparam:
                self.guide.gaussian_weights(net)  # fails now, not mid-training, if unsupported
        else:
            self.guide = None

    def _weights_context(self):
        if self.local_reparam:
            return local_reparam(self.guide.gaussian_weights(self.net))
        return contextlib.nullcontext()

    @property
    def dataset_size(self) -> int:
        return self.likelihood.dataset_size

    def _run(self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if weights:
            return functional_call(self.net, weights, (x,), strict=False)
        return self.net(x)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The Pyro model of a training pass: weights (random, or a MAP prior factor), the
        network under the mode's training handler and the observed labels, all node sites
        inside the data plate."""
        weights = None
        if self.local_reparam:
            # Analytic -KL(q || p): the weights are never drawn, each datum's energies are.
            pyro.factor("weights_kl", -self.guide.kl(self.prior.scale))
        elif self.mode.bayesian:
            weights = self.prior.sample(self.net)  # global sites, outside the data plate
        elif self.prior is not None:
            pyro.factor("weight_prior", self.prior.log_prob(self.net))

        def run(inputs):
            with self.mode.train(self.rate), self._weights_context():
                return self._run(inputs, weights)

        return self.likelihood.model(run, x, y)

    def _guide(self, x, y=None):
        if self.guide is not None and not self.local_reparam:
            self.guide(x, y)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Differentiable negative ELBO per datum of the data set, on a mini-batch."""
        scale = 1.0 / self.dataset_size
        return self.elbo.differentiable_loss(
            poutine.scale(self.model, scale), poutine.scale(self._guide, scale), x, y
        )

    def initialize(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Hook for lazily built parameters (none at present): call with a first batch."""

    def sample_weights(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """One draw of the random weights from the guide (``None`` for point weights)."""
        if self.guide is None or self.local_reparam:
            return None
        with poutine.block():
            return self.guide(x)

    def forward_predict(
        self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """One prediction pass (any leading sample dims of ``x`` are vectorised passes)."""
        with self.mode.predict(self.rate), self._weights_context():
            return self.likelihood.output(lambda inputs: self._run(inputs, weights), x)
