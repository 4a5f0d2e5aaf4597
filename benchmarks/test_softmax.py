import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("softmax"))
def test_softmax(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
