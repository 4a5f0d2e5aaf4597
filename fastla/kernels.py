"""fastla's kernels for use inside your own Numba code: ``from fastla import kernels``.

Every function here can be called from a user's ``@njit`` function (also inside ``prange``), from
plain Python, and under ``NUMBA_DISABLE_JIT=1``. Names and arguments follow the public functions:

======================================  ==============================================================
``exp(x, out=None)``                     a float32/float64 scalar or array (fastla's vectorisable exp)
``softmax(x, out=None)``                along the last axis of a 1-D or 2-D array
``log_softmax(x, out=None)``            the same, log form
``logsumexp(x)``                        of a 1-D array (a float), or per row of a 2-D array
``matmul(a, b, out=None)``              2-D ``a @ b`` by plain loops (small operands)
``gemm(a, b, out, alpha=1.0, beta=0.0)``  ``out = alpha * a @ b + beta * out`` by the packed GEMM
``solve(a, b, out=None)``               one system ``(n, n)`` with ``(n,)`` / ``(n, k)``, or a stack
``solve_inplace(a, b)``                 the same, overwriting ``a`` and ``b`` (``b`` becomes ``x``)
``try_solve(a, b, out)``                one system; False for a singular one instead of raising
``lu_factor(a)``, ``lu_solve(lu, piv, b, out=None)``  SciPy's ``(lu, piv)`` convention
``cosine_similarity(X, Y, out=None)``   the ``(n, m)`` matrix of 2-D ``X``, ``Y``
``topk_init(k, dtype)``, ``topk_push``  a streaming top-k accumulator (see :func:`topk_push`)
``attention_step``, ``attention_finish``  one online-softmax attention step over a key tile
======================================  ==============================================================

The big kernels (``gemm``, ``lu_factor`` / ``lu_solve``, ``cosine_similarity``, the attention step,
stacks and systems larger than 4 in ``solve``, ``exp`` / ``logsumexp`` of other than a contiguous
row) are called out of line (:func:`fastla._intrinsics.call_out_of_line`): compiled once in fastla's
cache, not again inside every user function that calls them. What runs per item in a hot loop (the
small products, one system's solve, a contiguous row's softmax, exp and logsumexp, ``topk_push``) is
compiled once in fastla's cache too and inlined into the user's function by LLVM.

Arrays: float32 or float64 in compiled code; from Python, integer and boolean arrays are promoted to
float64 as NumPy's linear algebra promotes them (float16 and complex raise TypeError).

Calling convention for hot loops: pass ``out`` to avoid an allocation per call; ``solve_inplace``
and ``softmax(x, x)`` work in place. From Python, an ``out`` that overlaps an input gets the result
a NumPy ufunc gives (computed apart, then copied). In compiled code ``out`` must not overlap an
input (the test would cost a small kernel in a user's loop a sizeable share of its time), except
that ``exp``, ``softmax`` and ``log_softmax`` take ``out`` the very array ``x``, and ``gemm`` copies
an overlapped operand first. The array views of your loop (``X[i]``) cost nothing extra:
where a kernel is a call rather than inlined code, it receives them borrowed, without the reference
counting Numba otherwise does for an array passed to a call. Failures raise exceptions Numba can
raise in compiled code: ``numpy.linalg.LinAlgError("Singular matrix")`` for an exactly zero pivot,
``LinAlgError`` for a ``solve`` matrix that is not square (as ``np.linalg.solve``), ``ValueError``
for other bad shapes, with a message. Everything here is **serial**: none of these
functions starts a parallel region, so calling them inside your own ``prange`` never nests
parallelism (parallelise your outer loop), and none of them makes that loop serial (they raise
through a call: a ``raise`` inlined into a ``prange`` body makes Numba run the loop serially).
Inside a ``prange`` loop Numba does not deliver an exception raised on a worker thread
(numba/numba#2811): check shapes before the loop, and use :func:`try_solve`, which reports a
singular system by its return value, where one may be singular.

One implementation: softmax, log-softmax and log-sum-exp run fastla's row kernel (the same exp and
row max as ``fastla.softmax``); ``gemm`` and ``cosine_similarity`` run the same packing and
micro-kernel as ``fastla.matmul`` / ``fastla.cosine_similarity`` (the same driver, given one
thread and no task addresses: its tasks run linked, one after another); ``lu_factor`` /
``lu_solve`` run the blocked LU's panel and substitution kernels; the
top-k accumulator is the fused top-k's insertion. ``solve`` for small systems is Gaussian
elimination with the pivoting rule and operation order of ``fastla.solve``'s batched kernel (the
first largest ``|a_ij|``, multipliers ``a_ij * (-1 / a_jj)``, fused multiply-adds), so the two
agree to rounding on every system (tested); it is written as loops because the batched kernel's
straight-line code is compiled per ``n``, which a call with a run-time ``n`` cannot select.

Example
-------
>>> import numpy as np
>>> from numba import njit, prange  # doctest: +SKIP
>>> from fastla import kernels
>>> @njit(parallel=True)  # doctest: +SKIP
... def step(A, b, x):
...     for i in prange(A.shape[0]):
...         kernels.solve(A[i], b[i], x[i])
"""

from __future__ import annotations

import importlib
import math

import numpy as np

from fastla import _gemm_kernels as _gk
from fastla import _intrinsics, _jit, _math, _validate
from fastla import _lane_solver as _ls
from fastla import lu as _lu
from fastla import similarity as _sim
from fastla._jit import jit

# the module (fastla.softmax is also the name of the function)
_sm = importlib.import_module("fastla.softmax")

__all__ = [
    "attention_finish",
    "attention_step",
    "cosine_similarity",
    "exp",
    "gemm",
    "log_softmax",
    "logsumexp",
    "lu_factor",
    "lu_solve",
    "matmul",
    "softmax",
    "solve",
    "solve_inplace",
    "topk_init",
    "topk_push",
    "try_solve",
]

nbt = _jit.nb_types

# views passed to the out-of-line kernels below without reference counting (see _solve_vec_info)
_borrow = _intrinsics.borrow
# The big kernels (GEMM, LU, cosine, attention, a stack of systems) are called through a symbol,
# compiled once in fastla's cache, not linked into every user function that calls them, where LLVM
# optimised and code-generated them again: a user's @njit function calling kernels.gemm compiled
# in 1.47 s, now 0.35 s (see _intrinsics.call_out_of_line).
_ool = _intrinsics.call_out_of_line
# results and scratch allocated without compiling np.empty's implementation in the user's function
_empty = _intrinsics.empty

# The serial compiles of the shared parallel kernels (see _jit.serial).
_softmax_rows = _jit.serial(_sm._softmax_rows)
_gemm_into = _gk.gemm_into  # serial when called with no task addresses and one thread (Tiles)
_inv_norms = _sim._inv_norms  # serial already
# the squared-norm range inside which a row's products are safe (the public cosine's), per dtype,
# as constants compiled code reads
_SQ_F32, _SQ_F64 = (_sim._SQ_RANGE[np.dtype(t)] for t in (np.float32, np.float64))
# GEMM block sizes by dtype (index: itemsize == 8), frozen into the compiled code.
_KC = (_gk.BLOCKING[np.dtype(np.float32)].KC, _gk.BLOCKING[np.dtype(np.float64)].KC)
_MC = (_gk.BLOCKING[np.dtype(np.float32)].MC, _gk.BLOCKING[np.dtype(np.float64)].MC)
_NC = (_gk.BLOCKING[np.dtype(np.float32)].NC, _gk.BLOCKING[np.dtype(np.float64)].NC)


# The hot-loop kernels are inlined into the caller, and a ``raise`` inlined into a user's ``prange`` body
# is a second exit from the loop, which Numba then runs serially. They call these instead (a call is
# not an exit). Numba reports an exception from inside a parallel loop as a SystemError whose cause
# is this error.
@jit
def _out_shape_error():
    raise ValueError("fastla.kernels: out must have x's shape")


