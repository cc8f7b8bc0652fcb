"""Parameter sweeps: grid order, seeds, schedulers agree, resume after a crash, the Kuramoto
r(K) target against Ott–Antonsen, input validation, the CLI."""

import functools
import importlib
import itertools
import logging

import numpy as np
import pytest
import sweep_targets as st

from nndyn_fast import SweepPointError, kuramoto_order_parameter, open_run, sweep
from nndyn_fast.cli import main

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.xdist_group("dask")  # Dask clusters in turn (see test_runs_sweep.py)
# the module (the package attribute nndyn_fast.sweep is the function of the same name)
sweep_mod = importlib.import_module("nndyn_fast.sweep")

GRID = {"a": [1, 2, 3], "b": [0.5, 1.5]}


@pytest.fixture(scope="module")
def client():
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


def test_cartesian_order_seeds_and_file(tmp_path):
    res = sweep(st.affine_noise, GRID, scheduler="serial", out=tmp_path / "s.h5", seed=7)
    # independent reference: itertools.product order (last axis fastest) and SeedSequence.spawn
    points = list(itertools.product(GRID["a"], GRID["b"]))
    children = np.random.SeedSequence(7).spawn(len(points))
    assert res.shape == (3, 2) and res.names == ("a", "b") and len(res) == 6
    np.testing.assert_array_equal(res["a"], [p[0] for p in points])
    np.testing.assert_array_equal(res["b"], [p[1] for p in points])
    assert res["a"].dtype == np.int64 and res["b"].dtype == np.float64
    np.testing.assert_array_equal(res["s"], [2.0 * a + b for a, b in points])
    np.testing.assert_array_equal(res["v"], [np.random.default_rng(c).random(3) for c in children])
    assert res.computed == 6
    with open_run(res.path) as run:
        assert run.status == "complete" and run.attrs["kind"] == "sweep"
        # rows in grid order (row i = point i); the checkpoint's mask says which are committed
        np.testing.assert_array_equal(np.flatnonzero(run.checkpoint["done"]), np.arange(6))
        np.testing.assert_array_equal(run["points/index"][:], np.arange(6))
        np.testing.assert_array_equal(run["points/s"][:], res["s"])
        np.testing.assert_array_equal(run.params["grid_a"], res["a"])


def test_explicit_points_no_seed_in_memory():
    pts = [{"a": 3.0, "b": 2}, {"a": -1.0, "b": 5}]
    res = sweep(st.no_seed, pts, scheduler="serial")
    assert res.shape is None and res.path is None
    np.testing.assert_array_equal(res["p"], [6.0, -5.0])
    np.testing.assert_array_equal(res["b"], [2, 5])


def test_local_cluster_matches_serial(client, tmp_path):
    ser = sweep(st.affine_noise, GRID, scheduler="serial", seed=3)
    par = sweep(st.affine_noise, GRID, scheduler=client, out=tmp_path / "p.h5", seed=3)
    for key in ("a", "b", "s", "v"):
        np.testing.assert_array_equal(par[key], ser[key])  # same seeds: bit-identical
    assert client.status == "running"  # a Client passed in is left open


def test_order_independent_of_completion_order(client, tmp_path):
    n = 8
    log = tmp_path / "finished"
    fn = functools.partial(st.slow_first, n=n, log=str(log))
    res = sweep(fn, {"i": np.arange(n)}, scheduler=client, out=tmp_path / "o.h5")
    finished = [int(s) for s in log.read_text().split()]
    # later points sleep less, so they finish out of index order...
    assert sorted(finished) == list(range(n)) and finished != list(range(n))
    with open_run(res.path) as run:  # ...but the file's rows are in grid order
        np.testing.assert_array_equal(run["points/index"][:], np.arange(n))
        np.testing.assert_array_equal(run["points/sq"][:], np.arange(n) ** 2.0)
        assert run.checkpoint["done"].all()
    # ...and so is the returned table
    np.testing.assert_array_equal(res["i"], np.arange(n))
    np.testing.assert_array_equal(res["sq"], np.arange(n) ** 2.0)


def test_real_processes_default_scheduler_matches_serial():
    # the default scheduler: a LocalCluster of worker processes (here 2), closed afterwards
    grid = {"K": [0.5, 2.5], "N": [200], "t_end": [4.0]}
    par = sweep(kuramoto_order_parameter, grid, n_workers=2, seed=1)
    ser = sweep(kuramoto_order_parameter, grid, scheduler="serial", seed=1)
    np.testing.assert_array_equal(par["r"], ser["r"])  # same seeds, same kernels: identical


def test_no_dask_falls_back_to_serial(monkeypatch):
    monkeypatch.setattr(sweep_mod, "_distributed", lambda: None)
    res = sweep(st.no_seed, GRID)  # scheduler=None without dask: in-process
    np.testing.assert_array_equal(res["p"], res["a"] * res["b"])
    with pytest.raises(ValueError, match="needs dask.distributed"):
        sweep(st.no_seed, GRID, scheduler="local")


