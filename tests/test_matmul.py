"""fastla.matmul: every registry impl against NumPy over the shared input matrix of tests/helpers.py."""

import math
import sys

import numpy as np
import pytest

import fastla
from fastla import _gemm_kernels
from tests.helpers import ODD_SIZES, assert_matmul_close, impl_names, variant

SHAPES = [(0, 0, 0), (1, 1, 1), (0, 3, 2), (3, 0, 2), (2, 3, 0)] + [
    (m, k, n) for m, k, n in zip(ODD_SIZES, ODD_SIZES[::-1], ODD_SIZES[1:] + ODD_SIZES[:1], strict=False)
]


@pytest.mark.parametrize("name", impl_names("matmul"))
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_shapes_all_impls(m, k, n, name, dtype, rng):
    if name == "loop" and m * k * n > 40**3:
        pytest.skip("the pure-Python loop on a large product")
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = fastla.implementations("matmul")[name](a, b)
    assert c.dtype == dtype, name
    assert_matmul_close(c, a, b, dtype)
    if name == "numba":  # small 2-D products take the stack kernel: the packed GEMM itself too
        assert_matmul_close(_gemm_kernels.gemm(a, b), a, b, dtype)


def _edge_sizes():
    blk = _gemm_kernels.BLOCKING[np.dtype(np.float64)]
    return sorted({blk.MR - 1, blk.MR + 1, blk.NR - 1, blk.NR + 1, blk.KC - 1, blk.KC + 1})


@pytest.mark.slow
@pytest.mark.parametrize("edge", _edge_sizes())
def test_block_edges(edge, dtype, rng):
    """Sizes one off the register tile and the KC block, in every position (m, k and n)."""
    for m, k, n in ((edge, 19, 23), (19, edge, 23), (19, 23, edge)):
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        assert_matmul_close(fastla.matmul(a, b, backend="numba"), a, b, dtype)
        assert_matmul_close(_gemm_kernels.gemm(a, b), a, b, dtype)  # whatever fastla.matmul picks


@pytest.mark.parametrize("rows", ["few", "small_b", "packed"])
def test_narrow_last_panels(rows, dtype, rng):
    """A last panel of B as wide as the narrow kernel's tile (read where the full panels are: B in
    place, or its packed copy), narrower or wider (the narrow kernel or the whole tile on its packed
    copy, through the scratch tile), with B read in place (few rows of A, or more and a B within
    SMALL_B_BYTES) or packed (a Fortran-ordered B: its rows are not contiguous, so never read in
    place); two depth blocks, edge rows."""
    blk = _gemm_kernels.BLOCKING[np.dtype(dtype)]
    m = blk.DIRECT_M - 1 if rows == "few" else blk.DIRECT_M + 7
    k = blk.KC + 3
    for n in (
        blk.NARROW_NR,
        max(1, blk.NARROW_NR - 3),  # SSE's float64 NARROW_NR is 2
        blk.NR + blk.NARROW_NR,
        blk.NR + blk.NARROW_NR + 1,
        2 * blk.NR - 1,
    ):
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        if rows == "packed":
            b = np.asfortranarray(b)
        assert_matmul_close(_gemm_kernels.gemm(a, b), a, b, dtype)
        assert_matmul_close(_gemm_kernels.gemm(a, b, threads=1), a, b, dtype)


@pytest.mark.slow
def test_mc_edge_and_several_blocks(rng):
    """More rows than one MC block, and more than one KC step: the parallel ic loop and C updates."""
    blk = _gemm_kernels.BLOCKING[np.dtype(np.float64)]
    for m in (blk.MC - 1, blk.MC + 1, 2 * blk.MC + 5, 5 * blk.MC + 7):  # the last: 3 blocks a thread
        a = rng.standard_normal((m, blk.KC + 3))
        b = rng.standard_normal((blk.KC + 3, 45))
        assert_matmul_close(fastla.matmul(a, b, backend="numba"), a, b, np.float64)


