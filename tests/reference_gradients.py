"""Naive numpy references for the discrete adjoint of RK steps (kernels/adjoint.py).

``f_l(x) = W_l σ(A_l x + b_l)`` with σ = tanh or the identity, a batch of rows stepping together
through the steps ``hs`` (layers ``ls``): every stage stored on the way forward, then one
reverse sweep with whole-batch matrix products (no checkpoints).
"""

import numpy as np

_ACT = {"tanh": (np.tanh, lambda p, s: 1.0 - s * s), "identity": (lambda p: p, lambda p, s: 1.0)}


def rk_forward(W, A, b, act, Z0, hs, ls, TA, TB):
    """The discrete map: ``len(hs)`` RK steps of the batch ``Z0`` (B, d)."""
    sig = _ACT[act][0]
    z = np.array(Z0, float)
    for h, l in zip(hs, ls, strict=True):
        K = []
        for s in range(len(TB)):
            Y = z + h * sum(TA[s, j] * K[j] for j in range(s)) if s else z
            K.append(sig(Y @ A[l].T + b[l]) @ W[l].T)
        z = z + h * sum(TB[s] * K[s] for s in range(len(TB)))
    return z


def rk_vjp(W, A, b, act, Z0, C, hs, ls, TA, TB):
    """``(gW, gA, gb, dZ0, dh, ZT)``: gradients of ``sum C·Z_T`` (dh per step, summed over rows)."""
    sig, dsig = _ACT[act]
    S = len(TB)
    z = np.array(Z0, float)
    tape = []
    for h, l in zip(hs, ls, strict=True):
        Ys, Ps, Ss, Ks = [], [], [], []
        for s in range(S):
            Y = z + h * sum(TA[s, j] * Ks[j] for j in range(s)) if s else z.copy()
            P = Y @ A[l].T + b[l]
            Sg = sig(P)
            Ys.append(Y), Ps.append(P), Ss.append(Sg), Ks.append(Sg @ W[l].T)
        tape.append((Ys, Ps, Ss, Ks))
        z = z + h * sum(TB[s] * Ks[s] for s in range(S))
    ZT = z
    gW, gA, gb = np.zeros_like(W), np.zeros_like(A), np.zeros_like(b)
    lam = np.array(C, float)
    dh = np.zeros(len(hs))
    for k in range(len(hs) - 1, -1, -1):
        h, l = hs[k], ls[k]
        Ys, Ps, Ss, Ks = tape[k]
        dh[k] = sum(TB[s] * np.sum(lam * Ks[s]) for s in range(S))
        kbar = [h * TB[s] * lam for s in range(S)]
        new = lam.copy()
        for s in range(S - 1, -1, -1):
            gW[l] += kbar[s].T @ Ss[s]
            pbar = (kbar[s] @ W[l]) * dsig(Ps[s], Ss[s])
            gb[l] += pbar.sum(axis=0)
            gA[l] += pbar.T @ Ys[s]
            Ybar = pbar @ A[l]
            new += Ybar
            for j in range(s):
                kbar[j] = kbar[j] + h * TA[s, j] * Ybar
                dh[k] += TA[s, j] * np.sum(Ybar * Ks[j])
        lam = new
    return gW, gA, gb, lam, dh, ZT
