"""Vectorised predictive: T stochastic passes as one batched computation.

The input gets a leading sample dimension (``x.expand(T, ...)``, a view: no copy), so every
sample site of the network draws ``T`` independent values at once. ``T`` is split into
chunks to bound memory. Unlike :class:`pyro.infer.Predictive`, nothing is masked: the
per-datum log-likelihoods are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.poutine as poutine
import torch

from .model import CGModel

__all__ = ["Prediction", "predict"]

# Elements of node values per chunk (all layers, all passes). On CPU a chunk that stays
# near the caches is fastest (64 MiB of float32: T=100 passes of batch 32 in one chunk, 4
# passes per chunk at batch 1000 for a 784-1024-1024-10 mlp); a GPU wants large chunks
# (0.5 GiB).
_CPU_BUDGET, _ACCELERATOR_BUDGET = 2**24, 2**27


@dataclass
class Prediction:
    """Result of :func:`predict`.

    :ivar outputs: network outputs per pass, ``(T, batch, out)`` (logits or means).
    :ivar probs: per-pass class probabilities ``(T, batch, classes)`` (classification; for
        a CRF likelihood the per-position marginals ``(T, batch, length, tags)``).
    :ivar mean: predictive mean: class probabilities ``(batch, classes)`` averaged over
        passes (CRF: averaged marginals), or the regression mean ``(batch,)``.
    :ivar variance: predictive variance ``(batch,)`` (regression: noise + spread of means).
    :ivar log_lik: per-pass pointwise ``log p(y_i | x_i, pass t)``, ``(T, batch)``.
    :ivar pointwise_log_lik: ``log (1/T) sum_t p(y_i | x_i, pass t)``, ``(batch,)``.
    """

    outputs: torch.Tensor
    mean: torch.Tensor
    probs: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    log_lik: torch.Tensor | None = None
    pointwise_log_lik: torch.Tensor | None = None


def _chunk_size(model: CGModel, x: torch.Tensor, num_samples: int, budget: int) -> int:
    """Passes per chunk so that one chunk's node values stay within ``budget`` elements."""
    # One pass on a single datum measures how many node values a datum creates.
    tr = poutine.trace(model.forward_predict).get_trace(x[:1])
    per_datum = sum(s["value"].numel() for s in tr.nodes.values() if s["type"] == "sample")
    per_datum = max(per_datum, tr.nodes["_RETURN"]["value"].numel(), 1)
    return max(1, min(num_samples, budget // (per_datum * x.shape[0])))


@torch.no_grad()
def predict(
    model: CGModel,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> Prediction:
    """Predict with ``num_samples`` stochastic passes (1 for deterministic modes).

    :param model: a trained :class:`CGModel`.
    :param x: inputs ``(batch, *input_shape)``.
    :param y: optional targets ``(batch,)`` for log-likelihoods.
    :param num_samples: passes ``T``; default 100 for stochastic modes, 1 otherwise.
    :param chunk_size: passes per batched computation (default: from ``memory_budget``).
    :param memory_budget: node values per chunk when ``chunk_size`` is not given (default:
        2**24 on CPU, 2**27 on a GPU).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    stochastic = model.mode.stochastic_prediction
    if num_samples is None:
        num_samples = 100 if stochastic else 1
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    for name, v in (("chunk_size", chunk_size), ("memory_budget", memory_budget)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    if not stochastic:
        num_samples = 1
    was_training = model.training
    model.eval()
    try:
        if model.guide is not None and not model.local_reparam:
            # Random weights: one weight draw per pass (a Python loop over draws).
            outs = []
            for _ in range(num_samples):
                outs.append(model.forward_predict(x, model.sample_weights(x)))
            outputs = torch.stack(outs)
        elif num_samples == 1:
            outputs = model.forward_predict(x).unsqueeze(0)
        else:
            budget = memory_budget or (
                _CPU_BUDGET if x.device.type == "cpu" else _ACCELERATOR_BUDGET)
            size = chunk_size or _chunk_size(model, x, num_samples, budget)
            outputs = torch.cat([
                model.forward_predict(x.expand((min(size, num_samples - t),) + x.shape))
                for t in range(0, num_samples, size)
            ])
    finally:
        model.train(was_training)
    lik = model.likelihood
    if hasattr(lik, "probs"):  # discrete labels: class probabilities or CRF marginals
        probs = lik.probs(outputs)
        pred = Prediction(outputs=outputs, mean=probs.mean(0), probs=probs)
    else:
        means = outputs[..., 0]
        var = lik.scale.detach() ** 2 + means.var(0, unbiased=False)
        pred = Prediction(outputs=outputs, mean=means.mean(0), variance=var)
    if y is not None:
        ll = lik.log_likelihood(outputs, y)
        pred.log_lik = ll
        pred.pointwise_log_lik = torch.logsumexp(ll, 0) - math.log(num_samples)
    return pred
