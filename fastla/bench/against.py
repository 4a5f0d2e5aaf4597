"""``python -m fastla bench --against REF``: this checkout against another commit, in the same job.

Why not a stored baseline: on shared machines the same code's ratios wander by 0.6-1.5x between
runs, so a gate against numbers measured at another time either cries wolf or is loosened until it
catches nothing. What works is timing the base and the candidate *now*, interleaved, and gating on
the difference. pytest-benchmark's ``--benchmark-compare`` / ``--benchmark-compare-fail`` compare a
run with a run saved earlier (absolute times, one version per process, not interleaved), which is
exactly the stored-baseline comparison this replaces; so this module has its own small timer.

How it measures:

* REF (a git ref, default the merge base with ``main``) is exported with ``git archive`` into a
  temporary directory, or taken from a path. It runs with this environment's interpreter and
  dependencies: a change of dependencies is not what this compares.
* Each side runs in its own process (``_against_worker.py``) with its own Numba cache directory,
  so neither version's compiled code, threads or allocations reach the other. The base's cache is
  kept per commit (``~/.cache/fastla/against/<sha>``): a second run against the same base loads
  instead of compiling.
* Both sides time the candidate's workloads (``workloads.py`` of this checkout, loaded by path in
  both processes) on the same inputs, with the same number of calls per batch. Rounds interleave
  the two sides item by item, alternating which goes first, so a burst of noise lands on both.
* Per item: the time ratio candidate / base of each round (paired), their median and quartiles, and
  the ratio of the two sides' fastest rounds. An item is *slower* only when both the median paired
  ratio and the ratio of minima exceed ``1 + threshold``; a slower item is measured again at once
  and fails the gate only if it is slower again (as ``--check`` does).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

#: the impls whose time is fastla's own code (``numpy`` is NumPy's, anchors are other libraries')
DEFAULT_IMPLS = ("numba", "auto")
WORKER = Path(__file__).with_name("_against_worker.py")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- the base checkout
def _git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _commit(repo, ref):
    """The sha of ``ref``, or SystemExit naming the ref (a typo was a CalledProcessError traceback)."""
    try:
        return _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"fastla bench --against: {ref!r} names no commit of {repo}") from None


def default_ref(repo):
    """The merge base of HEAD with ``main`` (or ``origin/main``): what a branch is judged against."""
    for main in ("main", "origin/main", "master", "origin/master"):
        try:
            return _git(repo, "merge-base", "HEAD", main)
        except subprocess.CalledProcessError:
            continue
    raise SystemExit("fastla bench --against: no main branch to take the merge base with; name a ref")


def export_ref(repo, ref, dest):
    """Write the tree of ``ref`` into ``dest`` (``git archive``: no worktree left registered)."""
    sha = _commit(repo, ref)
    proc = subprocess.Popen(["git", "-C", str(repo), "archive", "--format=tar", sha], stdout=subprocess.PIPE)
    with proc, tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    if proc.returncode != 0:
        raise SystemExit(f"fastla bench --against: git archive {ref} failed")
    return sha


def checkout(repo, ref, keep=3):
    """``(source root, sha)`` of ``ref``, exported once per commit under
    ``~/.cache/fastla/against/<sha>/src``: Numba's cache is keyed by source path, so a stable path
    lets a second run against the same base load its kernels instead of compiling them. The
    ``keep`` most recently used bases are kept."""
    sha = _commit(repo, ref)
    home = _cache_home() / "against"
    root = home / sha[:16] / "src"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        export_ref(repo, sha, root)
        (root / ".complete").write_text(sha + "\n")
    os.utime(root.parent)
    older = sorted((p for p in home.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in older[keep:]:
        shutil.rmtree(stale, ignore_errors=True)
    return root, sha


# --------------------------------------------------------------------------- one side
class Side:
    """A worker process timing one checkout (see ``_against_worker.py``)."""

    def __init__(self, name, root, workloads_file, cache_dir):
        self.name = name
        # auto at its steady state: an op's kernels compiled at its first call (fastla._first_use)
        env = {**os.environ, "FASTLA_PROFILE": "off", "FASTLA_FIRST_CALL": "compile"}
        if cache_dir is not None:  # else this environment's cache (the candidate's, warm from the tests)
            env["NUMBA_CACHE_DIR"] = str(cache_dir)
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(root), str(workloads_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=tempfile.gettempdir(),  # not a checkout: `import fastla` must find ``root``'s
            text=True,
        )

    def send(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def receive(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fastla bench --against: the {self.name} process exited ({self.proc.wait()})")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send(cmd="exit")
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:  # a dead worker's stdin
                pass


# --------------------------------------------------------------------------- measuring
@dataclasses.dataclass
class Item:
    workload: str  # workload id, e.g. "softmax[4096x4096 f32]"
    impl: str
    base: list = dataclasses.field(default_factory=list)  # seconds per call, one per round
    cand: list = dataclasses.field(default_factory=list)
    calls: int = 1
    missing: str = ""  # why it was not timed (absent in the base, failed in the candidate)
    lost: bool = False  # the base ran it and the candidate could not: a regression, not a gap

    @property
    def name(self):
        return f"{self.workload} {self.impl}"


def select_items(workloads, set_name, ops=None, impls=DEFAULT_IMPLS):
    """(workload id, impl) for fastla's own impls of the set's workloads (not the dask cluster ones:
    a cluster's start-up dominates them)."""
    return [
        Item(w.id, impl)
        for w in workloads.select(set_name, ops)
        if not w.op.startswith("dask:")
        for impl in w.impls(set_name)
        if impl in impls
    ]


def measure(base, cand, items, rounds, min_batch_s=0.02, gap_s=0.005, progress=None, seed=0):
    """Fill ``items``' ``base``/``cand`` times: ``rounds`` interleaved rounds, same calls per batch,
    the inputs placed afresh each round (the same draw on both sides; see the worker's ``_placed``)."""
    import random

    draw = random.Random(seed)
    for side in (base, cand):  # both prepare (compile) at once: one core each
        side.send(cmd="prepare", items=[[it.workload, it.impl] for it in items])
    t0 = time.perf_counter()
    prepared = {side.name: side.receive() for side in (base, cand)}
    print(f"prepared (compiled or loaded) in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    for i, it in enumerate(items):
        for side in (base, cand):
            reason = prepared[side.name]["unavailable"].get(str(i))
            if reason and not it.missing:
                it.missing = f"{side.name}: {reason}"
                # a workload new to the candidate, or one neither side runs here, is not compared;
                # one the base ran and the candidate cannot (a backend broken, an op gone) is lost
                it.lost = side is cand
        one = prepared[cand.name]["one_call_s"][i]
        if one is not None:  # the same batch on both sides, at least min_batch_s long
            it.calls = max(1, min(100_000, math.ceil(min_batch_s / max(one, 1e-9))))
    live = [(i, it) for i, it in enumerate(items) if not it.missing]
    for r in range(rounds):
        for n, (i, it) in enumerate(live):
            order = (base, cand) if (r + n) % 2 == 0 else (cand, base)
            place = draw.randrange(1 << 30)
            for side in order:
                time.sleep(gap_s)  # let the other process's spinning BLAS/OpenMP threads go idle
                side.send(cmd="time", i=i, calls=it.calls, place=place)
                (it.base if side is base else it.cand).append(side.receive()["s"])
        if progress:
            progress(r + 1, rounds)
    return items


@dataclasses.dataclass(frozen=True)
class Verdict:
    name: str
    median: float  # median over rounds of (candidate time / base time), paired by round
    q25: float
    q75: float
    of_minima: float  # candidate's fastest round / base's fastest round
    status: str  # "slower", "faster", "same", "lost: <why>" or "not compared: <why>"
    base_s: float = float("nan")  # median seconds per call
    cand_s: float = float("nan")


def _quantile(xs, q):
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def verdict(item, threshold):
    """Compare one item's rounds. Slower (faster) needs both the median paired ratio and the ratio of
    the minima beyond ``1 + threshold`` (below ``1 / (1 + threshold)``): a noise burst on one side
    moves the median of a few rounds but rarely both."""
    if item.missing or not item.base:
        why = item.missing or "no rounds"
        return Verdict(item.name, *(float("nan"),) * 4, f"{'lost' if item.lost else 'not compared'}: {why}")
    paired = [c / b for b, c in zip(item.base, item.cand, strict=True)]
    med = statistics.median(paired)
    mins = min(item.cand) / min(item.base)
    hi, lo = 1.0 + threshold, 1.0 / (1.0 + threshold)
    status = "slower" if med > hi and mins > hi else "faster" if med < lo and mins < lo else "same"
    return Verdict(
        item.name,
        med,
        _quantile(paired, 0.25),
        _quantile(paired, 0.75),
        mins,
        status,
        statistics.median(item.base),
        statistics.median(item.cand),
    )


def _fmt_s(s):
    if not math.isfinite(s):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def table(verdicts, threshold):
    lines = [
        f"time ratio candidate / base (> 1 is slower); slower/faster beyond {threshold:.0%} in both "
        "the median and the fastest rounds",
        "",
        "| workload impl | base | candidate | median ratio (q25-q75) | fastest/fastest | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for v in verdicts:
        if v.status.startswith("not compared"):
            lines.append(f"| {v.name} | - | - | - | - | {v.status} |")
            continue
        if v.status.startswith("lost"):
            lines.append(f"| {v.name} | - | - | - | - | **LOST** (the base runs it){v.status[4:]} |")
            continue
        lines.append(
            f"| {v.name} | {_fmt_s(v.base_s)} | {_fmt_s(v.cand_s)} "
            f"| {v.median:.3f} ({v.q25:.3f}-{v.q75:.3f}) | {v.of_minima:.3f} "
            f"| {'**SLOWER**' if v.status == 'slower' else v.status} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command
def _progress(label):
    def show(done, total):
        end = "" if done < total else "\n"
        print(f"\r{label}: round {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def run(
    ref=None,
    set_name="quick",
    ops=None,
    rounds=9,
    threshold=0.10,
    impls=DEFAULT_IMPLS,
    confirm=True,
    json_path=None,
    base_cache=None,
    min_batch_s=0.02,
    repo=PACKAGE_ROOT,
    workloads_file=None,
):
    """Measure this checkout against ``ref``; print the table; return the exit status: 1 when an
    item is slower beyond ``threshold`` (twice in a row with ``confirm``), when an item the base runs
    is unavailable in the candidate, or when no item could be compared at all."""
    from fastla.bench._against_worker import load_by_path

    workloads_file = Path(workloads_file or Path(__file__).with_name("workloads.py"))
    workloads = load_by_path("_fastla_against_select", workloads_file)
    items = select_items(workloads, set_name, ops, impls)
    if not items:
        raise SystemExit("fastla bench --against: no items to compare (check --ops and the set)")
    with tempfile.TemporaryDirectory(prefix="fastla-against-") as tmp:
        if ref is not None and Path(ref).is_dir():
            base_root, label = Path(ref).resolve(), str(ref)
            cache = Path(base_cache) if base_cache else Path(tmp) / "cache"
        else:
            ref = ref or default_ref(repo)
            base_root, sha = checkout(repo, ref)
            label = f"{ref} ({sha[:12]})"
            cache = Path(base_cache) if base_cache else base_root.parent / "numba-cache"
        cache.mkdir(parents=True, exist_ok=True)
        print(
            f"fastla bench --against {label}: {len(items)} items of the {set_name} set, {rounds} interleaved "
            f"rounds; base from {base_root}, candidate {repo}",
            file=sys.stderr,
        )
        cand_cache = None  # the candidate keeps this environment's Numba cache
        base = Side("base", base_root, workloads_file, cache)
        cand = Side("candidate", repo, workloads_file, cand_cache)
        try:
            t0 = time.perf_counter()
            measure(base, cand, items, rounds, min_batch_s, progress=_progress("measuring"))
            verdicts = [verdict(it, threshold) for it in items]
            print(table(verdicts, threshold))
            print(f"({time.perf_counter() - t0:.0f} s, base {label})")
            slower = [it for it, v in zip(items, verdicts, strict=True) if v.status == "slower"]
            first = verdicts
            if slower and confirm:
                names = ", ".join(it.name for it in slower)
                print(f"\nre-measuring {names} in new processes: a regression must repeat to count")
                base.close()
                cand.close()  # a new draw of process state (allocator, page placement) for both sides
                base = Side("base", base_root, workloads_file, cache)
                cand = Side("candidate", repo, workloads_file, cand_cache)
                again = [Item(it.workload, it.impl) for it in slower]
                measure(base, cand, again, rounds, min_batch_s, progress=_progress("re-measuring"), seed=1)
                second = [verdict(it, threshold) for it in again]
                print(table(second, threshold))
                slower = [it for it, v in zip(again, second, strict=True) if v.status == "slower"]
            else:
                second = []
        finally:
            base.close()
            cand.close()
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {
                    "base": label,
                    "threshold": threshold,
                    "rounds": rounds,
                    "items": [dataclasses.asdict(it) for it in items],
                    "verdicts": [dataclasses.asdict(v) for v in first],
                    "confirmed": [dataclasses.asdict(v) for v in second],
                },
                f,
                indent=1,
            )
    for it in slower:
        print(f"REGRESSION: {it.name} slower than the base beyond {threshold:.0%}, in two measurements")
    lost = [v for v in first if v.status.startswith("lost")]
    for v in lost:
        print(f"REGRESSION: {v.name} runs on the base and not on the candidate ({v.status[6:]})")
    compared = [v for v in first if v.status in ("slower", "faster", "same")]
    if not compared and not lost:  # e.g. numba importable on neither side: a pass would mean nothing
        print(f"fastla bench --against: compared nothing against {label}: every item was unavailable")
        return 1
    if not slower and not lost:
        print(f"no regressions against {label} (threshold {threshold:.0%})")
    return 1 if slower or lost else 0


def _cache_home():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastla"
