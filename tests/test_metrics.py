"""Tests for pyrocg.metrics against numpy / scikit-learn references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss

from pyrocg.metrics import (
    accuracy,
    brier,
    classification_metrics,
    expected_calibration_error,
    gaussian_nll,
    nll,
    predictive_from_samples,
    regression_metrics,
    rmse,
)


def _random_case(
    n: int = 200, k: int = 5, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    probs = logits.softmax(-1).to(dtype)
    y = torch.randint(0, k, (n,), generator=g)
    return probs, y


def _ece_reference(probs: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """Brute-force ECE: loop over right-closed bins (lo, hi], as in Guo et al. (2017)."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (conf > lo) & (conf <= hi) if b > 0 else (conf <= hi)
        if in_bin.any():
            acc = (pred[in_bin] == y[in_bin]).mean()
            total += in_bin.mean() * abs(acc - conf[in_bin].mean())
    return float(total)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_references(seed: int) -> None:
    probs, y = _random_case(seed=seed)
    p, t = probs.numpy(), y.numpy()
    assert float(accuracy(probs, y)) == pytest.approx((p.argmax(1) == t).mean())
    assert float(nll(probs, y)) == pytest.approx(log_loss(t, p, labels=range(5)), rel=1e-10)
    onehot = np.eye(5)[t]
    assert float(brier(probs, y)) == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-10)
    for n_bins in (1, 10, 15):
        got = float(expected_calibration_error(probs, y, n_bins=n_bins))
        assert got == pytest.approx(_ece_reference(p, t, n_bins), abs=1e-12)


def test_binary_brier_is_twice_sklearn() -> None:
    probs, y = _random_case(n=300, k=2, seed=3)
    ref = brier_score_loss(y.numpy(), probs[:, 1].numpy())
    assert float(brier(probs, y)) == pytest.approx(2 * ref, rel=1e-10)


def test_float32_inputs_and_known_values() -> None:
    probs, y = _random_case(dtype=torch.float32)
    assert accuracy(probs, y).dtype == torch.float32
    p64 = probs.double().numpy()
    p64 /= p64.sum(1, keepdims=True)  # sklearn checks row sums at float64 precision
    assert float(nll(probs, y)) == pytest.approx(log_loss(y.numpy(), p64, labels=range(5)), rel=1e-5)
    perfect = torch.eye(3)
    labels = torch.arange(3)
    assert float(accuracy(perfect, labels)) == 1.0
    assert float(brier(perfect, labels)) == 0.0
    assert float(expected_calibration_error(perfect, labels)) == 0.0
    uniform = torch.full((4, 4), 0.25)
    assert float(nll(uniform, torch.arange(4))) == pytest.approx(math.log(4), rel=1e-6)


def test_nll_clamps_zero_probability() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    got = float(nll(probs, y))
    eps = torch.finfo(torch.float64).eps
    assert math.isfinite(got)
    assert got == pytest.approx((-math.log(eps) - math.log(0.5)) / 2)
    assert float(nll(probs, y, eps=1e-3)) == pytest.approx((-math.log(1e-3) - math.log(0.5)) / 2)


def test_ece_known_miscalibration() -> None:
    # Always 0.9 confident, right 60% of the time: ECE = |0.6 - 0.9| = 0.3.
    probs = torch.tensor([[0.9, 0.1]] * 10, dtype=torch.float64)
    y = torch.tensor([0] * 6 + [1] * 4)
    assert float(expected_calibration_error(probs, y)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, y, n_bins=0)


def test_predictive_from_samples_matches_mean_of_probs() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 11, 4, generator=g, dtype=torch.float64) * 30  # extreme values
    lp = logits.log_softmax(-1)
    got = predictive_from_samples(lp)
    assert got.shape == (11, 4)
    torch.testing.assert_close(got, lp.exp().mean(0))
    torch.testing.assert_close(got.sum(-1), torch.ones(11, dtype=torch.float64))
    with pytest.raises(ValueError, match="log_softmax"):
        predictive_from_samples(logits)  # raw logits are not normalised
    with pytest.raises(ValueError, match=r"\(samples, batch, classes\)"):
        predictive_from_samples(lp[0])


