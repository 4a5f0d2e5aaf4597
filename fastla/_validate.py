"""Shared argument checks and dtype promotion (validation happens once, in the public function).

Kernels receive arrays that are float32/float64, native byte order and of the documented ndim; they
never re-check. Anything a kernel does not compile is described by a reason string
(``Prepared.compiled``) so that ``auto`` sends it to NumPy and ``explain`` can say why.
"""

from __future__ import annotations

import operator

import numpy as np

COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_COMPILED_NAMES = "float32, float64"


def is_sparse(x):
    """Whether ``x`` is a SciPy sparse matrix or array (recognised without importing SciPy)."""
    return type(x).__module__.startswith("scipy.sparse") and hasattr(x, "tocsr")


def is_subclass_input(*xs):
    """True if any input is an ndarray subclass (np.matrix, masked arrays, ...)."""
    return any(isinstance(x, np.ndarray) and type(x) is not np.ndarray for x in xs)


def compute_dtype(arrays, *, ints_to_float64):
    """Return ``(dtype, reason)``: the float dtype a kernel computes in, or ``(None, why not)``.

    ``ints_to_float64`` follows the anchor: ``np.linalg``/SciPy convert integer and bool input to
    float64 (and so can we); ``np.matmul``/``scipy.special`` keep integers, which only NumPy
    reproduces exactly.
    """
    dtypes = [a.dtype for a in arrays]
    first = dtypes[0]
    if first in COMPILED_DTYPES and all(dt is first for dt in dtypes):  # fast path, native floats
        return first, None
    for dt in dtypes:
        if dt.kind in "biu" and ints_to_float64:
            continue
        if dt.kind != "f" or dt.itemsize not in (4, 8):
            return None, f"dtype {dt} is not compiled (compiled: {_COMPILED_NAMES})"
    floats = [dt for dt in dtypes if dt.kind == "f"]
    if not floats:
        return np.dtype(np.float64), None
    res = np.result_type(*floats)
    if any(dt.kind in "biu" for dt in dtypes):  # like np.linalg: an int forces float64
        res = np.promote_types(res, np.float64)
    return res.newbyteorder("="), None


def lapack_dtype(arrays):
    """Return ``(dtype, reason)`` as :func:`compute_dtype`, by SciPy's LAPACK type rule
    (``scipy.linalg.lu_factor`` and friends): bool, 8- and 16-bit integers and float16 compute in
    float32, wider integers in float64; complex, object and long double are not compiled."""
    dtypes = [a.dtype for a in arrays]
    if all(dt.kind in "biu" or (dt.kind == "f" and dt.itemsize <= 8) for dt in dtypes):
        return np.result_type(*dtypes, np.float32).newbyteorder("="), None
    bad = next(dt for dt in dtypes if not (dt.kind in "biu" or (dt.kind == "f" and dt.itemsize <= 8)))
    return None, f"dtype {bad} is not compiled (compiled: {_COMPILED_NAMES})"


def raise_anchors_type_error(anchor, *args):
    """On the way to raising a shape error: raise the ``TypeError`` that ``anchor(*args)`` (the NumPy
    function the op replaces) raises, if it raises one. NumPy looks at the dtypes first (a ufunc
    picks its loop before it compares core dimensions; ``np.linalg`` rejects float16 before it looks
    at ``b``), so an input both mistyped and misshaped gets NumPy's ``TypeError``, not fastla's
    ``ValueError``. Only called where the shapes already failed: NumPy raises at once, computing
    nothing. Returns when NumPy raises anything else."""
    try:
        anchor(*args)
    except TypeError as err:
        raise err from None
    except Exception:
        return


def native(a, dtype):
    """``a`` as ``dtype`` in native byte order; copies only when the dtype or byte order differs.

    Strides are kept (kernels handle strided input), so views stay views.
    """
    if a.dtype == dtype and a.dtype.isnative:
        return a
    return a.astype(dtype)


def check_finite(a, name="array"):
    """Raise ``ValueError`` like SciPy when ``a`` holds inf or NaN."""
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        raise ValueError("array must not contain infs or NaNs")


def as_int(value, what):
    """``value`` as a Python int, else a TypeError naming ``what``. A bool is not an integer here,
    although ``operator.index(True)`` is 1: NumPy's axes and SciPy's ``eigsh(k=)`` refuse it."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}") from None


def normalize_axis(axis, ndim, name="axis"):
    """Normalise one axis index like NumPy (``AxisError``, a ValueError and IndexError)."""
    axis = as_int(axis, name)
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(axis, ndim)
    return axis % ndim


def normalize_axes(axis, ndim):
    """Normalise ``None`` (all axes), an int or a tuple of ints into a sorted tuple."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, tuple):
        axes = tuple(normalize_axis(a, ndim) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"repeated axis in {axis}")
        return tuple(sorted(axes))
    return (normalize_axis(axis, ndim),)


def out_problem(out, shape, dtype, fname, name="out", broadcast=False):
    """What is wrong with an ``out=`` argument, as the exception NumPy's ufuncs raise, or None.

    The rules of a ufunc's ``out``: an ndarray of exactly the result's shape (``broadcast``: a shape
    the result broadcasts to, as a gufunc's ``out`` has loop dimensions of its own, e.g.
    ``np.matmul(a2d, b2d, out=stack_of_results)`` writes the product into every item), writeable,
    and a dtype the result casts to under ``same_kind``. The wording follows NumPy's where its tests
    check it.
    """
    if not isinstance(out, np.ndarray):
        return TypeError(f"{fname}: {name} must be a numpy.ndarray (return arrays must be of ArrayType)")
    if out.shape != tuple(shape) and not (broadcast and _broadcasts_to(tuple(shape), out.shape)):
        return ValueError(
            f"{fname}: non-broadcastable output operand with shape {out.shape} doesn't match the "
            f"result shape {tuple(shape)}"
        )
    if not np.can_cast(dtype, out.dtype, casting="same_kind"):
        return TypeError(
            f"Cannot cast ufunc '{fname}' output from {np.dtype(dtype)!r} to {out.dtype!r} with "
            "casting rule 'same_kind'"
        )
    if not out.flags.writeable:
        return ValueError(f"{fname}: output array is read-only")
    return None


def _broadcasts_to(shape, target):
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


def writes_apart(out, *reads, same_ok=False):
    """Whether a kernel may store into ``out`` while it reads ``reads``: ``out`` shares no memory with
    any of them or, with ``same_ok`` (a kernel that reads each element before it writes it), is the
    very same view of one of them. Otherwise the caller computes apart and copies, so that an ``out``
    which partly overlaps an input gets the result a NumPy ufunc's would."""
    for x in reads:
        if np.may_share_memory(out, x):
            same = same_ok and out.shape == x.shape and out.strides == x.strides
            if not (same and out.__array_interface__["data"][0] == x.__array_interface__["data"][0]):
                return False
    return True


def check_out(out, shape, dtype, fname, name="out"):
    """Raise :func:`out_problem`'s exception for a bad ``out=``; return ``out``."""
    if out is not None:
        problem = out_problem(out, shape, dtype, fname, name)
        if problem is not None:
            raise problem
    return out


def wrap_like(template, result):
    """``result`` as ``template``'s ndarray subclass, as ``np.linalg`` returns its ``b``'s type
    (NumPy's ``_makearray`` wrap); plain input gives ``result`` unchanged."""
    if type(template) is np.ndarray or not isinstance(template, np.ndarray):
        return result
    return template.__array_wrap__(result)