@pytest.mark.parametrize("threads", [1, 2])
def test_stack_of_packed_products(threads, dtype, rng):
    """Stacks of products past the small-product kernels, split into a run of products per thread:
    every product of an uneven split, transposed and sliced operands, edge tiles of every size."""
    n0 = fastla.get_num_threads()
    fastla.set_num_threads(min(threads, n0))
    try:
        # first a depth below the width: a result row laid out at the wrong stride then stays in the
        # stack's memory and fails the comparison, where past it (k > n) it corrupted the heap
        for batch, m, k, n in ((5, 37, 65, 70), (7, 49, 50, 33), (4, 64, 64, 64)):
            a = rng.standard_normal((batch, m, k)).astype(dtype)
            b = rng.standard_normal((batch, n, k)).astype(dtype).transpose(0, 2, 1)
            for x, y in ((a, b), (a[::-1, :, ::2], b[:, ::2])):
                c = fastla.matmul(x, y, backend="numba")
                for t in range(len(c)):
                    assert_matmul_close(c[t], x[t], y[t], dtype)
    finally:
        fastla.set_num_threads(n0)


@pytest.mark.parametrize("side", [3, 4, 33])  # the unrolled, the small-product, the packed kernel
def test_stacks_copied_to_c_order_run_by_runs_of_products(side, dtype, rng, monkeypatch):
    """A stack operand that is not C-contiguous (transposed, Fortran-ordered, broadcast, reversed) is
    copied into the thread's scratch a run of products at a time (``STACK_COPY_BYTES``): every
    product of an uneven last run is right, the inputs are untouched, and a second call's result
    does not share the scratch with the first's."""
    module = sys.modules["fastla.matmul"]
    kinds = {3: "fixed", 4: "small", 33: "packed"}
    assert module._stack_kernel(side, side, side, np.dtype(dtype).itemsize) == kinds[side]
    product = side * side * np.dtype(dtype).itemsize
    monkeypatch.setattr(module, "STACK_COPY_BYTES", 3 * product)  # runs of 3 products
    monkeypatch.setattr(_gemm_kernels._WORKSPACES, "by_dtype", {})  # this thread's, none kept yet
    batch = 10  # three runs of 3 and one of 1
    a = rng.standard_normal((batch, side, side)).astype(dtype)
    b = rng.standard_normal((batch, side, side)).astype(dtype)
    for x, y in (
        (a.mT, b),
        (a, b.mT),
        (np.asfortranarray(a), np.asfortranarray(b)),
        (a, np.broadcast_to(b[0], b.shape)),
        (a[::-1], b.mT[::-1]),
    ):
        x0, y0 = x.copy(), y.copy()
        c = fastla.matmul(x, y, backend="numba")
        again = fastla.matmul(y, x, backend="numba")
        assert_matmul_close(c, x, y, dtype)
        assert_matmul_close(again, y, x, dtype)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)
    # the runs were copied into the thread's kept scratch, which the next call reuses (a copy
    # allocated per call is what glibc handed back to the system: STACK_COPY_BYTES)
    kept = _gemm_kernels._WORKSPACES.by_dtype
    scratch = {p: kept[(p, np.dtype(dtype))] for p in ("stack a", "stack b")}
    fastla.matmul(a.mT, b.mT, backend="numba")
    assert all(kept[(p, np.dtype(dtype))] is scratch[p] for p in scratch)


