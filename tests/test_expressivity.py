"""Expressivity: universal embedding, augmented MLPs, critical points of MLPs and neural ODEs."""

import numpy as np
import pytest

from nndyn_fast.expressivity import (
    FeedForward,
    ShearEmbedding,
    classify,
    critical_points,
    mlp_as_augmented_ode,
)
from nndyn_fast.neural import NeuralODE, flow_map


@pytest.mark.parametrize("psi,d,q", [("square", 1, 1), ("sine", 1, 1), ("negate", 2, 3)])
def test_shear_embedding_reproduces_map(psi, d, q):
    emb = ShearEmbedding(psi, d, q)
    X = np.random.default_rng(0).uniform(-2, 2, (9, d))
    # the flow is (u, v + t Psi(u)): exact up to rounding for every RK method
    np.testing.assert_allclose(emb(X), emb.target(X), atol=1e-12)
    np.testing.assert_allclose(emb(X, method="euler"), emb.target(X), atol=1e-12)


def test_mlp_is_an_augmented_neural_ode():
    rng = np.random.default_rng(1)
    W2, A, b = rng.standard_normal((1, 6)), rng.standard_normal((6, 2)), rng.standard_normal(6)
    aug = mlp_as_augmented_ode(W2, A, b, "tanh")
    mlp = FeedForward([A, W2], [b, np.zeros(1)], "tanh")
    X = rng.standard_normal((5, 2))
    np.testing.assert_allclose(flow_map(aug, X), mlp(X), atol=1e-12)  # exact shear flow


def test_feedforward_derivatives_vs_finite_differences():
    mlp = FeedForward.random([2, 5, 4, 1], "softplus", scale=1.5, seed=2)
    x = np.array([0.3, -0.8])
    F, J, H = mlp.value_grad_hess(x)
    np.testing.assert_allclose(F, mlp(x[None])[0], atol=1e-13)
    eps = 1e-5
    fd_g = np.array([(mlp(x + eps * e) - mlp(x - eps * e))[0] / (2 * eps) for e in np.eye(2)])
    fd_h = np.stack(
        [(mlp.value_grad_hess(x + eps * e)[1] - mlp.value_grad_hess(x - eps * e)[1])[0]
         / (2 * eps) for e in np.eye(2)]
    )  # fmt: skip
    np.testing.assert_allclose(J[0], fd_g, atol=1e-8)  # FD error eps^2
    np.testing.assert_allclose(H[0], fd_h, atol=1e-8)


BOX = [[-3.0, 3.0], [-3.0, 3.0]]


def test_wide_mlp_has_morse_critical_points():
    mlp = FeedForward.random([2, 16, 1], scale=2.0, seed=1)
    rep = critical_points(mlp, BOX, n_starts=24)
    assert len(rep["points"]) >= 1
    for p, ev in zip(rep["points"], rep["eigenvalues"], strict=True):
        _, J, H = mlp.value_grad_hess(p)
        assert np.linalg.norm(J) < 1e-8  # a genuine critical point
        np.testing.assert_allclose(np.linalg.eigvalsh(H[0]), ev, atol=1e-10)
    assert not rep["degenerate"].any()  # Morse for a generic draw


def test_narrow_mlp_and_neural_ode_have_none():
    narrow = FeedForward.random([2, 2, 1], scale=2.0, seed=1)
    assert len(critical_points(narrow, BOX, n_starts=16)["points"]) == 0
    node = NeuralODE.random(2, 4, scale=2.0, seed=3)
    rep = critical_points(node, BOX, n_starts=3)
    assert len(rep["points"]) == 0 and rep["min_grad_norm"] > 1e-3
    res = classify({"wide": FeedForward.random([2, 16, 1], scale=2.0, seed=1),
                    "narrow": narrow}, BOX, n_starts=8)  # fmt: skip
    assert res[0]["theory"].startswith("possible") and res[1]["theory"].startswith("none")
    assert res[1]["n_critical"] == 0
