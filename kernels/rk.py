"""Explicit Runge-Kutta integrators: tableaus as data, one stepping loop.

A method is its Butcher tableau ``(A, B, C)`` (plus ``E = b - b_hat`` and dense-output weights
for the embedded Dormand-Prince 5(4) pair). Stage ``s`` of a step of size ``h`` from ``(t, y)``
is ``k_s = f(t + C[s] h, y + h sum_j A[s, j] k_j)`` and the step gives
``y_new = y + h sum_s B[s] k_s``; the embedded error estimate is ``h sum_s E[s] k_s``.

Tableaus (module-level constants, float64):

- ``EULER_A/B/C`` forward Euler (order 1)
- ``RK2_A/B/C`` Heun's method (explicit trapezoid, order 2)
- ``RK4_A/B/C`` the classic fourth-order method
- ``DOPRI5_A/B/C/E/D`` Dormand-Prince 5(4), first same as last (the 7th stage is ``f(y_new)``);
  ``DOPRI5_D`` are the weights of Hairer's continuous extension (order 4).

References
----------
J. R. Dormand, P. J. Prince, "A family of embedded Runge-Kutta formulae", J. Comput. Appl.
Math. 6 (1980) 19-26. E. Hairer, S. P. Norsett, G. Wanner, "Solving Ordinary Differential
Equations I", 2nd ed., Springer 1993, sections II.4-II.6 (step-size control, dense output).
"""

import math

import numpy as np
from numba import njit, prange

from .activations import TANH, act, tanh_fast
from .neural import CONTRACT, FORM_OUTER, block_matmul_acc, neural_rhs

# --- tableaus --------------------------------------------------------------------------------

EULER_A = np.zeros((1, 1))
EULER_B = np.array([1.0])
EULER_C = np.array([0.0])

RK2_A = np.array([[0.0, 0.0], [1.0, 0.0]])
RK2_B = np.array([0.5, 0.5])
RK2_C = np.array([0.0, 1.0])

RK4_A = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],
        [0.5, 0.0, 0.0, 0.0],
        [0.0, 0.5, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ]
)
RK4_B = np.array([1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0])
RK4_C = np.array([0.0, 0.5, 0.5, 1.0])

DOPRI5_C = np.array([0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0])
DOPRI5_A = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0 / 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0, 0.0],
        [19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0, 0.0, 0.0, 0.0],
        [
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
            0.0,
            0.0,
        ],
        [35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0, 0.0],
    ]
)
# fifth-order weights (= last row of A: first same as last)
DOPRI5_B = np.array(
    [35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0, 0.0]
)
# fourth-order embedded weights b_hat
DOPRI5_BHAT = np.array(
    [
        5179.0 / 57600.0,
        0.0,
        7571.0 / 16695.0,
        393.0 / 640.0,
        -92097.0 / 339200.0,
        187.0 / 2100.0,
        1.0 / 40.0,
    ]
)
# error weights E = b - b_hat (written out exactly)
DOPRI5_E = np.array(
    [
        71.0 / 57600.0,
        0.0,
        -71.0 / 16695.0,
        71.0 / 1920.0,
        -17253.0 / 339200.0,
        22.0 / 525.0,
        -1.0 / 40.0,
    ]
)
# Hairer's dense-output weights d_s (continuous extension of order 4)
DOPRI5_D = np.array(
    [
        -12715105075.0 / 11282082432.0,
        0.0,
        87487479700.0 / 32700410799.0,
        -10690763975.0 / 1880347072.0,
        701980252875.0 / 199316789632.0,
        -1453857185.0 / 822651844.0,
        69997945.0 / 29380423.0,
    ]
)
DOPRI5_ORDER = 5  # order of the propagated solution; the error estimate is O(h^5)

# --- stepping kernels ------------------------------------------------------------------------
OK = 0
NONFINITE = 1
STEP_UNDERFLOW = 2
MAX_STEPS = 3

_SAFETY = 0.9
_BETA = 0.04  # PI controller: integral exponent 1/5 - 0.75 beta, proportional exponent beta
_FAC_MIN = 0.2
_FAC_MAX = 10.0
_EPS = 2.220446049250313e-16