def test_python_threads_multiplying_at_once_each_pack_into_their_own_workspace(rng):
    """Python threads inside the packed GEMM at once (a thread pool, Dask's threaded scheduler) get
    the products they would get alone: each packs into its own kept workspace."""
    import threading

    pairs = [(rng.standard_normal((150, 130)), rng.standard_normal((130, 170))) for _ in range(4)]
    stack = (rng.standard_normal((6, 60, 50)), rng.standard_normal((6, 50, 70)))
    alone = [fastla.matmul(a, b, backend="numba") for a, b in pairs]
    stack_alone = fastla.matmul(*stack, backend="numba")
    barrier = threading.Barrier(len(pairs), timeout=60)
    wrong = []

    def work(i):
        barrier.wait()
        for _ in range(10):
            if not np.array_equal(fastla.matmul(*pairs[i], backend="numba"), alone[i]):
                wrong.append(i)
            if not np.array_equal(fastla.matmul(*stack, backend="numba"), stack_alone):
                wrong.append(-1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


@pytest.mark.parametrize("threads", [1, 2])
def test_packed_gemm_packs_into_this_threads_workspace(threads, dtype, rng):
    """The packed operands go into the calling thread's kept scratch, not into fresh memory each
    call (whose page faults made mid-size products up to 1.6x slower), and the result is the same."""
    a = rng.standard_normal((40, 30)).astype(dtype)
    b = rng.standard_normal((30, 20)).astype(dtype)
    _gemm_kernels.gemm(a, b, threads=threads)
    work = _gemm_kernels.workspace(dtype, 1)
    assert work.ctypes.data % 64 == 0
    work[:] = np.nan
    assert_matmul_close(_gemm_kernels.gemm(a, b, threads=threads), a, b, dtype)
    assert _gemm_kernels.workspace(dtype, 1) is work
    assert not np.isnan(work).all(), "the product packed its operands somewhere else"


@pytest.mark.slow
def test_several_passes_over_b_panels(dtype, rng):
    """More columns than one pass of the macro-kernel's row loop takes (JB panels of NR), the last
    pass short and ending in an edge panel, over two KC steps and an edge row tile."""
    blk = _gemm_kernels.BLOCKING[np.dtype(dtype)]
    m, k, n = 2 * blk.MR + 1, blk.KC + 3, 2 * blk.JB * blk.NR + blk.NR + 5
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    assert_matmul_close(_gemm_kernels.gemm(a, b), a, b, dtype)
    assert_matmul_close(fastla.matmul(a, b, backend="numba"), a, b, dtype)


@pytest.mark.parametrize("layout_b", ["C", "F", "negstride"])
def test_layouts(layout, layout_b, dtype, rng):
    a0 = rng.standard_normal((23, 17)).astype(dtype)
    b0 = rng.standard_normal((17, 29)).astype(dtype)
    a, b = variant(a0, layout), variant(b0, layout_b)
    a_copy, b_copy = a.copy(), b.copy()
    for name in impl_names("matmul", 29):
        c = fastla.matmul(a, b, backend=name)
        assert c.dtype == dtype
        assert_matmul_close(c, a0, b0, dtype)
    if a.dtype.isnative and b.dtype.isnative:  # the packed GEMM reads any strides (native dtypes)
        assert_matmul_close(_gemm_kernels.gemm(a, b), a0, b0, dtype)
    np.testing.assert_array_equal(a, a_copy)  # inputs never modified
    np.testing.assert_array_equal(b, b_copy)


def test_transposed_views(rng):
    a = rng.standard_normal((31, 19))
    for name in impl_names("matmul", 31):
        assert_matmul_close(fastla.matmul(a.T, a, backend=name), a.T, a, np.float64)
        assert_matmul_close(fastla.matmul(a, a.T, backend=name), a, a.T, np.float64)
    assert_matmul_close(_gemm_kernels.gemm(a.T, a), a.T, a, np.float64)
    assert_matmul_close(_gemm_kernels.gemm(a, a.T), a, a.T, np.float64)


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((5,), (5,)),
        ((5,), (5, 3)),
        ((4, 5), (5,)),
        ((2, 4, 5), (5, 3)),
        ((2, 4, 5), (2, 5, 3)),
        ((4, 5), (3, 5, 2)),
        ((2, 1, 4, 5), (3, 5, 2)),
        ((7,), (2, 7, 3)),
        ((2, 3, 7), (7,)),
        ((0, 4, 5), (5, 3)),
        ((200, 4, 4), (200, 4, 4)),
        ((50, 8, 3), (1, 3, 8)),
        ((30, 2, 5), (30, 5, 8)),  # vector tiles: single rows, whole vectors of columns
        # an empty m, k or n inside a stack (a reshape by -1 cannot tell the stack's size there)
        ((0, 3), (2, 3, 3)),
        ((2, 3, 3), (3, 0)),
        ((2, 3, 0), (0, 3)),
        ((3, 3), (2, 3, 0)),
        ((2, 1, 3, 3), (0, 3, 3)),
        # past the small-product kernels: one packed product per thread at a time
        ((3, 40, 37), (3, 37, 45)),
        ((4, 32, 31), (4, 31, 32)),  # float64 from 32, float32 past it
        ((1, 40, 33), (3, 33, 41)),  # a broadcast operand
        ((1, 50, 35), (1, 35, 70)),  # fewer products than threads
        ((2, 40, 0), (2, 0, 36)),
    ],
)
def test_stacks_and_1d(sa, sb, dtype, rng):
    a = rng.standard_normal(sa).astype(dtype)
    b = rng.standard_normal(sb).astype(dtype)
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    for name in impl_names("matmul", 0 if np.prod(sa) * np.prod(sb) < 4000 else 99):
        c = fastla.matmul(a, b, backend=name)
        assert np.shape(c) == ref.shape, name
        np.testing.assert_allclose(c, ref, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-5)
        out = np.full(ref.shape, 7.0, dtype)
        assert fastla.matmul(a, b, out=out, backend=name) is out, name
        np.testing.assert_allclose(out, ref, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-5)
    if len(sa) == len(sb) == 1:
        assert np.isscalar(fastla.matmul(a, b, backend="numba"))


