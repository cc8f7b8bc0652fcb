"""Benchmarks can import the naive references in ``tests/reference_*.py`` by name.

Naming: in each benchmark group, the test whose name ends in ``_ours`` times nndyn_fast and
every other test a baseline; ``scripts/bench_table.py`` turns the JSON into ratios."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
