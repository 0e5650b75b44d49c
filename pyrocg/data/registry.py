"""Name-based dispatch over the loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyrocg.data.digits import load_digits
from pyrocg.data.fashion_mnist import load_fashion_mnist
from pyrocg.data.splits import DataSplits
from pyrocg.data.table import load_table

__all__ = ["DATASETS", "load_dataset"]

#: Data set name -> loader. ``"table"`` needs ``path=`` (and usually ``target=``).
DATASETS: dict[str, Callable[..., DataSplits]] = {
    "digits": load_digits,
    "fashion-mnist": load_fashion_mnist,
    "table": load_table,
}


def load_dataset(name: str, **kwargs: Any) -> DataSplits:
    """Load a data set by name, forwarding ``kwargs`` to its loader.

    ``"fashion_mnist"`` and ``"fashionmnist"`` are accepted for ``"fashion-mnist"``.

    >>> load_dataset("digits", seed=1).name
    'digits'
    >>> load_dataset("mnist")
    Traceback (most recent call last):
    ...
    ValueError: unknown data set 'mnist'; valid names: 'digits', 'fashion-mnist', 'table'
    """
    key = name.strip().lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist"}.get(key, key)
    if key not in DATASETS:
        valid = ", ".join(repr(n) for n in DATASETS)
        raise ValueError(f"unknown data set {name!r}; valid names: {valid}")
    return DATASETS[key](**kwargs)
