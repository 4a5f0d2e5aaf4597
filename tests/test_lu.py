"""lu_factor / lu_solve / solve: every impl against SciPy/NumPy, backward errors, errors."""

import os
import warnings

import numpy as np
import pytest
import scipy
import scipy.linalg as sla

import fastla
from fastla import _host, _intrinsics, _jit
from fastla import _lane_solver as ls
from fastla import lu as lu_module
from tests.helpers import ODD_SIZES, eps, impl_names, variant


def _unpack(lu, piv):
    n = lu.shape[0]
    L = np.tril(lu, -1) + np.eye(n)
    U = np.triu(lu)
    perm = np.arange(n)
    for i, p in enumerate(piv):
        perm[[i, p]] = perm[[p, i]]
    return L, U, perm


def _with_condition(n, cond, rng, dtype=np.float64):
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.logspace(0, -np.log10(cond), n)
    return ((u * s) @ v.T).astype(dtype)


def _backward_error(a, x, b):
    a, x, b = (np.asarray(t, np.float64) for t in (a, x, b))
    return np.linalg.norm(a @ x - b) / (np.linalg.norm(a, 2) * np.linalg.norm(x) + np.linalg.norm(b))


@pytest.mark.parametrize("n", (0, *ODD_SIZES))
def test_lu_factor_reconstructs(n, dtype, rng):
    a = rng.standard_normal((n, n)).astype(dtype)
    for name in impl_names("lu_factor", n):
        lu, piv = fastla.lu_factor(a, backend=name)
        assert lu.dtype == dtype and piv.dtype == np.int32 and piv.shape == (n,)
        L, U, perm = _unpack(lu.astype(np.float64), piv)
        err = np.abs(L @ U - a[perm]).max() if n else 0.0
        assert err <= 20 * n * eps(dtype) * max(1.0, np.abs(a).max(initial=0.0)), (name, err)
        if n and dtype == np.float64:
            np.testing.assert_array_equal(piv, sla.lu_factor(a)[1])  # same pivots as LAPACK


@pytest.mark.parametrize("shape", [(1, 4), (4, 1), (3, 5), (5, 3), (33, 7), (7, 33), (150, 90), (90, 150)])
def test_lu_factor_of_rectangular_matrices(shape, dtype, rng):
    """LAPACK's getrf of an (m, n) matrix, as SciPy factors it, in every impl: min(m, n) pivots,
    P A = L U with L (m, k) unit lower trapezoidal and U (k, n) upper trapezoidal; a min(m, n) of
    90 takes the blocked path (panels, U12 solves, GEMM updates of the rows below, the last panel of
    a wide matrix with none)."""
    m, n = shape
    k = min(m, n)
    a = rng.standard_normal(shape).astype(dtype)
    for name in impl_names("lu_factor", max(shape)):
        lu, piv = fastla.lu_factor(a, backend=name)
        assert lu.shape == shape and lu.dtype == dtype and piv.shape == (k,) and piv.dtype == np.int32, name
        lu64 = lu.astype(np.float64)
        L = np.tril(lu64, -1)[:, :k] + np.eye(m, k)
        U = np.triu(lu64)[:k]
        perm = np.arange(m)
        for i, p in enumerate(piv):
            perm[[i, p]] = perm[[p, i]]
        err = np.abs(L @ U - a[perm]).max()
        assert err <= 20 * max(shape) * eps(dtype) * np.abs(a).max(), (name, err)
        if dtype == np.float64:
            np.testing.assert_array_equal(piv, sla.lu_factor(a)[1])  # same pivots as LAPACK


@pytest.mark.parametrize("name", impl_names("lu_factor"))
def test_lu_factor_of_a_rectangular_stack_warns_as_scipy(name, rng):
    """A stack of rectangular matrices: SciPy's factors matrix by matrix, and one warning naming the
    first zero pivot (a zero column inside the square part)."""
    a = rng.standard_normal((2, 4, 6))
    a[1, :, 2] = 0
    with pytest.warns(fastla.LinAlgWarning, match="Diagonal number 3 is exactly zero"):
        lu, piv = fastla.lu_factor(a, backend=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = [sla.lu_factor(x) for x in a]
    np.testing.assert_allclose(lu, np.array([r[0] for r in ref]), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(piv, np.array([r[1] for r in ref]))


@pytest.mark.slow
@pytest.mark.parametrize("n", [200, 333])
def test_blocked_lu_large(n, rng):
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, 3))
    lu, piv = fastla.lu_factor(a, backend="numba")
    lu_ref, piv_ref = sla.lu_factor(a)
    np.testing.assert_array_equal(piv, piv_ref)
    np.testing.assert_allclose(lu, lu_ref, atol=1e-10 * n)
    x = fastla.lu_solve((lu, piv), b, backend="numba")
    assert _backward_error(a, x, b) <= 10 * n * eps(np.float64)


