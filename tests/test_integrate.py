"""odeint: every method against closed forms and scipy, convergence orders, validation."""

import numba
import numpy as np
import pytest
from numba import njit
from reference_meanfield import naive_rk4
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import nndyn_fast.kernels.rk as krk
from nndyn_fast.errors import NonFiniteStateError
from nndyn_fast.integrate import IntegrationError, odeint
from nndyn_fast.neural import NeuralODE
from nndyn_fast.storage import open_run


@njit
def lotka(t, x, args, out):
    # Lotka-Volterra with a periodic forcing: smooth, not stiff
    a, b = args
    out[0] = a * x[0] - x[0] * x[1] + 0.1 * np.sin(t)
    out[1] = -b * x[1] + x[0] * x[1]


@njit
def lotka_jac(t, x, args, J):
    a, b = args
    J[0, 0] = a - x[1]
    J[0, 1] = -x[0]
    J[1, 0] = x[1]
    J[1, 1] = -b + x[0]


@njit
def riccati(t, x, args):
    # x' = x^2 blows up at t = 1 / x0
    return x * x


def _linear():
    M = np.array([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -1.0]])
    return M, NeuralODE.inner(M, np.zeros(3), "identity")


def _ref(fun, x0, t, *args):
    return solve_ivp(
        fun, (t[0], t[-1]), x0, method="DOP853", rtol=1e-12, atol=1e-14, t_eval=t, args=args
    ).y.T


def _lotka_py(t, x, a, b):
    out = np.empty(2)
    lotka.py_func(t, x, (a, b), out)
    return out


# tolerance per method at dt = 1e-3 (discretisation C dt^p) or rtol = 1e-10 (dopri5)
METHOD_TOL = [
    ("dopri5", None, 1e-8),
    ("rk4", 1e-3, 1e-9),
    ("rk2", 1e-3, 1e-4),
    ("euler", 1e-3, 5e-2),
]


@pytest.mark.parametrize("method,dt,tol", METHOD_TOL)
def test_linear_system_closed_form(method, dt, tol):
    M, model = _linear()
    x0 = np.array([1.0, -0.5, 0.25])
    t = np.linspace(0.0, 2.0, 9)
    sol = odeint(model, x0, t, method=method, dt=dt, rtol=1e-10, atol=1e-12)
    exact = np.array([expm(M * s) @ x0 for s in t])
    assert np.abs(sol.y - exact).max() < tol
    ref = _ref(lambda s, x: M @ x, x0, t)
    assert np.abs(ref - exact).max() < 1e-10  # the scipy reference agrees with the exponential
    assert sol.status == "success"


@pytest.mark.parametrize("method,dt,tol", METHOD_TOL)
def test_nonlinear_user_field_vs_scipy(method, dt, tol):
    x0 = np.array([1.0, 0.5])
    t = np.linspace(0.0, 3.0, 7)
    sol = odeint(lotka, x0, t, method=method, dt=dt, rtol=1e-10, atol=1e-12, args=(1.0, 1.0))
    ref = _ref(_lotka_py, x0, t, 1.0, 1.0)
    assert np.abs(sol.y - ref).max() < tol


@pytest.mark.parametrize("method,dt,tol", METHOD_TOL)
def test_random_neural_ode_vs_scipy(method, dt, tol):
    model = NeuralODE.random(4, 6, scale=1.5, seed=3)
    x0 = np.random.default_rng(0).standard_normal(4)
    t = np.linspace(0.0, 1.0, 5)
    sol = odeint(model, x0, t, method=method, dt=dt, rtol=1e-10, atol=1e-12)
    ref = _ref(lambda s, x: model(x, s), x0, t)
    assert np.abs(sol.y - ref).max() < tol


