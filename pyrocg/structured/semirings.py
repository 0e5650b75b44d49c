"""Semirings for dynamic programmes over structured models, in the torch-struct style.

A semiring is a tiny stateless class: ``sum`` (the semiring addition, reducing a dimension),
``mul`` (the semiring product), ``zero``/``one`` (their identities), and the vector–matrix
products the chain programme is written with. Values of a state are scalars, except for the
k-max semiring whose values are the ``k`` best scores (a trailing dimension of size ``k``).
One dynamic programme, written once against this interface, gives

* :class:`LogSemiring` (``logsumexp``, ``+``): the log partition function; its gradient with
  respect to the log potentials gives the marginals;
* :class:`MaxSemiring` (``max``, ``+``): the score of the best structure (Viterbi);
* :func:`KMaxSemiring` ``(k)``: the ``k`` best scores (k-best decoding).

Entropy, KL divergence and samples are exact derived quantities of log-semiring messages
(see :mod:`pyrocg.structured.chain`).

Log-zero is :func:`log_zero` ``(dtype)``, a finite number far below any potential a user can
pass (``-finfo.max / 2**20``): a sum of up to a million of them stays finite, so every
``logsumexp`` stays finite and no gradient becomes ``nan``; results below ``log_zero / 2``
are reported as ``-inf``.

>>> import torch
>>> a = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
>>> LogSemiring.matmul(a, LogSemiring.one_matrix(2, a.dtype)).equal(a)
True
>>> MaxSemiring.sum(a, dim=-1)
tensor([1., 3.])
>>> KMaxSemiring(2).sum(torch.tensor([[[1.0, 0.0], [3.0, 2.0]]]), dim=-2)  # two 2-best lists
tensor([[3., 2.]])
"""

from __future__ import annotations

import torch

__all__ = ["KMaxSemiring", "LogSemiring", "MaxSemiring", "Semiring", "log_zero"]


def log_zero(dtype: torch.dtype) -> float:
    """The semiring zero in log space for ``dtype``: ``-finfo(dtype).max / 2**20``."""
    return -torch.finfo(dtype).max / 2**20


class Semiring:
    """Base class of the log-space semirings: the product is ``+``, ``one`` is ``0``.

    Subclasses define :meth:`sum`. ``extra`` is the number of trailing value dimensions of a
    state (0 for scalar semirings, 1 for k-max). All methods are class methods; semirings are
    never instantiated.
    """

    extra = 0

    @classmethod
    def sum(cls, x: torch.Tensor, dim: int) -> torch.Tensor:  # pragma: no cover - abstract
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
    def convert(cls, potentials: torch.Tensor) -> torch.Tensor:
        """Plain log potentials as semiring values (the identity for scalar semirings)."""
        return potentials

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
        """Semiring matrix product of ``(..., I, K)`` and ``(..., K, J)`` → ``(..., I, J)``
        (scalar semirings). Cost O(I K J) time and memory per batch element."""
        return cls.sum(cls.mul(a.unsqueeze(-1), b.unsqueeze(-3)), dim=-2)

    @classmethod
    def vecmat(cls, alpha: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
        """``out[..., j] = ⊕_i alpha[..., i] ⊗ mat[..., i, j]`` for states ``alpha``
        ``(batch, C, *value)`` and plain potentials ``mat`` ``(batch or 1, C, C)``."""
        x = alpha[:, :, None] + mat[(..., *(None,) * cls.extra)]
        return cls.sum(x, dim=1)

    @classmethod
    def matvec(cls, mat: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """``out[..., i] = ⊕_j mat[..., i, j] ⊗ beta[..., j]`` (the backward direction)."""
        pad = (None,) * cls.extra
        x = mat[(..., *pad)] + beta[(slice(None), None)]
        return cls.sum(x, dim=2)

    @classmethod
    def total(cls, alpha: torch.Tensor) -> torch.Tensor:
        """Semiring sum over the states ``(batch, C, *value)`` → ``(batch, *value)``."""
        return cls.sum(alpha, dim=1)


class LogSemiring(Semiring):
    """``(logsumexp, +)``: partition functions; gradients are marginals."""

    @classmethod
    def sum(cls, x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.logsumexp(x, dim=dim)


class MaxSemiring(Semiring):
    """``(max, +)``: Viterbi scores; the subgradient selects the argmax."""

    @classmethod
    def sum(cls, x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.amax(x, dim=dim)


class _KMax(Semiring):
    k = 1
    extra = 1

    @classmethod
    def sum(cls, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Reduce ``dim`` of ``(..., k)`` values to the ``k`` best of all ``k · size`` scores."""
        dim = dim % x.dim()
        x = x.movedim(dim, -2).flatten(-2)
        return x.topk(cls.k, dim=-1).values

    @classmethod
    def mul(cls, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.unsqueeze(-1) + b.unsqueeze(-2)).flatten(-2).topk(cls.k, dim=-1).values

    @classmethod
    def convert(cls, potentials: torch.Tensor) -> torch.Tensor:
        out = potentials.new_full((*potentials.shape, cls.k), log_zero(potentials.dtype))
        out[..., 0] = potentials
        return out


def KMaxSemiring(k: int) -> type[Semiring]:  # noqa: N802 - a semiring factory, as in torch-struct
    """The k-max semiring: a state's value is its ``k`` best scores in decreasing order.

    :param k: number of best scores kept, ``k >= 1``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return type(f"KMaxSemiring{k}", (_KMax,), {"k": k})
