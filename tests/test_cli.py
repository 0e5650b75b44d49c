"""The pyrocg command as a user runs it."""

import json
import os
import signal
import time

import pytest
import torch

from pyrocg.cli import main


def test_train_checkpoint_evaluate_round_trip(tmp_path, capsys):
    ck, out = tmp_path / "run.pt", tmp_path / "train.json"
    rc = main(["train", "--dataset", "digits", "--model", "mlp", "--mode", "mc-dropout",
               "--epochs", "3", "--samples", "5", "--quiet", "--checkpoint", str(ck),
               "--json", str(out)])
    assert rc == 0
    trained = json.loads(out.read_text())
    assert trained["test"]["accuracy"] > 0.8 and len(trained["history"]) == 3
    ev = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ck), "--samples", "5", "--json", str(ev),
                 "--quiet"]) == 0
    evaluated = json.loads(ev.read_text())["test"]
    # Same weights, same seedless-but-stochastic predictive: accuracy within MC noise.
    assert abs(evaluated["accuracy"] - trained["test"]["accuracy"]) < 0.05
    assert "accuracy=" in capsys.readouterr().out


def test_train_bayes_with_local_reparametrisation_round_trip(tmp_path):
    ck, out = tmp_path / "bayes.pt", tmp_path / "bayes.json"
    assert main(["train", "--mode", "bayes", "--local-reparam", "--epochs", "4", "--lr", "0.01",
                 "--samples", "10", "--quiet", "--checkpoint", str(ck), "--json", str(out)]) == 0
    trained = json.loads(out.read_text())["test"]
    assert trained["accuracy"] > 0.8
    ev = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ck), "--samples", "10", "--json", str(ev),
                 "--quiet"]) == 0
    assert abs(json.loads(ev.read_text())["test"]["accuracy"] - trained["accuracy"]) < 0.05


def test_resume_continues_to_more_epochs(tmp_path):
    ck = tmp_path / "run.pt"
    args = ["train", "--epochs", "1", "--quiet", "--checkpoint", str(ck), "--samples", "2"]
    assert main(args) == 0
    out = tmp_path / "r.json"
    assert main(["train", "--epochs", "2", "--quiet", "--checkpoint", str(ck), "--resume",
                 "--samples", "2", "--json", str(out)]) == 0
    assert [h["epoch"] for h in json.loads(out.read_text())["history"]] == [1, 2]


def test_demo_writes_json_plots_and_arviz(tmp_path, capsys):
    """One short demo (1 epoch, 4 passes; five modes) with every output: JSON, the figures
    of every mode and the MC-dropout run's InferenceData."""
    out, nc, plots = tmp_path / "demo.json", tmp_path / "mc.nc", tmp_path / "plots"
    assert main(["demo", "--epochs", "1", "--samples", "4", "--quiet", "--json", str(out),
                 "--plots", str(plots), "--arviz", str(nc)]) == 0
    results = json.loads(out.read_text())
    assert results["dataset"] == "digits"
    assert set(results["results"]) == {"feedforward", "pcff", "dropout", "mc-dropout", "bayes"}
    for r in results["results"].values():
        assert set(r) >= {"accuracy", "nll", "ece", "seconds"}
    assert (plots / "reliability.png").stat().st_size > 1000
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert len(pngs) >= 4 and {"entropy.png", "ppc.png"} <= set(pngs), pngs
    assert all((plots / p).stat().st_size > 1000 for p in pngs)
    printed = capsys.readouterr().out
    assert f"wrote {nc}" in printed and f"wrote {plots / 'confidence.png'}" in printed

    from pyrocg.diagnostics.arviz import import_arviz

    idata = import_arviz().from_netcdf(nc)
    assert {"posterior", "log_likelihood", "posterior_predictive",
            "observed_data"} <= set(idata.groups())
    assert idata.log_likelihood["y"].sizes["chain"] * idata.log_likelihood["y"].sizes["draw"] == 4


def _diagnose_json(tmp_path, name, argv):
    out = tmp_path / f"{name}.json"
    assert main(["diagnose", "--quiet", "--json", str(out), *argv]) == 0
    return json.loads(out.read_text())


