"""Ahead-of-time compilation into Numba's on-disk cache: ``fastla.warmup`` and ``python -m fastla warmup``.

A compiled kernel's first call in a fresh environment compiles it (seconds; the GEMM-based ops the
longest), and so does the first call after every upgrade of fastla, because the cache is keyed to
the machine and to the package's sources. Warming up once, for example in a Docker image's build or
a post-install step, moves that wait out of the first request:

    RUN pip install fastla && python -m fastla warmup

Each op's warm-up call runs the kernels a typical call of that op compiles, on tiny inputs, for one
dtype. The kernels take their inputs in one canonical type (C-contiguous or strided views, read-only
typed; see ``fastla._jit``), so a warmed kernel serves every layout of the same dtype. Kernels
compiled for exact sizes (stacks of 3x3/4x4 products and systems) are warmed for those sizes only;
other small sizes compile on their first call.

Numba compiles one function at a time in a process, so the (op, dtype) jobs run in ``jobs``
processes at once (default: one per usable CPU, ``fastla._jit.usable_cpu_count``), each a lane of
one dtype's jobs, the slowest first (:func:`_lanes`). Processes filling the same cache at once do
not corrupt it (``fastla._jit``'s cache file: hashed data file names, a locked index).
"""

from __future__ import annotations

import operator
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np

__all__ = ["OPS", "TARGETS", "cache_report", "warmup"]


def _matmul(dt):
    import fastla

    a = np.ones((40, 40), dt)
    fastla.matmul(a, a, backend="numba")
    for n in (3, 4, 32):  # 32: a stack in wide tiles (their own task; 40 x 40 float32 is not one)
        s = np.ones((64, n, n), dt)
        fastla.matmul(s, s, backend="numba")
    # the packed GEMM, for one product (past SMALL_2D_MAX) and per product of a stack (sides not in
    # whole wide tiles): auto takes both where its rules say so; this warm-up is also the background
    # job of their first-use key (matmul.packed), which would otherwise load nothing for them
    a = np.ones((64, 64), dt)
    fastla.matmul(a, a, backend="numba")
    s = np.ones((2, 50, 50), dt)
    fastla.matmul(s, s, backend="numba")


def _solve(dt):
    import fastla

    for n in (3, 4):
        a = np.ones((64, n, n), dt) + np.eye(n, dtype=dt)
        fastla.solve(a, np.ones((64, n, 1), dt), backend="numba")
    a = np.eye(40, dtype=dt) + 0.5
    fastla.solve(a, np.ones(40, dt), backend="numba")
    n = _blocked_n()  # one system past the threaded LAPACK calls: blocked LU and its substitution
    fastla.solve(np.eye(n, dtype=dt) + 0.5, np.ones(n, dt), backend="numba")


def _blocked_n():
    """The least order of one system that ``solve``'s numba impl factors itself (blocked LU, the
    trailing updates through the GEMM) rather than through LAPACK on the call's threads."""
    from fastla.lu import THREADED_MAX_N

    return THREADED_MAX_N + 1


def _lu(dt):
    import fastla

    a = np.eye(80, dtype=dt) + 0.5  # n > 64: the blocked path, with its GEMM (a 40x40 has none)
    factors = fastla.lu_factor(a, backend="numba")
    fastla.lu_solve(factors, np.ones(80, dt), backend="numba")
    for b in (np.ones(80, dt), np.ones((80, 2), dt)):  # auto's fast path: its compiled argument check
        fastla.lu_solve(factors, b)


def _softmax(dt):
    import fastla

    x = np.ones((8, 16), dt)  # short rows (a kernel of their own), then long ones
    for fn in (fastla.softmax, fastla.log_softmax):
        fn(x, backend="numba")
        fn(x, axis=0, backend="numba")
        fn(np.ones((2, 40), dt), backend="numba")


