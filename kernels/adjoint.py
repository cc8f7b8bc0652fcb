"""Discrete adjoints (reverse sweeps) of explicit Runge-Kutta steps of the built-in neural field.

A step of size ``h`` from ``y`` in layer ``l`` is ``Y_s = y + h sum_{j<s} A_sj k_j``,
``k_s = f_l(Y_s)``, ``y' = y + h sum_s B_s k_s`` with ``f_l(x) = W_l σ(A_l x + b_l)`` (form 0)
or ``σ(A_l x + b_l)`` (form 1); the model tuple is that of :mod:`nndyn_fast.kernels.neural`.
Given the adjoint ``ȳ'`` of the step's result, the reverse step is (stages in reverse order)

    k̄_s = h B_s ȳ' + h sum_{i>s} A_is Ȳ_i,    Ȳ_s = Df_l(Y_s)^T k̄_s,    ȳ = ȳ' + sum_s Ȳ_s,
    h̄ = ȳ'·sum_s B_s k_s + sum_s Ȳ_s·sum_{j<s} A_sj k_j,

and the field's vector-Jacobian product at ``p = A_l Y + b_l``, ``σ = σ(p)``: ``W̄_l += k̄ σ^T``,
``σ̄ = W_l^T k̄``, ``p̄ = σ'(p) σ̄``, ``b̄_l += p̄``, ``Ā_l += p̄ Y^T``, ``Ȳ = A_l^T p̄``.
This is the exact gradient of the discrete map (the same steps, the same rounding up to the
order of summation), not of the ODE's flow.

Memory: bounded, whatever the number of steps ``n``. Either the tape holds every step's
stage inputs ``Y_s`` and activations ``σ_s`` (and pre-activations, where the activation's
derivative needs them) of a block of ``nb`` rows, ``n S nb (d + H)`` floats, and the reverse
sweep reads them back (each step evaluated once); or each lane holds ``s`` checkpoint slots
(states of its block of rows, plus the controller state of a Dormand-Prince row) and a
window's stages, and the reverse sweep recomputes the steps between checkpoints by binomial
checkpointing (Griewank 1992, the revolve schedule, with an explicit stack of slots), so each
step is evaluated at most ``r + 1`` times, ``r`` the least integer with ``C(s + r, r) >= n``,
and the total is the least of any such schedule. A Dormand-Prince checkpoint holds the state
and the step-size controller's state, so its steps are recomputed bitwise and no step size is
stored; a first run counts the accepted steps, keeping them on the row's tape while they fit.
The stages ``k_s`` are not kept: ``∂/∂h`` takes ``sum_j A_sj k_j = (Y_s - y) / h`` and
``sum_s B_s k_s = (y' - y) / h`` from the states, except for a step that enters ``∂/∂T`` and
moves its state by less than ``_TINY_CHANGE`` (1e-6) of it (a short last step before T), whose
stages are recomputed from the tape's activations (the forward's bits), so that ``∂/∂T`` keeps
its digits.

The weight gradients ``W̄_l += k̄ σ^T``, ``Ā_l += p̄ Y^T`` are deferred: the ``k̄``/``p̄`` of the
``m`` steps of a window ``m j <= k < m (j + 1)`` are kept, and when the window's last step is
reversed its sums over steps, stages and rows are one blocked product each (:func:`_outer_acc`,
each entry summed in row order). The windows depend on the step index alone, so the tape and
every checkpoint schedule do the same arithmetic and give the same bits. (BLAS does these
products about 1.4 times as fast in isolation, but its calls from the parallel loop stalled
for milliseconds now and then on the shared development machine; these loops do not.)

Rows are independent: blocks of ``block`` rows share the step schedule; the blocks are handed
to ``nw`` workers, each with its own gradient accumulator, and the workers to ``nl`` lanes
(``prange``, one per thread), each with its own scratch (tape, slots); the accumulators are
summed in worker order at the end, so results do not depend on the number of threads. (The
results of a row do depend on nothing else in its block: ``dZ0``, ``ZT`` of a row computed
alone are bitwise those in a batch.)
"""

import math

import numpy as np
from numba import njit, prange

from .activations import TANH, act, dact, tanh_fast
from .control import (
    CONTRACT,
    EPS,
    ERR_FLOOR,
    EXACT,
    MAX_STEPS,
    NONFINITE,
    OK,
    STEP_UNDERFLOW,
    initial_step_guess,
    initial_step_refine,
    pi_control,
    pi_exponent,
    wrms_norm,
)
from .neural import FORM_OUTER, block_matmul_acc


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def block_field_store(model, l, X, nb, P, Sg, K):
    """``K = f_l(X)`` for the rows ``< nb`` of ``X`` (nb, d), keeping ``P = b + X A^T`` and
    ``Sg = σ(P)`` (nb, H); the same arithmetic as the forward kernels (blocked products)."""
    W, WT, A, AT, b, code, form = model
    d = X.shape[1]
    H = b.shape[1]
    for r in range(nb):
        for j in range(H):
            P[r, j] = b[l, j]
    block_matmul_acc(AT, l, X, nb, d, P, H)
    if code == TANH:
        for r in range(nb):
            for j in range(H):
                Sg[r, j] = tanh_fast(P[r, j])
    else:
        for r in range(nb):
            for j in range(H):
                Sg[r, j] = act(code, P[r, j])
    if form == FORM_OUTER:
        for r in range(nb):
            for i in range(d):
                K[r, i] = 0.0
        block_matmul_acc(WT, l, Sg, nb, H, K, d)
    else:
        for r in range(nb):
            for i in range(d):
                K[r, i] = Sg[r, i]
    return 0


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def block_field_vjp(model, l, X, nb, P, Sg, kbar, gb, w, sbar, Ybar):
    """Reverse of :func:`block_field_store` less the weight outer products (deferred to
    :func:`_flush_outer`): ``sbar`` (nb, H) gets ``p̄ = σ'(p) (k̄ W_l)``, ``gb[w, l] += sum_r
    p̄_r``, and ``Ybar = Df_l(X)^T kbar = p̄ A_l`` (nb, d)."""
    W, WT, A, AT, b, code, form = model
    d = X.shape[1]
    H = b.shape[1]
    if form == FORM_OUTER:
        for r in range(nb):
            for j in range(H):
                sbar[r, j] = 0.0
        block_matmul_acc(W, l, kbar, nb, d, sbar, H)  # σ̄ = k̄ W_l
    else:
        for r in range(nb):
            for j in range(H):
                sbar[r, j] = kbar[r, j]
    # p̄ = σ'(p) σ̄ (in sbar), b̄ += p̄
    if code == TANH:
        for r in range(nb):
            for j in range(H):
                s = Sg[r, j]
                v = sbar[r, j] * (1.0 - s * s)
                sbar[r, j] = v
                gb[w, l, j] += v
    else:
        for r in range(nb):
            for j in range(H):
                v = sbar[r, j] * dact(code, P[r, j])
                sbar[r, j] = v
                gb[w, l, j] += v
    for r in range(nb):
        for i in range(d):
            Ybar[r, i] = 0.0
    block_matmul_acc(A, l, sbar, nb, H, Ybar, d)  # Ȳ = p̄ A_l
    return 0


