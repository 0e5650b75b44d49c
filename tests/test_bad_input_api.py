"""Bad input to the Python API: every case raises a clear exception that names the argument
or the file (and line) at fault -- no silent garbage, no obscure library traceback.

Each case is ``(make, exception type, pattern)``: ``make(tmp)`` builds its inputs in the
directory ``tmp`` and calls the API; ``pattern(tmp)`` is a regex the message must match.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrocg
from pyrocg import infer, models
from pyrocg.data import DataSplits, Split, load_digits, load_fashion_mnist, load_table
from pyrocg.structured import LinearChainCRF

NO_CUDA = not torch.cuda.is_available()
INF, NAN = math.inf, math.nan


# ------------------------------------------------------------------------------- helpers


def _toy(n: int = 40, nan_at: str | None = None) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
    xv, yv = x[:8].clone(), y[:8].clone()
    if nan_at == "train.x":
        x = x.clone()
        x[3, 1] = NAN
    if nan_at == "val.x":
        xv[2, 0] = INF
    return DataSplits(Split(x, y), Split(xv, yv), Split(xv, yv), "classification", "toy", (5,),
                      num_classes=3)


def _regression_with_inf_target() -> DataSplits:
    x, y = torch.randn(20, 5), torch.randn(20)
    y[7] = -INF
    s = Split(x, y)
    return DataSplits(s, Split(x[:0], y[:0]), s, "regression", "toy", (5,))


def _model(n: int = 40) -> infer.CGModel:
    return infer.CGModel(models.mlp(5, [4], 3), infer.Categorical(n))


def _fit(data=None, **kw):
    cfg = infer.TrainConfig(epochs=1, batch_size=16, eval_samples=2, progress=False)
    return infer.fit(_model(), _toy() if data is None else data, cfg, **kw)


def _write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _csv(rows: int = 20, header: str = "a,b,y", row=lambda i: f"{i},{i % 3},{i % 2}") -> str:
    return "\n".join([header, *(row(i) for i in range(rows))]) + "\n"


def _checkpoint(tmp: Path) -> Path:
    path = tmp / "good.pt"
    _fit(checkpoint=path)
    return path


def _torch_file(tmp: Path, name: str, obj: object) -> Path:
    path = tmp / name
    torch.save(obj, path)
    return path


class _Payload:
    """Unpickling it would call ``open(marker, "w")``: create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _crf(unary=None, transitions=None, **kw) -> LinearChainCRF:
    unary = torch.zeros(2, 4, 3) if unary is None else unary
    transitions = torch.zeros(3, 3) if transitions is None else transitions
    return LinearChainCRF(unary, transitions, **kw)


def _with(t: torch.Tensor, index: tuple, value: float) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


def _path(name: str) -> Callable[[Path], str]:
    """Pattern: the message names the file ``tmp / name``."""
    return lambda tmp: re.escape(str(tmp / name))


def _text(pattern: str) -> Callable[[Path], str]:
    return lambda tmp: pattern


# ------------------------------------------------------------------------------- cases

