"""Metrics against scikit-learn and brute-force references."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from pyrocg import metrics


def random_probs(n=200, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(3 * torch.randn(n, k, generator=g, dtype=torch.float64), -1)
    y = torch.randint(0, k, (n,), generator=g)
    return p, y


def test_nll_and_accuracy_match_sklearn():
    p, y = random_probs()
    assert np.isclose(float(metrics.nll(p, y)), log_loss(y.numpy(), p.numpy(), labels=range(4)))
    assert float(metrics.accuracy(p, y)) == float((p.numpy().argmax(1) == y.numpy()).mean())


def test_brier_matches_definition():
    p, y = random_probs()
    ref = np.mean([((p[i].numpy() - np.eye(4)[y[i]]) ** 2).sum() for i in range(len(y))])
    assert np.isclose(float(metrics.brier(p, y)), ref)


def test_ece_matches_brute_force_loop():
    p, y = random_probs(500)
    conf, pred = p.max(-1)
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.sum().item() / 500 * abs(conf[sel].mean().item()
                                                  - (pred[sel] == y[sel]).double().mean().item())
    assert np.isclose(float(metrics.expected_calibration_error(p, y)), total)
    perfect = torch.eye(4, dtype=torch.float64)[y]
    assert float(metrics.expected_calibration_error(perfect, y)) == 0.0


def test_regression_metrics():
    m, y = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    assert np.isclose(float(metrics.rmse(m, y)), np.sqrt(5 / 3))
    var = torch.tensor([1.0, 2.0, 0.5])
    ref = np.mean([0.5 * np.log(2 * np.pi * v) + 0.5 * (a - b) ** 2 / v
                   for a, b, v in zip(m.tolist(), y.tolist(), var.tolist(), strict=True)])
    assert np.isclose(float(metrics.gaussian_nll(m, var, y)), ref, atol=1e-6)


def test_predictive_from_samples_is_mean_of_probs():
    lp = torch.log_softmax(torch.randn(7, 5, 3), -1)
    assert torch.allclose(metrics.predictive_from_samples(lp), lp.exp().mean(0), atol=1e-6)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: metrics.accuracy(torch.ones(3, 2) / 2, torch.tensor([0, 1, 2])), ValueError, r"\[0, 2\)"),
        (lambda: metrics.nll(torch.randn(3, 2), torch.tensor([0, 1, 1])), ValueError, "sum to 1"),
        (lambda: metrics.brier(torch.ones(3, 2) / 2, torch.tensor([0, 1])), ValueError, "batch"),
        (lambda: metrics.accuracy(torch.ones(3, 2) / 2, torch.tensor([0.0, 1.0, 1.0])), TypeError, "integer"),
        (lambda: metrics.rmse(torch.zeros(2), torch.zeros(3)), ValueError, "same shape"),
        (lambda: metrics.gaussian_nll(torch.zeros(2), torch.zeros(2), torch.ones(2)), ValueError, "positive"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
