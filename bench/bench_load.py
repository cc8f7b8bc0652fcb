"""The headline workloads idle and beside a busy process, each beside its numpy baseline.

Every workload is timed twice in the same run: ``[idle]``, then ``[busy]`` while a second
process keeps one core busy (a Python busy loop started by the ``load`` fixture and killed
after the test). Ours and the baseline face the same load, so the table's ratios (ours vs numpy
under each load) and ``extra_info["busy_over_idle"]`` (ours busy / ours idle, the cost of the
load) come from one run. Default sizes are small (``--benchmark-disable`` smoke runs);
``NNDYN_BENCH_FULL=1`` gives the full workloads:

- ``load-kuramoto``: dense Kuramoto, N = 4000, 100 RK4 steps (default N = 300, 20 steps);
  numpy RK4 with two matrix-vector products per evaluation. Ours on the automatic thread
  choice (``auto``), on one thread, and forced onto two threads with rows in one block per
  thread or in chunks of 128 rows handed out as threads free up (``2threads-chunked``).
  ``NNDYN_BENCH_ROUNDS`` sets the timed rounds (default 3 in full mode).
- ``load-neural-ode``: tanh(W x + b), d = 64, batch 1024, 100 RK4 steps (default d = 8,
  batch 16, 10 steps); numpy RK4 with one matrix product per stage.
- ``load-sharpness``: top Hessian eigenvalue of a 20-64-64-1 tanh MLP on 1000 points by
  Lanczos to 1e-8 (default 5-16-16-1, 100 points); numpy: 100 power iterations on a batched
  numpy R-operator.
- ``load-sgd``: SGD exponent, n = 100, d = 200, B = 10, k = 1, 1e5 steps (default 500);
  numpy: the d x d factor formed and QR'd each step (from tests/reference_lyapunov.py).
- ``load-gd``: 400 full-batch gradient-descent steps of the edge-of-stability MLP 5-32-32-1 on
  100 points (both sizes); numpy: the same steps with a batched numpy backward pass.
- ``load-mackey-glass``: Mackey-Glass to t = 1000 (default 100), ours dopri5 at rtol = atol =
  1e-8; numpy/Python RK4 with Hermite history at dt = 0.1 (errors in ``extra_info``).
- ``region-cost-n<n>``: 50 gradient-descent steps of a 20-64-64-1 MLP on n points (two
  parallel regions per step) on the automatic choice of threads (ours), forced onto every
  thread, and on one thread: the measurement behind ``threads.MIN_SECONDS_PER_THREAD``.

The machine's state matters: on a shared machine, "idle" already has other processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_dde import mackey_glass_rhs  # noqa: E402
from reference_dde import naive_rk4 as naive_dde_rk4  # noqa: E402
from reference_lyapunov import naive_sgd_qr  # noqa: E402
from reference_meanfield import naive_rk4  # noqa: E402
from reference_ode import rk4_numpy, tanh_field  # noqa: E402
from reference_training import naive_hvp, unflatten  # noqa: E402

import nndyn_fast as nf  # noqa: E402

TH = sys.modules["nndyn_fast.threads"]

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
ROUNDS = int(os.environ.get("NNDYN_BENCH_ROUNDS", 3 if FULL else 1))  # timed rounds
LOADS = ["idle", "busy"]
_IDLE: dict[str, float] = {}


@pytest.fixture
def load(request):
    """``"idle"``, or ``"busy"`` with a busy-loop process running for the test's duration."""
    if request.param == "idle":
        yield "idle"
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)  # let it start spinning
    try:
        yield "busy"
    finally:
        proc.kill()
        proc.wait()


