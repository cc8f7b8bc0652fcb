"""Gradients of flow maps (nndyn_fast.gradients) against references they did not produce:
central differences of the discrete map, scipy's Frechet derivative of expm for a linear field,
a naive numpy reverse sweep (tests/reference_gradients.py)."""

import numpy as np
import pytest
from reference_gradients import rk_forward, rk_vjp
from scipy.linalg import expm, expm_frechet

from nndyn_fast import gradients as G
from nndyn_fast.kernels import rk as _rk
from nndyn_fast.neural import AugmentedNeuralODE, NeuralODE, flow_map

# one worker compiles the adjoint kernels once and runs these in turn (under two workers
# each compiled them, at the same time)
pytestmark = pytest.mark.xdist_group("gradients")

FIXED = {"euler": (_rk.EULER_A, _rk.EULER_B), "rk2": (_rk.RK2_A, _rk.RK2_B),
         "rk4": (_rk.RK4_A, _rk.RK4_B)}  # fmt: skip


def _models():
    base = NeuralODE.random(3, 4, layers=2, seed=1)
    aug = AugmentedNeuralODE(
        NeuralODE.random(3, 4, seed=2), 1, np.random.default_rng(3).standard_normal((2, 3))
    )
    inner = NeuralODE.random(3, layers=1, form="inner", seed=4)
    return {"plain": base, "augmented": aug, "inner": inner}


def _central(fun, v, eps=1e-6):
    # central differences of a scalar function of an array
    out = np.zeros_like(v)
    for idx in np.ndindex(v.shape):
        vp, vm = v.copy(), v.copy()
        vp[idx] += eps
        vm[idx] -= eps
        out[idx] = (fun(vp) - fun(vm)) / (2 * eps)
    return out


def _check_all(model, X, C, F, g, tol):
    # every parameter array and the input against central differences of F
    for k, v in G.model_params(model).items():
        num = _central(lambda p, k=k: np.sum(C * F(G.with_params(model, {k: p}), X)), v)
        np.testing.assert_allclose(g.params[k], num, atol=tol, rtol=0, err_msg=k)
    num = _central(lambda x: np.sum(C * F(model, x)), X)
    np.testing.assert_allclose(g.X, num, atol=tol, rtol=0, err_msg="X")


@pytest.mark.parametrize("kind", ["plain", "augmented", "inner"])
@pytest.mark.parametrize("method", ["euler", "rk2", "rk4"])
def test_fixed_step_gradients_match_central_differences(kind, method):
    model = _models()[kind]
    rng = np.random.default_rng(5)
    n_in = model.n_in if kind == "augmented" else 3
    X = rng.standard_normal((6, n_in))
    p = 2 if kind == "augmented" else 3
    C = rng.standard_normal((6, p))
    # dt = 1/9.5: 10 steps, and T ± 1e-6 keeps the step counts (the differentiated map)
    dt = 1.0 / 9.5
    g = G.flow_map_vjp(model, X, None, C, method=method, dt=dt)
    F = lambda m, x, T=None: flow_map(m, x, T, method=method, dt=dt)  # noqa: E731
    # the same discrete map (same steps; rounding may differ by the order of the sums)
    np.testing.assert_allclose(g.y, F(model, X), rtol=0, atol=1e-14)
    # central differences with eps = 1e-6: truncation ~1e-12 |F'''|, rounding ~1e-16/1e-6
    _check_all(model, X, C, F, g, 1e-6)
    T0 = model.T
    dT = (np.sum(C * F(model, X, T0 + 1e-6)) - np.sum(C * F(model, X, T0 - 1e-6))) / 2e-6
    assert abs(g.T - dT) < 1e-6


def _dopri5_map(model, X, rtol):
    return G.flow_map_vjp(model, X, None, np.zeros((len(X), 3 if not hasattr(model, "n_aug")
                          else model.readout.shape[0])), method="dopri5", rtol=rtol,
                          atol=rtol * 1e-2).y  # fmt: skip


