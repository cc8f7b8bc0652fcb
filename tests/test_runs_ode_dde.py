"""Run files of ``odeint(out=)`` and ``ddeint(out=)``: a kill at every write resumes bitwise,
a resume refuses any changed parameter or input (naming it), SIGTERM of ``nndyn ode`` /
``nndyn dde`` leaves an interrupted file that ``--resume`` completes, and a blow-up after the
first chunk names the frames the file keeps."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from faults import every_kill_point
from numba import njit

from nndyn_fast import (
    LinearDDE,
    MackeyGlass,
    NeuralDDE,
    NeuralODE,
    NonFiniteStateError,
    TrajectoryWriter,
    ddeint,
    odeint,
    open_run,
)


# -- helpers ----------------------------------------------------------------------------------
def _ulp(a, index=0):
    """``a`` with one element moved up by one ulp."""
    b = np.array(a, dtype=np.float64, copy=True)
    b.flat[index] = np.nextafter(b.flat[index], np.inf)
    return b


def _interrupt_after(commits, fn, *args, **kw):
    """Call ``fn`` and raise KeyboardInterrupt (a Ctrl-C) once ``commits`` chunks are committed."""
    original = TrajectoryWriter.commit
    count = {"n": 0}

    def commit(self, **ck):
        original(self, **ck)
        count["n"] += 1
        if count["n"] == commits:
            raise KeyboardInterrupt

    TrajectoryWriter.commit = commit
    try:
        with pytest.raises(KeyboardInterrupt):
            fn(*args, **kw)
    finally:
        TrajectoryWriter.commit = original


def _same_file(path, ref_path, ref_solution, solution):
    with open_run(path) as a, open_run(ref_path) as b:
        assert a.status == "complete"
        a.verify()
        assert a.rows == b.rows
        for field in ("time", "value"):
            np.testing.assert_array_equal(a.read("trajectory", field), b.read("trajectory", field))
        assert a.summary == b.summary
    np.testing.assert_array_equal(
        solution.stats["per_trajectory"], ref_solution.stats["per_trajectory"]
    )


def _kill_everywhere(tmp_path, fn, *args, **kw):
    """Kill ``fn(*args, out=..., **kw)`` at each of its writes (whole and torn), resume, and
    compare with an uninterrupted run: file rows, summary and returned counts bitwise."""
    ref_path = tmp_path / "ref.h5"
    ref = fn(*args, out=ref_path, **kw)
    out = tmp_path / "k.h5"
    last = {}

    def run():
        last["sol"] = fn(*args, out=out, **kw)

    def resume():
        last["sol"] = fn(*args, out=out, resume=True, **kw)

    def check():
        _same_file(out, ref_path, ref, last.pop("sol"))

    for torn in (0.0, 0.5):
        seen = every_kill_point(out, run, resume, check, torn=torn)
        # a kill before the file appears (its first record, the rename) leaves none at out;
        # at least three chunks of three writes each (two fields and the record)
        assert seen["reran"] == 2 and seen["points"] >= 2 + 3 * 3 + 1
    return ref


def _refusals(out, call, changes):
    """Each changed call is refused naming the parameter or input; the file is untouched."""
    before = out.read_bytes()
    for name, kw in changes:
        pattern = rf"(parameter|input) {re.escape(name)}( |$)"
        with pytest.raises(ValueError, match=pattern):
            call(**kw)
    assert out.read_bytes() == before


# -- odeint -----------------------------------------------------------------------------------
def _ode_case(layers=1):
    model = NeuralODE.random(2, 3, scale=2.0, layers=layers, seed=3)
    X = np.random.default_rng(1).standard_normal((3, 2))
    return model, X, np.linspace(0.0, 1.0, 9)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_every_kill_point_of_an_ode_run_resumes_bitwise(tmp_path, method):
    model, X, t = _ode_case(layers=2)
    kw = {"method": method, "dt": 0.05 if method == "rk4" else None, "chunk_frames": 2}
    ref = _kill_everywhere(tmp_path, odeint, model, X, t, **kw)
    with open_run(ref.path) as f:
        y = f.read("trajectory", "value")
    if method == "rk4":  # fixed steps per output interval: chunks change nothing
        np.testing.assert_array_equal(y, odeint(model, X, t, **kw).y)
    else:  # chunk ends are stepped onto: equal to the tolerance (rtol 1e-6)
        np.testing.assert_allclose(y, odeint(model, X, t, **kw).y, rtol=0, atol=1e-5)


def test_ode_resume_refuses_any_changed_parameter_or_input(tmp_path):
    model, X, t = _ode_case(layers=2)
    out = tmp_path / "r.h5"
    kw = {"method": "rk4", "dt": 0.05, "chunk_frames": 2, "rtol": 1e-6, "atol": 1e-9}
    _interrupt_after(2, odeint, model, X, t, out=out, **kw)

    def call(model=model, x0=X, t=t, **change):
        return odeint(model, x0, t, out=out, resume=True, **{**kw, **change})

    W, A, b = model.W, model.A, model.b
    changes = [
        ("method", {"method": "euler"}),
        ("dt", {"dt": np.nextafter(0.05, 1.0)}),
        ("rtol", {"rtol": np.nextafter(1e-6, 1.0)}),
        ("atol", {"atol": np.nextafter(1e-9, 1.0)}),
        ("max_steps", {"max_steps": 999}),
        ("chunk_frames", {"chunk_frames": 3}),
        ("variational", {"variational": True}),
        ("x0", {"x0": _ulp(X, 4)}),
        ("t", {"t": _ulp(t, 3)}),
        ("W", {"model": NeuralODE(_ulp(W), A, b, t_layers=model.t_layers)}),
        ("A", {"model": NeuralODE(W, _ulp(A, 5), b, t_layers=model.t_layers)}),
        ("b", {"model": NeuralODE(W, A, _ulp(b), t_layers=model.t_layers)}),
        ("t_stops", {"model": NeuralODE(W, A, b, t_layers=_ulp(model.t_layers, 1))}),
        ("activation", {"model": NeuralODE(W, A, b, "relu", t_layers=model.t_layers)}),
    ]
    _refusals(out, call, changes)
    sol = call()
    with open_run(out) as f:
        assert f.status == "complete"
    np.testing.assert_array_equal(sol.stats["per_trajectory"], odeint(model, X, t, **kw).stats[
        "per_trajectory"])  # fmt: skip


def _jit_from_source(source, name):
    """A jitted function made from ``source``: same name, different code for each source."""
    ns = {"np": np}
    exec(compile(source, f"<{name}>", "exec"), ns)
    return njit(ns[name])


_DECAY = "def decay(t, x, args, out):\n    out[:] = {c} * args[0] * x + args[1][: x.size]\n"


def test_ode_resume_identifies_a_user_field_by_its_code_and_args(tmp_path):
    f = _jit_from_source(_DECAY.format(c="-1.0"), "decay")
    g = _jit_from_source(_DECAY.format(c="-2.0"), "decay")  # same name, other code
    X, t = np.ones((2, 2)), np.linspace(0.0, 1.0, 7)
    forcing = np.array([0.5, 0.25])
    args = (1.5, forcing)
    out = tmp_path / "u.h5"
    kw = {"method": "rk4", "dt": 0.1, "chunk_frames": 2}
    _interrupt_after(1, odeint, f, X, t, args=args, out=out, **kw)

    def call(fn=f, args=args):
        return odeint(fn, X, t, args=args, out=out, resume=True, **kw)

    @njit
    def other(t, x, args, out):
        out[:] = -args[0] * x + args[1][: x.size]

    changes = [
        ("field_code", {"fn": g}),
        ("field", {"fn": other}),
        ("args", {"args": (np.nextafter(1.5, 2.0), forcing)}),
        ("args", {"args": (np.float32(1.5), forcing)}),  # type of a scalar: compiled anew
        ("args[1]", {"args": (1.5, _ulp(forcing, 1))}),
    ]
    _refusals(out, call, changes)
    call()
    with open_run(out) as run:
        y = run.read("trajectory", "value")
    # independent reference: x' = -1.5 x + c, x(0) = 1 has x = c/1.5 + (1 - c/1.5) e^(-1.5 t);
    # RK4 at h = 0.1, error ~ (1.5 h)^4 / 120 * t per step count: below 1e-5
    c = forcing / 1.5
    exact = c + (1.0 - c) * np.exp(-1.5 * t)[:, None]
    np.testing.assert_allclose(y[:, 0], exact, rtol=0, atol=1e-5)


def test_ode_blow_up_after_the_first_chunk_names_the_frames_the_file_keeps(tmp_path):
    """x' = 40 x from 1e250 with RK4 (h = 0.01): it leaves the float64 range in the 7th chunk;
    the error and the file's status name the number of frames the file keeps."""
    model = NeuralODE.inner(40.0 * np.eye(1), np.zeros(1), "identity")
    x0 = np.array([[1e250], [1.0]])  # the second member never overflows
    t = np.linspace(0.0, 5.0, 51)
    out = tmp_path / "boom.h5"
    with pytest.raises(NonFiniteStateError) as info:
        odeint(model, x0, t, method="rk4", dt=0.01, out=out, chunk_frames=5)
    err = info.value
    with open_run(out) as run:
        assert run.status == "failed"
        rows = run.rows["trajectory"]
        y = run.read("trajectory", "value")
        assert f"keeps {rows} output frame(s)" in run.message
    assert f"keeps {rows} output frame(s)" in str(err) and "trajectory 0" in str(err)
    assert rows > 5  # after the first chunk
    # independent checks. RK4 multiplies the state by R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24
    # (z = 0.4) per step, so x(t) leaves the float64 range at t* = h ln(DBL_MAX/1e250) / ln R;
    # its stage values (up to ~60 x) do so ln(60) / ln R = 11 steps earlier: the failing step
    # starts in [t* - 0.12, t*], and the file keeps every frame before it
    R = 1 + 0.4 + 0.4**2 / 2 + 0.4**3 / 6 + 0.4**4 / 24
    t_star = 0.01 * np.log(np.finfo(float).max / 1e250) / np.log(R)
    assert t_star - 0.12 <= err.time <= t_star
    assert rows == np.count_nonzero(t <= err.time + 1e-12)
    steps = 10 * np.arange(rows)
    # rounding: a few ulps per step over <= 340 steps
    np.testing.assert_allclose(y[:, 0, 0], 1e250 * R**steps, rtol=1e-12)
    np.testing.assert_allclose(y[:, 1, 0], R**steps, rtol=1e-12)
    # a resume repeats the failing chunk from its start: the same error, the file unchanged
    with pytest.raises(NonFiniteStateError) as again:
        odeint(model, x0, t, method="rk4", dt=0.01, out=out, chunk_frames=5, resume=True)
    assert str(again.value) == str(err)
    with open_run(out) as run:
        assert run.status == "failed" and run.rows["trajectory"] == rows
        np.testing.assert_array_equal(run.read("trajectory", "value"), y)


