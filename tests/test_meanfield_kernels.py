"""Network kernels against naive references: every coupling form, both models, RK4 order."""

import sys

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_meanfield import naive_phase_rhs, naive_rate_rhs, naive_rk4
from scipy.integrate import solve_ivp

from nndyn_fast import (
    Coupling,
    DigraphMeasure,
    FiringRate,
    Graphon,
    Kuramoto,
    rhs,
    simulate,
)

GRAPHONS = [
    Graphon.constant(0.7),
    Graphon.small_world(0.2, 0.1),
    Graphon.ring(0.3),
    Graphon.power_law(0.3),
    Graphon.directed_ring(0.25),
]

TH = sys.modules["nndyn_fast.threads"]  # (nndyn_fast.threads is the context manager)


@numba.njit
def bump(x, y):
    """A user graphon: w = 1 + cos(2π(x − y)) / 2 + x y."""
    return 1.0 + 0.5 * np.cos(2 * np.pi * (x - y)) + x * y


def _setup(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), rng.uniform(0, 2 * np.pi, n), rng


@pytest.mark.parametrize("n", [1, 3, 7, 120, 127])  # rows go eight at a time: leftovers too
def test_dense_rhs_matches_naive_phase_and_rate(n):
    omega, theta, rng = _setup(n)
    W = rng.random((n, n))
    got = rhs(Kuramoto(omega, W, 2.5, alpha=0.4), theta)
    # rounding: sums of up to 127 terms of size ~1, a few ulps each
    np.testing.assert_allclose(got, naive_phase_rhs(theta, omega, W, 2.5, 0.4), atol=1e-13)
    x = rng.normal(size=n)
    got = rhs(FiringRate(omega, W, 1.7, activation="tanh"), x)
    np.testing.assert_allclose(got, naive_rate_rhs(x, omega, W, 1.7, np.tanh), atol=1e-13)


def test_float32_weights_within_documented_tolerance():
    omega, theta, rng = _setup(200)
    W = rng.random((200, 200))
    ref = naive_phase_rhs(theta, omega, W, 3.0, 0.0)
    got = rhs(Kuramoto(omega, W, 3.0, dtype="float32"), theta)
    # float32 weights carry relative error 2^-24 ≈ 6e-8; sums accumulate in float64, so the
    # interaction (size ≤ K) is off by at most K * 6e-8
    np.testing.assert_allclose(got, ref, atol=3.0 * 6e-8)
    assert not np.array_equal(got, ref)  # the float32 path really ran


@pytest.mark.parametrize("w", GRAPHONS + [Graphon.from_function(bump)], ids=lambda w: w.name)
def test_coupling_forms_agree_to_roundoff(w):
    n = 150
    omega, theta, _ = _setup(n, 1)
    W = w.matrix(n)
    forms = [W, sp.csr_matrix(W), w, Coupling(w, n, pairwise=True)]
    vals = [rhs(Kuramoto(omega, c, 2.0, alpha=0.3), theta) for c in forms]
    ref = naive_phase_rhs(theta, omega, W, 2.0, 0.3)
    scale = np.abs(W).sum(axis=1).max() * 2.0 / n
    for v in vals:
        # rounding only: the forms differ in summation order (prefix sums for windows)
        np.testing.assert_allclose(v, ref, atol=1e-12 * max(scale, 1.0))


def test_digraph_measure_random_positions_and_weights():
    n = 160
    rng = np.random.default_rng(3)
    x = np.sort(rng.random(n))
    mu = rng.gamma(2.0, 0.5, n)
    omega, theta, _ = _setup(n, 4)
    for w in (Graphon.small_world(0.15, 0.2), Graphon.directed_ring(0.3), Graphon.power_law(0.4)):
        m = DigraphMeasure(w, x, mu)
        # independent dense matrix: the graphon evaluated by numpy, times node weights
        if w.name == "small_world":
            d = np.abs(x[:, None] - x[None, :])
            d = np.minimum(d, 1 - d)
            dense = np.where(d <= 0.15, 0.8, 0.2) * mu[None, :]
        elif w.name == "directed_ring":
            d = np.mod(x[None, :] - x[:, None], 1.0)
            dense = ((d > 0) & (d <= 0.3)).astype(float) * mu[None, :]
        else:
            dense = np.outer(x, x) ** -0.4 * mu[None, :]
        assert not np.allclose(dense, dense.T)  # directed, non-symmetric weights
        ref = naive_phase_rhs(theta, omega, dense, 1.5, 0.2)
        for c in (m, Coupling(m, n, pairwise=True)):
            # rounding only (power law weights reach ~x^-0.8 ~ 100, hence the scale)
            np.testing.assert_allclose(
                rhs(Kuramoto(omega, c, 1.5, 0.2), theta),
                ref,
                atol=1e-12 * np.abs(dense).sum(1).max(),
            )


def _phase_field(omega, W, K, alpha):
    return lambda y: naive_phase_rhs(y, omega, W, K, alpha)


