"""scaled_dot_product_attention: every impl against a float64 reference (and PyTorch when installed)."""

import tracemalloc

import numpy as np
import pytest

import fastla
from fastla import attention
from tests.helpers import counted_in_loops, fresh_ir, impl_names, variant

sdpa = fastla.scaled_dot_product_attention


def _reference(q, k, v, mask=None, causal=False, scale=None, gqa=False):
    """The formula in float64 with explicit broadcasting; fully masked rows -> 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    if gqa:
        k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
        v = np.repeat(v, q.shape[-3] // v.shape[-3], axis=-3)
    L, E = q.shape[-2:]
    S = k.shape[-2]
    scale = 1 / np.sqrt(E) if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * scale
    if causal:
        mask = np.tri(L, S, dtype=bool)
    if mask is not None:
        mask = np.asarray(mask)
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    with np.errstate(invalid="ignore"):
        m = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
        m = np.where(np.isneginf(m), 0, m)
        e = np.exp(s - m)
        tot = e.sum(-1, keepdims=True)
        w = np.where(tot == 0, 0, e / np.where(tot == 0, 1, tot))
    return w @ v, w


def _tol(dtype):
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-12


def _check(impl_out, ref, dtype):
    np.testing.assert_allclose(impl_out, ref, rtol=_tol(dtype), atol=_tol(dtype), equal_nan=True)


def _qkv(rng, lead, L, S, E, Ev, dtype, k_lead=None):
    k_lead = lead if k_lead is None else k_lead
    return (
        rng.standard_normal((*lead, L, E)).astype(dtype),
        rng.standard_normal((*k_lead, S, E)).astype(dtype),
        rng.standard_normal((*k_lead, S, Ev)).astype(dtype),
    )


CASES = [
    # lead, L, S, E, Ev
    ((), 1, 1, 1, 1),
    ((2,), 7, 5, 3, 4),
    ((1, 2), 33, 65, 16, 8),
    ((2, 1), 65, 33, 7, 9),
    ((1, 1), 130, 600, 64, 64),  # several query blocks and key tiles
    ((3,), 127, 127, 32, 5),
    ((1, 2), 41, 97, 16, 8),  # the flash kernel's fewest rows (attention.FEW_ROWS), more keys
]


@pytest.mark.parametrize("lead,L,S,E,Ev", CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_against_reference(lead, L, S, E, Ev, causal, dtype, rng):
    q, k, v = _qkv(rng, lead, L, S, E, Ev, dtype)
    ref, _ = _reference(q, k, v, causal=causal)
    for name in impl_names("scaled_dot_product_attention", 40 if L * S * E <= 5000 else 99):
        out = sdpa(q, k, v, is_causal=causal, backend=name)
        assert out.shape == (*lead, L, Ev) and out.dtype == dtype, name
        _check(out, ref, dtype)


@pytest.mark.parametrize(
    "mask_shape",
    [(33, 70), (70,), (2, 1, 1, 70), (1, 3, 33, 1), (2, 3, 33, 70)],
)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_broadcast(mask_shape, kind, dtype, rng):
    q, k, v = _qkv(rng, (2, 3), 33, 70, 8, 6, dtype)
    if kind == "bool":
        mask = rng.random(mask_shape) > 0.3
    else:
        mask = (rng.standard_normal(mask_shape) * 2).astype(dtype)
        mask[..., :1] = -np.inf
    ref, _ = _reference(q, k, v, mask=mask)
    for name in impl_names("scaled_dot_product_attention", 99):
        _check(sdpa(q, k, v, mask, backend=name), ref, dtype)


@pytest.mark.slow  # 1024 x 1024 scores per head: minutes as Python
@pytest.mark.parametrize("mask_shape", [(2, 1, 1, 1024), (1024,)])
def test_key_padding_mask_is_not_materialised(mask_shape, rng):
    """A key-padding mask ``(B, 1, 1, S)`` (or a 1-D one) broadcasts inside the kernel: the call's
    peak memory stays far below one L x S matrix."""
    L = S = 1024
    q, k, v = _qkv(rng, (2, 1), L, S, 16, 16, np.float32)
    mask = np.ones(mask_shape, bool)
    mask[..., 900:] = False
    ref, _ = _reference(q[:, :, :64], k, v, mask=mask)
    sdpa(q[:, :, :64], k, v, mask, backend="numba")  # compile outside the measurement
    tracemalloc.start()
    try:
        out = sdpa(q, k, v, mask, backend="numba")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _check(out[:, :, :64], ref, np.float32)
    assert peak < L * S * 4 / 4, peak


def test_fully_masked_rows_are_zero(dtype, rng):
    q, k, v = _qkv(rng, (2,), 70, 300, 8, 5, dtype)
    mask = rng.random((2, 70, 300)) > 0.5
    mask[0, 3] = False
    mask[1, 69] = False
    fmask = np.where(mask, 0, -np.inf).astype(dtype)
    for name in impl_names("scaled_dot_product_attention", 99):
        for m in (mask, fmask):
            out, w = sdpa(q, k, v, m, return_weights=True, backend=name)
            assert not np.isnan(out).any()
            assert np.all(out[0, 3] == 0) and np.all(out[1, 69] == 0)
            assert np.all(w[0, 3] == 0)
            _check(out, _reference(q, k, v, mask=mask)[0], dtype)
    # no keys at all: every row is fully masked
    out = sdpa(q, k[:, :0], v[:, :0], backend="numba" if fastla._jit.NUMBA_AVAILABLE else "numpy")
    assert out.shape == (2, 70, 5) and np.all(out == 0)


def test_return_weights(dtype, rng):
    q, k, v = _qkv(rng, (2,), 70, 300, 16, 4, dtype)
    for causal in (False, True):
        ref_out, ref_w = _reference(q, k, v, causal=causal)
        for name in impl_names("scaled_dot_product_attention", 99):
            out, w = sdpa(q, k, v, is_causal=causal, return_weights=True, backend=name)
            assert w.shape == (2, 70, 300) and w.dtype == dtype
            _check(out, ref_out, dtype)
            _check(w, ref_w, dtype)
            if causal:
                assert np.all(np.triu(w[0], 1) == 0)


@pytest.mark.parametrize(
    "q_lead,kv_lead,mask_shape,gqa",
    [
        ((1,), (1,), (3, 5, 7), False),  # shared query, key and value; a mask per entry
        ((2, 1), (2, 3), None, False),  # a query per batch against keys per head
        ((2, 4), (2, 2), (5, 7), True),  # GQA with one shared mask
        ((2, 4), (2, 2), (2, 1, 1, 7), True),  # GQA pairs and a mask per batch: gathered
        ((2, 4), (1, 4), None, False),  # keys shared across batches: gathered
        ((1, 4), (2, 4), (2, 1, 5, 1), False),
    ],
)
def test_stacks_that_share_slices(q_lead, kv_lead, mask_shape, gqa, dtype, rng):
    """Operands whose slices serve several stack entries (broadcast leading dimensions, GQA, shared
    masks): NumPy's product reads views where the sharing allows and gathers copies otherwise, with
    the same results either way."""
    q = rng.standard_normal((*q_lead, 5, 4)).astype(dtype)
    k = rng.standard_normal((*kv_lead, 7, 4)).astype(dtype)
    v = rng.standard_normal((*kv_lead, 7, 3)).astype(dtype)
    mask = None if mask_shape is None else (rng.standard_normal(mask_shape) * 2).astype(dtype)
    ref, ref_w = _reference(q, k, v, mask=mask, gqa=gqa)
    for name in impl_names("scaled_dot_product_attention", 99):
        out, w = sdpa(q, k, v, mask, enable_gqa=gqa, return_weights=True, backend=name)
        assert out.shape == ref.shape and w.shape == ref_w.shape, name
        _check(out, ref, dtype)
        _check(w, ref_w, dtype)


@pytest.mark.parametrize("L", [1, 13, 20])
@pytest.mark.parametrize("group", [3, 8])
def test_row_kernel(L, group, dtype, rng, monkeypatch):
    """The ``numba`` impl's row kernel (taken below ``FEW_ROWS`` query rows; forced here at every L,
    with groups of rows that do not divide L): causal rows and their weights, float and bool masks
    that broadcast, a fully masked row, GQA, NaN, against the reference."""
    from fastla import attention

    monkeypatch.setattr(attention, "FEW_ROWS", 10**6)
    monkeypatch.setattr(attention, "ROW_GROUP", group)
    S = 37
    q, k, v = _qkv(rng, (2, 4), L, S, 6, 5, dtype, k_lead=(2, 2))
    for causal in (False, True):
        ref, ref_w = _reference(q, k, v, causal=causal, gqa=True)
        out, w = sdpa(q, k, v, is_causal=causal, enable_gqa=True, return_weights=True, backend="numba")
        _check(out, ref, dtype)
        _check(w, ref_w, dtype)
    k, v = k.repeat(2, axis=1), v.repeat(2, axis=1)
    bool_mask = rng.random((2, 1, L, S)) > 0.4
    bool_mask[1, 0, L - 1] = False  # a fully masked row: zeros
    for mask in (bool_mask, (rng.standard_normal((L, 1)) * 2).astype(dtype), np.zeros(S, dtype)):
        ref, ref_w = _reference(q, k, v, mask=mask)
        out, w = sdpa(q, k, v, mask, return_weights=True, backend="numba")
        _check(out, ref, dtype)
        _check(w, ref_w, dtype)
    out = sdpa(q, k, v, bool_mask, backend="numba")
    assert np.all(out[1, :, L - 1] == 0) and np.all(np.isfinite(out))
    q[0, 1, 0, 2] = np.nan
    out = sdpa(q, k, v, backend="numba")
    assert np.isnan(out[0, 1, 0]).all() and not np.isnan(np.delete(out.reshape(-1, 5), L, axis=0)).any()


@pytest.mark.skipif(not fastla._jit.NUMBA_AVAILABLE, reason="the numba impl's packing")
def test_packed_keys_and_values_reuse_a_per_thread_workspace(monkeypatch):
    """The flash kernel packs keys and values into this Python thread's workspace, kept between
    calls (fresh pages per call cost more than the packing); calls from several Python threads at
    once each use their own; a call past ``WORKSPACE_BYTES`` allocates its own, same results."""
    from concurrent.futures import ThreadPoolExecutor

    from fastla import _gemm_kernels, attention

    rng = np.random.default_rng(5)
    rows = attention.FEW_ROWS + 7  # enough query rows for the flash kernel, which packs
    cases = [_qkv(rng, (2,), rows, 70 + 9 * i, 8, 5, np.float32) for i in range(6)]
    refs = [_reference(*c)[0] for c in cases]
    _gemm_kernels._WORKSPACES.by_dtype.pop(("attention", np.dtype(np.float32)), None)
    sdpa(*cases[0], backend="numba")
    work = _gemm_kernels._WORKSPACES.by_dtype[("attention", np.dtype(np.float32))]
    _check(sdpa(*cases[0], backend="numba"), refs[0], np.float32)
    assert _gemm_kernels._WORKSPACES.by_dtype[("attention", np.dtype(np.float32))] is work

    def run(i):
        return [sdpa(*cases[j], backend="numba") for j in range(i, len(cases), 2) for _ in range(3)]

    with ThreadPoolExecutor(2) as pool:
        for i, outs in enumerate(pool.map(run, range(2))):
            for n, out in enumerate(outs):
                _check(out, refs[i + 2 * (n // 3)], np.float32)
    monkeypatch.setattr(attention, "WORKSPACE_BYTES", 0)
    _check(sdpa(*cases[5], backend="numba"), refs[5], np.float32)


def test_lead_group_reads_the_index_from_the_shapes():
    """``_lead_group`` says from the shapes alone when an operand's stack index is ``arange(n) // r``
    (what lets NumPy's product read views instead of gathering copies): it is never wrong, and it
    finds every such index among these broadcasts."""
    from itertools import product

    from fastla.attention import _lead_group, _lead_index

    for lead in [(1,), (3,), (2, 3), (2, 1, 3), (2, 4, 2)]:
        for lead_in in product(*[(1, d) for d in lead]):
            for cut in range(len(lead_in) + 1):
                shape = lead_in[cut:]
                index = _lead_index(shape, lead)
                n = index.size
                truth = [r for r in range(1, n + 1) if np.array_equal(index, np.arange(n) // r)]
                assert _lead_group(shape, lead) == (truth[0] if truth else None), (shape, lead)
        hq = lead[-1]
        for hk in [h for h in range(1, hq + 1) if hq % h == 0]:
            for head_lead in {(*lead[:-1], hk), (1,) * (len(lead) - 1) + (hk,)}:
                index = _lead_index(head_lead, lead, hq // hk)
                got = _lead_group(head_lead, lead, hq // hk)
                assert got is None or np.array_equal(index, np.arange(index.size) // got), (head_lead, lead)
                if head_lead[:-1] == lead[:-1]:
                    assert got == hq // hk


@pytest.mark.parametrize("hk", [1, 2, 3])
def test_gqa(hk, dtype, rng):
    q = rng.standard_normal((2, 6, 40, 8)).astype(dtype)
    k = rng.standard_normal((2, hk, 50, 8)).astype(dtype)
    v = rng.standard_normal((2, hk, 50, 5)).astype(dtype)
    ref, _ = _reference(q, k, v, gqa=True)
    for name in impl_names("scaled_dot_product_attention", 99):
        _check(sdpa(q, k, v, enable_gqa=True, backend=name), ref, dtype)
    with pytest.raises(ValueError, match="heads"):
        sdpa(q, k[:, :1].repeat(4, axis=1), v[:, :1].repeat(4, axis=1), enable_gqa=True)
    if hk != 6:
        with pytest.raises(ValueError):  # without enable_gqa the heads must broadcast
            sdpa(q, k[:, :1].repeat(4, axis=1), v[:, :1].repeat(4, axis=1))


def test_scale_leading_broadcast_and_2d(dtype, rng):
    q = rng.standard_normal((2, 3, 9, 4)).astype(dtype)
    k = rng.standard_normal((3, 11, 4)).astype(dtype)
    v = rng.standard_normal((1, 11, 2)).astype(dtype)
    ref, _ = _reference(q, k, v, scale=0.3)
    for name in impl_names("scaled_dot_product_attention", 40):
        _check(sdpa(q, k, v, scale=0.3, backend=name), ref, dtype)
        _check(sdpa(q[0, 0], k[0], v[0], backend=name), _reference(q[0, 0], k[0], v[0])[0], dtype)


def test_layouts_and_no_mutation(layout, dtype, rng):
    q0, k0, v0 = _qkv(rng, (2,), 9, 13, 4, 3, dtype)
    q, k, v = (variant(x, layout) for x in (q0, k0, v0))
    keep = [x.copy() for x in (q, k, v)]
    ref, _ = _reference(q0, k0, v0, causal=True)
    for name in impl_names("scaled_dot_product_attention", 13):
        _check(sdpa(q, k, v, is_causal=True, backend=name), ref, dtype)
    for x, x0 in zip((q, k, v), keep, strict=True):
        np.testing.assert_array_equal(x, x0)


def test_nan_propagates(rng):
    q, k, v = _qkv(rng, (1,), 70, 80, 8, 3, np.float64)
    q[0, 5, 2] = np.nan
    v[0, 7, 1] = np.nan
    for name in impl_names("scaled_dot_product_attention", 99):
        out = sdpa(q, k, v, backend=name)
        assert np.isnan(out[0, 5]).all()
        assert np.isnan(out[0, :, 1]).all() and not np.isnan(out[0, np.arange(70) != 5][:, [0, 2]]).any()


def test_mixed_dtypes_promote_and_float16(rng):
    q, k, v = _qkv(rng, (), 5, 6, 3, 2, np.float32)
    assert sdpa(q, k.astype(np.float64), v).dtype == np.float64
    out16 = sdpa(q.astype(np.float16), k.astype(np.float16), v.astype(np.float16))
    assert out16.dtype == np.float16
    np.testing.assert_allclose(out16, _reference(q, k, v)[0], atol=3e-2)


@pytest.mark.parametrize("mask_dtype", [np.float16, np.float32, np.float64])
def test_a_float_mask_of_another_dtype_is_added_in_the_operands_dtype(mask_dtype, dtype, rng):
    """A float mask of any float dtype is cast to the operands' dtype and added (PyTorch 2.13
    refuses a float64 mask with float32 operands, and its 4-D CPU kernel misreads a float32 mask
    with float64 ones: results neither masked nor unmasked)."""
    q, k, v = _qkv(rng, (1, 2), 17, 17, 8, 8, dtype)
    mask = (rng.standard_normal((17, 17)) * 3).astype(mask_dtype)
    mask[3, :5] = -np.inf
    ref, _ = _reference(q, k, v, mask=mask.astype(dtype).astype(np.float64), scale=0.1)
    for name in impl_names("scaled_dot_product_attention", 99):
        out = sdpa(q, k, v, mask, scale=0.1, backend=name)
        assert out.dtype == dtype, name
        _check(out, ref, dtype)


def test_errors(rng):
    q, k, v = _qkv(rng, (2,), 5, 6, 3, 2, np.float64)
    with pytest.raises(ValueError, match="not both"):
        sdpa(q, k, v, np.ones((5, 6), bool), is_causal=True)
    with pytest.raises(ValueError, match="shapes do not match"):
        sdpa(q, k[..., :2], v)
    with pytest.raises(ValueError, match="shapes do not match"):
        sdpa(q, k, v[:, :5])
    with pytest.raises(ValueError, match="broadcast"):
        sdpa(q, k, v, np.ones((4, 6), bool))
    with pytest.raises(ValueError, match="broadcast"):
        sdpa(q, k[:1].repeat(3, axis=0), v[:1].repeat(3, axis=0))
    with pytest.raises(ValueError, match="at least 2"):
        sdpa(q[0, 0], k, v)
    with pytest.raises(TypeError, match="floating"):
        sdpa(q.astype(int), k, v)
    with pytest.raises(TypeError, match="bool or float"):
        sdpa(q, k, v, np.ones((5, 6), int))
    with pytest.raises(ValueError, match="heads"):
        sdpa(q, k[[0, 1, 1]], v[[0, 1, 1]], enable_gqa=True)  # 2 query heads, 3 key/value heads
    with pytest.raises(NotImplementedError, match=r"dropout_p=0\.1 is not supported"):
        sdpa(q, k, v, dropout_p=0.1)
    with pytest.raises(NotImplementedError, match=r"dropout_p=1\.0"):
        sdpa(q, k, v, None, 1)
    for bad in (-0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1"):
            sdpa(q, k, v, dropout_p=bad)
    with pytest.raises(TypeError, match="dropout_p must be a float"):
        sdpa(q, k, v, dropout_p="0")


def test_torch_argument_order(rng):
    """PyTorch's positional order (attn_mask, dropout_p, is_causal; the rest keyword-only) works as is."""
    q, k, v = _qkv(rng, (2,), 5, 6, 3, 2, np.float64)
    np.testing.assert_array_equal(sdpa(q, k, v, None, 0.0, True), sdpa(q, k, v, is_causal=True))
    np.testing.assert_array_equal(
        sdpa(q, k, v, None, 0, False, scale=0.3), sdpa(q, k, v, scale=0.3, dropout_p=0.0)
    )
    with pytest.raises(TypeError):
        sdpa(q, k, v, None, 0.0, False, 0.3)  # scale is keyword-only, as in PyTorch


