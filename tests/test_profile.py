"""The auto profile (`python -m fastla tune`): round trip, what is refused, thread-count entries,
explain naming the source, the crossover rule, and a (tiny) tune run end to end."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import sys
import warnings

import numpy as np
import pytest

import fastla
from fastla import _jit, _profile, tune

MATMUL_RULE = _profile._rule_dict("matmul")  # fastla.matmul is the function; its module's AUTO_RULE
SOFTMAX_RULE = _profile._rule_dict("softmax")

needs_jit = pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs numba with JIT enabled")


@pytest.fixture
def profile(tmp_path, monkeypatch):
    """A profile path in FASTLA_PROFILE; shipped thresholds (and no profile) again afterwards."""
    path = tmp_path / "profile.json"
    monkeypatch.setenv(_profile.ENV, str(path))
    _profile._WARNED.clear()
    yield path
    monkeypatch.undo()
    _profile.load()


def record(rules, when="now"):
    return {"rules": rules, "when": when}


def test_round_trip_puts_the_measured_thresholds_in_force(profile):
    key = _profile.machine_key()
    threads = fastla.get_num_threads()
    _profile.write(str(profile), key, threads, record({"matmul": 8, "softmax": 4096}))
    _profile.load()
    info = fastla.tune_profile()
    assert info["rules"] == {"matmul": 8, "softmax": 4096}
    assert info["machine"] == key and info["path"] == str(profile)
    assert "tuned profile" in info["status"]
    assert MATMUL_RULE["small_min_batch"] == 8 and SOFTMAX_RULE["min_size"] == 4096
    assert info["shipped"]["matmul"] != 8  # the default it replaced is still known
    x = np.ones((8, 16))  # 128 elements: the kernel under the shipped 0, NumPy under 4096
    name, reason = fastla.explain("softmax", x)
    assert name == "numpy" and "min_size=4096 measured here" in reason
    name, reason = fastla.explain("log_softmax", x)  # reads softmax's threshold
    assert name == "numpy" and "measured here" in reason


def test_an_op_with_two_knobs_names_both_and_which_was_measured(profile):
    rules = record({"matmul_gemm": 2**18})
    _profile.write(str(profile), _profile.machine_key(), fastla.get_num_threads(), rules)
    _profile.load()
    assert MATMUL_RULE["gemm_min_work"] == 2**18
    a = np.ones((64, 64))  # 2**18 multiply-adds: the packed GEMM from the measured threshold on
    name, reason = fastla.explain("matmul", a, a)
    assert name == "numba" and "gemm_min_work=262144 measured here" in reason
    assert f"small_min_batch={MATMUL_RULE['small_min_batch']}," in reason
    name, reason = fastla.explain("matmul", a[:, :63], a[:63])
    assert name == "numpy" and "258048 multiply-adds per GEMM < gemm_min_work," in reason
    # float32 products have their own threshold, not in this profile: the shipped one
    f32 = a.astype(np.float32)
    name, reason = fastla.explain("matmul", f32, f32)
    shipped = _profile.shipped("matmul_gemm_f32")
    assert name == ("numba" if shipped <= 2**18 else "numpy") and "gemm_min_work_f32" in reason


@pytest.mark.parametrize(
    "architecture, simd, cpu, narrower",
    [
        ("Haswell", 64, "skylake-avx512", True),
        ("SkylakeX", 64, "skylake-avx512", False),
        ("Zen", 32, "skylake-avx512", False),
        ("Nehalem", 32, "skylake-avx512", True),
        ("Next", 64, "skylake-avx512", False),
        ("SkylakeX", 64, "znver4", False),
        ("SkylakeX", 64, "znver5", False),
        ("SkylakeX", 64, "generic", False),
    ],
)
def test_the_shipped_gemm_threshold_follows_the_blas_kernel_width(
    monkeypatch, architecture, simd, cpu, narrower
):
    """auto takes the packed GEMM by default from GEMM_NARROW_BLAS_WORK where NumPy's OpenBLAS runs
    narrower vectors than the host (its Haswell kernel on an AVX-512 host; an unknown core type
    counts as full width), and on a host measured to run it faster than a BLAS kernel as wide as its
    own (Zen 4); elsewhere BLAS always, and so with the JIT off (the packed kernel is Python there)."""
    import threadpoolctl

    from fastla import _host

    info = [{"user_api": "blas", "internal_api": "openblas", "architecture": architecture}]
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: info)
    monkeypatch.setattr(_host, "simd_bytes", lambda: simd)
    monkeypatch.setattr(_host, "host_cpu", lambda: (cpu, frozenset()))
    _host.blas_kernel.cache_clear()
    try:
        assert _host.blas_narrower_than_host() is narrower
        packed = (narrower or cpu == "znver4") and _jit.JIT_ENABLED
        matmul = sys.modules["fastla.matmul"]
        for dtype in ("float32", "float64"):
            expected = matmul.GEMM_NARROW_BLAS_WORK[dtype] if packed else _profile.NEVER
            assert matmul._shipped_gemm_min_work(dtype) == expected
        info[0]["internal_api"] = "mkl"  # MKL's own dispatch: never taken as narrower
        _host.blas_kernel.cache_clear()
        assert not _host.blas_narrower_than_host()
        monkeypatch.setattr(_jit, "JIT_ENABLED", False)
        assert matmul._shipped_gemm_min_work("float64") == _profile.NEVER
    finally:
        _host.blas_kernel.cache_clear()


@pytest.mark.parametrize("cpu", ["znver4", "znver5", "skylake-avx512", "znver3", "generic"])
def test_the_shipped_cosine_threshold_follows_the_measured_hosts(monkeypatch, cpu):
    """The packed cosine kernel's shipped threshold is low only on the hosts where it was measured
    to overtake NumPy's path at small products (Zen 4 and Zen 5); every other host keeps the
    Intel Xeon's 2^20, and so does a run with the JIT off (the kernel is Python there)."""
    from fastla import _host, similarity

    monkeypatch.setattr(_host, "host_cpu", lambda: (cpu, frozenset()))
    low = cpu in ("znver4", "znver5") and _jit.JIT_ENABLED
    assert similarity._shipped_matrix_min_work() == (16_384 if low else 2**20)
    monkeypatch.setattr(_jit, "JIT_ENABLED", False)
    assert similarity._shipped_matrix_min_work() == 2**20


