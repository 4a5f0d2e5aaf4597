"""First use: ``fastla.warmup``, the on-disk cache's robustness, and an import that compiles nothing.

Each test that needs a cold cache runs its code in a subprocess with its own ``NUMBA_CACHE_DIR``.
"""

from __future__ import annotations

import glob
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastla
from fastla import _jit, _warmup

needs_jit = pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs the JIT")
needs_cache = pytest.mark.skipif(not _jit.CACHE, reason="on-disk cache off (a codegen override is set)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastla.__file__)))


def _python(code, cache_dir, extra_env=None, cwd=None, check=True):
    """Run ``code`` in a new Python process with ``cache_dir`` as its NUMBA_CACHE_DIR (None: this
    process's cache)."""
    env = {**os.environ, **(extra_env or {})}
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [cwd or ROOT, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=600,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_every_registered_op_has_a_warmup():
    assert set(fastla.operations()) <= set(_warmup.OPS)


def test_warmup_arguments():
    with pytest.raises(ValueError, match="unknown op"):
        fastla.warmup(["nope"], progress=False)
    with pytest.raises(ValueError, match="not compiled"):
        fastla.warmup(["softmax"], ["float16"], progress=False)
    # jobs as the command line's --jobs: 0 or less was taken as "all cores" (-3: one process)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="jobs must be at least 1"):
            fastla.warmup(["softmax"], progress=False, jobs=bad)
    with pytest.raises(TypeError):
        fastla.warmup(["softmax"], progress=False, jobs=1.5)
    # lu_factor and lu_solve share one warm-up call: one job per dtype
    assert _warmup._jobs(["lu_factor", "lu_solve"], ["float64"]) == [("lu_factor", ("float64",))]
    jobs = _warmup._jobs(["softmax", "scaled_dot_product_attention"], ["float64", "float32"])
    assert jobs[0] == ("scaled_dot_product_attention", ("float64",)) and len(jobs) == 4


@pytest.mark.parametrize(("usable", "lanes"), [(0.5, 1), (1, 1), (1.5, 2), (3, 3)])
def test_warmup_default_jobs_follow_the_usable_cpus(monkeypatch, usable, lanes):
    """The default process count is the CPUs this process may use (affinity, a cgroup quota rounded
    up, as the default thread count), not ``os.cpu_count()``."""
    from fastla import _jit

    monkeypatch.setattr(_jit, "usable_cpus", lambda: usable)
    monkeypatch.setattr(_jit, "JIT_ENABLED", True)
    monkeypatch.setattr(_jit, "NUMBA_AVAILABLE", True)
    assert _jit.usable_cpu_count() == lanes
    seen = []
    monkeypatch.setattr(_warmup, "_run_all", lambda todo, n_jobs, progress, stream: seen.append(n_jobs) or {})
    fastla.warmup(["softmax"], ["float64"], progress=False)
    fastla.warmup(["softmax"], ["float64"], progress=False, jobs=5)  # an explicit count wins
    assert seen == [lanes, 5]


def test_the_kernels_warmup_calls_every_kernel():
    """``warmup`` warms ``fastla.kernels`` too (by default, or as ``ops="kernels"``), and its calls
    (``fastla/_kernel_calls.py``) name every public kernel: a kernel added to the module without a
    call there would compile on a user's first call after a warm-up."""
    assert ("kernels", ("float32",)) in _warmup._jobs(None, ["float32"])
    assert _warmup._jobs("kernels", ["float64"]) == [("kernels", ("float64",))]
    import inspect

    from fastla import _kernel_calls, kernels

    source = inspect.getsource(_kernel_calls)
    missing = [name for name in kernels.__all__ if f"kernels.{name}(" not in source]
    assert not missing, missing


def test_the_matmul_warmup_runs_both_stack_tasks(monkeypatch):
    """matmul's warm-up runs, in each dtype, both tasks a stack of small products can take: the
    wide tiles' (their own compiled task; a 40 x 40 float32 product is not one) and the other
    tiles'. A task it skipped would compile at a user's first such call after the warm-up."""
    from fastla import _gemm_kernels

    if not _gemm_kernels.WIDE_TILE:
        pytest.skip("no wide tile on this target")
    picked = []
    fits = _gemm_kernels.wide_tiles_fit

    def spy(m, k, n, itemsize):
        picked.append((itemsize, fits(m, k, n, itemsize)))
        return picked[-1][1]

    monkeypatch.setattr(_gemm_kernels, "wide_tiles_fit", spy)
    for dt in _warmup.DTYPES:
        _warmup.run_one("matmul", dt)
    for itemsize in (4, 8):
        assert {wide for size, wide in picked if size == itemsize} == {True, False}, picked


@needs_jit
def test_the_kernels_warmup_runs_in_process():
    for dt in ("float32", "float64"):
        assert _warmup.run_one("kernels", dt) >= 0


def _cache_misses():
    """Signatures compiled rather than loaded from the cache, per dispatcher of fastla's modules
    and per step of the lane solver (one per n and k, made on demand: ``{qualified name: count}``)."""
    from fastla import _lane_solver

    found = [
        (f"{mod_name}.{name}", obj)
        for mod_name, mod in list(sys.modules.items())
        if mod_name == "fastla" or mod_name.startswith("fastla.")
        for name, obj in list(vars(mod).items())
    ]
    found += [(f"fastla._lane_solver._STEPS[{key}]", step) for key, step in list(_lane_solver._STEPS.items())]
    counts = {}
    for name, obj in found:
        stats = getattr(obj, "stats", None) if hasattr(obj, "py_func") else None
        if stats is not None:
            counts[name] = sum(stats.cache_misses.values())
    return counts


@needs_jit
@needs_cache
def test_a_new_process_loads_every_kernel_the_warmup_compiled():
    """Every op's warm-up calls, run again in a new process, compile none of fastla's kernels: each
    one loads from the cache those calls filled (the suite's own warm-up did; the first process here
    fills whatever it lacks). The packed top-k once took its panel packer as an argument: a
    dispatcher in a kernel's signature is keyed by a per-process identity (Numba's uuid of it), so
    that kernel missed the cache in every process (0.8 s of each first call)."""
    code = """
        from fastla import _warmup
        from tests.test_warmup import _cache_misses
        for op in _warmup.OPS:
            for dt in _warmup.DTYPES:
                _warmup.run_one(op, dt)
        print({name: n for name, n in _cache_misses().items() if n})
    """
    _python(code, None)
    again = _python(code, None)
    assert again.stdout.strip().splitlines()[-1] == "{}", again.stdout


@needs_jit
def test_after_the_kernels_warmup_a_users_function_compiles_no_kernel():
    """A user's ``@njit`` loop over views of its stacks (``kernels.solve``, ``matmul``, ``gemm``,
    ``softmax``, ``lu_factor`` / ``lu_solve``, ``cosine_similarity``) finds every kernel signature it
    needs in the cache the ``kernels`` warm-up filled: compiling it compiles none of fastla's
    dispatchers (each one it calls is loaded, or was compiled by the warm-up in this process)."""
    from fastla import _kernel_calls, kernels

    _kernel_calls.run("float64")
    before = _cache_misses()

    @_jit.user_njit
    def users_loop(A, B, X, C, R):
        for i in range(A.shape[0]):
            kernels.solve(A[i], B[i], X[i])
            kernels.matmul(A[i], A[i], C[i])
            kernels.gemm(A[i], C[i], C[i].copy())
            kernels.softmax(R[i], R[i])
            lu, piv = kernels.lu_factor(A[i])
            X[i] = kernels.lu_solve(lu, piv, B[i])
        return kernels.cosine_similarity(A[0], C[0])

    n = 7
    A = np.broadcast_to(np.eye(n) * n + 1, (3, n, n)).copy()
    users_loop(A, np.ones((3, n)), np.empty((3, n)), np.empty((3, n, n)), np.ones((3, 12)))
    after = _cache_misses()
    compiled = {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}
    assert not compiled, compiled


def test_warmup_lanes_keep_a_dtype_together():
    """The jobs split into at most ``jobs`` processes, each job once; with a lane per dtype or more,
    no lane mixes dtypes (the kernels ops share compile once per dtype and process)."""
    jobs = _warmup._jobs(None, ["float32", "float64"])
    for n in (1, 2, 3, 4, 7):
        lanes = _warmup._lanes(jobs, n)
        assert 1 <= len(lanes) <= n
        assert sorted(j for lane in lanes for j in lane) == sorted(jobs)
        if n >= 2:
            assert all(len({dts for _, dts in lane}) == 1 for lane in lanes), n
    assert len(_warmup._lanes(jobs, 4)) == 4


def test_a_lane_reports_a_failed_job_and_goes_on(monkeypatch, capsys):
    def broken(dt):
        raise RuntimeError("no\nway")

    monkeypatch.setitem(_warmup.TARGETS, "softmax", broken)
    monkeypatch.setitem(_warmup.TARGETS, "cross_entropy", lambda dt: None)
    _warmup.run_lane([("softmax", ("float64",)), ("cross_entropy", ("float64",))])
    first, second = capsys.readouterr().out.splitlines()
    assert first == "softmax\tFAIL\tRuntimeError: no way"
    op, seconds = second.split("\t")
    assert op == "cross_entropy" and float(seconds) >= 0


def test_a_lanes_process_collects_garbage_as_a_compiling_process():
    """A warm-up lane (a process of fastla's own that only compiles) freezes the objects its imports
    left and collects with ``COMPILING_GC_THRESHOLDS``: Python's defaults scanned the growing heap
    of compiled kernels every few hundred thousand allocations (README, "First use")."""
    before = "import gc; print(gc.get_threshold() != w.COMPILING_GC_THRESHOLDS, gc.get_freeze_count() == 0)"
    after = "print(gc.get_threshold() == w.COMPILING_GC_THRESHOLDS, gc.get_freeze_count() > 1000)"
    code = _warmup._lane_code([]).replace("w.compiling_process();", before + "; w.compiling_process();")
    assert code != _warmup._lane_code([])
    assert _python(code + "; " + after, None).stdout.split() == ["True"] * 4


@needs_jit
def test_import_compiles_nothing(tmp_path):
    proc = _python(
        """
        import sys, numba, fastla
        compiled = [f"{m}.{n}" for m, mod in list(sys.modules.items()) if m.startswith("fastla")
                    for n, f in vars(mod).items()
                    if isinstance(f, numba.core.registry.CPUDispatcher) and f.signatures]
        print(len(compiled), compiled)
        """,
        tmp_path,
    )
    assert proc.stdout.startswith("0 "), proc.stdout


@needs_jit
def test_a_kernels_first_call_leaves_scipy_linalg_unimported(tmp_path):
    """Numba's start-up probe for BLAS (``import scipy.linalg``, 0.13 s of a warm first call) is
    deferred where SciPy is installed: a kernel's first call imports no ``scipy.linalg``; Numba
    still knows BLAS is there, its later checks import it, and a user's ``np.dot`` in compiled code
    still uses it."""
    proc = _python(
        """
        import sys, numpy as np, numba, fastla
        fastla.softmax(np.ones((4, 10)), backend="numba")
        print("after kernel:", "scipy.linalg" in sys.modules, sys.modules["numba.np.arraymath"]._HAVE_BLAS)
        numba.np.linalg.ensure_blas()  # any later check is Numba's own: the import, its guards
        print("after a check:", "scipy.linalg.cython_blas" in sys.modules)

        @numba.njit
        def dot(a, b):
            return np.dot(a, b)

        print("after np.dot:", dot(np.ones(3), np.arange(3.0)), "scipy.linalg" in sys.modules)
        """,
        tmp_path,
    )
    assert "after kernel: False True" in proc.stdout, proc.stdout
    assert "after a check: True" in proc.stdout, proc.stdout
    assert "after np.dot: 3.0 True" in proc.stdout, proc.stdout


@needs_jit
def test_without_scipy_numbas_blas_probe_is_its_own(tmp_path):
    """Without SciPy nothing is deferred: Numba's probe finds no BLAS (its loop fallbacks), and the
    kernels run."""
    proc = _python(
        """
        import sys
        sys.modules["scipy"] = None  # as if not installed
        import numpy as np, numba, fastla
        out = fastla.softmax(np.zeros((2, 4)), backend="numba")
        print(fastla._jit._BLAS_PROBE_DEFERRED, sys.modules["numba.np.arraymath"]._HAVE_BLAS, out[0, 0])
        """,
        tmp_path,
    )
    assert proc.stdout.strip() == "False False 0.25", proc.stdout


@needs_jit
@needs_cache
def test_warmup_fills_the_cache_then_a_new_process_loads_it(tmp_path):
    proc = _python(
        """
        import fastla, io
        s = io.StringIO()
        times = fastla.warmup(["cross_entropy"], ["float64"], jobs=1, stream=s)
        print(sorted(times), s.getvalue())
        """,
        tmp_path,
    )
    assert "['cross_entropy']" in proc.stdout
    assert "1/1" in proc.stdout and "cache:" in proc.stdout and "MiB" in proc.stdout
    loaded = _python(
        """
        import sys, numpy as np, fastla
        fastla.cross_entropy(np.ones((4, 5)), np.zeros(4, np.int64), backend="numba")
        k = sys.modules["fastla.softmax"]._ce_index_rows
        print(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()))
        """,
        tmp_path,
    )
    hits, misses = loaded.stdout.split()[-2:]
    assert int(misses) == 0 and int(hits) >= 1, loaded.stdout


@needs_jit
def test_background_warmup_returns_a_thread(tmp_path):
    proc = _python(
        """
        import fastla
        t = fastla.warmup(["cross_entropy"], ["float64"], background=True, progress=False, jobs=1)
        print(type(t).__name__, flush=True)
        t.join(600)
        print(t.error, sorted(t.result))
        """,
        tmp_path,
    )
    first, second = proc.stdout.strip().splitlines()
    assert first == "Warmup"
    assert second == "None ['cross_entropy']"


@needs_jit
def test_no_writable_cache_location_warns_once_and_works(tmp_path):
    """Every cache location unwritable (only a NUMBA_CACHE_DIR under /proc offered): import and
    calls work uncached, with one warning."""
    proc = _python(
        """
        import warnings
        warnings.simplefilter("always")
        import numpy as np, fastla
        print(float(fastla.softmax(np.zeros(4), backend="numba")[0]))
        """,
        "/proc/fastla-cannot-write-here",
        extra_env={"NUMBA_CACHE_LOCATOR_CLASSES": "numba.core.caching.UserProvidedCacheLocator"},
    )
    assert proc.stdout.strip() == "0.25"
    assert proc.stderr.count("no writable location for Numba's kernel cache") == 1, proc.stderr


@needs_jit
def test_unwritable_numba_cache_dir_falls_back(tmp_path):
    """An unwritable NUMBA_CACHE_DIR: Numba's next locator (the package directory or the per-user
    cache) takes over; no warning, no crash."""
    proc = _python(
        """
        import warnings
        warnings.simplefilter("error")
        import numpy as np, fastla
        from fastla import _jit
        print(float(fastla.softmax(np.zeros(4), backend="numba")[0]), bool(_jit.cache_dirs()))
        """,
        "/proc/fastla-cannot-write-here",
    )
    assert proc.stdout.split() == ["0.25", "True"]


@needs_jit
@needs_cache
def test_concurrent_warmups_do_not_corrupt_the_cache(tmp_path):
    """Two processes fill one cache at once (as pytest-xdist workers do); then every index entry
    points at its own data file and a third process runs everything from the cache correctly.

    Numba's own cache file numbers data files by the first free slot it saw, so two processes once
    wrote different overloads into the same file; a later load ran the wrong machine code."""
    # the two processes add the float32 and float64 overloads of the same kernels in opposite orders
    # (cross-entropy's: a third of softmax's warm-up compile time)
    code = """
        import sys, fastla._warmup as w
        for dt in sys.argv[1:]:
            w.run_one("cross_entropy", dt)
    """
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    procs = [
        subprocess.Popen([*cmd, *order], env=env, stderr=subprocess.PIPE)
        for order in (("float64", "float32"), ("float32", "float64"))
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    for index in glob.glob(str(tmp_path / "**" / "*.nbi"), recursive=True):
        with open(index, "rb") as f:
            pickle.load(f)  # numba's version
            _, overloads = pickle.loads(f.read())
        names = list(overloads.values())
        assert len(names) == len(set(names)), index
        assert all(os.path.exists(os.path.join(os.path.dirname(index), n)) for n in names), index
    check = _python(
        """
        import sys, numpy as np, scipy.special as sps, fastla
        for dt in (np.float64, np.float32):
            x = np.random.default_rng(1).standard_normal((8, 16)).astype(dt)
            logp = sps.log_softmax(x.astype(np.float64), axis=-1)
            t = np.arange(8) % 16
            p = sps.softmax(np.random.default_rng(2).standard_normal((8, 16)), axis=-1).astype(dt)
            ce = lambda target: fastla.cross_entropy(x, target, reduction="none", backend="numba")
            assert np.allclose(ce(t), -logp[np.arange(8), t], atol=1e-5)
            assert np.allclose(ce(p), -(p * logp).sum(-1), atol=1e-5)
        ks = [getattr(sys.modules["fastla.softmax"], k) for k in ("_ce_index_rows", "_ce_prob_rows")]
        print("ok", sum(sum(k.stats.cache_misses.values()) for k in ks))
        """,
        tmp_path,
    )
    assert check.stdout.split() == ["ok", "0"]  # loaded from the cache, and correct


@needs_jit
@needs_cache
def test_changed_source_recompiles(tmp_path):
    """A cached kernel goes stale when any fastla source changes (an upgrade): it is recompiled,
    never run stale."""
    pkg = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.join(ROOT, "fastla"), pkg / "fastla", ignore=skip)
    code = """
        import sys, numpy as np, fastla
        fastla.softmax(np.ones((4, 5)), backend="numba")
        k = sys.modules["fastla.softmax"]._short_task  # rows under 32
        print(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()))
    """
    cache = tmp_path / "cache"
    run = lambda: _python(code, cache, cwd=str(pkg)).stdout.split()[-2:]  # noqa: E731
    assert run() == ["0", "1"]  # compiled
    assert run() == ["1", "0"]  # loaded
    with open(pkg / "fastla" / "ml.py", "a") as f:  # no kernel compiles ml.py in
        f.write("\n# an edit\n")
    assert run() == ["1", "0"]  # still loaded
    with open(pkg / "fastla" / "_math.py", "a") as f:  # a module the kernel compiles in
        f.write("\n# an edit\n")
    assert run() == ["0", "1"]  # recompiled, not run stale


_USER_MODULE = """
import numba
import fastla.kernels as K
from fastla.kernels import softmax


@numba.njit(cache=True)
def uses(x):
    return K.exp(x)


@numba.njit(cache=True)
def through(x):
    return uses(x) * 2.0


@numba.njit(cache=True)
def imported(row):
    return softmax(row)


@numba.njit(cache=True)
def plain(x):
    return x + 1.0
"""


@needs_jit
@needs_cache
def test_changed_source_recompiles_the_users_functions_that_compile_it_in(tmp_path):
    """A user's ``@njit(cache=True)`` function that compiles fastla's kernels in (a module attribute,
    an imported name, or through another of the user's jitted functions) goes stale with fastla's
    sources, as fastla's own kernels do: after an upgrade it is recompiled, never run with the old
    kernels inlined in it. A user function that does not call fastla keeps its cache."""
    pkg = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.join(ROOT, "fastla"), pkg / "fastla", ignore=skip)
    (pkg / "user_loop.py").write_text(_USER_MODULE)
    code = """
        import numpy as np, user_loop as u
        assert u.uses(0.0) == 1.0 and u.through(0.0) == 2.0 and u.plain(1.0) == 2.0
        assert np.allclose(u.imported(np.zeros(4)), 0.25)
        fs = (u.uses, u.through, u.imported, u.plain)
        print(*["%d%d" % (sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())) for f in fs])
    """
    cache = tmp_path / "cache"
    run = lambda: _python(code, cache, cwd=str(pkg)).stdout.split()[-4:]  # noqa: E731
    assert run() == ["01", "01", "01", "01"]  # compiled
    assert run() == ["10", "10", "10", "10"]  # loaded
    with open(pkg / "fastla" / "ml.py", "a") as f:  # no kernel compiles ml.py in
        f.write("\n# an edit\n")
    assert run() == ["10", "10", "10", "10"]  # still loaded
    with open(pkg / "fastla" / "_math.py", "a") as f:  # the exp the user's functions inline
        f.write("\n# an edit\n")
    assert run() == ["01", "01", "01", "10"]  # recompiled, not run stale; plain kept


def test_cache_report_names_a_location():
    text = _warmup.cache_report()
    assert text.startswith("cache: ")


@needs_jit
def test_warmup_calls_run_in_process():
    for op in ("softmax", "cosine_topk"):
        assert _warmup.run_one(op, np.float64) >= 0
        assert _warmup.run_first(op, np.float64) >= 0


def test_every_op_has_a_first_call():
    assert set(_warmup._first_calls()) == set(_warmup.OPS)


def test_heavier_first_calls_name_their_op_and_run():
    """The compile benchmark's ``op:path`` rows: each names an op and a path, and its call runs."""
    names = _warmup.first_call_names()
    heavy = [name for name in names if ":" in name]
    assert heavy and names[: len(names) - len(heavy)] == list(dict.fromkeys(_warmup.OPS))
    for name in heavy:
        op, _, path = name.partition(":")
        assert op in _warmup.OPS and path, name
        if _jit.JIT_ENABLED:
            assert _warmup.run_first(name, np.float64) >= 0


@needs_jit
def test_cache_file_never_shares_a_data_file_between_overloads(tmp_path):
    """The race behind the corruption, made deterministic: a second process adds an overload from an
    index read before the first one's entry landed. Numba's numbering gives both overloads
    ``<name>.1.nbc`` (the second overwrites the first's machine code); fastla's hashed names keep
    them apart."""
    safe = _jit._SAFE_CACHE_FILE
    assert safe is not None

    class Stale(safe):
        def _load_index(self):
            return {}  # the index as it was before the other process wrote

    first, second = safe(str(tmp_path), "k", "stamp"), Stale(str(tmp_path), "k", "stamp")
    first.save(("sig-f64", "host"), ("code f64",))
    name_first = first._load_index()[("sig-f64", "host")]
    second.save(("sig-f32", "host"), ("code f32",))
    name_second = first._load_index()[("sig-f32", "host")]
    assert name_first != name_second
    assert first._load_data(name_first) == ("code f64",)
    assert first._load_data(name_second) == ("code f32",)


@needs_jit
def test_an_index_naming_a_class_that_is_gone_is_stale_not_an_error(tmp_path, monkeypatch):
    """An index written by another fastla version can name a class this one removed (a kernel's
    argument type, such as a NamedTuple of addresses): it reads as empty (the kernel recompiles),
    where unpickling it raised AttributeError from the call."""
    import pickle
    import sys
    import types

    safe = _jit._SAFE_CACHE_FILE
    mod = types.ModuleType("fastla_removed_types")
    monkeypatch.setitem(sys.modules, "fastla_removed_types", mod)

    class Removed:
        pass

    Removed.__module__, Removed.__qualname__ = "fastla_removed_types", "Removed"
    mod.Removed = Removed
    cache = safe(str(tmp_path), "k", "stamp")
    cache.save(("sig", "host"), ("code",))
    assert cache._load_index()
    with open(cache._index_path, "rb") as f:
        version = pickle.load(f)
    with open(cache._index_path, "wb") as f:
        pickle.dump(version, f)
        f.write(pickle.dumps(("stamp", {(Removed(), "host"): "k.x.nbc"})))
    del mod.Removed
    assert cache._load_index() == {}
    cache.save(("sig", "host"), ("code",))  # and the next save writes a fresh index
    assert list(cache._load_index()) == [("sig", "host")]


@needs_jit
@needs_cache
def test_cached_caller_of_a_parallel_kernel_runs_first_in_a_fresh_process(tmp_path):
    """LU's factorisation calls the parallel GEMM driver. Compiled in a process that loaded the
    driver from the cache, its cache entry lacks Numba's "start the threads on load" record, and
    it segfaulted when it was the first kernel a new process ran (after ``fastla warmup``)."""
    _python(
        "import numpy as np, fastla; fastla.matmul(np.ones((40, 40)), np.ones((40, 40)), backend='numba')",
        tmp_path,
    )
    _python(
        "import numpy as np, fastla; fastla.solve(np.eye(40) + 1, np.ones(40), backend='numba')", tmp_path
    )
    proc = _python(
        """
        import numpy as np, fastla
        lu, piv = fastla.lu_factor(np.eye(40) + 1, backend="numba")
        print(piv[:3])
        """,
        tmp_path,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1000:]}"
