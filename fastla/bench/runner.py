"""Running one workload x impl under pytest-benchmark (used by ``benchmarks/test_*.py``).

Environment (set by ``python -m fastla bench``): ``FASTLA_BENCH_SET`` (smoke|quick|full, default
smoke, so that a plain ``pytest`` smoke-runs each benchmark once on the smallest inputs),
``FASTLA_BENCH_OPS`` (comma list) and ``FASTLA_BENCH_THREADS`` (threads for numba *and* BLAS).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

from fastla.bench import workloads as _w

#: Seconds of untimed calls between an impl's first (warm-up) call and its timed rounds
#: (:func:`settle`). OpenBLAS's idle threads spin for a while after a call (and OpenMP's after a
#: parallel region), taking cores from whatever runs next (OpenBLAS's default is ~2^28 cycles,
#: under 0.15 s at 2 GHz): timed straight after NumPy's BLAS-backed top-k, one streaming top-k query
#: measured 0.69-0.75x the bare product in three runs and 1.05x in one; with a 0.15 s pause 0.83x,
#: the bare product's own time 2.65 -> 2.3 ms (it had followed fastla's OpenMP threads). Each impl,
#: anchors too, starts its timed rounds after the previous impl's threads went idle.
SETTLE_S = 0.15


def settle(fn, args, kwargs, seconds=SETTLE_S, clock=time.perf_counter):
    """Call ``fn`` untimed for ``seconds`` (once at least) before its timed rounds: the previous
    impl's threads stop spinning meanwhile (see ``SETTLE_S``), and the calls reach the steady state
    the timed rounds measure. A pause did the first and not the second: on a virtual machine that
    hands freed memory back to its host (Linux's free page reporting, here in 2 MiB blocks), the
    first calls that allocate large arrays after a phase that freed many (the numpy impl before)
    fault their pages in from the host, ~80 ms a 4096^2 float32 softmax against ~9; pytest-benchmark
    sized the rounds by such a call (3-5 rounds) and the median was the slow phase's, in five of five
    runs once the result check before the rounds stopped taking 1.3 s."""
    start = clock()
    while True:
        fn(*args, **kwargs)
        if clock() - start >= seconds:
            return


#: batch pairs of :func:`paired_extra_us`, and each batch's least duration
PAIRS = 21
PAIR_BATCH_S = 1e-3


def paired_extra_us(fn, anchor, args, kwargs, pairs=PAIRS, batch_s=PAIR_BATCH_S, clock=time.perf_counter):
    """Microseconds per call that ``fn`` costs over ``anchor`` on the same inputs: the median over
    ``pairs`` of the difference between a batch of ``fn`` calls and a batch of ``anchor`` calls timed
    back to back (which side goes first alternates; a batch is as many calls as the anchor needs
    for ``batch_s``). The difference of the two sides' medians, timed seconds apart, carries the
    machine's drift between them: on Zen 5, ``fl.solve`` 4x4 read 3.23 us over ``np.linalg.solve``
    in one run and 1.4 us under it in another, where back-to-back batches read 0.7-1.5 us over."""

    def batch(f, n):
        t0 = clock()
        for _ in range(n):
            f(*args, **kwargs)
        return clock() - t0

    n = 1
    while batch(anchor, n) < batch_s and n < 1 << 20:
        n *= 2
    diffs = []
    for p in range(pairs):
        if p % 2:
            before = batch(anchor, n)
            diffs.append((batch(fn, n) - before) / n)
        else:
            extra = batch(fn, n)
            diffs.append((extra - batch(anchor, n)) / n)
    return statistics.median(diffs) * 1e6


def current_set():
    return os.environ.get("FASTLA_BENCH_SET", "smoke")


def current_ops():
    raw = os.environ.get("FASTLA_BENCH_OPS", "").strip()
    return [o.strip() for o in raw.split(",") if o.strip()] or None


def params(op):
    """``pytest.param(workload, impl)`` for every workload of ``op`` in the current set."""
    import pytest

    ops = current_ops()
    if ops is not None and op not in ops:
        return []
    return [
        pytest.param(w, impl, id=f"{w.name}-{impl}")
        for w in _w.select(current_set(), [op])
        for impl in w.impls(current_set())
    ]


@contextlib.contextmanager
def pinned_threads(n):
    """Pin numba (fastla) and BLAS to ``n`` threads for the block, then restore both."""
    import fastla

    before = fastla.get_num_threads()
    fastla.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is in the test and bench extras
        threadpool_limits = None
    try:
        if threadpool_limits is None:
            yield
        else:
            with threadpool_limits(limits=n, user_api="blas"):
                yield
    finally:
        fastla.set_num_threads(before)


def threads_for(workload):
    import fastla

    from_env = int(os.environ.get("FASTLA_BENCH_THREADS", "0") or 0)
    n = workload.threads or from_env or fastla._jit.max_threads()
    return max(1, min(n, fastla._jit.max_threads()))


#: workload id -> the numpy impl's result, the reference every other impl's result is checked against
_REFERENCE = {}

#: the last workload's generated inputs: a workload's impls run one after another, and making some
#: inputs costs more than their benchmark (65536 x 1000 normals, the QR of a 2000 x 2000 matrix)
_LAST_INPUTS = {}


def _copied(x):
    """A fresh copy of an input (arrays with their memory layout, inside tuples, lists and dicts),
    or None where a copy would change the layout (a strided view)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return x.copy(order="K") if x.flags.c_contiguous or x.flags.f_contiguous else None
    if isinstance(x, dict):
        values = _copied(list(x.values()))
        return None if values is None else dict(zip(x, values, strict=True))
    if isinstance(x, (tuple, list)):
        parts = [_copied(p) for p in x]
        missing = any(c is None and p is not None for c, p in zip(parts, x, strict=True))
        return None if missing else type(x)(parts)
    return x


def fresh_inputs(workload):
    """``workload.inputs()``: the last workload's inputs are made once and handed out as copies
    (fresh arrays, so nothing one impl does to them reaches the next); made anew where an input
    is a strided view."""
    if workload.id not in _LAST_INPUTS:
        _LAST_INPUTS.clear()
        _LAST_INPUTS[workload.id] = workload.inputs()
    copies = _copied(_LAST_INPUTS[workload.id])  # (args, kwargs)
    return workload.inputs() if copies is None else copies


def _parts(op, result):
    """The parts of a result that must agree between impls: top-k's scores (indices may differ
    between exactly tied scores), power iteration's eigenvalues (eigenvectors are iterates)."""
    if isinstance(result, tuple):
        if op.endswith(("cosine_topk", "power_iteration")):
            return [result[0]]
        return list(result)
    return [result]


def verify(workload, impl, result):
    """Raise AssertionError if a fastla impl's ``result`` disagrees with the numpy impl's on the same
    inputs (computed once per workload, outside any timing): a kernel that skipped work would
    otherwise just look fast. Anchors (other libraries) are not checked."""
    import numpy as np

    if impl.startswith("anchor:") or impl == "numpy" or "numpy" not in workload.impls():
        return
    if workload.id not in _REFERENCE:
        args, kwargs = fresh_inputs(workload)
        _REFERENCE[workload.id] = workload.callable("numpy")(*args, **kwargs)
    ref = _REFERENCE[workload.id]
    for got, want in zip(_parts(workload.op, result), _parts(workload.op, ref), strict=True):
        got, want = np.asarray(got), np.asarray(want)
        assert got.shape == want.shape, f"{workload.id} {impl}: shape {got.shape} != numpy's {want.shape}"
        tol = 2e-3 if want.dtype == np.float32 else 1e-7
        # the largest finite |reference| a chunk at a time (no temporary the size of the result)
        scale = max(
            [1.0] + [float(np.max(a[np.isfinite(a)], initial=1.0)) for a in map(np.abs, _chunks(want))]
        )
        numeric = "b" not in (got.dtype.kind, want.dtype.kind)  # (NumPy has no boolean subtract)
        for part, (g, c) in enumerate(zip(_chunks(got), _chunks(want), strict=True)):
            # the reference's infinities go to assert_allclose: |inf - (-inf)| <= inf would pass
            close = (
                numeric and np.isfinite(c).all() and (np.abs(g - c) <= tol * scale + tol * np.abs(c)).all()
            )
            if not close:  # a miss, a NaN, an infinity or booleans
                where = f"flat elements {part * CHUNK} to {part * CHUNK + c.size - 1} of {want.shape}"
                np.testing.assert_allclose(
                    g,
                    c,
                    rtol=tol,
                    atol=tol * scale,
                    equal_nan=True,
                    err_msg=f"{workload.id} {impl} vs numpy, {where}",
                )


#: elements per chunk of :func:`verify`'s comparison
CHUNK = 1 << 16


def _chunks(x):
    """The elements of ``x`` in flat chunks of ``CHUNK`` (views), for :func:`verify`: its check,
    np.testing.assert_allclose over a whole 5000 x 5000 result, made several temporaries of that
    size and took 1.28 s; by chunks 0.05 s (assert_allclose's test ``|got - want| <= atol + rtol
    |want|`` a chunk at a time; a chunk that fails it, or holds a NaN or an infinity, goes to
    assert_allclose itself, for its rules and its message)."""
    flat = x.reshape(-1)
    return [flat[i : i + CHUNK] for i in range(0, max(flat.size, 1), CHUNK)]


def run(benchmark, workload, impl):
    """Benchmark ``impl`` on ``workload``; the first (JIT-compiling) call is not timed, and its
    result is checked against the numpy impl's (:func:`verify`)."""
    args, kwargs = fresh_inputs(workload)
    fn = workload.callable(impl)
    threads = threads_for(workload)
    benchmark.group = f"{workload.op} {workload.name}"
    benchmark.extra_info.update(
        op=workload.op,
        size=workload.name,
        impl=impl,
        flops=workload.flops,
        bytes=workload.bytes,
        threads=threads,
    )
    with pinned_threads(threads):
        result = fn(*args, **kwargs)  # warm-up: compile / load from cache, fault in buffers
        if impl == "numpy":  # the reference of verify(), made here rather than by one more call
            _REFERENCE.setdefault(workload.id, result)
        verify(workload, impl, result)
        if not getattr(benchmark, "disabled", False):  # timed runs only (not the smoke tests)
            settle(fn, args, kwargs)
        timed = benchmark(fn, *args, **kwargs)
        anchor = workload.paired_anchor()
        if impl == "auto" and anchor is not None and not getattr(benchmark, "disabled", False):
            benchmark.extra_info["paired_extra_us"] = paired_extra_us(
                fn, workload.callable(anchor), args, kwargs
            )
        return timed
