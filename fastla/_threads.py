"""fastla's threads under threadpoolctl.

``threadpoolctl.threadpool_limits(n)`` caps fastla's kernels as it caps BLAS and OpenMP:
:class:`FastlaController` is registered with threadpoolctl (its custom-controller API, 3.5+) at
import. threadpoolctl finds controllers through the shared libraries a process has loaded, and
fastla has none of its own, so the controller is keyed to numba's helper library, which is loaded
whenever fastla's kernels can run. Its ``user_api`` and ``internal_api`` are ``"fastla"``:
``threadpool_limits(1, user_api="blas")`` leaves fastla alone, ``threadpool_limits(1)`` caps it.
"""

from __future__ import annotations

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
            from importlib.metadata import PackageNotFoundError, version

            try:
                return version("fastla")
            except PackageNotFoundError:  # pragma: no cover - run from a source tree
                return None

        def set_additional_attributes(self):
            self.threading_layer = _jit.threading_layer()

    if any(c.internal_api == USER_API for c in getattr(threadpoolctl, "_ALL_CONTROLLERS", ())):
        return True  # a reload of fastla: registered already
    threadpoolctl.register(FastlaController)
    return True


REGISTERED = register()
