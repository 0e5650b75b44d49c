"""ArviZ conversion (arviz 0.23, built with ``az.from_dict``): the only module that imports
ArviZ, lazily, so that importing pyrocg stays fast and an ``arviz >= 1.0`` converter can
sit beside it.

``az.from_pyro`` covers MCMC only; pyrocg's posteriors are the ``T`` stochastic passes of a
trained model (MC dropout masks, PCFF samples, weight draws from a variational guide). They
are independent draws, so they are laid out as ``chains × draws`` and ArviZ's diagnostics
(``r_hat`` near 1, ESS near the number of passes) check exactly that.

=============================== ===================================================
group                           contents (dims)
=============================== ===================================================
``posterior``                   ``train_log_lik`` ``(chain, draw)``: the training data's
                                total log-likelihood per pass; the weight draws of
                                Bayesian weights, named like the parameters (``.`` → ``_``)
``posterior_predictive``        ``y`` ``(chain, draw, datum)``: labels (or targets) drawn
                                from each pass's predictive on the training inputs
``log_likelihood``              ``y`` ``(chain, draw, datum)``: ``log p(y_i | x_i, pass)``
                                of the **training** data, for LOO and WAIC
``observed_data``               ``y`` ``(datum,)``
``constant_data``               ``x`` ``(datum, feature...)``
``predictions``                 ``y`` ``(chain, draw, test_datum)`` drawn on test inputs;
                                ``probs`` ``(chain, draw, test_datum, class)`` or ``mean``
``predictions_constant_data``   ``x`` ``(test_datum, feature...)``
=============================== ===================================================

A deterministic mode (feed-forward, PCFF, dropout) predicts with one pass; it is repeated
as ``chains × draws`` identical draws (its posterior is a point mass). ArviZ then reports
``elpd_loo`` equal to the plug-in ``lppd`` with ``p_loo = 0``, Pareto ``k = inf`` (with its
warning) and ``r_hat = NaN``: the honest answers for a point estimate.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    import arviz

__all__ = ["to_inference_data", "plot_ppc", "plot_loo_pit", "import_arviz"]

#: Bayesian weights with more elements than this (per draw) are left out of ``posterior``
#: when ``weights=None`` (``az.summary`` over them would take long).
MAX_WEIGHTS = 100_000


def import_arviz():
    """``import arviz`` without its FutureWarning about the 1.0 refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _feature_dims(x: torch.Tensor, datum: str) -> list[str]:
    if x.ndim == 2:
        return [datum, "feature"]
    return [datum] + [f"x_dim_{i}" for i in range(x.ndim - 1)]


