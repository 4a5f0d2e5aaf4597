"""Softmax, log-softmax and cross-entropy: ``fastla.softmax``, ``fastla.log_softmax``,
``fastla.cross_entropy``.

Semantics follow ``scipy.special.softmax``/``log_softmax`` (same formulas, so the same results on
extremes: ``log_softmax([1000, 1]) == [0, -999]``; a row of all ``-inf`` gives NaN; a ``+inf`` entry
gives NaN where SciPy does; NaN propagates), with two choices of ours, as the ML convention asks:
the default ``axis`` is -1 (SciPy's is None: the whole array), and an empty array returns an empty
result (SciPy raises on a zero-size reduction).

``cross_entropy`` follows ``torch.nn.functional.cross_entropy`` with the class axis last (``axis``
selects it): integer class targets with ``ignore_index`` (default -100, excluded from the mean) or
probability targets of the logits' shape, ``label_smoothing``, ``reduction`` mean/sum/none. It never
materialises the probabilities: per row it needs the max, the log-sum-exp and the target term.
(``weight=`` is not supported.)

Compiled kernels (``numba``), parallel over rows:

* last axis, contiguous rows: pass 1 the row max, pass 2 ``e = exp(x - max)`` stored and summed,
  pass 3 scale by ``1/sum`` (log: ``x - max - log(sum)``). A row of up to ~10^5 floats stays in L1/L2
  between passes, so DRAM sees one read and one write — the two-pass scheme of Dukhan & Ablavatski;
  the exp is :func:`fastla._math.exp`, which vectorises.
* last axis, rows shorter than 32 elements: the same passes on blocks of rows, the block's exps in one
  loop over all its elements (a row alone would end in scalar exps); a kernel of its own.
* another axis of a C-contiguous array: the same passes over the reduced axis on chunks of the
  trailing axes, vectorised along the contiguous trailing dimension (no transpose copy).
* F-contiguous input is handled as the C-contiguous transpose; other layouts, ``axis=None`` and
  tuples of axes are first copied into rows.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import NamedTuple

import numpy as np

from fastla import _first_use, _intrinsics, _jit, _math, _registry, _validate
from fastla._intrinsics import kernel_input, prefetch_span, readonly, wide_vectors
from fastla._jit import jit, prange

__all__ = ["cross_entropy", "log_softmax", "softmax"]

# --------------------------------------------------------------------------- auto rule (data)
#
# Since the fast path cut the compiled call's Python-side overhead, the kernel beats SciPy's three
# NumPy passes at every size: on Zen 4 (2 threads, best of 7 x 2000 calls) 5.3-7.5 us against
# 11.9-13.8 us for softmax and 18.0-20.7 us for log_softmax from 1 element to 63 (2.2-3.7x), and
# cross_entropy 27-32 us against 34-39 us from 1 x 2 logits on. `python -m fastla tune` had read
# "64" on an Intel AVX-512 Xeon and a Zen 5: the smallest size its sweep then measured (4 rows of
# 16), where the kernel already won; the sweep starts at one row now and puts the threshold at 0
# when the kernel wins there (2048 was measured before the fast path, on Zen 4).
# Over a non-last axis of a C-contiguous array the middle-axis kernel measured 1.45x SciPy on 4096^2
# float32 (0.86x before its computed indices were made unsigned so that the loops vectorise).
AUTO_RULE = {"min_size": 0}

_CHUNK = 512  # trailing elements per task in the middle-axis kernel: vector-friendly, L1-sized
# Unsigned index where it is computed (c0 + c): a signed one gets Numba's negative-index check per
# access, which keeps LLVM from vectorising the loop (see _gemm_kernels' packing).
_U = _jit.U


# --------------------------------------------------------------------------- kernels
#
# Row sums: each chunk of _SUM_CHUNK elements is summed in the row's dtype (vectorised: 16 float32
# lanes, each lane's partial sum of a few elements), and the chunk sums in float64. A float32 row of
# 10^6 elements then sums to ~1e-7 relative error (SciPy's pairwise float32 sum: 1.2e-6), where one
# float32 accumulator drifted to 2.8e-5. Accumulating every element in float64 instead would convert
# each float32 lane to float64 and halve the vector width of the exp loop.
_SUM_CHUNK = 512


# The last pass (softmax's scale by 1 / sum, log-softmax's ``(x - max) - log(sum)``, SciPy's formula)
# runs in the row's dtype: the float64 sum's reciprocal or log is rounded to it once per row. With
# the float64 factor a float32 row's last pass converted every element to float64 and back, at half
# the vector width: measured on Zen 4 (out=, min of 10, two runs each): 4096^2 float32 two threads
# 8.54-8.84 -> 7.58-7.68 ms, one thread 11.98-16.92 -> 9.98-14.65; 64 x 262144 two threads
# 5.96-6.07 -> 5.31-5.36, one thread 10.19-10.22 -> 8.84-8.89; results within 2.4e-7 relative of the
# float64 factor's. A per-chunk-max ("online") scheme for long rows was measured against these two
# passes (one pass computing each L1-sized chunk's max, exps and sum, the exps relative to the
# chunk's max, then one pass scaling each chunk by exp(chunk max - row max) / sum: one read of the
# row fewer). Zen 4, out=, float32, both scaling in float32, chunks of 1024 / 2048, min ms: two
# threads 64 x 262144 5.08-5.21 against 4.71-5.15, 16 x 2^20 5.14-5.49 against 4.91, 2 x 2^23
# 5.46-5.97 against 5.61, 4096^2 5.96-6.06 against 5.29-5.52; one thread slower at every shape
# (9.66-11.97 against 8.94-11.64): the exp, not the extra read from L2/L3, bounds a row. Not kept.

# Prefetching the next row: the row kernels stream a large array from DRAM a row at a time, and a row
# (4096 float32: 16 KiB) is read by pass 1 (the max) before any exp is computed, so each row's DRAM
# reads waited, then its exps ran with the memory idle. Passes over a row now prefetch the next row,
# a chunk's cache lines per chunk of exps. Measured on Zen 5 (2 threads, 4096^2 float32;
# `bench --against`, 9 interleaved rounds): median time 0.89x with out=, 0.90x allocating, 0.83x on
# one thread. Prefetching two or three rows ahead measured the same as one. Non-temporal stores of
# the result (no read for ownership of ``out``, the exps kept in a per-thread row) gave no
# consistent gain (speed over np.copyto's, four interleaved rounds a run): alone 0.76-0.80x against
# 0.68-0.75x in one run and 0.62-0.91x against 0.74-0.98x in another; on top of the prefetch
# 0.79-1.04x against 0.90-1.09x.


@jit(inline="always")
def _exp_sum(row, shift, out, store, zero, ahead):
    """``sum(exp(row - shift))`` in float64 by chunks (see _SUM_CHUNK); with ``store``, also
    ``out[j] = exp(row[j] - shift)``. ``zero`` is 0 in the row's dtype. ``ahead`` (1-D, contiguous;
    None for none) is prefetched meanwhile, as much of it per chunk as the chunk's own length."""
    n = row.size
    total = 0.0
    for j0 in range(0, n, _SUM_CHUNK):
        prefetch_span(ahead, j0, j0 + _SUM_CHUNK)
        part = zero
        for j in range(_U(j0), _U(min(n, j0 + _SUM_CHUNK))):  # unsigned: see _U
            e = _math.exp(row[j] - shift)
            if store:
                out[j] = e
            part += e
        total += part
    return total


