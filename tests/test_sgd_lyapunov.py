"""Stability of SGD at an interpolation minimum: the top Lyapunov exponents of
M = I - (lr/B) sum_{i in batch} g_i g_i^T against closed forms (d = 1, orthogonal gradients,
full batch via numpy.linalg.eigvalsh), a naive numpy loop forming the d x d factor, the exact
second-moment operator enumerated over all batches, and exact Hessians of an MLP."""

import itertools
import math

import numba
import numpy as np
import pytest
from reference_lyapunov import naive_sgd_qr

import nndyn_fast.kernels.lyapunov as klyap
from nndyn_fast.plots import plot_stability_diagram
from nndyn_fast.sgd_stability import (
    mean_square_exponent,
    sgd_lyapunov,
    sgd_lyapunov_mlp,
    sgd_stability_diagram,
)
from nndyn_fast.storage import open_run

K_SE = 4.0  # statistical tolerances are 4 standard errors (two-sided p ~ 6e-5 per check)


def orthogonal_rows(n, d, scales, seed=0):
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, n)))[0].T  # (n, d)
    return Q * np.asarray(scales)[:, None]


def test_one_parameter_closed_form():
    g = np.random.default_rng(0).uniform(0.5, 2.0, size=(12, 1))
    lr = 0.35
    terms = np.log(np.abs(1.0 - lr * g[:, 0] ** 2))
    exact = terms.mean()  # d = 1, B = 1: lambda = E_i log|1 - lr g_i^2|
    R, steps = 4, 50_000
    res = sgd_lyapunov(g, lr, 1, steps=steps, replicas=R, seed=1)
    se = terms.std() / math.sqrt(R * steps)  # i.i.d. per-step terms: exact standard error
    assert abs(res.exponents[0] - exact) < K_SE * se
    assert res.ci_low[0] < exact < res.ci_high[0] or abs(res.exponents[0] - exact) < 3 * se


@pytest.mark.parametrize("replicas", [1, 4])  # batch-means blocks of one run; replicas
def test_confidence_intervals_cover_the_exact_exponent(replicas):
    # d = 1, B = 1: i.i.d. per-step terms, so the exact exponent and its standard error are
    # known; 95% intervals from 40 independent seeds must cover it about 38 times (fewer than
    # 33 has probability < 1e-3) and have the width the exact standard error predicts
    g = np.random.default_rng(0).uniform(0.5, 2.0, size=(12, 1))
    lr, steps = 0.35, 4000
    terms = np.log(np.abs(1.0 - lr * g[:, 0] ** 2))
    exact = terms.mean()
    se = terms.std() / math.sqrt(replicas * steps)
    runs = [
        sgd_lyapunov(g, lr, 1, steps=steps, replicas=replicas, seed=s, transient=0)
        for s in range(40)
    ]
    assert all(r.ci_method == ("replicas" if replicas > 1 else "blocks") for r in runs)
    covered = sum(r.ci_low[0] <= exact <= r.ci_high[0] for r in runs)
    assert covered >= 33
    half = np.mean([(r.ci_high[0] - r.ci_low[0]) / 2 for r in runs])
    # 1.96 se for blocks; Student t with 3 degrees of freedom (3.18 / 1.96 = 1.6x) for 4 replicas
    assert 0.7 < half / (1.96 * se) < 2.0


