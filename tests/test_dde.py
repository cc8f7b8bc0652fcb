"""Delay integrators (``ddeint``) against references they did not produce: exact method-of-steps
polynomials, Lambert-W characteristic roots, a naive numpy RK4 with Hermite history, the
undelayed ``odeint`` limit, and convergence slopes."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from reference_dde import mackey_glass_rhs, minus_delay_exact, naive_rk4, neural_dde_rhs
from scipy.special import lambertw

import nndyn_fast.kernels.dde as kdde  # noqa: F401  (packaging: the kernel module imports)
from nndyn_fast.delay import (
    LinearDDE,
    MackeyGlass,
    NeuralDDE,
    activation_lipschitz,
    ddeint,
    lipschitz_bound,
)
from nndyn_fast.errors import NonFiniteStateError
from nndyn_fast.kernels.control import initial_step_guess

MG_T = np.linspace(0.0, 100.0, 11)


@numba.njit
def _minus_delay_simple(t, x, xd, args):
    return -args[0] * xd[0]


@numba.njit
def _cos_history(t):
    return np.array([np.cos(t)])


def _random_neural(rng, d=2, H=5, m=1, L=1):
    shape = (L,) if L > 1 else ()
    return NeuralDDE(
        rng.normal(size=shape + (d, H)) / np.sqrt(H),
        rng.normal(size=shape + (H, d)),
        rng.normal(size=shape + (m, H, d)) * 0.5,
        rng.normal(size=shape + (H,)),
        activation="tanh",
        T=1.0,
    )


# --- exact solutions -----------------------------------------------------------------------------
def test_minus_delay_piecewise_polynomial_adaptive():
    t = np.linspace(0.0, 8.0, 161)
    sol = ddeint(LinearDDE(0.0, -1.0), np.array([1.0]), t, delays=1.0, rtol=1e-12, atol=1e-12)
    # 1e-10: the target; tolerance 1e-12 per step over ~1e3 steps stays below it
    np.testing.assert_allclose(sol.y[:, 0], minus_delay_exact(t), rtol=0, atol=1e-10)
    assert sol.stats["n_discontinuities"] == 5  # t = 1..5 stepped onto (depth 5 for dopri5)


@pytest.mark.parametrize("dt", [0.5, 1e-3])
def test_dopri5_with_a_given_first_step(tmp_path, dt):
    # a first step for dopri5 used to leave the PI controller's memory of the last error at 0,
    # its divisor: ZeroDivisionError at the first step (in memory and streamed alike)
    t = np.linspace(0.0, 3.0, 13)
    kw = {"delays": 1.0, "method": "dopri5", "dt": dt, "rtol": 1e-10, "atol": 1e-12}
    sol = ddeint(LinearDDE(0.0, -1.0), np.array([1.0]), t, **kw)
    # tolerance 1e-10 per step over ~100 steps: 1e-9
    np.testing.assert_allclose(sol.y[:, 0], minus_delay_exact(t), rtol=0, atol=1e-9)
    streamed = ddeint(LinearDDE(0.0, -1.0), np.array([1.0]), t, out=tmp_path / "s.h5", **kw)
    from nndyn_fast.storage import open_run

    with open_run(streamed.path) as run:
        x = run.read("trajectory", "value")[:, 0, 0]
    np.testing.assert_allclose(x, minus_delay_exact(t), rtol=0, atol=1e-9)


def test_dopri5_given_its_own_first_step_takes_the_same_steps():
    # the controller state set for a given first step is the one the kernel sets for its own
    # first step: given that step (Hairer's guess from x(0) = 1, f = -1), the run is the same
    kw = {"delays": 1.0, "method": "dopri5", "rtol": 1e-8, "atol": 1e-10}
    t = np.linspace(0.0, 3.0, 7)
    auto = ddeint(LinearDDE(0.0, -1.0), np.array([1.0]), t, **kw)
    one = np.ones(1)
    h0 = min(initial_step_guess(one, -one, 1e-8 * one, 1e-10 * one)[0], 3.0)  # hmax = t span
    given = ddeint(LinearDDE(0.0, -1.0), np.array([1.0]), t, dt=h0, **kw)
    np.testing.assert_array_equal(given.y, auto.y)
    assert given.stats["n_accepted"] == auto.stats["n_accepted"]


def test_minus_delay_user_function_and_rk4():
    t = np.linspace(0.0, 6.0, 61)
    exact = minus_delay_exact(t)
    sol = ddeint(
        _minus_delay_simple, np.array([1.0]), t, delays=1.0, rtol=1e-12, atol=1e-12, args=(1.0,)
    )
    # same bound as the built-in run: the user field is the same equation
    np.testing.assert_allclose(sol.y[:, 0], exact, rtol=0, atol=1e-10)
    sol4 = ddeint(LinearDDE(0.0, -1.0), np.array([1.0]), t, delays=1.0, method="rk4", dt=0.01)
    # RK4 global error C dt^4 with C ~ 1e-3 here: 1e-9 leaves a margin of 100
    np.testing.assert_allclose(sol4.y[:, 0], exact, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("a", "b", "tau"), [(0.2, 0.5, 1.0), (-0.5, 0.3, 1.0), (-1.0, 0.8, 2.5)])
def test_linear_growth_rate_lambert_w(a, b, tau):
    # lambda = a + W0(b tau e^{-a tau}) / tau solves lambda = a + b e^{-lambda tau}
    lam = a + lambertw(b * tau * np.exp(-a * tau), 0).real / tau
    t = np.linspace(0.0, 80.0, 801)
    sol = ddeint(LinearDDE(a, b), np.array([1.0]), t, delays=tau, rtol=1e-11, atol=1e-300)
    x = sol.y[:, 0]
    i1, i2 = 600, 800  # t = 60 and 80: the other roots have decayed by e^{-60 gap}
    rate = (np.log(abs(x[i2])) - np.log(abs(x[i1]))) / (t[i2] - t[i1])
    # relative solver error 1e-11 per unit time, divided by the 20 time units of the fit
    assert abs(rate - lam) < 1e-7


# --- Mackey-Glass ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mg_reference():
    tight = ddeint(MackeyGlass(), np.array([1.2]), MG_T, delays=17.0, rtol=1e-12, atol=1e-14)
    fixed = ddeint(MackeyGlass(), np.array([1.2]), MG_T, delays=17.0, method="rk4", dt=0.005)
    # two independent methods agree to RK4's C dt^4 ~ 1e-10 at t = 100
    np.testing.assert_allclose(tight.y, fixed.y, rtol=0, atol=1e-9)
    return tight.y[:, 0]


def test_mackey_glass_against_naive_reference(mg_reference):
    ts, ys = naive_rk4(mackey_glass_rhs(), lambda s: np.array([1.2]), 0.0, 100.0, 0.05, [17.0])
    # naive RK4 with dt = 0.05: discretisation error C dt^4 ~ 1e-7
    np.testing.assert_allclose(ys[::200, 0], mg_reference, rtol=0, atol=1e-6)


def test_mackey_glass_converges_with_rtol(mg_reference):
    errs = []
    for rtol in (1e-5, 1e-7, 1e-9):
        sol = ddeint(MackeyGlass(), np.array([1.2]), MG_T, delays=17.0, rtol=rtol, atol=rtol)
        errs.append(np.abs(sol.y[:, 0] - mg_reference).max())
    # tolerance proportionality: each 100x tighter rtol gains at least 10x in accuracy
    assert errs[0] > 10 * errs[1] > 100 * errs[2]
    assert errs[2] < 1e-7  # global error within a few hundred rtol


def test_mackey_glass_rk4_fourth_order(mg_reference):
    # steps that do not divide tau = 17: the solver splits steps at the discontinuities
    dts = np.array([0.3, 0.15, 0.075])  # dt = 0.4 is still pre-asymptotic at t = 100
    errs = []
    for dt in dts:
        sol = ddeint(MackeyGlass(), np.array([1.2]), MG_T, delays=17.0, method="rk4", dt=dt)
        errs.append(np.abs(sol.y[:, 0] - mg_reference).max())
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert abs(slope - 4.0) < 0.3  # convergence order of classic RK4


# --- the undelayed limit -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_tau_to_zero_reproduces_odeint(method):
    integrate = pytest.importorskip(
        "nndyn_fast.integrate", reason="odeint (nndyn_fast.integrate) not available yet"
    )
    neural = pytest.importorskip("nndyn_fast.neural", reason="NeuralODE not available yet")
    rng = np.random.default_rng(3)
    m = _random_neural(rng, d=2, H=4)
    W, A, B, b = m.layer_weights()
    ode = neural.NeuralODE(W[0], A[0] + B[0, 0], b[0], activation="tanh")
    x0 = np.array([0.3, -0.7])
    t = np.linspace(0.0, 2.0, 5)
    ref = integrate.odeint(ode, x0, t, rtol=1e-11, atol=1e-12).y
    K = lipschitz_bound(m)
    kw = {"rtol": 1e-11, "atol": 1e-12} if method == "dopri5" else {"dt": 0.01}
    diffs = []
    for tau in (1e-4, 1e-6):
        sol = ddeint(m, x0, t, delays=tau, method=method, **kw)
        diffs.append(np.abs(sol.y - ref).max())
        # |x_tau - x_0| <= C K tau e^{K T}: a crude Gronwall bound
        assert diffs[-1] < 2 * K * tau * np.exp(K * t[-1]) + 1e-8
    # first-order in tau: 100x smaller delay gives ~100x smaller difference
    assert diffs[1] < diffs[0] / 30 + 1e-9


# --- histories, batches, several delays ----------------------------------------------------------
def test_history_forms_agree():
    t = np.linspace(0.0, 3.0, 31)
    model = LinearDDE(np.array([[-0.3]]), np.array([[0.7]]))
    f_sol = ddeint(model, _cos_history, t, delays=1.3, rtol=1e-11, atol=1e-12)
    ts = np.linspace(-1.3, 0.0, 1301)
    s_sol = ddeint(
        model,
        (ts, np.cos(ts)[:, None], -np.sin(ts)[:, None]),
        t,
        delays=1.3,
        rtol=1e-11,
        atol=1e-12,
    )
    # Hermite interpolation of cos on a 1e-3 grid: h^4/384 ~ 3e-15 per unit
    np.testing.assert_allclose(s_sol.y, f_sol.y, rtol=0, atol=1e-10)
    ts2 = np.linspace(-1.3, 0.0, 5)
    c_sol = ddeint(model, np.array([1.0]), t, delays=1.3, rtol=1e-11, atol=1e-12)
    s2 = ddeint(model, (ts2, np.ones((5, 1))), t, delays=1.3, rtol=1e-11, atol=1e-12)
    # a constant sampled history is the constant history (slopes are exactly zero)
    np.testing.assert_allclose(s2.y, c_sol.y, rtol=0, atol=1e-14)


def test_batch_equals_single_and_thread_independence():
    rng = np.random.default_rng(7)
    m = _random_neural(rng, d=2, H=3, m=2)
    X = rng.normal(size=(6, 2))
    t = np.linspace(0.0, 5.0, 11)
    batch = ddeint(m, X, t, delays=[0.7, 1.9], rtol=1e-8)
    assert batch.y.shape == (11, 6, 2)
    for i in range(6):
        single = ddeint(m, X[i], t, delays=[0.7, 1.9], rtol=1e-8)
        np.testing.assert_array_equal(single.y, batch.y[:, i])  # same steps, same arithmetic
    numba.set_num_threads(1)
    try:
        one = ddeint(m, X, t, delays=[0.7, 1.9], rtol=1e-8)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(one.y, batch.y)


def test_several_delays_and_layers_against_naive():
    rng = np.random.default_rng(11)
    m = _random_neural(rng, d=2, H=4, m=2, L=2)
    W, A, B, b = m.layer_weights()
    f = neural_dde_rhs(W, A, B, b, t_layers=np.array([0.0, 0.5, 1.0]))
    x0 = np.array([0.2, -0.4])
    taus = [0.35, 0.6]  # the layer switch at 0.5 and the delays are on the 0.005 grid
    ts, ys = naive_rk4(f, lambda s: x0, 0.0, 3.0, 0.005, taus)
    sol = ddeint(m, x0, ts[::100], delays=taus, rtol=1e-11, atol=1e-12)
    # naive RK4 at dt = 0.005: C dt^4 ~ 1e-9 (steps land on every discontinuity there too)
    np.testing.assert_allclose(sol.y, ys[::100], rtol=0, atol=1e-8)


def test_streams_to_run_file(tmp_path):
    from nndyn_fast.storage import open_run

    t = np.linspace(0.0, 50.0, 101)
    mem = ddeint(MackeyGlass(), np.array([[1.2], [0.5]]), t, delays=17.0, rtol=1e-8)
    sol = ddeint(
        MackeyGlass(), np.array([[1.2], [0.5]]), t, delays=17.0, rtol=1e-8,
        out=tmp_path / "mg.h5", chunk_frames=16,
    )  # fmt: skip
    with open_run(sol.path) as run:
        # chunk ends are stepped onto, so the steps differ slightly: agreement to the tolerance
        np.testing.assert_allclose(run.read("trajectory", "value"), mem.y, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(run.read("trajectory", "time"), t)


# --- Lipschitz bound -----------------------------------------------------------------------------
def test_history_memory_is_bounded_by_the_delay_window():
    # the ring of past steps covers the delay window only: ten times the run length, the same
    # ring, far fewer slots than steps taken
    model, h = MackeyGlass(), np.array([1.2])
    short = ddeint(model, h, np.linspace(0, 200, 3), delays=17.0, method="rk4", dt=0.1)
    long = ddeint(model, h, np.linspace(0, 2000, 3), delays=17.0, method="rk4", dt=0.1)
    assert long.stats["ring_capacity"] == short.stats["ring_capacity"]
    assert long.stats["ring_capacity"] < long.stats["n_accepted"] / 50


@pytest.mark.parametrize("activation", ["relu", "softplus", "sigmoid", "identity"])
def test_neural_dde_activations_against_naive(activation):
    rng = np.random.default_rng(8)
    W, A, B, b = _random_neural(rng, d=2, H=3).layer_weights()
    m = NeuralDDE(W[0], A[0], B[0], b[0], activation=activation)
    act = {
        "relu": lambda z: np.maximum(z, 0.0),
        "softplus": lambda z: np.logaddexp(0.0, z),
        "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
        "identity": lambda z: z,
    }[activation]
    f = neural_dde_rhs(W, A, B, b, act=act)
    x0 = np.array([0.4, -0.3])
    sol = ddeint(m, x0, np.array([0.0, 2.0]), delays=0.5, method="rk4", dt=0.01)
    ys = naive_rk4(f, lambda s: x0, 0.0, 2.0, 0.01, [0.5])[1]
    # the same scheme evaluated in another order: rounding over 200 steps
    np.testing.assert_allclose(sol.y[-1], ys[-1], rtol=0, atol=1e-12)


def test_lipschitz_bound():
    assert lipschitz_bound(LinearDDE(0.0, -0.8)) == pytest.approx(0.8)
    rng = np.random.default_rng(5)
    m = _random_neural(rng, d=3, H=6, m=2)
    W, A, B, b = m.layer_weights()
    f = neural_dde_rhs(W, A, B, b)
    K = lipschitz_bound(m)
    for _ in range(200):
        x, x2 = rng.normal(size=(2, 3))
        y, y2 = rng.normal(size=(2, 2, 3))
        num = np.linalg.norm(f(0.0, x, y) - f(0.0, x2, y2))
        den = max(np.linalg.norm(x - x2), *np.linalg.norm(y - y2, axis=1))
        assert num <= K * den * (1 + 1e-12)  # a Lipschitz bound holds for every pair
    assert activation_lipschitz("gelu") == pytest.approx(1.1289, abs=1e-4)


# --- bad inputs ----------------------------------------------------------------------------------
def test_bad_inputs():
    t = np.linspace(0.0, 1.0, 3)
    lin = LinearDDE(0.0, -1.0)
    x0 = np.array([1.0])
    with pytest.raises(ValueError, match="delays must all be > 0"):
        ddeint(lin, x0, t, delays=0.0)
    with pytest.raises(ValueError, match="delays must all be > 0"):
        ddeint(lin, x0, t, delays=[1.0, -0.5])
    with pytest.raises(ValueError, match="history must be finite"):
        ddeint(lin, np.array([np.nan]), t, delays=1.0)
    with pytest.raises(ValueError, match="history has dimension 2"):
        ddeint(lin, np.ones(2), t, delays=1.0)
    with pytest.raises(ValueError, match="history must have 1 or 2 dimension"):
        ddeint(lin, np.ones((2, 2, 2)), t, delays=1.0)
    with pytest.raises(ValueError, match="history samples must cover"):
        ddeint(lin, (np.linspace(-0.5, 0, 3), np.ones((3, 1))), t, delays=1.0)
    with pytest.raises(ValueError, match="history values must have shape"):
        ddeint(lin, (np.linspace(-1, 0, 3), np.ones((4, 1))), t, delays=1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        ddeint(lin, x0, t, delays=1.0, method="euler")
    with pytest.raises(ValueError, match="dt must be given"):
        ddeint(lin, x0, t, delays=1.0, method="rk4")
    with pytest.raises(ValueError, match="dt must be a finite number > 0"):
        ddeint(lin, x0, t, delays=1.0, method="rk4", dt=-0.1)
    with pytest.raises(ValueError, match="t must be strictly increasing"):
        ddeint(lin, x0, np.array([0.0, 1.0, 0.5]), delays=1.0)
    with pytest.raises(ValueError, match="rtol must be a finite number > 0"):
        ddeint(lin, x0, t, delays=1.0, rtol=0.0)
    with pytest.raises(ValueError, match="2 delay"):
        ddeint(_random_neural(np.random.default_rng(0), d=1, m=2), x0, t, delays=1.0)
    with pytest.raises(TypeError, match="Numba-jitted"):
        ddeint(lambda t, x, xd, a: -xd[0], x0, t, delays=1.0)
    with pytest.raises(TypeError, match="Numba-jitted"):
        ddeint(lin, lambda s: np.ones(1), t, delays=1.0)
    with pytest.raises(ValueError, match="A must be square"):
        LinearDDE(np.ones((2, 3)), np.ones((2, 2)))


def test_nonfinite_state_names_the_time():
    # x(t - tau)^n with x < 0 and n = 0.5 is NaN at the first step
    with pytest.raises(NonFiniteStateError, match="non-finite after t = 0.0") as info:
        ddeint(MackeyGlass(n=0.5), np.array([-1.0]), np.linspace(0, 1, 3), delays=1.0)
    assert info.value.time == 0.0


# --- RK4 in lockstep over the batch --------------------------------------------------------------
@numba.njit
def _shifted_cos_history(t, p):
    return np.array([np.cos(t + p[0]), p[1] * t])


def _lockstep_cases(rng, B):
    """(model, batch of histories, delays): a layered NeuralDDE (layer switch = a jump of f in
    time) with two delays that are not multiples of dt, a LinearDDE with a sampled history,
    Mackey-Glass with a history function of per-member parameters."""
    ts = np.linspace(-1.0, 0.0, 9)
    ys = np.cos(ts[None, :, None] * rng.uniform(0.5, 2.0, size=(B, 1, 2)))
    lin = LinearDDE(rng.normal(size=(2, 2)) * 0.3, rng.normal(size=(2, 2, 2)) * 0.3)
    hp = np.column_stack([rng.uniform(0.0, 1.0, B), rng.uniform(0.5, 1.5, B)])
    return [
        (_random_neural(rng, d=2, H=3, m=2, L=2), rng.normal(size=(B, 2)), [0.37, 0.81], None),
        (lin, (ts, ys), [0.45, 0.73], None),
        (MackeyGlass(), _shifted_cos_history, [0.9], hp),
    ]


def _check_lockstep_case(model, hist, taus, hargs, B, members):
    t = np.array([0.0, 0.3, 1.234, 2.5, 3.0])
    batch = ddeint(model, hist, t, delays=taus, method="rk4", dt=0.05, history_args=hargs)
    assert batch.stats["lockstep"]
    assert batch.y.shape == (t.size, B, 2)
    for i in members:
        hi = None if hargs is None else hargs[i]
        single = ddeint(
            model, _member(hist, i), t, delays=taus, method="rk4", dt=0.05, history_args=hi
        )
        assert not single.stats["lockstep"]
        # the lockstep kernel repeats the per-member arithmetic operation for operation
        np.testing.assert_array_equal(batch.y[:, i], single.y)
        np.testing.assert_array_equal(
            batch.stats["per_trajectory"][i], single.stats["per_trajectory"][0]
        )
    numba.set_num_threads(1)
    try:
        one = ddeint(model, hist, t, delays=taus, method="rk4", dt=0.05, history_args=hargs)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(one.y, batch.y)  # blocks are independent of the threads


def _member(hist, i):
    if isinstance(hist, tuple):
        return (hist[0], hist[1][i])
    return hist if callable(hist) else hist[i]


@pytest.mark.parametrize("case", [0, 1, pytest.param(2, marks=pytest.mark.slow)])
def test_rk4_lockstep_equals_per_member_bitwise(monkeypatch, case):
    import nndyn_fast.delay as delay

    monkeypatch.setattr(delay, "_LOCKSTEP_BLOCK", 8)  # B = 19: blocks of 8, 8 and 3 members
    rng = np.random.default_rng(21)
    # case 2 (a history function) is marked slow
    _check_lockstep_case(*_lockstep_cases(rng, 19)[case], 19, (0, 7, 8, 18))


def test_rk4_lockstep_against_naive_reference():
    rng = np.random.default_rng(4)
    m = _random_neural(rng, d=1, H=4)
    W, A, B, b = m.layer_weights()
    f = neural_dde_rhs(W, A, B, b)
    X = np.linspace(-1.0, 1.0, 12)[:, None]
    sol = ddeint(m, X, np.array([0.0, 3.0]), delays=0.5, method="rk4", dt=0.01)
    assert sol.stats["lockstep"]
    for i in (0, 5, 11):
        ys = naive_rk4(f, lambda s, x0=X[i]: x0, 0.0, 3.0, 0.01, [0.5])[1]
        # the same RK4 and Hermite scheme evaluated in another order: rounding, ~1e3 steps
        np.testing.assert_allclose(sol.y[-1, i], ys[-1], rtol=0, atol=1e-12)


def test_rk4_lockstep_fallbacks():
    lin = LinearDDE(0.0, -1.0)
    X = np.linspace(0.5, 1.5, 10)[:, None]
    t = np.linspace(0.0, 2.0, 5)
    short = ddeint(lin, X, t, delays=0.005, method="rk4", dt=0.01)  # a delay inside the step
    assert not short.stats["lockstep"]
    long = ddeint(lin, X, t, delays=1.0, method="rk4", dt=0.01)
    assert long.stats["lockstep"]
    # the solution is linear in the constant history: exact up to rounding
    np.testing.assert_allclose(long.y[:, :, 0], np.outer(minus_delay_exact(t), X[:, 0]), atol=1e-9)
    # a member turning non-finite: the per-member path reports it by index and time
    with pytest.raises(NonFiniteStateError, match="trajectory 3 became non-finite"):
        H = np.where(np.arange(10) == 3, -1.0, 1.0)[:, None]
        ddeint(MackeyGlass(n=0.5), H, t, delays=1.0, method="rk4", dt=0.01)


def test_max_steps_bounds_a_run_that_would_never_end(tmp_path):
    """t_end = 1e308 with dopri5: the step budget (whole run, also across streamed chunks)
    stops it with IntegrationError; the streamed file keeps the frames before."""
    from nndyn_fast.integrate import IntegrationError

    t = np.array([0.0, 1.0, 1e308])
    with pytest.raises(IntegrationError, match="too many steps"):
        ddeint(LinearDDE(0.0, -1.0), np.array([1.0]), t, delays=1.0, max_steps=2000)
    out = tmp_path / "m.h5"
    with pytest.raises(IntegrationError, match="too many steps"):
        ddeint(LinearDDE(0.0, -1.0), np.array([1.0]), t, delays=1.0, max_steps=2000, out=out)
    from nndyn_fast import open_run

    with open_run(out) as f:
        assert f.status == "failed" and f.rows["trajectory"] >= 1
