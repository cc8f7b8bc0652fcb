"""Lyapunov spectra of delay equations (nndyn_fast.dde_lyapunov) against references it did not
produce: characteristic roots of linear DDEs (Lambert W, scipy root finding), Mackey-Glass's
known structure (one positive and one zero exponent, negative sums), finite differences of the
models' Jacobians, a naive numpy implementation of the method, and resume == uninterrupted."""

from __future__ import annotations

import numpy as np
import pytest
from faults import every_kill_point
from numba import njit
from reference_dde_lyapunov import reference_dde_lyap_advance
from scipy.optimize import root
from scipy.special import lambertw

import nndyn_fast.kernels.dde_lyapunov as kdl  # noqa: F401  (packaging: the kernel imports)
from nndyn_fast.dde_lyapunov import (
    _inplace_jac,
    _orthonormal_segments,
    _stencils,
    dde_lyapunov,
    segment_weights,
)
from nndyn_fast.delay import LinearDDE, MackeyGlass, NeuralDDE, ddeint
from nndyn_fast.storage import open_run


def lambert_exponents(a: float, tau: float, k: int) -> np.ndarray:
    """Top k of Re W_j(-a tau)/tau over the branches j = -K..K: the roots of
    lambda = -a exp(-lambda tau); branches j and -j - 1 (j >= 0) are conjugate, so a complex
    pair enters twice."""
    roots = [lambertw(-a * tau, j) / tau for j in range(-12, 12)]
    return np.sort([r.real for r in roots])[::-1][:k]


def char_roots_exponents(a: float, b: float, tau: float, k: int) -> np.ndarray:
    """Top k real parts of the roots of lambda + a - b exp(-lambda tau) = 0, found by
    scipy.optimize.root from a grid of starting points (complex pairs counted twice)."""

    def F(z):
        lam = complex(z[0], z[1])
        if -lam.real * tau > 700:  # far left: exp overflows, no root there
            return [1e300, 1e300]
        v = lam + a - b * np.exp(-lam * tau)
        return [v.real, v.imag]

    found: list[complex] = []
    for re0 in np.linspace(-6.0, 2.0, 9):
        for im0 in np.linspace(0.0, 40.0 / tau, 41):
            sol = root(F, [re0, im0], tol=1e-14)
            lam = sol.x[0] + 1j * abs(sol.x[1])
            if sol.success and abs(complex(*F([lam.real, lam.imag]))) < 1e-10:
                if all(abs(lam - f) > 1e-7 for f in found):
                    found.append(lam)
    reals = []
    for lam in found:
        reals += [lam.real] * (2 if abs(lam.imag) > 1e-9 else 1)
    return np.sort(reals)[::-1][:k]


# -- linear DDEs: exponents are the characteristic roots' real parts -------------------------
# T = 2000 after a transient of 20 tau: the QR estimate of each exponent has a bounded
# oscillating part (complex pairs rotate) over T, about 1e-4 here, and the discretisation error
# at dt = tau/40 is O(dt^4) ~ 1e-5 (both measured); 1e-3 leaves room.
@pytest.mark.parametrize(
    "a_tau, tau",
    [(0.2, 1.0), (1.0, 1.0), (1.5, 2.0), (1.65, 1.0)],  # 1/e < 1.0, pi/2 between 1.5 and 1.65
)
def test_minus_delay_matches_lambert_w(a_tau, tau):
    a = a_tau / tau
    k = 5
    res = dde_lyapunov(
        LinearDDE(0.0, -a), [0.0], delays=tau, k=k, t_end=2000.0 * tau, dt=tau / 40,
        transient=20.0 * tau,
    )  # fmt: skip
    ref = lambert_exponents(a, tau, k)
    np.testing.assert_allclose(res.exponents, ref, atol=1e-3, rtol=0)
    # the top exponent changes sign where the top pair crosses the axis, a tau = pi/2
    assert (res.exponents[0] > 0) == (a_tau > np.pi / 2)


