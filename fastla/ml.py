"""Classic machine-learning workloads on fastla's kernels: ``fastla.ml``.

Small, honest building blocks that show the kernels end to end; each says which kernel it runs on
and where NumPy is used instead because no kernel would win:

* :func:`linear_regression` — normal equations ``XᵀX w = Xᵀy`` (ridge with ``alpha``) through
  :func:`fastla.matmul` and :func:`fastla.lu_factor` / :func:`fastla.lu_solve` (what
  :func:`fastla.solve` runs; the LU pivots also give the rank check).
* :func:`pca` — top eigenpairs of the covariance by :func:`fastla.power_iteration` (subspace
  iteration for k > 1); signs as scikit-learn's (largest-magnitude loading positive).
* :func:`dense_forward`, :func:`mlp_forward`, :func:`dense_backward` — a dense layer's forward and
  backward passes; the products run through :func:`fastla.matmul`. The convention is the seed
  examples' and ``torch.nn.functional.linear``'s: ``W`` has shape ``(out, in)``, one sample is
  ``z = W @ x + b``, a batch ``(n, in)`` is ``Z = X @ W.T + b``, and ``dW`` has ``W``'s shape.
* :func:`norm` — L1/L2 vector norms with NumPy's semantics. NumPy's reduction already streams at
  memory bandwidth, so no kernel is used.
* :func:`euclidean_distances` — scikit-learn's formula ``|x|² - 2 x·y + |y|²`` with the product
  through :func:`fastla.matmul`; float32 input is computed in float64 as scikit-learn does.
  The GEMM is the whole cost, and it runs at BLAS speed, no faster.

Inputs are validated like the kernels' (shapes named in errors, integers -> float64, float32 kept).
"""

from __future__ import annotations

import operator
import warnings

import numpy as np

from fastla import _validate
from fastla.eigen import power_iteration
from fastla.lu import LinAlgWarning, lu_factor, lu_solve
from fastla.matmul import matmul

__all__ = [
    "dense_backward",
    "dense_forward",
    "euclidean_distances",
    "linear_regression",
    "mlp_forward",
    "norm",
    "pca",
]


def _float(x, name, ndims, sparse=False):
    """``x`` as a real array of ``ndims`` dimensions (integers and booleans -> float64); with
    ``sparse``, a SciPy sparse matrix/array is kept sparse (as CSR), else refused with scikit-learn's
    TypeError (not taken as a 0-d object array)."""
    if _validate.is_sparse(x):
        if not sparse:
            raise TypeError(
                f"{name} is a SciPy sparse {type(x).__name__}: dense data is required (use .toarray())"
            )
        x = x.tocsr()
    else:
        x = np.asarray(x)
    if x.ndim not in ndims:
        dims = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {dims}, got shape {x.shape}")
    if x.dtype.kind in "biu":
        return x.astype(np.float64)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    return x


def _common(*arrays):
    dtype = np.result_type(*arrays)
    return tuple(a.astype(dtype, copy=False) for a in arrays)


# --------------------------------------------------------------------------- regression


def linear_regression(X, y, *, fit_intercept=True, alpha=0.0, backend=None):
    """Least-squares (``alpha=0``) or ridge weights by the normal equations.

    Parameters
    ----------
    X : array_like or SciPy sparse matrix/array, shape (n_samples, n_features)
        A sparse ``X`` (as scikit-learn's ``LinearRegression`` takes it) forms ``XᵀX`` and ``Xᵀy``
        by SciPy's sparse products, never densifying X.
    y : array_like, shape (n_samples,) or (n_samples, n_targets)
    fit_intercept : bool
        Prepend an intercept (not penalised by ``alpha``).
    alpha : float
        Ridge penalty ``alpha * |w|²`` (>= 0).
    backend : str, optional
        Passed to the kernels.

    Returns
    -------
    w : ndarray, shape (n_features [+ 1],) or (n_features [+ 1], n_targets)
        The intercept first when fitted.

    Raises
    ------
    numpy.linalg.LinAlgError
        ``XᵀX`` is singular or numerically rank-deficient (collinear features, fewer samples than
        features): use ``alpha > 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastla import ml
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> ml.linear_regression(X, 1.0 + 2.0 * X[:, 0]).round(12)
    array([1., 2.])
    """
    X = _float(X, "X", (2,), sparse=True)
    y = _float(y, "y", (1, 2))
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X and y have different numbers of samples: X {X.shape}, y {y.shape}")
    alpha = float(alpha)
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if _validate.is_sparse(X):
        gram, rhs = _sparse_normal_equations(X, y, fit_intercept)
    else:
        X, y = _common(X, y)
        if fit_intercept:
            X = np.concatenate([np.ones((X.shape[0], 1), X.dtype), X], axis=1)
        gram = matmul(X.T, X, backend=backend)
        rhs = matmul(X.T, y, backend=backend)
    p = gram.shape[0]
    if alpha:
        idx = np.arange(int(fit_intercept), p)
        gram[idx, idx] += alpha
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinAlgWarning)  # judged below, with a better message
        lu, piv = lu_factor(gram, overwrite_a=True, backend=backend)
    pivots = np.abs(np.diag(lu))
    if p and not pivots.min() > p * np.finfo(lu.dtype).eps * pivots.max():
        raise np.linalg.LinAlgError(
            f"XᵀX ({p}x{p}) is singular or numerically rank-deficient (collinear features or fewer "
            "samples than features); use alpha > 0 (ridge) to regularise"
        )
    return lu_solve((lu, piv), rhs, backend=backend)


