"""Semirings for dynamic programmes over structured models, in the torch-struct style.

A semiring is a tiny stateless class: ``sum`` (the semiring addition, reducing a dimension),
``mul`` (the semiring product, elementwise), ``zero``/``one`` (their identities) and
``matmul`` (matrix product built from the two). One dynamic programme, written once against
this interface, then gives

* :class:`LogSemiring` (``logsumexp``, ``+``): the log partition function; its gradient with
  respect to the log potentials gives the marginals;
* :class:`MaxSemiring` (``max``, ``+``): the score of the best structure; its (sub)gradient is
  the indicator of the argmax.

Entropy and samples are computed from marginals and forward messages (see
:mod:`pyrocg.structured.chain`), so no dedicated semiring is needed for them.

Log-zero is ``torch.finfo(dtype).min`` rather than ``-inf``: it keeps every ``logsumexp``
finite (so gradients never become ``nan``) and, unlike a hard-coded ``-1e5``, it stays below
any potential a user can pass.

>>> import torch
>>> a = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
>>> LogSemiring.matmul(a, LogSemiring.one_matrix(2, a.dtype)).equal(a)
True
>>> MaxSemiring.sum(a, dim=-1)
tensor([1., 3.])
"""

from __future__ import annotations

import torch

__all__ = ["LogSemiring", "MaxSemiring", "Semiring", "log_zero"]


def log_zero(dtype: torch.dtype) -> float:
    """The semiring zero in log space for ``dtype``: the most negative finite number."""
    return torch.finfo(dtype).min


class Semiring:
    """Base class of the log-space semirings: the product is ``+``, ``one`` is ``0``.

    Subclasses define :meth:`sum`. All methods are static; semirings are never instantiated.
    """

    @staticmethod
    def sum(x: torch.Tensor, dim: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    @staticmethod
    def zero(dtype: torch.dtype) -> float:
        return log_zero(dtype)

    @staticmethod
    def one(dtype: torch.dtype) -> float:
        return 0.0

    @classmethod
    def one_matrix(
        cls, size: int, dtype: torch.dtype, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The ``(size, size)`` multiplicative identity: ``one`` on the diagonal, else ``zero``."""
        eye = torch.eye(size, dtype=torch.bool, device=device)
        return torch.full((size, size), cls.zero(dtype), dtype=dtype, device=device).masked_fill(
            eye, cls.one(dtype)
        )

    @classmethod
    def matmul(cls, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Semiring matrix product of ``(..., I, K)`` and ``(..., K, J)`` → ``(..., I, J)``.

        Cost O(I K J) time and memory per batch element (the broadcast is materialised so that
        the reduction is a single stable ``logsumexp``/``amax``).
        """
        return cls.sum(cls.mul(a.unsqueeze(-1), b.unsqueeze(-3)), dim=-2)


class LogSemiring(Semiring):
    """``(logsumexp, +)``: partition functions; gradients are marginals."""

    @staticmethod
    def sum(x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.logsumexp(x, dim=dim)


class MaxSemiring(Semiring):
    """``(max, +)``: Viterbi scores; the subgradient selects the argmax."""

    @staticmethod
    def sum(x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.amax(x, dim=dim)
