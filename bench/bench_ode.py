"""Benchmarks of the ODE integrators, each beside its baseline in the same group.

Full sizes (``NNDYN_BENCH_FULL=1``): f(x) = tanh(W x + b), d = 64, batch 1024, t in [0, 1];
RK4 with 100 steps vs a numpy RK4 (one matrix product per stage); Dormand-Prince at rtol 1e-6
vs scipy's solve_ivp(RK45) on the flattened system (achieved errors in extra_info); d = 3, one
trajectory, 10^5 RK4 steps vs a hand-written Numba loop.
"""

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit
from scipy.integrate import solve_ivp

from nndyn_fast.integrate import odeint
from nndyn_fast.neural import NeuralODE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference_ode import rk4_numpy, tanh_field  # noqa: E402

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
D, B, STEPS = (64, 1024, 100) if FULL else (8, 16, 10)
SMALL_STEPS = 100_000 if FULL else 1_000


def _problem(d, batch, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, d)) / np.sqrt(d)
    b = 0.1 * rng.standard_normal(d)
    X = rng.standard_normal((batch, d))
    return W, b, X


@pytest.fixture(scope="module")
def big():
    W, b, X = _problem(D, B)
    model = NeuralODE.inner(W, b, "tanh")
    odeint(model, X[:2], [0.0, 1.0], method="rk4", dt=0.5)  # compile / load the cache
    return W, b, X, model


@pytest.mark.benchmark(group="rk4-d64-batch1024")
def test_rk4_ours(benchmark, big):
    W, b, X, model = big
    y = benchmark(lambda: odeint(model, X, [0.0, 1.0], method="rk4", dt=1.0 / STEPS).y[-1])
    ref = rk4_numpy(tanh_field, X, 0.0, 1.0, STEPS, W, b)
    assert np.abs(y - ref).max() < 1e-12


@pytest.mark.benchmark(group="rk4-d64-batch1024")
def test_rk4_numpy(benchmark, big):
    W, b, X, _ = big
    benchmark(rk4_numpy, tanh_field, X, 0.0, 1.0, STEPS, W, b)


def _reference(big):
    W, b, X, model = big
    return odeint(model, X, [0.0, 1.0], rtol=1e-12, atol=1e-14).y[-1]


@pytest.mark.benchmark(group="dopri5-rtol1e-6")
def test_dopri5_ours(benchmark, big):
    W, b, X, model = big
    y = benchmark(lambda: odeint(model, X, [0.0, 1.0], rtol=1e-6, atol=1e-9).y[-1])
    benchmark.extra_info["max_error"] = float(np.abs(y - _reference(big)).max())


@pytest.mark.benchmark(group="dopri5-rtol1e-6")
def test_dopri5_scipy_rk45(benchmark, big):
    W, b, X, _ = big
    shape = X.shape

    def fun(t, y):
        return tanh_field(y.reshape(shape), W, b).ravel()

    def run():
        return solve_ivp(fun, (0.0, 1.0), X.ravel(), method="RK45", rtol=1e-6, atol=1e-9)

    sol = benchmark(run)
    y = sol.y[:, -1].reshape(shape)
    benchmark.extra_info["max_error"] = float(np.abs(y - _reference(big)).max())


@njit(cache=True)
def _rk4_tanh_loop(W, b, x, h, n):
    # the hand-written baseline: RK4 for x' = tanh(W x + b), fixed step, no abstraction
    d = x.shape[0]
    k1 = np.empty(d)
    k2 = np.empty(d)
    k3 = np.empty(d)
    k4 = np.empty(d)
    y = np.empty(d)
    for _ in range(n):
        for i in range(d):
            s = b[i]
            for j in range(d):
                s += W[i, j] * x[j]
            k1[i] = math.tanh(s)
        for i in range(d):
            y[i] = x[i] + 0.5 * h * k1[i]
        for i in range(d):
            s = b[i]
            for j in range(d):
                s += W[i, j] * y[j]
            k2[i] = math.tanh(s)
        for i in range(d):
            y[i] = x[i] + 0.5 * h * k2[i]
        for i in range(d):
            s = b[i]
            for j in range(d):
                s += W[i, j] * y[j]
            k3[i] = math.tanh(s)
        for i in range(d):
            y[i] = x[i] + h * k3[i]
        for i in range(d):
            s = b[i]
            for j in range(d):
                s += W[i, j] * y[j]
            k4[i] = math.tanh(s)
        for i in range(d):
            x[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])
    return x


@pytest.fixture(scope="module")
def small():
    W, b, X = _problem(3, 1, seed=1)
    model = NeuralODE.inner(W, b, "tanh")
    odeint(model, X[0], [0.0, 1.0], method="rk4", dt=0.5)
    _rk4_tanh_loop(W, b, X[0].copy(), 0.1, 2)
    return W, b, X[0], model


@pytest.mark.benchmark(group="rk4-d3-small-steps")
def test_small_ours(benchmark, small):
    W, b, x, model = small
    y = benchmark(lambda: odeint(model, x, [0.0, 1.0], method="rk4", dt=1.0 / SMALL_STEPS).y[-1])
    ref = _rk4_tanh_loop(W, b, x.copy(), 1.0 / SMALL_STEPS, SMALL_STEPS)
    assert np.abs(y - ref).max() < 1e-12


@pytest.mark.benchmark(group="rk4-d3-small-steps")
def test_small_numba_loop(benchmark, small):
    W, b, x, _ = small
    benchmark(lambda: _rk4_tanh_loop(W, b, x.copy(), 1.0 / SMALL_STEPS, SMALL_STEPS))
