"""Rectified-Gaussian node families: ``X = max(Y, eps * Y)``, ``Y ~ N(e, s^2)``.

``eps = 0`` is the rectified Gaussian (a point mass at 0 plus a Gaussian density on
``x > 0``); ``0 < eps < 1`` the leaky variant (a change of variables, no atom); ``eps = 1``
the Gaussian. The choice of ``s`` gives the familiar activations as feed-forward statistics:
softplus (``s = 1.776``, the minimax constant), ReLU (``s = |tanh(e)|``), leaky ReLU, identity.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch.distributions import constraints

from .base import CGNode, apply_once, check_energy

__all__ = [
    "RectifiedGaussianNode",
    "ReLUNode",
    "SoftplusNode",
    "LeakyReLUNode",
    "GaussianNode",
    "SOFTPLUS_SCALE",
]

#: The constant std for which the rectified-Gaussian mean is closest to softplus (minimax).
SOFTPLUS_SCALE = 1.776
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# A ReLU node's scale |tanh(e)| vanishes at e = 0; this floor keeps the density finite.
_MIN_SCALE = 1e-6


def _abs_tanh(energy: torch.Tensor) -> torch.Tensor:
    # tanh(e) = 2 sigmoid(2e) - 1: torch's CPU tanh costs ~3x its sigmoid, forward and
    # backward, and this scale is on the PCFF hot path. Absolute error <= 2e-7.
    return torch.sigmoid(2 * energy).mul(2).sub(1).abs()


class _PartialReLUDraw(torch.autograd.Function):
    """``relu(e + |tanh e| * noise)`` with a hand-written backward.

    The ReLU node's partially collapsed draw (``noise`` is zero where the feed-forward value
    is kept). Written through autograd it is a dozen element-wise passes forward and as many
    backward over every node of the layer; here the forward is six in-place passes and the
    backward three, using ``d/de |tanh e| = sign(e) (1 - tanh^2 e)``.
    """

    @staticmethod
    def forward(ctx, energy: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = apply_once(_tanh, energy)
        out = t.abs().mul_(noise).add_(energy).relu_()
        if ctx.needs_input_grad[0]:
            # 1 + noise * sign(t) * (1 - t^2) = 1 + noise * (sign(t) - t |t|)
            slope = torch.addcmul(t.sign(), t, t.abs(), value=-1).mul_(noise).add_(1)
            ctx.save_for_backward(slope, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        slope, out = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0).mul_(slope), None


def _tanh(energy: torch.Tensor) -> torch.Tensor:
    # tanh(e) = 2 sigmoid(2e) - 1 (see _abs_tanh), in place after the first pass.
    return torch.sigmoid(2 * energy).mul_(2).sub_(1)


def _normal_log_pdf(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    z = (x - loc) / scale
    return -0.5 * z * z - torch.log(scale) - _LOG_SQRT_2PI


class RectifiedGaussianNode(CGNode):
    r"""``X = max(Y, eps * Y)`` with ``Y ~ Normal(energy, scale)``.

    :param energy: energies, any shape (the batch shape).
    :param scale: standard deviation of ``Y``: a positive number or a tensor broadcastable
        to ``energy``.
    :param negative_slope: ``eps`` in ``[0, 1]``.

    The exact mean (``eps = 0``) is ``e Phi(e/s) + s phi(e/s)``; :attr:`feedforward` of this
    general class is that exact mean, the subclasses replace it by the closed-form activation.

    >>> node = RectifiedGaussianNode(torch.tensor([-1.0, 0.0, 2.0]), scale=1.0)
    >>> node.mean
    tensor([0.0833, 0.3989, 2.0085])
    >>> round(float(node.log_prob(torch.tensor(0.0))[0].exp()), 4)  # atom at 0: Phi(1)
    0.8413
    """

    has_rsample = True

    def __init__(
        self,
        energy: torch.Tensor,
        scale: float | torch.Tensor = 1.0,
        negative_slope: float = 0.0,
        validate_args: bool | None = None,
    ):
        check_energy(energy)
        if not isinstance(negative_slope, Real) or not 0.0 <= negative_slope <= 1.0:
            raise ValueError(f"negative_slope must be a number in [0, 1], got {negative_slope!r}")
        if callable(scale) and not isinstance(scale, torch.Tensor):
            # A scale that is a function of the energy (ReLU: |tanh(e)|), computed only when
            # sampling or scoring needs it, never in the feed-forward pass.
            batch_shape = energy.shape
        elif isinstance(scale, torch.Tensor):
            if not scale.is_floating_point():
                raise TypeError(f"scale must be a floating-point tensor, got dtype {scale.dtype}")
            try:
                torch.broadcast_shapes(scale.shape, energy.shape)
            except RuntimeError:
                raise ValueError(
                    f"scale of shape {tuple(scale.shape)} does not broadcast to energy of "
                    f"shape {tuple(energy.shape)}"
                ) from None
            batch_shape = torch.broadcast_shapes(scale.shape, energy.shape)
        elif isinstance(scale, Real):
            if not scale > 0:
                raise ValueError(f"scale must be positive, got {scale}")
            batch_shape = energy.shape
        else:
            raise TypeError(f"scale must be a number or a tensor, got {type(scale).__name__}")
        self.energy = energy
        self._scale = scale
        self.negative_slope = float(negative_slope)
        super().__init__(batch_shape, validate_args=validate_args)
        if self._validate_args and isinstance(scale, torch.Tensor) and not (scale >= 0).all():
            raise ValueError("scale must be non-negative")

    @property
    def scale(self) -> torch.Tensor:
        s = self._scale
        if callable(s) and not isinstance(s, torch.Tensor):
            s = s(self.energy)
        elif not isinstance(s, torch.Tensor):
            s = torch.full((), s, dtype=self.energy.dtype, device=self.energy.device)
        return s.clamp_min(_MIN_SCALE).expand(self.batch_shape)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.nonnegative if self.negative_slope == 0 else constraints.real

    @property
    def feedforward(self) -> torch.Tensor:
        return self.mean

    @property
    def mean(self) -> torch.Tensor:
        e, s = self.energy, self.scale
        z = e / s
        cdf, pdf = torch.special.ndtr(z), torch.exp(-0.5 * z * z - _LOG_SQRT_2PI)
        pos = e * cdf + s * pdf  # E[Y 1{Y>0}]
        if self.negative_slope == 0:
            return pos
        return pos + self.negative_slope * (e - pos)  # E[Y 1{Y<0}] = e - E[Y 1{Y>0}]

    @property
    def variance(self) -> torch.Tensor:
        e, s, k = self.energy, self.scale, self.negative_slope
        z = e / s
        cdf, pdf = torch.special.ndtr(z), torch.exp(-0.5 * z * z - _LOG_SQRT_2PI)
        second_pos = (e * e + s * s) * cdf + e * s * pdf  # E[Y^2 1{Y>0}]
        second = second_pos + k * k * (e * e + s * s - second_pos)
        return (second - self.mean**2).clamp_min(0)

    def _copy_to(self, new: RectifiedGaussianNode, batch_shape: torch.Size) -> None:
        new.energy = self.energy.expand(batch_shape)
        s = self._scale
        new._scale = s.expand(batch_shape) if isinstance(s, torch.Tensor) else s  # or callable
        new.negative_slope = self.negative_slope
        CGNode.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        self._copy_to(new, torch.Size(batch_shape))
        return new

    #: ``feedforward`` is the draw with zero noise (``relu(e)``, ``leaky_relu(e)``, ``e``).
    _feedforward_is_noiseless_draw = False

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.energy.dtype, device=self.energy.device)
        return self._transform(self.energy + self.scale * noise)

    def rsample_where(self, mask: torch.Tensor) -> torch.Tensor:
        if not self._feedforward_is_noiseless_draw:
            return super().rsample_where(mask)
        # Noise only where the mask keeps a draw: elsewhere the result is exactly the
        # feed-forward statistic, with no second pass and no blend.
        noise = torch.randn(mask.shape, dtype=self.energy.dtype, device=self.energy.device)
        return self._transform(self.energy + self.scale * noise.mul_(mask))

    def _transform(self, y: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 1:
            return y
        if self.negative_slope == 0:
            return F.relu(y)
        return F.leaky_relu(y, self.negative_slope)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log density w.r.t. Lebesgue measure plus, for ``eps = 0``, a unit atom at 0."""
        if self._validate_args:
            self._validate_sample(value)
        e, s, k = self.energy, self.scale, self.negative_slope
        if k == 1:
            return _normal_log_pdf(value, e, s)
        if k == 0:
            atom = torch.special.log_ndtr(-e / s)
            # Evaluate the density at a safe point on the atom so gradients stay finite.
            dens = _normal_log_pdf(value.clamp_min(0), e, s)
            return torch.where(value > 0, dens, atom)
        neg = _normal_log_pdf(value / k, e, s) - math.log(k)
        return torch.where(value >= 0, _normal_log_pdf(value, e, s), neg)


