"""Lyapunov exponents by the QR (Benettin / Shimada–Nagashima) method.

A block of ``k`` tangent vectors is stored as the ROWS of a (k, m) array ``V``. It is pushed
through the linearised dynamics (Jacobian of a map, tangent flow of an ODE, a random matrix
factor) and re-orthonormalised every ``reorth_every`` steps by a QR factorisation
V^T = Q R; the logarithms log|R_jj| are accumulated in ``logr`` and the exponents are
lambda_j = logr_j / (elapsed time). The QR is modified Gram–Schmidt with one full second pass
("twice is enough"), which keeps Q orthonormal to rounding for the small k used here.

Kernels:

- :func:`benettin_map_advance`: x_{t+1} = F(x_t), V <- V DF(x_t)^T (built-in Hénon, or a user's
  ``step(x, args, out)`` / ``jac(x, args, J)``).
- :func:`benettin_flow_advance`: dx/dt = f(t, x), dV/dt = V Df(t, x)^T by classical RK4 on the
  joint state + tangent system (built-in Lorenz-63, or a user's ``f(t, x, args, out)`` /
  ``jac(t, x, args, J)``).
- :func:`qr_matrix_products`: V <- V M_t^T for given factors M_t (random matrix products).
- :func:`sgd_rank_products`: the SGD factor M = I - (lr/B) sum_{b} sum_{o<q} a_{i_b q + o}
  a_{i_b q + o}^T applied as a rank-(B q) update in O(m B q k) per step, replicas in parallel.
- :func:`sgd_hessian_products`: the same with explicit per-sample Hessians (n, m, m).
- :func:`batches_without_replacement`: batch indices without replacement from given uniforms.
- :func:`mlp_jacobian_qr`: layer-to-layer Jacobian products diag(phi'(z_l)) W_l of an MLP,
  inputs in parallel.

Status codes (:mod:`~nndyn_fast.kernels.control`): ``OK``, ``NONFINITE`` (a NaN/inf state or
tangent vector), ``DEGENERATE`` (a tangent vector collapsed to zero, its exponent is -inf);
the worst status of several replicas is the largest.
"""

import math

import numpy as np
from numba import njit, prange

from .activations import act, dact
from .control import DEGENERATE, FASTMATH, NONFINITE, OK

# Built-in systems (used when the user function argument is None).
HENON = 0  # map:  (x, y) -> (1 - a x^2 + y, b x),            args = (a, b)
LORENZ63 = 0  # flow: (s (y - x), x (r - z) - y, x y - beta z),  args = (s, r, beta)

# FASTMATH (kernels.control) lets LLVM vectorise the dot products; NaN/inf semantics are kept.
# Every chain (replica, input) is advanced by one thread, so results do not depend on the
# number of threads.


# --------------------------------------------------------------------------------------------
# QR of a (k, m) block of row vectors
# --------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=FASTMATH)
def qr_rows(V, logr, R, fill_R):
    """Orthonormalise the rows of ``V`` (k, m) in place by modified Gram–Schmidt, twice.

    Adds log|R_jj| to ``logr[j]``; with ``fill_R`` also writes the (k, k) upper-triangular
    factor into ``R`` (V_before = R^T V_after). A row that becomes zero adds -inf, stays zero
    and the status is ``DEGENERATE``; a NaN/inf norm gives ``NONFINITE``.
    """
    k = V.shape[0]
    m = V.shape[1]
    status = OK
    if fill_R:
        for i in range(k):
            for j in range(k):
                R[i, j] = 0.0
    for j in range(k):
        vj = V[j]
        for _pass in range(2):
            for i in range(j):
                vi = V[i]
                d = 0.0
                for a in range(m):
                    d += vi[a] * vj[a]
                if d != 0.0:
                    for a in range(m):
                        vj[a] -= d * vi[a]
                if fill_R:
                    R[i, j] += d
        nrm = 0.0
        for a in range(m):
            nrm += vj[a] * vj[a]
        nrm = math.sqrt(nrm)
        if not math.isfinite(nrm):
            return NONFINITE
        if fill_R:
            R[j, j] = nrm
        if nrm == 0.0:
            logr[j] += -np.inf
            status = DEGENERATE
            continue
        logr[j] += math.log(nrm)
        inv = 1.0 / nrm
        for a in range(m):
            vj[a] *= inv
    return status