def _cross_entropy(dt):
    import fastla

    x = np.ones((8, 16), dt)
    fastla.cross_entropy(x, np.zeros(8, np.int64), backend="numba")
    fastla.cross_entropy(x, np.full((8, 16), 1 / 16, dt), backend="numba")


def _cosine_similarity(dt):
    import fastla

    x = np.ones((20, 8), dt)
    fastla.cosine_similarity(x, x[:5], backend="numba")
    fastla.cosine_similarity(x, backend="numba")


def _cosine_topk(dt):
    import fastla

    x = np.ones((80, 8), dt)
    fastla.cosine_topk(x[:20], x, 3, backend="numba")  # few queries: the streaming kernel
    fastla.cosine_topk(x, x, 3, backend="numba")  # many: the packed one
    if x.dtype == np.float32:  # a float16 corpus is searched in float32, by kernels of its own
        fastla.cosine_topk(x[:20], x.astype(np.float16), 3, backend="numba")
        fastla.cosine_topk(x, x.astype(np.float16), 3, backend="numba")


def _power_matrix(dt):
    """A diagonal matrix past ``eigen.DENSE_MAX_N`` (smaller symmetric ones are solved densely,
    with no sweep to compile), with one dominant eigenvalue (twice the next), so that plain power
    iteration converges on it too."""
    from fastla.eigen import DENSE_MAX_N

    n = DENSE_MAX_N + 20
    return np.diag(np.r_[np.arange(1.0, n), 2.0 * n]).astype(dt)


def _power_iteration(dt):
    import fastla

    a = _power_matrix(dt)
    fastla.power_iteration(a, backend="numba")
    fastla.power_iteration(a, 2, backend="numba")  # symmetric: blocks read from one triangle
    skewed = a.copy()
    skewed[0, -1] = a.max() * (5e-12 if a.dtype == np.float64 else 5e-8)  # symmetric within the test,
    fastla.power_iteration(skewed, 2, backend="numba")  # beyond one triangle's slack: read whole
    fastla.power_iteration(a + np.triu(np.ones_like(a), 1), backend="numba")  # non-symmetric
    import scipy.sparse as sp

    fastla.power_iteration(sp.csr_array(a), backend="numba")  # a sparse matrix: the CSR product


def _attention(dt):
    import fastla

    q = np.ones((2, _few_rows(), 8), dt)  # the flash kernel's least query rows (fewer: the row kernel)
    fastla.scaled_dot_product_attention(q, q, q, backend="numba")
    fastla.scaled_dot_product_attention(q, q, q, is_causal=True, return_weights=True, backend="numba")
    fastla.scaled_dot_product_attention(q[:, :1], q, q, backend="numba")  # a decoding step


#: op name -> the warm-up call for one dtype (the tests check that every registered op has one)
OPS = {
    "matmul": _matmul,
    "solve": _solve,
    "lu_factor": _lu,
    "lu_solve": _lu,
    "softmax": _softmax,
    "log_softmax": _softmax,
    "cross_entropy": _cross_entropy,
    "cosine_similarity": _cosine_similarity,
    "cosine_topk": _cosine_topk,
    "power_iteration": _power_iteration,
    "scaled_dot_product_attention": _attention,
}


def _kernels(dt):
    from fastla import _kernel_calls

    _kernel_calls.run(dt)


#: what :func:`warmup` warms: each op's calls (:data:`OPS`), and ``kernels``, ``fastla.kernels`` as
#: a user's ``@njit`` code calls them (``fastla/_kernel_calls.py``)
TARGETS = {**OPS, "kernels": _kernels}
DTYPES = ("float32", "float64")


