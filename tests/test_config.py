"""Backend selection, the registry, explain, numba-absent fallback, thread settings."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastla
from fastla import _jit

needs_jit = pytest.mark.skipif(not _jit.JIT_ENABLED, reason="needs numba with JIT enabled")


def run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def test_set_backend_and_unknown_name():
    fastla.set_backend("numpy")
    assert fastla.get_backend() == "numpy"
    with pytest.raises(ValueError, match="auto, numba, numpy, loop"):
        fastla.set_backend("blas")
    assert fastla.get_backend() == "numpy"


def test_per_call_unknown_backend_lists_the_op_impls():
    with pytest.raises(ValueError, match="numba_naive"):
        fastla.matmul(np.eye(2), np.eye(2), backend="fortran")


def test_context_manager_restores_on_exception():
    fastla.set_backend("numpy")
    with pytest.raises(RuntimeError), fastla.backend("loop"):
        assert fastla.get_backend() == "loop"
        assert fastla.explain("matmul", np.eye(2), np.eye(2))[0] == "loop"
        raise RuntimeError
    assert fastla.get_backend() == "numpy"


def test_context_manager_is_per_thread():
    seen = []
    with fastla.backend("loop"):
        t = threading.Thread(target=lambda: seen.append(fastla.get_backend()))
        t.start()
        t.join()
    assert seen == ["auto"]


def test_env_var_sets_default():
    r = run_python("import fastla; print(fastla.get_backend())", FASTLA_BACKEND="numpy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "numpy"
    r = run_python("import fastla", FASTLA_BACKEND="nope")
    assert r.returncode != 0 and "FASTLA_BACKEND" in r.stderr


def test_tuning_variables_with_bad_values_are_errors_naming_them(monkeypatch):
    """The kernels' shape knobs (FASTLA_SIMD_BYTES, FASTLA_VECTOR_BYTES, FASTLA_GEMM_*) read a bad
    value as a ValueError naming the variable and what it takes: they were bare int() tracebacks at
    import, and FASTLA_SIMD_BYTES=7 (or 0) a ZeroDivisionError in the kernels' lane arithmetic."""
    from fastla import _gemm_kernels, _host

    monkeypatch.delenv("FASTLA_TEST_KNOB", raising=False)
    assert _host.env_int("FASTLA_TEST_KNOB", 5) == 5
    for raw, allowed, ok in (
        ("32", _host.SIMD_WIDTHS, True),
        ("7", _host.SIMD_WIDTHS, False),
        ("abc", None, False),
        ("0", None, False),
        ("-3", None, False),
        ("128", None, True),
    ):
        monkeypatch.setenv("FASTLA_TEST_KNOB", raw)
        if ok:
            assert _host.env_int("FASTLA_TEST_KNOB", 5, allowed) == int(raw)
        else:
            with pytest.raises(ValueError, match=f"FASTLA_TEST_KNOB='{raw}': expected"):
                _host.env_int("FASTLA_TEST_KNOB", 5, allowed)
    monkeypatch.delenv("FASTLA_TEST_KNOB")
    assert _host.env_flag("FASTLA_TEST_KNOB", True) is True
    for raw, want in (("0", False), ("1", True), ("", True), ("yes", None), ("2", None), ("true", None)):
        monkeypatch.setenv("FASTLA_TEST_KNOB", raw)
        if want is None:
            with pytest.raises(ValueError, match=f"FASTLA_TEST_KNOB='{raw}': expected 0 or 1"):
                _host.env_flag("FASTLA_TEST_KNOB", True)
        else:
            assert _host.env_flag("FASTLA_TEST_KNOB", True) is want
    assert _gemm_kernels.gemm_tile("4x2", (6, 4)) == (4, 2)
    assert _gemm_kernels.gemm_tile("", (6, 4)) == (6, 4)
    for raw in ("foo", "3x", "0x4", "4x2x1", "ax4"):
        with pytest.raises(ValueError, match="FASTLA_GEMM_TILE"):
            _gemm_kernels.gemm_tile(raw, (6, 4))
    r = run_python("import fastla", FASTLA_SIMD_BYTES="7")
    assert r.returncode != 0 and "FASTLA_SIMD_BYTES='7': expected one of 16, 32, 64" in r.stderr
    assert "ZeroDivisionError" not in r.stderr


