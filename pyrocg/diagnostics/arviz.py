"""ArviZ conversion. ``az.from_pyro`` covers MCMC only, so build ``InferenceData`` from dicts."""

from __future__ import annotations

import warnings

import torch

__all__ = ["to_inference_data"]


def to_inference_data(prediction, y: torch.Tensor | None = None, chains: int = 1):
    """Turn a :class:`~pyrocg.infer.Prediction` into ``arviz.InferenceData``.

    The ``T`` stochastic passes become draws (split into ``chains`` chains): pointwise
    ``log_likelihood["y"]`` ``(chain, draw, datum)`` for ``az.loo``/``az.waic``, the per-pass
    network outputs as ``posterior_predictive``, and ``y`` as ``observed_data``.

    >>> import torch
    >>> from pyrocg.infer import Prediction
    >>> pred = Prediction(outputs=torch.randn(8, 5, 3), mean=torch.full((5, 3), 1 / 3),
    ...                   log_lik=torch.randn(8, 5) - 2)
    >>> idata = to_inference_data(pred, torch.zeros(5, dtype=torch.long), chains=2)
    >>> idata.log_likelihood["y"].shape
    (2, 4, 5)
    """
    with warnings.catch_warnings():
        # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning on import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az

    outputs = prediction.outputs.detach().cpu()
    t = outputs.shape[0]
    if t % chains:
        raise ValueError(f"{t} passes cannot be split into {chains} chains evenly")

    def draws(v: torch.Tensor):
        return v.detach().cpu().reshape((chains, t // chains) + tuple(v.shape[1:])).numpy()

    groups = {"posterior_predictive": {"output": draws(outputs)}}
    if prediction.log_lik is not None:
        groups["log_likelihood"] = {"y": draws(prediction.log_lik)}
    if y is not None:
        groups["observed_data"] = {"y": y.detach().cpu().numpy()}
    return az.from_dict(**groups)