def _first_calls():
    """op -> its typical first call for a dtype (what the compile-time benchmark times: one call,
    where the warm-up calls above cover more signatures)."""
    import fastla

    def x(dt):
        return np.ones((8, 16), dt)

    def square(dt):
        return np.eye(40, dtype=dt) + 0.5

    return {
        "matmul": lambda dt: fastla.matmul(square(dt), square(dt), backend="numba"),
        "solve": lambda dt: fastla.solve(
            np.ones((64, 4, 4), dt) + np.eye(4, dtype=dt), np.ones((64, 4, 1), dt), backend="numba"
        ),
        "lu_factor": lambda dt: fastla.lu_factor(square(dt), backend="numba"),
        "lu_solve": lambda dt: fastla.lu_solve(
            fastla.lu_factor(square(dt), backend="numpy"), np.ones(40, dt), backend="numba"
        ),
        "softmax": lambda dt: fastla.softmax(x(dt), backend="numba"),
        "log_softmax": lambda dt: fastla.log_softmax(x(dt), backend="numba"),
        "cross_entropy": lambda dt: fastla.cross_entropy(x(dt), np.zeros(8, np.int64), backend="numba"),
        "cosine_similarity": lambda dt: fastla.cosine_similarity(x(dt), x(dt)[:5], backend="numba"),
        "cosine_topk": lambda dt: fastla.cosine_topk(x(dt), x(dt), 3, backend="numba"),
        "power_iteration": lambda dt: fastla.power_iteration(_power_matrix(dt), backend="numba"),
        # FEW_ROWS query rows: the flash kernel (fewer take the row kernel, which compiles in less)
        "scaled_dot_product_attention": lambda dt: fastla.scaled_dot_product_attention(
            *[np.ones((2, _few_rows(), 8), dt)] * 3, backend="numba"
        ),
    }


def _few_rows():
    """``attention.FEW_ROWS``: the fewest query rows the flash kernel takes (its warm-up and
    first-call shapes; attention imported at the call)."""
    from fastla.attention import FEW_ROWS

    return FEW_ROWS


def _heavy_first_calls():
    """A first call of an op's heavier path, where the typical first call (:func:`_first_calls`)
    compiles less: the full compile-time benchmark times these too, so that its table shows the
    slowest first call a user meets, not only the cheapest. Keyed ``op:path``."""
    import fastla

    def x(dt, rows):
        return np.ones((rows, 16), dt) + np.arange(16, dtype=dt)

    def square(dt, n):
        return np.eye(n, dtype=dt) + 0.5

    return {
        # past the small-product paths: the packed GEMM (its packers, macro-kernel and driver)
        "matmul:256x256": lambda dt: fastla.matmul(square(dt, 256), square(dt, 256), backend="numba"),
        # one system past the threaded LAPACK calls: blocked LU, its GEMM updates, the substitution
        "solve:n=300": lambda dt: fastla.solve(square(dt, 300), np.ones(300, dt), backend="numba"),
        "lu_factor:n=300": lambda dt: fastla.lu_factor(square(dt, 300), backend="numba"),
        # one operand: the upper triangle's products, then its mirror
        "cosine_similarity:X only": lambda dt: fastla.cosine_similarity(x(dt, 200), backend="numba"),
        # many queries: the packed top-k (the typical first call's 8 queries stream)
        "cosine_topk:1000 queries": lambda dt: fastla.cosine_topk(
            x(dt, 1000), x(dt, 2000), 10, backend="numba"
        ),
    }


def first_call_names():
    """The names the compile-time benchmark knows: each op (its typical first call), then the
    heavier paths of :func:`_heavy_first_calls`."""
    return [*dict.fromkeys(OPS), *_heavy_first_calls()]


def run_first(op, dtype):
    """Run ``op``'s typical first call for ``dtype`` (or, for an ``op:path`` name, that path's first
    call: :func:`_heavy_first_calls`) in this process; return the seconds it took."""
    call = (_heavy_first_calls() if ":" in op else _first_calls())[op]
    t0 = time.perf_counter()
    call(np.dtype(dtype))
    return time.perf_counter() - t0