def test_dde_blow_up_after_the_first_chunk_names_the_frames_the_file_keeps(tmp_path):
    """x' = 40 x + 0 x(t - 1) from 1e250 with RK4 (dt = 0.01), as for odeint above."""
    x0 = np.array([[1e250], [1.0]])
    t = np.linspace(0.0, 5.0, 51)
    out = tmp_path / "boom.h5"
    kw = {"delays": 1.0, "method": "rk4", "dt": 0.01, "chunk_frames": 5}
    with pytest.raises(NonFiniteStateError) as info:
        ddeint(LinearDDE(40.0, 0.0), x0, t, out=out, **kw)
    err = info.value
    with open_run(out) as run:
        assert run.status == "failed"
        rows = run.rows["trajectory"]
        y = run.read("trajectory", "value")
        assert f"keeps {rows} output frame(s)" in run.message
    assert f"keeps {rows} output frame(s)" in str(err) and "trajectory 0" in str(err)
    assert rows > 5
    # the time named is the last finite step (stage values ~60 x overflow first, as above)
    R = 1 + 0.4 + 0.4**2 / 2 + 0.4**3 / 6 + 0.4**4 / 24
    t_star = 0.01 * np.log(np.finfo(float).max / 1e250) / np.log(R)
    assert t_star - 0.15 <= err.time <= t_star
    assert rows == np.count_nonzero(t <= err.time + 1e-12)
    steps = 10 * np.arange(rows)
    np.testing.assert_allclose(y[:, 0, 0], 1e250 * R**steps, rtol=1e-12)  # rounding
    np.testing.assert_allclose(y[:, 1, 0], R**steps, rtol=1e-12)
    with pytest.raises(NonFiniteStateError) as again:
        ddeint(LinearDDE(40.0, 0.0), x0, t, out=out, resume=True, **kw)
    assert str(again.value) == str(err)
    with open_run(out) as run:
        assert run.status == "failed" and run.rows["trajectory"] == rows