_CHUNK = 32  # rows of U, V per pass of _outer_acc (16 KB of V at n = 64: kept in cache)


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _outer_acc(G, U, V, K, m, n):
    """``G[i, j] += sum_k U[k, i] V[k, j]`` (i < m, j < n) over the rows ``k < K`` of ``U``
    and ``V``, each entry summed in row order: the register tile of
    :func:`~nndyn_fast.kernels.neural.block_matmul_acc` (four rows of ``G`` share each load
    of a row of ``V``, four rows of ``V`` per pass over them), the rows taken ``_CHUNK`` at a
    time so that ``V``'s stay in cache for every row of ``G``."""
    for k0 in range(0, K, _CHUNK):
        k1 = min(K, k0 + _CHUNK)
        i = 0
        while i + 4 <= m:
            k = k0
            while k + 4 <= k1:
                u00, u01, u02, u03 = U[k, i], U[k + 1, i], U[k + 2, i], U[k + 3, i]
                u10, u11, u12, u13 = U[k, i + 1], U[k + 1, i + 1], U[k + 2, i + 1], U[k + 3, i + 1]
                u20, u21, u22, u23 = U[k, i + 2], U[k + 1, i + 2], U[k + 2, i + 2], U[k + 3, i + 2]
                u30, u31, u32, u33 = U[k, i + 3], U[k + 1, i + 3], U[k + 2, i + 3], U[k + 3, i + 3]
                for j in range(n):
                    v0 = V[k, j]
                    v1 = V[k + 1, j]
                    v2 = V[k + 2, j]
                    v3 = V[k + 3, j]
                    G[i, j] = (((G[i, j] + u00 * v0) + u01 * v1) + u02 * v2) + u03 * v3
                    G[i + 1, j] = (((G[i + 1, j] + u10 * v0) + u11 * v1) + u12 * v2) + u13 * v3
                    G[i + 2, j] = (((G[i + 2, j] + u20 * v0) + u21 * v1) + u22 * v2) + u23 * v3
                    G[i + 3, j] = (((G[i + 3, j] + u30 * v0) + u31 * v1) + u32 * v2) + u33 * v3
                k += 4
            while k < k1:
                for q in range(4):
                    c = U[k, i + q]
                    for j in range(n):
                        G[i + q, j] += c * V[k, j]
                k += 1
            i += 4
        while i < m:
            for k in range(k0, k1):
                c = U[k, i]
                for j in range(n):
                    G[i, j] += c * V[k, j]
            i += 1


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _flush_outer(model, Ys, Ss, q0, KB, PB, lay, cnt, nb, gW, gA, w):
    """The deferred weight gradients of ``cnt`` reversed steps (a window): ``Ā_l += P̄^T Y``
    and (form 0) ``W̄_l += K̄^T Σ`` into ``gA[w, l]``, ``gW[w, l]``, the sums over every stage
    and row of the steps, whose stage inputs ``Y`` and activations ``Σ`` are the tape steps
    ``q0 .. q0 + cnt - 1`` of ``Ys``/``Ss`` and whose ``p̄``/``k̄`` are ``PB``/``KB[0 .. cnt)``
    in layers ``lay[0 .. cnt)``: one product (:func:`_outer_acc`) per run of steps in the
    same layer, ``cnt S nb`` rows deep."""
    form = model[6]
    S = Ys.shape[1]
    d = Ys.shape[3]
    H = Ss.shape[3]
    i = 0
    while i < cnt:
        l = lay[i]
        e = i + 1
        while e < cnt and lay[e] == l:
            e += 1
        rows = (e - i) * S * nb
        Y2 = Ys[q0 + i : q0 + e].reshape((rows, d))
        _outer_acc(gA[w, l], PB[i:e].reshape((rows, H)), Y2, rows, H, d)
        if form == FORM_OUTER:
            S2 = Ss[q0 + i : q0 + e].reshape((rows, H))
            _outer_acc(gW[w, l], KB[i:e].reshape((rows, d)), S2, rows, d, H)
        i = e


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _step_store(model, l, h, z, nb, TA, TB, need, Ys, Ps, Ss, Ks, q):
    """One RK step ``z <- z + h sum B_s k_s`` of the rows ``< nb``, its stage inputs and
    activations stored in the tape step ``q`` (``Ys[q, s]``, ``Ss[q, s]``), the pre-
    activations in ``Ps[q % Ps.shape[0], s]`` (a tape, or one step of scratch where the
    reverse does not need them: tanh) and the stages in ``Ks[0, s]`` (scratch: the reverse
    takes ``sum_j A_sj k_j = (Y_s - y) / h`` from the tape)."""
    S = TB.shape[0]
    d = z.shape[1]
    qp = q % Ps.shape[0]
    for s in range(S):
        if not need[s]:
            continue
        for r in range(nb):
            for i in range(d):
                Ys[q, s, r, i] = z[r, i]
        for j in range(s):
            c = h * TA[s, j]
            if c != 0.0:
                for r in range(nb):
                    for i in range(d):
                        Ys[q, s, r, i] += c * Ks[0, j, r, i]
        block_field_store(model, l, Ys[q, s], nb, Ps[qp, s], Ss[q, s], Ks[0, s])
    for s in range(S):
        c = h * TB[s]
        if c != 0.0:
            for r in range(nb):
                for i in range(d):
                    z[r, i] += c * Ks[0, s, r, i]


