"""Symmetric eigen-solvers on matrix-free operators: Lanczos, power iteration, and stochastic
Lanczos quadrature (SLQ) for spectral densities.

Every solver takes the operator as a product v ↦ H v (a dense array, a ``scipy``
``LinearOperator`` or a plain callable, see :func:`top_eigenpairs`), so the same code serves
loss Hessians (exact Hessian-vector products, :mod:`nndyn_fast.training`), Gauss–Newton
matrices and the second-moment operators of linearised SGD (:mod:`nndyn_fast.lyapunov`).

- **Lanczos** builds an orthonormal basis Q_m = [q_1, ..., q_m] of the Krylov space
  K_m(H, q_1) = span{q_1, H q_1, ..., H^{m−1} q_1} in which H is tridiagonal,
  T_m = Q_mᵀ H Q_m (diagonal α_j, off-diagonal β_j). Its eigenpairs (θ_i, s_i) give the Ritz
  pairs (θ_i, Q_m s_i) that approximate the extreme eigenpairs of H; full
  reorthogonalisation keeps Q_m orthonormal in floating point.
- **Power iteration** v ← H v / ||H v|| with deflation against the pairs already found.
- **SLQ** reads the Lanczos weights τ_j = (s_j)_1² and nodes θ_j as the Gauss quadrature of
  the spectral measure of q_1, so zᵀ f(H) z ≈ ||z||² Σ_j τ_j f(θ_j).

References
----------
C. Lanczos, "An iteration method for the solution of the eigenvalue problem of linear
differential and integral operators", J. Res. Nat. Bur. Standards 45 (1950).
B. N. Parlett, "The symmetric eigenvalue problem", SIAM (1998), chapters 11-13.
G. H. Golub, G. Meurant, "Matrices, moments and quadrature with applications" (2010).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import as_array, check_int, check_option, check_positive
from .threads import for_work

__all__ = ["METHODS", "Eigenpairs", "SpectrumDensity", "gd_threshold", "top_eigenpairs"]

METHODS = ("lanczos", "power")


@dataclass(frozen=True)
class Eigenpairs:
    """Result of :func:`top_eigenpairs` (and :func:`nndyn_fast.training.sharpness`): the top-k
    eigenpairs H u_i = λ_i u_i of a symmetric operator H.

    Attributes
    ----------
    eigenvalues : array (k,), in decreasing order (eigenvalues[0] is the sharpness λ_max);
        in increasing order for ``which="smallest"``.
    eigenvectors : array (P, k), orthonormal columns u_i.
    n_hvp : number of operator products used.
    converged : whether every pair met the tolerance.
    method : "lanczos" or "power".
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    n_hvp: int
    converged: bool
    method: str

    @property
    def sharpness(self) -> float:
        """λ_max, the largest eigenvalue."""
        return float(self.eigenvalues[0])


# Serial seconds per multiply-add of a BLAS matrix-vector product (measured on one thread:
# a (40, 20000) basis times a vector and back, 1.2e-10), and the basis size assumed for the
# thread choice of the Lanczos products (they are memory-bound: at this size they run best
# on one thread, and threads only wake for a dense operator much larger than the basis).
_SECONDS_PER_GEMV_MADD = 1.2e-10
_TYPICAL_BASIS = 100


def _blas_seconds(P: int, A: Any, m: int) -> float:
    """Serial seconds of the largest BLAS call of an eigensolver run: the dense operator's
    product (P x P), or the basis (m x P) times a vector."""
    rows = max(m, P if A is not None else 0)
    return _SECONDS_PER_GEMV_MADD * rows * P


def _check_k(k: Any, P: int) -> int:
    k = check_int("k", k, minimum=1)
    if k > P:
        raise ValueError(f"k must be <= the number of parameters P = {P}, got {k}")
    return k


