import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("solve"))
def test_solve(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
