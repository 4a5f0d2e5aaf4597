"""fastla.kernels inside a user's @njit loop against the plain-Numba loop."""

import pytest

from fastla.bench import runner

PARAMS = runner.params("kernels:solve") + runner.params("kernels:matmul") + runner.params("kernels:softmax")


@pytest.mark.parametrize("workload,impl", PARAMS)
def test_kernels_in_njit(benchmark, workload, impl):
    runner.run(benchmark, workload, impl)
