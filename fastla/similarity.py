"""Cosine similarity: ``fastla.cosine_similarity`` (the n x m matrix) and ``fastla.cosine_topk``
(the k most similar corpus rows per query, without the n x m matrix).

Semantics follow ``sklearn.metrics.pairwise.cosine_similarity``: rows are vectors, a zero-norm row
has similarity 0 with everything (never NaN, never a warning), ``Y=None`` compares ``X`` with
itself. Choices of ours, written down:

* ``Y=None`` (or ``Y is X``) gives an *exactly* symmetric matrix with a diagonal of exactly 1 for
  every row of finite, non-zero norm (rounding would otherwise leave 0.99999994 there).
* Two 1-D vectors give a Python float; one 1-D and one 2-D operand give a 1-D result.
* NaN propagates (a row holding NaN or inf gives NaN similarities, as the normalise-then-``@``
  formula does); sklearn instead refuses non-finite input.
* Integer and bool input is converted to float64 (as sklearn does); float32 stays float32 (the norms
  of float32 rows are accumulated in float64); float16 computes in float32; a float wider than
  float64 (``np.longdouble``) computes in float64, as sklearn and ``scipy.spatial.distance`` do.
* ``cosine_topk`` keeps a float16 corpus searched in float32 as float16 in memory: the ``numba``
  kernels read it as float32 values as they go (exact, half the memory traffic of a float32 corpus,
  and no float32 copy of it); the results equal those over ``corpus.astype(np.float32)`` bit for
  bit. The ``numpy`` and ``loop`` impls convert it first.
* Exact over the whole float range: a row whose norm (or inverse norm) would leave the dtype's
  comfortable range (subnormal rows, rows near the overflow threshold) is first scaled by a power of
  two, ``2^-e`` with ``2^e`` its largest magnitude. That is exact and cosine is scale-invariant, so
  ``cosine_similarity([[1e-320]], [[0.04], [0.8]])`` is ``[[1, 1]]`` and mixed scales in one matrix
  do not disturb each other. The scaled copy is made only of the rows that need it.

``cosine_topk`` orders by decreasing score, ties by lower corpus index, NaN scores last (after
-inf); these rules are exact in every impl.

Implementations:

* ``numpy`` — the seed's formula: normalise both operands (copies), then ``Xn @ Yn.T`` (for
  ``Y=None`` NumPy runs BLAS ``syrk``, exactly symmetric). Top-k: the same, in blocks of
  ``batch_size`` queries, each block's scores reduced exactly: long rows by a bound (the k-th
  largest of column-class maxima) and a sort of the few scores above it, short ones by
  ``argpartition``.
* ``numba`` — the packed GEMM of :mod:`fastla._gemm_kernels` with the inverse norms folded into the
  packing of both operands (no normalised copies, no extra pass over n x m). ``Y=None`` computes
  only the upper block triangle (half the FLOPs, like ``syrk``) and mirrors it. Top-k scores a tile
  of the corpus at a time with the GEMM macro-kernel into a per-thread scratch block and merges each
  row into a running top-k (a pool of candidates) in the same pass (parallel over query blocks);
  memory is O(n_queries·k + tiles), never O(n_queries·n_corpus). Below
  ``AUTO_RULE["topk_packed_min_queries"]`` queries it streams the corpus instead, unpacked and once
  (parallel over contiguous shares of the corpus, whose per-thread top-k lists are merged at the
  end): each tile of rows gets its norms as it arrives from memory and its dot products with the
  unit queries, four rows by four queries in registers, then the same merge. Packing the whole
  corpus costs more than a few queries' products: one query over 100 000 x 256 float32 rows takes
  2.7 ms this way (a bare ``sgemv`` 2.6-2.8 ms) and 15 ms packed.
* ``loop`` — pure Python, the textbook formula; for small inputs only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from fastla import _first_use, _intrinsics, _jit, _math, _registry, _validate
from fastla import _gemm_kernels as _gk
from fastla._intrinsics import as_readonly, prefetch_span, wide_vectors, widen
from fastla._jit import jit, prange

__all__ = ["cosine_similarity", "cosine_topk"]

# --------------------------------------------------------------------------- auto rules (data)
#
# Measured with `python -m fastla bench --ops cosine_similarity,cosine_topk` (2 threads both sides,
# Zen 4): see AUTO_RULE's comments where the numbers are.
#: LLVM CPU names on which the packed cosine kernel was measured to overtake NumPy's path at small
#: products (`python -m fastla tune`, 2 threads): Zen 5 from 4 096-262 144 multiply-adds (twelve
#: runs); Zen 4 at every swept size (8x8x64 up: float32 64x64x64 28.1-28.4 us against 41.6-42.2,
#: float64 33-36 against 45; with the 2^20 shipped before, auto's regret there read 1.21-1.29). An
#: Intel AVX-512 Xeon's crossovers were 1-4 M; a host not measured keeps the lower end of those.
_SMALL_COSINE_CPUS = ("znver4", "znver5")


def _shipped_matrix_min_work():
    from fastla import _host

    if _jit.JIT_ENABLED and _host.host_cpu()[0] in _SMALL_COSINE_CPUS:
        # at or above Zen 4's crossover (its smallest swept size, 8x8x64, runs auto's NumPy fast path
        # as fast) and the lower of Zen 5's (timed interleaved, which leant towards NumPy)
        return 16_384
    return 2**20


AUTO_RULE = {
    # n * m * d below this: the product is too small for the packed kernel's setup to pay
    # (:func:`_shipped_matrix_min_work`: by the host)
    "matrix_min_work": _shipped_matrix_min_work(),
    # top-k: the fused kernel avoids the n x m scores entirely; from this much work on it wins
    # (64 000 on both machines: 10 queries x 100 corpus rows x 64, when the numpy impl partitioned
    # every block of scores; with small blocks sorted whole (SORT_MAX_SCORES), Zen 4, us, numpy /
    # numba, both dtypes: 10 x 100 x 64 54-58 / 67-68, 10 x 150 69-71 / 70, 10 x 200 79-83 / 72-74,
    # 4 x 500 107-111 / 68, 32 x 64 69 / 90).
    "topk_min_work": 96_000,
    # from this many queries on the numba impl runs the packed GEMM kernel, whose packing of the
    # whole corpus pays only over many queries; fewer stream the corpus once, unpacked (like a
    # matrix-vector product). Measured (Zen 5, 2 threads, 100 000 corpus rows, k = 10, ms,
    # stream / packed): d = 256 f32: 1 query 3.4 / 15, 16: 4.9 / 14, 64: 16 / 19, 128: 25 / 27;
    # f64 64: 28 / 34; d = 64 f32 64: 6.4 / 6.4. `python -m fastla tune` measures it per machine
    # (its knob "cosine_topk_stream").
    "topk_packed_min_queries": 65,
}

#: Sums of squares (accumulated in float64) inside these bounds give a norm and an inverse norm that
#: are normal numbers of the dtype, far from overflow; rows outside them are scaled by a power of two
#: first (see the module docstring). float32 needs the tighter bounds: its inverse norm is a float32.
_ool = _intrinsics.call_out_of_line

_SQ_RANGE = {np.dtype(np.float64): (2.0**-960, 2.0**960), np.dtype(np.float32): (2.0**-200, 2.0**200)}

_HALF = np.dtype(np.float16)


def _compute_dtype(storage):
    """The dtype a kernel computes an operand stored as ``storage`` in: float32 for float16."""
    return np.dtype(np.float32) if storage == _HALF else storage


def _kernel_view(x):
    """``x`` as a kernel receives it: a float16 array as its uint16 view (no copy; the kernels read
    its elements through :func:`fastla._intrinsics.widen`), any other array unchanged."""
    return x.view(np.uint16) if x.dtype == _HALF else x


def _corpus_as(c, dtype):
    """The corpus in the compute ``dtype``, for the impls that do not read float16 (a copy then)."""
    return c if c.dtype == dtype else c.astype(dtype)


#: Corpus rows the streaming top-k scores per merge (its score block is queries x rows).
_STREAM_TILE = 256
_STREAM_AHEAD = 16

_U = _jit.U


# --------------------------------------------------------------------------- validation


def _check_ndim(x, name, fname):
    if x.ndim not in (1, 2):
        raise ValueError(f"{fname}: {name} must be 1-D or 2-D, got shape {x.shape}")


def check_pair(x, y):
    """Dtype, then shape checks of ``cosine_similarity(x, y)`` (``x``, ``y`` need only ``dtype``,
    ``ndim`` and ``shape``): the dtype first, as NumPy checks it. Returns the compute dtype
    (:func:`_float_dtype`)."""
    dtype = _float_dtype(x, y, "cosine_similarity")
    _check_ndim(x, "X", "cosine_similarity")
    _check_ndim(y, "Y", "cosine_similarity")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"cosine_similarity: incompatible dimension for X and Y matrices: X.shape == {x.shape} "
            f"while Y.shape == {y.shape}"
        )
    return dtype


def check_topk(q, c, k, batch_size):
    """Dtype (first, as in :func:`check_pair`), shape and argument checks of ``cosine_topk``;
    returns ``(compute dtype, k, batch_size)``, the last two as ints."""
    dtype = _float_dtype(q, c, "cosine_topk")
    _check_ndim(q, "queries", "cosine_topk")
    if c.ndim != 2:
        raise ValueError(f"cosine_topk: corpus must be 2-D (n_corpus, d), got shape {c.shape}")
    if q.shape[-1] != c.shape[1]:
        raise ValueError(f"cosine_topk: incompatible dimension for queries {q.shape} and corpus {c.shape}")
    k = _validate.as_int(k, "cosine_topk: k")
    if not 0 <= k <= c.shape[0]:
        raise ValueError(f"cosine_topk: k={k} must be in [0, n_corpus={c.shape[0]}]")
    if batch_size is not None:
        batch_size = _validate.as_int(batch_size, "cosine_topk: batch_size")
        if batch_size < 1:
            raise ValueError(f"cosine_topk: batch_size must be >= 1, got {batch_size}")
    return dtype, k, batch_size


def _float_dtype(x, y, fname):
    """The float dtype to compute in: float32 or float64 (ints -> float64, float16 -> float32,
    longdouble -> float64), each compiled."""
    for a in (x, y):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{fname}: unsupported dtype {a.dtype} (expected real numbers)")
    floats = [a.dtype for a in (x, y) if a.dtype.kind == "f"]
    # an integer operand forces float64 (as np.linalg); float16 computes in float32
    dtype = np.result_type(*floats, np.float64 if len(floats) < 2 else np.float32)
    if dtype.itemsize > 8:  # longdouble: float64, as sklearn's check_pairwise_arrays converts it
        return np.dtype(np.float64)
    return dtype.newbyteorder("=")


class MatrixArgs(NamedTuple):
    """The validated arguments of ``cosine_similarity``'s implementations."""

    x: object  # (n, d), native-order of the compute dtype (a 1-D input as one row)
    y: object  # (m, d), or None for the similarity of x with itself (the symmetric case)
    out: object
    kind: str  # "mm", "mv", "vm" or "vv": which inputs were matrices (the result's shape)


class TopkArgs(NamedTuple):
    """The validated arguments of ``cosine_topk``'s implementations."""

    q: object  # (n, d) queries (a 1-D query as one row)
    c: object  # (m, d) corpus
    k: int
    batch_size: object  # int or None
    squeeze: bool  # the query was 1-D: return 1-D results
    c_norms: object  # (m,) float64 norms of the corpus rows given by the caller, or None