class ReLUNode(RectifiedGaussianNode):
    """Rectified Gaussian with ``s = |tanh(e)|``; feed-forward statistic ``relu(e)``.

    The exact mean is within 0.0371 of ``relu(e)`` for every ``e``.

    >>> ReLUNode(torch.tensor([-1.0, 2.0])).feedforward
    tensor([0., 2.])
    """

    _feedforward_is_noiseless_draw = True

    def __init__(self, energy: torch.Tensor, validate_args: bool | None = None):
        check_energy(energy)
        super().__init__(energy, _abs_tanh, 0.0, validate_args)

    @property
    def feedforward(self) -> torch.Tensor:
        return apply_once(F.relu, self.energy)

    def rsample_where(self, mask: torch.Tensor) -> torch.Tensor:
        if mask.requires_grad:  # a relaxed (learned) mask: autograd's path differentiates it
            return super().rsample_where(mask)
        e = self.energy
        noise = torch.randn(mask.shape, dtype=e.dtype, device=e.device).mul_(mask)
        return _PartialReLUDraw.apply(e, noise)


class SoftplusNode(RectifiedGaussianNode):
    """Rectified Gaussian with constant ``s = 1.776``; feed-forward statistic ``softplus(e)``.

    The exact mean is within 0.0155 of ``softplus(e)`` for every ``e``.
    """

    def __init__(self, energy: torch.Tensor, validate_args: bool | None = None):
        super().__init__(energy, SOFTPLUS_SCALE, 0.0, validate_args)

    @property
    def feedforward(self) -> torch.Tensor:
        return apply_once(F.softplus, self.energy)


