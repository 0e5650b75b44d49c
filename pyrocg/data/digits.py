"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)."""

from __future__ import annotations

import numpy as np
import torch

from pyrocg.data.splits import DataSplits, Split, check_device, split_indices

__all__ = ["load_digits"]


def load_digits(
    device: torch.device | str = "cpu",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    flatten: bool = True,
    dtype: torch.dtype = torch.float32,
) -> DataSplits:
    """Load the digits data set with a seeded, stratified train/val/test split.

    Pixels (0..16) are scaled to ``[0, 1]``. Needs scikit-learn, which ships the
    data inside the package (no download).

    :param device: device of the returned tensors.
    :param val_fraction: held-out validation fraction (sizes are rounded).
    :param test_fraction: held-out test fraction.
    :param seed: seed of the split; the same seed always gives the same split.
    :param flatten: ``x`` of shape ``(n, 64)`` if true, else ``(n, 1, 8, 8)``.
    :param dtype: floating dtype of ``x``; labels are int64.
    :returns: :class:`DataSplits` with ``num_classes=10``.

    >>> d = load_digits()
    >>> len(d.train), len(d.val), len(d.test), d.input_shape, d.num_classes
    (1258, 180, 359, (64,), 10)
    >>> float(d.train.x.max())
    1.0
    """
    device = check_device(device)
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is a dev dependency
        raise ImportError(
            "load_digits needs scikit-learn (it ships the data): pip install scikit-learn"
        ) from exc
    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0  # (n, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    input_shape: tuple[int, ...] = (64,) if flatten else (1, 8, 8)
    x_all = torch.as_tensor(images.reshape(len(images), *input_shape), dtype=dtype, device=device)
    y_all = torch.as_tensor(labels, device=device)
    parts = split_indices(len(labels), val_fraction, test_fraction, seed=seed, stratify=labels)
    train, val, test = (
        Split(x_all[torch.as_tensor(i, device=device)], y_all[torch.as_tensor(i, device=device)])
        for i in parts
    )
    return DataSplits(
        train=train,
        val=val,
        test=test,
        task="classification",
        name="digits",
        input_shape=input_shape,
        num_classes=10,
        class_names=tuple(str(c) for c in range(10)),
    )