def _draws(v: torch.Tensor, chains: int) -> np.ndarray:
    """``(T, ...)`` -> ``(chains, T // chains, ...)``."""
    return _numpy(v).reshape((chains, v.shape[0] // chains) + tuple(v.shape[1:]))


def _split(data: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(x, y) of a Split-like object or a pair."""
    if isinstance(data, tuple | list) and len(data) == 2:
        return data[0], data[1]
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, data.y
    raise TypeError(f"expected a data split with .x and .y, or an (x, y) pair; got "
                    f"{type(data).__name__}")


class _Passes:
    """Per-pass quantities of one data set: what both entry points reduce to."""

    def __init__(self, *, y: torch.Tensor | None, log_lik: torch.Tensor | None,
                 probs: torch.Tensor | None = None, means: torch.Tensor | None = None,
                 noise_scale: torch.Tensor | None = None):
        self.y, self.log_lik, self.probs = y, log_lik, probs
        self.means, self.noise_scale = means, noise_scale

    @property
    def num_passes(self) -> int:
        return (self.probs if self.probs is not None else self.means).shape[0]

    def repeat(self, t: int) -> _Passes:
        def rep(v):
            return None if v is None or v.ndim == 0 else v.expand((t,) + v.shape[1:])
        return _Passes(y=self.y, log_lik=rep(self.log_lik), probs=rep(self.probs),
                       means=rep(self.means), noise_scale=self.noise_scale)

    def sample(self, generator: torch.Generator | None) -> torch.Tensor:
        """A label (or target) drawn from each pass's predictive, ``(T, batch)``."""
        if self.probs is not None:
            p = self.probs.detach().double().cpu()
            flat = torch.multinomial(p.reshape(-1, p.shape[-1]), 1, generator=generator)
            return flat.reshape(p.shape[:-1])
        m = self.means.detach().cpu()
        noise = torch.randn(m.shape, generator=generator, dtype=m.dtype)
        return m + self.noise_scale.detach().cpu().to(m.dtype) * noise


def _classification_ll(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = probs.gather(-1, y.expand(probs.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return p.clamp_min(torch.finfo(p.dtype).tiny).log()


def _from_prediction(pred: Any, y: torch.Tensor | None) -> _Passes:
    if pred.probs is not None:
        if pred.probs.ndim != 3:
            raise ValueError("to_inference_data supports per-datum labels: Prediction.probs "
                             f"must be (T, batch, classes), got {tuple(pred.probs.shape)}")
        ll = pred.log_lik
        if ll is None and y is not None:
            ll = _classification_ll(pred.probs, y)
        return _Passes(y=y, log_lik=ll, probs=pred.probs)
    if pred.outputs is None or pred.variance is None:
        raise ValueError("the Prediction has neither class probabilities nor a regression "
                         "variance; make it with pyrocg.infer.predict")
    means = pred.outputs[..., 0]
    noise_var = (pred.variance - means.var(0, unbiased=False)).clamp_min(0)
    return _Passes(y=y, log_lik=pred.log_lik, means=means, noise_scale=noise_var.sqrt())


def _model_passes(model: Any, x: torch.Tensor, num_samples: int, keep_weights: bool | None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Outputs ``(T, batch, out)`` of ``num_samples`` prediction passes, and the weight draws
    ``(T, ...)`` of a model with random weights (when kept)."""
    from ..infer import predict

    mode = model.mode
    sampled_weights = mode.random_weights and not mode.vectorized_prediction
    if keep_weights and not sampled_weights:
        raise ValueError(f"weights=True needs a mode that draws weights per pass; {mode!r} "
                         "does not (local reparametrisation samples energies, not weights)")
    if keep_weights is None and sampled_weights:
        n = sum(p.numel() for p in model.net.parameters())
        keep_weights = n <= MAX_WEIGHTS
    if not (keep_weights and sampled_weights):
        return predict(model, x, num_samples=num_samples).outputs, {}
    was_training = model.training
    model.eval()
    outputs, draws = [], {}
    try:
        with torch.no_grad():
            for _ in range(num_samples):
                draw = model.sample_weights(x)
                outputs.append(model.forward_predict(x, draw))
                for name, value in (draw.values or {}).items():
                    draws.setdefault(name, []).append(value.detach().float())
    finally:
        model.train(was_training)
    return torch.stack(outputs), {n: torch.stack(v) for n, v in draws.items()}


def _from_outputs(lik: Any, outputs: torch.Tensor, y: torch.Tensor | None) -> _Passes:
    from ..infer import Categorical, Gaussian

    if isinstance(lik, Categorical):
        probs = lik.probs(outputs)
        ll = None if y is None else lik.log_likelihood(outputs, y)
        return _Passes(y=y, log_lik=ll, probs=probs)
    if isinstance(lik, Gaussian):
        ll = None if y is None else lik.log_likelihood(outputs, y)
        return _Passes(y=y, log_lik=ll, means=outputs[..., 0], noise_scale=lik.scale.detach())
    raise TypeError(f"to_inference_data supports Categorical and Gaussian likelihoods, not "
                    f"{type(lik).__name__}")


def _check_positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def to_inference_data(
    source: Any,
    data: Any = None,
    *,
    chains: int = 4,
    draws: int = 50,
    test: Any = None,
    x_test: torch.Tensor | None = None,
    weights: bool | None = None,
    seed: int | None = 0,
) -> arviz.InferenceData:
    """ArviZ ``InferenceData`` of a trained model, or of :class:`~pyrocg.infer.Prediction` s.

    **From a model** — ``to_inference_data(model, data)``: ``chains × draws`` prediction
    passes of a :class:`~pyrocg.infer.CGModel` (Categorical or Gaussian likelihood) on the
    training inputs and, in the same passes, on the test inputs (so a weight draw is shared
    by both). ``data`` is a :class:`~pyrocg.data.DataSplits` (``train`` for the
    log-likelihood, ``test`` for ``predictions``), or a split / ``(x, y)`` pair of training
    data, with ``test`` a split, a pair or test inputs.

    **From predictions** — ``to_inference_data(pred, y, test=pred_test, x_test=x)``: ``pred``
    is a :func:`~pyrocg.infer.predict` result on the training data with targets ``y``
    ``(batch,)``; its ``T`` passes are split into ``chains`` chains (``T`` must divide);
    ``test`` is an optional prediction on test inputs (same ``T``).

    The groups are listed in the module docstring; ``az.loo``, ``az.waic``, ``az.compare``,
    ``az.summary``, ``az.ess``, ``az.rhat``, ``az.plot_ppc`` and ``az.plot_loo_pit`` take
    the result with their defaults.

    :param source: a trained ``CGModel`` or a ``Prediction`` on the training data.
    :param data: for a model, the data (see above); for a prediction, its targets ``y``.
    :param chains: independent chains (the passes are iid, so ``r_hat`` should be near 1).
    :param draws: draws per chain for a model (a prediction brings its own ``T``);
        deterministic modes repeat their single pass ``chains × draws`` times.
    :param test: test data (model) or a ``Prediction`` on test inputs.
    :param x_test: test inputs for ``predictions_constant_data`` (prediction form).
    :param weights: keep the weight draws of Bayesian weights in ``posterior``: ``None``
        keeps them when the network has at most :data:`MAX_WEIGHTS` parameters.
    :param seed: seed of the labels drawn for ``posterior_predictive`` / ``predictions``
        (``None``: torch's global generator). The passes themselves use torch's global RNG.

    >>> import torch
    >>> from pyrocg.infer import Prediction
    >>> probs = torch.softmax(torch.randn(8, 5, 3), -1)
    >>> idata = to_inference_data(Prediction(outputs=probs.log(), mean=probs.mean(0),
    ...                                      probs=probs), torch.zeros(5, dtype=torch.long),
    ...                           chains=2)
    >>> idata.log_likelihood["y"].shape, idata.posterior_predictive["y"].dims
    ((2, 4, 5), ('chain', 'draw', 'datum'))
    """
    from ..infer import CGModel, Prediction

    _check_positive("chains", chains)
    _check_positive("draws", draws)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    posterior_extra: dict[str, torch.Tensor] = {}
    x_train = None
    if isinstance(source, CGModel):
        if data is None:
            raise TypeError("to_inference_data(model, data): data is required for a model")
        if test is None and hasattr(data, "train") and hasattr(data, "test"):
            data, test = data.train, data.test
        x_train, y_train = _split(data)
        if test is not None and isinstance(test, torch.Tensor):
            x_test, y_test = test, None
        elif test is not None:
            x_test, y_test = _split(test)
        n = x_train.shape[0]
        x_all = x_train if x_test is None else torch.cat([x_train, x_test.to(x_train.device)])
        outputs, weight_draws = _model_passes(source, x_all, chains * draws, weights)
        if outputs.shape[0] == 1:
            outputs = outputs.expand((chains * draws,) + outputs.shape[1:])
        train = _from_outputs(source.likelihood, outputs[:, :n], y_train)
        test_passes = None if x_test is None else _from_outputs(
            source.likelihood, outputs[:, n:], y_test)
        posterior_extra = {name.replace(".", "_"): v for name, v in weight_draws.items()}
    elif isinstance(source, Prediction):
        if isinstance(data, torch.Tensor) or data is None:
            y_train = data
        else:
            x_train, y_train = _split(data)
        train = _from_prediction(source, y_train)
        test_passes = None if test is None else _from_prediction(test, None)
        t = train.num_passes
        if t == 1:
            train = train.repeat(chains * draws)
            test_passes = None if test_passes is None else test_passes.repeat(chains * draws)
        elif t % chains:
            raise ValueError(f"{t} passes cannot be split into {chains} chains evenly")
        if test_passes is not None and test_passes.num_passes != train.num_passes:
            raise ValueError(f"the test prediction has {test_passes.num_passes} passes, the "
                             f"training prediction {train.num_passes}")
    else:
        raise TypeError(f"to_inference_data takes a CGModel or a Prediction, not "
                        f"{type(source).__name__}")
    return _build(train, test_passes, x_train, x_test, chains, posterior_extra, generator)


def _build(train: _Passes, test: _Passes | None, x_train: torch.Tensor | None,
           x_test: torch.Tensor | None, chains: int, posterior_extra: dict[str, torch.Tensor],
           generator: torch.Generator | None) -> arviz.InferenceData:
    az = import_arviz()
    coords: dict[str, Any] = {}
    dims: dict[str, list[str]] = {"y": ["datum"]}
    groups: dict[str, dict[str, np.ndarray]] = {}
    t = train.num_passes
    if train.y is not None:
        coords["datum"] = np.arange(train.y.shape[0])
        groups["observed_data"] = {"y": _numpy(train.y)}
        groups["posterior_predictive"] = {"y": _draws(train.sample(generator), chains)}
    posterior = {name: _draws(v, chains) for name, v in posterior_extra.items()}
    if train.log_lik is not None:
        groups["log_likelihood"] = {"y": _draws(train.log_lik.double(), chains)}
        posterior["train_log_lik"] = _draws(train.log_lik.double().sum(-1), chains)
    if not posterior:  # ArviZ wants a posterior group; the pass index is what varies
        posterior["pass"] = np.arange(t).reshape(chains, t // chains)
    groups["posterior"] = posterior
    if x_train is not None:
        groups["constant_data"] = {"x": _numpy(x_train)}
        dims["x"] = _feature_dims(x_train, "datum")
    idata = az.from_dict(**groups, coords=coords, dims=dims)
    pred_dims: dict[str, list[str]] = {}
    pred_groups: dict[str, dict[str, np.ndarray]] = {}
    if test is not None:
        n_test = (test.probs if test.probs is not None else test.means).shape[1]
        coords["test_datum"] = np.arange(n_test)
        pred = {"y": _draws(test.sample(generator), chains)}
        pred_dims["y"] = ["test_datum"]
        if test.probs is not None:
            pred["probs"] = _draws(test.probs, chains)
            pred_dims["probs"] = ["test_datum", "class"]
            coords["class"] = np.arange(test.probs.shape[-1])
        else:
            pred["mean"] = _draws(test.means, chains)
            pred_dims["mean"] = ["test_datum"]
        pred_groups["predictions"] = pred
    if x_test is not None:
        pred_groups["predictions_constant_data"] = {"x": _numpy(x_test)}
        pred_dims["x"] = _feature_dims(x_test, "test_datum")
        coords["test_datum"] = np.arange(x_test.shape[0])
    if pred_groups:
        # arviz 0.23's from_dict gives predictions_constant_data the observation dims
        # (not pred_dims), so the prediction groups are built apart, then added.
        idata.extend(az.from_dict(**pred_groups, coords=coords, dims=pred_dims,
                                  pred_dims=pred_dims))
    return idata


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _models(idata: Any) -> Mapping[str, Any]:
    az = import_arviz()
    # InferenceData is itself a Mapping (of groups): test for it first.
    return {"model": idata} if isinstance(idata, az.InferenceData) else idata


def plot_ppc(idata: arviz.InferenceData | Mapping[str, arviz.InferenceData],
             path: str | Path) -> Path:
    """Posterior predictive check (``az.plot_ppc``, defaults) of one or several models,
    one panel each, saved as PNG.

    :param idata: an ``InferenceData`` of :func:`to_inference_data`, or ``{name: idata}``.
    :param path: the PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    az = import_arviz()
    models = _models(idata)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, (name, data) in zip(axes[0], models.items(), strict=True):
        pp = data.posterior_predictive
        az.plot_ppc(data, ax=ax, num_pp_samples=min(50, pp.sizes["chain"] * pp.sizes["draw"]),
                    random_seed=0)
        ax.set_title(f"PPC: {name}")
        ax.set_xlabel("y (training labels)")
        ax.set_ylabel("density")
    return _save(fig, path)


def plot_loo_pit(idata: arviz.InferenceData | Mapping[str, arviz.InferenceData],
                 path: str | Path) -> Path:
    """LOO probability integral transform (``az.plot_loo_pit``, ``y="y"``) of one or several
    models, saved as PNG. For class labels the PIT is discrete (labels are not ordered), so
    read it as a check that the predictive is neither too wide nor too narrow, not as a test
    of uniformity.

    :param idata: an ``InferenceData`` of :func:`to_inference_data`, or ``{name: idata}``.
    :param path: the PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    az = import_arviz()
    models = _models(idata)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, (name, data) in zip(axes[0], models.items(), strict=True):
        az.plot_loo_pit(data, y="y", ax=ax)
        ax.set_title(f"LOO-PIT: {name}")
        ax.set_xlabel("PIT value")
        ax.set_ylabel("density")
    return _save(fig, path)

