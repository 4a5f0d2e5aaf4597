import ctypes
import os
import sys
import time

import numpy as np
import pytest

# The suite checks auto against the shipped thresholds: a profile that `python -m fastla tune` wrote
# on this machine must not change what the tests expect (tests/test_profile.py sets its own).
os.environ["FASTLA_PROFILE"] = "off"
# ... nor must whether an op's kernels were compiled or cached before (fastla/_first_use.py: auto
# runs NumPy until its calls have paid for their compile): the suite's auto compiles them at its
# first call; tests/test_first_use.py tests the default. In the environment, so that the processes
# the tests start (examples, dask workers) do the same.
os.environ["FASTLA_FIRST_CALL"] = "compile"

import fastla
from tests.helpers import DTYPES, LAYOUTS

#: glibc's ``M_PERTURB`` (``mallopt``): memory malloc hands out is filled with the complement of this
#: byte and freed memory with the byte itself. A kernel that leaves elements of a fresh result
#: unwritten then shows garbage (0xA5A5... reads as 1.8e127 in float64, -2.9e-16 in float32), not
#: the right values an earlier result left in the same memory: a test that ran the NumPy impl,
#: freed its result, then ran a compiled one whose result landed in the same block passed with a
#: middle-axis softmax task that computed one block of its group. NumPy keeps arrays under 1 KiB in
#: a cache of its own (not perturbed), and large ones come from fresh, zeroed pages.
MALLOC_PERTURB = 0xA5


def _perturb_malloc():
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).mallopt(-6, MALLOC_PERTURB)  # M_PERTURB = -6 (glibc's malloc.h)
        except (OSError, AttributeError):  # another C library (musl has no mallopt)
            pass


_perturb_malloc()


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
    """Tests that change the global backend or thread count must not leak them into other tests;
    nor the stacks auto has learnt to call directly (``fastla.matmul._LEAN_STACKS``: a test that
    fakes a per-size kernel's state must see the path that state takes), nor the verdicts of the
    fast path's rule (``fastla.matmul._VERDICTS``: a test that fakes the host's facts must see the
    rule decide on them)."""
    sys.modules["fastla.matmul"]._LEAN_STACKS.clear()
    sys.modules["fastla.matmul"]._VERDICTS.clear()
    before = fastla.get_backend()
    threads = fastla._jit.configured_num_threads()
    yield
    fastla.set_backend(before)
    fastla.set_num_threads(threads)


_WARMUP = {}
_SESSION_START = time.perf_counter()  # conftest is imported as the session starts
#: warm up only for a run this large (the whole suite); a few tests compile less than a warm-up does
WARMUP_MIN_TESTS = 700


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_node_collection_finished(node, ids):
    """With pytest-xdist workers (``-n N``) on the whole suite, fill the kernel cache once, N
    processes at a time, before the first test is sent to a worker: otherwise each worker compiles
    the same kernels itself. ``FASTLA_TEST_WARMUP=0`` skips it; with a warm cache it takes seconds."""
    from fastla import _jit

    if _WARMUP or len(ids) < WARMUP_MIN_TESTS or os.environ.get("FASTLA_TEST_WARMUP") == "0":
        return
    _WARMUP["start"] = time.perf_counter()
    if not (_jit.JIT_ENABLED and _jit.CACHE):
        _WARMUP["seconds"] = 0.0
        return
    workers = node.config.getoption("numprocesses", None)
    fastla.warmup(jobs=workers if isinstance(workers, int) else None)
    _WARMUP["seconds"] = time.perf_counter() - _WARMUP["start"]


def pytest_terminal_summary(terminalreporter):
    if _WARMUP.get("seconds"):
        total = time.perf_counter() - _SESSION_START
        terminalreporter.write_line(
            f"fastla: kernel warm-up (compiling into the cache) took {_WARMUP['seconds']:.0f} s of this "
            f"session's {total:.0f} s ({100 * _WARMUP['seconds'] / total:.0f}%)"
        )


#: test files whose tests share compiled user functions (plain ``@njit`` code calling
#: ``fastla.kernels``, compiled per process): all on one pytest-xdist worker
ONE_WORKER_FILES = ("tests/test_kernels.py",)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """``pytest -n 2`` keeps each file of :data:`ONE_WORKER_FILES` on one worker and spreads the
    other tests one at a time, as the default ``load`` does. Grouped here by the test's file, on the
    controller: xdist's own ``loadgroup`` tags each test's node id with its ``xdist_group`` on the
    worker (``item._nodeid``), which pytest 9.2's node ids no longer read, so the groups were lost
    and tests/test_kernels.py's user functions compiled on both workers. Not an ``addopts`` entry:
    ``--dist`` there would make pytest-benchmark refuse ``python -m fastla bench``'s run (it
    disables itself under xdist). An explicit ``--dist`` other than the default wins."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            return path if path in ONE_WORKER_FILES else nodeid

    return FileGroupScheduling(config, log)
