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
  ``P = [t_layers (L + 1), W (L, d, H), A^T (L, d, H), B^T (L, m, d, H), b (L, H)]`` (A and B
  transposed, so the loops over hidden units run over contiguous memory and vectorise; tanh is
  :func:`tanh_fast`, a library-free form within 3 ulp of ``math.tanh``).
- ``MACKEY_GLASS`` (3): x' = beta x(t - tau_1) / (1 + x(t - tau_1)^n) - gamma x (per component);
  ``P = [beta, gamma, n]``.

:func:`dde_rk4_lockstep` runs fixed-step RK4 of a built-in field for blocks of batch members
that share their step times (every delay longer than the step), states stored member-innermost
so the loops over members vectorise; the arithmetic per member is that of the loop below.

A user field ``fn(t, x, xd, args, out)`` (``xd`` of shape (m, d)) replaces the built-in when
``fn`` is not None; a user history ``hfn(t, p, out)`` gets its member's parameter row ``p``.

Per-trajectory state between calls (so a long run advances chunk by chunk): the ring arrays
``rt`` (B, cap), ``ry``/``rfl``/``rfr`` (B, cap, d) (left and right derivative at each node; they
differ only where f jumps in time), ``ist`` (B, 8) int64 ``[head, count, disc pointer, grid index,
accepted, rejected, f evaluations, status]`` and ``fst`` (B, 2) ``[proposed h, PI memory]``
(zeros: a fresh controller; a caller may set only the first step), or ``fst`` (B, 3) with
the controller's memory of a rejected last step as a third slot, so that a run stopped by its
step budget (``MAX_STEPS``) and called again (its status reset to ``OK``) takes bitwise the
steps of the uninterrupted run.

Status codes, the error norm, the PI controller and the starting step are those of
:mod:`~nndyn_fast.kernels.control`.

