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

import math

import numpy as np
from numba import njit

from .activations import TANH, act, d2act, dact

FORM_OUTER = 0
FORM_INNER = 1


@njit(cache=True, inline="always")
def _act(code, x):
    # tanh through expm1 (accurate to a few ulp, cheaper than libm tanh); others by code
    if code == TANH:
        e = math.expm1(-2.0 * abs(x))
        r = -e / (2.0 + e)
        return r if x >= 0.0 else -r
    return act(code, x)


@njit(cache=True)
def neural_rhs(model, layer, d, nvar, z, out, row, pre, av):
    """Write ``(f(x), Df(x) V)`` into ``out[row, :]`` for the built-in field ``model``.

    ``z`` and ``out[row]`` have length ``d (1 + nvar)``; ``pre`` (H,) and ``av`` (H, nvar) are
    scratch. Weights are indexed in place (no per-call array views on the hot path).
    """
    W, WT, A, AT, b, code, form = model
    H = b.shape[1]
    l = layer
    # pre-activation p = A x + b, accumulated along contiguous rows of A^T
    for j in range(H):
        pre[j] = b[l, j]
    for i in range(d):
        xi = z[i]
        for j in range(H):
            pre[j] += xi * AT[l, i, j]
    if form == FORM_OUTER:
        for i in range(d):
            out[row, i] = 0.0
        for j in range(H):
            a = _act(code, pre[j])
            for i in range(d):
                out[row, i] += a * WT[l, j, i]
        if nvar > 0:
            # av = diag(σ'(p)) A V
            for j in range(H):
                g = dact(code, pre[j])
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
        for i in range(d):
            out[row, i] = _act(code, pre[i])
        if nvar > 0:
            for i in range(d):
                g = dact(code, pre[i])
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
    pre = np.empty(H)
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
