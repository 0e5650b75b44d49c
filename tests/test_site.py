"""The documentation site builds with ``mkdocs build --strict`` (no network), and a page that
references a missing symbol fails that build."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _need_mkdocs():
    for name in ("mkdocs", "mkdocstrings", "material"):
        pytest.importorskip(name)

ROOT = Path(__file__).resolve().parents[1]


def _build(config: Path, site: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600,
    )


def test_site_builds_strict(tmp_path):
    _need_mkdocs()
    # Tutorials are executed (and their claims asserted) by tests/test_tutorials.py through the
    # same renderer; here they are rendered without running them, so the suite runs them once.
    site = tmp_path / "site"
    result = _build(ROOT / "mkdocs.yml", site, PYROCG_DOCS_EXECUTE="0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    api = (site / "api" / "infer.html").read_text()
    assert 'id="pyrocg.infer.CGModel"' in api and 'id="pyrocg.infer.fit"' in api
    # Sphinx roles became links, doctests became code blocks.
    assert 'href="#pyrocg.infer.CGModel"' in api or 'href="infer.html#pyrocg.infer.CGModel"' in api
    assert ":class:`" not in api and ":func:`" not in api
    assert 'class="language-pycon' in api or "highlight" in api
    for page in ("index.html", "getting-started.html", "concepts.html", "comparison.html",
                 "benchmarks.html", "tutorials/index.html"):
        assert (site / page).is_file(), page
    tutorials = sorted((ROOT / "tutorials").glob("[0-9]*.py"))
    for path in tutorials:
        assert (site / "tutorials" / f"{path.stem}.html").is_file(), path.name


@pytest.mark.parametrize("reference", ["[`X`][pyrocg.nodes.NoSuchNode]", "::: pyrocg.nodes.NoSuchNode"])
def test_missing_symbol_fails_strict_build(tmp_path, reference):
    _need_mkdocs()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(f"# Home\n\n[`BinaryNode`][pyrocg.nodes.BinaryNode]\n\n{reference}\n")
    (docs / "api.md").write_text("::: pyrocg.nodes.BinaryNode\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(textwrap.dedent(f"""\
        site_name: t
        docs_dir: {docs}
        strict: true
        plugins:
          - autorefs
          - mkdocstrings:
              handlers:
                python:
                  paths: [{ROOT}]
                  options:
                    docstring_style: sphinx
        """))
    result = _build(config, tmp_path / "site")
    assert result.returncode != 0
    assert "NoSuchNode" in result.stdout + result.stderr


# The pages written for the site run as written, in order, each in one namespace
# (core/inference/pyro/diagnostics/regression/structured are executed by their own tests).
EXECUTED_PAGES = ["index.md", "getting-started.md", "concepts.md", "modes/index.md",
                  "modes/feedforward.md", "modes/pcff.md", "modes/mc-dropout.md",
                  "modes/ancestral.md", "bayesian-weights.md", "gpu.md", "reliability.md"]


@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_site_page_examples_run(page, tmp_path, monkeypatch):
    import re

    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    path = ROOT / "docs" / page
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
    namespace: dict = {"__name__": "__main__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{path}[block {i}]", "exec"), namespace)
        except Exception as err:  # name the block that failed
            raise AssertionError(f"{page} block {i} failed: {err!r}") from err