def _sparse_normal_equations(X, y, fit_intercept):
    """``(XᵀX, Xᵀy)`` of the sparse CSR ``X`` (a column of ones first when ``fit_intercept``), dense,
    in the dtype the dense path would compute in."""
    import scipy.sparse as sp

    dtype = np.result_type(X.dtype, y.dtype)
    X = X.astype(dtype)
    if fit_intercept:
        X = sp.hstack([np.ones((X.shape[0], 1), dtype), X], format="csr")
    gram = np.asarray((X.T @ X).toarray(), dtype=dtype)
    return gram, np.asarray(X.T @ y.astype(dtype, copy=False), dtype=dtype)


# --------------------------------------------------------------------------- PCA


def pca(X, n_components, *, center=True, tol=None, seed=0, backend=None):
    """Principal components from the covariance's top eigenpairs (power / subspace iteration).

    Parameters
    ----------
    X : array_like or SciPy sparse matrix/array, shape (n_samples, n_features)
        A sparse ``X`` (as scikit-learn's ``PCA(svd_solver="arpack")`` takes it) is centred
        implicitly: the covariance is a ``LinearOperator``, ``v -> (Xᵀ(X v) - n μ (μ·v)) / (n - 1)``
        from SciPy's sparse products, never formed and X never densified.
    n_components : int
        1 <= n_components <= n_features.
    center : bool
        Subtract the column means first (as PCA does; ``False`` for pre-centred data).
    tol : float, optional
        Relative residual of the eigenpairs; default 1e-10 (float64) or 1e-5 (float32).
    seed : int
        Start of :func:`fastla.power_iteration`.

    Returns
    -------
    components : ndarray, shape (n_components, n_features)
        Unit principal axes, by decreasing variance, each with its largest-magnitude entry positive
        (scikit-learn's sign rule).
    explained_variance : ndarray, shape (n_components,)
        Covariance eigenvalues (denominator ``n_samples - 1``), as ``PCA.explained_variance_``.
    transformed : ndarray, shape (n_samples, n_components)
        The data in the principal axes.

    Examples
    --------
    >>> import numpy as np
    >>> from fastla import ml
    >>> X = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    >>> comps, var, Z = ml.pca(X, 1)
    >>> comps.round(6) + 0.0, var.round(6)  # + 0.0 turns a -0. into 0.
    (array([[1., 0.]]), array([2.666667]))
    """
    X = _float(X, "X", (2,), sparse=True)
    n, d = X.shape
    k = operator.index(n_components)
    if not 1 <= k <= d:
        raise ValueError(f"n_components must be in [1, n_features={d}], got {k}")
    if n < 2:
        raise ValueError(f"pca needs at least 2 samples, got X of shape {X.shape}")
    if tol is None:
        tol = 1e-5 if X.dtype == np.float32 else 1e-10
    if _validate.is_sparse(X):
        return _sparse_pca(X, k, center, tol, seed)
    Xc = X - X.mean(axis=0) if center else X
    cov = matmul(Xc.T, Xc, backend=backend) / X.dtype.type(n - 1)
    var, vecs = power_iteration(cov, k, tol=tol, symmetric=True, seed=seed, backend=backend)
    # XᵀX is positive semi-definite: a variance past the data's rank comes back as +-rounding
    # (~1e-17 of the largest), and a negative one is that rounding (scikit-learn's are >= 0)
    np.maximum(var, 0, out=var)
    components = np.ascontiguousarray(vecs.T)
    return components, var, matmul(Xc, vecs, backend=backend)


