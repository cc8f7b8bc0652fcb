"""Memory capacity K tau of neural DDEs: the threshold demonstrations.

With the input as a constant history x0 on [-tau, 0] and the output read at time T, a neural
DDE x' = f(x(t), x(t - tau)) whose Lipschitz constant K satisfies K tau e < 1 behaves like a
neural ODE: in one dimension its time-T map is increasing, so it has no interior extremum and
cannot approximate x -> x^2. For large K tau that obstruction disappears (Kuehn & Kuntz,
arXiv:2505.07244). Two demonstrations:

(a) :func:`linear_sign_map` / :func:`linear_threshold`: x' = -a x(t - tau) has only
    non-oscillating solutions iff a tau <= 1/e, so x(T)/x0 > 0 for every T exactly below the
    threshold; above it some T gives x(T) = c x0 with c < 0.
(b) :func:`fit_square`: fit a one-dimensional :class:`~nndyn_fast.delay.NeuralDDE` under the
    constraint K tau <= kappa to x -> x^2 on [-1, 1] (scipy least squares) and report whether the
    fitted time-T map is monotone; :func:`memory_sweep` repeats it over kappa.
(c) :func:`memory_exponents`: the top Lyapunov exponents of a family of neural DDEs with growing
    K tau (how fast solutions forget their history), against the threshold K tau e = 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._validate import as_array, check_int, check_positive
from .delay import LinearDDE, NeuralDDE, activation_lipschitz, ddeint, lipschitz_bound

__all__ = [
    "THEORY_THRESHOLD",
    "linear_sign_map",
    "linear_threshold",
    "time_map",
    "is_monotone",
    "constrained_neural_dde",
    "fit_square",
    "memory_sweep",
    "memory_demo",
    "fit_extremum_grad",
    "memory_capacity_experiment",
    "memory_exponents",
]

THEORY_THRESHOLD = 1.0 / math.e  # K tau e = 1


def linear_sign_map(a_tau: Any, T: Any, *, rtol: float = 1e-10) -> np.ndarray:
    """x(T)/x0 for x'(t) = -a x(t - tau), constant history x0, tau = 1 (only a tau matters).

    Parameters
    ----------
    a_tau : (n,) values of a tau > 0.
    T : (k,) increasing read-out times > 0 (in units of tau).
    rtol : relative tolerance of the adaptive solver (atol is negligible: the sign is kept
        even where x(T) is tiny).

    Returns
    -------
    (n, k) array of x(T)/x0.
    """
    a = as_array("a_tau", a_tau, ndim=1)
    if not np.all(a > 0):
        raise ValueError("a_tau values must be > 0")
    Tg = as_array("T", T, ndim=1)
    if not np.all(Tg > 0):
        raise ValueError("T values must be > 0")
    t = np.concatenate([[0.0], Tg])
    out = np.empty((a.size, Tg.size))
    for i, ai in enumerate(a):
        sol = ddeint(LinearDDE(0.0, -ai), np.array([1.0]), t, delays=1.0, rtol=rtol, atol=1e-300)
        out[i] = sol.y[1:, 0]
    return out


def linear_threshold(
    T_max: float = 60.0, *, lo: float = 0.2, hi: float = 1.0, tol: float = 1e-5
) -> float:
    """Smallest a tau at which x(T)/x0 < 0 for some T in (0, T_max] (bisection).

    The theory's value is 1/e; for a finite horizon the observed value lies slightly above it,
    since just above 1/e the first sign change occurs at T ~ pi / Im(lambda), late.
    """
    T_max = check_positive("T_max", T_max)
    T = np.linspace(T_max / 4000, T_max, 4000)

    def negative(v: float) -> bool:
        return bool(linear_sign_map([v], T)[0].min() < 0)

    if negative(lo) or not negative(hi):
        raise ValueError(f"the threshold is not bracketed by [{lo}, {hi}] for T_max = {T_max}")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if negative(mid):
            hi = mid
        else:
            lo = mid
    return hi


def time_map(model: NeuralDDE, X: Any, T: float, tau: float, *, dt: float = 0.05) -> np.ndarray:
    """x(T) for the constant histories x0 = X[i] (batch, in parallel), classic RK4 with step dt."""
    X = as_array("X", X, ndim=1)
    sol = ddeint(model, X[:, None], np.array([0.0, T]), delays=tau, method="rk4", dt=dt)
    return sol.y[-1, :, 0]


def is_monotone(values: Any) -> bool:
    """True when ``values`` (sampled on an increasing grid) never change direction."""
    d = np.diff(as_array("values", values, ndim=1))
    return bool(np.all(d >= 0) or np.all(d <= 0))


def constrained_neural_dde(
    theta: np.ndarray, H: int, kappa: float, tau: float, activation: str = "tanh"
) -> NeuralDDE:
    """A one-dimensional NeuralDDE from ``theta`` = (W, A, B, b) (4H numbers), with W scaled
    down so that lipschitz_bound * tau <= kappa."""
    W = theta[:H].reshape(1, H)
    A = theta[H : 2 * H].reshape(H, 1)
    B = theta[2 * H : 3 * H].reshape(H, 1)
    b = theta[3 * H : 4 * H]
    ls = activation_lipschitz(activation)
    K = ls * np.linalg.norm(W) * (np.linalg.norm(A) + np.linalg.norm(B))
    if K * tau > kappa:
        W = W * (kappa / (K * tau))
    return NeuralDDE(W, A, B, b, activation=activation)


def fit_square(
    kappa: float,
    *,
    tau: float = 1.0,
    T: float = 6.0,
    H: int = 4,
    n_points: int = 41,
    starts: int = 4,
    seed: int = 0,
    max_nfev: int = 200,
) -> dict:
    """Fit alpha x(T) + beta ~ x0^2 on [-1, 1] over 1-D NeuralDDEs with K tau <= kappa.

    The affine read-out (alpha, beta) is solved exactly for each candidate (it cannot create
    an extremum); the 4H network parameters are fitted by scipy.optimize.least_squares from
    ``starts`` random starts. Returns a dict with ``kappa``, ``rmse``, ``monotone`` (of the best
    fitted time-T map on a fine grid), ``K_tau`` (of the fitted model), ``theta``, ``x``, ``y``.
    """
    from scipy.optimize import least_squares

    kappa = check_positive("kappa", kappa)
    H = check_int("H", H, minimum=1)
    X = np.linspace(-1.0, 1.0, n_points)
    Y = X**2

    def readout(xT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        M = np.stack([xT, np.ones_like(xT)], axis=1)
        coef = np.linalg.lstsq(M, Y, rcond=None)[0]
        return coef, M @ coef - Y

    def residual(theta: np.ndarray) -> np.ndarray:
        m = constrained_neural_dde(theta, H, kappa, tau)
        try:
            xT = time_map(m, X, T, tau)
        except FloatingPointError:  # also IntegrationError
            return np.full(n_points, 10.0)
        return readout(xT)[1]

    rng = np.random.default_rng(seed)
    best = None
    for _ in range(starts):
        theta0 = rng.normal(size=4 * H)
        res = least_squares(residual, theta0, max_nfev=max_nfev, diff_step=1e-6)
        if best is None or res.cost < best.cost:
            best = res
    m = constrained_neural_dde(best.x, H, kappa, tau)
    Xf = np.linspace(-1.0, 1.0, 201)
    coef, _ = readout(time_map(m, X, T, tau))
    yf = coef[0] * time_map(m, Xf, T, tau) + coef[1]
    return {
        "kappa": kappa,
        "rmse": float(np.sqrt(np.mean(residual(best.x) ** 2))),
        "monotone": is_monotone(yf),
        "K_tau": lipschitz_bound(m) * tau,
        "theta": best.x,
        "x": Xf,
        "y": yf,
    }


def memory_sweep(kappas: Any, **fit_kwargs: Any) -> dict:
    """:func:`fit_square` for each kappa; ``observed_threshold`` is the smallest kappa whose fit
    has an interior extremum (``nan`` if none), beside ``theory_threshold`` = 1/e."""
    ks = as_array("kappas", kappas, ndim=1)
    fits = [fit_square(float(k), **fit_kwargs) for k in ks]
    non_mono = [f["kappa"] for f in fits if not f["monotone"]]
    return {
        "fits": fits,
        "observed_threshold": min(non_mono) if non_mono else math.nan,
        "theory_threshold": THEORY_THRESHOLD,
    }


def memory_demo(
    out: str | None = None,
    *,
    kappas: Any = (0.1, 0.3, 0.6, 1.0, 2.0, 4.0),
    a_tau: Any = None,
    T_max: float = 30.0,
    fit_kwargs: dict | None = None,
) -> dict:
    """Both demonstrations, plotted side by side to ``out`` (PNG/PDF) when given.

    Left: sign of x(T)/x0 for x' = -a x(t - tau) over (a tau, T) with the line a tau = 1/e.
    Right: best fits of x -> x^2 for each kappa = K tau (monotone below the threshold).
    Returns the sign map, the observed linear threshold, the sweep and the theory's value.
    """
    a = np.linspace(0.05, 1.0, 96) if a_tau is None else as_array("a_tau", a_tau, ndim=1)
    T = np.linspace(T_max / 300, T_max, 300)
    signs = linear_sign_map(a, T)
    thr = linear_threshold(max(T_max, 60.0), tol=1e-4)
    sweep = memory_sweep(kappas, **(fit_kwargs or {}))
    result = {
        "a_tau": a,
        "T": T,
        "sign": np.sign(signs),
        "linear_threshold": thr,
        "sweep": sweep,
        "theory_threshold": THEORY_THRESHOLD,
    }
    if out is not None:
        from .plots import plot_memory_capacity

        plot_memory_capacity(result, out)
    return result


def _constrained_parts(theta: np.ndarray, d: int, H: int, kappa: float, tau: float):
    # (W, A, B, b, s): W (d, H), A, B (H, d), b (H,), s = the factor on W for K tau <= kappa
    W = theta[: d * H].reshape(d, H)
    A = theta[d * H : 2 * d * H].reshape(H, d)
    B = theta[2 * d * H : 3 * d * H].reshape(H, d)
    b = theta[3 * d * H :]
    nW, nA, nB = (float(np.linalg.norm(M)) for M in (W, A, B))
    Kt = activation_lipschitz("tanh") * nW * (nA + nB) * tau
    s = kappa / Kt if Kt > kappa else 1.0
    return W, A, B, b, s, (nW, nA, nB)


def fit_extremum_grad(
    kappa: float,
    *,
    dim: int = 1,
    tau: float = 1.0,
    T: float = 6.0,
    H: int = 4,
    n_points: int = 21,
    starts: int = 2,
    steps: int = 100,
    dt: float = 0.1,
    seed: int = 0,
) -> dict:
    """Fit ``alpha·x(T) + beta ≈ ||x0||^2`` on [−1, 1]^dim over neural DDEs with K tau <= kappa,
    by L-BFGS-B on exact gradients (:func:`nndyn_fast.dde_gradients.dde_flow_vjp`).

    The model is ``x' = W tanh(A x + B x(t − tau) + b)`` in dimension ``dim`` (W scaled down
    to meet ``L_σ ||W||_F (||A||_F + ||B||_F) tau <= kappa``, which bounds the K of
    :func:`~nndyn_fast.delay.lipschitz_bound`); the affine readout is the least-squares one
    for each candidate (its gradient enters through the envelope theorem). The inputs are
    ``n_points`` per axis (dim 1) or ``n_points // 4 + 1`` per axis (dim 2). Returns ``kappa``,
    ``dim``, ``rmse`` (on the fit grid), ``K_tau`` of the fitted model, ``monotone`` (dim 1:
    of the fitted time-T map on 201 points; None for dim 2) and ``theta``.
    """
    from scipy.optimize import minimize

    from .dde_gradients import dde_flow_vjp

    kappa = check_positive("kappa", kappa)
    dim = check_int("dim", dim, minimum=1)
    if dim > 2:
        raise ValueError(f"dim must be 1 or 2, got {dim}")
    H = check_int("H", H, minimum=1)
    g1 = np.linspace(-1.0, 1.0, n_points if dim == 1 else n_points // 4 + 1)
    X = g1[:, None] if dim == 1 else np.stack(np.meshgrid(g1, g1), -1).reshape(-1, 2)
    y = np.sum(X**2, axis=1)
    n = X.shape[0]
    d = dim

    def model_of(theta):
        W, A, B, b, s, norms = _constrained_parts(theta, d, H, kappa, tau)
        return NeuralDDE(s * W, A, B, b, activation="tanh", T=T), (W, A, B, s, norms)

    def value_grad(theta):
        m, (W, A, B, s, (nW, nA, nB)) = model_of(theta)
        try:
            ZT = _dde_forward(m, X, T, tau, dt)
        except FloatingPointError:
            return 1e3, np.zeros_like(theta)
        M = np.concatenate([ZT, np.ones((n, 1))], 1)
        coef = np.linalg.lstsq(M, y, rcond=None)[0]
        r = M @ coef - y
        C = r[:, None] * coef[None, :d] / n
        g = dde_flow_vjp(m, X, T, C, delays=tau, dt=dt).params
        GW, GA, GB, Gb = g["W"][0], g["A"][0], g["B"][0, 0], g["b"][0]
        dW, dA, dB = s * GW, GA.copy(), GB.copy()
        if s < 1.0:  # W_eff = s W with s = kappa / (L ||W|| (||A|| + ||B||) tau)
            c = float(np.sum(GW * W)) * s
            dW -= c * W / nW**2
            dA -= c * A / (nA * (nA + nB))
            dB -= c * B / (nB * (nA + nB))
        return 0.5 * float(r @ r) / n, np.concatenate([dW.ravel(), dA.ravel(), dB.ravel(), Gb])

    rng = np.random.default_rng(seed)
    best = None
    for _ in range(starts):
        theta0 = rng.normal(size=3 * d * H + H)
        res = minimize(value_grad, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": steps})  # fmt: skip
        if best is None or res.fun < best.fun:
            best = res
    m, _ = model_of(best.x)
    monotone = None
    if dim == 1:
        Xf = np.linspace(-1.0, 1.0, 201)
        monotone = is_monotone(_dde_forward(m, Xf[:, None], T, tau, dt)[:, 0])
    return {
        "kappa": kappa,
        "dim": dim,
        "rmse": float(np.sqrt(2.0 * best.fun)),
        "K_tau": lipschitz_bound(m) * tau,
        "monotone": monotone,
        "theta": best.x,
    }


def _dde_forward(model, X, T, tau, dt):
    from .dde_gradients import dde_forward

    return dde_forward(model, np.ascontiguousarray(X, dtype=float), T, delays=tau, dt=dt)


def memory_capacity_experiment(kappas: Any, *, dims: Any = (1, 2), **fit_kwargs: Any) -> dict:
    """:func:`fit_extremum_grad` over a grid of kappa = K tau for each dimension: ``rmse``
    (len(dims), len(kappas)) beside ``theory_threshold`` = 1/e (K tau e = 1)."""
    ks = as_array("kappas", kappas, ndim=1)
    dims = [check_int("dims", v, minimum=1) for v in np.atleast_1d(dims)]
    fits = [[fit_extremum_grad(float(k), dim=dm, **fit_kwargs) for k in ks] for dm in dims]
    return {
        "kappa": ks,
        "dims": np.array(dims),
        "rmse": np.array([[f["rmse"] for f in row] for row in fits]),
        "K_tau": np.array([[f["K_tau"] for f in row] for row in fits]),
        "fits": fits,
        "theory_threshold": THEORY_THRESHOLD,
    }


def memory_exponents(
    kappas: Any,
    *,
    tau: float = 1.0,
    H: int = 4,
    seed: int = 0,
    t_end: float = 400.0,
    dt: float | None = None,
    k: int = 2,
) -> dict:
    """Top Lyapunov exponents of a family of 1-D neural DDEs with growing K tau.

    The family x' = W tanh(B x(t - tau)), W = -abs(w), B = abs(beta) (H hidden units, random from
    ``seed``), scaled so that its Lipschitz constant gives K tau = kappa: delayed negative
    feedback whose linearisation at the equilibrium 0 is x' = -c x(t - tau) with
    c = sum_r abs(W_r B_r) <= K. Below the theory's threshold K tau e < 1 the solutions forget their
    history exponentially onto the non-oscillating special solutions: the top two exponents are
    real and distinct, lambda_1 = Re W_0(-c tau)/tau > lambda_2 (the attraction rate); the gap
    lambda_1 - lambda_2 closes (a complex pair, oscillation) once c tau e >= 1, which needs
    K tau e >= 1. Past c tau = pi/2 the equilibrium gives way to a periodic orbit
    (lambda_1 = 0, the flow direction). Computed by
    :func:`~nndyn_fast.dde_lyapunov.dde_lyapunov` from the constant history 0.5.

    Parameters
    ----------
    kappas : (n,) values of K tau > 0.
    tau : the delay.
    H : hidden units.
    t_end, dt : measured duration and step (default tau / 20) of each run.
    k : exponents per model (>= 2 for the gap).

    Returns
    -------
    dict with ``kappa`` (n,), ``K_tau_e`` (n,), ``c_tau`` (n,) (the linearisation's c tau),
    ``exponents`` (n, k), ``stderr`` (n, k), ``gap`` (n,) = lambda_1 - lambda_2,
    ``linear_prediction`` (n,) = Re W_0(-c tau)/tau and ``theory_threshold`` (K tau e = 1).
    """
    from scipy.special import lambertw

    from .dde_lyapunov import dde_lyapunov

    ks = as_array("kappas", kappas, ndim=1)
    if not np.all(ks > 0):
        raise ValueError(f"kappas must all be > 0, got {ks.tolist()}")
    tau = check_positive("tau", tau)
    H = check_int("H", H, minimum=1)
    k = check_int("k", k, minimum=2)
    dt = tau / 20 if dt is None else check_positive("dt", dt)
    rng = np.random.default_rng(seed)
    w = -np.abs(rng.normal(size=(1, H)))
    beta = np.abs(rng.normal(size=(H, 1)))
    K1 = np.linalg.norm(w) * np.linalg.norm(beta)  # lipschitz_bound of the unscaled model
    rows = []
    for kappa in ks:
        W = w * (kappa / (K1 * tau))
        model = NeuralDDE(W, np.zeros((H, 1)), beta, np.zeros(H))
        res = dde_lyapunov(model, [0.5], delays=tau, k=k, t_end=t_end, dt=dt,
                           transient=20.0 * tau)  # fmt: skip
        c = float(np.abs(W[0] * beta[:, 0]).sum())
        rows.append((lipschitz_bound(model) * tau, c * tau, res.exponents, res.stderr))
    lam = np.array([r[2] for r in rows])
    c_tau = np.array([r[1] for r in rows])
    return {
        "kappa": ks,
        "K_tau_e": np.array([r[0] for r in rows]) * math.e,
        "c_tau": c_tau,
        "exponents": lam,
        "stderr": np.array([r[3] for r in rows]),
        "gap": lam[:, 0] - lam[:, 1],
        "linear_prediction": np.array([lambertw(-ct, 0).real / tau for ct in c_tau]),
        "theory_threshold": 1.0,
    }