References
----------
A. Bellen, M. Zennaro, "Numerical Methods for Delay Differential Equations", Oxford 2003
(method of steps, continuous extensions, discontinuity tracking). E. Hairer, S. P. Norsett,
G. Wanner, "Solving Ordinary Differential Equations I", Springer 1993, sections II.4-II.6.
"""

import math

import numpy as np
from numba import njit, prange

from .activations import TANH, act, tanh_fast
from .control import (
    EPS,
    ERR_FLOOR,
    LOCK_OVER,
    MAX_STEPS,
    NONFINITE,
    OK,
    RING_FULL,
    STEP_UNDERFLOW,
    initial_step_guess,
    pi_control,
    pi_exponent,
    wrms_norm,
)
from .rk import DOPRI5_A, DOPRI5_C, DOPRI5_D, DOPRI5_E, DOPRI5_ORDER, RK4_A, RK4_B, RK4_C

# methods, built-in models, history kinds
RK4, DOPRI5 = 0, 1
USER, LINEAR, NEURAL, MACKEY_GLASS = 0, 1, 2, 3
H_CONST, H_SAMPLES, H_FUNC = 0, 1, 2
# integer state slots
I_HEAD, I_COUNT, I_DISC, I_GRID, I_ACC, I_REJ, I_NFEV, I_STATUS = 0, 1, 2, 3, 4, 5, 6, 7
# float state slots; F_REJ (optional: fst of 3 columns) keeps whether the last attempted step
# was rejected, so a run stopped by its step budget continues bitwise (gradient checkpoints)
F_H, F_FACOLD, F_REJ = 0, 1, 2

_MAX_ITER = 30  # fixed-point passes when a delay is shorter than the step
_ITER_TOL_DOPRI = 1e-3  # iteration converged: change below this in units of the error tolerance
_ITER_TOL_RK4 = 1e-13  # relative change at which the RK4 iteration stops

# RK4 with the derivative at the new node as a fifth stage (row B, time 1), so that both methods
# run one stage loop whose last stage is f(t_new, y_new) (first same as last)
_RK4F_A = np.zeros((5, 5))
_RK4F_A[:4, :4] = RK4_A
_RK4F_A[4, :4] = RK4_B
_RK4F_C = np.append(RK4_C, 1.0)


@njit(cache=True, inline="always")
def _wrap(i, cap):
    """Ring slot of position ``i < 2 cap`` (a compare instead of an integer division)."""
    return i - cap if i >= cap else i


@njit(cache=True)
def _copy(src, dst):
    for i in range(dst.shape[0]):
        dst[i] = src[i]


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


@njit(cache=True, inline="always")
def sample_interval(hst, s):
    """Indices ``lo, lo + 1`` of the history samples around ``hst[0] < s < hst[-1]``."""
    lo = 0
    hi = hst.shape[0] - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if hst[mid] <= s:
            lo = mid
        else:
            hi = mid
    return lo, hi


@njit(cache=True)
def history_eval(hkind, hist, hfn, s, out):
    """The history at ``s <= t0``: constant, Hermite samples, or ``hfn(s, p, out)``."""
    hc, hst, hsy, hsdy, hp = hist
    if hkind == H_CONST:
        _copy(hc, out)
    elif hkind == H_SAMPLES:
        n = hst.shape[0]
        if s <= hst[0]:
            _copy(hsy[0], out)
            return
        if s >= hst[n - 1]:
            _copy(hsy[n - 1], out)
            return
        lo, hi = sample_interval(hst, s)
        hermite_eval(hst[lo], hsy[lo], hsdy[lo], hst[hi], hsy[hi], hsdy[hi], s, out)
    else:
        if hfn is None:
            for i in range(out.shape[0]):
                out[i] = math.nan
        else:
            hfn(s, hp, out)


@njit(cache=True, inline="always")
def ring_interval(rt, head, cnt, cur, k, s):
    """Slots ``a, b`` of the ring interval holding ``s`` (``cnt >= 2``), its length ``h`` and
    the Hermite fractions ``th, 1 - th``; walks from the cursor ``cur[k]`` and updates it."""
    cap = rt.shape[0]
    lo = min(cur[k], cnt - 2)
    while lo > 0 and rt[_wrap(head + lo, cap)] > s:
        lo -= 1
    while lo < cnt - 2 and rt[_wrap(head + lo + 1, cap)] <= s:
        lo += 1
    cur[k] = lo
    a = _wrap(head + lo, cap)
    b = _wrap(a + 1, cap)
    ta = rt[a]
    h = rt[b] - ta
    th = (s - ta) / h
    return a, b, h, th, 1.0 - th


@njit(cache=True, inline="always")
def ring_evict(rt, head, cnt, cur, tmin):
    """Drop the oldest nodes while the next one is still at or before ``tmin``; returns the
    new ``(head, cnt)`` and moves the cursors with the head."""
    cap = rt.shape[0]
    while cnt >= 2 and rt[_wrap(head + 1, cap)] <= tmin:
        head = _wrap(head + 1, cap)
        cnt -= 1
        for k in range(cur.shape[0]):
            cur[k] = max(cur[k] - 1, 0)
    return head, cnt


@njit(cache=True, inline="always")
def next_stop(disc, dp, t, t_end, tiny):
    """The next point a step must not cross: ``(dp, stop, is a discontinuity)``, skipping the
    discontinuities already reached."""
    ndisc = disc.shape[0]
    while dp < ndisc and disc[dp] <= t + tiny:
        dp += 1
    if dp < ndisc and disc[dp] < t_end - tiny:
        return dp, disc[dp], True
    return dp, t_end, False


@njit(cache=True, inline="always")
def rk4_target(t0, dt, grid, stop, hit_disc):
    """End of the next RK4 step: the grid point ``t0 + (grid + 1) dt`` unless ``stop`` comes
    first; returns ``(tnew, on_grid, hit_disc)``."""
    g = t0 + (grid + 1) * dt
    if abs(stop - g) <= 1e-9 * dt:
        return stop, True, hit_disc  # a stop on a grid point: take it exactly
    if stop < g:
        return stop, False, hit_disc
    return g, True, False


@njit(cache=True, inline="always")
def ring_eval(rt, ry, rfl, rfr, head, cnt, cur, k, s, out):
    """Hermite value at ``s`` into ``out[k]`` from the ring interval holding it
    (``T_0 <= s <= T_last``).

    ``cur[k]`` is the interval (position from the head) found for delay ``k`` last time; the
    delayed times of a trajectory move forward step by step (back only on a rejected step), so
    walking from it takes a step or two where a bisection would take log2(count). The ring is
    read by index, not through row views, to keep reference counting out of the inner loop.
    """
    d = out.shape[1]
    if cnt == 1:
        for i in range(d):
            out[k, i] = ry[head, i]
        return
    a, b, h, th, th1 = ring_interval(rt, head, cnt, cur, k, s)
    for i in range(d):  # hermite_eval's formula on ring rows
        dy = ry[b, i] - ry[a, i]
        r3 = h * rfr[a, i] - dy
        r4 = dy - h * rfl[b, i] - r3
        out[k, i] = ry[a, i] + th * (dy + th1 * (r3 + th * r4))


@njit(cache=True, error_model="numpy")
def builtin_rhs(model, ip, P, tl, x, xd, z, out, o):
    """Built-in vector field (``model`` code) at state ``x``, delayed states ``xd`` (m, d), into
    row ``o`` of ``out``."""
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
            out[o, i] = s
    elif model == MACKEY_GLASS:
        beta = P[0]
        gamma = P[1]
        n = P[2]
        for i in range(d):
            v = xd[0, i]
            out[o, i] = beta * v / (1.0 + v**n) - gamma * x[i]
    else:
        L, H, code, oW, oA, oB, ob = ip[3], ip[4], ip[5], ip[6], ip[7], ip[8], ip[9]
        lay = 0
        while lay < L - 1 and P[lay + 1] <= tl:
            lay += 1
        # pre-activations, hidden unit innermost (A and B are stored transposed, (d, H) blocks)
        boff = ob + lay * H
        for r in range(H):
            z[r] = P[boff + r]
        aoff = oA + lay * d * H
        for j in range(d):
            xj = x[j]
            for r in range(H):
                z[r] += P[aoff + j * H + r] * xj
        doff = oB + lay * m * d * H
        for k in range(m):
            for j in range(d):
                xj = xd[k, j]
                base = doff + (k * d + j) * H
                for r in range(H):
                    z[r] += P[base + r] * xj
        if code == TANH:
            for r in range(H):
                z[r] = tanh_fast(z[r])
        else:
            for r in range(H):
                z[r] = act(code, z[r])
        woff = oW + lay * d * H
        for i in range(d):
            s = 0.0
            for r in range(H):
                s += P[woff + i * H + r] * z[r]
            out[o, i] = s


@njit(cache=True, inline="always")
def dde_field(
    fn, args, hfn, model, ip, P, hkind, hist, t0, taus,
    rt, ry, rfl, rfr, head, cnt, cur, xd, z, tent, t, tl, x, out, o,
):  # fmt: skip
    """f(t, x, x(t - tau_k)) into ``out[o]``; returns 1 if a delayed time fell past the last node.

    The field (``model, ip, P``), history, ring arrays, cursors ``cur``, delayed states ``xd``
    and hidden units ``z`` come as plain arrays (unpacking tuples or taking row views
    costs atomic reference counts in the innermost loop). ``tent = (t, y, f, ok)`` is the
    tentative step: delayed values past the last node come from it when ``ok``, else from a
    linear extrapolation of the last node.
    """
    last = _wrap(head + cnt - 1, rt.shape[0])
    tlast = rt[last]
    over = 0
    for k in range(taus.shape[0]):
        s = t - taus[k]
        if s <= t0:
            history_eval(hkind, hist, hfn, s, xd[k])
        elif s <= tlast:
            ring_eval(rt, ry, rfl, rfr, head, cnt, cur, k, s, xd)
        else:
            over = 1
            tent_t, tent_y, tent_f, tent_ok = tent
            if tent_ok:
                hermite_eval(tlast, ry[last], rfr[last], tent_t, tent_y, tent_f, s, xd[k])
            else:
                for i in range(xd.shape[1]):
                    xd[k, i] = ry[last, i] + (s - tlast) * rfr[last, i]
    if fn is None:
        builtin_rhs(model, ip, P, tl, x, xd, z, out, o)
    else:
        fn(t, x, xd, args, out[o])
    return over


@njit(cache=True)
def _all_finite(v):
    for i in range(v.shape[0]):
        if not math.isfinite(v[i]):
            return False
    return True


@njit(cache=True)
def _combine(K, w, nst, h, out):
    """``out = h sum_s w[s] K[s]`` over the first ``nst`` stages."""
    for i in range(out.shape[0]):
        acc = 0.0
        for s in range(nst):
            acc += w[s] * K[s, i]
        out[i] = h * acc


@njit(cache=True)
def _dense_dopri(y, ynew, k, h, th, out):
    """Hairer's order-4 continuous extension of a Dormand-Prince step at fraction ``th``."""
    th1 = 1.0 - th
    _combine(k, DOPRI5_D, 7, h, out)
    for i in range(y.shape[0]):
        dy = ynew[i] - y[i]
        r3 = h * k[0, i] - dy
        r4 = dy - h * k[6, i] - r3
        out[i] = y[i] + th * (dy + th1 * (r3 + th * (r4 + th1 * out[i])))