def test_small_stack_uses_numba_under_auto(rng, monkeypatch):
    # the size rule alone: a size whose kernel is not compiled yet waits for the break-even first
    # (tests/test_first_use.py)
    monkeypatch.setattr(fastla._first_use, "WAIT_FOR_BREAK_EVEN", False)
    a = rng.standard_normal((1000, 4, 4))
    assert fastla.explain("matmul", a, a)[0] == "numba"
    assert fastla.explain("matmul", a[:10], a[:10])[0] == "numpy"  # too short a stack to pay off
    np.testing.assert_allclose(fastla.matmul(a, a), a @ a, rtol=1e-12)
    # the stack length from which it pays shrinks as the products' work grows, by its fourth root:
    # small_min_batch 4x4 products (or products of less work), fewer larger ones
    rule = sys.modules["fastla.matmul"].AUTO_RULE  # (fastla.matmul is the function)
    compiled = "numba" if fastla._jit.NUMBA_AVAILABLE else "numpy"
    # whatever the stacked products' work threshold (a tuned one may be low), products no side of
    # which passes small_max_dim are the small-stack rule's
    monkeypatch.setitem(rule, "packed_stack_min_work", 1)
    monkeypatch.setitem(rule, "small_min_batch", 256)
    vector = sys.modules["fastla.matmul"].VECTOR_STACK_FACTOR  # a row or a column: as many again
    for (m, k, n), least in (
        ((4, 4, 4), 256),
        ((3, 3, 2), 256),  # less work than 4x4: as many
        ((8, 8, 8), 153),  # 256 * (64 / 512) ** (1 / 4) = 152.2
        ((16, 16, 16), 91),  # 256 * (64 / 4096) ** (1 / 4) = 90.5
        ((16, 1, 16), 182),  # 256 * (64 / 256) ** (1 / 4) = 181.02
        ((1, 10, 4), 256 * vector),  # one row, less work than 4x4
        ((16, 16, 1), math.ceil(256 * vector * (64 / 256) ** (1 / 4))),  # one column (724.08)
        ((1, 5, 1), 256 * sys.modules["fastla.matmul"].DOT_STACK_FACTOR),  # dot products: NumPy's loop
    ):
        for batch, want in ((least, compiled), (least - 1, "numpy")):
            x, y = np.ones((batch, m, k)), np.ones((batch, k, n))
            assert fastla.explain("matmul", x, y)[0] == want, (batch, m, k, n)


