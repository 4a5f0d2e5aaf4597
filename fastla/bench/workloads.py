"""Benchmark workloads: the single definition used by ``benchmarks/`` and ``python -m fastla bench``.

A :class:`Workload` is one op at one size: a deterministic input generator, the FLOP and byte counts
(for GFLOP/s and GB/s columns), which registry impls run on it (``loop`` only where a call finishes
in about a second), optional *anchors* (non-fastla reference code such as ``scipy.special.softmax``
or the ``np.copyto`` memory bound) and, where a target ratio needs it, a fixed thread count.

Sets: ``smoke`` (the smallest workloads of each op; what plain ``pytest`` runs once per benchmark),
``quick`` (the CI set, under two minutes on 2 cores) and ``full`` (for study).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

SETS = ("smoke", "quick", "full")
SEED = 20261123


@dataclasses.dataclass(frozen=True)
class Workload:
    op: str
    name: str
    make: Callable[[np.random.Generator], tuple[tuple, dict]]
    flops: float = 0.0
    bytes: float = 0.0
    sets: tuple[str, ...] = ("quick", "full")
    loop: bool = False  # whether the pure-Python loop impl runs at this size
    skip_impls: tuple[str, ...] = ()
    study: bool = False  # run the study variants (numba_naive) in the quick set too, not only in full
    auto: bool = False  # also time the public function as users call it (backend=None: auto)
    anchors: tuple[str, ...] = ()  # names in ANCHORS
    full_anchors: tuple[str, ...] = ()  # anchors run in the full set only (slow, and no target needs them)
    threads: int | None = None  # pin this workload's threads (numba and BLAS) to this count

    @property
    def id(self):
        return f"{self.op}[{self.name}]"

    def inputs(self):
        """Fresh deterministic inputs ``(args, kwargs)``."""
        return self.make(np.random.default_rng(SEED))

    def impls(self, set_name="full"):
        """Impl names to run (registry impls, then anchors). The study variants (``numba_naive``)
        run in the full set, and in the quick set only where a target needs them (``study``)."""
        names = [n for n in _implementations(self.op) if n not in self.skip_impls]
        if set_name == "quick" and not self.study:
            names = [n for n in names if n != "numba_naive"]
        if self.auto:
            names.append("auto")
        if not self.loop:
            names = [n for n in names if n != "loop"]
        anchors = self.anchors + (self.full_anchors if set_name == "full" else ())
        return names + [f"anchor:{a}" for a in anchors if _available(a)]

    def paired_anchor(self):
        """The anchor the public function (``auto``) is timed against back to back, batch by batch
        (its call overhead: :func:`fastla.bench.runner.paired_extra_us`): the first available
        anchor of a workload that times ``auto``, else None."""
        if not self.auto:
            return None
        return next((f"anchor:{a}" for a in self.anchors if _available(a)), None)

    def callable(self, impl):
        if impl.startswith("anchor:"):
            return ANCHORS[impl.split(":", 1)[1]]
        if impl == "auto":
            import fastla

            return getattr(fastla, self.op)
        return _implementations(self.op)[impl]


def _implementations(op):
    """The registry's impls of ``op``; ``a+b`` is the composite ``b(a(x), *rest)`` per impl;
    ``dask:op`` runs ``op`` on dask arrays on a local cluster (:func:`_dask_impls`)."""
    import fastla

    if op.startswith("dask:"):
        return _dask_impls(op.split(":", 1)[1])
    if op.startswith("kernels:"):
        from fastla.bench import njit_loops

        return njit_loops.impls(op.split(":", 1)[1])
    if "+" not in op:
        return fastla.implementations(op)
    first, second = (fastla.implementations(o) for o in op.split("+"))

    def compose(f, g):
        return lambda a, *rest, **kw: g(f(a), *rest, **kw)

    return {name: compose(first[name], second[name]) for name in first if name in second}


# --------------------------------------------------------------------------- anchors
# Reference code that is not a fastla impl. Each takes the workload's args and kwargs.


def _copyto(x, *args, **kwargs):
    """Memory-bandwidth bound: read + write the array once (``np.copyto`` into a preallocated out)."""
    out = _copyto.buffers.get((*x.shape, x.dtype.str))
    if out is None:
        out = _copyto.buffers[(*x.shape, x.dtype.str)] = np.empty_like(x)
    np.copyto(out, x)
    return out


_copyto.buffers = {}


def _copy(x, *args, **kwargs):
    """Memory bound of an allocating call: ``x.copy()`` (a new result array, one read + one write)."""
    return x.copy()


ANCHORS: dict[str, Callable] = {"copyto": _copyto, "copy": _copy}
#: Anchor name -> the optional module it needs (the ``bench`` extra); skipped where it is missing.
ANCHOR_REQUIRES: dict[str, str] = {}


def register_anchor(name, requires=None):
    def deco(fn):
        ANCHORS[name] = fn
        if requires:
            ANCHOR_REQUIRES[name] = requires
        return fn

    return deco


def _available(anchor):
    import importlib.util

    module = ANCHOR_REQUIRES.get(anchor)
    return module is None or importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------- generators


def _gemm_inputs(m, k, n, dtype, transpose_b=False):
    def make(rng):
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if transpose_b else (k, n)).astype(dtype)
        return (a, b.T if transpose_b else b), {}

    return make


def _stack_inputs(batch, m, k, n, dtype):
    def make(rng):
        a = rng.standard_normal((batch, m, k)).astype(dtype)
        b = rng.standard_normal((batch, k, n)).astype(dtype)
        return (a, b), {}

    return make


def _dt(dtype):
    return f"f{np.dtype(dtype).itemsize * 8}"


def gemm(m, k, n, dtype, sets=("quick", "full"), threads=None, label=None, study=False, **kw):
    size = np.dtype(dtype).itemsize
    name = label or (f"{m}^3" if m == k == n else f"{m}x{k}x{n}")
    name = f"{name} {_dt(dtype)}" + (f" {threads}t" if threads else "")
    return Workload(
        "matmul",
        name,
        _gemm_inputs(m, k, n, dtype, **kw),
        flops=2.0 * m * k * n,
        bytes=float(size * (m * k + k * n + m * n)),
        sets=sets,
        loop=m * k * n <= 50**3,
        threads=threads,
        skip_impls=() if m * k * n <= 1200**3 else ("numba_naive",),
        study=study,
    )


def stack(batch, m, k, n, dtype, sets=("quick", "full"), threads=None):
    size = np.dtype(dtype).itemsize
    return Workload(
        "matmul",
        f"{batch // 1000}k {m}x{k}@{k}x{n} {_dt(dtype)}" + (f" {threads}t" if threads else ""),
        _stack_inputs(batch, m, k, n, dtype),
        flops=2.0 * batch * m * k * n,
        bytes=float(size * batch * (m * k + k * n + m * n)),
        sets=sets,
        loop=batch * m * k * n <= 2e5,
        threads=threads,
    )


def per_core(w, sets=None):
    """``w`` with one thread on each side (fastla's and the anchor's): the per-core ratio, for ops
    where NumPy runs single-threaded whatever the pin (its ufuncs, stacked LAPACK/BLAS calls)."""
    return dataclasses.replace(w, name=f"{w.name} 1t", threads=1, sets=sets or w.sets)


WORKLOADS: list[Workload] = [
    gemm(48, 48, 48, np.float64, sets=("smoke", "full")),
    gemm(256, 256, 256, np.float64, sets=("full",)),
    gemm(1024, 1024, 1024, np.float64, threads=1, study=True),
    gemm(1024, 1024, 1024, np.float64),
    gemm(1024, 1024, 1024, np.float32, threads=1),
    gemm(1024, 1024, 1024, np.float32, sets=("full",)),
    gemm(1000, 37, 1000, np.float64, threads=1),
    gemm(37, 1000, 1000, np.float64, threads=1),
    gemm(1023, 1023, 1023, np.float64, threads=1, sets=("full",)),
    gemm(1024, 1024, 1024, np.float64, threads=1, transpose_b=True, label="1024^3 B.T", sets=("full",)),
    gemm(2048, 2048, 2048, np.float64, sets=("full",)),
    gemm(1024, 1024, 1024, np.float32, threads=2, sets=("full",)),
    gemm(1023, 1023, 1023, np.float64, sets=("full",)),
    gemm(128, 128, 128, np.float64, sets=("full",)),
    gemm(512, 512, 512, np.float64, sets=("full",)),
    gemm(64, 64, 64, np.float32, sets=("full",)),
    stack(1000, 4, 4, 4, np.float64, sets=("smoke",)),
    stack(100_000, 3, 3, 3, np.float64, sets=("full",)),
    stack(100_000, 4, 4, 4, np.float64),
    stack(100_000, 4, 4, 4, np.float64, threads=1),
    stack(100_000, 4, 4, 4, np.float32, sets=("full",)),
    stack(100_000, 8, 8, 8, np.float64, sets=("full",)),
    stack(100_000, 8, 8, 8, np.float32, sets=("full",)),
    stack(10_000, 16, 16, 16, np.float64, sets=("full",)),
    stack(100_000, 16, 16, 16, np.float64, sets=("full",)),
    stack(100_000, 32, 32, 32, np.float64, sets=("full",)),
]


def rows(op, r, n, dtype, sets=("quick", "full"), axis=-1, anchors=("copy",), out=False):
    """softmax / log_softmax of an (r, n) array along ``axis``: bytes = one read + one write.

    The memory-bound anchor is ``x.copy()`` for the allocating call, ``np.copyto`` for ``out=``.
    """
    size = np.dtype(dtype).itemsize

    def make(rng):
        x = (rng.standard_normal((r, n)) * 3).astype(dtype)
        return (x,), ({"axis": axis, "out": np.empty_like(x)} if out else {"axis": axis})

    label = f"{r}x{n} {_dt(dtype)}" + (f" axis={axis}" if axis != -1 else "") + (" out=" if out else "")
    return Workload(
        op, label, make, bytes=2.0 * r * n * size, sets=sets, loop=r * n <= 50_000, anchors=anchors
    )


def ce(r, n, dtype, sets=("quick", "full"), anchors=("torch_ce",)):
    size = np.dtype(dtype).itemsize

    def make(rng):
        return ((rng.standard_normal((r, n)) * 3).astype(dtype), rng.integers(0, n, r)), {}

    return Workload(
        "cross_entropy",
        f"{r}x{n} {_dt(dtype)} int",
        make,
        bytes=float(r * n * size),
        sets=sets,
        loop=r * n <= 50_000,
        anchors=anchors,
    )


WORKLOADS += [
    rows("softmax", 100, 100, np.float64, sets=("smoke",), anchors=()),
    rows("softmax", 4096, 4096, np.float32),
    per_core(rows("softmax", 4096, 4096, np.float32)),
    rows("softmax", 4096, 4096, np.float32, out=True, anchors=("copyto",)),
    rows("softmax", 100_000, 10, np.float64),
    rows("softmax", 4096, 4096, np.float32, axis=0, sets=("full",)),
    rows("softmax", 4096, 4096, np.float64, sets=("full",)),
    rows("log_softmax", 100, 100, np.float64, sets=("smoke",), anchors=()),
    rows("log_softmax", 4096, 4096, np.float32),
    rows("log_softmax", 100_000, 10, np.float64),
    ce(100, 100, np.float32, sets=("smoke",), anchors=()),
    ce(65_536, 1000, np.float32),
    per_core(ce(65_536, 1000, np.float32)),
]


def lu_factor_solve(n, dtype=np.float64, sets=("quick", "full"), threads=None):
    """``lu_solve(lu_factor(a), b)`` with one right-hand side (SciPy anchor: getrf + getrs)."""

    def make(rng):
        a = rng.standard_normal((n, n)).astype(dtype) + n**0.5 * np.eye(n, dtype=dtype)
        return (a, rng.standard_normal(n).astype(dtype)), {}

    return Workload(
        "lu_factor+lu_solve",
        f"{n} {_dt(dtype)}" + (f" {threads}t" if threads else ""),
        make,
        flops=2.0 / 3.0 * n**3 + 2.0 * n**2,
        sets=sets,
        loop=n <= 64,
        threads=threads,
    )


def systems(batch, n, sets=("quick", "full"), dtype=np.float64):
    """A stack of random systems (not diagonally dominant: partial pivoting is exercised)."""

    def make(rng):
        a = rng.standard_normal((batch, n, n)).astype(dtype)
        return (a, rng.standard_normal((batch, n, 1)).astype(dtype)), {}

    return Workload(
        "solve",
        f"{batch // 1000}k {n}x{n} {_dt(dtype)}",
        make,
        flops=batch * (2.0 / 3.0 * n**3 + 2 * n**2),
        sets=sets,
        loop=batch * n**3 <= 2e5,
    )


WORKLOADS += [
    lu_factor_solve(48, sets=("smoke",)),
    lu_factor_solve(1000, threads=1),
    lu_factor_solve(1000, sets=("full",)),
    lu_factor_solve(2000, threads=1, sets=("full",)),
    lu_factor_solve(2000, sets=("full",)),
    systems(1000, 3, sets=("smoke",)),
    systems(100_000, 3),
    systems(100_000, 4),
    per_core(systems(100_000, 4)),
    systems(100_000, 8),
    systems(100_000, 3, sets=("full",), dtype=np.float32),
    systems(100_000, 4, sets=("full",), dtype=np.float32),
    systems(100_000, 8, sets=("full",), dtype=np.float32),
    systems(10_000, 16, sets=("full",)),
    systems(10_000, 32, sets=("full",)),
]


@register_anchor("eigh")
def _eigh(a, *args, **kwargs):
    return np.linalg.eigh(a)


@register_anchor("eigsh")
def _eigsh(a, *args, k=1, tol=1e-8, **kwargs):
    from scipy.sparse.linalg import eigsh

    return eigsh(a, k=k, tol=tol)


@register_anchor("randomized_svd", requires="sklearn")
def _randomized_svd(a, *args, k=1, **kwargs):
    from sklearn.utils.extmath import randomized_svd

    return randomized_svd(a, k, random_state=0)


def eig_workload(n, k, gap=0.9, sets=("quick", "full"), anchors=("eigsh",), full_anchors=("eigh",)):
    """Symmetric n x n with lambda_2 / lambda_1 = gap (the rest in +-0.8 gap), top-k pairs."""

    def make(rng):
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        top = [gap**i for i in range(k + 1)]
        lam = np.concatenate([top, rng.uniform(-0.8 * top[-1], 0.8 * top[-1], n - k - 1)])
        return ((q * lam) @ q.T,), {"k": k, "tol": 1e-8, "seed": 0}

    return Workload(
        "power_iteration",
        f"{n} f64 k={k}",
        make,
        bytes=8.0 * n * n,
        sets=sets,
        loop=n <= 64,
        anchors=anchors,
        full_anchors=full_anchors,
    )


WORKLOADS += [
    eig_workload(48, 1, sets=("smoke",), anchors=()),
    eig_workload(2000, 1),
    eig_workload(4000, 10, sets=("full",), anchors=("eigsh", "randomized_svd"), full_anchors=()),
]


@register_anchor("sklearn", requires="sklearn")
def _sklearn_cosine(x, y=None, **kwargs):
    from sklearn.metrics.pairwise import cosine_similarity

    return cosine_similarity(x, y)


@register_anchor("full_argpartition")
def _full_argpartition(q, c, k, **kwargs):
    """Top-k the way NumPy code usually does it: the whole n x m score matrix, then argpartition."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    scores = qn @ cn.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


