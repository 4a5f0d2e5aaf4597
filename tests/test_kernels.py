"""fastla.kernels: called from a user's @njit function, from its prange loop and from Python, against
the public functions, in float32 and float64; errors raised inside compiled code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.special as sps

import fastla
from fastla import _jit, kernels
from fastla import _lane_solver as _ls
from tests.helpers import eps


def njit(fn=None, **kw):
    """The user's own decorator: plain numba (cache off); with the JIT off the user's functions run
    as Python and call the kernels' Python versions, so every test here runs in both modes."""
    if not _jit.JIT_ENABLED:
        return fn if fn is not None else (lambda f: f)
    from numba import njit as _njit

    return _njit(fn, **kw) if fn is not None else _njit(**kw)


prange = _jit.prange  # numba.prange, or range without numba

# Every test here compiles user functions that call the kernels (seconds each, not cached), and most
# share them: the file runs on one pytest-xdist worker (tests/conftest.py, ONE_WORKER_FILES), so
# that the two workers of ``pytest -n 2`` do not each compile the same functions.


def _tol(dtype):
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-12


# --------------------------------------------------------------------------- user functions


@njit
def user_exp_scalar(x):
    return kernels.exp(x)


@njit
def user_exp_array(x):
    return kernels.exp(x)


@njit
def user_exp_into(x, out):
    return kernels.exp(x, out)


@njit
def user_softmax_rows(x, out):
    for i in range(x.shape[0]):
        kernels.softmax(x[i], out[i])
    return out


@njit(parallel=True)
def user_softmax_prange(x, out):
    for i in prange(x.shape[0]):
        kernels.softmax(x[i], out[i])
    return out


@njit
def user_log_softmax(x):
    return kernels.log_softmax(x)


@njit
def user_logsumexp(x):
    return kernels.logsumexp(x)


@njit(parallel=True)
def user_matmul_prange(a, b, out):
    for i in prange(a.shape[0]):
        kernels.matmul(a[i], b[i], out[i])
    return out


@njit
def user_matmul(a, b):
    return kernels.matmul(a, b)


@njit
def user_gemm(a, b, out, alpha, beta):
    return kernels.gemm(a, b, out, alpha, beta)


@njit(parallel=True)
def user_solve_prange(a, b, x):
    for i in prange(a.shape[0]):
        kernels.solve(a[i], b[i], x[i])
    return x


@njit
def user_solve(a, b):
    return kernels.solve(a, b)


@njit
def user_try_solve(a, b, out):
    return kernels.try_solve(a, b, out)


@njit
def user_solve_inplace(a, b):
    return kernels.solve_inplace(a, b)


@njit
def user_lu(a, b):
    lu, piv = kernels.lu_factor(a)
    return lu, piv, kernels.lu_solve(lu, piv, b)


@njit
def user_lu_factor(a):
    return kernels.lu_factor(a)


@njit
def user_lu_solve_into(lu, piv, b, out):
    return kernels.lu_solve(lu, piv, b, out)


@njit
def user_cosine(x, y):
    return kernels.cosine_similarity(x, y)


@njit
def user_cosine_into(x, y, out):
    return kernels.cosine_similarity(x, y, out)


@njit
def user_topk(values, k):
    scores, index = kernels.topk_init(k, values.dtype)
    count = 0
    for j in range(values.shape[0]):
        count = kernels.topk_push(scores, index, count, values[j], j)
    return scores, index


@njit
def user_attention(q, k, v, tile, scale):
    L = q.shape[0]
    m = np.full(L, -np.inf, q.dtype)
    l = np.zeros(L, q.dtype)
    acc = np.zeros((L, v.shape[1]), q.dtype)
    for j0 in range(0, k.shape[0], tile):
        kernels.attention_step(q, k[j0 : j0 + tile], v[j0 : j0 + tile], scale, m, l, acc)
    return kernels.attention_finish(l, acc)


@njit
def user_push(scores, index, count, value, j):
    return kernels.topk_push(scores, index, count, value, j)


@njit
def user_attention_step(q, k, v, m, l, acc):
    kernels.attention_step(q, k, v, 0.5, m, l, acc)