@jit(inline="always")
def _row_sum(row, zero):
    """``sum(row)`` in float64 by chunks, as :func:`_exp_sum`."""
    n = row.size
    total = 0.0
    for j0 in range(0, n, _SUM_CHUNK):
        part = zero
        for j in range(_U(j0), _U(min(n, j0 + _SUM_CHUNK))):
            part += row[j]
        total += part
    return total


@jit(parallel=True)
def _softmax_rows(x, out, log, zero):
    """Softmax (or log-softmax) along the last axis of C-contiguous 2-D ``x`` (n >= 1) into ``out``.

    ``zero`` is 0 in x's dtype: float32 rows keep float32 maxima and exps (16 lanes on AVX-512)
    instead of being promoted by a float64 literal; the sums accumulate in float64 (by chunks).
    """
    last = x.shape[0] - 1
    for r in prange(x.shape[0]):
        wide_vectors()
        softmax_row(x[r], out[r], log, zero, x[min(r + 1, last)])


#: Rows shorter than this many elements go to :func:`_short_task` instead.
_SHORT_ROW = 32

#: Elements below which the task kernels (short rows, the middle axis, cross-entropy with class
#: indices) run on one thread: a parallel launch costs ~2 us here. Zen 4, float64, backend='numba',
#: us on one thread / two: cross-entropy 4 x 10 8.8 / 13.3, 64 x 10 11.1 / 13.3, 256 x 10 18.5 /
#: 17.3, 64 x 100 15.1 / 15.5, 16 x 1000 21.1 / 18.4, 1024 x 10 47.9 / 32.6; softmax's short rows
#: 100 x 10 8.3 / 10.1, 100 x 20 9.2 / 11.2, 200 x 10 9.7 / 11.5, 400 x 10 13.0 / 13.4, 1000 x 10
#: 22.4 / 17.6. (The long rows' ``prange`` loop launches its threads whatever the size: a serial
#: twin would be a kernel more to compile, for ~1 us: 4 x 64 7.3 / 8.2, 64 x 64 11.9 / 12.1.)
SERIAL_ELEMENTS = 2**12

#: elements per block of short rows (a few KiB: L1)
_SHORT_BLOCK = 512


# The short rows and the middle axis run as tasks of ``fastla._intrinsics.parallel_tasks`` through
# their entry addresses (``fastla._jit.Entry``), not as ``prange`` loops: a ``prange`` loop around
# their code compiled 1.4-1.9 s longer than the same loop serial (Zen 5, float64, fresh process:
# short rows 2.91 s against 1.08, the middle axis 3.56 against 1.67), and softmax's cold first call
# (short rows) went 1.86-2.87 -> 1.11-1.14 s. Each is compiled once per dtype with a small driver
# (``_run_*``) that runs it through its address, contiguous runs of tasks per thread as a
# ``prange``'s static schedule split them; a row is computed the same way whichever task and thread
# runs it. The long rows and cross-entropy with probability targets stay ``prange`` loops: as tasks
# (one per thread, or of 4096 elements) they measured 7-15% slower (200 000 rows of 40 float32,
# 100 000 of 100 float64); cross-entropy with class indices runs as tasks since its loop takes a
# view of a row where it uses it (see _ce_index_task), as fast as its ``prange`` loop.


@jit(python_wrapper=False)
def _short_task(x, out, log, zero, per, task):
    """:func:`_softmax_rows` for rows shorter than ``_SHORT_ROW``: rows ``r0 = task * per`` to ``r1 =
    (task + 1) * per`` (fewer at the end) of C-contiguous 2-D ``x`` into ``out``, the results of
    :func:`softmax_row` with the block's exps in one contiguous loop over all of its elements. A
    kernel of its own, not a branch of ``_softmax_rows``: both paths in one kernel doubled the
    compile time of its first call (3.5-5 s to 7 s); the block's loops are in the task itself (a
    function of their own linked into it, 0.9 s of the task's 1.4 s first compile, against 0.55 s
    for the whole task now).

    A short row alone ends in a scalar remainder of exps (a row of 10 float64: one vector of 8, then
    two scalar exps, each a chain of ~15 dependent multiply-adds as long as the vector's); here only
    the block's last vector has a remainder. The row maxima are plain compares (a NaN reaches the
    row's result through its sum, as in softmax_row).

    The softmax writes ``x - max`` into ``out`` and takes the block's exps in place there, with no
    scratch block (the log-softmax reads ``x`` again at the end, so its exps go to one). Measured on
    Zen 4 against the exps into a scratch block then scaled into ``out``, two threads, 100 000 rows
    of 3 / 10 / 20 (best of 3 x 150 runs, processes interleaved, two such sets): float64 1.07-1.14x
    / 1.08-1.12x / 1.10-1.12x, float32 1.07-1.13x / 1.00-1.09x / 1.03-1.04x."""
    wide_vectors()
    rows, n = x.shape
    xf, of = x.reshape(rows * n), out.reshape(rows * n)
    r0 = task * per
    r1 = min(rows, r0 + per)
    nu = _U(n)
    e0 = _U(r0) * nu
    cnt = _U(r1 - r0)
    # log: the exps into a scratch block (out keeps nothing until the end); else out = x - max, row
    # by row (in-place safe: a row is read before it is written), then its exps in place
    t = _intrinsics.empty(cnt * nu if log else _U(0), xf.dtype)
    shifts = _intrinsics.empty(cnt if log else _U(0), xf.dtype)
    for r in range(cnt):
        b = e0 + r * nu
        m = xf[b]
        for j in range(_U(1), nu):
            v = xf[b + j]
            m = v if v > m else m
        if log:
            m = m if np.isfinite(m) else zero
            shifts[r] = m
            for j in range(nu):
                t[r * nu + j] = m
        else:
            for j in range(b, b + nu):
                of[j] = xf[j] - m
    if log:
        for j in range(cnt * nu):
            t[j] = _math.exp(xf[e0 + j] - t[j])
        totals = _intrinsics.empty(cnt, np.float64)
        for r in range(cnt):
            part = zero
            for j in range(nu):
                part += t[r * nu + j]
            totals[r] = np.float64(part)
        for r in range(cnt):  # one vectorised loop of fastla's log, not a libm call per row
            totals[r] = _math.log(totals[r])
        for r in range(cnt):
            b = e0 + r * nu
            mm, lse = shifts[r], xf.dtype.type(totals[r])
            for j in range(nu):
                of[b + j] = (xf[b + j] - mm) - lse
    else:
        for j in range(e0, e0 + cnt * nu):
            of[j] = _math.exp(of[j])
        for r in range(cnt):
            b = e0 + r * nu
            part = zero
            for j in range(b, b + nu):
                part += of[j]
            inv = xf.dtype.type(1.0 / np.float64(part))
            for j in range(b, b + nu):
                of[j] *= inv