def test_mixed_precision_promotes(rng):
    a = rng.standard_normal((6, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4))
    for name in impl_names("matmul", 6):
        c = fastla.matmul(a, b, backend=name)
        assert c.dtype == np.float64
        assert_matmul_close(c, a, b, np.float64)


def test_out_argument(dtype, rng):
    a = rng.standard_normal((8, 5)).astype(dtype)
    b = rng.standard_normal((5, 6)).astype(dtype)
    for name in impl_names("matmul", 8):
        out = np.full((8, 6), np.nan, dtype=dtype)
        r = fastla.matmul(a, b, out=out, backend=name)
        assert r is out
        assert_matmul_close(out, a, b, dtype)
        out64 = np.empty((8, 6))  # same-kind cast float32 -> float64 allowed
        fastla.matmul(a, b, out=out64, backend=name)
        assert_matmul_close(out64, a, b, dtype)
        outf = np.empty((6, 8), dtype=dtype).T  # non-contiguous out
        fastla.matmul(a, b, out=outf, backend=name)
        assert_matmul_close(outf, a, b, dtype)


def test_out_in_a_ufuncs_other_forms(dtype, rng):
    """``out`` as np.matmul takes it beyond the result's exact shape: loop dimensions of its own (the
    product written into every item, a 2-D product into a stack, a stack of products into a larger
    stack), a one-array tuple; a tuple of any other length is NumPy's ValueError. Every impl: a
    forced compiled backend raised "non-broadcastable output operand" for the first, a TypeError for
    the second."""
    a = rng.standard_normal((8, 5)).astype(dtype)
    b = rng.standard_normal((5, 6)).astype(dtype)
    sa = rng.standard_normal((1, 3, 8, 5)).astype(dtype)
    for name in impl_names("matmul", 8):
        for x, y, shape in ((a, b, (3, 8, 6)), (a, b[:, 0], (2, 8)), (sa, b, (2, 3, 8, 6))):
            out = np.full(shape, np.nan, dtype)
            assert fastla.matmul(x, y, out=out, backend=name) is out, name
            expected = np.broadcast_to(np.matmul(x.astype(np.float64), y.astype(np.float64)), shape)
            tol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(out, expected, rtol=tol, atol=tol, err_msg=name)
        out = np.full((8, 6), np.nan, dtype)
        assert fastla.matmul(a, b, out=(out,), backend=name) is out, name
        assert_matmul_close(out, a, b, dtype)
        for bad in ((out, out), ()):
            with pytest.raises(ValueError, match="one entry per ufunc output"):
                fastla.matmul(a, b, out=bad, backend=name)
        with pytest.raises(ValueError, match=r"non-broadcastable output operand|mismatch in its core dim"):
            fastla.matmul(a, b, out=np.empty((3, 8, 5), dtype), backend=name)


def test_out_aliasing_input(rng):
    a = rng.standard_normal((6, 6))
    expected = a @ a
    for name in impl_names("matmul", 6):
        x = a.copy()
        fastla.matmul(x, x, out=x, backend=name)
        np.testing.assert_allclose(x, expected, rtol=1e-12)


