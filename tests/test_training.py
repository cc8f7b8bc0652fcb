"""Training dynamics: exact derivatives of MLPs, sharpness, GD stability, edge of stability.

References: finite differences of the loss and gradient, a batched numpy R-operator
(tests/reference_training.py), dense eigen-decompositions, closed-form Hessians of linear
regression, and the recorded series of gradient-descent runs.
"""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_training import naive_forward, naive_hvp, naive_loss, naive_per_sample

from nndyn_fast import training as tr
from nndyn_fast.errors import NonFiniteStateError
from nndyn_fast.storage import TrajectoryWriter, open_run


def _problem(sizes=(3, 5, 4, 2), activation="tanh", loss="mse", n=23, seed=0):
    rng = np.random.default_rng(seed)
    mlp = tr.MLP(sizes, activation, loss)
    theta = mlp.init(seed) + 0.1 * rng.standard_normal(mlp.n_params)
    X = rng.standard_normal((n, sizes[0]))
    if loss == "mse":
        Y = rng.standard_normal((n, sizes[-1]))
    else:
        Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], n)]
    return mlp, theta, X, Y


def _fd_hessian(mlp, theta, X, Y, eps=1e-5):
    """Hessian by central differences of the exact gradient, column by column."""
    P = mlp.n_params
    H = np.empty((P, P))
    for j in range(P):
        e = np.zeros(P)
        e[j] = eps
        H[:, j] = (tr.grad(mlp, theta + e, X, Y) - tr.grad(mlp, theta - e, X, Y)) / (2 * eps)
    return H


# -- the model ---------------------------------------------------------------------------------
def test_mlp_layout_and_views():
    mlp = tr.MLP((3, 5, 2))
    assert mlp.n_params == 3 * 5 + 5 + 5 * 2 + 2
    theta = np.arange(mlp.n_params, dtype=float)
    (W1, b1), (W2, b2) = mlp.unflatten(theta)
    assert W1.shape == (5, 3) and b1.shape == (5,) and W2.shape == (2, 5) and b2.shape == (2,)
    assert W1[0, 0] == 0 and b1[0] == 15 and W2[0, 0] == 20 and b2[-1] == mlp.n_params - 1
    W1[0, 0] = -1.0  # views share memory with θ
    assert theta[0] == -1.0
    np.testing.assert_array_equal(mlp.flatten(mlp.unflatten(theta)), theta)


def test_init_fan_in_scaling():
    mlp = tr.MLP((400, 300, 1))
    (W1, b1), _ = mlp.unflatten(mlp.init(3))
    # std of 120000 normal draws: relative error ~ 1/sqrt(2·120000) ≈ 0.002, allow 5 SE
    assert abs(W1.std() * np.sqrt(400) - 1.0) < 0.01
    assert not b1.any()
    (W1r, _), _ = tr.MLP((400, 300, 1), "relu").unflatten(tr.MLP((400, 300, 1), "relu").init(3))
    assert abs(W1r.std() * np.sqrt(400) - np.sqrt(2.0)) < 0.015
    np.testing.assert_array_equal(mlp.init(3), mlp.init(3))


