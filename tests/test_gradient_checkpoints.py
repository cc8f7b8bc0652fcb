"""Fixed-memory (binomial) checkpointing of the flow-map adjoint (kernels/adjoint.py): any number
of slots gives bitwise the gradient of storing every state and of the stage tape (the default),
the number of step evaluations is the minimum over all recursive checkpoint schedules (a dynamic
programme written here), and the memory does not grow with the number of steps: the tape's
budget, or the slots."""

import tracemalloc
from functools import lru_cache

import numpy as np
import pytest
from numba.core.runtime import _nrt_python as nrt
from numba.core.runtime import rtsys

import nndyn_fast as nf
from nndyn_fast import gradients as G
from nndyn_fast.neural import AugmentedNeuralODE, NeuralODE

# one worker compiles the adjoint kernels once and runs these in turn (under two workers
# each compiled them, at the same time)
pytestmark = pytest.mark.xdist_group("gradients")


@lru_cache(None)
def _fewest_evaluations(n: int, free: int) -> int:
    # least step evaluations reversing n steps from a stored state with `free` more slots:
    # store after m steps and reverse the two parts, or (no slot) re-run from the start
    if n == 1:
        return 1
    if free == 0:
        return n * (n + 1) // 2
    return min(m + _fewest_evaluations(n - m, free - 1) + _fewest_evaluations(m, free)
               for m in range(1, n))  # fmt: skip


def _outputs(g):
    return [g.X, g.y, np.array(g.T), *g.params.values()]


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_any_number_of_slots_gives_the_store_everything_gradient_bitwise(method):
    model = AugmentedNeuralODE(
        NeuralODE.random(3, 4, layers=2, seed=2), 1, np.random.default_rng(3).normal(size=(2, 3))
    )
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(20, 2)), rng.normal(size=(20, 2))
    kw = {"steps": 40} if method == "rk4" else {"rtol": 1e-11, "atol": 1e-13}
    loss, ref = G.loss_and_grad(model, X, Y, method=method, checkpoints=10_000, **kw)
    n = int(ref.n_steps.max())
    assert n >= 20
    if method == "rk4":
        assert np.all(ref.n_evals == 2 * n - 1)  # every state stored: each step run twice
    # the default keeps every step's stages (the tape fits): each step evaluated once
    lo, g = G.loss_and_grad(model, X, Y, method=method, **kw)
    assert lo == loss
    for a, b in zip(_outputs(ref), _outputs(g), strict=True):
        np.testing.assert_array_equal(a, b)
    if method == "rk4":
        assert np.all(g.n_evals == n)
    else:
        assert np.all(g.n_evals < ref.n_evals)  # the counting run only
    for slots in (1, 2, 3, 7):
        lo, g = G.loss_and_grad(model, X, Y, method=method, checkpoints=slots, **kw)
        assert lo == loss
        for a, b in zip(_outputs(ref), _outputs(g), strict=True):
            np.testing.assert_array_equal(a, b)
        if method == "rk4":
            assert np.all(g.n_evals == _fewest_evaluations(n, slots - 1))
        else:
            # the counting run, then never fewer evaluations than the optimal schedule
            assert np.all(g.n_evals > ref.n_evals)


def test_the_schedule_is_the_optimal_one_for_every_length():
    m = NeuralODE.random(2, 3, seed=5)
    X, C = np.ones((1, 2)), np.ones((1, 2))
    for n in (2, 3, 9, 30, 57):
        for slots in (2, 4):
            g = G.flow_map_vjp(m, X, None, C, steps=n, checkpoints=slots)
            assert g.n_evals[0] == _fewest_evaluations(n, slots - 1), (n, slots)


def _memory(call):
    # peak bytes of numpy allocations (the workspace the API allocates) and the number of
    # allocations inside the compiled kernels (Numba's NRT counters), on one thread (the
    # parallel launch's own bookkeeping depends on the thread count, which follows the work)
    with nf.threads(1):
        call()  # compiled
        nrt.memsys_enable_stats()
        try:
            a0 = rtsys.get_allocation_stats().alloc
            tracemalloc.start()
            g = call()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            allocs = rtsys.get_allocation_stats().alloc - a0
        finally:
            nrt.memsys_disable_stats()
    return peak, allocs, g


def test_peak_memory_does_not_grow_with_the_steps():
    m = NeuralODE.random(4, 8, seed=11)
    rng = np.random.default_rng(12)
    X, C = rng.normal(size=(16, 4)), rng.normal(size=(16, 4))
    run = lambda n: lambda: G.flow_map_vjp(m, X, None, C, steps=n, checkpoints=32)  # noqa: E731
    small, big = _memory(run(1000)), _memory(run(16000))
    assert big[2].n_steps[0] == 16000
    # the same workspace whatever the steps (a few hundred bytes of Python objects aside) and
    # no allocation per step inside the kernel
    assert abs(big[0] - small[0]) < 1024, (small[0], big[0])
    assert big[1] == small[1]
    # against every stage of every step: the 32 slots (16 KB) and one window of 16 steps'
    # stages and adjoints (200 KB)
    tape = 16000 * 4 * 16 * (2 * 4 + 2 * 8) * 8
    assert big[0] < tape / 500
    # the price: each step evaluated at most r + 1 times, C(32 + r, r) >= 16000 for r = 4
    assert big[2].n_evals.max() <= 5 * 16000


