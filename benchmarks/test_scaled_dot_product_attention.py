import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("scaled_dot_product_attention"))
def test_scaled_dot_product_attention(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
