"""One training step of pyrocg's feed-forward mode vs the identical plain-PyTorch network.

Anchor: the same architecture written with torch.nn, the same weights, the same optimiser.
Prints a table of milliseconds per step and the ratio ours / plain (goal <= 1.10 on CPU for
mlp and cnn, <= 1.05 for resnet20 on a GPU).

    python benchmarks/ff_overhead.py [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, print_table, time_interleaved, write_json  # noqa: E402

from pyrocg import handlers, models  # noqa: E402
from pyrocg.reference import PlainResNet20, copy_weights, plain_cnn, plain_mlp  # noqa: E402

CASES = {
    "mlp": (lambda: models.mlp(), plain_mlp, (784,), 256),
    "cnn": (lambda: models.cnn(), plain_cnn, (1, 28, 28), 128),
    "resnet20": (lambda: models.resnet20(), PlainResNet20, (3, 32, 32), 128),
}


def step_fn(net, x, y, wrap):
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with wrap():
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    return step


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=None, choices=list(CASES))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    names = args.models or (["mlp", "cnn", "resnet20"] if device.type == "cuda" else ["mlp", "cnn"])
    rows = []
    for name in names:
        make_ours, make_plain, shape, batch = CASES[name]
        torch.manual_seed(0)
        ours, plain = make_ours().to(device), make_plain().to(device)
        copy_weights(ours, plain)
        x = torch.randn(batch, *shape, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        t = time_interleaved(
            {
                "ours": step_fn(ours, x, y, handlers.feedforward),
                "plain": step_fn(plain, x, y, _Nothing),
            },
            device, repeats=args.repeats, inner=args.inner,
        )
        rows.append({
            "model": name, "batch": batch, "ours_ms": 1e3 * t["ours"], "plain_ms": 1e3 * t["plain"],
            "ratio": t["ours"] / t["plain"],
        })
    print(f"feed-forward training step, {machine(device)}, torch {torch.__version__}")
    print_table(rows, ["model", "batch", "ours_ms", "plain_ms", "ratio"])
    write_json(args.json, {
        "benchmark": "ff_overhead", "date": datetime.date.today().isoformat(),
        "machine": machine(device), "device": device.type, "results": rows,
    })


if __name__ == "__main__":
    main()
