"""Kuramoto-type networks: the O(N^2) interaction sums and fixed-step integrators.

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
"""

import math

import numpy as np
from numba import njit, prange

from .activations import act
from .control import FASTMATH, NONFINITE, OK

PHASE, RATE = 0, 1
DENSE, CSR, STRUCTURED, PAIRWISE = 0, 1, 2, 3
EULER, RK4 = 0, 1
# Built-in graphon codes for PAIRWISE evaluation and window construction.
G_CONSTANT, G_SMALL_WORLD, G_POWER_LAW, G_DIRECTED_RING = 0, 1, 2, 3

# FASTMATH (kernels.control) lets LLVM vectorise the row reductions; NaN/inf semantics are kept.
# Each row is reduced by one thread, so results do not depend on the thread count.


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _dense_rows8(W, i, a, b, two, sa, sb):
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
    m = W.shape[1]
    for p in prange(n // 8):
        _dense_rows8(W, 8 * p, a, b, two, sa, sb)
    for i in range(n - n % 8, n):
        s = 0.0
        c = 0.0
        for j in range(m):
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


@njit(cache=True, parallel=True)
def coupling_pairwise(x, mu, code, params, wfun, a, b, two, sa, sb):
    """Sums with W_ij = w(x_i, x_j) μ_j evaluated on the fly (O(N^2) work, O(N) memory)."""
    n = x.shape[0]
    for i in prange(n):
        s = 0.0
        c = 0.0
        xi = x[i]
        for j in range(n):
            if wfun is None:
                w = graphon_value(code, params, xi, x[j]) * mu[j]
            else:
                w = wfun(xi, x[j]) * mu[j]
            s += w * a[j]
            if two:
                c += w * b[j]
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


@njit(cache=True, parallel=True)
def network_rhs(model, act_code, state, drive, KN, alpha, kind, cp, wfun, a, b, sa, sb, out):
    """Right-hand side of the PHASE or RATE model into ``out`` (a, b, sa, sb are scratch)."""
    n = state.shape[0]
    two = model == PHASE
    for i in prange(n):
        if two:
            a[i] = math.sin(state[i])
            b[i] = math.cos(state[i])
        else:
            a[i] = act(act_code, state[i])
    coupling_sums(kind, cp, wfun, a, b, two, sa, sb)
    if two:
        ca = math.cos(alpha)
        sn = math.sin(alpha)
        for i in prange(n):
            # Σ_j W_ij sin(θ_j − θ_i − α) from S_i, C_i and the row's own sin/cos
            inter = ca * (sa[i] * b[i] - sb[i] * a[i]) - sn * (sb[i] * b[i] + sa[i] * a[i])
            out[i] = drive[i] + KN * inter
    else:
        for i in prange(n):
            out[i] = -state[i] + KN * sa[i] + drive[i]


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
    """
    n = state.shape[0]
    a = np.empty(n)
    b = np.empty(n)
    sa = np.empty(n)
    sb = np.empty(n)
    k1 = np.empty(n)
    k2 = np.empty(n)
    k3 = np.empty(n)
    k4 = np.empty(n)
    tmp = np.empty(n)
    n_frames = 0
    for k in range(n_steps):
        network_rhs(model, act_code, state, drive, KN, alpha, kind, cp, wfun, a, b, sa, sb, k1)
        if method == EULER:
            for i in prange(n):
                tmp[i] = state[i] + dt * k1[i]
        else:
            h = 0.5 * dt
            for i in prange(n):
                tmp[i] = state[i] + h * k1[i]
            network_rhs(model, act_code, tmp, drive, KN, alpha, kind, cp, wfun, a, b, sa, sb, k2)
            for i in prange(n):
                tmp[i] = state[i] + h * k2[i]
            network_rhs(model, act_code, tmp, drive, KN, alpha, kind, cp, wfun, a, b, sa, sb, k3)
            for i in prange(n):
                tmp[i] = state[i] + dt * k3[i]
            network_rhs(model, act_code, tmp, drive, KN, alpha, kind, cp, wfun, a, b, sa, sb, k4)
            sixth = dt / 6.0
            for i in prange(n):
                tmp[i] = state[i] + sixth * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])
        finite = True
        for i in range(n):
            if not math.isfinite(tmp[i]):
                finite = False
                break
        if not finite:
            return k, n_frames, NONFINITE
        for i in prange(n):
            state[i] = tmp[i]
        _record(model, act_code, state, obs, k)
        if (step0 + k + 1) % save_every == 0:
            for i in prange(n):
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