def test_shipped_defaults_come_back_and_explain_says_so(profile):
    _profile.write(str(profile), _profile.machine_key(), fastla.get_num_threads(), record({"softmax": 4096}))
    _profile.load()
    assert fastla.explain("softmax", np.ones((8, 16)))[0] == "numpy"
    profile.unlink()
    _profile.load()
    assert fastla.tune_profile()["rules"] == {}
    assert SOFTMAX_RULE["min_size"] == fastla.tune_profile()["shipped"]["softmax"] == 0
    name, reason = fastla.explain("softmax", np.ones((8, 16)))
    assert name == ("numba" if _jit.NUMBA_AVAILABLE else "numpy") and "min_size=0: shipped" in reason
    assert "no profile" in reason


def test_profile_off_ignores_an_existing_file(profile, monkeypatch):
    _profile.write(str(profile), _profile.machine_key(), fastla.get_num_threads(), record({"softmax": 64}))
    monkeypatch.setenv(_profile.ENV, "off")
    _profile.load()
    assert fastla.tune_profile()["rules"] == {} and "=off" in fastla.tune_profile()["status"]


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "cannot read it"),
        (json.dumps({"version": 99, "machines": {}}), "format version 99"),
        (json.dumps([1, 2]), "format version"),
        ("KEY", "unknown rule 'gemm'"),
        ("BADVALUE", "not a non-negative integer"),
        (json.dumps({"version": 1, "machines": {"other-machine": {"threads": {}}}}), "other machines"),
    ],
)
def test_a_corrupt_or_foreign_profile_is_ignored_with_one_warning(profile, content, why):
    key = _profile.machine_key()
    n = str(fastla.get_num_threads())
    if content == "KEY":
        content = json.dumps({"version": 1, "machines": {key: {"threads": {n: record({"gemm": 8})}}}})
    elif content == "BADVALUE":
        content = json.dumps({"version": 1, "machines": {key: {"threads": {n: record({"matmul": -3})}}}})
    profile.write_text(content)
    shipped = dict(MATMUL_RULE)
    with pytest.warns(RuntimeWarning, match=why):
        _profile.load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _profile.load()  # once: no second warning for the same file
    assert fastla.tune_profile()["rules"] == {} and "ignored" in fastla.tune_profile()["status"]
    assert MATMUL_RULE == shipped