def test_auto_rule():
    from fastla import attention

    # too few scores for the flash kernel, too many rows for the row kernel
    small = np.ones((attention.FEW_ROWS, 8))
    assert fastla.explain("scaled_dot_product_attention", small, small, small)[0] == "numpy"
    row = np.ones((attention.FEW_ROWS - 1, 8))
    assert fastla.explain("scaled_dot_product_attention", row, row, row)[0] == (
        "numba" if fastla._jit.NUMBA_AVAILABLE else "numpy"
    )
    big = np.ones((8, 512, 64), np.float32)
    expect = "numba" if fastla._jit.NUMBA_AVAILABLE else "numpy"
    assert fastla.explain("scaled_dot_product_attention", big, big, big)[0] == expect
    # few query rows (a decoding step: one row against a cache of keys): the row kernel at any size
    q, cache = np.ones((8, 1, 64), np.float32), np.ones((8, 2048, 64), np.float32)
    name, reason = fastla.explain("scaled_dot_product_attention", q, cache, cache)
    assert name == expect and ("row kernel" in reason or expect == "numpy")
    assert fastla.explain("scaled_dot_product_attention", small[:1], small, small)[0] == expect
    q = np.ones((8, 32, 64), np.float32)
    assert fastla.explain("scaled_dot_product_attention", q, cache, cache)[0] == expect