def test_explain_reasons():
    impl, reason = fastla.explain("matmul", np.ones((3, 3), dtype=np.int32), np.ones((3, 3)))
    assert impl == "numpy" and "int32" in reason
    impl, reason = fastla.explain("matmul", np.eye(3), np.eye(3), backend="loop")
    assert impl == "loop" and "backend" in reason
    with pytest.raises(ValueError, match="unknown operation"):
        fastla.explain("nope", 1)
    # a call the public function would refuse: its TypeError in its own names (not _prepare's)
    with pytest.raises(TypeError, match=r"matmul\(\): missing a required argument: 'b'"):
        fastla.explain("matmul", np.eye(3))
    with pytest.raises(TypeError, match=r"softmax\(\): got an unexpected keyword argument 'dim'"):
        fastla.explain("softmax", np.eye(3), dim=0)


def test_implementations_are_the_public_path():
    impls = fastla.implementations("matmul")
    assert {"numpy", "loop", "numba", "numba_naive"} <= set(impls)
    with pytest.raises(ValueError, match="shape"):
        impls["loop"](np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(TypeError):
        impls["__missing__"] = None  # read-only mapping


def test_forced_compiled_backend_on_int_is_type_error():
    a = np.arange(4).reshape(2, 2)
    with pytest.raises(TypeError, match=r"int64.*float32, float64"):
        fastla.matmul(a, a, backend="numba")
    with pytest.raises(TypeError, match="int64"):
        fastla.matmul(a, a, backend="loop")


NO_NUMBA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba.") or name == "llvmlite":
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
import numpy as np, fastla
a = np.arange(6.0).reshape(2, 3)
assert np.array_equal(fastla.matmul(a, a.T), a @ a.T)
impl, reason = fastla.explain("matmul", np.ones((100, 4, 4)), np.ones((100, 4, 4)))
assert impl == "numpy" and "numba" in reason, (impl, reason)
try:
    fastla.matmul(a, a.T, backend="numba")
except fastla.BackendUnavailable as exc:
    assert isinstance(exc, RuntimeError)
    print("unavailable:", exc)
else:
    raise SystemExit("numba backend should be unavailable")
from fastla import kernels  # fastla.kernels run as Python without numba
x = kernels.solve(np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([1.0, 2.0]))
assert np.allclose(x, np.linalg.solve([[2.0, 1.0], [1.0, 3.0]], [1.0, 2.0])), x
assert np.allclose(kernels.softmax(np.array([[1.0, 2.0, 3.0]])).sum(), 1.0)
assert np.array_equal(kernels.matmul(np.eye(2), np.ones((2, 3))), np.ones((2, 3)))
assert "numba" not in sys.modules
"""


def test_numba_absent_falls_back_to_numpy():
    r = run_python(NO_NUMBA)
    assert r.returncode == 0, r.stderr
    assert "unavailable: matmul" in r.stdout


def test_set_num_threads_validates():
    with pytest.raises(ValueError):
        fastla.set_num_threads(0)
    with pytest.raises(TypeError):
        fastla.set_num_threads(1.5)
    with pytest.raises(TypeError):
        fastla.set_num_threads(True)
    n = fastla.get_num_threads()
    fastla.set_num_threads(np.int64(1))  # a NumPy integer is an int
    try:
        assert fastla.get_num_threads() == 1 and type(fastla.get_num_threads()) is int
    finally:
        fastla.set_num_threads(n)


@pytest.mark.slow
def test_concurrent_calls_from_python_threads(rng):
    """8 threads hammering parallel kernels must neither crash nor mix up results."""
    inputs = [(rng.standard_normal((130, 70)), rng.standard_normal((70, 90))) for _ in range(8)]
    stacks = [(rng.standard_normal((64, 4, 4)), rng.standard_normal((64, 4, 4))) for _ in range(8)]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(5):
                c = fastla.matmul(*inputs[i], backend="numba")
                s = fastla.matmul(*stacks[i], backend="numba")
            results[i] = (c, s)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(8):
        np.testing.assert_allclose(results[i][0], inputs[i][0] @ inputs[i][1], rtol=1e-10)
        np.testing.assert_allclose(results[i][1], stacks[i][0] @ stacks[i][1], rtol=1e-10)


def test_import_compiles_nothing():
    r = run_python(
        """
        import fastla, fastla._jit as j
        if j.NUMBA_AVAILABLE:
            from numba.core.registry import CPUDispatcher
            import gc
            compiled = [d for d in gc.get_objects() if isinstance(d, CPUDispatcher)
                        and d.__module__.startswith("fastla") and d.signatures]
            assert not compiled, compiled
        print("ok")
        """
    )
    assert r.returncode == 0, r.stderr


def test_cli_output_to_a_closed_pipe_ends_quietly():
    """``python -m fastla info | head -1``: a reader that goes away ends the command with exit
    status 1 and no traceback (stdout here is a pipe whose read end is already closed)."""
    read, write = os.pipe()
    os.close(read)
    try:
        cmd = [sys.executable, "-m", "fastla", "info"]
        r = subprocess.run(cmd, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr


def test_cli_info_and_explain():
    r = run_python(
        "from fastla.__main__ import main; main(['info'])",
        OPENBLAS_THREAD_TIMEOUT="4",
        GOMP_SPINCOUNT="10000",
    )
    assert r.returncode == 0, r.stderr
    assert "numpy" in r.stdout and "OPENBLAS_CORETYPE" in r.stdout and "threading_layer" in r.stdout
    # the spin settings are reported as the environment has them (README, "Threads")
    facts = dict(line.split(None, 1) for line in r.stdout.splitlines() if line.strip())
    assert facts["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert facts["GOMP_SPINCOUNT"] == "10000"
    assert facts["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY", "None")
    assert "auto_gemm" in r.stdout and (
        "BLAS for every single product" in r.stdout
        or "packed kernel from" in r.stdout
        or "packed kernel float64 " in r.stdout
    )
    # what auto does before an op's kernels are compiled (this suite's processes compile at once)
    expect = "compile at its first call" if fastla._jit.JIT_ENABLED else "nothing to compile"
    assert expect in facts["auto_first_call"], facts["auto_first_call"]
    r = run_python(
        "from fastla.__main__ import main; "
        "main(['explain', 'matmul', '--shape', '1000x1000', '1000x8', '--dtype', 'float32'])"
    )
    assert r.returncode == 0, r.stderr
    # too thin a product for the packed kernel: BLAS on every machine
    assert r.stdout.startswith("matmul: numpy") and "too thin" in r.stdout


def test_cli_argument_errors_are_messages_not_tracebacks(capsys):
    """The op's own error for shapes, dtypes or names that do not fit (it was a traceback), and
    argparse's for a count below 1."""
    from fastla.__main__ import main

    for argv, said in (
        (["explain", "solve", "--shape", "4", "4"], "at least two-dimensional"),
        (["explain", "nope", "--shape", "3"], "unknown operation 'nope'"),
        (["explain", "softmax", "--shape", "3x4", "--dtype", "foo"], "not understood"),
        (["explain", "cosine_topk", "--shape", "10x8", "100x8"], "missing a required argument: 'k'"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastla explain: ") and said in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["warmup", "--jobs", "0"])
    assert "--jobs: must be > 0" in capsys.readouterr().err
    # refused before anything is measured
    assert main(["tune", "--check", "--threads", "0"]) == 2
    assert "fastla tune: --threads: set_num_threads: n must be in [1, " in capsys.readouterr().err
    assert main(["tune", "--check", "--ops", "nope"]) == 2
    assert "no sweep for nope" in capsys.readouterr().err
