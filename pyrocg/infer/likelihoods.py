"""Likelihoods: the observed output site of a network, and pointwise log-likelihoods."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import nn

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

__all__ = [
    "Likelihood",
    "Categorical",
    "Gaussian",
    "ChainCRFLikelihood",
    "MultiLabelCRFLikelihood",
    "GridCRFLikelihood",
]


class Likelihood(nn.Module):
    """Turns network outputs into the distribution of the observed label site ``"y"``.

    :param dataset_size: number of training data; the data plate rescales a mini-batch's
        log-likelihood by ``dataset_size / batch``.

    Subclasses give :meth:`dist` of the network output; :meth:`model` is the observed site.

    >>> import pyro, torch
    >>> from pyrocg import infer
    >>> lik = infer.Categorical(dataset_size=100)
    >>> logits, y = torch.randn(5, 3), torch.randint(0, 3, (5,))  # (batch, classes), (batch,)
    >>> with pyro.poutine.trace() as tr:
    ...     _ = lik.model(lambda x: x, logits, y)
    >>> tr.trace.nodes["y"]["is_observed"], tr.trace.nodes["y"]["scale"]  # 100 / 5
    (True, 20.0)
    """

    site = "y"

    def __init__(self, dataset_size: int):
        super().__init__()
        if not isinstance(dataset_size, int) or dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
        self.dataset_size = dataset_size

    def dist(self, output: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def check_target(self, output: torch.Tensor, y: torch.Tensor) -> None:
        """Raise a clear error if targets ``y`` do not fit the network's ``output``."""

    def plate(self, x: torch.Tensor) -> pyro.plate:
        """The data plate (dim -1) of a mini-batch ``x`` drawn from the data set: it rescales
        log-densities inside it by ``dataset_size / batch``."""
        idx = torch.arange(x.shape[0], device=x.device)
        return pyro.plate("data", self.dataset_size, subsample=idx, dim=-1)

    def forward(self, output: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Emit the label site ``y``; call inside :meth:`plate`."""
        if y is not None:
            self.check_target(output, y)
        return pyro.sample(self.site, self.dist(output), obs=y)

    def output(self, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The network's output for inputs ``x`` (``run`` applies the network)."""
        return run(x)

    def model(
        self, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        """Run the network and observe ``y``, with the plates this likelihood needs: here all
        node sites and the label site share one data plate."""
        with self.plate(x):
            out = self.output(run, x)
            self(out, y)
        return out

    def log_likelihood(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Pointwise ``log p(y_i | output_i)``, shape ``output.shape[:-1]``."""
        self.check_target(output, y)
        return self.dist(output).log_prob(y)


class Categorical(Likelihood):
    """Categorical likelihood on logits ``(..., batch, classes)``; labels ``(batch,)`` int64.

    >>> import torch
    >>> from pyrocg import infer, models
    >>> model = infer.CGModel(models.mlp(4, [8], 3), infer.Categorical(100))
    >>> x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    >>> model.loss(x, y).shape  # the negative ELBO per datum, a scalar
    torch.Size([])
    """

    def dist(self, output):
        # Targets are checked by check_target; NaN logits must surface as a NaN loss (which
        # the training loop reports), not as a validation error deep inside torch.
        return dist.Categorical(logits=output, validate_args=False)

    def check_target(self, output, y):
        if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32):
            got = getattr(y, "dtype", type(y))
            raise TypeError(f"labels y must be an int64 tensor, got {got}")
        if y.shape != output.shape[-2:-1]:
            raise ValueError(
                f"labels y must have shape (batch,) = {tuple(output.shape[-2:-1])}, "
                f"got {tuple(y.shape)}"
            )
        k = output.shape[-1]
        if y.numel():
            low, high = (int(v) for v in y.aminmax())
            if low < 0 or high >= k:
                raise ValueError(
                    f"labels y must be in [0, {k}) for {k} classes, got range [{low}, {high}]")

    def log_likelihood(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # What dist(output).log_prob(y) computes, without building the distribution (this
        # runs on every training step of the closed-form objective).
        self.check_target(output, y)
        logp = output - output.logsumexp(-1, keepdim=True)
        index = y.long().expand(output.shape[:-1]).unsqueeze(-1)
        return logp.gather(-1, index).squeeze(-1)

    def probs(self, output: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(..., batch, classes)``."""
        return torch.softmax(output, -1)


class Gaussian(Likelihood):
    """Homoscedastic Gaussian likelihood ``y ~ N(output[..., 0], scale^2)`` for regression.

    :param scale: observation noise std (learned when ``learn_scale``).
    :param learn_scale: learn ``scale``; ``False`` keeps it fixed (a buffer). A fixed
        ``scale=1`` makes the per-datum objective half the squared error (plus a constant);
        :meth:`from_precision` fixes a model precision ``tau`` on the original target scale.

    Output ``(batch, 1)`` (the mean); targets ``(batch,)`` float.

    >>> import torch
    >>> from pyrocg import infer, models
    >>> lik = infer.Gaussian(100, scale=0.5)
    >>> model = infer.CGModel(models.mlp(4, [8], 1), lik)
    >>> round(lik.scale.item(), 3)
    0.5
    >>> model.loss(torch.randn(5, 4), torch.randn(5)).shape
    torch.Size([])
    """

    def __init__(self, dataset_size: int, scale: float = 1.0, learn_scale: bool = True):
        super().__init__(dataset_size)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        log_scale = torch.tensor(float(scale)).log()
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @classmethod
    def from_precision(cls, dataset_size: int, tau: float,
                       target_std: float | None = None) -> Gaussian:
        """The fixed (not learned) noise of model precision ``tau`` on the *original* target
        scale, ``y ~ N(f(x), 1/tau)``, for a network trained on targets standardised by
        ``target_std`` (:attr:`~pyrocg.data.DataSplits.target_std`; ``None``: targets in
        original units): the noise std in the network's units is
        ``1 / (sqrt(tau) * target_std)``.

        :func:`~pyrocg.infer.predict`'s ``variance`` is then in standardised units (times
        ``target_std**2``: ``1/tau`` plus the spread of the passes' means), and its
        ``pointwise_log_lik`` of standardised targets is Gal & Ghahramani's test
        log-likelihood (:func:`pyrocg.metrics.mc_gaussian_log_likelihood`) plus
        ``log(target_std)`` (the change of units).

        :param dataset_size: number of training data.
        :param tau: precision ``tau > 0`` on the original scale.
        :param target_std: standard deviation the targets were divided by.

        >>> lik = Gaussian.from_precision(100, tau=4.0, target_std=0.5)
        >>> float(lik.scale), lik.log_scale.requires_grad
        (1.0, False)
        """
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < math.inf:
            raise ValueError(f"tau must be a positive finite number, got {tau!r}")
        std = 1.0 if target_std is None else target_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < math.inf:
            raise ValueError(f"target_std must be a positive finite number, got {target_std!r}")
        return cls(dataset_size, 1.0 / (math.sqrt(tau) * std), learn_scale=False)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def dist(self, output):
        return dist.Normal(output[..., 0], self.scale, validate_args=False)

    def log_likelihood(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Normal.log_prob's formula, without building the distribution (see Categorical).
        self.check_target(output, y)
        log_scale = self.log_scale
        z = (y - output[..., 0]) * torch.exp(-log_scale)
        return z.square().mul_(-0.5).sub_(log_scale + _HALF_LOG_2PI)

    def check_target(self, output, y):
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            got = getattr(y, "dtype", type(y))
            raise TypeError(f"regression targets y must be a float tensor, got {got}")
        if output.shape[-1] != 1:
            raise ValueError(
                f"Gaussian likelihood needs outputs (..., batch, 1), got {tuple(output.shape)}"
            )
        if y.shape != output.shape[-2:-1]:
            raise ValueError(
                f"targets y must have shape {tuple(output.shape[-2:-1])}, got {tuple(y.shape)}"
            )


# The structured likelihoods live with their models in pyrocg.structured; imported last (they
# subclass Likelihood above).
from ..structured.likelihoods import (  # noqa: E402
    ChainCRFLikelihood,
    GridCRFLikelihood,
    MultiLabelCRFLikelihood,
)
