"""Every public function on the inputs a NumPy user passes by accident, against its anchor.

Each case calls fastla's function and the anchor (NumPy, SciPy, or for fastla's own semantics a
float64 reference that states them) on the same input and requires the same outcome: the same
exception class, or a result of the same type (ndarray subclass included), dtype and shape with the
same values. The inputs must come back unchanged. The inputs vary over dtypes (int, bool, float16,
float32, complex, object, mixed), 0-d, empty and zero-size axes, layouts (F-order, strided, negative
strides, read-only, byte-swapped), nan/inf and subnormals, and ndarray subclasses.

Deliberate differences from an anchor are written into its wrapper below, each with its reason; the
README lists them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.special as sps

import fastla
from tests.helpers import variant

# exceptions are compared by the most specific of these public classes the anchor's error is
_ERROR_CLASSES = (
    np.linalg.LinAlgError,
    np.exceptions.AxisError,
    IndexError,
    ValueError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)


def _error_class(exc):
    return next(c for c in _ERROR_CLASSES if isinstance(exc, c))


class _Sub(np.ndarray):
    """A trivial ndarray subclass (NumPy keeps it through some functions, not others)."""


# --------------------------------------------------------------------------- input variants


def _dtype_variant(dt):
    def make(x):
        if dt is object:
            return x.astype(object)
        if np.dtype(dt).kind in "iub":
            return np.round(x * 3).astype(dt)
        return x.astype(dt)

    return make


def _poison(value):
    def make(x):
        y = x.copy()
        if y.size:
            y.flat[y.size // 2] = value
        return y

    return make


def _subnormal(x):
    return x * np.finfo(x.dtype).smallest_normal / 8 if x.dtype.kind == "f" else x


def _layout_variant(layout):
    return lambda x: variant(x, layout)


_LAYOUTS = ("F", "strided", "negstride", "readonly", "byteswapped")
_DTYPES = (np.float32, np.int64, np.int32, np.bool_, np.float16, np.complex128, object)
VARIANTS = {
    **{f"layout-{lay}": _layout_variant(lay) for lay in _LAYOUTS},
    **{f"dtype-{np.dtype(dt).name}": _dtype_variant(dt) for dt in _DTYPES},
    "nan": _poison(np.nan),
    "inf": _poison(np.inf),
    "subnormal": _subnormal,
    "subclass": lambda x: x.view(_Sub),
}


def _mixed(args):
    """The first array argument in float32, the others as they are (float64)."""
    out = list(args)
    for i, a in enumerate(out):
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            out[i] = a.astype(np.float32)
            break
    return out


# --------------------------------------------------------------------------- comparison


def _outcome(fn, args, kwargs):
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return fn(*args, **kwargs), None
            except Exception as exc:  # the anchor's error is part of the contract
                return None, exc


def _tolerance(dtype, loose=False):
    """(rtol, atol relative to the largest |value|); ``loose`` for iterates (see LOOSE)."""
    if dtype.kind not in "fc":
        return 0, 0
    table = (
        {2: (5e-3, 1e-3), 4: (1e-3, 1e-4), 8: (1e-5, 1e-7)}
        if loose
        else {2: (5e-3, 1e-3), 4: (1e-4, 1e-5), 8: (1e-9, 1e-11)}
    )
    return table.get(np.dtype(dtype).itemsize, table[4])


def _assert_same_result(got, exp, where, loose=False):
    if isinstance(exp, tuple):
        assert isinstance(got, tuple) and len(got) == len(exp), where
        for g, e in zip(got, exp, strict=True):
            _assert_same_result(g, e, where, loose)
        return
    assert type(got) is type(exp), f"{where}: type {type(got).__name__} != {type(exp).__name__}"
    g, e = np.asarray(got), np.asarray(exp)
    assert g.dtype == e.dtype, f"{where}: dtype {g.dtype} != {e.dtype}"
    assert g.shape == e.shape, f"{where}: shape {g.shape} != {e.shape}"
    if e.dtype == object:
        e, g = e.astype(np.float64), g.astype(np.float64)
    rtol, atol = _tolerance(e.dtype, loose)
    scale = np.max(np.abs(e[np.isfinite(e)]), initial=0) if e.dtype.kind in "fc" else 0
    np.testing.assert_allclose(g, e, rtol=rtol, atol=atol * max(scale, 1), equal_nan=True, err_msg=where)


def _snapshot(args, kwargs):
    arrays = [a for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray)]
    return [(a, a.copy(), a.flags.writeable) for a in arrays]


def _assert_unchanged(snap, where):
    for a, before, writeable in snap:
        assert a.flags.writeable == writeable, f"{where}: writeable flag changed"
        same = np.array_equal(a, before, equal_nan=a.dtype.kind in "fc")
        assert same, f"{where}: an input was modified"


#: Results that are iterates, not exact: the eigenpair meets its residual tolerance (1e-8 relative
#: for float64), so the eigenvector agrees with eigh's to about tol / gap, not to rounding.
LOOSE = {"power_iteration"}


def check(fl_fn, anchor, args, kwargs=None, where="", loose=False):
    """fastla and the anchor agree on ``fn(*args, **kwargs)``; the inputs stay unchanged."""
    kwargs = kwargs or {}
    snap = _snapshot(args, kwargs)
    exp, exp_err = _outcome(anchor, args, kwargs)
    got, got_err = _outcome(fl_fn, args, kwargs)
    _assert_unchanged(snap, where)
    if exp_err is not None:
        assert got_err is not None, f"{where}: anchor raised {exp_err!r}, fastla returned a result"
        assert isinstance(got_err, _error_class(exp_err)), (
            f"{where}: fastla raised {got_err!r}, the anchor {exp_err!r}"
        )
        assert str(got_err), f"{where}: an error without a message"
        return
    assert got_err is None, f"{where}: fastla raised {got_err!r}, the anchor returned a result"
    _assert_same_result(got, exp, where, loose)


# --------------------------------------------------------------------------- anchors


def _softmax_anchor(fn):
    def anchor(x, axis=-1):
        # Deliberate difference (README): a zero-size reduction returns an empty result, as torch
        # does, where SciPy raises "zero-size array to reduction operation".
        x = np.asanyarray(x)
        if x.size == 0 and x.dtype.kind in "iufc":
            return np.empty(x.shape, np.result_type(x.dtype, np.float16))
        return fn(x, axis=axis)

    return anchor


def _lu_factor_anchor(a):
    # Deliberate difference (README): a 1-D or 0-d array is not a matrix, a ValueError, where
    # SciPy's LAPACK wrapper factors it as an (n, 1) column and returns a 1-D "factor" that its own
    # lu_solve then rejects.
    if np.ndim(a) < 2:
        raise ValueError("lu_factor: a matrix")
    return sla.lu_factor(a, check_finite=True)


def _lu_solve_anchor(lu_piv, b):
    return sla.lu_solve(lu_piv, b, check_finite=True)


def _real(*arrays, name):
    """fastla's rule for the ops without a NumPy anchor: real numbers only (int/bool -> float64,
    float16 computes in float32), TypeError for complex and object arrays."""
    for a in arrays:
        if np.asarray(a).dtype.kind not in "biuf":
            raise TypeError(f"{name}: unsupported dtype")
    floats = [np.asarray(a).dtype for a in arrays if np.asarray(a).dtype.kind == "f"]
    dt = np.result_type(*floats, np.float64 if len(floats) < len(arrays) else np.float32)
    return np.dtype(dt).newbyteorder("=")


def _unit_rows(a):
    a = np.asarray(a, np.float64)
    with np.errstate(all="ignore"):
        mx = np.abs(a).max(axis=-1, keepdims=True) if a.shape[-1] else np.zeros((*a.shape[:-1], 1))
        a = a / np.where((mx > 0) & np.isfinite(mx), mx, 1)
        nrm = np.sqrt((a * a).sum(-1, keepdims=True))
        return a * np.where((nrm > 0) & np.isfinite(nrm), 1 / nrm, 0)


def _cosine_anchor(x, y=None):
    """sklearn's definition (zero rows give 0), NaN propagating, 1-D operands as documented."""
    x = np.asarray(x)
    y = x if y is None else np.asarray(y)
    dt = _real(x, y, name="cosine_similarity")
    if x.ndim not in (1, 2) or y.ndim not in (1, 2) or x.shape[-1] != y.shape[-1]:
        raise ValueError("cosine_similarity: shapes")
    res = np.atleast_2d(_unit_rows(x)) @ np.atleast_2d(_unit_rows(y)).T
    if x.ndim == 1 and y.ndim == 1:
        return float(res[0, 0])
    return res.reshape(-1).astype(dt) if min(x.ndim, y.ndim) == 1 else res.astype(dt)


