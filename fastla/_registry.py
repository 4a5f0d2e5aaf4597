"""Operation registry: op name -> {impl name -> kernel}, plus each op's validation and auto rule.

Tests and benchmarks iterate :func:`implementations` only, so adding an impl to an op adds it to the
test matrix and to the benchmark tables. The callables it returns run the *public* call path with
the backend forced (validation included), so every impl is exercised exactly as users call it.

The call path (ARCHITECTURE.md, "Layers") is ``public fn -> Operation.prepare (validate once)
-> Operation.select (backend setting + the op's auto rule) -> kernel``. Shared rules live here:
input that no kernel compiles (ints for matmul, complex, float16, object, subclasses) goes to
``numpy`` under ``auto``; forcing a compiled backend on it is a ``TypeError``; forcing ``numba``
without numba is :class:`BackendUnavailable`.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastla import _config, _first_use, _jit, _profile


class BackendUnavailable(RuntimeError):
    """A backend was asked for explicitly but cannot run here (e.g. numba is not installed)."""


@dataclass
class Impl:
    name: str
    fn: Callable
    needs_numba: bool = False  # raises BackendUnavailable without numba; runs in a parallel region
    any_dtype: bool = False  # True for numpy: accepts what NumPy accepts
    doc: str = ""


@dataclass
class Prepared:
    """What validation hands to the rule and the kernel.

    ``compiled`` is None when a compiled kernel can run, else the reason it cannot (a sentence);
    ``forced_error``, when set, is what a forced compiled backend raises for such input instead of
    the generic TypeError (e.g. NumPy's error for a bad ``out=``, which ``numpy`` raises itself).
    ``facts`` holds what the auto rule reads (shapes, dtype, sizes); ``args`` the clean inputs, as
    the op's NamedTuple of validated arguments (``matmul.MatmulArgs``, ...), whose fields every impl
    takes in order (``impl(*args)``; tests/test_architecture.py checks the names).
    """

    args: tuple
    kwargs: dict = field(default_factory=dict)
    compiled: str | None = None
    facts: dict = field(default_factory=dict)
    forced_error: Exception | None = None


@dataclass
class Operation:
    name: str
    prepare: Callable[..., Prepared]
    rule: Callable[[Prepared], tuple[str, str | Callable[[], str]]]  # a reason may be lazy
    public: Callable | None = None
    impls: dict[str, Impl] = field(default_factory=dict)
    #: the suffix of this call's key among the op's own kernels (``fastla._first_use``) where one of
    #: its paths compiles kernels of its own (top-k's packed one: ".packed"); None: one key per dtype
    kernel_path: Callable[[Prepared], str] | None = None

    def kernel_key(self, prep):
        """The ``fastla._first_use.KERNELS`` key of the kernels this call's compiled impl runs."""
        path = "" if self.kernel_path is None else self.kernel_path(prep)
        return _first_use.kernel_key(self.name + path, getattr(prep.args[0], "dtype", None))

    def register(self, name, *, needs_numba=False, any_dtype=False):
        """Decorator adding a kernel under ``name``."""

        def deco(fn):
            doc = (fn.__doc__ or "").strip().splitlines()
            self.impls[name] = Impl(name, fn, needs_numba, any_dtype, doc[0] if doc else "")
            return fn

        return deco

    def choose(self, backend, prep):
        """Return ``(impl name, reason)`` for this call, raising for an impossible forced backend.

        Rules may return the reason as a zero-argument callable so that the hot path does not
        format strings that only :func:`explain` reads.
        """
        requested = _config.get_backend() if backend is None else backend
        _config.check_backend(requested, ("auto", *self.impls))
        if requested == "auto":
            if prep.compiled is not None:
                return "numpy", prep.compiled
            if not _jit.NUMBA_AVAILABLE:
                return "numpy", f"{_jit.NUMBA_IMPORT_ERROR}; using numpy"
            name, reason = self.rule(prep)
            if name != "numpy" and self.impls[name].needs_numba:
                # the op's own kernels: compiled, cached, or NumPy's calls have paid for them?
                key = self.kernel_key(prep)
                if not _first_use.KERNELS.wins(key):
                    dtype = getattr(prep.args[0], "dtype", None)
                    return "numpy", _first_use.KERNELS.pending(key, f"{key[0]} of {dtype} arrays")
            return name, reason
        impl = self.impls[requested]
        if impl.needs_numba and not _jit.NUMBA_AVAILABLE:
            raise BackendUnavailable(f"{self.name}: backend {requested!r}: {_jit.NUMBA_IMPORT_ERROR}")
        if not impl.any_dtype and prep.compiled is not None:
            if prep.forced_error is not None:
                raise prep.forced_error
            raise TypeError(f"{self.name}: backend {requested!r} cannot run this input: {prep.compiled}")
        how = "per-call backend=" if backend is not None else "global backend "
        return requested, f"{how}{requested!r}"

    def run(self, backend, prep):
        """Choose the impl for ``prep`` and run it on the clean arguments (a call that runs NumPy
        until its size's kernel, or its op's kernels, pay for their compile is timed for that; a
        compiled run is recorded: ``fastla._first_use``)."""
        name, reason = self.choose(backend, prep)
        impl = self.impls[name]
        if impl.needs_numba:
            res = _jit.run_parallel(impl.fn, *prep.args, **prep.kwargs)
            _first_use.ran(self.kernel_key(prep))
            return res
        if type(reason) is _first_use.Pending:
            return reason.run(impl.fn, *prep.args, **prep.kwargs)
        return impl.fn(*prep.args, **prep.kwargs)


def fast_path(backend):
    """The backend a public function's fast path runs a call's ``backend=`` under: ``"auto"`` (the
    op's rule, evaluated on the spot) or ``"numba"`` (forced by the call or by the setting in force),
    when compiled kernels can run (numba imports; not a child forked after GNU OpenMP started); else
    None, and the call takes the full path (``numpy``, ``loop``, unknown names, no numba), whose
    errors stay the only ones. The full path costs a forced ``numba`` call ~5 us more (Zen 4: a 4x4
    product 17.5 -> 11.8 us, 64^3 22-27 -> 18-21 us), which ``fastla tune``'s timings of the
    ``numba`` side paid too."""
    if not _jit.NUMBA_AVAILABLE:
        return None
    requested = _config.get_backend() if backend is None else backend
    return requested if type(requested) is str and requested in ("auto", "numba") else None


_OPERATIONS: dict[str, Operation] = {}


def operation(name, prepare, rule):
    """Create and register an :class:`Operation`."""
    op = Operation(name, prepare, rule)
    _OPERATIONS[name] = op
    return op


def _get(op_name):
    try:
        return _OPERATIONS[op_name]
    except KeyError:
        raise ValueError(f"unknown operation {op_name!r}; known: {', '.join(sorted(_OPERATIONS))}") from None


def operations():
    """Names of all registered operations, sorted."""
    return sorted(_OPERATIONS)


def implementations(op_name) -> types.MappingProxyType:
    """Mapping impl name -> callable for ``op_name``.

    Each callable is the public function with ``backend=`` fixed to that impl, so it validates its
    input exactly as users' calls do.

    Examples
    --------
    >>> import fastla
    >>> sorted(fastla.implementations("matmul"))
    ['loop', 'numba', 'numba_naive', 'numpy']
    """
    op = _get(op_name)
    out = {}
    for name in op.impls:
        f = functools.partial(op.public, backend=name)
        functools.update_wrapper(f, op.public)
        f.__name__ = f"{op_name}[{name}]"
        out[name] = f
    return types.MappingProxyType(out)


def kernels(op_name) -> dict[str, Impl]:
    """The raw kernels (no validation) of ``op_name``: for studies and internal reuse."""
    return dict(_get(op_name).impls)


def explain(op_name, *args, backend=None, **kwargs) -> tuple[str, str]:
    """Return ``(impl name, reason)`` that a call ``op(*args, **kwargs)`` would use.

    Examples
    --------
    >>> import numpy as np, fastla
    >>> fastla.explain("matmul", np.ones((2, 2), dtype=np.int64), np.ones((2, 2)))[0]
    'numpy'
    """
    op = _get(op_name)
    if _any_dask(args, kwargs):
        return _DASK["explain"](op, backend)
    public = op.public
    if public is not None:  # the call's arguments, named as the public function names them
        try:
            inspect.signature(public).bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"explain({op_name!r}, ...): {public.__name__}(): {exc}") from None
    prep = op.prepare(*args, **kwargs)
    name, reason = op.choose(backend, prep)
    reason = reason() if callable(reason) else reason
    requested = _config.get_backend() if backend is None else backend
    if requested == "auto" and prep.compiled is None and _jit.NUMBA_AVAILABLE:
        threshold = _profile.note(op_name)  # shipped default or this machine's measured value
        if threshold:
            reason = f"{reason} [{threshold}]"
    return name, reason


