"""Neural-DDE gradients (nndyn_fast.dde_gradients) against central differences of ddeint."""

import numpy as np
import pytest

from nndyn_fast.dde_gradients import dde_flow_vjp, dde_loss_and_grad
from nndyn_fast.delay import NeuralDDE, ddeint

T, DT, TAUS = 2.0, 0.1, [0.3, 0.5]


def _model(**kw):
    rng = np.random.default_rng(0)
    L, d, H, m = 2, 2, 3, 2
    p = {
        "W": rng.standard_normal((L, d, H)) * 0.7,
        "A": rng.standard_normal((L, H, d)) * 0.7,
        "B": rng.standard_normal((L, m, H, d)) * 0.7,
        "b": 0.1 * rng.standard_normal((L, H)),
    }
    p.update(kw)
    return NeuralDDE(p["W"], p["A"], p["B"], p["b"], "tanh", T=T), p


def _F(model, X, t_end=T):
    return ddeint(model, X, np.array([0.0, t_end]), delays=TAUS, method="rk4", dt=DT).y[-1]


def test_neural_dde_gradients_match_central_differences_of_ddeint():
    # two layers (a switch at t = 1), two delays on the grid: the RK4 method of steps with
    # Hermite-interpolated delayed values, differentiated through the interpolation
    model, P = _model()
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3, 2))
    C = rng.standard_normal((3, 2))
    g = dde_flow_vjp(model, X, T, C, delays=TAUS, dt=DT)
    # the same discrete map as ddeint (rounding: the order of the sums)
    np.testing.assert_allclose(g.y, _F(model, X), atol=1e-13, rtol=0)
    eps = 1e-6  # central differences: truncation ~1e-12, rounding ~1e-10

    def central(fun, v):
        out = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            vp, vm = v.copy(), v.copy()
            vp[idx] += eps
            vm[idx] -= eps
            out[idx] = (fun(vp) - fun(vm)) / (2 * eps)
        return out

    for k, v in P.items():
        num = central(lambda p, k=k: np.sum(C * _F(_model(**{k: p})[0], X)), v)
        np.testing.assert_allclose(g.params[k], num, atol=1e-6, rtol=0, err_msg=k)
    num = central(lambda x: np.sum(C * _F(model, x)), X)
    np.testing.assert_allclose(g.X, num, atol=1e-6, rtol=0)
    # T: the field at the end; central differences of ddeint's map around a grid point
    # differ from it by the method's error O(dt^4) ~ 1e-4
    dT = (np.sum(C * _F(model, X, T + 1e-6)) - np.sum(C * _F(model, X, T - 1e-6))) / 2e-6
    assert abs(g.T - dT) < 1e-3


def test_dde_loss_and_bad_input():
    model, _ = _model()
    X = np.ones((2, 2))
    loss, g = dde_loss_and_grad(model, X, np.zeros((2, 2)), T, delays=TAUS, dt=DT)
    assert abs(loss - 0.5 * np.sum(_F(model, X) ** 2) / 2) < 1e-13
    with pytest.raises(ValueError, match="multiple of dt"):
        dde_flow_vjp(model, X, T, X, delays=[0.33, 0.5], dt=DT)
    with pytest.raises(ValueError, match="cotangent"):
        dde_flow_vjp(model, X, T, np.ones(3), delays=TAUS, dt=DT)
    with pytest.raises(ValueError, match="delays"):
        dde_flow_vjp(model, X, T, X, delays=[0.3], dt=DT)


def test_memory_capacity_fit_below_and_above_the_threshold():
    from nndyn_fast.memory_capacity import memory_capacity_experiment

    # K tau = 0.2 < 1/e: the fitted 1-D time-T map is monotone (the theorem), so x^2 stays
    # badly fitted; K tau = 2 allows an interior extremum and a much better fit
    r = memory_capacity_experiment([0.2, 2.0], dims=(1,), starts=1, steps=60, n_points=11)
    lo, hi = r["fits"][0]
    assert lo["monotone"] and lo["K_tau"] <= 0.2 + 1e-12
    assert not hi["monotone"]
    assert hi["rmse"] < 0.5 * lo["rmse"]


def test_dde_memory_command_with_exact_gradients(capsys):
    from nndyn_fast.cli import main

    args = ["dde", "memory", "--fitter", "grad", "--dims", "1", "--kappas", "0.2", "--starts",
            "1"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "dim 1, K tau = 0.2 (below the threshold)" in text and "monotone" in text