def test_diagnose_a_checkpoint_matches_metrics_and_evaluate(tmp_path, capsys):
    """`pyrocg diagnose` of a `pyrocg train` checkpoint: its figures are pyrocg.metrics of
    infer.predict under the same seed, its accuracy and NLL those of `evaluate`; it prints
    the table and writes the figures and the InferenceData."""
    import pyro

    from pyrocg import infer, metrics
    from pyrocg.cli.commands import load_checkpoint_model
    from pyrocg.diagnostics.arviz import import_arviz

    ck = tmp_path / "run.pt"
    assert main(["train", "--mode", "mc-dropout", "--epochs", "2", "--batch-size", "256",
                 "--samples", "2", "--quiet", "--checkpoint", str(ck)]) == 0
    plots, nc = tmp_path / "plots", tmp_path / "d.nc"
    capsys.readouterr()
    got = _diagnose_json(tmp_path, "diag", [
        "--checkpoint", str(ck), "--samples", "8", "--seed", "3", "--plots", str(plots),
        "--arviz", str(nc), "--ood", "noise", "inverted", "rotated"])
    printed = capsys.readouterr().out
    for figure in ("accuracy", "nll", "ece", "mce", "brier", "aurc", "mean_predictive_entropy",
                   "mean_mutual_information"):
        assert figure in printed
    assert "noise" in printed and "rotated" in printed and "AUROC" in printed

    _, _, data, model = load_checkpoint_model(ck, torch.device("cpu"))
    pyro.set_rng_seed(3)
    pred = infer.predict(model, data.test.x, data.test.y, 8)
    expected = metrics.classification_metrics(pred.mean, data.test.y)
    test = got["test"]
    assert {k: test[k] for k in expected} == expected
    assert test["mean_mutual_information"] > 0 and got["samples"] == 8
    for k in ("accuracy", "ece", "mce", "aurc"):
        assert 0 <= test[k] <= 1
    assert set(got["ood"]) == {"noise", "inverted", "rotated"}
    for scores in got["ood"].values():
        assert set(scores) == {"max_prob", "entropy", "mutual_information", "energy"}
        assert all(0 <= s["auroc"] <= 1 and 0 <= s["fpr95"] <= 1 for s in scores.values())

    ev = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ck), "--samples", "8", "--seed", "3",
                 "--json", str(ev)]) == 0
    evaluated = json.loads(ev.read_text())["test"]
    assert evaluated["accuracy"] == test["accuracy"]
    assert abs(evaluated["nll"] - test["nll"]) < 1e-4  # log-likelihood vs probabilities

    pngs = {p.name for p in plots.glob("*.png")}
    assert {"reliability.png", "confidence.png", "rejection.png", "entropy.png",
            "mutual_information.png", "ppc.png", "loo_pit.png", "ood.png"} == pngs
    assert sorted(got["files"]) == sorted([str(plots / p) for p in pngs] + [str(nc)])
    idata = import_arviz().from_netcdf(nc)
    assert {"posterior", "log_likelihood", "posterior_predictive", "observed_data",
            "predictions"} <= set(idata.groups())


