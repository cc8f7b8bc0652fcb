"""Delay differential equations x'(t) = f(t, x(t), x(t - tau_1), ..., x(t - tau_m)) by the
method of steps.

Each trajectory keeps a ring buffer of its accepted step points ``(t_k, x_k, f_k)``; a delayed
value x(s) with ``t0 < s <= t_n`` is the cubic Hermite interpolant of the ring interval holding
``s`` (values and derivatives at both ends), and for ``s <= t0`` it is the history (a constant
vector, Hermite interpolation of past samples, or a user's jitted function of time). Nodes older
than ``t_n - max(tau)`` are dropped, so memory is O(history window), not O(run length).

When a delay is shorter than the step, a delayed time falls inside the step being taken; the step
is then repeated as a fixed-point iteration in which those values come from the Hermite cubic of
the tentative step (the first pass extrapolates linearly from the last node).

Two methods share the loop (``method`` code):

- ``RK4`` (0): the classic fourth-order method on the grid ``t0 + k dt``; a step that would cross
  a derivative discontinuity (``disc``) is split there, so delays need not be multiples of dt.
- ``DOPRI5`` (1): Dormand-Prince 5(4) with Hairer's PI step-size controller. The error that is
  controlled is the larger of the embedded estimate and the error of the Hermite cubic that will
  later serve delayed values: its difference from the order-4 continuous extension, which at the
  midpoint of the step is ``|h sum_s D_s k_s| / 16``. Steps land exactly on the propagated
  discontinuities ``t0 + sum_i n_i tau_i`` (as production DDE solvers do).

Built-in fields (``model`` code, parameters packed in ``ip`` (int64) and ``P`` (float64)):

- ``LINEAR`` (1): x' = A x + sum_k B_k x(t - tau_k); ``P = [A (d*d), B (m*d*d)]``.
- ``NEURAL`` (2): x' = W_l sigma(A_l x + sum_k B_lk x(t - tau_k) + b_l), layer ``l`` active on
  ``[t_layers[l], t_layers[l + 1])``; ``ip = [model, d, m, L, H, act, oW, oA, oB, ob]``,
  ``P = [t_layers (L + 1), W (L, d, H), A (L, H, d), B (L, m, H, d), b (L, H)]``.
- ``MACKEY_GLASS`` (3): x' = beta x(t - tau_1) / (1 + x(t - tau_1)^n) - gamma x (per component);
  ``P = [beta, gamma, n]``.

A user field ``fn(t, x, xd, args, out)`` (``xd`` of shape (m, d)) replaces the built-in when
``fn`` is not None; a user history ``hfn(t, p, out)`` gets its member's parameter row ``p``.

Per-trajectory state between calls (so a long run advances chunk by chunk): the ring arrays
``rt`` (B, cap), ``ry``/``rfl``/``rfr`` (B, cap, d) (left and right derivative at each node; they
differ only where f jumps in time), ``ist`` (B, 8) int64 ``[head, count, disc pointer, grid index,
accepted, rejected, f evaluations, status]`` and ``fst`` (B, 2) ``[proposed h, PI memory]``.

References
----------
A. Bellen, M. Zennaro, "Numerical Methods for Delay Differential Equations", Oxford 2003
(method of steps, continuous extensions, discontinuity tracking). E. Hairer, S. P. Norsett,
G. Wanner, "Solving Ordinary Differential Equations I", Springer 1993, sections II.4-II.6.
"""

import math

import numpy as np
from numba import njit, prange

from .activations import act
from .rk import DOPRI5_A, DOPRI5_C, DOPRI5_D, DOPRI5_E, RK4_A, RK4_B, RK4_C

# status codes (the first four as in kernels.rk)
OK, NONFINITE, STEP_UNDERFLOW, MAX_STEPS, RING_FULL = 0, 1, 2, 3, 4
# methods, built-in models, history kinds
RK4, DOPRI5 = 0, 1
USER, LINEAR, NEURAL, MACKEY_GLASS = 0, 1, 2, 3
H_CONST, H_SAMPLES, H_FUNC = 0, 1, 2
# integer state slots
I_HEAD, I_COUNT, I_DISC, I_GRID, I_ACC, I_REJ, I_NFEV, I_STATUS = 0, 1, 2, 3, 4, 5, 6, 7
F_H, F_FACOLD = 0, 1