def _topk_anchor(q, c, k):
    q, c = np.asarray(q), np.asarray(c)
    dt = _real(q, c, name="cosine_topk")
    if c.ndim != 2 or q.ndim not in (1, 2) or q.shape[-1] != c.shape[1] or not 0 <= k <= c.shape[0]:
        raise ValueError("cosine_topk: shapes")
    full = np.atleast_2d(_unit_rows(q)) @ _unit_rows(c).T
    idx = np.array(
        [sorted(range(full.shape[1]), key=lambda j, r=r: (math.isnan(r[j]), -r[j], j))[:k] for r in full],
        dtype=np.intp,
    ).reshape(full.shape[0], k)
    scores = np.take_along_axis(full, idx, axis=1).astype(dt)
    return (scores[0], idx[0]) if q.ndim == 1 else (scores, idx)


def _ce_anchor(x, t):
    """torch.nn.functional.cross_entropy (class axis last, mean over the targets), in float64."""
    x, t = np.asarray(x), np.asarray(t)
    if x.dtype.kind not in "iuf" or t.dtype.kind not in "iu":
        raise TypeError("cross_entropy: dtypes")
    if x.ndim == 0 or t.shape != x.shape[:-1]:
        raise ValueError("cross_entropy: shapes")
    if np.any((t < 0) | (t >= x.shape[-1])):
        raise IndexError("cross_entropy: target out of range")
    dt = x.dtype.newbyteorder("=") if x.dtype.kind == "f" else np.dtype(np.float64)
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        m = x64.max(axis=-1, keepdims=True) if x.shape[-1] else np.zeros((*x.shape[:-1], 1))
        m = np.where(np.isfinite(m), m, 0)
        lse = (m + np.log(np.exp(x64 - m).sum(-1, keepdims=True)))[..., 0]
        loss = lse - np.take_along_axis(x64, t[..., None].astype(np.intp), -1)[..., 0] if x.shape[-1] else lse
        return dt.type(loss.mean() if loss.size else np.nan)


