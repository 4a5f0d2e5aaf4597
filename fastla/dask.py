"""fastla's kernels on Dask arrays: past one process, past one machine.

Pass ``dask.array.Array`` inputs to the ordinary public functions (``fastla.matmul``,
``fastla.solve``, ``fastla.softmax``, ``fastla.log_softmax``, ``fastla.cross_entropy``,
``fastla.cosine_similarity``, ``fastla.cosine_topk``, ``fastla.power_iteration``): the call path
(:func:`fastla._registry.public`) sends them here, and each chunk runs the same public function on
NumPy blocks, so ``backend=`` (and ``auto``'s per-chunk choice) means what it means in memory.
NumPy inputs never come here. Results are lazy dask arrays, except ``power_iteration``, whose loop
runs on the client (one small graph per sweep) and returns NumPy arrays. Nothing is scheduled by
fastla: use any Dask scheduler (synchronous, threads, ``dask.distributed``).

Chunking rules:

* ``matmul``: every output block is ``sum_k a[i, k] @ b[k, j]``, one fastla GEMM per block pair,
  the partial products summed by a tree reduction (never concatenated along k).
* ``solve``: stacks of systems chunked along the stack dimensions, one task per chunk of systems;
  the matrix axes (and b's row axis) in one chunk.
* ``softmax`` / ``log_softmax`` / ``cross_entropy`` / ``cosine_*`` need the reduced axis (the
  softmax axes, the class axis, the feature axis) in one chunk.
* An axis that must be one chunk and is split is rechunked automatically with a
  :class:`RechunkWarning` saying what that moves; ``rechunk=False`` raises ``ValueError`` instead.
* ``cosine_similarity(X)`` (``Y=None``) computes the upper block triangle and mirrors it (exactly
  symmetric, unit diagonal, as in memory); ``cosine_topk`` scores each (query block, corpus chunk)
  pair with the fused top-k kernel and merges the candidate lists by a tree reduction, indices
  offset to global corpus rows: a task holds O(n_queries_block * k + chunk), never the scores.

Errors: shape, axis and argument errors are raised when the graph is built, with the in-memory
messages; errors that need the data (a singular system, an out-of-range class index) are raised by
``compute()``, with the in-memory exception class.

Threads: inside a ``dask.distributed`` worker, each task caps fastla's Numba threads and the BLAS
threads at the worker's thread count (applied once per worker process), so that
``LocalCluster(n_workers=2, threads_per_worker=1)`` on 2 cores runs 2 single-threaded kernels, not
2 x 2 threads fighting for the cores. That configuration (one worker process per core, one thread
each) is the recommended one: fastla's kernels release the GIL, but one process per core also keeps
each worker's BLAS and OpenMP pools to one thread. On the local schedulers nothing is changed.
In-process workers (``LocalCluster(processes=False)``) share the client's process, so the caps
would apply to the client's own calls too: they are applied only in a process that hosts one
worker and no other (``processes=True``, the default, or ``dask worker``).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
import warnings

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

import fastla
from fastla import _config, _validate
from fastla import eigen as _eigen
from fastla import lu as _lu
from fastla import similarity as _sim

# ``fastla.matmul`` and ``fastla.softmax`` are the functions; their modules by name:
_mm = importlib.import_module("fastla.matmul")
_sm = importlib.import_module("fastla.softmax")

__all__ = ["RechunkWarning", "dispatch", "explain", "limit_worker_threads"]


class RechunkWarning(UserWarning):
    """A reduced axis was split into chunks and fastla rechunked it (see the message for the cost)."""


# --------------------------------------------------------------------------- worker threads

_limited_pid = None
_blas_limit = None  # keeps the threadpoolctl limit alive for the worker's life


def limit_worker_threads():
    """In a ``dask.distributed`` worker: cap Numba and BLAS threads at the worker's thread count.

    Runs at the start of every fastla task; does its work once per worker process. Outside a
    worker it does nothing.
    """
    global _limited_pid, _blas_limit
    if _limited_pid == os.getpid():
        return
    _limited_pid = os.getpid()
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a distributed worker
        return
    from distributed import Worker
    from threadpoolctl import threadpool_limits

    from fastla import _jit

    if len(Worker._instances) != 1:  # in-process workers: the client's process, leave it alone
        return
    n = max(1, int(worker.state.nthreads))
    if _jit.NUMBA_AVAILABLE:
        fastla.set_num_threads(min(n, _jit.max_threads()))
    _blas_limit = threadpool_limits(limits=n, user_api="blas")


def _task(fn):
    """A chunk function: thread caps first (see :func:`limit_worker_threads`)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        limit_worker_threads()
        return fn(*args, **kwargs)

    return run


