"""Matrix product with ``np.matmul`` semantics: ``fastla.matmul``.

Implementations (one contract, see :func:`fastla.implementations`):

* ``numpy`` — ``np.matmul`` (OpenBLAS/MKL). Also the fallback for what no kernel compiles: integer,
  bool, complex, float16 and object arrays, and ndarray subclasses, get NumPy's exact result and
  errors.
* ``numba`` — BLIS-style packed GEMM with an LLVM-vector-IR micro-kernel (``_gemm_kernels``), and a
  dedicated kernel over the whole stack for small matrices (``m, k, n <= 32``).
* ``numba_naive`` — the textbook i-k-j loop jitted and parallel over rows: what packing and register
  blocking buy, in the benchmark tables.
* ``loop`` — the pure-Python triple loop; the baseline of the study, for small sizes only.

Stacks broadcast as in NumPy. A stack times a single matrix (``(..., m, k) @ (k, n)``, the dense
layer) is folded into one ``(batch*m, k) @ (k, n)`` GEMM instead of a loop over the batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from fastla import _first_use, _intrinsics, _jit, _registry, _validate
from fastla import _gemm_kernels as _gk
from fastla._profile import NEVER, Rules

__all__ = ["matmul"]

# --------------------------------------------------------------------------- auto rule (data)
#
# Where the compiled kernels beat np.matmul on this project's machines (2 cores, Zen 3 / Zen 4,
# OpenBLAS), measured in one run with 2 threads on both sides (`python -m fastla bench --ops matmul`
# and the README table):
# * stacks of small matrices: NumPy loops over the stack calling a small-matrix kernel per matrix;
#   one parallel compiled loop over the whole stack wins once the stack is long enough to pay for
#   fastla's ~11 us of Python-side validation + parallel launch. Zen 4, f64, stack of 4x4:
#   0.8x at 256 matrices, 2.4x at 1024, 2.7x at 100k; 16x16: 1.05x at 256, 1.75x at 1024; 32x32:
#   0.4x (BLAS per matrix wins), hence the 16 limit.
# * single large GEMMs: OpenBLAS's hand-written assembly wins where its kernel is as wide as the
#   host's vectors (the packed kernel runs at 0.8-0.9x of its SkylakeX kernel on an Intel AVX-512
#   Xeon, 0.9-1.1x on a Zen 5), so auto keeps numpy there by default, but on the hosts measured
#   otherwise (PACKED_GEMM_CPUS). Where NumPy's OpenBLAS runs a narrower kernel than the host has
#   (its Haswell AVX2 kernel on an AVX-512 host, which OPENBLAS_CORETYPE=Haswell forces), the
#   packed kernel wins from mid sizes on, and auto uses it
#   from GEMM_NARROW_BLAS_WORK multiply-adds on. The crossover differs by dtype (float32 has twice
#   the BLAS's flop rate), so each dtype has its own threshold: `python -m fastla tune` measures
#   both on the machine at hand (its "matmul_gemm" knob for float64, "matmul_gemm_f32" for
#   float32). One shared threshold left a 128^3 float64 product 1.15-1.20x slower than the packed
#   kernel on a Zen 5.
#: Multiply-adds (m*k*n) of one product from which the packed kernel beats a narrower-vector BLAS,
#: per dtype. Zen 5, OpenBLAS Haswell kernel, steady-state timings (fastla/tune.py), packed kernel
#: vs BLAS in us: float64 2 threads 128^3 39.5-39.8 / 48.5-50.0, 192^3 88-89 / 137-138, 96^3
#: 26-27 / 24-25; 1 thread 96^3 34 / 38, 128^3 60 / 87. float32 2 threads 128^3 29-39 / 25-39
#: (even), 192^3 54-61 / 67-76, 256^3 104-105 / 153-155; 1 thread 128^3 40 / 44, 192^3 91 / 131.
#: (The whole-round sweep this replaced read 0.25-0.99x at 128^3 and shipped 384^3 for both.)
GEMM_NARROW_BLAS_WORK = {"float64": 128**3, "float32": 192**3}
#: LLVM CPU names where the packed kernel was measured to beat a BLAS kernel as wide as the host's
#: from GEMM_NARROW_BLAS_WORK on too. Zen 4 (znver4: AVX-512 on 256-bit units, OpenBLAS's SkylakeX
#: kernel), steady-state timings with each side timed after its own settle (fastla/tune.py), ratio
#: to NumPy, three runs: 2 threads float64 64^3 0.80, 96^3 1.19-1.23, 128^3 1.15-1.16, 192^3
#: 1.14-1.15, 256^3 1.11, 384^3-1024^3 0.99-1.01; float32 96^3 0.76, 128^3 1.05-1.06, 192^3 1.17,
#: 256^3 1.12, 384^3-1024^3 1.04-1.09; 1 thread float64 96^3 0.84-0.85, 128^3 1.07, 192^3 1.10,
#: 512^3 1.02-1.03; float32 128^3 0.99, 192^3 1.04, 256^3-512^3 1.06. (Interleaved with NumPy's
#: calls, the packed kernel had run inside the spinning of OpenBLAS's idle threads, and the sweep
#: read BLAS faster at every size.) An Intel AVX-512 Xeon measured 0.8-0.9x OpenBLAS at size.
PACKED_GEMM_CPUS = ("znver4",)


def _shipped_gemm_min_work(dtype):
    from fastla import _host

    # with the JIT off the packed kernel runs as Python: never the faster one
    if _jit.JIT_ENABLED and (_host.blas_narrower_than_host() or _host.host_cpu()[0] in PACKED_GEMM_CPUS):
        return GEMM_NARROW_BLAS_WORK[dtype]
    return NEVER


#: ``packed_stack_min_work`` on Intel hosts: an Intel AVX-512 Xeon (rocketlake, 2 threads, OpenBLAS
#: SkylakeX) put the crossover of 8 float64 products at side 56 (1 404 928 multiply-adds) in both of
#: two `python -m fastla tune --check` runs, where Zen 4's shipped 393 216 sent side 40 and 48 to
#: the kernel: us, NumPy / kernel, 8 x 40x40 14.6-16.4 / 21.0-23.4 (auto's regret 1.49-1.55), 48x48
#: 22.2-26.9 / 27.1-28.4 (1.11-1.27), 56x56 34.6 / 31.0, 64x64 57.8 / 43.8.
INTEL_STACK_MIN_WORK = 1_404_928


def _shipped_stack_min_work():
    from fastla import _host

    if not _jit.JIT_ENABLED:
        return NEVER
    return INTEL_STACK_MIN_WORK if _host.cpu_vendor() == "GenuineIntel" else 393_216


AUTO_RULE = Rules(
    {
        "small_max_dim": 16,  # m, k, n all <= this counts as "small"
        "small_min_batch": 48,  # and at least this many matrices in the stack (see _small_stack_wins)
        # m*k*n of one product (a folded stack: one product) from which the packed kernel runs:
        "gemm_min_work": _shipped_gemm_min_work("float64"),
        "gemm_min_work_f32": _shipped_gemm_min_work("float32"),
        # a stack of at least STACK_MIN_PRODUCTS products, every side in PACKED_STACK_SIDES or in wide
        # tiles, whose work (:func:`stack_work`: multiply-adds, a float32 one counting half) reaches this
        # runs one product per thread at a time (packed: _gemm_kernels.gemm_stack; wide tiles:
        # wide_stack_task); NumPy calls BLAS once per product. The crossover is a stack's work, not its
        # length: Zen 4, two threads, tune's steady-state timing, ratio to np.matmul by stack length,
        # wide tiles: float64 24x24 0.90 (4) 0.93 (8) 0.95 (16) 1.08 (24) 1.14 (32); 32x32 0.76 (4) 0.95
        # (8) 1.13 (12) 1.25 (16); 40x40 0.97 (4) 1.10 (6) 1.21 (8); 48x48 1.13 (4) 1.42 (8); 56x56 1.33
        # (4); float32 32x32 0.79 (8) 0.99 (16) 1.11 (24) 1.24 (32); 48x48 0.92 (4) 1.13 (8) 1.30 (12);
        # 64x64 1.20 (4) 1.50 (8): NumPy is overtaken from 280-390 K float64 multiply-adds in a stack
        # (float32: 520-790 K, twice as many: BLAS's float32 rate is twice its float64 one). A count of
        # products (16, before) left float64 48x48 stacks of 8-15 at 1.42x to NumPy and sent float64
        # 24x24 stacks of 16-23 to a kernel 0.95x NumPy's speed. Packed products (not whole tiles):
        # float32 72x72 0.88 / 0.96 / 0.99 / 1.00 at 8 / 16 / 32 / 64 products, 100x100 1.22-1.30,
        # float64 100x100 1.31-1.41. (Those ratios were timed with the sides' rounds interleaved, the
        # compiled side inside OpenBLAS's spinning: fastla/tune.py. Settled, tune's own sweep of 8
        # float64 products of side 24-64 put the crossover at 262 K, 512 K and 885 K in three runs,
        # and a settled grid at 16-24 products for 24x24, 8-12 for 32x32, 6 for 40x40, 4-8 for 48x48.)
        # (Intel hosts: INTEL_STACK_MIN_WORK, above)
        "packed_stack_min_work": _shipped_stack_min_work(),
    }
)
#: dtype -> the sides (m, k and n) of the products the packed-stack rule covers, up to 128, the
#: largest measured (past it auto's one-product GEMM rule decides, as before), from 48 in float64
#: (32x32 stacks ran at 0.89-0.98x NumPy at 64-256 products) and 64 in float32 (48x48: 0.50-0.59x at
#: 64 products, 0.54-0.79x at 256, 0.92-1.05x at 2000; float32 has BLAS's double flop rate)
PACKED_STACK_SIDES = {np.dtype(np.float64): (48, 128), np.dtype(np.float32): (64, 128)}
#: Stacks of fewer products stay with NumPy whatever their work: at 2-6 products the ratio swings
#: with the machine's phases from run to run (Zen 4, two threads, settled timings: float64 48x48
#: 1.15 / 0.77 at 4 products in two runs, 56x56 0.70 / 0.94 / 1.08 at 2 / 4 / 6, 64x64 0.83 / 1.12
#: at 2 / 4; float32 64x64 0.63 / 0.85 at 2 / 4), while 96x96 and 128x128 won from 2 (1.3-2.9x;
#: timed interleaved with NumPy's calls, 128x128 had read 0.77-0.87x at 2-4).
STACK_MIN_PRODUCTS = 8


def stack_work(m, k, n, batch, itemsize):
    """The work of a stack of ``batch`` m x k @ k x n products as the packed-stack rule counts it:
    multiply-adds, a float32 one counting half (``packed_stack_min_work``)."""
    return batch * m * k * n * itemsize // 8


def _gemm_key(dtype):
    """The ``AUTO_RULE`` key of ``dtype``'s GEMM threshold (the rule only sees the compiled dtypes,
    float32 and float64: any other goes to NumPy before it)."""
    return "gemm_min_work_f32" if dtype.itemsize == 4 else "gemm_min_work"


def _batch_shape(sa, sb):
    # np.broadcast_shapes costs microseconds; equal stacks (the common case) need no work.
    return sa if sa == sb else np.broadcast_shapes(sa, sb)


def result_shape(sa, sb):
    """``(m, k, n, batch, shape)`` of ``a @ b`` for operand shapes ``sa``, ``sb`` (``m``/``n`` None
    for a 1-D operand), raising NumPy's ``ValueError`` cases with both shapes named."""
    if len(sa) == 0 or len(sb) == 0:
        idx = 0 if len(sa) == 0 else 1
        raise ValueError(
            f"matmul: input operand {idx} ({'ab'[idx]}) does not have enough dimensions "
            f"(has 0, needs at least 1), shapes {sa} and {sb}"
        )
    k_a = sa[-1]
    k_b = sb[-2] if len(sb) >= 2 else sb[0]
    if k_a != k_b:
        raise ValueError(
            f"matmul: mismatch in the contracted dimension: a has shape {sa} (k={k_a}) and "
            f"b has shape {sb} (k={k_b})"
        )
    try:
        batch = _batch_shape(sa[:-2], sb[:-2])
    except ValueError:
        raise ValueError(f"matmul: stack dimensions of a {sa} and b {sb} do not broadcast") from None
    m = sa[-2] if len(sa) >= 2 else None
    n = sb[-1] if len(sb) >= 2 else None
    shape = batch + ((m,) if m is not None else ()) + ((n,) if n is not None else ())
    return m, k_a, n, batch, shape


