"""Benchmark pyrocg.structured.LinearChainCRF against pytorch-crf and torch-struct.

Measured in the same run and reported as ratios (baseline time / our time, > 1 = we are
faster):

* log-likelihood forward + backward: ours vs ``torchcrf.CRF`` (pytorch-crf);
* Viterbi decoding: ours vs ``torchcrf.CRF.decode``;
* log Z + marginals: ours vs ``torch_struct.LinearChainCRF`` (``partition`` + ``marginals``).

Sequences are ragged (lengths uniform in [length/2, length], the first one full) and every
model has start and end potentials. Baselines that cannot be imported are reported as missing.

    python benchmarks/crf.py --device cpu --repeats 10 --json crf.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable

import torch

from pyrocg.structured import LinearChainCRF

SIZES = [(32, 50, 20), (32, 200, 20), (8, 1000, 10), (256, 20, 10)]


def _timer(device: torch.device, repeats: int) -> Callable[..., list[float]]:
    """Time several functions interleaved (so that load from other processes hits all of them
    alike); return each one's best time in ms (the least disturbed run, as ``timeit`` does)."""

    def run_once(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def measure(*fns: Callable[[], object]) -> list[float]:
        for fn in fns:
            fn()  # warm-up (allocator, lazy imports)
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats):
            for fn, acc in zip(fns, times, strict=True):
                acc.append(run_once(fn))
        return [min(acc) * 1e3 for acc in times]

    return measure


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
    measure: Callable[..., list[float]],
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

    def ours_loglik():
        crf = LinearChainCRF(unary, trans, lengths, start=start, end=end)
        crf.log_prob(y).sum().backward()

    def ours_viterbi():
        with torch.no_grad():
            return LinearChainCRF(unary, trans, lengths, start=start, end=end).argmax

    def ours_marginals():
        crf = LinearChainCRF(unary.detach(), trans.detach(), lengths)
        return crf.log_partition, crf.marginals

    if torchcrf is None:
        row["ours_loglik_ms"], row["ours_viterbi_ms"] = measure(ours_loglik, ours_viterbi)
    if torch_struct is None:
        (row["ours_marginals_ms"],) = measure(ours_marginals)

    if torchcrf is not None:
        ref = torchcrf.CRF(tags, batch_first=True).to(device)
        with torch.no_grad():
            ref.transitions.copy_(trans)
            ref.start_transitions.copy_(start)
            ref.end_transitions.copy_(end)

        def ref_loglik():
            ref(unary, y, mask, reduction="sum").backward()

        def ref_viterbi():
            with torch.no_grad():
                return ref.decode(unary, mask)

        row["ours_loglik_ms"], row["torchcrf_loglik_ms"] = measure(ours_loglik, ref_loglik)
        row["ours_viterbi_ms"], row["torchcrf_viterbi_ms"] = measure(ours_viterbi, ref_viterbi)
        row["loglik_speedup"] = row["torchcrf_loglik_ms"] / row["ours_loglik_ms"]
        row["viterbi_speedup"] = row["torchcrf_viterbi_ms"] / row["ours_viterbi_ms"]

    if torch_struct is not None:
        # torch-struct: edges[b, n, z_{n+1}, z_n], unary of node 0 folded into edge 0
        edges = trans.detach() + unary.detach()[:, 1:, None, :]
        edges[:, 0] += unary.detach()[:, 0, :, None]
        edges = edges.transpose(-1, -2).contiguous()

        def ref_marginals():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dist = torch_struct.LinearChainCRF(edges, lengths=lengths)
                return dist.partition, dist.marginals

        row["ours_marginals_ms"], row["torchstruct_marginals_ms"] = measure(ours_marginals, ref_marginals)
        row["marginals_speedup"] = row["torchstruct_marginals_ms"] / row["ours_marginals_ms"]
    return row


def run(device: torch.device, repeats: int) -> dict:
    torchcrf, torch_struct, notes = _baselines()
    measure = _timer(device, repeats)
    rows = []
    for batch, length, tags in SIZES:
        row = _bench_size(batch, length, tags, device, measure, torchcrf, torch_struct)
        rows.append(row)
    return {
        "device": str(device),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "notes": notes,
        "results": rows,
    }


def _table(report: dict) -> str:
    cols = [
        ("size (B,N,C)", lambda r: f"({r['batch']},{r['length']},{r['tags']})"),
        ("loglik ours", lambda r: f"{r['ours_loglik_ms']:.2f}"),
        ("loglik tcrf", lambda r: f"{r.get('torchcrf_loglik_ms', float('nan')):.2f}"),
        ("x", lambda r: f"{r.get('loglik_speedup', float('nan')):.1f}"),
        ("viterbi ours", lambda r: f"{r['ours_viterbi_ms']:.2f}"),
        ("viterbi tcrf", lambda r: f"{r.get('torchcrf_viterbi_ms', float('nan')):.2f}"),
        ("x", lambda r: f"{r.get('viterbi_speedup', float('nan')):.1f}"),
        ("marg ours", lambda r: f"{r['ours_marginals_ms']:.2f}"),
        ("marg tstruct", lambda r: f"{r.get('torchstruct_marginals_ms', float('nan')):.2f}"),
        ("x", lambda r: f"{r.get('marginals_speedup', float('nan')):.1f}"),
    ]
    lines = [" | ".join(name for name, _ in cols)]
    lines.append("-" * len(lines[0]))
    for r in report["results"]:
        lines.append(" | ".join(f(r).rjust(len(name)) for name, f in cols))
    head = (
        f"device={report['device']} threads={report['threads']} torch={report['torch']} "
        f"repeats={report['repeats']} (times in ms, best of repeats, interleaved; x = baseline / ours)"
    )
    notes = [f"note: {k} {v}" for k, v in report["notes"].items()]
    return "\n".join([head, *lines, *notes])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=10)
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
