"""Lyapunov spectra of delay equations: the tangent (variational) delay equation beside the
solution, by fixed-step RK4 on a grid that the delays are multiples of.

The equation x'(t) = f(t, x(t), x(t - tau_1), ..., x(t - tau_m)) with tau_j = N_j dt. Its
state at t_n = t0 + n dt is the segment of grid values x_{n - N}, ..., x_n (N = max N_j), held in
a ring of R = N + 1 rows (node i in row i mod R). One step is classic RK4; the delayed values
at the stage times are grid values (stages at t_n and t_n + dt: nodes n - N_j and n + 1 - N_j)
or, at t_n + dt/2, the cubic Lagrange interpolant of four grid values of the segment
(``mid_off[j]`` the first node's offset from n, ``mid_w[j]`` the weights). The discrete system
is then a map of the (N + 1) d grid values onto themselves, and the tangent map is its exact
derivative: the tangent vectors are segments of grid values too, pushed through the same RK4
stages with the Jacobians J_0 = df/dx(t) and J_j = df/dx(t - tau_j) at each stage's state,

    dv'(t) = J_0(t) dv(t) + sum_j J_j(t) dv(t - tau_j).

(The solver of :mod:`~nndyn_fast.kernels.dde` interpolates delayed values by cubic Hermite
polynomials through values and derivatives; a tangent segment would then need its derivative
anchors as well. Values only keep the state, its dimension and the inner product plain.)

Inner product of two segments u, v (the norm of R^d x L^2(-tau, 0), the Hilbert space of DDE
states): the current point plus the trapezoid quadrature over the stored segment,

    <u, v> = u_n . v_n + dt (u_{n-N} . v_{n-N} / 2 + sum_{0 < i < N} u_{n-i} . v_{n-i}
                             + u_n . v_n / 2),

i.e. weights ``wq`` (R,) by position from the oldest node (``dt/2, dt, ..., dt, dt/2 + 1``).
Every ``reorth`` steps and at the end of a call the k tangent segments are orthonormalised by
modified Gram-Schmidt in this inner product and log of each norm (R_jj) is added to ``logsum``.

Built-in fields (``model`` code and packing of :mod:`~nndyn_fast.kernels.dde`): ``LINEAR``,
``NEURAL`` (layer chosen at the step midpoint, as there), ``MACKEY_GLASS``; their Jacobians are
computed here. A user field ``fn(t, x, xd, args, out)`` comes with ``jac(t, x, xd, args, J)``,
J (m + 1, d, d): J[0] = df/dx(t), J[1 + j] = df/dx(t - tau_j).

Per-member state: ``X`` (B, R, d) ring of grid values, ``V`` (B, k, R, d) tangent rings,
``ist`` (B, 2) int64 ``[n (steps since t0), status]``, ``logsum`` (B, k).

References
----------
K. Ikeda, K. Matsumoto, "High-dimensional chaotic behavior in systems with time-delayed
feedback", Physica D 29 (1987) 223 (Lyapunov spectra of delay equations on a grid).
J. D. Farmer, "Chaotic attractors of an infinite-dimensional dynamical system", Physica D 4
(1982) 366 (Mackey-Glass). G. Benettin et al., Meccanica 15 (1980) 9 (QR method).
"""

import math

import numpy as np
from numba import njit, prange

from .activations import dact
from .control import DEGENERATE, NONFINITE, OK
from .dde import LINEAR, MACKEY_GLASS, builtin_rhs

I_N, I_STATUS = 0, 1


@njit(cache=True, error_model="numpy")
def builtin_jac(model, ip, P, tl, x, xd, z, J):
    """Jacobians of a built-in field into ``J`` (m + 1, d, d): J[0] w.r.t. x(t), J[1 + j]
    w.r.t. x(t - tau_j); ``z`` (H,) scratch of the hidden units."""
    d = x.shape[0]
    m = xd.shape[0]
    if model == LINEAR:
        for i in range(d):
            for j in range(d):
                J[0, i, j] = P[i * d + j]
        off = d * d
        for k in range(m):
            for i in range(d):
                for j in range(d):
                    J[1 + k, i, j] = P[off + (k * d + i) * d + j]
        return
    for q in range(m + 1):
        for i in range(d):
            for j in range(d):
                J[q, i, j] = 0.0
    if model == MACKEY_GLASS:
        beta = P[0]
        gamma = P[1]
        n = P[2]
        for i in range(d):
            v = xd[0, i]
            vn = v**n
            den = 1.0 + vn
            # d/dv [beta v / (1 + v^n)] = beta (1 + (1 - n) v^n) / (1 + v^n)^2
            J[1, i, i] = beta * (1.0 + (1.0 - n) * vn) / (den * den)
            J[0, i, i] = -gamma
        return
    L, H, code, oW, oA, oB, ob = ip[3], ip[4], ip[5], ip[6], ip[7], ip[8], ip[9]
    lay = 0
    while lay < L - 1 and P[lay + 1] <= tl:
        lay += 1
    boff = ob + lay * H
    aoff = oA + lay * d * H
    doff = oB + lay * m * d * H
    woff = oW + lay * d * H
    for r in range(H):
        z[r] = P[boff + r]
    for j in range(d):
        for r in range(H):
            z[r] += P[aoff + j * H + r] * x[j]
    for k in range(m):
        for j in range(d):
            base = doff + (k * d + j) * H
            for r in range(H):
                z[r] += P[base + r] * xd[k, j]
    for r in range(H):
        z[r] = dact(code, z[r])
    # J_0 = W diag(s') A, J_k = W diag(s') B_k (A, B stored transposed: (d, H) blocks)
    for i in range(d):
        for r in range(H):
            w = P[woff + i * H + r] * z[r]
            for j in range(d):
                J[0, i, j] += w * P[aoff + j * H + r]
            for k in range(m):
                base = doff + k * d * H
                for j in range(d):
                    J[1 + k, i, j] += w * P[base + j * H + r]


