"""InferenceData from pyrocg models and predictions, through ArviZ's own functions with their
defaults, against hand computations."""

from __future__ import annotations

import dataclasses
import math
import warnings

import matplotlib
import numpy as np
import pytest
import torch

from pyrocg import infer, models
from pyrocg.data import Split, load_digits
from pyrocg.diagnostics import plot_loo_pit, plot_ppc, to_inference_data
from pyrocg.diagnostics.arviz import import_arviz

matplotlib.use("Agg")
az = import_arviz()

# ArviZ's own diagnostics of a barely trained net (Pareto k above its threshold, 0.5 at 80
# draws; WAIC's variance warning), and pandas' deprecation of sort_values(inplace=) inside
# az.compare.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto:UserWarning"),
    pytest.mark.filterwarnings("ignore:For one or more samples the posterior variance:UserWarning"),
    pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.sort_values"),
]

CHAINS, DRAWS = 4, 20
MODES = {"feedforward": {}, "pcff-sampling": {"rate": 0.3}, "mc-dropout": {}, "bayes": {}}


def small_digits():
    """A slice of digits: 300 training and 60 test images (fast tests)."""
    d = load_digits(seed=0)
    return dataclasses.replace(d, train=Split(d.train.x[:300], d.train.y[:300]),
                               test=Split(d.test.x[:60], d.test.y[:60]))


@pytest.fixture(scope="module")
def trained():
    data = small_digits()
    out = {}
    for mode, kw in MODES.items():
        torch.manual_seed(0)
        net = models.mlp(64, [16], 10, dropout=0.3 if mode == "mc-dropout" else 0.0)
        model = infer.CGModel(net, infer.Categorical(len(data.train)), mode=mode, **kw)
        infer.fit(model, data, infer.TrainConfig(epochs=3, lr=1e-2, progress=False,
                                                 eval_samples=2))
        torch.manual_seed(1)
        out[mode] = (model, to_inference_data(model, data, chains=CHAINS, draws=DRAWS))
    return data, out


def test_groups_dims_coords(trained):
    data, out = trained
    idata = out["mc-dropout"][1]
    n, m = len(data.train), len(data.test)
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood",
                                   "observed_data", "constant_data", "predictions",
                                   "predictions_constant_data"}
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "datum")
    assert idata.log_likelihood["y"].shape == (CHAINS, DRAWS, n)
    pp = idata.posterior_predictive["y"]
    assert pp.dims == ("chain", "draw", "datum") and pp.dtype.kind == "i"  # labels
    assert 0 <= int(pp.min()) and int(pp.max()) <= 9
    np.testing.assert_array_equal(idata.observed_data["y"].values, data.train.y.numpy())
    assert idata.constant_data["x"].dims == ("datum", "feature")
    assert idata.predictions["y"].dims == ("chain", "draw", "test_datum")
    assert idata.predictions["probs"].shape == (CHAINS, DRAWS, m, 10)
    assert idata.predictions_constant_data["x"].dims == ("test_datum", "feature")
    np.testing.assert_array_equal(idata.posterior.coords["chain"], np.arange(CHAINS))
    np.testing.assert_array_equal(idata.predictions.coords["class"], np.arange(10))
    # The posterior's per-pass total equals the pointwise log-likelihoods summed.
    np.testing.assert_allclose(idata.posterior["train_log_lik"].values,
                               idata.log_likelihood["y"].values.sum(-1))
    # Drawn labels follow the passes' probabilities: mostly the network's own predictions.
    probs = idata.predictions["probs"].values
    agree = (idata.predictions["y"].values == probs.argmax(-1)).mean()
    assert agree == pytest.approx(probs.max(-1).mean(), abs=0.05)


def test_netcdf_round_trip(trained, tmp_path):
    idata = trained[1]["bayes"][1]
    path = tmp_path / "idata.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        for name, var in idata[group].data_vars.items():
            np.testing.assert_array_equal(back[group][name].values, var.values)
            assert back[group][name].dims == var.dims


def _hand_lppd(ll: np.ndarray) -> np.ndarray:
    s = ll.reshape(-1, ll.shape[-1])
    return np.logaddexp.reduce(s, axis=0) - math.log(s.shape[0])


def test_loo_and_waic_match_hand_computation(trained):
    for mode, (_, idata) in trained[1].items():
        ll = idata.log_likelihood["y"].values
        lppd = _hand_lppd(ll)
        loo, waic = az.loo(idata, pointwise=True), az.waic(idata, pointwise=True)
        assert loo.elpd_loo + loo.p_loo == pytest.approx(lppd.sum(), rel=1e-10)
        # WAIC by hand: lppd minus the per-datum variance over passes (ArviZ: ddof=0).
        p_waic = ll.reshape(-1, ll.shape[-1]).var(0)
        assert waic.elpd_waic == pytest.approx((lppd - p_waic).sum(), rel=1e-10)
        assert waic.p_waic == pytest.approx(p_waic.sum(), rel=1e-10)
        # Importance-sampling LOO without smoothing: -log mean_t exp(-ll_t) per datum; the
        # passes are iid, so PSIS stays close to it.
        s = -ll.reshape(-1, ll.shape[-1])
        is_loo = -(np.logaddexp.reduce(s, axis=0) - math.log(s.shape[0]))
        if mode == "feedforward":  # a point mass: LOO is the plug-in, nothing to subtract
            assert loo.p_loo == pytest.approx(0, abs=1e-9) and waic.p_waic == 0
            assert loo.elpd_loo == pytest.approx(lppd.sum(), rel=1e-12)
        else:
            assert loo.p_loo > 0 and waic.p_waic > 0
            assert loo.elpd_loo == pytest.approx(is_loo.sum(), rel=0.02)
            assert loo.elpd_loo < lppd.sum()


