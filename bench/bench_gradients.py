"""Benchmarks of the flow-map gradients (the discrete adjoint), each beside its baselines.

Full sizes (``NNDYN_BENCH_FULL=1``): f(x) = W tanh(A x + b), d = H = 64, batch 1024, t in
[0, 1]; the gradient of ½ mean ||Φ(x) - y||² with RK4 and 100 steps: the default (every
step's stages of a block on the tape: each step evaluated once) beside the 32 checkpoint
slots of ``checkpoints=32`` (each step evaluated at most 3 times) and every state stored (100
slots: twice), the forward pass alone (``flow_map``, the package's RK4), a numpy reverse
sweep of the same steps (every stage stored, whole-batch BLAS products,
tests/reference_gradients.py) and the floor: the matrix products alone, whole-batch BLAS on
one thread (``products_forward``: the forward's 2 per stage, ``A x`` and ``W σ``;
``products_gradient``: those and the reverse's 4, ``k̄ W``, ``p̄ A``, ``k̄ σ^T`` and
``p̄ Y^T``; their ratio is the floor of gradient / forward at equal product speed, 3 by
count). A long run (batch 16, d = H = 8, 10^4 RK4 steps: the tape does not fit, 32 slots;
the recompute factor, step evaluations per step, in ``extra_info``) beside its forward pass.
The Dormand-Prince gradient (rtol 1e-6, the accepted steps held, on each row's tape) beside
the package's dopri5 forward pass.
"""

import os

import numpy as np
import pytest
from reference_gradients import rk_vjp
from threadpoolctl import threadpool_limits

from nndyn_fast.gradients import loss_and_grad
from nndyn_fast.kernels import rk as _rk
from nndyn_fast.neural import NeuralODE, flow_map

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
D, B, STEPS = (64, 1024, 100) if FULL else (8, 32, 10)
LONG = 10_000 if FULL else 1000  # steps of the long run (batch 16, d = 8)


@pytest.fixture(scope="module")
def problem():
    model = NeuralODE.random(D, D, seed=0)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((B, D))
    Y = rng.standard_normal((B, D))
    loss_and_grad(model, X[:2], Y[:2], steps=2)  # compile / load the cache
    loss_and_grad(model, X[:2], Y[:2], method="dopri5", rtol=1e-3)
    flow_map(model, X[:2], method="rk4", dt=0.5)
    flow_map(model, X[:2], rtol=1e-3)
    return model, X, Y


@pytest.mark.benchmark(group="grad-rk4-d64-batch1024")
def test_grad_rk4_ours(benchmark, problem):
    model, X, Y = problem
    loss, g = benchmark(lambda: loss_and_grad(model, X, Y, steps=STEPS))
    benchmark.extra_info["recompute_factor"] = float(g.n_evals.max()) / STEPS
    r = flow_map(model, X, method="rk4", dt=1.0 / STEPS) - Y
    assert abs(loss - 0.5 * np.sum(r * r) / B) < 1e-12 * max(1.0, loss)


@pytest.mark.benchmark(group="grad-rk4-d64-batch1024")
def test_grad_rk4_32_slots(benchmark, problem):
    model, X, Y = problem
    _, g = benchmark(lambda: loss_and_grad(model, X, Y, steps=STEPS, checkpoints=32))
    benchmark.extra_info["recompute_factor"] = float(g.n_evals.max()) / STEPS
    _, tape = loss_and_grad(model, X, Y, steps=STEPS)
    assert np.all(tape.n_evals == STEPS)  # the default kept every step's stages
    for k in g.params:
        np.testing.assert_array_equal(g.params[k], tape.params[k])  # the same sums, bitwise


@pytest.mark.benchmark(group="grad-rk4-d64-batch1024")
def test_grad_rk4_every_state_stored(benchmark, problem):
    model, X, Y = problem
    _, g = benchmark(lambda: loss_and_grad(model, X, Y, steps=STEPS, checkpoints=STEPS))
    benchmark.extra_info["recompute_factor"] = float(g.n_evals.max()) / STEPS
    _, g32 = loss_and_grad(model, X, Y, steps=STEPS)
    np.testing.assert_array_equal(g.params["A"], g32.params["A"])  # the same sweep, bitwise


@pytest.mark.benchmark(group="grad-rk4-d64-batch1024")
def test_grad_rk4_forward_pass(benchmark, problem):
    model, X, _ = problem
    benchmark(lambda: flow_map(model, X, method="rk4", dt=1.0 / STEPS))