def _sparse_pca(X, k, center, tol, seed):
    """:func:`pca` of the sparse CSR ``X``: the centred covariance as a LinearOperator (SciPy's
    products; :func:`fastla.power_iteration` runs one through its ``numpy`` implementation)."""
    from scipy.sparse.linalg import LinearOperator

    n, d = X.shape
    dt = X.dtype
    mu = np.asarray(X.mean(axis=0), dtype=dt).reshape(d) if center else np.zeros(d, dt)
    scale = dt.type(1.0 / (n - 1))

    def cov(v):  # v: (d,) or (d, b)
        return ((X.T @ (X @ v)) - n * np.multiply.outer(mu, mu @ v)) * scale

    op = LinearOperator((d, d), matvec=cov, matmat=cov, rmatvec=cov, rmatmat=cov, dtype=dt)
    var, vecs = power_iteration(op, k, tol=tol, symmetric=True, seed=seed)
    np.maximum(var, 0, out=var)  # as the dense path
    components = np.ascontiguousarray(vecs.T)
    return components, var, np.asarray(X @ vecs) - mu @ vecs


# --------------------------------------------------------------------------- dense layers


def _relu(z):
    return np.maximum(z, 0)


def _relu_grad(z, a):
    return (z > 0).astype(z.dtype)


def _sigmoid(z):
    return np.exp(-np.logaddexp(z.dtype.type(0), -z))  # no overflow for large |z|


def _sigmoid_grad(z, a):
    return a * (1 - a)


def _identity(z):
    return z


def _one(z, a):
    return np.ones_like(z)


_ACTIVATIONS = {
    None: (_identity, _one),
    "none": (_identity, _one),
    "relu": (_relu, _relu_grad),
    "sigmoid": (_sigmoid, _sigmoid_grad),
}


def _activation(name):
    try:
        return _ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; use one of None, 'relu', 'sigmoid'") from None


def _dense_args(x, W, b):
    x = _float(x, "x", (1, 2))
    W = _float(W, "W", (2,))
    n_out, n_in = W.shape
    if x.shape[-1] != n_in:
        raise ValueError(
            f"x of shape {x.shape} does not fit W of shape {W.shape}: W is (out, in) and x is (in,) "
            f"or (n, in), so x needs {n_in} features (z = W @ x + b, as torch.nn.functional.linear)"
        )
    if b is None:
        b = np.zeros(n_out, W.dtype)
    b = _float(b, "b", (1,))
    if b.shape[0] != n_out:
        raise ValueError(f"b has shape {b.shape}, expected ({n_out},) for W of shape {W.shape} (out, in)")
    return _common(x, W, b)


def _affine(x, W, b, backend):
    """``W @ x + b`` for one sample ``(in,)``, ``X @ W.T + b`` for a batch ``(n, in)``."""
    return matmul(W, x, backend=backend) + b if x.ndim == 1 else matmul(x, W.T, backend=backend) + b


def dense_forward(x, W, b=None, activation=None, *, backend=None):
    """A dense layer, ``activation(W @ x + b)``, for one sample or a batch.

    Parameters
    ----------
    x : array_like, shape (in,) or (n, in)
        One sample, or a batch of ``n`` samples as rows.
    W : array_like, shape (out, in)
        The weights, as in ``torch.nn.functional.linear`` and the seed examples
        (``W1 = np.random.randn(8, 4)`` maps 4 inputs to 8 outputs).
    b : array_like, shape (out,), optional
        The bias (zeros when omitted).
    activation : {None, "relu", "sigmoid"}

    Returns
    -------
    ndarray, shape (out,) or (n, out)
        ``activation(W @ x + b)``; a batch gives ``activation(X @ W.T + b)``.

    Raises
    ------
    ValueError
        Shapes that do not fit ``W (out, in)`` (the message names both shapes), an unknown activation.

    Examples
    --------
    >>> import numpy as np
    >>> from fastla import ml
    >>> W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 2 inputs -> 3 outputs
    >>> ml.dense_forward(np.array([1.0, -2.0]), W, np.zeros(3), "relu")
    array([1., 0., 0.])
    """
    x, W, b = _dense_args(x, W, b)
    f, _ = _activation(activation)
    return f(_affine(x, W, b, backend))


def mlp_forward(x, layers, *, backend=None):
    """Forward pass through ``layers``: a sequence of ``(W, b, activation)`` with ``W`` (out, in)."""
    for i, layer in enumerate(layers):
        if len(layer) != 3:
            raise ValueError(f"layer {i} must be (W, b, activation), got {len(layer)} items")
        x = dense_forward(x, *layer, backend=backend)
    return x