def test_regression_metrics_match_numpy() -> None:
    rng = np.random.default_rng(0)
    y, m = rng.normal(size=50), rng.normal(size=50)
    v = rng.uniform(0.1, 3.0, size=50)
    t = {k: torch.as_tensor(a) for k, a in (("y", y), ("m", m), ("v", v))}
    assert float(rmse(t["m"], t["y"])) == pytest.approx(np.sqrt(((m - y) ** 2).mean()))
    ref = np.mean(0.5 * np.log(2 * np.pi * v) + (y - m) ** 2 / (2 * v))
    assert float(gaussian_nll(t["m"], t["v"], t["y"])) == pytest.approx(ref)
    # Agrees with torch's own Gaussian NLL (full=True adds the constant term).
    torch_ref = torch.nn.functional.gaussian_nll_loss(t["m"], t["y"], t["v"], full=True)
    torch.testing.assert_close(gaussian_nll(t["m"], t["v"], t["y"]), torch_ref)
    out = regression_metrics(t["m"], t["v"], t["y"])
    assert set(out) == {"rmse", "nll"} and isinstance(out["rmse"], float)


def test_classification_metrics_dict() -> None:
    probs, y = _random_case(seed=4)
    out = classification_metrics(probs, y, n_bins=10)
    assert out["ece"] == pytest.approx(_ece_reference(probs.numpy(), y.numpy(), 10))
    assert all(isinstance(v, float) for v in out.values())


def test_validation_errors() -> None:
    probs, y = _random_case(n=6, k=3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\].*\[0, 3\]"):
        accuracy(probs, torch.tensor([0, 1, 2, 3, 0, 0]))
    with pytest.raises(ValueError, match=r"y must have shape \(6,\).*\(5,\)"):
        nll(probs, y[:5])
    with pytest.raises(ValueError, match=r"probs must have shape \(batch, classes\)"):
        brier(probs[0], y)
    with pytest.raises(ValueError, match="sum to 1.*logits"):
        nll(torch.randn(6, 3, dtype=torch.float64).abs() + 1, y)
    with pytest.raises(ValueError, match="non-negative"):
        brier(torch.tensor([[1.5, -0.5]]), torch.tensor([0]))
    with pytest.raises(TypeError, match="probs must be a floating-point"):
        accuracy(torch.ones(2, 1, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="y must hold integer"):
        accuracy(probs, y.double())
    with pytest.raises(TypeError, match="torch.Tensor"):
        accuracy(probs.numpy(), y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        accuracy(probs[:0], y[:0])
    with pytest.raises(ValueError, match=r"mean must have the same shape as y \(4,\)"):
        rmse(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="var must be > 0"):
        gaussian_nll(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]), torch.zeros(3))
    with pytest.raises(TypeError, match="y must be a floating-point"):
        rmse(torch.zeros(3), torch.zeros(3, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_stay_on_device() -> None:
    probs, y = _random_case()
    pc, yc = probs.cuda(), y.cuda()
    for fn in (accuracy, nll, brier, expected_calibration_error):
        out = fn(pc, yc)
        assert out.is_cuda
        assert float(out) == pytest.approx(float(fn(probs, y)), rel=1e-9, abs=1e-12)
    lp = torch.stack([probs.log(), probs.log()]).cuda()
    assert predictive_from_samples(lp).is_cuda
    assert rmse(pc[:, 0], pc[:, 1]).is_cuda
    assert gaussian_nll(pc[:, 0], pc[:, 1], pc[:, 2]).is_cuda
    with pytest.raises(ValueError, match="on cpu"):
        accuracy(pc, y)