@pytest.mark.benchmark(group="grad-rk4-d64-batch1024")
def test_grad_rk4_numpy(benchmark, problem):
    model, X, Y = problem
    hs = np.full(STEPS, 1.0 / STEPS)
    ls = np.zeros(STEPS, np.int64)

    def run():
        ZT = flow_map(model, X, method="rk4", dt=1.0 / STEPS)
        C = (ZT - Y) / B
        return rk_vjp(model.W, model.A, model.b, "tanh", X, C, hs, ls, _rk.RK4_A, _rk.RK4_B)

    gW, gA, *_ = benchmark(run)
    _, g = loss_and_grad(model, X, Y, steps=STEPS)
    # the same sums in another order: rounding a few ulps times the sweep's length
    assert np.abs(gA - g.params["A"]).max() < 1e-10


def _products(model, X, backward):
    # the matrix products of the RK4 steps alone, whole batch, BLAS into preallocated arrays:
    # per stage the forward's P = Y A^T and K = Σ W^T, and with `backward` the reverse's
    # Σ̄ = K̄ W, Ȳ = P̄ A, W̄ += K̄^T Σ, Ā += P̄^T Y (the same shapes; values do not matter).
    # On one BLAS thread: on two, the long reductions K̄^T Σ (64 x 64 out of 1024 rows) ran
    # at half the speed of the others, so the ratio measured the threading, not the count
    A, W = model.A[0], model.W[0]
    Yb, Sg = X.copy(), np.tanh(X[:, : A.shape[0]])
    P, K = np.empty((B, A.shape[0])), np.empty((B, D))
    gW, gA, tW, tA = np.zeros_like(W), np.zeros_like(A), np.empty_like(W), np.empty_like(A)

    def run():
        with threadpool_limits(1):
            _steps()

    def _steps():
        for _ in range(STEPS * 4):
            np.dot(Yb, A.T, out=P)
            np.dot(Sg, W.T, out=K)
            if backward:
                np.dot(K, W, out=P)
                np.dot(P, A, out=K)
                np.dot(K.T, Sg, out=tW)
                np.add(gW, tW, out=gW)
                np.dot(P.T, Yb, out=tA)
                np.add(gA, tA, out=gA)

    return run


@pytest.mark.benchmark(group="grad-rk4-d64-batch1024")
def test_grad_rk4_products_forward(benchmark, problem):
    model, X, _ = problem
    benchmark(_products(model, X, False))


@pytest.mark.benchmark(group="grad-rk4-d64-batch1024")
def test_grad_rk4_products_gradient(benchmark, problem):
    model, X, _ = problem
    benchmark(_products(model, X, True))


@pytest.fixture(scope="module")
def long_problem():
    model = NeuralODE.random(8, 8, seed=2)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((16, 8))
    loss_and_grad(model, X, X, steps=2)
    flow_map(model, X, method="rk4", dt=0.5)
    return model, X


@pytest.mark.benchmark(group="grad-rk4-long-run")
def test_grad_rk4_long_ours(benchmark, long_problem):
    model, X = long_problem
    _, g = benchmark(lambda: loss_and_grad(model, X, np.zeros_like(X), steps=LONG))
    benchmark.extra_info["recompute_factor"] = float(g.n_evals.max()) / LONG
    # at full size the tape (82 MB) does not fit its 32 MiB: the slots
    assert (g.n_evals.max() > LONG) == FULL


@pytest.mark.benchmark(group="grad-rk4-long-run")
def test_grad_rk4_long_forward_pass(benchmark, long_problem):
    model, X = long_problem
    benchmark(lambda: flow_map(model, X, method="rk4", dt=1.0 / LONG))


@pytest.mark.benchmark(group="grad-dopri5-d64-batch1024")
def test_grad_dopri5_ours(benchmark, problem):
    model, X, Y = problem
    _, g = benchmark(lambda: loss_and_grad(model, X, Y, method="dopri5", rtol=1e-6, atol=1e-8))
    benchmark.extra_info["mean_steps"] = float(np.mean(g.n_steps))
    benchmark.extra_info["recompute_factor"] = float(np.mean(g.n_evals / g.n_steps))


@pytest.mark.benchmark(group="grad-dopri5-d64-batch1024")
def test_grad_dopri5_forward_pass(benchmark, problem):
    model, X, _ = problem
    benchmark(lambda: flow_map(model, X, method="dopri5", rtol=1e-6, atol=1e-8))