@njit(cache=True)
def dde_advance_one(fn, args, hfn, fld, hist, ctl, tout, yout, b, ring, ist, fst):
    """Advance one trajectory to ``t_end``, writing ``yout[j, b]`` for the times ``tout[j]``.

    Initialises the ring from the history at ``t0`` when it is empty. Returns the status.
    """
    model, ip, P, hkind, t0, taus = fld
    method, dt, rtol, atol, hmax, t_end, disc, djump, max_steps = ctl
    rt, ry, rfl, rfr = ring
    cap = rt.shape[0]
    d = ry.shape[1]
    m = taus.shape[0]
    taumax = 0.0
    for k in range(m):
        taumax = max(taumax, taus[k])
    if method == DOPRI5:
        TA, TC, nst = DOPRI5_A, DOPRI5_C, 7
    else:
        TA, TC, nst = _RK4F_A, _RK4F_C, 5
    kl = nst - 1  # the last stage: f at the new node
    H = ip[4] if (fn is None and model == NEURAL) else 1
    K = np.empty((7, d))
    rtv, atv = np.full(d, rtol), np.full(d, atol)  # per-component tolerances of wrms_norm
    y, ynew, ytmp = np.empty(d), np.empty(d), np.empty(d)
    tent_y, tent_f, err = np.empty(d), np.empty(d), np.empty(d)
    cur = np.zeros(m, dtype=np.int64)  # ring interval last used by each delay
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
        ist[I_NFEV] += 1
        rt[0] = t0
        history_eval(hkind, hist, hfn, t0, ry[0])
        tent = (t0, tent_y, tent_f, False)
        dde_field(
            fn, args, hfn, model, ip, P, hkind, hist, t0, taus,
            rt, ry, rfl, rfr, 0, 1, cur, xd, z, tent, t0, t0 + tiny, ry[0], rfr, 0,
        )  # fmt: skip
        _copy(rfr[0], rfl[0])
        if not _all_finite(rfr[0]):
            ist[I_STATUS] = NONFINITE
            return NONFINITE

    head = ist[I_HEAD]
    cnt = ist[I_COUNT]
    last = (head + cnt - 1) % cap
    t = rt[last]
    _copy(ry[last], y)

    # outputs at (or before) the current time: already written except one equal to t
    nout = tout.shape[0]
    j = 0
    while j < nout and tout[j] <= t:
        if tout[j] == t:
            _copy(y, yout[j, b])
        j += 1

    expo1 = pi_exponent(DOPRI5_ORDER)
    if method == DOPRI5:
        if fst[F_H] <= 0.0:
            fst[F_H] = min(initial_step_guess(y, rfr[last], rtv, atv)[0], hmax)
        if fst[F_FACOLD] <= 0.0:
            # a fresh controller (never below ERR_FLOOR once running), also when the caller
            # gave the first step in fst[F_H]
            fst[F_FACOLD] = ERR_FLOOR

    # counters live in registers during the loop and go back to ``ist`` at the end
    dp = ist[I_DISC]
    grid = ist[I_GRID]
    nacc = 0
    nrej = 0
    nfev = 0
    nsteps = 0
    rejected_last = fst.shape[0] > F_REJ and fst[F_REJ] != 0.0
    status = OK
    while t < t_end:
        if nsteps >= max_steps:
            status = MAX_STEPS
            break
        # --- choose the step and where it ends --------------------------------------------
        dp, stop, hit_disc = next_stop(disc, dp, t, t_end, tiny)
        on_grid = False
        if method == RK4:
            tnew, on_grid, hit_disc = rk4_target(t0, dt, grid, stop, hit_disc)
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
        if h <= 16.0 * EPS * max(abs(t), 1.0):
            status = STEP_UNDERFLOW
            break
        tl = t + 0.5 * h  # layer of a time-dependent built-in: the one holding the step
        # --- the step, iterated when a delayed time falls inside it -------------------------
        _copy(rfr[last], K[0])
        tent_ok = False
        for _it in range(_MAX_ITER):
            tent = (tnew, tent_y, tent_f, tent_ok)
            over = 0
            for s in range(1, nst):
                for i in range(d):
                    acc = 0.0
                    for q in range(s):
                        acc += TA[s, q] * K[q, i]
                    ytmp[i] = y[i] + h * acc
                ts = tnew if s == kl else t + TC[s] * h  # the last stage sits on the node
                over |= dde_field(
                    fn, args, hfn, model, ip, P, hkind, hist, t0, taus,
                    rt, ry, rfl, rfr, head, cnt, cur, xd, z, tent, ts, tl, ytmp, K, s,
                )  # fmt: skip
            _copy(ytmp, ynew)  # the last stage's input is the new solution
            nfev += nst - 1
            if over == 0:
                break
            if tent_ok:
                for i in range(d):
                    err[i] = ynew[i] - tent_y[i]
                if method == DOPRI5:
                    if wrms_norm(err, y, ynew, rtv, atv) <= _ITER_TOL_DOPRI:
                        break
                else:
                    chg = 0.0
                    scl = 0.0
                    for i in range(d):
                        chg = max(chg, abs(err[i]))
                        scl = max(scl, abs(ynew[i]))
                    if chg <= _ITER_TOL_RK4 * (1.0 + scl):
                        break
            _copy(ynew, tent_y)
            _copy(K[kl], tent_f)
            tent_ok = True
        nsteps += 1
        finite = _all_finite(ynew) and _all_finite(K[kl])
        # --- accept or reject --------------------------------------------------------------
        if method == DOPRI5:
            _combine(K, DOPRI5_E, nst, h, err)
            e_step = wrms_norm(err, y, ynew, rtv, atv)
            _combine(K, DOPRI5_D, nst, h / 16.0, err)
            e_int = wrms_norm(err, y, ynew, rtv, atv)
            en = max(e_step, e_int)
            if not finite or not math.isfinite(en):
                nrej += 1
                fst[F_H] = 0.25 * h  # (delay steps quarter here, not FAC_NONFINITE)
                rejected_last = True
                if fst[F_H] <= 16.0 * EPS * max(abs(t), 1.0):
                    status = NONFINITE
                    break
                continue
            accept, fac, fst[F_FACOLD], _ = pi_control(
                en, True, fst[F_FACOLD], rejected_last, expo1
            )
            rejected_last = not accept
            if not accept:
                nrej += 1
                fst[F_H] = h * fac
                continue
            hnew = h * fac
            if not land or hnew > fst[F_H]:
                fst[F_H] = hnew
        elif not finite:
            status = NONFINITE
            break
        # --- make room in the ring, then write outputs and push the node --------------------
        head, cnt = ring_evict(rt, head, cnt, cur, tnew - taumax)
        if cnt >= cap:
            status = RING_FULL
            break
        while j < nout and tout[j] <= tnew:
            if method == DOPRI5:
                _dense_dopri(y, ynew, K, h, (tout[j] - t) / h, yout[j, b])
            else:
                hermite_eval(t, y, K[0], tnew, ynew, K[kl], tout[j], yout[j, b])
            j += 1
        new = _wrap(head + cnt, cap)
        rt[new] = tnew
        _copy(ynew, ry[new])
        _copy(K[kl], rfl[new])
        _copy(K[kl], rfr[new])
        cnt += 1
        nacc += 1
        if method == RK4 and on_grid:
            grid += 1
        if hit_disc:
            dp += 1
            if djump[dp - 1]:
                # f jumps in time here: the right derivative starts the next interval
                tent = (tnew, tent_y, tent_f, False)
                dde_field(
                    fn, args, hfn, model, ip, P, hkind, hist, t0, taus, rt, ry, rfl, rfr,
                    head, cnt, cur, xd, z, tent, tnew, tnew + tiny, ynew, rfr, new,
                )  # fmt: skip
                nfev += 1
        last = new
        t = tnew
        _copy(ynew, y)
    ist[I_HEAD] = head
    ist[I_COUNT] = cnt
    ist[I_DISC] = dp
    ist[I_GRID] = grid
    ist[I_ACC] += nacc
    ist[I_REJ] += nrej
    ist[I_NFEV] += nfev
    ist[I_STATUS] = status
    if fst.shape[0] > F_REJ:
        fst[F_REJ] = 1.0 if rejected_last else 0.0
    return status


