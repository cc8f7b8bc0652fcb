"""Benchmarks can import the naive references in ``tests/reference_*.py`` by name.

Naming: in each benchmark group, the tests whose names contain ``_ours`` time nndyn_fast and
every other test a baseline; ``scripts/bench_table.py`` turns the JSON into ratios.

The ``fresh_process`` fixture runs a snippet in a new interpreter (from /tmp, so it imports the
installed package) and returns that process's peak resident memory in MiB (``VmHWM``, which,
unlike ``ru_maxrss``, does not carry the parent's peak across ``exec``)."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

_PEAK = (
    "\nfor _line in open('/proc/self/status'):\n"
    "    if _line.startswith('VmHWM:'):\n"
    "        print('VmHWM_kB', _line.split()[1])\n"
)


def _run_fresh(code: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", code + _PEAK], check=True, capture_output=True, text=True,
        cwd="/tmp",
    )  # fmt: skip
    kb = [ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("VmHWM_kB")]
    return int(kb[-1]) / 1024


@pytest.fixture
def fresh_process():
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory via /proc/self/status (Linux) only")
    return _run_fresh
