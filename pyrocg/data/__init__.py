"""Data loading: in-memory train/val/test splits as torch tensors.

This package only loads data; it knows nothing about models. Every loader returns
a :class:`DataSplits` whose tensors already live on the requested ``device``:
float inputs ``x`` of shape ``(n, *input_shape)`` and targets ``y`` of shape ``(n,)``
(int64 class indices, or float for regression).
"""

from pyrocg.data.digits import load_digits
from pyrocg.data.fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
)
from pyrocg.data.idx import read_idx, write_idx
from pyrocg.data.registry import DATASETS, load_dataset
from pyrocg.data.splits import (
    Batches,
    DataSplits,
    Split,
    Task,
    batches,
    check_device,
    split_indices,
)
from pyrocg.data.table import load_table
from pyrocg.data.uci import UCIData, make_synthetic_uci, read_uci, write_uci

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "Batches",
    "DataSplits",
    "Split",
    "Task",
    "UCIData",
    "batches",
    "check_device",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_table",
    "make_synthetic_uci",
    "read_idx",
    "read_uci",
    "split_indices",
    "write_idx",
    "write_uci",
]
