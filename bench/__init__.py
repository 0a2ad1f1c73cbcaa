"""Sluice's benchmark suite: ``make bench`` (see ``bench/run.py``) and micro-benchmarks."""
