"""The argument parser of the ``pyrocg`` command.

Options of ``pyrocg train`` default to ``None`` ("not given"): the defaults
(:data:`~pyrocg.cli.checks.DEFAULTS`) are filled in by
:func:`~pyrocg.cli.checks.resolve_train_spec`, so that ``--resume`` can tell a flag the user
gave from one left out (left out: the checkpoint's value).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from .. import modes
from .checks import (
    DATASETS,
    DEFAULTS,
    MAX_SAMPLES,
    MODEL_NAMES,
    OOD_SETS,
    OPTIMIZERS,
    UsageError,
)

__all__ = ["make_parser", "CRF_TASK_NAMES"]

CRF_TASK_NAMES = ("sequence", "multilabel", "grid")


class _Parser(argparse.ArgumentParser):
    """Parse errors raise :class:`UsageError` (one line, exit 2) instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _add_common(p: argparse.ArgumentParser, samples_default: int = 100,
                seed_help: str = "seed of the data split, initial weights and training, in "
                "[0, 2**32) (default 0)") -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--seed", type=int, default=None, help=seed_help)
    p.add_argument("--samples", type=int, default=samples_default,
                   help=f"stochastic passes per prediction, 1..{MAX_SAMPLES} (stochastic modes; "
                   f"default {samples_default})")
    p.add_argument("--json", default=None, help="write results as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an error (also: PYROCG_DEBUG=1)")


def make_parser() -> argparse.ArgumentParser:
    """The parser of ``pyrocg demo|demo-crf|train|evaluate|diagnose``."""
    ap = _Parser(prog="pyrocg", description="Neural networks as chain graphs.")
    ap.add_argument("--debug", action="store_true", default=False,
                    help="show the traceback of an error (also: PYROCG_DEBUG=1)")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train an mlp on digits in every mode, compare")
    _add_common(d)
    d.add_argument("--epochs", type=int, default=40)
    d.add_argument("--learned", action="store_true",
                   help="add the modes that learn their rates (pcff-learned, dropout-learned) "
                   "and report the learned rates")
    d.add_argument("--plots", default=None,
                   help="write the diagnostic figures of every mode into this directory")
    d.add_argument("--arviz", default=None, metavar="PATH.nc",
                   help="write the ArviZ InferenceData of the mc-dropout run (netCDF)")
    c = sub.add_parser("demo-crf", help="CRF output layers vs independent outputs on digit tasks")
    _add_common(c)
    c.add_argument("--task", choices=("all", *CRF_TASK_NAMES), default="all")
    # The demo networks have no dropout nodes, so the dropout modes do not apply.
    c.add_argument("--mode", default="feedforward",
                   choices=tuple(n for n, cls in modes.MODES.items() if not cls.uses_dropout),
                   help="mode of the layers beneath the CRF")
    c.add_argument("--epochs", type=int, default=15)
    t = sub.add_parser("train", help="train one model in one mode")
    _add_common(t)
    t.add_argument("--dataset", choices=DATASETS, default=None, help="default digits")
    t.add_argument("--model", choices=MODEL_NAMES, default=None, help="default mlp")
    t.add_argument("--mode", choices=tuple(modes.MODES), default=None, help="default feedforward")
    t.add_argument("--rate", type=float, default=None,
                   help=f"sampling rate in [0, 1] of the modes that take one (default "
                   f"{DEFAULTS['rate']})")
    t.add_argument("--p", type=float, default=None,
                   help=f"dropout probability in (0, 1) of the dropout modes (default "
                   f"{DEFAULTS['p']})")
    t.add_argument("--local-reparam", action="store_true", default=None,
                   help="--mode bayes: sample energies per datum instead of weights per batch")
    t.add_argument("--epochs", type=int, default=None,
                   help=f"default {DEFAULTS['epochs']}; with --resume: train on to this epoch")
    t.add_argument("--batch-size", type=int, default=None,
                   help=f"default {DEFAULTS['batch_size']}")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="default adam")
    t.add_argument("--lr", type=float, default=None,
                   help=f"learning rate > 0 (default {DEFAULTS['lr']})")
    t.add_argument("--milestones", type=int, nargs="*", default=None,
                   help="increasing epochs below --epochs at which the learning rate drops 10x")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="L2 weight decay >= 0, as a Gaussian prior (default 0)")
    t.add_argument("--data-dir", default=None,
                   help="--dataset fashion-mnist: directory of the IDX files")
    t.add_argument("--limit", type=int, default=None,
                   help="--dataset fashion-mnist: use only N >= 1 training images")
    t.add_argument("--table", default=None, help="--dataset table: CSV/whitespace table file")
    t.add_argument("--target", default=None,
                   help="--dataset table: target column name, or index (negative from the end; "
                   "default -1, the last column)")
    t.add_argument("--checkpoint", default=None,
                   help="checkpoint file, written after every epoch and locked while training")
    t.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint; flags left out take the checkpoint's values")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes started by torchrun (gloo/NCCL)")
    e = sub.add_parser("evaluate", help="evaluate a checkpoint written by `pyrocg train`")
    _add_common(e, seed_help="seed of the prediction's random draws, in [0, 2**32) (default: "
                "as after building the model with the run's seed)")
    e.add_argument("--checkpoint", required=True)
    g = sub.add_parser("diagnose", help="uncertainty, calibration and OOD figures of a checkpoint")
    _add_common(g, seed_help="seed of the prediction's random draws and the noise OOD set, in "
                "[0, 2**32) (default: as after building the model with the run's seed)")
    g.add_argument("--checkpoint", required=True, help="a checkpoint written by `pyrocg train`")
    g.add_argument("--plots", default=None, help="write the diagnostic figures into this directory")
    g.add_argument("--arviz", default=None, metavar="PATH.nc",
                   help="write the ArviZ InferenceData (netCDF)")
    g.add_argument("--ood", nargs="+", choices=OOD_SETS, default=None,
                   help="out-of-distribution sets built from the test images, scored by AUROC "
                   "and FPR at 95%% TPR")
    return ap