def test_resume_without_out_and_bad_stream_options_are_refused(tmp_path):
    model, X, t = _ode_case()
    mg = (MackeyGlass(), np.array([1.2]), t)
    with pytest.raises(ValueError, match="resume=True needs out"):
        odeint(model, X, t, resume=True)
    with pytest.raises(ValueError, match="resume=True needs out"):
        ddeint(*mg, delays=1.0, resume=True)
    out = tmp_path / "x.h5"
    with pytest.raises(ValueError, match="chunk_frames must be an integer >= 1, got 0"):
        odeint(model, X, t, out=out, chunk_frames=0)
    with pytest.raises(ValueError, match="chunk_frames must be an integer >= 1, got 0"):
        ddeint(*mg, delays=1.0, out=out, chunk_frames=0)
    odeint(model, X, t, out=out)
    with pytest.raises(ValueError, match="overwrite or resume, not both"):
        odeint(model, X, t, out=out, resume=True, overwrite=True)
    with pytest.raises(ValueError, match="exists"):
        odeint(model, X, t, out=out)
    with pytest.raises(ValueError, match="holds a 'ode' run, not 'dde'"):
        ddeint(*mg, delays=1.0, out=out, resume=True)


# -- ddeint -----------------------------------------------------------------------------------
_MG_HIST = np.array([[1.2], [0.5]])
_MG_T = np.linspace(0.0, 40.0, 21)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_every_kill_point_of_a_dde_run_resumes_bitwise(tmp_path, method):
    # dopri5 at rtol 1e-10 keeps ~400 steps in the delay window: its ring grows from 256 to 512
    # nodes mid-run, and a resume must grow it at the same step
    kw = {"delays": 17.0, "method": method, "chunk_frames": 5}
    kw.update({"dt": 0.05} if method == "rk4" else {"rtol": 1e-10, "atol": 1e-12})
    ref = _kill_everywhere(tmp_path, ddeint, MackeyGlass(), _MG_HIST, _MG_T, **kw)
    mem = ddeint(MackeyGlass(), _MG_HIST, _MG_T, **kw)
    if method == "dopri5":
        assert mem.stats["ring_capacity"] == 512 and ref.stats["ring_capacity"] == 512
    with open_run(ref.path) as f:
        y = f.read("trajectory", "value")
    # chunk ends (multiples of 10) lie on the RK4 grid: the same steps; dopri5 steps onto them:
    # agreement to the tolerance
    np.testing.assert_allclose(y, mem.y, rtol=0, atol=1e-12 if method == "rk4" else 1e-8)


