"""power_iteration against numpy.linalg.eigh/eig; convergence failures raise."""

import numpy as np
import pytest

import fastla
from tests.helpers import impl_names, variant


def sym_with_spectrum(n, top, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    rest = rng.uniform(-0.5 * abs(top[-1]), 0.5 * abs(top[-1]), n - len(top))
    lam = np.concatenate([top, rest])
    return ((q * lam) @ q.T).astype(dtype), lam


def _check_pairs(a, w, v, tol):
    a64 = a.astype(np.float64)
    for i in range(len(w)):
        res = np.linalg.norm(a64 @ v[:, i] - w[i] * v[:, i])
        assert res <= 2 * tol * abs(w[i]) + 1e-12, (i, res)
        assert abs(np.linalg.norm(v[:, i]) - 1) < 1e-5
        assert v[np.argmax(np.abs(v[:, i])), i] > 0  # sign convention


@pytest.mark.parametrize("n", [5, 33, 65])
def test_top1_matches_eigh(n):
    a, _ = sym_with_spectrum(n, [3.0, 1.5])
    ref_w, ref_v = np.linalg.eigh(a)
    for name in impl_names("power_iteration", n):
        w, v = fastla.power_iteration(a, seed=0, backend=name)
        assert w.shape == (1,) and v.shape == (n, 1)
        np.testing.assert_allclose(w[0], ref_w[-1], rtol=1e-8)
        np.testing.assert_allclose(np.abs(v[:, 0]), np.abs(ref_v[:, -1]), atol=1e-7)
        _check_pairs(a, w, v, 1e-8)


@pytest.mark.parametrize("k", [2, 4])
def test_topk_symmetric_subspace(k):
    n = 40
    a, lam = sym_with_spectrum(n, [5.0, -4.0, 3.0, 2.5, 2.0][: k + 1])
    expected = sorted(lam, key=abs, reverse=True)[:k]
    for name in impl_names("power_iteration", n):
        w, v = fastla.power_iteration(a, k=k, seed=1, backend=name)
        np.testing.assert_allclose(w, expected, rtol=1e-8)
        _check_pairs(a, w, v, 1e-8)
        np.testing.assert_allclose(v.T @ v, np.eye(k), atol=1e-7)


def test_float32_and_layouts(layout):
    a, _ = sym_with_spectrum(24, [2.0, 1.0], dtype=np.float32)
    x = variant(a, layout)
    keep = x.copy()
    for name in impl_names("power_iteration", 24):
        w, v = fastla.power_iteration(x, tol=1e-5, seed=0, backend=name)
        assert w.dtype == np.float32 and v.dtype == np.float32
        np.testing.assert_allclose(w[0], 2.0, rtol=1e-5)
    np.testing.assert_array_equal(x, keep)


@pytest.mark.parametrize("name", impl_names("power_iteration"))
def test_nonsymmetric_dominant_real(name):
    rng = np.random.default_rng(2)
    s = rng.standard_normal((6, 6))
    a = s @ np.diag([4.0, 2.0, 1.0, 0.5, 0.3, 0.1]) @ np.linalg.inv(s)
    w, v = fastla.power_iteration(a, seed=0, tol=1e-9, backend=name)
    np.testing.assert_allclose(w[0], 4.0, rtol=1e-7)
    assert np.linalg.norm(a @ v[:, 0] - w[0] * v[:, 0]) <= 1e-7 * 4
    with pytest.raises(ValueError, match="symmetric"):
        fastla.power_iteration(a, k=2)


@pytest.mark.parametrize("name", impl_names("power_iteration"))
@pytest.mark.parametrize(
    "a",
    [
        np.array([[0.0, -1.0], [1.0, 0.0]]),  # rotation: |l| tied, complex
        np.diag([1.0, -1.0, 0.5]),  # +1 / -1 tie: the iterate oscillates
        np.array([[0.5, -1.0], [1.0, 0.5]]),  # complex pair 0.5 +- i
    ],
    ids=["rotation", "plus-minus-tie", "complex-pair"],
)
def test_ill_cases_raise(name, a):
    with pytest.raises(fastla.ConvergenceError) as info:
        fastla.power_iteration(a, seed=0, maxiter=200, backend=name)
    assert isinstance(info.value, np.linalg.LinAlgError)
    # non-symmetric: runs out of iterations; symmetric +-1: the block sees the tie and stops early
    assert info.value.iterations <= 200 and info.value.eigenvalues.shape == (1,)


def test_convergence_error_pickles_with_its_partial_result():
    """A process pool or a dask worker sends the exception back pickled."""
    import pickle

    with pytest.raises(fastla.ConvergenceError) as info:
        fastla.power_iteration(np.array([[0.0, -1.0], [1.0, 0.0]]), seed=0, maxiter=10)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is fastla.ConvergenceError and str(again) == str(info.value)
    assert again.iterations == info.value.iterations
    np.testing.assert_array_equal(again.eigenvalues, info.value.eigenvalues)
    np.testing.assert_array_equal(again.eigenvectors, info.value.eigenvectors)


def test_repeated_top_eigenvalue_is_a_valid_answer():
    a = np.diag([2.0, 2.0, 1.0])
    w, v = fastla.power_iteration(a, seed=0)
    np.testing.assert_allclose(w, [2.0])
    # any vector of the eigenspace, to the documented residual bound tol * |l| = 2e-8
    assert np.linalg.norm(a @ v[:, 0] - 2.0 * v[:, 0]) <= 1e-8 * 2.0


def test_v0_seed_and_errors():
    a, _ = sym_with_spectrum(10, [3.0, 1.0])
    w1, v1 = fastla.power_iteration(a, seed=5)
    _, v2 = fastla.power_iteration(a, seed=5)
    np.testing.assert_array_equal(v1, v2)
    w3, _ = fastla.power_iteration(a, v0=np.ones(10))
    np.testing.assert_allclose(w3, w1, rtol=1e-8)
    assert fastla.power_iteration(a, seed=0, return_eigenvectors=False).shape == (1,)
    with pytest.raises(ValueError, match="zeros"):
        fastla.power_iteration(a, v0=np.zeros(10))
    with pytest.raises(ValueError, match="v0"):
        fastla.power_iteration(a, v0=np.ones(3))
    with pytest.raises(ValueError, match="square"):
        fastla.power_iteration(np.ones((2, 3)))
    with pytest.raises(ValueError, match="k must"):
        fastla.power_iteration(a, k=11)
    # as SciPy's eigsh: not an integer is a TypeError, maxiter <= 0 a ValueError (it was a
    # ConvergenceError after zero sweeps)
    for kw in ({"k": 2.0}, {"k": True}, {"maxiter": 2.5}, {"maxiter": True}):
        with pytest.raises(TypeError, match="must be an integer"):
            fastla.power_iteration(a, **kw)
    for maxiter in (0, -3):
        with pytest.raises(ValueError, match="maxiter must be positive"):
            fastla.power_iteration(a, maxiter=maxiter)
    with pytest.raises(ValueError, match="infs or NaNs"):
        fastla.power_iteration(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    # a non-finite v0 is refused as the matrix is (it failed in LAPACK's eigh: "did not converge")
    for v0 in (np.full(10, np.nan), np.r_[np.inf, np.zeros(9)]):
        with pytest.raises(ValueError, match="v0 must not contain infs or NaNs"):
            fastla.power_iteration(a, v0=v0)
    for tol in ("1e-5", [1e-5], 1e-5j):  # not a real number: TypeError (a str or list was numpy's)
        with pytest.raises(TypeError, match="tol must be a real number"):
            fastla.power_iteration(a, tol=tol)
    np.testing.assert_allclose(fastla.power_iteration(a, tol=np.array(1e-9), seed=5)[0], w1, rtol=1e-8)
    for tol in (-1e-8, np.inf, np.nan):
        with pytest.raises(ValueError, match="tol must be >= 0"):
            fastla.power_iteration(a, tol=tol)


# n = 300 without the JIT: 11 s of kernels run as Python, on the paths n = 40 covers
@pytest.mark.parametrize("n,k", [(10, 1), (40, 3), pytest.param(300, 5, marks=pytest.mark.slow)])
def test_tol_zero_is_to_rounding_as_eigsh_default(dtype, n, k, rng):
    """``tol=0``, ``eigsh``'s default ("machine precision"), asks for the rounding floor
    ``10 sqrt(n) eps`` itself (it was a ValueError: a user moving from eigsh with its default got
    one); explicit residuals reach it and the eigenvalues agree with eigsh's to rounding."""
    sla = pytest.importorskip("scipy.sparse.linalg")
    a = rng.standard_normal((n, n))
    a = (a + a.T).astype(dtype)
    eps = float(np.finfo(dtype).eps)
    floor = 10 * np.sqrt(n) * eps
    for name in impl_names("power_iteration", n):
        w, v = fastla.power_iteration(a, k=k, tol=0, seed=1, backend=name)
        res = np.linalg.norm(a @ v - v * w, axis=0)
        assert np.all(res <= 2 * floor * np.abs(w).max() + 8 * eps * np.abs(w).max()), (name, res)
        want = sla.eigsh(a.astype(np.float64), k=k, which="LM", tol=0, return_eigenvectors=False)
        want = want[np.argsort(-np.abs(want))]
        np.testing.assert_allclose(w, want, rtol=0, atol=4 * floor * np.abs(want).max(), err_msg=name)
    with pytest.raises(TypeError, match="complex"):
        fastla.power_iteration(np.eye(2, dtype=complex))
    w, _ = fastla.power_iteration(np.eye(3, dtype=int) * 2 + 1, seed=0)  # ints -> float64
    assert w.dtype == np.float64


def test_symmetry_detection_is_relative_to_the_matrix():
    """Q diag(l) Q^T is symmetric only to rounding: its tiny entries must not fail the check."""
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.standard_normal((120, 120)))
    a = (q * np.linspace(1.0, 0.01, 120)) @ q.T
    assert not np.array_equal(a, a.T)
    w, _ = fastla.power_iteration(a, k=3, seed=0)
    np.testing.assert_allclose(w, [1.0, 1.0 - 0.99 / 119, 1.0 - 2 * 0.99 / 119], rtol=1e-8)
    with pytest.raises(ValueError, match="symmetric"):
        fastla.power_iteration(a + np.triu(np.full_like(a, 1e-3), 1), k=2)


def test_repeated_eigenvalues_inside_top_k():
    """A triple eigenvalue inside the top k: a one-vector Krylov space holds only one direction of
    it; the block (b = min(k, 4) vectors) must find all three copies, not skip to the next value."""
    from fastla import eigen

    for n in (80, eigen.DENSE_MAX_N + 20):  # solved densely, then by the block Lanczos
        a, _ = sym_with_spectrum(n, [5.0, 5.0, 5.0, 3.0, 2.0], seed=3)
        for name in impl_names("power_iteration", n):
            w, v = fastla.power_iteration(a, k=4, seed=0, backend=name)
            np.testing.assert_allclose(w, [5.0, 5.0, 5.0, 3.0], rtol=1e-8)
            _check_pairs(a, w, v, 1e-8)
            np.testing.assert_allclose(v.T @ v, np.eye(4), atol=1e-7)


@pytest.mark.parametrize("n,k,gap", [(300, 1, 0.99), (200, 10, 0.97)])
def test_thick_restarts(n, k, gap):
    """A small gap needs more sweeps than the basis holds: the restarts must keep the progress."""
    top = [gap**i for i in range(k + 1)]
    a, lam = sym_with_spectrum(n, top, seed=5)
    expected = sorted(lam, key=abs, reverse=True)[:k]
    for name in impl_names("power_iteration", 64):  # no loop impl: hundreds of pure-Python sweeps
        w, v = fastla.power_iteration(a, k=k, seed=0, backend=name)
        np.testing.assert_allclose(w, expected, rtol=1e-8)
        _check_pairs(a, w, v, 1e-8)


@pytest.mark.parametrize("name", impl_names("power_iteration"))
def test_invariant_start_space_is_left(name):
    """v0 spanning an invariant subspace (an eigenvector of a smaller eigenvalue) must not end the
    search there: the basis grows with a random direction and finds the dominant pair."""
    a = np.diag([1.0, 3.0, 0.5, 0.25, -2.0])
    w, v = fastla.power_iteration(a, v0=np.eye(5)[0], symmetric=True, backend=name)
    np.testing.assert_allclose(w, [3.0])
    np.testing.assert_allclose(np.abs(v[:, 0]), np.eye(5)[1], atol=1e-8)


@pytest.mark.parametrize("name", impl_names("power_iteration"))
def test_whole_space_and_iteration_limits(name):
    from fastla import eigen

    a, _ = sym_with_spectrum(12, [4.0, 3.9, 3.8], seed=6)
    w, _ = fastla.power_iteration(a, k=3, seed=0, backend=name)
    np.testing.assert_allclose(w, [4.0, 3.9, 3.8], rtol=1e-10)
    # a tol below rounding: unreachable by the dense solve of a small matrix and by Lanczos once its
    # basis spans the whole space (the fewest k whose basis of 3k + 10 columns exceeds n)
    with pytest.raises(fastla.ConvergenceError, match=r"solved densely .* still exceed tol") as info:
        fastla.power_iteration(a, k=3, tol=1e-30, seed=0, backend=name)
    assert info.value.eigenvalues.shape == (3,) and info.value.eigenvectors.shape == (12, 3)
    big, _ = sym_with_spectrum(eigen.DENSE_MAX_N + 10, [4.0, 3.9, 3.8], seed=6)
    k = (len(big) - 10) // 3 + 1
    with pytest.raises(fastla.ConvergenceError, match="spans all") as info:
        fastla.power_iteration(big, k=k, tol=1e-30, seed=0, backend=name)
    assert info.value.eigenvalues.shape == (k,) and info.value.eigenvectors.shape == (len(big), k)
    b, _ = sym_with_spectrum(200, [1.0, 0.999], seed=7)
    with pytest.raises(fastla.ConvergenceError, match="3 sweeps") as info:
        fastla.power_iteration(b, maxiter=3, seed=0, backend=name)
    assert info.value.iterations == 3


def test_low_rank_krylov_space_runs_out():
    """Rank 17 with k = 10 (blocks of 4): the Krylov space becomes invariant after a few sweeps and
    its remainders are rounding noise. Normalising that noise once gave a non-orthogonal basis and
    Ritz values 1000x the matrix norm; it must be recognised as in the span and replaced."""
    rng = np.random.default_rng(43)
    q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    lam = np.zeros(50)
    lam[:17] = rng.uniform(0.5, 2.0, 17)
    a = (q * lam) @ q.T
    for name in impl_names("power_iteration", 50):
        w, v = fastla.power_iteration(a, k=10, seed=0, backend=name)
        np.testing.assert_allclose(w, np.sort(lam)[::-1][:10], rtol=1e-8)
        _check_pairs(a, w, v, 1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_eigenvalues_far_below_the_largest_converge_at_the_rounding_floor(dtype):
    """k above the rank (a PCA asking for more components than the data spans), or eigenvalues 1e-10
    of the largest: their residuals only reach the rounding floor, min(10 sqrt(n) eps, tol) max|l|
    (tol * |l| alone never passed, and every such call raised ConvergenceError, where eigsh returns
    them); the zero matrix as well."""
    rng = np.random.default_rng(44)
    eps = float(np.finfo(dtype).eps)
    tol = 1e-8 if dtype == np.float64 else 1e-5
    cases = []
    for n, rank, k in ((5, 1, 3), (40, 2, 5), (300, 2, 3), (6, 0, 2)):
        u = rng.standard_normal((n, rank))
        cases.append((u @ u.T, k))
    q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    for lam in ([1.0, 1e-10, 1e-12], [1.0, 0.5, 1e-9], [2.0, 1e-11, -1e-11]):
        cases.append(((q * np.r_[lam, np.zeros(47)]) @ q.T, 3))
    for a, k in cases:
        n = a.shape[0]
        a = a.astype(dtype)
        a64 = a.astype(np.float64)
        ref = np.linalg.eigvalsh(a64)
        ref = ref[np.argsort(-np.abs(ref), kind="stable")][:k]
        rho = min(10 * np.sqrt(n) * eps, tol) * abs(ref[0])
        for name in impl_names("power_iteration", n):
            w, v = fastla.power_iteration(a, k=k, seed=0, backend=name)
            assert w.dtype == dtype and v.shape == (n, k), name
            assert np.isfinite(w).all() and np.isfinite(v).all(), name
            bound = np.maximum(tol * np.abs(w), rho)
            # sorted: +-1e-11 are tied in magnitude (either order is the decreasing-|l| order)
            want = np.sort(ref)
            allowed = 2 * np.maximum(tol * np.abs(want), rho) + 4 * eps * abs(ref[0])
            assert np.all(np.abs(np.sort(w) - want) <= allowed), (name, w, ref)
            res = np.linalg.norm(a64 @ v - v * w, axis=0)
            assert np.all(res <= 2 * bound + 4 * eps * np.sqrt(n) * abs(ref[0])), (name, n, res, bound)
            np.testing.assert_allclose(v.T.astype(np.float64) @ v, np.eye(k), atol=1e3 * eps)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tile", [16, 64])
@pytest.mark.parametrize("serial_max_n", [0, None])
def test_symmetry_scan_matches_numpy(dtype, tile, serial_max_n, monkeypatch):
    """The compiled one-pass scan (max |a|, max |a - aᵀ|, finiteness) against NumPy, for sizes
    around the tile edge and one large, asymmetric or non-finite entry in either triangle, on all
    threads (``SCAN_SERIAL_MAX_N`` 0) and as shipped (one thread at these sizes)."""
    from fastla import eigen

    monkeypatch.setattr(eigen, "scan_tile", lambda: tile)
    if serial_max_n is not None:
        monkeypatch.setattr(eigen, "SCAN_SERIAL_MAX_N", serial_max_n)
    rng = np.random.default_rng(7)
    for n in (1, 2, tile - 1, tile, tile + 1, 2 * tile + 3):
        s = rng.standard_normal((n, n)).astype(dtype)
        s = s + s.T
        cases = [s, rng.standard_normal((n, n)).astype(dtype)]
        for i, j in {(n - 1, 0), (0, n - 1), (n // 2, n // 2), (n - 1, n // 3)}:
            for value in (1e4, np.inf, -np.inf, np.nan):
                m = s.copy()
                m[i, j] = value
                cases.append(m)
        for m in cases:
            with np.errstate(invalid="ignore"):
                big, asym = float(np.abs(m).max()), float(np.abs(m - m.T).max())
            if not np.isfinite(big):
                with pytest.raises(ValueError, match="infs or NaNs"):
                    eigen._finite_and_symmetric(m)
                continue
            symmetric, got_asym, got = eigen._finite_and_symmetric(m)
            assert got == big, (n, m.dtype)
            assert got_asym == asym, (n, m.dtype)
            assert symmetric == (asym <= eigen.symmetry_atol(m.dtype, big)), (n, asym)


@pytest.mark.skipif(not fastla._jit.JIT_ENABLED, reason="the compiled scan runs with the JIT only")
def test_the_scan_runs_on_one_thread_where_the_sweeps_do(monkeypatch):
    """Up to ``SCAN_SERIAL_MAX_N`` (where the one-triangle product is one task) the symmetry scan
    runs on one thread, so that such a call never waits for a second one; above it, on all."""
    from fastla import _jit, eigen

    seen = []
    scan = eigen._scan

    def recorded(a, tile, out, at, threads):
        seen.append((a.shape[0], threads))
        return scan(a, tile, out, at, threads)

    monkeypatch.setattr(eigen, "_scan", recorded)
    limit = eigen.SCAN_SERIAL_MAX_N
    assert -(-limit // eigen._MATVEC_ROWS) == 2  # two 256-row blocks: one task of the product
    rng = np.random.default_rng(2)
    for n in (limit, limit + 1):
        g = rng.standard_normal((n, n))
        eigen._finite_and_symmetric(g + g.T)
    assert seen == [(limit, 1), (limit + 1, _jit.threads_here())]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_triangle_product_matches_the_full_one(dtype):
    """The product that reads only the upper triangle of a symmetric A (its dot products per row and
    the mirrored terms summed per 256-row block): sizes around the block edge, the rows past a
    multiple of 4 (the last row repeated), one to four vectors and the one-vector kernel; the result
    in A's dtype."""
    from fastla import _intrinsics, eigen

    rng = np.random.default_rng(11)
    # 515 and 771 (several blocks) without the JIT: 5 s of Python on the paths 257 covers
    for n in (1, 3, 4, 5, 255, 256, 257) + ((515, 771) if fastla._jit.JIT_ENABLED else ()):
        s = rng.standard_normal((n, n))
        a = _intrinsics.kernel_input((s + s.T).astype(dtype))
        for width, widths in ((4, (1, 2, 4)), (1, (1,))):
            one = eigen._OneTriangle(a, width)
            for b in widths:
                v = rng.standard_normal((n, b)).astype(dtype)
                want = a.astype(np.float64) @ v.astype(np.float64)
                got = one.matmat(a, v)
                assert got.dtype == dtype and got.shape == (n, b)
                scale = np.abs(a).max() * np.abs(v).max() * n
                np.testing.assert_allclose(got, want, rtol=0, atol=scale * 4 * np.finfo(dtype).eps)
        w = np.empty(n, dtype)
        vec = v[:, 0].copy()
        vw, ww = one.matvec(a, vec, w)
        np.testing.assert_allclose(w, want[:, 0], rtol=0, atol=scale * 4 * np.finfo(dtype).eps)
        assert vw == float(vec @ w) and ww == float(w @ w)


@pytest.mark.slow  # without the JIT: 4 s of kernels run as Python, on paths the tests above cover
def test_symmetric_power_iteration_reads_one_triangle(monkeypatch):
    """The numba impl reads one triangle of a matrix equal to its transpose, and of one symmetric to
    rounding (``Q diag(l) Q^T``), for one vector (k = 1) and blocks (k > 1); a matrix declared
    symmetric but further from it than the slack the convergence test allows is read whole. Pairs
    meet tol against A itself either way."""
    from fastla import eigen

    if "numba" not in impl_names("power_iteration", 300):
        pytest.skip("numba impl unavailable")
    calls = []
    original = eigen._OneTriangle.product
    monkeypatch.setattr(
        eigen._OneTriangle, "product", lambda self, a, v: calls.append(v.shape) or original(self, a, v)
    )
    a, lam = sym_with_spectrum(300, [2.0, 1.8, 1.6, 1.4], seed=9)
    exact = np.triu(a) + np.triu(a, 1).T
    skewed = a + np.triu(np.full_like(a, 1e-11), 1)  # within the symmetry test, over the slack
    for m, k, used in ((exact, 1, True), (a, 1, True), (exact, 3, True), (a, 3, True), (skewed, 2, False)):
        calls.clear()
        w, v = fastla.power_iteration(m, k=k, seed=0, symmetric=True, backend="numba")
        np.testing.assert_allclose(w, lam[:k], rtol=1e-8)
        _check_pairs(m, w, v, 1e-8)
        assert bool(calls) == used, (k, used)
    assert eigen.triangle_slack(300, 0.0, 2.0, 1e-8) == 0.0
    assert eigen.triangle_slack(300, 1e-11, 2.0, 1e-8) == np.inf


def test_slack_counts_in_the_convergence_test():
    """Products of a matrix within ``slack`` of A: a pair passes when its residual plus the slack
    does, or when a product with A itself (``verify``) gives a residual that passes; otherwise the
    iteration goes on (here to its sweep limit)."""
    from fastla import eigen

    rng = np.random.default_rng(12)
    s, _ = sym_with_spectrum(60, [1.0, 0.5], seed=10)
    e = np.tril(rng.choice([-1.0, 1.0], (60, 60)), -1) * 5e-10  # A = S + E; the products apply S
    a = s + e
    slack = 5e-10 * np.sqrt(60 * 59 / 2)  # 2.1e-8 > tol = 1e-8, while ||E x|| stays under it
    assert np.linalg.norm(e, 2) < 1e-8

    def matmat(_, v):
        return s @ v

    def matvec(_, v, w):
        w[:] = s @ v
        return float(v @ w), float(w @ w)

    start = np.random.default_rng(0).standard_normal((60, 1))
    with pytest.raises(fastla.ConvergenceError, match="did not converge"):
        eigen._lanczos(a, start, 1, 1e-8, 40, matvec, matmat, slack)
    w, x, _ = eigen._lanczos(a, start, 1, 1e-8, 40, matvec, matmat, slack, lambda m, v: m @ v)
    assert abs(w[0] - 1.0) < 1e-8
    assert np.linalg.norm(a @ x[:, 0] - w[0] * x[:, 0]) <= 1e-8 * abs(w[0])
    w0, _, _ = eigen._lanczos(a, start, 1, 1e-8, 40, matvec, matmat)  # no slack: S's own residual
    assert abs(w0[0] - 1.0) < 1e-8


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sparse_and_linear_operator_input_as_eigsh_takes_them(k, dtype):
    """SciPy sparse matrices/arrays (any format, duplicate entries, integers) and LinearOperators,
    as ``eigsh`` takes them: the same pairs as the dense matrix gives, a sparse matrix through each
    implementation's CSR product (the compiled one with the same bits on 1 and 2 threads), a
    LinearOperator through its own (``numpy``; the others refuse it by name); the input is not
    modified."""
    sp = pytest.importorskip("scipy.sparse")
    spla = pytest.importorskip("scipy.sparse.linalg")
    dense, _ = sym_with_spectrum(60, [4.0, -3.0, 2.5, 2.0], seed=3)
    dense[np.abs(dense) < 0.02] = 0  # sparse, still symmetric
    dense = dense.astype(dtype)
    tol = 1e-8 if dtype == np.float64 else 1e-5
    w_dense, _ = fastla.power_iteration(dense, k=k, seed=0)
    rows, cols = np.nonzero(dense)
    vals = dense[rows, cols]
    dup = sp.coo_matrix(  # every entry stored as two halves: summed, as SciPy does
        (np.concatenate([vals / 2, vals / 2]), (np.concatenate([rows, rows]), np.concatenate([cols, cols]))),
        shape=dense.shape,
    )
    operator = spla.aslinearoperator(sp.csr_array(dense))
    for a in (sp.csr_matrix(dense), sp.csc_array(dense), dup, operator):
        before = a.toarray().copy() if hasattr(a, "toarray") else None
        names = ["auto", "numpy"] if a is operator else ["auto", *impl_names("power_iteration", 60)]
        for name in names:
            w, v = fastla.power_iteration(a, k=k, seed=0, backend=name)
            assert w.dtype == dtype and v.dtype == dtype and v.shape == (60, k), (type(a), name)
            np.testing.assert_allclose(w, w_dense, rtol=10 * tol)
            _check_pairs(dense, w, v, tol)
        if before is not None:
            np.testing.assert_array_equal(a.toarray(), before)
        if a is operator:
            assert fastla.explain("power_iteration", a)[0] == "numpy"
            for name in ("numba", "loop"):
                with pytest.raises(TypeError, match="cannot run this input"):
                    fastla.power_iteration(a, k=k, backend=name)
        elif "numba" in impl_names("power_iteration", 60):
            with fastla.backend("numba"):
                fastla.set_num_threads(1)
                one = fastla.power_iteration(a, k=k, seed=0)
                fastla.set_num_threads(2)
                two = fastla.power_iteration(a, k=k, seed=0)
            for x, y in zip(one, two, strict=True):
                np.testing.assert_array_equal(x, y)
    ints = sp.csr_array(np.diag(np.arange(1, 9)))
    assert fastla.power_iteration(ints, seed=0)[0][0] == pytest.approx(8.0)
    assert fastla.power_iteration(ints, seed=0)[0].dtype == np.float64


def test_spurious_invalid_flags_in_the_basis_algebra_do_not_warn(monkeypatch):
    """An FE_INVALID flag left raised by a product of finite operands (OpenBLAS did once, in a
    float32 basis product, and NumPy reported "invalid value encountered in matmul") is not the
    user's concern: the algorithm's own algebra ignores it, as ``eigsh`` does, even under the
    caller's ``np.errstate(invalid="raise")``. A LinearOperator's own products still run under the
    caller's settings."""
    spla = pytest.importorskip("scipy.sparse.linalg")
    from fastla import eigen

    project_out = eigen._project_out

    def flagging(basis, col):
        np.subtract(np.full(2, np.inf), np.full(2, np.inf))  # raises FE_INVALID, result unused
        return project_out(basis, col)

    monkeypatch.setattr(eigen, "_project_out", flagging)
    a, _ = sym_with_spectrum(30, [5.0, 3.0, 2.0], seed=1)
    with np.errstate(invalid="raise"):
        for name in impl_names("power_iteration", 30):
            w, v = fastla.power_iteration(a, k=2, seed=0, backend=name)
            _check_pairs(a, w, v, 1e-8)

    def matvec(x):
        np.subtract(np.full(2, np.inf), np.full(2, np.inf))
        return a @ x

    operator = spla.LinearOperator(a.shape, matvec=matvec, dtype=a.dtype)
    with np.errstate(invalid="raise"), pytest.raises(FloatingPointError):
        fastla.power_iteration(operator, k=2, seed=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_solve_takes_the_spectrums_ends(dtype, monkeypatch):
    """A small symmetric matrix and a small k: the k + 1 eigenpairs at each end of the spectrum
    (LAPACK's syevr) hold the top k by |l| wherever they lie (here the most negative among them)
    and the next one for the tie test; a larger k takes every pair (eigh). Same pairs either way."""
    from fastla import eigen

    ends = []
    spectrum_ends = eigen._spectrum_ends
    monkeypatch.setattr(eigen, "_spectrum_ends", lambda *a: ends.append(a[1]) or spectrum_ends(*a))
    n = 120
    a, _ = sym_with_spectrum(n, [5.0, -4.0, 3.0, -2.5, 2.0], seed=12, dtype=dtype)
    tol = 1e-8 if dtype == np.float64 else 1e-5
    for k in (1, 2, 3, 4):
        ends.clear()
        w, v = fastla.power_iteration(a, k=k, seed=0)
        np.testing.assert_allclose(w, [5.0, -4.0, 3.0, -2.5][:k], rtol=10 * tol)
        _check_pairs(a.astype(np.float64), w, v, tol)
        assert ends == ([k + 1] if (k + 1) * eigen.ENDS_RATIO <= n else []), k
    tied, _ = sym_with_spectrum(n, [3.0, -3.0, 1.0], seed=13, dtype=dtype)
    with pytest.raises(fastla.ConvergenceError, match="tied in magnitude"):
        fastla.power_iteration(tied, k=1, seed=0)
    assert ends == [2]


@pytest.mark.parametrize("name", impl_names("power_iteration"))
def test_small_symmetric_matrices_are_solved_densely(name, monkeypatch):
    """Up to DENSE_MAX_N every impl takes LAPACK's eigh (no Lanczos sweep), with eigh's accuracy and
    the top k by |l|; one order larger takes the sweeps."""
    from fastla import eigen

    calls = []
    lanczos = eigen._lanczos
    monkeypatch.setattr(eigen, "_lanczos", lambda *a, **kw: calls.append(1) or lanczos(*a, **kw))
    rng = np.random.default_rng(5)
    for n in (2, eigen.DENSE_MAX_N, eigen.DENSE_MAX_N + 1):
        g = rng.standard_normal((n, n))
        a = (g + g.T) / 2
        ref = np.linalg.eigvalsh(a)
        ref = ref[np.argsort(-np.abs(ref), kind="stable")]
        k = min(n - 1, 3)
        w, v = fastla.power_iteration(a, k=k, seed=0, backend=name)
        assert len(calls) == (n > eigen.DENSE_MAX_N), n
        np.testing.assert_allclose(w, ref[:k], rtol=1e-8)
        _check_pairs(a, w, v, 1e-12 if n <= eigen.DENSE_MAX_N else 1e-8)
        assert fastla.power_iteration(a.astype(np.float32), k=k, seed=0, backend=name)[0].dtype == np.float32


def test_cheap_sweeps_take_the_rayleigh_ritz_step_every_fourth_sweep(monkeypatch):
    """Where a sweep's product is cheap, the projected eigenproblem (one ``eigh`` from Python, the
    bulk of such a sweep) is solved every fourth sweep, before each restart and at the end; where
    the product outweighs it, every sweep."""
    from fastla import eigen

    counts = {"eigh": 0, "sweeps": 0}
    eigh, lanczos = np.linalg.eigh, eigen._lanczos

    def counted_eigh(*args, **kwargs):
        counts["eigh"] += 1
        return eigh(*args, **kwargs)

    def counted_lanczos(*args, **kwargs):
        res = lanczos(*args, **kwargs)
        counts["sweeps"] = res[2]
        return res

    monkeypatch.setattr(np.linalg, "eigh", counted_eigh)
    monkeypatch.setattr(eigen, "_lanczos", counted_lanczos)
    rng = np.random.default_rng(8)
    for n in (200, 1030):
        assert eigen._check_every(n, 1) == (4 if n * n < eigen.CHECK_EVERY_SWEEP_WORK else 1)
        g = rng.standard_normal((n, n))
        a = (g + g.T) / 2
        counts.update(eigh=0, sweeps=0)
        w, v = fastla.power_iteration(a, seed=0, backend="numpy")
        _check_pairs(a, w, v, 1e-8)
        sweeps = counts["sweeps"]
        if eigen._check_every(n, 1) == 1:
            assert counts["eigh"] == sweeps  # k = 1: from the first sweep on
        else:
            assert sweeps >= 8 and counts["eigh"] <= sweeps // 4 + sweeps // 31 + 2, counts


def test_sparse_input_is_checked_as_dense_input_is():
    """A non-finite stored entry is SciPy's ValueError; symmetry is detected from the stored entries
    (a non-symmetric matrix takes the k = 1 power iteration and refuses k > 1); a shape that is not
    square is a ValueError; entries near the overflow threshold are scaled first, exactly."""
    sp = pytest.importorskip("scipy.sparse")
    a = sp.csr_array(np.diag([3.0, 2.0, 1.0]))
    bad = a.copy()
    bad.data[1] = np.nan
    with pytest.raises(ValueError, match="infs or NaNs"):
        fastla.power_iteration(bad)
    upper = sp.csr_array(np.triu(np.full((4, 4), 0.5)) + np.diag([3.0, 0, 0, 0]))
    for name in impl_names("power_iteration", 4):  # every implementation's CSR product
        w, v = fastla.power_iteration(upper, seed=0, backend=name)
        np.testing.assert_allclose(w, [3.5], rtol=1e-8)
        np.testing.assert_allclose(upper @ v[:, 0], w[0] * v[:, 0], atol=1e-7)
        np.testing.assert_allclose(fastla.power_iteration(a, k=2, seed=0, backend=name)[0], [3, 2], rtol=1e-8)
    with pytest.raises(ValueError, match="symmetric"):
        fastla.power_iteration(upper, k=2)
    with pytest.raises(ValueError, match="square"):
        fastla.power_iteration(sp.csr_array(np.ones((3, 4))))
    huge = sp.csr_array(np.diag([3e307, 2e307, 1e307]))
    np.testing.assert_allclose(fastla.power_iteration(huge, k=2, seed=0)[0], [3e307, 2e307], rtol=1e-10)