class MatmulArgs(NamedTuple):
    """The validated arguments of ``matmul``: what every implementation takes, in this order."""

    a: object  # the operands: native-order arrays of the compute dtype, or as given (NumPy's rules)
    b: object
    out: object  # the caller's out= or None


def _prepare(a, b, out=None):
    a_in, b_in = a, b
    if type(out) is tuple:  # a ufunc's out=(arr,)
        if len(out) != 1:
            raise ValueError("matmul: the 'out' tuple must have exactly one entry per ufunc output")
        out = out[0]
    a = np.asanyarray(a)
    b = np.asanyarray(b)
    try:
        m, k_a, n, batch, shape = result_shape(a.shape, b.shape)
    except ValueError:
        _validate.raise_anchors_type_error(np.matmul, a, b)
        raise
    dtype, why = _validate.compute_dtype((a, b), ints_to_float64=False)
    if (
        why is None
        and (type(a_in) is not np.ndarray or type(b_in) is not np.ndarray)
        and (_validate.is_subclass_input(a_in, b_in))
    ):
        why = f"input is an ndarray subclass ({type(a_in).__name__}/{type(b_in).__name__})"
    problem = None
    if why is None and out is not None:
        problem = _validate.out_problem(out, shape, dtype, "matmul", broadcast=True)
        if problem is not None:  # np.matmul raises its own error
            why = f"out= that NumPy's rules handle ({problem})"
    if why is None:
        args = MatmulArgs(_validate.native(a, dtype), _validate.native(b, dtype), out)
    else:  # NumPy's own rules (and errors) for out= and for what we don't compile
        args = MatmulArgs(a_in, b_in, out)
    facts = {
        "m": 1 if m is None else m,
        "k": k_a,
        "n": 1 if n is None else n,
        "batch": math.prod(batch),
        "b_stacked": b.ndim > 2,
        "dtype": dtype,
        # whether the stack kernels read a as it is, or a copy in C order (_copied_a_stays)
        "a_contiguous": (args.a if why is None else a).flags.c_contiguous,
    }
    return _registry.Prepared(args, compiled=why, facts=facts, forced_error=problem)


