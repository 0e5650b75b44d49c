"""``pyrocg train`` and ``pyrocg evaluate``: a model spec, checked, trained, checkpointed.

Order of work in ``train``: check every argument and path (:mod:`pyrocg.cli.checks`), take
the checkpoint's lock, read the checkpoint's spec when resuming and compare, then load the
data, build the model and train. Nothing slow runs before the last check.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from .. import infer, models, modes
from ..data import load_dataset
from ..infer.checkpoint import CheckpointError, CheckpointLock
from .checks import (
    FASHION_HINT,
    SPEC_KEYS,
    UsageError,
    check_device_flag,
    check_distinct,
    check_given,
    check_input_dir,
    check_input_file,
    check_output_file,
    check_samples,
    check_saved_spec,
    check_seed,
    resolve_train_spec,
    resume_differences,
)

__all__ = ["build_mode", "build_model", "cmd_train", "cmd_evaluate", "load_checkpoint_model",
           "describe_rates",
           "note", "write_json"]


def note(message: str) -> None:
    """One line on stderr that is not an error."""
    print(f"pyrocg: {message}", file=sys.stderr)


def mode_for(name: str, local_reparam: bool = False, **defaults: Any) -> modes.Mode:
    """The mode ``name`` with those of ``defaults`` (``rate``, ``prior``) that it takes;
    ``local_reparam`` is passed on only when true, so a mode without it refuses."""
    accepted = modes.mode_parameters(name)
    params = {k: v for k, v in defaults.items() if k in accepted and v is not None}
    if local_reparam:
        params["local_reparam"] = True
    return modes.get_mode(name, **params)


def describe_rates(model: infer.CGModel) -> dict[str, float | list[float]]:
    """The learned rates of a model in a learned mode, per site, as plain numbers (a list for
    per-unit rates): PCFF sampling rates, dropout probabilities, Gaussian-dropout variances."""
    return {k: v.tolist() for k, v in modes.learned_rates(model).items()}


def build_mode(spec: dict) -> modes.Mode:
    """The mode of a CLI ``spec`` (its ``mode`` name, ``rate``, ``local_reparam``); random
    weights get the prior ``N(0, prior_scale^2)`` on weights and biases."""
    prior = infer.GaussianPrior(spec.get("prior_scale", 1.0), biases=True)
    return mode_for(spec["mode"], spec.get("local_reparam", False), rate=spec.get("rate"),
                    prior=prior)


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
    wd = spec.get("weight_decay") or 0.0
    prior = infer.GaussianPrior.from_weight_decay(wd, n) if wd > 0 else None
    return infer.CGModel(net, lik, mode, prior=prior)


def load_data(spec: dict, device: torch.device):
    """The data set of ``spec`` on ``device`` (an mlp gets flat images, convnets images)."""
    kwargs: dict[str, Any] = dict(device=device, seed=spec["seed"])
    if spec["dataset"] in ("digits", "fashion-mnist"):
        kwargs["flatten"] = spec["model"] == "mlp"
    if spec["dataset"] == "fashion-mnist":
        if spec.get("data_dir"):
            kwargs["data_dir"] = spec["data_dir"]
        if spec.get("limit"):
            kwargs["limit"] = spec["limit"]
    if spec["dataset"] == "table":
        kwargs = dict(path=spec["table"], target=spec["target"], device=device, seed=spec["seed"])
    return load_dataset(spec["dataset"], **kwargs)


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")


def _spec_of(state: dict, path: str) -> dict:
    """The checked model spec a checkpoint carries (in ``meta``; older ones at the top)."""
    meta = state.get("meta")
    spec = meta.get("spec") if isinstance(meta, dict) else None
    return check_saved_spec(spec if spec is not None else state.get("spec"), path)


def _check_train_inputs(spec: dict, given: dict) -> None:
    """The data set's input paths exist; they are stored absolute (evaluate works anywhere)."""
    if spec["table"] is not None:
        spec["table"] = str(check_input_file("--table", spec["table"], "table file").resolve())
    if spec["data_dir"] is not None:
        spec["data_dir"] = str(check_input_dir("--data-dir", spec["data_dir"],
                                               FASHION_HINT).resolve())
    for key in ("table", "data_dir"):
        if given.get(key) is not None:
            given[key] = spec[key]


def _resume_spec(ck: Path, given: dict[str, Any]) -> tuple[dict, Any]:
    """The spec of the run ``ck`` continues; flags given must not change it (but --epochs)."""
    state = infer.load_checkpoint(ck, map_location="cpu")
    saved = _spec_of(state, str(ck))
    done = state.get("epoch")
    if not isinstance(done, int) or isinstance(done, bool) or done < 0:
        raise CheckpointError(f"{ck}: no valid 'epoch' entry; it was not written by fit")
    for key in ("table", "data_dir"):  # compare paths as stored: absolute
        if given.get(key) is not None:
            given[key] = str(Path(given[key]).resolve())
    spec = resolve_train_spec(given, saved)
    diffs = resume_differences(saved, spec, given)
    if diffs:
        raise UsageError(
            f"--resume: the arguments differ from the run in {ck}: {'; '.join(diffs)}. Leave "
            "these flags out to continue that run (a changed learning rate, schedule or batch "
            "size is refused: the optimiser and its schedule are restored from the checkpoint), "
            "or start a new run with another --checkpoint")
    if spec["epochs"] < done:
        raise UsageError(f"--epochs {spec['epochs']}: the run in {ck} has already trained {done} "
                         f"epochs; give --epochs {done} or more")
    if spec["epochs"] != saved["epochs"]:
        note(f"resuming {ck} after epoch {done}: training to --epochs {spec['epochs']} "
             f"(its run was started with --epochs {saved['epochs']})")
    return spec, state["model"]


