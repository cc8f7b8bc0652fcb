"""Kuramoto-type networks: the O(N^2) interaction sums, fixed-step and adaptive integrators.

Two models share the kernels (``model`` code):

- ``PHASE`` (0): dθ_i/dt = ω_i + (K/N) Σ_j W_ij sin(θ_j − θ_i − α)
- ``RATE``  (1): dx_i/dt = −x_i + (K/N) Σ_j W_ij σ(x_j) + I_i   (σ by activation code)

The interaction needs S_i = Σ_j W_ij a_j and, for phases, C_i = Σ_j W_ij b_j with a = sin θ,
b = cos θ, since sin(θ_j − θ_i − α) = cos α (sin θ_j cos θ_i − cos θ_j sin θ_i)
− sin α (cos θ_j cos θ_i + sin θ_j sin θ_i). The coupling W is held in one of four forms
(``kind`` code), all evaluated by parallel loops over rows i:

- ``DENSE`` (0): an (N, N) float64 or float32 array, read once per evaluation;
- ``CSR`` (1): a sparse matrix (indptr, indices, data);
- ``STRUCTURED`` (2): a matrix-free graphon with O(N) structure,
  W_ij = (u_i v_j + c_win·[j ∈ window(i)]) μ_j, windows being circular index ranges;
- ``PAIRWISE`` (3): a graphon evaluated pair by pair, W_ij = w(x_i, x_j) μ_j, with a built-in
  ``code`` or a user's jitted ``wfun(x, y)``.

The coupling arrays travel as one tuple ``cp`` (see :func:`coupling_sums`).

Integrators: :func:`network_advance` takes fixed Euler or RK4 steps; :func:`network_adaptive`
takes adaptive Dormand-Prince steps, DOPRI5 (5(4), Hairer's order-4 continuous extension) or
DOP853 (8(5,3), its order-7 continuous extension), with the step-size control of
:mod:`~nndyn_fast.kernels.control`, and fills the save times from the dense output.

References
----------
J. R. Dormand, P. J. Prince, "A family of embedded Runge-Kutta formulae", J. Comput. Appl.
Math. 6 (1980) 19-26. E. Hairer, S. P. Norsett, G. Wanner, "Solving Ordinary Differential
Equations I", 2nd ed., Springer 1993, sections II.4-II.6 and the codes DOPRI5 and DOP853.
"""

import math

import numpy as np
from numba import njit, prange

from .activations import act
from .control import (
    EPS,
    FASTMATH,
    NONFINITE,
    OK,
    STEP_UNDERFLOW,
    initial_step_guess,
    initial_step_refine,
    pi_control,
    pi_exponent,
    wrms_norm,
)
from .rk import DOPRI5_A, DOPRI5_D, DOPRI5_E

PHASE, RATE = 0, 1
DENSE, CSR, STRUCTURED, PAIRWISE = 0, 1, 2, 3
EULER, RK4 = 0, 1
DOPRI5, DOP853 = 2, 3  # adaptive methods (network_adaptive)
# Built-in graphon codes for PAIRWISE evaluation and window construction.
G_CONSTANT, G_SMALL_WORLD, G_POWER_LAW, G_DIRECTED_RING = 0, 1, 2, 3

# FASTMATH (kernels.control) lets LLVM vectorise the row reductions; NaN/inf semantics are kept.
# Each row is reduced by one thread, so results do not depend on the thread count.