@njit
def user_attention_finish(l, acc, out):
    return kernels.attention_finish(l, acc, out)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_scalar_and_array(dtype, rng):
    x = (rng.standard_normal(33) * 20).astype(dtype)
    got = user_exp_array(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, np.exp(x.astype(np.float64)), rtol=4 * eps(dtype))
    np.testing.assert_allclose(kernels.exp(x), got, rtol=0)
    assert user_exp_scalar(dtype(1.0)) == kernels.exp(dtype(1.0))
    assert abs(float(user_exp_scalar(dtype(1.0))) - np.e) <= 4 * eps(dtype) * np.e
    # from Python, np.exp's scalar type: a scalar or 0-d array of dtype gives a dtype scalar, the
    # 0-d array computed in its own precision (it was promoted to float64)
    for scalar in (dtype(x[3]), np.array(x[3])):
        got0 = kernels.exp(scalar)
        assert type(got0) is dtype and got0 == got[3]
    assert type(kernels.exp(np.int64(2))) is np.float64 and type(kernels.exp(2)) is np.float64
    for bad in (np.float16(1), np.complex128(1), np.array(1j)):
        with pytest.raises(TypeError, match=r"kernels\.exp"):
            kernels.exp(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_into_out(dtype, rng):
    """``out=``: a contiguous row (its own inlined loop), a 2-D array, a strided ``x``, from
    compiled code and from Python: the same bits as the allocating form; a mismatched ``out``
    raises, and a scalar takes no ``out``."""
    x = (rng.standard_normal((4, 33)) * 20).astype(dtype)
    ref = kernels.exp(x)
    np.testing.assert_array_equal(user_exp_array(x[1]), ref[1])  # a row, allocating
    for xs, expect in ((x[1], ref[1]), (x, ref), (x[:, ::2], ref[:, ::2])):
        out = np.empty(xs.shape, dtype)
        assert user_exp_into(xs, out) is out
        np.testing.assert_array_equal(out, expect)
        out2 = np.empty(xs.shape, dtype)
        assert kernels.exp(xs, out2) is out2
        np.testing.assert_array_equal(out2, expect)
    with pytest.raises(ValueError, match="out"):
        user_exp_into(x[1], np.empty(32, dtype))
    with pytest.raises(ValueError, match="out"):
        kernels.exp(x[1], np.empty(32, dtype))
    with pytest.raises(TypeError, match="out"):
        kernels.exp(dtype(1.0), np.empty(1, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family_from_njit_and_prange(dtype, rng):
    x = (rng.standard_normal((50, 37)) * 4).astype(dtype)
    ref = fastla.softmax(x, backend="numba")
    for fn in (user_softmax_rows, user_softmax_prange):
        out = np.empty_like(x)
        np.testing.assert_allclose(fn(x, out), ref, rtol=_tol(dtype), atol=_tol(dtype))
    np.testing.assert_allclose(user_log_softmax(x), fastla.log_softmax(x, backend="numba"), rtol=_tol(dtype))
    np.testing.assert_allclose(user_log_softmax(x[3]), sps.log_softmax(x[3].astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(user_logsumexp(x), sps.logsumexp(x.astype(np.float64), axis=-1), rtol=1e-5)
    assert abs(user_logsumexp(x[0]) - sps.logsumexp(x[0].astype(np.float64))) < 1e-4
    # a contiguous row (its own inlined kernel) gives the 2-D form's bits; a strided one too
    assert np.asarray(user_logsumexp(x[3]), dtype) == user_logsumexp(x)[3]
    assert np.asarray(user_logsumexp(x.T.copy().T[3]), dtype) == user_logsumexp(x)[3]
    assert abs(user_logsumexp(x[:, 2]) - sps.logsumexp(x[:, 2].astype(np.float64))) < 1e-4
    inplace = x.copy()
    kernels.softmax(inplace, inplace)  # in place, from Python
    np.testing.assert_allclose(inplace, ref, rtol=_tol(dtype), atol=_tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="inspects the compiled code")
def test_row_kernel_keeps_its_flags_in_a_plain_njit_caller(dtype):
    """A user's plain ``@njit`` function has no fastmath. Code inlined into it at Numba's IR level
    takes its flags, and the row kernel's exp-and-sum loop then cannot be vectorised (a float
    reduction needs reassociation): it ran scalar. The kernel must keep fastla's flags: the user
    function's final module holds a vectorised, reassociating sum, and its row loops load and
    store whole vectors."""
    import re

    x = np.ones((2, 64), dtype)
    user_softmax_rows(x, np.empty_like(x))
    ir = next(
        text
        for sig, text in user_softmax_rows.inspect_llvm().items()
        if np.dtype(str(sig[0].dtype)) == np.dtype(dtype)
    )
    elem = "float" if np.dtype(dtype) == np.float32 else "double"
    vector_sum = rf"fadd (?:fast|reassoc)[^\n]*<\d+ x {elem}>"
    assert re.search(vector_sum, ir), "the exp-and-sum loop is not vectorised"
    # a signed loop index is checked for < 0 per element, which made the row loops gather and
    # scatter their contiguous rows (rows of 8 float64: 39 ns with, 28 ns without)
    assert "llvm.masked.gather" not in ir and "llvm.masked.scatter" not in ir
    if np.dtype(dtype) == np.float32:
        # the last pass in the row's dtype: a float64 factor (1 / sum; log-softmax's shift) made
        # every element of a float32 row go to float64 and back, at half the vector width
        user_log_softmax(x[0])
        log_ir = next(
            text
            for sig, text in user_log_softmax.inspect_llvm().items()
            if sig[0].ndim == 1 and np.dtype(str(sig[0].dtype)) == np.dtype(dtype)
        )
        for text in (ir, log_ir):
            assert not re.search(
                r"fpext (?:fast |reassoc |contract |afn |arcp |nnan |ninf |nsz )*<\d+ x float>", text
            )


def test_softmax_from_python_matches_scipy(dtype, rng):
    x = (rng.standard_normal((6, 9)) * 3).astype(dtype)
    np.testing.assert_allclose(kernels.softmax(x), sps.softmax(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(kernels.log_softmax(x[0]), sps.log_softmax(x[0]), rtol=1e-5, atol=1e-6)


def test_softmax_of_any_2d_layout(dtype, rng):
    """F-ordered, strided and reversed 2-D arrays, from Python and from a user's @njit function (a
    TypingError before: the rows kernel asked to prefetch a non-contiguous next row)."""
    x = (rng.standard_normal((6, 10)) * 3).astype(dtype)
    for view in (np.asfortranarray(x), x[:, ::2], x[::-1, ::-1]):
        expect = sps.softmax(view.astype(np.float64), axis=-1)
        np.testing.assert_allclose(kernels.softmax(view), expect, rtol=1e-5)
        np.testing.assert_allclose(user_log_softmax(view), np.log(expect), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products(dtype, rng):
    a = rng.standard_normal((200, 4, 4)).astype(dtype)
    b = rng.standard_normal((200, 4, 4)).astype(dtype)
    out = user_matmul_prange(a, b, np.empty_like(a))
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=_tol(dtype) * 10, atol=_tol(dtype))
    A = rng.standard_normal((70, 300)).astype(dtype)  # k > KC on AVX2: several rank-KC updates
    B = rng.standard_normal((300, 45)).astype(dtype)
    C0 = rng.standard_normal((70, 45)).astype(dtype)
    got = user_gemm(A, B, C0.copy(), 2.0, 0.5)
    np.testing.assert_allclose(
        got, 2 * A @ B + 0.5 * C0, rtol=1e-4, atol=1e-3 if dtype == np.float32 else 1e-10
    )
    np.testing.assert_allclose(kernels.gemm(A, B, np.zeros((70, 45), dtype)), A @ B, rtol=1e-4, atol=1e-3)


def test_gemm_and_matmul_into_an_overlapping_out(rng):
    """``out`` that is an operand (or a view of one) gets NumPy's answer: ``kernels.gemm`` from
    Python and compiled code (a thin product reads B in place), ``kernels.matmul`` from Python."""
    # 40 and 300: B's full panels read in place (at most 48 rows of A); 300 only compiled (without
    # the JIT its 300^3 products are 7 s of Python on the paths 40 covers)
    for n in (8, 40, 300) if _jit.JIT_ENABLED else (8, 40):
        a = rng.standard_normal((min(n, 40), n))
        b = rng.standard_normal((n, n))
        c0 = rng.standard_normal((min(n, 40), n))
        for target in ("a", "b"):
            ops = {"a": a.copy(), "b": b.copy()}
            out = ops[target][: a.shape[0]] if target == "b" else ops[target]
            before = out.copy()
            expect = 2 * a @ b + 0.5 * before
            got = user_gemm(ops["a"], ops["b"], out, 2.0, 0.5)
            np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-10)
            ops = {"a": a.copy(), "b": b.copy()}
            out = ops[target][: a.shape[0]] if target == "b" else ops[target]
            kernels.gemm(ops["a"], ops["b"], out, 2.0, 0.5)
            np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-10)
        sq = rng.standard_normal((n, n))
        expect = sq @ b
        kernels.matmul(sq, b, b)
        np.testing.assert_allclose(b, expect, rtol=1e-12, atol=1e-10)
        expect = c0[:, :1].T @ c0
        np.testing.assert_allclose(kernels.matmul(c0[:, :1].T, c0, c0[:1]), expect, rtol=1e-12, atol=1e-10)


def _overlapping_out_cases(dtype, rng):
    """``(name, call(args, out), reference(*args), args, out)`` with ``out`` a shifted view of the
    buffer holding one of ``args``, for every kernel that takes an ``out`` from Python."""
    n = 6
    sq = (rng.standard_normal((n, n)) + 5 * np.eye(n)).astype(dtype)
    lu, piv = kernels.lu_factor(sq)
    cases = []
    for shift in (1, 3, -1, -3, 5):
        buf = (rng.random(400) + 0.5).astype(dtype)

        def views(count, shape, oshape=None, buf=buf, shift=shift):
            x = buf[50 : 50 + count].reshape(shape)
            return x, buf[50 + shift :][: math.prod(oshape or shape)].reshape(oshape or shape)

        x, o = views(35, (5, 7))
        cases += [
            ("exp", kernels.exp, np.exp, (x,), o),
            ("softmax", kernels.softmax, lambda x: sps.softmax(x, axis=-1), (x,), o),
            ("log_softmax", kernels.log_softmax, lambda x: sps.log_softmax(x, axis=-1), (x,), o),
        ]
        b, o = views(2 * n, (n, 2))
        cases += [
            ("solve b", kernels.solve, np.linalg.solve, (sq, b), o),
            ("lu_solve", kernels.lu_solve, lambda lu, piv, b: sla.lu_solve((lu, piv), b), (lu, piv, b), o),
        ]
        a, o = views(n * n, (n, n), (n, 2))
        a *= 0.1  # well conditioned: float32 agrees to rounding
        a += 5 * np.eye(n, dtype=dtype)
        cases.append(("solve a", kernels.solve, np.linalg.solve, (a, sq[:, :2].copy()), o))
        b, o = views(n, (n,))
        cases.append(("try_solve", kernels.try_solve, np.linalg.solve, (sq, b), o))
        b, o = views(4 * n, (4, n))
        stack = np.stack([sq] * 4)
        stacked = lambda a, b: np.linalg.solve(a, b[..., None])[..., 0]  # noqa: E731
        cases.append(("solve stack", kernels.solve, stacked, (stack, b), o))
        acc, o = views(24, (6, 4))
        l_ = buf[200:206]
        finish = lambda l_, acc: acc / l_[:, None]  # noqa: E731
        cases.append(("attention_finish", kernels.attention_finish, finish, (l_, acc), o))
        X, o = views(36, (6, 6))
        cases.append(("cosine_similarity", kernels.cosine_similarity, _cosine_reference, (X, sq), o))
    return cases


def _cosine_reference(X, Y):
    xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    return xn @ (Y / np.linalg.norm(Y, axis=1, keepdims=True)).T


def test_a_python_callers_out_overlapping_an_input_gets_numpys_answer(rng):
    """From Python, an ``out`` that shares part of an input's buffer gets the result computed from
    the original input, as a NumPy ufunc's ``out`` does (the kernels stored into ``out`` while still
    reading the input: exp, the row softmaxes, solve, lu_solve and attention_finish got it wrong).
    float64 only: the check is the Python entry's, whatever the dtype (float32 compiled 11 s more)."""
    dtype = np.float64
    for name, call, reference, args, out in _overlapping_out_cases(dtype, rng):
        assert any(np.shares_memory(out, a) for a in args), name
        expected = reference(*[np.array(a) for a in args])
        call(*args, out)
        np.testing.assert_allclose(out, expected, rtol=_tol(dtype), atol=_tol(dtype), err_msg=name)


SMALL_SHAPES = [(3, 3, 3), (5, 2, 7), (2, 1, 6), (1, 5, 1), (4, 9, 9), (3, 0, 5), (3, 0, 8)]
# vector tiles (whole vectors of columns: 4 f64 or 8 f32) with row tiles of 4 and single rows left
SMALL_SHAPES += [(4, 4, 4), (8, 8, 8), (7, 3, 16), (5, 6, 12), (9, 5, 11), (1, 1, 8)]
# square outputs of another depth: not the straight-line square tiles (4x4, 8x8: depth = n)
SMALL_SHAPES += [(4, 6, 4), (8, 5, 8)]


@pytest.mark.parametrize("m, k, n", SMALL_SHAPES)
def test_small_products_of_every_shape(dtype, rng, m, k, n):
    """Vector tiles and the columns they leave (four columns in registers, then a ragged tail),
    narrow rows, k = 0; then (float64: each form is another compile, the same code for both
    dtypes) the same product of strided views (no vector loads along a row) and of mixed dtypes."""
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    np.testing.assert_allclose(user_matmul(a, b), a @ b, rtol=_tol(dtype) * 10, atol=_tol(dtype))
    if dtype != np.float64:
        return
    wide_a = np.zeros((m, 2 * k), dtype)
    wide_a[:, ::2] = a
    wide_b = np.zeros((k, 2 * n), dtype)
    wide_b[:, ::2] = b
    out = np.full((m, 2 * n), 7, dtype)
    kernels.matmul(wide_a[:, ::2], wide_b[:, ::2], out[:, ::2])
    np.testing.assert_allclose(out[:, ::2], a @ b, rtol=_tol(dtype) * 10, atol=_tol(dtype))
    assert (out[:, 1::2] == 7).all()
    mixed = user_matmul(a.astype(np.float32), b)  # the result takes np.result_type's dtype
    assert mixed.dtype == np.float64
    np.testing.assert_allclose(
        mixed, a.astype(np.float32) @ b, rtol=_tol(np.float32) * 10, atol=_tol(np.float32)
    )


@pytest.mark.parametrize("n", [1, 3, 4, 8, 16])
def test_solve_agrees_with_the_public_batched_solver(n, rng):
    """The same pivoting rule and operation order as fastla.solve's batched kernel: the same
    answer to rounding, on random (not diagonally dominant) systems."""
    a = rng.standard_normal((300, n, n))
    b = rng.standard_normal((300, n, 1))
    x = user_solve_prange(a, b, np.empty_like(b))
    public = fastla.solve(a, b, backend="numba")
    np.testing.assert_allclose(x, public, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(user_solve(a, b), public, rtol=1e-9, atol=1e-9)  # a stack at once
    f32 = user_solve(a[0].astype(np.float32), b[0, :, 0].astype(np.float32))
    assert f32.dtype == np.float32 and f32.shape == (n,)


def _one_system_form(codegen, doc):
    """An intrinsic ``(N, K, W, B, X) -> status`` that emits ``codegen(n, k, itemsize)`` for one
    system, whatever this host's ``_lane_solver._rows_pay`` picks."""

    def twin(N, K, W, B, X):
        return _ls._lane_solve_one_twin(N, K, W, B, X)

    def form(typingctx, N, K, W, B, X):
        nbt = _jit.nb_types
        if not (isinstance(N, nbt.IntegerLiteral) and isinstance(K, nbt.IntegerLiteral)):
            return None
        itemsize = np.dtype(str(W.dtype)).itemsize
        return nbt.int64(N, K, W, B, X), codegen(N.literal_value, K.literal_value, itemsize)

    form.__doc__ = doc
    return _jit.intrinsic(twin)(form)


_one_lane_solve = _one_system_form(
    lambda n, k, itemsize: _ls._lane_codegen(n, k, 1, itemsize),
    "The one-lane straight-line code for any n (what lane_solve_one runs where rows do not pay).",
)
_rows_solve = _one_system_form(
    _ls._row_codegen, "The row-vector code for any n (what lane_solve_one runs where rows pay)."
)


def _each_n(solver):
    """A compiled loop over a stack solving each system with ``solver`` at the stack's n (2 to 8)."""

    @njit
    def solve_each(a, b, x, status):
        n = a.shape[1]
        for i in range(a.shape[0]):
            ai, bi, xi = a[i], b[i], x[i]
            if n == 2:
                status[i] = solver(2, 1, ai, bi, xi)
            elif n == 3:
                status[i] = solver(3, 1, ai, bi, xi)
            elif n == 4:
                status[i] = solver(4, 1, ai, bi, xi)
            elif n == 5:
                status[i] = solver(5, 1, ai, bi, xi)
            elif n == 6:
                status[i] = solver(6, 1, ai, bi, xi)
            elif n == 7:
                status[i] = solver(7, 1, ai, bi, xi)
            else:
                status[i] = solver(8, 1, ai, bi, xi)
        return x

    return solve_each


_SOLVE_EACH = {}


def _solve_each(a, b, x, status, form):
    if form not in _SOLVE_EACH:
        _SOLVE_EACH[form] = _each_n(
            {"rows": _rows_solve, "lane": _one_lane_solve, "picked": _ls.lane_solve_one}[form]
        )
    return _SOLVE_EACH[form](a, b, x, status)


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="compares two compiled codes")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_vector_solver_matches_the_one_lane_code_bit_for_bit(dtype, rng):
    """Where rows pay (_lane_solver._rows_pay: n = 2 to 4, and on AVX2 hosts up to 8) one system is
    solved as row vectors (_lane_solver._row_codegen): the one-lane code's operations in its order,
    so the same bits and the same status, also where pivots tie and where a NaN or an inf takes part
    in the pivot search. Both forms are compiled for every n from 2 to 8, whatever this host picks,
    and the picked one is one of them."""
    for n in range(2, 9):
        m = 300
        a = rng.standard_normal((m, n, n))
        a[:100] = rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], (100, n, n))  # ties, some singular
        a[90:100, :, n - 1] = a[90:100, :, 0]  # singular for any n (a column repeated)
        a[100:120, :, 0] = np.nan  # the whole first column
        a[120:140, 0, 0] = np.nan  # the diagonal entry the search starts from
        a[140:160, n - 1, 0] = np.nan  # a candidate below the diagonal
        a[160:180] = np.where(rng.random((20, n, n)) < 0.3, np.inf, a[160:180])
        a[180:200, :, 0] = np.abs(a[180:200, :1, 0])  # one magnitude in the whole first column
        a, b = a.astype(dtype), rng.standard_normal((m, n)).astype(dtype)
        rows, lane, picked = np.empty_like(b), np.empty_like(b), np.empty_like(b)
        s_rows, s_lane, s_picked = (np.empty(m, np.int64) for _ in range(3))
        _solve_each(a, b, rows, s_rows, "rows")
        _solve_each(a, b, lane, s_lane, "lane")
        _solve_each(a, b, picked, s_picked, "picked")
        np.testing.assert_array_equal(s_rows, s_lane)
        assert (s_rows[:100] > 0).any() and (s_rows == 0).any()  # singular and regular systems seen
        np.testing.assert_array_equal(rows, lane)  # NaN where NaN
        np.testing.assert_array_equal(picked, lane)
        np.testing.assert_array_equal(s_picked, s_lane)


@pytest.mark.parametrize("simd", [16, 32, 64])
def test_rows_pay_where_they_were_measured_faster(monkeypatch, simd):
    """One system is solved as row vectors for n = 2 to 4 where a row fits a vector (4 elements),
    and on AVX2 hosts (32-byte vectors) for n = 5 to 8 as well, where they measured 16-30% faster on
    an AMD EPYC; AVX-512 hosts measured those even and keep one lane."""
    monkeypatch.setattr(_ls._host, "simd_bytes", lambda: simd)
    for itemsize in (4, 8):
        got = [n for n in range(1, 10) if _ls._rows_pay(n, itemsize)]
        small = [2, 3, 4] if 4 * itemsize <= simd else []
        assert got == small + ([5, 6, 7, 8] if simd == 32 else []), (simd, itemsize, got)


@pytest.mark.parametrize("k", [None, 3])
def test_solve_forms_from_python(k, rng):
    a = rng.standard_normal((5, 5))
    b = rng.standard_normal(5) if k is None else rng.standard_normal((5, k))
    np.testing.assert_allclose(kernels.solve(a, b), np.linalg.solve(a, b), rtol=1e-10)
    a2, b2 = a.copy(), b.copy()
    x = kernels.solve_inplace(a2, b2)
    assert x is b2 or np.shares_memory(x, b2)
    np.testing.assert_allclose(b2, np.linalg.solve(a, b), rtol=1e-10)


@pytest.mark.parametrize("n, k", [(3, 1), (3, 4), (12, 1), (12, 2)])
def test_one_system_with_2d_right_hand_sides(n, k, rng):
    """``b`` (n, k) for one system (its own inlined path, straight-line for k = 1 and n <= 8, else the
    elimination): as NumPy, fresh or into ``out`` (``b`` may be ``out``), in a loop over a stack;
    singular and mismatched systems raise inside compiled code."""
    a = rng.standard_normal((5, n, n)) + n * np.eye(n)
    b = rng.standard_normal((5, n, k))
    expect = np.linalg.solve(a, b)
    np.testing.assert_allclose(user_solve(a[2], b[2]), expect[2], rtol=1e-10, atol=1e-12)
    x = user_solve_prange(a, b, np.empty_like(b))
    np.testing.assert_allclose(x, expect, rtol=1e-10, atol=1e-12)
    inplace = b[3].copy()
    user_solve_into(a[3], inplace, inplace)
    np.testing.assert_allclose(inplace, expect[3], rtol=1e-10, atol=1e-12)
    with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
        user_solve(np.zeros((n, n)), b[0])
    with pytest.raises(ValueError, match="must be"):
        user_solve(a[0], np.ones((n + 1, k)))
    with pytest.raises(ValueError, match="must be"):
        user_solve_into(a[0], b[0], np.empty((n, k + 1)))


@pytest.mark.parametrize("n, k", [(3, None), (12, None), (3, 2)])
def test_solve_inplace_in_compiled_code(n, k, rng):
    """One system in place (a 1-D ``b``: the straight-line code up to 8, else the elimination out of
    line; a 2-D ``b``: the elimination): ``b`` becomes ``solve``'s answer (bit for bit for a 1-D
    ``b``, the same straight-line code), and it is ``b`` that comes back."""
    a = rng.standard_normal((n, n)) + n * np.eye(n)
    b = rng.standard_normal(n) if k is None else rng.standard_normal((n, k))
    expect = user_solve(a, b)
    a2, b2 = a.copy(), b.copy()
    assert user_solve_inplace(a2, b2) is b2
    if k is None and n <= 8:
        np.testing.assert_array_equal(b2, expect)
    np.testing.assert_allclose(b2, np.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="solve_inplace"):
        user_solve_inplace(a.copy(), np.ones(n + 1) if k is None else np.ones((n + 1, k)))


@njit
def user_each_kernel_twice(a, b, x, m, c, r, y):
    """Every kernel form called at two sites of one function (as a user's function does)."""
    kernels.solve(a[0], b[0], x[0])
    kernels.solve(a[1], b[1], x[1])
    s = kernels.solve(a[2], b[2]) + kernels.solve(a[3], b[3])
    t = kernels.solve(a[0], a[1]) + kernels.solve(a[2], a[3])
    ok = kernels.try_solve(a[0], b[0], x[2]) and kernels.try_solve(a[1], b[1], x[3])
    strided = np.empty((a.shape[1], 2))
    ok2 = kernels.try_solve(a[2], b[2], strided[:, 0]) and kernels.try_solve(a[3], b[3], strided[:, 1])
    a0, b0, a1, b1 = a[0].copy(), b[0].copy(), a[1].copy(), b[1].copy()
    kernels.solve_inplace(a0, b0)
    kernels.solve_inplace(a1, b1)
    kernels.matmul(m[0], m[1], c[0])
    kernels.matmul(m[1], m[2], c[1])
    p = kernels.matmul(m[2], m[3]) + kernels.matmul(m[3], m[0])
    kernels.softmax(r[0], y[0])
    kernels.softmax(r[1], y[1])
    e = kernels.exp(r[2]) + kernels.exp(r[3]) + kernels.exp(1.0) + kernels.exp(2.0)
    z = kernels.logsumexp(r[0]) + kernels.logsumexp(r[1]) + kernels.log_softmax(r)[0, 0]
    return s, t, ok and ok2, b0, b1, p, e, z, strided


def test_two_calls_of_a_kernel_in_one_function_compile_cleanly(rng):
    """Numba inlines a kernel's overload into the caller at its IR level, and a function inlined so
    twice into one caller whose code defines a variable in more than one branch made Numba warn
    ("NumbaIRAssumptionWarning: variable ... is not in scope"), a failure under ``-W error`` (as
    this suite runs): two ``kernels.solve`` calls did. Each form here is called at two sites."""
    n = 3
    a = rng.standard_normal((4, n, n)) + n * np.eye(n)
    b, x = rng.standard_normal((4, n)), np.empty((4, n))
    m, c = rng.standard_normal((4, 4, 4)), np.empty((4, 4, 4))
    r, y = rng.standard_normal((4, 10)), np.empty((4, 10))
    s, t, ok, b0, b1, p, e, z, strided = user_each_kernel_twice(a, b, x, m, c, r, y)
    sol = np.linalg.solve(a, b[..., None])[..., 0]
    assert ok
    np.testing.assert_allclose(x, np.concatenate([sol[:2], sol[:2]]), rtol=1e-12)
    np.testing.assert_allclose(s, sol[2] + sol[3], rtol=1e-12)
    np.testing.assert_allclose(t, np.linalg.solve(a[0], a[1]) + np.linalg.solve(a[2], a[3]), rtol=1e-12)
    np.testing.assert_allclose([b0, b1], sol[:2], rtol=1e-12)
    np.testing.assert_allclose(strided.T, sol[2:], rtol=1e-12)
    np.testing.assert_allclose(c[:2], m[:2] @ m[1:3], rtol=1e-12)
    np.testing.assert_allclose(p, m[2] @ m[3] + m[3] @ m[0], rtol=1e-12)
    np.testing.assert_allclose(y[:2], sps.softmax(r[:2], axis=1), rtol=1e-12)
    np.testing.assert_allclose(e, np.exp(r[2]) + np.exp(r[3]) + np.exp(1.0) + np.exp(2.0), rtol=1e-12)
    expect = sps.logsumexp(r[0]) + sps.logsumexp(r[1]) + sps.log_softmax(r[0])[0]
    assert z == pytest.approx(expect, rel=1e-12)


def test_python_calls_take_byte_swapped_arrays_as_numpy_does(dtype, rng):
    """From Python, a byte-swapped float array (as read from a big-endian file) is the float array
    NumPy computes with: as an input it is converted, as an ``out`` written through a native copy.
    (Each was a TypeError "float32 or float64 arrays ..., not >f4".)"""

    def swapped(x):
        return x.astype(x.dtype.newbyteorder())

    a = (rng.standard_normal((6, 6)) + 6 * np.eye(6)).astype(dtype)
    b = rng.standard_normal((6, 2)).astype(dtype)
    lu, piv = sla.lu_factor(a)
    lu = lu.astype(dtype)
    calls = {
        "exp": (lambda x, y: kernels.exp(x), np.exp(a)),
        "softmax": (lambda x, y: kernels.softmax(x), sps.softmax(a, axis=-1)),
        "logsumexp": (lambda x, y: kernels.logsumexp(x), sps.logsumexp(a, axis=-1)),
        "matmul": (lambda x, y: kernels.matmul(x, y), a @ b),
        "gemm": (lambda x, y: kernels.gemm(x, y, np.zeros((6, 2), dtype)), a @ b),
        "solve": (lambda x, y: kernels.solve(x, y), np.linalg.solve(a, b)),
        "lu_factor": (lambda x, y: kernels.lu_factor(x)[0], lu),
        "lu_solve": (lambda x, y: kernels.lu_solve(lu, swapped(piv), y), sla.lu_solve((lu, piv), b)),
        "cosine_similarity": (lambda x, y: kernels.cosine_similarity(x, y.T), _cosine_reference(a, b.T)),
    }
    for name, (call, expected) in calls.items():
        for args in ((swapped(a), b), (a, swapped(b)), (swapped(a), swapped(b))):
            got = call(*args)
            np.testing.assert_allclose(got, expected, rtol=_tol(dtype), atol=_tol(dtype), err_msg=name)
    outs = {
        "exp": (lambda o: kernels.exp(a, o), np.exp(a)),
        "softmax": (lambda o: kernels.softmax(a, o), sps.softmax(a, axis=-1)),
        "matmul": (lambda o: kernels.matmul(a, a, o), a @ a),
        "gemm": (lambda o: kernels.gemm(a, a, o, 1.0, 0.5), a @ a + 0.5),
        "solve": (lambda o: kernels.solve(a, a, o), np.eye(6)),
        "cosine_similarity": (lambda o: kernels.cosine_similarity(a, a, o), _cosine_reference(a, a)),
        "attention_finish": (lambda o: kernels.attention_finish(np.full(6, 2, dtype), a, o), a / 2),
    }
    for name, (call, expected) in outs.items():
        out = swapped(np.ones((6, 6), dtype))
        assert call(out) is out, name
        np.testing.assert_allclose(out, expected, rtol=_tol(dtype), atol=_tol(dtype), err_msg=name)
    out = swapped(np.ones(6, dtype))
    assert kernels.try_solve(swapped(a), a[:, 0].copy(), out)
    np.testing.assert_allclose(out, np.eye(6)[0], atol=_tol(dtype))


def test_python_calls_run_one_compiled_form_per_dtype_whatever_the_layouts(monkeypatch, rng):
    """From Python, matmul, gemm and cosine_similarity hand their compiled form C-contiguous operands
    of one dtype, whatever the layouts and dtypes given (converted as np.matmul converts them, or
    exactly: integers and a float32 operand of a float64 gemm): each other layout or mix of dtypes
    compiled a form of its own, 2.2-7.6 s each on Zen 3. The answers stay NumPy's."""
    calls = []

    def spy(fn, *args):
        arrays = [x for x in args if isinstance(x, np.ndarray)]
        calls.append((fn.__name__, all(x.flags.c_contiguous for x in arrays), {x.dtype for x in arrays}))
        return real(fn, *args)

    real = kernels._call
    monkeypatch.setattr(kernels, "_call", spy)
    a, b = rng.standard_normal((5, 6)), rng.standard_normal((6, 4))
    tol = {"rtol": 1e-12, "atol": 1e-12}
    for x, y in [
        (np.asfortranarray(a), b),
        (a, b[:, ::-1].copy()[:, ::-1]),
        (np.repeat(a, 2, axis=1)[:, ::2], b.T.copy().T),
    ]:
        np.testing.assert_allclose(kernels.matmul(x, y), a @ b, **tol)
        strided = np.zeros((5, 8))
        kernels.matmul(x, y, strided[:, ::2])
        np.testing.assert_allclose(strided[:, ::2], a @ b, **tol)
        np.testing.assert_allclose(kernels.gemm(x, y, np.zeros((5, 4))), a @ b, **tol)
        np.testing.assert_allclose(kernels.cosine_similarity(x, y.T), _cosine_reference(a, b.T), **tol)
    ai = np.arange(30).reshape(5, 6) % 7 - 3
    f32 = b.astype(np.float32)
    np.testing.assert_allclose(kernels.matmul(ai, f32), ai @ f32, rtol=1e-6)  # np.matmul: float64
    into = kernels.matmul(ai, f32, np.zeros((5, 4), np.float32))  # computed in float64, then cast
    np.testing.assert_allclose(into, (ai @ f32).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(kernels.gemm(ai, f32, np.zeros((5, 4))), ai @ f32.astype(np.float64), **tol)
    assert {name for name, _, _ in calls} == {"_matmul2d", "_gemm", "_cosine"}
    assert all(contiguous and len(dtypes) == 1 for _, contiguous, dtypes in calls), calls


def test_python_calls_take_integers_as_numpy_does_and_refuse_other_dtypes():
    """From Python, integer (and boolean) arrays are promoted to float64 as NumPy's and SciPy's
    linear algebra promote them (an integer LU used to come back in integers, wrong); float16,
    complex and in-place integer arguments raise TypeError naming the kernel (matmul takes
    np.matmul's integers and complex, and refuses float16 the same way); a 1-D product raises
    ValueError; the log-sum-exp of an empty row is -inf (SciPy's), from Python and compiled code."""
    ai, bi = np.array([[3, 1], [1, 2]]), np.array([9, 8])
    lu, piv = kernels.lu_factor(ai)
    ref_lu, ref_piv = sla.lu_factor(ai)
    np.testing.assert_allclose(lu, ref_lu, rtol=1e-15)
    np.testing.assert_array_equal(piv, ref_piv)
    assert lu.dtype == np.float64
    np.testing.assert_allclose(kernels.lu_solve(lu, piv, bi), np.linalg.solve(ai, bi), rtol=1e-15)
    np.testing.assert_allclose(kernels.solve(ai, bi), np.linalg.solve(ai, bi), rtol=1e-15)
    cos = fastla.cosine_similarity(ai, ai)
    np.testing.assert_allclose(kernels.cosine_similarity(ai, ai), cos, rtol=1e-15)
    np.testing.assert_allclose(kernels.exp(bi), np.exp(bi), rtol=1e-15)
    assert kernels.logsumexp(bi) == pytest.approx(sps.logsumexp(bi), rel=1e-15)
    np.testing.assert_allclose(kernels.softmax(np.array([True, False])), sps.softmax([1.0, 0.0]), rtol=1e-15)
    for bad in (np.float16, np.complex128):
        with pytest.raises(TypeError, match=r"fastla\.kernels\.solve: float32 or float64"):
            kernels.solve(ai.astype(bad), bi)
        with pytest.raises(TypeError, match=r"fastla\.kernels\.lu_factor"):
            kernels.lu_factor(ai.astype(bad))
    with pytest.raises(TypeError, match="solve_inplace"):
        kernels.solve_inplace(ai.copy(), bi.copy())
    # matmul keeps np.matmul's dtypes from Python; gemm computes in its out's float dtype
    assert kernels.matmul(ai, ai).dtype == np.matmul(ai, ai).dtype
    np.testing.assert_array_equal(kernels.gemm(ai, ai, np.empty((2, 2))), ai @ ai)
    for bad in (np.float16, np.longdouble, object):
        with pytest.raises(TypeError, match=r"fastla\.kernels\.matmul: float32, float64, integer or complex"):
            kernels.matmul(ai.astype(bad), ai)
        with pytest.raises(TypeError, match=r"fastla\.kernels\.gemm: float32 or float64 arrays"):
            kernels.gemm(ai, ai.astype(bad), np.empty((2, 2)))
    with pytest.raises(TypeError, match=r"fastla\.kernels\.matmul: .*not float16"):
        kernels.matmul(ai, ai, np.empty((2, 2), np.float16))
    with pytest.raises(TypeError, match=r"fastla\.kernels\.gemm: out must be float32 or float64, not int64"):
        kernels.gemm(ai, ai, np.empty((2, 2), np.int64))
    with pytest.raises(ValueError, match="matmul: a and b must be 2-D"):
        kernels.matmul(np.ones(3), np.ones(3))
    assert kernels.logsumexp(np.empty(0)) == -np.inf
    np.testing.assert_array_equal(kernels.logsumexp(np.empty((3, 0))), [-np.inf] * 3)
    assert user_logsumexp(np.empty(0)) == -np.inf
    np.testing.assert_array_equal(user_logsumexp(np.empty((3, 0))), [-np.inf] * 3)


def test_a_python_callers_out_is_checked_before_a_kernel_writes_it(rng):
    """From Python every kernel's ``out=`` is a writeable array of the result's shape and dtype
    (``matmul``: NumPy's 'same_kind' cast; ``cosine_similarity``: any float), checked before any
    store: a read-only out is left alone (``matmul`` wrote it), an integer one raises TypeError
    (``matmul`` and ``lu_solve`` stored truncated values), a list TypeError, another shape
    ValueError; a strided out gets the answer (``solve``, ``lu_solve``, ``cosine_similarity`` and
    ``try_solve`` raised Numba typing errors), as in compiled code."""
    x = rng.standard_normal((4, 6))
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 6))
    sq = rng.standard_normal((6, 6)) + 6 * np.eye(6)
    rhs, vec = rng.standard_normal((6, 3)), rng.standard_normal(6)
    lu, piv = sla.lu_factor(sq)
    y = rng.standard_normal((6, 5))
    calls = {  # name -> (call with out, expected result)
        "exp": (lambda o: kernels.exp(x, o), np.exp(x)),
        "softmax": (lambda o: kernels.softmax(x, o), sps.softmax(x, axis=-1)),
        "log_softmax": (lambda o: kernels.log_softmax(x, o), sps.log_softmax(x, axis=-1)),
        "matmul": (lambda o: kernels.matmul(a, b, o), a @ b),
        "gemm": (lambda o: kernels.gemm(a, b, o), a @ b),
        "cosine_similarity": (lambda o: kernels.cosine_similarity(a, y, o), fastla.cosine_similarity(a, y)),
        "solve": (lambda o: kernels.solve(sq, rhs, o), np.linalg.solve(sq, rhs)),
        "lu_solve": (lambda o: kernels.lu_solve(lu, piv, rhs, o), np.linalg.solve(sq, rhs)),
        "try_solve": (lambda o: kernels.try_solve(sq, vec, o), np.linalg.solve(sq, vec)),
        "attention_finish": (lambda o: kernels.attention_finish(np.full(4, 2.0), x, o), x / 2),
    }
    for name, (call, expect) in calls.items():
        readonly = np.zeros(expect.shape)
        readonly.flags.writeable = False
        with pytest.raises(ValueError, match=f"kernels.{name}: output array is read-only"):
            call(readonly)
        assert not readonly.any()
        with pytest.raises(ValueError if name == "try_solve" else TypeError, match=f"kernels.{name}"):
            call(np.zeros(expect.shape, np.int64))
        with pytest.raises(ValueError if name == "try_solve" else TypeError, match=f"kernels.{name}"):
            call(expect.tolist())
        with pytest.raises(ValueError, match=r"fastla\.kernels"):  # the compiled form's shape error
            call(np.zeros((*expect.shape, 1)))
        strided = np.zeros((*expect.shape, 2))[..., 0]
        if name in ("exp", "softmax", "log_softmax", "gemm"):  # their documented C-contiguous out
            with pytest.raises(ValueError, match="C-contiguous"):
                call(strided)
            continue
        call(strided)
        np.testing.assert_allclose(strided, expect, rtol=1e-12, atol=1e-12)


def test_a_python_callers_state_arrays_are_checked_before_a_kernel_updates_them(rng):
    """The arrays ``attention_step`` and ``topk_push`` update in place, from Python: a read-only one
    raises ValueError and is left alone, an integer or non-array one TypeError, a ``q`` of another
    rank ValueError (each was a Numba typing error, or a silent store into integers); array-likes
    for the read-only operands work."""
    q, k, v = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    m, l, acc = np.full(4, -np.inf), np.zeros(4), np.zeros((4, 2))
    frozen = acc.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="attention_step: output array is read-only"):
        kernels.attention_step(q, k, v, 0.5, m, l, frozen)
    assert not frozen.any() and np.isneginf(m).all()
    with pytest.raises(TypeError, match="attention_step"):
        kernels.attention_step(q, k, v, 0.5, m, l, np.zeros((4, 2), np.int64))
    with pytest.raises(ValueError, match="attention_step"):
        kernels.attention_step(q[0], k, v, 0.5, m, l, acc)
    kernels.attention_step(q.tolist(), k, v, 0.5, m, l, acc)
    weights = sps.softmax(0.5 * q @ k.T, axis=1)
    np.testing.assert_allclose(kernels.attention_finish(l, acc), weights @ v, rtol=1e-12)
    scores, index = kernels.topk_init(3)
    with pytest.raises(TypeError, match="topk_push"):
        kernels.topk_push(np.zeros(3, np.int64), index, 0, 1.0, 5)
    with pytest.raises(TypeError, match="topk_push"):
        kernels.topk_push(scores.tolist(), index, 0, 1.0, 5)
    with pytest.raises(TypeError, match="topk_init: dtype must be float32 or float64"):
        kernels.topk_init(3, np.float16)


def test_an_empty_system_touches_no_memory():
    """n = 0: nothing to solve, and nothing read or written. The straight-line dispatch took n = 0
    for one of its n <= 8 and ran the 8x8 code on the empty arrays, storing 8 elements past their
    start (heap corruption, a crash at exit); here the empty views lie inside sentinel buffers,
    from Python and from compiled code, for solve, try_solve and solve_inplace."""

    def views():
        abuf, bbuf, xbuf = np.full(200, 7.0), np.full(40, 3.0), np.full(40, 5.0)
        return (abuf, bbuf, xbuf), (abuf[100:100].reshape(0, 0), bbuf[20:20], xbuf[20:20])

    calls = (
        lambda a, b, x: kernels.solve(a, b, x),
        lambda a, b, x: user_solve_into(a, b, x),
        lambda a, b, x: kernels.try_solve(a, b, x),
        lambda a, b, x: user_try_solve(a, b, x),
        lambda a, b, x: kernels.solve_inplace(a, b),
        lambda a, b, x: user_solve_inplace(a, b),
        lambda a, b, x: user_solve(a, b),
    )
    for call in calls:
        bufs, (a, b, x) = views()
        call(a, b, x)
        for buf, value in zip(bufs, (7.0, 3.0, 5.0), strict=True):
            assert (buf == value).all()


def test_strided_outs_in_compiled_code(rng):
    """A strided ``out`` of ``cosine_similarity`` in compiled code gets the matrix, computed
    contiguously and copied, and nothing beside it is written (it was a Numba typing error, deep in
    the GEMM's reshape); ``solve_inplace`` has no copy to solve in, and refuses a strided ``b``
    with its own message, from compiled code (a TypingError) and Python (ValueError)."""
    x, y = rng.standard_normal((5, 7)), rng.standard_normal((6, 7))
    big = np.full((9, 10), -7.0)
    got = user_cosine_into(x, y, big[2:7, 3:9])
    np.testing.assert_allclose(got, fastla.cosine_similarity(x, y), rtol=1e-12, atol=1e-13)
    rest = np.ones(big.shape, bool)
    rest[2:7, 3:9] = False
    assert (big[rest] == -7.0).all()
    with pytest.raises(ValueError, match="X \\(n, d\\)"):
        user_cosine_into(x, y, big[2:8, 3:9])
    a, b = rng.standard_normal((4, 4)) + 4 * np.eye(4), np.zeros((4, 4))
    refused = (ValueError, _jit.numba.core.errors.TypingError) if _jit.NUMBA_AVAILABLE else ValueError
    with pytest.raises(refused, match=r"solve_inplace: .*C-contiguous"):
        user_solve_inplace(a.copy(), b[:, ::2])
    with pytest.raises(ValueError, match=r"solve_inplace: .*C-contiguous"):
        kernels.solve_inplace(a.copy(), b[:, ::2])
    frozen = np.ones(4)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="solve_inplace: output array is read-only"):
        kernels.solve_inplace(a.copy(), frozen)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_no_store_outside_an_out(dtype, rng):
    """Every output lies inside a buffer of sentinels (the rows before and after it, C-contiguous as
    a user's own array is), over the shapes that end in partial vectors and partial register tiles:
    the masked tails of the small products, the GEMM's edge tiles, the exp and softmax remainders,
    the cosine tiles and the straight-line solves write their result and nothing past it."""
    sentinel = dtype(-7.25)

    def bordered(shape):
        big = np.full((shape[0] + 2, *shape[1:]), sentinel, dtype)
        return big, big[1:-1]

    def untouched(big):
        return (big[0] == sentinel).all() and (big[-1] == sentinel).all()

    for m, k, n in [(1, 1, 1), (3, 5, 7), (4, 4, 4), (5, 3, 9), (8, 8, 8), (7, 2, 17), (9, 9, 33)]:
        a, b = rng.standard_normal((2, m, k)).astype(dtype), rng.standard_normal((2, k, n)).astype(dtype)
        big, out = bordered((2, m, n))
        user_matmul_prange(a, b, out)
        assert untouched(big)
        np.testing.assert_allclose(out, a @ b, rtol=_tol(dtype) * 10, atol=_tol(dtype))
        big, out = bordered((m, n))
        user_gemm(a[0], b[0], out, dtype(1), dtype(0))
        assert untouched(big)
        np.testing.assert_allclose(out, a[0] @ b[0], rtol=_tol(dtype) * 10, atol=_tol(dtype))
        big, out = bordered((m, n))
        user_cosine_into(a[0], b[0].T.copy() if k == n else rng.standard_normal((n, k)).astype(dtype), out)
        assert untouched(big)
    for w in [*range(1, 18), 33]:
        x = (3 * rng.standard_normal((3, w))).astype(dtype)
        big, out = bordered((3, w))
        user_softmax_rows(x, out)
        assert untouched(big)
        np.testing.assert_allclose(out, sps.softmax(x, axis=-1), rtol=_tol(dtype) * 10, atol=_tol(dtype))
        big, out = bordered((w,))
        user_exp_into(x[0], out)
        assert untouched(big)
    for n in range(1, 10):
        a = (rng.standard_normal((n, n)) + n * np.eye(n)).astype(dtype)
        b = rng.standard_normal(n).astype(dtype)
        big, out = bordered((n,))
        user_try_solve(a, b, out)
        assert untouched(big)
        np.testing.assert_allclose(out, np.linalg.solve(a, b), rtol=_tol(dtype) * 100, atol=_tol(dtype))