def _sdpa_anchor(q, k, v):
    """torch's scaled_dot_product_attention formula; floats only (integer input is a TypeError)."""
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    if any(a.ndim < 2 for a in (q, k, v)):
        raise ValueError("scaled_dot_product_attention: (..., L, E) operands")
    if any(a.dtype.kind != "f" for a in (q, k, v)):
        raise TypeError("scaled_dot_product_attention: floating-point only")
    dt = np.result_type(q, k, v).newbyteorder("=")
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    s = q64 @ np.swapaxes(k64, -1, -2) / math.sqrt(q.shape[-1])
    with np.errstate(all="ignore"):
        m = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
        e = np.exp(s - np.where(np.isfinite(m), m, 0))
        w = e / e.sum(-1, keepdims=True)
    return (w @ v64).astype(dt)


def _power_anchor(a):
    """The dominant eigenpair of a symmetric matrix by eigh, in fastla's dtype rule; fastla returns
    the eigenvector with its largest-magnitude component positive."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise TypeError("power_iteration: dtype")
    if a.dtype.kind == "f" and a.dtype.itemsize not in (4, 8):
        raise TypeError("power_iteration: dtype")
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError("power_iteration: shape")
    if not np.isfinite(a.astype(np.float64)).all():
        raise ValueError("power_iteration: non-finite")
    dt = a.dtype.newbyteorder("=") if a.dtype.kind == "f" else np.dtype(np.float64)
    w, v = np.linalg.eigh(a.astype(np.float64))
    i = np.argmax(np.abs(w))
    vec = v[:, i] * np.sign(v[np.argmax(np.abs(v[:, i])), i])
    return np.array([w[i]], dt), vec[:, None].astype(dt)


# --------------------------------------------------------------------------- the cases


def _spd(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n))
    return a @ a.T + n * np.eye(n)


def _base_cases():
    rng = np.random.default_rng(7)
    sym = _spd(6)
    sym[0, 0] += 40  # a clear dominant eigenvalue
    lu_piv = sla.lu_factor(_spd(5))
    x46 = rng.standard_normal((4, 6))
    return {
        "matmul": (fastla.matmul, np.matmul, (rng.standard_normal((4, 5)), rng.standard_normal((5, 3))), {}),
        "matmul-stack": (
            fastla.matmul,
            np.matmul,
            (rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5, 2))),
            {},
        ),
        "solve": (fastla.solve, np.linalg.solve, (_spd(5), rng.standard_normal(5)), {}),
        "solve-stack": (
            fastla.solve,
            np.linalg.solve,
            (np.stack([_spd(3)] * 4), rng.standard_normal((4, 3, 2))),
            {},
        ),
        "lu_factor": (fastla.lu_factor, _lu_factor_anchor, (_spd(5),), {}),
        "lu_solve": (fastla.lu_solve, _lu_solve_anchor, (lu_piv, rng.standard_normal(5)), {}),
        "softmax": (fastla.softmax, _softmax_anchor(sps.softmax), (x46,), {}),
        "softmax-axis0": (fastla.softmax, _softmax_anchor(sps.softmax), (x46,), {"axis": 0}),
        "log_softmax": (fastla.log_softmax, _softmax_anchor(sps.log_softmax), (x46,), {}),
        "cross_entropy": (
            fastla.cross_entropy,
            _ce_anchor,
            (rng.standard_normal((5, 4)), np.array([0, 3, 1, 2, 3])),
            {},
        ),
        "cosine_similarity": (
            fastla.cosine_similarity,
            _cosine_anchor,
            (rng.standard_normal((4, 6)), rng.standard_normal((3, 6))),
            {},
        ),
        "cosine_topk": (
            fastla.cosine_topk,
            _topk_anchor,
            (rng.standard_normal((3, 6)), rng.standard_normal((9, 6)), 4),
            {},
        ),
        "power_iteration": (fastla.power_iteration, _power_anchor, (sym,), {}),
        "sdpa": (
            fastla.scaled_dot_product_attention,
            _sdpa_anchor,
            tuple(rng.standard_normal((2, 5, 4)) for _ in range(3)),
            {},
        ),
    }


CASES = _base_cases()


def _apply(args, make):
    return tuple(make(a) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args)


@pytest.mark.parametrize("variant_name", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_like_the_anchor(case, variant_name):
    fn, anchor, args, kwargs = CASES[case]
    if case == "lu_solve":  # the factors come from lu_factor: vary b, and lu only in dtype/layout
        (lu, piv), b = args
        args = ((_apply((lu,), VARIANTS[variant_name])[0], piv), *_apply((b,), VARIANTS[variant_name]))
    else:
        args = _apply(args, VARIANTS[variant_name])
    check(fn, anchor, args, kwargs, where=f"{case} / {variant_name}", loose=case in LOOSE)


@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "lu_solve"))
def test_mixed_dtypes(case):
    fn, anchor, args, kwargs = CASES[case]
    check(fn, anchor, _mixed(args), kwargs, where=f"{case} / float32 + float64", loose=case in LOOSE)


def _shape_cases():
    """0-d, empty and zero-size-axis inputs, per op (anchor, args)."""
    e = np.zeros  # not np.empty: the non-empty operands of an empty product hold values too
    return [
        ("matmul", (np.float64(2.0), np.ones(3))),
        ("matmul", (e((0, 3)), e((3, 2)))),
        ("matmul", (e((2, 0)), e((0, 3)))),
        ("matmul", (e((0, 2, 3)), e((3, 4)))),
        ("matmul", (e((2, 3)), e((3, 0)))),
        ("solve", (e((0, 0)), e((0,)))),
        ("solve", (e((3, 0, 0)), e((3, 0, 2)))),
        ("solve", (e((0, 3, 3)), e((0, 3)))),
        ("solve", (np.float64(1.0), np.ones(1))),
        ("solve", (np.ones((2, 3)), np.ones(2))),
        ("lu_factor", (e((0, 0)),)),
        ("lu_factor", (np.ones((2, 3)),)),
        ("lu_factor", (np.arange(1.0, 6.0),)),
        ("lu_factor", (np.float64(3.0),)),
        ("lu_factor", (e((0,)),)),
        ("softmax", (np.float64(3.0),)),
        ("softmax", (e((0, 4)),)),
        ("softmax", (e((4, 0)),)),
        ("log_softmax", (e((0,)),)),
        ("log_softmax", (np.float32(-1.0),)),
        ("cross_entropy", (e((0, 4)), e((0,), np.int64))),
        ("cross_entropy", (np.float64(1.0), np.int64(0))),
        ("cosine_similarity", (e((0, 3)), e((2, 3)))),
        ("cosine_similarity", (e((2, 0)), e((3, 0)))),
        ("cosine_similarity", (np.float64(1.0), np.ones(1))),
        ("cosine_topk", (e((0, 3)), np.ones((4, 3)), 2)),
        ("cosine_topk", (np.ones((2, 3)), np.ones((4, 3)), 0)),
        ("cosine_topk", (np.ones((2, 3)), e((0, 3)), 1)),
        ("power_iteration", (e((0, 0)),)),
        ("power_iteration", (np.float64(1.0),)),
        ("sdpa", (e((2, 0, 4)), e((2, 3, 4)), e((2, 3, 4)))),
        ("sdpa", (np.ones(3), np.ones(3), np.ones(3))),
    ]


@pytest.mark.parametrize("i", range(len(_shape_cases())))
def test_shapes_like_the_anchor(i):
    case, args = _shape_cases()[i]
    fn, anchor, _, kwargs = CASES[case]
    check(fn, anchor, args, kwargs, where=f"{case} {[np.shape(a) for a in args]}", loose=case in LOOSE)


_VALUES = ("nan", "inf", "subnormal", "subclass")


@pytest.mark.parametrize("dtype_variant", [None, *sorted(v for v in VARIANTS if v.startswith("dtype-"))])
@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "lu_solve"))
def test_combined_variants_like_the_anchor(case, dtype_variant):
    """Two or three variants at once, where one alone passes: a dtype, then a layout, then a value
    (nan, inf, subnormal; on float data) or the subclass. The checks an op makes in turn (dtype,
    layout, finiteness) meet here, as in a user's data."""
    fn, anchor, args, kwargs = CASES[case]
    dtyped = args if dtype_variant is None else _apply(args, VARIANTS[dtype_variant])
    for layout in (None, *(f"layout-{lay}" for lay in _LAYOUTS)):
        laid = dtyped if layout is None else _apply_any(dtyped, VARIANTS[layout])
        for value in (None, *_VALUES):
            names = [n for n in (dtype_variant, layout, value) if n]
            if len(names) < 2:
                continue  # one variant alone: test_like_the_anchor
            made = laid if value is None else _apply_floats(laid, VARIANTS[value], value)
            check(fn, anchor, made, kwargs, where=f"{case} / {' + '.join(names)}", loose=case in LOOSE)


