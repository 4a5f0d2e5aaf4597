"""The fast path of the common call gives what the full call path gives, and runs what ``explain`` says.

A call under ``auto`` (``backend=None`` with auto in force, or ``backend="auto"``), or with ``numba``
forced, may take a public function's fast path (a few cheap checks, then the impl); a call with the
fast paths closed (``_registry.fast_path`` patched to refuse) takes the full path (validation + the
auto rule). Both must agree on every input of the
shared matrix: the same result, or the same error.
"""

from __future__ import annotations

import sys
from unittest import mock

import numpy as np
import pytest

import fastla
from fastla import _registry
from tests.helpers import variant

rng = np.random.default_rng(5)


def _full_path(call, backend):
    """``call(backend)`` with every fast path closed: the full path (validation + the auto rule)."""
    with mock.patch.object(_registry, "fast_path", lambda backend: None):
        return call(backend)


def _same(call):
    """``call(backend)`` under auto (``None`` and ``"auto"``, fast path eligible) and the full path
    agree, and so do ``"numba"`` forced by the call with the fast path open and closed."""
    _agree(lambda: call(None), lambda: _full_path(call, "auto"))
    _agree(lambda: call("auto"), lambda: _full_path(call, "auto"))
    _agree(lambda: call("numba"), lambda: _full_path(call, "numba"))


