"""Sweeps on the run lifecycle: a kill at any write resumes to the uninterrupted table, a resume
refuses any other sweep (naming the difference), a cluster that loses every worker and an
address that is no Dask scheduler fail clearly and in bounded time."""

import contextlib
import functools
import importlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sweep_targets as st
from faults import every_kill_point

from nndyn_fast import SweepPointError, open_run, sweep
from nndyn_fast.cli import main

# the tests that start Dask clusters, and those that need a port nobody listens on, in turn
pytestmark = pytest.mark.xdist_group("dask")

sweep_mod = importlib.import_module("nndyn_fast.sweep")
GRID = {"a": [1, 2, 3], "b": [0.5, 1.5]}


def _assert_same(res, ref):
    assert res.names == ref.names and res.shape == ref.shape
    for key in (*ref.grid, *ref.results):
        assert res[key].dtype == ref[key].dtype
        np.testing.assert_array_equal(res[key], ref[key])


# -- crash consistency -----------------------------------------------------------------------
def test_every_kill_point_of_a_serial_sweep_resumes_bitwise(tmp_path, monkeypatch):
    """A kill (whole or torn write) at each write of a small sweep: the resume (or rerun, when
    no file was left) gives bitwise the uninterrupted table, in the file and returned."""
    # commits of two rows each (a row: index, a, b, s, v(3) = 7 float64/int64), none by time
    monkeypatch.setattr(sweep_mod, "COMMIT_BYTES", 2 * 7 * 8)
    monkeypatch.setattr(sweep_mod, "COMMIT_SECONDS", 1e9)
    kw = {"scheduler": "serial", "seed": 7}
    ref = sweep(st.affine_noise, GRID, **kw)  # in memory: no file involved
    out = tmp_path / "k.h5"
    got = {}

    def run():
        got["res"] = sweep(st.affine_noise, GRID, out=out, **kw)

    def resume():
        got["res"] = sweep(st.affine_noise, GRID, out=out, resume=True, **kw)

    def check():
        _assert_same(got.pop("res"), ref)
        with open_run(out) as f:
            assert f.status == "complete" and f.kind == "sweep"
            done = f.checkpoint["done"]
            assert done.dtype == np.bool_ and done.all()
            np.testing.assert_array_equal(f["points/index"][:], np.arange(6))
            for key in ("a", "b", "s", "v"):
                np.testing.assert_array_equal(f[f"points/{key}"][:], ref[key])

    for torn in (0.0, 0.5):
        seen = every_kill_point(out, run, resume, check, torn=torn)
        # creation (its record, the rename), 3 commits of 5 field writes and a record, the
        # closing record; a kill before the rename leaves no file at out
        assert seen["points"] == 2 + 3 * 6 + 1 and seen["reran"] == 2


def test_resume_computes_only_the_missing_points_and_checks_the_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_mod, "COMMIT_BYTES", 1)  # a commit per point
    out, marker = tmp_path / "r.h5", str(tmp_path / "m")
    fn = functools.partial(st.shifted, shift=0.25, marker=marker)
    grid = {"i": np.arange(6)}
    with pytest.raises(SweepPointError, match=r"point 3 \{'i': 3\}"):
        sweep(fn, grid, scheduler="serial", out=out, seed=1)
    with open_run(out) as f:
        assert f.status == "failed"
        np.testing.assert_array_equal(f.checkpoint["done"], [1, 1, 1, 0, 0, 0])
        offset = f["points/x"].id.get_offset()
    res = sweep(fn, grid, scheduler="serial", out=out, seed=1, resume=True)
    assert res.computed == 3
    ref = sweep(fn, grid, scheduler="serial", seed=1)
    _assert_same(res, ref)
    # a committed row changed on disk fails the checkpoint's checksum on resume
    with open(out, "r+b") as fh:
        fh.seek(offset + 8)  # row 1 of points/x
        b = fh.read(1)
        fh.seek(offset + 8)
        fh.write(bytes([b[0] ^ 1]))
    damaged = out.read_bytes()
    with pytest.raises(ValueError, match="fail their checksum"):
        sweep(fn, grid, scheduler="serial", out=out, seed=1, resume=True)
    assert out.read_bytes() == damaged  # left as it is


def _ulp(a, k=0):
    b = np.array(a, dtype=np.float64, copy=True)
    b[k] = np.nextafter(b[k], np.inf)
    return b


