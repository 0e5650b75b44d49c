"""Learned vs grid-searched stochasticity rates: one training run against a grid of them.

Digits (scikit-learn's 8x8 images, an mlp): for MC dropout, Gaussian (MC) dropout and PCFF,
every rate of a grid is trained on the training split and the one with the best validation
NLL is tested; the learned mode (``LearnedDropout``: Concrete dropout / variational dropout;
``LearnedPCFF``) is trained once from a fixed initial rate and tested. Reported: test
accuracy, NLL, ECE, the chosen/learned rates and the training seconds (the grid's: all its
trainings).

UCI-style regression (the protocol of ``benchmarks/uci.py`` on its *synthetic* table — no
real UCI data offline): the grid is Gal & Ghahramani's (dropout p x precision tau, chosen on
a validation carve-out, retrained on the whole training split); the learned run learns p
(Concrete dropout) and the noise scale in one training. Reported: test RMSE of the MC mean
and Gal's test log-likelihood (original units), seconds.

Goal: the learned rates match or beat the grid search's NLL within one training run.

    python benchmarks/beyond_rates.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import uci as uci_bench  # noqa: E402
from _common import print_table, report  # noqa: E402

from pyrocg import infer, layers, models, modes  # noqa: E402
from pyrocg.data import load_digits, make_synthetic_uci, read_uci  # noqa: E402

COLUMNS = ["task", "family", "method", "rate", "accuracy", "nll", "ece", "rmse", "ll",
           "runs", "train_s"]


def _gaussian_mlp(d: int, hidden: list[int], out: int, p: float) -> layers.Sequential:
    """``models.mlp(..., dropout=p)`` with Gaussian dropout of the same variance."""
    net = models.mlp(d, hidden, out, dropout=p)
    mods = OrderedDict((name, layers.GaussianDropout.from_p(p) if isinstance(m, layers.Dropout)
                        else m) for name, m in net.named_children())
    return layers.Sequential(mods)


def _digits_run(data, family: str, rate: float | None, cfg) -> tuple[infer.CGModel, float]:
    """Train one digits model; ``rate=None``: the learned mode."""
    pyro.clear_param_store()
    torch.manual_seed(cfg.seed)
    d, k = data.input_dim, data.num_classes
    if family == "pcff":
        net = models.mlp(d, cfg.hidden, k)
        mode = modes.LearnedPCFF(init=cfg.pcff_init) if rate is None else modes.PCFF(rate)
    elif family == "mc-dropout":
        net = models.mlp(d, cfg.hidden, k, dropout=cfg.dropout_init if rate is None else rate)
        mode = modes.LearnedDropout() if rate is None else modes.MCDropout()
    else:  # gaussian dropout (variational dropout when learned)
        net = _gaussian_mlp(d, cfg.hidden, k, cfg.dropout_init if rate is None else rate)
        mode = modes.LearnedDropout() if rate is None else modes.MCDropout()
    model = infer.CGModel(net, infer.Categorical(len(data.train)), mode,
                          prior=modes.GaussianPrior(1.0))
    t0 = time.perf_counter()
    infer.fit(model, data, infer.TrainConfig(epochs=cfg.epochs, batch_size=64, lr=cfg.lr,
                                             seed=cfg.seed, progress=False, log_epochs=False,
                                             eval_samples=cfg.samples))
    return model, time.perf_counter() - t0


def _rate_of(model: infer.CGModel) -> str:
    rates = modes.learned_rates(model)
    return " ".join(f"{k}={float(v.mean()):.3g}" for k, v in rates.items())


def digits(cfg, log=print) -> list[dict]:
    data = load_digits(seed=cfg.seed)
    rows = []
    for family, grid in (("mc-dropout", cfg.p_grid), ("gaussian", cfg.p_grid),
                         ("pcff", cfg.pcff_grid)):
        best, total = None, 0.0
        for rate in grid:
            model, seconds = _digits_run(data, family, rate, cfg)
            total += seconds
            val = infer.evaluate(model, data.val.x, data.val.y, cfg.samples)
            log(f"  digits {family} rate={rate}: val nll={val['nll']:.4f} ({seconds:.1f}s)")
            if best is None or val["nll"] < best[0]:
                best = (val["nll"], rate, model)
        _, rate, model = best
        test = infer.evaluate(model, data.test.x, data.test.y, cfg.samples)
        rows.append({"task": "digits", "family": family, "method": "grid", "rate": str(rate),
                     **{m: test[m] for m in ("accuracy", "nll", "ece")}, "runs": len(grid),
                     "train_s": total})
        model, seconds = _digits_run(data, family, None, cfg)
        test = infer.evaluate(model, data.test.x, data.test.y, cfg.samples)
        rows.append({"task": "digits", "family": family, "method": "learned",
                     "rate": _rate_of(model), **{m: test[m] for m in ("accuracy", "nll", "ece")},
                     "runs": 1, "train_s": seconds})
        log(f"digits {family}: grid nll {rows[-2]['nll']:.4f} (rate {rows[-2]['rate']}, "
            f"{rows[-2]['train_s']:.0f}s) vs learned {rows[-1]['nll']:.4f} "
            f"({rows[-1]['rate']}, {seconds:.0f}s)")
    return rows


def _fit_learned_regression(data, cfg) -> infer.CGModel:
    pyro.clear_param_store()
    torch.manual_seed(cfg.seed)
    n, p0 = len(data.train), cfg.reg_init
    net = models.mlp(data.input_dim, [cfg.reg_hidden], 1, dropout=p0, input_dropout=p0)
    # Gal's weight prior N(0, 1/l^2) with the noise scale learned instead of grid-searched.
    model = infer.CGModel(net, infer.Gaussian(n, 1.0, learn_scale=True), modes.LearnedDropout(),
                          prior=modes.GaussianPrior(1.0 / cfg.length_scale))
    infer.fit(model, data, infer.TrainConfig(epochs=cfg.reg_epochs, batch_size=128,
                                             lr=cfg.reg_lr, seed=cfg.seed, progress=False,
                                             log_epochs=False, eval_samples=cfg.samples))
    return model


def regression(cfg, log=print) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_uci(tmp, n=500, features=8, n_splits=cfg.splits,
                                  settings=uci_bench.SYNTHETIC_SETTINGS)
        uci = read_uci(root)
    args = SimpleNamespace(hidden=cfg.reg_hidden, layers=1, epochs=cfg.reg_epochs,
                           batch_size=128, lr=cfg.reg_lr, seed=cfg.seed,
                           length_scale=cfg.length_scale, device="cpu")
    per_split = []
    for k in range(cfg.splits):
        # Grid: Gal & Ghahramani's protocol (uci.py), every training timed.
        tuning = uci.split(k, validation=True)
        y_val = tuning.unstandardize_target(tuning.val.y)
        best, total = None, 0.0
        for p in cfg.reg_p_grid:
            for tau in cfg.tau_grid:
                pyro.clear_param_store()
                t0 = time.perf_counter()
                model = uci_bench.fit_pyrocg(tuning, p, tau, args)
                total += time.perf_counter() - t0
                val = uci_bench.scores(*uci_bench.samples_pyrocg(
                    model, tuning, tuning.val.x, tau, cfg.reg_samples), y_val, tau)
                if best is None or val["ll"] > best[0]:
                    best = (val["ll"], p, tau)
        _, p, tau = best
        data = uci.split(k)
        y = data.unstandardize_target(data.test.y)
        pyro.clear_param_store()
        t0 = time.perf_counter()
        model = uci_bench.fit_pyrocg(data, p, tau, args)
        total += time.perf_counter() - t0
        grid = uci_bench.scores(*uci_bench.samples_pyrocg(model, data, data.test.x, tau,
                                                          cfg.reg_samples), y, tau)
        # Learned: p and the noise scale in one run on the whole training split.
        t0 = time.perf_counter()
        model = _fit_learned_regression(data, cfg)
        seconds = time.perf_counter() - t0
        passes = infer.predict(model, data.test.x, num_samples=cfg.reg_samples).outputs[..., 0]
        sigma = float(model.likelihood.scale.detach()) * data.target_std
        learned = uci_bench.scores(data.unstandardize_target(passes),
                                   data.unstandardize_target(passes.mean(0)), y, 1 / sigma**2)
        per_split.append((p, tau, grid, total, _rate_of(model), sigma, learned, seconds))
        log(f"  uci split {k}: grid p={p} tau={tau} rmse={grid['rmse']:.3f} "
            f"ll={grid['ll']:.4f} ({total:.0f}s) | learned {per_split[-1][4]} "
            f"sigma={sigma:.2f} rmse={learned['rmse']:.3f} ll={learned['ll']:.4f} "
            f"({seconds:.0f}s)")
    rows = []
    for method, i_score, i_time in (("grid", 2, 3), ("learned", 6, 7)):
        scores = [s[i_score] for s in per_split]
        rates = ([f"p={s[0]},tau={s[1]}" for s in per_split] if method == "grid" else
                 [f"{s[4]},sigma={s[5]:.2f}" for s in per_split])
        rows.append({"task": "uci-synthetic", "family": "mc-dropout", "method": method,
                     "rate": "; ".join(rates),
                     "rmse": sum(s["rmse"] for s in scores) / len(scores),
                     "ll": sum(s["ll"] for s in scores) / len(scores),
                     "nll": -sum(s["ll"] for s in scores) / len(scores),
                     "runs": (len(cfg.reg_p_grid) * len(cfg.tau_grid) + 1 if method == "grid"
                              else 1),
                     "train_s": sum(s[i_time] for s in per_split)})
    return rows


def config(quick: bool, seed: int = 0) -> SimpleNamespace:
    """The settings of a ``--quick`` (minutes) or full run."""
    if quick:
        return SimpleNamespace(
            seed=seed, hidden=[128], epochs=20, lr=3e-3, samples=20,
            p_grid=[0.1, 0.3, 0.5], pcff_grid=[0.1, 0.3, 0.6], dropout_init=0.2, pcff_init=0.3,
            splits=1, reg_hidden=50, reg_epochs=100, reg_lr=1e-3, reg_samples=500,
            reg_p_grid=[0.01, 0.05, 0.1], tau_grid=[0.05, 0.1], reg_init=0.05,
            length_scale=1e-2)
    return SimpleNamespace(
        seed=seed, hidden=[256, 256], epochs=40, lr=3e-3, samples=50,
        p_grid=[0.05, 0.1, 0.2, 0.3, 0.5], pcff_grid=[0.1, 0.2, 0.3, 0.5, 0.8],
        dropout_init=0.2, pcff_init=0.3, splits=3, reg_hidden=50, reg_epochs=400,
        reg_lr=1e-3, reg_samples=2000, reg_p_grid=list(uci_bench.DROPOUT_RATES),
        tau_grid=list(uci_bench.SYNTHETIC_SETTINGS["tau_values"]), reg_init=0.05,
        length_scale=1e-2)


def run(quick: bool, log=print) -> dict:
    """Run the comparison; returns ``{"rows": [...], "goals": [...], "config": {...}}``."""
    cfg = config(quick)
    rows = digits(cfg, log) + regression(cfg, log)
    goals = []
    for task, family in {(r["task"], r["family"]) for r in rows}:
        g, lr_ = (next(r for r in rows if (r["task"], r["family"], r["method"]) ==
                       (task, family, m)) for m in ("grid", "learned"))
        met = lr_["nll"] <= g["nll"] + 0.01
        goals.append(f"{task} {family}: learned NLL {lr_['nll']:.4f} vs grid {g['nll']:.4f} "
                     f"({'met' if met else 'NOT met'}: within 0.01 or better), in "
                     f"{lr_['train_s']:.0f}s vs {g['train_s']:.0f}s "
                     f"({g['train_s'] / max(lr_['train_s'], 1e-9):.1f}x)")
    return {"rows": rows, "goals": sorted(goals), "config": vars(cfg)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller grids and runs (minutes)")
    ap.add_argument("--json", default=None, help="write the results as JSON to this file")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = run(args.quick, log=lambda m: print(m, flush=True))
    print()
    print_table(out["rows"], COLUMNS)
    report("beyond-rates", out["goals"], time.perf_counter() - t0, torch.device("cpu"), args,
           {"rows": out["rows"], "config": out["config"]})


if __name__ == "__main__":
    main()