@pytest.mark.parametrize("activation", ["tanh", "identity", "softplus", "relu"])
def test_forward_loss_grad_hvp_match_numpy(activation):
    mlp, theta, X, Y = _problem(activation=activation)
    v = np.random.default_rng(1).standard_normal(mlp.n_params)
    f_ref = naive_forward(mlp.sizes, activation, theta, X)
    # same arithmetic in a different order: rounding only
    np.testing.assert_allclose(tr.forward(mlp, theta, X), f_ref, rtol=1e-12, atol=1e-14)
    assert tr.loss(mlp, theta, X, Y) == pytest.approx(
        naive_loss(mlp.sizes, activation, theta, X, Y), rel=1e-12
    )
    g_ref, h_ref = naive_hvp(mlp.sizes, activation, theta, X, Y, v, want_grad=True)
    np.testing.assert_allclose(tr.grad(mlp, theta, X, Y), g_ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(tr.hvp(mlp, theta, X, Y, v), h_ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "activation,loss",
    [
        ("tanh", "mse"),
        ("gelu", "mse"),
        ("softplus", "cross_entropy"),
        ("sigmoid", "mse"),
        ("tanh", "cross_entropy"),
    ],
)
def test_grad_and_hvp_against_finite_differences(activation, loss):
    mlp, theta, X, Y = _problem(activation=activation, loss=loss, sizes=(3, 6, 5, 3))
    rng = np.random.default_rng(2)
    v = rng.standard_normal(mlp.n_params)
    v /= np.linalg.norm(v)
    g = tr.grad(mlp, theta, X, Y)
    eps = 1e-6
    fd_dir = (tr.loss(mlp, theta + eps * v, X, Y) - tr.loss(mlp, theta - eps * v, X, Y)) / (2 * eps)
    # central difference of the loss: O(eps²) truncation + O(1e-16/eps) rounding ~ 1e-10
    assert g @ v == pytest.approx(fd_dir, rel=1e-7, abs=1e-10)
    eps = 1e-5
    hv = tr.hvp(mlp, theta, X, Y, v)
    fd = (tr.grad(mlp, theta + eps * v, X, Y) - tr.grad(mlp, theta - eps * v, X, Y)) / (2 * eps)
    # O(eps²)·|∇⁴L| truncation ≈ 1e-10 plus rounding 1e-16/eps ≈ 1e-11: far below 1e-6
    assert np.linalg.norm(hv - fd) / np.linalg.norm(hv) < 1e-6


def test_full_hessian_against_finite_differences_tiny_net():
    mlp, theta, X, Y = _problem(sizes=(2, 3, 2), n=7)
    H_fd = _fd_hessian(mlp, theta, X, Y)
    H = np.column_stack([tr.hvp(mlp, theta, X, Y, e) for e in np.eye(mlp.n_params)])
    # central differences of the exact gradient: truncation ~ eps² = 1e-10 relative
    assert np.linalg.norm(H - H_fd) / np.linalg.norm(H) < 1e-6
    # an exact R-operator gives a symmetric matrix up to rounding
    np.testing.assert_allclose(H, H.T, atol=1e-13 * np.abs(H).max())


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**16), a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_hvp_symmetric_and_linear(seed, a, b):
    mlp, theta, X, Y = _problem(sizes=(3, 4, 3, 2), activation="softplus", seed=seed % 7)
    rng = np.random.default_rng(seed)
    v, w = rng.standard_normal((2, mlp.n_params))
    Hv = tr.hvp(mlp, theta, X, Y, v)
    Hw = tr.hvp(mlp, theta, X, Y, w)
    scale = np.linalg.norm(Hv) * np.linalg.norm(w) + 1e-300
    # vᵀHw = wᵀHv and H(av + bw) = aHv + bHw up to rounding of O(P·n) terms
    assert abs(w @ Hv - v @ Hw) <= 1e-12 * scale
    np.testing.assert_allclose(
        tr.hvp(mlp, theta, X, Y, a * v + b * w), a * Hv + b * Hw, atol=1e-12 * (scale + 1)
    )


def test_gauss_newton_and_per_sample_gradients():
    mlp, theta, X, Y = _problem(sizes=(3, 5, 4, 2))
    n = X.shape[0]
    J = tr.per_sample_gradients(mlp, theta, X)
    assert J.shape == (n * 2, mlp.n_params)
    # independent loop-by-loop backprop: rounding only
    np.testing.assert_allclose(J, naive_per_sample(mlp.sizes, "tanh", theta, X), atol=1e-13)
    v = np.random.default_rng(4).standard_normal(mlp.n_params)
    # MSE: G = (1/n) Jᵀ J
    np.testing.assert_allclose(
        tr.gauss_newton_vp(mlp, theta, X, Y, v), J.T @ (J @ v) / n, atol=1e-12
    )
    # rows are derivatives of the outputs: compare one row with finite differences of forward
    e = 1e-6
    fd = (tr.forward(mlp, theta + e * v, X) - tr.forward(mlp, theta - e * v, X)) / (2 * e)
    np.testing.assert_allclose(J @ v, fd.ravel(), atol=1e-8)  # O(e²) truncation + rounding/e


