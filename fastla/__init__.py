"""fastla: Numba linear-algebra kernels for machine learning, drop-in for NumPy/SciPy.

Every operation has a ``loop`` (pure Python), a ``numba`` (compiled, blocked, parallel) and a
``numpy`` (BLAS/LAPACK) implementation with one contract; ``auto`` picks per call and
:func:`explain` says which and why.

Examples
--------
>>> import numpy as np, fastla as fl
>>> fl.matmul(np.eye(2), np.array([[1.0, 2.0], [3.0, 4.0]]))
array([[1., 2.],
       [3., 4.]])
"""

from fastla import _jit, _profile, _registry, _threads, ml  # noqa: F401 (_threads: threadpoolctl caps fastla)
from fastla._config import backend, get_backend, set_backend
from fastla._jit import get_num_threads, set_num_threads
from fastla._profile import tune_profile
from fastla._registry import (
    BackendUnavailable,
    explain,
    implementations,
    operations,
)
from fastla._warmup import warmup
from fastla.attention import scaled_dot_product_attention
from fastla.eigen import ConvergenceError, power_iteration
from fastla.lu import LinAlgWarning, lu_factor, lu_solve, solve
from fastla.matmul import matmul
from fastla.similarity import cosine_similarity, cosine_topk
from fastla.softmax import cross_entropy, log_softmax, softmax

__version__ = "0.1.0"


def _dask_dispatch(op_name, *args, **kwargs):
    # imported on the first call with a dask array: dask is optional and slow to import
    from fastla import dask

    return dask.dispatch(op_name, *args, **kwargs)


def _dask_explain(op, backend):
    from fastla import dask

    return dask.explain(op, backend)


_registry.set_dask_handlers(_dask_dispatch, _dask_explain)

# auto's thresholds: this machine's measured ones when `python -m fastla tune` wrote a profile
_profile.load()
_jit.THREAD_HOOKS.append(_profile.load)

__all__ = [
    "BackendUnavailable",
    "ConvergenceError",
    "LinAlgWarning",
    "backend",
    "cosine_similarity",
    "cosine_topk",
    "cross_entropy",
    "explain",
    "get_backend",
    "get_num_threads",
    "implementations",
    "log_softmax",
    "lu_factor",
    "lu_solve",
    "matmul",
    "ml",
    "operations",
    "power_iteration",
    "scaled_dot_product_attention",
    "set_backend",
    "set_num_threads",
    "softmax",
    "solve",
    "tune_profile",
    "warmup",
]