# -- Lanczos ------------------------------------------------------------------------------------
def _lanczos_basis(
    matvec: Callable[[np.ndarray], np.ndarray],
    q0: np.ndarray,
    m_max: int,
    stop: Callable[[np.ndarray, np.ndarray], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, bool]:
    """Lanczos tridiagonalisation T = Qᵀ H Q with full reorthogonalisation.

    The three-term recurrence β_j q_{j+1} = H q_j − α_j q_j − β_{j−1} q_{j−1},
    α_j = q_jᵀ H q_j, from q_1 = q0/||q0||, with the new vector reorthogonalised twice against
    every earlier q (Kahan–Parlett: twice is enough).

    Runs at most ``m_max`` steps. After step m, ``stop(alpha[:m], beta[:m])`` (if given) may
    end the iteration by returning True; β_m is the norm of the next residual. An invariant
    Krylov subspace (β_m ≤ 1e-13 ||T||) also ends it: the Ritz values are then eigenvalues of
    H. Returns ``(Q (m, P), alpha (m,), beta (m,), n_matvec, ended)`` where ``ended`` says
    whether ``stop`` or an invariant subspace ended the iteration.
    """
    P = q0.shape[0]
    Q = np.empty((m_max + 1, P))
    alpha = np.zeros(m_max)
    beta = np.zeros(m_max)
    Q[0] = q0 / np.linalg.norm(q0)
    tnorm = np.finfo(float).tiny
    m = 0
    ended = False
    for j in range(m_max):
        w = matvec(Q[j])
        alpha[j] = Q[j] @ w
        w = w - alpha[j] * Q[j] - (beta[j - 1] * Q[j - 1] if j > 0 else 0.0)
        for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan–Parlett)
            w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        beta[j] = np.linalg.norm(w)
        m = j + 1
        # Gershgorin bound on ||T||: rows of T hold beta[j-1], alpha[j], beta[j]
        tnorm = max(tnorm, abs(alpha[j]) + beta[j] + (beta[j - 1] if j > 0 else 0.0))
        if beta[j] <= 1e-13 * tnorm or (stop is not None and stop(alpha[:m], beta[:m])):
            ended = True
            break
        Q[j + 1] = w / beta[j]
    return Q[:m], alpha[:m], beta[:m], m, ended


def _ritz(alpha: np.ndarray, beta: np.ndarray, k: int, largest: bool):
    """All Ritz values θ of T (tridiagonal: diagonal α, off-diagonal β[:-1]), their
    eigenvectors S (m, m) in T, and the indices of the k largest (smallest) of them."""
    from scipy.linalg import eigh_tridiagonal

    theta, S = eigh_tridiagonal(alpha, beta[:-1])
    order = np.argsort(theta)[::-1] if largest else np.argsort(theta)
    return theta, S, order[:k]


def _lanczos(matvec, P: int, k: int, tol: float, maxiter: int, v0: np.ndarray, largest: bool):
    """Lanczos with full reorthogonalisation for the k largest (or smallest) eigenpairs.

    A pair (θ, y) is accepted when its error estimate min(r, r²/gap) ≤ tol·abs(θ), r = β_m abs(s_m)
    the residual norm ||Hy − θy|| of the Ritz pair and gap the distance to the nearest other
    Ritz value (the a-posteriori bound abs(θ − λ) ≤ r²/gap). An invariant subspace (β ≈ 0) ends
    the iteration with exact pairs. Returns ``(values (k,), vectors (P, k), n_matvec,
    converged)``.
    """
    tiny = np.finfo(float).tiny

    def converged(alpha: np.ndarray, beta: np.ndarray) -> bool:
        m = alpha.shape[0]
        if m < k:
            return False
        theta, S, sel = _ritz(alpha, beta, k, largest)
        res = beta[-1] * np.abs(S[-1, sel])
        err = res
        if m > 1:
            gaps = np.array([np.min(np.abs(np.delete(theta, s) - theta[s])) for s in sel])
            err = np.minimum(res, res**2 / np.maximum(gaps, tiny))
        return bool(np.all(err <= tol * np.maximum(np.abs(theta[sel]), tiny)))

    Q, alpha, beta, n_mv, ended = _lanczos_basis(matvec, v0, min(maxiter, P), converged)
    if alpha.shape[0] < k:
        raise ValueError(
            f"v0 lies in an invariant subspace of dimension {alpha.shape[0]} < k = {k}; "
            "start from another vector"
        )
    theta, S, sel = _ritz(alpha, beta, k, largest)
    return theta[sel], Q.T @ S[:, sel], n_mv, ended


