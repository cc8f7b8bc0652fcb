"""Noisy networks (nndyn_fast.noise, kernels.stochastic) against references they did not produce:
published Philox answers, the exact law of Brownian increments, the self-consistency equation of
the noisy Kuramoto model, the linear fluctuation theory of the incoherent state (threshold
K_c = σ²/λ_max), a convergence slope, and the bitwise properties of the run lifecycle."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from faults import every_kill_point
from scipy import stats
from scipy.optimize import brentq
from scipy.special import ive

from nndyn_fast import Graphon
from nndyn_fast.graphs import DigraphMeasure
from nndyn_fast.kernels import stochastic as ks
from nndyn_fast.kernels.activations import ACTIVATIONS
from nndyn_fast.meanfield import Coupling, FiringRate, Kuramoto, simulate
from nndyn_fast.storage import open_run

TWO_PI = 2.0 * np.pi


def test_philox_matches_the_published_known_answers():
    # Random123 kat_vectors, philox4x32 with 10 rounds
    cases = [
        ((0, 0, 0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 6, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for args, want in cases:
        assert tuple(int(w) for w in ks.philox4x32(*args)) == want


def test_increments_with_no_coupling_have_variance_sigma2_t():
    """K = 0: θ_i(t) − θ_i(0) − ω_i t = σ B_i(t) exactly under Euler–Maruyama (and Heun: the
    drift is constant), so the n = N·R values are i.i.d. N(0, σ² t)."""
    N, R, sigma, dt, steps = 100, 20, 0.7, 0.1, 40
    rng = np.random.default_rng(0)
    omega = rng.normal(size=N)
    theta0 = rng.uniform(0, TWO_PI, N)
    for method in ("em", "heun"):
        m = Kuramoto(omega, np.zeros((N, N)), 0.0)
        run = simulate(
            m, theta0, steps * dt, dt, noise=sigma, method=method, seed=5, realisations=R,
            save_every=steps,
        )  # fmt: skip
        t = run.frame_t[-1]
        x = (run.frames[-1] - theta0 - omega * t).ravel() / (sigma * np.sqrt(t))
        n = x.size
        # mean of n standard normals: |mean| < 4/sqrt(n) fails with probability 6e-5
        assert abs(x.mean()) < 4.0 / np.sqrt(n)
        # (n − 1) s² ~ χ²_{n−1}: a two-sided 1e-4 interval
        q = (n - 1) * x.var(ddof=1)
        assert stats.chi2.ppf(5e-5, n - 1) < q < stats.chi2.ppf(1 - 5e-5, n - 1)
        # the steps are independent too: the one-step increments have variance σ² dt
        one = simulate(m, theta0, dt, dt, noise=sigma, method=method, seed=5, realisations=R)
        y = (one.frames[1] - theta0 - omega * dt).ravel() / (sigma * np.sqrt(dt))
        qy = (n - 1) * y.var(ddof=1)
        assert stats.chi2.ppf(5e-5, n - 1) < qy < stats.chi2.ppf(1 - 5e-5, n - 1)
        # and the correlation of step 1 with the rest of the path is 0 (within 4/sqrt(n))
        rest = x * np.sqrt(steps) - y
        assert abs(np.corrcoef(y, rest)[0, 1]) < 4.0 / np.sqrt(n)


def _r_infinity(K: float, D: float) -> float:
    """Root r > 0 of r = I_1(K r / D) / I_0(K r / D) (scaled Bessel functions: no overflow)."""
    return brentq(lambda r: r - ive(1, K * r / D) / ive(0, K * r / D), 1e-9, 1.0)


def test_stationary_order_parameter_solves_the_self_consistency_equation():
    """All-to-all identical oscillators with noise σ: r_∞ solves r = I_1(Kr/D)/I_0(Kr/D),
    D = σ²/2. R independent realisations give the standard error of the time average; the
    finite-N bias of r is O(1/N) and Heun's weak error O(dt²) (dt² K² ~ 3e-3 ... well below)."""
    N, R, K, sigma, dt = 500, 8, 2.0, 1.0, 0.025
    rng = np.random.default_rng(1)
    m = Kuramoto(np.zeros(N), Graphon.constant(1.0), K)
    run = simulate(
        m, rng.uniform(0, TWO_PI, (R, N)), 40.0, dt, noise=sigma, seed=3, realisations=R,
        save_every=1600,
    )  # fmt: skip
    per_real = run.r[run.t > 15.0].mean(axis=0)  # after the transient (relaxation time ~ 1)
    se = per_real.std(ddof=1) / np.sqrt(R)
    want = _r_infinity(K, sigma**2 / 2)
    assert abs(per_real.mean() - want) < 4 * se + 1.0 / N


