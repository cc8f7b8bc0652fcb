"""Reproduce the Lyapunov figures: the SGD stability diagram and the order-to-chaos sweep.

1. SGD at an interpolation minimum of a tanh MLP (the teacher's own parameters interpolate the
   targets it produces): the top Lyapunov exponent lambda(lr, B) of the linearised SGD product,
   its lambda = 0 line, the stricter mean-square line, and the full-batch GD threshold
   2/lambda_max. Saved to ``<out>/sgd_stability.h5`` and ``<out>/sgd_stability.png``.
2. Random tanh networks (sigma_b = 0): the top exponent per layer of the layer-to-layer Jacobian
   product against sigma_w for several depths, beside the mean-field prediction; it changes sign
   at sigma_w ~ 1 (vanishing vs exploding gradients). Saved to ``<out>/network_lyapunov.png``.
3. A tanh MLP trained briefly (full-batch GD) to separate two rings in the plane: the
   finite-time exponent (1/L) log sigma_1(d f / d x) of its input–output Jacobian over a grid
   of inputs, beside the decision boundary f = 0; the exponent's ridge follows the boundary.
   Saved to ``<out>/network_input_map.png``.

Usage: ``python scripts/sgd_stability.py --out figures [--quick]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nndyn_fast import (
    gd_threshold_at_minimum,
    network_lyapunov,
    plot_stability_diagram,
    random_network_lyapunov,
    sgd_stability_diagram,
)
from nndyn_fast.training import MLP, forward, gradient_descent, per_sample_gradients


def mean_field_exponent(sigma_w: float, sigma_b: float = 0.0) -> float:
    """(1/2) log(sigma_w^2 E[tanh'(sqrt(q*) z)^2]) at the fixed point q* (Gauss–Hermite)."""
    z, w = np.polynomial.hermite_e.hermegauss(101)
    w = w / w.sum()
    q = 1.0
    for _ in range(3000):
        q = sigma_w**2 * np.sum(w * np.tanh(np.sqrt(q) * z) ** 2) + sigma_b**2
    chi = sigma_w**2 * np.sum(w * (1.0 - np.tanh(np.sqrt(q) * z) ** 2) ** 2)
    return 0.5 * float(np.log(chi))


def sgd_figure(out: Path, quick: bool) -> None:
    mlp = MLP((2, 16, 16, 1), activation="tanh")
    theta = mlp.init(0)
    X = np.random.default_rng(1).standard_normal((40 if quick else 100, 2))
    G = per_sample_gradients(mlp, theta, X)
    lrs = np.geomspace(0.1, 4.0, 8 if quick else 16) * gd_threshold_at_minimum(G)
    diag = sgd_stability_diagram(
        G,
        lrs,
        [1, 2, 4, 8, 16] if quick else [1, 2, 4, 8, 16, 32, 64],
        steps=5000 if quick else 50_000,
        replicas=4,
        out=out / "sgd_stability.h5",
        overwrite=True,
    )
    plot_stability_diagram(diag, path=out / "sgd_stability.png")
    ok = diag.largest_stable_lr("lam") / diag.gd_threshold
    ms = diag.largest_stable_lr("ms") / diag.gd_threshold
    for i, B in enumerate(diag.batch_sizes):
        print(f"B = {B:3d}: a.s. stable to lr/gd = {ok[i]:.3f}, mean-square to {ms[i]:.3f}")


def network_figure(out: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = np.linspace(0.5, 2.5, 9 if quick else 21)
    depths = [10, 50] if quick else [10, 50, 200]
    width = 64 if quick else 200
    fig, ax = plt.subplots(figsize=(6, 4))
    for L in depths:
        lam = [
            random_network_lyapunov(width, L, s, networks=2, n_inputs=4, seed=3).exponents[0]
            for s in sigmas
        ]
        ax.plot(sigmas, lam, "o-", ms=3, label=f"depth {L}, width {width}")
    fine = np.linspace(sigmas[0], sigmas[-1], 200)
    ax.plot(fine, [mean_field_exponent(s) for s in fine], "k--", label="mean field")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.axvline(1.0, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("weight scale σ_w")
    ax.set_ylabel("top Lyapunov exponent per layer")
    ax.set_title("Random tanh networks: vanishing (λ<0) vs exploding (λ>0) gradients")
    ax.legend(fontsize=8)
    fig.savefig(out / "network_lyapunov.png", dpi=120, bbox_inches="tight")


def two_rings(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points on two noisy rings (radius 1: label -1, radius 2: label +1)."""
    rng = np.random.default_rng(seed)
    label = np.where(np.arange(n) % 2 == 0, -1.0, 1.0)
    radius = np.where(label < 0, 1.0, 2.0) + 0.15 * rng.standard_normal(n)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    X = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    return X, label[:, None]


def input_map_figure(out: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X, label = two_rings(100 if quick else 300)
    Y = np.column_stack([label, -label])  # two outputs: (+1, -1) for one class, (-1, +1) other
    mlp = MLP((2, 16, 16, 16, 2), activation="tanh")
    run = gradient_descent(mlp, mlp.init(0), X, Y, lr=0.05, steps=3000 if quick else 20_000)
    side = np.linspace(-3.0, 3.0, 80 if quick else 200)
    gx, gy = np.meshgrid(side, side)
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    res = network_lyapunov(mlp, grid, theta=run.theta)  # k = 2: the whole input plane
    lam = res.singular[:, 0].reshape(gx.shape)  # (1/L) log sigma_1 of d f / d x at each input
    f = forward(mlp, run.theta, grid)
    margin = (f[:, 0] - f[:, 1]).reshape(gx.shape)
    fX = forward(mlp, run.theta, X)
    accuracy = np.mean(np.sign(fX[:, 0] - fX[:, 1]) == label[:, 0])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    mesh = ax.pcolormesh(gx, gy, lam, cmap="magma", shading="auto")
    fig.colorbar(mesh, ax=ax, label="finite-time exponent (1/L) log σ₁(∂f/∂x)")
    ax.contour(gx, gy, margin, levels=[0.0], colors="c", linewidths=1.2)
    ax.scatter(*X[label[:, 0] < 0].T, s=6, c="w", label="class −1")
    ax.scatter(*X[label[:, 0] > 0].T, s=6, c="tab:blue", label="class +1")
    ax.set_aspect("equal")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    ax.set_title("Input–output Jacobian exponent; decision boundary (cyan)")
    ax.legend(loc="upper right", fontsize=7)
    fig.savefig(out / "network_input_map.png", dpi=120, bbox_inches="tight")
    print(f"two rings: training accuracy {accuracy:.3f}, final loss {run.loss[-1]:.4g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="figures", help="output folder")
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sgd_figure(out, args.quick)
    network_figure(out, args.quick)
    input_map_figure(out, args.quick)
    print(f"figures written to {out}/")


if __name__ == "__main__":
    main()