def test_the_default_tape_stays_within_its_budget(monkeypatch):
    # checkpoints=None keeps every step's stages while they fit the per-thread budget (1 MiB
    # here: `fit` steps of this block), else 32 slots: the peak is bounded whatever the steps
    m = NeuralODE.random(4, 8, seed=11)
    rng = np.random.default_rng(12)
    X, C = rng.normal(size=(16, 4)), rng.normal(size=(16, 4))
    budget = 2**20
    monkeypatch.setattr(G, "_TAPE_BYTES", budget)
    fit = budget // G._tape_step_bytes(4, 16, 4, 8)
    half = fit // 2
    runs = {n: _memory(lambda n=n: G.flow_map_vjp(m, X, None, C, steps=n))
            for n in (half, fit, 1000, 16000)}  # fmt: skip
    ref = G.flow_map_vjp(m, X, None, C, steps=fit, checkpoints=32)
    for n, (peak, _, g) in runs.items():
        # the tape (or the slots and a window's stages) and 120 KB besides: the window's
        # adjoints (98 KB), scratch
        assert peak < budget + 160 * 1024, (n, peak)
        assert np.all(g.n_evals == n) == (n <= fit)  # tape: each step once; else recomputed
    np.testing.assert_array_equal(runs[fit][2].X, ref.X)  # tape == slots, bitwise
    for k in ref.params:
        np.testing.assert_array_equal(runs[fit][2].params[k], ref.params[k])
    # the tape grows with the steps up to the budget; beyond, the slots do not
    assert runs[fit][0] > 1.8 * runs[half][0] > 0.8 * budget
    assert abs(runs[16000][0] - runs[1000][0]) < 1024
    assert runs[16000][1] == runs[1000][1]


def test_dopri5_tape_rows_beyond_it_fall_back_to_the_slots(monkeypatch):
    # a per-row tape of 40 steps: the rows of the short run (fewer steps) use it, the long
    # run's rows recompute from 32 slots; either is bitwise the 4-slot sweep
    M = np.array([[0.0, 1.0], [-1.0, 0.0]])
    monkeypatch.setattr(G, "_TAPE_BYTES", 40 * G._tape_step_bytes(7, 1, 2, 2))
    for T, tape in ((1.0, True), (40.0, False)):
        m = NeuralODE(np.eye(2), M, np.zeros(2), "tanh", T=T)
        X = np.random.default_rng(13).normal(size=(3, 2))
        kw = {"method": "dopri5", "rtol": 1e-6, "atol": 1e-8}
        g = G.flow_map_vjp(m, X, None, X, **kw)
        ref = G.flow_map_vjp(m, X, None, X, checkpoints=4, **kw)
        assert np.all(g.n_steps <= 40) == tape and np.all(g.n_steps > 40) != tape
        if tape:
            assert np.all(g.n_evals < ref.n_evals)  # the counting run only
        else:  # the schedule of 32 slots
            slots = G.flow_map_vjp(m, X, None, X, checkpoints=32, **kw)
            np.testing.assert_array_equal(g.n_evals, slots.n_evals)
        for a, b in zip(_outputs(ref), _outputs(g), strict=True):
            np.testing.assert_array_equal(a, b)


def test_dopri5_memory_does_not_grow_with_the_steps():
    # a rotation: the accepted steps grow like T; no step size is stored
    M = np.array([[0.0, 1.0], [-1.0, 0.0]])
    runs = []
    for T in (10.0, 160.0):
        m = NeuralODE(np.eye(2), M, np.zeros(2), "identity", T=T)
        runs.append(_memory(lambda m=m: G.flow_map_vjp(m, np.ones((4, 2)), None, np.ones((4, 2)),
                                                       method="dopri5", rtol=1e-6, atol=1e-8,
                                                       checkpoints=8)))  # fmt: skip
    (small_peak, small_allocs, gs), (big_peak, big_allocs, gb) = runs
    assert gb.n_steps.min() > 12 * gs.n_steps.max()
    assert abs(big_peak - small_peak) < 1024, (small_peak, big_peak)
    assert big_allocs == small_allocs
    # ∂(c·x_T)/∂x_0 = e^{M^T T} c, the rotation back
    R = np.array([[np.cos(160.0), -np.sin(160.0)], [np.sin(160.0), np.cos(160.0)]])
    # the discrete adjoint of the rotation is the discrete rotation back: its error is the
    # forward map's, 2e-5 at rtol 1e-6 over 25 turns
    np.testing.assert_allclose(gb.y, np.ones((4, 2)) @ R, atol=1e-4)
    np.testing.assert_allclose(gb.X, np.ones((4, 2)) @ R.T, atol=1e-4)


def test_checkpoints_must_be_a_positive_count():
    m = NeuralODE.random(2, 3, seed=0)
    with pytest.raises(ValueError, match="checkpoints"):
        G.flow_map_vjp(m, np.ones((1, 2)), None, np.ones((1, 2)), checkpoints=0)
