"""Regression in Gal & Ghahramani's UCI protocol: input dropout, the length-scale prior,
the fixed-precision likelihood, standardised splits read from Gal's file format, the MC
test log-likelihood — each against plain PyTorch / NumPy or a hand computation."""

import math
import re
from pathlib import Path

import numpy as np
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from pyrocg import infer, metrics, models, modes
from pyrocg.data import make_synthetic_uci, read_uci, write_uci

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def uci_dir(tmp_path):
    return make_synthetic_uci(tmp_path / "syn", n=120, features=3, n_splits=2, seed=3)


# ---------------------------------------------------------------------- network, prior


def test_mlp_input_dropout_adds_drop0_and_keeps_the_default_sites():
    assert list(models.mlp(4, [8, 8], 2, dropout=0.1)._modules) == [
        "hidden1", "drop1", "hidden2", "drop2", "out"]
    net = models.mlp(4, [8, 8], 2, dropout=0.1, input_dropout=0.2)
    assert list(net._modules) == ["drop0", "hidden1", "drop1", "hidden2", "drop2", "out"]
    assert net.drop0.p == 0.2 and net.drop1.p == 0.1
    # Input dropout alone, without hidden dropout.
    assert list(models.mlp(4, [8], 2, input_dropout=0.5)._modules) == ["drop0", "hidden1", "out"]
    for bad in (-0.1, 1.0, "0.1", True):
        with pytest.raises(ValueError, match="input_dropout"):
            models.mlp(4, [8], 2, input_dropout=bad)


def test_length_scale_prior_is_gals_weight_decay():
    l, p, n, tau = 0.7, 0.1, 50, 0.3
    lam = l**2 * (1 - p) / (2 * n * tau)
    prior = modes.GaussianPrior.from_length_scale(l, p, n, tau)
    assert prior.weight_decay(n) == pytest.approx(2 * lam, rel=1e-12)
    assert prior.scale == pytest.approx(math.sqrt(tau) / (l * math.sqrt(1 - p)), rel=1e-12)
    assert not prior.biases
    for kwargs in ({"length_scale": 0.0}, {"tau": -1.0}, {"dropout": 1.0},
                   {"dataset_size": 0}, {"tau": math.inf}):
        args = {"length_scale": l, "dropout": p, "dataset_size": n, "tau": tau, **kwargs}
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            modes.GaussianPrior.from_length_scale(**args)


def test_map_objective_equals_gals_objective():
    # CGModel.loss with a unit-variance likelihood and the length-scale prior is
    # (1/2) mean (y - f)^2 + lambda sum ||W||^2 (weights only), plus log(2 pi)/2.
    torch.manual_seed(0)
    l, p, tau, n = 3.0, 0.05, 0.2, 40
    net = models.mlp(3, [6], 1)
    model = infer.CGModel(net, infer.Gaussian(n, 1.0, learn_scale=False), modes.FeedForward(),
                          prior=modes.GaussianPrior.from_length_scale(l, p, n, tau))
    x, y = torch.randn(10, 3), torch.randn(10)
    lam = l**2 * (1 - p) / (2 * n * tau)
    with torch.no_grad():
        h = torch.relu(x @ net.hidden1.weight.T + net.hidden1.bias)
        f = (h @ net.out.weight.T + net.out.bias)[:, 0]
        gal = 0.5 * (y - f).pow(2).mean() + lam * (net.hidden1.weight.pow(2).sum()
                                                    + net.out.weight.pow(2).sum())
        assert float(model.loss(x, y)) == pytest.approx(
            float(gal) + 0.5 * math.log(2 * math.pi), rel=1e-6)
        assert lam * net.hidden1.weight.pow(2).sum() > 1e-2  # the prior term matters here


def test_gaussian_from_precision_is_fixed_and_in_standardised_units():
    lik = infer.Gaussian.from_precision(10, tau=0.25, target_std=4.0)
    assert float(lik.scale) == pytest.approx(0.5)  # 1 / (sqrt(0.25) * 4)
    assert not any(p.requires_grad for p in lik.parameters())
    out, y = torch.randn(7, 5, 1), torch.randn(5)
    assert torch.allclose(lik.log_likelihood(out, y), lik.dist(out).log_prob(y))
    assert float(infer.Gaussian.from_precision(10, 2.0).scale) == pytest.approx(2**-0.5)
    for kwargs in ({"tau": 0.0}, {"tau": 1.0, "target_std": 0.0}):
        with pytest.raises(ValueError, match=next(reversed(kwargs))):
            infer.Gaussian.from_precision(10, **kwargs)


