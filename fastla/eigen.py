"""Dominant eigenpairs by power iteration: ``fastla.power_iteration``.

For the common need of PCA and spectral methods, the few largest eigenpairs of a big matrix, an
O(n^2)-per-step iteration beats a full O(n^3) decomposition by orders of magnitude.

* symmetric: block subspace (orthogonal) iteration with Rayleigh-Ritz (the Rayleigh quotient's
  block form) on ``b`` vectors: ``b = 4`` for k = 1, ``b = 2k`` for k > 1. The guard vectors speed
  convergence from ``|l_{k+1}/l_k|`` to ``|l_{b+1}/l_k|``: with l2/l1 = 0.9 and the rest of the
  spectrum below 0.72, a 1e-8 residual took ~170 sweeps of plain power iteration and ~55 with the
  block, each sweep still one pass over A (the block costs FMAs, not memory traffic). Eigenvalues
  tied in magnitude with opposite signs at the k-th place (``+l`` and ``-l``) make "the top k by
  |l|" ambiguous: that raises :class:`ConvergenceError` rather than returning one arbitrarily;
* non-symmetric, k = 1: classic power iteration for the dominant real eigenvalue;
* non-symmetric, k > 1: ``ValueError`` (use a symmetric matrix, or ``numpy.linalg.eig``).

Convergence: every returned pair satisfies ``||A v - l v|| <= tol * |l|`` (computed explicitly, not
from a cancellation-prone identity). Without that within ``maxiter`` (default ``max(1000, 10 n)``)
:class:`ConvergenceError` is raised, carrying the partial result like SciPy's
``ArpackNoConvergence``. Tied or complex dominant eigenvalues (a rotation, ``+1`` and ``-1``)
never satisfy the residual test, so they end in that error and never in a silently wrong value.

Results: ``w`` sorted by decreasing ``|l|``, ``v`` with unit-norm columns whose largest-magnitude
component is positive (reproducible signs). The oracle in the tests is ``numpy.linalg.eigh``
(symmetric) / ``numpy.linalg.eig``.

Implementations share this algorithm and differ in the O(n^2) step: ``numba`` (non-symmetric: one
parallel pass over A computing ``A v``, ``v.Av`` and ``||Av||^2`` together; symmetric: ``A V`` as
``(Vᵀ A)ᵀ`` by the GEMM micro-kernel reading A in place; either way A is read once per sweep),
``numpy`` (``@``, BLAS gemv/gemm), ``loop`` (pure-Python matrix-vector loops).
"""

from __future__ import annotations

import numpy as np

from fastla import _gemm_kernels as _gk
from fastla import _registry, _validate
from fastla._jit import jit, prange

__all__ = ["ConvergenceError", "power_iteration"]


class ConvergenceError(np.linalg.LinAlgError):
    """Power iteration did not converge; the partial result is attached.

    Attributes
    ----------
    eigenvalues, eigenvectors : ndarray
        The last iterate's estimates.
    iterations : int
        Iterations performed.
    """

    def __init__(self, msg, eigenvalues, eigenvectors, iterations):
        super().__init__(msg)
        self.eigenvalues = eigenvalues
        self.eigenvectors = eigenvectors
        self.iterations = iterations


# Measured (Zen 4, 2 threads, gap 0.9, tol 1e-8, one run each): symmetric k = 1 at n = 2000, numba
# 117-127 ms vs numpy 135-182 ms (both the 4-vector block, ~61 sweeps); k = 10 at n = 4000, numba
# 1.23 s vs numpy 1.02-1.21 s. Every sweep reads A from memory once either way, so neither side wins
# by much and the ranking flips with the shape: auto keeps numpy. The fused kernel matters where BLAS
# is single-threaded or absent.
AUTO_RULE = {"numba_wins": False}


# --------------------------------------------------------------------------- kernels


@jit(parallel=True)
def _matvec_stats(a, v, w):
    """``w = a @ v`` and return ``(v . w, ||w||^2)`` in the same single pass over ``a``."""
    n = a.shape[0]
    vw = 0.0
    ww = 0.0
    for i in prange(n):
        acc = 0.0
        for j in range(a.shape[1]):
            acc += a[i, j] * v[j]
        w[i] = acc
        vw += v[i] * acc
        ww += acc * acc
    return vw, ww


