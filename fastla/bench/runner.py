"""Running one workload x impl under pytest-benchmark (used by ``benchmarks/test_*.py``).

Environment (set by ``python -m fastla bench``): ``FASTLA_BENCH_SET`` (smoke|quick|full, default
smoke, so that a plain ``pytest`` smoke-runs each benchmark once on the smallest inputs),
``FASTLA_BENCH_OPS`` (comma list) and ``FASTLA_BENCH_THREADS`` (threads for numba *and* BLAS).
"""

from __future__ import annotations

import contextlib
import os

from fastla.bench import workloads as _w


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
        for impl in w.impls()
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


def run(benchmark, workload, impl):
    """Benchmark ``impl`` on ``workload``; the first (JIT-compiling) call is not timed."""
    args, kwargs = workload.inputs()
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
        fn(*args, **kwargs)  # warm-up: compile / load from cache, fault in buffers
        return benchmark(fn, *args, **kwargs)
