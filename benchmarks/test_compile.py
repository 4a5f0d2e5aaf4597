"""Cold JIT compile time and first-call time with a warm cache, each in a fresh interpreter."""

import pytest

from fastla.bench import compile_time, runner


@pytest.mark.parametrize("op", compile_time.ops_for(runner.current_set(), runner.current_ops()))
@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_first_call(benchmark, op, cache, tmp_path_factory):
    folder = "numba-cache-" + op.replace(":", "-").replace(" ", "_")  # heavier paths are "op:path"
    compile_time.run(benchmark, op, cache, tmp_path_factory.getbasetemp() / folder)
