"""Threads: one setting (set_threads / threads / ``nndyn --threads``, bounded by
NUMBA_NUM_THREADS), small work on one thread without being asked, small BLAS calls on one
thread, and results that do not depend on the number of threads (bitwise)."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import nndyn_fast as nf
from nndyn_fast import cli
from nndyn_fast.kernels import mlp as km

TH = sys.modules["nndyn_fast.threads"]  # (the package's name `threads` is the context)
MAX = TH.max_threads()
needs_two = pytest.mark.skipif(MAX < 2, reason="needs NUMBA_NUM_THREADS >= 2")


# -- the setting ------------------------------------------------------------------------------
def test_threads_context_sets_and_restores():
    before = nf.get_threads()
    with nf.threads(1) as n:
        assert n == 1 and nf.get_threads() == 1 and numba.get_num_threads() == 1
        with nf.threads(None) as m:
            assert m == MAX
        assert nf.get_threads() == 1
    assert nf.get_threads() == before
    assert nf.set_threads(1) == before
    assert nf.set_threads(None) == 1
    assert nf.get_threads() == MAX


@pytest.mark.parametrize("bad", [0, -1, MAX + 1])
def test_set_threads_rejects_counts_outside_one_to_numba_num_threads(bad):
    with pytest.raises(ValueError, match=rf"between 1 and NUMBA_NUM_THREADS = {MAX}, got {bad}"):
        nf.set_threads(bad)


@pytest.mark.parametrize("bad", [1.5, "2", True])
def test_set_threads_rejects_non_integers(bad):
    with pytest.raises(TypeError, match="threads must be an integer"):
        nf.set_threads(bad)


def test_numba_num_threads_is_the_default_and_the_limit(tmp_path):
    code = (
        "import nndyn_fast as nf\nprint(nf.get_threads())\n"
        "try:\n    nf.set_threads(2)\nexcept ValueError as e:\n    print('refused', e)\n"
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    # run from tmp_path so that the installed package is imported, not the source folder
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "1"
    assert lines[1].startswith("refused threads must be between 1 and NUMBA_NUM_THREADS = 1")


def test_cli_threads_option(tmp_path, capsys):
    argv = ["ode", "--d", "2", "--hidden", "3", "--batch", "2", "--frames", "3"]
    assert cli.main(["--threads", "0", *argv, "--out", str(tmp_path / "a.h5")]) == 2
    assert "threads must be between 1 and NUMBA_NUM_THREADS" in capsys.readouterr().err
    before = nf.get_threads()
    assert cli.main(["--threads", "1", *argv, "--out", str(tmp_path / "b.h5")]) == 0
    assert nf.get_threads() == 1
    nf.set_threads(before)


# -- the choice per call ----------------------------------------------------------------------
def test_region_threads_grow_with_the_work_per_thread():
    per = TH.MIN_SECONDS_PER_THREAD
    with nf.threads(None):
        assert TH.region_threads(0.0) == 1
        assert TH.region_threads(1.99 * per) == 1
        assert TH.region_threads(2 * per) == min(2, MAX)
        assert TH.region_threads(1e9) == MAX
        with nf.threads(1):
            assert TH.region_threads(1e9) == 1


def test_for_work_nests_within_the_outer_setting_and_restores():
    with nf.threads(None):
        with TH.for_work(0.0) as n:
            assert n == 1 and numba.get_num_threads() == 1
            assert nf.get_threads() == MAX  # the setting, not this region's choice
            with TH.for_work(1e9) as m:
                assert m == MAX and numba.get_num_threads() == MAX
            assert numba.get_num_threads() == 1
        assert numba.get_num_threads() == MAX


def _record_threads(monkeypatch, module, name):
    """Wrap ``module.name`` (a kernel) to record the numba thread count of each call."""
    seen = []
    kern = getattr(module, name)

    def wrapped(*args):
        seen.append(numba.get_num_threads())
        return kern(*args)

    monkeypatch.setattr(module, name, wrapped)
    return seen


def _mlp_problem(n=30, sizes=(3, 6, 1)):
    rng = np.random.default_rng(1)
    mlp = nf.MLP(sizes, "tanh")
    X = rng.standard_normal((n, sizes[0]))
    return mlp, mlp.init(0), X, np.sin(X[:, :1])


@needs_two
def test_small_gradient_descent_runs_on_one_thread_large_on_all(monkeypatch):
    mlp, theta, X, Y = _mlp_problem()
    seen = _record_threads(monkeypatch, km, "mlp_gd_advance")
    with nf.threads(None):
        nf.gradient_descent(mlp, theta, X, Y, lr=0.1, steps=5)
        monkeypatch.setattr(TH, "MIN_SECONDS_PER_THREAD", 0.0)  # every region "large"
        nf.gradient_descent(mlp, theta, X, Y, lr=0.1, steps=5)
    assert seen == [1, MAX]


@needs_two
def test_small_blas_calls_run_on_one_thread():
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    if not blas.lib_controllers or blas.info()[0]["num_threads"] < 2:
        pytest.skip("BLAS runs on one thread here anyway")
    seen = []
    A = np.diag(np.arange(1.0, 11.0))

    def matvec(v):
        seen.append(blas.info()[0]["num_threads"])
        return A @ v

    nf.top_eigenpairs(matvec, v0=np.ones(10), k=1)
    assert seen and set(seen) == {1}
    assert blas.info()[0]["num_threads"] >= 2  # restored


# -- results do not depend on the threads -----------------------------------------------------
def _both(monkeypatch, fn):
    """``fn()`` on one thread and with every region forced onto all threads."""
    with nf.threads(1):
        one = fn()
    with monkeypatch.context() as m:
        m.setattr(TH, "MIN_SECONDS_PER_THREAD", 0.0)
        with nf.threads(None):
            assert TH.region_threads(0.0) == MAX
            many = fn()
    return one, many


def _same(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@needs_two
def test_odeint_batches_are_bitwise_the_same_on_any_number_of_threads(monkeypatch):
    m = nf.NeuralODE.random(3, 5, seed=2)
    X = np.random.default_rng(3).standard_normal((40, 3))
    t = np.linspace(0.0, 1.0, 4)

    def run():
        a = nf.odeint(m, X, t)  # blocked stages, adaptive
        b = nf.odeint(m, X, t, method="rk4", dt=0.05)
        c = nf.flow_jacobian(m, X[:5], 1.0)  # row by row, tangents
        return a.y, a.stats["per_trajectory"], b.y, np.asarray(c)

    _same(*_both(monkeypatch, run))


@needs_two
def test_ddeint_batches_are_bitwise_the_same_on_any_number_of_threads(monkeypatch):
    rng = np.random.default_rng(4)
    nd = nf.NeuralDDE(
        rng.normal(size=(1, 4)) / 2, rng.normal(size=(4, 1)), rng.normal(size=(4, 1)),
        rng.normal(size=4),
    )  # fmt: skip
    t = np.linspace(0.0, 20.0, 5)

    def run():
        a = nf.ddeint(nf.MackeyGlass(), np.linspace(0.5, 1.5, 6)[:, None], t, delays=17.0)
        b = nf.ddeint(nd, np.linspace(-1, 1, 12)[:, None], t, delays=1.0, method="rk4", dt=0.1)
        assert b.stats["lockstep"]
        return a.y, a.stats["per_trajectory"], b.y

    _same(*_both(monkeypatch, run))


@needs_two
def test_training_is_bitwise_the_same_on_any_number_of_threads(monkeypatch):
    mlp, theta, X, Y = _mlp_problem(n=300, sizes=(3, 8, 8, 2))
    Y = np.column_stack([Y[:, 0], np.cos(X[:, 1])])
    v = np.random.default_rng(5).standard_normal(mlp.n_params)

    def run():
        L, g = nf.loss_and_grad(mlp, theta, X, Y)
        gd = nf.gradient_descent(mlp, theta, X, Y, lr=0.05, steps=10, batch_size=100, seed=3)
        return (
            np.array([L]), g, nf.hvp(mlp, theta, X, Y, v), nf.forward(mlp, theta, X),
            nf.per_sample_gradients(mlp, theta, X), gd.loss, gd.theta,
            nf.sharpness(mlp, theta, X, Y, k=2).eigenvalues,
        )  # fmt: skip

    _same(*_both(monkeypatch, run))


@needs_two
def test_lyapunov_kernels_are_bitwise_the_same_on_any_number_of_threads(monkeypatch):
    G = np.random.default_rng(6).standard_normal((12, 20)) / np.sqrt(20)
    mlp = nf.MLP((4, 8, 8, 1), "tanh")
    Xn = np.random.default_rng(7).standard_normal((50, 4))

    def run():
        kw = dict(steps=200, k=2, replicas=3, transient=0, seed=1)
        a = nf.sgd_lyapunov(G, 0.5, 4, **kw)
        b = nf.sgd_lyapunov(G, 0.5, 4, space="full", **kw)
        c = nf.network_lyapunov(mlp, Xn, k=3)
        return a.exponents, b.exponents, c.per_input, c.singular

    _same(*_both(monkeypatch, run))
