"""The one Numba entry point.

Every compiled kernel in fastla is decorated through :func:`jit` from here; no other module imports
numba but :mod:`fastla._intrinsics` (hand-written LLVM IR). Host facts (SIMD width, cache sizes)
are in :mod:`fastla._host`. This module decides:

* whether Numba is usable (``NUMBA_AVAILABLE``, ``NUMBA_IMPORT_ERROR``) and whether it compiles
  (``JIT_ENABLED`` is False under ``NUMBA_DISABLE_JIT=1``, where kernels run as plain Python);
* the one fastmath set (:data:`FASTMATH`): reassociation and contraction let LLVM vectorise
  reductions and fuse multiply-adds; ``nnan``/``ninf`` are never set because masked attention uses
  ``-inf`` and NaN must propagate as in NumPy;
* the threading layer. Numba's default ``workqueue`` layer aborts the process when two Python threads
  launch parallel regions at once. We ask for the ``threadsafe`` layer (TBB, then OpenMP) when one of
  them can be loaded, and otherwise serialise fastla's parallel regions with a lock
  (:func:`run_parallel`). TBB's runtime, from the ``tbb`` wheel, is loaded first
  (:func:`_preload_tbb`). A user's own ``NUMBA_THREADING_LAYER`` is respected.
* Numba's start-up: its BLAS probe, which imports all of ``scipy.linalg`` for ``np.dot``-style
  calls fastla's kernels never make, is deferred to the first compile that needs BLAS
  (:func:`_defer_numba_blas_probe`);
* how intrinsics are declared: an intrinsic (hand-written LLVM IR) has no Python body, and
  :func:`intrinsic` pairs each with a plain-Python twin that is used when JIT is off or Numba is
  absent (the tests check the two agree).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import threading
import types
import typing

import numpy as np

try:
    import numba
    from numba import types as nb_types
    from numba.extending import intrinsic as _nb_intrinsic

    NUMBA_AVAILABLE = True
    NUMBA_IMPORT_ERROR = None
except ImportError as exc:  # fastla still works: auto falls back to numpy
    numba = None
    nb_types = None
    _nb_intrinsic = None
    NUMBA_AVAILABLE = False
    NUMBA_IMPORT_ERROR = f"numba cannot be imported ({exc})"

JIT_ENABLED = NUMBA_AVAILABLE and not numba.config.DISABLE_JIT

#: The fastmath flags of every kernel (ARCHITECTURE.md, "Numba discipline"): no ``nnan``/``ninf``.
FASTMATH = frozenset({"contract", "reassoc", "nsz", "arcp", "afn"})

prange = numba.prange if NUMBA_AVAILABLE else range


def _thread_id_python():
    return 0


#: index of the executing thread inside a parallel region (0 when running as Python), for
#: per-thread scratch buffers sized ``max_threads()``.
thread_id = numba.get_thread_id if JIT_ENABLED else _thread_id_python


#: fastla sources no compiled kernel is built from (the benchmark harness, the command line, the
#: warm-up driver, the dask and ML layers above the public functions): editing them must not make
#: every cached kernel stale.
NOT_COMPILED_IN = (
    "bench",
    "__main__.py",
    "_profile.py",
    "_threads.py",
    "_warmup.py",
    "dask.py",
    "ml.py",
    "tune.py",
)


@functools.cache
def package_source_stamp():
    """Hash of every fastla source file kernels may be compiled from (all but
    :data:`NOT_COMPILED_IN`): part of each cached kernel's freshness stamp."""
    import hashlib

    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs[:] = sorted(d for d in dirs if not (folder == root and d in NOT_COMPILED_IN))
        for name in sorted(files):
            if name.endswith(".py") and not (folder == root and name in NOT_COMPILED_IN):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + f.read())
    return digest.hexdigest()


def _is_fastla(obj):
    """Whether ``obj`` is a fastla module, or a function, dispatcher or other object defined in one."""
    name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    return isinstance(name, str) and (name == "fastla" or name.startswith("fastla."))


def _compiles_in_fastla(py_func, seen=None):
    """Whether compiling ``py_func`` (a user's ``cache=True`` function) may compile fastla's code
    into it: a global or closure variable its code names is a fastla module or object
    (``fastla.kernels.exp``, ``from fastla.kernels import softmax``, ``import fastla.kernels as
    K``), directly or through another jitted function it calls (to any depth)."""
    seen = set() if seen is None else seen
    if id(py_func) in seen or not hasattr(py_func, "__code__"):
        return False
    seen.add(id(py_func))
    names, stack = set(), [py_func.__code__]
    while stack:  # the function's code and the code objects nested in it (comprehensions, lambdas)
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    glb = getattr(py_func, "__globals__", {})
    values = [glb[n] for n in names if n in glb]
    for cell in getattr(py_func, "__closure__", None) or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    for v in values:
        if _is_fastla(v):
            return True
        inner = getattr(v, "py_func", None)  # another Numba dispatcher: what it compiles in
        if inner is not None and _compiles_in_fastla(inner, seen):
            return True
    return False