def cosine_matrix(n, m, d, dtype, sets=("quick", "full"), symmetric=False):
    size = np.dtype(dtype).itemsize

    def make(rng):
        x = rng.standard_normal((n, d)).astype(dtype)
        return ((x,) if symmetric else (x, rng.standard_normal((m, d)).astype(dtype))), {}

    return Workload(
        "cosine_similarity",
        f"{n}x{d}" + (" sym" if symmetric else f" vs {m}x{d}") + f" {_dt(dtype)}",
        make,
        flops=2.0 * n * m * d,
        bytes=float(size * (n * d + m * d + n * m)),
        sets=sets,
        loop=n * m * d <= 2e5,
        anchors=("sklearn",),
    )


@register_anchor("bare_gemm")
def _bare_gemm(q, c, k, **kwargs):
    """The bound the fused top-k should beat: one BLAS GEMM of the already normalised operands into
    a preallocated n x m output (normalising, allocating and selecting are not timed)."""
    key = (id(q), id(c))
    if _bare_gemm.cache.get("key") != key:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        cn = c / np.linalg.norm(c, axis=1, keepdims=True)
        out = np.empty((len(q), len(c)), q.dtype)
        _bare_gemm.cache.update(key=key, qn=qn, cn=cn, out=out)
    m = _bare_gemm.cache
    return np.matmul(m["qn"], m["cn"].T, out=m["out"])


