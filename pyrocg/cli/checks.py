"""Checks of the command line, run before any data are loaded or any training starts.

Every check raises :class:`UsageError` (exit status 2) with one line that names the flag or
the file and says what was expected. ``pyrocg train`` turns its arguments into a *spec*, a
dict of plain values stored in every checkpoint (``fit(meta={"spec": spec})``), from which
``pyrocg evaluate`` rebuilds the model and against which ``--resume`` compares new arguments.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import modes
from ..data import DEFAULT_FASHION_MNIST_DIR, check_device
from ..infer.checkpoint import CheckpointError

__all__ = [
    "UsageError",
    "SPEC_KEYS",
    "MAX_SAMPLES",
    "check_device_flag",
    "check_input_file",
    "check_output_dir",
    "check_output_file",
    "check_distinct",
    "check_samples",
    "check_seed",
    "check_epochs",
    "check_given",
    "flag",
    "resolve_train_spec",
    "check_saved_spec",
    "resume_differences",
]

#: The most stochastic passes ``--samples`` may ask for (100x the default): a prediction
#: costs ``samples x rows`` network passes, and validation repeats it after every epoch.
MAX_SAMPLES = 10_000
MAX_EPOCHS = 100_000

#: The keys of a ``pyrocg train`` spec, in the order they are listed.
SPEC_KEYS = ("dataset", "model", "mode", "rate", "p", "local_reparam", "weight_decay", "seed",
             "data_dir", "limit", "table", "target", "optimizer", "lr", "batch_size",
             "milestones", "epochs")
DATASETS = ("digits", "fashion-mnist", "table")
MODEL_NAMES = ("mlp", "cnn", "resnet20")
OPTIMIZERS = ("adam", "sgd")
IMAGE_DATASETS = ("digits", "fashion-mnist")
#: The out-of-distribution sets ``pyrocg diagnose --ood`` builds from the test images.
OOD_SETS = ("noise", "inverted", "rotated")
DEFAULTS: dict[str, Any] = {
    "dataset": "digits", "model": "mlp", "mode": "feedforward", "rate": 0.3, "p": 0.2,
    "local_reparam": False, "weight_decay": 0.0, "seed": 0, "data_dir": None, "limit": None,
    "table": None, "target": -1, "optimizer": "adam", "lr": 1e-3, "batch_size": 64,
    "milestones": [], "epochs": 10,
}


class UsageError(ValueError):
    """A command-line argument is wrong (exit status 2); the message names the flag."""


def flag(key: str) -> str:
    """The command-line flag of a spec key: ``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


# ---------------------------------------------------------------------------- numbers


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_in(name: str, v: object, low: int, high: int | None = None) -> int:
    """``v`` as an int in ``[low, high)`` (``high=None``: no upper bound)."""
    if not _is_int(v) or v < low or (high is not None and v >= high):
        bounds = f"from {low} to {high - 1}" if high is not None else f">= {low}"
        raise UsageError(f"{name} must be an integer {bounds}, got {v!r}")
    return int(v)


def check_seed(v: object, name: str = "--seed") -> int:
    """A seed in ``[0, 2**32)`` (what NumPy and torch accept)."""
    if _is_int(v) and not 0 <= v < 2**32:
        raise UsageError(f"{name} must be an integer in [0, 2**32) = [0, 4294967295], got {v}")
    return _int_in(name, v, 0, 2**32)


def check_samples(v: object, name: str = "--samples") -> int:
    """Stochastic passes per prediction, in ``[1, MAX_SAMPLES]``."""
    return _int_in(name, v, 1, MAX_SAMPLES + 1)


def check_epochs(v: object, name: str = "--epochs") -> int:
    return _int_in(name, v, 1, MAX_EPOCHS + 1)


