"""Compile-time benchmarks: an op's first call in a fresh interpreter, for every op.

``cold``: an empty Numba cache directory, so the time is JIT compilation. ``warm``: the cache the
cold run filled, so the time is loading machine code from disk (plus Numba's one-time start-up in
that process). Both run in a subprocess, and the time reported (``extra_info["first_call_s"]``) is
measured around the call itself, excluding interpreter start and imports. The calls are the op's
warm-up calls (``fastla._warmup.OPS``, float64): the kernels a typical call of the op compiles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

#: the dtype of the measured first call
DTYPE = "float64"


def ops_for(set_name, ops):
    """Ops measured in ``set_name``: every op with a warm-up call (the smoke set: one cheap op)."""
    from fastla import _warmup

    names = ["softmax"] if set_name == "smoke" else list(dict.fromkeys(_warmup.OPS))
    return [op for op in names if ops is None or op in ops]


def _child(op):
    return textwrap.dedent(
        f"""
        import json, time
        import fastla._warmup as w
        t0 = time.perf_counter()
        w.run_one({op!r}, {DTYPE!r})
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
