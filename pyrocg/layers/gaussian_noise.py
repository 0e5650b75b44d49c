"""Multiplicative Gaussian noise (Gaussian dropout) as an auxiliary node layer.

The Bayesian view of stochastic regularisation (Srivastava et al. 2014; Kingma, Salimans &
Welling 2015) puts multiplicative Gaussian noise ``xi_j ~ N(1, alpha)`` beside Bernoulli
dropout: the next layer's energy is ``e_i = b_i + sum_j xi_j w_ji T(x_j)``. Its mean is 1,
so marginalising the node (feed-forward prediction) leaves the network unchanged, and
``alpha = p / (1 - p)`` matches the variance of inverted dropout of probability ``p``.

The site has the role of a dropout node (:data:`~pyrocg.layers.DROPOUT_ROLE`): every mode
handler treats it as it treats dropout — :func:`~pyrocg.handlers.mc_dropout` samples it,
:func:`~pyrocg.handlers.feedforward` and :func:`~pyrocg.handlers.marginalize_dropout` put
it at its mean, PCFF leaves it at its mean — so the dropout modes (``Dropout``,
``MCDropout``) train and predict Gaussian-dropout networks as they do Bernoulli ones.

>>> import torch, pyro
>>> from pyrocg import handlers
>>> layer = GaussianDropout(alpha=0.25)
>>> x = torch.ones(2, 3)
>>> with handlers.feedforward():
...     bool(torch.equal(layer(x), x))        # marginalised: the mean, 1
True
>>> with pyro.poutine.trace() as tr, handlers.mc_dropout():
...     y = layer(x)                           # sampled: x * N(1, 0.25)
>>> type(tr.trace.nodes["gaussian_dropout"]["fn"].base_dist.base_dist).__name__
'GaussianNoiseNode'
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule
from torch.distributions import constraints

from ..nodes import CGNode
from .base import DROPOUT_ROLE, sample_site

__all__ = ["GaussianNoiseNode", "GaussianDropout"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class GaussianNoiseNode(CGNode):
    """The multiplicative noise node ``xi ~ N(1, alpha)`` (``alpha`` is the *variance*).

    Its feed-forward statistic and mean are exactly 1; draws are reparametrised
    (``1 + sqrt(alpha) * eps``), so gradients reach ``alpha`` when it is a learned tensor.

    :param like: a tensor of the noise's shape, dtype and device (the layer's input).
    :param alpha: the variance, a non-negative number or a tensor broadcasting to
        ``like.shape`` (e.g. one per unit).

    >>> node = GaussianNoiseNode(torch.zeros(2, 3), 0.5)
    >>> node.mean.shape, float(node.variance[0, 0])
    (torch.Size([2, 3]), 0.5)
    """

    has_rsample = True
    support = constraints.real

    def __init__(self, like: torch.Tensor, alpha: float | torch.Tensor,
                 validate_args: bool | None = None):
        if not isinstance(like, torch.Tensor) or not like.is_floating_point():
            raise TypeError("like must be a floating-point torch.Tensor")
        if isinstance(alpha, torch.Tensor):
            try:
                fits = torch.broadcast_shapes(alpha.shape, like.shape) == like.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(f"alpha of shape {tuple(alpha.shape)} does not broadcast to "
                                 f"the noise shape {tuple(like.shape)}")
        elif isinstance(alpha, bool) or not isinstance(alpha, Real) or not alpha >= 0:
            raise ValueError(f"alpha must be a non-negative number or a tensor, got {alpha!r}")
        self._like, self.alpha, self._ones = like, alpha, None
        super().__init__(like.shape, validate_args=False)
        self._validate_args = validate_args

    @property
    def energy(self) -> torch.Tensor:
        """The location, 1 expanded (the same tensor each time it is asked for)."""
        if self._ones is None:
            self._ones = self._like.new_ones(()).expand(self.batch_shape)
        return self._ones

    @property
    def std(self) -> torch.Tensor:
        """``sqrt(alpha)``, as a tensor broadcasting to the batch shape."""
        a = self.alpha
        if isinstance(a, torch.Tensor):
            return a.sqrt()
        return self._like.new_full((), math.sqrt(a))

    @property
    def feedforward(self) -> torch.Tensor:
        return self.energy

    @property
    def mean(self) -> torch.Tensor:
        return self.energy

    @property
    def variance(self) -> torch.Tensor:
        a = self.alpha
        a = a.to(self._like.dtype) if isinstance(a, torch.Tensor) else self._like.new_full((), a)
        return a.expand(self.batch_shape)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GaussianNoiseNode, _instance)
        batch_shape = torch.Size(batch_shape)
        new._like = self._like.expand(batch_shape)
        new.alpha, new._ones = self.alpha, None
        TorchDistribution.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self._like.dtype, device=self._like.device)
        return 1.0 + self.std * eps

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_where(self, mask: torch.Tensor) -> torch.Tensor:
        eps = torch.randn(mask.shape, dtype=self._like.dtype, device=self._like.device)
        return 1.0 + self.std * eps * mask

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        std = self.std
        z = (value - 1.0) / std
        return -0.5 * z * z - torch.log(std) - _LOG_SQRT_2PI

    def entropy(self) -> torch.Tensor:
        return (0.5 + _LOG_SQRT_2PI + torch.log(self.std)).expand(self.batch_shape)


class GaussianDropout(PyroModule):
    """Gaussian dropout: auxiliary nodes ``xi_j ~ N(1, alpha)`` multiplying the previous
    layer's statistic (:class:`GaussianNoiseNode`), one per element of the input.

    :param alpha: the noise variance ``>= 0``; ``0`` emits no site. A number, or a 1-D
        sequence/tensor with one variance per unit of the last dimension.
    :param unit_dims: trailing dimensions of the input that are units (event dims of the
        site): 1 after dense layers, 3 after convolutions ``(C, H, W)``.

    Input and output ``(*sample, batch, *units)``; the site has the input's shape.

    >>> GaussianDropout.from_p(0.5).alpha       # the variance of dropout with p = 0.5
    1.0
    """

    def __init__(self, alpha: float | torch.Tensor = 1.0, unit_dims: int = 1):
        super().__init__()
        if isinstance(alpha, (list, tuple)):
            alpha = torch.tensor(alpha, dtype=torch.get_default_dtype())
        if isinstance(alpha, torch.Tensor):
            if alpha.dim() != 1 or not alpha.is_floating_point() or not bool((alpha >= 0).all()):
                raise ValueError("a tensor alpha must be 1-D (one variance per unit), "
                                 "floating point and non-negative")
            self.register_buffer("_alpha", alpha.detach().clone())
        elif isinstance(alpha, bool) or not isinstance(alpha, Real) or not (
                math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        else:
            self._alpha = float(alpha)
        if isinstance(unit_dims, bool) or not isinstance(unit_dims, int) or unit_dims < 1:
            raise ValueError(f"unit_dims must be a positive int, got {unit_dims!r}")
        self.unit_dims = unit_dims

    @classmethod
    def from_p(cls, p: float, unit_dims: int = 1) -> GaussianDropout:
        """The Gaussian dropout with the variance of dropout of probability ``p`` in
        ``[0, 1)``: ``alpha = p / (1 - p)``."""
        if isinstance(p, bool) or not isinstance(p, Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p!r}")
        return cls(p / (1.0 - p), unit_dims)

    @property
    def alpha(self) -> float | torch.Tensor:
        """The noise variance (a number, or one per unit)."""
        return self._alpha

    @property
    def p(self) -> float:
        """The dropout probability of the same variance, ``alpha / (1 + alpha)`` (the
        largest over units for per-unit variances); ``0`` means no noise."""
        a = self._alpha
        a = float(a.max()) if isinstance(a, torch.Tensor) else a
        return a / (1.0 + a)

    @property
    def site_name(self) -> str:
        return self._pyro_name or "gaussian_dropout"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{self.site_name}: input must be a floating-point tensor")
        if x.dim() < self.unit_dims:
            raise ValueError(f"{self.site_name}: input needs at least {self.unit_dims} dims, "
                             f"got shape {tuple(x.shape)}")
        if self.p == 0.0:
            return x
        alpha = self._alpha
        if isinstance(alpha, torch.Tensor):
            if alpha.shape[0] != x.shape[-1]:
                raise ValueError(f"{self.site_name}: {alpha.shape[0]} variances for "
                                 f"{x.shape[-1]} units")
            alpha = alpha.to(x.dtype)
        node = GaussianNoiseNode(x, alpha)
        # Not enumerable (continuous): the site is the node with the units as event dims.
        noise = sample_site(self.site_name, node, self.unit_dims, DROPOUT_ROLE, enumerable=False)
        if noise is node.energy:
            return x  # marginalised: the mean, 1
        return x * noise

    def extra_repr(self) -> str:
        a = self._alpha
        return f"alpha={a if not isinstance(a, torch.Tensor) else tuple(a.shape)}"
