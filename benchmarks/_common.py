"""Small helpers shared by the benchmark scripts (timing, tables, JSON)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int = 7,
    inner: int = 10,
    warmup: int = 3,
) -> dict[str, float]:
    """Median seconds per call of each function; calls are interleaved so that drift in
    machine load hits every contender alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {path}")


def report(name: str, lines: list[str], total: float, device: torch.device, args,
           results: dict) -> None:
    """Print the goal lines and the run's total, and write the JSON of ``--json``."""
    import datetime

    print()
    for line in lines:
        print("goal:", line)
    print(f"total {total:.0f}s, {machine(device)}, torch {torch.__version__}")
    write_json(args.json, {
        "benchmark": name, "date": datetime.date.today().isoformat(),
        "machine": machine(device), "args": vars(args), "results": results, "goals": lines,
        "seconds": total,
    })