def _python_out(name, out, shape, dtype, same_kind=False, shape_error=None):
    """A Python caller's ``out=`` for a result of ``shape`` and ``dtype``, checked before compiled
    code stores into it (a read-only ``out`` was written, an integer one received truncated values)
    or fails to compile: the public functions' rules (:func:`fastla._validate.out_problem`: an
    ndarray of that shape, any strides, writeable, that ``dtype`` casts to under ``'same_kind'``)
    and, unless ``same_kind`` (``np.matmul``'s ``out``), exactly ``dtype``. A wrong shape raises
    ``shape_error()``, the compiled form's error for it, where there is one: the same message from
    Python, compiled code and the JIT off."""
    problem = _validate.out_problem(out, shape, dtype, f"fastla.kernels.{name}")
    if problem is not None:
        if shape_error is not None and isinstance(out, np.ndarray) and out.shape != tuple(shape):
            shape_error()
        raise problem
    if not same_kind and out.dtype.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):  # see _into
        raise TypeError(f"fastla.kernels.{name}: out must be {np.dtype(dtype)}, not {out.dtype}")
    return out


def _state_arrays(name, what, *arrays, written=True):
    """A Python caller's state arrays (``(array, ndim, kinds)``), which a kernel updates in place
    (reads only, unless ``written``): ndarrays of that rank and of a dtype of those kinds ("f":
    float32/float64, "iu": an integer), writeable. Checked before the call, which would otherwise
    fail to compile or store into a read-only or integer array."""
    for x, ndim, kinds in arrays:
        ok = isinstance(x, np.ndarray) and x.ndim == ndim
        ok = ok and (x.dtype in _COMPUTED if kinds == "f" else x.dtype.kind in kinds)
        if not ok:
            raise TypeError(f"fastla.kernels.{name}: {what}")
        if written and not x.flags.writeable:
            raise ValueError(f"fastla.kernels.{name}: output array is read-only")


def _check_out(name, x, out):
    """A Python caller's ``out=`` for the element-wise and row kernels: a C-contiguous array of
    ``x``'s shape and dtype."""
    _python_out(name, out, x.shape, x.dtype)
    if not out.flags.c_contiguous:
        raise ValueError(f"fastla.kernels.{name}: out must be C-contiguous")


@jit
def _matmul_shape_error():
    raise ValueError("fastla.kernels.matmul: shapes do not match (a (m, k), b (k, n), out (m, n))")


@jit
def _cosine_shape_error():
    raise ValueError("fastla.kernels.cosine_similarity: X (n, d), Y (m, d), out (n, m)")


@jit
def _solve_shape_error():
    raise ValueError("fastla.kernels.solve: a must be (..., n, n) and b, out (..., n) or (..., n, k)")


@jit
def _solve_square_error():
    # NumPy's class and words for a matrix that is not square (a LinAlgError is a ValueError)
    raise np.linalg.LinAlgError("fastla.kernels.solve: Last 2 dimensions of the array must be square")


@jit
def _singular_error():
    raise np.linalg.LinAlgError("Singular matrix")


@jit(inline="always")
def _copy2d(dst, src):
    """``dst[...] = src`` for 2-D arrays of one shape, as loops. An array assignment compiles Numba's
    shape-mismatch check with its message formatting (str of shapes) into the function: 3 s of
    compile for each signature, and in an inlined kernel for every user function that calls it
    (measured: 12.5 s of test_kernels' compile time)."""
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


@jit(inline="always")
def _copy1d(dst, src):
    """The 1-D :func:`_copy2d`."""
    for i in range(src.shape[0]):
        dst[i] = src[i]


@jit(inline="always")
def _copy3d(dst, src):
    """The 3-D :func:`_copy2d`."""
    for t in range(src.shape[0]):
        _copy2d(dst[t], src[t])


_COPY = {1: _copy1d, 2: _copy2d, 3: _copy3d}  # by ndim


def _call(fn, *args):
    """Run a compiled implementation from Python; with the JIT off it runs as Python, with NumPy's
    floating-point warnings silenced as the compiled code has none."""
    return fn(*args) if _jit.JIT_ENABLED else _jit.python_rendering(fn, *args)


def _floats(name, *arrays):
    """``arrays`` from a Python caller as NumPy arrays of the one dtype the kernels compute in,
    promoted as NumPy's and SciPy's linear algebra promote them: booleans and integers to float64,
    float32 with float64 to float64. Another dtype (float16, complex, object) raises TypeError
    naming the kernel (compiled code rejects it when typing the call)."""
    arrays = [_native(x) for x in arrays]
    _refuse_others(name, arrays)  # each one, as NumPy's linalg (float16 with an integer array too)
    # each integer or boolean operand counts as float64 (NumPy's linalg: float32 with bool or int8
    # gives float64, where np.result_type would keep float32)
    dtype = np.result_type(*(np.float64 if x.dtype.kind in "biu" else x.dtype for x in arrays))
    return [x.astype(dtype, copy=False) for x in arrays]


_COMPUTED = (np.dtype(np.float32), np.dtype(np.float64))


def _native(x):
    """``x`` as a NumPy array in native byte order (a byte-swapped one, as read from a big-endian
    file, converted: NumPy computes with it, compiled code cannot)."""
    x = np.asarray(x)
    return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))


def _refuse_others(name, arrays, kinds="biu", what="float32 or float64 arrays (or integers)"):
    """TypeError naming the kernel for an array of a dtype other than float32, float64 or
    ``kinds``: the compiled code has no float16 (LLVM's half), long double or object loops."""
    for x in arrays:  # either byte order: inputs are converted by _native, outs written through _into
        dt = x.dtype if x.dtype.isnative else x.dtype.newbyteorder("=")
        if dt not in _COMPUTED and not (dt.kind in kinds and dt.itemsize <= 16):
            raise TypeError(f"fastla.kernels.{name}: {what}, not {x.dtype}")


def _is_float(t):
    return isinstance(t, nbt.Float)


def _is_array(t, ndims=(1, 2)):
    return isinstance(t, nbt.Array) and t.ndim in ndims and isinstance(t.dtype, nbt.Float)


def _zero(x):
    """0 in ``x``'s dtype (an array or a scalar)."""
    return np.asarray(x).dtype.type(0)


@_jit.overload(_zero)
def _zero_typer(x):
    dt = x.dtype if isinstance(x, nbt.Array) else x
    return lambda x: dt(0)


# --------------------------------------------------------------------------- exp


@jit
def _exp_array(x, out):
    _intrinsics.wide_vectors()
    flat_x = x.reshape(x.size)
    flat_o = out.reshape(out.size)
    for i in range(flat_x.size):
        flat_o[i] = _math.exp(flat_x[i])
    return out


@jit(inline="llvm")
def _exp_row(x, out):
    """:func:`_exp_array` of a C-contiguous row, inlined by LLVM on borrowed views (no reshape, no
    call): a row of 10 float64 in a user's loop 12-14 ns, 65 as a call of the array form."""
    _intrinsics.wide_vectors()
    for i in range(_jit.U(x.shape[0])):  # unsigned: see fastla._jit.U
        out[i] = _math.exp(x[i])


def exp(x, out=None):
    """``e**x`` of a float32/float64 scalar or array: fastla's exp (≤ 2 ulp, vectorised in loops);
    for an array ``x``, ``out`` (C-contiguous, ``x``'s shape and dtype) takes the result.

    Examples
    --------
    >>> from fastla import kernels
    >>> float(kernels.exp(0.0))
    1.0
    """
    (x,) = _floats("exp", x)
    if x.ndim == 0:
        if out is not None:
            raise TypeError("fastla.kernels.exp: out is for an array x")
        # as np.exp: a NumPy scalar of the input's float type (a 0-d float32 array computed in
        # float32, not promoted), integers in float64
        return x.dtype.type(_math.exp(x[()]))
    x = np.ascontiguousarray(x)
    if out is None:
        return _call(_exp_array, x, np.empty_like(x))
    _check_out("exp", x, out)
    _into(out, lambda into: _call(_exp_array, x, into), reads=(x,), same_ok=True)
    return out


@_jit.overload(exp)
def _exp_typer(x, out=None):
    fresh = out is None or isinstance(out, nbt.NoneType | nbt.Omitted)
    if _is_float(x) and fresh:
        return lambda x, out=None: _math.exp(x)
    if not (isinstance(x, nbt.Array) and _is_float(x.dtype)):
        return None
    row = x.ndim == 1 and x.layout == "C"
    if fresh and row:

        def fresh_row(x, out=None):
            res = _empty(x.shape, x.dtype)
            _exp_row(_borrow(x), _borrow(res))
            return res

        return fresh_row
    if fresh:
        return lambda x, out=None: _ool(_exp_array, (np.ascontiguousarray(x), _empty(x.shape, x.dtype)))
    if row and isinstance(out, nbt.Array) and out.dtype == x.dtype and out.ndim == 1 and out.layout == "C":

        def into_row(x, out=None):
            if out.shape != x.shape:
                _out_shape_error()
            _exp_row(_borrow(x), _borrow(out))
            return out

        return into_row
    if isinstance(out, nbt.Array) and out.dtype == x.dtype and out.ndim == x.ndim and out.layout == "C":

        def into(x, out=None):
            if out.shape != x.shape:
                _out_shape_error()
            _ool(_exp_array, (np.ascontiguousarray(x), _borrow(out)))
            return out

        return into
    return None


