"""fastla.kernels inside your own Numba code: fit y = a·exp(-b·t) + c to 20 000 noisy series by
Gauss–Newton, one 3x3 normal-equations solve per series per step, in a parallel loop.

kernels.try_solve is the call for a prange body: it reports a singular system by its return value
(Numba loses exceptions raised on worker threads) and never makes the loop serial. The same loop with
Numba's np.linalg.solve shows what it replaces.
"""

import time

import numpy as np
from numba import njit, prange

from fastla import kernels

T = np.linspace(0.0, 5.0, 25)


@njit(inline="always")
def normal_equations(p, t, y, jtj, jtr):
    """JᵀJ and Jᵀr of the residual r = y - model(p) at the parameters p = (a, b, c)."""
    jtj[:] = 0.0
    jtr[:] = 0.0
    for i in range(t.size):
        e = np.exp(-p[1] * t[i])
        g = (e, -p[0] * t[i] * e, 1.0)  # d model / d (a, b, c)
        r = y[i] - (p[0] * e + p[2])
        for u in range(3):
            jtr[u] += g[u] * r
            for v in range(3):
                jtj[u, v] += g[u] * g[v]


@njit(parallel=True)
def fit_fastla(t, ys, p0, steps):
    n = ys.shape[0]
    params = p0.copy()
    ok = np.ones(n, np.bool_)
    for s in prange(n):
        jtj = np.empty((3, 3))
        jtr = np.empty(3)
        step = np.empty(3)
        for _ in range(steps):
            normal_equations(params[s], t, ys[s], jtj, jtr)
            if not kernels.try_solve(jtj, jtr, step):
                ok[s] = False
                break
            params[s] += step
    return params, ok


@njit(parallel=True)
def fit_numba_linalg(t, ys, p0, steps):
    n = ys.shape[0]
    params = p0.copy()
    for s in prange(n):
        jtj = np.empty((3, 3))
        jtr = np.empty(3)
        for _ in range(steps):
            normal_equations(params[s], t, ys[s], jtj, jtr)
            params[s] += np.linalg.solve(jtj, jtr)
    return params


def main():
    rng = np.random.default_rng(0)
    n = 20_000
    truth = np.column_stack([rng.uniform(1, 3, n), rng.uniform(0.5, 1.5, n), rng.uniform(-1, 1, n)])
    ys = truth[:, :1] * np.exp(-truth[:, 1:2] * T) + truth[:, 2:] + 0.01 * rng.standard_normal((n, T.size))
    p0 = truth * rng.uniform(0.8, 1.2, truth.shape)  # a start near the answer, as from a coarse grid
    p0[7] = 0.0  # a = 0: JᵀJ is singular at this start (d model / d b = 0)

    fit_fastla(T, ys[:2], p0[:2], 1)  # compile both (warm-up excluded from the timings)
    fit_numba_linalg(T, ys[:2], p0[:2], 1)
    t0 = time.perf_counter()
    params, ok = fit_fastla(T, ys, p0, 8)
    t1 = time.perf_counter()
    good = np.flatnonzero(ok)
    reference = fit_numba_linalg(T, ys[good], p0[good], 8)
    t2 = time.perf_counter()

    print(f"{ok.sum()} of {n} series converged; singular at the start: {np.flatnonzero(~ok).tolist()}")
    print(f"max |fitted - true| over the converged series: {np.abs(params[ok] - truth[ok]).max():.3f}")
    same = np.allclose(params[good], reference, rtol=1e-9, atol=1e-12)
    print(f"same fits as np.linalg.solve in Numba: {same}")
    print(f"time: kernels.try_solve {1e3 * (t1 - t0):.1f} ms, np.linalg.solve {1e3 * (t2 - t1):.1f} ms")


if __name__ == "__main__":
    main()
