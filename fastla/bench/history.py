"""Benchmark history: ``bench --history FILE`` appends a run, ``bench --plot-history FILE`` draws it.

The file is JSON lines, one per workload per run::

    {"commit": "48a44e6...", "date": "2026-12-01T05:02:11+00:00", "key": "<machine key>",
     "set": "quick", "op": "matmul", "size": "1024^3 f64 1t",
     "ratios": {"numba/numpy": 0.93}, "medians": {"numba": 0.0712, "numpy": 0.0663},
     "targets": {"numba vs numpy": 0.93}}

``ratios`` are :func:`fastla.bench.report.all_ratios` for the workload, ``medians`` the seconds per
call of every impl, and ``targets`` the measured ratio of each target on the workload. Lines of
different machine keys are never mixed in one line of the plot: ratios are only comparable on one
kind of machine (:func:`fastla.bench.report.machine_key`).
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

from fastla.bench import report


def _commit():
    try:
        return subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _target_label(t):
    return f"{t['impl']} vs {t['anchor']}" if "anchor" in t else t["impl"]


def lines(rows, key, results, set_name, commit=None, date=None):
    """The history lines of one run (dicts), one per (op, size)."""
    commit = commit or _commit()
    date = date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    ratios = report.all_ratios(rows)
    out = {}
    for r in rows:
        line = out.setdefault(
            (r.op, r.size),
            {
                "commit": commit,
                "date": date,
                "key": key,
                "set": set_name,
                "op": r.op,
                "size": r.size,
                "ratios": {},
                "medians": {},
                "targets": {},
            },
        )
        line["medians"][r.impl] = r.median
    for name, value in ratios.items():
        op, size, pair = name.split("|")
        out[(op, size)]["ratios"][pair] = value
    for t, measured, _ in results:
        if measured is not None and (t["op"], t["size"]) in out:
            out[(t["op"], t["size"])]["targets"][_target_label(t)] = measured
    return list(out.values())


def append(path, rows, key, results, set_name):
    """Append one run to the history file; return the number of lines written."""
    new = lines(rows, key, results, set_name)
    with open(path, "a") as f:
        for line in new:
            f.write(json.dumps(line, sort_keys=True) + "\n")
    return len(new)


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot(path, out, targets=()):
    """One panel per op: each target's measured ratio against commit (in the order of the runs'
    dates), one line per (target, machine key), the target ratio drawn as a dashed line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    data = sorted(load(path), key=lambda d: d["date"])
    commits = list(dict.fromkeys(d["commit"][:8] for d in data))
    ops = list(dict.fromkeys(d["op"] for d in data if d["targets"]))
    if not ops:
        raise SystemExit(f"fastla bench --plot-history: no target ratios in {path}")
    fig, axes = plt.subplots(len(ops), 1, figsize=(10, 3.4 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops, strict=True):
        series = {}
        for d in data:
            if d["op"] != op:
                continue
            for label, value in d["targets"].items():
                series.setdefault((d["size"], label, d["key"]), {})[commits.index(d["commit"][:8])] = value
        for n, ((size, label, key), points) in enumerate(sorted(series.items())):
            xs = sorted(points)
            label_text = f"{size}: {label} [{key}]"
            ax.plot(xs, [points[x] for x in xs], marker="o", color=f"C{n % 10}", label=label_text)
            for t in targets:
                goal = t.get("ratio", t.get("max_seconds"))
                if t["op"] == op and t["size"] == size and _target_label(t) == label and goal is not None:
                    ax.axhline(goal, color=f"C{n % 10}", linestyle="--", linewidth=0.8)
        ylabel = "first call (s)" if op == "compile" else "ratio (fastla speed / anchor)"
        report.dress_panel(ax, commits, ylabel, f"{op} (dashed: target)", rotation=30, fontsize=6)
    report.save_figure(plt, fig, out, dpi=100)
    return True