# --------------------------------------------------------------------------- softmax family


# The overloads are inlined into the user's function at Numba's IR level (no call boundary), and
# inlined code is compiled with the *caller's* flags: a plain ``@njit`` user function has no
# fastmath, so an inlined exp-and-sum loop could not be vectorised (a float reduction needs
# reassociation) and ran scalar: 12.5 ns an element for rows of 1000 float64 from a plain @njit loop,
# 4.0 as a call (logsumexp 12.9 -> 4.3; rows of 10 16.4 -> 15.0). The row loops are therefore
# separate compiled functions that the inlined wrappers call, on borrowed views (_intrinsics.borrow):
# the reference counting of the caller's row views across that call was most of a short row's cost
# (rows of 10 float64 from a user's loop: 134 -> 96-105 ns a row). The row kernel is compiled once
# with fastla's flags and inlined by LLVM (``inline="llvm"``: the inlined instructions keep their
# flags), which took the call itself away: rows of 10 float64 31-53 -> 27-30 ns.


@jit(inline="llvm")
def _row_compiled(x, out, log, zero):
    """The row kernel with fastla's own flags (see above)."""
    _intrinsics.wide_vectors()
    _sm.softmax_row(x, out, log, zero, None)


@jit(inline="always")
def _row(x, out, log):
    """The row kernel on a 1-D ``x`` into ``out``."""
    if x.size > 0:
        _row_compiled(_borrow(x), _borrow(out), log, _zero(x))
    return out


@jit(inline="always")
def _rows(x, out, log):
    """The row kernel on each row of a 2-D ``x`` into ``out``."""
    if x.size > 0:
        _softmax_rows(_borrow(x), _borrow(out), log, _zero(x))
    return out


def _row_kernel(x):
    """:func:`_row` or :func:`_rows` for an array of ``x``'s dimensions (array or Numba type)."""
    return _row if x.ndim == 1 else _rows


def _prepare_out(name, x, out):
    (x,) = _floats(name, x)
    if x.ndim not in (1, 2):
        raise ValueError("fastla.kernels: x must be a 1-D or 2-D float32/float64 array")
    if out is None:
        return x, np.empty(x.shape, x.dtype)
    _check_out(name, x, out)
    return x, out


def _rows_into(name, x, out, log):
    """``softmax`` / ``log_softmax`` from Python: ``x``'s rows into ``out`` (fresh when None)."""
    x, out = _prepare_out(name, x, out)
    _into(out, lambda into: _call(_row_kernel(x), x, into, log), reads=(x,), same_ok=True)
    return out


def softmax(x, out=None):
    """Softmax along the last axis of a 1-D or 2-D float array (``out=x`` works in place).

    Examples
    --------
    >>> import numpy as np
    >>> from fastla import kernels
    >>> kernels.softmax(np.array([0.0, 0.0])).tolist()
    [0.5, 0.5]
    """
    return _rows_into("softmax", x, out, False)


def log_softmax(x, out=None):
    """Log-softmax along the last axis of a 1-D or 2-D float array (``out=x`` works in place)."""
    return _rows_into("log_softmax", x, out, True)


def _softmax_typer(log):
    def typer(x, out=None):
        if not _is_array(x):
            return None
        kernel = _row_kernel(x)
        if out is None or isinstance(out, nbt.NoneType | nbt.Omitted):

            def alloc(x, out=None):
                return kernel(x, np.empty(x.shape, x.dtype), log)

            return alloc
        if _is_array(out) and out.ndim == x.ndim:

            def into(x, out=None):
                if out.shape != x.shape:
                    _out_shape_error()
                return kernel(x, out, log)

            return into
        return None

    return typer


_jit.overload(softmax)(_softmax_typer(False))
_jit.overload(log_softmax)(_softmax_typer(True))


@jit(inline="always")
def _logsumexp_of(row, zero, ahead):
    m = _math.row_max(row) if row.shape[0] else -np.inf
    mm = m if np.isfinite(m) else zero
    return mm + np.log(_sm._exp_sum(row, mm, row, False, zero, ahead))


@jit
def _logsumexp_rows(x):
    n = x.shape[-1]
    rows = x.size // n if n else (x.shape[0] if x.ndim == 2 else 1)  # an empty row's is -inf
    x2 = np.ascontiguousarray(x).reshape((rows, n))
    res = _empty(rows, np.float64)
    zero = _zero(x)
    for r in range(x2.shape[0]):
        res[r] = _logsumexp_of(x2[r], zero, x2[min(r + 1, rows - 1)])
    return res


@jit(inline="llvm")
def _logsumexp_row(x):
    """:func:`_logsumexp_rows` of one C-contiguous row, on a borrowed view and without its result
    array: a row of 10 float64 in a user's loop 115-143 -> 55-57 ns."""
    return _logsumexp_of(x, _zero(x), None)


def logsumexp(x):
    """``log(sum(exp(x)))`` of a 1-D array (a float) or per row of a 2-D array, stably."""
    (x,) = _floats("logsumexp", x)
    if x.ndim not in (1, 2):
        raise ValueError("fastla.kernels.logsumexp: x must be 1-D or 2-D")
    res = _call(_logsumexp_rows, x)
    return float(res[0]) if x.ndim == 1 else res.astype(x.dtype)


@_jit.overload(logsumexp)
def _logsumexp_typer(x):
    if _is_array(x, (1,)) and x.layout == "C":
        return lambda x: _logsumexp_row(_borrow(x))
    if _is_array(x, (1,)):
        return lambda x: _ool(_logsumexp_rows, (x,))[0]
    if _is_array(x, (2,)):
        return lambda x: _ool(_logsumexp_rows, (x,)).astype(x.dtype)
    return None


# --------------------------------------------------------------------------- products


@jit(inline="llvm")
def _matmul2d(a, b, out):
    # inlined by LLVM (a plain call measured 87-98 ns a 4x4 float64 product from a user's loop,
    # inlined 8-11 ns), compiled once with fastla's flags (see _jit.jit's inline="llvm")
    if a.shape[1] != b.shape[0] or out.shape[0] != a.shape[0] or out.shape[1] != b.shape[1]:
        _matmul_shape_error()
    _gk.small_product(a, b, out)
    return out


def matmul(a, b, out=None):
    """``a @ b`` for 2-D float arrays by plain loops: for small operands in a hot loop (use
    :func:`gemm` for large ones). From Python an ``out`` that overlaps ``a`` or ``b`` gets the
    product as NumPy's does (computed apart, then copied); in compiled code ``out`` must not overlap
    them (the check would cost the 4x4 product in a user's loop a sizeable share of its ~10 ns).

    Examples
    --------
    >>> import numpy as np
    >>> from fastla import kernels
    >>> kernels.matmul(np.eye(2), np.array([[1.0, 2.0], [3.0, 4.0]])).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    a, b = _native(a), _native(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"fastla.kernels.matmul: a and b must be 2-D, not {a.ndim}-D and {b.ndim}-D")
    # from Python, np.matmul's dtypes (integers stay integers) where compiled loops exist
    what = "float32, float64, integer or complex arrays"
    _refuse_others("matmul", (a, b), "biuc", what)
    shape, dtype = (a.shape[0], b.shape[1]), np.result_type(a, b)
    if out is None:
        out = np.empty(shape, dtype)
    else:  # np.matmul's casting rule; a float16 out refused as an operand is
        _python_out("matmul", out, shape, dtype, True, _matmul_shape_error)
        _refuse_others("matmul", (out,), "biuc", what)
    # np.matmul's loop: both operands cast to the result's dtype, the product computed in it and
    # cast to out's. As C-contiguous arrays of one dtype, so that Python's calls compile one form
    # per dtype: each other layout or mix of dtypes was a form of its own, 4.5-7.6 s to compile
    # (Zen 3), where the copy of a small operand costs less than its product.
    a, b = np.ascontiguousarray(a, dtype), np.ascontiguousarray(b, dtype)
    if out.dtype == dtype and out.flags.c_contiguous and _validate.writes_apart(out, a, b):
        return _call(_matmul2d, a, b, out)
    out[...] = _call(_matmul2d, a, b, np.empty(shape, dtype))
    return out


@_jit.overload(matmul)
def _matmul_typer(a, b, out=None):
    if not (_is_array(a, (2,)) and _is_array(b, (2,))):
        return None
    if out is None or isinstance(out, nbt.NoneType | nbt.Omitted):
        dt = nbt.float64 if nbt.float64 in (a.dtype, b.dtype) else a.dtype  # np.result_type's
        return lambda a, b, out=None: _matmul2d(a, b, _empty((a.shape[0], b.shape[1]), dt))
    return lambda a, b, out=None: _matmul2d(a, b, out)


@jit(inline="always")
def _span(x):
    """The first and one-past-last byte addresses of ``x``'s elements (any strides)."""
    lo = hi = x.ctypes.data
    for d in range(x.ndim):
        ext = (x.shape[d] - 1) * x.strides[d]
        if ext < 0:
            lo += ext
        else:
            hi += ext
    return lo, hi + x.itemsize


