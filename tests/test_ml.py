"""fastla.ml: the ML workloads against NumPy (and scikit-learn when installed)."""

import numpy as np
import pytest

from fastla import ml


def _data(rng, n=60, d=5, dtype=np.float64):
    X = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal(d)
    y = (X @ w + 0.7 + 0.01 * rng.standard_normal(n)).astype(dtype)
    return X, y


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("multi", [False, True])
def test_linear_regression_matches_lstsq(fit_intercept, multi, dtype, rng):
    X, y = _data(rng, dtype=dtype)
    if multi:
        y = np.stack([y, 2 * y + 1], axis=1)
    A = np.hstack([np.ones((len(X), 1)), X]) if fit_intercept else X
    expected = np.linalg.lstsq(A.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    w = ml.linear_regression(X, y, fit_intercept=fit_intercept)
    assert w.dtype == dtype and w.shape == expected.shape
    np.testing.assert_allclose(w, expected, rtol=1e-3 if dtype == np.float32 else 1e-9, atol=1e-4)


def test_ridge_does_not_penalise_intercept(rng):
    X, y = _data(rng)
    alpha = 3.0
    A = np.hstack([np.ones((len(X), 1)), X])
    G = A.T @ A + alpha * np.diag([0.0] + [1.0] * X.shape[1])
    expected = np.linalg.solve(G, A.T @ y)
    np.testing.assert_allclose(ml.linear_regression(X, y, alpha=alpha), expected, rtol=1e-10)
    sklearn = pytest.importorskip("sklearn.linear_model")
    ridge = sklearn.Ridge(alpha=alpha).fit(X, y)
    np.testing.assert_allclose(
        ml.linear_regression(X, y, alpha=alpha), [ridge.intercept_, *ridge.coef_], rtol=1e-8
    )


def test_rank_deficient_raises_with_hint(rng):
    X, y = _data(rng)
    X[:, 3] = 2 * X[:, 1]  # collinear
    with pytest.raises(np.linalg.LinAlgError, match="alpha"):
        ml.linear_regression(X, y)
    assert np.all(np.isfinite(ml.linear_regression(X, y, alpha=1e-3)))
    with pytest.raises(np.linalg.LinAlgError):
        ml.linear_regression(X[:3], y[:3])  # fewer samples than parameters


def test_linear_regression_errors(rng):
    X, y = _data(rng)
    with pytest.raises(ValueError, match="samples"):
        ml.linear_regression(X, y[:-1])
    with pytest.raises(ValueError, match="alpha"):
        ml.linear_regression(X, y, alpha=-1)
    with pytest.raises(ValueError, match="2-D"):
        ml.linear_regression(X[0], y)
    assert ml.linear_regression(np.arange(8).reshape(4, 2) ** 2, np.arange(4)).dtype == np.float64


def _pca_reference(X, k):
    Xc = X - X.mean(axis=0)
    w, v = np.linalg.eigh(Xc.T @ Xc / (len(X) - 1))
    w, v = w[::-1][:k], v[:, ::-1][:, :k]
    v = v * np.sign(v[np.abs(v).argmax(axis=0), np.arange(k)])
    return v.T, w, Xc @ v


@pytest.mark.parametrize("k", [1, 3])
def test_pca_matches_eigh(k, dtype, rng):
    scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])
    X = (rng.standard_normal((200, 6)) * scales) @ np.linalg.qr(rng.standard_normal((6, 6)))[0]
    X = (X + 3).astype(dtype)
    comps, var, Z = ml.pca(X, k)
    rc, rv, rz = _pca_reference(X.astype(np.float64), k)
    tol = 1e-3 if dtype == np.float32 else 1e-7
    assert comps.shape == (k, 6) and var.shape == (k,) and Z.shape == (200, k)
    np.testing.assert_allclose(comps, rc, atol=tol)
    np.testing.assert_allclose(var, rv, rtol=tol)
    np.testing.assert_allclose(Z, rz, atol=tol * 10)