@njit(cache=True)
def _user_tangent(jac_fn, args, t, z, out, d, nvar, J):
    # out_V = J(x) V for a user field with a user Jacobian jac_fn(t, x, args, J)
    if jac_fn is not None:
        jac_fn(t, z[:d], args, J)
        for i in range(d):
            base = d + i * nvar
            for c in range(nvar):
                out[base + c] = 0.0
            for j in range(d):
                a = J[i, j]
                if a != 0.0:
                    bj = d + j * nvar
                    for c in range(nvar):
                        out[base + c] += a * z[bj + c]


@njit(cache=True, inline="always", error_model="numpy")
def _eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, z, K, s, pre, av, J):
    """``K[s] = (f(t, x), Df(x) V)`` for the state ``z = (x, V)`` (inlined into the stage loop).

    ``fn_ip`` (in-place user field ``f(t, x, args, out)``) or ``fn_s`` (simple user field
    ``f(t, x, args) -> dx``) is a jitted function, or both are ``None`` for the built-in neural
    field ``model`` (see :mod:`nndyn_fast.kernels.neural`). Tangents of user fields need
    ``jac_fn(t, x, args, J)``; ``pre``, ``av``, ``J`` are scratch.
    """
    if fn_ip is not None:
        out = K[s]
        fn_ip(t, z[:d], args, out[:d])
        if nvar > 0:
            _user_tangent(jac_fn, args, t, z, out, d, nvar, J)
    elif fn_s is not None:
        out = K[s]
        r = fn_s(t, z[:d], args)
        for i in range(d):
            out[i] = r[i]
        if nvar > 0:
            _user_tangent(jac_fn, args, t, z, out, d, nvar, J)
    else:
        neural_rhs(model, layer, d, nvar, z, K, s, pre, av)


@njit(cache=True, error_model="numpy")
def eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, z, K, s, pre, av, J):
    """``K[s] = (f(t, x), Df(x) V)`` for the state ``z = (x, V)`` (see :func:`_eval_field`)."""
    _eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, z, K, s, pre, av, J)


@njit(cache=True)
def _all_finite(v):
    for x in v:
        if not math.isfinite(x):
            return False
    return True


@njit(cache=True)
def _layer_at(tstops, t):
    n = 0
    for s in tstops:
        if s <= t:
            n += 1
    return n


@njit(cache=True)
def _next_stop(tstops, t, te):
    for s in tstops:
        if s > t and s < te:
            return s
    return te


@njit(cache=True)
def _n_fixed_steps(span, dt):
    # equal fixed steps on an interval of length span: ceil(span / dt), one when dt <= 0
    if dt <= 0.0:
        return 1
    return max(1, int(math.ceil(span / dt * (1.0 - 1e-12))))


@njit(cache=True)
def fixed_schedule(t_out, tstops, dt):
    """The steps of a fixed-step run, the same for every trajectory: ``(a, h, m, layer, frame)``.

    Each interval between output times is cut at the layer switches ``tstops`` and each piece
    into ``ceil(length / dt)`` equal steps (one when ``dt <= 0``): piece ``g`` takes ``m[g]``
    steps of size ``h[g]`` from ``a[g]`` in layer ``layer[g]`` towards output frame
    ``frame[g]``, which is complete after the last piece with that frame.
    """
    T = t_out.shape[0]
    cap = (T - 1) * (tstops.shape[0] + 1)
    sa = np.empty(cap)
    sh = np.empty(cap)
    sm = np.empty(cap, np.int64)
    sl = np.empty(cap, np.int64)
    sf = np.empty(cap, np.int64)
    g = 0
    for k in range(1, T):
        a = t_out[k - 1]
        tb = t_out[k]
        while a < tb:
            eb = _next_stop(tstops, a, tb)
            m = _n_fixed_steps(eb - a, dt)
            sa[g] = a
            sh[g] = (eb - a) / m
            sm[g] = m
            sl[g] = _layer_at(tstops, a)
            sf[g] = k
            g += 1
            a = eb
    return sa[:g], sh[:g], sm[:g], sl[:g], sf[:g]