def test_gauss_newton_cross_entropy():
    # G = (1/n) Σ_i J_iᵀ (diag(p_i) − p_i p_iᵀ) J_i with p_i = softmax(f(x_i)), built from the
    # per-sample output gradients and numpy's softmax
    mlp, theta, X, Y = _problem(sizes=(3, 5, 3), loss="cross_entropy", n=17)
    n, q = X.shape[0], 3
    J = tr.per_sample_gradients(mlp, theta, X).reshape(n, q, mlp.n_params)
    F = tr.forward(mlp, theta, X)
    P = np.exp(F - F.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    v = np.random.default_rng(6).standard_normal(mlp.n_params)
    ref = sum(J[i].T @ ((np.diag(P[i]) - np.outer(P[i], P[i])) @ (J[i] @ v)) for i in range(n))
    np.testing.assert_allclose(tr.gauss_newton_vp(mlp, theta, X, Y, v), ref / n, atol=1e-12)


def test_gauss_newton_equals_hessian_at_interpolation():
    # linear regression with zero residual: H = G exactly (no second-order term)
    rng = np.random.default_rng(5)
    mlp = tr.MLP((4, 1), "identity")
    X = rng.standard_normal((9, 4))
    theta = rng.standard_normal(mlp.n_params)
    Y = tr.forward(mlp, theta, X)
    v = rng.standard_normal(mlp.n_params)
    np.testing.assert_allclose(
        tr.hvp(mlp, theta, X, Y, v), tr.gauss_newton_vp(mlp, theta, X, Y, v), atol=1e-13
    )


def test_results_do_not_depend_on_thread_count():
    mlp, theta, X, Y = _problem(sizes=(4, 16, 16, 1), n=300)
    v = np.random.default_rng(6).standard_normal(mlp.n_params)
    old = numba.get_num_threads()
    try:
        outs = []
        for nt in sorted({1, old}):
            numba.set_num_threads(nt)
            outs.append(
                (
                    tr.grad(mlp, theta, X, Y),
                    tr.hvp(mlp, theta, X, Y, v),
                    tr.gauss_newton_vp(mlp, theta, X, Y, v),
                    tr.forward(mlp, theta, X),
                    tr.per_sample_gradients(mlp, theta, X),
                )
            )
    finally:
        numba.set_num_threads(old)
    for res in outs[1:]:
        for a, b in zip(res, outs[0], strict=True):
            np.testing.assert_array_equal(a, b)


# -- sharpness ---------------------------------------------------------------------------------
def _spd(eigs, seed=0):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigs), len(eigs))))
    return (Q * eigs) @ Q.T


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_sharpness_of_quadratic_with_known_spectrum(method):
    eigs = np.array([10.0, 7.0, 4.0, 2.0, 1.0, 0.5, 0.1, -0.3, -1.0])
    A = _spd(eigs)
    res = tr.top_eigenpairs(A, k=3, method=method, tol=1e-12)
    # Lanczos is exact on a 9-dim space; power stops at relative change 1e-12 of the Rayleigh
    # quotient, whose error is then ≲ 1e-12·λ/(1 − ratio) ~ 1e-10
    np.testing.assert_allclose(res.eigenvalues, eigs[:3], rtol=1e-9)
    for i in range(3):
        np.testing.assert_allclose(
            A @ res.eigenvectors[:, i], eigs[i] * res.eigenvectors[:, i], atol=1e-4
        )


def test_power_finds_largest_algebraic_when_negative_dominates():
    A = _spd(np.array([3.0, 1.0, 0.0, -8.0]), seed=1)
    res = tr.top_eigenpairs(A, k=1, method="power", tol=1e-13)
    assert res.eigenvalues[0] == pytest.approx(3.0, rel=1e-9)  # shifted re-run, tol 1e-13


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_sharpness_of_mlp_against_dense_hessian(method):
    mlp, theta, X, Y = _problem(sizes=(3, 6, 1), n=40)
    H = np.column_stack([tr.hvp(mlp, theta, X, Y, e) for e in np.eye(mlp.n_params)])
    lam = np.linalg.eigvalsh(0.5 * (H + H.T))[::-1]
    res = tr.sharpness(mlp, theta, X, Y, k=2, method=method, tol=1e-10)
    # tol 1e-10 on the eigenvalue (power: on its change per step, gap ratio ~ 0.5 here)
    np.testing.assert_allclose(res.eigenvalues, lam[:2], rtol=1e-8)
    assert res.n_hvp >= 2 and res.converged


def test_lanczos_needs_fewer_products_than_power():
    mlp, theta, X, Y = _problem(sizes=(4, 16, 16, 1), n=200)
    a = tr.sharpness(mlp, theta, X, Y, method="lanczos", tol=1e-8)
    b = tr.sharpness(mlp, theta, X, Y, method="power", tol=1e-10)
    assert a.eigenvalues[0] == pytest.approx(b.eigenvalues[0], rel=1e-7)  # both near-exact
    assert a.n_hvp < b.n_hvp


