"""Vectorisable elementary functions shared by the kernels (softmax, cross-entropy, attention):
``exp`` (float32 and float64), ``log`` (float64, for log-softmax's row sums) and the row maximum.

Numba's ``math.exp`` is a call to libm (no SVML here), so a loop over it does not vectorise. The
:func:`exp` below is written so that LLVM's loop vectoriser turns it into SIMD code: no calls, no
branches, only selects, FMAs and a bit-cast.

Algorithm (Cody & Waite range reduction + polynomial), for float64:

* clamp ``x`` to [-746, 710] (keeps the integer conversion defined; NaN is restored at the end), with
  :func:`fastla._intrinsics.clamp` (one min and one max instruction per vector);
* ``n = floor(x / ln 2 + 1/2)``, ``r = x - n ln2_hi - n ln2_lo`` with ``ln2_hi`` having trailing zero
  bits so ``n * ln2_hi`` is exact: ``|r| <= ln(2)/2``;
* ``e^r`` by a polynomial of degree 11 fitted to the relative error (< 3.7e-18), Horner form;
* ``2^n``: on an AVX-512 target one ``ldexp`` (``vscalefpd``, :data:`SCALEF`); elsewhere two
  factors ``2^(n//2) * 2^(n - n//2)``, each built by bit-casting ``(k + 1023) << 52``: two factors
  keep each exponent in range, so results that overflow give ``inf`` and results in the subnormal
  range underflow gradually to 0 without a branch.

float32 uses the same steps in float32 arithmetic (a fitted degree-6 polynomial, clamp to [-104, 89],
``(k + 127) << 23``), so its loops run at 16 lanes on AVX-512 / 8 on AVX2.

Accuracy, measured against ``np.exp`` over the whole range (tests/test_math.py): float64 at most
2 ulp outside the subnormal range, float32 at most 2 ulp; exact at 0 (``exp(0) == 1``), ``exp(-inf)
== 0``, ``exp(inf) == inf``, NaN propagates. In the subnormal output range the two-factor scaling
may round twice (still within 1 subnormal ulp); ``ldexp`` rounds once.
"""

from __future__ import annotations

import numpy as np

from fastla import _host, _intrinsics, _jit

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # 0x3FE62E42FEE00000: the low 21 bits zero, so n * _LN2_HI is exact
_LN2_LO = 1.9082149292705877e-10
# e^r ~ 1 + r + r^2 (C2 + C3 r + ... + C11 r^9) on |r| <= ln(2)/2: degree 11, the coefficients
# fitted to the relative error as float32's P2..P6 below (weighted least squares on 300 Chebyshev
# nodes, in 50-digit arithmetic, C2..C11 rounded to float64 one at a time and the rest refitted):
# 3.7e-18 at most in exact arithmetic, against 4.1e-18 for the degree-13 Taylor polynomial it
# replaced, with two multiply-adds fewer an element.
_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11 = (
    0.5000000000000011,
    0.16666666666666444,
    0.04166666666652753,
    0.008333333333477905,
    0.0013888888944144872,
    0.00019841269537976833,
    2.480149267146026e-05,
    2.755756097796432e-06,
    2.763037618403515e-07,
    2.5007501955322832e-08,
)

#: ``2^n`` by one ``llvm.ldexp`` where the target has AVX-512F (``vscalefps``/``vscalefpd``: one
#: instruction for the shift, add, bit-cast and two multiplies of the two factors). Measured on Zen 4
#: (a float32 row of 4096: exp, store and sum): 0.37-0.38 -> 0.33 ns an element. In the normal range
#: the result is the same bits (scaling by a power of two is exact); in the subnormal range it is
#: rounded once instead of twice. Without AVX-512, LLVM has no vector ldexp (it would call libm's per
#: element), so the two factors stay.
SCALEF = _host.native_simd_bytes() == 64  # the target has AVX-512F