@pytest.mark.parametrize("dtype_variant", sorted(v for v in VARIANTS if v.startswith("dtype-")))
@pytest.mark.parametrize("i", range(len(_shape_cases())))
def test_shapes_of_every_dtype_like_the_anchor(i, dtype_variant):
    """The 0-d, empty and zero-size-axis inputs in each dtype: the empty-input shortcuts and the
    dtype rules meet here (an empty integer matrix's lu_factor took the float dtype SciPy gives a
    non-empty one; a complex 0-d cosine operand got the shape's ValueError before the dtype's
    TypeError)."""
    case, args = _shape_cases()[i]
    fn, anchor, _, kwargs = CASES[case]
    made = _apply(args, VARIANTS[dtype_variant])
    where = f"{case} {[np.shape(a) for a in args]} / {dtype_variant}"
    check(fn, anchor, made, kwargs, where=where, loose=case in LOOSE)


def _apply_any(args, make):
    """``make`` on every array argument, whatever its dtype (a layout of the dtype variant's array);
    lu_solve's (lu, piv) pair is not among the cases here."""
    return tuple(make(a) if isinstance(a, np.ndarray) else a for a in args)


def _apply_floats(args, make, name):
    """A value variant on the float arrays (a nan cannot be stored in an integer array); the
    subclass on every array."""
    kinds = "biufcO" if name == "subclass" else "fc"
    return tuple(make(a) if isinstance(a, np.ndarray) and a.dtype.kind in kinds else a for a in args)