@pytest.mark.parametrize("a, b, tau", [(0.5, -1.2, 1.0), (0.2, 0.5, 2.0)])
def test_linear_with_instantaneous_term_matches_root_finder(a, b, tau):
    res = dde_lyapunov(
        LinearDDE(-a, b), [0.0], delays=tau, k=4, t_end=2000.0 * tau, dt=tau / 40,
        transient=20.0 * tau,
    )  # fmt: skip
    ref = char_roots_exponents(a, b, tau, 4)
    # as for the Lambert W test: QR oscillation ~1e-4 over T, discretisation ~1e-5
    np.testing.assert_allclose(res.exponents, ref, atol=1e-3, rtol=0)


def test_refining_the_segment_changes_less_than_the_standard_error():
    """dt -> dt/2 doubles the segment's grid; the exponents move by O(dt^4), far less than
    their standard error (the statistical spread of the QR estimate over blocks)."""
    kw = {"delays": 1.0, "k": 3, "t_end": 1000.0, "transient": 20.0}
    coarse = dde_lyapunov(LinearDDE(0.0, -1.0), [0.0], dt=1 / 20, **kw)
    fine = dde_lyapunov(LinearDDE(0.0, -1.0), [0.0], dt=1 / 40, **kw)
    assert fine.dimension == 2 * coarse.dimension - 1
    assert np.all(np.abs(fine.exponents - coarse.exponents) < fine.stderr)


# -- Mackey-Glass ----------------------------------------------------------------------------
def test_mackey_glass_tau17_spectrum():
    """tau = 17 (beta 0.2, gamma 0.1, n 10): chaotic with lambda_1 ~ 5e-3 (Farmer 1982 gives
    lambda_1 ~ 7e-3 in these units for tau = 17), a zero exponent (the flow direction), and
    contracting sums. Tolerances: statistics, 3 standard errors of the batch-means estimate."""
    kw = {"delays": 17.0, "k": 4, "t_end": 6000.0, "transient": 300.0}
    runs = {dt: dde_lyapunov(MackeyGlass(), [0.9], dt=dt, **kw) for dt in (0.34, 0.17)}
    for r in runs.values():
        lam, se = r.exponents, r.stderr
        assert 0.0 < lam[0] - 2 * se[0] and lam[0] < 0.02
        assert abs(lam[1]) < 3 * se[1]
        assert np.all(lam[2:] < 0) and r.sum < 0
    a, b = runs[0.34], runs[0.17]
    # lambda_1 stable as dt is halved: different grids give different chaotic trajectories,
    # so the two estimates agree within their combined standard error (3 sigma)
    assert abs(a.exponents[0] - b.exponents[0]) < 3 * np.hypot(a.stderr[0], b.stderr[0])
    # independent of the tangent machinery: the growth rate of the separation of two nearby
    # solutions integrated by ddeint (its own RK4 with Hermite history), over t in [300, 3000],
    # for two pairs; finite-time rates scatter by ~1e-3 (the standard error above), so 2e-3
    t = np.arange(0.0, 3001.0)
    H = np.array([[0.9], [0.9 + 1e-10], [0.5], [0.5 + 1e-10]])
    y = ddeint(MackeyGlass(), H, t, delays=17.0, method="rk4", dt=0.05).y[:, :, 0]
    rates = []
    for p in (0, 2):
        sep = np.abs(y[:, p + 1] - y[:, p])
        s0, s1 = sep[300 - 17 : 301].max(), sep[3000 - 17 :].max()  # sup over a segment
        rates.append(np.log(s1 / s0) / 2700.0)
    assert abs(np.mean(rates) - b.exponents[0]) < 2e-3