def is_dask(x) -> bool:
    """Whether ``x`` is a dask collection (checked by type, without importing dask)."""
    return type(x).__module__.startswith("dask.") and hasattr(x, "__dask_graph__")


def _any_dask(args, kwargs):
    # on every call: ndarrays, the common case, cost one type check each
    for x in args:
        if type(x) is not np.ndarray and is_dask(x):
            return True
    if kwargs:
        for x in kwargs.values():
            if type(x) is not np.ndarray and is_dask(x):
                return True
    return False


def _no_dask(*args, **kwargs):
    raise TypeError("fastla: no dask layer is installed (fastla.set_dask_handlers was not called)")


#: The dask layer's entry points: ``dispatch(op_name, *args, **kwargs)`` and ``explain(op, backend)``.
#: ``fastla/__init__.py`` installs them (:func:`set_dask_handlers`); the registry never imports the
#: dask layer, which sits above every op module.
_DASK = {"dispatch": _no_dask, "explain": _no_dask}


def set_dask_handlers(dispatch, explain):
    """Install the dask layer's ``dispatch`` and ``explain`` (see :data:`_DASK`)."""
    _DASK.update(dispatch=dispatch, explain=explain)


def public(op: Operation) -> Callable[[Callable], Callable]:
    """Decorator marking the public function of ``op`` (used by :func:`implementations`).

    The one branch of the call path for dask arrays is here: a call with a ``dask.array.Array``
    argument goes to the dask layer's dispatch (the function of the same name in
    :mod:`fastla.dask`, which builds a lazy graph running ``fn`` (this very function, any
    ``backend=``) on each chunk).
    """

    def deco(fn: Callable[..., Any]):
        any_dask = _any_dask
        handlers = _DASK

        def call(*args, **kwargs):
            if any_dask(args, kwargs):
                return handlers["dispatch"](op.name, *args, **kwargs)
            return fn(*args, **kwargs)

        # The wrapper gets the op module's globals (it reads only its closure): doctest, pydoc and
        # friends decide where a function belongs by its globals, not by ``__module__``.
        call = types.FunctionType(call.__code__, fn.__globals__, fn.__name__, None, call.__closure__)
        functools.update_wrapper(call, fn)
        op.public = call
        return call

    return deco