_SAFETY = 0.9
_BETA = 0.04
_EXPO1 = 0.2 - 0.75 * _BETA
_FAC_MIN = 0.2
_FAC_MAX = 10.0
_EPS = 2.220446049250313e-16
_MAX_ITER = 30  # fixed-point passes when a delay is shorter than the step
_ITER_TOL_DOPRI = 1e-3  # iteration converged: change below this in units of the error tolerance
_ITER_TOL_RK4 = 1e-13  # relative change at which the RK4 iteration stops


@njit(cache=True)
def hermite_eval(ta, ya, fa, tb, yb, fb, s, out):
    """Cubic Hermite interpolant through ``(ta, ya, fa)`` and ``(tb, yb, fb)`` at ``s``."""
    h = tb - ta
    th = (s - ta) / h
    th1 = 1.0 - th
    for i in range(out.shape[0]):
        dy = yb[i] - ya[i]
        r3 = h * fa[i] - dy
        r4 = dy - h * fb[i] - r3
        out[i] = ya[i] + th * (dy + th1 * (r3 + th * r4))


@njit(cache=True)
def history_eval(hkind, hist, hfn, s, out):
    """The history at ``s <= t0``: constant, Hermite samples, or ``hfn(s, p, out)``."""
    hc, hst, hsy, hsdy, hp = hist
    if hkind == H_CONST:
        for i in range(out.shape[0]):
            out[i] = hc[i]
    elif hkind == H_SAMPLES:
        n = hst.shape[0]
        if s <= hst[0]:
            for i in range(out.shape[0]):
                out[i] = hsy[0, i]
            return
        if s >= hst[n - 1]:
            for i in range(out.shape[0]):
                out[i] = hsy[n - 1, i]
            return
        lo = 0
        hi = n - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if hst[mid] <= s:
                lo = mid
            else:
                hi = mid
        hermite_eval(hst[lo], hsy[lo], hsdy[lo], hst[hi], hsy[hi], hsdy[hi], s, out)
    else:
        if hfn is None:
            for i in range(out.shape[0]):
                out[i] = math.nan
        else:
            hfn(s, hp, out)


@njit(cache=True)
def ring_eval(ring, head, cnt, s, out):
    """Hermite value at ``s`` from the ring interval holding it (``T_0 <= s <= T_last``)."""
    rt, ry, rfl, rfr = ring
    cap = rt.shape[0]
    if cnt == 1:
        for i in range(out.shape[0]):
            out[i] = ry[head, i]
        return
    lo = 0
    hi = cnt - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if rt[(head + mid) % cap] <= s:
            lo = mid
        else:
            hi = mid
    a = (head + lo) % cap
    b = (head + hi) % cap
    hermite_eval(rt[a], ry[a], rfr[a], rt[b], ry[b], rfl[b], s, out)


@njit(cache=True)
def builtin_rhs(model, ip, P, tl, x, xd, z, out):
    """Built-in vector field (``model`` code) at state ``x``, delayed states ``xd`` (m, d)."""
    d = x.shape[0]
    m = xd.shape[0]
    if model == LINEAR:
        off = d * d
        for i in range(d):
            s = 0.0
            for j in range(d):
                s += P[i * d + j] * x[j]
            for k in range(m):
                base = off + (k * d + i) * d
                for j in range(d):
                    s += P[base + j] * xd[k, j]
            out[i] = s
    elif model == MACKEY_GLASS:
        beta = P[0]
        gamma = P[1]
        n = P[2]
        for i in range(d):
            v = xd[0, i]
            out[i] = beta * v / (1.0 + v**n) - gamma * x[i]
    else:
        L = ip[3]
        H = ip[4]
        code = ip[5]
        oW = ip[6]
        oA = ip[7]
        oB = ip[8]
        ob = ip[9]
        lay = 0
        while lay < L - 1 and P[lay + 1] <= tl:
            lay += 1
        aoff = oA + lay * H * d
        boff = oB + lay * m * H * d
        for r in range(H):
            s = P[ob + lay * H + r]
            for j in range(d):
                s += P[aoff + r * d + j] * x[j]
            for k in range(m):
                base = boff + (k * H + r) * d
                for j in range(d):
                    s += P[base + j] * xd[k, j]
            z[r] = act(code, s)
        woff = oW + lay * d * H
        for i in range(d):
            s = 0.0
            for r in range(H):
                s += P[woff + i * H + r] * z[r]
            out[i] = s


