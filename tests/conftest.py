import os
import time

import numpy as np
import pytest

import fastla
from tests.helpers import DTYPES, LAYOUTS


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


@pytest.fixture(params=LAYOUTS)
def layout(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


@pytest.fixture(autouse=True)
def _restore_global_settings():
    """Tests that change the global backend must not leak it into other tests."""
    before = fastla.get_backend()
    yield
    fastla.set_backend(before)


_WARMUP = {}


def pytest_configure(config):
    """With pytest-xdist workers (``-n N``), fill the kernel cache once, N processes at a time, before
    the workers start: otherwise each worker compiles the same kernels itself. ``FASTLA_TEST_WARMUP=0``
    skips it. With a warm cache this takes a few seconds."""
    from fastla import _jit

    workers = getattr(config.option, "numprocesses", None)
    if hasattr(config, "workerinput") or not workers or os.environ.get("FASTLA_TEST_WARMUP") == "0":
        return
    if not (_jit.JIT_ENABLED and _jit.CACHE):
        return
    jobs = workers if isinstance(workers, int) else os.cpu_count()
    t0 = time.perf_counter()
    fastla.warmup(jobs=jobs)
    _WARMUP.update(seconds=time.perf_counter() - t0, start=t0)


def pytest_terminal_summary(terminalreporter):
    if _WARMUP:
        total = time.perf_counter() - _WARMUP["start"]
        terminalreporter.write_line(
            f"fastla: kernel warm-up (compiling into the cache) took {_WARMUP['seconds']:.0f} s of this "
            f"session's {total:.0f} s ({100 * _WARMUP['seconds'] / total:.0f}%)"
        )
