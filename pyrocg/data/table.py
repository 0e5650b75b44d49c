"""Tabular data (CSV or whitespace-separated) for classification or regression."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pyrocg.data.splits import DataSplits, Split, check_device, split_indices

__all__ = ["load_table"]

#: With ``task="auto"``, an integer-valued numeric target with at most this many
#: distinct values is treated as class labels.
MAX_AUTO_CLASSES = 20


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; binary files and other encodings are named with their line."""
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a table file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such table file")
    raw = path.read_bytes()
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise ValueError(f"{path}: line {line}: a NUL byte; this is a binary file, not a text table")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{path}: line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8; the file is binary "
            "or in another encoding (e.g. latin-1): convert it to UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name}`"
        ) from None


def _read_rows(path: Path, delimiter: str | None) -> list[tuple[int, list[str]]]:
    """Rows as ``(line_number, fields)``, skipping blank lines and ``#`` comments."""
    rows: list[tuple[int, list[str]]] = []
    f = io.StringIO(_read_text(path), newline="")
    if delimiter is None:  # whitespace-separated
        for lineno, line in enumerate(f, start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                rows.append((lineno, line.split()))
    else:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            for fields in reader:
                if not any(x.strip() for x in fields) or fields[0].lstrip().startswith("#"):
                    continue
                rows.append((reader.line_num, [x.strip() for x in fields]))
        except csv.Error as exc:
            raise ValueError(f"{path}: line {reader.line_num}: {exc}") from None
    return rows


def _check_names(names: list[str], target: str | int, path: Path, line: int) -> None:
    seen: dict[str, list[int]] = {}
    for c, name in enumerate(names):
        seen.setdefault(name, []).append(c)
    dup = {name: cols for name, cols in seen.items() if len(cols) > 1}
    if isinstance(target, str) and target in dup:
        raise ValueError(
            f"{path}: line {line}: target {target!r} names {len(dup[target])} columns "
            f"(indices {dup[target]}); rename all but one"
        )
    if dup:
        listed = ", ".join(f"{name!r} (columns {cols})" for name, cols in dup.items())
        raise ValueError(f"{path}: line {line}: duplicate column names {listed}; names must be unique")


def _statistics(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of ``v`` (float64), safe up to float64's range.

    Each column is divided by its largest absolute value first, so sums and squares cannot
    overflow (values of 1e300 give finite statistics) and tiny values are not flushed to 0.
    A constant column gets standard deviation 1 (centred only).
    """
    scale = np.abs(v).max(axis=0, initial=0.0)
    scale = np.where(scale > 0, scale, 1.0)
    u = v / scale
    mu, sd = u.mean(axis=0), u.std(axis=0)
    return mu * scale, np.where(sd > 0, sd * scale, 1.0)  # constant column: centre only


def _apply(v: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        out = (v - mu) / sd
        # v - mu can overflow for |v| near float64's maximum; dividing first cannot then.
        return np.where(np.isfinite(out), out, v / sd - mu / sd)


def _check_representable(v: np.ndarray, dtype: torch.dtype, names: list[str],
                         standardized: bool, path: Path) -> None:
    """Refuse values that become inf in ``dtype``, or 0 although non-zero; name the column."""
    info = torch.finfo(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        size = np.abs(v)
    for bad, kind in ((~np.isfinite(v), "are not finite after standardisation"),
                      (size > info.max, f"overflow {dtype} (largest {info.max:.3g})"),
                      ((v != 0) & (size < info.smallest_normal * info.eps),
                       f"underflow to 0 in {dtype}")):
        if bad.any():
            j = int(np.flatnonzero(bad.any(axis=0))[0])
            hint = ("rescale the column" if standardized
                    else "load with standardize=True or dtype=torch.float64")
            raise ValueError(
                f"{path}: column {names[j]} has values that {kind}, e.g. "
                f"{v[bad[:, j], j][0]:.6g}; {hint}"
            )


def _detect_header(rows: list[tuple[int, list[str]]]) -> bool:
    first = rows[0][1]
    if not any(_is_number(x) for x in first):
        return True
    if len(rows) < 2:
        return False
    # A non-numeric field above a numeric one is a column name (string class labels
    # are non-numeric all the way down, so they do not trigger this).
    second = rows[1][1]
    return any(not _is_number(a) and _is_number(b) for a, b in zip(first, second, strict=False))


def _resolve_target(target: str | int, names: list[str] | None, n_cols: int, path: Path) -> int:
    if isinstance(target, bool):  # bool is an int; almost surely a mistake
        raise TypeError(f"target must be a column name or index, got {target!r}")
    if isinstance(target, int):
        if not -n_cols <= target < n_cols:
            raise ValueError(
                f"{path}: target column index {target} out of range for {n_cols} columns"
            )
        return target % n_cols
    if names is None:
        raise ValueError(
            f"{path}: target={target!r} is a column name but the file has no header row; "
            "pass a column index instead (e.g. target=-1)"
        )
    if target not in names:
        raise ValueError(f"{path}: target column {target!r} not found; columns are {names}")
    return names.index(target)


def load_table(
    path: str | os.PathLike[str],
    target: str | int = -1,
    task: Literal["auto", "classification", "regression"] = "auto",
    delimiter: str | None = None,
    header: bool | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> DataSplits:
    """Load a numeric table; one column is the target, the others are features.

    Features (and a regression target) are standardised with the mean and standard
    deviation of the *training split only*, then the same transform is applied to
    val and test so no held-out information leaks into training. Class labels are
    mapped to ``0..K-1`` in sorted order; ``class_names`` keeps the original labels.

    :param path: ``.csv`` (comma-separated) or whitespace-separated text file. Blank
        lines and lines starting with ``#`` are skipped.
    :param target: column name (needs a header) or index (negative counts from the end).
    :param task: ``"auto"`` picks classification when the target is non-numeric, or is
        integer-valued with at most 20 distinct values; regression otherwise.
    :param delimiter: field separator; ``None``: ``","`` for ``.csv`` files, else whitespace.
    :param header: whether the first row holds column names; ``None`` detects it.
    :param val_fraction: held-out validation fraction (stratified for classification).
    :param test_fraction: held-out test fraction (stratified for classification).
    :param seed: seed of the split.
    :param device: device of the returned tensors.
    :param standardize: standardise features and regression target (train statistics).
    :param dtype: floating dtype of ``x`` (and of a regression ``y``).

    Standardisation runs in float64 on columns first divided by their largest absolute
    value, so values up to float64's range (e.g. ``1e300``) give finite results; statistics
    that ``dtype`` cannot hold are kept in float64. Values that ``dtype`` would turn into inf
    or 0 (``standardize=False``) are an error naming the column.

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: every message names the file, and the line where there is one: a
        directory, a binary or non-UTF-8 file, an empty table, ragged rows, duplicate
        column names (or a target name used twice), a missing target column, non-numeric
        or non-finite values, values ``dtype`` cannot represent, a class with fewer than 2
        rows while held-out fractions are non-zero, or a ``device`` this machine lacks.
    """
    path = Path(path)
    device = check_device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if task not in ("auto", "classification", "regression"):
        raise ValueError(f"task must be 'auto', 'classification' or 'regression', got {task!r}")
    if delimiter is None and path.suffix.lower() == ".csv":
        delimiter = ","
    rows = _read_rows(path, delimiter)
    if not rows:
        raise ValueError(f"{path}: table is empty")
    has_header = _detect_header(rows) if header is None else header
    names = rows[0][1] if has_header else None
    if names is not None:
        _check_names(names, target, path, rows[0][0])
    data = rows[1:] if has_header else rows
    if not data:
        raise ValueError(f"{path}: table has a header but no data rows")
    n_cols = len(names) if names is not None else len(data[0][1])
    for lineno, fields in data:
        if len(fields) != n_cols:
            raise ValueError(f"{path}: line {lineno} has {len(fields)} fields, expected {n_cols}")
    if n_cols < 2:
        raise ValueError(f"{path}: need at least one feature column and a target column")
    t = _resolve_target(target, names, n_cols, path)
    feature_cols = [c for c in range(n_cols) if c != t]
    col_name = (lambda c: repr(names[c])) if names is not None else (lambda c: f"index {c}")

    # Parse features, naming the first bad cell.
    x = np.empty((len(data), len(feature_cols)), dtype=np.float64)
    for i, (lineno, fields) in enumerate(data):
        for j, c in enumerate(feature_cols):
            try:
                v = float(fields[c])
            except ValueError:
                raise ValueError(
                    f"{path}: non-numeric value {fields[c]!r} at line {lineno}, "
                    f"column {col_name(c)}"
                ) from None
            if not math.isfinite(v):
                raise ValueError(
                    f"{path}: non-finite value {fields[c]!r} at line {lineno}, column {col_name(c)}"
                )
            x[i, j] = v

    raw_target = [fields[t] for _, fields in data]
    numeric_target = all(_is_number(v) for v in raw_target)
    if task == "auto":
        if not numeric_target:
            task = "classification"
        else:
            vals = np.array([float(v) for v in raw_target])
            is_int = bool(np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)))
            task = (
                "classification"
                if is_int and len(np.unique(vals)) <= MAX_AUTO_CLASSES
                else "regression"
            )

    target_mean = target_std = None
    class_names: tuple[str, ...] | None = None
    if task == "classification":
        # Sort numeric labels numerically ("10" after "9"), others lexicographically.
        keys = sorted(set(raw_target), key=(lambda v: float(v)) if numeric_target else None)
        if numeric_target and len({float(k) for k in keys}) != len(keys):
            raise ValueError(f"{path}: target spells equal numbers differently, e.g. 1 and 1.0")
        class_names = tuple(keys)
        mapping = {k: i for i, k in enumerate(keys)}
        y = np.array([mapping[v] for v in raw_target], dtype=np.int64)
        counts = np.bincount(y, minlength=len(keys))
        if val_fraction + test_fraction > 0 and counts.min() < 2:
            rare = [keys[k] for k in np.flatnonzero(counts < 2)]
            raise ValueError(
                f"{path}: class(es) {rare} have fewer than 2 rows; a stratified split needs at "
                "least 2 rows per class (drop or merge them, or use val/test fractions of 0)"
            )
        stratify: np.ndarray | None = y
    else:
        y_f = np.empty(len(data), dtype=np.float64)
        for i, (lineno, fields) in enumerate(data):
            try:
                y_f[i] = float(fields[t])
            except ValueError:
                raise ValueError(
                    f"{path}: non-numeric regression target {fields[t]!r} at line {lineno}, "
                    f"column {col_name(t)}"
                ) from None
            if not math.isfinite(y_f[i]):
                raise ValueError(f"{path}: non-finite target {fields[t]!r} at line {lineno}")
        y = y_f
        stratify = None

    tr, va, te = split_indices(len(data), val_fraction, test_fraction, seed=seed, stratify=stratify)
    feature_mean = feature_std = None
    if standardize:
        # Training rows' statistics applied to every split, in float64 and overflow-safe.
        mu, sd = _statistics(x[tr])
        x = _apply(x, mu, sd)
        # Statistics beyond dtype's range (e.g. 1e300 in float32) are kept in float64.
        stat_dtype = dtype if np.abs(np.concatenate([mu, sd])).max(initial=0.0) <= torch.finfo(
            dtype).max else torch.float64
        feature_mean = torch.as_tensor(mu, dtype=stat_dtype, device=device)
        feature_std = torch.as_tensor(sd, dtype=stat_dtype, device=device)
        if task == "regression":
            t_mu, t_sd = _statistics(y[tr][:, None])
            target_mean, target_std = float(t_mu[0]), float(t_sd[0])
            y = _apply(y[:, None], t_mu, t_sd)[:, 0]
    _check_representable(x, dtype, [col_name(c) for c in feature_cols], standardize, path)
    if task == "regression":
        _check_representable(y[:, None], dtype, [col_name(t)], standardize, path)

    y_dtype = torch.int64 if task == "classification" else dtype

    def make(idx: np.ndarray) -> Split:
        return Split(
            torch.as_tensor(x[idx], dtype=dtype, device=device),
            torch.as_tensor(y[idx], dtype=y_dtype, device=device),
        )

    return DataSplits(
        train=make(tr),
        val=make(va),
        test=make(te),
        task=task,
        name=path.stem,
        input_shape=(len(feature_cols),),
        num_classes=len(class_names) if class_names is not None else None,
        class_names=class_names,
        target_mean=target_mean,
        target_std=target_std,
        feature_mean=feature_mean,
        feature_std=feature_std,
        feature_names=tuple(names[c] for c in feature_cols) if names is not None else None,
    )
