"""Threads: fastla's count reaches numba in every calling thread and goes back afterwards,
threadpoolctl caps fastla, concurrent callers split the threads, OMP_NUM_THREADS caps the default,
a fork after GNU OpenMP started falls back to NumPy, and every op gives the same bits at any
thread count."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastla
from fastla import _jit
from tests.test_config import run_python

needs_jit = pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs numba with JIT enabled")
TOP = _jit.max_threads()


def numba_threads_inside_a_call():
    """numba's thread count on this thread while a fastla kernel call runs."""
    return _jit.run_parallel(lambda: _jit.numba.get_num_threads())


@needs_jit
def test_the_count_reaches_numba_in_new_threads_and_goes_back_after_the_call():
    """numba's count is thread-local: fastla sets its own for each call, then restores the
    thread's, so fastla's setting never leaks into the caller's own Numba code."""
    fastla.set_num_threads(1)
    seen = []

    def work():
        seen.append(numba_threads_inside_a_call())
        seen.append(_jit.numba.get_num_threads())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [1, TOP]
    if TOP > 1:
        fastla.set_num_threads(TOP)
        _jit.numba.set_num_threads(1)  # the user's own setting on this thread
        try:
            assert numba_threads_inside_a_call() == TOP
            assert _jit.numba.get_num_threads() == 1
        finally:
            _jit.numba.set_num_threads(TOP)


def test_set_num_threads_none_goes_back_to_the_default():
    fastla.set_num_threads(1)
    fastla.set_num_threads(None)
    assert _jit.configured_num_threads() is None
    assert fastla.get_num_threads() == _jit.default_num_threads()


@needs_jit
def test_threadpool_limits_caps_fastla_and_restores_it():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    info = [d for d in threadpoolctl.threadpool_info() if d["user_api"] == "fastla"]
    assert len(info) == 1 and info[0]["num_threads"] == fastla.get_num_threads()
    before = fastla.get_num_threads()
    with threadpoolctl.threadpool_limits(1):
        assert fastla.get_num_threads() == 1
        assert numba_threads_inside_a_call() == 1
    assert fastla.get_num_threads() == before
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert fastla.get_num_threads() == before
    with threadpoolctl.threadpool_limits(TOP + 7, user_api="fastla"):  # clamped, never an error
        assert fastla.get_num_threads() == TOP