def _small_stack_wins(m, k, n, batch):
    """A stack of small products for the compiled kernel (``b`` stacked too: only
    :func:`_stack_rule` asks): ``small_min_batch`` is measured on 4x4 products (``fastla tune``),
    and a stack of products of ``w = m * k * n`` multiply-adds qualifies from
    ``small_min_batch * (64 / w) ** (1 / 4)`` products, as many as 4x4 ones for less work
    (``batch ** 4 * max(w, 64) >= 64 * small_min_batch ** 4``, in integers): NumPy's BLAS call per
    product grows with its work, far slower than the work, and the kernel's set-up not at all.
    Measured on Zen 4 (two threads, tune's steady-state timing, NumPy as auto runs it below the
    threshold against the forced kernel, NumPy's time over the kernel's at 64 / 128 / 192 / 256
    products, float64; float32 alike): 4x4 0.69 / 0.89 / 1.06 / 1.30, 8x8 0.76 / 0.91 / 1.03 / 1.04,
    12x12 0.74 / 1.06 / 1.31 / 1.59, 16x16 0.87 / 1.25 / 1.46 / 1.55, 1x10 @ 10x4 0.52 / 0.72 / 0.87
    / 1.00, 2x8 @ 8x2 0.56 / 0.65 / 0.86 / 1.01, 16x16 @ 16x1 0.57 / 0.78 / 0.98 / 1.23: the rule
    takes these from 256 / 153 / 113 / 91 / 256 / 256 / 182 products (a side-scaled count before,
    ``4 * small_min_batch / max(m, k, n)``, took 1x10 @ 10x4 from 103 products and 16x16 @ 16x1
    from 64, at 0.5-0.9x NumPy's speed: measured against ``backend="numpy"``, whose full path costs
    ~4-5 us more a call than auto's NumPy, it had read the kernel faster there).

    Since auto calls the kernels directly (:data:`_LEAN_STACKS`), their fixed cost is ~5 us less
    and the counts fell: on an AMD EPYC (znver2, two threads, auto's NumPy time over the kernel's
    at 24 / 48 / 96 / 192 products, float64; float32 alike), 4x4 1.20 / 1.49 / 2.10 / 3.15, 8x8
    1.23 / 1.56 / 2.09 / 2.76, 16x16 1.37 / 1.68 / 1.59 / 2.17, 12x12 (the per-size kernel) 0.89 /
    1.14 / 1.40 / 1.84, 6x6 0.74 / 0.94 / 1.26 / 1.67, 3x3 0.72 / 0.94 / 1.36 / 2.13, 2x8 @ 8x2
    0.71 / 0.94 / 1.34 / 2.08, 16x1 @ 1x16 1.13 / 1.61 / 2.31 / 2.91; a row or a column (see
    VECTOR_STACK_FACTOR) 1x10 @ 10x4 0.59 / 0.69 / 0.87 / 1.21, 1x4 @ 4x4 0.56 / 0.68 / 0.85 /
    1.21, 4x4 @ 4x1 0.59 / 0.71 / 0.92 / 1.32, 16x16 @ 16x1 0.58 / 0.68 / 0.80 / 0.93, 1x16 @
    16x16 0.96 / 0.99 / 1.11 / 1.30; 4x1 @ 1x4 0.54 / 0.62 / 0.74 / 1.00. With small_min_batch
    48 (256 before, whose window had cost 4x4 stacks of up to 255 products 3.4x) a stack in the
    window below its count runs at most ~1.5x slower than the kernel would (4x4 at 47); past it,
    the kernel runs slower than NumPy only for outer products (4x1 @ 1x4: 0.62-1.00x NumPy's speed
    from 48 to 192 products) and, a little, matrix-vector ones (16x16 @ 16x1 0.86-0.93x from 136)."""
    if max(m, k, n) > AUTO_RULE["small_max_dim"]:
        return False
    if m == n == 1:  # a stack of dot products: see DOT_STACK_FACTOR
        return batch >= DOT_STACK_FACTOR * AUTO_RULE["small_min_batch"]
    least = AUTO_RULE["small_min_batch"] * (VECTOR_STACK_FACTOR if m == 1 or n == 1 else 1)
    return batch**4 * max(m * k * n, 64) >= 64 * least**4