_bare_gemm.cache = {}


@register_anchor("f32_corpus")
def _f32_corpus(q, c, k, **kwargs):
    """The same search by the same kernel over the float32 copy of a float16 corpus (made once,
    not timed): what storing the corpus as float16 is measured against."""
    import fastla

    if _f32_corpus.cache.get("key") != id(c):
        _f32_corpus.cache.update(key=id(c), c32=c.astype(np.float32))
    return fastla.cosine_topk(q, _f32_corpus.cache["c32"], k, backend="numba")


_f32_corpus.cache = {}


def cosine_topk(
    nq,
    nc,
    d,
    k,
    dtype,
    sets=("quick", "full"),
    anchors=("bare_gemm",),
    full_anchors=("full_argpartition",),
    corpus=None,
):
    """A top-k search workload; ``corpus``: the corpus's dtype when it differs from the queries'."""
    corpus = corpus or dtype

    def make(rng):
        q = rng.standard_normal((nq, d)).astype(dtype)
        return (q, rng.standard_normal((nc, d)).astype(corpus), k), {}

    return Workload(
        "cosine_topk",
        f"{nq}x{nc}x{d} {_dt(dtype)} k={k}" + ("" if corpus == dtype else f" {_dt(corpus)} corpus"),
        make,
        flops=2.0 * nq * nc * d,
        sets=sets,
        loop=nq * nc * d <= 2e5,
        anchors=anchors,
        full_anchors=full_anchors,
    )


