"""``python -m fastla tune``: measure where each compiled kernel starts to beat NumPy on this
machine, write the crossovers to the auto profile (:mod:`fastla._profile`), and report ``auto``'s
regret before and after.

For each tunable threshold (:data:`SWEEPS`) the sweep times the public function under ``auto``
with the threshold set to never (NumPy as ``auto`` runs it: :func:`_calls`), with
``backend="numba"`` and under ``auto`` over a range of sizes, in float32 and float64
(or, for a threshold between two compiled kernels, such as top-k's streamed and packed ones, each
kernel forced), at fastla's current thread count (BLAS left at its default, as a user's call runs).

Each impl is timed in turn: one untimed call (a compile, on a cold cache), then untimed calls for
SETTLE_S, then 7 rounds of at least 8 ms of calls timed in batches of at least 0.5 ms, and the
fastest batch is kept: the steady-state time of a call. Noise on a shared machine only slows a
batch down, and so does the switch between BLAS's thread pool and fastla's: the other pool's
threads keep spinning after their last call (OpenBLAS's for ~2^28 cycles, 0.1-0.12 s), and on two
cores whatever runs meanwhile loses a core's share to them. Measured on Zen 4 (float64 attention,
4 x 256 x 256 x 64, 1.1 ms a call): the 60 calls after one 300^2 NumPy product ran at 1.6-2.1 ms,
the ones after 0.1 s of waiting recovered from the sixth call on. Rounds interleaved between the
impls (every impl once per round, one untimed call each) kept every compiled-side batch inside
that window: the same kernel read 0.92-1.29 ms through auto against 0.83-0.84 timed alone, auto's
regret read up to 1.47 where auto ran the very kernel it was compared with, and the crossovers
leant towards NumPy. (On a Zen 5 the switch had stalled one call for a scheduler slice, ~4 ms,
once in the first ~10 ms; timing whole rounds let that into every round, and only the fastest
batch is kept since.) Where the faster side changes between neighbouring sizes, or auto's regret
reads above 1.1, the size is measured again after the whole pass and each impl keeps its faster
timing (:func:`measure_pass`, :func:`_second_look`): a second look at another moment of the
machine, which interleaved rounds had given every size.

The threshold is the swept size (or just past the sweep) with the smallest worst regret over
every swept point of both dtypes (:func:`crossover`): where the faster side splits cleanly, the
smallest swept size from which the compiled kernel is at least as fast as NumPy at every larger
one (or 0, every size, for a sweep whose ``start`` says so, when it wins at the smallest one). A
threshold serves both dtypes, but for one GEMM, whose crossover differs by dtype and which has a
threshold per dtype (knobs ``matmul_gemm`` and ``matmul_gemm_f32``).

Regret of a call = time(auto) / min(time(numpy), time(numba)) (or of the two kernels a threshold
chooses between): 1.0 when auto picked the faster one
(plus its dispatch), more when it picked the slower. ``--check`` (and ``python -m fastla bench
--sweep``) measures the regret of the thresholds in force without writing anything.
"""

from __future__ import annotations

import functools
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import fastla
from fastla import _first_use, _jit, _profile
from fastla.bench.runner import settle

ROUNDS = 7
MIN_BATCH_S = 0.0005  # one timed batch of calls
MIN_ROUND_S = 0.008  # the timed calls of one impl in one round
#: untimed calls of an impl before its timed rounds, while the previous impl's threads stop spinning
#: (the benchmarks' :func:`fastla.bench.runner.settle`, for this long)
SETTLE_S = 0.12
MIN_BATCHES = 2


@dataclass(frozen=True)
class Sweep:
    """One tunable threshold: ``op``'s public call at each swept parameter ``p``."""

    op: str  # the public function swept
    unit: str  # what the threshold counts
    params: tuple[int, ...]
    value: Callable[[int], int]  # p -> the size the auto rule compares with the threshold
    case: Callable[[int, np.dtype, np.random.Generator], tuple[tuple, dict]]
    label: Callable[[int], str]
    knob: str = ""  # the key of fastla._profile.KNOBS it sets ("": op)
    # the threshold where numba loses at the largest swept size: None puts it just past the sweep
    # (the kernel is taken to win beyond), an int (such as _profile.NEVER) is used as is
    never: int | None = None
    # the threshold where numba wins at the smallest swept size already: None puts it at that size
    # (nothing known below it), an int (0: every size) is used as is; for a kernel whose win at the
    # smallest size is its fixed cost's (the per-element work there is already negligible)
    start: int | None = None
    # what the threshold chooses between: the side taken below it, then the one at or above it
    sides: tuple[str, str] = ("numpy", "numba")
    # (fn, args, kwargs) -> {side: a call of that side}; None: the public function with backend=side
    calls: Callable | None = None
    dtypes: tuple = (np.float32, np.float64)  # swept; one threshold weighs them all

    def __post_init__(self):
        if not self.knob:
            object.__setattr__(self, "knob", self.op)


