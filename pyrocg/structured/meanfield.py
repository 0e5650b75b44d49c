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
approximate marginals against the labels. Functional cores (:func:`grid_mean_field`,
:func:`multilabel_mean_field`) do the work; the modules hold the learned compatibilities.
"""

from __future__ import annotations

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
]


def _check_float(name: str, value: object) -> torch.Tensor:
    return check_energy(value, name)


def _check_iterations(num_iters: int, damping: float) -> None:
    if not isinstance(num_iters, int) or num_iters < 0:
        raise ValueError(f"num_iters must be a non-negative int, got {num_iters!r}")
    if not 0.0 <= damping < 1.0:
        raise ValueError(f"damping must lie in [0, 1), got {damping!r}")


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
    q = unary.softmax(-1)
    for _ in range(num_iters):
        message = torch.zeros_like(unary)
        if stencil is not None:
            q_nchw = q.permute(0, 3, 1, 2)
            summed = F.conv2d(q_nchw, stencil, padding=1, groups=c).permute(0, 2, 3, 1)
            message = message + summed @ compatibility.T
        if dense_kernel is not None:
            summed = (dense_kernel @ q.flatten(1, 2)).view_as(q)
            message = message + summed @ dense_compatibility.T
        update = (unary + message).softmax(-1)
        q = update if damping == 0 else damping * q + (1 - damping) * update
    return q


def multilabel_mean_field(
    unary: torch.Tensor, coupling: torch.Tensor, num_iters: int = 5, damping: float = 0.0
) -> torch.Tensor:
    """Synchronous mean-field ``P(y_l = 1)`` of a fully connected binary pairwise model.

    :param unary: ``(batch, L)`` logits.
    :param coupling: ``(L, L)`` symmetric label correlations; the diagonal is ignored.
    :returns: ``(batch, L)``. Cost O(K·L²) per example.
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
    q = unary.sigmoid()
    for _ in range(num_iters):
        update = (unary + q @ coupling.T).sigmoid()
        q = update if damping == 0 else damping * q + (1 - damping) * update
    return q


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
            unary, compat, self.num_iters, self.neighbourhood, kernel, dense_compat, self.damping
        )

    def loss(
        self, unary: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean negative mean-field surrogate log-likelihood: cross-entropy of the marginals
        against integer ``labels`` ``(batch, H, W)``."""
        return _marginal_cross_entropy(self(unary, features), labels, self.num_labels)


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
        return multilabel_mean_field(unary, self.coupling.to(unary.dtype), self.num_iters, self.damping)

    def loss(self, unary: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy of the marginals against 0/1 ``labels`` ``(batch, L)``."""
        q = self(unary)
        if labels.shape != q.shape:
            raise ValueError(f"labels must have shape {tuple(q.shape)} (batch, L), got {tuple(labels.shape)}")
        return F.binary_cross_entropy(q, labels.to(q.dtype))


def _marginal_cross_entropy(q: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
        raise TypeError("labels must be an integer tensor (batch, H, W)")
    if labels.shape != q.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(q.shape[:-1])} (batch, H, W), got {tuple(labels.shape)}"
        )
    if ((labels < 0) | (labels >= num_labels)).any():
        raise ValueError(f"labels must lie in [0, {num_labels})")
    log_q = q.clamp_min(torch.finfo(q.dtype).tiny).log()
    return F.nll_loss(log_q.flatten(0, -2), labels.flatten())