@jit
def _symmetric_kernel(a, atol):
    """True if ``|a_ij - a_ji| <= atol`` everywhere; 64 x 64 tiles, early exit on the first miss."""
    n = a.shape[0]
    for i0 in range(0, n, 64):
        for j0 in range(0, i0 + 1, 64):
            for i in range(i0, min(i0 + 64, n)):
                for j in range(j0, min(j0 + 64, i)):
                    if abs(a[i, j] - a[j, i]) > atol:
                        return False
    return True


def symmetry_atol(dtype, max_abs):
    """The absolute tolerance of the symmetry test for a matrix whose largest ``|entry|`` is ``max_abs``."""
    return (1e-10 if dtype == np.float64 else 1e-5) * max_abs


def _is_symmetric(a):
    """Symmetric up to rounding: ``|a - a.T| <= rtol * max|a|`` elementwise.

    The tolerance scales with the matrix, not with each entry: ``Q diag(l) Q^T`` is symmetric to
    rounding relative to its norm, while its small entries can differ by far more than their own
    relative precision.
    """
    from fastla import _jit

    atol = symmetry_atol(a.dtype, max(float(a.max()), -float(a.min()), 0.0))
    if _jit.JIT_ENABLED:
        return bool(_symmetric_kernel(a, atol))
    return bool(np.all(np.abs(a - a.T) <= atol))


def _numba_matvec(a, v, w):
    return _matvec_stats(a, v, w)


def _numpy_matvec(a, v, w):
    np.matmul(a, v, out=w)
    return float(v @ w), float(w @ w)


def _loop_matvec(a, v, w):
    n = a.shape[0]
    vv = [float(x) for x in v]
    for i in range(n):
        row = a[i]
        w[i] = sum(float(row[j]) * vv[j] for j in range(n))
    return sum(vv[i] * float(w[i]) for i in range(n)), sum(float(x) * float(x) for x in w)


def _numba_matmat(a, v):
    # A V for symmetric A as (Vᵀ A)ᵀ: the GEMM micro-kernel reading A in place, once per sweep
    # (packing A, as a general GEMM would, triples the memory traffic of this memory-bound step).
    return _gk.thin_product(np.ascontiguousarray(a), v).T


def _numpy_matmat(a, v):
    # (Vᵀ A)ᵀ, as the numba impl: OpenBLAS ran A @ V (n x 4) in 2.7-2.8 ms and Vᵀ A in 1.65 ms
    # at n = 2000 (2 threads, Zen 4), against 0.53 ms for one matrix-vector product.
    return (v.T @ a).T


def _loop_matmat(a, v):
    out = np.empty_like(v)
    for c in range(v.shape[1]):
        _loop_matvec(a, np.ascontiguousarray(v[:, c]), out[:, c])
    return out


# --------------------------------------------------------------------------- the algorithm


def _fix_signs(v):
    idx = np.argmax(np.abs(v), axis=0)
    signs = np.sign(v[idx, np.arange(v.shape[1])])
    signs[signs == 0] = 1
    return v * signs


def _power1(a, v, tol, maxiter, matvec):
    """Power iteration for one pair; returns (lam, v, iterations) or raises ConvergenceError."""
    w = np.empty_like(v)
    lam = 0.0
    for it in range(1, maxiter + 1):
        vw, ww = matvec(a, v, w)
        lam = vw  # v has unit norm: the Rayleigh quotient
        res = np.linalg.norm(w - lam * v)
        if res <= tol * abs(lam) and lam != 0:
            return lam, v, it
        norm = np.sqrt(ww)
        if norm == 0 or not np.isfinite(norm):
            break
        v = w / norm
    raise ConvergenceError(
        f"power iteration did not converge in {maxiter} iterations (tied, complex or non-finite "
        "dominant eigenvalues?)",
        np.array([lam]),
        v[:, None],
        maxiter,
    )


