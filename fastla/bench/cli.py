"""``python -m fastla bench``: run the pytest-benchmark suite, then print fastla's report.

The numbers are pytest-benchmark's own: this command runs ``pytest benchmarks --benchmark-enable
--benchmark-only`` in a subprocess with the chosen set/ops/threads, then reads its JSON.
"""

from __future__ import annotations

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


def add_parser(sub):
    p = sub.add_parser("bench", help="loop vs numba vs BLAS benchmarks, ratios and targets")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="set", action="store_const", const="quick", help="CI set (default)")
    size.add_argument("--full", dest="set", action="store_const", const="full", help="study set")
    size.add_argument("--smoke", dest="set", action="store_const", const="smoke", help="tiny inputs")
    p.set_defaults(set="quick", func=main)
    p.add_argument("--ops", help="comma-separated ops, e.g. matmul,softmax (default: all)")
    p.add_argument("--threads", type=int, help="threads for numba and BLAS (default: all cores)")
    p.add_argument(
        "--rounds", type=int, default=5, help="minimum timed rounds per benchmark (default 5; CI uses 3)"
    )
    p.add_argument("--json", help="where to write pytest-benchmark's JSON (default bench-results/)")
    p.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target ratio is below its floor")
    p.add_argument("--compare", help="baseline JSON: exit 1 on a ratio regression past the tolerance")
    p.add_argument("--save-baseline", help="write this run's ratios as a baseline JSON")
    p.add_argument("--readme", help="regenerate the benchmark section of this README")
    p.add_argument("--from-json", help="skip running: report on an existing pytest-benchmark JSON")
    return p


def _run_pytest(bench_dir, args, json_path):
    env = {**os.environ, "FASTLA_BENCH_SET": args.set}
    if args.ops:
        env["FASTLA_BENCH_OPS"] = args.ops
    if args.threads:
        env["FASTLA_BENCH_THREADS"] = str(args.threads)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(bench_dir),
        "--benchmark-enable",
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        f"--benchmark-min-rounds={args.rounds}",
        "--benchmark-max-time=0.5",
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


def main(args):
    bench_dir = find_benchmarks_dir()
    if args.from_json:
        json_path = Path(args.from_json)
    else:
        json_path = Path(args.json or bench_dir.parent / "bench-results" / f"{args.set}.json")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        rc = _run_pytest(bench_dir, args, json_path.resolve())
        if rc != 0:
            print(f"fastla bench: pytest exited with {rc}", file=sys.stderr)
            return rc
    rows, machine = report.load_rows(json_path)
    settings, targets = report.load_targets(bench_dir / "targets.toml")
    results = report.target_results(rows, targets, settings.get("tolerance", 0.75))
    results = [r for r in results if r[2] != "not run"]
    text = report.header(machine) + "\n" + report.tables(rows)
    if results:
        text += "\n**Targets** (ratio = fastla speed / anchor speed, same run, threads and dtype)\n\n"
        text += report.targets_table(results)
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
    if args.save_baseline:
        import json

        with open(args.save_baseline, "w") as f:
            json.dump({"machine": machine, "ratios": report.all_ratios(rows)}, f, indent=1, sort_keys=True)
        print(f"baseline written: {args.save_baseline}")
    if args.check:
        low = [r for r in results if r[2] == "BELOW FLOOR"]
        for t, measured, _ in low:
            print(
                f"CHECK FAILED: {t['op']} {t['size']} {t['impl']} vs {t['anchor']}: {measured:.2f}× < floor"
            )
        status = status or (1 if low else 0)
    if args.compare:
        tol = settings.get("compare_tolerance", 0.5)
        regressions = report.compare(rows, args.compare, tol)
        for key, base, now in regressions:
            print(f"REGRESSION: {key}: {now:.2f}× now vs {base:.2f}× in the baseline (tolerance {tol})")
        if not regressions:
            print(f"no ratio regressions against {args.compare} (tolerance {tol})")
        status = status or (1 if regressions else 0)
    return status