_F32 = np.float32
_LOG2E_F = _F32(_LOG2E)
_LN2_HI_F = _F32(0.693359375)  # 0x3F318000: exact product with |n| <= 151
_LN2_LO_F = _F32(-2.12194440e-4)
_HALF_F = _F32(0.5)
_ONE_F = _F32(1.0)
_LO_F = _F32(-104.0)
_HI_F = _F32(89.0)
# e^r ~ 1 + r + r^2 (P2 + P3 r + ... + P6 r^4) on |r| <= ln(2)/2: degree 6, the coefficients fitted
# to the relative error (Lawson-weighted least squares on 4000 Chebyshev nodes, P2..P6 rounded to
# float32 one at a time and the rest refitted): 3.7e-9 at most in exact arithmetic, against 5.2e-9
# for the degree-7 Taylor polynomial it replaced, with one multiply-add fewer per element. The loop
# is bound by the FMA pipes (Zen 4: 10 of the Taylor loop's ~18 vector operations an element were
# FMAs, and only two of the four pipes run them): a float32 row of 4096 (exp, store, sum; L1)
# 0.226-0.229 -> 0.213-0.216 ns an element; over 8 million inputs the largest error against the
# exact exp 0.92 -> 0.90 ulp, the mean 0.258 ulp both.
#: :func:`exp_nonpositive`'s least argument: below it ``exp`` is subnormal (or 0), and the form's one
#: power-of-two factor is not; the results there are 0. (With ``ldexp`` the whole range is exact.)
_LOW_NONPOS = -708.3964185322641  # log of float64's least normal, 2.2250738585072014e-308
_LOW_NONPOS_F = _F32(-87.33654)  # log of float32's least normal, 1.1754944e-38, rounded up
_P2, _P3, _P4, _P5, _P6 = (
    _F32(0.49999988),  # 0x3EFFFFFC
    _F32(0.16666518),  # 0x3E2AAA47
    _F32(0.04166965),  # 0x3D2AADCB
    _F32(0.008368947),  # 0x3C091DE8
    _F32(0.001374533),  # 0x3AB429AD
)


def _exp_f64_body(nonpositive):
    """``exp`` in float64, or for ``nonpositive`` its :func:`exp_nonpositive` form (see there)."""

    def exp_f64(x):
        if nonpositive:  # (compile-time: the other branch is never compiled)
            xc = x if x > _LOW_NONPOS else _LOW_NONPOS  # NaN: any value here, restored below
        else:
            xc = _intrinsics.clamp(x, -746.0, 710.0)  # NaN: any value here, restored below
        nf = np.floor(xc * _LOG2E + 0.5)  # a float floor: math.floor gives int64, and AVX2 has no
        # vector int64 -> float conversion (the whole loop then stayed scalar on Zen 1-3)
        r = xc - nf * _LN2_HI
        r = r - nf * _LN2_LO
        p = _C11
        p = p * r + _C10
        p = p * r + _C9
        p = p * r + _C8
        p = p * r + _C7
        p = p * r + _C6
        p = p * r + _C5
        p = p * r + _C4
        p = p * r + _C3
        p = p * r + _C2
        p = p * r + 1.0
        p = p * r + 1.0
        n = np.int32(nf)  # int32: AVX2 has no vector double -> int64 conversion
        if SCALEF:
            res = _intrinsics.ldexp(p, n)
        elif nonpositive:  # one factor: 2^n is normal from the least normal result up
            res = p * _intrinsics.i64_as_f64((np.int64(n) + 1023) << 52)
            res = res if x >= _LOW_NONPOS else 0.0
        else:
            n1 = n >> 1
            n2 = n - n1
            s1 = _intrinsics.i64_as_f64((np.int64(n1) + 1023) << 52)
            s2 = _intrinsics.i64_as_f64((np.int64(n2) + 1023) << 52)
            res = p * s1 * s2
        return res if x == x else x

    return exp_f64


def _exp_f32_body(nonpositive):
    """``exp`` in float32, or for ``nonpositive`` its :func:`exp_nonpositive` form (see there)."""

    def exp_f32(x):
        if nonpositive:
            xc = x if x > _LOW_NONPOS_F else _LOW_NONPOS_F
        else:
            xc = _intrinsics.clamp(x, _LO_F, _HI_F)
        nf = np.floor(xc * _LOG2E_F + _HALF_F)
        r = xc - nf * _LN2_HI_F
        r = r - nf * _LN2_LO_F
        p = _P6
        p = p * r + _P5
        p = p * r + _P4
        p = p * r + _P3
        p = p * r + _P2
        p = p * r + _ONE_F
        p = p * r + _ONE_F
        n = np.int32(nf)
        if SCALEF:
            res = _intrinsics.ldexp(p, n)
        elif nonpositive:
            res = p * _intrinsics.i32_as_f32((n + 127) << 23)
            res = res if x >= _LOW_NONPOS_F else _F32(0.0)
        else:
            n1 = n >> 1
            n2 = n - n1
            s1 = _intrinsics.i32_as_f32((n1 + 127) << 23)
            s2 = _intrinsics.i32_as_f32((n2 + 127) << 23)
            res = p * s1 * s2
        return res if x == x else x

    return exp_f32