def test_pca_matches_sklearn(rng):
    decomposition = pytest.importorskip("sklearn.decomposition")
    X = rng.standard_normal((100, 4)) * [4.0, 2.0, 1.0, 0.3]
    ref = decomposition.PCA(2).fit(X)
    comps, var, Z = ml.pca(X, 2)
    np.testing.assert_allclose(comps, ref.components_, atol=1e-7)
    np.testing.assert_allclose(var, ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(Z, ref.transform(X), atol=1e-6)


def test_pca_beyond_the_rank_matches_sklearn(rng):
    """More components than the centred data spans (3 samples span 2 directions; a constant
    feature adds none): the variances past the rank are 0, as scikit-learn's, not an error."""
    decomposition = pytest.importorskip("sklearn.decomposition")
    flat = np.c_[rng.standard_normal((50, 2)), np.ones((50, 2))]
    for X, k in ((rng.standard_normal((3, 6)), 3), (flat, 4)):
        ref = decomposition.PCA(k).fit(X)
        comps, var, Z = ml.pca(X, k)
        assert comps.shape == (k, X.shape[1]) and Z.shape == (X.shape[0], k)
        np.testing.assert_allclose(var, ref.explained_variance_, rtol=1e-8, atol=1e-12 * var[0])
        assert np.all(var >= 0)
        rank = int(np.sum(ref.explained_variance_ > 1e-12 * var[0]))
        np.testing.assert_allclose(comps[:rank], ref.components_[:rank], atol=1e-7)
        np.testing.assert_allclose(comps @ comps.T, np.eye(k), atol=1e-10)  # a basis all the same
        np.testing.assert_allclose(Z[:, :rank], ref.transform(X)[:, :rank], atol=1e-6)


def test_pca_errors(rng):
    X = rng.standard_normal((10, 3))
    for bad in (0, 4):
        with pytest.raises(ValueError, match="n_components"):
            ml.pca(X, bad)
    with pytest.raises(ValueError, match="2 samples"):
        ml.pca(X[:1], 1)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_sparse_x_as_scikit_learn_takes_it(fit_intercept, dtype, rng):
    """A SciPy sparse X in ``linear_regression`` (multi-target, ridge) and ``pca`` (centred
    implicitly, or not at all): the dense X's answer, in its dtype, and scikit-learn's; X is not
    modified. The dense layers refuse one with scikit-learn's TypeError (it was a "must be 2-D, got
    shape ()" ValueError: a sparse matrix taken as a 0-d object array)."""
    sp = pytest.importorskip("scipy.sparse")
    X = sp.random(120, 12, density=0.3, random_state=4, format="csc", dtype=dtype)
    X.data += 1  # a non-zero mean per column: centring matters
    dense = X.toarray()
    keep = X.copy()
    y = np.stack([rng.standard_normal(120), rng.standard_normal(120)], axis=1).astype(dtype)
    tol = {"rtol": 1e-3, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-10}
    for alpha in (0.0, 0.5):
        w = ml.linear_regression(X, y, fit_intercept=fit_intercept, alpha=alpha)
        assert w.dtype == dtype
        np.testing.assert_allclose(
            w, ml.linear_regression(dense, y, fit_intercept=fit_intercept, alpha=alpha), **tol
        )
    comps, var, Z = ml.pca(X, 3, center=fit_intercept)
    comps_d, var_d, Z_d = ml.pca(dense, 3, center=fit_intercept)
    assert comps.dtype == var.dtype == Z.dtype == dtype and Z.shape == (120, 3)
    np.testing.assert_allclose(var, var_d, **tol)
    np.testing.assert_allclose(comps, comps_d, **tol)  # the same sign rule
    np.testing.assert_allclose(Z, Z_d, rtol=tol["rtol"], atol=10 * tol["atol"])
    np.testing.assert_array_equal(X.toarray(), keep.toarray())
    decomposition = pytest.importorskip("sklearn.decomposition")
    if fit_intercept:
        sk = decomposition.PCA(3, svd_solver="arpack").fit(X)
        np.testing.assert_allclose(var, sk.explained_variance_, rtol=1e-4 if dtype == np.float32 else 1e-8)
    with pytest.raises(TypeError, match="dense data is required"):
        ml.dense_forward(X, np.ones((2, 12), dtype), np.zeros(2, dtype), "relu")
    with pytest.raises(TypeError, match=r"scipy\.sparse\.linalg\.norm"):
        ml.norm(X)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
def test_dense_forward(activation, dtype, rng):
    """W is (out, in): one sample is W @ x + b, a batch X @ W.T + b (torch.nn.functional.linear)."""
    x = rng.standard_normal((7, 4)).astype(dtype)
    W = rng.standard_normal((3, 4)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    z = x.astype(np.float64) @ W.T.astype(np.float64) + b
    expected = {None: z, "relu": np.maximum(z, 0), "sigmoid": 1 / (1 + np.exp(-z))}[activation]
    out = ml.dense_forward(x, W, b, activation)
    assert out.dtype == dtype and out.shape == (7, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    one = ml.dense_forward(x[2], W, b, activation)
    assert one.shape == (3,)
    np.testing.assert_allclose(one, out[2], rtol=1e-6)
    layers = [(W, b, activation), (rng.standard_normal((2, 3)).astype(dtype), np.zeros(2, dtype), None)]
    np.testing.assert_allclose(ml.mlp_forward(x, layers), ml.dense_forward(out, *layers[1]), rtol=1e-6)


def test_dense_forward_matches_torch_linear(rng):
    F = pytest.importorskip("torch.nn.functional")
    import torch

    x, W, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    ref = F.linear(torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(ml.dense_forward(x, W, b), ref, rtol=1e-12)


def test_sigmoid_extremes_no_warning():
    out = ml.dense_forward(np.array([[1000.0, -1000.0]]), np.eye(2), None, "sigmoid")
    np.testing.assert_array_equal(out, [[1.0, 0.0]])


def test_dense_errors(rng):
    # x with 3 features against W (out=4, in=2); the old (in, out) layout W (3, 2) is rejected too
    with pytest.raises(ValueError, match=r"x of shape \(3,\) does not fit W of shape \(4, 2\)"):
        ml.dense_forward(np.ones(3), np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"\(5, 3\) does not fit W of shape \(3, 2\).*\(out, in\)"):
        ml.dense_forward(np.ones((5, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="b has shape"):
        ml.dense_forward(np.ones(2), np.ones((4, 2)), np.ones(3))
    with pytest.raises(ValueError, match="activation"):
        ml.dense_forward(np.ones(2), np.ones((4, 2)), None, "tanh")
    with pytest.raises(ValueError, match="grad_out"):
        ml.dense_backward(np.ones(2), np.ones((4, 2)), None, np.ones(3))


def _relu(z):
    return np.maximum(0, z)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_seed_three_layer_network():
    """The seed examples' 3-layer network in their own NumPy style (np.random.seed(42); W1 (8, 4),
    W2 (6, 8), W3 (2, 6); relu, relu, sigmoid; z = W @ x + b), reproduced by fastla.ml to 1e-12."""
    rs = np.random.RandomState(42)  # the seed's np.random.seed(42) stream
    x = rs.randn(4)
    W1, b1 = rs.randn(8, 4), rs.randn(8)
    W2, b2 = rs.randn(6, 8), rs.randn(6)
    W3, b3 = rs.randn(2, 6), rs.randn(2)
    a1 = _relu(W1 @ x + b1)
    a2 = _relu(W2 @ a1 + b2)
    expected = _sigmoid(W3 @ a2 + b3)
    layers = [(W1, b1, "relu"), (W2, b2, "relu"), (W3, b3, "sigmoid")]
    out = ml.mlp_forward(x, layers)
    assert out.shape == (2,)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    X = rs.randn(10, 4)  # the batch form: one sample per row, X @ W.T + b
    expected_batch = np.stack([ml.mlp_forward(row, layers) for row in X])
    np.testing.assert_allclose(ml.mlp_forward(X, layers), expected_batch, rtol=0, atol=1e-12)


def test_seed_backprop_small():
    """The seed's backprop example: W1_small (3, 2), sigmoid, squared error; dW1 = outer(dz1, x)."""
    rs = np.random.RandomState(42)  # the seed's np.random.seed(42) stream
    x = rs.randn(2)
    W1_small, b1_small = rs.randn(3, 2), rs.randn(3)
    y = rs.randn(3)
    z1 = W1_small @ x + b1_small
    a1 = _sigmoid(z1)
    da1 = 2 * (a1 - y)  # d/da of sum((a - y)^2)
    dz1 = da1 * a1 * (1 - a1)
    dW1 = np.outer(dz1, x)
    db1 = dz1
    dx = W1_small.T @ dz1
    got = ml.dense_backward(x, W1_small, b1_small, da1, "sigmoid")
    assert got[0].shape == W1_small.shape == (3, 2)
    for g, e in zip(got, (dW1, db1, dx), strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-12)


def test_two_layer_backward_matches_numeric_gradient(rng):
    """A 2-layer network (relu hidden layer, sigmoid output, loss = sum(out * G)) on a batch."""
    x = rng.standard_normal((5, 4))
    W1, b1 = rng.standard_normal((6, 4)), rng.standard_normal(6)
    W2, b2 = rng.standard_normal((3, 6)), rng.standard_normal(3)
    G = rng.standard_normal((5, 3))

    def loss(x, W1, b1, W2, b2):
        h = ml.dense_forward(x, W1, b1, "relu")
        return float(np.sum(ml.dense_forward(h, W2, b2, "sigmoid") * G))

    h = ml.dense_forward(x, W1, b1, "relu")
    dW2, db2, dh = ml.dense_backward(h, W2, b2, G, "sigmoid")
    dW1, db1, dx = ml.dense_backward(x, W1, b1, dh, "relu")
    params = [x, W1, b1, W2, b2]
    for i, grad in enumerate([dx, dW1, db1, dW2, db2]):
        assert grad.shape == params[i].shape
        num = np.zeros_like(params[i])
        for idx in np.ndindex(params[i].shape):
            plus = [p.copy() for p in params]
            minus = [p.copy() for p in params]
            plus[i][idx] += 1e-6
            minus[i][idx] -= 1e-6
            num[idx] = (loss(*plus) - loss(*minus)) / 2e-6
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)


def test_norm(dtype, rng):
    x = rng.standard_normal((4, 5)).astype(dtype)
    for ord_ in (1, 2):
        assert ml.norm(x, ord_) == pytest.approx(np.linalg.norm(x.ravel(), ord_), rel=1e-6)
        np.testing.assert_allclose(ml.norm(x, ord_, axis=1), np.linalg.norm(x, ord_, axis=1), rtol=1e-6)
        assert ml.norm(x, ord_, axis=0, keepdims=True).shape == (1, 5)
        assert ml.norm(x, ord_, keepdims=True).shape == (1, 1)
    assert ml.norm(x, axis=1).dtype == dtype
    with pytest.raises(ValueError, match="ord"):
        ml.norm(x, 3)


def test_euclidean_distances(dtype, rng):
    X = rng.standard_normal((9, 4)).astype(dtype)
    Y = rng.standard_normal((6, 4)).astype(dtype)
    expected = np.sqrt(((X[:, None, :].astype(np.float64) - Y[None]) ** 2).sum(-1))
    d = ml.euclidean_distances(X, Y)
    assert d.dtype == dtype and d.shape == (9, 6)
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ml.euclidean_distances(X, Y, squared=True), expected**2, rtol=1e-5, atol=1e-5)
    dxx = ml.euclidean_distances(X)
    assert np.all(np.diag(dxx) == 0)
    with pytest.raises(ValueError, match="incompatible"):
        ml.euclidean_distances(X, Y[:, :3])
    pairwise = pytest.importorskip("sklearn.metrics.pairwise")
    np.testing.assert_allclose(d, pairwise.euclidean_distances(X, Y), rtol=1e-5, atol=1e-6)


def test_euclidean_distances_takes_what_scikit_learn_takes(rng):
    """scikit-learn's rules where they differed: float16 gives float64 (it gave float16, rounding
    float64 distances to 3 digits), SciPy sparse operands are taken (a "must be 2-D, got shape ()"
    error), NaN or infinity raises ValueError (it came back in the result)."""
    pairwise = pytest.importorskip("sklearn.metrics.pairwise")
    sp = pytest.importorskip("scipy.sparse")
    X = rng.standard_normal((9, 4)) * 3
    Y = rng.standard_normal((6, 4)) * 3
    for x, y in ((X.astype(np.float16), Y.astype(np.float16)), (X.astype(np.float32), Y), (X.astype(int), Y)):
        want = pairwise.euclidean_distances(x, y)
        got = ml.euclidean_distances(x, y)
        assert got.dtype == want.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    Xs = sp.csr_matrix(np.where(np.abs(X) > 2, X, 0))
    for x, y in ((Xs, None), (Xs, Y), (X, sp.csr_array(Y)), (Xs.tocoo(), Xs)):
        want = pairwise.euclidean_distances(x, y)
        got = ml.euclidean_distances(x, y)
        assert type(got) is np.ndarray and got.dtype == want.dtype
        # atol: the square root of a rounding-level |x|^2 - 2 x.y + |y|^2 (sparse sums in other orders)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-6)
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[2, 1] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            ml.euclidean_distances(Xb)
        with pytest.raises(ValueError, match="NaN or infinity"):
            ml.euclidean_distances(X, sp.csr_matrix(Xb))
