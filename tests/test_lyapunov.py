"""Lyapunov spectra of maps, flows, random products and deep networks against independent
references: Newman's closed form, Lorenz-63 literature values and its trace sum rule, the Hénon
map's determinant, closed forms for 2x2 products and linear flows, a naive numpy Benettin loop,
finite-difference Jacobians and mean-field theory."""

import math

import numba
import numpy as np
import pytest
from numba import njit
from reference_lyapunov import mean_field_top_exponent, naive_benettin_lorenz
from scipy.special import digamma

import nndyn_fast.kernels.lyapunov as klyap
from nndyn_fast.errors import NonFiniteStateError
from nndyn_fast.lyapunov import (
    FlowSystem,
    Henon,
    Lorenz63,
    MapSystem,
    lyapunov_spectrum,
    network_lyapunov,
    product_lyapunov,
    random_network_lyapunov,
)
from nndyn_fast.storage import open_run

K_SE = 4.0  # statistical tolerances are 4 standard errors (two-sided p ~ 6e-5 per check)


# -- user systems (module level so that they compile once) -----------------------------------
@njit
def henon_user_step(x, p, out):
    out[0] = 1.0 - p[0] * x[0] * x[0] + x[1]
    out[1] = p[1] * x[0]


@njit
def henon_user_jac(x, p, J):
    J[0, 0] = -2.0 * p[0] * x[0]
    J[0, 1] = 1.0
    J[1, 0] = p[1]
    J[1, 1] = 0.0


@njit
def linear_flow(t, x, A, out):
    for i in range(x.shape[0]):
        s = 0.0
        for j in range(x.shape[0]):
            s += A[i, j] * x[j]
        out[i] = s


@njit
def linear_jac(t, x, A, J):
    for i in range(x.shape[0]):
        for j in range(x.shape[0]):
            J[i, j] = A[i, j]


@njit
def blowup_flow(t, x, args, out):
    out[0] = x[0] * x[0]


@njit
def blowup_jac(t, x, args, J):
    J[0, 0] = 2.0 * x[0]


def test_kernels_are_jitted_and_cached():
    for name in (
        "qr_rows",
        "benettin_map_advance",
        "benettin_flow_advance",
        "qr_matrix_products",
        "sgd_rank_products",
        "sgd_rank_products_serial",
        "sgd_hessian_products",
        "batches_without_replacement",
        "mlp_jacobian_qr",
    ):
        f = getattr(klyap, name)
        assert isinstance(f, numba.core.registry.CPUDispatcher), name
        assert type(f._cache).__name__ != "NullCache", name  # cache=True
        assert f.targetoptions.get("fastmath") is not True, name


# -- maps ---------------------------------------------------------------------------------------
def test_henon_top_exponent_and_determinant_sum_rule():
    res = lyapunov_spectrum(Henon(), [0.1, 0.1], steps=200_000, transient=1000)
    # literature value 0.41922 (Sprott, Chaos and Time-Series Analysis, 2003); 4 batch-means SE
    assert abs(res.exponents[0] - 0.41922) < K_SE * res.stderr[0] + 1e-4
    # |det DF| = b at every step, so the sum is log b up to rounding of 2e5 logs
    assert abs(res.sum - math.log(0.3)) < 1e-12


def test_user_map_matches_builtin():
    a = lyapunov_spectrum(Henon(), [0.1, 0.1], steps=20_000, seed=3)
    user = MapSystem(henon_user_step, henon_user_jac, 2, np.array([1.4, 0.3]))
    b = lyapunov_spectrum(user, [0.1, 0.1], steps=20_000, seed=3)
    # same arithmetic in the same order: equal to rounding
    np.testing.assert_allclose(a.exponents, b.exponents, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.x, b.x, rtol=0, atol=1e-12)


# -- flows --------------------------------------------------------------------------------------
def test_lorenz63_spectrum_and_trace_sum_rule():
    res = lyapunov_spectrum(Lorenz63(), [1.0, 1.0, 1.0], t_end=1000.0, dt=0.01, transient=20.0)
    # reference spectrum (Sprott 2003; Wolf et al. 1985): 0.906, 0, -14.572, within 0.02
    np.testing.assert_allclose(res.exponents, [0.906, 0.0, -14.572], rtol=0, atol=0.02)
    # tr Df = -(sigma + 1 + beta) exactly; RK4 changes log det by O(dt^4) per unit time
    assert abs(res.sum + (10.0 + 1.0 + 8.0 / 3.0)) < 1e-3
    assert res.running.shape == (200, 3) and np.all(np.isfinite(res.stderr))