def _user_function_compiles_in_fastla(py_func):
    """:func:`_compiles_in_fastla` for the cache-locator hook, which Numba consults for every cached
    function of the process (other libraries' too): an object that fails to answer the walk's
    attribute reads leaves that function to Numba's own locators, never fails its compilation."""
    try:
        return _compiles_in_fastla(py_func)
    except Exception:
        return False


def _install_package_wide_cache_stamp():
    """Make a change to *any* fastla source file invalidate *every* cached fastla kernel, and every
    cached user function that compiles fastla's code in.

    Numba judges a cached function fresh by its own source file only, but fastla's kernels compile
    in code from other modules (LU's factorisation inlines the GEMM driver; softmax the exp): after
    an edit or upgrade of one module, a stale cache of another could run against the new code and
    crash. A user's ``@njit(cache=True)`` function that calls :mod:`fastla.kernels` inlines them the
    same way: after ``pip install -U fastla`` Numba would load its old machine code, the old
    kernels in it, unless its stamp changes too (:func:`_compiles_in_fastla` finds those). This wraps
    whichever locator numba picks for these files and adds the package-wide source hash to its
    stamp. It uses numba's cache-locator hook (``CacheImpl._locator_classes``); if that hook is
    missing in some numba version, numba's own per-file behaviour remains.
    """
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover
        return
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    base = getattr(caching, "_CacheLocator", None)
    if impl is None or base is None or not isinstance(getattr(impl, "_locator_classes", None), list):
        return
    root = os.path.dirname(os.path.abspath(__file__)) + os.sep

    class PackageStampLocator(base):
        def __init__(self, inner):
            self._inner = inner
            # where Numba's warning about a function it cannot cache points (it reads this attribute
            # of the locator: without it, the warning itself raised AttributeError)
            self._py_file = getattr(inner, "_py_file", "")

        def ensure_cache_path(self):
            return self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        def get_source_stamp(self):
            return (self._inner.get_source_stamp(), package_source_stamp())

        @classmethod
        def from_function(cls, py_func, py_file):
            if not (os.path.abspath(py_file).startswith(root) or _user_function_compiles_in_fastla(py_func)):
                return None
            for other in impl._locator_classes:
                if other is not cls:
                    inner = other.from_function(py_func, py_file)
                    if inner is not None:
                        return cls(inner)
            return None

    if not any(c.__name__ == "PackageStampLocator" for c in impl._locator_classes):
        impl._locator_classes.insert(0, PackageStampLocator)


if JIT_ENABLED:
    _install_package_wide_cache_stamp()


