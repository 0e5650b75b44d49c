"""Split containers, seeded (stratified) splitting, standardisation and batching."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

__all__ = [
    "Batches",
    "check_device",
    "DataSplits",
    "Split",
    "Task",
    "batches",
    "split_indices",
]

Task = Literal["classification", "regression"]


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"


@dataclass(frozen=True, repr=False)
class Split:
    """One split: inputs ``x`` of shape ``(n, *input_shape)`` and targets ``y`` of shape ``(n,)``.

    ``y`` is int64 class indices for classification and float for regression.
    ``len(split)`` is the number of rows, and it unpacks like a pair:
    ``x, y = splits.train``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x and y must have the same number of rows, got {self.x.shape[0]} "
                f"and {self.y.shape[0]}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.x, self.y))

    def __repr__(self) -> str:
        # Summaries, not tensor contents: these print in logs and CLI output.
        return f"Split(x={_describe(self.x)}, y={_describe(self.y)}, device={self.x.device})"

    def to(self, device: torch.device | str) -> Split:
        """Return a copy of the split on ``device``."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True, repr=False)
class DataSplits:
    """Train / validation / test splits of one data set plus the metadata models need.

    :ivar train: the training split.
    :ivar val: the validation split (may have 0 rows).
    :ivar test: the test split (may have 0 rows).
    :ivar task: ``"classification"`` or ``"regression"``.
    :ivar name: data set name, e.g. ``"digits"``.
    :ivar input_shape: shape of one input, e.g. ``(64,)`` or ``(1, 28, 28)``.
    :ivar num_classes: number of classes (``None`` for regression).
    :ivar class_names: original label of each class index (``None`` for regression).
    :ivar target_mean: training-split mean used to standardise a regression target
        (``None`` for classification); see :meth:`unstandardize_target`.
    :ivar target_std: training-split standard deviation of that target.
    :ivar feature_mean: training-split mean used to standardise tabular features, shape
        ``input_shape`` (``None`` when not standardised).
    :ivar feature_std: training-split standard deviation of those features.
    :ivar feature_names: column names of tabular features (``None`` when unknown).
    """

    train: Split
    val: Split
    test: Split
    task: Task
    name: str
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    target_mean: float | None = None
    target_std: float | None = None
    feature_mean: torch.Tensor | None = field(default=None, repr=False)
    feature_std: torch.Tensor | None = field(default=None, repr=False)
    feature_names: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        sizes = f"train={len(self.train)}, val={len(self.val)}, test={len(self.test)}"
        extra = (
            f"num_classes={self.num_classes}"
            if self.task == "classification"
            else f"target_mean={self.target_mean:.4g}, target_std={self.target_std:.4g}"
            if self.target_mean is not None and self.target_std is not None
            else "unstandardised target"
        )
        return (
            f"DataSplits(name={self.name!r}, task={self.task!r}, {sizes}, "
            f"input_shape={self.input_shape}, {extra}, device={self.device})"
        )

    @property
    def input_dim(self) -> int:
        """Number of scalar inputs per example (product of ``input_shape``)."""
        return math.prod(self.input_shape)

    @property
    def device(self) -> torch.device:
        """Device the tensors live on."""
        return self.train.x.device

    def splits(self) -> dict[str, Split]:
        """The three splits by name, in ``train, val, test`` order."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def unstandardize_target(self, y: torch.Tensor) -> torch.Tensor:
        """Map a standardised regression target (or predictive mean) back to original units.

        For a predictive variance multiply by ``target_std ** 2`` instead. Any shape (e.g.
        per-pass predictions ``(T, batch)``).
        """
        if self.target_mean is None or self.target_std is None:
            return y
        return y * self.target_std + self.target_mean

    def standardize_target(self, y: torch.Tensor) -> torch.Tensor:
        """Map targets in original units to the standardised units the splits hold:
        ``(y - target_mean) / target_std``, the inverse of :meth:`unstandardize_target`."""
        if self.target_mean is None or self.target_std is None:
            return y
        return (y - self.target_mean) / self.target_std

    def to(self, device: torch.device | str) -> DataSplits:
        """Return a copy with every tensor moved to ``device``."""
        fm = None if self.feature_mean is None else self.feature_mean.to(device)
        fs = None if self.feature_std is None else self.feature_std.to(device)
        return DataSplits(
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            task=self.task,
            name=self.name,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            class_names=self.class_names,
            target_mean=self.target_mean,
            target_std=self.target_std,
            feature_mean=fm,
            feature_std=fs,
            feature_names=self.feature_names,
        )


