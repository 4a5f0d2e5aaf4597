"""Run an anchor in a separate process, so that fastla's compiled kernels cannot disturb it.

Measured on this project's machines: PyTorch's CPU kernels and Numba's ``omp`` threading layer load
the same ``libgomp``; once a fastla parallel kernel has run, ``torch`` SDPA in the same process ran
4-5x slower (1.1 s instead of 0.23 s for B=1, H=8, L=S=4096, E=64 float32, 2 threads), which would
flatter fastla. The worker process imports only NumPy and the anchor's library; it receives the
inputs once and then runs the call on request. The round trip (a few tens of microseconds) is part
of the anchor's time; the benchmarks where it is used take hundreds of milliseconds.
"""

from __future__ import annotations

import multiprocessing as mp

_WORKERS = {}


def _serve(conn, setup_name):
    """Worker loop: ``("load", args, kwargs, threads)`` then ``("run",)`` any number of times."""
    fn = _SETUPS[setup_name]()
    state = None
    while True:
        msg = conn.recv()
        if msg[0] == "load":
            _, args, kwargs, threads = msg
            state = fn(args, kwargs, threads)
            state()  # warm-up
            conn.send("ok")
        elif msg[0] == "run":
            state()
            conn.send("ok")
        else:
            return


def _torch_sdpa():
    import torch

    def load(args, kwargs, threads):
        torch.set_num_threads(threads)
        q, k, v = (torch.from_numpy(a) for a in args[:3])
        kw = {name: kwargs[name] for name in ("is_causal", "scale", "enable_gqa") if name in kwargs}
        if len(args) > 3 and args[3] is not None:
            kw["attn_mask"] = torch.from_numpy(args[3])

        def call():
            with torch.no_grad():
                torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)

        return call

    return load


def _torch_ce():
    import torch

    def load(args, kwargs, threads):
        torch.set_num_threads(threads)
        logits, target = torch.from_numpy(args[0]), torch.from_numpy(args[1])

        def call():
            with torch.no_grad():
                torch.nn.functional.cross_entropy(logits, target)

        return call

    return load


_SETUPS = {"torch_sdpa": _torch_sdpa, "torch_ce": _torch_ce}


class IsolatedAnchor:
    """A callable ``anchor(*args, **kwargs)`` whose work runs in a worker process (see module doc)."""

    def __init__(self, setup_name):
        self.setup_name = setup_name
        self._conn = None
        self._loaded = None

    def _worker(self):
        if self._conn is None:
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, self.setup_name), daemon=True)
            proc.start()
            self._conn = parent
            _WORKERS[self.setup_name] = proc
        return self._conn

    def __call__(self, *args, **kwargs):
        from fastla import get_num_threads

        conn = self._worker()
        shapes = tuple((id(a), getattr(a, "shape", None)) for a in args)
        key = (shapes, tuple(sorted(kwargs.items())), get_num_threads())
        if key != self._loaded:
            conn.send(("load", args, kwargs, get_num_threads()))
            conn.recv()
            self._loaded = key
        conn.send(("run",))
        return conn.recv()