def test_blas_limit_caps_blas_only_and_restores_it():
    """The cached-controller cap power iteration uses around its small BLAS steps."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fastla import _threads

    # the BLAS libraries loaded when the controller was made (NumPy's, loaded before fastla): one
    # loaded later (SciPy's own OpenBLAS, by a SciPy call earlier in this worker) is not among them
    known = {c.filepath for c in _threads._controller().lib_controllers if c.user_api == "blas"}

    def blas_threads():
        info = threadpoolctl.threadpool_info()
        return [d["num_threads"] for d in info if d["user_api"] == "blas" and d["filepath"] in known]

    before, fastla_before = blas_threads(), fastla.get_num_threads()
    assert before, "NumPy's BLAS is not seen by threadpoolctl"
    for _ in range(2):  # the controller is made once and serves again
        with _threads.blas_limit(1):
            assert blas_threads() == [1] * len(before)
            assert fastla.get_num_threads() == fastla_before
        assert blas_threads() == before


@needs_jit
@pytest.mark.skipif(TOP < 2, reason="needs 2 threads")
def test_python_threads_calling_at_once_split_the_threads():
    """Two Python threads inside fastla kernels at once (a thread pool, Dask's threaded scheduler)
    each get half the threads rather than all of them (2 x oversubscription)."""
    barrier = threading.Barrier(2, timeout=60)
    seen = []

    def kernel():
        barrier.wait()  # both calls are inside run_parallel now
        return _jit.numba.get_num_threads()

    def work():
        seen.append(_jit.run_parallel(kernel))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen)[0] == TOP // 2  # the second caller took its share
    assert numba_threads_inside_a_call() == fastla.get_num_threads()  # alone again: all of them


def test_omp_num_threads_caps_the_default_and_numba_num_threads_wins():
    code = "import fastla; print(fastla.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    r = run_python(code, **{**env, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1"]
    if TOP > 1:  # an explicit NUMBA_NUM_THREADS is numba's own setting and is honoured
        r = run_python(code, **{**env, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": str(TOP)})
        assert r.stdout.split() == [str(TOP)], r.stderr


def test_a_cpu_quota_caps_the_default_and_numba_num_threads_wins(monkeypatch):
    """A container's CPU quota caps the default count, rounded up (1.5 CPUs: 2 threads); an
    explicit ``NUMBA_NUM_THREADS`` is still honoured."""
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(_jit, "max_threads", lambda: 8)
    try:
        for quota, expect in ((None, 8), (1.0, 1), (1.5, 2), (0.5, 1), (16.0, 8)):
            monkeypatch.setattr(_jit, "usable_cpus", lambda q=quota: 8 if q is None else min(8, q))
            _jit.default_num_threads.cache_clear()
            assert _jit.default_num_threads() == expect, quota
        monkeypatch.setenv("NUMBA_NUM_THREADS", "8")
        _jit.default_num_threads.cache_clear()
        assert _jit.default_num_threads() == 8
    finally:
        monkeypatch.undo()
        _jit.default_num_threads.cache_clear()


def test_preload_tbb_loads_only_a_library_it_finds(monkeypatch, tmp_path):
    """``_jit._preload_tbb`` loads the library :func:`fastla._jit._tbb_library` finds (where the
    ``tbb`` wheel put it) with ``RTLD_GLOBAL``, and reports False, never raising, where there is
    none, where it does not load, or off Linux."""
    monkeypatch.setattr(_jit.sys, "platform", "linux")
    monkeypatch.setattr(_jit, "_tbb_library", lambda: None)
    assert _jit._preload_tbb() is False  # no library
    path = str(tmp_path / _jit._TBB_LIBRARY)
    monkeypatch.setattr(_jit, "_tbb_library", lambda: path)
    loaded = []
    monkeypatch.setattr(_jit.ctypes, "CDLL", lambda path, mode: loaded.append((path, mode)))
    assert _jit._preload_tbb() is True
    assert loaded == [(path, _jit.ctypes.RTLD_GLOBAL)]

    def fails(path, mode):
        raise OSError("invalid ELF header")

    monkeypatch.setattr(_jit.ctypes, "CDLL", fails)
    assert _jit._preload_tbb() is False
    monkeypatch.setattr(_jit.sys, "platform", "darwin")
    assert _jit._preload_tbb() is False


def test_the_tbb_library_is_found_by_prefix_then_by_the_wheels_record(monkeypatch, tmp_path):
    """``_jit._tbb_library``: ``<prefix>/lib/libtbb.so.12`` first, else the file the ``tbb``
    distribution's record lists (a ``pip install --user`` puts it under ``~/.local/lib``), else None."""
    from importlib import metadata

    monkeypatch.setattr(_jit.sys, "prefix", str(tmp_path / "env"))
    monkeypatch.setattr(_jit.sys, "base_prefix", str(tmp_path / "env"))
    user = tmp_path / "user" / "lib"
    user.mkdir(parents=True)
    (user / _jit._TBB_LIBRARY).write_text("")

    class File:
        name = _jit._TBB_LIBRARY

        def locate(self):
            return user / _jit._TBB_LIBRARY

    class Dist:
        files = (File(),)

    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())
    assert _jit._tbb_library() == str(user / _jit._TBB_LIBRARY)
    (tmp_path / "env" / "lib").mkdir(parents=True)
    (tmp_path / "env" / "lib" / _jit._TBB_LIBRARY).write_text("")
    assert _jit._tbb_library() == str(tmp_path / "env" / "lib" / _jit._TBB_LIBRARY)

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    (tmp_path / "env" / "lib" / _jit._TBB_LIBRARY).unlink()
    monkeypatch.setattr(metadata, "distribution", missing)
    assert _jit._tbb_library() is None


def _tbb_installed():
    from importlib import metadata

    try:
        metadata.distribution("tbb")
    except metadata.PackageNotFoundError:
        return False
    return True


