"""Run a jupytext percent-format tutorial cell by cell and render it as a Markdown page.

One code path for the site and the tests: ``tests/test_tutorials.py`` executes every
tutorial through :func:`run` (so the claims each one asserts are checked) and renders it
with :func:`render`; the mkdocs hook does the same at build time, so a page shows the outputs
and figures of exactly the code a reader sees. No Jupyter kernel is needed: cells run in one
namespace in this process, ``print`` output and the last expression's value are captured,
and every open matplotlib figure is saved as PNG after its cell.

Format (https://jupytext.readthedocs.io, "percent"): ``# %%`` starts a code cell,
``# %% [markdown]`` a Markdown cell whose lines are ``# ``-commented.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Cell", "parse", "run", "render", "title_of", "SIZE_VARIABLE"]

#: The tutorials' small-size switch: ``PYROCG_QUICK=1`` runs each at test size.
SIZE_VARIABLE = "PYROCG_QUICK"

_MARKER = re.compile(r"^# %%(?P<rest>.*)$")


@dataclass
class Cell:
    """One cell: ``kind`` is ``"markdown"`` or ``"code"``; ``lineno`` the file line of its
    first source line; after :func:`run`, ``text`` holds its printed output and ``images``
    its figures (PNG bytes)."""

    kind: str
    source: str
    lineno: int
    text: str = ""
    images: list[bytes] = field(default_factory=list)
    seconds: float = 0.0


def parse(path: str | Path) -> list[Cell]:
    """Split a percent-format file into cells (a leading jupytext YAML header is skipped)."""
    lines = Path(path).read_text().splitlines()
    i = 0
    if lines and lines[0].strip() == "# ---":  # jupytext header
        i = lines.index("# ---", 1) + 1
    cells: list[Cell] = []
    kind, start, body = None, i + 1, []

    def flush() -> None:
        while body and not body[-1].strip():
            body.pop()
        lead = 0
        while lead < len(body) and not body[lead].strip():
            lead += 1
        if kind is not None and body[lead:]:
            src = body[lead:]
            if kind == "markdown":
                src = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in src]
            cells.append(Cell(kind, "\n".join(src), start + lead))

    for n, line in enumerate(lines[i:], start=i + 1):
        m = _MARKER.match(line)
        if m:
            flush()
            kind = "markdown" if "[markdown]" in m["rest"] else "code"
            start, body = n + 1, []
        elif kind is None and line.strip():
            raise ValueError(f"{path}:{n}: text before the first '# %%' cell marker")
        else:
            body.append(line)
    flush()
    return cells


def run(path: str | Path, cells: list[Cell] | None = None) -> list[Cell]:
    """Execute the code cells of ``path`` top to bottom in one fresh namespace, recording
    each cell's output and figures. An exception propagates (with the tutorial's own file
    name and line numbers in its traceback)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    path = Path(path)
    cells = parse(path) if cells is None else cells
    dtype = torch.get_default_dtype()  # a tutorial may change it; the caller keeps its own
    try:
        _run_cells(path, cells, plt)
    finally:
        torch.set_default_dtype(dtype)
        plt.close("all")
    return cells


def _run_cells(path: Path, cells: list[Cell], plt) -> None:
    namespace = {"__name__": "__main__", "__file__": str(path)}
    plt.close("all")
    for cell in cells:
        if cell.kind != "code":
            continue
        tree = ast.parse("\n" * (cell.lineno - 1) + cell.source, filename=str(path))
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        buffer = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(buffer):
            exec(compile(tree, str(path), "exec"), namespace)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), str(path), "eval"), namespace)
                if value is not None and not _is_artist(value):
                    print(repr(value))
        cell.seconds = time.perf_counter() - start
        cell.text = buffer.getvalue()
        for num in plt.get_fignums():
            png = io.BytesIO()
            plt.figure(num).savefig(png, format="png", dpi=90, bbox_inches="tight")
            cell.images.append(png.getvalue())
        plt.close("all")


def _is_artist(value: object) -> bool:
    module = type(value).__module__ or ""
    seq = value if isinstance(value, list | tuple) else [value]
    return module.startswith("matplotlib") or all(
        (type(v).__module__ or "").startswith("matplotlib") for v in seq
    ) and bool(seq)


def title_of(cells: list[Cell]) -> str:
    """The first Markdown heading of the tutorial."""
    for cell in cells:
        if cell.kind == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise ValueError("a tutorial starts with a '# Title' Markdown cell")


def render(cells: list[Cell], stem: str, source_link: str | None = None) -> tuple[str, dict[str, bytes]]:
    """Markdown for the page and its figure files ``{file name: PNG bytes}`` (names are
    ``{stem}_{n}.png``, to sit next to the page)."""
    parts: list[str] = []
    files: dict[str, bytes] = {}
    for cell in cells:
        if cell.kind == "markdown":
            parts.append(cell.source)
            if source_link and cell is cells[0]:
                parts.append(f"*This page is generated from `{source_link}`: run it with "
                             f"`python {source_link}` (or open it in Jupyter with jupytext); "
                             f"`{SIZE_VARIABLE}=1` runs it at test size.*")
            continue
        parts.append(f"```python\n{cell.source}\n```")
        if cell.text.strip():
            parts.append('<div class="tutorial-output" markdown>\n\n```text\n'
                         + cell.text.rstrip() + "\n```\n\n</div>")
        for png in cell.images:
            name = f"{stem}_{len(files) + 1}.png"
            files[name] = png
            parts.append(f"![Figure {len(files)}]({name})")
    return "\n\n".join(parts) + "\n", files
