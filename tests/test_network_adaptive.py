"""Adaptive network runs (DOPRI5, DOP853): orders, scipy, save times, streaming, resume."""

import sys

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from reference_meanfield import naive_phase_rhs, naive_rate_rhs
from scipy.integrate import solve_ivp

from nndyn_fast import (
    Coupling,
    DigraphMeasure,
    FiringRate,
    Graphon,
    Kuramoto,
    NonFiniteStateError,
    open_run,
    simulate,
)
from nndyn_fast import meanfield as mf

ORDERS = {"dopri5": 5, "dop853": 8}

TH = sys.modules["nndyn_fast.threads"]  # (nndyn_fast.threads is the context manager)


@numba.njit
def bump(x, y):
    """A user graphon (pairwise evaluation): w = 1 + cos(2π(x − y)) / 2 + x y."""
    return 1.0 + 0.5 * np.cos(2 * np.pi * (x - y)) + x * y


def _phase(n, seed=3, K=2.0, alpha=0.3):
    rng = np.random.default_rng(seed)
    omega, W, theta = rng.normal(size=n), rng.random((n, n)), rng.uniform(0, 6, n)
    return Kuramoto(omega, W, K, alpha), theta, (omega, W, K, alpha)


def _scipy(f, y0, t_end, **kw):
    kw = {"rtol": 1e-13, "atol": 1e-13, **kw}
    return solve_ivp(lambda t, y: f(y), (0, t_end), y0, method="DOP853", dense_output=True, **kw)


def _fixed_steps(model, theta, t_end, dt, method, h):
    """The adaptive tableau with every step of size h and no control (the private entry point
    behind simulate, which takes h_fixed)."""

    n = model.n
    total = int(np.ceil(t_end / dt - 1e-9))
    tols = {"rtol": np.full(n, 1e-6), "atol": np.full(n, 1e-9)}
    run = (model, np.array(theta, dtype=float), dt, method, 1, total, mf._plan_chunk(n, 1, None)[0])
    return mf._simulate_adaptive(run, (None, False, False, False, {}), tols, h_fixed=h)


@pytest.mark.parametrize("method", ["dopri5", "dop853"])
def test_convergence_slopes_with_fixed_steps(method):
    """The tableaus: error ~ h^p at the ends of the steps and, through the continuous
    extension (order p - 1 locally, so O(h^p) globally too), at save times inside steps.

    Steps forced to a fixed size h (:func:`_fixed_steps`); reference: scipy DOP853
    at rtol = atol = 1e-13 (error ~1e-12, below the smallest error fitted here, 3e-11)."""
    p = ORDERS[method]
    model, theta, (omega, W, K, alpha) = _phase(10)
    ref = _scipy(lambda y: naive_phase_rhs(y, omega, W, K, alpha), theta, 1.0)
    steps = [8, 12, 16, 24, 32] if p == 5 else [2, 3, 4, 6, 8]
    hs = [1.0 / m for m in steps]
    ends, inside = [], []
    for h in hs:
        run = _fixed_steps(model, theta, 1.0, h, method, h)  # saves at step ends
        ends.append(np.abs(run.frames - ref.sol(run.frame_t).T).max())
        run = _fixed_steps(model, theta, 1.0, 0.1, method, h)  # mostly inside
        assert run.stats["n_accepted"] == round(1.0 / h) and run.stats["n_rejected"] == 0
        inside.append(np.abs(run.frames - ref.sol(run.frame_t).T).max())
    for errs in (ends, inside):
        slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
        assert abs(slope - p) < 0.3, (errs, slope)


@pytest.mark.parametrize("method", ["dopri5", "dop853"])
def test_error_follows_the_tolerance(method):
    """With step-size control: the error falls as the tolerance is tightened, with more
    accepted steps, and stays within a small multiple of the per-step error scale
    atol + rtol |θ| on this short, smooth run (a global error of a few local ones)."""
    model, theta, (omega, W, K, alpha) = _phase(10)
    ref = _scipy(lambda y: naive_phase_rhs(y, omega, W, K, alpha), theta, 1.0)
    errs, steps = [], []
    for tol in (1e-5, 1e-7, 1e-9):
        run = simulate(model, theta, 1.0, 0.1, method=method, rtol=tol, atol=tol)
        errs.append(np.abs(run.frames - ref.sol(run.frame_t).T).max())
        steps.append(run.stats["n_accepted"])
        assert errs[-1] < 10 * tol * (1 + np.abs(run.frames).max())
    assert errs[0] > errs[1] > errs[2] and steps[0] < steps[1] < steps[2]


