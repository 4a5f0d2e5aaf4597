"""The hand-written LLVM intrinsics against their plain-Python twins (ARCHITECTURE.md, "Numba
discipline")."""

import numpy as np
import pytest

import fastla
from fastla import _gemm_kernels as gk
from fastla import _host, _intrinsics, _jit

needs_jit = pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs numba with JIT enabled")


@_jit.jit
def _bitcasts(i, j):
    return _intrinsics.i64_as_f64(i), _intrinsics.i32_as_f32(j)


def test_bitcast_intrinsics_match_twins():
    for i, j in [(1023 << 52, 127 << 23), (0, 0), (-1, -1), (0x7FF0000000000000, 0x7F800000)]:
        got = _bitcasts(i, j)
        want = (_intrinsics._i64_as_f64_twin(i), _intrinsics._i32_as_f32_twin(j))
        for g, w in zip(got, want, strict=True):
            assert g == w or (np.isnan(g) and np.isnan(w))
    assert _bitcasts(1023 << 52, 127 << 23) == (1.0, 1.0)


@_jit.jit
def _widened(bits, x):
    out = np.empty(bits.size, np.float32)
    for i in range(bits.size):
        out[i] = _intrinsics.widen(bits[i])
    return out, _intrinsics.widen(x)


def test_widen_matches_twin_and_numpy():
    """``widen`` reads float16 bits (uint16) as float32 exactly, every one of the 65 536 (inf, NaN,
    subnormals, -0), and leaves a float as it is; the twin (the JIT-off path) agrees."""
    bits = np.arange(2**16, dtype=np.uint16)
    want = bits.view(np.float16).astype(np.float32)
    got, same = _widened(bits, 2.5)
    np.testing.assert_array_equal(got.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])
    assert np.array_equal(np.isnan(got), np.isnan(want)) and same == 2.5
    for b in bits[::97]:
        w = _intrinsics._widen_twin(b)
        assert type(w) is np.float32 and (w == want[b] or (np.isnan(w) and np.isnan(want[b])))
    assert _intrinsics._widen_twin(np.float32(1.5)) == 1.5


@_jit.jit
def _allocated(n, like):
    a = _intrinsics.empty(n, like.dtype)
    b = _intrinsics.empty((n, 3), np.int64)
    for i in range(n):
        a[i] = i
        for j in range(3):
            b[i, j] = 3 * i + j
    return a, b


def test_empty_allocates_as_np_empty():
    """``empty`` (compiled code's allocation without ``np.empty``'s implementation): the shape,
    dtype and C order ``np.empty`` gives, memory of its own per call, and NumPy's error for a
    negative length; the twin is ``np.empty``."""
    like = np.ones(2, np.float32)
    a, b = _allocated(5, like)
    assert (a.dtype, a.shape, b.dtype, b.shape) == (np.float32, (5,), np.int64, (5, 3))
    assert a.flags.c_contiguous and b.flags.c_contiguous and a.flags.writeable
    np.testing.assert_array_equal(a, np.arange(5))
    np.testing.assert_array_equal(b, np.arange(15).reshape(5, 3))
    a2, _ = _allocated(5, like)
    assert not np.shares_memory(a, a2) and _allocated(0, like)[0].shape == (0,)
    with pytest.raises(ValueError, match="negative dimensions"):
        _allocated(-1, like)
    assert _intrinsics._empty_twin((2, 3), np.float32).dtype == np.float32


@_jit.jit
def _masks(a, thr):
    n = a.size - _intrinsics.MASK_LANES + 1
    masks = np.empty(n, np.uint64)
    lowest = np.full(n, -1, np.int64)
    for s in range(n):
        masks[s] = _intrinsics.above_mask(a, s, thr)
        if masks[s] != 0:
            lowest[s] = _intrinsics.lowest_bit(masks[s])
    return masks, lowest


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_above_mask_and_lowest_bit_match_twins(dtype, rng):
    """``above_mask``: bit t set exactly where ``a[start + t] > thr`` (NaN never; the threshold in
    the array's precision), at every start, the top bit (lane 63) too; ``lowest_bit`` its lowest
    set bit. The twins (the JIT-off path) agree."""
    lanes = _intrinsics.MASK_LANES
    a = rng.standard_normal(3 * lanes).astype(dtype)
    a[[5, 70, 130]] = np.nan
    a[[9, 100]] = [np.inf, -np.inf]
    a[lanes - 1] = 3.0  # lane 63 of the first mask
    for thr in (0.5, -np.inf, np.inf, a[20]):
        masks, lowest = _masks(a, dtype(thr))
        for s in range(0, len(masks), 7):
            want = sum(1 << t for t in range(lanes) if a[s + t] > dtype(thr))
            assert int(masks[s]) == want == int(_intrinsics._above_mask_twin(a, s, dtype(thr)))
            if want:
                assert lowest[s] == (want & -want).bit_length() - 1 == _intrinsics._lowest_bit_twin(masks[s])
    assert int(_masks(a, dtype(2.5))[0][0]) >> (lanes - 1) == 1


@_jit.jit
def _scale_rows(x, col):
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            x[i, j] = x[i, j] * (i + 1) + col[j]


@_jit.jit
def _through_borrowed(x, col):
    _scale_rows(_intrinsics.borrow(x), _intrinsics.borrow(col))  # an out-of-line call
    return x


@needs_jit
@pytest.mark.parametrize("view", ["whole", "strided", "transposed"])
def test_borrowed_views_reach_the_same_elements(view, rng):
    """A borrowed view has the array's data, shape and strides (only its owner is left out): writes
    through it from another compiled function land where NumPy puts them."""
    base = rng.integers(-50, 50, (6, 8)).astype(np.float64)  # exact, whether or not contracted
    x = {"whole": base, "strided": base[1::2, ::3], "transposed": base.T[::2]}[view]
    col = rng.integers(-50, 50, 8).astype(np.float64)[: x.shape[1]]
    want = x * np.arange(1, x.shape[0] + 1)[:, None] + col
    untouched = base.copy()
    got = _through_borrowed(x, col)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, want)
    mask = np.ones(base.shape, bool)
    mask[{"whole": np.s_[:, :], "strided": np.s_[1::2, ::3], "transposed": np.s_[:, ::2]}[view]] = False
    np.testing.assert_array_equal(base[mask], untouched[mask])  # nothing else written