def test_orthogonal_gradients_closed_form_and_tangent_zeros():
    n, d, lr = 3, 6, 0.6
    a = np.array([1.0, 1.3, 0.7])
    G = orthogonal_rows(n, d, a)
    # orthogonal g_i: the factors commute; direction i is hit with probability 1/n per step
    per_step = np.log(np.abs(1.0 - lr * a**2))
    exact = np.sort(per_step / n)[::-1]
    var = (1.0 / n) * per_step**2 - (per_step / n) ** 2
    R, steps = 4, 40_000
    span = sgd_lyapunov(G, lr, 1, steps=steps, k=n, replicas=R, seed=2)
    # exact per-step variance, ordered like the exponents
    se = np.sqrt(var[np.argsort(per_step / n)[::-1]] / (R * steps))
    assert np.all(np.abs(span.exponents - exact) < K_SE * se + 1e-12)
    full = sgd_lyapunov(G, lr, 1, steps=steps, k=d, replicas=R, seed=2, space="full")
    # the d - r tangent directions are left unchanged by every factor: exponent 0 to rounding
    np.testing.assert_allclose(full.exponents[: d - n], 0.0, atol=1e-10)
    assert np.all(np.abs(full.exponents[d - n :] - exact) < K_SE * se + 1e-12)
    assert span.rank == n and full.rank == n


def test_full_batch_is_constant_product():
    rng = np.random.default_rng(3)
    n, d = 8, 15
    G = rng.standard_normal((n, d))
    H = G.T @ G / n
    mu = np.linalg.eigvalsh(H)
    lr = 1.7 / mu[-1]
    U = np.linalg.svd(G, full_matrices=False)[2].T  # (d, n) orthonormal basis of the span
    w = np.linalg.eigvalsh(U.T @ (np.eye(d) - lr * H) @ U)  # the factor on the span
    on_span = np.sort(np.log(np.abs(w)))[::-1]
    res = sgd_lyapunov(G, lr, n, steps=4000, k=n, sampling="without", replicas=1, transient=4000)
    # deterministic product: after the transient aligns V the error is rounding (~1e-12)
    np.testing.assert_allclose(res.exponents, on_span, atol=1e-8)
    Hs = np.einsum("ni,nj->nij", G, G)
    resH = sgd_lyapunov(Hs, lr, n, steps=4000, k=3, sampling="without", replicas=1, transient=4000)
    np.testing.assert_allclose(resH.exponents, on_span[:3], atol=1e-8)
    assert abs(res.gd_threshold - 2.0 / mu[-1]) < 1e-10 * res.gd_threshold


def test_kernel_matches_naive_dense_loop_same_batches():
    rng = np.random.default_rng(4)
    n, d, B, T, k, lr = 10, 12, 3, 300, 2, 0.05
    G = rng.standard_normal((n, d))
    idx = rng.integers(0, n, size=(1, T, B), dtype=np.int32)
    V0 = np.linalg.qr(rng.standard_normal((d, k)))[0].T.copy()
    V = V0[None].copy()
    logr = np.zeros((1, k))
    st = klyap.sgd_rank_products(G, 1, lr / B, idx, V, 1, logr, np.zeros(1, np.int64))
    assert st == 0
    ref = naive_sgd_qr(G, lr, idx[0], V0)
    # same factors, d x d matrix vs rank-B update: rounding only
    np.testing.assert_allclose(logr[0] / T, ref, rtol=0, atol=1e-12)


def test_without_replacement_batches_distinct_and_uniform():
    n, B, T = 7, 4, 20_000
    rng = np.random.default_rng(5)
    perm = np.tile(np.arange(n), (1, 1))
    idx = np.empty((1, T, B), np.int32)
    klyap.batches_without_replacement(rng.random((1, T, B)), perm, idx)
    assert all(len(set(row)) == B for row in idx[0])
    counts = np.bincount(idx.ravel(), minlength=n)
    p = B / n
    # each index appears in a batch with probability B/n: binomial counts, 4 SD
    assert np.all(np.abs(counts - T * p) < K_SE * math.sqrt(T * p * (1 - p)))


def test_results_independent_of_thread_count_and_reproducible():
    G = np.random.default_rng(6).standard_normal((9, 5))
    kw = dict(steps=3000, k=2, replicas=4, seed=11, transient=100)
    n0 = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = sgd_lyapunov(G, 0.05, 2, **kw)
    finally:
        numba.set_num_threads(n0)
    b = sgd_lyapunov(G, 0.05, 2, **kw)
    np.testing.assert_array_equal(a.per_replica, b.per_replica)