@njit(cache=True)
def _advance_member(fn, args, hfn, fld, hists, ctl, tout, yout, rings, ist, fst, b):
    """:func:`dde_advance_one` for member ``b`` of the batched history and ring arrays."""
    hc, hst, hsy, hsdy, hp = hists
    rt, ry, rfl, rfr = rings
    hist = (hc[b], hst, hsy[b], hsdy[b], hp[b])
    ring = (rt[b], ry[b], rfl[b], rfr[b])
    dde_advance_one(fn, args, hfn, fld, hist, ctl, tout, yout, b, ring, ist[b], fst[b])


@njit(cache=True, parallel=True)
def dde_advance(fn, args, hfn, fld, hists, ctl, tout, yout, rings, ist, fst):
    """Advance every trajectory ``b`` of the batch to ``t_end`` (batch members in parallel).

    ``fld = (model, ip, P, hkind, t0, taus)`` (the field and history kind),
    ``ctl = (method, dt, rtol, atol, hmax, t_end, disc, djump, max_steps)``,
    ``hists = (hc (B, d), hst (n,), hsy (B, n, d), hsdy (B, n, d), hp (B, p))``,
    ``rings = (rt, ry, rfl, rfr)``. ``yout`` (len(tout), B, d) receives the solution at
    ``tout``. Returns nothing; each member's status is ``ist[b, 7]``.
    """
    for b in prange(ist.shape[0]):
        _advance_member(fn, args, hfn, fld, hists, ctl, tout, yout, rings, ist, fst, b)