@_jit.jit
def _panel_both_ways(a, k0, k1, piv_rows, piv_cols, scratch):
    """The panel k0:k1 of ``a`` factored by the row form in ``a`` and by the transposed form in a
    copy; returns the copy and both infos."""
    b = a.copy()
    info_rows = lu_module._panel_rows(a, k0, k1, piv_rows, 0)
    status = np.zeros(1, np.int64)
    lu_module._panel_columns(b, k0, k1, piv_cols, status, scratch)
    return b, info_rows, status[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "rows,w,k0,extra",
    [(24, 24, 0, 0), (27, 27, 0, 5), (100, 32, 0, 40), (203, 64, 7, 30), (90, 26, 64, 0), (61, 30, 3, 9)],
)
@pytest.mark.parametrize("kind", ["normal", "ties", "zero column", "nan"])
def test_transposed_panel_factors_as_the_row_panel_bit_for_bit(rows, w, k0, extra, kind, dtype, rng):
    """The blocked LU's wide panels (:func:`fastla.lu._panel_columns`: a transposed copy, four steps'
    updates of the later columns at once, the interchanges outside the panel after it) give the
    row-by-row form's factors, pivots and info bit for bit: whole blocks and the single steps after
    them (w = 26, 27, 30), fewer than eight rows left over by the transposes (203, 61), a panel inside
    a larger matrix (k0 > 0, columns left and right of it interchanged), tied magnitudes (the first
    one wins, across the pivot search's four interleaved maxima), an exactly zero column (info, no
    interchange) and a NaN (never the pivot)."""
    m, n = k0 + rows, k0 + w + extra
    a = rng.standard_normal((m, n)).astype(dtype)
    if kind == "ties":  # small integers: most columns hold several entries of the largest magnitude
        a = rng.integers(-3, 4, (m, n)).astype(dtype)
    elif kind == "zero column":
        a[:, k0 + 5] = 0
    elif kind == "nan":
        a[k0 + 9, k0 + 2] = np.nan
    k, first = min(m, n), np.abs(a[k0:, k0])
    piv_rows, piv_cols = np.zeros(k, np.int32), np.zeros(k, np.int32)
    scratch = np.full((w, rows + 3), np.nan, dtype)  # wider rows than needed: t's row stride
    b, info_rows, info_cols = _panel_both_ways(a, k0, k0 + w, piv_rows, piv_cols, scratch)
    np.testing.assert_array_equal(piv_cols[k0 : k0 + w], piv_rows[k0 : k0 + w])
    assert info_cols == info_rows
    assert info_rows == (k0 + 6 if kind == "zero column" else 0)
    np.testing.assert_array_equal(b, a)  # NaNs compare equal here
    if kind == "ties":  # the first column's largest magnitude is tied, and the first of them wins
        assert np.count_nonzero(first == first.max()) > 1
        assert piv_cols[k0] == k0 + np.argmax(first)


@pytest.mark.parametrize("cond", [1e2, 1e6, 1e10])
def test_backward_error_with_condition(cond, rng):
    n = 70
    a = _with_condition(n, cond, rng)
    b = rng.standard_normal(n)
    for name in impl_names("solve", n):
        x = fastla.solve(a, b, backend=name)
        assert _backward_error(a, x, b) <= 10 * n * eps(np.float64), name
        xs = fastla.lu_solve(fastla.lu_factor(a, backend=name), b, backend=name)
        assert _backward_error(a, xs, b) <= 10 * n * eps(np.float64), name


@pytest.mark.parametrize("name", impl_names("solve"))
def test_hilbert_like_numpy(name):
    n = 8
    h = 1.0 / (np.arange(n)[:, None] + np.arange(n) + 1)
    b = np.ones(n)
    ref = np.linalg.solve(h, b)
    x = fastla.solve(h, b, backend=name)
    # cond(H8) ~ 1.5e10: agree with LAPACK to cond * eps
    np.testing.assert_allclose(x, ref, rtol=np.linalg.cond(h) * eps(np.float64) * 10)


@pytest.mark.parametrize("trans", [0, 1, 2])
@pytest.mark.parametrize("bshape", [(9,), (9, 4)])
def test_lu_solve_trans(trans, bshape, dtype, rng):
    a = (rng.standard_normal((9, 9)) + 3 * np.eye(9)).astype(dtype)
    b = rng.standard_normal(bshape).astype(dtype)
    lu_piv = sla.lu_factor(a)
    expected = sla.lu_solve(lu_piv, b, trans=trans)
    for name in impl_names("lu_solve", 9):
        x = fastla.lu_solve(lu_piv, b, trans=trans, backend=name)
        assert x.shape == b.shape and x.dtype == dtype
        np.testing.assert_allclose(x, expected, rtol=1e-4 if dtype == np.float32 else 1e-11, atol=1e-5)


@pytest.mark.parametrize("trans", [0, 1, 2])
def test_lu_solve_complex_factors_keep_the_conjugate_transpose(trans, rng):
    """Complex factors go to SciPy, and trans=2 there is a^H x = b, not a^T x = b (2 is 1 only for
    real factors)."""
    a = rng.standard_normal((5, 5)) + 1j * rng.standard_normal((5, 5)) + 3 * np.eye(5)
    b = rng.standard_normal(5) + 1j * rng.standard_normal(5)
    lu_piv = sla.lu_factor(a)
    op = {0: a, 1: a.T, 2: a.conj().T}[trans]
    for name in ("auto", "numpy"):
        x = fastla.lu_solve(lu_piv, b, trans=trans, backend=name)
        np.testing.assert_allclose(op @ x, b, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(x, sla.lu_solve(lu_piv, b, trans=trans), rtol=1e-12)


def test_stacked_factor_and_solve(rng):
    a = rng.standard_normal((3, 2, 6, 6)) + 4 * np.eye(6)
    b = rng.standard_normal((3, 2, 6, 1))
    for name in impl_names("lu_factor", 6):
        lu, piv = fastla.lu_factor(a, backend=name)
        assert lu.shape == a.shape and piv.shape == (3, 2, 6)
        x = fastla.lu_solve((lu, piv), b, backend=name)
        assert x.shape == b.shape
        np.testing.assert_allclose(a @ x, b, atol=1e-10)


def _batched_reference(lu, piv, b):
    """SciPy >= 1.15's batching of lu_solve, spelled out: b a vector only when 1-D, leading
    dimensions broadcast, one SciPy solve per matrix (any SciPy version)."""
    n, core = lu.shape[-1], 1 if b.ndim == 1 else 2
    batch = np.broadcast_shapes(lu.shape[:-2], b.shape[: b.ndim - core])
    bb = np.broadcast_to(b, batch + b.shape[b.ndim - core :])
    lus = np.broadcast_to(lu, (*batch, n, n)).reshape(-1, n, n)
    pivs = np.broadcast_to(piv, (*batch, n)).reshape(-1, n)
    rhs = bb.reshape(len(lus), *bb.shape[len(batch) :])  # not -1: b may be empty
    return np.array([sla.lu_solve((m, p), r) for m, p, r in zip(lus, pivs, rhs, strict=True)]).reshape(
        bb.shape
    )


@pytest.mark.parametrize(
    "sa, sb",
    [
        ((4, 4), (2, 4, 1)),  # one factorisation, a stack of right-hand sides
        ((4, 4), (3, 2, 4, 2)),
        ((2, 4, 4), (4,)),  # a stack of factorisations, one right-hand side
        ((2, 4, 4), (4, 3)),
        ((2, 4, 4), (3, 1, 4, 2)),  # both broadcast
        ((4, 4, 4), (4, 4)),  # b 2-D is one (n, k) matrix, also where it could read as 4 vectors
        ((2, 4, 4), (4, 0)),  # no right-hand side, broadcast over the stack
    ],
)
def test_lu_solve_batches_as_scipy(sa, sb, rng):
    a = rng.standard_normal(sa) + 4 * np.eye(sa[-1])
    b = rng.standard_normal(sb)
    lu, piv = fastla.lu_factor(a)
    expected = _batched_reference(lu, piv, b)
    keep = b.copy()
    for name in impl_names("lu_solve"):
        x = fastla.lu_solve((lu, piv), b, backend=name)
        assert x.shape == expected.shape, name
        np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12)
        assert not np.shares_memory(x, b)
    np.testing.assert_array_equal(b, keep)
    if tuple(int(v) for v in scipy.__version__.split(".")[:2]) >= (1, 15):  # SciPy batches itself
        np.testing.assert_allclose(sla.lu_solve((lu, piv), b), expected, rtol=1e-12)
    stack = fastla.lu_factor(rng.standard_normal((2, 5, 5)) + 5 * np.eye(5))
    with pytest.raises(ValueError, match="incompatible"):  # a stack of vectors is (..., n, 1)
        fastla.lu_solve(stack, rng.standard_normal((2, 5)))


