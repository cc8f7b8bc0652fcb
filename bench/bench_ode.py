"""Benchmarks of the ODE integrators, each beside its baseline in the same group.

Full sizes (``NNDYN_BENCH_FULL=1``): f(x) = tanh(W x + b), d = 64, batch 1024, t in [0, 1];
RK4 with 100 steps vs a numpy RK4 (one matrix product per stage), and floors: its 400 matrix
products alone (BLAS), the same flops as one large BLAS product (near peak), its 26 million
tanh alone, and its 400 field evaluations alone (our products and tanh);
Dormand-Prince at rtol 1e-6 vs scipy's solve_ivp(RK45) on the flattened system (achieved
errors in extra_info); d = 3, one trajectory, 10^5 RK4 steps vs a hand-written
Numba loop, for the built-in field tanh(W x + b) and for a user-supplied jitted Lorenz field.

``numba.set_num_threads`` follows ``NNDYN_BENCH_THREADS`` when set (compare 1 and 2 threads).
"""

import math
import os
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from numba import njit, prange
from scipy.integrate import solve_ivp

from nndyn_fast.integrate import odeint
from nndyn_fast.kernels.activations import tanh_fast
from nndyn_fast.kernels.neural import CONTRACT
from nndyn_fast.kernels.rk import _block_field
from nndyn_fast.neural import NeuralODE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference_ode import rk4_numpy, tanh_field  # noqa: E402

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
if os.environ.get("NNDYN_BENCH_THREADS"):
    numba.set_num_threads(int(os.environ["NNDYN_BENCH_THREADS"]))
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


def _rk4_numpy_inplace(X0, W, b, n_steps, h):
    # the tuned numpy baseline: one BLAS product per stage over the whole batch into
    # preallocated buffers, in-place bias, tanh and stage combinations (no temporaries)
    WT = np.ascontiguousarray(W.T)
    X = X0.copy()
    k1, k2, k3, k4, Y = (np.empty_like(X) for _ in range(5))

    def field(Z, out):
        np.matmul(Z, WT, out=out)
        out += b
        np.tanh(out, out=out)

    for _ in range(n_steps):
        field(X, k1)
        np.multiply(k1, 0.5 * h, out=Y)
        Y += X
        field(Y, k2)
        np.multiply(k2, 0.5 * h, out=Y)
        Y += X
        field(Y, k3)
        np.multiply(k3, h, out=Y)
        Y += X
        field(Y, k4)
        k2 += k3
        k2 *= 2.0
        k2 += k1
        k2 += k4
        k2 *= h / 6.0
        X += k2
    return X


@pytest.mark.benchmark(group="rk4-d64-batch1024")
def test_rk4_numpy_inplace(benchmark, big):
    W, b, X, _ = big
    y = benchmark(_rk4_numpy_inplace, X, W, b, STEPS, 1.0 / STEPS)
    assert np.abs(y - rk4_numpy(tanh_field, X, 0.0, 1.0, STEPS, W, b)).max() < 1e-12


@pytest.mark.benchmark(group="rk4-d64-batch1024")
def test_rk4_matmul_floor_reference(benchmark, big):
    # the floor of any RK4 of this field: its 4 matrix products per step (BLAS, all cores) and
    # nothing else; our time in these units shows how little tanh and the stages add
    W, b, X, _ = big
    WT = np.ascontiguousarray(W.T)
    out = np.empty_like(X)

    def products():
        for _ in range(4 * STEPS):
            np.matmul(X, WT, out=out)

    benchmark(products)


@pytest.mark.benchmark(group="rk4-d64-batch1024")
def test_rk4_flops_at_dgemm_peak_floor_reference(benchmark, big):
    # the multiply-adds of the 400 products (2 x 400 x 1024 x 64 x 64 flops) as one large BLAS
    # product, near the machine's peak: no RK4 of this field can take less
    _, _, X, _ = big
    B, d = X.shape
    n = int(round(math.sqrt(4 * STEPS * d * d)))  # B n^2 = 400 B d^2 flops / 2
    rng = np.random.default_rng(0)
    A = rng.random((B, n))
    M = rng.random((n, n))
    out = np.empty((B, n))
    benchmark(np.matmul, A, M, out=out)


@njit(cache=True, parallel=True, error_model="numpy", fastmath=CONTRACT)
def _tanhs(P, out, n_passes):
    # n_passes of the kernels' tanh over every entry of P, rows in parallel
    for r in prange(P.shape[0]):
        for _ in range(n_passes):
            for j in range(P.shape[1]):
                out[r, j] = tanh_fast(P[r, j])