#: Cold compile seconds of each op's warm-up call for one dtype (Intel Xeon, 2 cores, 2 jobs at once),
#: to start the slowest first: with the two attention jobs last, 18 jobs took 128 s instead of 80 s.
_COST = {
    "scaled_dot_product_attention": 20,
    "solve": 15,
    "lu_factor": 13,
    "matmul": 10,
    "cosine_topk": 8,
    "softmax": 7,
    "power_iteration": 7,
    "cross_entropy": 4,
    "cosine_similarity": 4,
    "kernels": 28,  # Zen 4, one job per dtype (fastla/_kernel_calls.py): 28 s each
}


def run_one(op, dtype):
    """Run ``op``'s warm-up call for ``dtype`` in this process; return the seconds it took."""
    t0 = time.perf_counter()
    TARGETS[op](np.dtype(dtype))
    return time.perf_counter() - t0


def run_op(op, dtypes):
    """Run ``op``'s warm-up calls for each of ``dtypes`` in this process; return the seconds."""
    return sum(run_one(op, dt) for dt in dtypes)


def _jobs(ops, dtypes):
    ops = list(TARGETS) if ops is None else [ops] if isinstance(ops, str) else list(ops)
    unknown = sorted(set(ops) - set(TARGETS))
    if unknown:
        raise ValueError(f"warmup: unknown op(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    dtypes = [dtypes] if isinstance(dtypes, str) else list(dtypes)
    for dt in dtypes:
        if np.dtype(dt) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"warmup: dtype {dt} is not compiled (float32, float64)")
    names = list(dict.fromkeys(np.dtype(dt).name for dt in dtypes))
    seen, jobs = set(), []
    for op in sorted(ops, key=lambda o: -_COST.get(o, 0)):  # the slowest first: the best packing
        if TARGETS[op] not in seen:  # ops sharing a warm-up call (lu_factor / lu_solve) run it once
            seen.add(TARGETS[op])
            jobs += [(op, (dt,)) for dt in names]
    return jobs


#: The garbage collector's thresholds in a process that only compiles (:func:`compiling_process`):
#: Python's (700, 10, 10) scan the whole heap (Numba's and LLVM's objects, growing with every
#: kernel compiled) every few hundred thousand allocations, and compiling allocates millions.
COMPILING_GC_THRESHOLDS = (10_000, 50, 1000)