def _check_value(key: str, v: Any) -> Any:
    """Type and range of one spec value (named by its flag); returns it normalised."""
    name = flag(key)
    if key == "dataset" or key == "model" or key == "mode" or key == "optimizer":
        choices = {"dataset": DATASETS, "model": MODEL_NAMES, "mode": tuple(modes.MODES),
                   "optimizer": OPTIMIZERS}[key]
        if v not in choices:
            raise UsageError(f"{name} must be one of {', '.join(choices)}, got {v!r}")
        return v
    if key == "seed":
        return check_seed(v, name)
    if key in ("epochs",):
        return check_epochs(v, name)
    if key in ("batch_size", "limit"):
        return _int_in(name, v, 1)
    if key == "local_reparam":
        if not isinstance(v, bool):
            raise UsageError(f"{name} must be true or false, got {v!r}")
        return v
    if key in ("rate", "p", "lr", "weight_decay"):
        if not _is_real(v) or not math.isfinite(v):
            raise UsageError(f"{name} must be a finite number, got {v!r}")
        v = float(v)
        ok, what = {"rate": (0.0 <= v <= 1.0, "in [0, 1]"), "p": (0.0 <= v < 1.0, "in [0, 1)"),
                    "lr": (v > 0.0, "> 0"), "weight_decay": (v >= 0.0, ">= 0")}[key]
        if not ok:
            raise UsageError(f"{name} must be {what}, got {v}")
        return v
    if key == "milestones":
        if not isinstance(v, (list, tuple)) or not all(_is_int(m) for m in v):
            raise UsageError(f"{name} must be a list of epochs, got {v!r}")
        if any(m < 1 for m in v) or any(a >= b for a, b in zip(v, v[1:], strict=False)):
            raise UsageError(f"{name} must be positive and increasing epochs, got "
                             f"{' '.join(map(str, v))}")
        return [int(m) for m in v]
    if key in ("data_dir", "table"):
        if not isinstance(v, str) or not v.strip():
            raise UsageError(f"{name} must be a path, got {v!r}")
        return v
    if key == "target":
        if isinstance(v, str):
            if not v.strip():
                raise UsageError(f"{name} must be a column name or index, got ''")
            # An integer (negative counts from the end) is an index, anything else a name.
            return int(v) if re.fullmatch(r"[+-]?\d+", v.strip()) else v
        if _is_int(v):
            return v
        raise UsageError(f"{name} must be a column name or index, got {v!r}")
    raise UsageError(f"unknown setting {key!r}")


# ---------------------------------------------------------------------------- devices


def check_device_flag(value: str, name: str = "--device") -> torch.device:
    """A device this machine has and a model can train on: cpu, cuda[:N] (or mps)."""
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{name} must be cpu or cuda[:N], got {value!r}")
    try:
        device = check_device(value.strip(), name)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{name}={value!r}: expected cpu or cuda[:N] (a {device.type!r} device "
                         "cannot train or evaluate a model)")
    return device


# ------------------------------------------------------------------------------ paths


def _nearest_existing(p: Path) -> Path:
    for anc in (p, *p.parents):
        if os.path.lexists(anc):
            return anc
    return Path(".")