def test_resume_refuses_any_other_sweep_naming_the_difference(tmp_path, monkeypatch):
    out, marker = tmp_path / "d.h5", str(tmp_path / "m")
    fn = functools.partial(st.shifted, shift=0.25, marker=marker)
    grid = {"i": np.arange(6), "w": np.array([0.5, 1.5])}

    def target(i, w, seed, **kw):  # noqa: ARG001 - never called: refused first
        raise AssertionError("a refused resume must not evaluate any point")

    with pytest.raises(SweepPointError):
        sweep(fn, grid, scheduler="serial", out=out, seed=1)
    before = out.read_bytes()
    changes = [
        ("input grid_w", fn, {**grid, "w": _ulp(grid["w"], 1)}, {}),
        ("input grid_i", fn, {**grid, "i": np.arange(6.0)}, {}),  # same values, other dtype
        ("parameter grid_shape", fn, {**grid, "i": np.arange(7)}, {}),
        ("parameter grid_shape", fn, [{"i": i, "w": w} for i in range(6) for w in (0.5, 1.5)], {}),
        ("parameter grid_names", fn, {"w": grid["w"], "i": grid["i"]}, {}),
        ("parameter fixed_shift", functools.partial(fn, shift=np.nextafter(0.25, 1)), grid, {}),
        ("parameter fixed_marker", functools.partial(fn, marker=marker + "x"), grid, {}),
        ("parameter fn is 'sweep_targets.shifted", target, grid, {}),
        ("parameter seed is 1", fn, grid, {"seed": 2}),
    ]
    for name, f, g, kw in changes:
        with pytest.raises(ValueError, match=rf"cannot resume .*{name}\b"):
            sweep(f, g, scheduler="serial", out=out, resume=True, **{"seed": 1, **kw})
    # a default value of fn that changed since the sweep started (new code) is refused too
    with monkeypatch.context() as m:
        m.setattr(st.shifted, "__defaults__", (0.0, 2.0))
        with pytest.raises(ValueError, match=r"parameter default_scale is 1\.0 in the file"):
            sweep(fn, grid, scheduler="serial", out=out, resume=True, seed=1)
    assert out.read_bytes() == before  # every refusal left the file untouched
    res = sweep(fn, grid, scheduler="serial", out=out, resume=True, seed=1)
    assert res.computed == 12 - 6  # points with i < 3 were committed before the crash
    with open_run(out) as f:
        assert f.status == "complete"
        assert f.params["fn"] == "sweep_targets.shifted" and f.params["fixed_shift"] == 0.25


def test_resume_compares_a_callable_objects_state(tmp_path):
    out = tmp_path / "o.h5"
    sweep(st.Scaled(2.0), GRID, scheduler="serial", out=out)
    with pytest.raises(ValueError, match="parameter fn_self"):
        sweep(st.Scaled(3.0), GRID, scheduler="serial", out=out, resume=True)
    res = sweep(st.Scaled(2.0), GRID, scheduler="serial", out=out, resume=True)
    assert res.computed == 0
    np.testing.assert_array_equal(res["p"], 2.0 * res["a"] * res["b"])


def test_commits_are_batched(tmp_path, monkeypatch):
    """A sweep of 2000 cheap points syncs a handful of times, not once per point."""
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(sweep_mod, "COMMIT_SECONDS", 1e9)  # no commit by time in this test
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])
    values = np.linspace(0.0, 1.0, 2000)
    res = sweep(st.cheap, {"x": values}, scheduler="serial", out=tmp_path / "b.h5")
    np.testing.assert_array_equal(res["y"], values**2)
    assert len(syncs) <= 3  # one commit (rows, then its record) and the closing record


def test_an_interrupted_sweep_keeps_its_rows_and_says_how_many(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_mod, "COMMIT_SECONDS", 1e9)  # rows are committed on the way out
    out = tmp_path / "i.h5"
    fn = functools.partial(st.interrupt_at, at=3)
    with pytest.raises(KeyboardInterrupt) as info:
        sweep(fn, {"i": np.arange(6)}, scheduler="serial", out=out)
    assert info.value.run_path == str(out) and info.value.run_rows == {"points": 3}
    with open_run(out) as f:
        assert f.status == "interrupted"
        np.testing.assert_array_equal(f.checkpoint["done"], [1, 1, 1, 0, 0, 0])
        np.testing.assert_array_equal(f["points/y"][:3], [0.0, 1.0, 2.0])