def test_kuramoto_sweep_matches_ott_antonsen():
    gamma, n = 0.5, 5000
    Ks = np.array([0.5, 1.5, 2.0, 3.0])  # K_c = 2γ = 1
    res = sweep(
        kuramoto_order_parameter,
        {"K": Ks, "N": [n], "gamma": [gamma], "t_end": [60.0], "dt": [0.1]},
        scheduler="serial",
    )
    above = Ks > 2 * gamma
    r_oa = np.sqrt(1 - 2 * gamma / Ks[above])  # Ott–Antonsen stationary r for N → ∞
    # quantile frequencies remove sampling noise; what is left are finite-N fluctuations of
    # r(t) (std ~ 0.005 here, averaged over 300 steps) and the O(1/N) bias: 0.01 is ~2x the std
    np.testing.assert_allclose(res["r"][above], r_oa, atol=0.01)
    # below K_c the incoherent state has r = O(N^-1/2) (≈ 1.7/sqrt(N) measured); 4/sqrt(N) bound
    assert np.all(res["r"][~above] < 4 / np.sqrt(n))


def _log_counts(log):
    return np.bincount([int(s) for s in log.read_text().split()], minlength=8)


@pytest.mark.parametrize("where", ["serial", "cluster"])
def test_resume_after_crash_computes_missing_points_only(where, client, tmp_path):
    sched = "serial" if where == "serial" else client
    fn = functools.partial(st.flaky, marker=str(tmp_path / "crashed"), log=str(tmp_path / "log"))
    out = tmp_path / "r.h5"
    grid = {"i": np.arange(8)}
    with pytest.raises(SweepPointError, match=r"point 3 \{'i': 3\}") as info:
        sweep(fn, grid, scheduler=sched, out=out, seed=5)
    assert info.value.index == 3 and isinstance(info.value.__cause__, RuntimeError)
    with open_run(out) as run:
        assert run.status == "failed"
        done = set(np.flatnonzero(run.checkpoint["done"]).tolist())
    assert 3 not in done and {0, 1, 2} <= done  # serial: exactly 0..2; cluster: 0..2 at least
    first = _log_counts(tmp_path / "log")
    res = sweep(fn, grid, scheduler=sched, out=out, seed=5, resume=True)
    calls = _log_counts(tmp_path / "log") - first
    # the resumed run evaluated exactly the points that were not committed, each once
    np.testing.assert_array_equal(calls, [0 if i in done else 1 for i in range(8)])
    assert res.computed == 8 - len(done)
    # an uninterrupted run (the marker exists now, so nothing raises)
    ref = sweep(
        functools.partial(st.flaky, marker=str(tmp_path / "crashed"), log=str(tmp_path / "log2")),
        grid,
        scheduler="serial",
        seed=5,
    )
    for key in ("i", "x", "y"):
        np.testing.assert_array_equal(res[key], ref[key])  # same table as an uninterrupted run
    with open_run(out) as run:
        assert run.status == "complete"
    # resuming a finished sweep computes nothing and returns the same table
    again = sweep(fn, grid, scheduler=sched, out=out, seed=5, resume=True)
    assert again.computed == 0
    np.testing.assert_array_equal(again["x"], res["x"])


def test_resume_refuses_a_different_sweep(tmp_path):
    out = tmp_path / "d.h5"
    sweep(st.no_seed, GRID, scheduler="serial", out=out)
    with pytest.raises(ValueError, match="input grid_a differs"):
        sweep(
            st.no_seed, {"a": [1, 2, 4], "b": [0.5, 1.5]}, scheduler="serial", out=out, resume=True
        )
    with pytest.raises(ValueError, match="parameter fn is 'sweep_targets.no_seed'"):
        sweep(st.affine_noise, GRID, scheduler="serial", out=out, resume=True)
    with pytest.raises(ValueError, match="already exists"):
        sweep(st.no_seed, GRID, scheduler="serial", out=out)
    res = sweep(st.no_seed, GRID, scheduler="serial", out=out, overwrite=True)
    assert res.computed == 6


