"""mkdocs hooks: pages and figures generated at build time.

* ``figures/*.svg`` — the concept figures (:mod:`figures`), drawn from the package;
* ``tutorials/NN_name.md`` (+ PNG figures) — each ``tutorials/NN_name.py`` executed cell by
  cell and rendered with its outputs (:mod:`notebook`); ``tutorials/index.md`` lists them;
* ``benchmarks.md`` (+ SVG charts) — rendered from ``benchmarks/results/*.json``
  (:mod:`benchmark_page`).

Environment: ``PYROCG_DOCS_EXECUTE=0`` renders the tutorials without running them (the test
suite does that, because ``tests/test_tutorials.py`` runs every tutorial through the same
renderer), ``PYROCG_DOCS_EXECUTE=01,03`` runs only those; ``PYROCG_QUICK=1`` runs them at
test size.

The navigation gets one entry per tutorial, and any page in ``docs/`` that ``mkdocs.yml``
does not list (a page another change adds) under "More", so no page is left unreachable.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from mkdocs.structure.files import File, Files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import benchmark_page  # noqa: E402
import figures  # noqa: E402
import notebook  # noqa: E402

log = logging.getLogger("mkdocs.plugins.pyrocg")

TUTORIALS = ROOT / "tutorials"

TUTORIALS_INTRO = """# Tutorials

Each tutorial is a Python script in `tutorials/` in jupytext's percent format: run it with
`python tutorials/NAME.py`, or open it as a notebook with jupytext. Every claim a tutorial
makes is an `assert`, and the test suite executes each one top to bottom at a small size
(`PYROCG_QUICK=1`), through the same code that renders these pages with their outputs and
figures.
"""


def _tutorial_paths() -> list[Path]:
    return sorted(TUTORIALS.glob("[0-9]*.py"))


def _listed(nav: list) -> set[str]:
    out: set[str] = set()
    for item in nav:
        if isinstance(item, str):
            out.add(item)
        elif isinstance(item, dict):
            for value in item.values():
                out |= _listed(value) if isinstance(value, list) else {value}
    return out


def on_config(config, **kwargs):
    nav = config["nav"]
    for item in nav:
        if isinstance(item, dict) and "Tutorials" in item:
            entries = item["Tutorials"]
            for path in _tutorial_paths():
                title = notebook.title_of(notebook.parse(path)).replace("`", "")  # nav: plain text
                entries.append({title: f"tutorials/{path.stem}.md"})
    listed = _listed(nav)
    docs = Path(config["docs_dir"])
    extra = [
        str(p.relative_to(docs)) for p in sorted(docs.rglob("*.md"))
        if not p.relative_to(docs).parts[0].startswith("_") and str(p.relative_to(docs)) not in listed
    ]
    if extra:
        nav.append({"More": extra})
    return config


def on_files(files: Files, config, **kwargs) -> Files:
    for name, data in figures.all_figures().items():
        files.append(File.generated(config, f"figures/{name}", content=data))

    # "1" (default) runs every tutorial, "0" none; anything else is a comma-separated list of
    # name prefixes to run (e.g. "01,03" while working on those pages).
    setting = os.environ.get("PYROCG_DOCS_EXECUTE", "1").strip()
    selected = None if setting in ("0", "1", "") else [p.strip() for p in setting.split(",")]
    index = [TUTORIALS_INTRO]
    for path in _tutorial_paths():
        cells = notebook.parse(path)
        execute = setting == "1" or (selected is not None and path.stem.startswith(tuple(selected)))
        if execute:
            import pyro

            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            t0 = time.perf_counter()
            notebook.run(path, cells)
            log.info("executed %s in %.1f s", path.name, time.perf_counter() - t0)
        text, images = notebook.render(cells, path.stem, source_link=f"tutorials/{path.name}")
        if not execute:
            text = ("!!! note\n    Rendered without running it (`PYROCG_DOCS_EXECUTE`): "
                    "no outputs.\n\n" + text)
        files.append(File.generated(config, f"tutorials/{path.stem}.md", content=text))
        for name, png in images.items():
            files.append(File.generated(config, f"tutorials/{name}", content=png))
        index.append(f"* [{notebook.title_of(cells)}]({path.stem}.md)")
    files.append(File.generated(config, "tutorials/index.md", content="\n".join(index) + "\n"))

    # pyrocg.structured changes fast: its API page renders the package and every public
    # submodule found on disk, so a docstring that names one of them always resolves.
    sections = ["::: pyrocg.structured\n    options:\n      heading_level: 1\n"]
    for module in sorted((ROOT / "pyrocg" / "structured").glob("[a-z]*.py")):
        sections.append(f"::: pyrocg.structured.{module.stem}\n    options:\n      heading_level: 2\n")
    files.append(File.generated(config, "api/structured.md", content="\n".join(sections)))

    page, charts = benchmark_page.render()
    files.append(File.generated(config, "benchmarks.md", content=page))
    for name, svg in charts.items():
        files.append(File.generated(config, name, content=svg))
    return files