# a step whose state moves by less than this (relative, max norm over its block) takes ∂/∂h
# from its stages, recomputed from the tape, instead of from (y' - y) / h, which would lose
# about eps |y| / |y' - y| of its relative accuracy (a short last step before T)
_TINY_CHANGE = 1e-6


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _stages_from_tape(model, l, nb, need, Ss, q, K):
    """``K[s] = f_l(Y_s)`` (S, nb, d) of tape step ``q`` from its activations: ``W_l σ_s``
    (form 0) or ``σ_s`` (form 1), the forward's arithmetic (so the forward's bits)."""
    W, WT, A, AT, b, code, form = model
    S = K.shape[0]
    d = K.shape[2]
    H = b.shape[1]
    for s in range(S):
        for r in range(nb):
            for i in range(d):
                K[s, r, i] = 0.0
        if not need[s]:
            continue
        if form == FORM_OUTER:
            block_matmul_acc(WT, l, Ss[q, s], nb, H, K[s], d)
        else:
            for r in range(nb):
                for i in range(d):
                    K[s, r, i] = Ss[q, s, r, i]


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _step_reverse(model, l, h, nb, TA, TB, need, Ys, Ps, Ss, q, yend, lam, kbar, sbar, Ybar, gb,
                  w, hbar, K, exact):  # fmt: skip
    """Reverse of step ``q`` (stored by :func:`_step_store`, ending at ``yend`` (nb, d)):
    ``lam`` (nb, d) goes from the adjoint of the step's result to that of its start;
    ``hbar[r]`` gets ``∂/∂h`` of row r, ``ȳ'·sum_s B_s k_s + sum_s Ȳ_s·sum_j A_sj k_j``, the
    sums from the states, ``(ȳ'·(y' - y) + sum_s Ȳ_s·(Y_s - y)) / h``, or with ``exact``
    from the stages, recomputed into the scratch ``K`` (S, nb, d); the stages' ``k̄`` and
    ``p̄`` are left in ``kbar`` (S, nb, d) and ``sbar`` (S, nb, H) (zero for stages that do
    not enter the result) for :func:`_flush_outer`."""
    S = TB.shape[0]
    d = lam.shape[1]
    H = sbar.shape[2]
    qp = q % Ps.shape[0]
    if exact:
        _stages_from_tape(model, l, nb, need, Ss, q, K)
        for r in range(nb):
            acc = 0.0
            for s in range(S):
                if TB[s] != 0.0:
                    a = 0.0
                    for i in range(d):
                        a += lam[r, i] * K[s, r, i]
                    acc += TB[s] * a
            hbar[r] = acc
    else:
        for r in range(nb):
            acc = 0.0
            for i in range(d):
                acc += lam[r, i] * (yend[r, i] - Ys[q, 0, r, i])
            hbar[r] = acc
    for s in range(S):
        c = h * TB[s]
        for r in range(nb):
            for i in range(d):
                kbar[s, r, i] = c * lam[r, i]
    for s in range(S - 1, -1, -1):
        if not need[s]:
            for r in range(nb):
                for j in range(H):
                    sbar[s, r, j] = 0.0
            continue
        block_field_vjp(model, l, Ys[q, s], nb, Ps[qp, s], Ss[q, s], kbar[s], gb, w, sbar[s],
                        Ybar)  # fmt: skip
        # ȳ += Ȳ_s, h̄ += Ȳ_s·(Y_s - y), and k̄_j += h A_sj Ȳ_s for the first nonzero A_sj
        # in one pass over Ȳ_s (the only one in the fixed-step tableaus); any further ones
        # (Dormand-Prince) after it
        j1 = -1
        for j in range(s):
            if TA[s, j] != 0.0:
                j1 = j
                break
        c1 = h * TA[s, j1] if j1 >= 0 else 0.0
        for r in range(nb):
            acc = 0.0
            for i in range(d):
                yb = Ybar[r, i]
                lam[r, i] += yb
                acc += yb * (Ys[q, s, r, i] - Ys[q, 0, r, i])
                if j1 >= 0:
                    kbar[j1, r, i] += c1 * yb
            if exact:
                acc = 0.0
                for j in range(s):
                    a = TA[s, j]
                    if a != 0.0:
                        e = 0.0
                        for i in range(d):
                            e += Ybar[r, i] * K[j, r, i]
                        acc += a * e
            if s > 0:
                hbar[r] += acc
        for j in range(j1 + 1, s):
            a = TA[s, j]
            if a != 0.0 and j1 >= 0:
                c = h * a
                for r in range(nb):
                    for i in range(d):
                        kbar[j, r, i] += c * Ybar[r, i]
    if not exact:
        for r in range(nb):
            hbar[r] /= h


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _barely_moves(nb, Ys, q, yend):
    """Whether step ``q`` moves the state of its block by less than ``_TINY_CHANGE`` of it."""
    dmax = 0.0
    ymax = 0.0
    d = yend.shape[1]
    for r in range(nb):
        for i in range(d):
            dmax = max(dmax, abs(yend[r, i] - Ys[q, 0, r, i]))
            ymax = max(ymax, abs(Ys[q, 0, r, i]))
    return dmax < _TINY_CHANGE * ymax


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _reverse_one(model, k, n, l, h, hw, lo, nb, TA, TB, need, Ys, Ps, Ss, q, yend, lam, KB, PB,
                 lay, Ybar, gW, gA, gb, w, hbar, dT, K):  # fmt: skip
    """Reverse step ``k`` of ``n`` (layer ``l``, size ``h``, ``∂h/∂T = hw``, end state
    ``yend``), stored at tape step ``q``, into the window of ``m = KB.shape[0]`` steps
    ``k0 = m (k // m) <= k < k0 + m`` (its stages' ``k̄``, ``p̄`` at ``KB[k - k0]``,
    ``PB[k - k0]``); at ``k = k0`` (the window's last step reversed) its weight gradients
    are added (:func:`_flush_outer`), its stages being at tape steps ``q .. q + cnt - 1``.
    The windows are fixed by ``k`` alone, so every schedule of the same steps does the same
    arithmetic."""
    m = KB.shape[0]
    j = k % m
    lay[j] = l
    exact = hw != 0.0 and _barely_moves(nb, Ys, q, yend)  # ∂/∂h enters dT: keep its digits
    _step_reverse(model, l, h, nb, TA, TB, need, Ys, Ps, Ss, q, yend, lam, KB[j], PB[j], Ybar,
                  gb, w, hbar, K, exact)  # fmt: skip
    if hw != 0.0:
        for r in range(nb):
            dT[lo + r] += hw * hbar[r]
    if j == 0:
        _flush_outer(model, Ys, Ss, q, KB, PB, lay, min(m, n - k), nb, gW, gA, w)