@pytest.mark.parametrize("name", impl_names("lu_solve"))
def test_lu_solve_refuses_pivots_outside_the_matrix(name, rng):
    """A row index outside [0, n) in piv (negative, n or more; any integer dtype, a stack) is a
    ValueError: LAPACK's getrs, under SciPy's lu_solve, would swap rows outside b."""
    lu, piv = fastla.lu_factor(rng.standard_normal((5, 5)) + 5 * np.eye(5))
    b = rng.standard_normal(5)
    for bad in (np.r_[piv[:4], 5], np.r_[-1, piv[1:]], np.r_[piv[:4], 2**31 - 1]):
        for dt in (np.int32, np.int64):
            with pytest.raises(ValueError, match="piv"):
                fastla.lu_solve((lu, bad.astype(dt)), b, backend=name)
    stack = np.stack([piv, np.r_[piv[:4], 9]])
    with pytest.raises(ValueError, match="piv"):
        fastla.lu_solve((np.stack([lu, lu]), stack.astype(np.int32)), b, backend=name)
    np.testing.assert_allclose(  # unsigned pivots in range still work
        fastla.lu_solve((lu, piv.astype(np.uint8)), b, backend=name),
        fastla.lu_solve((lu, piv), b),
        rtol=1e-12,
    )
    # integral floats are row indices (SciPy's LAPACK wrapper casts them); others name piv's dtype
    np.testing.assert_allclose(
        fastla.lu_solve((lu, piv.astype(np.float64)), b, backend=name), sla.lu_solve((lu, piv), b), rtol=1e-12
    )
    for bad in (np.r_[piv[:4], 0.5], np.r_[piv[:4], np.nan], piv.astype(complex)):
        with pytest.raises(ValueError, match="piv must hold integer row indices"):
            fastla.lu_solve((lu, bad), b, backend=name)
    with pytest.raises(ValueError, match="piv"):
        fastla.lu_solve((lu, np.r_[piv[:4], 5.0]), b, backend=name)


def test_lu_solve_fast_path_checks_as_the_full_path(rng):
    """Under auto, one system's lu_solve checks piv and b in one compiled call: the same errors as
    the full path (a row index outside [0, n) of either sign and integer width; inf or NaN in a 1-D,
    2-D or strided b) and none with ``check_finite=False`` (SciPy's NaN result)."""
    lu, piv = fastla.lu_factor(rng.standard_normal((5, 5)) + 5 * np.eye(5))
    b = rng.standard_normal((5, 4))
    for bad in (np.r_[piv[:4], 5], np.r_[-1, piv[1:]], np.r_[piv[:4], 2**31 - 1]):
        for dt in (np.int32, np.int64):
            with pytest.raises(ValueError, match=r"piv holds a row index outside \[0, 5\)"):
                fastla.lu_solve((lu, bad.astype(dt)), b[:, 0])
    for view in (lambda x: x[:, 0].copy(), lambda x: x[:, 1], lambda x: x, lambda x: x[:, ::2]):
        rhs = view(b)
        np.testing.assert_allclose(fastla.lu_solve((lu, piv), rhs), sla.lu_solve((lu, piv), rhs), rtol=1e-12)
        for value in (np.nan, np.inf, -np.inf):
            spoilt = view(b.copy())
            spoilt[(3, 1)[: spoilt.ndim]] = value
            with pytest.raises(ValueError, match="infs or NaNs"):
                fastla.lu_solve((lu, piv), spoilt)
            assert np.isnan(fastla.lu_solve((lu, piv), spoilt, check_finite=False)).any()


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((5, 5), (5,)),
        ((5, 5), (5, 3)),
        ((4, 5, 5), (4, 5, 2)),
        ((5, 5), (4, 5, 2)),
        ((4, 5, 5), (5, 1)),
        ((0, 0), (0,)),
        ((3, 3), (3, 0)),
        ((2000, 3, 3), (2000, 3, 1)),
        ((300, 4, 4), (300, 4, 2)),
        ((200, 8, 8), (200, 8, 5)),
        ((20, 20), (20,)),
        ((3, 40, 40), (3, 40, 2)),
    ],
)
def test_solve_shapes_like_numpy(sa, sb, dtype, rng):
    a = (rng.standard_normal(sa) + 3 * np.eye(sa[-1])).astype(dtype)
    b = rng.standard_normal(sb).astype(dtype)
    expected = np.linalg.solve(a.astype(np.float64), b.astype(np.float64))
    n = sa[-1]
    for name in impl_names("solve", 0 if np.prod(sa) <= 2000 else 99):
        x = fastla.solve(a, b, backend=name)
        assert x.shape == expected.shape and x.dtype == dtype, name
        # backward error per system (forward error would need each system's condition number)
        xs = x[..., None] if len(sb) == 1 else x
        bs = np.broadcast_to(b[..., None] if len(sb) == 1 else b, xs.shape).astype(np.float64)
        r = np.einsum("...ij,...jk->...ik", a.astype(np.float64), xs.astype(np.float64)) - bs
        norm_a = np.abs(a).sum(axis=-1).max(axis=-1, initial=0.0)[..., None, None]
        scale = norm_a * np.abs(xs).max(initial=0.0) + np.abs(bs).max(initial=0.0)
        assert np.all(np.abs(r) <= 10 * max(n, 1) * eps(dtype) * scale), name