@njit(cache=True, inline="always", error_model="numpy")
def _stages(
    fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, h, z, K, ztmp, znew,
    TA, TB, TC, k0_ready, pre, av, J,
):  # fmt: skip
    # the one stepping loop: stages k_s, then znew = z + h sum_s B_s k_s; returns evaluations.
    # A single (inlined) field evaluation site keeps calls and reference counting out of the
    # stage loop; zero tableau entries are skipped.
    n = z.shape[0]
    S = TB.shape[0]
    first = 1 if k0_ready else 0
    for s in range(first, S):
        for i in range(n):
            ztmp[i] = z[i]
        for j in range(s):
            c = h * TA[s, j]
            if c != 0.0:
                for i in range(n):
                    ztmp[i] += c * K[j, i]
        _eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t + TC[s] * h, ztmp, K, s,
                    pre, av, J)  # fmt: skip
    for i in range(n):
        znew[i] = z[i]
    for s in range(S):
        c = h * TB[s]
        if c != 0.0:
            for i in range(n):
                znew[i] += c * K[s, i]
    return S - first


@njit(cache=True, error_model="numpy")
def _rk_stages(
    fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, h, z, K, ztmp, znew,
    TA, TB, TC, k0_ready, pre, av, J,
):  # fmt: skip
    # one step (adaptive loop)
    return _stages(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, h, z, K, ztmp, znew,
                   TA, TB, TC, k0_ready, pre, av, J)  # fmt: skip


@njit(cache=True, error_model="numpy")
def _rk_fixed_steps(
    fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, a, h, m, z, K, ztmp, znew,
    TA, TB, TC, pre, av, J,
):  # fmt: skip
    # m steps of size h from time a, z updated in place; returns (steps taken, time reached).
    # A step whose result is not finite stops the loop (z then holds that result) and the
    # returned time is the start of that step.
    n = z.shape[0]
    for q in range(m):
        t = a + q * h
        _stages(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, h, z, K, ztmp, znew,
                TA, TB, TC, False, pre, av, J)  # fmt: skip
        finite = True
        for i in range(n):
            v = znew[i]
            finite &= math.isfinite(v)
            z[i] = v
        if not finite:
            return q, t
    return m, a + m * h


@njit(cache=True)
def _wrms(e, z, znew, rtol, atol):
    n = e.shape[0]
    acc = 0.0
    for i in range(n):
        sc = atol[i] + rtol[i] * max(abs(z[i]), abs(znew[i]))
        r = e[i] / sc
        acc += r * r
    return math.sqrt(acc / n)


@njit(cache=True)
def _initial_step(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, te, z, K, ztmp, rtol,
                  atol, order, pre, av, J):  # fmt: skip
    """Hairer's starting step from two field evaluations (``K[0] = f(t, z)`` is left valid)."""
    n = z.shape[0]
    eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, z, K, 0, pre, av, J)
    d0 = 0.0
    d1 = 0.0
    for i in range(n):
        sc = atol[i] + rtol[i] * abs(z[i])
        d0 += (z[i] / sc) ** 2
        d1 += (K[0, i] / sc) ** 2
    d0 = math.sqrt(d0 / n)
    d1 = math.sqrt(d1 / n)
    hh = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    hh = min(hh, te - t)
    for i in range(n):
        ztmp[i] = z[i] + hh * K[0, i]
    eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t + hh, ztmp, K, 1, pre, av, J)
    d2 = 0.0
    for i in range(n):
        sc = atol[i] + rtol[i] * abs(z[i])
        d2 += ((K[1, i] - K[0, i]) / sc) ** 2
    d2 = math.sqrt(d2 / n) / hh
    dm = max(d1, d2)
    if not math.isfinite(dm):
        h1 = hh
    elif dm <= 1e-15:
        h1 = max(1e-6, hh * 1e-3)
    else:
        h1 = (0.01 / dm) ** (1.0 / order)
    return min(100.0 * hh, h1, te - t)


