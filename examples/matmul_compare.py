"""Matrix product three ways: pure-Python loops, Numba kernels, BLAS (NumPy)."""

import time

import numpy as np

import fastla as fl


def best_of(fn, repeat=3):
    fn()  # warm-up (compiles the Numba kernel on the first call)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


rng = np.random.default_rng(0)
for n, backends in (
    (64, ("loop", "numba_naive", "numba", "numpy")),
    (512, ("numba_naive", "numba", "numpy")),
):
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    print(f"{n}x{n} @ {n}x{n} (float64):")
    for name in backends:
        t = best_of(
            lambda a=a, b=b, name=name: fl.matmul(a, b, backend=name), repeat=1 if name == "loop" else 3
        )
        print(f"  {name:12s} {t * 1e3:9.3f} ms  {2 * n**3 / t / 1e9:7.2f} GFLOP/s")
    assert np.allclose(fl.matmul(a, b, backend="numba"), a @ b)
