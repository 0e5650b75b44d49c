"""Every tutorial runs (quick mode)."""

import runpy
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path, monkeypatch, capsys):
    monkeypatch.setenv("PYROCG_QUICK", "1")
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip()