@njit(cache=True)
def _control(err, finite, errold, rejected_last, expo1):
    """PI step-size control: ``(accept, factor, errold, nonfinite)`` for a step of error ``err``.

    Accepted (``err <= 1`` and a finite new state): ``fac = 0.9 err^-expo1 errold^beta`` in
    [0.2, 10], at most 1 right after a rejection. Rejected: ``max(0.2, 0.9 err^-expo1)``, or
    0.1 when the step produced NaN/inf (``nonfinite`` then True).
    """
    if err <= 1.0 and finite:
        if err == 0.0:
            fac = _FAC_MAX
        else:
            fac = _SAFETY * err ** (-expo1) * errold**_BETA
            fac = min(_FAC_MAX, max(_FAC_MIN, fac))
        if rejected_last:
            fac = min(fac, 1.0)
        return True, fac, max(err, 1e-4), False
    if math.isfinite(err) and finite:
        return False, max(_FAC_MIN, _SAFETY * err ** (-expo1)), errold, False
    return False, 0.1, errold, True


@njit(cache=True)
def _dense_output(Y, col, k_out, t_out, t, tnew, h, z, znew, K, TD):
    """Write the outputs in (t, tnew] of an accepted step into ``Y[:, col]``; next output index.

    Hairer's continuous extension of Dormand-Prince (order 4) with weights ``TD``.
    """
    n = z.shape[0]
    S = K.shape[0]
    T = t_out.shape[0]
    while k_out < T and t_out[k_out] <= tnew:
        tk = t_out[k_out]
        if tk == tnew:
            for i in range(n):
                Y[k_out, col, i] = znew[i]
        else:
            th = (tk - t) / h
            th1 = 1.0 - th
            for i in range(n):
                ydiff = znew[i] - z[i]
                bspl = h * K[0, i] - ydiff
                r4 = ydiff - h * K[S - 1, i] - bspl
                r5 = 0.0
                for s in range(S):
                    r5 += TD[s] * K[s, i]
                r5 *= h
                Y[k_out, col, i] = z[i] + th * (ydiff + th1 * (bspl + th * (r4 + th1 * r5)))
        k_out += 1
    return k_out