WORKLOADS += [
    cosine_matrix(40, 50, 30, np.float64, sets=("smoke",)),
    # the size in the full set; a quarter of the work in the quick (CI) set
    cosine_matrix(10_000, 10_000, 256, np.float32, sets=("full",)),
    cosine_matrix(5000, 5000, 256, np.float32, sets=("quick",)),
    cosine_matrix(10_000, 10_000, 256, np.float32, symmetric=True, sets=("full",)),
    cosine_matrix(5000, 5000, 256, np.float32, symmetric=True, sets=("quick",)),
    cosine_matrix(2000, 2000, 300, np.float64, sets=("full",)),
    cosine_topk(20, 500, 16, 5, np.float64, sets=("smoke",)),
    cosine_topk(1000, 100_000, 256, 10, np.float32),
    # a search of one query and of a small batch: the numba impl streams the corpus (no packing)
    cosine_topk(1, 100_000, 256, 10, np.float32),
    cosine_topk(16, 100_000, 256, 10, np.float32),
    cosine_topk(1000, 100_000, 256, 1000, np.float32, sets=("full",), anchors=("bare_gemm",)),
    # a float16 corpus (read as float32 by the kernels) against the same search over its float32
    # copy: half the memory traffic
    *(
        cosine_topk(nq, 100_000, 256, 10, np.float32, sets, ("f32_corpus",), (), corpus=np.float16)
        for nq, sets in ((1, ("quick", "full")), (1000, ("full",)))
    ),
    # the size; its full-matrix anchor would need 4 GB of scores + 8 GB of argpartition
    cosine_topk(10_000, 100_000, 256, 10, np.float32, sets=("full",), anchors=()),
]


