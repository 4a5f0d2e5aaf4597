"""Stacks of tiny linear systems (n <= 16) solved one system per SIMD lane: the batched kernel
behind :func:`fastla.solve` for small n.

Each group of ``lanes`` systems is transposed into per-thread scratch ``W[i, c, lane]`` /
``X[i, c, lane]`` and eliminated by straight-line vector code emitted for the exact n and number of
right-hand sides (:func:`lane_solve`, an ``@intrinsic``). Partial pivoting is branch-free: the
pivot row is found by compare + select per lane and the rows are swapped by selects, so lanes that
pick different pivots never diverge. Measured on Zen 1 (AVX2, 4 f64 lanes), 100k systems, 2 threads,
f64, ratio to np.linalg.solve: one system per loop iteration (elimination unrolled for the exact n)
12x / 9x / 7x for n = 3 / 4 / 8; this kernel 18-20x / 12-16x / 12x. Numba loops over a lane axis
stayed scalar (LLVM fully unrolls the short lane loops before the loop vectoriser runs, and Numba
disables the SLP vectoriser): 8x / 6x / 3x. Generated Python with one local per element compiled for
minutes (n = 8) and was no faster.
"""

from __future__ import annotations

import numpy as np

from fastla import _host, _intrinsics, _jit
from fastla._jit import jit, prange
from fastla._jit import thread_id as _thread_id

#: right-hand sides solved per pass (more are done in passes of this many, refactoring each time)
LANE_RHS = 4