def check_device(device: torch.device | str | int, what: str = "device") -> torch.device:
    """Parse ``device`` and check that this machine has it.

    :param device: e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`torch.device`.
    :param what: the argument's name in messages.
    :returns: the :class:`torch.device`.
    :raises TypeError: if ``device`` is not a str, int or torch.device.
    :raises ValueError: if it is not a device name, or names a GPU this machine lacks.

    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("gpu")
    Traceback (most recent call last):
    ...
    ValueError: device='gpu' is not a device (use e.g. 'cpu', 'cuda' or 'cuda:1')
    """
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"{what} must be a str or torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(
            f"{what}={device!r} is not a device (use e.g. 'cpu', 'cuda' or 'cuda:1')"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{what}={device!r}, but CUDA is not available on this machine (no GPU, or a "
                "CPU-only build of torch); use 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{what}={device!r}, but this machine has {torch.cuda.device_count()} GPU(s)"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what}={device!r}, but MPS is not available on this machine; use 'cpu'")
    return dev


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Counts proportional to ``weights`` that sum exactly to ``total`` (largest remainder)."""
    if total == 0 or weights.sum() == 0:
        return np.zeros(len(weights), dtype=np.int64)
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    remainder = total - int(counts.sum())
    # Stable sort so ties go to the lower class index: deterministic across platforms.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:remainder]] += 1
    return counts


def split_indices(
    n: int,
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
    stratify: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/val/test index split, optionally stratified by class label.

    Sizes are ``round(fraction * n)`` for val and test; the rest is train. With
    ``stratify`` each class is split in the same proportions (largest-remainder
    rounding) and every class keeps at least one training row.

    :param n: number of rows.
    :param val_fraction: validation fraction in ``[0, 1)``.
    :param test_fraction: test fraction in ``[0, 1)``; ``val_fraction + test_fraction < 1``.
    :param seed: seed of the numpy generator that shuffles the rows.
    :param stratify: optional class label per row, shape ``(n,)``.
    :returns: ``(train_idx, val_idx, test_idx)``, each sorted ascending.

    >>> tr, va, te = split_indices(10, 0.2, 0.3, seed=0)
    >>> len(tr), len(va), len(te)
    (5, 2, 3)
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    n_val, n_test = round(val_fraction * n), round(test_fraction * n)
    if n - n_val - n_test < 1:
        raise ValueError(f"no training rows left: n={n}, n_val={n_val}, n_test={n_test}")
    rng = np.random.default_rng(seed)
    if stratify is None:
        perm = rng.permutation(n)
        parts = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
        test, val, train = (np.sort(p) for p in parts)
        return train, val, test

    labels = np.asarray(stratify)
    if labels.shape != (n,):
        raise ValueError(f"stratify must have shape ({n},), got {labels.shape}")
    classes, class_counts = np.unique(labels, return_counts=True)
    test_counts = _apportion(class_counts.astype(float), n_test)
    val_counts = _apportion(class_counts.astype(float), n_val)
    # Keep >= 1 training row per class: give the class back one held-out row and
    # take it instead from the class with the most training rows.
    train_counts = class_counts - test_counts - val_counts
    for k in np.flatnonzero(train_counts < 1):
        counts = val_counts if val_counts[k] > 0 else test_counts
        counts[k] -= 1
        train_counts[k] += 1
        donor = int(np.argmax(train_counts))
        if train_counts[donor] > 1:
            counts[donor] += 1
            train_counts[donor] -= 1
    train_parts, val_parts, test_parts = [], [], []
    for k, cls in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        nt, nv = int(test_counts[k]), int(val_counts[k])
        test_parts.append(idx[:nt])
        val_parts.append(idx[nt : nt + nv])
        train_parts.append(idx[nt + nv :])
    return tuple(np.sort(np.concatenate(p)) for p in (train_parts, val_parts, test_parts))  # type: ignore[return-value]


class Batches:
    """Re-iterable mini-batch iterator over in-memory tensors.

    Each ``iter()`` draws a fresh permutation (when shuffling) from ``generator``,
    so an epoch loop ``for epoch ...: for xb, yb in loader`` reshuffles every
    epoch while staying reproducible from the generator's seed. Indexing happens
    on the tensors' device, so nothing is copied to or from the host.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}"
            )
        if x.device != y.device:
            raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = int(self.x.shape[0])
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = int(self.x.shape[0])
        if self.shuffle:
            g = self.generator
            # randperm must run on the generator's device; move the indices afterwards.
            gen_device = g.device if g is not None else self.x.device
            order: torch.Tensor | None = torch.randperm(n, generator=g, device=gen_device).to(
                self.x.device
            )
        else:
            order = None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                yield self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                yield self.x[idx], self.y[idx]


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Batches:
    """Mini-batches ``(x[idx], y[idx])`` of at most ``batch_size`` rows.

    :param x: inputs, shape ``(n, ...)``.
    :param y: targets, shape ``(n, ...)``, on the same device as ``x``.
    :param batch_size: rows per batch (the last one may be smaller unless ``drop_last``).
    :param shuffle: draw a new random order on every iteration.
    :param generator: source of randomness for the shuffle (any device); ``None``
        uses torch's global RNG.
    :param drop_last: skip a final incomplete batch.
    :returns: A re-iterable :class:`Batches` with ``len()`` = number of batches.

    >>> x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    >>> [yb.tolist() for _, yb in batches(x, y, 4, shuffle=False)]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    >>> g = torch.Generator().manual_seed(0)
    >>> sorted(torch.cat([yb for _, yb in batches(x, y, 3, generator=g)]).tolist())
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    return Batches(x, y, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last)
