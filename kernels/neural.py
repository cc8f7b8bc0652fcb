"""Built-in neural vector fields and their analytic Jacobians (activation by integer code).

Two forms, with weights piecewise constant in time (``layer`` picks the active slice):

- form 0 (``FORM_OUTER``): ``f(x) = W σ(A x + b)``, ``W`` (d, H), ``A`` (H, d), ``b`` (H,),
  ``Df(x) = W diag(σ'(A x + b)) A``;
- form 1 (``FORM_INNER``): ``f(x) = σ(M x + b)``, ``M`` (d, d) stored in the ``A`` slot,
  ``b`` (d,), ``Df(x) = diag(σ'(M x + b)) M``.

A model is the tuple ``(W, WT, A, AT, b, code, form)`` with ``W`` (L, d, H), ``WT`` (L, H, d),
``A`` (L, H, d), ``AT`` (L, d, H), ``b`` (L, H): the transposed copies let every product run
along contiguous rows. For form 1, ``W`` and ``WT`` are unused (shape (L, 0, 0) is fine).

The state of a variational run is ``z = (x, V)`` with ``x`` (d,) and the tangent matrix ``V``
(d, k) stored row-major after it; its derivative is ``(f(x), Df(x) V)``.
"""

import numpy as np
from numba import njit

from .activations import TANH, act, d2act, dact, tanh_fast
from .control import CONTRACT  # every kernel that evaluates the built-in field: same rounding

FORM_OUTER = 0
FORM_INNER = 1


@njit(cache=True, inline="always", error_model="numpy")
def _apply_act(code, src, dst, n):
    # dst[:n] = σ(src[:n]); the tanh loop vectorises
    if code == TANH:
        for j in range(n):
            dst[j] = tanh_fast(src[j])
    else:
        for j in range(n):
            dst[j] = act(code, src[j])


@njit(cache=True, inline="always")
def _matvec_acc(M, l, v, nv, acc, row, m):
    """``acc[row, :m] += sum_k v[k] M[l, k, :m]`` (axpy along contiguous rows of ``M[l]``).

    Eight rows per pass to cut the loads and stores of ``acc``; every entry is still summed in
    the order k = 0, 1, ..., nv - 1 (no reassociation), so results do not depend on how the
    loop is blocked or vectorised.
    """
    k = 0
    while k + 8 <= nv:
        v0 = v[k]
        v1 = v[k + 1]
        v2 = v[k + 2]
        v3 = v[k + 3]
        v4 = v[k + 4]
        v5 = v[k + 5]
        v6 = v[k + 6]
        v7 = v[k + 7]
        for i in range(m):
            a = acc[row, i] + v0 * M[l, k, i]
            a += v1 * M[l, k + 1, i]
            a += v2 * M[l, k + 2, i]
            a += v3 * M[l, k + 3, i]
            a += v4 * M[l, k + 4, i]
            a += v5 * M[l, k + 5, i]
            a += v6 * M[l, k + 6, i]
            acc[row, i] = a + v7 * M[l, k + 7, i]
        k += 8
    while k < nv:
        vk = v[k]
        for i in range(m):
            acc[row, i] += vk * M[l, k, i]
        k += 1


@njit(cache=True, fastmath=CONTRACT)
def block_matmul_acc(M, l, X, nb, nv, acc, m):
    """``acc[r, :m] += sum_k X[r, k] M[l, k, :m]`` for the rows ``r < nb`` of a block.

    Four rows at a time share each load of ``M``; every entry is summed in the order
    k = 0, 1, ..., nv - 1 exactly as in :func:`_matvec_acc`, so a row of the block gets the
    same bits as the same row computed on its own (batched = unbatched).
    """
    r = 0
    while r + 4 <= nb:
        k = 0
        while k + 4 <= nv:
            x00, x01, x02, x03 = X[r, k], X[r, k + 1], X[r, k + 2], X[r, k + 3]
            x10, x11, x12, x13 = X[r + 1, k], X[r + 1, k + 1], X[r + 1, k + 2], X[r + 1, k + 3]
            x20, x21, x22, x23 = X[r + 2, k], X[r + 2, k + 1], X[r + 2, k + 2], X[r + 2, k + 3]
            x30, x31, x32, x33 = X[r + 3, k], X[r + 3, k + 1], X[r + 3, k + 2], X[r + 3, k + 3]
            for i in range(m):
                m0 = M[l, k, i]
                m1 = M[l, k + 1, i]
                m2 = M[l, k + 2, i]
                m3 = M[l, k + 3, i]
                acc[r, i] = (((acc[r, i] + x00 * m0) + x01 * m1) + x02 * m2) + x03 * m3
                acc[r + 1, i] = (((acc[r + 1, i] + x10 * m0) + x11 * m1) + x12 * m2) + x13 * m3
                acc[r + 2, i] = (((acc[r + 2, i] + x20 * m0) + x21 * m1) + x22 * m2) + x23 * m3
                acc[r + 3, i] = (((acc[r + 3, i] + x30 * m0) + x31 * m1) + x32 * m2) + x33 * m3
            k += 4
        while k < nv:
            for q in range(4):
                xk = X[r + q, k]
                for i in range(m):
                    acc[r + q, i] += xk * M[l, k, i]
            k += 1
        r += 4
    while r < nb:
        _matvec_acc(M, l, X[r], nv, acc, r, m)
        r += 1