@njit(cache=True, fastmath=FASTMATH)
def _dense_rows8(W, i, a, b, two, sa, sb):
    # (a separate function with its own fast-math flags, not inlined into its callers' numba
    # IR: the fused step kernels below, which use no fast math, sum exactly as coupling_dense)
    # rows i .. i + 7 in one pass: a[j], b[j] are loaded once for eight rows of W, and sixteen
    # independent sums keep enough loads in flight to stream W at the read bandwidth. The sums
    # are scalars written out on purpose: an (8, 8) accumulator array indexed in loops
    # vectorises badly (measured 4x slower)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = 0.0
    for j in range(W.shape[1]):
        aj = a[j]
        w0 = np.float64(W[i, j])
        w1 = np.float64(W[i + 1, j])
        w2 = np.float64(W[i + 2, j])
        w3 = np.float64(W[i + 3, j])
        w4 = np.float64(W[i + 4, j])
        w5 = np.float64(W[i + 5, j])
        w6 = np.float64(W[i + 6, j])
        w7 = np.float64(W[i + 7, j])
        s0 += w0 * aj
        s1 += w1 * aj
        s2 += w2 * aj
        s3 += w3 * aj
        s4 += w4 * aj
        s5 += w5 * aj
        s6 += w6 * aj
        s7 += w7 * aj
        if two:
            bj = b[j]
            c0 += w0 * bj
            c1 += w1 * bj
            c2 += w2 * bj
            c3 += w3 * bj
            c4 += w4 * bj
            c5 += w5 * bj
            c6 += w6 * bj
            c7 += w7 * bj
    sa[i], sa[i + 1], sa[i + 2], sa[i + 3] = s0, s1, s2, s3
    sa[i + 4], sa[i + 5], sa[i + 6], sa[i + 7] = s4, s5, s6, s7
    if two:
        sb[i], sb[i + 1], sb[i + 2], sb[i + 3] = c0, c1, c2, c3
        sb[i + 4], sb[i + 5], sb[i + 6], sb[i + 7] = c4, c5, c6, c7


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def coupling_dense(W, a, b, two, sa, sb):
    """S = W a and (if ``two``) C = W b in one pass over W.

    Rows go in groups of eight (in parallel), so each load of ``a[j]``, ``b[j]`` serves eight
    entries of W and the loop runs at the memory bandwidth; the last ``n mod 8`` rows follow
    one by one. Each row is reduced by one thread: results do not depend on the thread count.
    """
    n = W.shape[0]
    for p in prange(n // 8):
        _dense_rows8(W, 8 * p, a, b, two, sa, sb)
    for i in range(n - n % 8, n):
        _dense_row1(W, i, a, b, two, sa, sb)


@njit(cache=True, fastmath=FASTMATH)
def _dense_row1(W, i, a, b, two, sa, sb):
    # one row (the last n mod 8), with the flags of _dense_rows8
    s = 0.0
    c = 0.0
    for j in range(W.shape[1]):
        w = np.float64(W[i, j])
        s += w * a[j]
        if two:
            c += w * b[j]
    sa[i] = s
    if two:
        sb[i] = c


@njit(cache=True, parallel=True)
def coupling_csr(indptr, indices, data, a, b, two, sa, sb):
    """S = W a and (if ``two``) C = W b for W in CSR form (rows in parallel)."""
    n = indptr.shape[0] - 1
    for i in prange(n):
        s = 0.0
        c = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            w = np.float64(data[k])
            j = indices[k]
            s += w * a[j]
            if two:
                c += w * b[j]
        sa[i] = s
        if two:
            sb[i] = c


@njit(cache=True)
def _prefix(mu, a, out):
    """out[k] = Σ_{j<k} μ_j a_j (out has N + 1 entries)."""
    acc = 0.0
    out[0] = 0.0
    for j in range(a.shape[0]):
        acc += mu[j] * a[j]
        out[j + 1] = acc


@njit(cache=True, inline="always")
def _window_sum(prefix, start, length, n):
    end = start + length
    if end <= n:
        return prefix[end] - prefix[start]
    return prefix[n] - prefix[start] + prefix[end - n]


@njit(cache=True, parallel=True)
def coupling_structured(u, v, c_win, start, length, mu, a, b, two, sa, sb, pa, pb):
    """Matrix-free O(N) sums for W_ij = (u_i v_j + c_win [j in window(i)]) μ_j.

    ``start[i]``, ``length[i]`` give the circular index window of row i; ``pa``/``pb`` are
    scratch of length N + 1 for prefix sums.
    """
    n = a.shape[0]
    ta = 0.0
    tb = 0.0
    for j in range(n):
        ta += v[j] * mu[j] * a[j]
        if two:
            tb += v[j] * mu[j] * b[j]
    if c_win != 0.0:
        _prefix(mu, a, pa)
        if two:
            _prefix(mu, b, pb)
    for i in prange(n):
        s = u[i] * ta
        c = u[i] * tb
        if c_win != 0.0 and length[i] > 0:
            s += c_win * _window_sum(pa, start[i], length[i], n)
            if two:
                c += c_win * _window_sum(pb, start[i], length[i], n)
        sa[i] = s
        if two:
            sb[i] = c


@njit(cache=True)
def circular_distance(x, y):
    """Distance of x, y on the circle [0, 1)."""
    d = abs(x - y)
    d = d - math.floor(d)
    return min(d, 1.0 - d)


@njit(cache=True)
def graphon_value(code, params, x, y):
    """Built-in graphon w(x, y) on [0, 1]^2.

    constant: p0; small-world: 1 − p1 if circular distance ≤ r = p0 else p1;
    power-law: (x y)^(−p0); directed ring: 1 if 0 < (y − x) mod 1 ≤ p0 else 0.
    """
    if code == G_SMALL_WORLD:
        return 1.0 - params[1] if circular_distance(x, y) <= params[0] else params[1]
    if code == G_POWER_LAW:
        return (x * y) ** (-params[0])
    if code == G_DIRECTED_RING:
        d = y - x
        d = d - math.floor(d)
        return 1.0 if 0.0 < d <= params[0] else 0.0
    return params[0]


@njit(cache=True)
def _in_window(code, params, x, y):
    if code == G_SMALL_WORLD:
        return circular_distance(x, y) <= params[0]
    d = y - x
    d = d - math.floor(d)
    return 0.0 < d <= params[0]


@njit(cache=True, parallel=True)
def graphon_windows(x, code, params, start, length):
    """Circular index windows {j : x_j near x_i} for sorted positions ``x`` (in place).

    Scans outward from i with the same predicate the pairwise evaluation uses, so the
    structured and pairwise forms select exactly the same pairs.
    """
    n = x.shape[0]
    for i in prange(n):
        back = 0
        if code == G_SMALL_WORLD:
            while back < n - 1 and _in_window(code, params, x[i], x[(i - back - 1) % n]):
                back += 1
        fwd = 0
        self_in = 1 if code == G_SMALL_WORLD else 0
        while back + fwd + self_in < n and _in_window(code, params, x[i], x[(i + fwd + 1) % n]):
            fwd += 1
        if self_in == 1:
            start[i] = (i - back) % n
            length[i] = back + fwd + 1
        else:
            start[i] = (i + 1) % n
            length[i] = fwd


@njit(cache=True, inline="always")
def _pairwise_row(x, mu, code, params, wfun, a, b, two, i):
    """Row i of the on-the-fly sums: (Σ_j w(x_i, x_j) μ_j a_j, the same of b)."""
    s = 0.0
    c = 0.0
    xi = x[i]
    for j in range(x.shape[0]):
        if wfun is None:
            w = graphon_value(code, params, xi, x[j]) * mu[j]
        else:
            w = wfun(xi, x[j]) * mu[j]
        s += w * a[j]
        if two:
            c += w * b[j]
    return s, c


@njit(cache=True, parallel=True)
def coupling_pairwise(x, mu, code, params, wfun, a, b, two, sa, sb):
    """Sums with W_ij = w(x_i, x_j) μ_j evaluated on the fly (O(N^2) work, O(N) memory)."""
    n = x.shape[0]
    for i in prange(n):
        s, c = _pairwise_row(x, mu, code, params, wfun, a, b, two, i)
        sa[i] = s
        if two:
            sb[i] = c


@njit(cache=True, parallel=True)
def graphon_matrix_block(xr, xc, mu, code, params, wfun, out):
    """out[i, j] = w(xr_i, xc_j) μ_j: a block of rows of the dense graphon matrix."""
    for i in prange(xr.shape[0]):
        for j in range(xc.shape[0]):
            if wfun is None:
                out[i, j] = graphon_value(code, params, xr[i], xc[j]) * mu[j]
            else:
                out[i, j] = wfun(xr[i], xc[j]) * mu[j]


@njit(cache=True)
def coupling_sums(kind, cp, wfun, a, b, two, sa, sb):
    """Dispatch to the coupling form ``kind``.

    ``cp = (W, indptr, indices, data, x, mu, u, v, start, length, params, code, c_win,
    pa, pb)``; entries a form does not use may be empty arrays.
    """
    if kind == DENSE:
        coupling_dense(cp[0], a, b, two, sa, sb)
    elif kind == CSR:
        coupling_csr(cp[1], cp[2], cp[3], a, b, two, sa, sb)
    elif kind == STRUCTURED:
        coupling_structured(
            cp[6], cp[7], cp[12], cp[8], cp[9], cp[5], a, b, two, sa, sb, cp[13], cp[14]
        )
    else:
        coupling_pairwise(cp[4], cp[5], cp[11], cp[10], wfun, a, b, two, sa, sb)


# --- fused evaluations: one parallel region per evaluation ------------------------------------
# A stage of a Runge-Kutta step needs every a_j = sin x_j (b_j = cos x_j) before any row's
# sums, and nothing else global. So each evaluation is one parallel loop over units of rows
# (eight rows of a dense W, else one row): the unit's sums, then, for each of its rows, the
# vector field, the stage update (the next stage's state of that row) and that state's sin/cos
# for the next evaluation, written to a second buffer (the pairs a/b alternate). Per row the
# arithmetic is that of coupling_sums and network_rhs, so results are bitwise theirs and do not
# depend on the thread count or on how units are shared out (numba.parallel_chunksize).


@njit(cache=True, inline="always")
def n_units(kind, n):
    """Units of rows of a fused evaluation: groups of eight rows plus the n mod 8 last rows
    for a dense W, else rows."""
    if kind == DENSE:
        return n // 8 + n % 8
    return n


@njit(cache=True, inline="always")
def _unit_rows(kind, n, p):
    p = np.int64(p)  # (a prange index may be unsigned: int64 + uint64 is float64)
    if kind == DENSE:
        g = n // 8
        if p < g:
            return 8 * p, 8 * p + 8
        i = 8 * g + (p - g)
        return i, i + 1
    return p, p + 1


@njit(cache=True)
def _structured_totals(cp, a, b, two, pa, pb):
    """Σ_j v_j μ_j a_j (and b) and the window prefix sums (into ``pa``, ``pb``, (N + 1,), the
    caller's scratch) of the structured form, in the order coupling_structured takes them."""
    v = cp[7]
    mu = cp[5]
    n = a.shape[0]
    ta = 0.0
    tb = 0.0
    for j in range(n):
        ta += v[j] * mu[j] * a[j]
        if two:
            tb += v[j] * mu[j] * b[j]
    if cp[12] != 0.0:
        _prefix(mu, a, pa)
        if two:
            _prefix(mu, b, pb)
    return ta, tb


@njit(cache=True)
def unit_sums(kind, cp, wfun, a, b, two, ta, tb, p, sa, sb, pa, pb):
    """S_i (and C_i) of the rows of unit ``p`` into ``sa``, ``sb``; returns the rows (i0, i1).

    ``ta``, ``tb``, ``pa``, ``pb``: the totals and prefix sums :func:`coupling_totals` made of
    (a, b) for the structured form (else unused). Each row's sum is exactly that of
    :func:`coupling_sums`.
    """
    n = a.shape[0]
    i0, i1 = _unit_rows(kind, n, p)
    if kind == DENSE:
        if i1 - i0 == 8:
            _dense_rows8(cp[0], i0, a, b, two, sa, sb)
        else:
            _dense_row1(cp[0], i0, a, b, two, sa, sb)
    elif kind == CSR:
        indptr, indices, data = cp[1], cp[2], cp[3]
        s = 0.0
        c = 0.0
        for k in range(indptr[i0], indptr[i0 + 1]):
            w = np.float64(data[k])
            j = indices[k]
            s += w * a[j]
            if two:
                c += w * b[j]
        sa[i0] = s
        if two:
            sb[i0] = c
    elif kind == STRUCTURED:
        u, c_win, start, length = cp[6], cp[12], cp[8], cp[9]
        s = u[i0] * ta
        c = u[i0] * tb
        if c_win != 0.0 and length[i0] > 0:
            s += c_win * _window_sum(pa, start[i0], length[i0], n)
            if two:
                c += c_win * _window_sum(pb, start[i0], length[i0], n)
        sa[i0] = s
        if two:
            sb[i0] = c
    else:
        s, c = _pairwise_row(cp[4], cp[5], cp[11], cp[10], wfun, a, b, two, i0)
        sa[i0] = s
        if two:
            sb[i0] = c
    return i0, i1


@njit(cache=True, inline="always")
def _field(two, state, drive, KN, ca, sn, a, b, sa, sb, i):
    # row i of the vector field from its sums (as network_rhs)
    if two:
        # Σ_j W_ij sin(θ_j − θ_i − α) from S_i, C_i and the row's own sin/cos
        inter = ca * (sa[i] * b[i] - sb[i] * a[i]) - sn * (sb[i] * b[i] + sa[i] * a[i])
        return drive[i] + KN * inter
    return -state[i] + KN * sa[i] + drive[i]


@njit(cache=True, inline="always")
def _activate(model, act_code, x, a, b, i):
    if model == PHASE:
        a[i] = math.sin(x[i])
        b[i] = math.cos(x[i])
    else:
        a[i] = act(act_code, x[i])


@njit(cache=True, parallel=True)
def activate(model, act_code, kind, x, a, b):
    """a = sin x, b = cos x (PHASE) or a = σ(x) (RATE): on one thread where the coupling
    costs O(N^2) per evaluation (dense, pairwise), else in parallel."""
    if kind == DENSE or kind == PAIRWISE:
        for i in range(x.shape[0]):
            _activate(model, act_code, x, a, b, i)
    else:
        for i in prange(x.shape[0]):
            _activate(model, act_code, x, a, b, i)


@njit(cache=True)
def coupling_totals(kind, cp, a, b, two, pa, pb):
    """What every row's sum of the structured form needs, before the units of rows: returns
    (Σ_j v_j μ_j a_j, Σ_j v_j μ_j b_j) and fills the prefix sums ``pa``, ``pb`` (N + 1,), scratch
    owned by the caller (callers running at once each pass their own). Other forms: (0, 0)."""
    if kind == STRUCTURED:
        return _structured_totals(cp, a, b, two, pa, pb)
    return 0.0, 0.0


@njit(cache=True)
def coupling_sums_serial(kind, cp, wfun, a, b, two, sa, sb, pa, pb):
    """S = W a and (if ``two``) C = W b on the calling thread, unit by unit: each row's sum is
    bitwise that of :func:`coupling_sums`. ``pa``, ``pb`` (N + 1,): this caller's prefix-sum
    scratch for the structured form (so serial callers on several threads share nothing)."""
    ta, tb = coupling_totals(kind, cp, a, b, two, pa, pb)
    for p in range(n_units(kind, a.shape[0])):
        unit_sums(kind, cp, wfun, a, b, two, ta, tb, p, sa, sb, pa, pb)


@njit(cache=True, parallel=True)
def network_rhs(model, act_code, state, drive, KN, alpha, kind, cp, wfun, a, b, sa, sb, out):
    """Right-hand side of the PHASE or RATE model into ``out`` (a, b, sa, sb are scratch).

    One parallel region (the sums and the field row by row) after :func:`activate`.
    """
    two = model == PHASE
    activate(model, act_code, kind, state, a, b)
    ta, tb = coupling_totals(kind, cp, a, b, two, cp[13], cp[14])
    ca = math.cos(alpha)
    sn = math.sin(alpha)
    for p in prange(n_units(kind, state.shape[0])):
        i0, i1 = unit_sums(kind, cp, wfun, a, b, two, ta, tb, p, sa, sb, cp[13], cp[14])
        for i in range(i0, i1):
            out[i] = _field(two, state, drive, KN, ca, sn, a, b, sa, sb, i)


@njit(cache=True)
def order_parameter_sums(theta):
    """(1/N) Σ_j e^{iθ_j} as (real, imag)."""
    re = 0.0
    im = 0.0
    for j in range(theta.shape[0]):
        re += math.cos(theta[j])
        im += math.sin(theta[j])
    n = theta.shape[0]
    return re / n, im / n


@njit(cache=True)
def _record(model, act_code, state, obs, k):
    """Per-step observables: PHASE → (r, ψ); RATE → (mean σ(x), mean x)."""
    if model == PHASE:
        re, im = order_parameter_sums(state)
        obs[k, 0] = math.sqrt(re * re + im * im)
        obs[k, 1] = math.atan2(im, re)
    else:
        s = 0.0
        m = 0.0
        for j in range(state.shape[0]):
            s += act(act_code, state[j])
            m += state[j]
        obs[k, 0] = s / state.shape[0]
        obs[k, 1] = m / state.shape[0]


@njit(cache=True, parallel=True)
def network_advance(
    model,
    act_code,
    state,
    drive,
    KN,
    alpha,
    dt,
    method,
    n_steps,
    save_every,
    step0,
    kind,
    cp,
    wfun,
    frames,
    obs,
):
    """Advance ``state`` in place by ``n_steps`` fixed steps of Euler or classic RK4.

    After each step k (global step ``step0 + k + 1``) the observables go to ``obs[k]``; when the
    global step is a multiple of ``save_every`` the state is copied to the next row of
    ``frames``. Returns ``(n_done, n_frames, status)``; on a non-finite state the step is
    undone (``state`` holds the last finite one) and status is ``NONFINITE``.

    One parallel region per evaluation (four per RK4 step, one per Euler step): each unit of
    rows takes its sums, its rows of k_s, their next stage state and its sin/cos.
    """
    n = state.shape[0]
    two = model == PHASE
    X = np.empty((2, n))  # stage states, alternating (row cur: the state being evaluated)
    A = np.empty((2, n))  # their sin (or σ)
    B = np.empty((2, n))  # their cos
    sa = np.empty(n)
    sb = np.empty(n)
    Ks = np.empty((4, n))
    ca = math.cos(alpha)
    sn = math.sin(alpha)
    h = 0.5 * dt
    sixth = dt / 6.0
    n_stages = 1 if method == EULER else 4
    nu = n_units(kind, n)
    for i in range(n):
        X[0, i] = state[i]
    activate(model, act_code, kind, state, A[0], B[0])
    cur = 0
    n_frames = 0
    for k in range(n_steps):
        for s in range(n_stages):
            xc, ac, bc = X[cur], A[cur], B[cur]
            xn, an, bn = X[1 - cur], A[1 - cur], B[1 - cur]
            ta, tb = coupling_totals(kind, cp, ac, bc, two, cp[13], cp[14])
            for p in prange(nu):
                i0, i1 = unit_sums(kind, cp, wfun, ac, bc, two, ta, tb, p, sa, sb, cp[13], cp[14])
                for i in range(i0, i1):
                    f = _field(two, xc, drive, KN, ca, sn, ac, bc, sa, sb, i)
                    if method == EULER or s == 2:
                        x = state[i] + dt * f
                    elif s < 2:
                        Ks[s, i] = f
                        x = state[i] + h * f
                    else:
                        x = state[i] + sixth * (Ks[0, i] + 2.0 * Ks[1, i] + 2.0 * Ks[2, i] + f)
                    if s == 2:
                        Ks[2, i] = f
                    xn[i] = x
                    _activate(model, act_code, xn, an, bn, i)
            cur = 1 - cur
        xc = X[cur]  # the new state, its sin/cos in A[cur], B[cur] for the next step
        finite = True
        for i in range(n):
            if not math.isfinite(xc[i]):
                finite = False
                break
        if not finite:
            return k, n_frames, NONFINITE
        for i in range(n):
            state[i] = xc[i]
        _record(model, act_code, state, obs, k)
        if (step0 + k + 1) % save_every == 0:
            for i in range(n):
                frames[n_frames, i] = state[i]
            n_frames += 1
    return n_steps, n_frames, OK


@njit(cache=True)
def graphon_eval(xs, ys, code, params, wfun, out):
    """out[k] = w(xs[k], ys[k]) elementwise."""
    for k in range(xs.shape[0]):
        if wfun is None:
            out[k] = graphon_value(code, params, xs[k], ys[k])
        else:
            out[k] = wfun(xs[k], ys[k])


# --- adaptive Dormand-Prince methods ---------------------------------------------------------
# A stage table for network_adaptive: stage s of a step h from y is f(y + h sum_j A[s, j] k_j);
# row ``last`` of A holds the propagating weights b (y_new is that stage's state, and its
# evaluation f(y_new) is the first stage of the next step); E (and E3) the error weights, D the
# extra rows of the continuous extension. DOPRI5: 7 stages (A[6] = b, first same as last).
DOPRI5_TD = DOPRI5_D.reshape(1, -1)
DOPRI5_TE3 = np.zeros(7)

# DOP853 (Hairer's code DOP853, the coefficients of its Fortran source): 12 stages, row 12 the
# 8th-order weights b (f(y_new) = k13 is the next step's k1), rows 13-15 the three extra stages
# of the order-7 continuous extension. Error: the 5th-order estimate E5 and the 3rd-order E3
# combined as h ||E5 k||^2 / sqrt(||E5 k||^2 + 0.01 ||E3 k||^2) (the estimate is O(h^8)).
DOP853_A = np.zeros((16, 16))
DOP853_A[1, 0] = 5.26001519587677318785587544488e-2
DOP853_A[2, :2] = [1.97250569845378994544595329183e-2, 5.91751709536136983633785987549e-2]
DOP853_A[3, [0, 2]] = [2.95875854768068491816892993775e-2, 8.87627564304205475450678981324e-2]
DOP853_A[4, [0, 2, 3]] = [
    2.41365134159266685502369798665e-1,
    -8.84549479328286085344864962717e-1,
    9.24834003261792003115737966543e-1,
]
DOP853_A[5, [0, 3, 4]] = [
    3.7037037037037037037037037037e-2,
    1.70828608729473871279604482173e-1,
    1.25467687566822425016691814123e-1,
]
DOP853_A[6, [0, 3, 4, 5]] = [
    3.7109375e-2,
    1.70252211019544039314978060272e-1,
    6.02165389804559606850219397283e-2,
    -1.7578125e-2,
]
DOP853_A[7, [0, 3, 4, 5, 6]] = [
    3.70920001185047927108779319836e-2,
    1.70383925712239993810214054705e-1,
    1.07262030446373284651809199168e-1,
    -1.53194377486244017527936158236e-2,
    8.27378916381402288758473766002e-3,
]
DOP853_A[8, [0, 3, 4, 5, 6, 7]] = [
    6.24110958716075717114429577812e-1,
    -3.36089262944694129406857109825,
    -8.68219346841726006818189891453e-1,
    2.75920996994467083049415600797e1,
    2.01540675504778934086186788979e1,
    -4.34898841810699588477366255144e1,
]
DOP853_A[9, [0, 3, 4, 5, 6, 7, 8]] = [
    4.77662536438264365890433908527e-1,
    -2.48811461997166764192642586468,
    -5.90290826836842996371446475743e-1,
    2.12300514481811942347288949897e1,
    1.52792336328824235832596922938e1,
    -3.32882109689848629194453265587e1,
    -2.03312017085086261358222928593e-2,
]
DOP853_A[10, [0, 3, 4, 5, 6, 7, 8, 9]] = [
    -9.3714243008598732571704021658e-1,
    5.18637242884406370830023853209,
    1.09143734899672957818500254654,
    -8.14978701074692612513997267357,
    -1.85200656599969598641566180701e1,
    2.27394870993505042818970056734e1,
    2.49360555267965238987089396762,
    -3.0467644718982195003823669022,
]
DOP853_A[11, [0, 3, 4, 5, 6, 7, 8, 9, 10]] = [
    2.27331014751653820792359768449,
    -1.05344954667372501984066689879e1,
    -2.00087205822486249909675718444,
    -1.79589318631187989172765950534e1,
    2.79488845294199600508499808837e1,
    -2.85899827713502369474065508674,
    -8.87285693353062954433549289258,
    1.23605671757943030647266201528e1,
    6.43392746015763530355970484046e-1,
]
DOP853_A[12, [0, 5, 6, 7, 8, 9, 10, 11]] = [  # b, the 8th-order weights
    5.42937341165687622380535766363e-2,
    4.45031289275240888144113950566,
    1.89151789931450038304281599044,
    -5.8012039600105847814672114227,
    3.1116436695781989440891606237e-1,
    -1.52160949662516078556178806805e-1,
    2.01365400804030348374776537501e-1,
    4.47106157277725905176885569043e-2,
]
DOP853_A[13, [0, 6, 7, 8, 9, 10, 11, 12]] = [
    5.61675022830479523392909219681e-2,
    2.53500210216624811088794765333e-1,
    -2.46239037470802489917441475441e-1,
    -1.24191423263816360469010140626e-1,
    1.5329179827876569731206322685e-1,
    8.20105229563468988491666602057e-3,
    7.56789766054569976138603589584e-3,
    -8.298e-3,
]
DOP853_A[14, [0, 5, 6, 7, 10, 11, 12, 13]] = [
    3.18346481635021405060768473261e-2,
    2.83009096723667755288322961402e-2,
    5.35419883074385676223797384372e-2,
    -5.49237485713909884646569340306e-2,
    -1.08347328697249322858509316994e-4,
    3.82571090835658412954920192323e-4,
    -3.40465008687404560802977114492e-4,
    1.41312443674632500278074618366e-1,
]
DOP853_A[15, [0, 5, 6, 7, 8, 12, 13, 14]] = [
    -4.28896301583791923408573538692e-1,
    -4.69762141536116384314449447206,
    7.68342119606259904184240953878,
    4.06898981839711007970213554331,
    3.56727187455281109270669543021e-1,
    -1.39902416515901462129418009734e-3,
    2.9475147891527723389556272149,
    -9.15095847217987001081870187138,
]
DOP853_TE = np.zeros(12)  # 5th-order error weights
DOP853_TE[[0, 5, 6, 7, 8, 9, 10, 11]] = [
    0.1312004499419488073250102996e-1,
    -0.1225156446376204440720569753e1,
    -0.4957589496572501915214079952,
    0.1664377182454986536961530415e1,
    -0.3503288487499736816886487290,
    0.3341791187130174790297318841,
    0.8192320648511571246570742613e-1,
    -0.2235530786388629525884427845e-1,
]
DOP853_TE3 = DOP853_A[12, :12].copy()  # b minus the 3rd-order weights bhh
DOP853_TE3[0] -= 0.244094488188976377952755905512
DOP853_TE3[8] -= 0.733846688281611857341361741547
DOP853_TE3[11] -= 0.220588235294117647058823529412e-1
DOP853_TD = np.zeros((4, 16))  # rows 4-7 of the continuous extension (Hairer's d4..d7)
DOP853_TD[0, [0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]] = [
    -0.84289382761090128651353491142e1,
    0.56671495351937776962531783590,
    -0.30689499459498916912797304727e1,
    0.23846676565120698287728149680e1,
    0.21170345824450282767155149946e1,
    -0.87139158377797299206789907490,
    0.22404374302607882758541771650e1,
    0.63157877876946881815570249290,
    -0.88990336451333310820698117400e-1,
    0.18148505520854727256656404962e2,
    -0.91946323924783554000451984436e1,
    -0.44360363875948939664310572000e1,
]
DOP853_TD[1, [0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]] = [
    0.10427508642579134603413151009e2,
    0.24228349177525818288430175319e3,
    0.16520045171727028198505394887e3,
    -0.37454675472269020279518312152e3,
    -0.22113666853125306036270938578e2,
    0.77334326684722638389603898808e1,
    -0.30674084731089398182061213626e2,
    -0.93321305264302278729567221706e1,
    0.15697238121770843886131091075e2,
    -0.31139403219565177677282850411e2,
    -0.93529243588444783865713862664e1,
    0.35816841486394083752465898540e2,
]
DOP853_TD[2, [0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]] = [
    0.19985053242002433820987653617e2,
    -0.38703730874935176555105901742e3,
    -0.18917813819516756882830838328e3,
    0.52780815920542364900561016686e3,
    -0.11573902539959630126141871134e2,
    0.68812326946963000169666922661e1,
    -0.10006050966910838403183860980e1,
    0.77771377980534432092869265740,
    -0.27782057523535084065932004339e1,
    -0.60196695231264120758267380846e2,
    0.84320405506677161018159903784e2,
    0.11992291136182789328035130030e2,
]
DOP853_TD[3, [0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]] = [
    -0.25693933462703749003312586129e2,
    -0.15418974869023643374053993627e3,
    -0.23152937917604549567536039109e3,
    0.35763911791061412378285349910e3,
    0.93405324183624310003907691704e2,
    -0.37458323136451633156875139351e2,
    0.10409964950896230045147246184e3,
    0.29840293426660503123344363579e2,
    -0.43533456590011143754432175058e2,
    0.96324553959188282948394950600e2,
    -0.39177261675615439165231486172e2,
    -0.14972683625798562581422125276e3,
]

# (A, E, E3, D, last stage, order of the error estimate) of each adaptive method
ADAPTIVE_TABLES = {
    DOPRI5: (DOPRI5_A, DOPRI5_E, DOPRI5_TE3, DOPRI5_TD, 6, 5),
    DOP853: (DOP853_A, DOP853_TE, DOP853_TE3, DOP853_TD, 12, 8),
}


@njit(cache=True, inline="always")
def _stage_point(y, h, TA, s, K, i):
    """Row i of the stage state y + h sum_{j<s} A[s, j] k_j (summed in stage order)."""
    x = y[i]
    for j in range(s):
        c = h * TA[s, j]
        if c != 0.0:
            x += c * K[j, i]
    return x


@njit(cache=True, parallel=True)
def adaptive_stage(
    model, act_code, kind, cp, wfun, drive, KN, ca, sn, y, h, TA, K, s, nxt,
    xc, ac, bc, xn, an, bn, sa, sb, err_mode, TE, TE3, e, e3, dense, ynew, last, TD, RC,
):  # fmt: skip
    """One evaluation of an adaptive step in one parallel region over units of rows.

    k_s = f(xc) (``ac``, ``bc``: the activations of ``xc``) into ``K[s]``; then per row:
    when ``nxt > 0`` the stage state ``nxt`` (y + h sum_{j<nxt} A[nxt, j] k_j) into ``xn``
    and its activations into ``an``, ``bn``; ``err_mode`` 1: e = h sum_s E_s k_s (DOPRI5),
    2: e = sum_s E_s k_s and e3 = sum_s E3_s k_s (DOP853), over the first ``len(TE)``
    stages; ``dense``: the rows of the continuous extension on the step y -> ``ynew``
    (Hairer's rcont: y, ydiff, h k_1 - ydiff, ydiff - h f(ynew) - (h k_1 - ydiff), then
    h sum_s D[r, s] k_s, with f(ynew) = ``K[last]``) into ``RC``.
    """
    two = model == PHASE
    ta, tb = coupling_totals(kind, cp, ac, bc, two, cp[13], cp[14])
    n_err = TE.shape[0]
    m = TD.shape[0]
    S = TD.shape[1]
    for p in prange(n_units(kind, y.shape[0])):
        i0, i1 = unit_sums(kind, cp, wfun, ac, bc, two, ta, tb, p, sa, sb, cp[13], cp[14])
        for i in range(i0, i1):
            K[s, i] = _field(two, xc, drive, KN, ca, sn, ac, bc, sa, sb, i)
            if nxt > 0:
                xn[i] = _stage_point(y, h, TA, nxt, K, i)
                _activate(model, act_code, xn, an, bn, i)
            if err_mode > 0:
                acc = 0.0
                for q in range(n_err):
                    acc += TE[q] * K[q, i]
                e[i] = (h if err_mode == 1 else 1.0) * acc
                if err_mode == 2:
                    acc = 0.0
                    for q in range(n_err):
                        acc += TE3[q] * K[q, i]
                    e3[i] = acc
            if dense:
                yd = ynew[i] - y[i]
                bspl = h * K[0, i] - yd
                RC[0, i] = y[i]
                RC[1, i] = yd
                RC[2, i] = bspl
                RC[3, i] = yd - h * K[last, i] - bspl
                for r in range(m):
                    acc = 0.0
                    for q in range(S):
                        acc += TD[r, q] * K[q, i]
                    RC[4 + r, i] = h * acc


@njit(cache=True)
def _dense_value(RC, m, th, out):
    """The continuous extension at theta = th: RC[0] + th (RC[1] + (1 - th) (RC[2] + th (...)))
    with the factors th and 1 - th alternating over the ``m`` rows (one thread: O(N))."""
    th1 = 1.0 - th
    for i in range(RC.shape[1]):
        p = RC[m - 1, i]
        for q in range(m - 2, 0, -1):
            p = RC[q, i] + (th1 if q % 2 == 1 else th) * p
        out[i] = RC[0, i] + th * p


@njit(cache=True)
def _all_finite(x):
    for i in range(x.shape[0]):
        if not math.isfinite(x[i]):
            return False
    return True


@njit(cache=True)
def network_adaptive(
    model,
    act_code,
    state,
    drive,
    KN,
    alpha,
    kind,
    cp,
    wfun,
    method,
    TA,
    TE,
    TE3,
    TD,
    rtol,
    atol,
    dt,
    k_next,
    total,
    save_every,
    ctl,
    f0,
    have_f0,
    h_fixed,
    max_attempts,
    stats,
    frames,
    obs,
):
    """Advance ``state`` by adaptive DOPRI5 or DOP853 steps, filling the save times k dt.

    The run goes from ``ctl[0]`` to ``total * dt`` (the last step lands on it); save time k
    (``k_next <= k <= total``) is filled from the continuous extension of the step that covers
    it (the step's own end state where k dt is the end of a step): its observables go to the
    next row of ``obs`` and, when ``k % save_every == 0``, the state to the next row of
    ``frames``. Step-size control (:mod:`~nndyn_fast.kernels.control`): the weighted RMS error
    with per-component ``rtol``, ``atol`` (N,), PI control, Hairer's starting step when
    ``ctl[1] <= 0``.

    ``method`` is ``DOPRI5`` or ``DOP853`` with the tables ``ADAPTIVE_TABLES[method]``;
    ``ctl = [t, h, errold, rejected_last, nonfinite]`` is the controller state, read and
    written back; ``f0`` holds f(state) on entry when ``have_f0`` (else it is evaluated) and
    on exit; ``h_fixed > 0`` (tests only) takes every step of that size, without control.
    ``stats`` (3,) += accepted steps, rejected steps, evaluations.

    The call pauses before a step (which changes nothing: the next call continues exactly as
    this one would have) after ``max_attempts`` steps or when the rows left in ``obs`` cannot
    hold the save times the step may cover. Returns ``(n_saved, n_frames, status, need)``:
    ``need > 0`` (with nothing saved) is the number of rows the next step needs. ``status``:
    ``OK``, ``NONFINITE`` (no step size gives a finite state), ``STEP_UNDERFLOW``; ``state``,
    ``ctl`` then hold the last good state.
    """
    n = state.shape[0]
    S = TA.shape[0]
    last_stage = 6 if method == DOPRI5 else 12
    order = 5 if method == DOPRI5 else 8
    m_dense = 4 + TD.shape[0]
    a = np.empty(n)
    b = np.empty(n)
    sa = np.empty(n)
    sb = np.empty(n)
    K = np.empty((S, n))
    tmp = np.empty(n)
    ynew = np.empty(n)
    X = np.empty((2, n))  # stage states, alternating, and their activations
    A = np.empty((2, n))
    B = np.empty((2, n))
    ay = np.empty(n)  # the activations of ynew
    by = np.empty(n)
    ca = math.cos(alpha)
    sn = math.sin(alpha)
    e = np.empty(n)
    e3 = np.empty(n)
    yk = np.empty(n)
    RC = np.empty((m_dense, n))
    expo1 = pi_exponent(order)
    t = ctl[0]
    h = ctl[1]
    errold = ctl[2]
    rejected = ctl[3] != 0.0
    nonfinite = ctl[4] != 0.0
    te = total * dt
    if have_f0:
        for i in range(n):
            K[0, i] = f0[i]
    else:
        network_rhs(model, act_code, state, drive, KN, alpha, kind, cp, wfun, a, b, sa, sb, K[0])
        stats[2] += 1
    if h_fixed > 0.0:
        h = h_fixed
    elif h <= 0.0:  # Hairer's starting step: an explicit Euler step estimates ||y''||
        hh, d1 = initial_step_guess(state, K[0], rtol, atol)
        hh = min(hh, te - t)
        for i in range(n):
            tmp[i] = state[i] + hh * K[0, i]
        network_rhs(model, act_code, tmp, drive, KN, alpha, kind, cp, wfun, a, b, sa, sb, K[1])
        stats[2] += 1
        for i in range(n):
            e[i] = K[1, i] - K[0, i]
        d2 = wrms_norm(e, state, state, rtol, atol) / hh
        h = min(initial_step_refine(hh, d1, d2, order), te - t)
    k_out = k_next
    n_out = 0
    n_fr = 0
    status = OK
    need = 0
    attempts = 0
    while k_out <= total and attempts < max_attempts:
        hh = h
        last = False
        # (fixed steps land on te within rounding: the last one absorbs it)
        if t + hh >= te or (h_fixed > 0.0 and t + 1.5 * hh >= te):
            hh = te - t
            last = True
        if hh <= 16.0 * EPS * max(abs(t), abs(te)):
            status = NONFINITE if nonfinite else STEP_UNDERFLOW
            break
        tnew = te if last else t + hh
        # the save times this step covers if accepted (the counts rounded alike every call)
        room = obs.shape[0] - n_out
        cnt = 0
        while k_out + cnt <= total and (k_out + cnt) * dt <= tnew and (cnt <= room or n_out == 0):
            cnt += 1
        if cnt > room:
            if n_out == 0:
                need = cnt
            break
        attempts += 1
        # one parallel region per evaluation (adaptive_stage); the first stage's state on one
        # pass here (O(N), its activations in parallel only for O(N)-cost couplings)
        want_dense = cnt > 0 and k_out * dt < tnew
        for i in range(n):
            X[0, i] = _stage_point(state, hh, TA, 1, K, i)
        activate(model, act_code, kind, X[0], A[0], B[0])
        cur = 0
        err_mode = 1 if method == DOPRI5 else 2
        for s in range(1, last_stage):
            if s + 1 == last_stage:  # the propagated solution and, for DOP853, the error
                mode = err_mode if method == DOP853 else 0
                adaptive_stage(
                    model, act_code, kind, cp, wfun, drive, KN, ca, sn, state, hh, TA, K, s,
                    s + 1, X[cur], A[cur], B[cur], ynew, ay, by, sa, sb,
                    mode, TE, TE3, e, e3, False, ynew,
                    last_stage, TD, RC,
                )  # fmt: skip
            else:
                adaptive_stage(
                    model, act_code, kind, cp, wfun, drive, KN, ca, sn, state, hh, TA, K, s,
                    s + 1, X[cur], A[cur], B[cur], X[1 - cur], A[1 - cur], B[1 - cur], sa, sb,
                    0, TE, TE3, e, e3, False, ynew, last_stage, TD, RC,
                )  # fmt: skip
            cur = 1 - cur
        stats[2] += last_stage - 1
        if method == DOPRI5:
            # first same as last: f(ynew) is the 7th stage (its error weight is not zero); the
            # error and (if a save time falls inside the step) the dense output in its region
            adaptive_stage(
                model, act_code, kind, cp, wfun, drive, KN, ca, sn, state, hh, TA, K, 6, 0,
                ynew, ay, by, tmp, a, b, sa, sb, 1, TE, TE3, e, e3, want_dense, ynew,
                last_stage, TD, RC,
            )  # fmt: skip
            stats[2] += 1
            err = wrms_norm(e, state, ynew, rtol, atol)
        else:
            q5 = wrms_norm(e, state, ynew, rtol, atol)
            q3 = wrms_norm(e3, state, ynew, rtol, atol)
            err = 0.0 if q5 == 0.0 else hh * q5 * (q5 / math.hypot(q5, 0.1 * q3))
        finite = _all_finite(ynew)
        if h_fixed > 0.0:
            if not finite:
                status = NONFINITE
                break
            accept, fac = True, 1.0
        else:
            accept, fac, errold, nonfinite = pi_control(err, finite, errold, rejected, expo1)
        rejected = not accept
        if accept:
            if method == DOP853:
                # f(ynew), then (a save time inside the step) three more stages, the last with
                # the continuous extension
                nxt = 13 if want_dense else 0
                adaptive_stage(
                    model, act_code, kind, cp, wfun, drive, KN, ca, sn, state, hh, TA, K, 12,
                    nxt, ynew, ay, by, X[0], A[0], B[0], sa, sb, 0, TE,
                    TE3, e, e3, False, ynew, last_stage, TD, RC,
                )  # fmt: skip
                stats[2] += 1
                if want_dense:
                    for s in range(last_stage + 1, S):
                        c = (s - last_stage - 1) % 2
                        nxt = s + 1 if s + 1 < S else 0
                        fin = s + 1 == S
                        adaptive_stage(
                            model, act_code, kind, cp, wfun, drive, KN, ca, sn, state, hh, TA,
                            K, s, nxt, X[c], A[c], B[c], X[1 - c],
                            A[1 - c], B[1 - c], sa, sb, 0, TE, TE3, e, e3, fin, ynew,
                            last_stage, TD, RC,
                        )  # fmt: skip
                        stats[2] += 1
            if cnt > 0:
                n_out0 = n_out
                n_fr0 = n_fr
                for q in range(cnt):
                    k = k_out + q
                    tk = k * dt
                    if tk >= tnew:
                        for i in range(n):
                            yk[i] = ynew[i]
                    else:
                        _dense_value(RC, m_dense, (tk - t) / hh, yk)
                        if not _all_finite(yk):  # an overflow between finite end points
                            status = NONFINITE
                            break
                    _record(model, act_code, yk, obs, n_out)
                    n_out += 1
                    if k % save_every == 0:
                        for i in range(n):
                            frames[n_fr, i] = yk[i]
                        n_fr += 1
                if status != OK:  # the step is dropped with its save times
                    n_out = n_out0
                    n_fr = n_fr0
                    break
                k_out += cnt
            for i in range(n):
                state[i] = ynew[i]
                K[0, i] = K[last_stage, i]
            t = tnew
            stats[0] += 1
        else:
            stats[1] += 1
        if h_fixed <= 0.0:
            h = hh * fac
    ctl[0] = t
    ctl[1] = h
    ctl[2] = errold
    ctl[3] = 1.0 if rejected else 0.0
    ctl[4] = 1.0 if nonfinite else 0.0
    for i in range(n):
        f0[i] = K[0, i]
    return n_out, n_fr, status, need