@_jit.jit
def _call_microkernel(kc, ap, aoff, bp, boff, ldb, c, coff, ldc, load_c):
    gk.microkernel(kc, ap, aoff, bp, boff, ldb, c, coff, ldc, load_c)


@_jit.jit
def _call_narrow_kernel(kc, ap, aoff, bp, boff, ldb, c, coff, ldc, load_c):
    gk.narrow_kernel(kc, ap, aoff, bp, boff, ldb, c, coff, ldc, load_c)


@_jit.jit
def _call_edge_kernel(kc, ap, aoff, bp, boff, ldb, c, coff, ldc, load_c, stored):
    gk.edge_kernel(kc, ap, aoff, bp, boff, ldb, c, coff, ldc, load_c, stored)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kc", [0, 1, 5, 64])
@pytest.mark.parametrize("load_c", [True, False])
@pytest.mark.parametrize("ldb_extra", [0, 5])
@pytest.mark.parametrize("rows", [None, 1, 2, "narrow"], ids=["tile", "edge1", "edge2", "narrow"])
def test_microkernel_matches_twin(dtype, kc, load_c, ldb_extra, rows, rng):
    """Packed B (ldb = NR) and B read in place from a matrix with a longer row (ldb > NR); the MR x
    NR tile, the edge kernel's one or two rows (its second row read from the panel but not stored
    when ``stored`` is 1), and the narrow kernel's MR x NARROW_NR tile (nothing past its columns
    stored)."""
    blk = gk.BLOCKING[np.dtype(dtype)]
    mr, nr = blk.MR, blk.NARROW_NR if rows == "narrow" else blk.NR
    ldb = nr + ldb_extra
    ap = rng.standard_normal(3 + kc * mr).astype(dtype)
    bp = rng.standard_normal(5 + kc * ldb).astype(dtype)
    ldc = nr + 7
    c0 = rng.standard_normal(2 + mr * ldc).astype(dtype)
    c_ir, c_py = c0.copy(), c0.copy()
    if rows == "narrow":
        _call_narrow_kernel(kc, ap, 3, bp, 5, ldb, c_ir, 2, ldc, load_c)
        gk._narrow_kernel_twin(kc, ap, 3, bp, 5, ldb, c_py, 2, ldc, load_c)
        rows = None
    elif rows is None:
        _call_microkernel(kc, ap, 3, bp, 5, ldb, c_ir, 2, ldc, load_c)
        gk._microkernel_twin(kc, ap, 3, bp, 5, ldb, c_py, 2, ldc, load_c)
    else:
        _call_edge_kernel(kc, ap, 3, bp, 5, ldb, c_ir, 2, ldc, load_c, rows)
        gk._edge_kernel_twin(kc, ap, 3, bp, 5, ldb, c_py, 2, ldc, load_c, rows)
    stored = mr if rows is None else rows
    # the two sum kc products in different orders (FMA vs BLAS): an absolute floor for entries that
    # cancel to near zero
    f32 = dtype == np.float32
    tol = 1e-5 if f32 else 1e-13
    np.testing.assert_allclose(c_ir, c_py, rtol=tol, atol=tol * (1 + kc))
    tile = ap[3 : 3 + kc * mr].reshape(kc, mr).T[:stored] @ bp[5 : 5 + kc * ldb].reshape(kc, ldb)[:, :nr]
    expect = c0[2 : 2 + stored * ldc].reshape(stored, ldc)[:, :nr] * load_c + tile
    got = c_ir[2 : 2 + stored * ldc].reshape(stored, ldc)[:, :nr]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
    # outside the tile's stored rows nothing moved
    mask = np.ones_like(c0, dtype=bool)
    for i in range(stored):
        mask[2 + i * ldc : 2 + i * ldc + nr] = False
    np.testing.assert_array_equal(c_ir[mask], c0[mask])


_FULL_ROWS, _FULL_ROW = gk._TILES[False]
_MASKED_ROWS, _MASKED_ROW = gk._TILES[True]


@_jit.jit
def _call_tiles(a, b, c, i0, j0, cols, masked):
    if masked:
        _MASKED_ROWS(a, b, c, i0, j0, cols)
        _MASKED_ROW(a, b, c, i0 + gk.SMALL_TILE_ROWS, j0, cols)
    else:
        _FULL_ROWS(a, b, c, i0, j0, cols)
        _FULL_ROW(a, b, c, i0 + gk.SMALL_TILE_ROWS, j0, cols)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [0, 1, 6])
@pytest.mark.parametrize("masked", [False, True])
def test_small_tiles_match_twins(dtype, k, masked, rng):
    """A tile of SMALL_TILE_ROWS rows and one of a single row at (i0, j0), all W columns or (masked)
    fewer; A read through a strided view; C outside the tiles untouched."""
    w = gk.SMALL_VECTOR_BYTES // np.dtype(dtype).itemsize
    cols = w - 3 if masked else w
    rows = gk.SMALL_TILE_ROWS + 1
    a = rng.standard_normal((rows + 2, 2 * k)).astype(dtype)[:, ::2]
    b = rng.standard_normal((k, w + 5)).astype(dtype)
    c0 = rng.standard_normal((rows + 3, w + 5)).astype(dtype)
    c_ir, c_py = c0.copy(), c0.copy()
    _call_tiles(a, b, c_ir, 1, 2, cols, masked)
    twin_rows, twin_row = gk._small_tile_twin(gk.SMALL_TILE_ROWS), gk._small_tile_twin(1)
    twin_rows(a, b, c_py, 1, 2, cols)
    twin_row(a, b, c_py, 1 + gk.SMALL_TILE_ROWS, 2, cols)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(c_ir, c_py, rtol=tol, atol=tol * (1 + k))
    np.testing.assert_allclose(
        c_ir[1 : 1 + rows, 2 : 2 + cols], a[1 : 1 + rows] @ b[:, 2 : 2 + cols], rtol=1e-4, atol=1e-4
    )
    outside = np.ones(c0.shape, dtype=bool)
    outside[1 : 1 + rows, 2 : 2 + cols] = False
    np.testing.assert_array_equal(c_ir[outside], c0[outside])


