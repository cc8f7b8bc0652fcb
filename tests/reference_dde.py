"""Naive references for the delay integrators: exact method-of-steps polynomials and a pure
numpy/Python RK4 with cubic Hermite history (also the benchmark baseline)."""

from __future__ import annotations

import numpy as np
from numpy.polynomial import Polynomial


def minus_delay_exact(t: np.ndarray, n_pieces: int = 12) -> np.ndarray:
    """x'(t) = -x(t - 1), x = 1 on [-1, 0]: the method-of-steps polynomial pieces
    p_{k+1}(t) = p_k(k) - int_k^t p_k(s - 1) ds on [k, k + 1] (1 - t, 1 - t + (t-1)^2/2, ...)."""
    pieces = [Polynomial([1.0])]  # on [-1, 0]
    shift = Polynomial([-1.0, 1.0])
    for k in range(n_pieces):
        prev = pieces[-1]
        Q = prev(shift).integ()
        pieces.append(prev(k) - (Q - Q(k)))
    out = np.empty(len(t))
    for i, s in enumerate(t):
        k = max(int(np.ceil(s)), 0)  # s in (k - 1, k] -> piece k (piece 0 is the history)
        out[i] = pieces[k](s)
    return out


def hermite(ta, ya, fa, tb, yb, fb, s):
    h = tb - ta
    th = (s - ta) / h
    h00 = (1 + 2 * th) * (1 - th) ** 2
    h10 = th * (1 - th) ** 2
    h01 = th**2 * (3 - 2 * th)
    h11 = th**2 * (th - 1)
    return h00 * ya + h10 * h * fa + h01 * yb + h11 * h * fb


def naive_rk4(f, history, t0, t_end, dt, taus):
    """Fixed-step RK4 for x' = f(t, x, xd, tl) (xd (m, d)) with the history a function of
    time; ``tl`` is the time that picks a layer of a time-dependent field (the step midpoint,
    so each step sees one layer). Delayed values by cubic Hermite interpolation of the stored
    steps with the left and right derivative at each node. Needs every delay >= dt."""
    n = int(round((t_end - t0) / dt))
    ts = t0 + dt * np.arange(n + 1)
    x0 = np.asarray(history(t0), dtype=float)
    ys = np.empty((n + 1, x0.size))
    fl = np.empty((n + 1, x0.size))
    fr = np.empty((n + 1, x0.size))
    ys[0] = x0
    taus = np.asarray(taus, dtype=float)

    def delayed(s, k):
        out = np.empty((taus.size, x0.size))
        for q, tau in enumerate(taus):
            u = s - tau
            if u <= t0:
                out[q] = history(u)
            else:
                i = min(int(np.searchsorted(ts[: k + 1], u)) - 1, k - 1)
                out[q] = hermite(ts[i], ys[i], fr[i], ts[i + 1], ys[i + 1], fl[i + 1], u)
        return out

    fr[0] = f(t0, ys[0], delayed(t0, 0), t0 + dt / 2)
    for k in range(n):
        t, y, h = ts[k], ys[k], dt
        tl = t + h / 2
        k1 = fr[k]
        k2 = f(t + h / 2, y + h / 2 * k1, delayed(t + h / 2, k), tl)
        k3 = f(t + h / 2, y + h / 2 * k2, delayed(t + h / 2, k), tl)
        k4 = f(t + h, y + h * k3, delayed(t + h, k), tl)
        ys[k + 1] = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        fl[k + 1] = f(t + h, ys[k + 1], delayed(t + h, k + 1), tl)
        fr[k + 1] = f(t + h, ys[k + 1], delayed(t + h, k + 1), tl + h)
    return ts, ys


def mackey_glass_rhs(beta=0.2, gamma=0.1, n=10.0):
    def f(t, x, xd, tl=None):
        v = xd[0]
        return beta * v / (1.0 + v**n) - gamma * x

    return f


def neural_dde_rhs(W, A, B, b, act=np.tanh, t_layers=None):
    """x' = W_l act(A_l x + sum_k B_lk xd_k + b_l) with stacks W (L, d, H), A (L, H, d),
    B (L, m, H, d), b (L, H)."""

    def f(t, x, xd, tl=None):
        tl = t if tl is None else tl
        L = W.shape[0]
        lay = 0
        if t_layers is not None:
            while lay < L - 1 and t_layers[lay + 1] <= tl:
                lay += 1
        z = A[lay] @ x + b[lay] + sum(B[lay, k] @ xd[k] for k in range(B.shape[1]))
        return W[lay] @ act(z)

    return f