@pytest.mark.parametrize("name", impl_names("matmul"))
def test_bad_input(name):
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 3\)"):
        fastla.matmul(np.ones((2, 3)), np.ones((2, 3)), backend=name)
    with pytest.raises(ValueError, match="dimensions"):
        fastla.matmul(np.float64(1.0), np.ones(3), backend=name)
    with pytest.raises(ValueError, match="broadcast"):
        fastla.matmul(np.ones((2, 2, 3)), np.ones((3, 3, 2)), backend=name)
    # mistyped and misshaped: NumPy resolves the loop first, so its TypeError (not the shape's error)
    for a, b in ((np.ones((3, 3)), np.array([["a"]])), (np.array([["a", "b"]]), np.ones((3, 3)))):
        with pytest.raises(TypeError, match="did not contain a loop"):
            fastla.matmul(a, b, backend=name)
    with pytest.raises(ValueError, match="mismatch"):  # object arrays have a loop: the shape's error
        fastla.matmul(np.ones((3, 3), object), np.ones((2, 2)), backend=name)
    # NumPy's wording (the numpy impl and auto raise NumPy's own error)
    with pytest.raises(ValueError, match=r"non-broadcastable output operand|mismatch in its core dim"):
        fastla.matmul(np.ones((2, 3)), np.ones((3, 2)), out=np.empty((3, 3)), backend=name)
    with pytest.raises(TypeError, match=r"Cannot cast ufunc 'matmul' output from dtype\('float64'\)"):
        fastla.matmul(np.ones((2, 3)), np.ones((3, 2)), out=np.empty((2, 2), np.int64), backend=name)
    readonly = np.empty((2, 2))
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="output array is read-only"):
        fastla.matmul(np.ones((2, 3)), np.ones((3, 2)), out=readonly, backend=name)
    with pytest.raises(TypeError, match="ArrayType"):
        fastla.matmul(np.ones((2, 3)), np.ones((3, 2)), out=[[0.0, 0.0], [0.0, 0.0]], backend=name)


@pytest.mark.parametrize("dt", [np.int64, np.int8, np.bool_, np.complex128, np.float16, np.uint32, object])
def test_uncompiled_dtypes_follow_numpy_exactly(dt):
    a = (np.arange(12).reshape(3, 4) % 3).astype(dt)
    b = (np.arange(8).reshape(4, 2) % 2).astype(dt)
    c = fastla.matmul(a, b)
    expected = np.matmul(a, b)
    assert c.dtype == expected.dtype
    np.testing.assert_array_equal(c, expected)
    assert fastla.explain("matmul", a, b)[0] == "numpy"
    with pytest.raises(TypeError, match="not compiled"):
        fastla.matmul(a, b, backend="numba")


class Tagged(np.ndarray):
    """A user's ndarray subclass: NumPy keeps the subclass through matmul, so must we."""


def test_subclass_goes_to_numpy():
    m = np.array([[1.0, 2.0], [3.0, 4.0]]).view(Tagged)
    assert fastla.explain("matmul", m, m)[0] == "numpy"
    r = fastla.matmul(m, m)
    assert type(r) is Tagged
    np.testing.assert_array_equal(r, np.asarray(m) @ np.asarray(m))


def test_nan_inf_propagate_like_numpy(dtype):
    a = np.arange(1, 50, dtype=dtype).reshape(7, 7)
    a[1, 2] = np.nan
    a[3, 3] = np.inf
    a[5, 0] = -np.inf
    b = np.eye(7, dtype=dtype)
    b[2, 6] = 2.0
    # NumPy's ufunc machinery warns on inf*0 (FP flags); the compiled kernels do not check flags.
    with np.errstate(invalid="ignore"):
        ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    for name in impl_names("matmul", 7):
        with np.errstate(invalid="ignore"):
            c = fastla.matmul(a, b, backend=name)
        np.testing.assert_array_equal(np.isnan(c), np.isnan(ref), err_msg=name)
        np.testing.assert_array_equal(np.isinf(c), np.isinf(ref), err_msg=name)


@pytest.mark.parametrize("name", impl_names("matmul"))
def test_k_zero_gives_zeros(name, dtype):
    c = fastla.matmul(np.ones((3, 0), dtype=dtype), np.ones((0, 4), dtype=dtype), backend=name)
    np.testing.assert_array_equal(c, np.zeros((3, 4)))


def test_lists_accepted():
    assert fastla.matmul([[1.0, 2.0]], [[3.0], [4.0]]).tolist() == [[11.0]]


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_large_float32_error_scaled_by_k(threads, rng):
    n0 = fastla.get_num_threads()
    fastla.set_num_threads(min(threads, n0))
    try:
        a = rng.standard_normal((300, 1100)).astype(np.float32)
        b = rng.standard_normal((1100, 333)).astype(np.float32)
        assert_matmul_close(fastla.matmul(a, b, backend="numba"), a, b, np.float32)
    finally:
        fastla.set_num_threads(n0)


