"""Timing fuzz: is ``auto`` ever the slow choice against the call a user would make instead?

``fastla tune`` sweeps square products and a few shapes per op; this draws random ones (ranks,
sizes from 1 to a few hundred, layouts: C, Fortran, transposed, strided; float32 and float64) and
times each public call under ``auto`` against the NumPy/SciPy/scikit-learn call it replaces, on the
same inputs, as ``fastla tune`` times its sweeps (:func:`fastla.tune.time_impls`: each side after a
warm-up and a settle of its own untimed calls, which outlasts the other side's spinning threads, then
its fastest batch), twice in turn, each side keeping its faster timing. A line per case, ``SLOW``
where fastla took over 1.3x the other's time::

    python -m fastla warmup                 # compiled kernels: auto's steady state, not its first use
    python tools/auto_fuzz.py 1 120         # seed, cases

Not a test: it asserts nothing and its timings move with the machine (re-time a case before
believing it). Its first run found the mixed-rank matmul calls' full-path overhead, the packed GEMM's
packed B for few-row products and its edge tile on narrow last panels, the top-k's final sort and
tie handling, and strided softmax rows (README, "What we learned": "Shapes the square sweeps did
not show").
"""

from __future__ import annotations

import sys

import numpy as np


class Cases:
    """Random cases: ``(label, fastla call, the other call)`` or None for a draw too large."""

    def __init__(self, rng):
        self.rng = rng

    def dim(self, lo=1, hi=600):
        return int(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))

    def array(self, shape, dtype, layout="C"):
        rng = self.rng
        if layout == "S":  # every other element of the last axis
            return rng.standard_normal((*shape[:-1], 2 * shape[-1])).astype(dtype)[..., ::2]
        a = rng.standard_normal(shape).astype(dtype)
        if layout == "F" and a.ndim >= 2:
            return np.asfortranarray(a)
        if layout == "T" and a.ndim >= 2:  # the transpose of a C-contiguous array
            return np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)
        return a

    def layout(self):
        return str(self.rng.choice(["C", "C", "F", "T", "S"]))

    def draw(self):
        op = str(self.rng.choice(["matmul", "matmul", "solve", "softmax", "log_softmax", "cosine", "topk"]))
        dtype = np.dtype(self.rng.choice([np.float32, np.float64]))
        return getattr(self, op)(dtype) if op != "log_softmax" else self.softmax(dtype, log=True)

    def matmul(self, dt):
        import fastla

        kind = int(self.rng.integers(0, 4))
        m, k, n = self.dim(), self.dim(), self.dim()
        if kind == 0:
            a, b = self.array((m, k), dt, self.layout()), self.array((k, n), dt, self.layout())
        elif kind == 1:
            a, b = self.array((m, k), dt, self.layout()), self.array((k,), dt)
        elif kind == 2:
            s, m, k, n = self.dim(1, 2000), self.dim(1, 16), self.dim(1, 16), self.dim(1, 16)
            a, b = self.array((s, m, k), dt, self.layout()), self.array((s, k, n), dt, self.layout())
        else:
            stack = (self.dim(1, 64), m, k)
            a, b = self.array(stack, dt, self.layout()), self.array((k, n), dt, self.layout())
        if a.size * (b.shape[-1] if b.ndim > 1 else 1) > 3e8:
            return None
        label = f"matmul {a.shape} @ {b.shape} {dt.name} C={a.flags.c_contiguous},{b.flags.c_contiguous}"
        return label, lambda: fastla.matmul(a, b), lambda: np.matmul(a, b)

    def solve(self, dt):
        import fastla

        if self.rng.random() < 0.5:
            n = self.dim(1, 500)
            a = self.array((n, n), dt, self.layout()) + n * np.eye(n, dtype=dt)
            b = self.array((n,), dt) if self.rng.random() < 0.5 else self.array((n, self.dim(1, 50)), dt)
        else:
            s, n = self.dim(1, 5000), self.dim(1, 12)
            a = self.array((s, n, n), dt, self.layout()) + n * np.eye(n, dtype=dt)
            b = self.array((s, n, 1), dt)
        label = f"solve {a.shape} {b.shape} {dt.name}"
        return label, lambda: fastla.solve(a, b), lambda: np.linalg.solve(a, b)

    def softmax(self, dt, log=False):
        import scipy.special

        import fastla

        shape = tuple(self.dim(1, 300) for _ in range(int(self.rng.integers(1, 4))))
        if np.prod(shape) > 5e6:
            return None
        x = self.array(shape, dt, self.layout())
        axis = int(self.rng.integers(-x.ndim, x.ndim))
        name = "log_softmax" if log else "softmax"
        mine, theirs = getattr(fastla, name), getattr(scipy.special, name)
        label = f"{name} {x.shape} axis={axis} {dt.name} C={x.flags.c_contiguous}"
        return label, lambda: mine(x, axis=axis), lambda: theirs(x, axis=axis)

    def cosine(self, dt):
        from sklearn.metrics.pairwise import cosine_similarity

        import fastla

        d = self.dim(1, 300)
        x = self.array((self.dim(1, 2000), d), dt, self.layout())
        y = self.array((self.dim(1, 2000), d), dt, self.layout()) if self.rng.random() < 0.7 else None
        label = f"cosine {x.shape} {None if y is None else y.shape} {dt.name}"
        return label, lambda: fastla.cosine_similarity(x, y), lambda: cosine_similarity(x, y)

    def topk(self, dt):
        import fastla

        n, m, d = self.dim(1, 500), self.dim(10, 20000), self.dim(1, 256)
        k = min(self.dim(1, 50), m)
        q, c = self.array((n, d), dt), self.array((m, d), dt)

        def numpy_topk():  # normalise, score, partition, order (ties as they fall)
            unit_q = q / np.linalg.norm(q, axis=1, keepdims=True)
            s = unit_q @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T
            idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
            best = np.take_along_axis(s, idx, 1)
            order = np.argsort(-best, axis=1, kind="stable")
            return np.take_along_axis(best, order, 1), np.take_along_axis(idx, order, 1)

        label = f"cosine_topk {q.shape} {c.shape} k={k} {dt.name}"
        return label, lambda: fastla.cosine_topk(q, c, k), numpy_topk


def main(argv):
    from fastla.tune import time_impls

    seed = int(argv[0]) if argv else 0
    cases = int(argv[1]) if len(argv) > 1 else 100
    draw = Cases(np.random.default_rng(seed))
    done = slow = 0
    while done < cases:
        case = draw.draw()
        if case is None:
            continue
        label, mine, theirs = case
        done += 1
        try:
            mine()
            theirs()
        except Exception as exc:  # a case fastla or the other side rejects: say so, go on
            print(f"error {label}: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
            continue
        runs = [time_impls({"fastla": mine, "other": theirs}) for _ in range(2)]
        t_mine, t_theirs = (min(run[side] for run in runs) for side in ("fastla", "other"))
        ratio = t_mine / t_theirs
        slow += ratio > 1.3
        flag = " SLOW" if ratio > 1.3 else ""
        times_us = f"fastla {t_mine * 1e6:9.1f} us, other {t_theirs * 1e6:9.1f} us"
        print(f"{ratio:5.2f} {times_us}  {label}{flag}", flush=True)
    print(f"{slow} of {cases} cases over 1.3x the other call's time")


if __name__ == "__main__":
    main(sys.argv[1:])