@pytest.mark.parametrize(
    "grid, exc, match",
    [
        ({}, ValueError, "grid is empty"),
        ([], ValueError, "empty list of points"),
        ({"a": []}, ValueError, "axis 'a' is empty"),
        ({"a": 1.0}, ValueError, "1-D sequence"),
        ({"a": [[1, 2], [3, 4]]}, ValueError, "1-D sequence"),
        ({"a": ["x", "y"]}, ValueError, "must hold numbers"),
        ({"a": [1.0, np.nan]}, ValueError, "finite"),
        ({"index": [1]}, ValueError, "reserved"),
        ({"not a name": [1]}, ValueError, "identifiers"),
        ([{"a": 1}, {"b": 2}], ValueError, "same names"),
        ([{"a": 1}, 3], TypeError, "grid point 1 must be a dict"),
        ("a", TypeError, "grid must be a dict"),
    ],
)
def test_bad_grids(grid, exc, match):
    with pytest.raises(exc, match=match):
        sweep(st.cheap, grid, scheduler="serial")


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="fn must be callable"):
        sweep(42, {"x": [1]}, scheduler="serial")
    with pytest.raises(ValueError, match=r"scheduler must be one of \[None, 'serial'"):
        sweep(st.cheap, {"x": [1]}, scheduler="threads")
    with pytest.raises(TypeError, match="scheduler must be None"):
        sweep(st.cheap, {"x": [1]}, scheduler=3)
    with pytest.raises(ValueError, match="resume=True needs out"):
        sweep(st.cheap, {"x": [1]}, scheduler="serial", resume=True)
    with pytest.raises(ValueError, match="either overwrite"):
        sweep(
            st.cheap,
            {"x": [1]},
            scheduler="serial",
            out=tmp_path / "a.h5",
            overwrite=True,
            resume=True,
        )
    with pytest.raises(ValueError, match="cannot resume"):
        sweep(st.cheap, {"x": [1]}, scheduler="serial", out=tmp_path / "none.h5", resume=True)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        sweep(st.cheap, {"x": [1]}, scheduler="serial", seed=-1)


@pytest.mark.parametrize(
    "fn, exc, match",
    [
        (st.bad_keys, ValueError, r"keys \['z'\] at point 2 \{'i': 2\}"),
        (st.bad_shape, ValueError, r"shape \(3,\) at point 2 \{'i': 2\}"),
        (st.not_a_dict, TypeError, r"non-empty dict.*point 0"),
        (st.clash, ValueError, "'i' clashes with a grid name"),
    ],
)
def test_bad_results_name_the_point(fn, exc, match, tmp_path):
    out = tmp_path / "bad.h5"
    with pytest.raises(exc, match=match):
        sweep(fn, {"i": np.arange(4)}, scheduler="serial", out=out)
    if fn is st.bad_keys:  # the two good points before the bad one stay committed
        with open_run(out) as run:
            assert run.status == "failed" and run.checkpoint["done"].sum() == 2


def test_fn_error_in_cluster_names_the_point(client, tmp_path):
    fn = functools.partial(st.flaky, marker=str(tmp_path / "m"), log=str(tmp_path / "log"))
    with pytest.raises(SweepPointError, match="point 3") as info:
        sweep(fn, {"i": np.arange(5)}, scheduler=client)
    assert info.value.point == {"i": 3}


def test_cli_sweep_kuramoto_and_resume(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    args = [
        "sweep",
        "kuramoto",
        "--K",
        "0.5:3:3",
        "--N",
        "300",
        "--t-end",
        "5",
        "--out",
        str(out),
        "--scheduler",
        "serial",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "3 points (3 computed now)" in text and "OA r" in text
    assert main([*args, "--resume"]) == 0
    assert "(0 computed now)" in capsys.readouterr().out
    with open_run(out) as run:
        np.testing.assert_allclose(run.params["grid_K"], [0.5, 1.75, 3.0])
    assert main(["sweep", "kuramoto", "--K", "1:2", "--out", str(tmp_path / "x.h5")]) == 2
    assert "start:stop:num" in capsys.readouterr().err


def test_sweep_stores_the_units_and_long_names_given(tmp_path):
    """``units``/``long_names`` of result and grid columns go to the file's datasets; the
    others keep "1" and the generic name; a name the sweep does not have is refused before a
    file is made."""
    import h5py

    cheap = st.cheap
    out = tmp_path / "u.h5"
    sweep(cheap, {"x": [1.0, 2.0]}, scheduler="serial", out=out,
          units={"y": "m2", "x": "m"}, long_names={"y": "area y = x^2"})  # fmt: skip
    with h5py.File(out, "r") as h5:
        pts = h5["points"]
        assert pts["y"].attrs["units"] == "m2" and pts["y"].attrs["long_name"] == "area y = x^2"
        assert pts["x"].attrs["units"] == "m" and pts["x"].attrs["long_name"] == "grid value of x"
        assert pts["index"].attrs["units"] == "1"
    bad = tmp_path / "bad.h5"
    with pytest.raises(ValueError, match="'t_lock', which is neither a grid name"):
        sweep(cheap, {"x": [1.0]}, scheduler="serial", out=bad, units={"t_lock": "s"})
    assert not bad.exists()
    with pytest.raises(TypeError, match="units must map column names to non-empty strings"):
        sweep(cheap, {"x": [1.0]}, scheduler="serial", units={"y": 1})


def test_sweep_command_names_its_columns(tmp_path):
    import h5py

    out = tmp_path / "s.h5"
    assert main(["sweep", "kuramoto", "--K", "1,2", "--N", "20", "--t-end", "1", "--dt", "0.1",
                 "--scheduler", "serial", "--out", str(out)]) == 0  # fmt: skip
    with h5py.File(out, "r") as h5:
        assert "order parameter" in h5["points/r"].attrs["long_name"]
        assert h5["points/K"].attrs["long_name"] == "coupling strength K"
