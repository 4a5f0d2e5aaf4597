"""Kernels compiled per size, and what ``auto`` does before a size's kernel exists.

Two kernels are compiled for the exact sizes of a call: the lane solver's step for each (n, k) of a
stack of small systems (straight-line vector code for that n: :mod:`fastla._lane_solver`) and the
stacked product's fully unrolled kernel for each (m, k, n) up to 16
(:func:`fastla._gemm_kernels.small_fixed_kernel`). ``fastla warmup`` compiles the common ones (3x3
and 4x4); another size's first call compiled its kernel on the spot, where NumPy takes microseconds
to milliseconds for the whole call. Measured after a full ``fastla warmup`` (Zen 4, first call of a
1000-matrix stack in a new process, everything else cached): solve n = 2 0.55 s, 5 0.78, 8 0.95,
12 1.74, 16 2.38, 20 2.76, 32 3.35 s (NumPy: 0.2-6 ms); matmul any (m, k, n) but 3x3, 4x4 and the
vector-tile shapes 0.5 s (NumPy ~0.1 ms).

So ``auto`` runs such a call with NumPy while the kernel for its size is neither compiled in this
process nor in the on-disk cache, and adds up the time those NumPy calls take. Once they have taken
as long as compiling the kernel would (:meth:`Sizes.estimate`), the next call compiles it, and the
kernel runs from then on. That is the break-even rule of renting against buying (ski rental):
whatever the number of calls still to come, the time spent is at most twice the best choice's in
hindsight (NumPy throughout, or the kernel compiled at the first call), with the estimate exact;
off by a factor f, at most 1 + max(f, 1/f) times. A forced ``backend="numba"`` compiles at once,
and with the JIT off nothing waits (there is nothing to compile).
"""

from __future__ import annotations

import time

from fastla import _jit

#: auto waits for the break-even before compiling a size's kernel (tests of the size rules set it
#: False to read those rules alone)
WAIT_FOR_BREAK_EVEN = True


class Sizes:
    """One family of per-size kernels.

    ``compiled(key)`` says whether this process holds the kernel for ``key``, ``cached(key)``
    whether Numba's on-disk cache does (an index read: probed once per key and process), and
    ``seconds(key)`` how long compiling it takes (the estimate the break-even compares with)."""

    def __init__(self, what, compiled, cached, seconds):
        self.what = what
        self._compiled = compiled
        self._cached = cached
        self.estimate = seconds
        self._ready = set()
        self._probed = set()
        self.spent = {}

    def ready(self, key):
        """Whether the kernel for ``key`` runs without compiling (compiled here, or cached)."""
        if key in self._ready or not _jit.JIT_ENABLED or not WAIT_FOR_BREAK_EVEN:
            return True
        found = self._compiled(key)
        if not found and key not in self._probed:
            self._probed.add(key)
            found = self._cached(key)
        if found:
            self._ready.add(key)
        return found

    def wins(self, key):
        """auto's answer for a size whose kernel beats NumPy: run it (it is ready, or NumPy's calls
        of this size have taken as long as compiling it would), else NumPy. A ready size costs a
        set lookup (the fast paths' calls: ~0.2 us)."""
        return key in self._ready or self.ready(key) or self.spent.get(key, 0.0) >= self.estimate(key)

    def run_numpy(self, key, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` (the NumPy impl), its time added to ``key``'s."""
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.spent[key] = self.spent.get(key, 0.0) + time.perf_counter() - t0

    def pending(self, key, shape):
        """The reason auto gives for NumPy meanwhile (``shape`` describes the call's sizes): a
        :class:`Pending`, which the registry's call path recognises to charge the call's time."""
        return Pending(self, key, shape)


class Pending:
    """auto's reason for running NumPy until a size's kernel pays for its compile: callable (the
    lazy reason :func:`fastla.explain` formats), and what :meth:`fastla._registry.Operation.run`
    charges the NumPy call's time to."""

    __slots__ = ("key", "shape", "sizes")

    def __init__(self, sizes, key, shape):
        self.sizes, self.key, self.shape = sizes, key, shape

    def __call__(self):
        s = self.sizes
        return (
            f"{self.shape}: the compiled {s.what} for this size is neither compiled nor cached yet, so "
            f"NumPy runs until its calls of this size have taken as long as compiling it would "
            f"(~{s.estimate(self.key):.1f} s; {s.spent.get(self.key, 0.0):.3f} s so far)"
        )

    def run(self, fn, *args, **kwargs):
        return self.sizes.run_numpy(self.key, fn, *args, **kwargs)


def in_disk_cache(dispatcher, sig):
    """Whether Numba's on-disk cache holds ``dispatcher`` compiled for the argument types ``sig``
    (fresh: an index written from other sources reads as empty). Read from the cache's index the
    way :meth:`numba.core.caching.Cache.load_overload` looks an entry up; where Numba's internals
    differ, False (auto then waits for the break-even, as for a kernel not cached)."""
    cache = getattr(dispatcher, "_cache", None)
    try:
        key = cache._index_key(tuple(sig), dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # no cache (NullCache has no index), or Numba's internals moved
        return False
