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

Every run goes through the same code: :func:`rk_solve` (blocks of trajectories in parallel) or
:func:`rk_solve_serial` call :func:`solve_block` (the fixed-step schedule, or per-trajectory
step-size control and dense output), which steps with :func:`_advance`, the one stepping loop
(stages and their combination, for the tableau given). Stages of the built-in field for many
trajectories are one blocked matrix product (:func:`block_stage`); user fields and variational
equations are evaluated row by row.

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
from .neural import FORM_OUTER, block_matmul_acc, neural_rhs

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
# status codes, error norm, PI controller and starting-step rule: kernels.control


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
        if nvar == 0:
            r = fn_s(t, z, args)
        else:
            r = fn_s(t, z[:d], args)
        for i in range(d):
            K[s, i] = r[i]
        if nvar > 0:
            _user_tangent(jac_fn, args, t, z, K[s], d, nvar, J)
    else:
        neural_rhs(model, layer, d, nvar, z, K, s, pre, av)


@njit(cache=True, error_model="numpy")
def eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, z, K, s, pre, av, J):
    """``K[s] = (f(t, x), Df(x) V)`` for the state ``z = (x, V)`` (see :func:`_eval_field`)."""
    _eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, z, K, s, pre, av, J)


@njit(cache=True)
def _row_finite(Z, r):
    # all of Z[r] finite (a row index, not a view: views cost reference counting per step)
    for i in range(Z.shape[1]):
        if not math.isfinite(Z[r, i]):
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


@njit(cache=True)
def _initial_step(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, te, z, K, ztmp, rtol,
                  atol, order, pre, av, J):  # fmt: skip
    """Hairer's starting step from two field evaluations (``K[0] = f(t, z)`` is left valid)."""
    n = z.shape[0]
    row0, row1 = np.int64(0), np.int64(1)  # not literals: one compiled version for any call
    eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t, z, K, row0, pre, av, J)
    hh, d1 = initial_step_guess(z, K[0], rtol, atol)
    hh = min(hh, te - t)
    for i in range(n):
        ztmp[i] = z[i] + hh * K[0, i]
    eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t + hh, ztmp, K, row1, pre, av, J)
    for i in range(n):
        ztmp[i] = K[1, i] - K[0, i]
    d2 = wrms_norm(ztmp, z, z, rtol, atol) / hh
    return min(initial_step_refine(hh, d1, d2, order), te - t)


@njit(cache=True)
def _dense_output(Y, col, k_out, t_out, t, tnew, h, z, znew, r, K, TD):
    """Write the outputs in (t, tnew] of an accepted step of row ``r`` into ``Y[:, col]``.

    Hairer's continuous extension of Dormand-Prince (order 4) with weights ``TD``; the stages
    of the step are ``K[r S + s]``. Returns the next output index.
    """
    n = z.shape[1]
    S = TD.shape[0]
    T = t_out.shape[0]
    k0 = r * S
    while k_out < T and t_out[k_out] <= tnew:
        tk = t_out[k_out]
        if tk == tnew:
            for i in range(n):
                Y[k_out, col, i] = znew[r, i]
        else:
            th = (tk - t) / h
            th1 = 1.0 - th
            for i in range(n):
                ydiff = znew[r, i] - z[r, i]
                bspl = h * K[k0, i] - ydiff
                r4 = ydiff - h * K[k0 + S - 1, i] - bspl
                r5 = 0.0
                for s in range(S):
                    r5 += TD[s] * K[k0 + s, i]
                r5 *= h
                Y[k_out, col, i] = z[r, i] + th * (ydiff + th1 * (bspl + th * (r4 + th1 * r5)))
        k_out += 1
    return k_out


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
def block_stage(model, layer, s, rows, m, h, z, K, TA, wsb):
    # stage s of the rows r = rows[q], q < m, of the built-in field without tangents: the stage
    # states z_r + h_r sum_j A_sj k_rj form one matrix and f is one blocked product, k_rs into
    # K[r S + s] (the same arithmetic, row by row, as neural_rhs); wsb = (X, F, P, Q) scratch.
    # The row-by-row branch of _advance forms the same sum in place: a shared helper cost a call
    # or reference counting per stage there (measured: 3.6x slower per step for a small user field)
    X, F, P, Q = wsb
    S = TA.shape[0]
    d = z.shape[1]
    for q in range(m):
        r = rows[q]
        c0 = h[r]
        for i in range(d):
            X[q, i] = z[r, i]
        for j in range(s):
            c = c0 * TA[s, j]
            if c != 0.0:
                for i in range(d):
                    X[q, i] += c * K[r * S + j, i]
    _block_field(model, layer, X[:m], F[:m], P[:m], Q[:m])
    for q in range(m):
        r = rows[q]
        for i in range(d):
            K[r * S + s, i] = F[q, i]


