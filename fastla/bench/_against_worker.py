"""One side of ``python -m fastla bench --against``: a process that times one fastla checkout.

Run as a script, not imported: ``python _against_worker.py ROOT WORKLOADS_FILE``. ``ROOT`` is the
checkout to measure (its ``fastla`` package is imported, whatever else is installed), and
``WORKLOADS_FILE`` is the *candidate's* ``fastla/bench/workloads.py``, loaded by path, so that both
sides time the same workloads on the same inputs even when the base checkout defines them
differently (or not at all). This file imports nothing from the fastla package itself for the same
reason: it must run unchanged against any commit.

Protocol: one JSON object per line on stdin, one reply per line on stdout.

* ``{"cmd": "prepare", "items": [[workload_id, impl], ...], "min_batch_s": s}``: build each item's
  inputs, make the warm-up call (JIT compile or cache load), time one more call. Reply
  ``{"one_call_s": [...], "unavailable": {index: reason}}``.
* ``{"cmd": "time", "i": index, "calls": k, "place": seed}``: move the item's input arrays to a
  fresh placement (a page offset drawn from ``seed``; the same draw on both sides), call the item
  ``k`` times back to back and reply ``{"s": seconds per call}``.
* ``{"cmd": "exit"}``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time


def _load(root, workloads_file):
    sys.path.insert(0, os.path.abspath(root))
    import fastla

    where = os.path.dirname(os.path.dirname(os.path.abspath(fastla.__file__)))
    if os.path.realpath(where) != os.path.realpath(root):
        raise SystemExit(f"against worker: imported fastla from {where}, not from {root}")
    return fastla, load_by_path("_fastla_against_workloads", workloads_file)


def load_by_path(name, path):
    """Import the file ``path`` as module ``name`` (the candidate's ``workloads.py``, whatever
    package is importable as ``fastla``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def _placed(value, offset):
    """A copy of ``value`` (an array) whose data starts ``offset`` bytes into a page, else ``value``.

    Some kernels' speed depends on where their operands lie (cache-set and 4K-aliasing conflicts:
    the thin 1000x37x1000 product runs at 1.7 or 5 ms by placement on one machine). Inputs made
    once per process would give each side one draw for the whole run, so a change-free comparison
    could read as 30% slower or faster; a fresh, shared draw per round averages both sides over the
    same placements instead.
    """
    import numpy as np

    if (
        not isinstance(value, np.ndarray)
        or value.ndim == 0
        or not (value.flags.c_contiguous or value.flags.f_contiguous)
    ):
        return value
    buf = np.empty(value.nbytes + 8192, dtype=np.uint8)
    start = (-buf.ctypes.data) % 4096 + offset  # page-aligned, then the drawn offset
    order = "C" if value.flags.c_contiguous else "F"
    out = np.ndarray(value.shape, value.dtype, buf, start, order=order)
    out[...] = value
    return out


class _Threads:
    """Pin numba (through fastla's public setter) and BLAS (threadpoolctl) to ``n`` threads."""

    def __init__(self, fastla):
        self.fastla = fastla
        self.default = fastla.get_num_threads()
        try:
            from threadpoolctl import ThreadpoolController

            self.controller = ThreadpoolController()
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency of fastla
            self.controller = None
        self.limit = None

    def pin(self, n):
        n = n or self.default
        self.fastla.set_num_threads(min(n, self.default))
        if self.limit is not None:
            self.limit.restore_original_limits()
            self.limit = None
        if self.controller is not None:
            self.limit = self.controller.limit(limits=min(n, self.default), user_api="blas")


def main(argv):
    root, workloads_file = argv[1], argv[2]
    fastla, wl = _load(root, workloads_file)
    by_id = {w.id: w for w in wl.WORKLOADS}
    threads = _Threads(fastla)
    items = []  # (fn, args, kwargs, threads) per prepared item; None where unavailable
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the measured code prints must not corrupt the protocol
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "exit":
            break
        if msg["cmd"] == "prepare":
            items, one_call, unavailable = [], [], {}
            for i, (wid, impl) in enumerate(msg["items"]):
                try:
                    w = by_id[wid]
                    fn = w.callable(impl)
                    args, kwargs = w.inputs()
                    threads.pin(w.threads)
                    fn(*args, **kwargs)  # warm-up: compile or load from the cache, fault in buffers
                    t0 = time.perf_counter()
                    fn(*args, **kwargs)
                    one_call.append(time.perf_counter() - t0)
                    items.append((fn, args, kwargs, w.threads))
                except Exception as exc:  # reported: the item is missing on this side
                    unavailable[i] = f"{type(exc).__name__}: {exc}"[:300]
                    one_call.append(None)
                    items.append(None)
            reply = {"one_call_s": one_call, "unavailable": unavailable}
        elif msg["cmd"] == "time":
            fn, args, kwargs, n = items[msg["i"]]
            if msg.get("place") is not None:
                offset = 64 * (msg["place"] % 64)  # a cache line within a 4 KiB page
                args = tuple(_placed(a, offset) for a in args)
                kwargs = {k: _placed(v, offset) for k, v in kwargs.items()}
            threads.pin(n)
            calls = msg["calls"]
            t0 = time.perf_counter()
            for _ in range(calls):
                fn(*args, **kwargs)
            reply = {"s": (time.perf_counter() - t0) / calls}
        else:
            reply = {"error": f"unknown command {msg['cmd']!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv)
