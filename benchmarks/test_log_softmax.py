import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("log_softmax"))
def test_log_softmax(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
