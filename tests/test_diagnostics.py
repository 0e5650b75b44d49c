"""Uncertainty decomposition, calibration, OOD scores and plots against hand computations and
scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from pyrocg import diagnostics, infer, metrics, models


def _passes(t: int = 30, n: int = 50, k: int = 4, seed: int = 0, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    logits = base + spread * torch.randn(t, n, k, generator=g, dtype=torch.float64)
    return logits, logits.softmax(-1)


# ------------------------------------------------------------------------ uncertainty


def test_entropy_decomposition_adds_up():
    _, probs = _passes()
    u = diagnostics.classification_uncertainty(probs)
    torch.testing.assert_close(u["predictive_entropy"],
                               u["expected_entropy"] + u["mutual_information"])
    # Against a direct numpy computation.
    p = probs.numpy()
    mean = p.mean(0)
    h = -(mean * np.log(mean)).sum(-1)
    eh = -(p * np.log(p)).sum(-1).mean(0)
    np.testing.assert_allclose(u["predictive_entropy"], h)
    np.testing.assert_allclose(u["mutual_information"], h - eh, atol=1e-12)
    assert (u["mutual_information"] > 0).all()
    assert (u["predictive_entropy"] <= math.log(4) + 1e-12).all()


def test_variation_ratio_by_hand():
    # Votes per datum: [0, 0, 1, 2] -> 1 - 2/4; [1, 1, 1, 1] -> 0.
    votes = torch.tensor([[0, 1], [0, 1], [1, 1], [2, 1]])
    probs = torch.nn.functional.one_hot(votes, 3).double() * 0.7 + 0.1
    torch.testing.assert_close(diagnostics.variation_ratio(probs),
                               torch.tensor([0.5, 0.0], dtype=torch.float64))


def test_mutual_information_zero_deterministic_positive_mc_dropout():
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    net = models.mlp(6, [32], 3, dropout=0.5)
    ff = infer.predict(infer.CGModel(net, infer.Categorical(40), mode="dropout"), x)
    mc = infer.predict(infer.CGModel(net, infer.Categorical(40), mode="mc-dropout"), x,
                       num_samples=50)
    assert ff.probs.shape[0] == 1
    assert (diagnostics.mutual_information(ff.probs) == 0).all()
    assert (diagnostics.variation_ratio(ff.probs) == 0).all()
    mi = diagnostics.mutual_information(mc.probs)
    assert (mi > 0).all()
    u = diagnostics.classification_uncertainty(mc.probs)
    torch.testing.assert_close(u["predictive_entropy"],
                               u["expected_entropy"] + u["mutual_information"])


def test_regression_variance_split_matches_predict():
    torch.manual_seed(0)
    x = torch.randn(30, 4)
    model = infer.CGModel(models.mlp(4, [16], 1, dropout=0.3), infer.Gaussian(30, scale=0.7),
                          mode="mc-dropout")
    pred = infer.predict(model, x, num_samples=40)
    u = diagnostics.regression_uncertainty(pred.outputs, model.likelihood.scale.detach())
    torch.testing.assert_close(u["total"], pred.variance)
    torch.testing.assert_close(u["mean"], pred.mean)
    torch.testing.assert_close(u["noise"], torch.full((30,), 0.49), rtol=1e-5, atol=1e-6)
    assert (u["model"] > 0).all()


def test_predictive_interval_gaussian_and_mixture_coverage():
    lo, hi = diagnostics.predictive_interval(torch.tensor([[0.0, 3.0]]), 2.0, level=0.8)
    np.testing.assert_allclose(hi.numpy(), [norm.ppf(0.9, 0, 2), norm.ppf(0.9, 3, 2)], rtol=1e-6)
    np.testing.assert_allclose(lo.numpy(), [norm.ppf(0.1, 0, 2), norm.ppf(0.1, 3, 2)], rtol=1e-6)
    # A bimodal mixture: draw targets from it, the 90% interval covers 90% of them.
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([-3.0, 3.0]).repeat_interleave(10)[:, None].expand(20, 4000)
    comp = torch.randint(0, 20, (4000,), generator=g)
    y = means[comp, torch.arange(4000)] + 0.5 * torch.randn(4000, generator=g)
    lo, hi = diagnostics.predictive_interval(means, 0.5, level=0.9)
    cov = float(diagnostics.interval_coverage(lo, hi, y))
    assert cov == pytest.approx(0.9, abs=0.015)
    # The mixture CDF at the bounds is (1 -+ level) / 2.
    cdf = torch.distributions.Normal(means[:, :1], 0.5).cdf(hi[:1]).mean()
    assert float(cdf) == pytest.approx(0.95, abs=1e-6)


# ------------------------------------------------------------------------ calibration


def test_ece_mce_brier_nll_by_hand_with_diagram_bins():
    # 5 bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]; 0.6 and 0.8 sit on edges (right-closed).
    probs = torch.tensor([[0.6, 0.4], [0.8, 0.2], [0.8, 0.2], [0.7, 0.3], [0.95, 0.05],
                          [0.55, 0.45]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 0, 0, 1])
    # bin 2: conf {0.6, 0.55} acc 1/2; bin 3: conf {0.8, 0.8, 0.7} acc 2/3; bin 4: {0.95} acc 1
    gaps = {2: (2, abs(0.5 - 0.575)), 3: (3, abs(2 / 3 - 2.3 / 3)), 4: (1, 0.05)}
    ece = sum(n * gap for n, gap in gaps.values()) / 6
    assert float(metrics.expected_calibration_error(probs, y, n_bins=5)) == pytest.approx(ece)
    assert float(metrics.maximum_calibration_error(probs, y, n_bins=5)) == pytest.approx(0.1)
    conf, acc, count = diagnostics.reliability_curve(probs, y, n_bins=5)
    torch.testing.assert_close(count, torch.tensor([0, 0, 2, 3, 1], dtype=torch.float64))
    torch.testing.assert_close(acc[2:], torch.tensor([0.5, 2 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(conf[2:], torch.tensor([0.575, 2.3 / 3, 0.95], dtype=torch.float64))
    # The diagram's bins give the ECE.
    assert float((count * (acc - conf).abs()).sum() / count.sum()) == pytest.approx(ece)
    p_true = torch.tensor([0.6, 0.8, 0.2, 0.7, 0.95, 0.45], dtype=torch.float64)
    assert float(metrics.nll(probs, y)) == pytest.approx(float(-p_true.log().mean()))
    brier = float(((1 - p_true) ** 2 * 2).mean())  # two classes: (1-p)^2 + (0-(1-p))^2
    assert float(metrics.brier(probs, y)) == pytest.approx(brier)


def test_aurc_and_rejection_curve_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = torch.tensor([0, 1, 1, 1])  # sorted by confidence: 0.9 ok, 0.8 wrong, 0.7 ok, 0.6 wrong
    rejected, acc = metrics.accuracy_rejection_curve(probs, y)
    torch.testing.assert_close(rejected, torch.tensor([0.75, 0.5, 0.25, 0.0]))
    torch.testing.assert_close(acc, torch.tensor([1.0, 0.5, 2 / 3, 0.5]))
    assert float(metrics.aurc(probs, y)) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    # A confidence that ranks the errors last gives the smallest area.
    best = metrics.aurc(probs, y, confidence=torch.tensor([4.0, 1.0, 3.0, 2.0]))
    assert float(best) == pytest.approx((0 + 0 + 1 / 3 + 0.5) / 4)


def test_temperature_scaling_lowers_nll_keeps_accuracy():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 5, (3000,), generator=g)
    true = torch.randn(3000, 5, generator=g, dtype=torch.float64) + 1.5 * torch.nn.functional.one_hot(y, 5)
    y = torch.multinomial(true.softmax(-1), 1, generator=g)[:, 0]
    over = 2.5 * true + 0.3 * torch.randn(8, 3000, 5, generator=g, dtype=torch.float64)
    tau = diagnostics.fit_temperature(over[:, :2000], y[:2000])
    assert 2.0 < tau < 3.0
    before = over[:, 2000:].softmax(-1).mean(0)
    after = diagnostics.temperature_scale(over[:, 2000:], tau)
    yt = y[2000:]
    assert float(metrics.nll(after, yt)) < float(metrics.nll(before, yt)) - 0.05
    assert float(metrics.expected_calibration_error(after, yt)) < float(
        metrics.expected_calibration_error(before, yt))
    # A single temperature on one pass never changes the argmax.
    one = diagnostics.temperature_scale(over[0], tau)
    assert (one.argmax(-1) == over[0].argmax(-1)).all()


# ------------------------------------------------------------------------------- OOD


@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_and_fpr_match_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    positive = torch.rand(300, generator=g) < 0.3
    scores = torch.randn(300, generator=g, dtype=torch.float64) + positive.double()
    scores = (scores * 4).round() / 4  # ties
    assert float(metrics.auroc(scores, positive)) == pytest.approx(
        roc_auc_score(positive.numpy(), scores.numpy()), rel=1e-12)
    fpr, tpr, _ = roc_curve(positive.numpy(), scores.numpy(), drop_intermediate=False)
    for level in (0.5, 0.8, 0.95):
        ref = fpr[np.searchsorted(tpr, level - 1e-12)]
        assert float(metrics.fpr_at_tpr(scores, positive, level)) == pytest.approx(ref)
    with pytest.raises(ValueError, match="both positives and negatives"):
        metrics.auroc(scores, torch.zeros(300, dtype=torch.bool))


def test_ood_scores_and_metrics():
    logits_in, probs_in = _passes(seed=0, spread=0.3)
    logits_out = 0.1 * logits_in + torch.randn_like(logits_in)  # flat, disagreeing passes
    probs_out = logits_out.softmax(-1)
    s_in = diagnostics.ood_scores(probs_in, logits_in)
    s_out = diagnostics.ood_scores(probs_out, logits_out)
    assert set(s_in) == set(diagnostics.SCORES)
    torch.testing.assert_close(s_in["max_prob"], 1 - probs_in.mean(0).max(-1).values)
    torch.testing.assert_close(s_in["energy"], -torch.logsumexp(logits_in, -1).mean(0))
    m = diagnostics.ood_metrics(s_in, s_out)
    assert m["entropy"]["auroc"] > 0.9 and m["mutual_information"]["auroc"] > 0.9
    both = torch.cat([s_in["entropy"], s_out["entropy"]])
    lab = torch.cat([torch.zeros(50), torch.ones(50)])
    assert m["entropy"]["auroc"] == pytest.approx(roc_auc_score(lab.numpy(), both.numpy()))
    assert 0 <= m["energy"]["fpr95"] <= 1


# ------------------------------------------------------------------------------ plots


def test_write_diagnostic_plots(tmp_path):
    _, probs = _passes(seed=0, spread=0.5)
    y = probs.mean(0).argmax(-1)
    y[:10] = (y[:10] + 1) % 4
    _, probs_out = _passes(seed=3, spread=2.0)
    pred = infer.Prediction(outputs=None, mean=probs.mean(0), probs=probs)
    det = probs[0]
    paths = diagnostics.write_diagnostic_plots(
        tmp_path / "figs", {"mc": pred, "one pass": det}, y,
        ood={"mc": infer.Prediction(outputs=None, mean=probs_out.mean(0), probs=probs_out)})
    names = sorted(p.name for p in paths)
    assert names == ["confidence.png", "entropy.png", "mutual_information.png",
                     "rejection.png", "reliability.png"]
    for p in paths:
        assert p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG"


def test_temperature_is_bounded_when_validation_has_no_errors():
    logits = torch.tensor([[4.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    tau = diagnostics.fit_temperature(logits, torch.tensor([0, 1]))
    assert tau == pytest.approx(0.05, rel=1e-3)  # the NLL falls all the way to the bound
    with pytest.raises(ValueError, match="bounds"):
        diagnostics.fit_temperature(logits, torch.tensor([0, 1]), bounds=(1.0, 0.5))