# -- clusters that stop working --------------------------------------------------------------
distributed = pytest.importorskip("distributed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lone_scheduler():
    """A scheduler in this process (tcp on 127.0.0.1), no worker of its own."""
    cluster = distributed.LocalCluster(
        n_workers=0,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster
    finally:
        cluster.close()


def _start_workers(address, n):
    # the workers import the installed package: the source folder (where pytest runs) has no
    # nndyn_fast/kernels, which only the installation maps into the package
    root = Path(__file__).resolve().parents[1]
    paths = [p for p in sys.path if p and Path(p).resolve() != root]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *paths])}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--no-nanny"]
            + ["--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
            env=env,
            cwd=tempfile.gettempdir(),  # not the source folder, which `-m` would put first
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]


@pytest.mark.exclusive  # a bound on the wall-clock time
def test_a_cluster_that_loses_every_worker_fails_in_bounded_time(
    lone_scheduler, tmp_path, monkeypatch
):
    """Workers without a nanny (nothing restarts them) die at points >= 4: the sweep fails
    with SweepClusterError soon after the last one is gone, keeping the finished rows."""
    monkeypatch.setattr(sweep_mod, "NO_WORKERS_SECONDS", 3.0)
    address = lone_scheduler.scheduler_address
    procs = _start_workers(address, 2)
    out = tmp_path / "w.h5"
    try:
        with distributed.Client(address) as client:
            client.wait_for_workers(2, timeout=60)
            t0 = time.monotonic()
            fn = functools.partial(st.die_from, at=4)
            with pytest.raises(sweep_mod.SweepClusterError, match="no worker for") as info:
                sweep(fn, {"i": np.arange(8)}, scheduler=client, out=out)
            elapsed = time.monotonic() - t0
        # bound: 3 s without workers, after they die at their first point >= 4 (well under 1 s
        # each); 25 s leaves room for a loaded machine
        assert elapsed < sweep_mod.NO_WORKERS_SECONDS + 30.0
        assert "resume" in str(info.value)
        for p in procs:  # the workers are gone (how they exit is up to distributed)
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with open_run(out) as f:
        assert f.status == "failed" and "SweepClusterError" in f.message
        done = np.flatnonzero(f.checkpoint["done"])
        assert 1 <= done.size and set(done) <= {0, 1, 2, 3}  # rows so far, and only those
        np.testing.assert_array_equal(f["points/y"][:][done], done**2.0)


def test_a_cluster_that_dies_before_any_point_says_no_file_was_written(
    lone_scheduler, tmp_path, monkeypatch
):
    monkeypatch.setattr(sweep_mod, "NO_WORKERS_SECONDS", 2.0)
    procs = _start_workers(lone_scheduler.scheduler_address, 1)
    out = tmp_path / "none.h5"
    try:
        with distributed.Client(lone_scheduler.scheduler_address) as client:
            client.wait_for_workers(1, timeout=60)
            fn = functools.partial(st.die_from, at=0)
            with pytest.raises(sweep_mod.SweepClusterError, match="no run file was written"):
                sweep(fn, {"i": np.arange(3)}, scheduler=client, out=out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert not out.exists()
    assert not list(tmp_path.glob(".none.h5.*"))  # no partial file left either


@pytest.mark.exclusive  # a bound on the wall-clock time
def test_a_scheduler_that_goes_away_fails_the_sweep(lone_scheduler, tmp_path):
    procs = _start_workers(lone_scheduler.scheduler_address, 1)
    out, log = tmp_path / "g.h5", tmp_path / "log"
    try:
        with distributed.Client(lone_scheduler.scheduler_address) as client:
            client.wait_for_workers(1, timeout=60)

            def close_when_started():  # close the scheduler once two points have finished
                deadline = time.monotonic() + 60.0
                while time.monotonic() < deadline and (
                    not log.exists() or len(log.read_text().split()) < 2
                ):
                    time.sleep(0.05)
                lone_scheduler.close()

            closer = threading.Thread(target=close_when_started, daemon=True)
            closer.start()
            fn = functools.partial(st.slow_first, n=25, log=str(log))  # 0.5 s to 0.02 s a point
            t0 = time.monotonic()
            with pytest.raises(sweep_mod.SweepClusterError, match="resume the sweep"):
                sweep(fn, {"i": np.arange(24)}, scheduler=client, out=out)
            # the points alone take 6 s; the watch gives up after NO_WORKERS_SECONDS at most
            assert time.monotonic() - t0 < sweep_mod.NO_WORKERS_SECONDS + 15.0
            closer.join(timeout=90.0)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    with open_run(out) as f:
        assert f.status == "failed" and "SweepClusterError" in f.message
        done = np.flatnonzero(f.checkpoint["done"])
        np.testing.assert_array_equal(f["points/sq"][:][done], done**2.0)


def test_a_worker_that_dies_at_a_point_fails_that_point(tmp_path):
    """The default local cluster restarts a dead worker (its nanny); after
    ``allowed-failures`` deaths at a point the sweep fails, naming it, rows so far kept."""
    dask = pytest.importorskip("dask")
    out = tmp_path / "k.h5"
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        pytest.raises(SweepPointError, match=r"worker process running it died") as info,
    ):
        sweep(functools.partial(st.die_from, at=4), {"i": np.arange(8)}, n_workers=1, out=out)
    assert info.value.index >= 4 and f"point {info.value.index}" in str(info.value)
    with open_run(out) as f:
        assert f.status == "failed"
        done = np.flatnonzero(f.checkpoint["done"])
        assert set(done) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(f["points/y"][:][done], done**2.0)


