"""NeuralODE fields, analytic Jacobians, flow maps and flow Jacobians, Liouville's formula."""

import numpy as np
import pytest
from numba import njit
from scipy.integrate import solve_ivp

from nndyn_fast.expressivity import liouville_determinant
from nndyn_fast.kernels.activations import ACTIVATIONS, tanh_fast
from nndyn_fast.kernels.neural import CONTRACT
from nndyn_fast.neural import AugmentedNeuralODE, NeuralODE, flow_jacobian, flow_map


def _tanh_fast_array(fastmath):
    @njit(error_model="numpy", fastmath=fastmath)
    def run(x):
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = tanh_fast(x[i])
        return out

    return run


@pytest.mark.parametrize("fastmath", [False, CONTRACT])  # as compiled in the field kernels
def test_tanh_fast_matches_libm(fastmath):
    # the vectorisable tanh used by every kernel, against numpy's tanh over the whole range
    f = _tanh_fast_array(fastmath)
    x = np.concatenate([np.linspace(-25, 25, 200001), np.geomspace(1e-300, 0.3, 300), [1e300]])
    x = np.concatenate([x, -x])
    # a few ulps of relative error (degree-14 expm1 polynomial, one division): 2^-51 seen
    np.testing.assert_allclose(f(x), np.tanh(x), rtol=1e-15, atol=0)
    edge = f(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0]))
    assert np.isnan(edge[0]) and edge[1] == 1.0 and edge[2] == -1.0
    assert np.array_equal(np.signbit(edge[3:]), [False, True]) and not edge[3:].any()


def _fd_jacobian(fun, x, eps=1e-6):
    return np.stack([(fun(x + eps * e) - fun(x - eps * e)) / (2 * eps) for e in np.eye(x.size)], -1)


@pytest.mark.parametrize("form", ["outer", "inner"])
@pytest.mark.parametrize("activation", sorted(set(ACTIVATIONS) - {"relu"}))
def test_field_and_jacobian(form, activation):
    rng = np.random.default_rng(0)
    model = NeuralODE.random(4, 6, activation=activation, form=form, scale=1.5, seed=1)
    x = rng.standard_normal(4)
    # field against a direct numpy evaluation
    A, b = model.A[0], model.b[0]
    pre = A @ x + b
    sig = {
        "identity": lambda z: z,
        "tanh": np.tanh,
        "softplus": lambda z: np.log1p(np.exp(z)),
        "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
        "gelu": lambda z: z * 0.5 * (1 + np.vectorize(__import__("math").erf)(z / np.sqrt(2))),
    }[activation]
    expect = model.W[0] @ sig(pre) if form == "outer" else sig(pre)
    np.testing.assert_allclose(model(x), expect, rtol=1e-12, atol=1e-14)  # rounding
    J = model.jacobian(x)
    # central differences: error eps^2 |f'''| + rounding / eps
    np.testing.assert_allclose(J, _fd_jacobian(model, x), atol=1e-8)


@pytest.mark.parametrize("form,layers", [("outer", 1), ("outer", 3), ("inner", 2)])
def test_flow_jacobian_vs_finite_differences(form, layers):
    model = NeuralODE.random(3, 5, form=form, layers=layers, scale=2.0, seed=7)
    X = np.random.default_rng(2).standard_normal((3, 3))
    J, Y = flow_jacobian(model, X, rtol=1e-11, atol=1e-13, return_flow=True)
    np.testing.assert_allclose(Y, flow_map(model, X, rtol=1e-11, atol=1e-13), atol=1e-9)
    for i in range(3):
        fd = _fd_jacobian(lambda x: flow_map(model, x, rtol=1e-12, atol=1e-14), X[i], eps=1e-5)
        assert np.abs(J[i] - fd).max() < 1e-7  # FD: eps^2 + solver error / eps


def test_flow_map_vs_scipy():
    model = NeuralODE.random(3, 5, layers=2, scale=2.0, seed=4)
    x0 = np.array([0.1, -0.7, 0.3])
    ref = x0
    for k in range(2):
        a, b = model.t_layers[k], model.t_layers[k + 1]
        ref = solve_ivp(lambda s, x, m=0.5 * (a + b): model(x, m), (a, b), ref, method="DOP853",
                        rtol=1e-12, atol=1e-14).y[:, -1]  # fmt: skip
    assert np.abs(flow_map(model, x0) - ref).max() < 1e-7  # rtol 1e-8 default


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_liouville_determinant(seed):
    model = NeuralODE.random(3, 6, layers=2, scale=2.5, seed=seed)
    x0 = np.random.default_rng(seed).standard_normal(3)
    det, liouville = liouville_determinant(model, x0)
    assert det > 0 and liouville > 0
    # variational (rtol 1e-10) vs Simpson on 2001 points (h^4 error ~1e-13)
    assert abs(det - liouville) < 1e-7 * liouville


def test_one_dimensional_flow_is_increasing():
    X = np.linspace(-3, 3, 61)[:, None]
    for seed in range(3):
        model = NeuralODE.random(1, 8, layers=3, scale=3.0, seed=seed)
        Y = flow_map(model, X)[:, 0]
        assert np.all(np.diff(Y) > 0)  # x -> -x and x -> x^2 are out of reach
        assert np.all(flow_jacobian(model, X)[:, 0, 0] > 0)


def test_augmented_model():
    node = NeuralODE.random(3, 6, scale=2.0, seed=3)
    R = np.array([[1.0, -2.0, 0.5]])
    aug = AugmentedNeuralODE(node, 1, R)
    X = np.random.default_rng(5).standard_normal((4, 2))
    lifted = np.concatenate([X, np.zeros((4, 1))], axis=1)
    F = flow_map(aug, X)
    np.testing.assert_allclose(F, flow_map(node, lifted) @ R.T, atol=1e-13)  # same solve
    J = flow_jacobian(aug, X)
    assert J.shape == (4, 1, 2)
    for i in range(4):
        fd = _fd_jacobian(lambda x: flow_map(aug, x, rtol=1e-12, atol=1e-14), X[i], eps=1e-5)
        assert np.abs(J[i] - fd).max() < 1e-6  # FD: eps^2 + solver error / eps
    with pytest.raises(ValueError, match="n_aug must be"):
        AugmentedNeuralODE(node, 3)
    with pytest.raises(ValueError, match="X must have 2 columns"):
        flow_map(aug, np.ones((2, 3)))


def test_model_validation():
    with pytest.raises(ValueError, match="W must have shape"):
        NeuralODE(np.ones((3, 2)), np.ones((4, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="b must have shape"):
        NeuralODE(np.ones((3, 4)), np.ones((4, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="activation must be one of"):
        NeuralODE(np.ones((3, 4)), np.ones((4, 3)), np.zeros(4), "swish")
    with pytest.raises(ValueError, match="b must be finite"):
        NeuralODE(np.ones((3, 4)), np.ones((4, 3)), np.array([0.0, np.inf, 0.0, 0.0]))
    with pytest.raises(ValueError, match="t_layers must have shape"):
        NeuralODE(np.ones((2, 3, 4)), np.ones((2, 4, 3)), np.zeros((2, 4)), t_layers=[0, 1])
    with pytest.raises(TypeError, match="model must be"):
        flow_map(lambda x: x, np.ones(2))