def test_lorenz_kernel_matches_naive_numpy_benettin():
    V0 = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))[0].T
    res = lyapunov_spectrum(Lorenz63(), [1.0, 2.0, 20.0], steps=500, dt=0.01, V0=V0)
    ref, xref = naive_benettin_lorenz([1.0, 2.0, 20.0], V0, 0.01, 500)
    # identical algorithm, different summation order: rounding only (chaos amplifies it mildly)
    np.testing.assert_allclose(res.exponents, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.x, xref, rtol=1e-9, atol=1e-9)


def test_linear_flow_exponents_are_real_parts_of_eigenvalues():
    A = np.array([[-1.0, 5.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 0.5]])
    sys = FlowSystem(linear_flow, linear_jac, 3, A)
    res = lyapunov_spectrum(sys, [1.0, 1.0, 1.0], t_end=200.0, dt=0.01, transient=20.0)
    # exponents of x' = A x are Re eig(A); error O(1/T) from the start vectors, RK4 O(dt^4)
    np.testing.assert_allclose(res.exponents, [0.5, -1.0, -2.0], atol=0.02)
    assert abs(res.sum - np.trace(A)) < 1e-6  # trace rule, RK4 error ~ dt^4


def test_top_k_only_and_reorth_every_agree():
    a = lyapunov_spectrum(Lorenz63(), [1.0, 1.0, 1.0], t_end=50.0, dt=0.01, k=1, seed=2)
    b = lyapunov_spectrum(
        Lorenz63(), [1.0, 1.0, 1.0], t_end=50.0, dt=0.01, k=1, seed=2, reorth_every=5
    )
    # QR every 5 steps instead of 1 changes only rounding (growth over 5 steps is modest)
    assert abs(a.exponents[0] - b.exponents[0]) < 1e-9


def test_nonfinite_flow_raises_with_step():
    sys = FlowSystem(blowup_flow, blowup_jac, 1)
    with pytest.raises(NonFiniteStateError) as info:
        lyapunov_spectrum(sys, [1.0], t_end=5.0, dt=0.01)
    assert info.value.step > 0


def test_run_file_and_resume_match_uninterrupted(tmp_path, monkeypatch):
    full = lyapunov_spectrum(Henon(), [0.1, 0.1], steps=10_000, n_records=10)
    calls = {"n": 0}
    real = klyap.benettin_map_advance

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(*a)

    path = tmp_path / "henon.h5"
    monkeypatch.setattr(klyap, "benettin_map_advance", flaky)
    with pytest.raises(KeyboardInterrupt):
        lyapunov_spectrum(Henon(), [0.1, 0.1], steps=10_000, n_records=10, out=path)
    monkeypatch.setattr(klyap, "benettin_map_advance", real)
    with open_run(path) as run:
        assert run.status == "interrupted" and run.rows["running"] == 4
    with pytest.raises(ValueError, match="parameter steps is 10000"):  # other options: refused
        lyapunov_spectrum(Henon(), [0.1, 0.1], steps=20_000, n_records=10, out=path, resume=True)
    with pytest.raises(ValueError, match="input x0 differs"):
        lyapunov_spectrum(Henon(), [0.2, 0.1], steps=10_000, n_records=10, out=path, resume=True)
    res = lyapunov_spectrum(Henon(), [0.1, 0.1], steps=10_000, n_records=10, out=path, resume=True)
    # the checkpoint holds x, V and the sums exactly: bitwise equal to the uninterrupted run
    np.testing.assert_array_equal(res.exponents, full.exponents)
    with open_run(path) as run:
        assert run.status == "complete"
        np.testing.assert_array_equal(run.read("running", "estimate"), full.running)


def test_bad_inputs():
    with pytest.raises(ValueError, match="dt"):
        lyapunov_spectrum(Lorenz63(), [1.0, 1.0, 1.0], t_end=1.0)
    with pytest.raises(ValueError, match="k must be"):
        lyapunov_spectrum(Henon(), [0.1, 0.1], steps=10, k=3)
    with pytest.raises(ValueError, match="x0"):
        lyapunov_spectrum(Henon(), [0.1, np.nan], steps=10)
    with pytest.raises(ValueError, match="x0"):
        lyapunov_spectrum(Henon(), [0.1, 0.1, 0.1], steps=10)
    with pytest.raises(ValueError, match="system must be one of"):
        lyapunov_spectrum("rossler", [0.1, 0.1], steps=10)
    with pytest.raises(ValueError, match="map takes steps"):
        lyapunov_spectrum(Henon(), [0.1, 0.1], steps=10, dt=0.1)
    with pytest.raises(ValueError, match="dt must be"):
        lyapunov_spectrum(Lorenz63(), [1.0, 1.0, 1.0], t_end=1.0, dt=-0.1)
    with pytest.raises(TypeError, match="Numba"):
        MapSystem(lambda x, a, o: None, henon_user_jac, 2)