@contextlib.contextmanager
def _server(reply: bytes | None):
    """A TCP server on 127.0.0.1 that accepts and sends ``reply`` (None: sends nothing)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    conns, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            conns.append(c)
            with contextlib.suppress(OSError):
                if reply is not None:
                    c.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for c in conns:
            c.close()
        srv.close()


@pytest.mark.exclusive  # a bound on the wall-clock time
def test_an_address_that_is_no_dask_scheduler_fails_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_mod, "CONNECT_SECONDS", 2.0)
    out = tmp_path / "n.h5"
    garbage = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hello</html>" * 20
    cases = [
        (_server(garbage), "not a Dask scheduler"),
        (_server(b"\x00\x00\x00\x00\x00\x00\x00\x10xyz"), "not a Dask scheduler"),
        (_server(None), "sent no Dask reply within 2 s"),
        (contextlib.nullcontext(f"tcp://127.0.0.1:{_free_port()}"), "cannot connect to"),
        (contextlib.nullcontext(f"127.0.0.1:{_free_port()}"), "Connection refused"),
    ]
    for server, match in cases:
        with server as address:
            t0 = time.monotonic()
            with pytest.raises(ValueError, match=match) as info:
                sweep(st.cheap, {"x": [1.0]}, scheduler=address, out=out)
            # the address is named; 2 s connect timeout, +3 s for a loaded machine
            assert address in str(info.value) and time.monotonic() - t0 < 5.0
        assert not out.exists()  # refused before any file is made
    with distributed.LocalCluster(  # a Dask server that is not a scheduler: one of its workers
        n_workers=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster:
        worker = next(iter(cluster.scheduler.workers))
        with pytest.raises(ValueError, match="it answered as a Dask Worker"):
            sweep(st.cheap, {"x": [1.0]}, scheduler=worker)
        res = sweep(st.cheap, {"x": [1.0, 2.0]}, scheduler=cluster.scheduler_address, out=out)
        np.testing.assert_array_equal(res["y"], [1.0, 4.0])


def test_cli_overwrite_resume_and_a_bad_scheduler(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    args = ["sweep", "kuramoto", "--K", "0.5,2", "--N", "50", "--t-end", "1", "--out", str(out)]
    assert main([*args, "--scheduler", "serial"]) == 0
    capsys.readouterr()
    assert main([*args, "--scheduler", "serial"]) == 2  # exists: needs --overwrite or --resume
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--scheduler", "serial", "--resume"]) == 0
    assert "(0 computed now)" in capsys.readouterr().out
    assert main([*args, "--scheduler", "serial", "--resume", "--N", "60"]) == 2
    assert "input grid_N differs" in capsys.readouterr().err
    assert main([*args, "--scheduler", "serial", "--overwrite"]) == 0
    assert "(2 computed now)" in capsys.readouterr().out
    port = _free_port()
    assert main([*args, "--resume", "--scheduler", f"tcp://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "cannot connect" in err