@njit(cache=True, inline="always")
def _apply_jac_rows(J, V, W):
    """W[j] = J V[j] for each row j (W = V J^T)."""
    k = V.shape[0]
    d = J.shape[0]
    m = J.shape[1]
    for j in range(k):
        for a in range(d):
            s = 0.0
            for b in range(m):
                s += J[a, b] * V[j, b]
            W[j, a] = s


@njit(cache=True, inline="always")
def _copy_rows(src, dst):
    """dst[j, a] = src[j, a] over the shape of ``dst`` (src may be wider)."""
    for j in range(dst.shape[0]):
        for a in range(dst.shape[1]):
            dst[j, a] = src[j, a]


@njit(cache=True, inline="always")
def _axpy_rows(x, h, y, out):
    """out = x + h y for (k, m) blocks."""
    for j in range(x.shape[0]):
        for a in range(x.shape[1]):
            out[j, a] = x[j, a] + h * y[j, a]


@njit(cache=True, inline="always")
def _reorth_due(it, n_steps, reorth_every):
    """True after every ``reorth_every``-th step and after the last one (it counts from 0)."""
    return (it + 1) % reorth_every == 0 or it == n_steps - 1


@njit(cache=True, inline="always")
def _check_and_reorth(x, V, logr, R):
    """``NONFINITE`` if the state ``x`` is not finite, else the status of the QR of ``V``."""
    for a in range(x.shape[0]):
        if not math.isfinite(x[a]):
            return NONFINITE
    return qr_rows(V, logr, R, False)


@njit(cache=True, inline="always")
def _worst(status):
    """The largest per-replica status."""
    worst = OK
    for r in range(status.shape[0]):
        if status[r] > worst:
            worst = status[r]
    return worst


# --------------------------------------------------------------------------------------------
# Built-in systems
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def henon_step(x, p, out):
    """Hénon map (x, y) -> (1 - a x^2 + y, b x); p = (a, b)."""
    out[0] = 1.0 - p[0] * x[0] * x[0] + x[1]
    out[1] = p[1] * x[0]


@njit(cache=True)
def henon_jac(x, p, J):
    """Jacobian of the Hénon map: [[-2 a x, 1], [b, 0]]."""
    J[0, 0] = -2.0 * p[0] * x[0]
    J[0, 1] = 1.0
    J[1, 0] = p[1]
    J[1, 1] = 0.0


@njit(cache=True)
def lorenz63_rhs(t, x, p, out):
    """Lorenz-63 vector field; p = (sigma, rho, beta)."""
    out[0] = p[0] * (x[1] - x[0])
    out[1] = x[0] * (p[1] - x[2]) - x[1]
    out[2] = x[0] * x[1] - p[2] * x[2]


@njit(cache=True)
def lorenz63_jac(t, x, p, J):
    """Jacobian of the Lorenz-63 vector field."""
    J[0, 0] = -p[0]
    J[0, 1] = p[0]
    J[0, 2] = 0.0
    J[1, 0] = p[1] - x[2]
    J[1, 1] = -1.0
    J[1, 2] = -x[0]
    J[2, 0] = x[1]
    J[2, 1] = x[0]
    J[2, 2] = -p[2]


# --------------------------------------------------------------------------------------------
# Maps and flows
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def benettin_map_advance(step_fn, jac_fn, code, bparams, args, x, V, n_steps, reorth_every, logr):
    """Advance a map and its tangent block ``n_steps`` iterations.

    Parameters: ``step_fn``/``jac_fn`` None for the built-in ``code`` (``HENON``, parameters in
    the float64 array ``bparams``) or the user's jitted ``step(x, args, out)`` and
    ``jac(x, args, J)`` (``args`` passed through; ``bparams`` then unused); ``x`` (d,) and
    ``V`` (k, d) updated in place; ``logr`` (k,) accumulates log|R_jj|. QR every
    ``reorth_every`` iterations and after the last one. Returns ``(n_done, status)``.
    """
    d = x.shape[0]
    k = V.shape[0]
    xn = np.empty(d)
    J = np.empty((d, d))
    W = np.empty((k, d))
    R = np.empty((1, 1))
    for it in range(n_steps):
        if step_fn is None:
            henon_jac(x, bparams, J)
            henon_step(x, bparams, xn)
        else:
            jac_fn(x, args, J)
            step_fn(x, args, xn)
        _apply_jac_rows(J, V, W)
        for a in range(d):
            x[a] = xn[a]
        _copy_rows(W, V)
        if _reorth_due(it, n_steps, reorth_every):
            st = _check_and_reorth(x, V, logr, R)
            if st != OK:
                return it + 1, st
    return n_steps, OK