def test_promotion_and_ranks_are_numpys_or_a_clean_error(rng):
    """A float32 operand with a boolean or small-integer one computes in float64, as NumPy's linalg
    and scikit-learn do (np.result_type would keep float32); ranks solve does not take raise
    NumPy's LinAlgError (``a`` below 2-D) or a ValueError naming the shapes, from Python and
    compiled code, never a Numba typing error, an IndexError or a reshape's message."""
    a32 = rng.standard_normal((3, 3)).astype(np.float32) + 3 * np.eye(3, dtype=np.float32)
    for other in (np.array([True, False, True]), np.array([1, 2, 3], np.int8)):
        x = kernels.solve(a32, other)
        assert x.dtype == np.linalg.solve(a32, other).dtype == np.float64
        np.testing.assert_allclose(x, np.linalg.solve(a32, other), rtol=1e-12)
        assert kernels.cosine_similarity(a32, other[None, :]).dtype == np.float64
    for a in (np.float64(2.0), np.ones(3)):
        with pytest.raises(np.linalg.LinAlgError, match="Array must be at least two-dimensional"):
            kernels.solve(a, np.ones(3))
    stack = rng.standard_normal((2, 3, 3)) + 3 * np.eye(3)
    for b in (np.ones(3), np.ones((3, 3)), np.ones((4, 3, 1)), np.float64(1.0)):
        with pytest.raises(ValueError, match=r"kernels\.solve: a must be"):
            kernels.solve(stack, b)
        if np.ndim(b):
            with pytest.raises(ValueError, match=r"kernels\.solve: a must be"):
                user_solve(stack, b)
    with pytest.raises(ValueError, match=r"kernels\.solve: a must be"):
        kernels.solve(np.ones((1, 2, 3, 3)), np.ones((1, 2, 3)))
    lu, piv = kernels.lu_factor(stack[0])
    for b in (np.float64(1.0), np.ones((3, 1, 1))):
        with pytest.raises(ValueError, match=r"kernels\.lu_solve: b must be"):
            kernels.lu_solve(lu, piv, b)


