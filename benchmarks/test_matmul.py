import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("matmul"))
def test_matmul(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
