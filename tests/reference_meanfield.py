"""Naive numpy references for the network kernels (same argument order as the kernels)."""

import numpy as np


def naive_phase_rhs(theta, omega, W, K, alpha):
    """dθ_i/dt = ω_i + (K/N) Σ_j W_ij sin(θ_j − θ_i − α), evaluated term by term."""
    n = theta.size
    diff = theta[None, :] - theta[:, None] - alpha
    return omega + K / n * (W.astype(np.float64) * np.sin(diff)).sum(axis=1)


def naive_rate_rhs(x, I, W, K, sigma):
    """dx_i/dt = −x_i + (K/N) Σ_j W_ij σ(x_j) + I_i."""
    return -x + K / x.size * W.astype(np.float64) @ sigma(x) + I


def naive_rk4(f, y0, dt, steps):
    """Classic RK4 with a Python loop."""
    y = y0.copy()
    for _ in range(steps):
        k1 = f(y)
        k2 = f(y + 0.5 * dt * k1)
        k3 = f(y + 0.5 * dt * k2)
        k4 = f(y + dt * k3)
        y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y