_exp_f64, _exp_nonpositive_f64 = _exp_f64_body(False), _exp_f64_body(True)
_exp_f32, _exp_nonpositive_f32 = _exp_f32_body(False), _exp_f32_body(True)


def exp(x):
    """``e**x`` for a float32 or float64 scalar, vectorisable inside compiled loops.

    Compiled code gets the float32 or float64 version by the argument's type; called from Python
    (JIT off) the same algorithm runs as Python, so tests cover its logic either way.

    Examples
    --------
    >>> from fastla._math import exp
    >>> exp(0.0), exp(float("-inf")), abs(exp(1.0) - 2.718281828459045) < 1e-15
    (1.0, 0.0, True)
    """
    if _jit.JIT_ENABLED:  # the intrinsics have no Python body: run the compiled version
        return _exp_compiled(x if isinstance(x, np.float32) else float(x))
    if isinstance(x, np.float32):
        return _jit.python_rendering(_exp_f32, x)
    return float(_jit.python_rendering(_exp_f64, float(x)))  # np.floor makes it an np.float64


_jit.overload_by_dtype(exp, {"float64": _exp_f64, "float32": _exp_f32})


@_jit.jit
def _exp_compiled(x):
    return exp(x)


def exp_nonpositive(x):
    """:func:`exp` of an ``x <= 0`` (or NaN), such as ``s - max(s)`` in a softmax, in fewer
    operations: no upper clamp, and without AVX-512 one power-of-two factor instead of two, since
    the result cannot overflow. The same bits as :func:`exp` where that is a normal float (``x``
    from ``log`` of the least normal up: -87.33654 in float32, -708.39642 in float64); 0 below,
    where :func:`exp` is subnormal (an absolute difference below 1.2e-38 / 2.3e-308). With AVX-512
    (:data:`SCALEF`) it is :func:`exp`'s bits everywhere. An ``x > 0`` gives an unspecified value.
    For the attention kernels' probabilities, whose sums are at least 1 (float32, B1 H8 L = S = 2048
    E64, two threads, AMD EPYC znver2: 62.2 -> 59.9 ms a call)."""
    if _jit.JIT_ENABLED:
        return _exp_nonpositive_compiled(x if isinstance(x, np.float32) else float(x))
    if isinstance(x, np.float32):
        return _jit.python_rendering(_exp_nonpositive_f32, x)
    return float(_jit.python_rendering(_exp_nonpositive_f64, float(x)))


_jit.overload_by_dtype(exp_nonpositive, {"float64": _exp_nonpositive_f64, "float32": _exp_nonpositive_f32})


@_jit.jit
def _exp_nonpositive_compiled(x):
    return exp_nonpositive(x)


# --------------------------------------------------------------------------- log (float64)
#
# ``log`` of a float64, vectorisable as ``exp`` is (no calls, no branches): for log-softmax's row
# sums, which were a libm call per row (rows of 10: a third of log_softmax's time). fdlibm's
# ``e_log.c``: ``x = 2^k m`` with ``m`` in [sqrt(2)/2, sqrt(2)), ``f = m - 1``, ``s = f / (2 + f)``
# and ``log(m) = f - f^2/2 + s (f^2/2 + R(s^2))``, R its degree-14 minimax polynomial (error < 1 ulp
# in fdlibm); subnormals are scaled by 2^54 first. Specials as ``np.log``: log(0) = -inf,
# log(inf) = inf, NaN for NaN and negative numbers.

_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_TINY64 = 2.2250738585072014e-308  # the smallest normal float64
_MANT64 = 0x000FFFFFFFFFFFFF
_ONE_BITS64 = 0x3FF0000000000000
_SQRT2 = 1.4142135623730951


