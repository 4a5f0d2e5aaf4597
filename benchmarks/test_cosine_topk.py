import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("cosine_topk"))
def test_cosine_topk(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
