"""Checkpoints are safe to load, self-describing from epoch 1, locked against a second
writer, and survive a SIGKILL: the resumed run ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrocg
from pyrocg import infer, models
from pyrocg.data import DataSplits, Split
from pyrocg.infer import checkpoint as ckpt
from pyrocg.infer import trainer


def _toy(n: int = 48) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(-1)
    cut = int(0.75 * n)
    val = Split(x[cut:], y[cut:])
    return DataSplits(Split(x[:cut], y[:cut]), val, val, "classification", "toy", (5,),
                      num_classes=3)


def _model() -> infer.CGModel:
    torch.manual_seed(11)
    return infer.CGModel(models.mlp(5, [6], 3, dropout=0.2), infer.Categorical(36), "mc-dropout")


CFG = dict(batch_size=12, optimizer="sgd", lr=0.05, milestones=(2,), eval_samples=2,
           progress=False)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling creates the marker file


# ------------------------------------------------------------------------ safe loading


@pytest.mark.parametrize("container", ["raw-pickle", "torch-zip"])
def test_malicious_checkpoint_runs_no_code(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": ckpt.FORMAT, "model": _Evil(marker)}
    if container == "raw-pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    # The payload is live: plain pickle would create the file.
    pickle.loads(pickle.dumps(_Evil(tmp_path / "control"))).close()
    assert (tmp_path / "control").exists()
    with pytest.raises(ValueError, match=str(path)) as info:
        infer.load_checkpoint(path)
    assert isinstance(info.value, ckpt.CheckpointError)
    assert "code" in str(info.value)
    with pytest.raises(ValueError, match=str(path)):  # nor through resume
        infer.fit(_model(), _toy(), infer.TrainConfig(epochs=1, **CFG), checkpoint=path,
                  resume=True)
    assert not marker.exists()


def test_fit_checkpoint_loads_weights_only_and_describes_itself(tmp_path):
    path = tmp_path / "run.pt"
    meta = {"spec": {"model": "mlp", "hidden": [6], "rate": 0.2, "data_dir": None}}
    infer.fit(_model(), _toy(), infer.TrainConfig(epochs=1, **CFG), checkpoint=path, meta=meta)
    raw = torch.load(path, weights_only=True)  # plain torch, the safe way
    assert raw["format"] == ckpt.FORMAT == 2 and raw["pyrocg"] == pyrocg.__version__
    assert raw["meta"] == meta and raw["epoch"] == 1
    assert raw["rng"]["numpy"]["keys"].dtype == torch.int64
    assert not (tmp_path / "run.pt.lock").exists()  # released


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.gauss(0, 1)  # Python caches a second Gaussian: gauss_next is set
    np.random.seed(3)
    np.random.standard_normal(1)  # NumPy's cached Gaussian: has_gauss = 1
    state = ckpt.rng_state()
    ckpt.save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    expected = (torch.rand(3), np.random.standard_normal(3), random.gauss(0, 1), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.standard_normal(3), random.gauss(0, 1), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_malformed_rng_state_is_a_clear_error():
    state = ckpt.rng_state()
    state["numpy"]["keys"] = state["numpy"]["keys"][:10]
    with pytest.raises(ValueError, match="malformed RNG state.*numpy keys"):
        ckpt.set_rng_state(state)


def test_save_refuses_unsafe_payload_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match=r"payload\['opt'\]\['step'\] is a numpy"):
        ckpt.save_checkpoint(tmp_path / "x.pt", {"opt": {"step": np.int64(3)}})
    assert list(tmp_path.iterdir()) == []


def test_every_allowed_type_loads_weights_only(tmp_path):
    from collections import Counter, OrderedDict

    payload = {"t": torch.zeros(2), "p": torch.nn.Parameter(torch.ones(1)), "s": "x", "i": 1,
               "f": 1.5, "b": True, "n": None, "c": 1j, "by": b"\x00", "dt": torch.float16,
               "dev": torch.device("cpu"), "od": OrderedDict(a=1), "cnt": Counter([2, 2]),
               "l": [1, (2, 3)], "size": torch.Size([2]), "set": {1, 2}, 3: "int key"}
    ckpt.check_checkpoint_payload(payload)
    ckpt.save_checkpoint(tmp_path / "all.pt", payload)
    loaded = infer.load_checkpoint(tmp_path / "all.pt")
    assert loaded["cnt"] == Counter([2, 2]) and loaded[3] == "int key"


# ------------------------------------------------------------------ interrupted runs


def test_interrupted_run_leaves_a_self_describing_epoch_1_checkpoint(tmp_path, monkeypatch):
    """An exception after the first checkpoint (a crash, Ctrl-C, divergence) leaves a
    checkpoint that carries the metadata, loads weights-only, and resumes exactly."""
    data, path, meta = _toy(), tmp_path / "run.pt", {"spec": {"model": "mlp", "seed": 0}}
    full = _model()
    hist_full = infer.fit(full, data, infer.TrainConfig(epochs=4, **CFG))

    real = trainer.save_checkpoint

    def save_then_crash(p, payload):
        real(p, payload)
        raise KeyboardInterrupt("simulated interruption after epoch 1")

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        infer.fit(_model(), data, infer.TrainConfig(epochs=4, **CFG), checkpoint=path, meta=meta)
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    assert not (tmp_path / "run.pt.lock").exists()  # the lock is released on the way out
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and state["meta"] == meta and len(state["history"]) == 1

    torch.manual_seed(1234)  # another process would be in another RNG state
    resumed = _model()
    hist = infer.fit(resumed, data, infer.TrainConfig(epochs=4, **CFG), checkpoint=path,
                     resume=True)  # meta=None keeps the checkpoint's
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [h["loss"] for h in hist] == [h["loss"] for h in hist_full]
    assert infer.load_checkpoint(path)["meta"] == meta


# ---------------------------------------------------------------------------- locking


def test_second_fit_on_a_locked_path_fails_at_once(tmp_path):
    path = tmp_path / "run.pt"
    infer.fit(_model(), _toy(), infer.TrainConfig(epochs=1, **CFG), checkpoint=path)
    before = path.read_bytes()
    with ckpt.CheckpointLock(path) as lock:
        assert lock.held and (tmp_path / "run.pt.lock").read_text().split()[0] == str(os.getpid())
        t0 = time.perf_counter()
        with pytest.raises(ckpt.CheckpointLockedError, match=f"{path} is in use by another run"):
            infer.fit(_model(), _toy(), infer.TrainConfig(epochs=3, **CFG), checkpoint=path)
        assert time.perf_counter() - t0 < 2.0  # at start, not after training
    assert path.read_bytes() == before  # the first run's checkpoint is untouched
    assert not (tmp_path / "run.pt.lock").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "run.pt"
    lock = tmp_path / "run.pt.lock"
    lock.write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    with ckpt.CheckpointLock(path):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()


def test_live_foreign_and_fresh_garbled_locks_are_respected(tmp_path):
    path, lock = tmp_path / "run.pt", tmp_path / "run.pt.lock"
    lock.write_text(f"{os.getppid()} {socket.gethostname()}\n")  # a live process
    with pytest.raises(ckpt.CheckpointLockedError, match=f"process {os.getppid()}"):
        ckpt.CheckpointLock(path).acquire()
    lock.write_text(f"{_dead_pid()} some-other-host\n")  # cannot check another host's PID
    with pytest.raises(ckpt.CheckpointLockedError, match="some-other-host"):
        ckpt.CheckpointLock(path).acquire()
    lock.write_text("")  # being written right now
    with pytest.raises(ckpt.CheckpointLockedError, match="starting"):
        ckpt.CheckpointLock(path).acquire()
    old = time.time() - 60
    os.utime(lock, (old, old))  # ... or left empty by a crash long ago: stale
    with ckpt.CheckpointLock(path):
        pass
    assert not lock.exists()


def test_stale_temporaries_are_removed_and_others_kept(tmp_path):
    path = tmp_path / "run.pt"
    stale = [tmp_path / ".run.pt.abcd1234.tmp", tmp_path / ".run.pt.zz_9yx8w.tmp"]
    kept = [tmp_path / ".run.pt.x.abcd1234.tmp",  # the temporary of "run.pt.x"
            tmp_path / ".other.pt.abcd1234.tmp", tmp_path / "run.pt.abcd1234.tmp"]
    for p in stale + kept:
        p.write_bytes(b"torn")
    infer.fit(_model(), _toy(), infer.TrainConfig(epochs=1, **CFG), checkpoint=path)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    infer.load_checkpoint(path)


# ---------------------------------------------------------------------------- SIGKILL

_CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from pyrocg import infer, models
    from pyrocg.data import DataSplits, Split
    from pyrocg.infer import trainer

    ck, out, pause, resume = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(-1)
    val = Split(x[36:], y[36:])
    data = DataSplits(Split(x[:36], y[:36]), val, val, "classification", "toy", (5,),
                      num_classes=3)
    torch.manual_seed(5 if resume else 11)  # resumed: other initial weights and RNG state
    model = infer.CGModel(models.mlp(5, [6], 3, dropout=0.2), infer.Categorical(36),
                          "mc-dropout")
    real = trainer.save_checkpoint

    def slow_save(path, payload):  # room for the parent to kill between epochs
        real(path, payload)
        time.sleep(pause)

    trainer.save_checkpoint = slow_save
    cfg = infer.TrainConfig(epochs=6, batch_size=12, optimizer="sgd", lr=0.05, milestones=(3,),
                            eval_samples=2, progress=False)
    infer.fit(model, data, cfg, checkpoint=ck, resume=resume, meta={"run": "sigkill"})
    torch.save(model.state_dict(), out)
""")