def _normal(rng, shape, dt):
    return rng.standard_normal(shape).astype(dt)


def _forced_rule(module, key, value, fn):
    """``fn`` run with ``module.AUTO_RULE[key]`` set to ``value`` (restored after)."""

    def call():
        rule = module.AUTO_RULE
        before = rule[key]
        rule[key] = value
        try:
            return fn()
        finally:
            rule[key] = before

    return call


def _topk_kernels(fn, args, kwargs):
    """The numba top-k's two kernels, each forced: the corpus streamed, or packed."""
    from fastla import similarity

    def numba():
        return fn(*args, backend="numba", **kwargs)

    key = "topk_packed_min_queries"
    return {
        "stream": _forced_rule(similarity, key, _profile.NEVER, numba),
        "packed": _forced_rule(similarity, key, 0, numba),
    }


def _matmul_module():
    return importlib.import_module("fastla.matmul")  # ``fastla.matmul`` is the function


#: the stack length of the stacked-products sweep: the least the rule takes
_STACK = _matmul_module().STACK_MIN_PRODUCTS


def _solve_case(p, dt, rng):
    a = _normal(rng, (p, 4, 4), dt) + 4 * np.eye(4, dtype=dt)
    return (a, _normal(rng, (p, 4, 1), dt)), {}


SWEEPS = (
    Sweep(
        "matmul",
        "4x4 products in a stack",
        (8, 16, 32, 64, 128, 256, 512, 1024, 4096),
        lambda p: p,
        lambda p, dt, rng: ((_normal(rng, (p, 4, 4), dt), _normal(rng, (p, 4, 4), dt)), {}),
        lambda p: f"{p} x 4x4 @ 4x4",
    ),
    *(
        Sweep(  # one product: a threshold per dtype
            "matmul",
            "multiply-adds m*k*n of one GEMM",
            (64, 96, 128, 192, 256, 384, 512),
            lambda p: p**3,
            lambda p, dt, rng: ((_normal(rng, (p, p), dt), _normal(rng, (p, p), dt)), {}),
            lambda p: f"{p}x{p} @ {p}x{p}",
            knob=knob,
            never=_profile.NEVER,
            dtypes=(dt,),
        )
        for knob, dt in (("matmul_gemm", np.float64), ("matmul_gemm_f32", np.float32))
    ),
    Sweep(  # the shortest stack the rule takes, of ever larger products: its work decides
        "matmul",
        f"multiply-adds in a stack ({_STACK} float64 products of side p)",
        (24, 32, 40, 48, 56, 64),
        lambda p: _matmul_module().stack_work(p, p, p, _STACK, 8),
        lambda p, dt, rng: ((_normal(rng, (_STACK, p, p), dt), _normal(rng, (_STACK, p, p), dt)), {}),
        lambda p: f"{_STACK} x {p}x{p} @ {p}x{p}",
        knob="matmul_stack_work",
        never=_profile.NEVER,
        dtypes=(np.float64,),
    ),
    Sweep(
        "solve",
        "4x4 systems in a stack",
        (8, 16, 32, 64, 128, 256, 512, 1024, 4096),
        lambda p: p,
        _solve_case,
        lambda p: f"{p} x 4x4 systems",
    ),
    Sweep(  # from one row: a call's fixed cost decides the smallest sizes
        "softmax",
        "elements (rows of 16)",
        (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096),
        lambda p: 16 * p,
        lambda p, dt, rng: ((_normal(rng, (p, 16), dt),), {}),
        lambda p: f"{p}x16",
        start=0,
    ),
    Sweep(
        "cosine_similarity",
        "n*m*d (n = m, d = 64)",
        (8, 16, 32, 64, 128, 256, 512),
        lambda p: p * p * 64,
        lambda p, dt, rng: ((_normal(rng, (p, 64), dt), _normal(rng, (p, 64), dt)), {}),
        lambda p: f"{p}x{p}x64",
    ),
    Sweep(
        "cosine_topk",
        "n*m*d (10 queries, d = 64, k = 10)",
        (100, 300, 1000, 3000, 10000, 30000),
        lambda p: 10 * p * 64,
        lambda p, dt, rng: ((_normal(rng, (10, 64), dt), _normal(rng, (p, 64), dt), 10), {}),
        lambda p: f"10x{p}x64 k=10",
    ),
    Sweep(
        "cosine_topk",
        "queries (20 000 x 256 corpus, k = 10)",
        (8, 16, 32, 64, 128),
        lambda p: p,
        lambda p, dt, rng: ((_normal(rng, (p, 256), dt), _topk_corpus(np.dtype(dt)), 10), {}),
        lambda p: f"{p}x20000x256 k=10",
        knob="cosine_topk_stream",
        sides=("stream", "packed"),
        calls=_topk_kernels,
    ),
    Sweep(
        "scaled_dot_product_attention",
        "scores (4 heads, L = S, E = 64)",
        (32, 64, 128, 256, 512),  # fewer query rows take the row kernel whatever the scores
        lambda p: 4 * p * p,
        lambda p, dt, rng: (tuple(_normal(rng, (4, p, 64), dt) for _ in range(3)), {}),
        lambda p: f"4x{p}x{p}x64",
    ),
)