def test_compare_four_modes(trained):
    idatas = {mode: idata for mode, (_, idata) in trained[1].items()}
    table = az.compare(idatas)
    assert set(table.index) == set(MODES) and sorted(table["rank"]) == [0, 1, 2, 3]
    assert np.isfinite(table["elpd_loo"]).all()
    assert table["elpd_loo"].is_monotonic_decreasing
    assert table["weight"].sum() == pytest.approx(1)
    assert table.loc["feedforward", "p_loo"] == pytest.approx(0, abs=1e-9)


def test_summary_ess_rhat_on_iid_passes(trained):
    idata = trained[1]["mc-dropout"][1]
    summary = az.summary(idata)
    assert list(summary.index) == ["train_log_lik"]
    # Independent passes: r_hat near 1, bulk ESS near the number of draws.
    assert abs(summary.loc["train_log_lik", "r_hat"] - 1) < 0.05
    assert summary.loc["train_log_lik", "ess_bulk"] > 0.5 * CHAINS * DRAWS
    ess, rhat = az.ess(idata), az.rhat(idata)
    assert float(ess["train_log_lik"]) > 0.5 * CHAINS * DRAWS
    assert abs(float(rhat["train_log_lik"]) - 1) < 0.05


def test_bayesian_weight_draws_in_posterior(trained):
    model, idata = trained[1]["bayes"]
    w = idata.posterior["hidden1_weight"]
    assert w.shape == (CHAINS, DRAWS) + tuple(model.net.hidden1.weight.shape)
    summary = az.summary(idata, var_names=["hidden1_weight"])
    assert summary["r_hat"].between(0.9, 1.1).mean() > 0.95
    # The draws scatter around the guide's locations with its scales.
    loc = model.guide.loc("hidden1.weight").detach().numpy()
    scale = model.guide.scale("hidden1.weight").detach().numpy()
    z = (w.values - loc) / scale  # standardised by the guide: N(0, 1) draws
    assert abs(z.mean()) < 0.05 and z.std() == pytest.approx(1, abs=0.05)


def test_plots_with_defaults(trained, tmp_path):
    idatas = {mode: idata for mode, (_, idata) in trained[1].items()}
    import matplotlib.pyplot as plt

    axes = az.plot_ppc(idatas["mc-dropout"])
    assert axes is not None
    az.plot_loo_pit(idatas["mc-dropout"], y="y")
    plt.close("all")
    for fn, name in ((plot_ppc, "ppc.png"), (plot_loo_pit, "loo_pit.png")):
        path = fn({k: idatas[k] for k in ("pcff-sampling", "mc-dropout")}, tmp_path / name)
        assert path.stat().st_size > 10_000


def test_from_predictions_train_and_test(trained):
    data, out = trained
    model = out["mc-dropout"][0]
    torch.manual_seed(0)
    pred = infer.predict(model, data.train.x, data.train.y, num_samples=40)
    test = infer.predict(model, data.test.x, num_samples=40)
    idata = to_inference_data(pred, data.train.y, chains=2, test=test, x_test=data.test.x)
    values = idata.log_likelihood["y"].values.reshape(40, -1)
    np.testing.assert_allclose(values, pred.log_lik.double().numpy())
    assert idata.predictions["probs"].shape == (2, 20, len(data.test), 10)
    np.testing.assert_allclose(idata.predictions["probs"].values.reshape(40, -1, 10),
                               test.probs.numpy())
    assert az.loo(idata).elpd_loo < 0
    with pytest.raises(ValueError, match="cannot be split into 3 chains"):
        to_inference_data(pred, data.train.y, chains=3)
    with pytest.raises(TypeError, match="CGModel or a Prediction"):
        to_inference_data(data.train.x)


def test_deterministic_prediction_is_repeated(trained):
    data, out = trained
    pred = infer.predict(out["feedforward"][0], data.train.x, data.train.y)
    idata = to_inference_data(pred, data.train.y, chains=2, draws=5)
    assert idata.log_likelihood["y"].shape == (2, 5, len(data.train))
    ll = idata.log_likelihood["y"].values
    assert (ll == ll[:1, :1]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k = inf for a point mass
        assert az.loo(idata).elpd_loo == pytest.approx(float(pred.log_lik.double().sum()))


def test_regression_gaussian_likelihood():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(120, generator=g)
    torch.manual_seed(0)
    model = infer.CGModel(models.mlp(3, [16], 1, dropout=0.2), infer.Gaussian(100, scale=0.5),
                          mode="mc-dropout")
    idata = to_inference_data(model, (x[:100], y[:100]), test=x[100:], chains=2, draws=30)
    pp = idata.posterior_predictive["y"]
    assert pp.dtype.kind == "f" and pp.shape == (2, 30, 100)
    assert idata.predictions["mean"].shape == (2, 30, 20)
    # Targets are drawn with the likelihood's noise around each pass's mean.
    torch.manual_seed(1)
    pred = infer.predict(model, x[:100], y[:100], num_samples=60)
    by_hand = to_inference_data(pred, y[:100], chains=2, seed=0)
    assert az.waic(by_hand).elpd_waic == pytest.approx(
        (_hand_lppd(by_hand.log_likelihood["y"].values)
         - by_hand.log_likelihood["y"].values.reshape(60, -1).var(0)).sum())
    spread = by_hand.posterior_predictive["y"].values.reshape(60, -1) - pred.outputs[..., 0].numpy()
    assert spread.std() == pytest.approx(0.5, rel=0.1)
