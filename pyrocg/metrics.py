"""Predictive metrics on tensors (any device): accuracy, NLL, Brier, ECE, RMSE, Gaussian NLL.

Classification metrics take predictive class probabilities ``(batch, classes)`` (e.g. the
mean of T stochastic passes) and integer labels ``(batch,)``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "accuracy",
    "nll",
    "brier",
    "expected_calibration_error",
    "rmse",
    "gaussian_nll",
    "predictive_from_samples",
]


def _check_probs(probs: object, y: object, name: str = "probs") -> None:
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {getattr(probs, 'dtype', type(probs))}")
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"labels y must be an integer tensor, got {getattr(y, 'dtype', type(y))}")
    if probs.dim() != 2 or y.shape != probs.shape[:1]:
        raise ValueError(
            f"{name} must be (batch, classes) and y (batch,), got {tuple(probs.shape)} and {tuple(y.shape)}"
        )
    k = probs.shape[1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ValueError(f"labels y must be in [0, {k}), got range [{int(y.min())}, {int(y.max())}]")
    if probs.numel() and not torch.allclose(probs.sum(-1), probs.new_ones(()), atol=1e-3):
        raise ValueError(f"{name} rows must sum to 1 (they are probabilities, not logits)")


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of data whose most probable class is the label.

    >>> accuracy(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]))
    tensor(0.5000)
    """
    _check_probs(probs, y)
    return (probs.argmax(-1) == y).to(probs.dtype).mean()


def nll(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log predictive probability of the labels.

    >>> round(float(nll(torch.tensor([[0.5, 0.5]]), torch.tensor([1]))), 4)
    0.6931
    """
    _check_probs(probs, y)
    p = probs.gather(-1, y.long()[:, None])[:, 0]
    return -torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)).mean()


def brier(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over data of the summed squared error to the one-hot label.

    >>> brier(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    tensor(2.)
    """
    _check_probs(probs, y)
    onehot = torch.nn.functional.one_hot(y.long(), probs.shape[-1]).to(probs.dtype)
    return (probs - onehot).pow(2).sum(-1).mean()


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """ECE with ``n_bins`` equal-width confidence bins, weighted by bin counts.

    >>> expected_calibration_error(torch.tensor([[0.8, 0.2], [0.8, 0.2]]), torch.tensor([0, 1]))
    tensor(0.3000)
    """
    _check_probs(probs, y)
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    conf, pred = probs.max(-1)
    correct = (pred == y).to(probs.dtype)
    # Bin i holds confidences in (i/n, (i+1)/n]; confidence 1 lands in the last bin.
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).to(probs.dtype)
    gap = torch.bincount(bins, conf - correct, minlength=n_bins).abs()
    return gap.sum() / count.sum().clamp_min(1)


def _check_regression(mean: object, y: object) -> None:
    for name, t in (("mean", mean), ("y", y)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t))}")
    if mean.shape != y.shape:
        raise ValueError(f"mean and y must have the same shape, got {tuple(mean.shape)} and {tuple(y.shape)}")


def rmse(mean: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Root mean squared error.

    >>> rmse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
    tensor(2.2361)
    """
    _check_regression(mean, y)
    return (mean - y).pow(2).mean().sqrt()


def gaussian_nll(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative Gaussian log-likelihood ``-log N(y; mean, var)``.

    >>> round(float(gaussian_nll(torch.zeros(1), torch.ones(1), torch.zeros(1))), 4)
    0.9189
    """
    _check_regression(mean, y)
    if var.shape != y.shape:
        raise ValueError(f"var must have shape {tuple(y.shape)}, got {tuple(var.shape)}")
    if bool((var <= 0).any()):
        raise ValueError("var must be positive")
    return (0.5 * (math.log(2 * math.pi) + var.log() + (y - mean).pow(2) / var)).mean()


def predictive_from_samples(log_probs: torch.Tensor) -> torch.Tensor:
    """Mean predictive probabilities from per-sample log-probabilities ``(S, batch, classes)``.

    >>> predictive_from_samples(torch.log(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])))
    tensor([[0.5000, 0.5000]])
    """
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 3:
        got = getattr(log_probs, "shape", None)
        raise ValueError(f"log_probs must be (samples, batch, classes), got {got}")
    return torch.logsumexp(log_probs, 0).sub(math.log(log_probs.shape[0])).exp()
