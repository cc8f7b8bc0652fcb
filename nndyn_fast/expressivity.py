"""What neural ODE flow maps can and cannot represent: determinants, embeddings, critical points.

- Non-augmented flow maps are diffeomorphisms: ``det DΦ_T(x) = exp(∫_0^T tr Df(x(t)) dt) > 0``
  (Liouville), so in one dimension ``Φ_T`` is strictly increasing (x ↦ −x, x ↦ x² are out of
  reach) and a linear readout of a non-augmented flow has no critical points.
- Universal embedding (Kuehn & Kuntz 2023): lifting ``x ↦ (x, 0) ∈ R^(d+q)``, flowing the shear
  field ``(u, v)' = (0, Ψ(u))`` to ``T = 1`` and reading out ``v`` gives ``v = Ψ(x)`` exactly,
  for any C^k map Ψ: the flow is ``(u, v + t Ψ(u))``.
- Critical points (Kuehn & Kuntz 2024): an MLP whose widths never increase, with full-rank
  weights, has none; a wider hidden layer generally has some, Morse for almost every weight draw.

References
----------
C. Kuehn, S.-V. Kuntz, "Embedding Capabilities of Neural ODEs", arXiv:2308.01213.
C. Kuehn, S.-V. Kuntz, "Analysis of the Geometric Structure of Neural Networks and Neural ODEs
via Morse Functions", arXiv:2405.09351.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from ._validate import (
    as_array,
    check_int,
    check_memory,
    check_nonnegative,
    check_option,
    check_positive,
    check_seed,
    check_size,
)
from .integrate import odeint
from .kernels import neural as _kn
from .kernels.activations import ACTIVATIONS
from .neural import AugmentedNeuralODE, NeuralODE, flow_jacobian

__all__ = [
    "PSI",
    "FeedForward",
    "ShearEmbedding",
    "mlp_as_augmented_ode",
    "liouville_determinant",
    "critical_points",
    "classify",
    "EmbeddingFit",
    "embedding_experiment",
]

# Ψ applied to u_(j mod d) for output j: square u², negate −u, sine sin(πu), cube u³ − u
PSI = {"square": 0, "negate": 1, "sine": 2, "cube": 3}


@njit(cache=True)
def _psi(code, u):
    if code == 0:
        return u * u
    if code == 1:
        return -u
    if code == 2:
        return math.sin(math.pi * u)
    return u * u * u - u


@njit(cache=True)
def shear_field(t, z, args, out):
    """Shear field ``(u, v)' = (0, Ψ(u))`` on R^(d+q); ``args = (psi_code, d)``."""
    code, d = args
    m = z.shape[0]
    for i in range(d):
        out[i] = 0.0
    for j in range(m - d):
        out[d + j] = _psi(code, z[j % d])


@dataclass(frozen=True, eq=False)
class ShearEmbedding:
    """The constructive universal embedding ``x ↦ v(1)`` of ``(u, v)' = (0, Ψ(u))``.

    Parameters
    ----------
    psi : str
        One of :data:`PSI` (``square`` u², ``negate`` −u, ``sine`` sin(πu), ``cube`` u³ − u),
        applied to ``u_(j mod d)`` for output ``j``.
    d : int
        Input dimension.
    q : int
        Output dimension (``m = d + q`` dimensions in all).

    Notes
    -----
    ``__call__(X)`` lifts ``X`` (B, d) to ``(X, 0)``, integrates to ``T = 1`` with ``odeint``
    and reads out ``v`` (B, q); it equals ``Ψ(X)`` to solver accuracy.
    """

    psi: str = "square"
    d: int = 1
    q: int = 1

    def __post_init__(self) -> None:
        check_option("psi", self.psi, PSI)
        object.__setattr__(self, "d", check_int("d", self.d, minimum=1))
        object.__setattr__(self, "q", check_int("q", self.q, minimum=1))

    def target(self, X: Any) -> np.ndarray:
        """The map Ψ itself, (B, d) -> (B, q)."""
        X = as_array("X", X, ndim=2)
        if X.shape[1] != self.d:
            raise ValueError(f"X must have {self.d} columns, got shape {X.shape}")
        check_memory(f"{X.shape[0]} points of q = {self.q} outputs", 16.0 * X.shape[0] * self.q)
        cols = X[:, np.arange(self.q) % self.d]
        return np.vectorize(lambda u: _psi(PSI[self.psi], u))(cols) if cols.size else cols

    def __call__(
        self, X: Any, *, method: str = "dopri5", rtol: float = 1e-10, atol: float = 1e-12
    ) -> np.ndarray:
        X = as_array("X", X, ndim=2)
        if X.shape[1] != self.d:
            raise ValueError(f"X must have {self.d} columns, got shape {X.shape}")
        Z = np.concatenate([X, np.zeros((X.shape[0], self.q))], axis=1)
        sol = odeint(
            shear_field, Z, np.array([0.0, 1.0]), method=method, rtol=rtol, atol=atol,
            args=(np.int64(PSI[self.psi]), np.int64(self.d)),
        )  # fmt: skip
        return sol.y[-1][:, self.d :]


