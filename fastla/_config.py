"""The one place for fastla's settings.

* Backend: ``set_backend(name)`` sets the process-wide default, ``backend(name)`` overrides it for a
  ``with`` block (a :class:`contextvars.ContextVar`, so one thread's or task's block never leaks into
  another), ``FASTLA_BACKEND`` seeds the default at import. Names: ``auto|numba|numpy|loop``.
* Threads: ``set_num_threads(n)`` is process-wide. Numba's own ``set_num_threads`` is thread-local
  (a new Python thread starts with all cores), so fastla stores the number here and applies it on the
  calling thread right before each parallel kernel (see ``_jit.apply_num_threads``). BLAS threads are
  left alone; benchmarks pin them with threadpoolctl.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

BACKENDS = ("auto", "numba", "numpy", "loop")
ENV_BACKEND = "FASTLA_BACKEND"


def check_backend(name, valid=BACKENDS):
    """Return ``name`` if it is one of ``valid``, else raise ``ValueError`` listing them."""
    if not isinstance(name, str) or name not in valid:
        raise ValueError(f"unknown backend {name!r}; valid backends are: {', '.join(valid)}")
    return name


def _initial_backend():
    raw = os.environ.get(ENV_BACKEND, "").strip()
    if not raw:
        return "auto"
    try:
        return check_backend(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {ENV_BACKEND}: {exc}") from None


_default_backend = _initial_backend()
_scoped_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastla_backend", default=None)
_num_threads: int | None = None  # None: numba's default (NUMBA_NUM_THREADS, all cores)


def set_backend(name):
    """Set the process-wide default backend.

    Parameters
    ----------
    name : {"auto", "numba", "numpy", "loop"}

    Examples
    --------
    >>> import fastla
    >>> fastla.set_backend("numpy"); fastla.get_backend()
    'numpy'
    >>> fastla.set_backend("auto")
    """
    global _default_backend
    _default_backend = check_backend(name)


def get_backend():
    """Return the backend in force here: the innermost ``with backend(...)``, else the default."""
    scoped = _scoped_backend.get()
    return _default_backend if scoped is None else scoped


@contextlib.contextmanager
def backend(name):
    """Context manager that selects a backend for the calls inside the block.

    The previous setting is restored on exit, also when the block raises.

    Examples
    --------
    >>> import fastla
    >>> with fastla.backend("loop"):
    ...     fastla.get_backend()
    'loop'
    >>> fastla.get_backend()
    'auto'
    """
    token = _scoped_backend.set(check_backend(name))
    try:
        yield name
    finally:
        _scoped_backend.reset(token)


def set_num_threads(n):
    """Set the number of threads fastla's parallel Numba kernels use (process-wide).

    ``n`` must be between 1 and the number numba was started with (``NUMBA_NUM_THREADS``).
    BLAS threads are not touched: pin them with ``threadpoolctl`` when comparing.
    """
    from fastla import _jit

    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    upper = _jit.max_threads()
    if not 1 <= n <= upper:
        raise ValueError(f"set_num_threads: n must be in [1, {upper}], got {n}")
    _num_threads = n
    _jit.apply_num_threads()


def get_num_threads():
    """Return the number of threads fastla's parallel kernels use."""
    from fastla import _jit

    return _num_threads if _num_threads is not None else _jit.max_threads()


def configured_num_threads():
    """The explicitly set thread count, or None when left at numba's default."""
    return _num_threads
