import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("cosine_similarity"))
def test_cosine_similarity(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