def _agree(*calls):
    """Two calls give the same outcome: the same error (type and message; warnings are errors in
    the suite), or results (a tuple of them compared item by item) of one type, dtype, shape,
    memory order and values."""
    outcomes = []
    for run in calls:
        try:
            outcomes.append(("ok", run()))
        except Exception as exc:  # the error is part of the contract
            outcomes.append(("error", exc))
    (kind_a, a), (kind_b, b) = outcomes
    assert kind_a == kind_b, outcomes
    if kind_a == "error":
        assert type(a) is type(b) and str(a) == str(b)
        return
    assert type(a) is type(b)
    pairs = zip(a, b, strict=True) if isinstance(a, tuple) else [(a, b)]
    for x, y in pairs:
        assert type(x) is type(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.flags.f_contiguous == y.flags.f_contiguous and x.flags.c_contiguous == y.flags.c_contiguous
        np.testing.assert_array_equal(x, y)


def _inputs():
    m = {
        "2d": (rng.standard_normal((5, 4)), rng.standard_normal((4, 3))),
        "stack-small": (rng.standard_normal((300, 4, 4)), rng.standard_normal((300, 4, 4))),
        "stack-short": (rng.standard_normal((10, 4, 4)), rng.standard_normal((10, 4, 4))),
        "stack-large-mats": (rng.standard_normal((30, 20, 20)), rng.standard_normal((30, 20, 20))),
        "mismatch": (rng.standard_normal((5, 4)), rng.standard_normal((5, 3))),
        "1d": (rng.standard_normal(4), rng.standard_normal((4, 3))),
        "matvec": (rng.standard_normal((5, 4)), rng.standard_normal(4)),
        "dot": (rng.standard_normal(4), rng.standard_normal(4)),
        "stack-vec": (rng.standard_normal((3, 5, 4)), rng.standard_normal(4)),
        "vec-stack": (rng.standard_normal(4), rng.standard_normal((3, 4, 2))),
        "stack-shared": (rng.standard_normal((3, 5, 4)), rng.standard_normal((4, 3))),
        "stack4-shared": (rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((4, 3))),
        "mismatch-vec": (rng.standard_normal((5, 4)), rng.standard_normal(3)),
        "mismatch-shared": (rng.standard_normal((3, 5, 4)), rng.standard_normal((3, 3))),
        "empty-stack-shared": (rng.standard_normal((0, 5, 4)), rng.standard_normal((4, 3))),
    }
    return m


@pytest.mark.parametrize("case", sorted(_inputs()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("layout", ["C", "F", "readonly", "byteswapped", "negstride"])
def test_matmul_fast_path_is_the_full_path(case, dtype, layout):
    a, b = (variant(x.astype(dtype), layout) for x in _inputs()[case])
    _same(lambda be: fastla.matmul(a, b, backend=be))


def _systems():
    a1 = rng.standard_normal((6, 6))
    return {
        "one": (a1, rng.standard_normal(6)),
        "one-multi-rhs": (a1, rng.standard_normal((6, 2))),
        "stack-small": (rng.standard_normal((100, 3, 3)), rng.standard_normal((100, 3, 1))),
        "stack-short": (rng.standard_normal((10, 3, 3)), rng.standard_normal((10, 3, 2))),
        "singular": (np.zeros((6, 6)), np.ones(6)),
        "singular-in-stack": (np.stack([np.eye(3)] * 99 + [np.zeros((3, 3))]), np.ones((100, 3, 1))),
        "bad-b": (a1, np.ones(5)),
        "not-square": (rng.standard_normal((3, 4)), np.ones(3)),
    }


@pytest.mark.parametrize("case", sorted(_systems()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "readonly"])
def test_solve_fast_path_is_the_full_path(case, dtype, layout):
    a, b = (variant(x.astype(dtype), layout) for x in _systems()[case])
    _same(lambda be: fastla.solve(a, b, backend=be))


#: long rows (past softmax's _SHORT_ROW, several _SUM_CHUNKs); without the JIT a third as long (the
#: same paths; 5000 as Python took ~2.4 s a case)
LONG_ROWS = (3, 5000) if fastla._jit.JIT_ENABLED else (3, 1500)


@pytest.mark.parametrize("fn", [fastla.softmax, fastla.log_softmax])
@pytest.mark.parametrize("shape", [(7,), (4, 10), LONG_ROWS, (0, 3), ()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, bool])
def test_softmax_fast_path_is_the_full_path(fn, shape, dtype):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    _same(lambda be: fn(x, backend=be))
    _same(lambda be: fn(x.astype(dtype).view(np.ndarray)[...], backend=be))
    for axis in range(-len(shape), len(shape)):  # the last axis by either name, and the others
        _same(lambda be, axis=axis: fn(x, axis=axis, backend=be))


def test_softmax_fast_path_takes_any_axis_given_as_an_int(monkeypatch):
    """Every axis given as an int in range, the last by either name (``-1`` or ``x.ndim - 1``) and
    the others, on C-ordered, Fortran-ordered and strided arrays, takes the fast path (the full
    path's ``_prepare`` never runs); a tuple of axes, ``None``, a NumPy integer or an axis out of
    range takes the full path (its rules, its errors)."""
    module = sys.modules["fastla.softmax"]
    prepared = []
    real = module._prepare
    monkeypatch.setattr(module, "_prepare", lambda *a, **k: prepared.append(a[1]) or real(*a, **k))
    for shape in ((118,), (4, 10), (2, 3, 5)):
        base = rng.standard_normal(shape)
        for x in (base, np.asfortranarray(base), rng.standard_normal((*shape[:-1], 2 * shape[-1]))[..., ::2]):
            for axis in range(-len(shape), len(shape)):
                fastla.softmax(x, axis=axis)
                fastla.log_softmax(x, axis=axis, backend="numba")
        assert prepared == [], (shape, prepared)
        x = base
        others = [(0,), None, np.int64(0)]
        for axis in others:
            fastla.softmax(x, axis=axis)
        with pytest.raises(np.exceptions.AxisError):
            fastla.softmax(x, axis=len(shape))
        assert prepared == [*others, len(shape)], shape
        prepared.clear()


def test_the_fast_path_runs_what_explain_names(monkeypatch):
    ran = []
    modules = {"matmul": "fastla.matmul", "solve": "fastla.lu", "softmax": "fastla.softmax"}
    names = {  # matmul's numba impl: its small-product stacks called directly too (_stack_product)
        "matmul": ("_matmul_numpy", "_matmul_numba", "_stack_product"),
        "solve": ("_solve_numpy", "_solve_numba"),
        "softmax": ("_numpy_impl", "_numba_impl"),
    }
    for op, mod in modules.items():
        module = sys.modules[mod]
        for impl, attr in zip(("numpy", "numba", "numba"), names[op], strict=False):
            original = getattr(module, attr)

            def spy(*args, _impl=impl, _original=original, _op=op, **kwargs):
                ran.append((_op, _impl))
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, attr, spy)
    calls = [
        ("matmul", (rng.standard_normal((5, 4)), rng.standard_normal((4, 3)))),
        ("matmul", (rng.standard_normal((300, 4, 4)), rng.standard_normal((300, 4, 4)))),
        ("matmul", (rng.standard_normal((10, 4, 4)), rng.standard_normal((10, 4, 4)))),
        ("solve", (rng.standard_normal((100, 3, 3)), rng.standard_normal((100, 3, 1)))),
        ("solve", (rng.standard_normal((6, 6)), rng.standard_normal(6))),
        ("softmax", (rng.standard_normal((4, 10)),)),
        ("softmax", (rng.standard_normal((100, 100)),)),
    ]
    for op, args in calls:
        for backend in (None, "numba"):
            ran.clear()
            getattr(fastla, op)(*args, backend=backend)
            assert ran == [(op, fastla.explain(op, *args, backend=backend)[0])], (op, [a.shape for a in args])
        with fastla.backend("numba"):  # forced by the setting in force, not by the call
            ran.clear()
            getattr(fastla, op)(*args)
            assert ran == [(op, "numba")], (op, [a.shape for a in args])


@pytest.mark.parametrize("backend", [1, ("numba",), np.array(["numba"]), "NUMBA", "blas"], ids=repr)
def test_a_backend_that_is_not_a_name_gets_the_full_paths_error(backend):
    """The fast path opens only for the names ``auto`` and ``numba``; anything else reaches the
    full path's check of the backend, with its error."""
    x = rng.standard_normal((4, 4))
    for call in (
        lambda: fastla.matmul(x, x, backend=backend),
        lambda: fastla.solve(x, x, backend=backend),
        lambda: fastla.softmax(x, backend=backend),
    ):
        with pytest.raises(ValueError, match="backend"):
            call()


def _spy_on_matmul_impls(monkeypatch, module, by_name=False):
    """A list that records ``"numpy"`` or ``"numba"`` for each call of matmul's two impls (the numba
    impl's small-product stacks called directly, ``_stack_product``, among them), or ``by_name`` the
    name called."""
    ran = []
    for impl, attr in (("numpy", "_matmul_numpy"), ("numba", "_matmul_numba"), ("numba", "_stack_product")):
        original = getattr(module, attr)

        def spy(*args, _impl=attr if by_name else impl, _original=original, **kwargs):
            ran.append(_impl)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, attr, spy)
    return ran


def test_mixed_ranks_under_auto_run_numpy_from_the_fast_path(monkeypatch):
    """A 1-D operand, and a stack times one matrix below the GEMM threshold: auto's rule names
    NumPy, and the fast path calls it directly (``_matmul_numpy``, spied); forced ``numba`` and a
    1-D ``a`` times a stack take the full path (the registered impls, not the spied names)."""
    module = sys.modules["fastla.matmul"]
    ran = _spy_on_matmul_impls(monkeypatch, module)
    fast = [
        (rng.standard_normal((70, 40)), rng.standard_normal(40)),
        (rng.standard_normal(40), rng.standard_normal((40, 70))),
        (rng.standard_normal(40), rng.standard_normal(40)),
        (rng.standard_normal((3, 70, 40)), rng.standard_normal(40)),
        (rng.standard_normal((2, 3, 9, 40)), rng.standard_normal((40, 7))),
    ]
    for a, b in fast:
        for dtype in (np.float32, np.float64):
            x, y = a.astype(dtype), b.astype(dtype)
            assert fastla.explain("matmul", x, y)[0] == "numpy"
            ran.clear()
            np.testing.assert_array_equal(fastla.matmul(x, y), np.matmul(x, y))
            assert ran == ["numpy"], (x.shape, y.shape)
            ran.clear()
            fastla.matmul(x, y, backend="numba")
            assert ran == [], (x.shape, y.shape)
    ran.clear()
    fastla.matmul(rng.standard_normal(4), rng.standard_normal((300, 4, 4)))
    assert ran == []


@pytest.mark.parametrize("f64_threshold, f32_threshold", [(1, 10**9), (65536, 1), (10**9, 65536), (0, 0)])
def test_the_gemm_threshold_decides_the_fast_path_as_explain_says(monkeypatch, f64_threshold, f32_threshold):
    """``gemm_min_work`` and ``gemm_min_work_f32`` (the multiply-adds of one product from which
    auto takes the packed GEMM, per dtype, set where the BLAS kernel is narrower than the host or by
    a tuned profile): the fast path and the full path pick the same impl on either side of each
    dtype's own threshold and give the same result."""
    module = sys.modules["fastla.matmul"]
    monkeypatch.setitem(module.AUTO_RULE, "gemm_min_work", f64_threshold)
    monkeypatch.setitem(module.AUTO_RULE, "gemm_min_work_f32", f32_threshold)
    ran = _spy_on_matmul_impls(monkeypatch, module)
    cases = [  # one GEMM of 64 x 32 x 64 multiply-adds; a stack of 2 such; 2 folded into one
        (rng.standard_normal((64, 32)), rng.standard_normal((32, 64))),
        (rng.standard_normal((2, 64, 32)), rng.standard_normal((2, 32, 64))),
        (rng.standard_normal((2, 32, 32)), rng.standard_normal((32, 64))),
        # too thin (63 rows): BLAS at any threshold, one product or a stack
        (rng.standard_normal((63, 64)), rng.standard_normal((64, 64))),
        (rng.standard_normal((2, 63, 64)), rng.standard_normal((2, 64, 64))),
    ]
    for a, b in cases:
        for dtype, threshold, key in (
            (np.float32, f32_threshold, "gemm_min_work_f32"),
            (np.float64, f64_threshold, "gemm_min_work"),
        ):
            x, y = a.astype(dtype), b.astype(dtype)
            ran.clear()
            fastla.matmul(x, y)
            name, reason = fastla.explain("matmul", x, y)
            # the fast path's calls (the full path calls the registered impl): a stack times one
            # matrix takes it only to NumPy, under auto
            assert ran == ([name] if x.ndim == y.ndim or name == "numpy" else []), (x.shape, y.shape, reason)
            thin = x.shape[-2] == 63
            assert name == ("numba" if threshold <= 65536 and not thin else "numpy"), reason
            assert ("too thin" in reason) == thin and f"{key}={threshold}" in reason
            _same(lambda be, x=x, y=y: fastla.matmul(x, y, backend=be))


def test_the_fast_paths_learnt_verdicts_follow_every_change_of_the_rule(monkeypatch):
    """The fast path keeps its rule's verdict per shape (``_VERDICTS``) with the version of
    ``AUTO_RULE`` it was taken under: a change of the rule (a profile's, a test's) is seen at the
    next call of a shape already decided, in both directions, for stacks and 2-D products."""
    module = sys.modules["fastla.matmul"]
    monkeypatch.setattr(fastla._first_use, "WAIT_FOR_BREAK_EVEN", False)
    ran = _spy_on_matmul_impls(monkeypatch, module)
    stack = rng.standard_normal((20, 4, 4))
    square = rng.standard_normal((128, 128))
    for x, key, takes, leaves in (
        (stack, "small_min_batch", 8, 10**6),
        (square, "gemm_min_work", 1, module.NEVER),
    ):
        for value, name in ((leaves, "numpy"), (takes, "numba"), (leaves, "numpy")):
            monkeypatch.setitem(module.AUTO_RULE, key, value)
            for _ in range(2):  # the second call from the learnt verdict
                ran.clear()
                fastla.matmul(x, x)
                assert ran == [name] and fastla.explain("matmul", x, x)[0] == name, (x.shape, key, value)
    assert any(shape[:4] == (4, 4, 4, 20) for shape in module._VERDICTS)


def test_rules_count_every_change():
    """``fastla._profile.Rules``, every op's ``AUTO_RULE`` type where a verdict is cached: each
    mutator bumps ``version``; reads do not; it is still a dict to every caller."""
    rules = fastla._profile.Rules({"a": 1, "b": 2})
    assert rules == {"a": 1, "b": 2} and isinstance(rules, dict) and rules.version == 0
    _ = rules["a"], rules.get("b"), dict(rules), list(rules.items())
    assert rules.version == 0
    changes = (
        lambda r: r.__setitem__("a", 3),
        lambda r: r.__delitem__("a"),
        lambda r: r.update(c=4),
        lambda r: r.pop("c"),
        lambda r: r.setdefault("d", 5),
        lambda r: r.__ior__({"e": 6}),
        lambda r: r.popitem(),
        lambda r: r.clear(),
    )
    for i, change in enumerate(changes, 1):
        change(rules)
        assert rules.version >= i, change
    assert rules == {} and type(sys.modules["fastla.matmul"].AUTO_RULE) is fastla._profile.Rules


def test_a_stack_whose_a_must_be_copied_goes_to_the_kernels_only_where_rows_fit_a_vector(monkeypatch):
    """The stack kernels read C-contiguous operands, so a non-contiguous ``a`` (transposed,
    Fortran-ordered) would be copied, while BLAS reads a transposed ``a`` in place: ``auto`` keeps
    the kernels for such an ``a`` only where a product's rows fit one small-product vector
    (``_copied_a_stays``), and a non-contiguous ``b`` does not matter; the fast path and the full
    path agree, and explain names the layout where it decided."""
    module = sys.modules["fastla.matmul"]
    # the stack rules' sizes pass whatever a profile (or the JIT off) set them to; a size's kernel
    # not compiled yet does not wait for its break-even (tests/test_first_use.py)
    monkeypatch.setitem(module.AUTO_RULE, "small_min_batch", 64)
    monkeypatch.setitem(module.AUTO_RULE, "packed_stack_min_work", 1)
    monkeypatch.setattr(fastla._first_use, "WAIT_FOR_BREAK_EVEN", False)
    ran = _spy_on_matmul_impls(monkeypatch, module)
    vector = sys.modules["fastla._gemm_kernels"].SMALL_VECTOR_BYTES
    for side, dtype, batch in ((4, np.float64, 80), (8, np.float64, 80), (8, np.float32, 80),
                               (16, np.float32, 40), (48, np.float64, 8)):  # fmt: skip
        x = rng.standard_normal((batch, side, side)).astype(dtype)
        y = rng.standard_normal((batch, side, side)).astype(dtype)
        assert fastla.explain("matmul", x, y)[0] == "numba", (x.shape, dtype)  # the stack rules' own
        stays = side * np.dtype(dtype).itemsize <= vector
        for a, b, copied in ((x.mT, y, True), (np.asfortranarray(x), y, True), (x, y.mT, False)):
            ran.clear()
            fastla.matmul(a, b)
            name, reason = fastla.explain("matmul", a, b)
            assert ran == [name], (x.shape, dtype, reason)
            assert name == ("numpy" if copied and not stays else "numba"), (x.shape, dtype, reason)
            assert ("not C-contiguous" in reason) == (name == "numpy"), reason
        _same(lambda be, a=x.mT, b=y: fastla.matmul(a, b, backend=be))


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD", "unknown"])
def test_the_shipped_packed_stack_threshold_follows_the_vendor(monkeypatch, vendor):
    """Intel hosts ship the crossover an Intel Xeon measured (INTEL_STACK_MIN_WORK), others Zen 4's;
    with the JIT off no stack is worth compiling."""
    from fastla import _host, _jit

    module = sys.modules["fastla.matmul"]
    monkeypatch.setattr(_host, "cpu_vendor", lambda: vendor)
    want = module.INTEL_STACK_MIN_WORK if vendor == "GenuineIntel" else 393_216
    assert module._shipped_stack_min_work() == (want if _jit.JIT_ENABLED else module.NEVER)
    assert module.INTEL_STACK_MIN_WORK == module.stack_work(56, 56, 56, 8, 8)


@pytest.mark.parametrize("threshold", [1, 3 * 2**19, 10**12])
def test_the_packed_stack_threshold_decides_the_fast_path_as_explain_says(monkeypatch, threshold):
    """``packed_stack_min_work``: a stack of at least ``STACK_MIN_PRODUCTS`` products whose every
    side is in ``PACKED_STACK_SIDES`` for their dtype, and whose work (multiply-adds, a float32
    one counting half) reaches the threshold, runs the packed products' loop; shorter stacks,
    less work and products with a side outside the range go to NumPy; the fast path and the full
    path agree."""
    module = sys.modules["fastla.matmul"]
    monkeypatch.setitem(module.AUTO_RULE, "packed_stack_min_work", threshold)
    least = module.STACK_MIN_PRODUCTS
    lo, hi = module.PACKED_STACK_SIDES[np.dtype(np.float64)]
    lo32, hi32 = module.PACKED_STACK_SIDES[np.dtype(np.float32)]
    assert lo < lo32  # float32's range starts higher
    ran = _spy_on_matmul_impls(monkeypatch, module)
    # an odd number of rows: never whole blocks of wide tiles (those: the test below)
    for batch, m, k, n, dtype, inside in (
        (least, lo + 1, lo + 1, hi, np.float64, True),
        (least - 1, lo + 1, lo + 1, hi, np.float64, True),  # enough work, too few products
        (least, hi - 1, lo, lo, np.float64, True),
        (least, lo - 1, lo, lo, np.float64, False),
        (least, lo + 1, lo, hi + 1, np.float64, False),
        (least, lo32 + 1, lo32, hi32, np.float32, True),
        (least, lo + 1, lo, lo, np.float32, False),
        (least, lo32 + 1, lo32, hi32 + 1, np.float32, False),
        # the same shape in both dtypes: float32's work counts half (2.06 M and 1.06 M multiply-adds
        # here, on either side of the middle threshold)
        (least, lo32 - 1, lo32, lo32, np.float64, True),
        (least, lo32 + 1, lo32, lo32, np.float32, True),
    ):
        x = rng.standard_normal((batch, m, k)).astype(dtype)
        y = rng.standard_normal((batch, k, n)).astype(dtype)
        work = batch * m * k * n * np.dtype(dtype).itemsize // 8
        assert work == module.stack_work(m, k, n, batch, np.dtype(dtype).itemsize)
        ran.clear()
        fastla.matmul(x, y)
        name, reason = fastla.explain("matmul", x, y)
        assert ran == [name], (x.shape, y.shape, reason)
        assert name == ("numba" if inside and batch >= least and work >= threshold else "numpy"), reason
        assert ("packed products" in reason) == inside, reason
        assert (f"{work} multiply-adds in the stack" in reason) == (inside and batch >= least), reason
        _same(lambda be, x=x, y=y: fastla.matmul(x, y, backend=be))


@pytest.mark.parametrize("threshold", [1, 10**12])
def test_stacks_in_wide_tiles_follow_the_packed_stack_threshold(monkeypatch, threshold):
    """Stacks of 32x32 and 48x48 products (whole wide tiles, the last columns of 48 in a half-width
    one where the tile is 32 wide, on AVX2 and AVX-512 hosts, in both dtypes) run the compiled
    kernel under ``auto`` from ``packed_stack_min_work``, as explain says (its reason names the
    wide tiles); rows or columns that are not whole tiles (33 rows, 36 float32 columns) stay with
    NumPy, and so does a stack shorter than ``STACK_MIN_PRODUCTS``."""
    module = sys.modules["fastla.matmul"]
    if not fastla._gemm_kernels.WIDE_TILE:
        pytest.skip("no wide tile on this target")
    monkeypatch.setitem(module.AUTO_RULE, "packed_stack_min_work", threshold)
    least = module.STACK_MIN_PRODUCTS
    ran = _spy_on_matmul_impls(monkeypatch, module)
    for batch, m, k, n, dtype, wide in (
        (least, 32, 32, 32, np.float64, True),
        (least, 32, 17, 32, np.float32, True),
        (least, 48, 48, 48, np.float32, True),
        (least - 1, 32, 32, 32, np.float64, False),
        (least, 33, 32, 32, np.float64, False),
        (least, 32, 32, 36, np.float32, False),
    ):
        x = rng.standard_normal((batch, m, k)).astype(dtype)
        y = rng.standard_normal((batch, k, n)).astype(dtype)
        ran.clear()
        fastla.matmul(x, y)
        name, reason = fastla.explain("matmul", x, y)
        assert ran == [name], (x.shape, y.shape, reason)
        assert name == ("numba" if wide and threshold == 1 else "numpy"), reason
        assert ("wide register tiles" in reason) == (wide and threshold == 1), reason
        _same(lambda be, x=x, y=y: fastla.matmul(x, y, backend=be))


def _same_results(call):
    """``call(backend)`` under auto (fast path eligible) and with the fast paths closed (the full
    path) agree (:func:`_agree`)."""
    _agree(lambda: call(None), lambda: _full_path(call, "auto"))


def _lu_matrices():
    a = rng.standard_normal((6, 6)) + 6 * np.eye(6)
    nan = a.copy()
    nan[2, 3] = np.nan
    singular = a.copy()
    singular[:, 4] = 0.0
    return {
        "one": a,
        "large": rng.standard_normal((80, 80)),
        "one-by-one": np.array([[2.0]]),
        "nan": nan,
        "singular": singular,
        "rectangular": rng.standard_normal((3, 5)),
        "empty": np.zeros((0, 0)),
    }


@pytest.mark.parametrize("case", sorted(_lu_matrices()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "readonly"])
@pytest.mark.parametrize("check_finite", [True, False])
def test_lu_factor_fast_path_is_the_full_path(case, dtype, layout, check_finite):
    """One square float matrix under auto takes lu_factor's fast path (LAPACK's getrf as SciPy calls
    it): the full path's factors, errors and singular-matrix warning; overwrite_a as a permission."""
    if case == "nan" and not check_finite:
        pytest.skip("getrf of a NaN matrix: LAPACK's arbitrary factors")
    a = _lu_matrices()[case].astype(dtype)
    _same_results(lambda be: fastla.lu_factor(variant(a, layout), check_finite=check_finite, backend=be))
    for overwrite in (False, True):
        _same_results(lambda be, o=overwrite: fastla.lu_factor(a.copy(order="F"), o, backend=be))


def _lu_systems():
    a = rng.standard_normal((6, 6)) + 6 * np.eye(6)
    lu, piv = fastla.lu_factor(a, backend="numpy")
    outside = piv.copy()
    outside[3] = 6
    inf = rng.standard_normal(6)
    inf[1] = np.inf
    return {
        "vector": ((lu, piv), rng.standard_normal(6)),
        "columns": ((lu, piv), rng.standard_normal((6, 3))),
        "no-columns": ((lu, piv), np.zeros((6, 0))),
        "int64-piv": ((lu, piv.astype(np.int64)), rng.standard_normal(6)),
        "float-piv": ((lu, piv.astype(np.float64)), rng.standard_normal(6)),
        "piv-outside": ((lu, outside), rng.standard_normal(6)),
        "negative-piv": ((lu, -piv - 1), rng.standard_normal(6)),
        "short-piv": ((lu, piv[:5]), rng.standard_normal(6)),
        "short-b": ((lu, piv), rng.standard_normal(5)),
        "inf-b": ((lu, piv), inf),
        "list-pair": ([lu, piv], rng.standard_normal(6)),
        "b-stack": ((lu, piv), rng.standard_normal((2, 6, 1))),
    }


@pytest.mark.parametrize("case", sorted(_lu_systems()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans", [0, 1, 2])
def test_lu_solve_fast_path_is_the_full_path(case, dtype, trans):
    """lu_factor's (lu, piv) of one float matrix and a b of its dtype under auto take lu_solve's fast
    path (LAPACK's getrs as SciPy calls it): the full path's solution and errors (piv's range, b's
    shape and finiteness), other dtypes and shapes the full path itself."""
    (lu, piv), b = _lu_systems()[case]
    lu_piv = (lu.astype(dtype), piv)
    for bb in (b.astype(dtype), b.astype(np.float64 if dtype == np.float32 else np.float32)):
        _same_results(lambda be, bb=bb: fastla.lu_solve(lu_piv, bb, trans=trans, backend=be))
        _same_results(lambda be, bb=bb: fastla.lu_solve(lu_piv, bb.copy(), trans, True, backend=be))


def test_lu_fast_paths_run_what_explain_names(monkeypatch):
    lu_module = sys.modules["fastla.lu"]
    ran = []
    for attr in ("_lu_factor_numpy", "_lu_solve_numpy"):
        original = getattr(lu_module, attr)
        monkeypatch.setattr(
            lu_module, attr, lambda *a, _o=original, _n=attr, **k: ran.append(_n) or _o(*a, **k)
        )
    a = rng.standard_normal((5, 5)) + 5 * np.eye(5)
    assert fastla.explain("lu_factor", a)[0] == "numpy"
    lu_piv = fastla.lu_factor(a)
    assert fastla.explain("lu_solve", lu_piv, np.ones(5))[0] == "numpy"
    fastla.lu_solve(lu_piv, np.ones(5))
    assert ran == ["_lu_factor_numpy", "_lu_solve_numpy"]
    monkeypatch.setitem(lu_module.AUTO_RULE, "large_numba", True)  # the rule's other choice: no fast path
    ran.clear()
    fastla.lu_solve(fastla.lu_factor(a), np.ones(5))
    assert ran == [] and fastla.explain("lu_factor", a)[0] == "numba"


def _ce_cases():
    x = rng.standard_normal((6, 5))
    t = rng.integers(0, 5, 6)
    ignored = t.copy()
    ignored[[1, 4]] = -100
    return {
        "index": (x, t, {}),
        "int32-index": (x, t.astype(np.int32), {}),
        "uint8-index": (x, t.astype(np.uint8), {}),
        "ignored": (x, ignored, {}),
        "all-ignored": (x, np.full(6, -100), {}),
        "ignore-7": (x, np.where(t == 2, 7, t), {"ignore_index": 7}),
        "out-of-range": (x, np.where(t == 2, 5, t), {}),
        "negative": (x, np.where(t == 2, -1, t), {}),
        "axis-1": (x, t, {"axis": 1}),
        "axis-0": (x.T.copy(), t, {"axis": 0}),
        "smoothing": (x, t, {"label_smoothing": 0.1}),
        "int-smoothing": (x, t, {"label_smoothing": 0}),
        "weight": (x, t, {"weight": np.arange(1.0, 6.0)}),
        "probabilities": (x, np.full((6, 5), 0.2), {}),
        "short-target": (x, t[:5], {}),
        "no-rows": (x[:0], t[:0], {}),
        "no-classes": (x[:, :0], np.full(6, -100), {}),
        "bad-reduction": (x, t, {"reduction": "avg"}),
    }


@pytest.mark.parametrize("case", sorted(_ce_cases()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("layout", ["C", "F", "readonly"])
def test_cross_entropy_fast_path_is_the_full_path(case, dtype, reduction, layout):
    x, t, kw = _ce_cases()[case]
    kw = {"reduction": reduction, **kw}
    if "weight" in kw:
        kw["weight"] = kw["weight"].astype(dtype)
    x = variant(x.astype(dtype), layout)
    _same(lambda be: fastla.cross_entropy(x, t, backend=be, **kw))


def _attention_cases():
    def f(*shape):
        return rng.standard_normal(shape)

    q4, k4, v4 = f(1, 2, 5, 8), f(1, 2, 7, 8), f(1, 2, 7, 3)
    return {
        "3d": ((f(2, 5, 8), f(2, 7, 8), f(2, 7, 8)), {}),
        "4d-value-width": ((q4, k4, v4), {}),
        "2d": ((f(5, 8), f(7, 8), f(7, 8)), {}),
        "causal": ((q4, k4, v4), {"is_causal": True}),
        "decode": ((f(2, 1, 16), f(2, 300, 16), f(2, 300, 16)), {}),
        "large": ((f(2, 64, 16), f(2, 80, 16), f(2, 80, 16)), {"is_causal": True}),
        "no-keys": ((q4, k4[:, :, :0], v4[:, :, :0]), {}),
        "no-rows": ((q4[:, :, :0], k4, v4), {}),
        "zero-width": ((q4[..., :0], k4[..., :0], v4), {}),
        "broadcast-lead": ((f(2, 1, 5, 8), f(1, 3, 7, 8), f(1, 3, 7, 8)), {}),
        "key-mismatch": ((q4, f(1, 2, 7, 9), v4), {}),
        "value-mismatch": ((q4, k4, f(1, 2, 6, 3)), {}),
        "mask": ((q4, k4, v4), {"attn_mask": f(5, 7) > 0}),
        "scale": ((q4, k4, v4), {"scale": 0.5}),
        "dropout": ((q4, k4, v4), {"dropout_p": 0.5}),
        "int-dropout": ((q4, k4, v4), {"dropout_p": 0}),
        "weights": ((q4, k4, v4), {"return_weights": True}),
    }


@pytest.mark.parametrize("case", sorted(_attention_cases()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "readonly"])
def test_attention_fast_path_is_the_full_path(case, dtype, layout):
    """Query, key and value of one float dtype and one leading shape, no mask, default options but
    is_causal take the fast path's plain arguments: the full path's result, rule and errors."""
    (q, k, v), kw = _attention_cases()[case]
    q, k, v = (variant(x.astype(dtype), layout) for x in (q, k, v))
    _same(lambda be: fastla.scaled_dot_product_attention(q, k, v, backend=be, **kw))


def _cosine_cases():
    x, y = rng.standard_normal((6, 5)), rng.standard_normal((9, 5))
    x[2] = 0.0  # a zero row: scores 0
    big = rng.standard_normal((130, 64))  # past the compiled kernels' work thresholds (130^2 x 64)
    return {
        "pair": (x, y),
        "self": (x, None),
        "same-object": (x, x),
        "large": (big, rng.standard_normal((130, 64))),
        "large-self": (big, None),
        "vector-query": (x[0], y),
        "mismatch": (x, y[:, :4]),
        "no-rows": (x[:0], y),
        "no-columns": (x[:, :0], y[:, :0]),
        "extreme-rows": (x * 1e200, y),
        "nan-row": (np.where(np.arange(5) == 1, np.nan, x), y),
    }


@pytest.mark.parametrize(
    "case",
    # (the large cases run the compiled kernels: 3.4 s each as Python, so not in the JIT-off run)
    [
        pytest.param(c, marks=pytest.mark.slow) if c.startswith("large") else c
        for c in sorted(_cosine_cases())
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("layout", ["C", "F", "readonly", "byteswapped"])
def test_cosine_fast_paths_are_the_full_path(case, dtype, layout):
    """cosine_similarity and cosine_topk on plain arrays of one float dtype (queries 1-D or 2-D),
    default options: the fast paths' impl, result and errors are the full path's."""
    x, y = _cosine_cases()[case]
    with np.errstate(over="ignore", invalid="ignore"):
        x = variant(x.astype(dtype), layout)
        y = None if y is None else y if y is x else variant(y.astype(dtype), layout)
    if case == "same-object":
        y = x
    if x.ndim == 2:
        _same(lambda be: fastla.cosine_similarity(x, y, backend=be))
    corpus = x if y is None else y
    for k in (0, 3, corpus.shape[0], corpus.shape[0] + 1, np.int64(2), True, 2.0):
        _same(lambda be, k=k: fastla.cosine_topk(x, corpus, k, backend=be))


def test_the_cosine_fast_paths_run_what_explain_names(monkeypatch):
    similarity = sys.modules["fastla.similarity"]
    ran = []
    for attr in ("_matrix_numpy", "_matrix_numba", "_topk_numpy", "_topk_numba"):
        original = getattr(similarity, attr)

        def spy(*args, _name=attr, _original=original, **kwargs):
            ran.append(_name.split("_")[-1])
            return _original(*args, **kwargs)

        monkeypatch.setattr(similarity, attr, spy)
    small, large = rng.standard_normal((6, 5)), rng.standard_normal((130, 64))
    for x, auto in ((small, "numpy"), (large, "numba")):
        for backend in (None, "numba"):
            ran.clear()
            fastla.cosine_similarity(x, x, backend=backend)
            fastla.cosine_topk(x[:16], x, 3, backend=backend)
            want = [fastla.explain("cosine_similarity", x, x, backend=backend)[0]]
            want.append(fastla.explain("cosine_topk", x[:16], x, 3, backend=backend)[0])
            assert ran == want == [auto if backend is None else "numba"] * 2, (x.shape, backend)
    # top-k's work counts a shallow product's scores as TOPK_SELECT_DEPTH deep: 10 queries of 1 and
    # of 16 dimensions over 300 corpus rows at a threshold of exactly their work, and one above it
    depth = similarity.TOPK_SELECT_DEPTH
    for d in (1, 16):
        q, c = rng.standard_normal((10, d)), rng.standard_normal((300, d))
        for threshold, auto in ((10 * 300 * depth, "numba"), (10 * 300 * depth + 1, "numpy")):
            monkeypatch.setitem(similarity.AUTO_RULE, "topk_min_work", threshold)
            ran.clear()
            fastla.cosine_topk(q, c, 3)
            assert ran == [fastla.explain("cosine_topk", q, c, 3)[0]] == [auto], (d, threshold)
    # the matrix's work threshold is n * m * d, whatever the host's shipped value: 20 x 20 rows of 64
    # at a threshold of exactly their work, and one above it
    mid = rng.standard_normal((20, 64))
    for threshold, auto in ((20 * 20 * 64, "numba"), (20 * 20 * 64 + 1, "numpy")):
        monkeypatch.setitem(similarity.AUTO_RULE, "matrix_min_work", threshold)
        ran.clear()
        fastla.cosine_similarity(mid, mid)
        assert ran == [fastla.explain("cosine_similarity", mid, mid)[0]] == [auto], threshold


@pytest.mark.skipif(not fastla._jit.JIT_ENABLED, reason="the direct call exists for compiled kernels only")
def test_auto_reaches_the_small_product_kernels_directly_once_they_ran(monkeypatch):
    """A stack auto gives to the small-product kernels: once a call of that shape has run them
    through the registry's path (first use, ``_matmul_numba``), later calls reach them directly
    (``_stack_product``), with the registry path's results, on one thread or on the call's share;
    an operand that is not C-contiguous, or an ``out=``, keeps the registry's path (its copies)."""
    module = sys.modules["fastla.matmul"]
    ran = _spy_on_matmul_impls(monkeypatch, module, by_name=True)
    # 4x4 (one thread), 8x8 past SMALL_SERIAL_WORK (the call's share), 2x8 @ 8x8, wide 64x32 @ 32x64;
    # 6x6, the per-size kernel, below the bound and past it
    cases = ((300, 4, 4, 4), (3000, 8, 8, 8), (1200, 2, 8, 8), (300, 64, 32, 64))
    cases += ((300, 6, 6, 6), (3000, 6, 6, 6))
    for batch, m, k, n in cases:
        for dtype in (np.float32, np.float64):
            kind = module._stack_kernel(m, k, n, np.dtype(dtype).itemsize)
            assert kind == ("fixed" if m == 6 else "small")
            x = rng.standard_normal((batch, m, k)).astype(dtype)
            y = rng.standard_normal((batch, k, n)).astype(dtype)
            expected = fastla.matmul(x, y, backend="numba")  # the registry's path: it runs them
            name, reason = fastla.explain("matmul", x, y)
            assert name == "numba", reason
            for _ in range(3):
                first = (m, k, n, np.dtype(dtype)) not in module._LEAN_STACKS  # (the shape's, any length)
                ran.clear()
                got = fastla.matmul(x, y)
                assert ran == (["_matmul_numba"] if first else ["_stack_product"])
                assert (m, k, n, np.dtype(dtype)) in module._LEAN_STACKS
                np.testing.assert_array_equal(got, expected)
                tol = 1e-4 if dtype == np.float32 else 1e-12
                np.testing.assert_allclose(got, np.matmul(x, y), rtol=tol, atol=tol)
            for a, b in ((x.transpose(0, 2, 1).copy().transpose(0, 2, 1), y), (x, np.asfortranarray(y))):
                ran.clear()
                np.testing.assert_allclose(fastla.matmul(a, b), expected, rtol=tol, atol=tol)
                assert "_stack_product" not in ran  # (the rule may give such a stack to NumPy)
            ran.clear()
            out = np.empty_like(expected)
            fastla.matmul(x, y, out=out)
            assert "_stack_product" not in ran
            np.testing.assert_array_equal(out, expected)
