"""No kernel reads past the end of its inputs.

A NumPy array can end exactly where mapped memory ends (``np.memmap`` of a file whose size is a
multiple of the page size, a buffer from another library), and a vector load that runs past the
last element faults there. The compiled kernels' tails must stop at the last element. Here each
input is copied to the end of a page followed by a page mapped with no access, and kernels with
such tails run on it in a child process: a read past the end kills the child with SIGSEGV, which
this test reports as a failure (a crash in pytest's own process would take the run down with it).
The kernels: the small products' register tiles with their masked last columns (``kernels.matmul``;
``fastla.matmul``'s stacks run the same tiles) and the exp and softmax row loops with their
remainders, float32 and float64 over the tail shapes. Each signature compiles in the child on a
cold cache (7 s for these); a one-off sweep of the public functions the same way (stacks, solves,
cosine, top-k with a float16 corpus, attention, power iteration: 6 700 calls) read nothing past
an input either, but compiled for 3 minutes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fastla import _jit

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through libc (Linux)"),
    pytest.mark.skipif(not _jit.JIT_ENABLED, reason="the compiled kernels' loads (the JIT is off)"),
]

SCRIPT = textwrap.dedent(
    """
    import ctypes, itertools, mmap, sys
    import numpy as np
    import fastla as fl
    from fastla import kernels as K

    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    maps = []

    def at_page_end(x):
        # a copy of x whose last byte is the last byte before a PROT_NONE page
        x = np.ascontiguousarray(x)
        page = mmap.PAGESIZE
        pages = -(-x.nbytes // page) + 1
        m = mmap.mmap(-1, pages * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if libc.mprotect(base + (pages - 1) * page, page, 0) != 0:
            sys.exit(3)
        start = (pages - 1) * page - x.nbytes
        y = np.frombuffer(m, np.uint8)[start : start + x.nbytes].view(x.dtype).reshape(x.shape)
        y[...] = x
        maps.append(m)
        return y

    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for m, k, n in itertools.product((1, 3, 4, 5, 9), (1, 3, 8, 9), (1, 3, 4, 7, 8, 9, 16, 17)):
            a = at_page_end(rng.standard_normal((m, k)).astype(dt))
            b = at_page_end(rng.standard_normal((k, n)).astype(dt))
            np.testing.assert_allclose(K.matmul(a, b), a @ b, rtol=1e-4, atol=1e-4)
        for rows, w in itertools.product((1, 3), (1, 3, 7, 8, 9, 15, 16, 17, 33)):
            x = at_page_end(rng.standard_normal((rows, w)).astype(dt))
            K.exp(x), K.softmax(x)
    print("read no byte past an input")
    """
)


def test_no_kernel_reads_past_the_end_of_its_inputs():
    cmd = [sys.executable, "-c", SCRIPT]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    tail = f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"exit {proc.returncode} (-11: a read past an input's end faulted)\n{tail}"
    assert "read no byte past an input" in proc.stdout