@functools.cache
def _topk_corpus(dt):
    """The stream/packed sweep's corpus for ``dt``, made once (one for all its sizes)."""
    return _normal(np.random.default_rng(1), (20_000, 256), dt)


def _calls_per_batch(fn):
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 >= MIN_BATCH_S:
            return n
        n *= 2


def time_impls(fns, rounds=ROUNDS):
    """Seconds per call of each callable in ``fns`` at steady state: the fastest batch of calls
    over its rounds, each impl after SETTLE_S of its own untimed calls (see the module
    docstring), warm-up excluded."""
    best = dict.fromkeys(fns, float("inf"))
    for name, fn in fns.items():
        fn()  # warm-up (a compile, on a cold cache)
        n = _calls_per_batch(fn)
        settle(fn, (), {}, SETTLE_S, clock=time.perf_counter)
        for _ in range(rounds):
            start = time.perf_counter()
            batches = 0
            while batches < MIN_BATCHES or time.perf_counter() - start < MIN_ROUND_S:
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - t0) / n)
                batches += 1
    return best


def measure_pass(sweeps, rng, progress=lambda label: None, *, with_auto=True):
    """``{(knob, dtype name): [(p, {impl: seconds})]}``: every sweep's sizes (``progress(label)``
    before each sweep and dtype), then a second look at the sizes where a slow phase of the
    machine would move the result (:func:`_second_look`), each impl keeping the faster of its two
    timings. The second looks come after the whole pass, a minute or so later: a slow phase lasts
    from a few hundred ms to several seconds here, and a second look right after the first fell in
    the same one (a 10-query top-k read 101 us through a whole process, 67-70 us in the next)."""
    first = {}
    for sweep in sweeps:
        fn = getattr(fastla, sweep.op)
        for dt in sweep.dtypes:
            progress(f"{sweep.knob} {np.dtype(dt).name}")
            calls, rows = [], []
            for p in sweep.params:
                args, kwargs = sweep.case(p, np.dtype(dt), rng)
                calls.append(_calls(sweep, fn, args, kwargs, with_auto))
                rows.append((p, time_impls(calls[-1])))
            first[sweep.knob, np.dtype(dt).name] = (sweep, calls, rows)
    for sweep, calls, rows in first.values():
        for i in _second_look(sweep, rows):
            again = time_impls(calls[i])
            rows[i] = (rows[i][0], {name: min(t, again[name]) for name, t in rows[i][1].items()})
    return {key: rows for key, (_, _, rows) in first.items()}


