"""Name Numba's compiled functions in a Linux ``perf`` profile.

``perf`` cannot name code that a JIT wrote at run time: a profile of a fastla kernel shows bare
addresses. ``perf`` reads ``/tmp/perf-<pid>.map`` (one ``START SIZE NAME`` line per function, in
hexadecimal) for such code. This runs a Python script and, as the process exits, writes that file
for every function Numba's JIT engine holds (compiled in the process or loaded from the cache), each
sized up to the next one's start::

    perf record -F 4000 -o perf.data python tools/perf_map.py my_script.py [args...]
    perf report -i perf.data --sort sym

(``perf annotate`` cannot disassemble JIT code: it is gone with the process.) The top-k
compaction's and merge's share of a k = 1000 search, a quarter and 15 % of its samples, were found
this way. It reads two private attributes of Numba's CPU engine (``_defined_symbols`` and the
LLVM execution engine); with the JIT off, or another Numba whose engine differs, it says so and
writes nothing.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys


def symbols():
    """``[(address, name), ...]`` of every function Numba's CPU JIT engine defines, by address."""
    from numba.core.registry import cpu_target

    engine = cpu_target.target_context.codegen()._engine
    found = []
    for name in sorted(engine._defined_symbols):
        try:
            address = engine._ee.get_function_address(name)
        except Exception:  # a global variable, not a function
            continue
        if address:
            found.append((address, name))
    return sorted(found)


def write_map(path=None):
    """Write the perf map of this process (default ``/tmp/perf-<pid>.map``); return its path, or
    None (with a message on stderr) where there is nothing to map."""
    from fastla import _jit

    if not _jit.JIT_ENABLED:
        print("perf_map: the JIT is off (NUMBA_DISABLE_JIT): no compiled code to name", file=sys.stderr)
        return None
    try:
        found = symbols()
    except AttributeError as exc:
        print(f"perf_map: this Numba's JIT engine is not the one this tool reads ({exc})", file=sys.stderr)
        return None
    path = path or f"/tmp/perf-{os.getpid()}.map"
    with open(path, "w") as f:
        for i, (address, name) in enumerate(found):
            end = found[i + 1][0] if i + 1 < len(found) else address + 4096
            f.write(f"{address:x} {min(end - address, 1 << 20):x} {name}\n")
    print(f"perf_map: {len(found)} functions named in {path}", file=sys.stderr)
    return path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    atexit.register(write_map)
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