@njit(cache=True)
def rk_solve_one(
    fn_ip, fn_s, jac_fn, args, model, d, nvar, z0, t_out, tstops, sched, adaptive,
    TA, TB, TC, TE, TD, order, rtol, atol, h0, max_steps, Y, col, stats,
):  # fmt: skip
    """Integrate one trajectory from ``t_out[0]`` through every time of ``t_out``.

    The state ``z0`` has length ``n = d (1 + nvar)`` (state then row-major tangents, see
    :func:`eval_field`); frame ``k`` is written to ``Y[k, col, :]``. The field is evaluated
    with layer ``l`` = number of ``tstops`` <= t and steps never cross a stop.

    Fixed step (``adaptive`` False): the steps of ``sched = fixed_schedule(t_out, tstops, dt)``
    (every interval between consecutive output times and stops cut into ``ceil(length / dt)``
    equal steps, one step when ``dt <= 0``).
    Adaptive (``adaptive`` True, first-same-as-last tableau with error weights ``TE`` and dense
    weights ``TD``): PI step-size control on the weighted RMS norm of the error estimate with
    per-component ``rtol``/``atol``; output times are filled by the dense output; ``h0 > 0`` is
    the first step, else it is chosen automatically. ``stats`` (3,) gets accepted steps,
    rejected steps and field evaluations.

    Returns ``(status, n_frames, t_reached, h_next)``: status ``OK``, ``NONFINITE`` (the state
    became NaN/inf), ``STEP_UNDERFLOW`` or ``MAX_STEPS``; ``n_frames`` frames of ``Y`` are
    valid; ``t_reached`` is the last time with a finite state; ``h_next`` (adaptive runs) the
    proposed next step.
    """
    n = z0.shape[0]
    S = TB.shape[0]
    T = t_out.shape[0]
    H = model[4].shape[1]
    z = z0.copy()
    znew = np.empty(n)
    ztmp = np.empty(n)
    e = np.empty(n)
    K = np.empty((S, n))
    pre = np.empty((2, max(H, 1)))
    av = np.empty((max(H, 1), max(nvar, 1)))
    J = np.empty((d, d))
    for i in range(n):
        Y[0, col, i] = z[i]
    naccept = 0
    nreject = 0
    nfev = 0
    t = t_out[0]
    if not adaptive:
        sa, sh, sm, sl, sf = sched
        nseg = sa.shape[0]
        for g in range(nseg):
            k = sf[g]
            h = sh[g]
            m = sm[g]
            done, t = _rk_fixed_steps(fn_ip, fn_s, jac_fn, args, model, sl[g], d, nvar, sa[g], h,
                                      m, z, K, ztmp, znew, TA, TB, TC, pre, av, J)  # fmt: skip
            nfev += S * min(done + 1, m)
            naccept += done
            if done < m:
                stats[0] = naccept
                stats[1] = nreject
                stats[2] = nfev
                return NONFINITE, k, t, h
            if g == nseg - 1 or sf[g + 1] != k:
                t = t_out[k]
                for i in range(n):
                    Y[k, col, i] = z[i]
        stats[0] = naccept
        stats[1] = nreject
        stats[2] = nfev
        return OK, T, t, 0.0

    # adaptive: Dormand-Prince type pair with PI control and dense output
    tend = t_out[T - 1]
    expo1 = 1.0 / order - 0.75 * _BETA
    h = h0
    k_out = 1
    errold = 1e-4
    rejected_last = False
    nonfinite = False
    status = OK
    while t < tend and status == OK:
        te = _next_stop(tstops, t, tend)
        layer = _layer_at(tstops, t)
        k0_ready = False
        if h <= 0.0:
            h = _initial_step(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, te, z, K, ztmp,
                              rtol, atol, order, pre, av, J)  # fmt: skip
            nfev += 2
            k0_ready = True
        while t < te:
            if naccept + nreject >= max_steps:
                status = MAX_STEPS
                break
            last = False
            if t + h >= te:
                h = te - t
                last = True
            if h <= 16.0 * _EPS * max(abs(t), abs(te)):
                status = NONFINITE if nonfinite else STEP_UNDERFLOW
                break
            nfev += _rk_stages(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, h, z, K,
                               ztmp, znew, TA, TB, TC, k0_ready, pre, av, J)  # fmt: skip
            k0_ready = True  # K[0] = f(t, z) stays valid after a rejection
            for i in range(n):
                acc = 0.0
                for s in range(S):
                    acc += TE[s] * K[s, i]
                e[i] = h * acc
            err = _wrms(e, z, znew, rtol, atol)
            accept, fac, errold, nonfinite = _control(
                err, _all_finite(znew), errold, rejected_last, expo1
            )
            rejected_last = not accept
            if accept:
                tnew = te if last else t + h
                k_out = _dense_output(Y, col, k_out, t_out, t, tnew, h, z, znew, K, TD)
                for i in range(n):
                    z[i] = znew[i]
                    K[0, i] = K[S - 1, i]
                t = tnew
                naccept += 1
            else:
                nreject += 1
            h = h * fac
    stats[0] = naccept
    stats[1] = nreject
    stats[2] = nfev
    return status, k_out, t, h


@njit(cache=True, parallel=True)
def rk_solve(
    fn_ip, fn_s, jac_fn, args, model, d, nvar, Z0, t_out, tstops, dt, adaptive,
    TA, TB, TC, TE, TD, order, rtol, atol, h, max_steps, Y, status, nframes, t_reached, stats,
):  # fmt: skip
    """Integrate a batch ``Z0`` (B, n) in parallel, each trajectory with its own steps.

    Arguments as in :func:`rk_solve_one`; ``Y`` (T, B, n), per-trajectory outputs ``status``,
    ``nframes`` (int64), ``t_reached`` (float64), ``stats`` (B, 3) int64. ``h`` (B,) holds the
    first step on entry (<= 0: automatic) and the proposed next step on exit. Returns the
    number of trajectories that failed.
    """
    B = Z0.shape[0]
    # unpacked here and packed again inside: parfors take arrays, not tuples of arrays
    sa, sh, sm, sl, sf = fixed_schedule(t_out, tstops, dt)
    for bi in prange(B):
        st, nf, tr, hn = rk_solve_one(
            fn_ip, fn_s, jac_fn, args, model, d, nvar, Z0[bi], t_out, tstops,
            (sa, sh, sm, sl, sf), adaptive,
            TA, TB, TC, TE, TD, order, rtol, atol, h[bi], max_steps, Y, bi, stats[bi],
        )  # fmt: skip
        status[bi] = st
        nframes[bi] = nf
        t_reached[bi] = tr
        h[bi] = hn
    nbad = 0
    for bi in range(B):
        if status[bi] != OK:
            nbad += 1
    return nbad


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def _block_field(model, layer, X, out, P, Q):
    """``out = f(X)`` for a block of states ``X`` (nb, d) of the built-in field ``model``.

    The same arithmetic, row by row, as :func:`~nndyn_fast.kernels.neural.neural_rhs` (so
    results do not depend on the block), with each load of the weights shared by four rows:
    ``P = b + X A^T``, then ``σ(P)``, and for form 0 ``out = σ(P) W^T``; ``P``, ``Q`` (nb, H)
    are scratch.
    """
    W, WT, A, AT, b, code, form = model
    nb, d = X.shape
    H = P.shape[1]
    for r in range(nb):
        for j in range(H):
            P[r, j] = b[layer, j]
    block_matmul_acc(AT, layer, X, nb, d, P, H)
    dst = Q if form == FORM_OUTER else out
    if code == TANH:
        for r in range(nb):
            for j in range(H):
                dst[r, j] = tanh_fast(P[r, j])
    else:
        for r in range(nb):
            for j in range(H):
                dst[r, j] = act(code, P[r, j])
    if form == FORM_OUTER:
        for r in range(nb):
            for i in range(d):
                out[r, i] = 0.0
        block_matmul_acc(WT, layer, Q, nb, H, out, d)


