"""``pyrocg demo`` (an mlp on digits in every mode; ``--plots`` writes the diagnostic figures
of every mode, ``--arviz`` the InferenceData of the MC-dropout run) and ``pyrocg demo-crf``."""

from __future__ import annotations

import time
from collections import OrderedDict

import pyro
import torch

from .. import infer, layers, models, modes, structured, tasks
from ..data import load_dataset
from .checks import (
    check_device_flag,
    check_distinct,
    check_epochs,
    check_output_file,
    check_samples,
    check_seed,
)
from .commands import build_model, describe_rates, mode_for, write_json
from .diagnose import check_diagnostic_outputs, inference_data, write_arviz, write_plots

__all__ = ["cmd_demo", "cmd_demo_crf", "CRF_TASKS"]


def _print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _common(args) -> tuple[torch.device, int]:
    device = check_device_flag(args.device)
    seed = 0 if args.seed is None else check_seed(args.seed)
    check_samples(args.samples)
    check_epochs(args.epochs)
    return device, seed


def _demo_modes(learned: bool = False) -> list[tuple[modes.Mode, float]]:
    """The demo's modes and Adam learning rates (the configuration of
    benchmarks/accuracy.py, see benchmarks/RESULTS.md); ``learned`` adds the modes that learn
    their rates (PCFF from 0.3, dropout from the network's p = 0.3)."""
    bayes = modes.BayesianWeights(prior=infer.GaussianPrior(1.0, biases=True))
    chosen = [(modes.FeedForward(), 1e-3), (modes.PCFF(0.3), 1e-3), (modes.Dropout(), 1e-3),
              (modes.MCDropout(), 1e-3), (bayes, 1e-2)]
    if learned:
        chosen += [(modes.LearnedPCFF(init=0.3), 1e-3), (modes.LearnedDropout(), 1e-3)]
    return chosen


def cmd_demo(args) -> int:
    device, seed = _common(args)
    out = check_output_file("--json", args.json)
    outs = check_diagnostic_outputs(args)
    check_distinct({"--json": out, **outs}, {})
    print(f"pyrocg demo: an mlp on scikit-learn digits in every mode ({device}, seed {seed})")
    data = load_dataset("digits", device=device, seed=seed)
    print(data)
    rows, results, predictions, idata = [], {}, {}, {}
    for mode, lr in _demo_modes(getattr(args, "learned", False)):
        name = mode.name
        spec = {"dataset": "digits", "model": "mlp", "hidden": [512, 512], "seed": seed,
                "p": 0.3}
        pyro.set_rng_seed(seed)  # initial weights depend on the seed only
        model = build_model(spec, data, mode).to(device)
        # Adam; the learning rate drops 10x for the last quarter of the epochs.
        milestones = (args.epochs - max(1, args.epochs // 4),) if args.epochs > 1 else ()
        config = infer.TrainConfig(epochs=args.epochs, batch_size=64, lr=lr, seed=seed,
                                   milestones=milestones,
                                   eval_samples=min(args.samples, 10), progress=not args.quiet,
                                   log_epochs=False)
        t0 = time.perf_counter()
        infer.fit(model, data, config)
        seconds = time.perf_counter() - t0
        res = infer.evaluate(model, data.test.x, data.test.y, args.samples)
        res["seconds"] = seconds
        results[name] = {k: res[k] for k in ("accuracy", "nll", "ece", "brier", "seconds")}
        rows.append({"mode": name, **results[name]})
        predictions[name] = infer.predict(model, data.test.x, data.test.y, args.samples)
        print(f"  {name:12s} accuracy={res['accuracy']:.4f} nll={res['nll']:.4f} "
              f"ece={res['ece']:.4f} ({seconds:.1f}s)")
        if isinstance(model.guide, modes.LearnedRates):
            results[name]["rates"] = describe_rates(model)
            print(f"  {'':12s} learned rates: {results[name]['rates']}")
        if isinstance(mode, modes.MCDropout) and (args.arviz or args.plots):
            idata[name] = inference_data(model, data, args.samples)
    print()
    _print_table(rows, ["mode", "accuracy", "nll", "ece", "brier", "seconds"])
    write_json(out, {"dataset": "digits", "results": results})
    if outs["--arviz"] is not None:
        write_arviz(next(iter(idata.values())), outs["--arviz"])
    write_plots(outs["--plots"], predictions, data.test.y, idata=idata)
    return 0


def _crf_task(task: str, crf: bool, n: int):
    """(network, likelihood) of one demonstration, with or without pairwise potentials."""
    if task == "sequence":
        net = models.cnn(1, 10, image_size=8, channels=(16, 32), hidden=64)
        layer = layers.ChainCRF(10, start_end=crf)
        if not crf:  # zero, frozen transitions: exactly independent per-token softmaxes
            layer.transitions.requires_grad_(False)
        return net, infer.ChainCRFLikelihood(layer, n, token_dims=3)
    if task == "multilabel":
        net = models.mlp(64, [128], len(tasks.ATTRIBUTES))
        iters = 5 if crf else 0  # 0 mean-field updates: independent sigmoids
        return net, infer.MultiLabelCRFLikelihood(structured.MultiLabelMeanFieldCRF(
            len(tasks.ATTRIBUTES), num_iters=iters), n)
    net = layers.Sequential(OrderedDict(
        conv1=layers.Conv2d(1, 16, 3, padding=1), out=layers.Conv2d(16, 2, 1, node=None)))
    return net, infer.GridCRFLikelihood(structured.GridMeanFieldCRF(
        2, num_iters=5 if crf else 0, neighbourhood=4), n)


CRF_TASKS = {
    "sequence": (tasks.digit_sequences, "CNN per token + linear-chain CRF vs independent softmax"),
    "multilabel": (tasks.digit_attributes, "MLP + mean-field label-correlation CRF vs sigmoids"),
    "grid": (tasks.digit_strokes, "conv net + mean-field grid CRF (Potts) vs per-pixel softmax"),
}


def cmd_demo_crf(args) -> int:
    device, seed = _common(args)
    out = check_output_file("--json", args.json)
    names = list(CRF_TASKS) if args.task == "all" else [args.task]
    rows, results = [], {}
    for task in names:
        make, title = CRF_TASKS[task]
        data = make(seed=seed, device=device)
        print(f"{task}: {title}\n  {data}")
        results[task] = {}
        for variant in ("independent", "crf"):
            torch.manual_seed(seed)
            net, lik = _crf_task(task, variant == "crf", len(data.train))
            model = infer.CGModel(net, lik, mode_for(args.mode, rate=0.2)).to(device)
            config = infer.TrainConfig(epochs=args.epochs, batch_size=32, lr=3e-3, seed=seed,
                                       eval_samples=min(args.samples, 10),
                                       progress=not args.quiet, log_epochs=False)
            t0 = time.perf_counter()
            infer.fit(model, data, config)
            res = infer.evaluate(model, data.test.x, data.test.y, args.samples)
            res["seconds"] = time.perf_counter() - t0
            results[task][variant] = res
            rows.append({"task": task, "model": variant, **res})
            print(f"  {variant:12s} " + ", ".join(f"{k}={v:.4f}" for k, v in res.items()))
    print()
    cols = ["task", "model", "token_accuracy", "sequence_accuracy", "label_accuracy",
            "exact_match", "pixel_accuracy", "nll", "seconds"]
    _print_table(rows, [c for c in cols if any(c in r for r in rows)])
    write_json(out, {"results": results})
    return 0