def dense_backward(x, W, b, grad_out, activation=None, *, backend=None):
    """Gradients of a dense layer: ``(dW, db, dx)`` given ``grad_out = dL/d(output)``.

    With ``z = W @ x + b`` and ``out = activation(z)``: ``dz = grad_out * activation'(z)``,
    ``dW = outer(dz, x)`` (a batch sums ``dZᵀ X`` over its rows), ``db = dz`` (summed over the
    batch) and ``dx = Wᵀ dz`` (a batch: ``dZ W``). ``dW`` has ``W``'s shape ``(out, in)``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastla import ml
    >>> W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> dW, db, dx = ml.dense_backward(np.array([1.0, 2.0]), W, np.zeros(3), np.ones(3))
    >>> dW
    array([[1., 2.],
           [1., 2.],
           [1., 2.]])
    >>> db, dx
    (array([1., 1., 1.]), array([2., 2.]))
    """
    x, W, b = _dense_args(x, W, b)
    f, df = _activation(activation)
    z = _affine(x, W, b, backend)
    grad_out = np.asarray(grad_out, dtype=z.dtype)
    if grad_out.shape != z.shape:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected the output's {z.shape}")
    dz = grad_out * df(z, f(z))
    if x.ndim == 1:
        dW = matmul(dz[:, None], x[None, :], backend=backend)
        return dW, dz, matmul(W.T, dz, backend=backend)
    dW = matmul(dz.T, x, backend=backend)
    return dW, dz.sum(axis=0), matmul(dz, W, backend=backend)


# --------------------------------------------------------------------------- norms and distances


def norm(x, ord=2, axis=None, keepdims=False):
    """L1 or L2 vector norm(s), as :func:`numpy.linalg.norm` with ``ord`` 1 or 2 on vectors.

    ``axis=None`` takes the norm of the flattened array (NumPy would take a matrix norm of a 2-D
    array; this function is for vectors only). float32 stays float32.

    Examples
    --------
    >>> from fastla import ml
    >>> float(ml.norm([3.0, -4.0])), float(ml.norm([3.0, -4.0], ord=1))
    (5.0, 7.0)
    """
    if _validate.is_sparse(x):  # else a 0-d object array, and a TypeError about its dtype
        raise TypeError(f"norm: x is a SciPy sparse {type(x).__name__}: use scipy.sparse.linalg.norm")
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"norm: x must hold real numbers, got dtype {x.dtype}")
    if ord not in (1, 2):
        raise ValueError(f"norm: ord must be 1 or 2, got {ord!r}")
    if axis is None:
        res = np.linalg.norm(x.reshape(-1), ord=ord)
        return np.reshape(res, (1,) * x.ndim) if keepdims else res
    return np.linalg.norm(x, ord=ord, axis=axis, keepdims=keepdims)


def euclidean_distances(X, Y=None, *, squared=False, backend=None):
    """Pairwise Euclidean distances between rows, as ``sklearn.metrics.pairwise.euclidean_distances``.

    ``|x|² - 2 x·y + |y|²`` clipped at 0, with ``Y=None`` giving an exactly zero diagonal; computed
    in float64 (as scikit-learn does, for accuracy) and returned as float32 when both operands are
    float32, else float64 (scikit-learn's rule: float16 and integers give float64). SciPy sparse
    operands are taken, as scikit-learn takes them (the product is SciPy's); NaN or infinity raises
    ValueError, as there.

    Examples
    --------
    >>> from fastla import ml
    >>> ml.euclidean_distances([[0.0, 0.0], [3.0, 4.0]])
    array([[0., 5.],
           [5., 0.]])
    """
    X = _rows_operand(X, "X")
    Y_ = X if Y is None else _rows_operand(Y, "Y")
    if X.shape[1] != Y_.shape[1]:
        raise ValueError(f"incompatible dimension for X and Y: X.shape == {X.shape}, Y.shape == {Y_.shape}")
    out_dtype = np.float32 if X.dtype == Y_.dtype == np.float32 else np.float64
    X64 = X.astype(np.float64, copy=False)
    Y64 = X64 if Y is None else Y_.astype(np.float64, copy=False)
    xx = _row_squares(X64)
    yy = xx if Y is None else _row_squares(Y64)
    if _validate.is_sparse(X64) or _validate.is_sparse(Y64):
        d = X64 @ Y64.T
        d = d.toarray() if _validate.is_sparse(d) else np.asarray(d)
    else:
        d = matmul(X64, Y64.T, backend=backend)
    d *= -2
    d += xx[:, None]
    d += yy[None, :]
    np.maximum(d, 0, out=d)
    if Y is None:
        np.fill_diagonal(d, 0)
    if not squared:
        np.sqrt(d, out=d)
    return d.astype(out_dtype, copy=False)


def _rows_operand(x, name):
    """A 2-D operand of :func:`euclidean_distances`: :func:`_float`'s real array or sparse CSR, all
    of it finite."""
    x = _float(x, name, (2,), sparse=True)
    if not np.isfinite(x.data if _validate.is_sparse(x) else x).all():
        raise ValueError(f"euclidean_distances: {name} contains NaN or infinity")
    return x


def _row_squares(x):
    """``|x_i|²`` per row of a float64 array or sparse matrix."""
    if _validate.is_sparse(x):
        return np.asarray(x.multiply(x).sum(axis=1), dtype=np.float64).reshape(-1)
    return np.einsum("ij,ij->i", x, x)