def lanes(dtype):
    """Systems per group for ``dtype``: one SIMD register's worth of elements."""
    return max(_host.simd_bytes() // np.dtype(dtype).itemsize, 2)


def _lane_solve_twin(N, K, W, X, S):
    """Python twin of :func:`lane_solve` on the same layouts (numpy over the lane axis)."""
    for j in range(N):
        col = np.abs(W[j:, j])  # (N - j, lanes)
        best = col[0].copy()
        p = np.full(best.shape, j)
        for i in range(1, N - j):
            g = col[i] > best
            best = np.where(g, col[i], best)
            p = np.where(g, j + i, p)
        for i in range(j + 1, N):
            m = p == i
            for arr, lo in ((W, j), (X, 0)):
                top, row = arr[j, lo:].copy(), arr[i, lo:].copy()
                arr[j, lo:] = np.where(m, row, top)
                arr[i, lo:] = np.where(m, top, row)
        S[:] = np.where((S == 0) & (W[j, j] == 0), j + 1, S)
        with np.errstate(divide="ignore", invalid="ignore"):
            nrd = -1 / W[j, j]
            W[j, j] = nrd
            for i in range(j + 1, N):
                f = W[i, j] * nrd
                W[i, j + 1 :] += f * W[j, j + 1 :]
                X[i] += f * X[j]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(N - 1, -1, -1):
            u = -X[i]
            for r in range(N - 1, i, -1):  # LAPACK's trsv order: the newest unknown last
                u = u + W[i, r] * X[r]
            X[i] = u * W[i, i]


def _lane_codegen(n, k, v, itemsize, status_array):
    """LLVM IR for :func:`lane_solve` (``status_array``: S is an argument, stored) and
    :func:`lane_solve_one` (no S: lane 0's status is returned). W is only read."""
    from llvmlite import ir

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        fty = context.get_value_type(sig.args[2].dtype)
        vty = ir.VectorType(fty, v)
        ity = ir.VectorType(i64, v)
        w_ptr = context.make_array(sig.args[2])(context, builder, args[2]).data
        x_ptr = context.make_array(sig.args[3])(context, builder, args[3]).data

        def ptr(base, offset, ty):
            return builder.bitcast(builder.gep(base, [ir.Constant(i64, offset)]), ty.as_pointer())

        def load(base, offset):
            return builder.load(ptr(base, offset, vty), align=itemsize)

        def store(val, base, offset):
            builder.store(val, ptr(base, offset, vty), align=itemsize)

        def splat(ty, value):
            return ir.Constant(ty, [value] * v)

        def fn(name, nargs):
            return _intrinsics.llvm_function(builder, f"llvm.{name}.v{v}f{8 * itemsize}", vty, [vty] * nargs)

        fabs, fma = fn("fabs", 1), fn("fma", 3)
        a = [[load(w_ptr, (i * n + c) * v) for c in range(n)] for i in range(n)]
        x = [[load(x_ptr, (i * k + c) * v) for c in range(k)] for i in range(n)]
        if status_array:
            s_ptr = context.make_array(sig.args[4])(context, builder, args[4]).data
            s = builder.load(ptr(s_ptr, 0, ity), align=8)
        else:
            s = splat(ity, 0)
        zero_f, minus_one = splat(vty, 0.0), splat(vty, -1.0)
        zero_i = splat(ity, 0)
        nrd = [None] * n
        for j in range(n):
            best = builder.call(fabs, [a[j][j]])
            p = splat(ity, j)
            for i in range(j + 1, n):
                val = builder.call(fabs, [a[i][j]])
                g = builder.fcmp_ordered(">", val, best)
                best = builder.select(g, val, best)
                p = builder.select(g, splat(ity, i), p)
            for i in range(j + 1, n):
                m = builder.icmp_signed("==", p, splat(ity, i))
                for row_j, row_i, lo in ((a[j], a[i], j), (x[j], x[i], 0)):
                    for c in range(lo, len(row_j)):
                        row_j[c], row_i[c] = (
                            builder.select(m, row_i[c], row_j[c]),
                            builder.select(m, row_j[c], row_i[c]),
                        )
            first = builder.and_(
                builder.fcmp_ordered("==", a[j][j], zero_f), builder.icmp_signed("==", s, zero_i)
            )
            s = builder.select(first, splat(ity, j + 1), s)
            nrd[j] = builder.fdiv(minus_one, a[j][j])
            for i in range(j + 1, n):
                f = builder.fmul(a[i][j], nrd[j])
                for c in range(j + 1, n):
                    a[i][c] = builder.call(fma, [f, a[j][c], a[i][c]])
                for c in range(k):
                    x[i][c] = builder.call(fma, [f, x[j][c], x[i][c]])
        for i in range(n - 1, -1, -1):
            for c in range(k):
                u = builder.fneg(x[i][c])
                # the newest unknown last (LAPACK's trsv order): x[i + 1] then costs one FMA on the
                # critical path of one system, not n - i - 1
                for r in range(n - 1, i, -1):
                    u = builder.call(fma, [a[i][r], x[r][c], u])
                x[i][c] = builder.fmul(u, nrd[i])
        for i in range(n):
            for c in range(k):
                store(x[i][c], x_ptr, (i * k + c) * v)
        if status_array:
            builder.store(s, ptr(s_ptr, 0, ity), align=8)
            return context.get_dummy_value()
        return builder.extract_element(s, ir.Constant(ir.IntType(32), 0))

    return codegen


@_jit.intrinsic(_lane_solve_twin)
def lane_solve(typingctx, N, K, W, X, S):
    """Solve ``lanes`` n x n systems at once, one per SIMD lane, for compile-time ``N`` and ``K``.

    ``W`` (C-contiguous, ``(N, N, lanes)``) holds the matrices, ``X`` (``(N, K, lanes)``) the right-hand
    sides and receives the solutions; ``S`` (``(lanes,)`` int64, zeroed by the caller) receives, per
    lane, ``j + 1`` for the first column whose pivot is exactly zero (the lane's result is then
    meaningless). The compiled code only reads ``W`` (the Python twin overwrites it). Gaussian
    elimination with partial pivoting as LAPACK getrf (the first largest |a_ij| wins; NaN never
    does), all in vector registers.
    """
    nbt = _jit.nb_types
    if not (isinstance(N, nbt.IntegerLiteral) and isinstance(K, nbt.IntegerLiteral)):
        return None
    if not all(isinstance(t, nbt.Array) for t in (W, X, S)) or W.dtype != X.dtype:
        return None
    if W.dtype not in (nbt.float32, nbt.float64) or S.dtype != nbt.int64:
        return None
    dtype = np.dtype(str(W.dtype))
    codegen = _lane_codegen(N.literal_value, K.literal_value, lanes(dtype), dtype.itemsize, True)
    return nbt.void(N, K, W, X, S), codegen


def _lane_solve_one_twin(N, K, W, X):
    S = np.zeros(1, np.int64)
    X3 = (X[:, None] if X.ndim == 1 else X)[..., None]
    _lane_solve_twin(N, K, np.array(W, copy=True)[..., None], X3, S)
    return int(S[0])


@_jit.intrinsic(_lane_solve_one_twin)
def lane_solve_one(typingctx, N, K, W, X):
    """:func:`lane_solve`'s straight-line code for one system (one lane): ``W`` C-contiguous
    ``(N, N)`` (only read), ``X`` ``(N, K)`` (the right-hand sides, then the solutions; for K = 1
    also ``(N,)``, the same memory, which spares a caller Numba's ``reshape``: 30 ns of a 45 ns
    3x3 solve); returns 0, or ``j + 1`` for the first exactly zero pivot. The same pivoting and
    operation order as the batched solver, so both give the same answer."""
    nbt = _jit.nb_types
    if not (isinstance(N, nbt.IntegerLiteral) and isinstance(K, nbt.IntegerLiteral)):
        return None
    x_ndims = (1, 2) if K.literal_value == 1 else (2,)
    if not all(isinstance(t, nbt.Array) and t.layout == "C" for t in (W, X)):
        return None
    if W.ndim != 2 or X.ndim not in x_ndims:
        return None
    if W.dtype != X.dtype or W.dtype not in (nbt.float32, nbt.float64):
        return None
    dtype = np.dtype(str(W.dtype))
    codegen = _lane_codegen(N.literal_value, K.literal_value, 1, dtype.itemsize, False)
    return nbt.int64(N, K, W, X), codegen


_SMALL_SOLVERS = {}
_GROUPS = 16  # groups of `lanes` systems per parallel task
_SPREAD = 8  # scratch blocks between two threads' blocks (no false sharing)


def small_solver(n, k):
    """Parallel kernel solving a stack of n x n systems with k right-hand sides (n <= 16).

    ``kernel(a, b, x, w, xs, s, info)``: ``a`` (batch, n, n), ``b`` (batch, n, k), ``x`` receives the
    solutions; ``w`` (``_SPREAD * threads``, n, n, lanes), ``xs`` (``_SPREAD * threads``, n,
    LANE_RHS-or-k, lanes) and ``s`` (``_SPREAD * threads``, lanes) are per-thread scratch, ``info[t] =
    j+1`` records a zero pivot in column j of system t (no return from inside ``prange``). Compiled
    for this n and k (k > LANE_RHS: passes of LANE_RHS columns).
    """
    key = (n, min(k, LANE_RHS))
    kernel = _SMALL_SOLVERS.get(key)
    if kernel is None:
        kernel = _SMALL_SOLVERS[key] = _make_small_solver(*key)
    return kernel


def _make_small_solver(N, K):
    @jit(parallel=True)
    def kernel(a, b, x, w, xs, s, info):
        batch, k, nl_max = a.shape[0], b.shape[2], w.shape[-1]
        groups = (batch + nl_max - 1) // nl_max
        for task in prange((groups + _GROUPS - 1) // _GROUPS):
            slot = _SPREAD * _thread_id()
            ws, xw, sw = w[slot], xs[slot], s[slot]
            for g in range(task * _GROUPS, min(groups, (task + 1) * _GROUPS)):
                t0 = g * nl_max
                nl = min(nl_max, batch - t0)
                for c0 in range(0, k, K):
                    kk = min(K, k - c0)
                    for t in range(nl):  # transpose the group in
                        for i in range(N):
                            for c in range(N):
                                ws[i, c, t] = a[t0 + t, i, c]
                            for c in range(kk):
                                xw[i, c, t] = b[t0 + t, i, c0 + c]
                            for c in range(kk, K):
                                xw[i, c, t] = 0.0
                    for t in range(nl, nl_max):  # a short last group: identity systems
                        for i in range(N):
                            for c in range(N):
                                ws[i, c, t] = 1.0 if i == c else 0.0
                            for c in range(K):
                                xw[i, c, t] = 0.0
                    sw[:] = 0
                    lane_solve(N, K, ws, xw, sw)
                    for t in range(nl):
                        info[t0 + t] = sw[t]
                        for i in range(N):
                            for c in range(kk):
                                x[t0 + t, i, c0 + c] = xw[i, c, t]

    return kernel
