"""auto and the kernels compiled per size (``fastla._first_use``): NumPy until a size's kernel pays
for its compile, the kernel at once where it is compiled or cached."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import scipy.special

import fastla
from fastla import _first_use, _gemm_kernels, _jit, _lane_solver, _warmup, lu
from tests.test_warmup import ROOT, _python  # a new process on this process's cache

needs_jit = pytest.mark.skipif(not _jit.JIT_ENABLED, reason="a kernel to compile")


def _not_compiled(monkeypatch, sizes, seconds):
    """``sizes`` with no kernel compiled or cached, its state fresh, compiling estimated at
    ``seconds``: the break-even comes after that much NumPy time."""
    monkeypatch.setattr(sizes, "_compiled", lambda key: False)
    monkeypatch.setattr(sizes, "_cached", lambda key: False)
    monkeypatch.setattr(sizes, "estimate", lambda key: seconds)
    monkeypatch.setattr(sizes, "_ready", set())
    monkeypatch.setattr(sizes, "_probed", set())
    monkeypatch.setattr(sizes, "spent", {})


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@needs_jit
def test_a_stack_of_a_new_size_is_solved_by_numpy_until_the_break_even(monkeypatch, rng):
    """The fast path and the full path both: NumPy while the NumPy calls of this size have taken
    less time than the estimate, each call's time charged to the size; then the compiled kernel.
    The answers are NumPy's, then the kernel's (the same to rounding); explain says each step."""
    _not_compiled(monkeypatch, _lane_solver.STEPS, 0.05)
    a = rng.standard_normal((300, 5, 5)) + 5 * np.eye(5)
    b = rng.standard_normal((300, 5, 2))
    key = _lane_solver.step_key(np.dtype(np.float64), 5, 2)
    numpy_calls = _spy(monkeypatch, lu, "_solve_numpy")
    name, reason = fastla.explain("solve", a, b)
    assert name == "numpy" and "neither compiled nor cached" in reason and "0.000 s so far" in reason, reason
    calls = 0
    while fastla.explain("solve", a, b)[0] == "numpy":
        np.testing.assert_allclose(fastla.solve(a, b), np.linalg.solve(a, b), rtol=1e-12, atol=1e-12)
        calls += 1
        assert calls < 10_000
    assert len(numpy_calls) == calls >= 1  # every call until then ran NumPy, timed
    assert _lane_solver.STEPS.spent[key] >= 0.05
    assert "beats a LAPACK call per system" in fastla.explain("solve", a, b)[1]
    ran = _spy(monkeypatch, lu, "_solve_numba")
    np.testing.assert_allclose(fastla.solve(a, b), np.linalg.solve(a, b), rtol=1e-10, atol=1e-10)
    assert ran == ["_solve_numba"]
    # the full path (a right-hand side broadcast from one (n, k) block) charges its NumPy calls too
    _not_compiled(monkeypatch, _lane_solver.STEPS, 1e9)
    fastla.solve(a, b[0])
    assert _lane_solver.STEPS.spent[key] > 0


@needs_jit
def test_a_stack_of_new_small_products_runs_numpy_until_the_break_even(monkeypatch, rng):
    """The same for the per-size stacked product (5x5 here: not a vector-tile shape)."""
    _not_compiled(monkeypatch, _gemm_kernels.FIXED, 0.02)
    module = sys.modules["fastla.matmul"]
    a = rng.standard_normal((400, 5, 5))
    key = _gemm_kernels.stack_key(5, 5, 5, a.dtype)
    assert _gemm_kernels._runs_fixed(5, 5, 5, 8) and not _gemm_kernels._runs_fixed(4, 4, 4, 8)  # 4x4: tiles
    numpy_calls = _spy(monkeypatch, module, "_matmul_numpy")
    assert "neither compiled nor cached" in fastla.explain("matmul", a, a)[1]
    calls = 0
    while fastla.explain("matmul", a, a)[0] == "numpy":
        np.testing.assert_allclose(fastla.matmul(a, a), a @ a, rtol=1e-12)
        calls += 1
        assert calls < 10_000
    assert len(numpy_calls) == calls >= 1 and _gemm_kernels.FIXED.spent[key] >= 0.02
    np.testing.assert_allclose(fastla.matmul(a, a), a @ a, rtol=1e-12)
    assert len(numpy_calls) == calls  # the kernel ran


@needs_jit
def test_forcing_numba_compiles_at_once(monkeypatch, rng):
    _not_compiled(monkeypatch, _lane_solver.STEPS, 1e9)
    a = rng.standard_normal((100, 3, 3)) + 3 * np.eye(3)
    b = rng.standard_normal((100, 3, 1))
    assert fastla.explain("solve", a, b)[0] == "numpy"
    assert fastla.explain("solve", a, b, backend="numba")[0] == "numba"
    ran = _spy(monkeypatch, lu, "_solve_numba")
    fastla.solve(a, b, backend="numba")
    assert ran == ["_solve_numba"]


def test_with_the_jit_off_or_the_wait_switched_off_nothing_waits(monkeypatch):
    sizes = _first_use.Sizes("test kernel", lambda key: False, lambda key: False, lambda key: 1e9)
    assert sizes.ready("k") is (not _jit.JIT_ENABLED)
    monkeypatch.setattr(_first_use, "WAIT_FOR_BREAK_EVEN", False)
    assert sizes.ready("other") and sizes.wins("other")


def test_the_disk_probe_reads_an_index_once_per_size_and_says_no_where_it_cannot_tell():
    probes = []

    def cached(key):
        probes.append(key)
        return key == "on disk"

    sizes = _first_use.Sizes("test kernel", lambda key: False, cached, lambda key: 1.0)
    if _jit.JIT_ENABLED:
        assert not sizes.ready("new") and not sizes.ready("new")
        assert sizes.ready("on disk") and sizes.ready("on disk")
        assert probes == ["new", "on disk"]
        sizes.run_numpy("new", lambda: None)
        assert 0 < sizes.spent["new"] < 1.0 and not sizes.wins("new")
    assert not _first_use.in_disk_cache(object(), ())  # no cache to read


@needs_jit
@pytest.mark.skipif(not _jit.CACHE, reason="on-disk cache off (a codegen override is set)")
def test_a_size_whose_kernel_is_cached_runs_it_from_the_first_call():
    """A process that compiled a size's kernels (forced) leaves them in the cache; the next process
    finds them there and runs them from its first auto call (the solver's step and the product)."""
    code = """
        import numpy as np, fastla
        a = np.ones((300, 6, 6)) + 6 * np.eye(6)
        b = np.ones((300, 6, 2))
        p = np.ones((400, 5, 3))
        q = np.ones((400, 3, 6))
        print(fastla.explain("solve", a, b)[0], fastla.explain("matmul", p, q)[0])
        fastla.solve(a, b, backend="numba")
        fastla.matmul(p, q, backend="numba")
        """
    _python(code, None)
    assert _python(code, None).stdout.strip().splitlines()[-1] == "numba numba"


# --------------------------------------------------------------------------- an op's own kernels


def _kernels_not_compiled(monkeypatch, seconds, background=False):
    """auto waiting for an op's kernels (the default outside this suite, whose conftest sets
    FASTLA_FIRST_CALL=compile), none of them compiled or cached, compiling estimated at ``seconds``;
    at the break-even compiled in the call, or with ``background`` by the background job."""
    monkeypatch.setattr(_first_use, "WAIT_FOR_KERNELS", True)
    monkeypatch.setattr(_first_use, "COMPILE_IN_BACKGROUND", background)
    monkeypatch.setattr(_first_use, "_RAN", set())
    _not_compiled(monkeypatch, _first_use.KERNELS, seconds)
    monkeypatch.setattr(_first_use.KERNELS, "_compiled", lambda key: key in _first_use._RAN)  # the real test
    monkeypatch.setattr(_first_use.KERNELS._elsewhere, "jobs", {})


@needs_jit
def test_an_ops_kernels_run_numpy_until_the_break_even(monkeypatch, rng):
    """softmax's fast path: NumPy while its calls have taken less than the estimate, each call
    charged to the op and dtype; then the compiled kernels, recorded as run; explain says each step."""
    _kernels_not_compiled(monkeypatch, 0.02)
    module = sys.modules["fastla.softmax"]
    x = rng.standard_normal((300, 200)).astype(np.float32)
    key = _first_use.kernel_key("softmax", x.dtype)
    expect = scipy.special.softmax(x, axis=-1)
    numpy_calls = _spy(monkeypatch, module, "_numpy_impl")
    name, reason = fastla.explain("softmax", x)
    assert name == "numpy" and reason.startswith("softmax of float32 arrays: the compiled kernels"), reason
    assert "0.000 s so far" in reason
    calls = 0
    while fastla.explain("softmax", x)[0] == "numpy":
        np.testing.assert_allclose(fastla.softmax(x), expect, rtol=1e-6)
        calls += 1
        assert calls < 10_000
    assert len(numpy_calls) == calls >= 1
    assert _first_use.KERNELS.spent[key] >= 0.02 and key not in _first_use._RAN
    ran = _spy(monkeypatch, module, "_numba_impl")
    np.testing.assert_allclose(fastla.softmax(x), expect, rtol=1e-5)
    assert ran == ["_numba_impl"] and key in _first_use._RAN
    # float64 is a key of its own: NumPy again
    assert fastla.explain("softmax", x.astype(np.float64))[0] == "numpy"


@needs_jit
def test_the_full_path_and_other_ops_wait_too_and_forcing_compiles_at_once(monkeypatch, rng):
    _kernels_not_compiled(monkeypatch, 1e9)
    logits = rng.standard_normal((200, 30))
    target = rng.integers(0, 30, 200)
    weight = rng.random(30)
    key = _first_use.kernel_key("cross_entropy", logits.dtype)
    expect = fastla.cross_entropy(logits, target, weight=weight, backend="numpy")
    # the full path (a class weight): the registry's rule, then the op's kernels
    assert (
        "cross_entropy of float64 arrays" in fastla.explain("cross_entropy", logits, target, weight=weight)[1]
    )
    np.testing.assert_allclose(fastla.cross_entropy(logits, target, weight=weight), expect, rtol=1e-12)
    assert _first_use.KERNELS.spent[key] > 0
    spent = _first_use.KERNELS.spent[key]
    np.testing.assert_allclose(
        fastla.cross_entropy(logits, target), fastla.cross_entropy(logits, target, backend="numpy")
    )
    assert _first_use.KERNELS.spent[key] > spent  # the fast path's call, charged as well
    # every op whose rule picks its kernels waits for them; a forced call compiles and records them
    for op, args in (
        ("cosine_similarity", (rng.standard_normal((600, 64)),)),
        ("scaled_dot_product_attention", tuple(rng.standard_normal((1, 2, 256, 32)) for _ in range(3))),
    ):
        assert fastla.explain(op, *args)[0] == "numpy", op
        assert fastla.explain(op, *args, backend="numba")[0] == "numba"
    fastla.cross_entropy(logits, target, backend="numba")
    assert key in _first_use._RAN and fastla.explain("cross_entropy", logits, target)[0] == "numba"


def _fake_background_warmup(monkeypatch, load, markers):
    """``fastla.warmup`` replaced by a background job held until ``release`` is set, which then
    runs ``load()`` (the real job's loading of the kernels here) unless it is None (a failed job);
    the kernels count as cached, their run markers going to the folder ``markers``. Returns (the
    calls' arguments, release)."""
    calls, release = [], threading.Event()

    def warmup(ops, dtypes, *, background, jobs, progress):
        calls.append((ops, dtypes, background, jobs, progress))

        def job():
            release.wait(60)
            if load is not None:
                load()

        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        return thread

    monkeypatch.setattr(_warmup, "warmup", warmup)
    monkeypatch.setattr(_first_use, "_marker_dir", lambda: str(markers))  # the kernels are cached
    return calls, release


@needs_jit
def test_at_the_break_even_an_ops_kernels_compile_in_the_background_while_numpy_goes_on(
    monkeypatch, rng, tmp_path
):
    """The default where the kernels are cached: the call that reaches the break-even starts the op's
    warm-up in the background, once (log_softmax shares softmax's); every call runs NumPy until that
    job has loaded the kernels here (explain says so), then the kernels run. No call compiles."""
    _kernels_not_compiled(monkeypatch, 1e-9, background=True)
    module = sys.modules["fastla.softmax"]
    x = rng.standard_normal((300, 200)).astype(np.float32)
    expect = scipy.special.softmax(x, axis=-1)
    key = _first_use.kernel_key("softmax", x.dtype)

    def load():
        fastla.softmax(x, backend="numba")

    calls, release = _fake_background_warmup(monkeypatch, load, tmp_path)
    numpy_calls = _spy(monkeypatch, module, "_numpy_impl")
    np.testing.assert_allclose(fastla.softmax(x), expect, rtol=1e-6)  # reaches the break-even
    assert calls == [(["softmax"], ["float32"], True, 1, False)]
    for _ in range(3):
        name, reason = fastla.explain("softmax", x)
        assert name == "numpy" and "compile in the background meanwhile" in reason, reason
        np.testing.assert_allclose(fastla.softmax(x), expect, rtol=1e-6)
        fastla.log_softmax(x)
    assert len(numpy_calls) == 7 and len(calls) == 1 and key not in _first_use._RAN
    release.set()
    _first_use.KERNELS._elsewhere.jobs[(_warmup.TARGETS["softmax"], "f")].join(60)
    assert key in _first_use._RAN  # loaded (here: compiled) by the job's thread
    ran = _spy(monkeypatch, module, "_numba_impl")
    np.testing.assert_allclose(fastla.softmax(x), expect, rtol=1e-5)
    assert ran == ["_numba_impl"] and len(numpy_calls) == 7


@needs_jit
def test_a_background_job_that_ends_without_the_kernels_leaves_them_to_the_next_call(
    monkeypatch, rng, tmp_path
):
    """A failed job (or one whose calls did not run this path) ends without recording the key: the
    next call compiles the kernels in place, as where nothing runs in the background; where the
    kernels are not cached at all, no job starts."""
    _kernels_not_compiled(monkeypatch, 1e-9, background=True)
    logits = rng.standard_normal((200, 30))
    target = rng.integers(0, 30, 200)
    key = _first_use.kernel_key("cross_entropy", logits.dtype)
    calls, release = _fake_background_warmup(monkeypatch, None, tmp_path)
    fastla.cross_entropy(logits, target)
    assert len(calls) == 1 and fastla.explain("cross_entropy", logits, target)[0] == "numpy"
    release.set()
    _first_use.KERNELS._elsewhere.jobs[(_warmup.TARGETS["cross_entropy"], "d")].join(60)
    assert fastla.explain("cross_entropy", logits, target)[0] == "numba"
    fastla.cross_entropy(logits, target)
    assert key in _first_use._RAN and len(calls) == 1
    monkeypatch.setattr(_first_use, "_marker_dir", lambda: None)  # kernels not cached: compiled in place
    x = rng.standard_normal((300, 200))
    fastla.softmax(x)
    assert len(calls) == 1 and fastla.explain("softmax", x)[0] == "numba"


def _size_jobs_may_start(monkeypatch, markers):
    """The default rule (auto waits for kernels, compiling them in the background), the kernels
    counting as cached, their run markers under ``markers`` (a test's own folder: a relative fake
    folder once put marker files into the working tree): the call at a size's break-even starts its
    job."""
    monkeypatch.setattr(_first_use, "WAIT_FOR_KERNELS", True)
    monkeypatch.setattr(_first_use, "COMPILE_IN_BACKGROUND", True)
    monkeypatch.setattr(_first_use, "_marker_dir", lambda: str(markers))


@needs_jit
def test_at_a_sizes_break_even_its_kernel_compiles_in_another_process_while_numpy_goes_on(
    monkeypatch, rng, tmp_path
):
    """A per-size kernel (a stack of 5x5 products) under the default: the call that reaches the
    size's break-even starts one job, whose process compiles the size into the cache (here: this
    suite's) and whose thread then loads it here; NumPy runs every call meanwhile (explain says
    so), the kernel after."""
    _size_jobs_may_start(monkeypatch, tmp_path)
    fixed = _gemm_kernels.FIXED
    _not_compiled(monkeypatch, fixed, 1e-9)
    monkeypatch.setattr(fixed._elsewhere, "jobs", {})
    loaded, release = [], threading.Event()
    real = _gemm_kernels.compile_stack

    def held(key):  # the thread's load, after the job's process has ended
        release.wait(60)
        real(key)
        loaded.append(key)

    monkeypatch.setattr(_gemm_kernels, "compile_stack", held)
    monkeypatch.setattr(fixed, "_compiled", lambda key: key in loaded)
    module = sys.modules["fastla.matmul"]
    a = rng.standard_normal((400, 5, 5))
    key = _gemm_kernels.stack_key(5, 5, 5, a.dtype)
    numpy_calls = _spy(monkeypatch, module, "_matmul_numpy")
    np.testing.assert_allclose(fastla.matmul(a, a), a @ a, rtol=1e-12)  # reaches the break-even
    assert list(fixed._elsewhere.jobs) == [key]
    for _ in range(3):
        name, reason = fastla.explain("matmul", a, a)
        assert name == "numpy" and "it compiles in the background meanwhile" in reason, reason
        np.testing.assert_allclose(fastla.matmul(a, a), a @ a, rtol=1e-12)
    assert len(numpy_calls) == 4 and not loaded
    release.set()
    job = fixed._elsewhere.jobs[key]
    job.join(120)
    assert job.error is None and loaded == [key]  # the process succeeded, then the thread loaded
    ran = _spy(monkeypatch, module, "_matmul_numba")
    np.testing.assert_allclose(fastla.matmul(a, a), a @ a, rtol=1e-12)
    assert ran == ["_matmul_numba"] and len(numpy_calls) == 4 and list(fixed._elsewhere.jobs) == [key]


@needs_jit
def test_a_size_job_that_fails_says_why_and_none_starts_where_first_calls_compile(monkeypatch, tmp_path):
    """A job whose process fails ends with the error on its thread (the next call past the
    break-even compiles in place); with ``FASTLA_FIRST_CALL=compile`` (this suite's setting) no job
    starts, and a size's kernel compiles in the call that reaches its break-even, as before."""
    _size_jobs_may_start(monkeypatch, tmp_path)
    broken = _first_use.SizeBackground("fastla._lane_solver", "no_such_function")
    monkeypatch.setattr(_first_use, "WAIT_FOR_KERNELS", False)
    broken.start(("d", 5, 1))
    assert broken.jobs == {} and not broken.busy(("d", 5, 1))
    monkeypatch.setattr(_first_use, "WAIT_FOR_KERNELS", True)
    broken.start(("d", 5, 1))
    broken.jobs[("d", 5, 1)].join(120)
    assert "compiling ('d', 5, 1) failed" in str(broken.jobs[("d", 5, 1)].error)
    assert "no_such_function" in str(broken.jobs[("d", 5, 1)].error)
    assert not broken.busy(("d", 5, 1))


def test_a_size_jobs_process_collects_garbage_as_a_compiling_process(monkeypatch, tmp_path):
    """The process a size job starts (fastla's own, compiling only) freezes its heap and collects
    with ``COMPILING_GC_THRESHOLDS`` (``_warmup.compiling_process``); the calling process keeps its
    own collector's settings."""
    import gc
    import os

    _size_jobs_may_start(monkeypatch, tmp_path)
    # the job's process imports tests.helpers from this checkout, wherever pytest was started
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    record = tmp_path / "gc.txt"
    job = _first_use.SizeBackground("tests.helpers", "record_gc")
    job.start((str(record),))
    job.jobs[(str(record),)].join(120)
    assert job.jobs[(str(record),)].error is None
    child, here = record.read_text().splitlines()  # the job's process, then this one's thread
    assert child.split(" ", 1)[1] == f"{_warmup.COMPILING_GC_THRESHOLDS} True"
    assert int(child.split()[0]) != os.getpid() and int(here.split()[0]) == os.getpid()
    assert here.split(" ", 1)[1] == f"{gc.get_threshold()} {gc.get_freeze_count() > 0}"
    assert gc.get_threshold() != _warmup.COMPILING_GC_THRESHOLDS


@needs_jit
@pytest.mark.skipif(not _jit.CACHE, reason="on-disk cache off (a codegen override is set)")
def test_a_fresh_caches_auto_calls_never_compile_in_the_calling_thread(tmp_path):
    """End to end, the default on an empty cache: a loop of cross_entropy calls runs NumPy, then (the
    op's kernels compiled by a process of its own and loaded by the background thread) the kernels,
    and so does a loop of stacked 5x5 products (their per-size kernel, and matmul's own kernels with
    it, compiled by a process of the size's job); then matmul's packed GEMM, for one product (its
    threshold set low: this host's shipped rule may keep BLAS) and for a stack of 100x100 products,
    whose kernels are a first-use key of their own (``matmul.packed``: the runs of the small-product
    kernels above do not count for it); Numba compiles nothing in the thread making the calls."""
    code = """
        import threading, time
        import numpy as np, fastla
        from numba.core import event

        main, here = threading.main_thread(), []

        class Compiles(event.Listener):
            def on_start(self, ev):
                if threading.current_thread() is main:
                    here.append(ev.data["dispatcher"].py_func.__qualname__)

            def on_end(self, ev):
                pass

        event.register("numba:compile", Compiles())

        def loop(op, *args):
            picks, t0 = [], time.monotonic()
            while time.monotonic() - t0 < 300 and (not picks or picks[-1] != "numba"):
                picks.append(fastla.explain(op, *args)[0])
                getattr(fastla, op)(*args)
            return [picks[0], picks[-1]]

        rng = np.random.default_rng(0)
        x = rng.standard_normal((3000, 40)).astype(np.float32)
        s = rng.standard_normal((2000, 5, 5))
        picks = loop("cross_entropy", x, np.zeros(3000, np.int64)) + loop("matmul", s, s)
        import sys
        sys.modules["fastla.matmul"].AUTO_RULE["gemm_min_work"] = 64**3
        big = rng.standard_normal((96, 96))
        stack = rng.standard_normal((16, 100, 100))
        picks += loop("matmul", big, big) + loop("matmul", stack, stack)
        print(*picks, here)
        """
    out = _python(code, tmp_path, {"FASTLA_FIRST_CALL": ""}).stdout.split()
    assert out[:4] == ["numpy", "numba", "numpy", "numba"] and out[8:] == ["[]"], out
    # the packed GEMM's first picks: NumPy while its own job compiles it, or its kernels at once where
    # this cache holds them already
    assert out[4] in ("numpy", "numba") and out[6] in ("numpy", "numba") and out[5] == out[7] == "numba", out


def test_the_marker_is_per_source_cpu_and_numba_and_a_cache_it_cannot_write_is_left_alone(
    monkeypatch, tmp_path
):
    if _first_use._marker_dir() is None:
        pytest.skip("fastla's kernels are not cached here")
    here = _first_use._marker(("softmax", "f"))
    try:
        monkeypatch.setattr(_jit, "package_source_stamp", lambda: "another version")
        _first_use._marker_dir.cache_clear()
        assert _first_use._marker(("softmax", "f")) != here  # a marker never outlives its sources
    finally:
        monkeypatch.undo()
        _first_use._marker_dir.cache_clear()
    assert _first_use._marker(("softmax", "f")) == here
    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setattr(_first_use, "_RAN", set())
    monkeypatch.setattr(_first_use, "_marker", lambda key: str(blocked / "first-use" / "x"))
    _first_use.ran(("softmax", "f"))  # no directory can be made under a file: no error
    assert ("softmax", "f") in _first_use._RAN


@needs_jit
@pytest.mark.skipif(not _jit.CACHE, reason="on-disk cache off (a codegen override is set)")
def test_an_op_that_ran_compiled_runs_compiled_from_a_new_processs_first_call(tmp_path):
    """The default (FASTLA_FIRST_CALL unset): a fresh cache's first auto call runs NumPy; a process
    that ran the op's kernels leaves its marker, and the next process runs them from its first
    call. FASTLA_FIRST_CALL=compile compiles at the first call instead."""
    code = """
        import numpy as np, fastla
        x = np.ones((300, 40), np.float32)
        t = np.zeros(300, np.int64)
        print(fastla.explain("cross_entropy", x, t)[0])
        fastla.cross_entropy(x, t, backend="numba")
        """
    default = {"FASTLA_FIRST_CALL": ""}
    assert _python(code, tmp_path / "a", default).stdout.split()[-1] == "numpy"
    assert _python(code, tmp_path / "a", default).stdout.split()[-1] == "numba"
    explain = code.replace('fastla.cross_entropy(x, t, backend="numba")', "")
    assert _python(explain, tmp_path / "b", {"FASTLA_FIRST_CALL": "compile"}).stdout.split()[-1] == "numba"


def test_every_op_has_a_compile_estimate():
    assert set(fastla.operations()) == {key.split(".")[0] for key in _first_use.KERNEL_SECONDS}
    assert set(fastla.operations()) <= set(_first_use.KERNEL_SECONDS)
    assert all(0.5 <= s <= 10 for s in _first_use.KERNEL_SECONDS.values())


@needs_jit
def test_top_ks_packed_kernel_waits_after_its_streaming_one_ran(monkeypatch, rng):
    """A path that compiles kernels of its own has a key of its own: after the streaming top-k ran,
    a call with enough queries for the packed kernel still runs NumPy first (both paths)."""
    _kernels_not_compiled(monkeypatch, 1e9)
    corpus = rng.standard_normal((3000, 16))
    few, many = corpus[:4], rng.standard_normal((2000, 16))
    fastla.cosine_topk(few, corpus, 3, backend="numba")
    assert ("cosine_topk", "d") in _first_use._RAN and fastla.explain("cosine_topk", few, corpus, 3)[
        0
    ] == "numba"
    name, reason = fastla.explain("cosine_topk", many, corpus, 3)
    assert name == "numpy" and reason.startswith("cosine_topk.packed of float64 arrays"), reason
    s, i = fastla.cosine_topk(many, corpus, 3)  # the fast path: NumPy, charged to the packed key
    assert _first_use.KERNELS.spent[("cosine_topk.packed", "d")] > 0
    s2, i2 = fastla.cosine_topk(many, corpus, 3, backend="numpy")
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_allclose(s, s2, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_packed_gemms_first_use_key_names_the_calls_that_run_it(monkeypatch, dtype):
    """matmul's packed GEMM (one product past SMALL_2D_MAX, a folded stack, a stack's products) is a
    first-use key of its own, ``matmul.packed``: a call runs it exactly when its key names it, on
    the fast path and the full path alike, and the run is recorded under that key (so that a run of
    the small-product kernels never counts as the packed GEMM's: its first ``auto`` call would
    compile it in the calling thread)."""
    matmul = sys.modules["fastla.matmul"]
    ran = []
    monkeypatch.setattr(_gemm_kernels, "gemm", lambda a, b, out: ran.append("gemm"))
    monkeypatch.setattr(_gemm_kernels, "gemm_stack", lambda A, B, C: ran.append("stack"))
    monkeypatch.setattr(_first_use, "_RAN", set())
    monkeypatch.setattr(_first_use, "_marker", lambda key: None)  # the stubs compiled nothing to mark
    cases = [
        ((40, 40), (40, 40)),  # small: a stack of one
        ((49, 20), (20, 8)),  # past SMALL_2D_MAX in one side
        ((0, 70), (70, 5)),  # empty
        ((64,), (64, 64)),  # a 1-D operand
        ((10, 30, 20), (20, 20)),  # a stack folded into one tall product
        ((5, 4, 4), (5, 4, 4)),  # small stacks
        ((3, 32, 32), (3, 32, 32)),  # wide tiles
        ((3, 50, 50), (3, 50, 50)),  # packed products
        ((2, 2, 40, 33), (2, 2, 33, 40)),  # 4-D
        ((40, 33), (3, 33, 40)),  # a broadcast 2-D operand
    ]
    for sa, sb in cases:
        a, b = np.ones(sa, dtype), np.ones(sb, dtype)
        key = matmul._OP.kernel_key(matmul._prepare(a, b, None))
        fast = lambda a=a, b=b: fastla.matmul(a, b, backend="numba")  # noqa: E731
        full = lambda a=a, b=b: matmul._OP.run("numba", matmul._prepare(a, b, None))  # noqa: E731
        for call in (fast, full):
            ran.clear()
            _first_use._RAN.clear()
            call()
            assert (key[0] == "matmul.packed") == bool(ran), (sa, sb, key, ran)
            assert _first_use._RAN == {key}, (sa, sb, _first_use._RAN)