def _log_f64(x):
    sub = x < _TINY64
    xs = x * 18014398509481984.0 if sub else x  # 2^54: subnormals become normal
    b = _intrinsics.f64_as_i64(xs)
    # int32: AVX2 has no vector int64 -> float conversion (see _exp_f64)
    k = np.int32((b >> 52) & 0x7FF) - (np.int32(1023 + 54) if sub else np.int32(1023))
    m = _intrinsics.i64_as_f64((b & _MANT64) | _ONE_BITS64)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    k = k + np.int32(1) if big else k
    f = m - 1.0
    s = f / (2.0 + f)
    dk = np.float64(k)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = t2 + t1
    hfsq = 0.5 * f * f
    res = dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)  # exp's split of ln 2
    res = res if x < np.inf else x  # inf and NaN
    res = res if x != 0.0 else -np.inf
    return res if x >= 0.0 else np.nan  # negative numbers (and NaN)


def log(x):
    """The natural logarithm of a float64 scalar, vectorisable inside compiled loops (float64 only:
    log-softmax takes the log of its float64 row sums).

    Examples
    --------
    >>> from fastla._math import log
    >>> log(1.0), log(0.0), abs(log(10.0) - 2.302585092994046) < 1e-15
    (0.0, -inf, True)
    """
    if _jit.JIT_ENABLED:
        return _log_compiled(float(x))
    return float(_jit.python_rendering(_log_f64, np.float64(x)))


_jit.overload_by_dtype(log, {"float64": _log_f64})


@_jit.jit
def _log_compiled(x):
    return log(x)


# --------------------------------------------------------------------------- row maximum
#
# LLVM vectorises a float max reduction only under the no-NaNs flag, which fastla never sets; a
# select-based max loop stays scalar (one vmaxss per element). Mapping each float's bits to an
# integer with the same order (negative floats: flip the magnitude bits) turns it into an integer
# max reduction, which vectorises. A positive NaN maps above +inf, so a row containing NaN gets
# max NaN and its softmax is NaN, as in NumPy/SciPy (where NaN propagates through the max).

_MAG64 = 0x7FFFFFFFFFFFFFFF
_MAG32 = np.int32(0x7FFFFFFF)


def _row_max_f64(x):
    _intrinsics.wide_vectors()
    row = x
    b = _intrinsics.f64_as_i64(row[0])
    k = b ^ ((b >> 63) & _MAG64)
    for j in range(_jit.U(1), _jit.U(row.size)):  # unsigned: see _jit.U
        b = _intrinsics.f64_as_i64(row[j])
        kj = b ^ ((b >> 63) & _MAG64)
        k = kj if kj > k else k
    return _intrinsics.i64_as_f64(k ^ ((k >> 63) & _MAG64))


def _row_max_f32(x):
    _intrinsics.wide_vectors()
    row = x
    b = _intrinsics.f32_as_i32(row[0])
    k = b ^ ((b >> 31) & _MAG32)
    for j in range(_jit.U(1), _jit.U(row.size)):
        b = _intrinsics.f32_as_i32(row[j])
        kj = b ^ ((b >> 31) & _MAG32)
        k = kj if kj > k else k
    return _intrinsics.i32_as_f32(k ^ ((k >> 31) & _MAG32))


def row_max(row):
    """Maximum of a non-empty contiguous 1-D float array, vectorisable; NaN wins like np.max.

    (A NaN with the sign bit set orders below -inf and is skipped; the NaN still reaches the
    result through the sums that follow in every kernel using this.)

    Examples
    --------
    >>> import numpy as np
    >>> from fastla._math import row_max
    >>> float(row_max(np.array([-3.0, 2.5, -np.inf])))
    2.5
    """
    if _jit.JIT_ENABLED:
        return _row_max_compiled(row)
    if row.dtype == np.float32:
        return np.float32(_jit.python_rendering(_row_max_f32, row))
    return _jit.python_rendering(_row_max_f64, row)


_jit.overload_by_dtype(row_max, {"float64": _row_max_f64, "float32": _row_max_f32})


@_jit.jit
def _row_max_compiled(row):
    return row_max(row)


# --------------------------------------------------------------------------- magnitude bits
#
# The same mapping for |x|: its bits with the sign cleared order as |x| does, +inf above every
# finite value and every NaN above +inf, so a running max of these integers (a vectorised integer
# reduction) gives max |x| and, by comparing with the bits of inf, whether anything was not finite.

