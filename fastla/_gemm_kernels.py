"""Compiled GEMM: BLIS/Goto blocking, packing and an LLVM-vector-IR register micro-kernel.

Structure (row-major ``C[m, n] = A[m, k] @ B[k, n]``), as in Goto & van de Geijn (2008) and BLIS:

``jc`` over NC columns of B -> ``pc`` over KC of the inner dimension (pack a KC x NC slab of B into
NR-wide micro-panels, once, in parallel) -> ``ic`` over MC rows of A, *in parallel* (each thread
packs its own MC x KC block of A into MR-tall micro-panels) -> passes over JB of the NR panels of B
(about half of L2) -> ``ir`` over MR panels -> ``jr`` over the pass's NR panels -> micro-kernel. The
A micro-panel (KC x MR, 12 KiB in float64) stays in L1 while the pass's B micro-panels stream from
L2: BLIS's arrangement with the operands' roles exchanged, because here B is the side read as
vectors and its AVX-512 micro-panel (KC x NR, 64 KiB) does not fit an L1 of 32-48 KiB. Where B's
micro-panel fits L1 (AVX2: 24 KiB), a pass is one panel, the order BLIS uses. Measured on Zen 4
(one thread, ``bench --against`` the jr-outer order, two runs of 11 rounds): 1024^3 float64 median
0.93-0.97x the old time, float32 0.96-0.99x, 1000x37x1000 0.75-0.80x, LU 1000 0.85-0.95x;
``FASTLA_GEMM_JB=1`` gives the old order (one panel a pass).

The micro-kernel computes an MR x NR tile with the accumulator held in registers: MR x NV vectors of
W lanes (NR = NV * W), one broadcast of A and NV vector loads of packed B per k step, ``llvm.fma``.
Plain Numba cannot express this well (its SLP vectoriser is off, so scalar accumulators get
vectorised along k instead and spill), so the kernel is written as LLVM IR through an
``@intrinsic``. Its plain-Python twin (NumPy on the same packed panels) runs when JIT is off.

Thin products (at most DIRECT_M rows of A; B with unit column stride and C's dtype, at most
DIRECT_BYTES) skip B's packing: the micro-kernel reads NR-wide rows of B in place, ``ldb`` apart
(BLIS's "sup" kernels do the same for skinny shapes), since packing costs k x n reads and writes
whatever m is: 37 x 1000 x 1000 float64 on one thread went 0.82-0.92x -> 0.96-1.07x OpenBLAS
(Zen 4, one B, interleaved runs).

Edge tiles are not special-cased in the inner loop: packing pads A and B micro-panels with zeros and
the micro-kernel writes such a tile into a small scratch tile that is then added to the valid part of
C; an edge of one or two rows whose columns are whole runs :func:`edge_kernel` on C instead (a third
of the MR-row tile's FMAs). Operands of any strides (transposed, F-order, negative strides) are read
by the packing routines, so no extra full copy is made.

This module is private to :mod:`fastla.matmul` (and reused by LU, cosine similarity, attention);
the intrinsic's twin lives beside its IR rather than in ``_jit.py`` because the two must change
together.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import NamedTuple

import numpy as np

from fastla import _first_use, _host, _intrinsics, _jit
from fastla._intrinsics import wide_vectors, widen
from fastla._jit import jit, prange

# --------------------------------------------------------------------------- shapes from the host
#
# MR x NR (rows x columns of the register tile) from the SIMD width, MR x NV vectors of W lanes:
# * AVX-512 (32 zmm): 6 x 4 -> 24 accumulators, 4 vector loads of B + 6 broadcasts of A per 24 FMAs
#   (BLIS zen4's 32x6 column-major kernel, transposed). Measured on Zen 4, 1024^3, one thread
#   (ratio to OpenBLAS, f64/f32): 6x4 0.84/0.82, 12x2 0.80/0.80, 14x2 0.80/0.75, 8x3 0.82/0.76;
#   more broadcasts per FMA compete with the FMAs for ports.
# * AVX2 (16 ymm): 4 x 3 -> 12 accumulators, OpenBLAS Haswell's 4x12 dgemm tile (3 vector loads of
#   B + 4 broadcasts of A per 12 FMAs, where BLIS haswell's 6 x 2 takes 2 + 6). Measured on Zen 3
#   (znver3, OpenBLAS's Haswell kernel), ratio to OpenBLAS, 4 x 3 against 6 x 2, interleaved runs:
#   1024^3 float64 one thread 0.89-1.14x against 0.71-0.89x, two threads 0.90-0.99x against
#   0.68-1.18x, float32 one thread 0.85-0.95x against 0.74-0.95x; 1000x37x1000 0.75-0.97x against
#   0.44-0.66x and 1000x64x1000 (the LU's trailing update) 0.78-0.91x against 0.50-0.74x; cosine
#   5000x256 float32 0.86-1.08x scikit-learn against 0.75-0.96x. It loses where B is read in place
#   by few rows of A (37x1000x1000 0.65-0.91x against 0.83-1.02x): B's panels are read again for
#   every MR rows of A, more passes with 4 rows. Zen 4 running the AVX2 build (NUMBA_CPU_NAME=haswell,
#   OpenBLAS Haswell) measured the same: 1024^3 1.00-1.02x against 0.92-1.00x, 37x1000x1000
#   0.62-0.93x against 0.90-1.11x. Not measured on Zen 1/2 (half-width FMA units on Zen 1).
# * SSE only: 4 x 2 vectors.
_SIMD = _host.simd_bytes()
_MR, _NV = {64: (6, 4), 32: (4, 3)}.get(_SIMD, (4, 2))


def gemm_tile(raw, default):
    """``(MR, NV)`` from ``FASTLA_GEMM_TILE``'s ``"MRxNV"`` (for tuning studies), or ``default``."""
    if not raw:
        return default
    parts = raw.split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(
            f"environment variable FASTLA_GEMM_TILE={raw!r}: expected MRxNV, two positive integers (6x4)"
        )
    return int(parts[0]), int(parts[1])


_MR, _NV = gemm_tile(os.environ.get("FASTLA_GEMM_TILE"), (_MR, _NV))


#: how many rows of B ahead the micro-kernel prefetches (``Blocking.PREFETCH_B``)
PREFETCH_B_ROWS = 16
#: the most L3 (bytes) the blocking counts (``Blocking``; ``fastla._host.cache_sizes``)
L3_COUNTED = 32 * 2**20


