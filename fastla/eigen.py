"""Dominant eigenpairs by power iteration and its Krylov acceleration: ``fastla.power_iteration``.

For the common need of PCA and spectral methods, the few largest eigenpairs of a big matrix, an
O(n^2)-per-step iteration beats a full O(n^3) decomposition by orders of magnitude.

* symmetric: restarted block Lanczos (Krylov-Schur: thick restarts that keep the wanted Ritz vectors)
  with full reorthogonalisation and Rayleigh-Ritz. The Krylov space of the start block contains every
  power iterate, so this is power iteration that keeps its history: with l2/l1 = 0.9 and the rest of
  the spectrum within +-0.72, a 1e-8 residual took ~170 sweeps over A of plain power iteration, ~61 of
  block subspace (orthogonal) iteration on 4 vectors, and 31 here (``eigsh`` used 41 products). Block
  size ``b = 1`` for k = 1 and ``min(k, 4)`` for k > 1: a one-vector Krylov space holds only one
  direction of a repeated eigenvalue, so a block finds multiplicities up to ``b``. Each sweep reads A
  once (one compiled pass for ``A V`` with up to 4 vectors). The basis holds ``max(32, 3k + 10)``
  vectors; a restart keeps the k wanted and the better half of the other Ritz vectors. A Krylov space
  that turns out invariant gets a random orthogonal direction (as ARPACK does), and pairs count as
  converged only after that direction's own Krylov space has filled the basis. Eigenvalues tied in
  magnitude with opposite signs at the k-th place (``+l`` and ``-l``) make "the top k by |l|"
  ambiguous: that raises :class:`ConvergenceError` rather than returning one arbitrarily;
* symmetric and small (n <= ``DENSE_MAX_N`` = 128, a NumPy array): LAPACK's ``syevr`` for the k + 1
  eigenpairs at each end of the spectrum (small k) or ``eigh`` for every one, the k of largest
  ``|l|`` kept, under the same residual and tie tests: a dense solve costs less there than the
  Python side of the Lanczos sweeps (see :data:`DENSE_MAX_N`);
* non-symmetric, k = 1: classic power iteration for the dominant real eigenvalue;
* non-symmetric, k > 1: ``ValueError`` (use a symmetric matrix, or ``numpy.linalg.eig``).

The Lanczos path deviates from a plain block subspace iteration on purpose: the targets (20x ``eigh``,
1x ``eigsh``) are out of reach for any method that needs twice ``eigsh``'s passes over A.

Convergence: every returned pair satisfies ``||A v - l v|| <= tol * |l|`` computed explicitly from the
stored products ``A V`` (not from the cancellation-prone Lanczos identity, and at no extra pass over A),
except that for a symmetric matrix no residual has to drop below ``min(rho, tol * max|l|)``, ``rho =
10 sqrt(n) eps max|l|`` the rounding floor: eigenvalues far below the largest, or zero (k above the
rank), converge there with absolute accuracy ~rho, as SciPy's ``eigsh`` returns them.
Without that within ``maxiter`` sweeps over A (default ``max(1000, 10 n)``) :class:`ConvergenceError`
is raised, carrying the partial result like SciPy's ``ArpackNoConvergence``. Tied or complex dominant
eigenvalues (a rotation, ``+1`` and ``-1``) never satisfy the residual test, so they end in that error
and never in a silently wrong value.

Results: ``w`` sorted by decreasing ``|l|``, ``v`` with unit-norm columns whose largest-magnitude
component is positive (reproducible signs). The oracle in the tests is ``numpy.linalg.eigh``
(symmetric) / ``numpy.linalg.eig``.

Implementations share this algorithm and differ in the O(n^2) step: ``numba`` (one parallel pass over
A computing ``A v`` with ``v.Av`` and ``||Av||^2``; ``A v`` or ``A V`` for up to 4 vectors of a symmetric A
from its upper triangle alone, half the memory traffic, where A is symmetric closely enough that the
difference, bounded and added to every residual, cannot hold the convergence test back (see
:func:`triangle_slack`), and otherwise from all of A; wider blocks as ``(Vᵀ A)ᵀ`` by the GEMM
micro-kernel reading A in place; symmetry, finiteness and ``max |a|`` in one more pass; the Krylov
basis grown by compiled Gram-Schmidt, :func:`_orthonormalise_columns`, where the others project
with NumPy),
``numpy`` (``@``, BLAS gemv/gemm), ``loop`` (pure-Python matrix-vector loops). A SciPy sparse matrix
(as CSR) gets each implementation's CSR product and a LinearOperator its own (``numpy`` only), with a
single-vector Lanczos (see :func:`_lanczos_sizes`).
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import NamedTuple

import numpy as np

from fastla import _gemm_kernels as _gk
from fastla import _host, _intrinsics, _jit, _math, _registry, _threads, _validate
from fastla._jit import jit, prange

_U = _jit.U

__all__ = ["ConvergenceError", "power_iteration"]


class ConvergenceError(np.linalg.LinAlgError):
    """Power iteration did not converge; the partial result is attached.

    Attributes
    ----------
    eigenvalues, eigenvectors : ndarray
        The last iterate's estimates.
    iterations : int
        Iterations performed.
    """

    def __init__(self, msg, eigenvalues, eigenvectors, iterations):
        super().__init__(msg)
        self.eigenvalues = eigenvalues
        self.eigenvectors = eigenvectors
        self.iterations = iterations

    def __reduce__(self):
        # pickled with its partial result (a process pool, dask's workers): the default rebuilds
        # from ``args`` (the message alone) and failed in ``__init__``
        return type(self), (*self.args, self.eigenvalues, self.eigenvectors, self.iterations)


# Measured (Zen 1, 2 threads, gap 0.9, tol 1e-8, block Lanczos): k = 1 at n = 2000, numba 72-76 ms
# vs numpy 82 ms (31 sweeps each, gemv and the fused pass both at the memory bound); k = 10 at
# n = 4000, numba 310 ms vs numpy 687 ms (BLAS runs the n x 4 product at half the memory bound).
AUTO_RULE = {"numba_wins": True}


# --------------------------------------------------------------------------- kernels


#: Rows of A per task of the fused matrix-vector pass: a partition fixed by n alone, so that the
#: partial sums of v.w and |w|^2 add up in the same order on any number of threads.
_MATVEC_ROWS = 256


@jit(python_wrapper=False)
def _matvec_task(a, v, w, parts, task):
    """Rows ``[256 task, 256 (task + 1))`` of ``w = a @ v``, and their parts of ``v . w`` and
    ``||w||^2`` into ``parts[task]``, in the same single pass over those rows of ``a``.

    Four rows per step share each load of ``v`` (measured at n = 2000, 2 threads: 1.49 ms against
    1.59 ms one row at a time; BLAS dgemv 1.47 ms: all at the memory bound).
    """
    n, m = a.shape
    lo = _U(task * _MATVEC_ROWS)  # unsigned indices: see fastla._jit.U
    hi = _U(min(n, task * _MATVEC_ROWS + _MATVEC_ROWS))
    vw = 0.0
    ww = 0.0
    for i in range(lo, hi - (hi - lo) % 4, 4):
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for j in range(_U(m)):
            x = v[j]
            s0 += a[i, j] * x
            s1 += a[i + 1, j] * x
            s2 += a[i + 2, j] * x
            s3 += a[i + 3, j] * x
        w[i] = s0
        w[i + 1] = s1
        w[i + 2] = s2
        w[i + 3] = s3
        vw += v[i] * s0 + v[i + 1] * s1 + v[i + 2] * s2 + v[i + 3] * s3
        ww += s0 * s0 + s1 * s1 + s2 * s2 + s3 * s3
    for r in range(hi - (hi - lo) % 4, hi):
        acc = 0.0
        for j in range(_U(m)):
            acc += a[r, j] * v[j]
        w[r] = acc
        vw += v[r] * acc
        ww += acc * acc
    parts[task, 0] = vw
    parts[task, 1] = ww


@jit
def _matvec_pass(a, v, w, parts, at, threads):
    """``w = a @ v`` and ``(v . w, ||w||^2)``: :func:`_matvec_task` for every 256 rows (contiguous
    runs of them per thread) through its entry address ``at`` (``fastla._intrinsics.parallel_tasks``:
    no ``prange``, whose parallel lowering and reduction cost ~1 s of power_iteration's cold first
    call), then the parts summed in task order."""
    tasks = parts.shape[0]
    _intrinsics.parallel_tasks(at, _matvec_task, (a, v, w, parts), tasks, threads, True)
    vw = 0.0
    ww = 0.0
    for t in range(tasks):
        vw += parts[t, 0]
        ww += parts[t, 1]
    return vw, ww


def _matvec_examples(dtype):
    """Example arguments of :func:`_matvec_task` for ``dtype``, typed as :func:`_numba_matvec`
    passes them."""
    vec = np.zeros(1, dtype)
    return (
        _intrinsics.kernel_input(np.zeros((1, 1), dtype)),
        _intrinsics.readonly(vec),
        vec,
        np.zeros((1, 2)),
        0,
    )


#: :func:`_matvec_task` compiled once per dtype, run through its address by :func:`_matvec_pass`.
MATVEC = _jit.Entry(_matvec_task, _matvec_examples)


def _numba_matvec(a, v, w):
    """``w = a @ v`` (``w`` may be a strided view) and ``(v . w, ||w||^2)``, by one fused pass."""
    n = a.shape[0]
    out = w if w.flags.c_contiguous else np.empty(n, w.dtype)
    parts = np.empty((-(-n // _MATVEC_ROWS), 2))
    vw, ww = _matvec_pass(
        a, _intrinsics.kernel_input(v), out, parts, MATVEC.address(a.dtype), _jit.threads_here()
    )
    if out is not w:
        w[:] = out
    return vw, ww


@jit(parallel=True)
def _csr_matvec_pass(indptr, indices, data, v, w, parts):
    """``w = A v`` for the CSR matrix ``A`` (``indptr``, ``indices``, ``data``), with the parts of
    ``v . w`` and ``||w||^2`` per 256 rows into ``parts`` (the partition of :func:`_matvec_task`:
    the same sums on any number of threads). Each row's sum in float64, as the dense pass's. Measured
    (Zen 4, n = 200 000 with 4.2 M entries, float64): 5.7 ms on one thread, 3.1 ms on two, against
    8.3 ms for SciPy's product (serial); unsigned indices took it from 14.3 ms on one thread."""
    n = w.shape[0]
    for task in prange(parts.shape[0]):
        lo = task * _MATVEC_ROWS
        hi = min(n, lo + _MATVEC_ROWS)
        vw = 0.0
        ww = 0.0
        for i in range(lo, hi):
            acc = 0.0
            for p in range(_U(indptr[i]), _U(indptr[i + 1])):  # unsigned: see fastla._jit.U
                acc += data[p] * v[_U(indices[p])]
            w[i] = acc
            vw += v[i] * acc
            ww += acc * acc
        parts[task, 0] = vw
        parts[task, 1] = ww