def _second_moment_reference(G, lr, B, sampling):
    """E[M (x) M] by enumerating every batch (ordered tuples or subsets), in full d space."""
    n, d = G.shape
    batches = (
        list(itertools.product(range(n), repeat=B))
        if sampling == "with"
        else list(itertools.combinations(range(n), B))
    )
    E = np.zeros((d * d, d * d))
    for b in batches:
        Gb = G[list(b)]
        M = np.eye(d) - (lr / B) * Gb.T @ Gb
        E += np.kron(M, M)
    return 0.5 * math.log(np.max(np.abs(np.linalg.eigvals(E / len(batches)))))


@pytest.mark.parametrize("sampling", ["with", "without"])
def test_mean_square_exponent_against_enumeration(sampling):
    G = np.random.default_rng(7).standard_normal((4, 3))
    for lr in (0.1, 0.4):
        ref = _second_moment_reference(G, lr, 2, sampling)
        # exact linear algebra on both sides: rounding only
        assert abs(mean_square_exponent(G, lr, 2, sampling=sampling) - ref) < 1e-10


def test_mean_square_closed_forms_and_jensen_bound():
    g = np.random.default_rng(8).uniform(0.5, 2.0, size=(6, 1))
    lr = 0.3
    exact = 0.5 * math.log(np.mean((1.0 - lr * g[:, 0] ** 2) ** 2))  # d = 1, B = 1
    assert abs(mean_square_exponent(g, lr, 1) - exact) < 1e-12
    # orthogonal rows, r = 25 > 20 exercises the ARPACK path: diagonal entries evolve alone
    n = 25
    a = np.linspace(0.6, 1.4, n)
    G = orthogonal_rows(n, 30, a)
    ms = mean_square_exponent(G, 1.2, 1)
    rho = np.max(1.0 + ((1.0 - 1.2 * a**2) ** 2 - 1.0) / n)
    assert abs(ms - 0.5 * math.log(rho)) < 1e-8  # ARPACK tolerance 1e-10 on rho
    # Jensen: the almost-sure exponent never exceeds the mean-square one
    G2 = np.random.default_rng(9).standard_normal((10, 6))
    for lr in (0.1, 0.3):
        lam = sgd_lyapunov(G2, lr, 2, steps=20_000, seed=3)
        assert lam.exponents[0] < mean_square_exponent(G2, lr, 2) + K_SE * lam.stderr[0]


def test_mlp_gradients_against_exact_hessian():
    from nndyn_fast.training import MLP, forward, hvp

    mlp = MLP((2, 5, 2), activation="tanh")
    theta = mlp.init(1)
    X = np.random.default_rng(10).standard_normal((6, 2))
    Y = forward(mlp, theta, X)  # theta interpolates these targets: every residual is zero
    P = mlp.n_params
    H = np.column_stack([hvp(mlp, theta, X, Y, e) for e in np.eye(P)])
    mu = np.linalg.eigvalsh(0.5 * (H + H.T))
    lr = 2.5 / mu[-1]  # beyond the GD threshold: the top exponent log 1.5 is well separated
    top = np.log(np.max(np.abs(1.0 - lr * mu[mu > 1e-9 * mu[-1]])))
    res = sgd_lyapunov_mlp(
        mlp, theta, X, lr, 6, steps=3000, sampling="without", replicas=1, transient=3000
    )
    # full batch: log spectral radius of I - lr H on the span (exact Hessian by R-operator);
    # deterministic, error from the finite product and the Hessian rounding
    assert abs(res.exponents[0] - top) < 1e-6
    assert abs(res.gd_threshold - 2.0 / mu[-1]) < 1e-8 * res.gd_threshold


