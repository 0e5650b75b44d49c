"""Unrolled mean-field CRFs for pairwise models with loops (CRF-as-RNN).

Exact inference is intractable on image grids and fully connected label sets, so the CRF is
approximated by ``K`` synchronous, differentiable mean-field updates that are trained through
(and used at test time with) exactly the same iterations.

Grid labelling (:class:`GridMeanFieldCRF`), for ``y_i ∈ {0..C-1}`` at pixels ``i``::

    log p(y) = Σ_i unary_i(y_i) + Σ_{i~j} compat(y_i, y_j) + Σ_{i≠j} k(f_i, f_j) compat(y_i, y_j)
    q_i(c) ← softmax_c( unary_i(c) + Σ_j w_ij Σ_c' compat(c, c') q_j(c') )

over a 4- or 8-neighbourhood (a convolution) and optionally a dense Gaussian kernel ``k`` on
features (position, intensity: the "dense CRF"; the kernel is an explicit ``(HW, HW)`` matrix,
so it is meant for small images). Multi-label classification (:class:`MultiLabelMeanFieldCRF`),
for binary ``y_l``::

    log p(y) = Σ_l unary_l y_l + Σ_{l<m} W_lm y_l y_m,     q_l ← sigmoid(unary_l + Σ_m W_lm q_m)

The loss is the negative mean-field surrogate log-likelihood, the cross-entropy of the
approximate marginals against the labels, written once (:func:`surrogate_log_lik`) and used by
the modules' ``loss`` and by the likelihoods of :mod:`pyrocg.structured.likelihoods`. The cores
track the log marginals (``log_softmax``/``logsigmoid`` of the last update, mixed in log space
under damping), so the loss needs no clamp and keeps its gradient for confident mistakes.
Functional cores (:func:`grid_mean_field`, :func:`multilabel_mean_field` and their
``log_marginals=True`` forms) do the work; the modules hold the learned compatibilities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nodes.base import check_energy

__all__ = [
    "GridMeanFieldCRF",
    "MultiLabelMeanFieldCRF",
    "gaussian_kernel",
    "grid_mean_field",
    "multilabel_mean_field",
    "neighbourhood_kernel",
    "surrogate_log_lik",
]


def _check_float(name: str, value: object) -> torch.Tensor:
    return check_energy(value, name)


def _check_iterations(num_iters: int, damping: float) -> None:
    if not isinstance(num_iters, int) or num_iters < 0:
        raise ValueError(f"num_iters must be a non-negative int, got {num_iters!r}")
    if not 0.0 <= damping < 1.0:
        raise ValueError(f"damping must lie in [0, 1), got {damping!r}")


def _mix(log_q: torch.Tensor, log_update: torch.Tensor, damping: float) -> torch.Tensor:
    """``log(damping·q + (1 − damping)·update)`` from the logs."""
    if damping == 0:
        return log_update
    return torch.logaddexp(log_q + math.log(damping), log_update + math.log1p(-damping))


def surrogate_log_lik(log_q: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean-field surrogate log-likelihood of each site: ``log q_i(labels_i)``.

    The one loss of the mean-field CRFs (its negative mean is their ``loss``; the likelihoods
    sum it over a datum's sites).

    :param log_q: ``(..., C)`` log approximate marginals (``(..., L, 2)`` for binary labels:
        ``[log(1 − q), log q]``), e.g. from ``grid_mean_field(..., log_marginals=True)``.
    :param labels: integer ``(...)`` in ``[0, C)``, broadcast to ``log_q.shape[:-1]``
        (leading sample dims of ``log_q`` are allowed). Not validated here: the callers do.
    :returns: ``log_q.shape[:-1]``.

    >>> import torch
    >>> log_q = torch.tensor([[0.25, 0.75], [0.5, 0.5]]).log()  # (sites, C)
    >>> surrogate_log_lik(log_q, torch.tensor([1, 0])).exp()
    tensor([0.7500, 0.5000])
    """
    index = labels.long().expand(log_q.shape[:-1]).unsqueeze(-1)
    return log_q.gather(-1, index).squeeze(-1)


