"""Fixtures every test shares."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test with one intra-op torch thread.

    Fast on a loaded 2-core machine (OpenMP threads that outnumber free cores spin), and the
    same numerics as the subprocesses the tests start with ``OMP_NUM_THREADS=1``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