@needs_jit
@pytest.mark.skipif(not _tbb_installed(), reason="the tbb package is not installed")
@pytest.mark.skipif(_jit.usable_cpus() < 2, reason="one CPU: fastla does not pick TBB there")
def test_kernels_run_on_numbas_tbb_layer_where_tbb_is_installed():
    """With the ``tbb`` dependency installed (Linux x86-64), fastla's parallel kernels run on
    Numba's TBB layer, whose idle threads give the cores back to BLAS's (README, "Threads"): its
    runtime sits outside the loader's path, and fastla loads it before Numba looks for it."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    code = (
        "import numpy as np, fastla, numba; "
        "fastla.softmax(np.ones((512, 512)), backend='numba'); print(numba.threading_layer())"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tbb"]


@needs_jit
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_a_process_on_one_cpu_exits_after_a_kernel_ran_on_another_python_thread():
    """A process limited to one CPU (here its affinity; a container's CPU quota counts the same)
    whose first kernel runs on a ``threading.Thread`` exits: on Numba's TBB layer, with no worker
    thread to run it, the task the layer's start-up handed its task group on that thread was waited
    for at interpreter exit, forever. fastla picks another layer there (``_jit.usable_cpus``)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "import threading, numpy as np, fastla, numba\n"
        "out = []\n"
        "def work():\n"
        "    out.append(fastla.softmax(np.ones((4, 10)), backend='numba')[0, 0])\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n"
        "print(numba.threading_layer(), out[0])\n"
    )
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the process did not exit (printed {e.stdout!r})")
    assert r.returncode == 0, r.stderr
    layer, value = r.stdout.split()
    assert layer != "tbb" and float(value) == pytest.approx(0.1)