@njit(cache=True)
def _flow_stage(f_fn, jac_fn, code, bparams, args, t, xs, Vs, kx, kV, J):
    if f_fn is None:
        lorenz63_rhs(t, xs, bparams, kx)
        lorenz63_jac(t, xs, bparams, J)
    else:
        f_fn(t, xs, args, kx)
        jac_fn(t, xs, args, J)
    _apply_jac_rows(J, Vs, kV)


@njit(cache=True)
def benettin_flow_advance(
    f_fn, jac_fn, code, bparams, args, x, V, t0, dt, n_steps, reorth_every, logr
):
    """Advance dx/dt = f(t, x) with the tangent block dV_j/dt = Df(t, x) V_j by classical RK4.

    ``f_fn``/``jac_fn`` are None for the built-in ``code`` (``LORENZ63``, parameters in the
    float64 array ``bparams``) or the user's jitted ``f(t, x, args, out)`` and
    ``jac(t, x, args, J)``. ``x`` (d,), ``V`` (k, d) updated in place,
    ``logr`` (k,) accumulates log|R_jj|; QR every ``reorth_every`` steps and after the last one.
    Returns ``(n_done, status)``.
    """
    d = x.shape[0]
    k = V.shape[0]
    xs = np.empty(d)
    Vs = np.empty((k, d))
    kx = np.empty((4, d))
    kV = np.empty((4, k, d))
    J = np.empty((d, d))
    R = np.empty((1, 1))
    h2 = 0.5 * dt
    for it in range(n_steps):
        t = t0 + it * dt
        _flow_stage(f_fn, jac_fn, code, bparams, args, t, x, V, kx[0], kV[0], J)
        for s, h in enumerate((h2, h2, dt)):
            # stage s + 1 at x + h k_s (classical RK4 nodes 1/2, 1/2, 1)
            for a in range(d):
                xs[a] = x[a] + h * kx[s, a]
            _axpy_rows(V, h, kV[s], Vs)
            _flow_stage(f_fn, jac_fn, code, bparams, args, t + h, xs, Vs, kx[s + 1], kV[s + 1], J)
        w = dt / 6.0
        for a in range(d):
            x[a] += w * (kx[0, a] + 2.0 * kx[1, a] + 2.0 * kx[2, a] + kx[3, a])
        for j in range(k):
            for a in range(d):
                V[j, a] += w * (kV[0, j, a] + 2.0 * kV[1, j, a] + 2.0 * kV[2, j, a] + kV[3, j, a])
        if _reorth_due(it, n_steps, reorth_every):
            st = _check_and_reorth(x, V, logr, R)
            if st != OK:
                return it + 1, st
    return n_steps, OK


# --------------------------------------------------------------------------------------------
# Products of given matrices
# --------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=FASTMATH)
def qr_matrix_products(M, V, reorth_every, logr):
    """V <- V M_t^T for t = 0..T-1 (``M`` (T, d, d)), QR every ``reorth_every`` factors and
    after the last; ``logr`` (k,) accumulates log|R_jj|. Returns ``(n_done, status)``."""
    T = M.shape[0]
    k = V.shape[0]
    d = V.shape[1]
    W = np.empty((k, d))
    R = np.empty((1, 1))
    for t in range(T):
        _apply_jac_rows(M[t], V, W)
        _copy_rows(W, V)
        if _reorth_due(t, T, reorth_every):
            st = qr_rows(V, logr, R, False)
            if st != OK:
                return t + 1, st
    return T, OK