def _safe_cache_file_class():
    """A Numba cache file that two processes can fill at once (pytest-xdist workers, ``fastla
    warmup``'s jobs) without corrupting it.

    Numba names a new overload's data file by the first free number in the index it just read, so
    two processes adding different overloads at once both write ``<name>.1.nbc``, and one index then
    points at the other's machine code: a segfault on the next load (seen here: two warmup jobs, the
    float32 and float64 LU). This class names each data file after a hash of its key (different
    overloads never share a file), writes the data before the index entry that points at it, and
    holds an exclusive lock on ``<index>.lock`` while it reads, updates and writes the index, so that
    no process's entry is lost. Without ``fcntl`` (Windows) the lock is skipped; the hashed names
    still prevent corruption.
    """
    import pickle

    from numba.core import caching

    base = getattr(caching, "IndexDataCacheFile", None)
    if base is None or not all(hasattr(base, a) for a in ("_load_index", "_save_index", "_save_data")):
        return None

    class SafeIndexDataCacheFile(base):
        def _load_index(self):
            # An index written by another fastla version may name a class this one no longer has
            # (a kernel's argument type): unpickling it raises before Numba compares the source
            # stamp that would have made the entry stale. Stale it is: an empty index, recompiled.
            try:
                return super()._load_index()
            except (AttributeError, ImportError, EOFError, pickle.UnpicklingError, ValueError, TypeError):
                return {}

        def save(self, key, data):
            import hashlib
            import pickle

            with self._locked():
                overloads = self._load_index()
                name = overloads.get(key)
                if name is None:
                    digest = hashlib.sha256(pickle.dumps(key, protocol=4)).hexdigest()[:20]
                    name = f"{self._index_name[: -len('.nbi')]}.{digest}.nbc"
                self._save_data(name, data)
                if overloads.get(key) != name:
                    overloads[key] = name
                    self._save_index(overloads)

        def _locked(self):
            import contextlib

            try:
                import fcntl
            except ImportError:  # pragma: no cover - not on Linux/macOS
                return contextlib.nullcontext()

            @contextlib.contextmanager
            def lock():
                with open(self._index_path + ".lock", "a+b") as f:
                    fcntl.flock(f, fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        fcntl.flock(f, fcntl.LOCK_UN)

            return lock()

    return SafeIndexDataCacheFile


_SAFE_CACHE_FILE = _safe_cache_file_class() if JIT_ENABLED else None


def _use_safe_cache_file(dispatcher):
    """Give ``dispatcher``'s on-disk cache the process-safe file of :func:`_safe_cache_file_class`,
    and loads that keep the reload hooks (:func:`_keep_reload_hooks`)."""
    cache = getattr(dispatcher, "_cache", None)
    _keep_reload_hooks(getattr(cache, "_impl", None))
    old = getattr(cache, "_cache_file", None)
    if _SAFE_CACHE_FILE is None or old is None or not hasattr(old, "_index_name"):
        return dispatcher
    cache._cache_file = _SAFE_CACHE_FILE(old._cache_path, old._index_name[: -len(".nbi")], old._source_stamp)
    return dispatcher


def _keep_reload_hooks(impl):
    """Make a kernel loaded from the cache keep its ``reload_init`` hooks on its library.

    Numba runs a cached function's hooks when it loads it, but the library it rebuilds has none:
    a function compiled later that links that library (a plain call) inherits no hooks, and *its*
    cache entry then loads in a new process without registering the symbols that the linked code
    calls (``fastla._intrinsics.call_out_of_line``): LLVM aborts the process ("Symbol not found").
    Seen here: ``fastla.kernels.gemm`` in a user's cached function, whose serial GEMM links the
    task kernels that call the packing out of line, compiled in a process that had loaded those
    task kernels from the cache."""
    rebuild = getattr(impl, "rebuild", None)
    if rebuild is None or getattr(rebuild, "keeps_reload_hooks", False):
        return

    def rebuild_keeping_hooks(target_context, payload):
        cres = rebuild(target_context, payload)
        hooks = getattr(cres, "reload_init", None)
        library = getattr(cres, "library", None)
        if hooks and hasattr(library, "_reload_init"):
            library._reload_init.update(hooks)
        return cres

    rebuild_keeping_hooks.keeps_reload_hooks = True
    impl.rebuild = rebuild_keeping_hooks


#: Environment overrides that change generated code (kernel shapes). Numba's cache key knows the
#: host CPU but not these, so a cached kernel compiled without them would be reused wrongly:
#: while any is set, fastla compiles without the on-disk cache. (FASTLA_GEMM_KC/MC/NC reach the
#: kernels at run time, JB, DIRECT_M/DIRECT_BYTES, SMALL_B_M/SMALL_B_BYTES and L2_B_BYTES as
#: compile-time constants, PREFETCH_C/PREFETCH_B as the micro-kernel's code.)
CODEGEN_OVERRIDES = (
    "FASTLA_GEMM_TILE",
    "FASTLA_GEMM_JB",
    "FASTLA_GEMM_DIRECT_M",
    "FASTLA_GEMM_DIRECT_BYTES",
    "FASTLA_GEMM_SMALL_B_BYTES",
    "FASTLA_GEMM_SMALL_B_M",
    "FASTLA_GEMM_L2_B_BYTES",
    "FASTLA_GEMM_PREFETCH_C",
    "FASTLA_GEMM_PREFETCH_B",
    "FASTLA_SIMD_BYTES",
    "FASTLA_VECTOR_BYTES",
)
CACHE = not any(os.environ.get(v) for v in CODEGEN_OVERRIDES)


def jit(fn=None, *, parallel=False, fastmath=FASTMATH, inline="never", python_wrapper=True):
    """Compile ``fn`` with fastla's settings: nopython, ``cache=True``, ``nogil=True``.

    Compilation is lazy (no signature), so ``import fastla`` compiles nothing. Without numba the
    function is returned unchanged and runs as Python.

    ``python_wrapper=False``: no Python (and C) wrapper is compiled, for a kernel that only compiled
    code calls (through its :class:`Entry` address or a compiled caller): the wrapper that unboxes
    tuples of arrays took 0.1-0.25 s of each such kernel's compile (Zen 5). A Python call of it
    raises TypeError (with the JIT off it is the plain Python function, callable as ever).

    ``inline``: ``"never"`` (a call, which LLVM may still inline by its own cost model), ``"always"``
    (Numba inlines the function's IR into each caller, which types and lowers it again there, with
    the caller's flags), or ``"llvm"``: compiled once per signature with fastla's flags and cached
    like any kernel, then marked ``alwaysinline`` so that LLVM inlines it into each caller (Numba's
    ``forceinline``). For code whose callers are compiled often, such as a user's ``@njit`` function
    calling ``fastla.kernels.matmul`` (its product inlined at Numba's IR level made such a function
    take 3.3-3.9 s to compile for C-contiguous float64 operands, 9.8-11.7 s strided, 5.7-7.9 s for
    mixed dtypes; at LLVM's 1.2-1.4 / 0.9 / 0.7 s with fastla's cache warm; Zen 5). Not for a helper
    that one kernel calls: compiled on its own it has its own library, and the public stacked
    product's cold first call took 1 s longer with the small-product tiles so (3.3 -> 4.3 s); nor
    where a call's array arguments would stay reference-counted in a user's hot loop (the small
    solver measured 20 -> 85 ns a 3x3 system).
    """

    def wrap(f):
        if not NUMBA_AVAILABLE:
            return f
        options = {
            "nogil": True,
            "parallel": parallel,
            "fastmath": set(fastmath) if fastmath else False,
            "inline": "never" if inline == "llvm" else inline,
            "forceinline": inline == "llvm",
            "error_model": "numpy",  # x/0 gives inf/nan like NumPy instead of raising
        }
        if not python_wrapper:
            options.update(no_cpython_wrapper=True, no_cfunc_wrapper=True)
        if CACHE:
            try:
                dispatcher = _use_safe_cache_file(numba.njit(cache=True, **options)(f))
                return _compiled_only(dispatcher, python_wrapper)
            except RuntimeError as exc:  # "cannot cache function ...: no locator available"
                _warn_uncached(exc)
        return _compiled_only(numba.njit(cache=False, **options)(f), python_wrapper)

    return wrap(fn) if fn is not None else wrap


def _compiled_only(dispatcher, python_wrapper):
    """``dispatcher``, which a Python call refuses with a TypeError when it has no Python wrapper
    (the wrapper's entry point is null there: a call would crash the interpreter)."""
    if not python_wrapper and JIT_ENABLED:  # with the JIT off, numba returns the Python function
        dispatcher.__class__ = _compiled_only_class()
    return dispatcher


@functools.cache
def _compiled_only_class():
    base = numba.core.registry.CPUDispatcher

    class CompiledOnlyDispatcher(base):
        """A kernel compiled without its Python wrapper (:func:`jit`'s ``python_wrapper=False``):
        called through its entry address or from compiled code only."""

        def __call__(self, *args, **kwargs):
            raise TypeError(
                f"{self.py_func.__qualname__} is compiled without a Python wrapper: it runs only "
                "from compiled code (a compiled caller or its fastla._jit.Entry address)"
            )

    return CompiledOnlyDispatcher


def user_njit(fn):
    """What a Numba user writes, ``numba.njit(cache=True)`` with Numba's defaults (no fastmath,
    Python's error model): the caller in the ``fastla.kernels`` benchmarks, so that they measure
    the kernels as users' own code calls them. Without numba, ``fn`` itself."""
    if not NUMBA_AVAILABLE:
        return fn
    if CACHE:
        try:
            return _use_safe_cache_file(numba.njit(cache=True)(fn))
        except RuntimeError as exc:
            _warn_uncached(exc)
    return numba.njit(fn)


def serial(fn):
    """A serial compile of the parallel kernel ``fn`` (its ``prange`` loops run as ``range``): the
    same source, for callers that may themselves run inside a parallel region (``fastla.kernels``
    inside a user's ``prange``), where a nested parallel launch must not happen.

    The copy gets its own name (``<name>_serial``), hence its own cache entry: Numba's cache key
    does not include the ``parallel`` flag, so one name for both would load the wrong one.
    """
    py = getattr(fn, "py_func", fn)
    if not JIT_ENABLED:
        return py
    clone = types.FunctionType(
        py.__code__, py.__globals__, py.__name__ + "_serial", py.__defaults__, py.__closure__
    )
    clone.__qualname__ = py.__qualname__ + "_serial"
    clone.__module__ = py.__module__
    clone.__doc__ = py.__doc__
    return jit(clone)


class Entry:
    """A kernel that other kernels call through its address instead of linking a copy of it.

    Numba links a callee's whole module into each caller, where LLVM optimises and code-generates
    it again, and a ``prange`` loop is three such libraries (the loop body, its gufunc wrapper and
    the parallel launcher) inside the function around it: the GEMM's packing and macro-kernel were
    compiled five times over for one ``fastla.matmul`` (measured: 3.7 s of its 7 s cold first call
    in LLVM). Called through an address they are compiled once, in their own cached library.

    ``examples(dtype)`` gives example arguments of the one signature compiled per dtype, for each
    of ``dtypes`` (float32 and float64 unless said: the top-k kernels add float16, the dtype of a
    corpus they read as float32).
    :meth:`address` compiles (or loads) that signature and returns its entry point, which a Python
    caller passes into the compiled caller *at run time*, never as a constant, so that a cached
    caller stays valid in the next process. The compiled caller calls
    :func:`fastla._intrinsics.call_entry`, which uses the address only when its call's argument
    types are exactly that signature and otherwise links ``fn`` as usual (so a caller whose types
    drift compiles slower, never calls the wrong code). ``fn`` must not raise: the call ignores
    Numba's exception status.
    """

    _by_function: typing.ClassVar[dict] = {}

    def __init__(self, fn, examples, dtypes=(np.float32, np.float64)):
        self.fn = fn
        self._examples = examples
        self.dtypes = tuple(np.dtype(dt) for dt in dtypes)
        self._signatures = {}
        self._addresses = {}
        Entry._by_function[getattr(fn, "py_func", fn)] = self

    def signature(self, dtype):
        """The Numba argument types compiled for ``dtype``."""
        dtype = np.dtype(dtype)
        if dtype not in self._signatures:
            self._signatures[dtype] = tuple(numba.typeof(x) for x in self._examples(dtype))
        return self._signatures[dtype]

    def address(self, dtype, impl=None):
        """Entry point of ``fn`` compiled for ``dtype``; None with the JIT off (callers then run
        ``fn`` directly).

        ``impl``: another ``@jit`` function with ``fn``'s signature (a variant of it specialised at
        compile time, such as the lane solver's step for one (n, k)), compiled for the same
        argument types; a caller compiled once then calls any of the variants through its
        address, ``fn`` standing in for them in its typing."""
        if not JIT_ENABLED:
            return None
        dtype, impl = np.dtype(dtype), self.fn if impl is None else impl
        found = self._addresses.get((impl, dtype))
        if found is None:
            ensure_threads()  # a kernel using thread ids cannot be loaded before the layer starts
            sig = self.signature(dtype)
            impl.compile(sig)
            compiled = impl.overloads[sig]
            found = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
            self._addresses[(impl, dtype)] = found
        return found

    def loaded(self, dtype, impl=None):
        """Whether :meth:`address` has compiled (or loaded) ``impl`` (default ``fn``) for ``dtype``
        in this process."""
        return (self.fn if impl is None else impl, np.dtype(dtype)) in self._addresses

    @classmethod
    def takes(cls, fn_type, args_type):
        """Whether the Numba types of a call ``fn(*args)`` are a signature that an :class:`Entry`
        of ``fn`` compiles (so that its address may be called with them)."""
        dispatcher = getattr(fn_type, "dispatcher", None)
        entry = cls._by_function.get(getattr(dispatcher, "py_func", None))
        if entry is None or not isinstance(args_type, nb_types.BaseTuple):
            return False
        args = tuple(args_type.types)
        return any(args == entry.signature(dt) for dt in entry.dtypes)


_UNCACHED = []


def _warn_uncached(exc):
    """Warn once that no cache location is writable: kernels then compile in every process."""
    if not _UNCACHED:
        import warnings

        warnings.warn(
            "fastla: no writable location for Numba's kernel cache (the package directory, "
            f"NUMBA_CACHE_DIR and the per-user cache directory all failed: {exc}); kernels will "
            "be compiled in every process. Set NUMBA_CACHE_DIR to a writable directory.",
            RuntimeWarning,
            stacklevel=4,
        )
    _UNCACHED.append(exc)


def cache_dirs():
    """The directories holding fastla's cached kernels (empty when caching is off)."""
    import sys

    dirs = set()
    for name, module in list(sys.modules.items()):
        if name == "fastla" or name.startswith("fastla."):
            for obj in vars(module).values():
                path = getattr(getattr(obj, "_cache", None), "_cache_path", None)
                if path:
                    dirs.add(path)
    return dirs


#: Unsigned index type for computed indices: with a signed index Numba checks every access for a
#: negative index, which keeps LLVM from vectorising the loop (measured: packing a 1000 x 1000 GEMM
#: operand took 5.7 ms with signed and 0.42 ms with unsigned indices).
U = np.uint64


def intrinsic(twin):
    """Decorator pairing an ``@intrinsic`` typer with its plain-Python ``twin``.

    With JIT on, the decorated typer becomes a Numba intrinsic (callable only from compiled code);
    with JIT off or numba absent, the twin is returned instead, so the kernels that call it still run
    as Python.
    """

    def wrap(typer):
        if not JIT_ENABLED:
            return twin
        return _nb_intrinsic(typer)

    return wrap


def overload(pyfunc):
    """Decorator giving the Python function ``pyfunc`` an implementation in compiled code.

    The decorated *typer* receives the Numba types of the call's arguments and returns the
    implementation (a function Numba compiles for those types) or None. ``pyfunc`` stays what Python
    callers (and the JIT-off mode) run. This is how :mod:`fastla.kernels` works inside a user's
    ``@njit`` code: one name, an implementation chosen by argument type (scalar or array, 1-D or 2-D).
    """

    def wrap(typer):
        if JIT_ENABLED:
            from numba.extending import overload as _overload

            options = {"fastmath": set(FASTMATH), "error_model": "numpy", "no_cpython_wrapper": True}
            # inlined into the caller at Numba's IR level: across a call boundary each array argument
            # costs reference-count traffic (a 3x3 solve in a user's loop: 349 ns called, see kernels)
            _overload(pyfunc, jit_options=options, prefer_literal=False, inline="always")(typer)
        return pyfunc

    return wrap


def overload_by_dtype(pyfunc, impls, fastmath=frozenset({"contract"})):
    """Give the Python function ``pyfunc`` compiled implementations chosen by argument dtype.

    ``impls`` maps a dtype name (``"float32"``/``"float64"``) to a plain-Python implementation that
    numba compiles when ``pyfunc`` is called from a kernel with a scalar (or array) of that dtype. ``pyfunc``
    itself stays the Python version (used without JIT). ``fastmath`` defaults to contraction only:
    these are careful numerical routines that reassociation would break. NumPy's error model
    whatever the caller's: a division then compiles to a division, not to a zero test that raises,
    which kept ``log``'s loop scalar in a plain ``@njit`` caller.
    """
    if not JIT_ENABLED:
        return pyfunc
    from numba.extending import overload

    @overload(pyfunc, jit_options={"fastmath": set(fastmath), "error_model": "numpy"})
    def _typed(x):
        dtype = x.dtype if isinstance(x, nb_types.Array) else x
        return impls.get(str(dtype)) if isinstance(dtype, nb_types.Float) else None

    return pyfunc


# --------------------------------------------------------------------------- threading


def _preload_tbb():
    """Load oneTBB's runtime where the ``tbb`` wheel put it, so that Numba's TBB layer can start.

    The wheel installs ``libtbb.so.12`` into ``<prefix>/lib``, outside the dynamic loader's search
    path, and Numba's pool module for the layer (``numba.np.ufunc.tbbpool``) names the library
    without a path: loaded once with ``RTLD_GLOBAL`` here, the pool module finds it by its soname.
    Linux only (elsewhere the loader's own search, or nothing); False where no library loaded."""
    if not sys.platform.startswith("linux"):
        return False
    path = _tbb_library()
    if path is None:
        return False
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


_TBB_LIBRARY = "libtbb.so.12"


def _tbb_library():
    """The path of the ``tbb`` wheel's ``libtbb.so.12``: under the environment's prefix (a virtual
    environment's or the system's install), else where the wheel's own record puts it (a ``pip
    install --user``: ``~/.local/lib``); None without one."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        path = os.path.join(prefix, "lib", _TBB_LIBRARY)
        if os.path.exists(path):
            return path
    from importlib import metadata

    try:
        files = metadata.distribution("tbb").files or ()
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == _TBB_LIBRARY:
            path = str(file.locate())
            if os.path.exists(path):
                return path
    return None


def _cpu_quota(root="/sys/fs/cgroup", cgroup_file="/proc/self/cgroup"):
    """The CPUs' worth of time a cgroup grants this process (quota / period: 1.0 for one CPU), or
    None without a limit: cgroup v2's ``cpu.max``, else v1's ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``, in the process's own cgroup under ``root`` and at ``root`` itself (a
    container sees its own cgroup there)."""
    try:
        with open(cgroup_file) as f:
            entries = [line.split(":", 2) for line in f.read().splitlines() if line.count(":") >= 2]
    except OSError:
        entries = []
    places = []
    for _, controllers, path in entries:
        if controllers == "":
            places.append((os.path.join(root, path.lstrip("/")), "v2"))
        elif "cpu" in controllers.split(","):
            places.append((os.path.join(root, controllers, path.lstrip("/")), "v1"))
            places.append((os.path.join(root, "cpu", path.lstrip("/")), "v1"))
    places += [(root, "v2"), (os.path.join(root, "cpu"), "v1"), (os.path.join(root, "cpu,cpuacct"), "v1")]
    # each place once: a "cpu" controller line names the same directory twice, and a cgroup path of
    # "/" the root's again
    for where, version in dict.fromkeys((os.path.normpath(w), v) for w, v in places):
        try:
            if version == "v2":
                with open(os.path.join(where, "cpu.max")) as f:
                    quota, period = f.read().split()[:2]
                if quota == "max":
                    return None
            else:
                with open(os.path.join(where, "cpu.cfs_quota_us")) as f:
                    quota = f.read().strip()
                with open(os.path.join(where, "cpu.cfs_period_us")) as f:
                    period = f.read().strip()
                if int(quota) < 0:
                    return None
            return int(quota) / int(period)
        except (OSError, ValueError, ZeroDivisionError):
            continue
    return None


def usable_cpus():
    """The CPUs this process may use: its affinity mask (``os.sched_getaffinity``, else
    ``os.cpu_count()``), capped by a cgroup CPU quota (:func:`_cpu_quota`; fractional)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cpu_quota() if sys.platform.startswith("linux") else None
    return cpus if quota is None else min(cpus, quota)


