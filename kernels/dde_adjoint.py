"""Discrete adjoint of the method of steps for the neural delay field (RK4 and Dormand-Prince).

Field ``f_l(x, D) = W_l σ(A_l x + sum_k B_lk D_k + b_l)``, constant history ``x0`` on
``t <= t0``. The forward run is :func:`nndyn_fast.kernels.dde.dde_advance` itself (the solver
of :func:`~nndyn_fast.ddeint`), with a ring large enough to keep every accepted node
``(t_j, y_j, Fl_j, Fr_j)`` (left and right derivatives; they differ where the layer switches).
Step j from ``t_j`` to ``t_{j+1}``, ``h = t_{j+1} - t_j``, layer ``l_j`` (the one holding the
step's midpoint), is the explicit method of the package's DDE loop with the derivative at the
new node as its last stage (first same as last):

    K_0 = Fr_j,  Y_s = y_j + h sum_{q<s} a_sq K_q,  K_s = f_l(Y_s, D_s)   (s = 1 .. S-1),
    y_{j+1} = Y_{S-1},  Fl_{j+1} = K_{S-1},  Fr_{j+1} = f_{l'}(y_{j+1}, D_{S-1}) at a switch,

with ``D_{s,k}`` the delayed value at ``t_j + c_s h - tau_k``: ``x0`` in the history, else the
cubic Hermite interpolant of the node interval ``[t_a, t_{a+1}]`` holding it,

    D = h00(θ) y_a + h_a h10(θ) Fr_a + h01(θ) y_{a+1} + h_a h11(θ) Fl_{a+1},

``θ = (s - t_a) / h_a`` (the interpolation that :mod:`nndyn_fast.kernels.dde` uses for both
methods). The reverse sweep runs the steps backwards with adjoints of every node (``ybar``,
``Flbar``, ``Frbar``), recomputing each step's stages from its stored start node; a delayed
value hands its adjoint to the nodes it was interpolated from, which the sweep reaches later.
Every delayed time must lie at or before the step's start (steps no longer than the shortest
delay; the caller checks), so the map has no fixed-point iteration to differentiate.

The step sizes are those of the forward run, held fixed (for Dormand-Prince the step-size
controller is not differentiated). ``∂/∂T`` stretches the last step: its stage inputs and the
delayed times ``t_j + c_s h - tau_k`` of its stages move with ``h`` (the Hermite interpolant's
time derivative). The sweep runs over the steps ``jlo <= j < jhi`` of a buffer of nodes (every
node of the run, or one recomputed segment and the delay window before it), with the node
adjoints and gradient accumulators carried in from the later segment, so a caller can bound
memory by checkpointing (:mod:`nndyn_fast.dde_gradients`): the buffer, its three adjoints
(B, cap, d) each, and per worker one step's stages.
"""

import numpy as np
from numba import njit, prange

