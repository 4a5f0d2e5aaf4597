"""cosine_similarity and cosine_topk: every impl against a float64 reference over the input matrix."""

import tracemalloc

import numpy as np
import pytest

import fastla
from fastla import _intrinsics, _jit, similarity
from tests.helpers import counted_in_loops, eps, fresh_ir, impl_names, variant


def _ref_matrix(x, y):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        nx = np.linalg.norm(x, axis=-1, keepdims=True)
        ny = np.linalg.norm(y, axis=-1, keepdims=True)
        # a zero row stays zero; NaN or inf in a row makes it NaN (NaN * 0, inf * 0)
        xn = x * np.where(nx > 0, 1 / nx, 0)
        yn = y * np.where(ny > 0, 1 / ny, 0)
        return xn @ yn.T


def _close(actual, expected, dtype, d):
    tol = 8 * max(d, 1) * eps(dtype)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol, equal_nan=True)


@pytest.fixture(params=["stream", "packed"])
def topk_path(request, monkeypatch):
    """Both kernels of the numba top-k: few queries stream the corpus unpacked, more go through the
    packed GEMM (the rule's threshold moved so that every size takes the one under test)."""
    few = 10**9 if request.param == "stream" else 0  # the fewest queries packed
    monkeypatch.setitem(similarity.AUTO_RULE, "topk_packed_min_queries", few)
    return request.param


def _packed_topk(monkeypatch):
    monkeypatch.setitem(similarity.AUTO_RULE, "topk_packed_min_queries", 0)


def _ref_topk(q, c, k):
    full = _ref_matrix(q, c)
    rows = [sorted(range(c.shape[0]), key=lambda j, r=r: (np.isnan(r[j]), -r[j], j))[:k] for r in full]
    idx = np.array(rows, dtype=np.intp).reshape(len(full), k)
    return np.take_along_axis(full, idx, axis=1), idx, full


# --------------------------------------------------------------------------- matrix


@pytest.mark.parametrize(
    "n,m,d",
    [(1, 1, 1), (7, 33, 5), (33, 7, 65), (65, 127, 33), (40, 70, 300), (0, 5, 3), (5, 0, 3), (3, 4, 0)],
)
def test_matrix_against_reference(n, m, d, dtype, rng):
    x = rng.standard_normal((n, d)).astype(dtype)
    y = rng.standard_normal((m, d)).astype(dtype)
    if n > 2:
        x[1] = 0  # a zero row: similarity 0, no warning
    expected = _ref_matrix(x, y)
    for name in impl_names("cosine_similarity", max(n, m)):
        res = fastla.cosine_similarity(x, y, backend=name)
        assert res.dtype == dtype and res.shape == (n, m), name
        _close(res, expected, dtype, d)
        if n > 2:
            assert np.all(res[1] == 0)


@pytest.mark.parametrize("n", [1, 7, 65, 700])
def test_symmetric_is_exact(n, dtype, rng):
    d = 300 if n == 65 else 20  # d > KC: several rank-KC updates per block
    x = rng.standard_normal((n, d)).astype(dtype)
    x[0] = 0
    expected = _ref_matrix(x, x)
    np.fill_diagonal(expected, 1)
    expected[0, 0] = 0
    for name in impl_names("cosine_similarity", n):
        for res in (fastla.cosine_similarity(x, backend=name), fastla.cosine_similarity(x, x, backend=name)):
            assert res.dtype == dtype
            np.testing.assert_array_equal(res, res.T)
            assert res[0, 0] == 0 and np.all(np.diag(res)[1:] == 1)
            _close(res, expected, dtype, d)


def test_vector_forms(dtype, rng):
    a = rng.standard_normal(9).astype(dtype)
    b = rng.standard_normal((4, 9)).astype(dtype)
    ref = _ref_matrix(a[None], b)[0]
    for name in impl_names("cosine_similarity", 9):
        s = fastla.cosine_similarity(a, b[0], backend=name)
        assert type(s) is float
        assert abs(s - ref[0]) < 1e-5
        r1 = fastla.cosine_similarity(a, b, backend=name)
        r2 = fastla.cosine_similarity(b, a, backend=name)
        assert r1.shape == r2.shape == (4,) and r1.dtype == dtype
        _close(r1, ref, dtype, 9)
        _close(r2, ref, dtype, 9)
    assert fastla.cosine_similarity([1.0, 0.0], [0.0, 0.0]) == 0.0


def test_layouts_and_no_mutation(layout, dtype, rng):
    x0 = rng.standard_normal((13, 9)).astype(dtype)
    y0 = rng.standard_normal((6, 9)).astype(dtype)
    x, y = variant(x0, layout), variant(y0, layout)
    kx, ky = x.copy(), y.copy()
    for name in impl_names("cosine_similarity", 13):
        _close(fastla.cosine_similarity(x, y, backend=name), _ref_matrix(x0, y0), dtype, 9)
        res = fastla.cosine_similarity(x, backend=name)
        np.testing.assert_array_equal(res, res.T)
        s, _ = fastla.cosine_topk(y, x, 3, backend=name)
        _close(s, np.sort(_ref_matrix(y0, x0), axis=1)[:, ::-1][:, :3], dtype, 9)
    np.testing.assert_array_equal(x, kx)
    np.testing.assert_array_equal(y, ky)


def test_extreme_scales_do_not_overflow(dtype, rng):
    big, small = (1e200, 1e-200) if dtype == np.float64 else (1e30, 1e-30)
    x = rng.standard_normal((5, 16)).astype(dtype)
    y = rng.standard_normal((4, 16)).astype(dtype)
    xs = x.copy()
    xs[1] *= dtype(big)
    xs[2] *= dtype(small)
    expected = _ref_matrix(x, y)
    for name in impl_names("cosine_similarity", 5):
        _close(fastla.cosine_similarity(xs, y, backend=name), expected, dtype, 16)


def _ref_rescaled(x, y):
    """The reference over the whole float range: each row divided by its max |x| (in float64) before
    it is normalised (cosine is scale-invariant per row; zero rows stay zero)."""

    def unit(a):
        a = np.asarray(a, np.float64)
        mx = np.abs(a).max(axis=1, keepdims=True) if a.shape[1] else np.zeros((len(a), 1))
        a = a / np.where(mx > 0, mx, 1)
        nrm = np.linalg.norm(a, axis=1, keepdims=True)
        return a / np.where(nrm > 0, nrm, 1)

    return unit(x) @ unit(y).T


