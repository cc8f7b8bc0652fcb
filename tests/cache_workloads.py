"""Small workloads of each compiled family, run in a fresh process by tests/test_cache.py and
bench/bench_startup.py.

    python tests/cache_workloads.py FAMILY [FAMILY ...]

runs each family's workload once and prints one JSON line per family: the cache statistics of
the package's dispatchers during that family (``misses``: the kernels numba compiled instead
of loading from the on-disk cache, as ``module.name``; ``hits``: overloads loaded) and the
seconds the workload took (``seconds``, the first call in this process). ``--import-time``
prints the seconds ``import nndyn_fast`` took first.
"""

from __future__ import annotations

import json
import sys
import time

T0 = time.perf_counter()
import numpy as np  # noqa: E402

import nndyn_fast as nf  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - T0


def ode_batch() -> None:
    m = nf.NeuralODE.random(4, 8, seed=0)
    X = np.random.default_rng(0).standard_normal((32, 4))
    t = np.linspace(0.0, 1.0, 5)
    nf.odeint(m, X, t)  # dopri5, blocked stages
    nf.odeint(m, X[:3], t)  # dopri5, row by row (the same kernel)


def ode_fixed() -> None:
    m = nf.NeuralODE.random(4, 8, seed=0)
    X = np.random.default_rng(0).standard_normal((32, 4))
    nf.odeint(m, X, np.linspace(0.0, 1.0, 5), method="rk4", dt=0.1)
    nf.flow_jacobian(m, X[:2], 1.0)  # variational equations, dopri5


def dde() -> None:
    t = np.linspace(0.0, 40.0, 9)
    nf.ddeint(nf.MackeyGlass(), 1.2, t, delays=17.0)
    nf.ddeint(nf.MackeyGlass(), 1.2, t, delays=17.0, method="rk4", dt=0.1)  # the same kernel
    nf.ddeint(nf.MackeyGlass(), np.full((3, 1), 1.2), t, delays=17.0)  # a batch, in parallel
    nf.dde_lyapunov(nf.MackeyGlass(), [1.2], delays=1.7, k=2, t_end=2.0, dt=0.1)
    nf.dde_lyapunov(nf.MackeyGlass(), [[1.2], [0.9]], delays=1.7, k=2, t_end=2.0, dt=0.1)


def training() -> None:
    rng = np.random.default_rng(0)
    mlp = nf.MLP((3, 8, 1), "tanh")
    X = rng.standard_normal((40, 3))
    Y = np.sin(X[:, :1])
    theta = mlp.init(0)
    nf.gradient_descent(mlp, theta, X, Y, lr=0.1, steps=20)
    nf.hvp(mlp, theta, X, Y, theta)
    nf.sharpness(mlp, theta, X, Y)


def lyapunov() -> None:
    nf.lyapunov_spectrum(nf.Lorenz63(), [1.0, 1.0, 1.0], t_end=1.0, dt=0.01)
    nf.lyapunov_spectrum(nf.Henon(), [0.1, 0.1], steps=100)
    G = np.random.default_rng(0).standard_normal((20, 30))
    nf.sgd_lyapunov(G, 0.5, 4, steps=100, k=1, replicas=1, transient=0, seed=1)


def simulate() -> None:
    rng = np.random.default_rng(0)
    n = 40
    model = nf.Kuramoto(rng.standard_normal(n), rng.random((n, n)), 1.0)
    nf.simulate(model, rng.uniform(0.0, 2 * np.pi, n), 0.5, 0.01)