def _timed(benchmark, load, key, fn, rounds=ROUNDS):
    """Benchmark ``fn`` (after one untimed call) and record the best round; the busy run of
    ``key`` also records its ratio to the idle run."""
    fn()  # compile / load the cache, warm BLAS
    times = []

    def run():
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        return out

    out = benchmark.pedantic(run, rounds=rounds, iterations=1)
    best = min(times)
    benchmark.extra_info["seconds"] = best
    benchmark.extra_info["threads"] = nf.get_threads()
    if load == "idle":
        _IDLE[key] = best
    elif key in _IDLE:
        benchmark.extra_info["idle_seconds"] = _IDLE[key]
        benchmark.extra_info["busy_over_idle"] = best / _IDLE[key]
    return out


# -- dense Kuramoto ---------------------------------------------------------------------------
N_K, STEPS_K, DT_K = (4000, 100, 0.01) if FULL else (300, 20, 0.01)


@pytest.fixture(scope="module")
def kuramoto():
    rng = np.random.default_rng(1)
    W = rng.random((N_K, N_K))
    return W, rng.normal(size=N_K), rng.uniform(0, 2 * np.pi, N_K)


# ours: the automatic thread choice (threads.for_work with meanfield.CHUNK_MIN_SECONDS: two
# threads at N = 4000, a region (one read of W) being 4.5 ms of work, rows in chunks of 16
# units = 128 rows handed out as threads free up); "2threads": forced onto two threads, rows
# in one block per thread; "2threads-chunked": forced onto two threads, in chunks
K_VARIANTS = ["auto", "1thread", "2threads", "2threads-chunked"]
MF = sys.modules["nndyn_fast.meanfield"]


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.parametrize("variant", K_VARIANTS)
@pytest.mark.benchmark(group="load-kuramoto")
def test_kuramoto_ours(benchmark, kuramoto, load, variant, monkeypatch):
    W, omega, theta = kuramoto
    model = nf.Kuramoto(omega, W, 2.0)
    if variant.startswith("2threads"):
        if TH.max_threads() < 2:
            pytest.skip("needs two threads")
        monkeypatch.setattr(TH, "MIN_SECONDS_PER_THREAD", 0.0)
    if variant == "2threads":
        monkeypatch.setattr(MF, "CHUNK_UNITS", 0)  # one block of rows per thread
    with nf.threads(1 if variant == "1thread" else None):
        _timed(
            benchmark, load, f"kuramoto-{variant}",
            lambda: nf.simulate(model, theta, STEPS_K * DT_K, DT_K),
        )  # fmt: skip


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-kuramoto")
def test_kuramoto_numpy(benchmark, kuramoto, load):
    W, omega, theta = kuramoto

    def f(th):
        s, c = np.sin(th), np.cos(th)
        return omega + 2.0 / N_K * (c * (W @ s) - s * (W @ c))

    _timed(benchmark, load, "kuramoto-numpy", lambda: naive_rk4(f, theta, DT_K, STEPS_K))


# -- neural-ODE batch -------------------------------------------------------------------------
D_N, B_N, STEPS_N = (64, 1024, 100) if FULL else (8, 16, 10)


@pytest.fixture(scope="module")
def neural():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((D_N, D_N)) / np.sqrt(D_N)
    b = 0.1 * rng.standard_normal(D_N)
    return W, b, rng.standard_normal((B_N, D_N))


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-neural-ode")
def test_neural_ode_ours(benchmark, neural, load):
    W, b, X = neural
    model = nf.NeuralODE.inner(W, b, "tanh")
    y = _timed(
        benchmark, load, "neural",
        lambda: nf.odeint(model, X, [0.0, 1.0], method="rk4", dt=1.0 / STEPS_N).y[-1],
    )  # fmt: skip
    # both compute the same RK4 steps: rounding only
    assert np.abs(y - rk4_numpy(tanh_field, X, 0.0, 1.0, STEPS_N, W, b)).max() < 1e-12


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-neural-ode")
def test_neural_ode_numpy(benchmark, neural, load):
    W, b, X = neural
    _timed(benchmark, load, "neural-numpy", lambda: rk4_numpy(tanh_field, X, 0, 1, STEPS_N, W, b))


