"""Discrete adjoint of fixed-step RK4 for the neural delay field (method of steps).

Field ``f_l(x, D) = W_l σ(A_l x + sum_k B_lk D_k + b_l)``, delays ``tau_k = N_k h`` on the
step grid ``t_j = t0 + j h``, constant history ``x0`` on ``t <= t0``. The discrete map is that
of the package's RK4 method of steps (:mod:`nndyn_fast.kernels.dde`): nodes ``y_j`` with
left/right derivatives ``Fl_j``/``Fr_j`` (they differ where the layer switches), step j in
layer ``l_j`` (the layer at its midpoint):

    K1 = Fr_j,  K2 = f(y_j + h/2 K1, M),  K3 = f(y_j + h/2 K2, M),  K4 = f(y_j + h K3, E),
    y_{j+1} = y_j + h/6 (K1 + 2 K2 + 2 K3 + K4),  Fl_{j+1} = f_{l_j}(y_{j+1}, E),
    Fr_{j+1} = f_{l_{j+1}}(y_{j+1}, E) (= Fl_{j+1} without a switch),  Fr_0 = f(x0, x0),

with the delayed values ``E_k = y_{j+1-N_k}`` (node) and ``M_k`` the cubic Hermite midpoint of
the interval starting at node ``i = j - N_k``: ``(y_i + y_{i+1})/2 + h/8 (Fr_i - Fl_{i+1})``;
both are ``x0`` in the history. The reverse sweep runs the steps backwards with the adjoints
of every node (``ybar``, ``Flbar``, ``Frbar``): a delayed value passes its adjoint to the
nodes it was interpolated from, which the sweep reaches later. The nodes are stored (memory
``3 (n + 1) d`` per row; the stages are recomputed).
"""

import numpy as np
from numba import njit, prange

from .activations import TANH, act, dact
from .control import CONTRACT


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _f(model, l, x, D, P, S, out):
    W, A, B, b, code = model
    L, d, H = W.shape
    m = B.shape[1]
    for j in range(H):
        acc = b[l, j]
        for i in range(d):
            acc += A[l, j, i] * x[i]
        for k in range(m):
            for i in range(d):
                acc += B[l, k, j, i] * D[k, i]
        P[j] = acc
        S[j] = act(code, acc)
    for i in range(d):
        acc = 0.0
        for j in range(H):
            acc += W[l, i, j] * S[j]
        out[i] = acc


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _f_vjp(model, l, x, D, P, S, kbar, xbar, Dbar, pbar, gW, gA, gB, gb, w):
    # xbar += Df_x^T kbar, Dbar += Df_D^T kbar, parameter gradients into the worker slot w
    W, A, B, b, code = model
    L, d, H = W.shape
    m = B.shape[1]
    for j in range(H):
        acc = 0.0
        for i in range(d):
            acc += W[l, i, j] * kbar[i]
            gW[w, l, i, j] += kbar[i] * S[j]
        if code == TANH:
            pbar[j] = acc * (1.0 - S[j] * S[j])
        else:
            pbar[j] = acc * dact(code, P[j])
    for j in range(H):
        c = pbar[j]
        gb[w, l, j] += c
        for i in range(d):
            gA[w, l, j, i] += c * x[i]
            xbar[i] += c * A[l, j, i]
        for k in range(m):
            for i in range(d):
                gB[w, l, k, j, i] += c * D[k, i]
                Dbar[k, i] += c * B[l, k, j, i]


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _delayed(Y, Fr, Fl, x0, j, N, h, E, M):
    # E_k = node y_{j+1-N_k}, M_k = Hermite midpoint of the interval from node j - N_k
    m, d = E.shape
    for k in range(m):
        a = j + 1 - N[k]
        for i in range(d):
            E[k, i] = Y[a, i] if a >= 0 else x0[i]
        a = j - N[k]
        for i in range(d):
            if a >= 0:
                M[k, i] = 0.5 * (Y[a, i] + Y[a + 1, i]) + 0.125 * h * (Fr[a, i] - Fl[a + 1, i])
            else:
                M[k, i] = x0[i]


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _stages(model, l, h, Y, Fr, j, E, M, X2, X3, X4, K2, K3, K4, PS):
    d = Y.shape[1]
    for i in range(d):
        X2[i] = Y[j, i] + 0.5 * h * Fr[j, i]
    _f(model, l, X2, M, PS[0], PS[1], K2)
    for i in range(d):
        X3[i] = Y[j, i] + 0.5 * h * K2[i]
    _f(model, l, X3, M, PS[2], PS[3], K3)
    for i in range(d):
        X4[i] = Y[j, i] + h * K3[i]
    _f(model, l, X4, E, PS[4], PS[5], K4)