def neighbourhood_kernel(neighbourhood: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(3, 3)`` 0/1 stencil of the 4- or 8-neighbourhood (centre excluded)."""
    if neighbourhood not in (4, 8):
        raise ValueError(f"neighbourhood must be 4 or 8, got {neighbourhood!r}")
    kernel = torch.ones(3, 3, dtype=dtype)
    if neighbourhood == 4:
        kernel[0, 0] = kernel[0, 2] = kernel[2, 0] = kernel[2, 2] = 0
    kernel[1, 1] = 0
    return kernel


def gaussian_kernel(features: torch.Tensor, bandwidth: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Dense Gaussian affinities ``exp(-|f_i - f_j|² / 2)`` with zero diagonal.

    :param features: ``(batch, H, W, D)``, e.g. pixel positions and intensities; each feature
        is divided by ``bandwidth`` (scalar or ``(D,)``).
    :returns: ``(batch, H*W, H*W)``. Cost O((HW)² D) time and O((HW)²) memory.
    """
    _check_float("features", features)
    if features.dim() != 4:
        raise ValueError(f"features must have shape (batch, H, W, D), got {tuple(features.shape)}")
    f = (features / bandwidth).flatten(1, 2)
    kernel = torch.exp(-0.5 * torch.cdist(f, f).square())
    return kernel * (1 - torch.eye(f.shape[1], dtype=f.dtype, device=f.device))


def grid_mean_field(
    unary: torch.Tensor,
    compatibility: torch.Tensor,
    num_iters: int = 5,
    neighbourhood: int | None = 4,
    dense_kernel: torch.Tensor | None = None,
    dense_compatibility: torch.Tensor | None = None,
    damping: float = 0.0,
    log_marginals: bool = False,
) -> torch.Tensor:
    """Synchronous mean-field marginals of a pairwise grid CRF.

    :param unary: ``(batch, H, W, C)`` log potentials.
    :param compatibility: ``(C, C)`` log potential of neighbouring labels ``(c, c')``;
        symmetric for the model to be well defined (``w·I`` is the Potts model).
    :param num_iters: number of unrolled updates ``K`` (0 returns ``softmax(unary)``).
    :param neighbourhood: 4, 8, or ``None`` for no local edges.
    :param dense_kernel: optional ``(batch, HW, HW)`` affinities (:func:`gaussian_kernel`).
    :param dense_compatibility: ``(C, C)`` compatibility of the dense edges (default
        ``compatibility``).
    :param damping: ``q ← damping·q + (1 − damping)·update``; helps strong couplings converge.
    :param log_marginals: return ``log q`` (exact where ``q`` underflows) instead of ``q``.
    :returns: approximate marginals ``(batch, H, W, C)``. Cost O(K·HW·C²) (+ O(K·(HW)²·C) dense).
    """
    _check_float("unary", unary)
    _check_float("compatibility", compatibility)
    _check_iterations(num_iters, damping)
    if unary.dim() != 4:
        raise ValueError(f"unary must have shape (batch, H, W, C), got {tuple(unary.shape)}")
    batch, height, width, c = unary.shape
    if tuple(compatibility.shape) != (c, c):
        raise ValueError(f"compatibility must have shape ({c}, {c}) (C, C), got {tuple(compatibility.shape)}")
    if dense_kernel is not None:
        _check_float("dense_kernel", dense_kernel)
        expected = (batch, height * width, height * width)
        if tuple(dense_kernel.shape) != expected:
            raise ValueError(
                f"dense_kernel must have shape {expected} (batch, H*W, H*W), got {tuple(dense_kernel.shape)}"
            )
        if dense_compatibility is None:
            dense_compatibility = compatibility
    stencil = None
    if neighbourhood is not None:
        stencil = neighbourhood_kernel(neighbourhood, unary.dtype).to(unary.device)
        # depthwise: every label channel sums its neighbours' beliefs independently
        stencil = stencil.expand(c, 1, 3, 3)
    log_q = unary.log_softmax(-1)
    for _ in range(num_iters):
        q = log_q.exp()
        message = torch.zeros_like(unary)
        if stencil is not None:
            q_nchw = q.permute(0, 3, 1, 2)
            summed = F.conv2d(q_nchw, stencil, padding=1, groups=c).permute(0, 2, 3, 1)
            message = message + summed @ compatibility.T
        if dense_kernel is not None:
            summed = (dense_kernel @ q.flatten(1, 2)).view_as(q)
            message = message + summed @ dense_compatibility.T
        log_q = _mix(log_q, (unary + message).log_softmax(-1), damping)
    return log_q if log_marginals else log_q.exp()


def multilabel_mean_field(
    unary: torch.Tensor,
    coupling: torch.Tensor,
    num_iters: int = 5,
    damping: float = 0.0,
    log_marginals: bool = False,
) -> torch.Tensor:
    """Synchronous mean-field ``P(y_l = 1)`` of a fully connected binary pairwise model.

    :param unary: ``(batch, L)`` logits.
    :param coupling: ``(L, L)`` symmetric label correlations; the diagonal is ignored.
    :param log_marginals: return ``[log(1 − q), log q]`` ``(batch, L, 2)`` (exact where
        ``q`` rounds to 0 or 1) instead of ``q``.
    :returns: ``(batch, L)`` (``(batch, L, 2)`` with ``log_marginals``). Cost O(K·L²) per
        example.
    """
    _check_float("unary", unary)
    _check_float("coupling", coupling)
    _check_iterations(num_iters, damping)
    if unary.dim() != 2:
        raise ValueError(f"unary must have shape (batch, L), got {tuple(unary.shape)}")
    n = unary.shape[-1]
    if tuple(coupling.shape) != (n, n):
        raise ValueError(f"coupling must have shape ({n}, {n}) (L, L), got {tuple(coupling.shape)}")
    coupling = coupling * (1 - torch.eye(n, dtype=coupling.dtype, device=coupling.device))
    # log q and log(1 − q) side by side: (batch, L, 2), the logsigmoid of -a and a
    def log_bernoulli(a: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(torch.stack([-a, a], -1))

    log_q = log_bernoulli(unary)
    for _ in range(num_iters):
        q = log_q[..., 1].exp()
        log_q = _mix(log_q, log_bernoulli(unary + q @ coupling.T), damping)
    return log_q if log_marginals else log_q[..., 1].exp()


class GridMeanFieldCRF(nn.Module):
    """Mean-field CRF over a labelled image grid, as a layer after a per-pixel classifier.

    :param num_labels: ``C``.
    :param num_iters: unrolled mean-field updates ``K``.
    :param neighbourhood: 4, 8 or ``None`` (dense only).
    :param compatibility: ``"potts"`` (learned scalar ``w``, ``compat = w·I``) or
        ``"learned"`` (full learned ``C × C``, symmetrised).
    :param dense: add Gaussian-kernel messages on the ``features`` passed to :meth:`forward`,
        with a learned weight per kernel.
    :param bandwidth: feature scale of the dense kernel (scalar or ``(D,)``).
    :param damping: see :func:`grid_mean_field`.

    >>> import torch
    >>> crf = GridMeanFieldCRF(num_labels=3, num_iters=4)
    >>> unary = torch.randn(2, 5, 6, 3)
    >>> q = crf(unary)  # (batch, H, W, C) approximate marginals
    >>> q.shape, bool(torch.allclose(q.sum(-1), torch.ones(2, 5, 6)))
    (torch.Size([2, 5, 6, 3]), True)
    >>> crf.loss(unary, torch.randint(0, 3, (2, 5, 6))).shape
    torch.Size([])
    """

    def __init__(
        self,
        num_labels: int,
        num_iters: int = 5,
        neighbourhood: int | None = 4,
        compatibility: str = "potts",
        dense: bool = False,
        bandwidth: float | torch.Tensor = 1.0,
        damping: float = 0.0,
        init_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels!r}")
        if compatibility not in ("potts", "learned"):
            raise ValueError(f"compatibility must be 'potts' or 'learned', got {compatibility!r}")
        if neighbourhood is not None:
            neighbourhood_kernel(neighbourhood)  # validates
        _check_iterations(num_iters, damping)
        self.num_labels = num_labels
        self.num_iters = num_iters
        self.neighbourhood = neighbourhood
        self.damping = damping
        self.compatibility_type = compatibility
        if compatibility == "potts":
            self.potts_weight = nn.Parameter(torch.tensor(float(init_weight)))
        else:
            self.compat_param = nn.Parameter(init_weight * torch.eye(num_labels))
        self.dense = dense
        if dense:
            self.dense_weight = nn.Parameter(torch.tensor(float(init_weight)))
            self.register_buffer("bandwidth", torch.as_tensor(bandwidth, dtype=torch.float32))

    @property
    def compatibility(self) -> torch.Tensor:
        """The ``(C, C)`` symmetric compatibility currently in use."""
        if self.compatibility_type == "potts":
            eye = torch.eye(self.num_labels, device=self.potts_weight.device)
            return self.potts_weight * eye.to(self.potts_weight.dtype)
        return 0.5 * (self.compat_param + self.compat_param.T)

    def forward(self, unary: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Approximate marginals ``(batch, H, W, C)`` from ``unary`` ``(batch, H, W, C)`` and,
        with ``dense=True``, ``features`` ``(batch, H, W, D)``."""
        return self.log_marginals(unary, features).exp()

    def log_marginals(self, unary: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """``log`` of :meth:`forward` ``(batch, H, W, C)``, exact where it underflows."""
        compat = self.compatibility.to(unary.dtype)
        kernel = dense_compat = None
        if self.dense:
            if features is None:
                raise ValueError("features (batch, H, W, D) are required when dense=True")
            kernel = gaussian_kernel(features, self.bandwidth.to(features.dtype))
            dense_compat = self.dense_weight.to(unary.dtype) * compat
        elif features is not None:
            raise ValueError("features are only used when dense=True; construct with dense=True")
        return grid_mean_field(
            unary, compat, self.num_iters, self.neighbourhood, kernel, dense_compat, self.damping,
            log_marginals=True,
        )

    def loss(
        self, unary: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean negative mean-field surrogate log-likelihood (:func:`surrogate_log_lik`): the
        cross-entropy of the marginals against integer ``labels`` ``(batch, H, W)``."""
        log_q = self.log_marginals(unary, features)
        _check_labels(labels, log_q.shape[:-1], self.num_labels, "(batch, H, W)")
        return -surrogate_log_lik(log_q, labels).mean()


class MultiLabelMeanFieldCRF(nn.Module):
    """Fully connected mean-field CRF over ``num_labels`` binary labels (multi-label output).

    :param num_labels: ``L``.
    :param num_iters: unrolled updates ``K``.
    :param damping: see :func:`multilabel_mean_field`.

    >>> import torch
    >>> crf = MultiLabelMeanFieldCRF(num_labels=4)
    >>> logits = torch.randn(3, 4)
    >>> crf(logits).shape  # P(y_l = 1), (batch, L)
    torch.Size([3, 4])
    >>> crf.loss(logits, torch.randint(0, 2, (3, 4))).shape
    torch.Size([])
    """

    def __init__(self, num_labels: int, num_iters: int = 5, damping: float = 0.0) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels!r}")
        _check_iterations(num_iters, damping)
        self.num_labels = num_labels
        self.num_iters = num_iters
        self.damping = damping
        # zero init: the layer starts as independent sigmoids and learns correlations
        self.coupling_param = nn.Parameter(torch.zeros(num_labels, num_labels))

    @property
    def coupling(self) -> torch.Tensor:
        """The ``(L, L)`` symmetric, zero-diagonal label correlation matrix."""
        sym = 0.5 * (self.coupling_param + self.coupling_param.T)
        return sym * (1 - torch.eye(self.num_labels, device=sym.device, dtype=sym.dtype))

    def forward(self, unary: torch.Tensor) -> torch.Tensor:
        """``P(y_l = 1)`` ``(batch, L)`` from logits ``(batch, L)``."""
        return self.log_marginals(unary)[..., 1].exp()

    def log_marginals(self, unary: torch.Tensor) -> torch.Tensor:
        """``[log(1 − q), log q]`` ``(batch, L, 2)`` of :meth:`forward`, exact where ``q``
        rounds to 0 or 1."""
        coupling = self.coupling.to(unary.dtype)
        return multilabel_mean_field(unary, coupling, self.num_iters, self.damping, log_marginals=True)

    def loss(self, unary: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy of the marginals against 0/1 ``labels`` ``(batch, L)``
        (:func:`surrogate_log_lik`)."""
        log_q = self.log_marginals(unary)
        if not isinstance(labels, torch.Tensor) or labels.shape != log_q.shape[:-1]:
            raise ValueError(
                f"labels must have shape {tuple(log_q.shape[:-1])} (batch, L), "
                f"got {tuple(getattr(labels, 'shape', ()))}"
            )
        if bool(((labels != 0) & (labels != 1)).any()):
            raise ValueError("multi-label targets must be 0 or 1")
        return -surrogate_log_lik(log_q, labels).mean()


def _check_labels(labels: object, shape: torch.Size, num_labels: int, names: str) -> None:
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor {names}")
    if labels.shape != shape:
        raise ValueError(f"labels must have shape {tuple(shape)} {names}, got {tuple(labels.shape)}")
    if ((labels < 0) | (labels >= num_labels)).any():
        raise ValueError(f"labels must lie in [0, {num_labels})")
