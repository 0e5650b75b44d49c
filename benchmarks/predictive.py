"""T=100 MC-dropout predictions: pyrocg's vectorised predictive vs Pyro's Predictive and a
plain PyTorch loop.

Network: ``models.mlp(784, [1024, 1024], 10, dropout=0.5)`` with random weights, random
inputs. Contenders (same run, same weights, interleaved timing):

* ``ours``: ``infer.predict(CGModel(net, Categorical(N), "mc-dropout"), x, num_samples=T)``
  (one batched computation over a leading sample dim, chunked);
* ``predictive``: ``pyro.infer.Predictive(model, num_samples=T, parallel=...)`` on a Pyro
  model running the same net under ``handlers.mc_dropout()`` in a data plate and sampling
  ``y ~ Categorical(logits)`` (the class probabilities are returned as a deterministic site).
  ``parallel=True`` runs one vectorised pass of *our* network under Predictive's plate (our
  handlers broadcast over it), so it measures Predictive's overhead on top of pyrocg;
  ``parallel=False`` is Predictive's own loop of T model runs;
* ``plain``: T passes of the torch.nn twin (``plain_mlp`` + ``nn.Dropout(0.5)``) in
  ``train()`` mode under ``torch.no_grad()``, softmax probabilities averaged.

Prints ms per prediction call and the ratios Predictive / ours and plain / ours (speed-ups;
goals on CPU: >= 5x / >= 2x over Predictive and >= 2x / >= 1.3x over the plain loop at
batch 32 / 1000). Asserts that ours, the plain loop and Predictive agree on the predictive
mean.

    python benchmarks/predictive.py [--device cuda] [--batches 32 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, print_table, time_interleaved, write_json  # noqa: E402

from pyrocg import handlers, infer, models  # noqa: E402
from pyrocg.reference import copy_weights, plain_mlp  # noqa: E402

IN, HIDDEN, OUT, P = 784, (1024, 1024), 10, 0.5


def plain_dropout_mlp(p: float = P) -> nn.Sequential:
    """``plain_mlp`` with ``nn.Dropout(p)`` after each hidden ReLU, where ``models.mlp`` puts
    its dropout nodes (before every dense layer after the input)."""
    mods: list[nn.Module] = []
    for m in plain_mlp(IN, HIDDEN, OUT):
        mods.append(m)
        if isinstance(m, nn.ReLU):
            mods.append(nn.Dropout(p))
    return nn.Sequential(*mods)


def make_ours(model, x, T, chunk_size):
    def fn(passes=False):
        pred = infer.predict(model, x, num_samples=T, chunk_size=chunk_size)
        return pred.probs if passes else pred.mean

    return fn


def make_plain(net, x, T):
    def fn(passes=False):
        net.train()
        with torch.no_grad():
            if passes:
                return torch.stack([torch.softmax(net(x), -1) for _ in range(T)])
            acc = torch.softmax(net(x), -1)
            for _ in range(T - 1):
                acc += torch.softmax(net(x), -1)
            return acc / T

    return fn


def make_predictive(net, x, T, parallel):
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            with handlers.mc_dropout():
                logits = net(x)
            pyro.deterministic("probs", torch.softmax(logits, -1), event_dim=1)
            return pyro.sample("y", dist.Categorical(logits=logits))

    predictive = pyro.infer.Predictive(model, num_samples=T, parallel=parallel,
                                       return_sites=("y", "probs"))

    def fn(passes=False):
        with torch.no_grad():
            probs = predictive(x)["probs"].reshape(T, x.shape[0], OUT)
            return probs if passes else probs.mean(0)

    return fn


def agreement(probs: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Compare T passes of class probabilities ``(T, batch, classes)`` with the reference's.

    ``z``: the largest |difference of predictive means| in units of its Monte-Carlo standard
    error; ``spread``: mean between-pass std relative to the reference's (1 = same)."""
    T = probs.shape[0]
    se = ((probs.var(0) + ref.var(0)) / T).sqrt().clamp_min(1e-12)
    diff = (probs.mean(0) - ref.mean(0)).abs()
    return {"z": float((diff / se).max()), "max_diff": float(diff.max()),
            "spread": float(probs.std(0).mean() / ref.std(0).mean())}