@njit(cache=True, error_model="numpy")
def _layer_at(tstops, t):
    n = 0
    for s in tstops:
        if s <= t:
            n += 1
    return n


@njit(cache=True, error_model="numpy")
def _next_stop(tstops, t, te):
    for s in tstops:
        if s > t and s < te:
            return s
    return te


@njit(cache=True, error_model="numpy")
def revolve_split(n, snaps):
    """Steps to advance before storing the next checkpoint, reversing ``n >= 2`` steps with
    ``snaps >= 2`` checkpoint slots of which the first holds the start (Griewank's binomial
    rule, as in revolve): the schedule that minimises the number of steps evaluated."""
    reps = 0
    rng = 1
    while rng < n:
        reps += 1
        rng = rng * (reps + snaps) // reps  # C(snaps + reps, reps), exactly
    bino1 = rng * reps // (snaps + reps)
    bino2 = bino1 * snaps // (snaps + reps - 1) if snaps > 1 else 1
    if snaps == 1:
        bino3 = 0
    else:
        bino3 = bino2 * (snaps - 1) // (snaps + reps - 2) if snaps > 2 else 1
    bino4 = bino2 * (reps - 1) // snaps
    if snaps < 3:
        bino5 = 0
    else:
        bino5 = bino3 * (snaps - 2) // reps if snaps > 3 else 1
    if n <= bino1 + bino3:
        m = bino4
    elif n >= rng - bino5:
        m = bino1
    else:
        m = n - bino2 - bino3
    return min(max(m, 1), n - 1)


# a Dormand-Prince checkpoint: the state and the controller's (t, h, errold, rejected,
# nonfinite, tries); recomputing from it reproduces the accepted steps bitwise
NCTL = 6


# no fastmath flags, set explicitly (not inherited): a callee without flags takes its first
# caller's flags, and the controller must round alike under every caller
@njit(cache=True, error_model="numpy", fastmath=EXACT)
def dopri5_accept(model, z, znew, e, ctl, T, tstops, TA, TB, TE, need, rtol, atol, max_steps,
                  expo1, Ys, Ps, Ss, Ks, q):  # fmt: skip
    """One accepted adaptive Dormand-Prince step of the single row ``z`` (1, d) from the
    controller state ``ctl`` (t, h, errold, rejected, nonfinite, tries), both updated; the
    accepted step is left in the tape step ``q`` (:func:`_step_store`). PI controller
    on the weighted RMS norm of the embedded error estimate, Hairer's starting step when
    ``h = 0``, steps that never cross a layer switch ``tstops`` or ``T``. Returns ``(status,
    h, layer, attempts)``; status ``OK``, ``NONFINITE``, ``STEP_UNDERFLOW`` or ``MAX_STEPS``
    (more than ``max_steps`` attempts in all)."""
    d = z.shape[1]
    S = TB.shape[0]
    qp = q % Ps.shape[0]
    t = ctl[0]
    h = ctl[1]
    errold = ctl[2]
    rejected = ctl[3] != 0.0
    nonfinite = ctl[4] != 0.0
    tries = ctl[5]
    used = 0
    st = OK
    hacc = 0.0
    lacc = 0
    while True:
        l = _layer_at(tstops, t)
        te = _next_stop(tstops, t, T)
        if h <= 0.0:
            # Hairer's starting step from two field evaluations
            block_field_store(model, l, z, 1, Ps[qp, 0], Ss[q, 0], Ks[0, 0])
            h, d1 = initial_step_guess(z[0], Ks[0, 0, 0], rtol, atol)
            h = min(h, te - t)
            for i in range(d):
                znew[0, i] = z[0, i] + h * Ks[0, 0, 0, i]
            block_field_store(model, l, znew, 1, Ps[qp, 1], Ss[q, 1], Ks[0, 1])
            for i in range(d):
                e[i] = Ks[0, 1, 0, i] - Ks[0, 0, 0, i]
            d2 = wrms_norm(e, z[0], z[0], rtol, atol) / h
            h = min(initial_step_refine(h, d1, d2, 5), te - t)
        if tries >= max_steps:
            st = MAX_STEPS
            break
        last = False
        if t + h >= te:
            h = te - t
            last = True
        if h <= 16.0 * EPS * max(abs(t), abs(te)):
            st = NONFINITE if nonfinite else STEP_UNDERFLOW
            break
        for i in range(d):
            znew[0, i] = z[0, i]
        _step_store(model, l, h, znew, 1, TA, TB, need, Ys, Ps, Ss, Ks, q)
        for i in range(d):
            acc = 0.0
            for s in range(S):
                acc += TE[s] * Ks[0, s, 0, i]
            e[i] = h * acc
        err = wrms_norm(e, z[0], znew[0], rtol, atol)
        finite = True
        for i in range(d):
            finite &= math.isfinite(znew[0, i])
        tries += 1.0
        used += 1
        accept, fac, errold, nonfinite = pi_control(err, finite, errold, rejected, expo1)
        rejected = not accept
        if accept:
            hacc = h
            lacc = l
            t = te if last else t + h
            for i in range(d):
                z[0, i] = znew[0, i]
            h = h * fac
            break
        h = h * fac
    ctl[0] = t
    ctl[1] = h
    ctl[2] = errold
    ctl[3] = 1.0 if rejected else 0.0
    ctl[4] = 1.0 if nonfinite else 0.0
    ctl[5] = tries
    return st, hacc, lacc, used