@njit(cache=True, error_model="numpy")
def _lockstep_block(model, TA, TB, TC, Z0, t_out, sched, Y, lo, status, nframes, t_reached,
                    stats):  # fmt: skip
    # the trajectories Z0 (nb, d) = rows lo, lo + 1, ... of the batch, in lockstep
    nb, d = Z0.shape
    S = TB.shape[0]
    T = t_out.shape[0]
    H = model[4].shape[1]
    z = Z0.copy()
    K = np.empty((S, nb, d))
    ztmp = np.empty((nb, d))
    P = np.empty((nb, H))
    Q = np.empty((nb, H))
    alive = np.ones(nb, np.bool_)
    for r in range(nb):
        status[r] = OK
        for i in range(d):
            Y[0, lo + r, i] = z[r, i]
    steps = 0
    t = t_out[0]
    sa, sh, sm, sl, sf = sched
    nseg = sa.shape[0]
    for g in range(nseg):
        k = sf[g]
        a = sa[g]
        h = sh[g]
        layer = sl[g]
        for q in range(sm[g]):
            t = a + q * h
            _block_field(model, layer, z, K[0], P, Q)
            for s in range(1, S):
                for r in range(nb):
                    for i in range(d):
                        ztmp[r, i] = z[r, i]
                for j in range(s):
                    c = h * TA[s, j]
                    if c != 0.0:
                        for r in range(nb):
                            for i in range(d):
                                ztmp[r, i] += c * K[j, r, i]
                _block_field(model, layer, ztmp, K[s], P, Q)
            # znew = z + h sum_s B_s k_s, summed in stage order as in the per-trajectory loop
            for r in range(nb):
                for i in range(d):
                    ztmp[r, i] = z[r, i]
            for s in range(S):
                c = h * TB[s]
                if c != 0.0:
                    for r in range(nb):
                        for i in range(d):
                            ztmp[r, i] += c * K[s, r, i]
            for r in range(nb):
                finite = True
                for i in range(d):
                    v = ztmp[r, i]
                    finite &= math.isfinite(v)
                    z[r, i] = v
                if alive[r] and not finite:
                    alive[r] = False
                    status[r] = NONFINITE
                    nframes[r] = k
                    t_reached[r] = t
                    stats[r, 0] = steps
                    stats[r, 2] = S * (steps + 1)
            steps += 1
        if g == nseg - 1 or sf[g + 1] != k:
            t = t_out[k]
            for r in range(nb):
                if alive[r]:
                    for i in range(d):
                        Y[k, lo + r, i] = z[r, i]
    for r in range(nb):
        stats[r, 1] = 0
        if alive[r]:
            nframes[r] = T
            t_reached[r] = t
            stats[r, 0] = steps
            stats[r, 2] = S * steps


