"""Benchmarks of the training-dynamics kernels (MLP gradient, exact HVP, sharpness).

Workload (``NNDYN_BENCH_FULL=1``): MLP 20-64-64-1 tanh, MSE on 1000 points, top Hessian
eigenvalue to relative accuracy 1e-8. Default: 5-16-16-1 on 100 points (CI smoke size).

Groups
- ``mlp-derivatives``: one gradient vs one exact HVP (Numba R-operator) vs one HVP by a batched
  numpy R-operator (the ratio HVP/grad should be <= 3).
- ``top-eigenvalue``: Lanczos on the Numba HVP (to 1e-8) vs 100 power iterations on the numpy
  R-operator; the number of HVPs each used is stored in ``extra_info``.
"""

import os

import numpy as np
import pytest

from nndyn_fast import training as tr

FULL = os.environ.get("NNDYN_BENCH_FULL") == "1"
SIZES = (20, 64, 64, 1) if FULL else (5, 16, 16, 1)
N = 1000 if FULL else 100


def _numpy_hvp(sizes, theta, X, Y, v):
    """Batched numpy R-operator for a tanh MLP with MSE loss (tanh evaluated once per layer)."""
    layers, vl, p = [], [], 0
    for i, o in zip(sizes[:-1], sizes[1:], strict=True):
        layers.append((theta[p : p + o * i].reshape(o, i), theta[p + o * i : p + o * i + o]))
        vl.append((v[p : p + o * i].reshape(o, i), v[p + o * i : p + o * i + o]))
        p += o * i + o
    n, L = X.shape[0], len(layers)
    a, ra = X, None
    acts, racts, s1s, s2s, rzs = [X], [None], [], [], []
    for l, ((W, b), (V, c)) in enumerate(zip(layers, vl, strict=True)):
        z = a @ W.T + b
        rz = a @ V.T + c if ra is None else a @ V.T + c + ra @ W.T
        if l < L - 1:
            t = np.tanh(z)
            s1 = 1 - t * t
            s1s.append(s1)
            s2s.append(-2 * t * s1)
            rzs.append(rz)
            a, ra = t, s1 * rz
        else:
            a, ra = z, rz
        acts.append(a)
        racts.append(ra)
    d, rd = (a - Y) / n, ra / n
    out = []
    for l in range(L - 1, -1, -1):
        (W, _), (V, _) = layers[l], vl[l]
        hW = rd.T @ acts[l] if racts[l] is None else rd.T @ acts[l] + d.T @ racts[l]
        out.append(np.concatenate([hW.ravel(), rd.sum(0)]))
        if l > 0:
            g = d @ W
            rd = s2s[l - 1] * rzs[l - 1] * g + s1s[l - 1] * (d @ V + rd @ W)
            d = s1s[l - 1] * g
    return np.concatenate(out[::-1])


def _power_numpy(sizes, theta, X, Y, iters=100, seed=0):
    v = np.random.default_rng(seed).standard_normal(theta.shape[0])
    v /= np.linalg.norm(v)
    lam = 0.0
    for _ in range(iters):
        w = _numpy_hvp(sizes, theta, X, Y, v)
        lam = v @ w
        v = w / np.linalg.norm(w)
    return lam


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    mlp = tr.MLP(SIZES, "tanh")
    X = rng.standard_normal((N, SIZES[0]))
    Y = np.sin(X[:, :1]) + 0.1 * rng.standard_normal((N, 1))
    theta = mlp.init(0)
    v = rng.standard_normal(mlp.n_params)
    # warm up (compile) and cross-check the baseline before timing
    np.testing.assert_allclose(
        tr.hvp(mlp, theta, X, Y, v), _numpy_hvp(SIZES, theta, X, Y, v), rtol=1e-9, atol=1e-12
    )
    tr.grad(mlp, theta, X, Y)
    tr.sharpness(mlp, theta, X, Y, tol=1e-8)
    return mlp, theta, X, Y, v


@pytest.mark.benchmark(group="mlp-derivatives")
def test_grad_reference(benchmark, problem):
    mlp, theta, X, Y, _ = problem
    benchmark(tr.grad, mlp, theta, X, Y)


@pytest.mark.benchmark(group="mlp-derivatives")
def test_hvp_ours(benchmark, problem):
    mlp, theta, X, Y, v = problem
    benchmark(tr.hvp, mlp, theta, X, Y, v)


@pytest.mark.benchmark(group="mlp-derivatives")
def test_hvp_numpy_baseline(benchmark, problem):
    mlp, theta, X, Y, v = problem
    benchmark(_numpy_hvp, SIZES, theta, X, Y, v)


def _record(benchmark, n_hvp, lam):
    benchmark.extra_info["n_hvp"] = int(n_hvp)
    benchmark.extra_info["lambda_max"] = float(lam)


@pytest.mark.benchmark(group="top-eigenvalue")
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_sharpness_ours(benchmark, problem, method):
    mlp, theta, X, Y, _ = problem
    res = benchmark(tr.sharpness, mlp, theta, X, Y, method=method, tol=1e-8)
    _record(benchmark, res.n_hvp, res.sharpness)


@pytest.mark.benchmark(group="top-eigenvalue")
def test_power_100_numpy_baseline(benchmark, problem):
    mlp, theta, X, Y, _ = problem
    _record(benchmark, 100, benchmark(_power_numpy, SIZES, theta, X, Y))
