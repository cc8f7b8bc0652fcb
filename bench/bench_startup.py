"""First call in a fresh process with a warm compile cache, per family, beside the same call
warm in process.

Group ``startup-<family>`` (the families and their small workloads are those of
tests/cache_workloads.py: built-in neural-ODE batches, fixed-step and variational runs, DDEs,
training, Lyapunov exponents, network simulation):

- ``fresh_process_ours``: a new interpreter runs ``import nndyn_fast`` and the family's calls
  once (after a first process has filled the cache); timed from outside (interpreter start
  included). ``extra_info``: ``import_seconds``, ``first_call_seconds`` (timed inside the
  process), ``overhead_seconds`` (import + first call - the warm call), and ``misses`` (the
  kernels it compiled: none when every kernel loads from the cache).
- ``warm_in_process_reference``: the same calls, warm, in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
import cache_workloads  # noqa: E402

WORKLOADS = str(TESTS / "cache_workloads.py")
FAMILIES = list(cache_workloads.FAMILIES)
_WARM: dict[str, float] = {}


def _fresh(*families: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, WORKLOADS, "--import-time", *families],
        capture_output=True, text=True, check=True, cwd="/tmp", timeout=1800,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return wall, {r.get("family", "import"): r for r in rows}


@pytest.fixture(scope="module")
def warm_cache():
    """One process that compiles whatever the cache lacks."""
    _fresh(*FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_warm_in_process_reference(benchmark, family):
    benchmark.group = f"startup-{family}"
    fn = cache_workloads.FAMILIES[family]
    fn()  # compile / load
    times = []

    def run():
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)

    benchmark.pedantic(run, rounds=3, iterations=1)
    _WARM[family] = min(times)


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_process_ours(benchmark, warm_cache, family):
    benchmark.group = f"startup-{family}"
    wall, rows = benchmark.pedantic(_fresh, args=(family,), rounds=1, iterations=1)
    fam = rows[family]
    first = fam["seconds"]
    imp = rows["import"]["import_seconds"]
    benchmark.extra_info.update(
        wall_seconds=wall, import_seconds=imp, first_call_seconds=first, misses=fam["misses"]
    )
    if family in _WARM:
        benchmark.extra_info["overhead_seconds"] = imp + first - _WARM[family]
    assert fam["misses"] == [], f"{family} compiled {fam['misses']} with a warm cache"