def test_solve_layouts_and_no_mutation(layout, rng):
    a0 = rng.standard_normal((7, 7)) + 3 * np.eye(7)
    b0 = rng.standard_normal((7, 2))
    a, b = variant(a0, layout), variant(b0, layout)
    keep_a, keep_b = a.copy(), b.copy()
    for name in impl_names("solve", 7):
        np.testing.assert_allclose(fastla.solve(a, b, backend=name), np.linalg.solve(a0, b0), rtol=1e-10)
        lu, piv = fastla.lu_factor(a, backend=name)
        fastla.lu_solve((lu, piv), b, backend=name)
    np.testing.assert_array_equal(a, keep_a)
    np.testing.assert_array_equal(b, keep_b)


@pytest.mark.parametrize("name", impl_names("solve"))
def test_ints_become_float64(name):
    a = np.array([[2, 1], [1, 3]])
    b = np.array([3, 5])
    x = fastla.solve(a, b, backend=name)
    assert x.dtype == np.float64
    np.testing.assert_allclose(x, np.linalg.solve(a, b))


@pytest.mark.parametrize("name", impl_names("solve"))
def test_mistyped_and_misshaped_gets_numpys_type_error(name):
    """np.linalg.solve checks the dtypes before b's shape: float16 / long double ``a`` is its
    TypeError, a ``b`` it cannot cast its ufunc's TypeError, even when b's shape is wrong too."""
    wrong_b = np.ones((2, 2))
    for a, b, match in (
        (np.eye(3, dtype=np.float16), wrong_b, "unsupported in linalg"),
        (np.eye(3), np.array([["a"]]), "Cannot cast ufunc"),
        (np.eye(3), np.ones((2, 2), object), "Cannot cast ufunc"),
    ):
        with pytest.raises(TypeError, match=match):
            np.linalg.solve(a, b)
        with pytest.raises(TypeError, match=match):
            fastla.solve(a, b, backend=name)
    with pytest.raises(ValueError, match="does not match"):  # well typed: the shape's error
        fastla.solve(np.eye(3), wrong_b, backend=name)


def _singular_inputs(rng):
    sing = np.array([[1.0, 2.0], [2.0, 4.0]])
    stack = rng.standard_normal((500, 2, 2)) + 2 * np.eye(2)
    stack[123] = sing
    big = rng.standard_normal((30, 30))
    big[:, 7] = 0.0
    return sing, stack, big


@pytest.mark.parametrize("name", impl_names("solve"))
def test_singular_raises(name, rng):
    for a in _singular_inputs(rng):
        with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
            fastla.solve(a, np.ones((*a.shape[:-1], 1)) if a.ndim == 3 else np.ones(a.shape[0]), backend=name)
        # no right-hand side at all: NumPy still factors and raises; a regular system gives (n, 0)
        with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
            fastla.solve(a, np.ones((*a.shape[:-1], 0)), backend=name)
        regular = a + 4 * a.shape[-1] * np.eye(a.shape[-1])
        np.testing.assert_array_equal(
            fastla.solve(regular, np.ones((*a.shape[:-1], 0)), backend=name),
            np.linalg.solve(regular, np.ones((*a.shape[:-1], 0))),
        )


def test_lu_factor_of_a_stack_of_empty_matrices():
    """(2, 0, 0), (2, 3, 0) and (2, 0, 3): the stack flattened by its size, not -1 (a reshape
    cannot infer -1 for an empty array), min(m, n) = 0 pivots each. A stack of no matrices
    (0, 3, 3) factors and solves to empty results, as np.linalg.solve does (SciPy raises there:
    README, "Deliberate differences")."""
    for name in ("auto", *impl_names("lu_factor")):
        for shape in ((2, 0, 0), (2, 3, 0), (2, 0, 3)):
            lu, piv = fastla.lu_factor(np.zeros(shape), backend=name)
            assert lu.shape == shape and piv.shape == (2, 0), (name, shape)
        lu, piv = fastla.lu_factor(np.zeros((0, 3, 3)), backend=name)
        assert (lu.shape, piv.shape) == ((0, 3, 3), (0, 3)), name
        x = fastla.lu_solve((lu, piv), np.zeros((0, 3, 2)), backend=name)
        assert x.shape == (0, 3, 2) and x.dtype == np.float64, name


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.float16, np.float32, np.float64])
def test_lu_factor_of_an_empty_matrix_keeps_its_dtype_as_scipy_does(dtype):
    """SciPy returns an empty ``a``'s factors as ``np.empty_like(a)``: of ``a``'s own dtype, where a
    non-empty integer, bool or float16 matrix is factored in float64 / float32."""
    for name in ("auto", *impl_names("lu_factor")):
        for shape in ((0, 0), (0, 6), (3, 0), (2, 3, 0)):
            a = np.empty(shape, dtype)
            lu, piv = fastla.lu_factor(a, backend=name)
            expected, expected_piv = sla.lu_factor(a)
            assert (lu.dtype, lu.shape) == (expected.dtype, expected.shape), (name, shape)
            assert (piv.dtype, piv.shape) == (expected_piv.dtype, expected_piv.shape), (name, shape)