@jit(inline="always")
def _overlaps(x, y):
    """Whether the memory spans of ``x`` and ``y`` intersect (``np.may_share_memory``'s test,
    which Numba lacks)."""
    if x.size == 0 or y.size == 0:
        return False
    xl, xh = _span(x)
    yl, yh = _span(y)
    return xl < yh and yl < xh


@jit
def _gemm_shape_error():
    raise ValueError("fastla.kernels.gemm: shapes do not match (a (m, k), b (k, n), out (m, n))")


@jit
def _gemm(a, b, out, alpha, beta):
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
        _gemm_shape_error()
    # an out that overlaps an operand: the operand copied first (the packed GEMM reads a thin
    # product's B in place, and every product reads A and B after C's first rows are written)
    if _overlaps(out, a):
        a = a.copy()
    if _overlaps(out, b):
        b = b.copy()
    if beta == 0:
        accumulate = False
    else:
        accumulate = True
        if beta != 1:
            for i in range(m):
                for j in range(n):
                    out[i, j] *= beta
    ac = np.ascontiguousarray(a)
    bc = np.ascontiguousarray(b)
    A = _gk.flat_operand(ac.reshape(ac.size), 0, k, 1, m, k)
    B = _gk.flat_operand(bc.reshape(bc.size), 0, n, 1, k, n)
    none = out.reshape(out.size)[:0]
    big = int(out.itemsize == 8)
    start = m - m  # a run-time 0 (see _gemm_kernels' "literal arguments")
    tiles = _gk.Tiles(_KC[big], min(m, _MC[big]), _NC[big], _gk.Tasks(None, None), 1, none)
    _gemm_into(A, B, _gk.Dest(out.reshape(out.size), start, n), alpha, accumulate, none, none, tiles)
    return out


def gemm(a, b, out, alpha=1.0, beta=0.0):
    """``out = alpha * a @ b + beta * out`` for 2-D float arrays of one dtype, by fastla's packed GEMM
    (serial); ``out`` must be C-contiguous, and may overlap ``a`` or ``b`` (they are then copied
    first)."""
    a, b = _native(a), _native(b)
    _refuse_others("gemm", (a, b))
    if not isinstance(out, np.ndarray):
        raise TypeError(f"fastla.kernels.gemm: out must be a NumPy array, not {type(out).__name__}")
    if out.ndim != 2 or a.ndim != 2 or b.ndim != 2:
        raise ValueError("fastla.kernels.gemm: a, b and out must be 2-D arrays")
    _refuse_others("gemm", (out,), "", "out must be float32 or float64")
    _python_out("gemm", out, (a.shape[0], b.shape[1]), out.dtype, shape_error=_gemm_shape_error)
    if not out.flags.c_contiguous:
        raise ValueError("fastla.kernels.gemm: out must be C-contiguous")
    # C-contiguous operands, integers and a float32 operand of a float64 out converted to out's
    # dtype: the values the compiled form packs (it copies a strided operand contiguous and converts
    # each element to out's dtype), with one compiled form per dtype instead of one per mix (an
    # integer one took 7.5 s to compile on Zen 3)
    exact = out.dtype.newbyteorder("=")
    a, b = (
        np.ascontiguousarray(x, exact if x.dtype.kind in "biu" or x.dtype.itemsize < exact.itemsize else None)
        for x in (a, b)
    )
    if not out.dtype.isnative:  # in native order and back (beta reads it)
        into = out.astype(out.dtype.newbyteorder("="))
        _call(_gemm, a, b, into, into.dtype.type(alpha), into.dtype.type(beta))
        out[...] = into
        return out
    return _call(_gemm, a, b, out, out.dtype.type(alpha), out.dtype.type(beta))


@_jit.overload(gemm)
def _gemm_typer(a, b, out, alpha=1.0, beta=0.0):
    if not (_is_array(a, (2,)) and _is_array(b, (2,)) and _is_array(out, (2,)) and out.layout == "C"):
        return None
    dt = out.dtype

    def impl(a, b, out, alpha=1.0, beta=0.0):
        return _ool(_gemm, (a, b, out, dt(alpha), dt(beta)))

    return impl


# --------------------------------------------------------------------------- linear systems


@jit
def _eliminate(w, x):
    """Solve ``w y = x`` in place for C-contiguous ``w`` (n, n) and ``x`` (n, k): Gaussian elimination
    with partial pivoting in the batched solver's order (see the module docstring). ``w`` is
    overwritten; returns 0, or ``j + 1`` for the first exactly zero pivot."""
    n = w.shape[0]
    k = x.shape[1]
    info = 0
    for j in range(n):
        p = j
        best = abs(w[j, j])
        for i in range(j + 1, n):
            v = abs(w[i, j])
            if v > best:  # strict: the first largest, as LAPACK; NaN never wins
                best = v
                p = i
        if p != j:
            for c in range(j, n):
                w[j, c], w[p, c] = w[p, c], w[j, c]
            for c in range(k):
                x[j, c], x[p, c] = x[p, c], x[j, c]
        if w[j, j] == 0 and info == 0:
            info = j + 1
        nrd = -1 / w[j, j]
        w[j, j] = nrd
        for i in range(j + 1, n):
            f = w[i, j] * nrd
            for c in range(j + 1, n):
                w[i, c] = f * w[j, c] + w[i, c]
            for c in range(k):
                x[i, c] = f * x[j, c] + x[i, c]
    for i in range(n - 1, -1, -1):
        for c in range(k):
            u = -x[i, c]
            for r in range(n - 1, i, -1):  # the batched solver's order
                u = w[i, r] * x[r, c] + u
            x[i, c] = u * w[i, i]
    return info


#: Systems up to this n with one right-hand side run the batched solver's straight-line code (one
#: lane); larger ones the same elimination as loops. Each n is compiled on its own (a chain of 16
#: took 43 s to compile, 8 about 5 s); measured 3x3 in a user loop: 92 ns a system straight-line,
#: 148 ns as loops; 40 ns once a 1-D right-hand side skipped Numba's reshape (``_solve_one_vec``).
#: The same solve without the singular-matrix raise after it ran in 13-15 ns, try_solve in 38-46:
#: the reference counts of the loop's array views, which Numba keeps live across a call that can
#: raise or whose result is branched on; on borrowed views (``_solve_vec_info``) 34 ns.
STRAIGHT_LINE_MAX = 8


@jit(inline="always")
def _straight_line(a, b, x):
    """The straight-line solve of ``a x = b`` for n <= STRAIGHT_LINE_MAX and one right-hand side
    (``b`` (n,) or (n, 1), any strides; ``x`` its shape, C order, may be ``b``): 0, or ``j + 1``
    for the first exactly zero pivot; -1 for n = 0 or a larger n (not solved: the loops' elimination
    does nothing for n = 0, where the 8x8 code had read and written 64 elements of empty arrays and
    corrupted the heap). n <= 4 is inlined; 5 to 8 is a call (the arrays arrive borrowed): their
    straight-line code is most of the IR, and inlined it was compiled into every user function
    that calls ``kernels.solve``."""
    n = a.shape[0]
    if n == 1:
        return _ls.lane_solve_one(1, 1, a, b, x)
    elif n == 2:
        return _ls.lane_solve_one(2, 1, a, b, x)
    elif n == 3:
        return _ls.lane_solve_one(3, 1, a, b, x)
    elif n == 4:
        return _ls.lane_solve_one(4, 1, a, b, x)
    elif 5 <= n <= STRAIGHT_LINE_MAX:
        return _ool(_straight_line_wide, (_borrow(a), _borrow(b), _borrow(x)))
    return -1