def test_eigen_solvers_live_in_one_module():
    import nndyn_fast
    from nndyn_fast import eigen

    for name in ("top_eigenpairs", "Eigenpairs"):
        assert getattr(nndyn_fast, name) is getattr(eigen, name) is getattr(tr, name)
    assert tr.SpectrumDensity is eigen.SpectrumDensity and tr.METHODS is eigen.METHODS


def test_gd_threshold():
    # along an eigenvector with eigenvalue λ a GD step multiplies the error by 1 − ηλ:
    # |1 − ηλ| < 1 iff 0 < η < 2/λ
    for lam in (0.5, 4.0, 1e-300):
        eta = tr.gd_threshold(lam)
        assert eta == 2.0 / lam
        assert abs(1 - np.nextafter(eta, 0) * lam) < 1 <= abs(1 - np.nextafter(eta, np.inf) * lam)
    assert tr.gd_threshold(0.0) == tr.gd_threshold(-3.0) == np.inf  # no positive curvature
    assert tr.gd_threshold(np.float32(4.0)) == 0.5
    for bad in (np.nan, "x", None):
        with pytest.raises(ValueError, match="lam_max must be a real number"):
            tr.gd_threshold(bad)


# -- stability of gradient descent ---------------------------------------------------------------
def test_quadratic_gd_divergence_matches_gd_stability():
    eigs = np.array([5.0, 3.0, 1.0, 0.2])
    A = _spd(eigs, seed=2)
    x0 = np.random.default_rng(0).standard_normal(4)
    for lr in (0.9 * 2 / 5.0, 0.99 * 2 / 5.0, 1.01 * 2 / 5.0, 1.2 * 2 / 5.0):
        st_ = tr.gd_stability(A, lr)
        x = x0.copy()
        with np.errstate(over="ignore", invalid="ignore"):  # the unstable runs overflow
            for _ in range(3000):
                x = x - lr * (A @ x)
        converged = np.linalg.norm(x) < 1e-6 * np.linalg.norm(x0)
        assert st_.space == "full" and st_.stable == converged == (lr < 2 / 5.0)
        expected = max(abs(1 - lr * eigs))
        assert st_.radius_full == pytest.approx(expected, rel=1e-12)  # dense eigh, rounding
    assert tr.gd_stability(A, 0.1).lr_critical == pytest.approx(2 / 5.0, rel=1e-12)


def test_linear_regression_gd_matches_threshold():
    # over-determined linear regression: isolated minimum, H = X̃ᵀX̃/n in closed form
    rng = np.random.default_rng(7)
    mlp = tr.MLP((3, 1), "identity")
    X = rng.standard_normal((50, 3)) * np.array([2.0, 1.0, 0.5])
    Y = X @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 + 0.1 * rng.standard_normal((50, 1))
    Xt = np.hstack([X, np.ones((50, 1))])
    H = Xt.T @ Xt / 50
    lam_max = np.linalg.eigvalsh(H)[-1]
    assert tr.sharpness(mlp, np.zeros(4), X, Y).sharpness == pytest.approx(lam_max, rel=1e-10)
    op = tr.hessian_operator(mlp, np.zeros(4), X, Y)
    for factor, stable in ((0.95, True), (1.05, False)):
        lr = factor * 2 / lam_max
        res = tr.gd_stability(op, lr)
        assert res.stable == stable and res.space == "full"
        try:
            run = tr.gradient_descent(mlp, np.zeros(4), X, Y, lr=lr, steps=3000)
            grew = run.loss[-1] > run.loss[0]
        except NonFiniteStateError:
            grew = True
        assert grew == (not stable)