@njit(cache=True)
def dde_field(
    fn,
    args,
    model,
    ip,
    P,
    hkind,
    hist,
    hfn,
    t0,
    taus,
    ring,
    head,
    cnt,
    tent_t,
    tent_y,
    tent_f,
    tent_ok,
    t,
    tl,
    x,
    xd,
    z,
    out,
):
    """f(t, x, x(t - tau_k)) into ``out``; returns 1 if a delayed time fell past the last node.

    Delayed values past the last node come from the tentative step ``(tent_t, tent_y, tent_f)``
    when ``tent_ok``, else from a linear extrapolation of the last node.
    """
    rt, ry, rfl, rfr = ring
    cap = rt.shape[0]
    last = (head + cnt - 1) % cap
    tlast = rt[last]
    over = 0
    for k in range(taus.shape[0]):
        s = t - taus[k]
        row = xd[k]
        if s <= t0:
            history_eval(hkind, hist, hfn, s, row)
        elif s <= tlast:
            ring_eval(ring, head, cnt, s, row)
        else:
            over = 1
            if tent_ok:
                hermite_eval(tlast, ry[last], rfr[last], tent_t, tent_y, tent_f, s, row)
            else:
                for i in range(row.shape[0]):
                    row[i] = ry[last, i] + (s - tlast) * rfr[last, i]
    if fn is None:
        builtin_rhs(model, ip, P, tl, x, xd, z, out)
    else:
        fn(t, x, xd, args, out)
    return over


@njit(cache=True)
def _all_finite(v):
    for i in range(v.shape[0]):
        if not math.isfinite(v[i]):
            return False
    return True


@njit(cache=True)
def _wrms(e, y, ynew, rtol, atol):
    d = e.shape[0]
    acc = 0.0
    for i in range(d):
        sc = atol + rtol * max(abs(y[i]), abs(ynew[i]))
        q = e[i] / sc
        acc += q * q
    return math.sqrt(acc / d)


@njit(cache=True)
def _dense_dopri(y, ynew, k, h, th, out):
    """Hairer's order-4 continuous extension of a Dormand-Prince step at fraction ``th``."""
    th1 = 1.0 - th
    for i in range(y.shape[0]):
        dy = ynew[i] - y[i]
        r3 = h * k[0, i] - dy
        r4 = dy - h * k[6, i] - r3
        r5 = 0.0
        for s in range(7):
            r5 += DOPRI5_D[s] * k[s, i]
        r5 *= h
        out[i] = y[i] + th * (dy + th1 * (r3 + th * (r4 + th1 * r5)))