def test_the_cpu_quota_is_read_from_cgroup_v2_then_v1(tmp_path):
    """``_jit._cpu_quota``: the process's own cgroup's ``cpu.max`` (v2) or cfs quota and period
    (v1), else the mount's root; "max" or a negative quota is no limit; nothing readable is None."""
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    quota = _jit._cpu_quota
    proc.write_text("0::/user/app\n")
    assert quota(str(root), str(proc)) is None
    (root / "user" / "app").mkdir(parents=True)
    (root / "user" / "app" / "cpu.max").write_text("150000 100000\n")
    (root / "cpu.max").write_text("max 100000\n")
    assert quota(str(root), str(proc)) == 1.5
    (root / "user" / "app" / "cpu.max").unlink()
    assert quota(str(root), str(proc)) is None  # the root's "max"
    v1 = root / "cpu,cpuacct" / "job"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:memory:/job\n1:cpu,cpuacct:/job\n")
    assert quota(str(root), str(proc)) == 1.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert quota(str(root), str(proc)) is None
    assert quota(str(tmp_path / "none"), str(tmp_path / "missing")) is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(_jit.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(_jit.sys, "platform", "linux")
    monkeypatch.setattr(_jit, "_cpu_quota", lambda: None)
    assert _jit.usable_cpus() == 4
    monkeypatch.setattr(_jit, "_cpu_quota", lambda: 1.0)
    assert _jit.usable_cpus() == 1.0
    monkeypatch.setattr(_jit, "_cpu_quota", lambda: 16.0)
    assert _jit.usable_cpus() == 4


@needs_jit
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_after_the_threads_started_works_and_never_hangs(rng):
    a = rng.standard_normal((64, 8, 8))
    expect = np.matmul(a, a)
    fastla.matmul(a, a, backend="numba")  # the threading layer runs now
    # and the worker threads that split a stack of medium systems (a forked child has none)
    from fastla import lu

    n = lu.SMALL_N + 8
    sa = rng.standard_normal((-(-lu.AUTO_RULE["threaded_min_work"] // n**3) + 1, n, n)) + 3 * np.eye(n)
    sb = rng.standard_normal((*sa.shape[:2], 1))
    solved = fastla.solve(sa, sb, backend="numba")
    unsafe = _jit.forked_layer_is_unsafe()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        code = 1
        try:
            got = fastla.matmul(a, a)  # auto: the compiled kernel, or NumPy after an unsafe fork
            forced = "ran"
            try:
                fastla.matmul(a, a, backend="numba")
            except fastla.BackendUnavailable as exc:
                forced = "fork" if "fork" in str(exc) else repr(exc)
            ok = np.allclose(got, expect) and np.array_equal(fastla.solve(sa, sb), solved)
            os.write(write, f"{ok} {forced}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    report = os.read(read, 200).decode()
    os.close(read)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, report)
    assert report == ("True fork" if unsafe else "True ran")


# ----------------------------------------------------------------- same bits at any thread count


def determinism_cases(dt):
    """Every op at sizes that take its parallel, partitioned paths."""
    r = np.random.default_rng(0)

    def f(*s):
        return r.standard_normal(s).astype(dt)

    a, b = f(300, 300), f(300, 200)
    well = f(300, 300) + 300 * np.eye(300, dtype=dt)
    stack = f(5000, 4, 4) + 4 * np.eye(4, dtype=dt)
    q, k, v = f(4, 257, 64), f(4, 300, 64), f(4, 300, 64)
    x, y = f(2000, 64), f(3000, 64)
    logits, labels = f(4000, 50), r.integers(0, 50, 4000)
    sym = a @ a.T
    c = f(600, 600)
    sym3 = c @ c.T  # equal to its transpose: one triangle read in 3 row blocks (2 tasks)
    v0 = f(300, 8)  # an 8-wide start block: the wide-block product (row bands summed)
    # not symmetric, one dominant eigenvalue: power iteration's fused matrix-vector pass (sums of
    # v.Av and |Av|^2 over row blocks)
    general = np.diag(np.linspace(1, 2, 300)).astype(dt) + f(300, 300) / 100
    general[0, 0] = 4

    def flat(*parts):
        return np.concatenate([np.ravel(np.asarray(p, dtype=np.float64)) for p in parts])

    return {
        "matmul": lambda: fastla.matmul(a, b),
        "matmul stack": lambda: fastla.matmul(stack, stack),
        "solve": lambda: fastla.solve(well, b),
        "solve stack": lambda: fastla.solve(stack, stack[:, :, :1]),
        "lu_factor": lambda: flat(*fastla.lu_factor(well)),
        "softmax": lambda: fastla.softmax(logits),
        "softmax axis 0": lambda: fastla.softmax(logits, axis=0),
        "log_softmax": lambda: fastla.log_softmax(logits),
        "cross_entropy": lambda: flat(fastla.cross_entropy(logits, labels)),
        "cross_entropy none": lambda: fastla.cross_entropy(logits, labels, reduction="none"),
        "attention": lambda: fastla.scaled_dot_product_attention(q, k, v),
        "cosine_similarity": lambda: fastla.cosine_similarity(x, y),
        "cosine_topk": lambda: flat(*fastla.cosine_topk(x, y, 10)),
        "power_iteration": lambda: flat(*fastla.power_iteration(sym, seed=0)),
        "power_iteration k=8": lambda: flat(*fastla.power_iteration(sym, 8, seed=0)),
        "power_iteration block 8": lambda: flat(*fastla.power_iteration(sym, 8, v0=v0)),
        "power_iteration one triangle": lambda: flat(*fastla.power_iteration(sym3, 4, seed=0)),
        "power_iteration one triangle k=1": lambda: flat(*fastla.power_iteration(sym3, seed=0)),
        "power_iteration non-symmetric": lambda: flat(*fastla.power_iteration(general, seed=0)),
    }


def results_at_each_thread_count(dt, counts):
    """{case: [result bytes at each thread count]} with backend numba."""
    out = {}
    with fastla.backend("numba"):
        for name, fn in determinism_cases(dt).items():
            runs = []
            for n in counts:
                fastla.set_num_threads(n)
                runs.append(np.ascontiguousarray(fn()).tobytes())
            out[name] = runs
    return out


@needs_jit
@pytest.mark.slow
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_every_op_gives_the_same_bits_at_any_thread_count(dt):
    runs = results_at_each_thread_count(dt, range(1, TOP + 1))
    differ = [name for name, r in runs.items() if any(x != r[0] for x in r[1:])]
    assert not differ, f"results depend on the thread count: {differ}"


@needs_jit
@pytest.mark.slow
def test_same_bits_at_uneven_thread_counts():
    """3 threads (uneven partitions) against 1, in a process numba started with 3."""
    code = """
    import numpy as np
    from tests.test_threads import results_at_each_thread_count
    for dt in (np.float32, np.float64):
        for name, r in results_at_each_thread_count(dt, (1, 3)).items():
            print(np.dtype(dt).name, name.replace(" ", "_"), r[0] == r[1])
    """
    r = run_python(code, NUMBA_NUM_THREADS="3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 * len(determinism_cases(np.float64)), r.stdout
    assert [x for x in lines if not x.endswith("True")] == []