def _range_rows(dtype, rng, n, d):
    """Rows at every scale of the dtype: subnormal, tiny, normal, huge, near overflow, mixed in one
    matrix, plus a zero row."""
    fi = np.finfo(dtype)
    base = rng.standard_normal((n, d))
    base /= np.abs(base).max(axis=1, keepdims=True)  # max |x| = 1 per row
    scales = [fi.smallest_subnormal * 7, fi.smallest_normal / 3, fi.smallest_normal * 5, 1e-3, 1.0, 1e3]
    scales += [float(fi.max) ** 0.5 * 4, float(fi.max) / 2, float(fi.max) / d, 1.0]
    x = np.stack([base[i] * scales[i % len(scales)] for i in range(n)]).astype(dtype)
    x[n // 2] = 0
    return x


@pytest.mark.parametrize("symmetric", [False, True])
def test_exact_over_the_whole_float_range(symmetric, dtype, rng):
    d = 9
    x = _range_rows(dtype, rng, 23, d)
    y = x if symmetric else _range_rows(dtype, rng, 17, d)[::-1].copy()
    expected = _ref_rescaled(x, y)
    for name in impl_names("cosine_similarity", 23):
        res = fastla.cosine_similarity(x, None if symmetric else y, backend=name)
        assert np.all(np.isfinite(res)), name
        _close(res, expected, dtype, d)
        assert np.all(res[23 // 2] == 0), name


def test_subnormal_examples_from_the_issue():
    for name in impl_names("cosine_similarity", 2):
        res = fastla.cosine_similarity(np.array([[1e-320]]), np.array([[0.04], [0.8]]), backend=name)
        np.testing.assert_allclose(res, [[1.0, 1.0]], rtol=4 * eps(np.float64))
        x, y = np.array([[1.47], [1e-320]]), np.array([[-198.2], [1e-320]])
        res = fastla.cosine_similarity(x, y, backend=name)
        np.testing.assert_allclose(res, [[-1.0, 1.0], [-1.0, 1.0]], rtol=4 * eps(np.float64))
        res = fastla.cosine_similarity(np.array([[1.7e308, 1.7e308]]), np.array([[1.0, 1.0]]), backend=name)
        np.testing.assert_allclose(res, [[1.0]], rtol=1e-15)


def test_topk_exact_over_the_whole_float_range(dtype, rng, topk_path):
    """Queries and corpus rows at every scale; a single query too (the streaming kernel scores one
    query in its norm pass)."""
    d = 9
    q = _range_rows(dtype, rng, 12, d)
    c = _range_rows(dtype, rng, 40, d)
    for qs in (q, q[4:5], q[9:10]):
        full = _ref_rescaled(qs, c)
        for name in impl_names("cosine_topk", 40):
            scores, idx = fastla.cosine_topk(qs, c, 5, backend=name)
            ref = np.take_along_axis(full, idx, axis=1)
            _close(scores, ref, dtype, d)
            # the chosen rows are the best ones: the k-th score is the k-th largest of the reference
            kth = -np.sort(-full, axis=1)[:, 4]
            assert np.all(ref[:, 4] >= kth - 16 * d * eps(dtype)), name


def test_nan_and_inf_propagate_rowwise(dtype, rng):
    x = rng.standard_normal((4, 6)).astype(dtype)
    y = rng.standard_normal((3, 6)).astype(dtype)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    expected = _ref_matrix(np.delete(x, [1, 2], axis=0), y)
    for name in impl_names("cosine_similarity", 4):
        res = fastla.cosine_similarity(x, y, backend=name)
        assert np.isnan(res[1]).all() and np.isnan(res[2]).all(), name
        _close(res[[0, 3]], expected, dtype, 6)
        sym = fastla.cosine_similarity(x, backend=name)
        assert np.isnan(sym[1, 1]) and np.isnan(sym[0, 1]) and sym[0, 0] == 1


def test_dtype_rules(rng):
    xi = rng.integers(-5, 5, (6, 4))
    assert fastla.cosine_similarity(xi).dtype == np.float64
    x32 = xi.astype(np.float32)
    assert fastla.cosine_similarity(x32, xi).dtype == np.float64
    assert fastla.cosine_similarity(x32, x32.astype(np.float16)).dtype == np.float32
    assert fastla.cosine_similarity(x32.astype(np.float16)).dtype == np.float32
    with pytest.raises(TypeError):
        fastla.cosine_similarity(xi.astype(complex))
    # longdouble computes in float64, as sklearn and scipy.spatial.distance convert it
    xl = (xi + rng.random(xi.shape)).astype(np.longdouble)
    expected = _ref_matrix(xl, xl)
    for name in impl_names("cosine_similarity"):
        res = fastla.cosine_similarity(xl, xl[:4], backend=name)
        assert res.dtype == np.float64, name
        _close(res, expected[:, :4], np.float64, 4)
        out = np.zeros((6, 6), np.longdouble)
        assert fastla.cosine_similarity(xl, out=out, backend=name) is out
        _close(out.astype(np.float64), expected, np.float64, 4)
    for name in impl_names("cosine_topk"):
        scores, index = fastla.cosine_topk(xl[:2], xl, k=3, backend=name)
        assert scores.dtype == np.float64, name
        _close(scores, -np.sort(-expected[:2], axis=1)[:, :3], np.float64, 4)
        np.testing.assert_array_equal(index, np.argsort(-expected[:2], axis=1, kind="stable")[:, :3])
    with pytest.raises(TypeError):
        fastla.cosine_similarity(np.array([["a"]]))


def _sparse(rng, n, d, dtype, fmt):
    sp = pytest.importorskip("scipy.sparse")
    a = np.where(rng.random((n, d)) < 0.3, rng.standard_normal((n, d)), 0).astype(dtype)
    a[1] = 0  # a zero row
    a[2] *= 1e300 if dtype == np.float64 else 1e30  # rows far from 1 in scale: exact all the same
    a[3] *= 1e-300 if dtype == np.float64 else 1e-30
    return sp.csr_array(a).asformat(fmt), a


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_operands_as_scikit_learn_takes_them(dtype, fmt, rng):
    """SciPy sparse X and/or Y (a drop-in for scikit-learn's cosine_similarity, which takes them):
    the dense result of the same rows, in the operands' float dtype; ``dense_output=False`` with
    both sparse gives a sparse result; Y=None has the dense form's exact unit diagonal."""
    sp = pytest.importorskip("scipy.sparse")
    X, xd = _sparse(rng, 9, 6, dtype, fmt)
    Y, yd = _sparse(rng, 5, 6, dtype, fmt)
    for x, y, dense in ((X, Y, (xd, yd)), (X, yd, (xd, yd)), (xd, Y, (xd, yd)), (X, None, (xd, None))):
        got = fastla.cosine_similarity(x, y)
        assert type(got) is np.ndarray and got.dtype == dtype
        # the dense path (exact over the whole float range: tested above) on the same rows
        _close(got, fastla.cosine_similarity(*dense, backend="numpy"), dtype, 6)
    np.testing.assert_array_equal(np.diag(fastla.cosine_similarity(X)), (np.abs(xd).sum(1) > 0).astype(dtype))
    for y in (Y, None):
        got = fastla.cosine_similarity(X, y, dense_output=False)
        assert sp.issparse(got) and got.dtype == dtype
        _close(got.toarray(), fastla.cosine_similarity(X, y), dtype, 6)
    big = sp.csr_array(X)  # 64-bit indices, as a matrix past 2^31 stored entries has them
    big.indices, big.indptr = big.indices.astype(np.int64), big.indptr.astype(np.int64)
    np.testing.assert_array_equal(fastla.cosine_similarity(big, Y), fastla.cosine_similarity(X, Y))
    out = np.full((9, 5), np.nan, dtype)
    assert fastla.cosine_similarity(X, Y, out=out) is out
    _close(out, fastla.cosine_similarity(xd, yd), dtype, 6)
    assert fastla.explain("cosine_similarity", X, Y)[0] == "numpy"
    with pytest.raises(ValueError, match="dense result"):
        fastla.cosine_similarity(X, Y, False, out=out)
    with pytest.raises(ValueError, match="must be 2-D"):
        fastla.cosine_similarity(X, yd[0])
    with pytest.raises(ValueError, match="incompatible dimension"):
        fastla.cosine_similarity(X, X.T)
    for name in set(impl_names("cosine_similarity")) - {"numpy"}:
        with pytest.raises(TypeError, match="sparse"):
            fastla.cosine_similarity(X, Y, backend=name)
    sklearn = pytest.importorskip("sklearn.metrics.pairwise")
    X, Y = (_sparse(rng, n, 6, dtype, fmt)[1][4:] for n in (13, 9))  # scikit-learn's range (no 1e300)
    X, Y = sp.csr_array(X).asformat(fmt), sp.csr_array(Y).asformat(fmt)
    for y in (Y, None):
        np.testing.assert_allclose(
            fastla.cosine_similarity(X, y), sklearn.cosine_similarity(X, y), rtol=1e-5, atol=1e-6
        )
    # a sparse result is scikit-learn's type, a csr_matrix (whose * is the matrix product), for
    # sparse matrices and sparse arrays alike (it was a csr_array)
    for x, y in ((X, Y), (sp.csr_matrix(X), sp.csr_matrix(Y)), (sp.coo_matrix(X), Y)):
        for y_ in (y, None):
            want = sklearn.cosine_similarity(x, y_, dense_output=False)
            got = fastla.cosine_similarity(x, y_, dense_output=False)
            assert type(got) is type(want) is sp.csr_matrix
            np.testing.assert_allclose(got.toarray(), want.toarray(), rtol=1e-5, atol=1e-6)


def test_errors_and_out(rng):
    x = rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 5\)"):
        fastla.cosine_similarity(x, np.ones((2, 5)))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        fastla.cosine_similarity(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="shape"):
        fastla.cosine_similarity(x, out=np.empty((3, 4)))
    for name in impl_names("cosine_similarity", 3):
        out = np.empty((3, 3), np.float64)
        assert fastla.cosine_similarity(x, out=out, backend=name) is out
        _close(out, _ref_matrix(x, x), np.float64, 4)
        out_t = np.empty((3, 3), np.float64).T  # not C-contiguous: filled by a copy
        assert fastla.cosine_similarity(x, x[:3], out=out_t, backend=name) is out_t
        _close(out_t, _ref_matrix(x, x), np.float64, 4)
        out1 = np.empty(3, np.float32)
        assert fastla.cosine_similarity(x[0], x, out=out1, backend=name) is out1


def test_auto_rule():
    small = np.ones((4, 4))
    big = np.ones((400, 256))
    assert fastla.explain("cosine_similarity", small)[0] == "numpy"
    assert fastla.explain("cosine_similarity", big, big)[0] == (
        "numba" if fastla._jit.NUMBA_AVAILABLE else "numpy"
    )
    assert fastla.explain("cosine_topk", big, big, 5)[0] == (
        "numba" if fastla._jit.NUMBA_AVAILABLE else "numpy"
    )


# --------------------------------------------------------------------------- top-k


@pytest.mark.parametrize(
    "nq,nc,d,k", [(1, 1, 1, 1), (7, 33, 5, 3), (33, 200, 65, 10), (9, 150, 300, 150), (5, 40, 8, 0)]
)
def test_topk_against_reference(nq, nc, d, k, dtype, rng, topk_path):
    q = rng.standard_normal((nq, d)).astype(dtype)
    c = rng.standard_normal((nc, d)).astype(dtype)
    s_ref, i_ref, full = _ref_topk(q, c, k)
    for name in impl_names("cosine_topk", 40 if nq * nc <= 2000 else 99):
        s, i = fastla.cosine_topk(q, c, k, backend=name)
        assert s.shape == i.shape == (nq, k) and s.dtype == dtype and i.dtype == np.intp
        _close(s, s_ref, dtype, d)
        # each index is a real row whose score is the reported one, and no row repeats
        _close(np.take_along_axis(full, i, axis=1), s, dtype, d)
        assert all(len(set(r)) == k for r in i.tolist())
        if dtype == np.float64:
            np.testing.assert_array_equal(i, i_ref)


def test_topk_blocking_bounds():
    """The fused top-k's tiles: whole micro-tiles, each thread's score block and the shared packed
    corpus tile within their budgets (unless one micro-tile column is already over), and the score
    block wide enough that a tile's fixed costs (two parallel launches, the query blocks packed
    again) stay rare: at least half of what the budgets and the corpus's rows allow."""
    cases = [
        (1000, 10**5, 256, 4, 2),
        (65, 10**5, 256, 4, 2),
        (1000, 10**5, 4096, 4, 2),
        (300, 10**5, 16, 8, 2),
        (10**5, 10**6, 50_000, 8, 16),
        (7, 10, 3, 4, 1),
        (500, 3000, 64, 4, 2),
    ]
    for nq, m, d, itemsize, threads in cases:
        blk = fastla._gemm_kernels.BLOCKING[np.dtype(f"f{itemsize}")]
        mc, tn = similarity._topk_blocking(nq, m, d, itemsize, threads)
        assert mc % blk.MR == 0 and tn % blk.NR == 0 and tn >= blk.NR, (nq, d, mc, tn)
        assert mc * tn * itemsize <= similarity.TOPK_SCORE_BLOCK_BYTES or tn == blk.NR
        assert tn * d * itemsize <= similarity.TOPK_TILE_BYTES or tn == blk.NR
        assert tn <= m or tn == blk.NR, (nq, m, tn)
        wide = min(
            similarity.TOPK_SCORE_BLOCK_BYTES / mc / itemsize, similarity.TOPK_TILE_BYTES / d / itemsize, m
        )
        assert tn >= min(wide / 2, wide - blk.NR) or tn == blk.NR, (nq, d, mc, tn)


@pytest.mark.parametrize("k", [1, 5, 70])
def test_topk_across_many_tiles(k, dtype, rng, monkeypatch):
    """Tiny tiles: tile edges, and a k larger than one tile (the first-k fill spans tiles)."""
    blk = fastla._gemm_kernels.BLOCKING[np.dtype(dtype)]
    monkeypatch.setattr(similarity, "_topk_blocking", lambda nq, m, d, it, th: (blk.MR, blk.NR))
    _packed_topk(monkeypatch)
    q = rng.standard_normal((2 * blk.MR + 1, 12)).astype(dtype)
    c = rng.standard_normal((max(5 * blk.NR, 2 * k) + 3, 12)).astype(dtype)  # NR is 8 on AVX2
    s_ref, i_ref, _ = _ref_topk(q, c, k)
    s, i = fastla.cosine_topk(q, c, k, backend="numba")
    _close(s, s_ref, dtype, 12)
    if dtype == np.float64:
        np.testing.assert_array_equal(i, i_ref)


@pytest.mark.parametrize("threads", [1, 3])
def test_topk_stream_tiles_and_thread_shares(threads, dtype, rng, monkeypatch):
    """The streaming kernel with tiles of 4 corpus rows (edges, a k spanning tiles and thread shares,
    a share of fewer than k rows) and 1 or 3 thread shares, merged across shares."""
    monkeypatch.setattr(similarity, "_STREAM_TILE", 4)
    monkeypatch.setattr(fastla._jit, "threads_here", lambda: threads)
    for nq, nc, k in ((5, 23, 6), (3, 7, 7), (1, 2, 1), (6, 40, 1)):
        q = rng.standard_normal((nq, 9)).astype(dtype)
        c = rng.standard_normal((nc, 9)).astype(dtype)
        c[nc // 2] = c[1]  # an exact tie across thread shares: the lower index first
        s_ref, i_ref, _ = _ref_topk(q, c, k)
        s, i = fastla.cosine_topk(q, c, k, backend="numba")
        _close(s, s_ref, dtype, 9)
        if dtype == np.float64:
            np.testing.assert_array_equal(i, i_ref, err_msg=f"{nq}x{nc} k={k}")


def test_several_kc_blocks(dtype, rng, monkeypatch):
    """d spanning several rank-KC updates on every SIMD width (KC shrunk to 8: the default KC is
    256-384, more than most tests' d): the accumulation over KC blocks of the cosine matrix and of the
    fused top-k. Both d in one test: as two tests on two pytest-xdist workers, the pass with another
    SIMD width's shapes (uncached) compiled the same kernels in both."""
    for blk in fastla._gemm_kernels.BLOCKING.values():
        monkeypatch.setattr(blk, "KC", 8)
    _packed_topk(monkeypatch)
    for d in (23, 100):
        q = rng.standard_normal((13, d)).astype(dtype)
        c = rng.standard_normal((70, d)).astype(dtype)
        s_ref, i_ref, full = _ref_topk(q, c, 5)
        _close(fastla.cosine_similarity(q, c, backend="numba"), full, dtype, d)
        _close(fastla.cosine_similarity(q, backend="numba"), _ref_matrix(q, q), dtype, d)
        s, i = fastla.cosine_topk(q, c, 5, backend="numba")
        _close(s, s_ref, dtype, d)
        if dtype == np.float64:
            np.testing.assert_array_equal(i, i_ref, err_msg=f"d={d}")


def test_topk_ties_and_nan_order_exactly(dtype, rng, topk_path):
    """Duplicate corpus rows tie exactly (one-hot rows): lower index first; NaN rows come last."""
    d = 6
    hot = rng.integers(0, d, 60)
    c = np.zeros((60, d), dtype)
    c[np.arange(60), hot] = 2.0 ** rng.integers(-3, 4, 60)
    c[7] = np.nan
    c[11] = 0  # zero row: score 0
    q = rng.standard_normal((5, d)).astype(dtype)
    q[4] = np.nan  # every score NaN: the first k rows, in index order
    s_ref, i_ref, _ = _ref_topk(q, c, 60)
    for name in impl_names("cosine_topk", 40):
        for k in (1, 13, 60):
            s, i = fastla.cosine_topk(q, c, k, backend=name)
            np.testing.assert_array_equal(i, i_ref[:, :k], err_msg=name)
            _close(s, s_ref[:, :k], dtype, d)
        assert fastla.cosine_topk(q, c, 60, backend=name)[1][0, -1] == 7  # NaN ranks last


def test_topk_ties_across_merge_chunks(dtype, rng, topk_path):
    """Exact ties (one-hot rows: every score is one of 4 values) and NaN rows spread over a corpus
    several times longer than the fused merge's chunk of scores, which it skips when no score in it
    beats the k-th best: the same order as the reference, lower index first."""
    d, n = 4, 700
    c = np.zeros((n, d), dtype)
    c[np.arange(n), rng.integers(0, d, n)] = 1.0
    c[[5, 150, 390, 699]] = np.nan
    _topk_order_exactly(rng.standard_normal((3, d)).astype(dtype), c, (1, 7, 200))


def _topk_order_exactly(q, c, ks):
    """Every impl's top-k of ``q`` over ``c`` for each ``k`` in ``ks``: the reference's indices in
    its order, its scores to the tolerance."""
    s_ref, i_ref, _ = _ref_topk(q, c, max(ks))
    for name in impl_names("cosine_topk", c.shape[0]):
        for k in ks:
            s, i = fastla.cosine_topk(q, c, k, backend=name)
            np.testing.assert_array_equal(i, i_ref[:, :k], err_msg=name)
            _close(s, s_ref[:, :k], c.dtype, c.shape[1])


def test_topk_nan_rows_first_in_the_corpus_give_way(dtype, rng, topk_path):
    """NaN rows at the corpus's start fill a query's first candidates (they enter unconditionally),
    and the rows after them must displace them: every number ranks above NaN."""
    d, n = 5, 700
    c = rng.standard_normal((n, d)).astype(dtype)
    c[:12] = np.nan
    _topk_order_exactly(rng.standard_normal((3, d)).astype(dtype), c, (1, 7, 40))


@_jit.jit
def _rank_sort(s, idx, m):
    """The kernel (compiled without a Python wrapper) from compiled code."""
    _intrinsics.call_out_of_line(similarity._rank_sort, (s, idx, m))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_sort_orders_by_the_ranking_rule(dtype, rng):
    """The packed top-k's final sort (a radix sort of score keys and indices; an insertion sort for
    up to ``_RANK_INSERTION`` entries) against Python's sort by the rule: decreasing score, NaN
    last, ties (0.0 and -0.0 too) to the lower index."""
    values = np.array([0.0, -0.0, 1.5, -1.5, np.inf, -np.inf, np.nan, 1e-300, -1e-300, 2.0, -2.0], dtype)
    m = 400
    s = rng.choice(values, m).astype(dtype)
    s[::3] = rng.standard_normal(len(s[::3])).astype(dtype)
    idx = rng.permutation(5 * m)[:m].astype(np.intp)
    few = similarity._RANK_INSERTION

    def rank(p):
        return (np.isnan(s[p]), -s[p] if not np.isnan(s[p]) else 0, idx[p])

    for count in (m, few + 1, few, 10, 2, 1, 0):
        order = sorted(range(count), key=rank)
        got_s, got_i = s.copy(), idx.copy()
        _rank_sort(got_s, got_i, count)
        np.testing.assert_array_equal(got_i[:count], idx[order])
        np.testing.assert_array_equal(got_s[:count], s[order])
        assert (got_i[count:] == idx[count:]).all()


@_jit.jit
def _kth_and_sorted(a, kth, lo, hi):
    b = np.empty_like(a)
    value = similarity._kth_smallest(a.copy(), b, a.size, kth)
    s = a.copy()
    similarity._shell_sort(s, lo, hi)
    return value, s


def test_kth_smallest_and_the_shell_sort_it_ends_with(rng):
    """The compaction's selection (:func:`similarity._kth_smallest`) against ``np.partition`` on
    distinct, heavily tied, sorted and reversed int64 values, every k; the shell sort it finishes
    with (and falls back on after a run of bad pivots) sorts exactly ``a[lo:hi]``, long ranges
    (every gap) and short."""
    for trial in range(60):
        n = int(rng.integers(1, 3000))
        a = rng.integers(-(2**62), 2**62, n) if trial % 3 else rng.integers(-3, 3, n)
        if trial % 5 == 4:
            a = np.sort(a)[:: 1 if trial % 2 else -1].copy()
        kth = int(rng.integers(0, n))
        lo, hi = sorted(int(x) for x in rng.integers(0, n + 1, 2))
        value, s = _kth_and_sorted(a, kth, lo, hi)
        assert value == np.partition(a, kth)[kth], (n, kth)
        want = a.copy()
        want[lo:hi] = np.sort(a[lo:hi])
        np.testing.assert_array_equal(s, want)


@_jit.jit
def _select(s, idx, n, k):
    similarity._select_best(s, idx, n, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_select_best_keeps_the_best_k_by_the_ranking_rule(dtype, rng):
    """A candidate pool's compaction (:func:`similarity._select_best`): its first ``k`` entries
    become the best ``k`` of the first ``n`` (decreasing score, NaN last, ties, 0.0 and -0.0 too,
    to the lower index; pools of distinct indices in any order), the ``k``-th best at ``k - 1``,
    each score with its index; the entries past ``n`` untouched. Continuous, tied, sorted and
    reversed scores (a median-of-three pivot's bad cases), small and large pools, k from 1 to n."""
    values = np.array([0.0, -0.0, 1.5, -1.5, np.inf, -np.inf, np.nan, 2.0], dtype)
    for trial in range(120):
        n = int(rng.integers(1, 40 if trial % 3 else 2500))
        k = int(rng.integers(1, n + 1)) if trial % 5 else n
        kind = trial % 4
        if kind == 0:
            s = rng.standard_normal(n)
        elif kind == 1:
            s = rng.choice(values, n)
        elif kind == 2:
            s = rng.integers(-2, 3, n).astype(float)  # long runs of ties
        else:
            s = np.sort(rng.standard_normal(n))[:: 1 if trial % 8 < 4 else -1]
        s = s.astype(dtype)
        idx = rng.permutation(10 * n)[:n].astype(np.intp)
        rank = sorted(range(n), key=lambda p: (np.isnan(s[p]), 0 if np.isnan(s[p]) else -s[p], idx[p]))
        got_s = np.concatenate([s, np.full(3, 9, dtype)])
        got_i = np.concatenate([idx, np.full(3, -5, np.intp)])
        _select(got_s, got_i, n, k)
        assert sorted(got_i[:k]) == sorted(idx[rank[:k]]), (n, k, kind)
        assert got_i[k - 1] == idx[rank[k - 1]], (n, k, kind)
        where = {v: p for p, v in enumerate(idx)}
        np.testing.assert_array_equal(got_s[:k], s[[where[v] for v in got_i[:k]]])
        assert (got_i[n:] == -5).all() and (got_s[n:] == 9).all()


def test_topk_corpus_norms(dtype, rng, topk_path):
    """Given corpus norms give the scores of the computed ones, over the whole float range (the norms
    np.linalg.norm gives there are 0, inf or subnormal: those rows are measured again), and they are
    really used: a norm given twice too large halves that row's scores (numpy, and numba's packed
    kernel; the loop impl and the streaming kernel measure the norms themselves)."""
    d = 9
    q = _range_rows(dtype, rng, 12, d)
    c = _range_rows(dtype, rng, 40, d)
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(c, axis=1)
    assert not np.all(np.isfinite(norms) & (norms > 0))  # the fallback is exercised
    full = _ref_rescaled(q, c)
    for name in impl_names("cosine_topk", 40):
        scores, idx = fastla.cosine_topk(q, c, 5, corpus_norms=norms, backend=name)
        _close(scores, np.take_along_axis(full, idx, axis=1), dtype, d)
        np.testing.assert_array_equal(idx, fastla.cosine_topk(q, c, 5, backend=name)[1])
    x = rng.standard_normal((6, d)).astype(dtype)
    y = rng.standard_normal((30, d)).astype(dtype)
    good = np.linalg.norm(y.astype(np.float64), axis=1)
    wrong = good.copy()
    wrong[3] *= 2
    for name in impl_names("cosine_topk", 30):
        if name == "loop" or (name == "numba" and topk_path == "stream"):
            continue  # these measure the norms themselves
        s_good, i_good = fastla.cosine_topk(x, y, 30, corpus_norms=good, backend=name)
        s_wrong, i_wrong = fastla.cosine_topk(x, y, 30, corpus_norms=wrong, backend=name)
        row3 = lambda s, i: np.take_along_axis(s, np.argsort(i, axis=1), axis=1)[:, 3]  # noqa: E731
        _close(row3(s_wrong, i_wrong), row3(s_good, i_good) / 2, dtype, d)


def _topk_peak_bytes(q, c, k):
    """Peak bytes the numba top-k allocates for ``(q, c, k)`` (tracemalloc sees all of it: every
    buffer of the compiled path is NumPy's), compiled on a small call first."""
    fastla.cosine_topk(q, c[:100], 3, backend="numba")  # the same kernel compiled (or loaded) first
    tracemalloc.start()
    try:
        fastla.cosine_topk(q, c, k, backend="numba")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _half_corpus(rng, n, d):
    """A float16 corpus with the rows that take the kernels' other branches: a zero row, inf and NaN
    rows, subnormal and largest-magnitude values, and an exact duplicate (a tie)."""
    c = rng.standard_normal((n, d)).astype(np.float16)
    c[1] = 0
    c[2, 0] = np.inf
    c[3, 1] = np.nan
    c[4] = np.float16(6e-8) * np.sign(rng.standard_normal(d)).astype(np.float16)  # subnormal
    c[5, :3] = np.float16(65504)
    c[n - 1] = c[6]
    return c


@pytest.mark.parametrize("threads", [1, 3])
def test_topk_float16_corpus_block_edges(threads, rng, topk_path, monkeypatch):
    """A float16 corpus searched in float32 is read as float16 by the numba kernels (streamed, and
    packed: d not a multiple of the 16-deep float16 packing chunk, several rank-KC blocks with KC
    shrunk to 8, corpus tiles and thread shares with edges) and gives *exactly* the results of the
    same search over its float32 copy, with or without given norms, from float32 or float16 queries.
    The other impls convert it and agree with the reference; the corpus comes back unchanged."""
    monkeypatch.setattr(fastla._jit, "threads_here", lambda: threads)
    monkeypatch.setattr(similarity, "_STREAM_TILE", 8)
    for d, kc in ((37, None), (23, 8)):
        if kc:
            for blk in fastla._gemm_kernels.BLOCKING.values():
                monkeypatch.setattr(blk, "KC", kc)
        c16 = _half_corpus(rng, 301, d)
        before = c16.copy()
        c32 = c16.astype(np.float32)
        q = rng.standard_normal((9, d)).astype(np.float32)
        with np.errstate(over="ignore"):
            norms = np.linalg.norm(c32, axis=1)
        for queries in (q, q[:1], q.astype(np.float16)):
            for kw in ({}, {"corpus_norms": norms}):
                s16, i16 = fastla.cosine_topk(queries, c16, 12, backend="numba", **kw)
                s32, i32 = fastla.cosine_topk(queries, c32, 12, backend="numba", **kw)
                assert s16.dtype == np.float32
                np.testing.assert_array_equal(s16, s32)
                np.testing.assert_array_equal(i16, i32)
        s_ref, _, full = _ref_topk(q, c32, 12)
        for name in impl_names("cosine_topk", 301):
            s, i = fastla.cosine_topk(q, c16, 12, backend=name)
            _close(s, s_ref, np.float32, d)
            _close(s, np.take_along_axis(full, i, axis=1), np.float32, d)  # the scores of those rows
            np.testing.assert_array_equal(c16, before)
    assert fastla.cosine_topk(q.astype(np.float64), c16, 3)[0].dtype == np.float64  # float64 search


def test_topk_large_k_merges_exactly(rng, topk_path):
    """A k large enough that most merged chunks hold scores above the k-th best, so the merge
    appends whole chunks without a branch where the pool has room and one score at a time where it
    does not; exact ties (repeated rows, corpus order ascending and descending) across chunks."""
    base = rng.standard_normal((40, 6))
    c = base[rng.integers(0, 40, 1500)]  # every row repeated: ties everywhere
    c[::7] = rng.standard_normal((len(c[::7]), 6))
    q = rng.standard_normal((3, 6))
    for corpus in (c, c[::-1].copy()):
        for k in (33, 100, 180):
            s_ref, i_ref, _ = _ref_topk(q, corpus, k)
            s, i = fastla.cosine_topk(q, corpus, k, backend="numba")
            _close(s, s_ref, np.float64, 6)
            np.testing.assert_array_equal(i, i_ref, err_msg=f"k={k}")


def test_topk_float16_corpus_exact_at_full_vector_widths(rng, topk_path):
    """The float16 corpus's exact agreement with its float32 copy where the row loops run whole
    vectors and their interleaved accumulators (d of 64 and 256), one query (scored in the norm pass)
    and several."""
    rows = 1500 if fastla._jit.JIT_ENABLED else 60  # the kernels as Python: a few rows
    for d in (64, 256):
        c16 = rng.standard_normal((rows, d)).astype(np.float16)
        c32 = c16.astype(np.float32)
        for nq in (1, 5):
            q = rng.standard_normal((nq, d)).astype(np.float32)
            s16, i16 = fastla.cosine_topk(q, c16, 20, backend="numba")
            s32, i32 = fastla.cosine_topk(q, c32, 20, backend="numba")
            np.testing.assert_array_equal(s16, s32, err_msg=f"d={d} nq={nq}")
            np.testing.assert_array_equal(i16, i32, err_msg=f"d={d} nq={nq}")


@pytest.mark.slow
def test_topk_float16_corpus_is_not_copied(rng):
    """The numba impl reads a float16 corpus in place: the call allocates far less than the float32
    copy that converting it would take (tracemalloc sees every allocation of the compiled path)."""
    c = rng.standard_normal((120_000, 64)).astype(np.float16)  # 15 MB: its scratch is a few MB
    for nq in (1, 200):  # streamed, packed
        peak = _topk_peak_bytes(rng.standard_normal((nq, 64)).astype(np.float32), c, 10)
        assert peak < c.nbytes / 2, (nq, peak, c.nbytes)


def test_topk_corpus_norms_errors(rng):
    c = rng.standard_normal((20, 4))
    with pytest.raises(ValueError, match=r"shape \(n_corpus,\) = \(20,\)"):
        fastla.cosine_topk(c, c, 2, corpus_norms=np.ones(19))
    with pytest.raises(ValueError, match=">= 0"):
        fastla.cosine_topk(c, c, 2, corpus_norms=-np.ones(20))
    with pytest.raises(TypeError, match="real numbers"):
        fastla.cosine_topk(c, c, 2, corpus_norms=np.ones(20, complex))
    norms = np.linalg.norm(c, axis=1)
    before = norms.copy()
    fastla.cosine_topk(c, c, 2, corpus_norms=norms)
    np.testing.assert_array_equal(norms, before)  # not mutated


def test_topk_sparse_operands_select_as_the_dense_scores_do(dtype, rng):
    """SciPy sparse queries or corpus (either or both, any format) give the dense operands' exact
    top-k: the same indices (ties to the lower index: duplicate and all-zero corpus rows; NaN last)
    and scores, in batches and with ``corpus_norms``; a 1-D dense query against a sparse corpus; the
    inputs untouched; a compiled backend refuses them by name (it was "queries must be 1-D or 2-D,
    got shape ()": a sparse matrix taken as a 0-d object array)."""
    sp = pytest.importorskip("scipy.sparse")
    c = sp.random(90, 16, density=0.2, random_state=5, format="lil", dtype=dtype)
    c[10] = c[3]  # a duplicate row: tied scores
    c[20:24] = 0  # zero rows: score 0, tied with every orthogonal row
    c[30, 2] = np.nan  # a NaN row: last
    c = c.tocsr()
    q = sp.random(12, 16, density=0.3, random_state=6, format="csc", dtype=dtype)
    cd, qd = c.toarray(), q.toarray()
    keep = (c.copy(), q.copy())
    norms = np.linalg.norm(cd, axis=1)
    for kw in ({}, {"batch_size": 5}, {"corpus_norms": norms}):
        ref_s, ref_i = fastla.cosine_topk(qd, cd, 8, backend="numpy", **kw)
        for pair in ((q, c), (qd, c), (q, cd)):
            s, i = fastla.cosine_topk(*pair, 8, **kw)
            assert s.dtype == dtype and i.shape == (12, 8)
            np.testing.assert_array_equal(i, ref_i)
            _close(s, ref_s, dtype, 8)
    s, i = fastla.cosine_topk(qd[0], c, 4)
    np.testing.assert_array_equal(i, fastla.cosine_topk(qd[0], cd, 4, backend="numpy")[1])
    for before, after in zip(keep, (c, q), strict=True):
        np.testing.assert_array_equal(before.toarray(), after.toarray())
    assert fastla.explain("cosine_topk", q, c, 3)[0] == "numpy"
    with pytest.raises(TypeError, match="cannot run this input"):
        fastla.cosine_topk(q, c, 3, backend="numba")
    with pytest.raises(ValueError, match="incompatible dimension"):
        fastla.cosine_topk(q[:, :5], c, 3)


def _rank_reference(scores, k):
    """The top-k rule by a full sort of each row: decreasing score, NaN last, ties to the lower
    column (0.0 and -0.0 tie)."""
    cols = np.arange(scores.shape[1])
    nan = np.isnan(scores)
    idx = np.array([np.lexsort((cols, np.where(n, 0, -r), n))[:k] for r, n in zip(scores, nan, strict=True)])
    return np.take_along_axis(scores, idx.reshape(len(scores), k), axis=1), idx.reshape(len(scores), k)


@pytest.mark.parametrize("case", ["normal", "ties", "nan", "inf", "zeros"])
def test_numpy_selection_is_the_ranking_rule(case, rng):
    """The numpy top-k's selection of each block of scores, every way it takes: long rows through the
    class-maximum bound and an exact sort of the scores above it, short rows (or large k) through
    ``argpartition``, small blocks (up to ``SORT_MAX_SCORES`` scores: 6 x 341, not 6 x 342) by one
    sort; NaN rows in a block of others, heavy ties at the k-th score, +-inf, -0.0."""
    assert 6 * 341 <= similarity.SORT_MAX_SCORES < 6 * 342
    cases = [(700, 1), (700, 7), (700, 40), (5000, 3), (20000, 50), (20000, 1000), (64, 1), (65, 64)]
    for n, k in [*cases, (341, 3), (342, 3), (342, 342)]:
        s = rng.standard_normal((6, n))
        if case == "ties":
            s = rng.integers(-3, 3, (6, n)).astype(np.float64)
        elif case == "nan":
            s[1, rng.integers(0, n, 3)] = np.nan
            s[4] = np.nan
        elif case == "inf":
            s[rng.random(s.shape) < 0.01] = -np.inf
            s[2, :] = -np.inf
            s[3, rng.integers(0, n, 2)] = np.inf
        elif case == "zeros":
            s = np.zeros((6, n))
            s[:, ::7] = -0.0
            s[0, rng.integers(0, n, 3)] = 1.0
        for x in (s, s.astype(np.float32)):
            want_s, want_i = _rank_reference(x, k)
            got_s, got_i = similarity._select_numpy(x, k)
            np.testing.assert_array_equal(got_i, want_i, err_msg=f"{case} n={n} k={k} {x.dtype}")
            np.testing.assert_array_equal(got_s, want_s)


def test_topk_numpy_batches_agree(rng):
    q = rng.standard_normal((10, 5))
    c = rng.standard_normal((30, 5))
    ref = fastla.cosine_topk(q, c, 4, backend="numpy")
    for bs in (1, 3, 100):
        s, i = fastla.cosine_topk(q, c, 4, batch_size=bs, backend="numpy")
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_allclose(s, ref[0], rtol=1e-14)  # BLAS gemv (one row) rounds differently


def test_topk_shapes_and_errors(rng, topk_path):
    c = rng.standard_normal((20, 4))
    for name in impl_names("cosine_topk", 20):
        s, i = fastla.cosine_topk(c[3], c, 2, backend=name)
        assert s.shape == i.shape == (2,) and i[0] == 3
        s, i = fastla.cosine_topk(np.empty((0, 4)), c, 2, backend=name)
        assert s.shape == (0, 2)
        s, i = fastla.cosine_topk(c[:2], c, 20, backend=name)
        assert sorted(i[0]) == list(range(20))
        s, i = fastla.cosine_topk(c[:3, :0], c[:, :0], 4, backend=name)  # d = 0: all scores 0
        np.testing.assert_array_equal(i, [[0, 1, 2, 3]] * 3)
    with pytest.raises(ValueError, match="k=21"):
        fastla.cosine_topk(c, c, 21)
    with pytest.raises(ValueError, match="k=-1"):
        fastla.cosine_topk(c, c, -1)
    with pytest.raises(TypeError, match="integer"):
        fastla.cosine_topk(c, c, 2.0)
    # a bool is not an integer (operator.index(True) is 1); batch_size's errors name it
    with pytest.raises(TypeError, match="k must be an integer, got bool"):
        fastla.cosine_topk(c, c, True)
    for bad in (2.5, True):
        with pytest.raises(TypeError, match="cosine_topk: batch_size must be an integer"):
            fastla.cosine_topk(c, c, 1, batch_size=bad)
    with pytest.raises(ValueError, match="corpus must be 2-D"):
        fastla.cosine_topk(c, c[0], 1)
    with pytest.raises(ValueError, match=r"\(20, 4\).*\(3, 5\)"):
        fastla.cosine_topk(c, np.ones((3, 5)), 1)
    with pytest.raises(ValueError, match="batch_size"):
        fastla.cosine_topk(c, c, 1, batch_size=0)


@pytest.mark.slow
def test_topk_memory_is_not_n_queries_by_n_corpus(rng):
    """All of the compiled path's memory is numpy-allocated (tracemalloc sees it): far below n x m."""
    q = rng.standard_normal((300, 16)).astype(np.float32)
    c = rng.standard_normal((40_000, 16)).astype(np.float32)
    peak = _topk_peak_bytes(q, c, 10)
    full = q.shape[0] * c.shape[0] * 4
    assert peak < full / 8, (peak, full)


@pytest.mark.skipif(not fastla._jit.JIT_ENABLED, reason="inspects the compiled code")
def test_counted_in_loops_sees_a_count_in_a_loop():
    """The IR reader finds what the tests below assert absent: the row norm's earlier form (its rare
    path's loops inlined into a branch) left a count on the array per row. If LLVM's text changed
    so that the reader found nothing, those tests would pass without looking: this one fails."""
    import math

    from numba import njit

    @njit(inline="always", cache=False)
    def norm(x, i, lo, hi):
        s = 0.0
        for j in range(x.shape[1]):
            s += x[i, j] * x[i, j]
        e = 0
        if not (s >= lo and s <= hi):
            mx = 0.0
            for j in range(x.shape[1]):
                v = abs(x[i, j])
                mx = v if v > mx else mx
            if mx > 0:
                e = math.frexp(mx)[1]
        return s, e

    @njit(cache=False)
    def rows(x, out):
        for i in range(x.shape[0]):
            out[i], _ = norm(x, i, 1e-30, 1e30)

    rows(np.ones((3, 4)), np.empty(3))
    assert "arg.x.0" in counted_in_loops(next(iter(rows.inspect_llvm().values())))


@pytest.mark.skipif(not fastla._jit.JIT_ENABLED, reason="inspects the compiled code")
def test_row_passes_take_no_reference_counts_per_row():
    """The norm pass and the streaming top-k read their operand row by row through inlined helpers,
    where Numba's inlining can leave a reference taken and dropped on the operand for each row (an
    atomic read-modify-write; in the streaming kernel on a count that both threads' shares update).
    Measured on Zen 5: the norm pass over 100 000 x 16 float32 1.55 -> 0.47 ms without it, one
    query's top-k over 100 000 x 256 float32 3.9-4.7 -> 2.1-2.6 ms (with its one-pass scoring).
    The top-k tasks' calls per tile, block and query row did the same on the shared scratch and
    pools. Compiled afresh (cached code cannot be inspected), no loop of the norm pass updates a
    reference count, and no loop of the top-k tasks one on an argument."""
    from numba import typeof

    x = np.ones((3, 5), np.float32)
    n = np.empty(3)
    lo, hi = similarity._SQ_RANGE[x.dtype]
    norm_sig = tuple(typeof(a) for a in (x, lo, hi, x[:, 0].copy(), n, n.astype(np.int64)))
    assert counted_in_loops(fresh_ir(similarity._inv_norms, norm_sig)) == set()
    for entry in (similarity.STREAM, similarity.TOPK_PACK, similarity.TOPK_BLOCK):
        counted = counted_in_loops(fresh_ir(entry.fn, entry.signature(np.float32)))
        assert not {name for name in counted if name.startswith("arg.")}, (entry.fn.py_func.__name__, counted)
