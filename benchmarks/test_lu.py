import pytest

from fastla.bench import runner


@pytest.mark.parametrize("workload,impl", runner.params("lu_factor+lu_solve"))
def test_lu_factor_solve(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