from .activations import TANH, act, dact, tanh_fast
from .adjoint import _sum_workers
from .control import CONTRACT, EPS, LOCK_OVER, MAX_STEPS, NONFINITE, OK, RING_FULL, STEP_UNDERFLOW
from .dde import (
    _RK4F_A,
    _RK4F_C,
    I_ACC,
    I_COUNT,
    I_DISC,
    I_GRID,
    I_HEAD,
    I_NFEV,
    I_STATUS,
    _block_finite,
    _lock_field,
    _wrap,
    history_block,
    next_stop,
    ring_evict,
    rk4_target,
)
from .neural import block_matmul_acc


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
        pbar[j] = 0.0
    for i in range(d):  # rows of W: contiguous over the hidden units
        c = kbar[i]
        for j in range(H):
            pbar[j] += W[l, i, j] * c
            gW[w, l, i, j] += c * S[j]
    for j in range(H):
        if code == TANH:
            pbar[j] *= 1.0 - S[j] * S[j]
        else:
            pbar[j] *= dact(code, P[j])
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
def _locate(tn, j, s, t0):
    """The node interval of the delayed time ``s`` in a step from node ``j``: ``(a, θ, h_a)``
    with ``a = -1`` for the history (``s <= t0``), ``-2`` for the start node alone (j = 0),
    else the last node ``a <= j - 1`` with ``t_a <= s`` (as the solver's ring walk finds it)."""
    if s <= t0:
        return -1, 0.0, 0.0
    if j == 0:
        return -2, 0.0, 0.0
    lo = 0
    hi = j - 1
    if tn[hi] <= s:
        lo = hi
    else:
        while hi - lo > 1:  # tn[lo] <= s < tn[hi]
            mid = (lo + hi) // 2
            if tn[mid] <= s:
                lo = mid
            else:
                hi = mid
    ha = tn[lo + 1] - tn[lo]
    return lo, (s - tn[lo]) / ha, ha


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _hermite_value(Y, Fl, Fr, x0, a, th, ha, out):
    # the solver's nested form (kernels.dde.hermite_eval)
    d = out.shape[0]
    if a == -1:
        for i in range(d):
            out[i] = x0[i]
    elif a == -2:
        for i in range(d):
            out[i] = Y[0, i]
    else:
        th1 = 1.0 - th
        for i in range(d):
            dy = Y[a + 1, i] - Y[a, i]
            r3 = ha * Fr[a, i] - dy
            r4 = dy - ha * Fl[a + 1, i] - r3
            out[i] = Y[a, i] + th * (dy + th1 * (r3 + th * r4))


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _hermite_adjoint(Y, Fl, Fr, a, th, ha, Db, yb, frb, flb, x0b, c):
    """Hand the adjoint ``Db`` of a delayed value to its nodes; returns ``c Db·dD/dt`` (the
    time derivative of the interpolant, for ``∂/∂h`` of a delayed time ``t + c h - tau``)."""
    d = Db.shape[0]
    if a == -1:
        for i in range(d):
            x0b[i] += Db[i]
        return 0.0
    if a == -2:
        for i in range(d):
            yb[0, i] += Db[i]
        return 0.0
    th1 = 1.0 - th
    h00 = (1.0 + 2.0 * th) * th1 * th1
    h10 = th * th1 * th1
    h01 = th * th * (3.0 - 2.0 * th)
    h11 = th * th * (th - 1.0)
    g0 = 6.0 * th * (th - 1.0) / ha
    g10 = (3.0 * th - 4.0) * th + 1.0
    g11 = (3.0 * th - 2.0) * th
    acc = 0.0
    for i in range(d):
        v = Db[i]
        yb[a, i] += h00 * v
        frb[a, i] += ha * h10 * v
        yb[a + 1, i] += h01 * v
        flb[a + 1, i] += ha * h11 * v
        if c != 0.0:
            acc += v * (g0 * (Y[a, i] - Y[a + 1, i]) + g10 * Fr[a, i] + g11 * Fl[a + 1, i])
    return c * acc


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _step_stages(model, l, TA, TC, taus, t0, tn, Y, Fl, Fr, x0, j, Ys, K, D, Da, Dt, Dh, PS):
    """Recompute the stages of step ``j`` (inputs ``Ys``, values ``K``, delayed values ``D``
    and where they came from ``Da``/``Dt``/``Dh``, pre-activations and activations ``PS``)."""
    S = TA.shape[0]
    d = Y.shape[1]
    m = taus.shape[0]
    t = tn[j]
    tnew = tn[j + 1]
    h = tnew - t
    for i in range(d):
        K[0, i] = Fr[j, i]
    for s in range(1, S):
        for i in range(d):
            acc = 0.0
            for q in range(s):
                acc += TA[s, q] * K[q, i]
            Ys[s, i] = Y[j, i] + h * acc
        ts = tnew if s == S - 1 else t + TC[s] * h
        for k in range(m):
            a, th, ha = _locate(tn, j, ts - taus[k], t0)
            Da[s, k] = a
            Dt[s, k] = th
            Dh[s, k] = ha
            _hermite_value(Y, Fl, Fr, x0, a, th, ha, D[s, k])
        _f(model, l, Ys[s], D[s], PS[2 * s], PS[2 * s + 1], K[s])