def check_weights(model: infer.CGModel, weights: Any, ck: Path, spec: dict) -> None:
    """The checkpoint's weights fit ``model`` (built from its spec): a summary, not a dump."""
    own = model.state_dict()
    if not isinstance(weights, dict):
        raise CheckpointError(f"{ck}: has no 'model' weights")
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shaped = [k for k in own if k in weights and (not isinstance(weights[k], torch.Tensor)
                                                 or weights[k].shape != own[k].shape)]
    parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in (
        (missing, "missing"), (unexpected, "unexpected"), (shaped, "of another shape")) if keys]
    if parts:
        raise CheckpointError(
            f"{ck}: its weights do not fit the model its spec describes (--model {spec['model']} "
            f"--mode {spec['mode']} on {spec['dataset']}): {'; '.join(parts)} entries; the file "
            "was altered or mixes two runs")


def cmd_train(args) -> int:
    given = {k: getattr(args, k) for k in SPEC_KEYS}
    device = check_device_flag(args.device)
    check_samples(args.samples)
    if args.resume:
        if args.checkpoint is None:
            raise UsageError("--resume needs --checkpoint PATH (the checkpoint to continue)")
        check_given(given)  # applicability is checked against the checkpoint's run
        spec = None
    else:
        spec = resolve_train_spec(given)
        _check_train_inputs(spec, given)
    ck = check_output_file("--checkpoint", args.checkpoint)
    out = check_output_file("--json", args.json)
    if args.resume and not ck.is_file():
        raise UsageError(f"--resume: no checkpoint at {ck} to continue (--checkpoint)")
    check_distinct({"--checkpoint": ck, "--json": out},
                   {"--table": Path(spec["table"]) if spec and spec["table"] else None})
    if args.distributed:
        try:
            device = infer.distributed.init_from_env(device)
        except ValueError as err:
            raise UsageError(str(err)) from None
    main_rank = infer.distributed.is_main()
    # Taken before anything slow: a second run on the same path fails here, at once.
    lock = CheckpointLock(ck).acquire() if ck is not None and main_rank else None
    try:
        if args.resume:
            spec, weights = _resume_spec(ck, given)
            _check_train_inputs(spec, given)
            check_distinct({"--checkpoint": ck, "--json": out},
                           {"--table": Path(spec["table"]) if spec["table"] else None})
        data = load_data(spec, device)
        pyro.set_rng_seed(spec["seed"])  # initial weights depend on the seed only
        model = build_model(spec, data).to(device)
        if args.resume:
            model.initialize(data.train.x[: spec["batch_size"]], data.train.y[: spec["batch_size"]])
            check_weights(model, weights, ck, spec)
        config = infer.TrainConfig(
            epochs=spec["epochs"], batch_size=spec["batch_size"], optimizer=spec["optimizer"],
            lr=spec["lr"], milestones=tuple(spec["milestones"]), seed=spec["seed"],
            eval_samples=args.samples, progress=not args.quiet)
        t0 = time.perf_counter()
        history = infer.fit(model, data, config, checkpoint=ck, resume=args.resume,
                            meta={"spec": spec}, lock=lock)
        seconds = time.perf_counter() - t0
    finally:
        if lock is not None:
            lock.release()
    if not main_rank:
        return 0  # rank 0 evaluates, reports and writes files
    result = infer.evaluate(model, data.test.x, data.test.y, args.samples)
    result["seconds"] = seconds
    print(f"{spec['mode']} {spec['model']} on {data.name}: test " +
          ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    if isinstance(model.guide, modes.LearnedRates):
        result["rates"] = describe_rates(model)
        print(f"learned rates: {result['rates']}")
    write_json(out, {"dataset": data.name, "spec": spec, "history": history, "test": result})
    return 0


def load_checkpoint_model(ck: Path, device: torch.device
                          ) -> tuple[dict, dict, Any, infer.CGModel]:
    """``(state, spec, data, model)`` of a checkpoint written by ``pyrocg train``: the model
    its spec describes, built on its data set with the run's seed, with the saved weights.
    Torch's RNG is left as after building the model with the run's seed."""
    state = infer.load_checkpoint(ck, map_location=device)
    spec = _spec_of(state, str(ck))
    data = load_data(spec, device)
    pyro.set_rng_seed(spec["seed"])  # initial weights depend on the seed only
    model = build_model(spec, data).to(device)
    model.initialize(data.train.x[:2], data.train.y[:2])
    check_weights(model, state.get("model"), ck, spec)
    model.load_state_dict(state["model"])
    return state, spec, data, model


def cmd_evaluate(args) -> int:
    device = check_device_flag(args.device)
    check_samples(args.samples)
    seed = None if args.seed is None else check_seed(args.seed)
    ck = check_input_file("--checkpoint", args.checkpoint, "checkpoint file")
    out = check_output_file("--json", args.json)
    check_distinct({"--json": out}, {"--checkpoint": ck})
    state, spec, data, model = load_checkpoint_model(ck, device)
    if seed is not None:
        pyro.set_rng_seed(seed)  # the prediction's draws
    result = infer.evaluate(model, data.test.x, data.test.y, args.samples)
    print(f"{spec['mode']} {spec['model']} on {data.name} (epoch {state.get('epoch')}): test " +
          ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    write_json(out, {"dataset": data.name, "spec": spec, "epoch": state.get("epoch"),
                     "test": result})
    return 0
