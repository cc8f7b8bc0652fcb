"""Naive numpy references for the ODE integrators (vectorised over the batch)."""

import numpy as np


def tanh_field(X, W, b):
    """f(x) = tanh(W x + b) for a batch X (B, d): one matrix product."""
    return np.tanh(X @ W.T + b)


def rk4_numpy(f, X0, t0, t1, n_steps, *args):
    """Classic RK4 with a numpy field f(X, *args) on a batch; n_steps equal steps."""
    h = (t1 - t0) / n_steps
    X = np.array(X0, dtype=float)
    for _ in range(n_steps):
        k1 = f(X, *args)
        k2 = f(X + 0.5 * h * k1, *args)
        k3 = f(X + 0.5 * h * k2, *args)
        k4 = f(X + h * k3, *args)
        X = X + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return X
