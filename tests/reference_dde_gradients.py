"""Naive numpy reference: the neural-DDE method of steps on given node times (steps frozen).

``frozen_map(W, A, B, b, act, t_layers, x0, taus, tn, method)`` integrates
``x' = W_l act(A_l x + sum_k B_lk x(t - tau_k) + b_l)`` from the constant history ``x0`` over
the steps ``tn[j] -> tn[j + 1]`` with the RK4 or Dormand-Prince tableau, delayed values from
the cubic Hermite interpolant of the nodes (values and derivatives at both ends), and returns
``x(tn[-1])``. Central differences of it in the weights, ``x0`` or ``tn[-1]`` (the last step
stretched) are the gradients of the discrete map with the step sequence frozen.
"""

import numpy as np

from nndyn_fast.kernels.rk import DOPRI5_A, DOPRI5_C, RK4_A, RK4_B, RK4_C


def _tables(method):
    if method == "rk4":
        A = np.zeros((5, 5))
        A[:4, :4] = RK4_A
        A[4, :4] = RK4_B
        return A, np.append(RK4_C, 1.0)
    return DOPRI5_A, DOPRI5_C


def frozen_map(W, A, B, b, act, t_layers, x0, taus, tn, method):
    L = W.shape[0]
    TA, TC = _tables(method)
    S = TA.shape[0]
    t0 = tn[0]

    def layer(t):
        return int(np.searchsorted(t_layers[1:L], t, side="right"))

    def f(lay, x, D):
        z = A[lay] @ x + sum(B[lay, k] @ D[k] for k in range(len(taus))) + b[lay]
        return W[lay] @ act(z)

    ys, fl, fr = [x0.copy()], [], []

    def delayed(s, j):
        if s <= t0:
            return x0
        a = min(int(np.searchsorted(tn[: j + 1], s, side="right")) - 1, j - 1)
        ha = tn[a + 1] - tn[a]
        th = (s - tn[a]) / ha
        h00 = (1 + 2 * th) * (1 - th) ** 2
        h10 = th * (1 - th) ** 2
        h01 = th**2 * (3 - 2 * th)
        h11 = th**2 * (th - 1)
        return h00 * ys[a] + ha * h10 * fr[a] + h01 * ys[a + 1] + ha * h11 * fl[a + 1]

    f0 = f(layer(t0 + 1e-9), x0, [x0] * len(taus))
    fl.append(f0)
    fr.append(f0)
    switches = set(float(s) for s in t_layers[1:L])
    for j in range(len(tn) - 1):
        t, h = tn[j], tn[j + 1] - tn[j]
        lay = layer(t + 0.5 * h)
        K = [fr[j]]
        for s in range(1, S):
            Y = ys[j] + h * sum(TA[s, q] * K[q] for q in range(s))
            ts = t + TC[s] * h
            K.append(f(lay, Y, [delayed(ts - tau, j) for tau in taus]))
        ys.append(Y)
        fl.append(K[-1])
        if float(tn[j + 1]) in switches:
            D = [delayed(tn[j + 1] - tau, j) for tau in taus]
            fr.append(f(layer(tn[j + 1] + 1e-9), Y, D))
        else:
            fr.append(K[-1])
    return ys[-1]
