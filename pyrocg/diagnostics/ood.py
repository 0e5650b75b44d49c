"""Out-of-distribution scores and their detection metrics.

Every score is oriented so that **higher means more likely out of distribution**:

* ``max_prob``: ``1 - max_k p̄_k`` (Hendrycks & Gimpel, 2017);
* ``entropy``: predictive entropy ``H[p̄]``;
* ``mutual_information``: the epistemic part (BALD; 0 for a deterministic network);
* ``energy``: ``-logsumexp_k f_k`` of the logits (Liu et al., 2020), averaged over passes.

:func:`ood_metrics` scores in-distribution against out-of-distribution predictions with
AUROC and the FPR at 95% TPR (:func:`pyrocg.metrics.auroc`, :func:`pyrocg.metrics.fpr_at_tpr`).
"""

from __future__ import annotations

import torch

from ..metrics import auroc, fpr_at_tpr
from .uncertainty import mutual_information, predictive_entropy

__all__ = ["SCORES", "ood_scores", "ood_metrics"]

#: The OOD scores computed by :func:`ood_scores`.
SCORES = ("max_prob", "entropy", "mutual_information", "energy")


def ood_scores(probs: torch.Tensor, logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-datum OOD scores (higher = more likely out of distribution), each ``(batch,)``.

    :param probs: per-pass class probabilities ``(T, batch, classes)`` (or ``(batch, classes)``).
    :param logits: per-pass logits of the same shape for the energy score (omitted without).

    >>> p = torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]])
    >>> s = ood_scores(p, torch.zeros(2, 1, 2))
    >>> [round(float(s[k]), 4) for k in SCORES]
    [0.5, 0.6931, 0.0, -0.6931]
    """
    if probs.ndim == 2:
        probs = probs.unsqueeze(0)
    scores = {
        "max_prob": 1 - probs.mean(0).max(-1).values,
        "entropy": predictive_entropy(probs),
        "mutual_information": mutual_information(probs),
    }
    if logits is not None:
        if logits.ndim == 2:
            logits = logits.unsqueeze(0)
        if logits.shape != probs.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and probs {tuple(probs.shape)} "
                             "must have the same shape")
        scores["energy"] = -torch.logsumexp(logits, -1).mean(0)
    return scores


def ood_metrics(scores_in: dict[str, torch.Tensor], scores_out: dict[str, torch.Tensor],
                tpr: float = 0.95) -> dict[str, dict[str, float]]:
    """AUROC and FPR at ``tpr`` TPR of each score, out-of-distribution data as positives.

    :param scores_in: :func:`ood_scores` of in-distribution data.
    :param scores_out: :func:`ood_scores` of out-of-distribution data (same keys).
    :returns: ``{score: {"auroc": float, "fpr95": float}}`` (``fpr95`` at ``tpr``).

    >>> ins = {"entropy": torch.tensor([0.1, 0.2, 0.3])}
    >>> outs = {"entropy": torch.tensor([0.25, 0.9])}
    >>> ood_metrics(ins, outs)
    {'entropy': {'auroc': 0.8333333333333334, 'fpr95': 0.3333333333333333}}
    """
    out: dict[str, dict[str, float]] = {}
    for name, s_in in scores_in.items():
        if name not in scores_out:
            continue
        s_out = scores_out[name]
        scores = torch.cat([s_in, s_out]).double()
        positive = torch.cat([torch.zeros_like(s_in, dtype=torch.bool),
                              torch.ones_like(s_out, dtype=torch.bool)])
        out[name] = {"auroc": float(auroc(scores, positive)),
                     "fpr95": float(fpr_at_tpr(scores, positive, tpr))}
    return out
