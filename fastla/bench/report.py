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

from fastla import _host

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
    paired_extra_us: float | None = None  # per call over the workload's anchor, timed back to back


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
                paired_extra_us=info.get("paired_extra_us"),
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


MODES = ("all-core", "per-core")


def load_targets(path, workloads=None):
    """``(settings, targets)`` from ``targets.toml``. With ``workloads`` (all of them, every set),
    each target must name an existing workload (``op`` + ``size``) and a ``mode``: a target that
    matches nothing would otherwise vanish from the report, so it is a ``ValueError``."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    targets = data.get("target", [])
    if workloads is not None:
        known = {(w.op, w.name): w for w in workloads}
        from fastla import _warmup

        for op in {w.op for w in workloads} | set(_warmup.first_call_names()):
            known[("compile", op)] = None
        bad = [
            f"{t.get('op')} [{t.get('size')}]" for t in targets if (t.get("op"), t.get("size")) not in known
        ]
        if bad:
            raise ValueError(f"{path}: targets matching no benchmark workload: {', '.join(bad)}")
        for t in targets:
            if t.get("mode") not in MODES:
                raise ValueError(f"{path}: target {t['op']} [{t['size']}] needs mode = one of {MODES}")
    return data.get("settings", {}), targets


#: Which thresholds a regret target judges: the shipped defaults, or this machine's tuned profile.
REGRET_THRESHOLDS = ("shipped", "tuned")


def load_regret_targets(path):
    """The ``[[regret]]`` entries of ``targets.toml``: auto's worst regret over the crossover sweep
    (``time(auto) / min(time(numpy), time(numba))``, fastla/tune.py ``SWEEPS``) with the shipped or
    the tuned thresholds. Checked like the ratio targets: a malformed entry is a ``ValueError``."""
    with open(path, "rb") as f:
        entries = tomllib.load(f).get("regret", [])
    for e in entries:
        if e.get("thresholds") not in REGRET_THRESHOLDS or not isinstance(e.get("max_regret"), int | float):
            raise ValueError(
                f"{path}: a [[regret]] entry needs thresholds = one of {REGRET_THRESHOLDS} and a numeric "
                f"max_regret: {e}"
            )
    return entries


def regret_results(entries, measured):
    """``(entry, worst regret, cases above 1.1, cases, status)`` for each entry whose thresholds
    were measured; ``measured`` maps "shipped"/"tuned" to the list of per-case regrets."""
    out = []
    for e in entries:
        values = measured.get(e["thresholds"])
        if not values:
            out.append((e, None, None, 0, "not run: thresholds not measured in this run"))
            continue
        worst = max(values)
        status = "met" if worst <= e["max_regret"] else "missed"
        out.append((e, worst, sum(v > 1.1 for v in values), len(values), status))
    return out


def _not_run_reason(t, rows, workloads, set_name, ops):
    """Why a target has no measurement in this run."""
    if ops is not None and t["op"] not in ops and t["op"] != "compile":
        return "op not selected (--ops)"
    w = next((w for w in workloads or () if (w.op, w.name) == (t["op"], t["size"])), None)
    if w is not None and set_name not in w.sets:
        return f"workload in the {'/'.join(w.sets)} set only"
    anchor = t.get("anchor", "")
    if anchor.startswith("anchor:"):
        from fastla.bench import workloads as _w

        name = anchor.split(":", 1)[1]
        if not _w._available(name):
            return f"anchor needs {_w.ANCHOR_REQUIRES.get(name)} (not installed)"
    have = {r.impl for r in rows if (r.op, r.size) == (t["op"], t["size"])}
    missing = [x for x in (t.get("impl"), anchor) if x and x not in have]
    return f"{', '.join(missing)} not measured" if missing else "not measured"


#: Target kinds measured as a quantity that must stay *below* a limit (the others are ratios that
#: must stay above): the first call's seconds, the per-call microseconds over the anchor.
_LIMITS = ("max_seconds", "max_extra_us")


def _limit(t):
    return next((t[k] for k in _LIMITS if k in t), None)


def target_floor(t, tolerance):
    """The level past which ``--check`` fails: ``floor`` if given, else ``ratio * tolerance`` (for
    a limit target, ``limit / tolerance``)."""
    limit = _limit(t)
    if limit is not None:
        return t.get("floor", limit / tolerance)
    return t.get("floor", t["ratio"] * tolerance)


def _measure(rows, t):
    g = _groups(rows).get((t["op"], t["size"]), {})
    if "max_seconds" in t:  # a time target: the first call's seconds
        r = g.get(t["impl"])
        return None if r is None else r.first_call_s
    if "max_extra_us" in t:  # microseconds per call over the anchor's: paired batches if measured
        if t["impl"] not in g or t["anchor"] not in g:
            return None
        if g[t["impl"]].paired_extra_us is not None:
            return g[t["impl"]].paired_extra_us
        return (g[t["impl"]].median - g[t["anchor"]].median) * 1e6
    return ratio(rows, t["op"], t["size"], t["impl"], t["anchor"])


def target_results(rows, targets, tolerance, workloads=None, set_name=None, ops=None):
    """``(target, measured, status)`` for every target; status met / stretch met / missed (above
    floor) / BELOW FLOOR / "not run: <why>"."""
    out = []
    for t in targets:
        measured = _measure(rows, t)
        floor = target_floor(t, tolerance)
        if measured is None:
            status = "not run: " + _not_run_reason(t, rows, workloads, set_name, ops)
        elif _limit(t) is not None:
            if measured <= _limit(t):
                status = "met"
            else:
                status = "missed (above floor)" if measured <= floor else "BELOW FLOOR"
        elif "stretch" in t and measured >= t["stretch"]:
            status = "stretch met"
        elif measured >= t["ratio"]:
            status = "met"
        elif measured >= floor:
            status = "missed (above floor)"
        else:
            status = "BELOW FLOOR"
        out.append((t, measured, status))
    return out


def targets_table(results, tolerance=0.75):
    lines = [
        "| op | size | mode | impl vs anchor | target | floor | measured | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, measured, status in results:
        floor = target_floor(t, tolerance)
        if "max_seconds" in t:
            target, what = f"≤ {t['max_seconds']} s", f"{t['impl']} first call"
            shown, floor_s = ("-" if measured is None else f"{measured:.2f} s"), f"{floor:.2g} s"
        elif "max_extra_us" in t:
            target, what = f"≤ +{t['max_extra_us']} µs", f"{t['impl']} over {t['anchor']}"
            shown, floor_s = ("-" if measured is None else f"{measured:+.2f} µs"), f"{floor:.2g} µs"
        else:
            target = f"≥ {t['ratio']}×" + (f" (stretch {t['stretch']}×)" if "stretch" in t else "")
            what = f"{t['impl']} vs {t['anchor']}"
            shown, floor_s = _fmt_ratio(measured), f"{floor:.2g}×"
        cells = (t["op"], t["size"], t.get("mode", "-"), what, target, floor_s, shown, status)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def all_ratios(rows):
    """Every ``op|size|numba/<anchor>`` ratio of the run (the baseline's content): the compiled impl
    against the numpy impl and against every external anchor (torch, eigsh, scikit-learn, the copy
    bound, the bare GEMM). The study variants (loop, numba_naive) are not what CI guards.
    """
    out = {}
    for (op, size), g in _groups(rows).items():
        if "numba" not in g:
            continue
        for anchor in g:
            if anchor == "numpy" or anchor.startswith("anchor:"):
                out[f"{op}|{size}|numba/{anchor}"] = g[anchor].median / g["numba"].median
    return out


def machine_key(machine):
    """The key under which baselines are kept: ratios are only comparable on the same kind of
    machine (CPU model and LLVM target, SIMD width, BLAS library and kernel, core count)."""
    blas = machine.get("blas")
    if isinstance(blas, list) and blas:
        blas = f"{blas[0].get('internal_api')}-{blas[0].get('architecture')}"
    parts = [machine.get("llvm_cpu"), f"simd{machine.get('simd_bytes')}", blas, f"{machine.get('cores')}c"]
    coretype = machine.get("OPENBLAS_CORETYPE")
    if coretype:
        parts.append(f"coretype-{coretype}")
    return "-".join(str(p) for p in parts).replace(" ", "_").lower()


class NotComparable(Exception):
    """The baseline was measured on another kind of machine (see :func:`machine_key`)."""


def compare(rows, baseline_path, tolerance, machine=None, ops=None):
    """Ratios that fell below ``baseline * tolerance``: list of ``(key, baseline, now)``.

    Raises :class:`NotComparable` when the baseline's machine key differs from ``machine``'s, and
    ``ValueError`` when a baseline ratio is missing from the run (a smoke run compared with the quick
    baseline once printed "no ratio regressions"); with ``ops``, only those ops' keys are required.
    """
    with open(baseline_path) as f:
        data = json.load(f)
    base = data["ratios"]
    if machine is not None:
        want, have = data.get("key") or machine_key(data.get("machine", {})), machine_key(machine)
        if want != have:
            raise NotComparable(f"baseline {baseline_path} is for machine {want}, this is {have}")
    now = all_ratios(rows)
    required = [k for k in base if ops is None or k.split("|")[0] in ops]
    missing = [k for k in required if k not in now]
    if missing:
        raise ValueError(f"{len(missing)} baseline ratio(s) missing from this run: {', '.join(missing[:8])}")
    return [(k, base[k], now[k]) for k in sorted(required) if now[k] < base[k] * tolerance]


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
        + "".join(f"{name}={machine[name]}; " for name in _host.SPIN_SETTINGS if machine.get(name))
        + f"threading layer {machine.get('threading_layer')}\n"
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
        ax.set_yscale("log")
        dress_panel(ax, sizes, "GFLOP/s" if use_flops else "GB/s", op, rotation=20, fontsize=8)
    save_figure(plt, fig, path, dpi=110)
    return True


def dress_panel(ax, ticks, ylabel, title, rotation, fontsize):
    """Categorical x ticks, labels, grid and legend of one plot panel (bench and history plots)."""
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, rotation=rotation, ha="right", fontsize=fontsize)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=fontsize)


def save_figure(plt, fig, path, dpi):
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


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