def _torch_sdpa_anchor():
    from fastla.bench.isolated import IsolatedAnchor

    return IsolatedAnchor("torch_sdpa")


ANCHORS["torch"] = _torch_sdpa_anchor()
ANCHOR_REQUIRES["torch"] = "torch"


def _torch_ce_anchor():
    from fastla.bench.isolated import IsolatedAnchor

    return IsolatedAnchor("torch_ce")


ANCHORS["torch_ce"] = _torch_ce_anchor()
ANCHOR_REQUIRES["torch_ce"] = "torch"


def attention_flops(b, h, L, S, E, causal=False):
    """Floating-point operations of attention's two products (``Q Kᵀ`` and ``P V``, 2 each per
    query-key pair and feature); causal: the pairs ``j <= i`` only."""
    pairs = b * h * (L * S - (L * (L - 1) // 2 if causal else 0))
    return 4.0 * pairs * E


def gemm_rate_side(q_shape, S, causal):
    """``n`` of the square GEMM the ``gemm_rate`` anchor runs for queries of shape ``q_shape``
    (``(..., L, E)``) against ``S`` keys: ``2 n^3`` nearest attention's floating-point operations."""
    *lead, L, E = q_shape
    return max(1, round((attention_flops(int(np.prod(lead)), 1, L, S, E, causal) / 2) ** (1 / 3)))


@register_anchor("gemm_rate")
def _gemm_rate(q, k, v, is_causal=False, **kwargs):
    """Attention's compute bound: NumPy's BLAS GEMM of the same floating-point operations as the
    attention's two products (a square product of the operands' dtype, n = round((flops / 2)^(1/3)),
    within 0.1% of them at the benchmarked sizes; into a preallocated output; the operands made once,
    not timed). The fused kernel's time against it is the share of the machine's GEMM rate it runs
    at, its softmax and masking included."""
    n = gemm_rate_side(q.shape, k.shape[-2], is_causal)
    key = (n, q.dtype)
    if _gemm_rate.cache.get("key") != key:
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n)).astype(q.dtype) for _ in range(2))
        _gemm_rate.cache.update(key=key, a=a, b=b, out=np.empty((n, n), q.dtype))
    m = _gemm_rate.cache
    return np.matmul(m["a"], m["b"], out=m["out"])


