"""Benchmarks of the neural-DDE gradients (the discrete adjoint of the method of steps), each
beside the forward pass it differentiates.

Default (CI) size: x' = W tanh(A x + B x(t - 0.2) + b), d = H = 4, batch 16, t in [0, 1],
RK4 with dt = 0.05. Full size (``NNDYN_BENCH_FULL=1``): d = H = 64, batch 1024, dt = 0.01
(100 steps). Groups: the gradient of ½ mean ||x(T) - y||² (``dde_loss_and_grad``: one forward
run keeping its nodes, one reverse sweep recomputing each step's stages) beside ``ddeint``'s
forward pass (the lockstep RK4 path for batches of 8 or more) and beside the forward run that
keeps the nodes (``dde_forward``); the Dormand-Prince gradient (rtol 1e-6, the accepted steps
held) beside ``ddeint``'s dopri5 forward pass with the same hmax.
"""

import os

import numpy as np
import pytest

from nndyn_fast.dde_gradients import dde_forward, dde_loss_and_grad
from nndyn_fast.delay import NeuralDDE, ddeint

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
D, B, DT = (64, 1024, 0.01) if FULL else (4, 16, 0.05)
TAU = 0.2
HMAX = TAU / 1.05


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    s = 1.0 / np.sqrt(D)
    model = NeuralDDE(s * rng.standard_normal((D, D)), s * rng.standard_normal((D, D)),
                      s * rng.standard_normal((D, D)), 0.1 * rng.standard_normal(D))  # fmt: skip
    X = rng.standard_normal((B, D))
    Y = rng.standard_normal((B, D))
    dde_loss_and_grad(model, X[:2], Y[:2], delays=TAU, dt=0.1)  # compile / load the cache
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
def test_grad_dde_rk4_forward_ddeint(benchmark, problem):
    model, X, _ = problem
    benchmark(lambda: ddeint(model, X, [0.0, 1.0], delays=TAU, method="rk4", dt=DT))


@pytest.mark.benchmark(group="grad-dde-rk4")
def test_grad_dde_rk4_forward_recorded(benchmark, problem):
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
