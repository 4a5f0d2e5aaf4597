import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("power_iteration"))
def test_power_iteration(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