def _subspace(a, v, k, tol, maxiter, matmat):
    """Block orthogonal iteration with Rayleigh-Ritz (symmetric a); returns (w, V, iterations)."""
    theta = np.zeros(k)
    x = v[:, :k]
    tie_rtol = max(1e-6, 100 * float(np.finfo(a.dtype).eps))
    for it in range(1, maxiter + 1):
        av = matmat(a, v)
        h = v.T @ av
        theta_all, s = np.linalg.eigh((h + h.T) / 2)
        order = np.argsort(-np.abs(theta_all))
        theta_all, s = theta_all[order], s[:, order]
        x = v @ s
        ax = av @ s
        res = np.linalg.norm(ax[:, :k] - x[:, :k] * theta_all[:k], axis=0)
        theta = theta_all[:k]
        if np.all(res <= tol * np.abs(theta)) and np.all(theta != 0):
            if len(theta_all) > k and theta_all[k] * theta[-1] < 0:
                if abs(abs(theta_all[k]) - abs(theta[-1])) <= tie_rtol * abs(theta[-1]):
                    raise ConvergenceError(
                        f"eigenvalues {theta[-1]:.6g} and {theta_all[k]:.6g} are tied in magnitude: the top "
                        f"{k} by |eigenvalue| is not unique",
                        theta,
                        x[:, :k],
                        it,
                    )
            return theta, x[:, :k], it
        v, _ = np.linalg.qr(ax)
    raise ConvergenceError(
        f"subspace iteration did not converge in {maxiter} iterations", theta, x[:, :k], maxiter
    )


# --------------------------------------------------------------------------- validation / public


def check_options(shape, k, tol):
    """Validate the matrix shape, ``k`` and ``tol`` (shape only: no data is read)."""
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"power_iteration: a must be a square 2-D array, got shape {shape}")
    n = shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= max(n, 1):
        raise ValueError(f"power_iteration: k must be an integer in [1, n={n}], got {k!r}")
    if n == 0:
        raise ValueError("power_iteration: a is empty (0 x 0)")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"power_iteration: tol must be positive, got {tol}")


def compute_dtype(dtype):
    """The float dtype the iteration runs in for a matrix of ``dtype`` (ints -> float64)."""
    dtype, why = _validate.compute_dtype((np.empty(0, dtype),), ints_to_float64=True)
    if why is not None:
        raise TypeError(f"power_iteration: {why}")
    return dtype


def start_block(n, dtype, k, maxiter, v0, symmetric, seed):
    """``(start vectors (n, b), maxiter)``: ``v0`` in the first columns, seeded normals after."""
    if k > 1 and not symmetric:
        raise ValueError(
            "power_iteration: k > 1 needs a symmetric matrix (block subspace iteration); for "
            "non-symmetric matrices use numpy.linalg.eig"
        )
    block = (min(n, 4) if k == 1 else min(n, 2 * k)) if symmetric else 1
    if v0 is not None:
        v0 = np.asarray(v0, dtype=dtype)
        if v0.shape not in ((n,), (n, k), (n, block)):
            raise ValueError(f"power_iteration: v0 must have shape ({n},) or ({n}, {k}), got {v0.shape}")
        if not np.any(v0):
            raise ValueError("power_iteration: v0 must not be all zeros")
        v0 = v0.reshape(n, -1)
    rng = np.random.default_rng(seed)
    start = rng.standard_normal((n, block)).astype(dtype)
    if v0 is not None:
        start[:, : v0.shape[1]] = v0
    return start, max(1000, 10 * n) if maxiter is None else int(maxiter)


def _prepare(a, k=1, tol=1e-8, maxiter=None, v0=None, symmetric=None, seed=None, return_eigenvectors=True):
    a = np.asarray(a)
    check_options(a.shape, k, tol)
    dtype = compute_dtype(a.dtype)
    a = _validate.native(a, dtype)
    _validate.check_finite(a)
    if symmetric is None:
        symmetric = _is_symmetric(a)
    n = a.shape[0]
    start, maxiter = start_block(n, dtype, k, maxiter, v0, symmetric, seed)
    args = (a, k, float(tol), maxiter, start, symmetric, return_eigenvectors)
    return _registry.Prepared(args, facts={"n": n, "k": k})