# -- random products ----------------------------------------------------------------------------
@pytest.mark.slow
def test_newman_gaussian_products():
    n = 4
    rng_draw = lambda rng, m: rng.standard_normal((m, n, n)) / math.sqrt(n)  # noqa: E731
    res = product_lyapunov(rng_draw, steps=200_000, seed=5, chunk=10_000)
    i = np.arange(1, n + 1)
    newman = 0.5 * (np.log(2.0 / n) + digamma((n - i + 1) / 2.0))
    # statistical error of a finite product: 4 batch-means standard errors
    assert np.all(np.abs(res.exponents - newman) < K_SE * res.stderr), (res.exponents, newman)


def test_rotation_scaling_2x2_closed_form():
    s = 3.0

    def draw(rng, m):
        th = rng.uniform(0.0, 2.0 * np.pi, m)
        c, sn = np.cos(th), np.sin(th)
        M = np.empty((m, 2, 2))
        M[:, 0, 0], M[:, 0, 1] = s * c, -s * sn
        M[:, 1, 0], M[:, 1, 1] = sn / s, c / s
        return M

    res = product_lyapunov(draw, steps=100_000, seed=0, chunk=20_000)
    lam = math.log((s + 1.0 / s) / 2.0)  # isotropic product: E log|diag(s,1/s) u|, u uniform
    assert abs(res.exponents[0] - lam) < K_SE * res.stderr[0]
    assert abs(res.sum) < 1e-10  # det = 1: the sum vanishes up to rounding


def test_upper_triangular_products_diagonal_means():
    rng = np.random.default_rng(2)
    T = 50_000
    M = np.zeros((T, 2, 2))
    M[:, 0, 0] = rng.uniform(0.5, 1.0, T)
    M[:, 1, 1] = rng.uniform(0.1, 2.5, T)
    M[:, 0, 1] = rng.standard_normal(T)
    res = product_lyapunov(M)
    # exponents of triangular products are E log|diagonal| (sorted); closed-form means:
    # E log U(a, b) = (b log b - a log a)/(b - a) - 1
    e = [(b * math.log(b) - a * math.log(a)) / (b - a) - 1 for a, b in ((0.5, 1.0), (0.1, 2.5))]
    np.testing.assert_allclose(res.exponents, sorted(e, reverse=True), atol=K_SE * res.stderr.max())


# -- deep networks ------------------------------------------------------------------------------
def test_network_singular_exponents_match_finite_differences():
    from nndyn_fast.training import MLP, forward

    mlp = MLP((3, 8, 8, 3), activation="tanh")
    theta = mlp.init(4)
    X = np.random.default_rng(0).standard_normal((5, 3))
    res = network_lyapunov(mlp, X, theta=theta, k=3)
    h = 1e-6
    for p in range(X.shape[0]):
        J = np.empty((3, 3))
        for a in range(3):
            e = np.zeros(3)
            e[a] = h
            up = forward(mlp, theta, X[p : p + 1] + e)[0]
            down = forward(mlp, theta, X[p : p + 1] - e)[0]
            J[:, a] = (up - down) / (2 * h)
        ref = np.log(np.linalg.svd(J, compute_uv=False)) / 3
        # central differences: relative error ~ h^2 + eps/h ~ 1e-10, logged and divided by L
        np.testing.assert_allclose(res.singular[p], ref, atol=1e-6)
        # QR exponents sum to (1/L) log|det J| with all input directions
        assert abs(res.per_input[p].sum() - ref.sum()) < 1e-6


def _fd_layer_jacobians(mlp, theta, x, h=1e-6):
    """Central-difference Jacobians of each layer map h -> phi(W h + b) (linear last layer)
    along the forward pass at input x, with numpy only."""
    layers = mlp.unflatten(theta)
    out, a = [], np.asarray(x, dtype=float)
    n_layers = len(layers)
    for li, (W, b) in enumerate(layers):

        def f(v, W=W, b=b, last=li == n_layers - 1):
            z = W @ v + b
            return z if last else np.tanh(z)

        J = np.empty((W.shape[0], W.shape[1]))
        for c in range(W.shape[1]):
            e = np.zeros(W.shape[1])
            e[c] = h
            J[:, c] = (f(a + e) - f(a - e)) / (2 * h)
        out.append(J)
        a = f(a)
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_network_finite_time_exponents_match_product_of_fd_layer_jacobians(k):
    from nndyn_fast.training import MLP

    mlp = MLP((2, 7, 5, 3), activation="tanh")
    theta = mlp.init(6)
    X = np.random.default_rng(3).uniform(-2.0, 2.0, size=(4, 2))
    L = 3
    res = network_lyapunov(mlp, X, theta=theta, k=k)
    for p in range(X.shape[0]):
        Js = _fd_layer_jacobians(mlp, theta, X[p])
        P = np.eye(2)[:, :k]
        cum = []
        for J in Js:
            P = J @ P  # J_l ... J_1 restricted to the first k input axes
            cum.append(np.log(np.abs(np.diag(np.linalg.qr(P)[1]))))
        # central differences: relative error ~ h^2 + eps/h ~ 1e-10 per entry; 1e-7 on logs
        np.testing.assert_allclose(res.per_input[p], cum[-1] / L, rtol=0, atol=1e-7)
        sv = np.linalg.svd(P, compute_uv=False)
        np.testing.assert_allclose(res.singular[p], np.log(sv) / L, rtol=0, atol=1e-7)
        one = network_lyapunov(mlp, X[p : p + 1], theta=theta, k=k)
        # per-layer log|R_jj| add up to log|diag R| of the partial products J_l ... J_1
        np.testing.assert_allclose(np.cumsum(one.per_layer, 0), cum, rtol=0, atol=1e-7)