# -- sharpness --------------------------------------------------------------------------------
SIZES_S, N_S = ((20, 64, 64, 1), 1000) if FULL else ((5, 16, 16, 1), 100)


@pytest.fixture(scope="module")
def mlp_problem():
    rng = np.random.default_rng(0)
    mlp = nf.MLP(SIZES_S, "tanh")
    X = rng.standard_normal((N_S, SIZES_S[0]))
    Y = np.sin(X[:, :1]) + 0.1 * rng.standard_normal((N_S, 1))
    return mlp, mlp.init(0), X, Y


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-sharpness")
def test_sharpness_ours(benchmark, mlp_problem, load):
    mlp, theta, X, Y = mlp_problem
    res = _timed(benchmark, load, "sharpness", lambda: nf.sharpness(mlp, theta, X, Y, tol=1e-8))
    benchmark.extra_info["n_hvp"] = res.n_hvp


def _power_numpy(sizes, theta, X, Y, iters=100):
    v = np.random.default_rng(0).standard_normal(theta.shape[0])
    v /= np.linalg.norm(v)
    lam = 0.0
    for _ in range(iters):
        w = naive_hvp(sizes, "tanh", theta, X, Y, v)
        lam = v @ w
        v = w / np.linalg.norm(w)
    return lam


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-sharpness")
def test_sharpness_numpy(benchmark, mlp_problem, load):
    mlp, theta, X, Y = mlp_problem
    _timed(benchmark, load, "sharpness-numpy", lambda: _power_numpy(SIZES_S, theta, X, Y), 1)


# -- SGD exponent -----------------------------------------------------------------------------
SGD_STEPS = 100_000 if FULL else 500
G_SGD = np.random.default_rng(0).standard_normal((100, 200)) / np.sqrt(200)


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-sgd")
def test_sgd_ours(benchmark, load):
    kw = dict(steps=SGD_STEPS, k=1, replicas=1, transient=0, seed=1)
    res = _timed(benchmark, load, "sgd", lambda: nf.sgd_lyapunov(G_SGD, 0.5, 10, **kw))
    assert np.isfinite(res.exponents).all()


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-sgd")
def test_sgd_numpy(benchmark, load):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 100, size=(SGD_STEPS, 10))
    V0 = np.linalg.qr(rng.standard_normal((200, 1)))[0].T
    _timed(benchmark, load, "sgd-numpy", lambda: naive_sgd_qr(G_SGD, 0.5, idx, V0), 1)


# -- gradient descent -------------------------------------------------------------------------
SIZES_GD = (5, 32, 32, 1)
GD_STEPS = 400


def _numpy_grad(sizes, theta, X, Y):
    """MSE gradient of a tanh MLP by a batched numpy backward pass."""
    layers = unflatten(sizes, theta)
    acts = [X]
    for l, (W, b) in enumerate(layers):
        z = acts[-1] @ W.T + b
        acts.append(z if l == len(layers) - 1 else np.tanh(z))
    d = (acts[-1] - Y) / X.shape[0]
    parts = []
    for l in range(len(layers) - 1, -1, -1):
        parts.append(np.concatenate([(d.T @ acts[l]).ravel(), d.sum(0)]))
        if l > 0:
            d = (d @ layers[l][0]) * (1.0 - acts[l] ** 2)
    return np.concatenate(parts[::-1])


def _numpy_gd(theta, X, Y, lr, steps):
    theta = theta.copy()
    for _ in range(steps):
        theta -= lr * _numpy_grad(SIZES_GD, theta, X, Y)
    return theta