@jit
def _run_short(x, out, log, zero, per, at, threads):
    """:func:`_short_task` for every block of ``per`` rows on ``threads`` threads, through its
    address ``at`` (None with the JIT off); the views borrowed (see ``_lane_solver._drive``)."""
    tasks = (x.shape[0] + per - 1) // per
    bw = _intrinsics.borrow
    _intrinsics.parallel_tasks(at, _short_task, (bw(x), bw(out), log, zero, per), tasks, threads, True)


def _short_examples(dtype):
    """Example arguments of :func:`_short_task` for ``dtype``, typed as :func:`_rows` passes them."""
    return (readonly(np.empty((1, 1), dtype)), np.empty((1, 1), dtype), False, dtype.type(0), 0, 0)


SHORT = _jit.Entry(_short_task, _short_examples)


def _rows(x, out, log):
    """Softmax (or log-softmax) along the last axis of C-contiguous 2-D ``x`` (n >= 1) into ``out``
    (C-contiguous, x's dtype): :func:`_softmax_rows`, or for rows shorter than ``_SHORT_ROW`` the
    short rows' tasks in blocks of ``_SHORT_BLOCK`` elements (fixed: a block's exps are one loop,
    whatever the thread count)."""
    n = x.shape[1]
    if n >= _SHORT_ROW:
        _softmax_rows(readonly(x), out, log, x.dtype.type(0))
        return
    per = max(1, _SHORT_BLOCK // n)
    threads = _jit.threads_for(x.size, SERIAL_ELEMENTS)
    _run_short(readonly(x), out, log, x.dtype.type(0), per, SHORT.address(x.dtype), threads)


@jit(inline="always")
def softmax_row(x, out, log, zero, ahead):
    """Softmax (or log-softmax) of the contiguous 1-D ``x`` (n >= 1) into ``out`` (in-place safe;
    also ``fastla.kernels.softmax``), prefetching ``ahead`` (see :func:`_exp_sum`)."""
    m = _math.row_max(x)
    if log:
        mm = m if np.isfinite(m) else zero
        lse = x.dtype.type(np.log(_exp_sum(x, mm, out, False, zero, ahead)))  # row dtype: see above
        for j in range(_U(x.size)):
            out[j] = (x[j] - mm) - lse
    else:
        inv = x.dtype.type(1.0 / _exp_sum(x, m, out, True, zero, ahead))
        for j in range(_U(x.size)):
            out[j] *= inv


@jit(inline="always")
def _mid_blocks(post, chunk):
    """Blocks of the leading axis one middle-axis task takes: as many as fill ``chunk`` trailing
    elements where the trailing axis is shorter (a task per block paid its set-up, three scratch
    allocations, per ``post`` elements: 49 x 1 x 37 float64 over axis 1, one thread, 16.0 -> 10.4
    us, SciPy 10.7; Zen 4)."""
    return max(1, chunk // post)


@jit(python_wrapper=False)
def _mid_task(x, out, log, chunk, task):
    """Softmax along axis 1 of C-contiguous 3-D ``x`` (pre, n, post), vectorised along ``post``:
    task ``task`` is one ``chunk`` of ``post`` in one group of :func:`_mid_blocks` consecutive
    ``pre`` blocks."""
    wide_vectors()
    n, post = x.shape[1], x.shape[2]
    nchunks = (post + chunk - 1) // chunk
    blocks = _mid_blocks(post, chunk)
    g = task // nchunks
    c0 = (task % nchunks) * chunk
    w = min(chunk, post - c0)
    # (empty buffers filled here: np.full and np.zeros compile implementations of their own)
    m = _intrinsics.empty(w, x.dtype)
    s = _intrinsics.empty(w, np.float64)
    f = _intrinsics.empty(w, x.dtype)  # the per-column factor, in the row's dtype (see softmax_row)
    for p in range(g * blocks, min(x.shape[0], (g + 1) * blocks)):
        for c in range(w):
            m[c] = -np.inf
            s[c] = 0.0
        for i in range(n):
            for c in range(w):
                v = x[p, i, _U(c0 + c)]
                m[c] = v if v > m[c] else m[c]
        if log:
            for c in range(w):
                m[c] = m[c] if np.isfinite(m[c]) else 0.0
            for i in range(n):
                for c in range(w):
                    s[c] += _math.exp(x[p, i, _U(c0 + c)] - m[c])
            for c in range(w):  # vectorised: fastla's log, not a libm call per column
                f[c] = _math.log(s[c])
            for i in range(n):
                for c in range(w):
                    out[p, i, _U(c0 + c)] = (x[p, i, _U(c0 + c)] - m[c]) - f[c]
        else:
            for i in range(n):
                for c in range(w):
                    e = _math.exp(x[p, i, _U(c0 + c)] - m[c])
                    out[p, i, _U(c0 + c)] = e
                    s[c] += e
            for c in range(w):
                f[c] = 1.0 / s[c]
            for i in range(n):
                for c in range(w):
                    out[p, i, _U(c0 + c)] *= f[c]


@jit
def _run_mid(x, out, log, chunk, at, threads):
    """:func:`_mid_task` for every (group of blocks, chunk) on ``threads`` threads, through its
    address ``at`` (None with the JIT off)."""
    blocks = _mid_blocks(x.shape[2], chunk)
    tasks = ((x.shape[0] + blocks - 1) // blocks) * ((x.shape[2] + chunk - 1) // chunk)
    bw = _intrinsics.borrow
    _intrinsics.parallel_tasks(at, _mid_task, (bw(x), bw(out), log, chunk), tasks, threads, True)


def _mid_examples(dtype):
    """Example arguments of :func:`_mid_task` for ``dtype``, typed as :func:`_numba_impl` passes them."""
    return (readonly(np.empty((1, 1, 1), dtype)), np.empty((1, 1, 1), dtype), False, 0, 0)


MID = _jit.Entry(_mid_task, _mid_examples)


@jit(fastmath=_jit.FASTMATH - {"reassoc"})
def _smoothed(nll, uniform, smoothing):
    """``(1 - s) * nll + s * uniform``, the label-smoothed loss of one row, compiled without
    ``reassoc``: with it LLVM rewrites the blend as ``nll + s * (uniform - nll)``, NaN where both are
    inf (a -inf logit in a smoothed row; the other impls give inf). Its own function, so the row
    sums around it keep the flag."""
    return (1.0 - smoothing) * nll + smoothing * uniform


@jit(python_wrapper=False)
def _ce_index_task(x, target, smoothing, ignore_index, weight, wsum, xw, loss, zero, counts, per, task):
    """Per-row cross-entropy with class indices, rows ``task * per`` to ``(task + 1) * per`` (fewer
    at the end): ``lse - x[t]`` (+ label smoothing). ``weight``: the class weights (PyTorch's
    ``weight``: ``w[t] (lse - x[t])``, smoothed by ``sum_c w_c (lse - x_c) / C`` = ``(wsum lse -
    xw[r]) / C`` with ``wsum = sum_c w_c``, ``xw = x @ w`` (BLAS, by the caller: a row loop of its
    own here compiled 0.3 s more)), or empty for none.

    ``counts[task]`` gets ``(kept, bad)``: the task's entries counted (not ignored, in range: a
    mean's divisor without weights) and those whose index is outside ``[0, C)`` (loss 0 here; the
    caller raises), so that a call needs no NumPy passes over the targets beforehand (4 x 10
    float64: 18 -> ~10 us a call). Each use takes its own view ``x[r]``: one view kept in a local
    across the row's branches kept its reference-count updates (two runtime calls a row, which
    Numba's pruning removes from views used where they are made), and such a loop ran 100 000 rows
    of 10 float64 in 3.0 ms against 2.0 for the ``prange`` loop this replaces (1.9 now; Zen 4)."""
    wide_vectors()
    rows, n = x.shape
    weighted = weight.size != 0
    kept = 0
    bad = 0
    last = _U(rows - 1)
    for r in range(_U(task * per), _U(min(rows, (task + 1) * per))):
        t = target[r]
        if t == ignore_index or t < 0 or t >= n:
            loss[r] = 0.0
            bad += 0 if t == ignore_index else 1
            continue
        kept += 1
        m = _math.row_max(x[r])
        mm = m if np.isfinite(m) else zero
        lse = mm + np.log(_exp_sum(x[r], mm, x[r], False, zero, x[min(r + _U(1), last)]))
        nll = lse - x[r, t]
        if weighted:
            nll = nll * weight[t]
        if smoothing != 0.0:
            if weighted:
                uniform = (wsum * lse - xw[r]) / n
            else:
                uniform = lse - _row_sum(x[r], zero) / n
            nll = _smoothed(nll, uniform, smoothing)
        loss[r] = nll
    counts[task, 0] = kept
    counts[task, 1] = bad


@jit
def _ce_index_rows(x, target, smoothing, ignore_index, weight, wsum, xw, loss, zero, at, threads):
    """:func:`_ce_index_task` over every row on ``threads`` threads (a contiguous run of rows per
    thread, as a ``prange``'s static schedule split them: the ``prange`` loop this was compiled into
    three libraries of its own, ~0.6 s of cross-entropy's cold first call), through its address
    ``at``; returns the ``(kept, bad)`` counts summed over the tasks."""
    rows = x.shape[0]
    per = (rows + threads - 1) // threads
    tasks = (rows + per - 1) // per
    counts = _intrinsics.empty((tasks, 2), np.int64)
    # borrowed views (see _lane_solver._drive): with counted ones, every row's view of ``x`` was an
    # atomic reference-count update on the array both threads read (two threads ran slower than one)
    bw = _intrinsics.borrow
    rows_in, rows_out = (bw(x), bw(target), smoothing, ignore_index, bw(weight), wsum, bw(xw)), bw(loss)
    args = (*rows_in, rows_out, zero, bw(counts), per)
    _intrinsics.parallel_tasks(at, _ce_index_task, args, tasks, threads)
    kept = 0
    bad = 0
    for task in range(tasks):
        kept += counts[task, 0]
        bad += counts[task, 1]
    return kept, bad


def _ce_index_examples(dtype):
    """Example arguments of :func:`_ce_index_task` for ``dtype``, typed as :func:`_ce_numba` passes
    them."""
    flat = readonly(np.empty(1, dtype))
    counts = np.empty((1, 2), np.int64)
    return (
        readonly(np.empty((1, 1), dtype)),
        readonly(np.empty(1, np.int64)),
        0.0,
        0,
        flat,
        0.0,
        flat,
        np.empty(1, dtype),
        dtype.type(0),
        counts,
        1,
        0,
    )


CE_INDEX = _jit.Entry(_ce_index_task, _ce_index_examples)


@jit(parallel=True)
def _ce_prob_rows(x, target, smoothing, weight, loss, zero):
    """Per-row cross-entropy with probability targets: ``-sum_c w_c t'_c (x_c - lse)``; ``weight``
    empty without class weights. Two loops, not one: the weights folded into a target copy by the
    caller cost a pass over an n x C array (8192 x 1000 float32 weighted 12.9-15.0 ms against 3.3-4.6
    unweighted; torch 8.3-24.5), and one loop multiplying by weights of 1 slowed the unweighted
    call 2.9-3.6 -> 3.7-4.8 ms (three interleaved runs). Only probability targets compile this
    kernel (an op's first call, index targets, does not)."""
    rows, n = x.shape
    weighted = weight.size != 0
    for r in prange(rows):
        wide_vectors()
        m = _math.row_max(x[r])
        mm = m if np.isfinite(m) else zero
        lse = mm + np.log(_exp_sum(x[r], mm, x[r], False, zero, x[min(r + 1, rows - 1)]))
        acc = 0.0
        if weighted:
            for j in range(_U(n)):
                t = ((1.0 - smoothing) * target[r, j] + smoothing / n) * weight[j]
                acc += t * (lse - x[r, j])
        else:
            for j in range(_U(n)):
                t = (1.0 - smoothing) * target[r, j] + smoothing / n
                acc += t * (lse - x[r, j])
        loss[r] = acc


# --------------------------------------------------------------------------- validation


class SoftmaxArgs(NamedTuple):
    """The validated arguments of ``softmax`` / ``log_softmax``'s implementations."""

    x: object  # native-order of the compute dtype (as given where not compiled)
    axes: object  # normalised axes tuple (the caller's axis where not compiled)
    out: object
    log: bool  # log_softmax


def _prepare(x, axis, out, log):
    name = "log_softmax" if log else "softmax"
    x_in = x
    x = np.asanyarray(x)
    axes = _validate.normalize_axes(axis, x.ndim) if x.ndim else ()
    dtype, why = _validate.compute_dtype((x,), ints_to_float64=True)
    if why is None and type(x_in) is not np.ndarray and _validate.is_subclass_input(x_in):
        why = f"input is an ndarray subclass ({type(x_in).__name__})"
    if why is None and x.ndim == 0:
        why = "0-d input"
    if why is None and x.dtype.kind == "b":
        why = "bool input: SciPy's rules apply (it rejects bool: there is no boolean subtract)"
    if why is None:
        _validate.check_out(out, x.shape, dtype, name)
        args = SoftmaxArgs(_validate.native(x, dtype), axes, out, log)
    else:
        args = SoftmaxArgs(x_in, axis, out, log)
    facts = {"size": x.size, "name": name}
    return _registry.Prepared(args, compiled=why, facts=facts)


def _rule(prep):
    size = prep.facts["size"]
    if not _compiled_wins(size):
        return "numpy", lambda: f"{size} elements: too small for the compiled kernel to pay off"
    return "numba", lambda: f"{size} elements: fused compiled passes beat SciPy's NumPy passes"


def _compiled_wins(size):
    """The auto rule's size test (used by :func:`_rule` and by the fast path)."""
    return size >= AUTO_RULE["min_size"]


def _fast(x, axis, out, backend, log):
    """The fast path of the common call (see matmul): a plain float32/float64 array of at least one
    dimension, one axis given as an int in range, no ``out=``, under auto or numba forced; None
    when the call needs the full path. The last axis by either name (``-1`` or ``x.ndim - 1``: a
    1-D row's ``axis=0`` took the full path, 14.6 us against 7.5 for a 118-element float64 row,
    SciPy 7.9) and the other axes: their full path cost ~5 us more (Zen 4, float64, forced numba,
    us against SciPy's: 3 x 3 over axis 0 of its F-ordered copy 10.3 / 8.0, 1 x 134 over axis 0 9.2
    / 7.3, 8 x 16 over axis 0 9.1 / 8.4)."""
    fast = (
        out is None
        and type(x) is np.ndarray
        and type(axis) is int
        and -x.ndim <= axis < x.ndim
        and x.dtype in _validate.COMPILED_DTYPES
        and _registry.fast_path(backend)
    )
    if fast:
        ops = ("log_softmax" if log else "softmax", x.dtype.char)  # _first_use.kernel_key
        if fast == "numba" or _compiled_wins(x.size):
            if fast == "numba" or _first_use.KERNELS.wins(ops):
                return _first_use.run_kernels(ops, _numba_impl, x, (axis % x.ndim,), None, log)
            return _first_use.KERNELS.run_numpy(ops, _numpy_impl, x, axis, None, log)
        return _numpy_impl(x, axis, None, log)
    return None


_SOFTMAX = _registry.operation("softmax", lambda x, axis=-1, out=None: _prepare(x, axis, out, False), _rule)
_LOG_SOFTMAX = _registry.operation(
    "log_softmax", lambda x, axis=-1, out=None: _prepare(x, axis, out, True), _rule
)


@_registry.public(_SOFTMAX)
def softmax(x, axis=-1, *, out=None, backend=None):
    """Softmax along ``axis``: ``exp(x - max) / sum(exp(x - max))``, like :func:`scipy.special.softmax`.

    Parameters
    ----------
    x : array_like
    axis : int, tuple of ints or None, default -1
        Axis or axes to normalise over; None means the whole array.
    out : ndarray, optional
        Where to write the result (shape of ``x``, a dtype the result casts to).
    backend : {None, "auto", "numba", "numpy", "loop"}, optional

    Returns
    -------
    ndarray
        Same shape as ``x``; float32 for float32 input, float64 for integer input.

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> np.round(fl.softmax(np.array([2.0, 1.0, 0.5])), 4)
    array([0.6285, 0.2312, 0.1402])
    """
    res = _fast(x, axis, out, backend, False)
    return _SOFTMAX.run(backend, _prepare(x, axis, out, False)) if res is None else res


@_registry.public(_LOG_SOFTMAX)
def log_softmax(x, axis=-1, *, out=None, backend=None):
    """Log of the softmax along ``axis``, computed stably, like :func:`scipy.special.log_softmax`.

    Parameters are those of :func:`softmax`.

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> fl.log_softmax(np.array([1000.0, 1.0]))
    array([   0., -999.])
    """
    res = _fast(x, axis, out, backend, True)
    return _LOG_SOFTMAX.run(backend, _prepare(x, axis, out, True)) if res is None else res


# --------------------------------------------------------------------------- impls


@functools.cache
def _scipy_or_seed(log):
    try:
        import scipy.special as sps

        return sps.log_softmax if log else sps.softmax
    except ImportError:  # the seed's formula, with SciPy's handling of a non-finite max
        return _numpy_log_softmax if log else _numpy_softmax


def _numpy_softmax(x, axis=None):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _numpy_log_softmax(x, axis=None):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    tmp = x - m
    with np.errstate(divide="ignore"):
        return tmp - np.log(np.sum(np.exp(tmp), axis=axis, keepdims=True))


def _finish(res, out):
    if out is None:
        return res
    np.copyto(out, res, casting="same_kind")
    return out


def _numpy_impl(x, axes, out, log):
    """scipy.special.softmax / log_softmax (NumPy passes); the seed's formula without SciPy."""
    x = np.asanyarray(x)
    if x.size == 0 and x.dtype.kind in "iufc":  # bool, object: SciPy's error, empty or not (README)
        res = np.empty(x.shape, dtype=np.result_type(x.dtype, np.float16))
    else:
        res = _scipy_or_seed(log)(x, axis=axes)
    return _finish(res, out)


_SOFTMAX.register("numpy", any_dtype=True)(_numpy_impl)
_LOG_SOFTMAX.register("numpy", any_dtype=True)(_numpy_impl)


def _to_rows(x, axes):
    """Move ``axes`` last and flatten to (rows, n) (a copy unless already so)."""
    keep = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, keep + list(axes))
    return np.ascontiguousarray(moved).reshape(-1, math.prod(x.shape[a] for a in axes)), moved.shape, keep


def _from_rows(res2, moved_shape, keep, axes):
    """Undo :func:`_to_rows`."""
    inv = np.argsort(keep + list(axes))
    return np.transpose(res2.reshape(moved_shape), inv)


def _loop_rows(x2, out2, log):
    for r in range(x2.shape[0]):
        row = [float(v) for v in x2[r]]
        m = max(row, key=lambda v: -math.inf if v != v else v)
        if log:
            mm = m if math.isfinite(m) else 0.0
            tmp = [v - mm for v in row]
            lse = _py_log(sum(_py_exp(d) for d in tmp))
            for j, d in enumerate(tmp):
                out2[r, j] = d - lse
        else:
            es = [_py_exp(v - m) for v in row]
            total = sum(es)
            for j, e in enumerate(es):
                out2[r, j] = e / total


def _py_exp(d):
    if d != d:
        return math.nan
    return math.exp(d) if d < 710 else math.inf


def _py_log(total):
    """``log(total)`` of a sum of exps as NumPy gives it: -inf for 0 (every term -inf), NaN for NaN."""
    return math.log(total) if total > 0 else (-math.inf if total == 0 else total)


def _loop_impl(x, axes, out, log):
    """Textbook three passes in pure Python (max, exp and sum, divide), row by row."""
    if x.size == 0:
        return _finish(np.empty(x.shape, dtype=x.dtype), out)
    x2, moved_shape, keep = _to_rows(x, axes)
    res2 = np.empty_like(x2)
    _loop_rows(x2, res2, log)
    return _finish(_from_rows(res2, moved_shape, keep, axes), out)


_SOFTMAX.register("loop")(_loop_impl)
_LOG_SOFTMAX.register("loop")(_loop_impl)


def _numba_impl(x, axes, out, log):
    """Fused compiled passes, parallel over rows (or over chunks of a middle axis)."""
    if x.size == 0:
        return _finish(np.empty(x.shape, dtype=x.dtype), out)
    if not x.flags.c_contiguous and x.flags.f_contiguous:
        # The F-contiguous array is the C-contiguous transpose: reduce over the mirrored axes.
        res = _numba_impl(x.T, tuple(sorted(x.ndim - 1 - a for a in axes)), None, log).T
        return _finish(res, out)
    if len(axes) == 1:
        if not x.flags.c_contiguous:
            # strided: a C-contiguous copy is what the row and middle-axis kernels take, without
            # _to_rows' transposes and reshapes and _from_rows' (Zen 4, float64: a strided
            # 99-element row 22.8 -> 12 us, SciPy 8.5-9.3; 2 x 147 over axis 0, every other element
            # of a row, 13.2 -> 6.5 us, SciPy 9.0)
            x = np.ascontiguousarray(x)
        ax = axes[0]
        pre = math.prod(x.shape[:ax])
        n = x.shape[ax]
        post = math.prod(x.shape[ax + 1 :])
        direct = out is not None and out.dtype == x.dtype and out.flags.c_contiguous
        direct = direct and _validate.writes_apart(out, x, same_ok=True)  # else apart, as NumPy's ufuncs
        res = out if direct else np.empty(x.shape, dtype=x.dtype)
        if post == 1:
            _rows(x.reshape(pre, n), res.reshape(pre, n), log)
        else:
            x3, at = readonly(x.reshape(pre, n, post)), MID.address(x.dtype)
            threads = _jit.threads_for(x.size, SERIAL_ELEMENTS)
            _run_mid(x3, res.reshape(pre, n, post), log, _CHUNK, at, threads)
        return res if direct else _finish(res, out)
    x2, moved_shape, keep = _to_rows(x, axes)
    x2 = np.ascontiguousarray(x2)
    res2 = np.empty_like(x2)
    _rows(x2, res2, log)
    return _finish(_from_rows(res2, moved_shape, keep, axes), out)


_SOFTMAX.register("numba", needs_numba=True)(_numba_impl)
_LOG_SOFTMAX.register("numba", needs_numba=True)(_numba_impl)


# --------------------------------------------------------------------------- cross-entropy

_REDUCTIONS = ("mean", "sum", "none")


def check_ce(x, t, axis, reduction, label_smoothing, ignore_index):
    """``(class axis, target kind, label_smoothing, ignore_index)`` after the checks that need only
    shapes and dtypes (``x``, ``t`` need ``ndim``, ``shape`` and ``dtype``)."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if x.dtype.kind not in "iuf":
        raise TypeError(f"cross_entropy: logits must be real numbers (integer or float), got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("cross_entropy: logits must have at least 1 dimension (the class axis)")
    ax = _validate.normalize_axis(axis, x.ndim)
    if t.dtype.kind in "iu":
        if t.shape != x.shape[:ax] + x.shape[ax + 1 :]:
            raise ValueError(
                f"cross_entropy: class-index target of shape {t.shape} must have the logits' shape "
                f"{x.shape} without the class axis {ax}"
            )
        return ax, "index", label_smoothing, operator.index(ignore_index)
    if t.dtype.kind == "f":
        if t.shape != x.shape:
            raise ValueError(
                f"cross_entropy: probability target of shape {t.shape} must have the logits' shape {x.shape}"
            )
        if operator.index(ignore_index) >= 0:  # a class to ignore means nothing to probabilities
            raise ValueError(
                f"cross_entropy: ignore_index={ignore_index} is not supported for probability targets "
                "(as torch: only class-index targets skip a class)"
            )
        return ax, "prob", label_smoothing, ignore_index
    raise TypeError(f"cross_entropy: target must be integer class indices or floats, got {t.dtype}")


class CrossEntropyArgs(NamedTuple):
    """The validated arguments of ``cross_entropy``'s implementations."""

    x: object  # the logits, the class axis moved last
    t: object  # class indices, or probabilities with the class axis last
    kind: str  # "index" or "prob"
    reduction: str
    smoothing: float
    ignore_index: int
    weight: object = None  # (C,) class weights in the compute dtype, or None


def check_weight(weight, n_classes):
    """PyTorch's ``weight``: a 1-D array of one real weight per class (or None)."""
    if weight is None:
        return None
    w = np.asarray(weight)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"cross_entropy: weight must hold real numbers, got dtype {w.dtype}")
    if w.shape != (n_classes,):
        raise ValueError(
            f"cross_entropy: weight must have one entry per class, shape ({n_classes},), got {w.shape}"
        )
    return w


def _prepare_ce(
    logits, target, weight=None, axis=-1, reduction="mean", label_smoothing=0.0, ignore_index=-100
):
    x = np.asanyarray(logits)
    t = np.asanyarray(target)
    ax, kind, label_smoothing, ignore_index = check_ce(x, t, axis, reduction, label_smoothing, ignore_index)
    n_classes = x.shape[ax]
    w = check_weight(weight, n_classes)
    x_last = np.moveaxis(x, ax, -1)
    if kind == "index":
        _check_indices(t, ignore_index, n_classes)
    else:
        t = np.moveaxis(t, ax, -1)
    dtype, why = _validate.compute_dtype((x,), ints_to_float64=True)
    if why is None and kind == "prob":
        dtype = np.promote_types(dtype, t.dtype)
    if why is None:
        x_last = _validate.native(x_last, dtype)
        if kind == "prob":
            t = _validate.native(t, dtype)
    if w is not None:  # in the logits' float dtype, as torch requires of it
        w = w.astype(dtype if why is None else np.float64)
    args = CrossEntropyArgs(x_last, t, kind, reduction, label_smoothing, ignore_index, w)
    return _registry.Prepared(args, compiled=why, facts={"size": x.size})


def _check_indices(t, ignore_index, n_classes):
    """IndexError for a class index outside ``[0, n_classes)`` that is not ``ignore_index``."""
    bad = (t != ignore_index) & ((t < 0) | (t >= n_classes))
    if bad.any():
        raise IndexError(
            f"cross_entropy: target index {t[bad].flat[0]} is out of bounds for {n_classes} classes"
        )


_CE = _registry.operation("cross_entropy", _prepare_ce, _rule)


@_registry.public(_CE)
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
):
    """Cross-entropy of ``logits`` against ``target``, fused log-softmax + NLL.

    Like ``torch.nn.functional.cross_entropy`` with the class axis at ``axis`` (default last).

    Parameters
    ----------
    logits : array_like, shape (..., C)
    target : array_like
        Integer class indices of shape ``logits.shape`` without the class axis, or probabilities
        (e.g. one-hot) of the logits' shape.
    weight : array_like, shape (C,), optional
        PyTorch's class weights: an entry's loss is scaled by its class's weight (index targets),
        or each class's term by its weight (probability targets); label smoothing's uniform term
        weights each class's term too (``sum_c w_c (lse - x_c) / C``).
    axis : int, default -1
        The class axis.
    reduction : {"mean", "sum", "none"}
        ``mean`` averages over the non-ignored entries (index targets; with ``weight``, divided by
        the sum of their classes' weights) or over all entries (probability targets), as PyTorch
        does.
    label_smoothing : float in [0, 1]
        Mixes the target with the uniform distribution: ``(1 - eps) * target + eps / C``.
    ignore_index : int, default -100
        Index targets equal to it contribute 0 and are not counted in the mean.

    Returns
    -------
    float or ndarray
        A scalar for ``mean``/``sum``; the per-entry losses for ``none``.

    Raises
    ------
    IndexError
        A class index outside ``[0, C)`` that is not ``ignore_index``.

    Examples
    --------
    >>> import numpy as np, fastla as fl
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> round(float(fl.cross_entropy(logits, np.array([0, 1]))), 4)
    0.3185
    """
    if (
        type(logits) is np.ndarray
        and type(target) is np.ndarray
        and weight is None
        and logits.ndim == 2
        and logits.dtype in _validate.COMPILED_DTYPES
        and target.dtype.kind in "iu"
        and target.shape == logits.shape[:1]
        and type(axis) is int
        and axis in (-1, 1)
        and type(reduction) is str
        and reduction in _REDUCTIONS
        and type(label_smoothing) is float
        and label_smoothing == 0.0
        and type(ignore_index) is int
    ):
        # The fast path of the common call (see softmax): 2-D float logits, class indices, the
        # defaults but the reduction, under auto or numba forced: the full path's index check
        # and kernel without its generic preparation (4 x 10: 26 -> 17.6 us; 8.7 us with the index
        # check and the mean's divisor counted in the kernel)
        fast = _registry.fast_path(backend)
        ops = ("cross_entropy", logits.dtype.char)  # _first_use.kernel_key
        wins = fast == "auto" and _compiled_wins(logits.size) and _first_use.KERNELS.wins(ops)
        if fast == "numba" or wins:  # (kernels neither compiled nor cached: the full path, timed)
            # (the kernel finds out-of-range indices itself, and _ce_numba raises for them)
            args = (logits, target, "index", reduction, 0.0, ignore_index)
            return _first_use.run_kernels(ops, _ce_numba, *args)
    prep = _prepare_ce(logits, target, weight, axis, reduction, label_smoothing, ignore_index)
    return _CE.run(backend, prep)


