"""Predictive-performance metrics on torch tensors.

Convention: classification metrics take *class probabilities* ``probs`` of shape
``(batch, classes)`` -- typically the mean predictive over posterior/MC samples, see
:func:`predictive_from_samples` -- and int labels ``y`` of shape ``(batch,)``. They do
not accept logits: pass ``logits.softmax(-1)``. Regression metrics take a predictive
``mean`` (and ``var``) with the same shape as ``y``.

Every function returns a 0-dim tensor on the inputs' device (no host tensors are
created); validation reads a few scalars back, which synchronises a CUDA stream.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "CalibrationBins",
    "accuracy",
    "accuracy_rejection_curve",
    "aurc",
    "auroc",
    "brier",
    "calibration_bins",
    "classification_metrics",
    "expected_calibration_error",
    "fpr_at_tpr",
    "maximum_calibration_error",
    "gaussian_nll",
    "mc_gaussian_log_likelihood",
    "nll",
    "predictive_from_samples",
    "regression_metrics",
    "rmse",
]


# ------------------------------------------------------------------------ validation


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _check_float(name: str, t: object) -> torch.Tensor:
    t = _check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _prob_tol(dtype: torch.dtype) -> float:
    # float32: ~3.5e-4, float64: 1e-5, float16: ~0.03 -- loose enough for a softmax
    # averaged over samples, tight enough to catch logits or unnormalised scores.
    return max(1e-5, math.sqrt(torch.finfo(dtype).eps))


def _check_probs(probs: object, name: str = "probs") -> torch.Tensor:
    probs = _check_float(name, probs)
    if probs.ndim != 2:
        raise ValueError(
            f"{name} must have shape (batch, classes), got {tuple(probs.shape)} ({probs.ndim} dims)"
        )
    if probs.shape[1] < 1:
        raise ValueError(f"{name} must have at least one class column, got {tuple(probs.shape)}")
    if probs.numel() == 0:
        return probs
    tol = _prob_tol(probs.dtype)
    if not bool(torch.isfinite(probs).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    lo = float(probs.min())
    if lo < -tol:
        raise ValueError(f"{name} must be non-negative probabilities, found {lo:.4g}")
    dev = float((probs.sum(dim=1) - 1).abs().max())
    if dev > tol:
        raise ValueError(
            f"{name} rows must sum to 1 (within {tol:.2g}); max |row sum - 1| = {dev:.4g}. "
            "Pass probabilities, e.g. logits.softmax(-1), not logits"
        )
    return probs


def _check_labels(y: object, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    y = _check_tensor("y", y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"y must have shape ({batch},) to match probs, got {tuple(y.shape)}")
    if y.device != device:
        raise ValueError(f"y is on {y.device} but probs is on {device}")
    if batch:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"y labels must be in [0, {num_classes - 1}] for {num_classes} classes, "
                f"found range [{lo}, {hi}]"
            )
    return y


def _check_classification(probs: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    probs = _check_probs(probs)
    y = _check_labels(y, probs.shape[0], probs.shape[1], probs.device)
    if probs.shape[0] == 0:
        raise ValueError("probs and y are empty; a metric over 0 examples is undefined")
    return probs, y


def _check_same(name: str, t: object, ref: torch.Tensor, ref_name: str = "y") -> torch.Tensor:
    t = _check_float(name, t)
    if t.shape != ref.shape:
        raise ValueError(
            f"{name} must have the same shape as {ref_name} {tuple(ref.shape)}, got "
            f"{tuple(t.shape)} (squeeze or reshape explicitly; no broadcasting here)"
        )
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    return t


# -------------------------------------------------------------------- classification


def predictive_from_samples(log_probs: torch.Tensor) -> torch.Tensor:
    """Mean predictive probabilities from per-sample log-probabilities.

    Computes ``p(y | x) = (1/S) sum_s p_s(y | x)`` stably as
    ``exp(logsumexp_s(log p_s) - log S)``.

    :param log_probs: normalised log class probabilities, shape ``(samples, batch, classes)``
        (e.g. ``logits.log_softmax(-1)`` for each of ``S`` posterior/MC samples).
    :returns: Probabilities of shape ``(batch, classes)``.

    >>> lp = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]]).log()  # 2 samples, 1 input
    >>> predictive_from_samples(lp)
    tensor([[0.7000, 0.3000]])
    """
    log_probs = _check_float("log_probs", log_probs)
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must have shape (samples, batch, classes), got {tuple(log_probs.shape)}")
    if log_probs.shape[0] == 0:
        raise ValueError("log_probs has 0 samples")
    if log_probs.numel():
        dev = float(torch.logsumexp(log_probs, dim=-1).abs().max())
        if not dev <= _prob_tol(log_probs.dtype):  # also catches NaN
            raise ValueError(
                "log_probs must be normalised over classes (logsumexp over the last dim = 0); "
                f"max |logsumexp| = {dev:.4g}. Apply .log_softmax(-1) to logits first"
            )
    s = log_probs.shape[0]
    return torch.exp(torch.logsumexp(log_probs, dim=0) - math.log(s))


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of examples whose most probable class equals the label.

    :param probs: class probabilities, shape ``(batch, classes)``.
    :param y: integer labels, shape ``(batch,)``.

    >>> probs = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> accuracy(probs, torch.tensor([0, 1, 1]))
    tensor(0.6667)
    """
    probs, y = _check_classification(probs, y)
    return (probs.argmax(dim=1) == y).to(probs.dtype).mean()