def _probe_dir(name: str, value: str, directory: Path) -> None:
    """Create and remove a file in ``directory``: the one sure test that a run can write there."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pyrocg-probe-", dir=directory)
    except OSError as err:
        raise UsageError(f"{name} {value}: cannot write into directory {directory} "
                         f"({err.strerror or err})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(name: str, value: str | None) -> Path | None:
    """An output file: not ``""``, not a directory, in an existing writable directory.

    :returns: the path, or ``None`` if ``value`` is ``None`` (the flag was not given).
    """
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{name} is empty; expected a file path")
    p = Path(value)
    if p.is_dir():
        raise UsageError(f"{name} {value}: is a directory; expected a file path")
    parent = p.parent
    if not parent.is_dir():
        anc = _nearest_existing(parent)
        if anc != parent and anc.is_dir() or not os.path.lexists(anc):
            raise UsageError(f"{name} {value}: directory {parent} does not exist; create it first")
        raise UsageError(f"{name} {value}: {anc} is a file, not a directory")
    if os.path.lexists(p):
        if not p.is_file() and not p.is_char_device():
            raise UsageError(f"{name} {value}: exists and is not a regular file")
        try:
            with open(p, "ab"):
                pass
        except OSError as err:
            raise UsageError(f"{name} {value}: file is not writable ({err.strerror or err})") \
                from None
    if p.is_char_device():
        return p  # /dev/null and the like
    _probe_dir(name, value, parent)
    return p


def check_output_dir(name: str, value: str | None) -> Path | None:
    """An output directory: an existing writable one, or one that can be created in an
    existing writable directory."""
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{name} is empty; expected a directory path")
    p = Path(value)
    if os.path.lexists(p) and not p.is_dir():
        raise UsageError(f"{name} {value}: is a file; expected a directory")
    if p.is_dir():
        _probe_dir(name, value, p)
        return p
    parent = p.parent
    if not parent.is_dir():
        anc = _nearest_existing(parent)
        if anc.is_dir() or not os.path.lexists(anc):
            raise UsageError(f"{name} {value}: directory {parent} does not exist; create it first")
        raise UsageError(f"{name} {value}: {anc} is a file, not a directory")
    _probe_dir(name, value, parent)
    return p


def check_input_file(name: str, value: str | None, what: str = "file") -> Path | None:
    """An input file that exists, is a regular file and can be read."""
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{name} is empty; expected the path of a {what}")
    p = Path(value)
    if p.is_dir():
        raise UsageError(f"{name} {value}: is a directory; expected a {what}")
    if not p.exists():
        raise UsageError(f"{name} {value}: no such file; expected a {what}")
    if not p.is_file():
        raise UsageError(f"{name} {value}: not a regular file; expected a {what}")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{name} {value}: file is not readable")
    return p


def check_input_dir(name: str, value: str | None, hint: str = "") -> Path | None:
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{name} is empty; expected a directory")
    p = Path(value)
    if not p.exists():
        raise UsageError(f"{name} {value}: no such directory{hint}")
    if not p.is_dir():
        raise UsageError(f"{name} {value}: not a directory{hint}")
    return p


def check_distinct(paths: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """No output path is another output's or an input's: the run would overwrite it."""
    def key(p: Path) -> str:
        return os.path.realpath(p)

    outs = [(n, p) for n, p in paths.items() if p is not None and not p.is_char_device()]
    for i, (a, pa) in enumerate(outs):
        for b, pb in outs[i + 1 :]:
            if key(pa) == key(pb):
                raise UsageError(f"{a} and {b} are the same file {pa}; give each its own path")
        for b, pb in inputs.items():
            if pb is not None and key(pa) == key(pb):
                raise UsageError(f"{a} {pa} is the input {b}; writing it would destroy it")


# ------------------------------------------------------------------------------- spec


def _takes(mode: str, param: str) -> bool:
    return param in modes.mode_parameters(mode)


def _modes_where(pred) -> str:
    return ", ".join(name for name, cls in modes.MODES.items() if pred(name, cls))


FASHION_HINT = (f" (expected the directory of the four Fashion-MNIST IDX files; "
                f"`apt-get install dataset-fashion-mnist` installs them into "
                f"{DEFAULT_FASHION_MNIST_DIR})")


def check_given(given: dict[str, Any]) -> dict[str, Any]:
    """Type and range of each flag given (``None``: not given), named by its flag."""
    return {k: _check_value(k, v) for k, v in given.items() if v is not None}


def resolve_train_spec(given: dict[str, Any], saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The spec of a ``pyrocg train`` run from the flags the user ``given`` (``None`` =
    not given), on top of the ``saved`` spec of a checkpoint when resuming, else of the
    defaults. Raises :class:`UsageError` naming the first flag that is wrong or does not
    apply to the chosen data set or mode.
    """
    given = check_given(given)
    base = saved if saved is not None else DEFAULTS

    def pick(key: str) -> Any:
        if key in given:
            return given[key]
        value = base.get(key)  # None in a saved spec: did not apply to its run
        return DEFAULTS[key] if value is None else value

    spec: dict[str, Any] = {k: pick(k) for k in ("dataset", "model", "mode", "optimizer", "lr",
                                                 "batch_size", "epochs", "seed",
                                                 "weight_decay")}
    dataset, mode, model = spec["dataset"], spec["mode"], spec["model"]
    # Flags that do not apply are errors: they would be ignored while the spec records them.
    for key in ("data_dir", "limit"):
        if key in given and dataset != "fashion-mnist":
            raise UsageError(f"{flag(key)} applies only to --dataset fashion-mnist, not "
                             f"--dataset {dataset}")
    for key in ("table", "target"):
        if key in given and dataset != "table":
            raise UsageError(f"{flag(key)} applies only to --dataset table, not --dataset {dataset}")
    if "rate" in given and not _takes(mode, "rate"):
        raise UsageError(f"--rate applies only to modes with a sampling rate "
                         f"({_modes_where(lambda n, c: _takes(n, 'rate'))}), not --mode {mode}")
    uses_dropout = modes.MODES[mode].uses_dropout
    if "p" in given and not uses_dropout:
        raise UsageError(f"--p (dropout probability) applies only to modes with dropout nodes "
                         f"({_modes_where(lambda n, c: c.uses_dropout)}), not --mode {mode}")
    if given.get("local_reparam") and not _takes(mode, "local_reparam"):
        raise UsageError(f"--local-reparam applies only to "
                         f"{_modes_where(lambda n, c: _takes(n, 'local_reparam'))} "
                         f"(random weights), not --mode {mode}")
    spec["rate"] = pick("rate") if _takes(mode, "rate") else None
    spec["p"] = pick("p") if uses_dropout else None
    spec["local_reparam"] = bool(pick("local_reparam")) if _takes(mode, "local_reparam") else False
    fashion, table = dataset == "fashion-mnist", dataset == "table"
    spec["data_dir"] = pick("data_dir") if fashion else None
    spec["limit"] = pick("limit") if fashion else None
    spec["table"] = pick("table") if table else None
    spec["target"] = pick("target") if table else None
    spec["milestones"] = list(pick("milestones"))
    if uses_dropout and spec["p"] == 0.0:
        raise UsageError(f"--p 0 gives no dropout nodes, but --mode {mode} needs them; "
                         "give --p in (0, 1)")
    if table and spec["table"] is None:
        raise UsageError("--dataset table needs --table PATH (and --target COLUMN, default the "
                         "last column)")
    if model != "mlp" and dataset not in IMAGE_DATASETS:
        raise UsageError(f"--model {model} needs image inputs; --dataset {dataset} gives "
                         "feature vectors: use --model mlp")
    late = [m for m in spec["milestones"] if m >= spec["epochs"]]
    if late:
        raise UsageError(f"--milestones {' '.join(map(str, late))} must be below --epochs "
                         f"{spec['epochs']} (a milestone at or after the last epoch never applies)")
    return {k: spec[k] for k in SPEC_KEYS}