def test_overparameterised_regression_normal_space_decides():
    # 6 points, 11 parameters: a 5-dim manifold of minima; H = X̃ᵀX̃/n has rank 6
    rng = np.random.default_rng(8)
    mlp = tr.MLP((10, 1), "identity")
    X = rng.standard_normal((6, 10))
    Y = rng.standard_normal((6, 1))
    theta_star = np.linalg.lstsq(np.hstack([X, np.ones((6, 1))]), Y[:, 0], rcond=None)[0]
    assert tr.loss(mlp, theta_star, X, Y) < 1e-25  # interpolating minimum
    H = np.column_stack([tr.hvp(mlp, theta_star, X, Y, e) for e in np.eye(11)])
    J = tr.per_sample_gradients(mlp, theta_star, X)
    lam_n = np.linalg.eigvalsh(J @ J.T / 6)  # nonzero spectrum of H = JᵀJ/n
    for factor, stable in ((0.9, True), (1.1, False)):
        lr = factor * 2 / lam_n[-1]
        dense = tr.gd_stability(H, lr)
        free = tr.gd_stability(tr.hessian_operator(mlp, theta_star, X, Y), lr, jacobian=J)
        for res in (dense, free):
            assert res.space == "normal" and res.normal_dim == 6
            assert res.stable == stable
            assert res.lam_max_normal == pytest.approx(lam_n[-1], rel=1e-9)
            # tangent directions: eigenvalue 0 -> |1 - lr·0| = 1 (Lanczos λ_min ~ 1e-10·λ_max)
            assert res.radius_full == pytest.approx(max(1.0, abs(1 - lr * lam_n[-1])), abs=1e-8)
        if stable:
            assert dense.radius_full == pytest.approx(1.0, abs=1e-8) and dense.radius_normal < 1
        # GD from a perturbed minimum: stable -> reaches (another) minimum; unstable -> grows
        delta = 1e-3 * rng.standard_normal(11)
        try:
            run = tr.gradient_descent(mlp, theta_star + delta, X, Y, lr=lr, steps=4000)
            converged = run.loss[-1] < 1e-20
            moved = np.linalg.norm(run.theta - theta_star) > 1e-5  # stays off θ*: tangent drift
        except NonFiniteStateError:
            converged, moved = False, True
        assert converged == stable and moved


# -- gradient descent runs -----------------------------------------------------------------------
def test_gradient_descent_record_and_file(tmp_path):
    mlp, theta, X, Y = _problem(sizes=(3, 8, 1), n=30)
    run = tr.gradient_descent(
        mlp, theta, X, Y, lr=0.05, steps=60, sharpness_every=20, k=2, out=tmp_path / "gd.h5"
    )
    assert run.loss.shape == (60,) and run.sharpness.shape == (4, 2)
    np.testing.assert_array_equal(run.sharpness_step, [0, 20, 40, 60])
    assert run.loss[0] == pytest.approx(tr.loss(mlp, theta, X, Y), rel=1e-14)
    # θ after 60 steps by hand (same kernels, so bitwise equal)
    th = theta.copy()
    for _ in range(60):
        th -= 0.05 * tr.grad(mlp, th, X, Y)
    np.testing.assert_allclose(run.theta, th, rtol=1e-13, atol=1e-15)
    assert run.sharpness[-1, 0] == pytest.approx(tr.sharpness(mlp, th, X, Y).sharpness, rel=1e-5)
    with open_run(tmp_path / "gd.h5") as f:
        assert f.status == "complete"
        np.testing.assert_array_equal(f.read("trajectory", "loss"), run.loss)
        np.testing.assert_array_equal(f.read("sharpness", "value"), run.sharpness)
        assert f.params["two_over_lr"] == pytest.approx(40.0)


def test_sgd_seeded_and_resume_equals_uninterrupted(tmp_path):
    mlp, theta, X, Y = _problem(sizes=(3, 8, 1), n=30)
    kw = dict(lr=0.05, steps=40, batch_size=8, seed=3, chunk_steps=10)
    a = tr.gradient_descent(mlp, theta, X, Y, **kw)
    b = tr.gradient_descent(mlp, theta, X, Y, **kw, out=tmp_path / "full.h5")
    np.testing.assert_array_equal(a.loss, b.loss)
    # interrupted run: a Ctrl-C after 2 of its 4 chunks (20 steps), then resumed to 40 with
    # the stored generator state
    original = TrajectoryWriter.commit

    def commit(self, **ck):
        original(self, **ck)
        if self.chunks == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrajectoryWriter, "commit", commit)
        with pytest.raises(KeyboardInterrupt):
            tr.gradient_descent(mlp, theta, X, Y, **kw, out=tmp_path / "part.h5")
    with open_run(tmp_path / "part.h5") as f:
        assert f.status == "interrupted" and f.rows["trajectory"] == 20
    c = tr.gradient_descent(mlp, theta, X, Y, **kw, out=tmp_path / "part.h5", resume=True)
    np.testing.assert_array_equal(c.loss, a.loss)
    np.testing.assert_array_equal(c.theta, a.theta)


def _eos_problem():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 5))
    Y = np.sin(2 * X[:, :1]) * np.cos(X[:, 1:2]) + 0.5 * X[:, 2:3] ** 2
    return tr.MLP((5, 32, 32, 1), "tanh"), X, Y - Y.mean()