class Blocking:
    """Block sizes for one dtype, derived from the host's SIMD width and cache sizes.

    * KC: depth of one rank-KC update. Measured: 256 on AVX-512 (128/256/384 tried on Zen 4),
      384 on AVX2 (Zen 3). Longer KC amortises the C-tile load/store over more FMAs; too long and
      the B micro-panel (KC x NR) falls out of L1.
    * MC: the packed A block (MC x KC) should take about half of L2 (a multiple of MR).
    * NC: the packed B slab (KC x NC) takes a share of L3 (a multiple of NR); for the matrices this
      library targets, NC >= n, so B is packed once per KC step.
    ``FASTLA_GEMM_KC/MC/NC`` override them (for tuning studies).
    """

    def __init__(self, itemsize):
        caches = _host.cache_sizes()
        self.itemsize = itemsize
        self.W = _SIMD // itemsize
        self.MR = _MR
        self.NV = _NV
        self.NR = self.NV * self.W
        self.NARROW_NR = max(1, self.NV // 2) * self.W  # narrow_kernel's columns
        self.KC = _host.env_int("FASTLA_GEMM_KC", 256 if _SIMD >= 64 else 384)
        mc = (caches["L2"] // 2) // (self.KC * itemsize)
        self.MC = _host.env_int("FASTLA_GEMM_MC", max(self.MR, mc // self.MR * self.MR))
        # L3 counts at most L3_COUNTED bytes here: the bounds below were measured on 32 MiB L3s (an
        # AMD CCX's), and an Intel server's sysfs L3 is the socket's (480 MiB on a 2-core Xeon guest),
        # of which a core gets a slice: uncapped, a 60 MiB B was read in place there (next comments)
        l3 = min(caches["L3"], L3_COUNTED)
        nc = (min(l3, 16 * 2**20) // 4) // (self.KC * itemsize)
        self.NC = _host.env_int("FASTLA_GEMM_NC", max(self.NR, min(8192, nc) // self.NR * self.NR))
        # JB: packed B panels (KC x NR each) per pass of the macro-kernel's row loop. A B panel that
        # fits L1 stays there across the row loop (1 a pass: BLIS's order, as a 6 x 8 float64 tile
        # has it: 384 x 8 float64 = 24 KiB); a larger one (AVX-512: 64 KiB, AVX2's 4 x 12: 36 KiB)
        # streams from L2 in passes of about half of L2 while A's micro-panel stays in L1 (see the
        # module docstring). AVX2 with KC 256 (a 24 KiB panel, in L1) measured no better on Zen 3
        # (1023^3 0.76-0.83x OpenBLAS against 0.95-0.97x, 1000x37x1000 0.55-0.58x against 0.73-0.78x)
        panel = self.KC * self.NR * itemsize
        jb = 1 if panel <= caches["L1"] else (caches["L2"] // 2) // panel
        self.JB = _host.env_int("FASTLA_GEMM_JB", max(1, jb))
        # DIRECT_M: up to this many rows of A, the micro-kernel reads full panels of B in place
        # (rows ldb apart) instead of packing them: packing B costs k x n reads and writes whatever
        # m is, which a thin product cannot amortise. Measured (Zen 4, float64, k = n = 1000, one
        # thread, ratio to OpenBLAS, five interleaved runs): m = 5 1.28-1.38x in place against
        # 0.86-0.93x packed, m = 36 0.99-1.05x against 0.79-0.81x, m = 37 0.88-1.05x (median 0.97)
        # against 0.81-0.90x (0.85); m = 64 0.76-0.88x against 0.78-0.85x, m >= 96 no gain
        self.DIRECT_M = _host.env_int("FASTLA_GEMM_DIRECT_M", 48)
        # DIRECT_BYTES: ... and B spans at most this many bytes (a quarter of L3): a B that stays in
        # L3 between products is read in place at the rate of a packed one, a larger one streams from
        # DRAM in short strided runs. Measured (Zen 4, 32 MiB L3, 37 rows, float64, one thread, in
        # place against packed, two interleaved runs): 1000 x 1000 (8 MB) 0.92-1.01x against
        # 0.73-0.87x, 500 x 2000 (8 MB) 0.95-1.03x against 0.82-0.84x, 1000 x 1536 (12 MB)
        # 0.81-0.89x against 0.76-0.86x, 16 MB (1000 x 2000, 1000 x 2048, 2000 x 1000) even,
        # 1000 x 3072 (24 MB) 0.75x against 0.88-0.92x, 2048 x 2048 (32 MB) 0.75-0.78x against
        # 0.90-0.91x. Intel Xeon (rocketlake, 2 MiB L2, 480 MiB socket L3), 37 rows, in place
        # against packed: 1000 x 2000 (16 MB) 0.81-0.82x against 0.72-0.78x, 2000 x 2000 (32 MB)
        # 0.67-0.77x against 0.71-0.78x, 2000 x 4000 (64 MB, the uncapped bound's) 0.45-0.53x against
        # 0.72-0.73x: the bound stays a quarter of the capped L3 (8 MiB) there too
        self.DIRECT_BYTES = _host.env_int("FASTLA_GEMM_DIRECT_BYTES", l3 // 4)
        # SMALL_B_BYTES / SMALL_B_M: B is also read in place when it fits L2 (and past it: below)
        # and A has at most SMALL_B_M rows. Packing B is a pass of k x n copies and a parallel
        # region of its own, a share of the product that shrinks as 1/m; a B in L2 is read in place
        # as fast as packed.
        # Measured (Zen 4, n = k = m, ratio to OpenBLAS, three interleaved runs, in place against
        # packed): float64 two threads 128^3 0.86-0.95x against 0.73-0.80x, 192^3 1.02-1.04x
        # against 0.87-0.92x, 256^3 1.02-1.05x against 0.95-0.96x, 384^3 1.01-1.02x against
        # 0.97-0.98x, 512^3 even; one thread 128^3 0.85x against 0.82x, 192^3-384^3 +0-7%; float32
        # two threads 128^3-384^3 +5-60%. Tall products (2000-20000 rows, k = n = 128-300) even
        # within noise; 1024^3 (8 MB of B) 0.88-0.92x in place against 0.97-0.98x packed.
        # Past L2 (AMD), up to an eighth of L3 (a B that stays in L3 across the row blocks, as for
        # DIRECT_BYTES): at L2 (1 MiB) the few-row products with a larger B packed it and lost to
        # OpenBLAS on two threads, where auto takes the kernel. Zen 4 (32 MiB L3: 4 MiB against
        # 1 MiB), ratio to OpenBLAS, best of three interleaved runs: float64 two threads 64x384x384
        # 0.93-0.98x against 1.25-1.29x, 64x512x512 0.95x against 1.18-1.25x, 96x384x512 0.94x
        # against 1.10-1.12x, 128x384x384 0.95x against 1.10-1.18x, 128x512x512 0.91x against
        # 1.06x, 256x512x512 0.90-0.94x against 0.99-1.00x, 512^3 0.97x against 1.00-1.01x,
        # 256x1024x512 (4 MiB) 0.96-0.98x against 1.01-1.19x; one thread 64x384x384 0.95x against
        # 1.03x, 512^3 1.00x against 0.97x; float32 two threads 128x768x768 0.96x against 1.12x,
        # 512x1024x1024 0.95x against 0.97x.
        # On a 32-byte-SIMD host (AVX2) B is read in place up to a quarter of L2 only, for any A
        # (L2_B_BYTES below): a micro-panel's row there is 1-1.5 cache lines (NR = 12 float64 or 24
        # float32 lanes, rows ldb apart), where AVX-512's is 4, and every MR rows of A read it again.
        # Zen 3 (512 KiB L2, 4 x 3 tile), ratio to OpenBLAS, in place (the Zen 4 bounds) against
        # packed, two runs: float64 one thread 256^3 0.63-0.71x against 0.95-1.00x, 2000x256x256
        # 0.63-0.65x against 0.96-1.01x, 512^3 0.49-0.50x against 0.85-0.97x, 128x512x512
        # 0.56-0.62x against 0.80-0.91x, 64x384x384 0.68-0.72x against 0.87-0.91x; two threads
        # 512^3 0.32-0.37x against 0.52-0.68x, 256x1024x512 0.34-0.37x against 0.63-0.68x.
        # Intel AVX-512 (measured on one Xeon, rocketlake, 2 MiB L2, OpenBLAS SkylakeX): B read in
        # place lost past half of L2, and for more than 128 rows already within it, where the AMD
        # bounds had it (float64 ratio to OpenBLAS, two interleaved runs, each side after 0.15 s
        # idle; in place against packed unless named). Past L2 (the AMD bound, L3 as sysfs reports
        # the socket's): one thread 128x768x512 (3 MiB) 0.77x against 1.00-1.02x, 384x640x640
        # 0.76-0.77x against 1.01-1.04x, 256x2048x2048 (32 MiB) 0.43-0.64x against 0.91-0.93x,
        # 512x1536x1536 0.63x against 0.93-0.96x; two threads 256x2048x2048 0.56-0.60x against
        # 0.75-0.84x, 384x640x640 0.84-0.87x against 0.84-0.93x. At L2 and within it (this
        # bound: half of L2 for up to 128 rows, an eighth for any) against up to L2 for up to 512
        # rows or any: one thread 512^3 1.07-1.10x against 0.75x, 256^3 0.97-1.00x against
        # 0.83-0.84x, 2048x512x256 1.12-1.16x against 0.88-0.93x, 1000x64x1000 1.12-1.14x against
        # 0.85-0.86x, 2000x256x256 1.15-1.16x against 0.90-0.91x, 64x512x256 0.81-0.83x against
        # 0.84-0.86x (in place either way), 4096x128x128 1.02-1.05x against 1.25-1.32x (in place
        # either way); two threads 512^3 0.92-1.00x against 0.77-0.94x, 1024x256x256 1.06-1.07x
        # against 0.81-0.88x, 1000x64x1000 1.07-1.08x against 0.88-0.91x, 128x384x320 0.76-0.78x
        # against 0.77-0.91x (in place either way); float32 512^3 one thread 0.99-1.02x against
        # 0.81-0.82x, two 0.93-0.98x against 0.81-0.85x, 2048x512x256 1.00-1.01x against 0.87-0.89x,
        # 1000x64x1000 0.81-0.96x against 0.94-0.95x. Packing a B within half of L2 for 128 rows or
        # fewer lost on two threads: 128x384x320 0.68-0.70x against 0.82-0.85x, 64x512x256
        # 0.62-0.63x against 0.81-0.92x.
        vendor = _host.cpu_vendor()
        amd = vendor == "AuthenticAMD"
        if _SIMD < 64:
            in_place, small_b_m, any_rows = caches["L2"] // 4, 512, caches["L2"] // 4
        elif amd:
            in_place, small_b_m, any_rows = max(caches["L2"], l3 // 8), 512, caches["L2"]
        else:
            in_place, small_b_m, any_rows = caches["L2"] // 2, 128, caches["L2"] // 8
        self.SMALL_B_BYTES = _host.env_int("FASTLA_GEMM_SMALL_B_BYTES", in_place)
        self.SMALL_B_M = _host.env_int("FASTLA_GEMM_SMALL_B_M", small_b_m)
        # L2_B_BYTES: a B within L2 is read in place for A of any height: each row block reads it
        # from L2, and packing it cost two parallel regions a depth step where there was one.
        # Float32, two threads, Zen 4, 768 rows (past SMALL_B_M), in place against packed, best of
        # three interleaved runs (ratio to OpenBLAS): 768x384x96 1.04x against 1.13x, 768x768x64
        # 1.01x against 1.10x, 768x512x96 1.00x against 1.13x, 2048x256x256 0.95x against 1.10x;
        # float64 2048x512x256 (1 MiB) 0.96x against 0.94x. A larger B stays packed for tall A:
        # in place 1.03-1.05x against 0.95-0.98x (float32 2048x1024x1024, float64 1024x512x512).
        # (AVX2: a quarter of L2, as SMALL_B_BYTES above; Intel AVX-512: an eighth, above)
        self.L2_B_BYTES = _host.env_int("FASTLA_GEMM_L2_B_BYTES", any_rows)

        # PREFETCH_C: the micro-kernel prefetches its C tile's lines before its k loop, so that they
        # arrive while it runs instead of missing at its loads and stores (OpenBLAS's SkylakeX
        # kernels prefetch C). It matters where the loop is short (k a few dozen) and C large.
        # Intel Xeon (rocketlake, 2 MiB L2), float64, one thread, ratio to OpenBLAS, five
        # interleaved runs, with against without: 1000x37x1000 1.18-1.29x against 1.06-1.13x,
        # 1000x64x1000 1.12-1.16x against 1.06-1.10x, 4000x64x1000 1.18-1.22x against 1.00-1.03x
        # (three), 1024^3 1.04-1.07x against 1.00-1.10x, 300^3 0.94-1.01x against 0.98-1.04x (three);
        # two threads 2000x128x2000 1.04-1.07x against 0.93-0.98x, 1000x64x1000 1.10x against
        # 1.06-1.08x (two); float32 one thread even within the noise (1000x37x1000 0.86-1.00x
        # against 0.83-0.93x, 1000x64x1000 0.81-0.94x against 0.82-0.97x, 1024^3 0.92-1.04x against
        # 1.00-1.03x; five). AMD keeps the kernel without it (PREFETCH_B: the EPYC's reads).
        self.PREFETCH_C = _host.env_flag("FASTLA_GEMM_PREFETCH_C", vendor == "GenuineIntel")
        # PREFETCH_B: ... and, each step of its k loop, B's row PREFETCH_B_ROWS ahead. A B read in
        # place has rows ldb apart (8000 bytes for 1000 float64 columns), a stride the hardware's
        # prefetchers did not follow there, so the first row tile of each pass waited on memory for
        # every row (a packed panel is one sequential stream: the prefetch costs it a few issue
        # slots, measured even). Intel Xeon (as above), one thread, ratio to OpenBLAS, with
        # (16 rows ahead) against without, two to four interleaved runs: float64 37x1000x1000
        # 0.97-1.02x against 0.77-0.84x, 5x1000x1000 1.49-1.56x against 1.30-1.31x; float32
        # 37x1000x1000 0.99-1.03x against 0.80-0.83x, 48x2000x1000 1.00-1.01x against 0.79-0.81x;
        # 1024^3 even (float64 1.04-1.11x against 1.02-1.11x, float32 1.01-1.10x against 0.98-1.00x).
        # 8 rows ahead read as 16, 32 a little lower (37x1000x1000 0.94-0.98x). AMD EPYC (znver2,
        # AVX2 4x3 tile, OpenBLAS Haswell), one thread, float64, medians of three interleaved runs,
        # neither / C only / C and B: 37x1000x1000 0.74-0.88x / 0.82-0.89x / 0.68-0.86x,
        # 48x2000x1000 0.73-0.75x / 0.74-0.76x / 0.70-0.76x, 512^3 0.95-0.97x / 0.70-0.97x /
        # 0.92-0.97x: even within the noise, so AMD keeps the kernel without either.
        self.PREFETCH_B = _host.env_flag("FASTLA_GEMM_PREFETCH_B", vendor == "GenuineIntel")

    def as_dict(self):
        names = ("MR", "NR", "KC", "MC", "NC", "JB", "DIRECT_M", "DIRECT_BYTES", "SMALL_B_BYTES", "SMALL_B_M")
        names += ("L2_B_BYTES", "PREFETCH_C", "PREFETCH_B")
        return {k: getattr(self, k) for k in names}

    def __repr__(self):
        return "Blocking({})".format(", ".join(f"{k}={v}" for k, v in self.as_dict().items()))


_ool = _intrinsics.call_out_of_line

BLOCKING = {np.dtype(np.float64): Blocking(8), np.dtype(np.float32): Blocking(4)}
_BLOCKING_BY_SIZE = {dt.itemsize: blk for dt, blk in BLOCKING.items()}
#: Empty scale vectors: "no row/column scaling" for :func:`gemm_into`.
NO_SCALE = {dt: np.empty(0, dt) for dt in BLOCKING}


# --------------------------------------------------------------------------- micro-kernel


def _vector_fma(builder, vty):
    """``fma(x, y, acc)``: ``llvm.fma`` on ``vty`` vectors (a scalar ``x`` is broadcast first)."""
    from llvmlite import ir

    bits = 64 if isinstance(vty.element, ir.DoubleType) else 32
    fn_fma = _intrinsics.llvm_function(builder, f"llvm.fma.v{vty.count}f{bits}", vty, [vty, vty, vty])

    def fma(x, y, acc):
        return builder.call(
            fn_fma, [x if isinstance(x.type, ir.VectorType) else _splat(builder, x, vty), y, acc]
        )

    return fma


def _fma_steps(builder, vty, trip, count, body):
    """:func:`_fma_loop` for a constant ``trip``: the steps emitted one after another (``t`` an
    ``i64`` constant), no loop."""
    from llvmlite import ir

    fma, accs = _vector_fma(builder, vty), [ir.Constant(vty, None)] * count
    for t in range(trip):
        accs = body(ir.Constant(ir.IntType(64), t), accs, fma)
    return accs


def _fma_loop(builder, vty, trip, count, body):
    """Emit ``for t in range(trip): accs = body(t, accs, fma)`` over ``count`` vector accumulators
    that start at zero; return their final values (zero when ``trip <= 0``). ``body`` builds one step
    and returns the new accumulators; ``fma(x, y, acc)`` emits ``llvm.fma`` on ``vty`` vectors (a
    scalar ``x`` is broadcast first)."""
    from llvmlite import ir

    fma = _vector_fma(builder, vty)
    i64 = ir.IntType(64)
    zero = ir.Constant(vty, None)
    fn = builder.function
    pre = builder.block
    loop = fn.append_basic_block("fma.loop")
    done = fn.append_basic_block("fma.done")
    builder.cbranch(builder.icmp_signed(">", trip, ir.Constant(i64, 0)), loop, done)

    builder.position_at_end(loop)
    t = builder.phi(i64, "t")
    t.add_incoming(ir.Constant(i64, 0), pre)
    accs = []
    for _ in range(count):
        phi = builder.phi(vty)
        phi.add_incoming(zero, pre)
        accs.append(phi)
    new = body(t, accs, fma)
    t_next = builder.add(t, ir.Constant(i64, 1))
    t.add_incoming(t_next, builder.block)
    for phi, val in zip(accs, new, strict=True):
        phi.add_incoming(val, builder.block)
    end = builder.block
    builder.cbranch(builder.icmp_signed("<", t_next, trip), loop, done)

    builder.position_at_end(done)
    final = []
    for val in new:  # phis first: LLVM wants them grouped at the top of the block
        fin = builder.phi(vty)
        fin.add_incoming(zero, pre)
        fin.add_incoming(val, end)
        final.append(fin)
    return final


def _splat(builder, x, vty):
    """``x`` in every lane of a ``vty`` vector."""
    from llvmlite import ir

    i32 = ir.IntType(32)
    undef = ir.Constant(vty, ir.Undefined)
    mask = ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count)
    return builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(i32, 0)), undef, mask)


def _microkernel_twin(kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c, rows=None, vectors=None):
    """Python twin: ``C[tile] (+)= Apanel.T @ Bpanel`` on the same layouts as the IR (the first
    ``rows`` rows of the MR-tall A micro-panel, and the first ``vectors`` SIMD vectors of its
    columns: all of them by default). Every element's products summed in the same order, as the IR
    sums them: the same rounding in every position of the tile, where a BLAS product of the panels
    rounded an edge column of OpenBLAS's Haswell kernel apart from the others (two equal corpus rows
    scored 1 ulp apart, their top-k tie broken out of order)."""
    blk = BLOCKING[A.dtype]
    mr, nr = blk.MR, blk.NR if vectors is None else vectors * blk.W
    a = A[aoff : aoff + kc * mr].reshape(kc, mr)[:, : mr if rows is None else rows]
    b = B[boff + ldb * np.arange(kc)[:, None] + np.arange(nr)]  # (kc, nr): the panel's rows, ldb apart
    tile = np.add.reduce(a.T[:, :, None] * b[None], axis=1)  # (rows, kc, nr) summed over the depth
    for i in range(tile.shape[0]):
        row = slice(coff + i * ldc, coff + i * ldc + nr)
        C[row] = C[row] + tile[i] if load_c else tile[i]


def _prefetch_rows(builder, base, ld, rows, cols, itemsize, write=True):
    """Prefetch (``llvm.prefetch``: for writing, or reading when not ``write``; locality 3, data)
    every cache line of the ``rows`` x ``cols`` block at ``base`` (rows ``ld`` elements apart): each
    64-byte step of a row and its last element, which covers a row that does not start on a line."""
    from llvmlite import ir

    i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
    fn = _intrinsics.llvm_function(builder, "llvm.prefetch.p0", ir.VoidType(), [i8p, i32, i32, i32])
    line = max(1, 64 // itemsize)
    offsets = sorted(set(range(0, cols, line)) | {cols - 1})
    for i in range(rows):
        row = builder.gep(base, [builder.mul(ld, ir.Constant(i64, i))])
        for j in offsets:
            ptr = builder.bitcast(builder.gep(row, [ir.Constant(i64, j)]), i8p)
            builder.call(fn, [ptr, ir.Constant(i32, int(write)), ir.Constant(i32, 3), ir.Constant(i32, 1)])


def _tile_kernel(rows=None, narrow=False):
    """The typer of the micro-kernel for ``rows`` rows of the MR-tall A micro-panel (all of them:
    :func:`microkernel`; fewer: :func:`edge_kernel`, whose row ``i`` is stored only when ``i <
    stored``, its last argument), on all NV SIMD vectors of its columns or, ``narrow``, on the
    first half of them (:func:`narrow_kernel`)."""

    def typer(typingctx, kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c, *stored):
        from llvmlite import ir

        nbt = _jit.nb_types
        if not all(isinstance(t, nbt.Array) for t in (A, B, C)):
            return None
        if not (A.dtype == B.dtype == C.dtype) or A.dtype not in (nbt.float32, nbt.float64):
            return None
        blk = BLOCKING[np.dtype(str(A.dtype))]
        mr, w = blk.MR, blk.W
        nv = _narrow_nv(blk) if narrow else blk.NV
        tall = mr if rows is None else rows
        sig = nbt.void(kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c, *stored)

        def codegen(context, builder, sig, args):
            kc_v, a_v, aoff_v, b_v, boff_v, ldb_v, c_v, coff_v, ldc_v, load_v = args[:10]
            i64 = ir.IntType(64)
            fty = context.get_value_type(sig.args[1].dtype)
            vty = ir.VectorType(fty, w)
            vptr = vty.as_pointer()
            align = blk.itemsize

            def as_i64(val, ty):
                return context.cast(builder, val, ty, nbt.int64)

            kc_i = as_i64(kc_v, sig.args[0])
            a_ptr = context.make_array(sig.args[1])(context, builder, a_v).data
            b_ptr = context.make_array(sig.args[3])(context, builder, b_v).data
            c_ptr = context.make_array(sig.args[6])(context, builder, c_v).data
            a_base = builder.gep(a_ptr, [as_i64(aoff_v, sig.args[2])])
            b_base = builder.gep(b_ptr, [as_i64(boff_v, sig.args[4])])
            c_base = builder.gep(c_ptr, [as_i64(coff_v, sig.args[7])])
            ldc_i = as_i64(ldc_v, sig.args[8])
            ldb_i = as_i64(ldb_v, sig.args[5])

            def vector_at(base, v):
                return builder.bitcast(builder.gep(base, [ir.Constant(i64, v * w)]), vptr)

            def step(k, accs, fma):
                bp = builder.gep(b_base, [builder.mul(k, ldb_i)])
                if blk.PREFETCH_B:  # B's row PREFETCH_B_ROWS ahead (see Blocking)
                    row = builder.add(k, ir.Constant(i64, PREFETCH_B_ROWS))
                    ahead = builder.gep(b_base, [builder.mul(row, ldb_i)])
                    _prefetch_rows(builder, ahead, ldb_i, 1, nv * w, blk.itemsize, write=False)
                bvec = [builder.load(vector_at(bp, v), align=align) for v in range(nv)]
                ap = builder.gep(a_base, [builder.mul(k, ir.Constant(i64, mr))])
                new = []
                for i in range(tall):
                    splat = _splat(
                        builder, builder.load(builder.gep(ap, [ir.Constant(i64, i)]), align=align), vty
                    )
                    new += [fma(splat, vec, accs[i * nv + v]) for v, vec in enumerate(bvec)]
                return new

            if blk.PREFETCH_C:
                _prefetch_rows(builder, c_base, ldc_i, tall, nv * w, blk.itemsize)
            final = _fma_loop(builder, vty, kc_i, tall * nv, step)
            load_c_i1 = context.cast(builder, load_v, sig.args[9], nbt.boolean)

            def store_rows(add):
                for i in range(tall):
                    row = builder.gep(c_base, [builder.mul(ldc_i, ir.Constant(i64, i))])
                    keep = ir.Constant(ir.IntType(1), 1)
                    if stored and i:  # the edge kernel's row i only when it has that many rows
                        keep = builder.icmp_signed(">", as_i64(args[10], sig.args[10]), ir.Constant(i64, i))
                    with builder.if_then(keep):
                        for v in range(nv):
                            cp, val = vector_at(row, v), final[i * nv + v]
                            if add:
                                val = builder.fadd(builder.load(cp, align=align), val)
                            builder.store(val, cp, align=align)

            with builder.if_else(load_c_i1) as (then, otherwise):
                with then:
                    store_rows(True)
                with otherwise:
                    store_rows(False)
            return context.get_dummy_value()

        return sig, codegen

    return typer


@_jit.intrinsic(_microkernel_twin)
def microkernel(typingctx, kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c):
    """``C[coff + i*ldc + j] += sum_p A[aoff + p*MR + i] * B[boff + p*ldb + j]`` for the MR x NR tile.

    A is a packed micro-panel, B rows of NR contiguous elements ``ldb`` apart (``ldb = NR``: a packed
    panel; the row stride of a matrix: read in place), C any 1-D array with unit stride along a row.
    With ``load_c`` false the tile is stored without reading C first (``C = A @ B``): the first
    rank-KC update of a product then needs no zeroing pass over C.
    """
    return _tile_kernel()(typingctx, kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c)


#: rows of :func:`edge_kernel`
EDGE_MR = 2


def _edge_kernel_twin(kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c, stored):
    _microkernel_twin(kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c, rows=min(EDGE_MR, stored))


@_jit.intrinsic(_edge_kernel_twin)
def edge_kernel(typingctx, kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c, stored):
    """:func:`microkernel` on the first EDGE_MR rows of the A micro-panel, of which the first
    ``stored`` are stored (the rest read the panel's zero padding): an edge tile of one or two rows
    (its columns whole), with FMAs for the rows there are, where the MR-row tile spends MR / rows
    times the FMAs on the padding. Not for more rows in several calls: each call loads B's panel
    again (from L2, or from memory when B is read in place), and m = 5 x 1000 x 1000 float64 took
    0.29 ms as one MR-row tile, 0.45-0.48 ms as calls of two rows, 0.65-0.75 ms of one (Zen 4).
    One kernel, not one per row count: each is compiled into the macro-kernel (three, for 1, 2 and
    3 rows, cost its cold compile 0.2 s)."""
    return _tile_kernel(EDGE_MR)(typingctx, kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c, stored)


def _narrow_nv(blk):
    """SIMD vectors of :func:`narrow_kernel`'s columns: half the tile's (at least one)."""
    return max(1, blk.NV // 2)


def _narrow_kernel_twin(kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c):
    _microkernel_twin(kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c, vectors=_narrow_nv(BLOCKING[A.dtype]))


@_jit.intrinsic(_narrow_kernel_twin)
def narrow_kernel(typingctx, kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c):
    """:func:`microkernel` on the first half of the tile's columns (NV / 2 SIMD vectors, NARROW_NR
    columns): a last panel of B at most that wide (its packed copy, zero-padded to NR) costs half
    the FMAs of the whole tile, which it spent on the padding. Zen 4, float32 (NR = 64), 192 x 512
    @ 512 x 96 (a panel and a half) ran as long as 192 x 512 x 128 on one thread (248 against 244
    us, OpenBLAS 187), 1.65x OpenBLAS's time on two."""
    return _tile_kernel(narrow=True)(typingctx, kc, A, aoff, B, boff, ldb, C, coff, ldc, load_c)


def _tile_typer(attr):
    def typer(typingctx, arr):
        nbt = _jit.nb_types
        if not isinstance(arr, nbt.Array) or arr.dtype not in (nbt.float32, nbt.float64):
            return None
        value = getattr(BLOCKING[np.dtype(str(arr.dtype))], attr)

        def codegen(context, builder, sig, args):
            return context.get_constant(nbt.intp, value)

        return nbt.intp(arr), codegen

    return typer


def _tile_constant(attr, what):
    """An intrinsic ``tile_<attr>(arr)``: :class:`Blocking`'s ``attr`` for ``arr``'s dtype, as a
    compile-time constant (``what`` says what it is)."""

    def typer(typingctx, arr):
        return _tile_typer(attr)(typingctx, arr)

    typer.__name__ = typer.__qualname__ = f"tile_{attr.lower()}"
    typer.__doc__ = f"{attr} ({what}) for ``arr``'s dtype, as a compile-time constant."
    return _jit.intrinsic(lambda arr: getattr(BLOCKING[arr.dtype], attr))(typer)


tile_mr = _tile_constant("MR", "rows of the micro-kernel's tile")
tile_nr = _tile_constant("NR", "columns of the micro-kernel's tile")
tile_jb = _tile_constant("JB", "B panels per pass of :func:`macro_kernel`'s row loop")
tile_narrow_nr = _tile_constant("NARROW_NR", "columns of :func:`narrow_kernel`'s tile")
tile_direct_m = _tile_constant("DIRECT_M", "most rows of A for which :func:`gemm_into` reads B in place")
tile_direct_bytes = _tile_constant("DIRECT_BYTES", "the most bytes of B :func:`gemm_into` reads in place")
tile_small_b_bytes = _tile_constant(
    "SMALL_B_BYTES", "the most bytes of a B read in place for any A up to SMALL_B_M rows"
)
tile_small_b_m = _tile_constant("SMALL_B_M", "most rows of A for which a B of SMALL_B_BYTES is read in place")
tile_l2_b_bytes = _tile_constant("L2_B_BYTES", "the most bytes of a B read in place for A of any height")


# --------------------------------------------------------------------------- packing
#
# Literal arguments: a compiled caller that passes a constant (``pack_a(op, 0, ...)``, ``True``) to
# another compiled function types it as a literal and compiles a separate specialisation of the
# callee for that value, besides the general one. Callers in compiled code pass run-time values
# instead (``zero = n - n``); one compile of the GEMM driver costs seconds.
#
# Indices are cast to unsigned (_U) in the copy loops: with a signed index Numba emits a
# negative-index wrap-around check per access, which keeps LLVM from vectorising the copy. Measured:
# packing a 1000 x 1000 B took 5.7 ms with signed and 0.42 ms with unsigned indices (the thin
# 37 x 1000 x 1000 product is mostly packing).
_U = _jit.U


class Operand(NamedTuple):
    """A ``rows x cols`` GEMM operand of any strides: element ``(i, j)`` is ``data[off + i*rs + j*cs]``.

    ``data`` is a read-only 1-D view of the memory the operand spans, so the packing routines and
    every driver that calls them compile once per dtype, whatever the operand's layout (C, F,
    transposed, sliced, negative strides, read-only): a 2-D array argument would compile them once
    per layout (see ``_jit``'s read-only views). Strides are in elements and may be negative.
    """

    data: np.ndarray
    off: int
    rs: int
    cs: int
    rows: int
    cols: int


def operand(x):
    """The :class:`Operand` of a 2-D float array: a view of its memory, copied only when a stride is
    not a whole number of elements."""
    return Operand(*operand_fields(x))


def operand_fields(x):
    """:func:`operand`'s fields as a plain tuple (what :func:`gemm_plain` takes)."""
    item = x.itemsize
    rows, cols = x.shape
    # C- or F-contiguous (the common cases): a flat read-only view, without as_strided's ~5 us
    if rows > 1 and cols > 1 and x.size:
        if x.flags.c_contiguous:
            return _intrinsics.readonly(x.reshape(-1)), 0, cols, 1, rows, cols
        if x.flags.f_contiguous:
            return _intrinsics.readonly(x.T.reshape(-1)), 0, 1, rows, rows, cols
    if any(st % item for st in x.strides):
        x = np.ascontiguousarray(x)
    if x.size == 0:
        return _intrinsics.readonly(np.empty(1, x.dtype)), 0, 0, 0, rows, cols
    # the view that starts at the lowest address spans the memory with positive strides
    low = x[tuple(slice(None, None, -1) if st < 0 else slice(None) for st in x.strides)]
    span = sum((n - 1) * abs(st) for n, st in zip(x.shape, x.strides, strict=True)) // item + 1
    data = np.lib.stride_tricks.as_strided(low, shape=(span,), strides=(item,), writeable=False)
    off = sum((n - 1) * -st for n, st in zip(x.shape, x.strides, strict=True) if st < 0) // item
    return data, off, x.strides[0] // item, x.strides[1] // item, rows, cols


@jit(inline="always")
def flat_operand(flat, off, rs, cs, rows, cols):
    """:class:`Operand` of a block of the 1-D array ``flat`` in compiled code (read-only typed)."""
    return Operand(_intrinsics.as_readonly(flat), off, rs, cs, rows, cols)


@jit(inline="always")
def borrowed_operand(op):
    """``op`` with its data borrowed (``_intrinsics.borrow``: no reference counting where it is
    passed to a call), for a task kernel's calls inside its loops (ARCHITECTURE.md, Numba
    discipline)."""
    return Operand(_intrinsics.borrow(op.data), op.off, op.rs, op.cs, op.rows, op.cols)


@jit(python_wrapper=False)
def aligned_empty(n, dtype_like):
    """Uninitialised 1-D scratch of ``n`` elements whose first element is 64-byte aligned."""
    size = dtype_like.itemsize
    raw = _intrinsics.empty(n + 64 // size, dtype_like.dtype)
    shift = ((64 - raw.ctypes.data % 64) % 64) // size
    return raw[shift : shift + n]


class Span(NamedTuple):
    """Rows ``i0 : i0 + rows`` of an operand at depth ``p0 : p0 + depth``: what :func:`pack_a` packs."""

    i0: int
    rows: int
    p0: int
    depth: int


@jit(python_wrapper=False)
def pack_a(a, span, alpha, row_scale, out, off):
    """Pack ``alpha * a[i0:i0+mc, p0:p0+kc]`` (``a`` an :class:`Operand`, ``span`` the :class:`Span`
    ``(i0, mc, p0, kc)``) into MR-tall micro-panels: ``out[off + panel, p, i]`` (:func:`pack_rows`).

    Folding ``alpha`` in here makes ``C += alpha * A @ B`` cost nothing extra (LU's trailing update
    uses alpha = -1). A non-empty ``row_scale`` also multiplies row ``i`` by ``row_scale[i]``
    (cosine similarity's inverse norms), again for free.
    """
    wide_vectors()
    i0, p0 = span.i0, span.p0
    at = a.off + i0 * a.rs + p0 * a.cs
    pack_rows(a.data, at, a.rs, a.cs, span.rows, span.depth, alpha, row_scale, i0, out, off)


def _i64_args(context, builder, sig, args, indices):
    """The integer arguments at ``indices`` of an intrinsic's call, as ``i64`` values."""
    return [context.cast(builder, args[i], sig.args[i], _jit.nb_types.int64) for i in indices]


def _data_args(context, builder, sig, args, indices):
    """Pointers to the data of the array arguments at ``indices`` of an intrinsic's call."""
    return [context.make_array(sig.args[k])(context, builder, args[k]).data for k in indices]


def row_block_steps(dtype):
    """Depth steps of one :func:`pack_row_block` into a panel of ``dtype``: a vector of the width
    fastla's loops use, at most 8 lanes. Packing all of a 1024 x 1024 float32 A (Zen 4): 0.13-0.16
    ms in blocks of 8 steps, 0.19-0.20 in blocks of 16 (a 16 x 16 transpose for 6 rows), 0.15-0.22
    in blocks of 4; float64 0.25 ms in blocks of 8, 0.23-0.24 in blocks of 4."""
    return min(8, _block_lanes(dtype))


def _row_block_lanes(d, alpha, row_scale, out):
    """:func:`row_block_steps` for these argument types where the source, ``alpha``, the row scale
    and the panel share one float dtype; 0 otherwise (those are packed element by element, with the
    scalar code's conversions)."""
    nbt = _jit.nb_types
    if not all(isinstance(a, nbt.Array) and a.ndim == 1 for a in (d, row_scale, out)):
        return 0
    if out.dtype not in (nbt.float32, nbt.float64) or out.layout != "C" or d.layout != "C":
        return 0
    if not (d.dtype == row_scale.dtype == out.dtype == alpha):
        return 0
    return row_block_steps(str(out.dtype))


def _row_block_lanes_typer(typingctx, d, alpha, row_scale, out):
    value = _row_block_lanes(d, alpha, row_scale, out)

    def codegen(context, builder, sig, args):
        return context.get_constant(_jit.nb_types.intp, value)

    return _jit.nb_types.intp(d, alpha, row_scale, out), codegen


#: ``row_block_lanes(d, alpha, row_scale, out)``: :func:`pack_row_block`'s depth steps for these
#: operands (0: no blocks), a compile-time constant
row_block_lanes = _jit.intrinsic(
    lambda d, alpha, row_scale, out: row_block_steps(out.dtype) if d.dtype == out.dtype else 0
)(_row_block_lanes_typer)


def _pack_row_block_twin(d, src, rs, alpha, row_scale, r, scaled, out, dst):
    """:func:`pack_row_block` as Python."""
    mr, v = BLOCKING[out.dtype].MR, row_block_steps(out.dtype)
    for t in range(mr):
        s = alpha * row_scale[r + t] if scaled else alpha
        for e in range(v):
            out[dst + e * mr + t] = s * d[src + t * rs + e]


@_jit.intrinsic(_pack_row_block_twin)
def pack_row_block(typingctx, d, src, rs, alpha, row_scale, r, scaled, out, dst):
    """One MR x v block (v = :func:`row_block_steps`) of an A micro-panel from rows with unit column
    stride: ``out[dst + e*MR + t] = s_t * d[src + t*rs + e]`` for ``t < MR, e < v``, where ``s_t`` is
    ``alpha * row_scale[r + t]`` when ``scaled``, else ``alpha``: :func:`pack_rows`'s values bit for
    bit. Row ``t`` is one vector load, times ``s_t``; the rows are transposed in registers
    (:func:`fastla._intrinsics.transpose_vectors`, in blocks of v rows when MR > v) and depth step
    ``e`` is one store of MR elements. The loop it replaces stored one element at a time, MR apart:
    packing all of a 1024 x 1024 A (MC x KC blocks) took 0.58 ms in float64 and 0.53 ms in float32,
    against 0.25 and 0.13-0.16 ms so (Zen 4). A store that spills into the next depth step's elements,
    which the next store overwrites, is a whole vector; one that would pass the block's end is
    masked. ``d``, ``row_scale`` and ``out`` are 1-D; the caller keeps the block inside them."""
    from llvmlite import ir

    nbt = _jit.nb_types
    if not all(isinstance(i, nbt.Integer) for i in (src, rs, r, dst)) or not isinstance(scaled, nbt.Boolean):
        return None
    v = _row_block_lanes(d, alpha, row_scale, out)
    sig = nbt.none(d, src, rs, alpha, row_scale, r, scaled, out, dst)
    if not v:  # row_block_lanes is 0 for such operands: its (unreached) call emits nothing
        return sig, lambda context, builder, sig, args: context.get_dummy_value()
    itemsize = np.dtype(str(out.dtype)).itemsize
    mr = BLOCKING[np.dtype(str(out.dtype))].MR

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        fty = context.get_value_type(sig.args[7].dtype)
        vty = ir.VectorType(fty, v)
        src_i, rs_i, r_i, dst_i = _i64_args(context, builder, sig, args, (1, 2, 5, 8))
        data, scale, panel = _data_args(context, builder, sig, args, (0, 4, 7))
        alpha = args[3]
        factors = []
        before = builder.basic_block
        with builder.if_then(args[6]):  # row_scale is read only when scaled (else it may be empty)
            scaled_factors = [
                builder.fmul(alpha, builder.load(builder.gep(scale, [builder.add(r_i, ir.Constant(i64, t))])))
                for t in range(mr)
            ]
            scaled_at = builder.basic_block
        for t in range(mr):
            phi = builder.phi(fty)
            phi.add_incoming(alpha, before)
            phi.add_incoming(scaled_factors[t], scaled_at)
            factors.append(phi)
        rows = []
        for t in range(mr):
            at = builder.add(src_i, builder.mul(rs_i, ir.Constant(i64, t)))
            x = builder.load(builder.bitcast(builder.gep(data, [at]), vty.as_pointer()), align=itemsize)
            rows.append(builder.fmul(_splat(builder, factors[t], vty), x))
        blocks = []  # (first row, rows, the block's depth steps as vectors of its rows)
        for c0 in range(0, mr, v):
            count = min(v, mr - c0)
            padded = rows[c0 : c0 + count] + [ir.Constant(vty, ir.Undefined)] * (v - count)
            blocks.append((c0, count, _intrinsics.transpose_vectors(builder, padded)))
        for e in range(v):  # in order: a store's spill past its MR elements is overwritten by the next
            for c0, count, steps in blocks:
                ptr = builder.bitcast(
                    builder.gep(panel, [builder.add(dst_i, ir.Constant(i64, e * mr + c0))]), vty.as_pointer()
                )
                if e * mr + c0 + v <= v * mr:
                    builder.store(steps[e], ptr, align=itemsize)
                else:
                    _intrinsics.masked_store(builder, steps[e], ptr, count, itemsize)
        return context.get_dummy_value()

    return sig, codegen


def _pack_col_panel_twin(d, src, cs, kc, alpha, row_scale, r, scaled, rows, out, dst):
    """:func:`pack_col_panel` as Python."""
    mr = BLOCKING[out.dtype].MR
    for t in range(mr):
        s = (alpha * row_scale[r + t] if scaled else alpha) if t < rows else 0
        for p in range(kc):
            out[dst + p * mr + t] = s * d[src + p * cs + t] if t < rows else 0


@_jit.intrinsic(_pack_col_panel_twin)
def pack_col_panel(typingctx, d, src, cs, kc, alpha, row_scale, r, scaled, rows, out, dst):
    """One MR-tall A micro-panel of ``rows`` rows (zero past them) from a source whose rows are
    contiguous at each depth step (unit row stride: ``A.T`` of a C-contiguous matrix, attention's
    values): ``out[dst + p*MR + t] = s_t * d[src + p*cs + t]`` for ``p < kc, t < rows``, 0 for
    ``rows <= t < MR``, ``s_t`` as in :func:`pack_row_block`: :func:`pack_rows`'s values bit for bit.
    Each depth step is one masked load of the rows, one multiply by the rows' factors and one store
    (in vectors of up to 8 lanes; a store's lanes past MR spill into the next step's, which that step
    overwrites, and only the last step's store is masked: AVX2's masked stores are slow on AMD),
    where the loop read and stored one element at a time, ``cs`` and MR apart. 1024^3 with A
    transposed against OpenBLAS on one thread (Zen 4, interleaved with the loop): float64 0.967x ->
    0.998x, float32 0.932x -> 0.992x; both operands transposed 0.955x -> 0.992x and 0.938x ->
    1.001x (then 1.018x and 1.003x with the unmasked stores). The two packers cost attention's cold
    first call ~0.05 s (2.91-3.19 s, median 3.08, against 2.96-3.04, median 3.01, five interleaved
    pairs). Operands as :func:`row_block_lanes` takes them (else nothing is emitted: the caller
    does not reach the call)."""
    from llvmlite import ir

    nbt = _jit.nb_types
    ints = (src, cs, kc, r, rows, dst)
    if not all(isinstance(i, nbt.Integer) for i in ints) or not isinstance(scaled, nbt.Boolean):
        return None
    sig = nbt.none(d, src, cs, kc, alpha, row_scale, r, scaled, rows, out, dst)
    if not _row_block_lanes(d, alpha, row_scale, out):
        return sig, lambda context, builder, sig, args: context.get_dummy_value()
    itemsize = np.dtype(str(out.dtype)).itemsize
    mr = BLOCKING[np.dtype(str(out.dtype))].MR
    w = min(row_block_steps(str(out.dtype)), 1 << (mr - 1).bit_length())

    def codegen(context, builder, sig, args):
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        fty = context.get_value_type(sig.args[9].dtype)
        vty = ir.VectorType(fty, w)
        mty = ir.VectorType(i1, w)
        src_i, cs_i, kc_i, r_i, rows_i, dst_i = _i64_args(context, builder, sig, args, (1, 2, 3, 6, 8, 10))
        data, scale, panel = _data_args(context, builder, sig, args, (0, 5, 9))
        suffix = f"v{w}f{8 * itemsize}.p0"
        load_fn = _intrinsics.llvm_function(
            builder, f"llvm.masked.load.{suffix}", vty, [vty.as_pointer(), i32, mty, vty]
        )
        zero = ir.Constant(vty, None)

        def masked_load(base, at, mask):
            ptr = builder.bitcast(builder.gep(base, [at]), vty.as_pointer())
            return builder.call(load_fn, [ptr, i32(itemsize), mask, zero])

        alpha = _splat(builder, args[4], vty)
        chunks = []  # (first row, lanes stored, lanes read: rows < ``rows``, the rows' factors)
        for c0 in range(0, mr, w):
            lanes = min(w, mr - c0)
            index = ir.Constant(ir.VectorType(i64, w), [c0 + j for j in range(w)])
            live = builder.icmp_signed("<", index, _splat(builder, rows_i, ir.VectorType(i64, w)))
            live = builder.and_(live, ir.Constant(mty, [1] * lanes + [0] * (w - lanes)))
            before = builder.basic_block
            with builder.if_then(args[7]):  # row_scale is read only when scaled (else it may be empty)
                scaled_f = builder.fmul(
                    alpha, masked_load(scale, builder.add(r_i, ir.Constant(i64, c0)), live)
                )
                scaled_at = builder.basic_block
            factors = builder.phi(vty)
            factors.add_incoming(alpha, before)
            factors.add_incoming(scaled_f, scaled_at)
            chunks.append((c0, lanes, live, factors))

        def depth_step(p, last):
            step = builder.add(src_i, builder.mul(p, cs_i))
            at = builder.add(dst_i, builder.mul(p, ir.Constant(i64, mr)))
            for c0, lanes, live, factors in chunks:
                x = masked_load(data, builder.add(step, ir.Constant(i64, c0)), live)
                y = builder.select(live, builder.fmul(factors, x), zero)
                ptr = builder.bitcast(
                    builder.gep(panel, [builder.add(at, ir.Constant(i64, c0))]), vty.as_pointer()
                )
                if lanes == w or not last:  # a spill past the step is the next step's, stored after
                    builder.store(y, ptr, align=itemsize)
                else:
                    _intrinsics.masked_store(builder, y, ptr, lanes, itemsize)

        last = builder.sub(kc_i, ir.Constant(i64, 1))
        with _intrinsics.counted_loop(builder, last) as loop:
            depth_step(loop.index, False)
        with builder.if_then(builder.icmp_signed(">=", last, ir.Constant(i64, 0))):
            depth_step(last, True)
        return context.get_dummy_value()

    return sig, codegen


@jit(inline="always")
def pack_rows(d, at, rs, cs, mc, kc, alpha, row_scale, r0, out, off):
    """Pack the ``mc x kc`` matrix whose element ``(i, p)`` is ``d[at + i*rs + p*cs]``, times ``alpha``
    (and ``row_scale[r0 + i]`` when ``row_scale`` is not empty), into MR-tall micro-panels
    ``out[off + (i // MR) * kc * MR + p * MR + i % MR]``: :func:`pack_a`'s step, and attention's
    packing of its keys and values inside its own kernel.

    Rows past ``mc`` are zero so that edge tiles run the same micro-kernel. Where the source's
    dtype is the panel's: whole panels of rows with a unit column stride are packed in blocks
    (:func:`pack_row_block`, the steps past the last block by the loop), and panels with a unit
    row stride (``A.T``, attention's values) a vector per depth step (:func:`pack_col_panel`); the
    loop packs the rest element by element (a unit column stride in a loop of its own, whose
    contiguous reads LLVM vectorises). (Attention's values copied by depth step as a loop nest of
    their own packed 16-20% faster but added 0.25 s to its cold first call, 2.7 -> 2.96 s; the
    intrinsic adds nothing measurable.)
    """
    mr = tile_mr(out)
    v = row_block_lanes(d, alpha, row_scale, out)
    scaled = row_scale.size > 0
    for ir in range(0, mc, mr):
        base = off + (ir // mr) * kc * mr
        rows = min(mr, mc - ir)
        if v and rs == 1 and cs != 1:  # each depth step's rows contiguous: a vector per step
            pack_col_panel(d, at + ir, cs, kc, alpha, row_scale, r0 + ir, scaled, rows, out, base)
            continue
        p0 = 0  # depth steps packed in blocks of v: whole panels with contiguous rows
        if v and cs == 1 and rows == mr:
            while p0 + v <= kc:
                pack_row_block(
                    d, at + ir * rs + p0, rs, alpha, row_scale, r0 + ir, scaled, out, base + p0 * mr
                )
                p0 += v
        for i in range(rows):
            s = alpha * row_scale[_U(r0 + ir + i)] if scaled else alpha
            row = at + (ir + i) * rs
            if cs == 1:
                for p in range(p0, kc):
                    out[_U(base + p * mr + i)] = s * d[_U(row + p)]
            else:
                for p in range(kc):
                    out[_U(base + p * mr + i)] = s * d[_U(row + p * cs)]
        for i in range(rows, mr):
            for p in range(kc):
                out[_U(base + p * mr + i)] = 0


@jit(python_wrapper=False)
def pack_b_panel(b, p0, kc, j0, cols, col_scale, out, off):
    """Pack ``b[p0:p0+kc, j0:j0+cols]`` (``b`` an :class:`Operand`) into one NR-wide micro-panel
    ``out[off + p * NR + j]``, zero past ``cols``; a non-empty ``col_scale`` multiplies column
    ``j`` by ``col_scale[j0 + j]``. (Float16 operands: :func:`pack_b_half_panel`.)

    Contiguous columns (``b.rs == 1``: ``B.T`` of a row-major matrix, a dense layer's ``x @ W.T``,
    the top-k corpus) go in whole v x v blocks (:func:`pack_block`), the rest element by element
    (:func:`pack_elements`). Measured (Zen 4, float32 1024 x 1024 @ B.T, 2 threads): 11.5-11.8 ->
    10.1-10.3 ms; float64 1 thread 42.1-42.2 -> 41.2-41.3 ms, 256 x 256 2 threads 0.38 -> 0.36 ms;
    the top-k corpus (100 000 x 256 float32, read from memory) and cosine's 2000 x 256 rows within
    noise. One function, not a wrapper around an inlined packer: Numba's inlining of that packer
    (its untyped passes run again, its IR deep-copied block by block) cost every cold first call
    that packs B ~0.2 s (solve at n = 300, Zen 4, three interleaved pairs: 3.21-3.29 -> 3.03-3.04 s).
    """
    wide_vectors()
    d, rs, cs = b.data, b.rs, b.cs
    at = b.off + p0 * rs + j0 * cs
    scaled = col_scale.size > 0
    nr = tile_nr(out)
    v = block_lanes(d, out)
    pv = kc - kc % v if rs == 1 and v > 0 else 0
    jv = cols - cols % v if pv > 0 else 0
    step = max(v, 1)  # (a range's step must not be 0, even where the range is empty)
    for j in range(0, jv, step):
        for p in range(0, pv, step):
            pack_block(d, _U(at + p + j * cs), cs, col_scale, _U(j0 + j), scaled, out, _U(off + p * nr + j))
    pack_elements(d, at, rs, cs, kc, cols, col_scale, j0, out, off, pv, jv)


def _block_lanes(dtype, source=None):
    """Columns (and depth) of one block of :func:`pack_block` for a panel of ``dtype`` packed from
    elements of ``source`` (default: the same): a vector of the width fastla's loops use
    (:func:`fastla._host.vector_bytes`); 0 when the two differ (integers, mixed floats: those are
    packed element by element, with the scalar code's conversions)."""
    if source is not None and np.dtype(source) != np.dtype(dtype):
        return 0
    return max(1, _host.vector_bytes() // np.dtype(dtype).itemsize)


def _block_lanes_typer(typingctx, src, out):
    nbt = _jit.nb_types
    if not isinstance(out, nbt.Array) or out.dtype not in (nbt.float32, nbt.float64):
        return None
    if not isinstance(src, nbt.Array):
        return None
    value = _block_lanes(str(out.dtype), str(src.dtype))

    def codegen(context, builder, sig, args):
        return context.get_constant(nbt.intp, value)

    return nbt.intp(src, out), codegen


#: ``block_lanes(src, out)``: :func:`pack_block`'s block size for a panel ``out`` packed from ``src``
#: (0: no blocks), a compile-time constant
block_lanes = _jit.intrinsic(lambda src, out: _block_lanes(out.dtype, src.dtype))(_block_lanes_typer)


def _pack_block_twin(d, src, cs, scale, s0, scaled, out, dst, v=None, read=lambda x: x):
    """:func:`pack_block` as Python (and :func:`pack_half_block`'s, with ``read`` widening)."""
    v, nr = _block_lanes(out.dtype, d.dtype) if v is None else v, BLOCKING[out.dtype].NR
    for t in range(v):
        for e in range(v):
            x = read(d[src + e + t * cs])
            out[dst + e * nr + t] = x * scale[s0 + t] if scaled else x


@_jit.intrinsic(_pack_block_twin)
def pack_block(typingctx, d, src, cs, scale, s0, scaled, out, dst):
    """One v x v block (v = :func:`block_lanes`) of a panel whose columns are contiguous:
    ``out[dst + e*NR + t] = d[src + e + t*cs]`` (times ``scale[s0 + t]`` when ``scaled``) for
    ``t, e < v``. Column ``t`` is one vector load, the block is transposed in registers
    (:func:`fastla._intrinsics.transpose_vectors`) and row ``e`` is one vector store, where the
    packing loop gathered a column's elements one by one across rows ``cs`` apart (the top-k
    corpus, ``B.T`` of a product). The same products as the loop: bit for bit
    its values. ``d``, ``scale`` and ``out`` are 1-D; the caller keeps the block inside them."""
    nbt = _jit.nb_types
    if isinstance(d, nbt.Array) and isinstance(out, nbt.Array) and d.dtype != out.dtype:
        # block_lanes is 0 for such a source: its (unreached) call emits nothing
        return nbt.none(d, src, cs, scale, s0, scaled, out, dst), lambda context, builder, sig, args: None
    return _pack_block_typer(False, d, src, cs, scale, s0, scaled, out, dst)


def _pack_half_block_twin(d, src, cs, scale, s0, scaled, out, dst):
    v = _block_lanes(out.dtype)
    _pack_block_twin(d, src, cs, scale, s0, scaled, out, dst, v, _intrinsics._widen_twin)


@_jit.intrinsic(_pack_half_block_twin)
def pack_half_block(typingctx, d, src, cs, scale, s0, scaled, out, dst):
    """:func:`pack_block` of float16 bits (``d`` a ``uint16`` array) into a float32 panel: each
    column's v elements one load, widened exactly (``fpext``, as :func:`fastla._intrinsics.widen`)."""
    nbt = _jit.nb_types
    if not (isinstance(d, nbt.Array) and d.dtype == nbt.uint16):
        return None
    if not (isinstance(out, nbt.Array) and out.dtype == nbt.float32):
        return None
    return _pack_block_typer(True, d, src, cs, scale, s0, scaled, out, dst)


def _pack_block_typer(half, d, src, cs, scale, s0, scaled, out, dst):
    """Signature and code generation of :func:`pack_block` (``half``: of :func:`pack_half_block`)."""
    from llvmlite import ir

    nbt = _jit.nb_types
    if not all(isinstance(a, nbt.Array) and a.ndim == 1 for a in (d, scale, out)) or out.layout != "C":
        return None
    if scale.dtype != out.dtype:
        return None
    if out.dtype not in (nbt.float32, nbt.float64) or not all(
        isinstance(i, nbt.Integer) for i in (src, cs, s0, dst)
    ):
        return None
    if not isinstance(scaled, nbt.Boolean):
        return None
    itemsize = np.dtype(str(out.dtype)).itemsize
    v, nr = _block_lanes(str(out.dtype)), BLOCKING[np.dtype(str(out.dtype))].NR
    sig = nbt.none(d, src, cs, scale, s0, scaled, out, dst)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        fty = context.get_value_type(sig.args[6].dtype)
        vty = ir.VectorType(fty, v)
        src_i, cs_i, s0_i, dst_i = _i64_args(context, builder, sig, args, (1, 2, 4, 7))

        def element(k, val, at):  # pointer to element ``at`` of 1-D array argument k, any stride
            arr = context.make_array(sig.args[k])(context, builder, val)
            if sig.args[k].layout == "C":
                return builder.gep(arr.data, [at])
            stride = builder.extract_value(arr.strides, 0)
            raw = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
            return builder.bitcast(builder.gep(raw, [builder.mul(at, stride)]), arr.data.type)

        def load(k, val, at):  # v elements from ``at`` of array argument k, as the panel's floats
            ety = context.get_value_type(sig.args[k].dtype)
            lty = ir.VectorType(ety, v)
            if sig.args[k].layout == "C":
                ptr = builder.bitcast(element(k, val, at), lty.as_pointer())
                vec = builder.load(ptr, align=np.dtype(str(sig.args[k].dtype)).itemsize)
            else:
                vec = ir.Constant(lty, ir.Undefined)
                for e in range(v):
                    x = builder.load(element(k, val, builder.add(at, ir.Constant(i64, e))))
                    vec = builder.insert_element(vec, x, ir.Constant(ir.IntType(32), e))
            if half and k == 0:  # float16 bits: exactly widened
                return builder.fpext(builder.bitcast(vec, ir.VectorType(ir.HalfType(), v)), vty)
            return vec

        cols = [
            load(0, args[0], builder.add(src_i, builder.mul(cs_i, ir.Constant(i64, t)))) for t in range(v)
        ]
        rows = _intrinsics.transpose_vectors(builder, cols)
        before = builder.basic_block
        with builder.if_then(args[5]):  # scale[s0:] is read only when scaled (else it may be empty)
            factors = load(3, args[3], s0_i)
            products = [builder.fmul(r, factors) for r in rows]
            scaled_at = builder.basic_block
        merged = [builder.phi(vty) for _ in range(v)]  # phis first in their block
        for e, row in enumerate(merged):
            row.add_incoming(rows[e], before)
            row.add_incoming(products[e], scaled_at)
        for e, row in enumerate(merged):
            at = builder.add(dst_i, ir.Constant(i64, e * nr))
            builder.store(row, builder.bitcast(element(6, args[6], at), vty.as_pointer()), align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


@jit(inline="always")
def pack_elements(d, at, rs, cs, kc, cols, col_scale, c0, out, off, pv, jv):
    """:func:`pack_b_panel` element by element, but for the columns before ``jv`` at the depths before
    ``pv`` (packed already: pass 0 and 0 for the whole matrix). Attention packs its query blocks
    by this alone: the blocks' code cost its cold first call 0.3 s, for 64 query rows a block."""
    nr = tile_nr(out)
    scaled = col_scale.size > 0
    for p in range(kc):
        row = off + p * nr
        src = at + p * rs
        j0 = jv if p < pv else 0
        if scaled:
            for j in range(j0, cols):
                out[_U(row + j)] = d[_U(src + j * cs)] * col_scale[_U(c0 + j)]
        elif cs == 1:
            for j in range(j0, cols):
                out[_U(row + j)] = d[_U(src + j)]
        else:
            for j in range(j0, cols):
                out[_U(row + j)] = d[_U(src + j * cs)]
        for j in range(cols, nr):
            out[_U(row + j)] = 0


@jit(python_wrapper=False)
def pack_b_half_panel(b, p0, kc, j0, cols, col_scale, out, off):
    """:func:`pack_b_panel` for ``b.data`` holding float16 bits (``uint16``, read as float32 through
    :func:`fastla._intrinsics.widen`), any strides. Contiguous columns (``B.T`` of a C-contiguous
    float16 matrix: the corpus of top-k) go in whole v x v blocks (:func:`pack_half_block`: a
    column's v elements one load, widened, the block transposed in registers); the rest, and other
    strides, a column v deep at a time, written down the panel's rows (in L1: on Zen 5, 256 x 10 000
    scaled, that order took 0.75-1.2 ms against 5.5 ms reading across the columns and 2.1-2.5 ms a
    whole column at a time, whose 256 panel rows do not stay in L1). Measured (Zen 4, 1000
    queries over a 100 000 x 256 float16 corpus, k = 10): the element loop alone took 1.7x the
    samples of the float32 corpus's packing, by blocks 0.8x as many as before; the search 257-271 ->
    241-244 ms, 0.92-1.01x -> 1.02-1.04x the speed of the same search over the float32 copy. A
    function of its own (a ``uint16`` operand may be integers: only the top-k's float16 corpus is
    widened): as a branch of :func:`pack_b_panel` it cost every float GEMM's cold compile ~0.2 s."""
    wide_vectors()
    nr = tile_nr(out)
    scaled = col_scale.size > 0
    d = b.data
    rs, cs = b.rs, b.cs
    at0 = b.off + p0 * rs + j0 * cs
    v = block_lanes(out, out)
    pv = kc - kc % v if rs == 1 else 0
    jv = cols - cols % v if pv > 0 else 0
    for j in range(0, jv, v):
        for p in range(0, pv, v):
            pack_half_block(
                d, _U(at0 + p + j * cs), cs, col_scale, _U(j0 + j), scaled, out, _U(off + p * nr + j)
            )
    for pb in range(0, kc, v):
        depth = min(v, kc - pb)
        for j in range(jv if pb < pv else 0, cols):
            at = at0 + pb * rs + j * cs
            s = col_scale[_U(j0 + j)] if scaled else np.float32(1)
            for p in range(depth):
                out[_U(off + (pb + p) * nr + j)] = widen(d[_U(at + p * rs)]) * s
        for j in range(cols, nr):
            for p in range(depth):
                out[_U(off + (pb + p) * nr + j)] = 0


@jit(python_wrapper=False)
def macro_kernel(ap, bsrc, bp, c, tile, at):
    """All micro-kernel calls of one packed (MC x KC) A block against ``npan`` panels of B.

    ``C (+)= A_block @ B_slab`` on the ``mc x nc`` block of the flat ``c`` at ``coff`` (row stride
    ``ldc``), the packed block at ``ap[aoff:]``, all from ``at`` (a :class:`Block`); ``tile`` is
    MR*NR scratch for the edge tiles. Full panel ``jp`` of B is read from ``bsrc`` at ``b0 + jp *
    bstep``, rows ``ldb`` apart: packed panels (``bsrc`` is ``bp``), or B itself in place (see
    :func:`gemm_into`); a narrower last panel from its packed copy in ``bp`` (``jp * kc * NR``),
    unless it is NARROW_NR wide: then from ``bsrc`` as a full one (B in place has those columns,
    and a packed panel sits at that place), by :func:`narrow_kernel`, which also takes any panel
    at most that wide. The panels go in passes of JB (L2), each pass row panel by row panel, so that an A
    micro-panel stays in L1 across the pass (see the module docstring).
    """
    aoff, npan, kc, mc, nc = at.aoff, at.npan, at.kc, at.mc, at.nc
    coff, ldc, load_c = at.coff, at.ldc, at.load_c
    mr = tile_mr(c)
    nr = tile_nr(c)
    jb = tile_jb(c)
    narrow = tile_narrow_nr(c)
    # borrowed, not counted: each micro-kernel call below binds its B source to ``src``, and each
    # binding counted the owner's references up and down, two atomics on a cache line the threads
    # share (12% of the samples of a two-thread 2000x256x256 float64 product, AMD EPYC znver2)
    bw = _intrinsics.borrow
    ap, bsrc, c, tile = bw(ap), bw(bsrc), bw(c), bw(tile)
    packed = bw(_intrinsics.as_readonly(bp))
    for j0 in range(0, npan, jb):
        for ir in range(0, mc, mr):
            rows = min(mr, mc - ir)
            a_at = aoff + (ir // mr) * kc * mr
            for jp in range(j0, min(npan, j0 + jb)):
                cols = min(nr, nc - jp * nr)
                src, boff, ldb = bsrc, at.b0 + jp * at.bstep, at.ldb
                if cols < nr and cols != narrow:  # a narrow kernel's width: where bsrc has it
                    src, boff, ldb = packed, jp * kc * nr, nr
                c_at = coff + ir * ldc + jp * nr
                if cols == nr and rows <= EDGE_MR:
                    edge_kernel(kc, ap, a_at, src, boff, ldb, c, c_at, ldc, load_c, rows)
                    continue
                if rows == mr and cols == nr:
                    microkernel(kc, ap, a_at, src, boff, ldb, c, c_at, ldc, load_c)
                    continue
                # an edge: into the scratch tile (half its columns for a panel at most that
                # narrow), then its rows and columns into C
                if cols <= narrow:
                    if rows == mr and cols == narrow:
                        narrow_kernel(kc, ap, a_at, src, boff, ldb, c, c_at, ldc, load_c)
                        continue
                    narrow_kernel(kc, ap, a_at, src, boff, ldb, tile, 0, nr, False)
                else:
                    microkernel(kc, ap, a_at, src, boff, ldb, tile, 0, nr, False)
                for i in range(rows):
                    for j in range(cols):
                        ci = _U(c_at + i * ldc + j)
                        c[ci] = c[ci] + tile[_U(i * nr + j)] if load_c else tile[_U(i * nr + j)]


class Block(NamedTuple):
    """Where one thread's step of :func:`gemm_into` works: rows ``i0:i0+mc`` of A against the
    ``npan`` panels (``nc`` columns) of B at depth ``pc:pc+kc``; its packed A block starts at
    ``aoff`` and its C block at ``coff`` (row stride ``ldc``), added to when ``load_c``. Full panel
    ``jp`` of B starts at ``b0 + jp * bstep`` of its source, rows ``ldb`` apart (packed: ``0``,
    ``kc * NR``, ``NR``; see :func:`macro_kernel`)."""

    i0: int
    mc: int
    pc: int
    kc: int
    aoff: int
    npan: int
    nc: int
    coff: int
    ldc: int
    load_c: bool
    b0: int
    bstep: int
    ldb: int


@jit(python_wrapper=False)
def a_block(a, alpha, row_scale, ap, bsrc, bp, c, tile, at):
    """One thread's step of the packed GEMM: pack its block of A (``at``, a :class:`Block`) and
    multiply it by B's panels (``bsrc`` and ``bp``: see :func:`macro_kernel`) into C (both steps
    through their symbols: compiled once, not again inside each caller)."""
    _ool(pack_a, (a, Span(at.i0, at.mc, at.pc, at.kc), alpha, row_scale, ap, at.aoff))
    _ool(macro_kernel, (ap, bsrc, bp, c, tile, at))


class Sweep(NamedTuple):
    """One rank-KC update of :func:`gemm_into` over its row blocks: ``m`` rows of A in blocks of
    ``mc`` (packed ``mc_pad`` tall) at depth ``pc:pc+kc`` against ``npan`` panels (``nc`` columns)
    of B, full panel ``jp`` at ``b0 + jp * bstep``, rows ``ldb`` apart (:class:`Block`); C's block
    starts at ``coff`` (row stride ``ldc``), added to when ``load_c``. ``slots`` is the number of
    rows of the sweep's parallel loop (``fastla._intrinsics.claimed_tasks``): each row claims the
    next row block, packs A into the row's slot of the packed-A buffer (and uses its edge tile), and
    one thread runs a row at a time, so no two blocks in flight share a slot."""

    m: int
    mc: int
    mc_pad: int
    pc: int
    kc: int
    npan: int
    nc: int
    coff: int
    ldc: int
    load_c: bool
    b0: int
    bstep: int
    ldb: int
    slots: int


@jit(python_wrapper=False)
def a_block_task(a, alpha, row_scale, ap, bsrc, bp, c, scratch, sw, ib, slot):
    """Task ``ib`` of a :class:`Sweep` (claimed by row ``slot``: ``fastla._intrinsics.claimed_tasks``):
    row block ``ib`` (:func:`a_block`), packed into the row's slot of ``ap``, with the row's MR x NR
    edge tile of ``scratch``."""
    mr = tile_mr(c)
    nr = tile_nr(c)
    i0 = ib * sw.mc
    mc = min(sw.mc, sw.m - i0)
    aoff, coff = slot * sw.mc_pad * sw.kc, sw.coff + i0 * sw.ldc
    at = Block(i0, mc, sw.pc, sw.kc, aoff, sw.npan, sw.nc, coff, sw.ldc, sw.load_c, sw.b0, sw.bstep, sw.ldb)
    # borrowed: every thread's tasks share these arrays' owners (see macro_kernel)
    bw = _intrinsics.borrow
    tile = bw(scratch)[slot * mr * nr : (slot + 1) * mr * nr]
    a_block(borrowed_operand(a), alpha, bw(row_scale), bw(ap), bw(bsrc), bw(bp), bw(c), tile, at)


@jit(python_wrapper=False)
def pack_b_task(b, pc, kc, jc, nc, col_scale, bp, jp, row):
    """Task ``jp`` (claimed by any ``row``): panel ``jp`` of B's slab ``pc:pc+kc`` x ``jc:jc+nc``
    (:func:`pack_b_panel`, through its symbol)."""
    nr = tile_nr(bp)
    cols = min(nr, nc - jp * nr)
    bw = _intrinsics.borrow  # (see a_block_task)
    _ool(pack_b_panel, (borrowed_operand(b), pc, kc, jc + jp * nr, cols, bw(col_scale), bw(bp), jp * kc * nr))


class Dest(NamedTuple):
    """Where a GEMM writes C: the m x n block of the flat array ``c`` that starts at ``off`` with row
    stride ``ld`` (unit column stride): a whole C-contiguous result, or a sub-block of a larger
    matrix (LU's trailing update)."""

    c: np.ndarray
    off: int
    ld: int


class Tasks(NamedTuple):
    """The entry addresses of :func:`gemm_into`'s two task kernels, :func:`a_block_task` and
    :func:`pack_b_task` (:data:`A_BLOCK_TASK`, :data:`PACK_B_TASK`; see :func:`tiles`), or None to
    run them linked and serially (``fastla.kernels`` inside a user's code)."""

    a_block: int | None
    pack_b: int | None


class Tiles(NamedTuple):
    """One GEMM call's cache blocking (see :class:`Blocking`): the depth of a rank-k update (KC),
    the rows of A per packed block (MC) and the columns of B per packed slab (NC); how it reaches
    its task kernels (a :class:`Tasks`; see :func:`tiles`) and on how many threads; and ``work``,
    scratch of C's dtype for the packed operands (:func:`workspace`), or too short (empty): then
    the call allocates its own."""

    kc: int
    mc: int
    nc: int
    tasks: Tasks
    threads: int
    work: np.ndarray


@jit(inline="always")
def work_parts(slots, mc_pad, kc, nc_pad, mr, nr):
    """Elements of :func:`gemm_into`'s scratch: the packed A blocks (one ``mc_pad x kc`` block per
    thread slot), the packed B slab (``kc x nc_pad``) and the edge tiles (one ``mr x nr`` per slot),
    the first two rounded up to 16 elements (64-byte multiples, so that each part starts aligned)."""
    return -(-(slots * mc_pad * kc) // 16) * 16, -(-(nc_pad * kc) // 16) * 16, slots * mr * nr


class _Workspaces(threading.local):
    def __init__(self):
        self.by_dtype = {}


_WORKSPACES = _Workspaces()


def workspace(dtype, elements, purpose="gemm"):
    """A 64-byte-aligned 1-D scratch of at least ``elements`` of ``dtype`` for :func:`gemm_into`'s
    packed operands (or for another ``purpose``'s, each its own), kept for this Python thread and
    reused by its next call (grown when a call needs more). The GEMM's is bounded by the blocking
    (``threads`` A blocks of MC x KC, one KC x NC slab of B), not by the product: a few MiB.
    Allocated per call (one packed A block per row block, before), the packed buffers came from
    fresh pages whenever the allocator had given the last call's back to the system (glibc trims the
    heap's top and maps large blocks anew), so that a product's speed hung on what the process had
    allocated before. Measured on Zen 4 (float64, one thread, a fresh process, page faults and min
    time a call): 256^3 226 faults, 1.07 ms -> 0 faults, 0.66 ms; 384^3 640 faults, 3.19 -> 2.13
    ms; 512^3 993 faults, 6.66 -> 5.10 ms (OpenBLAS 0.64, 2.11 and 5.04 ms)."""
    dtype = np.dtype(dtype)
    have = _WORKSPACES.by_dtype.get((purpose, dtype))
    if have is None or have.size < elements:
        raw = np.empty(elements + 64 // dtype.itemsize, dtype)
        shift = (-raw.ctypes.data % 64) // dtype.itemsize
        have = _WORKSPACES.by_dtype[(purpose, dtype)] = raw[shift : shift + elements]
    return have


def b_in_place(data, packed):
    """``(True, data)`` when the micro-kernel can read B's memory ``data`` in place (it holds C's
    dtype: ``packed``'s), else ``(False, packed)``; either read-only typed (one type for the
    macro-kernel's calls). Decided at compile time: an integer B of ``fastla.kernels.gemm`` is
    converted by the packing, and has no in-place form to compile."""
    same = data.dtype == packed.dtype
    return same, _intrinsics.readonly(data if same else packed)


@_jit.overload(b_in_place)
def _b_in_place_typer(data, packed):
    if data.dtype == packed.dtype:
        return lambda data, packed: (True, data)
    return lambda data, packed: (False, _intrinsics.as_readonly(packed))


@jit(python_wrapper=False)
def gemm_into(a, b, dst, alpha, accumulate, row_scale, col_scale, tiles):
    """``C = alpha * diag(row_scale) @ a @ b @ diag(col_scale)`` (or ``C += ...`` when ``accumulate``).

    ``a`` and ``b`` are :class:`Operand` s (any strides), ``dst`` a :class:`Dest`, ``tiles`` a
    :class:`Tiles`. Empty ``row_scale``/``col_scale`` mean no scaling. The first rank-KC update
    stores into C without reading it, so ``C = ...`` costs no zeroing pass. The panels of B and
    the row blocks of A are parallel tasks (``fastla._intrinsics.parallel_tasks``, on
    ``tiles.threads`` threads): no ``prange``, whose libraries took ~1 s of the cold compile of
    every op built on this driver.
    """
    c, coff, ldc = dst.c, dst.off, dst.ld
    a_block_at, pack_b_at = tiles.tasks.a_block, tiles.tasks.pack_b
    kc_max, mc_max, nc_max, threads = tiles.kc, tiles.mc, tiles.nc, tiles.threads
    mr = tile_mr(c)
    nr = tile_nr(c)
    narrow = tile_narrow_nr(c)
    m, k = a.rows, a.cols
    n = b.cols
    if m == 0 or n == 0:
        return
    if k == 0:  # rare: a serial loop, not another parallel region to compile
        if not accumulate:
            for i in range(m):
                for j in range(n):
                    c[_U(coff + i * ldc + j)] = 0
        return
    n_ic = (m + mc_max - 1) // mc_max
    slots = max(1, min(threads, n_ic))  # the row-block loop's threads (see Sweep)
    mc_pad = (mc_max + mr - 1) // mr * mr
    # the rank-KC updates split the depth evenly (as OpenBLAS's driver halves its last two), not a
    # thin last one: one thread, float64, AMD EPYC znver2, medians of 9 back-to-back calls, two runs:
    # 37x1000x1000 (334 x 3 against 384, 384, 232) 2.30-2.31 -> 2.26-2.27 ms, 1000x1100x1000 with
    # KC 512 48.3 -> 46.8, 1023^3 and 500x700x500 within 1%
    steps = (k + kc_max - 1) // kc_max
    kc_max = (k + steps - 1) // steps
    nc_pad = (min(nc_max, n) + nr - 1) // nr * nr
    a_len, b_len, s_len = work_parts(slots, mc_pad, kc_max, nc_pad, mr, nr)
    work = tiles.work
    if work.size < a_len + b_len + s_len:
        work = aligned_empty(a_len + b_len + s_len, c)
    ap = work[:a_len]
    bp = work[a_len : a_len + b_len]
    scratch = work[a_len + b_len : a_len + b_len + s_len]
    # few rows of A: the micro-kernel reads B's rows in place (BLIS's "sup" idea), as packing B
    # would cost as much as the product (see DIRECT_M), and so it does a B that fits L2 for any
    # A (L2_B_BYTES) or up to SMALL_B_BYTES (AMD: an eighth of L3) for A of up to SMALL_B_M rows; only
    # a narrower last panel is packed
    readable, in_place = b_in_place(b.data, bp)
    b_bytes = k * abs(b.rs) * c.itemsize
    direct = readable and b.cs == 1 and col_scale.size == 0
    few_rows = m <= tile_direct_m(c) and b_bytes <= tile_direct_bytes(c)
    small_b = b_bytes <= tile_l2_b_bytes(c) or (m <= tile_small_b_m(c) and b_bytes <= tile_small_b_bytes(c))
    direct = direct and (few_rows or small_b)
    bsrc = in_place if direct else _intrinsics.as_readonly(bp)
    for jc in range(0, n, nc_max):
        nc = min(nc_max, n - jc)
        npan = (nc + nr - 1) // nr
        for pc in range(0, k, kc_max):
            kc = min(kc_max, k - pc)
            load_c = accumulate or pc > 0
            # packed from column `first` on: all of them, or in place only the narrower last
            # panel (none when nc is whole panels, or ends in one exactly as wide as the narrow
            # kernel's tile, which reads it in place: see macro_kernel), where the packed panels
            # would be
            first = nc // nr * nr if direct else 0
            if direct and nc - first == narrow:
                first = nc
            panels = (b, pc, kc, jc + first, nc - first, col_scale, bp[first * kc :])
            _intrinsics.claimed_tasks(pack_b_at, pack_b_task, panels, (nc - first + nr - 1) // nr, threads)
            b0, bstep, ldb = 0, kc * nr, nr
            if direct:
                b0, bstep, ldb = b.off + pc * b.rs + jc, nr, b.rs
            sw = Sweep(m, mc_max, mc_pad, pc, kc, npan, nc, coff + jc, ldc, load_c, b0, bstep, ldb, slots)
            blocks = (a, alpha, row_scale, ap, bsrc, bp, c, scratch, sw)
            _intrinsics.claimed_tasks(a_block_at, a_block_task, blocks, n_ic, threads)


@jit(parallel=True)
def vt_times_a(vp, a, out, edge, kc):
    """``out[t] = Vᵀ A[rows of band t]`` for thin V (n x b, ``V.T`` packed by :func:`pack_a` into
    ``vp``) and a C-contiguous ``a`` (n x m) read *in place*, never packed; ``out.sum(0)`` is ``Vᵀ A``.

    Used where the product is memory-bound (subspace iteration's ``A V`` with A symmetric): packing
    A would triple the traffic over A. There are ``out.shape[0]`` bands, a fixed count, so the bits
    are the same at any thread count. A thread streams band ``t``'s rows of ``a`` sequentially,
    ``kc`` rows at a time (an L2-sized chunk), and runs the micro-kernel on each NR-wide column
    strip of the chunk against every MR-tall panel of Vᵀ, accumulating into the band's partial
    result ``out[t]`` (``ceil(b/MR)*MR x ceil(m/NR)*NR``). Walking column strips of the whole
    matrix instead (one thread per strip) read A 256 rows x 256 bytes at a time and ran 3x slower
    than a matrix-vector product (TLB and prefetch misses). The ragged last column strip is first
    copied into ``edge`` (n x NR, zero padded) so that its rows can be read NR wide.
    """
    n, m = a.shape
    mr = tile_mr(a)
    nr = tile_nr(a)
    bands = out.shape[0]
    npb = out.shape[1] // mr
    m_pad = out.shape[2]
    ncb = m_pad // nr
    full = m // nr
    a_flat = a.reshape(n * m)
    if full < ncb:
        j0 = full * nr
        for p in prange(n):
            for j in range(nr):
                edge[_U(p * nr + j)] = a[p, j0 + j] if j0 + j < m else 0
    for t in prange(bands):
        part = out[t].reshape(npb * mr * m_pad)
        r0 = t * n // bands
        r1 = (t + 1) * n // bands
        if r0 == r1:
            part[:] = 0
        for p0 in range(r0, r1, kc):
            kk = min(kc, r1 - p0)
            for jb in range(ncb):
                j0 = jb * nr
                for q in range(npb):
                    a_at = q * n * mr + p0 * mr
                    c_at = q * mr * m_pad + j0
                    if jb < full:
                        microkernel(kk, vp, a_at, a_flat, p0 * m + j0, m, part, c_at, m_pad, p0 > r0)
                    else:
                        microkernel(kk, vp, a_at, edge, p0 * nr, nr, part, c_at, m_pad, p0 > r0)


#: Rows of A per micro-kernel call in :func:`vt_times_a`, by the number of MR-tall panels of Vᵀ.
#: Each row of A is one sequential stream and the prefetcher follows only a few at once, but each
#: call also loads and stores its C tiles. Measured (2 threads, Zen 4, f64): one panel (b = 4),
#: n = 2000: kc = 4 1.05-1.5 ms, 16 1.3-1.95, 64 2.1 ms (a plain ``A.sum()`` 0.87-1.1 ms); n = 4000:
#: kc = 4 8.1 ms, 16 10.6, 64 11.6 (``A.sum()`` 4.2 ms, BLAS ``V.T @ A`` 7.5 ms). Four panels
#: (b = 20), n = 4000: kc = 4 23.4 ms, 16 19.4, 64 15.2, 256 19.8 (BLAS 13.6 ms).
THIN_KC = {1: 4}
THIN_KC_MANY = 64


# Row bands of thin_product: a fixed count, not the thread count, so that the sum of the bands'
# partial products (and so the result) is the same bits at any number of threads.
THIN_BANDS = 16


def thin_product(a, v):
    """``Vᵀ A`` (b x m) for C-contiguous ``a`` (n x m) and thin ``v`` (n x b), A read once."""
    blk = BLOCKING[a.dtype]
    n, b = v.shape
    m = a.shape[1]
    mr, nr = blk.MR, blk.NR
    bands = max(1, min(THIN_BANDS, n))
    npb = _ceil_div(b, mr)
    # V^T as MR-tall micro-panels (pack_a's layout, zero rows past b): vp[panel, p, i] = v[p, panel*MR + i]
    vpad = np.zeros((n, npb * mr), a.dtype)
    vpad[:, :b] = v
    vp = np.ascontiguousarray(vpad.reshape(n, npb, mr).transpose(1, 0, 2)).reshape(-1)
    out = np.empty((bands, npb * mr, _ceil_div(m, nr) * nr), a.dtype)
    vt_times_a(vp, _intrinsics.readonly(a), out, np.empty(n * nr, a.dtype), THIN_KC.get(npb, THIN_KC_MANY))
    return out.sum(axis=0)[:b, :m] if bands > 1 else out[0, :b, :m]


def _a_block_task_examples(dtype):
    scalar, flat = dtype.type(1), np.empty(1, dtype)
    ro = _intrinsics.readonly(flat)
    sweep = Sweep(*range(9), True, 0, 0, 0, 1)
    return (operand(flat.reshape(1, 1)), scalar, flat, flat, ro, flat, flat, flat, sweep, 0, 0)


def _pack_b_task_examples(dtype):
    flat = np.empty(1, dtype)
    return (operand(flat.reshape(1, 1)), 0, 0, 0, 0, flat, flat, 0, 0)


#: :func:`gemm_into`'s task kernels, run through their addresses by its parallel loops (each
#: compiled once, not again inside every caller of the GEMM: ``fastla.matmul``'s cold first call
#: went 7.0 -> 4.3 s when its steps were first called so).
A_BLOCK_TASK = _jit.Entry(a_block_task, _a_block_task_examples)
PACK_B_TASK = _jit.Entry(pack_b_task, _pack_b_task_examples)


def _gemm_into_examples(dtype):
    flat = np.empty(1, dtype)
    op = operand(flat.reshape(1, 1))
    return (op, op, Dest(flat, 0, 0), dtype.type(1), True, flat, flat, Tiles(0, 0, 0, Tasks(0, 0), 1, flat))


#: :func:`gemm_into` itself for compiled callers that may not need it (the blocked LU's trailing
#: update: a factorisation of n <= NB compiles no GEMM; `fastla.lu_factor`'s cold first call on a
#: 40 x 40 matrix 3.57 -> 1.51-1.59 s, Zen 5).
GEMM_INTO = _jit.Entry(gemm_into, _gemm_into_examples)


def tiles(dtype, kc, mc, nc, threads=None):
    """:class:`Tiles` for a Python caller of :func:`gemm_into` on ``dtype`` operands (``threads``:
    this call's share, :func:`fastla._jit.threads_here`, by default), with this thread's
    :func:`workspace`, large enough for any product of this blocking."""
    threads = _jit.threads_here() if threads is None else threads
    work = workspace(dtype, _work_elements(dtype, max(1, threads), mc, kc, nc))
    return Tiles(kc, mc, nc, _task_addresses(dtype), threads, work)


def _task_addresses(dtype):
    """The :class:`Tasks` of :func:`gemm_into` on ``dtype`` operands."""
    return Tasks(A_BLOCK_TASK.address(dtype), PACK_B_TASK.address(dtype))


def _work_elements(dtype, slots, mc, kc, nc):
    """Elements of :func:`gemm_into`'s scratch (:func:`work_parts`) for any product of at most this
    blocking on ``slots`` threads, rounded up to 16 (so that scratches laid end to end each start
    64-byte aligned)."""
    blk = BLOCKING[np.dtype(dtype)]
    mc_pad, nc_pad = _ceil_div(mc, blk.MR) * blk.MR, _ceil_div(nc, blk.NR) * blk.NR
    parts = getattr(work_parts, "py_func", work_parts)(slots, mc_pad, kc, nc_pad, blk.MR, blk.NR)
    return _ceil_div(sum(parts), 16) * 16


def row_blocking(m, itemsize, threads):
    """MC for ``m`` rows: a multiple of ``threads`` blocks of (nearly) equal height, <= MC, x MR.

    The ic loop is the parallel one (1024 rows in MC=252 blocks would be 5 blocks, 3 for one
    thread and 2 for the other: 0.6x of OpenBLAS on 2 threads instead of 0.9x).
    """
    blk = _BLOCKING_BY_SIZE[itemsize]
    threads = max(1, threads)
    n_blocks = max(1, threads * _ceil_div(m, threads * blk.MC))
    return max(blk.MR, _ceil_div(_ceil_div(m, n_blocks), blk.MR) * blk.MR)


def _ceil_div(a, b):
    return -(-a // b)


def gemm(a, b, out=None, *, threads=None):
    """``a @ b`` for 2-D float32/float64 arrays of one dtype (any strides) via the packed kernel.

    ``out``, if given, must be C-contiguous of the right shape and dtype; it is overwritten.
    """
    m, n = a.shape[0], b.shape[1]
    dtype = a.dtype
    c = np.empty((m, n), dtype=dtype) if out is None else out
    if threads is None:
        threads = _jit.threads_here()
    mc = row_blocking(m, dtype.itemsize, threads)
    key = (dtype, mc, threads, A_BLOCK_TASK, PACK_B_TASK, GEMM_INTO)  # (tests stand in for entries)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _gemm_plan(dtype, mc, threads)
    kc, nc, (a_at, pb_at), elements, gemm_at, one, none = plan
    a_data, a_off, a_rs, a_cs, _, k = operand_fields(a)
    b_data, b_off, b_rs, b_cs, _, _ = operand_fields(b)
    work = workspace(dtype, elements)
    gemm_plain(a_data, a_off, a_rs, a_cs, b_data, b_off, b_rs, b_cs, m, k, n, c.reshape(-1), 0, n, one,
               none, none, kc, mc, nc, a_at, pb_at, threads, work, gemm_at)  # fmt: skip
    return c


#: (dtype, MC, threads, the entries) -> what :func:`gemm` passes :func:`gemm_plain` besides the
#: operands (see :func:`_gemm_plan`): looked up once per call instead of rebuilt (~3 us of Python).
_PLANS = {}


def _gemm_plan(dtype, mc, threads):
    blk = BLOCKING[dtype]
    tasks = tuple(_task_addresses(dtype))
    elements = _work_elements(dtype, max(1, threads), mc, blk.KC, blk.NC)
    return blk.KC, blk.NC, tasks, elements, GEMM_INTO.address(dtype), dtype.type(1), NO_SCALE[dtype]


@jit
def gemm_plain(
    a,
    a_off,
    a_rs,
    a_cs,
    b,
    b_off,
    b_rs,
    b_cs,
    m,
    k,
    n,
    c,
    c_off,
    ldc,
    alpha,
    row_scale,
    col_scale,
    kc,
    mc,
    nc,
    a_at,
    pb_at,
    threads,
    work,
    gemm_at,
):
    """``C = alpha * diag(row_scale) @ A @ B @ diag(col_scale)`` by :func:`gemm_into` at ``gemm_at``
    (its one compiled signature) for a Python caller, which passes the fields of the
    :class:`Operand` s (:func:`operand_fields`), the flat C-contiguous memory ``c`` of C (the m x n
    block from ``c_off`` with row stride ``ldc``), the scales (empty: none), and the fields of
    :class:`Tiles` and :class:`Tasks` one by one: Numba types a named tuple argument in Python and
    plain ones in C, so that :func:`gemm_into`'s dispatch alone took ~4 us a call, this one's 0.5 us
    (Zen 4); and :func:`gemm_into` itself compiles no Python wrapper (see :func:`gemm_to`)."""
    tl = Tiles(kc, mc, nc, Tasks(a_at, pb_at), threads, work)
    flat_a, flat_b = (a, a_off, a_rs, a_cs), (b, b_off, b_rs, b_cs)
    gemm_flat_at(gemm_at, flat_a, flat_b, m, k, n, c, c_off, ldc, alpha, row_scale, col_scale, tl)


def gemm_to(a, b, c, c_off, ldc, alpha, row_scale, col_scale, tl):
    """``C = alpha * diag(row_scale) @ a @ b @ diag(col_scale)`` for a Python caller, C the block of
    the flat C-contiguous ``c`` from ``c_off`` with row stride ``ldc``, ``a`` and ``b`` 2-D arrays
    of any strides, ``tl`` a :class:`Tiles`: :func:`gemm_into` through :func:`gemm_plain`.
    :func:`gemm_into` has no Python wrapper: the one that unboxed its named tuples was ~40% of its
    LLVM IR, and every op built on the GEMM compiled it (matmul's 256 x 256 first call, Zen 4)."""
    a_data, a_off, a_rs, a_cs, m, k = operand_fields(a)
    b_data, b_off, b_rs, b_cs, _, n = operand_fields(b)
    gemm_plain(a_data, a_off, a_rs, a_cs, b_data, b_off, b_rs, b_cs, m, k, n, c, c_off, ldc, alpha,
               row_scale, col_scale, tl.kc, tl.mc, tl.nc, tl.tasks.a_block, tl.tasks.pack_b, tl.threads,
               tl.work, GEMM_INTO.address(c.dtype))  # fmt: skip


@jit(inline="always")
def gemm_flat_at(gemm_at, flat_a, flat_b, m, k, n, c, c_off, ldc, alpha, row_scale, col_scale, tl):
    """``C = alpha * diag(row_scale) @ A @ B @ diag(col_scale)`` by :func:`gemm_into` at ``gemm_at``
    for a compiled caller holding the operands as flat memory: A (m x k) is ``a[a_off + i*a_rs +
    p*a_cs]`` for ``flat_a = (a, a_off, a_rs, a_cs)``, B (k x n) likewise, C the m x n block of the
    flat ``c`` from ``c_off`` with row stride ``ldc``, empty scales for none, ``tl`` a
    :class:`Tiles`. ``c_off`` must be a run-time value (see "literal arguments")."""
    accumulate = m < 0  # a run-time False
    a, a_off, a_rs, a_cs = flat_a
    b, b_off, b_rs, b_cs = flat_b
    a_op = flat_operand(a, a_off, a_rs, a_cs, m, k)
    b_op = flat_operand(b, b_off, b_rs, b_cs, k, n)
    args = (a_op, b_op, Dest(c, c_off, ldc), alpha, accumulate, row_scale, col_scale, tl)
    _intrinsics.call_entry(gemm_at, gemm_into, args)


@jit(python_wrapper=False)
def stack_task(a, b, c, dims, alpha, none, tiles, work, gemm_at, task):
    """Task ``task`` of :func:`gemm_stack`: products ``task * per`` to ``(task + 1) * per - 1`` of
    the stack (``dims`` is ``(batch, m, k, n, per)``; ``a``, ``b`` and ``c`` the stacks' flat
    C-contiguous memory), one after another, each through :func:`gemm_into` at ``gemm_at`` on one
    thread with row ``task`` of ``work`` as its scratch."""
    batch, m, k, n, per = dims
    tl = Tiles(tiles.kc, tiles.mc, tiles.nc, tiles.tasks, tiles.threads, work[task])
    for t in range(task * per, min(batch, (task + 1) * per)):
        flat_a, flat_b = (a, t * m * k, k, 1), (b, t * k * n, n, 1)
        gemm_flat_at(gemm_at, flat_a, flat_b, m, k, n, c, t * m * n, n, alpha, none, none, tl)


def _stack_task_examples(dtype):
    flat, ro = np.empty(1, dtype), _intrinsics.readonly(np.empty(1, dtype))
    tl = Tiles(0, 0, 0, Tasks(0, 0), 1, flat)
    return (ro, ro, flat, (0, 0, 0, 0, 0), dtype.type(1), flat, tl, np.empty((1, 1), dtype), 0, 0)


#: :func:`stack_task`, run by :func:`gemm_stack`'s parallel loop through its address
STACK_TASK = _jit.Entry(stack_task, _stack_task_examples)


def gemm_stack(a, b, c, *, threads=None):
    """``c[t] = a[t] @ b[t]`` for C-contiguous 3-D stacks of one float dtype, ``c`` C-contiguous:
    the stack split into one contiguous run of products per thread, each product the packed GEMM
    on one thread (:func:`stack_task`), B read in place up to SMALL_B_BYTES and A
    packed into the thread's own row of the workspace. For stacks of products too large for the
    small-product kernels and too small to split one product across threads: before, a Python loop
    of :func:`gemm` calls (10 000 48 x 48 float64 products 343 ms, NumPy 74 ms; Zen 4, two threads).
    """
    batch, m, k = a.shape
    n = b.shape[2]
    dtype = a.dtype
    blk = BLOCKING[dtype]
    threads = max(1, min(_jit.threads_here() if threads is None else threads, batch))
    mc = row_blocking(m, dtype.itemsize, 1)
    row = _work_elements(dtype, 1, mc, min(blk.KC, k), min(blk.NC, n))  # one thread's scratch
    work = workspace(dtype, threads * row)[: threads * row].reshape(threads, row)
    tl = Tiles(blk.KC, mc, blk.NC, _task_addresses(dtype), 1, NO_SCALE[dtype])
    flat = (_intrinsics.readonly(a.reshape(-1)), _intrinsics.readonly(b.reshape(-1)), c.reshape(-1))
    dims = (batch, m, k, n, _ceil_div(batch, threads))
    args = (*flat, dims, dtype.type(1), NO_SCALE[dtype], tl, work, GEMM_INTO.address(dtype))
    _stack_drive(args, STACK_TASK.address(dtype), threads)
    return c


@jit
def _stack_drive(args, stack_at, threads):
    """:func:`gemm_stack`'s parallel loop: one task per thread, through :func:`stack_task` at
    ``stack_at``."""
    _intrinsics.parallel_tasks(stack_at, stack_task, args, threads, threads, True)


# --------------------------------------------------------------------------- simple kernels


@jit(parallel=True)
def gemm_naive(a, b, c):
    """Textbook i-k-j loop (parallel over rows; the j loop vectorises). ``c`` 2-D, overwritten."""
    for i in prange(a.shape[0]):
        wide_vectors()
        _ikj_row(a, b, c, i)


@jit(inline="always")
def _ikj_row(a, b, c, i):
    """Row ``i`` of ``c = a @ b`` the textbook way: zero it, then add ``a[i, p] * b[p, :]`` for each
    p (the j loop vectorises; the running row stays in ``c``)."""
    n = b.shape[1]
    for j in range(n):
        c[i, j] = 0
    for p in range(a.shape[1]):
        aip = a[i, p]
        for j in range(n):
            c[i, j] += aip * b[p, j]


# --------------------------------------------------------------------------- small products in vectors
#
# A product of a few rows and columns (4x4, 8x8: the stacks of small matrices and fastla.kernels.matmul
# inside a user's loop) is too small to pack, and written as plain Numba loops it stays scalar (the
# j loop is too short for the loop vectoriser, and Numba leaves the SLP vectoriser off): a 4x4 f64
# product took 45-75 ns in a user's loop, about a scalar multiply-add per cycle. The tile below holds
# R rows x W columns of C as R vectors of W lanes (W = 32 bytes of lanes: 4 f64 or 8 f32, one ymm on
# AVX2 and AVX-512 alike): per k step one vector load of a row of B, R broadcasts of A, R FMAs.

#: Bytes in one vector of a small-product tile, and rows of A per tile.
SMALL_VECTOR_BYTES = 32
SMALL_TILE_ROWS = 4


def _small_tile_twin(rows):
    def twin(a, b, c, i0, j0, cols):
        c[i0 : i0 + rows, j0 : j0 + cols] = a[i0 : i0 + rows] @ b[:, j0 : j0 + cols]

    return twin


def _small_tile(rows, masked, vector_bytes=SMALL_VECTOR_BYTES, square=False):
    """Intrinsic ``c[i0:i0+rows, j0:j0+cols] = a[i0:i0+rows, :] @ b[:, j0:j0+cols]`` in vectors of
    W lanes (``vector_bytes`` of them): ``cols == W``, or (``masked``) ``cols < W``, B and C then
    read and written through ``llvm.masked.load/store`` (no access past the valid columns). A, B
    and C share one float dtype; B and C have unit stride along a row (the caller checks), A any
    strides. ``square``: A, B and C are C-contiguous ``rows x rows`` arrays with ``W == rows`` (the
    caller checks; i0 = j0 = 0): the depth and every stride are constants, so the product is
    straight-line code with fixed offsets (no loop, no stride arithmetic) and the same operations
    in the same order as the loop's."""

    @_jit.intrinsic(_small_tile_twin(rows))
    def small_tile(typingctx, a, b, c, i0, j0, cols):
        from llvmlite import ir

        nbt = _jit.nb_types
        if not all(isinstance(t, nbt.Array) and t.ndim == 2 for t in (a, b, c)):
            return None
        if not (a.dtype == b.dtype == c.dtype) or a.dtype not in (nbt.float32, nbt.float64):
            return None
        itemsize = 8 if a.dtype == nbt.float64 else 4
        w = vector_bytes // itemsize
        if square and (w != rows or not a.layout == b.layout == c.layout == "C"):
            return None
        sig = nbt.void(a, b, c, i0, j0, cols)

        def codegen(context, builder, sig, args):
            a_v, b_v, c_v, i0_v, j0_v, cols_v = args
            i64, i32 = ir.IntType(64), ir.IntType(32)
            fty = context.get_value_type(sig.args[0].dtype)
            vty = ir.VectorType(fty, w)
            align = ir.Constant(i32, itemsize)

            a_data, a_shape, a_str = _intrinsics.array_parts(context, builder, sig.args[0], a_v)
            b_data, _, b_str = _intrinsics.array_parts(context, builder, sig.args[1], b_v)
            c_data, _, c_str = _intrinsics.array_parts(context, builder, sig.args[2], c_v)
            i0_i = context.cast(builder, i0_v, sig.args[3], nbt.int64)
            j0_i = context.cast(builder, j0_v, sig.args[4], nbt.int64)
            col = builder.mul(j0_i, ir.Constant(i64, itemsize))
            k_i = a_shape[1]
            if square:
                row_bytes, item = ir.Constant(i64, rows * itemsize), ir.Constant(i64, itemsize)
                a_str = b_str = c_str = (row_bytes, item)
                i0_i = col = ir.Constant(i64, 0)

            def at(base, offset, ty):
                return builder.bitcast(builder.gep(base, [offset]), ty.as_pointer())

            if masked:
                ity = ir.VectorType(i64, w)
                cols_i = context.cast(builder, cols_v, sig.args[5], nbt.int64)
                mask = builder.icmp_unsigned(
                    "<", ir.Constant(ity, list(range(w))), _splat(builder, cols_i, ity)
                )
                suffix = f"v{w}f{8 * itemsize}.p0"
                mty = mask.type
                m_load = _intrinsics.llvm_function(
                    builder, f"llvm.masked.load.{suffix}", vty, [vty.as_pointer(), i32, mty, vty]
                )
                m_store = _intrinsics.llvm_function(
                    builder, f"llvm.masked.store.{suffix}", ir.VoidType(), [vty, vty.as_pointer(), i32, mty]
                )

                def load_row(ptr):
                    return builder.call(m_load, [ptr, align, mask, ir.Constant(vty, None)])

                def store_row(val, ptr):
                    builder.call(m_store, [val, ptr, align, mask])

            else:

                def load_row(ptr):
                    return builder.load(ptr, align=itemsize)

                def store_row(val, ptr):
                    builder.store(val, ptr, align=itemsize)

            a_rows = [
                builder.gep(a_data, [builder.mul(builder.add(i0_i, ir.Constant(i64, r)), a_str[0])])
                for r in range(rows)
            ]
            b_col = builder.gep(b_data, [col])

            def step(p, accs, fma):
                bvec = load_row(at(b_col, builder.mul(p, b_str[0]), vty))
                a_off = builder.mul(p, a_str[1])
                return [
                    fma(builder.load(at(row, a_off, fty), align=itemsize), bvec, acc)
                    for row, acc in zip(a_rows, accs, strict=True)
                ]

            if square:
                final = _fma_steps(builder, vty, rows, rows, step)
            else:
                final = _fma_loop(builder, vty, k_i, rows, step)
            c_col = builder.gep(c_data, [col])
            for r, val in enumerate(final):
                store_row(val, at(c_col, builder.mul(builder.add(i0_i, ir.Constant(i64, r)), c_str[0]), vty))
            return context.get_dummy_value()

        return sig, codegen

    return small_tile


_TILES = {masked: (_small_tile(SMALL_TILE_ROWS, masked), _small_tile(1, masked)) for masked in (False, True)}
#: a tile of half a vector's columns (4 float32): a 4x4 float32 product as one tile
_HALF_TILE = _small_tile(SMALL_TILE_ROWS, False, SMALL_VECTOR_BYTES // 2)
#: (n, small-product width: lanes of a float64 or float32 vector) -> the tile of an n x n product
#: (n = 4, 8) of C-contiguous operands as straight-line code, one vector of n lanes a row (4x4 float32:
#: half a vector; 8x8 float64: 64 bytes, which a 256-bit host splits in two). The 8x8 one measured
#: on Zen 4 (ns a product, min of runs, two runs, against the loop tiles): in cache (2000 products)
#: float64 stack on two threads 12.6-20.3 against 29.3-33.5, a user's loop 20.0-20.1 against
#: 55.5-63.6; float32 stack 9.3-9.7 against 16.4-18.6, loop 14.5-15.0 against 30.6; over 100k
#: (memory-bound) float64 within noise, float32 loop 24.8-27.5 against 36.3-37.1. Its cost:
#: fastla.matmul's cold first call (a 40x40 product) 2.12-2.64 s against 2.05-2.27 (four
#: interleaved pairs; the old code then compiled a 4x4 stack's kernel apart, +0.35-0.41 s), a user
#: function calling kernels.matmul +0.04-0.24 s. (Through an overload of its own for kernels.matmul
#: alone, the extra overload layer cost each such user function +1.0-1.6 s: not that way.)
_SQUARE_TILES = {
    (n, w): _small_tile(n, False, n * SMALL_VECTOR_BYTES // w, square=True) for n in (4, 8) for w in (4, 8)
}


#: The wide tile of medium products in a stack (:func:`wide_stack_task`): rows x bytes of C, two of the
#: host's vectors a row (AVX-512: 8 rows x 2 zmm, 16 accumulators; AVX2: 4 rows x 2 ymm, 8), per depth
#: step two vector loads of B, ``rows`` broadcasts of A and ``2 rows`` FMAs: bound by the FMAs, where
#: the 4 x 1-vector tile above is bound by its loads and its four dependent accumulator chains. None
#: (no wide tile) on an SSE-only target.
WIDE_TILE = {64: (8, 128), 32: (4, 64)}.get(_SIMD)
_WIDE_ROWS, _WIDE_BYTES = WIDE_TILE or (1, 0)
_WIDE_TILE = _small_tile(_WIDE_ROWS, False, _WIDE_BYTES) if WIDE_TILE else None
#: the same rows of one vector: the last columns of a product whose width is an odd number of
#: vectors (float32 48 or 16 wide, float64 24 or 40 on AVX-512)
_HALF_WIDE_TILE = _small_tile(_WIDE_ROWS, False, _WIDE_BYTES // 2) if WIDE_TILE else None


def wide_lanes(itemsize):
    """Columns of one :data:`WIDE_TILE` in elements of ``itemsize`` bytes (0: no wide tile)."""
    return _WIDE_BYTES // itemsize


def wide_tiles_fit(m, k, n, itemsize):
    """Whether m x k @ k x n products split into whole wide tiles (:func:`wide_stack_task`): whole
    blocks of rows, and columns in whole tiles but for one of half a tile's width."""
    lanes = wide_lanes(itemsize)
    return bool(lanes) and k > 0 and m > 0 and m % _WIDE_ROWS == 0 and n % (lanes // 2) == 0


#: The sides of the products a stack runs in wide tiles when they split into whole ones
#: (:func:`wide_stack_fits`), instead of the per-size, 4-row-tile or packed kernels: up to 128, the
#: packed stack's range (past it one product is split across the threads). Zen 4, two threads, ms
#: (medians of three interleaved runs of 15), products into a reused output, wide tiles against the
#: kernel before and NumPy: float64 32x32 2000 / 20 000 products 2.59 / 36.5 against 3.62 / 49.8
#: packed (NumPy 2.82 / 33.6), 40x40 7.22 / 70.2 against 11.7 / 115 packed (8.51 / 85.0), 48x48
#: 8.34 / 93.5 against 12.1 / 121 (14.8 / 146), 56x56 16.2 / 139 against 18.9 / 160 (26.7 / 237),
#: 64x64 17.9 / 182 against 19.7 / 206 (29.8 / 298); 80x80, 96x96, 128x128 200 / 2000 products
#: 3.83 / 36.2, 5.27 / 55.9, 11.6 / 112 against 4.69 / 42.4, 5.61 / 59.4, 12.1 / 120 packed; float32
#: 16x16 0.10 / 1.71 against 0.09 / 2.27 per-size (0.21 / 2.86), 32x32 0.77 / 9.77 against 4.06 /
#: 33.7 four-row tiles (1.33 / 15.7), 48x48 5.07 / 43.3 against 8.13 / 72.7 packed (6.50 / 67.1),
#: 96x96 and 128x128 (200 / 2000) 2.02 / 26.6 and 4.89 / 52.4 against 3.23 / 33.7 and 5.73 / 57.4.
#: Below 16 the per-size kernels and the 4-row tiles run faster (100k float64 products, ms: 16x8 @
#: 8x16 7.9 against 7.3; 16x16 wide 17.8 against 24.9 per-size).
WIDE_STACK_SIDES = (16, 128)


def wide_stack_fits(m, k, n, itemsize):
    """Whether a stack of m x k @ k x n products runs in wide tiles (:data:`WIDE_STACK_SIDES`)."""
    lo, hi = WIDE_STACK_SIDES
    return lo <= min(m, k, n) and max(m, k, n) <= hi and wide_tiles_fit(m, k, n, itemsize)


def _column_tiles(masked):
    tile_rows, tile_row = _TILES[masked]
    rows = SMALL_TILE_ROWS

    @jit(inline="always")
    def column_tiles(a, b, c, j0, cols):
        """Columns ``j0:j0+cols`` of ``c = a @ b``: tiles of SMALL_TILE_ROWS rows, then single rows."""
        m = a.shape[0]
        m_tiles = m - m % rows
        for ib in range(m_tiles // rows):
            tile_rows(a, b, c, ib * rows, j0, cols)
        for i in range(m_tiles, m):
            tile_row(a, b, c, i, j0, cols)

    return column_tiles


_full_columns = _column_tiles(False)
_masked_columns = _column_tiles(True)


@jit(inline="always")
def _whole_vector_columns(a, b, c, w):
    """Columns ``[0, returned)`` of ``c = a @ b``: as many as fill whole vectors of ``w`` lanes."""
    n = b.shape[1]
    nw = n - n % w
    for jb in range(nw // w):
        _full_columns(a, b, c, jb * w, w)
    return nw


def _vector_width(a, b, c):
    """Lanes of a small-product vector for these Numba array types: 0 unless a, b and c share a
    float dtype."""
    nbt = _jit.nb_types
    if not (a.dtype == b.dtype == c.dtype and a.dtype in (nbt.float32, nbt.float64)):
        return 0
    return SMALL_VECTOR_BYTES // (8 if a.dtype == nbt.float64 else 4)


def vector_columns(a, b, c):
    """Columns ``[0, returned)`` of ``c = a @ b`` computed in whole vector tiles (in compiled code,
    when a, b and c share a float dtype and B and C have unit stride along a row); 0 when none are."""
    return 0


@_jit.overload(vector_columns)
def _vector_columns_typer(a, b, c):
    w = _vector_width(a, b, c)
    if not w:
        return lambda a, b, c: 0
    itemsize = SMALL_VECTOR_BYTES // w

    def impl(a, b, c):
        if b.shape[1] < w or a.shape[1] == 0 or b.strides[1] != itemsize or c.strides[1] != itemsize:
            return 0
        return _whole_vector_columns(a, b, c, w)

    return impl


def small_product(a, b, c):
    """``c = a @ b`` for small 2-D operands, no packing, no allocation (also
    ``fastla.kernels.matmul``). In compiled code, for C-contiguous operands of one float dtype (the
    views of a stack, a user's rows): vector tiles only, the last columns through masked loads and
    stores; any other operands: the whole vectors where the rows have unit stride
    (:func:`vector_columns`), then :func:`_scalar_columns`. Measured in a user's @njit loop (4x4
    f64, 2000 products, in cache): 12 ns vector-only, 23 ns with the scalar code inlined beside
    the tiles though never run.
    """
    _scalar_columns(a, b, c, 0)


@_jit.overload(small_product)
def _small_product_typer(a, b, c):
    w = _vector_width(a, b, c)
    if not (w and a.layout == b.layout == c.layout == "C"):

        def generic(a, b, c):
            j0 = vector_columns(a, b, c)
            if j0 < b.shape[1]:
                _scalar_columns(a, b, c, j0)

        return generic

    tile = _TILES[False][0]
    # 4 x k @ k x 4 float32 (k != 4: 4x4 is the square tile's) as one tile of half a vector: a 4x4
    # product took 7.8-8.5 -> 5.7-6.5 ns in a user's loop this way (a masked tile of 8 lanes before,
    # 5.8-6.1 as the square tile); float32 only (a constant here, so that the float64 kernels do
    # not compile the branch: +0.15-0.4 s of a float64 stack's cold first call measured with it)
    half = w == 8

    square, square8 = _SQUARE_TILES[SMALL_TILE_ROWS, w], _SQUARE_TILES[8, w]

    def contiguous(a, b, c):
        n = b.shape[1]
        if a.shape[0] == SMALL_TILE_ROWS == a.shape[1] == n:
            square(a, b, c, 0, 0, n)
        elif a.shape[0] == 8 == a.shape[1] == n:
            square8(a, b, c, 0, 0, n)
        elif a.shape[0] == SMALL_TILE_ROWS and n == w:
            tile(a, b, c, 0, 0, w)  # one tile (4 x k @ k x 4 f64): the loop below costs as much again
        elif half and a.shape[0] == SMALL_TILE_ROWS and n == w // 2:
            _HALF_TILE(a, b, c, 0, 0, w // 2)
        else:
            nw = _whole_vector_columns(a, b, c, w)
            if nw < n:
                _masked_columns(a, b, c, nw, n - nw)

    return contiguous


@jit(inline="always")
def _scalar_columns(a, b, c, j0):
    """Columns ``j0:`` of ``c = a @ b``, those that :func:`vector_columns` left, for the operands the
    tiles-only path does not take (strided, mixed dtypes; see :func:`small_product`). Rows narrower
    than 8: four columns at a time accumulated in registers and stored once (LLVM cannot prove that
    ``c`` aliases neither ``a`` nor ``b``, so ``c[i, j] +=`` reloads and stores at every step); wider
    rows: i-k-j with the running row in ``c``, whose j loop vectorises.
    """
    m, k = a.shape
    n = b.shape[1]
    if n - j0 < 8 and k > 0:
        n4 = n - (n - j0) % 4
        for i in range(m):
            for j in range(j0, n4, 4):
                a0 = a[i, 0]
                s0 = a0 * b[0, j]
                s1 = a0 * b[0, j + 1]
                s2 = a0 * b[0, j + 2]
                s3 = a0 * b[0, j + 3]
                for p in range(1, k):
                    aip = a[i, p]
                    s0 += aip * b[p, j]
                    s1 += aip * b[p, j + 1]
                    s2 += aip * b[p, j + 2]
                    s3 += aip * b[p, j + 3]
                c[i, j] = s0
                c[i, j + 1] = s1
                c[i, j + 2] = s2
                c[i, j + 3] = s3
            for j in range(n4, n):
                s = a[i, 0] * b[0, j]
                for p in range(1, k):
                    s += a[i, p] * b[p, j]
                c[i, j] = s
    else:
        for i in range(m):
            _ikj_row(a, b, c, i)


@jit(python_wrapper=False)
def small_stack_task(a, b, c, parts, task):
    """Part ``task`` of ``parts`` of :func:`batched_small`'s stack: its contiguous run of products,
    each by :func:`small_product` (for tiny m, k, n the cost is the per-matrix work itself, so the
    loops are plain)."""
    wide_vectors()
    s = a.shape[0]
    for t in range(_U(task * s // parts), _U((task + 1) * s // parts)):  # unsigned: no wraparound test
        small_product(a[t], b[t], c[t])


@jit(python_wrapper=False)
def wide_stack_task(a, b, c, parts, task):
    """:func:`small_stack_task` for products in wide tiles: each ``c[t] = a[t] @ b[t]`` in tiles of
    :data:`WIDE_TILE`, the last columns in a half-width one where the width is an odd number of half
    tiles, for C-contiguous stacks of one float dtype that :func:`wide_tiles_fit` (the caller
    checks). A task of its own, so that a call compiles the kind of tiles it runs, not both. Cold
    first calls in a new process (Zen 4, three interleaved runs): one 40 x 40 float64 product (wide
    tiles) 1.25-1.47 s before the wide tiles, 1.63-1.97 s with both kinds in one task, 0.46-0.66 s
    so; a 300 x 32 x 32 float64 stack 2.87 s before (the packed kernel), 0.45-0.53 s; float32 40 x
    40 (the other tiles) and 4 x 4 stacks as before (1.28-1.40 and 1.33-1.65 s). The tile loops are
    written here, not in an inlined function: this task is their one caller."""
    wide_vectors()
    s, m, n = a.shape[0], a.shape[1], b.shape[2]
    lanes = _WIDE_BYTES // c.itemsize
    whole = n - n % lanes
    for t in range(_U(task * s // parts), _U((task + 1) * s // parts)):
        at, bt, ct = a[t], b[t], c[t]
        for jb in range(whole // lanes):
            for ib in range(m // _WIDE_ROWS):
                _WIDE_TILE(at, bt, ct, ib * _WIDE_ROWS, jb * lanes, lanes)
        if whole < n:
            for ib in range(m // _WIDE_ROWS):
                _HALF_WIDE_TILE(at, bt, ct, ib * _WIDE_ROWS, whole, lanes // 2)


@jit
def batched_small(a, b, c, at, threads):
    """``c[t] = a[t] @ b[t]`` for a stack of small matrices (read-only C-contiguous ``a`` and ``b``,
    C-contiguous ``c``, one dtype): one contiguous run of the stack per thread on ``threads``
    threads, each run a task of :func:`small_stack_task` through its address ``at``
    (:data:`SMALL_STACK_TASK`; ``fastla._intrinsics.parallel_tasks``). A ``prange`` loop before:
    its three libraries took ~0.6 s of matmul's cold first call (a 40 x 40 product runs here as a
    stack of one), and a stack of one started the parallel region that one thread now skips."""
    _intrinsics.parallel_tasks(at, small_stack_task, (a, b, c, threads), threads, threads)


def _small_stack_examples(dtype):
    ro = _intrinsics.readonly(np.empty((1, 1, 1), dtype))
    return (ro, ro, np.empty((1, 1, 1), dtype), 1, 0)


#: :func:`small_stack_task` and :func:`wide_stack_task`, run by :func:`batched_small` through their
#: addresses
SMALL_STACK_TASK = _jit.Entry(small_stack_task, _small_stack_examples)
WIDE_STACK_TASK = _jit.Entry(wide_stack_task, _small_stack_examples)


#: itemsize -> the multiply-adds (stack length x m x k x n) below which :func:`small_stack` runs on
#: one thread: a parallel launch costs more than a second thread saves on less. Where that costs
#: ~2 us (Zen 4, Numba's TBB layer; best of 7, us on one thread / two): float64 100 x 8^3 (51 200)
#: 4.2 / 6.8, 300 x 8^3 8.2 / 8.8, 30 x 16^3 (122 880) 11.9 / 10.8, 10 x 24^3 13.4 / 10.7; float32
#: 300 x 8^3 (153 600) 6.7 / 8.2, 10 x 24^3 7.2 / 15.0, 100 x 16^3 (409 600) 17.9 / 15.9: the
#: crossover near 2^17 and 2^18. An AMD EPYC guest (znver2), where a second thread's start cost
#: 12-17 us, put it near 2^19 and 2^20 (median of 7, us): float64 256 x 8^3 (131 072) 12.5 / 23.5,
#: 512 x 8^3 20.1 / 27.1, 1024 x 8^3 39.3 / 37.3, 2048 x 8^3 71.9 / 52.8, 64 x 16^3 18.3 / 27.0,
#: 128 x 16^3 31.9 / 33.2; float32 512 x 8^3 16.1 / 25.5, 1024 x 8^3 28.9 / 32.3, 2048 x 8^3
#: 53.4 / 45.1, 128 x 16^3 18.0 / 26.6, 256 x 16^3 31.7 / 33.2. The bound sits between the two
#: (2^18 and 2^19): on either host a stack in the window runs at most ~1.3-1.5x slower than on
#: the better thread count, where the lower bound had cost the EPYC 1.9x.
SMALL_SERIAL_WORK = {8: 2**18, 4: 2**19}


def small_stack(a, b, c, threads=None):
    """``c[t] = a[t] @ b[t]`` for 3-D stacks of small matrices (:func:`batched_small`): ``a`` and
    ``b`` taken as kernel inputs (C-contiguous, read-only), on up to ``threads`` threads (default:
    the call's share, or one below :data:`SMALL_SERIAL_WORK`), never more than the stack has
    products."""
    _, m, k = a.shape
    same = a.dtype == b.dtype == c.dtype and c.dtype.kind == "f" and c.flags.c_contiguous
    at = _small_task(m, k, b.shape[2], c.dtype, same)
    if threads is None:
        threads = _jit.threads_for(a.shape[0] * m * k * b.shape[2], SMALL_SERIAL_WORK[c.itemsize])
    threads = max(1, min(threads, a.shape[0]))
    batched_small(_intrinsics.kernel_input(a), _intrinsics.kernel_input(b), c, at, threads)


#: (m, k, n, dtype, whole wide tiles allowed, the two entries) -> :func:`_small_task`'s answer
_SMALL_TASKS = {}


def _small_task(m, k, n, dtype, same):
    """The task address of a stack of m x k @ k x n ``dtype`` products: the wide tiles' task where
    ``same`` (one float dtype, a C-contiguous result) and they fit, else the small-product one;
    looked up once per shape (~1.3 us of Python a call before: the tiles' test, the entry's
    address)."""
    key = (m, k, n, dtype, same, SMALL_STACK_TASK, WIDE_STACK_TASK)  # (tests stand in for entries)
    at = _SMALL_TASKS.get(key)
    if at is None:
        wide = same and wide_tiles_fit(m, k, n, dtype.itemsize)
        at = _SMALL_TASKS[key] = (WIDE_STACK_TASK if wide else SMALL_STACK_TASK).address(dtype)
    return at


def stack_product(a, b, fixed=False):
    """``a @ b`` for two C-contiguous 3-D stacks of one float dtype and length, by the small-product
    kernels (:func:`small_stack`), or ``fixed``, the per-size kernel (:func:`fixed_stack`): the
    call ``fastla.matmul``'s fast path makes once they have run in this process. A stack below
    :data:`SMALL_SERIAL_WORK` (where either kernel runs on one thread) is called directly, without
    :func:`fastla._jit.run_parallel` (whose thread-count bookkeeping it does not need); a larger one
    through it."""
    batch, m, k = a.shape
    n = b.shape[2]
    c = np.empty((batch, m, n), a.dtype)
    if batch * m * k * n >= SMALL_SERIAL_WORK[c.itemsize]:
        _jit.run_parallel(fixed_stack if fixed else small_stack, a, b, c)
    elif fixed:
        fixed_stack(a, b, c)
    else:  # small_stack's one-thread call without its checks, which these operands pass (~2 us)
        at = _small_task(m, k, n, c.dtype, True)
        batched_small(_intrinsics.kernel_input(a), _intrinsics.kernel_input(b), c, at, 1)
    return c


def fixed_stack(a, b, c):
    """``c[t] = a[t] @ b[t]`` by the per-size kernel (:func:`small_fixed_kernel`), ``a`` and ``b``
    taken as kernel inputs: on this thread below :data:`SMALL_SERIAL_WORK` (its ``prange`` woke the
    call's other threads for any stack before: 16 12x12 float64 products took 10.4 us on two
    threads against 5.0 on one, 128 24.1 against 21.4, 512 53.1 against 78.0; AMD EPYC, znver2),
    else on the call's share."""
    _, m, k = a.shape
    n = b.shape[2]
    kernel = small_fixed_kernel(m, k, n)
    args = (_intrinsics.kernel_input(a), _intrinsics.kernel_input(b), c)
    if c.shape[0] * m * k * n < SMALL_SERIAL_WORK[c.itemsize]:
        _jit.run_serial(kernel, *args)
    else:
        kernel(*args)


def tiles_beat_unrolled(m, k, n, itemsize):
    """Whether a stack of m x k @ k x n products runs faster in vector tiles (:func:`batched_small`)
    than fully unrolled for its sizes (:func:`small_fixed_kernel`): whole vectors of columns, at
    least 8 of them, and at most 64 output elements; or 4x4 products (one straight-line tile, see
    :func:`_small_tile`'s ``square``). Measured on an Intel Xeon (AVX-512), square stacks, one
    thread, ns a product, unrolled / tiles / np.matmul: f32 8x8 166 / 65 / 118, f64 8x8 178 / 155 /
    161; f64 4x4 33 / 32 / 89 but 4.9 / 6.0 ms on two threads (100k, through fastla.matmul, before
    the straight-line tile); larger tiled products lose (f64 12x12 324 / 460, f32 16x16 207 / 354),
    and so do masked columns (f64 3x3 19 / 33, f32 6x6 60 / 42 the exception). 4x4 with the
    straight-line tile on Zen 4 (100k products into a reused output, ms, min of 30, two runs):
    float64 0.50 against 0.54 unrolled, float32 0.30-0.60 against 0.45-0.91. Products in whole wide
    tiles (:func:`wide_stack_fits`: 16x16 float64 on AVX-512) run in those."""
    square = m == k == n == SMALL_TILE_ROWS
    small = n % (SMALL_VECTOR_BYTES // itemsize) == 0 and n >= 8 and m * n <= 64
    return square or small or wide_stack_fits(m, k, n, itemsize)


_SMALL_KERNELS = {}
#: Largest m, k, n for which a kernel is compiled with the sizes as constants.
SMALL_FIXED_MAX = 16


def small_fixed_kernel(m, k, n):
    """Parallel stacked ``c[t] = a[t] @ b[t]`` compiled for these exact (m, k, n) (all >= 1).

    With the sizes known at compile time LLVM unrolls the whole product, each ``c[t, i, j]`` is
    accumulated in a register and stored once, and there is no loop control per tiny row: measured
    on 100k 4x4 f64 stacks, 2.6 ms with the generic kernel vs 1.3 ms with this one. Each shape
    compiles once (a closure; Numba's cache key includes the closure's values, so the on-disk cache
    keeps one entry per shape).
    """
    key = (m, k, n)
    kernel = _SMALL_KERNELS.get(key)
    if kernel is None:
        kernel = _SMALL_KERNELS[key] = _make_small_fixed(m, k, n)
    return kernel


def stack_key(m, k, n, dtype):
    """The key in :data:`FIXED` of a stack of m x k @ k x n products of ``dtype`` (a NumPy dtype,
    one throughout)."""
    return (dtype.char, m, k, n)


def fits_fixed(m, k, n):
    """Whether m x k @ k x n products have a per-size kernel (:func:`small_fixed_kernel`): every side
    1 to SMALL_FIXED_MAX. ``fastla.matmul``'s small stacks run it there unless the vector tiles beat
    it (:func:`tiles_beat_unrolled`, operands of one dtype)."""
    return 0 < min(m, k, n) and max(m, k, n) <= SMALL_FIXED_MAX


def _runs_fixed(m, k, n, itemsize):
    """Whether a stack of such products of one dtype runs its per-size kernel (what :data:`FIXED`
    judges sizes by, as ``fastla.matmul`` dispatches them)."""
    return fits_fixed(m, k, n) and not tiles_beat_unrolled(m, k, n, itemsize)


@functools.cache
def _fixed_signature(dtype):
    """The argument types the per-size kernels compile for ``dtype`` (read-only inputs, a writable
    result: as ``fastla.matmul`` calls them)."""
    typeof = _jit.numba.typeof
    ro = typeof(_intrinsics.kernel_input(np.empty((1, 1, 1), dtype)))
    return (ro, ro, typeof(np.empty((1, 1, 1), dtype)))


def _fixed_compiled(key):
    """Whether a stack of this key runs without compiling for its size: a kernel that is not
    per-size (vector tiles, larger products), or its per-size kernel compiled here."""
    char, m, k, n = key
    dtype = np.dtype(char)
    if not _runs_fixed(m, k, n, dtype.itemsize):
        return True
    kernel = _SMALL_KERNELS.get((m, k, n))
    return kernel is not None and _fixed_signature(dtype) in kernel.overloads


def _fixed_cached(key):
    char, m, k, n = key
    return _first_use.in_disk_cache(small_fixed_kernel(m, k, n), _fixed_signature(np.dtype(char)))


def compile_stack(key):
    """Compile (or load from the cache) the per-size kernel of ``key`` and ``matmul``'s kernels
    around it: a forced ``fastla.matmul`` of a few products of those sizes (the job :data:`FIXED`
    runs in the background: :class:`fastla._first_use.SizeBackground`)."""
    import fastla

    char, m, k, n = key
    fastla.matmul(np.ones((8, m, k), char), np.ones((8, k, n), char), backend="numba")


#: The per-size stacked products as a family (:mod:`fastla._first_use`), keyed by
#: :func:`stack_key`: compiling one took 0.49-0.55 s for every size measured (Zen 4, 2 to 16,
#: float32 and float64, first call after a full ``fastla warmup``).
FIXED = _first_use.Sizes(
    "unrolled stacked product",
    _fixed_compiled,
    _fixed_cached,
    lambda key: 0.5,
    elsewhere=_first_use.SizeBackground(__name__, "compile_stack"),
)


def _make_small_fixed(M, K, N):
    # a prange loop, not tasks of parallel_tasks (0.10-0.15 s to compile a size against 0.35-0.5):
    # Numba compiles a prange's body with its arrays' data marked non-aliasing, and without that
    # LLVM reloaded the operands after every store to C (Zen 4, 100 000 products, two threads:
    # float32 12 x 12 0.50 -> 5.1 ms, float64 3 x 3 0.24 -> 0.42 ms)
    @jit(parallel=True)
    def kernel(a, b, c):
        for t in prange(a.shape[0]):
            wide_vectors()
            for i in range(M):
                for j in range(N):
                    s = a[t, i, 0] * b[t, 0, j]
                    for p in range(1, K):
                        s += a[t, i, p] * b[t, p, j]
                    c[t, i, j] = s

    return kernel
