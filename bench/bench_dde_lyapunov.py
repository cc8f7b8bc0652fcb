"""Benchmark of the DDE Lyapunov spectrum, beside its baselines in the same group.

``dde-lyapunov-mackey-glass``: Mackey-Glass (beta 0.2, gamma 0.1, n 10, tau 17, history 0.9),
top 4 exponents to t = 10^4 (NNDYN_BENCH_FULL=1; 10^3 by default), RK4 with dt = 0.17 (the
segment a grid of 101 values), re-orthonormalised once per delay:

- ``_ours``: :func:`nndyn_fast.dde_lyapunov` (compiled kernel, one member).
- ``_ours_rtol``: the same with the step chosen for ``rtol = 1e-6``, which picks dt = 17/101
  (101 steps per delay, against 100 given) here: nearly the same run, so the difference is
  mostly the pilot runs' time (the chosen step and the pilot's error estimate in
  ``extra_info``).
- ``numpy``: the same method in numpy (tests/reference_dde_lyapunov.py: a Python loop over
  steps, numpy over the tangent vectors); checked to give the same exponents first.
- ``jitcdde``: jitcdde_lyap (adaptive Bogacki-Shampine in C generated and compiled at run time,
  tangent vectors on its Hermite spline), rtol 1e-6, skipped when jitcdde is not installed;
  its C compilation is done once outside the timing and reported in ``extra_info`` with the
  exponents it gives.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nndyn_fast.dde_lyapunov import _orthonormal_segments, _stencils, dde_lyapunov, segment_weights
from nndyn_fast.delay import MackeyGlass

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_dde_lyapunov import reference_dde_lyap_advance  # noqa: E402

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
T_END = 1.0e4 if FULL else 1.0e3
TAU, DT, K = 17.0, 0.17, 4
N = 100  # tau / dt
MG = MackeyGlass()


RTOL = 1e-6


def _ours(t_end):
    return dde_lyapunov(MG, [0.9], delays=TAU, k=K, t_end=t_end, dt=DT, n_records=20)


def _ours_rtol(t_end):
    return dde_lyapunov(MG, [0.9], delays=TAU, k=K, t_end=t_end, rtol=RTOL, n_records=20)


def _mg(t, x, xd):
    v = xd[0]
    return MG.beta * v / (1.0 + v**MG.n) - MG.gamma * x


def _numpy(t_end):
    """The same run as :func:`_ours` in numpy: same initial segments, same reorthonormalisation
    points (chunks of steps / 20 rounded to whole delays, and every N steps within them)."""
    R = N + 1
    wq = segment_weights(R, DT)
    w_rows = wq[(np.arange(R) - 1) % R]
    V = _orthonormal_segments(np.random.default_rng(0), 1, K, R, 1, w_rows)[0]
    V = V[:, (1 + np.arange(R)) % R].copy()
    X = np.full((R, 1), 0.9)
    Nj = np.array([N])
    off, w = _stencils(Nj, N)
    steps = int(round(t_end / DT))
    chunk = -(-max(1, -(-steps // 20)) // N) * N
    logsum = np.zeros(K)
    n = 0
    while n < steps:
        m = min(chunk, steps - n)
        n = reference_dde_lyap_advance(
            _mg, MG.jacobian, X, V, Nj, off, w, wq, 0.0, n, DT, m, N, logsum
        )  # fmt: skip
    return logsum / (steps * DT)


def test_reference_agrees():
    """The numpy baseline runs the same method: same exponents on a short run (chaos amplifies
    rounding by exp(lambda_1 t) ~ 2 at t = 170)."""
    np.testing.assert_allclose(_numpy(170.0), _ours(170.0).exponents, rtol=1e-6, atol=1e-9)


@pytest.mark.benchmark(group="dde-lyapunov-mackey-glass")
def test_mg_lyapunov_ours(benchmark):
    tic = time.perf_counter()
    _ours(10 * TAU)  # compile (or load from the cache) outside the timing
    benchmark.extra_info["warmup_s"] = time.perf_counter() - tic
    res = benchmark(_ours, T_END)
    benchmark.extra_info["exponents"] = res.exponents.tolist()
    benchmark.extra_info["stderr"] = res.stderr.tolist()


@pytest.mark.benchmark(group="dde-lyapunov-mackey-glass")
def test_mg_lyapunov_ours_rtol(benchmark):
    _ours_rtol(10 * TAU)  # compile (or load from the cache) outside the timing
    res = benchmark(_ours_rtol, T_END)
    benchmark.extra_info["rtol"] = RTOL
    benchmark.extra_info["dt"] = res.dt
    benchmark.extra_info["steps_per_delay"] = round(TAU / res.dt)
    benchmark.extra_info["error_estimate"] = res.error_estimate
    benchmark.extra_info["exponents"] = res.exponents.tolist()
    benchmark.extra_info["stderr"] = res.stderr.tolist()


@pytest.mark.benchmark(group="dde-lyapunov-mackey-glass")
def test_mg_lyapunov_numpy(benchmark):
    lam = benchmark.pedantic(_numpy, args=(T_END,), rounds=1, iterations=1)
    benchmark.extra_info["exponents"] = lam.tolist()


def _jitcdde_run(dde, t_end):
    dde.purge_past()
    dde.constant_past([0.9], time=0.0)
    dde.reset_integrator()
    dde.set_integration_parameters(rtol=1e-6, atol=1e-8)
    dde.step_on_discontinuities()
    lyaps, weights = [], []
    for t in dde.t + np.arange(TAU, t_end + TAU / 2, TAU):
        _, lyap, w = dde.integrate(t)
        lyaps.append(lyap)
        weights.append(w)
    return np.average(np.array(lyaps), axis=0, weights=np.array(weights))


@pytest.mark.benchmark(group="dde-lyapunov-mackey-glass")
def test_mg_lyapunov_jitcdde(benchmark, tmp_path, monkeypatch):
    jc = pytest.importorskip("jitcdde")
    pytest.importorskip("sympy")  # jitcdde_lyap simplifies the tangent field with sympy
    monkeypatch.chdir(tmp_path)  # its setuptools build must not read this project's pyproject
    y, t = jc.y, jc.t
    tic = time.perf_counter()
    f = [MG.beta * y(0, t - TAU) / (1 + y(0, t - TAU) ** MG.n) - MG.gamma * y(0)]
    dde = jc.jitcdde_lyap(f, n_lyap=K, delays=[TAU], max_delay=TAU, verbose=False)
    dde.compile_C(simplify=False, verbose=False)
    benchmark.extra_info["compile_s"] = time.perf_counter() - tic
    lam = benchmark.pedantic(_jitcdde_run, args=(dde, T_END), rounds=1, iterations=1)
    benchmark.extra_info["exponents"] = lam.tolist()
