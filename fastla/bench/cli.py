"""``python -m fastla bench``: run the pytest-benchmark suite, then print fastla's report.

The numbers are pytest-benchmark's own: this command runs ``pytest benchmarks --benchmark-enable
--benchmark-only`` in a subprocess with the chosen set/ops/threads, then reads its JSON.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from fastla.bench import report


def find_benchmarks_dir():
    """``benchmarks/`` of the source checkout: the current directory's, else next to the package."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "benchmarks"
        if (candidate / "targets.toml").is_file():
            return candidate
    raise SystemExit(
        "fastla bench: no benchmarks/ directory (with targets.toml) found; run it from the fastla "
        "source checkout"
    )


def positive(kind):
    """An argparse type: ``kind`` (int or float) above 0."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _unknown_ops(args):
    """The error text for names in ``--ops`` / ``--compile-ops`` that name no workload or op (else None):
    an unknown name would select nothing, run no benchmark and report nothing."""
    from fastla import _warmup
    from fastla.bench import workloads as _w

    problems = []
    if args.ops:
        known = sorted({w.op for w in _w.WORKLOADS})
        unknown = [op for op in args.ops.split(",") if op not in known]
        if unknown:
            problems.append(f"unknown op(s) in --ops: {', '.join(unknown)}; known: {', '.join(known)}")
    if args.compile_ops and args.compile_ops not in ("all", "none"):
        known = _warmup.first_call_names()
        unknown = [op for op in args.compile_ops.split(",") if op not in known]
        if unknown:
            problems.append(
                f"unknown op(s) in --compile-ops: {', '.join(unknown)}; known: all, none, {', '.join(known)}"
            )
    return "; ".join(problems) or None


def _missing_inputs(args):
    """The error text for a file the run would read that is not there (else None): a mistyped
    ``--compare`` path silently checked the floors only, the others died in a traceback."""
    named = (
        ("--from-json", args.from_json),
        ("--plot-history", args.plot_history),
        ("--compare", args.compare),
    )
    missing = [f"{flag} {path}" for flag, path in named if path and not Path(path).exists()]
    return f"no such file or folder: {', '.join(missing)}" if missing else None


def add_parser(sub):
    p = sub.add_parser("bench", help="loop vs numba vs BLAS benchmarks, ratios and targets")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="set", action="store_const", const="quick", help="CI set (default)")
    size.add_argument("--full", dest="set", action="store_const", const="full", help="study set")
    size.add_argument("--smoke", dest="set", action="store_const", const="smoke", help="tiny inputs")
    size.add_argument(
        "--sweep",
        dest="set",
        action="store_const",
        const="sweep",
        help="auto's regret over sizes from tiny to large, per op and dtype (python -m fastla tune --check)",
    )
    p.set_defaults(set="quick", func=main)
    p.add_argument("--ops", help="comma-separated ops, e.g. matmul,softmax (default: all)")
    p.add_argument("--threads", type=positive(int), help="threads for numba and BLAS (default: all cores)")
    p.add_argument(
        "--compile-ops",
        help="ops whose cold/warm first call is measured: all, none or a comma list (default: the set's)",
    )
    p.add_argument(
        "--rounds",
        type=positive(int),
        help="minimum timed rounds per benchmark (default 5; CI uses 3); with --against, interleaved "
        "rounds per side (default 9)",
    )
    p.add_argument(
        "--max-time",
        type=positive(float),
        default=0.5,
        help="seconds of timed rounds per benchmark, never fewer rounds than --rounds (default 0.5; "
        "CI uses 0.25: four gate runs on Zen 5, two at each, spread their ratios alike, and the "
        "shorter saved 8-19 s of 92-114)",
    )
    p.add_argument("--json", help="where to write pytest-benchmark's JSON (default bench-results/)")
    p.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    p.add_argument("--check", action="store_true", help="exit 1 if a measured target is below its floor")
    p.add_argument(
        "--compare",
        help="baseline JSON, or a folder of them named by machine key (benchmarks/baselines): exit 1 on a "
        "ratio regression past the tolerance; a baseline of another machine kind is not compared",
    )
    p.add_argument(
        "--save-baseline", help="write this run's ratios as a baseline JSON (a folder: <key>.json)"
    )
    p.add_argument(
        "--no-confirm",
        dest="confirm",
        action="store_false",
        help="with --check/--compare: fail on the first measurement (default: re-measure the failing "
        "ops once, and fail only if they fail again)",
    )
    p.add_argument(
        "--against",
        nargs="?",
        const="",
        metavar="REF",
        help="time this checkout against a git ref (default: the merge base with main) or a checkout "
        "path, interleaved in separate processes; exit 1 on a regression beyond --threshold that "
        "repeats when re-measured",
    )
    p.add_argument(
        "--threshold",
        type=positive(float),
        help="with --against: the slowdown that counts as a regression (default: targets.toml's "
        "against_threshold)",
    )
    p.add_argument(
        "--base-cache", help="with --against: the base's Numba cache (default ~/.cache/fastla/against/<sha>)"
    )
    p.add_argument(
        "--history",
        help="append this run's ratios and medians to a JSON-lines history file (one line per workload)",
    )
    p.add_argument(
        "--plot-history",
        metavar="FILE",
        help="skip running: draw the ratio trend per op from a --history file (to --plot, default FILE.png)",
    )
    p.add_argument("--readme", help="regenerate the benchmark section of this README")
    p.add_argument("--from-json", help="skip running: report on an existing pytest-benchmark JSON")
    return p


def _run_pytest(bench_dir, args, json_path):
    # auto at its steady state: an op's kernels compiled at its first call (fastla._first_use)
    env = {**os.environ, "FASTLA_BENCH_SET": args.set, "FASTLA_FIRST_CALL": "compile"}
    if args.ops:
        env["FASTLA_BENCH_OPS"] = args.ops
    if args.threads:
        env["FASTLA_BENCH_THREADS"] = str(args.threads)
    if args.compile_ops:
        env["FASTLA_BENCH_COMPILE_OPS"] = args.compile_ops
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(bench_dir),
        "--benchmark-enable",
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        f"--benchmark-min-rounds={args.rounds or 5}",
        f"--benchmark-max-time={args.max_time}",
        "--benchmark-warmup=off",  # each test makes its own untimed warm-up (JIT) call
        "--benchmark-quiet",
        "-q",
        "--no-header",
        "-p",
        "no:cacheprovider",
        "-p",
        "fastla.bench.progress",
    ]
    print(f"running: {' '.join(cmd[2:])}  (set={args.set})", file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=bench_dir.parent, env=env, check=False).returncode


def _targets(bench_dir):
    from fastla.bench import workloads as _w

    return report.load_targets(bench_dir / "targets.toml", _w.WORKLOADS)


def main(args):
    if args.set == "sweep":
        from fastla import tune

        if args.threads is not None:
            import fastla

            fastla.set_num_threads(args.threads)
        tune.run(write=False, ops=set(args.ops.split(",")) if args.ops else None, plot_path=args.plot)
        return 0
    problem = _unknown_ops(args) or _missing_inputs(args)
    if problem:
        print(f"fastla bench: {problem}", file=sys.stderr)
        return 2
    bench_dir = find_benchmarks_dir()
    if args.plot_history:
        from fastla.bench import history

        out = args.plot or str(Path(args.plot_history).with_suffix(".png"))
        settings, targets = _targets(bench_dir)
        if not history.plot(args.plot_history, out, targets):
            print("plot skipped: matplotlib is not installed (pip install '.[bench]')")
            return 1
        print(f"history plot: {out}")
        return 0
    if args.against is not None:
        from fastla.bench import against

        settings, _ = _targets(bench_dir)
        threshold = args.threshold if args.threshold is not None else settings.get("against_threshold", 0.10)
        return against.run(
            ref=args.against or None,
            set_name=args.set,
            ops=args.ops.split(",") if args.ops else None,
            rounds=args.rounds or 9,
            threshold=threshold,
            confirm=args.confirm,
            json_path=args.json,
            base_cache=args.base_cache,
        )
    if args.from_json:
        json_path = Path(args.from_json)
    else:
        json_path = Path(args.json or bench_dir.parent / "bench-results" / f"{args.set}.json")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        rc = _run_pytest(bench_dir, args, json_path.resolve())
        if rc != 0:
            print(f"fastla bench: pytest exited with {rc}", file=sys.stderr)
            return rc
    try:
        rows, machine = report.load_rows(json_path)
    except ValueError as exc:  # not pytest-benchmark's JSON (--from-json)
        print(f"fastla bench: {json_path} is not a pytest-benchmark JSON: {exc}", file=sys.stderr)
        return 2
    from fastla.bench import workloads as _w

    settings, targets = _targets(bench_dir)
    tolerance = settings.get("tolerance", 0.75)
    ops = args.ops.split(",") if args.ops else None
    results = report.target_results(rows, targets, tolerance, _w.WORKLOADS, args.set, ops)
    text = report.header(machine) + "\n" + report.tables(rows)
    if results:
        text += (
            "\n**Targets** (ratio = fastla speed / anchor speed, same run and dtype; mode: all-core = both "
            "sides on all cores, per-core = one thread each side; --check fails below the floor)\n\n"
        )
        text += report.targets_table(results, tolerance)
    print(text)
    print(f"pytest-benchmark JSON: {json_path}")
    status = 0
    if args.plot:
        if report.plot(rows, args.plot):
            print(f"plot: {args.plot}")
        else:
            print("plot skipped: matplotlib is not installed (pip install '.[bench]')")
    if args.readme:
        report.update_readme(args.readme, text)
        print(f"updated the benchmark section of {args.readme}")
    key = report.machine_key(machine)
    if args.history:
        from fastla.bench import history

        n = history.append(args.history, rows, key, results, args.set)
        print(f"history: {n} lines appended to {args.history}")
    if args.save_baseline:
        import json

        path = Path(args.save_baseline)
        path = path / f"{key}.json" if path.is_dir() else path
        with open(path, "w") as f:
            data = {"key": key, "set": args.set, "machine": machine, "ratios": report.all_ratios(rows)}
            json.dump(data, f, indent=1, sort_keys=True)
        print(f"baseline written: {path} (machine key {key})")
    if not (args.check or args.compare):
        return 0
    status, failed, items = _gate(rows, machine, key, args, settings, results, tolerance)
    if failed and not args.from_json and args.confirm:
        # Shared machines swing timings by 20% and sometimes 2x for a few seconds: a failure counts
        # only when a second measurement of its ops, right away, fails the same target or baseline
        # ratio again. A real regression (a kernel made 2x slower, fallen back to scalar code) fails
        # both; a burst of noise rarely hits the same item twice.
        redo = sorted(failed)
        print(f"\nre-measuring {', '.join(redo)}: a failure must repeat to count")
        again = argparse.Namespace(**{**vars(args), "ops": ",".join(redo), "compile_ops": "none"})
        json2 = json_path.with_name(json_path.stem + "-confirm.json")
        rc = _run_pytest(bench_dir, again, json2.resolve())
        if rc != 0:
            print(f"fastla bench: pytest exited with {rc}", file=sys.stderr)
            return rc
        rows2, _ = report.load_rows(json2)
        rows = [r for r in rows if r.op not in failed] + rows2
        results = report.target_results(rows, targets, tolerance, _w.WORKLOADS, args.set, ops)
        print("verdict on the re-measured ops (the rest as first measured):")
        status2, _, items2 = _gate(rows, machine, key, args, settings, results, tolerance)
        status = confirmed(items, status2, items2)
    return status


def confirmed(items, status2, items2):
    """The gate's exit status after a re-measurement: 1 when an item (a target floor, a baseline
    ratio) failed in both measurements, or the second failed otherwise (a baseline that no longer
    matches the run); an item failing in one of them only is reported and not counted."""
    repeated = items & items2
    once = sorted((items | items2) - repeated)
    if once:
        print(f"failed in one measurement only (not counted): {'; '.join(once)}")
    print(f"failed in both: {'; '.join(sorted(repeated))}" if repeated else "no failure repeated")
    return 1 if repeated or (status2 and not items2) else 0


def _gate(rows, machine, key, args, settings, results, tolerance):
    """``--check`` and ``--compare``: print each failure; return (exit status, ops that failed, the
    failing items: a floor by target, a regression by baseline ratio)."""
    status, failed, items = 0, set(), set()
    if args.check:
        low = [r for r in results if r[2] == "BELOW FLOOR"]
        for t, measured, _ in low:
            what = f"{t['impl']} vs {t['anchor']}" if "anchor" in t else t["impl"]
            floor = report.target_floor(t, tolerance)
            print(
                f"CHECK FAILED: {t['op']} [{t['size']}] {what}: {measured:.3g} beyond the floor {floor:.3g}"
            )
            items.add(f"floor {t['op']} [{t['size']}] {what}")
            if t["op"] != "compile":  # a first-call time is measured once, in its own process
                failed.add(t["op"])
        if not low:
            measured = sum(m is not None for _, m, _ in results)
            print(f"target floors: all {measured} measured targets within their floor")
        status = 1 if low else 0
    if args.compare:
        rc, regressed = _compare(rows, machine, key, args, settings)
        status = rc or status
        failed |= {name.split("|")[0] for name in regressed}
        items |= {f"baseline {name}" for name in regressed}
    return status, failed, items


def _compare(rows, machine, key, args, settings):
    """The baseline comparison: (exit status it asks for, the regressed ratios' names ``op|size|impl``)."""
    tol = settings.get("compare_tolerance", 0.6)
    path = Path(args.compare)
    if path.is_dir() or path.suffix != ".json":  # a directory of baselines by machine kind (maybe none yet)
        path = path / f"{key}.json"
        if not path.is_file():
            print(
                f"no baseline for this machine kind ({key}) in {args.compare}: checked the target floors only"
            )
            return 0, set()
    ops = args.ops.split(",") if args.ops else None
    try:
        regressions = report.compare(rows, path, tol, machine, ops)
    except report.NotComparable as exc:
        print(f"not comparable: {exc}; checked the target floors only")
        return 0, set()
    except ValueError as exc:
        print(f"BASELINE MISMATCH: {exc}")
        return 1, set()
    for name, base, now in regressions:
        print(f"REGRESSION: {name}: {now:.2f}× now vs {base:.2f}× in the baseline (tolerance {tol})")
    if not regressions:
        print(f"no ratio regressions against {path} (tolerance {tol})")
    return (1 if regressions else 0), {name for name, _, _ in regressions}
