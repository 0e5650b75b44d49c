"""docs/diagnostics.md: its Python examples run in order, as written."""

import re
from pathlib import Path

import matplotlib
import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md"


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto:UserWarning")
@pytest.mark.filterwarnings("ignore:For one or more samples the posterior variance:UserWarning")
def test_diagnostics_page_runs(capsys):
    matplotlib.use("Agg")
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{PAGE}[block {i}]", "exec"), namespace)
        except Exception as err:  # name the block that failed
            raise AssertionError(f"diagnostics.md block {i} failed: {err!r}") from err
    out = capsys.readouterr().out
    assert "posterior_predictive" in out and "'reliability.png'" in out
