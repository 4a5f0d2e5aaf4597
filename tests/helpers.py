"""The shared input matrix (ARCHITECTURE.md, "Tests and benchmarks come from the registry"): dtypes,
layouts, tolerances. Every op's tests reuse it."""

from __future__ import annotations

import numpy as np

import fastla

DTYPES = (np.float32, np.float64)
#: Ways an input can arrive; ``variant`` makes each from a C-contiguous array.
LAYOUTS = ("C", "F", "strided", "negstride", "readonly", "byteswapped")
ODD_SIZES = (1, 7, 33, 65, 127)
LOOP_MAX = 40  # the pure-Python loop impl only runs on sizes up to this (seconds otherwise)


def variant(x, layout):
    """Return an array equal to ``x`` but laid out as ``layout`` (a view where possible)."""
    x = np.ascontiguousarray(x)
    if layout == "C":
        return x.copy()
    if layout == "F":
        return np.asfortranarray(x)
    if layout == "strided":  # every other element along each axis of a larger array
        big = np.zeros(tuple(2 * s for s in x.shape), dtype=x.dtype)
        view = big[tuple(slice(None, None, 2) for _ in x.shape)]
        view[...] = x
        return view
    if layout == "negstride":
        rev = x[tuple(slice(None, None, -1) for _ in x.shape)].copy()
        return rev[tuple(slice(None, None, -1) for _ in x.shape)]
    if layout == "readonly":
        y = x.copy()
        y.flags.writeable = False
        return y
    if layout == "byteswapped":
        return x.astype(x.dtype.newbyteorder("S"))
    raise ValueError(layout)


def impl_names(op, size=0):
    """Registry impls of ``op`` that should run at problem size ``size`` (loop only when small)."""
    return [n for n in fastla.implementations(op) if n != "loop" or size <= LOOP_MAX]


def eps(dtype):
    return float(np.finfo(dtype).eps)


def rtol(dtype):
    """The suite's relative tolerance: float64 1e-10, float32 1e-5."""
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-10


def assert_matmul_close(c, a, b, dtype):
    """Error bound of a k-term dot product: |c - ref| <= 4 k eps (|a| @ |b|) elementwise."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    ref = a64 @ b64
    k = a64.shape[-1]
    bound = 4 * max(k, 1) * eps(dtype) * (np.abs(a64) @ np.abs(b64)) + np.finfo(dtype).tiny
    err = np.abs(np.asarray(c, dtype=np.float64) - ref)
    assert c.shape == ref.shape, (c.shape, ref.shape)
    bad = ~(err <= bound)  # NaN (an element never written, say) counts as outside the bound
    assert not bad.any(), f"{bad.sum()} of {bad.size} outside the bound, {np.isnan(err).sum()} NaN"


def counted_in_loops(ir):
    """The arrays whose reference counts the LLVM IR ``ir`` updates inside a loop: the names of the
    values passed to ``NRT_incref``/``NRT_decref`` in a basic block that lies on a cycle of its
    function's control-flow graph (each an atomic read-modify-write on the owner's count, which
    every thread sharing the array contends for)."""
    import re

    found = set()
    for fn in re.split(r"\n(?=define )", ir):
        if not fn.startswith("define"):
            continue
        blocks, name = {"entry": []}, "entry"
        for line in fn.splitlines()[1:]:
            label = re.match(r"^([\w.$\-]+):", line)
            if label:
                name = label.group(1)
                blocks[name] = []
            else:
                blocks[name].append(line)
        succ = {b: set(re.findall(r"label %([\w.$\-]+)", "\n".join(lines))) for b, lines in blocks.items()}

        def on_cycle(b, succ=succ):
            seen, todo = set(), list(succ.get(b, ()))
            while todo:
                nxt = todo.pop()
                if nxt == b:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.extend(succ.get(nxt, ()))
            return False

        for b, lines in blocks.items():
            calls = re.finditer(r"@NRT_(?:in|de)cref\(ptr %([\w.]+)\)", "\n".join(lines))
            counted = {m.group(1) for m in calls}
            if counted and on_cycle(b):
                found |= counted
    return found


def fresh_ir(kernel, sig):
    """The LLVM IR of fastla kernel ``kernel`` (a ``_jit.jit`` dispatcher) compiled afresh for the
    Numba types ``sig`` with fastla's flags: cached code cannot be inspected."""
    from numba import njit

    f = njit(cache=False, fastmath=set(fastla._jit.FASTMATH), error_model="numpy")(kernel.py_func)
    f.compile(sig)
    return f.inspect_llvm(sig)


def record_gc(key):
    """Append this process's garbage-collector thresholds and whether objects are frozen to the file
    ``key[0]`` (a size job's stand-in: ``fastla._first_use.SizeBackground`` runs it in the job's
    process, then in the calling one)."""
    import gc
    import os

    with open(key[0], "a") as f:
        f.write(f"{os.getpid()} {gc.get_threshold()} {gc.get_freeze_count() > 0}\n")
