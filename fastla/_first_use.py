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
as long as compiling the kernel would (:meth:`Sizes.estimate`), the kernel is compiled (in the
background, below), and it runs from then on. That is the break-even rule of renting against
buying (ski rental): whatever the number of calls still to come, the time spent is at most twice
the best choice's in hindsight (NumPy throughout, or the kernel compiled at the first call), with
the estimate exact; off by a factor f, at most 1 + max(f, 1/f) times. A forced
``backend="numba"`` compiles at once, and with the JIT off nothing waits (nothing to compile).

An op's own kernels (its drivers, the GEMM, the row kernels: everything but those per-size ones)
follow the same rule per op and dtype (:data:`KERNELS`). Their first ``auto`` call compiled them on
the spot: 1.1-7.1 s on a 2-core Zen 4 where NumPy's call takes 3-80 ms (README, "First use"). Numba's
cache index is per function and signature, not per op, so whether an op's kernels are cached is
recorded apart: once an op's compiled kernels have run to completion for a dtype (forced or under
``auto``, ``fastla warmup`` included), this process knows it, and an empty marker file in the
kernel cache's directory (``first-use/<tag>/<op>-<dtype char>``) tells later processes; the tag
hashes fastla's source stamp, the host CPU and Numba's version, the things Numba's own cache
entries are keyed to, so a marker never outlives the kernels it vouches for through an upgrade.
The key is per op and dtype, and per path only where an op says so (``Operation.kernel_path``:
top-k's packed kernel); elsewhere, once one path of an op has run (a cosine of two operands),
another (of one operand) compiles at its first call as before.
Where the kernels are cached, the call that reaches an op's break-even does not compile them: it
starts that op's warm-up for the dtype in the background (:class:`Background`: a process of its own
compiles them into the cache, then its thread loads them into this one), and ``auto`` goes on with
NumPy until they are loaded. Measured (Zen 4, a fresh cache, a loop of ``softmax`` on 2000 x 1000
float32: NumPy 2.7-3.1 ms a call, the kernels 0.4 ms): the longest call 1.73-1.93 s compiling in
the call, 89-91 ms so; the kernels ran from 4.2-4.4 s into the loop against 7.0 s, since the
process starts, compiles the op's whole warm-up and hands over through the cache.
A size's kernel goes the same way (:class:`SizeBackground`): the call that reaches its break-even
starts a process making a forced call of that size on a tiny input (which compiles the op's own
kernels too where they are not cached), then its thread makes that call here, loading from the
cache. Measured (Zen 4, 10-15 s loops, a fresh cache and one after ``fastla warmup --ops
solve,matmul``): a stack of 2000 6x6 float64 systems, the longest call 0.84-0.90 s -> 41-58 ms, the
kernel from 1.8-2.8 s into the loop -> 2.7-2.8 s; 20 000 5x5 float64 products 0.48-0.49 s -> 41-52
ms, from 1.0-2.3 s -> 1.8-2.0 s.
``FASTLA_FIRST_CALL=inline`` compiles in the call that reaches the break-even, and
``FASTLA_FIRST_CALL=compile`` (both read at import) an op's kernels at the first call and a size's
in the call that reaches its break-even: the test suite, the benchmarks and ``fastla tune``, which
time steady states, run so.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time

from fastla import _jit

#: auto waits for the break-even before compiling a size's kernel (tests of the size rules set it
#: False to read those rules alone)
WAIT_FOR_BREAK_EVEN = True
#: ... and before compiling an op's own kernels (:data:`KERNELS`); ``FASTLA_FIRST_CALL=compile``
#: turns this off
WAIT_FOR_KERNELS = os.environ.get("FASTLA_FIRST_CALL", "").strip().lower() != "compile"


