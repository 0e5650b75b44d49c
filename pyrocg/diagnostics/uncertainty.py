"""Uncertainty per datum from ``T`` stochastic passes.

Classification (Depeweg et al., 2018; Houlsby et al., 2011): with per-pass class
probabilities ``p_t`` and their mean ``p̄``,

* predictive entropy ``H[p̄]`` (total uncertainty)
  = expected entropy ``(1/T) Σ_t H[p_t]`` (aleatoric)
  + mutual information ``I[y; pass]`` (epistemic, BALD);
* the variation ratio ``1 - (passes voting for the modal class) / T``.

Regression with a Gaussian likelihood: the predictive is the mixture
``(1/T) Σ_t N(μ_t, σ²)``; its variance splits into the noise ``σ²`` (aleatoric) and the
spread of the means ``Var_t μ_t`` (epistemic). :func:`predictive_interval` gives the
mixture's central interval, :func:`interval_coverage` its empirical coverage.

A deterministic network (``T = 1``) has zero mutual information and zero model variance.
"""

from __future__ import annotations

import torch

__all__ = [
    "entropy",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
    "classification_uncertainty",
    "regression_uncertainty",
    "predictive_interval",
    "interval_coverage",
]


def _passes(probs: torch.Tensor) -> torch.Tensor:
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise TypeError("probs must be a floating-point tensor of per-pass class probabilities")
    if probs.ndim == 2:  # a single (deterministic) pass
        return probs.unsqueeze(0)
    if probs.ndim != 3:
        raise ValueError(f"probs must have shape (T, batch, classes) or (batch, classes), got "
                         f"{tuple(probs.shape)}")
    return probs


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats over the last dimension, ``0 log 0 = 0``: ``(..., classes) -> (...)``.

    >>> entropy(torch.tensor([0.5, 0.5, 0.0]))
    tensor(0.6931)
    """
    return -torch.special.xlogy(probs, probs).sum(-1)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean predictive, ``H[(1/T) Σ_t p_t]`` (total uncertainty).

    :param probs: per-pass class probabilities ``(T, batch, classes)`` (or ``(batch, classes)``).
    :returns: ``(batch,)``.
    """
    return entropy(_passes(probs).mean(0))