@jit
def _straight_line_wide(a, b, x):
    """:func:`_straight_line` for n = 5 to 8."""
    n = a.shape[0]
    if n == 5:
        return _ls.lane_solve_one(5, 1, a, b, x)
    elif n == 6:
        return _ls.lane_solve_one(6, 1, a, b, x)
    elif n == 7:
        return _ls.lane_solve_one(7, 1, a, b, x)
    return _ls.lane_solve_one(8, 1, a, b, x)


@jit(inline="always")
def _solve_one(a, x):
    """Solve ``a y = x`` in place in ``x`` (n, k) for one C-contiguous system ``a`` (only read);
    returns 0, or ``j + 1`` for the first exactly zero pivot."""
    if x.shape[1] == 1:
        info = _straight_line(a, x, x)
        if info >= 0:
            return info
    return _ool(_eliminate_copy, (_borrow(a), _borrow(x)))


@jit
def _eliminate_copy(a, x):
    """:func:`_eliminate` on a copy of ``a``, out of line (see :func:`_solve_one_loops`)."""
    return _eliminate(a.copy(), x)


@jit(inline="llvm")
def _solve_one_vec(a, b, x):
    """``x`` (n,) with ``a x = b`` (n,) for one system: straight-line code without a reshape
    (Numba's cost 30 ns a call), larger n through a call (see :func:`_solve_one_loops`). Inlined by
    LLVM (on borrowed views: no reference counts), not at Numba's IR level: its branches define
    its result more than once, and such a function inlined by Numba twice into one user function
    (two ``kernels.solve`` calls) made Numba warn (``NumbaIRAssumptionWarning``: a renamed variable
    "not in scope"), an error under ``-W error``."""
    info = _straight_line(a, b, x)
    if info >= 0:
        return info
    _copy1d(x, b)
    return _ool(_solve_one_loops, (a, x))


@jit
def _solve_one_loops(a, x):
    """n > STRAIGHT_LINE_MAX, kept out of line: its copy of ``a`` is an allocation, and an inlined
    allocation left reference-count updates on the hot path of every call (a 3x3 solve in a user's
    loop: 39 ns with it inlined, 15 ns without)."""
    return _solve_one(a, x.reshape((x.shape[0], 1)))


@jit(inline="always")
def _solve_vec_info(a, b, out):
    """The hot-loop form: one C-contiguous system ``a`` (n, n), ``b`` and ``out`` (n,); no
    allocation (a ``np.ascontiguousarray`` here cost 250 ns a call); returns the elimination's
    status (0, or ``j + 1`` for the first exactly zero pivot). The solver runs on borrowed views
    (``_intrinsics.borrow``): a 3x3 solve in a user's loop cost 60 ns a system with the loop's views
    reference-counted across it, 34 ns without; 27-30 ns once the straight-line code read ``b``
    itself instead of a copy loop into ``out``. The checks and the borrowing are inlined at Numba's
    IR level, the solve (:func:`_solve_one_vec`) by LLVM: a user's function calling
    ``kernels.solve`` compiles in 0.7-0.8 s rather than 1.5-1.8 s with it inlined at the IR level
    too, and a 3x3 / 4x4 / 8x8 system in a user's loop measured 12-19 / 20-27 / 110-143 ns against
    13-19 / 21-22 / 109-116 (Zen 5, four interleaved runs each); ``bench --against`` read the 3x3
    loop's median 1.08-1.15x the IR-inlined form's (its fastest rounds 0.70-1.05x), the price of
    the fix."""
    n = a.shape[0]
    if a.shape[1] != n:
        _solve_square_error()
    if b.shape[0] != n or out.shape[0] != n:
        _solve_shape_error()
    return _solve_one_vec(_borrow(a), _borrow(b), _borrow(out))


def _solving(info):
    """An inlined ``info(a, b, out)`` on borrowed views that raises ``LinAlgError`` for an exactly
    zero pivot; returns ``out``."""

    @jit(inline="always")
    def solve(a, b, out):
        if info(_borrow(a), _borrow(b), _borrow(out)):
            _singular_error()
        return out

    return solve


_solve_vec = _solving(_solve_vec_info)


@jit(inline="llvm")
def _solve_mat_info(a, b, out):
    """:func:`_solve_vec_info` for ``b`` and ``out`` (n, k), ``out`` C-contiguous: one system with
    several (or a column of one) right-hand sides, by the 1-D form's means (borrowed views, no
    reshape, inlined by LLVM). A 3x3 system with ``b`` (3, 1) in a user's loop: 214 -> 24-32 ns (it went
    through the stacks' kernel: three reshapes and an out-of-line call on counted views)."""
    n = a.shape[0]
    if a.shape[1] != n:
        _solve_square_error()
    if b.shape[0] != n or out.shape[0] != n or out.shape[1] != b.shape[1]:
        _solve_shape_error()
    _copy2d(out, b)
    return _solve_one(a, out)


_solve_mat = _solving(_solve_mat_info)


def try_solve(a, b, out):
    """Solve one system ``a (n, n) x = b (n,)`` into ``out (n,)``; return True, or False (``out``
    undefined) when a pivot is exactly zero. For parallel loops, where an exception on a worker thread
    is lost (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> from fastla import kernels
    >>> x = np.empty(2)
    >>> kernels.try_solve(np.array([[3.0, 1.0], [1.0, 2.0]]), np.array([9.0, 8.0]), x), x.tolist()
    (True, [2.0, 3.0])
    >>> kernels.try_solve(np.ones((2, 2)), np.ones(2), x)
    False
    """
    a, b = np.ascontiguousarray(_native(a)), _native(b)
    one = isinstance(out, np.ndarray) and a.dtype == b.dtype == out.dtype.newbyteorder("=")
    if not one or a.dtype not in _COMPUTED:
        raise ValueError("fastla.kernels.try_solve: a, b and out must be arrays of one float dtype")
    if a.ndim != 2 or b.ndim != 1:
        _solve_shape_error()
    _python_out("try_solve", out, b.shape, b.dtype, shape_error=_solve_shape_error)
    return bool(_into(out, lambda into: _call(_try_solve, a, b, into), reads=(a, b)))


def _into(out, compute, dtype=None, reads=(), same_ok=False):
    """``compute(into)`` into ``out``, or into a C-contiguous array (of ``dtype``, default
    ``out``'s) then copied to ``out`` when it is strided or of another dtype (as the compiled forms
    do) or overlaps one of ``reads``, the arrays the kernel reads (as NumPy's ufuncs do; ``out`` the
    very array of one of them is written directly with ``same_ok``: see
    :func:`fastla._validate.writes_apart`); returns what ``compute`` returns."""
    dtype = out.dtype.newbyteorder("=") if dtype is None else np.dtype(dtype)  # a byte-swapped out: copied
    if out.flags.c_contiguous and out.dtype == dtype and _validate.writes_apart(out, *reads, same_ok=same_ok):
        return compute(out)
    into = np.empty(out.shape, dtype)
    res = compute(into)
    out[...] = into
    return res


@jit(inline="always")
def _try_solve(a, b, out):
    return _solve_vec_info(_borrow(a), _borrow(b), _borrow(out)) == 0


@_jit.overload(try_solve)
def _try_solve_typer(a, b, out):
    if _is_array(a, (2,)) and a.layout == "C" and _is_array(b, (1,)) and _is_array(out, (1,)):
        if out.layout == "C":
            return lambda a, b, out: _try_solve(a, b, out)
        return lambda a, b, out: _try_solve_strided(a, b, out)
    return None


@jit(inline="always")
def _try_solve_strided(a, b, out):
    """:func:`try_solve` into a strided ``out``: solved in a C-contiguous copy (the straight-line
    code reads and writes the right-hand side as one contiguous block)."""
    x = _empty(out.shape[0], out.dtype)
    ok = _try_solve(a, b, x)
    _copy1d(out, x)
    return ok


@jit(inline="always")
def _solve_into_call(a, b, out):
    return _ool(_solve_into, (a, b, out))


