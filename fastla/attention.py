"""Scaled dot-product attention: ``fastla.scaled_dot_product_attention``.

Semantics of ``torch.nn.functional.scaled_dot_product_attention`` on NumPy arrays:
``softmax(Q Kᵀ · scale + mask) V`` with ``query (..., L, E)``, ``key (..., S, E)``,
``value (..., S, Ev)`` -> ``(..., L, Ev)``; leading dimensions broadcast; ``enable_gqa`` lets key and
value have fewer heads (dimension -3) than the query, each shared by ``Hq / Hkv`` query heads, as
``repeat_interleave`` does in PyTorch; ``attn_mask`` is boolean (True = attend) or float (added to the
scores) and broadcasts to ``(..., L, S)``; ``is_causal`` is the top-left lower-triangular mask (query
``i`` sees keys ``j <= i``); ``scale`` defaults to ``1/sqrt(E)``.

Choices of ours, written down:

* A query row whose every key is masked (or that has no keys, ``S == 0``) returns **zeros**, and its
  weights are zeros, as PyTorch's SDPA gives (its ``_safe_softmax``; older PyTorch returned NaN
  there). NaN in the inputs still propagates.
* Operands of different float dtypes are promoted (PyTorch raises); float16 is computed by NumPy.
  Integer operands are a TypeError, as in PyTorch.
* ``return_weights=True`` also returns the ``(..., L, S)`` attention weights. That output *is* the
  L x S matrix the fused kernel otherwise never builds: the ``numba`` impl computes it in a second
  pass over the key tiles from the row maxima and sums of the first.

Implementations:

* ``numpy`` — the formula as written, batched through ``@``: materialises the ``(..., L, S)`` scores
  and their exponentials.
* ``numba`` — flash-style: parallel over (batch·head, block of query rows); for each block of keys
  the score tile is computed by the GEMM micro-kernel, the online softmax keeps a running maximum
  and sum per query, and the output block is rescaled and accumulated by the micro-kernel again —
  memory O(L·E + tiles), never L x S. The tile is computed *transposed* (keys x queries) so that the
  softmax steps run across queries in SIMD lanes (no horizontal reductions) and the probabilities are
  already in the packed layout the second product reads. Causal blocks skip the keys past the
  diagonal. The exp is :func:`fastla._math.exp_nonpositive` (vectorised; its arguments are scores
  minus their running maximum, at most 0): ``exp``'s bits, but 0 where those are subnormal (the
  weights of ``return_weights=True`` take ``exp`` itself). Fewer than
  ``FEW_ROWS`` query rows (a decoding step) take the row kernel instead: per group of rows of one
  head, a dot product per key and row on the unpacked keys, the softmax, the weighted sum of the
  value rows; no packing phase, no query block filled with padding.
* ``loop`` — pure Python over rows and keys; small inputs only.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from fastla import _gemm_kernels as _gk
from fastla import _intrinsics, _jit, _math, _registry, _validate
from fastla._intrinsics import wide_vectors
from fastla._jit import jit

__all__ = ["scaled_dot_product_attention"]

# --------------------------------------------------------------------------- auto rule (data)
#
# Measured with `python -m fastla tune` (2 threads both sides, 4 heads, E = 64): the flash kernel
# wins from 4 096-16 384 score entries on an Intel AVX-512 Xeon, 1 024-4 096 on a Zen 5 (it was
# 2^20 on Zen 4, before the fast path and the per-call overhead work).
# Fewer than FEW_ROWS query rows (a decoding step: L = 1 against a cache of S keys) take the row
# kernel at any size: the flash kernel's time does not shrink with L below a query block, and NumPy's
# product pays per head (Zen 4, f32, E = 64, 8 heads: S = 2048, L = 1: the row kernel 0.12 ms,
# NumPy's product 0.26 ms, the flash kernel 3.9 ms, torch 0.17 ms; L = 16: 0.91, 7.9 (it gathered
# copies then), 4.0, 0.91 ms; L = 1, S = 64: 0.032 against NumPy's 0.075 ms; one head, L = S = 4,
# E = 8: 0.027 against 0.095 ms).
AUTO_RULE = {"min_scores": 4096}

#: Keys per tile (rounded to a multiple of MR): the transposed score tile (BK x BQ) stays in L1/L2.
KEY_TILE = 256
#: Query rows per block (rounded up to a multiple of NR).
QUERY_BLOCK = 64
#: Below this many query rows the ``numba`` impl runs the row kernel (:func:`_rows_task`, a group of
#: query rows per task, reading the keys and values unpacked) instead of packing them for the flash
#: tiles (Zen 4, 8 heads, S = 2048, E = 64, f32: the row kernel 0.9 ms at L = 16, 1.8 at 31, 2.3-2.8
#: at 40, 3.8 at 60; the flash kernel 2.7-3.7 ms for L = 32 to 64, once its packing reused its
#: buffers). At 32 and 40 rows the row kernel won every case of a second sweep (Zen 4, float32 and
#: float64, 1-32 heads, S = 32-8192, E = 32-128, causal or not): its time 0.12-0.79 of the flash
#: kernel's at 32 rows, 0.14-0.91 at 40; at 48 rows 0.19-1.18 (the flash kernel ahead from S = 256
#: with 8 heads).
FEW_ROWS = 41
#: Packed keys and values up to this size are kept between calls, per Python thread and dtype (at
#: most this much memory stays held for each; a server's pool of threads holds it per thread). It
#: covers 8 heads of 2048 x 64 float32 keys and values (8.3 MiB packed) with room to spare; larger
#: calls allocate theirs, where the compute outweighs fresh pages.
WORKSPACE_BYTES = 16 << 20
#: Query rows per task of the row kernel (each task holds their G x S scores, never L x S): each key
#: and value row is read once for the group (same case, L = 16: 1.29 ms with a row per task, 0.97 /
#: 0.92 / 0.90 with 4 / 8 / 16 rows).
ROW_GROUP = 8
#: Below this many multiply-adds of the scores (``B H L S E``) a call runs on one thread: a parallel
#: launch on Numba's TBB layer costs ~10 us, more than the second thread saves there. Measured
#: (Zen 4, 2 threads, TBB, float32, best of 7, three interleaved runs, all threads -> this line):
#: (2, 8, 16) 20.5-28.6 -> 17.7-18.0 us, 8 heads of 8 x 8 x 64 26.3-26.7 -> 23.6-24.3, 4 of 16 x
#: 16 x 64 27.7-28.5 -> 26.3-27.2; at 2^18 (4 heads of 32 x 32 x 64) one thread lost (37.3-42.8
#: against 45.7-50.2), at 2^17 (2 heads) even.
SERIAL_WORK = 2**17

_U = _jit.U


# --------------------------------------------------------------------------- validation


def _lead_index(lead_in, lead, heads_repeat=1):
    """Flat index into an operand's own stack for every position of the broadcast ``lead`` shape.

    ``heads_repeat > 1`` repeats the operand's last leading axis (GQA: ``repeat_interleave``).
    """
    idx = np.arange(math.prod(lead_in), dtype=np.intp).reshape(lead_in)
    if heads_repeat > 1:
        idx = np.repeat(idx, heads_repeat, axis=-1)
    return np.ascontiguousarray(np.broadcast_to(idx, lead).reshape(-1))


def _lead_group(lead_in, lead, heads_repeat=1):
    """``r`` when :func:`_lead_index`'s result is ``arange(prod(lead)) // r`` (each of the operand's
    slices serves ``r`` consecutive stack entries: its own, GQA's query heads, or every entry of the
    trailing dimensions it broadcasts over), else None. From the shapes alone: no index is read."""
    padded = (1,) * (len(lead) - len(lead_in)) + tuple(lead_in)
    if heads_repeat > 1 and padded[-1] > 1:
        return heads_repeat if padded[:-1] == tuple(lead[:-1]) else None
    t = len(padded)
    while t and padded[t - 1] == 1:
        t -= 1
    return math.prod(lead[t:]) if padded[:t] == tuple(lead[:t]) else None


class AttentionArgs(NamedTuple):
    """The validated arguments of the attention implementations."""

    q: object  # (stack, L, E), native-order of the compute dtype
    k: object  # (stack, S, E)
    v: object  # (stack, S, Ev)
    mask: object  # additive (stack, L, S) of the compute dtype, or None
    plan: Plan


class Plan(NamedTuple):
    """One call's validated arguments beyond the arrays themselves (what every impl reads). A
    NamedTuple: built on every call, where a frozen dataclass's construction cost 1.2 us against
    0.3."""

    lead: tuple  # the broadcast leading (batch, heads) shape of the result
    dims: tuple  # (L, S, E, Ev)
    q: np.ndarray  # per stack entry of the result, the index of its query slice
    k: np.ndarray  # ... of its key slice (a GQA key head serves several query heads)
    v: np.ndarray  # ... of its value slice
    mask: np.ndarray | None  # ... of its mask slice; None without a mask
    groups: tuple  # per operand (q, k, v, mask): :func:`_lead_group` of its index
    causal: bool
    scale: float
    weights: bool  # return the attention weights too


def _check_dropout(dropout_p):
    """Only ``dropout_p=0.0`` (inference): fastla has no random state to drop weights with."""
    if not isinstance(dropout_p, numbers.Real):
        raise TypeError(
            f"scaled_dot_product_attention: dropout_p must be a float, got {type(dropout_p).__name__}"
        )
    p = float(dropout_p)
    if not 0.0 <= p <= 1.0:  # the range check of torch.nn.functional.dropout
        raise ValueError(
            f"scaled_dot_product_attention: dropout probability has to be between 0 and 1, got {p}"
        )
    if p != 0.0:
        raise NotImplementedError(
            f"scaled_dot_product_attention: dropout_p={p} is not supported: fastla computes attention "
            "for inference only; pass dropout_p=0.0 (PyTorch: dropout_p=0.0 when not training)"
        )


def _prepare(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    return_weights=False,
):
    _check_dropout(dropout_p)
    q, k, v = (np.asarray(x) for x in (query, key, value))
    for name, x in (("query", q), ("key", k), ("value", v)):
        if x.ndim < 2:
            raise ValueError(
                f"scaled_dot_product_attention: {name} must have at least 2 dimensions, got {x.shape}"
            )
        if x.dtype.kind != "f":
            raise TypeError(
                f"scaled_dot_product_attention: {name} must be a floating-point array, got {x.dtype}"
            )
    L, E = q.shape[-2:]
    S, Ev = v.shape[-2:]
    if k.shape[-1] != E or k.shape[-2] != S:
        raise ValueError(
            "scaled_dot_product_attention: shapes do not match: query (..., L, E) "
            f"{q.shape}, key (..., S, E) {k.shape}, value (..., S, Ev) {v.shape}"
        )
    if attn_mask is not None and is_causal:
        raise ValueError("scaled_dot_product_attention: give attn_mask or is_causal=True, not both")
    reps = [1, 1]
    k_lead, v_lead = k.shape[:-2], v.shape[:-2]
    if enable_gqa:
        if min(q.ndim, k.ndim, v.ndim) < 3:
            raise ValueError("scaled_dot_product_attention: enable_gqa needs a heads dimension (-3)")
        hq = q.shape[-3]
        for i, x in enumerate((k, v)):
            if x.shape[-3] == 0 or hq % x.shape[-3]:
                raise ValueError(
                    f"scaled_dot_product_attention: enable_gqa: query heads ({hq}) must be a multiple of "
                    f"key/value heads ({k.shape[-3]}, {v.shape[-3]})"
                )
            reps[i] = hq // x.shape[-3]
        k_lead = (*k_lead[:-1], hq)
        v_lead = (*v_lead[:-1], hq)
    mask = None
    m_lead = ()
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        if mask.dtype.kind not in "bf":
            raise TypeError(
                f"scaled_dot_product_attention: attn_mask must be bool or float, got {mask.dtype}"
            )
        if mask.ndim < 2:
            mask = mask.reshape((1,) * (2 - mask.ndim) + mask.shape)
        if mask.shape[-2] not in (1, L) or mask.shape[-1] not in (1, S):
            raise ValueError(
                f"scaled_dot_product_attention: attn_mask of shape {mask.shape} does not broadcast to "
                f"(..., L={L}, S={S})"
            )
        m_lead = mask.shape[:-2]
    try:
        lead = np.broadcast_shapes(q.shape[:-2], k_lead, v_lead, m_lead)
    except ValueError:
        raise ValueError(
            "scaled_dot_product_attention: leading dimensions do not broadcast: query "
            f"{q.shape}, key {k.shape}, value {v.shape}"
            + (f", attn_mask {mask.shape}" if mask is not None else "")
        ) from None
    dtype = np.result_type(q, k, v).newbyteorder("=")
    why = None if dtype in _validate.COMPILED_DTYPES else f"dtype {dtype} is not compiled"
    if mask is not None and mask.dtype.kind == "b":  # one additive form for every impl
        mask = np.where(mask, dtype.type(0), dtype.type(-np.inf))
    elif mask is not None:
        mask = mask.astype(dtype, copy=False)
    plan = Plan(
        lead=lead,
        dims=(L, S, E, Ev),
        q=_lead_index(q.shape[:-2], lead),
        k=_lead_index(k.shape[:-2], lead, reps[0]),
        v=_lead_index(v.shape[:-2], lead, reps[1]),
        mask=_lead_index(m_lead, lead) if mask is not None else None,
        groups=(
            _lead_group(q.shape[:-2], lead),
            _lead_group(k.shape[:-2], lead, reps[0]),
            _lead_group(v.shape[:-2], lead, reps[1]),
            _lead_group(m_lead, lead),
        ),
        causal=bool(is_causal),
        scale=_scale(scale, E),
        weights=bool(return_weights),
    )
    stacks = (_validate.native(x, dtype) for x in (q, k, v))
    return _prepared(*stacks, mask, plan, dtype, why)


def _scale(scale, E):
    """The scores' scale: ``scale``, default ``1 / sqrt(E)`` (1 when E is 0)."""
    if scale is None:
        return 1.0 / math.sqrt(E) if E else 1.0
    return float(scale)