def _second_look(sweep, rows):
    """Indices of the sizes measured twice: where the faster side differs from a neighbouring
    size's (the crossover is decided there, and one slow phase of a few hundred ms once turned a
    single size and moved a crossover tenfold), and where auto's regret reads above 1.1 (a slow
    phase during auto's rounds alone reads as regret)."""
    below, above = sweep.sides
    wins = [t[above] <= t[below] for _, t in rows]
    picked = []
    for i, (_, t) in enumerate(rows):
        flips = (i > 0 and wins[i] != wins[i - 1]) or (i + 1 < len(rows) and wins[i] != wins[i + 1])
        if flips or ("auto" in t and regret(t) > 1.1):
            picked.append(i)
    return picked


def _calls(sweep, fn, args, kwargs, with_auto):
    """``{side: call}`` of a sweep's point (and ``"auto"``). The NumPy side is the call as ``auto``
    makes it below the threshold (the knob set to NEVER: its fast path, then NumPy), not
    ``backend="numpy"``, which takes the full validation path: ~4-5 us more a call, so the NumPy
    side of small calls read slow and the crossovers came out low (Zen 4, stacks of 4x4 float64
    products: NumPy through ``backend="numpy"`` 6.6 / 7.4 / 8.2 us at 8 / 32 / 64 products, as
    auto runs it 4.7 / 5.9 us at 32 / 64, against the kernel's 7.6-8.0: crossover 64 products,
    where timed so it is 256, and auto's kernel ran at 0.7-0.9x NumPy's speed from 64 to 128)."""
    if sweep.calls is not None:
        fns = sweep.calls(fn, args, kwargs)
    else:
        fns = {side: (lambda side=side: fn(*args, backend=side, **kwargs)) for side in sweep.sides}
        if sweep.sides[0] == "numpy":
            module, key = _profile.KNOBS[sweep.knob]
            rules = importlib.import_module(f"fastla.{module}")
            explain = functools.partial(fastla.explain, sweep.op, *args, **kwargs)
            # where auto runs NumPy below the threshold at this size (attention's fewest query rows
            # run the row kernel whatever the threshold: backend="numpy" there, as before)
            if _forced_rule(rules, key, _profile.NEVER, explain)()[0] == "numpy":
                fns["numpy"] = _forced_rule(rules, key, _profile.NEVER, lambda: fn(*args, **kwargs))
    if with_auto:
        fns["auto"] = lambda: fn(*args, **kwargs)
    return fns


def crossover(sweep, *row_sets):
    """The threshold: of the swept sizes (and just past the sweep), the one whose choice has the
    smallest worst regret over every swept point of every row set (one per dtype), then the
    smallest total regret, then the largest. Where the faster side splits cleanly that is the first
    swept size from which the side above the threshold wins at every larger one; where the dtypes
    disagree (attention at 4x32x32 on a Zen 5: float32 even, float64 numba 1.3x faster) it weighs
    the two instead of taking the larger crossover, which cost float64 a regret of 1.25."""
    below, above = sweep.sides
    points = [(sweep.value(p), t) for rows in row_sets for p, t in rows]
    past = (
        max(sweep.value(p) for rows in row_sets for p, _ in rows) + 1 if sweep.never is None else sweep.never
    )
    best = None
    for c in sorted({v for v, _ in points} | {past}):
        regrets = [t[above if v >= c else below] / min(t[above], t[below]) for v, t in points]
        key = (max(regrets), sum(regrets))
        if best is None or key <= best[0]:
            best = (key, c)
    if sweep.start is not None and best[1] == min(v for v, _ in points):
        return sweep.start  # the above side at every swept size: from the start (see Sweep.start)
    return best[1]


def regret(t):
    return t["auto"] / min(v for side, v in t.items() if side != "auto")


def _progress(done, total, label, stream):
    width = 24
    fill = width * done // max(total, 1)
    stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} {label:<48}")
    stream.flush()


def run(*, write=True, ops=None, stream=None, out=None, plot_path=None):
    """Measure every sweep (or ``ops``), print the report; write the profile unless ``write`` is
    False; draw the sweep to ``plot_path`` (PNG) when given. Returns ``{"rules", "regret_before",
    "regret_after"}``. ``auto`` is timed at its steady state: an op's kernels compile at its first
    call meanwhile (``fastla._first_use.WAIT_FOR_KERNELS`` off), not after NumPy's calls have paid
    for them."""
    waits = _first_use.WAIT_FOR_KERNELS
    _first_use.WAIT_FOR_KERNELS = False
    try:
        return _run(write, ops, stream, out, plot_path)
    finally:
        _first_use.WAIT_FOR_KERNELS = waits