_F64_INF_BITS = 0x7FF0000000000000
_F32_INF_BITS = 0x7F800000


def _abs_bits_f64(x):
    return _intrinsics.f64_as_i64(x) & _MAG64


def _abs_bits_f32(x):
    return _intrinsics.f32_as_i32(x) & _MAG32


def abs_bits(x):
    """The bits of ``|x|`` as an integer of ``x``'s width, ordered as ``|x|`` with NaN above inf.

    Examples
    --------
    >>> import numpy as np
    >>> from fastla._math import abs_bits, from_abs_bits
    >>> [int(abs_bits(np.float64(v)) > abs_bits(np.float64(2.0))) for v in (-3.0, 1.0, np.inf, np.nan)]
    [1, 0, 1, 1]
    >>> from_abs_bits(np.int64(abs_bits(np.float32(-2.5))), np.float32)
    (2.5, True)
    """
    x = np.asarray(x)
    return np.abs(x).view(np.int64 if x.dtype == np.float64 else np.int32)[()] & (
        _MAG64 if x.dtype == np.float64 else _MAG32
    )


_jit.overload_by_dtype(abs_bits, {"float64": _abs_bits_f64, "float32": _abs_bits_f32})


def from_abs_bits(bits, dtype):
    """``(|x|, finite)`` from the largest :func:`abs_bits` of values of ``dtype`` (held in any int)."""
    if np.dtype(dtype) == np.float64:
        return float(np.int64(bits).view(np.float64)), int(bits) < _F64_INF_BITS
    return float(np.int32(bits).view(np.float32)), int(bits) < _F32_INF_BITS


# --------------------------------------------------------------------------- 4 x 4 dot products


@_jit.jit(inline="always")
def dot4x4(a, a0, a1, a2, a3, b, b0, b1, b2, b3, zero):
    """The 16 dot products ``a[ai] . b[bj]`` of rows ``a0..a3`` of ``a`` and ``b0..b3`` of ``b`` (same
    length), as a tuple ``(a0.b0, a0.b1, a0.b2, a0.b3, a1.b0, ..., a3.b3)`` accumulated in ``zero``'s
    type.

    One pass along the rows with sixteen accumulators, which LLVM vectorises along the rows: each
    vector of ``a`` and of ``b`` is loaded once for four FMAs (one load per two FMAs, where a
    dot product at a time needs two per FMA). A register block of four rows each side, as in a
    GEMM micro-kernel, but reading the rows in place (nothing packed): the step of memory-bound
    products whose one operand is streamed once (power iteration's ``A V``, top-k over a few
    queries)."""
    z = zero
    return dot4x4_span(
        a,
        a0,
        a1,
        a2,
        a3,
        b,
        b0,
        b1,
        b2,
        b3,
        _jit.U(0),
        _jit.U(a.shape[1]),
        (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z),
    )


@_jit.jit(inline="always")
def dot4x4_span(a, a0, a1, a2, a3, b, b0, b1, b2, b3, lo, hi, s):
    """:func:`dot4x4` over the columns ``lo:hi`` (unsigned), added to the 16 running sums ``s`` (in
    the same order): the step of a pass that takes the rows in strips (power iteration's
    one-triangle product)."""
    s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33 = s
    for t in range(lo, hi):
        y0 = b[b0, t]
        y1 = b[b1, t]
        y2 = b[b2, t]
        y3 = b[b3, t]
        x0 = _intrinsics.widen(a[a0, t])
        x1 = _intrinsics.widen(a[a1, t])
        x2 = _intrinsics.widen(a[a2, t])
        x3 = _intrinsics.widen(a[a3, t])
        s00 += x0 * y0
        s01 += x0 * y1
        s02 += x0 * y2
        s03 += x0 * y3
        s10 += x1 * y0
        s11 += x1 * y1
        s12 += x1 * y2
        s13 += x1 * y3
        s20 += x2 * y0
        s21 += x2 * y1
        s22 += x2 * y2
        s23 += x2 * y3
        s30 += x3 * y0
        s31 += x3 * y1
        s32 += x3 * y2
        s33 += x3 * y3
    return (s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