@pytest.mark.benchmark(group="rk4-d64-batch1024")
def test_rk4_tanh_floor_reference(benchmark, big):
    # the 4 tanh per state entry and step of any RK4 of this field (26 million at full size),
    # alone, with the kernels' tanh on all threads (numpy's np.tanh is slower, on one core)
    W, b, X, _ = big
    P = X @ W.T + b
    out = np.empty_like(P)
    _tanhs(P, out, 1)
    benchmark(_tanhs, P, out, 4 * STEPS)
    assert np.abs(out - np.tanh(P)).max() < 1e-15


@njit(cache=True, parallel=True)
def _field_evaluations(model, X, out, P, Q, n_evals, block):
    # n_evals evaluations of the built-in field on every block of rows, blocks in parallel: the
    # blocked products and the tanh of an RK4 run, without its stage arithmetic
    for ib in prange(X.shape[0] // block):
        lo = ib * block
        hi = lo + block
        for _ in range(n_evals):
            _block_field(model, 0, X[lo:hi], out[lo:hi], P[lo:hi], Q[lo:hi])


@pytest.mark.benchmark(group="rk4-d64-batch1024")
def test_rk4_field_evaluations_floor_reference(benchmark, big):
    # the 4 field evaluations per step of our RK4, alone (products and tanh, in blocks of 64
    # rows, as odeint runs the full-size batch on a few threads): what is left of our time is
    # the stage arithmetic
    W, b, X, model = big
    kmodel = model._kernel_model()
    out = np.empty_like(X)
    P = np.empty_like(X)
    Q = np.empty_like(X)
    block = 64 if X.shape[0] % 64 == 0 else X.shape[0]
    _field_evaluations(kmodel, X, out, P, Q, 1, block)
    benchmark(_field_evaluations, kmodel, X, out, P, Q, 4 * STEPS, block)
    assert np.abs(out - np.tanh(X @ W.T + b)).max() < 1e-13


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


@njit
def _lorenz(t, x, args, out):
    sigma, rho, beta = args
    out[0] = sigma * (x[1] - x[0])
    out[1] = x[0] * (rho - x[2]) - x[1]
    out[2] = x[0] * x[1] - beta * x[2]


@njit(cache=True, inline="always")
def _lorenz_inline(z, k, sigma, rho, beta):
    k[0] = sigma * (z[1] - z[0])
    k[1] = z[0] * (rho - z[2]) - z[1]
    k[2] = z[0] * z[1] - beta * z[2]


@njit(cache=True)
def _rk4_lorenz_loop(x, h, n, sigma, rho, beta):
    # the hand-written baseline: RK4 for the Lorenz system, stages written out
    k1 = np.empty(3)
    k2 = np.empty(3)
    k3 = np.empty(3)
    k4 = np.empty(3)
    y = np.empty(3)
    for _ in range(n):
        _lorenz_inline(x, k1, sigma, rho, beta)
        for i in range(3):
            y[i] = x[i] + 0.5 * h * k1[i]
        _lorenz_inline(y, k2, sigma, rho, beta)
        for i in range(3):
            y[i] = x[i] + 0.5 * h * k2[i]
        _lorenz_inline(y, k3, sigma, rho, beta)
        for i in range(3):
            y[i] = x[i] + h * k3[i]
        _lorenz_inline(y, k4, sigma, rho, beta)
        for i in range(3):
            x[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])
    return x


LORENZ = (10.0, 28.0, 8.0 / 3.0)


@pytest.fixture(scope="module")
def lorenz():
    x0 = np.array([1.0, 1.0, 1.0])
    odeint(_lorenz, x0, [0.0, 1.0], method="rk4", dt=0.5, args=LORENZ)  # compile
    _rk4_lorenz_loop(x0.copy(), 0.1, 2, *LORENZ)
    return x0


@pytest.mark.benchmark(group="rk4-lorenz-small-steps")
def test_lorenz_ours(benchmark, lorenz):
    h = 1.0 / SMALL_STEPS
    y = benchmark(lambda: odeint(_lorenz, lorenz, [0.0, 1.0], method="rk4", dt=h, args=LORENZ).y)
    ref = _rk4_lorenz_loop(lorenz.copy(), h, SMALL_STEPS, *LORENZ)
    assert np.abs(y[-1] - ref).max() < 1e-9 * np.abs(ref).max()  # same steps, rounding only


@pytest.mark.benchmark(group="rk4-lorenz-small-steps")
def test_lorenz_numba_loop(benchmark, lorenz):
    h = 1.0 / SMALL_STEPS
    benchmark(lambda: _rk4_lorenz_loop(lorenz.copy(), h, SMALL_STEPS, *LORENZ))
