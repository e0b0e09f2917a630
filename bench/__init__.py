"""Benchmarks: pytest-benchmark micro-benchmarks (test_bench_*.py) and the end-to-end run
(``python -m bench.e2e``) against the naive baseline (``bench.baseline``)."""
