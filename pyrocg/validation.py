"""The non-finite value policy: one switch, the way Pyro's ``enable_validation`` works.

When validation is on (the default), :func:`pyrocg.infer.fit` rejects training and validation
data with NaN or infinite features or targets, :func:`pyrocg.infer.evaluate` rejects such
inputs, and :class:`~pyrocg.structured.LinearChainCRF` rejects NaN or ``+inf`` potentials at
valid positions and potentials that make every tag sequence impossible. Turn it off for speed
once the data are known to be clean, or to study what a network does with such values:

>>> import torch
>>> from pyrocg import validation
>>> validation.is_validation_enabled()
True
>>> validation.check_finite(torch.tensor([1.0, float("nan")]), "x")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: x has 1 NaN and 0 infinite value(s) of 2 (first at index (1,)); clean the data, ...
>>> with validation.validation_enabled(False):
...     validation.check_finite(torch.tensor([float("inf")]), "x")
tensor([inf])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = [
    "check_finite",
    "enable_validation",
    "is_validation_enabled",
    "validation_enabled",
    "enable_layer_checks",
    "layer_checks_enabled",
    "layer_checks",
]

_VALIDATION_ENABLED = True
_LAYER_CHECKS = False


def _check_flag(is_validate: object) -> bool:
    if not isinstance(is_validate, bool):
        raise TypeError(f"is_validate must be True or False, got {is_validate!r}")
    return is_validate


def enable_validation(is_validate: bool = True) -> None:
    """Switch the finite-value checks on (default) or off for the whole process.

    :param is_validate: ``True`` to check, ``False`` to skip the checks.
    :raises TypeError: if ``is_validate`` is not a bool.
    """
    global _VALIDATION_ENABLED
    _VALIDATION_ENABLED = _check_flag(is_validate)


def is_validation_enabled() -> bool:
    """Whether the finite-value checks run."""
    return _VALIDATION_ENABLED


@contextmanager
def validation_enabled(is_validate: bool = True) -> Iterator[None]:
    """Context manager that sets the switch inside its block and restores it afterwards.

    :param is_validate: the setting inside the block.
    :raises TypeError: if ``is_validate`` is not a bool.
    """
    global _VALIDATION_ENABLED
    new = _check_flag(is_validate)
    old, _VALIDATION_ENABLED = _VALIDATION_ENABLED, new
    try:
        yield
    finally:
        _VALIDATION_ENABLED = old


def enable_layer_checks(flag: bool = True) -> None:
    """Also check every layer's input and energies (off by default).

    With it on (and validation on), each chain-graph layer rejects a NaN or infinite input
    or energy with a ``ValueError`` naming the layer — e.g. a ``BinaryNode`` would otherwise
    turn a NaN energy into a valid-looking 0/1 draw. It costs a pass over every layer's
    values (and a device synchronisation on a GPU) per forward pass, which is why it is off
    by default: the data checks of ``fit``/``evaluate``/``predict`` and the training loop's
    non-finite-loss stop catch the usual causes.

    :param flag: ``True`` to check, ``False`` not to.
    :raises TypeError: if ``flag`` is not a bool.
    """
    global _LAYER_CHECKS
    _LAYER_CHECKS = _check_flag(flag)


def layer_checks_enabled() -> bool:
    """Whether layers check their inputs and energies (needs validation on as well)."""
    return _LAYER_CHECKS and _VALIDATION_ENABLED


@contextmanager
def layer_checks(flag: bool = True) -> Iterator[None]:
    """Context manager form of :func:`enable_layer_checks`.

    >>> import torch
    >>> from pyrocg import models
    >>> with layer_checks():
    ...     models.mlp(2, [3], 2)(torch.tensor([[0.0, float("nan")]]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: hidden1: input has 1 NaN and 0 infinite value(s) of 2 ...
    """
    global _LAYER_CHECKS
    new = _check_flag(flag)
    old, _LAYER_CHECKS = _LAYER_CHECKS, new
    try:
        yield
    finally:
        _LAYER_CHECKS = old


def check_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Raise a :class:`ValueError` naming ``what`` if ``tensor`` holds NaN or infinite values.

    Does nothing while validation is switched off, for integer and bool tensors (always finite)
    and for tensors on the ``meta`` device (no values). On a GPU the check costs one pass and
    one device synchronisation.

    :param tensor: the tensor to check.
    :param what: its name in the message, e.g. ``"data.train.x"``.
    :returns: ``tensor`` unchanged.
    :raises TypeError: if ``tensor`` is not a :class:`torch.Tensor`.
    :raises ValueError: if validation is on and a value is NaN or infinite.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(tensor).__name__}")
    if (not _VALIDATION_ENABLED or tensor.device.type == "meta"
            or not (tensor.is_floating_point() or tensor.is_complex())):
        return tensor
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return tensor
    nan = int(torch.isnan(tensor).sum())
    inf = int((~finite).sum()) - nan
    first = tuple(int(i) for i in (~finite).nonzero()[0].tolist())
    raise ValueError(
        f"{what} has {nan} NaN and {inf} infinite value(s) of {tensor.numel()} "
        f"(first at index {first}); clean the data, or switch the check off with "
        "pyrocg.validation.enable_validation(False)"
    )
