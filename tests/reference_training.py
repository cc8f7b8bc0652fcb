"""Naive vectorised numpy references for the MLP kernels (same θ layout and loss normalisation).

Written directly from the equations, whole batches at once with numpy matrix products; used by
the tests as an independent implementation and by the benchmarks as the numpy baseline.
"""

from __future__ import annotations

import numpy as np

_ACT = {
    "tanh": (
        np.tanh,
        lambda z: 1 - np.tanh(z) ** 2,
        lambda z: -2 * np.tanh(z) * (1 - np.tanh(z) ** 2),
    ),
    "identity": (lambda z: z, np.ones_like, np.zeros_like),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float), np.zeros_like),
    "softplus": (
        lambda z: np.logaddexp(0.0, z),
        lambda z: 1 / (1 + np.exp(-z)),
        lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2,
    ),
}


def unflatten(sizes, theta):
    out, p = [], 0
    for i, o in zip(sizes[:-1], sizes[1:], strict=True):
        W = theta[p : p + o * i].reshape(o, i)
        p += o * i
        out.append((W, theta[p : p + o]))
        p += o
    return out


def naive_forward(sizes, activation, theta, X):
    sig = _ACT[activation][0]
    a = X
    layers = unflatten(sizes, theta)
    for l, (W, b) in enumerate(layers):
        z = a @ W.T + b
        a = z if l == len(layers) - 1 else sig(z)
    return a


def naive_loss(sizes, activation, theta, X, Y):
    f = naive_forward(sizes, activation, theta, X)
    return 0.5 * np.sum((f - Y) ** 2) / X.shape[0]


def naive_hvp(sizes, activation, theta, X, Y, v, want_grad=False):
    """MSE loss: (grad, Hv) by a batched numpy R-operator (forward, R-forward, backward,
    R-backward)."""
    sig, ds, d2s = _ACT[activation]
    n = X.shape[0]
    layers = unflatten(sizes, theta)
    vl = unflatten(sizes, v)
    L = len(layers)
    a, ra = X, np.zeros_like(X)
    acts, racts, zs, rzs = [X], [ra], [], []
    for l, ((W, b), (V, c)) in enumerate(zip(layers, vl, strict=True)):
        z = a @ W.T + b
        rz = a @ V.T + c + (ra @ W.T if l > 0 else 0.0)
        zs.append(z)
        rzs.append(rz)
        if l == L - 1:
            a, ra = z, rz
        else:
            s1 = ds(z)
            a, ra = sig(z), s1 * rz
        acts.append(a)
        racts.append(ra)
    d = (a - Y) / n
    rd = ra / n
    g, h = [], []
    for l in range(L - 1, -1, -1):
        W, _ = layers[l]
        V, _ = vl[l]
        ap, rap = acts[l], racts[l]
        g.append((d.T @ ap, d.sum(0)))
        h.append((rd.T @ ap + d.T @ rap, rd.sum(0)))
        if l > 0:
            z, rz = zs[l - 1], rzs[l - 1]
            gg = d @ W
            rg = d @ V + rd @ W
            s1 = ds(z)
            rd = d2s(z) * rz * gg + s1 * rg
            d = s1 * gg
    flat = lambda parts: np.concatenate([np.concatenate([w.ravel(), b]) for w, b in parts[::-1]])  # noqa: E731
    return (flat(g), flat(h)) if want_grad else flat(h)


def naive_per_sample(sizes, activation, theta, X):
    """Rows ∇θ f_k(x_i) by finite-free backprop one point and output at a time."""
    sig, ds, _ = _ACT[activation]
    layers = unflatten(sizes, theta)
    L = len(layers)
    rows = []
    for x in X:
        acts, zs = [x], []
        a = x
        for l, (W, b) in enumerate(layers):
            z = W @ a + b
            zs.append(z)
            a = z if l == L - 1 else sig(z)
            acts.append(a)
        for k in range(sizes[-1]):
            d = np.zeros(sizes[-1])
            d[k] = 1.0
            parts = []
            for l in range(L - 1, -1, -1):
                parts.append((np.outer(d, acts[l]), d.copy()))
                if l > 0:
                    d = ds(zs[l - 1]) * (layers[l][0].T @ d)
            rows.append(np.concatenate([np.concatenate([w.ravel(), b]) for w, b in parts[::-1]]))
    return np.array(rows)