CASES: list[tuple[str, Callable[[Path], object], type[BaseException], Callable[[Path], str]]] = [
    # --- TrainConfig
    ("config-epochs-bool", lambda t: infer.TrainConfig(epochs=True), ValueError, _text("epochs")),
    ("config-epochs-zero", lambda t: infer.TrainConfig(epochs=0), ValueError, _text("epochs")),
    ("config-epochs-float", lambda t: infer.TrainConfig(epochs=2.5), ValueError, _text("epochs")),
    ("config-batch-bool", lambda t: infer.TrainConfig(batch_size=False), ValueError,
     _text("batch_size")),
    ("config-batch-negative", lambda t: infer.TrainConfig(batch_size=-4), ValueError,
     _text("batch_size")),
    ("config-eval-samples-zero", lambda t: infer.TrainConfig(eval_samples=0), ValueError,
     _text("eval_samples")),
    ("config-seed-negative", lambda t: infer.TrainConfig(seed=-1), ValueError, _text("seed")),
    ("config-seed-bool", lambda t: infer.TrainConfig(seed=True), ValueError, _text("seed")),
    ("config-lr-zero", lambda t: infer.TrainConfig(lr=0.0), ValueError, _text("lr")),
    ("config-lr-nan", lambda t: infer.TrainConfig(lr=NAN), ValueError, _text("lr")),
    ("config-lr-inf", lambda t: infer.TrainConfig(lr=INF), ValueError, _text("lr")),
    ("config-lr-bool", lambda t: infer.TrainConfig(lr=True), ValueError, _text("lr")),
    ("config-momentum-one", lambda t: infer.TrainConfig(momentum=1.0), ValueError,
     _text("momentum")),
    ("config-momentum-negative", lambda t: infer.TrainConfig(momentum=-0.1), ValueError,
     _text("momentum")),
    ("config-gamma-zero", lambda t: infer.TrainConfig(gamma=0.0), ValueError, _text("gamma")),
    ("config-gamma-negative", lambda t: infer.TrainConfig(gamma=-0.5), ValueError,
     _text("gamma")),
    ("config-gamma-nan", lambda t: infer.TrainConfig(gamma=NAN), ValueError, _text("gamma")),
    ("config-milestone-zero", lambda t: infer.TrainConfig(milestones=(0, 3)), ValueError,
     _text("milestones")),
    ("config-milestones-unsorted", lambda t: infer.TrainConfig(milestones=(5, 2)), ValueError,
     _text("milestones")),
    ("config-milestones-repeated", lambda t: infer.TrainConfig(milestones=(2, 2)), ValueError,
     _text("milestones")),
    ("config-milestone-float", lambda t: infer.TrainConfig(milestones=(1.5,)), ValueError,
     _text("milestones")),
    ("config-milestones-scalar", lambda t: infer.TrainConfig(milestones=3), ValueError,
     _text("milestones")),
    ("config-optimizer-none", lambda t: infer.TrainConfig(optimizer=None), ValueError,
     _text("optimizer")),
    ("config-progress-str", lambda t: infer.TrainConfig(progress="no"), ValueError,
     _text("progress")),
    # --- fit
    ("fit-data-tuple", lambda t: infer.fit(_model(), (torch.zeros(4, 5), torch.zeros(4).long())),
     TypeError, _text(r"data must be a pyrocg.data.DataSplits, got tuple \(wrap tensors")),
    ("fit-data-none", lambda t: infer.fit(_model(), None), TypeError, _text("data must be")),
    ("fit-model-net", lambda t: infer.fit(models.mlp(5, [4], 3), _toy()), TypeError,
     _text("model must be")),
    ("fit-config-dict", lambda t: infer.fit(_model(), _toy(), {"epochs": 1}), TypeError,
     _text("config must be")),
    ("fit-checkpoint-int", lambda t: _fit(checkpoint=7), TypeError, _text("checkpoint must be")),
    ("fit-resume-str", lambda t: _fit(checkpoint=t / "c.pt", resume="yes"), TypeError,
     _text("resume must be")),
    ("fit-resume-without-checkpoint", lambda t: _fit(resume=True), ValueError,
     _text("resume=True needs a checkpoint")),
    ("fit-meta-list", lambda t: _fit(meta=["spec"]), TypeError, _text("meta must be a dict")),
    ("fit-meta-path", lambda t: _fit(meta={"data_dir": Path("/data")}), TypeError,
     _text(r"meta\['data_dir'\] is a pathlib")),
    ("fit-meta-numpy", lambda t: _fit(meta={"spec": {"rate": np.float64(0.5)}}), TypeError,
     _text(r"meta\['spec'\]\['rate'\] is a numpy")),
    ("fit-empty-train", lambda t: _fit(_toy(n=0)), ValueError, _text("training split is empty")),
    ("fit-nan-train-x", lambda t: _fit(_toy(nan_at="train.x")), ValueError,
     _text(r"data.train.x has 1 NaN .* index \(3, 1\)")),
    ("fit-inf-val-x", lambda t: _fit(_toy(nan_at="val.x")), ValueError,
     _text(r"data.val.x has 0 NaN and 1 infinite")),
    ("fit-inf-train-y", lambda t: infer.fit(
        infer.CGModel(models.mlp(5, [4], 1), infer.Gaussian(20)), _regression_with_inf_target(),
        infer.TrainConfig(epochs=1, progress=False)), ValueError, _text(r"data.train.y has")),
    ("fit-locked-checkpoint", lambda t: _locked_fit(t), infer.checkpoint.CheckpointLockedError,
     _path("run.pt")),
    ("fit-resume-missing-keys", lambda t: _fit(checkpoint=_resave(t, drop="optimizer"),
                                               resume=True),
     ValueError, lambda t: re.escape(str(t / "partial.pt")) + r".*lacks \['optimizer'\]"),
    ("fit-resume-other-model", lambda t: infer.fit(
        infer.CGModel(models.mlp(5, [9], 3), infer.Categorical(40)), _toy(),
        infer.TrainConfig(epochs=2, batch_size=16, progress=False),
        checkpoint=_checkpoint(t), resume=True),
     ValueError, lambda t: re.escape(str(t / "good.pt")) + ".*does not match this model"),
    # --- evaluate
    ("evaluate-empty-x", lambda t: infer.evaluate(_model(), torch.zeros(0, 5),
                                                  torch.zeros(0).long()),
     ValueError, _text("x is empty")),
    ("evaluate-row-mismatch", lambda t: infer.evaluate(_model(), torch.zeros(4, 5),
                                                       torch.zeros(3).long()),
     ValueError, _text("x and y must have the same number of rows")),
    ("evaluate-x-list", lambda t: infer.evaluate(_model(), [[0.0] * 5], torch.zeros(1).long()),
     TypeError, _text("x must be a torch.Tensor")),
    ("evaluate-num-samples-zero", lambda t: infer.evaluate(_model(), torch.zeros(4, 5),
                                                           torch.zeros(4).long(), num_samples=0),
     ValueError, _text("num_samples")),
    ("evaluate-batch-size-bool", lambda t: infer.evaluate(_model(), torch.zeros(4, 5),
                                                          torch.zeros(4).long(), batch_size=True),
     ValueError, _text("batch_size")),
    ("evaluate-nan-x", lambda t: infer.evaluate(_model(), _with(torch.zeros(4, 5), (2, 2), NAN),
                                                torch.zeros(4).long()),
     ValueError, _text(r"x has 1 NaN")),
    # --- the validation switch
    ("validation-enable-str", lambda t: pyrocg.validation.enable_validation("no"), TypeError,
     _text("is_validate")),
    ("validation-context-int", lambda t: pyrocg.validation.validation_enabled(0).__enter__(),
     TypeError, _text("is_validate")),
    ("validation-check-list", lambda t: pyrocg.validation.check_finite([1.0], "features"),
     TypeError, _text("features must be a torch.Tensor")),
    ("validation-check-inf", lambda t: pyrocg.validation.check_finite(torch.tensor([INF]), "w"),
     ValueError, _text("w has 0 NaN and 1 infinite")),
    # --- checkpoints
    ("checkpoint-missing", lambda t: infer.load_checkpoint(t / "none.pt"), FileNotFoundError,
     _path("none.pt")),
    ("checkpoint-directory", lambda t: infer.load_checkpoint(t), ValueError,
     lambda t: re.escape(str(t)) + ": is a directory"),
    ("checkpoint-empty", lambda t: infer.load_checkpoint(_write(t, "e.pt", b"")), ValueError,
     lambda t: re.escape(str(t / "e.pt")) + ".*empty"),
    ("checkpoint-text", lambda t: infer.load_checkpoint(_write(t, "t.pt", "epoch: 3\n")),
     ValueError, lambda t: re.escape(str(t / "t.pt")) + ".*text file"),
    ("checkpoint-random-bytes", lambda t: infer.load_checkpoint(
        _write(t, "r.pt", bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8)))),
     ValueError, lambda t: re.escape(str(t / "r.pt")) + ".*binary data"),
    ("checkpoint-raw-pickle", lambda t: infer.load_checkpoint(
        _write(t, "p.pt", pickle.dumps(_Payload(t / "marker")))),
     ValueError, lambda t: re.escape(str(t / "p.pt")) + ".*raw pickle"),
    ("checkpoint-torch-with-code", lambda t: infer.load_checkpoint(
        _torch_file(t, "code.pt", {"format": 2, "model": _Payload(t / "marker")})),
     ValueError, lambda t: re.escape(str(t / "code.pt")) + ".*refused.*refers to io\\.open"),
    ("checkpoint-truncated", lambda t: infer.load_checkpoint(_truncated(t)), ValueError,
     lambda t: re.escape(str(t / "cut.pt")) + ".*truncated or corrupt"),
    ("checkpoint-foreign-tensor", lambda t: infer.load_checkpoint(
        _torch_file(t, "w.pt", torch.zeros(3))),
     ValueError, lambda t: re.escape(str(t / "w.pt")) + ".*holds a Tensor"),
    ("checkpoint-foreign-state-dict", lambda t: infer.load_checkpoint(
        _torch_file(t, "sd.pt", models.mlp(5, [4], 3).state_dict())),
     ValueError, lambda t: re.escape(str(t / "sd.pt")) + ".*no 'format' entry"),
    ("checkpoint-other-format", lambda t: infer.load_checkpoint(
        _torch_file(t, "old.pt", {"format": 1, "pyrocg": "0.0.1", "model": {}})),
     ValueError, lambda t: re.escape(str(t / "old.pt")) + ".*format 1 .*reads format 2"),
    ("checkpoint-path-int", lambda t: infer.load_checkpoint(3), TypeError,
     _text("path must be")),
    ("checkpoint-save-numpy", lambda t: infer.save_checkpoint(t / "n.pt", {"x": np.zeros(2)}),
     TypeError, _text(r"payload\['x'\] is a numpy")),
    ("checkpoint-save-list", lambda t: infer.save_checkpoint(t / "n.pt", [1, 2]), TypeError,
     _text("payload must be a dict")),
    ("checkpoint-lock-held", lambda t: _double_lock(t), infer.checkpoint.CheckpointLockedError,
     lambda t: re.escape(str(t / "run.pt")) + f" is in use by another run \\(process {os.getpid()}"),
    ("checkpoint-lock-path-int", lambda t: infer.checkpoint.CheckpointLock(5), TypeError,
     _text("checkpoint must be")),
    # --- data loaders
    ("table-directory", lambda t: load_table(t), ValueError,
     lambda t: re.escape(str(t)) + ": is a directory"),
    ("table-missing", lambda t: load_table(t / "no.csv"), FileNotFoundError, _path("no.csv")),
    ("table-binary", lambda t: load_table(_write(t, "b.csv", b"a,b,y\n1,2,0\n\x00\x01\x02\n")),
     ValueError, lambda t: re.escape(str(t / "b.csv")) + ": line 3: a NUL byte"),
    ("table-latin1", lambda t: load_table(
        _write(t, "l.csv", "a,b,y\n1,2,0\n3,4,1\ncaf\u00e9,5,0\n".encode("latin-1"))),
     ValueError, lambda t: re.escape(str(t / "l.csv")) + ": line 4: byte 0xe9 is not UTF-8"),
    ("table-ragged", lambda t: load_table(_write(t, "g.csv", "a,b,y\n1,2,0\n3,4\n")),
     ValueError, lambda t: re.escape(str(t / "g.csv")) + ": line 3 has 2 fields"),
    ("table-huge-field", lambda t: load_table(
        _write(t, "h.csv", "a,b,y\n1,2,0\n" + "9" * 200_000 + ",1,0\n")),
     ValueError, lambda t: re.escape(str(t / "h.csv")) + ": line 3: field larger"),
    ("table-duplicate-columns", lambda t: load_table(_write(t, "d.csv", _csv(header="a,a,y")),
                                                     target="y"),
     ValueError, lambda t: re.escape(str(t / "d.csv")) + ": line 1: duplicate column names 'a'"),
    ("table-target-twice", lambda t: load_table(_write(t, "tt.csv", _csv(header="y,b,y")),
                                                target="y"),
     ValueError, lambda t: re.escape(str(t / "tt.csv")) + ": line 1: target 'y' names 2 columns"),
    ("table-float32-overflow", lambda t: load_table(
        _write(t, "o.csv", _csv(row=lambda i: f"{(i + 1) * 1e300},{i},{i % 2}")),
        standardize=False), ValueError,
     lambda t: re.escape(str(t / "o.csv")) + ": column 'a' has values that overflow torch.float32"),
    ("table-float32-underflow", lambda t: load_table(
        _write(t, "u.csv", _csv(row=lambda i: f"{i},{(i + 1) * 1e-300},{i % 2}")),
        standardize=False), ValueError,
     lambda t: re.escape(str(t / "u.csv")) + ": column 'b' has values that underflow to 0"),
    ("table-non-numeric", lambda t: load_table(_write(t, "s.csv", "a,b,y\n1,2,0\n3,x,1\n")),
     ValueError, lambda t: re.escape(str(t / "s.csv")) + ".*'x' at line 3, column 'b'"),
    ("table-nan-cell", lambda t: load_table(_write(t, "nan.csv", "a,b,y\n1,2,0\nnan,4,1\n")),
     ValueError, lambda t: re.escape(str(t / "nan.csv")) + ".*line 3, column 'a'"),
    ("table-target-unknown", lambda t: load_table(_write(t, "k.csv", _csv()), target="z"),
     ValueError, lambda t: re.escape(str(t / "k.csv")) + ": target column 'z' not found"),
    ("table-dtype-int", lambda t: load_table(_write(t, "i.csv", _csv()), dtype=torch.int64),
     TypeError, _text("dtype must be a floating")),
    ("table-device-float", lambda t: load_table(_write(t, "f.csv", _csv()), device=1.5),
     TypeError, _text("device must be")),
    ("digits-device-typo", lambda t: load_digits(device="gpu"), ValueError,
     _text("device='gpu' is not a device")),
    pytest.param("digits-device-cuda", lambda t: load_digits(device="cuda"), ValueError,
                 _text("device='cuda', but CUDA is not available"),
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
    pytest.param("fashion-device-cuda", lambda t: load_fashion_mnist(t, device="cuda"),
                 ValueError, _text("device='cuda', but CUDA is not available"),
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
    pytest.param("checkpoint-map-location-cuda",
                 lambda t: infer.load_checkpoint(_checkpoint(t), map_location="cuda"),
                 ValueError, _text("map_location='cuda', but CUDA is not available"),
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
    # --- CRF potentials
    ("crf-unary-plus-inf", lambda t: _crf(_with(torch.zeros(2, 4, 3), (1, 2, 0), INF)),
     ValueError, _text(r"unary holds inf at index \(1, 2, 0\)")),
    ("crf-unary-nan-valid", lambda t: _crf(_with(torch.zeros(2, 4, 3), (1, 1, 0), NAN),
                                           lengths=torch.tensor([4, 2])),
     ValueError, _text(r"unary holds nan at index \(1, 1, 0\) \(a valid position\)")),
    ("crf-transitions-plus-inf", lambda t: _crf(transitions=_with(torch.zeros(3, 3), (0, 2), INF)),
     ValueError, _text(r"transitions holds inf at index \(0, 2\)")),
    ("crf-per-position-nan", lambda t: _crf(transitions=_with(torch.zeros(2, 3, 3, 3),
                                                              (0, 1, 2, 2), NAN)),
     ValueError, _text(r"transitions holds nan at index \(0, 1, 2, 2\)")),
    ("crf-start-plus-inf", lambda t: _crf(start=torch.tensor([0.0, INF, 0.0])), ValueError,
     _text(r"start holds inf")),
    ("crf-end-nan", lambda t: _crf(end=torch.tensor([NAN, 0.0, 0.0])), ValueError,
     _text(r"end holds nan")),
    ("crf-all-impossible-log-z", lambda t: _crf(transitions=torch.full((3, 3), -INF)).log_partition,
     ValueError, _text(r"every tag sequence impossible \(log Z = -inf\)")),
    ("crf-all-impossible-argmax", lambda t: _crf(transitions=torch.full((3, 3), -INF)).argmax,
     ValueError, _text(r"log Z = -inf")),
    ("crf-all-impossible-sample", lambda t: _crf(transitions=torch.full((3, 3), -INF)).sample(),
     ValueError, _text(r"log Z = -inf")),
    ("crf-all-impossible-marginals",
     lambda t: _crf(transitions=torch.full((2, 3, 3, 3), -INF)).marginals,
     ValueError, _text(r"log Z = -inf")),
    ("crf-impossible-position",
     lambda t: _crf(_with(torch.zeros(2, 4, 3), (0, 2), -INF)).log_prob(torch.zeros(2, 4).long()),
     ValueError, _text(r"batch element\(s\) \[\(0,\)\]")),
]


def _locked_fit(tmp: Path) -> None:
    with infer.checkpoint.CheckpointLock(tmp / "run.pt"):
        _fit(checkpoint=tmp / "run.pt")


def _double_lock(tmp: Path) -> None:
    with infer.checkpoint.CheckpointLock(tmp / "run.pt"):
        infer.checkpoint.CheckpointLock(tmp / "run.pt").acquire()


def _resave(tmp: Path, drop: str) -> Path:
    state = infer.load_checkpoint(_checkpoint(tmp))
    del state[drop]
    infer.save_checkpoint(tmp / "partial.pt", state)
    return tmp / "partial.pt"


def _truncated(tmp: Path) -> Path:
    raw = _checkpoint(tmp).read_bytes()
    return _write(tmp, "cut.pt", raw[: len(raw) // 2])


def _ids(cases):
    return [c.values[0] if hasattr(c, "values") else c[0] for c in cases]


@pytest.mark.parametrize(("name", "make", "exc", "pattern"), CASES, ids=_ids(CASES))
def test_bad_input_raises_a_clear_error(tmp_path, name, make, exc, pattern):
    marker = tmp_path / "marker"
    with pytest.raises(exc) as info:
        make(tmp_path)
    message = str(info.value)
    assert re.search(pattern(tmp_path), message), message
    assert not marker.exists(), "loading ran code from the file"
    assert pyrocg.validation.is_validation_enabled()  # no case leaves the switch off


def test_table_has_at_least_sixty_cases():
    assert len(CASES) >= 60


def test_bad_checkpoint_messages_are_short_and_printable(tmp_path):
    """Random bytes, a raw pickle and a torn file give one short ASCII line, not a dump."""
    for make in (lambda t: _write(t, "r.pt", bytes(range(256)) * 8),
                 lambda t: _write(t, "p.pt", pickle.dumps(_Payload(t / "marker"))),
                 _truncated):
        path = make(tmp_path)
        with pytest.raises(ValueError) as info:
            infer.load_checkpoint(path)
        msg = str(info.value)
        assert msg.isascii() and msg.isprintable() and len(msg) < 400, msg
        err = info.value  # no chained unpickling/zip traceback is printed with it
        assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_nan_in_crf_padding_is_accepted_and_ignored():
    torch.manual_seed(0)
    unary, lengths = torch.randn(2, 4, 3), torch.tensor([4, 2])
    padded = _with(unary, (1, slice(2, None)), NAN)
    trans = torch.randn(2, 3, 3, 3)
    padded_trans = _with(trans, (1, slice(1, None)), NAN)  # edges 1->2, 2->3 of a length-2 chain
    clean = LinearChainCRF(unary, trans, lengths=lengths)
    dirty = LinearChainCRF(padded, padded_trans, lengths=lengths)
    assert torch.isfinite(dirty.log_partition).all()
    torch.testing.assert_close(dirty.log_partition, clean.log_partition)
    torch.testing.assert_close(dirty.marginals, clean.marginals)
    assert torch.equal(dirty.argmax, clean.argmax)
    tags = clean.argmax
    torch.testing.assert_close(dirty.log_prob(tags), clean.log_prob(tags))
    # The same NaN at a valid position is refused.
    with pytest.raises(ValueError, match=r"unary holds nan at index \(1, 1, 0\)"):
        LinearChainCRF(_with(unary, (1, 1, 0), NAN), trans, lengths=lengths)


def test_validation_switch_turns_the_checks_off_and_restores():
    v = pyrocg.validation
    bad = torch.tensor([1.0, NAN])
    with v.validation_enabled(False):
        assert not v.is_validation_enabled()
        assert v.check_finite(bad, "x") is bad
        crf = _crf(_with(torch.zeros(2, 4, 3), (0, 0, 0), INF))  # unchecked: log Z is inf
        assert torch.isinf(crf.log_partition[0])
        with v.validation_enabled(True):
            with pytest.raises(ValueError, match="x has 1 NaN"):
                v.check_finite(bad, "x")
        assert not v.is_validation_enabled()
    assert v.is_validation_enabled()
    v.enable_validation(False)
    try:
        assert v.check_finite(bad, "x") is bad
        # an explicit validate_args=True still checks
        with pytest.raises(ValueError, match="unary holds inf"):
            _crf(_with(torch.zeros(2, 4, 3), (0, 0, 0), INF), validate_args=True)
    finally:
        v.enable_validation(True)
    with pytest.raises(ValueError):
        v.check_finite(bad, "x")


def test_load_table_standardises_huge_values_exactly(tmp_path):
    """1e300-scale features and target: finite standardised values equal to a float64
    reference computed on the rescaled data (no overflow to inf, no collapse to 0)."""
    rng = np.random.default_rng(0)
    a = rng.uniform(1, 9, 40) * 1e300
    b = rng.uniform(1, 9, 40) * 1e-300
    y = rng.uniform(1, 9, 40) * 1e300
    path = tmp_path / "big.csv"
    path.write_text("a,b,y\n" + "".join(f"{p:.17g},{q:.17g},{r:.17g}\n" for p, q, r in zip(a, b, y,
                                                                                 strict=True)))
    d = load_table(path, target="y", task="regression", val_fraction=0.0, test_fraction=0.0)
    # Scale-free float64 references.
    ref = np.stack([(v - v.mean()) / v.std() for v in (a / 1e300, b / 1e-300)], 1)
    np.testing.assert_allclose(d.train.x.numpy(), ref, rtol=1e-5, atol=1e-5)
    yr = (y / 1e300 - (y / 1e300).mean()) / (y / 1e300).std()
    np.testing.assert_allclose(d.train.y.numpy(), yr, rtol=1e-5, atol=1e-5)
    assert d.target_mean == pytest.approx(y.mean(), rel=1e-12)
    assert d.target_std == pytest.approx((y / 1e300).std() * 1e300, rel=1e-9)
    assert d.feature_mean is not None and torch.isfinite(d.feature_mean).all()
    assert d.feature_mean.dtype == torch.float64  # beyond float32's range
    np.testing.assert_allclose(d.unstandardize_target(d.train.y.double()).numpy(), y, rtol=1e-5)