@pytest.mark.parametrize("lr", [0.25, 0.3])
def test_edge_of_stability(lr):
    mlp, X, Y = _eos_problem()
    run = tr.gradient_descent(
        mlp, mlp.init(0), X, Y, lr=lr, steps=2000, sharpness_every=25, sharpness_tol=1e-5
    )
    s = run.sharpness[:, 0] / run.two_over_lr  # sharpness in units of 2/η
    # progressive sharpening: starts well below the threshold and reaches it
    assert s[0] < 0.7
    hit = int(np.argmax(s >= 0.95))
    assert s[hit] >= 0.95
    t_hit = run.sharpness_step[hit]
    assert np.max(s[: hit + 1]) > s[0] + 0.25
    # edge of stability: the crossing is followed by one overshoot, a catapult drop and a
    # recovery (450-550 steps for both rates here); allowing 600 steps for that transient,
    # λ_max stays within 10% of 2/η for the rest of the run, at least half of it
    late = s[run.sharpness_step >= t_hit + 600]
    assert late.size >= len(s) // 2
    assert np.all(np.abs(late - 1.0) < 0.10)
    assert abs(late.mean() - 1.0) < 0.05
    # while the loss keeps decreasing, non-monotonically
    L = run.loss
    assert L[-1] < 0.2 * L[t_hit]
    assert np.sum(np.diff(L[t_hit:]) > 0) >= 10


def test_small_lr_stays_below_threshold():
    # control: with a small step the sharpness saturates below 2/η and the loss is monotone
    mlp, X, Y = _eos_problem()
    run = tr.gradient_descent(mlp, mlp.init(0), X, Y, lr=0.05, steps=300, sharpness_every=100)
    assert np.all(run.sharpness[:, 0] < 0.5 * run.two_over_lr)
    assert np.all(np.diff(run.loss) < 0)


# -- spectral density by stochastic Lanczos quadrature ----------------------------------------
def _hutchinson_se(A, n_probes):
    """Standard error of the mean of zᵀAz/P over Rademacher probes: per probe the variance is
    2(||A||_F² − Σ A_ii²)/P² (the diagonal contributes no randomness)."""
    P = A.shape[0]
    return np.sqrt(2.0 * (np.sum(A * A) - np.sum(np.diag(A) ** 2)) / n_probes) / P


def test_spectrum_density_moments_match_exact_hessian():
    mlp, theta, X, Y = _problem(sizes=(2, 4, 1), n=15, seed=3)
    P = mlp.n_params
    H = _fd_hessian(mlp, theta, X, Y)
    H = 0.5 * (H + H.T)
    n_probes = 300
    # 2 Lanczos steps: Gauss quadrature is exact for degrees <= 2·2 − 1 = 3
    res = tr.hessian_spectrum_density(mlp, theta, X, Y, n_probes=n_probes, n_steps=2, seed=4)
    assert res.nodes.shape == res.weights.shape == (n_probes, 2)
    assert res.n_hvp == 2 * n_probes
    z = 2.0 * np.random.default_rng(4).integers(0, 2, (n_probes, P)) - 1.0  # the documented probes
    scale = np.abs(np.linalg.eigvalsh(H)).max()
    for k in range(4):
        Hk = np.linalg.matrix_power(H, k)
        # per probe the quadrature equals zᵀH^k z/P exactly; the FD Hessian (relative error
        # ~1e-9) and rounding in the Lanczos recurrence leave ~1e-9·scale^k
        direct = np.einsum("ip,pq,iq->i", z, Hk, z) / P
        np.testing.assert_allclose(res.probe_moments(k), direct, rtol=1e-7, atol=1e-8 * scale**k)
        # the probe average estimates tr(H^k)/P without bias: 4 standard errors of the
        # Hutchinson estimator (k = 0 is exact: the weights of each probe sum to 1)
        exact = np.trace(Hk) / P
        tol = 4.0 * _hutchinson_se(Hk, n_probes) + 1e-8 * scale**k
        assert abs(res.moment(k) - exact) <= tol, (k, res.moment(k), exact, tol)


