"""LU factorisation and solve: ``fastla.lu_factor``, ``fastla.lu_solve``, ``fastla.solve``.

``lu_factor``/``lu_solve`` follow ``scipy.linalg`` (``(lu, piv)`` with L below the unit diagonal,
U on and above it, ``piv`` 0-based LAPACK getrf row interchanges as int32; ``trans`` 0/1/2), on
stacks ``(..., n, n)`` too, batched as SciPy >= 1.15 batches them (``lu_solve``'s ``b`` a vector only
when 1-D, its leading dimensions broadcast against the stack). ``solve`` follows ``np.linalg.solve``
of NumPy 2 (``b`` is a vector only when it is 1-D; stacks broadcast; integers become float64; 0 x 0
works).

Errors as the anchors: a singular matrix (an exactly zero pivot) makes ``solve`` raise
``numpy.linalg.LinAlgError("Singular matrix")``, also when one matrix of a stack is singular;
``lu_factor`` then warns ``scipy.linalg.LinAlgWarning`` (:class:`LinAlgWarning` without SciPy) and
returns the factors, as SciPy does. ``check_finite=True`` rejects inf/NaN with ``ValueError``.

Implementations:

* ``numba`` — right-looking blocked LU on a C-contiguous copy: the panel (NB columns) is factored
  unblocked with partial pivoting, swapping whole rows (contiguous in row-major order, so no
  separate laswp pass); the U12 block by a unit-lower triangular solve with row operations; the
  trailing update ``A22 -= L21 @ U12`` through the packed GEMM of :mod:`fastla.matmul` (alpha = -1
  folded into its packing, accumulating straight into A22). Stacks of systems with n <= 32 use one
  parallel kernel over the stack that solves one system per SIMD lane: each group of lanes is
  transposed in registers and eliminated by straight-line vector code emitted for the exact n
  (:func:`fastla._lane_solver.lane_solve_group`), pivoting branch-free by compare and select; zero pivots are
  recorded per system (no ``return`` inside ``prange``, no per-system allocation). ``solve``
  computes float32 systems in float64 and rounds the solutions back, as ``np.linalg.solve`` does
  (in every impl; ``lu_factor``/``lu_solve`` compute float32 in float32, as SciPy does).
* ``numpy`` — ``scipy.linalg.lu_factor``/``lu_solve`` (LAPACK getrf/getrs) when SciPy is
  importable, else fastla's own kernels; ``solve`` uses ``np.linalg.solve`` (LAPACK gesv).
* ``loop`` — textbook Doolittle elimination with partial pivoting in pure Python.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from typing import NamedTuple

import numpy as np

from fastla import _first_use, _intrinsics, _jit, _registry, _validate
from fastla import _gemm_kernels as _gk
from fastla._intrinsics import wide_vectors
from fastla._jit import jit
from fastla._lane_solver import _SPREAD, COMPUTE, LANE_RHS, STEPS, lanes, solve_stack, step_key

__all__ = ["LinAlgWarning", "lu_factor", "lu_solve", "solve"]

# SciPy is imported lazily (it costs ~0.3 s at import): LinAlgWarning is SciPy's class when SciPy is
# already imported, else fastla's own. A warning raised after SciPy was imported is an instance of
# both classes (_singular_warning_class), so filters on either catch it.
if "scipy.linalg" in sys.modules:
    from scipy.linalg import LinAlgWarning
else:

    class LinAlgWarning(RuntimeWarning):
        """Warned when a matrix is exactly singular (``scipy.linalg.LinAlgWarning`` when SciPy was
        imported before fastla; a singular-matrix warning is an instance of both)."""


@functools.cache
def _both_warnings(scipy_class):
    return type("LinAlgWarning", (LinAlgWarning, scipy_class), {"__module__": __name__})


def _singular_warning_class():
    scipy_linalg = sys.modules.get("scipy.linalg")
    scipy_class = getattr(scipy_linalg, "LinAlgWarning", LinAlgWarning)
    return LinAlgWarning if scipy_class is LinAlgWarning else _both_warnings(scipy_class)


# --------------------------------------------------------------------------- tuning data
#
# NB (panel width), one thread, f64, ratio to scipy lu_factor. With the row-by-row panel (Zen 4):
#   n=1000: NB 32 0.94, 64 0.88, 96 0.81, 128 0.67;  n=2000: 32 0.67, 64 0.84, 96 0.80, 128 0.80.
# With the panel factored in a transposed copy (_panel_columns; Zen 2, best of 7, two runs):
#   n=1000: NB 24 0.97, 32 1.01-1.03, 48 1.05, 64 1.06-1.07, 80 1.05, 96 1.02, 128 0.97;
#   n=2000: 1.01 for every NB from 32 to 128; n = 300 and 500: 32, 48 and 64 within the noise.
# A wider panel makes the trailing GEMM (k = NB) less thin, so that A22 is read and written fewer
# times; past ~64 the panel's own updates (rank-4 steps over whole columns) cost more than that saves.
# Up to n = 64 the whole matrix is one panel: no trailing GEMM to compile or call (Zen 5, f64 / f32:
# n = 40 10.4 -> 6.7 / 12.6 -> 8.3 us, n = 64 16.3 -> 16.0 / 21.2 -> 18.7 us against NB = 32).
NB_BY_N = ((math.inf, 64),)
# Unsigned column indices where a loop starts at a run-time offset: with a signed index Numba
# checks each access for a negative index, which keeps LLVM from vectorising the row operation.
_U = _jit.U
#: The panel's and the U12 solve's flags: contraction alone (FMAs, as with fastla's flags), no
#: reassociation, so that the updates grouped four at a time round as one at a time.
_EXACT = frozenset({"contract"})

#: systems up to this n in a stack go to the batched kernel (one system per SIMD lane). n = 17-32 run
#: there since groups of larger n are eliminated by loops over a copy on the stack
#: (_lane_solver.REGISTER_N): 10000 32x32 float64 systems 0.78x -> 8.1-8.6x np.linalg.solve, 24x24
#: 0.50x -> 9.3-9.6x (Zen 5, 2 threads), where each system had gone through the blocked LU; the
#: first call of a 32x32 stack compiles in ~3.8 s against ~1.9 s for that LU (shared with lu_factor).
SMALL_N = 32
#: Stacks of systems of n = SMALL_N + 1 to this go to LAPACK's gesv system by system (what
#: np.linalg.solve runs, on one thread), the stack split into one share per thread of the call
#: (:func:`_lapack_across_threads`): neither the lane kernel nor the blocked LU per system beat gesv
#: there (2000 64x64 float64 systems: the blocked LU 62.7 ms, NumPy 55.5), and NumPy's loop leaves
#: the other cores idle. From n ~ 112 OpenBLAS's own getrf already threads: splitting gained nothing
#: (Zen 4, two threads: 8 x 112^2 1.29 / 1.38 ms, 100 x 128^2 12.8 / 13.0 ms).
THREADED_MAX_N = 96
AUTO_RULE = {
    # np.linalg.solve on stacks of small systems pays LAPACK call overhead per system: the compiled
    # batched kernel won from 128 4x4 systems on (`python -m fastla tune`, 2 threads: the same
    # crossover on an Intel AVX-512 Xeon and a Zen 5); since the call no longer goes through NumPy's
    # broadcasting helpers when there is nothing to broadcast (~6 us a call) it wins from 32-64
    # (Zen 5, three `tune --check` runs: crossover 64, 64, 32).
    "small_n": SMALL_N,
    "small_min_batch": 64,
    # stacks of SMALL_N < n <= THREADED_MAX_N: split across threads from this much work (batch *
    # n^3). A worker thread took 0.07 ms to start a share after an idle spell here (Zen 4 VM), and
    # two shares of a few systems ran no faster side by side than one after the other (8 96x96
    # systems: one call 0.44 ms, split 0.57; 12: 0.66 / 0.43-0.46; 16 64x64: 0.37 / 0.27-0.29; 500
    # 96x96: 32 / 16), so the split waits for ~1 ms of NumPy's time.
    "threaded_min_work": 2**24,
    # a single large system: ours runs at 1.02-1.03x LAPACK's getrf+getrs at n = 1000 on one thread
    # (Zen 2, the quick set's target; 0.94-0.98x on Zen 4 before the transposed panels) and ~1.0x at
    # n = 2000, but ~0.8x on two threads, where its panels stay serial: auto keeps LAPACK
    "large_numba": False,
}


# --------------------------------------------------------------------------- kernels


@jit(inline="always")
def _swap_rows(m, i, p):
    """Swap rows i and p of the 2-D array m (no-op when i == p); contiguous in row-major order."""
    if i != p:
        for c in range(m.shape[1]):
            tmp = m[i, c]
            m[i, c] = m[p, c]
            m[p, c] = tmp


@jit(python_wrapper=False)
def _panel_rows(a, k0, k1, piv, info):
    """Unblocked partial-pivoting LU of columns k0:k1 (rows k0:m, k1 <= min(m, n)) in place, row by
    row: the pivot search, the scaling and each rank-1 update walk the panel's rows (short runs of
    k1 - k0 elements, a row stride apart); swaps whole rows. Returns info. For narrow panels
    (:data:`PANEL_COLUMNS_MIN`)."""
    wide_vectors()
    m = a.shape[0]
    for j in range(k0, k1):
        p = j
        best = abs(a[j, j])
        for i in range(j + 1, m):
            v = abs(a[i, j])
            if v > best:  # strict: the first maximum, as LAPACK's idamax
                best = v
                p = i
        piv[j] = p
        if a[p, j] != 0:
            _swap_rows(a, j, p)
            inv = a.dtype.type(1.0) / a[j, j]  # in the matrix's precision, as getf2
            for i in range(j + 1, m):
                a[i, j] *= inv
        elif info == 0:
            info = j + 1
        for i in range(j + 1, m):
            lij = a[i, j]
            for c in range(j + 1, k1):
                a[i, _U(c)] -= lij * a[j, _U(c)]
    return info


#: Panels at least this wide are factored column by column in a transposed copy
#: (:func:`_panel_columns`); narrower ones row by row (:func:`_panel_rows`). One panel of the whole
#: n x n matrix, Zen 2, float64, us per factorisation, rows / columns: n = 16 0.87 / 0.96, 24 2.11 /
#: 2.05, 32 4.22 / 3.68, 64 22.6 / 17.3, 128 173 / 95.
PANEL_COLUMNS_MIN = 24
#: Panel steps whose updates of the later columns are applied together (:func:`_panel_columns`).
_PANEL_BLOCK = 4


@jit(inline="always", fastmath=_EXACT)
def _pivot_row(t, j, rows):
    """The pivot of column ``j`` of the transposed panel ``t`` (its row ``j``, positions j:rows):
    the first position of the largest magnitude, as LAPACK's idamax (strictly greater than every
    earlier one; NaNs never win, a NaN on the diagonal keeps the diagonal). Four running maxima over
    interleaved positions, so that the compare-and-select chains overlap, combined by value and then
    by the lower position."""
    best = abs(t[j, j])
    b0 = b1 = b2 = b3 = -1.0
    i0 = i1 = i2 = i3 = j
    i = j + 1
    while i + 4 <= rows:
        v = abs(t[j, _U(i)])
        if v > b0:
            b0, i0 = v, i
        v = abs(t[j, _U(i + 1)])
        if v > b1:
            b1, i1 = v, i + 1
        v = abs(t[j, _U(i + 2)])
        if v > b2:
            b2, i2 = v, i + 2
        v = abs(t[j, _U(i + 3)])
        if v > b3:
            b3, i3 = v, i + 3
        i += 4
    while i < rows:
        v = abs(t[j, _U(i)])
        if v > b0:
            b0, i0 = v, i
        i += 1
    if b1 > b0 or (b1 == b0 and i1 < i0):
        b0, i0 = b1, i1
    if b2 > b0 or (b2 == b0 and i2 < i0):
        b0, i0 = b2, i2
    if b3 > b0 or (b3 == b0 and i3 < i0):
        b0, i0 = b3, i3
    return i0 if b0 > best else j


@jit(python_wrapper=False, fastmath=_EXACT)
def _panel_step(t, k0, j, w, rows, piv, info):
    """Step ``j`` of the transposed panel ``t`` (w, rows), column ``j`` already updated by the steps
    before it: its pivot, the interchange in every column of the panel, the multipliers scaled.
    Returns info."""
    p = _pivot_row(t, j, rows)
    piv[k0 + j] = k0 + p
    if t[j, p] != 0:
        if p != j:
            for c in range(w):
                t[c, p], t[c, j] = t[c, j], t[c, p]
        inv = t.dtype.type(1.0) / t[j, j]
        for i in range(j + 1, rows):
            t[j, _U(i)] *= inv
    elif info == 0:
        info = k0 + j + 1
    return info


@jit(python_wrapper=False, fastmath=_EXACT)
def _column_step(t, c, j, rows):
    """Column ``c`` of the transposed panel ``t`` updated by step ``j``: its entries below row ``j``
    less step ``j``'s multipliers times its entry in row ``j`` (one FMA an element)."""
    u = t[c, j]
    for i in range(j + 1, rows):
        t[c, _U(i)] -= t[j, _U(i)] * u