@jit(inline="always")
def _columns(b):
    """The right-hand sides in ``b`` (n,) or (n, k). The reshapes to (n, k) spell it out rather
    than -1, which NumPy (running them with the JIT off) cannot infer for a zero-size array."""
    return b.shape[b.ndim - 1] if b.ndim == 2 else 1


@jit
def _solve_into(a, b, out):
    """``out = solve(a, b)`` for one system (``b`` 1-D or 2-D) or a stack (``a`` 3-D)."""
    n = a.shape[-1]
    if a.shape[-2] != n:
        _solve_square_error()
    if b.shape[0 if a.ndim == 2 else 1] != n or out.shape != b.shape:
        _solve_shape_error()
    if a.ndim == 3 and b.shape[0] != a.shape[0]:
        _solve_shape_error()
    # the shapes spelled out (see _columns)
    m = a.shape[0] if a.ndim == 3 else 1
    k = b.shape[b.ndim - 1] if b.ndim == a.ndim else 1  # b (n, k) / (m, n, k), else one column
    a3 = np.ascontiguousarray(a).reshape((m, n, n))
    x3 = out.reshape((m, n, k))
    b3 = np.ascontiguousarray(b).reshape((m, n, k))
    for t in range(m):
        _copy2d(x3[t], b3[t])
        if _solve_one(a3[t], x3[t]):
            _singular_error()
    return out


def solve(a, b, out=None):
    """Solve ``a x = b``: one system ``a (n, n)`` with ``b (n,)`` or ``(n, k)``, or a stack ``a (m, n, n)``
    with ``b (m, n)`` or ``(m, n, k)``; ``x`` has ``b``'s shape (into ``out`` when given). Unlike
    ``np.linalg.solve``, a stack's ``b`` is not broadcast: other shapes raise ``ValueError`` (and an
    ``a`` of fewer than two dimensions NumPy's ``LinAlgError``).

    Raises ``numpy.linalg.LinAlgError("Singular matrix")`` for an exactly zero pivot, also inside
    compiled code.

    Examples
    --------
    >>> import numpy as np
    >>> from fastla import kernels
    >>> kernels.solve(np.array([[3.0, 1.0], [1.0, 2.0]]), np.array([9.0, 8.0])).tolist()
    [2.0, 3.0]
    """
    a, b = _floats("solve", a, b)
    if a.ndim < 2:  # NumPy's class and words
        raise np.linalg.LinAlgError(
            f"fastla.kernels.solve: {a.ndim}-dimensional array given. Array must be at least two-dimensional"
        )
    if not _solve_ranks(a.ndim, b.ndim):
        _solve_shape_error()
    if out is None:
        return _call(_solve_into, a, b, np.empty(b.shape, b.dtype))
    _python_out("solve", out, b.shape, b.dtype, shape_error=_solve_shape_error)
    _into(out, lambda into: _call(_solve_into, a, b, into), reads=(a, b))
    return out


def _solve_ranks(a_ndim, b_ndim):
    """Whether ``solve`` takes these ranks: one system ``a`` (n, n) with ``b`` (n,) or (n, k), or a
    stack (m, n, n) with (m, n) or (m, n, k) (a stack's ``b`` is not broadcast)."""
    return b_ndim in (1, 2) if a_ndim == 2 else a_ndim == 3 and b_ndim in (2, 3)


@_jit.overload(solve)
def _solve_typer(a, b, out=None):
    if not (_is_array(a, (2, 3)) and _is_array(b, (1, 2, 3))):
        return None
    if not _solve_ranks(a.ndim, b.ndim):

        def ranks(a, b, out=None):
            _solve_shape_error()
            return b

        return ranks
    fresh = out is None or isinstance(out, nbt.NoneType | nbt.Omitted)
    one_system = {1: _solve_vec, 2: _solve_mat}  # by b's rank, for one C-contiguous a
    impl = one_system.get(b.ndim, _solve_into_call) if a.ndim == 2 and a.layout == "C" else _solve_into_call
    if fresh:
        return lambda a, b, out=None: impl(a, b, _empty(b.shape, a.dtype))
    if not isinstance(out, nbt.Array):
        return None
    if out.ndim != b.ndim:

        def mismatched(a, b, out=None):
            _solve_shape_error()
            return out

        return mismatched
    if out.layout != "C":  # a strided out (e.g. a column): solved contiguously, then copied
        copy = _COPY[out.ndim]

        def strided(a, b, out=None):
            if out.shape != b.shape:
                _solve_shape_error()
            copy(out, impl(a, b, _empty(b.shape, a.dtype)))
            return out

        return strided
    return lambda a, b, out=None: impl(a, b, out)


def solve_inplace(a, b):
    """Solve one system in place, allocating nothing: ``a`` (C-contiguous ``(n, n)``) is overwritten
    and ``b`` (C-contiguous ``(n,)`` or ``(n, k)``) becomes ``x``, which is returned."""
    if not all(isinstance(x, np.ndarray) and x.dtype in _COMPUTED for x in (a, b)) or a.dtype != b.dtype:
        raise TypeError("fastla.kernels.solve_inplace: a and b must be arrays of one float32/float64 dtype")
    if not (a.flags.writeable and b.flags.writeable):
        raise ValueError("fastla.kernels.solve_inplace: output array is read-only (a and b are overwritten)")
    if not b.flags.c_contiguous or a.ndim != 2 or b.ndim not in (1, 2):
        _solve_inplace_shape_error()
    return _call(_solve_inplace, a, b)


@_jit.overload(solve_inplace)
def _solve_inplace_typer(a, b):
    if _is_array(a, (2,)) and a.layout == "C" and _is_array(b, (1,)) and b.layout == "C":
        return lambda a, b: _solve_inplace_vec(a, b)
    if _is_array(a, (2,)) and _is_array(b, (1, 2)):
        if b.layout != "C":  # solved in place: no contiguous copy to solve in
            raise _jit.numba.core.errors.TypingError("fastla.kernels.solve_inplace: b must be C-contiguous")
        return lambda a, b: _ool(_solve_inplace, (a, b))
    return None


@jit
def _solve_inplace_shape_error():
    raise ValueError("fastla.kernels.solve_inplace: a must be (n, n) and b (n,) or (n, k), C-contiguous")


@jit
def _solve_inplace_info(a, b):
    """Gaussian elimination in place (``a`` overwritten, ``b`` becomes ``x``): 0, or ``j + 1`` for
    the first exactly zero pivot."""
    n = a.shape[0]
    if a.shape[1] != n:
        _solve_square_error()
    if b.shape[0] != n:
        _solve_inplace_shape_error()
    return _eliminate(a, b.reshape((n, _columns(b))))


@jit
def _solve_inplace(a, b):
    if _solve_inplace_info(a, b):
        _singular_error()
    return b


@jit(inline="always")
def _solve_inplace_vec_info(a, b):
    """:func:`_solve_inplace_info` for C-contiguous ``a`` and 1-D ``b`` on borrowed views: the
    straight-line code up to 8 (``a`` only read), else the elimination out of line. A 3x3 system in
    a user's loop: 113 -> 19 ns (an out-of-line call on counted views, a reshape and the loops).
    The solve itself inlined by LLVM, as :func:`solve`'s (:func:`_solve_one_vec`)."""
    n = a.shape[0]
    if a.shape[1] != n:
        _solve_square_error()
    if b.shape[0] != n:
        _solve_inplace_shape_error()
    return _solve_inplace_vec_body(a, b)


@jit(inline="llvm")
def _solve_inplace_vec_body(a, b):
    info = _straight_line(a, b, b)
    if info >= 0:
        return info
    return _ool(_solve_inplace_info, (a, b))


@jit(inline="always")
def _solve_inplace_vec(a, b):
    if _solve_inplace_vec_info(_borrow(a), _borrow(b)):
        _singular_error()
    return b


@jit
def _lu_factor(a, lu, piv):
    """Factor ``a`` (m, n) into ``lu`` (its shape) and ``piv`` (min(m, n)), both allocated by the
    callers below."""
    m, n = a.shape
    _copy2d(lu, a)
    start = n - n  # run-time zeros (see _gemm_kernels' "literal arguments")
    k = min(m, n)
    if k >= _lu.PANEL_COLUMNS_MIN:  # one panel of the whole matrix, factored in a transposed copy
        status = _intrinsics.empty(1, np.int64)
        status[0] = start
        _lu._panel_columns(lu, start, k, piv, status, _intrinsics.empty((k, m), lu.dtype))
        info = status[0]
    else:
        info = _lu._panel_rows(lu, start, k, piv, start)
    if n > m:  # a wide matrix: U's columns right of the square part, U12 := L^-1 A12
        _lu._trsm_unit_lower_rows(lu, start, m)
    return info