@njit(cache=True, error_model="numpy", fastmath=CONTRACT)
def neural_rhs(model, layer, d, nvar, z, out, row, pre, av):
    """Write ``(f(x), Df(x) V)`` into ``out[row, :]`` for the built-in field ``model``.

    ``z`` and ``out[row]`` have length ``d (1 + nvar)``; ``pre`` (2, H) (pre-activations and
    activations) and ``av`` (H, nvar) are scratch. Weights are indexed in place (no per-call
    array views on the hot path).
    """
    W, WT, A, AT, b, code, form = model
    H = b.shape[1]
    l = layer
    # pre-activation p = A x + b, accumulated along contiguous rows of A^T
    for j in range(H):
        pre[0, j] = b[l, j]
    _matvec_acc(AT, l, z, d, pre, 0, H)
    if form == FORM_OUTER:
        _apply_act(code, pre[0], pre[1], H)
        for i in range(d):
            out[row, i] = 0.0
        _matvec_acc(WT, l, pre[1], H, out, row, d)
        if nvar > 0:
            # av = diag(σ'(p)) A V
            for j in range(H):
                g = dact(code, pre[0, j])
                for c in range(nvar):
                    av[j, c] = 0.0
                for i in range(d):
                    a = A[l, j, i] * g
                    if a != 0.0:
                        base = d + i * nvar
                        for c in range(nvar):
                            av[j, c] += a * z[base + c]
            # out_V = W av
            for i in range(d):
                base = d + i * nvar
                for c in range(nvar):
                    out[row, base + c] = 0.0
                for j in range(H):
                    w = W[l, i, j]
                    if w != 0.0:
                        for c in range(nvar):
                            out[row, base + c] += w * av[j, c]
    else:
        _apply_act(code, pre[0], out[row], d)
        if nvar > 0:
            for i in range(d):
                g = dact(code, pre[0, i])
                base = d + i * nvar
                for c in range(nvar):
                    out[row, base + c] = 0.0
                for j in range(d):
                    m = A[l, i, j] * g
                    if m != 0.0:
                        bj = d + j * nvar
                        for c in range(nvar):
                            out[row, base + c] += m * z[bj + c]
    return 0


@njit(cache=True)
def neural_jacobian(model, layer, x, J, pre):
    """Write the Jacobian ``Df(x)`` (d, d) of the built-in field into ``J``."""
    W, WT, A, AT, b, code, form = model
    d = x.shape[0]
    bl = b[layer]
    H = bl.shape[0]
    Al = A[layer]
    for j in range(H):
        s = bl[j]
        for i in range(d):
            s += Al[j, i] * x[i]
        pre[j] = s
    if form == FORM_OUTER:
        Wl = W[layer]
        for r in range(d):
            for c in range(d):
                J[r, c] = 0.0
        for j in range(H):
            g = dact(code, pre[j])
            for r in range(d):
                w = Wl[r, j] * g
                for c in range(d):
                    J[r, c] += w * Al[j, c]
    else:
        for r in range(d):
            g = dact(code, pre[r])
            for c in range(d):
                J[r, c] = g * Al[r, c]
    return 0


@njit(cache=True)
def neural_field_batch(model, layer, X, out):
    """``out[i] = f(X[i])`` for a batch ``X`` (B, d) with the layer ``layer``."""
    B, d = X.shape
    H = model[4].shape[1]
    pre = np.empty((2, H))
    dummy = np.empty((H, 0))
    for i in range(B):
        neural_rhs(model, layer, d, 0, X[i], out, i, pre, dummy)
    return 0


@njit(cache=True)
def act_derivs(code, z, s, ds, d2s):
    """``s, ds, d2s = σ(z), σ'(z), σ''(z)`` elementwise for a 1-D array ``z``."""
    for i in range(z.shape[0]):
        s[i] = act(code, z[i])
        ds[i] = dact(code, z[i])
        d2s[i] = d2act(code, z[i])
    return 0