@njit(cache=True, parallel=True, error_model="numpy", fastmath=CONTRACT)
def dde_rk4_vjp(model, X0, C, N, h, ls, jump, nw, Y, Fr, Fl, gW, gA, gB, gb, ZT, FT, dX0):
    """Forward RK4 method of steps for every row of ``X0`` (B, d) (``ls.shape[0]`` steps of
    size ``h``, step j in layer ``ls[j]``, ``jump[j]``: the layer switches at node j), then,
    when ``C`` (B, d) is not empty, the reverse sweep for the cotangents ``C`` of the end
    states. ``N`` (m,) delays in steps (>= 1). Scratch per worker: ``Y``/``Fr``/``Fl``
    (nw, n + 1, d). Outputs: ``ZT`` end states, ``FT`` the left derivative there, ``dX0``
    input gradients (history and start), ``gW``/``gA``/``gB``/``gb`` parameter gradients
    (summed over the ``nw`` worker slots in order). Returns 0.
    """
    W, A, B, b, code = model
    L, d, H = W.shape
    m = B.shape[1]
    Bn = X0.shape[0]
    n = ls.shape[0]
    rev = C.shape[0] > 0
    aW = np.zeros((nw, L, d, H))
    aA = np.zeros((nw, L, H, d))
    aB = np.zeros((nw, L, m, H, d))
    ab = np.zeros((nw, L, H))
    for w in prange(nw):
        Yw, Frw, Flw = Y[w], Fr[w], Fl[w]
        E = np.empty((m, d))
        M = np.empty((m, d))
        Eb = np.empty((m, d))
        Mb = np.empty((m, d))
        X2, X3, X4 = np.empty(d), np.empty(d), np.empty(d)
        K2, K3, K4 = np.empty(d), np.empty(d), np.empty(d)
        b2, b3, b4 = np.empty(d), np.empty(d), np.empty(d)
        k1, k2, k3, k4 = np.empty(d), np.empty(d), np.empty(d), np.empty(d)
        PS = np.empty((8, H))
        pbar = np.empty(H)
        yb = np.empty((n + 1, d))
        frb = np.empty((n + 1, d))
        flb = np.empty((n + 1, d))
        x0b = np.empty(d)
        H0 = np.empty((m, d))
        for r in range(w, Bn, nw):
            x0 = X0[r]
            for i in range(d):
                Yw[0, i] = x0[i]
            for k in range(m):
                for i in range(d):
                    H0[k, i] = x0[i]
            _f(model, ls[0], x0, H0, PS[6], PS[7], Frw[0])
            for i in range(d):
                Flw[0, i] = Frw[0, i]
            for j in range(n):
                l = ls[j]
                _delayed(Yw, Frw, Flw, x0, j, N, h, E, M)
                _stages(model, l, h, Yw, Frw, j, E, M, X2, X3, X4, K2, K3, K4, PS)
                for i in range(d):
                    Yw[j + 1, i] = Yw[j, i] + (h / 6.0) * (
                        Frw[j, i] + 2.0 * K2[i] + 2.0 * K3[i] + K4[i]
                    )
                _f(model, l, Yw[j + 1], E, PS[6], PS[7], Flw[j + 1])
                if j + 1 < n and jump[j + 1]:
                    _f(model, ls[j + 1], Yw[j + 1], E, PS[6], PS[7], Frw[j + 1])
                else:
                    for i in range(d):
                        Frw[j + 1, i] = Flw[j + 1, i]
            for i in range(d):
                ZT[r, i] = Yw[n, i]
                FT[r, i] = Flw[n, i]
            if not rev:
                continue
            yb[:, :] = 0.0
            frb[:, :] = 0.0
            flb[:, :] = 0.0
            x0b[:] = 0.0
            for i in range(d):
                yb[n, i] = C[r, i]
            for j in range(n - 1, -1, -1):
                l = ls[j]
                _delayed(Yw, Frw, Flw, x0, j, N, h, E, M)
                Eb[:, :] = 0.0
                Mb[:, :] = 0.0
                if j + 1 < n and jump[j + 1]:
                    _f(model, ls[j + 1], Yw[j + 1], E, PS[6], PS[7], K4)
                    _f_vjp(model, ls[j + 1], Yw[j + 1], E, PS[6], PS[7], frb[j + 1], yb[j + 1],
                           Eb, pbar, aW, aA, aB, ab, w)  # fmt: skip
                else:
                    for i in range(d):
                        flb[j + 1, i] += frb[j + 1, i]
                _f(model, l, Yw[j + 1], E, PS[6], PS[7], K4)
                _f_vjp(model, l, Yw[j + 1], E, PS[6], PS[7], flb[j + 1], yb[j + 1], Eb, pbar,
                       aW, aA, aB, ab, w)  # fmt: skip
                _stages(model, l, h, Yw, Frw, j, E, M, X2, X3, X4, K2, K3, K4, PS)
                for i in range(d):
                    lam = yb[j + 1, i]
                    yb[j, i] += lam
                    k1[i] = (h / 6.0) * lam
                    k2[i] = (h / 3.0) * lam
                    k3[i] = (h / 3.0) * lam
                    k4[i] = (h / 6.0) * lam
                    b4[i] = 0.0
                    b3[i] = 0.0
                    b2[i] = 0.0
                _f_vjp(model, l, X4, E, PS[4], PS[5], k4, b4, Eb, pbar, aW, aA, aB, ab, w)
                for i in range(d):
                    yb[j, i] += b4[i]
                    k3[i] += h * b4[i]
                _f_vjp(model, l, X3, M, PS[2], PS[3], k3, b3, Mb, pbar, aW, aA, aB, ab, w)
                for i in range(d):
                    yb[j, i] += b3[i]
                    k2[i] += 0.5 * h * b3[i]
                _f_vjp(model, l, X2, M, PS[0], PS[1], k2, b2, Mb, pbar, aW, aA, aB, ab, w)
                for i in range(d):
                    yb[j, i] += b2[i]
                    k1[i] += 0.5 * h * b2[i]
                    frb[j, i] += k1[i]
                # the delayed values hand their adjoints to the nodes they came from
                for k in range(m):
                    a = j + 1 - N[k]
                    for i in range(d):
                        if a >= 0:
                            yb[a, i] += Eb[k, i]
                        else:
                            x0b[i] += Eb[k, i]
                    a = j - N[k]
                    for i in range(d):
                        if a >= 0:
                            yb[a, i] += 0.5 * Mb[k, i]
                            yb[a + 1, i] += 0.5 * Mb[k, i]
                            frb[a, i] += 0.125 * h * Mb[k, i]
                            flb[a + 1, i] -= 0.125 * h * Mb[k, i]
                        else:
                            x0b[i] += Mb[k, i]
            # Fr_0 = f(x0, x0): the start and the history
            for i in range(d):
                frb[0, i] += flb[0, i]
            Eb[:, :] = 0.0
            _f(model, ls[0], x0, H0, PS[6], PS[7], K4)
            _f_vjp(model, ls[0], x0, H0, PS[6], PS[7], frb[0], x0b, Eb, pbar, aW, aA, aB, ab, w)
            for i in range(d):
                acc = yb[0, i] + x0b[i]
                for k in range(m):
                    acc += Eb[k, i]
                dX0[r, i] = acc
    for w in range(nw):
        for l in range(L):
            for i in range(d):
                for j in range(H):
                    gW[l, i, j] += aW[w, l, i, j]
            for j in range(H):
                gb[l, j] += ab[w, l, j]
                for i in range(d):
                    gA[l, j, i] += aA[w, l, j, i]
                for k in range(m):
                    for i in range(d):
                        gB[l, k, j, i] += aB[w, l, k, j, i]
    return 0