def lu_factor(a):
    """``(lu, piv)`` of a float matrix (m, n), square or not, SciPy's convention (``piv`` int32,
    0-based, min(m, n) of them); an exactly zero pivot leaves the factors singular (as SciPy, which
    warns) rather than raising."""
    (a,) = _floats("lu_factor", a)
    if a.ndim != 2:
        raise ValueError("fastla.kernels.lu_factor: a must be 2-D (m, n)")
    lu, piv = np.empty(a.shape, a.dtype), np.empty(min(a.shape), np.int32)
    _call(_lu_factor, a, lu, piv)
    return lu, piv


@_jit.overload(lu_factor)
def _lu_factor_typer(a):
    if not _is_array(a, (2,)):
        return None

    def impl(a):
        lu, piv = _empty(a.shape, a.dtype), _empty(min(a.shape[0], a.shape[1]), np.int32)
        _ool(_lu_factor, (a, lu, piv))
        return lu, piv

    return impl


@jit
def _lu_solve_shape_error():
    raise ValueError("fastla.kernels.lu_solve: b must be (n,) or (n, k) for lu (n, n), and out of b's shape")


@jit
def _lu_piv_error():
    raise ValueError("fastla.kernels.lu_solve: piv must hold n row indices in [0, n) for lu (n, n)")


@jit(inline="always")
def _check_piv(piv, n):
    """A pivot outside the matrix would swap rows outside ``b`` (memory past it): refused."""
    if piv.shape[0] != n:
        _lu_piv_error()
    for i in range(n):
        if _jit.U(piv[i]) >= _jit.U(n):  # unsigned: a negative index too, in one compare
            _lu_piv_error()


@jit
def _lu_solve(lu, piv, b, out):
    n = lu.shape[0]
    if b.shape[0] != n or out.shape != b.shape:
        _lu_solve_shape_error()
    _check_piv(piv, n)
    x = out.reshape((n, _columns(b)))
    _copy2d(x, np.ascontiguousarray(b).reshape((n, _columns(b))))
    _lu._getrs(_intrinsics.as_readonly(np.ascontiguousarray(lu)), piv, x, n - n)
    return out


@jit
def _lu_solve_vector(lu, piv, b, out):
    """:func:`_lu_solve` for one right-hand side ``b`` (n,) into a C-contiguous ``out``: no reshape
    and no copy of ``piv`` (a 4x4 solve in a user's loop 101-117 -> 37-79 ns, see ``lu.getrs_vector``)."""
    n = lu.shape[0]
    if b.shape[0] != n or out.shape[0] != n:
        _lu_solve_shape_error()
    _check_piv(piv, n)
    _copy1d(out, b)
    _lu.getrs_vector(_intrinsics.as_readonly(np.ascontiguousarray(lu)), piv, out)
    return out


def lu_solve(lu, piv, b, out=None):
    """``x`` with ``a x = b`` from :func:`lu_factor`'s factors (``b`` of shape ``(n,)`` or ``(n, k)``)."""
    lu, b = _floats("lu_solve", lu, b)
    if lu.ndim != 2 or b.ndim not in (1, 2):
        _lu_solve_shape_error()
    piv = _native(piv)
    if out is None:
        return _call(_lu_solve, lu, piv, b, np.empty(b.shape, lu.dtype))
    _python_out("lu_solve", out, b.shape, lu.dtype, shape_error=_lu_solve_shape_error)
    _into(out, lambda into: _call(_lu_solve, lu, piv, b, into), reads=(lu, piv, b))
    return out


def _borrowing(kernel):
    """An inlined call of ``kernel(lu, piv, b, out)`` on borrowed views (no reference counting
    across the call, see :func:`_solve_vec_info`), returning ``out`` itself."""

    @jit(inline="always")
    def call(lu, piv, b, out):
        _ool(kernel, (_borrow(lu), _borrow(piv), _borrow(b), _borrow(out)))
        return out

    return call


#: by "one right-hand side into a C-contiguous out"
_LU_SOLVE = {False: _borrowing(_lu_solve), True: _borrowing(_lu_solve_vector)}


@_jit.overload(lu_solve)
def _lu_solve_typer(lu, piv, b, out=None):
    if not (_is_array(lu, (2,)) and _is_array(b, (1, 2))):
        return None
    fresh = out is None or isinstance(out, nbt.NoneType | nbt.Omitted)
    vector = b.ndim == 1 and (fresh or (isinstance(out, nbt.Array) and out.ndim == 1 and out.layout == "C"))
    call = _LU_SOLVE[vector]
    if fresh:
        return lambda lu, piv, b, out=None: call(lu, piv, b, _empty(b.shape, lu.dtype))
    if not isinstance(out, nbt.Array):
        return None
    if out.ndim != b.ndim:

        def mismatched(lu, piv, b, out=None):
            _lu_solve_shape_error()
            return out

        return mismatched
    if out.layout != "C":  # solved contiguously, then copied (as kernels.solve)
        copy, contiguous = _COPY[out.ndim], _LU_SOLVE[b.ndim == 1]

        def strided(lu, piv, b, out=None):
            if out.shape != b.shape:
                _lu_solve_shape_error()
            copy(out, contiguous(lu, piv, b, _empty(b.shape, lu.dtype)))
            return out

        return strided
    return lambda lu, piv, b, out=None: call(lu, piv, b, out)


# --------------------------------------------------------------------------- similarity and top-k


@jit
def _unit_scaled(x):
    """``(x', inv)``: ``x`` with its out-of-range rows scaled by a power of two (as the public
    cosine) and the inverse norms."""
    n = x.shape[0]
    lo, hi = _SQ_F32 if x.itemsize == 4 else _SQ_F64
    inv = _empty(n, x.dtype)
    norms = _empty(n, np.float64)
    exps = _empty(n, np.int64)
    xc = _empty(x.shape, x.dtype)  # a copy: the rows may be rescaled below
    _copy2d(xc, x)
    _inv_norms(_intrinsics.as_readonly(xc), lo, hi, inv, norms, exps)
    if np.any(exps != 0):
        for i in range(n):
            if exps[i] != 0:
                for j in range(x.shape[1]):
                    xc[i, j] = math.ldexp(xc[i, j], -int(exps[i]))
    return xc, inv


@jit
def _cosine(x, y, out):
    if x.shape[1] != y.shape[1] or out.shape[0] != x.shape[0] or out.shape[1] != y.shape[0]:
        _cosine_shape_error()
    n, d = x.shape
    m = y.shape[0]
    if n == 0 or m == 0:
        return out
    if d == 0:
        out[:] = 0
        return out
    xs, inv_x = _unit_scaled(x)
    ys, inv_y = _unit_scaled(y)
    A = _gk.flat_operand(xs.reshape(xs.size), 0, d, 1, n, d)
    B = _gk.flat_operand(ys.reshape(ys.size), 0, 1, d, d, m)  # Y transposed
    big = int(out.itemsize == 8)
    one = _zero(out) + 1
    start = n - n  # a run-time 0
    # a run-time False: a literal one types as Literal[bool], and the product compiled again for it
    # (0.7 s of the kernels' warm-up per dtype; kernels.gemm passes a bool)
    store = start != 0
    flat = out.reshape(out.size)
    tiles = _gk.Tiles(_KC[big], min(n, _MC[big]), _NC[big], _gk.Tasks(None, None), 1, flat[:0])
    _gemm_into(A, B, _gk.Dest(flat, start, m), one, store, inv_x, inv_y, tiles)
    return out


