"""The benchmark report and gate: targets resolve, every target is reported, baselines are keyed by
machine and complete, results are checked against the numpy impl."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fastla.bench import report, runner
from fastla.bench import workloads as W

TARGETS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "targets.toml"
)
MACHINE = {
    "llvm_cpu": "cpu",
    "simd_bytes": 64,
    "cores": 2,
    "blas": [{"internal_api": "b", "architecture": "x"}],
}


def _row(op, size, impl, median, first_call_s=None):
    return report.Row(op, size, impl, median, 0.0, 0.0, 2, first_call_s)


def test_every_target_names_a_workload_and_a_mode():
    _, targets = report.load_targets(TARGETS, W.WORKLOADS)
    assert targets
    assert all(t["mode"] in report.MODES for t in targets)


def test_a_target_matching_no_workload_is_an_error(tmp_path):
    bad = tmp_path / "targets.toml"
    bad.write_text('[[target]]\nop = "matmul"\nsize = "no such size"\nmode = "all-core"\nimpl = "numba"\n'
                   'anchor = "numpy"\nratio = 1.0\n')  # fmt: skip
    with pytest.raises(ValueError, match="matching no benchmark workload"):
        report.load_targets(bad, W.WORKLOADS)


def test_every_target_is_reported_with_a_reason_when_not_run():
    _, targets = report.load_targets(TARGETS, W.WORKLOADS)
    rows = [_row("softmax", "4096x4096 f32", "numba", 1.0), _row("softmax", "4096x4096 f32", "numpy", 4.0)]
    results = report.target_results(rows, targets, 0.75, W.WORKLOADS, "quick", None)
    assert len(results) == len(targets)
    by = {(t["op"], t["size"], t["anchor"] if "anchor" in t else t["impl"]): s for t, _, s in results}
    assert by[("softmax", "4096x4096 f32", "numpy")] == "met"
    assert by[("matmul", "512^3 f64", "numpy")] == "not run: workload in the full set only"
    assert by[("matmul", "1024^3 f64 1t", "numpy")].startswith("not run: numba, numpy not measured")
    text = report.targets_table(results)
    assert text.count("\n") == len(targets) + 2


def test_floors_and_time_targets():
    t = {"op": "softmax", "size": "s", "impl": "numba", "anchor": "numpy", "ratio": 3.0, "mode": "all-core"}
    rows = [_row("softmax", "s", "numba", 1.0), _row("softmax", "s", "numpy", 2.0)]
    assert report.target_results(rows, [t], 0.75)[0][2] == "BELOW FLOOR"  # 2.0 < 3.0 * 0.75
    assert report.target_results(rows, [{**t, "floor": 1.5}], 0.75)[0][2] == "missed (above floor)"
    c = {"op": "compile", "size": "matmul", "impl": "numba (cold cache)", "max_seconds": 3.0, "floor": 30.0}
    timed = [_row("compile", "matmul", "numba (cold cache)", 1.0, first_call_s=7.5)]
    assert report.target_results(timed, [c], 0.75)[0][1:] == (7.5, "missed (above floor)")


def test_call_overhead_targets_read_the_paired_batches_when_measured():
    t = {"op": "solve", "size": "s", "impl": "auto", "anchor": "anchor:np_solve", "max_extra_us": 3.0}
    rows = [_row("solve", "s", "auto", 7.2e-6), _row("solve", "s", "anchor:np_solve", 4.0e-6)]
    measured, status = report.target_results(rows, [t], 0.75)[0][1:]
    assert measured == pytest.approx(3.2) and status == "missed (above floor)"  # medians apart
    rows[0].paired_extra_us = 0.8
    assert report.target_results(rows, [t], 0.75)[0][1:] == (0.8, "met")
    # faster than the anchor (softmax's compiled kernel at 4 x 10 against SciPy's call): a signed
    # difference, not "+-3.90"
    rows[0].paired_extra_us = -3.9
    assert "| -3.90 µs | met |" in report.targets_table(report.target_results(rows, [t], 0.75))
    rows[0].paired_extra_us = 0.8
    assert "| +0.80 µs | met |" in report.targets_table(report.target_results(rows, [t], 0.75))


class _Clock:
    """A clock that only the calls move: each costs its ``cost`` times a rate that doubles every
    ``doubling`` seconds (a machine drifting to half speed while it is measured)."""

    def __init__(self, doubling):
        self.now, self.doubling = 0.0, doubling

    def __call__(self):
        return self.now

    def call(self, cost):
        def f():
            self.now += cost * 2 ** (self.now / self.doubling)

        return f


def test_paired_batches_measure_the_extra_cost_per_call_through_drift():
    steady = _Clock(float("inf"))
    extra = runner.paired_extra_us(steady.call(5e-6), steady.call(3e-6), (), {}, clock=steady)
    assert extra == pytest.approx(2.0)
    # drifting by 1.45x over the measurement, under 1% over a pair of batches: the extra cost at
    # the rate of the moment (all of one side's batches timed before the other's read 1.56 here)
    drift = _Clock(0.2)
    extra = runner.paired_extra_us(drift.call(5e-6), drift.call(3e-6), (), {}, clock=drift)
    assert 2.0 < extra < 2.0 * 2 ** (drift.now / drift.doubling)


def test_only_the_public_function_is_paired_with_an_anchor():
    overhead = [w for w in W.WORKLOADS if w.auto]
    assert overhead and all(
        w.paired_anchor() == "anchor:" + w.anchors[0] for w in overhead if w.op != "softmax"
    )
    assert all(w.paired_anchor() is None for w in W.WORKLOADS if not w.auto)


def _baseline(tmp_path, ratios, key=None):
    path = tmp_path / "base.json"
    path.write_text(
        json.dumps({"key": key or report.machine_key(MACHINE), "machine": MACHINE, "ratios": ratios})
    )
    return path


def test_baseline_compare_gates_anchor_ratios_and_missing_keys(tmp_path):
    rows = [
        _row("softmax", "s", "numba", 1.0),
        _row("softmax", "s", "numpy", 4.0),
        _row("softmax", "s", "anchor:copy", 0.5),
    ]
    now = report.all_ratios(rows)
    assert now == {"softmax|s|numba/numpy": 4.0, "softmax|s|numba/anchor:copy": 0.5}
    same = _baseline(tmp_path, now)
    assert report.compare(rows, same, 0.6, MACHINE) == []
    slower = _baseline(tmp_path, {**now, "softmax|s|numba/anchor:copy": 1.0})  # the anchor ratio halved
    assert [k for k, _, _ in report.compare(rows, slower, 0.6, MACHINE)] == ["softmax|s|numba/anchor:copy"]
    missing = _baseline(tmp_path, {**now, "matmul|m|numba/numpy": 1.0})
    with pytest.raises(ValueError, match="missing from this run"):
        report.compare(rows, missing, 0.6, MACHINE)
    assert report.compare(rows, missing, 0.6, MACHINE, ops=["softmax"]) == []  # --ops: only those


def test_baseline_of_another_machine_kind_is_not_compared(tmp_path):
    rows = [_row("softmax", "s", "numba", 1.0), _row("softmax", "s", "numpy", 4.0)]
    other = _baseline(tmp_path, {"softmax|s|numba/numpy": 40.0}, key="zen1-simd32-openblas-haswell-2c")
    with pytest.raises(report.NotComparable, match="zen1"):
        report.compare(rows, other, 0.6, MACHINE)


def test_a_baselines_directory_without_this_machine_checks_floors_only(tmp_path, capsys):
    """A fresh clone has no baseline for a new machine kind (git keeps no empty directory): the
    comparison says so and passes, rather than failing on a missing path."""
    import argparse

    from fastla.bench import cli

    rows = [_row("softmax", "s", "numba", 1.0), _row("softmax", "s", "numpy", 4.0)]
    for where in (tmp_path / "baselines", tmp_path):
        args = argparse.Namespace(compare=str(where), ops=None)
        assert cli._compare(rows, MACHINE, "cpu-simd64-2c", args, {}) == (0, set())
        assert "no baseline for this machine kind" in capsys.readouterr().out


def _bench_args(tmp_path, *extra):
    import argparse

    from fastla.bench import cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["bench", "--check", "--json", str(tmp_path / "run.json"), *extra])


@pytest.mark.parametrize("extra, max_time", [((), "0.5"), (("--max-time", "0.25"), "0.25")])
def test_the_timed_seconds_per_benchmark_reach_pytest_benchmark(tmp_path, monkeypatch, extra, max_time):
    """``--rounds`` and ``--max-time`` (the CI gate's 3 and 0.25) are pytest-benchmark's own options."""
    import subprocess

    from fastla.bench import cli

    commands = []
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, **kw: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0)
    )
    args = _bench_args(tmp_path, "--rounds", "3", *extra)
    assert cli._run_pytest(Path(cli.__file__).parents[2] / "benchmarks", args, tmp_path / "run.json") == 0
    (cmd,) = commands
    assert "--benchmark-min-rounds=3" in cmd
    assert f"--benchmark-max-time={max_time}" in cmd


def test_bad_ops_files_and_counts_are_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    """An unknown name selected nothing: pytest ran no benchmark, and the report died on the JSON it
    never wrote (FileNotFoundError). A file to read that is not there is named (a mistyped --compare
    checked the floors only, silently). A count of 0 or below is argparse's error."""
    import subprocess

    from fastla.bench import cli

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a benchmark ran"))
    for extra, named in (
        (("--ops", "softmax,nonsense"), "in --ops: nonsense; known: "),
        (("--compile-ops", "matmul,foo"), "in --compile-ops: foo; known: all, none, matmul"),
        (("--against", "--ops", "nope"), "in --ops: nope"),
        (("--from-json", str(tmp_path / "none.json")), "no such file or folder: --from-json"),
        (("--compare", str(tmp_path / "baseline")), "no such file or folder: --compare"),
        (("--plot-history", str(tmp_path / "h.jsonl")), "no such file or folder: --plot-history"),
    ):
        assert cli.main(_bench_args(tmp_path, *extra)) == 2
        assert named in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{bad")
    assert cli.main(_bench_args(tmp_path, "--from-json", str(tmp_path / "bad.json"))) == 2
    assert "is not a pytest-benchmark JSON" in capsys.readouterr().err
    for extra in (("--rounds", "0"), ("--max-time", "-1"), ("--threads", "0"), ("--threshold", "0")):
        with pytest.raises(SystemExit):
            _bench_args(tmp_path, *extra)
        assert "must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize("second_ratio, status", [(4.0, 0), (1.2, 1)])
def test_a_gate_failure_counts_only_when_a_re_measurement_repeats_it(
    tmp_path, monkeypatch, capsys, second_ratio, status
):
    """A softmax ratio below its floor (1.2 < 1.5) is measured again at once; a burst of noise that
    does not repeat passes, a real regression that repeats fails."""
    from fastla.bench import cli

    size = "100000x10 f64"
    runs = iter([1.2, second_ratio])
    pytest_calls = []

    def fake_pytest(bench_dir, args, json_path):
        pytest_calls.append(args.ops)
        return 0

    def fake_rows(path):
        numpy_time = next(runs)
        machine = {**MACHINE, "blas": [{"internal_api": "b", "architecture": "x", "version": "1"}]}
        return [_row("softmax", size, "numba", 1.0), _row("softmax", size, "numpy", numpy_time)], machine

    monkeypatch.setattr(cli, "_run_pytest", fake_pytest)
    monkeypatch.setattr(report, "load_rows", fake_rows)
    assert cli.main(_bench_args(tmp_path)) == status
    out = capsys.readouterr().out
    assert pytest_calls == [None, "softmax"]  # the whole set, then only the failing op
    assert "re-measuring softmax" in out and out.count("CHECK FAILED: softmax [100000x10 f64]") == 1 + status

    runs = iter([1.2])
    pytest_calls.clear()
    assert cli.main(_bench_args(tmp_path, "--no-confirm")) == 1  # the first measurement decides
    assert pytest_calls == [None]


def test_a_re_measurement_failing_another_item_of_the_op_does_not_count(tmp_path, monkeypatch, capsys):
    """The first measurement fails one softmax ratio, the re-measurement another (noise moving from
    item to item, as in a CI run where solve's call overhead failed and then its 100k 4x4 ratio):
    neither failed twice, so the gate passes and says so."""
    from fastla.bench import cli

    sizes = ("100000x10 f64", "4096x4096 f32")
    runs = iter([(1.2, 4.0), (4.0, 1.2)])  # numpy / numba time ratio per size, per measurement
    monkeypatch.setattr(cli, "_run_pytest", lambda bench_dir, args, json_path: 0)

    def fake_rows(path):
        machine = {**MACHINE, "blas": [{"internal_api": "b", "architecture": "x", "version": "1"}]}
        rows = []
        for size, ratio in zip(sizes, next(runs), strict=True):
            rows += [_row("softmax", size, "numba", 1.0), _row("softmax", size, "numpy", ratio)]
        return rows, machine

    monkeypatch.setattr(report, "load_rows", fake_rows)
    assert cli.main(_bench_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "failed in one measurement only (not counted)" in out and "no failure repeated" in out


def test_confirmed_counts_items_failing_twice():
    from fastla.bench import cli

    assert cli.confirmed({"a", "b"}, 1, {"b", "c"}) == 1
    assert cli.confirmed({"a"}, 1, {"c"}) == 0
    assert cli.confirmed({"a"}, 0, set()) == 0
    assert cli.confirmed({"a"}, 1, set()) == 1  # the second run failed without an item (a mismatch)


def test_attentions_gemm_rate_anchor_does_the_same_floating_point_operations():
    """The ``gemm_rate`` anchor (attention's compute bound) runs a square GEMM whose 2 n^3 is the
    attention workload's own flops (causal: the pairs j <= i) within 0.1%, so that its time against
    the fused kernel's is the share of the GEMM rate the kernel runs at; and it runs that GEMM."""
    rated = [w for w in W.WORKLOADS if "gemm_rate" in w.anchors]
    assert {w.op for w in rated} == {"scaled_dot_product_attention"}
    assert any("causal" in w.name for w in rated) and any("quick" in w.sets for w in rated)
    for w in rated:
        q_shape, S = _attention_shapes(w.name)
        n = W.gemm_rate_side(q_shape, S, "causal" in w.name)
        assert abs(2 * n**3 - w.flops) <= 1e-3 * w.flops, (w.name, n, w.flops)
    q, k = np.ones((1, 2, 16, 8), np.float32), np.ones((1, 2, 24, 8), np.float32)
    n = W.gemm_rate_side(q.shape, 24, False)
    assert 2 * n**3 == pytest.approx(4 * 2 * 16 * 24 * 8, rel=0.1)
    out = W.ANCHORS["gemm_rate"](q, k, k)
    assert out.shape == (n, n) and out.dtype == np.float32
    causal = W.gemm_rate_side(q.shape, 24, True)  # 20: the pairs j <= i only
    assert causal < n and W.ANCHORS["gemm_rate"](q, k, k, is_causal=True).shape == (causal, causal)


def _attention_shapes(name):
    """``(query shape, S)`` from an attention workload's name, ``"B1 H8 L2048 S2048 E64 f32"``."""
    dims = {part[0]: int(part[1:]) for part in name.split() if part[0] in "BHLSE" and part[1:].isdigit()}
    return (dims["B"], dims["H"], dims["L"], dims["E"]), dims["S"]


def test_runner_verify_catches_a_wrong_result():
    w = next(w for w in W.WORKLOADS if w.op == "softmax" and "smoke" in w.sets)
    args, kwargs = w.inputs()
    good = w.callable("numba")(*args, **kwargs)
    runner.verify(w, "numba", good)
    with pytest.raises(AssertionError):
        runner.verify(w, "numba", good[::-1])
    runner.verify(w, "anchor:copy", np.zeros(1))  # other libraries' outputs are not checked


def test_runner_verify_by_chunks_keeps_assert_allclose_rules():
    """verify() compares a large result a chunk at a time: one wrong element in the last chunk
    fails, NaNs where NumPy's result has them pass, a NaN where it has none fails, and the
    absolute tolerance scales with the largest finite value (an infinity does not widen it)."""
    w = W.Workload("softmax", "verify-chunks test", lambda rng: ((np.zeros(1),), {}))
    n = 3 * runner.CHUNK + 5
    want = np.linspace(-2.0, 2.0, n)
    want[7] = np.nan
    want[runner.CHUNK + 1] = np.inf
    runner._REFERENCE[w.id] = want
    try:
        runner.verify(w, "numba", want + 1e-9)
        for where, value in ((n - 1, 2.0 + 1e-5), (3, np.nan), (runner.CHUNK + 1, -np.inf)):
            bad = want.copy()
            bad[where] = value
            first = where // runner.CHUNK * runner.CHUNK  # the message names the chunk's place
            with pytest.raises(
                AssertionError, match=rf"verify-chunks test\] numba vs numpy, flat elements {first} "
            ):
                runner.verify(w, "numba", bad)
        runner._REFERENCE[w.id] = np.arange(5) % 2 == 0  # booleans: assert_allclose's own rules
        runner.verify(w, "numba", np.arange(5) % 2 == 0)
        with pytest.raises(AssertionError):
            runner.verify(w, "numba", np.arange(5) % 2 == 1)
    finally:
        del runner._REFERENCE[w.id]


def test_settle_calls_the_impl_untimed_for_its_seconds():
    """Before the timed rounds the impl runs for SETTLE_S (once at least, however slow a call)."""
    now, calls = [0.0], []

    def fn(x, k=0):
        calls.append((x, k))
        now[0] += 0.04

    runner.settle(fn, (1,), {"k": 2}, seconds=0.15, clock=lambda: now[0])
    assert calls == [(1, 2)] * 4  # 0.04, 0.08, 0.12, then 0.16 >= 0.15
    calls.clear()
    runner.settle(fn, (1,), {}, seconds=0.0, clock=lambda: now[0])
    assert calls == [(1, 0)]


def test_fresh_inputs_are_copies_with_the_same_values_and_layout():
    calls = []

    def make(rng):
        calls.append(1)
        a = rng.standard_normal((5, 4))
        return (a, a.T, (a[0].copy(), 3)), {"out": np.zeros((5, 4)), "k": 2, "none": None}

    w = W.Workload("softmax", "fresh-inputs test", make)
    first = runner.fresh_inputs(w)
    first[0][0][0, 0] = 99.0  # an impl writing into its inputs
    second = runner.fresh_inputs(w)
    assert len(calls) == 1  # made once, handed out as copies
    direct = w.inputs()
    for got, want in (
        (second[0][0], direct[0][0]),
        (second[0][1], direct[0][1]),
        (second[0][2][0], direct[0][2][0]),
    ):
        np.testing.assert_array_equal(got, want)
    assert second[0][1].flags.f_contiguous and not second[0][1].flags.c_contiguous  # the transpose's layout
    assert second[0][0] is not first[0][0] and second[1]["out"] is not first[1]["out"]
    assert second[0][2][1] == 3 and second[1]["k"] == 2 and second[1]["none"] is None

    def strided(rng):
        calls.append(1)
        return (rng.standard_normal((6, 6))[:, ::2],), {}

    s = W.Workload("softmax", "fresh-inputs strided", strided)
    calls.clear()
    runner.fresh_inputs(s)
    runner.fresh_inputs(s)
    assert len(calls) == 3  # a strided view is made anew each time (a copy would be contiguous)


def test_report_header_names_the_spin_settings_only_where_set():
    """The run's header names OPENBLAS_THREAD_TIMEOUT / OMP_WAIT_POLICY when the run had them: they
    change how calls alternating between BLAS and fastla measure."""
    machine = {"cpu": "x", "blas": [], "OPENBLAS_CORETYPE": None, "threading_layer": "omp"}
    plain = report.header(machine)
    assert "OPENBLAS_CORETYPE=unset" in plain
    assert "THREAD_TIMEOUT" not in plain and "WAIT_POLICY" not in plain
    machine.update(OPENBLAS_THREAD_TIMEOUT="4", OMP_WAIT_POLICY="passive")
    assert "OPENBLAS_THREAD_TIMEOUT=4; OMP_WAIT_POLICY=passive; threading layer omp" in report.header(machine)


def test_compile_benchmark_times_each_ops_heavier_paths_with_it(monkeypatch):
    """The full set's first calls include the ``op:path`` rows, and an ``--ops`` filter keeps an
    op's heavier paths with it."""
    from fastla.bench import compile_time

    monkeypatch.delenv("FASTLA_BENCH_COMPILE_OPS", raising=False)
    assert compile_time.ops_for("quick", None) == list(compile_time.QUICK_OPS)
    full = compile_time.ops_for("full", None)
    assert {"solve", "solve:n=300", "cosine_topk:1000 queries"} <= set(full)
    assert compile_time.ops_for("full", ["solve"]) == ["solve", "solve:n=300"]
    monkeypatch.setenv("FASTLA_BENCH_COMPILE_OPS", "all")
    assert compile_time.ops_for("quick", ["cosine_topk"]) == ["cosine_topk", "cosine_topk:1000 queries"]