def nll(probs: torch.Tensor, y: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Mean negative log predictive probability of the true class (natural log).

    :param probs: class probabilities, shape ``(batch, classes)``.
    :param y: integer labels, shape ``(batch,)``.
    :param eps: probabilities are clamped to ``>= eps`` so a zero gives a large finite
        loss instead of ``inf``; default ``torch.finfo(probs.dtype).eps``
        (the same clipping as ``sklearn.metrics.log_loss``).

    >>> probs = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    >>> round(float(nll(probs, torch.tensor([0, 1]))), 4)  # -(ln 0.5 + ln 0.9) / 2
    0.3993
    """
    probs, y = _check_classification(probs, y)
    eps = torch.finfo(probs.dtype).eps if eps is None else eps
    p_true = probs.gather(1, y.unsqueeze(1)).squeeze(1)
    return -p_true.clamp(min=eps).log().mean()


def brier(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-class Brier score: mean over examples of ``sum_k (p_k - [y = k])^2``.

    Ranges over ``[0, 2]``. For two classes it is twice scikit-learn's binary
    ``brier_score_loss`` (which scores the positive class only).

    :param probs: class probabilities, shape ``(batch, classes)``.
    :param y: integer labels, shape ``(batch,)``.

    >>> probs = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    >>> round(float(brier(probs, torch.tensor([0, 0]))), 4)  # (0.08 + 0.98) / 2
    0.53
    """
    probs, y = _check_classification(probs, y)
    one_hot = torch.nn.functional.one_hot(y, probs.shape[1]).to(probs.dtype)
    return (probs - one_hot).pow(2).sum(dim=1).mean()


class CalibrationBins(NamedTuple):
    """Per-bin statistics of the top-class confidence (see :func:`calibration_bins`).

    :ivar edges: bin edges ``(n_bins + 1,)``, ``0 .. 1``.
    :ivar count: data per bin ``(n_bins,)``.
    :ivar confidence: mean confidence per bin ``(n_bins,)`` (0 in empty bins).
    :ivar accuracy: accuracy per bin ``(n_bins,)`` (0 in empty bins).
    """

    edges: torch.Tensor
    count: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor


def calibration_bins(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> CalibrationBins:
    """Bin the top-class confidence ``max_k p_k`` into ``n_bins`` equal-width bins.

    The one binning of pyrocg: ECE, MCE and the reliability diagram
    (:func:`pyrocg.diagnostics.plot_reliability`) all use it. Bins are right-closed,
    ``(i/n, (i+1)/n]`` as in Guo et al. (2017), and a confidence of exactly 0 goes into the
    first bin (a top-class confidence is at least ``1/classes`` anyway).

    :param probs: class probabilities ``(batch, classes)``.
    :param y: integer labels ``(batch,)``.
    :param n_bins: number of bins, ``>= 1``.

    >>> b = calibration_bins(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.4, 0.6]]),
    ...                      torch.tensor([0, 1, 1]), n_bins=5)
    >>> b.count, b.accuracy
    (tensor([0., 0., 2., 0., 1.]), tensor([0.0000, 0.0000, 0.5000, 0.0000, 1.0000]))
    """
    probs, y = _check_classification(probs, y)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    conf, pred = probs.max(dim=1)
    correct = (pred == y).to(probs.dtype)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype, device=probs.device)
    # right=False: bin i holds edges[i] < conf <= edges[i+1], i.e. right-closed bins.
    bins = torch.bucketize(conf, edges[1:-1], right=False)
    count = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device)
    count.index_add_(0, bins, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).index_add_(0, bins, conf)
    correct_sum = torch.zeros_like(count).index_add_(0, bins, correct)
    denom = count.clamp_min(1)
    return CalibrationBins(edges, count, conf_sum / denom, correct_sum / denom)


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """Expected calibration error of the top-class confidence (Guo et al., 2017).

    ``ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|`` over the bins of
    :func:`calibration_bins` (right-closed, ``(i/n, (i+1)/n]``).

    :param probs: class probabilities, shape ``(batch, classes)``.
    :param y: integer labels, shape ``(batch,)``.
    :param n_bins: number of bins, ``>= 1``.

    >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    >>> # the 0.9s share a bin (accuracy 1/2), so do the 0.6s: (2 * 0.4 + 2 * 0.1) / 4
    >>> round(float(expected_calibration_error(probs, torch.tensor([0, 1, 0, 0]))), 4)
    0.25
    """
    b = calibration_bins(probs, y, n_bins)
    return (b.count * (b.accuracy - b.confidence).abs()).sum() / b.count.sum()