def test_each_thread_count_has_its_own_entry(profile):
    key = _profile.machine_key()
    top = _jit.max_threads()
    _profile.write(str(profile), key, top, record({"matmul": 32}))
    _profile.write(str(profile), key, 1, record({"matmul": 2048}))  # added, not replacing
    fastla.set_num_threads(1)
    assert MATMUL_RULE["small_min_batch"] == 2048
    fastla.set_num_threads(top)
    assert MATMUL_RULE["small_min_batch"] == (32 if top > 1 else 2048)


def test_a_retired_knob_is_skipped_and_the_rest_of_the_profile_applies(profile):
    """A profile an earlier fastla wrote with a knob whose unit has changed (``matmul_stack``
    counted products; ``matmul_stack_work`` counts a stack's work): that value is never applied,
    with the status saying why, and the profile's other knobs are in force."""
    assert "matmul_stack" in _profile.RETIRED and "matmul_stack" not in _profile.KNOBS
    _profile.write(str(profile), _profile.machine_key(), fastla.get_num_threads(), record({"matmul": 64}))
    data = json.loads(profile.read_text())
    entry = data["machines"][_profile.machine_key()]["threads"][str(fastla.get_num_threads())]
    entry["rules"]["matmul_stack"] = 16
    profile.write_text(json.dumps(data))
    shipped = MATMUL_RULE["packed_stack_min_work"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skipped quietly: no warning, the profile is not foreign
        _profile.load()
    state = fastla.tune_profile()
    assert state["rules"] == {"matmul": 64} and MATMUL_RULE["small_min_batch"] == 64
    assert MATMUL_RULE["packed_stack_min_work"] == shipped
    assert "tuned profile" in state["status"] and "retired" in state["status"]
    assert "matmul_stack:" in state["status"]


def test_write_refuses_bad_rules(profile):
    with pytest.raises(ValueError, match="unknown rule"):
        _profile.write(str(profile), "k", 2, record({"nope": 3}))
    assert not profile.exists()


def test_timings_are_steady_state_calls_not_the_stall_after_a_switch(monkeypatch):
    """A fake clock: each call takes 10 us, except the 30 calls after every switch to the other
    impl, which take 200 us (the other pool's threads still spinning). The steady-state time is
    what the sweep keeps; a whole-round mean would read it ~10x slower."""
    clock = {"now": 0.0}
    monkeypatch.setattr(tune, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock["now"])}))
    last = {"impl": None, "since": 0}

    def impl(name, seconds):
        def call():
            if last["impl"] != name:
                last.update(impl=name, since=0)
            last["since"] += 1
            clock["now"] += 200e-6 if last["since"] <= 30 else seconds

        return call

    t = tune.time_impls({"a": impl("a", 10e-6), "b": impl("b", 40e-6)}, rounds=3)
    assert t == pytest.approx({"a": 10e-6, "b": 40e-6})


