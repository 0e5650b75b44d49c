"""A table of bad command lines: each ends with its exit status and ONE line on stderr that
names the flag or the file -- never a traceback, and (almost always) before any training.

Exit status 2: a usage error (a flag's value, a combination, a flag that does not apply, an
input path that is missing or not a file, an output path that cannot be written, ``--resume``
with arguments that change the run). Exit status 1: an error found while working (a file
that is not a usable checkpoint or table, a checkpoint in use by another run).
"""

import os
import pickle
import socket

import pytest
import torch

from pyrocg.cli import main
from pyrocg.infer.checkpoint import load_checkpoint, save_checkpoint

CK = ["--quiet", "--samples", "2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Input files of every kind, and one real checkpoint (digits mlp, 1 epoch)."""
    d = tmp_path_factory.mktemp("bad_input")
    (d / "adir").mkdir()
    (d / "notes.txt").write_text("just some notes\n")
    (d / "empty.pt").write_bytes(b"")
    (d / "random.pt").write_bytes(bytes(range(256)) * 4)
    torch.save({"a": torch.zeros(2)}, d / "foreign.pt")
    (d / "pickle.pt").write_bytes(pickle.dumps({"model": [1, 2, 3]}))
    rows = "\n".join(f"{i % 7}.5,{(i * 3) % 5},{'yes' if i % 2 else 'no'}" for i in range(30))
    (d / "good.csv").write_text("a,b,label\n" + rows + "\n")
    (d / "headless.txt").write_text("\n".join(f"{i} {i % 3} {i % 2}" for i in range(30)) + "\n")
    (d / "binary.csv").write_bytes(b"a,b,label\n1,2,\x00\x01\n")
    (d / "latin1.csv").write_bytes("a,b,caf\xe9\n1,2,3\n".encode("latin-1"))
    ck = d / "ck.pt"
    assert main(["train", "--epochs", "1", "--batch-size", "256", "--checkpoint", str(ck),
                 *CK]) == 0
    raw = ck.read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    state = load_checkpoint(ck)
    save_checkpoint(d / "nospec.pt", {k: v for k, v in state.items() if k != "meta"})
    bad = {**state["meta"]["spec"], "lr": -1.0}
    save_checkpoint(d / "badspec.pt", {**state, "meta": {"spec": bad}})
    other = {**state["meta"]["spec"], "mode": "bayes"}  # weights of feedforward, spec of bayes
    save_checkpoint(d / "mismatched.pt", {**state, "meta": {"spec": other}})
    (d / "locked.pt.lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")
    (d / "out" / "figs" / "ppc.png").mkdir(parents=True)  # a figure's name taken by a directory
    (d / "out" / "plots").mkdir()
    assert main(["train", "--dataset", "table", "--table", str(d / "good.csv"), "--epochs", "1",
                 "--checkpoint", str(d / "table.pt"), *CK]) == 0
    return d


T = ["train", *CK]
TABLE = ["train", "--dataset", "table", *CK]
FASHION = ["train", "--dataset", "fashion-mnist", *CK]
RESUME = ["train", "--resume", "--checkpoint", "{d}/ck.pt", *CK]
EV = ["evaluate", "--samples", "2", "--checkpoint"]
DG = ["diagnose", "--samples", "2", "--checkpoint"]

CASES = [
    # -- the parser ----------------------------------------------------------------------
    ([], 2, "command"),
    (["frobnicate"], 2, "frobnicate"),
    ([*T, "--mode", "gibbs"], 2, "--mode"),
    ([*T, "--epochs", "ten"], 2, "--epochs"),
    ([*T, "--seed", "2**70"], 2, "--seed"),
    ([*T, "--bogus"], 2, "--bogus"),
    (["evaluate"], 2, "--checkpoint"),
    # -- devices -------------------------------------------------------------------------
    ([*T, "--device", "cuda"] if not torch.cuda.is_available() else [*T, "--device", "cuda:99"],
     2, "--device"),
    ([*T, "--device", "bogus"], 2, "--device"),
    ([*T, "--device", "meta"], 2, "--device"),
    ([*T, "--device", ""], 2, "--device"),
    ([*EV, "{d}/ck.pt", "--device", "cuda:99"], 2, "--device"),
    (["demo", "--device", "meta"], 2, "--device"),
    (["demo-crf", "--device", "gpu"], 2, "--device"),
    # -- numbers -------------------------------------------------------------------------
    ([*T, "--seed", "-1"], 2, "--seed"),
    ([*T, "--seed", str(2**70)], 2, "--seed"),
    (["demo", "--seed", str(2**32)], 2, "--seed"),
    ([*T, "--epochs", "0"], 2, "--epochs"),
    ([*T, "--epochs", "-3"], 2, "--epochs"),
    ([*T, "--batch-size", "0"], 2, "--batch-size"),
    ([*T, "--lr", "0"], 2, "--lr"),
    ([*T, "--lr", "-1"], 2, "--lr"),
    ([*T, "--lr", "nan"], 2, "--lr"),
    ([*T, "--lr", "inf"], 2, "--lr"),
    ([*T, "--weight-decay", "-1"], 2, "--weight-decay"),
    ([*T, "--weight-decay", "nan"], 2, "--weight-decay"),
    ([*T, "--weight-decay", "1e999"], 2, "--weight-decay"),
    ([*T, "--milestones", "-5"], 2, "--milestones"),
    ([*T, "--epochs", "5", "--milestones", "3", "2"], 2, "--milestones"),
    ([*T, "--epochs", "5", "--milestones", "2", "2"], 2, "--milestones"),
    ([*T, "--milestones", "0"], 2, "--milestones"),
    ([*T, "--epochs", "10", "--milestones", "10"], 2, "--milestones"),
    ([*T, "--samples", "0"], 2, "--samples"),
    ([*T, "--samples", "1000000000"], 2, "--samples"),
    ([*EV, "{d}/ck.pt", "--samples", "-1"], 2, "--samples"),
    ([*T, "--mode", "pcff", "--rate", "1.5"], 2, "--rate"),
    ([*T, "--mode", "pcff-sampling", "--rate", "nan"], 2, "--rate"),
    ([*T, "--mode", "dropout", "--p", "1"], 2, "--p"),
    ([*T, "--mode", "mc-dropout", "--p", "-0.1"], 2, "--p"),
    ([*T, "--mode", "dropout", "--p", "0"], 2, "--p 0"),
    (["demo", "--epochs", "0"], 2, "--epochs"),
    (["demo-crf", "--epochs", "-1"], 2, "--epochs"),
    (["demo", "--samples", "0"], 2, "--samples"),
    # -- flags that do not apply to the data set or mode ---------------------------------
    ([*T, "--data-dir", "{d}/adir"], 2, "--data-dir"),
    ([*T, "--limit", "10"], 2, "--limit"),
    ([*FASHION, "--limit", "0"], 2, "--limit"),
    ([*T, "--table", "{d}/good.csv"], 2, "--table"),
    ([*T, "--target", "0"], 2, "--target"),
    ([*T, "--local-reparam"], 2, "--local-reparam"),
    ([*T, "--mode", "mc-dropout", "--local-reparam"], 2, "--local-reparam"),
    ([*T, "--rate", "0.5"], 2, "--rate"),
    ([*T, "--mode", "bayes", "--rate", "0.5"], 2, "--rate"),
    ([*T, "--p", "0.3"], 2, "--p"),
    ([*T, "--mode", "pcff", "--p", "0.3"], 2, "--p"),
    (["demo-crf", "--mode", "mc-dropout"], 2, "--mode"),
    ([*TABLE], 2, "--table"),
    ([*TABLE, "--table", "{d}/good.csv", "--model", "resnet20"], 2, "--model resnet20"),
    ([*TABLE, "--table", "{d}/good.csv", "--target", ""], 2, "--target"),
    ([*T, "--distributed"], 2, "--distributed"),
    # -- input files ---------------------------------------------------------------------
    ([*TABLE, "--table", "{d}/adir"], 2, "--table"),
    ([*TABLE, "--table", "{d}/missing.csv"], 2, "--table"),
    ([*FASHION, "--data-dir", "{d}/notes.txt"], 2, "--data-dir"),
    ([*FASHION, "--data-dir", "{d}/nope"], 2, "--data-dir"),
    ([*FASHION, "--data-dir", "{d}/adir"], 1, "adir"),
    ([*TABLE, "--table", "{d}/binary.csv"], 1, "binary.csv"),
    ([*TABLE, "--table", "{d}/latin1.csv"], 1, "latin1.csv"),
    ([*TABLE, "--table", "{d}/headless.txt", "--target", "label"], 1, "headless.txt"),
    ([*TABLE, "--table", "{d}/good.csv", "--target", "nosuch"], 1, "good.csv"),
    ([*TABLE, "--table", "{d}/good.csv", "--target", "7"], 1, "good.csv"),
    # -- output paths: checked before any training ---------------------------------------
    ([*T, "--json", ""], 2, "--json"),
    ([*T, "--json", "{d}/adir"], 2, "--json"),
    ([*T, "--json", "{d}/notes.txt/out.json"], 2, "--json"),
    ([*T, "--json", "{d}/nodir/out.json"], 2, "--json"),
    ([*T, "--checkpoint", ""], 2, "--checkpoint"),
    ([*T, "--checkpoint", "{d}/adir"], 2, "--checkpoint"),
    ([*T, "--checkpoint", "{d}/notes.txt/run.pt"], 2, "--checkpoint"),
    ([*T, "--checkpoint", "{d}/x.pt", "--json", "{d}/x.pt"], 2, "--json"),
    ([*TABLE, "--table", "{d}/good.csv", "--json", "{d}/good.csv"], 2, "--table"),
    (["demo", "--plots", ""], 2, "--plots"),
    (["demo", "--plots", "{d}/notes.txt"], 2, "--plots"),
    (["demo", "--plots", "{d}/notes.txt/sub"], 2, "--plots"),
    (["demo", "--json", "{d}/adir"], 2, "--json"),
    (["demo-crf", "--json", ""], 2, "--json"),
    ([*EV, "{d}/ck.pt", "--json", "{d}/adir"], 2, "--json"),
    ([*EV, "{d}/ck.pt", "--json", "{d}/ck.pt"], 2, "--json"),
    # -- diagnostic outputs: demo --plots/--arviz, diagnose ------------------------------
    (["demo", "--arviz", ""], 2, "--arviz"),
    (["demo", "--arviz", "{d}/adir"], 2, "--arviz"),
    (["demo", "--arviz", "{d}/notes.txt/idata.nc"], 2, "--arviz"),
    (["demo", "--arviz", "{d}/nodir/idata.nc"], 2, "--arviz"),
    (["demo", "--json", "{d}/x.nc", "--arviz", "{d}/x.nc"], 2, "--arviz"),
    (["demo", "--plots", "{d}/out/figs"], 2, "--plots {d}/out/figs/ppc.png: is a directory"),
    (["demo", "--plots", "{d}/out/plots", "--arviz", "{d}/out/plots/entropy.png"], 2, "--arviz"),
    (["diagnose"], 2, "--checkpoint"),
    ([*DG, ""], 2, "--checkpoint"),
    ([*DG, "{d}/missing.pt"], 2, "--checkpoint"),
    ([*DG, "{d}/adir"], 2, "--checkpoint"),
    ([*DG, "{d}/ck.pt", "--samples", "0"], 2, "--samples"),
    ([*DG, "{d}/ck.pt", "--seed", "-1"], 2, "--seed"),
    ([*DG, "{d}/ck.pt", "--device", "meta"], 2, "--device"),
    ([*DG, "{d}/ck.pt", "--ood", "heldout"], 2, "--ood"),
    ([*DG, "{d}/ck.pt", "--ood"], 2, "--ood"),
    ([*DG, "{d}/table.pt", "--ood", "noise"], 2, "--ood applies only to image data sets"),
    ([*DG, "{d}/ck.pt", "--plots", ""], 2, "--plots"),
    ([*DG, "{d}/ck.pt", "--plots", "{d}/notes.txt"], 2, "--plots"),
    ([*DG, "{d}/ck.pt", "--plots", "{d}/notes.txt/sub"], 2, "--plots"),
    ([*DG, "{d}/ck.pt", "--plots", "{d}/out/figs"], 2, "ppc.png: is a directory"),
    ([*DG, "{d}/ck.pt", "--arviz", ""], 2, "--arviz"),
    ([*DG, "{d}/ck.pt", "--arviz", "{d}/adir"], 2, "--arviz"),
    ([*DG, "{d}/ck.pt", "--arviz", "{d}/nodir/d.nc"], 2, "--arviz"),
    ([*DG, "{d}/ck.pt", "--arviz", "{d}/ck.pt"], 2, "--arviz {d}/ck.pt is the input --checkpoint"),
    ([*DG, "{d}/ck.pt", "--json", "{d}/ck.pt"], 2, "--json"),
    ([*DG, "{d}/ck.pt", "--json", "{d}/d.nc", "--arviz", "{d}/d.nc"], 2, "--arviz"),
    ([*DG, "{d}/empty.pt"], 1, "empty.pt"),
    ([*DG, "{d}/random.pt"], 1, "random.pt"),
    ([*DG, "{d}/foreign.pt"], 1, "foreign.pt"),
    ([*DG, "{d}/nospec.pt"], 1, "nospec.pt"),
    ([*DG, "{d}/badspec.pt"], 1, "badspec.pt"),
    ([*DG, "{d}/mismatched.pt"], 1, "mismatched.pt"),
    # -- files that are not usable checkpoints -------------------------------------------
    ([*EV, ""], 2, "--checkpoint"),
    ([*EV, "{d}/adir"], 2, "--checkpoint"),
    ([*EV, "{d}/missing.pt"], 2, "--checkpoint"),
    ([*EV, "{d}/empty.pt"], 1, "empty.pt"),
    ([*EV, "{d}/truncated.pt"], 1, "truncated.pt"),
    ([*EV, "{d}/random.pt"], 1, "random.pt"),
    ([*EV, "{d}/notes.txt"], 1, "notes.txt"),
    ([*EV, "{d}/foreign.pt"], 1, "foreign.pt"),
    ([*EV, "{d}/pickle.pt"], 1, "pickle.pt"),
    ([*EV, "{d}/nospec.pt"], 1, "nospec.pt"),
    ([*EV, "{d}/badspec.pt"], 1, "badspec.pt"),
    ([*EV, "{d}/mismatched.pt"], 1, "mismatched.pt"),
    # -- --resume ------------------------------------------------------------------------
    (["train", "--resume", *CK], 2, "--resume"),
    (["train", "--resume", "--checkpoint", "{d}/none.pt", *CK], 2, "--resume"),
    ([*RESUME, "--mode", "pcff"], 2, "--mode pcff (checkpoint: feedforward)"),
    ([*RESUME, "--model", "cnn"], 2, "--model cnn (checkpoint: mlp)"),
    ([*RESUME, "--optimizer", "sgd"], 2, "--optimizer sgd (checkpoint: adam)"),
    ([*RESUME, "--dataset", "table", "--table", "{d}/good.csv"], 2, "--dataset table"),
    ([*RESUME, "--lr", "0.1"], 2, "--lr 0.1 (checkpoint: 0.001)"),
    ([*RESUME, "--seed", "5"], 2, "--seed 5 (checkpoint: 0)"),
    ([*RESUME, "--batch-size", "8"], 2, "--batch-size 8 (checkpoint: 256)"),
    ([*RESUME, "--epochs", "3", "--milestones", "1"], 2, "--milestones 1 (checkpoint: none)"),
    ([*RESUME, "--rate", "0.5"], 2, "--rate"),
    ([*RESUME, "--weight-decay", "1e-4"], 2, "--weight-decay"),
    (["train", "--resume", "--checkpoint", "{d}/random.pt", *CK], 1, "random.pt"),
    (["train", "--resume", "--checkpoint", "{d}/nospec.pt", *CK], 1, "nospec.pt"),
    (["train", "--resume", "--checkpoint", "{d}/mismatched.pt", *CK], 1, "mismatched.pt"),
    # -- a checkpoint in use by another run ----------------------------------------------
    ([*T, "--checkpoint", "{d}/locked.pt"], 1, "in use by another run"),
]


def _id(case):
    argv, code, _ = case
    return f"{code}:" + " ".join(a.replace("{d}/", "") for a in argv if a not in CK)[:60]


@pytest.mark.parametrize("argv, code, names", CASES, ids=[_id(c) for c in CASES])
def test_bad_command_line(argv, code, names, files, capsys, monkeypatch):
    monkeypatch.delenv("PYROCG_DEBUG", raising=False)
    argv = [a.replace("{d}", str(files)) for a in argv]
    before = {p.name: p.stat().st_mtime_ns for p in files.iterdir()}
    assert main(argv) == code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyrocg: error: ") and "Traceback" not in err
    assert names.replace("{d}", str(files)) in lines[0], lines[0]
    assert "accuracy=" not in out  # nothing was trained
    # Nothing was written over: inputs and the checkpoint are as they were.
    assert {p.name: p.stat().st_mtime_ns for p in files.iterdir()} == before


def test_the_table_covers_every_class():
    assert len(CASES) >= 60
    assert {code for _, code, _ in CASES} == {1, 2}


def test_debug_shows_the_traceback(files, capsys, monkeypatch):
    assert main(["--debug", "evaluate", "--checkpoint", str(files / "random.pt")]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("PYROCG_DEBUG", "1")
    assert main(["evaluate", "--checkpoint", str(files / "random.pt")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("pyrocg: error: ")


@pytest.mark.parametrize("target", ["-1", "2", "0"])
def test_a_headless_tables_target_is_an_index(files, target, tmp_path, capsys):
    """Accepted: an index names a column of a table without a header."""
    out = tmp_path / "r.json"
    assert main([*TABLE, "--table", str(files / "headless.txt"), "--target", target,
                 "--epochs", "1", "--json", str(out)]) == 0
    assert out.stat().st_size > 0
