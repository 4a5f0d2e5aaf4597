"""``fastla.kernels`` called as a user's ``@njit`` code calls them: the ``kernels`` warm-up of
``fastla.warmup`` (``fastla/_warmup.py``).

A user's function that calls a kernel compiles the kernel's own pieces (the out-of-line kernels and
the ones LLVM inlines) into fastla's cache on its first call: 3.8-5.8 s each for the solvers, the
softmax family or the products (float64, Zen 4, cold). These functions make those calls for one
dtype, on C-contiguous mutable arrays (the type of a user's arrays and of their views ``X[i]``), in
every form the kernels module offers (``out=`` and allocating, one row or system and 2-D), so that
a user's first call after ``python -m fastla warmup`` compiles only the user's function. They are
``user_njit`` functions (cached, as a user's ``cache=True`` code): a second warm-up loads them.
"""

from __future__ import annotations

import numpy as np

from fastla import kernels
from fastla._jit import user_njit


@user_njit
def _products(a, b, c):
    kernels.matmul(a, b, c)
    kernels.gemm(a, b, c)
    kernels.gemm(a, b, c, 2.0, 0.5)
    return kernels.matmul(a, b)


@user_njit
def _solvers(a, b, x, b2, x2, stack, rhs, xs):
    kernels.solve(a, b, x)
    kernels.solve(a, b2, x2)
    kernels.solve(stack, rhs, xs)
    x[:] = kernels.solve(a, b)
    ok = kernels.try_solve(a, b, x)
    kernels.solve_inplace(a.copy(), x.copy())
    lu, piv = kernels.lu_factor(a)
    kernels.lu_solve(lu, piv, b, x)
    kernels.lu_solve(lu, piv, b2, x2)
    return ok, kernels.lu_solve(lu, piv, b)


@user_njit
def _rows(x, y, x2, y2):
    kernels.softmax(x, y)
    kernels.log_softmax(x, y)
    kernels.softmax(x2, y2)
    kernels.log_softmax(x2, y2)
    kernels.exp(x, y)
    kernels.exp(x2, y2)
    y[:] = kernels.softmax(x)
    return kernels.logsumexp(x) + kernels.logsumexp(x2)[0] + kernels.exp(x)[0]


@user_njit
def _similarity(X, Y, out, q, k, v, acc, att):
    kernels.cosine_similarity(X, Y, out)
    scores, index = kernels.topk_init(3, X.dtype)
    count = 0
    for j in range(X.shape[1]):
        count = kernels.topk_push(scores, index, count, X[0, j], j)
    m = np.full(q.shape[0], -np.inf, q.dtype)
    s = np.zeros(q.shape[0], q.dtype)
    kernels.attention_step(q, k, v, q.dtype.type(0.5), m, s, acc)
    kernels.attention_finish(s, acc, att)
    return kernels.cosine_similarity(X, Y), count


def run(dt):
    """Make every call above for the dtype ``dt`` (float32 or float64), on small inputs."""
    dt = np.dtype(dt)
    n = 6
    a = np.eye(n, dtype=dt) * n + 1
    mat = np.ones((n, n), dt)
    _products(mat, mat, np.empty((n, n), dt))
    stack = np.broadcast_to(a, (4, n, n)).copy()
    _solvers(
        a,
        np.ones(n, dt),
        np.empty(n, dt),
        mat.copy(),
        np.empty((n, n), dt),
        stack,
        np.ones((4, n), dt),
        np.empty((4, n), dt),
    )
    x2 = np.ones((3, 40), dt)
    _rows(x2[0].copy(), np.empty(40, dt), x2, np.empty_like(x2))
    q = np.ones((5, 8), dt)
    _similarity(
        q,
        q.copy(),
        np.empty((5, 5), dt),
        q.copy(),
        q.copy(),
        q.copy(),
        np.zeros((5, 8), dt),
        np.empty((5, 8), dt),
    )