#: A stack of 1 x k @ k x 1 products (dot products) takes the small-stack kernel from this many
#: times ``small_min_batch`` products: NumPy runs them through a dot loop, not a BLAS call per
#: product (~7.5-8 ns a product), and the kernel's call costs ~9 us before its first product. Zen 4,
#: two threads, NumPy's time over the kernel's at 300 / 1000 / 4000 products: float64 k = 5 0.29 /
#: 0.62 / 1.57, k = 16 0.25 / 0.52 / 0.95; float32 k = 5 0.29 / 0.67 / 1.59, k = 16 0.38 / 0.85 /
#: 1.71 (the rule had taken them from 256). A row or a column of more than one element is a BLAS
#: call again: 1 x 4 @ 4 x 4, 4 x 4 @ 4 x 1, 2 x 8 @ 8 x 1 0.85-1.25 at 300, 2.1-2.9 at 1000.
DOT_STACK_FACTOR = 16
#: A stack of products with one row or one column (``m == 1`` or ``n == 1``, not both: a vector
#: times a matrix, a matrix times a vector) takes the small-stack kernel from this many times the
#: count of square products of its work: the kernel's columns or rows are one wide there, NumPy's
#: BLAS call per product is as cheap as for 4x4. AMD EPYC (znver2), auto's NumPy time over the
#: kernel's at 48 / 128 / 192 products: 1x10 @ 10x4 0.69 / 0.98 / 1.21, 4x4 @ 4x1 0.71 / 1.06 / 1.32,
#: 16x16 @ 16x1 0.68 / 0.85 / 0.93 (the rule takes them from 192, 192 and 136 with
#: small_min_batch 48).
VECTOR_STACK_FACTOR = 4


#: Thin products stay with BLAS whatever their size: the packed kernel packs a whole operand for
#: a few rows or columns of work (Zen 5 against OpenBLAS's Haswell kernel: 8192x8192 @ 8192x1
#: 0.12-0.25x, @ 8192x4 0.40-0.65x, 2000x2000 @ 2000x16 f32 0.34x, 30000x100 @ 100x30 f32 0.71x,
#: 4096x4 @ 4096x4 f32 0.76x; from 64 rows and columns and a depth of 32 it won 1.0-2.2x).
GEMM_MIN_ROWS_COLS = 64
GEMM_MIN_DEPTH = 32


def _gemm_work(m, k, n, batch, b_stacked):
    """Multiply-adds of one GEMM call (per product of a stack, the whole folded product else);
    0 for a product too thin for the packed kernel."""
    rows = m * (1 if b_stacked else batch)
    if min(rows, n) < GEMM_MIN_ROWS_COLS or k < GEMM_MIN_DEPTH:
        return 0
    return rows * k * n


def _wide_stack_shape(m, k, n, dtype):
    """Products of a compiled float dtype that a stack runs in wide register tiles
    (:func:`fastla._gemm_kernels.wide_stack_fits`)."""
    return dtype in PACKED_STACK_SIDES and _gk.wide_stack_fits(m, k, n, dtype.itemsize)


def _packed_stack_shape(m, k, n, b_stacked, dtype):
    """A stack of products every side of which is in :data:`PACKED_STACK_SIDES` for ``dtype``, or
    that runs in wide tiles (:func:`_wide_stack_shape`) with a side past ``small_max_dim`` (smaller
    ones are the small-stack rule's: 16x16 float64 in wide tiles ran 0.87-0.95x NumPy at 8-32
    products, 1.15x at 64, where that rule starts)."""
    lo, hi = PACKED_STACK_SIDES.get(dtype, (1, 0))
    packed = lo <= min(m, k, n) and max(m, k, n) <= hi
    wide = max(m, k, n) > AUTO_RULE["small_max_dim"] and _wide_stack_shape(m, k, n, dtype)
    return b_stacked and (packed or wide)


def _packed_stack_wins(m, k, n, batch, dtype):
    """The packed-stack rule: enough products, enough work, then the shape. In that order, the
    cheapest first: the fast path asks it of every stack with a C-contiguous ``a`` that the
    small-stack rule leaves, and the shape's tests cost ~0.8 us of Python a call (Zen 4: a stack of
    8 32x32 float64 products under auto, which stays with NumPy by its work, took 13.9 us against
    np.matmul's 10.9 with the shape first, 12.7 against 10.8 with it last)."""
    return (
        batch >= STACK_MIN_PRODUCTS
        and stack_work(m, k, n, batch, dtype.itemsize) >= AUTO_RULE["packed_stack_min_work"]
        and _packed_stack_shape(m, k, n, True, dtype)
    )


#: A stack whose ``a`` is not C-contiguous (``a.mT``, a Fortran-ordered stack) reaches the stack
#: kernels as a C-ordered copy (they read C-contiguous operands; one product's packed GEMM reads any
#: strides), while NumPy's BLAS reads a transposed ``a``'s matrices in place, at C order's speed
#: (Zen 4, OpenBLAS 0.3.31, 3000 8x8 / 16x16 float64 products: 184 / 1058 us against 218 / 926; a
#: transposed ``b`` 540 / 3300, a Fortran-ordered ``a`` 357 / 2476). The copy costs about as much as
#: the kernel, so with such an ``a`` the stack rules keep the compiled kernels only where a product's
#: rows fit one small-product vector (:data:`fastla._gemm_kernels.SMALL_VECTOR_BYTES`: float64 up to
#: 4 wide, float32 up to 8). Measured there (NumPy's time over the kernel's with its copy, two
#: threads, 300 / 3000 products): a transposed ``a``, float64 4x4 1.20 / 1.36, 8x8 0.63 / 0.72,
#: 16x16 0.57 / 0.96; float32 8x8 1.37 / 1.57, 12x12 0.43 / 0.53, 16x16 0.45 / 0.63; in wide tiles
#: and packed (24-64, 64 / 1000 products) 0.43-0.91; a Fortran-ordered ``a`` float64 8x8 0.59 /
#: 1.10, 16x16 0.93 / 0.93, 24-64 0.31-1.26. A non-contiguous ``b`` stays with the kernels: NumPy
#: is slow there too (transposed: 1.0-7.5x the kernel's time at 2-16, 0.7-1.7x at 24-64).
def _copied_a_stays(m, k, n, itemsize):
    """Whether a stack of m x k @ k x n products whose ``a`` must be copied to C order still runs the
    stack kernels under ``auto`` (a small stack whose rows fit one vector); see above."""
    return max(m, k, n) * itemsize <= _gk.SMALL_VECTOR_BYTES


