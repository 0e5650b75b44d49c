"""Structured-prediction tasks built from real images (scikit-learn's digits).

Each returns :class:`~pyrocg.data.DataSplits`; test items use images never seen in training.

* :func:`digit_sequences` — sequence labelling: each sequence's digits follow a Markov chain
  with strong transitions (mostly ``d -> d + 1 mod 10``), every token is a noisy image.
* :func:`digit_attributes` — multi-label: correlated attributes of a noisy digit (even,
  large, prime, has a loop, ...).
* :func:`digit_strokes` — grid labelling: segment the stroke pixels of noisy digit images.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import DataSplits, Split

__all__ = ["digit_sequences", "digit_attributes", "digit_strokes", "ATTRIBUTES"]

#: Attribute name -> digits having it (correlated by construction).
ATTRIBUTES = {
    "even": {0, 2, 4, 6, 8},
    "large": {5, 6, 7, 8, 9},
    "prime": {2, 3, 5, 7},
    "loop": {0, 6, 8, 9},
    "straight": {1, 4, 7},
    "curvy": {0, 2, 3, 5, 6, 8, 9},
}


def _image_pools(seed: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.float32) / 16.0
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        cut = int(0.7 * len(idx))
        train[c], test[c] = idx[:cut], idx[cut:]
    return images, train, test, rng


def _splits(make, n_train, n_val, n_test, name, input_shape, num_classes, device):
    tr, va, te = make("train", n_train), make("train", n_val), make("test", n_test)
    to = lambda s: Split(torch.as_tensor(s[0], device=device), torch.as_tensor(s[1], device=device))  # noqa: E731
    return DataSplits(to(tr), to(va), to(te), "classification", name, input_shape, num_classes)


def _check(n: int, name: str) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")


def digit_sequences(n_train: int = 600, n_val: int = 100, n_test: int = 300, length: int = 8,
                    noise: float = 0.8, p_next: float = 0.85, seed: int = 0,
                    device="cpu") -> DataSplits:
    """Sequences ``x`` ``(N, length, 1, 8, 8)`` of noisy digit images with tags ``y``
    ``(N, length)`` from a Markov chain: ``y_{t+1} = y_t + 1 mod 10`` with probability
    ``p_next``, otherwise uniform over the other digits."""
    for n, name in ((n_train, "n_train"), (n_test, "n_test"), (length, "length")):
        _check(n, name)
    if not 0.0 <= p_next <= 1.0:
        raise ValueError(f"p_next must be in [0, 1], got {p_next}")
    images, pools, test_pools, rng = _image_pools(seed)

    def make(which, n):
        pool = pools if which == "train" else test_pools
        y = np.empty((n, length), dtype=np.int64)
        y[:, 0] = rng.integers(0, 10, n)
        for t in range(1, length):
            jump = (y[:, t - 1] + rng.integers(1, 10, n)) % 10  # any other digit
            y[:, t] = np.where(rng.random(n) < p_next, (y[:, t - 1] + 1) % 10, jump)
        pick = np.vectorize(lambda c: rng.choice(pool[c]))(y)
        x = images[pick] + noise * rng.standard_normal((n, length, 8, 8)).astype(np.float32)
        return x[:, :, None], y

    return _splits(make, n_train, n_val, n_test, "digit-sequences", (length, 1, 8, 8), 10, device)


def digit_attributes(n_train: int = 1000, n_val: int = 200, n_test: int = 500, noise: float = 0.8,
                     seed: int = 0, device="cpu") -> DataSplits:
    """Noisy flattened digit images ``(N, 64)`` with 0/1 attribute labels ``(N, 6)``
    (:data:`ATTRIBUTES`), strongly correlated because all are functions of the digit."""
    _check(n_train, "n_train")
    images, pools, test_pools, rng = _image_pools(seed)
    table = np.array([[int(d in s) for s in ATTRIBUTES.values()] for d in range(10)])

    def make(which, n):
        pool = pools if which == "train" else test_pools
        d = rng.integers(0, 10, n)
        pick = np.array([rng.choice(pool[c]) for c in d])
        x = images[pick].reshape(n, 64) + noise * rng.standard_normal((n, 64)).astype(np.float32)
        return x, table[d].astype(np.int64)

    return _splits(make, n_train, n_val, n_test, "digit-attributes", (64,), len(ATTRIBUTES), device)


def digit_strokes(n_train: int = 600, n_val: int = 100, n_test: int = 300, noise: float = 0.6,
                  threshold: float = 0.4, seed: int = 0, device="cpu") -> DataSplits:
    """Noisy digit images upsampled to 16x16, ``(N, 1, 16, 16)``, with per-pixel labels
    ``(N, 16, 16)``: 1 on the stroke (clean intensity above ``threshold``), 0 elsewhere."""
    _check(n_train, "n_train")
    images, pools, test_pools, rng = _image_pools(seed)
    big = images.repeat(2, axis=1).repeat(2, axis=2)

    def make(which, n):
        pool = pools if which == "train" else test_pools
        d = rng.integers(0, 10, n)
        clean = big[np.array([rng.choice(pool[c]) for c in d])]
        x = clean + noise * rng.standard_normal(clean.shape).astype(np.float32)
        return x[:, None], (clean > threshold).astype(np.int64)

    return _splits(make, n_train, n_val, n_test, "digit-strokes", (1, 16, 16), 2, device)
