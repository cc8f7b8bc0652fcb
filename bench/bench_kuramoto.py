"""Network kernels beside their baselines, in the same run.

Default sizes are small so that ``pytest bench --benchmark-disable`` runs in seconds; with
``NNDYN_BENCH_FULL=1`` the issue's sizes:

- dense-rhs-f64 / dense-rhs-f32: one interaction evaluation at N = 8000 (reads W once) beside
  a numpy reduction over the same W (one core's read bandwidth), a parallel row-sum loop (the
  read bandwidth of all cores) and two numpy matvecs; ``extra_info['GB/s']`` is the rate W is
  read at.
- rk4-run: N = 4000, 1000 RK4 steps, dense (W in float64, and in float32): ours vs numpy RK4
  with two matvecs per RHS, vs scipy solve_ivp(DOP853) at the tolerance where its error
  matches ours (errors against a dt/4 run and evaluation counts in ``extra_info``), and the
  read floor: the time of 4 parallel reads of W per step alone (our time in its units).
- large runs (full mode only): matrix-free ring graphon at N = 10^5 and an Erdős–Rényi CSR
  graph at N = 10^6 with mean degree 100, each in a fresh process streaming to a run file;
  peak RSS in extra_info.
"""

import os

import numpy as np
import pytest
from numba import njit, prange
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


@njit(parallel=True, fastmath=True)
def _parallel_read(W):
    # every row summed by one thread: the read bandwidth of all cores (no arithmetic to speak of)
    out = np.empty(W.shape[0])
    for i in prange(W.shape[0]):
        s = 0.0
        for j in range(W.shape[1]):
            s += W[i, j]
        out[i] = s
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.benchmark(group="dense-rhs")
def test_dense_rhs_parallel_read_bandwidth(benchmark, dtype):
    W, _ = _dense(N_RHS, dtype)
    _parallel_read(W)  # compile
    benchmark(_parallel_read, W)
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


@pytest.mark.parametrize("dtype", ["float64", "float32"], ids=["f64", "f32"])
@pytest.mark.benchmark(group="rk4-run")
def test_rk4_run_ours(benchmark, run_reference, dtype):
    # float32 stores W in half the bytes (sums still in float64): the run is bandwidth-bound
    W, omega, theta, model, fine = run_reference
    if dtype == "float32":
        model = Kuramoto(omega, W, 2.0, dtype="float32")
    simulate(model, theta, 2 * DT, DT)  # compile
    res = benchmark.pedantic(simulate, args=(model, theta, STEPS_RUN * DT, DT), rounds=3)
    benchmark.extra_info["max_error"] = float(np.abs(res.state - fine).max())
    benchmark.extra_info["nfev"] = 4 * STEPS_RUN


@pytest.mark.benchmark(group="rk4-run")
def test_rk4_run_numpy_two_matvecs(benchmark, run_reference):
    W, omega, theta, model, fine = run_reference
    f = _numpy_rhs(W, omega, 2.0)
    y = benchmark.pedantic(naive_rk4, args=(f, theta, DT, STEPS_RUN), rounds=1)
    benchmark.extra_info["max_error"] = float(np.abs(y - fine).max())


@pytest.mark.benchmark(group="rk4-run")
def test_rk4_run_scipy_dop853_matched(benchmark, run_reference):
    # scipy's most efficient explicit method at the tolerance where its error matches that of
    # our 1000 RK4 steps (about 1e-11); it adapts its steps, so it needs far fewer evaluations
    W, omega, theta, model, fine = run_reference
    f = _numpy_rhs(W, omega, 2.0)
    sol = benchmark.pedantic(
        solve_ivp,
        args=(lambda t, y: f(y), (0, STEPS_RUN * DT), theta),
        kwargs={"method": "DOP853", "rtol": 1e-12, "atol": 1e-13},
        rounds=1,
    )
    benchmark.extra_info["max_error"] = float(np.abs(sol.y[:, -1] - fine).max())
    benchmark.extra_info["nfev"] = int(sol.nfev)


@pytest.mark.parametrize("dtype", ["float64", "float32"], ids=["f64", "f32"])
@pytest.mark.benchmark(group="rk4-run")
def test_rk4_run_read_floor_reference(benchmark, run_reference, dtype):
    # the floor of any RK4 run that reads W once per evaluation: 4 parallel reads of W per
    # step and nothing else (the run is bandwidth-bound; numpy's two matvecs read it twice)
    W = run_reference[0].astype(dtype)
    _parallel_read(W)  # compile

    def reads():
        for _ in range(4 * STEPS_RUN):
            _parallel_read(W)

    benchmark.pedantic(reads, rounds=1)
    _rate(benchmark, 4 * STEPS_RUN * W.nbytes)


LARGE = {
    "graphon_ring_N1e5": (
        "from nndyn_fast import Graphon, Kuramoto, simulate\n"
        "n=100_000; rng=np.random.default_rng(0)\n"
        "m=Kuramoto(0.2*rng.standard_cauchy(n), Graphon.ring(0.1), 1.5)\n"
        "simulate(m, rng.uniform(0,6.28,n), 20.0, 0.05, out=OUT)\n"
    ),
    "csr_erdos_renyi_N1e6_deg100": (
        "from nndyn_fast import Kuramoto, erdos_renyi, simulate\n"
        "n=1_000_000; rng=np.random.default_rng(0)\n"
        "A=erdos_renyi(n, 100/(n-1), seed=1, dtype=np.float32)\n"
        "m=Kuramoto(0.2*rng.standard_cauchy(n), A, 1.5, dtype='float32')\n"
        "simulate(m, rng.uniform(0,6.28,n), 0.5, 0.05, out=OUT)\n"
    ),
}


@pytest.mark.skipif(not FULL, reason="large runs only with NNDYN_BENCH_FULL=1")
@pytest.mark.parametrize("name", list(LARGE))
@pytest.mark.benchmark(group="large-runs")
def test_large_run_ours(benchmark, name, tmp_path, fresh_process):
    # streamed to a run file, as a long run would be: memory is the model plus one chunk
    code = f"import numpy as np\nOUT = {str(tmp_path / 'run.h5')!r}\n" + LARGE[name]
    peak = benchmark.pedantic(fresh_process, args=(code,), rounds=1)
    benchmark.extra_info["peak_rss_MiB"] = peak