@njit(cache=True, error_model="numpy")
def _advance(fn_ip, fn_s, jac_fn, args, model, blocked, layer, nvar, rows0, n0, rows, na, t,
             h, z, znew, K, TA, TB, TC, a, m, failed, wsb, x, pre, av, J, d):  # fmt: skip
    """RK steps of the rows ``r = rows[:na]`` of a block: the one stepping loop.

    A step of size ``h[r]`` from ``(t[r], z[r])``: the stages ``k_rs = f(t_r + C_s h_r, z_r +
    h_r sum_j A_sj k_rj)`` into ``K[r S + s]`` (stage 0 only for the rows ``rows0[:n0]``), then
    ``znew[r] = z[r] + h[r] sum_s B_s k_rs`` summed in stage order. With ``blocked`` = 1 (the
    built-in field without tangents) the rows of a stage are evaluated together, one blocked
    product (:func:`block_stage`); with 0 (user fields, tangents) the caller must pass one row
    (``na`` = 1: only ``rows[0]`` is evaluated), written out in the loop without array views.
    The arithmetic of a row is the same either way. (An integer, not the stage function
    itself: a function argument puts its address into the cache key, so the on-disk cache
    would never match.)

    ``m == 0`` (adaptive): one trial step (the rows not in ``rows0`` keep ``f(t, z)`` from their
    last step in ``K[r S]``); ``z`` is left to the step-size control.
    ``m >= 1`` (fixed step, ``rows0`` = ``rows``): ``m`` steps from time ``a``, step ``q``
    starting at ``a + q h[r]``, ``z`` taking each result. The first step whose result is not
    finite is recorded in ``failed[r]`` (-1 on entry); such rows go on with NaN until the
    caller drops them, and the loop ends early once every row has failed. ``wsb`` holds the
    scratch of :func:`block_stage`, ``x`` (n,), ``pre``, ``av`` and ``J`` that of a row (see
    :func:`solve_block`); ``d`` is the state dimension (``n = d (1 + nvar)``).
    """
    nb, n = z.shape
    S = TB.shape[0]
    r1 = rows[0]  # the row of a row-by-row call
    h1 = h[r1]
    for q in range(max(m, 1)):
        t1 = a + q * h1 if m > 0 else t[r1]
        for s in range(S):
            if blocked:
                # (no array variable chosen per stage: that costs reference counting each time)
                if s == 0:
                    if n0 > 0:
                        block_stage(model, layer, s, rows0, n0, h, z, K, TA, wsb)
                else:
                    block_stage(model, layer, s, rows, na, h, z, K, TA, wsb)
            elif s > 0 or n0 > 0:
                for i in range(n):
                    x[i] = z[r1, i]
                for j in range(s):
                    c = h1 * TA[s, j]
                    if c != 0.0:
                        for i in range(n):
                            x[i] += c * K[r1 * S + j, i]
                _eval_field(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t1 + TC[s] * h1, x,
                            K, r1 * S + s, pre, av, J)  # fmt: skip
        for p in range(na):
            r = rows[p]
            c0 = h[r]
            for i in range(n):
                znew[r, i] = z[r, i]
            for s in range(S):
                c = c0 * TB[s]
                if c != 0.0:
                    for i in range(n):
                        znew[r, i] += c * K[r * S + s, i]
        if m == 0:
            return
        # z takes the results; a row that turns NaN/inf is marked (the caller drops it after
        # the piece; it goes on, harmlessly, until then), and the loop ends when none is left
        alive = 0
        for p in range(na):
            r = rows[p]
            finite = True
            for i in range(n):
                v = znew[r, i]
                finite &= math.isfinite(v)
                z[r, i] = v
            if not finite and failed[r] < 0:
                failed[r] = q
            if failed[r] < 0:
                alive += 1
        if alive == 0:
            return


