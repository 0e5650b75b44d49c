"""``pyrocg diagnose``: uncertainty, calibration and out-of-distribution figures of a saved
model; and the diagnostic outputs it shares with ``pyrocg demo`` (``--plots``, ``--arviz``).

The model is rebuilt from the spec its checkpoint carries (as ``pyrocg evaluate`` does),
then predicts the test split with ``--samples`` passes. Printed and written (``--json``):
accuracy, NLL, ECE, MCE, Brier, AURC (:func:`pyrocg.metrics.classification_metrics`), the
mean predictive entropy, expected entropy and mutual information, and for each ``--ood``
set the AUROC and FPR at 95% TPR of each OOD score (:func:`pyrocg.diagnostics.ood_metrics`).
The OOD sets are built from the test inputs (an image data set's; the model saw every class,
so there is no held-out class):

* ``noise``: uniform noise over the test inputs' range;
* ``inverted``: each input reflected in that range (``1 - x`` for pixels in ``[0, 1]``);
* ``rotated``: each image rotated by 90 degrees.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyro
import torch

from .. import diagnostics, infer, metrics
from .checks import (
    IMAGE_DATASETS,
    OOD_SETS,
    UsageError,
    check_device_flag,
    check_distinct,
    check_input_file,
    check_output_dir,
    check_output_file,
    check_samples,
    check_seed,
)
from .commands import load_checkpoint_model, note, write_json

__all__ = ["cmd_diagnose", "OOD_SETS", "ood_inputs", "check_diagnostic_outputs",
           "inference_data", "write_arviz", "write_plots", "predict_batched"]

#: The figure of the OOD sets' uncertainties, written besides the diagnostic figures.
OOD_FIGURE = "ood.png"


# ------------------------------------------------------------------ outputs (checked first)


def check_diagnostic_outputs(args, arviz: bool = True) -> dict[str, Path | None]:
    """``--plots`` (a directory, and each figure file in it) and ``--arviz`` (a file) can be
    written; returns ``{flag: path}`` for :func:`~pyrocg.cli.checks.check_distinct` (the
    figures as ``--plots NAME``)."""
    outs: dict[str, Path | None] = {}
    plots = check_output_dir("--plots", args.plots)
    outs["--plots"] = plots
    if plots is not None:
        names = (*diagnostics.DIAGNOSTIC_FIGURES, *diagnostics.ARVIZ_FIGURES, OOD_FIGURE)
        for name in names:
            if plots.is_dir():  # files there are written over: they must be writable
                check_output_file("--plots", str(plots / name))
            outs[f"--plots {name}"] = plots / name
    if arviz:
        outs["--arviz"] = check_output_file("--arviz", args.arviz)
    return outs


def _layout(samples: int) -> tuple[int, int]:
    """(chains, draws) of ``samples`` passes: 4 chains when each gets 4 draws or more
    (ArviZ's minimum), else one chain."""
    return (4, samples // 4) if samples >= 16 else (1, samples)


@contextlib.contextmanager
def _arviz_notes() -> Iterator[None]:
    """ArviZ's warnings (Pareto k, few draws) as one note line each, not a traceback or
    a logging record."""
    logger = logging.getLogger("arviz")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.setLevel(level)
    seen = set()
    for w in caught:
        line = " ".join(str(w.message).split())
        if line not in seen:
            seen.add(line)
            note(f"ArviZ: {line[:300]}")


def inference_data(model: infer.CGModel, data, samples: int):
    """ArviZ ``InferenceData`` of about ``samples`` passes of ``model`` on the training and
    test inputs (:func:`pyrocg.diagnostics.to_inference_data`)."""
    chains, draws = _layout(samples)
    with _arviz_notes():
        return diagnostics.to_inference_data(model, data, chains=chains, draws=draws)


def write_arviz(idata, path: Path | None) -> None:
    if path is not None:
        with _arviz_notes():
            idata.to_netcdf(str(path))
        print(f"wrote {path} (ArviZ InferenceData: {', '.join(idata.groups())})")


def write_plots(directory: Path | None, predictions: dict[str, Any], y: torch.Tensor, *,
                idata: dict[str, Any] | None = None,
                ood: dict[str, dict[str, infer.Prediction]] | None = None) -> list[Path]:
    """The diagnostic figures (:func:`pyrocg.diagnostics.write_diagnostic_plots`) of
    ``predictions`` ``{name: Prediction}``; with ``ood`` ``{name: {set: Prediction}}`` the
    entropy figures compare the test data with all OOD sets together, and ``ood.png``
    shows each set apart."""
    if directory is None:
        return []
    ood_all = None
    if ood:
        ood_all = {name: torch.cat([p.probs for p in sets.values()], 1)
                   for name, sets in ood.items()}
    with _arviz_notes():
        paths = diagnostics.write_diagnostic_plots(directory, predictions, y, ood=ood_all,
                                                   idata=idata or None)
    if ood:
        for name, sets in ood.items():
            scores = {}
            for key, label in (("predictive_entropy", "predictive entropy"),
                               ("mutual_information", "mutual information")):
                per_set = {"test": predictions[name]} | sets
                scores[f"{label}, {name}"] = {
                    k: diagnostics.classification_uncertainty(p.probs.double())[key]
                    for k, p in per_set.items()}
            paths.append(diagnostics.plot_uncertainty_histograms(
                scores, directory / OOD_FIGURE, xlabel="nats", title="OOD"))
    for p in paths:
        print(f"wrote {p}")
    return paths


# ------------------------------------------------------------------------- predictions


def predict_batched(model: infer.CGModel, x: torch.Tensor, y: torch.Tensor | None,
                    samples: int, batch_size: int = 1000) -> infer.Prediction:
    """:func:`pyrocg.infer.predict` in batches of ``batch_size`` rows (as
    :func:`pyrocg.infer.evaluate` does: the same draws under the same seed), joined."""
    parts = [infer.predict(model, x[i : i + batch_size],
                           None if y is None else y[i : i + batch_size], samples)
             for i in range(0, x.shape[0], batch_size)]
    if len(parts) == 1:
        return parts[0]

    def cat(name: str, dim: int):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values, dim)

    return infer.Prediction(outputs=cat("outputs", 1), mean=cat("mean", 0),
                            probs=cat("probs", 1), variance=cat("variance", 0),
                            log_lik=cat("log_lik", 1),
                            pointwise_log_lik=cat("pointwise_log_lik", 0))


def ood_inputs(x: torch.Tensor, names: list[str], seed: int) -> dict[str, torch.Tensor]:
    """The OOD sets ``names`` (of :data:`OOD_SETS`) built from test images ``x``, either
    flat ``(batch, side * side)`` or ``(batch, channels, height, width)``."""
    lo, hi = float(x.min()), float(x.max())
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        if name == "noise":
            out[name] = (lo + (hi - lo) * torch.rand(x.shape, generator=g)).to(x)
        elif name == "inverted":
            out[name] = lo + hi - x
        else:
            if x.ndim == 2:
                side = math.isqrt(x.shape[1])
                images = x.reshape(len(x), side, side)
                out[name] = torch.rot90(images, 1, (1, 2)).reshape(x.shape)
            else:
                out[name] = torch.rot90(x, 1, (-2, -1))
    return out


def _classification_figures(pred: infer.Prediction, y: torch.Tensor) -> dict[str, float]:
    figures = metrics.classification_metrics(pred.mean, y)
    u = diagnostics.classification_uncertainty(pred.probs)
    for key in ("predictive_entropy", "expected_entropy", "mutual_information",
                "variation_ratio"):
        figures[f"mean_{key}"] = float(u[key].mean())
    return figures


def _regression_figures(model: infer.CGModel, pred: infer.Prediction, y: torch.Tensor
                        ) -> dict[str, float]:
    scale = model.likelihood.scale.detach()
    # The NLL of the predictive mixture, as `pyrocg evaluate` reports it.
    figures = {"rmse": float(metrics.rmse(pred.mean, y)),
               "nll": float(-pred.pointwise_log_lik.mean())}
    lo, hi = diagnostics.predictive_interval(pred.outputs, scale, level=0.9)
    figures["coverage_90"] = float(diagnostics.interval_coverage(lo, hi, y))
    u = diagnostics.regression_uncertainty(pred.outputs, scale)
    figures["mean_noise_variance"] = float(u["noise"].mean())
    figures["mean_model_variance"] = float(u["model"].mean())
    return figures


def _print_figures(figures: dict[str, float], ood: dict[str, dict[str, dict[str, float]]]
                   ) -> None:
    width = max(len(k) for k in figures)
    print(f"{'figure'.ljust(width)}  value")
    print(f"{'-' * width}  ------")
    for k, v in figures.items():
        print(f"{k.ljust(width)}  {v:.4f}")
    if ood:
        scores = list(next(iter(ood.values())))
        w = max(len("OOD set"), *(len(k) for k in ood))
        cols = [max(len(s), len("0.000 (0.00)")) for s in scores]
        print()
        print("AUROC (FPR at 95% TPR) of each OOD score, OOD = positive")
        print("  ".join(["OOD set".ljust(w), *(s.ljust(c) for s, c in zip(scores, cols,
                                                                          strict=True))]))
        print("  ".join(["-" * w, *("-" * c for c in cols)]))
        for name, res in ood.items():
            cells = [f"{res[s]['auroc']:.3f} ({res[s]['fpr95']:.2f})".ljust(c)
                     for s, c in zip(scores, cols, strict=True)]
            print("  ".join([name.ljust(w), *cells]))


# --------------------------------------------------------------------------- the command


def cmd_diagnose(args) -> int:
    device = check_device_flag(args.device)
    check_samples(args.samples)
    seed = None if args.seed is None else check_seed(args.seed)
    ood_names = list(dict.fromkeys(args.ood or []))  # in order, once each
    ck = check_input_file("--checkpoint", args.checkpoint, "checkpoint file")
    out = check_output_file("--json", args.json)
    outs = check_diagnostic_outputs(args)
    check_distinct({"--json": out, **outs}, {"--checkpoint": ck})
    state, spec, data, model = load_checkpoint_model(ck, device)
    if ood_names and spec["dataset"] not in IMAGE_DATASETS:
        raise UsageError(f"--ood applies only to image data sets ({', '.join(IMAGE_DATASETS)}); "
                         f"the run in {ck} is on --dataset {spec['dataset']}")
    classifier = data.task == "classification"
    if not classifier and args.plots is not None:
        raise UsageError(f"--plots: the diagnostic figures are for classifiers; the run in {ck} "
                         "is a regression (use --arviz and ArviZ's plots)")
    if seed is not None:
        pyro.set_rng_seed(seed)  # the prediction's draws
    x, y = data.test.x, data.test.y
    pred = predict_batched(model, x, y, args.samples)
    passes = pred.outputs.shape[0]
    figures = (_classification_figures(pred, y) if classifier
               else _regression_figures(model, pred, y))
    ood_preds = {k: predict_batched(model, v, None, args.samples)
                 for k, v in ood_inputs(x, ood_names, 0 if seed is None else seed).items()}
    s_in = diagnostics.ood_scores(pred.probs, pred.outputs) if ood_preds else {}
    ood = {k: diagnostics.ood_metrics(s_in, diagnostics.ood_scores(p.probs, p.outputs))
           for k, p in ood_preds.items()}
    name = spec["mode"]
    print(f"{name} {spec['model']} on {data.name} (epoch {state.get('epoch')}): "
          f"{len(y)} test data, {passes} pass{'es' if passes > 1 else ''}")
    _print_figures(figures, ood)
    idata = None
    if args.arviz is not None or (args.plots is not None and model.mode.stochastic_prediction):
        idata = inference_data(model, data, args.samples)
    write_arviz(idata, outs["--arviz"])
    # ArviZ's PPC / LOO-PIT of one repeated deterministic pass say nothing: left out.
    paths = write_plots(outs["--plots"], {name: pred}, y,
                        idata={name: idata} if model.mode.stochastic_prediction and idata
                        else None,
                        ood={name: ood_preds} if ood_preds else None)
    files = [str(p) for p in paths] + ([str(outs["--arviz"])] if outs["--arviz"] else [])
    write_json(out, {"dataset": data.name, "spec": spec, "epoch": state.get("epoch"),
                     "samples": passes, "seed": seed, "test": figures, "ood": ood,
                     "files": files})
    return 0