def _stack(x):
    """``x`` (..., r, c) as a stack of matrices (n, r, c): explicit sizes, where ``reshape(-1, ...)``
    is ambiguous when r or c is 0."""
    s = x.shape
    return x.reshape((math.prod(s[:-2]), s[-2], s[-1]))


def _prepared(q, k, v, mask, plan, dtype, why=None):
    """The :class:`AttentionArgs` of both call paths: the operands (and the additive mask) as stacks
    of matrices, the facts the rule reads."""
    L, S, E, _ = plan.dims
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:  # 3-D operands are stacks already (1.7 us saved)
        q, k, v = _stack(q), _stack(k), _stack(v)
    m3 = None if mask is None else _stack(mask)
    facts = {"scores": math.prod(plan.lead) * L * S, "L": L, "S": S, "E": E, "dtype": dtype}
    return _registry.Prepared(AttentionArgs(q, k, v, m3, plan), compiled=why, facts=facts)


def _rule(prep):
    f = prep.facts
    if f["L"] < FEW_ROWS:
        return "numba", lambda: f"L = {f['L']} query rows: the row kernel, keys and values read unpacked"
    if f["scores"] < AUTO_RULE["min_scores"]:
        return "numpy", lambda: f"{f['scores']} scores: too few for the tiled kernel to pay"
    return "numba", lambda: f"{f['scores']} scores: tiled online-softmax kernel, no L x S buffer"