@njit(cache=True)
def _field(fn, jac, args, model, ip, P, tl, t, x, xd, z, out, J):
    if fn is None:
        builtin_rhs(model, ip, P, tl, x, xd, z, out, 0)
        builtin_jac(model, ip, P, tl, x, xd, z, J)
    else:
        fn(t, x, xd, args, out[0])
        jac(t, x, xd, args, J)


@njit(cache=True)
def _delayed(Xr, n, R, lag, mid_off, mid_w, mid, xd):
    """Delayed grid values into ``xd`` (m, d): node ``n + lag_j`` per delay (``lag`` offsets),
    or at ``mid`` the Lagrange interpolant of nodes ``n + mid_off[j] .. + 3``."""
    d = xd.shape[1]
    for j in range(xd.shape[0]):
        if mid:
            for i in range(d):
                xd[j, i] = 0.0
            for q in range(4):
                row = (n + mid_off[j] + q) % R
                w = mid_w[j, q]
                for i in range(d):
                    xd[j, i] += w * Xr[row, i]
        else:
            row = (n + lag[j]) % R
            for i in range(d):
                xd[j, i] = Xr[row, i]


@njit(cache=True)
def _tangent_matvec(Js, q, v, vd, out):
    """out = J_q[0] v + sum_j J_q[1 + j] vd[j]."""
    d = v.shape[0]
    m = vd.shape[0]
    for i in range(d):
        s = 0.0
        for c in range(d):
            s += Js[q, 0, i, c] * v[c]
        for j in range(m):
            for c in range(d):
                s += Js[q, 1 + j, i, c] * vd[j, c]
        out[i] = s


@njit(cache=True)
def _gram_schmidt(V, wq, n, logsum):
    """Modified Gram-Schmidt of the k segments ``V`` (k, R, d) in the weighted inner product
    (``wq`` by position from the oldest node, row (n + 1 + p) mod R); adds log R_jj to
    ``logsum``. Returns the status."""
    k, R, d = V.shape
    for a in range(k):
        for c in range(a):
            dot = 0.0
            for p in range(R):
                row = (n + 1 + p) % R
                s = 0.0
                for i in range(d):
                    s += V[a, row, i] * V[c, row, i]
                dot += wq[p] * s
            for r in range(R):
                for i in range(d):
                    V[a, r, i] -= dot * V[c, r, i]
        nrm = 0.0
        for p in range(R):
            row = (n + 1 + p) % R
            s = 0.0
            for i in range(d):
                s += V[a, row, i] * V[a, row, i]
            nrm += wq[p] * s
        nrm = math.sqrt(nrm)
        if not math.isfinite(nrm):
            return NONFINITE
        if nrm == 0.0:
            return DEGENERATE
        logsum[a] += math.log(nrm)
        inv = 1.0 / nrm
        for r in range(R):
            for i in range(d):
                V[a, r, i] *= inv
    return OK