# --------------------------------------------------------------------------- shared helpers


def _backend(backend):
    """The backend the chunks run: the caller's setting now (workers do not see the client's)."""
    return _config.get_backend() if backend is None else backend


def _as_dask(x, name):
    if not isinstance(x, da.Array):
        x = da.asarray(np.asarray(x))
    if any(math.isnan(s) for s in x.shape):
        raise ValueError(
            f"{name} has unknown chunk sizes (shape {x.shape}); call .compute_chunk_sizes() first"
        )
    return x


def _no_out(out, fname):
    if out is not None:
        raise TypeError(f"{fname}: out= is not supported for dask arrays (they are immutable)")


def _caller_level():
    """``stacklevel`` for a warning: the first frame outside fastla (the user's call)."""
    package = os.path.dirname(os.path.abspath(fastla.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _mib(nbytes):
    return f"{nbytes / 2**20:.1f} MiB"


def _one_chunk(x, axes, fname, rechunk, what="the reduced axis", name="x"):
    """``x`` with each of ``axes`` in one chunk: rechunked with a warning, or ValueError. ``what``
    names the axes in the messages, ``name`` the array in the rechunk call they suggest."""
    split = [ax for ax in axes if len(x.chunks[ax]) > 1]
    if not split:
        return x
    parts = f"ax{'es' if len(split) > 1 else 'is'} " + ", ".join(
        f"{ax} ({len(x.chunks[ax])} chunks)" for ax in split
    )
    if not rechunk:
        raise ValueError(
            f"{fname}: {what} must be one chunk, and the dask array splits {parts}; rechunk it "
            f"({name}.rechunk({{{', '.join(f'{ax}: -1' for ax in split)}}})) or pass rechunk=True"
        )
    spec = {ax: (-1 if ax in split else "auto") for ax in range(x.ndim)}
    y = x.rechunk(spec)
    biggest = math.prod(max(c) for c in y.chunks) * x.dtype.itemsize if x.size else 0
    warnings.warn(
        f"{fname}: {what} must be one chunk, and the dask array splits {parts}; rechunking it "
        f"moves the whole array ({_mib(x.nbytes)}) once, blocks of up to {_mib(biggest)}. Rechunk "
        "before the call to choose the layout, or pass rechunk=False to raise instead.",
        RechunkWarning,
        stacklevel=_caller_level(),
    )
    return y


def _meta_dtype(fn, *xs, **kwargs):
    """Result dtype of ``fn`` on tiny arrays of the inputs' dtypes (raising its dtype errors now)."""
    tiny = [np.ones((1,) * x.ndim, x.dtype) for x in xs]
    return np.asarray(fn(*tiny, **kwargs)).dtype


# --------------------------------------------------------------------------- matmul


@_task
def _matmul_block(x, y, backend, keep_k, acc):
    if acc is not None:  # float16 partial products, computed and summed in float32
        x, y = x.astype(acc), y.astype(acc)
    r = fastla.matmul(x, y, backend=backend)
    return r[..., None, :] if keep_k else r


def matmul(a, b, /, out=None, *, backend=None):
    _no_out(out, "matmul")
    a = _as_dask(a, "matmul: a")
    b = _as_dask(b, "matmul: b")
    _mm.result_shape(a.shape, b.shape)  # NumPy's shape errors, now
    dtype = np.result_type(a.dtype, b.dtype)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    nd = max(a2.ndim, b2.ndim)
    a2 = a2[(None,) * (nd - a2.ndim)]
    b2 = b2[(None,) * (nd - b2.ndim)]
    a2, b2 = da.core.unify_chunks(a2, tuple(range(nd)), b2, (*range(nd - 2), nd - 1, nd))[1]
    keep_k = len(a2.chunks[-1]) > 1
    # partial products over chunks of k are summed in float32 for float16 (NumPy's float16 product
    # accumulates in float32 and rounds once; float16 partial sums lost 3x its accuracy)
    acc = np.promote_types(dtype, np.float32) if keep_k and dtype == np.float16 else None
    part = dtype if acc is None else acc  # the blocks' dtype
    be = _backend(backend)
    # indices: stack 0..nd-3, m = nd-2, k = nd-1, n = nd
    out_ind = (*range(nd - 1), nd) if not keep_k else tuple(range(nd + 1))
    res = da.blockwise(
        _matmul_block,
        out_ind,
        a2,
        tuple(range(nd)),
        b2,
        (*range(nd - 2), nd - 1, nd),
        backend=be,
        keep_k=keep_k,
        acc=acc,
        adjust_chunks={nd - 1: 1} if keep_k else None,
        dtype=part,
        concatenate=True,
        meta=np.empty((0,) * len(out_ind), part),
    )
    if keep_k:
        res = res.sum(axis=-2, dtype=part).astype(dtype)
    if a.ndim == 1:
        res = res[..., 0, :]
    if b.ndim == 1:
        res = res[..., 0]
    return res


# --------------------------------------------------------------------------- solve


@_task
def _solve_block(x, y, backend):
    return fastla.solve(x, y, backend=backend)


def solve(a, b, *, backend=None, rechunk=True):
    a = _as_dask(a, "solve: a")
    b = _as_dask(b, "solve: b")
    stack, vector = _lu.linsolve_shape(a, b)
    dtype = _meta_dtype(fastla.solve, a, b)
    # each system in one task: a's matrix axes and b's row axis in one chunk (the stacks chunked)
    a = _one_chunk(a, (a.ndim - 2, a.ndim - 1), "solve", rechunk, "each matrix axis of a", "a")
    b = _one_chunk(b, (b.ndim - (1 if vector else 2),), "solve", rechunk, "the row axis of b", "b")
    ns = len(stack)
    row, col, rhs = ns, ns + 1, ns + 2
    a_ind = (*range(ns - (a.ndim - 2), ns), row, col)
    if vector:
        b_ind, out_ind = (col,), (*range(ns), row)
    else:
        b_ind, out_ind = (*range(ns - (b.ndim - 2), ns), col, rhs), (*range(ns), row, rhs)
    return da.blockwise(
        _solve_block,
        out_ind,
        a,
        a_ind,
        b,
        b_ind,
        backend=_backend(backend),
        dtype=dtype,
        concatenate=True,
        meta=np.empty((0,) * len(out_ind), dtype),
    )


# --------------------------------------------------------------------------- softmax family


@_task
def _softmax_block(x, fn, axis, backend):
    return fn(x, axis, backend=backend)


def _softmax(fn, fname, x, axis=-1, *, out=None, backend=None, rechunk=True):
    _no_out(out, fname)
    x = _as_dask(x, f"{fname}: x")
    axes = _validate.normalize_axes(axis, x.ndim) if x.ndim else ()
    dtype = _meta_dtype(fn, x, axis=axis)
    x = _one_chunk(x, axes, fname, rechunk)
    return x.map_blocks(
        _softmax_block,
        fn=fn,
        axis=axis,
        backend=_backend(backend),
        dtype=dtype,
        meta=np.empty((0,) * x.ndim, dtype),
    )


softmax = functools.partial(_softmax, fastla.softmax, "softmax")
log_softmax = functools.partial(_softmax, fastla.log_softmax, "log_softmax")


@_task
def _ce_block(x, t, backend, **kwargs):
    return fastla.cross_entropy(x, t, axis=-1, reduction="none", backend=backend, **kwargs)


def _div_or_nan(s, n, dtype):
    """``s / n`` as the in-memory mean computes it (NaN for 0 / 0), in the loss's ``dtype``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return dtype.type(s / n)


def cross_entropy(
    logits,
    target,
    weight=None,
    *,
    axis=-1,
    reduction="mean",
    label_smoothing=0.0,
    ignore_index=-100,
    backend=None,
    rechunk=True,
):
    x = _as_dask(logits, "cross_entropy: logits")
    t = _as_dask(target, "cross_entropy: target")
    ax, kind, smoothing, ignore_index = _sm.check_ce(x, t, axis, reduction, label_smoothing, ignore_index)
    weight = _sm.check_weight(None if weight is None else np.asarray(weight), x.shape[ax])
    tiny_t = np.zeros((1,) * (x.ndim - 1) if kind == "index" else (1,) * x.ndim, t.dtype)
    dtype = fastla.cross_entropy(np.ones((1,) * x.ndim, x.dtype), tiny_t, reduction="none").dtype
    x = _one_chunk(
        da.moveaxis(x, ax, -1), (x.ndim - 1,), "cross_entropy", rechunk, "the class axis", "logits"
    )
    t = da.moveaxis(t, ax, -1) if kind == "prob" else t
    rows = tuple(range(x.ndim - 1))
    cls = x.ndim - 1
    loss = da.blockwise(
        _ce_block,
        rows,
        x,
        (*rows, cls),
        t,
        (*rows, cls) if kind == "prob" else rows,
        backend=_backend(backend),
        weight=weight,
        label_smoothing=smoothing,
        ignore_index=ignore_index,
        dtype=dtype,
        concatenate=True,
        meta=np.empty((0,) * len(rows), dtype),
    )
    if reduction == "none":
        return loss
    # float16 losses summed in float32, as the in-memory reductions sum the float32 losses they
    # compute float16 logits in, then rounded once
    acc = np.promote_types(dtype, np.float32)
    total = loss.sum(dtype=acc)
    if reduction == "sum":
        return total.astype(dtype)
    if kind == "prob":
        return loss.mean(dtype=acc).astype(dtype) if loss.size else da.from_array(np.array(np.nan, dtype))
    if weight is None:
        count = (t != ignore_index).sum()  # the in-memory mean divides by an intp count, so do we
    else:  # PyTorch's weighted mean: by the sum of the non-ignored entries' class weights
        count = t.map_blocks(_sm.entry_weights, ignore_index, weight, dtype=np.float64).sum()
    return da.blockwise(
        functools.partial(_div_or_nan, dtype=dtype),
        (),
        total,
        (),
        count,
        (),
        dtype=dtype,
        meta=np.empty((), dtype),
    )


# --------------------------------------------------------------------------- cosine similarity


def _features_one_chunk(x, fname, rechunk):
    x = x[None, :] if x.ndim == 1 else x
    return _one_chunk(x, (1,), fname, rechunk, "the feature axis")


@_task
def _cos_pair(x, y, backend):
    return fastla.cosine_similarity(x, y, backend=backend)


@_task
def _cos_self(x, backend):
    return fastla.cosine_similarity(x, backend=backend)


def _transposed(c):
    return np.ascontiguousarray(c.T)


def cosine_similarity(X, Y=None, dense_output=True, *, out=None, backend=None, rechunk=True):
    # dense_output: scikit-learn's, for sparse operands; dask arrays are dense, the result too
    _no_out(out, "cosine_similarity")
    same = Y is None or Y is X
    x = _as_dask(X, "cosine_similarity: X")
    y = x if same else _as_dask(Y, "cosine_similarity: Y")
    _sim.check_pair(x, y)
    dtype = _meta_dtype(fastla.cosine_similarity, x, y)
    squeeze = (x.ndim == 1, y.ndim == 1)
    x = _features_one_chunk(x, "cosine_similarity", rechunk)
    be = _backend(backend)
    if same:
        res = _symmetric_blocks(x, be, dtype)
    else:
        y = _features_one_chunk(y, "cosine_similarity", rechunk)
        res = da.blockwise(
            _cos_pair,
            "ij",
            x,
            "ik",
            y,
            "jk",
            backend=be,
            dtype=dtype,
            concatenate=True,
            meta=np.empty((0, 0), dtype),
        )
    if squeeze[1]:
        res = res[:, 0]
    if squeeze[0]:
        res = res[0]
    return res


def _symmetric_blocks(x, backend, dtype):
    """X against itself: the upper block triangle computed, the lower its mirror image."""
    name = "fastla-cosine-self-" + tokenize(x, backend)
    nb = len(x.chunks[0])
    pair = functools.partial(_cos_pair, backend=backend)
    own = functools.partial(_cos_self, backend=backend)
    dsk = {}
    for i in range(nb):
        dsk[(name, i, i)] = (own, (x.name, i, 0))
        for j in range(i + 1, nb):
            dsk[(name, i, j)] = (pair, (x.name, i, 0), (x.name, j, 0))
            dsk[(name, j, i)] = (_transposed, (name, i, j))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x])
    return da.Array(graph, name, chunks=(x.chunks[0], x.chunks[0]), dtype=dtype, meta=np.empty((0, 0), dtype))


# --------------------------------------------------------------------------- cosine top-k


@_task
def _topk_chunk(q, c, offset, k, batch_size, backend):
    s, i = fastla.cosine_topk(q, c, min(k, c.shape[0]), batch_size=batch_size, backend=backend)
    return s, i + offset


def _merge_topk(parts, k):
    """Top-k of candidate lists in corpus order, each sorted by the kernel's rule (decreasing score,
    ties by lower index, NaN last): a stable sort by decreasing score keeps that rule, as equal
    scores stay in corpus order and NumPy sorts NaN last. The sorted runs make NumPy's stable sort
    a merge: 500 queries x 10 lists of 100 in 15 ms, 100 x 32 lists of 1000 in 44, where a lexsort
    by (NaN, -score, index) took 43 and 334 ms (Zen 5)."""
    s = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def _part(pair, which):
    return pair[which]


def cosine_topk(queries, corpus, k, *, batch_size=None, backend=None, rechunk=True, split_every=8):
    """Lazy ``(scores, indices)``: compute both together (``dask.compute(scores, indices)``)."""
    q = _as_dask(queries, "cosine_topk: queries")
    c = _as_dask(corpus, "cosine_topk: corpus")
    _, k, batch_size = _sim.check_topk(q, c, k, batch_size)
    dtype = _meta_dtype(lambda a, b: fastla.cosine_topk(a, b, 1)[0], q, c)
    if split_every < 2:
        raise ValueError(f"cosine_topk: split_every must be >= 2, got {split_every}")
    vector = q.ndim == 1
    q = _features_one_chunk(q, "cosine_topk", rechunk)
    c = _features_one_chunk(c, "cosine_topk", rechunk)
    be = _backend(backend)
    token = tokenize(q, c, k, batch_size, be, split_every)
    score_fn = functools.partial(_topk_chunk, k=k, batch_size=batch_size, backend=be)
    merge = functools.partial(_merge_topk, k=k)
    starts = np.cumsum((0, *c.chunks[0][:-1]))
    dsk = {}
    finals = []
    for qi in range(len(q.chunks[0])):
        level = [f"fastla-topk-score-{token}"]
        keys = []
        for cj, start in enumerate(starts):
            key = (level[0], qi, cj)
            dsk[key] = (score_fn, (q.name, qi, 0), (c.name, cj, 0), int(start))
            keys.append(key)
        depth = 0
        while len(keys) > 1 or depth == 0:  # at least one merge: it also orders a single chunk's list
            depth += 1
            name = f"fastla-topk-merge{depth}-{token}"
            keys_next = []
            for g in range(0, len(keys), split_every):  # groups in corpus order, as _merge_topk needs
                key = (name, qi, g // split_every)
                dsk[key] = (merge, keys[g : g + split_every])
                keys_next.append(key)
            keys = keys_next
        finals.append(keys[0])
    arrays = []
    for which, dt in ((0, dtype), (1, np.dtype(np.intp))):
        name = f"fastla-topk-{'scores' if which == 0 else 'indices'}-{token}"
        layer = {(name, qi, 0): (_part, key, which) for qi, key in enumerate(finals)}
        graph = HighLevelGraph.from_collections(name, {**dsk, **layer}, dependencies=[q, c])
        arr = da.Array(graph, name, chunks=(q.chunks[0], (k,)), dtype=dt, meta=np.empty((0, 0), dt))
        arrays.append(arr[0] if vector else arr)
    return tuple(arrays)


# --------------------------------------------------------------------------- power iteration


def power_iteration(
    a,
    k=1,
    *,
    tol=None,
    maxiter=None,
    v0=None,
    symmetric=None,
    seed=None,
    return_eigenvectors=True,
    backend=None,
):
    """Eager: the matrix is persisted once, each sweep computes ``A V`` as one small graph."""
    a = _as_dask(a, "power_iteration: a")
    dtype = _eigen.check_options(a.shape, a.dtype, k, tol, maxiter)
    a = a.astype(dtype).persist()
    if not bool(da.isfinite(a).all().compute()):
        raise ValueError("array must not contain infs or NaNs")
    if symmetric is None:
        atol = _eigen.symmetry_atol(dtype, float(abs(a).max().compute()))
        symmetric = bool((abs(a - a.T) <= atol).all().compute())
    start, maxiter = _eigen.start_block(a.shape[0], dtype, k, maxiter, v0, symmetric, seed)
    be = _backend(backend)

    def matmat(m, v):
        return matmul(m, v, backend=be).compute()

    def matvec(m, v, w):
        w[:] = matmat(m, v)
        return float(v @ w), float(w @ w)

    tol = _eigen.default_tol(dtype, tol, a.shape[0])
    return _eigen.run(a, k, float(tol), maxiter, start, symmetric, return_eigenvectors, matvec, matmat)


# --------------------------------------------------------------------------- dispatch


_FUNCTIONS = {
    "matmul": matmul,
    "solve": solve,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "cross_entropy": cross_entropy,
    "cosine_similarity": cosine_similarity,
    "cosine_topk": cosine_topk,
    "power_iteration": power_iteration,
}


#: Operations without a dask form, and why.
NOT_ON_DASK = {
    "lu_factor": "the factors of a chunked matrix are not chunk-wise (pivoting couples all rows)",
    "lu_solve": "it needs lu_factor's factors, which have no dask form",
    "scaled_dot_product_attention": "every query attends to every key: chunking L or S couples the "
    "chunks through the softmax (map a fastla call over the batch chunks with map_blocks instead)",
}


def dispatch(op_name, *args, **kwargs):
    """Run ``op_name`` on arguments of which at least one is a dask array."""
    fn = _FUNCTIONS.get(op_name)
    if fn is None:
        why = NOT_ON_DASK.get(op_name, "no dask form")
        raise TypeError(
            f"{op_name}: dask arrays are not supported ({why}; supported: {', '.join(sorted(_FUNCTIONS))}); "
            "call .compute() on the inputs, or map the function over the chunks with map_blocks"
        )
    return fn(*args, **kwargs)


def explain(op, backend=None):
    """``(impl, reason)`` for a call with dask arrays: what each chunk runs."""
    if op.name not in _FUNCTIONS:
        dispatch(op.name)
    be = _backend(backend)
    how = (
        "auto chooses per chunk (fastla.explain on one chunk says which)"
        if be == "auto"
        else f"backend {be!r} on every chunk"
    )
    return "dask", f"lazy dask graph: each chunk runs fastla.{op.name}, {how}"