def test_spectrum_density_full_krylov_space():
    mlp, theta, X, Y = _problem(sizes=(2, 3, 1), n=12, seed=5)
    P = mlp.n_params
    H = _fd_hessian(mlp, theta, X, Y)
    H = 0.5 * (H + H.T)
    lam = np.linalg.eigvalsh(H)
    n_probes = 200
    # n_steps > P: capped at P, each probe's Krylov space becomes invariant
    res = tr.hessian_spectrum_density(mlp, theta, X, Y, n_probes=n_probes, n_steps=2 * P, seed=6)
    grid, density = res
    assert res.nodes.shape == (n_probes, P)
    np.testing.assert_allclose(res.weights.sum(axis=1), 1.0, rtol=1e-12)  # rounding only
    # the nodes of an invariant Krylov space are eigenvalues of H: FD Hessian accuracy ~1e-9
    used = res.weights > 1e-8
    dist = np.min(np.abs(res.nodes[used][:, None] - lam[None, :]), axis=1)
    assert dist.max() < 1e-6 * np.abs(lam).max()
    assert np.all(density >= 0)
    # default grid spans the nodes ± 6σ: the Gaussian tails outside hold 2Φ(−6) ≈ 2e-9, the
    # trapezoid rule with spacing ~0.1σ is exponentially accurate for Gaussians
    assert abs(np.trapezoid(density, grid) - 1.0) < 1e-7
    # broadening keeps the mean; the mean estimates tr(H)/P within 4 Hutchinson SEs
    mean = np.trapezoid(grid * density, grid)
    assert mean == pytest.approx(res.moment(1), abs=1e-7 * np.abs(lam).max())
    assert abs(mean - np.trace(H) / P) <= 4.0 * _hutchinson_se(H, n_probes) + 1e-7
    # a user grid and σ are used as given
    g2 = np.linspace(lam[0] - 1, lam[-1] + 1, 50)
    r2 = tr.hessian_spectrum_density(mlp, theta, X, Y, n_probes=3, n_steps=4, grid=g2, sigma=0.1)
    assert r2.sigma == 0.1 and r2.density.shape == (50,)
    np.testing.assert_array_equal(r2.grid, g2)