@njit(cache=True)
def dde_lyap_advance_one(fn, jac, args, fld, grid, Xr, V, ist, n_steps, reorth, logsum):
    """Advance one member ``n_steps`` RK4 steps with its k tangent segments; returns the status.

    ``fld = (model, ip, P)``; ``grid = (t0, dt, lag0, lag1, mid_off, mid_w, wq)`` with
    ``lag0 = -N_j`` and ``lag1 = 1 - N_j`` (int64 (m,)), ``mid_off`` (m,), ``mid_w`` (m, 4),
    ``wq`` (R,) the quadrature weights. Orthonormalises every ``reorth`` steps (counted from
    the call's start) and at the end.
    """
    model, ip, P = fld
    t0, dt, lag0, lag1, mid_off, mid_w, wq = grid
    R, d = Xr.shape
    k = V.shape[0]
    m = lag0.shape[0]
    H = ip[4] if fn is None else 1
    z = np.empty(max(H, 1))
    Ks = np.empty((4, 1, d))  # stage derivatives of the solution (row 0 of each)
    Ys = np.empty((4, d))
    XD = np.empty((3, m, d))  # delayed values at t_n, t_n + dt/2, t_n + dt
    Js = np.empty((4, m + 1, d, d))
    xn = np.empty(d)
    dK = np.empty((4, d))
    dY = np.empty(d)
    vd = np.empty((m, d))
    vn = np.empty(d)
    a21 = 0.5
    n = ist[I_N]
    status = OK
    since = 0
    for _ in range(n_steps):
        t = t0 + n * dt
        tl = t + 0.5 * dt
        row_n = n % R
        for i in range(d):
            xn[i] = Xr[row_n, i]
        _delayed(Xr, n, R, lag0, mid_off, mid_w, False, XD[0])
        _delayed(Xr, n, R, lag0, mid_off, mid_w, True, XD[1])
        _delayed(Xr, n, R, lag1, mid_off, mid_w, False, XD[2])
        # solution stages (Y_s, K_s) and the Jacobians at each stage
        for i in range(d):
            Ys[0, i] = xn[i]
        _field(fn, jac, args, model, ip, P, tl, t, Ys[0], XD[0], z, Ks[0], Js[0])
        for i in range(d):
            Ys[1, i] = xn[i] + a21 * dt * Ks[0, 0, i]
        _field(fn, jac, args, model, ip, P, tl, t + 0.5 * dt, Ys[1], XD[1], z, Ks[1], Js[1])
        for i in range(d):
            Ys[2, i] = xn[i] + a21 * dt * Ks[1, 0, i]
        _field(fn, jac, args, model, ip, P, tl, t + 0.5 * dt, Ys[2], XD[1], z, Ks[2], Js[2])
        for i in range(d):
            Ys[3, i] = xn[i] + dt * Ks[2, 0, i]
        _field(fn, jac, args, model, ip, P, tl, t + dt, Ys[3], XD[2], z, Ks[3], Js[3])
        # tangent segments: the same stages, linearised
        for a in range(k):
            Va = V[a]
            for i in range(d):
                vn[i] = Va[row_n, i]
            _delayed(Va, n, R, lag0, mid_off, mid_w, False, vd)
            _tangent_matvec(Js, 0, vn, vd, dK[0])
            _delayed(Va, n, R, lag0, mid_off, mid_w, True, vd)
            for i in range(d):
                dY[i] = vn[i] + a21 * dt * dK[0, i]
            _tangent_matvec(Js, 1, dY, vd, dK[1])
            for i in range(d):
                dY[i] = vn[i] + a21 * dt * dK[1, i]
            _tangent_matvec(Js, 2, dY, vd, dK[2])
            _delayed(Va, n, R, lag1, mid_off, mid_w, False, vd)
            for i in range(d):
                dY[i] = vn[i] + dt * dK[2, i]
            _tangent_matvec(Js, 3, dY, vd, dK[3])
            row_new = (n + 1) % R  # the oldest node's row, no longer needed
            for i in range(d):
                Va[row_new, i] = vn[i] + dt / 6.0 * (
                    dK[0, i] + 2.0 * dK[1, i] + 2.0 * dK[2, i] + dK[3, i]
                )
        row_new = (n + 1) % R
        finite = True
        for i in range(d):
            v = xn[i] + dt / 6.0 * (
                Ks[0, 0, i] + 2.0 * Ks[1, 0, i] + 2.0 * Ks[2, 0, i] + Ks[3, 0, i]
            )
            Xr[row_new, i] = v
            if not math.isfinite(v):
                finite = False
        n += 1
        if not finite:
            status = NONFINITE
            break
        since += 1
        if since == reorth:
            since = 0
            status = _gram_schmidt(V, wq, n, logsum)
            if status != OK:
                break
    if status == OK and since > 0:
        status = _gram_schmidt(V, wq, n, logsum)
    ist[I_N] = n
    ist[I_STATUS] = status
    return status


@njit(cache=True, parallel=True)
def dde_lyap_advance(fn, jac, args, fld, grid, X, V, ist, n_steps, reorth, logsum):
    """:func:`dde_lyap_advance_one` for every batch member ``b`` (in parallel): ``X`` (B, R, d),
    ``V`` (B, k, R, d), ``ist`` (B, 2), ``logsum`` (B, k). Each member's status is
    ``ist[b, 1]``."""
    for b in prange(ist.shape[0]):
        dde_lyap_advance_one(fn, jac, args, fld, grid, X[b], V[b], ist[b], n_steps, reorth,
                             logsum[b])  # fmt: skip


@njit(cache=True)
def dde_lyap_advance_serial(fn, jac, args, fld, grid, X, V, ist, n_steps, reorth, logsum):
    """:func:`dde_lyap_advance` in one thread (a single member; compiles faster)."""
    for b in range(ist.shape[0]):
        dde_lyap_advance_one(fn, jac, args, fld, grid, X[b], V[b], ist[b], n_steps, reorth,
                             logsum[b])  # fmt: skip