@pytest.mark.parametrize("method,p", [("euler", 1), ("rk2", 2), ("rk4", 4)])
def test_convergence_order(method, p):
    model = NeuralODE.random(3, 5, scale=2.0, seed=5)
    x0 = np.array([0.5, -0.3, 0.8])
    ref = _ref(lambda s, x: model(x, s), x0, np.array([0.0, 1.0]))[-1]
    dts = np.array([1 / 8, 1 / 16, 1 / 32, 1 / 64])
    errs = [
        np.abs(odeint(model, x0, [0.0, 1.0], method=method, dt=h).y[-1] - ref).max() for h in dts
    ]
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert abs(slope - p) < 0.3  # observed order within 0.3 of the theoretical order


def test_dopri5_error_tracks_rtol():
    model = NeuralODE.random(3, 5, scale=2.0, seed=5)
    x0 = np.array([0.5, -0.3, 0.8])
    t = np.linspace(0.0, 2.0, 11)
    ref = _ref(lambda s, x: model(x, s), x0, t)
    rtols = 10.0 ** -np.arange(3, 11)
    errs = []
    for r in rtols:
        sol = odeint(model, x0, t, rtol=r, atol=r * 1e-3)
        errs.append(np.abs(sol.y - ref).max())
        # FSAL accounting: 2 evaluations for the first step, then 6 per attempted step
        st = sol.stats
        assert st["n_fev"] == 2 + 6 * (st["n_accepted"] + st["n_rejected"])
    errs = np.array(errs)
    # tolerance proportionality: global error within [1e-3, 10] x rtol over eight decades
    assert np.all(errs < 10 * rtols) and np.all(errs > 1e-3 * rtols)
    slope = np.polyfit(np.log(rtols), np.log(errs), 1)[0]
    assert 0.7 < slope < 1.3  # error shrinks in proportion to rtol


def test_dense_output_matches_closed_form():
    M, model = _linear()
    x0 = np.array([1.0, -0.5, 0.25])
    t = np.linspace(0.0, 2.0, 401)  # many outputs per step: filled by the continuous extension
    sol = odeint(model, x0, t, rtol=1e-9, atol=1e-12)
    exact = np.array([expm(M * s) @ x0 for s in t])
    assert sol.stats["n_accepted"] < 100  # steps are not forced onto the output grid
    assert np.abs(sol.y - exact).max() < 1e-7  # order-4 dense output at rtol 1e-9


def test_batched_equals_unbatched_and_thread_independent():
    model = NeuralODE.random(5, 7, scale=1.5, seed=9, layers=3)
    X = np.random.default_rng(1).standard_normal((6, 5))
    t = np.linspace(0.0, 1.0, 4)
    for method in ("dopri5", "rk4"):
        batch = odeint(model, X, t, method=method, dt=0.05).y
        single = np.stack([odeint(model, x, t, method=method, dt=0.05).y for x in X], axis=1)
        np.testing.assert_array_equal(batch, single)  # same per-trajectory arithmetic
    nthreads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = odeint(model, X, t).y
    finally:
        numba.set_num_threads(nthreads)
    np.testing.assert_array_equal(one, odeint(model, X, t).y)


