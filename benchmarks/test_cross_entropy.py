import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("cross_entropy"))
def test_cross_entropy(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