@pytest.mark.parametrize("kind", ["plain", "augmented"])
def test_dopri5_gradients_match_central_differences_at_tight_tolerance(kind):
    # the adjoint holds the accepted steps; at rtol 1e-12 the steps' own dependence on the
    # parameters moves the map by ~rtol, far below the 1e-6 tolerance
    model = _models()[kind]
    rng = np.random.default_rng(6)
    n_in = model.n_in if kind == "augmented" else 3
    X = rng.standard_normal((3, n_in))
    C = rng.standard_normal((3, 2 if kind == "augmented" else 3))
    g = G.flow_map_vjp(model, X, None, C, method="dopri5", rtol=1e-12, atol=1e-14)
    F = lambda m, x: _dopri5_map(m, x, 1e-12)  # noqa: E731
    _check_all(model, X, C, F, g, 1e-6)
    # ∂/∂T is the field at the end state (the last step stretched), read out
    base = model.model if kind == "augmented" else model
    Z0 = np.concatenate([X, np.zeros((3, 1))], 1) if kind == "augmented" else X
    ZT = G.flow_map_vjp(base, Z0, None, np.zeros((3, 3)), method="dopri5", rtol=1e-12,
                        atol=1e-14).y  # fmt: skip
    fT = base(ZT, base.T)  # the last layer
    R = model.readout if kind == "augmented" else np.eye(3)
    assert abs(g.T - np.sum(C * (fT @ R.T))) < 1e-8  # error of the discrete map ~ rtol


def test_dopri5_gradient_is_that_of_the_recorded_steps():
    # one row: the kernel against the numpy reverse sweep over the same accepted steps, and
    # that against central differences of the discrete map with those steps
    m = NeuralODE.random(3, 4, layers=2, seed=1)
    x = np.array([[0.3, -0.5, 0.8]])
    c = np.array([[1.0, -2.0, 0.5]])
    hs, ls, hw, ns = G._dopri5_steps(m, x, 0.0, 1.0, 1e-6, 1e-8, 10_000)
    n = int(ns[0])
    g = G.flow_map_vjp(m, x, None, c, method="dopri5", rtol=1e-6, atol=1e-8)
    TA, TB = _rk.DOPRI5_A, _rk.DOPRI5_B
    gW, gA, gb, dZ, dh, ZT = rk_vjp(m.W, m.A, m.b, "tanh", x, c, hs[0, :n], ls[0, :n], TA, TB)
    # same arithmetic up to the order of summation: a few ulps times the sweep's length
    np.testing.assert_allclose(g.params["A"], gA, atol=1e-12)
    np.testing.assert_allclose(g.X, dZ, atol=1e-12)
    assert abs(g.T - dh[-1]) < 1e-12
    num = _central(lambda A: np.sum(c * rk_forward(m.W, A, m.b, "tanh", x, hs[0, :n],
                                                   ls[0, :n], TA, TB)), m.A)  # fmt: skip
    np.testing.assert_allclose(g.params["A"], num, atol=1e-8)


def _linear(M, T=1.0):
    d = M.shape[0]
    return NeuralODE(np.eye(d), M, np.zeros(d), "identity", T=T)


def test_linear_field_gradient_equals_expm_frechet():
    # f = M x: L = ½||e^{MT} x0 - y||², dL/dM_ij = r·L_exp(MT, T E_ij) x0
    rng = np.random.default_rng(7)
    d = 3
    M = 0.5 * rng.standard_normal((d, d))
    x0 = rng.standard_normal(d)
    y = rng.standard_normal(d)
    T = 1.3
    r = expm(M * T) @ x0 - y
    ref = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            E = np.zeros((d, d))
            E[i, j] = T
            ref[i, j] = r @ expm_frechet(M * T, E, compute_expm=False) @ x0
    loss, g = G.loss_and_grad(_linear(M, T), x0[None], y[None], method="dopri5", rtol=1e-13,
                              atol=1e-15)  # fmt: skip
    assert abs(loss - 0.5 * r @ r) < 1e-10
    # W = I: ∂L/∂A = ∂L/∂M; dopri5 at rtol 1e-13 is within ~1e-11 of the flow
    np.testing.assert_allclose(g.params["A"][0], ref, atol=1e-8, rtol=0)
    # ∂L/∂T = r·M x(T), ∂L/∂x0 = e^{M^T T} r
    assert abs(g.T - r @ M @ expm(M * T) @ x0) < 1e-8
    np.testing.assert_allclose(g.X[0], expm(M.T * T) @ r, atol=1e-8)


def test_linear_field_fixed_step_gradient_equals_central_differences():
    rng = np.random.default_rng(8)
    M = 0.5 * rng.standard_normal((3, 3))
    x0 = rng.standard_normal((2, 3))
    y = rng.standard_normal((2, 3))

    def loss(A):
        z = flow_map(_linear(A), x0, method="rk4", dt=0.1)
        return 0.5 * np.sum((z - y) ** 2) / 2

    val, g = G.loss_and_grad(_linear(M), x0, y, method="rk4", steps=10)
    assert abs(val - loss(M)) < 1e-14
    # the discrete map is a polynomial of degree 40 in M: central differences at 1e-5 have
    # truncation ~1e-10 and rounding ~1e-11
    num = _central(loss, M, eps=1e-5)
    np.testing.assert_allclose(g.params["A"][0], num, atol=1e-8, rtol=0)


