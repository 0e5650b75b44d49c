"""Tree CRF (exact belief propagation on a Chow-Liu tree) vs the mean-field label-correlation
CRF on the multi-label task, in the same run.

1. ``digit_attributes`` (6 correlated binary attributes of a noisy digit image): the same mlp
   64-128-6 and training (Adam, feed-forward mode) under three likelihoods -- independent
   sigmoids (``MultiLabelMeanFieldCRF`` with 0 iterations), the mean-field CRF (5 unrolled
   iterations, the anchor) and the tree CRF on the Chow-Liu tree of the training labels.
   Test Hamming (label) accuracy, exact match and NLL (nats per example: the exact joint NLL
   for the tree CRF, the NLL of the factorised mean-field distribution for the others; both
   are proper joint distributions over the 2^6 labellings) and ``fit``'s wall-clock seconds,
   averaged over ``--seeds``; then, on the first seed's trained models, interleaved medians
   of one training step (batch 32: loss, backward, Adam) and of ``evaluate`` on the 500 test
   examples. The tree CRF is decoded two ways: marginals > 0.5 (Hamming-optimal) and MAP
   (exact-match-optimal).
2. Per call, interleaved medians at L = 6, 50, 200 labels (batch 256, random trees and
   logits): the loss forward + backward (exact NLL vs mean-field surrogate), prediction
   (marginals vs mean-field marginals) and the tree's MAP decoding.

Times are reported as ratios tree / mean-field (the anchor; > 1 = the tree CRF is slower).

    python benchmarks/crf_tree.py [--quick] [--epochs 20] [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, report, time_interleaved  # noqa: E402

from pyrocg import infer, models, structured, tasks  # noqa: E402

VARIANTS = ("independent", "mean-field", "tree")
METRICS = ("label_accuracy", "exact_match", "map_label_accuracy", "map_exact_match", "nll",
           "train_s")


def make_likelihood(variant: str, data, iters: int):
    num_labels = data.train.y.shape[1]
    if variant == "tree":
        tree = structured.chow_liu_tree(data.train.y)
        return structured.TreeCRFLikelihood(structured.MultiLabelTreeCRF(tree), len(data.train)), tree
    crf = structured.MultiLabelMeanFieldCRF(num_labels, num_iters=0 if variant == "independent" else iters)
    return infer.MultiLabelCRFLikelihood(crf, len(data.train)), None


def step_fn(model, x, y):
    """One training step (loss, backward, Adam) on a fixed mini-batch."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)

    def step():
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()

    return step


def predict_fn(model, x, y):
    return lambda: infer.evaluate(model, x, y, num_samples=1)


def run_task(args, device) -> tuple[list[dict], dict]:
    per_seed: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    trees = []
    trained = {}
    for seed in args.seeds:
        data = tasks.digit_attributes(n_train=args.n_train, seed=seed, device=device)
        for variant in VARIANTS:
            torch.manual_seed(seed)
            lik, tree = make_likelihood(variant, data, args.iters)
            if tree is not None:
                trees.append(tree.parents.tolist())
            net = models.mlp(64, [128], data.train.y.shape[1])
            model = infer.CGModel(net, lik).to(device)
            config = infer.TrainConfig(epochs=args.epochs, batch_size=32, lr=3e-3, seed=seed,
                                       eval_samples=1, progress=False, log_epochs=False)
            t0 = time.perf_counter()
            infer.fit(model, data, config)
            train_s = time.perf_counter() - t0
            res = infer.evaluate(model, data.test.x, data.test.y, num_samples=1)
            res["train_s"] = train_s
            per_seed[variant].append(res)
            if seed == args.seeds[0]:
                trained[variant] = (model, data)
            print(f"  seed {seed} {variant:11s} " + ", ".join(
                f"{k}={res[k]:.4g}" for k in METRICS if k in res), flush=True)
    rows = []
    for variant in VARIANTS:
        runs = per_seed[variant]
        row = {"model": variant}
        for key in METRICS:
            if key in runs[0]:
                row[key] = statistics.mean(r[key] for r in runs)
        rows.append(row)
    # Times: interleaved medians on the first seed's trained models (fit's wall-clock time
    # above depends on whatever else runs on the machine meanwhile).
    fns = {}
    for variant, (model, data) in trained.items():
        fns[f"{variant}/step"] = step_fn(model, data.train.x[:32], data.train.y[:32])
        fns[f"{variant}/predict"] = predict_fn(model, data.test.x, data.test.y)
    times = time_interleaved(fns, device, repeats=args.repeats, inner=3)
    for row in rows:
        row["step_ms"] = 1e3 * times[f"{row['model']}/step"]
        row["predict_ms"] = 1e3 * times[f"{row['model']}/predict"]
    anchor = rows[1]
    for row in rows:
        row["step_ratio"] = row["step_ms"] / anchor["step_ms"]
        row["predict_ratio"] = row["predict_ms"] / anchor["predict_ms"]
    return rows, {"per_seed": per_seed, "chow_liu_trees": trees}