def _stack_rule(m, k, n, batch, b_stacked, dtype, a_contiguous=True):
    """The stack rule that gives this stack to the compiled kernels, with ``a``'s layout
    (:func:`_copied_a_stays`): ``"small"`` (the small-stack rule, tried first), ``"packed"`` (the
    packed-stack rule, for a C-contiguous ``a`` only), or None (an unstacked ``b`` has neither)."""
    if not b_stacked:
        return None
    if _small_stack_wins(m, k, n, batch):
        return "small" if a_contiguous or _copied_a_stays(m, k, n, dtype.itemsize) else None
    return "packed" if a_contiguous and _packed_stack_wins(m, k, n, batch, dtype) else None


def _compiled_wins(m, k, n, batch, b_stacked, dtype, a_contiguous=True):
    """The auto rule on plain numbers (used by the fast path; :func:`_rule` says the same): the
    stack rules (:func:`_stack_rule`), then the GEMM's."""
    if _stack_rule(m, k, n, batch, b_stacked, dtype, a_contiguous):
        return True
    work = _gemm_work(m, k, n, batch, b_stacked)
    return work > 0 and work >= AUTO_RULE[_gemm_key(dtype)]  # a thin product is BLAS's, whatever the rule


def _rule(prep):
    f = prep.facts
    shape = f"{f['m']}x{f['k']} @ {f['k']}x{f['n']} (batch {f['batch']})"
    a_contiguous = f["a_contiguous"]
    sides = (f["m"], f["k"], f["n"], f["batch"], f["b_stacked"], f["dtype"])
    stack = _stack_rule(*sides, a_contiguous)
    if stack == "small":
        key = _gk.stack_key(f["m"], f["k"], f["n"], f["dtype"])  # a per-size kernel (_first_use)?
        if not _gk.FIXED.wins(key):
            sizes = f"{f['m']}x{f['k']} @ {f['k']}x{f['n']}"
            return "numpy", _gk.FIXED.pending(key, f"stack of {f['batch']} small matrices ({sizes})")
        return (
            "numba",
            lambda: (
                f"stack of {f['batch']} small matrices ({f['m']}x{f['k']} @ {f['k']}x{f['n']}): one "
                "compiled loop over the stack beats per-matrix BLAS calls"
            ),
        )
    if stack == "packed":
        least = AUTO_RULE["packed_stack_min_work"]

        def stack_reason():  # explain's wording only: not on the call's path
            wide = _wide_stack_shape(f["m"], f["k"], f["n"], f["dtype"])
            kind = "products in wide register tiles" if wide else "packed products"
            return (
                f"stack of {f['batch']} {f['dtype']} products ({f['m']}x{f['k']} @ {f['k']}x{f['n']}; "
                f"{_stack_work_words(f)} >= packed_stack_min_work={least}): one parallel loop of "
                f"{kind} beats per-matrix BLAS calls"
            )

        return "numba", stack_reason
    work = _gemm_work(f["m"], f["k"], f["n"], f["batch"], f["b_stacked"])
    key = _gemm_key(f["dtype"])
    if work > 0 and work >= AUTO_RULE[key]:
        return (
            "numba",
            lambda: (
                f"{shape}: {work} multiply-adds per GEMM >= {key}; the packed kernel beats "
                f"this BLAS ({_blas_name()}) from there"
            ),
        )

    def reason():
        if not a_contiguous and _stack_rule(*sides):
            return (
                f"stack of {f['batch']} products ({f['m']}x{f['k']} @ {f['k']}x{f['n']}) whose a is not "
                "C-contiguous: the stack kernels would copy it to C order, at about the products' own "
                f"cost, where BLAS ({_blas_name()}) reads a transposed a in place"
            )
        few = ""
        if _packed_stack_shape(f["m"], f["k"], f["n"], f["b_stacked"], f["dtype"]):
            least = AUTO_RULE["packed_stack_min_work"]
            few = (
                f", and fewer than {STACK_MIN_PRODUCTS} products for the packed products' loop"
                if f["batch"] < STACK_MIN_PRODUCTS
                else f", and {_stack_work_words(f)} < packed_stack_min_work={least} for the packed "
                "products' loop"
            )
        if work == 0:
            return (
                f"{shape}: too thin a product for the packed kernel (rows or columns < "
                f"{GEMM_MIN_ROWS_COLS}, or depth < {GEMM_MIN_DEPTH}){few}: BLAS ({_blas_name()})"
            )
        if AUTO_RULE[key] >= NEVER:
            blas = _blas_name()
            return f"{shape}: this BLAS ({blas}) is faster than the packed Numba GEMM on this hardware{few}"
        return f"{shape}: {work} multiply-adds per GEMM < {key}, where BLAS ({_blas_name()}) is faster{few}"

    return "numpy", reason


def _stack_work_words(f):
    """A stack's work as explain states it (:func:`stack_work`)."""
    work = stack_work(f["m"], f["k"], f["n"], f["batch"], f["dtype"].itemsize)
    half = ", a float32 one counting half" if f["dtype"].itemsize == 4 else ""
    return f"{work} multiply-adds in the stack{half}"


def _blas_name():
    from fastla import _host

    lib, core, _ = _host.blas_kernel()
    return f"{lib or 'unknown'} {core or ''}".strip()