def _rule(prep):
    if AUTO_RULE["numba_wins"]:
        return "numba", "one fused parallel pass over A per sweep"
    return "numpy", "each sweep is memory-bound: BLAS gemv reads A as fast as the fused kernel"


_OP = _registry.operation("power_iteration", _prepare, _rule)


@_registry.public(_OP)
def power_iteration(
    a,
    k=1,
    *,
    tol=1e-8,
    maxiter=None,
    v0=None,
    symmetric=None,
    seed=None,
    return_eigenvectors=True,
    backend=None,
):
    """The ``k`` eigenpairs of largest ``|eigenvalue|`` of a square matrix, by power iteration.

    Parameters
    ----------
    a : array_like, shape (n, n)
    k : int
        Number of eigenpairs (k > 1 needs a symmetric matrix).
    tol : float
        Stop when ``||A v - l v|| <= tol * |l|`` for every returned pair.
    maxiter : int, optional
        Default ``max(1000, 10 n)``.
    v0 : array_like, optional
        Start vector(s), shape (n,) or (n, k); not all zeros.
    symmetric : bool, optional
        Default: detected with an ``allclose(a, a.T)`` check.
    seed : int or Generator, optional
        Random start when ``v0`` is not given (reproducible).
    return_eigenvectors : bool

    Returns
    -------
    w : ndarray, shape (k,)
        Eigenvalues, sorted by decreasing magnitude.
    v : ndarray, shape (n, k)
        Unit eigenvectors (largest-magnitude component positive); only if ``return_eigenvectors``.

    Raises
    ------
    ConvergenceError
        No convergence within ``maxiter`` (a subclass of ``numpy.linalg.LinAlgError``).

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> a = np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> w, v = fl.power_iteration(a, seed=0)
    >>> np.round(w, 8), np.round(v.ravel(), 6)
    (array([3.]), array([0.707107, 0.707107]))
    """
    prep = _prepare(a, k, tol, maxiter, v0, symmetric, seed, return_eigenvectors)
    return _OP.run(backend, prep)


def run(a, k, tol, maxiter, start, symmetric, return_vectors, matvec, matmat):
    """The algorithm on ``a`` (any object with ``dtype`` the two products accept)."""
    if not symmetric:
        v = start[:, 0] / np.linalg.norm(start[:, 0])
        lam, v, _ = _power1(a, v, tol, maxiter, matvec)
        w, vecs = np.array([lam], dtype=a.dtype), v[:, None]
    else:
        q, _ = np.linalg.qr(start)
        w, vecs, _ = _subspace(a, q.astype(a.dtype), k, tol, maxiter, matmat)
        w = w.astype(a.dtype)
    vecs = _fix_signs(vecs / np.linalg.norm(vecs, axis=0)).astype(a.dtype)
    return (w, vecs) if return_vectors else w


@_OP.register("numba", needs_numba=True)
def _power_numba(*args):
    """Fused parallel matvec (non-symmetric); symmetric: A V by the micro-kernel reading A in place."""
    # The small dense steps between sweeps (QR of the n x b block, Vᵀ(AV), V S) go to BLAS. With
    # BLAS multi-threaded, OpenBLAS's idle threads keep spinning after each of them and take the
    # cores from the next compiled sweep: measured (Zen 4, 2 cores) 37.8 ms per sweep at n = 4000,
    # k = 10 with 2 BLAS threads against 20.5 ms with one. The small steps gain nothing from threads.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return run(*args, _numba_matvec, _numba_matmat)


@_OP.register("numpy")
def _power_numpy(*args):
    """Same algorithm with ``@`` (BLAS gemv/gemm)."""
    return run(*args, _numpy_matvec, _numpy_matmat)


@_OP.register("loop")
def _power_loop(*args):
    """Same algorithm with pure-Python matrix-vector products."""
    return run(*args, _loop_matvec, _loop_matmat)
