"""User code for the ``fastla.kernels`` benchmarks: one ``@njit`` loop over many small items, calling
either fastla's kernel or what a Numba user writes today (Numba's ``np.linalg.solve``, ``A @ B``, a
hand-written row softmax). Both loops are serial and compiled as a user compiles them, plain
``@njit`` (``_jit.user_njit``: no fastmath); the benchmark ratio is fastla's speed over the
plain-Numba loop's (the ``numpy`` impl of the ``kernels:`` ops)."""

from __future__ import annotations

import numpy as np

from fastla import kernels
from fastla._jit import user_njit


@user_njit
def fastla_solve(A, B, X):
    for i in range(A.shape[0]):
        kernels.solve(A[i], B[i], X[i])
    return X


@user_njit
def numba_solve(A, B, X):
    for i in range(A.shape[0]):
        X[i] = np.linalg.solve(A[i], B[i])
    return X


@user_njit
def fastla_matmul(A, B, C):
    for i in range(A.shape[0]):
        kernels.matmul(A[i], B[i], C[i])
    return C


@user_njit
def numba_matmul(A, B, C):
    for i in range(A.shape[0]):
        C[i] = A[i] @ B[i]
    return C


@user_njit
def fastla_softmax(X, Y):
    for i in range(X.shape[0]):
        kernels.softmax(X[i], Y[i])
    return Y


@user_njit
def numba_softmax(X, Y):
    for i in range(X.shape[0]):
        r = X[i]
        e = np.exp(r - r.max())
        Y[i] = e / e.sum()
    return Y


#: op (without the ``kernels:`` prefix) -> {impl: loop}: ``numba`` is fastla's kernel, ``numpy`` the
#: plain-Numba loop (NumPy's functions as Numba compiles them)
LOOPS = {
    "solve": {"numba": fastla_solve, "numpy": numba_solve},
    "matmul": {"numba": fastla_matmul, "numpy": numba_matmul},
    "softmax": {"numba": fastla_softmax, "numpy": numba_softmax},
}


def impls(op):
    """``{impl: callable(*inputs)}`` for the ``kernels:<op>`` workloads (each allocates its output)."""

    def with_output(loop):
        return lambda a, *rest: loop(a, *rest, np.empty_like(rest[0] if op == "solve" else a))

    return {name: with_output(loop) for name, loop in LOOPS[op].items()}