# --------------------------------------------------------------------------------------------
# SGD near an interpolation minimum
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def batches_without_replacement(u, perm, idx):
    """Batch indices without replacement by partial Fisher–Yates shuffles.

    ``u`` (R, T, B) uniforms in [0, 1); ``perm`` (R, n) int64 permutations of 0..n-1 carried
    from chunk to chunk (any arrangement gives uniform draws); ``idx`` (R, T, B) int32 output.
    """
    R = u.shape[0]
    T = u.shape[1]
    B = u.shape[2]
    n = perm.shape[1]
    for r in range(R):
        for t in range(T):
            for b in range(B):
                j = b + int(u[r, t, b] * (n - b))
                if j >= n:
                    j = n - 1
                tmp = perm[r, b]
                perm[r, b] = perm[r, j]
                perm[r, j] = tmp
                idx[r, t, b] = perm[r, b]


@njit(cache=True, fastmath=FASTMATH)
def _sgd_rank_chain(A, q, c, idx, Vr, reorth_every, logr):
    """One chain of :func:`sgd_rank_products`: ``idx`` (T, B), ``Vr`` (k, m), ``logr`` (k,)."""
    T = idx.shape[0]
    B = idx.shape[1]
    k = Vr.shape[0]
    m = Vr.shape[1]
    s = np.empty(B * q)
    Rm = np.empty((1, 1))
    for t in range(T):
        for j in range(k):
            v = Vr[j]
            for b in range(B):
                base = idx[t, b] * q
                for o in range(q):
                    arow = A[base + o]
                    acc = 0.0
                    for a in range(m):
                        acc += arow[a] * v[a]
                    s[b * q + o] = c * acc
            for b in range(B):
                base = idx[t, b] * q
                for o in range(q):
                    arow = A[base + o]
                    cf = s[b * q + o]
                    if cf != 0.0:
                        for a in range(m):
                            v[a] -= cf * arow[a]
        if _reorth_due(t, T, reorth_every):
            st = qr_rows(Vr, logr, Rm, False)
            if st != OK:
                return st
    return OK


@njit(cache=True, parallel=True)
def sgd_rank_products(A, q, c, idx, V, reorth_every, logr, status):
    """Apply M_t = I - c sum_{b<B} sum_{o<q} a_{i q + o} a_{i q + o}^T, i = idx[r, t, b].

    ``A`` (n q, m) holds the rows a (per-sample gradients, q rows per sample; m = d, or the rank
    r in span coordinates); ``c`` = lr / B; ``idx`` (R, T, B) int32; ``V`` (R, k, m) tangent
    blocks updated in place; ``logr`` (R, k) accumulates log|R_jj|; ``status`` (R,) receives
    each replica's status. Each factor is a rank-(B q) update: O(m B q k) per step, no (m, m)
    matrix is formed. Replicas run in parallel, one thread each (use
    :func:`sgd_rank_products_serial` for a single chain). Returns the largest status.
    """
    for r in prange(idx.shape[0]):
        status[r] = _sgd_rank_chain(A, q, c, idx[r], V[r], reorth_every, logr[r])
    return _worst(status)


@njit(cache=True)
def sgd_rank_products_serial(A, q, c, idx, V, reorth_every, logr, status):
    """:func:`sgd_rank_products` on the calling thread (no thread pool; for R = 1)."""
    for r in range(idx.shape[0]):
        status[r] = _sgd_rank_chain(A, q, c, idx[r], V[r], reorth_every, logr[r])
    return _worst(status)


@njit(cache=True, fastmath=FASTMATH)
def _sgd_hessian_chain(H, c, idx, Vr, reorth_every, logr):
    """One chain of :func:`sgd_hessian_products`: ``idx`` (T, B), ``Vr`` (k, m), ``logr`` (k,)."""
    T = idx.shape[0]
    B = idx.shape[1]
    k = Vr.shape[0]
    m = Vr.shape[1]
    S = np.empty((m, m))
    w = np.empty(m)
    Rm = np.empty((1, 1))
    for t in range(T):
        for a in range(m):
            for b2 in range(m):
                S[a, b2] = 0.0
        for b in range(B):
            i = idx[t, b]
            for a in range(m):
                for b2 in range(m):
                    S[a, b2] += H[i, a, b2]
        for j in range(k):
            for a in range(m):
                acc = 0.0
                for b2 in range(m):
                    acc += S[a, b2] * Vr[j, b2]
                w[a] = acc
            for a in range(m):
                Vr[j, a] -= c * w[a]
        if _reorth_due(t, T, reorth_every):
            st = qr_rows(Vr, logr, Rm, False)
            if st != OK:
                return st
    return OK