# --------------------------------------------------------------------- data, metrics


def _gal_split(root: Path, k: int, validation: bool):
    """Gal's experiment.py + net.py reading and normalisation, in NumPy."""
    data = np.loadtxt(root / "data.txt")
    x = data[:, np.loadtxt(root / "index_features.txt").astype(int)]
    y = data[:, int(np.loadtxt(root / "index_target.txt"))]
    tr = np.loadtxt(root / f"index_train_{k}.txt").astype(int)
    te = np.loadtxt(root / f"index_test_{k}.txt").astype(int)
    va = tr[:0]
    if validation:
        n = int(0.8 * len(tr))
        tr, va = tr[:n], tr[n:]
    mx, sx = x[tr].mean(0), x[tr].std(0)
    sx[sx == 0] = 1
    my, sy = y[tr].mean(), y[tr].std()
    return {name: ((x[i] - mx) / sx, (y[i] - my) / sy, y[i])
            for name, i in (("train", tr), ("val", va), ("test", te))}, my, sy


@pytest.mark.parametrize("validation", [False, True])
def test_splits_standardised_like_gal_and_round_trip(uci_dir, validation):
    data = read_uci(uci_dir).split(1, validation=validation)
    ref, my, sy = _gal_split(uci_dir, 1, validation)
    assert data.target_mean == pytest.approx(my, rel=1e-12)
    assert data.target_std == pytest.approx(sy, rel=1e-12)
    for name, split in data.splits().items():
        x, y, raw = ref[name]
        assert len(split) == len(raw) and (len(raw) > 0 or name == "val")
        assert np.allclose(split.x.numpy(), x, atol=1e-5)
        assert np.allclose(split.y.numpy(), y, atol=1e-5)
        # Round trip: back to original units and standardised again.
        back = data.unstandardize_target(split.y)
        assert np.allclose(back.numpy(), raw, rtol=1e-5)
        assert torch.allclose(data.standardize_target(back), split.y, atol=1e-5)
    assert abs(float(data.train.y.mean())) < 1e-5
    assert float(data.train.y.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    if validation:  # the last 20% of the training indices, in file order, validate
        tr = np.loadtxt(uci_dir / "index_train_1.txt").astype(int)
        assert len(data.val) == len(tr) - int(0.8 * len(tr))


def test_gal_test_log_likelihood_by_hand():
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(6, 4, generator=g, dtype=torch.float64) * 2 + 5
    y = torch.randn(4, generator=g, dtype=torch.float64) + 5
    tau = 0.3
    hand = []
    for i in range(4):
        dens = sum(math.sqrt(tau / (2 * math.pi)) * math.exp(-tau / 2 * (float(y[i]) - float(s)) ** 2)
                   for s in samples[:, i]) / 6
        hand.append(math.log(dens))
    pointwise = metrics.mc_gaussian_log_likelihood(samples, y, tau, reduce=False)
    assert np.allclose(pointwise.numpy(), hand, rtol=1e-12)
    assert float(metrics.mc_gaussian_log_likelihood(samples, y, tau)) == pytest.approx(
        np.mean(hand), rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        metrics.mc_gaussian_log_likelihood(samples[:, :3], y, tau)
    with pytest.raises(ValueError, match="tau"):
        metrics.mc_gaussian_log_likelihood(samples, y, 0.0)


# ------------------------------------------------- the protocol vs plain PyTorch


def _plain_copy(net, p: float) -> nn.Sequential:
    plain = nn.Sequential(nn.Dropout(p), nn.Linear(*net.hidden1.weight.shape[::-1]), nn.ReLU(),
                          nn.Dropout(p), nn.Linear(*net.out.weight.shape[::-1]))
    with torch.no_grad():
        for mine, theirs in ((plain[1], net.hidden1), (plain[4], net.out)):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
    return plain


def _masks(seed: int, shape0, shape1, p: float) -> dict[str, torch.Tensor]:
    """The masks nn.Dropout draws in a plain forward pass under ``seed`` (the Linear and
    ReLU in between draw nothing)."""
    torch.manual_seed(seed)
    return {"drop0": nn.functional.dropout(torch.ones(shape0), p),
            "drop1": nn.functional.dropout(torch.ones(shape1), p)}


def test_protocol_matches_plain_pytorch_under_the_same_masks(uci_dir):
    p, tau, l, hidden, steps, batch = 0.1, 0.5, 0.5, 16, 12, 32
    data = read_uci(uci_dir).split(0, validation=True)
    x, y = data.train
    n, d = x.shape
    torch.manual_seed(0)
    net = models.mlp(d, [hidden], 1, dropout=p, input_dropout=p)
    plain = _plain_copy(net, p)
    model = infer.CGModel(net, infer.Gaussian(n, 1.0, learn_scale=False), modes.MCDropout(),
                          prior=modes.GaussianPrior.from_length_scale(l, p, n, tau))
    lam = l**2 * (1 - p) / (2 * n * tau)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-2)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    for step in range(steps):  # Gal's training, both sides on the same batches and masks
        idx = order[(step * batch) % n:][:batch]
        xb, yb = x[idx], y[idx]
        torch.manual_seed(100 + step)
        plain.train()
        loss_plain = 0.5 * (plain(xb)[:, 0] - yb).pow(2).mean() + lam * (
            plain[1].weight.pow(2).sum() + plain[4].weight.pow(2).sum())
        with poutine.condition(data=_masks(100 + step, xb.shape, (len(xb), hidden), p)):
            loss = model.loss(xb, yb)
        for o, v in ((opt, loss), (opt_plain, loss_plain)):
            o.zero_grad()
            v.backward()
            o.step()
    for mine, theirs in ((net.hidden1, plain[1]), (net.out, plain[4])):
        assert torch.allclose(mine.weight, theirs.weight, atol=1e-5)
        assert torch.allclose(mine.bias, theirs.bias, atol=1e-5)
    assert not torch.allclose(net.out.weight, _plain_copy(models.mlp(d, [hidden], 1), p)[4].weight)

    # Test: T passes, plain nn.Dropout in train mode vs pyrocg conditioned on its masks.
    T, xt = 50, data.test.x
    torch.manual_seed(7)
    with torch.no_grad():
        plain_passes = plain(xt.expand(T, *xt.shape))[..., 0]
    lik = infer.Gaussian.from_precision(n, tau, data.target_std)
    mc = infer.CGModel(net, lik, modes.MCDropout())
    with poutine.condition(data=_masks(7, (T, *xt.shape), (T, len(xt), hidden), p)):
        pred = infer.predict(mc, xt, data.test.y, num_samples=T, chunk_size=T)
    assert torch.allclose(pred.outputs[..., 0], plain_passes, atol=1e-5)
    assert plain_passes.std(0).min() > 0  # the passes differ: masks really vary

    # Original units: RMSE and Gal's test LL (NumPy, float64) agree.
    ours = data.unstandardize_target(pred.outputs[..., 0]).double()
    theirs = (plain_passes.double() * data.target_std + data.target_mean).numpy()
    y_raw = data.unstandardize_target(data.test.y).double()
    yt = y_raw.numpy()
    a = -0.5 * tau * (yt[None] - theirs) ** 2
    gal_ll = a.max(0) + np.log(np.exp(a - a.max(0)).sum(0)) - math.log(T) - 0.5 * math.log(
        2 * math.pi) + 0.5 * math.log(tau)
    ll = metrics.mc_gaussian_log_likelihood(ours, y_raw, tau, reduce=False)
    assert np.allclose(ll.numpy(), gal_ll, atol=1e-4)
    # predict's pointwise log-likelihood of standardised targets: the same, shifted by
    # the change of units log(target_std).
    assert np.allclose(pred.pointwise_log_lik.double().numpy() - math.log(data.target_std),
                       gal_ll, atol=1e-4)
    rmse_plain = float(np.sqrt(((theirs.mean(0) - yt) ** 2).mean()))
    assert float(metrics.rmse(ours.mean(0), y_raw)) == pytest.approx(rmse_plain, rel=1e-5)
    # predict's variance, in original units: 1/tau plus the spread of the passes.
    var = pred.variance.double() * data.target_std**2
    assert np.allclose(var.numpy(), 1 / tau + theirs.var(0), rtol=1e-4)


def test_many_passes_are_one_vectorised_prediction(uci_dir):
    data = read_uci(uci_dir).split(0)
    net = models.mlp(3, [8], 1, dropout=0.1, input_dropout=0.1)
    mc = infer.CGModel(net, infer.Gaussian.from_precision(len(data.train), 1.0, data.target_std),
                       modes.MCDropout())
    pred = infer.predict(mc, data.test.x, num_samples=10_000)
    assert pred.outputs.shape == (10_000, len(data.test), 1)
    # 10,000 distinct input masks per datum would be astronomically unlikely to repeat
    # if passes shared masks; the MC mean is near the weight-averaged prediction.
    assert pred.outputs[:, 0, 0].unique().numel() > 10
    ff = infer.predict(infer.CGModel(net, mc.likelihood, modes.Dropout()), data.test.x).mean
    assert torch.allclose(pred.mean, ff, atol=0.1)


# ----------------------------------------------------------------------- file errors


def _message(err) -> str:
    return str(err.value)


def test_reader_errors_name_the_file_and_line(uci_dir):
    with pytest.raises(FileNotFoundError, match="no such UCI data directory"):
        read_uci(uci_dir / "absent")

    def broken(name: str, text: str | None):
        path = uci_dir / name
        saved = path.read_text() if path.exists() else None
        if text is None:
            path.unlink()
        else:
            path.write_text(text)
        try:
            with pytest.raises((ValueError, FileNotFoundError)) as err:
                read_uci(uci_dir)
        finally:
            if saved is not None:
                path.write_text(saved)
            elif path.exists():
                path.unlink()
        assert str(uci_dir / name) in _message(err), _message(err)
        return _message(err)

    rows = (uci_dir / "data.txt").read_text().splitlines()
    assert "missing" in broken("data.txt", None)
    assert "missing" in broken("index_test_1.txt", None)
    assert "missing" in broken("index_features.txt", None)
    msg = broken("data.txt", "\n".join(rows[:4] + ["1.0 2.0 abc 4.0"] + rows[5:]) + "\n")
    assert re.search(r"line 5: non-numeric value 'abc' in column 2", msg), msg
    msg = broken("data.txt", "\n".join(rows[:2] + ["1.0 2.0 3.0"] + rows[3:]) + "\n")
    assert "line 3 has 3 fields, expected 4" in msg
    msg = broken("data.txt", "\n".join(rows[:6] + ["1 2 nan 4"] + rows[7:]) + "\n")
    assert "line 7: non-finite value 'nan'" in msg
    msg = broken("index_train_0.txt", "0\n1\n120\n")
    assert "line 3: index 120 out of range [0, 120)" in msg
    msg = broken("index_train_0.txt", "0\n2.5\n")
    assert "line 2: index '2.5' is not an integer" in msg
    msg = broken("index_train_0.txt", "0\nx\n")
    assert "line 2: non-numeric index 'x'" in msg
    msg = broken("index_train_0.txt", "0\n1\n0\n")
    assert "line 3: index 0 repeats line 1" in msg
    msg = broken("index_features.txt", "0\n1\n9\n")
    assert "index 9 out of range [0, 4)" in msg
    msg = broken("index_target.txt", "2\n")
    assert "also listed in index_features.txt" in msg
    test0 = (uci_dir / "index_test_0.txt").read_text().split()
    msg = broken("index_train_0.txt", f"{test0[0]}\n")
    assert f"index_test_0.txt: row {test0[0]} is also in {uci_dir / 'index_train_0.txt'}" in msg
    assert "no indices" in broken("index_test_0.txt", "\n")
    # A settings file is read (and checked) too.
    assert "non-numeric value 'fifty'" in broken("n_hidden.txt", "fifty\n")
    # The directory is intact again after the broken variants.
    assert read_uci(uci_dir).num_splits == 2


def test_write_read_round_trip_and_splits_out_of_range(tmp_path):
    x = np.arange(12.0).reshape(6, 2) * 1e3
    y = np.array([1.5, -2.0, 3.25, 0.0, 7.0, 1e-3])
    root = write_uci(tmp_path, x, y, [(np.array([0, 1, 2, 3]), np.array([4, 5]))],
                     {"tau_values": [0.1, 0.2], "n_hidden": [50]})
    uci = read_uci(root)
    assert np.array_equal(uci.x, x) and np.array_equal(uci.y, y)
    assert uci.settings == {"n_hidden": [50], "tau_values": [0.1, 0.2]}
    with pytest.raises(ValueError, match=r"split must be an int in \[0, 1\)"):
        uci.split(1)


# ------------------------------------------------------------------------------ docs


def test_regression_docs_run():
    text = (DOCS / "regression.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"regression.md[block {i}]", "exec"), {})
        except Exception as err:
            raise AssertionError(f"regression.md block {i} failed: {err!r}") from err
