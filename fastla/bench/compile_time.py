"""Compile-time benchmarks: the first call of a compiled impl in a fresh interpreter.

``cold``: an empty Numba cache directory, so the time is JIT compilation. ``warm``: the cache the
cold run filled, so the time is loading machine code from disk. Both run in a subprocess, and the
time reported (``extra_info["first_call_s"]``) is measured around the call itself, excluding
interpreter start and imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

#: op -> (setup, first call) for the quick/full sets; small shapes, all the op's numba kernels.
SNIPPETS = {
    "matmul": (
        "a = np.ones((64, 64)); s = np.ones((300, 4, 4))",
        "fastla.matmul(a, a, backend='numba'); fastla.matmul(s, s, backend='numba')",
    ),
    "solve": (
        "a = np.ones((300, 4, 4)) + np.eye(4); b = np.ones((300, 4, 1)); c = np.eye(80) + 1",
        "fastla.solve(a, b, backend='numba'); fastla.lu_factor(c, backend='numba')",
    ),
    "softmax": (
        "x = np.ones((64, 64)); y = np.ones((64, 64), np.float32)",
        "fastla.softmax(x, backend='numba'); fastla.softmax(y, backend='numba')",
    ),
}
#: cheaper versions for the smoke run inside plain ``pytest``.
SMOKE_SNIPPETS = {
    "matmul": ("s = np.ones((300, 2, 2))", "fastla.matmul(s, s, backend='numba')"),
}


def ops_for(set_name, ops):
    table = SMOKE_SNIPPETS if set_name == "smoke" else SNIPPETS
    return [op for op in table if ops is None or op in ops]


def _child(setup, call):
    return textwrap.dedent(
        f"""
        import json, time
        import numpy as np
        import fastla
        {setup}
        t0 = time.perf_counter()
        {call}
        print(json.dumps({{"first_call_s": time.perf_counter() - t0}}))
        """
    )


def first_call(op, cache_dir, smoke=False):
    """Seconds of the first call of ``op``'s numba kernels in a fresh interpreter."""
    setup, call = (SMOKE_SNIPPETS if smoke else SNIPPETS)[op]
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, "-c", _child(setup, call)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"compile benchmark for {op} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["first_call_s"]


def run(benchmark, op, cache, cache_dir):
    from fastla.bench import runner

    smoke = runner.current_set() == "smoke"
    if cache == "warm" and not (os.path.isdir(cache_dir) and os.listdir(cache_dir)):
        first_call(op, cache_dir, smoke)  # fill the cache first (untimed)
    elif cache == "cold" and os.path.isdir(cache_dir):
        import shutil

        shutil.rmtree(cache_dir)
    seconds = []
    benchmark.group = f"compile {op}"
    benchmark.extra_info.update(op="compile", size=op, impl=f"numba ({cache} cache)", flops=0, bytes=0)
    benchmark.pedantic(lambda: seconds.append(first_call(op, cache_dir, smoke)), rounds=1, iterations=1)
    benchmark.extra_info["first_call_s"] = seconds[-1]