def cosine_similarity(X, Y, out=None):
    """The cosine similarity matrix of the rows of 2-D float ``X`` (n, d) and ``Y`` (m, d), as
    :func:`fastla.cosine_similarity` (zero rows give 0; exact over the whole float range)."""
    X, Y = _floats("cosine_similarity", X, Y)
    if X.ndim != 2 or Y.ndim != 2:
        _cosine_shape_error()
    # C-contiguous: the kernel copies each operand scaled (the same values from any layout), and a
    # form compiled per layout (Y transposed: 2.2-3.0 s on Zen 3) is saved
    X, Y = np.ascontiguousarray(X), np.ascontiguousarray(Y)
    shape = (X.shape[0], Y.shape[0])
    if out is None:
        return _call(_cosine, X, Y, np.empty(shape, X.dtype))
    # any float out, as in compiled code (float16 refused as an operand is)
    _python_out("cosine_similarity", out, shape, X.dtype, True, _cosine_shape_error)
    _refuse_others("cosine_similarity", (out,), "", "out must be float32 or float64")
    _into(out, lambda into: _call(_cosine, X, Y, into), X.dtype, reads=(X, Y))
    return out


@_jit.overload(cosine_similarity)
def _cosine_typer(X, Y, out=None):
    if not (_is_array(X, (2,)) and _is_array(Y, (2,))):
        return None
    if out is None or isinstance(out, nbt.NoneType | nbt.Omitted):
        return lambda X, Y, out=None: _ool(_cosine, (X, Y, _empty((X.shape[0], Y.shape[0]), X.dtype)))
    if isinstance(out, nbt.Array) and out.layout != "C":  # computed contiguously, then copied

        def strided(X, Y, out=None):
            if out.shape != (X.shape[0], Y.shape[0]):
                _cosine_shape_error()
            _copy2d(out, _ool(_cosine, (X, Y, _empty((X.shape[0], Y.shape[0]), X.dtype))))
            return out

        return strided
    return lambda X, Y, out=None: _ool(_cosine, (X, Y, out))


def topk_init(k, dtype=np.float64):
    """``(scores, index)`` arrays of a top-``k`` accumulator: push candidates with :func:`topk_push`."""
    if np.dtype(dtype) not in _COMPUTED:
        raise TypeError(f"fastla.kernels.topk_init: dtype must be float32 or float64, not {np.dtype(dtype)}")
    return np.full(k, np.nan, dtype), np.full(k, -1, np.int64)


@_jit.overload(topk_init)
def _topk_init_typer(k, dtype=None):
    if dtype is None or isinstance(dtype, nbt.NoneType | nbt.Omitted):
        return lambda k, dtype=None: (np.full(k, np.nan), np.full(k, -1, np.int64))
    return lambda k, dtype=None: (np.full(k, np.nan, dtype), np.full(k, -1, np.int64))


@jit
def _topk_push_error():
    raise ValueError("fastla.kernels.topk_push: scores and index of one length (topk_init's), count >= 0")


@jit(inline="llvm")
def _topk_push(scores, index, count, value, j):
    """Inlined by LLVM into the caller, on borrowed views (see :func:`_solve_vec_info`): 1-1.7 ns a
    push into a top-10 from a user's loop, where inlined at Numba's IR level it took 25-26 ns (the
    arrays' reference counts inside the loop), and the user's function compiles in 1.6 s, not 4.8."""
    k = scores.shape[0]
    if index.shape[0] != k or count < 0:  # the insertion would write past index
        _topk_push_error()
    if k == 0:
        return count
    if count < k:
        _sim._insert(scores, index, count, value, j)
        return count + 1
    if _sim._worse(scores[k - 1], index[k - 1], value, j):
        _sim._insert(scores, index, k, value, j)
    return count


def topk_push(scores, index, count, value, j):
    """Offer the candidate ``j`` with ``value``; return the new ``count`` (start from 0).

    ``scores``/``index`` (from :func:`topk_init`) stay sorted by decreasing score; push candidates
    in increasing ``j`` so that ties keep the lower index, as :func:`fastla.cosine_topk`; NaN
    scores rank last. The first ``count`` entries are the top-``count`` so far.
    """
    _state_arrays(
        "topk_push",
        "scores (k,) float32/float64 and index (k,) integers, from topk_init",
        (scores, 1, "f"),
        (index, 1, "iu"),
    )
    return _call(_topk_push, scores, index, count, value, j)


@_jit.overload(topk_push)
def _topk_push_typer(scores, index, count, value, j):
    return lambda scores, index, count, value, j: _topk_push(_borrow(scores), _borrow(index), count, value, j)


# --------------------------------------------------------------------------- attention


@jit
def _attention_step(q, k, v, scale, m, l, acc):
    L, E = q.shape
    S = k.shape[0]
    Ev = v.shape[1]
    if (k.shape[1], v.shape[0], acc.shape[0], acc.shape[1], m.shape[0], l.shape[0]) != (E, S, L, Ev, L, L):
        raise ValueError(
            "fastla.kernels.attention_step: q (L, E), k (S, E), v (S, Ev), m (L,), l (L,), acc (L, Ev)"
        )
    s = _empty(S, acc.dtype)
    zero = _zero(acc)
    for i in range(L):
        for j in range(S):
            t = zero
            for e in range(E):
                t += q[i, e] * k[j, e]
            s[j] = t * scale
        new = max(m[i], _math.row_max(s)) if S else m[i]
        base = new if new != -np.inf else zero  # all keys masked so far: no -inf - -inf
        alpha = _math.exp_nonpositive(m[i] - base)
        l[i] *= alpha
        for e in range(Ev):
            acc[i, e] *= alpha
        for j in range(S):
            p = _math.exp_nonpositive(s[j] - base)
            l[i] += p
            for e in range(Ev):
                acc[i, e] += p * v[j, e]
        m[i] = new


def attention_step(q, k, v, scale, m, l, acc):
    """One online-softmax step of attention over a key tile, in place.

    For queries ``q (L, E)`` and the tile's keys ``k (S, E)`` and values ``v (S, Ev)``, update the
    running row maximum ``m (L,)`` (start at ``-inf``), row sum ``l (L,)`` (start at 0) and output
    accumulator ``acc (L, Ev)`` (start at 0) with ``softmax(q kᵀ · scale)`` over the tiles seen so
    far; :func:`attention_finish` then gives the output. Uses fastla's exp, as the flash kernel.
    """
    q, k, v = _native(q), _native(k), _native(v)
    _refuse_others("attention_step", (q, k, v))
    what = "q (L, E), k (S, E), v (S, Ev) arrays; m (L,), l (L,), acc (L, Ev) float32/float64 arrays"
    if q.ndim != 2 or k.ndim != 2 or v.ndim != 2:
        raise ValueError(f"fastla.kernels.attention_step: {what}")
    _state_arrays("attention_step", what, (m, 1, "f"), (l, 1, "f"), (acc, 2, "f"))
    _call(_attention_step, q, k, v, acc.dtype.type(scale), m, l, acc)


@_jit.overload(attention_step)
def _attention_step_typer(q, k, v, scale, m, l, acc):
    if not all(_is_array(t, (2,)) for t in (q, k, v, acc)):
        return None
    dt = acc.dtype
    return lambda q, k, v, scale, m, l, acc: _ool(
        _attention_step, (_borrow(q), _borrow(k), _borrow(v), dt(scale), _borrow(m), _borrow(l), _borrow(acc))
    )


@jit
def _attention_finish_shape_error():
    raise ValueError("fastla.kernels.attention_finish: l (L,), acc (L, Ev) and out of acc's shape")


@jit
def _attention_finish(l, acc, out):
    if l.shape[0] != acc.shape[0] or out.shape != acc.shape:
        _attention_finish_shape_error()
    for i in range(acc.shape[0]):
        inv = 1 / l[i] if l[i] != 0 else l[i] * 0
        for e in range(acc.shape[1]):
            out[i, e] = acc[i, e] * inv
    return out


def attention_finish(l, acc, out=None):
    """``acc / l`` per row (a row that saw no key gives zeros, as the public attention does)."""
    what = "l (L,) and acc (L, Ev) float32/float64 arrays"
    _state_arrays("attention_finish", what, (l, 1, "f"), (acc, 2, "f"), written=False)
    if out is None:
        return _call(_attention_finish, l, acc, np.empty_like(acc))
    _python_out("attention_finish", out, acc.shape, acc.dtype, shape_error=_attention_finish_shape_error)
    _into(out, lambda into: _call(_attention_finish, l, acc, into), reads=(l, acc), same_ok=True)
    return out


@_jit.overload(attention_finish)
def _attention_finish_typer(l, acc, out=None):
    if out is None or isinstance(out, nbt.NoneType | nbt.Omitted):
        return lambda l, acc, out=None: _ool(_attention_finish, (l, acc, np.empty_like(acc)))
    return lambda l, acc, out=None: _ool(_attention_finish, (l, acc, out))