def _couplings():
    """(name, model, reference field, state0) for each coupling form and both models."""
    n = 24
    rng = np.random.default_rng(11)
    omega, theta = rng.normal(size=n), rng.uniform(0, 2 * np.pi, n)
    W = rng.random((n, n))
    W32 = W.astype(np.float32).astype(np.float64)  # the weights the float32 path reads
    S = sp.random(n, n, density=0.3, random_state=1, format="csr") * 3.0
    ring = Graphon.ring(0.3)
    x = np.sort(rng.random(n))
    mu = rng.gamma(2.0, 0.5, n)
    dm = DigraphMeasure(Graphon.directed_ring(0.3), x, mu)
    d = np.mod(x[None, :] - x[:, None], 1.0)
    dm_dense = ((d > 0) & (d <= 0.3)).astype(float) * mu[None, :]
    user = Graphon.from_function(bump)

    def ph(Wd, K=2.0, alpha=0.3):
        return lambda y: naive_phase_rhs(y, omega, Wd, K, alpha)

    cases = [
        ("dense-f64", Kuramoto(omega, W, 2.0, 0.3), ph(W), theta),
        ("dense-f32", Kuramoto(omega, W, 2.0, 0.3, dtype="float32"), ph(W32), theta),
        ("csr", Kuramoto(omega, S, 2.0, 0.3), ph(S.toarray()), theta),
        ("graphon-structured", Kuramoto(omega, ring, 2.0, 0.3), ph(ring.matrix(n)), theta),
        (
            "graphon-pairwise-user",
            Kuramoto(omega, Coupling(user, n, pairwise=True), 2.0, 0.3),
            ph(user.matrix(n)),
            theta,
        ),
        ("digraph-measure", Kuramoto(omega, dm, 1.5, 0.2), ph(dm_dense, 1.5, 0.2), theta),
        (
            "rate-dense-tanh",
            FiringRate(omega, W, 1.5, activation="tanh"),
            lambda y: naive_rate_rhs(y, omega, W, 1.5, np.tanh),
            rng.normal(size=n),
        ),
        (
            "rate-csr-tanh",
            FiringRate(omega, S, 1.5, activation="tanh"),
            lambda y: naive_rate_rhs(y, omega, S.toarray(), 1.5, np.tanh),
            rng.normal(size=n),
        ),
    ]
    return cases


CASES = _couplings()