@pytest.mark.parametrize("name", impl_names("lu_factor"))
def test_singular_factor_warns(name, rng):
    big = _singular_inputs(rng)[2]
    with pytest.warns(fastla.LinAlgWarning, match="exactly zero"):
        lu, _ = fastla.lu_factor(big, backend=name)
    assert lu.shape == big.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_numpy_stack_factors_as_scipy_per_matrix(dtype, rng):
    """The numpy impl's stack of matrices (LAPACK's getrf per matrix, as SciPy's lu_factor calls it):
    SciPy's factors and pivots matrix by matrix, C-ordered, and one warning for the stack naming the
    first singular matrix's first zero pivot."""
    a = rng.standard_normal((2, 3, 5, 5)).astype(dtype)
    a[0, 2, :, 1] = 0  # the third matrix: column 1 zero, so the second pivot is exactly zero
    a[1, 0, :, 3] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lu, piv = fastla.lu_factor(np.asfortranarray(a), backend="numpy")
    assert [str(w.message) for w in caught] == ["Diagonal number 2 is exactly zero. Singular matrix."]
    assert issubclass(caught[0].category, fastla.LinAlgWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = [sla.lu_factor(m) for m in a.reshape(6, 5, 5)]
    assert lu.flags.c_contiguous and lu.dtype == ref[0][0].dtype and piv.dtype == np.int32
    np.testing.assert_array_equal(lu.reshape(6, 5, 5), np.array([r[0] for r in ref]))
    np.testing.assert_array_equal(piv.reshape(6, 5), np.array([r[1] for r in ref]))


@pytest.mark.parametrize("name", impl_names("lu_factor"))
def test_check_finite_and_bad_shapes(name):
    with pytest.raises(ValueError, match="infs or NaNs"):
        fastla.lu_factor(np.array([[1.0, np.nan], [0.0, 1.0]]), backend=name)
    rect = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]])  # SciPy factors rectangles (getrf): every impl
    for got, ref in zip(fastla.lu_factor(rect, backend=name), sla.lu_factor(rect), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="square"):
        fastla.lu_solve(fastla.lu_factor(rect, backend=name), np.ones(2), backend=name)
    lu_piv = fastla.lu_factor(np.eye(3))
    with pytest.raises(ValueError, match="infs or NaNs"):
        fastla.lu_solve(lu_piv, np.array([1.0, np.inf, 0.0]))
    with pytest.raises(ValueError, match="incompatible"):
        fastla.lu_solve(lu_piv, np.ones(4))
    with pytest.raises(ValueError, match="trans"):
        fastla.lu_solve(lu_piv, np.ones(3), trans=3)
    with pytest.raises(ValueError, match="square"):
        fastla.solve(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="does not match"):
        fastla.solve(np.eye(3), np.ones(4))
    # like NumPy, solve does not check finiteness: NaN in gives NaN out
    assert np.isnan(fastla.solve(np.array([[1.0, np.nan], [0.0, 1.0]]), np.ones(2), backend="numba")).any()


def test_overwrite_a_in_place(rng):
    a = rng.standard_normal((5, 5))
    expected = sla.lu_factor(a)[0]
    work = a.copy()
    lu, _ = fastla.lu_factor(work, overwrite_a=True, backend="numba")
    assert lu is work
    np.testing.assert_allclose(work, expected, rtol=1e-12)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("n", [3, 8, 40])
def test_overwrite_b_is_not_taken_for_a_b_sharing_the_factors_memory(order, n, rng):
    """``overwrite_b`` is a permission: with ``b`` the factor matrix itself (or a view of it) the
    result is still the solution (the kernels solved in ``b`` while reading ``lu`` from it;
    SciPy returns garbage for an F-ordered one)."""
    a = rng.standard_normal((n, n)) + n * np.eye(n)
    lu0, piv = sla.lu_factor(a)
    expected = sla.lu_solve((lu0, piv), lu0.copy())
    for name in impl_names("lu_solve", n):
        lu = np.array(lu0, order=order)
        got = fastla.lu_solve((lu, piv), lu, overwrite_b=True, backend=name)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=name)
        lu = np.array(lu0, order=order)
        got = fastla.lu_solve((lu, piv), lu[:, 1:], overwrite_b=True, backend=name)
        np.testing.assert_allclose(got, expected[:, 1:], rtol=1e-9, atol=1e-12, err_msg=name)


def test_scipys_positional_arguments(rng):
    """SciPy's signatures take ``overwrite_a``/``check_finite`` and ``trans``/``overwrite_b``/
    ``check_finite`` by position too; so do fastla's (only ``backend`` is keyword-only)."""
    a = rng.standard_normal((5, 5))
    b = rng.standard_normal(5)
    lu_piv = sla.lu_factor(a)
    for name in impl_names("lu_solve", 5):
        np.testing.assert_allclose(
            fastla.lu_solve(lu_piv, b, 1, False, True, backend=name), sla.lu_solve(lu_piv, b, 1), rtol=1e-10
        )
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="infs or NaNs"):
        fastla.lu_factor(bad, False, True)
    fastla.lu_factor(bad, False, False)  # check_finite=False by position: no check
    work = a.copy()
    assert fastla.lu_factor(work, True, backend="numba")[0] is work  # overwrite_a by position
    with pytest.raises(TypeError):
        fastla.lu_factor(a, False, True, "numba")  # backend stays keyword-only