def test_errors_inside_compiled_code(rng):
    with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
        user_solve(np.zeros((3, 3)), np.ones(3))
    with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
        user_solve_inplace(np.ones((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="must be"):
        user_solve(np.eye(3), np.ones(4))
    # a matrix that is not square: NumPy's LinAlgError, on each path (one system, a stack, in place)
    for a, b in ((np.ones((3, 4)), np.ones(3)), (np.ones((2, 3, 4)), np.ones((2, 3)))):
        with pytest.raises(np.linalg.LinAlgError, match="must be square"):
            user_solve(a, b)
    with pytest.raises(np.linalg.LinAlgError, match="must be square"):
        user_solve_inplace(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="matmul"):
        user_matmul(np.ones((3, 4)), np.ones((3, 4)))


@njit(parallel=True)
def user_try_solve_prange(a, b, x, ok):
    for i in prange(a.shape[0]):
        ok[i] = kernels.try_solve(a[i], b[i], x[i])
    return ok


@pytest.mark.parametrize("n", [3, 12])
def test_try_solve_reports_singular_systems_inside_a_parallel_loop(n, rng):
    """try_solve's status survives a prange loop (an exception on a worker thread would not), and the
    loop stays parallel: a serialised one warns, and warnings are errors in this suite."""
    a = rng.standard_normal((6, n, n)) + n * np.eye(n)
    a[[1, 4]] = 0.0
    b = rng.standard_normal((6, n))
    x = np.zeros((6, n))
    ok = user_try_solve_prange(a, b, x, np.zeros(6, np.bool_))
    assert ok.tolist() == [True, False, True, True, False, True]
    for i in (0, 2, 3, 5):
        np.testing.assert_allclose(x[i], np.linalg.solve(a[i], b[i]), rtol=1e-10, atol=1e-12)
    assert kernels.try_solve(a[1], b[1], x[1]) is False


@njit
def user_solve_into_columns(a, b, xt, ok):
    """Solutions written into columns of ``xt`` (n, m): a strided ``out`` for each system."""
    for i in range(a.shape[0]):
        ok[i] = kernels.try_solve(a[i], b[i], xt[:, i])
        kernels.solve(a[i], b[i], xt[:, a.shape[0] + i])
    return ok


@pytest.mark.parametrize("n", [3, 12])
def test_solve_into_a_strided_out(n, rng):
    a = rng.standard_normal((4, n, n)) + n * np.eye(n)
    b = rng.standard_normal((4, n))
    xt = np.zeros((n, 8))
    ok = user_solve_into_columns(a, b, xt, np.zeros(4, np.bool_))
    assert ok.all()
    expect = np.linalg.solve(a, b[..., None])[..., 0].T
    np.testing.assert_allclose(xt[:, :4], expect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xt[:, 4:], expect, rtol=1e-10, atol=1e-12)


@njit
def user_solve_into(a, b, out):
    kernels.solve(a, b, out)


def test_solve_into_strided_2d_and_3d_outs(rng):
    """A strided ``out`` of each rank is written whole (solved contiguously, then copied); a wrong
    shape or rank of ``out`` raises the shape error inside compiled code too."""
    a = rng.standard_normal((3, 5, 5)) + 5 * np.eye(5)
    b = rng.standard_normal((3, 5, 2))
    out3 = np.zeros((2, 5, 3)).transpose(2, 1, 0)
    user_solve_into(a, b, out3)
    np.testing.assert_allclose(out3, np.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
    out2 = np.zeros((2, 5)).T
    user_solve_into(a[1], b[1], out2)
    np.testing.assert_allclose(out2, np.linalg.solve(a[1], b[1]), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="b, out"):
        user_solve_into(a[1], b[1], np.zeros((2, 6)).T)
    with pytest.raises(ValueError, match="b, out"):
        user_solve_into(a[1], b[1, :, 0].copy(), np.zeros((5, 1)))


def test_errors_from_python():
    with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
        kernels.solve(np.zeros((3, 3)), np.ones(3))
    with pytest.raises(np.linalg.LinAlgError, match="must be square"):  # as np.linalg.solve
        kernels.solve(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError):
        kernels.softmax(np.ones((2, 3, 4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lu(dtype, rng):
    a = rng.standard_normal((9, 9)).astype(dtype)
    b = rng.standard_normal(9).astype(dtype)
    lu, piv, x = user_lu(a, b)
    ref_lu, ref_piv = sla.lu_factor(a)
    np.testing.assert_array_equal(piv, ref_piv)
    np.testing.assert_allclose(lu, ref_lu, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-5)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-3 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (1, 4), (4, 1), (0, 3)])
def test_lu_factor_of_a_rectangular_matrix(shape, rng):
    """SciPy's getrf of an (m, n) matrix, from Python and from compiled code: min(m, n) pivots; a
    wide matrix's columns right of the square part hold U's rows solved against L."""
    a = rng.standard_normal(shape)
    ref_lu, ref_piv = sla.lu_factor(a)
    for lu, piv in (kernels.lu_factor(a), user_lu_factor(a)):
        assert lu.shape == shape and piv.shape == (min(shape),) and piv.dtype == np.int32
        np.testing.assert_array_equal(piv, ref_piv)
        np.testing.assert_allclose(lu, ref_lu, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"2-D \(m, n\)"):
        kernels.lu_factor(np.ones(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lu_solve_into_every_out(dtype, rng):
    """One right-hand side into a C-contiguous ``out`` (its own kernel: no reshape, ``piv`` as
    given), into a strided one, and several right-hand sides: the same solution as SciPy's, bit for
    bit between the 1-D forms; a wrong length raises inside compiled code."""
    a = rng.standard_normal((7, 7)).astype(dtype)
    lu, piv = sla.lu_factor(a)
    b = rng.standard_normal(7).astype(dtype)
    b_before = b.copy()
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    into = np.empty(7, dtype)
    assert user_lu_solve_into(lu, piv, b, into) is into
    np.testing.assert_allclose(into, sla.lu_solve((lu, piv), b), rtol=rtol)
    strided = np.full(14, 7, dtype)
    user_lu_solve_into(lu, piv, b, strided[::2])
    np.testing.assert_array_equal(strided[::2], into)
    assert (strided[1::2] == 7).all()
    b2 = rng.standard_normal((7, 3)).astype(dtype)
    out2 = user_lu_solve_into(lu, piv, b2, np.empty((7, 3), dtype))
    np.testing.assert_allclose(out2, sla.lu_solve((lu, piv), b2), rtol=rtol)
    np.testing.assert_array_equal(b, b_before)  # b untouched
    py = np.full(14, 7, dtype)
    kernels.lu_solve(lu, piv, b, py[::2])  # from Python too
    np.testing.assert_array_equal(py, strided)
    bad = ((b[:6], np.empty(6, dtype)), (b, np.empty(8, dtype)), (b, np.empty((7, 1), dtype)))
    for bad_b, bad_out in bad:
        with pytest.raises(ValueError, match="lu_solve"):
            user_lu_solve_into(lu, piv, bad_b, bad_out)
        with pytest.raises(ValueError, match="lu_solve"):
            kernels.lu_solve(lu, piv, bad_b, bad_out)
    # a pivot outside the matrix (or a piv of another length) is refused, not followed past b
    for bad_piv in (np.r_[piv[:6], 7], np.r_[-1, piv[1:]], piv[:6], np.r_[piv, 0]):
        for b_any, out_any in ((b, np.empty(7, dtype)), (b2, np.empty((7, 3), dtype))):
            with pytest.raises(ValueError, match="piv"):
                user_lu_solve_into(lu, bad_piv.astype(piv.dtype), b_any, out_any)
            with pytest.raises(ValueError, match="piv"):
                kernels.lu_solve(lu, bad_piv.astype(piv.dtype), b_any, out_any)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosine(dtype, rng):
    x = rng.standard_normal((30, 40)).astype(dtype)
    y = rng.standard_normal((25, 40)).astype(dtype)
    x[3] *= np.finfo(dtype).smallest_normal / 4  # a subnormal-scale row: exact as the public one
    x[5] = 0
    x[10] *= np.finfo(dtype).smallest_normal / 64  # a norm whose inverse overflows unless rescaled
    big, tiny = np.finfo(dtype).max ** 0.75, np.finfo(dtype).smallest_normal ** 0.75
    x[6] *= big  # products of two such rows overflow, or underflow, unless the rows are rescaled
    y[7] *= big
    x[8] *= tiny
    y[9] *= tiny
    got = user_cosine(x, y)
    assert np.isfinite(got).all() and np.all(got[[3, 6, 8, 10]] != 0)
    np.testing.assert_allclose(
        got, fastla.cosine_similarity(x, y), rtol=1e-4, atol=1e-5 if dtype == np.float32 else 1e-12
    )
    assert np.all(got[5] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_accumulator_matches_cosine_topk_rules(dtype, rng):
    values = rng.standard_normal(300).astype(dtype)
    values[[10, 40]] = values.max() + 1  # an exact tie: the lower index first
    values[7] = np.nan  # NaN ranks last
    scores, index = user_topk(values, 5)
    assert scores.dtype == dtype
    order = sorted(
        range(300), key=lambda j: (np.isnan(values[j]), -values[j] if values[j] == values[j] else 0, j)
    )
    assert index.tolist() == order[:5]
    np.testing.assert_array_equal(scores, values[order[:5]])
    s, i = kernels.topk_init(3)
    count = 0
    for j, v in enumerate([np.nan, 1.0, 2.0]):
        count = kernels.topk_push(s, i, count, v, j)
    assert i.tolist() == [2, 1, 0] and count == 3
    # an index shorter than the scores (the insertion wrote past it) or a negative count is refused
    for bad_i, bad_count in ((i[:2], 2), (i, -1)):
        with pytest.raises(ValueError, match="topk_push"):
            user_push(s, bad_i, bad_count, 5.0, 9)
        with pytest.raises(ValueError, match="topk_push"):
            kernels.topk_push(s, bad_i, bad_count, 5.0, 9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_step_equals_the_public_function(dtype, rng):
    q = rng.standard_normal((20, 8)).astype(dtype)
    k = rng.standard_normal((45, 8)).astype(dtype)
    v = rng.standard_normal((45, 6)).astype(dtype)
    got = user_attention(q, k, v, 16, 1 / np.sqrt(8))
    ref = fastla.scaled_dot_product_attention(q, k, v, backend="numpy")
    np.testing.assert_allclose(got, ref, rtol=_tol(dtype) * 10, atol=_tol(dtype) * 10)
    # the running statistics and the output must fit the queries (they were written past their end)
    m, l, acc = np.full(20, -np.inf, dtype), np.zeros(20, dtype), np.zeros((20, 6), dtype)
    for bad in ((m[:5], l), (m, l[:5])):
        with pytest.raises(ValueError, match="attention_step"):
            user_attention_step(q, k, v, *bad, acc)
        with pytest.raises(ValueError, match="attention_step"):
            kernels.attention_step(q, k, v, 0.5, *bad, acc)
    for bad_l, bad_out in ((l[:5], np.empty((20, 6), dtype)), (l, np.empty((5, 6), dtype))):
        with pytest.raises(ValueError, match="attention_finish"):
            user_attention_finish(bad_l, acc, bad_out)
        with pytest.raises(ValueError, match="attention_finish"):
            kernels.attention_finish(bad_l, acc, bad_out)


@njit(parallel=True)
def user_every_kernel_prange(x, a, b, q, k, v, out):
    """Each kernel once per item of a parallel loop; results into the item's slots of ``out``."""
    e, ls, lse, g, lux, cos, tk_s, tk_i, att = out
    for i in prange(x.shape[0]):
        e[i] = kernels.exp(x[i])
        kernels.log_softmax(x[i], ls[i])
        lse[i] = kernels.logsumexp(x[i])
        kernels.gemm(a[i], b[i], g[i])
        lu, piv = kernels.lu_factor(a[i])
        lux[i] = kernels.lu_solve(lu, piv, b[i])
        kernels.cosine_similarity(a[i], b[i], cos[i])
        scores, index = kernels.topk_init(tk_s.shape[1])  # float64 by default
        count = 0
        for j in range(x.shape[1]):
            count = kernels.topk_push(scores, index, count, x[i, j], j)
        tk_s[i] = scores
        tk_i[i] = index
        m = np.full(q.shape[1], -np.inf, q.dtype)
        l = np.zeros(q.shape[1], q.dtype)
        acc = np.zeros((q.shape[1], v.shape[2]), q.dtype)
        kernels.attention_step(q[i], k[i], v[i], q.dtype.type(0.5), m, l, acc)
        kernels.attention_finish(l, acc, att[i])


def test_every_kernel_inside_a_parallel_loop_matches_the_public_function(rng):
    """In float64 only: compiling this loop takes 40 s per dtype, and each kernel's float32 form has
    its own test above (most of them inside a prange loop too)."""
    dtype = np.float64
    items, n = 5, 6
    x = (rng.standard_normal((items, 40)) * 3).astype(dtype)
    a = (rng.standard_normal((items, n, n)) + n * np.eye(n)).astype(dtype)
    b = rng.standard_normal((items, n, n)).astype(dtype)
    q = rng.standard_normal((items, 7, 4)).astype(dtype)
    k = rng.standard_normal((items, 9, 4)).astype(dtype)
    v = rng.standard_normal((items, 9, 3)).astype(dtype)
    out = tuple(
        np.empty(shape, dt)
        for shape, dt in [
            (x.shape, dtype),
            (x.shape, dtype),
            ((items,), dtype),
            (a.shape, dtype),
            (a.shape, dtype),
            (a.shape, dtype),
            ((items, 4), dtype),
            ((items, 4), np.int64),
            ((items, 7, 3), dtype),
        ]
    )
    user_every_kernel_prange(x, a, b, q, k, v, out)
    e, ls, lse, g, lux, cos, tk_s, tk_i, att = out
    tol = {"rtol": _tol(dtype) * 10, "atol": _tol(dtype) * 10}
    np.testing.assert_allclose(e, np.exp(x.astype(np.float64)), rtol=4 * eps(dtype))
    np.testing.assert_allclose(ls, fastla.log_softmax(x, backend="numba"), **tol)
    np.testing.assert_allclose(lse, sps.logsumexp(x.astype(np.float64), axis=-1), **tol)
    np.testing.assert_allclose(g, fastla.matmul(a, b), **tol)
    np.testing.assert_allclose(lux, fastla.solve(a, b), **tol)
    for i in range(items):
        np.testing.assert_allclose(cos[i], fastla.cosine_similarity(a[i], b[i]), **tol)
    order = np.argsort(-x, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(tk_i, order)
    np.testing.assert_array_equal(tk_s, np.take_along_axis(x, order, axis=1))
    np.testing.assert_allclose(att, fastla.scaled_dot_product_attention(q, k, v, scale=0.5), **tol)


def test_kernels_are_serial():
    """No function of fastla.kernels may start a parallel region (they run inside users' prange):
    its code uses no prange and compiles nothing with parallel=True."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(kernels))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    keywords = [k for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords]
    assert "prange" not in names | attrs
    assert not any(k.arg == "parallel" for k in keywords)


# --------------------------------------------------------------------------- calls out of line


@njit
def _user_gemm_cosine_lu(a, b, c):
    kernels.gemm(a, b, c)
    lu, piv = kernels.lu_factor(a[:, : a.shape[0]].copy())
    return kernels.cosine_similarity(a, b.T), lu, piv


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="inspects the compiled code")
def test_big_kernels_are_called_out_of_line_not_compiled_into_the_user_function(rng):
    """The packed GEMM, the LU panel and cosine are called through registered symbols
    (``_intrinsics.call_out_of_line``): the user's function holds calls, not a copy of them (linked
    in, they were optimised and code-generated again in every user function: 1.3-1.8 s each)."""
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 5))
    c = np.empty((6, 5))
    cos, lu, piv = _user_gemm_cosine_lu(a, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cos, fastla.cosine_similarity(a, b.T), rtol=1e-12, atol=1e-12)
    lu_ref, piv_ref = sla.lu_factor(a)
    np.testing.assert_allclose(lu, lu_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(piv, piv_ref)
    (ir,) = _user_gemm_cosine_lu.inspect_llvm().values()
    declared = {line.split("@", 1)[1].split("(")[0] for line in ir.splitlines() if line.startswith("declare")}
    assert sum(name.strip('"').startswith("fastla.out_of_line.") for name in declared) == 3, sorted(declared)
    for piece in ("gemm_into", "a_block", "pack_b_panel", "_panel", "_inv_norms"):
        assert piece not in ir, f"{piece} compiled into the user's function"


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="inspects the compiled code")
def test_per_item_kernels_are_compiled_once_and_inlined_by_llvm(rng):
    """``kernels.matmul``'s product, the one-system solve with ``b`` (n, k) and ``topk_push`` are
    compiled on their own, once per signature (fastla's cache keeps them), and LLVM inlines them
    into the user's function: its optimised code calls none of them. Inlined at Numba's IR level
    instead, they were typed again in every user function (one calling ``kernels.matmul`` took
    3.3-3.9 s to compile, 1.2-1.4 s now), and a push kept its arrays' reference counts inside the
    user's loop (25 ns, 1-1.7 now)."""
    from numba import typeof

    a = rng.standard_normal((3, 3)) + 3 * np.eye(3)
    b = rng.standard_normal((3, 2))
    values = rng.standard_normal(50)
    np.testing.assert_allclose(user_matmul(a, a), a @ a, rtol=1e-12)
    np.testing.assert_allclose(user_solve(a, b), np.linalg.solve(a, b), rtol=1e-10)
    assert user_topk(values, 3)[1].tolist() == np.argsort(-values)[:3].tolist()
    for user, kernel, only_this_call in (
        (user_matmul, kernels._matmul2d, False),
        (user_solve, kernels._solve_mat_info, True),  # its other signatures take other paths
        (user_topk, kernels._topk_push, False),
    ):
        name = kernel.py_func.__name__
        own = {id(kernel.overloads[sig].library) for sig in kernel.signatures}
        this_call = (typeof(a), typeof(b))
        sigs = [sig for sig in user.signatures if not only_this_call or sig == this_call]
        assert sigs
        for sig in sigs:
            library = user.overloads[sig].library
            linked = [lib for lib in library._linking_libraries if id(lib) in own]
            assert linked, f"{name} was typed into {user.__name__}, not compiled once and linked"
            final = library.get_llvm_str()
            calls = [line for line in final.splitlines() if " call " in line and name in line]
            assert not calls, f"{user.__name__} calls {name} instead of inlining it: {calls[:1]}"


USER_MODULE = """
import numpy as np
from numba import njit, prange
from fastla import kernels


@njit(cache=True, parallel=True)
def user_parallel(A, B, C):
    for i in prange(A.shape[0]):  # the call sits in the loop body's own library
        kernels.gemm(A[i], B[i], C[i])
    return C

@njit(cache=True)
def user(a, b, c):
    kernels.gemm(a, b, c)
    try:
        kernels.gemm(a, b, np.empty((1, 1)))
    except Exception:  # Numba matches no narrower class
        return c, True
    return c, False
"""


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="Numba's cache")
def test_a_cached_user_function_finds_the_out_of_line_kernels_in_a_new_process(tmp_path):
    """A user's ``cache=True`` function calling a kernel out of line, loaded from Numba's cache in a
    fresh process (where the symbol is not yet registered: its ``reload_init`` hook registers it
    before the code loads), runs the kernel and gets its exception; also from a ``prange`` body, whose
    library's hook the function inherits."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "user_gemm.py").write_text(USER_MODULE)
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import numpy as np
        import user_gemm
        a, b = np.arange(12.0).reshape(3, 4), np.arange(8.0).reshape(4, 2)
        c, raised = user_gemm.user(a, b, np.empty((3, 2)))
        assert np.allclose(c, a @ b) and raised
        A, B = np.arange(24.0).reshape(2, 3, 4), np.arange(16.0).reshape(2, 4, 2)
        assert np.allclose(user_gemm.user_parallel(A, B, np.empty((2, 3, 2))), A @ B)
        hits = user_gemm.user.stats.cache_hits, user_gemm.user_parallel.stats.cache_hits
        print(sum(sum(h.values()) for h in hits))
        """
    )
    hits = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        hits.append(int(proc.stdout.split()[-1]))
    assert hits == [0, 2]


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="compiled code only")
def test_a_cached_caller_of_another_fastla_version_fails_loudly():
    """The reload hook of a cached caller refuses a symbol this fastla does not define (a kernel
    compiled to another signature by another version) with an ImportError saying what to do,
    instead of letting LLVM load code that calls an undefined symbol."""
    import numba

    from fastla import _intrinsics

    f64 = numba.typeof(np.empty((2, 2)))
    args = (f64, f64, f64, numba.float64, numba.float64)
    symbol, _ = _intrinsics.out_of_line_symbol("fastla.kernels", "_gemm", args)
    _intrinsics._reregister("fastla.kernels", "_gemm", args, symbol)  # this version's: accepted
    with pytest.raises(ImportError, match="another fastla version"):
        _intrinsics._reregister("fastla.kernels", "_gemm", args, symbol + "0")


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="Numba's cache")
def test_a_kernel_linking_cached_out_of_line_callers_keeps_their_reload_hooks(tmp_path):
    """A fastla kernel compiled in a process that loaded its callees from the cache (here the serial
    GEMM of ``kernels.gemm``, linking the GEMM's task kernels, which call the packing out of line)
    must carry those callees' reload hooks into its own cache entry: loaded in a new process by a
    freshly compiled user function, it registers the symbols its linked code calls (without them
    LLVM aborts the process: "Symbol not found")."""
    import os
    import subprocess
    import sys
    import textwrap

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    steps = [
        "import numpy as np, fastla as fl\n"
        "a = np.random.rand(80, 90)\n"
        "assert np.allclose(fl.matmul(a, a.T, backend='numba'), a @ a.T)\n",  # caches the task kernels
    ]
    for name in ("first_user", "second_user"):  # the second compiles anew and loads kernels.gemm's GEMM
        (tmp_path / f"{name}.py").write_text(USER_MODULE)
        steps.append(
            textwrap.dedent(
                f"""
                import sys
                sys.path.insert(0, {str(tmp_path)!r})
                import numpy as np
                import {name} as user
                a, b = np.arange(12.0).reshape(3, 4), np.arange(8.0).reshape(4, 2)
                c, raised = user.user(a, b, np.empty((3, 2)))
                assert np.allclose(c, a @ b) and raised
                """
            )
        )
    for code in steps:
        run = [sys.executable, "-c", code]
        proc = subprocess.run(run, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