def _run(write, ops, stream, out, plot_path):
    stream = sys.stderr if stream is None else stream
    out = sys.stdout if out is None else out
    if not _jit.JIT_ENABLED:
        why = _jit.NUMBA_IMPORT_ERROR or "the JIT is off"
        raise RuntimeError(f"fastla tune needs the compiled kernels: {why}")
    sweeps = [s for s in SWEEPS if ops is None or s.op in ops]
    threads = fastla.get_num_threads()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    total = sum(len(s.dtypes) for s in sweeps) * (2 if write else 1)
    done = 0
    if write:  # the regret "before" is that of the shipped thresholds
        _profile.use_shipped()

    def progress(label):
        nonlocal done
        _progress(done, total, label, stream)
        done += 1

    before = measure_pass(sweeps, rng, progress)
    rules = {}
    for sweep in sweeps:
        rules[sweep.knob] = crossover(sweep, *(before[sweep.knob, np.dtype(dt).name] for dt in sweep.dtypes))
    after = {}
    if write:
        sides = {s.knob: s.sides for s in sweeps}
        key = _profile.machine_key()
        record = {
            "rules": rules,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "fastla": fastla.__version__,
            "measured": {  # seconds per call: [size parameter, numpy, numba] (or the knob's sides)
                f"{knob} {dt}": [[p, *(t[side] for side in sides[knob])] for p, t in rows]
                for (knob, dt), rows in before.items()
            },
        }
        path = _profile.profile_path() or _profile.default_path()
        _profile.write(path, key, threads, record)
        _profile.load()
        # auto again, under the measured thresholds
        after = measure_pass(sweeps, rng, lambda label: progress(label + " (tuned)"))
    _progress(done, total, f"done in {time.perf_counter() - start:.0f} s", stream)
    stream.write("\n")
    report(sweeps, before, after, rules, threads, out)
    if plot_path:
        shipped = {s.knob: _profile.shipped(s.knob) for s in sweeps}
        drawn = plot(sweeps, before, rules, plot_path, shipped=shipped)
        print(f"plot: {plot_path}" if drawn else "plot skipped: matplotlib is not installed", file=out)
    if write:
        status = _profile.tune_profile()["status"]
        print(f"profile: {path} (machine {key}, {threads} threads); now in force: {status}", file=out)
    worst = lambda rows: max((regret(t) for r in rows.values() for _, t in r), default=float("nan"))  # noqa: E731
    return {"rules": rules, "regret_before": worst(before), "regret_after": worst(after) if after else None}


def report(sweeps, before, after, rules, threads, out):
    label = "shipped" if after else "in force"
    print(f"auto's regret = time(auto) / min(numpy, numba); {threads} fastla threads, BLAS default", file=out)
    for sweep in sweeps:
        below, above = sweep.sides
        print(f"\n{sweep.knob}: threshold in {sweep.unit}", file=out)
        head = f"  {'size':<22} {'dtype':<8} {below:>10} {above:>10}  {'regret ' + label:>15}"
        print(head, end="", file=out)
        print(f"  {'regret tuned':>12}" if after else "", file=out)
        for dt in sweep.dtypes:
            name = np.dtype(dt).name
            tuned = dict(after.get((sweep.knob, name), []))
            for p, t in before[sweep.knob, name]:
                line = (
                    f"  {sweep.label(p):<22} {name:<8} {t[below] * 1e6:>8.1f}us {t[above] * 1e6:>8.1f}us"
                    f"  {regret(t):>15.2f}"
                )
                if p in tuned:
                    line += f"  {regret(tuned[p]):>12.2f}"
                print(line, file=out)
        current = _profile.shipped(sweep.knob)
        print(f"  crossover measured: {rules[sweep.knob]} (shipped default {current})", file=out)
    measured = {}
    for name, rows in (("with " + label + " thresholds", before), ("with tuned thresholds", after)):
        if rows:
            values = [regret(t) for r in rows.values() for _, t in r]
            print(
                f"\nmax regret {name}: {max(values):.2f} (median {statistics.median(values):.2f}, "
                f"{sum(v > 1.1 for v in values)} of {len(values)} cases above 1.1)",
                file=out,
            )
    # which thresholds each measurement judged: "before" is the shipped one when tuning (the
    # profile is set aside), else whatever is in force
    in_force = "tuned" if _profile.tune_profile()["status"].startswith("tuned") else "shipped"
    measured["shipped" if after else in_force] = [regret(t) for r in before.values() for _, t in r]
    if after:
        measured["tuned"] = [regret(t) for r in after.values() for _, t in r]
    if len(sweeps) == len(SWEEPS):  # the targets judge the whole sweep, not a subset (--ops)
        regret_targets(measured, out)


