"""Every tutorial runs top to bottom at test size (``PYROCG_QUICK=1``), asserting its claims,
through the renderer that puts it on the documentation site with its outputs."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9]*.py"))


def _notebook():
    path = ROOT / "docs" / "_gen" / "notebook.py"
    spec = importlib.util.spec_from_file_location("pyrocg_docs_notebook", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


notebook = _notebook()


def test_tutorials_exist():
    assert len(TUTORIALS) >= 5


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs_and_renders(path, monkeypatch):
    monkeypatch.setenv(notebook.SIZE_VARIABLE, "1")
    cells = notebook.parse(path)
    code = [c for c in cells if c.kind == "code"]
    assert cells[0].kind == "markdown" and notebook.title_of(cells)
    assert len(code) >= 3 and any("assert " in c.source for c in code)
    notebook.run(path, cells)
    text, images = notebook.render(cells, path.stem)
    assert sum(bool(c.text.strip()) for c in code) >= 2  # outputs made it onto the page
    assert text.count("```python") == len(code)
    assert all(name in text and png[:4] == b"\x89PNG" for name, png in images.items())


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_is_jupytext_percent(path):
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(path)
    ours = notebook.parse(path)
    assert [c.cell_type for c in nb.cells if c.source.strip()] == [c.kind for c in ours]


def test_parse_rejects_text_before_the_first_cell(tmp_path):
    bad = tmp_path / "t.py"
    bad.write_text("import os\n# %%\nx = 1\n")
    with pytest.raises(ValueError, match="before the first"):
        notebook.parse(bad)


def test_run_captures_output_last_expression_and_figures(tmp_path):
    src = tmp_path / "t.py"
    src.write_text("# %% [markdown]\n# # T\n\n# %%\nprint('a')\n1 + 1\n\n# %%\n"
                   "import matplotlib.pyplot as plt\nplt.plot([0, 1])\n\n# %%\nassert False, 'boom'\n")
    cells = notebook.parse(src)
    assert [c.kind for c in cells] == ["markdown", "code", "code", "code"]
    assert cells[3].lineno == 13
    with pytest.raises(AssertionError, match="boom") as info:
        notebook.run(src, cells)
    assert info.traceback[-1].lineno + 1 == 13  # the tutorial's own line number
    assert cells[1].text == "a\n2\n" and len(cells[2].images) == 1 and not cells[2].text