def test_random_network_linear_regime_matches_newman_and_sign_change():
    N = 100
    res = random_network_lyapunov(N, 120, 0.5, networks=4, n_inputs=4, skip_layers=20, seed=1)
    # sigma_w < 1: activity dies out, J_l -> W_l, so Newman's top exponent for variance
    # sigma_w^2/N applies; statistics over networks, 4 SE (+1e-3 for the leftover transient)
    newman = math.log(0.5) + 0.5 * (math.log(2.0 / N) + digamma(N / 2.0))
    assert abs(res.exponents[0] - newman) < K_SE * res.stderr[0] + 1e-3
    lam = [
        random_network_lyapunov(N, 80, s, networks=2, n_inputs=2, skip_layers=20).exponents[0]
        for s in (0.8, 1.3)
    ]
    assert lam[0] < 0.0 < lam[1]  # order (vanishing) to chaos (exploding) across sigma_w = 1


def test_random_network_chaotic_regime_matches_mean_field():
    res = random_network_lyapunov(200, 120, 2.0, networks=2, n_inputs=4, skip_layers=20, seed=2)
    mf, _ = mean_field_top_exponent(2.0)
    # finite width N = 200 lowers the exponent by O(1/N) (measured ~1.2/N); 0.02 covers it
    assert abs(res.exponents[0] - mf) < 0.02


def test_user_flow_and_map_in_the_simple_form_match_the_in_place_form():
    """f(t, x, args) -> dx gives the same spectrum as f(t, x, args, out) (Lorenz-63, whose
    exponents sum to -(sigma + 1 + beta)); the same for maps (Henon, sum log b)."""
    from numba import njit

    from nndyn_fast.lyapunov import FlowSystem, Henon, Lorenz63, MapSystem, lyapunov_spectrum

    @njit
    def lorenz_simple(t, x, p):
        return np.array(
            [p[0] * (x[1] - x[0]), x[0] * (p[1] - x[2]) - x[1], x[0] * x[1] - p[2] * x[2]]
        )

    @njit
    def lorenz_jac(t, x, p, J):
        J[0, 0], J[0, 1], J[0, 2] = -p[0], p[0], 0.0
        J[1, 0], J[1, 1], J[1, 2] = p[1] - x[2], -1.0, -x[0]
        J[2, 0], J[2, 1], J[2, 2] = x[1], x[0], -p[2]

    p = np.array([10.0, 28.0, 8.0 / 3.0])
    kw = {"t_end": 20.0, "dt": 0.01, "transient": 1.0}
    user = lyapunov_spectrum(FlowSystem(lorenz_simple, lorenz_jac, 3, p), np.ones(3), **kw)
    built = lyapunov_spectrum(Lorenz63(), np.ones(3), **kw)
    # Liouville: the exponents sum to tr Df; RK4 at dt = 0.01 keeps it to O(dt^4) per unit time
    assert abs(user.exponents.sum() + (10 + 1 + 8 / 3)) < 1e-3
    # the same RK4 arithmetic as the built-in field (same operations in the same order)
    np.testing.assert_allclose(user.exponents, built.exponents, rtol=0, atol=1e-9)

    @njit
    def henon_simple(x, p):
        return np.array([1.0 - p[0] * x[0] * x[0] + x[1], p[1] * x[0]])

    @njit
    def henon_jac(x, p, J):
        J[0, 0], J[0, 1], J[1, 0], J[1, 1] = -2.0 * p[0] * x[0], 1.0, p[1], 0.0

    res = lyapunov_spectrum(
        MapSystem(henon_simple, henon_jac, 2, np.array([1.4, 0.3])), np.zeros(2), steps=20000
    )
    assert abs(res.exponents.sum() - np.log(0.3)) < 1e-10
    ref = lyapunov_spectrum(Henon(), np.zeros(2), steps=20000)
    np.testing.assert_allclose(res.exponents, ref.exponents, rtol=0, atol=1e-9)  # same arithmetic