@njit(cache=True, error_model="numpy", fastmath=EXACT)
def _dopri5_start(ctl, t0):
    ctl[0] = t0
    ctl[1] = 0.0
    ctl[2] = ERR_FLOOR
    ctl[3] = 0.0
    ctl[4] = 0.0
    ctl[5] = 0.0


# the two ways a step k is taken: a fixed-step schedule, or the adaptive controller
FIXED = 0
ADAPTIVE = 1


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _take_step(mode, model, k, z, znew, e, ctl, nb, cum, sh, sl, sw, T, tstops, TA, TB, TE,
               need, rtol, atol, max_steps, expo1, Ys, Ps, Ss, Ks, q):  # fmt: skip
    """Step ``k`` of ``z`` (and of ``ctl``), its stages left in the tape step ``q``
    (:func:`_step_store`). Returns ``(h, layer, ∂h/∂T weight of a fixed step, evaluations)``."""
    if mode == FIXED:
        g = 0
        while cum[g + 1] <= k:
            g += 1
        _step_store(model, sl[g], sh[g], z, nb, TA, TB, need, Ys, Ps, Ss, Ks, q)
        return sh[g], sl[g], sw[g], 1
    st, h, l, used = dopri5_accept(model, z, znew, e, ctl, T, tstops, TA, TB, TE, need, rtol,
                                   atol, max_steps, expo1, Ys, Ps, Ss, Ks, q)  # fmt: skip
    return h, l, 0.0, used


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _end_adjoint(z, C, R, Yt, scale, res, lo, nb, lam, ZT):
    """The adjoint ``lam`` of the end state ``z``: the cotangent ``C`` or, with targets ``Yt``,
    ``scale R^T (R z - y)`` (the residuals into ``res``); ``z`` copied into ``ZT``."""
    d = z.shape[1]
    p = R.shape[0]
    for r in range(nb):
        for i in range(d):
            ZT[lo + r, i] = z[r, i]
            lam[r, i] = C[lo + r, i] if Yt.shape[0] == 0 else 0.0
        if Yt.shape[0] > 0:
            for k in range(p):
                acc = -Yt[lo + r, k]
                for i in range(d):
                    acc += R[k, i] * z[r, i]
                res[lo + r, k] = acc
                c = scale * acc
                for i in range(d):
                    lam[r, i] += c * R[k, i]


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _reverse_tape(C, R, Yt, scale, res, lo, nb, n, model, TA, TB, need, Ys, Ps, Ss, th, tl, tw,
                  KB, PB, lay, z, lam, Ybar, gW, gA, gb, w, hbar, ZT, dZ0, dT, Ks):  # fmt: skip
    """The reverse sweep of ``n`` steps of rows ``lo .. lo + nb - 1`` whose stages are all on
    the tape (step ``k`` at tape step ``k``, size ``th[k]``, layer ``tl[k]``, ``∂h/∂T =
    tw[k]``), ``z`` the end state: no step is recomputed, and the arithmetic is that of
    :func:`_reverse_steps` (the same steps, the same windows)."""
    d = z.shape[1]
    for r in range(nb):
        dT[lo + r] = 0.0
    _end_adjoint(z, C, R, Yt, scale, res, lo, nb, lam, ZT)
    for k in range(n - 1, -1, -1):
        yend = z if k == n - 1 else Ys[k + 1, 0]
        _reverse_one(model, k, n, tl[k], th[k], tw[k], lo, nb, TA, TB, need, Ys, Ps, Ss, k, yend,
                     lam, KB, PB, lay, Ybar, gW, gA, gb, w, hbar, dT, Ks[0])  # fmt: skip
    for r in range(nb):
        for i in range(d):
            dZ0[lo + r, i] = lam[r, i]


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _reverse_steps(mode, model, Z0, C, R, Yt, scale, res, lo, nb, n, cum, sh, sl, sw, t0, T,
                   tstops, TA, TB, TE, needf, need, rtol, atol, max_steps, expo1, ckz, ckc, pos,
                   Ys, Ps, Ss, Ks, KB, PB, lay, z, znew, e, ctl, lam, Ybar, gW, gA, gb, w, hbar,
                   ZT, dZ0, dT, top0):  # fmt: skip
    """The forward sweep and the reverse sweep of the ``n`` steps of rows ``lo .. lo + nb - 1``
    with the ``s = ckz.shape[0]`` checkpoint slots ``ckz`` (s, block, d) (controller states
    ``ckc`` (s, NCTL), step indices ``pos`` (s,)): binomial checkpointing (Griewank 1992).

    The slots hold a stack of states at steps ``pos[0] = 0 < pos[1] < ...``; ``end`` is the
    first step not yet reversed. While ``end > 0``: with ``[a, end)`` the steps above the top
    slot, either advance ``revolve_split(end - a, s - top)`` steps from ``a`` and push the state
    there, or (one step left, or no free slot) advance to ``end - 1``, take that step storing
    its stages and reverse it. Each step is evaluated at most ``r + 1`` times, ``r`` the least
    integer with ``C(s + r, s) >= n``; the stored states are ``s`` whatever ``n``. Recomputed
    steps are bitwise the forward ones, so the result is that of storing every stage. The
    tape holds the ``m = KB.shape[0]`` steps of a window (:func:`_reverse_one`): step ``k`` is
    taken into tape step ``k % m`` while it is the next to be reversed (the window's reversed
    steps above it wait there for their flush). With ``top0 > 0`` the caller has stored the
    states of steps ``0 .. top0`` in slots ``0 .. top0`` already (``pos[k] = k``). Returns the
    number of step evaluations.
    """
    d = Z0.shape[1]
    s = ckz.shape[0]
    m = KB.shape[0]
    for r in range(nb):
        dT[lo + r] = 0.0
    top = top0
    if top0 == 0:
        for r in range(nb):
            for i in range(d):
                z[r, i] = Z0[lo + r, i]
        _dopri5_start(ctl, t0)
        pos[0] = 0
        for r in range(nb):
            for i in range(d):
                ckz[0, r, i] = z[r, i]
        for j in range(NCTL):
            ckc[0, j] = ctl[j]
    end = n
    nev = 0
    while end > 0:
        a = pos[top]
        if a == end:
            top -= 1
            continue
        for r in range(nb):
            for i in range(d):
                z[r, i] = ckz[top, r, i]
        for j in range(NCTL):
            ctl[j] = ckc[top, j]
        snaps = s - top
        q = (end - 1) % m  # free: the window's steps above end - 1 wait for their flush
        if end - a == 1 or snaps == 1:
            for k in range(a, end - 1):
                _, _, _, u = _take_step(mode, model, k, z, znew, e, ctl, nb, cum, sh, sl, sw, T,
                                        tstops, TA, TB, TE, needf, rtol, atol, max_steps, expo1,
                                        Ys, Ps, Ss, Ks, q)  # fmt: skip
                nev += u
            k = end - 1
            h, l, hw, u = _take_step(mode, model, k, z, znew, e, ctl, nb, cum, sh, sl, sw, T,
                                     tstops, TA, TB, TE, needf, rtol, atol, max_steps, expo1,
                                     Ys, Ps, Ss, Ks, q)  # fmt: skip
            nev += u
            if mode == ADAPTIVE and k == n - 1:
                hw = 1.0  # the last step ends at T: h = T - t
            if end == n:
                _end_adjoint(z, C, R, Yt, scale, res, lo, nb, lam, ZT)
            _reverse_one(model, k, n, l, h, hw, lo, nb, TA, TB, need, Ys, Ps, Ss, q, z, lam, KB,
                         PB, lay, Ybar, gW, gA, gb, w, hbar, dT, Ks[0])  # fmt: skip
            end -= 1
        else:
            mid = a + revolve_split(end - a, snaps)
            for k in range(a, mid):
                _, _, _, u = _take_step(mode, model, k, z, znew, e, ctl, nb, cum, sh, sl, sw, T,
                                        tstops, TA, TB, TE, needf, rtol, atol, max_steps, expo1,
                                        Ys, Ps, Ss, Ks, q)  # fmt: skip
                nev += u
            top += 1
            pos[top] = mid
            for r in range(nb):
                for i in range(d):
                    ckz[top, r, i] = z[r, i]
            for j in range(NCTL):
                ckc[top, j] = ctl[j]
    for r in range(nb):
        for i in range(d):
            dZ0[lo + r, i] = lam[r, i]
    return nev


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _sum_workers(aW, aA, ab, gW, gA, gb):
    nw, L, dW, hW = aW.shape
    H = gb.shape[1]
    d = gA.shape[2]
    for w in range(nw):
        for l in range(L):
            for i in range(dW):
                for j in range(hW):
                    gW[l, i, j] += aW[w, l, i, j]
            for j in range(H):
                gb[l, j] += ab[w, l, j]
                for i in range(d):
                    gA[l, j, i] += aA[w, l, j, i]


