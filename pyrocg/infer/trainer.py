"""The training loop: mini-batch ELBO steps, schedules, validation, checkpoints, resume."""

from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from .. import metrics
from ..data import DataSplits, batches
from ..validation import check_finite
from . import distributed as ddp
from .checkpoint import (
    CheckpointError,
    CheckpointLock,
    check_checkpoint_payload,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .model import CGModel
from .predictive import predict

__all__ = ["TrainConfig", "TrainingDiverged", "fit", "evaluate"]

OPTIMIZERS = ("adam", "sgd")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept.

    >>> from pyrocg import infer
    >>> issubclass(infer.TrainingDiverged, FloatingPointError)
    True
    """


@dataclass
class TrainConfig:
    """Settings of :func:`fit`.

    :ivar optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``).
    :ivar milestones: epochs at which the learning rate is multiplied by ``gamma``.
    :ivar eval_samples: stochastic passes per validation prediction.
    :ivar progress: show a progress bar over each epoch's mini-batches.
    :ivar log_epochs: print a summary line after each epoch (with ``progress``).

    >>> from pyrocg import infer
    >>> infer.TrainConfig(epochs=20, optimizer="sgd", lr=0.1, milestones=(10, 15)).gamma
    0.1
    >>> infer.TrainConfig(lr=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number > 0, got -1.0
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    seed: int = 0
    eval_samples: int = 20
    progress: bool = True
    log_epochs: bool = True

    def __post_init__(self):
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "eval_samples"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {self.seed!r}")
        for name, low, high in (("lr", 0.0, math.inf), ("momentum", None, 1.0),
                                ("gamma", 0.0, math.inf)):
            v = getattr(self, name)
            ok = (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                  and (v > low if low is not None else v >= 0.0) and v < high)
            if not ok:
                bounds = {"lr": "> 0", "momentum": "in [0, 1)", "gamma": "> 0"}[name]
                raise ValueError(f"{name} must be a finite number {bounds}, got {v!r}")
        ms = self.milestones
        if isinstance(ms, (str, bytes)) or not hasattr(ms, "__iter__"):
            raise ValueError(f"milestones must be a sequence of epochs, got {ms!r}")
        ms = tuple(ms)
        increasing = all(a < b for a, b in zip(ms, ms[1:], strict=False))
        if not (increasing and all(_is_int(m) and m > 0 for m in ms)):
            raise ValueError(f"milestones must be increasing positive int epochs, got {ms!r}")
        self.milestones = tuple(int(m) for m in ms)
        for name in ("progress", "log_epochs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)


def evaluate(model: CGModel, x: torch.Tensor, y: torch.Tensor, num_samples: int = 100,
             batch_size: int = 1000) -> dict[str, float]:
    """Accuracy, NLL, Brier and ECE (classification) or RMSE and Gaussian NLL (regression).

    :raises ValueError: if ``x`` is empty, ``x`` and ``y`` differ in rows, or (with
        :mod:`pyrocg.validation` on) hold NaN or infinite values.

    >>> import torch
    >>> from pyrocg import infer, models
    >>> from pyrocg.data import DataSplits, Split
    >>> x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    >>> data = DataSplits(Split(x[:32], y[:32]), Split(x[32:], y[32:]), Split(x[32:], y[32:]),
    ...                   "classification", "toy", (4,), num_classes=3)
    >>> model = infer.CGModel(models.mlp(4, [8], 3), infer.Categorical(32))
    >>> sorted(infer.evaluate(model, data.test.x, data.test.y))
    ['accuracy', 'brier', 'ece', 'nll']
    """
    _check_eval_inputs(model, x, y, num_samples, batch_size)
    parts = [predict(model, x[i : i + batch_size], y[i : i + batch_size], num_samples)
             for i in range(0, x.shape[0], batch_size)]
    ll = torch.cat([p.pointwise_log_lik for p in parts])
    lik = model.likelihood
    if hasattr(lik, "metrics"):  # structured outputs define their own metrics
        output = torch.cat([p.outputs.mean(0) for p in parts])
        mean = torch.cat([p.mean for p in parts])
        return {**lik.metrics(output, mean, y), "nll": float(-ll.mean())}
    if parts[0].probs is not None:
        probs = torch.cat([p.mean for p in parts])
        return {
            "accuracy": float(metrics.accuracy(probs, y)),
            "nll": float(-ll.mean()),
            "brier": float(metrics.brier(probs, y)),
            "ece": float(metrics.expected_calibration_error(probs, y)),
        }
    mean = torch.cat([p.mean for p in parts])
    return {"rmse": float(metrics.rmse(mean, y)), "nll": float(-ll.mean())}


def _check_eval_inputs(model: CGModel, x: torch.Tensor, y: torch.Tensor, num_samples: int,
                       batch_size: int) -> None:
    if not isinstance(model, CGModel):
        raise TypeError(f"model must be a pyrocg.infer.CGModel, got {type(model).__name__}")
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}): nothing to evaluate")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    for name, v in (("num_samples", num_samples), ("batch_size", batch_size)):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    check_finite(x, "x")
    check_finite(y, "y")