def test_dde_resume_refuses_any_changed_parameter_or_input(tmp_path):
    out = tmp_path / "mg.h5"
    kw = {"delays": 17.0, "method": "rk4", "dt": 0.05, "chunk_frames": 5, "rtol": 1e-6,
          "atol": 1e-9, "hmax": 40.0}  # fmt: skip
    _interrupt_after(2, ddeint, MackeyGlass(), _MG_HIST, _MG_T, out=out, **kw)

    def call(model=None, history=_MG_HIST, t=_MG_T, **change):
        model = MackeyGlass() if model is None else model
        return ddeint(model, history, t, out=out, resume=True, **{**kw, **change})

    changes = [
        ("method", {"method": "dopri5"}),
        ("dt", {"dt": np.nextafter(0.05, 1.0)}),
        ("rtol", {"rtol": np.nextafter(1e-6, 1.0)}),
        ("atol", {"atol": np.nextafter(1e-9, 1.0)}),
        ("hmax", {"hmax": np.nextafter(40.0, 41.0)}),
        ("chunk_frames", {"chunk_frames": 4}),
        ("delays", {"delays": np.nextafter(17.0, 18.0)}),
        ("t", {"t": _ulp(_MG_T, 7)}),
        ("history", {"history": _ulp(_MG_HIST, 1)}),
        ("beta", {"model": MackeyGlass(beta=np.nextafter(0.2, 1.0))}),
        ("gamma", {"model": MackeyGlass(gamma=np.nextafter(0.1, 1.0))}),
        ("n", {"model": MackeyGlass(n=9.0)}),
        ("model", {"model": LinearDDE(-1.0, -1.0)}),
        ("history", {"history": (np.array([-17.0, 0.0]), np.ones((2, 2, 1)))}),
    ]
    _refusals(out, call, changes)
    call()
    with open_run(out) as f:
        assert f.status == "complete"


