"""Benchmark harness: workloads (one definition), the pytest-benchmark runner, report and CLI."""