def _child(tmp: Path, *args: object) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", _CHILD, *map(str, args)], env=env, cwd=tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_during_training_then_resume_is_bit_identical(tmp_path):
    ck, ref_ck = tmp_path / "killed.pt", tmp_path / "ref.pt"
    reference = _child(tmp_path, ref_ck, tmp_path / "ref_final.pt", 0, 0)
    victim = _child(tmp_path, ck, tmp_path / "never.pt", 3.0, 0)
    deadline = time.monotonic() + 60
    while not ck.exists():
        assert victim.poll() is None, victim.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()  # reaps it (a zombie's PID would still count as alive)
    assert victim.returncode == -signal.SIGKILL
    lock = tmp_path / "killed.pt.lock"
    assert lock.read_text().split()[0] == str(victim.pid)  # left behind by the killed run
    state = torch.load(ck, weights_only=True)
    assert 1 <= state["epoch"] < 6 and state["meta"] == {"run": "sigkill"}
    torn = tmp_path / ".killed.pt.k1ll3d00.tmp"  # what a kill during a write leaves
    torn.write_bytes(state["pyrocg"].encode())

    resumed = _child(tmp_path, ck, tmp_path / "resumed_final.pt", 0, 1)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out.decode()
    out, _ = reference.communicate(timeout=120)
    assert reference.returncode == 0, out.decode()
    final = torch.load(tmp_path / "resumed_final.pt", weights_only=True)
    expected = torch.load(tmp_path / "ref_final.pt", weights_only=True)
    assert final.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(final[k], v), k
    assert infer.load_checkpoint(ck)["epoch"] == 6
    assert not lock.exists() and not torn.exists()