def auto_gemm_summary():
    """Where ``auto`` runs one product with the packed kernel, and why (``gemm_min_work`` and the
    BLAS kernel's vector width against the host's), for ``python -m fastla info``."""
    from fastla import _host

    width = _host.blas_kernel()[2]
    kernel = _blas_name() + (f", {width}-byte vectors; host {_host.simd_bytes()}" if width else "")
    f64, f32 = AUTO_RULE["gemm_min_work"], AUTO_RULE["gemm_min_work_f32"]
    if min(f64, f32) >= NEVER:
        return f"BLAS for every single product ({kernel})"
    at = lambda work: "never" if work >= NEVER else f"from {work}"  # noqa: E731
    where = at(f64) if f64 == f32 else f"float64 {at(f64)}, float32 {at(f32)}"
    return f"packed kernel {where} multiply-adds per product ({kernel})"


_OP = _registry.operation("matmul", _prepare, _rule)


@_registry.public(_OP)
def matmul(a, b, /, out=None, *, backend=None):
    """Matrix product of two arrays, like :func:`numpy.matmul`.

    Parameters
    ----------
    a, b : array_like
        Operands. 1-D operands are promoted to a row (``a``) or a column (``b``) and the added
        dimension is removed from the result; leading (stack) dimensions broadcast.
    out : ndarray, optional
        Where to store the result; must have the result's shape, or a shape it broadcasts to (as
        :func:`numpy.matmul`'s loop dimensions), and a dtype the result casts to (same-kind). A
        one-array tuple ``(arr,)`` is ``arr``, as for a ufunc.
    backend : {None, "auto", "numba", "numba_naive", "numpy", "loop"}, optional
        Implementation; ``None`` uses the global setting (:func:`fastla.set_backend`).

    Returns
    -------
    ndarray or scalar
        ``a @ b``; a NumPy scalar for two 1-D inputs. float32 inputs give float32.

    Raises
    ------
    ValueError
        0-d operand, mismatched contracted dimension, stacks that do not broadcast, ``out`` of a
        shape the result does not broadcast to.
    TypeError
        ``out`` dtype the result cannot be cast to; a compiled backend forced on a dtype it does not
        compile (integers, complex, ...).

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> a = np.arange(6.0).reshape(2, 3)
    >>> fl.matmul(a, np.ones(3))
    array([ 3., 12.])
    >>> fl.matmul(a, a.T, backend="loop")
    array([[ 5., 14.],
           [14., 50.]])
    """
    if out is None and type(a) is np.ndarray and type(b) is np.ndarray:
        # The fast path of the common call (ARCHITECTURE.md, "Layers"): plain float32/float64
        # arrays of one dtype, 2-D, or 3-D stacks of one length, under auto or numba forced, and
        # under auto the other ranks that its rule gives to BLAS (_blas_by_rule). The same decision
        # as _prepare + _rule, without building them (~10 us of Python on a 4x4 product).
        dt = a.dtype
        fast = dt is b.dtype and dt in _validate.COMPILED_DTYPES and _registry.fast_path(backend)
        if fast:
            sa, sb = a.shape, b.shape  # read once: each read of an ndarray's shape builds a tuple
            rank = len(sa)
            if rank != len(sb) or rank == 1:
                if fast == "auto" and _blas_by_rule(sa, sb, dt):
                    return _matmul_numpy(a, b, None)
            elif rank == 2 and sa[1] == sb[0]:
                m, k = sa  # (m below the packed kernel's least: no rule to evaluate)
                n = sb[1]
                forced = fast == "numba"
                if forced or (m >= GEMM_MIN_ROWS_COLS and _verdict(m, k, n, 1, False, dt, True)):
                    # _first_use.kernel_key: the op's own kernels, the packed GEMM's apart
                    ops = ("matmul" + _packed_path(m, k, n, 1, False, dt.itemsize), dt.char)
                    return _first_use.kernels_or_numpy(ops, forced, _matmul_numba, _matmul_numpy, a, b, None)
                return _matmul_numpy(a, b, None)
            elif rank == 3 and sa[0] == sb[0] and sa[2] == sb[1]:
                batch, m, k = sa
                n = sb[2]
                if fast == "numba":
                    ops = ("matmul" + _packed_path(m, k, n, batch, True, dt.itemsize), dt.char)
                    return _first_use.run_kernels(ops, _matmul_numba, a, b, None)
                a_c = a.flags.c_contiguous
                if _verdict(m, k, n, batch, True, dt, a_c):
                    lean = _LEAN_STACKS.get((m, k, n, dt))
                    if lean is not None and a_c and b.flags.c_contiguous and lean[0] in _first_use._RAN:
                        return _stack_product(a, b, lean[1])  # (see _LEAN_STACKS)
                    key = (dt.char, m, k, n)  # _gk.stack_key: a per-size kernel (_first_use)?
                    if not _gk.FIXED.wins(key):
                        return _gk.FIXED.run_numpy(key, _matmul_numpy, a, b, None)
                    ops = ("matmul" + _packed_path(m, k, n, batch, True, dt.itemsize), dt.char)
                    kind = _stack_kernel(m, k, n, dt.itemsize)
                    if kind != "packed" and _jit.JIT_ENABLED:  # (the per-size kernel: compiled or paid)
                        _LEAN_STACKS[(m, k, n, dt)] = (ops, kind == "fixed")
                    return _first_use.kernels_or_numpy(ops, False, _matmul_numba, _matmul_numpy, a, b, None)
                return _matmul_numpy(a, b, None)
    return _OP.run(backend, _prepare(a, b, out))


#: (m, k, n, batch, b stacked, dtype, a C-contiguous) -> (``AUTO_RULE.version``, the verdict of
#: :func:`_compiled_wins`): the fast path's auto rule, evaluated once per shape and rule version (the
#: version counts every change of ``AUTO_RULE``: a profile's, a test's). The rule cost ~1.6 us of
#: Python a stack on an AMD EPYC (znver2), most of auto's overhead where it gives one to NumPy (16
#: 4x4 float64 products: 8.3 us against np.matmul's 3.8; with the table 6.3-6.4), ~1 us a 2-D product.
#: The rule's other inputs (this module's constants, the host's tile shapes) are fixed at import.
_VERDICTS = {}
_VERDICTS_MAX = 4096  # shapes learnt before the table starts again (a bound on its memory)