def test_an_impl_is_timed_after_the_previous_ones_threads_went_idle(monkeypatch):
    """A fake clock: ``blas`` leaves its threads spinning for 0.1 s after each call (OpenBLAS's
    idle threads, 2^28 cycles), and any call of ``kernel`` meanwhile takes 1.6x its 100 us. Each
    impl is timed after tune.SETTLE_S of its own untimed calls, so the kernel's steady state is what
    the sweep keeps, in either order; rounds interleaved between the two read it 1.6x slower."""
    assert tune.SETTLE_S > 0.1
    clock = {"now": 0.0, "spin_until": -1.0}
    monkeypatch.setattr(tune, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock["now"])}))

    def blas():
        clock["now"] += 300e-6
        clock["spin_until"] = clock["now"] + 0.1

    def kernel():
        clock["now"] += 160e-6 if clock["now"] < clock["spin_until"] else 100e-6

    for fns in ({"blas": blas, "kernel": kernel}, {"kernel": kernel, "blas": blas}):
        t = tune.time_impls(fns, rounds=3)
        assert t == pytest.approx({"blas": 300e-6, "kernel": 100e-6})


def test_second_look_where_the_winner_flips_or_auto_reads_slow():
    sweep = tune.SWEEPS[0]
    numba = [2.0, 2.0, 0.5, 2.0, 0.5, 0.5, 0.5]
    rows = [(p, {"numpy": 1.0, "numba": t}) for p, t in zip(sweep.params, numba, strict=False)]
    assert tune._second_look(sweep, rows) == [1, 2, 3, 4]
    rows[6][1]["auto"] = 0.6  # regret 1.2
    rows[5][1]["auto"] = 0.5
    assert tune._second_look(sweep, rows) == [1, 2, 3, 4, 6]


def test_crossover_is_where_numba_wins_from_on():
    sweep = tune.SWEEPS[0]

    def rows(wins):
        return [
            (p, {"numpy": 1.0, "numba": 0.5 if w else 2.0}) for p, w in zip(sweep.params, wins, strict=True)
        ]

    n = len(sweep.params)
    assert tune.crossover(sweep, rows([True] * n)) == sweep.value(sweep.params[0])
    # a win below a later loss does not count: numba must win at every larger size
    wins = [False, True, False] + [True] * (n - 3)
    assert tune.crossover(sweep, rows(wins)) == sweep.value(sweep.params[3])
    assert tune.crossover(sweep, rows([False] * n)) == sweep.value(sweep.params[-1]) + 1
    # a kernel not taken to win past the sweep (the whole-product GEMM against BLAS): never
    gemm = next(s for s in tune.SWEEPS if s.knob == "matmul_gemm")
    sweep, n = gemm, len(gemm.params)
    assert tune.crossover(gemm, rows([False] * n)) == _profile.NEVER == gemm.never
    assert tune.crossover(gemm, rows([False] * (n - 1) + [True])) == gemm.value(gemm.params[-1])
    assert tune.regret({"numpy": 2.0, "numba": 1.0, "auto": 3.0}) == 3.0
    # a sweep that starts at one row (softmax): a win at its smallest size is a win at every size
    soft = next(s for s in tune.SWEEPS if s.knob == "softmax")
    sweep, n = soft, len(soft.params)
    assert soft.start == 0
    assert tune.crossover(soft, rows([True] * n)) == 0
    assert tune.crossover(soft, rows([False] + [True] * (n - 1))) == soft.value(soft.params[1])


def test_the_crossover_weighs_both_dtypes():
    """float32 even at the third size (numba 1.02x slower), float64 numba 1.3x faster there: the
    threshold at the third size costs float32 1.02, at the fourth (the larger crossover) float64 1.3."""
    sweep = tune.SWEEPS[0]
    p = sweep.params

    def rows(numba):
        return [(q, {"numpy": 1.0, "numba": t}) for q, t in zip(p, numba, strict=False)]

    f32 = rows([1.5, 1.2, 1.02, 0.8, 0.5, 0.5])
    f64 = rows([1.5, 1.2, 1 / 1.3, 0.8, 0.5, 0.5])
    assert tune.crossover(sweep, f32) == sweep.value(p[3])
    assert tune.crossover(sweep, f64) == sweep.value(p[2])
    assert tune.crossover(sweep, f32, f64) == sweep.value(p[2])
    # the other way round (float32's loss the larger) it keeps the larger crossover
    f32 = rows([1.5, 1.2, 1.4, 0.8, 0.5, 0.5])
    assert tune.crossover(sweep, f32, f64) == sweep.value(p[3])


