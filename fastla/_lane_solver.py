"""Stacks of small linear systems (n <= 32) solved one system per SIMD lane: the batched kernel
behind :func:`fastla.solve` for small n.

Each group of ``lanes`` systems is loaded from the stack and transposed in registers (element
``(i, c)`` of every system in one vector) and eliminated by straight-line vector code emitted for the
exact n and number of right-hand sides (:func:`lane_solve_group`, an ``@intrinsic``); the solutions
are transposed back and stored the same way. Partial pivoting is branch-free: the
pivot row is found by compare + select per lane and the rows are swapped by selects, so lanes that
pick different pivots never diverge. Up to n = :data:`REGISTER_N` the columns are eliminated in the
order of the LU that NumPy's LAPACK runs (left-looking, its dot products rounded as that LAPACK
rounds them: :func:`dot_rounding`), so that a system singular in exact arithmetic gets NumPy's
verdict (see :func:`dot_rounding`); larger n and the one-system kernels are right-looking. A float32
stack is computed in float64, as NumPy's ``linalg.solve`` computes it (:data:`COMPUTE`).
Measured on Zen 1 (AVX2, 4 f64 lanes), 100k systems, 2 threads, f64, ratio to np.linalg.solve: one
system per loop iteration (elimination unrolled for the exact n) 12x / 9x / 7x for n = 3 / 4 / 8;
this kernel 18-20x / 12-16x / 12x. Numba loops over a lane axis
stayed scalar (LLVM fully unrolls the short lane loops before the loop vectoriser runs, and Numba
disables the SLP vectoriser): 8x / 6x / 3x. Generated Python with one local per element compiled for
minutes (n = 8) and was no faster.
"""

from __future__ import annotations

import functools

import numpy as np

from fastla import _first_use, _host, _intrinsics, _jit
from fastla._jit import jit
from fastla._jit import thread_id as _thread_id

#: n up to which a group is eliminated by straight-line code over values (:func:`_eliminate`); larger
#: n by loops over rows of a lanes-last copy on the stack (:func:`_memory_codegen`). At n = 9-16 the
#: straight-line code's values far outnumber the registers, and LLVM's spills of them cost more than
#: the loops' loads and stores. Measured on Zen 5 (2 threads, float64, against np.linalg.solve):
#: 20000 12x12 systems 8.1x -> 10.9x, 10000 16x16 9.9x -> 15.6x (three right-hand sides 7.7x ->
#: 14.5x), 10000 10x10 0.58-0.76 -> 0.41-0.45 ms; for n = 3-8 the two measured within noise of
#: each other (20000 systems, two runs each), with the loops behind at 3x3 in f64.
REGISTER_N = 8
#: n up to which :func:`_memory_codegen` unrolls a step's columns, the pivot row in registers; above,
#: the columns are loops too. Measured on Zen 5 (2 threads, float64, 10000 systems, two runs): 32x32
#: 10.1-11.2 ms looped against 15.9 unrolled (33 pivot-row vectors spill), 24x24 4.5-5.0 against
#: 3.6-4.5; a 32x32 stack's first call compiles in 3.8 s looped, 4.8-5.5 s unrolled.
UNROLLED_N = 16

#: right-hand sides solved per pass (more are done in passes of this many, refactoring each time)
LANE_RHS = 4


#: The n whose groups are half a 512-bit register on a host that runs 512-bit vectors on 256-bit
#: units (Zen 4: ``znver4``). Such a group's n * (n + 1) vectors outnumber the 32 registers from
#: n = 6, and its spills and transposes cost twice the bytes of a 256-bit group's, where a 512-bit
#: operation buys no throughput. Measured on Zen 4 (50 000 float64 systems, one right-hand side, ns a
#: system, median of four interleaved runs, 512- against 256-bit groups): one thread n = 5 27.8 /
#: 22.6, 6 45.8 / 31.6, 7 88.2 / 45.5, 8 124.2 / 93.2; two threads 6 19.6 / 18.1, 7 36.5 / 24.1, 8
#: 61.0 / 57.6; n = 3, 4 and 12, 16 (memory loops) within noise or better at 512 bits. Unmeasured
#: hosts (Zen 5's 512-bit units, Intel) keep full-width groups.
HALF_WIDTH_N = range(6, REGISTER_N + 1) if _host.host_cpu()[0] == "znver4" else ()


#: What a stack's groups are computed in, float32 stacks too: NumPy's ``linalg.solve`` converts single
#: precision to double, solves in double (LAPACK's dgesv) and rounds the solutions back, and so does
#: :func:`lane_solve_group` (in registers: a float32 stack is read and written as float32). Computed in
#: float32, 20 000 random systems' solutions had median / p99 relative errors against float64 of
#: 6.9e-8 / 1.9e-6 at 3x3 and 2.0e-7 / 8.6e-6 at 8x8, NumPy's 2.4e-8 / 5.3e-8 and 2.8e-8 / 5.3e-8, and
#: float32 systems singular in exact arithmetic got NumPy's verdict in 75-84% of stacks.
COMPUTE = np.dtype(np.float64)

#: :func:`lane_solve_group`'s ``DOTS`` codes: the elimination order of :func:`_eliminate`
DOT_ORDERS = {0: None, 1: "fused", 2: "unfused"}

#: 3x3 matrices, singular in exact arithmetic, whose last pivot a left-looking LU (OpenBLAS's
#: getf2) computes as exactly zero with its dot products' multiply-adds fused and not unfused
#: (the first), or unfused and not fused (the second): found by emulating both orders in exact
#: arithmetic over random integer matrices of rank 2
_FUSED_PROBE = ((-2.0, 4.0, 3.0), (9.0, -4.0, -3.0), (-2.0, 4.0, 3.0))
_UNFUSED_PROBE = ((1.0, -2.0, 0.0), (-4.0, 1.0, 2.0), (-3.0, 6.0, 0.0))


@functools.cache
def lapack_dot_rounding():
    """How the LAPACK that NumPy calls rounds the dot products of its unblocked LU (OpenBLAS's
    ``getf2``, which its getrf runs for small n): ``"fused"`` or ``"unfused"``, read off
    ``np.linalg.det`` (getrf) of the two probe matrices, whose determinant is exactly 0 where their
    last pivot is (~5 us, once a process); None where neither probe tells (another BLAS, a blocked
    or recursive getrf). OpenBLAS 0.3.31 on Zen 4: its SkylakeX kernels fuse; its Haswell, Zen and
    SandyBridge kernels (``OPENBLAS_CORETYPE``) do not."""
    fused = np.linalg.det(np.array(_FUSED_PROBE)) == 0.0
    unfused = np.linalg.det(np.array(_UNFUSED_PROBE)) == 0.0
    return "fused" if fused and not unfused else "unfused" if unfused and not fused else None