def networks() -> None:
    # every coupling form through the fused kernels, and noisy runs (one realisation: the
    # row-parallel sums; a batch: the serial sums, with their own prefix-sum scratch)
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n = 40
    omega = rng.standard_normal(n)
    th = rng.uniform(0.0, 2 * np.pi, n)
    W = rng.random((n, n))
    for coupling in (W, sp.csr_matrix(np.where(W > 0.7, W, 0.0)), nf.Graphon.ring(0.2)):
        model = nf.Kuramoto(omega, coupling, 1.0)
        nf.simulate(model, th, 0.2, 0.05)
        nf.simulate(model, th, 0.2, 0.05, method="dopri5")
        nf.simulate(model, th, 0.2, 0.05, noise=0.3, seed=1)
        nf.simulate(model, th, 0.2, 0.05, noise=0.3, seed=1, realisations=2)


def gradients() -> None:
    model = nf.NeuralODE.random(3, 4, layers=2, seed=0)
    X = np.random.default_rng(0).standard_normal((20, 3))
    for method in ("rk4", "dopri5"):
        nf.flow_map_vjp(model, X, None, np.ones((20, 3)), method=method)


def user() -> None:
    # user functions reach the kernels by their signature: a new process compiles only them
    from numba import njit

    @njit
    def decay(t, x, args, out):
        out[0] = -args[0] * x[0]

    @njit
    def decay_jac(t, x, args, J):
        J[0, 0] = -args[0]

    @njit
    def delayed(t, x, xd, args, out):
        out[0] = -args[0] * xd[0, 0]

    @njit
    def phi(t, p):
        return np.array([p[0] + 0.0 * t])

    t = np.linspace(0.0, 2.0, 5)
    nf.odeint(decay, [1.0], t, args=(1.0,))
    nf.odeint(decay, [1.0], t, method="rk4", dt=0.25, args=(1.0,))
    p = np.array([1.0])
    for method in ("rk4", "dopri5"):
        nf.ddeint(delayed, phi, t, delays=1.0, method=method, dt=0.125, args=(1.0,), history_args=p)
        nf.ddeint(delayed, p, t, delays=1.0, method=method, dt=0.125, args=(1.0,))
    flow = nf.FlowSystem(decay, decay_jac, dim=1, args=(1.0,))
    nf.lyapunov_spectrum(flow, [1.0], t_end=1.0, dt=0.01)

    @njit
    def delayed_jac(t, x, xd, args, J):
        J[0, 0, 0] = 0.0
        J[1, 0, 0] = -args[0]

    for step in ({"dt": 0.125}, {"rtol": 1e-3}):  # the step given, or chosen by a pilot
        nf.dde_lyapunov(delayed, p, delays=1.0, k=2, t_end=2.0, jac=delayed_jac, args=(1.0,),
                        **step)  # fmt: skip


FAMILIES = {
    f.__name__: f
    for f in (ode_batch, ode_fixed, dde, training, lyapunov, simulate, networks, gradients, user)
}


def package_dispatchers() -> list:
    """Every Numba dispatcher defined in a module of nndyn_fast (kernels and API)."""
    from numba.core.registry import CPUDispatcher

    found = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("nndyn_fast") and mod is not None:
            for obj in vars(mod).values():
                if isinstance(obj, CPUDispatcher) and obj.__module__ == name:
                    found.append(obj)
    return found


def _counts() -> dict:
    return {
        f"{d.__module__}.{d.__name__}": (
            sum(d.stats.cache_hits.values()),
            sum(d.stats.cache_misses.values()),
        )
        for d in package_dispatchers()
    }


def run(family: str) -> dict:
    """Run one family; its cache statistics and time."""
    before = _counts()
    t0 = time.perf_counter()
    FAMILIES[family]()
    seconds = time.perf_counter() - t0
    after = _counts()
    hits = sum(h - before.get(k, (0, 0))[0] for k, (h, _) in after.items())
    misses = sorted(k for k, (_, m) in after.items() if m > before.get(k, (0, 0))[1])
    return {"family": family, "hits": hits, "misses": misses, "seconds": seconds}


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--import-time" in args:
        args.remove("--import-time")
        print(json.dumps({"import_seconds": IMPORT_SECONDS}))
    for fam in args:
        print(json.dumps(run(fam)), flush=True)