def test_auto_rule(monkeypatch):
    # the size rule alone: a size whose kernel is not compiled yet waits for the break-even first
    # (tests/test_first_use.py)
    monkeypatch.setattr(fastla._first_use, "WAIT_FOR_BREAK_EVEN", False)
    assert fastla.explain("solve", np.ones((1000, 4, 4)), np.ones((1000, 4, 1)))[0] == "numba"
    assert fastla.explain("solve", np.ones((500, 500)), np.ones(500))[0] == "numpy"
    # the stack size from which the lane kernel takes over shrinks as n grows (LAPACK's cost per
    # system grows with n): small_min_batch 4x4 systems, as many rows of larger ones
    from fastla import lu

    compiled = "numba" if fastla._jit.NUMBA_AVAILABLE else "numpy"
    rows = 4 * lu.AUTO_RULE["small_min_batch"]
    for n in (4, 16, 32):
        batch = -(-rows // n)
        for m, want in ((batch, compiled), (batch - 1, "numpy")):
            assert fastla.explain("solve", np.ones((m, n, n)), np.ones((m, n, 1)))[0] == want, (m, n)
    # a stack's factors: the numba impl has no batched kernel, LAPACK's getrf per matrix costs less;
    # their substitution: the compiled one per matrix (SciPy's lu_solve per matrix costs more)
    stack = np.ones((1000, 8, 8)) + 8 * np.eye(8)
    assert fastla.explain("lu_factor", stack)[0] == "numpy"
    lu_piv = fastla.lu_factor(stack)
    assert fastla.explain("lu_solve", lu_piv, np.ones((1000, 8, 1)))[0] == compiled


@pytest.mark.skipif(not fastla._jit.NUMBA_AVAILABLE, reason="the numba impl")
@pytest.mark.parametrize("k", [1, 3])
def test_medium_stacks_run_gesv_on_every_thread(k, dtype, rng):
    """Stacks of SMALL_N < n <= THREADED_MAX_N with enough work: the numba impl runs NumPy's gesv on
    each thread's share of the stack, so the solutions are np.linalg.solve's bit for bit, a singular
    system in any share raises its LinAlgError, and auto takes it only with more than one thread."""
    from fastla import lu

    n = lu.SMALL_N + 8
    batch = -(-lu.AUTO_RULE["threaded_min_work"] // n**3) + 1  # past the threshold by one system
    a = (rng.standard_normal((batch, n, n)) + 3 * np.eye(n)).astype(dtype)
    b = rng.standard_normal((batch, n, k)).astype(dtype)
    expect = np.linalg.solve(a, b)
    for backend in ("numba", None):
        np.testing.assert_array_equal(fastla.solve(a, b, backend=backend), expect)
    threads = fastla.get_num_threads()
    assert fastla.explain("solve", a, b)[0] == ("numba" if threads > 1 else "numpy")
    assert fastla.explain("solve", a[:-2], b[:-2])[0] == "numpy"  # below the threshold
    for bad in (0, batch // 2, batch - 1):  # the first share (this thread's), the others
        singular = a.copy()
        singular[bad] = 0
        for backend in ("numba", None):
            with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
                fastla.solve(singular, b, backend=backend)
    try:
        fastla.set_num_threads(1)
        assert fastla.explain("solve", a, b)[0] == "numpy"
        np.testing.assert_array_equal(fastla.solve(a, b, backend="numba"), expect)
    finally:
        fastla.set_num_threads(threads)


@pytest.mark.parametrize("n,k", [(1, 1), (5, 6), (7, 6), (11, 1), (16, 1), (32, 1)])
def test_small_stack_lanes(n, k, rng):
    """The batched tiny-system kernel (one system per SIMD lane): whole groups (transposed in
    registers, rows read through masked loads where n is not a multiple of the lanes: n = 1, 5, 11)
    and a short last group, pivoting in some lanes and not in others, a NaN system that must not
    leak into its neighbours, and more right-hand sides than one pass takes (k = 6)."""
    batch = 37  # not a multiple of any lane count
    a = rng.standard_normal((batch, n, n)) + np.eye(n)
    a[3] = np.eye(n)[::-1] * 2.0  # anti-diagonal: every column needs a row interchange
    a[4, :, 0] = 0.0
    a[4, -1, 0] = 1e-3  # tiny but non-zero pivot, found in the last row
    if n > 1:
        a[5, :, 0] = 1.5  # equal |pivot candidates| in column 0
        a[5, ::2, 0] = -1.5
    a[9, 0, 0] = np.nan
    b = rng.standard_normal((batch, n, k))
    keep_a, keep_b = a.copy(), b.copy()
    x = fastla.solve(a, b, backend="numba")
    np.testing.assert_array_equal(a, keep_a)
    np.testing.assert_array_equal(b, keep_b)
    assert x.shape == b.shape
    assert np.isnan(x[9]).all()
    ok = np.arange(batch) != 9
    r = np.einsum("tij,tjk->tik", a[ok], x[ok]) - b[ok]
    scale = np.abs(a[ok]).sum(axis=-1).max(axis=-1)[:, None, None] * np.abs(x[ok]).max() + np.abs(b).max()
    assert np.all(np.abs(r) <= 10 * n * eps(np.float64) * scale)
    np.testing.assert_allclose(x[ok], np.linalg.solve(a[ok], b[ok]), rtol=1e-8, atol=1e-10)
    if n in (5, 11):  # a float32 stack (computed in float64: the same groups, half the bytes)
        a32, b32 = a.astype(np.float32), b[:, :, :1].astype(np.float32)
        f32 = fastla.solve(a32, b32, backend="numba")
        assert f32.dtype == np.float32
        assert np.isnan(f32[9]).all()
        err = _per_system_backward_error(a32[ok].astype(np.float64), f32[ok].astype(np.float64), b32[ok])
        assert err.max() <= 10 * n * eps(np.float32)


@pytest.mark.parametrize(
    "n,k", [(2, 1), (3, ls.LANE_RHS + 1), (5, ls.LANE_RHS + 1), (8, 1), (11, 1), (100, 2)]
)
@pytest.mark.parametrize("backend", ["numba", "loop"])
def test_float32_systems_are_solved_in_float64_as_numpy_solves_them(n, k, backend, rng):
    """np.linalg.solve converts float32 systems to float64, solves them there and rounds the
    solutions back, and so do fastla's impls (the batched solver in registers, for n <= 32, in
    straight-line code to n = 8 and in memory above; the blocked LU above 96), so a float32 stack's
    solutions are its float64 solutions rounded once, bit for bit: whole groups of lanes, a short
    last one, more right-hand sides than one pass takes. Computed in float32, their errors against
    float64 had been up to ~160x NumPy's. n = 11 stands for the memory path (n = 32's float32
    steps compiled for 27 s on Zen 3; these take 1-2.5 s each)."""
    batch = {"numba": 2 if n > 32 else 37, "loop": 2 if n > 8 else 9}[backend]
    a = (rng.standard_normal((batch, n, n)) + np.eye(n)).astype(np.float32)
    b = rng.standard_normal((batch, n, k)).astype(np.float32)
    keep = a.copy()
    x = fastla.solve(a, b, backend=backend)
    np.testing.assert_array_equal(a, keep)
    assert x.dtype == np.float32
    wide = fastla.solve(a.astype(np.float64), b.astype(np.float64), backend=backend)
    np.testing.assert_array_equal(x, wide.astype(np.float32))
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=4 * eps(np.float32), atol=1e-6)


def test_small_stack_singular_in_one_lane(rng):
    a = rng.standard_normal((21, 4, 4)) + 4 * np.eye(4)
    a[13, :, 2] = 0.0  # singular: the zero pivot appears in column 2
    with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
        fastla.solve(a, np.ones((21, 4, 1)), backend="numba")
    a[13] = np.eye(4)
    np.testing.assert_allclose(fastla.solve(a, np.ones((21, 4, 1)), backend="numba")[13], 1.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n,k", [(3, 1), (4, 4), (8, 2)])
def test_small_stack_whole_groups_in_registers(n, k, dtype, rng):
    """Stacks long enough for many parallel tasks: whole groups with up to LANE_RHS right-hand sides
    are read from and written to the stack in registers (lane_solve_group on the stack itself), the
    short last group through scratch; every system matches LAPACK, and a zero pivot deep inside the
    stack (not in the first task, not in the last group) is still reported."""
    batch = 4099
    a = (rng.standard_normal((batch, n, n)) + np.eye(n)).astype(dtype)
    b = rng.standard_normal((batch, n, k)).astype(dtype)
    x = fastla.solve(a, b, backend="numba")
    assert x.dtype == dtype and x.shape == b.shape
    tol = 1e-8 if dtype == np.float64 else 2e-2
    expected = np.linalg.solve(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(x, expected, rtol=tol, atol=tol)
    err = _per_system_backward_error(a.astype(np.float64), x.astype(np.float64), b.astype(np.float64))
    assert err.max() <= 10 * n * eps(dtype)
    a[2901, :, n - 1] = 0.0
    with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
        fastla.solve(a, b, backend="numba")


def _per_system_backward_error(a, x, b):
    """max over the stack of ||A x - b||_inf / (||A||_inf ||x||_inf + ||b||_inf), per system."""
    r = np.einsum("tij,tjk->tik", a, x) - b
    num = np.abs(r).max(axis=(1, 2))
    den = np.abs(a).sum(axis=2).max(axis=1) * np.abs(x).max(axis=(1, 2)) + np.abs(b).max(axis=(1, 2))
    return num / den


def _hard_stacks(n, rng, batch=300):
    """Stacks a pivoting bug shows on: random (not diagonally dominant), nearly singular (one singular
    value 1e-10 of the others) and graded (rows scaled over 12 orders of magnitude)."""
    plain = rng.standard_normal((batch, n, n))
    u, _, vt = np.linalg.svd(rng.standard_normal((batch, n, n)))
    sv = np.ones((batch, n))
    sv[:, -1] = 1e-10
    near = np.einsum("tij,tj,tjk->tik", u, sv, vt)
    graded = rng.standard_normal((batch, n, n)) * np.logspace(0, 12, n)[None, :, None]
    return {"random": plain, "nearly singular": near, "graded": graded}


@pytest.mark.parametrize("n", [3, 4, 8, 16])
def test_small_stacks_need_partial_pivoting(n, rng):
    """Backward error per system at LAPACK's level on stacks where pivoting only on exact zeros
    fails (that mutant passed every earlier test: they all added a multiple of the identity)."""
    for kind, a in _hard_stacks(n, rng).items():
        b = rng.standard_normal((a.shape[0], n, 1))
        x = fastla.solve(a, b, backend="numba")
        err = _per_system_backward_error(a, x, b)
        ref = _per_system_backward_error(a, np.linalg.solve(a, b), b)
        assert err.max() <= max(8 * ref.max(), 4 * n * eps(np.float64)), (kind, err.max(), ref.max())


def _rank_deficient_integer_systems(n, count, rng):
    """Integer matrices singular in exact arithmetic: the last row a copy or a combination of the
    first two, or the last column a difference of the first two (n >= 2)."""
    systems = []
    for t in range(count):
        a = rng.integers(-5, 6, (n, n)).astype(np.float64)
        if t % 4 == 0:
            a[-1] = a[0]
        elif t % 4 == 1:
            a[-1] = a[0] + a[min(1, n - 1)]
        elif t % 4 == 2:
            a[-1] = 2 * a[0] - 3 * a[min(1, n - 1)]
        else:
            a[:, -1] = a[:, 0] - a[:, min(1, n - 1)]
        systems.append(a)
    return systems


def _raises(call):
    try:
        call()
    except np.linalg.LinAlgError:
        return True
    return False


def _verdict_differences(systems):
    """Indices of the systems whose LinAlgError verdict differs between np.linalg.solve and the
    batched solver (each as a stack of one)."""
    differ = []
    for i, a in enumerate(systems):
        n = a.shape[0]
        ones = np.ones((1, n, 1), a.dtype)
        ours = _raises(lambda a=a, ones=ones: fastla.solve(a[None], ones, backend="numba"))
        if ours != _raises(lambda a=a, ones=ones: np.linalg.solve(a, ones[0])):
            differ.append(i)
    return differ


def _compiled_order_known():
    if not _jit.JIT_ENABLED:
        pytest.skip("the compiled elimination order (the JIT-off twin rounds its dots apart)")
    if ls.lapack_dot_rounding() is None:
        pytest.skip("NumPy's LAPACK rounds its small LU in neither order fastla knows")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_small_stacks_of_singular_systems_get_numpys_verdict(n, dtype, rng):
    """A system singular in exact arithmetic: LAPACK reports it where its last pivot rounds to
    exactly zero, which depends on its order of operations. The batched solver eliminates in the
    order of the LU NumPy runs (left-looking, its dot products' rounding probed), so each of these
    gets NumPy's verdict, LinAlgError or a solution (in the right-looking order: 63-73% of them;
    float32 computed in float32, not in float64 as NumPy computes it: 75-84% of stacks)."""
    _compiled_order_known()
    systems = [a.astype(dtype) for a in _rank_deficient_integer_systems(n, 120, rng)]
    assert _verdict_differences(systems) == []


def test_a_stack_holding_the_textbook_singular_matrix_raises_as_numpy():
    """[[1, 2, 3], [4, 5, 6], [7, 8, 9]] inside a stack long enough for auto's compiled solver: NumPy
    raises LinAlgError (its last pivot is exactly 0); the right-looking order's was -1.6e-16, and
    the stack came back solved, the system's 'solution' included."""
    _compiled_order_known()
    a = np.tile(np.eye(3) * 4 + 1, (5000, 1, 1))
    a[4321] = np.arange(1.0, 10.0).reshape(3, 3)
    b = np.ones((5000, 3, 1))
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.solve(a, b)
    for backend in (None, "numba"):  # auto runs the compiled solver on such a stack (shipped rules)
        with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
            fastla.solve(a, b, backend=backend)


def test_info_names_the_lapack_rounding_the_solver_follows():
    from fastla import _host

    probed = ls.lapack_dot_rounding()
    assert probed in ("fused", "unfused", None)
    expected = probed or f"unknown ({ls.dot_rounding()} assumed)"
    assert _host.machine_facts()["lapack_lu_dots"] == expected


def test_the_elimination_order_follows_the_blas_kernel_numpy_runs(rng):
    """The probe reads the rounding of the OpenBLAS kernel NumPy runs: in a process running the
    other kind of kernel (``OPENBLAS_CORETYPE``), the probe reads the other rounding and the verdicts
    agree again."""
    import subprocess
    import sys

    _compiled_order_known()
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if "openblas" not in str(blas.get("name", "")).lower():
        pytest.skip("NumPy's BLAS is not OpenBLAS")
    if ls.lapack_dot_rounding() == "fused":
        other = "Haswell"
    elif "avx512f" in _host.host_cpu()[1]:
        other = "SkylakeX"
    else:
        pytest.skip("OpenBLAS's fused kernels need AVX-512")
    code = (
        "import numpy as np\n"
        "from fastla import _lane_solver as ls\n"
        "from tests.test_lu import _rank_deficient_integer_systems, _verdict_differences\n"
        "rng = np.random.default_rng(5)\n"
        "systems = [a for n in (3, 4) for a in _rank_deficient_integer_systems(n, 60, rng)]\n"
        "print(ls.lapack_dot_rounding(), len(_verdict_differences(systems)))\n"
    )
    env = {**os.environ, "OPENBLAS_CORETYPE": other}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-c", code]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout.split()
    assert out == [{"fused": "unfused", "unfused": "fused"}[ls.lapack_dot_rounding()], "0"]


def _make_group_solvers(unrolled):
    """Two compiled loops over the whole groups of a stack of 6x6 systems with two right-hand sides:
    one through lane_solve_group (straight-line code over values at this n), one through the
    loop-over-rows code that larger n get (_memory_codegen, its columns unrolled or as loops),
    forced here."""
    nbt = _jit.nb_types

    @_jit.intrinsic(ls._lane_solve_group_twin)
    def memory_group(typingctx, N, K, A, B, X, INFO, T0):
        kinds = ls._group_types(N, (A, B, X), T0)
        if kinds is None or not isinstance(K, nbt.IntegerLiteral):
            return None
        n, dtype = kinds
        codegen = ls._memory_codegen(n, K.literal_value, ls.lanes(n), dtype.itemsize, unrolled)
        return nbt.void(N, K, A, B, X, INFO, T0), codegen

    @_jit.jit
    def registers(a, b, x, info, v):
        for g in range(a.shape[0] // v):
            # DOTS 0: the right-looking order, which _memory_codegen runs
            ls.lane_solve_group(6, 2, 0, a, b, x, info[g * v :], g * v)

    @_jit.jit
    def memory(a, b, x, info, v):
        for g in range(a.shape[0] // v):
            memory_group(6, 2, a, b, x, info[g * v :], g * v)

    return registers, memory


@pytest.mark.parametrize("unrolled", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lane_groups_in_registers_and_in_memory_agree_bit_for_bit(dtype, unrolled, rng):
    """Small n eliminate a group by straight-line code over values, larger n by loops over the rows
    of a copy on the stack (REGISTER_N), their columns unrolled or, for the largest n, loops too
    (UNROLLED_N). All perform the same operations in the same order, so on the same systems
    (pivoting, ties, a zero pivot, a NaN) they agree bit for bit, statuses too."""
    if not _jit.JIT_ENABLED:
        pytest.skip("compares two compiled codes")
    v = ls.lanes(6)
    batch = 4 * v
    a = rng.standard_normal((batch, 6, 6)).astype(dtype)
    a[1] = np.eye(6, dtype=dtype)[::-1]  # every column interchanges rows
    a[2, :, 0] = 1.5  # tied candidates
    a[3, :, 2] = 0.0  # a zero pivot in column 2
    a[4, 2, 3] = np.nan
    b = rng.standard_normal((batch, 6, 2)).astype(dtype)
    registers, memory = _make_group_solvers(unrolled)
    x1, x2 = np.empty_like(b), np.empty_like(b)
    i1, i2 = np.empty(batch, np.int64), np.empty(batch, np.int64)
    a_ro, b_ro = _intrinsics.readonly(a), _intrinsics.readonly(b)
    registers(a_ro, b_ro, x1, i1, v)
    memory(a_ro, b_ro, x2, i2, v)
    np.testing.assert_array_equal(i1, i2)
    assert i1[3] == 3 and i1[0] == 0
    np.testing.assert_array_equal(x1, x2)  # NaN in the same places too
    ok = i1 == 0
    np.testing.assert_allclose(x1[ok], np.linalg.solve(a[ok].astype(np.float64), b[ok]), rtol=1e-3, atol=1e-3)