@njit(cache=True, parallel=True, error_model="numpy", fastmath=CONTRACT)
def dde_rk_vjp(model, X0, C, taus, t0, TA, TC, tn, Y, Fl, Fr, jlo, jhi, ls, lj, jf, first,
               final, ybs, frbs, flbs, x0bs, aW, aA, aB, ab, finish, gW, gA, gB, gb, dX0,
               dT):  # fmt: skip
    """Reverse sweep of the recorded method of steps of every row of ``X0`` (B, d), over the
    steps ``jlo[r] <= j < jhi[r]`` (all of them, or one recomputed segment).

    ``TA`` (S, S), ``TC`` (S,): the method with its last stage on the new node (rows of the
    solver's RK4-with-node or Dormand-Prince tables). Row r's nodes (local slots):
    ``tn[r]``, ``Y``/``Fl``/``Fr`` (B, cap, d), the segment's and the delay window before it;
    ``ls[r, j]`` the layer of step j, ``lj[r, j]`` the layer of the right derivative at node
    j, ``jf[r, j]`` whether node j is a layer switch (its right derivative recomputed there).
    Node adjoints ``ybs``/``frbs``/``flbs`` (B, cap, d) and the history's ``x0bs`` (B, d) carry
    over between segments (zeros at the start). ``first`` (B,) bool: the rows whose segment
    ends at T (node ``jhi[r]`` the end state), where ``C`` (B, d), the cotangents of the end
    states, enter and ``dT`` (B,) ``C·∂y_T/∂T`` (the last step stretched) is written.
    ``final``: the segment that starts at t0 (local node 0 the start), where ``dX0`` (B, d)
    ``(∂y_T/∂x0)^T C`` (start and history) is written. Gradient accumulators
    ``aW``/``aA``/``aB``/``ab`` (nw, L, ...), one per worker (row r goes to worker ``r % nw``),
    zero before the first segment and carried over between segments; with ``finish`` they
    are summed in worker order into ``gW``/``gA``/``gB``/``gb`` (added to): with one row per
    worker, the sums of one sweep over every step whatever the segments (with more, a worker
    adds segment by segment, row by row). Returns 0.
    """
    W, A, B, b, code = model
    L, d, H = W.shape
    m = B.shape[1]
    Bn = X0.shape[0]
    S = TA.shape[0]
    nw = aA.shape[0]
    for w in prange(nw):
        Ys = np.empty((S, d))
        K = np.empty((S, d))
        D = np.empty((S, m, d))
        Da = np.empty((S, m), np.int64)
        Dt = np.empty((S, m))
        Dh = np.empty((S, m))
        PS = np.empty((2 * S + 2, H))
        kbar = np.empty((S, d))
        Ybar = np.empty((S, d))
        Db = np.empty((m, d))
        pbar = np.empty(H)
        tmp = np.empty(d)
        H0 = np.empty((m, d))
        for r in range(w, Bn, nw):
            x0 = X0[r]
            n = jhi[r]
            tr, Yr, Flr, Frr = tn[r], Y[r], Fl[r], Fr[r]
            yb, frb, flb, x0b = ybs[r], frbs[r], flbs[r], x0bs[r]
            if first[r]:
                for i in range(d):
                    yb[n, i] += C[r, i]
                dT[r] = 0.0
            for j in range(n - 1, jlo[r] - 1, -1):
                l = ls[r, j]
                h = tr[j + 1] - tr[j]
                last = first[r] and j == n - 1
                _step_stages(model, l, TA, TC, taus, t0, tr, Yr, Flr, Frr, x0, j, Ys, K, D,
                             Da, Dt, Dh, PS)  # fmt: skip
                kbar[:, :] = 0.0
                Ybar[:, :] = 0.0
                hb = 0.0
                for i in range(d):
                    Ybar[S - 1, i] = yb[j + 1, i]
                if jf[r, j + 1]:
                    # Fr_{j+1} = f_{l'}(y_{j+1}, D_{S-1}): the layer after the switch
                    Db[:, :] = 0.0
                    _f(model, lj[r, j + 1], Ys[S - 1], D[S - 1], PS[2 * S], PS[2 * S + 1], tmp)
                    _f_vjp(model, lj[r, j + 1], Ys[S - 1], D[S - 1], PS[2 * S], PS[2 * S + 1],
                           frb[j + 1], Ybar[S - 1], Db, pbar, aW, aA, aB, ab, w)  # fmt: skip
                    for k in range(m):
                        hb += _hermite_adjoint(Yr, Flr, Frr, Da[S - 1, k], Dt[S - 1, k],
                                               Dh[S - 1, k], Db[k], yb, frb, flb, x0b,
                                               1.0 if last else 0.0)  # fmt: skip
                else:
                    for i in range(d):
                        flb[j + 1, i] += frb[j + 1, i]
                for i in range(d):
                    kbar[S - 1, i] = flb[j + 1, i]
                for s in range(S - 1, 0, -1):
                    Db[:, :] = 0.0
                    _f_vjp(model, l, Ys[s], D[s], PS[2 * s], PS[2 * s + 1], kbar[s], Ybar[s],
                           Db, pbar, aW, aA, aB, ab, w)  # fmt: skip
                    cs = (1.0 if s == S - 1 else TC[s]) if last else 0.0
                    for k in range(m):
                        hb += _hermite_adjoint(Yr, Flr, Frr, Da[s, k], Dt[s, k], Dh[s, k],
                                               Db[k], yb, frb, flb, x0b, cs)  # fmt: skip
                    for i in range(d):
                        yb[j, i] += Ybar[s, i]
                    for q in range(s):
                        a = TA[s, q]
                        if a != 0.0:
                            acc = 0.0
                            for i in range(d):
                                kbar[q, i] += h * a * Ybar[s, i]
                                acc += Ybar[s, i] * K[q, i]
                            hb += a * acc
                for i in range(d):
                    frb[j, i] += kbar[0, i]
                if last:
                    dT[r] = hb
            if not final:
                continue
            # Fr_0 = f(x0, x0): the start and the history
            for i in range(d):
                frb[0, i] += flb[0, i]
            for k in range(m):
                for i in range(d):
                    H0[k, i] = x0[i]
            Db[:, :] = 0.0
            _f(model, lj[r, 0], x0, H0, PS[0], PS[1], tmp)
            _f_vjp(model, lj[r, 0], x0, H0, PS[0], PS[1], frb[0], x0b, Db, pbar, aW, aA, aB,
                   ab, w)  # fmt: skip
            for i in range(d):
                acc = yb[0, i] + x0b[i]
                for k in range(m):
                    acc += Db[k, i]
                dX0[r, i] = acc
    if not finish:
        return 0
    _sum_workers(aW, aA, ab, gW, gA, gb)  # each entry summed in worker order, as below
    for w in range(nw):
        for l in range(L):
            for j in range(H):
                for k in range(m):
                    for i in range(d):
                        gB[l, k, j, i] += aB[w, l, k, j, i]
    return 0


