"""The shared vectorisable exp and row max against NumPy over the whole float range."""

import platform

import numpy as np
import pytest

from fastla import _host, _intrinsics, _jit, _math


@_jit.jit
def _vexp(x, out):
    for i in range(x.size):
        out[i] = _math.exp(x[i])


@_jit.jit
def _vexp_nonpositive(x, out):
    for i in range(x.size):
        out[i] = _math.exp_nonpositive(x[i])


@_jit.jit
def _rowmax(x):
    return _math.row_max(x)


def _range_inputs(dtype, n):
    lo, hi = (-760.0, 720.0) if dtype == np.float64 else (-110.0, 95.0)
    grid = np.linspace(lo, hi, n).astype(dtype)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 1.0, -1.0], dtype)
    rand = np.random.default_rng(3).standard_normal(n // 4).astype(dtype) * 30
    return np.concatenate([grid, special, rand])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_matches_numpy_over_the_range(dtype):
    n = 400_000 if _jit.JIT_ENABLED else 4_000
    x = _range_inputs(dtype, n)
    out = np.empty_like(x)
    _vexp(x, out)
    with np.errstate(over="ignore", under="ignore"):
        ref = np.exp(x.astype(np.float64)).astype(dtype)
    normal = np.isfinite(ref) & (ref >= np.finfo(dtype).tiny)
    ulp = np.abs(out[normal].astype(np.float64) - ref[normal]) / np.spacing(ref[normal]).astype(np.float64)
    assert ulp.max() <= 2, ulp.max()  # documented bound in fastla._math
    # subnormal outputs: within one subnormal ulp; overflow/underflow/specials exact
    sub = ~normal & np.isfinite(ref)
    assert np.all(np.abs(out[sub].astype(np.float64) - ref[sub]) <= 2 * np.finfo(dtype).smallest_subnormal)
    np.testing.assert_array_equal(out[np.isinf(ref)], ref[np.isinf(ref)])
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_nonpositive_is_exp_down_to_the_least_normal_result_then_zero(dtype):
    """``exp_nonpositive`` (the attention kernels' exp of scores minus their maximum): in a
    vectorised loop as in the kernels, ``exp``'s bits wherever ``exp`` is a normal float, 0 where it
    is subnormal (on AVX-512 hosts, where both scale by ``ldexp``, ``exp``'s bits there too); exact
    at 0 and -0, 0 at -inf, NaN for NaN; its least argument is the boundary itself."""
    n = 400_000 if _jit.JIT_ENABLED else 4_000
    lo = -760.0 if dtype == np.float64 else -110.0
    low = _math._LOW_NONPOS if dtype == np.float64 else _math._LOW_NONPOS_F
    edges = [low, np.nextafter(dtype(low), dtype(-np.inf)), np.nextafter(dtype(low), dtype(0))]
    special = np.array([0.0, -0.0, -np.inf, np.nan, -1e-30, -1.0, *edges], dtype)
    x = np.concatenate(
        [np.linspace(lo, 0.0, n).astype(dtype), special, -np.abs(_range_inputs(dtype, n // 4))]
    )
    out, ref = np.empty_like(x), np.empty_like(x)
    _vexp_nonpositive(x, out)
    _vexp(x, ref)
    tiny = np.finfo(dtype).tiny
    normal = ref >= tiny
    np.testing.assert_array_equal(out[normal], ref[normal])
    below = ~normal & ~np.isnan(x)
    np.testing.assert_array_equal(out[below], ref[below] if _math.SCALEF else 0)
    assert np.isnan(out[np.isnan(x)]).all() and out[x == 0].tolist() == [1.0] * int((x == 0).sum())
    assert (x[normal] >= low).all() and ref[x == dtype(low)][0] >= tiny  # the boundary is exp's own
    assert ref[x == np.nextafter(dtype(low), dtype(-np.inf))][0] < tiny


def test_float32_exp_polynomial_is_the_fitted_one():
    """The float32 exp's degree-6 polynomial (fastla._math's P2..P6) stays within its documented
    3.7e-9 relative error of e^r over the reduced range, evaluated exactly (float64), below the
    degree-7 Taylor polynomial's 5.2e-9 it replaced: a mistyped coefficient fails here even where
    the ulp test's float32 rounding would hide it."""
    r = np.linspace(-np.log(2) / 2, np.log(2) / 2, 200_001)
    coeffs = [float(c) for c in (_math._P2, _math._P3, _math._P4, _math._P5, _math._P6)]
    p = 1 + r + r**2 * np.polynomial.polynomial.polyval(r, coeffs)
    assert np.max(np.abs(p / np.exp(r) - 1)) < 3.8e-9


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs an extended long double")
def test_float64_exp_polynomial_is_the_fitted_one():
    """The float64 exp's degree-11 polynomial (C2..C11) stays within its documented 3.7e-18 relative
    error of e^r over the reduced range (4e-18 here: the long double evaluation's own rounding), below
    the degree-13 Taylor polynomial's 4.1e-18; evaluated in extended precision (x87 long double)."""
    ld = np.longdouble
    r = np.linspace(-np.log(ld(2)) / 2, np.log(ld(2)) / 2, 100_001, dtype=ld)
    coeffs = [getattr(_math, f"_C{k}") for k in range(2, 12)]
    q = np.zeros_like(r)
    for c in reversed(coeffs):
        q = q * r + ld(c)
    p = 1 + r + r * r * q
    assert np.max(np.abs(p / np.exp(r) - 1)) < 4.0e-18


def test_exp_exact_at_zero_and_specials():
    for dtype in (np.float32, np.float64):
        x = np.array([0.0, -np.inf, np.inf, np.nan], dtype)
        out = np.empty_like(x)
        _vexp(x, out)
        assert out[0] == 1 and out[1] == 0 and out[2] == np.inf and np.isnan(out[3])
    assert _math.exp(0.0) == 1.0 and _math.exp(np.float32(0)) == 1


@_jit.jit
def _vldexp(x, n, out):
    for i in range(x.size):
        out[i] = _intrinsics.ldexp(x[i], n[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ldexp_matches_numpy(dtype):
    """``_intrinsics.ldexp`` (exp's scaling on AVX-512) is NumPy's ldexp bit for bit: normal results,
    results rounded once into the subnormal range, overflow to inf, underflow to 0, NaN, inf, -0."""
    rng = np.random.default_rng(5)
    info = np.finfo(dtype)
    x = np.concatenate([rng.uniform(0.5, 2.0, 600), -rng.uniform(0.5, 2.0, 200)]).astype(dtype)
    x = np.concatenate([x, np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, 1.5], dtype)])
    lo, hi = -info.nexp - info.nmant - 4, info.maxexp + 2  # past both ends
    n = rng.integers(lo, hi, x.size).astype(np.int32)
    n[-7:] = [3, -3, 5, -5, 1, lo + 1, info.minexp - 1]  # 1 and 1.5 scaled into the subnormals
    out = np.empty_like(x)
    _vldexp(x, n, out)
    with np.errstate(over="ignore", under="ignore"):
        ref = np.ldexp(x, n)
    assert out.dtype == ref.dtype == dtype
    np.testing.assert_array_equal(out.view(np.uint8), ref.view(np.uint8))  # bits, -0 and NaN included
    assert np.any((ref != 0) & (np.abs(ref) < info.tiny)), "the inputs reach the subnormal range"


@_jit.jit
def _vlog(x, out):
    for i in range(x.size):
        out[i] = _math.log(x[i])


def test_log_matches_numpy_over_the_range():
    """fastla's float64 log (log-softmax's row sums) within 1 ulp of NumPy's over every exponent
    (random bit patterns: subnormals to the largest float), near 1 and over row-sum sizes; NumPy's
    specials exactly."""
    rng = np.random.default_rng(5)
    n = 1_000_000 if _jit.JIT_ENABLED else 5_000
    bits = rng.integers(1, 0x7FF0000000000000, n, dtype=np.int64)  # every positive finite float64
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, -1e-300, 5e-324, 2.2250738585072014e-308, 1.0]
    x = np.concatenate(
        [
            bits.view(np.float64),
            rng.uniform(1.0, 1e4, n // 4),
            1.0 + rng.standard_normal(n // 8) * 1e-9,
            special,
        ]
    )
    out = np.empty_like(x)
    _vlog(x, out)
    with np.errstate(all="ignore"):
        ref = np.log(x)
    finite = np.isfinite(ref) & (ref != 0)
    ulp = np.abs(out[finite] - ref[finite]) / np.spacing(np.abs(ref[finite]))
    assert ulp.max() <= 1, ulp.max()  # documented bound in fastla._math
    np.testing.assert_array_equal(out[~finite], ref[~finite])  # 0 at 1, -inf at 0, inf, NaN
    assert _math.log(1.0) == 0.0 and _math.log(0.0) == -np.inf and np.isnan(_math.log(-2.0))


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs JIT")
def test_log_loop_vectorises():
    """The log loop vectorises as wide as a plain multiply-add loop (no libm call per element)."""
    reference = _widest_packed_register(_compiled_asm(_scale_loop, np.float64), "pd")
    asm = _compiled_asm(_vlog_loop, np.float64)
    assert _widest_packed_register(asm, "pd") == reference
    assert "log" not in "".join(line for line in asm.splitlines() if "call" in line)


_REGS = ("xmm", "ymm", "zmm")


def _widest_packed_register(asm, suffix):
    """The widest register of a packed ``suffix`` (ps/pd) multiply or FMA in ``asm``, or None."""
    import re

    found = [
        m.group(1)
        for line in asm.splitlines()
        if re.search(rf"\b(v?fn?m(add|sub)\w*|v?mul){suffix}\b", line)
        for m in [re.search(r"%(xmm|ymm|zmm)", line)]
        if m
    ]
    return max(found, key=_REGS.index) if found else None


def _compiled_asm(body, dtype):
    from numba import njit

    f = njit(cache=False, fastmath=set(_jit.FASTMATH))(body)
    x = np.ones(256, dtype)
    f(x, np.empty_like(x))
    return next(iter(f.inspect_asm().values()))


def _scale_loop(x, out):
    _intrinsics.wide_vectors()
    for i in range(x.size):
        out[i] = x[i] * x[i] + x[i]


def _exp_loop(x, out):
    _intrinsics.wide_vectors()
    for i in range(x.size):
        out[i] = _math.exp(x[i])


def _vlog_loop(x, out):
    _intrinsics.wide_vectors()
    for i in range(x.size):
        out[i] = _math.log(x[i])


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs JIT")
@pytest.mark.parametrize("dtype,suffix", [(np.float32, "ps"), (np.float64, "pd")])
def test_wide_vectors_sets_the_loop_width(dtype, suffix):
    """LLVM honours fastla's width request: a plain loop comes out at ``vector_bytes``.

    Without the request LLVM's skylake-avx512/icelake/rocketlake targets prefer 256-bit vectors; the
    register is read from what LLVM emitted, never guessed from CPU flags.
    """
    want = {16: "xmm", 32: "ymm", 64: "zmm"}[_host.vector_bytes()]
    assert _widest_packed_register(_compiled_asm(_scale_loop, dtype), suffix) == want


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs JIT")
@pytest.mark.parametrize("dtype,suffix", [(np.float32, "ps"), (np.float64, "pd")])
def test_exp_loop_vectorises(dtype, suffix):
    """The exp loop vectorises as wide as LLVM vectorises a plain multiply-add loop on this target."""
    reference = _widest_packed_register(_compiled_asm(_scale_loop, dtype), suffix)
    assert reference is not None
    assert _widest_packed_register(_compiled_asm(_exp_loop, dtype), suffix) == reference


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs JIT")
@pytest.mark.parametrize("dtype,suffix", [(np.float32, "ps"), (np.float64, "pd")])
def test_exp_loop_scales_by_vscalef_on_avx512(dtype, suffix):
    """Where the target has AVX-512F the exp loop scales by 2^n with ``vscalef`` (one instruction, no
    libm call); elsewhere by the two bit-cast factors (a vector ldexp would be a libm call per lane)."""
    asm = _compiled_asm(_exp_loop, dtype)
    assert ("vscalef" + suffix in asm) == _math.SCALEF
    assert _math.SCALEF == ("avx512f" in _host.host_cpu()[1])
    assert "ldexp" not in asm


@_jit.jit
def _vclamp(x, lo, hi, out):
    for i in range(x.size):
        out[i] = _intrinsics.clamp(x[i], lo, hi)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clamp_matches_clip_and_its_twin(dtype):
    """``_intrinsics.clamp`` (exp's range clamp) is ``np.clip`` for every non-NaN input, compiled (a
    vectorised loop and a scalar call) and as its Python twin; the twin gives ``lo`` for NaN."""
    lo, hi = dtype(-104.0), dtype(89.0)
    x = np.concatenate([np.linspace(-300, 300, 997), [-np.inf, np.inf, -0.0, 0.0, lo, hi]]).astype(dtype)
    out = np.empty_like(x)
    _vclamp(x, lo, hi, out)
    np.testing.assert_array_equal(out, np.clip(x, lo, hi))
    twin = _intrinsics._clamp_twin
    assert [twin(v, lo, hi) for v in x] == list(np.clip(x, lo, hi))
    assert twin(dtype(np.nan), lo, hi) == lo


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs JIT")
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 mnemonics")
@pytest.mark.parametrize("dtype,suffix", [(np.float32, "ps"), (np.float64, "pd")])
def test_exp_loop_clamps_with_one_min_and_one_max(dtype, suffix):
    """The exp loop's range clamp is a packed max and min (``_intrinsics.clamp``), with no ordered
    compare: the compare-and-select clamp (``cmplt`` and blends on every x86 target) cost ~20% of the
    loop's time (see the intrinsic). The one compare left is the NaN check (``cmpord``)."""
    asm = _compiled_asm(_exp_loop, dtype)
    assert f"max{suffix}" in asm and f"min{suffix}" in asm
    assert f"cmplt{suffix}" not in asm and f"cmpord{suffix}" in asm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_max(dtype):
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100, 1001):
        x = (rng.standard_normal(n) * 1e3).astype(dtype)
        assert _rowmax(x) == x.max()
    assert _rowmax(np.array([-np.inf, -np.inf], dtype)) == -np.inf
    assert _rowmax(np.array([-5.0, -0.0, -1.0], dtype)) == 0
    assert np.isnan(_rowmax(np.array([1.0, np.nan, 2.0], dtype)))
    assert _rowmax(np.array([np.inf, 3.0], dtype)) == np.inf


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs JIT")
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 prefetch mnemonics")
def test_row_passes_prefetch_the_row_ahead_only_when_given_one():
    """The exp pass prefetches the row it is given (the next row of a large array) and emits no
    prefetch at all for None (a user's one-row kernels call pays nothing for it); the sums agree."""
    import importlib

    sm = importlib.import_module("fastla.softmax")
    from numba import njit

    ahead = njit(cache=False)(lambda x, out: sm._exp_sum(x, x[0], out, True, x[0] * 0, out))
    none = njit(cache=False)(lambda x, out: sm._exp_sum(x, x[0], out, True, x[0] * 0, None))
    x = np.linspace(-3.0, 3.0, 1500)
    assert ahead(x, np.empty_like(x)) == none(x, np.empty_like(x))

    def prefetches(f):  # instructions, not symbol names (this test's own name says "prefetch")
        return [line for line in next(iter(f.inspect_asm().values())).splitlines() if "\tprefetch" in line]

    assert prefetches(ahead)
    assert not prefetches(none)
