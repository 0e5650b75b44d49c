"""Post-hoc calibration: temperature scaling (Guo et al., 2017) as the baseline.

One scalar ``τ > 0`` divides every logit; it is fitted (within bounds) by minimising the NLL of the mean
predictive on held-out (validation) data, so accuracy is unchanged. For ``T`` stochastic
passes each pass's logits are divided by ``τ`` before the passes are averaged. The
calibration numbers themselves (ECE, MCE, Brier, NLL, AURC) are in :mod:`pyrocg.metrics`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["fit_temperature", "temperature_scale"]


def _logits(logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point tensor")
    if logits.ndim == 2:
        return logits.unsqueeze(0)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (T, batch, classes) or (batch, classes), "
                         f"got {tuple(logits.shape)}")
    return logits


def temperature_scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean predictive class probabilities of the passes' logits divided by ``temperature``.

    :param logits: per-pass logits ``(T, batch, classes)`` (``Prediction.outputs``) or
        ``(batch, classes)``.
    :param temperature: ``τ > 0``; ``τ > 1`` softens, ``τ < 1`` sharpens.
    :returns: probabilities ``(batch, classes)``.

    >>> temperature_scale(torch.tensor([[2.0, 0.0]]), 2.0)
    tensor([[0.7311, 0.2689]])
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return torch.softmax(_logits(logits) / temperature, -1).mean(0)


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, bounds: tuple[float, float] = (0.05, 20.0),
                    iterations: int = 60) -> float:
    """The temperature in ``bounds`` that minimises the NLL of :func:`temperature_scale` on
    ``(logits, y)``.

    Golden-section search on ``log τ`` (the NLL of one pass is convex in ``1/τ``). The bounds
    matter: on held-out data without errors the NLL keeps falling as ``τ → 0``, and an
    unbounded fit would make the test errors infinitely confident.

    :param logits: per-pass logits ``(T, batch, classes)`` or ``(batch, classes)`` of
        held-out data.
    :param y: labels ``(batch,)``.
    :param bounds: ``(lowest, highest)`` temperature.
    :param iterations: golden-section steps (the bracket shrinks by 0.618 each).

    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.randint(0, 3, (2000,), generator=g)
    >>> true = torch.randn(2000, 3, generator=g) + 2 * torch.nn.functional.one_hot(y, 3)
    >>> y = torch.multinomial(true.softmax(-1), 1, generator=g)[:, 0]  # labels from `true`
    >>> abs(fit_temperature(3 * true, y) - 3) < 0.3  # logits 3x too sharp: tau ~ 3
    True
    """
    z = _logits(logits).detach().double()
    if y.shape != z.shape[1:2]:
        raise ValueError(f"y must have shape ({z.shape[1]},), got {tuple(y.shape)}")
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ValueError(f"bounds must be 0 < lowest < highest, got {bounds!r}")
    index = y.to(z.device).unsqueeze(-1)

    def nll(log_t: float) -> float:
        log_p = torch.logsumexp(torch.log_softmax(z / math.exp(log_t), -1), 0) - math.log(len(z))
        return float(-log_p.gather(-1, index).mean())

    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)