@needs_jit
def test_a_tune_run_writes_a_profile_that_auto_then_uses(profile, monkeypatch):
    """End to end on two small sweeps (1 round each): timings are not asserted, only that the
    profile holds the crossovers the run reported and that they are in force afterwards."""
    picked = (s for s in tune.SWEEPS if s.op in ("matmul", "softmax"))
    small = tuple(dataclasses.replace(s, params=s.params[:3]) for s in picked)
    monkeypatch.setattr(tune, "SWEEPS", small)
    monkeypatch.setattr(tune, "ROUNDS", 1)
    monkeypatch.setattr(tune, "MIN_ROUND_S", 0.0)
    monkeypatch.setattr(tune, "MIN_BATCH_S", 0.0)
    monkeypatch.setattr(tune, "SETTLE_S", 0.0)
    out = io.StringIO()
    png = profile.parent / "sweep.png"
    result = tune.run(stream=io.StringIO(), out=out, plot_path=str(png))
    text = out.getvalue()
    assert png.exists() == (f"plot: {png}" in text)  # drawn, or "skipped" without matplotlib
    assert "max regret with shipped thresholds" in text and "max regret with tuned thresholds" in text
    # the [[regret]] targets of benchmarks/targets.toml, judged on both measurements
    assert "regret targets (benchmarks/targets.toml):" in text
    assert "  shipped thresholds: max regret " in text and "  tuned thresholds: max regret " in text
    data = json.loads(profile.read_text())
    entry = data["machines"][_profile.machine_key()]["threads"][str(fastla.get_num_threads())]
    assert entry["rules"] == result["rules"]
    knobs = {"matmul", "matmul_gemm", "matmul_gemm_f32", "matmul_stack_work", "softmax"}
    assert set(result["rules"]) == knobs
    assert fastla.tune_profile()["rules"] == result["rules"]
    assert MATMUL_RULE["small_min_batch"] == result["rules"]["matmul"]
    assert MATMUL_RULE["gemm_min_work"] == result["rules"]["matmul_gemm"]
    assert MATMUL_RULE["gemm_min_work_f32"] == result["rules"]["matmul_gemm_f32"]
    assert MATMUL_RULE["packed_stack_min_work"] == result["rules"]["matmul_stack_work"]
    assert "matmul_gemm: threshold in multiply-adds" in text
    assert result["regret_before"] > 0 and result["regret_after"] > 0


def test_regret_targets_are_validated_and_judged(tmp_path):
    from fastla.bench import report
    from fastla.bench.cli import find_benchmarks_dir

    shipped = report.load_regret_targets(find_benchmarks_dir() / "targets.toml")
    assert {e["thresholds"] for e in shipped} == set(report.REGRET_THRESHOLDS)
    bad = tmp_path / "targets.toml"
    for entry in ('thresholds = "best"\nmax_regret = 1.1', 'thresholds = "tuned"\nmax_regret = "low"'):
        bad.write_text(f"[[regret]]\n{entry}\n")
        with pytest.raises(ValueError, match=r"\[\[regret\]\] entry"):
            report.load_regret_targets(bad)
    entries = [{"thresholds": "shipped", "max_regret": 1.3}, {"thresholds": "tuned", "max_regret": 1.1}]
    results = report.regret_results(entries, {"shipped": [1.0, 1.2, 1.25], "tuned": [1.0, 1.15]})
    assert [(w, above, n, status) for _, w, above, n, status in results] == [
        (1.25, 2, 3, "met"),
        (1.15, 1, 2, "missed"),
    ]
    (_, worst, _, _, status), _ = report.regret_results(entries, {"tuned": [1.0]})
    assert worst is None and status.startswith("not run")