@njit(cache=True, parallel=True, error_model="numpy", fastmath=CONTRACT)
def rk_flow_vjp(model, Z0, C, R, Yt, scale, res, cum, sh, sl, sw, TA, TB, need, block, tape, ckz,
                ckc, pos, Yf, Pf, Sf, Kf, th, tl, tw, KBf, PBf, lay, aW, aA, ab, gW, gA, gb, ZT,
                dZ0, dT, nev):  # fmt: skip
    """Vector-Jacobian products of the fixed-step RK flow map of the built-in field for a batch.

    ``Z0`` (B, d) initial states, ``C`` (B, d) cotangents on the final states, or (loss mode,
    ``Yt`` (B, p) not empty) the cotangents ``scale R^T (R z_T - Yt)`` of the loss
    ``scale/2 sum ||R z_T - y||^2`` with the residuals written to ``res`` (B, p). Steps: piece
    ``g`` of the schedule is the steps ``cum[g] <= k < cum[g + 1]`` of size ``sh[g]`` in layer
    ``sl[g]``, ``∂h/∂T = sw[g]``; ``need[s]``: stage s enters the result.

    Blocks of ``block`` rows share the steps. With ``tape`` true every step's stages of a block
    are kept (the tape's ``cap >= n`` steps): one forward sweep, one reverse sweep; else the
    binomial checkpointing of :func:`_reverse_steps` with the slots ``ckz``. Either way the
    weight gradients of each window of ``m`` steps are added together (:func:`_flush_outer`),
    so both give the same bits. The blocks are handed to ``nw`` workers, each with its own
    gradient accumulators ``aW``/``aA``/``ab`` (nw, L, ...), zero on entry, and the workers to
    ``nl`` lanes (``prange``; at most one lane per thread), each with its own scratch
    (caller-allocated, so the memory is the caller's to see): the checkpoint slots ``ckz``
    (nl, s, block, d) with ``ckc`` (nl, s, NCTL) and ``pos`` (nl, s); the tape, flat: stage
    inputs ``Yf`` (nl, cap S block d), activations ``Sf`` (nl, cap S block H), pre-
    activations ``Pf`` (nl, cap S block H, or S block H of scratch for tanh), the steps'
    sizes ``th`` (nl, cap), layers ``tl`` and ``∂h/∂T`` ``tw``; one step's stages ``Kf`` (nl,
    S block d); the window's adjoints ``KBf`` (nl, m S block d), ``PBf`` (nl, m S block H)
    and layers ``lay`` (nl, m). Outputs: ``gW``/``gA``/``gb`` (L, ...) parameter gradients
    ``sum_r C_r·∂Z_T,r/∂θ`` (added to), ``ZT`` (B, d) final states, ``dZ0`` (B, d)
    ``(∂Z_T/∂Z0)^T C``, ``dT`` (B,) per-row ``C_r·∂Z_T,r/∂T``, ``nev`` (nblocks,) step
    evaluations per block. The worker accumulators are summed in worker order, so nothing
    depends on the number of threads or lanes. Returns 0.
    """
    B, d = Z0.shape
    H = gb.shape[1]
    S = TB.shape[0]
    nw = aA.shape[0]
    nl = Yf.shape[0]
    cap = th.shape[1]
    capP = Pf.shape[1] // (S * block * H)
    m = lay.shape[1]
    nblocks = (B + block - 1) // block
    n = cum[cum.shape[0] - 1]
    tstops = np.empty(0)
    tol = np.ones(d)  # (the controller's arguments, unused by fixed steps)
    for lane in prange(nl):
        z = np.empty((block, d))
        znew = np.empty((block, d))
        e = np.empty(d)
        ctl = np.empty(NCTL)
        lam = np.empty((block, d))
        Ybar = np.empty((block, d))
        hbar = np.empty(block)
        for w in range(lane, nw, nl):
            for ib in range(w, nblocks, nw):
                lo = ib * block
                nb = min(B, lo + block) - lo
                Ys = Yf[lane, : cap * S * nb * d].reshape((cap, S, nb, d))
                Ks = Kf[lane, : S * nb * d].reshape((1, S, nb, d))
                Ps = Pf[lane, : capP * S * nb * H].reshape((capP, S, nb, H))
                Ss = Sf[lane, : cap * S * nb * H].reshape((cap, S, nb, H))
                KB = KBf[lane, : m * S * nb * d].reshape((m, S, nb, d))
                PB = PBf[lane, : m * S * nb * H].reshape((m, S, nb, H))
                if tape:
                    for r in range(nb):
                        for i in range(d):
                            z[r, i] = Z0[lo + r, i]
                    g = 0
                    for k in range(n):
                        while cum[g + 1] <= k:
                            g += 1
                        _step_store(model, sl[g], sh[g], z, nb, TA, TB, need, Ys, Ps, Ss, Ks, k)
                        th[lane, k] = sh[g]
                        tl[lane, k] = sl[g]
                        tw[lane, k] = sw[g]
                    _reverse_tape(C, R, Yt, scale, res, lo, nb, n, model, TA, TB, need, Ys, Ps,
                                  Ss, th[lane], tl[lane], tw[lane], KB, PB, lay[lane], z,
                                  lam, Ybar, aW, aA, ab, w, hbar, ZT, dZ0, dT, Ks)  # fmt: skip
                    nev[ib] = n
                else:
                    nev[ib] = _reverse_steps(FIXED, model, Z0, C, R, Yt, scale, res, lo, nb, n,
                                             cum, sh, sl, sw, 0.0, 0.0, tstops, TA, TB, TB, need,
                                             need, tol, tol, 0, 0.0, ckz[lane], ckc[lane],
                                             pos[lane], Ys, Ps, Ss, Ks, KB, PB, lay[lane], z,
                                             znew, e, ctl, lam, Ybar, aW, aA, ab, w, hbar, ZT,
                                             dZ0, dT, 0)  # fmt: skip
    _sum_workers(aW, aA, ab, gW, gA, gb)
    return 0