# -- power iteration ----------------------------------------------------------------------------
def _power(matvec, P: int, k: int, tol: float, maxiter: int, v0: np.ndarray):
    """Power iteration with deflation for the k largest eigenpairs.

    Each pair iterates v ← (H + σI) v / ||·|| orthogonal to the pairs already found, until the
    Rayleigh quotient changes by less than tol·abs(λ). σ = 0 first; if the dominant eigenvalue of
    the deflated operator is negative the pair is recomputed with σ = abs(λ) so that the largest
    algebraic eigenvalue dominates. Returns ``(values (k,), vectors (P, k), n_matvec,
    converged)``.
    """
    rng = np.random.default_rng(0)
    vals, vecs = [], []
    n_mv = 0
    all_conv = True
    for i in range(k):
        shift = 0.0
        for _attempt in range(2):
            v = v0.copy() if i == 0 else rng.standard_normal(P)
            U = np.array(vecs).T if vecs else np.zeros((P, 0))
            v -= U @ (U.T @ v)
            v /= np.linalg.norm(v)
            lam_prev = np.inf
            lam = 0.0
            conv = False
            for _ in range(maxiter):
                w = matvec(v) + shift * v
                n_mv += 1
                w -= U @ (U.T @ w)
                lam = v @ w
                nw = np.linalg.norm(w)
                if nw == 0.0:
                    conv = True
                    break
                v = w / nw
                if abs(lam - lam_prev) <= tol * abs(lam):
                    conv = True
                    break
                lam_prev = lam
            lam -= shift
            if lam >= 0.0 or shift > 0.0:
                break
            shift = abs(lam)
        all_conv &= conv
        vals.append(lam)
        vecs.append(v)
    order = np.argsort(vals)[::-1]
    return np.array(vals)[order], np.array(vecs).T[:, order], n_mv, all_conv


# -- the operator -------------------------------------------------------------------------------
def _as_operator(H: Any, P: int | None, needs: str):
    """``(matvec, P, A)`` for H given as an array (A, the dense matrix), a LinearOperator or a
    plain callable v -> H v (A None); a callable takes its size P from ``needs``."""
    if isinstance(H, (np.ndarray, list, tuple)):
        A = as_array("H", H, ndim=2)
        if A.shape[0] != A.shape[1] or A.shape[0] == 0:
            raise ValueError(f"H must be a non-empty square matrix, got shape {A.shape}")
        return A.__matmul__, A.shape[0], A
    if hasattr(H, "matvec") and hasattr(H, "shape"):
        return H.matvec, H.shape[0], None
    if callable(H):
        if P is None:
            raise ValueError(f"a plain callable H needs {needs}")
        return H, P, None
    raise TypeError(f"H must be an array, LinearOperator or callable, got {type(H).__name__}")