def mlp_as_augmented_ode(W2: Any, A: Any, b: Any, activation: str = "tanh") -> AugmentedNeuralODE:
    """The one-hidden-layer network ``x ↦ W2 σ(A x + b)`` as an augmented neural ODE.

    The shear field ``(u, v)' = (0, W2 σ(A u + b))`` is a :class:`NeuralODE` of the outer form
    on R^(d+q) (weights ``[[0], [W2]]`` and ``[A, 0]``); with readout ``[0, I_q]`` its time-1
    flow map is exactly the network. ``W2`` (q, H), ``A`` (H, d), ``b`` (H,).
    """
    W2 = as_array("W2", W2, ndim=2)
    A = as_array("A", A, ndim=2)
    q, H = W2.shape
    d = A.shape[1]
    W = np.concatenate([np.zeros((d, H)), W2], axis=0)
    Af = np.concatenate([A, np.zeros((A.shape[0], q))], axis=1)
    node = NeuralODE(W, Af, b, activation, T=1.0)
    R = np.concatenate([np.zeros((q, d)), np.eye(q)], axis=1)
    return AugmentedNeuralODE(node, q, R)


def liouville_determinant(
    model: NeuralODE, x0: Any, T: float | None = None, *, n_quad: int = 2001, rtol: float = 1e-10
) -> tuple[float, float]:
    """``(det DΦ_T(x0), exp(∫ tr Df(x(t)) dt))`` for a non-augmented model.

    The first from the variational equation (:func:`flow_jacobian`), the second by Simpson's
    rule on ``n_quad`` (odd) dense-output points of the trajectory with the analytic trace.
    Liouville's formula says they are equal, and both are > 0.
    """
    if not isinstance(model, NeuralODE):
        raise TypeError("liouville_determinant needs a (non-augmented) NeuralODE")
    n_quad = check_int("n_quad", n_quad, minimum=3) | 1
    x0 = as_array("x0", x0, shape=(model.dim,))
    rtol = check_positive("rtol", rtol)
    check_memory(f"n_quad = {n_quad} quadrature points", 16.0 * n_quad * (model.dim + 1))
    t0 = float(model.t_layers[0])
    T = model.T if T is None else check_positive("T", T)
    J = flow_jacobian(model, x0, T, rtol=rtol, atol=rtol * 1e-2)
    # the trace integral, segment by segment between layer switches (smooth inside)
    tl = model.t_layers
    knots = np.unique(np.concatenate([[t0, T], tl[(tl > t0) & (tl < T)]]))
    total = 0.0
    x = x0
    for a, c in zip(knots[:-1], knots[1:], strict=True):
        tq = np.linspace(a, c, n_quad)
        ys = odeint(model, x, tq, rtol=rtol, atol=rtol * 1e-2).y
        mid = 0.5 * (a + c)
        tr = np.array([np.trace(model.jacobian(y, mid)) for y in ys])
        h = (c - a) / (n_quad - 1)
        total += h / 3.0 * (tr[0] + tr[-1] + 4.0 * tr[1:-1:2].sum() + 2.0 * tr[2:-1:2].sum())
        x = ys[-1]
    return float(np.linalg.det(J)), float(np.exp(total))


# --- multilayer perceptrons and critical points -----------------------------------------------