# --- RK4 over blocks of rows ------------------------------------------------------------------
# Fixed-step RK4 rows share their step times (they depend only on t0, dt, the delays and the
# layer times), so a block of rows shares each step's interval search, and the field and its
# vector-Jacobian product become products of (nb, d) and (nb, H) blocks with the weights
# (kernels.neural.block_matmul_acc, four rows per load of a weight), the parameter gradients
# sums over the block's rows of outer products.


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _outer_rows(G, w, l, U, V, nb, m, n):
    """``G[w, l, i, j] += sum_r U[r, i] V[r, j]`` (i < m, j < n) over the rows ``r < nb``,
    four rows per pass over ``G``."""
    r = 0
    while r + 4 <= nb:
        for i in range(m):
            c0, c1, c2, c3 = U[r, i], U[r + 1, i], U[r + 2, i], U[r + 3, i]
            for j in range(n):
                G[w, l, i, j] = (
                    ((G[w, l, i, j] + c0 * V[r, j]) + c1 * V[r + 1, j]) + c2 * V[r + 2, j]
                ) + c3 * V[r + 3, j]
        r += 4
    while r < nb:
        for i in range(m):
            c = U[r, i]
            for j in range(n):
                G[w, l, i, j] += c * V[r, j]
        r += 1


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _block_f(bm, l, X, D, nb, P, Sg, out):
    """``out = f_l(X, D)`` for the rows ``< nb`` of ``X`` (nb, d), ``D`` (m, nb, d), keeping the
    pre-activations ``P`` and activations ``Sg`` (nb, H)."""
    W, WT, A, AT, B2, BT, b, code = bm
    L, d, H = W.shape
    m = D.shape[0]
    for r in range(nb):
        for j in range(H):
            P[r, j] = b[l, j]
    block_matmul_acc(AT, l, X, nb, d, P, H)
    for k in range(m):
        block_matmul_acc(BT, l * m + k, D[k], nb, d, P, H)
    if code == TANH:
        for r in range(nb):
            for j in range(H):
                Sg[r, j] = tanh_fast(P[r, j])
    else:
        for r in range(nb):
            for j in range(H):
                Sg[r, j] = act(code, P[r, j])
    for r in range(nb):
        for i in range(d):
            out[r, i] = 0.0
    block_matmul_acc(WT, l, Sg, nb, H, out, d)


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _block_f_vjp(bm, l, X, D, nb, P, Sg, kbar, Xbar, Dbar, pbar, gW, gA, gB2, gb, w):
    """``Xbar += Df_X^T kbar``, ``Dbar = Df_D^T kbar`` (m, nb, d) for a block, parameter
    gradients into the worker slot ``w`` (``gB2`` the (nw, L m, H, d) view of gB)."""
    W, WT, A, AT, B2, BT, b, code = bm
    L, d, H = W.shape
    m = D.shape[0]
    for r in range(nb):
        for j in range(H):
            pbar[r, j] = 0.0
    block_matmul_acc(W, l, kbar, nb, d, pbar, H)  # σ̄ = k̄ W_l
    _outer_rows(gW, w, l, kbar, Sg, nb, d, H)  # W̄_l += k̄ σ^T
    if code == TANH:
        for r in range(nb):
            for j in range(H):
                s = Sg[r, j]
                pbar[r, j] *= 1.0 - s * s
    else:
        for r in range(nb):
            for j in range(H):
                pbar[r, j] *= dact(code, P[r, j])
    for r in range(nb):
        for j in range(H):
            gb[w, l, j] += pbar[r, j]
    _outer_rows(gA, w, l, pbar, X, nb, H, d)  # Ā_l += p̄ x^T
    block_matmul_acc(A, l, pbar, nb, H, Xbar, d)  # x̄ += p̄ A_l
    for k in range(m):
        _outer_rows(gB2, w, l * m + k, pbar, D[k], nb, H, d)  # B̄_lk += p̄ D_k^T
        for r in range(nb):
            for i in range(d):
                Dbar[k, r, i] = 0.0
        block_matmul_acc(B2, l * m + k, pbar, nb, H, Dbar[k], d)  # D̄_k = p̄ B_lk


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _vjp_worker(bm, X0, C, taus, t0, TA, TC, tn, Y, Fl, Fr, j0, j1, ls, lj, jf, isfirst, final,
                ybs, frbs, flbs, x0bs, aW, aA, aB2, ab, dX0, dT, block, w, nw):  # fmt: skip
    """The blocks ``w, w + nw, ...`` of :func:`dde_rk4_vjp_block` (one worker; a plain
    function, so the parallel kernel around it stays small to compile)."""
    W, WT, A, AT, B2, BT, b, code = bm
    L, d, H = W.shape
    m = taus.shape[0]
    Bn = X0.shape[0]
    S = TA.shape[0]
    nblk = (Bn + block - 1) // block
    nb0 = block
    Ys = np.empty((S, nb0, d))
    K = np.empty((S, nb0, d))
    D = np.empty((S, m, nb0, d))
    Da = np.empty((S, m), np.int64)
    Dt = np.empty((S, m))
    Dh = np.empty((S, m))
    P = np.empty((S + 1, nb0, H))
    Sg = np.empty((S + 1, nb0, H))
    kbar = np.empty((S, nb0, d))
    Ybar = np.empty((S, nb0, d))
    Db = np.empty((m, nb0, d))
    pbar = np.empty((nb0, H))
    hb = np.empty(nb0)
    tmp = np.empty((nb0, d))
    kb = np.empty((nb0, d))
    H0 = np.empty((m, nb0, d))
    for blk in range(w, nblk, nw):
        r0 = blk * block
        nb = min(block, Bn - r0)
        tr = tn[r0]
        if isfirst:
            for q in range(nb):
                for i in range(d):
                    ybs[r0 + q, j1, i] += C[r0 + q, i]
                dT[r0 + q] = 0.0
        for j in range(j1 - 1, j0 - 1, -1):
            l = ls[r0, j]
            t = tr[j]
            tnew = tr[j + 1]
            h = tnew - t
            last = isfirst and j == j1 - 1
            # the stages, recomputed from node j
            for q in range(nb):
                for i in range(d):
                    K[0, q, i] = Fr[r0 + q, j, i]
            for s in range(1, S):
                for q in range(nb):
                    for i in range(d):
                        acc = 0.0
                        for p in range(s):
                            acc += TA[s, p] * K[p, q, i]
                        Ys[s, q, i] = Y[r0 + q, j, i] + h * acc
                ts = tnew if s == S - 1 else t + TC[s] * h
                for k in range(m):
                    a, th, ha = _locate(tr, j, ts - taus[k], t0)
                    Da[s, k] = a
                    Dt[s, k] = th
                    Dh[s, k] = ha
                    for q in range(nb):
                        _hermite_value(Y[r0 + q], Fl[r0 + q], Fr[r0 + q], X0[r0 + q], a, th,
                                       ha, D[s, k, q])  # fmt: skip
                _block_f(bm, l, Ys[s], D[s], nb, P[s], Sg[s], K[s])
            # the reverse step
            kbar[:, :, :] = 0.0
            Ybar[:, :, :] = 0.0
            hb[:] = 0.0
            for q in range(nb):
                for i in range(d):
                    Ybar[S - 1, q, i] = ybs[r0 + q, j + 1, i]
            if jf[r0, j + 1]:
                l2 = lj[r0, j + 1]
                _block_f(bm, l2, Ys[S - 1], D[S - 1], nb, P[S], Sg[S], tmp)
                for q in range(nb):
                    for i in range(d):
                        kb[q, i] = frbs[r0 + q, j + 1, i]
                _block_f_vjp(bm, l2, Ys[S - 1], D[S - 1], nb, P[S], Sg[S], kb, Ybar[S - 1],
                             Db, pbar, aW, aA, aB2, ab, w)  # fmt: skip
                for k in range(m):
                    for q in range(nb):
                        r = r0 + q
                        hb[q] += _hermite_adjoint(Y[r], Fl[r], Fr[r], Da[S - 1, k],
                                                  Dt[S - 1, k], Dh[S - 1, k], Db[k, q],
                                                  ybs[r], frbs[r], flbs[r], x0bs[r],
                                                  1.0 if last else 0.0)  # fmt: skip
            else:
                for q in range(nb):
                    for i in range(d):
                        flbs[r0 + q, j + 1, i] += frbs[r0 + q, j + 1, i]
            for q in range(nb):
                for i in range(d):
                    kbar[S - 1, q, i] = flbs[r0 + q, j + 1, i]
            for s in range(S - 1, 0, -1):
                _block_f_vjp(bm, l, Ys[s], D[s], nb, P[s], Sg[s], kbar[s], Ybar[s], Db,
                             pbar, aW, aA, aB2, ab, w)  # fmt: skip
                cs = (1.0 if s == S - 1 else TC[s]) if last else 0.0
                for k in range(m):
                    for q in range(nb):
                        r = r0 + q
                        hb[q] += _hermite_adjoint(Y[r], Fl[r], Fr[r], Da[s, k], Dt[s, k],
                                                  Dh[s, k], Db[k, q], ybs[r], frbs[r],
                                                  flbs[r], x0bs[r], cs)  # fmt: skip
                for q in range(nb):
                    for i in range(d):
                        ybs[r0 + q, j, i] += Ybar[s, q, i]
                for p in range(s):
                    a = TA[s, p]
                    if a != 0.0:
                        for q in range(nb):
                            acc = 0.0
                            for i in range(d):
                                kbar[p, q, i] += h * a * Ybar[s, q, i]
                                acc += Ybar[s, q, i] * K[p, q, i]
                            hb[q] += a * acc
            for q in range(nb):
                for i in range(d):
                    frbs[r0 + q, j, i] += kbar[0, q, i]
            if last:
                for q in range(nb):
                    dT[r0 + q] = hb[q]
        if not final:
            continue
        # Fr_0 = f(x0, x0): the start and the history
        for q in range(nb):
            r = r0 + q
            for i in range(d):
                frbs[r, 0, i] += flbs[r, 0, i]
                kb[q, i] = frbs[r, 0, i]
                tmp[q, i] = X0[r, i]
                Ybar[0, q, i] = x0bs[r, i]
                for k in range(m):
                    H0[k, q, i] = X0[r, i]
        _block_f(bm, lj[r0, 0], tmp, H0, nb, P[0], Sg[0], K[0])
        _block_f_vjp(bm, lj[r0, 0], tmp, H0, nb, P[0], Sg[0], kb, Ybar[0], Db, pbar, aW, aA,
                     aB2, ab, w)  # fmt: skip
        for q in range(nb):
            r = r0 + q
            for i in range(d):
                acc = ybs[r, 0, i] + Ybar[0, q, i]
                for k in range(m):
                    acc += Db[k, q, i]
                dX0[r, i] = acc