@njit(cache=True)
def dde_advance_serial(fn, args, hfn, fld, hists, ctl, tout, yout, rings, ist, fst):
    """:func:`dde_advance` in one thread (a single trajectory; compiles faster)."""
    for b in range(ist.shape[0]):
        _advance_member(fn, args, hfn, fld, hists, ctl, tout, yout, rings, ist, fst, b)


# --- fixed-step RK4 in lockstep over a block of batch members --------------------------------
# With a built-in field, fixed-step RK4 and every delay longer than the step, the step times of
# all members are the same (they depend only on t0, dt, the delays and the layer times), so a
# block of members shares one time loop, one ring of node times and one interval search per
# delayed value. States are stored member-innermost, X (d, nb), ring rows (cap, d, nb), so the
# loops over members run over contiguous memory and vectorise. Each member sees the arithmetic
# of :func:`dde_advance_one` operation for operation, so the results agree bitwise.
# LOCK_OVER (kernels.control): a delayed time fell past the last node, the caller takes the
# per-member path


@njit(cache=True, inline="always")
def _hermite_cols(ya, fa, yb, fb, h, th, th1, out):
    """:func:`hermite_eval`'s formula on (d, nb) blocks with a shared interval."""
    for i in range(out.shape[0]):
        for q in range(out.shape[1]):
            dy = yb[i, q] - ya[i, q]
            r3 = h * fa[i, q] - dy
            r4 = dy - h * fb[i, q] - r3
            out[i, q] = ya[i, q] + th * (dy + th1 * (r3 + th * r4))


