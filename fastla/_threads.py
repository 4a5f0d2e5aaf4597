"""fastla's threads under threadpoolctl.

``threadpoolctl.threadpool_limits(n)`` caps fastla's kernels as it caps BLAS and OpenMP:
:class:`FastlaController` is registered with threadpoolctl (its custom-controller API, 3.5+) at
import. threadpoolctl finds controllers through the shared libraries a process has loaded, and
fastla has none of its own, so the controller is keyed to numba's helper library, which is loaded
whenever fastla's kernels can run. Its ``user_api`` and ``internal_api`` are ``"fastla"``:
``threadpool_limits(1, user_api="blas")`` leaves fastla alone, ``threadpool_limits(1)`` caps it.
"""

from __future__ import annotations

import functools

from fastla import _jit

USER_API = "fastla"


def register():
    """Register :class:`FastlaController` with threadpoolctl; False where that cannot be done
    (no threadpoolctl, one older than 3.5, or no numba)."""
    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover - a dependency
        return False
    if not hasattr(threadpoolctl, "register") or not _jit.NUMBA_AVAILABLE:
        return False

    class FastlaController(threadpoolctl.LibController):
        user_api = USER_API
        internal_api = USER_API
        filename_prefixes = ("_helperlib",)  # numba/_helperlib.*.so

        def get_num_threads(self):
            return _jit.get_num_threads()

        def set_num_threads(self, num_threads):
            # threadpool_limits passes its limit as is, which may exceed NUMBA_NUM_THREADS
            _jit.set_num_threads(max(1, min(int(num_threads), _jit.max_threads())))

        def get_version(self):
            return _version()

        def set_additional_attributes(self):
            self.threading_layer = _jit.threading_layer()

    if any(c.internal_api == USER_API for c in getattr(threadpoolctl, "_ALL_CONTROLLERS", ())):
        return True  # a reload of fastla: registered already
    threadpoolctl.register(FastlaController)
    return True


REGISTERED = register()


@functools.cache
def _version():
    """fastla's installed version (its metadata is read once: ~1 ms a read)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastla")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return None


@functools.cache
def _controller():
    import threadpoolctl

    return threadpoolctl.ThreadpoolController()


def blas_limit(n):
    """A context manager that caps BLAS at ``n`` threads, as ``threadpool_limits(n, user_api="blas")``
    does, on one :class:`threadpoolctl.ThreadpoolController` made once per process:
    ``threadpool_limits`` makes a new one on every call, which finds the loaded libraries again and
    asks each for its version (milliseconds a call). BLAS is NumPy's, loaded before fastla."""
    return _controller().limit(limits=n, user_api="blas")
