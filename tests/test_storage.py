"""The trajectory store: layout, refusal to overwrite, kill -9 and exact resume, blow-ups."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from nndyn_fast import (
    FiringRate,
    Graphon,
    Kuramoto,
    NonFiniteStateError,
    TrajectoryWriter,
    open_run,
    simulate,
)


def _model(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return Kuramoto(rng.normal(size=n), rng.random((n, n)), 2.0, 0.1), rng.uniform(0, 6, n)


def test_writer_layout_params_and_lazy_reader(tmp_path):
    path = tmp_path / "w.h5"
    series = {"trajectory": {"time": (), "value": (3,)}, "observables": {"loss": ((), "f4")}}
    with TrajectoryWriter.create(
        path, kind="demo", params={"N": 3, "name": "x", "w": np.eye(2)}, series=series
    ) as w:
        for k in range(3):
            w.append("trajectory", time=np.array([k, k + 0.5]), value=np.full((2, 3), k))
            w.append("observables", loss=np.array([k], "f4"))
            w.commit(state=np.arange(3.0), step=k, meta={"k": k})
        w.append("trajectory", time=np.zeros(1), value=np.zeros((1, 3)))  # never committed
    with open_run(path) as run:
        assert run.status == "complete"
        assert run.attrs["kind"] == "demo" and "numba" in run.attrs["versions"]
        assert run.params["N"] == 3 and run.params["name"] == "x"
        np.testing.assert_array_equal(run.params["w"], np.eye(2))
        assert run.rows == {"trajectory": 6, "observables": 3}
        assert isinstance(run["trajectory/value"], h5py.Dataset)  # lazy
        np.testing.assert_array_equal(run.read("trajectory", "time"), [0, 0.5, 1, 1.5, 2, 2.5])
        assert run["observables/loss"].dtype == np.float32
        assert run.checkpoint["step"] == 2 and run.checkpoint["meta"] == {"k": 2}


def test_refuses_overwrite_and_unwritable_paths(tmp_path):
    model, theta = _model()
    out = tmp_path / "a.h5"
    simulate(model, theta, 0.1, 0.01, out=out)
    with pytest.raises(ValueError, match="already exists"):
        simulate(model, theta, 0.1, 0.01, out=out)
    simulate(model, theta, 0.1, 0.01, out=out, overwrite=True)
    with pytest.raises(ValueError, match="does not exist"):
        simulate(model, theta, 0.1, 0.01, out=tmp_path / "missing" / "b.h5")
    with pytest.raises(ValueError, match="cannot create"):
        simulate(model, theta, 0.1, 0.01, out="/proc/nndyn_fast_test.h5")  # even root cannot
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("root can write into read-only folders")
        with pytest.raises(ValueError, match="not writable"):
            simulate(model, theta, 0.1, 0.01, out=ro / "c.h5")
    finally:
        ro.chmod(0o700)


def test_streamed_run_equals_in_memory_run(tmp_path):
    model, theta = _model()
    mem = simulate(model, theta, 1.0, 0.01, save_every=7)
    out = simulate(model, theta, 1.0, 0.01, save_every=7, out=tmp_path / "s.h5", chunk_steps=13)
    np.testing.assert_array_equal(out.state, mem.state)
    with open_run(out.path) as run:
        np.testing.assert_array_equal(run.read("trajectory", "value"), mem.frames)
        np.testing.assert_array_equal(run.read("trajectory", "time"), mem.frame_t)
        np.testing.assert_array_equal(run.read("observables", "value"), mem.obs)
        assert run.params["K"] == 2.0 and run.params["save_every"] == 7


def test_resume_after_interruption_reproduces_uninterrupted_run(tmp_path):
    model, theta = _model()
    full = simulate(model, theta, 2.0, 0.01, save_every=3, out=tmp_path / "full.h5", chunk_steps=17)
    part = tmp_path / "part.h5"
    with pytest.raises(KeyboardInterrupt):
        _interrupt_after(model, theta, part, commits=4)
    with open_run(part) as run:
        assert run.status == "failed" and 0 < run.rows["observables"] < 201
    resumed = simulate(model, theta, 2.0, 0.01, save_every=3, out=part, resume=True, chunk_steps=17)
    np.testing.assert_array_equal(resumed.state, full.state)
    with open_run(part) as a, open_run(tmp_path / "full.h5") as b:
        for s in ("trajectory", "observables"):
            np.testing.assert_array_equal(a.read(s, "value"), b.read(s, "value"))
            np.testing.assert_array_equal(a.read(s, "step"), b.read(s, "step"))
        assert a.status == "complete"


def _interrupt_after(model, theta, path, commits):
    """Run until ``commits`` chunks are committed, then raise KeyboardInterrupt (a Ctrl-C)."""
    original = TrajectoryWriter.commit
    count = {"n": 0}

    def commit(self, **kw):
        original(self, **kw)
        count["n"] += 1
        if count["n"] == commits:
            raise KeyboardInterrupt

    TrajectoryWriter.commit = commit
    try:
        simulate(model, theta, 2.0, 0.01, save_every=3, out=path, chunk_steps=17)
    finally:
        TrajectoryWriter.commit = original


def test_resume_refuses_a_different_model(tmp_path):
    model, theta = _model()
    out = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        _interrupt_after(model, theta, out, commits=2)
    other, _ = _model(seed=1)
    with pytest.raises(ValueError, match="fingerprint"):
        simulate(other, theta, 2.0, 0.01, save_every=3, out=out, resume=True)


@pytest.mark.slow
def test_sigkill_leaves_readable_file_and_resume_is_exact(tmp_path):
    """A real SIGKILL of the command line mid-run; the file opens and resumes exactly."""
    args = [
        "kuramoto",
        "--N",
        "600",
        "--graph",
        "ring",
        "--r",
        "0.2",
        "--representation",
        "dense",
        "--t-end",
        "30",
        "--dt",
        "0.01",
        "--save-every",
        "5",
        "--quiet",
    ]
    killed = tmp_path / "killed.h5"
    code = "import sys; from nndyn_fast.cli import main; sys.exit(main(sys.argv[1:]))"
    # run from tmp_path so that the installed package is imported, not the source folder
    proc = subprocess.Popen([sys.executable, "-c", code, *args, "--out", str(killed)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if killed.exists() and _committed_chunks(killed) >= 2:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with open_run(killed) as run:  # readable after kill -9
        assert run.status == "running"
        n_obs = run.rows["observables"]
        assert 0 < n_obs < 3001
        assert np.isfinite(run.read("observables", "value")).all()
    from nndyn_fast.cli import main

    assert main(["kuramoto", "--resume", "--out", str(killed), "--quiet"]) == 0
    full = tmp_path / "full.h5"
    assert main([*args, "--out", str(full)]) == 0
    with open_run(killed) as a, open_run(full) as b:
        assert a.status == "complete"
        for s in ("trajectory", "observables"):
            np.testing.assert_array_equal(a.read(s, "value"), b.read(s, "value"))


def _committed_chunks(path):
    try:
        with h5py.File(path, "r", locking=False) as f:  # the writer holds the lock
            import json

            return json.loads(f.attrs["commit"])["chunks"]
    except (OSError, KeyError, ValueError):
        return 0


def test_blow_up_names_the_step_and_keeps_good_frames(tmp_path):
    n = 20
    model = FiringRate(np.ones(n), np.ones((n, n)), 2000.0, activation="identity")
    out = tmp_path / "boom.h5"
    with pytest.raises(NonFiniteStateError, match=r"non-finite at step \d+") as info:
        simulate(model, np.ones(n), 100.0, 0.1, out=out, chunk_steps=10)
    step = info.value.step
    # growth rate K - 1 ≈ 2000 per unit time: overflow after ~ 709 / 2000 / (rk4 gain) time
    assert 1 < step < 1000
    with open_run(out) as run:
        assert run.status == "failed" and "non-finite" in run.attrs["message"]
        vals = run.read("trajectory", "value")
        assert len(vals) == step and np.isfinite(vals).all()
        assert run.read("trajectory", "step")[-1] == step - 1


def test_matrix_free_run_streams_with_bounded_chunks(tmp_path):
    n = 20000
    rng = np.random.default_rng(0)
    model = Kuramoto(rng.standard_cauchy(n) * 0.1, Graphon.ring(0.1), 1.0)
    out = simulate(model, rng.uniform(0, 6, n), 1.0, 0.05, out=tmp_path / "big.h5")
    with open_run(out.path) as run:
        ds = run["trajectory/value"]
        assert ds.shape == (21, n)
        assert ds.chunks[0] * ds.chunks[1] * 8 <= 1 << 20  # ~1 MiB chunks