_gemm_rate.cache = {}


def attention(b, h, L, S, E, dtype, causal=False, sets=("quick", "full"), anchors=("torch", "gemm_rate")):
    def make(rng):
        q = rng.standard_normal((b, h, L, E)).astype(dtype)
        k = rng.standard_normal((b, h, S, E)).astype(dtype)
        v = rng.standard_normal((b, h, S, E)).astype(dtype)
        return (q, k, v), {"is_causal": causal}

    return Workload(
        "scaled_dot_product_attention",
        f"B{b} H{h} L{L} S{S} E{E} {_dt(dtype)}" + (" causal" if causal else ""),
        make,
        flops=attention_flops(b, h, L, S, E, causal),
        sets=sets,
        loop=b * h * L * S * E <= 2e5,
        anchors=anchors,
    )


WORKLOADS += [
    attention(1, 2, 16, 24, 8, np.float64, sets=("smoke",), anchors=()),
    # the sizes in the full set; L = S = 2048 (a quarter of the work) in the quick (CI) set
    attention(1, 8, 4096, 4096, 64, np.float32, sets=("full",)),
    attention(1, 8, 4096, 4096, 64, np.float32, causal=True, sets=("full",)),
    attention(1, 8, 2048, 2048, 64, np.float32, sets=("quick",)),
    attention(1, 8, 2048, 2048, 64, np.float32, causal=True, sets=("quick",)),
    # a decoding step: one query row against a key cache (memory-bound: no GEMM-rate anchor)
    attention(1, 8, 1, 2048, 64, np.float32, anchors=("torch",)),
    attention(1, 8, 1024, 1024, 64, np.float32, sets=("full",)),
    attention(1, 8, 1024, 1024, 64, np.float32, causal=True, sets=("full",)),
    attention(4, 8, 512, 512, 64, np.float32, sets=("full",)),
    attention(1, 8, 2048, 2048, 64, np.float64, sets=("full",)),
]