_OP = _registry.operation("scaled_dot_product_attention", _prepare, _rule)


@_registry.public(_OP)
def scaled_dot_product_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    *,
    scale=None,
    enable_gqa=False,
    return_weights=False,
    backend=None,
):
    """``softmax(query @ keyᵀ * scale + mask) @ value``, like PyTorch's SDPA, on NumPy arrays.

    Parameters
    ----------
    query : array_like, shape (..., L, E)
    key : array_like, shape (..., S, E)
    value : array_like, shape (..., S, Ev)
    attn_mask : array_like of bool or float, optional
        Broadcastable to ``(..., L, S)``: True = attend (bool) or added to the scores (float).
    dropout_p : float
        Must be 0.0: fastla computes attention for inference (PyTorch's position and name, so a
        call written for ``torch.nn.functional.scaled_dot_product_attention`` runs unchanged).
    is_causal : bool
        Query ``i`` attends keys ``j <= i`` (top-left aligned). Not together with ``attn_mask``.
    scale : float, optional
        Default ``1 / sqrt(E)``.
    enable_gqa : bool
        Key and value may have fewer heads (dimension -3) than the query, dividing its count.
    return_weights : bool
        Also return the ``(..., L, S)`` attention weights (materialised).
    backend : {None, "auto", "numba", "numpy", "loop"}, optional

    Returns
    -------
    out : ndarray, shape (..., L, Ev)
        A query row with every key masked gives zeros, as PyTorch's SDPA does.
    weights : ndarray, shape (..., L, S)
        Only with ``return_weights=True``.

    Raises
    ------
    ValueError
        Mismatched shapes, a mask that does not broadcast, ``attn_mask`` with ``is_causal``.
    TypeError
        Non-float operands, a mask that is neither bool nor float.
    NotImplementedError
        ``dropout_p`` other than 0 (a value outside [0, 1] is a ValueError).

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> k = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> v = np.array([[1.0], [2.0], [3.0]])
    >>> out = fl.scaled_dot_product_attention(q, k, v, is_causal=True)
    >>> out.round(4)
    array([[1.    ],
           [1.6698]])
    """
    if (
        attn_mask is None
        and type(query) is np.ndarray
        and type(key) is np.ndarray
        and type(value) is np.ndarray
        and query.dtype in _validate.COMPILED_DTYPES
        and key.dtype is query.dtype
        and value.dtype is query.dtype
        and query.ndim >= 2
        and key.ndim == query.ndim == value.ndim
        and type(dropout_p) is float
        and dropout_p == 0.0
        and type(is_causal) is bool
        and scale is None
        and enable_gqa is False
        and return_weights is False
        and _registry.fast_path(backend)
    ):
        # The fast path of the common call (see matmul): float32/float64 query, key and value of one
        # leading shape, no mask, the defaults but is_causal, under auto or numba forced: the full
        # path's arguments built directly (no broadcasting or GQA to resolve), the same rule and
        # impls (2 heads of 16 x 32: the call 55 -> 36 us)
        lead, (L, E), (S, Ev) = query.shape[:-2], query.shape[-2:], value.shape[-2:]
        if key.shape == (*lead, S, E) and value.shape[:-2] == lead:
            return _OP.run(backend, _prepare_plain(query, key, value, lead, (L, S, E, Ev), is_causal))
    return _OP.run(
        backend,
        _prepare(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_weights),
    )


def _prepare_plain(q, k, v, lead, dims, causal):
    """:func:`_prepare`'s result for query, key and value of one native float dtype and one leading
    shape, without a mask, GQA, a given scale or the weights (the fast path's call)."""
    index = np.arange(math.prod(lead), dtype=np.intp)  # every stack entry reads its own slices
    index.setflags(write=False)  # a kernel input as it is (``_c``), no view per use
    plan = Plan(lead, dims, index, index, index, None, (1, 1, 1, None), causal, _scale(None, dims[2]), False)
    return _prepared(q, k, v, None, plan, q.dtype)


