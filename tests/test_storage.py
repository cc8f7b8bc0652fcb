"""The trajectory store: layout, refusal to overwrite, kill -9 and exact resume, blow-ups."""

import os
import shutil
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
        path,
        kind="demo",
        params={"N": 3, "name": "x", "w": np.eye(2)},
        series=series,
        rows={"trajectory": 8, "observables": 3},
        checkpoint={"state": np.zeros(3), "step": 0, "meta": {"k": 0}},
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
        assert run["trajectory/value"].shape == (8, 3)  # preallocated to the capacity
        run.verify()


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
        assert run.status == "interrupted" and 0 < run.rows["observables"] < 201
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


def _ulp(a):
    b = np.array(a, dtype=np.float64, copy=True)
    b.flat[0] = np.nextafter(b.flat[0], np.inf)
    return b


def test_resume_refuses_a_change_of_any_parameter_or_input(tmp_path):
    """Each parameter and each input array (one ulp off) is compared, and named."""
    model, theta = _model()
    out = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        _interrupt_after(model, theta, out, commits=2)
    before = out.read_bytes()
    rng = np.random.default_rng(0)
    omega, w = rng.normal(size=50), rng.random((50, 50))
    base = {"omega": omega, "coupling": w, "K": 2.0, "alpha": 0.1}
    run = {"t_end": 2.0, "dt": 0.01, "save_every": 3, "method": "rk4"}
    changes = [
        ("K", {"K": 2.0 + 1e-15}, {}),
        ("alpha", {"alpha": np.nextafter(0.1, 1)}, {}),
        ("omega", {"omega": _ulp(omega)}, {}),
        ("fingerprint", {"coupling": _ulp(w)}, {}),
        ("state0", {}, {"theta": _ulp(theta)}),
        ("dt", {}, {"dt": 0.02}),
        ("t_end", {}, {"t_end": 3.0}),
        ("method", {}, {"method": "euler"}),
        ("save_every", {}, {"save_every": 4}),
    ]
    for name, model_change, run_change in changes:
        m = Kuramoto(**{**base, **model_change})
        kw = {**run, **run_change}
        th = kw.pop("theta", theta)
        with pytest.raises(ValueError, match=rf"(parameter|input) {name}\b"):
            simulate(m, th, kw.pop("t_end"), kw.pop("dt"), out=out, resume=True, **kw)
    assert out.read_bytes() == before  # a refused resume leaves the file untouched
    m = Kuramoto(**base)
    simulate(m, theta, 2.0, 0.01, save_every=3, out=out, resume=True, chunk_steps=17)
    with open_run(out) as f:
        assert f.status == "complete"


@pytest.mark.slow
@pytest.mark.exclusive  # the kill must land mid-run (a margin of ~0.7 s)
def test_sigkill_leaves_readable_file_and_resume_is_exact(tmp_path):
    """A real SIGKILL of the command line mid-run; the file opens and resumes exactly."""
    # N = 600 dense with a frame every step: chunks of ~1 MiB hold 218 frames, so the 3000
    # steps make 14 chunks and the kill (after 2) lands with ~85% of the run still to go (on
    # an idle machine ~0.8 s, polled every 0.05 s). Every run is a process on one thread: it
    # does not stall on a busy machine, and results do not depend on the thread count.
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
        "1",
        "--quiet",
    ]
    killed = tmp_path / "killed.h5"
    code = "import sys; from nndyn_fast.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    # run from tmp_path so that the installed package is imported, not the source folder
    proc = subprocess.Popen(  # niced, as in _start_cli below
        [sys.executable, "-c", _NICE + code, *args, "--out", str(killed)], cwd=tmp_path, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if killed.exists() and _committed_chunks(killed) >= 2:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with open_run(killed) as run:  # readable after kill -9
        assert run.status == "interrupted"  # its record says running, but nobody holds it
        assert run.chunks >= 2
        n_obs = run.rows["observables"]
        assert 0 < n_obs < 3001
        assert np.isfinite(run.read("observables", "value")).all()
    full = tmp_path / "full.h5"
    for argv in (
        ["kuramoto", "--resume", "--out", str(killed), "--quiet"],
        [*args, "--out", str(full)],
    ):
        subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, check=True)
    with open_run(killed) as a, open_run(full) as b:
        assert a.status == "complete"
        for s in ("trajectory", "observables"):
            np.testing.assert_array_equal(a.read(s, "value"), b.read(s, "value"))


def _committed_chunks(path):
    try:
        with open_run(path) as f:  # readable while the writer holds it
            return f.chunks
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
        assert ds.shape == (21, n) and run.rows["trajectory"] == 21


