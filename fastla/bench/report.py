"""Turning a pytest-benchmark JSON into fastla's report: tables, ratios, targets, baseline, plot.

Ratios are always speed ratios *within one run*: ``ratio(impl vs anchor) = median time of anchor /
median time of impl`` (> 1 means the impl is faster). Absolute times are shown for reading, never
compared across runs.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Row:
    op: str
    size: str
    impl: str
    median: float
    flops: float
    bytes: float
    threads: int
    first_call_s: float | None = None


def load_rows(path):
    with open(path) as f:
        data = json.load(f)
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        rows.append(
            Row(
                op=info.get("op", b["group"]),
                size=info.get("size", b["name"]),
                impl=info.get("impl", b["name"]),
                median=b["stats"]["median"],
                flops=info.get("flops", 0) or 0,
                bytes=info.get("bytes", 0) or 0,
                threads=info.get("threads", 0) or 0,
                first_call_s=info.get("first_call_s"),
            )
        )
    return rows, data.get("machine_info", {}).get("fastla", {})


def _groups(rows):
    out = {}
    for r in rows:
        out.setdefault((r.op, r.size), {})[r.impl] = r
    return out


def ratio(rows, op, size, impl, anchor):
    g = _groups(rows).get((op, size), {})
    if impl not in g or anchor not in g:
        return None
    return g[anchor].median / g[impl].median


def _fmt_time(s):
    if s is None or not math.isfinite(s):
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}×"


def tables(rows):
    """Markdown tables, one per op: size, impl, median, GFLOP/s, GB/s, speed vs numpy and vs loop."""
    lines = []
    by_op = {}
    for (op, size), g in _groups(rows).items():
        by_op.setdefault(op, []).append((size, g))
    for op, groups in by_op.items():
        lines.append(f"**{op}**\n")
        if op == "compile":
            lines.append("| op | first call | seconds |")
            lines.append("|---|---|---|")
            for size, g in groups:
                for impl, r in g.items():
                    lines.append(f"| {size} | {impl} | {r.first_call_s:.2f} |")
            lines.append("")
            continue
        lines.append("| size | impl | threads | median | GFLOP/s | GB/s | vs numpy | vs loop |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for size, g in groups:
            for impl, r in g.items():
                gf = f"{r.flops / r.median / 1e9:.1f}" if r.flops else "-"
                gb = f"{r.bytes / r.median / 1e9:.1f}" if r.bytes else "-"
                vs_np = g["numpy"].median / r.median if "numpy" in g and impl != "numpy" else None
                vs_loop = g["loop"].median / r.median if "loop" in g and impl != "loop" else None
                lines.append(
                    f"| {size} | {impl} | {r.threads} | {_fmt_time(r.median)} | {gf} | {gb} | "
                    f"{_fmt_ratio(vs_np)} | {_fmt_ratio(vs_loop)} |"
                )
        lines.append("")
    return "\n".join(lines)


def load_targets(path):
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return data.get("settings", {}), data.get("target", [])


def target_results(rows, targets, tolerance):
    """``(target, measured ratio or None, status)`` for each target; status met/stretch/missed."""
    out = []
    for t in targets:
        measured = ratio(rows, t["op"], t["size"], t["impl"], t["anchor"])
        if measured is None:
            status = "not run"
        elif "stretch" in t and measured >= t["stretch"]:
            status = "stretch met"
        elif measured >= t["ratio"]:
            status = "met"
        elif measured >= t["ratio"] * tolerance:
            status = "missed (above floor)"
        else:
            status = "BELOW FLOOR"
        out.append((t, measured, status))
    return out


def targets_table(results):
    lines = [
        "| op | size | impl vs anchor | target | measured | status |",
        "|---|---|---|---|---|---|",
    ]
    for t, measured, status in results:
        target = f"≥ {t['ratio']}×" + (f" (stretch {t['stretch']}×)" if "stretch" in t else "")
        lines.append(
            f"| {t['op']} | {t['size']} | {t['impl']} vs {t['anchor']} | {target} | "
            f"{_fmt_ratio(measured)} | {status} |"
        )
    return "\n".join(lines) + "\n"


def all_ratios(rows):
    """Every ``op|size|numba/numpy`` ratio of the run (the baseline's content).

    Only the compiled impl against the NumPy anchor: the study variants (loop, numba_naive) are not
    what CI guards.
    """
    out = {}
    for (op, size), g in _groups(rows).items():
        if "numpy" in g and "numba" in g:
            out[f"{op}|{size}|numba/numpy"] = g["numpy"].median / g["numba"].median
    return out


def compare(rows, baseline_path, tolerance):
    """Ratios that fell below ``baseline * tolerance``: list of (key, baseline, now)."""
    with open(baseline_path) as f:
        base = json.load(f)["ratios"]
    now = all_ratios(rows)
    return [(k, base[k], now[k]) for k in sorted(base) if k in now and now[k] < base[k] * tolerance]


def header(machine):
    if not machine:
        return ""
    blas = machine.get("blas")
    if isinstance(blas, list):
        blas = "; ".join(f"{d['internal_api']} {d['version']} ({d['architecture']})" for d in blas)
    return (
        f"CPU {machine.get('cpu')} ({machine.get('llvm_cpu')}, SIMD {machine.get('simd_bytes')} B), "
        f"{machine.get('cores')} cores; numba {machine.get('numba')} (LLVM {machine.get('llvm')}), "
        f"numpy {machine.get('numpy')}; BLAS {blas}; "
        f"OPENBLAS_CORETYPE={machine.get('OPENBLAS_CORETYPE') or 'unset'}; "
        f"threading layer {machine.get('threading_layer')}\n"
    )


def plot(rows, path):
    """One panel per op: speed (GFLOP/s, else GB/s) per workload, one line per impl."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ops = [op for op in dict.fromkeys(r.op for r in rows) if op != "compile"]
    if not ops:
        return False
    fig, axes = plt.subplots(len(ops), 1, figsize=(10, 3.6 * len(ops)), squeeze=False)
    impls = list(dict.fromkeys(["numba", "numpy", "numba_naive", "loop"] + [r.impl for r in rows]))
    colour = {impl: f"C{i % 10}" for i, impl in enumerate(impls)}  # one colour per impl, all panels
    for ax, op in zip(axes[:, 0], ops, strict=True):
        op_rows = [r for r in rows if r.op == op]
        sizes = list(dict.fromkeys(r.size for r in op_rows))
        use_flops = all(r.flops for r in op_rows)
        for impl in dict.fromkeys(r.impl for r in op_rows):
            xs, ys = [], []
            for i, size in enumerate(sizes):
                for r in op_rows:
                    if r.impl == impl and r.size == size:
                        xs.append(i)
                        ys.append((r.flops if use_flops else r.bytes) / r.median / 1e9)
            ax.plot(xs, ys, marker="o", label=impl, color=colour[impl])
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels(sizes, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("GFLOP/s" if use_flops else "GB/s")
        ax.set_yscale("log")
        ax.set_title(op)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def update_readme(readme_path, text):
    """Replace the generated benchmark section of the README (between the markers)."""
    with open(readme_path) as f:
        content = f.read()
    if README_START not in content or README_END not in content:
        raise ValueError(f"{readme_path} has no {README_START} ... {README_END} section")
    before = content.split(README_START)[0]
    after = content.split(README_END, 1)[1]
    with open(readme_path, "w") as f:
        f.write(f"{before}{README_START}\n{text}\n{README_END}{after}")