def usable_cpu_count():
    """:func:`usable_cpus` as a whole number, at least 1: a fractional quota rounded up (1.5 CPUs
    give 2), the default count of fastla's threads and of ``fastla.warmup``'s processes."""
    return max(1, math.ceil(usable_cpus()))


def _choose_threading_layer():
    """Pick a layer that survives concurrent launches; return True if a lock is still needed.

    Not TBB where the process has less than two CPUs (its affinity or a cgroup quota, as in a
    container limited to one CPU): oneTBB then starts no worker thread, and Numba's TBB layer, whose
    start-up hands a task to its task group on the thread that first launches it, waits for that
    task at interpreter exit; when the launch was on another Python thread than the main one, it
    waits forever (measured here: a kernel called from a ``threading.Thread`` with the process
    pinned to one CPU, exit hung 3 times in 3 on TBB; OpenMP and the work queue exited; with every
    kernel on the main thread, two processes pinned to one CPU each both hung at exit in 2 of 37 runs). OpenMP
    then, else the work queue behind the lock; with one CPU, no second thread to lose."""
    if not JIT_ENABLED:
        return False
    if os.environ.get("NUMBA_THREADING_LAYER"):
        _preload_tbb()
        return numba.config.THREADING_LAYER in ("workqueue", "default")
    one_cpu = usable_cpus() < 2
    if not one_cpu:
        _preload_tbb()  # Numba's own default order tries TBB first too
    for mod in ("omppool",) if one_cpu else ("tbbpool", "omppool"):
        try:
            __import__(f"numba.np.ufunc.{mod}")
        except ImportError:
            continue
        numba.config.THREADING_LAYER = "omp" if one_cpu else "threadsafe"
        return False
    if one_cpu:  # not Numba's default order, which tries TBB first
        numba.config.THREADING_LAYER = "workqueue"
    return True