@pytest.mark.parametrize("method", ["dopri5", "dop853"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_agrees_with_scipy_dop853_at_tight_tolerance(case, method):
    """Every coupling form and both models against scipy's DOP853 (rtol = atol = 1e-12) on
    the naive numpy field, at every save time (ours: continuous extension)."""
    name, model, field, y0 = case
    ref = _scipy(field, y0, 2.0, rtol=1e-12, atol=1e-12)
    run = simulate(model, y0, 2.0, 0.05, method=method, rtol=1e-11, atol=1e-11, save_every=3)
    np.testing.assert_array_equal(run.t, np.arange(41) * 0.05)
    np.testing.assert_array_equal(run.frame_t, np.arange(0, 41, 3) * 0.05)
    # both global errors are ~1e-11 (a few tolerances over a short run); 1e-9 leaves room
    np.testing.assert_allclose(run.frames, ref.sol(run.frame_t).T, rtol=0, atol=1e-9)
    np.testing.assert_allclose(run.state, ref.sol(2.0), rtol=0, atol=1e-9)
    if model.model_code == 0:  # the observables are the order parameter of the saved states
        z = np.exp(1j * ref.sol(run.t).T).mean(axis=1)
        np.testing.assert_allclose(run.obs[:, 0], np.abs(z), atol=1e-9)


def test_save_times_and_the_end_of_the_run():
    """Observables every dt from t = 0, frames every save_every * dt, the last step lands on
    t_end rounded up to a multiple of dt, and the end state is that frame."""
    model, theta, _ = _phase(8)
    run = simulate(model, theta, 0.97, 0.1, method="dop853", save_every=5)
    np.testing.assert_array_equal(run.t, np.arange(11) * 0.1)
    np.testing.assert_array_equal(run.frame_t, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(run.frames[0], theta)
    np.testing.assert_array_equal(run.frames[-1], run.state)
    assert run.obs.shape == (11, 2) and run.steps == 10


def test_results_do_not_depend_on_chunks_or_on_streaming(tmp_path):
    """A call ends before a step, never inside one: chunk sizes change nothing, including
    chunks smaller than the save times one step covers (the buffers grow)."""
    model, theta, _ = _phase(8)
    kw = {"method": "dopri5", "rtol": 1e-8, "save_every": 2}
    big = simulate(model, theta, 1.0, 0.002, **kw)  # steps of ~0.05 cover ~25 save times
    small = simulate(model, theta, 1.0, 0.002, chunk_steps=3, **kw)
    file = simulate(model, theta, 1.0, 0.002, chunk_steps=7, out=tmp_path / "a.h5", **kw)
    assert big.stats["n_accepted"] < 100  # far fewer steps than the 500 save times
    np.testing.assert_array_equal(small.obs, big.obs)
    np.testing.assert_array_equal(small.frames, big.frames)
    np.testing.assert_array_equal(file.state, big.state)
    with open_run(file.path) as f:
        assert f.status == "complete"
        np.testing.assert_array_equal(f.read("trajectory", "value"), big.frames)
        np.testing.assert_array_equal(f.read("trajectory", "time"), big.frame_t)
        np.testing.assert_array_equal(f.read("observables", "value"), big.obs)
        np.testing.assert_array_equal(f.read("observables", "step"), np.arange(501))
        assert f.summary["n_accepted"] == big.stats["n_accepted"]


@pytest.mark.parametrize("method", ["dopri5", "dop853"])
def test_every_kill_point_resumes_bitwise(tmp_path, method):
    """A kill (with a torn write) at each write of a small adaptive run: the resume gives the
    uninterrupted run bitwise (the controller state h, errold, ... is in the checkpoint)."""
    from faults import every_kill_point

    model, theta, _ = _phase(6)
    kw = {"method": method, "rtol": 1e-9, "atol": 1e-9, "save_every": 2, "chunk_steps": 4}
    ref = simulate(model, theta, 0.6, 0.04, **kw)
    out = tmp_path / "k.h5"

    def check():
        with open_run(out) as f:
            assert f.status == "complete"
            f.verify()
            np.testing.assert_array_equal(f.read("trajectory", "value"), ref.frames)
            np.testing.assert_array_equal(f.read("observables", "value"), ref.obs)
            np.testing.assert_array_equal(f.read("observables", "step"), np.arange(16))

    seen = every_kill_point(
        out,
        lambda: simulate(model, theta, 0.6, 0.04, out=out, **kw),
        lambda: simulate(model, theta, 0.6, 0.04, out=out, resume=True, **kw),
        check,
        torn=0.5,
    )
    assert seen["points"] > 10 and seen["reran"] == 2


def test_resume_refuses_changed_tolerances_or_method(tmp_path):
    model, theta, _ = _phase(6)
    out = tmp_path / "r.h5"
    kw = {"method": "dopri5", "rtol": 1e-8, "atol": 1e-10, "chunk_steps": 4}
    from nndyn_fast.storage import TrajectoryWriter

    commit = TrajectoryWriter.commit
    calls = {"n": 0}

    def interrupting(self, **ck):
        commit(self, **ck)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    TrajectoryWriter.commit = interrupting
    try:
        with pytest.raises(KeyboardInterrupt):
            simulate(model, theta, 0.5, 0.02, out=out, **kw)
    finally:
        TrajectoryWriter.commit = commit
    before = out.read_bytes()
    changes = [
        ("rtol", {"rtol": np.nextafter(1e-8, 1)}),
        ("atol", {"atol": np.full(6, 1e-10) * (1 + 1e-15)}),
        ("atol", {"atol": None}),  # the default 1e-9 is another tolerance
        ("method", {"method": "dop853"}),
    ]
    for name, change in changes:
        with pytest.raises(ValueError, match=rf"(parameter|input) {name}\b"):
            simulate(model, theta, 0.5, 0.02, out=out, resume=True, **{**kw, **change})
    assert out.read_bytes() == before  # a refused resume leaves the file untouched
    # the same tolerances given per node are the same run
    same = {**kw, "rtol": np.full(6, 1e-8)}
    run = simulate(model, theta, 0.5, 0.02, out=out, resume=True, **same)
    ref = simulate(model, theta, 0.5, 0.02, **kw)
    np.testing.assert_array_equal(run.state, ref.state)
    with open_run(out) as f:
        assert f.status == "complete"
        np.testing.assert_array_equal(f.read("observables", "value"), ref.obs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rtol": 0.0}, "rtol must be > 0"),
        ({"rtol": -1e-6}, "rtol must be > 0"),
        ({"atol": np.nan}, "atol must be finite and > 0"),
        ({"rtol": np.inf}, "rtol must be finite and > 0"),
        ({"atol": [1e-9, np.inf, 1e-9, 1e-9]}, "atol must be finite and > 0"),
        ({"atol": np.full(3, 1e-9)}, r"atol must be a scalar or have shape \(4,\), got \(3,\)"),
        ({"rtol": np.full((4, 1), 1e-6)}, r"rtol must be a scalar or have shape \(4,\)"),
        ({"rtol": "tight"}, "rtol must be a real number or array"),
        ({"rtol": 1e-17}, r"rtol must be >= 1e-15 \(float64 resolution\)"),
        ({"method": "rk4", "rtol": 1e-6}, "rtol and atol are the tolerances of the adaptive"),
        ({"method": "euler", "atol": 1e-6}, "method 'euler' takes fixed steps of dt"),
        ({"method": "dop54"}, r"method must be one of \['euler', 'rk4', 'dopri5', 'dop853'\]"),
    ],
)
def test_bad_tolerances_are_rejected(kwargs, match):
    model = Kuramoto(np.zeros(4), np.ones((4, 4)), 1.0)
    kw = {"method": "dopri5", **kwargs}
    with pytest.raises(ValueError, match=match):
        simulate(model, np.zeros(4), 1.0, 0.1, **kw)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
@pytest.mark.parametrize("method", ["dopri5", "dop853"])
def test_serial_and_parallel_runs_are_identical(monkeypatch, method):
    """Each row is summed by one thread in a fixed order and the norms are serial, so the
    runs are bitwise equal for any thread count (threads forced on for this small N)."""
    monkeypatch.setattr(TH, "MIN_SECONDS_PER_THREAD", 0.0)
    n = 64
    rng = np.random.default_rng(5)
    omega, theta, W = rng.normal(size=n), rng.uniform(0, 6, n), rng.random((n, n))
    models = [
        Kuramoto(omega, W, 2.0, 0.1),
        Kuramoto(omega, sp.csr_matrix(W * (W > 0.7)), 2.0),
        Kuramoto(omega, Graphon.ring(0.2), 2.0),
        FiringRate(omega, Coupling(Graphon.from_function(bump), n, pairwise=True), 1.0),
    ]
    before = numba.get_num_threads()
    try:
        for model in models:
            numba.set_num_threads(1)
            one = simulate(model, theta, 1.0, 0.05, method=method, rtol=1e-9)
            numba.set_num_threads(2)
            two = simulate(model, theta, 1.0, 0.05, method=method, rtol=1e-9)
            np.testing.assert_array_equal(one.frames, two.frames)
            np.testing.assert_array_equal(one.obs, two.obs)
            assert one.stats == two.stats
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("method", ["dopri5", "dop853"])
def test_blow_up_names_the_save_time_and_keeps_good_frames(tmp_path, method):
    """x' = (K - 1) x + 1 grows like e^{1999 t} and overflows at t = 709.78 / 1999 = 0.3551
    (a stage or the continuous extension, with weights up to ~500 times K, a little before):
    the run stops there with an error naming the first save time not reached and the time
    reached, and the file keeps every save time before it."""
    n = 20
    model = FiringRate(np.ones(n), np.ones((n, n)), 2000.0, activation="identity")
    out = tmp_path / "boom.h5"
    with pytest.raises(NonFiniteStateError, match=r"non-finite after t = 0\.3[45]") as info:
        simulate(model, np.ones(n), 1.0, 0.01, method=method, out=out, chunk_steps=10)
    err = info.value
    assert 0.345 < err.time < 0.3551 and err.step == int(np.floor(err.time / 0.01)) + 1
    with open_run(out) as run:
        assert run.status == "failed" and "non-finite" in run.attrs["message"]
        vals = run.read("trajectory", "value")
        assert len(vals) == err.step and np.isfinite(vals).all()
        np.testing.assert_array_equal(run.read("observables", "step"), np.arange(err.step))
    with pytest.raises(NonFiniteStateError):  # the same without a file
        simulate(model, np.ones(n), 1.0, 0.01, method=method)


def test_command_line_adaptive_run(tmp_path, capsys):
    from nndyn_fast.cli import main

    out = tmp_path / "a.h5"
    args = ["kuramoto", "--N", "50", "--t-end", "2", "--dt", "0.1", "--out", str(out)]
    assert main([*args, "--method", "dop853", "--rtol", "1e-8", "--quiet"]) == 0
    assert "adaptive steps" in capsys.readouterr().out
    with open_run(out) as run:
        assert run.params["method"] == "dop853" and run.status == "complete"
        assert run.rows["observables"] == 21
    assert main([*args, "--rtol", "1e-8", "--overwrite", "--quiet"]) == 2  # rk4 + rtol
