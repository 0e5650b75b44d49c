"""Likelihoods of the structured outputs: the chain CRF (exact) and the mean-field CRFs.

Each is a :class:`~pyrocg.infer.Likelihood` (the observed label site of a network, see
:class:`~pyrocg.infer.CGModel`); :mod:`pyrocg.infer` re-exports them. The tree CRF's likelihood
is :class:`~pyrocg.structured.TreeCRFLikelihood`.
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from ..infer.likelihoods import Likelihood
from .meanfield import surrogate_log_lik

__all__ = ["ChainCRFLikelihood", "GridCRFLikelihood", "MultiLabelCRFLikelihood"]


class ChainCRFLikelihood(Likelihood):
    """Tag sequences ``y ~ LinearChainCRF(unary, transitions)`` for sequence labelling.

    :param crf: a :class:`~pyrocg.layers.ChainCRF` output layer (learned transitions).
    :param dataset_size: number of training sequences.
    :param token_dims: number of trailing input dims of one token (3 for a ``(C, H, W)``
        image per position): the network maps one token to its unary energies, positions
        are folded into the batch and the network's node sites live in a ``tokens`` plate.
        ``None``: the network maps ``(batch, length, ...)`` to ``(batch, length, tags)``.

    Targets ``y`` are ``(batch, length)`` int64 tags; ragged sequences are padded at the end
    with ``-1``, which also gives the lengths.

    Inputs ``(batch, length, *token)``, tags ``(batch, length)``:

    >>> import torch
    >>> from pyrocg import infer, layers, models
    >>> lik = infer.ChainCRFLikelihood(layers.ChainCRF(3), dataset_size=10)
    >>> model = infer.CGModel(models.mlp(4, [8], 3), lik)  # the mlp reads one token (4,)
    >>> x, y = torch.randn(2, 6, 4), torch.randint(0, 3, (2, 6))
    >>> model.loss(x, y).shape
    torch.Size([])
    >>> sorted(infer.evaluate(model, x, y))
    ['nll', 'sequence_accuracy', 'token_accuracy']
    """

    def __init__(self, crf, dataset_size: int, token_dims: int | None = 1):
        super().__init__(dataset_size)
        if token_dims is not None and (not isinstance(token_dims, int) or token_dims < 1):
            raise ValueError(f"token_dims must be a positive int or None, got {token_dims!r}")
        self.crf, self.token_dims = crf, token_dims

    def _per_token(self, run, x):
        lead = x.shape[: x.dim() - self.token_dims]
        u = run(x.reshape((-1,) + x.shape[len(lead):]))
        return u.reshape(lead + u.shape[-1:])

    def output(self, run, x):
        return run(x) if self.token_dims is None else self._per_token(run, x)

    def model(self, run, x, y):
        if self.token_dims is not None:
            n_tokens = x.shape[: x.dim() - self.token_dims].numel()
            with pyro.plate("tokens", n_tokens, dim=-1):
                out = self._per_token(run, x)
        else:
            with self.plate(x):
                out = run(x)
        with self.plate(x):
            self(out, y)
        return out

    @staticmethod
    def lengths(y: torch.Tensor) -> torch.Tensor:
        return (y >= 0).sum(-1)

    def dist(self, output, lengths=None):
        return self.crf(output, lengths)

    def forward(self, output, y=None):
        if y is None:
            return pyro.sample(self.site, self.dist(output))
        self.check_target(output, y)
        return pyro.sample(self.site, self.dist(output, self.lengths(y)), obs=y.clamp_min(0))

    def check_target(self, output, y):
        if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tags y must be an int64 tensor, got {getattr(y, 'dtype', type(y))}")
        if y.shape != output.shape[-3:-1]:
            raise ValueError(f"tags y must have shape (batch, length) = "
                             f"{tuple(output.shape[-3:-1])}, got {tuple(y.shape)}")
        c = output.shape[-1]
        if y.numel() and (int(y.min()) < -1 or int(y.max()) >= c):
            raise ValueError(f"tags y must be in [0, {c}) (or -1 for padding), got range "
                             f"[{int(y.min())}, {int(y.max())}]")
        pad = y < 0
        if bool((pad[..., :-1] & ~pad[..., 1:]).any()):
            raise ValueError("padding (-1) must only appear at the end of a sequence")
        if bool(pad[..., 0].any()):
            raise ValueError("every sequence needs at least one tag (y[:, 0] >= 0)")

    def log_likelihood(self, output, y):
        self.check_target(output, y)
        return self.dist(output, self.lengths(y).expand(output.shape[:-2])).log_prob(
            y.clamp_min(0).expand(output.shape[:-1]))

    def probs(self, output):
        """Per-position marginals ``(..., batch, length, tags)``."""
        return self.dist(output).marginals

    def decode(self, output: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Most probable tag sequences (Viterbi), ``(batch, length)``."""
        return self.dist(output, lengths).argmax

    def metrics(self, output: torch.Tensor, mean: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Token and whole-sequence accuracy of Viterbi decoding of ``output`` (the unary
        energies averaged over passes)."""
        tags = self.decode(output, self.lengths(y))
        valid = y >= 0
        token = ((tags == y) & valid).sum() / valid.sum()
        return {"token_accuracy": float(token),
                "sequence_accuracy": float(((tags == y) | ~valid).all(-1).double().mean())}


class _MeanFieldLikelihood(Likelihood):
    """Shared part of the mean-field CRF likelihoods: the label site is the mean-field
    surrogate log-likelihood (:func:`~pyrocg.structured.meanfield.surrogate_log_lik`, the
    same loss as the CRF modules' ``loss``) as a ``pyro.factor``, so training goes through
    exactly the K unrolled updates used at test time."""

    def __init__(self, crf: nn.Module, dataset_size: int):
        super().__init__(dataset_size)
        self.crf = crf

    def surrogate_log_lik(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, output, y=None):
        if y is None:
            return self.probs(output)
        self.check_target(output, y)
        pyro.factor(self.site, self.surrogate_log_lik(output, y))
        return y

    def log_likelihood(self, output, y):
        self.check_target(output, y)
        return self.surrogate_log_lik(output, y)


class MultiLabelCRFLikelihood(_MeanFieldLikelihood):
    """Multi-label targets ``y`` ``(batch, L)`` in {0, 1} with learned label correlations
    (:class:`~pyrocg.structured.MultiLabelMeanFieldCRF` on the network's ``(batch, L)``
    logits).

    Network output ``(batch, labels)`` logits; targets ``(batch, labels)`` 0/1:

    >>> import torch
    >>> from pyrocg import infer, models, structured
    >>> lik = infer.MultiLabelCRFLikelihood(structured.MultiLabelMeanFieldCRF(4, num_iters=3), 10)
    >>> model = infer.CGModel(models.mlp(5, [8], 4), lik)
    >>> model.loss(torch.randn(6, 5), torch.randint(0, 2, (6, 4))).shape
    torch.Size([])
    """

    def probs(self, output):
        """``P(y_l = 1)`` ``(..., batch, L)``."""
        return self.crf(output.reshape(-1, output.shape[-1])).reshape(output.shape)

    def surrogate_log_lik(self, output, y):
        log_q = self.crf.log_marginals(output.reshape(-1, output.shape[-1]))
        return surrogate_log_lik(log_q.reshape(output.shape + (2,)), y).sum(-1)

    def check_target(self, output, y):
        if not isinstance(y, torch.Tensor) or y.shape != output.shape[-2:]:
            raise ValueError(f"labels y must have shape (batch, L) = {tuple(output.shape[-2:])}, "
                             f"got {tuple(getattr(y, 'shape', ()))}")
        if bool(((y != 0) & (y != 1)).any()):
            raise ValueError("multi-label targets y must be 0 or 1")

    def metrics(self, output, mean, y):
        pred = (mean > 0.5).to(y.dtype)
        return {"label_accuracy": float((pred == y).double().mean()),
                "exact_match": float((pred == y).all(-1).double().mean())}


class GridCRFLikelihood(_MeanFieldLikelihood):
    """Per-pixel labels ``y`` ``(batch, H, W)`` with a
    :class:`~pyrocg.structured.GridMeanFieldCRF` on the network's ``(batch, C, H, W)``
    energies (a convolutional read-out).

    Network output ``(batch, classes, H, W)``; labels ``(batch, H, W)``:

    >>> import torch
    >>> from pyrocg import infer, layers, structured
    >>> net = layers.Conv2d(1, 2, 3, padding=1, node=None)
    >>> lik = infer.GridCRFLikelihood(structured.GridMeanFieldCRF(2, num_iters=2), 10)
    >>> model = infer.CGModel(net, lik)
    >>> model.loss(torch.randn(3, 1, 6, 6), torch.randint(0, 2, (3, 6, 6))).shape
    torch.Size([])
    """

    def probs(self, output):
        """Approximate marginals ``(..., batch, H, W, C)``."""
        u = output.movedim(-3, -1)
        q = self.crf(u.reshape((-1,) + u.shape[-3:]))
        return q.reshape(u.shape)

    def surrogate_log_lik(self, output, y):
        u = output.movedim(-3, -1)
        log_q = self.crf.log_marginals(u.reshape((-1,) + u.shape[-3:])).reshape(u.shape)
        return surrogate_log_lik(log_q, y).sum((-2, -1))

    def check_target(self, output, y):
        c = output.shape[-3]
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
            raise TypeError(f"pixel labels y must be int64, got {getattr(y, 'dtype', type(y))}")
        if y.shape != output.shape[-4:-3] + output.shape[-2:]:
            raise ValueError(f"pixel labels y must have shape (batch, H, W) = "
                             f"{tuple(output.shape[-4:-3] + output.shape[-2:])}, got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
            raise ValueError(f"pixel labels y must be in [0, {c})")

    def metrics(self, output, mean, y):
        return {"pixel_accuracy": float((mean.argmax(-1) == y).double().mean())}
