"""Host facts: what decides kernel shapes and speed on this machine.

The CPU Numba compiles for and its SIMD width (kernel shapes: register tile, solver lanes, top-k
tiles), the vector width fastla's loops ask LLVM for, the cache sizes (GEMM blocking), and the
summary of ``python -m fastla info``, the benchmark JSON and the report header (and the machine key
baselines are filed under).
"""

from __future__ import annotations

import functools
import os
import platform

import numpy as np

from fastla import _jit

#: the environment variables that decide whether idle BLAS and OpenMP threads spin (reported, never set)
SPIN_SETTINGS = ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def machine_facts():
    """Facts that decide kernel speed, for ``info``, the benchmark JSON and report header."""
    import fastla

    facts = {
        "fastla": fastla.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": _cpu_model(),
        "llvm_cpu": host_cpu()[0],
        "simd_bytes": simd_bytes(),
        "caches": cache_sizes(),
        "cores": os.cpu_count(),
        # what this process may use: its affinity mask, capped by a cgroup CPU quota (a container's);
        # below 2, fastla's kernels run on OpenMP, not TBB (README, "Threads": one CPU)
        "usable_cpus": _jit.usable_cpus(),
        "numba": None,
        "llvm": None,
        "threading_layer": _jit.threading_layer(),
        "fastla_threads": fastla.get_num_threads(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        # how long the idle threads of BLAS and of fastla's OpenMP layer spin before they sleep:
        # calls that alternate between the two pools run at half speed or worse while the other
        # pool spins (README, "Threads": mixing BLAS and fastla calls)
        **{name: os.environ.get(name) for name in SPIN_SETTINGS},
        "blas": [],
        # the rounding of NumPy's LAPACK's small LU, which the batched solver's elimination follows
        # (README, "Drop-in behaviour": singular systems; fastla._lane_solver.dot_rounding)
        "lapack_lu_dots": _lapack_lu_dots(),
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


def _lapack_lu_dots():
    from fastla import _lane_solver

    probed = _lane_solver.lapack_dot_rounding()
    return probed or f"unknown ({_lane_solver.dot_rounding()} assumed)"


def _cpuinfo_field(name):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model():
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


@functools.cache
def cpu_vendor():
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``; ``unknown`` where unreadable).

    Kernel choices measured per vendor read it: the GEMM's in-place bounds and its micro-kernel's
    prefetches (``Blocking`` in ``fastla/_gemm_kernels.py``) and the stacked-product crossover
    (``fastla/matmul.py``).
    """
    return _cpuinfo_field("vendor_id") or "unknown"


@functools.cache
def host_cpu():
    """(cpu name, set of LLVM feature names enabled) that Numba compiles for.

    Numba's own overrides (``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES``) win over the host, so that a
    portable build (``NUMBA_CPU_NAME=generic``) also gets kernel shapes for the generic target.
    """
    try:
        import llvmlite.binding as ll

        name = ll.get_host_cpu_name()
        feats = ll.get_host_cpu_features().flatten()
        if _jit.NUMBA_AVAILABLE:  # as numba.core.codegen.CPUCodegen picks them
            config = _jit.numba.config
            name = config.CPU_NAME or name
            if config.CPU_FEATURES is not None:  # "" for NUMBA_CPU_NAME=generic
                feats = config.CPU_FEATURES
        return name, frozenset(f[1:] for f in feats.split(",") if f[:1] == "+")
    except Exception:  # llvmlite missing or a platform it cannot probe
        return "unknown", frozenset()


@functools.cache
def native_simd_bytes():
    """Width of the widest SIMD registers of the target Numba compiles for: 64, 32 or 16."""
    feats = host_cpu()[1]
    if "avx512f" in feats:
        return 64
    if "avx2" in feats and "fma" in feats:
        return 32
    return 16


def env_flag(name, default):
    """``True`` / ``False`` for the environment variable ``name`` set to ``1`` / ``0``, or ``default``
    when it is unset or empty; anything else is a ValueError naming the variable (as
    :func:`env_int`)."""
    raw = os.environ.get(name)
    if not raw:
        return default
    if raw not in ("0", "1"):
        raise ValueError(f"environment variable {name}={raw!r}: expected 0 or 1")
    return raw == "1"


#: the SIMD widths (bytes) fastla has kernel shapes for: SSE, AVX2, AVX-512
SIMD_WIDTHS = (16, 32, 64)


def env_int(name, default, allowed=None):
    """The positive integer in the environment variable ``name`` (one of ``allowed`` when given), or
    ``default`` when it is unset or empty. Anything else is a ValueError naming the variable and
    what it takes (a tuning knob's typo is otherwise a bare int() traceback at import, or a division
    by zero inside the kernels' shape arithmetic)."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1 or (allowed is not None and value not in allowed):
        want = "one of " + ", ".join(map(str, allowed)) if allowed else "a positive integer"
        raise ValueError(f"environment variable {name}={raw!r}: expected {want}")
    return value


@functools.cache
def simd_bytes():
    """Width of the SIMD registers the compiled kernels use: :func:`native_simd_bytes`, or
    ``FASTLA_SIMD_BYTES`` (to study or test another width's kernel shapes on this host; a width the
    host lacks still runs, LLVM splitting each vector into the registers it has)."""
    return env_int("FASTLA_SIMD_BYTES", None, SIMD_WIDTHS) or native_simd_bytes()


@functools.cache
def vector_bytes():
    """Vector width (bytes) fastla's auto-vectorised loops ask LLVM for: the SIMD width by default."""
    return min(env_int("FASTLA_VECTOR_BYTES", simd_bytes(), SIMD_WIDTHS), simd_bytes())


@functools.cache
def cache_sizes():
    """Data cache sizes in bytes as ``{"L1": .., "L2": .., "L3": ..}``, as cpu0 sees them.

    Read from Linux sysfs; defaults (32 KiB / 512 KiB / 8 MiB, a Zen 3-like core) where unreadable.
    L1 and L2 are a core's own; L3 is the whole cache that core shares: an AMD CCX's (32 MiB on Zen
    3/4), or an Intel server socket's (480 MiB seen on a 2-core Xeon guest), of which a core gets a
    slice. Users of L3 cap it (``fastla/_gemm_kernels.py``: ``L3_COUNTED``).
    """
    sizes = {"L1": 32 * 1024, "L2": 512 * 1024, "L3": 8 * 1024 * 1024}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            if not entry.startswith("index"):
                continue
            path = os.path.join(base, entry)
            with open(os.path.join(path, "type")) as f:
                kind = f.read().strip()
            if kind not in ("Data", "Unified"):
                continue
            with open(os.path.join(path, "level")) as f:
                level = int(f.read())
            with open(os.path.join(path, "size")) as f:
                raw = f.read().strip().upper()
            mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(raw[-1:], 1)
            sizes[f"L{level}"] = int(raw.rstrip("KMG")) * mult
    except (OSError, ValueError):
        pass
    return sizes


#: SIMD width (bytes) of OpenBLAS's kernels per core type (the name ``openblas_get_corename``
#: returns, which threadpoolctl reports as ``architecture``; lower case). A type not listed is
#: treated as full width (never narrower than the host).
OPENBLAS_CORE_BYTES = {
    **dict.fromkeys(("skylakex", "cooperlake", "sapphirerapids"), 64),
    **dict.fromkeys(
        ("haswell", "zen", "sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"), 32
    ),
    **dict.fromkeys(
        ("nehalem", "core2", "penryn", "dunnington", "atom", "barcelona", "opteron", "prescott", "katmai"), 16
    ),
}


@functools.cache
def blas_kernel():
    """``(library, core type, SIMD bytes of its kernels)`` of the BLAS NumPy calls, as threadpoolctl
    reports it (``OPENBLAS_CORETYPE`` may force a narrower core type than the host's); SIMD bytes
    None where not known (MKL, Accelerate, no threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info

        found = [d for d in threadpool_info() if d.get("user_api") == "blas"]
    except Exception:  # threadpoolctl missing or unable to inspect this process
        found = []
    if not found:
        return None, None, None
    lib, core = found[0].get("internal_api"), found[0].get("architecture")
    width = OPENBLAS_CORE_BYTES.get(str(core).lower()) if lib == "openblas" else None
    return lib, core, width


def blas_narrower_than_host():
    """Whether NumPy's BLAS runs kernels of narrower vectors than the compiled kernels' SIMD width
    (OpenBLAS's Haswell kernel on an AVX-512 host, as ``OPENBLAS_CORETYPE=Haswell`` forces)."""
    width = blas_kernel()[2]
    return width is not None and width < simd_bytes()
