"""Plots: reliability diagrams of predictive probabilities."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["reliability_curve", "plot_reliability"]


def reliability_curve(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15):
    """Per confidence bin: mean confidence, accuracy and count (equal-width bins).

    :param probs: predictive class probabilities ``(batch, classes)``.
    :param y: labels ``(batch,)``.
    """
    conf, pred = probs.max(-1)
    correct = (pred == y).double()
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).double()
    acc = torch.bincount(bins, correct, minlength=n_bins) / count.clamp_min(1)
    mean_conf = torch.bincount(bins, conf.double(), minlength=n_bins) / count.clamp_min(1)
    return mean_conf.cpu(), acc.cpu(), count.cpu()


def plot_reliability(predictions: dict[str, torch.Tensor], y: torch.Tensor,
                     path: str | Path, n_bins: int = 10, min_count: int = 5) -> Path:
    """Reliability diagram (accuracy vs confidence) of several predictors, saved as PNG.

    Bins with fewer than ``min_count`` data are not drawn; marker area grows with the count.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, probs in predictions.items():
        conf, acc, count = reliability_curve(probs, y, n_bins)
        keep = count >= min_count
        (line,) = ax.plot(conf[keep], acc[keep], "-", label=name, lw=1.2)
        ax.scatter(conf[keep], acc[keep], s=8 + 60 * count[keep] / count.sum(), color=line.get_color())
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Reliability diagram (test set)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
