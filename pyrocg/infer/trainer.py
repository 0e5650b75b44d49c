"""The training loop: mini-batch ELBO steps, schedules, validation, checkpoints, resume."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from .. import metrics
from ..data import DataSplits, batches
from . import distributed as ddp
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .model import CGModel
from .predictive import predict

__all__ = ["TrainConfig", "TrainingDiverged", "fit", "evaluate"]

OPTIMIZERS = ("adam", "sgd")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept."""


@dataclass
class TrainConfig:
    """Settings of :func:`fit`.

    :ivar optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``).
    :ivar milestones: epochs at which the learning rate is multiplied by ``gamma``.
    :ivar eval_samples: stochastic passes per validation prediction.
    :ivar progress: show a progress bar over each epoch's mini-batches.
    :ivar log_epochs: print a summary line after each epoch (with ``progress``).
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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "eval_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        self.milestones = tuple(int(m) for m in self.milestones)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)


def evaluate(model: CGModel, x: torch.Tensor, y: torch.Tensor, num_samples: int = 100,
             batch_size: int = 1000) -> dict[str, float]:
    """Accuracy, NLL, Brier and ECE (classification) or RMSE and Gaussian NLL (regression)."""
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
) -> list[dict]:
    """Train ``model`` on ``data.train``, validating on ``data.val`` after every epoch.

    :param checkpoint: file written atomically after every epoch (model, guide, optimiser,
        scheduler, RNG and shuffling state, history).
    :param resume: continue from ``checkpoint``; the result is identical to a run that was
        never interrupted.
    :returns: the history, one dict per epoch (loss, validation metrics, seconds, lr).
    :raises TrainingDiverged: when the loss becomes NaN/inf; the checkpoint of the last
        finished epoch is left untouched.
    """
    config = config or TrainConfig()
    x, y = data.train.x, data.train.y
    if len(data.train) == 0:
        raise ValueError("the training split is empty")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    pyro.set_rng_seed(config.seed)
    shuffle = torch.Generator(device="cpu").manual_seed(config.seed)
    model.initialize(x[: config.batch_size], y[: config.batch_size])
    opt, sched = _make_optimizer(model, config)
    history: list[dict] = []
    start = 0
    if resume:
        state = load_checkpoint(checkpoint, map_location=x.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        shuffle.set_state(state["shuffle"])
        set_rng_state(state["rng"])
        history, start = state["history"], state["epoch"]
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
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not (config.progress and main), unit="batch")
        for step, (xb, yb) in enumerate(bar):
            if world > 1:
                xb = xb[rank * config.batch_size : (rank + 1) * config.batch_size]
                yb = yb[rank * config.batch_size : (rank + 1) * config.batch_size]
            with warnings.catch_warnings():
                # Pyro warns about NaN log-densities; we stop with a clearer error below.
                warnings.filterwarnings("ignore", message="Encountered NaN")
                loss = model.loss(xb, yb)
            if not torch.isfinite(loss):
                kept = f"; the checkpoint of epoch {start} at {checkpoint} is kept" if (
                    checkpoint and Path(checkpoint).exists()) else ""
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}{kept}. "
                    "Lower the learning rate or check the data for NaN/inf values."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                ddp.average_gradients(params)
            opt.step()
            if world > 1:
                ddp.broadcast_module(model, buffers_only=True)
            total += loss.item() * len(yb)
            seen += len(yb)
            bar.set_postfix(loss=f"{total / seen:.4f}")
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
                "config": asdict(config), "mode": model.mode.name, "rate": model.rate,
            })
        if world > 1:
            torch.distributed.barrier()
    model.eval()
    return history