# -- the method itself -----------------------------------------------------------------------
def test_kernel_matches_numpy_reference():
    """A few reorthonormalisations of Mackey-Glass: the compiled kernel and the naive numpy
    reference of the same method agree to rounding (a few ulps amplified over 200 steps)."""
    model = MackeyGlass()
    tau, dt, k = 1.7, 0.1, 3
    res = dde_lyapunov(model, [0.7], delays=tau, k=k, t_end=20.0, dt=dt, reorth_every=7,
                       n_records=1)  # fmt: skip
    Nj = np.array([17])
    R = 18
    wq = segment_weights(R, dt)
    w_rows = wq[(np.arange(R) - 1) % R]
    V = _orthonormal_segments(np.random.default_rng(0), 1, k, R, 1, w_rows)[0]
    V = V[:, (1 + np.arange(R)) % R].copy()  # ring rows at n = 0 -> oldest first
    X = np.full((R, 1), 0.7)
    off, w = _stencils(Nj, 17)

    def f(t, x, xd):
        v = xd[0]
        return model.beta * v / (1.0 + v**model.n) - model.gamma * x

    logsum = np.zeros(k)
    reference_dde_lyap_advance(
        f, model.jacobian, X, V, Nj, off, w, wq, 0.0, 0, dt, 200, 7, logsum
    )  # fmt: skip
    np.testing.assert_allclose(res.X[0], X, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.V[0], V, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(res.per_member[0], logsum / 20.0, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["linear", "mackey", "neural"])
def test_model_jacobians_match_finite_differences(name):
    rng = np.random.default_rng(3)
    if name == "linear":
        model = LinearDDE(rng.normal(size=(2, 2)), rng.normal(size=(2, 2, 2)))
        d, m = 2, 2
    elif name == "mackey":
        model = MackeyGlass()
        d, m = 3, 1
    else:
        H, d, m = 5, 2, 2
        model = NeuralDDE(rng.normal(size=(d, H)), rng.normal(size=(H, d)),
                          rng.normal(size=(m, H, d)), rng.normal(size=H))  # fmt: skip
    x, xd = rng.uniform(0.3, 1.2, d), rng.uniform(0.3, 1.2, (m, d))

    def field(x, xd):
        if name == "linear":
            return model._A @ x + np.einsum("kij,kj->i", model._B, xd)
        if name == "mackey":
            return model.beta * xd[0] / (1 + xd[0] ** model.n) - model.gamma * x
        W, A, B, b = model.layer_weights()
        return W[0] @ np.tanh(A[0] @ x + np.einsum("khd,kd->h", B[0], xd) + b[0])

    J = model.jacobian(0.0, x, xd)
    assert J.shape == (m + 1, d, d)
    h = 1e-6
    for j in range(d):
        e = np.zeros(d)
        e[j] = h
        np.testing.assert_allclose(
            J[0][:, j], (field(x + e, xd) - field(x - e, xd)) / (2 * h), atol=1e-8
        )  # fmt: skip  (central differences: O(h^2))
        for q in range(m):
            E = np.zeros((m, d))
            E[q, j] = h
            fd = (field(x, xd + E) - field(x, xd - E)) / (2 * h)
            np.testing.assert_allclose(J[1 + q][:, j], fd, atol=1e-8)


@njit
def mg_field(t, x, xd, args, out):
    p = args[0]
    v = xd[0, 0]
    out[0] = p[0] * v / (1.0 + v ** p[2]) - p[1] * x[0]


@njit
def mg_jac(t, x, xd, args, J):
    p = args[0]
    v = xd[0, 0]
    vn = v ** p[2]
    J[0, 0, 0] = -p[1]
    J[1, 0, 0] = p[0] * (1.0 + (1.0 - p[2]) * vn) / ((1.0 + vn) * (1.0 + vn))


@njit
def mg_jac_simple(t, x, xd, args):
    J = np.zeros((2, 1, 1))
    mg_jac(t, x, xd, args, J)
    return J


def test_user_field_gives_the_built_in_spectrum():
    """A user field with its Jacobian gives the built-in model's exponents (one member: a
    user function compiles the kernel afresh, the serial kernel is the cheaper one)."""
    p = np.array([0.2, 0.1, 10.0])
    kw = {"delays": 17.0, "k": 2, "t_end": 300.0, "dt": 0.34}
    built = dde_lyapunov(MackeyGlass(), [0.9], **kw)
    user = dde_lyapunov(mg_field, [0.9], jac=mg_jac, args=(p,), **kw)
    # the same formulas, another order of operations: rounding amplified by chaos over t = 300
    # (lambda_1 t ~ 1.5, a factor of a few)
    np.testing.assert_allclose(user.per_member, built.per_member, rtol=1e-7, atol=1e-10)


def test_simple_form_jacobian_adapter():
    """jac(t, x, xd, args) -> J is wrapped into the in-place form the kernel calls."""
    p = (np.array([0.2, 0.1, 10.0]),)
    g = _inplace_jac(mg_jac_simple)
    x, xd = np.array([0.8]), np.array([[1.1]])
    J1, J2 = np.zeros((2, 1, 1)), np.zeros((2, 1, 1))
    g(0.0, x, xd, p, J1)
    mg_jac(0.0, x, xd, p, J2)
    np.testing.assert_array_equal(J1, J2)
    np.testing.assert_allclose(J2, MackeyGlass().jacobian(0.0, x, xd), rtol=1e-14)


def test_batch_member_equals_alone():
    """A batch runs its members in parallel (prange), each exactly as it runs alone, so the
    results do not depend on the number of threads."""
    from nndyn_fast.threads import set_threads

    kw = {"delays": 17.0, "k": 2, "t_end": 300.0, "dt": 0.34}
    hist = np.array([[0.9], [1.1], [0.5]])
    batch = dde_lyapunov(MackeyGlass(), hist, **kw)
    prev = set_threads(1)
    try:
        serial = dde_lyapunov(MackeyGlass(), hist, **kw)
    finally:
        set_threads(prev)
    np.testing.assert_array_equal(serial.per_member, batch.per_member)
    one = dde_lyapunov(MackeyGlass(), hist[1], **kw)
    np.testing.assert_array_equal(one.per_member[0], batch.per_member[1])
    np.testing.assert_array_equal(one.V[0], batch.V[1])


# -- run files -------------------------------------------------------------------------------
def _run_mg(out, resume=False):
    return dde_lyapunov(
        MackeyGlass(), [[0.9], [1.2]], delays=1.7, k=2, t_end=40.0, dt=0.1, transient=3.0,
        n_records=3, n_blocks=2, out=out, resume=resume,
    )  # fmt: skip


def _rows(path):
    with open_run(path) as f:
        return {f"{s}/{n}": f.read(s, n) for s in f.rows for n in f[s]}


def test_kill_and_resume_bitwise(tmp_path):
    ref_path = tmp_path / "ref.h5"
    ref = _run_mg(ref_path)
    want = _rows(ref_path)
    with open_run(ref_path) as f:
        assert f.chunks == 3
        want_summary = f.summary
    np.testing.assert_array_equal(want["running/estimate"][-1], ref.exponents)
    out = tmp_path / "k.h5"
    got = {}

    def run():
        got["res"] = _run_mg(out)

    def resume():
        got["res"] = _run_mg(out, resume=True)

    def check():
        with open_run(out) as f:
            assert f.status == "complete"
            assert f.summary == want_summary
        rows = _rows(out)
        for key in want:
            np.testing.assert_array_equal(rows[key], want[key], err_msg=key)
        for name in ("exponents", "stderr", "running", "per_member", "X", "V"):
            np.testing.assert_array_equal(getattr(got["res"], name), getattr(ref, name))

    seen = every_kill_point(out, run, resume, check)
    assert seen["resumed"] > 5


def test_resume_refuses_a_different_run(tmp_path):
    out = tmp_path / "r.h5"
    _run_mg(out)
    with pytest.raises(ValueError, match="k"):
        dde_lyapunov(MackeyGlass(), [[0.9], [1.2]], delays=1.7, k=3, t_end=40.0, dt=0.1,
                     transient=3.0, n_records=3, n_blocks=2, out=out, resume=True)  # fmt: skip


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"delays": 0.0}, "delays must all be > 0"),
        ({"delays": [1.0, -1.0]}, "delays must all be > 0"),
        ({"dt": 0.3}, "dt must divide every delay"),
        ({"dt": 0.5}, "max\\(delays\\) / dt must be >= 3"),
        ({"k": 12}, "k must be <= the discretised dimension"),
        ({"k": 0}, "k"),
        ({"t_end": -1.0}, "t_end"),
        ({"transient": -1.0}, "transient"),
        ({"resume": True}, "resume=True needs out"),
        ({"jac": mg_jac}, "jac is for a user field"),
    ],
)
def test_bad_input(kw, match):
    args = {"delays": 1.0, "k": 2, "t_end": 10.0, "dt": 0.1}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        dde_lyapunov(MackeyGlass(), [1.0], **args)