def test_every_sweep_sets_a_knob_of_the_op_it_times():
    """tune's sweeps and the profile's knobs name the same (knob, op) pairs: a sweep timing one op
    while its knob is read by another op's rule would tune the wrong threshold."""
    assert {s.knob for s in tune.SWEEPS} == set(_profile.KNOBS)
    for s in tune.SWEEPS:
        assert _profile.knob_op(s.knob) == s.op, s.knob


def test_each_sweeps_numpy_side_is_autos_own_numpy_call():
    """A sweep's NumPy side is timed as ``auto`` runs NumPy below the threshold (the knob forced to
    NEVER: the fast path, then NumPy), not through ``backend="numpy"``'s full validation path, whose
    extra microseconds made small calls' NumPy side read slow: at the largest swept size auto so
    forced picks NumPy; at the smallest and the largest the side gives NumPy's result (where the
    forced auto does not pick NumPy, attention's fewest query rows, it is ``backend="numpy"``), and
    the rule is restored."""
    rng = np.random.default_rng(0)
    for s in tune.SWEEPS:
        if s.calls is not None:
            continue
        module, key = _profile.KNOBS[s.knob]
        rules = sys.modules[f"fastla.{module}"]
        before = dict(rules.AUTO_RULE)
        fn = getattr(fastla, s.op)
        for p in (s.params[0], s.params[-1]):
            args, kwargs = s.case(p, np.dtype(s.dtypes[-1]), rng)
            seen = []  # the backend each call of the public function was given

            def spy(*a, _fn=fn, _seen=seen, **kw):
                _seen.append(kw.get("backend"))
                return _fn(*a, **kw)

            fns = tune._calls(s, spy, args, kwargs, with_auto=False)
            assert set(fns) == set(s.sides), s.knob
            call = functools.partial(fastla.explain, s.op, *args, **kwargs)
            explain = tune._forced_rule(rules, key, _profile.NEVER, call)
            picked, reason = explain()
            assert picked == "numpy" or p != s.params[-1], (s.knob, p, reason)
            seen.clear()
            got, want = fns["numpy"](), fn(*args, backend="numpy", **kwargs)
            assert seen == ([None] if picked == "numpy" else ["numpy"]), (s.knob, p)
            for g, w in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, want)), strict=True):
                np.testing.assert_array_equal(g, w)
            assert rules.AUTO_RULE == before, s.knob


def test_the_topk_stream_sweep_times_each_kernel_forced(monkeypatch):
    """The threshold between the numba top-k's two kernels is swept by forcing each in turn (the
    streamed one really runs, and only for its side), the rule is restored after each call, and
    its crossover is the first size from which the packed kernel wins."""
    from fastla import similarity

    sweep = next(s for s in tune.SWEEPS if s.knob == "cosine_topk_stream")
    assert sweep.sides == ("stream", "packed") and _profile.knob_op(sweep.knob) == "cosine_topk"
    ran = []
    real = similarity._topk_streaming
    monkeypatch.setattr(similarity, "_topk_streaming", lambda *a: ran.append("stream") or real(*a))
    rng = np.random.default_rng(0)
    args = (rng.standard_normal((8, 16)), rng.standard_normal((300, 16)), 3)
    fns = tune._calls(sweep, fastla.cosine_topk, args, {}, True)
    assert set(fns) == {"stream", "packed", "auto"}
    before = similarity.AUTO_RULE["topk_packed_min_queries"]
    results = [fns[side]() for side in ("stream", "packed")]
    assert ran == ["stream"] and similarity.AUTO_RULE["topk_packed_min_queries"] == before
    for got in results[1:]:  # the two kernels agree on the indices
        np.testing.assert_array_equal(got[1], results[0][1])
    rows = [(p, {"stream": 1.0, "packed": 2.0 if p < 64 else 0.5}) for p in sweep.params]
    assert tune.crossover(sweep, rows) == 64
    assert tune.regret({"stream": 1.0, "packed": 3.0, "auto": 1.5}) == 1.5