def _prepare_sparse(X, Y, out, dense_output):
    """``cosine_similarity`` of SciPy sparse operands (either or both), as scikit-learn computes it:
    2-D operands, the result dense unless both are sparse and ``dense_output`` is False."""
    import scipy.sparse as sp

    sym = Y is None or Y is X
    x = X if _validate.is_sparse(X) else np.asarray(X)
    y = x if sym else Y if _validate.is_sparse(Y) else np.asarray(Y)
    for name, a in (("X", x), ("Y", y)):
        if a.ndim != 2:
            raise ValueError(f"cosine_similarity: with sparse input, {name} must be 2-D, got shape {a.shape}")
    dtype = check_pair(x, y)  # float16 computes in float32
    dense = bool(dense_output) or not (sp.issparse(x) and sp.issparse(y))
    shape = (x.shape[0], y.shape[0])
    if out is not None:
        if not dense:
            raise ValueError("cosine_similarity: out= needs a dense result (dense_output=True)")
        _validate.check_out(out, shape, dtype, "cosine_similarity")
    x = x.astype(dtype) if sp.issparse(x) else _validate.native(x, dtype)
    y = x if sym else y.astype(dtype) if sp.issparse(y) else _validate.native(y, dtype)
    facts = {"n": shape[0], "m": shape[1], "d": x.shape[1], "dtype": dtype, "sym": sym}
    why = "scipy.sparse input: rows normalised in a sparse copy, a sparse product"
    args = MatrixArgs(x, None if sym else y, out, "sparse" if dense else "sparse-out")
    return _registry.Prepared(args, compiled=why, facts=facts)


def _prepare_matrix(X, Y=None, dense_output=True, out=None):
    if _validate.is_sparse(X) or _validate.is_sparse(Y):
        return _prepare_sparse(X, Y, out, dense_output)
    sym = Y is None or Y is X
    # subclasses (np.matrix, masked) are viewed as plain arrays, as sklearn does
    x = np.asarray(X)
    y = x if sym else np.asarray(Y)
    dtype = check_pair(x, y)
    kind = ("m" if x.ndim == 2 else "v") + ("m" if y.ndim == 2 else "v")
    sym = sym and kind == "mm"
    shape = {"mm": (x.shape[0], y.shape[0]), "vm": (y.shape[0],), "mv": (x.shape[0],), "vv": ()}[kind]
    x = _validate.native(x, dtype)
    y = x if sym else _validate.native(y, dtype)
    if out is not None:
        if kind == "vv":
            raise ValueError("cosine_similarity: out= is not supported for two 1-D vectors")
        _validate.check_out(out, shape, dtype, "cosine_similarity")
    x2 = x[None, :] if x.ndim == 1 else x
    y2 = y[None, :] if y.ndim == 1 else y
    facts = {"n": x2.shape[0], "m": y2.shape[0], "d": x2.shape[1], "dtype": dtype, "sym": sym}
    args = MatrixArgs(x2, None if sym else y2, out, kind)
    return _registry.Prepared(args, facts=facts)


def _matrix_kernel_pays(n, m, d):
    """The auto rule's size test for ``cosine_similarity`` (by :func:`_rule_matrix` and the fast path)."""
    return n * m * d >= AUTO_RULE["matrix_min_work"]


#: The depth below which a top-k's work counts its n x m scores as if they were this deep: the
#: selection, not the product, is then most of both impls' cost (NumPy's passes over each block of
#: scores, the kernel's running top-k), and ``n * m * d`` sent thousands of scores of a few
#: dimensions to NumPy where the kernel was 1.3-3x faster, 17-22x with the ties of d = 1 (every
#: score +-1). Zen 4, float64, k = 1 / 10, NumPy's time over the kernel's (n x m, d): 10 x 200
#: (2000 scores) 0.78-0.96 at d = 1-16; 10 x 400 1.4-2.3; 20 x 300, 40 x 200, 80 x 100, 10 x 800,
#: 4 x 2000 1.3-3.4 at d = 1-16 (0.86 once); 100 x 400 d = 1 8.9-17.7, 30 x 3000 d = 1 18.8-21.6
#: (all to NumPy before), 1.9-3.9 at d = 2. The crossover sits near 3000 scores at d <= 16 and
#: nearer 1500 at d = 64 (the rule's ``topk_min_work`` is measured there): 32 puts it at 3000.
#: Left: k close to m (400 x 42, k = 36) runs the kernel at 0.78-0.92x NumPy's speed at every d
#: (from d = 6 before).
TOPK_SELECT_DEPTH = 32


def _topk_kernel_pays(n, m, d):
    """The auto rule's size test for ``cosine_topk`` (by :func:`_rule_topk` and the fast path): the
    work ``n * m * max(d, TOPK_SELECT_DEPTH)``."""
    return n * m * max(d, TOPK_SELECT_DEPTH) >= AUTO_RULE["topk_min_work"]


def _rule_matrix(prep):
    f = prep.facts
    if not _matrix_kernel_pays(f["n"], f["m"], f["d"]):
        return "numpy", lambda: f"{f['n']}x{f['m']}x{f['d']}: too small for the packed kernel to pay"
    return (
        "numba",
        lambda: (
            f"{f['n']}x{f['m']}x{f['d']}: packed GEMM with the normalisation folded into the packing"
            + (", upper triangle only" if f["sym"] else "")
        ),
    )


_MATRIX = _registry.operation("cosine_similarity", _prepare_matrix, _rule_matrix)


def _check_norms(norms, m):
    """The caller's ``corpus_norms`` as a float64 array of ``m`` non-negative (or NaN) values."""
    norms = np.asarray(norms)
    if norms.dtype.kind not in "biuf":
        raise TypeError(f"cosine_topk: corpus_norms must be real numbers, got {norms.dtype}")
    if norms.shape != (m,):
        raise ValueError(f"cosine_topk: corpus_norms must have shape (n_corpus,) = ({m},), got {norms.shape}")
    norms = norms.astype(np.float64, copy=False)
    if np.any(norms < 0):
        raise ValueError("cosine_topk: corpus_norms must be >= 0 (the norms of the corpus rows)")
    return norms


def _prepare_topk_sparse(queries, corpus, k, batch_size, corpus_norms):
    """``cosine_topk`` with SciPy sparse queries or corpus (or both; 2-D): scored by sparse products
    one block of queries at a time (the ``numpy`` implementation), and selected as the dense scores
    are (exact order, ties to the lower index, NaN last)."""
    q, c = (x.tocsr() if _validate.is_sparse(x) else np.asarray(x) for x in (queries, corpus))
    for name, x in (("queries", q), ("corpus", c)):
        if _validate.is_sparse(x) and x.ndim != 2:
            raise ValueError(f"cosine_topk: a sparse {name} must be 2-D, got shape {x.shape}")
    dtype, k, batch_size = check_topk(q, c, k, batch_size)
    c_norms = None if corpus_norms is None else _check_norms(corpus_norms, c.shape[0])
    q, c = (x.astype(dtype) if _validate.is_sparse(x) else _validate.native(x, dtype) for x in (q, c))
    q2 = q[None, :] if q.ndim == 1 else q
    facts = {"n": q2.shape[0], "m": c.shape[0], "d": c.shape[1], "k": k, "dtype": dtype, "corpus": c.dtype}
    args = TopkArgs(q2, c, k, batch_size, q.ndim == 1, c_norms)
    why = "scipy.sparse input: sparse products, then the selection"
    return _registry.Prepared(args, compiled=why, facts=facts)


def _prepare_topk(queries, corpus, k, batch_size=None, corpus_norms=None):
    if _validate.is_sparse(queries) or _validate.is_sparse(corpus):
        return _prepare_topk_sparse(queries, corpus, k, batch_size, corpus_norms)
    q = np.asarray(queries)
    c = np.asarray(corpus)
    dtype, k, batch_size = check_topk(q, c, k, batch_size)
    c_norms = None if corpus_norms is None else _check_norms(corpus_norms, c.shape[0])
    q = _validate.native(q, dtype)
    # a float16 corpus searched in float32 stays float16 (see the module docstring)
    c = _validate.native(c, _HALF if c.dtype == _HALF and dtype == np.float32 else dtype)
    q2 = q[None, :] if q.ndim == 1 else q
    facts = {"n": q2.shape[0], "m": c.shape[0], "d": c.shape[1], "k": k, "dtype": dtype, "corpus": c.dtype}
    args = TopkArgs(q2, c, k, batch_size, q.ndim == 1, c_norms)
    return _registry.Prepared(args, facts=facts)


def _rule_topk(prep):
    f = prep.facts
    if not _topk_kernel_pays(f["n"], f["m"], f["d"]):
        least = AUTO_RULE["topk_min_work"]

        def small():
            depth = f" (depth counted as {TOPK_SELECT_DEPTH})" if f["d"] < TOPK_SELECT_DEPTH else ""
            return (
                f"{f['n']}x{f['m']}x{f['d']}{depth}: work below topk_min_work={least}, too small for "
                "the fused kernel to pay"
            )

        return "numpy", small
    half = ", the float16 corpus read as float32" if f["corpus"] == _HALF else ""
    packed = AUTO_RULE["topk_packed_min_queries"]
    how = "packed GEMM" if f["n"] >= packed else f"the corpus streamed once (under {packed} queries)"
    return "numba", lambda: f"{f['n']} queries x {f['m']} corpus rows: {how} + running top-{f['k']}{half}"


_TOPK = _registry.operation("cosine_topk", _prepare_topk, _rule_topk)


def _topk_path(queries):
    """The path part of top-k's key among the op's own kernels (``fastla._first_use``): the packed
    kernel is a compile of its own (5.1-7.1 s cold against the streaming one's 3.4 s, Zen 4), so
    one path's run does not make the other's first ``auto`` call compile at once."""
    return ".packed" if queries >= AUTO_RULE["topk_packed_min_queries"] else ""


_TOPK.kernel_path = lambda prep: _topk_path(prep.facts["n"])


# --------------------------------------------------------------------------- public functions


@_registry.public(_MATRIX)
def cosine_similarity(X, Y=None, dense_output=True, *, out=None, backend=None):
    """Cosine similarity of the rows of ``X`` with the rows of ``Y``.

    Parameters
    ----------
    X : array_like or scipy.sparse matrix/array, shape (n, d) or (d,)
    Y : array_like or scipy.sparse matrix/array, shape (m, d) or (d,), optional
        ``None`` compares ``X`` with itself (the result is then exactly symmetric with a unit
        diagonal for rows of non-zero norm).
    dense_output : bool, default True
        scikit-learn's: with both operands sparse, False returns a ``scipy.sparse.csr_matrix``
        (scikit-learn's type, for sparse matrices and arrays alike). Sparse
        operands are 2-D and computed by SciPy's sparse product (under ``auto`` or ``numpy``; a
        compiled backend forced on them raises TypeError); dense operands ignore it.
    out : ndarray, optional
        Where to store the 2-D or 1-D result.
    backend : {None, "auto", "numba", "numpy", "loop"}, optional

    Returns
    -------
    ndarray of shape (n, m), (m,) or (n,), or float
        ``S[i, j] = <x_i, y_j> / (|x_i| |y_j|)``; 0 where either norm is 0. float32 stays float32.

    Raises
    ------
    ValueError
        Operands that are not 1-D or 2-D; different ``d`` (the message names both shapes).

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> fl.cosine_similarity([1.0, 0.0], [1.0, 1.0])  # doctest: +ELLIPSIS
    0.7071067811...
    >>> fl.cosine_similarity(np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]]))
    array([[1. , 0. , 0.6],
           [0. , 0. , 0. ],
           [0.6, 0. , 1. ]])
    """
    if out is None and type(X) is np.ndarray and (Y is None or type(Y) is np.ndarray):
        res = _fast_matrix(X, X if Y is None else Y, backend)
        if res is not None:
            return res
    return _MATRIX.run(backend, _prepare_matrix(X, Y, dense_output, out))