def _make_optimizer(model: CGModel, config: TrainConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    else:
        opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(config.milestones), config.gamma)
    return opt, sched


def fit(
    model: CGModel,
    data: DataSplits,
    config: TrainConfig | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    lock: CheckpointLock | None = None,
) -> list[dict]:
    """Train ``model`` on ``data.train``, validating on ``data.val`` after every epoch.

    :param checkpoint: file written atomically after every epoch (model, guide, optimiser,
        scheduler, RNG and shuffling state, history, ``meta``). While training, the path is
        locked (:class:`~pyrocg.infer.checkpoint.CheckpointLock`): a second run on it fails at
        once with :class:`~pyrocg.infer.checkpoint.CheckpointLockedError`.
    :param resume: continue from ``checkpoint``; the result is identical to a run that was
        never interrupted.
    :param meta: a dict of plain values (str, int, float, bool, None, lists, dicts, tensors)
        stored as ``checkpoint["meta"]`` in *every* checkpoint from epoch 1 on -- e.g. the model
        specification needed to rebuild the model -- so that the checkpoint of an interrupted
        or diverged run describes itself. On resume, ``None`` keeps the checkpoint's ``meta``.
    :param lock: a :class:`~pyrocg.infer.checkpoint.CheckpointLock` of ``checkpoint`` that the
        caller already holds (e.g. taken before loading the data, as ``pyrocg train`` does);
        ``fit`` then takes none of its own and leaves releasing it to the caller.
    :returns: the history, one dict per epoch (loss, validation metrics, seconds, lr).
    :raises TypeError: if ``data`` is not a :class:`~pyrocg.data.DataSplits` (e.g. a tuple),
        or ``meta`` holds values a checkpoint cannot.
    :raises ValueError: on an empty training split, or (with :mod:`pyrocg.validation` on, the
        default) NaN/inf features or targets in the train or validation split.
    :raises TrainingDiverged: when the loss becomes NaN/inf; the checkpoint of the last
        finished epoch is left untouched.

    >>> import torch
    >>> from pyrocg import infer, models
    >>> from pyrocg.data import DataSplits, Split
    >>> x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    >>> data = DataSplits(Split(x[:32], y[:32]), Split(x[32:], y[32:]), Split(x[32:], y[32:]),
    ...                   "classification", "toy", (4,), num_classes=3)
    >>> model = infer.CGModel(models.mlp(4, [8], 3), infer.Categorical(32))
    >>> history = infer.fit(model, data, infer.TrainConfig(epochs=2, batch_size=16, progress=False))
    >>> len(history), "loss" in history[-1]
    (2, True)
    """
    if not isinstance(model, CGModel):
        raise TypeError(f"model must be a pyrocg.infer.CGModel, got {type(model).__name__}")
    if not isinstance(data, DataSplits):
        hint = (" (wrap tensors as DataSplits(Split(x, y), Split(x_val, y_val), "
                "Split(x_test, y_test), task, name, input_shape, num_classes=...))"
                if isinstance(data, (tuple, list)) else "")
        raise TypeError(f"data must be a pyrocg.data.DataSplits, got {type(data).__name__}{hint}")
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or None, got {type(config).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or None, got {type(checkpoint).__name__}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if meta is not None:
        if not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
        check_checkpoint_payload(meta, "meta")
    if len(data.train) == 0:
        raise ValueError("the training split is empty")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    for split in ("train", "val"):
        check_finite(getattr(data, split).x, f"data.{split}.x")
        check_finite(getattr(data, split).y, f"data.{split}.y")
    if lock is not None and not (isinstance(lock, CheckpointLock) and lock.held
                                 and checkpoint is not None and lock.path == Path(checkpoint)):
        raise ValueError(f"lock must be a held CheckpointLock of checkpoint {checkpoint!r}, "
                         f"got {lock!r}")
    if checkpoint is None or ddp.rank() != 0 or lock is not None:  # rank 0 alone writes
        return _fit(model, data, config, checkpoint, resume, meta)
    with CheckpointLock(checkpoint):
        return _fit(model, data, config, checkpoint, resume, meta)


_RESUME_KEYS = ("model", "optimizer", "scheduler", "shuffle", "rng", "history", "epoch")


def _restore(path: str | Path, model: CGModel, opt: torch.optim.Optimizer, sched: Any,
             shuffle: torch.Generator, device: torch.device) -> tuple[list[dict], int, Any]:
    """Load the training state of a checkpoint; a clear error names the file if it is unfit."""
    state = load_checkpoint(path, map_location=device)
    missing = [k for k in _RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: lacks {missing} needed to resume (written by fit?)")
    history, epoch = state["history"], state["epoch"]
    if not isinstance(history, list) or not _is_int(epoch) or epoch < 0:
        raise CheckpointError(f"{path}: malformed 'history' or 'epoch' entry")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        shuffle.set_state(state["shuffle"].cpu())
        set_rng_state(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"{path}: does not match this model and configuration ({reason})") from None
    return history, epoch, state.get("meta")


def _fit(model: CGModel, data: DataSplits, config: TrainConfig, checkpoint: str | Path | None,
         resume: bool, meta: dict[str, Any] | None) -> list[dict]:
    x, y = data.train.x, data.train.y
    pyro.set_rng_seed(config.seed)
    shuffle = torch.Generator(device="cpu").manual_seed(config.seed)
    model.initialize(x[: config.batch_size], y[: config.batch_size])
    opt, sched = _make_optimizer(model, config)
    history: list[dict] = []
    start = 0
    if resume:
        history, start, saved_meta = _restore(checkpoint, model, opt, sched, shuffle, x.device)
        meta = saved_meta if meta is None else meta
    world, rank = ddp.world_size(), ddp.rank()
    if world > 1:
        # Same initial weights everywhere; every process draws the same global order and
        # takes its own equal shard of each global batch (incomplete ones are dropped).
        ddp.broadcast_module(model)
        if len(x) < config.batch_size * world:
            raise ValueError(f"{len(x)} training rows cannot fill one global batch of "
                             f"{world} x {config.batch_size}")
        if not resume:  # independent PCFF/dropout draws per process
            pyro.set_rng_seed(config.seed + 1000 * rank)
    loader = batches(x, y, config.batch_size * world, shuffle=True, generator=shuffle,
                     drop_last=world > 1)
    params = [p for p in model.parameters() if p.requires_grad]
    main = rank == 0
    model.train()
    for epoch in range(start, config.epochs):
        t0, total, seen = time.perf_counter(), 0.0, 0
        show = config.progress and main
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not show, unit="batch")
        with warnings.catch_warnings():  # once per epoch: it copies the filter list
            # Pyro warns about NaN log-densities; we stop with a clearer error below.
            warnings.filterwarnings("ignore", message="Encountered NaN")
            for step, (xb, yb) in enumerate(bar):
                if world > 1:
                    xb = xb[rank * config.batch_size : (rank + 1) * config.batch_size]
                    yb = yb[rank * config.batch_size : (rank + 1) * config.batch_size]
                loss = model.loss(xb, yb)
                value = loss.item()  # the one host sync of a step
                if not math.isfinite(value):
                    kept = f"; the checkpoint of epoch {start} at {checkpoint} is kept" if (
                        checkpoint and Path(checkpoint).exists()) else ""
                    raise TrainingDiverged(
                        f"loss became {value} at epoch {epoch + 1}, step {step + 1}{kept}. "
                        "Lower the learning rate or check the data for NaN/inf values.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1:
                    ddp.average_gradients(params)
                opt.step()
                if world > 1:
                    ddp.broadcast_module(model, buffers_only=True)
                total += value * len(yb)
                seen += len(yb)
                if show:
                    bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        sched.step()
        record = {"epoch": epoch + 1, "loss": total / seen, "lr": opt.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - t0}
        if len(data.val) and main:
            model.eval()
            record.update({f"val_{k}": v for k, v in evaluate(
                model, data.val.x, data.val.y, config.eval_samples).items()})
            model.train()
        history.append(record)
        if config.progress and config.log_epochs and main:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: {shown}")
        if checkpoint is not None and main:
            start = epoch + 1
            save_checkpoint(checkpoint, {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "shuffle": shuffle.get_state(),
                "rng": rng_state(), "history": history, "epoch": epoch + 1,
                "meta": {} if meta is None else meta,
                "config": asdict(config), "mode": model.mode.name,
            })
        if world > 1:
            torch.distributed.barrier()
    model.eval()
    return history