class LeakyReLUNode(RectifiedGaussianNode):
    """``X = max(Y, eps Y)``, ``s = |tanh(e)|``; feed-forward statistic ``leaky_relu(e, eps)``."""

    def __init__(
        self,
        energy: torch.Tensor,
        negative_slope: float = 0.01,
        validate_args: bool | None = None,
    ):
        check_energy(energy)
        if not isinstance(negative_slope, Real) or not 0.0 < negative_slope < 1.0:
            raise ValueError(f"negative_slope must be in (0, 1), got {negative_slope!r}")
        super().__init__(energy, _abs_tanh, negative_slope, validate_args)

    @property
    def feedforward(self) -> torch.Tensor:
        return apply_once(lambda e: F.leaky_relu(e, self.negative_slope), self.energy)


class GaussianNode(RectifiedGaussianNode):
    """Gaussian node ``X ~ Normal(e, s^2)`` (no rectification); feed-forward statistic ``e``.

    _feedforward_is_noiseless_draw = True

    >>> GaussianNode(torch.tensor([0.5]), scale=2.0).feedforward
    tensor([0.5000])
    """

    _feedforward_is_noiseless_draw = True

    def __init__(
        self,
        energy: torch.Tensor,
        scale: float | torch.Tensor = 1.0,
        validate_args: bool | None = None,
    ):
        super().__init__(energy, scale, 1.0, validate_args)

    @property
    def feedforward(self) -> torch.Tensor:
        return self.energy

    @property
    def mean(self) -> torch.Tensor:
        return self.energy.expand(self.batch_shape)

    @property
    def variance(self) -> torch.Tensor:
        return self.scale**2

    def entropy(self) -> torch.Tensor:
        return 0.5 + _LOG_SQRT_2PI + torch.log(self.scale)