def _verdict(m, k, n, batch, b_stacked, dtype, a_contiguous):
    """:func:`_compiled_wins` through :data:`_VERDICTS`."""
    shape = (m, k, n, batch, b_stacked, dtype, a_contiguous)
    seen = _VERDICTS.get(shape)
    if seen is None or seen[0] != AUTO_RULE.version:
        if len(_VERDICTS) >= _VERDICTS_MAX:
            _VERDICTS.clear()
        wins = _compiled_wins(m, k, n, batch, b_stacked, dtype, a_contiguous)
        seen = _VERDICTS[shape] = (AUTO_RULE.version, wins)
    return seen[1]


#: (m, k, n, dtype) -> (the first-use key of the small-product kernels that auto's stacks of such
#: products run, whether it is the per-size kernel): once that key has run in this process
#: (``fastla._first_use``), the fast path calls ``_gemm_kernels.stack_product`` directly instead of
#: the registry's path (the first-use checks, the per-size kernel's test, ``run_parallel``,
#: ``_stacked``: ~11 us of Python a call). Registered only past the per-size kernel's own test.
_LEAN_STACKS = {}
_stack_product = _gk.stack_product  # the numba impl's kernels for those stacks (a name tests spy on)


def _blas_by_rule(sa, sb, dt):
    """Whether auto's rule gives ``a @ b`` of operand shapes ``sa``, ``sb`` to NumPy, where they
    differ in rank or one is 1-D (the fast path's other calls: 2-D and 3-D stacks of one rank): a 1-D
    operand (a matrix-vector product is too thin for the packed GEMM: ``_gemm_work`` 0, and no
    stack rule applies to an unstacked ``b``), or a stack times one matrix whose folded product
    the GEMM rule leaves to BLAS (a dense layer over a batch, ``(..., m, k) @ (k, n)``). Operands
    whose contracted dimensions differ, and a 1-D ``a`` times a stack, take the full path (its
    errors, its stack rules). Zen 4, float64, a 21x25 @ 25 product: 7.0 us through the full path
    (its validation and rule), 2.1 us here, np.matmul 0.9."""
    if len(sb) == 1:
        return len(sa) >= 1 and sa[-1] == sb[0]
    if len(sa) == 1:
        return len(sb) == 2 and sa[0] == sb[0]
    if len(sb) == 2 and len(sa) > 2 and sa[-1] == sb[0]:
        return not _compiled_wins(sa[-2], sa[-1], sb[1], math.prod(sa[:-2]), False, dt)
    return False


# --------------------------------------------------------------------------- shared stacking


def _stacked(a, b, out, gemm2d, batched=None):
    """Apply a 2-D kernel ``gemm2d(a2, b2, c2)`` with np.matmul's 1-D promotion and broadcasting.

    ``batched(A, B, C)`` on 3-D stacks is used for stacks when given. ``c2``/``C`` are C-contiguous
    results the kernels overwrite.
    """
    one_length = a.ndim == b.ndim == 3 and a.shape[0] == b.shape[0] and a.size and b.size
    if batched is not None and out is None and one_length:
        # two stacks of one length (the fast path's stacks): straight to the stack kernel, without
        # the promotion and broadcasting below (~2.5 us of a 10 x 4x4 stack's ~10)
        c = np.empty((a.shape[0], a.shape[1], b.shape[2]), a.dtype)
        batched(a, b, c)
        return c
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = _batch_shape(a2.shape[:-2], b2.shape[:-2])
    m, k = a2.shape[-2:]
    n = b2.shape[-1]
    dtype = a.dtype  # validation gave both operands the compute dtype
    full = (*batch, m, n)
    res_shape = batch + ((m,) if a.ndim > 1 else ()) + ((n,) if b.ndim > 1 else ())
    direct = (
        out is not None
        and out.shape == res_shape  # else a larger out the result broadcasts to (np.copyto below)
        and out.dtype == dtype
        and out.flags.c_contiguous
        and not np.may_share_memory(out, a)
        and not np.may_share_memory(out, b)
    )
    c = out.reshape(full) if direct else np.empty(full, dtype=dtype)
    # explicit sizes, not -1: with an empty stack, m, k or n, -1 is ambiguous (a reshape error)
    stacks = math.prod(batch)
    if not batch:
        gemm2d(a2, b2, c)
    elif b2.ndim == 2:  # (..., m, k) @ (k, n): one tall GEMM, no loop over the stack
        gemm2d(a2.reshape(stacks * m, k), b2, c.reshape(stacks * m, n))
    else:
        A = _as_stack(a2, batch)
        B = _as_stack(b2, batch)
        C = c.reshape(stacks, m, n)
        if batched is not None:
            batched(A, B, C)
        else:
            for t in range(C.shape[0]):
                gemm2d(A[t], B[t], C[t])
    if direct:
        return out
    if out is not None:
        np.copyto(out, c.reshape(res_shape), casting="same_kind")
        return out
    res = c.reshape(res_shape)
    return res[()] if res.ndim == 0 else res


def _as_stack(x, batch):
    """``x`` broadcast to ``batch`` stacks and flattened to 3-D (a view unless it must copy)."""
    if x.shape[:-2] != batch:
        x = np.broadcast_to(x, batch + x.shape[-2:])
    return x.reshape(math.prod(batch), *x.shape[-2:])


# --------------------------------------------------------------------------- implementations


@_OP.register("numpy", any_dtype=True)
def _matmul_numpy(a, b, out):
    """np.matmul (BLAS)."""
    return np.matmul(a, b) if out is None else np.matmul(a, b, out=out)


def _loop2d(a, b, c):
    m, k = a.shape
    n = b.shape[1]
    for i in range(m):
        for j in range(n):
            s = 0.0
            for p in range(k):
                s += a[i, p] * b[p, j]
            c[i, j] = s


@_OP.register("loop")
def _matmul_loop(a, b, out):
    """Pure-Python triple loop (the textbook definition)."""
    return _stacked(a, b, out, _loop2d)


