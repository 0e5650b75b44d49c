"""Benchmark pyrocg.structured.LinearChainCRF against pytorch-crf and torch-struct.

Measured in the same run and reported as ratios (baseline time / our time, > 1 = we are
faster):

* log-likelihood forward + backward: ours vs ``torchcrf.CRF`` (pytorch-crf);
* Viterbi decoding: ours vs ``torchcrf.CRF.decode``;
* log Z + marginals: ours vs ``torch_struct.LinearChainCRF`` (``partition`` + ``marginals``);
* top-k decoding (k best paths): ours (``topk``: scores and paths) vs torch-struct's
  ``topk`` (the k-max semiring; the k best structures as edge indicators), median of
  ``min(repeats, 3)`` interleaved single calls (torch-struct takes seconds per call).

Sequences are ragged (lengths uniform in [length/2, length], the first one full) and every
model has start and end potentials (torch-struct: folded into the edges). Every contender of
one task is timed interleaved with the others (``_common.time_interleaved``: the median of
``--repeats`` rounds), so drift in machine load hits them alike (tasks are timed apart: a
torch-struct call allocates gigabytes and would slow whatever runs after it). Baselines that cannot be
imported are reported as missing.

    python benchmarks/crf.py --device cpu --repeats 7 --json crf.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import time_interleaved  # noqa: E402

from pyrocg.structured import LinearChainCRF  # noqa: E402

SIZES = [(32, 50, 20), (32, 200, 20), (8, 1000, 10), (256, 20, 10)]
TOPK = 5


def _baselines() -> tuple[object | None, object | None, dict[str, str]]:
    notes = {}
    try:
        import torchcrf
    except Exception as err:  # noqa: BLE001 - any import failure means "skip the column"
        torchcrf = None
        notes["pytorch-crf"] = f"not available: {err!r}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch_struct
    except Exception as err:  # noqa: BLE001
        torch_struct = None
        notes["torch-struct"] = f"not available: {err!r}"
    return torchcrf, torch_struct, notes


def _bench_size(
    batch: int,
    length: int,
    tags: int,
    device: torch.device,
    repeats: int,
    torchcrf: object | None,
    torch_struct: object | None,
) -> dict:
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(batch, length, tags, generator=g).to(device).requires_grad_()
    trans = torch.randn(tags, tags, generator=g).to(device).requires_grad_()
    start = torch.randn(tags, generator=g).to(device).requires_grad_()
    end = torch.randn(tags, generator=g).to(device).requires_grad_()
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    lengths[0] = length
    lengths = lengths.to(device)
    y = torch.randint(0, tags, (batch, length), generator=g).to(device)
    mask = torch.arange(length, device=device) < lengths[:, None]
    row: dict[str, object] = {"batch": batch, "length": length, "tags": tags}
    fns = {}

    def ours_loglik():
        crf = LinearChainCRF(unary, trans, lengths, start=start, end=end)
        crf.log_prob(y).sum().backward()

    def ours_viterbi():
        with torch.no_grad():
            return LinearChainCRF(unary, trans, lengths, start=start, end=end).argmax

    def ours_marginals():
        crf = LinearChainCRF(unary.detach(), trans.detach(), lengths, start=start.detach(),
                             end=end.detach())
        return crf.log_partition, crf.marginals

    def ours_topk():
        with torch.no_grad():
            return LinearChainCRF(unary, trans, lengths, start=start, end=end).topk(TOPK)

    fns.update(ours_loglik=ours_loglik, ours_viterbi=ours_viterbi, ours_marginals=ours_marginals)
    if hasattr(LinearChainCRF, "topk"):  # the pre-refactor code has no k-best decoding
        fns["ours_topk"] = ours_topk  # timed on its own below

    if torchcrf is not None:
        ref = torchcrf.CRF(tags, batch_first=True).to(device)
        with torch.no_grad():
            ref.transitions.copy_(trans)
            ref.start_transitions.copy_(start)
            ref.end_transitions.copy_(end)

        def tcrf_loglik():
            ref(unary, y, mask, reduction="sum").backward()

        def tcrf_viterbi():
            with torch.no_grad():
                return ref.decode(unary, mask)

        fns.update(torchcrf_loglik=tcrf_loglik, torchcrf_viterbi=tcrf_viterbi)

    if torch_struct is not None:
        # torch-struct: edges[b, n, z_{n+1}, z_n]; node 0 (with start) folded into edge 0 and
        # end into the edge that enters each chain's last node
        with torch.no_grad():
            edges = trans + unary[:, 1:, None, :]
            edges[:, 0] += (unary[:, 0] + start)[:, :, None]
            last = (lengths - 2).clamp_min(0)
            edges[torch.arange(batch, device=device), last] += end
            edges = edges.transpose(-1, -2).contiguous()

        def ts_dist():
            return torch_struct.LinearChainCRF(edges, lengths=lengths)

        def ts_marginals():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dist = ts_dist()
                return dist.partition, dist.marginals

        def ts_topk():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ts_dist().topk(TOPK)

        fns["torchstruct_marginals"] = ts_marginals

    # the slowest contenders take ~100 ms a call on 2 CPU cores: fewer inner calls
    inner = 3 if batch * length * tags >= 50_000 else 10
    topk_fn = fns.pop("ours_topk", None)
    times = {}
    for task in ("loglik", "viterbi", "marginals"):  # each task's contenders interleaved
        group = {name: fn for name, fn in fns.items() if name.endswith(task)}
        times.update(time_interleaved(group, device, repeats=repeats, inner=inner, warmup=2))
    if topk_fn is not None:
        # torch-struct's k-max semiring takes seconds a call (it materialises
        # (batch, N, C, C, k·k) products and differentiates through them): its own
        # interleaved round, one call per round
        topk_fns = {"ours_topk": topk_fn}
        if torch_struct is not None:
            topk_fns["torchstruct_topk"] = ts_topk
        times.update(time_interleaved(topk_fns, device, repeats=min(repeats, 3), inner=1, warmup=1))
    for name, seconds in times.items():
        row[f"{name}_ms"] = seconds * 1e3
    for task, base in (("loglik", "torchcrf"), ("viterbi", "torchcrf"),
                       ("marginals", "torchstruct"), ("topk", "torchstruct")):
        if f"{base}_{task}_ms" in row and f"ours_{task}_ms" in row:
            row[f"{task}_speedup"] = row[f"{base}_{task}_ms"] / row[f"ours_{task}_ms"]
    return row


def run(device: torch.device, repeats: int) -> dict:
    torchcrf, torch_struct, notes = _baselines()
    rows = []
    for batch, length, tags in SIZES:
        row = _bench_size(batch, length, tags, device, repeats, torchcrf, torch_struct)
        rows.append(row)
        print(_table({**_meta(device, repeats, notes), "results": [row]}, header=False), flush=True)
    return {**_meta(device, repeats, notes), "results": rows}


def _meta(device: torch.device, repeats: int, notes: dict) -> dict:
    return {
        "device": str(device),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "notes": notes,
    }


def _table(report: dict, header: bool = True) -> str:
    nan = float("nan")

    def pair(task: str, base: str, label: str) -> list:
        return [
            (f"{label} ours", lambda r: f"{r.get(f'ours_{task}_ms', nan):.2f}"),
            (f"{label} {base[:6]}", lambda r: f"{r.get(f'{base}_{task}_ms', nan):.2f}"),
            ("x", lambda r: f"{r.get(f'{task}_speedup', nan):.1f}"),
        ]

    cols = [
        ("size (B,N,C)", lambda r: f"({r['batch']},{r['length']},{r['tags']})"),
        *pair("loglik", "torchcrf", "loglik"),
        *pair("viterbi", "torchcrf", "viterbi"),
        *pair("marginals", "torchstruct", "marg"),
        *pair("topk", "torchstruct", f"top{TOPK}"),
    ]
    lines = []
    if header:
        lines.append(
            f"device={report['device']} threads={report['threads']} torch={report['torch']} "
            f"(ms per call, median of {report['repeats']} interleaved rounds; "
            f"x = baseline / ours)"
        )
        lines.append(" | ".join(name for name, _ in cols))
        lines.append("-" * len(lines[-1]))
    for r in report["results"]:
        lines.append(" | ".join(f(r).rjust(len(name)) for name, f in cols))
    if header:
        lines += [f"note: {k} {v}" for k, v in report["notes"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    report = run(device, args.repeats)
    print(_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