def test_dde_resume_compares_model_weights_and_sampled_history(tmp_path):
    rng = np.random.default_rng(2)
    W, A, B, b = rng.normal(size=(1, 3)), rng.normal(size=(3, 1)), rng.normal(size=(3, 1)), \
        rng.normal(size=3)  # fmt: skip
    model = NeuralDDE(W, A, B, b)
    ts = np.linspace(-1.0, 0.0, 5)
    hist = (ts, np.cos(ts)[:, None], -np.sin(ts)[:, None])
    t = np.linspace(0.0, 2.0, 9)
    out = tmp_path / "n.h5"
    kw = {"delays": 1.0, "method": "dopri5", "chunk_frames": 2}
    _interrupt_after(1, ddeint, model, hist, t, out=out, **kw)

    def call(model=model, history=hist):
        return ddeint(model, history, t, out=out, resume=True, **kw)

    changes = [
        ("W", {"model": NeuralDDE(_ulp(W), A, B, b)}),
        ("A", {"model": NeuralDDE(W, _ulp(A), B, b)}),
        ("B", {"model": NeuralDDE(W, A, _ulp(B, 2), b)}),
        ("b", {"model": NeuralDDE(W, A, B, _ulp(b))}),
        ("t_layers", {"model": NeuralDDE(W, A, B, b, T=np.nextafter(1.0, 2.0))}),
        ("activation", {"model": NeuralDDE(W, A, B, b, "relu")}),
        ("history_times", {"history": (_ulp(ts, 2), *hist[1:])}),
        ("history_values", {"history": (ts, _ulp(hist[1], 3), hist[2])}),
        ("history_slopes", {"history": (ts, hist[1], _ulp(hist[2]))}),
    ]
    _refusals(out, call, changes)
    call()


_DDE_FIELD = "def field(t, x, xd, args, out):\n    out[0] = {c} * args[0] * xd[0, 0]\n"
_DDE_HIST = "def phi(t, p):\n    return np.array([p[0] + {c} * t])\n"


