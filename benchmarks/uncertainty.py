"""Uncertainty: calibration and out-of-distribution detection of every mode.

Each mode trains on the classes 0-7 only (digits: mlp 64-512-512-8; Fashion-MNIST: cnn)
and is scored on the test images of those classes (accuracy, NLL, ECE with 15 bins, Brier,
AURC; NLL/ECE after temperature scaling fitted on the validation split) and, as
out-of-distribution inputs, on

* ``heldout``: the test images of the classes 8-9,
* ``noise``: uniform noise images,
* ``inverted``: the in-distribution test images with pixels ``1 - x``,
* ``rotated``: the in-distribution test images rotated by 90 degrees,

with AUROC and FPR at 95% TPR of the max-probability, entropy, mutual-information and
energy scores (OOD = positive). Modes: feedforward, pcff (PCFF training, T PCFF passes at
test time), mc-dropout, bayes (mean-field Gaussian weights). Also ArviZ's ``az.compare``
(LOO on the training data) of the four.

Goal: MC dropout beats the deterministic network on NLL, ECE and OOD AUROC.

    python benchmarks/uncertainty.py [--quick] [--epochs 40] [--datasets digits fashion-mnist]
        [--plots DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, report  # noqa: E402

from pyrocg import diagnostics, infer, metrics, models, modes  # noqa: E402
from pyrocg.data import Split, load_digits, load_fashion_mnist  # noqa: E402

#: The benchmark's modes: {label: pyrocg mode name} (PCFF trains with PCFF and predicts
#: with T PCFF passes: the ancestral-sampling mode).
MODES = {"feedforward": "feedforward", "pcff": "pcff-sampling", "mc-dropout": "mc-dropout",
         "bayes": "bayes"}
OOD_SETS = ("heldout", "noise", "inverted", "rotated")
IN_CLASSES = 8
COLUMNS = ["mode", "accuracy", "nll", "ece", "brier", "aurc", "ts_nll", "ts_ece",
           "auroc_entropy", "auroc_mi", "auroc_energy", "fpr95_entropy", "mean_auroc_entropy",
           "mean_auroc_mi", "elpd_loo", "train_s", "predict_s"]


def split_in_out(data):
    """(in-distribution DataSplits with classes 0-7, out-of-distribution test inputs)."""
    def keep(split):
        m = split.y < IN_CLASSES
        return Split(split.x[m], split.y[m])

    inside = dataclasses.replace(
        data, train=keep(data.train), val=keep(data.val), test=keep(data.test),
        num_classes=IN_CLASSES,
        class_names=None if data.class_names is None else data.class_names[:IN_CLASSES])
    x = inside.test.x
    g = torch.Generator().manual_seed(0)
    side = int(round(x[0].numel() ** 0.5))
    images = x.reshape(len(x), side, side)
    ood = {
        "heldout": data.test.x[data.test.y >= IN_CLASSES],
        "noise": torch.rand(x.shape, generator=g, dtype=x.dtype),
        "inverted": 1 - x,
        "rotated": torch.rot90(images, 1, (1, 2)).reshape(x.shape),
    }
    return inside, ood


def make_mode(label: str, args) -> modes.Mode:
    """The mode of ``label``, given those of ``--rate`` / ``--prior-scale`` it takes."""
    name = MODES[label]
    offered = {"rate": args.rate, "prior": infer.GaussianPrior(args.prior_scale, biases=True)}
    accepted = modes.mode_parameters(name)
    return modes.get_mode(name, **{k: v for k, v in offered.items() if k in accepted})


def make_model(dataset: str, data, mode: modes.Mode, args):
    p = args.p if mode.uses_dropout else 0.0
    if dataset == "digits":
        net = models.mlp(data.input_shape[0], [512, 512], IN_CLASSES, dropout=p)
    else:
        net = models.cnn(data.input_shape[0], IN_CLASSES, data.input_shape[-1], dropout=p)
    return infer.CGModel(net, infer.Categorical(len(data.train)), mode)


def run_mode(dataset: str, data, ood, label: str, args) -> tuple[dict, dict]:
    torch.manual_seed(args.seed)
    mode = make_mode(label, args)
    model = make_model(dataset, data, mode, args)
    epochs = args.epochs if dataset == "digits" else args.fashion_epochs
    milestones = (epochs - max(1, epochs // 4),) if epochs > 1 else ()
    config = infer.TrainConfig(epochs=epochs, batch_size=64 if dataset == "digits" else 128,
                               lr=args.bayes_lr if mode.random_weights else args.lr,
                               seed=args.seed, milestones=milestones,
                               eval_samples=args.val_samples, progress=False)
    t0 = time.perf_counter()
    infer.fit(model, data, config)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    pred = infer.predict(model, data.test.x, data.test.y, num_samples=args.samples)
    predict_s = time.perf_counter() - t0
    preds_out = {k: infer.predict(model, x, num_samples=args.samples) for k, x in ood.items()}
    val = infer.predict(model, data.val.x, num_samples=args.samples)

    y = data.test.y
    probs = pred.probs.double()
    row = {"mode": label, **metrics.classification_metrics(probs.mean(0), y)}
    tau = diagnostics.fit_temperature(val.outputs, data.val.y)
    scaled = diagnostics.temperature_scale(pred.outputs.double(), tau)
    row.update(ts_nll=float(metrics.nll(scaled, y)),
               ts_ece=float(metrics.expected_calibration_error(scaled, y)), temperature=tau)
    s_in = diagnostics.ood_scores(probs, pred.outputs.double())
    ood_res = {k: diagnostics.ood_metrics(s_in, diagnostics.ood_scores(
        p.probs.double(), p.outputs.double())) for k, p in preds_out.items()}
    held = ood_res["heldout"]
    row.update(auroc_entropy=held["entropy"]["auroc"], auroc_mi=held["mutual_information"]["auroc"],
               auroc_energy=held["energy"]["auroc"], fpr95_entropy=held["entropy"]["fpr95"],
               mean_auroc_entropy=sum(r["entropy"]["auroc"] for r in ood_res.values()) / len(ood_res),
               mean_auroc_mi=sum(r["mutual_information"]["auroc"] for r in ood_res.values()) / len(ood_res),
               train_s=train_s, predict_s=predict_s, ood=ood_res)
    torch.manual_seed(args.seed + 1)
    idata = diagnostics.to_inference_data(model, data, chains=4, draws=args.samples // 4)
    print(f"  [{dataset}] {label:11s} acc={row['accuracy']:.4f} nll={row['nll']:.4f} "
          f"ece={row['ece']:.4f} auroc(H)={row['auroc_entropy']:.3f} "
          f"auroc(MI)={row['auroc_mi']:.3f} ({train_s:.0f}s + {predict_s:.1f}s)", flush=True)
    return row, {"pred": pred, "ood": preds_out["heldout"], "idata": idata,
                 "stochastic": mode.stochastic_prediction}


def bench(dataset: str, data, args) -> tuple[list[dict], dict]:
    inside, ood = split_in_out(data)
    print(f"{dataset}: train on classes 0-{IN_CLASSES - 1}: {len(inside.train)} train, "
          f"{len(inside.test)} test, OOD {', '.join(f'{k}={len(v)}' for k, v in ood.items())}",
          flush=True)
    rows, outs = [], {}
    for label in args.modes:
        row, out = run_mode(dataset, inside, ood, label, args)
        rows.append(row)
        outs[label] = out
    az = diagnostics.arviz.import_arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's Pareto-k warnings; the table has the flag
        table = az.compare({m: o["idata"] for m, o in outs.items()})
    for row in rows:
        row["elpd_loo"] = float(table.loc[row["mode"], "elpd_loo"])
        row["p_loo"] = float(table.loc[row["mode"], "p_loo"])
    print(table[["rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "warning"]].to_string())
    if args.plots:
        directory = Path(args.plots) / dataset
        paths = diagnostics.write_diagnostic_plots(
            directory, {m: o["pred"] for m, o in outs.items()}, inside.test.y,
            ood={m: o["ood"] for m, o in outs.items()},
            # ArviZ's PPC / LOO-PIT of one repeated deterministic pass say nothing.
            idata={m: o["idata"] for m, o in outs.items() if o["stochastic"]})
        print("wrote", ", ".join(str(p) for p in paths))
    return rows, outs


def paired_bootstrap(outs: dict, y: torch.Tensor, draws: int = 1000) -> dict:
    """95 % intervals of MC dropout minus feed-forward NLL and ECE, resampling the test
    images (the same resample for both modes): small test sets (digits: 288 images, one
    image = 0.35 % of ECE) make single differences noise."""
    if not {"feedforward", "mc-dropout"} <= set(outs):
        return {}
    pf, pm = (outs[m]["pred"].probs.double().mean(0) for m in ("feedforward", "mc-dropout"))
    g = torch.Generator().manual_seed(0)
    diffs = {"nll": [], "ece": []}
    for _ in range(draws):
        i = torch.randint(0, len(y), (len(y),), generator=g)
        diffs["nll"].append(float(metrics.nll(pm[i], y[i]) - metrics.nll(pf[i], y[i])))
        diffs["ece"].append(float(metrics.expected_calibration_error(pm[i], y[i])
                                  - metrics.expected_calibration_error(pf[i], y[i])))
    return {k: (float(torch.tensor(v).quantile(0.025)), float(torch.tensor(v).quantile(0.975)))
            for k, v in diffs.items()}


def goals(dataset: str, rows: list[dict], intervals: dict) -> list[str]:
    by = {r["mode"]: r for r in rows}
    ff, mc = by.get("feedforward"), by.get("mc-dropout")
    if not (ff and mc):
        return []
    lines = []
    for k, low in (("nll", True), ("ece", True), ("auroc_entropy", False),
                   ("mean_auroc_entropy", False)):
        met = mc[k] < ff[k] if low else mc[k] > ff[k]
        line = (f"{dataset}: mc-dropout {k} {mc[k]:.4f} {'<' if low else '>'} feed-forward "
                f"{ff[k]:.4f}: {'met' if met else 'MISSED'}")
        if k in intervals:
            lo, hi = intervals[k]
            verdict = ("significant" if hi < 0 or lo > 0 else "within noise")
            line += (f" (difference {mc[k] - ff[k]:+.4f}, 95% paired-bootstrap interval "
                     f"[{lo:+.4f}, {hi:+.4f}]: {verdict})")
        lines.append(line)
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"],
                    choices=["digits", "fashion-mnist"])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, T=16")
    ap.add_argument("--epochs", type=int, default=40, help="digits epochs")
    ap.add_argument("--fashion-epochs", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None, help="Fashion-MNIST training images")
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory")
    ap.add_argument("--p", type=float, default=0.3, help="dropout rate of the dropout modes")
    ap.add_argument("--rate", type=float, default=0.3, help="PCFF rate")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bayes-lr", type=float, default=1e-2, help="lr of random-weight modes")
    ap.add_argument("--prior-scale", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=100, help="test passes T")
    ap.add_argument("--val-samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plots", default=None, help="directory for the figures")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs = args.fashion_epochs = 2
        args.samples, args.val_samples = 16, 2
        args.limit = args.limit or 3000
    device = torch.device("cpu")
    t_start = time.perf_counter()
    results, lines = {}, []
    for dataset in args.datasets:
        if dataset == "digits":
            data = load_digits(seed=args.seed)
        else:
            try:
                data = load_fashion_mnist(args.data_dir, limit=args.limit, seed=args.seed)
            except FileNotFoundError as err:
                print(f"fashion-mnist: skipped, IDX files not found ({str(err).splitlines()[0]})")
                continue
        rows, outs = bench(dataset, data, args)
        results[dataset] = rows
        test_y = data.test.y[data.test.y < IN_CLASSES]
        intervals = paired_bootstrap(outs, test_y, draws=100 if args.quick else 1000)
        for row in rows:
            row["bootstrap_mc_minus_ff"] = intervals
        lines += goals(dataset, rows, intervals)
    total = time.perf_counter() - t_start
    for dataset, rows in results.items():
        arch = "mlp 64-512-512-8" if dataset == "digits" else "cnn 32c-64c-128-8"
        epochs = args.epochs if dataset == "digits" else args.fashion_epochs
        print(f"\n{dataset}: {arch}, {epochs} epochs, T={args.samples}, OOD AUROC on held-out "
              "classes 8-9 (mean_*: over held-out, noise, inverted, rotated)")
        print_table(rows, COLUMNS)
    report("uncertainty", lines, total, device, args, results)


if __name__ == "__main__":
    main()
