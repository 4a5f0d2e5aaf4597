"""Mutation check: do the tests notice plausible kernel bugs?

Each mutant is one small edit of a kernel (a wrong pivot rule, a dropped accumulation, an
off-by-one at a tile edge, a sign error, ...). For each, this copies ``fastla/`` and ``tests/`` to a
temporary directory, applies the edit, and runs the tests that guard that kernel with a fresh Numba
cache. A mutant the tests do not kill (pytest exits 0) *survived*: a gap in the suite.

    python tools/mutation_check.py            # all mutants, 2 at a time
    python tools/mutation_check.py --list
    python tools/mutation_check.py lu-pivot-only-on-zero topk-drop-kc-accumulation --jobs 1

Exit status 1 if any mutant survived, could not be applied (its source line changed) or got no
verdict (pytest itself failed: exit 2-5). Not run in
CI (each mutant recompiles the kernels it touches: a few minutes in all); run it before closing work
that changes a kernel, and add a mutant for every kernel change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to fastla/
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments (paths, node ids, -k expressions)
    what: str


MUTANTS = [
    Mutant(
        "attention-sum-rescales-the-tile",
        "attention.py",
        "                    l[mo + r] += e\n",
        "                    l[mo + r] += e * alpha[mo + r]\n",
        ("tests/test_attention.py",),
        "the flash kernel's row sums scale the tile's own exponentials by the change of maximum too",
    ),
    Mutant(
        "attention-group-max-skips-a-key",
        "attention.py",
        "_max2(st[b2 + r], st[b3 + r])",
        "_max2(st[b2 + r], st[b2 + r])",
        ("tests/test_attention.py",),
        "the flash kernel's running max over a group of keys never sees its last",
    ),
    Mutant(
        "numba-blas-probe-not-deferred",
        "_jit.py",
        "            return None  # arraymath's import-time probe, SciPy installed: yes",
        "            return real()  # arraymath's import-time probe, SciPy installed: yes",
        ("tests/test_warmup.py", "-k", "scipy_linalg or probe"),
        "Numba's start-up BLAS probe imports scipy.linalg again (0.13 s of every warm first call)",
    ),
    Mutant(
        "numba-blas-probe-deferred-for-every-caller",
        "_jit.py",
        '        if probing is not None and not hasattr(probing, "_HAVE_BLAS"):',
        "        if True:",
        ("tests/test_warmup.py", "-k", "scipy_linalg or probe"),
        "every BLAS check answers yes without importing: a user's np.dot would find no BLAS symbols",
    ),
    Mutant(
        "pack-block-untransposed",
        "_gemm_kernels.py",
        "        rows = _intrinsics.transpose_vectors(builder, cols)\n",
        "        rows = list(cols)\n",
        ("tests/test_jit.py", "-k", "pack_cols"),
        "the block packer stores each column's vector as a panel row (no transpose)",
    ),
    Mutant(
        "pack-block-scales-by-row",
        "_gemm_kernels.py",
        "            products = [builder.fmul(r, factors) for r in rows]",
        "            products = [builder.fmul(r, builder.shuffle_vector(factors, factors, ir.Constant("
        "ir.VectorType(ir.IntType(32), v), [e] * v))) for e, r in enumerate(rows)]",
        ("tests/test_jit.py", "-k", "pack_cols"),
        "the block packer scales each panel row by the depth's factor, not each column by its own",
    ),
    Mutant(
        "pack-row-block-spills-past-the-block",
        "_gemm_kernels.py",
        "                if e * mr + c0 + v <= v * mr:\n",
        "                if True:\n",
        ("tests/test_jit.py", "-k", "pack_rows"),
        "the row-block packer's last stores are whole vectors, writing past the panel's end",
    ),
    Mutant(
        "pack-row-block-unscaled",
        "_gemm_kernels.py",
        "            rows.append(builder.fmul(_splat(builder, factors[t], vty), x))",
        "            rows.append(x)",
        ("tests/test_jit.py", "-k", "pack_rows"),
        "the row-block packer drops alpha and the row scale",
    ),
    Mutant(
        "pack-col-panel-pads-with-products",
        "_gemm_kernels.py",
        "                y = builder.select(live, builder.fmul(factors, x), zero)",
        "                y = builder.fmul(factors, x)",
        ("tests/test_jit.py", "-k", "pack_rows"),
        "the column-panel packer's rows past the last hold alpha times 0 (-0.0 for a negative alpha)",
    ),
    Mutant(
        "pack-col-panel-last-step-spills",
        "_gemm_kernels.py",
        "                if lanes == w or not last:  # a spill past the step is the next step's, "
        "stored after",
        "                if True:",
        ("tests/test_jit.py", "-k", "pack_rows"),
        "the column-panel packer's last depth step stores a whole vector, past the panel's end",
    ),
    Mutant(
        "pack-col-panel-reads-past-the-rows",
        "_gemm_kernels.py",
        '            live = builder.icmp_signed("<", index, _splat(builder, rows_i, ir.VectorType(i64, w)))',
        '            live = builder.icmp_signed("<", index, _splat(builder, ir.Constant(i64, mr), '
        "ir.VectorType(i64, w)))",
        ("tests/test_jit.py", "-k", "pack_rows"),
        "the column-panel packer reads every row of a tail panel, past the matrix's last",
    ),
    Mutant(
        "pack-cols-skips-the-depth-tail",
        "_gemm_kernels.py",
        "        j0 = jv if p < pv else 0",
        "        j0 = jv",
        ("tests/test_jit.py", "-k", "pack_cols"),
        "the depth past the last whole block is packed only for the tail columns",
    ),
    Mutant(
        "topk-tile-wider-than-its-budget",
        "similarity.py",
        "    tn = max(blk.NR, min(tn, m) // blk.NR * blk.NR)",
        "    tn = max(blk.NR, m // blk.NR * blk.NR)",
        ("tests/test_similarity.py::test_topk_blocking_bounds",),
        "the fused top-k's corpus tile spans the whole corpus: its packed copy and score blocks unbounded",
    ),
    Mutant(
        "topk-tile-ignores-the-corpus-size",
        "similarity.py",
        "    tn = max(blk.NR, min(tn, m) // blk.NR * blk.NR)",
        "    tn = max(blk.NR, tn // blk.NR * blk.NR)",
        ("tests/test_similarity.py::test_topk_blocking_bounds",),
        "a tile wider than the corpus: scratch for rows that do not exist",
    ),
    Mutant(
        "lu-lane-pivot-only-on-zero",
        "_lane_solver.py",
        'g = builder.fcmp_ordered(">", val, best)',
        'g = builder.and_(builder.fcmp_ordered(">", val, best), builder.fcmp_ordered("==", best, zero_f))',
        ("tests/test_lu.py", "-k", "small or pivoting or lanes"),
        "batched tiny solver swaps rows only when the pivot is exactly zero (the audit's mutant)",
    ),
    Mutant(
        "lu-lane-group-drops-statuses",
        "_lane_solver.py",
        "builder.store(s, _group_at(builder, ops.info, ops.t0, s.type), align=8)",
        "builder.store(s.type(None), _group_at(builder, ops.info, ops.t0, s.type), align=8)",
        ("tests/test_lu.py", "-k", "singular or whole_groups"),
        "a whole group solved in registers reports no zero pivot (a singular system goes unnoticed)",
    ),
    Mutant(
        "eigen-scan-on-all-threads-below-the-line",
        "eigen.py",
        "threads = 1 if a.shape[0] <= SCAN_SERIAL_MAX_N else _jit.threads_here()",
        "threads = 1 if a.shape[0] < SCAN_SERIAL_MAX_N else _jit.threads_here()",
        ("tests/test_eigen.py", "-k", "one_thread_where"),
        "the symmetry scan of an n = 512 matrix launches a parallel region its sweeps never need",
    ),
    Mutant(
        "jit-tbb-runtime-not-loaded",
        "_jit.py",
        "    _preload_tbb()  # Numba's own default order tries TBB first too",
        "    pass  # Numba's own default order tries TBB first too",
        ("tests/test_threads.py", "-k", "tbb"),
        "the tbb wheel's runtime stays off the loader's path: fastla runs on GNU OpenMP",
    ),
    Mutant(
        "attention-one-thread-at-the-line",
        "attention.py",
        "threads = 1 if nb * L * S * E < SERIAL_WORK else _jit.threads_here()",
        "threads = 1 if nb * L * S * E <= SERIAL_WORK else _jit.threads_here()",
        ("tests/test_attention.py", "-k", "one_thread_and_larger"),
        "a call of exactly SERIAL_WORK multiply-adds runs on one thread",
    ),
    Mutant(
        "jit-tbb-record-not-read",
        "_jit.py",
        "        if file.name == _TBB_LIBRARY:",
        '        if file.name == "libtbb.so":',
        ("tests/test_threads.py", "-k", "tbb"),
        "a user install's TBB runtime, listed in the wheel's record, is not found",
    ),
    Mutant(
        "lu-lane-memory-ties-go-later",
        "_lane_solver.py",
        'larger = builder.fcmp_ordered(">", key, best)',
        'larger = builder.fcmp_ordered(">=", key, best)',
        ("tests/test_lu.py", "-k", "bit_for_bit or lanes"),
        "groups of larger n (eliminated in memory): a tied pivot goes to the later row",
    ),
    Mutant(
        "lu-lane-memory-forgets-the-interchange",
        "_lane_solver.py",
        "row = builder.select(m, load(j, c), load(i, c))",
        "row = load(i, c)",
        ("tests/test_lu.py", "-k", "bit_for_bit or lanes"),
        "groups of larger n: the pivot row's old place is not given row j (a row is lost)",
    ),
    Mutant(
        "lu-lane-looped-forgets-the-interchange",
        "_lane_solver.py",
        "store(builder.select(m, top, row), i, c)",
        "store(row, i, c)",
        ("tests/test_lu.py", "-k", "bit_for_bit or lanes"),
        "groups of the largest n (columns as loops): row p keeps its row instead of taking row j's",
    ),
    Mutant(
        "rows-prefetch-nothing",
        "_intrinsics.py",
        "prefetch_line(builder, builder.gep(arr.data, [index]))",
        "pass",
        ("tests/test_math.py", "-k", "prefetch"),
        "the row passes no longer prefetch the next row (the softmax rows' DRAM reads stop overlapping)",
    ),
    Mutant(
        "kernels-cached-caller-forgets-its-symbols",
        "_intrinsics.py",
        "library._reload_init.add(functools.partial(_reregister, module, name, template.args, symbol))",
        "pass",
        ("tests/test_kernels.py", "-k", "out_of_line"),
        "a user's cached function calling fastla.kernels out of line cannot load in a new process",
    ),
    Mutant(
        "transpose-vectors-skips-a-stage",
        "_intrinsics.py",
        "while b < v:  # swap the off-diagonal",
        "while b < v // 2:  # swap the off-diagonal",
        ("tests/test_lu.py", "tests/test_jit.py", "-k", "lanes or pack_cols"),
        "the in-register transpose (batched tiny solver, block packer) leaves the widest blocks unswapped",
    ),
    Mutant(
        "solve-rows-pivot-ties-go-right",
        "_lane_solver.py",
        'g = builder.fcmp_ordered(">", kr, kl)',
        'g = builder.fcmp_ordered(">=", kr, kl)',
        ("tests/test_kernels.py", "-k", "bit_for_bit"),
        "one system as row vectors: a tied pivot goes to the later row (not the first largest)",
    ),
    Mutant(
        "matmul-stack-rule-unscaled-by-side",
        "matmul.py",
        'and b_stacked and batch * side >= 4 * AUTO_RULE["small_min_batch"]',
        'and b_stacked and batch >= AUTO_RULE["small_min_batch"]',
        ("tests/test_matmul.py", "-k", "small_stack_uses_numba"),
        "the small-product stack threshold ignores the products' size",
    ),
    Mutant(
        "lu-wide-matrix-skips-u12",
        "lu.py",
        "        if k1 < n:  # U12 := L11^-1 A12; a wide matrix's last panel leaves no rows below to update",
        "        if k1 < n and k1 < m:",
        ("tests/test_lu.py", "-k", "rectangular"),
        "a wide matrix's columns right of the square part keep A's entries instead of U's",
    ),
    Mutant(
        "lu-tall-update-stops-at-n-rows",
        "lu.py",
        "_gk.flat_operand(flat, k1 * n + k0, n, 1, m - k1, k1 - k0),  # L21",
        "_gk.flat_operand(flat, k1 * n + k0, n, 1, n - k1, k1 - k0),  # L21",
        ("tests/test_lu.py", "-k", "rectangular"),
        "the blocked LU of a tall matrix updates only n rows below each panel, not m",
    ),
    Mutant(
        "kernels-lu-wide-matrix-skips-u12",
        "kernels.py",
        "    if n > m:  # a wide matrix",
        "    if n < m:  # a wide matrix",
        ("tests/test_kernels.py", "-k", "rectangular"),
        "fastla.kernels.lu_factor leaves a wide matrix's right columns unsolved (and solves a tall one's)",
    ),
    Mutant(
        "kernels-warmup-skips-the-lu",
        "_kernel_calls.py",
        "    lu, piv = kernels.lu_factor(a)\n",
        "    lu, piv = a.copy(), np.arange(a.shape[0]).astype(np.int32)\n",
        ("tests/test_warmup.py", "-k", "compiles_no_kernel"),
        "the kernels warm-up leaves lu_factor's kernel to a user's first call",
    ),
    Mutant(
        "solve-stack-rule-unscaled-by-n",
        "lu.py",
        '    return n <= AUTO_RULE["small_n"] and batch * n >= 4 * AUTO_RULE["small_min_batch"]',
        '    return n <= AUTO_RULE["small_n"] and batch >= AUTO_RULE["small_min_batch"]',
        ("tests/test_lu.py", "-k", "auto_rule"),
        "the lane kernel's stack threshold ignores n (50 16x16 systems stay on LAPACK at 2.9x the time)",
    ),
    Mutant(
        "lu-solve-fast-check-takes-n-as-a-row",
        "lu.py",
        "        if piv[i] < 0 or piv[i] >= n:",
        "        if piv[i] < 0 or piv[i] > n:",
        ("tests/test_lu.py", "-k", "fast_path_checks"),
        "lu_solve's fast path lets a row index of n through to getrs (a row past b)",
    ),
    Mutant(
        "lu-solve-fast-check-stops-at-the-first-element",
        "lu.py",
        "            bad |= not np.isfinite(x)",
        "            bad = not np.isfinite(x)",
        ("tests/test_lu.py", "-k", "fast_path_checks"),
        "lu_solve's fast path reads only b's last element for inf/NaN",
    ),
    Mutant(
        "eigen-dense-ends-read-the-top-twice",
        "eigen.py",
        "for il in (1, n - q + 1)]",
        "for il in (n - q + 1, n - q + 1)]",
        ("tests/test_eigen.py", "-k", "spectrums_ends"),
        "a small matrix's dense solve reads the top of the spectrum twice (a large negative one is missed)",
    ),
    Mutant(
        "solve-threads-skip-the-last-share",
        "lu.py",
        "    futures = [_pool().submit(share, i) for i in range(1, threads)]",
        "    futures = [_pool().submit(share, i) for i in range(1, threads - 1)]",
        ("tests/test_lu.py", "-k", "medium"),
        "a stack split across threads leaves the last thread's share of systems unsolved",
    ),
    Mutant(
        "solve-threads-ignore-a-workers-error",
        "lu.py",
        "        f.result()  # a worker's LinAlgError",
        "        pass  # a worker's LinAlgError",
        ("tests/test_lu.py", "-k", "medium"),
        "a singular system in a worker thread's share goes unreported",
    ),
    Mutant(
        "lu-panel-pivot-only-on-zero",
        "lu.py",
        "            if v > best:  # strict: the first maximum, as LAPACK's idamax",
        "            if v > best and best == 0:",
        ("tests/test_lu.py",),
        "blocked LU's panel pivots only on an exactly zero diagonal",
    ),
    Mutant(
        "lu-substitution-off-by-one",
        "lu.py",
        "        b[i] -= _row_dot(lu, b, i, 0, i)",
        "        b[i] -= _row_dot(lu, b, i, 0, i - 1)",
        ("tests/test_lu.py",),
        "forward substitution skips the last term of each row",
    ),
    Mutant(
        "gemm-drop-kc-accumulation",
        "_gemm_kernels.py",
        "            load_c = accumulate or pc > 0",
        "            load_c = accumulate",
        ("tests/test_matmul.py",),
        "each rank-KC update overwrites C instead of adding to it",
    ),
    Mutant(
        "gemm-edge-tile-off-by-one",
        "_gemm_kernels.py",
        "                        for j in range(cols):\n"
        "                            ci = _U(c_at + i * ldc + j)",
        "                        for j in range(cols - 1):\n"
        "                            ci = _U(c_at + i * ldc + j)",
        ("tests/test_matmul.py",),
        "edge tiles copy one column short",
    ),
    Mutant(
        "gemm-in-place-b-ignores-the-depth",
        "_gemm_kernels.py",
        "b0, bstep, ldb = b.off + pc * b.rs + jc, nr, b.rs",
        "b0, bstep, ldb = b.off + jc, nr, b.rs",
        ("tests/test_matmul.py",),
        "a thin product reading B in place reads its first KC rows at every depth",
    ),
    Mutant(
        "gemm-in-place-b-of-any-size",
        "_gemm_kernels.py",
        "    few_rows = m <= tile_direct_m(c) and b_bytes <= tile_direct_bytes(c)",
        "    few_rows = m <= tile_direct_m(c)",
        ("tests/test_jit.py::test_gemm_callers_reach_its_tasks_through_their_addresses",),
        "a thin product reads a B larger than DIRECT_BYTES in place (from DRAM in strided runs)",
    ),
    Mutant(
        "small-product-masked-store-whole-vector",
        "_gemm_kernels.py",
        "                    builder.call(m_store, [val, ptr, align, mask])",
        "                    builder.call(m_store, [val, ptr, align, ir.Constant(mty, [1] * w)])",
        ("tests/test_kernels.py", "-k", "no_store_outside"),
        "a small product's last columns stored as whole vectors: the last row writes past its out",
    ),
    Mutant(
        "small-product-masked-load-whole-vector",
        "_gemm_kernels.py",
        "                    return builder.call(m_load, [ptr, align, mask, ir.Constant(vty, None)])",
        "                    return builder.call(m_load, [ptr, align, ir.Constant(mty, [1] * w), ir.Constant(vty, None)])",  # noqa: E501
        ("tests/test_bounds.py",),
        "a small product's last columns loaded as whole vectors: reads past an operand's end",
    ),
    Mutant(
        "gemm-edge-kernel-stores-every-row",
        "_gemm_kernels.py",
        "                if stored and i:",
        "                if False:",
        ("tests/test_jit.py::test_microkernel_matches_twin",),
        "a one-row edge tile also stores the edge kernel's second row (past the tile)",
    ),
    Mutant(
        "softmax-scales-in-float64",
        "softmax.py",
        "        inv = x.dtype.type(1.0 / _exp_sum(x, m, out, True, zero, ahead))",
        "        inv = 1.0 / _exp_sum(x, m, out, True, zero, ahead)",
        ("tests/test_kernels.py::test_row_kernel_keeps_its_flags_in_a_plain_njit_caller",),
        "a float32 row's scale pass runs in float64 (every element converted there and back)",
    ),
    Mutant(
        "log-softmax-shifts-in-float64",
        "softmax.py",
        "        lse = x.dtype.type(np.log(_exp_sum(x, mm, out, False, zero, ahead)))",
        "        lse = np.log(_exp_sum(x, mm, out, False, zero, ahead))",
        ("tests/test_kernels.py::test_row_kernel_keeps_its_flags_in_a_plain_njit_caller",),
        "a float32 row's log-softmax pass subtracts a float64 log-sum",
    ),
    Mutant(
        "square-tile-skips-the-last-step",
        "_gemm_kernels.py",
        "                final = _fma_steps(builder, vty, rows, rows, step)",
        "                final = _fma_steps(builder, vty, rows - 1, rows, step)",
        ("tests/test_kernels.py::test_small_products_of_every_shape",),
        "a 4x4 product's straight-line tile leaves out the last column of A",
    ),
    Mutant(
        "square-tile-ignores-the-depth",
        "_gemm_kernels.py",
        "        elif a.shape[0] == 8 == a.shape[1] == n:",
        "        elif a.shape[0] == 8 == n:",
        ("tests/test_kernels.py::test_small_products_of_every_shape",),
        "an 8 x k @ k x 8 product of another depth takes the 8x8 straight-line tile",
    ),
    Mutant(
        "kernels-gemm-reads-an-overlapping-b-in-place",
        "kernels.py",
        "    if _overlaps(out, b):",
        "    if False:",
        ("tests/test_kernels.py::test_gemm_and_matmul_into_an_overlapping_out",),
        "kernels.gemm into an out that is B: a thin product reads rows of B it has overwritten",
    ),
    Mutant(
        "small-matmul-drop-last-k",
        "_gemm_kernels.py",
        "                    for p in range(1, K):",
        "                    for p in range(1, K - 1):",
        ("tests/test_matmul.py",),
        "the fixed-size small-matrix kernel drops the last term of the dot product",
    ),
    Mutant(
        "small-product-drops-the-tail-column",
        "_gemm_kernels.py",
        "            for j in range(n4, n):",
        "            for j in range(n4, n - 1):",
        ("tests/test_kernels.py::test_small_products_of_every_shape",),
        "the register-accumulating small product skips the last column of a ragged row",
    ),
    Mutant(
        "topk-drop-kc-accumulation",
        "similarity.py",
        "a_off, npan, cols, s_off, tn, pc > 0, 0, kc * nr, nr)",
        "a_off, npan, cols, s_off, tn, False, 0, kc * nr, nr)",
        ("tests/test_similarity.py",),
        "fused top-k keeps only the last KC block of each score (the audit's mutant)",
    ),
    Mutant(
        "topk-numpy-bound-above-the-kth-score",
        "similarity.py",
        "    t = np.partition(peak, groups - k, axis=1)[:, groups - k]",
        "    t = np.partition(peak, groups - k + 1, axis=1)[:, groups - k + 1]",
        ("tests/test_similarity.py::test_numpy_selection_is_the_ranking_rule",),
        "the numpy top-k's bound is the (k-1)-th class maximum, above a top-k score of some rows",
    ),
    Mutant(
        "lu-factor-fast-path-skips-check-finite",
        "lu.py",
        "            if check_finite:\n                _validate.check_finite(a)\n"
        "            return _lu_factor_numpy(",
        "            return _lu_factor_numpy(",
        ("tests/test_fastpath.py::test_lu_factor_fast_path_is_the_full_path",),
        "lu_factor's fast path factors a matrix holding NaN instead of raising SciPy's ValueError",
    ),
    Mutant(
        "lu-solve-fast-path-skips-check-finite",
        "lu.py",
        "problem = _solve_args_problem(piv, n, b, bool(finite))",
        "problem = _solve_args_problem(piv, n, b, False)",
        ("tests/test_fastpath.py::test_lu_solve_fast_path_is_the_full_path",),
        "lu_solve's fast path solves for a b holding inf instead of raising SciPy's ValueError",
    ),
    Mutant(
        "cosine-norms-fast-path-skips-the-upper-bound",
        "similarity.py",
        " and sq.max() <= hi:  # every row",
        ":  # every row",
        ("tests/test_similarity.py",),
        "the NumPy norms' fast path takes rows whose squared norm overflows the safe range",
    ),
    Mutant(
        "cosine-norms-fast-path-skips-the-lower-bound",
        "similarity.py",
        "if sq.size and lo <= sq.min() and",
        "if sq.size and",
        ("tests/test_similarity.py",),
        "the NumPy norms' fast path takes zero, tiny or NaN rows",
    ),
    Mutant(
        "topk-one-query-score-unscaled",
        "similarity.py",
        "            buf[0, jj] = dot * inv[jj]",
        "            buf[0, jj] = dot",
        ("tests/test_similarity.py",),
        "the streaming kernel's one-pass score of the first query skips the row's inverse norm",
    ),
    Mutant(
        "norm-pass-counts-each-row",
        "similarity.py",
        "    if s >= lo and s <= hi:\n        return np.sqrt(s), 0\n    return _norm_out_of_range(x, i, s)\n",
        "    e = 0\n    if not (s >= lo and s <= hi):\n        mx = 0.0\n"
        "        for j in range(x.shape[1]):\n"
        "            v = abs(np.float64(widen(x[i, j])))\n            mx = v if v > mx else mx\n"
        "        if mx > 0:\n            e = math.frexp(mx)[1]\n    return np.sqrt(s), e\n",
        ("tests/test_similarity.py::test_row_passes_take_no_reference_counts_per_row",),
        "the row norm's rare path inlined as loops over the row (its earlier form): a reference on the"
        " operand per row",
    ),
    Mutant(
        "topk-stream-counts-each-corpus-row",
        "similarity.py",
        "    cb, qn = bw(c), bw(qn)",
        "    cb, qn = c, qn",
        ("tests/test_similarity.py::test_row_passes_take_no_reference_counts_per_row",),
        "the streaming top-k takes a reference on the corpus for every row (contended by the threads)",
    ),
    Mutant(
        "attention-numpy-causal-keys-cut-one-short",
        "attention.py",
        "        kb, vb, S = kb[..., :L, :], vb[..., :L, :], L",
        "        kb, vb, S = kb[..., : L - 1, :], vb[..., : L - 1, :], L - 1",
        ("tests/test_attention.py", "-k", "reference"),
        "the numpy impl's causal attention over more keys than rows keeps one key too few",
    ),
    Mutant(
        "attention-causal-keys-cut-one-short",
        "attention.py",
        "        k, v, S = k[:, :L], v[:, :L], L",
        "        k, v, S = k[:, : L - 1], v[:, : L - 1], L - 1",
        ("tests/test_attention.py", "-k", "reference"),
        "causal flash attention over more keys than rows keeps one key too few (the last row's own)",
    ),
    Mutant(
        "attention-mask-counted-per-tile",
        "attention.py",
        "    q, kp, vp, mask = inp.q, inp.kp, inp.vp, _intrinsics.borrow(inp.mask)",
        "    q, kp, vp, mask = inp.q, inp.kp, inp.vp, inp.mask",
        ("tests/test_attention.py::test_tile_loops_take_no_reference_counts_on_the_inputs",),
        "the flash task passes the mask to its per-tile call reference-counted",
    ),
    Mutant(
        "topk-pools-counted-per-row",
        "similarity.py",
        "    pool_s, pool_i, sizes = bw(pool[0]), bw(pool[1]), bw(pool[2])",
        "    pool_s, pool_i, sizes = pool",
        ("tests/test_similarity.py::test_row_passes_take_no_reference_counts_per_row",),
        "the packed top-k's task passes its candidate pools to the per-row merge reference-counted",
    ),
    Mutant(
        "topk-chunk-append-keeps-losers",
        "similarity.py",
        "                above = _intrinsics.above_mask(sc, off + c0, thr)\n",
        "                above = ~_intrinsics.above_mask(sc, off + c0, thr)\n",
        ("tests/test_similarity.py::test_topk_large_k_merges_exactly",),
        "the merge's masked chunk append keeps the scores not above the k-th best, not those above",
    ),
    Mutant(
        "topk-heap-ties-to-higher-index",
        "similarity.py",
        "    return sb == sb and (sa < sb or (sa == sb and ia > ib))",
        "    return sb == sb and (sa < sb or (sa == sb and ia < ib))",
        ("tests/test_similarity.py", "tests/test_kernels.py"),
        "the ranking rule puts the higher index first among equal scores",
    ),
    Mutant(
        "topk-nan-not-last",
        "similarity.py",
        "        return sb == sb or ia > ib",
        "        return ia > ib",
        ("tests/test_similarity.py", "tests/test_kernels.py"),
        "the ranking rule ranks NaN scores above numbers (the top-k's compaction, kernels.topk_push)",
    ),
    Mutant(
        "topk-packed-pool-left-unsorted",
        "similarity.py",
        "    _rank_sort(s_out, i_out, m)",
        "    _rank_sort(s_out, i_out, 0)",
        ("tests/test_similarity.py",),
        "the best k of a query's candidate pool are returned in selection order, not rank order",
    ),
    Mutant(
        "topk-rank-sort-negative-keys-last",
        "similarity.py",
        "    return d ^ 128 if shift == 56 else d",
        "    return d",
        ("tests/test_similarity.py",),
        "the rank sort orders the keys' top byte unsigned (negative keys, the higher scores, last)",
    ),
    Mutant(
        "topk-rank-sort-signed-zero",
        "similarity.py",
        "    if v == 0:  # -0.0 as 0.0 (adding",
        "    if v != v:  # -0.0 as 0.0 (adding",
        ("tests/test_similarity.py",),
        "the rank sort ranks 0.0 above -0.0 instead of tying them (to the lower index)",
    ),
    Mutant(
        "topk-pool-compaction-drops-kth",
        "similarity.py",
        "        _intrinsics.call_out_of_line(_select_best, (s_row, i_row, n, k))\n        n = k\n",
        "        _intrinsics.call_out_of_line(_select_best, (s_row, i_row, n, k))\n        n = k - 1\n",
        ("tests/test_similarity.py",),
        "compacting a full candidate pool keeps only k - 1 of its best",
    ),
    Mutant(
        "topk-select-one-tie-too-many",
        "similarity.py",
        "        last = _ool(_kth_smallest, (a, b, ties, k - below - 1))",
        "        last = _ool(_kth_smallest, (a, b, ties, k - below))",
        ("tests/test_similarity.py",),
        "the pool's compaction keeps one more of the entries tied with the k-th best than has places",
    ),
    Mutant(
        "half-pack-skips-the-depth-tail",
        "_gemm_kernels.py",
        "        for j in range(jv if pb < pv else 0, cols):\n",
        "        for j in range(jv, cols):\n",
        ("tests/test_jit.py", "-k", "half_panels"),
        "the float16 panel packer leaves the blocked columns' last depths (past whole blocks) unpacked",
    ),
    Mutant(
        "topk-shell-sort-skips-the-last",
        "similarity.py",
        "        for i in range(lo + gap, hi):\n",
        "        for i in range(lo + gap, hi - 1):\n",
        ("tests/test_similarity.py",),
        "the selection's closing sort leaves the range's last value where it was",
    ),
    Mutant(
        "topk-select-kth-left-in-place",
        "similarity.py",
        "    _swap(s_row, i_row, at, k - 1)\n",
        "\n",
        ("tests/test_similarity.py",),
        "the pool's compaction keeps the best k but leaves the k-th best where it was, not at k - 1",
    ),
    Mutant(
        "topk-small-block-sort-unstable",
        "similarity.py",
        'idx = np.argsort(np.negative(scores), axis=1, kind="stable")[:, :k]',
        "idx = np.argsort(np.negative(scores), axis=1)[:, :k]",
        ("tests/test_similarity.py",),
        "a small block's one sort breaks ties at the k-th score arbitrarily",
    ),
    Mutant(
        "topk-fast-path-skips-the-k-check",
        "similarity.py",
        "        type(k) is int and 0 <= k <= c.shape[0] and q.shape[-1]",
        "        type(k) is int and q.shape[-1]",
        ("tests/test_fastpath.py", "-k", "cosine"),
        "cosine_topk's fast path hands a k past the corpus to the impl",
    ),
    Mutant(
        "cosine-fast-path-ignores-the-work-threshold",
        "similarity.py",
        '    if fast == "numba" or _matrix_kernel_pays(x.shape[0], y.shape[0], x.shape[1]):',
        '    if fast == "numba" or _matrix_kernel_pays(x.shape[0], y.shape[0], 1):',
        ("tests/test_fastpath.py", "-k", "cosine"),
        "cosine_similarity's fast path decides on n * m instead of the rule's n * m * d",
    ),
    Mutant(
        "topk-select-stops-early",
        "similarity.py",
        "        elif target <= hi:\n            return p",
        "        elif target <= hi + 1:\n            return p",
        ("tests/test_similarity.py",),
        "the quickselect takes the pivot for the k-th smallest key when the k-th is one above the ties",
    ),
    Mutant(
        "topk-push-replaces-without-beating",
        "kernels.py",
        "    if _sim._worse(scores[k - 1], index[k - 1], value, j):",
        "    if True:",
        ("tests/test_kernels.py",),
        "fastla.kernels.topk_push: a full list takes every candidate, beating its last entry or not",
    ),
    Mutant(
        "topk-stream-share-fills-from-corpus-start",
        "similarity.py",
        "    if n < k:  # the first k rows merged",
        "    if n < k and j0 < k:  # the first k rows merged",
        ("tests/test_similarity.py",),
        "a streaming thread's share past the first k rows never fills its list unconditionally",
    ),
    Mutant(
        "topk-stream-extreme-rows-unscaled",
        "similarity.py",
        "            if exps[jj]:",
        "            if False:",
        ("tests/test_similarity.py",),
        "the streaming top-k scores out-of-range corpus rows without their 2^-e scaling",
    ),
    Mutant(
        "topk-packed-ignores-given-norms",
        "similarity.py",
        "                c, inv_c = _given_inv_norms(c, c_norms, _inv_norms_numba)",
        "                c, inv_c, _ = _inv_norms_numba(c)",
        ("tests/test_similarity.py",),
        "the packed top-k measures every row's norm again instead of using corpus_norms",
    ),
    Mutant(
        "topk-given-norms-trust-out-of-range",
        "similarity.py",
        "        ok = (sq >= lo) & (sq <= hi)",
        "        ok = sq == sq",
        ("tests/test_similarity.py",),
        "given corpus norms of 0, inf or subnormal size are trusted instead of measured again",
    ),
    Mutant(
        "cosine-no-rescale-of-extreme-rows",
        "similarity.py",
        "        e = math.frexp(mx)[1]",
        "        e = 0",
        ("tests/test_similarity.py",),
        "subnormal / near-overflow rows are not rescaled by the compiled norm pass",
    ),
    Mutant(
        "exp-drop-ln2-lo",
        "_math.py",
        "    r = r - nf * _LN2_LO\n",
        "    r = r\n",
        ("tests/test_math.py",),
        "exp's Cody-Waite range reduction loses its low part (float64)",
    ),
    Mutant(
        "exp-f32-wrong-coefficient",
        "_math.py",
        "    p = p * r + _P2\n",
        "    p = p * r + _P3\n",
        ("tests/test_math.py",),
        "float32 exp polynomial with a wrong coefficient",
    ),
    Mutant(
        "gemm-pass-skips-its-last-b-panel",
        "_gemm_kernels.py",
        "            for jp in range(j0, min(npan, j0 + jb)):\n",
        "            for jp in range(j0, min(npan, j0 + jb - 1)):\n",
        ("tests/test_matmul.py", "-k", "several_passes_over_b_panels"),
        "each pass of the macro-kernel's row loop leaves out its last B panel (those columns stay unset)",
    ),
    Mutant(
        "gemm-packs-into-fresh-memory-each-call",
        "_gemm_kernels.py",
        "    if work.size < a_len + b_len + s_len:\n",
        "    if work.size >= 0:\n",
        ("tests/test_matmul.py", "-k", "workspace"),
        "the packed GEMM ignores the thread's kept workspace and allocates its scratch every call",
    ),
    Mutant(
        "gemm-workspace-shared-by-python-threads",
        "_gemm_kernels.py",
        "class _Workspaces(threading.local):\n",
        "class _Workspaces:\n",
        ("tests/test_matmul.py", "-k", "python_threads"),
        "Python threads multiplying at once pack into one shared workspace (a race on the packed operands)",
    ),
    Mutant(
        "gemm-small-b-in-place-for-any-rows",
        "_gemm_kernels.py",
        "(m <= tile_small_b_m(c) and b_bytes <= tile_small_b_bytes(c))",
        "(b_bytes <= tile_small_b_bytes(c))",
        ("tests/test_jit.py", "-k", "reach_its_tasks"),
        "a B that fits L2 is read in place however tall A is (the row bound of the small-B rule lost)",
    ),
    Mutant(
        "gemm-small-b-always-packed",
        "_gemm_kernels.py",
        "(m <= tile_small_b_m(c) and b_bytes <= tile_small_b_bytes(c))",
        "(m < 0)",
        ("tests/test_jit.py", "-k", "reach_its_tasks"),
        "a B that fits L2 is packed for every A past DIRECT_M rows (the small-B rule never taken)",
    ),
    Mutant(
        "gemm-stack-skips-the-last-product-of-each-run",
        "_gemm_kernels.py",
        "    for t in range(task * per, min(batch, (task + 1) * per)):\n",
        "    for t in range(task * per, min(batch, (task + 1) * per - 1)):\n",
        ("tests/test_matmul.py", "-k", "stack_of_packed_products"),
        "each thread's run of a stack of packed products leaves its last product unset",
    ),
    Mutant(
        "matmul-auto-packed-stack-float64-sides-for-every-dtype",
        "matmul.py",
        "    lo, hi = PACKED_STACK_SIDES.get(dtype, (1, 0))\n",
        "    lo, hi = PACKED_STACK_SIDES[np.dtype(np.float64)]\n",
        ("tests/test_fastpath.py", "-k", "packed_stack"),
        "auto takes float64's side range for stacks of every dtype (float32 48x48 stacks lose there)",
    ),
    Mutant(
        "matmul-fast-path-forced-numba-takes-the-rule",
        "matmul.py",
        "                if forced or (m >= GEMM_MIN_ROWS_COLS and "
        "_compiled_wins(m, k, b.shape[1], 1, False, dt)):\n",
        "                if m >= GEMM_MIN_ROWS_COLS and _compiled_wins(m, k, b.shape[1], 1, False, dt):\n",
        ("tests/test_fastpath.py", "-k", "explain_names"),
        "matmul's fast path runs auto's pick for a product with numba forced (NumPy on a small one)",
    ),
    Mutant(
        "matmul-one-length-stacks-take-k-columns",
        "matmul.py",
        "        c = np.empty((a.shape[0], a.shape[1], b.shape[2]), a.dtype)\n",
        "        c = np.empty((a.shape[0], a.shape[1], a.shape[2]), a.dtype)\n",
        ("tests/test_matmul.py", "-k", "stacks_and_1d"),
        "two stacks of one length get a result as wide as A (k columns, not n)",
    ),
    Mutant(
        "fast-path-backend-compared-without-its-type",
        "_registry.py",
        '    return requested if type(requested) is str and requested in ("auto", "numba") else None\n',
        '    return requested if requested in ("auto", "numba") else None\n',
        ("tests/test_fastpath.py", "-k", "not_a_name"),
        "the fast path opens for a backend= array holding a name (the full path's ValueError skipped)",
    ),
    Mutant(
        "solve-fast-path-forced-numba-runs-lapack",
        "lu.py",
        "                return _jit.run_parallel(_solve_numba, a, b) if forced else _solve_numpy(a, b)\n",
        "                return _solve_numpy(a, b)\n",
        ("tests/test_fastpath.py", "-k", "explain_names"),
        "solve's fast path runs LAPACK for one system with numba forced",
    ),
    Mutant(
        "gemm-flat-result-rows-at-the-depth-stride",
        "_gemm_kernels.py",
        "    args = (a_op, b_op, Dest(c, c_off, n), alpha, accumulate, none, none, tl)\n",
        "    args = (a_op, b_op, Dest(c, c_off, k), alpha, accumulate, none, none, tl)\n",
        ("tests/test_matmul.py", "-k", "shapes_all_impls or stack_of_packed_products"),
        "compiled callers of the packed GEMM on flat memory (matmul's products, stacks of them) lay "
        "the result's rows out at A's column count, not B's",
    ),
    Mutant(
        "kernels-lu-solve-accepts-pivot-n",
        "kernels.py",
        "        if _jit.U(piv[i]) >= _jit.U(n):  # unsigned: a negative index too, in one compare\n",
        "        if _jit.U(piv[i]) > _jit.U(n):  # unsigned: a negative index too, in one compare\n",
        ("tests/test_kernels.py", "-k", "lu_solve_into_every_out"),
        "kernels.lu_solve lets a pivot equal to n through (a row swap one past the end of b)",
    ),
    Mutant(
        "lu-solve-accepts-negative-pivots",
        "lu.py",
        '    if piv.size and (piv.view(piv.dtype.str.replace("i", "u")) >= n).any():  # negative ones too\n',
        "    if piv.size and (piv >= n).any():  # negative ones too\n",
        ("tests/test_lu.py", "-k", "refuses_pivots"),
        "fastla.lu_solve checks only the upper bound of the pivots (a negative row index passes)",
    ),
    Mutant(
        "solve-scratch-ignores-the-group-width-of-n",
        "lu.py",
        "        k, nl, slots = B.shape[2], lanes(A.dtype, n), _SPREAD * max_threads()\n",
        "        k, nl, slots = B.shape[2], lanes(A.dtype), _SPREAD * max_threads()\n",
        ("tests/test_lu.py", "-k", "small_stack_whole_groups or small_stack_lanes"),
        "the stack solver steps by full-width groups where the intrinsic solves half-width ones "
        "(hosts with HALF_WIDTH_N only: the other systems of each group are never solved)",
    ),
    Mutant(
        "scalef-drops-a-factor-of-two",
        "_intrinsics.py",
        "        k = context.cast(builder, args[1], sig.args[1], nb_types.int32)\n",
        "        k = builder.sub(context.cast(builder, args[1], sig.args[1], nb_types.int32), "
        "ir.Constant(ir.IntType(32), 1))\n",
        ("tests/test_math.py",),
        "the compiled ldexp scales by 2^(n-1) (softmax would still sum to 1)",
    ),
    Mutant(
        "log-drops-the-low-ln2",
        "_math.py",
        "    res = dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)",
        "    res = dk * _LN2_HI - ((hfsq - (s * (hfsq + r))) - f)",
        ("tests/test_math.py", "-k", "log"),
        "the float64 log loses ln 2's low part (a few ulp off away from 1)",
    ),
    Mutant(
        "log-subnormals-unscaled",
        "_math.py",
        "    k = np.int32((b >> 52) & 0x7FF) - (np.int32(1023 + 54) if sub else np.int32(1023))\n",
        "    k = np.int32((b >> 52) & 0x7FF) - np.int32(1023)\n",
        ("tests/test_math.py", "-k", "log"),
        "the float64 log forgets the 2^54 scaling of subnormal inputs",
    ),
    Mutant(
        "log-softmax-short-rows-log-dropped",
        "softmax.py",
        "            totals[r] = _math.log(totals[r])\n",
        "            totals[r] = totals[r] - 1.0\n",
        ("tests/test_softmax.py",),
        "log_softmax's short rows subtract the sum instead of its log",
    ),
    Mutant(
        "softmax-short-rows-unshifted",
        "softmax.py",
        "            for j in range(b, b + nu):\n                of[j] = xf[j] - m\n",
        "            for j in range(b, b + nu):\n                of[j] = xf[j]\n",
        ("tests/test_softmax.py",),
        "softmax's short rows take exp(x) instead of exp(x - max) (overflows on large logits)",
    ),
    Mutant(
        "row-max-is-min",
        "_math.py",
        "        k = kj if kj > k else k\n    return _intrinsics.i64_as_f64",
        "        k = kj if kj < k else k\n    return _intrinsics.i64_as_f64",
        ("tests/test_math.py", "tests/test_softmax.py"),
        "float64 row max returns the minimum (softmax still sums to 1: only extremes show it)",
    ),
    Mutant(
        "softmax-sum-drops-chunks",
        "softmax.py",
        '        total += part\n    return total\n\n\n@jit(inline="always")\ndef _row_sum',
        '        total = part\n    return total\n\n\n@jit(inline="always")\ndef _row_sum',
        ("tests/test_softmax.py",),
        "softmax's row sum keeps only the last chunk (rows longer than _SUM_CHUNK)",
    ),
    Mutant(
        "log-softmax-sign",
        "softmax.py",
        "            out[j] = (x[j] - mm) - lse",
        "            out[j] = (x[j] - mm) + lse",
        ("tests/test_softmax.py",),
        "log_softmax adds the log-sum-exp instead of subtracting it",
    ),
    Mutant(
        "cross-entropy-sign",
        "softmax.py",
        "        nll = lse - x[r, t]",
        "        nll = lse + x[r, t]",
        ("tests/test_softmax.py",),
        "cross-entropy adds the target logit",
    ),
    Mutant(
        "cross-entropy-kernel-misses-a-bad-index",
        "softmax.py",
        "            bad += 0 if t == ignore_index else 1",
        "            bad += 0",
        ("tests/test_softmax.py", "-k", "cross_entropy"),
        "the compiled pass takes an out-of-range class index for an ignored one: no IndexError",
    ),
    Mutant(
        "cross-entropy-mean-over-every-row",
        "softmax.py",
        "                return x.dtype.type(total / kept if kept else np.nan)",
        "                return x.dtype.type(total / len(loss))",
        ("tests/test_softmax.py", "-k", "cross_entropy"),
        "the compiled mean divides by every entry, ignored ones included",
    ),
    Mutant(
        "cross-entropy-weighted-mean-by-count",
        "softmax.py",
        "    return entry_weights(target, ignore_index, weight).sum()",
        "    return np.count_nonzero(target != ignore_index)",
        ("tests/test_softmax.py", "-k", "class_weights"),
        "with class weights, the mean divides by the count of entries, not by their weights' sum",
    ),
    Mutant(
        "cross-entropy-weighted-smoothing-unweighted",
        "softmax.py",
        "                uniform = (wsum * lse - xw[r]) / n",
        "                uniform = lse - _row_sum(x[r], zero) / n",
        ("tests/test_softmax.py", "-k", "class_weights"),
        "the compiled kernel's label smoothing leaves the class weights out of the uniform term",
    ),
    Mutant(
        "cosine-sparse-rows-unscaled",
        "similarity.py",
        "        a.data = np.ldexp(a.data, np.repeat(-exp, counts))",
        "        a.data = a.data",
        ("tests/test_similarity.py", "-k", "sparse"),
        "sparse rows are normalised without the power-of-two scaling (rows near 1e300 overflow)",
    ),
    Mutant(
        "cosine-sparse-product-drops-a-term",
        "similarity.py",
        "            for q in range(t_ptr[k], t_ptr[k + 1]):",
        "            for q in range(t_ptr[k] + 1, t_ptr[k + 1]):",
        ("tests/test_similarity.py", "-k", "sparse"),
        "the compiled sparse product skips the first entry of each row of the transposed operand",
    ),
    Mutant(
        "matmul-broadcast-out-written-directly",
        "matmul.py",
        "        and out.shape == res_shape  # else a larger out the result broadcasts to (np.copyto below)",
        "        and True",
        ("tests/test_matmul.py", "-k", "ufuncs_other_forms"),
        "an out= the product broadcasts to is taken as the product's own buffer",
    ),
    Mutant(
        "attention-causal-off-by-one",
        "attention.py",
        "                cut = _U(min(nr, max(0, j0 + c - i0 - pn * nr)))",
        "                cut = _U(min(nr, max(0, j0 + c - i0 - pn * nr + 1)))",
        ("tests/test_attention.py",),
        "the causal mask also hides the diagonal",
    ),
    Mutant(
        "attention-mask-ignored",
        "attention.py",
        "                    st[base + _U(r)] += mask[mb, ii, jj]",
        "                    st[base + _U(r)] += 0 * mask[mb, ii, jj]",
        ("tests/test_attention.py",),
        "the float/bool attention mask is not applied",
    ),
    Mutant(
        "attention-online-softmax-no-rescale",
        "attention.py",
        "                l[mo + r] *= alpha[mo + r]",
        "                l[mo + r] *= 1",
        ("tests/test_attention.py",),
        "the running sum is not rescaled when the running max grows",
    ),
    Mutant(
        "attention-keys-packed-unscaled",
        "attention.py",
        "        alpha, dst, off = inp.consts[0], inp.kp,",
        "        alpha, dst, off = inp.consts[1], inp.kp,",
        ("tests/test_attention.py",),
        "the packing task leaves the keys unscaled (the scale is folded into their packing)",
    ),
    Mutant(
        "attention-rows-causal-hides-diagonal",
        "attention.py",
        "        end = _U(min(S, i + 1)) if causal else kv_end",
        "        end = _U(min(S, i + 0)) if causal else kv_end",
        ("tests/test_attention.py", "-k", "row_kernel or against_reference"),
        "the row kernel's causal rows also hide their own key",
    ),
    Mutant(
        "attention-rows-second-key-scored-as-first",
        "attention.py",
        "                d1 += x * kf[k2 + e]",
        "                d1 += x * kf[k1 + e]",
        ("tests/test_attention.py", "-k", "row_kernel"),
        "the row kernel's four-key pass scores its second key with the first key's row",
    ),
    Mutant(
        "attention-rows-fourth-value-row-dropped",
        "attention.py",
        "p0 * vf[v1 + e] + p1 * vf[v2 + e] + p2 * vf[v3 + e] + p3 * vf[v4 + e]",
        "p0 * vf[v1 + e] + p1 * vf[v2 + e] + p2 * vf[v3 + e]",
        ("tests/test_attention.py", "-k", "row_kernel"),
        "the row kernel's four-row pass leaves out the fourth value row",
    ),
    Mutant(
        "attention-lead-group-ignores-leading-dims",
        "attention.py",
        "    return math.prod(lead[t:]) if padded[:t] == tuple(lead[:t]) else None",
        "    return math.prod(lead[t:])",
        ("tests/test_attention.py", "-k", "lead_group or share"),
        "an operand broadcast over a leading dimension is read as a view of consecutive entries",
    ),
    Mutant(
        "pack-rows-row-scale-from-block-start",
        "_gemm_kernels.py",
        "            s = alpha * row_scale[_U(r0 + ir + i)] if scaled else alpha",
        "            s = alpha * row_scale[_U(ir + i)] if scaled else alpha",
        ("tests/test_similarity.py",),
        "a packed A block past the first takes the first block's row scales (cosine's inverse norms)",
    ),
    Mutant(
        "pack-cols-column-scale-from-panel-start",
        "_gemm_kernels.py",
        "                out[_U(row + j)] = d[_U(src + j * cs)] * col_scale[_U(c0 + j)]",
        "                out[_U(row + j)] = d[_U(src + j * cs)] * col_scale[_U(j)]",
        ("tests/test_similarity.py",),
        "a packed B panel past the first takes the first panel's column scales (cosine's inverse norms)",
    ),
    Mutant(
        "power-iteration-rayleigh-term-dropped",
        "eigen.py",
        "        vw += v[i] * s0 + v[i + 1] * s1 + v[i + 2] * s2 + v[i + 3] * s3",
        "        vw += v[i] * s0 + v[i + 1] * s1 + v[i + 2] * s2",
        ("tests/test_eigen.py",),
        "the fused A v pass drops a term of v . Av (non-symmetric power iteration)",
    ),
    Mutant(
        "one-triangle-drops-a-mirrored-term",
        "eigen.py",
        "            acc[3, j] += x0 * u03 + x1 * u13 + x2 * u23 + x3 * u33",
        "            acc[3, j] += x0 * u03 + x1 * u13 + x2 * u23",
        ("tests/test_eigen.py", "-k", "one_triangle"),
        "the one-triangle product drops the fourth vector's mirrored terms of every fourth row",
    ),
    Mutant(
        "one-vector-triangle-drops-a-mirrored-term",
        "eigen.py",
        "            acc[0, j] += x0 * u0 + x1 * u1 + x2 * u2 + x3 * u3",
        "            acc[0, j] += x0 * u0 + x1 * u1 + x2 * u2",
        ("tests/test_eigen.py", "-k", "one_triangle"),
        "the one-vector one-triangle product drops the mirrored terms of every fourth row",
    ),
    Mutant(
        "one-triangle-sum-skips-its-own-block",
        "eigen.py",
        "            out[j, c] = dots[j, c] + part[j // _MATVEC_ROWS, c, j]",
        "            out[j, c] = dots[j, c]",
        ("tests/test_eigen.py", "-k", "one_triangle"),
        "the one-triangle product drops the mirrored terms of a row's own 256-row block",
    ),
    Mutant(
        "one-triangle-skips-the-bottom-blocks",
        "eigen.py",
        "    for which in range(1 if other == task else 2):",
        "    for which in range(1):",
        ("tests/test_eigen.py", "-k", "one_triangle"),
        "the one-triangle product's tasks skip their bottom block (half the rows never computed)",
    ),
    Mutant(
        "lanczos-basis-keeps-one-pass-of-coefficients",
        "eigen.py",
        "                coef[col_l] += d",
        "                coef[col_l] = d",
        ("tests/test_eigen.py",),
        "the compiled Gram-Schmidt keeps only the last pass's coefficients of a column (h, r wrong)",
    ),
    Mutant(
        "lanczos-basis-keeps-a-column-in-the-span",
        "eigen.py",
        "            return i\n",
        "            return b\n",
        ("tests/test_eigen.py",),
        "the compiled Gram-Schmidt normalises a column that lies in the span (no fresh direction)",
    ),
    Mutant(
        "slack-left-out-of-the-convergence-test",
        "eigen.py",
        "                        res = res + slack",
        "                        res = res",
        ("tests/test_eigen.py", "-k", "slack"),
        "a pair converged against the one-triangle matrix passes without the slack to A",
    ),
    Mutant(
        "one-triangle-read-far-from-symmetric",
        "eigen.py",
        "    return float(slack) if slack <= 1e-3 * tol * big else np.inf",
        "    return float(slack)",
        ("tests/test_eigen.py", "-k", "reads_one_triangle"),
        "a matrix further from symmetric than the convergence test allows is read as its upper triangle",
    ),
    Mutant(
        "symmetry-scan-copies-a-wrong-row",
        "eigen.py",
        "                mirror[ii, jb + 7] = a[r0 + 7, i0 + ii]",
        "                mirror[ii, jb + 7] = a[r0 + 6, i0 + ii]",
        ("tests/test_eigen.py", "-k", "scan"),
        "the symmetry scan's transposed copy takes the eighth row of each group from the seventh",
    ),
    Mutant(
        "symmetry-scan-skips-the-upper-triangle",
        "eigen.py",
        "                big = by if by > big else big",
        "                big = big",
        ("tests/test_eigen.py",),
        "the symmetry scan ignores the mirrored (upper) entries' magnitude: an inf there passes",
    ),
    Mutant(
        "half-bits-read-as-an-integer",
        "_intrinsics.py",
        "return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())",
        "return builder.uitofp(args[0], ir.FloatType())",
        ("tests/test_jit.py", "tests/test_similarity.py", "-k", "widen or float16"),
        "a float16 element (its uint16 bits) is read as the integer those bits spell",
    ),
    Mutant(
        "half-corpus-packed-from-one-element",
        "_gemm_kernels.py",
        "out[_U(off + (pb + p) * nr + j)] = widen(d[_U(at + p * rs)]) * s",
        "out[_U(off + (pb + p) * nr + j)] = widen(d[_U(at)]) * s",
        ("tests/test_similarity.py", "-k", "float16"),
        "the float16 packing repeats each column's first element down its 16-deep chunk",
    ),
    Mutant(
        "matmul-thin-product-follows-the-threshold",
        "matmul.py",
        "    return work > 0 and work >= AUTO_RULE[_gemm_key(dtype)]",
        "    return work >= AUTO_RULE[_gemm_key(dtype)]",
        ("tests/test_fastpath.py", "-k", "gemm_threshold"),
        "a threshold of 0 sends a product too thin for the packed kernel to it, and explain disagrees",
    ),
    Mutant(
        "bench-settle-one-call",
        "bench/runner.py",
        "        if clock() - start >= seconds:",
        "        if True:",
        ("tests/test_bench.py", "-k", "settle"),
        "the untimed calls before an impl's rounds stop after one: its rounds start in the last impl's wake",
    ),
    Mutant(
        "bench-verify-chunks-skip-the-infinities",
        "bench/runner.py",
        "numeric and np.isfinite(c).all() and",
        "numeric and",
        ("tests/test_bench.py", "-k", "verify"),
        "the result check by chunks passes an infinity of the wrong sign",
    ),
    Mutant(
        "bench-overhead-ignores-the-pairs",
        "bench/report.py",
        '        if g[t["impl"]].paired_extra_us is not None:',
        "        if False:",
        ("tests/test_bench.py", "-k", "overhead"),
        "the call-overhead target reads the two medians timed apart, not the paired batches",
    ),
    Mutant(
        "kernels-solve-branches-inlined-at-ir-level",
        "kernels.py",
        '@jit(inline="llvm")\ndef _solve_one_vec(a, b, x):',
        '@jit(inline="always")\ndef _solve_one_vec(a, b, x):',
        ("tests/test_kernels.py", "-k", "two_calls"),
        "one system's solve, whose branches define its result twice, inlined by Numba: two calls warn",
    ),
    Mutant(
        "kernels-python-keeps-integers",
        "kernels.py",
        'dtype = np.result_type(*(np.float64 if x.dtype.kind in "biu" else x.dtype for x in arrays))',
        "dtype = np.result_type(*arrays)",
        ("tests/test_kernels.py", "-k", "take_integers or promotion"),
        "a Python call of a kernel on integer arrays computes in integers (an integer LU)",
    ),
    Mutant(
        "kernels-python-out-read-only",
        "kernels.py",
        '    problem = _validate.out_problem(out, shape, dtype, f"fastla.kernels.{name}")',
        "    problem = None",
        ("tests/test_kernels.py", "-k", "out_is_checked"),
        "a Python caller's out is not checked: a read-only one written, an integer one truncated",
    ),
    Mutant(
        "kernels-straight-line-takes-n-0",
        "kernels.py",
        "    elif 5 <= n <= STRAIGHT_LINE_MAX:",
        "    elif n <= STRAIGHT_LINE_MAX:",
        ("tests/test_kernels.py", "-k", "empty_system"),
        "an empty system runs the 8x8 straight-line code on empty arrays (stores past them)",
    ),
    Mutant(
        "topk-thread-share-one-block",
        "similarity.py",
        "    for i0 in range(th * share, end, mc):",
        "    for i0 in range(th * share, min(end, th * share + mc), mc):",
        ("tests/test_similarity.py", "-k", "topk"),
        "each thread scores only the first block of its share of the queries",
    ),
    Mutant(
        "kernels-cosine-range-of-the-other-dtype",
        "kernels.py",
        "    lo, hi = _SQ_F32 if x.itemsize == 4 else _SQ_F64",
        "    lo, hi = _SQ_F64 if x.itemsize == 4 else _SQ_F32",
        ("tests/test_kernels.py", "-k", "test_cosine"),
        "kernels.cosine_similarity rescales rows by the other dtype's safe range",
    ),
    Mutant(
        "dask-topk-merge-unstable",
        "dask.py",
        'order = np.argsort(-s, axis=1, kind="stable")[:, :k]',
        'order = np.argsort(-s, axis=1, kind="quicksort")[:, :k]',
        ("tests/test_dask.py", "-k", "topk"),
        "the dask top-k merge sorts by score without keeping corpus order among ties",
    ),
    Mutant(
        "power-sparse-symmetry-assumed",
        "eigen.py",
        "        found = asym <= symmetry_atol(dtype, big)",
        "        found = True",
        ("tests/test_eigen.py", "-k", "sparse"),
        "a sparse matrix is taken as symmetric without looking (block Lanczos on a non-symmetric one)",
    ),
    Mutant(
        "power-sparse-row-sum-skips-last-entry",
        "eigen.py",
        "            for p in range(_U(indptr[i]), _U(indptr[i + 1])):  # unsigned: see fastla._jit.U",
        "            for p in range(_U(indptr[i]), _U(indptr[i + 1]) - 1):  # unsigned: see fastla._jit.U",
        ("tests/test_eigen.py", "-k", "sparse"),
        "the compiled CSR product leaves out each row's last stored entry",
    ),
    Mutant(
        "topk-sparse-given-norms-multiply",
        "similarity.py",
        "            inv = np.where(c_norms > 0, 1.0 / c_norms, np.where(np.isnan(c_norms), np.nan, 0.0))",
        "            inv = np.where(c_norms > 0, c_norms, np.where(np.isnan(c_norms), np.nan, 0.0))",
        ("tests/test_similarity.py", "-k", "topk_sparse"),
        "a sparse corpus is scaled by its given norms instead of divided by them",
    ),
    Mutant(
        "power-zero-eigenvalue-floor-dropped",
        "eigen.py",
        "    return np.maximum(tol * mag, floor), floor",
        "    return tol * mag, floor",
        ("tests/test_eigen.py", "-k", "rounding_floor"),
        "an eigenvalue far below the largest, or zero, must reach tol * |l| (k above the rank raises)",
    ),
    Mutant(
        "dask-ce-mean-in-float64",
        "dask.py",
        "        return dtype.type(s / n)",
        "        return s / n",
        ("tests/test_dask.py", "-k", "keeps_the_logits"),
        "the dask cross-entropy mean comes back in float64 for float32 logits",
    ),
    Mutant(
        "cosine-longdouble-kept",
        "similarity.py",
        "    if dtype.itemsize > 8:  # longdouble: float64, as sklearn's check_pairwise_arrays converts it",
        "    if dtype.itemsize > 16:  # longdouble: float64, as sklearn's check_pairwise_arrays converts it",
        ("tests/test_similarity.py", "-k", "dtype_rules"),
        "cosine similarity keeps longdouble input, which its kernels and norms do not take",
    ),
    Mutant(
        "dask-matmul-float16-partial-sums",
        "dask.py",
        "    acc = np.promote_types(dtype, np.float32) if keep_k and dtype == np.float16 else None",
        "    acc = None",
        ("tests/test_dask.py", "-k", "float16_over"),
        "the dask product sums float16 partial products over chunks of k in float16",
    ),
    Mutant(
        "convergence-error-default-pickle",
        "eigen.py",
        "        return type(self), (*self.args, self.eigenvalues, self.eigenvectors, self.iterations)",
        "        return super().__reduce__()",
        ("tests/test_eigen.py", "-k", "pickles"),
        "ConvergenceError pickles as its message alone (unpickling fails)",
    ),
    Mutant(
        "bench-compare-path-unchecked",
        "bench/cli.py",
        '    missing = [f"{flag} {path}" for flag, path in named if path and not Path(path).exists()]',
        "    missing = []",
        ("tests/test_bench.py", "-k", "refused_before"),
        "a mistyped --compare folder is taken for a folder without this machine's baseline",
    ),
    Mutant(
        "exp-clamp-without-upper-bound",
        "_intrinsics.py",
        '        return builder.call(mn, [v, args[2]], fastmath=("nnan",))',
        "        return v",
        ("tests/test_math.py",),
        "exp's range clamp keeps no upper bound (exp(inf) becomes NaN through inf - inf)",
    ),
    Mutant(
        "exp-clamp-without-lower-bound",
        "_intrinsics.py",
        '        v = builder.call(mx, [args[0], args[1]], fastmath=("nnan",))',
        "        v = args[0]",
        ("tests/test_math.py",),
        "exp's range clamp keeps no lower bound (exp(-inf) becomes NaN, not 0)",
    ),
    Mutant(
        "exp32-polynomial-coefficient-mistyped",
        "_math.py",
        "    _F32(0.04166965),  # 0x3D2AADCB",
        "    _F32(0.04166665),  # 0x3D2AADCB",
        ("tests/test_math.py",),
        "a mistyped coefficient of the float32 exp's fitted polynomial",
    ),
    Mutant(
        "exp64-polynomial-coefficient-mistyped",
        "_math.py",
        "    2.480149267146026e-05,",
        "    2.480159267146026e-05,",
        ("tests/test_math.py",),
        "a mistyped coefficient of the float64 exp's fitted polynomial (below the ulp test's reach)",
    ),
    Mutant(
        "against-lost-item-not-compared",
        "bench/against.py",
        "                it.lost = side is cand\n",
        "                it.lost = False\n",
        ("tests/test_bench_against.py",),
        "an op the base runs and the candidate cannot reads as 'not compared' and the gate passes",
    ),
    Mutant(
        "against-nothing-compared-passes",
        "bench/against.py",
        "    if not compared and not lost:",
        "    if False:",
        ("tests/test_bench_against.py",),
        "a comparison in which no item could run on either side passes",
    ),
    Mutant(
        "first-use-full-path-charges-nothing",
        "_registry.py",
        "        if type(reason) is _first_use.Pending:\n",
        "        if False:\n",
        ("tests/test_first_use.py",),
        "a call that runs NumPy until its size's kernel pays off is not timed on the full path",
    ),
    Mutant(
        "first-use-no-disk-probe",
        "_first_use.py",
        "            found = self._cached(key)\n",
        "            found = False\n",
        ("tests/test_first_use.py",),
        "a size whose kernel the cache holds still waits for the break-even in a new process",
    ),
    Mutant(
        "first-use-solve-fast-path-compiles-at-once",
        "lu.py",
        "                    if STEPS.wins(key):\n",
        "                    if True:\n",
        ("tests/test_first_use.py",),
        "solve's fast path compiles a new size's lane-solver step at the first call",
    ),
    Mutant(
        "first-use-matmul-fast-path-compiles-at-once",
        "matmul.py",
        "                    if _gk.FIXED.wins(key):\n",
        "                    if True:\n",
        ("tests/test_first_use.py",),
        "matmul's fast path compiles a new size's unrolled stacked product at the first call",
    ),
    Mutant(
        "user-cache-stamp-ignores-closures",
        "_jit.py",
        '    for cell in getattr(py_func, "__closure__", None) or ():',
        "    for cell in ():",
        ("tests/test_jit.py", "-k", "compiles_in_fastla"),
        "a user function reaching fastla through a closure variable keeps a stale cache",
    ),
    Mutant(
        "user-cache-stamp-ignores-called-functions",
        "_jit.py",
        "        if inner is not None and _compiles_in_fastla(inner, seen):",
        "        if False:",
        ("tests/test_jit.py", "tests/test_warmup.py", "-k", "compiles_in_fastla or users_functions"),
        "a user function calling fastla only through another jitted function keeps a stale cache",
    ),
]


def _run(mutant, keep):
    work = tempfile.mkdtemp(prefix=f"mutant-{mutant.name}-")
    try:
        for folder in ("fastla", "tests"):
            shutil.copytree(os.path.join(ROOT, folder), os.path.join(work, folder),
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        shutil.copy(os.path.join(ROOT, "pyproject.toml"), work)
        path = os.path.join(work, "fastla", mutant.file)
        with open(path) as f:
            source = f.read()
        if source.count(mutant.old) != 1:
            return "NOT APPLIED", 0.0, f"the original text occurs {source.count(mutant.old)} times"
        with open(path, "w") as f:
            f.write(source.replace(mutant.old, mutant.new))
        env = {
            **os.environ,
            "PYTHONPATH": work,
            "NUMBA_CACHE_DIR": os.path.join(work, ".numba"),
            "FASTLA_TEST_WARMUP": "0",
        }
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
               "--benchmark-disable", *mutant.tests]  # fmt: skip
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
        summary = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode == 0:
            return "SURVIVED", seconds, summary
        if proc.returncode == 1:  # tests failed
            return "killed", seconds, summary
        if proc.returncode < 0 and " failed" in summary:
            # the tests failed and reported it, then the process died (a mutant storing out of
            # bounds corrupts the heap, which aborts at exit): killed. A crash without the tests'
            # failure report stays an error below.
            return "killed", seconds, f"{summary} (then killed by signal {-proc.returncode})"
        # 2-5: collection failed, pytest's internal error, usage, nothing collected: no verdict (an
        # undeclared marker once failed tests/test_kernels.py's collection: exit 2 for every mutant)
        return f"ERROR (exit {proc.returncode})", seconds, summary
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the mutated copies")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:40s} {m.file:18s} {m.what}")
        return 0
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutant(s): {', '.join(unknown)}")
    chosen = [by_name[n] for n in args.names] if args.names else MUTANTS
    from concurrent.futures import ThreadPoolExecutor

    results = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(_run, m, args.keep): m for m in chosen}
        for fut in futures:
            m = futures[fut]
            status, seconds, detail = fut.result()
            results[m.name] = status
            print(f"{status:14s} {m.name:40s} {seconds:6.1f} s  {detail}", flush=True)
    bad = [n for n, s in results.items() if s in ("SURVIVED", "NOT APPLIED") or s.startswith("ERROR")]
    killed = sum(s.startswith("killed") for s in results.values())
    failing = ", ".join(bad) or "none"
    print(f"\n{killed}/{len(results)} mutants killed; survivors, not applied or errors: {failing}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
