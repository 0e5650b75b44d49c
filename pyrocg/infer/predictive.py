"""Vectorised predictive: T stochastic passes as one batched computation.

For a :class:`CGModel` the input gets a leading sample dimension (``x.expand(T, ...)``, a
view: no copy), so every sample site of the network draws ``T`` independent values at once.
``T`` is split into chunks to bound memory. Any other Pyro model runs with its guide like
:class:`pyro.infer.Predictive` (a loop of ``T`` runs, or one run in a plate of size ``T``
with ``parallel=True``). Unlike :class:`pyro.infer.Predictive`, nothing is masked: the
per-datum log-likelihoods of the observed site are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch

from ..layers import ROLE_KEY
from ..validation import check_finite
from .model import CGModel

__all__ = ["Prediction", "predict", "predict_pyro"]

# Elements of node values per chunk (all layers, all passes). On CPU a chunk that stays
# near the caches is fastest (64 MiB of float32: T=100 passes of batch 32 in one chunk, 4
# passes per chunk at batch 1000 for a 784-1024-1024-10 mlp); a GPU wants large chunks
# (0.5 GiB).
_CPU_BUDGET, _ACCELERATOR_BUDGET = 2**24, 2**27


@dataclass
class Prediction:
    """Result of :func:`predict`.

    :ivar outputs: network outputs per pass, ``(T, batch, out)`` (logits or means); for a
        Pyro model, its return values ``(T, ...)``.
    :ivar probs: per-pass class probabilities ``(T, batch, classes)`` (classification; for
        a CRF likelihood the per-position marginals ``(T, batch, length, tags)``).
    :ivar mean: predictive mean: class probabilities ``(batch, classes)`` averaged over
        passes (CRF: averaged marginals), or the regression mean ``(batch,)``.
    :ivar variance: predictive variance ``(batch,)`` (regression: noise + spread of means).
    :ivar log_lik: per-pass pointwise ``log p(y_i | x_i, pass t)``, ``(T, batch)``.
    :ivar pointwise_log_lik: ``log (1/T) sum_t p(y_i | x_i, pass t)``, ``(batch,)``.
    :ivar sites: values of the requested ``return_sites`` per pass, ``(T, ...)`` each.

    >>> import torch
    >>> from pyrocg import infer, models
    >>> model = infer.CGModel(models.mlp(4, [8], 3, dropout=0.2), infer.Categorical(10), "mc-dropout")
    >>> pred = infer.predict(model, torch.randn(5, 4), torch.randint(0, 3, (5,)), num_samples=7)
    >>> pred.probs.shape, pred.mean.shape, pred.log_lik.shape, pred.pointwise_log_lik.shape
    (torch.Size([7, 5, 3]), torch.Size([5, 3]), torch.Size([7, 5]), torch.Size([5]))
    """

    outputs: torch.Tensor | None
    mean: torch.Tensor | None
    probs: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    log_lik: torch.Tensor | None = None
    pointwise_log_lik: torch.Tensor | None = None
    sites: dict[str, torch.Tensor] | None = None


def _per_pass(model: CGModel, x: torch.Tensor) -> int:
    """Node values one pass adds per datum, beyond what all passes share."""
    # Two passes on a single datum measure the node values each *pass* adds. Values that are
    # stride-0 copies over the passes (every layer before the first random site: a chunk
    # computes them once) cost nothing per pass — so MC dropout on a convnet, random only in
    # its dense head, takes all T passes in one chunk instead of one per chunk.
    probe = x[:1].expand((2,) + tuple(x[:1].shape))
    tr = poutine.trace(model.forward_predict).get_trace(probe)
    values = [s["value"] for s in tr.nodes.values() if s["type"] == "sample"]
    per_pass = 0
    for v in values + [tr.nodes["_RETURN"]["value"]]:
        if v.dim() and v.shape[0] == 2:
            per_pass += 0 if v.stride(0) == 0 else v[0].numel()
        else:
            per_pass += v.numel()
    return max(per_pass, 1)


def _traced(fn: Callable, x: torch.Tensor, sites: Sequence[str] | None,
            collected: dict[str, list[torch.Tensor]], vectorised: bool) -> torch.Tensor:
    """``fn(x)``, keeping the values of ``sites`` (with a leading pass dim) in ``collected``."""
    if not sites:
        return fn(x)
    tr = poutine.trace(fn).get_trace(x)
    for name in sites:
        if name not in tr.nodes:
            known = [n for n, s in tr.nodes.items() if s["type"] == "sample"]
            raise ValueError(f"return_sites: no site {name!r} in a prediction pass; its sample "
                             f"sites are {known} (and '_RETURN')")
        value = tr.nodes[name]["value"]
        collected.setdefault(name, []).append(value if vectorised else value.unsqueeze(0))
    return tr.nodes["_RETURN"]["value"]


@torch.no_grad()
def predict(
    model: CGModel | Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    *,
    guide: Callable | None = None,
    return_sites: Sequence[str] | None = None,
    parallel: bool = False,
    obs_site: str | None = None,
) -> Prediction:
    """Predict with ``num_samples`` stochastic passes (1 for deterministic modes).

    :param model: a trained :class:`CGModel`, or any Pyro model ``model(x, y=None)`` (then
        see :func:`predict_pyro`, which the last four parameters are for).
    :param x: inputs ``(batch, *input_shape)``.
    :param y: optional targets ``(batch,)`` for log-likelihoods.
    :param num_samples: passes ``T``; default the mode's (``model.mode.num_samples``: 100 for
        stochastic modes); deterministic modes always predict once.
    :param chunk_size: passes per batched computation (default: from ``memory_budget``).
    :param memory_budget: node values per chunk when ``chunk_size`` is not given (default:
        2**24 on CPU, 2**27 on a GPU).
    :param guide: a Pyro model's guide (a :class:`CGModel` uses its own).
    :param return_sites: names of sites (or ``"_RETURN"``) whose values per pass to return in
        :attr:`Prediction.sites`; for a :class:`CGModel` the sites of its prediction passes.
    :param parallel: a Pyro model's passes at once (it must broadcast over a plate).
    :param obs_site: a Pyro model's observed site (default: the only one).

    >>> import torch
    >>> from pyrocg import infer, models
    >>> model = infer.CGModel(models.mlp(4, [8], 3, dropout=0.2), infer.Categorical(10), "mc-dropout")
    >>> x = torch.randn(5, 4)  # (batch, features)
    >>> infer.predict(model, x, num_samples=20).outputs.shape  # T passes in one batch
    torch.Size([20, 5, 3])
    >>> ff = infer.CGModel(models.mlp(4, [8], 3), infer.Categorical(10))  # deterministic mode
    >>> infer.predict(ff, x, num_samples=20).outputs.shape  # one pass
    torch.Size([1, 5, 3])
    """
    if not isinstance(model, CGModel):
        return predict_pyro(model, x, y, num_samples=100 if num_samples is None else num_samples,
                            guide=guide, return_sites=return_sites, parallel=parallel,
                            obs_site=obs_site)
    if guide is not None or parallel or obs_site is not None:
        raise TypeError("guide, parallel and obs_site are for Pyro models; a CGModel predicts "
                        "with its own guide, vectorised")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    check_finite(x, "x")
    stochastic = model.mode.stochastic_prediction
    if num_samples is None:
        num_samples = model.mode.num_samples
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    for name, v in (("chunk_size", chunk_size), ("memory_budget", memory_budget)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    if not stochastic:
        num_samples = 1
    collected: dict[str, list[torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    try:
        if not model.mode.vectorized_prediction:
            # Random weights: one weight draw per pass (a Python loop over draws).
            outputs = torch.stack([_traced(model.forward_predict, x, return_sites, collected, False)
                                   for _ in range(num_samples)])
        elif num_samples == 1:
            outputs = _traced(model.forward_predict, x, return_sites, collected, False).unsqueeze(0)
        else:
            budget = memory_budget or (
                _CPU_BUDGET if x.device.type == "cpu" else _ACCELERATOR_BUDGET)
            per_pass = _per_pass(model, x) if chunk_size is None else 0
            size = chunk_size or max(1, min(num_samples, budget // (per_pass * x.shape[0])))
            rows = budget // (per_pass * num_samples) if per_pass else 0
            if size < num_samples and rows >= 1 and not return_sites:
                # Chunks of rows with all T passes each: the part every pass shares (e.g. a
                # convnet's trunk below MC dropout) is computed once per row, not once per
                # chunk of passes.
                outputs = torch.cat([
                    _traced(model.forward_predict,
                            x[i:i + rows].expand((num_samples,) + x[i:i + rows].shape),
                            None, collected, True)
                    for i in range(0, x.shape[0], rows)
                ], dim=1)
            else:
                outputs = torch.cat([
                    _traced(model.forward_predict,
                            x.expand((min(size, num_samples - t),) + x.shape),
                            return_sites, collected, True)
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
    if return_sites:
        pred.sites = {n: torch.cat(v) for n, v in collected.items()}
    if y is not None:
        ll = lik.log_likelihood(outputs, y)
        pred.log_lik = ll
        pred.pointwise_log_lik = torch.logsumexp(ll, 0) - math.log(num_samples)
    return pred


def _observed_sites(trace) -> list[str]:
    """Sites observed as data: not pyrocg's chain-graph sites, not ``pyro.deterministic``
    sites, not factors (empty values)."""
    return [n for n, s in trace.nodes.items()
            if s["type"] == "sample" and s["is_observed"] and s["value"].numel() > 0
            and ROLE_KEY not in (s.get("infer") or {})
            and not (s.get("infer") or {}).get("_deterministic")]


def _plate_nesting(*traces) -> int:
    return max([-f.dim for tr in traces for s in tr.nodes.values() if s["type"] == "sample"
                for f in s["cond_indep_stack"] if f.vectorized and f.dim is not None], default=0)


@torch.no_grad()
def predict_pyro(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    guide: Callable | None = None,
    num_samples: int = 100,
    return_sites: Sequence[str] | None = None,
    parallel: bool = False,
    obs_site: str | None = None,
) -> Prediction:
    """``T`` passes of any Pyro model ``model(x, y=None)``, its latent sites drawn from
    ``guide`` (called with the same arguments) or, without a guide, from the model itself.

    With ``y`` the model observes it and the observed site's exact, unmasked pointwise
    log-likelihoods are returned (``log_lik``, ``(T, *batch)``; ``pointwise_log_lik``);
    without ``y`` the observed site is drawn, as in :class:`pyro.infer.Predictive`.

    :param model: a Pyro model.
    :param x: its inputs.
    :param y: its observations, or ``None``.
    :param guide: a guide of ``model``, or ``None``.
    :param num_samples: passes ``T``.
    :param return_sites: sites (or ``"_RETURN"``) to return per pass in ``sites``; default:
        every sample site and the return value.
    :param parallel: run the ``T`` passes at once in a plate left of the model's plates
        (the model must broadcast, as for ``Predictive(parallel=True)``).
    :param obs_site: the observed site of the log-likelihoods (default: the only one).

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyrocg import infer
    >>> def model(x, y=None):
    ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", x.shape[0]):
    ...         return pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)
    >>> x = torch.linspace(-1, 1, 6)
    >>> pred = infer.predict_pyro(model, x, x, num_samples=10)
    >>> pred.log_lik.shape, pred.pointwise_log_lik.shape  # (T, batch), (batch,)
    (torch.Size([10, 6]), torch.Size([6]))
    """
    if not callable(model) or (guide is not None and not callable(guide)):
        raise TypeError("model and guide must be callables (Pyro model and guide)")
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    args = (x,) if y is None else (x, y)

    def run(m, g):
        if g is None:
            return None, poutine.trace(m).get_trace(*args)
        guide_trace = poutine.trace(g).get_trace(*args)
        return guide_trace, poutine.trace(poutine.replay(m, trace=guide_trace)).get_trace(*args)

    single_guide, single = run(model, guide)  # one plain pass: shapes, plates, sites
    observed = _observed_sites(single)
    if obs_site is None and y is not None:
        if len(observed) != 1:
            raise ValueError(f"the model has observed sites {observed}; name the one of the "
                             "log-likelihood with obs_site=")
        obs_site = observed[0]
    if obs_site is not None and obs_site not in observed:
        raise ValueError(f"obs_site {obs_site!r} is not an observed site of the model "
                         f"(observed: {observed})")
    names = list(return_sites) if return_sites is not None else [
        n for n, s in single.nodes.items() if s["type"] == "sample"] + ["_RETURN"]
    for n in names:
        if n not in single.nodes:
            raise ValueError(f"return_sites: the model has no site {n!r}")

    def log_lik(tr):
        site = tr.nodes[obs_site]
        return site["fn"].log_prob(site["value"])

    def shaped(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        shape = (num_samples,) + like.shape
        return value.expand(shape) if value.numel() < math.prod(shape) else value.reshape(shape)

    if parallel:
        nesting = _plate_nesting(single, *([single_guide] if single_guide else []))
        plate = pyro.plate("_num_predictive_samples", num_samples, dim=-nesting - 1)
        _, tr = run(plate(model), None if guide is None else plate(guide))
        sites = {n: shaped(tr.nodes[n]["value"], single.nodes[n]["value"]) for n in names
                 if torch.is_tensor(single.nodes[n]["value"])}
        ll = None if obs_site is None else shaped(log_lik(tr), log_lik(single))
    else:
        traces = [single] + [run(model, guide)[1] for _ in range(num_samples - 1)]
        sites = {n: torch.stack([tr.nodes[n]["value"] for tr in traces]) for n in names
                 if torch.is_tensor(single.nodes[n]["value"])}
        ll = None if obs_site is None else torch.stack([log_lik(tr) for tr in traces])
    out = sites.get("_RETURN")
    mean = out.mean(0) if out is not None and out.is_floating_point() else None
    pred = Prediction(outputs=out, mean=mean, sites=sites)
    if ll is not None and y is not None:
        pred.log_lik = ll
        pred.pointwise_log_lik = torch.logsumexp(ll, 0) - math.log(num_samples)
    return pred
