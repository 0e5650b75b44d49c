"""The ``pyrocg`` command: ``demo``, ``train`` and ``evaluate`` (public API only)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pyro
import torch

from . import infer, layers, models, modes, structured, tasks
from .data import load_dataset

__all__ = ["main", "build_mode", "build_model"]

MODEL_NAMES = ("mlp", "cnn", "resnet20")
MODE_NAMES = tuple(modes.MODES)


def _mode(name: str, local_reparam: bool = False, **defaults) -> modes.Mode:
    """The mode ``name`` with those of the CLI's ``defaults`` (``rate``, ``prior``) that it
    takes; ``--local-reparam`` is passed on only when given, so a mode without it refuses."""
    accepted = modes.mode_parameters(name)
    params = {k: v for k, v in defaults.items() if k in accepted}
    if local_reparam:
        params["local_reparam"] = True
    return modes.get_mode(name, **params)


def build_mode(spec: dict) -> modes.Mode:
    """The mode of a CLI ``spec`` (its ``mode`` name, ``rate``, ``local_reparam``); random
    weights get the prior ``N(0, prior_scale^2)`` on weights and biases."""
    prior = infer.GaussianPrior(spec.get("prior_scale", 1.0), biases=True)
    return _mode(spec["mode"], spec.get("local_reparam", False), rate=spec["rate"], prior=prior)


def build_model(spec: dict, data, mode: modes.Mode | None = None) -> infer.CGModel:
    """Build the :class:`~pyrocg.infer.CGModel` described by a CLI ``spec`` for ``data``.

    :param mode: the mode (default: :func:`build_mode` of ``spec``); the network gets
        dropout nodes of probability ``spec["p"]`` when the mode uses them.
    """
    mode = build_mode(spec) if mode is None else mode
    dropout = spec["p"] if mode.uses_dropout else 0.0
    shape = data.input_shape
    if spec["model"] == "mlp":
        net = models.mlp(data.input_dim, spec.get("hidden", [256, 256]), data.num_classes or 1,
                         dropout=dropout)
    elif spec["model"] == "cnn":
        if len(shape) != 3:
            raise ValueError(f"--model cnn needs image inputs (C, H, W), got input shape {shape}")
        net = models.cnn(shape[0], data.num_classes, shape[-1], dropout=dropout)
    else:
        if len(shape) != 3:
            raise ValueError(f"--model resnet20 needs image inputs (C, H, W), got {shape}")
        net = models.resnet20(shape[0], data.num_classes)
    n = len(data.train)
    lik = (infer.Categorical(n) if data.task == "classification" else infer.Gaussian(n))
    wd = spec.get("weight_decay", 0.0)
    prior = infer.GaussianPrior.from_weight_decay(wd, n) if wd > 0 else None
    return infer.CGModel(net, lik, mode, prior=prior)


def _reshape_for(spec: dict, data):
    # An mlp takes flat inputs, convnets take images: load accordingly.
    return {"flatten": spec["model"] == "mlp"} if spec["dataset"] in ("digits", "fashion-mnist") else {}


def _load(spec: dict, device):
    kwargs = dict(device=device, seed=spec["seed"], **_reshape_for(spec, None))
    if spec["dataset"] == "fashion-mnist":
        if spec.get("data_dir"):
            kwargs["data_dir"] = spec["data_dir"]
        if spec.get("limit"):
            kwargs["limit"] = spec["limit"]
    if spec["dataset"] == "table":
        if not spec.get("table"):
            raise ValueError("--dataset table needs --table PATH and --target COLUMN")
        kwargs = dict(path=spec["table"], target=spec["target"], device=device, seed=spec["seed"])
    return load_dataset(spec["dataset"], **kwargs)


def _print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")


def _config(args) -> infer.TrainConfig:
    return infer.TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        milestones=tuple(args.milestones), seed=args.seed, eval_samples=args.samples,
        progress=not args.quiet,
    )


def cmd_train(args) -> int:
    spec = {k: getattr(args, k) for k in (
        "dataset", "model", "mode", "rate", "p", "seed", "data_dir", "limit", "table", "target",
        "weight_decay", "local_reparam")}
    device = torch.device(args.device)
    if args.distributed:
        device = infer.distributed.init_from_env(device)
    data = _load(spec, device)
    pyro.set_rng_seed(spec["seed"])  # initial weights depend on the seed only
    model = build_model(spec, data).to(device)
    t0 = time.perf_counter()
    history = infer.fit(model, data, _config(args), checkpoint=args.checkpoint, resume=args.resume)
    seconds = time.perf_counter() - t0
    if not infer.distributed.is_main():
        return 0  # rank 0 evaluates, reports and writes files
    if args.checkpoint:
        state = infer.load_checkpoint(args.checkpoint)
        state["spec"] = spec
        infer.save_checkpoint(args.checkpoint, state)
    result = infer.evaluate(model, data.test.x, data.test.y, args.samples)
    result["seconds"] = seconds
    print(f"{spec['mode']} {spec['model']} on {data.name}: test " +
          ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    _write_json(args.json, {"dataset": data.name, "spec": spec, "history": history,
                            "test": result})
    return 0


def cmd_evaluate(args) -> int:
    state = infer.load_checkpoint(args.checkpoint, map_location=args.device)
    if "spec" not in state:
        raise ValueError(f"{args.checkpoint} has no model spec: was it written by `pyrocg train`?")
    spec = state["spec"]
    device = torch.device(args.device)
    data = _load(spec, device)
    pyro.set_rng_seed(spec["seed"])  # initial weights depend on the seed only
    model = build_model(spec, data).to(device)
    model.initialize(data.train.x[:2], data.train.y[:2])
    model.load_state_dict(state["model"])
    result = infer.evaluate(model, data.test.x, data.test.y, args.samples)
    print(f"{spec['mode']} {spec['model']} on {data.name} (epoch {state['epoch']}): test " +
          ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    _write_json(args.json, {"dataset": data.name, "spec": spec, "test": result})
    return 0


def _demo_modes() -> list[tuple[modes.Mode, float]]:
    """The demo's modes and Adam learning rates (the configuration of
    benchmarks/accuracy.py, see benchmarks/RESULTS.md)."""
    bayes = modes.BayesianWeights(prior=infer.GaussianPrior(1.0, biases=True))
    return [(modes.FeedForward(), 1e-3), (modes.PCFF(0.3), 1e-3), (modes.Dropout(), 1e-3),
            (modes.MCDropout(), 1e-3), (bayes, 1e-2)]


def cmd_demo(args) -> int:
    device = torch.device(args.device)
    print(f"pyrocg demo: an mlp on scikit-learn digits in every mode ({device}, seed {args.seed})")
    data = load_dataset("digits", device=device, seed=args.seed)
    print(data)
    rows, results, predictions = [], {}, {}
    for mode, lr in _demo_modes():
        name = mode.name
        spec = {"dataset": "digits", "model": "mlp", "hidden": [512, 512], "seed": args.seed,
                "p": 0.3}
        pyro.set_rng_seed(args.seed)  # initial weights depend on the seed only
        model = build_model(spec, data, mode).to(device)
        # Adam; the learning rate drops 10x for the last quarter of the epochs.
        milestones = (args.epochs - max(1, args.epochs // 4),) if args.epochs > 1 else ()
        config = infer.TrainConfig(epochs=args.epochs, batch_size=64, lr=lr, seed=args.seed,
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
        predictions[name] = infer.predict(model, data.test.x, data.test.y, args.samples).mean
        print(f"  {name:12s} accuracy={res['accuracy']:.4f} nll={res['nll']:.4f} "
              f"ece={res['ece']:.4f} ({seconds:.1f}s)")
    print()
    _print_table(rows, ["mode", "accuracy", "nll", "ece", "brier", "seconds"])
    _write_json(args.json, {"dataset": "digits", "results": results})
    if args.plots:
        from .diagnostics import plot_reliability

        path = plot_reliability(predictions, data.test.y, Path(args.plots) / "reliability.png")
        print(f"wrote {path}")
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
    device = torch.device(args.device)
    names = list(CRF_TASKS) if args.task == "all" else [args.task]
    rows, results = [], {}
    for task in names:
        make, title = CRF_TASKS[task]
        data = make(seed=args.seed, device=device)
        print(f"{task}: {title}\n  {data}")
        results[task] = {}
        for variant in ("independent", "crf"):
            torch.manual_seed(args.seed)
            net, lik = _crf_task(task, variant == "crf", len(data.train))
            model = infer.CGModel(net, lik, _mode(args.mode, rate=0.2)).to(device)
            config = infer.TrainConfig(epochs=args.epochs, batch_size=32, lr=3e-3, seed=args.seed,
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
    _write_json(args.json, {"results": results})
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=100,
                   help="stochastic passes per prediction (stochastic modes)")
    p.add_argument("--json", default=None, help="write results as JSON to this path")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyrocg", description="Neural networks as chain graphs.")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train an mlp on digits in every mode, compare")
    _add_common(d)
    d.add_argument("--epochs", type=int, default=40)
    d.add_argument("--plots", default=None, help="write plots into this directory")
    c = sub.add_parser("demo-crf", help="CRF output layers vs independent outputs on digit tasks")
    _add_common(c)
    c.add_argument("--task", choices=("all", *CRF_TASKS), default="all")
    c.add_argument("--mode", choices=MODE_NAMES, default="feedforward",
                   help="mode of the layers beneath the CRF")
    c.add_argument("--epochs", type=int, default=15)
    t = sub.add_parser("train", help="train one model in one mode")
    _add_common(t)
    t.add_argument("--dataset", choices=("digits", "fashion-mnist", "table"), default="digits")
    t.add_argument("--model", choices=MODEL_NAMES, default="mlp")
    t.add_argument("--mode", choices=MODE_NAMES, default="feedforward")
    t.add_argument("--rate", type=float, default=0.3, help="PCFF sampling rate in [0, 1]")
    t.add_argument("--p", type=float, default=0.2, help="dropout probability in [0, 1)")
    t.add_argument("--local-reparam", action="store_true",
                   help="--mode bayes: sample energies per datum instead of weights per batch "
                   "(other modes refuse it)")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--milestones", type=int, nargs="*", default=[])
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory")
    t.add_argument("--limit", type=int, default=None, help="use only N training images")
    t.add_argument("--table", default=None, help="CSV/whitespace table (--dataset table)")
    t.add_argument("--target", default=None, help="target column name or index")
    t.add_argument("--checkpoint", default=None, help="checkpoint file (written every epoch)")
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes started by torchrun (gloo/NCCL)")
    e = sub.add_parser("evaluate", help="evaluate a checkpoint written by `pyrocg train`")
    _add_common(e)
    e.add_argument("--checkpoint", required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if getattr(args, "rate", None) is not None and not 0.0 <= args.rate <= 1.0:
        print(f"pyrocg: error: --rate must be in [0, 1], got {args.rate}", file=sys.stderr)
        return 2
    if getattr(args, "p", None) is not None and not 0.0 <= args.p < 1.0:
        print(f"pyrocg: error: --p must be in [0, 1), got {args.p}", file=sys.stderr)
        return 2
    try:
        commands = {"demo": cmd_demo, "demo-crf": cmd_demo_crf, "train": cmd_train,
                    "evaluate": cmd_evaluate}
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, infer.TrainingDiverged) as err:
        print(f"pyrocg: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