@pytest.mark.slow  # without the JIT: 36 s of kernels run as Python, on paths the tests above cover
@pytest.mark.parametrize("causal", [False, True])
def test_against_torch(causal, dtype, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    q = rng.standard_normal((2, 6, 70, 16)).astype(dtype)
    k = rng.standard_normal((2, 3, 90, 16)).astype(dtype)
    v = rng.standard_normal((2, 3, 90, 12)).astype(dtype)
    t = [torch.from_numpy(x) for x in (q, k, v)]
    # PyTorch's positional order: attn_mask, dropout_p, is_causal (scale, enable_gqa keyword-only)
    expected = F.scaled_dot_product_attention(*t, None, 0.0, causal, enable_gqa=True).numpy()
    mask = rng.random((70, 90)) > 0.2
    mask[5] = False  # a fully masked query row: zeros on both sides
    expected_m = F.scaled_dot_product_attention(*t, attn_mask=torch.from_numpy(mask), enable_gqa=True).numpy()
    for name in impl_names("scaled_dot_product_attention", 99):
        _check(sdpa(q, k, v, None, 0.0, causal, enable_gqa=True, backend=name), expected, dtype)
        _check(sdpa(q, k, v, mask, enable_gqa=True, backend=name), expected_m, dtype)


@pytest.mark.skipif(not fastla._jit.JIT_ENABLED, reason="inspects the compiled code")
def test_tile_loops_take_no_reference_counts_on_the_inputs():
    """The attention tasks pass the mask to a call per key tile; reference-counted there, each call
    was an atomic on a count that every thread's tasks share. Compiled afresh, no loop of either task
    updates a count on an input."""
    from fastla import attention

    sig = attention.TASK.signature(np.float32)
    for task in (attention._flash_task, attention._weights_task, attention._rows_task):
        counted = counted_in_loops(fresh_ir(task, sig))
        assert not {name for name in counted if name.startswith("arg.")}, (task.py_func.__name__, counted)


@pytest.mark.parametrize("L, S", [(0, 5), (4, 0)])
def test_empty_queries_or_keys_with_a_mask(L, S):
    """A mask of shape (L, S) with L or S zero (the stack of masks was flattened with -1, which a
    reshape cannot infer there): the same result as without the mask, on every impl."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s) for s in ((1, 2, L, 8), (1, 2, S, 8), (1, 2, S, 8)))
    for name in impl_names("scaled_dot_product_attention"):
        plain = fastla.scaled_dot_product_attention(q, k, v, backend=name)
        masked = fastla.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((L, S), bool), backend=name)
        assert masked.shape == (1, 2, L, 8), name
        np.testing.assert_array_equal(masked, plain, err_msg=name)


@pytest.mark.skipif(not fastla._jit.NUMBA_AVAILABLE, reason="the numba impl's threads")
def test_small_calls_run_on_one_thread_and_larger_on_all(monkeypatch):
    """Below ``SERIAL_WORK`` multiply-adds of the scores (B H L S E) every phase runs on one thread
    (a parallel launch costs more than it saves there); from it on, on this call's threads. The
    results are the same either way."""
    from fastla import _jit, attention

    seen = []
    run = attention._run

    def recorded(*args):
        seen.append(args[-1])
        return run(*args)

    monkeypatch.setattr(attention, "_run", recorded)
    rng = np.random.default_rng(5)
    e = 64
    line = attention.SERIAL_WORK // (2 * e)  # 2 heads of L x L, L^2 = line
    for rows, want in ((int(line**0.5) - 1, 1), (int(line**0.5), _jit.threads_here())):
        q = rng.standard_normal((1, 2, rows, e)).astype(np.float32)
        seen.clear()
        got = fastla.scaled_dot_product_attention(q, q, q, backend="numba")
        assert seen and set(seen) == {want}, (rows, seen)
        np.testing.assert_allclose(
            got, fastla.scaled_dot_product_attention(q, q, q, backend="numpy"), rtol=2e-5, atol=2e-6
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flash_running_max_sees_every_key(dtype):
    """One key scoring 1100 above the rest, at each position of a key tile (whole groups of the
    running max's tree and the tail past them): the output is that key's value. A maximum that
    missed it would leave exp(score - max) to overflow."""
    L, S = attention.FEW_ROWS + 7, 2 * attention.COLUMN_GROUP + 5  # the flash kernel, not the rows'
    q = np.ones((1, 1, L, 1), dtype)
    v = np.arange(S, dtype=dtype).reshape(1, 1, S, 1)
    for j in range(S):
        k = np.full((1, 1, S, 1), -1000, dtype)
        k[0, 0, j, 0] = 100
        out = fastla.scaled_dot_product_attention(q, k, v, backend="numba")
        np.testing.assert_array_equal(out, np.full((1, 1, L, 1), j, dtype), err_msg=f"key {j}")
