"""The pyrocg command as a user runs it."""

import json

import pytest

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


def test_demo_writes_json_and_plot(tmp_path):
    out = tmp_path / "demo.json"
    assert main(["demo", "--epochs", "1", "--samples", "3", "--quiet", "--json", str(out),
                 "--plots", str(tmp_path)]) == 0
    results = json.loads(out.read_text())
    assert results["dataset"] == "digits"
    assert set(results["results"]) == {"feedforward", "pcff", "dropout", "mc-dropout", "bayes"}
    for r in results["results"].values():
        assert set(r) >= {"accuracy", "nll", "ece", "seconds"}
    assert (tmp_path / "reliability.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["train", "--rate", "1.5"], 2, "--rate must be in [0, 1]"),
        (["train", "--p", "1.0"], 2, "--p must be in [0, 1)"),
        (["train", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent", "--quiet"], 1,
         "apt-get install dataset-fashion-mnist"),
        (["train", "--dataset", "table", "--quiet"], 1, "--table"),
        (["evaluate", "--checkpoint", "/nonexistent.pt"], 1, "no checkpoint"),
        (["train", "--model", "cnn", "--dataset", "table", "--quiet"], 1, "table"),
        (["train", "--mode", "pcff", "--local-reparam", "--quiet"], 1,
         "mode 'pcff' takes no parameter 'local_reparam'"),
        (["train", "--mode", "mc-dropout", "--p", "0", "--quiet"], 1,
         "MCDropout needs dropout nodes"),
    ],
)
def test_bad_arguments_give_clear_errors(argv, code, message, capsys):
    assert main(argv) == code
    assert message in capsys.readouterr().err


def test_unknown_mode_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--mode", "gibbs"])
    assert "invalid choice: 'gibbs'" in capsys.readouterr().err


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