@njit(cache=True)
def history_block(hkind, hists, hfn, b0, s, out, tmp):
    """The history at ``s <= t0`` of members ``b0 .. b0 + nb`` into ``out`` (d, nb)."""
    hc, hst, hsy, hsdy, hp = hists
    d, nb = out.shape
    if hkind == H_CONST:
        for i in range(d):
            for q in range(nb):
                out[i, q] = hc[b0 + q, i]
    elif hkind == H_SAMPLES:
        n = hst.shape[0]
        if s <= hst[0] or s >= hst[n - 1]:
            e = 0 if s <= hst[0] else n - 1
            for i in range(d):
                for q in range(nb):
                    out[i, q] = hsy[b0 + q, e, i]
            return
        lo, hi = sample_interval(hst, s)
        for q in range(nb):
            hermite_eval(hst[lo], hsy[b0 + q, lo], hsdy[b0 + q, lo], hst[hi], hsy[b0 + q, hi],
                         hsdy[b0 + q, hi], s, tmp)  # fmt: skip
            for i in range(d):
                out[i, q] = tmp[i]
    else:
        for q in range(nb):
            if hfn is None:
                tmp[:] = math.nan
            else:
                hfn(s, hp[b0 + q], tmp)
            for i in range(d):
                out[i, q] = tmp[i]