@njit(cache=True, parallel=True, error_model="numpy", fastmath=CONTRACT)
def dopri5_flow_vjp(model, Z0, C, R, Yt, scale, res, t0, T, tstops, TA, TB, TE, need, rtol,
                    atol, max_steps, tape_cap, ckz, ckc, pos, Yf, Pf, Sf, Kf, th, tl, tw, KBf,
                    PBf, lay, aW, aA, ab, gW, gA, gb, ZT, dZ0, dT, ns, status,
                    nev):  # fmt: skip
    """Vector-Jacobian products of the adaptive Dormand-Prince flow map, the accepted steps
    held fixed, row by row: a first run counts the accepted steps (``ns`` (B,), ``status``
    (B,) as :func:`dopri5_accept`), keeping the first ``tape_cap`` accepted steps' stages on
    the row's tape (step sizes and layers with them) and every state while the slots last. A
    row of at most ``tape_cap`` steps is then reversed from its tape (:func:`_reverse_tape`);
    a longer one by the checkpointed sweeps as :func:`rk_flow_vjp` with ``block = 1`` (when
    the run took no more steps than there are slots, only the reverse sweep), each checkpoint
    holding the state and the controller state, so no step size is stored there. Both give
    the same bits. ``t0``, ``T``: the interval; ``tstops``: layer switches; ``TE``: the error
    weights; ``rtol``/``atol`` (d,). Rows that fail keep ``status`` and their last state in
    ``ZT`` and are not reversed. ``nev`` (B,): step evaluations per row (the counting run
    included). Other arguments as :func:`rk_flow_vjp` (the tape's ``cap >= tape_cap`` and
    ``cap >= m``). Returns 0.
    """
    B, d = Z0.shape
    H = gb.shape[1]
    S = TB.shape[0]
    nw = aA.shape[0]
    nl = Yf.shape[0]
    s = ckz.shape[1]
    cap = th.shape[1]
    capP = Pf.shape[1] // (S * H)
    m = lay.shape[1]
    expo1 = pi_exponent(5)
    needall = np.ones(S, np.bool_)
    cum = np.zeros(2, np.int64)
    sh = np.zeros(1)
    sl = np.zeros(1, np.int64)
    for lane in prange(nl):
        z = np.empty((1, d))
        znew = np.empty((1, d))
        e = np.empty(d)
        ctl = np.empty(NCTL)
        lam = np.empty((1, d))
        Ybar = np.empty((1, d))
        hbar = np.empty(1)
        Ys = Yf[lane].reshape((cap, S, 1, d))
        Ks = Kf[lane].reshape((1, S, 1, d))
        Ps = Pf[lane].reshape((capP, S, 1, H))
        Ss = Sf[lane].reshape((cap, S, 1, H))
        KB = KBf[lane].reshape((m, S, 1, d))
        PB = PBf[lane].reshape((m, S, 1, H))
        for w in range(lane, nw, nl):
            for r in range(w, B, nw):
                for i in range(d):
                    z[0, i] = Z0[r, i]
                _dopri5_start(ctl, t0)
                n = 0
                used = 0
                st = OK
                while ctl[0] < T:
                    if n < s:  # every state kept while the slots last
                        pos[lane, n] = n
                        for i in range(d):
                            ckz[lane, n, 0, i] = z[0, i]
                        for j in range(NCTL):
                            ckc[lane, n, j] = ctl[j]
                    q = min(n, cap - 1)  # every accepted step's stages while the tape lasts
                    st, h, l, u = dopri5_accept(model, z, znew, e, ctl, T, tstops, TA, TB, TE,
                                                needall, rtol, atol, max_steps, expo1, Ys, Ps,
                                                Ss, Ks, q)  # fmt: skip
                    used += u
                    if st != OK:
                        break
                    if n < cap:
                        th[lane, n] = h
                        tl[lane, n] = l
                        tw[lane, n] = 0.0
                    n += 1
                ns[r] = n
                status[r] = st
                if st != OK:
                    for i in range(d):
                        ZT[r, i] = z[0, i]
                    nev[r] = used
                    continue
                if n <= tape_cap:  # no step recomputed
                    tw[lane, n - 1] = 1.0  # the last step ends at T: h = T - t
                    _reverse_tape(C, R, Yt, scale, res, r, 1, n, model, TA, TB, need, Ys, Ps, Ss,
                                  th[lane], tl[lane], tw[lane], KB, PB, lay[lane], z, lam,
                                  Ybar, aW, aA, ab, w, hbar, ZT, dZ0, dT, Ks)  # fmt: skip
                    nev[r] = used
                    continue
                top0 = n - 1 if n <= s else 0  # every state already stored, or start over
                nev[r] = used + _reverse_steps(ADAPTIVE, model, Z0, C, R, Yt, scale, res, r, 1,
                                               n, cum, sh, sl, sh, t0, T, tstops, TA, TB, TE,
                                               needall, need, rtol, atol, max_steps, expo1,
                                               ckz[lane], ckc[lane], pos[lane], Ys, Ps, Ss, Ks,
                                               KB, PB, lay[lane], z, znew, e, ctl, lam, Ybar, aW,
                                               aA, ab, w, hbar, ZT, dZ0, dT, top0)  # fmt: skip
    _sum_workers(aW, aA, ab, gW, gA, gb)
    return 0