@njit(cache=True, parallel=True, error_model="numpy", fastmath=CONTRACT)
def dde_rk4_vjp_block(bm, X0, C, taus, t0, TA, TC, tn, Y, Fl, Fr, jlo, jhi, ls, lj, jf, first,
                      final, ybs, frbs, flbs, x0bs, aW, aA, aB2, ab, finish, gW, gA, gB2, gb,
                      dX0, dT, block):  # fmt: skip
    """:func:`dde_rk_vjp` for rows that share their step times (fixed-step RK4), in blocks of
    ``block`` rows: the same arguments, with ``bm = (W, W^T, A, A^T, B (L m, H, d),
    B^T (L m, d, H), b, code)`` the weights laid out for blocked products, ``aB2``/``gB2`` the
    (.., L m, H, d) views of the B gradients, and ``jlo``/``jhi``/``first`` those of row 0 (the
    same for every row). Blocks go to worker ``blk % nw``. Returns 0."""
    W = bm[0]
    L, d, H = W.shape
    m = taus.shape[0]
    nw = aA.shape[0]
    j0, j1 = jlo[0], jhi[0]
    isfirst = first[0]
    for w in prange(nw):
        _vjp_worker(bm, X0, C, taus, t0, TA, TC, tn, Y, Fl, Fr, j0, j1, ls, lj, jf, isfirst,
                    final, ybs, frbs, flbs, x0bs, aW, aA, aB2, ab, dX0, dT, block, w,
                    nw)  # fmt: skip
    if not finish:
        return 0
    _sum_workers(aW, aA, ab, gW, gA, gb)
    for w in range(nw):
        for lk in range(L * m):
            for j in range(H):
                for i in range(d):
                    gB2[lk, j, i] += aB2[w, lk, j, i]
    return 0