# --------------------------------------------------------------------------- shared pieces


def _result(out3, w3, plan):
    L, S, _, Ev = plan.dims
    out = out3.reshape(*plan.lead, L, Ev)
    return (out, w3.reshape(*plan.lead, L, S)) if plan.weights else out


def _causal_additive(L, S, dtype):
    return np.where(np.tri(L, S, dtype=bool), dtype.type(0), dtype.type(-np.inf))


# --------------------------------------------------------------------------- numpy


def _operand_views(nb, pairs, groups):
    """The operands ``(x, index)`` as arrays that broadcast against each other over the stack,
    without copies where the indices allow: one slice serving every entry (a shared mask) as that
    slice, and slices serving 1 or ``R`` consecutive entries each as views ``(nb // R, R or 1, ...)``
    (GQA's key and value heads, a mask per batch); else the gathered copies ``(nb, ...)``. At a
    decoding step (L = 1 against 8 heads of 2048 x 64 float32 keys and values) gathering them cost
    2.7 ms of a 2.9 ms call. ``groups`` is the plan's :func:`_lead_group` per operand. Also
    returns the stack's shape in those terms, ``(nb // R, R)`` or ``(nb,)``."""
    reps = [r if nb else None for r in groups[: len(pairs)]]
    big = {r for r, (x, _) in zip(reps, pairs, strict=True) if r is not None and r > 1 and x.shape[0] > 1}
    if None in reps or len(big) > 1:
        return [x[index] for x, index in pairs], (nb,)
    R = big.pop() if big else 1
    views = [
        x[0] if x.shape[0] == 1 and nb > 1 else x.reshape(nb // R, R // r, *x.shape[1:])
        for (x, _), r in zip(pairs, reps, strict=True)
    ]
    return views, (nb // R, R)


@_OP.register("numpy", any_dtype=True)
def _sdpa_numpy(q, k, v, mask, plan):
    """The formula with ``@`` over the stack: materialises the (..., L, S) scores."""
    L, S, _, Ev = plan.dims
    dtype = np.result_type(q, k, v)
    nb = plan.q.size
    out = np.empty((nb, L, Ev), dtype)
    weights = np.empty((nb, L, S), dtype) if plan.weights else None
    pairs = [(q, plan.q), (k, plan.k), (v, plan.v)] + ([(mask, plan.mask)] if mask is not None else [])
    (qb, kb, vb, *mb), grid = _operand_views(nb, pairs, plan.groups)
    if plan.causal and S > L and weights is None:  # top-left causal: keys past the L-th get weight 0
        kb, vb, S = kb[..., :L, :], vb[..., :L, :], L
    scores = qb @ kb.swapaxes(-1, -2)
    scores *= dtype.type(plan.scale)
    if mb and np.broadcast_shapes(scores.shape, mb[0].shape) != scores.shape:
        scores = scores + mb[0]  # a mask per entry over shared query and key slices
    elif mb:
        scores += mb[0]
    elif plan.causal:
        scores += _causal_additive(L, S, dtype)
    with np.errstate(invalid="ignore"):
        m = scores.max(axis=-1, keepdims=True, initial=-np.inf)
        m[np.isneginf(m)] = 0  # fully masked row: every exp is 0, no -inf - -inf
        np.exp(scores - m, out=scores)
        total = scores.sum(axis=-1, keepdims=True)
        np.divide(scores, total, out=scores, where=total != 0)
        scores[np.broadcast_to(total == 0, scores.shape)] = 0
    np.matmul(scores, vb, out=out.reshape(*grid, L, Ev))  # broadcast to every entry
    if weights is not None:
        weights.reshape(*grid, L, S)[...] = scores
    return _result(out, weights, plan)


# --------------------------------------------------------------------------- loop


@_OP.register("loop")
def _sdpa_loop(q, k, v, mask, plan):
    """Pure Python: per query row, the scores, their softmax, the weighted sum of value rows."""
    L, S, E, Ev = plan.dims
    nb = plan.q.size
    out = np.zeros((nb, L, Ev), q.dtype)
    weights = np.zeros((nb, L, S), q.dtype)
    scale = plan.scale
    for b in range(nb):
        qm, km, vm = q[plan.q[b]].tolist(), k[plan.k[b]].tolist(), v[plan.v[b]].tolist()
        mm = mask[plan.mask[b]].tolist() if mask is not None else None
        for i in range(L):
            row = []
            for j in range(S):
                s = sum(qm[i][e] * km[j][e] for e in range(E)) * scale
                if mm is not None:
                    s += mm[i if len(mm) > 1 else 0][j if len(mm[0]) > 1 else 0]
                elif plan.causal and j > i:
                    s = -math.inf
                row.append(s)
            top = max(row, default=-math.inf)
            shift = top if top != -math.inf else 0.0
            ex = [math.exp(s - shift) if s == s else s for s in row]
            total = sum(ex)
            p = [x / total if total != 0 else 0.0 for x in ex]
            weights[b, i] = p
            for e in range(Ev):
                out[b, i, e] = sum(p[j] * vm[j][e] for j in range(S))
    return _result(out, weights if plan.weights else None, plan)


# --------------------------------------------------------------------------- numba


@jit(inline="always")
def _pack_queries(q, b, i0, rows, npq, qp):
    """Queries ``i0 : i0 + rows`` of ``q[b]`` (L x E) transposed into ``npq`` NR-wide panels of
    ``qp`` (zero pad): the B operand of the score tile (``fastla._gemm_kernels.pack_b_panel``'s step
    element by element, :func:`fastla._gemm_kernels.pack_elements`, inlined: that packer's own
    library, called through its symbol, cost the kernel's cold compile more)."""
    _, L, E = q.shape
    nr = _gk.tile_nr(qp)
    qf = q.reshape(q.size)
    for pn in range(npq):
        j0 = i0 + pn * nr
        cols = max(0, min(nr, rows - pn * nr))
        _gk.pack_elements(qf, (b * L + j0) * E, 1, E, E, cols, qp[:0], 0, qp, pn * E * nr, 0, 0)


@jit(inline="always")
def _score_tile(qp, kp, k_at, st, E, cols, t):
    """Transposed scores ``st[pn, c, r] = scale * <k_(j0+c), q_(i0+pn*NR+r)>`` for ``c < cols``
    (``t`` the :class:`Tiling`)."""
    mr = _gk.tile_mr(kp)
    nr = _gk.tile_nr(kp)
    npq = t.bq // nr
    bk = t.bk
    for pn in range(npq):
        for t in range(0, cols, mr):
            _gk.microkernel(E, kp, k_at + t * E, qp, pn * E * nr, nr, st, pn * bk * nr + t * nr, nr, False)


@jit(inline="always")
def _mask_tile(st, mask, mb, i0, j0, rows, cols, t):
    """Add the float mask / apply the causal rule to the transposed tile (valid rows only; ``t``
    the :class:`Tiling`)."""
    nr = _gk.tile_nr(st)
    npq = t.bq // nr
    bk = t.bk
    if t.has_mask:
        lm = mask.shape[1]
        sm = mask.shape[2]
        for pn in range(npq):
            for c in range(cols):
                jj = j0 + c if sm > 1 else 0
                base = _U(pn * bk * nr + c * nr)  # unsigned: see fastla._jit.U
                for r in range(min(nr, rows - pn * nr)):
                    ii = i0 + pn * nr + r if lm > 1 else 0
                    st[base + _U(r)] += mask[mb, ii, jj]
    elif t.causal and j0 + cols - 1 > i0:
        ninf = -np.inf
        for pn in range(npq):
            for c in range(cols):
                base = _U(pn * bk * nr + c * nr)
                # key j0 + c is after query i0 + pn * nr + r for the lanes r < cut
                cut = _U(min(nr, max(0, j0 + c - i0 - pn * nr)))
                for r in range(cut):
                    st[base + r] = ninf


class Tiling(NamedTuple):
    """One call's geometry: query and key lengths, value width, the query block and key tile
    (multiples of the micro-kernel's NR and MR), and the masking in force."""

    L: int
    S: int
    Ev: int
    bq: int
    bk: int
    has_mask: bool
    causal: bool


class Inputs(NamedTuple):
    """The kernels' inputs (read-only, C-contiguous): the queries, keys and values, their packed
    forms (written by the packing phase), the float mask (a 1 x 1 x 1 stand-in without one), and
    ``(scale, 1)`` in the compute dtype."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    kp: np.ndarray
    vp: np.ndarray
    mask: np.ndarray
    consts: np.ndarray


class Stacks(NamedTuple):
    """Per stack entry (the broadcast batch and head dimensions, flattened): the index of its
    query, key, value and mask slices."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray


class Stats(NamedTuple):
    """Per query row: the running maximum and the sum of the exponentials (the first pass's
    results, which the weights pass reads)."""

    row_max: np.ndarray
    row_sum: np.ndarray


# The three phases of a call run as tasks of one loop, :func:`_run`, on the call's threads
# (``fastla._intrinsics.parallel_tasks``: no ``prange``, whose three libraries took ~0.7 s of a cold
# first call per parallel loop), each phase through the entry address of its task kernel
# (``fastla._jit.Entry``). The task kernels share one signature, ``(inp, ix, t, zero, out, stats,
# w, phase, task)`` (``phase``, unused by each kernel, is :func:`_task`'s switch), so that the loop
# is compiled once for all three; the packing was a parallel loop of its own before it became a
# phase.
PACK, FLASH, WEIGHTS, ROWS = 0, 1, 2, 3


@jit(python_wrapper=False)
def _pack_task(inp, ix, t, zero, out, stats, w, phase, task):
    """Packing phase, task ``task``: key matrix ``task`` (scaled) as MR-tall micro-panels over keys
    (the A operand of the score tile), or for ``task >= nk`` value matrix ``task - nk`` transposed
    as MR-tall panels over Ev (the A operand of the output tile). Once per call, shared by every
    query block: O(size of K and V) memory."""
    wide_vectors()
    k, v = inp.k, inp.v
    nk, S, E = k.shape
    Ev = v.shape[2]
    mr = _gk.tile_mr(inp.kp)
    # key matrix: rows = keys, depth = E; value matrix transposed: rows = Ev, depth = keys
    if task < nk:
        src, at, rs, cs, rows, depth = k.reshape(k.size), task * S * E, E, 1, S, E
        alpha, dst, off = inp.consts[0], inp.kp, task * ((S + mr - 1) // mr * mr) * E
    else:
        u = task - nk
        src, at, rs, cs, rows, depth = v.reshape(v.size), u * S * Ev, 1, Ev, Ev, S
        alpha, dst, off = inp.consts[1], inp.vp, u * ((Ev + mr - 1) // mr * mr) * S
    # fastla._gemm_kernels.pack_a's step inlined here: its own library, called through its symbol,
    # cost the cold first call more than the loop compiled in this kernel
    _gk.pack_rows(src, at, rs, cs, rows, depth, alpha, dst[:0], 0, dst, off)


#: Keys whose scores the online softmax's running max takes in one step per query lane: a tree of
#: :func:`_max2` over the group, then one update of the lane's maximum, which lives in memory (the
#: update is a masked store, and a masked store forwards nothing to the next key's load: one key a
#: step made a chain of stalled store-to-load round trips through the tile). Measured (Zen 4, f32,
#: B1 H8 E64, 2 threads, interleaved runs): L = S = 4096 191-195 -> 185-187 ms, causal 102-104 ->
#: 98-101, L = S = 1024 12.7 -> 12.2. Groups of 8 ran the same and cost the cold first call 0.25 s;
#: the sum's update is a plain store, forwarded: grouped too, it measured the same (it now runs in
#: the exponentials' loop, see below).
COLUMN_GROUP = 4  # (the tree in _flash_task reads four rows)


@jit(inline="always")
def _max2(a, b):
    """The larger of ``a`` and ``b``, a NaN ignored (NaN only when both are): the running max's rule
    (``v if v > m else m``, where a NaN ``v`` never wins), taken over a tree: the same maximum."""
    return a if (a > b) | (b != b) else b


@jit(python_wrapper=False)
def _flash_task(inp, ix, t, zero, out, stats, w, phase, task):
    """Attention phase, task ``task``: one (stack entry, query block), the online softmax over its
    key tiles into ``out`` and the block's row maxima and sums into ``stats``."""
    wide_vectors()
    # the mask borrowed: passed to a call per key tile, it was reference-counted there (an atomic on
    # a count the threads share)
    q, kp, vp, mask = inp.q, inp.kp, inp.vp, _intrinsics.borrow(inp.mask)
    qi, ki, vi, mi = ix.q, ix.k, ix.v, ix.mask
    L, S, Ev, bq, bk, has_mask, causal = t.L, t.S, t.Ev, t.bq, t.bk, t.has_mask, t.causal
    row_max, row_sum = stats.row_max, stats.row_sum
    E = q.shape[2]
    mr = _gk.tile_mr(kp)
    nr = _gk.tile_nr(kp)
    npq = bq // nr
    s_pad = (S + mr - 1) // mr * mr
    ev_pad = (Ev + mr - 1) // mr * mr
    nqb = (L + bq - 1) // bq
    ninf = -np.inf
    b = task // nqb
    i0 = (task % nqb) * bq
    rows = min(bq, L - i0)
    # empty buffers only (fastla._intrinsics.empty, no np.empty implementation to compile): np.zeros
    # and np.full compiled np.empty's implementation again inside their own (0.2-0.3 s of this
    # kernel's cold compile); separate buffers, not views of one, which cost the
    # loops below their vectorisation (measured 3x slower: LLVM cannot prove views do not overlap)
    qp = _intrinsics.empty(npq * E * nr, kp.dtype)
    _pack_queries(q, qi[b], i0, rows, npq, qp)
    st = _intrinsics.empty(npq * bk * nr, kp.dtype)
    acc = _intrinsics.empty(npq * ev_pad * nr, kp.dtype)
    m = _intrinsics.empty(bq, kp.dtype)
    l = _intrinsics.empty(bq, kp.dtype)
    alpha = _intrinsics.empty(bq, kp.dtype)
    for i in range(acc.size):
        acc[i] = zero
    for r in range(bq):
        m[r] = ninf
        l[r] = zero
    k_base = ki[b] * s_pad * E
    v_base = vi[b] * ev_pad * S
    kv_end = min(S, i0 + rows) if causal else S
    for j0 in range(0, kv_end, bk):
        cols = min(bk, kv_end - j0)
        _score_tile(qp, kp, k_base + j0 * E, st, E, cols, t)
        _mask_tile(st, mask, mi[b] if has_mask else 0, i0, j0, rows, cols, t)
        for pn in range(npq):
            sb = pn * bk * nr
            mo = _U(pn * nr)  # unsigned indices in these loops: see fastla._jit.U
            # running max over this tile's keys, per query lane, COLUMN_GROUP keys a step (the
            # rows' bases apart: indices base + r that LLVM reads as contiguous vectors, not gathers)
            for r in range(_U(nr)):
                alpha[mo + r] = m[mo + r]
            whole = cols - cols % COLUMN_GROUP
            for c in range(0, whole, COLUMN_GROUP):
                b0 = _U(sb + c * nr)
                b1, b2, b3 = b0 + _U(nr), b0 + _U(2 * nr), b0 + _U(3 * nr)
                for r in range(_U(nr)):
                    x = _max2(_max2(st[b0 + r], st[b1 + r]), _max2(st[b2 + r], st[b3 + r]))
                    alpha[mo + r] = x if x > alpha[mo + r] else alpha[mo + r]
            for c in range(whole, cols):
                base = _U(sb + c * nr)
                for r in range(_U(nr)):
                    v = st[base + r]
                    alpha[mo + r] = v if v > alpha[mo + r] else alpha[mo + r]
            # alpha <- exp(m_old - m_new); m <- m_new (0 stands in for an all -inf row)
            for r in range(_U(nr)):
                new = alpha[mo + r]
                new = new if new != ninf else zero
                alpha[mo + r] = _math.exp_nonpositive(m[mo + r] - new)
                m[mo + r] = new
            # the exponentials and their sums in one loop (the same order of additions): the sums'
            # loop of their own, a chain of dependent loads and stores of ``l`` a key, was 2.4% of
            # a call's samples; beside the exponentials it costs nothing (Zen 4, f32, B1 H8 E64, 2
            # threads, interleaved runs: L = S = 4096 185.3-185.5 -> 182.0-182.3 ms, 2048
            # 47.1-47.4 -> 46.5, causal 25.9-26.0 -> 25.5-25.6; the same bits)
            for r in range(_U(nr)):
                l[mo + r] *= alpha[mo + r]
            for c in range(cols):
                base = _U(sb + c * nr)
                for r in range(_U(nr)):
                    e = _math.exp_nonpositive(st[base + r] - m[mo + r])
                    st[base + r] = e
                    l[mo + r] += e
            ab = pn * ev_pad * nr
            for e in range(ev_pad):
                eb = _U(ab + e * nr)
                for r in range(_U(nr)):
                    acc[eb + r] *= alpha[mo + r]
            for pe in range(0, Ev, mr):
                _gk.microkernel(cols, vp, v_base + pe * S + j0 * mr, st, sb, nr, acc, ab + pe * nr, nr, True)
    for r in range(rows):
        pn = r // nr
        lr = l[r]
        inv = 1 / lr if lr != 0 else zero
        ab = pn * ev_pad * nr + (r % nr)
        for e in range(Ev):
            out[b, i0 + r, e] = acc[ab + e * nr] * inv
        row_max[b, i0 + r] = m[r]
        row_sum[b, i0 + r] = lr


@jit(python_wrapper=False)
def _weights_task(inp, ix, t, zero, out, stats, w, phase, task):
    """Weights phase, task ``task``: one (stack entry, query block) of the weights
    ``exp(s - max) / sum`` into ``w``, from the attention phase's row maxima and sums."""
    wide_vectors()
    q, kp, mask = inp.q, inp.kp, _intrinsics.borrow(inp.mask)  # borrowed: see _flash_task
    qi, ki, mi = ix.q, ix.k, ix.mask
    L, S, bq, bk, has_mask, causal = t.L, t.S, t.bq, t.bk, t.has_mask, t.causal
    row_max, row_sum = stats.row_max, stats.row_sum
    E = q.shape[2]
    mr = _gk.tile_mr(kp)
    nr = _gk.tile_nr(kp)
    npq = bq // nr
    s_pad = (S + mr - 1) // mr * mr
    nqb = (L + bq - 1) // bq
    b = task // nqb
    i0 = (task % nqb) * bq
    rows = min(bq, L - i0)
    qp = _intrinsics.empty(npq * E * nr, kp.dtype)  # two buffers, not views of one (see _flash_task)
    _pack_queries(q, qi[b], i0, rows, npq, qp)
    st = _intrinsics.empty(npq * bk * nr, kp.dtype)
    k_base = ki[b] * s_pad * E
    kv_end = min(S, i0 + rows) if causal else S
    for r in range(rows):
        for j in range(_U(kv_end), _U(S)):  # unsigned indices: see fastla._jit.U
            w[b, i0 + r, j] = zero
    for j0 in range(0, kv_end, bk):
        cols = min(bk, kv_end - j0)
        _score_tile(qp, kp, k_base + j0 * E, st, E, cols, t)
        _mask_tile(st, mask, mi[b] if has_mask else 0, i0, j0, rows, cols, t)
        for r in range(rows):
            lr = row_sum[b, i0 + r]
            inv = 1 / lr if lr != 0 else zero
            mx = row_max[b, i0 + r]
            base = _U((r // nr) * bk * nr + r % nr)
            for c in range(_U(cols)):
                w[b, i0 + r, _U(j0) + c] = _math.exp(st[base + c * _U(nr)] - mx) * inv


@jit(python_wrapper=False)
def _rows_task(inp, ix, t, zero, out, stats, w, phase, task):
    """Row phase, task ``task``: a group of ``t.bq`` query rows (a decoding step's, say) straight
    from the unpacked keys and values, with no packing phase and no query block to fill: their scores
    (a dot product per key and row, each key read once for the group), their softmax, the weighted
    sums of the value rows (each value row read once for the group), and their weights when asked."""
    wide_vectors()
    q, k, v, mask = inp.q, inp.k, inp.v, _intrinsics.borrow(inp.mask)  # borrowed: see _flash_task
    L, S, Ev, G, has_mask, causal = t.L, t.S, t.Ev, t.bq, t.has_mask, t.causal
    E = q.shape[2]
    ngroups = (L + G - 1) // G
    b = task // ngroups
    i0 = (task % ngroups) * G
    rows = min(G, L - i0)
    ninf = -np.inf
    scale, one = inp.consts[0], inp.consts[1]
    qf, kf, vf = q.reshape(q.size), k.reshape(k.size), v.reshape(v.size)
    # unsigned offsets and indices: see fastla._jit.U
    q0 = _U((ix.q[b] * L + i0) * E)
    k0 = _U(ix.k[b] * S * E)
    v0 = _U(ix.v[b] * S * Ev)
    uS, uE, uEv = _U(S), _U(E), _U(Ev)
    kv_end = _U(min(S, i0 + rows) if causal else S)  # the group's last row sees the most keys
    s = _intrinsics.empty(rows * S, q.dtype)
    acc = _intrinsics.empty(rows * Ev, q.dtype)
    four = kv_end - kv_end % _U(4)
    for jq in range(four // _U(4)):  # four keys a pass: each query element loaded once for the four
        j = jq * _U(4)
        k1 = k0 + j * uE
        k2 = k1 + uE
        k3 = k2 + uE
        k4 = k3 + uE
        for g in range(_U(rows)):
            qg = q0 + g * uE
            d0 = zero
            d1 = zero
            d2 = zero
            d3 = zero
            for e in range(uE):
                x = qf[qg + e]
                d0 += x * kf[k1 + e]
                d1 += x * kf[k2 + e]
                d2 += x * kf[k3 + e]
                d3 += x * kf[k4 + e]
            sg = g * uS + j
            s[sg] = d0 * scale
            s[sg + _U(1)] = d1 * scale
            s[sg + _U(2)] = d2 * scale
            s[sg + _U(3)] = d3 * scale
    for j in range(four, kv_end):
        kj = k0 + j * uE
        for g in range(_U(rows)):
            qg = q0 + g * uE
            dot = zero
            for e in range(uE):
                dot += qf[qg + e] * kf[kj + e]
            s[g * uS + j] = dot * scale
    for g in range(_U(rows)):
        i = i0 + g
        sg = g * uS
        end = _U(min(S, i + 1)) if causal else kv_end
        if has_mask:
            mb = ix.mask[b]
            ii = i if mask.shape[1] > 1 else 0
            if mask.shape[2] > 1:
                for j in range(end):
                    s[sg + j] += mask[mb, ii, j]
            else:
                for j in range(end):
                    s[sg + j] += mask[mb, ii, 0]
        m = s[sg]  # end >= 1 (S >= 1; a causal row sees its own key); typed as the data, not -inf
        for j in range(end):
            m = s[sg + j] if s[sg + j] > m else m
        m = m if m != ninf else zero  # a fully masked row: every exponential is 0
        total = zero
        for j in range(end):
            p = _math.exp_nonpositive(s[sg + j] - m)
            s[sg + j] = p
            total += p
        inv = one / total if total != 0 else zero
        for j in range(end):
            s[sg + j] *= inv
        for j in range(end, kv_end):  # keys after a causal row's own: weight 0
            s[sg + j] = zero
    for e in range(_U(rows * Ev)):
        acc[e] = zero
    for jq in range(four // _U(4)):  # four value rows a pass: each accumulator loaded once for the four
        j = jq * _U(4)
        v1 = v0 + j * uEv
        v2 = v1 + uEv
        v3 = v2 + uEv
        v4 = v3 + uEv
        for g in range(_U(rows)):
            sg = g * uS + j
            p0, p1, p2, p3 = s[sg], s[sg + _U(1)], s[sg + _U(2)], s[sg + _U(3)]
            ag = g * uEv
            for e in range(uEv):
                acc[ag + e] += p0 * vf[v1 + e] + p1 * vf[v2 + e] + p2 * vf[v3 + e] + p3 * vf[v4 + e]
    for j in range(four, kv_end):
        vj = v0 + j * uEv
        for g in range(_U(rows)):
            p = s[g * uS + j]
            ag = g * uEv
            for e in range(uEv):
                acc[ag + e] += p * vf[vj + e]
    for g in range(rows):
        for e in range(uEv):
            out[b, i0 + g, e] = acc[_U(g) * uEv + e]
    if w.shape[0]:
        for g in range(rows):
            for j in range(kv_end):
                w[b, i0 + g, j] = s[_U(g) * uS + j]
            for j in range(kv_end, uS):
                w[b, i0 + g, j] = zero


@jit
def _task(inp, ix, t, zero, out, stats, w, phase, task):
    """Task ``task`` of phase ``phase``. The stand-in :func:`_run` is typed with: compiled, each
    phase's kernel runs through its own address and this is never linked (it is what runs with the
    JIT off)."""
    if phase == PACK:
        _pack_task(inp, ix, t, zero, out, stats, w, phase, task)
    elif phase == FLASH:
        _flash_task(inp, ix, t, zero, out, stats, w, phase, task)
    elif phase == ROWS:
        _rows_task(inp, ix, t, zero, out, stats, w, phase, task)
    else:
        _weights_task(inp, ix, t, zero, out, stats, w, phase, task)


@jit
def _run(inp, ix, t, zero, out, stats, w, phase, at, tasks, threads):
    """The ``tasks`` tasks of one phase on ``threads`` threads, each through the entry address
    ``at`` of the phase's task kernel (None with the JIT off: :func:`_task`)."""
    _intrinsics.parallel_tasks(at, _task, (inp, ix, t, zero, out, stats, w, phase), tasks, threads)


_c = _intrinsics.kernel_input


def _task_examples(dtype):
    """Example arguments of the task kernels for ``dtype``, typed as :func:`_sdpa_numba` passes
    them."""
    flat, cube = np.empty(1, dtype), np.empty((1, 1, 1), dtype)
    index = _c(np.zeros(1, np.intp))
    ix = Stacks(index, index, index, index)
    t = Tiling(1, 1, 1, 1, 1, True, True)
    stats = Stats(np.empty((1, 1), dtype), np.empty((1, 1), dtype))
    inp = Inputs(_c(cube), _c(cube), _c(cube), flat, flat, _c(cube), flat)
    return (inp, ix, t, dtype.type(0), cube, stats, cube, 0, 0)


#: The task kernels' entry: ``TASK.address(dtype, impl)`` for ``impl`` one of the three phase
#: kernels (each compiled once in its own library, none of them again inside :func:`_run`'s).
TASK = _jit.Entry(_task, _task_examples)


def _packed_buffers(dt, nk, nv):
    """The packed keys (``nk`` elements) and values (``nv``): views of this Python thread's
    workspace, kept between calls (``fastla._gemm_kernels.workspace``), when both fit in
    :data:`WORKSPACE_BYTES`, else allocated for the call. Allocated per call, they came from fresh
    pages whenever the allocator had given the last call's back to the system (glibc trims the
    heap's top): 8 heads of 2048 keys and values (E = 64, float32, 8 MiB packed) took 4.3 ms to
    pack into fresh pages, 1.4 ms into the kept ones, of a 64-query call of 6.5 -> 3.2 ms."""
    nk16 = -(-nk // 16) * 16  # the values start 64-byte aligned too
    if (nk16 + nv) * dt.itemsize > WORKSPACE_BYTES:
        return np.empty(nk, dt), np.empty(nv, dt)
    work = _gk.workspace(dt, nk16 + nv, "attention")
    return work[:nk], work[nk16 : nk16 + nv]


def _phase(kernel, dt, args, phase, tasks, threads):
    """Run ``tasks`` tasks of ``phase`` with ``kernel`` on ``threads`` threads."""
    _run(*args, phase, TASK.address(dt, kernel), tasks, threads)


_UNUSED = {}


def _unused(dt):
    """Per dtype, the arguments a call leaves unused, made once (they were 1.5 us of a tiny call's
    set-up): an empty array (the row kernel's packed keys and values), empty row statistics (its
    :class:`Stats`) and the zero additive mask of a call without one (read-only, as ``_c`` types
    it). Nothing writes to them: the empty ones have no elements, the mask is read-only (two
    threads may both make a dtype's: either set serves)."""
    got = _UNUSED.get(dt)
    if got is None:
        none = np.empty(0, dt)
        got = _UNUSED[dt] = (none, Stats(none.reshape(0, 0), none.reshape(0, 0)), _c(np.zeros((1, 1, 1), dt)))
    return got


@_OP.register("numba", needs_numba=True)
def _sdpa_numba(q, k, v, mask, plan):
    """Flash-style tiles: online softmax, micro-kernel products, no L x S buffer."""
    L, S, E, Ev = plan.dims
    dt = q.dtype
    nb = plan.q.size
    out = np.empty((nb, L, Ev), dt)
    weights = np.empty((nb, L, S), dt) if plan.weights else None
    if nb == 0 or L == 0 or (Ev == 0 and weights is None):
        return _result(out, weights, plan)
    if S == 0:  # no keys: every row is fully masked
        out[:] = 0
        return _result(out, weights, plan)
    blk = _gk.BLOCKING[dt]
    mr, nr = blk.MR, blk.NR
    few = L < FEW_ROWS
    if plan.causal and S > L and not few and weights is None:
        # top-left causal: no row attends to a key past the L-th, so the flash tiles never read them
        # and packing them was wasted work (8 heads, L = 48 against 1024 keys, E = 64, float32:
        # 0.42 ms, four times the row kernel's 0.094 ms); the same tiles on the first L keys
        k, v, S = k[:, :L], v[:, :L], L
    q, k, v = _c(q), _c(k), _c(v)
    unused, no_stats, no_mask = _unused(dt)
    threads = _jit.threads_for(nb * L * S * E, SERIAL_WORK)
    if few:  # the row kernel: no packed operands, no row statistics for a weights pass
        # rows per task: at most ROW_GROUP, and a task for each thread where the rows allow
        groups = max(-(-L // ROW_GROUP), min(L, -(-threads // nb)))
        bq = -(-L // groups)
        kp = vp = unused
        stats = no_stats
    else:
        bq = nr * max(1, QUERY_BLOCK // nr)
        s_pad = -(-S // mr) * mr
        ev_pad = -(-Ev // mr) * mr
        kp, vp = _packed_buffers(dt, k.shape[0] * s_pad * E, v.shape[0] * ev_pad * S)
        stats = Stats(np.empty((nb, L), dt), np.empty((nb, L), dt))
    has_mask = mask is not None
    mask = _c(mask) if has_mask else no_mask
    mi = _c(plan.mask if has_mask else plan.q)
    bk = mr * max(1, round(KEY_TILE / mr))
    ix = Stacks(_c(plan.q), _c(plan.k), _c(plan.v), mi)
    t = Tiling(L, S, Ev, bq, bk, has_mask, bool(plan.causal))
    inp = Inputs(q, k, v, kp, vp, mask, np.array([plan.scale, 1], dt))
    w = weights if weights is not None else out[:0]
    args = (inp, ix, t, dt.type(0), out, stats, w)
    if few:
        _phase(_rows_task, dt, args, ROWS, nb * -(-L // t.bq), threads)
        return _result(out, weights, plan)
    _phase(_pack_task, dt, args, PACK, k.shape[0] + v.shape[0], threads)
    blocks = nb * -(-L // bq)
    _phase(_flash_task, dt, args, FLASH, blocks, threads)
    if weights is not None:
        _phase(_weights_task, dt, args, WEIGHTS, blocks, threads)
    return _result(out, weights, plan)