# --------------------------------------------------------------------------- dask
# fastla on dask arrays on a LocalCluster of single-threaded worker processes (the recommended
# layout, see fastla.dask). The inputs are scattered to the cluster once, in the untimed warm-up
# call; each timed call builds the graph and computes it (scheduling overhead included, the same
# for every impl). Clusters are started once per worker count and kept for the process's life.

_CLUSTERS = {}


def dask_client(n_workers):
    """A ``distributed.Client`` on a LocalCluster of ``n_workers`` processes x 1 thread."""
    client = _CLUSTERS.get(n_workers)
    if client is None:
        import atexit

        import distributed

        cluster = distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            silence_logs=40,
        )
        client = _CLUSTERS[n_workers] = distributed.Client(cluster, set_as_default=False)
        atexit.register(close_dask_clients)
    return client


def close_dask_clients():
    """Shut the benchmark clusters down: idle worker processes still wake up (heartbeats). Left
    running, they cost the 2-thread kernels benchmarked after them up to a third of their speed (one
    run: 1024^3 GEMM at 0.66x of BLAS, 0.93x with the clusters shut down)."""
    while _CLUSTERS:
        _, client = _CLUSTERS.popitem()
        cluster = client.cluster
        client.close()
        cluster.close()


def _persisted(client, x, chunks, cache={}):  # noqa: B006 - the cache is the point
    key = (id(client), id(x), chunks)
    if key not in cache:
        import warnings

        import dask.array as da

        with warnings.catch_warnings():  # shipping the data once is this setup's job
            warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
            cache[key] = (x, client.persist(da.from_array(x, chunks=chunks)))
    return cache[key][1]


def _dask_call(op_name, backend, n_workers):
    """``fastla.<op_name>`` on dask arrays (2-D array arguments chunked by rows) on the cluster."""

    def call(*args, chunks, **kwargs):
        import dask

        import fastla

        op = getattr(fastla, op_name)
        client = dask_client(n_workers)
        args = [
            _persisted(client, a, (chunks, a.shape[1])) if isinstance(a, np.ndarray) and a.ndim == 2 else a
            for a in args
        ]
        out = op(*args, backend=backend, **kwargs)
        return dask.compute(*(out if isinstance(out, tuple) else (out,)), scheduler=client)

    return call


def _dask_impls(op):
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        return {}
    return {name: _dask_call(op, name, 2) for name in ("numba", "numpy")}


register_anchor("numba 1 worker", requires="distributed")(_dask_call("cosine_topk", "numba", 1))