def compiling_process():
    """Set up the garbage collector of a process that fastla starts only to compile kernels into
    the cache (a warm-up lane, a first-use size job): the objects alive after the imports are
    frozen (no collection scans them again) and collections run less often. Never called in a
    user's process. Measured (Zen 4, ``python -m fastla warmup --jobs 2``, an empty cache, nine
    interleaved runs each): 57.7-70.6 s, median 60.0, -> 51.8-61.4 s, median 54.5; a lane's peak
    memory 520-527 -> 575-590 MB (the collector off: 54.0 s and 1.07 GB; the thresholds alone 55.5
    s, freezing alone 57.3-65.4 s)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*COMPILING_GC_THRESHOLDS)


def run_lane(jobs):
    """Run the ``(op, dtypes)`` jobs one after another in this process (a lane of :func:`_run_all`),
    printing a line per job as it ends: ``op<TAB>seconds``, or ``op<TAB>FAIL<TAB>message``."""
    for op, dtypes in jobs:
        try:
            line = f"{op}\t{run_op(op, dtypes)!r}"
        except Exception as exc:  # reported by the parent; the lane goes on with its other jobs
            line = f"{op}\tFAIL\t{type(exc).__name__}: {exc}".replace("\n", " ")
        print(line, flush=True)


def _lanes(jobs, n):
    """The jobs split into at most ``n`` lanes, each run by one process. One dtype's jobs share a
    lane where the lanes allow: kernels that several ops share (the GEMM's packing and micro-kernel,
    the exp) are then compiled once per dtype, and later ops find them compiled in the process,
    where one process per job compiled them again in jobs running at once and paid a Python and
    Numba start-up per job (18 jobs: ~0.6 s each). Within a dtype, the slowest first, each to the
    least loaded of its lanes (``_COST``)."""
    by_dtype = {}
    for job in jobs:
        by_dtype.setdefault(job[1], []).append(job)
    groups = list(by_dtype.values())
    if n < len(groups):  # fewer lanes than dtypes: a lane takes several dtypes
        merged = [[] for _ in range(n)]
        for i, group in enumerate(groups):
            merged[i % n] += group
        groups = merged
    per = [n // len(groups) + (i < n % len(groups)) for i in range(len(groups))]
    lanes = []
    for group, k in zip(groups, per, strict=True):
        mine = [[] for _ in range(min(k, len(group)))]
        loads = [0.0] * len(mine)
        for job in group:  # already slowest first
            i = loads.index(min(loads))
            mine[i].append(job)
            loads[i] += _COST.get(job[0], 1)
        lanes += mine
    return [lane for lane in lanes if lane]


def _lane_code(jobs):
    """The Python code a lane's process runs (:func:`run_lane` of ``jobs``, in a process that only
    compiles: :func:`compiling_process`)."""
    return f"import fastla._warmup as w; w.compiling_process(); w.run_lane({jobs!r})"


def _spawn_lane(jobs):
    code = _lane_code(jobs)
    # stderr into the same pipe (read as it comes: a pipe nobody drains would block the process)
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _bar(done, total, width=24):
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def _run_all(jobs, n_jobs, progress, stream):
    """Run the (op, dtypes) jobs in at most ``n_jobs`` processes at once (:func:`_lanes`); return
    ``{op: seconds}`` (summed over the op's jobs)."""
    lanes = _lanes(jobs, n_jobs)
    events = queue.Queue()

    def read(k, proc):
        with proc.stdout:  # closed once the process has ended it
            for line in proc.stdout:
                events.put((k, line.rstrip("\n")))
        proc.wait()
        events.put((k, None))  # the lane's process ended

    procs = [_spawn_lane(lane) for lane in lanes]
    for k, proc in enumerate(procs):
        threading.Thread(target=read, args=(k, proc), daemon=True).start()
    times, failures = {}, []
    reported = [0] * len(lanes)  # jobs each lane has reported
    other = [""] * len(lanes)  # each lane's last line of anything else (a traceback's last line)
    done, open_lanes = 0, len(lanes)
    t0 = time.perf_counter()
    while open_lanes:
        k, line = events.get()
        if line is None:
            open_lanes -= 1
            lost = lanes[k][reported[k] :]
            if lost:  # the process died: the jobs it did not report
                why = other[k] or f"exit {procs[k].returncode}"
                failures += [f"{op} ({', '.join(dts)}): {why}" for op, dts in lost]
            continue
        op, tab, rest = line.partition("\t")
        if not tab or reported[k] >= len(lanes[k]) or op != lanes[k][reported[k]][0]:
            other[k] = line.strip() or other[k]
            continue
        dtypes = lanes[k][reported[k]][1]
        reported[k] += 1
        done += 1
        status, _, message = rest.partition("\t")
        if status == "FAIL":
            failures.append(f"{op} ({', '.join(dtypes)}): {message}")
            seconds = float("nan")
        else:
            seconds = float(status)
        times[op] = times.get(op, 0.0) + seconds
        if progress:
            line = f"{_bar(done, len(jobs))} {op} ({', '.join(dtypes)}): {seconds:.1f} s"
            print(line, file=stream, flush=True)
    if failures:
        raise RuntimeError("warmup failed for: " + "; ".join(failures))
    if progress:
        print(f"warmup: {len(jobs)} jobs in {time.perf_counter() - t0:.1f} s", file=stream, flush=True)
    return times


def warmup(ops=None, dtypes=DTYPES, *, background=False, jobs=None, progress=True, stream=None):
    """Compile fastla's kernels into Numba's on-disk cache ahead of their first use.

    Parameters
    ----------
    ops : str or sequence of str, optional
        Operations to warm (default: all; see :data:`OPS`), and ``"kernels"``: ``fastla.kernels``
        as a user's ``@njit`` code calls them (default: included).
    dtypes : str or sequence of str
        ``"float32"`` and/or ``"float64"``.
    background : bool
        Start the work in a daemon thread and return that thread at once (for a server that must not
        stall its first request). After compiling into the cache, the thread also loads the kernels
        into this process, so that the first request finds them ready. ``thread.join()`` waits for
        it; ``thread.result`` then holds the timings (or ``thread.error`` the exception).
    jobs : int, optional
        Processes compiling at once, at least 1 (default: one per CPU this process may use, its
        affinity mask capped by a cgroup CPU quota rounded up: ``fastla._jit.usable_cpu_count``,
        as the default thread count; not ``os.cpu_count()``, which in a container given 2 CPUs of
        a 64-core host started 64 compiling processes of ~0.5 GB each).
    progress : bool
        Print a progress line per job, then the cache location and size (to ``stream``).
    stream : file-like, optional
        Where ``progress`` prints (default ``sys.stderr``).

    Returns
    -------
    dict or threading.Thread
        ``{op: seconds}`` (the time of each op's warm-up calls: compiling, or loading from the
        cache), or the thread.

    Examples
    --------
    >>> import fastla
    >>> times = fastla.warmup(["softmax"], ["float64"], progress=False)  # doctest: +SKIP
    """
    from fastla import _jit

    todo = _jobs(ops, dtypes)
    if jobs is not None:  # as the command line's --jobs: 0 or less is an error, not "all cores"
        jobs = operator.index(jobs)
        if jobs < 1:
            raise ValueError(f"warmup: jobs must be at least 1, got {jobs}")
    n_jobs = jobs or _jit.usable_cpu_count()
    stream = sys.stderr if stream is None else stream
    if not _jit.NUMBA_AVAILABLE or not _jit.JIT_ENABLED:
        if progress:
            print("warmup: nothing to compile (numba is unavailable or the JIT is disabled)", file=stream)
        return {} if not background else _finished_thread({})

    def work():
        times = _run_all(todo, n_jobs, progress, stream)
        if progress:
            print(cache_report(), file=stream, flush=True)
        return times

    if not background:
        return work()

    def work_and_load():
        times = work()
        for op, dtypes in todo:  # from the cache now: milliseconds each
            run_op(op, dtypes)
        return times

    return background_thread(work_and_load, "fastla-warmup")


def background_thread(work, name):
    """A started daemon thread running ``work()``: ``thread.result`` holds what it returned, or
    ``thread.error`` the exception it raised (reported on the thread: a server keeps running, and
    ``auto``'s next call compiles in place; see ``fastla._first_use.Background``)."""

    class Warmup(threading.Thread):  # fastla.warmup(background=True)'s type (a size's job's too)
        result = None
        error = None

        def run(self):
            try:
                self.result = work()
            except Exception as exc:
                self.error = exc

    thread = Warmup(name=name, daemon=True)
    thread.start()
    return thread


def _finished_thread(result):
    thread = threading.Thread(target=lambda: None, daemon=True)
    thread.result, thread.error = result, None
    thread.start()
    return thread


def cache_report():
    """Where fastla's compiled kernels are cached, and how much space they take."""
    from fastla import _jit

    dirs = _jit.cache_dirs()
    if not dirs:
        return "cache: off (no writable cache location; kernels compile in each process)"
    total = files = 0
    for d in dirs:
        for name in os.listdir(d) if os.path.isdir(d) else ():
            if name.endswith((".nbi", ".nbc")):
                total += os.path.getsize(os.path.join(d, name))
                files += 1
    where = ", ".join(sorted(dirs))
    return f"cache: {where} ({files} files, {total / 2**20:.1f} MiB)"