def test_user_field_needs_its_jacobian():
    p = np.array([0.2, 0.1, 10.0])
    kw = {"delays": 1.0, "k": 2, "t_end": 10.0, "dt": 0.1, "args": (p,)}
    with pytest.raises(ValueError, match="jac must be given"):
        dde_lyapunov(mg_field, [1.0], **kw)

    @njit
    def bad_shape(t, x, xd, p):
        return np.zeros((1, 1, 1))

    with pytest.raises(ValueError, match="shape \\(m \\+ 1, d, d\\)"):
        dde_lyapunov(mg_field, [1.0], jac=bad_shape, **kw)
    with pytest.raises(TypeError, match="jac"):
        dde_lyapunov(mg_field, [1.0], jac=lambda t, x, xd, p, J: None, **kw)


def test_memory_exponents_against_the_threshold():
    """Neural DDEs x' = W tanh(B x(t - tau)) with K tau e below 1: lambda_1 is the real root
    Re W_0(-c tau)/tau of the linearisation at the equilibrium and the gap to lambda_2 is open;
    with c tau e > 1 the top pair is complex (gap closed, its mean the root's real part)."""
    from nndyn_fast.memory_capacity import memory_exponents

    r = memory_exponents([0.2, 0.3, 1.0], t_end=400.0)
    assert np.all(r["K_tau_e"][:2] < 1) and r["c_tau"][2] * np.e > 1
    # real roots: QR converges at O(exp(-gap t)), discretisation O(dt^4) ~ 1e-5
    np.testing.assert_allclose(r["exponents"][:2, 0], r["linear_prediction"][:2], atol=1e-3)
    assert np.all(r["gap"][:2] > 1.0)
    # a complex pair: each estimate oscillates by O(1/T) ~ 1e-2 around the real part at T = 400,
    # their mean (half the pair's area growth) converges like the sum of the two
    assert abs(r["gap"][2]) < 0.02
    assert abs(r["exponents"][2, :2].mean() - r["linear_prediction"][2]) < 1e-3


