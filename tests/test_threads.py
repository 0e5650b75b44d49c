"""The suite's own set-up: pytest-xdist workers do not oversubscribe the cores."""

import os

import pytest
import torch


@pytest.mark.skipif(os.environ.get("PYTEST_XDIST_WORKER") is None, reason="not under xdist")
def test_xdist_worker_uses_one_torch_thread():
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"