def regret_targets(measured, out):
    """Print the ``[[regret]]`` targets of ``benchmarks/targets.toml`` against this run (skipped,
    saying so, outside a source checkout)."""
    from fastla.bench import report
    from fastla.bench.cli import find_benchmarks_dir

    try:
        path = find_benchmarks_dir() / "targets.toml"
    except SystemExit:
        print("\nregret targets: no benchmarks/targets.toml here (not a source checkout)", file=out)
        return
    print("\nregret targets (benchmarks/targets.toml):", file=out)
    for e, worst, above, n, status in report.regret_results(report.load_regret_targets(path), measured):
        if worst is None:
            print(f"  {e['thresholds']} thresholds: max regret <= {e['max_regret']}: {status}", file=out)
        else:
            print(
                f"  {e['thresholds']} thresholds: max regret {worst:.2f} vs target <= {e['max_regret']}: "
                f"{status} ({above} of {n} cases above 1.1)",
                file=out,
            )


def plot(sweeps, before, rules, path, shipped=None):
    """Time per call against the swept size, one panel per threshold, one line per impl and dtype
    (only the sizes of one sweep are joined), with the measured crossover and the shipped one
    marked. Returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(len(sweeps), 1, figsize=(8, 3.2 * len(sweeps)), squeeze=False)
    for ax, sweep in zip(axes[:, 0], sweeps, strict=True):
        for dt in sweep.dtypes:
            style = "-" if np.dtype(dt) == np.float32 else "--"
            rows = before[sweep.knob, np.dtype(dt).name]
            xs = [sweep.value(p) for p, _ in rows]
            for impl, colour in zip((*sweep.sides, "auto"), ("C1", "C0", "C2"), strict=True):
                ys = [t[impl] * 1e6 for _, t in rows]
                ax.plot(xs, ys, style, marker="o", ms=3, color=colour, label=f"{impl} {np.dtype(dt).name}")
        ax.axvline(rules[sweep.knob], color="k", lw=1, label=f"crossover measured ({rules[sweep.knob]})")
        ref = _profile.shipped(sweep.knob) if shipped is None else shipped[sweep.knob]
        ax.axvline(ref, color="grey", lw=1, ls=":", label=f"shipped ({ref})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(sweep.unit)
        ax.set_ylabel("us per call")
        ax.set_title(sweep.knob, fontsize=10)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(args):
    ops = set(args.ops.split(",")) if args.ops else None
    unknown = (ops or set()) - {s.op for s in SWEEPS}
    if unknown:
        known = ", ".join(sorted({s.op for s in SWEEPS}))
        print(f"fastla tune: no sweep for {', '.join(sorted(unknown))}; known: {known}", file=sys.stderr)
        return 2
    if args.threads is not None:
        try:
            fastla.set_num_threads(args.threads)
        except ValueError as exc:  # outside [1, cores]: the setter's message
            print(f"fastla tune: --threads: {exc}", file=sys.stderr)
            return 2
    run(write=not args.check, ops=ops, plot_path=args.plot)
    return 0


def add_parser(sub):
    p = sub.add_parser("tune", help="measure this machine's auto crossovers and write the profile")
    p.add_argument("--ops", help="comma-separated ops (default: every tunable threshold)")
    p.add_argument("--threads", type=int, help="fastla threads to measure at (default: the current count)")
    p.add_argument("--check", action="store_true", help="measure auto's regret only; write nothing")
    p.add_argument("--plot", help="draw time against size per impl, crossovers marked, to this PNG")
    p.set_defaults(func=main)
