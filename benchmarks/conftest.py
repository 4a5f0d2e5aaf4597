def pytest_benchmark_update_machine_info(config, machine_info):
    """Machine facts (CPU, SIMD, BLAS + coretype, numba, threads) go into the JSON."""
    from fastla._host import machine_facts

    machine_info["fastla"] = machine_facts()