def entry_weights(target, ignore_index, weight):
    """Each index target's class weight in float64, 0 where ignored (the terms of a weighted mean's
    divisor; the dask path sums them chunk by chunk)."""
    kept = target != ignore_index
    return np.where(kept, weight.astype(np.float64)[np.where(kept, target, 0)], 0.0)


def index_weight_sum(target, ignore_index, weight):
    """The divisor of an index target's mean: the count of non-ignored entries, or with class
    ``weight`` the sum of their weights (PyTorch's)."""
    if weight is None:
        return np.count_nonzero(target != ignore_index)
    return entry_weights(target, ignore_index, weight).sum()


def _reduce(loss, kind, target, reduction, ignore_index, dtype=None, weight=None):
    """The reduction of the per-entry losses, in ``dtype`` (the logits' float dtype, as torch)."""
    dtype = loss.dtype if dtype is None else np.dtype(dtype)
    if reduction == "none":
        return loss.astype(dtype, copy=False)
    if reduction == "sum":
        return dtype.type(loss.sum())
    if kind == "index":
        with np.errstate(invalid="ignore", divide="ignore"):
            return dtype.type(loss.sum() / index_weight_sum(target, ignore_index, weight))
    return dtype.type(loss.mean() if loss.size else np.nan)


@_CE.register("numpy", any_dtype=True)
def _ce_numpy(x, t, kind, reduction, smoothing, ignore_index, weight=None):
    """NumPy log-sum-exp per row (max, exp, sum, log) and the target term; no log-probabilities."""
    x = np.asarray(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    x = x.astype(np.promote_types(dtype, np.float32), copy=False)  # float16 computes in float32
    w = None if weight is None else weight.astype(x.dtype, copy=False)
    n = x.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if n:
            m = x.max(axis=-1, keepdims=True)
            m[~np.isfinite(m)] = 0
            lse = (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]
        else:
            lse = np.full(x.shape[:-1], np.nan, x.dtype)
        if kind == "index":
            ignored = t == ignore_index
            safe = np.where(ignored, 0, t)[..., None].astype(np.intp)
            nll = lse - (np.take_along_axis(x, safe, axis=-1)[..., 0] if n else 0)
            if w is not None and n:
                nll = nll * w[safe[..., 0]]
            if smoothing and n:  # no classes: every row is ignored (loss 0), nothing to smooth
                if w is None:
                    uniform = lse - x.mean(axis=-1)
                else:
                    uniform = (w.sum(dtype=np.float64) * lse - x @ w) / n
                nll = (1 - smoothing) * nll + smoothing * uniform
            loss = np.where(ignored, 0, nll).astype(x.dtype, copy=False)
        else:
            tt = (1 - smoothing) * t + smoothing / n if smoothing and n else t  # n = 0: an empty sum
            if w is not None:
                tt = tt * w
            loss = (tt * (lse[..., None] - x)).sum(axis=-1).astype(x.dtype, copy=False)
    return _reduce(loss, kind, t, reduction, ignore_index, dtype, w)


@_CE.register("loop")
def _ce_loop(x, t, kind, reduction, smoothing, ignore_index, weight=None):
    """Pure-Python log-sum-exp per row."""
    cw = None if weight is None else [float(v) for v in weight]
    n, rows = x.shape[-1], math.prod(x.shape[:-1])  # explicit sizes: -1 fails for 0 classes
    x2 = x.reshape(rows, n)
    loss = np.empty(rows, dtype=x.dtype)
    tf = t.reshape(rows) if kind == "index" else t.reshape(rows, n)
    for r in range(x2.shape[0]):
        row = [float(v) for v in x2[r]]
        if kind == "index" and tf[r] == ignore_index:
            loss[r] = 0.0
            continue
        m = max(row, default=-math.inf)  # no classes: the empty sum's log, -inf
        mm = m if math.isfinite(m) else 0.0
        lse = mm + _py_log(sum(_py_exp(v - mm) for v in row))
        if kind == "index":
            nll = lse - row[tf[r]]
            if cw is not None:
                nll = nll * cw[tf[r]]
            # the smoothing term only where smoothing is on (as the other impls): 0 * (inf - inf) is NaN
            if smoothing:
                if cw is None:
                    uniform = lse - sum(row) / n
                else:
                    uniform = (sum(cw) * lse - sum(c * v for c, v in zip(cw, row, strict=True))) / n
                nll = (1 - smoothing) * nll + smoothing * uniform
            loss[r] = nll
        else:
            w = (
                [(1 - smoothing) * float(p) + smoothing / n for p in tf[r]]
                if smoothing
                else [float(p) for p in tf[r]]
            )
            if cw is not None:
                w = [wj * c for wj, c in zip(w, cw, strict=True)]
            loss[r] = sum(wj * (lse - v) for wj, v in zip(w, row, strict=True))
    return _reduce(loss.reshape(x.shape[:-1]), kind, t, reduction, ignore_index, weight=weight)


#: an empty class-weight array per compiled dtype (no weights), made once: typed as the kernels take it
_NO_WEIGHT = {dt: kernel_input(np.empty(0, dt)) for dt in _validate.COMPILED_DTYPES}


@_CE.register("numba", needs_numba=True)
def _ce_numba(x, t, kind, reduction, smoothing, ignore_index, weight=None):
    """One compiled pass pair per row: max + log-sum-exp + the target term; nothing materialised."""
    n, rows = x.shape[-1], math.prod(x.shape[:-1])  # explicit sizes: -1 fails for 0 classes
    x2 = kernel_input(x).reshape(rows, n)
    loss = np.empty(rows, dtype=x.dtype)
    if kind == "index" and not (rows and n):
        _check_indices(t, ignore_index, n)  # (the kernel's check runs only on rows with classes)
    if x2.shape[0] and n:
        if kind == "index":
            tgt = readonly(np.ascontiguousarray(t.reshape(-1), dtype=np.int64))
            none = _NO_WEIGHT[x.dtype]
            w, wsum = (
                (none, 0.0) if weight is None else (kernel_input(weight), float(weight.sum(dtype=np.float64)))
            )
            xw = kernel_input(x2 @ w) if weight is not None and smoothing else none
            threads = max(1, min(_jit.threads_for(rows * n, SERIAL_ELEMENTS), rows))
            at = CE_INDEX.address(x.dtype)
            args = (x2, tgt, float(smoothing), int(ignore_index), w, wsum, xw, loss, x.dtype.type(0))
            kept, bad = _ce_index_rows(*args, at, threads)
            if bad:
                _check_indices(t, ignore_index, n)
            if reduction == "mean" and weight is None:  # the kernel counted the divisor
                total = float(loss.sum())
                return x.dtype.type(total / kept if kept else np.nan)
        else:
            tt = kernel_input(t).reshape(rows, n)
            w = kernel_input(np.empty(0, x.dtype) if weight is None else weight)
            _ce_prob_rows(x2, tt, smoothing, w, loss, x.dtype.type(0))
    elif rows:  # no classes (probability targets, or every index ignored): an empty sum, 0
        loss[:] = 0.0
    return _reduce(loss.reshape(x.shape[:-1]), kind, t, reduction, ignore_index, weight=weight)