@njit(cache=True, error_model="numpy")
def builtin_rhs_block(model, ip, P, tl, X, XD, zr, out, o):
    """:func:`builtin_rhs` for a block: states ``X`` (d, nb), delayed states ``XD`` (m, d, nb),
    into ``out[o]`` (d, nb); ``zr`` (nb,) holds one hidden unit of every member."""
    d, nb = X.shape
    m = XD.shape[0]
    if model == MACKEY_GLASS:
        beta = P[0]
        gamma = P[1]
        n = P[2]
        for i in range(d):
            for q in range(nb):
                v = XD[0, i, q]
                out[o, i, q] = beta * v / (1.0 + v**n) - gamma * X[i, q]
        return
    for i in range(d):
        for q in range(nb):
            out[o, i, q] = 0.0
    if model == LINEAR:
        off = d * d
        for i in range(d):
            for j in range(d):
                a = P[i * d + j]
                for q in range(nb):
                    out[o, i, q] += a * X[j, q]
            for k in range(m):
                for j in range(d):
                    a = P[off + (k * d + i) * d + j]
                    for q in range(nb):
                        out[o, i, q] += a * XD[k, j, q]
        return
    L, H, code, oW, oA, oB, ob = ip[3], ip[4], ip[5], ip[6], ip[7], ip[8], ip[9]
    lay = 0
    while lay < L - 1 and P[lay + 1] <= tl:
        lay += 1
    boff = ob + lay * H
    aoff = oA + lay * d * H
    doff = oB + lay * m * d * H
    woff = oW + lay * d * H
    for r in range(H):  # one hidden unit at a time for every member (same sums, same order)
        c = P[boff + r]
        for q in range(nb):
            zr[q] = c
        for j in range(d):
            a = P[aoff + j * H + r]
            for q in range(nb):
                zr[q] += a * X[j, q]
        for k in range(m):
            for j in range(d):
                a = P[doff + (k * d + j) * H + r]
                for q in range(nb):
                    zr[q] += a * XD[k, j, q]
        if code == TANH:
            for q in range(nb):
                zr[q] = tanh_fast(zr[q])
        else:
            for q in range(nb):
                zr[q] = act(code, zr[q])
        for i in range(d):
            w = P[woff + i * H + r]
            for q in range(nb):
                out[o, i, q] += w * zr[q]


@njit(cache=True)
def _lock_field(hfn, fld, hists, b0, ring, head, cnt, cur, XD, zr, tmp, t, tl, X, out, o):
    """f at time ``t`` for a block into ``out[o]``; returns 1 (nothing evaluated) when a
    delayed time falls past the last node."""
    model, ip, P, hkind, t0, taus = fld
    rt, ry, rfl, rfr = ring
    tlast = rt[_wrap(head + cnt - 1, rt.shape[0])]
    for k in range(taus.shape[0]):
        s = t - taus[k]
        if s <= t0:
            history_block(hkind, hists, hfn, b0, s, XD[k], tmp)
        elif s > tlast:
            return 1
        elif cnt == 1:
            XD[k, :, :] = ry[head]
        else:
            a, b, h, th, th1 = ring_interval(rt, head, cnt, cur, k, s)
            _hermite_cols(ry[a], rfr[a], ry[b], rfl[b], h, th, th1, XD[k])
    builtin_rhs_block(model, ip, P, tl, X, XD, zr, out, o)
    return 0


@njit(cache=True)
def _block_finite(v):
    for i in range(v.shape[0]):
        for q in range(v.shape[1]):
            if not math.isfinite(v[i, q]):
                return False
    return True


