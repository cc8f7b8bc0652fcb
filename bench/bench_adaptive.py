"""Adaptive network runs (``simulate(method="dop853")``) beside scipy's DOP853, at the same error.

Workload (group ``adaptive-run``): the dense Kuramoto network of bench_kuramoto's rk4-run,
dθ_i/dt = ω_i + (K/N) Σ_j W_ij sin(θ_j − θ_i), W uniform on [0, 1), K = 2, from t = 0 to
t_end (N = 4000, t_end = 10 with ``NNDYN_BENCH_FULL=1``; N = 200, t_end = 1 by default, so
that ``pytest bench --benchmark-disable`` runs in seconds).

Each solver runs at the loosest tolerance (rtol = atol, from a ladder) whose error at t_end
against a tight reference (ours, DOP853 at rtol = atol = 1e-14; scipy agrees with it to
about 1e-12) is at most ``TARGET`` = 1e-11, so the times compare equal accuracy. Baselines:
scipy ``solve_ivp(DOP853)`` on a numpy field reading W once per evaluation (one (N, N) x (N, 2)
product) and on the two-matvec field of bench_kuramoto. float32 W (ours only; sums still in
float64): the error is measured against a reference with the same float32 weights.
``extra_info``: error, tolerance, evaluations (nfev), accepted steps. One save time (t_end)
unless the name says otherwise: scipy computes no dense output either; ``saves1000`` saves
every t_end / 1000 (DOP853's continuous extension costs three evaluations on each step that
covers a save time). ``2threads`` / ``1thread``: numba on two threads / one (the automatic
choice is one at N = 4000; see the test's comment).
"""

import os
import sys

import numba
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from nndyn_fast import Kuramoto, simulate

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
N, T_END = (4000, 10.0) if FULL else (200, 1.0)
K = 2.0
TARGET = 1e-11
LADDER = [1e-10, 3e-11, 1e-11, 3e-12, 1e-12, 3e-13, 1e-13]


def _problem():
    rng = np.random.default_rng(1)
    W = rng.random((N, N))
    return W, rng.normal(size=N), rng.uniform(0, 2 * np.pi, N)


def _ours(model, theta, tol, saves=1):
    return simulate(model, theta, T_END, T_END / saves, method="dop853", rtol=tol, atol=tol)


def _gemm_field(W, omega):
    def f(t, theta):
        s, c = np.sin(theta), np.cos(theta)
        p = W @ np.stack([s, c], axis=1)  # reads W once
        return omega + K / N * (c * p[:, 0] - s * p[:, 1])

    return f


def _matvec_field(W, omega):
    def f(t, theta):
        s, c = np.sin(theta), np.cos(theta)
        return omega + K / N * (c * (W @ s) - s * (W @ c))

    return f


def _scipy(f, theta, tol):
    return solve_ivp(f, (0, T_END), theta, method="DOP853", rtol=tol, atol=tol)


def _calibrate(run, ref):
    """The loosest tolerance of the ladder whose run ends with error <= TARGET: (tol, error)."""
    for tol in LADDER:
        err = float(np.abs(run(tol) - ref).max())
        if err <= TARGET:
            break
    return tol, err


@pytest.fixture(scope="module")
def problem():
    W, omega, theta = _problem()
    models = {d: Kuramoto(omega, W, K, dtype=d) for d in ("float64", "float32")}
    refs = {d: _ours(m, theta, 1e-14).state for d, m in models.items()}
    return W, omega, theta, models, refs, {}


def _info(benchmark, tol, err, nfev, steps):
    benchmark.extra_info.update(
        {"rtol=atol": tol, "max_error": err, "nfev": int(nfev), "steps": int(steps)}
    )


VARIANTS = ["f64", "f32", "f64-saves1000", "f64-2threads", "f32-2threads", "f64-1thread"]
TH = sys.modules["nndyn_fast.threads"]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANTS)
@pytest.mark.benchmark(group="adaptive-run")
def test_adaptive_run_ours(benchmark, problem, variant, monkeypatch):
    # threads.for_work runs N = 4000 on one thread (a region, one read of W, is 4.5 ms of
    # work); "2threads" forces two threads, "1thread" one (for any N). On a shared machine
    # (another process keeping a core busy) a two-thread parallel region waits for the
    # descheduled thread; results are bitwise the same for any thread count
    W, omega, theta, models, refs, tols = problem
    dtype = "float32" if variant.startswith("f32") else "float64"
    saves = 1000 if variant.endswith("saves1000") else 1
    model = models[dtype]
    if dtype not in tols:
        tols[dtype] = _calibrate(lambda tol: _ours(model, theta, tol).state, refs[dtype])[0]
    tol = tols[dtype]
    before = numba.get_num_threads()
    try:
        if variant.endswith("1thread"):
            numba.set_num_threads(1)
        if variant.endswith("2threads"):
            monkeypatch.setattr(TH, "MIN_SECONDS_PER_THREAD", 0.0)
            numba.set_num_threads(min(2, TH.max_threads()))
        _ours(model, theta, tol, saves)  # compile (cached) and warm
        out = benchmark.pedantic(_ours, args=(model, theta, tol, saves), rounds=3)
    finally:
        numba.set_num_threads(before)
    err = float(np.abs(out.state - refs[dtype]).max())
    _info(benchmark, tol, err, out.stats["n_fev"], out.stats["n_accepted"])
    assert err <= 1.5 * TARGET


@pytest.mark.parametrize("field", ["gemm", "two-matvecs"])
@pytest.mark.benchmark(group="adaptive-run")
def test_adaptive_run_scipy_dop853(benchmark, problem, field):
    # float64 only: a numpy field on float32 W sums in float32 (errors ~1e-7, not 1e-11),
    # and W.astype per evaluation would read more, not less
    W, omega, theta, models, refs, _ = problem
    f = (_gemm_field if field == "gemm" else _matvec_field)(W, omega)
    tol, _ = _calibrate(lambda tol: _scipy(f, theta, tol).y[:, -1], refs["float64"])
    sol = benchmark.pedantic(_scipy, args=(f, theta, tol), rounds=1)
    err = float(np.abs(sol.y[:, -1] - refs["float64"]).max())
    _info(benchmark, tol, err, sol.nfev, sol.t.size - 1)
    assert err <= 1.5 * TARGET
