"""Fashion-MNIST (Xiao et al., 2017) from local IDX files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pyrocg.data.idx import read_idx
from pyrocg.data.splits import DataSplits, Split, check_device, split_indices

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "load_fashion_mnist",
]

#: Where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs the (gzipped) files.
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Base names of the four IDX files; each may also be present with a ``.gz`` suffix.
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _missing_message(data_dir: Path, missing: list[str]) -> str:
    names = ", ".join(f"{n}[.gz]" for n in FASHION_MNIST_FILES.values())
    return (
        f"Fashion-MNIST files not found in {data_dir}: missing {', '.join(missing)}.\n"
        "Get them in one of two ways:\n"
        "  1. Debian/Ubuntu: `apt-get install dataset-fashion-mnist` "
        f"(installs them into {DEFAULT_FASHION_MNIST_DIR}/, the default data_dir);\n"
        f"  2. download the four IDX files ({names}) from "
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion/) into a directory "
        "and pass it as data_dir=... (CLI: --data-dir DIR)."
    )


def _find(data_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, base in FASHION_MNIST_FILES.items():
        for candidate in (data_dir / base, data_dir / f"{base}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(base)
    if missing:
        raise FileNotFoundError(_missing_message(data_dir, missing))
    return found


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (n, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{labels_path}: expected uint8 labels of shape (n,), got {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: {labels.shape[0]} labels but {images_path} has "
            f"{images.shape[0]} images"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    return images, labels


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    val_size: int = 5000,
    flatten: bool = False,
    limit: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> DataSplits:
    """Load Fashion-MNIST from the four IDX files in ``data_dir``.

    The validation set is a seeded, stratified sample of ``val_size`` images from the
    official 60,000-image training set; the official 10,000-image test set is the
    test split. Pixels are scaled to ``[0, 1]``.

    :param data_dir: directory with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally
        ``.gz``). Default: :data:`DEFAULT_FASHION_MNIST_DIR`.
    :param device: device of the returned tensors.
    :param val_size: number of training images held out for validation (may be 0).
    :param flatten: ``x`` of shape ``(n, 784)`` if true, else ``(n, 1, 28, 28)``.
    :param limit: keep only a seeded random ``limit`` rows of the (post-validation)
        training split, for quick runs; val and test are unchanged.
    :param seed: seed of the validation split and of ``limit``'s subsample.
    :param dtype: floating dtype of ``x``; labels are int64.
    :raises FileNotFoundError: if a file is missing (the message says how to get them).
    :raises ValueError: on a corrupt or truncated file, or bad ``val_size``/``limit``.
    """
    device = check_device(device)
    data_dir = DEFAULT_FASHION_MNIST_DIR if data_dir is None else Path(data_dir)
    paths = _find(data_dir)
    train_images, train_labels = _read_pair(paths["train_images"], paths["train_labels"])
    test_images, test_labels = _read_pair(paths["test_images"], paths["test_labels"])
    n_train = train_labels.shape[0]
    if not 0 <= val_size < n_train:
        raise ValueError(f"val_size must be in [0, {n_train}), got {val_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")

    tr_idx, va_idx, _ = split_indices(
        n_train, val_size / n_train, 0.0, seed=seed, stratify=train_labels
    )
    if limit is not None and limit < len(tr_idx):
        # Separate stream from the split's, so `limit` never changes the validation set.
        rng = np.random.default_rng([seed, 1])
        tr_idx = np.sort(rng.choice(tr_idx, size=limit, replace=False))

    input_shape: tuple[int, ...] = (784,) if flatten else (1, 28, 28)

    def make(images: np.ndarray, labels: np.ndarray, idx: np.ndarray | None = None) -> Split:
        if idx is not None:
            images, labels = images[idx], labels[idx]
        # Select on the host before the copy so `limit` also saves device memory.
        x = torch.from_numpy(images.reshape(len(images), *input_shape)).to(device)
        x = x.to(dtype).div_(255.0)
        y = torch.from_numpy(labels.astype(np.int64)).to(device)
        return Split(x, y)

    return DataSplits(
        train=make(train_images, train_labels, tr_idx),
        val=make(train_images, train_labels, va_idx),
        test=make(test_images, test_labels),
        task="classification",
        name="fashion-mnist",
        input_shape=input_shape,
        num_classes=len(FASHION_MNIST_CLASSES),
        class_names=FASHION_MNIST_CLASSES,
    )
