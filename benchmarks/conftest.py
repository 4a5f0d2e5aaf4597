import os

# auto at its steady state: an op's kernels compiled at its first call (fastla/_first_use.py), also
# where this file is collected without `python -m fastla bench` (which sets it) or the tests' conftest
os.environ["FASTLA_FIRST_CALL"] = "compile"


def pytest_benchmark_update_machine_info(config, machine_info):
    """Machine facts (CPU, SIMD, BLAS + coretype, numba, threads) go into the JSON."""
    from fastla._host import machine_facts

    machine_info["fastla"] = machine_facts()