@jit(python_wrapper=False, fastmath=_EXACT)
def _panel_columns(a, k0, k1, piv, status, t):
    """:func:`_panel_rows` on a transposed copy of the panel in ``t`` (at least k1 - k0 rows of at
    least m - k0): there each of the panel's columns is a contiguous run of m - k0 elements, so the
    pivot search, the scaling and the updates stream whole columns where the row form walks short
    rows (n = 1000, 32-column panels, Zen 2, float64: the panels of a factorisation 4.4 -> 2.2 ms,
    of ~22 ms in all). Four steps at a time update the columns right of them together (each element
    read and stored once for the four), in the row form's order, so the factors are the same bit for
    bit (:data:`_EXACT`: no reassociation). The whole rows of ``a`` are interchanged after it, in
    order (:func:`_swap_rows`, as the row form does), before its columns are copied back.
    ``status[0]`` is LAPACK's info, in and out (see :data:`PANEL_COLUMNS`)."""
    wide_vectors()
    info = status[0]
    m = a.shape[0]
    w = k1 - k0
    rows = m - k0
    into = w >= 0  # True, as a run-time value: one compiled transpose serves both directions
    _intrinsics.call_out_of_line(_transpose_panel, (a, k0, w, rows, t, into))
    j = 0
    while j + _PANEL_BLOCK <= w:
        j1, j2, j3 = j + 1, j + 2, j + 3
        # the block's own columns, left-looking: each updated by the block's earlier steps, one
        # step a pass, then its own step (a call: its pivot search compiled once, not five times)
        for s in range(_PANEL_BLOCK):
            for r in range(s):
                _intrinsics.call_out_of_line(_column_step, (t, j + s, j + r, rows))
            info = _intrinsics.call_out_of_line(_panel_step, (t, k0, j + s, w, rows, piv, info))
        # every later column by the block's four steps at once (its rows j:j+4 first: U's entries)
        for c in range(j + _PANEL_BLOCK, w):
            u0 = t[c, j]
            u1 = t[c, j1] - t[j, j1] * u0
            t[c, j1] = u1
            u2 = t[c, j2] - t[j, j2] * u0 - t[j1, j2] * u1
            t[c, j2] = u2
            u3 = t[c, j3] - t[j, j3] * u0 - t[j1, j3] * u1 - t[j2, j3] * u2
            t[c, j3] = u3
            for i in range(j + _PANEL_BLOCK, rows):
                t[c, _U(i)] = (
                    t[c, _U(i)] - t[j, _U(i)] * u0 - t[j1, _U(i)] * u1 - t[j2, _U(i)] * u2 - t[j3, _U(i)] * u3
                )
        j += _PANEL_BLOCK
    while j < w:
        info = _intrinsics.call_out_of_line(_panel_step, (t, k0, j, w, rows, piv, info))
        for c in range(j + 1, w):
            _intrinsics.call_out_of_line(_column_step, (t, c, j, rows))
        j += 1
    # the row interchanges on the whole rows of ``a`` (LAPACK's laswp left and right), before the
    # panel's own columns, interchanged in ``t`` already, are copied back over theirs
    for j in range(k0, k1):
        _swap_rows(a, j, piv[j])
    _intrinsics.call_out_of_line(_transpose_panel, (a, k0, w, rows, t, not into))
    status[0] = info