def test_batch_and_thread_count_do_not_change_the_gradient(monkeypatch):
    import importlib

    import nndyn_fast as nf

    TH = importlib.import_module("nndyn_fast.threads")
    from nndyn_fast.dde_gradients import dde_flow_vjp
    from nndyn_fast.delay import NeuralDDE

    m = NeuralODE.random(4, 6, seed=9)
    rng = np.random.default_rng(10)
    X = rng.standard_normal((40, 4))
    C = rng.standard_normal((40, 4))
    dde = NeuralDDE(m.W[0], m.A[0], m.A[0], m.b[0], T=1.0)

    def run():
        out = []
        for method in ("rk4", "dopri5"):
            g = G.flow_map_vjp(m, X, None, C, method=method, **({"steps": 7} if method ==
                               "rk4" else {}))  # fmt: skip
            out += [g.X, *g.params.values()]
        g = dde_flow_vjp(dde, X, 1.0, C, delays=0.2, dt=0.1)
        return [*out, g.X, *g.params.values()]

    one = G.flow_map_vjp(m, X[5:6], None, C[5:6], steps=7)
    with nf.threads(1):
        serial = run()
    with monkeypatch.context() as mp:
        mp.setattr(TH, "MIN_SECONDS_PER_THREAD", 0.0)  # every region on all threads
        with nf.threads(None):
            parallel = run()
    np.testing.assert_array_equal(serial[0][5], one.X[0])  # rows are independent
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, X: G.flow_map_vjp(m, X, None, np.ones((4, 2))), "cotangent"),
        (lambda m, X: G.flow_map_vjp(m, X, None, None), "cotangent"),
        (lambda m, X: G.flow_map_vjp(m, X, None, np.ones((4, 3)), method="rk9"), "method"),
        (lambda m, X: G.loss_and_grad(m, X, np.full((4, 3), np.nan)), "Y"),
        (lambda m, X: G.loss_and_grad(m, X * np.nan, np.ones((4, 3))), "X"),
        (lambda m, X: G.flow_map_vjp(m, X, None, np.ones((4, 3)), steps=0), "steps"),
        (lambda m, X: G.flow_map_vjp(m, X, -1.0, np.ones((4, 3))), "T"),
        (lambda m, X: G.flow_map_vjp(m, X, None, np.ones((4, 3)), method="dopri5", steps=3),
         "steps"),
    ],
)  # fmt: skip
def test_bad_input_is_refused(call, match):
    m = NeuralODE.random(3, 4, seed=0)
    with pytest.raises(ValueError, match=match):
        call(m, np.ones((4, 3)))


def test_blow_up_is_an_error():
    m = NeuralODE(np.eye(2), 100 * np.eye(2), np.zeros(2), "identity", T=1000.0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        G.flow_map_vjp(m, np.ones((1, 2)), None, np.ones((1, 2)), steps=50)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_time_gradient_of_a_very_short_last_step(method):
    # T = 1e-11: one step of that size, which moves x by ~1e-11 |f|; then dΦ/dT = f(Φ_T(x))
    # to O(T |Df|) ~ 1e-11 (independent: the field itself). From (y' - y)/h the rounding of
    # y' - y would cost eps |y| / (T |f|) ~ 2e-5 of it; from the stages (kept for such a
    # step) it is exact up to O(T): tolerance 1e-9
    model = NeuralODE.random(3, 5, seed=7)
    rng = np.random.default_rng(8)
    X = rng.standard_normal((6, 3))
    C = rng.standard_normal((6, 3))
    T = 1e-11
    kw = {"steps": 1} if method == "rk4" else {"method": "dopri5"}
    g = G.flow_map_vjp(model, X, T, C, **kw)
    ref = float(np.sum(C * model(g.y, T)))
    assert abs(g.T - ref) < 1e-9 * np.sum(np.abs(C * model(g.y, T)))


@pytest.mark.parametrize("checkpoints", [None, 2])
def test_softplus_field_gradients_match_central_differences(checkpoints):
    # an activation other than tanh takes σ' from the pre-activations, which the tape
    # (default) keeps for it; 9 rows: a block of 16 partly filled. Tolerance as above
    model = NeuralODE.random(3, 4, activation="softplus", seed=11)
    rng = np.random.default_rng(12)
    X = rng.standard_normal((9, 3))
    C = rng.standard_normal((9, 3))
    dt = 1.0 / 9.5
    g = G.flow_map_vjp(model, X, None, C, method="rk4", dt=dt, checkpoints=checkpoints)
    F = lambda m, x, T=None: flow_map(m, x, T, method="rk4", dt=dt)  # noqa: E731
    _check_all(model, X, C, F, g, 1e-6)
