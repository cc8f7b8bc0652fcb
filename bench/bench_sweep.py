"""Sweep overhead per point beside a plain Python loop over the same points, in the same run.

The target is nearly free (``y = x²``), so the timings are the machinery's cost per point:

- sweep-serial: ``sweep(scheduler="serial", out=file)`` (validation, seeds, HDF5 rows and
  throttled commits) vs ``[fn(x=v) for v in values]``.
- sweep-cluster: ``sweep`` on a running 2-worker in-process Dask cluster vs raw
  ``client.map`` + ``client.gather`` of the same function on the same cluster.

``extra_info['us/point']`` is the time per point. Default 50 points (seconds in CI);
``NNDYN_BENCH_FULL=1``: 2000 points.
"""

import logging
import os

import numpy as np
import pytest
from sweep_targets import cheap

from nndyn_fast import sweep

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
P = 2000 if FULL else 50
VALUES = np.linspace(0.0, 1.0, P)


def _per_point(benchmark):
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["us/point"] = 1e6 * stats.stats.min / P


@pytest.mark.benchmark(group="sweep-serial")
def test_sweep_serial_ours(benchmark, tmp_path):
    out = tmp_path / "bench.h5"
    res = benchmark(sweep, cheap, {"x": VALUES}, scheduler="serial", out=out, overwrite=True)
    _per_point(benchmark)
    np.testing.assert_array_equal(res["y"], VALUES**2)


@pytest.mark.benchmark(group="sweep-serial")
def test_sweep_loop_baseline(benchmark):
    res = benchmark(lambda: [cheap(x=v) for v in VALUES.tolist()])
    _per_point(benchmark)
    assert len(res) == P


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.mark.benchmark(group="sweep-cluster")
def test_sweep_cluster_ours(benchmark, client, tmp_path):
    out = tmp_path / "bench.h5"
    res = benchmark(sweep, cheap, {"x": VALUES}, scheduler=client, out=out, overwrite=True)
    _per_point(benchmark)
    np.testing.assert_array_equal(res["y"], VALUES**2)


@pytest.mark.benchmark(group="sweep-cluster")
def test_sweep_cluster_raw_dask_map_baseline(benchmark, client):
    def run():
        futures = client.map(cheap, VALUES.tolist(), pure=False)
        return client.gather(futures)

    res = benchmark(run)
    _per_point(benchmark)
    assert len(res) == P