@njit(cache=True)
def dde_advance_one(
    fn,
    args,
    model,
    ip,
    P,
    hkind,
    hist,
    hfn,
    t0,
    taus,
    disc,
    djump,
    method,
    dt,
    rtol,
    atol,
    hmax,
    t_end,
    tout,
    yout,
    b,
    ring,
    ist,
    fst,
    max_steps,
    H,
):
    """Advance one trajectory to ``t_end``, writing ``yout[j, b]`` for the times ``tout[j]``.

    Initialises the ring from the history at ``t0`` when it is empty. Returns the status.
    """
    rt, ry, rfl, rfr = ring
    cap = rt.shape[0]
    d = ry.shape[1]
    m = taus.shape[0]
    taumax = 0.0
    for k in range(m):
        taumax = max(taumax, taus[k])
    nst = 7 if method == DOPRI5 else 4
    K = np.empty((7, d))
    y = np.empty(d)
    ynew = np.empty(d)
    ytmp = np.empty(d)
    tent_y = np.empty(d)
    tent_f = np.empty(d)
    err = np.empty(d)
    xd = np.empty((m, d))
    z = np.empty(max(H, 1))
    tiny = 1e-9 * (1.0 + abs(t0))
    if ist[I_STATUS] == RING_FULL:
        ist[I_STATUS] = OK
    if ist[I_STATUS] != OK:
        return ist[I_STATUS]

    if ist[I_COUNT] == 0:
        ist[I_HEAD] = 0
        ist[I_COUNT] = 1
        rt[0] = t0
        history_eval(hkind, hist, hfn, t0, ry[0])
        dde_field(
            fn,
            args,
            model,
            ip,
            P,
            hkind,
            hist,
            hfn,
            t0,
            taus,
            ring,
            0,
            1,
            t0,
            tent_y,
            tent_f,
            False,
            t0,
            t0 + tiny,
            ry[0],
            xd,
            z,
            rfr[0],
        )
        ist[I_NFEV] += 1
        for i in range(d):
            rfl[0, i] = rfr[0, i]
        if not _all_finite(rfr[0]):
            ist[I_STATUS] = NONFINITE
            return NONFINITE

    head = ist[I_HEAD]
    cnt = ist[I_COUNT]
    last = (head + cnt - 1) % cap
    t = rt[last]
    for i in range(d):
        y[i] = ry[last, i]

    # outputs at (or before) the current time: already written except one equal to t
    nout = tout.shape[0]
    j = 0
    while j < nout and tout[j] <= t:
        if tout[j] == t:
            for i in range(d):
                yout[j, b, i] = y[i]
        j += 1

    if method == DOPRI5 and fst[F_H] <= 0.0:
        # initial step: 1% of |y| / |f| in the tolerance norm (Hairer's first guess)
        d0 = 0.0
        d1 = 0.0
        for i in range(d):
            sc = atol + rtol * abs(y[i])
            d0 += (y[i] / sc) ** 2
            d1 += (rfr[last, i] / sc) ** 2
        d0 = math.sqrt(d0 / d)
        d1 = math.sqrt(d1 / d)
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        fst[F_H] = min(h0, hmax)
        fst[F_FACOLD] = 1e-4

    ndisc = disc.shape[0]
    nsteps = 0
    rejected_last = False
    status = OK
    while t < t_end:
        if nsteps >= max_steps:
            status = MAX_STEPS
            break
        # --- choose the step and where it ends --------------------------------------------
        dp = ist[I_DISC]
        while dp < ndisc and disc[dp] <= t + tiny:
            dp += 1
        ist[I_DISC] = dp
        stop = t_end
        hit_disc = False
        if dp < ndisc and disc[dp] < t_end - tiny:
            stop = disc[dp]
            hit_disc = True
        on_grid = False
        if method == RK4:
            g = t0 + (ist[I_GRID] + 1) * dt
            if abs(stop - g) <= 1e-9 * dt:
                tnew = stop  # a stop on a grid point: take it exactly
                on_grid = True
            elif stop < g:
                tnew = stop
            else:
                tnew = g
                on_grid = True
                hit_disc = False
        else:
            h = min(fst[F_H], hmax)
            gap = stop - t
            if gap <= 1.05 * h:
                tnew = stop
            else:
                hit_disc = False
                if gap < 2.0 * h:
                    h = 0.5 * gap
                tnew = t + h
        land = tnew == stop
        h = tnew - t
        if h <= 16.0 * _EPS * max(abs(t), 1.0):
            status = STEP_UNDERFLOW
            break
        tl = t + 0.5 * h  # layer of a time-dependent built-in: the one holding the step
        # --- the step, iterated when a delayed time falls inside it -------------------------
        for i in range(d):
            K[0, i] = rfr[last, i]
        tent_ok = False
        for _it in range(_MAX_ITER):
            over = 0
            if method == DOPRI5:
                for s in range(1, 7):
                    for i in range(d):
                        acc = 0.0
                        for q in range(s):
                            acc += DOPRI5_A[s, q] * K[q, i]
                        ytmp[i] = y[i] + h * acc
                    over |= dde_field(
                        fn,
                        args,
                        model,
                        ip,
                        P,
                        hkind,
                        hist,
                        hfn,
                        t0,
                        taus,
                        ring,
                        head,
                        cnt,
                        tnew,
                        tent_y,
                        tent_f,
                        tent_ok,
                        tnew if s == 6 else t + DOPRI5_C[s] * h,
                        tl,
                        ytmp,
                        xd,
                        z,
                        K[s],
                    )
                for i in range(d):
                    ynew[i] = ytmp[i]  # stage 7 input is the fifth-order solution (FSAL)
                ist[I_NFEV] += 6
            else:
                for s in range(1, 4):
                    for i in range(d):
                        acc = 0.0
                        for q in range(s):
                            acc += RK4_A[s, q] * K[q, i]
                        ytmp[i] = y[i] + h * acc
                    over |= dde_field(
                        fn,
                        args,
                        model,
                        ip,
                        P,
                        hkind,
                        hist,
                        hfn,
                        t0,
                        taus,
                        ring,
                        head,
                        cnt,
                        tnew,
                        tent_y,
                        tent_f,
                        tent_ok,
                        t + RK4_C[s] * h,
                        tl,
                        ytmp,
                        xd,
                        z,
                        K[s],
                    )
                for i in range(d):
                    acc = 0.0
                    for q in range(4):
                        acc += RK4_B[q] * K[q, i]
                    ynew[i] = y[i] + h * acc
                # derivative at the new node (the next step's first stage)
                over |= dde_field(
                    fn,
                    args,
                    model,
                    ip,
                    P,
                    hkind,
                    hist,
                    hfn,
                    t0,
                    taus,
                    ring,
                    head,
                    cnt,
                    tnew,
                    tent_y,
                    tent_f,
                    tent_ok,
                    tnew,
                    tl,
                    ynew,
                    xd,
                    z,
                    K[6],
                )
                ist[I_NFEV] += 4
            if over == 0:
                break
            if tent_ok:
                for i in range(d):
                    err[i] = ynew[i] - tent_y[i]
                if method == DOPRI5:
                    chg = _wrms(err, y, ynew, rtol, atol)
                    if chg <= _ITER_TOL_DOPRI:
                        break
                else:
                    chg = 0.0
                    scl = 0.0
                    for i in range(d):
                        chg = max(chg, abs(err[i]))
                        scl = max(scl, abs(ynew[i]))
                    if chg <= _ITER_TOL_RK4 * (1.0 + scl):
                        break
            for i in range(d):
                tent_y[i] = ynew[i]
                tent_f[i] = K[6, i]
            tent_ok = True
        nsteps += 1
        finite = _all_finite(ynew) and _all_finite(K[6])
        # --- accept or reject --------------------------------------------------------------
        if method == DOPRI5:
            for i in range(d):
                acc = 0.0
                for s in range(nst):
                    acc += DOPRI5_E[s] * K[s, i]
                err[i] = h * acc
            e_step = _wrms(err, y, ynew, rtol, atol)
            for i in range(d):
                acc = 0.0
                for s in range(7):
                    acc += DOPRI5_D[s] * K[s, i]
                err[i] = h * acc / 16.0
            e_int = _wrms(err, y, ynew, rtol, atol)
            en = max(e_step, e_int)
            if not finite or not math.isfinite(en):
                ist[I_REJ] += 1
                fst[F_H] = 0.25 * h
                rejected_last = True
                if fst[F_H] <= 16.0 * _EPS * max(abs(t), 1.0):
                    status = NONFINITE
                    break
                continue
            fac11 = en**_EXPO1
            fac = fac11 / fst[F_FACOLD] ** _BETA
            fac = max(1.0 / _FAC_MAX, min(1.0 / _FAC_MIN, fac / _SAFETY))
            hnew = h / fac
            if en > 1.0:
                ist[I_REJ] += 1
                fst[F_H] = h / min(1.0 / _FAC_MIN, fac11 / _SAFETY)
                rejected_last = True
                continue
            fst[F_FACOLD] = max(en, 1e-4)
            if rejected_last:
                hnew = min(hnew, h)
            rejected_last = False
            if not land or hnew > fst[F_H]:
                fst[F_H] = hnew
        elif not finite:
            status = NONFINITE
            break
        # --- make room in the ring, then write outputs and push the node --------------------
        while cnt >= 2 and rt[(head + 1) % cap] <= tnew - taumax:
            head = (head + 1) % cap
            cnt -= 1
        if cnt >= cap:
            ist[I_HEAD] = head
            ist[I_COUNT] = cnt
            status = RING_FULL
            break
        while j < nout and tout[j] <= tnew:
            if method == DOPRI5:
                _dense_dopri(y, ynew, K, h, (tout[j] - t) / h, ytmp)
            else:
                hermite_eval(t, y, K[0], tnew, ynew, K[6], tout[j], ytmp)
            for i in range(d):
                yout[j, b, i] = ytmp[i]
            j += 1
        new = (head + cnt) % cap
        rt[new] = tnew
        for i in range(d):
            ry[new, i] = ynew[i]
            rfl[new, i] = K[6, i]
            rfr[new, i] = K[6, i]
        cnt += 1
        ist[I_HEAD] = head
        ist[I_COUNT] = cnt
        ist[I_ACC] += 1
        if method == RK4 and on_grid:
            ist[I_GRID] += 1
        if hit_disc:
            ist[I_DISC] = dp + 1
            if djump[dp]:
                # f jumps in time here: the right derivative starts the next interval
                dde_field(
                    fn,
                    args,
                    model,
                    ip,
                    P,
                    hkind,
                    hist,
                    hfn,
                    t0,
                    taus,
                    ring,
                    head,
                    cnt,
                    tnew,
                    tent_y,
                    tent_f,
                    False,
                    tnew,
                    tnew + tiny,
                    ynew,
                    xd,
                    z,
                    rfr[new],
                )
                ist[I_NFEV] += 1
        last = new
        t = tnew
        for i in range(d):
            y[i] = ynew[i]
    ist[I_STATUS] = status
    return status