def test_spectrum_density_bad_inputs():
    mlp, theta, X, Y = _problem(sizes=(3, 4, 1), n=10)
    f = tr.hessian_spectrum_density
    with pytest.raises(ValueError, match="n_probes must be an integer >= 1"):
        f(mlp, theta, X, Y, n_probes=0)
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        f(mlp, theta, X, Y, n_steps=0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        f(mlp, theta, X, Y, seed=-1)
    with pytest.raises(ValueError, match="sigma must be"):
        f(mlp, theta, X, Y, sigma=0.0)
    with pytest.raises(ValueError, match="grid must"):
        f(mlp, theta, X, Y, grid=np.ones((2, 2)))
    with pytest.raises(ValueError, match="grid must be finite"):
        f(mlp, theta, X, Y, grid=[0.0, np.inf])
    with pytest.raises(ValueError, match="X must have shape"):
        f(mlp, theta, X[:, :2], Y)


# -- bad inputs ------------------------------------------------------------------------------
def test_bad_inputs_raise():
    mlp, theta, X, Y = _problem(sizes=(3, 5, 2))
    with pytest.raises(ValueError, match="X must have shape"):
        tr.loss(mlp, theta, X[:, :2], Y)
    with pytest.raises(ValueError, match="Y must have shape"):
        tr.grad(mlp, theta, X, Y[:, :1])
    with pytest.raises(ValueError, match="theta must have shape"):
        tr.hvp(mlp, theta[:-1], X, Y, theta)
    with pytest.raises(ValueError, match="v must have shape"):
        tr.hvp(mlp, theta, X, Y, theta[:-1])
    with pytest.raises(ValueError, match="finite"):
        tr.grad(mlp, theta, np.where(X > 1, np.nan, X), Y)
    with pytest.raises(ValueError, match="lr must be"):
        tr.gradient_descent(mlp, theta, X, Y, lr=0.0, steps=3)
    with pytest.raises(ValueError, match="lr must be"):
        tr.gd_stability(np.eye(3), -1.0)
    with pytest.raises(ValueError, match="k must be <="):
        tr.sharpness(mlp, theta, X, Y, k=mlp.n_params + 1)
    with pytest.raises(ValueError, match="method must be one of"):
        tr.sharpness(mlp, theta, X, Y, method="arnoldi")
    with pytest.raises(ValueError, match="activation must be one of"):
        tr.MLP((3, 2), "swish")
    with pytest.raises(ValueError, match="loss must be one of"):
        tr.MLP((3, 2), loss="hinge")
    with pytest.raises(ValueError, match="at least 2"):
        tr.MLP((3,))
    with pytest.raises(ValueError, match=">= 1"):
        tr.MLP((3, 0, 1))
    with pytest.raises(ValueError, match="batch_size"):
        tr.gradient_descent(mlp, theta, X, Y, lr=0.1, steps=3, batch_size=10**6)
    with pytest.raises(ValueError, match="jacobian must have shape"):
        tr.gd_stability(np.eye(3), 0.1, jacobian=np.ones((2, 4)))
    with pytest.raises(TypeError, match="mlp must be an MLP"):
        tr.forward("net", theta, X)
    with pytest.raises(ValueError, match="X must have shape"):
        tr.per_sample_gradients(mlp, theta, X[:, :2])
    with pytest.raises(ValueError, match="X must have shape"):
        tr.gradient_descent(mlp, theta, np.ones((X.shape[0], 4)), Y, lr=0.1, steps=3)
    with pytest.raises(ValueError, match="lr must be"):
        tr.gradient_descent(mlp, theta, X, Y, lr=-0.1, steps=3)
    with pytest.raises(ValueError, match="k must be <="):
        tr.gradient_descent(mlp, theta, X, Y, lr=0.1, steps=3, sharpness_every=1, k=99)
    with pytest.raises(ValueError, match="k must be <="):
        tr.top_eigenpairs(np.eye(3), k=4)


def _no_kernel(*args):
    raise AssertionError("a kernel ran before the inputs were validated")


@pytest.mark.parametrize("where", ["X", "Y", "theta", "v"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_raise_before_any_kernel(monkeypatch, where, bad):
    mlp, theta, X, Y = _problem(sizes=(3, 5, 2), n=6)
    v = np.ones(mlp.n_params)
    arrays = {"X": X, "Y": Y, "theta": theta, "v": v}
    arrays[where] = arrays[where].copy()
    arrays[where].flat[3] = bad
    for name in ("mlp_forward", "mlp_loss_grad", "mlp_hvp", "mlp_gnvp", "mlp_per_sample_grads"):
        monkeypatch.setattr(tr.km, name, _no_kernel)
    X, Y, theta, v = arrays["X"], arrays["Y"], arrays["theta"], arrays["v"]
    calls = [
        lambda: tr.hvp(mlp, theta, X, Y, v),
        lambda: tr.gauss_newton_vp(mlp, theta, X, Y, v),
    ]
    if where != "v":
        calls += [
            lambda: tr.loss(mlp, theta, X, Y),
            lambda: tr.grad(mlp, theta, X, Y),
            lambda: tr.sharpness(mlp, theta, X, Y),
            lambda: tr.hessian_spectrum_density(mlp, theta, X, Y, n_probes=1, n_steps=1),
            lambda: tr.gradient_descent(mlp, theta, X, Y, lr=0.1, steps=2),
        ]
    if where in ("X", "theta"):
        calls += [lambda: tr.forward(mlp, theta, X), lambda: tr.per_sample_gradients(mlp, theta, X)]
    for call in calls:
        with pytest.raises(ValueError, match=f"{where}0? must be finite"):
            call()


def test_divergence_raises_and_keeps_steps(tmp_path):
    mlp, theta, X, Y = _problem(sizes=(3, 5, 1), n=20)
    with pytest.raises(NonFiniteStateError) as info:
        tr.gradient_descent(mlp, theta, X, Y, lr=1e3, steps=500, out=tmp_path / "d.h5")
    with open_run(tmp_path / "d.h5") as f:
        assert f.status == "failed"
        assert f.rows["trajectory"] == info.value.step
        assert np.all(np.isfinite(f.read("trajectory", "loss")))


def test_eos_cli_writes_runs_and_figure(tmp_path, capsys):
    import argparse

    from nndyn_fast.cli.eos import add_eos_parser

    parser = argparse.ArgumentParser()
    add_eos_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "eos",
            "--lrs",
            "0.3",
            "--steps",
            "50",
            "--sharpness-every",
            "25",
            "--n",
            "30",
            "--width",
            "8",
            "--out-dir",
            str(tmp_path),
            "--plot",
            str(tmp_path / "eos.png"),
        ]
    )
    assert args.func(args) == 0
    assert (tmp_path / "eos.png").exists()
    with open_run(tmp_path / "eos_lr0.3.h5") as f:
        assert f.rows == {"trajectory": 50, "sharpness": 3}
    assert "2/lr" in capsys.readouterr().out