def test_dde_resume_identifies_user_functions_by_their_code(tmp_path):
    f = _jit_from_source(_DDE_FIELD.format(c="-1.0"), "field")
    f2 = _jit_from_source(_DDE_FIELD.format(c="-1.5"), "field")
    phi = _jit_from_source(_DDE_HIST.format(c="0.0"), "phi")
    phi2 = _jit_from_source(_DDE_HIST.format(c="1.0"), "phi")
    t = np.linspace(0.0, 2.0, 9)
    p = np.array([[1.0], [0.5]])
    out = tmp_path / "u.h5"
    kw = {"delays": 1.0, "method": "rk4", "dt": 0.125, "chunk_frames": 2}
    _interrupt_after(1, ddeint, f, phi, t, args=(1.0,), history_args=p, out=out, **kw)

    def call(fn=f, history=phi, args=(1.0,), history_args=p):
        return ddeint(fn, history, t, args=args, history_args=history_args, out=out,
                      resume=True, **kw)  # fmt: skip

    changes = [
        ("model_code", {"fn": f2}),
        ("history_code", {"history": phi2}),
        ("args", {"args": (np.nextafter(1.0, 2.0),)}),
        ("history_args", {"history_args": _ulp(p, 1)}),
    ]
    _refusals(out, call, changes)
    call()
    with open_run(out) as run:
        x = run.read("trajectory", "value")[:, :, 0]
    # x' = -x(t - 1), x = p on [-1, 0]: the method-of-steps polynomials, x = p (1 - t) on
    # [0, 1] and p (1 - t + (t - 1)^2 / 2) on [1, 2] (RK4 on a grid through the kinks: exact
    # for these cubics up to rounding)
    exact = np.where(t <= 1, 1 - t, 1 - t + (t - 1) ** 2 / 2)
    np.testing.assert_allclose(x, np.outer(exact, p[:, 0]), rtol=0, atol=1e-13)


# -- the command line -------------------------------------------------------------------------
_CLI = "import sys; from nndyn_fast.cli import main; sys.exit(main(sys.argv[1:]))"
_SLOW_ODE = ["ode", "--batch", "8", "--d", "8", "--hidden", "16", "--t-end", "40", "--frames",
             "8001", "--method", "rk4", "--dt", "0.0005", "--chunk-frames", "50"]  # fmt: skip
_SLOW_DDE = ["dde", "--model", "mackey-glass", "--method", "rk4", "--dt", "0.002", "--t-end",
             "4000", "--frames", "4001", "--chunk-frames", "50"]  # fmt: skip


def _chunks(path):
    try:
        with open_run(path) as f:
            return f.chunks
    except (OSError, KeyError, ValueError):
        return 0


@pytest.mark.parametrize("args", [_SLOW_ODE, _SLOW_DDE], ids=["ode", "dde"])
def test_sigterm_of_the_command_leaves_an_interrupted_file_that_resume_completes(tmp_path, args):
    from nndyn_fast.cli import main

    out = tmp_path / "s.h5"
    # run from tmp_path so that the installed package is imported, not the source folder
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, *args, "--out", str(out)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and _chunks(out) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "--resume" in err and len(err.strip().splitlines()) == 1
    with open_run(out) as f:
        assert f.status == "interrupted"
        f.verify()
        assert 0 < f.rows["trajectory"] < int(args[args.index("--frames") + 1])
    assert main([*args, "--out", str(out), "--resume"]) == 0
    full = tmp_path / "full.h5"
    assert main([*args, "--out", str(full)]) == 0
    with open_run(out) as a, open_run(full) as b:
        assert a.status == "complete" and a.rows == b.rows
        for field in ("time", "value"):
            np.testing.assert_array_equal(a.read("trajectory", field), b.read("trajectory", field))
        assert a.summary == b.summary