@jit(python_wrapper=False)
def _transpose_panel(a, k0, w, rows, t, into):
    """``t[c, i] = a[k0 + i, k0 + c]`` (``into``) or back, for c < w and i < rows: eight rows of
    ``a`` at a time, so that each of t's rows is written (read) eight elements in a run (in-flow
    transposes of a 1000 x 32 panel ~1 ms row by row, Zen 2)."""
    i = 0
    while i + 8 <= rows:
        for c in range(w):
            for r in range(8):
                if into:
                    t[c, _U(i + r)] = a[_U(k0 + i + r), _U(k0 + c)]
                else:
                    a[_U(k0 + i + r), _U(k0 + c)] = t[c, _U(i + r)]
        i += 8
    for ii in range(i, rows):
        for c in range(w):
            if into:
                t[c, _U(ii)] = a[k0 + ii, k0 + c]
            else:
                a[k0 + ii, k0 + c] = t[c, _U(ii)]


def _panel_columns_examples(dtype):
    a = np.empty((1, 1), dtype)
    return (a, 0, 0, np.empty(1, np.int32), np.empty(1, np.int64), a)


#: :func:`_panel_columns` for the blocked LU through its address: compiled (~1.5 s cold, Zen 2) only
#: when a factorisation has a panel below its first (min(m, n) > NB); one panel of a small matrix
#: is factored row by row, as before (`fastla.lu_factor`'s cold first call on a 40 x 40 matrix 1.0
#: s, 3.0 s with the transposed panel compiled into it).
PANEL_COLUMNS = _jit.Entry(_panel_columns, _panel_columns_examples)


@jit(python_wrapper=False, fastmath=_EXACT)
def _trsm_unit_lower_rows(a, k0, k1):
    """U12 := L11^-1 A12 for rows k0:k1, columns k1:n (row operations, vectorised along columns):
    four earlier rows subtracted from a row in one pass, in order (n = 1000, Zen 2, float64: the
    solves of a factorisation 1.3-1.5 -> 0.8-0.9 ms; eight rows at a time 0.8 ms)."""
    wide_vectors()
    n = a.shape[1]
    for i in range(k0 + 1, k1):
        r = k0
        while r + 4 <= i:
            l0, l1, l2, l3 = a[i, r], a[i, r + 1], a[i, r + 2], a[i, r + 3]
            for c in range(k1, n):
                x = a[i, _U(c)] - l0 * a[r, _U(c)] - l1 * a[r + 1, _U(c)]
                a[i, _U(c)] = x - l2 * a[r + 2, _U(c)] - l3 * a[r + 3, _U(c)]
            r += 4
        for rr in range(r, i):
            lir = a[i, rr]
            for c in range(k1, n):
                a[i, _U(c)] -= lir * a[rr, _U(c)]


@jit
def _getrf(a, piv, nb, neg_one, tiles, gemm_at, panel_at):
    """Blocked LU in place on C-contiguous ``a`` (m, n), LAPACK's getrf: ``piv`` of min(m, n) row
    interchanges; returns LAPACK's info (0 or 1-based j). The trailing updates call the packed
    GEMM's driver through its entry address ``gemm_at`` (:data:`GEMM_INTO`), so that a
    factorisation without one (min(m, n) <= nb) compiles no GEMM; the panels below the first through
    ``panel_at`` (:data:`PANEL_COLUMNS`), likewise."""
    m, n = a.shape
    kmax = min(m, n)
    flat = a.reshape(m * n)
    no_scale = _intrinsics.empty(0, a.dtype)
    # run-time values, not literals (see _gemm_kernels' "literal arguments")
    accumulate = n > 0
    info = n * 0
    # the transposed panels' copy (one allocation: each panel's would map and fault its pages afresh)
    t = _intrinsics.empty((nb if kmax > nb else 0, m), a.dtype)
    status = _intrinsics.empty(1, np.int64)  # the transposed panel's info, in and out
    for k0 in range(0, kmax, nb):
        k1 = min(k0 + nb, kmax)
        # both through their symbols (compiled once, in their own libraries): linked, LLVM optimised
        # them again inside this function (its own compile 0.44 -> 0.30 s, Zen 4)
        if kmax > nb and k1 - k0 >= PANEL_COLUMNS_MIN:  # (a single panel: row by row, see PANEL_COLUMNS)
            status[0] = info
            _intrinsics.call_entry(panel_at, _panel_columns, (a, k0, k1, piv, status, t))
            info = status[0]
        else:
            info = _intrinsics.call_out_of_line(_panel_rows, (a, k0, k1, piv, info))
        if k1 < n:  # U12 := L11^-1 A12; a wide matrix's last panel leaves no rows below to update
            _intrinsics.call_out_of_line(_trsm_unit_lower_rows, (a, k0, k1))
        if k1 < n and k1 < m:
            update = (
                _gk.flat_operand(flat, k1 * n + k0, n, 1, m - k1, k1 - k0),  # L21
                _gk.flat_operand(flat, k0 * n + k1, n, 1, k1 - k0, n - k1),  # U12
                _gk.Dest(flat, k1 * n + k1, n),
                neg_one,
                accumulate,
                no_scale,
                no_scale,
                tiles,
            )
            _intrinsics.call_entry(gemm_at, _gk.gemm_into, update)
    return info


@jit(inline="always")
def _row_dot(lu, b, i, lo, hi):
    """``sum(lu[i, lo:hi] * b[lo:hi])`` for 1-D ``b``: contiguous in both, vectorised."""
    s = 0.0
    for r in range(lo, hi):
        s += lu[i, _U(r)] * b[_U(r)]
    return s


@jit(inline="always")
def getrs_vector(lu, piv, b):
    """Solve ``A x = b`` in place in the C-contiguous 1-D ``b`` with the factors of A (also
    ``fastla.kernels.lu_solve``'s one right-hand side: no 2-D view of it, whose reshape cost Numba
    ~30 ns a call). Each step is a dot product of a contiguous row of the factors with the solution
    so far (vectorised), instead of axpys of length 1."""
    n = b.shape[0]
    for i in range(n):
        p = piv[i]
        if p != i:
            b[i], b[p] = b[p], b[i]
    for i in range(n):  # L y = P b
        b[i] -= _row_dot(lu, b, i, 0, i)
    for i in range(n - 1, -1, -1):  # U x = y
        b[i] = (b[i] - _row_dot(lu, b, i, i + 1, n)) / lu[i, i]


