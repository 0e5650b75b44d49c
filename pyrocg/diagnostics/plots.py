"""Plots (matplotlib, Agg backend, PNG): reliability diagram, confidence histograms,
uncertainty histograms in vs out of distribution, accuracy-rejection curves; and
:func:`write_diagnostic_plots`, which writes all of them (and ArviZ's PPC / LOO-PIT) into a
directory.

Predictions are given as ``{name: p}`` where ``p`` is a :class:`~pyrocg.infer.Prediction`
(its per-pass ``probs``) or class probabilities ``(batch, classes)`` (one pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..metrics import accuracy_rejection_curve, aurc, calibration_bins, expected_calibration_error
from .uncertainty import classification_uncertainty

__all__ = [
    "reliability_curve",
    "plot_reliability",
    "plot_confidence_histogram",
    "plot_uncertainty_histograms",
    "plot_accuracy_rejection",
    "write_diagnostic_plots",
    "DIAGNOSTIC_FIGURES",
    "ARVIZ_FIGURES",
]

#: The files :func:`write_diagnostic_plots` always writes, and those it adds with ``idata``.
DIAGNOSTIC_FIGURES = ("reliability.png", "confidence.png", "rejection.png", "entropy.png",
                      "mutual_information.png")
ARVIZ_FIGURES = ("ppc.png", "loo_pit.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _passes(p: Any) -> torch.Tensor:
    """Per-pass probabilities ``(T, batch, classes)`` of a Prediction or a probs tensor."""
    probs = getattr(p, "probs", p)
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"expected a Prediction or class probabilities, got {type(p).__name__}")
    probs = probs.detach().cpu().double()
    return probs.unsqueeze(0) if probs.ndim == 2 else probs


def _mean(p: Any) -> torch.Tensor:
    return _passes(p).mean(0)


def reliability_curve(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per confidence bin: mean confidence, accuracy and count, each ``(n_bins,)``, from
    :func:`pyrocg.metrics.calibration_bins` (the bins of the ECE).

    :param probs: predictive class probabilities ``(batch, classes)``.
    :param y: labels ``(batch,)``.
    """
    b = calibration_bins(probs, y.to(probs.device), n_bins)
    return b.confidence.cpu(), b.accuracy.cpu(), b.count.cpu()


