"""The add-an-operation checklist of ARCHITECTURE.md, made executable, and the module rules."""

from __future__ import annotations

import ast
import os
import platform
import re

import numpy as np
import pytest

import fastla
from fastla import _warmup
from fastla.bench import report
from fastla.bench import workloads as W

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastla.__file__)))
OPS = fastla.operations()


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def _workload_ops(set_name):
    """Registry ops covered by the set's workloads (a composite ``a+b`` covers both)."""
    ops = set()
    for w in W.select(set_name):
        if not w.op.startswith("dask:"):
            ops.update(w.op.split("+"))
    return ops


def test_checklist_items_are_in_architecture_md():
    text = _read("ARCHITECTURE.md")
    assert "## Adding an operation: the checklist" in text
    assert "tests/test_architecture.py" in text


@pytest.mark.parametrize("op", OPS)
def test_op_has_the_three_impls(op):
    assert {"numpy", "loop", "numba"} <= set(fastla.implementations(op))


@pytest.mark.parametrize("op", OPS)
def test_op_is_exported_and_in_the_readme_api_table(op):
    assert getattr(fastla, op).__name__ == op
    readme = _read("README.md")
    assert re.search(rf"^\| `{op}\(", readme, re.MULTILINE), f"no README API row for {op}"


@pytest.mark.parametrize("op", OPS)
def test_op_is_in_the_dropin_matrix(op):
    from tests import test_dropin

    assert any(fn is getattr(fastla, op) for fn, *_ in test_dropin.CASES.values())


class _Captured(Exception):
    pass


@pytest.mark.parametrize("op", OPS)
def test_op_hands_its_impls_one_named_tuple_of_validated_arguments(op, monkeypatch):
    """Validation returns the op's arguments as one NamedTuple (its fields documented where it is
    defined), and every implementation takes exactly those fields, in order: a field added, renamed
    or moved in one place and not the others fails here. (An impl taking ``*args`` forwards them
    whole, as power iteration's three do to ``eigen.run``, whose parameters are then checked.)"""
    import inspect

    import numpy as np

    from fastla import _registry, eigen

    original = _registry.Operation.run
    seen = []

    def capture(self, backend, prep):
        if self.name != op:  # e.g. lu_solve's call factors first
            return original(self, backend, prep)
        seen.append((self, prep))
        raise _Captured

    monkeypatch.setattr(_registry.Operation, "run", capture)
    monkeypatch.setattr(_registry, "fast_path", lambda backend: None)  # the full path's validation
    with pytest.raises(_Captured):
        _warmup._first_calls()[op](np.dtype("float64"))
    operation, prep = seen[-1]
    fields = getattr(type(prep.args), "_fields", None)
    assert isinstance(prep.args, tuple) and fields, f"{op}: validated arguments are a plain {type(prep.args)}"
    for name, impl in operation.impls.items():
        params = list(inspect.signature(impl.fn).parameters.values())
        if params and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
            params = list(inspect.signature(eigen.run).parameters.values())[: len(fields)]
        assert tuple(p.name for p in params) == fields, f"{op}: impl {name!r} takes {params}, not {fields}"


@pytest.mark.parametrize("set_name", ["smoke", "quick", "full"])
def test_every_op_has_a_workload_in_every_set(set_name):
    assert set(OPS) <= _workload_ops(set_name)


def test_every_workload_op_has_a_benchmark_file():
    files = "".join(
        _read("benchmarks", f) for f in os.listdir(os.path.join(ROOT, "benchmarks")) if f.endswith(".py")
    )
    for op in {w.op for w in W.WORKLOADS}:
        assert f'runner.params("{op}")' in files, f"no benchmarks/test_*.py runs workloads of {op}"


def test_every_target_resolves():
    report.load_targets(os.path.join(ROOT, "benchmarks", "targets.toml"), W.WORKLOADS)


@pytest.mark.parametrize("op", OPS)
def test_op_has_a_warmup_call(op):
    assert op in _warmup.OPS


@pytest.mark.parametrize("op", OPS)
def test_op_has_a_dask_form_or_a_reason(op):
    pytest.importorskip("dask")
    from fastla import dask as fdask

    assert (op in fdask._FUNCTIONS) != (op in fdask.NOT_ON_DASK), op
    if op in fdask.NOT_ON_DASK:
        assert len(fdask.NOT_ON_DASK[op]) > 20


def _imports(path):
    tree = ast.parse(_read(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def _sources():
    for folder, _, files in os.walk(os.path.join(ROOT, "fastla")):
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def test_only_the_numba_modules_import_numba():
    """_jit (availability, decorators, caching, threads) and _intrinsics (LLVM IR); the rest reach
    Numba through them."""
    allowed = {os.path.join("fastla", "_jit.py"), os.path.join("fastla", "_intrinsics.py")}
    offenders = [p for p in _sources() if p not in allowed
                 and any(m == "numba" or m.startswith("numba.") for m in _imports(p))]  # fmt: skip
    assert offenders == []


def test_the_registry_does_not_import_the_dask_layer_and_config_imports_no_fastla_module():
    assert not any(m.startswith("fastla.dask") or m == "dask" for m in _imports("fastla/_registry.py"))
    assert not any(m.startswith("fastla") for m in _imports("fastla/_config.py"))
    assert not any(m.startswith("fastla") for m in _imports("fastla/_jit.py"))


def test_benchmarks_do_not_import_the_command_line():
    for f in os.listdir(os.path.join(ROOT, "benchmarks")):
        if f.endswith(".py"):
            assert "fastla.__main__" not in _read("benchmarks", f), f


def test_tests_parametrize_over_implementations_instead_of_looping():
    """One test id per implementation (``impl_names(op)`` in a parametrize): a loop over
    ``fastla.implementations(op)`` inside a test hides which implementation failed."""
    offenders = []
    for name in sorted(os.listdir(os.path.join(ROOT, "tests"))):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        tree = ast.parse(_read(os.path.join("tests", name)))
        for node in ast.walk(tree):
            if isinstance(node, ast.For | ast.comprehension) and "implementations(" in ast.unparse(node.iter):
                offenders.append(f"{name}:{getattr(node, 'lineno', node.iter.lineno)}")
    assert offenders == []


def test_every_mutant_applies_exactly_once():
    """``tools/mutation_check.py``'s mutants must still aim at code that exists: a refactor that
    changes a mutated line leaves a mutant that no longer tests anything (it reports NOT APPLIED
    only when someone runs the tool)."""
    with open(os.path.join(ROOT, "tools", "mutation_check.py")) as f:
        tree = ast.parse(f.read())
    mutants = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Mutant"]
    assert len(mutants) >= 20
    for node in mutants:
        name, module, old = (ast.literal_eval(a) for a in node.args[:3])
        with open(os.path.join(ROOT, "fastla", module)) as f:
            count = f.read().count(old)
        assert count == 1, f"mutant {name}: its original text occurs {count} times in fastla/{module}"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's M_PERTURB")
def test_the_suite_perturbs_the_memory_malloc_hands_out():
    """conftest's ``M_PERTURB`` is in force: an array's memory reused after a free holds the
    pattern, not the values the freed array held (see ``tests/conftest.py``, ``MALLOC_PERTURB``)."""
    from tests.conftest import MALLOC_PERTURB

    for _ in range(3):
        freed = np.ones(4096)  # 32 KiB: malloc's heap, not NumPy's small-array cache or fresh pages
        del freed
        fresh = np.empty(4096)
        assert not (fresh == 1.0).any()
        assert (fresh.view(np.uint8) == (~MALLOC_PERTURB & 0xFF)).all()
