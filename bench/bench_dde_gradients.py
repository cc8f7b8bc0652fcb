"""Benchmarks of the neural-DDE gradients (the discrete adjoint of the method of steps), each
beside the forward pass it differentiates.

Default (CI) size: x' = W tanh(A x + B x(t - 0.2) + b), d = H = 4, batch 16, t in [0, 1],
RK4 with dt = 0.05. Full size (``NNDYN_BENCH_FULL=1``): d = H = 64, batch 1024, dt = 0.01
(100 steps). Groups:

- ``grad-dde-rk4``: the gradient of ½ mean ||x(T) - y||² (``dde_loss_and_grad``, bounded
  memory by default: forward runs in lockstep over the rows, the reverse sweep over blocks of
  rows) beside ``ddeint``'s forward pass (the lockstep RK4 path for batches of 8 or more),
  the forward run alone (``dde_forward``, lockstep, keeping only the delay window) and the
  same gradient with every node kept (``checkpoints="all"``: the row-by-row forward run).
- ``grad-dde-dopri5``: the Dormand-Prince gradient (rtol 1e-6, the accepted steps held)
  beside ``ddeint``'s dopri5 forward pass with the same hmax.
- ``grad-dde-memory``: a long run, the RK4 gradient over n and 4n steps (default d = H = 4,
  batch 16, dt = 0.05, T = 5 and 20; full d = H = 64, batch 64, dt = 0.01, T = 1 and 4) with
  the default 16 checkpoints; ``extra_info`` holds the peak bytes of the arrays allocated
  (tracemalloc) for n, 4n, 16n and 64n steps and for 4n steps with every node kept (n = 100 steps
  fit the bound and are recorded whole; the memory grows until the 16 checkpoints are in use,
  at 16 segments of 64 steps, and stays there).
"""

import os
import tracemalloc

import numpy as np
import pytest

from nndyn_fast.dde_gradients import dde_forward, dde_loss_and_grad
from nndyn_fast.delay import NeuralDDE, ddeint

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
D, B, DT = (64, 1024, 0.01) if FULL else (4, 16, 0.05)
TAU = 0.2
HMAX = TAU / 1.05
# the long run: (d, batch, dt, T for n steps)
MEM = (64, 64, 0.01, 1.0) if FULL else (4, 16, 0.05, 5.0)


def _model(d, seed=0):
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(d)
    return NeuralDDE(s * rng.standard_normal((d, d)), s * rng.standard_normal((d, d)),
                     s * rng.standard_normal((d, d)), 0.1 * rng.standard_normal(d))  # fmt: skip


@pytest.fixture(scope="module")
def problem():
    model = _model(D)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((B, D))
    Y = rng.standard_normal((B, D))
    dde_loss_and_grad(model, X[:2], Y[:2], delays=TAU, dt=0.1)  # compile / load the cache
    dde_loss_and_grad(model, X[:2], Y[:2], delays=TAU, dt=0.1, checkpoints="all")
    dde_loss_and_grad(model, X[:2], Y[:2], delays=TAU, method="dopri5", rtol=1e-3)
    ddeint(model, X[:8], [0.0, 1.0], delays=TAU, method="rk4", dt=0.1)
    ddeint(model, X[:2], [0.0, 1.0], delays=TAU, rtol=1e-3, hmax=HMAX)
    return model, X, Y


@pytest.mark.benchmark(group="grad-dde-rk4")
def test_grad_dde_rk4_ours(benchmark, problem):
    model, X, Y = problem
    loss, g = benchmark(lambda: dde_loss_and_grad(model, X, Y, delays=TAU, dt=DT))
    F = ddeint(model, X, [0.0, 1.0], delays=TAU, method="rk4", dt=DT).y[-1]
    # the same map as ddeint's (rounding of the last digits)
    assert abs(loss - 0.5 * np.sum((F - Y) ** 2) / B) < 1e-12 * max(1.0, loss)


@pytest.mark.benchmark(group="grad-dde-rk4")
def test_grad_dde_rk4_every_node_kept(benchmark, problem):
    model, X, Y = problem
    benchmark(lambda: dde_loss_and_grad(model, X, Y, delays=TAU, dt=DT, checkpoints="all"))


@pytest.mark.benchmark(group="grad-dde-rk4")
def test_grad_dde_rk4_forward_ddeint(benchmark, problem):
    model, X, _ = problem
    benchmark(lambda: ddeint(model, X, [0.0, 1.0], delays=TAU, method="rk4", dt=DT))


@pytest.mark.benchmark(group="grad-dde-rk4")
def test_grad_dde_rk4_forward_alone(benchmark, problem):
    model, X, _ = problem
    benchmark(lambda: dde_forward(model, X, 1.0, delays=TAU, dt=DT))


@pytest.mark.benchmark(group="grad-dde-dopri5")
def test_grad_dde_dopri5_ours(benchmark, problem):
    model, X, Y = problem
    _, g = benchmark(lambda: dde_loss_and_grad(model, X, Y, delays=TAU, method="dopri5",
                                               rtol=1e-6, atol=1e-8))  # fmt: skip
    benchmark.extra_info["mean_steps"] = float(np.mean(g.n_steps))


@pytest.mark.benchmark(group="grad-dde-dopri5")
def test_grad_dde_dopri5_forward_ddeint(benchmark, problem):
    model, X, _ = problem
    benchmark(lambda: ddeint(model, X, [0.0, 1.0], delays=TAU, rtol=1e-6, atol=1e-8, hmax=HMAX))


def _peak(call):
    call()
    tracemalloc.start()
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.benchmark(group="grad-dde-memory")
def test_grad_dde_memory_long_run_ours(benchmark):
    d, b, dt, T = MEM
    model = _model(d, seed=2)
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((b, d)), rng.standard_normal((b, d))

    def grad(t, **kw):
        return lambda: dde_loss_and_grad(model, X, Y, t, delays=TAU, dt=dt, **kw)

    held = {f"bytes_{k}n": _peak(grad(k * T)) for k in (1, 4, 16, 64)}
    held["bytes_4n_every_node"] = _peak(grad(4 * T, checkpoints="all"))
    held["steps_n"] = int(round(T / dt))
    benchmark.extra_info.update(held)
    _, g = benchmark(grad(4 * T))
    assert g.n_steps[0] >= 4 * held["steps_n"]
    # bounded: 16 times the steps in less memory than every node of 4 times
    assert held["bytes_4n"] < held["bytes_4n_every_node"]
    assert held["bytes_16n"] < held["bytes_4n_every_node"]
    assert held["bytes_64n"] < 1.05 * held["bytes_16n"]  # every slot in use from 16 segments