def test_rk4_matches_naive_rk4_and_scipy():
    n = 40
    omega, theta, rng = _setup(n, 5)
    W = rng.random((n, n))
    run = simulate(Kuramoto(omega, W, 4.0, 0.2), theta, 2.0, 0.01)
    ref = naive_rk4(_phase_field(omega, W, 4.0, 0.2), theta, 0.01, 200)
    np.testing.assert_allclose(run.state, ref, atol=1e-12)  # same scheme, rounding only
    sol = solve_ivp(
        lambda t, y: naive_phase_rhs(y, omega, W, 4.0, 0.2),
        (0, 2.0),
        theta,
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
    )
    # RK4 global error C dt^4 with C ~ (K + |ω|)^4 ~ 1e2: about 1e-6 at dt = 0.01
    np.testing.assert_allclose(run.state, sol.y[:, -1], atol=1e-6)


@pytest.mark.parametrize("method,order", [("euler", 1), ("rk4", 4)])
def test_convergence_order(method, order):
    n = 30
    omega, theta, rng = _setup(n, 6)
    W = rng.random((n, n))
    model = Kuramoto(omega, W, 3.0, 0.5)
    sol = solve_ivp(
        lambda t, y: naive_phase_rhs(y, omega, W, 3.0, 0.5),
        (0, 1.0),
        theta,
        method="DOP853",
        rtol=1e-13,
        atol=1e-13,
    )
    dts = [0.04, 0.02, 0.01, 0.005] if order == 4 else [0.01, 0.005, 0.0025, 0.00125]
    errs = [
        np.abs(simulate(model, theta, 1.0, dt, method=method).state - sol.y[:, -1]).max()
        for dt in dts
    ]
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.3, (errs, slope)


def test_results_do_not_depend_on_thread_count(monkeypatch):
    monkeypatch.setattr(TH, "MIN_SECONDS_PER_THREAD", 0.0)  # threads on, even at this small N
    n = 300
    omega, theta, rng = _setup(n, 7)
    W = rng.random((n, n))
    model = Kuramoto(omega, W, 2.0, 0.1)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = simulate(model, theta, 0.5, 0.01).state
        numba.set_num_threads(max(2, before))
        two = simulate(model, theta, 0.5, 0.01).state
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, two)  # no cross-thread reductions: bitwise identical


def test_observables_are_the_order_parameter():
    n = 64
    omega, theta, rng = _setup(n, 8)
    run = simulate(Kuramoto(omega, rng.random((n, n)), 1.0), theta, 0.2, 0.01, save_every=5)
    z = np.exp(1j * run.frames).mean(axis=1)
    idx = np.searchsorted(run.t, run.frame_t)
    np.testing.assert_allclose(run.r[idx], np.abs(z), atol=1e-14)
    np.testing.assert_allclose(run.psi[idx], np.angle(z), atol=1e-13)
    np.testing.assert_allclose(run.frame_t, np.arange(0, 21, 5) * 0.01)


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 10_000), shift=st.floats(-10, 10))
def test_permutation_equivariance_and_phase_shift_invariance(seed, shift):
    n = 25
    omega, theta, rng = _setup(n, seed)
    W = rng.random((n, n))
    perm = rng.permutation(n)
    base = rhs(Kuramoto(omega, W, 2.0, 0.7), theta)
    permuted = rhs(Kuramoto(omega[perm], W[np.ix_(perm, perm)], 2.0, 0.7), theta[perm])
    np.testing.assert_allclose(permuted, base[perm], atol=1e-13)  # reordered sums only
    shifted = rhs(Kuramoto(omega, W, 2.0, 0.7), theta + shift)
    # sin/cos of shifted phases: rounding grows with |shift| ~ 10 → ~1e-14 relative
    np.testing.assert_allclose(shifted, base, atol=1e-12)


def _scheduling_calls(dispatcher, sig=None):
    """Parallel regions in a kernel's compiled code: calls of numba's parfor scheduler (each
    prange loop is one call site, callees' loops included). Compiled afresh from the Python
    source for ``sig`` or the kernel's first signature (cached code has no IR to inspect)."""
    import re

    sig = dispatcher.signatures[0] if sig is None else sig
    fresh = numba.njit(parallel=True)(dispatcher.py_func)
    fresh.compile(sig)
    return len(re.findall(r"call [^\n]*@do_scheduling_\w+", fresh.inspect_llvm(sig)))


def test_a_dense_rk4_step_opens_one_parallel_region_per_evaluation():
    # the step loop holds one prange (sums, field, stage update and sin/cos per block of rows:
    # four launches per RK4 step, about 17 before the fusion); activate, called once on entry,
    # holds the other one
    from nndyn_fast.kernels import kuramoto as kk

    n = 16
    omega, theta, rng = _setup(n)
    simulate(Kuramoto(omega, rng.random((n, n)), 1.0), theta, 0.1, 0.05)  # a dense signature
    vec = numba.types.float64[::1]
    assert _scheduling_calls(kk.activate, (numba.int64,) * 3 + (vec,) * 3) == 1
    assert _scheduling_calls(kk.network_advance) == 2