@njit(cache=True, parallel=True, error_model="numpy")
def dopri5_record_steps(model, Z0, t0, T, tstops, TA, TB, TE, rtol, atol, max_steps, hs, ls,
                        ns, status, ZT):  # fmt: skip
    """The accepted steps of adaptive Dormand-Prince runs of the rows of ``Z0`` from ``t0`` to
    ``T`` (for inspection and tests; the gradient does not store them): row r takes ``ns[r]``
    steps of sizes ``hs[r, :ns[r]]`` in layers ``ls[r]``, the steps of :func:`dopri5_accept`.
    ``status[r]`` as there, or ``MAX_STEPS`` when the capacity ``hs.shape[1]`` is reached.
    ``ZT`` gets the end states."""
    B, d = Z0.shape
    S = TB.shape[0]
    H = model[4].shape[1]
    cap = hs.shape[1]
    expo1 = pi_exponent(5)
    need = np.ones(S, np.bool_)
    for r in prange(B):
        z = np.empty((1, d))
        znew = np.empty((1, d))
        e = np.empty(d)
        ctl = np.empty(NCTL)
        Ys = np.empty((1, S, 1, d))
        Ks = np.empty((1, S, 1, d))
        Ps = np.empty((1, S, 1, H))
        Ss = np.empty((1, S, 1, H))
        for i in range(d):
            z[0, i] = Z0[r, i]
        _dopri5_start(ctl, t0)
        n = 0
        st = OK
        while ctl[0] < T:
            if n >= cap:
                st = MAX_STEPS
                break
            st, h, l, _ = dopri5_accept(model, z, znew, e, ctl, T, tstops, TA, TB, TE, need,
                                        rtol, atol, max_steps, expo1, Ys, Ps, Ss, Ks,
                                        0)  # fmt: skip
            if st != OK:
                break
            hs[r, n] = h
            ls[r, n] = l
            n += 1
        ns[r] = n
        status[r] = st
        for i in range(d):
            ZT[r, i] = z[0, i]
    return 0