@jit
def _getrs_one(lu, piv, b):
    """:func:`getrs_vector` compiled on its own, for one right-hand side: a solve's first call then
    compiles it alone, not all of :func:`_getrs`'s forms."""
    wide_vectors()
    getrs_vector(lu, piv, b)


@jit
def _getrs(lu, piv, b, trans):
    """Solve with the factors in place on C-contiguous ``b`` (n, k): trans 0 (A x = b) or 1 (A^T)."""
    wide_vectors()
    n, k = b.shape
    if trans == 0 and k == 1:
        getrs_vector(lu, piv, b.reshape(n))
    elif trans == 0:
        for i in range(n):
            _swap_rows(b, i, piv[i])
        for i in range(n):  # L y = P b, L unit lower
            for r in range(i):
                lir = lu[i, r]
                for c in range(k):
                    b[i, c] -= lir * b[r, c]
        for i in range(n - 1, -1, -1):  # U x = y
            for r in range(i + 1, n):
                uir = lu[i, r]
                for c in range(k):
                    b[i, c] -= uir * b[r, c]
            inv = 1.0 / lu[i, i]
            for c in range(k):
                b[i, c] *= inv
    else:
        for i in range(n):  # U^T z = b, U^T lower
            for r in range(i):
                uri = lu[r, i]
                for c in range(k):
                    b[i, c] -= uri * b[r, c]
            inv = 1.0 / lu[i, i]
            for c in range(k):
                b[i, c] *= inv
        for i in range(n - 1, -1, -1):  # L^T w = z, unit upper
            for r in range(i + 1, n):
                lri = lu[r, i]
                for c in range(k):
                    b[i, c] -= lri * b[r, c]
        for i in range(n - 1, -1, -1):  # x = P w: interchanges in reverse
            _swap_rows(b, i, piv[i])


def _factor_numba(work):
    """Blocked LU of one C-contiguous (m, n) working copy in place; returns (piv, info)."""
    m, n = work.shape
    kmax = min(m, n)
    piv = np.empty(kmax, dtype=np.int32)
    if kmax == 0:
        return piv, 0
    blk = _gk.BLOCKING[work.dtype]
    nb = next(width for limit, width in NB_BY_N if kmax <= limit)
    mc = _gk.row_blocking(max(m - nb, 1), work.dtype.itemsize, _jit.threads_here())
    if kmax <= nb:  # one panel, no trailing update: the GEMM is not compiled (0 addresses: never called)
        none = None if not _jit.JIT_ENABLED else 0
        tiles = _gk.Tiles(blk.KC, mc, blk.NC, _gk.Tasks(none, none), 1, np.empty(0, work.dtype))
        gemm_at = panel_at = none
    else:
        tiles, gemm_at = _gk.tiles(work.dtype, blk.KC, mc, blk.NC), _gk.GEMM_INTO.address(work.dtype)
        panel_at = PANEL_COLUMNS.address(work.dtype)
    info = _getrf(work, piv, nb, work.dtype.type(-1), tiles, gemm_at, panel_at)
    return piv, info


# --------------------------------------------------------------------------- loop (textbook)


def _factor_loop(work):
    """Doolittle elimination with partial pivoting of an (m, n) matrix, in place, pure Python."""
    m, n = work.shape
    piv = np.empty(min(m, n), dtype=np.int32)
    info = 0
    for j in range(min(m, n)):
        p = max(range(j, m), key=lambda i: abs(work[i, j]))
        piv[j] = p
        if work[p, j] == 0:
            info = info or j + 1
            continue
        work[[j, p]] = work[[p, j]]
        for i in range(j + 1, m):
            work[i, j] = work[i, j] / work[j, j]
            for c in range(j + 1, n):
                work[i, c] = work[i, c] - work[i, j] * work[j, c]
    return piv, info


def _solve_loop(lu, piv, b, trans):
    n = lu.shape[0]
    if trans == 0:
        for i in range(n):
            b[[i, piv[i]]] = b[[piv[i], i]]
        for i in range(n):
            for r in range(i):
                b[i] = b[i] - lu[i, r] * b[r]
        for i in range(n - 1, -1, -1):
            for r in range(i + 1, n):
                b[i] = b[i] - lu[i, r] * b[r]
            b[i] = b[i] / lu[i, i]
    else:
        for i in range(n):
            for r in range(i):
                b[i] = b[i] - lu[r, i] * b[r]
            b[i] = b[i] / lu[i, i]
        for i in range(n - 1, -1, -1):
            for r in range(i + 1, n):
                b[i] = b[i] - lu[r, i] * b[r]
        for i in range(n - 1, -1, -1):
            b[[i, piv[i]]] = b[[piv[i], i]]


# --------------------------------------------------------------------------- validation


def _square(a, name, fn):
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{fn}: {name} must be square (..., n, n), got shape {a.shape}")


class FactorArgs(NamedTuple):
    """The validated arguments of ``lu_factor``'s implementations."""

    a: object  # (..., n, n) native-order of the LAPACK dtype (as given where not compiled)
    overwrite: bool  # the caller allowed overwriting a, and a is the caller's array


class LuSolveArgs(NamedTuple):
    """The validated arguments of ``lu_solve``'s implementations."""

    lu: object
    piv: object
    b: object
    trans: int  # 0: a x = b; 1: a^T x = b (SciPy's 1, and 2 for real input); 2: a^H x = b (complex)
    vector: bool  # b is one right-hand side per system ((..., n), not (..., n, k))
    overwrite: bool  # the caller allowed overwriting b, and b is the caller's array


class SolveArgs(NamedTuple):
    """The validated arguments of ``solve``'s implementations."""

    a: object
    b: object


def _prepare_factor(a, overwrite_a=False, check_finite=True):
    a_in = a
    a = np.asarray(a)
    if a.ndim < 2:
        raise ValueError(f"lu_factor: a must be a matrix (..., m, n), got shape {a.shape}")
    dtype, why = _validate.lapack_dtype((a,))
    if check_finite:
        _validate.check_finite(a)
    args = FactorArgs(a if why else _validate.native(a, dtype), overwrite_a and a is a_in)
    facts = {"n": a.shape[-1], "batch": math.prod(a.shape[:-2])}
    return _registry.Prepared(args, compiled=why, facts=facts)