# --- fixed-step RK4 in lockstep from a saved state ---------------------------------------------
# kernels.dde.dde_rk4_lockstep's loop (the arithmetic of dde_advance for each row, rows of a block
# innermost so the loops over them vectorise), started from the rows' rings and counters as
# dde_advance leaves them and stopped by a step budget, writing the new nodes back into those
# rings: the forward runs of the checkpointed gradient. No fastmath flags, as the loop it copies
# (its callees must round as under ddeint's kernels).


@njit(cache=True)
def _resume_block(fld, hists, ctl, ring, ist, b0, nb, lring, K, Y, YT, XD, zr, tmp, cur):
    model, ip, P, hkind, t0, taus = fld
    dt, t_end, disc, djump, max_steps = ctl
    rt, ry, rfl, rfr = ring
    lrt, lry, lrfl, lrfr = lring
    cap = rt.shape[1]
    d = ry.shape[2]
    m = taus.shape[0]
    taumax = 0.0
    for k in range(m):
        taumax = max(taumax, taus[k])
    tiny = 1e-9 * (1.0 + abs(t0))
    head = ist[b0, I_HEAD]
    cnt = ist[b0, I_COUNT]
    for i in range(cnt):
        p = _wrap(head + i, cap)
        lrt[p] = rt[b0, p]
        for c in range(d):
            for q in range(nb):
                lry[p, c, q] = ry[b0 + q, p, c]
                lrfl[p, c, q] = rfl[b0 + q, p, c]
                lrfr[p, c, q] = rfr[b0 + q, p, c]
    status = OK
    nfev = 0
    if cnt == 0:  # the first node: the history at t0 and the right derivative there
        head = 0
        cnt = 1
        nfev = 1
        lrt[0] = t0
        history_block(hkind, hists, None, b0, t0, lry[0], tmp)
        _lock_field(None, fld, hists, b0, lring, 0, 1, cur, XD, zr, tmp, t0, t0 + tiny, lry[0],
                    lrfr, 0)  # fmt: skip
        lrfl[0, :, :] = lrfr[0]
        if not _block_finite(lrfr[0]):
            status = NONFINITE
    start = head
    held = cnt
    last = _wrap(head + cnt - 1, cap)
    t = lrt[last]
    Y[:, :] = lry[last]
    dp = ist[b0, I_DISC]
    grid = ist[b0, I_GRID]
    nacc = 0
    nsteps = 0
    while status == OK and t < t_end:
        if nsteps >= max_steps:
            status = MAX_STEPS
            break
        dp, stop, hit_disc = next_stop(disc, dp, t, t_end, tiny)
        tnew, on_grid, hit_disc = rk4_target(t0, dt, grid, stop, hit_disc)
        h = tnew - t
        if h <= 16.0 * EPS * max(abs(t), 1.0):
            status = STEP_UNDERFLOW
            break
        tl = t + 0.5 * h
        K[0, :, :] = lrfr[last]
        for s in range(1, 5):
            for i in range(d):
                YT[i, :] = 0.0
                for p in range(s):
                    a = _RK4F_A[s, p]
                    for q in range(nb):
                        YT[i, q] += a * K[p, i, q]
                for q in range(nb):
                    YT[i, q] = Y[i, q] + h * YT[i, q]
            ts = tnew if s == 4 else t + _RK4F_C[s] * h
            if _lock_field(None, fld, hists, b0, lring, head, cnt, cur, XD, zr, tmp, ts, tl, YT,
                           K, s):  # fmt: skip
                status = LOCK_OVER
                break
        if status != OK:
            break
        nfev += 4
        nsteps += 1
        head, cnt = ring_evict(lrt, head, cnt, cur, tnew - taumax)
        if not (_block_finite(YT) and _block_finite(K[4])):
            status = NONFINITE
        elif cnt >= cap:
            status = RING_FULL
        if status != OK:
            break
        new = _wrap(head + cnt, cap)
        lrt[new] = tnew
        lry[new] = YT
        lrfl[new] = K[4]
        lrfr[new] = K[4]
        cnt += 1
        nacc += 1
        if on_grid:
            grid += 1
        if hit_disc:
            dp += 1
            if djump[dp - 1]:
                _lock_field(None, fld, hists, b0, lring, head, cnt, cur, XD, zr, tmp, tnew,
                            tnew + tiny, YT, lrfr, new)  # fmt: skip
                nfev += 1
        last = new
        t = tnew
        Y[:, :] = YT
    # the nodes written (the last cap of them when the ring wrapped) back into the rows' rings
    tot = held + nacc
    for i in range(max(0, tot - cap), tot):
        p = (start + i) % cap
        for q in range(nb):
            rt[b0 + q, p] = lrt[p]
            for c in range(d):
                ry[b0 + q, p, c] = lry[p, c, q]
                rfl[b0 + q, p, c] = lrfl[p, c, q]
                rfr[b0 + q, p, c] = lrfr[p, c, q]
    for q in range(nb):
        b = b0 + q
        ist[b, I_HEAD] = head
        ist[b, I_COUNT] = cnt
        ist[b, I_DISC] = dp
        ist[b, I_GRID] = grid
        ist[b, I_ACC] += nacc
        ist[b, I_NFEV] += nfev
        ist[b, I_STATUS] = status


