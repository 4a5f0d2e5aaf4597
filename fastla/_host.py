"""What decides kernel speed on this machine, for ``python -m fastla info``, the benchmark JSON and
the report header (and the machine key baselines are filed under)."""

from __future__ import annotations

import os
import platform

import numpy as np


def machine_facts():
    """Facts that decide kernel speed, for ``info``, the benchmark JSON and report header."""
    import fastla
    from fastla import _jit

    facts = {
        "fastla": fastla.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": _cpu_model(),
        "llvm_cpu": _jit.host_cpu()[0],
        "simd_bytes": _jit.simd_bytes(),
        "caches": _jit.cache_sizes(),
        "cores": os.cpu_count(),
        "numba": None,
        "llvm": None,
        "threading_layer": _jit.threading_layer(),
        "fastla_threads": fastla.get_num_threads(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "blas": [],
        "backends": {
            "numba": "available"
            if _jit.JIT_ENABLED
            else (_jit.NUMBA_IMPORT_ERROR or "numba installed, JIT disabled (NUMBA_DISABLE_JIT=1)"),
            "numpy": "available",
            "loop": "available",
        },
        "default_backend": fastla.get_backend(),
    }
    if _jit.NUMBA_AVAILABLE:
        import llvmlite.binding as ll

        facts["numba"] = _jit.numba.__version__
        facts["llvm"] = ".".join(map(str, ll.llvm_version_info))
    try:
        from threadpoolctl import threadpool_info

        facts["blas"] = [
            {k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        ]
    except ImportError:
        facts["blas"] = "threadpoolctl not installed"
    return facts


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