def _prepare_solve(lu_and_piv, b, trans=0, overwrite_b=False, check_finite=True):
    try:
        lu, piv = lu_and_piv
    except (TypeError, ValueError):
        raise ValueError("lu_solve: lu_and_piv must be the (lu, piv) pair from lu_factor") from None
    lu = np.asarray(lu)
    piv = np.asarray(piv)
    b_in = b
    b = np.asarray(b)
    _square(lu, "lu", "lu_solve")
    if trans not in (0, 1, 2):
        raise ValueError(f"lu_solve: trans must be 0, 1 or 2, got {trans!r}")
    n = lu.shape[-1]
    if piv.shape != lu.shape[:-1]:
        raise ValueError(f"lu_solve: piv of shape {piv.shape} does not match lu of shape {lu.shape}")
    if piv.dtype.kind == "f" and np.array_equal(piv, np.trunc(piv)):
        # integral floats (a piv stored in a float array): SciPy's LAPACK wrapper casts them too
        piv = piv.astype(np.int64)
    if piv.dtype.kind not in "iu":
        raise ValueError(f"lu_solve: piv must hold integer row indices, got dtype {piv.dtype}")
    _check_piv(piv, n)
    # SciPy >= 1.15 batches lu_solve by solve's NumPy 2 rule: b is one vector only when 1-D, else
    # (..., n, k), and its leading dimensions broadcast against the stack of factors
    try:
        stack, vector = linsolve_shape(lu, b)
    except ValueError:  # lu is square (checked above): b's shape
        raise ValueError(
            f"lu_solve: b of shape {b.shape} is incompatible with lu of shape {lu.shape}"
        ) from None
    core = b.shape[b.ndim - (1 if vector else 2) :]
    if lu.shape[:-2] != stack or b.shape != stack + core:  # one side broadcast (views)
        lu, piv = np.broadcast_to(lu, (*stack, n, n)), np.broadcast_to(piv, (*stack, n))
        b = np.broadcast_to(b, stack + core)
    dtype, why = _validate.lapack_dtype((lu, b))
    if check_finite:  # like SciPy: only b (lu comes from lu_factor, which checked its input)
        _validate.check_finite(b)
    if why is None:
        lu, b = _validate.native(lu, dtype), _validate.native(b, dtype)
    # 2 (a^H x = b) is 1 for real factors; complex ones keep it (SciPy's impl solves with them)
    code = 2 if trans == 2 and lu.dtype.kind == "c" else (1 if trans else 0)
    # overwrite_b is a permission: not taken for a b that shares memory with the factors it is
    # solved with (LAPACK's getrs, SciPy's lu_solve, then returns garbage for an F-ordered one)
    overwrite_b = overwrite_b and b is b_in and _validate.writes_apart(b, lu, piv)
    args = LuSolveArgs(lu, piv, b, code, vector, overwrite_b)
    return _registry.Prepared(args, compiled=why, facts={"n": n, "batch": math.prod(stack)})


def _check_piv(piv, n):
    """ValueError for a row index of ``piv`` (integers) outside ``[0, n)``: LAPACK's getrs (SciPy's
    lu_solve) would read and swap rows outside b."""
    if piv.size and (piv.view(piv.dtype.str.replace("i", "u")) >= n).any():  # negative ones too
        _piv_error(n)


def _piv_error(n):
    raise ValueError(f"lu_solve: piv holds a row index outside [0, {n})")


def _check_solve_args(piv, n, b, finite):
    """:func:`_check_piv` and (with ``finite``) ``_validate.check_finite(b)`` for :func:`lu_solve`'s
    fast path (1-D ``piv``, a float ``b``): one compiled scan, :func:`_solve_args_problem`, the
    same errors; the two themselves with the JIT off."""
    if not _jit.JIT_ENABLED:
        _check_piv(piv, n)
        if finite:
            _validate.check_finite(b)
        return
    problem = _solve_args_problem(piv, n, b, bool(finite))
    if problem == 1:
        _piv_error(n)
    if problem == 2:
        _validate.check_finite(b)  # raises SciPy's ValueError


@jit(fastmath=False)
def _solve_args_problem(piv, n, b, finite):
    """0 when ``piv``'s row indices lie in ``[0, n)`` and (with ``finite``) ``b`` holds no inf or
    NaN; 1 for a bad index, 2 for a non-finite ``b``: :func:`_check_piv` and
    ``_validate.check_finite(b)`` in one compiled call for :func:`lu_solve`'s fast path (4x4: 0.2 us
    against their 3.6). No fastmath: under the kernels' flags LLVM folded this test's first form
    (a sum of ``x - x``, NaN for inf or NaN) to zero."""
    for i in range(piv.shape[0]):
        if piv[i] < 0 or piv[i] >= n:
            return 1
    if finite:
        bad = False
        for x in b.flat:
            bad |= not np.isfinite(x)
        if bad:
            return 2
    return 0


def linsolve_shape(a, b):
    """``(stack, vector)`` of ``solve(a, b)`` under NumPy 2's rules (b is a vector only when 1-D);
    ``a``/``b`` need only ``ndim`` and ``shape``. Raises NumPy's ``LinAlgError`` for an ``a`` that is
    not a stack of square matrices and the ``ValueError`` of a bad pair."""
    if a.ndim < 2:
        raise np.linalg.LinAlgError(
            f"solve: {a.ndim}-dimensional array given. Array must be at least two-dimensional"
        )
    if a.shape[-1] != a.shape[-2]:
        raise np.linalg.LinAlgError(f"solve: Last 2 dimensions of the array must be square, got a {a.shape}")
    n = a.shape[-1]
    vector = b.ndim == 1
    b_shape = (*b.shape, 1) if vector else b.shape
    if len(b_shape) < 2 or b_shape[-2] != n:
        raise ValueError(f"solve: b of shape {b.shape} does not match a of shape {a.shape}")
    if a.shape[:-2] == b_shape[:-2]:  # the common case, without NumPy's helper (microseconds)
        return a.shape[:-2], vector
    try:
        stack = np.broadcast_shapes(a.shape[:-2], b_shape[:-2])
    except ValueError:
        raise ValueError(f"solve: stacks of a {a.shape} and b {b.shape} do not broadcast") from None
    return stack, vector


