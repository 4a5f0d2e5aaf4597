import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("dask:cosine_topk"))
def test_dask_cosine_topk(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