@pytest.mark.parametrize(
    "case,call",
    [
        ("matmul", lambda x: fastla.matmul(x, x, out=x)),
        ("matmul-view", lambda x: fastla.matmul(x[:3, :3], x[1:, 1:], out=x[:3, 1:])),
        ("softmax", lambda x: fastla.softmax(x, out=x)),
        ("softmax-shifted", lambda x: fastla.softmax(x[:, :3], out=x[:, 1:])),
        ("log_softmax", lambda x: fastla.log_softmax(x, axis=0, out=x)),
        ("cosine_similarity", lambda x: fastla.cosine_similarity(x, out=x)),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "numba", "numpy"])
def test_out_aliasing_an_input(case, call, backend):
    """``out=`` that is (or overlaps) an input gives the result computed from the original input."""
    x = np.random.default_rng(3).standard_normal((4, 4))
    with fastla.backend(backend):
        expected = {
            "matmul": lambda x: x @ x,
            "matmul-view": lambda x: x[:3, :3] @ x[1:, 1:],
            "softmax": lambda x: sps.softmax(x, axis=-1),
            "softmax-shifted": lambda x: sps.softmax(x[:, :3], axis=-1),
            "log_softmax": lambda x: sps.log_softmax(x, axis=0),
            "cosine_similarity": lambda x: _cosine_anchor(x),
        }[case](x.copy())
        got = call(x)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shift", [1, 7, -1, -20, 2500])