@njit(cache=True)
def _lockstep_block(hfn, fld, hists, ctl, tout, yout, cap, b0, nb, st):
    """RK4 for members ``b0 .. b0 + nb`` from ``t0`` to ``t_end``; counters into ``st``."""
    hkind, t0, taus = fld[3], fld[4], fld[5]
    dt, t_end, disc, djump = ctl
    d = yout.shape[2]
    m = taus.shape[0]
    taumax = 0.0
    for k in range(m):
        taumax = max(taumax, taus[k])
    rt = np.empty(cap)
    ry, rfl, rfr = np.empty((cap, d, nb)), np.empty((cap, d, nb)), np.empty((cap, d, nb))
    ring = (rt, ry, rfl, rfr)
    K = np.empty((5, d, nb))
    Y, YT, YO = np.empty((d, nb)), np.empty((d, nb)), np.empty((d, nb))
    XD = np.empty((m, d, nb))
    zr = np.empty(nb)
    tmp = np.empty(d)
    cur = np.zeros(m, dtype=np.int64)
    tiny = 1e-9 * (1.0 + abs(t0))
    # the first node: the history at t0 and the right derivative there
    rt[0] = t0
    history_block(hkind, hists, hfn, b0, t0, ry[0], tmp)
    _lock_field(hfn, fld, hists, b0, ring, 0, 1, cur, XD, zr, tmp, t0, t0 + tiny, ry[0], rfr, 0)
    rfl[0, :, :] = rfr[0]
    status = OK if _block_finite(rfr[0]) else NONFINITE
    head, cnt, last = 0, 1, 0
    t = t0
    Y[:, :] = ry[0]
    nout = tout.shape[0]
    j = 0
    while j < nout and tout[j] <= t:
        if tout[j] == t:
            for q in range(nb):
                yout[j, b0 + q, :] = Y[:, q]
        j += 1
    dp = 0
    grid = 0
    nacc = 0
    nfev = 1
    while status == OK and t < t_end:
        dp, stop, hit_disc = next_stop(disc, dp, t, t_end, tiny)
        tnew, on_grid, hit_disc = rk4_target(t0, dt, grid, stop, hit_disc)
        h = tnew - t
        if h <= 16.0 * EPS * max(abs(t), 1.0):
            status = STEP_UNDERFLOW
            break
        tl = t + 0.5 * h
        K[0, :, :] = rfr[last]
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
            if _lock_field(hfn, fld, hists, b0, ring, head, cnt, cur, XD, zr, tmp, ts, tl, YT,
                           K, s):  # fmt: skip
                status = LOCK_OVER
                break
        if status != OK:
            break
        nfev += 4
        head, cnt = ring_evict(rt, head, cnt, cur, tnew - taumax)
        if not (_block_finite(YT) and _block_finite(K[4])):
            status = NONFINITE
        elif cnt >= cap:
            status = RING_FULL
        if status != OK:
            break
        while j < nout and tout[j] <= tnew:
            th = (tout[j] - t) / h
            _hermite_cols(Y, K[0], YT, K[4], h, th, 1.0 - th, YO)
            for q in range(nb):
                yout[j, b0 + q, :] = YO[:, q]
            j += 1
        new = _wrap(head + cnt, cap)
        rt[new] = tnew
        ry[new] = YT
        rfl[new] = K[4]
        rfr[new] = K[4]
        cnt += 1
        nacc += 1
        if on_grid:
            grid += 1
        if hit_disc:
            dp += 1
            if djump[dp - 1]:
                # f jumps in time here: the right derivative starts the next interval
                _lock_field(hfn, fld, hists, b0, ring, head, cnt, cur, XD, zr, tmp, tnew,
                            tnew + tiny, YT, rfr, new)  # fmt: skip
                nfev += 1
        last = new
        t = tnew
        Y[:, :] = YT
    st[I_ACC] = nacc
    st[I_NFEV] = nfev
    st[I_STATUS] = status


@njit(cache=True, parallel=True)
def dde_rk4_lockstep(hfn, fld, hists, ctl, tout, yout, cap, block, st):
    """Fixed-step RK4 of a batch of built-in-field trajectories, blocks of ``block`` members
    in lockstep (blocks in parallel; each member's arithmetic is that of :func:`dde_advance`).

    ``fld`` and ``hists`` as for :func:`dde_advance`, ``ctl = (dt, t_end, disc, djump)``,
    ``cap`` the ring capacity, ``st`` (n_blocks, 8) receives each block's counters and status
    (``LOCK_OVER`` when a delay is too short for lockstep steps). ``yout`` (len(tout), B, d).
    """
    B = yout.shape[1]
    for ib in prange(st.shape[0]):
        b0 = ib * block
        _lockstep_block(hfn, fld, hists, ctl, tout, yout, cap, b0, min(block, B - b0), st[ib])
