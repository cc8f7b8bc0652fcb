"""Naive numpy references for the Lyapunov kernels (one Python iteration per step).

They follow the textbook algorithms directly, forming every matrix explicitly, and serve as the
baselines of bench/bench_lyapunov.py and as cross-checks in the tests.
"""

import numpy as np


def lorenz_rhs(x, p):
    s, r, b = p
    return np.array([s * (x[1] - x[0]), x[0] * (r - x[2]) - x[1], x[0] * x[1] - b * x[2]])


def lorenz_jac(x, p):
    s, r, b = p
    return np.array([[-s, s, 0.0], [r - x[2], -1.0, -x[0]], [x[1], x[0], -b]])


def naive_benettin_lorenz(x0, V0, dt, n_steps, p=(10.0, 28.0, 8.0 / 3.0)):
    """Benettin with RK4 on state + tangent (columns Q), numpy QR every step.

    Returns (exponents, final x)."""
    x = np.array(x0, dtype=float)
    Q = np.array(V0, dtype=float).T.copy()  # (d, k) columns
    logsum = np.zeros(Q.shape[1])

    def F(x, Q):
        return lorenz_rhs(x, p), lorenz_jac(x, p) @ Q

    for _ in range(n_steps):
        k1x, k1Q = F(x, Q)
        k2x, k2Q = F(x + 0.5 * dt * k1x, Q + 0.5 * dt * k1Q)
        k3x, k3Q = F(x + 0.5 * dt * k2x, Q + 0.5 * dt * k2Q)
        k4x, k4Q = F(x + dt * k3x, Q + dt * k3Q)
        x = x + dt / 6.0 * (k1x + 2 * k2x + 2 * k3x + k4x)
        Q = Q + dt / 6.0 * (k1Q + 2 * k2Q + 2 * k3Q + k4Q)
        Q, R = np.linalg.qr(Q)
        logsum += np.log(np.abs(np.diag(R)))
    return logsum / (n_steps * dt), x


def naive_sgd_qr(G, lr, idx, V0):
    """SGD product on R^d with the d x d factor formed each step and a numpy QR.

    G (n, d); idx (T, B) batch indices; V0 (k, d) orthonormal rows. Returns the exponents."""
    d = G.shape[1]
    Q = np.array(V0, dtype=float).T.copy()
    logsum = np.zeros(Q.shape[1])
    eye = np.eye(d)
    T, B = idx.shape
    for t in range(T):
        Gb = G[idx[t]]
        M = eye - (lr / B) * (Gb.T @ Gb)
        Q, R = np.linalg.qr(M @ Q)
        logsum += np.log(np.abs(np.diag(R)))
    return logsum / T


def mean_field_top_exponent(sigma_w, sigma_b=0.0, n_nodes=101, iters=2000):
    """Mean-field (infinite width) top exponent per layer of a random tanh network:
    (1/2) log(sigma_w^2 E[tanh'(sqrt(q*) z)^2]), q* the fixed point of
    q = sigma_w^2 E[tanh(sqrt(q) z)^2] + sigma_b^2 (Gauss–Hermite quadrature)."""
    z, w = np.polynomial.hermite_e.hermegauss(n_nodes)
    w = w / w.sum()
    q = 1.0
    for _ in range(iters):
        q = sigma_w**2 * np.sum(w * np.tanh(np.sqrt(q) * z) ** 2) + sigma_b**2
    chi = sigma_w**2 * np.sum(w * (1.0 - np.tanh(np.sqrt(q) * z) ** 2) ** 2)
    return 0.5 * np.log(chi), q