@dataclass(frozen=True, eq=False)
class FeedForward:
    """Multilayer perceptron ``F(x) = W_L σ(… σ(W_1 x + b_1) …) + b_L`` (linear last layer).

    ``weights`` is a sequence of (n_l, n_{l-1}) matrices, ``biases`` of (n_l,) vectors.
    Gradient and Hessian are exact (forward-mode second derivatives).
    """

    weights: Any
    biases: Any
    activation: str = "tanh"
    _code: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_option("activation", self.activation, ACTIVATIONS)
        Ws = [as_array(f"weights[{i}]", w, ndim=2) for i, w in enumerate(self.weights)]
        bs = [as_array(f"biases[{i}]", b, ndim=1) for i, b in enumerate(self.biases)]
        if not Ws or len(Ws) != len(bs):
            raise ValueError("weights and biases must be non-empty sequences of equal length")
        for i, (w, b) in enumerate(zip(Ws, bs, strict=True)):
            if b.shape[0] != w.shape[0] or (i and w.shape[1] != Ws[i - 1].shape[0]):
                raise ValueError(f"layer {i}: weight {w.shape} and bias {b.shape} do not chain")
        object.__setattr__(self, "weights", tuple(Ws))
        object.__setattr__(self, "biases", tuple(bs))
        object.__setattr__(self, "_code", int(ACTIVATIONS[self.activation]))

    @classmethod
    def random(cls, sizes: Any, activation: str = "tanh", *, scale: float = 1.0, seed: int = 0):
        """Gaussian weights of variance ``scale² / fan_in``, biases ``N(0, 0.5²)``."""
        rng = np.random.default_rng(check_seed("seed", seed))
        if isinstance(sizes, (str, bytes)) or np.ndim(sizes) != 1 or len(sizes) < 2:
            raise ValueError(f"sizes must be a sequence of at least 2 layer widths, got {sizes!r}")
        sizes = [check_int("sizes", s, minimum=1) for s in sizes]
        scale = check_positive("scale", scale)
        n_par = sum(o * (i + 1) for i, o in zip(sizes[:-1], sizes[1:], strict=True))
        check_memory(f"a network of sizes {sizes} ({n_par} parameters)", 16.0 * n_par)
        Ws = [
            rng.standard_normal((o, i)) * scale / np.sqrt(i)
            for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        bs = [0.5 * rng.standard_normal(o) for o in sizes[1:]]
        return cls(Ws, bs, activation)

    @property
    def sizes(self) -> list[int]:
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]

    def _derivs(self, z: np.ndarray):
        s, ds, d2s = np.empty_like(z), np.empty_like(z), np.empty_like(z)
        _kn.act_derivs(self._code, np.ascontiguousarray(z), s, ds, d2s)
        return s, ds, d2s

    def value_grad_hess(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``F(x)`` (p,), Jacobian (p, n) and Hessian (p, n, n) at one input x (n,)."""
        h = as_array("x", x, shape=(self.sizes[0],))
        n = h.shape[0]
        J = np.eye(n)
        Hs = np.zeros((n, n, n))
        L = len(self.weights)
        for i, (W, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = W @ h + b
            Jz = W @ J
            Hz = np.tensordot(W, Hs, axes=1)
            if i == L - 1:
                return z, Jz, Hz
            s, ds, d2s = self._derivs(z)
            h = s
            J = ds[:, None] * Jz
            Hs = d2s[:, None, None] * Jz[:, :, None] * Jz[:, None, :] + ds[:, None, None] * Hz
        raise AssertionError("unreachable")  # pragma: no cover

    def __call__(self, X: Any) -> np.ndarray:
        X = as_array("X", X, ndim=(1, 2))
        H = X.T
        for i, (W, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            H = W @ H + b[:, None] if H.ndim == 2 else W @ H + b
            if i < len(self.weights) - 1:
                H = self._derivs(H.ravel())[0].reshape(H.shape)
        return H.T


def _scalar_model(model: Any):
    """Return (n, grad(x), hess(x)) for a scalar-output model."""
    if isinstance(model, FeedForward):
        if model.sizes[-1] != 1:
            raise ValueError(f"critical points need a scalar output, got sizes {model.sizes}")

        def grad(x):
            return model.value_grad_hess(x)[1][0]

        def hess(x):
            return model.value_grad_hess(x)[2][0]

        return model.sizes[0], grad, hess
    if isinstance(model, (NeuralODE, AugmentedNeuralODE)):
        if isinstance(model, AugmentedNeuralODE):
            if model.readout.shape[0] != 1:
                raise ValueError("critical points need a scalar readout (p = 1)")
            n = model.n_in
            r = None
        else:
            n = model.dim
            r = np.ones(n) / np.sqrt(n)  # the readout r·Φ_T(x) of a non-augmented model

        def grad(x):
            J = flow_jacobian(model, x, rtol=1e-10, atol=1e-12)
            return J[0] if r is None else r @ J

        def hess(x, eps=1e-5):
            # central differences of the exact gradient (error O(eps²) + solver error / eps)
            H = np.stack([(grad(x + eps * e) - grad(x - eps * e)) / (2 * eps) for e in np.eye(n)])
            return 0.5 * (H + H.T)

        return n, grad, hess
    raise TypeError(
        f"model must be a FeedForward, NeuralODE or AugmentedNeuralODE, got {type(model).__name__}"
    )


def critical_points(
    model: Any,
    box: Any,
    *,
    n_starts: int = 64,
    seed: int = 0,
    tol: float = 1e-8,
    merge: float = 1e-4,
) -> dict[str, Any]:
    """Critical points ``∇F(x) = 0`` of a scalar-output model inside ``box``, classified.

    ``n_starts`` points drawn uniformly in ``box`` ((n, 2) rows of [low, high]) start a
    bounded least-squares minimisation of ``‖∇F‖²`` (``scipy.optimize.least_squares`` with the
    Hessian as Jacobian). Ends with ``‖∇F‖ < tol`` are critical points; points closer than
    ``merge`` are merged. Each is classified by the Hessian's eigenvalues: Morse index = number
    of negative eigenvalues, degenerate when ``min |λ| < sqrt(tol)``.

    For a non-augmented :class:`NeuralODE` the scalar output is ``r·Φ_T(x)`` with
    ``r = (1, …, 1)/sqrt(d)``; an :class:`AugmentedNeuralODE` needs a (1, m) readout. Neural ODE
    gradients come from the variational equation and Hessians from central differences of them.

    Limits: a multistart search finds critical points, it cannot prove there are none — an
    empty result means none was found from ``n_starts`` starts inside the box; points on the
    box boundary are not reported.

    Returns
    -------
    dict with ``points`` (k, n), ``values`` (k,) Hessian eigenvalues (k, n) as ``eigenvalues``,
    ``index`` (k,), ``degenerate`` (k,) bool, ``min_grad_norm`` (smallest ‖∇F‖ seen at any end).
    """
    from scipy.optimize import least_squares

    n, grad, hess = _scalar_model(model)
    box = as_array("box", box, shape=(n, 2))
    if not np.all(box[:, 1] > box[:, 0]):
        raise ValueError("box rows must be [low, high] with high > low")
    n_starts = check_size("n_starts", n_starts, item_bytes=8 * n)
    tol = check_positive("tol", tol)
    merge = check_nonnegative("merge", merge)
    rng = np.random.default_rng(check_seed("seed", seed))
    starts = box[:, 0] + (box[:, 1] - box[:, 0]) * rng.random((n_starts, n))
    found: list[np.ndarray] = []
    best = np.inf
    for x0 in starts:
        res = least_squares(
            grad, x0, jac=hess, bounds=(box[:, 0], box[:, 1]), xtol=1e-14, ftol=1e-14, gtol=1e-14
        )
        g = float(np.linalg.norm(grad(res.x)))
        best = min(best, g)
        inside = np.all(res.x > box[:, 0] + 1e-9) and np.all(res.x < box[:, 1] - 1e-9)
        if g < tol and inside and all(np.linalg.norm(res.x - p) > merge for p in found):
            found.append(res.x.copy())
    pts = np.array(found).reshape(-1, n)
    eig = np.array([np.linalg.eigvalsh(hess(p)) for p in pts]).reshape(-1, n)
    return {
        "points": pts,
        "eigenvalues": eig,
        "index": (eig < 0).sum(axis=1),
        "degenerate": np.abs(eig).min(axis=1) < np.sqrt(tol) if len(pts) else np.zeros(0, bool),
        "min_grad_norm": best,
    }


def _theory(model: Any) -> str:
    if isinstance(model, FeedForward):
        s = model.sizes
        full = all(np.linalg.matrix_rank(w) == min(w.shape) for w in model.weights)
        if all(a >= b for a, b in zip(s[:-1], s[1:], strict=True)) and full:
            return "none (non-increasing widths, full-rank weights)"
        return "possible (a hidden layer is wider than the input)"
    if isinstance(model, NeuralODE):
        return "none (the flow map is a diffeomorphism)"
    return "possible (augmented)"


def classify(models: Any, box: Any, *, n_starts: int = 32, seed: int = 0) -> list[dict]:
    """Critical-point verdicts for several models side by side.

    ``models`` maps names to :class:`FeedForward`, :class:`NeuralODE` or
    :class:`AugmentedNeuralODE` objects (scalar output). Each entry of the result holds
    ``name``, ``theory`` (what the theorems predict), ``n_critical``, ``morse`` (all found points
    non-degenerate), ``indices`` and the full :func:`critical_points` report as ``report``.
    """
    if not isinstance(models, dict):
        raise ValueError("models must be a dict {name: model}")
    out = []
    for name, m in models.items():
        rep = critical_points(m, box, n_starts=n_starts, seed=seed)
        out.append(
            {
                "name": name,
                "theory": _theory(m),
                "n_critical": len(rep["points"]),
                "morse": bool(not rep["degenerate"].any()),
                "indices": rep["index"].tolist(),
                "report": rep,
            }
        )
    return out


@dataclass(frozen=True)
class EmbeddingFit:
    """Result of :func:`embedding_experiment`: sup-errors on the grid ``x`` of the fitted 1-D neural
    ODE (with its best affine readout) and of the fitted augmented one, beside the best
    monotone sup-error 1/2, and the trained models."""

    x: np.ndarray
    sup_plain: float
    sup_augmented: float
    best_monotone: float
    plain: Any
    augmented: Any
    plain_readout: tuple


def embedding_experiment(
    *,
    n_points: int = 41,
    hidden: int = 8,
    steps: int = 300,
    solver_steps: int = 10,
    seed: int = 0,
) -> EmbeddingFit:
    """Fit x ↦ x² on [−1, 1] by a 1-D neural ODE and by an augmented one (m = 2).

    Both are trained by :func:`nndyn_fast.fit.fit` (L-BFGS on the exact gradient of the RK4
    map with ``solver_steps`` steps) on ``n_points`` equispaced points; the sup-errors are
    those of the fitted models' flows (dopri5, rtol 1e-10) on 201 points of [−1, 1]. The 1-D
    flow map is increasing, so any affine readout ``a Φ(x) + c`` is monotone and its sup-error
    on a grid holding −1, 0, 1 is at least 1/2 (the best monotone fit: the constant 1/2); the
    readout used is the least-squares one for the fitted Φ. The augmented model ``R Φ((x, 0))``
    (R (1, 2) trained) is not bound by this and fits the square closely.
    """
    from .fit import fit
    from .neural import flow_map

    n_points = check_int("n_points", n_points, minimum=3)
    if n_points % 2 == 0:
        raise ValueError(f"n_points must be odd (the grid must hold 0), got {n_points}")
    hidden = check_int("hidden", hidden, minimum=1)
    x = np.linspace(-1.0, 1.0, n_points)[:, None]
    y = x**2
    solver_steps = check_int("solver_steps", solver_steps, minimum=1)
    plain = fit(NeuralODE.random(1, hidden, seed=seed), x, y, steps=steps,
                solver_steps=solver_steps).model  # fmt: skip
    # the statements are about the flows: each fitted model is evaluated by dopri5 at tight
    # tolerance (a coarse RK4 map of a stiff fitted field need not be monotone, and a fit
    # can exploit that)
    exact = {"method": "dopri5", "rtol": 1e-10, "atol": 1e-12}
    xe = np.linspace(-1.0, 1.0, 201)[:, None]  # the sup-errors on a fine grid holding -1, 0, 1
    phi = flow_map(plain, x, **exact)[:, 0]
    a, c = np.linalg.lstsq(np.stack([phi, np.ones_like(phi)], 1), y[:, 0], rcond=None)[0]
    sup_plain = float(np.abs(a * flow_map(plain, xe, **exact)[:, 0] + c - xe[:, 0] ** 2).max())
    aug0 = AugmentedNeuralODE(NeuralODE.random(2, hidden, seed=seed), 1, np.array([[0.0, 1.0]]))
    aug = fit(aug0, x, y, steps=steps, solver_steps=solver_steps).model
    sup_aug = float(np.abs(flow_map(aug, xe, **exact) - xe**2).max())
    return EmbeddingFit(xe[:, 0], sup_plain, sup_aug, 0.5, plain, aug, (float(a), float(c)))