def dot_rounding():
    """The batched solver's elimination order (:func:`_eliminate`, n <= :data:`REGISTER_N`):
    left-looking with LAPACK's dot rounding (:func:`lapack_dot_rounding`), fused where it cannot
    tell. A stack of systems singular in exact arithmetic then gets NumPy's verdict (LinAlgError or
    not) where the two LUs round alike: every one of 300 random rank-deficient integer float64
    systems for each n = 2 to 5, on both kinds of OpenBLAS kernel (against 63-73% for n = 3 to 5 in
    the right-looking order before); n = 6: 94-97%, n = 8: 82-86% (OpenBLAS's longer dots and
    matrix-vector products sum in another order). float32 stacks get float64's verdicts: NumPy
    solves them in float64 (its ``linalg`` converts single precision to double), and so does this
    kernel (:data:`COMPUTE`; computed in float32, they had agreed 75-84% of the time)."""
    return lapack_dot_rounding() or "fused"


def dot_order_code():
    """:data:`DOT_ORDERS`'s code of :func:`dot_rounding` (the batched solver's order)."""
    order = dot_rounding()
    return next(code for code, name in DOT_ORDERS.items() if name == order)


def lanes(n=None):
    """Systems per group (of systems of size ``n``), float32 and float64 stacks alike: one SIMD
    register's worth of the elements a group is computed in (:data:`COMPUTE`), or half of a 512-bit
    one for the n of :data:`HALF_WIDTH_N`."""
    size, width = COMPUTE.itemsize, _host.simd_bytes()
    if width == 64 and n in HALF_WIDTH_N:
        width = 32
    return max(width // size, 2)


def _lane_solve_twin(N, K, W, X, S, dots=None):
    """:func:`_eliminate` in Python on ``W`` (n, n, lanes) and ``X`` (n, k, lanes), which receives the
    solutions (numpy over the lane axis); ``S`` (lanes,) receives the statuses (W is overwritten).
    ``dots``: as :func:`_eliminate`'s, the products of a left-looking column's dots rounded apart
    (NumPy has no fused multiply-add) whatever the mode."""
    left = dots is not None
    for j in range(N):
        if left:
            for i in range(1, N):
                depth = min(i, j)
                if depth:
                    dot = W[i, 0] * W[0, j]
                    for q in range(1, depth):
                        dot = dot + W[i, q] * W[q, j]
                    W[i, j] = W[i, j] - dot
        col = np.abs(W[j:, j])  # (N - j, lanes)
        best = col[0].copy()
        p = np.full(best.shape, j)
        for i in range(1, N - j):
            g = col[i] > best
            best = np.where(g, col[i], best)
            p = np.where(g, j + i, p)
        for i in range(j + 1, N):
            m = p == i
            for arr, lo in ((W, 0 if left else j), (X, 0)):
                top, row = arr[j, lo:].copy(), arr[i, lo:].copy()
                arr[j, lo:] = np.where(m, row, top)
                arr[i, lo:] = np.where(m, top, row)
        S[:] = np.where((S == 0) & (W[j, j] == 0), j + 1, S)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if left:
                rcp = 1 / W[j, j]
                nrd = -rcp
                for i in range(j + 1, N):
                    W[i, j] = W[i, j] * rcp
                    X[i] += -W[i, j] * X[j]
            else:
                nrd = -1 / W[j, j]
                for i in range(j + 1, N):
                    f = W[i, j] * nrd
                    W[i, j + 1 :] += f * W[j, j + 1 :]
                    X[i] += f * X[j]
            W[j, j] = nrd
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(N - 1, -1, -1):
            u = -X[i]
            for r in range(N - 1, i, -1):  # LAPACK's trsv order: the newest unknown last
                u = u + W[i, r] * X[r]
            X[i] = u * W[i, i]


def _rhs_loader(context, builder, ty, val, itemsize):
    """``load(i, c)``: element ``(i, c)`` (``(i,)`` for a 1-D array) of the array ``val`` of Numba type
    ``ty``, at its strides (the right-hand sides of :func:`lane_solve_one`, any layout)."""
    from llvmlite import ir

    data, _, strides = _intrinsics.array_parts(context, builder, ty, val)
    fty = context.get_value_type(ty.dtype)

    def load(i, c):
        offset = builder.mul(strides[0], ir.Constant(strides[0].type, i))
        if ty.ndim == 2:
            offset = builder.add(offset, builder.mul(strides[1], ir.Constant(strides[1].type, c)))
        ptr = builder.bitcast(builder.gep(data, [offset]), fty.as_pointer())
        return builder.load(ptr, align=itemsize)

    return load


def _eliminate(builder, a, x, s, dots=None):
    """Gaussian elimination with partial pivoting and back substitution on LLVM vector values, one
    system per lane: ``a`` (n lists of n vectors) and ``x`` (n lists of k right-hand-side vectors)
    are lists, updated in place (``x`` ends holding the solutions); ``s`` (an ``i64`` vector) is the
    status so far, and the new one is returned: per lane, ``j + 1`` for the first exactly zero pivot
    (column j) unless ``s`` held one already.

    ``dots`` None: right-looking (each step updates the rows below it, one FMA an element, as
    :func:`_row_codegen` and :func:`_memory_codegen` do). ``"fused"`` or ``"unfused"``: left-looking,
    in the order of OpenBLAS's unblocked LU (``getf2``, which LAPACK's getrf runs for small n):
    column j is computed from the factored columns, each element minus the dot product of its row
    of L and its column of U, summed from the first term with each product fused into the sum
    (``"fused"``) or rounded apart (``"unfused"``), then divided by the pivot as a product with its
    reciprocal (:func:`dot_rounding`). Same operation count, one subtraction an element more. The
    right-hand sides are eliminated as LAPACK's getrs does (one FMA an element, column by column)."""
    from llvmlite import ir

    n = len(a)
    vty = a[0][0].type
    v, bits = vty.count, 64 if vty.element == ir.DoubleType() else 32
    ity = ir.VectorType(ir.IntType(64), v)

    def splat(ty, value):
        return ir.Constant(ty, [value] * v)

    def fn(name, nargs):
        return _intrinsics.llvm_function(builder, f"llvm.{name}.v{v}f{bits}", vty, [vty] * nargs)

    fabs, fma = fn("fabs", 1), fn("fma", 3)
    zero_f, minus_one, one, zero_i = splat(vty, 0.0), splat(vty, -1.0), splat(vty, 1.0), splat(ity, 0)
    left = dots is not None
    # The left-looking order's operations carry a flag of their own, so that Numba's fastmath pass
    # (which flags every unflagged float operation with fastla's flags) leaves them exact: with
    # `contract` LLVM fused `a - l * u` into one FMA, with `reassoc` and `arcp` it may regroup the
    # sums and turn `a * (1 / p)` into `a / p`. No signed zeros only: an exact zero stays a zero.
    exact = ("nsz",)
    nrd = [None] * n
    for j in range(n):
        if left:  # column j from columns 0 .. j-1 (their multipliers stored left of the diagonal)
            for i in range(1, n):
                depth = min(i, j)
                if depth == 0:
                    continue
                dot = builder.fmul(a[i][0], a[0][j], flags=exact)
                for q in range(1, depth):
                    if dots == "fused":
                        dot = builder.call(fma, [a[i][q], a[q][j], dot])
                    else:
                        dot = builder.fadd(dot, builder.fmul(a[i][q], a[q][j], flags=exact), flags=exact)
                a[i][j] = builder.fsub(a[i][j], dot, flags=exact)
        best = builder.call(fabs, [a[j][j]])
        p = splat(ity, j)
        for i in range(j + 1, n):
            val = builder.call(fabs, [a[i][j]])
            g = builder.fcmp_ordered(">", val, best)
            best = builder.select(g, val, best)
            p = builder.select(g, splat(ity, i), p)
        for i in range(j + 1, n):
            m = builder.icmp_signed("==", p, splat(ity, i))
            # left-looking: the whole rows (the multipliers left of j and the columns not yet
            # computed move with them); right-looking: from column j (nothing left of it is read)
            for row_j, row_i, lo in ((a[j], a[i], 0 if left else j), (x[j], x[i], 0)):
                for c in range(lo, len(row_j)):
                    row_j[c], row_i[c] = (
                        builder.select(m, row_i[c], row_j[c]),
                        builder.select(m, row_j[c], row_i[c]),
                    )
        first = builder.and_(
            builder.fcmp_ordered("==", a[j][j], zero_f), builder.icmp_signed("==", s, zero_i)
        )
        s = builder.select(first, splat(ity, j + 1), s)
        if left:
            rcp = builder.fdiv(one, a[j][j], flags=exact)
            nrd[j] = builder.fneg(rcp)  # -1 / a_jj exactly
            for i in range(j + 1, n):
                a[i][j] = builder.fmul(a[i][j], rcp, flags=exact)  # the multiplier, kept for later columns
                f = builder.fneg(a[i][j])  # = a_ij * (-1 / a_jj) exactly, as right-looking
                for c in range(len(x[i])):
                    x[i][c] = builder.call(fma, [f, x[j][c], x[i][c]])
            continue
        nrd[j] = builder.fdiv(minus_one, a[j][j])
        for i in range(j + 1, n):
            f = builder.fmul(a[i][j], nrd[j])
            for c in range(j + 1, n):
                a[i][c] = builder.call(fma, [f, a[j][c], a[i][c]])
            for c in range(len(x[i])):
                x[i][c] = builder.call(fma, [f, x[j][c], x[i][c]])
    for i in range(n - 1, -1, -1):
        for c in range(len(x[i])):
            u = builder.fneg(x[i][c])
            # the newest unknown last (LAPACK's trsv order): x[i + 1] then costs one FMA on the
            # critical path of one system, not n - i - 1
            for r in range(n - 1, i, -1):
                u = builder.call(fma, [a[i][r], x[r][c], u])
            x[i][c] = builder.fmul(u, nrd[i])
    return s


def _lane_codegen(n, k, v, itemsize):
    """LLVM IR for :func:`lane_solve_one` in ``v`` lanes (1 in fastla; more to test the code): the
    right-hand sides are read from B into lane 0, the solutions stored in X (``(n, k, v)`` elements,
    lanes last) and lane 0's status is returned. W (``(n, n, v)``) is only read."""
    from llvmlite import ir

    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vty = ir.VectorType(context.get_value_type(sig.args[2].dtype), v)
        w_ptr = context.make_array(sig.args[2])(context, builder, args[2]).data
        x_ptr = context.make_array(sig.args[4])(context, builder, args[4]).data

        def at(base, offset):
            return _group_at(builder, base, ir.Constant(i64, offset), vty)

        a = [[builder.load(at(w_ptr, (i * n + c) * v), align=itemsize) for c in range(n)] for i in range(n)]
        rhs = _rhs_loader(context, builder, sig.args[3], args[3], itemsize)
        undef = ir.Constant(vty, ir.Undefined)
        first = ir.Constant(i32, 0)
        x = [[builder.insert_element(undef, rhs(i, c), first) for c in range(k)] for i in range(n)]
        s = _eliminate(builder, a, x, ir.Constant(ir.VectorType(i64, v), [0] * v))
        for i in range(n):
            for c in range(k):
                builder.store(x[i][c], at(x_ptr, (i * k + c) * v), align=itemsize)
        return builder.extract_element(s, ir.Constant(i32, 0))

    return codegen


def _rows_pay(n, itemsize):
    """Whether one n x n system is solved as row vectors (:func:`_row_codegen`) rather than by the
    one-lane straight-line code: for n = 2 to 4 (a row, rounded up to 4, fits a 256-bit register).
    Measured on an Intel Xeon (rocketlake, AVX-512), one system a call in a user's loop, float64 /
    float32 ns, row vectors against one lane: n = 2: 7.0 / 6.0 against 9.1 / 8.4; n = 3: 23.6 / 17.4
    against 34.8 / 33.2; n = 4: 38-44 / 38 against 51-57 / 51-55. n = 8 (one 512-bit float64 row)
    came out 225 against 218-268 (float32 207-232 against 174-219), and n = 5 to 7 (rows padded to 8)
    82-196 against 78-167: those stay one-lane. Zen 5 (AVX-512, float64 n = 8, each form compiled
    out of line as ``kernels.solve`` calls it, interleaved in one process, three runs): one lane
    110-121 ns a system, rows 117-132; rows with the reciprocals of every pivot candidate divided
    while the pivot search runs 119-142, rows with the multipliers kept as splats 104-133, the
    one-lane code with a tournament pivot search 124-127. The same code without pivoting took
    68-70 ns and the call with the loads and stores alone 23-25: the pivot search and row swaps are
    ~45 ns of the system, and none of these forms shortened them. Zen 4 (float64, one system a call,
    2000 in cache, fresh compiles, two runs): n = 8 rows 139-141 ns against one lane 138; one lane
    with every pivot candidate's reciprocal computed in one vector division while the search runs
    (the pivot's taken by a variable-index extract; a select of scalar divisions LLVM folds back into
    a division of the selected pivot) 145-146 against 138, n = 5-7 within noise.

    On AVX2 (32-byte vectors, a row of 5 to 8 float64 two of them) rows pay for n = 5 to 8 too:
    an AMD EPYC (znver2), 100 000 systems in a user's loop, ns a system, one lane -> rows: float64
    n = 5 103.6 -> 84.1, 6 145.3 -> 118.5, 7 201.1 -> 143.1, 8 277.7 -> 224.1; float32 n = 5 96.8
    -> 80.9, 7 189.0 -> 158.5, 8 266.9 -> 188.1."""
    simd = _host.simd_bytes()
    return (2 <= n <= 4 and 4 * itemsize <= simd) or (simd == 32 and 5 <= n <= REGISTER_N)


def _row_codegen(n, k, itemsize):
    """LLVM IR for :func:`lane_solve_one` as row vectors: each row of ``W`` is one vector (``n``
    lanes rounded up to a power of two; the padding lanes read as 0 and are never used) and each
    right-hand side element a splat. The same operations per element as :func:`_lane_codegen`, in
    the same order, so the two agree bit for bit:

    * the pivot is the first largest ``|a_ij|`` (NaN never wins; a NaN on the diagonal, which the
      one-lane search starts from, is never beaten), found by a tournament over the candidate rows
      (the left entry wins ties) that carries each row along, so the pivot row is ready when the
      search ends and no select depends on a scalar condition (the x86 backend turns those into
      branches, mispredicted half the time on random pivots);
    * elimination updates whole rows, ``row_i = fma(f, row_j, row_i)`` with ``f = a_ij * (-1 / a_jj)``:
      the columns left of ``j + 1`` then hold values no later step reads.
    """
    from llvmlite import ir

    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        fty = context.get_value_type(sig.args[2].dtype)
        width = 1 << (n - 1).bit_length()
        vty, ivty = ir.VectorType(fty, width), ir.VectorType(i64, width)
        bits = 8 * itemsize
        w_ptr = context.make_array(sig.args[2])(context, builder, args[2]).data
        x_ptr = context.make_array(sig.args[4])(context, builder, args[4]).data
        rhs = _rhs_loader(context, builder, sig.args[3], args[3], itemsize)
        undef = ir.Constant(vty, ir.Undefined)
        vfma = _intrinsics.llvm_function(builder, f"llvm.fma.v{width}f{bits}", vty, [vty] * 3)
        vfabs = _intrinsics.llvm_function(builder, f"llvm.fabs.v{width}f{bits}", vty, [vty])
        sfma = _intrinsics.llvm_function(builder, f"llvm.fma.f{bits}", fty, [fty] * 3)

        def at(base, offset):
            return builder.gep(base, [ir.Constant(i64, offset)])

        def lane(vec, c):
            return builder.extract_element(vec, ir.Constant(i32, c))

        def splat_lane(vec, c):
            return builder.shuffle_vector(vec, undef, ir.Constant(ir.VectorType(i32, width), [c] * width))

        def splat(value):
            return splat_lane(builder.insert_element(undef, value, ir.Constant(i32, 0)), 0)

        if width == n:

            def load(i):
                return builder.load(builder.bitcast(at(w_ptr, i * n), vty.as_pointer()), align=itemsize)

        else:  # a masked load: the last row must not read past the matrix
            zeros = ir.Constant(vty, [0.0] * width)

            def load(i):
                ptr = builder.bitcast(at(w_ptr, i * n), vty.as_pointer())
                return _intrinsics.masked_load(builder, ptr, n, itemsize, zeros)

        a = [load(i) for i in range(n)]
        x = [[splat(rhs(i, c)) for c in range(k)] for i in range(n)]
        status = ir.Constant(i64, 0)
        nrd = [None] * n
        for j in range(n):
            entries = []
            for i in range(j, n):
                key = builder.call(vfabs, [splat_lane(a[i], j)])
                nan = builder.fcmp_unordered("uno", key, key)
                never = float("inf") if i == j else -1.0  # see the docstring: NaN's place in the order
                key = builder.select(nan, ir.Constant(vty, [never] * width), key)
                entries.append((key, ir.Constant(ivty, [i] * width), a[i], x[i]))
            while len(entries) > 1:
                nxt = []
                for (kl, pl, rl, xl), (kr, pr, rr, xr) in zip(entries[::2], entries[1::2], strict=False):
                    g = builder.fcmp_ordered(">", kr, kl)
                    xs = [builder.select(g, r, lft) for r, lft in zip(xr, xl, strict=True)]
                    nxt.append(
                        (builder.select(g, kr, kl), builder.select(g, pr, pl), builder.select(g, rr, rl), xs)
                    )
                if len(entries) % 2:
                    nxt.append(entries[-1])
                entries = nxt
            _, p, pivot_row, pivot_x = entries[0]
            for i in range(j + 1, n):  # the pivot's row takes row j's place
                m = builder.icmp_signed("==", p, ir.Constant(ivty, [i] * width))
                a[i] = builder.select(m, a[j], a[i])
                x[i] = [builder.select(m, xj, xi) for xj, xi in zip(x[j], x[i], strict=True)]
            a[j], x[j] = pivot_row, pivot_x
            ajj = lane(a[j], j)
            first = builder.and_(
                builder.fcmp_ordered("==", ajj, ir.Constant(fty, 0.0)),
                builder.icmp_signed("==", status, ir.Constant(i64, 0)),
            )
            status = builder.select(first, ir.Constant(i64, j + 1), status)
            nrd[j] = builder.fdiv(ir.Constant(fty, -1.0), ajj)
            for i in range(j + 1, n):
                f = splat(builder.fmul(lane(a[i], j), nrd[j]))
                a[i] = builder.call(vfma, [f, a[j], a[i]])
                x[i] = [builder.call(vfma, [f, xj, xi]) for xj, xi in zip(x[j], x[i], strict=True)]
        x = [[lane(v, 0) for v in row] for row in x]
        for i in range(n - 1, -1, -1):
            for c in range(k):
                u = builder.fneg(x[i][c])
                for r in range(n - 1, i, -1):  # the one-lane code's order
                    u = builder.call(sfma, [lane(a[i], r), x[r][c], u])
                x[i][c] = builder.fmul(u, nrd[i])
                builder.store(x[i][c], at(x_ptr, i * k + c))
        return status

    return codegen


def _lane_solve_one_twin(N, K, W, B, X):
    X[...] = B
    S = np.zeros(1, np.int64)
    X3 = (X[:, None] if X.ndim == 1 else X)[..., None]
    _lane_solve_twin(N, K, np.array(W, copy=True)[..., None], X3, S)
    return int(S[0])


@_jit.intrinsic(_lane_solve_one_twin)
def lane_solve_one(typingctx, N, K, W, B, X):
    """:func:`lane_solve_group`'s straight-line code for one system: ``W`` C-contiguous ``(N, N)`` (only
    read), the right-hand sides ``B`` (``(N, K)``, for K = 1 also ``(N,)``; any strides) and the
    solutions into ``X`` (C-contiguous, ``B``'s shape; ``X`` may be ``B``: everything is read before
    anything is stored). Taking ``B`` apart spares a caller's copy loop (with a run-time n, 7 ns of
    a 3x3 solve's 32) and Numba's ``reshape`` of a 1-D right-hand side (30 ns of a 45 ns 3x3 solve).
    Returns 0, or ``j + 1`` for the first exactly zero pivot. The batched solver's pivoting rule and
    operation order, so the two agree to rounding (the batched kernel is compiled with fastla's
    fastmath flags, a user's function calling this one without them)."""
    nbt = _jit.nb_types
    if not (isinstance(N, nbt.IntegerLiteral) and isinstance(K, nbt.IntegerLiteral)):
        return None
    x_ndims = (1, 2) if K.literal_value == 1 else (2,)
    if not all(isinstance(t, nbt.Array) for t in (W, B, X)) or W.layout != "C" or X.layout != "C":
        return None
    if W.ndim != 2 or X.ndim not in x_ndims or B.ndim != X.ndim:
        return None
    if not W.dtype == B.dtype == X.dtype or W.dtype not in (nbt.float32, nbt.float64):
        return None
    n, k, itemsize = N.literal_value, K.literal_value, np.dtype(str(W.dtype)).itemsize
    sig = nbt.int64(N, K, W, B, X)
    if _rows_pay(n, itemsize):
        return sig, _row_codegen(n, k, itemsize)
    return sig, _lane_codegen(n, k, 1, itemsize)


def _group_at(builder, data, base, vty):
    """``data + base`` (an element pointer and an ``i64`` element offset) as a pointer to ``vty``."""
    return builder.bitcast(builder.gep(data, [base]), vty.as_pointer())


def _load_block(builder, data, base, m, c0, vty, itemsize):
    """Elements ``c0 .. c0 + v - 1`` (fewer at the end) of each of the v = ``vty.count`` systems of m
    elements stored one after another from element ``base`` of ``data``, as vectors: vector e holds
    element ``c0 + e`` of every system (lane t: system t). The v x v block is loaded as rows (masked
    past the m-th element: never beyond the group) and transposed in registers
    (:func:`fastla._intrinsics.transpose_vectors`)."""
    from llvmlite import ir

    i64, v = ir.IntType(64), vty.count
    cols = min(v, m - c0)
    rows = []
    for t in range(v):
        ptr = _group_at(builder, data, builder.add(base, ir.Constant(i64, t * m + c0)), vty)
        if cols == v:
            rows.append(builder.load(ptr, align=itemsize))
        else:
            rows.append(_intrinsics.masked_load(builder, ptr, cols, itemsize))
    return _intrinsics.transpose_vectors(builder, rows)[:cols]


def _load_group(builder, data, base, m, vty, itemsize):
    """A group of v = ``vty.count`` systems of m elements each as m vectors, :func:`_load_block` by
    block: per 8x8 float64 group 64 vector loads and 192 shuffles, against 512 scalar loads as a
    loop."""
    return [
        vec for c0 in range(0, m, vty.count) for vec in _load_block(builder, data, base, m, c0, vty, itemsize)
    ]


def _store_group(builder, vectors, data, base, vty, itemsize):
    """The inverse of :func:`_load_group`: element j of system t (lane t of ``vectors[j]``) stored at
    element ``base + t * m + j`` of ``data`` (m = ``len(vectors)``; masked stores past the m-th)."""
    from llvmlite import ir

    i64, v, m = ir.IntType(64), vty.count, len(vectors)
    undef = ir.Constant(vty, ir.Undefined)
    for c0 in range(0, m, v):
        cols = min(v, m - c0)
        rows = _intrinsics.transpose_vectors(builder, vectors[c0 : c0 + cols] + [undef] * (v - cols))
        for t in range(v):
            ptr = _group_at(builder, data, builder.add(base, ir.Constant(i64, t * m + c0)), vty)
            if cols == v:
                builder.store(rows[t], ptr, align=itemsize)
            else:
                _intrinsics.masked_store(builder, rows[t], ptr, cols, itemsize)


class _Widen:
    """A group's vectors between the stack's element type (``vty``'s) and :data:`COMPUTE`: ``up``
    extends a list of loaded vectors (exactly), ``down`` rounds a list of results to the nearest
    (ties to even, as NumPy's cast); both return the list as it is for a float64 stack."""

    def __init__(self, builder, vty):
        from llvmlite import ir

        self.builder, self.vty = builder, vty
        self.cty = ir.VectorType({4: ir.FloatType(), 8: ir.DoubleType()}[COMPUTE.itemsize], vty.count)
        self.same = vty.element == self.cty.element

    def up(self, vectors):
        return vectors if self.same else [self.builder.fpext(vec, self.cty) for vec in vectors]

    def down(self, vectors):
        return vectors if self.same else [self.builder.fptrunc(vec, self.vty) for vec in vectors]


def _store_results(builder, x, s, ops, itemsize):
    """A group's solutions ``x`` (vectors, element by element of a system's ``(n, k)``) stored to
    the stack where its right-hand sides were read (:func:`_store_group`), and its statuses ``s``
    to ``info[0 .. lanes - 1]`` (``ops`` a :class:`_GroupOperands`)."""
    _store_group(builder, x, ops.x, ops.b_base, x[0].type, itemsize)
    builder.store(s, builder.bitcast(ops.info, s.type.as_pointer()), align=8)


def _prefetch(builder, data, base, nbytes, itemsize):
    """Prefetch (for reading) ``nbytes`` from element ``base`` of ``data``, a line at a time (a
    prefetch never faults, past the end of an array too)."""
    from llvmlite import ir

    i64, i8p = ir.IntType(64), ir.IntType(8).as_pointer()
    start = builder.mul(base, ir.Constant(i64, itemsize))
    data_bytes = builder.bitcast(data, i8p)
    for line in range(0, nbytes, 64):
        offset = builder.add(start, ir.Constant(i64, line))
        _intrinsics.prefetch_line(builder, builder.gep(data_bytes, [offset]))


def _group_types(N, arrays, T0):
    """``(n, dtype)`` when the stack intrinsics below take these Numba types, else None."""
    nbt = _jit.nb_types
    if not isinstance(N, nbt.IntegerLiteral) or not isinstance(T0, nbt.Integer):
        return None
    if not all(isinstance(t, nbt.Array) and t.layout == "C" and t.ndim == 3 for t in arrays):
        return None
    if len({t.dtype for t in arrays}) != 1 or arrays[0].dtype not in (nbt.float32, nbt.float64):
        return None
    return N.literal_value, np.dtype(str(arrays[0].dtype))


#: How many groups ahead a register-path group (n <= REGISTER_N) prefetches the matrices of one
#: group (the memory path's groups, 4-16 KiB, prefetch the next one). One group ahead left the loads
#: of a 100k 8x8 float64 stack 29% of the step's samples (a half-width group, 2 KiB, solved in ~200
#: ns, less than the memory's latency under the other thread's streaming). Measured on Zen 4 (2
#: threads, 100k systems, median ms of 60 calls, fresh processes interleaved, five pairs): float64
#: 8x8 3.94-4.47 -> 3.31-3.78 (three groups ahead 3.41-3.78, six 3.88-4.32), float32 8x8 1.82-2.07 ->
#: 1.48-1.84, float64 6x6 1.36-1.85 -> 1.27-1.35, 3x3 and 4x4 within noise; 16x16 (a memory-path
#: group of 16 KiB) 1.53-1.64 -> 1.66-1.75 two groups ahead, hence one there.
_PREFETCH_GROUPS = 2


class _GroupOperands:
    """What both group codegens read first: the stack arrays' data pointers, the group's first
    system ``t0`` (i64), the element offsets of its matrices and right-hand sides; and a later
    group's matrices prefetched (:data:`_PREFETCH_GROUPS`: the rows are read out of order, and at
    100k 8x8 systems the solve streams 51 MB)."""

    def __init__(self, context, builder, sig, args, n, k, v, itemsize):
        from llvmlite import ir

        i64 = ir.IntType(64)
        self.a, self.b, self.x, self.info = (
            context.make_array(ty)(context, builder, val).data
            for ty, val in zip(sig.args[2:6], args[2:6], strict=True)
        )
        self.t0 = context.cast(builder, args[6], sig.args[6], _jit.nb_types.int64)
        self.a_base = builder.mul(self.t0, ir.Constant(i64, n * n))
        self.b_base = builder.mul(self.t0, ir.Constant(i64, n * k))
        group = v * n * n
        ahead = ir.Constant(i64, group * (_PREFETCH_GROUPS if n <= REGISTER_N else 1))
        _prefetch(builder, self.a, builder.add(self.a_base, ahead), group * itemsize, itemsize)


def _memory_codegen(n, k, v, itemsize, unrolled=None):
    """LLVM IR for :func:`lane_solve_group` for larger n: the group is transposed into a lanes-last
    copy on the stack (``(n, n + k)`` vectors) and eliminated there by loops over rows, not by
    straight-line code over values. The operations per element are :func:`_eliminate`'s, in the
    same order (the results agree bit for bit); only where the vectors live differs. ``unrolled``
    (default: n <= :data:`UNROLLED_N`): a step's columns as straight-line code, the pivot row held
    in registers; else as loops too, which keeps the code O(n^2) instead of O(n^3)."""
    if unrolled is None:
        unrolled = n <= UNROLLED_N
    from llvmlite import ir

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        sty = ir.VectorType(context.get_value_type(sig.args[2].dtype), v)  # the stack's elements
        wide = _Widen(builder, sty)
        vty, ity = wide.cty, ir.VectorType(i64, v)  # the working copy's
        csize = COMPUTE.itemsize
        bits = 8 * csize
        fabs = _intrinsics.llvm_function(builder, f"llvm.fabs.v{v}f{bits}", vty, [vty])
        fma = _intrinsics.llvm_function(builder, f"llvm.fma.v{v}f{bits}", vty, [vty] * 3)
        ops = _GroupOperands(context, builder, sig, args, n, k, v, itemsize)
        width = n + k  # a row of the working copy: the matrix row, then its right-hand sides
        work = _intrinsics.entry_alloca(builder, ir.ArrayType(vty, n * width))
        work.align = 64
        work = builder.bitcast(work, vty.as_pointer())

        def slot(i, c):  # element (i, c) of the working copy; i and c Python ints or i64 values
            if isinstance(i, int) and isinstance(c, int):
                return builder.gep(work, [ir.Constant(i64, i * width + c)])
            row = (
                ir.Constant(i64, i * width) if isinstance(i, int) else builder.mul(i, ir.Constant(i64, width))
            )
            return builder.gep(work, [builder.add(row, ir.Constant(i64, c) if isinstance(c, int) else c)])

        def load(i, c):
            return builder.load(slot(i, c), align=csize)

        def store(val, i, c):
            builder.store(val, slot(i, c), align=csize)

        def splat(ty, value):
            return ir.Constant(ty, [value] * v)

        def splat_i(value):  # an i64 value in every lane
            one = builder.insert_element(
                ir.Constant(ity, ir.Undefined), value, ir.Constant(ir.IntType(32), 0)
            )
            return builder.shuffle_vector(
                one, ir.Constant(ity, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), v), [0] * v)
            )

        for base, data, m, per_row, col0 in (
            (ops.a_base, ops.a, n * n, n, 0),
            (ops.b_base, ops.b, n * k, k, n),
        ):
            # a v x v block at a time (few registers live), the whole blocks by a loop (code size:
            # unrolled, n = 32 emitted 128 blocks of loads, shuffles and stores)
            with _intrinsics.counted_loop(builder, ir.Constant(i64, m // v)) as loop:
                c0 = builder.mul(loop.index, ir.Constant(i64, v))
                for e, vec in enumerate(
                    wide.up(_load_block(builder, data, builder.add(base, c0), m, 0, sty, itemsize))
                ):
                    f = builder.add(c0, ir.Constant(i64, e))  # element f: (f // per_row, f % per_row)
                    row = builder.udiv(f, ir.Constant(i64, per_row))
                    col = builder.add(builder.urem(f, ir.Constant(i64, per_row)), ir.Constant(i64, col0))
                    store(vec, row, col)
            c0 = m - m % v
            tail = wide.up(_load_block(builder, data, base, m, c0, sty, itemsize)) if m % v else ()
            for e, vec in enumerate(tail):
                store(vec, (c0 + e) // per_row, col0 + (c0 + e) % per_row)
        zero_f, minus_one, zero_i = splat(vty, 0.0), splat(vty, -1.0), splat(ity, 0)
        state = [zero_i]  # the statuses so far
        best_slot = _intrinsics.entry_alloca(builder, vty)
        p_slot = _intrinsics.entry_alloca(builder, ity)
        prow_slots = [_intrinsics.entry_alloca(builder, vty) for _ in range(width)]
        nrd = [None] * n

        # the loops' trip counts from the array's run-time n (equal to n): a constant count would let
        # LLVM unroll the loops fully, back into the O(n^3) straight-line code and its compile time
        n_rt = builder.extract_value(context.make_array(sig.args[2])(context, builder, args[2]).shape, 1)

        def rows_below(j):  # a loop over rows j + 1 .. n - 1: yields the row's i64 index
            return _intrinsics.counted_loop(builder, builder.sub(n_rt, ir.Constant(i64, j + 1)))

        def columns_from(c0):  # a loop over columns c0 .. width - 1 of a row: yields the i64 column
            return _intrinsics.counted_loop(builder, builder.add(n_rt, ir.Constant(i64, k - c0)))

        def status_and_reciprocal(j, pivot):
            first = builder.and_(
                builder.fcmp_ordered("==", pivot, zero_f), builder.icmp_signed("==", state[0], zero_i)
            )
            state[0] = builder.select(first, splat(ity, j + 1), state[0])
            nrd[j] = builder.fdiv(minus_one, pivot)

        def _pivot_and_eliminate_unrolled(j):
            """Columns unrolled: the pivot row gathered into values (one per column), then every
            row below replaced (where it was the pivot) and eliminated against it."""
            p = builder.load(p_slot)
            cols = list(range(j, n)) + list(range(n, width))
            for c in cols:
                builder.store(load(j, c), prow_slots[c])
            with rows_below(j) as loop:  # the pivot row: row p of each lane
                i = builder.add(loop.index, ir.Constant(i64, j + 1))
                m = builder.icmp_signed("==", p, splat_i(i))
                for c in cols:
                    builder.store(builder.select(m, load(i, c), builder.load(prow_slots[c])), prow_slots[c])
            prow = {c: builder.load(prow_slots[c]) for c in cols}
            status_and_reciprocal(j, prow[j])
            with rows_below(j) as loop:  # row p takes row j's place; every row below is eliminated
                i = builder.add(loop.index, ir.Constant(i64, j + 1))
                m = builder.icmp_signed("==", p, splat_i(i))
                f = builder.fmul(builder.select(m, load(j, j), load(i, j)), nrd[j])
                for c in cols[1:]:
                    row = builder.select(m, load(j, c), load(i, c))
                    store(builder.call(fma, [f, prow[c], row]), i, c)
            for c in cols:
                store(prow[c], j, c)

        def _pivot_and_eliminate_looped(j):
            """Columns as loops (code of O(n) per step, not O(n^2)): rows j and p exchanged in
            place, lane by lane, then every row below eliminated against row j. The same values
            as the unrolled form, from the same operations."""
            p = builder.load(p_slot)
            with rows_below(j) as loop:
                i = builder.add(loop.index, ir.Constant(i64, j + 1))
                m = builder.icmp_signed("==", p, splat_i(i))
                with columns_from(j) as cl:
                    c = builder.add(cl.index, ir.Constant(i64, j))
                    top, row = load(j, c), load(i, c)
                    store(builder.select(m, row, top), j, c)
                    store(builder.select(m, top, row), i, c)
            status_and_reciprocal(j, load(j, j))
            with rows_below(j) as loop:
                i = builder.add(loop.index, ir.Constant(i64, j + 1))
                f = builder.fmul(load(i, j), nrd[j])
                with columns_from(j + 1) as cl:
                    c = builder.add(cl.index, ir.Constant(i64, j + 1))
                    store(builder.call(fma, [f, load(j, c), load(i, c)]), i, c)

        for j in range(n):
            builder.store(builder.call(fabs, [load(j, j)]), best_slot)
            builder.store(splat(ity, j), p_slot)
            with rows_below(j) as loop:  # the first largest |a_ij| (NaN never wins), as _eliminate
                i = builder.add(loop.index, ir.Constant(i64, j + 1))
                key = builder.call(fabs, [load(i, j)])
                best = builder.load(best_slot)
                larger = builder.fcmp_ordered(">", key, best)
                builder.store(builder.select(larger, key, best), best_slot)
                builder.store(builder.select(larger, splat_i(i), builder.load(p_slot)), p_slot)
            (_pivot_and_eliminate_unrolled if unrolled else _pivot_and_eliminate_looped)(j)
        u_slot = _intrinsics.entry_alloca(builder, vty)
        for i in range(n - 1, -1, -1):
            for c in range(k):
                builder.store(builder.fneg(load(i, n + c)), u_slot)
                with _intrinsics.counted_loop(builder, ir.Constant(i64, n - 1 - i)) as loop:
                    r = builder.sub(ir.Constant(i64, n - 1), loop.index)  # the newest unknown last
                    u = builder.call(fma, [load(i, r), load(r, n + c), builder.load(u_slot)])
                    builder.store(u, u_slot)
                store(builder.fmul(builder.load(u_slot), nrd[i]), i, n + c)
        x = wide.down([load(i, n + c) for i in range(n) for c in range(k)])
        _store_results(builder, x, state[0], ops, itemsize)
        return context.get_dummy_value()

    return codegen


def _lane_solve_group_twin(N, K, DOTS, A, B, X, INFO, T0):
    v = lanes(N)
    # copies in COMPUTE (the twin overwrites both); the solutions rounded back as they are stored
    W = np.array(A[T0 : T0 + v].transpose(1, 2, 0), COMPUTE, order="C")
    XW = np.array(B[T0 : T0 + v].transpose(1, 2, 0), COMPUTE, order="C")
    S = np.zeros(v, np.int64)
    _lane_solve_twin(N, K, W, XW, S, DOT_ORDERS[DOTS])
    X[T0 : T0 + v] = XW.transpose(2, 0, 1)
    INFO[:v] = S


@_jit.intrinsic(_lane_solve_group_twin)
def lane_solve_group(typingctx, N, K, DOTS, A, B, X, INFO, T0):
    """Systems ``T0`` to ``T0 + lanes - 1`` of a stack, solved from the stack itself: ``A`` (batch,
    N, N) and ``B`` (batch, N, K) are read as groups transposed in registers (:func:`_load_group`),
    eliminated by :func:`_eliminate` in the order ``DOT_ORDERS[DOTS]`` (a literal; for N >
    :data:`REGISTER_N`, right-looking by loops over a lanes-last copy on the stack:
    :func:`_memory_codegen`, which ignores ``DOTS``), and the solutions written to ``X``
    (batch, N, K) the same way, system ``T0 + t``'s status (0, or ``j + 1`` for a zero pivot in
    column j) to ``INFO[t]`` (at least lanes long: the caller's scratch for the group). All
    C-contiguous; ``X`` may be ``B`` (everything is loaded before anything is stored); the caller
    guarantees ``T0 + lanes <= batch``. Computed in :data:`COMPUTE`: a float32 stack's vectors are
    extended as they are loaded and the solutions rounded as they are stored (:class:`_Widen`).

    No scratch and no scalar copy loops. Measured on Zen 5 (1 thread, 1024 systems in cache, ns a
    group of lanes systems): the scalar loops that copied the right-hand sides into a lanes-last
    scratch and the solutions out, padded, and stored the statuses cost more than the solve:
    float64 3x3 120 in all against 26 for the elimination and 9 for the matrices' transpose, 8x8
    525 against 186 + 39, float32 8x8 1161 against 226 + 56; this intrinsic: 23, 271 and 209.
    """
    from llvmlite import ir

    nbt = _jit.nb_types
    kinds = _group_types(N, (A, B, X), T0)
    if kinds is None or not isinstance(K, nbt.IntegerLiteral) or not isinstance(DOTS, nbt.IntegerLiteral):
        return None
    if not isinstance(INFO, nbt.Array) or (INFO.ndim, INFO.layout, INFO.dtype) != (1, "C", nbt.int64):
        return None
    n, dtype = kinds
    k, v, itemsize = K.literal_value, lanes(n), dtype.itemsize
    dots = DOT_ORDERS[DOTS.literal_value]
    inner = nbt.void(N, K, A, B, X, INFO, T0)  # the codegens' view: the arguments without DOTS

    def without_dots(codegen):
        return lambda context, builder, sig, args: codegen(context, builder, inner, [*args[:2], *args[3:]])

    if n > REGISTER_N:
        return nbt.void(N, K, DOTS, A, B, X, INFO, T0), without_dots(_memory_codegen(n, k, v, itemsize))

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(context.get_value_type(sig.args[2].dtype), v)
        ops = _GroupOperands(context, builder, sig, args, n, k, v, itemsize)
        wide = _Widen(builder, vty)
        flat = wide.up(_load_group(builder, ops.a, ops.a_base, n * n, vty, itemsize))
        a = [flat[i * n : (i + 1) * n] for i in range(n)]
        flat = wide.up(_load_group(builder, ops.b, ops.b_base, n * k, vty, itemsize))
        x = [flat[i * k : (i + 1) * k] for i in range(n)]
        s = _eliminate(builder, a, x, ir.Constant(ir.VectorType(ir.IntType(64), v), [0] * v), dots)
        _store_results(builder, wide.down([vec for row in x for vec in row]), s, ops, itemsize)
        return context.get_dummy_value()

    return nbt.void(N, K, DOTS, A, B, X, INFO, T0), without_dots(codegen)


_GROUPS = 16  # groups of `lanes` systems per parallel task
_SPREAD = 8  # scratch blocks between two threads' blocks (no false sharing)


def solve_stack(a, b, x, w, xs, s, singular):
    """Solve a stack of n x n systems with k right-hand sides (n <= 32), one system per SIMD lane.

    ``a`` (batch, n, n) and ``b`` (batch, n, k) are read-only C-contiguous (see
    :func:`fastla._intrinsics.kernel_input`), ``x`` receives the solutions; ``w`` (``_SPREAD *
    threads``, lanes, n, n), ``xs`` (``_SPREAD * threads``, lanes, n, LANE_RHS-or-k) and ``s``
    (``_SPREAD * threads``, lanes) are per-thread scratch for a short last group and for more than
    LANE_RHS right-hand sides (solved in passes of LANE_RHS columns) and for every group's statuses;
    ``singular`` (``_SPREAD * threads``, zeros) receives 1 in the slot of a thread that met a zero
    pivot. Per thread, not per system: the caller reads two cache lines after the call, not a
    status per system that the other thread wrote (measured on Zen 4, 2 threads, 100k 3x3 float64:
    that read of 800 KB cost ~0.7 ms, more than the whole solve, in the stretches of seconds when
    the two CPUs reached each other's caches slowly). One parallel driver per dtype
    (:func:`_drive`) calls the straight-line step for this (n, k) (:func:`_make_step`) through its
    address: a new (n, k) compiles only its step (no ``prange`` loop of its own): measured (Intel
    Xeon, first call on 100k systems, fresh cache) 1.8-3.2 s for n = 3-8 and 7.5 s for n = 16,
    against 5.0-9.8 s and 16.7 s.
    """
    n, k = a.shape[1], min(b.shape[2], LANE_RHS)
    step = _STEPS.get((n, k))
    if step is None:
        step = _STEPS[(n, k)] = _make_step(n, k)
    _drive(a, b, x, w, xs, s, singular, STEP.address(a.dtype, step), _jit.threads_here())


@jit
def _drive(a, b, x, w, xs, s, singular, step_at, threads):
    """:func:`solve_stack`'s parallel loop: tasks of ``_GROUPS`` groups, in contiguous runs per
    thread, each task on its thread's scratch, through the step at ``step_at`` (None with the JIT
    off: :func:`_step_any`). ``fastla._intrinsics.parallel_tasks``, not a ``prange``: this driver is
    compiled once per dtype, and a ``prange`` loop took ~0.6 s of that."""
    batch, nl_max = a.shape[0], w.shape[1]
    tasks = ((batch + nl_max - 1) // nl_max + _GROUPS - 1) // _GROUPS
    # borrowed (no owner): the tasks' views and calls then update no reference counts, which two
    # threads would otherwise contend for
    bw = _intrinsics.borrow
    args = (bw(a), bw(b), bw(x), bw(w), bw(xs), bw(s), bw(singular))
    _intrinsics.parallel_tasks(step_at, _step_any, args, tasks, threads, True)


@jit
def _step_any(a, b, x, w, xs, s, singular, task):
    """The steps' common signature, standing in for them in :func:`_drive`'s typing (never compiled:
    a call whose types are not exactly :data:`STEP`'s fails to compile, loudly); with the JIT off,
    the step for the n and k of the scratch's shapes."""
    _make_step(w.shape[2], xs.shape[3])(a, b, x, w, xs, s, singular, task)


_STEPS = {}


def _make_step(N, K):
    D = dot_order_code()  # a closure constant: part of the step's cache key, as N and K

    @jit(python_wrapper=False)
    def step(a, b, x, w, xs, s, singular, task):
        """Task ``task``: groups ``task * _GROUPS`` to ``(task + 1) * _GROUPS`` of the stack, each
        solved by :func:`lane_solve_group` for this N and K: in place where the group is whole and
        has K right-hand sides; otherwise copied into the thread's scratch stacks ``ws`` (lanes, N,
        N) and ``xw`` (lanes, N, K) of ``w``/``xs``, a short last group padded with identity systems
        and the right-hand sides taken K columns a pass; every group's statuses to the thread's
        ``sw`` of ``s``, and a 1 to its slot of ``singular`` if any is not 0. One
        call site of the intrinsic (the operands picked first): its code is compiled once per step,
        which for n = 32 is most of the step's compile time (two call sites: 12 s)."""
        slot = _SPREAD * _thread_id()
        ws, xw, sw = w[slot], xs[slot], s[slot]
        batch, k, nl_max = a.shape[0], b.shape[2], ws.shape[0]
        g0 = task * _GROUPS
        g1 = min((batch + nl_max - 1) // nl_max, g0 + _GROUPS)
        ws_ro, xw_ro = _intrinsics.as_readonly(ws), _intrinsics.as_readonly(xw)
        bad = 0
        for g in range(g0, g1):
            t0 = g * nl_max
            nl = min(nl_max, batch - t0)
            direct = nl == nl_max and k == K  # a whole group, one pass: all in registers
            if not direct:
                for t in range(nl_max):
                    for i in range(N):
                        for c in range(N):
                            ws[t, i, c] = a[t0 + t, i, c] if t < nl else (1.0 if i == c else 0.0)
            for c0 in range(0, k, K):
                kk = min(K, k - c0)
                if direct:
                    src_a, src_b, dst, first = a, b, x, t0
                else:
                    for t in range(nl_max):
                        for i in range(N):
                            for c in range(K):
                                xw[t, i, c] = b[t0 + t, i, c0 + c] if t < nl and c < kk else 0.0
                    src_a, src_b, dst, first = ws_ro, xw_ro, xw, 0
                lane_solve_group(N, K, D, src_a, src_b, dst, sw, first)
                for t in range(nl):
                    bad |= sw[t]
                if not direct:
                    for t in range(nl):
                        for i in range(N):
                            for c in range(kk):
                                x[t0 + t, i, c0 + c] = xw[t, i, c]
        if bad:
            singular[slot] = 1

    return step


def _step_examples(dtype):
    ro = _intrinsics.readonly(np.empty((1, 1, 1), dtype))
    x, scratch = np.empty((1, 1, 1), dtype), np.empty((1, 1, 1, 1), dtype)
    return (ro, ro, x, scratch, scratch, np.empty((1, 1), np.int64), np.empty(1, np.int64), 0)


#: the steps' :class:`fastla._jit.Entry` (one signature per dtype; :func:`_step_any` types it)
STEP = _jit.Entry(_step_any, _step_examples)


def step_key(dtype, n, k):
    """The key in :data:`STEPS` of the step that a stack of n x n systems of ``dtype`` (a NumPy
    dtype) with ``k`` right-hand sides runs: ``(dtype.char, n, columns a pass)``."""
    return (dtype.char, n, min(max(k, 1), LANE_RHS))


def _step_compiled(key):
    char, n, k = key
    step = _STEPS.get((n, k))
    return step is not None and STEP.loaded(np.dtype(char), step)


def _step_cached(key):
    char, n, k = key
    step = _STEPS.get((n, k))
    if step is None:
        step = _STEPS[(n, k)] = _make_step(n, k)
    return _first_use.in_disk_cache(step, STEP.signature(np.dtype(char)))


def compile_step(key):
    """Compile (or load from the cache) the step of ``key`` and ``solve``'s kernels around it: a
    forced ``fastla.solve`` of a few systems of that size (the job :data:`STEPS` runs in the
    background: :class:`fastla._first_use.SizeBackground`)."""
    import fastla

    char, n, k = key
    a = np.ones((8, n, n), char) + n * np.eye(n, dtype=char)
    fastla.solve(a, np.ones((8, n, k), char), backend="numba")


#: The steps as a family of per-size kernels (:mod:`fastla._first_use`), keyed by :func:`step_key`.
#: Compiling one takes ~0.3 + 0.1 n s: measured on Zen 4 (first call after a full ``fastla
#: warmup``, one right-hand side, float64) 0.55 s for n = 2, 0.78 for 5, 0.95 for 8, 1.74 for 12,
#: 2.38 for 16, 2.76 for 20, 3.35 for 32 (the Intel Xeon of :func:`solve_stack` took about twice).
STEPS = _first_use.Sizes(
    "lane solver step",
    _step_compiled,
    _step_cached,
    lambda key: 0.3 + 0.1 * key[1],
    elsewhere=_first_use.SizeBackground(__name__, "compile_step"),
)