@pytest.mark.parametrize("B", [5, 40])  # the serial driver (few trajectories) and the parallel one
def test_user_field_batches_equal_single_runs_and_scipy(B):
    # a batch of a user field steps row by row in blocks; each trajectory must get exactly the
    # steps and bits of its own run, for fixed steps, adaptive steps and with tangents
    X = 0.5 + np.random.default_rng(4).random((B, 2))
    t = np.linspace(0.0, 2.0, 5)
    args = (1.0, 1.0)
    for kw in ({"method": "rk4", "dt": 0.01}, {"rtol": 1e-9, "atol": 1e-12},
               {"rtol": 1e-9, "atol": 1e-12, "variational": True, "jac": lotka_jac}):  # fmt: skip
        sol = odeint(lotka, X, t, args=args, **kw)
        for i in (0, B // 2, B - 1):
            one = odeint(lotka, X[i], t, args=args, **kw)
            np.testing.assert_array_equal(sol.y[:, i], one.y)
            np.testing.assert_array_equal(sol.stats["per_trajectory"][i],
                                          one.stats["per_trajectory"][0])  # fmt: skip
            if "jac" in kw:
                np.testing.assert_array_equal(sol.jac[:, i], one.jac)
    ref = solve_ivp(_lotka_py, (0.0, 2.0), X[-1], method="DOP853", t_eval=t, rtol=1e-12,
                    atol=1e-14, args=args)  # fmt: skip
    assert np.abs(sol.y[:, -1] - ref.y.T).max() < 1e-7  # rtol 1e-9 over t in [0, 2]


def _rk4_layers_numpy(model, X, t_out, dt):
    # independent reference: a plain numpy RK4 on the whole batch, steps cut at the layer
    # switches and output times exactly as documented for fixed steps
    stops = np.unique(np.concatenate([t_out, model.t_layers[1:-1]]))
    stops = stops[(stops >= t_out[0]) & (stops <= t_out[-1])]
    X = X.copy()
    frames = {t_out[0]: X.copy()}
    steps = 0
    for a, e in zip(stops[:-1], stops[1:], strict=True):
        m = max(1, int(np.ceil((e - a) / dt * (1 - 1e-12))))
        h = (e - a) / m
        l = int(np.sum(model.t_layers[1:-1] <= a))
        W, A, b = model.W[l] if model.W is not None else None, model.A[l], model.b[l]

        def f(Z, W=W, A=A, b=b):
            S = np.tanh(Z @ A.T + b) if model.activation == "tanh" else np.maximum(Z @ A.T + b, 0)
            return S if W is None or model.form == "inner" else S @ W.T

        steps += m
        X = naive_rk4(f, X, h, m)
        frames[e] = X.copy()
    return np.stack([frames[s] for s in t_out]), steps


@pytest.mark.parametrize("form, activation", [("outer", "tanh"), ("inner", "relu")])
def test_fixed_step_batch_in_blocks_vs_numpy(form, activation):
    # 150 trajectories advance in blocks (a blocked matrix product per stage, leftover rows)
    model = NeuralODE.random(5, 9, activation=activation, form=form, scale=1.5, seed=3, layers=3)
    X = np.random.default_rng(2).standard_normal((150, 5))
    t = np.array([0.0, 0.25, 0.5, 1.0])
    sol = odeint(model, X, t, method="rk4", dt=0.02)
    # the same method with numpy's matrix products (another summation order): roundoff only
    ref, steps = _rk4_layers_numpy(model, X, t, 0.02)
    np.testing.assert_allclose(sol.y, ref, rtol=0, atol=1e-13)
    single = np.stack([odeint(model, x, t, method="rk4", dt=0.02).y for x in X[::37]], axis=1)
    np.testing.assert_array_equal(sol.y[:, ::37], single)  # batched = unbatched, bit for bit
    assert sol.stats["n_accepted"] == 150 * steps and sol.stats["n_fev"] == 4 * 150 * steps


def test_block_partition_does_not_change_results():
    # 40 states: one block of 40 on one thread, two of 20 on two; bitwise the same either way
    model = NeuralODE.random(6, 10, scale=1.5, seed=4, layers=2)
    X = np.random.default_rng(3).standard_normal((40, 6))
    t = np.linspace(0.0, 1.0, 3)
    runs = []
    nthreads = numba.get_num_threads()
    try:
        for n in (1, 2):
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            runs.append([odeint(model, X, t, **kw).y for kw in ({}, {"method": "rk4", "dt": 0.1})])
    finally:
        numba.set_num_threads(nthreads)
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fixed_step_blocks_keep_finite_members_and_name_the_time():
    # x' = 40 x (identity field): members starting at 0 stay finite, the others overflow
    model = NeuralODE.inner(40.0 * np.eye(2), np.zeros(2), "identity")
    X = np.zeros((40, 2))
    X[::3] = 1.0
    t = np.linspace(0.0, 30.0, 7)
    with pytest.raises(NonFiniteStateError, match="stopped at t = ") as info:
        odeint(model, X, t, method="rk4", dt=0.01)
    y = info.value.solution.y
    assert (y[:, 1::3] == 0.0).all()  # untouched members keep every frame
    # RK4 multiplies by R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24, z = 40 h, per step: past the
    # float64 range after n = 1775 steps (t = 17.75); the frames up to t = 15 are kept
    z = 0.4
    R = 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24
    n = np.round(t[:4] / 0.01)
    np.testing.assert_allclose(y[:4, 0, 0], R**n, rtol=1e-12)
    assert np.isnan(y[4:, ::3]).all()
    # a stage value (40 y) overflows a few steps before y does
    assert 17.5 < info.value.time <= 17.75 and info.value.step == round(info.value.time / 0.01)
    with pytest.raises(NonFiniteStateError) as one:  # a single member, stepped on its own
        odeint(model, X[0], t, method="rk4", dt=0.01)
    assert one.value.time == info.value.time
    with pytest.raises(NonFiniteStateError) as adaptive:  # adaptive steps, also in blocks
        odeint(model, X, t)
    y = adaptive.value.solution.y
    assert (y[:, 1::3] == 0.0).all() and np.isnan(y[4:, ::3]).all()
    assert 17.0 < adaptive.value.time < 17.8  # e^{40 t} leaves float64 at t = 17.7


@pytest.mark.parametrize("kw", [{"method": "rk4", "dt": 0.01}, {"rtol": 1e-8, "atol": 1e-10}])
def test_block_members_failing_at_different_times_match_their_own_runs(kw):
    # x' = g_l x with gains 1, 8, 40 in three layers (growth up to e^781 by t = 30): members
    # starting between 1e-300 and 1e250 overflow at different steps and layers or not at all,
    # zero members never do; each member must keep the frames and statistics of its own run
    gains = np.array([1.0, 8.0, 40.0])
    model = NeuralODE.inner(gains[:, None, None] * np.eye(2), np.zeros((3, 2)), "identity",
                            t_layers=[0.0, 5.0, 12.0, 30.0], T=30.0)  # fmt: skip
    X = np.zeros((20, 2))
    X[::2, 0] = 10.0 ** np.linspace(-300, 250, 10)
    t = np.linspace(0.0, 30.0, 16)
    with pytest.raises(NonFiniteStateError) as batch:
        odeint(model, X, t, **kw)
    sol = batch.value.solution
    assert (sol.y[:, 1::2] == 0.0).all()
    times = []
    for i in range(0, 20, 2):
        try:
            one = odeint(model, X[i], t, **kw)
        except NonFiniteStateError as err:
            one = err.solution
            times.append(err.time)
        np.testing.assert_array_equal(sol.y[:, i], one.y)  # NaN after the last good frame
        np.testing.assert_array_equal(
            sol.stats["per_trajectory"][i], one.stats["per_trajectory"][0]
        )
    assert 2 <= len(times) < 10 and len(set(times)) == len(times)  # different stopping times
    assert batch.value.time == times[-1]  # the batch names its first failure: the largest start
    # independent checks. The largest member (1e250) leaves the float64 range at
    # t* = 12 + (ln(DBL_MAX / 1e250) - 5 - 56) / 40 = 13.83, its stage values (40 x) about
    # ln(40) / 40 = 0.09 earlier; the time named is the start of the failing step.
    t_star = 12.0 + (np.log(np.finfo(float).max / 1e250) - 61.0) / 40.0
    assert t_star - 0.15 < batch.value.time <= t_star
    if kw.get("method") == "rk4":
        # a member that never overflows grows by RK4's factor R(z) = 1 + z + z^2/2 + z^3/6 +
        # z^4/24 per step (z = g h, h = 0.01): 500, 700 and 1800 steps in the three layers
        R = [1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24 for z in 0.01 * gains]
        log_growth = 500 * np.log(R[0]) + 700 * np.log(R[1]) + 1800 * np.log(R[2])
        assert abs(np.log(sol.y[-1, 0, 0]) - np.log(X[0, 0]) - log_growth) < 1e-10  # rounding


def test_piecewise_layers_vs_scipy():
    model = NeuralODE.random(3, 4, scale=2.0, seed=11, layers=4)
    x0 = np.array([0.2, 0.1, -0.4])
    ref = x0
    for k in range(4):  # independent reference: one scipy solve per layer interval
        a, b = model.t_layers[k], model.t_layers[k + 1]
        ref = _ref(lambda s, x, m=0.5 * (a + b): model(x, m), ref, np.array([a, b]))[-1]
    for method, tol in (("dopri5", 1e-8), ("rk4", 1e-8)):  # tolerance as in METHOD_TOL
        y = odeint(model, x0, [0.0, 1.0], method=method, dt=1e-2, rtol=1e-10, atol=1e-12).y
        assert np.abs(y[-1] - ref).max() < tol


def _layered_ref(model, x0, t):
    # independent reference: scipy on every piece between outputs and layer switches
    frames, x, tl = [x0], x0, model.t_layers
    for a, b in zip(t[:-1], t[1:], strict=True):
        cuts = np.concatenate([[a], tl[(tl > a) & (tl < b)], [b]])
        for u, v in zip(cuts[:-1], cuts[1:], strict=True):
            x = _ref(lambda s, y, m=0.5 * (u + v): model(y, m), x, np.array([u, v]))[-1]
        frames.append(x)
    return np.array(frames)


def test_adaptive_batch_in_blocks_vs_scipy_and_single_runs():
    # 70 trajectories in blocks, each with its own adaptive steps; four layers, so members step
    # in turns when they sit in different layers
    model = NeuralODE.random(3, 4, scale=2.0, seed=11, layers=4)
    X = np.random.default_rng(5).uniform(-1.0, 1.0, (70, 3))
    t = np.linspace(0.0, 1.0, 6)
    sol = odeint(model, X, t, rtol=1e-10, atol=1e-12)
    for i in (0, 33, 69):
        ref = _layered_ref(model, X[i], t)
        assert np.abs(sol.y[:, i] - ref).max() < 1e-8  # tolerance as in METHOD_TOL
        one = odeint(model, X[i], t, rtol=1e-10, atol=1e-12)
        # the same arithmetic and controller per trajectory: batched = unbatched, bit for bit
        np.testing.assert_array_equal(
            sol.stats["per_trajectory"][i], one.stats["per_trajectory"][0]
        )
        np.testing.assert_array_equal(sol.y[:, i], one.y)
    with pytest.raises(IntegrationError, match="max_steps"):
        odeint(model, X, t, max_steps=4)


def test_user_variational_equation_vs_finite_differences():
    x0 = np.array([1.0, 0.5])
    t = np.array([0.0, 1.5])
    sol = odeint(lotka, x0, t, args=(1.0, 1.0), rtol=1e-11, atol=1e-13, variational=True,
                 jac=lotka_jac)  # fmt: skip
    eps = 1e-6
    fd = np.stack(
        [
            (odeint(lotka, x0 + eps * e, t, args=(1.0, 1.0), rtol=1e-12, atol=1e-14).y[-1]
             - odeint(lotka, x0 - eps * e, t, args=(1.0, 1.0), rtol=1e-12, atol=1e-14).y[-1])
            / (2 * eps)
            for e in np.eye(2)
        ],
        axis=1,
    )  # fmt: skip
    assert np.abs(sol.jac[-1] - fd).max() < 1e-6  # FD error eps^2 + solver error / eps
    np.testing.assert_array_equal(sol.jac[0], np.eye(2))


def test_overflow_names_time_and_keeps_frames():
    t = np.linspace(0.0, 2.0, 21)
    with pytest.raises(NonFiniteStateError, match=r"stopped at t = 1\.0") as info:
        odeint(riccati, np.array([1.0]), t, method="rk4", dt=0.01)
    err = info.value
    assert 0.95 <= err.time < 1.1  # blow-up at t = 1; fixed steps of 0.01 may step past it
    y = err.solution.y
    good = t < 0.95
    np.testing.assert_allclose(y[good, 0], 1.0 / (1.0 - t[good]), rtol=1e-3)  # kept frames
    assert np.isnan(y[t > 1.05]).all()
    with pytest.raises((NonFiniteStateError, IntegrationError), match="stopped at t =") as info:
        odeint(riccati, np.array([1.0]), t, max_steps=10**5)
    assert abs(info.value.time - 1.0) < 1e-3  # adaptive steps shrink onto the blow-up time


def test_max_steps_reports():
    with pytest.raises(IntegrationError, match="max_steps"):
        odeint(_linear()[1], np.ones(3), [0.0, 10.0], max_steps=3)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_stream_to_file(tmp_path, method):
    model = NeuralODE.random(3, 4, seed=2)
    X = np.random.default_rng(4).standard_normal((20, 3))
    t = np.linspace(0.0, 1.0, 6)
    kw = {"method": method, "dt": 0.01, "rtol": 1e-10, "atol": 1e-12}
    mem = odeint(model, X, t, **kw)
    sol = odeint(model, X, t, **kw, out=tmp_path / "ode.h5")
    assert sol.y is None
    with open_run(sol.path) as run:
        y = run.read("trajectory", "value")
        np.testing.assert_array_equal(run.read("trajectory", "time"), t)
        assert run.status == "complete"
    if method == "rk4":
        np.testing.assert_array_equal(y, mem.y)
    else:  # a chunk of frames ends the adaptive steps at its last frame: equal to tolerance
        np.testing.assert_allclose(y, mem.y, rtol=0, atol=1e-9)
    np.testing.assert_allclose(y[:, 0], _layered_ref(model, X[0], t), rtol=0, atol=1e-8)


def test_per_component_tolerances():
    # x' = diag(-1, -5) x with x0 = (1, 1e-6): the small, fast component is only controlled
    # when its own atol is below its scale, and only as tight as its own rtol
    model = NeuralODE.inner(np.diag([-1.0, -5.0]), np.zeros(2), "identity")
    x0, t = np.array([1.0, 1e-6]), np.linspace(0.0, 2.0, 5)
    exact = x0 * np.exp(np.outer(t, [-1.0, -5.0]))

    def rel_err(**kw):
        return np.abs(odeint(model, x0, t, **kw).y / exact - 1.0).max(axis=0)

    assert rel_err(rtol=1e-6, atol=1e-9)[1] > 1e-3  # atol 1e-9 >> 1e-6 * x_1: unchecked
    assert rel_err(rtol=1e-6, atol=[1e-9, 1e-16])[1] < 1e-4
    loose, tight = rel_err(rtol=1e-6, atol=1e-20), rel_err(rtol=[1e-6, 1e-10], atol=1e-20)
    assert tight[1] < loose[1] / 1000


def _bad(t, x):
    return -x


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"x0": np.ones((2, 2, 3))}, "x0 must have"),
        ({"x0": np.ones(4)}, "x0 must have 3 columns"),
        ({"x0": np.array([1.0, np.nan, 0.0])}, "x0 must be finite"),
        ({"x0": np.array(["a", "b", "c"])}, "x0 must be convertible.*got string values"),
        ({"x0": np.ones(3) + 1j}, "x0 must be convertible.*got complex values"),
        ({"x0": [[1.0, 2.0, 3.0], [1.0]]}, "x0 must be convertible"),
        ({"t": [0.0, 1.0, 1.0]}, "strictly increasing"),
        ({"t": [0.0]}, "at least 2"),
        ({"rtol": 0.0}, "rtol must be > 0"),
        ({"rtol": -1e-3}, "rtol must be > 0"),
        ({"atol": np.ones(2)}, "atol must be a scalar or have shape"),
        ({"method": "rk45"}, "method must be one of"),
        ({"dt": 0.0}, "dt must be"),
        ({"args": [1.0]}, "args must be a tuple"),
    ],
)
def test_validation_errors(kwargs, match):
    call = {"x0": np.ones(3), "t": [0.0, 1.0], **kwargs}
    model = NeuralODE.random(3, 4, seed=0)
    x0, t = call.pop("x0"), call.pop("t")
    with pytest.raises(ValueError, match=match):
        odeint(model, x0, t, **call)