def top_eigenpairs(
    op: Any,
    *,
    k: int = 1,
    method: str = "lanczos",
    tol: float = 1e-8,
    maxiter: int | None = None,
    v0: Any = None,
    seed: int = 0,
    which: str = "largest",
) -> Eigenpairs:
    """Top-k eigenpairs H u_i = λ_i u_i of a symmetric operator H, λ_1 ≥ λ_2 ≥ ... ≥ λ_k.

    ``"lanczos"``: m steps of the Lanczos recurrence from q_1 = v0/||v0||,

        β_j q_{j+1} = H q_j − α_j q_j − β_{j−1} q_{j−1},   α_j = q_jᵀ H q_j,

    with full reorthogonalisation give T_m = Q_mᵀ H Q_m = tridiag(β, α, β); its eigenpairs
    T_m s = θ s give the Ritz pairs (θ, Q_m s). A pair is accepted once
    min(r, r²/gap) ≤ tol·abs(θ), where r = ||H y − θ y|| = β_m abs(s_m) and gap is the distance to
    the next Ritz value (abs(θ − λ) ≤ r²/gap, Kato–Temple); the iteration also ends on an
    invariant subspace (β_m ≈ 0, exact pairs) or after ``maxiter`` products.

    ``"power"``: v ← H v / ||H v|| orthogonal to the pairs already found, until the Rayleigh
    quotient λ = vᵀ H v changes by less than tol·abs(λ); a pair whose dominant eigenvalue is
    negative is recomputed on H + abs(λ) I so that the largest algebraic eigenvalue is found.

    Parameters
    ----------
    op : array (P, P), ``scipy.sparse.linalg.LinearOperator`` or callable v -> H v
        The symmetric operator H. With a callable, ``v0`` fixes P.
    k : int
        Number of eigenpairs, 1 <= k <= P.
    method : "lanczos" (full reorthogonalisation) or "power" (deflation)
    tol : float
        Relative accuracy of the eigenvalues (> 0).
    maxiter : int, optional
        Most operator products per run (default: P for Lanczos, 10000 per pair for power).
    v0 : array (P,), optional
        Starting vector, nonzero (default ``np.random.default_rng(seed).standard_normal(P)``).
    seed : int
        Seed of the default starting vector (>= 0).
    which : "largest" or "smallest"
        The end of the spectrum (``"smallest"`` needs Lanczos; its eigenvalues come in
        increasing order).

    Returns
    -------
    Eigenpairs
        ``eigenvalues`` (k,), ``eigenvectors`` (P, k), ``n_hvp``, ``converged``, ``method``.

    Raises
    ------
    ValueError
        Unknown method or which, tol <= 0, k > P, a non-square array, a callable without
        ``v0``, a zero ``v0`` or one of the wrong length, ``which="smallest"`` with power.
    TypeError
        ``op`` is neither an array, a LinearOperator nor a callable.

    References
    ----------
    B. N. Parlett, "The symmetric eigenvalue problem", SIAM (1998), chapters 11-13.
    Y. Saad, "Numerical methods for large eigenvalue problems", SIAM (2011), chapter 6.
    """
    check_option("method", method, METHODS)
    check_option("which", which, ("largest", "smallest"))
    tol = check_positive("tol", tol)
    P_v0 = None if v0 is None else as_array("v0", v0, ndim=1).shape[0]
    matvec, P, A = _as_operator(op, P_v0, "v0 (its length fixes P)")
    k = _check_k(k, P)
    if v0 is None:
        v0 = np.random.default_rng(check_int("seed", seed, minimum=0)).standard_normal(P)
    else:
        v0 = as_array("v0", v0, shape=(P,)).copy()
        if not np.any(v0):
            raise ValueError("v0 must be a nonzero vector")
    if method == "lanczos":
        maxiter = P if maxiter is None else check_int("maxiter", maxiter, minimum=k)
        with for_work(None, blas=_blas_seconds(P, A, min(maxiter, _TYPICAL_BASIS))):
            vals, vecs, n, conv = _lanczos(matvec, P, k, tol, maxiter, v0, which == "largest")
    else:
        if which != "largest":
            raise ValueError("which='smallest' needs method='lanczos'")
        maxiter = 10000 if maxiter is None else check_int("maxiter", maxiter, minimum=1)
        with for_work(None, blas=_blas_seconds(P, A, k)):
            vals, vecs, n, conv = _power(matvec, P, k, tol, maxiter, v0)
    return Eigenpairs(np.asarray(vals), np.asarray(vecs), int(n), bool(conv), method)