@_OP.register("numba_naive", needs_numba=True)
def _matmul_numba_naive(a, b, out):
    """Textbook i-k-j loop, jitted, parallel over rows (no blocking, no packing)."""
    return _stacked(a, b, out, _naive2d, _naive_stack)


# The compiled kernels get C-contiguous, read-only typed inputs (one compiled signature per dtype,
# see ``_jit``); the packed GEMM reads any strides through its operands instead.
def _naive2d(a, b, c):
    _gk.gemm_naive(_intrinsics.kernel_input(a), _intrinsics.kernel_input(b), c)


def _naive_stack(A, B, C):
    _gk.small_stack(A, B, C)


def _packed_path(m, k, n, batch, b_stacked, itemsize):
    """``".packed"`` where the numba impl runs this product through the packed GEMM (by the very
    choices of :func:`_gemm2d` and :func:`_small_or_packed`: :func:`_small_2d`, :func:`_stack_kernel`),
    else ``""``: the path of its
    first-use key (``fastla._first_use``, ``Operation.kernel_path``; the fast paths build the same
    key). Those kernels compile on their own (2.4-2.8 s cold, Zen 4), so a run of matmul's
    small-product kernels must not make a first packed call under ``auto`` compile them in the
    calling thread."""
    if not b_stacked:  # one product, or a stack folded into one tall product
        return "" if _small_2d(m * batch, k, n) else ".packed"
    return ".packed" if _stack_kernel(m, k, n, itemsize) == "packed" else ""


def _kernel_path(prep):
    f = prep.facts
    return _packed_path(f["m"], f["k"], f["n"], f["batch"], f["b_stacked"], f["dtype"].itemsize)


_OP.kernel_path = _kernel_path


#: One product no larger than this in every dimension runs as a stack of one through the small-
#: product kernel: the packed GEMM starts two parallel regions and packs both operands (4x4 to 48x48
#: f64/f32: 68-97 us a call here), the stack kernel one region (8.5-25 us; NumPy 2.2-8.4 us).
SMALL_2D_MAX = 48


def _small_2d(m, k, n):
    """Whether one m x k @ k x n product runs as a stack of one through the small-product kernel
    (:func:`_gemm2d`; past SMALL_2D_MAX, the packed GEMM)."""
    return 0 < min(m, k, n) and max(m, k, n) <= SMALL_2D_MAX


def _gemm2d(a, b, c):
    m, k = a.shape
    if _small_2d(m, k, b.shape[1]):
        _naive_stack(a[None], b[None], c[None])
    else:
        _gk.gemm(a, b, out=c)


#: itemsize -> the largest side from which a stack runs the packed GEMM per product
#: (:func:`fastla._gemm_kernels.gemm_stack`) instead of the small-product kernel. Measured on Zen 4
#: (100 000 products, two threads, ms, two runs): float64 32x32 138-155 packed against 203-213,
#: 28x28 155-224 against 146-180; float32 32x32 152-192 against 69-70.
PACKED_STACK_FROM = {8: 32, 4: 33}


def _stack_kernel(m, k, n, itemsize, same_dtype=True):
    """The kernel that multiplies each m x k @ k x n product of a stack (:func:`_small_or_packed`;
    :func:`_packed_path` keys the first use by it): ``"small"`` (the small-product kernel, whole wide
    tiles among them: ``_gemm_kernels.wide_stack_fits``), ``"fixed"`` (a kernel unrolled for the
    exact shape) or ``"packed"`` (one packed GEMM per thread at a time)."""
    if _gk.tiles_beat_unrolled(m, k, n, itemsize) and same_dtype:
        return "small"
    if _gk.fits_fixed(m, k, n):
        return "fixed"
    return "packed" if max(m, k, n) >= PACKED_STACK_FROM[itemsize] else "small"


#: A stack operand that is not C-contiguous (``a.mT``, a Fortran-ordered or broadcast stack) reaches
#: the stack kernels copied to C order in runs of products of at most this many bytes, into this
#: thread's reused scratch (``_gemm_kernels.workspace``), each run multiplied before the next is
#: copied: a copy of the whole stack, allocated and freed per call, came from fresh pages whenever
#: glibc had given the last call's back to the system, and faulting them in cost more than the
#: kernel (Zen 4, two threads, a stack of 4000 8x8 float64 products with a transposed ``b``: 968
#: page faults and 2.0 ms a call, np.matmul 0.50 ms, C-ordered operands 0.09 ms). A run fits L2,
#: so the kernel reads its copy from cache.
STACK_COPY_BYTES = 1 << 20


def _small_or_packed(A, B, C):
    _, m, k = A.shape
    n = B.shape[2]
    kernel = _stack_kernel(m, k, n, C.itemsize, A.dtype == B.dtype == C.dtype)  # once, not per run
    if A.flags.c_contiguous and B.flags.c_contiguous:
        _stack_products(kernel, A, B, C)
        return
    run = max(1, STACK_COPY_BYTES // max(A.itemsize * m * k, B.itemsize * k * n, 1))
    for t in range(0, C.shape[0], run):
        a, b = _copied(A[t : t + run], "stack a"), _copied(B[t : t + run], "stack b")
        _stack_products(kernel, a, b, C[t : t + run])


def _copied(x, purpose):
    """``x``, or its copy in C order in this thread's scratch for ``purpose`` (valid until the next
    call that copies for it)."""
    if x.flags.c_contiguous:
        return x
    copy = _gk.workspace(x.dtype, x.size, purpose)[: x.size].reshape(x.shape)
    np.copyto(copy, x)
    return copy


def _stack_products(kernel, A, B, C):
    """``C[t] = A[t] @ B[t]`` by ``kernel`` (:func:`_stack_kernel`) for C-contiguous stacks."""
    if kernel == "fixed":
        _gk.fixed_stack(A, B, C)
    elif kernel == "packed":  # (a Python loop of packed GEMMs before)
        _gk.gemm_stack(A, B, C)
    else:
        _naive_stack(A, B, C)


@_OP.register("numba", needs_numba=True)
def _matmul_numba(a, b, out):
    """Packed BLIS-style GEMM (vector-IR micro-kernel); small stacks and small single products in one
    parallel kernel."""
    return _stacked(a, b, out, _gemm2d, _small_or_packed)