@pytest.mark.parametrize(
    "case,n,d",
    [
        ("softmax", 3000, 10),
        ("softmax0", 300, 40),
        ("log_softmax", 3000, 10),
        ("cosine_similarity", 300, 300),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "numba", "numpy"])
def test_out_partly_overlapping_an_input(case, n, d, shift, backend):
    """A C-contiguous ``out=`` that shares part of an input's memory (a shifted view of one buffer)
    gets the result computed from the original input, as a NumPy ufunc's ``out`` does; kernels that
    store straight into ``out`` overwrote input rows other threads had still to read."""
    size = n * (n if case == "cosine_similarity" else d)
    buf = np.random.default_rng(4).standard_normal(n * d + size + abs(shift))
    x = buf[max(0, -shift) :][: n * d].reshape(n, d)
    out = buf[max(0, shift) :][:size].reshape(x.shape if size == n * d else (n, n))
    assert np.shares_memory(x, out) and x.ctypes.data != out.ctypes.data
    call, anchor = {
        "softmax": (lambda x, out: fastla.softmax(x, out=out), lambda x: sps.softmax(x, axis=-1)),
        "softmax0": (lambda x, out: fastla.softmax(x, axis=0, out=out), lambda x: sps.softmax(x, axis=0)),
        "log_softmax": (lambda x, out: fastla.log_softmax(x, out=out), lambda x: sps.log_softmax(x, axis=-1)),
        "cosine_similarity": (lambda x, out: fastla.cosine_similarity(x, out=out), _cosine_anchor),
    }[case]
    expected = anchor(x.copy())
    with fastla.backend(backend):
        assert call(x, out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