def test_stability_diagram_file_and_plot(tmp_path):
    G = np.random.default_rng(12).standard_normal((8, 5))
    lrs = np.array([0.05, 0.2, 0.6])
    diag = sgd_stability_diagram(
        G, lrs, [1, 8], steps=2000, transient=200, replicas=2, out=tmp_path / "d.h5"
    )
    assert diag.lam.shape == (2, 3)
    assert np.all(diag.ms >= diag.lam - 0.05)  # Jensen bound up to the short runs' noise
    with open_run(tmp_path / "d.h5") as run:
        np.testing.assert_array_equal(run.read("diagram", "lam"), diag.lam)
        assert run.summary["gd_threshold"] == pytest.approx(diag.gd_threshold)
    plot_stability_diagram(diag, path=tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 0


def test_bad_inputs():
    G = np.random.default_rng(0).standard_normal((5, 3))
    bad = G.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        sgd_lyapunov(bad, 0.1, 2, steps=10)
    with pytest.raises(ValueError, match="lr"):
        sgd_lyapunov(G, 0.0, 2, steps=10)
    with pytest.raises(ValueError, match="lr"):
        sgd_lyapunov(G, -1.0, 2, steps=10)
    with pytest.raises(ValueError, match="batch_size"):
        sgd_lyapunov(G, 0.1, 6, steps=10)
    with pytest.raises(ValueError, match="rank"):
        sgd_lyapunov(G, 0.1, 2, steps=10, k=4)
    with pytest.raises(ValueError, match="sampling must be one of"):
        sgd_lyapunov(G, 0.1, 2, steps=10, sampling="epoch")
    with pytest.raises(ValueError, match="rows_per_sample"):
        sgd_lyapunov(G, 0.1, 2, steps=10, rows_per_sample=2)
    H = np.random.default_rng(1).standard_normal((3, 4, 4))
    with pytest.raises(ValueError, match="symmetric"):
        sgd_lyapunov(H, 0.1, 1, steps=10)


# -- run files: kill and resume ------------------------------------------------------------------
def _kill_after_commits(monkeypatch, n_commits):
    """Make TrajectoryWriter.commit raise KeyboardInterrupt once ``n_commits`` have succeeded."""
    from nndyn_fast.storage import TrajectoryWriter

    real = TrajectoryWriter.commit
    calls = {"n": 0}

    def flaky(self, **checkpoint):
        calls["n"] += 1
        if calls["n"] > n_commits:
            raise KeyboardInterrupt
        real(self, **checkpoint)

    monkeypatch.setattr(TrajectoryWriter, "commit", flaky)
    return lambda: monkeypatch.setattr(TrajectoryWriter, "commit", real)


def _series(path, series):
    with open_run(path) as run:
        return {f: run.read(series, f) for f in run[series]}, run.status, run.attrs


# replicas 2 ("replicas" interval) and 1 ("blocks" interval, which reads the stored series back);
# "without" also carries the batch permutations through the checkpoint
@pytest.mark.parametrize("sampling, replicas", [("with", 2), ("without", 1)])
def test_sgd_resume_is_bitwise_uninterrupted(tmp_path, monkeypatch, sampling, replicas):
    G = np.random.default_rng(13).standard_normal((8, 5))
    kw = dict(steps=2000, k=2, seed=5, transient=100, sampling=sampling, replicas=replicas)
    full = sgd_lyapunov(G, 0.3, 3, n_blocks=10, out=tmp_path / "full.h5", **kw)
    part = tmp_path / "part.h5"
    # 3 of 10 chunks (the step-0 checkpoint is part of the file's creation)
    restore = _kill_after_commits(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        sgd_lyapunov(G, 0.3, 3, n_blocks=10, out=part, **kw)
    restore()
    cut, status, _ = _series(part, "blocks")
    assert status == "interrupted" and cut["step"].tolist() == [200.0, 400.0, 600.0]
    res = sgd_lyapunov(G, 0.3, 3, n_blocks=10, out=part, resume=True, **kw)
    # generator state, tangent blocks, permutations and sums are checkpointed exactly
    for name in ("exponents", "ci_low", "ci_high", "stderr", "per_replica"):
        np.testing.assert_array_equal(getattr(res, name), getattr(full, name))
    a, status_a, attrs_a = _series(tmp_path / "full.h5", "blocks")
    b, status_b, attrs_b = _series(part, "blocks")
    assert status_a == status_b == "complete"
    for f in a:
        np.testing.assert_array_equal(a[f], b[f])
    np.testing.assert_array_equal(attrs_a["exponents"], attrs_b["exponents"])
    # resuming a complete run rebuilds the same result from the file
    again = sgd_lyapunov(G, 0.3, 3, n_blocks=10, out=part, resume=True, **kw)
    np.testing.assert_array_equal(again.exponents, full.exponents)
    np.testing.assert_array_equal(again.ci_low, full.ci_low)


def test_sgd_resume_refuses_other_parameters(tmp_path, monkeypatch):
    G = np.random.default_rng(14).standard_normal((8, 5))
    kw = dict(steps=600, k=1, seed=5, transient=10, replicas=2, sampling="with")
    path = tmp_path / "run.h5"
    restore = _kill_after_commits(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        sgd_lyapunov(G, 0.3, 3, out=path, **kw)
    restore()
    G2 = G.copy()
    G2[0, 0] += 1e-12
    changes = [
        ("G", (G2, 0.3, 3), {}),
        ("lr", (G, 0.31, 3), {}),
        ("batch_size", (G, 0.3, 2), {}),
        ("k", (G, 0.3, 3), {"k": 2}),
        ("seed", (G, 0.3, 3), {"seed": 6}),
        ("sampling", (G, 0.3, 3), {"sampling": "without"}),
        ("steps", (G, 0.3, 3), {"steps": 700}),
    ]
    for key, args, change in changes:
        with pytest.raises(ValueError, match=rf"cannot resume .*(parameter|input) {key}\b"):
            sgd_lyapunov(*args, out=path, resume=True, **{**kw, **change})
    with open_run(path) as run:  # a refused resume leaves the file as it was
        assert run.status == "interrupted" and run.rows["blocks"] == 1
    with pytest.raises(ValueError, match="resume=True needs out"):
        sgd_lyapunov(G, 0.3, 3, resume=True, **kw)
    with pytest.raises(ValueError, match="does not exist"):
        sgd_lyapunov(G, 0.3, 3, out=tmp_path / "none.h5", resume=True, **kw)


def test_cli_sgd_lyapunov_resume(tmp_path, monkeypatch, capsys):
    from nndyn_fast.cli import main

    argv = [
        "sgd-lyapunov", "--n", "6", "--d", "4", "--batch-sizes", "1", "2", "3",
        "--lr-factors", "0.5", "2", "--steps", "300", "--transient", "10", "--replicas", "2",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "full.h5")]) == 0
    part = str(tmp_path / "part.h5")
    restore = _kill_after_commits(monkeypatch, 1)  # one batch size of three committed
    assert main([*argv, "--out", part]) == 130  # the CLI reports the interruption
    restore()
    assert _series(part, "diagram")[0]["batch_size"].tolist() == [1.0]
    assert main([*argv, "--out", part, "--resume"]) == 0
    a, _, _ = _series(tmp_path / "full.h5", "diagram")
    b, status, _ = _series(part, "diagram")
    assert status == "complete"
    for f in a:  # each (lr, B) point has its own seed: bitwise equal to the uninterrupted run
        np.testing.assert_array_equal(a[f], b[f])
    capsys.readouterr()
    other = [("400" if a == "300" else a) for a in argv]  # --steps 400
    assert main([*other, "--out", part, "--resume"]) == 2
    assert "parameter steps is 300" in capsys.readouterr().err
