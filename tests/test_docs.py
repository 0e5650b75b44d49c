"""The documentation's Python examples run as written (and assert what they claim)."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXECUTED = ["pyro.md"]


@pytest.mark.parametrize("page", EXECUTED)
def test_docs_python_examples_run(page):
    path = DOCS / page
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
    assert blocks, f"{page} has no python example"
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{path}[block {i}]", "exec"), {})
        except Exception as err:  # name the block that failed
            raise AssertionError(f"{page} block {i} failed: {err!r}") from err