@njit(cache=True, parallel=True)
def rk_fixed_lockstep(model, TA, TB, TC, Z0, t_out, tstops, dt, block, Y, status, nframes,
                      t_reached, stats):  # fmt: skip
    """Fixed-step RK (``adaptive`` False) for the built-in field, ``block`` trajectories at once.

    Every trajectory of a fixed-step run takes the same steps (see :func:`rk_solve_one`), so a
    block of ``nb`` states advances together and each stage is ``K_s = f(Z + h sum_j A_sj K_j)``
    on the (nb, d) block: a blocked matrix product instead of nb matrix-vector products, with
    the same arithmetic per trajectory (bitwise the states, statuses and statistics of
    :func:`rk_solve`, for any block size). Blocks run in parallel. Outputs as in
    :func:`rk_solve` (states only, no tangents); a trajectory that turns NaN/inf gets
    ``NONFINITE``, the frame count and the start time of that step, and its later frames are
    left unwritten.
    """
    B = Z0.shape[0]
    sa, sh, sm, sl, sf = fixed_schedule(t_out, tstops, dt)  # arrays into the parfor
    nblocks = (B + block - 1) // block
    for ib in prange(nblocks):
        lo = ib * block
        hi = min(B, lo + block)
        _lockstep_block(model, TA, TB, TC, Z0[lo:hi], t_out, (sa, sh, sm, sl, sf), Y, lo,
                        status[lo:hi], nframes[lo:hi], t_reached[lo:hi], stats[lo:hi])  # fmt: skip


