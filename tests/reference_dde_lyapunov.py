"""Naive numpy reference of the DDE Lyapunov method (kernels/dde_lyapunov.py), in the kernel's
argument order: RK4 on the grid t0 + n dt, delays tau_j = N_j dt, delayed values at half steps
by cubic Lagrange interpolation of four grid nodes, tangent segments pushed through the same
stages with the Jacobians, modified Gram-Schmidt in the segment inner product (weights by
position from the oldest node). Python loop over steps, numpy over tangent vectors. The state
is kept oldest node first (shifted each step) instead of in a ring."""

from __future__ import annotations

import numpy as np


def reference_dde_lyap_advance(f, jac, X, V, Nj, mid_off, mid_w, wq, t0, n0, dt, n_steps,
                               reorth, logsum):  # fmt: skip
    """Advance ``X`` (R, d) (oldest first) and ``V`` (k, R, d) by ``n_steps`` steps from step
    ``n0``; ``f(t, x, xd) -> (d,)``, ``jac(t, x, xd) -> (m + 1, d, d)``. Adds log norms to
    ``logsum`` (k,) every ``reorth`` steps and at the end. Returns the new step index."""
    R = X.shape[0]
    last = R - 1  # position of the current node
    n = n0
    since = 0
    for _ in range(n_steps):
        t = t0 + n * dt
        lag0 = last - Nj
        lag1 = last + 1 - Nj
        # the four interpolation nodes of each delay at the half step
        idx = (last + mid_off)[:, None] + np.arange(4)[None]

        def mid(S, idx=idx):
            # S (..., R, d) -> (..., m, d)
            return np.einsum("jq,...jqd->...jd", mid_w, S[..., idx, :])

        xn = X[last]
        xd0, xdm = X[lag0], mid(X)
        xd1 = X[lag1]
        Y1 = xn
        K1 = f(t, Y1, xd0)
        J1 = jac(t, Y1, xd0)
        Y2 = xn + 0.5 * dt * K1
        K2 = f(t + 0.5 * dt, Y2, xdm)
        J2 = jac(t + 0.5 * dt, Y2, xdm)
        Y3 = xn + 0.5 * dt * K2
        K3 = f(t + 0.5 * dt, Y3, xdm)
        J3 = jac(t + 0.5 * dt, Y3, xdm)
        Y4 = xn + dt * K3
        K4 = f(t + dt, Y4, xd1)
        J4 = jac(t + dt, Y4, xd1)
        xnew = xn + dt / 6.0 * (K1 + 2.0 * K2 + 2.0 * K3 + K4)

        def lin(J, v, vd):
            return v @ J[0].T + np.einsum("jic,kjc->ki", J[1:], vd)

        vn = V[:, last]
        vd0, vdm, vd1 = V[:, lag0], mid(V), V[:, lag1]
        dK1 = lin(J1, vn, vd0)
        dK2 = lin(J2, vn + 0.5 * dt * dK1, vdm)
        dK3 = lin(J3, vn + 0.5 * dt * dK2, vdm)
        dK4 = lin(J4, vn + dt * dK3, vd1)
        vnew = vn + dt / 6.0 * (dK1 + 2.0 * dK2 + 2.0 * dK3 + dK4)
        X[:-1] = X[1:].copy()
        X[-1] = xnew
        V[:, :-1] = V[:, 1:].copy()
        V[:, -1] = vnew
        n += 1
        since += 1
        if since == reorth:
            since = 0
            _mgs(V, wq, logsum)
    if since > 0:
        _mgs(V, wq, logsum)
    return n


def _mgs(V, wq, logsum):
    k = V.shape[0]
    for a in range(k):
        for c in range(a):
            V[a] -= np.einsum("p,pd,pd->", wq, V[a], V[c]) * V[c]
        nrm = np.sqrt(np.einsum("p,pd,pd->", wq, V[a], V[a]))
        logsum[a] += np.log(nrm)
        V[a] /= nrm
