"""The on-disk compile cache: every built-in family loads in a fresh process, the index does not
grow from run to run, user functions are compiled in memory only (the kernels they reach by
their signature are cached: family "user"), the cache is stale when any file of kernels/
changes, and concurrent saves to one index lose no entry.

The index tests each use a private NUMBA_CACHE_DIR (a temporary directory), so their first
process compiles from scratch. The per-family tests use the project's own cache and run after
the rest of the suite (marked ``late``), which has filled it: their first process compiles only
what the cache still lacks, and the second must compile nothing. Whether a process compiled
anything is read from the dispatchers' cache statistics (``dispatcher.stats.cache_misses``,
see tests/cache_workloads.py), never from timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit, types
from numba.core.registry import CPUDispatcher

import nndyn_fast
from nndyn_fast import _compile_cache

HERE = Path(__file__).resolve().parent
WORKLOADS = HERE / "cache_workloads.py"


def _run(cmd: list[str], cache_dir: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NUMBA_CACHE_DIR", None)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    out = subprocess.run(
        cmd, env=env, cwd=HERE, capture_output=True, text=True, timeout=900
    )  # fmt: skip
    assert out.returncode == 0, f"{cmd} failed:\n{out.stderr[-3000:]}"
    assert "ReferenceError" not in out.stderr, out.stderr[-3000:]
    return out


def _families(cache_dir: Path | None, *families: str) -> dict:
    out = _run([sys.executable, str(WORKLOADS), *families], cache_dir)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["family"]: r for r in rows}


def _index_bytes(cache_dir: Path) -> int:
    return sum(p.stat().st_size for p in cache_dir.rglob("*.nbi"))


# -- in process -------------------------------------------------------------------------------


def test_every_kernel_has_the_package_cache_policy():
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(nndyn_fast.kernels.__path__):
        mod = importlib.import_module(f"nndyn_fast.kernels.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == mod.__name__:
                assert isinstance(obj._cache, _compile_cache.KernelCache), f"{info.name}.{name}"


def test_signatures_holding_a_function_are_recognised():
    @njit
    def f(x):
        return x

    arr = types.float64[::1]
    fn = types.Dispatcher(f)
    assert _compile_cache.holds_function(fn)
    assert _compile_cache.holds_function(types.Tuple((arr, fn)))
    assert _compile_cache.holds_function(types.UniTuple(fn, 2))
    assert not _compile_cache.holds_function(types.Tuple((arr, types.int64, types.none)))
    assert not _compile_cache.holds_function(arr)


def test_the_stamp_changes_with_any_kernel_file(tmp_path, monkeypatch):
    # a compiled kernel carries its callees from other files: an edit of any file is stale
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(_compile_cache, "_KERNEL_DIR", tmp_path)
    stamps = []
    for edit in (None, ("b.py", "y = 3\n"), ("a.py", "x = 1 \n")):
        if edit:
            (tmp_path / edit[0]).write_text(edit[1])
        monkeypatch.setattr(_compile_cache, "_STAMP", None)
        stamps.append(_compile_cache.kernels_stamp())
    assert len(set(stamps)) == 3


def test_an_unreadable_index_counts_as_empty(tmp_path):
    # e.g. one written by an earlier version, holding entries of functions that are gone
    import pickle

    import numba

    index = _compile_cache._IndexFile(tmp_path, "k", _compile_cache.kernels_stamp())
    with open(tmp_path / "k.nbi", "wb") as f:
        pickle.dump(numba.__version__, f, protocol=-1)
        f.write(b"not a pickle")
    assert index.load("key") is None
    index.save("key", b"data")
    assert index.load("key") == b"data"


def test_concurrent_saves_to_one_index_lose_no_entry(tmp_path):
    # four writers of one kernel's index at once (as two processes compiling the same kernel
    # would be); each holds its own descriptor of the lock, as separate processes do. Without
    # the lock about half the 160 entries are lost or point at another entry's data file.
    import threading

    stamp = _compile_cache.kernels_stamp()

    def writer(w):
        index = _compile_cache._IndexFile(str(tmp_path), "k", stamp)
        for i in range(40):
            index.save((w, i), f"{w}-{i}".encode())

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    index = _compile_cache._IndexFile(str(tmp_path), "k", stamp)
    for w in range(4):
        for i in range(40):
            assert index.load((w, i)) == f"{w}-{i}".encode(), (w, i)


def test_a_user_field_compiles_once_per_process():
    @njit
    def decay(t, x, args, out):
        out[0] = -args[0] * x[0]

    counts = []
    for _ in range(2):
        sol = nndyn_fast.odeint(decay, [1.0], [0.0, 1.0], args=(2.0,), rtol=1e-10, atol=1e-12)
        counts.append(sum(sum(d.stats.cache_misses.values()) for d in _package_dispatchers()))
    assert counts[1] == counts[0]  # the second call compiled nothing
    # rounding of the adaptive steps at rtol 1e-10
    assert abs(sol.y[-1, 0] - np.exp(-2.0)) < 1e-8


def _package_dispatchers():
    sys.path.insert(0, str(HERE))
    try:
        from cache_workloads import package_dispatchers
    finally:
        sys.path.remove(str(HERE))
    return package_dispatchers()


# -- fresh processes --------------------------------------------------------------------------


@pytest.mark.slow
def test_batched_odeint_and_nndyn_ode_load_in_three_fresh_processes(tmp_path):
    # the first process fills an empty cache; growth from dead entries (a key holding a
    # function's identity) would show in every later one
    cache_dir = tmp_path / "cache"
    sizes = []
    for i in range(3):
        fam = _families(cache_dir, "ode_batch")["ode_batch"]
        if i > 0:
            assert fam["misses"] == [], f"process {i + 1} compiled {fam['misses']}"
        _run(
            [sys.executable, "-m", "nndyn_fast.cli", "ode", "--d", "4", "--hidden", "8",
             "--batch", "20", "--frames", "5", "--out", str(tmp_path / f"ode{i}.h5")],
            cache_dir,
        )  # fmt: skip
        sizes.append(_index_bytes(cache_dir))
    assert sizes[0] > 0
    assert sizes[1:] == sizes[:1] * 2, f"index bytes per process: {sizes}"


_FAMILIES = [
    "ode_batch", "ode_fixed", "dde", "training", "lyapunov", "simulate", "networks", "gradients",
    "user",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.late
@pytest.mark.parametrize("family", _FAMILIES)
def test_a_second_fresh_process_compiles_nothing(family):
    _families(None, family)  # compiles into the project's cache what it lacks
    fam = _families(None, family)[family]
    assert fam["misses"] == [], f"{family} compiled {fam['misses']} with a warm cache"
    assert fam["hits"] >= 1


@pytest.mark.slow
def test_user_fields_leave_the_index_unchanged(tmp_path):
    # a user's function compiles in each process and is never written to the cache (its key
    # would hold the function's identity, dead in any other process); the kernels it reaches
    # by its signature are written once, by the first process
    code = (
        "import numpy as np\nfrom numba import njit\nimport nndyn_fast as nf\n"
        "@njit\ndef f(t, x, args, out):\n    out[0] = -x[0]\n"
        "nf.odeint(f, [1.0], np.linspace(0, 1, 3))\n"
    )
    cache_dir = tmp_path / "cache"
    sizes = []
    for _ in range(2):
        _run([sys.executable, "-c", code], cache_dir)
        sizes.append(_index_bytes(cache_dir))
    assert sizes[1] == sizes[0], f"index bytes per process: {sizes}"