@njit(cache=True, error_model="numpy")
def _adaptive_block(model, TA, TB, TC, TE, TD, order, rtol, atol, Z0, t_out, tstops, h0,
                    max_steps, Y, lo, status, nframes, t_reached, stats):  # fmt: skip
    # the trajectories Z0 (nb, d) = rows lo, lo + 1, ... of the batch, each with its own steps
    # (the logic of rk_solve_one, adaptive branch), their stages evaluated together
    nb, d = Z0.shape
    S = TB.shape[0]
    T = t_out.shape[0]
    H = model[4].shape[1]
    z = Z0.copy()
    znew = np.empty((nb, d))
    K = np.empty((nb, S, d))
    X = np.empty((nb, d))
    F = np.empty((nb, d))
    P = np.empty((nb, H))
    Q = np.empty((nb, H))
    e = np.empty(d)
    ztmp = np.empty(d)
    pre = np.empty((2, max(H, 1)))
    av = np.empty((1, 1))
    J = np.empty((1, 1))
    idx = np.empty(nb, np.int64)
    need0 = np.empty(nb, np.int64)
    t = np.full(nb, t_out[0])
    h = h0.copy()
    te = np.empty(nb)
    last = np.zeros(nb, np.bool_)
    errold = np.full(nb, 1e-4)
    rejected_last = np.zeros(nb, np.bool_)
    nonfinite = np.zeros(nb, np.bool_)
    k0_ready = np.zeros(nb, np.bool_)
    done = np.zeros(nb, np.bool_)
    k_out = np.ones(nb, np.int64)
    tend = t_out[T - 1]
    expo1 = 1.0 / order - 0.75 * _BETA
    for r in range(nb):
        status[r] = OK
        stats[r, 0] = 0
        stats[r, 1] = 0
        stats[r, 2] = 0
        done[r] = not t[r] < tend
        for i in range(d):
            Y[0, lo + r, i] = z[r, i]
    while True:
        # the rows that step now: unfinished, in the lowest layer among the unfinished rows
        lmin = -1
        for r in range(nb):
            if not done[r]:
                lr = _layer_at(tstops, t[r])
                if lmin < 0 or lr < lmin:
                    lmin = lr
        if lmin < 0:
            break
        na = 0
        n0 = 0
        for r in range(nb):
            if done[r] or _layer_at(tstops, t[r]) != lmin:
                continue
            te[r] = _next_stop(tstops, t[r], tend)
            if h[r] <= 0.0:
                h[r] = _initial_step(None, None, None, (), model, lmin, d, 0, t[r], te[r], z[r],
                                     K[r], ztmp, rtol, atol, order, pre, av, J)  # fmt: skip
                stats[r, 2] += 2
                k0_ready[r] = True
            if stats[r, 0] + stats[r, 1] >= max_steps:
                status[r] = MAX_STEPS
                done[r] = True
                continue
            last[r] = False
            if t[r] + h[r] >= te[r]:
                h[r] = te[r] - t[r]
                last[r] = True
            if h[r] <= 16.0 * _EPS * max(abs(t[r]), abs(te[r])):
                status[r] = NONFINITE if nonfinite[r] else STEP_UNDERFLOW
                done[r] = True
                continue
            idx[na] = r
            na += 1
            if not k0_ready[r]:
                need0[n0] = r
                n0 += 1
        if n0 > 0:
            for q in range(n0):
                for i in range(d):
                    X[q, i] = z[need0[q], i]
            _block_field(model, lmin, X[:n0], F[:n0], P[:n0], Q[:n0])
            for q in range(n0):
                r = need0[q]
                for i in range(d):
                    K[r, 0, i] = F[q, i]
                stats[r, 2] += 1
                k0_ready[r] = True
        for s in range(1, S):
            for q in range(na):
                r = idx[q]
                for i in range(d):
                    X[q, i] = z[r, i]
                for j in range(s):
                    c = h[r] * TA[s, j]
                    if c != 0.0:
                        for i in range(d):
                            X[q, i] += c * K[r, j, i]
            _block_field(model, lmin, X[:na], F[:na], P[:na], Q[:na])
            for q in range(na):
                r = idx[q]
                for i in range(d):
                    K[r, s, i] = F[q, i]
        for q in range(na):
            r = idx[q]
            hr = h[r]
            stats[r, 2] += S - 1
            for i in range(d):
                znew[r, i] = z[r, i]
            for s in range(S):
                c = hr * TB[s]
                if c != 0.0:
                    for i in range(d):
                        znew[r, i] += c * K[r, s, i]
            for i in range(d):
                acc = 0.0
                for s in range(S):
                    acc += TE[s] * K[r, s, i]
                e[i] = hr * acc
            err = _wrms(e, z[r], znew[r], rtol, atol)
            accept, fac, errold[r], nonfinite[r] = _control(
                err, _all_finite(znew[r]), errold[r], rejected_last[r], expo1
            )
            rejected_last[r] = not accept
            if accept:
                tnew = te[r] if last[r] else t[r] + hr
                k_out[r] = _dense_output(Y, lo + r, k_out[r], t_out, t[r], tnew, hr, z[r],
                                         znew[r], K[r], TD)  # fmt: skip
                for i in range(d):
                    z[r, i] = znew[r, i]
                    K[r, 0, i] = K[r, S - 1, i]
                t[r] = tnew
                stats[r, 0] += 1
                if t[r] >= tend:
                    done[r] = True
                elif t[r] >= te[r]:
                    k0_ready[r] = False  # a new layer: f(t, z) changes
            else:
                stats[r, 1] += 1
            h[r] = hr * fac
    for r in range(nb):
        nframes[r] = k_out[r]
        t_reached[r] = t[r]
        h0[r] = h[r]


@njit(cache=True, parallel=True)
def rk_adaptive_lockstep(model, TA, TB, TC, TE, TD, order, rtol, atol, Z0, t_out, tstops, h,
                         max_steps, block, Y, status, nframes, t_reached, stats):  # fmt: skip
    """Adaptive RK (first-same-as-last pair) for the built-in field, ``block`` trajectories at once.

    Each trajectory keeps its own steps, errors and statuses exactly as in :func:`rk_solve_one`
    (bitwise the same results); only the evaluation is shared: at every round the stage states
    ``z_r + h_r sum_j A_sj K_rj`` of the stepping members of a block form one (na, d) matrix
    and ``f`` is a blocked matrix product. Members in different layers step in turns (lowest
    layer first). Blocks run in parallel; ``h`` (B,) holds first steps on entry and next steps
    on exit.
    """
    B = Z0.shape[0]
    nblocks = (B + block - 1) // block
    for ib in prange(nblocks):
        lo = ib * block
        hi = min(B, lo + block)
        _adaptive_block(model, TA, TB, TC, TE, TD, order, rtol, atol, Z0[lo:hi], t_out, tstops,
                        h[lo:hi], max_steps, Y, lo, status[lo:hi], nframes[lo:hi],
                        t_reached[lo:hi], stats[lo:hi])  # fmt: skip
