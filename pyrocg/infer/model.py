"""A chain-graph network, its likelihood, prior, mode and guide combined into a Pyro model."""

from __future__ import annotations

from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.runtime import am_i_wrapped
from torch import nn

from ..modes import GaussianPrior, Mode, WeightDraw, get_mode
from .likelihoods import Likelihood

__all__ = ["CGModel"]


class CGModel(nn.Module):
    """Network + likelihood + prior + mode (+ the mode's guide), TyXe-style.

    :meth:`model` and :attr:`guide` are an ordinary Pyro model and guide:
    ``pyro.infer.SVI(cg.model, cg.guide, optim, Trace_ELBO())`` optimises the same ELBO as
    :func:`~pyrocg.infer.fit` (whose :meth:`loss` is the negative ELBO divided by the data set
    size, so learning rates mean what they mean in plain PyTorch).

    :param net: a chain-graph network (e.g. :func:`pyrocg.models.mlp`).
    :param likelihood: a :class:`~pyrocg.infer.likelihoods.Likelihood`.
    :param mode: a :class:`~pyrocg.modes.Mode` (``modes.PCFF(0.3)``,
        ``modes.BayesianWeights(guide=AutoNormal)``, ...) or its shorthand (``"pcff"``, ...;
        see :func:`pyrocg.modes.get_mode`), checked against ``net``.
    :param prior: a :class:`~pyrocg.modes.GaussianPrior`: weight decay for point-estimate
        modes, the prior of the weights for :class:`~pyrocg.modes.BayesianWeights` (default
        ``GaussianPrior(1.0)`` there).
    :param num_particles: particles of the ELBO estimate.
    :param mode_params: parameters of a shorthand ``mode`` (e.g. ``rate=0.3`` for ``"pcff"``,
        ``local_reparam=True``, ``guide=...`` for ``"bayes"``).

    :ivar guide: the Pyro guide, a module: empty for point-estimate modes, over the weights
        for Bayesian ones.

    >>> import pyro, torch
    >>> from pyrocg import infer, models, modes
    >>> net = models.mlp(4, [8], 3, dropout=0.2)
    >>> model = infer.CGModel(net, infer.Categorical(100), modes.MCDropout())
    >>> x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))  # (batch, features), (batch,)
    >>> model.loss(x, y).shape  # negative ELBO / dataset size
    torch.Size([])
    >>> svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}),
    ...                      pyro.infer.Trace_ELBO())
    >>> loss = svi.step(x, y)  # the same objective, times the dataset size
    """

    def __init__(
        self,
        net: nn.Module,
        likelihood: Likelihood,
        mode: Mode | str = "feedforward",
        prior: GaussianPrior | None = None,
        num_particles: int = 1,
        **mode_params: Any,
    ):
        super().__init__()
        if not isinstance(likelihood, Likelihood):
            raise TypeError(
                f"likelihood must be a pyrocg Likelihood, got {type(likelihood).__name__}"
            )
        if prior is not None and not isinstance(prior, GaussianPrior):
            raise TypeError(f"prior must be a GaussianPrior or None, got {type(prior).__name__}")
        self.mode = get_mode(mode, **mode_params)
        self.mode.check(net)
        self.net, self.likelihood = net, likelihood
        self.prior = self.mode.resolve_prior(prior)
        self.guide = self.mode.build_guide(net, self.prior)
        self.elbo = Trace_ELBO(num_particles=num_particles)

    @property
    def dataset_size(self) -> int:
        return self.likelihood.dataset_size

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The Pyro model of a training pass: weights (random, or a MAP prior factor), the
        network under the mode's training handler and the observed labels, all node sites
        inside the data plate."""
        draw = self.mode.weight_model(self.net, self.prior, self.guide)

        def run(inputs):
            with self.mode.train_handler():
                return draw(self.net, inputs)

        return self.likelihood.model(run, x, y)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Differentiable negative ELBO per datum of the data set, on a mini-batch.

        When the mode gives its weight terms without Pyro
        (:meth:`~pyrocg.modes.Mode.closed_form_weights`: point weights, or Bayesian weights
        under pyrocg's own mean-field guides), the likelihood is the standard one and no Pyro
        handler is active, the loss is computed directly — the same value, gradients and
        random draws as :meth:`pyro_loss`, without tracing the model on every step.
        Otherwise (autoguides, structured likelihoods, several particles, an active handler,
        ``PyroSample`` priors on the net) it is :meth:`pyro_loss`.
        """
        if self._closed_form and not am_i_wrapped():
            terms = self.mode.closed_form_weights(self.net, self.prior, self.guide)
            if terms is not None:
                return self._closed_form_loss(x, y, *terms)
        return self.pyro_loss(x, y)

    def pyro_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`loss` through Pyro's ``Trace_ELBO`` on :meth:`model` and :attr:`guide` (the
        reference, and the path for every mode)."""
        scale = 1.0 / self.dataset_size
        return self.elbo.differentiable_loss(
            poutine.scale(self.model, scale), poutine.scale(self.guide, scale), x, y
        )

    @property
    def _closed_form(self) -> bool:
        # PyroSample priors put on the net by hand are latent sites of the model: Pyro's path.
        modules = self.__dict__.get("_module_list")
        if modules is None:  # the net's modules, listed once (walking them costs per step)
            modules = self.__dict__["_module_list"] = list(self.net.modules())
        return (self.elbo.num_particles == 1
                and type(self.likelihood).model is Likelihood.model
                and not any(m.__dict__.get("_pyro_samples") for m in modules))

    def _closed_form_loss(self, x: torch.Tensor, y: torch.Tensor, draw: WeightDraw,
                          log_ratio: torch.Tensor | float) -> torch.Tensor:
        # The ELBO's terms: the labels' log-likelihood, scaled by the data plate (N / batch),
        # and log p(w) - log q(w) of the weights; node sites add nothing.
        with self.mode.train_handler().deciding():
            output = self.likelihood.output(lambda inputs: draw(self.net, inputs), x)
        log_lik = self.likelihood.log_likelihood(output, y).sum()
        n = self.dataset_size
        # -(log_lik * n / batch + log_ratio) / n, in as few autograd nodes as it takes.
        if isinstance(log_ratio, torch.Tensor):
            return torch.add(log_ratio * (-1.0 / n), log_lik, alpha=-1.0 / x.shape[0])
        return log_lik * (-1.0 / x.shape[0]) - log_ratio / n

    def initialize(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Create lazily built parameters (an autoguide's) by running the guide once on a
        first batch; the random number generators are left as they were."""
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), poutine.block():
            self.guide(x, y)

    def sample_weights(self, x: torch.Tensor) -> WeightDraw:
        """The weights of one prediction pass (a draw from the guide for random weights)."""
        return self.mode.predict_weights(self.net, self.guide, x)

    def forward_predict(self, x: torch.Tensor, weights: WeightDraw | None = None) -> torch.Tensor:
        """One prediction pass (any leading sample dims of ``x`` are vectorised passes).

        :param weights: the weights to use (default: :meth:`sample_weights`).
        """
        draw = self.sample_weights(x) if weights is None else weights
        with self.mode.predict_handler():
            return self.likelihood.output(lambda inputs: draw(self.net, inputs), x)