def expected_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the passes, ``(1/T) Σ_t H[p_t]`` (aleatoric uncertainty).

    :param probs: per-pass class probabilities ``(T, batch, classes)``.
    :returns: ``(batch,)``.
    """
    return entropy(_passes(probs)).mean(0)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    """Mutual information between the label and the pass (BALD; epistemic uncertainty):
    ``H[p̄] - (1/T) Σ_t H[p_t]``, ``>= 0`` (rounding below 0 is clipped).

    :param probs: per-pass class probabilities ``(T, batch, classes)``.
    :returns: ``(batch,)``.

    >>> p = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # two confident passes that disagree
    >>> mutual_information(p)  # ln 2: all of the uncertainty is epistemic
    tensor([0.6931])
    """
    probs = _passes(probs)
    return (predictive_entropy(probs) - expected_entropy(probs)).clamp_min(0)


def variation_ratio(probs: torch.Tensor) -> torch.Tensor:
    """``1 - f/T`` where ``f`` passes vote for the most voted class (ties: the lowest index).

    :param probs: per-pass class probabilities ``(T, batch, classes)``.
    :returns: ``(batch,)``, in ``[0, 1 - 1/classes]``.

    >>> p = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]], [[0.6, 0.4]], [[0.7, 0.3]]])
    >>> variation_ratio(p)
    tensor([0.2500])
    """
    probs = _passes(probs)
    votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(0)
    return 1 - votes.max(-1).values.to(probs.dtype) / probs.shape[0]


def classification_uncertainty(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """All per-datum uncertainties of a classifier's passes, each ``(batch,)``.

    :param probs: per-pass class probabilities ``(T, batch, classes)`` (e.g.
        :attr:`pyrocg.infer.Prediction.probs`) or one pass ``(batch, classes)``.
    :returns: ``predictive_entropy``, ``expected_entropy``, ``mutual_information`` (the
        first is the sum of the other two), ``variation_ratio`` and ``confidence``
        (the mean predictive's top-class probability).

    >>> u = classification_uncertainty(torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]]))
    >>> sorted(u)
    ['confidence', 'expected_entropy', 'mutual_information', 'predictive_entropy', 'variation_ratio']
    """
    probs = _passes(probs)
    total = predictive_entropy(probs)
    aleatoric = expected_entropy(probs)
    return {
        "predictive_entropy": total,
        "expected_entropy": aleatoric,
        "mutual_information": (total - aleatoric).clamp_min(0),
        "variation_ratio": variation_ratio(probs),
        "confidence": probs.mean(0).max(-1).values,
    }


def _means(means: torch.Tensor) -> torch.Tensor:
    if not isinstance(means, torch.Tensor) or not means.is_floating_point():
        raise TypeError("means must be a floating-point tensor of per-pass predictive means")
    if means.ndim == 3 and means.shape[-1] == 1:  # Prediction.outputs (T, batch, 1)
        means = means[..., 0]
    if means.ndim != 2:
        raise ValueError(f"means must have shape (T, batch) or (T, batch, 1), got "
                         f"{tuple(means.shape)}")
    return means


def regression_uncertainty(means: torch.Tensor, noise_scale: float | torch.Tensor
                           ) -> dict[str, torch.Tensor]:
    """Split the predictive variance of a Gaussian likelihood into noise and model parts.

    :param means: per-pass predictive means ``(T, batch)`` (or ``Prediction.outputs``,
        ``(T, batch, 1)``).
    :param noise_scale: the likelihood's noise standard deviation ``σ`` (a number, or
        ``(batch,)``).
    :returns: ``mean`` ``(batch,)``, ``noise`` (aleatoric ``σ²``), ``model`` (epistemic,
        ``Var_t μ_t`` with ``1/T``), ``total`` (their sum, the mixture's variance).

    >>> u = regression_uncertainty(torch.tensor([[0.0], [2.0]]), 1.0)
    >>> u["noise"], u["model"], u["total"]
    (tensor([1.]), tensor([1.]), tensor([2.]))
    """
    means = _means(means)
    scale = torch.as_tensor(noise_scale, dtype=means.dtype, device=means.device)
    noise = (scale**2).expand(means.shape[1:]).clone()
    model = means.var(0, unbiased=False)
    return {"mean": means.mean(0), "noise": noise, "model": model, "total": noise + model}


def predictive_interval(means: torch.Tensor, noise_scale: float | torch.Tensor,
                        level: float = 0.9, iterations: int = 60
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Central ``level`` interval of the predictive mixture ``(1/T) Σ_t N(μ_t, σ²)``.

    The mixture's quantiles ``(1 ± level)/2`` are found by bisection on its CDF (exact up
    to ``2**-iterations`` of the bracket; for ``T = 1`` the Gaussian interval).

    :param means: per-pass means ``(T, batch)`` (or ``(T, batch, 1)``).
    :param noise_scale: noise standard deviation ``σ > 0`` (number or ``(batch,)``).
    :param level: coverage of the interval, in ``(0, 1)``.
    :returns: ``(lower, upper)``, each ``(batch,)``.

    >>> lo, hi = predictive_interval(torch.zeros(1, 1), 1.0, level=0.95)
    >>> round(float(hi), 3)
    1.96
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    means = _means(means)
    scale = torch.as_tensor(noise_scale, dtype=means.dtype, device=means.device)
    if not bool((scale > 0).all()):
        raise ValueError("noise_scale must be > 0")
    normal = torch.distributions.Normal(means, scale.expand(means.shape[1:]))
    z = -torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1 - level) / 2)).item()
    spread = z * scale.max()

    def quantile(q: float) -> torch.Tensor:
        lo = means.min(0).values - spread - 1
        hi = means.max(0).values + spread + 1
        for _ in range(iterations):
            mid = (lo + hi) / 2
            below = normal.cdf(mid.expand_as(means)).mean(0) < q
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return (lo + hi) / 2

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


def interval_coverage(lower: torch.Tensor, upper: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of targets inside ``[lower, upper]`` (all ``(batch,)``); a calibrated
    ``level`` interval covers about ``level`` of them.

    >>> interval_coverage(torch.zeros(4), torch.ones(4), torch.tensor([0.5, 2.0, 1.0, -1.0]))
    tensor(0.5000)
    """
    if lower.shape != y.shape or upper.shape != y.shape:
        raise ValueError(f"lower, upper and y must have the same shape, got {tuple(lower.shape)}, "
                         f"{tuple(upper.shape)}, {tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError("y is empty")
    return ((y >= lower) & (y <= upper)).to(lower.dtype).mean()