def dask_topk(nq, nc, d, k, chunk, dtype, sets=("quick", "full")):
    base = cosine_topk(nq, nc, d, k, dtype)

    def make(rng):
        return base.make(rng)[0], {"chunks": chunk}

    return dataclasses.replace(
        base,
        op="dask:cosine_topk",
        name=f"{base.name} chunks of {chunk}, 2 workers",
        make=make,
        sets=sets,
        loop=False,
        anchors=("numba 1 worker",),
    )


WORKLOADS += [
    dask_topk(500, 100_000, 128, 10, 10_000, np.float32),
    dask_topk(2000, 400_000, 256, 10, 50_000, np.float32, sets=("full",)),
]


# --------------------------------------------------------------------------- fastla.kernels
# Inside a user's @njit loop over many small items: fastla's kernel against what a Numba user
# writes today (fastla/bench/njit_loops.py). One thread, both sides serial.


def njit_loop(op, items, shape, sets=("quick", "full")):
    def make(rng):
        a = rng.standard_normal((items, *shape))
        if op == "solve":
            return (a, rng.standard_normal((items, shape[0]))), {}
        if op == "matmul":
            return (a, rng.standard_normal((items, *shape))), {}
        return (a * 3,), {}

    label = f"{items // 1000}k {'x'.join(map(str, shape))} f64 in a user @njit loop"
    return Workload(f"kernels:{op}", label, make, sets=sets, threads=1)


WORKLOADS += [
    njit_loop("solve", 100_000, (3, 3)),
    njit_loop("solve", 100_000, (4, 4)),
    njit_loop("solve", 100_000, (8, 8)),
    njit_loop("matmul", 100_000, (4, 4)),
    njit_loop("softmax", 100_000, (10,)),
    njit_loop("softmax", 10_000, (1000,)),
    njit_loop("solve", 1000, (3, 3), sets=("smoke",)),
    njit_loop("matmul", 1000, (4, 4), sets=("smoke",)),
    njit_loop("softmax", 1000, (10,), sets=("smoke",)),
]


# --------------------------------------------------------------------------- per-call overhead
# What a user calling fastla on tiny arrays in a loop pays over the library call auto picks: the
# public function (auto) against the bare NumPy/SciPy call, on inputs where auto picks NumPy.


@register_anchor("np_matmul")
def _np_matmul(a, b, **kwargs):
    return np.matmul(a, b)


@register_anchor("np_solve")
def _np_solve(a, b, **kwargs):
    return np.linalg.solve(a, b)


@register_anchor("scipy_softmax", requires="scipy")
def _scipy_softmax(x, axis=-1, **kwargs):
    from scipy.special import softmax

    return softmax(x, axis=axis)


def overhead(op, shapes, anchor):
    def make(rng):
        return tuple(rng.standard_normal(s) for s in shapes), {}

    name = " ".join("x".join(map(str, s)) for s in shapes) + " f64 (call overhead)"
    return Workload(
        op,
        name,
        make,
        sets=("quick", "full"),
        skip_impls=("loop", "numba_naive"),
        anchors=(anchor,),
        auto=True,
    )


WORKLOADS += [
    overhead("matmul", [(4, 4), (4, 4)], "np_matmul"),
    # a dense layer's W @ x on one input vector: a 1-D operand (the fast path's mixed ranks)
    overhead("matmul", [(64, 64), (64,)], "np_matmul"),
    overhead("solve", [(4, 4), (4, 4)], "np_solve"),
    overhead("softmax", [(4, 10)], "scipy_softmax"),
]


def select(set_name="quick", ops=None):
    """Workloads of ``set_name`` that belong to ``ops`` (all ops when None)."""
    if set_name not in SETS:
        raise ValueError(f"unknown benchmark set {set_name!r}; valid: {', '.join(SETS)}")
    chosen = [w for w in WORKLOADS if ops is None or w.op in ops]
    return [w for w in chosen if set_name in w.sets]