# -- stochastic Lanczos quadrature ----------------------------------------------------------------
@dataclass(frozen=True)
class SpectrumDensity:
    """Result of :func:`nndyn_fast.training.hessian_spectrum_density`: the spectral density
    φ(x) = (1/P) Σ_i δ(x − λ_i) of a symmetric operator by stochastic Lanczos quadrature,
    broadened by a Gaussian of width σ.

    Attributes
    ----------
    grid : array (G,), the points x where the density is evaluated.
    density : array (G,), the broadened spectral density φ_σ(x) (integrates to 1 over ℝ).
    nodes : array (n_probes, m), Gauss quadrature nodes (Ritz values) of each probe.
    weights : array (n_probes, m)
        Array (n_probes, m), their weights (each row sums to 1; entries past a probe's
        Krylov dimension are padding with node 0 and weight 0).
    sigma : the Gaussian broadening width σ.
    n_hvp : number of operator products used.

    ``grid, density = result`` unpacks the density.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    n_hvp: int

    def __iter__(self):
        return iter((self.grid, self.density))

    def probe_moments(self, k: int) -> np.ndarray:
        """Per-probe quadrature estimates Σ_j w_j θ_j^k of zᵀH^k z / P, shape (n_probes,)."""
        k = check_int("k", k, minimum=0)
        return np.sum(self.weights * self.nodes**k, axis=1)

    def moment(self, k: int) -> float:
        """The SLQ estimate of the spectral moment tr(H^k)/P (mean over the probes)."""
        return float(np.mean(self.probe_moments(k)))


def _slq(
    matvec: Callable[[np.ndarray], np.ndarray],
    probes: np.ndarray,
    m_max: int,
    grid: np.ndarray | None,
    sigma: float | None,
) -> SpectrumDensity:
    """Stochastic Lanczos quadrature from the rows of ``probes`` (n_probes, P), ``m_max`` ≤ P
    Lanczos steps each (inputs already validated).

    Probe z gives T_m = S diag(θ_j) Sᵀ and the Gauss nodes θ_j with weights τ_j = S_{1j}²;
    the density is φ_σ(x) = (1/n_probes) Σ_probes Σ_j τ_j exp(−(x − θ_j)²/(2σ²)) / (σ√(2π)).
    ``sigma`` None: 1% of the node range (of max(abs(node), 1) when all nodes coincide); ``grid``
    None: 1000 points spanning the nodes ± 6σ.
    """
    n_probes = probes.shape[0]
    nodes = np.zeros((n_probes, m_max))
    weights = np.zeros((n_probes, m_max))
    n_hvp = 0
    for i in range(n_probes):
        _, alpha, beta, n_mv, _ = _lanczos_basis(matvec, probes[i], m_max)
        theta_i, S, _ = _ritz(alpha, beta, n_mv, True)
        nodes[i, :n_mv] = theta_i
        weights[i, :n_mv] = S[0] ** 2
        n_hvp += n_mv
    used = weights > 0
    lo, hi = float(nodes[used].min()), float(nodes[used].max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 0.01 * max(abs(hi), 1.0)
    if grid is None:
        if not np.isfinite(hi - lo + 12.0 * sigma):
            raise ValueError(f"sigma = {sigma:g} is too large for the default grid; pass grid")
        grid = np.linspace(lo - 6.0 * sigma, hi + 6.0 * sigma, 1000)
    density = np.zeros(grid.shape[0])
    c = 1.0 / (n_probes * sigma * np.sqrt(2.0 * np.pi))
    for i in range(n_probes):  # one probe at a time keeps the work array at (G, m)
        u = (grid[:, None] - nodes[i][None, :]) / sigma
        density += c * (np.exp(-0.5 * u * u) @ weights[i])
    return SpectrumDensity(grid, density, nodes, weights, float(sigma), n_hvp)


def gd_threshold(lam_max: float) -> float:
    """The gradient-descent stability threshold η* = 2/λ_max.

    Along an eigenvector of H with eigenvalue λ > 0 the linearised step multiplies the error
    by 1 − ηλ, which has modulus < 1 iff η < 2/λ; so a minimum whose largest Hessian
    eigenvalue is λ_max is linearly stable under GD with step η iff η < 2/λ_max (with every
    other eigenvalue >= 0). The relation ηλ = 2 is symmetric: ``gd_threshold(lr)`` is the
    sharpness 2/η above which a step η is unstable (the level the sharpness settles at on the
    edge of stability).

    Parameters
    ----------
    lam_max : float
        The largest eigenvalue λ_max of the Hessian (or, read the other way, the step η).

    Returns
    -------
    float
        2/λ_max, or ``inf`` when λ_max <= 0 (no positive curvature: no step is unstable along
        it).

    Raises
    ------
    ValueError
        ``lam_max`` is not a real number (NaN included).
    """
    try:
        lam = float(lam_max)
    except (TypeError, ValueError):
        raise ValueError(f"lam_max must be a real number, got {lam_max!r}") from None
    if lam != lam:
        raise ValueError(f"lam_max must be a real number, got {lam_max!r}")
    return 2.0 / lam if lam > 0 else np.inf