def _prepare_linsolve(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    n = a.shape[-1] if a.ndim else 0
    try:
        stack, _ = linsolve_shape(a, b)
    except ValueError:  # b's shape: NumPy checks the dtypes first (its LinAlgError cases come first)
        _validate.raise_anchors_type_error(np.linalg.solve, a, b)
        raise
    dtype, why = _validate.compute_dtype((a, b), ints_to_float64=True)
    if why is None:
        a, b = _validate.native(a, dtype), _validate.native(b, dtype)
    k = 1 if b.ndim == 1 else b.shape[-1]
    facts = {"n": n, "batch": math.prod(stack), "solve": True, "k": k, "dtype": dtype}
    return _registry.Prepared(SolveArgs(a, b), compiled=why, facts=facts)


def _lapack_wins(n, batch):
    """The auto rule's choice of the numpy impl (LAPACK per matrix) for ``batch`` matrices of size
    ``n`` (used by the fast paths of ``lu_factor`` and ``lu_solve``)."""
    return not _batched_wins(n, batch) and not AUTO_RULE["large_numba"]


def _batched_wins(n, batch):
    """The auto rule for stacks on plain numbers (used by :func:`_rule` and by ``solve``'s fast path).

    ``small_min_batch`` is measured on 4x4 systems (``fastla tune``); a stack of n x n systems
    takes the lane kernel from ``4 * small_min_batch / n`` of them: LAPACK's cost per system grows
    with n, the kernel's set-up does not. Measured (Zen 4, 2 threads, float64; the batch from which
    the kernel won): n = 3 ~30, 4 ~20, 6 ~14, 8 ~9, 12 ~5, 16 4, 24 5, 32 6-8 (float32 alike or
    lower), where the unscaled rule kept 50 16x16 systems on LAPACK at 2.9x the kernel's time."""
    return n <= AUTO_RULE["small_n"] and batch * n >= 4 * AUTO_RULE["small_min_batch"]


def _split_pays(n, batch):
    """Whether a stack of ``batch`` n x n systems is worth splitting across threads (see
    ``AUTO_RULE["threaded_min_work"]``)."""
    return batch > 1 and batch * n**3 >= AUTO_RULE["threaded_min_work"]


def _threads_win(n, batch):
    """``solve``'s auto rule for the stacks :func:`_lapack_across_threads` takes."""
    if not (SMALL_N < n <= THREADED_MAX_N and _split_pays(n, batch)):
        return False
    return _jit.NUMBA_AVAILABLE and _jit.get_num_threads() > 1


def _rule(prep):
    f = prep.facts
    if _batched_wins(f["n"], f["batch"]):
        if f.get("solve"):  # the lane solver's step for this n: compiled per size (_first_use)
            key = step_key(f["dtype"], f["n"], f["k"])
            if not STEPS.wins(key):
                return "numpy", STEPS.pending(key, f"stack of {f['batch']} systems of size {f['n']}")
        return (
            "numba",
            lambda: (
                f"stack of {f['batch']} systems of size {f['n']}: one compiled kernel over the stack beats "
                "a LAPACK call per system"
            ),
        )
    if f.get("solve") and _threads_win(f["n"], f["batch"]):
        return (
            "numba",
            lambda: f"stack of {f['batch']} systems of size {f['n']}: LAPACK per system on every thread",
        )
    if AUTO_RULE["large_numba"]:
        return "numba", "compiled blocked LU"
    return "numpy", lambda: f"n={f['n']} (batch {f['batch']}): LAPACK is faster per system here"


def _rule_factor(prep):
    """``lu_factor``'s rule: the numba impl factors a stack a matrix per Python call (no batched
    kernel), where the numpy impl's cached getrf costs less per matrix (Zen 4, 2 threads, ms,
    numba / numpy: 100 4x4 0.53 / 0.14, 1000 8x8 5.4 / 1.6, 10000 16x16 64 / 37, 2000 32x32 21 /
    20; under solve's stack rule it took the numba impl for all of these)."""
    if AUTO_RULE["large_numba"]:
        return "numba", "compiled blocked LU"
    f = prep.facts
    return "numpy", lambda: f"n={f['n']} (batch {f['batch']}): LAPACK's getrf per matrix"


_FACTOR = _registry.operation("lu_factor", _prepare_factor, _rule_factor)
_SOLVE = _registry.operation("lu_solve", _prepare_solve, _rule)
_LINSOLVE = _registry.operation("solve", _prepare_linsolve, _rule)


# --------------------------------------------------------------------------- public


@_registry.public(_FACTOR)
def lu_factor(a, overwrite_a=False, check_finite=True, *, backend=None):
    """LU factorisation with partial pivoting, like :func:`scipy.linalg.lu_factor`.

    Parameters
    ----------
    a : array_like, shape (..., m, n)
        Square or rectangular (LAPACK's getrf, as SciPy factors it), in every impl.
    overwrite_a : bool
        Allow the factors to be written into ``a`` (when it is a C-contiguous float array).
    check_finite : bool
        Raise ``ValueError`` if ``a`` has inf or NaN.
    backend : {None, "auto", "numba", "numpy", "loop"}

    Returns
    -------
    lu : ndarray, shape (..., m, n)
        U on and above the diagonal, L (unit diagonal implied) below.
    piv : ndarray of int32, shape (..., min(m, n))
        Row ``i`` was interchanged with row ``piv[i]`` (0-based, in order).

    Warns
    -----
    LinAlgWarning
        When a pivot is exactly zero (the matrix is singular); the factors are still returned.

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> lu, piv = fl.lu_factor(np.array([[1.0, 2.0], [3.0, 4.0]]), backend="numba")
    >>> lu, piv
    (array([[3.        , 4.        ],
           [0.33333333, 0.66666667]]), array([1, 1], dtype=int32))
    """
    if type(a) is np.ndarray and a.ndim == 2 and a.dtype in _validate.COMPILED_DTYPES:
        # The fast path of the common call (see solve): one square float32/float64 matrix under
        # auto, which gives one matrix to LAPACK (SciPy's lu_factor): the full path's checks
        # (finiteness) and impl, without its generic preparation (4x4: 19 -> 4.2 us; SciPy's 5.6)
        n = a.shape[0]
        if a.shape[1] == n and _registry.fast_path(backend) == "auto" and _lapack_wins(n, 1):
            if check_finite:
                _validate.check_finite(a)
            return _lu_factor_numpy(a, overwrite_a)
    lu, piv = _FACTOR.run(backend, _prepare_factor(a, overwrite_a, check_finite))
    if lu.size == 0:  # SciPy's answer for an empty a: factors of a's own dtype (int, bool, float16)
        lu = np.empty(lu.shape, np.asarray(a).dtype)
    return lu, piv


@_registry.public(_SOLVE)
def lu_solve(lu_and_piv, b, trans=0, overwrite_b=False, check_finite=True, *, backend=None):
    """Solve ``a x = b`` (``trans=0``) or ``a^T x = b`` (1, 2) from :func:`lu_factor`'s factors.

    Like :func:`scipy.linalg.lu_solve`, stacks batched as SciPy >= 1.15 batches them: ``b`` is one
    vector only when 1-D (n,), else (..., n, k), and its leading dimensions broadcast against the
    stack of factors (..., n, n).

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> a = np.array([[3.0, 1.0], [1.0, 2.0]])
    >>> fl.lu_solve(fl.lu_factor(a), np.array([9.0, 8.0]))
    array([2., 3.])
    """
    if type(lu_and_piv) is tuple and len(lu_and_piv) == 2 and type(b) is np.ndarray and type(trans) is int:
        # The fast path of the common call: lu_factor's own (lu, piv) of one float32/float64 matrix,
        # b (n,) or (n, k) of its dtype, under auto, which gives one system to LAPACK (SciPy's
        # lu_solve): the full path's checks (piv's range, b's finiteness) and impl, without its
        # generic preparation (4x4: 20 -> 7.3 us; SciPy's 8.6)
        lu, piv = lu_and_piv
        if (
            type(lu) is np.ndarray
            and type(piv) is np.ndarray
            and lu.ndim == 2
            and lu.dtype in _validate.COMPILED_DTYPES
            and b.dtype is lu.dtype
            and piv.dtype.kind in "iu"
            and trans in (0, 1, 2)
            and 1 <= b.ndim <= 2
        ):
            n = lu.shape[0]
            fits = lu.shape[1] == n and piv.shape == (n,) and b.shape[0] == n
            if fits and _registry.fast_path(backend) == "auto" and _lapack_wins(n, 1):
                _check_solve_args(piv, n, b, check_finite)
                overwrite_b = overwrite_b and _validate.writes_apart(b, lu, piv)
                return _lu_solve_numpy(lu, piv, b, 1 if trans else 0, b.ndim == 1, overwrite_b)
    return _SOLVE.run(backend, _prepare_solve(lu_and_piv, b, trans, overwrite_b, check_finite))


@_registry.public(_LINSOLVE)
def solve(a, b, *, backend=None):
    """Solve ``a x = b`` like :func:`numpy.linalg.solve` (NumPy 2 semantics).

    ``b`` is treated as a vector only when it is 1-D; otherwise it is (..., n, k). Stacks broadcast.

    Raises
    ------
    numpy.linalg.LinAlgError
        "Singular matrix" when any matrix of the stack has an exactly zero pivot.

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> fl.solve(np.array([[3.0, 1.0], [1.0, 2.0]]), np.array([9.0, 8.0]))
    array([2., 3.])
    """
    if type(a) is np.ndarray and type(b) is np.ndarray and a.dtype is b.dtype and a.ndim >= 2:
        # The fast path of the common call (see matmul): one system, or a stack of one length with
        # the same stack of right-hand-side blocks, float32/float64 of one dtype, under auto (with
        # LAPACK for single systems) or numba forced.
        fast = a.dtype in _validate.COMPILED_DTYPES and _registry.fast_path(backend)
        forced = fast == "numba"
        if forced or (fast and not AUTO_RULE["large_numba"]):
            sa, sb = a.shape, b.shape  # read once: each read of an ndarray's shape builds a tuple
            n = sa[-1]
            if len(sa) == 2 and sa[0] == n and 1 <= len(sb) <= 2 and sb[0] == n:
                if forced:
                    return _first_use.run_kernels(("solve", a.dtype.char), _solve_numba, a, b)
                return _solve_numpy(a, b)
            ops = ("solve", a.dtype.char)  # _first_use.kernel_key: the op's own kernels
            if len(sa) == 3 and sa[1] == n and len(sb) == 3 and sb[:2] == sa[:2]:
                if forced:
                    return _first_use.run_kernels(ops, _solve_numba, a, b)
                if _batched_wins(n, sa[0]):
                    key = (a.dtype.char, n, min(sb[2], LANE_RHS) or 1)  # step_key, inlined
                    if not STEPS.wins(key):
                        return STEPS.run_numpy(key, _solve_numpy, a, b)
                elif not _threads_win(n, sa[0]):
                    return _solve_numpy(a, b)
                # then the op's own kernels (as the full path's rule)
                return _first_use.kernels_or_numpy(ops, False, _solve_numba, _solve_numpy, a, b)
    return _validate.wrap_like(b, _LINSOLVE.run(backend, _prepare_linsolve(a, b)))


# --------------------------------------------------------------------------- impls


#: the dtypes LAPACK computes in (SciPy's lu_factor/lu_solve convert others first)
_LAPACK_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.complex64, np.complex128))


