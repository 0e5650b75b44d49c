"""Post-hoc calibration: temperature scaling (Guo et al., 2017) as the baseline.

One scalar ``τ > 0`` divides every logit; it is fitted by minimising the NLL of the mean
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


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature that minimises the NLL of :func:`temperature_scale` on ``(logits, y)``.

    Optimises ``log τ`` with L-BFGS from ``τ = 1`` (in float64).

    :param logits: per-pass logits ``(T, batch, classes)`` or ``(batch, classes)`` of
        held-out data.
    :param y: labels ``(batch,)``.
    :param max_iter: L-BFGS iterations.

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
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")
    t_count = z.shape[0]

    def closure():
        opt.zero_grad()
        log_p = torch.logsumexp(torch.log_softmax(z / log_t.exp(), -1), 0) - math.log(t_count)
        loss = -log_p.gather(-1, y.unsqueeze(-1)).mean()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(log_t.detach().exp())