class Sizes:
    """One family of per-size kernels.

    ``compiled(key)`` says whether this process holds the kernel for ``key``, ``cached(key)``
    whether Numba's on-disk cache does (an index read: probed once per key and process), and
    ``seconds(key)`` how long compiling it takes (the estimate the break-even compares with)."""

    def __init__(
        self, what, compiled, cached, seconds, waits=lambda: WAIT_FOR_BREAK_EVEN, per="size", elsewhere=None
    ):
        self.what = what
        self._compiled = compiled
        self._cached = cached
        self.estimate = seconds
        self._waits = waits
        self.per = per
        #: ``elsewhere.start(key)`` starts compiling ``key``'s kernels away from the calls, and
        #: ``elsewhere.busy(key)`` says whether that is still under way (None: compiled in the call)
        self._elsewhere = elsewhere
        self._ready = set()
        self._probed = set()
        self.spent = {}

    def ready(self, key):
        """Whether the kernel for ``key`` runs without compiling (compiled here, or cached). A kernel
        compiled here is remembered as ready, also where nothing waits (``FASTLA_FIRST_CALL=compile``):
        from then on a call's test is one set lookup."""
        if key in self._ready or not _jit.JIT_ENABLED:
            return True
        found = self._compiled(key)
        if not found and not self._waits():
            return True
        if not found and key not in self._probed:
            self._probed.add(key)
            found = self._cached(key)
        if found:
            self._ready.add(key)
        return found

    def wins(self, key):
        """auto's answer for a size whose kernel beats NumPy: run it (it is ready, or NumPy's calls
        of this size have taken as long as compiling it would, and it is not being compiled
        elsewhere meanwhile), else NumPy. A ready size costs a set lookup (the fast paths' calls:
        ~0.2 us)."""
        if key in self._ready or self.ready(key):
            return True
        if self.spent.get(key, 0.0) < self.estimate(key):
            return False
        return not self.compiling_elsewhere(key)

    def compiling_elsewhere(self, key):
        """Whether ``key``'s kernels are being compiled away from the calls (started by
        :meth:`run_numpy` at the break-even, where the family compiles so)."""
        return self._elsewhere is not None and self._elsewhere.busy(key)

    def run_numpy(self, key, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` (the NumPy impl), its time added to ``key``'s; the call that
        reaches the break-even starts the compile elsewhere, where this family compiles so."""
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = self.spent[key] = self.spent.get(key, 0.0) + time.perf_counter() - t0
            if self._elsewhere is not None and spent >= self.estimate(key):
                self._elsewhere.start(key)

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
        are, them, verb = ("are", "them", "compile") if s.what.endswith("s") else ("is", "it", "compiles")
        busy = s.compiling_elsewhere(self.key)
        return (
            f"{self.shape}: the compiled {s.what} for this {s.per} {are} neither compiled nor cached yet, "
            f"so NumPy runs until its calls of this {s.per} have taken as long as compiling {them} would "
            f"(~{s.estimate(self.key):.1f} s; {s.spent.get(self.key, 0.0):.3f} s so far)"
            + (f"; {them} {verb} in the background meanwhile ({s._elsewhere.what})" if busy else "")
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


# --------------------------------------------------------------------------- an op's own kernels

#: Seconds an op's kernels take to compile at its first call: the break-even estimate of
#: :data:`KERNELS`. Measured on a 2-core Zen 4 (a fresh process and cache, the first ``auto`` call at
#: a size where it picks the kernels, three runs: README, "First use"). ``auto`` gives single
#: products and systems to BLAS and LAPACK there, so matmul's and solve's are their stacks' (the
#: benchmark's typical first calls: 1.2-1.3 and 0.9-1.0 s; the per-size rule waits for the size's
#: own kernel before this one), and the LU ops' the blocked LU's, which ``auto`` runs on machines
#: whose profile says it beats LAPACK (2.8-3.5 s for n = 300). A slower machine compiles for
#: longer: an estimate off by a factor f costs at most 1 + max(f, 1/f) times the better choice in
#: hindsight.
KERNEL_SECONDS = {
    "matmul": 1.3,
    "matmul.packed": 2.6,  # the packed GEMM (one product past SMALL_2D_MAX, or a stack's products)
    "solve": 1.0,
    "lu_factor": 3.0,
    "lu_solve": 1.2,
    "softmax": 2.4,
    "log_softmax": 2.2,
    "cross_entropy": 1.2,
    "cosine_similarity": 3.3,
    "cosine_topk": 3.4,  # the streaming kernel (few queries); the packed one is a key of its own
    "cosine_topk.packed": 5.0,
    "power_iteration": 1.4,
    "scaled_dot_product_attention": 3.5,
}
#: (op, dtype char) whose compiled kernels have run to completion in this process
_RAN: set = set()


def kernel_key(op, dtype):
    """The :data:`KERNELS` key of ``op``'s kernels for arrays of ``dtype`` (``op`` with a path suffix
    where the op has one: ``Operation.kernel_path``; the public functions' fast paths build the same
    tuple in place: a call of this costs them ~0.1 us)."""
    return (op, getattr(dtype, "char", "?"))


@functools.cache
def _marker_dir():
    """This cache's directory of markers for these sources, this CPU and this Numba (None when
    fastla's kernels are not cached)."""
    dirs = sorted(_jit.cache_dirs())
    if not dirs:
        return None
    from fastla import _host

    name, features = _host.host_cpu()
    tag = f"{_jit.package_source_stamp()} {name} {sorted(features)} {_jit.numba.__version__}"
    return os.path.join(dirs[0], "first-use", hashlib.sha256(tag.encode()).hexdigest()[:16])


def _marker(key):
    folder = _marker_dir()
    return None if folder is None else os.path.join(folder, f"{key[0]}-{key[1]}")


def _kernels_cached(key):
    path = _marker(key)
    return path is not None and os.path.exists(path)


def ran(key):
    """Record that the kernels of ``key`` ran to completion: in this process, and (once per process)
    as a marker for the next ones. A cache that cannot be written is left as it is."""
    if key in _RAN:
        return
    _RAN.add(key)
    path = _marker(key) if _jit.JIT_ENABLED else None
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a"):
            pass
    except OSError:
        pass


def run_kernels(key, fn, *args):
    """``fn(*args)`` on fastla's threads (:func:`fastla._jit.run_parallel`), then :func:`ran`."""
    res = _jit.run_parallel(fn, *args)
    if key not in _RAN:
        ran(key)
    return res


def kernels_or_numpy(key, forced, kernels, numpy, *args):
    """A fast path's call of an op's compiled ``kernels(*args)`` (:func:`run_kernels`): at once when
    ``forced``, else once they are compiled or cached or NumPy's calls have paid for them
    (:data:`KERNELS`); until then ``numpy(*args)``, its time charged to ``key``."""
    if forced or KERNELS.wins(key):
        return run_kernels(key, kernels, *args)
    return KERNELS.run_numpy(key, numpy, *args)


#: at the break-even, compile an op's kernels in the background (:class:`Background`) where they
#: are cached, NumPy running meanwhile; False (``FASTLA_FIRST_CALL=inline``): in the call that
#: reaches it
COMPILE_IN_BACKGROUND = os.environ.get("FASTLA_FIRST_CALL", "").strip().lower() != "inline"


class Background:
    """Kernels compiled away from the calls that need them: at the break-even, a process of its own
    compiles them into the on-disk cache, then a thread loads them into this one (milliseconds), once
    per job. Until that thread ends, ``auto`` goes on with NumPy: no call waits for a compile, where
    the call that reached the break-even compiled them for seconds (README, "First use"). Where the
    kernels are not cached (nothing a process could hand over), or the job failed or did not compile
    the call's kernels, the next call compiles them in place, as before. Subclasses say which job a
    key's kernels come with (:meth:`job`, None: none) and start it (:meth:`launch`: a thread)."""

    what = "a process of its own"

    def __init__(self):
        self.jobs = {}  # job -> its thread
        self._lock = threading.Lock()  # threads reaching the break-even at once start one job

    def job(self, key):
        raise NotImplementedError

    def launch(self, key):
        raise NotImplementedError

    def start(self, key):
        if not COMPILE_IN_BACKGROUND or _marker_dir() is None:
            return
        job = self.job(key)
        if job is None or job in self.jobs:
            return
        with self._lock:
            if job not in self.jobs:
                self.jobs[job] = self.launch(key)

    def busy(self, key):
        thread = self.jobs.get(self.job(key))
        return thread is not None and thread.is_alive()


class OpBackground(Background):
    """An op's kernels: ``fastla.warmup`` of the op and dtype with ``background=True`` (one job; its
    thread loads the kernels here, which records the key as run). An op path's kernels come with its
    op's warm-up, and ops sharing a warm-up call (softmax and log_softmax, the LU pair) share its job
    ``(warm-up call, dtype char)``."""

    what = "fastla.warmup in a process of its own"

    def job(self, key):
        from fastla import _warmup

        target = _warmup.TARGETS.get(key[0].split(".")[0])
        return None if target is None or key[1] not in "fd" else (target, key[1])

    def launch(self, key):
        from fastla import _warmup

        dtype = "float32" if key[1] == "f" else "float64"
        return _warmup.warmup([key[0].split(".")[0]], [dtype], background=True, jobs=1, progress=False)


class SizeBackground(Background):
    """One size's kernel of a per-size family (:class:`Sizes`): ``module.function(key)``, a forced
    call on a tiny input of that size (so the op's own kernels come along where they are not loaded
    yet), runs in a new process, which compiles into the cache, then in the thread, which loads here
    and records the op's kernels as run. Only where ``auto`` waits for an op's kernels too
    (``FASTLA_FIRST_CALL`` unset): with ``compile`` a size's kernel compiles in the call that reaches
    its break-even, as an op's at its first call."""

    def __init__(self, module, function):
        super().__init__()
        self.module, self.function = module, function

    def job(self, key):
        return key if WAIT_FOR_KERNELS else None

    def launch(self, key):
        run = f"m.{self.function}({key!r})"
        code = f"import fastla._warmup as w, {self.module} as m; w.compiling_process(); {run}"

        def work():
            import importlib
            import subprocess
            import sys

            done = subprocess.run(
                [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            if done.returncode:
                why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                raise RuntimeError(f"compiling {key} failed: {why}")
            getattr(importlib.import_module(self.module), self.function)(key)  # loads from the cache

        from fastla import _warmup

        return _warmup.background_thread(work, f"fastla-compile-{key}")


#: Each op's own kernels per dtype as a family (see the module docstring), keyed by
#: :func:`kernel_key`.
KERNELS = Sizes(
    "kernels",
    lambda key: key in _RAN,
    _kernels_cached,
    lambda key: KERNEL_SECONDS.get(key[0], 2.0),
    waits=lambda: WAIT_FOR_BREAK_EVEN and WAIT_FOR_KERNELS,
    per="op and dtype",
    elsewhere=OpBackground(),
)


def summary():
    """One line for ``python -m fastla info``: what ``auto`` does before an op's kernels are compiled
    or cached, and for how many ops and dtypes this cache holds the record of a run."""
    if not _jit.JIT_ENABLED:
        return "nothing to compile (the JIT is off)"
    if not (WAIT_FOR_BREAK_EVEN and WAIT_FOR_KERNELS):
        return (
            "an op's kernels compile at its first call, a size's in the call that reaches its "
            "break-even (FASTLA_FIRST_CALL=compile)"
        )
    folder = _marker_dir()
    keys = len(os.listdir(folder)) if folder is not None and os.path.isdir(folder) else 0
    hint = "" if keys else "; `python -m fastla warmup` compiles them ahead"
    how = "compiled in the background meanwhile" if COMPILE_IN_BACKGROUND else "then compiled in the call"
    return (
        "NumPy until its calls have cost the compile, where an op's kernels or a size's are neither "
        f"compiled nor cached, {how} (cached: {keys} op and dtype keys{hint})"
    )