def maximum_calibration_error(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """Maximum calibration error: ``max_b |accuracy_b - mean confidence_b|`` over the
    non-empty bins of :func:`calibration_bins`.

    :param probs: class probabilities ``(batch, classes)``.
    :param y: integer labels ``(batch,)``.
    :param n_bins: number of bins, ``>= 1``.

    >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    >>> round(float(maximum_calibration_error(probs, torch.tensor([0, 1, 0, 0]))), 4)
    0.4
    """
    b = calibration_bins(probs, y, n_bins)
    gap = (b.accuracy - b.confidence).abs()
    return torch.where(b.count > 0, gap, torch.zeros_like(gap)).max()


# ------------------------------------------------------------ selective prediction, OOD


def _check_scores(scores: object, name: str = "scores") -> torch.Tensor:
    scores = _check_float(name, scores)
    if scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(f"{name} must have shape (batch,) with batch > 0, got {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return scores


def accuracy_rejection_curve(
    probs: torch.Tensor, y: torch.Tensor, confidence: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy on the retained data when the least confident are rejected.

    Data are sorted by ``confidence`` (default: the top-class probability), most confident
    first; for ``k = 1 .. N`` the ``k`` most confident are kept.

    :param probs: class probabilities ``(batch, classes)``.
    :param y: integer labels ``(batch,)``.
    :param confidence: optional confidence per datum ``(batch,)`` (higher = keep first),
        e.g. minus the mutual information.
    :returns: ``(rejected, accuracy)``, each ``(batch,)``: the fraction rejected
        ``1 - k/N`` (from ``1 - 1/N`` down to 0) and the accuracy of the kept ``k``.

    >>> rej, acc = accuracy_rejection_curve(torch.tensor([[0.9, 0.1], [0.6, 0.4]]),
    ...                                     torch.tensor([0, 1]))
    >>> rej, acc
    (tensor([0.5000, 0.0000]), tensor([1.0000, 0.5000]))
    """
    probs, y = _check_classification(probs, y)
    conf, pred = probs.max(dim=1)
    if confidence is not None:
        conf = _check_same("confidence", _check_scores(confidence, "confidence"), conf, "batch")
    order = torch.argsort(conf, descending=True, stable=True)
    correct = (pred == y)[order].to(probs.dtype)
    k = torch.arange(1, len(y) + 1, dtype=probs.dtype, device=probs.device)
    return 1 - k / len(y), correct.cumsum(0) / k


def aurc(probs: torch.Tensor, y: torch.Tensor, confidence: torch.Tensor | None = None) -> torch.Tensor:
    """Area under the risk-coverage curve (Geifman & El-Yaniv, 2017): the mean over
    ``k = 1 .. N`` of the error rate of the ``k`` most confident data (lower is better).

    :param probs: class probabilities ``(batch, classes)``.
    :param y: integer labels ``(batch,)``.
    :param confidence: optional confidence per datum ``(batch,)``, as in
        :func:`accuracy_rejection_curve`.

    >>> round(float(aurc(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]))), 4)
    0.25
    """
    _, acc = accuracy_rejection_curve(probs, y, confidence)
    return (1 - acc).mean()


def _check_binary(scores: object, positive: object) -> tuple[torch.Tensor, torch.Tensor]:
    scores = _check_scores(scores)
    positive = _check_tensor("positive", positive)
    if positive.shape != scores.shape:
        raise ValueError(f"positive must have shape {tuple(scores.shape)} like scores, got "
                         f"{tuple(positive.shape)}")
    positive = positive.to(device=scores.device, dtype=torch.bool)
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == len(positive):
        raise ValueError("AUROC/FPR need both positives and negatives")
    return scores, positive


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of ``scores`` for detecting ``positive`` (e.g. out-of-
    distribution) data: the probability that a random positive scores higher than a random
    negative, ties counting one half (Mann-Whitney U; equal to scikit-learn's
    ``roc_auc_score(positive, scores)``).

    :param scores: scores ``(batch,)``, higher = more likely positive.
    :param positive: ``(batch,)`` bools (or 0/1).

    >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    tensor(0.7500)
    """
    scores, positive = _check_binary(scores, positive)
    # Average ranks (1-based) with ties sharing their mean rank.
    s = scores.double()
    uniq, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks = mean_rank[inverse]
    n_pos = positive.sum().double()
    n_neg = (~positive).sum().double()
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return (u / (n_pos * n_neg)).to(scores.dtype)


def fpr_at_tpr(scores: torch.Tensor, positive: torch.Tensor, tpr: float = 0.95) -> torch.Tensor:
    """False-positive rate at the largest threshold whose true-positive rate is ``>= tpr``
    (FPR at 95% TPR for ``tpr=0.95``): the fraction of negatives scoring at least the
    ``ceil(tpr * positives)``-th highest positive score (lower is better).

    :param scores: scores ``(batch,)``, higher = more likely positive.
    :param positive: ``(batch,)`` bools (or 0/1).
    :param tpr: the true-positive rate, in ``(0, 1]``.

    >>> fpr_at_tpr(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]), 0.95)
    tensor(0.5000)
    """
    scores, positive = _check_binary(scores, positive)
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    pos = torch.sort(scores[positive], descending=True).values
    k = math.ceil(tpr * len(pos) - 1e-9)
    threshold = pos[max(k, 1) - 1]
    return (scores[~positive] >= threshold).to(scores.dtype).mean()


def classification_metrics(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """All classification metrics as Python floats: accuracy, nll, brier, ece, mce, aurc.

    >>> m = classification_metrics(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))
    >>> sorted(m), m["accuracy"]
    (['accuracy', 'aurc', 'brier', 'ece', 'mce', 'nll'], 1.0)
    """
    return {
        "accuracy": float(accuracy(probs, y)),
        "nll": float(nll(probs, y)),
        "brier": float(brier(probs, y)),
        "ece": float(expected_calibration_error(probs, y, n_bins=n_bins)),
        "mce": float(maximum_calibration_error(probs, y, n_bins=n_bins)),
        "aurc": float(aurc(probs, y)),
    }


# ------------------------------------------------------------------------ regression


def rmse(mean: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Root mean squared error over all elements.

    :param mean: predictions (e.g. predictive mean), same shape as ``y``: ``(batch,)``
        or ``(batch, outputs)``.
    :param y: targets.

    >>> rmse(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0]))
    tensor(1.1547)
    """
    y = _check_float("y", y)
    mean = _check_same("mean", mean, y)
    if y.numel() == 0:
        raise ValueError("y is empty; RMSE over 0 examples is undefined")
    return (mean - y).pow(2).mean().sqrt()


def gaussian_nll(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``y`` under ``Normal(mean, sqrt(var))``.

    ``0.5 * (log(2 pi var) + (y - mean)^2 / var)`` averaged over all elements, in nats.

    :param mean: predictive mean, same shape as ``y``.
    :param var: predictive variance (> 0), same shape as ``y``.
    :param y: targets, shape ``(batch,)`` or ``(batch, outputs)``.

    >>> m, v, y = torch.zeros(2), torch.ones(2), torch.tensor([0.0, 2.0])
    >>> round(float(gaussian_nll(m, v, y)), 4)  # 0.5 ln(2 pi) + (0 + 4) / 4
    1.9189
    """
    y = _check_float("y", y)
    mean = _check_same("mean", mean, y)
    var = _check_same("var", var, y)
    if y.numel() == 0:
        raise ValueError("y is empty; the NLL over 0 examples is undefined")
    if not bool((var > 0).all()):
        raise ValueError(f"var must be > 0 everywhere, found min {float(var.min()):.4g}")
    return 0.5 * (torch.log(2 * math.pi * var) + (y - mean).pow(2) / var).mean()


def mc_gaussian_log_likelihood(samples: torch.Tensor, y: torch.Tensor, tau: float,
                               reduce: bool = True) -> torch.Tensor:
    """Gal & Ghahramani's MC-dropout test log-likelihood of ``y`` under ``T`` passes with
    fixed model precision ``tau``: per datum

    ``logsumexp_t(-tau/2 (y - yhat_t)^2) - log T - log(2 pi)/2 + log(tau)/2``,

    the log of the mixture ``(1/T) sum_t N(y; yhat_t, 1/tau)``. Give ``samples``, ``y`` and
    ``tau`` on the same (original) target scale. Cost ``O(T batch)``.

    :param samples: per-pass predictions ``yhat_t``, shape ``(T, *y.shape)``.
    :param y: targets, shape ``(batch,)`` (or ``(batch, outputs)``).
    :param tau: model precision, > 0.
    :param reduce: average over the data (their ``test_ll``); ``False`` returns ``y.shape``.

    >>> s = torch.tensor([[0.0, 1.0], [2.0, 1.0]])  # T=2 passes, 2 data
    >>> ll = mc_gaussian_log_likelihood(s, torch.tensor([1.0, 1.0]), tau=1.0, reduce=False)
    >>> [round(v, 4) for v in ll.tolist()]  # N(1; 0 or 2, 1), then N(1; 1, 1)
    [-1.4189, -0.9189]
    """
    y = _check_float("y", y)
    samples = _check_float("samples", samples)
    if samples.dim() != y.dim() + 1 or samples.shape[1:] != y.shape or samples.shape[0] < 1:
        raise ValueError(f"samples must have shape (T, *y.shape) = (T, {', '.join(map(str, y.shape))})"
                         f" with T >= 1, got {tuple(samples.shape)}")
    if samples.device != y.device:
        raise ValueError(f"samples is on {samples.device} but y is on {y.device}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < math.inf:
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")
    if y.numel() == 0:
        raise ValueError("y is empty; the log-likelihood over 0 examples is undefined")
    ll = (torch.logsumexp(-0.5 * tau * (y - samples).pow(2), 0) - math.log(samples.shape[0])
          - 0.5 * math.log(2 * math.pi) + 0.5 * math.log(tau))
    return ll.mean() if reduce else ll


def regression_metrics(mean: torch.Tensor, var: torch.Tensor | None, y: torch.Tensor) -> dict[str, float]:
    """RMSE and (when ``var`` is given) Gaussian NLL as Python floats.

    >>> regression_metrics(torch.zeros(2), None, torch.tensor([3.0, -3.0]))
    {'rmse': 3.0}
    """
    out = {"rmse": float(rmse(mean, y))}
    if var is not None:
        out["nll"] = float(gaussian_nll(mean, var, y))
    return out