def _defer_numba_blas_probe():
    """Keep Numba's start-up from importing ``scipy.linalg`` for fastla's kernels.

    Numba's CPU target imports ``numba.np.arraymath`` at its first compile or cache load, and that
    module probes for BLAS at import (``_HAVE_BLAS = _check_blas()``: ``import
    scipy.linalg.cython_blas``, all of ``scipy.linalg``, 0.13 s of a 0.25 s warm first call here),
    for the ``np.dot``-style calls that fastla's kernels never make. Where SciPy is installed the
    probe's answer is yes, so that one call answers yes without the import; every later call (Numba
    compiling a user's ``np.dot`` or ``np.linalg`` call) is Numba's own check, import included.
    Without SciPy, or once ``arraymath`` is imported, nothing changes. Returns whether it deferred."""
    if not JIT_ENABLED or "numba.np.arraymath" in sys.modules:
        return False
    import importlib.util

    try:
        if importlib.util.find_spec("scipy") is None:
            return False
        from numba.np import linalg
    except (ImportError, ValueError):
        return False
    real = getattr(linalg, "ensure_blas", None)
    if real is None or getattr(real, "_fastla_deferred", False):
        return False

    def ensure_blas():
        probing = sys.modules.get("numba.np.arraymath")
        if probing is not None and not hasattr(probing, "_HAVE_BLAS"):
            return None  # arraymath's import-time probe, SciPy installed: yes
        return real()

    ensure_blas._fastla_deferred = True
    ensure_blas.__doc__ = real.__doc__
    linalg.ensure_blas = ensure_blas
    return True