@_registry.public(_TOPK)
def cosine_topk(queries, corpus, k, *, corpus_norms=None, batch_size=None, backend=None):
    """The ``k`` corpus rows most cosine-similar to each query, without the full score matrix.

    Parameters
    ----------
    queries : array_like or scipy.sparse matrix/array, shape (n_queries, d) or (d,)
    corpus : array_like or scipy.sparse matrix/array, shape (n_corpus, d)
        float16 is kept as float16 when the search runs in float32 (float32 or float16 queries):
        half the memory of a float32 corpus, read as float32 by the ``numba`` kernels. Sparse
        operands (2-D; a TF-IDF corpus, say) are scored by sparse products a block of queries at a
        time (under ``auto`` or ``numpy``; a compiled backend forced on them raises TypeError),
        with the same selection rules.
    k : int
        0 <= k <= n_corpus.
    corpus_norms : array_like, shape (n_corpus,), optional
        The Euclidean norms of the corpus rows (``np.linalg.norm(corpus, axis=1)``), computed once
        when the same corpus is searched again and again: the kernels then skip that pass over the
        corpus. Trusted as given, as scikit-learn trusts ``Y_norm_squared``, except that a norm whose
        square leaves the safe range (0, subnormal, huge, inf, NaN) is measured again from its row;
        the ``loop`` impl, and the ``numba`` one for a few queries (which measures them in the
        pass that reads the rows anyway), ignore them.
    batch_size : int, optional
        Queries scored per block by the ``numpy`` impl (its memory is ``batch_size * n_corpus``
        scores); default: blocks of about 2^23 scores. The ``numba`` kernel sizes its own tiles
        from the caches and ignores it.
    backend : {None, "auto", "numba", "numpy", "loop"}, optional

    Returns
    -------
    scores : ndarray, shape (n_queries, k) or (k,)
        Decreasing; ties are broken by the lower corpus index; NaN scores come last.
    indices : ndarray of intp, same shape
        Rows of ``corpus``.

    Raises
    ------
    ValueError
        Bad shapes, ``k`` outside ``[0, n_corpus]``, ``batch_size < 1``, negative ``corpus_norms``.
    TypeError
        ``k`` or ``batch_size`` not an integer (a bool is not one).

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> corpus = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> scores, idx = fl.cosine_topk([[1.0, 0.1]], corpus, 2)
    >>> idx
    array([[0, 2]])
    >>> np.round(scores, 3)
    array([[0.995, 0.774]])
    """
    if (
        corpus_norms is None
        and batch_size is None
        and type(queries) is np.ndarray
        and type(corpus) is np.ndarray
    ):
        res = _fast_topk(queries, corpus, k, backend)
        if res is not None:
            return res
    return _TOPK.run(backend, _prepare_topk(queries, corpus, k, batch_size, corpus_norms))


# The fast paths of the common calls (see matmul's): plain 2-D float32/float64 arrays of one dtype
# (queries 1-D or 2-D), default options, under auto or numba forced; the same decision as the
# prepare + rule of the full path, without building them. None: the call takes the full path (every
# other input, and every error). A tiny call (8 x 20 x 16 float64) spent 8-10 us in that path, over
# an impl of 19 (cosine_similarity) or 28 us (cosine_topk).


def _fast_matrix(x, y, backend):
    dt = x.dtype
    if not (dt is y.dtype and dt in _validate.COMPILED_DTYPES and x.ndim == 2 and y.ndim == 2):
        return None
    fast = x.shape[1] == y.shape[1] and _registry.fast_path(backend)
    if not fast:
        return None
    other = None if y is x else y
    if fast == "numba" or _matrix_kernel_pays(x.shape[0], y.shape[0], x.shape[1]):
        ops = ("cosine_similarity", dt.char)  # _first_use.kernel_key
        args = (x, other, None, "mm")
        return _first_use.kernels_or_numpy(ops, fast == "numba", _matrix_numba, _matrix_numpy, *args)
    return _matrix_numpy(x, other, None, "mm")


def _fast_topk(q, c, k, backend):
    dt = q.dtype
    if not (dt is c.dtype and dt in _validate.COMPILED_DTYPES and q.ndim in (1, 2) and c.ndim == 2):
        return None
    fast = (
        type(k) is int and 0 <= k <= c.shape[0] and q.shape[-1] == c.shape[1] and _registry.fast_path(backend)
    )
    if not fast:
        return None
    squeeze = q.ndim == 1
    q2 = q[None, :] if squeeze else q
    if fast == "numba" or _topk_kernel_pays(q2.shape[0], c.shape[0], c.shape[1]):
        ops = ("cosine_topk" + _topk_path(q2.shape[0]), dt.char)  # _first_use.kernel_key
        args = (q2, c, k, None, squeeze, None)
        return _first_use.kernels_or_numpy(ops, fast == "numba", _topk_numba, _topk_numpy, *args)
    return _topk_numpy(q2, c, k, None, squeeze, None)


# --------------------------------------------------------------------------- shared pieces


def _finish(res, out, kind):
    """Shape a 2-D result ``res`` for ``kind`` (mm/vm/mv/vv) and honour ``out``."""
    if kind == "vv":
        return float(res[0, 0])
    res = res if kind == "mm" else res.reshape(-1)
    if out is None or res is out:
        return res
    np.copyto(out, res, casting="same_kind")
    return out


def _direct_out(out, kind, dtype, *reads):
    """``out`` as the 2-D C-contiguous buffer a kernel may write into while it reads ``reads``, or
    None (then the result is computed apart and copied: an ``out`` that overlaps an operand gets what
    NumPy's ``matmul`` gives)."""
    if out is None or out.dtype != dtype or not out.flags.c_contiguous or kind == "vv":
        return None
    return out if _validate.writes_apart(out, *reads) else None


def _inv_norms_numpy(x):
    """``(x', inv, norms)``: ``x`` with its out-of-range rows scaled by a power of two (a copy only
    when there are such rows), ``1/|x'_i|`` in x's dtype (0 for a zero or non-finite norm) and the
    norms ``|x'_i|`` (float64)."""
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    lo, hi = _SQ_RANGE[x.dtype]
    if sq.size and lo <= sq.min() and sq.max() <= hi:  # every row in range (a NaN fails both)
        # the common case in two reductions instead of the masks below (64 x 64: 13 -> 8 us)
        norms = np.sqrt(sq)
        return x, (1.0 / norms).astype(x.dtype, copy=False), norms
    with np.errstate(invalid="ignore"):
        bad = ~((sq >= lo) & (sq <= hi))
    if bad.any():
        with np.errstate(invalid="ignore"):
            mx = np.abs(x[bad]).max(axis=1) if x.shape[1] else np.zeros(np.count_nonzero(bad), x.dtype)
        ok = (mx > 0) & np.isfinite(mx)
        if ok.any():
            rows = np.flatnonzero(bad)[ok]
            x = x.copy()
            x[rows] = np.ldexp(x[rows], -np.frexp(mx[ok])[1][:, None])
            sq[rows] = np.einsum("ij,ij->i", x[rows], x[rows], dtype=np.float64)
    norms = np.sqrt(sq)
    inv = np.zeros(len(norms), x.dtype)
    np.divide(1.0, norms, out=inv, where=(norms > 0) & np.isfinite(norms), casting="unsafe")
    return x, inv, norms


def _normalised(x):
    """``x`` with unit rows (zero rows stay zero; a row with inf becomes NaN, silently) and the norms."""
    x, inv, norms = _inv_norms_numpy(x)
    with np.errstate(invalid="ignore"):
        return x * inv[:, None], norms


def _given_inv_norms(x, norms, measure):
    """``(x', inv)`` as ``measure`` (:func:`_inv_norms_numpy` or :func:`_inv_norms_numba`) gives them,
    from the caller's row ``norms``: ``1/norm`` where the norm's square is in the safe range; the
    other rows are measured (and scaled, in a copy of ``x``) by ``measure``."""
    dt = _compute_dtype(x.dtype)
    lo, hi = _SQ_RANGE[dt]
    with np.errstate(over="ignore", invalid="ignore"):
        sq = norms * norms
        ok = (sq >= lo) & (sq <= hi)
    inv = np.zeros(len(x), dt)
    np.divide(1.0, norms, out=inv, where=ok, casting="unsafe")
    bad = np.flatnonzero(~ok)
    if bad.size:
        rows = _c_input(x[bad])
        scaled, inv[bad], _ = measure(rows)
        if scaled is not rows:
            x = x.copy()
            x[bad] = scaled
    return x, inv


def _unit_diagonal(c, norms):
    """Exact 1 on the diagonal for rows of finite, non-zero norm."""
    ok = np.flatnonzero((norms > 0) & np.isfinite(norms))
    c[ok, ok] = 1