def check_saved_spec(spec: Any, path: str | os.PathLike) -> dict[str, Any]:
    """The spec stored in checkpoint ``path``, checked like command-line arguments.

    :raises CheckpointError: naming the file if the spec is missing or invalid.
    """
    if not isinstance(spec, dict) or not all(isinstance(k, str) for k in spec):
        raise CheckpointError(f"{path}: holds no `pyrocg train` model spec (it was written by "
                              "pyrocg.infer.fit without meta={'spec': ...}); rebuild the model "
                              "in Python and load its 'model' entry")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise CheckpointError(f"{path}: its model spec has unknown entries {unknown}")
    try:
        # Settings that do not apply are None in a spec; any other value is checked as if
        # it had been given on the command line (so one that does not apply is an error).
        return resolve_train_spec({k: v for k, v in spec.items() if v is not None})
    except UsageError as err:
        raise CheckpointError(f"{path}: its model spec is invalid ({err})") from None


#: Settings that may change on ``--resume`` (they are applied and reported).
RESUMABLE_CHANGES = ("epochs",)


def resume_differences(saved: dict[str, Any], new: dict[str, Any],
                       given: dict[str, Any] | None = None) -> list[str]:
    """``"--flag NEW (checkpoint: OLD)"`` for every setting that differs, except those in
    :data:`RESUMABLE_CHANGES`; only flags in ``given`` (not ``None``) if it is given -- the
    others follow from them (a new --mode brings its default --rate)."""
    def show(v: Any) -> str:
        if v is None:
            return "not set"
        if isinstance(v, list):
            return " ".join(map(str, v)) or "none"
        return str(v)

    return [f"{flag(k)} {show(new[k])} (checkpoint: {show(saved.get(k))})"
            for k in SPEC_KEYS if k not in RESUMABLE_CHANGES and new[k] != saved.get(k)
            and (given is None or given.get(k) is not None)]