def test_bad_fields():
    with pytest.raises(ValueError, match="A must be finite"):
        NeuralODE(np.ones((2, 2)), np.array([[1.0, np.nan], [0.0, 1.0]]), np.zeros(2))
    with pytest.raises(TypeError, match="Numba-jitted"):
        odeint(_bad, np.ones(2), [0.0, 1.0])
    with pytest.raises(TypeError, match="in-place form"):
        odeint(njit(lambda x: x), np.ones(2), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        odeint(njit(lambda t, x, args: x[:1]), np.ones(3), [0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        odeint(lotka, np.ones(3), [0.0, 1.0], args=(1.0, 1.0))  # out[2] never written


def test_tableaus_are_consistent():
    for A, B, C in [
        (krk.EULER_A, krk.EULER_B, krk.EULER_C),
        (krk.RK2_A, krk.RK2_B, krk.RK2_C),
        (krk.RK4_A, krk.RK4_B, krk.RK4_C),
        (krk.DOPRI5_A, krk.DOPRI5_B, krk.DOPRI5_C),
    ]:
        np.testing.assert_allclose(A.sum(axis=1), C, atol=1e-15)  # row-sum condition
        assert abs(B.sum() - 1.0) < 1e-15  # consistency
    np.testing.assert_allclose(krk.DOPRI5_B - krk.DOPRI5_BHAT, krk.DOPRI5_E, atol=1e-16)
    np.testing.assert_array_equal(krk.DOPRI5_A[-1], krk.DOPRI5_B)  # first same as last
    # order conditions of the fifth-order weights: sum b c^(k-1) = 1/k
    for k in range(1, 6):
        assert abs(krk.DOPRI5_B @ krk.DOPRI5_C ** (k - 1) - 1.0 / k) < 1e-15


def test_a_flow_system_integrates_like_its_field():
    """odeint(FlowSystem) is odeint of its field with its args; the variational run uses its
    Jacobian (checked against the linear flow x' = A x: x(t) = expm(A t) x0, J = expm(A t))."""
    from numba import njit
    from scipy.linalg import expm

    from nndyn_fast import FlowSystem

    @njit
    def lin(t, x, A, out):  # A @ x written out: numba's matmul takes seconds to compile
        for i in range(x.shape[0]):
            out[i] = 0.0
            for j in range(x.shape[0]):
                out[i] += A[i, j] * x[j]

    @njit
    def lin_jac(t, x, A, J):
        J[:, :] = A

    A = np.array([[-0.5, 1.0], [-1.0, -0.2]])
    ts = np.linspace(0, 2, 5)
    sol = odeint(FlowSystem(lin, lin_jac, 2, A), np.array([1.0, 0.5]), ts, rtol=1e-10,
                 atol=1e-12, variational=True)  # fmt: skip
    for k, tk in enumerate(ts):
        np.testing.assert_allclose(sol.y[k], expm(A * tk) @ [1.0, 0.5], rtol=0, atol=1e-8)
        np.testing.assert_allclose(sol.jac[k], expm(A * tk), rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="carries its own args"):
        odeint(FlowSystem(lin, lin_jac, 2, A), np.ones(2), ts, args=(A,))
    with pytest.raises(ValueError, match="dim = 2"):
        odeint(FlowSystem(lin, lin_jac, 2, A), np.ones(3), ts)