@pytest.fixture(scope="module")
def gd_problem():
    X, Y = nf.eos_dataset(100, 5)
    mlp = nf.MLP(SIZES_GD, "tanh")
    return mlp, mlp.init(0), X, Y


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-gd")
def test_gd_ours(benchmark, gd_problem, load):
    mlp, theta, X, Y = gd_problem
    run = _timed(
        benchmark, load, "gd", lambda: nf.gradient_descent(mlp, theta, X, Y, lr=0.02, steps=400)
    )
    # the same steps: rounding only (400 steps, each a few ulps)
    assert np.abs(run.theta - _numpy_gd(theta, X, Y, 0.02, GD_STEPS)).max() < 1e-10


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-gd")
def test_gd_numpy(benchmark, gd_problem, load):
    mlp, theta, X, Y = gd_problem
    _timed(benchmark, load, "gd-numpy", lambda: _numpy_gd(theta, X, Y, 0.02, GD_STEPS), 1)


# -- Mackey-Glass -----------------------------------------------------------------------------
T_MG = 1000.0 if FULL else 100.0
T_OUT = np.linspace(0.0, T_MG, 11)


@pytest.fixture(scope="module")
def mg_reference():
    return nf.ddeint(nf.MackeyGlass(), [1.2], T_OUT, delays=17.0, rtol=1e-12, atol=1e-14).y[:, 0]


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-mackey-glass")
def test_mackey_glass_ours(benchmark, mg_reference, load):
    sol = _timed(
        benchmark, load, "mg",
        lambda: nf.ddeint(nf.MackeyGlass(), [1.2], T_OUT, delays=17.0, rtol=1e-8, atol=1e-8),
    )  # fmt: skip
    benchmark.extra_info["max_error"] = float(np.abs(sol.y[:, 0] - mg_reference).max())


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.benchmark(group="load-mackey-glass")
def test_mackey_glass_numpy(benchmark, mg_reference, load):
    f = mackey_glass_rhs()
    hist = lambda s: np.array([1.2])  # noqa: E731
    ts, ys = _timed(
        benchmark, load, "mg-numpy", lambda: naive_dde_rk4(f, hist, 0.0, T_MG, 0.1, [17.0]), 1
    )
    at = np.searchsorted(ts, T_OUT - 1e-9)
    benchmark.extra_info["max_error"] = float(np.abs(ys[at, 0] - mg_reference).max())


# -- the cost of a parallel region (the measurement behind threads.MIN_SECONDS_PER_THREAD) --
# Gradient-descent steps of a 20-64-64-1 MLP (two parallel regions per step) at growing work
# per step, on the automatic choice of threads, forced onto every thread, and on one thread,
# idle and beside a busy process.
N_REGION = (64, 1024, 8192) if FULL else (64, 1024)


@pytest.fixture(scope="module")
def region_problem():
    rng = np.random.default_rng(0)
    mlp = nf.MLP((20, 64, 64, 1), "tanh")
    X = rng.standard_normal((max(N_REGION), 20))
    return mlp, mlp.init(0), X, np.sin(X[:, :1])


def _gd_steps(region_problem, n):
    mlp, theta, X, Y = region_problem
    return lambda: nf.gradient_descent(mlp, theta, X[:n], Y[:n], lr=1e-3, steps=50)


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.parametrize("n", N_REGION)
def test_region_cost_ours(benchmark, region_problem, n, load):
    benchmark.group = f"region-cost-n{n}"
    _timed(benchmark, load, f"region-{n}", _gd_steps(region_problem, n), 3)


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.parametrize("n", N_REGION)
def test_region_cost_all_threads(benchmark, region_problem, n, load, monkeypatch):
    benchmark.group = f"region-cost-n{n}"
    monkeypatch.setattr(TH, "MIN_SECONDS_PER_THREAD", 0.0)  # every region on every thread
    _timed(benchmark, load, f"region-all-{n}", _gd_steps(region_problem, n), 3)


@pytest.mark.parametrize("load", LOADS, indirect=True)
@pytest.mark.parametrize("n", N_REGION)
def test_region_cost_one_thread(benchmark, region_problem, n, load):
    benchmark.group = f"region-cost-n{n}"
    with nf.threads(1):
        _timed(benchmark, load, f"region-one-{n}", _gd_steps(region_problem, n), 3)
