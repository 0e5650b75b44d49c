import os

import pyro
import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no GPU"))]


def pytest_configure(config):
    """Under ``pytest -n K`` every worker gets one intra-op thread, so K workers never
    oversubscribe the cores (torch would otherwise start one thread per core in each worker).
    The environment variables reach subprocesses that tests start (CLI runs, DDP workers)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        torch.set_num_threads(1)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