@njit(cache=True, parallel=True)
def dde_rk4_lockstep_resume(fld, hists, ctl, ring, ist, block):
    """Continue fixed-step RK4 of every row of the rings ``ring`` (as
    :func:`~nndyn_fast.kernels.dde.dde_advance` keeps them, ``ist`` its counters; rows of a
    block of ``block`` share their step times and ring positions) by ``max_steps`` steps or
    to ``t_end``, blocks in parallel; ``ctl = (dt, t_end, disc, djump, max_steps)``. Each
    row's nodes are bitwise those of :func:`~nndyn_fast.kernels.dde.dde_advance`; its status
    goes to ``ist[b, 7]`` (a block's failure is reported on each of its rows)."""
    B = ist.shape[0]
    cap = ring[0].shape[1]
    d = ring[1].shape[2]
    m = fld[5].shape[0]
    nblk = (B + block - 1) // block
    for ib in prange(nblk):
        b0 = ib * block
        nb = min(block, B - b0)
        lring = (np.empty(cap), np.empty((cap, d, nb)), np.empty((cap, d, nb)),
                 np.empty((cap, d, nb)))  # fmt: skip
        K = np.empty((5, d, nb))
        Y, YT = np.empty((d, nb)), np.empty((d, nb))
        XD = np.empty((m, d, nb))
        zr = np.empty(nb)
        tmp = np.empty(d)
        cur = np.zeros(m, dtype=np.int64)
        _resume_block(fld, hists, ctl, ring, ist, b0, nb, lring, K, Y, YT, XD, zr, tmp, cur)
