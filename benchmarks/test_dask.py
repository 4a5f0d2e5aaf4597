import pytest

from fastla.bench import runner, workloads


@pytest.fixture(scope="module", autouse=True)
def _clusters():
    yield
    workloads.close_dask_clients()  # no idle workers left behind for the benchmarks that follow


@pytest.mark.parametrize("workload,impl", runner.params("dask:cosine_topk"))
def test_dask_cosine_topk(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