# -- crash consistency ------------------------------------------------------------------------
def test_every_kill_point_of_a_network_run_resumes_bitwise(tmp_path):
    """A kill (with a torn write) at each write of a small run: resume gives the full run."""
    from faults import every_kill_point

    model, theta = _model(n=8)
    kw = {"save_every": 2, "chunk_steps": 5}
    ref = simulate(model, theta, 0.3, 0.01, **kw)
    out = tmp_path / "k.h5"

    def check():
        with open_run(out) as f:
            assert f.status == "complete"
            f.verify()
            np.testing.assert_array_equal(f.read("trajectory", "value"), ref.frames)
            np.testing.assert_array_equal(f.read("observables", "value"), ref.obs)
            np.testing.assert_array_equal(f.read("observables", "step"), np.arange(31))

    for torn in (0.0, 0.5):
        seen = every_kill_point(
            out,
            lambda: simulate(model, theta, 0.3, 0.01, out=out, **kw),
            lambda: simulate(model, theta, 0.3, 0.01, out=out, resume=True, **kw),
            check,
            torn=torn,
        )
        # a kill before the file appears (its first record, the link) leaves none at out
        assert seen["points"] > 20 and seen["reran"] == 2


def test_a_damaged_record_falls_back_and_damaged_rows_fail_verification(tmp_path):
    from nndyn_fast.storage import _HEAD

    model, theta = _model(n=8)
    out = tmp_path / "d.h5"
    simulate(model, theta, 0.2, 0.01, out=out, chunk_steps=5)
    with open_run(out) as f:
        chunks, rows = f.chunks, f.rows
        slots = {k: (f[f"commit/{k}"].id.get_offset(), f[f"commit/{k}"][()]) for k in "AB"}
        value_offset = f["observables/value"].id.get_offset()
    newest = max(slots, key=lambda k: _HEAD.unpack_from(slots[k][1].tobytes())[1])
    with open(out, "r+b") as fh:  # one flipped byte in the newest record's checkpoint
        fh.seek(slots[newest][0] + 200)
        b = fh.read(1)
        fh.seek(slots[newest][0] + 200)
        fh.write(bytes([b[0] ^ 1]))
    with open_run(out) as f:  # the older record (the last commit, before "complete") is valid
        assert f.chunks == chunks and f.rows == rows and f.status == "interrupted"
        f.verify()
    with open(out, "r+b") as fh:  # a flipped byte in a committed row
        fh.seek(value_offset + 8)
        b = fh.read(1)
        fh.seek(value_offset + 8)
        fh.write(bytes([b[0] ^ 1]))
    with open_run(out) as f, pytest.raises(ValueError, match="checksum"):
        f.verify()
    with open(out, "r+b") as fh:  # both records destroyed: a clear error, no crash
        for off, _raw in slots.values():
            fh.seek(off + 20)
            fh.write(b"\0" * 8)
    with pytest.raises(ValueError, match="no valid commit record"):
        open_run(out)


_CLI = "import sys; from nndyn_fast.cli import main; sys.exit(main(sys.argv[1:]))"
_SLOW_RUN = ["kuramoto", "--N", "400", "--t-end", "200", "--dt", "0.01", "--quiet"]


# A run the test signals once it has committed some chunks: at nice 10, so that on a busy
# machine (the suite's other worker, other processes) the polling test still sees each commit
# long before the run could finish (it would then have nothing left to interrupt); with SIGINT
# unblocked and at Python's default handler, whatever the test's process hands on to it (under
# the suite's two workers the run ignored SIGINT and ran to its end).
_NICE = (
    "import os, signal; os.nice(10); signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
)


def _start_cli(args, cwd, **kw):
    return subprocess.Popen(
        [sys.executable, "-c", _NICE + _CLI, *args], cwd=cwd, stderr=subprocess.PIPE, text=True,
        **kw,
    )  # fmt: skip