def agrees(a: dict[str, float], z_max: float) -> bool:
    return a["z"] < z_max and 0.8 < a["spread"] < 1.25


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", nargs="+", type=int, default=[32, 1000])
    ap.add_argument("--samples", type=int, default=100, help="passes T per prediction")
    ap.add_argument("--chunk-sizes", nargs="+", default=["auto", "10", "50"],
                    help="chunk_size values of infer.predict to time ('auto' = its default "
                    "from the memory budget, reported as ours; the fastest is shown too)")
    ap.add_argument("--predictive", nargs="+", default=["parallel", "sequential"],
                    choices=["parallel", "sequential"],
                    help="Predictive variants to try; the fastest correct one is reported")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--inner", type=int, default=None, help="calls per timing (default by batch)")
    ap.add_argument("--z-max", type=float, default=6.0,
                    help="max |difference of predictive means| vs the plain loop, in Monte-"
                    "Carlo standard errors, for a contender to count as correct")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    T = args.samples
    pyro.set_rng_seed(0)
    net = models.mlp(IN, HIDDEN, OUT, dropout=P).to(device)
    plain = plain_dropout_mlp().to(device)
    copy_weights(net, plain)
    model = infer.CGModel(net, infer.Categorical(60000), infer.MCDropout()).to(device)

    rows, notes = [], []
    for batch in args.batches:
        x = torch.randn(batch, IN, device=device)
        fns = {f"ours[chunk={c}]": make_ours(model, x, T, None if c == "auto" else int(c))
               for c in args.chunk_sizes}
        fns["plain"] = make_plain(plain, x, T)
        ref = fns["plain"](passes=True)
        checks = {}
        for k in list(fns):
            if k != "plain":
                checks[k] = agreement(fns[k](passes=True), ref)
                assert agrees(checks[k], args.z_max), f"batch {batch}: {k} vs plain: {checks[k]}"
        for variant in args.predictive:
            k = f"predictive[{variant}]"
            fn = make_predictive(net, x, T, variant == "parallel")
            try:
                checks[k] = agreement(fn(passes=True), ref)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                notes.append(f"batch {batch}: {k} failed: {type(e).__name__}: {e}"[:200])
                continue
            if agrees(checks[k], args.z_max):
                fns[k] = fn
            else:
                notes.append(f"batch {batch}: {k} is wrong, not timed: passes' spread "
                             f"{checks[k]['spread']:.3f}x the plain loop's, max |z| "
                             f"{checks[k]['z']:.1f}")
        inner = args.inner or (5 if batch <= 64 else 1)
        t = time_interleaved(fns, device, repeats=args.repeats, inner=inner, warmup=1)
        for k, v in t.items():
            c = checks.get(k, {})
            print(f"  batch {batch:5d}  {k:24s} {1e3 * v:9.1f} ms   " + "  ".join(
                f"{n}={c[n]:.3g}" for n in ("z", "max_diff", "spread") if n in c), flush=True)
        # The default (chunk size from the memory budget) is what users get: report it; the
        # fastest explicit chunk size is shown beside it.
        ours = "ours[chunk=auto]" if "ours[chunk=auto]" in t else min(
            (k for k in t if k.startswith("ours")), key=t.get)
        best = min((k for k in t if k.startswith("ours")), key=t.get)
        row = {"batch": batch, "ours": ours.removeprefix("ours"), "ours_ms": 1e3 * t[ours],
               "best_chunk": best.removeprefix("ours"), "best_chunk_ms": 1e3 * t[best]}
        pred = min((k for k in t if k.startswith("predictive")), key=t.get, default=None)
        if pred:
            row.update({"predictive": pred.removeprefix("predictive"),
                        "predictive_ms": 1e3 * t[pred], "predictive/ours": t[pred] / t[ours]})
        row.update({"plain_ms": 1e3 * t["plain"], "plain/ours": t["plain"] / t[ours],
                    "z_ours": checks[ours]["z"], "all_ms": {k: 1e3 * v for k, v in t.items()},
                    "checks": checks})
        rows.append(row)

    print(f"\nT={T} MC-dropout predictions, mlp 784-1024-1024-10 p={P}, {machine(device)}, "
          f"torch {torch.__version__}, pyro {pyro.__version__}")
    print_table(rows, ["batch", "ours", "ours_ms", "best_chunk", "best_chunk_ms", "predictive",
                       "predictive_ms", "predictive/ours", "plain_ms", "plain/ours", "z_ours"])
    for n in notes:
        print("note:", n)
    write_json(args.json, {
        "benchmark": "predictive", "date": datetime.date.today().isoformat(),
        "machine": machine(device), "device": device.type, "samples": T, "results": rows,
        "notes": notes,
    })


if __name__ == "__main__":
    main()
