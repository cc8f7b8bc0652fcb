"""Network simulations against theory: Ott–Antonsen, Kuramoto's onset, graphon limits,
twisted states on ring graphons."""

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from nndyn_fast import Graphon, Kuramoto, rhs, simulate, twisted_state, w_random_graph

COMPLETE = Graphon.constant(1.0)


def _quantiles(dist, n):
    """Deterministic frequencies: the distribution's quantiles at (i − 1/2)/N."""
    return dist.ppf((np.arange(1, n + 1) - 0.5) / n)


def _stationary_r(model, n, seed, t_end=80.0, t_from=40.0):
    theta0 = np.random.default_rng(seed).uniform(0, 2 * np.pi, n)
    run = simulate(model, theta0, t_end, 0.05)
    r = run.r[run.t > t_from]
    return r.mean(), r.std()


def test_ott_antonsen_lorentzian_above_threshold():
    gamma, K = 0.5, 2.0
    r_inf = np.sqrt(1 - 2 * gamma / K)  # Ott–Antonsen stationary state, N → ∞
    errs, stds = [], []
    for n in (2000, 20000):
        mean, std = _stationary_r(
            Kuramoto(_quantiles(stats.cauchy(0, gamma), n), COMPLETE, K), n, seed=0
        )
        errs.append(abs(mean - r_inf))
        stds.append(std)
    # finite-N fluctuations of r are O(N^-1/2): ~0.008 at N = 2000, ~0.0025 at N = 20000
    assert errs[0] < 0.01 and errs[1] < 0.003, errs
    # the fluctuations shrink like N^-1/2 (factor sqrt(10) ≈ 3.2; allow 2 to 5)
    assert 2.0 < stds[0] / stds[1] < 5.0, stds


def test_incoherence_below_threshold_is_order_root_n():
    gamma, K = 0.5, 0.5  # K < K_c = 2γ = 1
    for n in (2000, 20000):
        rng = np.random.default_rng(1)
        mean, _ = _stationary_r(Kuramoto(gamma * rng.standard_cauchy(n), COMPLETE, K), n, 1)
        # incoherent state: r ~ c / sqrt(N) with c = O(1) (≈ 1.1-1.5 here); 4 is a loose bound
        assert mean * np.sqrt(n) < 4.0, (n, mean)


def _self_consistent_r(K, g):
    """Kuramoto's self-consistency r = K r ∫ cos²φ g(K r sin φ) dφ over |φ| < π/2."""

    def f(r):
        return (
            K
            * integrate.quad(
                lambda p: np.cos(p) ** 2 * g(K * r * np.sin(p)), -np.pi / 2, np.pi / 2
            )[0]
            - 1
        )

    return optimize.brentq(f, 1e-9, 1.0)


@pytest.mark.slow
def test_gaussian_onset_and_self_consistency():
    n, g = 20000, stats.norm(0, 1)
    K_c = 2 / (np.pi * g.pdf(0))  # Kuramoto's critical coupling
    omega = _quantiles(g, n)
    below, _ = _stationary_r(Kuramoto(omega, COMPLETE, 0.7 * K_c), n, 2, 100, 60)
    above, _ = _stationary_r(Kuramoto(omega, COMPLETE, 1.5 * K_c), n, 2, 100, 60)
    # below onset: incoherent, r = O(N^-1/2) ≈ 0.007 ... 0.02
    assert below < 4 / np.sqrt(n)
    # above onset: the self-consistent partially locked state (finite-N error ~ N^-1/2)
    assert abs(above - _self_consistent_r(1.5 * K_c, g.pdf)) < 0.01


def _ring_setup(n):
    x = np.arange(1, n + 1) / n
    return 2 * np.pi * x + 0.7 * np.sin(4 * np.pi * x), 0.5 * np.cos(2 * np.pi * x)


def _phase_rms(a, b):
    return np.sqrt(np.mean(np.angle(np.exp(1j * (a - b))) ** 2))