def _wait_for_commits(path, n, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and _committed_chunks(path) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach {n} commits")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_leave_an_interrupted_file_and_a_clean_exit(tmp_path, sig, code):
    out = tmp_path / "s.h5"
    proc = _start_cli([*_SLOW_RUN, "--out", str(out)], tmp_path)
    _wait_for_commits(out, 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert "Traceback" not in err and "--resume" in err and len(err.strip().splitlines()) == 1
    with open_run(out) as f:
        assert f.status == "interrupted" and f.rows["observables"] > 1
        f.verify()


def test_a_second_writer_is_refused_before_it_touches_the_file(tmp_path):
    out = tmp_path / "x.h5"
    proc = _start_cli([*_SLOW_RUN, "--out", str(out)], tmp_path)
    try:
        _wait_for_commits(out, 2, proc)
        size = out.stat().st_size
        from nndyn_fast.cli import main

        for extra in (["--overwrite"], ["--resume"]):
            assert main(["kuramoto", "--N", "50", "--out", str(out), "--quiet", *extra]) == 2
        assert out.stat().st_size == size
        with open_run(out) as f:  # readers are served while the run writes
            assert f.status == "running" and f.rows["observables"] > 1
            np.isfinite(f.read("observables", "value")).all()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 143


def test_file_size_limit_gives_a_clear_error_and_keeps_committed_rows(tmp_path):
    """RLIMIT_FSIZE below the file's size: creation is refused up front; a resume under the
    limit fails at the first write past it, naming the file and what was committed."""
    import resource

    out = tmp_path / "f.h5"
    args = ["kuramoto", "--N", "1000", "--t-end", "100", "--dt", "0.01", "--save-every", "1"]
    args += ["--quiet"]
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20)); "
    code = limit + _CLI

    def run(extra):
        return subprocess.run(
            [sys.executable, "-c", code, *args, "--out", str(out), *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = run([])
    assert r.returncode == 2 and "cannot create" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".f.h5.*"))
    # a full-size file made without the limit, interrupted early, then resumed under it
    proc = _start_cli([*args, "--out", str(out)], tmp_path)
    _wait_for_commits(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    with open_run(out) as f:
        kept = f.rows["observables"]
    assert out.stat().st_size > 4 << 20 > 0 and resource.RLIM_INFINITY
    r = run(["--resume"])
    assert r.returncode == 1, r.stderr
    assert "f.h5" in r.stderr and "committed" in r.stderr and "Traceback" not in r.stderr
    with open_run(out) as f:
        assert f.status != "complete" and f.rows["observables"] >= kept
        f.verify()
    from nndyn_fast.cli import main

    assert main(["kuramoto", "--resume", "--out", str(out), "--quiet"]) == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace for write injection")
def test_sigkill_at_pwrite_calls_of_the_command_line(tmp_path):
    """A real SIGKILL at sampled pwrite64 calls (HDF5's writes during creation included):
    every file that exists opens and resumes to the uninterrupted result."""
    args = ["kuramoto", "--N", "64", "--t-end", "2", "--dt", "0.01", "--save-every", "5"]
    args += ["--quiet"]
    ref = tmp_path / "ref.h5"
    py = [sys.executable, "-c", _CLI]
    subprocess.run([*py, *args, "--out", str(ref)], cwd=tmp_path, check=True)
    trace = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=pwrite64",
            "-o",
            str(tmp_path / "t"),
            *py,
            *args,
            "--out",
            str(tmp_path / "count.h5"),
        ],
        cwd=tmp_path,
        check=True,
    )
    assert trace.returncode == 0
    total = sum(1 for line in open(tmp_path / "t") if "pwrite64(" in line)
    with open_run(ref) as f:
        want = f.read("trajectory", "value")
    for n in sorted({1, 2, 3, total // 4, total // 2, total - 3, total - 1, total}):
        out = tmp_path / f"k{n}.h5"
        subprocess.run(
            [
                "strace",
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=pwrite64",
                "-e",
                f"inject=pwrite64:signal=KILL:when={n}",
                *py,
                *args,
                "--out",
                str(out),
            ],
            cwd=tmp_path,
        )
        if not out.exists():
            continue
        r = subprocess.run([*py, *args, "--out", str(out), "--resume"], cwd=tmp_path)
        assert r.returncode == 0
        with open_run(out) as f:
            assert f.status == "complete"
            np.testing.assert_array_equal(f.read("trajectory", "value"), want)


def test_commit_holds_signals_and_an_oversized_summary_keeps_the_status(tmp_path):
    """A SIGTERM raised during a commit is delivered after it (the closing record then pairs
    the committed rows with the committed state); a summary too large for the record is
    dropped so the closing status is still written."""
    from nndyn_fast.runs import RunInterrupted, start_run

    out = tmp_path / "h.h5"
    kw = {"kind": "demo", "params": {}, "series": {"s": {"x": ()}}, "rows": {"s": 4}}
    run = start_run(out, **kw, checkpoint={"x": np.zeros(1), "step": 0})
    real = storage_os_fdatasync = os.fdatasync

    def fdatasync(fd):  # the signal arrives in the middle of the commit
        os.kill(os.getpid(), signal.SIGTERM)
        return real(fd)

    with pytest.raises(RunInterrupted), run:
        run.append("s", x=np.ones(1))
        os.fdatasync = fdatasync
        try:
            run.commit(x=np.ones(1), step=1)
        finally:
            os.fdatasync = storage_os_fdatasync
        raise AssertionError("the signal should have been delivered right after the commit")
    with open_run(out) as f:
        assert f.status == "interrupted" and f.rows == {"s": 1} and f.checkpoint["step"] == 1
    run = start_run(out, **kw, checkpoint={}, resume=True)
    with run:
        run.summarize(big="x" * (1 << 20))
    with open_run(out) as f:
        assert f.status == "complete" and "summary_dropped" in f.summary


def test_a_file_created_meanwhile_by_another_process_is_never_replaced(tmp_path, monkeypatch):
    """Between the path check and the publication of a new run another process creates the
    same path: the new run is refused and the other file is left byte for byte."""
    import nndyn_fast.storage as storage

    out = tmp_path / "race.h5"
    other = b"another process's run"
    real = storage._remove_stale_partials

    def racing(p):
        out.write_bytes(other)  # appears after check_out_path said the path was free
        real(p)

    monkeypatch.setattr(storage, "_remove_stale_partials", racing)
    with pytest.raises(ValueError, match="created by another process"):
        TrajectoryWriter.create(out, kind="demo", params={}, series={"s": {"v": ()}},
                                rows={"s": 2}, checkpoint={"step": 0})  # fmt: skip
    assert out.read_bytes() == other
    assert not list(tmp_path.glob(".race.h5.*"))  # the unpublished file is gone