_NEEDS_LOCK = _choose_threading_layer()
_BLAS_PROBE_DEFERRED = _defer_numba_blas_probe()
_PARALLEL_LOCK = threading.RLock()


FORK_ERROR = (
    "numba's GNU OpenMP threads had started when this process was forked, and GNU OpenMP cannot "
    "run parallel code in a forked child (numba terminates it): start worker processes with "
    "multiprocessing's 'spawn' or 'forkserver' method, or install tbb (numba's fork-safe layer)"
)


def _after_fork_in_child():
    """In a child forked after the GNU OpenMP layer started: compiled kernels off, NumPy instead.

    Numba terminates a process that launches a parallel region of that layer after a fork, so the
    child's ``auto`` calls use NumPy and an explicit ``backend="numba"`` raises
    :class:`~fastla.BackendUnavailable` with :data:`FORK_ERROR`, instead of the child dying.
    """
    global NUMBA_AVAILABLE, NUMBA_IMPORT_ERROR
    if NUMBA_AVAILABLE and JIT_ENABLED and forked_layer_is_unsafe():
        NUMBA_AVAILABLE = False
        NUMBA_IMPORT_ERROR = FORK_ERROR


def forked_layer_is_unsafe():
    """Whether numba's running threading layer is GNU OpenMP (not usable after fork)."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region run yet: the child starts its own layer
        return False
    if layer != "omp":
        return False
    from numba.np.ufunc import omppool

    return getattr(omppool, "openmp_vendor", "GNU") == "GNU"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def run_parallel(fn, *args, **kwargs):
    """Call ``fn`` (which may launch parallel kernels) safely from any Python thread.

    Runs it with this call's share of fastla's threads (:func:`threads_here`) set on this thread
    (numba's count is thread-local) and puts the thread's previous count back afterwards, so that
    fastla's setting never leaks into the caller's own Numba code. Serialises the call when only
    the non-thread-safe ``workqueue`` layer is available.
    """
    if not JIT_ENABLED:
        return python_rendering(fn, *args, **kwargs)
    ensure_threads()
    tls = _TLS
    if tls.share:  # nested in a call of this thread: its share is already set
        return fn(*args, **kwargs)
    _ACTIVE.append(None)  # list.append/pop/len are atomic: a lock-free count of callers
    try:
        n = _NUM_THREADS[0] if _NUM_THREADS else default_num_threads()
        busy = len(_ACTIVE)
        if busy > 1:  # other Python threads are inside fastla kernels now: take a share
            n = max(1, n // busy)
        tls.share = n
        if _NEEDS_LOCK:
            with _PARALLEL_LOCK:
                return _at_count(n, fn, *args, **kwargs)
        return _at_count(n, fn, *args, **kwargs)
    finally:
        tls.share = 0
        _ACTIVE.pop()


def _at_count(n, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with this thread's Numba thread count at ``n``, the previous count put
    back afterwards (the layer started: :func:`ensure_threads`)."""
    get, put = _NUMBA_THREADS
    before = get()
    if before == n:
        return fn(*args, **kwargs)
    put(n)
    try:
        return fn(*args, **kwargs)
    finally:
        put(before)


def run_serial(fn, *args):
    """``fn(*args)`` with this thread's Numba thread count at 1, put back afterwards: a ``prange``
    kernel then runs its loop on this thread, without waking another (a second thread's start cost
    12-17 us on an AMD EPYC guest, znver2, against ~2 us on Zen 4). For calls whose work is below
    their op's serial bound. With the JIT off (plain Python: no threads) or the layer not started,
    just the call."""
    if not _NUMBA_THREADS:
        return fn(*args)
    return _at_count(1, fn, *args)


class _Local(threading.local):
    share = 0  # this thread's share while it is inside run_parallel, else 0


_TLS = _Local()
_ACTIVE: list[None] = []  # one entry per Python thread inside run_parallel now
# numba's (get, set) of this thread's count: its C entry points once the layer is up (set by
# ensure_threads; numba.get/set_num_threads spend 2.7 and 3.4 us a call in Python checks)
_NUMBA_THREADS: list = []


def threads_here():
    """Threads the current call's parallel kernels run on: its share inside :func:`run_parallel`
    (what the GEMM and top-k drivers partition work for), else :func:`get_num_threads`."""
    return _TLS.share or get_num_threads()


def threads_for(work, serial_below):
    """:func:`threads_here`, or one thread for less ``work`` than ``serial_below`` (each caller's
    measured threshold, in its own unit: a parallel launch costs ~2 us on Numba's TBB layer, more
    than a second thread saves on little work)."""
    return 1 if work < serial_below else threads_here()


def _bind_numba_threads():
    from numba.np.ufunc import parallel

    get = getattr(parallel, "_get_num_threads", None)
    put = getattr(parallel, "_set_num_threads", None)
    if get is None or put is None:  # pragma: no cover - another numba's internals
        get, put = numba.get_num_threads, numba.set_num_threads
    _NUMBA_THREADS[:] = [get, put]


_THREADS = []


def ensure_threads():
    """Start Numba's threading layer before the first compiled call of this process.

    A kernel loaded from the on-disk cache that calls a parallel kernel (LU's factorisation calls
    the parallel GEMM driver) crashes if the threading layer has not been started: Numba records
    "start the threads on load" for a function with parallel loops, but when the callee itself came
    from the cache while the caller compiled, the caller's cache entry lacks that record. Seen here:
    ``lu_factor`` segfaulted in a fresh process after ``fastla warmup`` had filled the cache.
    """
    if not _THREADS and JIT_ENABLED:
        numba.get_num_threads()  # starts the layer as a side effect
        _bind_numba_threads()
        _THREADS.append(True)


def python_rendering(fn, *args, **kwargs):
    """Run compiled-kernel code as Python (JIT off) with NumPy's FP warnings silenced.

    Compiled kernels never check floating-point flags (overflow to inf in exp, log(0) = -inf are
    their intended results); run as Python on NumPy scalars the same operations would warn.
    """
    import numpy as np

    with np.errstate(all="ignore"):
        return fn(*args, **kwargs)


def max_threads():
    """Number of threads numba was started with (1 without numba)."""
    if not NUMBA_AVAILABLE:
        return 1
    return numba.config.NUMBA_NUM_THREADS


# Threads: set_num_threads(n) is process-wide. Numba's own set_num_threads is thread-local (a new
# Python thread starts with all cores), so fastla keeps the number here and run_parallel applies it
# on the calling thread for the duration of each call. threadpoolctl's threadpool_limits sets it
# too (fastla/_threads.py). BLAS threads are left alone; benchmarks pin them with threadpoolctl.
_NUM_THREADS: list[int] = []  # empty: default_num_threads()


def set_num_threads(n):
    """Set the number of threads fastla's parallel Numba kernels use (process-wide).

    ``n`` must be between 1 and the number numba was started with (``NUMBA_NUM_THREADS``); None
    goes back to the default (:func:`default_num_threads`). ``threadpoolctl.threadpool_limits``
    sets it too. BLAS threads are not touched: pin them with ``threadpoolctl`` when comparing.
    """
    if n is None:
        _NUM_THREADS.clear()
    else:
        # _validate.as_int's rule, written out: this module imports no other fastla module
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
        n = int(n)  # a NumPy integer (e.g. from os.cpu_count() arithmetic on arrays) is one too
        upper = max_threads()
        if not 1 <= n <= upper:
            raise ValueError(f"set_num_threads: n must be in [1, {upper}], got {n}")
        if _NUM_THREADS == [n]:
            return
        _NUM_THREADS[:] = [n]
    for hook in THREAD_HOOKS:  # the auto profile measured at this thread count
        hook()


#: Called after the thread count changes (fastla/_profile.py's ``load``).
THREAD_HOOKS: list = []


def get_num_threads():
    """Return the number of threads fastla's parallel kernels use (each call's most: Python threads
    that call fastla at the same time split them, see :func:`run_parallel`)."""
    return _NUM_THREADS[0] if _NUM_THREADS else default_num_threads()


def configured_num_threads():
    """The explicitly set thread count, or None when left at the default."""
    return _NUM_THREADS[0] if _NUM_THREADS else None


@functools.cache
def default_num_threads():
    """fastla's thread count until :func:`set_num_threads`: every thread numba starts
    (``NUMBA_NUM_THREADS``: all cores, or the worker's share in joblib's process workers, which set
    it), capped by ``OMP_NUM_THREADS`` when that is set and ``NUMBA_NUM_THREADS`` is not (Dask's
    worker processes set ``OMP_NUM_THREADS=1``; PyTorch reads it the same way), and by a cgroup CPU
    quota, rounded up (a container given 2 CPUs of a 64-core host: 2 threads, not 64 that the
    quota then throttles; Numba counts the affinity mask only)."""
    top = max_threads()
    if os.environ.get("NUMBA_NUM_THREADS"):
        return top
    top = min(top, usable_cpu_count())
    try:
        omp = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        return top
    return max(1, min(omp, top))


def threading_layer():
    """The active layer after the first parallel launch, else what was configured."""
    if not NUMBA_AVAILABLE:
        return None
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region run yet
        return f"{numba.config.THREADING_LAYER} (not yet started)"