@pytest.mark.slow
def test_w_random_graphs_and_discretisations_approach_the_graphon():
    w, K, T, dt = Graphon.small_world(0.2, 0.3), 3.0, 2.0, 0.05
    sizes = np.array([200, 800, 3200])
    rand_err, disc_err = [], []
    for n in sizes:
        theta0, omega = _ring_setup(n)
        graphon = simulate(Kuramoto(omega, w, K), theta0, T, dt).state
        errs = []
        for seed in range(2):
            A = w_random_graph(w, n, seed=seed)
            errs.append(_phase_rms(simulate(Kuramoto(omega, A, K), theta0, T, dt).state, graphon))
        rand_err.append(np.mean(errs))
        # continuum reference: the graphon on a 4x finer grid, read at the shared nodes
        theta4, omega4 = _ring_setup(4 * n)
        fine = simulate(Kuramoto(omega4, w, K), theta4, T, dt).state[3::4]
        disc_err.append(_phase_rms(graphon, fine))
    # edge noise of W-random graphs: error ~ N^-1/2; Riemann-sum discretisation: ~ N^-1
    slope_rand = np.polyfit(np.log(sizes), np.log(rand_err), 1)[0]
    slope_disc = np.polyfit(np.log(sizes), np.log(disc_err), 1)[0]
    assert abs(slope_rand + 0.5) < 0.2, rand_err
    assert abs(slope_disc + 1.0) < 0.3, disc_err


def _twisted_eigenvalues(n, r, K, q):
    """Analytic spectrum of the Jacobian at the q-twisted state on the ring graphon.

    J is circulant with c_k = (K/N) [d_k ≤ r] cos(2π q k / N), k ≠ 0, so
    λ_m = Σ_{k≠0} c_k (cos(2π m k / N) − 1)."""
    k = np.arange(n)
    near = np.minimum(k, n - k) / n <= r
    near[0] = False
    c = K / n * near * np.cos(2 * np.pi * q * k / n)
    m = np.arange(n)[:, None]
    return (c[None, :] * (np.cos(2 * np.pi * m * k[None, :] / n) - 1)).sum(axis=1)


@pytest.mark.parametrize("q", [0, 1, 3, 5])
def test_twisted_states_are_equilibria_with_analytic_spectrum(q):
    n, r, K = 200, 0.251, 1.0  # r between grid distances: no ties in the window
    model = Kuramoto(np.zeros(n), Graphon.ring(r), K)
    theta = twisted_state(n, q, c=0.3)
    assert np.abs(rhs(model, theta)).max() < 1e-13  # equilibrium up to rounding
    h = 1e-6
    J = np.empty((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = h
        J[:, j] = (rhs(model, theta + e) - rhs(model, theta - e)) / (2 * h)
    numeric = np.sort(np.linalg.eigvals(J).real)
    # central differences of a smooth field: error ~ h^2 * |f'''| ~ 1e-12, plus eig rounding
    np.testing.assert_allclose(numeric, np.sort(_twisted_eigenvalues(n, r, K, q)), atol=1e-8)


@pytest.mark.parametrize("q", [1, 3])
def test_twisted_state_perturbations_grow_or_decay_at_the_predicted_rate(q):
    n, r, K = 200, 0.251, 1.0
    lam = np.sort(_twisted_eigenvalues(n, r, K, q))
    lam_top = lam[-1] if lam[-1] > 1e-12 else lam[-2]  # skip the neutral phase-shift mode
    theta = twisted_state(n, q)
    delta = 1e-9 * np.random.default_rng(q).standard_normal(n)
    delta -= delta.mean()  # no component along the neutral mode
    model = Kuramoto(np.zeros(n), Graphon.ring(r), K)
    run = simulate(model, theta + delta, 40.0, 0.05, save_every=200)
    dev = run.frames - theta[None, :]
    dev -= dev.mean(axis=1, keepdims=True)
    size = np.linalg.norm(dev, axis=1)
    rate = np.log(size[-1] / size[-2]) / (run.frame_t[-1] - run.frame_t[-2])
    # after t = 30 the top mode dominates (gap to the next mode × 30 ≫ 1); 3% covers the rest
    assert abs(rate - lam_top) < 0.03 * abs(lam_top), (rate, lam_top)