def _wide_shapes(dtype):
    """(m, k, n) products around the host's wide tile (_gemm_kernels.WIDE_TILE): whole tiles (one,
    several, with depths 1 to past a tile's width, the last columns in a half-width tile) and near
    misses (a row or a column short of a whole block, rows a multiple of half a tile's rows), whose
    stacks must take the other kernels."""
    rows = _gemm_kernels.WIDE_TILE[0]
    lanes = _gemm_kernels.wide_lanes(np.dtype(dtype).itemsize)
    half = lanes // 2
    fit = [
        (rows, 1, lanes),
        (rows, 7, lanes),
        (2 * rows, 33, lanes),
        (rows, 5, 2 * lanes),
        (3 * rows, 16, 3 * lanes),
        (rows, 3, half),
        (2 * rows, 5, lanes + half),
        (rows, 9, 2 * lanes + half),
    ]
    miss = [
        (rows + rows // 2, 9, lanes),
        (rows, 9, lanes + half // 2),
        (rows - 1, 9, lanes),
        (2 * rows, 9, lanes - 1),
        (rows, 9, half + 2),
    ]
    return fit, miss


@pytest.mark.skipif(not _gemm_kernels.WIDE_TILE, reason="no wide tile on this target")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stacks_of_whole_wide_tiles_and_near_misses(dtype, rng):
    """The stack kernel's wide tiles (wide_stack_task): every row block and column block
    of products that split into whole tiles, any depth; products that do not (a partial row block
    or column block) take the other tiles; each on one thread and on every thread."""
    from fastla import _jit

    fit, miss = _wide_shapes(dtype)
    for m, k, n in fit + miss:
        assert _gemm_kernels.wide_tiles_fit(m, k, n, np.dtype(dtype).itemsize) == ((m, k, n) in fit)
        a = rng.standard_normal((5, m, k)).astype(dtype)
        b = rng.standard_normal((5, k, n)).astype(dtype)
        for threads in (1, _jit.max_threads()):
            c = np.full((5, m, n), np.nan, dtype)
            _gemm_kernels.small_stack(a, b, c, threads=threads)
            assert_matmul_close(c, a, b, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("side", [16, 32, 48, 64])
def test_matmul_of_mid_size_stacks(dtype, side, rng):
    """Stacks of 16x16 to 64x64 products (wide tiles where they split into whole ones, per-size,
    small or packed kernels elsewhere) through every impl, and a stack of one: NumPy's results."""
    a = rng.standard_normal((6, side, side)).astype(dtype)
    b = rng.standard_normal((6, side, side)).astype(dtype)
    for name in impl_names("matmul", 99):
        assert_matmul_close(fastla.matmul(a, b, backend=name), a, b, dtype)
        assert_matmul_close(fastla.matmul(a[:1], b[:1], backend=name), a[:1], b[:1], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 4, 4, 4), (5, 3, 5, 8), (1025, 8, 8, 8)])
def test_small_stack_splits_the_stack_across_threads(dtype, shape, rng):
    """The small-product stack's task kernel: every product written, whatever the split (one
    thread, two, up to the stack's length, uneven runs), and the default thread choice (one below
    SMALL_SERIAL_WORK, the call's share above: 1025 8x8 products in either dtype)."""
    from fastla import _jit

    s, m, k, n = shape
    a = rng.standard_normal((s, m, k)).astype(dtype)
    b = rng.standard_normal((s, k, n)).astype(dtype)
    for threads in (1, min(2, _jit.max_threads()), _jit.max_threads(), None):
        c = np.full((s, m, n), np.nan, dtype)
        _gemm_kernels.small_stack(a, b, c, threads=threads)
        assert_matmul_close(c, a, b, dtype)