def _flat_parts(block):
    """A 2-D view as the packers address it: the flat array of the memory it views (a view, in
    its owner's order), the element offset of ``block[0, 0]`` in it, and the row and column strides
    in elements."""
    base = block
    while base.base is not None:
        base = base.base
    flat = base.reshape(-1, order="A")
    assert np.shares_memory(flat, base)  # a view: the offset below is into the same memory
    item = block.itemsize
    at = (block.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // item
    rs, cs = (st // item for st in block.strides)
    return flat, at, rs, cs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F", "strided"])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("shape", ["tail panel", "whole blocks", "block tails"])
def test_pack_rows_lays_out_micro_panels(dtype, order, scaled, shape, rng):
    """``pack_rows`` (the GEMM's A packing, attention's keys and values) of a row-major (whole
    panels in blocks of v depth steps, ``pack_row_block``, and the steps past them one by one), a
    column-major (unit row stride: a vector per depth step, ``pack_col_panel``) and a strided block
    (element by element; the other two must match it bit for bit): ``alpha`` times the row
    scale times the element, in MR-tall micro-panels ``[panel, depth, row]``, zero past the last
    row, the rest of the output untouched (a last panel of whole blocks ends at the output's end:
    its last stores must not spill)."""
    mr, v = gk.BLOCKING[np.dtype(dtype)].MR, gk.row_block_steps(dtype)
    mc, kc = {"tail panel": (2 * mr + 3, 7), "whole blocks": (2 * mr, 2 * v), "block tails": (mr, v + 3)}[
        shape
    ]
    off = 5
    x = rng.standard_normal((mc + 4, 2 * kc + 3)).astype(dtype)
    block = {"C": x, "F": np.asfortranarray(x), "strided": x[:, ::2]}[order][2 : 2 + mc, 1 : 1 + kc]
    flat, at, rs, cs = _flat_parts(block)
    row_scale = (rng.random(mc + 3) + 0.5).astype(dtype) if scaled else np.empty(0, dtype)
    panels = -(-mc // mr)
    out = np.full(off + panels * kc * mr + 2 * v, 7.0, dtype)
    gk.pack_rows(flat, at, rs, cs, mc, kc, dtype(-1.5), row_scale, 3, out, off)
    want = -1.5 * block * (row_scale[3 : 3 + mc, None] if scaled else 1)
    padded = np.zeros((panels * mr, kc), dtype)
    padded[:mc] = want
    got = out[off : off + panels * kc * mr].reshape(panels, kc, mr)
    np.testing.assert_allclose(got, padded.reshape(panels, mr, kc).transpose(0, 2, 1), rtol=1e-6)
    assert np.all(out[:off] == 7) and np.all(out[off + panels * kc * mr :] == 7)
    # the same values as the element-by-element loop packs them from a strided copy, bit for bit
    spread = np.zeros((mc, 2 * kc), dtype)
    spread[:, ::2] = block
    flat_s, at_s, rs_s, cs_s = _flat_parts(spread[:, ::2])
    loop = np.full_like(out, 7.0)
    gk.pack_rows(flat_s, at_s, rs_s, cs_s, mc, kc, dtype(-1.5), row_scale, 3, loop, off)
    np.testing.assert_array_equal(out.view(f"u{out.itemsize}"), loop.view(f"u{out.itemsize}"))


@_jit.jit
def _pack_both(half, wide, p0, kc, j0, cols, col_scale, out_half, out_wide):
    gk.pack_b_half_panel(half, p0, kc, j0, cols, col_scale, out_half, 3)
    gk.pack_b_panel(wide, p0, kc, j0, cols, col_scale, out_wide, 3)


@pytest.mark.parametrize("layout", ["columns", "rows", "strided"])
@pytest.mark.parametrize("scaled", [False, True])
def test_half_panels_are_the_float32_panels_of_the_widened_matrix(layout, scaled, rng):
    """``pack_b_half_panel`` (the float16 top-k corpus: whole v x v blocks widened in registers by
    ``pack_half_block`` where columns are contiguous, element by element elsewhere and at the
    tails) writes bit for bit what ``pack_b_panel`` writes for the float32 matrix of the same values:
    every depth and column offset, tails of depth and of columns, scaled or not, infinities and NaN
    included, the rest of the output untouched."""
    nr = gk.BLOCKING[np.dtype(np.float32)].NR
    v = gk._block_lanes(np.float32)
    y16 = (rng.standard_normal((nr + 9, 3 * v + 7)) * 50).astype(np.float16)
    y16[3, 5], y16[4, 6], y16[5, 7] = np.inf, -np.inf, np.nan
    mat = {"columns": y16.T, "rows": np.ascontiguousarray(y16.T), "strided": y16.T[::2, :]}[layout]
    half = gk.operand(mat.view(np.uint16))
    wide = gk.operand(mat.astype(np.float32))
    col_scale = (rng.random(nr + 9) + 0.5).astype(np.float32) if scaled else np.empty(0, np.float32)
    for p0, kc, j0, cols in [(0, mat.shape[0], 0, nr), (1, 2 * v + 3, 2, nr - 3), (3, v - 1, 5, v + 1)]:
        kc, cols = min(kc, mat.shape[0] - p0), min(cols, mat.shape[1] - j0)
        out_half = np.full(3 + kc * nr + 4, 7.0, np.float32)
        out_wide = out_half.copy()
        _pack_both(half, wide, p0, kc, j0, cols, col_scale, out_half, out_wide)
        np.testing.assert_array_equal(out_half.view(np.uint32), out_wide.view(np.uint32))
        assert (out_half[:3] == 7).all() and (out_half[3 + kc * nr :] == 7).all()


@_jit.jit
def _pack_b_panel_of(flat, at, rs, cs, kc, cols, col_scale, j0, out, off):
    """``pack_b_panel`` of the ``kc x cols`` block whose element ``(p, j)`` is ``flat[at + p*rs +
    j*cs]``, as the block's columns ``j0 ...`` of an operand (so ``col_scale[j0 + j]`` scales them)."""
    b = gk.flat_operand(flat, at - j0 * cs, rs, cs, kc, j0 + cols)
    gk.pack_b_panel(b, 0, kc, j0, cols, col_scale, out, off)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["columns", "rows", "strided", "integers"])
@pytest.mark.parametrize("scaled", [False, True])
def test_pack_b_panel_lays_out_a_panel(dtype, layout, scaled, rng):
    """``pack_b_panel`` (the GEMM's B packing, the top-k corpus) of a block with
    contiguous columns (``B.T`` of a row-major matrix: whole v x v blocks by ``pack_block``, with
    a tail of columns and of depth), with contiguous rows, strided, and of integers (element by
    element, converted): exactly the element times its column's scale, NR wide, zero past the
    last column, the rest of the output untouched."""
    blk = gk.BLOCKING[np.dtype(dtype)]
    v = gk._block_lanes(dtype)
    kc, cols, off = 2 * v + 3, min(blk.NR, 2 * v + 5) if blk.NR > v else blk.NR, 6
    src_dtype = np.int64 if layout == "integers" else dtype
    y = rng.standard_normal((cols + 4, 3 * kc + 2)) * (100 if layout == "integers" else 1)
    y = y.astype(src_dtype)
    block = {
        "columns": y.T,
        "integers": y.T,
        "rows": np.ascontiguousarray(y.T),
        "strided": y.T[::2, :],
    }[layout][1 : 1 + kc, 2 : 2 + cols]
    flat, at, rs, cs = _flat_parts(block)
    assert (rs == 1) == (layout in ("columns", "integers"))
    col_scale = (rng.random(cols + 5) + 0.5).astype(dtype) if scaled else np.empty(0, dtype)
    out = np.full(off + kc * blk.NR + 4, 7.0, dtype)
    _pack_b_panel_of(flat, at, rs, cs, kc, cols, col_scale, 4, out, off)
    want = np.zeros((kc, blk.NR), dtype)
    if layout == "integers":  # as the scalar code: the integer (times the scale) in float64
        wide = block.astype(np.float64) * (col_scale[4 : 4 + cols].astype(np.float64) if scaled else 1)
        want[:, :cols] = wide.astype(dtype)
    else:
        want[:, :cols] = block * col_scale[4 : 4 + cols] if scaled else block
    np.testing.assert_array_equal(out[off : off + kc * blk.NR].reshape(kc, blk.NR), want)
    assert np.all(out[:off] == 7) and np.all(out[off + kc * blk.NR :] == 7)


@needs_jit
@pytest.mark.skipif("fma" not in _host.host_cpu()[1], reason="a target without FMA instructions (SSE only)")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_microkernel_asm_uses_vector_fma_without_spills(dtype):
    """The k loop must be packed FMAs on full-width registers with no stack traffic (no spills)."""
    import re

    from numba import njit

    blk = gk.BLOCKING[np.dtype(dtype)]
    nr = blk.NR

    @njit(cache=False)
    def f(kc, ap, bp, c):
        gk.microkernel(kc, ap, 0, bp, 0, nr, c, 0, 64, True)

    f(4, np.zeros(4 * blk.MR, dtype), np.zeros(4 * blk.NR, dtype), np.zeros(blk.MR * 64, dtype))
    asm = next(iter(f.inspect_asm().values())).splitlines()
    # the register the host has for the kernel's vectors (FASTLA_SIMD_BYTES may ask for more)
    reg = {64: "zmm", 32: "ymm"}.get(min(_host.simd_bytes(), _host.native_simd_bytes()), "xmm")
    suffix = "ps" if dtype == np.float32 else "pd"
    labels = {line.rstrip(":"): i for i, line in enumerate(asm) if line.startswith(".LBB")}
    loops = []
    for i, line in enumerate(asm):
        m = re.match(r"\s+j\w+\s+(\.LBB\w+)", line)
        if m and labels.get(m.group(1), i) < i:
            body = asm[labels[m.group(1)] : i + 1]
            if any("vfmadd" in x and suffix in x for x in body):
                loops.append(body)
    assert loops, "no FMA loop found"
    body = max(loops, key=len)
    assert sum(bool(re.search(rf"vfmadd\w*{suffix}\s+.*%{reg}", x)) for x in body) >= blk.MR * blk.NV
    assert not any("rsp" in x or "rbp" in x for x in body), "accumulators spill to the stack"
    # PREFETCH_C: each of the C tile's lines once before the loop (a row's 64-byte steps and its
    # last element; LLVM may merge two of one line); PREFETCH_B: one row of B's lines in the loop
    lines_per_row = len(set(range(0, nr, 64 // blk.itemsize)) | {nr - 1})
    at_least = nr * blk.itemsize // 64
    inside = sum(bool(re.match(r"\s+prefetch", x)) for x in body)
    outside = sum(bool(re.match(r"\s+prefetch", x)) for x in asm) - inside
    assert at_least <= inside <= lines_per_row if blk.PREFETCH_B else inside == 0
    assert blk.MR * at_least <= outside <= blk.MR * lines_per_row if blk.PREFETCH_C else outside == 0


def test_host_facts():
    assert _host.simd_bytes() in (16, 32, 64)
    caches = _host.cache_sizes()
    assert caches["L1"] > 0 and caches["L2"] >= caches["L1"]
    for blk in gk.BLOCKING.values():
        assert blk.NR % blk.W == 0 and blk.MC % blk.MR == 0


@pytest.mark.skipif(gk._SIMD < 64, reason="the vendor rule is AVX-512's (AVX2 bounds B by L2 alone)")
@pytest.mark.parametrize("l3_mib", [32, 480])
@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel"])
def test_in_place_bounds_follow_the_vendor_and_cap_a_socket_l3(monkeypatch, vendor, l3_mib):
    """AMD reads a B past L2 in place (up to an eighth of L3) for up to 512 rows; an Intel Xeon's
    mesh L3 lost that, so there B stays within half of L2 for up to 128 rows and an eighth of L2
    for taller A. An L3 as large as a server socket's counts as L3_COUNTED (its bounds were
    measured on 32 MiB ones): a 480 MiB one read a 60 MiB B in place."""
    mib = 2**20
    monkeypatch.setattr(_host, "cache_sizes", lambda: {"L1": 48 * 1024, "L2": 2 * mib, "L3": l3_mib * mib})
    monkeypatch.setattr(_host, "cpu_vendor", lambda: vendor)
    for name in ("DIRECT_BYTES", "SMALL_B_BYTES", "SMALL_B_M", "L2_B_BYTES"):
        monkeypatch.delenv("FASTLA_GEMM_" + name, raising=False)
    blk = gk.Blocking(8)
    assert gk.L3_COUNTED == 32 * mib
    assert blk.DIRECT_BYTES == 8 * mib
    if vendor == "AuthenticAMD":
        assert (blk.SMALL_B_BYTES, blk.SMALL_B_M, blk.L2_B_BYTES) == (4 * mib, 512, 2 * mib)
    else:
        assert (blk.SMALL_B_BYTES, blk.SMALL_B_M, blk.L2_B_BYTES) == (mib, 128, mib // 4)


@needs_jit
@pytest.mark.skipif(not _jit.CACHE, reason="on-disk cache off (a codegen override is set)")
def test_cache_stamp_covers_the_whole_package():
    """A kernel's cache must go stale when *another* fastla module it compiles in changes."""
    import sys

    lu = sys.modules["fastla.lu"]
    locator = lu._getrf._cache._impl._locator
    assert type(locator).__name__ == "PackageStampLocator"
    stamp = locator.get_source_stamp()
    assert stamp[1] == _jit.package_source_stamp()


def test_a_users_function_compiles_in_fastla_through_names_closures_and_calls():
    """What makes a user's cached function go stale with fastla's sources (see
    ``test_changed_source_recompiles_the_users_functions_that_compile_it_in``): a fastla module or
    object among the globals its code names, in nested code, in its closure, or in a jitted
    function it calls; nothing else."""
    from fastla import kernels

    k = kernels

    def attribute(x):
        return kernels.exp(x)

    def nested(x):
        return (lambda y: kernels.exp(y))(x)

    def closure(x):
        return k.exp(x)

    def plain(x):
        return np.exp(x) + 1.0

    class Dispatcher:  # what the walk reads of a Numba dispatcher the function calls
        py_func = staticmethod(attribute)

    calls = Dispatcher()

    def through(x):
        return calls(x)

    assert all(_jit._compiles_in_fastla(f) for f in (attribute, nested, closure, through))
    assert not _jit._compiles_in_fastla(plain)

    class Hostile:  # another library's global whose attribute reads raise
        def __getattr__(self, name):
            raise RuntimeError(name)

    hostile = Hostile()

    def unrelated(x):
        return hostile(x)

    with pytest.raises(RuntimeError):
        _jit._compiles_in_fastla(unrelated)
    assert _jit._user_function_compiles_in_fastla(unrelated) is False  # the hook never fails a compile


@_jit.jit(python_wrapper=False)
def _nan_block_task(a, alpha, row_scale, ap, bsrc, bp, c, scratch, sw, ib, slot):
    """Stand-in for ``gk.a_block_task`` with its signature: its C block is NaN."""
    i0 = ib * sw.mc
    for i in range(i0, min(sw.m, i0 + sw.mc)):
        for j in range(sw.nc):
            c[sw.coff + i * sw.ldc + j] = np.nan


@_jit.jit(python_wrapper=False)
def _nan_panel_task(b, pc, kc, jc, nc, col_scale, bp, jp, row):
    """Stand-in for ``gk.pack_b_task`` with its signature: a panel of NaN."""
    nr = gk.tile_nr(bp)
    for p in range(kc * nr):
        bp[jp * kc * nr + p] = np.nan


def _stand_in(entry, impl):
    """An object whose ``address(dtype)`` is ``entry``'s signature compiled from ``impl``."""

    class StandIn:
        @staticmethod
        def address(dtype):
            return entry.address(dtype, impl)

    return StandIn


@needs_jit
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("entry", ["A_BLOCK_TASK", "PACK_B_TASK"])
def test_gemm_callers_reach_its_tasks_through_their_addresses(dtype, entry, monkeypatch, rng):
    """Every caller of the packed GEMM runs its parallel tasks (row blocks of A, panels of B)
    through the addresses it is given (compiled once) rather than linked copies: a stand-in
    address must be the code that runs. A caller whose types differ from the compiled signature
    would silently link its own copy (slow to compile, serial) and fail here."""
    import fastla as fl

    impl = {"A_BLOCK_TASK": _nan_block_task, "PACK_B_TASK": _nan_panel_task}[entry]
    monkeypatch.setattr(gk, entry, _stand_in(getattr(gk, entry), impl))
    blk = gk.BLOCKING[np.dtype(dtype)]
    a = rng.standard_normal((max(blk.DIRECT_M, blk.SMALL_B_M) + 1, 30)).astype(dtype)
    b = rng.standard_normal((30, 50)).astype(dtype)
    # past SMALL_B_M rows and a B past L2: B packed
    deep = blk.L2_B_BYTES // (50 * np.dtype(dtype).itemsize) + 1
    tall = np.ones((len(a), deep), dtype)
    assert np.isnan(gk.gemm(tall, np.ones((deep, 50), dtype))).all()
    # few rows, a B up to SMALL_B_BYTES and up to SMALL_B_M rows, or a B within L2 and any rows:
    # B's full panels read in place, its narrower last panel packed by the task
    extra = min(5, blk.NR - 1)  # columns of the narrower last panel
    for rows in (blk.DIRECT_M, blk.SMALL_B_M, len(a)):
        few = gk.gemm(a[:rows], rng.standard_normal((30, blk.NR + extra)).astype(dtype))
        nans = np.isnan(few).sum(axis=1).tolist()
        assert nans == [few.shape[1] if entry == "A_BLOCK_TASK" else extra] * len(few)
    # a last panel exactly as wide as the narrow kernel's tile is read in place too: none packed
    few = gk.gemm(a[: blk.DIRECT_M], rng.standard_normal((30, blk.NR + blk.NARROW_NR)).astype(dtype))
    assert np.isnan(few).any() == (entry == "A_BLOCK_TASK")
    # ... unless B is larger than DIRECT_BYTES: then packed whole (whole panels: none left to pack)
    width = blk.NR * max(1, 64 // blk.NR)
    depth = blk.DIRECT_BYTES // (np.dtype(dtype).itemsize * width) + 1
    big = np.ones((depth, width), dtype)
    assert np.isnan(gk.gemm(np.ones((2, depth), dtype), big)).all()
    in_place = gk.gemm(np.ones((2, depth - 1), dtype), big[1:])
    assert np.isnan(in_place).any() == (entry == "A_BLOCK_TASK")
    # past DIRECT_M rows (up to SMALL_B_M), a B of up to SMALL_B_BYTES (past L2) is read in place too;
    # one row deeper, packed whole
    rows = blk.DIRECT_M + 1
    depth = blk.SMALL_B_BYTES // (np.dtype(dtype).itemsize * width)
    big = np.ones((depth + 1, width), dtype)
    assert np.isnan(gk.gemm(np.ones((rows, depth + 1), dtype), big)).all()
    in_place = gk.gemm(np.ones((rows, depth), dtype), big[1:])
    assert np.isnan(in_place).any() == (entry == "A_BLOCK_TASK")
    # past matmul's small-product sizes, its last panel of B one column wide (never NARROW_NR, which
    # is read in place): 70 columns left a last panel of two, NARROW_NR at SSE's float64 shapes
    wide = rng.standard_normal((50, blk.NR * (70 // blk.NR) + 1)).astype(dtype)
    assert np.isnan(fl.matmul(rng.standard_normal((60, 50)).astype(dtype), wide, backend="numba")).any()
    # odd widths (the stack's 41, LU's 301): B's last panel is narrower than NR, even at every tile,
    # so a task packs it
    stack = rng.standard_normal((3, 41, 50)).astype(dtype)  # past the small-product kernels
    assert np.isnan(fl.matmul(stack, stack.transpose(0, 2, 1), backend="numba")).any()
    assert np.isnan(fl.lu_factor(rng.standard_normal((301, 301)).astype(dtype), backend="numba")[0]).any()
    assert np.isnan(fl.cosine_similarity(a, backend="numba")).any()
    assert np.isnan(fl.cosine_similarity(a, b.T, backend="numba")).any()
    monkeypatch.undo()
    np.testing.assert_allclose(gk.gemm(a, b), a @ b, rtol=1e-4, atol=1e-4)


@_jit.jit(python_wrapper=False)
def _nan_topk_block_task(q, b, inv_q, alpha, t, scratch, pool, scores, index, j0, cols, th):
    """Stand-in for ``similarity._topk_block_task`` with its signature: NaN best lists."""
    if j0 + cols == b.cols:
        for i in range(th, scores.shape[0], t.threads):
            for j in range(scores.shape[1]):
                scores[i, j] = np.nan
                index[i, j] = j


@_jit.jit(python_wrapper=False)
def _nan_topk_pack_task(b, inv_c, bp, t, j0, cols, jp):
    """Stand-in for ``similarity._topk_pack_task`` with its signature: a tile of NaN."""
    for p in range(bp.size):
        bp[p] = np.nan


@needs_jit
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("entry", ["TOPK_BLOCK", "TOPK_PACK"])
def test_the_packed_topk_runs_its_tasks_through_their_addresses(dtype, entry, monkeypatch, rng):
    """The packed top-k's parallel loops run its task kernels (the corpus tile's panels, the threads'
    query blocks) through the addresses it is given: a stand-in address must be the code that runs."""
    import fastla as fl
    from fastla import similarity

    impl = {"TOPK_BLOCK": _nan_topk_block_task, "TOPK_PACK": _nan_topk_pack_task}[entry]
    monkeypatch.setattr(similarity, entry, _stand_in(getattr(similarity, entry), impl))
    a = rng.standard_normal((40, 30)).astype(dtype)
    b = rng.standard_normal((30, 50)).astype(dtype)
    monkeypatch.setitem(fl.similarity.AUTO_RULE, "topk_packed_min_queries", 0)  # the packed kernel
    assert np.isnan(fl.cosine_topk(a, b.T, k=3, backend="numba")[0]).any()


@_jit.jit
def _nan_gemm_into(a, b, dst, alpha, accumulate, row_scale, col_scale, tiles):
    """Stand-in for ``gk.gemm_into`` with its signature: C's block becomes NaN."""
    for i in range(a.rows):
        for j in range(b.cols):
            dst.c[dst.off + i * dst.ld + j] = np.nan


_NAN_GEMM_INTO = _jit.Entry(_nan_gemm_into, gk._gemm_into_examples)


@needs_jit
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_blocked_lu_reaches_the_gemm_through_its_address_and_only_when_it_needs_it(
    dtype, monkeypatch, rng
):
    """The LU's trailing updates call the GEMM driver through ``GEMM_INTO``'s address (a stand-in
    there must be what runs), and a factorisation of one panel (n <= NB) calls no GEMM, so that its
    first call compiles none."""
    import fastla as fl

    monkeypatch.setattr(gk, "GEMM_INTO", _NAN_GEMM_INTO)
    assert np.isnan(fl.lu_factor(rng.standard_normal((300, 300)).astype(dtype), backend="numba")[0]).any()
    small = rng.standard_normal((40, 40)).astype(dtype)
    lu, piv = fl.lu_factor(small, backend="numba")
    assert not np.isnan(lu).any()
    monkeypatch.undo()
    ref_lu, ref_piv = fl.lu_factor(small, backend="numpy")
    np.testing.assert_allclose(lu, ref_lu, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(piv, ref_piv)


@_jit.jit
def _nan_task(inp, ix, t, zero, out, stats, w, phase, task):
    """Stand-in for ``attention._flash_task`` with its signature: its output row block is NaN."""
    for e in range(out.shape[2]):
        out[0, 0, e] = np.nan


@_jit.jit
def _nan_weights_task(inp, ix, t, zero, out, stats, w, phase, task):
    """Stand-in for ``attention._weights_task`` with its signature."""
    for j in range(w.shape[2]):
        w[0, 0, j] = np.nan


@needs_jit
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_runs_its_tasks_through_their_addresses(dtype, monkeypatch, rng):
    """The attention passes call their per-task kernels through the entry addresses (with and
    without a mask, causal or not; the flash and weights passes, and the row pass of fewer query
    rows): stand-in addresses must be the code that runs."""
    import fastla as fl
    from fastla import attention

    monkeypatch.setattr(attention, "_flash_task", _nan_task)
    monkeypatch.setattr(attention, "_weights_task", _nan_weights_task)
    monkeypatch.setattr(attention, "_rows_task", _nan_task)
    L = attention.FEW_ROWS + 8
    q = rng.standard_normal((2, 3, L, 8)).astype(dtype)
    mask = rng.standard_normal((L, L)).astype(dtype)
    for kw in ({}, {"attn_mask": mask}, {"is_causal": True}):
        out, w = fl.scaled_dot_product_attention(q, q, q, backend="numba", return_weights=True, **kw)
        assert np.isnan(out[0, 0, 0]).all()
        assert np.isnan(w[0, 0, 0]).all()
        kw = {"attn_mask": mask[:3]} if "attn_mask" in kw else kw
        out = fl.scaled_dot_product_attention(q[:, :, :3], q, q, backend="numba", **kw)
        assert np.isnan(out[0, 0, 0]).all()


@_jit.jit(python_wrapper=False)
def _count_task(hits, owner, scale, task):
    """A task kernel for the parallel_tasks tests: counts its visit, records its thread."""
    hits[task] += scale
    owner[task] = _jit.thread_id()


@_jit.jit
def _count_task_any(hits, owner, scale, task):
    """The stand-in :func:`_count_task`'s callers are typed with (its Python-callable twin)."""
    _count_task(hits, owner, scale, task)


def _count_examples(dtype):
    return (np.zeros(1, dtype), np.zeros(1, np.int64), dtype.type(1), 0)


_COUNT = _jit.Entry(_count_task_any, _count_examples)


@_jit.jit
def _run_counts(at, hits, owner, scale, tasks, threads, contiguous):
    _intrinsics.parallel_tasks(at, _count_task_any, (hits, owner, scale), tasks, threads, contiguous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_tasks_runs_every_task_once_on_the_threads_it_is_given(dtype):
    """``parallel_tasks`` (the parallel loop without a prange) through an entry address: every task
    exactly once, for any task count and thread count up to fastla's, on at most ``threads``
    threads, interleaved (thread i of n runs tasks i, i + n, ...) or in runs (``contiguous``); with
    the JIT off, the serial twin."""
    dtype = np.dtype(dtype)
    at = _COUNT.address(dtype, _count_task)
    _jit.ensure_threads()
    top = _jit.max_threads()
    for tasks in (0, 1, 2, 3, 7, 64):
        for threads in sorted({1, 2, top}):
            for contiguous in (False, True):
                hits, owner = np.zeros(tasks, dtype), np.full(tasks, -1, np.int64)
                _jit.run_parallel(_run_counts, at, hits, owner, dtype.type(2), tasks, threads, contiguous)
                np.testing.assert_array_equal(hits, np.full(tasks, 2, dtype))
                if _jit.JIT_ENABLED and tasks:
                    n = min(threads, tasks)
                    assert set(owner) <= set(range(n)), (tasks, threads, owner)
                    if contiguous:  # thread i's share is the i-th run of ceil(tasks / n) tasks
                        per = -(-tasks // n)
                        np.testing.assert_array_equal(owner, owner[np.arange(tasks) // per * per])
                    else:  # thread i's share is tasks i, i + n, ...: one thread per residue class
                        np.testing.assert_array_equal(owner, owner[np.arange(tasks) % n])


@_jit.jit(python_wrapper=False)
def _claim_task(hits, owner, rows, busy, wait, task, row):
    """A task kernel for the claimed_tasks tests: counts its visit, records its row and thread, and
    counts a collision in ``busy[row, 1]`` if another task of its row is in flight meanwhile. Task
    0 then waits (up to ``wait[0]`` steps) until another task has started: which only another
    thread can start, so that two threads take part however late the second joins."""
    busy[row, 1] += busy[row, 0]
    busy[row, 0] = 1
    hits[task] += 1
    rows[task] = row
    owner[task] = _jit.thread_id()
    if task == 0 and hits.size > 1:
        k = 0
        while k < wait[0] and hits[1] == 0:  # the store below makes hits[1] be read again each step
            wait[1] += 1
            k += 1
    s = 0.0
    for i in range(2000 * (task % 3 + 1)):  # uneven tasks: the rows claim different counts
        s += i * 0.5
    busy[row, 1] += busy[row, 0] - 1 + (1 if s < 0 else 0)
    busy[row, 0] = 0


@_jit.jit
def _claim_task_any(hits, owner, rows, busy, wait, task, row):
    _claim_task(hits, owner, rows, busy, wait, task, row)


def _claim_examples(dtype):
    i64 = np.zeros(1, np.int64)
    return (np.zeros(1, dtype), i64, i64, np.zeros((1, 2), np.int64), i64, 0, 0)


_CLAIM = _jit.Entry(_claim_task_any, _claim_examples)


@_jit.jit
def _run_claims(at, hits, owner, rows, busy, wait, tasks, threads):
    _intrinsics.claimed_tasks(at, _claim_task_any, (hits, owner, rows, busy, wait), tasks, threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_claimed_tasks_runs_every_task_once_one_at_a_time_per_row(dtype):
    """``claimed_tasks``: every task exactly once, for any task count and thread count up to
    fastla's; each passes a row below ``min(threads, tasks)``, every task of a row runs on one
    thread, and never two of a row at once (per-row scratch needs no lock); with the JIT off, the
    serial twin (row 0). On two threads or more, task 0 holds its thread until another task starts
    (up to ~0.1 s), so a second thread takes part."""
    dtype = np.dtype(dtype)
    at = _CLAIM.address(dtype, _claim_task)
    _jit.ensure_threads()
    top = _jit.max_threads()
    joined = 0
    for tasks in (0, 1, 2, 3, 7, 64):
        for threads in sorted({1, 2, top}):
            hits, owner = np.zeros(tasks, dtype), np.full(tasks, -1, np.int64)
            rows, busy = np.full(tasks, -1, np.int64), np.zeros((max(1, top), 2), np.int64)
            wait = np.array([50_000_000 if threads > 1 and _jit.JIT_ENABLED else 0, 0], np.int64)
            _jit.run_parallel(_run_claims, at, hits, owner, rows, busy, wait, tasks, threads)
            np.testing.assert_array_equal(hits, np.ones(tasks, dtype))
            assert not busy.any(), busy
            n = min(threads, tasks)
            assert set(rows) <= set(range(n)), (tasks, threads, rows)
            if not _jit.JIT_ENABLED:
                assert set(rows) <= {0}
            for r in set(rows):
                assert len(set(owner[rows == r])) == 1, (r, rows, owner)
            joined += len(set(owner)) > 1
    if _jit.JIT_ENABLED and top > 1:
        assert joined, "no call ran its tasks on two threads"


@_jit.jit
def _run_counts_drifted(at, hits, owner, tasks, threads):
    """``scale`` an int64 here: not the entry's signature, so the loop links the kernel instead."""
    _intrinsics.parallel_tasks(at, _count_task_any, (hits, owner, 3), tasks, threads)


@needs_jit
def test_parallel_tasks_links_the_kernel_when_the_types_are_not_the_entry_s():
    at = _COUNT.address(np.float64, _count_task)
    hits, owner = np.zeros(9), np.zeros(9, np.int64)
    _jit.run_parallel(_run_counts_drifted, at, hits, owner, 9, 2)
    np.testing.assert_array_equal(hits, np.full(9, 3.0))


@needs_jit
def test_a_kernel_without_a_python_wrapper_refuses_python_calls():
    """``jit(python_wrapper=False)``: a Python call would jump to a null entry point; it raises."""
    with pytest.raises(TypeError, match="without a Python wrapper"):
        _count_task(np.zeros(1), np.zeros(1, np.int64), 1.0, 0)


@_jit.jit(python_wrapper=False)
def _nan_stream_part(qn, c, zero, lo, hi, scratch, s_parts, i_parts, th):
    """Stand-in for ``similarity._stream_part`` with its signature: its thread's list is NaN."""
    sizes = scratch[5]
    for i in range(s_parts.shape[1]):
        sizes[th, i] = s_parts.shape[2]
        for j in range(s_parts.shape[2]):
            s_parts[th, i, j] = np.nan
            i_parts[th, i, j] = j


@needs_jit
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_topk_runs_its_threads_through_the_entry_address(dtype, monkeypatch, rng):
    """The streaming top-k calls each thread's share through the address it is given (a stand-in
    address must be the code that runs): a caller whose argument types drifted from the entry's
    signature would run its threads one after another."""
    import fastla as fl
    from fastla import similarity

    real = similarity.STREAM

    class StandIn:
        @staticmethod
        def address(dt):
            return real.address(dt, _nan_stream_part)

    monkeypatch.setattr(similarity, "STREAM", StandIn)
    q = rng.standard_normal((3, 16)).astype(dtype)
    c = rng.standard_normal((500, 16)).astype(dtype)
    scores, _ = fl.cosine_topk(q, c, k=4, backend="numba")
    assert np.isnan(scores).all()


@needs_jit
def test_perf_map_names_the_compiled_kernels(tmp_path):
    """``tools/perf_map.py SCRIPT``: runs the script, then writes ``/tmp/perf-<pid>.map``, one
    ``START SIZE NAME`` line (hexadecimal) per function of Numba's JIT engine, by address, sizes
    positive and no two ranges overlapping, fastla's kernels among the names."""
    import os
    import re
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text("import numpy as np, fastla\nfastla.softmax(np.ones((3, 5)), backend='numba')\n")
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "perf_map.py")
    proc = subprocess.run([sys.executable, tool, str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = re.search(r"functions named in (\S+)", proc.stderr).group(1)
    try:
        with open(path) as f:
            rows = [line.split(" ", 2) for line in f.read().splitlines()]
    finally:
        os.remove(path)
    starts = [int(a, 16) for a, _, _ in rows]
    sizes = [int(s, 16) for _, s, _ in rows]
    assert starts == sorted(starts) and all(s > 0 for s in sizes)
    assert all(a + s <= b for a, s, b in zip(starts[:-1], sizes[:-1], starts[1:], strict=True))
    assert any("fastla" in name and "softmax" in name for _, _, name in rows)


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="inspects the compiled code")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_macro_kernel_takes_no_reference_counts_per_micro_kernel_call(dtype):
    """The macro-kernel binds each micro-kernel call's B source (B in place or its packed panels) to
    a variable; on the arrays as passed, each binding took and dropped a reference on an owner that
    both threads' tasks share, two atomics a call (12% of a two-thread 2000x256x256 float64
    product's samples on an AMD EPYC; 1024^3 there 27.8-28.5 -> 24.6 ms, 1000x37x1000 2.55 -> 0.91
    ms). Compiled afresh (cached code cannot be inspected), no loop of it updates a count on an
    argument."""
    from tests.helpers import counted_in_loops, fresh_ir

    a = np.ones((200, 200), dtype)
    fastla.matmul(a, a, backend="numba")  # the macro-kernel's argument types, from a real call
    sigs = [s for s in gk.macro_kernel.signatures if str(s[3].dtype) == np.dtype(dtype).name]
    assert sigs
    for sig in sigs:
        counted = counted_in_loops(fresh_ir(gk.macro_kernel, sig))
        assert not {name for name in counted if name.startswith("arg.")}, counted
