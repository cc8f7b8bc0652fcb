"""Network kernels beside their baselines, in the same run.

Default sizes are small so that ``pytest bench --benchmark-disable`` runs in seconds; with
``NNDYN_BENCH_FULL=1`` the issue's sizes:

- dense-rhs-f64 / dense-rhs-f32: one interaction evaluation at N = 8000 (reads W once) beside
  a numpy reduction over the same W (the machine's read bandwidth) and two numpy matvecs;
  ``extra_info['GB/s']`` is the rate W is read at.
- rk4-run: N = 4000, 1000 RK4 steps, dense: ours vs numpy RK4 with two matvecs per RHS, vs
  scipy solve_ivp(RK45) (errors against a dt/4 run in ``extra_info``).
- large runs (full mode only): matrix-free ring graphon at N = 10^5 and an Erdős–Rényi CSR
  graph at N = 10^6 with mean degree 100, each in a fresh process; peak RSS in extra_info.
"""

import os
import resource
import subprocess
import sys

import numpy as np
import pytest
from reference_meanfield import naive_rk4
from scipy.integrate import solve_ivp

from nndyn_fast import Kuramoto, simulate
from nndyn_fast.kernels.kuramoto import coupling_dense

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
N_RHS = 8000 if FULL else 400
N_RUN, STEPS_RUN = (4000, 1000) if FULL else (300, 20)
DT = 0.01


def _dense(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, n)).astype(dtype), rng.uniform(0, 2 * np.pi, n)


def _rate(benchmark, nbytes):
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["GB/s"] = nbytes / stats.stats.min / 1e9


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.benchmark(group="dense-rhs")
def test_dense_rhs_ours(benchmark, dtype):
    W, theta = _dense(N_RHS, dtype)
    a, b = np.sin(theta), np.cos(theta)
    sa, sb = np.empty(N_RHS), np.empty(N_RHS)
    coupling_dense(W, a, b, True, sa, sb)  # compile
    benchmark(coupling_dense, W, a, b, True, sa, sb)
    _rate(benchmark, W.nbytes)
    ref = W.astype(np.float64) @ a
    np.testing.assert_allclose(sa, ref, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.benchmark(group="dense-rhs")
def test_dense_rhs_numpy_reduction_bandwidth(benchmark, dtype):
    W, _ = _dense(N_RHS, dtype)
    benchmark(np.add.reduce, W, axis=None)
    _rate(benchmark, W.nbytes)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.benchmark(group="dense-rhs")
def test_dense_rhs_numpy_two_matvecs(benchmark, dtype):
    W, theta = _dense(N_RHS, dtype)
    a, b = np.sin(theta).astype(dtype), np.cos(theta).astype(dtype)
    benchmark(lambda: (W @ a, W @ b))
    _rate(benchmark, W.nbytes)


def _run_problem():
    rng = np.random.default_rng(1)
    W = rng.random((N_RUN, N_RUN))
    return W, rng.normal(size=N_RUN), rng.uniform(0, 2 * np.pi, N_RUN)


def _numpy_rhs(W, omega, K):
    n = omega.size

    def f(theta):
        s, c = np.sin(theta), np.cos(theta)
        return omega + K / n * (c * (W @ s) - s * (W @ c))

    return f


@pytest.fixture(scope="module")
def run_reference():
    W, omega, theta = _run_problem()
    model = Kuramoto(omega, W, 2.0)
    fine = simulate(model, theta, STEPS_RUN * DT, DT / 4).state
    return W, omega, theta, model, fine


@pytest.mark.benchmark(group="rk4-run")
def test_rk4_run_ours(benchmark, run_reference):
    W, omega, theta, model, fine = run_reference
    simulate(model, theta, 2 * DT, DT)  # compile
    res = benchmark.pedantic(simulate, args=(model, theta, STEPS_RUN * DT, DT), rounds=3)
    benchmark.extra_info["max_error"] = float(np.abs(res.state - fine).max())


@pytest.mark.benchmark(group="rk4-run")
def test_rk4_run_numpy_two_matvecs(benchmark, run_reference):
    W, omega, theta, model, fine = run_reference
    f = _numpy_rhs(W, omega, 2.0)
    y = benchmark.pedantic(naive_rk4, args=(f, theta, DT, STEPS_RUN), rounds=1)
    benchmark.extra_info["max_error"] = float(np.abs(y - fine).max())


@pytest.mark.benchmark(group="rk4-run")
def test_rk4_run_scipy_solve_ivp(benchmark, run_reference):
    W, omega, theta, model, fine = run_reference
    f = _numpy_rhs(W, omega, 2.0)
    sol = benchmark.pedantic(
        solve_ivp,
        args=(lambda t, y: f(y), (0, STEPS_RUN * DT), theta),
        kwargs={"method": "RK45", "rtol": 1e-7, "atol": 1e-9},
        rounds=1,
    )
    benchmark.extra_info["max_error"] = float(np.abs(sol.y[:, -1] - fine).max())
    benchmark.extra_info["nfev"] = int(sol.nfev)


LARGE = {
    "graphon_ring_N1e5": (
        "from nndyn_fast import Graphon, Kuramoto, simulate\n"
        "n=100_000; rng=np.random.default_rng(0)\n"
        "m=Kuramoto(0.2*rng.standard_cauchy(n), Graphon.ring(0.1), 1.5)\n"
        "simulate(m, rng.uniform(0,6.28,n), 20.0, 0.05)\n"
    ),
    "csr_erdos_renyi_N1e6_deg100": (
        "from nndyn_fast import Kuramoto, erdos_renyi, simulate\n"
        "n=1_000_000; rng=np.random.default_rng(0)\n"
        "A=erdos_renyi(n, 100/(n-1), seed=1, dtype=np.float32)\n"
        "m=Kuramoto(0.2*rng.standard_cauchy(n), A, 1.5, dtype='float32')\n"
        "simulate(m, rng.uniform(0,6.28,n), 0.5, 0.05)\n"
    ),
}


@pytest.mark.skipif(not FULL, reason="large runs only with NNDYN_BENCH_FULL=1")
@pytest.mark.parametrize("name", list(LARGE))
@pytest.mark.benchmark(group="large-runs")
def test_large_run_ours(benchmark, name):
    code = (
        "import numpy as np, resource\n"
        + LARGE[name]
        + ("print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    )

    def run():
        out = subprocess.run(  # from /tmp: import the installed package
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd="/tmp"
        )
        return int(out.stdout.split()[-1])

    rss_kib = benchmark.pedantic(run, rounds=1)
    benchmark.extra_info["peak_rss_MiB"] = rss_kib / 1024
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss > 0