def _aligned(n, dtype):
    """Uninitialised 1-D array of ``n`` elements starting on a 64-byte boundary."""
    raw = np.empty(n + 64 // dtype.itemsize, dtype)
    shift = (-raw.ctypes.data % 64) // dtype.itemsize
    return raw[shift : shift + n]


# kernel inputs C-contiguous (copying n x d is cheap next to the n x m work) and read-only typed
_c_input = _intrinsics.kernel_input


# --------------------------------------------------------------------------- numpy


def _sparse_normalised(a):
    """A CSR copy of the sparse ``a`` with unit rows (zero rows stay zero) and its row norms: each
    row scaled by a power of two first (its largest ``|a_ij|`` to [0.5, 1), exactly), so no square
    overflows or underflows, whatever the row's scale (as the dense path's norms)."""
    import scipy.sparse as sp

    a = sp.csr_array(a, copy=True)
    a.sum_duplicates()
    counts = np.diff(a.indptr)
    big = np.zeros(a.shape[0])
    rows = np.flatnonzero(counts)
    if a.nnz:
        big[rows] = np.maximum.reduceat(np.abs(a.data), a.indptr[rows])
    with np.errstate(divide="ignore", invalid="ignore"):
        exp = np.frexp(np.where(np.isfinite(big), big, 1.0))[1]
        a.data = np.ldexp(a.data, np.repeat(-exp, counts))
        sq = np.zeros(a.shape[0])
        if a.nnz:
            sq[rows] = np.add.reduceat(np.square(a.data, dtype=np.float64), a.indptr[rows])
        root = np.sqrt(sq)
        inv = np.where((root > 0) & np.isfinite(root), 1.0 / root, 0.0)
        a.data = a.data * np.repeat(inv, counts).astype(a.dtype)
    return a, np.ldexp(root, exp)


@jit(parallel=True)
def _sparse_dot_rows(x_ptr, x_idx, x_val, t_ptr, t_idx, t_val, out):
    """``out = X @ T`` for CSR ``X`` and CSR ``T`` (here ``Yn.T``), by rows into the dense ``out``
    (zeros on entry): Gustavson's row-by-row product, each row of ``out`` accumulated in place.
    SciPy's product builds a sparse result first, then ``toarray`` copies it: 5000 x 2000 rows of
    50 000 features at density 0.002, float64, two threads, scikit-learn's cosine_similarity (its
    own compiled sparse-to-dense product) 26.5 ms, SciPy's product + toarray 39 ms."""
    for i in prange(out.shape[0]):
        row = out[i]
        for p in range(x_ptr[i], x_ptr[i + 1]):
            k = x_idx[p]
            v = x_val[p]
            for q in range(t_ptr[k], t_ptr[k + 1]):
                row[t_idx[q]] += v * t_val[q]


def _sparse_product_dense(xn, yn, t=None):
    """``xn @ yn.T`` of two sparse CSR operands as a dense array (compiled where Numba is); ``t``:
    ``yn.T`` as CSR, when the caller has it."""
    import scipy.sparse as sp

    if not _jit.JIT_ENABLED:  # the loops as Python: SciPy's product is the faster
        return (xn @ yn.T).toarray()
    t = sp.csr_array(yn.T) if t is None else t  # the transpose's rows: one CSR pass
    res = np.zeros((xn.shape[0], yn.shape[0]), xn.dtype)
    _jit.run_parallel(_sparse_dot_rows, xn.indptr, xn.indices, xn.data, t.indptr, t.indices, t.data, res)
    return res


def _unit_rows(a):
    """``(unit rows, row norms)`` of a dense array or of a sparse matrix (kept sparse, as CSR)."""
    return _sparse_normalised(a) if _validate.is_sparse(a) else _normalised(a)


def _unit_product(xn, yn, t=None):
    """``xn @ yn.T`` of unit rows, dense or sparse (either or both), as a dense array: the compiled
    sparse-to-dense product when both are sparse (``t``: ``yn.T`` as CSR, when the caller has it)."""
    if _validate.is_sparse(xn) and _validate.is_sparse(yn):
        return _sparse_product_dense(xn, yn, t)
    res = xn @ yn.T
    return res.toarray() if _validate.is_sparse(res) else np.asarray(res)


def _matrix_sparse(x, y, out, dense):
    """Rows scaled to unit norm (sparse stays sparse), then one product ``Xn @ Yn.T``."""
    import scipy.sparse as sp

    xn, norms = _unit_rows(x)
    yn = xn if y is None else _unit_rows(y)[0]
    if not dense:  # both operands sparse: a sparse result
        # a csr_matrix, as scikit-learn returns for sparse matrices and sparse arrays alike (a
        # matrix's ``*`` is the matrix product; a csr_array's would be element-wise)
        res = sp.csr_matrix(xn @ yn.T)
        if y is None:  # an exact 1 on the diagonal, as the dense result has
            _unit_diagonal(res, norms)
        return res
    res = _unit_product(xn, yn)
    if y is None:
        _unit_diagonal(res, norms)
    if out is None:
        return res
    np.copyto(out, res, casting="same_kind")
    return out


@_MATRIX.register("numpy", any_dtype=True)
def _matrix_numpy(x, y, out, kind):
    """Normalise both operands (copies), then ``Xn @ Yn.T`` (BLAS; ``syrk`` for ``Y=None``)."""
    if kind.startswith("sparse"):
        return _matrix_sparse(x, y, out, kind == "sparse")
    xn, norms = _normalised(x)
    if y is None:
        res = np.matmul(xn, xn.T, out=_direct_out(out, kind, x.dtype))
        _unit_diagonal(res, norms)
    else:
        res = np.matmul(xn, _normalised(y)[0].T, out=_direct_out(out, kind, x.dtype))
    return _finish(res, out, kind)


def _default_batch(n_corpus):
    # ~2^23 scores per block: the fastest of 2^21..2^25 for 2 000 x 100 000 x 256 float32 (Zen 4)
    return max(1, 2**23 // max(n_corpus, 1))


def _select_numpy(scores, k):
    """Top-k of each row of ``scores``: decreasing, ties by lower index, NaN last (exact)."""
    rows, n = scores.shape
    if rows * n <= SORT_MAX_SCORES:
        return _select_sorted(scores, k)
    groups = max(16 * k, n // 64)
    if k == 0 or rows == 0 or n < 4 * groups:
        return _select_partition(scores, k)
    return _select_pruned(scores, k, groups)


#: Score blocks up to this size are selected by one stable sort of each whole row
#: (:func:`_select_sorted`): below it, a sort costs less than the partition's fixed ~20 us of
#: NumPy calls. Measured (Zen 4, float32, us, k = 1-10, sorted / partitioned): 8 x 20 4.3-4.8 /
#: 28-31, 1 x 1024 16-18 / 26, 8 x 256 24 / 31-41, 64 x 64 44-53 / 45-57 (the crossover), 8 x 512
#: 56-61 / 36-64.
SORT_MAX_SCORES = 2048


def _select_sorted(scores, k):
    """:func:`_select_numpy` by a stable sort of ``-scores`` (NaN sorts last; ties keep the lower
    index)."""
    idx = np.argsort(np.negative(scores), axis=1, kind="stable")[:, :k]
    return scores[np.arange(scores.shape[0])[:, None], idx], idx


def _select_pruned(scores, k, groups):
    """:func:`_select_numpy` for long rows: a bound, then an exact sort of the few scores above it.

    Split each row's columns into ``groups`` classes (column ``j`` in class ``j % groups``) and take
    each class's maximum, one streaming pass (``np.maximum`` of ``n // groups`` whole slices; the
    last ``n % groups`` columns are left out of it). The k-th largest of those maxima, ``t``, is at
    most the row's k-th largest score (k distinct classes each hold a score ``>= t``), so every
    score of the top-k, and every score tied with one, is ``>= t``: the scores ``>= t`` (about
    ``2k`` of them on scores without structure) sorted by ``(-score, column)`` give the exact
    answer. A row with NaN among its class maxima takes :func:`_select_partition` (a NaN in the last
    columns ranks below the k numbers ``>= t``, as NaN must). A block of
    83 queries' float32 scores over 100 000 corpus rows, k = 10: 18 ms against 95 ms by
    ``argpartition`` (k = 1000: 44 against 105 ms; Zen 4), which made the whole numpy top-k of 1000
    such queries 0.67 s instead of 1.75 s.
    """
    rows, n = scores.shape
    width = n // groups
    cut = width * groups
    peak = np.maximum.reduce(scores[:, :cut].reshape(rows, width, groups), axis=1)
    bad = np.isnan(peak).any(axis=1)  # NaN propagates through maximum
    t = np.partition(peak, groups - k, axis=1)[:, groups - k]
    t[bad] = np.nan  # nothing compares >= NaN: no candidates from those rows
    r, c = np.nonzero(scores >= t[:, None])
    v = scores[r, c]
    order = np.lexsort((c, -v, r))  # by row, then decreasing score, then column
    counts = np.bincount(r, minlength=rows)
    start = np.cumsum(counts) - counts
    idx = np.empty((rows, k), np.intp)
    good = ~bad  # each has k candidates or more
    idx[good] = c[order[start[good, None] + np.arange(k)]]
    if bad.any():
        idx[bad] = _select_partition(scores[bad], k)[1]
    return np.take_along_axis(scores, idx, axis=1), idx


def _select_partition(scores, k):
    """:func:`_select_numpy` by ``argpartition``, with the rows tied at the k-th score (or holding
    NaN there) sorted again exactly."""
    neg = np.negative(scores)  # ascending order of -score puts NaN last, as we want
    rows, n = neg.shape
    if k < n:
        part = np.argpartition(neg, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(neg, part[:, k - 1 :], axis=1)
        # argpartition breaks ties at the k-th value arbitrarily: redo those rows exactly, in one
        # sort of them all (a Python loop over the rows: 351 queries over 25 corpus rows of width
        # 1, every score tied, took 0.8 ms a call, 0.17 ms now; Zen 4)
        fix = (np.count_nonzero(neg <= kth, axis=1) > k) | np.isnan(kth[:, 0])
        if fix.any():
            part[fix] = np.argsort(neg[fix], axis=1, kind="stable")[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), (rows, n)).copy()
    part.sort(axis=1)
    order = np.argsort(np.take_along_axis(neg, part, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, idx, axis=1), idx


def _topk_result(scores, idx, squeeze):
    return (scores[0], idx[0]) if squeeze else (scores, idx)


@_TOPK.register("numpy", any_dtype=True)
def _topk_numpy(q, c, k, batch_size, squeeze, c_norms):
    """Normalise, then blocks of ``batch_size`` queries: ``Qn @ Cn.T``, then the exact selection of
    :func:`_select_numpy`."""
    nq = q.shape[0]
    scores = np.empty((nq, k), q.dtype)
    idx = np.empty((nq, k), np.intp)
    if k and nq and (_validate.is_sparse(q) or _validate.is_sparse(c)):
        _topk_sparse(q, c, k, batch_size, c_norms, scores, idx)
    elif k and nq:
        c = _corpus_as(c, q.dtype)
        if c_norms is None:
            cn = _normalised(c)[0]
        else:
            c, inv_c = _given_inv_norms(c, c_norms, _inv_norms_numpy)
            with np.errstate(invalid="ignore"):
                cn = c * inv_c[:, None]
        qn = _normalised(q)[0]
        bs = batch_size or _default_batch(c.shape[0])
        for i0 in range(0, nq, bs):
            scores[i0 : i0 + bs], idx[i0 : i0 + bs] = _select_numpy(qn[i0 : i0 + bs] @ cn.T, k)
    return _topk_result(scores, idx, squeeze)


def _topk_sparse(q, c, k, batch_size, c_norms, scores, idx):
    """:func:`_topk_numpy`'s blocks with a sparse operand: unit rows (sparse stays sparse; the
    caller's ``c_norms`` divide the corpus rows as given), each block's scores by a sparse product
    into a dense block (:func:`_unit_product`, as :func:`_matrix_sparse`'s), then selected."""
    import scipy.sparse as sp

    qn = _unit_rows(q)[0]
    if c_norms is None:
        cn = _unit_rows(c)[0]
    else:
        with np.errstate(divide="ignore"):
            inv = np.where(c_norms > 0, 1.0 / c_norms, np.where(np.isnan(c_norms), np.nan, 0.0))
        inv = inv.astype(q.dtype)
        cn = sp.csr_array(c.multiply(inv[:, None])) if sp.issparse(c) else c * inv[:, None]
    both = sp.issparse(qn) and sp.issparse(cn)
    t = sp.csr_array(cn.T) if both else None
    bs = batch_size or _default_batch(c.shape[0])
    for i0 in range(0, q.shape[0], bs):
        s = _unit_product(qn[i0 : i0 + bs], cn, t)
        scores[i0 : i0 + bs], idx[i0 : i0 + bs] = _select_numpy(s, k)


# --------------------------------------------------------------------------- loop


def _unit_row_loop(row):
    """The row divided by its norm and the norm; a zero row stays zero and a row with inf or NaN gets
    NaN (``a * 0``), as the kernels. The row is first scaled by a power of two near its largest
    magnitude (exact), so the norm of a row near the overflow threshold is finite."""
    big = max((abs(a) for a in row), default=0.0)
    if 0 < big < math.inf:
        e = math.frexp(big)[1]
        row = [math.ldexp(a, -e) for a in row]
    norm = math.hypot(*row)
    return ([a / norm for a in row] if 0 < norm < math.inf else [a * 0.0 for a in row]), norm


def _matrix_loop_2d(x, y):
    ux = [_unit_row_loop(r) for r in x.tolist()]
    uy = ux if y is None else [_unit_row_loop(r) for r in y.tolist()]
    res = np.empty((len(ux), len(uy)), x.dtype)
    for i, (xi, _) in enumerate(ux):
        for j, (yj, _) in enumerate(uy):
            res[i, j] = sum(a * b for a, b in zip(xi, yj, strict=True))
    if y is None:
        res = np.triu(res) + np.triu(res, 1).T
        _unit_diagonal(res, np.array([n for _, n in ux]))
    return res


@_MATRIX.register("loop")
def _matrix_loop(x, y, out, kind):
    """Pure-Python double loop over row pairs (the textbook formula)."""
    return _finish(_matrix_loop_2d(x, y), out, kind)


def _rank_key(score, j):
    return (math.isnan(score), -score if not math.isnan(score) else 0.0, j)


@_TOPK.register("loop")
def _topk_loop(q, c, k, batch_size, squeeze, c_norms):
    """Pure Python: every score of a query, then sorted (the textbook way; ``c_norms`` unused)."""
    nq = q.shape[0]
    scores = np.empty((nq, k), q.dtype)
    idx = np.empty((nq, k), np.intp)
    for i in range(nq):
        row = _matrix_loop_2d(q[i : i + 1], c)[0].tolist()
        best = sorted(range(len(row)), key=lambda j, row=row: _rank_key(row[j], j))[:k]
        scores[i] = [row[j] for j in best]
        idx[i] = best
    return _topk_result(scores, idx, squeeze)


# --------------------------------------------------------------------------- numba kernels


@jit(inline="always")
def _row_norm(x, i, lo, hi):
    """``(|x_i|, e)``: the norm of row ``i`` (float64 sums) measured scaled by ``2^-e``, where ``e`` is
    0 unless the row's sum of squares leaves ``[lo, hi]`` (then ``2^e`` is its largest magnitude; a
    zero, infinite or NaN row keeps ``e = 0`` and gets 0, inf or NaN)."""
    s = 0.0
    for j in range(x.shape[1]):
        v = np.float64(widen(x[i, _U(j)]))
        s += v * v
    if s >= lo and s <= hi:
        return np.sqrt(s), 0
    return _norm_out_of_range(x, i, s)


@jit(inline="always")
def _row_norm_dot(x, i, y, zero, lo, hi):
    """``(|x_i|, e, x_i . y)``: :func:`_row_norm` and the row's dot product with ``y`` (accumulated
    in ``zero``'s type, as :func:`fastla._math.dot4x4` does) in one pass along the row."""
    s = 0.0
    p = zero
    for j in range(x.shape[1]):
        xj = widen(x[i, _U(j)])
        v = np.float64(xj)
        s += v * v
        p += xj * y[_U(j)]
    if s >= lo and s <= hi:
        return np.sqrt(s), 0, p
    nrm, e = _norm_out_of_range(x, i, s)
    return nrm, e, p


@jit(inline="always")
def _norm_out_of_range(x, i, s):
    """:func:`_row_norm` of row ``i`` whose float64 sum of squares ``s`` left the safe range (zero,
    tiny, huge or NaN): rescaled by its largest magnitude and measured again."""
    e = 0
    mx = 0.0
    for j in range(x.shape[1]):
        v = abs(np.float64(widen(x[i, j])))
        mx = v if v > mx else mx
    if mx > 0 and mx < np.inf:
        e = math.frexp(mx)[1]
        s = 0.0
        for j in range(x.shape[1]):
            v = math.ldexp(np.float64(widen(x[i, j])), -e)  # exact: a power of two
            s += v * v
    elif s == s:
        s = mx  # 0 or inf
    return np.sqrt(s), e


@jit(inline="always")
def _inv_norm(nrm):
    """``1 / nrm``, and 0 for a zero, inf or NaN norm: that row's scores come out 0 or NaN (inf * 0),
    as when packed."""
    return 1.0 / nrm if nrm > 0 and nrm < np.inf else 0.0


@jit
def _inv_norms(x, lo, hi, inv, norms, exps):
    """``norms[i] = |x_i|`` (float64 sums) and ``inv[i] = 1/norms[i]`` (0 for a zero or non-finite
    norm); a row whose sum of squares leaves ``[lo, hi]`` is measured scaled by ``2^-exps[i]``
    (``2^exps[i]`` its largest magnitude), else ``exps[i] = 0``.

    Serial: one memory-bound pass over the operand, beside a GEMM over it that is ``n`` (or the
    other side's rows) times longer. Measured on Zen 5, float32: 100000 x 256 rows 3.2 ms serial,
    2.8 ms on 2 threads (a top-k search over them takes hundreds of ms); as a ``prange`` kernel it
    cost a cold first call of cosine_similarity ~0.8 s of compiling (parallel lowering), and
    ``fastla.kernels`` needed a serial copy of it besides."""
    for i in range(x.shape[0]):
        wide_vectors()
        nrm, e = _row_norm(x, i, lo, hi)
        norms[i] = nrm
        inv[i] = _inv_norm(nrm)
        exps[i] = e


def _inv_norms_numba(x):
    """``(x', inv, norms)`` as :func:`_inv_norms_numpy`, by the compiled pass."""
    n = x.shape[0]
    dt = _compute_dtype(x.dtype)
    inv = np.empty(n, dt)
    norms = np.empty(n)
    exps = np.empty(n, np.int64)
    lo, hi = _SQ_RANGE[dt]
    _inv_norms(_kernel_view(x), lo, hi, inv, norms, exps)
    rows = np.flatnonzero(exps)
    if rows.size:
        x = x.copy()
        x[rows] = np.ldexp(x[rows], -exps[rows, None])
    return x, inv, norms


@jit(python_wrapper=False)
def _mirror_tile_row(c, t, bs):
    """``c[i, j] = c[j, i]`` for ``j < i`` in the rows of tile row ``t`` (``bs`` x ``bs`` tiles)."""
    n = c.shape[0]
    i0 = t * bs
    i1 = min(n, i0 + bs)
    for j0 in range(0, i1, bs):
        for i in range(i0, i1):
            for j in range(j0, min(j0 + bs, i)):
                c[i, j] = c[j, i]


@jit(python_wrapper=False)
def _mirror_task(c, bs, task):
    """Task ``task`` of :func:`_mirror_upper`: tile rows ``task`` and ``nt - 1 - task`` (one row
    when they meet). Tile row ``t`` holds ``t`` tiles to copy, so every task gets the same work."""
    nt = (c.shape[0] + bs - 1) // bs
    # through its symbol: two linked call sites compiled its code into this task again
    _ool(_mirror_tile_row, (c, task, bs))
    if nt - 1 - task != task:
        _ool(_mirror_tile_row, (c, nt - 1 - task, bs))


@jit
def _mirror_upper(c, bs, at, threads):
    """Copy the strict upper triangle of square C-contiguous ``c`` onto the lower one, ``bs`` x
    ``bs`` tiles: :func:`_mirror_task` for each pair of tile rows, through its entry address ``at``
    (``fastla._intrinsics.parallel_tasks``). A ``prange`` loop before, whose parallel lowering was
    most of the 0.94 s this step added to ``cosine_similarity(X)``'s cold first call (Zen 4)."""
    nt = (c.shape[0] + bs - 1) // bs
    _intrinsics.parallel_tasks(at, _mirror_task, (c, bs), (nt + 1) // 2, threads)


#: :func:`_mirror_task` compiled once per dtype, run through its address by :func:`_mirror_upper`.
MIRROR = _jit.Entry(_mirror_task, lambda dtype: (np.empty((1, 1), dtype), 0, 0))


def _matrix_numba_2d(x, y, out):
    x = _c_input(x)
    n = x.shape[0]
    dt = x.dtype
    blk = _gk.BLOCKING[dt]
    threads = _jit.threads_here()
    one = dt.type(1)
    x, inv_x, norms = _inv_norms_numba(x)
    if y is None:
        c = np.empty((n, n), dt) if out is None else out
        flat = c.reshape(-1)
        # Row blocks of the upper triangle: block [i0, i1) x [i0, n). The lower triangle inside
        # the diagonal blocks is computed and then overwritten by the mirror (n * bs / 2 wasted
        # products, 2.5% for n = 10 000).
        bs = max(blk.MR, 256 * threads)
        for i0 in range(0, n, bs):
            i1 = min(n, i0 + bs)
            mc = _gk.row_blocking(i1 - i0, dt.itemsize, threads)
            tiles = _gk.tiles(dt, blk.KC, mc, blk.NC)
            _gk.gemm_to(x[i0:i1], x[i0:].T, flat, i0 * n + i0, n, one, inv_x[i0:i1], inv_x[i0:], tiles)
        _mirror_upper(c, 64, MIRROR.address(dt), threads)
        _unit_diagonal(c, norms)
        return c
    y = _c_input(y)
    m = y.shape[0]
    y, inv_y, _ = _inv_norms_numba(y)
    c = np.empty((n, m), dt) if out is None else out
    mc = _gk.row_blocking(n, dt.itemsize, threads)
    tiles = _gk.tiles(dt, blk.KC, mc, blk.NC)
    _gk.gemm_to(x, y.T, c.reshape(-1), 0, m, one, inv_x, inv_y, tiles)
    return c


@_MATRIX.register("numba", needs_numba=True)
def _matrix_numba(x, y, out, kind):
    """Packed GEMM with the inverse norms folded into the packing; upper triangle for ``Y=None``."""
    direct = _direct_out(out, kind, x.dtype, x, x if y is None else y)
    return _finish(_matrix_numba_2d(x, y, direct), out, kind)


@jit(inline="always")
def _worse(sa, ia, sb, ib):
    """Entry ``(sa, ia)`` ranks below ``(sb, ib)``: a lower score, or NaN, or a tie and a higher index."""
    if sa != sa:
        return sb == sb or ia > ib
    return sb == sb and (sa < sb or (sa == sb and ia > ib))


@jit(inline="always")
def _insert(s_row, i_row, size, v, j):
    """Insert ``(v, j)`` into the sorted first ``size`` entries (dropping the last if full)."""
    p = min(size, s_row.shape[0] - 1)
    last = p
    while p > 0 and _worse(s_row[p - 1], i_row[p - 1], v, j):
        p -= 1
    for t in range(last, p, -1):
        s_row[t] = s_row[t - 1]
        i_row[t] = i_row[t - 1]
    s_row[p] = v
    i_row[p] = j


@jit(inline="always")
def _swap(s_row, i_row, a, b):
    s_row[a], s_row[b] = s_row[b], s_row[a]
    i_row[a], i_row[b] = i_row[b], i_row[a]


#: values :func:`_kth_smallest` finishes by sorting, and the partition passes after which it sorts
#: whatever is left (a median-of-three pivot that keeps missing)
_SELECT_SMALL = 16
_SELECT_PASSES = 48
#: the gaps of :func:`_shell_sort` (Ciura's), down to 1: an insertion sort
_SHELL_GAPS = (701, 301, 132, 57, 23, 10, 4, 1)


@jit(inline="always")
def _shell_sort(a, lo, hi):
    """Sort ``a[lo:hi]`` in place (int64): insertion sorts over shrinking gaps. The end of
    :func:`_kth_smallest` (a few values, or what a run of bad pivots left), where ``np.sort``
    compiled Numba's quicksort into the top-k's kernels: 1 s of their cold first call."""
    for gap in _SHELL_GAPS:
        for i in range(lo + gap, hi):
            x = a[i]
            j = i
            while j >= lo + gap and a[j - gap] > x:
                a[j] = a[j - gap]
                j -= gap
            a[j] = x


@jit(python_wrapper=False)
def _kth_smallest(a, b, n, kth):
    """The ``kth`` smallest (from 0) of the int64 values ``a[:n]``; ``a`` and ``b`` (``n`` long at
    least) are scratch. Quickselect with a median-of-three pivot whose passes partition from one
    buffer into the other: each value is written both at the next slot from the front and at the
    next from the back, and only the pointer of its side moves (no branch on the comparison, and
    the values equal to the pivot, dropped, end every pass's ties)."""
    src, dst = a, b
    base = 0
    m = n
    target = kth
    for _ in range(_SELECT_PASSES):
        if m <= _SELECT_SMALL:
            break
        x0, x1, x2 = src[_U(base)], src[_U(base + m // 2)], src[_U(base + m - 1)]
        p = max(min(x0, x1), min(max(x0, x1), x2))
        lo = 0
        hi = m - 1
        for t in range(_U(base), _U(base + m)):
            x = src[t]
            dst[_U(lo)] = x
            dst[_U(hi)] = x
            lo += 1 if x < p else 0
            hi -= 1 if x > p else 0
        # dst[:lo] < p, dst[hi + 1 : m] > p; the hi + 1 - lo values between equal p
        if target < lo:
            base, m = 0, lo
        elif target <= hi:
            return p
        else:
            base, m, target = hi + 1, m - hi - 1, target - hi - 1
        src, dst = dst, src
    _shell_sort(src, base, base + m)
    return src[base + target]


@jit(python_wrapper=False)
def _select_best(s_row, i_row, n, k):
    """Reorder the first ``n`` entries so that the best ``k`` of them (by the ranking rule) come
    first, the ``k``-th best at ``k - 1``. Ranked by :func:`_sort_key` (one integer compare, ties by
    index): the ``k``-th smallest key by :func:`_kth_smallest`, the lowest indices among the
    entries that tie with it by the same (indices are distinct), then one pass that moves the
    entries that rank at or above the ``k``-th best to the front, in their order (each written,
    and the write position moved past the kept ones only: no branch). The quickselect that moved
    every entry's key, score and index in place before it spent ~190 us a query on the compactions
    of a k = 1000 search over 100 000 rows (Zen 4), a quarter of the search."""
    scratch = _intrinsics.empty(3 * n, np.int64)
    keys, a, b = scratch[:n], scratch[n : 2 * n], scratch[2 * n :]
    for p in range(n):
        key = _sort_key(s_row[p])
        keys[p] = key
        a[p] = key
    kth = _ool(_kth_smallest, (a, b, n, k - 1))  # compiled once, for one signature
    below = 0
    ties = 0
    last = -1  # the highest index that ties with the k-th key
    for p in range(n):
        key = keys[p]
        below += 1 if key < kth else 0
        ties += 1 if key == kth else 0
        last = max(last, i_row[p] if key == kth else -1)
    if below + ties > k:  # more ties than places: the lowest k - below of their indices
        t = 0
        for p in range(n):
            if keys[p] == kth:
                a[t] = i_row[p]
                t += 1
        last = _ool(_kth_smallest, (a, b, ties, k - below - 1))
    at = 0  # where the k-th best lands
    w = 0
    for p in range(n):
        key, ip = keys[p], i_row[p]
        s_row[w] = s_row[p]
        i_row[w] = ip
        at = w if (key == kth and ip == last) else at
        w += 1 if (key < kth or (key == kth and ip <= last)) else 0
    _swap(s_row, i_row, at, k - 1)


@jit(python_wrapper=False)
def _best_into(s_row, i_row, n, s_out, i_out):
    """The best ``min(n, k)`` of the pool's first ``n`` entries into ``s_out``/``i_out`` (``k``
    long), in no particular order; returns how many."""
    m = min(n, s_out.shape[0])
    if n > m:
        _intrinsics.call_out_of_line(_select_best, (s_row, i_row, n, m))
    for p in range(m):
        s_out[p] = s_row[p]
        i_out[p] = i_row[p]
    return m


@jit(inline="always")
def _sort_key(v):
    """An int64 that orders entries as the ranking rule does, best (lowest key) first: decreasing
    score, NaN last. Equal scores (``-0.0`` and ``0.0`` too) get equal keys, which the stable sort
    of :func:`_rank_sort` leaves in index order. The score's float64 bits, negatives' magnitude
    bits flipped (ascending as integers), then complemented (descending)."""
    if v != v:
        return np.int64(0x7FFFFFFFFFFFFFFF)
    if v == 0:  # -0.0 as 0.0 (adding 0.0 would not do: the no-signed-zeros fastmath drops it)
        return ~np.int64(0)
    b = _intrinsics.f64_as_i64(np.float64(v))
    if b < 0:
        b = b ^ np.int64(0x7FFFFFFFFFFFFFFF)
    return ~b


@jit(inline="always")
def _byte(src_k, src_i, p, shift, by_index):
    """Entry ``p``'s byte at ``shift`` of its index (``by_index``) or of its key; the key's top byte
    with its sign bit flipped, so that negative keys come first."""
    if by_index:
        return (src_i[p] >> shift) & 255
    d = (src_k[p] >> shift) & 255
    return d ^ 128 if shift == 56 else d


@jit(python_wrapper=False)
def _radix_pass(src_k, src_i, src_s, dst_k, dst_i, dst_s, m, shift, by_index, count):
    """One stable counting-sort pass of the first ``m`` entries by one byte (:func:`_byte`); False,
    having moved nothing, when every entry has the same byte. Called through its symbol
    (compiled once, where inlined at its two call sites it cost the first packed top-k ~0.8 s)."""
    for d in range(256):
        count[d] = 0
    for p in range(m):
        count[_byte(src_k, src_i, p, shift, by_index)] += 1
    for d in range(256):
        if count[d] == m:
            return False
    total = 0
    for d in range(256):
        c = count[d]
        count[d] = total
        total += c
    for p in range(m):
        d = _byte(src_k, src_i, p, shift, by_index)
        q = count[d]
        count[d] = q + 1
        dst_k[q] = src_k[p]
        dst_i[q] = src_i[p]
        dst_s[q] = src_s[p]
    return True


#: entries up to which :func:`_rank_sort` runs an insertion sort instead of its radix passes, each of
#: which clears, counts and sums 256 buckets (up to ten passes for a few entries: float32 scores,
#: indices past 255): 1000 queries over 128 x 64 float32 corpus rows, k = 10, spent ~2 us a query
#: there (Zen 4)
_RANK_INSERTION = 32


@jit(python_wrapper=False)
def _rank_sort(s, idx, m):
    """Sort the first ``m`` entries of ``s``/``idx`` into rank order (decreasing score, NaN last,
    ties to the lower index): a stable LSD radix sort by the index's bytes, then by
    :func:`_sort_key`'s. Skips the bytes every entry shares (most of a float32 score's). 1000 queries'
    best 1000 of 100 000 (Zen 5, 2 threads): 40 ms as a heap sort before, most of what k = 1000
    costs over k = 10 after the merges. Up to ``_RANK_INSERTION`` entries, an insertion sort."""
    keys = _intrinsics.empty((2, m), np.int64)  # two buffers: each pass moves entries from one to the other
    ids = _intrinsics.empty((2, m), idx.dtype)
    scores = _intrinsics.empty((2, m), s.dtype)
    count = _intrinsics.empty(256, np.int64)
    top = 0
    for p in range(m):
        keys[0, p] = _sort_key(s[p])
        ids[0, p] = idx[p]
        scores[0, p] = s[p]
        top = max(top, idx[p])
    src = 0
    if m <= _RANK_INSERTION:  # an insertion sort by (key, index)
        for p in range(1, m):
            kp, ip, sp = keys[0, p], ids[0, p], scores[0, p]
            q = p
            while q > 0 and (keys[0, q - 1] > kp or (keys[0, q - 1] == kp and ids[0, q - 1] > ip)):
                keys[0, q], ids[0, q], scores[0, q] = keys[0, q - 1], ids[0, q - 1], scores[0, q - 1]
                q -= 1
            keys[0, q], ids[0, q], scores[0, q] = kp, ip, sp
    else:
        for shift in range(0, 128, 8):  # the index's bytes (up to its highest set one), then the key's
            by_index = shift < 64
            if by_index and (top >> shift) == 0:
                continue
            sh = shift % 64
            a, b = src, 1 - src
            moved = (keys[a], ids[a], scores[a], keys[b], ids[b], scores[b], m, sh, by_index, count)
            if _ool(_radix_pass, moved):
                src = b
    for p in range(m):
        s[p] = scores[src, p]
        idx[p] = ids[src, p]


@jit(python_wrapper=False)
def _finish_row(s_row, i_row, n, s_out, i_out):
    """:func:`_best_into`, then sorted into rank order, best first (:func:`_rank_sort`); both through
    their symbols, where linked they were optimised and code-generated again in this function."""
    m = _ool(_best_into, (s_row, i_row, n, s_out, i_out))
    _ool(_rank_sort, (s_out, i_out, m))


#: scores a merge compares with the k-th best at once (:func:`fastla._intrinsics.above_mask`)
_MERGE_CHUNK = _intrinsics.MASK_LANES
_ONE = np.uint64(1)


@jit(inline="always")
def _append(s_row, i_row, n, k, v, idx):
    """Append the candidate ``idx`` with score ``v`` to a pool of ``n >= k`` entries (see
    :func:`_merge_row`); a pool full at ``2k`` is compacted to its best ``k``. Returns the new
    ``n``: ``k`` right after a compaction (an append alone leaves more than ``k``), when the caller
    re-reads its threshold, the new ``k``-th best."""
    s_row[n] = v
    i_row[n] = idx
    n += 1
    if n == 2 * k:
        _intrinsics.call_out_of_line(_select_best, (s_row, i_row, n, k))
        n = k
    return n


@jit(python_wrapper=False)
def _merge_row(sc, off, cols, j0, s_row, i_row, sizes, r):
    """Merge the scores ``sc[off:off+cols]`` of corpus rows ``j0...`` into one query's candidate pool
    ``s_row``/``i_row`` (``2k`` entries, ``sizes[r]`` of them in use), which holds the best ``k`` of
    the rows merged before among its entries (all of them while fewer than ``k``). A candidate that
    beats the ``k``-th best of the last compaction (at ``k - 1``) is appended; a full pool is
    compacted to its best ``k`` (:func:`_select_best`). Each candidate costs O(1) amortised, where a
    heap paid O(log k) and a sorted list k/2 (1000 queries x 100 000 rows, k = 1000: 2.4 s sorted,
    0.46-0.68 s as a heap, 0.36-0.52 s pooled); :func:`_finish_row` orders the best k at the end."""
    k = s_row.shape[0] // 2
    n = sizes[r]
    start = 0
    if n < k:  # the first k rows merged enter unconditionally (the pool is never below k after)
        start = min(cols, k - n)
        for j in range(start):
            s_row[n] = sc[off + j]
            i_row[n] = j0 + j
            n += 1
        if n == k:  # full for the first time: its worst at k - 1
            _intrinsics.call_out_of_line(_select_best, (s_row, i_row, n, k))
    if n >= k:
        thr = s_row[k - 1]
        thr_nan = thr != thr
        for c0 in range(start, cols, _MERGE_CHUNK):
            c1 = min(cols, c0 + _MERGE_CHUNK)
            if not thr_nan and c1 - c0 == _MERGE_CHUNK:
                # the chunk's scores above the k-th best as the bits of a mask (one vector compare),
                # appended lowest bit first: the work follows the candidates, not the scores
                above = _intrinsics.above_mask(sc, off + c0, thr)
                while above != 0:
                    j = c0 + _intrinsics.lowest_bit(above)
                    above &= above - _ONE
                    n = _append(s_row, i_row, n, k, sc[_U(off + j)], j0 + j)
                    if n == k:  # compacted: a higher k-th best; the chunk's bits left compared again
                        thr = s_row[k - 1]
                        above &= _intrinsics.above_mask(sc, off + c0, thr)
                continue
            for j in range(c0, c1):
                v = sc[_U(off + j)]
                if v > thr or (thr_nan and v == v):  # beats the k-th best (a tie keeps the lower index)
                    n = _append(s_row, i_row, n, k, v, j0 + j)
                    if n == k:  # compacted
                        thr = s_row[k - 1]
                        thr_nan = thr != thr
    sizes[r] = n


class TopkTiling(NamedTuple):
    """Blocking of one top-k call: query rows per thread block, corpus rows per tile, GEMM depth,
    and the threads the scratch buffers are sized for; and the entry addresses of its two task
    kernels, :func:`_topk_pack_task` and :func:`_topk_block_task` (None with the JIT off)."""

    mc: int
    tn: int
    kc: int
    threads: int
    pack_at: int | None
    block_at: int | None


class TopkScratch(NamedTuple):
    """The packed corpus tile (shared), and per thread the packed query block, its score block
    and a micro-kernel edge tile."""

    bp: np.ndarray
    ap: np.ndarray
    sc: np.ndarray
    tiles: np.ndarray


def _pack_corpus_panel(b, p0, kc, j0, cols, col_scale, out, off):
    """One panel of the corpus operand ``b`` packed by ``_gemm_kernels.pack_b_half_panel`` when
    ``b`` holds a float16 corpus's bits (``uint16``), else by ``pack_b_panel``: picked from ``b``'s
    type where the pack task compiles, and called through its symbol, so that the float kernels
    never compile the float16 packer. Not a function argument of the task, as it was: a dispatcher
    in a kernel's signature is keyed by a per-process identity (Numba's uuid of the dispatcher), so
    the cached packed top-k never matched in another process and compiled again in each one (0.8 s
    of its first call, whatever the warm-up had cached)."""
    pack = _gk.pack_b_half_panel if b.data.dtype == np.uint16 else _gk.pack_b_panel
    pack(b, p0, kc, j0, cols, col_scale, out, off)


@_jit.overload(_pack_corpus_panel)
def _pack_corpus_panel_typer(b, p0, kc, j0, cols, col_scale, out, off):
    half = b.types[b.fields.index("data")].dtype == _jit.nb_types.uint16
    pack = _gk.pack_b_half_panel if half else _gk.pack_b_panel

    def impl(b, p0, kc, j0, cols, col_scale, out, off):
        _ool(pack, (b, p0, kc, j0, cols, col_scale, out, off))

    return impl


@jit(python_wrapper=False)
def _topk_pack_task(b, inv_c, bp, t, j0, cols, jp):
    """Task ``jp`` of a corpus tile (rows ``j0 : j0 + cols``): its NR-wide panel ``jp``, scaled by
    the rows' inverse norms, at every depth block (:func:`_pack_corpus_panel`)."""
    d = b.rows
    tn = t.tn
    kc_max = min(t.kc, d)
    nr = _gk.tile_nr(bp)
    # borrowed: no reference counts for the call (see _topk_block_task)
    b = _gk.borrowed_operand(b)
    inv_c, bp = _intrinsics.borrow(inv_c), _intrinsics.borrow(bp)
    pack_cols = min(nr, cols - jp * nr)
    for pc in range(0, d, kc_max):
        kc = min(kc_max, d - pc)
        _pack_corpus_panel(b, pc, kc, j0 + jp * nr, pack_cols, inv_c, bp, pc * tn + jp * kc * nr)


@jit(python_wrapper=False)
def _topk_block_task(q, b, inv_q, alpha, t, scratch, pool, scores, index, j0, cols, th):
    """Task ``th`` of a corpus tile: thread ``th``'s share of the queries (a contiguous run, in
    blocks of up to ``t.mc`` rows), each block scored against the packed tile by the GEMM step
    (``_gemm_kernels.a_block``) into the thread's score block and merged into its queries'
    candidate pools; after the last tile, their best k in rank order."""
    mc, tn, threads = t.mc, t.tn, t.threads
    # every array borrowed: the calls below, per block and per query row, would otherwise take and
    # drop references on counts that every thread's task updates (contended atomics)
    bw = _intrinsics.borrow
    bp, ap, sc, tiles = bw(scratch.bp), bw(scratch.ap), bw(scratch.sc), bw(scratch.tiles)
    pool_s, pool_i, sizes = bw(pool[0]), bw(pool[1]), bw(pool[2])
    scores, index, inv_q = bw(scores), bw(index), bw(inv_q)
    q = _gk.borrowed_operand(q)
    nq, d = q.rows, q.cols
    ncorp = b.cols
    mr = _gk.tile_mr(ap)
    nr = _gk.tile_nr(ap)
    kc_max = min(t.kc, d)
    mc_pad = (mc + mr - 1) // mr * mr
    share = -(-nq // threads)
    npan = (cols + nr - 1) // nr
    a_off = th * mc_pad * kc_max
    s_off = th * mc_pad * tn
    tile = tiles[th * mr * nr : (th + 1) * mr * nr]
    end = min(nq, (th + 1) * share)
    for i0 in range(th * share, end, mc):
        rows = min(mc, end - i0)
        for pc in range(0, d, kc_max):
            kc = min(kc_max, d - pc)
            at = _gk.Block(i0, rows, pc, kc, a_off, npan, cols, s_off, tn, pc > 0, 0, kc * nr, nr)
            panels = bp[pc * tn :]
            _ool(_gk.a_block, (q, alpha, inv_q, ap, as_readonly(panels), panels, sc, tile, at))
        for r in range(rows):
            i = i0 + r
            _ool(_merge_row, (sc, s_off + r * tn, cols, j0, pool_s[i], pool_i[i], sizes, i))
            if j0 + cols == ncorp:  # the last tile: the best k, in rank order
                _ool(_finish_row, (pool_s[i], pool_i[i], sizes[i], scores[i], index[i]))


@jit
def _topk_kernel(q, b, inv_q, inv_c, alpha, t, scratch, pool, scores, index):
    """Fused top-k: corpus tiles of ``t.tn`` rows (packed once into ``scratch.bp``, shared) and
    query blocks of ``t.mc`` rows per thread (packed into ``scratch.ap``), scored by the GEMM
    macro-kernel into the thread's score block in ``scratch.sc`` and merged at once into each
    query's candidate pool (``pool``: scores, indices and sizes, see :func:`_merge_row`), whose best
    k go to ``scores``/``index`` after the last tile. ``q`` (queries) and ``b`` (the corpus
    transposed) are GEMM operands (``_gemm_kernels.Operand``); ``t`` a :class:`TopkTiling`,
    ``scratch`` a :class:`TopkScratch`.
    Per tile, two parallel loops of tasks
    (``fastla._intrinsics.parallel_tasks``, no ``prange``): the panels of the tile, then the
    threads' query blocks."""
    ncorp = b.cols
    nr = _gk.tile_nr(scratch.bp)
    threads = t.threads
    for j0 in range(0, ncorp, t.tn):
        cols = min(t.tn, ncorp - j0)
        npan = (cols + nr - 1) // nr
        panels = (b, inv_c, scratch.bp, t, j0, cols)
        # runs of consecutive panels per thread: the corpus rows stream in order (7% faster)
        _intrinsics.parallel_tasks(t.pack_at, _topk_pack_task, panels, npan, threads, True)
        blocks = (q, b, inv_q, alpha, t, scratch, pool, scores, index, j0, cols)
        _intrinsics.parallel_tasks(t.block_at, _topk_block_task, blocks, threads, threads)


def _corpus_operand(c):
    """The GEMM operand ``c.T`` of the corpus ``c`` (C-contiguous), a float16 one as its uint16 bits."""
    b = _gk.operand(c.T)
    return b._replace(data=_kernel_view(b.data))


def _topk_task_examples(storage, block):
    """Example arguments of :func:`_topk_block_task` (``block``) or :func:`_topk_pack_task` for a
    corpus stored as ``storage``, typed as :func:`_topk_numba` passes them."""
    dtype = _compute_dtype(storage)
    flat = np.empty(1, dtype)
    rows = _c_input(np.zeros((1, 1), dtype))
    a, b = _gk.operand(rows), _corpus_operand(_c_input(np.zeros((1, 1), storage)))
    t = TopkTiling(1, 1, 1, 1, 0, 0)
    if not block:
        return (b, flat, flat, t, 0, 0, 0)
    pool = (np.empty((1, 2), dtype), np.empty((1, 2), np.intp), np.zeros(1, np.int64))
    scores, index = np.empty((1, 1), dtype), np.empty((1, 1), np.intp)
    return (a, b, flat, dtype.type(1), t, TopkScratch(flat, flat, flat, flat), pool, scores, index, 0, 0, 0)


#: The packed top-k's two task kernels, each compiled once per corpus dtype (float16 beside the
#: compute dtypes) and run through its address.
_CORPUS_DTYPES = (np.float32, np.float64, np.float16)
TOPK_PACK = _jit.Entry(_topk_pack_task, lambda dtype: _topk_task_examples(dtype, False), _CORPUS_DTYPES)
TOPK_BLOCK = _jit.Entry(_topk_block_task, lambda dtype: _topk_task_examples(dtype, True), _CORPUS_DTYPES)


#: bytes of each thread's block of scores in the fused top-k, and at most of the packed corpus tile
#: that the threads share (see :func:`_topk_blocking`)
TOPK_SCORE_BLOCK_BYTES = 1536 * 1024
TOPK_TILE_BYTES = 8 * 1024 * 1024


def _topk_blocking(nq, m, d, itemsize, threads):
    """Query block ``mc`` and corpus tile ``tn`` of the fused top-k kernel.

    Each thread's score block (mc x tn) takes ~1.5 MiB: more than L2 holds, but each corpus tile
    costs two parallel launches and a repacking of every query block, and fewer, wider tiles pay
    those less often than the merge pays for reading scores L2 no longer holds. Measured on Zen 4
    (2 threads, 100 000 x 256 float32 corpus, five interleaved rounds, time against a 384 KiB block):
    768 KiB 0.97-0.99, 1.5 MiB 0.96-0.98 and 3 MiB 0.97-0.98 for 1 000 queries, k = 10; 1.5 MiB
    0.97-0.98 at k = 1000, 0.97-0.98 for 100 queries (3 MiB 0.99-1.04) and 5 000 queries, and 0.96-0.98
    for 1 000 queries over a 50 000 x 256 float64 corpus. (The 384 KiB block of before kept it in L2:
    96 x 1024 at 162 GFLOP/s then, with the threads taking blocks round robin.) The tile's packed
    corpus rows (``tn x d``) stay within ``TOPK_TILE_BYTES``, so that a long ``d`` or a few queries
    (a short ``mc``, a wide ``tn``) do not grow the scratch past a few MiB, and a tile is no wider
    than the corpus (``m`` rows) rounded down to whole panels.
    """
    blk = _gk.BLOCKING[np.dtype(f"f{itemsize}")]
    per_thread = -(-nq // max(threads, 1))
    # each thread's share of the queries (a contiguous run) in as many blocks of up to 16 micro-tile
    # rows as it needs, of even sizes: the threads took blocks of 96 round robin, and 500 queries
    # gave one thread 288 rows and the other 212 (now 250 each, in blocks of 84, 84 and 82)
    per_block = -(-per_thread // -(-per_thread // (16 * blk.MR)))
    mc = max(blk.MR, -(-per_block // blk.MR) * blk.MR)
    tn = min(TOPK_SCORE_BLOCK_BYTES // mc, TOPK_TILE_BYTES // max(d, 1)) // itemsize
    tn = max(blk.NR, min(tn, m) // blk.NR * blk.NR)
    return mc, tn


@jit(inline="always")
def _put_column(buf, col, i, inv, s0, s1, s2, s3):
    """Scores of queries ``i..i+3`` against one corpus row: its dot products times its inverse norm."""
    buf[i, col] = s0 * inv
    buf[i + 1, col] = s1 * inv
    buf[i + 2, col] = s2 * inv
    buf[i + 3, col] = s3 * inv


@jit(python_wrapper=False)
def _scaled_column(qn, c, j, e, inv, buf, col):
    """Scores of every query against corpus row ``j``, measured scaled by ``2^-e`` (exact) as its
    norm was: the row is out of the range where its plain products are safe."""
    for i in range(qn.shape[0]):
        acc = 0.0
        for t in range(qn.shape[1]):
            acc += np.float64(qn[i, t]) * math.ldexp(np.float64(widen(c[j, t])), -e)
        buf[i, col] = acc * inv


@jit(python_wrapper=False)
def _stream_part(qn, c, zero, lo, hi, scratch, s_parts, i_parts, th):
    """Thread ``th``'s share of the streaming top-k: the top-k of the unit queries ``qn`` over its
    contiguous share of the corpus rows, ``[j_lo, j_hi)``, into ``s_parts[th]``/``i_parts[th]``
    (one row per query), with its slices of ``scratch`` (score block, inverse norms and exponents,
    candidate pools and their sizes, each indexed by thread first). One pass over those rows, a
    tile of ``buf.shape[1]`` rows at a time: their inverse norms into ``inv``/``exps`` and the first
    query's scores (:func:`_row_norm_dot`) as they arrive from memory; with more queries, their dot
    products with every query from L2 (:func:`fastla._math.dot4x4`: four rows by four queries; ``qn``
    has a multiple of 4 rows, zero-padded) into ``buf`` (queries x rows); then merged into each
    query's top-k. One query is thus one pass (Zen 5, 100 000 x 256 float32, 2 threads, interleaved
    runs: mostly 2.1-2.6 ms, against 3.9-4.8 ms for the norm pass and a 4 x 4 block three quarters
    padding)."""
    wide_vectors()
    nq4, d = qn.shape
    m = c.shape[0]
    per = -(-m // s_parts.shape[0])
    j_lo = min(m, th * per)
    j_hi = min(m, j_lo + per)
    # every array borrowed: the calls below, per row and per tile, would otherwise take and drop
    # references on counts that every thread's share updates (contended atomics; tested)
    bw = _intrinsics.borrow
    bufs, invs, exps_all, pools_s, pools_i, pool_sizes = scratch
    buf, inv, exps = bw(bufs[th]), bw(invs[th]), bw(exps_all[th])
    pool_s, pool_i, sizes = bw(pools_s[th]), bw(pools_i[th]), bw(pool_sizes[th])
    s_part, i_part = bw(s_parts[th]), bw(i_parts[th])
    tb = buf.shape[1]
    zero_i = m - m  # a run-time 0 (see _gemm_kernels' "literal arguments")
    flat = c.reshape(c.size)
    one = s_part.shape[0] == 1
    cb, qn = bw(c), bw(qn)
    q0 = bw(qn[0])
    for j0 in range(j_lo, j_hi, tb):
        cols = min(tb, j_hi - j0)
        for jj in range(cols):
            ahead = (j0 + jj + _STREAM_AHEAD) * d
            prefetch_span(flat, ahead, min(ahead + d, j_hi * d))
            # the first query's score in the same pass: all of one query's work, as the row arrives
            nrm, exps[jj], dot = _row_norm_dot(cb, j0 + jj, q0, zero, lo, hi)
            inv[jj] = _inv_norm(nrm)
            buf[0, jj] = dot * inv[jj]
        # several queries: scored again from L2 four by four (the first one's scores rewritten)
        for g in range(0, 0 if one else cols, 4):
            # past the last row, the last row is scored again (into its own column)
            c0, c1, c2, c3 = g, min(g + 1, cols - 1), min(g + 2, cols - 1), min(g + 3, cols - 1)
            for i in range(0, nq4, 4):
                s = _math.dot4x4(cb, j0 + c0, j0 + c1, j0 + c2, j0 + c3, qn, i, i + 1, i + 2, i + 3, zero)
                _put_column(buf, c3, i, inv[c3], s[12], s[13], s[14], s[15])
                _put_column(buf, c2, i, inv[c2], s[8], s[9], s[10], s[11])
                _put_column(buf, c1, i, inv[c1], s[4], s[5], s[6], s[7])
                _put_column(buf, c0, i, inv[c0], s[0], s[1], s[2], s[3])
        # the callees through their symbols: compiled once each, not again inside this kernel
        for jj in range(cols):
            if exps[jj]:
                _ool(_scaled_column, (qn, cb, j0 + jj, int(exps[jj]), inv[jj], buf, jj))
        for i in range(s_part.shape[0]):
            _ool(_merge_row, (buf[i], zero_i, cols, j0, pool_s[i], pool_i[i], sizes, i))
    for i in range(s_part.shape[0]):  # unordered: the merge of the threads' lists sorts them
        _ool(_best_into, (pool_s[i], pool_i[i], sizes[i], s_part[i], i_part[i]))


@jit
def _topk_stream(qn, c, zero, lo, hi, scratch, s_parts, i_parts, at):
    """:func:`_stream_part` for every thread (``s_parts.shape[0]`` of them), through its entry
    address ``at`` (``fastla._intrinsics.parallel_tasks``: a parallel loop without a ``prange``)."""
    threads = s_parts.shape[0]
    part = (qn, c, zero, lo, hi, scratch, s_parts, i_parts)
    _intrinsics.parallel_tasks(at, _stream_part, part, threads, threads)


def _stream_examples(storage):
    """Example arguments of :func:`_stream_part` for a corpus stored as ``storage``, typed as
    :func:`_topk_streaming` passes them."""
    dtype = _compute_dtype(storage)
    rows = _c_input(np.zeros((4, 1), dtype))
    cube = np.empty((1, 1, 1), dtype)
    index = np.empty((1, 1, 1), np.intp)
    counts = np.zeros((1, 1), np.int64)
    scratch = (cube, np.empty((1, 1)), counts, cube, index, counts)
    lo, hi = _SQ_RANGE[dtype]
    corpus = _kernel_view(_c_input(np.zeros((4, 1), storage)))
    return (rows, corpus, dtype.type(0), lo, hi, scratch, cube, index, 0)


#: :func:`_stream_part` compiled once per corpus dtype, run through its address by :func:`_topk_stream`.
STREAM = _jit.Entry(_stream_part, _stream_examples, _CORPUS_DTYPES)


def _merge_parts(s_parts, i_parts, counts, scores, index):
    """Merge the per-thread top-k lists (thread ``t`` holding ``counts[t]`` entries per query) into
    ``scores``/``index`` by the ranking rule: decreasing score, NaN last, ties to the lower index.
    NumPy: a few queries' lists, where a compiled merge cost 0.3 s of compiling."""
    k = scores.shape[1]
    s_all = np.concatenate([s_parts[t, :, :n] for t, n in enumerate(counts)], axis=1)
    i_all = np.concatenate([i_parts[t, :, :n] for t, n in enumerate(counts)], axis=1)
    nan = np.isnan(s_all)
    order = np.lexsort((i_all, np.where(nan, 0, -s_all), nan), axis=1)[:, :k]
    scores[:] = np.take_along_axis(s_all, order, axis=1)
    index[:] = np.take_along_axis(i_all, order, axis=1)


def _topk_streaming(q, c, k, scores, idx):
    """Top-k of a few queries in one pass over the corpus (no packing): its rows are read once, each
    normalised and scored against every query while in L1/L2. Given corpus norms are not used: the
    pass that measures them is also the one that brings the rows in from memory (Zen 5, one query
    over 100 000 x 256 float32: 4.4 ms measuring them, 5.0 ms with them given and the rows first read
    by the dot products, four rows at once)."""
    nq = q.shape[0]
    m = c.shape[0]
    dt = q.dtype
    threads = max(1, min(_jit.threads_here(), m))
    # a few queries' norms by NumPy: no compiled norm pass to compile for them (0.2-0.3 s of the
    # cold first call; the corpus's norms are the kernel's own)
    q, inv_q, _ = _inv_norms_numpy(q)
    qn = np.zeros((-(-nq // 4) * 4, q.shape[1]), dt)  # zero rows pad to a multiple of 4
    with np.errstate(invalid="ignore"):
        np.multiply(q, inv_q[:, None], out=qn[:nq])  # unit rows; inf/NaN rows become NaN
    sizes = np.zeros((threads, nq), np.int64)  # of the candidate pools, see _merge_row
    scratch = (
        np.empty((threads, qn.shape[0], _STREAM_TILE), dt),
        np.empty((threads, _STREAM_TILE)),
        np.empty((threads, _STREAM_TILE), np.int64),
        np.empty((threads, nq, 2 * k), dt),
        np.empty((threads, nq, 2 * k), np.intp),
        sizes,
    )
    s_parts = np.empty((threads, nq, k), dt)
    i_parts = np.empty((threads, nq, k), np.intp)
    lo, hi = _SQ_RANGE[dt]
    at = STREAM.address(c.dtype)
    _topk_stream(_c_input(qn), _kernel_view(c), dt.type(0), lo, hi, scratch, s_parts, i_parts, at)
    # every query of a share saw the same rows: its list holds min(k, rows in the share) entries
    _merge_parts(s_parts, i_parts, np.minimum(sizes[:, 0], k), scores, idx)


@_TOPK.register("numba", needs_numba=True)
def _topk_numba(q, c, k, batch_size, squeeze, c_norms):
    """Corpus tiles scored by the packed GEMM micro-kernel, merged into per-query sorted top-k."""
    nq, d = q.shape
    dt = q.dtype
    scores = np.empty((nq, k), dt)
    idx = np.empty((nq, k), np.intp)
    if k and nq:
        if d == 0:  # every score is 0: the first k rows, by the tie rule
            scores[:] = 0
            idx[:] = np.arange(k)
        else:
            q = _c_input(q)
            c = _c_input(c)
            if nq < AUTO_RULE["topk_packed_min_queries"]:
                _topk_streaming(q, c, k, scores, idx)
                return _topk_result(scores, idx, squeeze)
            threads = _jit.threads_here()
            mc, tn = _topk_blocking(nq, c.shape[0], d, dt.itemsize, threads)
            blk = _gk.BLOCKING[dt]
            kc = min(blk.KC, d)
            mc_pad = -(-mc // blk.MR) * blk.MR
            # scratch allocated here, not in the kernel, so that tracemalloc accounts for all of it
            bp = _aligned(tn * d, dt)
            ap = _aligned(threads * mc_pad * kc, dt)
            sc = _aligned(threads * mc_pad * tn, dt)
            tiles = _aligned(threads * blk.MR * blk.NR, dt)
            q, inv_q, _ = _inv_norms_numba(q)
            if c_norms is None:
                c, inv_c, _ = _inv_norms_numba(c)
            else:  # one pass over the corpus saved
                c, inv_c = _given_inv_norms(c, c_norms, _inv_norms_numba)
                c = _c_input(c)
            a, b = _gk.operand(q), _corpus_operand(c)
            t = TopkTiling(mc, tn, blk.KC, threads, TOPK_PACK.address(c.dtype), TOPK_BLOCK.address(c.dtype))
            pool = (np.empty((nq, 2 * k), dt), np.empty((nq, 2 * k), np.intp), np.zeros(nq, np.int64))
            scratch = TopkScratch(bp, ap, sc, tiles)
            _topk_kernel(a, b, inv_q, inv_c, dt.type(1), t, scratch, pool, scores, idx)
    return _topk_result(scores, idx, squeeze)