def random_tree(num: int, g: torch.Generator) -> structured.Tree:
    return structured.Tree([-1] + [int(torch.randint(0, i, (), generator=g)) for i in range(1, num)])


def kernel_fns(tree_crf, mean_field, x, y) -> dict:
    def tree_loss():
        (-tree_crf(x).log_prob(y).mean()).backward()

    def mf_loss():
        mean_field.loss(x, y).backward()

    def tree_marginals():
        with torch.no_grad():
            return tree_crf(x).marginals

    def mf_marginals():
        with torch.no_grad():
            return mean_field(x)

    def tree_map():
        with torch.no_grad():
            return tree_crf(x).argmax

    return {"tree_loss": tree_loss, "mf_loss": mf_loss, "tree_marg": tree_marginals,
            "mf_marg": mf_marginals, "tree_map": tree_map}


def run_kernels(args, device) -> list[dict]:
    rows = []
    for num in args.labels:
        g = torch.Generator().manual_seed(0)
        tree = random_tree(num, g)
        tree_crf = structured.MultiLabelTreeCRF(tree).to(device)
        mean_field = structured.MultiLabelMeanFieldCRF(num, num_iters=args.iters).to(device)
        with torch.no_grad():
            tree_crf.edge_potentials.normal_(generator=g)
            mean_field.coupling_param.copy_(torch.randn(num, num, generator=g) / num**0.5)
        x = torch.randn(args.batch, num, generator=g).to(device).requires_grad_(True)
        y = torch.randint(0, 2, (args.batch, num), generator=g).to(device)

        t = time_interleaved(kernel_fns(tree_crf, mean_field, x, y), device, repeats=args.repeats,
                             inner=5)
        rows.append({
            "labels": num, "depth": tree.depth, "batch": args.batch,
            "loss_tree_ms": 1e3 * t["tree_loss"], "loss_mf_ms": 1e3 * t["mf_loss"],
            "loss_ratio": t["tree_loss"] / t["mf_loss"],
            "marg_tree_ms": 1e3 * t["tree_marg"], "marg_mf_ms": 1e3 * t["mf_marg"],
            "marg_ratio": t["tree_marg"] / t["mf_marg"], "map_tree_ms": 1e3 * t["tree_map"],
        })
        print(f"  L={num}: " + ", ".join(f"{k}={v:.4g}" for k, v in rows[-1].items()
                                         if isinstance(v, float)), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, 1 seed, L=6 only")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=5, help="mean-field iterations")
    ap.add_argument("--labels", nargs="+", type=int, default=[6, 50, 200])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: tiny kernels, no thread hand-off noise)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.labels, args.repeats = 2, args.seeds[:1], [6], 3
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    print("1. digit_attributes: mlp 64-128-6, same training, three likelihoods", flush=True)
    task_rows, extra = run_task(args, device)
    print("2. per call, interleaved medians", flush=True)
    kernel_rows = run_kernels(args, device)
    total = time.perf_counter() - t_start

    print(f"\ndigit_attributes, {args.epochs} epochs, mean over seeds {args.seeds} "
          "(ratios: / mean-field)")
    print_table(task_rows, ["model", *METRICS, "step_ms", "step_ratio", "predict_ms", "predict_ratio"])
    print(f"\nper call, batch {args.batch}, mean-field {args.iters} iterations (ratios: tree / mean-field)")
    print_table(kernel_rows, list(kernel_rows[0]))
    tree, mf = task_rows[2], task_rows[1]
    higher = "higher" if tree["map_exact_match"] > mf["exact_match"] else "not higher"
    lines = [
        f"tree CRF exact match (MAP) {tree['map_exact_match']:.4f} vs mean-field "
        f"{mf['exact_match']:.4f}: {higher}",
        f"tree CRF label accuracy (marginals) {tree['label_accuracy']:.4f} vs mean-field "
        f"{mf['label_accuracy']:.4f}",
        f"tree CRF NLL {tree['nll']:.4f} vs mean-field {mf['nll']:.4f} nats per example",
        f"tree CRF training step {tree['step_ratio']:.2f}x, prediction {tree['predict_ratio']:.2f}x "
        "the mean-field CRF's time",
    ]
    report("crf_tree", lines, total, device, args,
           {"task": task_rows, "kernels": kernel_rows, **extra})


if __name__ == "__main__":
    main()