def test_diagnose_a_regression_model(tmp_path, capsys):
    """A table with a numeric target: RMSE, NLL (as `evaluate`'s), interval coverage; the
    figures and OOD sets are for classifiers (exit 2, one line)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(80, 2, generator=g)
    y = x.sum(1) + 0.1 * torch.randn(80, generator=g)
    table = tmp_path / "reg.csv"
    table.write_text("a,b,y\n" + "".join(f"{a:.4f},{b:.4f},{t:.4f}\n"
                                          for (a, b), t in zip(x.tolist(), y.tolist(),
                                                               strict=True)))
    ck = tmp_path / "reg.pt"
    assert main(["train", "--dataset", "table", "--table", str(table), "--mode", "mc-dropout",
                 "--epochs", "2", "--samples", "2", "--quiet", "--checkpoint", str(ck)]) == 0
    got = _diagnose_json(tmp_path, "reg", ["--checkpoint", str(ck), "--samples", "8",
                                           "--seed", "1", "--arviz", str(tmp_path / "r.nc")])
    ev = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ck), "--samples", "8", "--seed", "1",
                 "--json", str(ev)]) == 0
    evaluated = json.loads(ev.read_text())["test"]
    assert got["test"]["rmse"] == pytest.approx(evaluated["rmse"], abs=1e-6)
    assert got["test"]["nll"] == pytest.approx(evaluated["nll"], abs=1e-6)
    assert 0 <= got["test"]["coverage_90"] <= 1 and got["test"]["mean_model_variance"] > 0
    capsys.readouterr()
    assert main(["diagnose", "--checkpoint", str(ck), "--plots", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--plots: the diagnostic figures are for classifiers" in err
    assert not (tmp_path / "p").exists()


def test_diagnose_a_deterministic_model(tmp_path):
    """Feed-forward predicts with one pass: no epistemic part, no PPC / LOO-PIT figures."""
    ck = tmp_path / "ff.pt"
    assert main(["train", "--epochs", "1", "--batch-size", "256", "--samples", "2", "--quiet",
                 "--checkpoint", str(ck)]) == 0
    got = _diagnose_json(tmp_path, "ff", ["--checkpoint", str(ck), "--ood", "noise",
                                          "--plots", str(tmp_path / "p")])
    assert got["samples"] == 1 and got["test"]["mean_mutual_information"] == 0
    assert 0.5 < got["ood"]["noise"]["entropy"]["auroc"] <= 1
    names = {p.name for p in (tmp_path / "p").glob("*.png")}
    assert "reliability.png" in names and "ppc.png" not in names and len(names) == 6


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["train", "--rate", "1.5"], 2, "--rate must be in [0, 1]"),
        (["train", "--mode", "mc-dropout", "--p", "1.0"], 2, "--p must be in [0, 1)"),
        (["train", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent", "--quiet"], 2,
         "apt-get install dataset-fashion-mnist"),
        (["train", "--dataset", "table", "--quiet"], 2, "--table"),
        (["evaluate", "--checkpoint", "/nonexistent.pt"], 2, "--checkpoint /nonexistent.pt: no such"),
        (["train", "--model", "cnn", "--dataset", "table", "--table", "t.csv", "--quiet"], 2,
         "--model cnn needs image inputs; --dataset table"),
        (["train", "--mode", "pcff", "--local-reparam", "--quiet"], 2,
         "--local-reparam applies only to bayes"),
        (["train", "--mode", "mc-dropout", "--p", "0", "--quiet"], 2,
         "--mode mc-dropout needs them"),
        (["train", "--mode", "gibbs"], 2, "argument --mode: invalid choice: 'gibbs'"),
    ],
)
def test_bad_arguments_give_clear_errors(argv, code, message, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_resume_refuses_another_mode_or_model_listing_the_differences(tmp_path, capsys):
    ck = tmp_path / "run.pt"
    assert main(["train", "--epochs", "1", "--quiet", "--checkpoint", str(ck), "--samples", "2",
                 "--batch-size", "256"]) == 0
    capsys.readouterr()
    before = ck.read_bytes()
    assert main(["train", "--epochs", "2", "--quiet", "--checkpoint", str(ck), "--resume",
                 "--mode", "pcff", "--model", "cnn", "--samples", "2"]) == 2
    err = capsys.readouterr().err
    assert "--mode pcff (checkpoint: feedforward)" in err
    assert "--model cnn (checkpoint: mlp)" in err and err.count("\n") == 1
    assert ck.read_bytes() == before  # the refused run touched nothing


def test_resume_applies_and_reports_more_epochs_refuses_a_new_lr(tmp_path, capsys):
    ck = tmp_path / "run.pt"
    assert main(["train", "--epochs", "1", "--quiet", "--checkpoint", str(ck), "--samples", "2",
                 "--batch-size", "256"]) == 0
    assert main(["train", "--resume", "--checkpoint", str(ck), "--lr", "0.01", "--quiet",
                 "--samples", "2"]) == 2
    assert "--lr 0.01 (checkpoint: 0.001)" in capsys.readouterr().err
    out = tmp_path / "r.json"
    # Flags left out take the checkpoint's values (here --batch-size 256).
    assert main(["train", "--resume", "--checkpoint", str(ck), "--epochs", "2", "--quiet",
                 "--samples", "2", "--json", str(out)]) == 0
    assert "training to --epochs 2 (its run was started with --epochs 1)" in \
        capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["spec"]["batch_size"] == 256 and len(result["history"]) == 2


def test_train_is_reproducible_under_a_seed_whatever_ran_before(tmp_path):
    import torch

    outs = []
    for i in range(2):
        torch.rand(17)  # global RNG state differs between the two runs
        out = tmp_path / f"run{i}.json"
        assert main(["train", "--epochs", "2", "--quiet", "--seed", "3", "--json", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    strip = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731
    assert strip(outs[0]["test"]) == strip(outs[1]["test"])
    assert outs[0]["history"][-1]["loss"] == outs[1]["history"][-1]["loss"]


def _spawn(argv, cwd):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYROCG_DEBUG"}
    return subprocess.Popen([sys.executable, "-m", "pyrocg.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} early: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


LONG_RUN = ["train", "--epochs", "1000", "--batch-size", "256", "--samples", "2", "--quiet"]


def test_a_second_run_on_the_same_checkpoint_fails_at_once(tmp_path):
    """Two `pyrocg train` processes on one checkpoint path: the second stops before it
    loads data, with one line naming the path and the lock; the first is not disturbed."""
    ck = tmp_path / "run.pt"
    first = _spawn([*LONG_RUN, "--checkpoint", str(ck)], tmp_path)
    try:
        _wait_for(ck, first)  # the first run holds the lock and has finished epoch 1
        second = _spawn([*LONG_RUN, "--checkpoint", str(ck), "--json", "second.json"], tmp_path)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1
        assert err.splitlines() == [err.strip()] and "Traceback" not in err
        assert f"{ck} is in use by another run (process {first.pid}" in err
        assert out == "" and not (tmp_path / "second.json").exists()
        assert first.poll() is None  # still training
    finally:
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 130
    assert err.strip().splitlines()[-1] == (
        f"pyrocg: interrupted; the checkpoint of the last finished epoch is kept at {ck}")
    assert not (tmp_path / "run.pt.lock").exists()


def test_evaluate_and_resume_a_checkpoint_left_by_a_killed_run(tmp_path, capsys):
    """A run killed (SIGKILL) after its first epochs left a self-describing checkpoint and a
    stale lock: `evaluate` works on it, and `--resume` takes the lock over and continues."""
    ck = tmp_path / "run.pt"
    run = _spawn([*LONG_RUN, "--mode", "mc-dropout", "--checkpoint", str(ck)], tmp_path)
    try:
        _wait_for(ck, run)
    finally:
        run.kill()
        run.communicate(timeout=60)
    assert (tmp_path / "run.pt.lock").exists()  # left behind by the killed process
    done = torch.load(ck, weights_only=True)["epoch"]
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ck), "--samples", "5", "--json", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["epoch"] == done and evaluated["spec"]["mode"] == "mc-dropout"
    assert evaluated["test"]["accuracy"] > 0.3  # better than chance (0.1) after an epoch
    assert main(["train", "--resume", "--checkpoint", str(ck), "--epochs", str(done + 1),
                 "--samples", "2", "--quiet", "--json", str(out)]) == 0
    assert [h["epoch"] for h in json.loads(out.read_text())["history"]] == list(range(1, done + 2))
    assert not (tmp_path / "run.pt.lock").exists()


def test_evaluate_a_checkpoint_left_by_a_diverged_run(tmp_path, capsys, monkeypatch):
    from pyrocg.infer.model import CGModel

    calls, loss = [0], CGModel.loss

    def diverging(self, *args, **kwargs):  # the loss turns NaN in epoch 2 (5 steps per epoch)
        calls[0] += 1
        value = loss(self, *args, **kwargs)
        return value * float("nan") if calls[0] > 7 else value

    monkeypatch.setattr(CGModel, "loss", diverging)
    ck = tmp_path / "run.pt"
    assert main(["train", "--epochs", "3", "--batch-size", "256", "--samples", "2", "--quiet",
                 "--checkpoint", str(ck)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and "loss became nan at epoch 2" in err
    monkeypatch.setattr(CGModel, "loss", loss)
    assert main(["evaluate", "--checkpoint", str(ck), "--samples", "2"]) == 0
    assert "(epoch 1): test accuracy=" in capsys.readouterr().out