@njit(cache=True, parallel=True)
def sgd_hessian_products(H, c, idx, V, reorth_every, logr, status):
    """Apply M_t = I - c sum_{b<B} H_{idx[r, t, b]} with explicit Hessians ``H`` (n, m, m).

    Same layout and return value as :func:`sgd_rank_products`; O(B m^2 + k m^2) per step.
    """
    for r in prange(idx.shape[0]):
        status[r] = _sgd_hessian_chain(H, c, idx[r], V[r], reorth_every, logr[r])
    return _worst(status)


# --------------------------------------------------------------------------------------------
# Deep networks: products of layer Jacobians
# --------------------------------------------------------------------------------------------
@njit(cache=True, parallel=True, fastmath=FASTMATH)
def mlp_jacobian_qr(params, w_off, b_off, sizes, act_code, act_last, X, V0, logr, T, logscale):
    """Layer-to-layer Jacobian products of an MLP at each input, by QR.

    Layer l (l = 0..L-1): z = W_l h + b_l, h <- phi(z) (identity on the last layer unless
    ``act_last``), tangent rows V_j <- phi'(z) * (W_l V_j). ``params`` float64 holds W_l
    (sizes[l+1], sizes[l]) row-major at ``w_off[l]`` and b_l at ``b_off[l]``. ``X`` (n, sizes[0]);
    ``V0`` (k, sizes[0]) orthonormal start rows. Outputs: ``logr`` (n, L, k) log|R_jj| per layer;
    ``T`` (n, k, k) and ``logscale`` (n,) with R_{L-1} ... R_0 = exp(logscale) T, so the input–
    output Jacobian restricted to span(V0) has the singular values of exp(logscale) T.
    """
    n = X.shape[0]
    L = sizes.shape[0] - 1
    k = V0.shape[0]
    wmax = 0
    for l in range(L + 1):
        if sizes[l] > wmax:
            wmax = sizes[l]
    for p in prange(n):
        h = np.empty(wmax)
        hn = np.empty(wmax)
        dz = np.empty(wmax)
        V = np.zeros((k, wmax))
        W = np.empty((k, wmax))
        R = np.zeros((k, k))
        Tp = np.zeros((k, k))
        tmp = np.empty((k, k))
        for a in range(sizes[0]):
            h[a] = X[p, a]
        for j in range(k):
            for a in range(sizes[0]):
                V[j, a] = V0[j, a]
            Tp[j, j] = 1.0
        ls = 0.0
        for l in range(L):
            nin = sizes[l]
            nout = sizes[l + 1]
            wo = w_off[l]
            bo = b_off[l]
            use_act = act_last or l < L - 1
            for o in range(nout):
                z = params[bo + o]
                for a in range(nin):
                    z += params[wo + o * nin + a] * h[a]
                if use_act:
                    hn[o] = act(act_code, z)
                    dz[o] = dact(act_code, z)
                else:
                    hn[o] = z
                    dz[o] = 1.0
            for j in range(k):
                for o in range(nout):
                    s = 0.0
                    for a in range(nin):
                        s += params[wo + o * nin + a] * V[j, a]
                    W[j, o] = dz[o] * s
            for o in range(nout):
                h[o] = hn[o]
            lr_row = logr[p, l]
            for j in range(k):
                lr_row[j] = 0.0
            qr_rows(W[:, :nout], lr_row, R, True)
            _copy_rows(W, V[:, :nout])
            # Tp <- R Tp, rescaled by its largest entry
            big = 0.0
            for i in range(k):
                for j in range(k):
                    s = 0.0
                    for c in range(i, k):
                        s += R[i, c] * Tp[c, j]
                    tmp[i, j] = s
                    if abs(s) > big:
                        big = abs(s)
            if big > 0.0 and math.isfinite(big):
                ls += math.log(big)
                for i in range(k):
                    for j in range(k):
                        Tp[i, j] = tmp[i, j] / big
            else:
                for i in range(k):
                    for j in range(k):
                        Tp[i, j] = tmp[i, j]
        for i in range(k):
            for j in range(k):
                T[p, i, j] = Tp[i, j]
        logscale[p] = ls
