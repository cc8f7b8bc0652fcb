"""Benchmarks of the delay integrators, each beside its baseline in the same group.

- ``dde-mackey-glass``: Mackey-Glass (beta 0.2, gamma 0.1, n 10, tau 17, history 1.2) to
  t_end (1000 with NNDYN_BENCH_FULL=1, else 100), every solver at the loosest setting that
  reaches an error of 1e-6 at t = 100 against a tight-tolerance dopri5 run (cross-checked by
  fixed-step RK4): our dopri5, our rk4, a pure numpy/Python RK4 with Hermite history, and the
  compiled DDE solver jitcdde (Bogacki-Shampine 3(2) in C generated and compiled at run time;
  skipped when jitcdde is not installed; its C compilation is done once outside the timing and
  reported in ``extra_info``).
- ``dde-neural-batch``: 1000 (full; 200 default) one-dimensional NeuralDDE inputs to T = 10
  (RK4, dt = 0.01, H = 8): our lockstep RK4 (blocks of members sharing the step times) on all
  threads and on one, our per-trajectory kernel, and numpy RK4 vectorised over the batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from nndyn_fast.delay import MackeyGlass, NeuralDDE, ddeint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_dde import mackey_glass_rhs, naive_rk4, neural_dde_rhs  # noqa: E402

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
T_END = 1000.0 if FULL else 100.0
TARGET = 1e-6
MG = MackeyGlass()
H0 = np.array([1.2])


def _mg_hist(s):
    return np.array([1.2])


@pytest.fixture(scope="module")
def mg_settings():
    t100 = np.array([0.0, 100.0])
    ref = ddeint(MG, H0, t100, delays=17.0, rtol=1e-12, atol=1e-14).y[-1, 0]
    chk = ddeint(MG, H0, t100, delays=17.0, method="rk4", dt=0.01).y[-1, 0]
    assert abs(ref - chk) < 1e-9  # the reference is cross-checked by the fixed-step method
    rtol = next(
        r
        for r in (1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 3e-8, 1e-8)
        if abs(ddeint(MG, H0, t100, delays=17.0, rtol=r, atol=r).y[-1, 0] - ref) <= TARGET
    )
    dts = (1.0, 0.5, 0.25, 0.2, 0.125, 0.1)  # divisors of 17 for the naive fixed grid
    dt_ours = next(
        d
        for d in dts
        if abs(ddeint(MG, H0, t100, delays=17.0, method="rk4", dt=d).y[-1, 0] - ref) <= TARGET
    )
    f = mackey_glass_rhs()
    dt_naive = next(
        d
        for d in dts
        if abs(naive_rk4(f, _mg_hist, 0.0, 100.0, d, [17.0])[1][-1, 0] - ref) <= TARGET
    )
    print(f"\nMackey-Glass settings for error {TARGET} at t=100: dopri5 rtol={rtol}, "
          f"rk4 dt={dt_ours}, naive dt={dt_naive}")  # fmt: skip
    return rtol, dt_ours, dt_naive, ref


T_OUT = np.linspace(0.0, T_END, 11)


@pytest.mark.benchmark(group="dde-mackey-glass")
def test_mg_ours_dopri5(benchmark, mg_settings):
    rtol = mg_settings[0]
    ddeint(MG, H0, T_OUT, delays=17.0, rtol=rtol, atol=rtol)  # compile
    benchmark(ddeint, MG, H0, T_OUT, delays=17.0, rtol=rtol, atol=rtol)


@pytest.mark.benchmark(group="dde-mackey-glass")
def test_mg_ours_rk4(benchmark, mg_settings):
    dt = mg_settings[1]
    ddeint(MG, H0, T_OUT, delays=17.0, method="rk4", dt=dt)
    benchmark(ddeint, MG, H0, T_OUT, delays=17.0, method="rk4", dt=dt)


@pytest.mark.benchmark(group="dde-mackey-glass")
def test_mg_naive_numpy_rk4(benchmark, mg_settings):
    dt = mg_settings[2]
    f = mackey_glass_rhs()
    benchmark.pedantic(
        naive_rk4, args=(f, _mg_hist, 0.0, T_END, dt, [17.0]), rounds=3 if FULL else 1
    )


def _jitcdde_run(dde, tol, times):
    """jitcdde from the constant history 1.2 at tolerance ``tol``; x at ``times``."""
    dde.purge_past()
    dde.constant_past([1.2], time=0.0)
    dde.reset_integrator()
    dde.set_integration_parameters(rtol=tol, atol=tol)
    dde.step_on_discontinuities()
    return np.array([dde.integrate(s)[0] for s in times])


@pytest.mark.benchmark(group="dde-mackey-glass")
def test_mackey_glass_jitcdde(benchmark, mg_settings, tmp_path, monkeypatch):
    jc = pytest.importorskip("jitcdde")
    import time

    monkeypatch.chdir(tmp_path)  # its setuptools build must not read this project's pyproject

    y, t = jc.y, jc.t
    ref = mg_settings[3]
    tic = time.perf_counter()
    f = [MG.beta * y(0, t - 17.0) / (1 + y(0, t - 17.0) ** MG.n) - MG.gamma * y(0)]
    dde = jc.jitcdde(f, delays=[17.0], max_delay=17.0, verbose=False)  # delays given: no sympy
    dde.compile_C(simplify=False, verbose=False)
    benchmark.extra_info["compile_s"] = time.perf_counter() - tic
    tol = next(
        r
        for r in (1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 3e-8, 1e-8, 3e-9, 1e-9)
        if abs(_jitcdde_run(dde, r, [100.0])[-1] - ref) <= TARGET
    )
    benchmark.extra_info["tol"] = tol
    benchmark.extra_info["error_t100"] = abs(_jitcdde_run(dde, tol, [100.0])[-1] - ref)
    benchmark(_jitcdde_run, dde, tol, T_OUT[1:])


# --- a batch of one-dimensional NeuralDDE inputs ---
BATCH = 1000 if FULL else 200
_rng = np.random.default_rng(0)
NEURAL = NeuralDDE(
    _rng.normal(size=(1, 8)) / 3, _rng.normal(size=(8, 1)), _rng.normal(size=(8, 1)),
    _rng.normal(size=8),
)  # fmt: skip
X = np.linspace(-2.0, 2.0, BATCH)[:, None]
T10 = np.array([0.0, 10.0])
DT = 0.01


def _neural_batch():
    return ddeint(NEURAL, X, T10, delays=1.0, method="rk4", dt=DT)


def _bench_threads(benchmark, threads):
    _neural_batch()  # compile
    numba.set_num_threads(threads)
    try:
        benchmark(_neural_batch)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@pytest.mark.benchmark(group="dde-neural-batch")
def test_neural_batch_ours_lockstep_all_threads(benchmark):
    _bench_threads(benchmark, numba.config.NUMBA_NUM_THREADS)
    assert _neural_batch().stats["lockstep"]


@pytest.mark.benchmark(group="dde-neural-batch")
def test_neural_batch_ours_lockstep_one_thread(benchmark):
    _bench_threads(benchmark, 1)


@pytest.mark.benchmark(group="dde-neural-batch")
def test_neural_batch_ours_per_member_all_threads(benchmark, monkeypatch):
    import nndyn_fast.delay as delay

    monkeypatch.setattr(delay, "_LOCKSTEP_MIN_BATCH", BATCH + 1)  # the per-trajectory kernel
    _bench_threads(benchmark, numba.config.NUMBA_NUM_THREADS)
    assert not _neural_batch().stats["lockstep"]


@pytest.mark.benchmark(group="dde-neural-batch")
def test_neural_batch_numpy(benchmark):
    W, A, B, b = NEURAL.layer_weights()
    base = neural_dde_rhs(W, A, B, b)

    def f(t, x, xd, tl=None):  # the batch as one diagonal system: x (BATCH,)
        z = A[0] @ x[None, :] + B[0, 0] @ xd[0][None, :] + b[0][:, None]
        return (W[0] @ np.tanh(z))[0]

    x0 = X[:, 0].copy()
    assert np.allclose(f(0.0, x0[:1], x0[None, :1]), base(0.0, x0[:1], x0[None, :1]))
    rounds = 3 if FULL else 1
    benchmark.pedantic(naive_rk4, args=(f, lambda s: x0, 0.0, 10.0, DT, [1.0]), rounds=rounds)