@njit(cache=True, parallel=True)
def dde_advance(
    fn,
    args,
    model,
    ip,
    P,
    hkind,
    hc,
    hst,
    hsy,
    hsdy,
    hfn,
    hp,
    t0,
    taus,
    disc,
    djump,
    method,
    dt,
    rtol,
    atol,
    hmax,
    t_end,
    tout,
    yout,
    rt,
    ry,
    rfl,
    rfr,
    ist,
    fst,
    max_steps,
):
    """Advance every trajectory ``b`` of the batch to ``t_end`` (batch members in parallel).

    ``yout`` (len(tout), B, d) receives the solution at ``tout``; history arrays are indexed by
    member: ``hc`` (B, d), ``hsy``/``hsdy`` (B, n, d), ``hp`` (B, p). Returns nothing; each
    member's status is ``ist[b, 7]``.
    """
    B = rt.shape[0]
    H = 1
    if fn is None and model == NEURAL:
        H = ip[4]
    for b in prange(B):
        hist = (hc[b], hst, hsy[b], hsdy[b], hp[b])
        ring = (rt[b], ry[b], rfl[b], rfr[b])
        dde_advance_one(
            fn,
            args,
            model,
            ip,
            P,
            hkind,
            hist,
            hfn,
            t0,
            taus,
            disc,
            djump,
            method,
            dt,
            rtol,
            atol,
            hmax,
            t_end,
            tout,
            yout,
            b,
            ring,
            ist[b],
            fst[b],
            max_steps,
            H,
        )


@njit(cache=True)
def dde_advance_serial(
    fn,
    args,
    model,
    ip,
    P,
    hkind,
    hc,
    hst,
    hsy,
    hsdy,
    hfn,
    hp,
    t0,
    taus,
    disc,
    djump,
    method,
    dt,
    rtol,
    atol,
    hmax,
    t_end,
    tout,
    yout,
    rt,
    ry,
    rfl,
    rfr,
    ist,
    fst,
    max_steps,
):
    """:func:`dde_advance` in one thread (a single trajectory; compiles faster)."""
    B = rt.shape[0]
    H = 1
    if fn is None and model == NEURAL:
        H = ip[4]
    for b in range(B):
        hist = (hc[b], hst, hsy[b], hsdy[b], hp[b])
        ring = (rt[b], ry[b], rfl[b], rfr[b])
        dde_advance_one(
            fn,
            args,
            model,
            ip,
            P,
            hkind,
            hist,
            hfn,
            t0,
            taus,
            disc,
            djump,
            method,
            dt,
            rtol,
            atol,
            hmax,
            t_end,
            tout,
            yout,
            b,
            ring,
            ist[b],
            fst[b],
            max_steps,
            H,
        )