def _fluctuation(coupling, N, K, sigma, R=16, T=80.0, dt=0.1, seed=4):
    """N <r²> per realisation (time average after a burn-in of 10 relaxation times)."""
    rng = np.random.default_rng(seed)
    m = Kuramoto(np.zeros(N), coupling, K)
    run = simulate(
        m, rng.uniform(0, TWO_PI, (R, N)), T + 10.0, dt, noise=sigma, seed=seed,
        realisations=R, save_every=10**6,
    )  # fmt: skip
    return N * (run.r[run.t > 10.0] ** 2).mean(axis=0), run


@pytest.mark.parametrize("family", ["complete", "erdos-renyi", "ring"])
def test_onset_of_synchrony_is_sigma2_over_lambda_max(family):
    """Below the onset, the mode z_v = Σ_i v_i e^{iθ_i} of each eigenvector v of W/N (eigenvalue
    λ) is an Ornstein–Uhlenbeck process (linearised Fokker–Planck) with decay (σ² − Kλ)/2 and
    E|z_v|² = 1/(1 − Kλ/σ²); the constant vector is (nearly) the top one, so
    N <r²> = 1/(1 − K/K_c) with K_c = σ²/λ_max. At K = K_c/2 the measured N <r²> gives
    K_c_hat = K y/(y − 1); it must agree with σ²/λ_max within 4 standard errors (from the
    spread over realisations) plus the part of N <r²> outside the top mode (ER: c² below 1).
    Above the onset (K = 2 K_c) r is O(1), far above the O(N^{-1/2}) level."""
    N, sigma = 100, 1.0
    rng = np.random.default_rng(7)
    if family == "complete":
        coupling, W = Graphon.constant(1.0), np.ones((N, N))
    elif family == "erdos-renyi":
        A = np.triu((rng.random((N, N)) < 0.5).astype(float), 1)
        coupling = W = A + A.T
    else:
        coupling, W = Graphon.ring(0.25), Graphon.ring(0.25).matrix(N)
    lam, V = np.linalg.eigh(W / N)
    lam_max = lam[-1]
    if family == "ring":  # the circulant's constant mode: the Fourier value 2r within O(1/N)
        assert abs(lam_max - 0.5) < 2.0 / N
    Kc = sigma**2 / lam_max
    K = 0.5 * Kc
    y_r, _ = _fluctuation(coupling, N, K, sigma)
    y, se_y = y_r.mean(), y_r.std(ddof=1) / np.sqrt(y_r.size)
    # the full linear prediction Σ_k c_k² / (1 − K λ_k / σ²), c_k = <1/sqrt(N), v_k>
    c2 = (V.sum(axis=0) / np.sqrt(N)) ** 2
    full = float(np.sum(c2 / (1.0 - K * lam / sigma**2)))
    assert abs(y - full) < 4 * se_y + 3.0 / np.sqrt(N)  # + nonlinear O(N^{-1/2}) corrections
    Kc_hat = K * y / (y - 1.0)
    se_K = K * se_y / (y - 1.0) ** 2
    mixing = K * abs(full - 2.0) / (full - 1.0) ** 2  # shift from modes other than the top one
    assert abs(Kc_hat - Kc) < 4 * se_K + mixing + 0.1 * Kc
    _, above = _fluctuation(coupling, N, 2 * Kc, sigma, R=2, T=20.0)
    assert above.r[above.t > 15.0].mean() > 0.5  # r_∞(K = 2 K_c) = 0.83 on the complete graph