def _sparse_matvec(a, v, w):
    """:func:`_numba_matvec` for an :class:`Operator` holding a CSR matrix."""
    csr, n = a.op, a.shape[0]
    out = w if w.flags.c_contiguous else np.empty(n, w.dtype)
    parts = np.empty((-(-n // _MATVEC_ROWS), 2))
    v = np.ascontiguousarray(v)
    _jit.run_parallel(_csr_matvec_pass, csr.indptr, csr.indices, csr.data, v, out, parts)
    if out is not w:
        w[:] = out
    vw, ww = parts.sum(axis=0)  # one order for any number of threads
    return float(vw), float(ww)


@jit(python_wrapper=False)
def _matmat4_task(a, vt, out, task):
    """Rows ``[256 task, 256 (task + 1))`` of ``out[i, c] = sum_j a[i, j] vt[c, j]`` for the 4 rows
    of ``vt`` (zero rows pad a thinner block).

    Four rows of ``a`` per step against the 4 vectors, sixteen accumulators vectorised along ``j``:
    A is read once, as by a matrix-vector product, and ``vt`` (from L2) once per four rows of A.
    Measured (Zen 5, 2 threads, f64, interleaved): n = 2000 (A in L3) 1.20-1.26 ms with two rows a
    step, 0.87-0.90 ms with four; n = 4000 (A from DRAM, 128 MB: ~33 GB/s, the memory bound)
    4.3-4.8 against 3.9-4.6 ms. Earlier (two rows a step, Zen 4): 1.87 / 6.6 ms at n = 2000 / 4000,
    against 1.49 / 5.9 ms for one vector and 4.1 / 10.9 ms for the GEMM micro-kernel's ``(Vᵀ A)ᵀ``
    (its 6-row tile is a third idle with 4 vectors).
    """
    n = a.shape[0]
    hi = min(n, task * _MATVEC_ROWS + _MATVEC_ROWS)
    for r in range(task * _MATVEC_ROWS, hi, 4):
        # unsigned indices: see fastla._jit.U; past the task's last row, that row is computed again
        i0 = _U(r)
        i1 = _U(min(r + 1, hi - 1))
        i2 = _U(min(r + 2, hi - 1))
        i3 = _U(min(r + 3, hi - 1))
        s = _math.dot4x4(a, i0, i1, i2, i3, vt, 0, 1, 2, 3, 0.0)
        _put4(out, i3, s[12], s[13], s[14], s[15])  # the repeated last row: every copy holds the same sums
        _put4(out, i2, s[8], s[9], s[10], s[11])
        _put4(out, i1, s[4], s[5], s[6], s[7])
        _put4(out, i0, s[0], s[1], s[2], s[3])


@jit
def _matmat4(a, vt, out, at, threads):
    """:func:`_matmat4_task` for every 256 rows of ``a`` (contiguous runs of them per thread),
    through its entry address ``at`` (``fastla._intrinsics.parallel_tasks``: no ``prange``)."""
    tasks = (a.shape[0] + _MATVEC_ROWS - 1) // _MATVEC_ROWS
    _intrinsics.parallel_tasks(at, _matmat4_task, (a, vt, out), tasks, threads, True)


def _matmat4_examples(dtype):
    """Example arguments of :func:`_matmat4_task` for ``dtype``, typed as :func:`_numba_matmat`
    passes them."""
    rows = _intrinsics.kernel_input(np.zeros((1, 1), dtype))
    return (rows, np.zeros((4, 1), dtype), np.zeros((1, 4), dtype), 0)


#: :func:`_matmat4_task` compiled once per dtype, run through its address by :func:`_matmat4`.
MATMAT4 = _jit.Entry(_matmat4_task, _matmat4_examples)


#: Columns of A per strip of the one-triangle product: four rows' strip (16 KiB in float64) is read
#: from memory by the strip's products and again from L1 by its scatter.
_STRIP = 512


@jit(inline="always")
def _upper4(a, vt, acc, dots, i, i1, i2, i3):
    """Rows ``i, i1, i2, i3`` (``i + 1 .. i + 3``, or the last row repeated past the end of A) of the
    one-triangle product (see :func:`_upper_task`): their dot products with the 4 vectors over
    columns ``i ..`` into ``dots``, and the terms ``a[i + r, j] vt[c, i + r]`` into ``acc[c, j]`` for
    the columns ``j >= i + 4`` right of their diagonal block (none for the rows at A's end).

    Per strip of columns, one loop of sixteen dot accumulators, then one loop of the four sums into
    ``acc``: in one loop the stores into ``acc`` (which LLVM cannot prove apart from ``a`` and
    ``vt``) kept the loop scalar (n = 4000 f64, 2 threads: 5.3 ms against 2.8 ms split)."""
    n = a.shape[0]
    u00, u01, u02, u03 = vt[0, i], vt[1, i], vt[2, i], vt[3, i]
    u10, u11, u12, u13 = vt[0, i1], vt[1, i1], vt[2, i1], vt[3, i1]
    u20, u21, u22, u23 = vt[0, i2], vt[1, i2], vt[2, i2], vt[3, i2]
    u30, u31, u32, u33 = vt[0, i3], vt[1, i3], vt[2, i3], vt[3, i3]
    z = 0.0
    s = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    for j0 in range(i, _U(n), _U(_STRIP)):  # the first strip starts with the diagonal block
        j1 = min(j0 + _U(_STRIP), _U(n))
        s = _math.dot4x4_span(a, i, i1, i2, i3, vt, 0, 1, 2, 3, j0, j1, s)
        for j in range(max(j0, i + _U(4)), j1):
            x0, x1, x2, x3 = float(a[i, j]), float(a[i1, j]), float(a[i2, j]), float(a[i3, j])
            acc[0, j] += x0 * u00 + x1 * u10 + x2 * u20 + x3 * u30
            acc[1, j] += x0 * u01 + x1 * u11 + x2 * u21 + x3 * u31
            acc[2, j] += x0 * u02 + x1 * u12 + x2 * u22 + x3 * u32
            acc[3, j] += x0 * u03 + x1 * u13 + x2 * u23 + x3 * u33
    _put4(dots, i3, s[12], s[13], s[14], s[15])  # a repeated last row: every copy holds the same sums
    _put4(dots, i2, s[8], s[9], s[10], s[11])
    _put4(dots, i1, s[4], s[5], s[6], s[7])
    _put4(dots, i, s[0], s[1], s[2], s[3])


@jit(inline="always")
def _upper4x1(a, vt, acc, dots, i, i1, i2, i3):
    """:func:`_upper4` for one vector (``vt`` of one row): four dot accumulators and one sum into
    ``acc`` a step, a quarter of the arithmetic."""
    n = a.shape[0]
    u0, u1, u2, u3 = vt[0, i], vt[0, i1], vt[0, i2], vt[0, i3]
    s0 = s1 = s2 = s3 = 0.0
    for j0 in range(i, _U(n), _U(_STRIP)):
        j1 = min(j0 + _U(_STRIP), _U(n))
        for j in range(j0, j1):
            y = vt[0, j]
            s0 += float(a[i, j]) * y
            s1 += float(a[i1, j]) * y
            s2 += float(a[i2, j]) * y
            s3 += float(a[i3, j]) * y
        for j in range(max(j0, i + _U(4)), j1):
            x0, x1, x2, x3 = float(a[i, j]), float(a[i1, j]), float(a[i2, j]), float(a[i3, j])
            acc[0, j] += x0 * u0 + x1 * u1 + x2 * u2 + x3 * u3
    dots[i3, 0] = s3  # a repeated last row: every copy holds the same sum
    dots[i2, 0] = s2
    dots[i1, 0] = s1
    dots[i, 0] = s0


@jit(inline="always")
def _upper_blocks(a, vt, dots, part, task, group):
    """Row blocks ``task`` and ``nb - 1 - task`` of the one-triangle product, four rows at a time by
    ``group`` (:func:`_upper4` or :func:`_upper4x1`); see :func:`_upper_task`."""
    nb = part.shape[0]
    n = a.shape[0]
    other = nb - 1 - task
    for which in range(1 if other == task else 2):
        blk = task if which == 0 else other
        lo = _U(blk * _MATVEC_ROWS)  # unsigned indices: see fastla._jit.U
        hi = _U(min(n, blk * _MATVEC_ROWS + _MATVEC_ROWS))
        acc = part[blk]
        for c in range(part.shape[1]):
            for j in range(lo, _U(n)):
                acc[c, j] = 0.0
        for i in range(lo, hi, 4):  # past A's last row, that row again
            group(a, vt, acc, dots, i, min(i + 1, hi - 1), min(i + 2, hi - 1), min(i + 3, hi - 1))


@jit(python_wrapper=False)
def _upper_task(a, vt, dots, part, task):
    """Task ``task`` of :func:`_sym_product`: row blocks ``task`` and ``nb - 1 - task`` (256 rows
    each, ``nb = part.shape[0]``: a top block and a bottom one, so that every task holds about the
    same share of the triangle).

    Row ``i`` of a block ``b`` reads ``a[i, i:]`` once (the upper triangle): its dot products with
    the 4 rows of ``vt`` give ``dots[i]``, the sum over ``j >= i``; and, taking ``a[j, i]`` as
    ``a[i, j]``, it adds ``a[i, j] vt[:, i]`` into ``part[b, :, j]`` for ``j > i``: the terms of the
    rows below that their own pass does not read. :func:`_sym_product` adds them up."""
    _upper_blocks(a, vt, dots, part, task, _upper4)


@jit(python_wrapper=False)
def _upper_task1(a, vt, dots, part, task):
    """:func:`_upper_task` for one vector."""
    _upper_blocks(a, vt, dots, part, task, _upper4x1)


@jit
def _upper_any(a, vt, dots, part, task):
    """:func:`_upper_task` or, for one vector, :func:`_upper_task1`: the stand-in
    :func:`_sym_product` is typed with; compiled, the chosen one runs through its address and this
    is never linked (it is what runs with the JIT off)."""
    if vt.shape[0] == 1:
        _upper_task1(a, vt, dots, part, task)
    else:
        _upper_task(a, vt, dots, part, task)


@jit
def _sym_product(a, vt, dots, part, out, at, threads):
    """``out = Ã @ vt.T``, ``Ã`` the upper triangle of ``a`` mirrored (``a`` itself where it equals
    its transpose), reading that triangle once:
    :func:`_upper_task` for every pair of 256-row blocks through its entry address ``at``
    (``fastla._intrinsics.parallel_tasks``), then ``out[j] = dots[j] + part[0, :, j] + ... +
    part[b, :, j]`` for row ``j``'s block ``b`` (serial: 1-3 % of the pass at n = 2000-4000). The
    blocks are fixed by n alone, so the sums are the same on any number of threads."""
    nb, nv = part.shape[0], part.shape[1]
    n = a.shape[0]
    _intrinsics.parallel_tasks(at, _upper_any, (a, vt, dots, part), (nb + 1) // 2, threads)
    for blk in range(nb):
        for b in range(blk):  # the blocks above (a block's own terms start in dots)
            for j in range(_U(blk * _MATVEC_ROWS), _U(min(n, blk * _MATVEC_ROWS + _MATVEC_ROWS))):
                for c in range(nv):
                    dots[j, c] += part[b, c, j]
    for j in range(_U(n)):
        for c in range(nv):
            out[j, c] = dots[j, c] + part[j // _MATVEC_ROWS, c, j]


def _upper_examples(dtype):
    """Example arguments of :func:`_upper_task` for ``dtype``, typed as :class:`_OneTriangle`
    passes them."""
    a = _intrinsics.kernel_input(np.zeros((1, 1), dtype))
    return (a, np.zeros((4, 1)), np.zeros((1, 4)), np.zeros((1, 4, 1)), 0)


#: :func:`_upper_task` (4 vectors) and :func:`_upper_task1` (one), each compiled once per dtype,
#: run through their addresses (``UPPER.address(dtype, impl)``) by :func:`_sym_product`.
UPPER = _jit.Entry(_upper_any, _upper_examples)


@jit(inline="always")
def _put4(out, i, c0, c1, c2, c3):
    out[i, 0] = c0
    out[i, 1] = c1
    out[i, 2] = c2
    out[i, 3] = c3


def scan_tile():
    """Tile edge of the symmetry scan: the mirrored tile's transposed copy (tile² elements) stays in
    L2 beside the streamed rows. Measured (Intel Xeon, L2 2 MiB, 2 threads, f64): 4.3 / 22 ms at
    n = 2000 / 4000 with 256 against 6.9 / 26 ms with 128 and 9.8 / 37 ms for the earlier scan that
    read the mirrored tile down its columns; 128 where L2 is under 1 MiB (its copy then takes 128 KiB)."""
    return 256 if _host.cache_sizes()["L2"] >= 2**20 else 128


@jit(python_wrapper=False)
def _scan_task(a, tile, out, idx):
    """Task ``idx`` of :func:`_scan`: tile row ``t`` (``idx`` counted from both ends: even ``idx``
    from the top, odd from the bottom, so that interleaved tasks share the triangle evenly) gets
    ``out[t] = (max abs_bits(a_ij), max abs_bits(a_ij - a_ji))`` over its tiles of the lower
    triangle, i.e. ``max |a|`` with non-finite entries above inf, and ``max |a - aᵀ|``.

    Each tile (I, J) is compared with its mirror (J, I), first copied transposed into a buffer,
    reading its rows as long contiguous segments (a walk down its columns stalls on every row), so
    the comparison runs along contiguous rows of both, as integer max reductions that vectorise
    (see ``_math.abs_bits``).
    """
    n = a.shape[0]
    nt = out.shape[0]
    t = idx // 2 if idx % 2 == 0 else nt - 1 - idx // 2
    i0 = _U(t * tile)  # unsigned indices: see fastla._jit.U
    rows = _U(min(tile, n - t * tile))
    mirror = _intrinsics.empty((tile, tile), a.dtype)
    big = _math.abs_bits(a[i0, 0])
    asym = _math.abs_bits(a[i0, 0] - a[i0, 0])
    for jt in range(t + 1):
        j0 = _U(jt * tile)
        cols = _U(min(tile, n - jt * tile))
        # mirror[ii, jj] = a[j0 + jj, i0 + ii], eight rows of A at a time: each step reads one
        # element of each and writes eight adjacent ones, a whole line of the buffer (float64).
        # Measured (Zen 5, 2 threads, f64, tile 256): the scan at n = 2000 / 4000 3.05 / 10.4 ms
        # with the earlier copy of 16 x 16 blocks (one element of each buffer row per step),
        # 1.67 / 7.1 ms this way
        c8 = cols - cols % _U(8)
        for jb in range(_U(0), c8, _U(8)):
            r0 = j0 + jb
            for ii in range(rows):
                mirror[ii, jb] = a[r0, i0 + ii]
                mirror[ii, jb + 1] = a[r0 + 1, i0 + ii]
                mirror[ii, jb + 2] = a[r0 + 2, i0 + ii]
                mirror[ii, jb + 3] = a[r0 + 3, i0 + ii]
                mirror[ii, jb + 4] = a[r0 + 4, i0 + ii]
                mirror[ii, jb + 5] = a[r0 + 5, i0 + ii]
                mirror[ii, jb + 6] = a[r0 + 6, i0 + ii]
                mirror[ii, jb + 7] = a[r0 + 7, i0 + ii]
        for jj in range(c8, cols):
            for ii in range(rows):
                mirror[ii, jj] = a[j0 + jj, i0 + ii]
        for ii in range(rows):
            i = i0 + ii
            upto = min(cols, i + 1 - j0)  # the diagonal tile: j <= i
            for jj in range(upto):
                x = a[i, j0 + jj]
                y = mirror[ii, jj]
                bx = _math.abs_bits(x)
                by = _math.abs_bits(y)
                bd = _math.abs_bits(x - y)
                big = bx if bx > big else big
                big = by if by > big else big
                asym = bd if bd > asym else asym
    out[t, 0] = big
    out[t, 1] = asym


@jit
def _scan(a, tile, out, at, threads):
    """One pass over A in mirrored ``tile x tile`` tile pairs: :func:`_scan_task` for every tile row
    (``out.shape[0]`` of them), through its entry address ``at`` on ``threads`` threads
    (``fastla._intrinsics.parallel_tasks``: a parallel loop without a ``prange``, whose parallel
    lowering cost power_iteration's cold first call ~0.5 s of compiling)."""
    # contiguous runs of tasks: each thread's run pairs top and bottom tile rows (see _scan_task);
    # interleaved, one thread took every top row and the other every bottom one (1.7x slower)
    _intrinsics.parallel_tasks(at, _scan_task, (a, tile, out), out.shape[0], threads, True)


def _scan_examples(dtype):
    """Example arguments of :func:`_scan_task` for ``dtype``, typed as :func:`_scan` passes them."""
    return (_intrinsics.kernel_input(np.zeros((1, 1), dtype)), 0, np.zeros((1, 2), np.int64), 0)


#: :func:`_scan_task` compiled once per dtype, run through its address by :func:`_scan`.
SCAN = _jit.Entry(_scan_task, _scan_examples)


#: Up to this order the scan runs on one thread, as the symmetric sweeps that follow it do (one
#: 256-row block pair of :func:`_sym_product`, one task): such a call never waits for a second thread.
#: Right after a threaded BLAS call, OpenBLAS's idle threads spin for ~0.1 s, and a parallel region
#: launched then could wait a scheduler slice (~8 ms on 2 cores) for its second thread. Measured
#: (Zen 4, 2 cores, float64, a 0.9-decay spectrum, k = 1, three runs), ``power_iteration`` right
#: after NumPy's ``eigh`` of a 600² matrix, the worst of five calls: n = 300 2.2-5.9 -> 2.1-2.7 ms,
#: n = 500 6.1-9.5 -> 2.7-3.7 ms (1.0-1.8 ms with idle BLAS threads, either way); the scan alone
#: after a 3000² product, 8 ms a call for ~0.3 s. On two threads the scan saves 5 / 27 / 35 us at
#: n = 300 / 400 / 512 (37 -> 32, 60 -> 33, 103 -> 68 us): 1-2 % of the call.
SCAN_SERIAL_MAX_N = 2 * _MATVEC_ROWS


def symmetry_atol(dtype, max_abs):
    """The absolute tolerance of the symmetry test for a matrix whose largest ``|entry|`` is ``max_abs``."""
    return (1e-10 if dtype == np.float64 else 1e-5) * max_abs


def _finite_and_symmetric(a):
    """Check finiteness (``ValueError`` like SciPy); return whether ``a`` is symmetric up to rounding,
    ``max |a_ij - a_ji|`` and ``max |a_ij|``.

    Symmetric means ``|a - a.T| <= rtol * max|a|`` elementwise: the tolerance scales with the matrix,
    not with each entry, because ``Q diag(l) Q^T`` is symmetric to rounding relative to its norm while
    its small entries can differ by far more than their own relative precision. Compiled: one pass over
    A for all three facts (separate passes for max, finiteness and symmetry cost 20 ms against a 1.8 ms
    sweep at n = 2000).
    """
    if _jit.JIT_ENABLED:
        tile = scan_tile()
        out = np.zeros((-(-a.shape[0] // tile), 2), np.int64)
        # (kernel_input: the entry's one array type; no copy of an input that has it already)
        threads = 1 if a.shape[0] <= SCAN_SERIAL_MAX_N else _jit.threads_here()
        _scan(_intrinsics.kernel_input(a), tile, out, SCAN.address(a.dtype), threads)
        (big, finite), (asym, _) = (_math.from_abs_bits(bits, a.dtype) for bits in out.max(axis=0))
        bad = not finite
    else:
        big = float(np.abs(a).max())
        bad = not np.isfinite(big)
        asym = 0.0 if bad else float(np.abs(a - a.T).max())  # inf - inf: NumPy's invalid-value warning
    if bad:
        raise ValueError("array must not contain infs or NaNs")
    return bool(asym <= symmetry_atol(a.dtype, big)), float(asym), float(big)


def _numpy_matvec(a, v, w):
    np.matmul(a, v, out=w)
    return float(v @ w), float(w @ w)


def _loop_matvec(a, v, w):
    n = a.shape[0]
    vv = [float(x) for x in v]
    for i in range(n):
        row = a[i]
        w[i] = sum(float(row[j]) * vv[j] for j in range(n))
    return sum(vv[i] * float(w[i]) for i in range(n)), sum(float(x) * float(x) for x in w)


def _numba_matmat(a, v):
    a = np.ascontiguousarray(a)
    b = v.shape[1]
    if b <= 4:
        vt = np.zeros((4, a.shape[0]), dtype=a.dtype)
        vt[:b] = v.T
        out = np.empty((a.shape[0], 4), dtype=a.dtype)
        _matmat4(_intrinsics.kernel_input(a), vt, out, MATMAT4.address(a.dtype), _jit.threads_here())
        return out[:, :b]
    # wider blocks: A V for symmetric A as (Vᵀ A)ᵀ, the GEMM micro-kernel reading A in place once
    # (packing A, as a general GEMM would, triples the memory traffic of this memory-bound step)
    return _gk.thin_product(a, v).T


class _OneTriangle:
    """``A V`` for up to 4 vectors and a symmetric ``a``, reading only its upper triangle
    (:func:`_sym_product`): half the memory traffic of the full pass (:func:`_matmat4`), twice the
    arithmetic (each element serves its own row's dot products and its mirror's). Scratch is kept
    for the run's sweeps: the mirrored sums per 256-row block, ``n² / 64`` floats for 4 vectors
    (1.6 % of a float64 A). Measured (Zen 5, 2 threads, f64, medians of 30): n = 4000 (128 MB, from
    DRAM) 2.4-3.0 ms against 3.3-4.1 ms for the full pass, n = 2000 0.33-0.50 against 0.70-0.89 ms;
    one thread n = 4000 4.3-6.1 against 5.4-8.2 ms. ``width`` 1 (k = 1) has its own kernel: the
    4-vector one with a single column read A no faster than the full matrix-vector pass (2.3-3.0
    against 2.7-2.8 ms at n = 4000), this one 1.47-1.66 against 1.83-2.17 ms (n = 2000: 0.45-0.54
    against 0.59-0.79 ms), a quarter of the arithmetic."""

    def __init__(self, a, width=4):
        n = a.shape[0]
        self.vt = np.zeros((width, n))
        self.dots = np.empty((n, width))
        self.part = np.empty((-(-n // _MATVEC_ROWS), width, n))
        self.out = np.empty((n, width), a.dtype)
        self.at = UPPER.address(a.dtype, _upper_task if width == 4 else _upper_task1)

    def product(self, a, v):
        """``A v`` for ``v`` of up to ``width`` (4 or 1) columns, into ``self.out[:, :b]``
        (overwritten next call)."""
        b = v.shape[1]
        self.vt[:b] = v.T
        self.vt[b:] = 0.0
        _sym_product(a, self.vt, self.dots, self.part, self.out, self.at, _jit.threads_here())
        return self.out[:, :b]

    def matmat(self, a, v):
        """``A v`` as :meth:`product` returns it, a view its next call overwrites: :func:`_lanczos`
        stores it into its ``A V`` at once (a copy here would copy it twice)."""
        return self.product(a, v) if v.shape[1] <= self.vt.shape[0] else _numba_matmat(a, v)

    def matvec(self, a, v, w):
        w[:] = self.product(a, v[:, None])[:, 0]
        return float(v @ w), float(w @ w)


def _operator_matvec(a, v, w):
    w[:] = a.op @ v
    return float(v @ w), float(w @ w)


def _operator_matmat(a, v):
    return np.asarray(a.op @ v, dtype=a.dtype)


def _columns(matvec):
    """The block product ``A V`` of an :class:`Operator` by ``matvec`` a column at a time (the
    single-vector Lanczos needs it only where the basis fills all of R^n)."""

    def matmat(a, v):
        out = np.empty(v.shape, a.dtype, order="F")
        for c in range(v.shape[1]):
            matvec(a, np.ascontiguousarray(v[:, c]), out[:, c])
        return out

    return matmat


def _loop_csr_matvec(a, v, w):
    csr = a.op
    vv = [float(x) for x in v]
    for i in range(a.shape[0]):
        w[i] = sum(float(csr.data[p]) * vv[csr.indices[p]] for p in range(csr.indptr[i], csr.indptr[i + 1]))
    return sum(vv[i] * float(w[i]) for i in range(len(vv))), sum(float(x) * float(x) for x in w)


def _numpy_matmat(a, v):
    # (Vᵀ A)ᵀ, as the numba impl: OpenBLAS ran A @ V (n x 4) in 2.7-2.8 ms and Vᵀ A in 1.65 ms
    # at n = 2000 (2 threads, Zen 4), against 0.53 ms for one matrix-vector product.
    return (v.T @ a).T


def _loop_matmat(a, v):
    out = np.empty_like(v)
    for c in range(v.shape[1]):
        _loop_matvec(a, np.ascontiguousarray(v[:, c]), out[:, c])
    return out


# --------------------------------------------------------------------------- the algorithm


def _fix_signs(v):
    idx = np.argmax(np.abs(v), axis=0)
    signs = np.sign(v[idx, np.arange(v.shape[1])])
    signs[signs == 0] = 1
    return v * signs


def _power1(a, v, tol, maxiter, matvec):
    """Power iteration for one pair; returns (lam, v, iterations) or raises ConvergenceError."""
    w = np.empty_like(v)
    lam = 0.0
    for it in range(1, maxiter + 1):
        vw, ww = matvec(a, v, w)
        lam = vw  # v has unit norm: the Rayleigh quotient
        res = np.linalg.norm(w - lam * v)
        if res <= tol * abs(lam) and lam != 0:
            return lam, v, it
        norm = np.sqrt(ww)
        if norm == 0 or not np.isfinite(norm):
            break
        v = w / norm
    raise ConvergenceError(
        f"power iteration did not converge in {maxiter} iterations (tied, complex or non-finite "
        "dominant eigenvalues?)",
        np.array([lam]),
        v[:, None],
        maxiter,
    )


def _lanczos_sizes(n, k, block, single=False):
    """(block size b, basis size m) of the restarted block Lanczos for ``k`` pairs; ``single``: the
    start block's own width (one vector unless ``v0`` has more), for an :class:`Operator`, whose
    product costs nearly as much per vector in a block as alone (SciPy's CSR product: 13.8 ms for
    4 vectors against 7.75 ms for one, n = 200 000 with 4.2 M entries), so that a block of 4 that
    needs more vectors multiplied than a single vector does loses: k = 6 of that matrix took 1116
    vector products at b = 4 (14.7 s with SciPy's) against 186 at b = 1 (3.0 s; 2.8 s with the
    compiled product; ``eigsh`` 2.9-3.0 s with 471)."""
    b = min(n, block if single else max(block, 1 if k == 1 else min(k, 4)))
    m = min(n, max(32, 3 * k + 10, k + 3 * b))
    return b, m


def _check_every(n, b):
    """Sweeps between two Rayleigh-Ritz steps of :func:`_lanczos`: 1 where a sweep's product
    (``n^2 b`` multiply-adds) outweighs the step (``eigh`` of the <= 32 x 32 projected matrix and
    the residual estimates, ~50 us from Python), else 4, at the cost of finding convergence up to
    3 cheap sweeps late. A fixed function of the sizes, so every thread count takes the same
    sweeps."""
    return 1 if n * n * b >= CHECK_EVERY_SWEEP_WORK else 4


#: the product size (multiply-adds per sweep) from which :func:`_lanczos` checks every sweep
CHECK_EVERY_SWEEP_WORK = 2**20


def _bounds(theta, tol, n, dtype):
    """``(bound, floor)``: the residual each Ritz pair must reach, ``tol * |l|`` but never below
    ``floor = min(rho, tol * max|l|)``, ``rho = 10 sqrt(n) eps max|l|`` the rounding floor. No
    residual drops below rounding, so ``tol * |l|`` alone never converged for an eigenvalue far
    below the largest (1e-10 of it in float64) or zero (k above the rank), which SciPy's ``eigsh``
    returns; the cap at ``tol * max|l|`` keeps a ``tol`` below rounding unreachable (it raises)."""
    mag = np.abs(theta)
    top = float(mag.max(initial=0.0))
    floor = min(10 * np.sqrt(n) * float(np.finfo(dtype).eps) * top, tol * top)
    return np.maximum(tol * mag, floor), floor


def _tie_error(theta_all, k, x, it, dtype, floor=0.0):
    """ConvergenceError if the k-th and (k+1)-th Ritz values are ``+l`` and ``-l`` (else None);
    never for ``|l| <= floor`` (:func:`_bounds`' floor): values within rounding of zero."""
    theta = theta_all[:k]
    if len(theta_all) <= k or theta_all[k] * theta[-1] >= 0 or abs(theta[-1]) <= floor:
        return None
    tie_rtol = max(1e-6, 100 * float(np.finfo(dtype).eps))
    if abs(abs(theta_all[k]) - abs(theta[-1])) > tie_rtol * abs(theta[-1]):
        return None
    return ConvergenceError(
        f"eigenvalues {theta[-1]:.6g} and {theta_all[k]:.6g} are tied in magnitude: the top "
        f"{k} by |eigenvalue| is not unique",
        theta,
        x,
        it,
    )


def _project_out(basis, col):
    """``col`` minus its components along ``basis`` (orthonormal columns), DGKS-style.

    Classical Gram-Schmidt, repeated while a pass removes more than 30 % of what is left (a large
    cancellation leaves rounding errors along the basis that one more pass removes). Returns
    ``(col, coefficients, norm, in_span)``; ``in_span``: a third pass still cancelled, so ``col``
    lies in the span up to rounding and its remainder is noise.
    """
    coef = np.zeros(basis.shape[1], dtype=col.dtype)
    before = float(np.linalg.norm(col))
    for _ in range(3):
        c = basis.T @ col
        col = col - basis @ c
        coef += c
        after = float(np.linalg.norm(col))
        if after > 0.717 * before:
            return col, coef, after, False
        before = after
    return col, coef, after, True


@jit
def _orthonormalise_columns(v, j, wt, h, r, drop, coef, c):
    """:func:`_extend_block`'s common case compiled. Each row ``i`` of ``wt`` (``w`` transposed:
    C-ordered for every block width, so one compiled signature per dtype) is projected off ``v[:, :
    j + i]`` by classical Gram-Schmidt, repeated while a pass removes more than 30 % of what is left
    (:func:`_project_out`'s passes and test), and normalised into ``v[:, j + i]``; its coefficients
    go to ``h[:, i]`` and ``r[: i + 1, i]``. Stops at the first column that a third pass still
    cancels, or whose remainder is ``drop`` of its length or less (nearly in the span so far), and
    returns its index (``b``: every column done): :func:`_extend_block` gives that column a fresh
    direction in Python. ``coef`` and ``c`` are float64 scratch of ``j + b``.

    Every loop runs down a column of the Fortran-ordered basis (unit stride). Scalar loops without
    slices: the first form, with slice assignments, took 2.8 s to compile, this one 0.4 s beyond
    Numba's start-up. Measured (Zen 4, 2 threads, float64, a 0.9-decay spectrum, k = 6: four
    columns a sweep): the step took 1.26 ms of a 3.9 ms call at n = 500 column by column from Python
    (the NumPy calls of eight projections a sweep), 0.43 ms here; n = 200 0.84 -> 0.16 ms.
    """
    b, n = wt.shape
    for i in range(b):
        span = j + i
        sq = 0.0
        for t in range(_U(n)):
            x = wt[i, t]
            v[t, span] = x
            sq += x * x
        length = math.sqrt(sq)
        before = length
        for col_l in range(span):
            coef[col_l] = 0.0
        ok = False
        after = 0.0
        for _ in range(3):
            for col_l in range(span):
                d = 0.0
                for t in range(_U(n)):
                    d += v[t, col_l] * v[t, span]
                c[col_l] = d
            for col_l in range(span):
                d = c[col_l]
                for t in range(_U(n)):
                    v[t, span] -= d * v[t, col_l]
                coef[col_l] += d
            sq = 0.0
            for t in range(_U(n)):
                sq += v[t, span] * v[t, span]
            after = math.sqrt(sq)
            if after > 0.717 * before:
                ok = True
                break
            before = after
        if not (ok and after > drop * length):
            return i
        inv = 1 / after
        for t in range(_U(n)):
            v[t, span] *= inv
        for col_l in range(j):
            h[col_l, i] = coef[col_l]
        for col_l in range(j, span):
            r[col_l - j, i] = coef[col_l]
        r[i, i] = after
    return b


def _extend_block(v, j, w, rng, compiled=False):
    """Orthonormalise the columns of ``w`` against the basis ``v[:, :j]`` and each other, into
    ``v[:, j : j + b]``.

    Returns ``(h, r, fresh)`` with ``w = v[:, :j] h + v[:, j : j + b] r`` (``r`` upper triangular).
    Each column leaves the basis and the block's columns before it in one projection (one product
    each way with ``v[:, : j + i]``; separate ones for the basis and the block's columns took ~40 %
    more of this step, which is Python calls more than arithmetic at these sizes). A column that
    lies in the span so far (the Krylov space is invariant, or nearly: below ``100 eps`` of its length,
    or still cancelling after three Gram-Schmidt passes) gets ``r = 0`` and a random direction
    orthogonal to everything so far, so the basis keeps growing (as ARPACK does); ``fresh`` says that
    happened. Normalising a remainder made of rounding noise instead gave a basis that was not
    orthogonal and Ritz values 1000x the matrix norm (a rank-17 matrix, k = 10).
    """
    n, b = w.shape
    h = np.zeros((j, b), dtype=w.dtype)
    r = np.zeros((b, b), dtype=w.dtype)
    drop = 100 * float(np.finfo(w.dtype).eps)
    fresh = False
    done = 0
    if compiled:
        scratch = np.empty(2 * (j + b))  # float64: the coefficients' sums
        done = _orthonormalise_columns(v, j, w.T, h, r, drop, scratch[: j + b], scratch[j + b :])
    for i in range(done, b):
        length = float(np.linalg.norm(w[:, i]))
        span = v[:, : j + i]
        col, coef, norm, in_span = _project_out(span, w[:, i])
        h[:, i] = coef[:j]
        r[:i, i] = coef[j:]
        if not in_span and norm > drop * length:
            v[:, j + i] = col / norm
            r[i, i] = norm
            continue
        fresh = True
        col, _, norm, in_span = _project_out(span, rng.standard_normal(n).astype(w.dtype))
        # else the space is exhausted: the column is zero
        v[:, j + i] = col / norm if not in_span and norm > 0 else 0
    return h, r, fresh


def _lanczos(a, start, k, tol, maxiter, matvec, matmat, slack=0.0, verify=None, compiled=False):
    """Restarted block Lanczos (Krylov-Schur) for the k eigenpairs of largest |l| of symmetric a.

    Returns ``(w, X, sweeps)``. ``A V`` is kept as computed, so the final residual ``A X - X diag(w)``
    is explicit (not the Lanczos identity) at no extra pass over A. Products of a matrix within
    ``slack`` of A (see :func:`triangle_slack`) count a pair converged when its residual plus
    ``slack`` passes, or when ``verify`` (a product with A itself) gives a residual that passes.
    ``compiled``: the basis grows by :func:`_orthonormalise_columns` (the numba implementation).
    """
    n, dtype = a.shape[0], a.dtype
    b, m = _lanczos_sizes(n, k, start.shape[1], isinstance(a, Operator))
    v = np.zeros((n, m + b), dtype=dtype, order="F")  # orthonormal basis
    av = np.zeros((n, m), dtype=dtype, order="F")  # A times its first m columns
    h = np.zeros((m + b, m), dtype=dtype)  # A V[:, :j] = V[:, :j+b] h[:j+b, :j]
    v[:, :b] = np.linalg.qr(start)[0]
    rng = np.random.default_rng(n)
    j, nb = 0, b  # A has been applied to V[:, :j]; the next block is V[:, j:j+nb]
    theta, x, restarted, sweep = np.zeros(k, dtype), v[:, :k], False, 0
    every = _check_every(n, b)
    # After the Krylov space turned out invariant, the exact pairs found in it need not be the
    # dominant ones (a start vector that is an eigenvector of a small eigenvalue): convergence counts
    # only once the random direction's own Krylov space has filled the basis.
    trust_from = 0
    for sweep in range(1, maxiter + 1):
        if nb == 1:
            matvec(a, v[:, j], av[:, j])
        else:
            av[:, j : j + nb] = matmat(a, v[:, j : j + nb])
        hc, r, fresh = _extend_block(v, j + nb, av[:, j : j + nb], rng, compiled)  # the next block, in v
        h[: j + nb, j : j + nb] = hc
        j += nb
        if fresh:
            trust_from = min(n, m)
        fits = min(nb, n - j)  # columns of the next block that still fit in R^n (the rest are 0)
        h[j : j + fits, j - nb : j] = r[:fits]
        # the Rayleigh-Ritz step every few sweeps where a sweep is cheap (see _check_every), and
        # always before the basis is full (a restart uses its Ritz vectors) and at the last sweep
        if j >= k and (sweep % every == 0 or j + b > m or sweep == maxiter):
            t = h[:j, :j]
            theta_all, s = np.linalg.eigh((t + t.T) / 2)
            order = np.argsort(-np.abs(theta_all), kind="stable")
            theta_all, s = theta_all[order], s[:, order]
            theta, restarted = theta_all[:k], False
            est = np.linalg.norm(r @ s[j - nb : j, :k], axis=0)
            bound, floor = _bounds(theta, tol, n, dtype)
            if j >= trust_from and np.all(est <= bound):
                x = v[:, :j] @ s[:, :k]
                res = np.linalg.norm(av[:, :j] @ s[:, :k] - x * theta, axis=0)
                if slack and np.any(res + slack > bound):  # res is against a matrix within slack of A
                    if verify is not None and np.all(res <= bound):
                        res = np.linalg.norm(verify(a, x) - x * theta, axis=0)  # against A itself
                    else:
                        res = res + slack
                if np.all(res <= bound):
                    tie = _tie_error(theta_all, k, x, sweep, dtype, floor)
                    if tie is not None:
                        raise tie
                    return theta, x, sweep
        if j + b <= m:
            nb = b
        elif m < n:  # thick restart: keep the k wanted Ritz vectors and the better half of the rest
            p = min(max(k, (j + k) // 2), j - b)
            v[:, :p] = v[:, :j] @ s[:, :p]
            av[:, :p] = av[:, :j] @ s[:, :p]
            v[:, p : p + nb] = v[:, j : j + nb]  # the next block (p + nb <= j: no overlap)
            v[:, p + nb :] = 0
            h[:] = 0
            h[np.arange(p), np.arange(p)] = theta_all[:p]
            h[p : p + nb, :p] = r @ s[j - nb : j, :p]
            j, restarted, trust_from = p, True, 0  # the basis was full: its pairs count again
        else:  # the basis may grow to all of R^n: finish with a narrower block, then stop
            nb = m - j
            if nb == 0:  # every Ritz pair is exact up to rounding, yet misses tol
                msg = f"the Krylov basis spans all of R^{n} and the residuals still exceed tol={tol:g}"
                break
    else:
        msg = f"block Lanczos did not converge in {maxiter} sweeps over A"
    if j >= k:
        x = v[:, :k] if restarted else v[:, :j] @ s[:, :k]
    raise ConvergenceError(msg, theta, x, sweep)


# --------------------------------------------------------------------------- validation / public


#: The default ``tol`` per dtype: float32 cannot reach float64's 1e-8 (its residuals stop near
#: sqrt(n) * 6e-8 * |A|), and a default must never raise ConvergenceError on a well-posed matrix.
DEFAULT_TOL = {np.dtype(np.float64): 1e-8, np.dtype(np.float32): 1e-5}

#: A matrix whose largest |entry| leaves these bounds is scaled by a power of two first (exact;
#: eigenvectors are unchanged and eigenvalues scale): subnormal matrices lose every product to
#: underflow, and matrices near the overflow threshold overflow A v.
_MAG_RANGE = {np.dtype(np.float64): (2.0**-400, 2.0**400), np.dtype(np.float32): (2.0**-40, 2.0**40)}


def default_tol(dtype, tol, n):
    """``tol``, or the default of the computation's ``dtype`` when it is None; 0 (``eigsh``'s "machine
    precision") is the rounding floor of an ``n`` x ``n`` matrix, ``10 sqrt(n) eps``: an explicit
    residual can reach no lower (``eigsh`` judges its Lanczos estimate, which can)."""
    if tol is None:
        return DEFAULT_TOL[np.dtype(dtype)]
    if tol == 0:
        return 10 * np.sqrt(max(n, 1)) * float(np.finfo(dtype).eps)
    return tol


def magnitude_exponent(dtype, big):
    """``e`` such that ``A * 2^-e`` has its largest |entry| ``big * 2^-e`` in range (0 when it is)."""
    lo, hi = _MAG_RANGE[np.dtype(dtype)]
    return 0 if big == 0 or lo <= big <= hi else int(np.frexp(big)[1])


def check_options(shape, dtype, k, tol, maxiter=None):
    """Validate the matrix dtype (first, as NumPy checks it: :func:`compute_dtype`), its shape,
    ``k``, ``tol`` and ``maxiter`` (no data is read); return the compute dtype. As SciPy's
    ``eigsh``: a ``k`` or ``maxiter`` that is not an integer is a TypeError, one out of range
    (``maxiter <= 0``) a ValueError."""
    dtype = compute_dtype(dtype)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"power_iteration: a must be a square 2-D array, got shape {shape}")
    n = shape[0]
    k = _validate.as_int(k, "power_iteration: k")
    if not 1 <= k <= max(n, 1):
        raise ValueError(f"power_iteration: k must be an integer in [1, n={n}], got {k!r}")
    if n == 0:
        raise ValueError("power_iteration: a is empty (0 x 0)")
    if tol is not None and not (
        isinstance(tol, numbers.Real) or (np.ndim(tol) == 0 and np.asarray(tol).dtype.kind in "iuf")
    ):
        raise TypeError(f"power_iteration: tol must be a real number, got {type(tol).__name__}")
    if tol is not None and not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"power_iteration: tol must be >= 0 (0: to rounding), got {tol}")
    if maxiter is not None:
        if _validate.as_int(maxiter, "power_iteration: maxiter") <= 0:
            raise ValueError(f"power_iteration: maxiter must be positive, got {maxiter}")
    return dtype


def compute_dtype(dtype):
    """The float dtype the iteration runs in for a matrix of ``dtype`` (ints -> float64)."""
    if np.dtype(dtype).kind == "c":  # no implementation, NumPy's included: the algorithm is real
        raise TypeError(
            f"power_iteration: {np.dtype(dtype)} input is not supported (real floats or integers); "
            "complex Hermitian matrices: scipy.sparse.linalg.eigsh or numpy.linalg.eigh"
        )
    dtype, why = _validate.compute_dtype((np.empty(0, dtype),), ints_to_float64=True)
    if why is not None:
        raise TypeError(f"power_iteration: {why}")
    return dtype


def start_block(n, dtype, k, maxiter, v0, symmetric, seed, single=False):
    """``(start vectors (n, b), maxiter)``: ``v0`` in the first columns, seeded normals after
    (``single``: see :func:`_lanczos_sizes`)."""
    if k > 1 and not symmetric:
        raise ValueError(
            "power_iteration: k > 1 needs a symmetric matrix (block Lanczos); for "
            "non-symmetric matrices use numpy.linalg.eig"
        )
    if v0 is not None:
        v0 = np.asarray(v0, dtype=dtype)
        if v0.shape not in ((n,), (n, k)):
            raise ValueError(f"power_iteration: v0 must have shape ({n},) or ({n}, {k}), got {v0.shape}")
        if not np.any(v0):
            raise ValueError("power_iteration: v0 must not be all zeros")
        if not np.isfinite(v0).all():  # as the matrix (it failed deep inside LAPACK's eigh)
            raise ValueError("power_iteration: v0 must not contain infs or NaNs")
        v0 = v0.reshape(n, -1)
    given = 1 if v0 is None else v0.shape[1]
    block = _lanczos_sizes(n, k, given, single)[0] if symmetric else 1
    rng = np.random.default_rng(seed)
    start = rng.standard_normal((n, block)).astype(dtype)
    if v0 is not None:
        start[:, : v0.shape[1]] = v0
    return start, max(1000, 10 * n) if maxiter is None else int(maxiter)


def triangle_slack(n, asym, big, tol):
    """A bound on ``||(A - Ã) x||`` over unit ``x``, where ``Ã`` is A's upper triangle mirrored
    (:class:`_OneTriangle`'s matrix) and ``asym = max |a_ij - a_ji|``: ``||A - Ã||_F <= asym
    sqrt(n (n - 1) / 2)``. So a pair whose residual against ``Ã`` is ``r`` has one against A of at
    most ``r + slack``, which the convergence test adds. ``inf`` (read all of A) when the slack is
    over ``1e-3 tol max|a|`` (``max|a| <= |l_1|``): then it could hold the test back."""
    slack = 1.01 * asym * np.sqrt(n * (n - 1) / 2)  # 1 %: the scan's rounded differences
    return float(slack) if slack <= 1e-3 * tol * big else np.inf


class PowerArgs(NamedTuple):
    """The validated arguments of power iteration's implementations (and of :func:`run`)."""

    a: object  # (n, n) C-contiguous, read-only typed, scaled by 2^-exp (facts["exp"]); or an Operator
    k: int
    tol: float
    maxiter: int
    start: object  # (n, block) start vectors
    symmetric: bool
    slack: float  # bound on ||(A - Ã) x|| over unit x, Ã: A's upper triangle mirrored (inf: unused)
    return_vectors: bool


class Operator(NamedTuple):
    """A matrix the algorithm applies through its own product, as ``eigsh`` takes one: a SciPy
    sparse matrix or array (as CSR in the compute dtype, scaled by 2^-exp) or a
    ``scipy.sparse.linalg.LinearOperator``."""

    op: object
    shape: tuple
    dtype: np.dtype


def _is_linear_operator(a):
    la = sys.modules.get("scipy.sparse.linalg")  # not imported: a cannot be one
    return la is not None and isinstance(a, la.LinearOperator)


def _prepare_operator(a, k, tol, maxiter, v0, symmetric, seed, return_eigenvectors):
    """:func:`_prepare` for a SciPy sparse ``a`` (checked like a dense one: finiteness, symmetry and
    magnitude from its stored entries) or a LinearOperator (symmetric unless told otherwise, as
    ``eigsh`` assumes; its entries are not seen, so neither checked nor scaled)."""
    dtype = check_options(a.shape, np.float64 if a.dtype is None else a.dtype, k, tol, maxiter)
    exp = 0
    if _validate.is_sparse(a):
        import scipy.sparse as sp

        a = sp.csr_array(a, dtype=dtype, copy=True)  # a copy: summed and scaled here
        a.sum_duplicates()
        big = float(np.abs(a.data).max(initial=0.0))
        if not np.isfinite(big):
            raise ValueError("array must not contain infs or NaNs")
        asym = float(abs(a - a.T).max()) if a.nnz else 0.0
        found = asym <= symmetry_atol(dtype, big)
        exp = magnitude_exponent(dtype, big)
        if exp:
            a.data = np.ldexp(a.data, -exp).astype(dtype)
        why = None  # the CSR product is compiled (numba), SciPy's (numpy) or Python loops (loop)
    else:
        found = True
        why = "a LinearOperator: power iteration with its own products"  # the numpy impl's
    symmetric = found if symmetric is None else bool(symmetric)
    n = a.shape[0]
    start, maxiter = start_block(n, dtype, k, maxiter, v0, symmetric, seed, single=True)
    tol = float(default_tol(dtype, tol, n))
    op = Operator(a, (n, n), dtype)
    args = PowerArgs(op, k, tol, maxiter, start, symmetric, np.inf, return_eigenvectors)
    return _registry.Prepared(args, compiled=why, facts={"n": n, "k": k, "exp": exp, "operator": True})


def _prepare(a, k=1, tol=None, maxiter=None, v0=None, symmetric=None, seed=None, return_eigenvectors=True):
    if _validate.is_sparse(a) or _is_linear_operator(a):
        return _prepare_operator(a, k, tol, maxiter, v0, symmetric, seed, return_eigenvectors)
    a = np.asarray(a)
    dtype = check_options(a.shape, a.dtype, k, tol, maxiter)
    # every sweep reads A: one C-contiguous, read-only typed copy (if it is not one already) keeps
    # each kernel to one compiled signature per dtype (see ``_jit``)
    a = _intrinsics.kernel_input(_validate.native(a, dtype))
    # one pass for finiteness, max |a| and symmetry, also when ``symmetric`` is given (the compiled
    # scan is faster than NumPy's two passes for the first two)
    found, asym, big = _finite_and_symmetric(a)
    symmetric = found if symmetric is None else bool(symmetric)
    exp = magnitude_exponent(dtype, big)
    if exp:
        a = _intrinsics.readonly(np.ldexp(a, -exp).astype(dtype, copy=False))
    n = a.shape[0]
    start, maxiter = start_block(n, dtype, k, maxiter, v0, symmetric, seed)
    tol = float(default_tol(dtype, tol, a.shape[0]))
    slack = triangle_slack(n, np.ldexp(asym, -exp), np.ldexp(big, -exp), tol) if symmetric else np.inf
    args = PowerArgs(a, k, tol, maxiter, start, symmetric, slack, return_eigenvectors)
    return _registry.Prepared(args, facts={"n": n, "k": k, "exp": exp})


def _rule(prep):
    if prep.facts.get("operator"):  # a sparse matrix (a LinearOperator runs numpy: compiled is set)
        return "numba", "a compiled CSR product on every thread per sweep (SciPy's runs on one)"
    if AUTO_RULE["numba_wins"]:
        return "numba", "one fused parallel pass over A per sweep"
    return "numpy", "each sweep is memory-bound: BLAS gemv reads A as fast as the fused kernel"


_OP = _registry.operation("power_iteration", _prepare, _rule)


@_registry.public(_OP)
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
    """The ``k`` eigenpairs of largest ``|eigenvalue|`` of a square matrix, by power iteration.

    Parameters
    ----------
    a : array_like, SciPy sparse matrix/array or LinearOperator, shape (n, n)
        Sparse input and LinearOperators, as ``eigsh`` takes them, run the same algorithm with one
        vector a sweep: a sparse matrix through a CSR product (compiled and parallel, SciPy's, or
        Python loops, by backend), a LinearOperator through its own (the ``numpy`` implementation;
        taken as symmetric unless ``symmetric=False``, ``eigsh``'s assumption; its entries are
        never checked).
    k : int
        Number of eigenpairs (k > 1 needs a symmetric matrix).
    tol : float, optional
        Stop when ``||A v - l v|| <= tol * |l|`` for every returned pair. Default 1e-8 for float64
        and 1e-5 for float32 (float32 rounding stops the residuals near ``sqrt(n) * 6e-8``). For
        a symmetric matrix no residual need drop below ``min(10 sqrt(n) eps, tol) * max|l|`` (the
        rounding floor): eigenvalues far below the largest, or zero (k above the rank), converge
        there. ``tol=0`` (``eigsh``'s default, "machine precision") asks for that floor itself,
        ``10 sqrt(n) eps``.
    maxiter : int, optional
        Default ``max(1000, 10 n)``.
    v0 : array_like, optional
        Start vector(s), shape (n,) or (n, k); not all zeros.
    symmetric : bool, optional
        Default: detected with an ``allclose(a, a.T)`` check.
    seed : int or Generator, optional
        Random start when ``v0`` is not given (reproducible).
    return_eigenvectors : bool

    Returns
    -------
    w : ndarray, shape (k,)
        Eigenvalues, sorted by decreasing magnitude.
    v : ndarray, shape (n, k)
        Unit eigenvectors (largest-magnitude component positive); only if ``return_eigenvectors``.

    Raises
    ------
    ConvergenceError
        No convergence within ``maxiter`` (a subclass of ``numpy.linalg.LinAlgError``).
    ValueError
        ``a`` not square or not finite, ``k`` outside ``[1, n]``, ``tol < 0``, ``maxiter <= 0``,
        a bad ``v0`` (shape, all zeros, not finite).
    TypeError
        ``k`` or ``maxiter`` not an integer (a bool is not one, as for SciPy's ``eigsh``), ``tol``
        not a real number.

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> a = np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> w, v = fl.power_iteration(a, seed=0)
    >>> np.round(w, 8), np.round(v.ravel(), 6)
    (array([3.]), array([0.707107, 0.707107]))
    """
    prep = _prepare(a, k, tol, maxiter, v0, symmetric, seed, return_eigenvectors)
    res = _OP.run(backend, prep)
    exp = prep.facts["exp"]
    if not exp:  # the matrix was scaled by 2^-exp: so were its eigenvalues
        return res
    return (np.ldexp(res[0], exp).astype(res[0].dtype), res[1]) if return_eigenvectors else np.ldexp(res, exp)


def run(
    a,
    k,
    tol,
    maxiter,
    start,
    symmetric,
    return_vectors,
    matvec,
    matmat,
    slack=0.0,
    verify=None,
    compiled=False,
):
    """The algorithm on ``a`` (any object with ``dtype`` the two products accept). ``slack``: the
    products apply a matrix within ``slack`` of A (see :func:`triangle_slack`); ``verify``: a product
    with A itself, for a final residual that the slack alone would fail; ``compiled``: see
    :func:`_lanczos`.

    NumPy reports an FE_INVALID flag that a BLAS product of finite operands leaves raised as
    "invalid value encountered in matmul" (seen once, in the float32 product of a 5 x 6 Lanczos
    basis with a column, every entry finite); ``eigsh`` checks no flags and warns nothing. So the
    algorithm's own algebra (on a matrix already checked finite) ignores that flag, while the
    products of a LinearOperator, the user's code, run under the caller's settings.
    """
    if isinstance(a, Operator):
        caller = np.geterr()
        matvec, matmat, verify = (_under_errstate(caller, f) for f in (matvec, matmat, verify))
    with np.errstate(invalid="ignore"):
        if not symmetric:
            v = start[:, 0] / np.linalg.norm(start[:, 0])
            lam, v, _ = _power1(a, v, tol, maxiter, matvec)
            w, vecs = np.array([lam], dtype=a.dtype), v[:, None]
        elif _solved_densely(a, symmetric):
            w, vecs = _dense_pairs(a, k, tol)
        else:
            w, vecs, _ = _lanczos(a, start, k, tol, maxiter, matvec, matmat, slack, verify, compiled)
            w = w.astype(a.dtype)
        vecs = _fix_signs(vecs / np.linalg.norm(vecs, axis=0)).astype(a.dtype)
    return (w, vecs) if return_vectors else w


#: A symmetric dense matrix up to this order is solved densely by LAPACK (:func:`_dense_pairs`)
#: instead of by Lanczos sweeps, whose Python-side cost per sweep (~50-100 us: the Ritz problem, the
#: projections) exceeds a whole dense solve there. Measured (Zen 4, 2 threads, ms, k = 1, median of
#: 5): n = 16 eigh 0.024 / Lanczos 0.62 (a gap of 0.9) to 1.27 (a random symmetric matrix) / eigsh
#: 0.25-0.36; n = 64: 0.24 / 0.70-3.2 / 0.32-0.84; n = 96: 0.53 / 0.64-4.1 / 0.33-1.14. With the
#: ends of the spectrum alone for a small k (``syevr``, see :data:`ENDS_RATIO`), 100 -> 128: Zen 4,
#: three spectra (the benchmark's 0.9 gap, a sample covariance, a 0.97 decay), ms, Lanczos -> dense,
#: the better of two interleaved runs each: float64 k = 1 1.07-1.50 -> 0.91-1.00, k = 2 1.40-1.61
#: -> 1.02-1.17, k = 6 2.14-2.18 -> 1.54-1.61, k = 10 2.62-2.91 -> 1.51-1.55; float32 k = 1
#: 0.76-1.36 -> 0.77-0.79, k = 6 1.53-1.55 -> 1.56-1.62, k = 10 1.90-2.36 -> 1.54-1.58. At n =
#: 144-160 the two were a wash (float64 k = 1 dense 1.26-1.66 against 1.03-1.58, k = 6 1.35-2.67
#: against 2.00-2.85); eigsh(tol=1e-8) took 0.5-1.2 ms at n = 128 in the same runs.
DENSE_MAX_N = 128

#: :func:`_dense_pairs` takes the two ends of the spectrum (k + 1 eigenpairs each) from ``syevr``
#: where ``(k + 1) * ENDS_RATIO <= n``, else every pair from ``eigh``: ``syevr`` tridiagonalises A
#: for each end, ``eigh`` once but then finds every eigenvector. Measured (Zen 4, n = 100, the three
#: spectra above, ms, ``eigh`` -> ends): float64 k = 1 0.78-0.81 -> 0.66-0.69, k = 2 0.79-0.85 ->
#: 0.72-0.77; float32 k = 1 0.84-0.85 -> 0.51-0.58, k = 2 0.79-0.85 -> 0.55-0.60; k = 6 at n = 100,
#: 0.80-0.82 with ``eigh``, took 0.99-1.0 from the ends (float32's ``syevr`` runs at about twice
#: float64's speed, NumPy's ``eigh`` at the same).
ENDS_RATIO = 32


def _solved_densely(a, symmetric):
    """Whether :func:`run` takes :func:`_dense_pairs` (a NumPy array, not an Operator or a dask
    array)."""
    return symmetric and type(a) is np.ndarray and a.shape[0] <= DENSE_MAX_N


def _spectrum_ends(a, q):
    """The ``q`` smallest and the ``q`` largest eigenpairs of symmetric ``a`` (its upper triangle)
    by LAPACK's ``syevr``, in ascending order as ``eigh`` gives them; None if LAPACK reports a
    failure."""
    from scipy.linalg import get_lapack_funcs

    (evr,) = get_lapack_funcs(("syevr",), (a,))
    n = a.shape[0]
    ends = [evr(a, compute_v=1, range="I", lower=0, il=il, iu=il + q - 1) for il in (1, n - q + 1)]
    if any(info != 0 or m != q for _, _, m, _, info in ends):
        return None
    return np.concatenate([w[:q] for w, *_ in ends]), np.hstack([z[:, :q] for _, z, *_ in ends])


def _dense_pairs(a, k, tol):
    """:func:`_lanczos`'s result for a small symmetric matrix, from LAPACK (its upper triangle, the
    triangle the compiled product reads): the k + 1 eigenpairs at each end of the spectrum
    (:func:`_spectrum_ends`; the k of largest ``|l|`` and the next, for the tie test, are among
    them) or every one (``eigh``, see :data:`ENDS_RATIO`). The k of largest ``|l|`` (stable order:
    ties as the Ritz values'), under the same tests, residuals against A itself and the +-l tie at
    the k-th place (:class:`ConvergenceError`, one "sweep")."""
    n, dtype = a.shape[0], a.dtype
    pairs = None
    if (k + 1) * ENDS_RATIO <= n and dtype in _validate.COMPILED_DTYPES:
        pairs = _spectrum_ends(a, k + 1)
    theta_all, s = pairs if pairs is not None else np.linalg.eigh(a, UPLO="U")
    order = np.argsort(-np.abs(theta_all), kind="stable")
    theta_all, s = theta_all[order], s[:, order]
    theta, x = theta_all[:k], np.ascontiguousarray(s[:, :k])
    bound, floor = _bounds(theta, tol, n, dtype)
    res = np.linalg.norm(a @ x - x * theta, axis=0)
    if not np.all(res <= bound):
        msg = f"the eigenpairs solved densely (n <= {DENSE_MAX_N}), and the residuals still exceed"
        msg += f" tol={tol:g}"
        raise ConvergenceError(msg, theta.astype(dtype), x, 1)
    tie = _tie_error(theta_all, k, x, 1, dtype, floor)
    if tie is not None:
        raise tie
    return theta.astype(dtype), x


def _under_errstate(settings, fn):
    """``fn`` run under NumPy's floating-point error ``settings`` (None stays None)."""
    if fn is None:
        return None

    def call(*args):
        with np.errstate(**settings):
            return fn(*args)

    return call


@_OP.register("numba", needs_numba=True)
def _power_numba(a, k, tol, maxiter, start, symmetric, slack, return_vectors):
    """Fused parallel matvec (non-symmetric); symmetric: A V reading A's upper triangle only
    (:class:`_OneTriangle`), or all of A by the micro-kernel where A is too far from symmetric."""
    # The small dense steps between sweeps (QR of the n x b block, Vᵀ(AV), V S) go to BLAS. With
    # BLAS multi-threaded, OpenBLAS's idle threads keep spinning after each of them and take the
    # cores from the next compiled sweep: measured (Zen 4, 2 cores) 37.8 ms per sweep at n = 4000,
    # k = 10 with 2 BLAS threads against 20.5 ms with one. The small steps gain nothing from threads.
    args = a, k, tol, maxiter, start, symmetric, return_vectors
    if _solved_densely(a, symmetric):  # no sweeps (LAPACK on one thread at these sizes)
        return run(*args, _numba_matvec, _numba_matmat)
    gs = {"compiled": _jit.JIT_ENABLED}  # (with the JIT off, the NumPy projections are the fast ones)
    with _threads.blas_limit(1):
        if isinstance(a, Operator):  # a CSR matrix
            return run(*args, _sparse_matvec, _columns(_sparse_matvec), **gs)
        if slack == np.inf:
            return run(*args, _numba_matvec, _numba_matmat, **gs)
        if start.shape[1] == 1:  # k = 1: one vector a sweep
            return run(*args, _OneTriangle(a, 1).matvec, _numba_matmat, slack, _numba_matmat, **gs)
        return run(*args, _numba_matvec, _OneTriangle(a).matmat, slack, _numba_matmat, **gs)


@_OP.register("numpy", any_dtype=True)  # the one that runs sparse input and LinearOperators
def _power_numpy(a, k, tol, maxiter, start, symmetric, slack, return_vectors):
    """Same algorithm with ``@`` (BLAS gemv/gemm; a sparse matrix's or LinearOperator's own)."""
    if isinstance(a, Operator):
        return run(a, k, tol, maxiter, start, symmetric, return_vectors, _operator_matvec, _operator_matmat)
    return run(a, k, tol, maxiter, start, symmetric, return_vectors, _numpy_matvec, _numpy_matmat)


@_OP.register("loop")
def _power_loop(a, k, tol, maxiter, start, symmetric, slack, return_vectors):
    """Same algorithm with pure-Python matrix-vector products."""
    if isinstance(a, Operator):  # a CSR matrix
        products = _loop_csr_matvec, _columns(_loop_csr_matvec)
        return run(a, k, tol, maxiter, start, symmetric, return_vectors, *products)
    return run(a, k, tol, maxiter, start, symmetric, return_vectors, _loop_matvec, _loop_matmat)