def plot_reliability(predictions: Mapping[str, Any], y: torch.Tensor, path: str | Path,
                     n_bins: int = 15, min_count: int = 5) -> Path:
    """Reliability diagram (accuracy vs confidence per bin) of several predictors, PNG.

    The bins are those of :func:`pyrocg.metrics.expected_calibration_error`, whose value
    each legend entry shows. Bins with fewer than ``min_count`` data are not drawn; marker
    area grows with the count.

    :param predictions: ``{name: Prediction or probs (batch, classes)}``.
    :param y: labels ``(batch,)``.
    :param path: PNG file to write.
    """
    plt = _pyplot()
    y = y.detach().cpu()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, p in predictions.items():
        probs = _mean(p)
        conf, acc, count = reliability_curve(probs, y, n_bins)
        ece = float(expected_calibration_error(probs, y, n_bins))
        keep = count >= min_count
        (line,) = ax.plot(conf[keep], acc[keep], "-", label=f"{name} (ECE {ece:.3f})", lw=1.2)
        ax.scatter(conf[keep], acc[keep], s=8 + 60 * count[keep] / count.sum(),
                   color=line.get_color())
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability diagram ({n_bins} bins)")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def _grid(plt: Any, n: int, width: float = 3.6, height: float = 3.0):
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def plot_confidence_histogram(predictions: Mapping[str, Any], y: torch.Tensor,
                              path: str | Path, bins: int = 20) -> Path:
    """Histograms of the top-class confidence, correct and wrong predictions apart, one
    panel per predictor, PNG.

    :param predictions: ``{name: Prediction or probs (batch, classes)}``.
    :param y: labels ``(batch,)``.
    :param path: PNG file to write.
    """
    plt = _pyplot()
    y = y.detach().cpu()
    fig, axes = _grid(plt, len(predictions))
    edges = torch.linspace(0, 1, bins + 1).numpy()
    for ax, (name, p) in zip(axes, predictions.items(), strict=True):
        conf, pred = _mean(p).max(-1)
        right = pred == y
        ax.hist(conf[right].numpy(), edges, alpha=0.6, label=f"correct ({int(right.sum())})")
        ax.hist(conf[~right].numpy(), edges, alpha=0.6, label=f"wrong ({int((~right).sum())})")
        ax.set_yscale("log")
        ax.set_title(f"Confidence: {name}")
        ax.set_xlabel("top-class probability")
        ax.set_ylabel("count (log scale)")
        ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_uncertainty_histograms(scores: Mapping[str, Mapping[str, torch.Tensor]],
                                path: str | Path, xlabel: str = "predictive entropy (nats)",
                                title: str = "Uncertainty", bins: int = 30) -> Path:
    """Histograms of a per-datum uncertainty, one panel per predictor and one histogram
    per data set (e.g. in-distribution vs each out-of-distribution set), PNG.

    :param scores: ``{predictor: {data set: scores (batch,)}}``.
    :param path: PNG file to write.
    :param xlabel: what the scores are.
    :param title: panel titles start with it.
    """
    plt = _pyplot()
    fig, axes = _grid(plt, len(scores))
    for ax, (name, sets) in zip(axes, scores.items(), strict=True):
        values = {k: v.detach().cpu().double() for k, v in sets.items() if v.numel()}
        hi = max(float(v.max()) for v in values.values())
        edges = torch.linspace(0, max(hi, 1e-6), bins + 1).numpy()
        for label, v in values.items():
            ax.hist(v.numpy(), edges, density=True, histtype="step", lw=1.5, label=label)
        if hi == 0:
            ax.text(0.5, 0.5, "all zero\n(one deterministic pass)", ha="center",
                    va="center", transform=ax.transAxes)
        ax.set_title(f"{title}: {name}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_accuracy_rejection(predictions: Mapping[str, Any], y: torch.Tensor,
                            path: str | Path) -> Path:
    """Accuracy on the retained data against the fraction rejected (least confident first),
    one curve per predictor with its AURC in the legend, PNG.

    :param predictions: ``{name: Prediction or probs (batch, classes)}``.
    :param y: labels ``(batch,)``.
    :param path: PNG file to write.
    """
    plt = _pyplot()
    y = y.detach().cpu()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, p in predictions.items():
        probs = _mean(p)
        rejected, acc = accuracy_rejection_curve(probs, y)
        ax.plot(rejected.numpy(), acc.numpy(), lw=1.2,
                label=f"{name} (AURC {float(aurc(probs, y)):.4f})")
    ax.set_xlabel("fraction rejected (least confident first)")
    ax.set_ylabel("accuracy of the retained")
    ax.set_xlim(0, 1)
    ax.set_title("Accuracy-rejection curve")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def write_diagnostic_plots(
    directory: str | Path,
    predictions: Mapping[str, Any],
    y: torch.Tensor,
    *,
    ood: Mapping[str, Any] | None = None,
    idata: Any = None,
    n_bins: int = 15,
) -> list[Path]:
    """Write the diagnostic figures of several predictors into ``directory`` (PNG).

    Always: ``reliability.png``, ``confidence.png``, ``rejection.png``, ``entropy.png``
    (predictive entropy; in vs out of distribution when ``ood`` is given, else correct vs
    wrong predictions) and ``mutual_information.png`` (the epistemic part). With ``idata``
    also ``ppc.png`` and ``loo_pit.png`` (ArviZ).

    :param directory: output directory (created).
    :param predictions: ``{name: Prediction or probs (batch, classes)}`` on test data.
    :param y: test labels ``(batch,)``.
    :param ood: ``{name: Prediction or probs}`` of the same predictors on
        out-of-distribution inputs (optional).
    :param idata: ``{name: InferenceData}`` (or one) from
        :func:`pyrocg.diagnostics.to_inference_data` (optional).
    :param n_bins: bins of the reliability diagram (the ECE's).
    :returns: the paths written.
    """
    directory = Path(directory)
    y = y.detach().cpu()
    written = [
        plot_reliability(predictions, y, directory / DIAGNOSTIC_FIGURES[0], n_bins=n_bins),
        plot_confidence_histogram(predictions, y, directory / DIAGNOSTIC_FIGURES[1]),
        plot_accuracy_rejection(predictions, y, directory / DIAGNOSTIC_FIGURES[2]),
    ]
    for key, label, fname in (("predictive_entropy", "predictive entropy (nats)",
                               DIAGNOSTIC_FIGURES[3]),
                              ("mutual_information", "mutual information (nats)",
                               DIAGNOSTIC_FIGURES[4])):
        scores: dict[str, dict[str, torch.Tensor]] = {}
        for name, p in predictions.items():
            u = classification_uncertainty(_passes(p))[key]
            if ood is not None and name in ood:
                scores[name] = {"in-distribution": u,
                                "out-of-distribution": classification_uncertainty(
                                    _passes(ood[name]))[key]}
            else:
                right = _mean(p).argmax(-1) == y
                scores[name] = {"correct": u[right], "wrong": u[~right]}
        written.append(plot_uncertainty_histograms(scores, directory / fname,
                                                   xlabel=label, title=label.split(" (")[0].capitalize()))
    if idata is not None:
        from .arviz import plot_loo_pit, plot_ppc

        written.append(plot_ppc(idata, directory / ARVIZ_FIGURES[0]))
        written.append(plot_loo_pit(idata, directory / ARVIZ_FIGURES[1]))
    return written
