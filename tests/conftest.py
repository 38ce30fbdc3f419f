"""Fixtures every test shares."""

import os

import pytest
import torch
from browser import find_chromium


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


@pytest.fixture(scope="module")
def browser_paths():
    """Chromium and chromedriver for the browser tests; a failure names what is missing.

    A browser test that skipped in CI would prove nothing, so a missing browser fails unless
    ``SPML_SKIP_BROWSER=1`` says to skip.
    """
    try:
        return find_chromium()
    except FileNotFoundError as error:
        if os.environ.get("SPML_SKIP_BROWSER") == "1":
            pytest.skip(f"SPML_SKIP_BROWSER=1 and no browser: {error}")
        pytest.fail(f"{error} (or set SPML_SKIP_BROWSER=1 to skip the browser tests)")
