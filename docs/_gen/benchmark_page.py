"""Render the benchmark JSON files (``benchmarks/results/*.json``) into a Markdown page.

Every benchmark script writes ``--json PATH`` with ``benchmark``, ``date``, ``machine`` and a
``results`` list of rows (see ``benchmarks/_common.py``); runs meant for the documentation
write into ``benchmarks/results/``. This module turns each file into a section: its table
(scalar columns), its goals and notes, and a bar chart of every ratio column (``ratio``,
``x/y``, ``speedup``) against 1. Nothing on the page is typed by hand.

``python docs/_gen/benchmark_page.py [RESULTS_DIR]`` prints the page.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

__all__ = ["render", "RESULTS"]

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"

INTRO = """# Benchmark results

Generated at build time from the JSON files the benchmark scripts write
(`python benchmarks/NAME.py --json benchmarks/results/NAME.json`); nothing here is copied by
hand. Ratios compare with the anchor measured **in the same run** (interleaved timing,
median or best of repeats, as each script says). Discussion of each result, with the
commands and older runs, is in `benchmarks/RESULTS.md`.
"""


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v).replace("|", "\\|")


def _is_ratio(col: str) -> bool:
    return col == "ratio" or "/" in col or "speedup" in col or col.endswith("_x")


def _table(rows: list[dict]) -> tuple[str, list[str]]:
    cols: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in cols and (v is None or isinstance(v, str | int | float | bool)):
                cols.append(k)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines), cols


def _label(row: dict, cols: list[str]) -> str:
    parts = [str(row[c]) for c in cols
             if c in row and isinstance(row[c], str | int) and not isinstance(row[c], bool)
             and not _is_ratio(c) and not c.endswith(("_ms", "_s", "ms", "seconds"))]
    return " ".join(parts[:3]) or "?"


def _plot(rows: list[dict], cols: list[str], title: str) -> bytes | None:
    ratios = [c for c in cols if _is_ratio(c) and any(isinstance(r.get(c), int | float) for r in rows)]
    if not ratios:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(r, cols) for r in rows]
    fig, ax = plt.subplots(figsize=(min(2.0 + 0.9 * len(rows) * len(ratios), 11), 3.2))
    width = 0.8 / len(ratios)
    for i, col in enumerate(ratios):
        vals = [float(r[col]) if isinstance(r.get(col), int | float) else float("nan") for r in rows]
        ax.bar([j + i * width for j in range(len(rows))], vals, width, label=col)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + width * (len(ratios) - 1) / 2 for j in range(len(rows))], labels,
                  rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue().encode()


def render(results_dir: Path = RESULTS) -> tuple[str, dict[str, bytes]]:
    """The page's Markdown and its figures ``{file name: SVG bytes}`` (to sit beside it)."""
    parts = [INTRO]
    figures: dict[str, bytes] = {}
    paths = sorted(Path(results_dir).glob("*.json"))
    if not paths:
        parts.append("!!! note\n    No benchmark results are stored yet: run a benchmark with "
                     "`--json benchmarks/results/NAME.json`.")
    for path in paths:
        report = json.loads(path.read_text())
        name = report.get("benchmark", path.stem)
        parts.append(f"## {name}")
        meta = [f"`{path.name}`"]
        for key in ("date", "machine", "device", "threads", "torch", "samples", "repeats"):
            if key in report and not isinstance(report[key], dict | list):
                meta.append(f"{key}: {report[key]}")
        if "seconds" in report:
            meta.append(f"total {report['seconds']:.0f} s")
        parts.append(" · ".join(meta))
        rows = report.get("results")
        if isinstance(rows, dict) and rows and all(isinstance(v, list) for v in rows.values()):
            # {case: [row, ...]} (one table per data set) -> rows tagged with their case
            rows = [{"case": k, **r} for k, v in rows.items() for r in v if isinstance(r, dict)]
        elif isinstance(rows, dict):  # {case: {...}} -> rows
            rows = [{"case": k, **v} if isinstance(v, dict) else {"case": k, "value": v}
                    for k, v in rows.items()]
        if rows:
            table, cols = _table(rows)
            parts.append(table)
            svg = _plot(rows, cols, name)
            if svg is not None:
                figures[f"benchmark_{path.stem}.svg"] = svg
                parts.append(f"![{name}: ratios against the anchor](benchmark_{path.stem}.svg)")
        for key in ("goals", "notes"):
            items = report.get(key)
            if isinstance(items, dict):
                items = [f"{k}: {v}" for k, v in items.items()]
            if items:
                parts.append(f"**{key}**\n\n" + "\n".join(f"* {_fmt(i)}" for i in items))
    return "\n\n".join(parts) + "\n", figures


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)[0])