@functools.cache
def _lapack(name, dtype):
    """SciPy's LAPACK routine ``name`` for ``dtype`` (``get_lapack_funcs`` costs ~2 us a call)."""
    import scipy.linalg as sla

    return sla.get_lapack_funcs((name,), (np.empty(0, dtype),))[0]


def _getrf_info(info):
    """getrf's ``info < 0`` (an illegal argument) as SciPy's lu_factor raises it."""
    if info < 0:
        raise ValueError(f"illegal value in {-info}th argument of internal getrf (lu_factor)")


def _warn_singular(info):
    warnings.warn(
        f"Diagonal number {info} is exactly zero. Singular matrix.", _singular_warning_class(), stacklevel=4
    )


def _factor_stack(a, overwrite, factor):
    m, n = a.shape[-2:]
    inplace = overwrite and a.flags.c_contiguous and a.flags.writeable
    lu = a if inplace else np.array(a, order="C", copy=True)
    piv = np.empty((*a.shape[:-2], min(m, n)), dtype=np.int32)
    batch = math.prod(a.shape[:-2])
    lu3 = lu.reshape(batch, m, n)
    piv2 = piv.reshape(batch, min(m, n))
    first_bad = 0
    for t in range(lu3.shape[0]):
        p, info = factor(lu3[t])
        piv2[t] = p
        first_bad = first_bad or info
    if first_bad:
        _warn_singular(first_bad)
    return lu, piv


@_FACTOR.register("numba", needs_numba=True)
def _lu_factor_numba(a, overwrite):
    """Blocked right-looking LU; trailing update through the packed GEMM."""
    return _factor_stack(a, overwrite, _factor_numba)


@_FACTOR.register("loop")
def _lu_factor_loop(a, overwrite):
    """Textbook Doolittle with partial pivoting (pure Python)."""
    return _factor_stack(a, overwrite, _factor_loop)


@_FACTOR.register("numpy", any_dtype=True)
def _lu_factor_numpy(a, overwrite):
    """scipy.linalg.lu_factor (LAPACK getrf) per matrix; fastla's kernels without SciPy."""
    try:
        import scipy.linalg as sla
    except ImportError:
        return _factor_stack(np.asarray(a, dtype=np.result_type(a, np.float64)), overwrite, _factor_loop)
    a = np.asarray(a)
    m, n = a.shape[-2:]
    if a.size and a.dtype in _LAPACK_DTYPES:  # getrf as SciPy's lu_factor calls it, per matrix
        getrf = _lapack("getrf", a.dtype)
        if a.ndim == 2:
            lu, piv, info = getrf(a, overwrite_a=overwrite)
            _getrf_info(info)
            if info > 0:  # the first zero pivot, 1-based
                _warn_singular(info)
            return lu, piv
        stack = a.reshape(math.prod(a.shape[:-2]), m, n)
        lu = np.empty(stack.shape, a.dtype)
        piv = np.empty((stack.shape[0], min(m, n)), np.int32)
        for t in range(stack.shape[0]):  # SciPy's lu_factor per matrix cost ~4 us more each
            lu[t], piv[t], info = getrf(stack[t])
            _getrf_info(info)
        lu, piv = lu.reshape(a.shape), piv.reshape(*a.shape[:-2], min(m, n))
    else:
        with warnings.catch_warnings():  # re-warned below as fastla's LinAlgWarning, once per stack
            warnings.simplefilter("ignore", sla.LinAlgWarning)
            if a.ndim == 2:
                lu, piv = sla.lu_factor(a, overwrite_a=overwrite, check_finite=False)
            else:
                stack = a.reshape(math.prod(a.shape[:-2]), m, n)
                out = [sla.lu_factor(x, check_finite=False) for x in stack]
                dtype = out[0][0].dtype if out else np.result_type(a, np.float32)
                lu = np.array([o[0] for o in out], dtype=dtype).reshape(a.shape)
                piv = np.array([o[1] for o in out], dtype=np.int32).reshape(*a.shape[:-2], min(m, n))
    diag = np.diagonal(lu, axis1=-2, axis2=-1)
    zero = diag.reshape(-1, min(m, n)) == 0 if diag.size else np.zeros((0, 0), bool)
    if zero.any():  # getrf's info: the first zero pivot of the first singular matrix, 1-based
        _warn_singular(int(np.argmax(zero[zero.any(axis=1)][0])) + 1)
    return lu, piv


def _solve_stack(lu, piv, b, trans, vector, overwrite, solver):
    n = lu.shape[-1]
    inplace = overwrite and b.flags.c_contiguous and b.flags.writeable
    x = b if inplace else np.array(b, order="C", copy=True)
    batch = math.prod(lu.shape[:-2])
    x3 = x.reshape(batch, n, 1) if vector else x.reshape(batch, n, x.shape[-1])
    lu3 = lu.reshape(batch, n, n)
    piv2 = piv.reshape(batch, n)
    for t in range(lu3.shape[0]):
        solver(lu3[t], piv2[t].astype(np.int64), x3[t], trans)
    return x


@_SOLVE.register("numba", needs_numba=True)
def _lu_solve_numba(lu, piv, b, trans, vector, overwrite):
    """Compiled forward/back substitution (row operations vectorised over the right-hand sides)."""
    return _solve_stack(_intrinsics.kernel_input(lu), piv, b, trans, vector, overwrite, _getrs)


@_SOLVE.register("loop")
def _lu_solve_loop(lu, piv, b, trans, vector, overwrite):
    """Textbook substitution (pure Python)."""
    return _solve_stack(lu, piv, b, trans, vector, overwrite, _solve_loop)


