"""pytest plugin for ``python -m fastla bench``: one progress line per benchmark on stderr."""

import sys
import time

_state = {"total": 0, "done": 0, "t0": 0.0}


def pytest_collection_finish(session):
    _state["total"] = len(session.items)
    _state["t0"] = time.perf_counter()


def pytest_runtest_logstart(nodeid, location):
    _state["done"] += 1
    elapsed = time.perf_counter() - _state["t0"]
    name = nodeid.split("::", 1)[-1]
    print(f"[{_state['done']}/{_state['total']} {elapsed:5.0f}s] {name}", file=sys.stderr, flush=True)