@njit(cache=True, error_model="numpy")
def solve_block(
    fn_ip, fn_s, jac_fn, args, model, blocked, d, nvar, Z0, t_out, tstops, sched,
    TA, TB, TC, TE, TD, order, rtol, atol, h0, max_steps, Y, lo, status, nframes, t_reached,
    stats,
):  # fmt: skip
    """Integrate the rows of ``Z0`` (nb, n) through the times ``t_out``, steps by :func:`_advance`.

    Row ``r`` is trajectory ``lo + r`` of the batch; its state has length ``n = d (1 + nvar)``
    (state then row-major tangents, see :func:`eval_field`) and frame ``k`` is written to
    ``Y[k, lo + r, :]``. The field is evaluated in layer ``l`` = number of ``tstops`` <= t and
    steps never cross a stop. The stages of the rows that step together are evaluated together
    (one blocked matrix product per stage for the built-in field); the arithmetic of a row does
    not depend on the other rows, so results are bitwise the same for any block size.

    Fixed step (``TE`` and ``TD`` None: the adaptive code is left out at compile time): every row
    takes the steps of ``sched = fixed_schedule(t_out, tstops, dt)``; a row whose state turns
    NaN/inf stops (``NONFINITE``, time = start of that step, later frames unwritten).
    Adaptive (first-same-as-last tableau with error weights ``TE`` and dense weights ``TD``;
    the fixed-step code is left out at compile time): each row has its own steps, with PI
    step-size control on the weighted RMS norm of the error estimate with per-component
    ``rtol``/``atol`` (:mod:`~nndyn_fast.kernels.control`); output times filled by the dense
    output; ``h0[r] > 0`` is the first step, else it is chosen automatically
    (:func:`_initial_step`). Rows in different layers step in turns, lowest layer first.

    Per row on exit: ``status`` (``OK``, ``NONFINITE``, ``STEP_UNDERFLOW``, ``MAX_STEPS``),
    ``nframes`` (valid frames of ``Y``), ``t_reached`` (last time with a finite state),
    ``stats`` (accepted steps, rejected steps, field evaluations) and ``h0`` (adaptive: the
    proposed next step).
    """
    nb, n = Z0.shape
    S = TB.shape[0]
    T = t_out.shape[0]
    H = model[4].shape[1]
    z = Z0.copy()
    znew = np.empty((nb, n))
    K = np.empty((nb * S, n))  # stage s of row r in K[r S + s]
    ztmp = np.empty(n)
    e = np.empty(n)
    pre = np.empty((2, max(H, 1)))
    t = np.full(nb, t_out[0])  # the time and step of each row
    h = h0.copy()
    X = np.empty((nb, n))
    F = np.empty((nb, n))
    K2 = np.empty((2, n))
    P = np.empty((nb, H))
    Q = np.empty((nb, H))
    av = np.empty((max(H, 1), max(nvar, 1)))
    J = np.empty((d, d))
    wsb = (X, F, P, Q)
    idx = np.zeros(nb, np.int64)  # the rows that step in a round
    need0 = np.empty(nb, np.int64)
    failed = np.full(nb, -1, np.int64)
    tend = t_out[T - 1]
    for r in range(nb):
        status[r] = OK
        stats[r, 0] = 0
        stats[r, 1] = 0
        stats[r, 2] = 0
        nframes[r] = T
        for i in range(n):
            Y[0, lo + r, i] = z[r, i]

    # fixed steps: the built-in field without tangents advances all rows together; user fields
    # and tangents advance one row at a time through the whole schedule (groups of one row)
    if TE is None:
        sa, sh, sm, sl, sf = sched
        nseg = sa.shape[0]
        for grp in range(1 if blocked else nb):
            na = nb if blocked else 1
            for p in range(na):
                idx[p] = p if blocked else grp
            steps = 0
            for g in range(nseg):
                for p in range(na):
                    h[idx[p]] = sh[g]
                nrow = np.int64(na)  # not a literal: one compiled stage loop for every call
                _advance(fn_ip, fn_s, jac_fn, args, model, blocked, sl[g], nvar, idx, nrow, idx,
                         nrow, t, h, z, znew, K, TA, TB, TC, sa[g], sm[g], failed, wsb, ztmp, pre,
                         av, J, d)  # fmt: skip
                left = 0
                for p in range(na):
                    r = idx[p]
                    if failed[r] < 0:
                        idx[left] = r
                        left += 1
                    else:
                        status[r] = NONFINITE
                        nframes[r] = sf[g]
                        t_reached[r] = sa[g] + failed[r] * sh[g]
                        stats[r, 0] = steps + failed[r]
                        stats[r, 2] = S * (steps + failed[r] + 1)
                na = left
                if na == 0:
                    break
                steps += sm[g]
                k = sf[g]
                if g == nseg - 1 or sf[g + 1] != k:  # frame k complete
                    for p in range(na):
                        r = idx[p]
                        for i in range(n):
                            Y[k, lo + r, i] = z[r, i]
            for p in range(na):
                r = idx[p]
                t_reached[r] = tend
                stats[r, 0] = steps
                stats[r, 2] = S * steps
        return

    # adaptive: each row with its own steps and controller state
    te = np.empty(nb)
    last = np.zeros(nb, np.bool_)
    errold = np.full(nb, ERR_FLOOR)
    rejected_last = np.zeros(nb, np.bool_)
    nonfinite = np.zeros(nb, np.bool_)
    k0_ready = np.zeros(nb, np.bool_)
    done = np.zeros(nb, np.bool_)
    k_out = np.ones(nb, np.int64)
    expo1 = pi_exponent(order)
    trial = np.int64(0)  # m = 0: one trial step (_advance)
    single = np.int64(1)
    one = np.empty(1, np.int64)
    fresh = np.zeros(nb, np.bool_)
    for r in range(nb):
        done[r] = not t[r] < tend
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
        layer = np.int64(lmin)  # not a literal: one compiled version of each callee
        na = 0
        n0 = 0
        for r in range(nb):
            if done[r] or _layer_at(tstops, t[r]) != lmin:
                continue
            te[r] = _next_stop(tstops, t[r], tend)
            if h[r] <= 0.0:
                h[r] = _initial_step(fn_ip, fn_s, jac_fn, args, model, layer, d, nvar, t[r], te[r],
                                     z[r], K2, ztmp, rtol, atol, order, pre, av,
                                     J)  # fmt: skip
                for i in range(n):
                    K[r * S, i] = K2[0, i]  # f(t, z)
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
            if h[r] <= 16.0 * EPS * max(abs(t[r]), abs(te[r])):
                status[r] = NONFINITE if nonfinite[r] else STEP_UNDERFLOW
                done[r] = True
                continue
            idx[na] = r
            na += 1
            stats[r, 2] += S - 1
            fresh[r] = not k0_ready[r]
            if not k0_ready[r]:
                need0[n0] = r
                n0 += 1
                stats[r, 2] += 1
                k0_ready[r] = True  # first same as last: kept from each accepted step
        if blocked:
            if na > 0:
                _advance(fn_ip, fn_s, jac_fn, args, model, blocked, layer, nvar, need0,
                         np.int64(n0), idx, np.int64(na), t, h, z, znew, K, TA, TB, TC, 0.0,
                         trial, failed, wsb, ztmp, pre, av, J, d)  # fmt: skip
        else:
            for p in range(na):  # row by row: the stage loop takes one row at a time
                one[0] = idx[p]
                _advance(fn_ip, fn_s, jac_fn, args, model, blocked, layer, nvar, one,
                         np.int64(fresh[idx[p]]), one, single, t, h, z, znew, K, TA, TB, TC, 0.0,
                         trial, failed, wsb, ztmp, pre, av, J, d)  # fmt: skip
        for p in range(na):
            r = idx[p]
            hr = h[r]
            for i in range(n):
                acc = 0.0
                for s in range(S):
                    acc += TE[s] * K[r * S + s, i]
                e[i] = hr * acc
            err = wrms_norm(e, z[r], znew[r], rtol, atol)
            accept, fac, errold[r], nonfinite[r] = pi_control(
                err, _row_finite(znew, r), errold[r], rejected_last[r], expo1
            )
            rejected_last[r] = not accept
            if accept:
                tnew = te[r] if last[r] else t[r] + hr
                k_out[r] = _dense_output(Y, lo + r, k_out[r], t_out, t[r], tnew, hr, z, znew, r,
                                         K, TD)  # fmt: skip
                for i in range(n):
                    z[r, i] = znew[r, i]
                    K[r * S, i] = K[r * S + S - 1, i]
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
        t_reached[r] = t[r]
        nframes[r] = k_out[r]
        h0[r] = h[r]