def test_heun_converges_with_strong_order_one_on_a_linear_problem():
    """dx = (−x + (K/N) W x + I) dt + σ dB (rate model, identity activation): a coarse run whose
    increments are sums of the fine ones (``sub``) against a fine Heun run on the same path."""
    N, R, sigma, T = 4, 200, 0.5, 1.0
    rng = np.random.default_rng(2)
    W = rng.normal(size=(N, N))
    c = Coupling(W, N)
    drive = rng.normal(size=N)
    x0 = rng.normal(size=N)
    fine = 1024

    identity = ACTIVATIONS["identity"]

    def final(steps, sub):
        X = np.tile(x0, (R, 1))
        done = np.zeros(R, np.int64)
        frames = np.empty((2, R, N))
        obs = np.empty((steps, R, 2))
        ks.noisy_advance(
            1, identity, X, drive, 1.0 / N, 0.0, np.ones(1), sigma, T / steps, ks.HEUN, steps,
            steps, 0, 11, 12, sub, c.kind, c.cp, c.wfun, 0, R, False, done, frames, obs,
        )  # fmt: skip
        return X

    ref = final(fine, 1)
    ms = np.array([16, 32, 64, 128])
    err = [np.sqrt(np.mean((final(m, fine // m) - ref) ** 2)) for m in ms]
    slope = np.polyfit(np.log(T / ms), np.log(err), 1)[0]
    assert abs(slope - 1.0) < 0.3  # strong order 1 for additive noise


def test_noise_free_stochastic_run_equals_euler_on_every_coupling_kind():
    """σ = 0 turns Euler–Maruyama into Euler: the serial sums of the realisation-parallel path
    against the deterministic kernels, for every form of W, bit for bit (the serial sums are
    the deterministic kernels' own row sums, taken unit by unit on one thread)."""
    N = 24
    rng = np.random.default_rng(3)
    Wd = rng.random((N, N))
    omega = rng.normal(size=N)
    theta0 = rng.uniform(0, TWO_PI, N)
    kinds = [
        (Wd, "float64"),
        (Wd, "float32"),
        (sp.csr_matrix(np.where(Wd > 0.6, Wd, 0.0)), "float64"),
        (Graphon.small_world(0.2, 0.1), "float64"),
        (Coupling(Graphon.small_world(0.2, 0.1), N, pairwise=True), "float64"),
        (DigraphMeasure(Graphon.directed_ring(0.3), N), "float64"),
    ]
    for W, dtype in kinds:
        m = Kuramoto(omega, W, 1.5, alpha=0.3, dtype=dtype)
        det = simulate(m, theta0, 1.0, 0.05, method="euler")
        sto = simulate(m, theta0, 1.0, 0.05, method="em", noise=0.0, realisations=2)
        np.testing.assert_array_equal(sto.state[1], det.state)
    # one realisation takes the deterministic row sums: the same bits as Euler
    m = Kuramoto(omega, Wd, 1.5)
    det = simulate(m, theta0, 1.0, 0.05, method="euler")
    one = simulate(m, theta0, 1.0, 0.05, method="em", noise=0.0)
    np.testing.assert_array_equal(one.state, det.state)
    # the rate model
    fr = FiringRate(omega, Wd, 0.8, "tanh")
    det = simulate(fr, theta0, 1.0, 0.05, method="euler")
    sto = simulate(fr, theta0, 1.0, 0.05, method="em", noise=0.0, realisations=2)
    np.testing.assert_array_equal(sto.state[0], det.state)


def test_a_realisation_alone_is_bitwise_that_realisation_in_a_batch():
    """One realisation takes the row-parallel sums, a batch the serial ones on threads of its
    own: both are the same row sums, so realisation 0 has the same bits either way (with noise,
    Heun, on every form of W that has its own code path)."""
    N = 20
    rng = np.random.default_rng(13)
    Wd = rng.random((N, N))
    omega = rng.normal(size=N)
    theta0 = rng.uniform(0, TWO_PI, N)
    for W in (Wd, sp.csr_matrix(np.where(Wd > 0.6, Wd, 0.0)), Graphon.small_world(0.2, 0.1),
              Coupling(Graphon.power_law(0.3), N, pairwise=True)):  # fmt: skip
        m = Kuramoto(omega, W, 1.5, alpha=0.3)
        one = simulate(m, theta0, 0.5, 0.05, method="heun", noise=0.4, seed=5)
        many = simulate(m, theta0, 0.5, 0.05, method="heun", noise=0.4, seed=5, realisations=3)
        np.testing.assert_array_equal(many.state[0], one.state)


def test_higher_harmonics_are_the_fourier_sum():
    """D = b_1 sin φ + b_2 sin 2φ: one Euler step against the sum computed here with numpy."""
    N = 10
    rng = np.random.default_rng(4)
    W = rng.random((N, N))
    omega = rng.normal(size=N)
    th = rng.uniform(0, TWO_PI, N)
    b = [0.7, -0.4]
    m = Kuramoto(omega, W, 2.0)
    run = simulate(m, th, 0.01, 0.01, method="em", noise=0.0, coupling_fn=b, realisations=2)
    diff = th[None, :] - th[:, None]
    f = omega + 2.0 / N * (W * (b[0] * np.sin(diff) + b[1] * np.sin(2 * diff))).sum(axis=1)
    np.testing.assert_allclose(run.state[0], th + 0.01 * f, rtol=0, atol=1e-14)


def _noisy_run(path, resume=False):
    rng = np.random.default_rng(8)
    N = 8
    m = Kuramoto(rng.normal(size=N), rng.random((N, N)), 1.0)
    return simulate(
        m, rng.uniform(0, TWO_PI, N), 2.0, 0.1, noise=0.5, seed=9, realisations=3,
        save_every=2, chunk_steps=8, out=path, resume=resume,
    )  # fmt: skip


def _rows(path):
    with open_run(path) as f:
        return {
            f"{s}/{c}": f.read(s, c)
            for s in ("trajectory", "observables")
            for c in ("time", "value")
        }


def test_every_kill_point_of_a_noisy_run_resumes_bitwise(tmp_path):
    ref_path = tmp_path / "ref.h5"
    ref = _noisy_run(ref_path)
    want = _rows(ref_path)
    out = tmp_path / "k.h5"
    got = {}

    def run():
        got["res"] = _noisy_run(out)

    def resume():
        got["res"] = _noisy_run(out, resume=True)

    def check():
        with open_run(out) as f:
            assert f.status == "complete"
        rows = _rows(out)
        for key in want:
            np.testing.assert_array_equal(rows[key], want[key], err_msg=key)
        np.testing.assert_array_equal(got["res"].state, ref.state)

    seen = every_kill_point(out, run, resume, check)
    assert seen["resumed"] > 0


def test_result_does_not_depend_on_the_thread_count():
    rng = np.random.default_rng(6)
    N = 16
    m = Kuramoto(rng.normal(size=N), rng.random((N, N)), 1.0)
    th = rng.uniform(0, TWO_PI, N)
    before = numba.get_num_threads()
    try:
        res = {}
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(t)
            res[t] = simulate(m, th, 1.0, 0.1, noise=0.3, seed=1, realisations=5).frames
            # one realisation: the row-parallel kernel, called directly (the API would pick one
            # thread for so small a network)
            c = Coupling(np.ones((N, N)), N)
            X = np.tile(th, (1, 1))
            ks.noisy_advance(
                0, 0, X, m.omega, 1.0 / N, 0.0, np.ones(1), 0.3, 0.1, ks.HEUN, 10, 10, 0, 1,
                2, 1, c.kind, c.cp, c.wfun, 0, 1, True, np.zeros(1, np.int64),
                np.empty((2, 1, N)), np.empty((10, 1, 2)),
            )  # fmt: skip
            res[(t, "rows")] = X
    finally:
        numba.set_num_threads(before)
    ts = [k for k in res if not isinstance(k, tuple)]
    np.testing.assert_array_equal(res[ts[0]], res[ts[-1]])
    np.testing.assert_array_equal(res[(ts[0], "rows")], res[(ts[-1], "rows")])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"noise": -0.1}, "noise must be a finite number >= 0"),
        ({"noise": float("nan")}, "noise must be finite"),
        ({"noise": 0.1, "method": "milstein"}, "method must be one of"),
        ({"noise": 0.1, "method": "dopri5"}, r"with noise, method must be one of \['em', 'heun'\]"),
        ({"noise": 0.1, "coupling_fn": {"sin": [1.0], "cos": [0.0, 0.2]}}, "must be odd"),
        ({"noise": 0.1, "coupling_fn": {"sine": [1.0]}}, "takes the keys"),
        ({"noise": 0.1, "realisations": 0}, "realisations"),
        ({"noise": 0.1, "seed": -1}, "seed must be"),
        ({"method": "em"}, "method must be one of"),
        ({"seed": 3}, "options of noisy runs"),
    ],
)
def test_bad_noise_options_are_refused_before_any_kernel(kw, match, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a kernel ran")

    monkeypatch.setattr(ks, "noisy_advance", boom)
    m = Kuramoto(np.zeros(4), np.ones((4, 4)), 1.0)
    with pytest.raises(ValueError, match=match):
        simulate(m, np.zeros(4), 1.0, 0.1, **kw)


def test_cli_noisy_run_and_its_plot(tmp_path, capsys):
    from nndyn_fast import plots
    from nndyn_fast.cli import main

    out = tmp_path / "n.h5"
    args = ["kuramoto", "--N", "40", "--K", "3", "--freq", "normal", "--width", "0.01"]
    args += ["--noise", "1", "--realisations", "3", "--t-end", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    with open_run(out) as f:
        assert f.params["method"] == "heun" and f.params["noise"] == 1.0
        assert f.read("observables", "value").shape == (41, 3, 2)
    fig = plots.plot_network_run(out, tmp_path / "n.png")
    assert (tmp_path / "n.png").stat().st_size > 0
    assert len(fig.axes) == 2
    # the noise changes the run: a different seed, different phases
    out2 = tmp_path / "n2.h5"
    assert main([*args[:-3], "--seed", "1", "--out", str(out2), "--quiet"]) == 0
    with open_run(out) as f, open_run(out2) as g:
        assert not np.array_equal(f.read("trajectory", "value"), g.read("trajectory", "value"))


def test_a_blow_up_stops_every_realisation_at_the_first_bad_step(tmp_path):
    """dx = (−x + K x̄) dt + σ dB with K = 400 grows like e^{399 t}: a realisation overflows,
    the run stops with an error naming the step, and the file keeps exactly the rows of the
    steps every realisation finished (equal to those of a run that stops before)."""
    from nndyn_fast.errors import NonFiniteStateError

    N, R = 4, 3
    fr = FiringRate(np.zeros(N), np.ones((N, N)), 400.0 * N, "identity")
    kw = {"noise": 0.1, "seed": 2, "realisations": R, "chunk_steps": 16}
    x0 = np.linspace(1.0, 2.0, N)
    with pytest.raises(NonFiniteStateError, match=r"became non-finite at step (\d+)") as e:
        simulate(fr, x0, 20.0, 0.05, out=tmp_path / "b.h5", **kw)
    bad = e.value.step
    assert 16 < bad < 400  # e^{399 · 0.05 · k} passes 1e308 after about 36 steps
    with open_run(tmp_path / "b.h5") as f:
        assert f.status == "failed"
        kept = f.read("observables", "value")
        assert kept.shape[0] == bad  # t = 0 and the bad − 1 good steps
    good = simulate(fr, x0, (bad - 1) * 0.05, 0.05, **kw)
    np.testing.assert_array_equal(kept, good.obs)
    assert np.all(np.isfinite(kept))
