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

Memory: the state at the start of every ``spacing``-th step is stored on the forward sweep;
the reverse sweep recomputes one segment of ``spacing`` steps at a time from its checkpoint,
storing that segment's stage values, and runs back through it. Per block of rows the memory is
``(n / spacing) nb d`` (checkpoints) plus ``spacing S nb (2 d + 2 H)`` (one segment's stages):
with ``spacing ~ sqrt(n)`` it grows like ``sqrt(n)``, the extra cost is one more forward sweep.

Rows are independent: blocks of ``block`` rows share the step schedule; the blocks are handed
to ``nw`` workers (``prange``), each with its own gradient accumulator, and the accumulators are
summed in worker order at the end, so results do not depend on the number of threads.
"""

import math

import numpy as np
from numba import njit, prange

from .activations import TANH, act, dact, tanh_fast
from .control import (
    CONTRACT,
    EPS,
    ERR_FLOOR,
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
def block_field_vjp(model, l, X, nb, P, Sg, kbar, gW, gA, gb, w, sbar, Ybar):
    """Reverse of :func:`block_field_store`: accumulate ``gW[w, l]``, ``gA[w, l]``, ``gb[w, l]``
    and write ``Ybar = Df_l(X)^T kbar`` (nb, d); ``sbar`` (nb, H) is scratch."""
    W, WT, A, AT, b, code, form = model
    d = X.shape[1]
    H = b.shape[1]
    if form == FORM_OUTER:
        for r in range(nb):
            for j in range(H):
                sbar[r, j] = 0.0
        block_matmul_acc(W, l, kbar, nb, d, sbar, H)  # σ̄ = k̄ W_l
        for r in range(nb):
            for i in range(d):
                c = kbar[r, i]
                if c != 0.0:
                    for j in range(H):
                        gW[w, l, i, j] += c * Sg[r, j]
    else:
        for r in range(nb):
            for j in range(H):
                sbar[r, j] = kbar[r, j]
    # p̄ = σ'(p) σ̄ (in sbar)
    if code == TANH:
        for r in range(nb):
            for j in range(H):
                s = Sg[r, j]
                sbar[r, j] *= 1.0 - s * s
    else:
        for r in range(nb):
            for j in range(H):
                sbar[r, j] *= dact(code, P[r, j])
    for r in range(nb):
        for j in range(H):
            c = sbar[r, j]
            gb[w, l, j] += c
            if c != 0.0:
                for i in range(d):
                    gA[w, l, j, i] += c * X[r, i]
    for r in range(nb):
        for i in range(d):
            Ybar[r, i] = 0.0
    block_matmul_acc(A, l, sbar, nb, H, Ybar, d)  # Ȳ = p̄ A_l
    return 0


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _step_store(model, l, h, z, nb, TA, TB, need, Ys, Ps, Ss, Ks, q):
    """One RK step ``z <- z + h sum B_s k_s`` of the rows ``< nb``, its stage inputs, pre-
    activations, activations and stages stored in ``Ys[q, s]``, ``Ps``, ``Ss``, ``Ks``."""
    S = TB.shape[0]
    d = z.shape[1]
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
                        Ys[q, s, r, i] += c * Ks[q, j, r, i]
        block_field_store(model, l, Ys[q, s], nb, Ps[q, s], Ss[q, s], Ks[q, s])
    for s in range(S):
        c = h * TB[s]
        if c != 0.0:
            for r in range(nb):
                for i in range(d):
                    z[r, i] += c * Ks[q, s, r, i]


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _step_reverse(model, l, h, nb, TA, TB, need, Ys, Ps, Ss, Ks, q, lam, kbar, Ybar, sbar,
                  gW, gA, gb, w, hbar):  # fmt: skip
    """Reverse of step ``q`` (stored by :func:`_step_store`): ``lam`` (nb, d) goes from the
    adjoint of the step's result to that of its start; ``hbar[r]`` gets ``∂/∂h`` of row r."""
    S = TB.shape[0]
    d = lam.shape[1]
    for r in range(nb):
        hb = 0.0
        for s in range(S):
            if TB[s] != 0.0:
                acc = 0.0
                for i in range(d):
                    acc += lam[r, i] * Ks[q, s, r, i]
                hb += TB[s] * acc
        hbar[r] = hb
    for s in range(S):
        c = h * TB[s]
        for r in range(nb):
            for i in range(d):
                kbar[s, r, i] = c * lam[r, i]
    for s in range(S - 1, -1, -1):
        if not need[s]:
            continue
        block_field_vjp(model, l, Ys[q, s], nb, Ps[q, s], Ss[q, s], kbar[s], gW, gA, gb, w,
                        sbar, Ybar)  # fmt: skip
        for r in range(nb):
            for i in range(d):
                lam[r, i] += Ybar[r, i]
        for j in range(s):
            a = TA[s, j]
            if a != 0.0:
                c = h * a
                for r in range(nb):
                    acc = 0.0
                    for i in range(d):
                        yb = Ybar[r, i]
                        kbar[j, r, i] += c * yb
                        acc += yb * Ks[q, j, r, i]
                    hbar[r] += a * acc


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _block_vjp(model, Z0, C, R, Yt, scale, res, lo, nb, hs, ls, hw, n, TA, TB, need, spacing,
               ckpt, Ys, Ps, Ss, Ks, z, lam, kbar, Ybar, sbar, gW, gA, gb, w, hbar, ZT, dZ0,
               dT):  # fmt: skip
    """Forward sweep with checkpoints, then the reverse sweep, for rows ``lo .. lo + nb - 1``
    sharing the ``n`` steps ``hs[:n]`` (layers ``ls``, ``∂h/∂T`` weights ``hw``). The adjoint
    of the end state is ``C`` or, with targets ``Yt`` (B, p), ``scale R^T (R z_T - y)`` (the
    residuals into ``res``)."""
    d = Z0.shape[1]
    for r in range(nb):
        for i in range(d):
            z[r, i] = Z0[lo + r, i]
    nseg = (n + spacing - 1) // spacing
    for k in range(n):
        if k % spacing == 0:
            g = k // spacing
            for r in range(nb):
                for i in range(d):
                    ckpt[g, r, i] = z[r, i]
        _step_store(model, ls[k], hs[k], z, nb, TA, TB, need, Ys, Ps, Ss, Ks, 0)
    p = R.shape[0]
    for r in range(nb):
        dT[lo + r] = 0.0
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
    for g in range(nseg - 1, -1, -1):
        k0 = g * spacing
        k1 = min(n, k0 + spacing)
        for r in range(nb):
            for i in range(d):
                z[r, i] = ckpt[g, r, i]
        for k in range(k0, k1):
            _step_store(model, ls[k], hs[k], z, nb, TA, TB, need, Ys, Ps, Ss, Ks, k - k0)
        for k in range(k1 - 1, k0 - 1, -1):
            _step_reverse(model, ls[k], hs[k], nb, TA, TB, need, Ys, Ps, Ss, Ks, k - k0, lam,
                          kbar, Ybar, sbar, gW, gA, gb, w, hbar)  # fmt: skip
            if hw[k] != 0.0:
                for r in range(nb):
                    dT[lo + r] += hw[k] * hbar[r]
    for r in range(nb):
        for i in range(d):
            dZ0[lo + r, i] = lam[r, i]


@njit(cache=True, parallel=True, error_model="numpy", fastmath=CONTRACT)
def rk_flow_vjp(model, Z0, C, R, Yt, scale, res, hs, ls, hw, ns, TA, TB, need, spacing, block,
                ckpt, Ys, Ps, Ss, Ks, aW, aA, ab, gW, gA, gb, ZT, dZ0, dT):  # fmt: skip
    """Vector-Jacobian products of the RK flow map of the built-in field for a batch.

    ``Z0`` (B, d) initial states, ``C`` (B, d) cotangents on the final states, or (loss mode,
    ``Yt`` (B, p) not empty) the cotangents ``scale R^T (R z_T - Yt)`` of the loss
    ``scale/2 sum ||R z_T - y||^2`` with the residuals written to ``res`` (B, p). Step
    schedule: ``hs``/``ls``/``hw`` (R, nmax) step sizes, layers and ``∂h/∂T``, ``ns`` (R,) step
    counts, with R = 1 (every row takes the same steps) or R = B (row r its own steps; then
    ``block`` must be 1). ``need[s]``: stage s enters the result. ``spacing``: steps per
    checkpoint. Scratch of each of the ``nw`` workers (caller-allocated, so the memory is the
    caller's to see): ``ckpt`` (nw, nmax / spacing + 1, block, d), ``Ys``/``Ks`` (nw, spacing,
    S, block, d), ``Ps``/``Ss`` (nw, spacing, S, block, H), gradient accumulators ``aW``/``aA``/
    ``ab`` (nw, L, ...), zero on entry. Outputs: ``gW``/``gA``/``gb`` (L, ...) parameter
    gradients ``sum_r C_r·∂Z_T,r/∂θ`` (added to), ``ZT`` (B, d) final states, ``dZ0`` (B, d)
    ``(∂Z_T/∂Z0)^T C``, ``dT`` (B,) per-row ``C_r·∂Z_T,r/∂T``. The worker accumulators are
    summed in worker order. Returns 0.
    """
    B, d = Z0.shape
    L = gb.shape[0]
    H = gb.shape[1]
    S = TB.shape[0]
    nw = aA.shape[0]
    nblocks = (B + block - 1) // block
    dW = aW.shape[2]
    hW = aW.shape[3]
    for w in prange(nw):
        z = np.empty((block, d))
        lam = np.empty((block, d))
        kbar = np.empty((S, block, d))
        Ybar = np.empty((block, d))
        sbar = np.empty((block, H))
        hbar = np.empty(block)
        for ib in range(w, nblocks, nw):
            lo = ib * block
            nb = min(B, lo + block) - lo
            rr = lo if hs.shape[0] > 1 else 0
            _block_vjp(model, Z0, C, R, Yt, scale, res, lo, nb, hs[rr], ls[rr], hw[rr], ns[rr], TA,
                       TB, need, spacing, ckpt[w], Ys[w], Ps[w], Ss[w], Ks[w], z, lam, kbar, Ybar,
                       sbar, aW, aA, ab, w, hbar, ZT, dZ0, dT)  # fmt: skip
    for w in range(nw):
        for l in range(L):
            for i in range(dW):
                for j in range(hW):
                    gW[l, i, j] += aW[w, l, i, j]
            for j in range(H):
                gb[l, j] += ab[w, l, j]
                for i in range(d):
                    gA[l, j, i] += aA[w, l, j, i]
    return 0


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


@njit(cache=True, parallel=True, error_model="numpy")
def dopri5_record_steps(model, Z0, t0, T, tstops, TA, TB, TE, rtol, atol, max_steps, hs, ls,
                        ns, status, ZT):  # fmt: skip
    """Adaptive Dormand-Prince runs of the rows of ``Z0`` from ``t0`` to ``T``, recording the
    accepted steps: row r takes ``ns[r]`` steps of sizes ``hs[r, :ns[r]]`` in layers ``ls[r]``
    (never across a layer switch ``tstops``). Step-size control as the package's solver (PI
    controller on the weighted RMS norm of the embedded error estimate, Hairer's starting
    step). ``status[r]``: ``OK``, ``NONFINITE``, ``STEP_UNDERFLOW`` or ``MAX_STEPS`` (the
    capacity ``hs.shape[1]`` or ``max_steps``, whichever is less). ``ZT`` gets the end states.
    """
    B, d = Z0.shape
    S = TB.shape[0]
    H = model[4].shape[1]
    cap = min(hs.shape[1], max_steps)
    expo1 = pi_exponent(5)
    need = np.ones(S, np.bool_)
    for r in prange(B):
        z = np.empty((1, d))
        znew = np.empty((1, d))
        e = np.empty(d)
        Ys = np.empty((1, S, 1, d))
        Ks = np.empty((1, S, 1, d))
        Ps = np.empty((1, S, 1, H))
        Ss = np.empty((1, S, 1, H))
        for i in range(d):
            z[0, i] = Z0[r, i]
        t = t0
        h = 0.0
        errold = ERR_FLOOR
        rejected = False
        nonfinite = False
        n = 0
        tries = 0
        st = OK
        while t < T:
            l = _layer_at(tstops, t)
            te = _next_stop(tstops, t, T)
            if h <= 0.0:
                # Hairer's starting step from two field evaluations
                block_field_store(model, l, z, 1, Ps[0, 0], Ss[0, 0], Ks[0, 0])
                h, d1 = initial_step_guess(z[0], Ks[0, 0, 0], rtol, atol)
                h = min(h, te - t)
                for i in range(d):
                    znew[0, i] = z[0, i] + h * Ks[0, 0, 0, i]
                block_field_store(model, l, znew, 1, Ps[0, 1], Ss[0, 1], Ks[0, 1])
                for i in range(d):
                    e[i] = Ks[0, 1, 0, i] - Ks[0, 0, 0, i]
                d2 = wrms_norm(e, z[0], z[0], rtol, atol) / h
                h = min(initial_step_refine(h, d1, d2, 5), te - t)
            if tries >= max_steps or n >= cap:
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
            _step_store(model, l, h, znew, 1, TA, TB, need, Ys, Ps, Ss, Ks, 0)
            for i in range(d):
                acc = 0.0
                for s in range(S):
                    acc += TE[s] * Ks[0, s, 0, i]
                e[i] = h * acc
            err = wrms_norm(e, z[0], znew[0], rtol, atol)
            finite = True
            for i in range(d):
                finite &= math.isfinite(znew[0, i])
            tries += 1
            accept, fac, errold, nonfinite = pi_control(err, finite, errold, rejected, expo1)
            rejected = not accept
            if accept:
                hs[r, n] = h
                ls[r, n] = l
                n += 1
                t = te if last else t + h
                for i in range(d):
                    z[0, i] = znew[0, i]
            h = h * fac
        ns[r] = n
        status[r] = st
        for i in range(d):
            ZT[r, i] = z[0, i]
    return 0