@njit(cache=True)
def _count_failed(status):
    nbad = 0
    for st in status:
        if st != OK:
            nbad += 1
    return nbad


@njit(cache=True, parallel=True)
def rk_solve(
    fn_ip, fn_s, jac_fn, args, model, blocked, d, nvar, Z0, t_out, tstops, dt,
    TA, TB, TC, TE, TD, order, rtol, atol, h, max_steps, block, Y, status, nframes, t_reached,
    stats,
):  # fmt: skip
    """Integrate a batch ``Z0`` (B, n) in blocks of ``block`` rows, the blocks in parallel.

    Each block runs :func:`solve_block` (arguments as there; ``dt`` gives the fixed-step
    schedule for ``TE`` None, ``h`` (B,) holds the first steps on entry and, for adaptive runs,
    the proposed next steps on exit (fixed-step runs leave it as it was), ``Y`` (T, B, n),
    per-trajectory ``status``, ``nframes``, ``t_reached``, ``stats`` (B, 3)).
    Returns the number of trajectories that failed.
    """
    B = Z0.shape[0]
    # unpacked here and packed again inside: parfors take arrays, not tuples of arrays
    sa, sh, sm, sl, sf = fixed_schedule(t_out, tstops, dt)
    nblocks = (B + block - 1) // block
    for ib in prange(nblocks):
        lo = ib * block
        hi = min(B, lo + block)
        solve_block(
            fn_ip, fn_s, jac_fn, args, model, blocked, d, nvar, Z0[lo:hi], t_out, tstops,
            (sa, sh, sm, sl, sf), TA, TB, TC, TE, TD, order, rtol, atol, h[lo:hi],
            max_steps, Y, lo, status[lo:hi], nframes[lo:hi], t_reached[lo:hi], stats[lo:hi],
        )  # fmt: skip
    return _count_failed(status)


@njit(cache=True)
def rk_solve_serial(
    fn_ip, fn_s, jac_fn, args, model, blocked, d, nvar, Z0, t_out, tstops, dt,
    TA, TB, TC, TE, TD, order, rtol, atol, h, max_steps, block, Y, status, nframes, t_reached,
    stats,
):  # fmt: skip
    """:func:`rk_solve` on the calling thread (the same results; compiles faster)."""
    B = Z0.shape[0]
    sched = fixed_schedule(t_out, tstops, dt)
    for lo in range(0, B, block):
        hi = min(B, lo + block)
        solve_block(
            fn_ip, fn_s, jac_fn, args, model, blocked, d, nvar, Z0[lo:hi], t_out, tstops,
            sched, TA, TB, TC, TE, TD, order, rtol, atol, h[lo:hi], max_steps, Y, lo,
            status[lo:hi], nframes[lo:hi], t_reached[lo:hi], stats[lo:hi],
        )  # fmt: skip
    return _count_failed(status)