# -- CLI and figures -------------------------------------------------------------------------
def test_cli_lyapunov_writes_the_run_and_the_figure(tmp_path, capsys):
    """``nndyn dde lyapunov`` for x' = -x(t - 1): its exponents are Lambert W roots."""
    from nndyn_fast.cli import main

    out, fig = tmp_path / "l.h5", tmp_path / "l.png"
    args = ["dde", "lyapunov", "--model", "linear", "--a", "0", "--b", "-1", "--tau", "1",
            "--history", "0", "--k", "2", "--t-end", "1000", "--transient", "20", "--dt",
            "0.025", "--out", str(out), "--plot", str(fig)]  # fmt: skip
    assert main(args) == 0
    assert fig.stat().st_size > 0
    with open_run(out) as f:
        lam = np.array(f.summary["exponents"])
    # a complex pair: O(1/T) oscillation of each estimate ~ 1e-3 at T = 1000
    np.testing.assert_allclose(lam, lambert_exponents(1.0, 1.0, 2), atol=3e-3)
    assert "lambda_1" in capsys.readouterr().out
    assert main([*args[:-4], "--dt", "0.3", "--out", str(tmp_path / "x.h5")]) == 2


def test_plots_take_axes_and_draw_zero(tmp_path):
    from matplotlib.figure import Figure

    from nndyn_fast.plots import plot_dde_lyapunov, plot_memory_exponents

    res = dde_lyapunov(MackeyGlass(), [0.9], delays=1.7, k=2, t_end=20.0, dt=0.1, n_records=4)
    ax = Figure().subplots()
    fig = plot_dde_lyapunov(res, ax=ax)
    assert fig is ax.figure and len(ax.get_lines()) == 3  # two estimates and the zero line
    table = {
        "K_tau_e": np.array([0.5, 2.0]), "exponents": np.array([[-0.1, -2.0], [-0.4, -0.4]]),
        "linear_prediction": np.array([-0.1, -0.4]), "gap": np.array([1.9, 0.0]),
        "theory_threshold": 1.0,
    }  # fmt: skip
    fig = plot_memory_exponents(table, tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 0
    with pytest.raises(TypeError, match="DDELyapunovSpectrum"):
        plot_dde_lyapunov(42)
