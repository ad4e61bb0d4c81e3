"""Benchmarks: each module ``bench/bench_*.py`` measures one thing against a baseline run in the
same process, and returns a section of ``docs/performance.md``."""
