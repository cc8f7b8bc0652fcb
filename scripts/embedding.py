"""Expressivity of neural ODEs: what a non-augmented flow cannot do, and the shear embedding.

Left: target maps x² and sin(πx) on [-2, 2], reproduced exactly by the augmented shear flow
(u, v)' = (0, Ψ(u)) from (x, 0) to t = 1, against the best non-augmented 1-D neural ODE fitted
to x² (its flow map is increasing, so the fit stays poor). Right: the flow map's derivative of
the fitted 1-D model, positive everywhere. Prints the critical-point verdicts of a 2-16-1 and a
2-2-1 MLP and of a non-augmented neural ODE. Usage: python scripts/embedding.py [out.png]
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from nndyn_fast import (  # noqa: E402
    FeedForward,
    NeuralODE,
    ShearEmbedding,
    classify,
    flow_jacobian,
    flow_map,
)


def fit_1d(x, y, hidden=8, seed=0):
    """Least-squares fit of a 1-D neural ODE f(x) = W tanh(A x + b) to (x, y)."""
    rng = np.random.default_rng(seed)
    p0 = 0.5 * rng.standard_normal(3 * hidden)

    def model(p):
        return NeuralODE(p[:hidden].reshape(1, hidden), p[hidden : 2 * hidden].reshape(hidden, 1),
                         p[2 * hidden :], "tanh")  # fmt: skip

    def loss(p):
        return float(np.mean((flow_map(model(p), x[:, None], rtol=1e-6, atol=1e-8)[:, 0] - y) ** 2))

    res = minimize(loss, p0, method="L-BFGS-B", options={"maxiter": 200})
    return model(res.x), res.fun


def main(out="embedding.png"):
    x = np.linspace(-2, 2, 201)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for psi in ("square", "sine"):
        emb = ShearEmbedding(psi)
        y = emb(x[:, None])[:, 0]
        err = np.abs(y - emb.target(x[:, None])[:, 0]).max()
        print(f"shear embedding of {psi}: max error {err:.2e}")
        ax[0].plot(x, y, label=f"augmented shear flow, Ψ = {psi}")
    best, mse = fit_1d(x, x**2)
    yb = flow_map(best, x[:, None])[:, 0]
    ax[0].plot(x, yb, "k--", label=f"best 1-D neural ODE for x² (mse {mse:.2f})")
    ax[0].legend(fontsize=8)
    ax[0].set_xlabel("x")
    slope = flow_jacobian(best, x[:, None])[:, 0, 0]
    print(f"1-D fit: min dΦ/dx = {slope.min():.3e} (> 0: the flow map is increasing)")
    ax[1].plot(x, slope)
    ax[1].set_xlabel("x")
    ax[1].set_ylabel("dΦ_T/dx of the 1-D fit")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    box = [[-3, 3], [-3, 3]]
    models = {
        "MLP 2-16-1": FeedForward.random([2, 16, 1], scale=2.0, seed=1),
        "MLP 2-2-1": FeedForward.random([2, 2, 1], scale=2.0, seed=1),
        "neural ODE, d = 2": NeuralODE.random(2, 4, scale=2.0, seed=3),
    }
    for r in classify(models, box, n_starts=8):
        print(f"{r['name']:>18}: theory {r['theory']}; found {r['n_critical']} "
              f"(Morse: {r['morse']}, indices {r['indices']})")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