@_SOLVE.register("numpy", any_dtype=True)
def _lu_solve_numpy(lu, piv, b, trans, vector, overwrite):
    """scipy.linalg.lu_solve (LAPACK getrs) per matrix; fastla's kernels without SciPy."""
    try:
        import scipy.linalg as sla
    except ImportError:
        return _solve_stack(lu, piv, b, trans, vector, overwrite, _solve_loop)
    if lu.ndim == 2 and b.size and lu.dtype in _LAPACK_DTYPES and b.dtype is lu.dtype:
        # one system: getrs as SciPy's lu_solve calls it, without its batching wrapper (~4 us)
        x, info = _lapack("getrs", lu.dtype)(lu, piv, b, trans=trans, overwrite_b=overwrite)
        if info:
            raise ValueError(f"illegal value in {-info}th argument of internal gesv|posv")
        return x
    if lu.ndim == 2:
        return sla.lu_solve((lu, piv), b, trans=trans, overwrite_b=overwrite, check_finite=False)
    n, batch = lu.shape[-1], math.prod(lu.shape[:-2])  # explicit sizes: -1 fails on an empty b
    b3 = b.reshape(batch, n) if vector else b.reshape(batch, n, b.shape[-1])
    xs = [
        sla.lu_solve((m, p), bb, trans=trans, check_finite=False)
        for m, p, bb in zip(lu.reshape(batch, n, n), piv.reshape(batch, n), b3, strict=True)
    ]
    return np.array(xs).reshape(b.shape)


def _broadcast_system(a, b):
    """(A stack, B stack (batch, n, k), result shape) for np.linalg.solve's NumPy 2 rules, the stack
    shape from :func:`linsolve_shape`."""
    n = a.shape[-1]
    stack, vector = linsolve_shape(a, b)
    bb = b[:, None] if vector else b
    batch = math.prod(stack)
    A = _as_stack(a, stack, batch, (n, n))
    B = _as_stack(bb, stack, batch, (n, bb.shape[-1]))
    out_shape = (*stack, n) if vector else (*stack, n, bb.shape[-1])
    return A, B, out_shape


def _solved_in(dtype):
    """The dtype that ``np.linalg.solve`` computes a ``dtype`` system in: double precision for single
    (NumPy's linalg converts float32 to float64 and rounds the solutions back;
    :data:`fastla._lane_solver.COMPUTE`), ``dtype`` itself otherwise."""
    return np.promote_types(dtype, COMPUTE)


def _as_stack(x, stack, batch, tail):
    """``x`` broadcast to ``(*stack, *tail)`` as ``(batch, *tail)``; only reshaped when its stack
    already is ``stack`` (NumPy's ``broadcast_to`` costs microseconds a call)."""
    full = x if x.shape[:-2] == stack else np.broadcast_to(x, (*stack, *tail))
    return full.reshape(batch, *tail)


@_LINSOLVE.register("numpy", any_dtype=True)
def _solve_numpy(a, b):
    """np.linalg.solve (LAPACK gesv)."""
    return np.linalg.solve(a, b)


def _singular():
    return np.linalg.LinAlgError("Singular matrix")


@_LINSOLVE.register("numba", needs_numba=True)
def _solve_numba(a, b):
    """Batched kernel (one system per SIMD lane) for n <= SMALL_N; LAPACK's gesv per system on
    every thread up to THREADED_MAX_N; blocked LU + substitution per system above."""
    A, B, out_shape = _broadcast_system(a, b)
    n = A.shape[-1]
    if n == 0 or A.shape[0] == 0:
        return np.array(B, order="C", copy=True).reshape(out_shape)
    if B.shape[2] == 0:  # no right-hand side: NumPy still factors each system and raises if singular
        _solve_systems(A, np.zeros((*A.shape[:2], 1), A.dtype))
        return np.array(B, order="C", copy=True).reshape(out_shape)
    return _solve_systems(A, B).reshape(out_shape)


def _solve_systems(A, B):
    """:func:`_solve_numba` on the stacks ``A`` (batch, n, n) and ``B`` (batch, n, k), n, k > 0:
    the solutions (batch, n, k); raises LinAlgError for a singular system."""
    n = A.shape[-1]
    if n <= SMALL_N:
        from fastla._jit import max_threads

        k, nl, slots = B.shape[2], lanes(n), _SPREAD * max_threads()
        x = np.empty(B.shape, dtype=B.dtype)
        w = np.empty((slots, nl, n, n), dtype=A.dtype)
        xs = np.empty((slots, nl, n, min(k, LANE_RHS)), dtype=A.dtype)
        s = np.empty((slots, nl), dtype=np.int64)
        singular = np.zeros(slots, dtype=np.int64)
        solve_stack(_intrinsics.kernel_input(A), _intrinsics.kernel_input(B), x, w, xs, s, singular)
        if singular.any():
            raise _singular()
        return x
    if n <= THREADED_MAX_N:
        return _lapack_across_threads(A, B)
    x = np.array(B, _solved_in(B.dtype), order="C", copy=True)
    for t in range(A.shape[0]):
        work = np.array(A[t], x.dtype, order="C", copy=True)
        piv, info = _factor_numba(work)
        if info:
            raise _singular()
        lu, piv64 = _intrinsics.readonly(work), piv.astype(np.int64)
        if x.shape[2] == 1:
            _getrs_one(lu, piv64, x[t].reshape(n))
        else:
            _getrs(lu, piv64, x[t], 0)
    return x.astype(B.dtype, copy=False)


_POOL = [None, None]  # (the process id it was made in, a ThreadPoolExecutor): see _pool


def _pool():
    """The worker threads of :func:`_lapack_across_threads`, made on first use (and again in a
    forked child, whose copy of the parent's pool has no threads)."""
    import os

    if _POOL[0] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, _jit.max_threads() - 1)
        _POOL[:] = [os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="fastla-lapack")]
    return _POOL[1]


def _lapack_across_threads(A, B):
    """The numpy impl (:func:`_solve_numpy`, ``np.linalg.solve``) on stacks (batch, n, n) and
    (batch, n, k), the stack split into one share per thread of the call
    (:func:`fastla._jit.threads_here`): this thread solves the first, worker threads the others
    (NumPy's loop releases the GIL). The same gesv call per system as NumPy's, so the same
    solutions, and its LinAlgError for a singular one. Measured (Zen 4, two
    threads, float64, ms, NumPy / split): 10000 32x32 77 / 40, 2000 48x48 33 / 17, 2000 64x64 55 /
    28, 500 96x96 32 / 16 (smaller stacks: see ``AUTO_RULE["threaded_min_work"]``, below which
    this is one call)."""
    batch = A.shape[0]
    threads = min(_jit.threads_here(), batch)
    if threads <= 1 or not _split_pays(A.shape[-1], batch):
        return _solve_numpy(A, B)
    x = np.empty(B.shape, np.result_type(A, B))
    cuts = [batch * i // threads for i in range(threads + 1)]

    def share(i):
        lo, hi = cuts[i], cuts[i + 1]
        x[lo:hi] = _solve_numpy(A[lo:hi], B[lo:hi])

    futures = [_pool().submit(share, i) for i in range(1, threads)]
    try:
        share(0)
    finally:  # every share done (or failed) before x is returned or the error raised
        for f in futures:
            f.exception()
    for f in futures:
        f.result()  # a worker's LinAlgError
    return x


@_LINSOLVE.register("loop")
def _solve_loop_impl(a, b):
    """Textbook LU + substitution per system (pure Python)."""
    A, B, out_shape = _broadcast_system(a, b)
    x = np.array(B, _solved_in(B.dtype), order="C", copy=True)
    for t in range(A.shape[0]):
        work = np.array(A[t], x.dtype, copy=True)
        piv, info = _factor_loop(work)
        if info:
            raise _singular()
        _solve_loop(work, piv, x[t], 0)
    return x.astype(B.dtype, copy=False).reshape(out_shape)
