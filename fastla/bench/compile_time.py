"""Compile-time benchmarks: an op's first call in a fresh interpreter, for every op.

``cold``: an empty Numba cache directory, so the time is JIT compilation. ``warm``: the cache the
cold run filled, so the time is loading machine code from disk (plus Numba's one-time start-up in
that process). Both run in a subprocess, and the time reported (``extra_info["first_call_s"]``) is
measured around the call itself, excluding interpreter start and imports. The call is the op's
typical first call (``fastla._warmup.run_first``, float64: one 2-D call of its numba impl).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

#: the dtype of the measured first call
DTYPE = "float64"


#: ops whose first call the quick (CI) set measures: a cold compile of every op takes ~3 minutes on
#: 2 cores, so the quick set takes the cheapest op and the GEMM driver most ops are built on; the
#: full set (or ``--compile-ops all``) measures every op.
QUICK_OPS = ("softmax", "matmul")


def ops_for(set_name, ops):
    """Ops whose first call is measured: ``FASTLA_BENCH_COMPILE_OPS`` (``all``, ``none`` or a comma
    list) if set, else every op's typical first call and the heavier paths' (``op:path``,
    ``fastla._warmup.first_call_names``: full set), :data:`QUICK_OPS` (quick) or softmax (smoke)."""
    from fastla import _warmup

    every = _warmup.first_call_names()
    chosen = os.environ.get("FASTLA_BENCH_COMPILE_OPS", "").strip()
    if chosen:
        names = every if chosen == "all" else [] if chosen == "none" else chosen.split(",")
    else:
        names = {"smoke": ["softmax"], "quick": list(QUICK_OPS)}.get(set_name, every)
    return [op for op in names if ops is None or op.partition(":")[0] in ops]


def _child(op):
    return textwrap.dedent(
        f"""
        import json, time
        import fastla._warmup as w
        t0 = time.perf_counter()
        w.run_first({op!r}, {DTYPE!r})
        print(json.dumps({{"first_call_s": time.perf_counter() - t0}}))
        """
    )


def first_call(op, cache_dir):
    """Seconds of the first call of ``op``'s numba kernels in a fresh interpreter."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, "-c", _child(op)], capture_output=True, text=True, env=env, timeout=900, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"compile benchmark for {op} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["first_call_s"]


def run(benchmark, op, cache, cache_dir):
    if cache == "warm" and not (os.path.isdir(cache_dir) and os.listdir(cache_dir)):
        first_call(op, cache_dir)  # fill the cache first (untimed)
    elif cache == "cold" and os.path.isdir(cache_dir):
        import shutil

        shutil.rmtree(cache_dir)
    seconds = []
    benchmark.group = f"compile {op}"
    benchmark.extra_info.update(op="compile", size=op, impl=f"numba ({cache} cache)", flops=0, bytes=0)
    benchmark.pedantic(lambda: seconds.append(first_call(op, cache_dir)), rounds=1, iterations=1)
    benchmark.extra_info["first_call_s"] = seconds[-1]
