"""The one place for fastla's settings.

* Backend: ``set_backend(name)`` sets the process-wide default, ``backend(name)`` overrides it for a
  ``with`` block (a :class:`contextvars.ContextVar`, so one thread's or task's block never leaks into
  another), ``FASTLA_BACKEND`` seeds the default at import. Names: ``auto|numba|numpy|loop``.
* Threads are Numba's, so their count lives in :mod:`fastla._jit` (``set_num_threads``).
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


def auto():
    """Whether ``auto`` is the backend in force here (the public functions' fast-path check)."""
    scoped = _scoped_backend.get()
    return (_default_backend if scoped is None else scoped) == "auto"


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
