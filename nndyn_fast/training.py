"""Training as a dynamical system: MLPs on flat parameter vectors, exact Hessian-vector
products, sharpness, linear stability of gradient descent, and streamed GD/SGD runs.

Gradient descent θ_{k+1} = θ_k − η ∇L(θ_k) linearised at a minimum θ* is
δ_{k+1} = (I − η H) δ_k with H = ∇²L(θ*); the minimum is linearly stable when the spectral
radius of I − ηH on the relevant subspace is below one (η < 2/λ_max(H) for an isolated minimum;
the same on the normal space of a manifold of minima, whose tangent directions carry zero
eigenvalues). Full-batch GD at fixed η typically sharpens progressively until λ_max ≈ 2/η and
then hovers there while the loss keeps decreasing non-monotonically (the edge of stability,
Cohen et al. 2021).

All derivatives are exact and computed in the Numba kernels of :mod:`nndyn_fast.kernels.mlp`:
backpropagation for ∇L, Pearlmutter's R-operator for H v, parallel over data points.

References
----------
B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6 (1994).
J. Cohen, S. Kaur, Y. Li, J. Z. Kolter, A. Talwalkar, "Gradient descent on neural networks
typically occurs at the edge of stability", ICLR 2021.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import as_array, check_bool, check_int, check_memory, check_option
from .kernels import mlp as km
from .kernels.activations import ACTIVATIONS

__all__ = [
    "MLP",
    "LOSSES",
    "METHODS",
    "Eigenpairs",
    "GDRun",
    "GDStability",
    "forward",
    "loss",
    "loss_and_grad",
    "grad",
    "hvp",
    "gauss_newton_vp",
    "per_sample_gradients",
    "hessian_operator",
    "top_eigenpairs",
    "sharpness",
    "SpectrumDensity",
    "hessian_spectrum_density",
    "gd_stability",
    "gradient_descent",
    "eos_dataset",
    "eos_experiment",
    "eos_summary",
    "plot_eos",
]

LOSSES = {"mse": km.MSE, "cross_entropy": km.XENT}
_EMPTY_I = np.zeros(0, np.int64)


@dataclass(frozen=True)
class MLP:
    """A fully connected network f(x; θ) on a flat parameter vector θ.

    a_0 = x, z_l = W_l a_{l-1} + b_l, a_l = σ(z_l) on hidden layers, f = z_L (linear output).
    θ stores, layer by layer, W_l (row-major, shape (d_l, d_{l-1})) then b_l.

    Parameters
    ----------
    sizes : tuple of int
        Layer widths (d_0, d_1, ..., d_L): input dimension, hidden widths, output dimension;
        at least two entries, all >= 1.
    activation : str
        Hidden-layer activation, one of ``ACTIVATIONS`` (tanh, relu, gelu, softplus, sigmoid,
        identity).
    loss : str
        ``"mse"``: L = (1/n) Σ_i ½ ||f(x_i) − y_i||²;
        ``"cross_entropy"``: L = (1/n) Σ_i −Σ_k y_ik log softmax(f(x_i))_k (rows of Y are
        one-hot labels or probabilities).

    Raises
    ------
    ValueError
        If sizes has fewer than two entries or a width < 1, or an option is unknown.
    """

    sizes: tuple[int, ...]
    activation: str = "tanh"
    loss: str = "mse"

    def __post_init__(self) -> None:
        try:
            sizes = tuple(self.sizes)
        except TypeError:
            raise ValueError(f"sizes must be a tuple of ints, got {self.sizes!r}") from None
        if len(sizes) < 2:
            raise ValueError(f"sizes must hold at least 2 layer widths, got {sizes!r}")
        sizes = tuple(check_int(f"sizes[{i}]", s, minimum=1) for i, s in enumerate(sizes))
        object.__setattr__(self, "sizes", sizes)
        check_option("activation", self.activation, ACTIVATIONS)
        check_option("loss", self.loss, LOSSES)

    @property
    def n_params(self) -> int:
        """Number of parameters P = Σ_l d_l (d_{l-1} + 1)."""
        return sum(o * (i + 1) for i, o in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    @property
    def n_in(self) -> int:
        return self.sizes[0]

    @property
    def n_out(self) -> int:
        return self.sizes[-1]

    @property
    def _sizes(self) -> np.ndarray:
        return np.asarray(self.sizes, dtype=np.int64)

    @property
    def _code(self) -> int:
        return ACTIVATIONS[self.activation]

    @property
    def _loss_code(self) -> int:
        return LOSSES[self.loss]

    def init(self, seed: int = 0) -> np.ndarray:
        """Random parameters with fan-in scaling: W_l ~ N(0, c/d_{l-1}), b_l = 0.

        c = 2 for relu/gelu (He), 1 otherwise (LeCun). Returns θ, float64 (P,).
        """
        rng = np.random.default_rng(check_int("seed", seed, minimum=0))
        check_memory(
            f"an MLP with sizes {self.sizes} ({self.n_params} parameters)", 8.0 * self.n_params
        )
        gain = 2.0 if self.activation in ("relu", "gelu") else 1.0
        theta = np.zeros(self.n_params)
        for W, _ in self.unflatten(theta):
            W[...] = rng.standard_normal(W.shape) * np.sqrt(gain / W.shape[1])
        return theta

    def unflatten(self, theta: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """Views ``[(W_1, b_1), ..., (W_L, b_L)]`` into θ, W_l of shape (d_l, d_{l-1}).

        The views share memory with ``theta`` when it is a float64 contiguous array.
        """
        theta = _theta(self, theta, copy=False)
        out = []
        p = 0
        for i, o in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            W = theta[p : p + o * i].reshape(o, i)
            p += o * i
            b = theta[p : p + o]
            p += o
            out.append((W, b))
        return out

    def flatten(self, layers: list[tuple[Any, Any]]) -> np.ndarray:
        """Inverse of :meth:`unflatten`: θ (P,) from ``[(W_l, b_l), ...]``."""
        if len(layers) != len(self.sizes) - 1:
            raise ValueError(
                f"layers must hold {len(self.sizes) - 1} (W, b) pairs, got {len(layers)}"
            )
        parts = []
        for l, ((W, b), i, o) in enumerate(
            zip(layers, self.sizes[:-1], self.sizes[1:], strict=True)
        ):
            parts.append(as_array(f"W[{l}]", W, shape=(o, i)).ravel())
            parts.append(as_array(f"b[{l}]", b, shape=(o,)))
        return np.concatenate(parts)


# -- validation -------------------------------------------------------------------------------
def _check_mlp(mlp: Any) -> MLP:
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be an MLP, got {type(mlp).__name__}")
    return mlp


def _theta(mlp: MLP, theta: Any, *, copy: bool = False, name: str = "theta") -> np.ndarray:
    arr = as_array(name, theta, ndim=1)
    if arr.shape[0] != mlp.n_params:
        raise ValueError(
            f"{name} must have shape ({mlp.n_params},) for an MLP with sizes {mlp.sizes}, "
            f"got {arr.shape}"
        )
    return arr.copy() if copy else arr


def _data_X(mlp: MLP, X: Any) -> np.ndarray:
    X = as_array("X", X, ndim=2)
    if X.shape[1] != mlp.n_in:
        raise ValueError(
            f"X must have shape (n, {mlp.n_in}) for an MLP with sizes {mlp.sizes} "
            f"(input width {mlp.n_in}), got {X.shape}"
        )
    if X.shape[0] < 1:
        raise ValueError("X must hold at least one data point, got 0 rows")
    return X


def _data(mlp: MLP, X: Any, Y: Any) -> tuple[np.ndarray, np.ndarray]:
    X = _data_X(mlp, X)
    Y = as_array("Y", Y, ndim=(1, 2))
    if Y.ndim == 1 and mlp.n_out == 1:
        Y = Y.reshape(-1, 1)
    if Y.shape != (X.shape[0], mlp.n_out):
        raise ValueError(
            f"Y must have shape ({X.shape[0]}, {mlp.n_out}) (one row per row of X, output "
            f"width {mlp.n_out}), got {Y.shape}"
        )
    return X, Y


def _vec(mlp: MLP, v: Any, name: str = "v") -> np.ndarray:
    return _theta(mlp, v, name=name)


def _checked(
    mlp: Any, theta: Any, X: Any, Y: Any
) -> tuple[MLP, np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(mlp, θ, X, Y)``: the checks every loss-derivative function runs first."""
    mlp = _check_mlp(mlp)
    theta = _theta(mlp, theta)
    X, Y = _data(mlp, X, Y)
    return mlp, theta, X, Y


def _check_k(k: Any, P: int) -> int:
    k = check_int("k", k, minimum=1)
    if k > P:
        raise ValueError(f"k must be <= the number of parameters P = {P}, got {k}")
    return k


# -- evaluations ------------------------------------------------------------------------------
def forward(mlp: MLP, theta: Any, X: Any) -> np.ndarray:
    """Network outputs f(x_i; θ).

    Parameters
    ----------
    mlp : MLP
    theta : array (P,)
    X : array (n, d_0)

    Returns
    -------
    array (n, d_L)
    """
    mlp = _check_mlp(mlp)
    theta = _theta(mlp, theta)
    X = _data_X(mlp, X)
    out = np.empty((X.shape[0], mlp.n_out))
    km.mlp_forward(mlp._sizes, mlp._code, theta, X, out)
    return out


def loss(mlp: MLP, theta: Any, X: Any, Y: Any) -> float:
    """Training loss L(θ), averaged over the n points (see :class:`MLP` for the formulas).

    MSE: L = (1/n) Σ_i ½ ||f(x_i; θ) − y_i||².

    Parameters
    ----------
    mlp : MLP
    theta : array (P,)
    X : array (n, d_0)
    Y : array (n, d_L) (or (n,) when d_L = 1)
    """
    mlp, theta, X, Y = _checked(mlp, theta, X, Y)
    g = np.empty(0)
    return float(
        km.mlp_loss_grad(mlp._sizes, mlp._code, mlp._loss_code, theta, X, Y, _EMPTY_I, False, g)
    )


def loss_and_grad(mlp: MLP, theta: Any, X: Any, Y: Any) -> tuple[float, np.ndarray]:
    """L(θ) and ∇L(θ) (P,) from one forward and one backward pass (arguments as :func:`grad`)."""
    mlp, theta, X, Y = _checked(mlp, theta, X, Y)
    g = np.empty(mlp.n_params)
    L = km.mlp_loss_grad(mlp._sizes, mlp._code, mlp._loss_code, theta, X, Y, _EMPTY_I, True, g)
    return float(L), g


def grad(mlp: MLP, theta: Any, X: Any, Y: Any) -> np.ndarray:
    """Gradient ∇L(θ) by backpropagation.

    Parameters
    ----------
    mlp : MLP
    theta : array (P,)
    X : array (n, d_0)
    Y : array (n, d_L)

    Returns
    -------
    array (P,)
    """
    return loss_and_grad(mlp, theta, X, Y)[1]


def hvp(mlp: MLP, theta: Any, X: Any, Y: Any, v: Any) -> np.ndarray:
    """Exact Hessian-vector product H(θ) v, H = ∇²L(θ), by Pearlmutter's R-operator.

    Costs about three gradient evaluations; no finite differences.

    Parameters
    ----------
    mlp : MLP
    theta : array (P,)
    X : array (n, d_0)
    Y : array (n, d_L)
    v : array (P,)
        The direction.

    Returns
    -------
    array (P,)
    """
    return _curvature_product(km.mlp_hvp, mlp, theta, X, Y, v)


def _curvature_product(kern, mlp: Any, theta: Any, X: Any, Y: Any, v: Any) -> np.ndarray:
    mlp, theta, X, Y = _checked(mlp, theta, X, Y)
    v = _vec(mlp, v)
    out = np.empty(mlp.n_params)
    kern(mlp._sizes, mlp._code, mlp._loss_code, theta, X, Y, v, out)
    return out


def gauss_newton_vp(mlp: MLP, theta: Any, X: Any, Y: Any, v: Any) -> np.ndarray:
    """Gauss–Newton product G v, G = (1/n) Σ_i J_iᵀ H_ℓ J_i with J_i = ∂f(x_i; θ)/∂θ.

    H_ℓ is the Hessian of the per-point loss in the outputs (identity for MSE,
    diag(p) − p pᵀ for softmax cross-entropy). G equals H at an interpolating minimum.
    G is positive semi-definite; it costs about two gradient evaluations.

    Parameters and return value as :func:`hvp`: θ (P,), X (n, d_0), Y (n, d_L), the
    direction v (P,); returns G v (P,).
    """
    return _curvature_product(km.mlp_gnvp, mlp, theta, X, Y, v)


def per_sample_gradients(mlp: MLP, theta: Any, X: Any) -> np.ndarray:
    """Gradients of each output coordinate at each point, g_{i,k} = ∇_θ f_k(x_i; θ).

    For MSE at an interpolating minimum, H = (1/n) Σ_i Σ_k g_{i,k} g_{i,k}ᵀ.

    Parameters
    ----------
    mlp : MLP
    theta : array (P,)
    X : array (n, d_0)

    Returns
    -------
    array (n·d_L, P)
        Row i·d_L + k holds g_{i,k} ((n, P) for a scalar output).
    """
    mlp = _check_mlp(mlp)
    theta = _theta(mlp, theta)
    X = _data_X(mlp, X)
    check_memory(
        f"the gradients of {X.shape[0]} points", 8.0 * X.shape[0] * mlp.n_out * mlp.n_params
    )
    out = np.empty((X.shape[0] * mlp.n_out, mlp.n_params))
    km.mlp_per_sample_grads(mlp._sizes, mlp._code, theta, X, out)
    return out


def hessian_operator(mlp: MLP, theta: Any, X: Any, Y: Any, *, gauss_newton: bool = False):
    """H(θ) (or the Gauss–Newton matrix G(θ)) as a matrix-free ``scipy`` ``LinearOperator``.

    Parameters
    ----------
    mlp : MLP
    theta : array (P,)
    X : array (n, d_0)
    Y : array (n, d_L)
    gauss_newton : bool
        Use G v = (1/n) Σ_i J_iᵀ H_ℓ J_i v instead of the exact H v.

    Returns
    -------
    scipy.sparse.linalg.LinearOperator of shape (P, P), symmetric, float64.
    """
    from scipy.sparse.linalg import LinearOperator

    mlp, theta, X, Y = _checked(mlp, theta, X, Y)
    kern = km.mlp_gnvp if check_bool("gauss_newton", gauss_newton) else km.mlp_hvp
    args = (mlp._sizes, mlp._code, mlp._loss_code, theta, X, Y)

    def matvec(v: np.ndarray) -> np.ndarray:
        out = np.empty(mlp.n_params)
        kern(*args, np.ascontiguousarray(v, dtype=np.float64).reshape(-1), out)
        return out

    P = mlp.n_params
    return LinearOperator((P, P), matvec=matvec, rmatvec=matvec, dtype=np.float64)


# -- eigenvalues ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Eigenpairs:
    """Result of :func:`sharpness`: the top-k eigenpairs of a symmetric operator.

    Attributes
    ----------
    eigenvalues : array (k,), in decreasing order (eigenvalues[0] is the sharpness λ_max).
    eigenvectors : array (P, k), orthonormal columns.
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


METHODS = ("lanczos", "power")


def _lanczos_basis(matvec, q0: np.ndarray, m_max: int, stop=None):
    """Lanczos tridiagonalisation T = Qᵀ H Q with full reorthogonalisation.

    Runs at most ``m_max`` steps from q0/||q0||. After step m, ``stop(alpha[:m], beta[:m])``
    (if given) may end the iteration by returning True; β_m is the norm of the next residual.
    An invariant Krylov subspace (β_m ≤ 1e-13 ||T||) also ends it: the Ritz values are then
    eigenvalues of H. Returns ``(Q (m, P), alpha (m,), beta (m,), n_matvec, ended)`` where
    ``ended`` says whether ``stop`` or an invariant subspace ended the iteration.
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
    """The k largest (smallest) Ritz values of T and their eigenvectors S (m, k) in T."""
    from scipy.linalg import eigh_tridiagonal

    theta, S = eigh_tridiagonal(alpha, beta[:-1])
    order = np.argsort(theta)[::-1] if largest else np.argsort(theta)
    return theta, S, order[:k]


def _lanczos(matvec, P: int, k: int, tol: float, maxiter: int, v0: np.ndarray, largest: bool):
    """Lanczos with full reorthogonalisation for the k largest (or smallest) eigenpairs.

    A pair (θ, y) is accepted when its error estimate min(r, r²/gap) ≤ tol·|θ|, r = β_m |s_m|
    the residual norm ||Hy − θy|| of the Ritz pair and gap the distance to the nearest other
    Ritz value (the a-posteriori bound |θ − λ| ≤ r²/gap). An invariant subspace (β ≈ 0) ends
    the iteration with exact pairs.
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


def _power(matvec, P: int, k: int, tol: float, maxiter: int, v0: np.ndarray):
    """Power iteration with deflation for the k largest eigenpairs.

    Each pair iterates v ← (H + σI) v / ||·|| orthogonal to the pairs already found, until the
    Rayleigh quotient changes by less than tol·|λ|. σ = 0 first; if the dominant eigenvalue of
    the deflated operator is negative the pair is recomputed with σ = |λ| so that the largest
    algebraic eigenvalue dominates.
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
    """Top-k eigenpairs of a symmetric operator given as an array, LinearOperator or callable.

    Parameters
    ----------
    op : array (P, P), ``scipy.sparse.linalg.LinearOperator`` or callable v -> H v
        With a callable, ``v0`` (or an array) fixes P.
    k : int, 1 <= k <= P
    method : "lanczos" (full reorthogonalisation) or "power" (deflation)
    tol : relative accuracy of the eigenvalues
    maxiter : most operator products per run (default: P for Lanczos, 10000 for power)
    v0 : array (P,), starting vector (default random from ``seed``)
    which : "largest" or "smallest" (Lanczos only)

    Returns
    -------
    Eigenpairs
    """
    from ._validate import check_positive

    check_option("method", method, METHODS)
    check_option("which", which, ("largest", "smallest"))
    tol = check_positive("tol", tol)
    P_v0 = None if v0 is None else as_array("v0", v0, ndim=1).shape[0]
    matvec, P, _ = _as_operator(op, P_v0, "v0 (its length fixes P)")
    k = _check_k(k, P)
    if v0 is None:
        v0 = np.random.default_rng(check_int("seed", seed, minimum=0)).standard_normal(P)
    else:
        v0 = as_array("v0", v0, shape=(P,)).copy()
        if not np.any(v0):
            raise ValueError("v0 must be a nonzero vector")
    if method == "lanczos":
        maxiter = P if maxiter is None else check_int("maxiter", maxiter, minimum=k)
        vals, vecs, n, conv = _lanczos(matvec, P, k, tol, maxiter, v0, which == "largest")
    else:
        if which != "largest":
            raise ValueError("which='smallest' needs method='lanczos'")
        maxiter = 10000 if maxiter is None else check_int("maxiter", maxiter, minimum=1)
        vals, vecs, n, conv = _power(matvec, P, k, tol, maxiter, v0)
    return Eigenpairs(np.asarray(vals), np.asarray(vecs), int(n), bool(conv), method)


def sharpness(
    mlp: MLP,
    theta: Any,
    X: Any,
    Y: Any,
    *,
    k: int = 1,
    method: str = "lanczos",
    tol: float = 1e-8,
    maxiter: int | None = None,
    v0: Any = None,
    seed: int = 0,
) -> Eigenpairs:
    """Top-k eigenpairs of the loss Hessian H(θ) from exact Hessian-vector products.

    The sharpness is λ_max(H); gradient descent with step η is linearly stable at a minimum
    only if λ_max < 2/η.

    Parameters
    ----------
    mlp : MLP
    theta : array (P,)
    X : array (n, d_0)
    Y : array (n, d_L)
    k : int
        Number of eigenpairs, 1 <= k <= P.
    method : "lanczos" or "power"
        Lanczos with full reorthogonalisation (converges in far fewer products), or power
        iteration with deflation.
    tol : float
        Relative accuracy of the eigenvalues (> 0).
    maxiter : int, optional
        Most Hessian-vector products per run.
    v0 : array (P,), optional
        Starting vector (e.g. the previous top eigenvector during training).
    seed : int
        Seed of the random starting vector.

    Returns
    -------
    Eigenpairs
        ``eigenvalues`` (k,) decreasing, ``eigenvectors`` (P, k), ``n_hvp``.

    Raises
    ------
    ValueError
        Shapes that do not match the network, k > P, unknown method, tol <= 0.
    """
    op = hessian_operator(mlp, theta, X, Y)
    k = _check_k(k, mlp.n_params)
    return top_eigenpairs(op, k=k, method=method, tol=tol, maxiter=maxiter, v0=v0, seed=seed)


# -- spectral density ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SpectrumDensity:
    """Result of :func:`hessian_spectrum_density`.

    Attributes
    ----------
    grid : array (G,), the points x where the density is evaluated.
    density : array (G,), the broadened spectral density φ_σ(x) (integrates to 1 over ℝ).
    nodes : array (n_probes, m), Gauss quadrature nodes (Ritz values) of each probe.
    weights : array (n_probes, m), their weights (each row sums to 1; entries past a probe's
        Krylov dimension are padding with node 0 and weight 0).
    sigma : the Gaussian broadening width σ.
    n_hvp : number of Hessian-vector products used.

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


def hessian_spectrum_density(
    mlp: MLP,
    theta: Any,
    X: Any,
    Y: Any,
    *,
    n_probes: int = 10,
    n_steps: int = 80,
    seed: int = 0,
    grid: Any = None,
    sigma: float | None = None,
) -> SpectrumDensity:
    """Eigenvalue density of the loss Hessian by stochastic Lanczos quadrature (SLQ).

    The spectral density φ(x) = (1/P) Σ_i δ(x − λ_i) of H = ∇²L(θ) is estimated through
    (1/P) tr f(H) = E_z[zᵀ f(H) z]/P for Rademacher probes z (entries ±1, ||z||² = P). For each
    probe, m Lanczos steps from q_1 = z/√P (full reorthogonalisation, exact Hessian-vector
    products) give T_m = S diag(θ_j) Sᵀ, and zᵀ f(H) z / P ≈ Σ_j τ_j f(θ_j) with
    τ_j = S_{1j}², the m-point Gauss quadrature of the spectral measure of q_1, exact for
    polynomials f of degree ≤ 2m − 1. Averaging over probes and broadening each node by a
    Gaussian of width σ gives

        φ_σ(x) = (1/n_probes) Σ_probes Σ_j τ_j exp(−(x − θ_j)²/(2σ²)) / (σ√(2π)).

    The moments ∫ x^k φ_σ(x) dx for k ≤ 1 equal the quadrature moments exactly, and those
    are unbiased estimates of tr(H^k)/P for k ≤ 2m − 1 with the Hutchinson variance
    2(||H^k||_F² − Σ_i (H^k)_ii²)/P² per probe.

    Parameters
    ----------
    mlp : MLP
    theta : array (P,)
    X : array (n, d_0)
    Y : array (n, d_L)
    n_probes : int
        Number of Rademacher probes (>= 1); they are the rows of
        ``2 * np.random.default_rng(seed).integers(0, 2, (n_probes, P)) - 1``.
    n_steps : int
        Lanczos steps per probe (>= 1), at most P are taken (the Krylov space is then the whole
        invariant subspace of the probe, and the nodes are eigenvalues of H).
    seed : int
        Seed of the probes (>= 0).
    grid : array (G,), optional
        Points where φ_σ is evaluated; default 1000 points spanning the nodes ± 6σ.
    sigma : float, optional
        Broadening width (> 0), in units of the eigenvalues; default 1% of the node range
        (of max(|node|, 1) when all nodes coincide).

    Returns
    -------
    SpectrumDensity
        ``grid``, ``density``, quadrature ``nodes`` and ``weights``, ``sigma``, ``n_hvp``.

    Raises
    ------
    ValueError
        Shapes that do not match the network, non-finite inputs, n_probes < 1, n_steps < 1,
        seed < 0, sigma <= 0, a grid that is not a finite 1-D array.

    References
    ----------
    G. H. Golub, G. Meurant, "Matrices, moments and quadrature with applications" (2010).
    S. Ubaru, J. Chen, Y. Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos
    quadrature", SIAM J. Matrix Anal. Appl. 38 (2017).
    B. Ghorbani, S. Krishnan, Y. Xiao, "An investigation into neural net optimization via
    Hessian eigenvalue density", ICML 2019.
    """
    from ._validate import check_positive

    op = hessian_operator(mlp, theta, X, Y)
    n_probes = check_int("n_probes", n_probes, minimum=1)
    n_steps = check_int("n_steps", n_steps, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if sigma is not None:
        sigma = check_positive("sigma", sigma)
    if grid is not None:
        grid = as_array("grid", grid, ndim=1)
        if grid.size == 0:
            raise ValueError("grid must hold at least one point, got an empty array")
    P = mlp.n_params
    m_max = min(n_steps, P)
    # probes, the Lanczos basis of one probe, nodes and weights
    check_memory(
        f"n_probes = {n_probes} probes of {P} parameters",
        8.0 * (n_probes * P + (m_max + 1) * P + 2 * n_probes * m_max),
    )
    probes = 2.0 * np.random.default_rng(seed).integers(0, 2, (n_probes, P)) - 1.0
    nodes = np.zeros((n_probes, m_max))
    weights = np.zeros((n_probes, m_max))
    n_hvp = 0
    for i in range(n_probes):
        _, alpha, beta, n_mv, _ = _lanczos_basis(op.matvec, probes[i], m_max)
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


# -- linear stability of gradient descent -----------------------------------------------------
@dataclass(frozen=True)
class GDStability:
    """Result of :func:`gd_stability`.

    Attributes
    ----------
    lr : the step η.
    radius_full : spectral radius of I − ηH on the whole parameter space (>= 1 whenever H has
        a zero eigenvalue, i.e. along the tangent directions of a manifold of minima).
    radius_normal : spectral radius of I − ηH on the normal space (nan if not determined).
    lam_max, lam_min : extreme eigenvalues of H on the whole space.
    lam_max_normal, lam_min_normal : extreme eigenvalues of H on the normal space.
    normal_dim : dimension of the normal space (P for an isolated minimum).
    space : "full" or "normal", the space whose radius decides.
    stable : radius on ``space`` < 1.
    """

    lr: float
    radius_full: float
    radius_normal: float
    lam_max: float
    lam_min: float
    lam_max_normal: float
    lam_min_normal: float
    normal_dim: int
    space: str
    stable: bool

    @property
    def verdict(self) -> str:
        """``"stable"`` or ``"unstable"``."""
        return "stable" if self.stable else "unstable"

    @property
    def lr_critical(self) -> float:
        """2/λ_max on the deciding space: the largest stable step (for λ_min >= 0)."""
        lam = self.lam_max_normal if self.space == "normal" else self.lam_max
        return 2.0 / lam if lam > 0 else np.inf


def _radius(lr: float, lo: float, hi: float) -> float:
    return float(max(abs(1.0 - lr * lo), abs(1.0 - lr * hi)))


def gd_stability(
    H: Any,
    lr: float,
    *,
    jacobian: Any = None,
    rank_tol: float = 1e-9,
    tol: float = 1e-10,
) -> GDStability:
    """Linear stability of gradient descent θ ← θ − η∇L at a minimum with Hessian H.

    The linearisation is δ ← (I − ηH) δ; the minimum is linearly stable when the spectral
    radius ρ = max |1 − ηλ| over the eigenvalues λ of H on the relevant subspace is < 1.
    For an isolated minimum that subspace is the whole space (ρ < 1 ⟺ 0 < λ and η < 2/λ_max).
    On a manifold of minima (over-parameterised, interpolating), the tangent directions carry
    λ = 0 and ρ_full = 1 there; stability is decided on the normal space N = range(H). At an
    interpolating minimum of the MSE, H = (1/n) Jᵀ J with J the per-sample gradients, so
    N = row space of J.

    Parameters
    ----------
    H : array (P, P), LinearOperator or callable v -> H v
        The Hessian at the minimum (e.g. :func:`hessian_operator`). Matrix-free H needs
        ``jacobian`` for the normal space.
    lr : float
        Step η > 0.
    jacobian : array (m, P), optional
        Gauss–Newton factor J (e.g. :func:`per_sample_gradients`): N = row space of J, rank
        from the singular values above ``rank_tol``·σ_max. Without it a dense H gives N as the
        span of its eigenvectors with |λ| > ``rank_tol``·max|λ|, and a matrix-free H only the
        full-space radius.
    rank_tol : float
        Relative threshold separating zero from nonzero singular/eigen values.
    tol : float
        Relative accuracy of the extreme eigenvalues of a matrix-free H (Lanczos).

    Returns
    -------
    GDStability
        ``space`` is "normal" when H is singular or J is given, else "full".

    Raises
    ------
    ValueError
        lr <= 0, H not square, J with the wrong number of columns.
    """
    from ._validate import check_positive

    lr = check_positive("lr", lr)
    rank_tol = check_positive("rank_tol", rank_tol)
    tol = check_positive("tol", tol)
    P_jac = None if jacobian is None else as_array("jacobian", jacobian, ndim=2).shape[1]
    matvec, P, A = _as_operator(H, P_jac, "jacobian (it fixes P and the normal space)")
    dense = A is not None
    if dense:
        A = 0.5 * (A + A.T)
        matvec = A.__matmul__
        lam, U = np.linalg.eigh(A)
        lam_min, lam_max = float(lam[0]), float(lam[-1])
    else:
        lam_max = top_eigenpairs(matvec, k=1, tol=tol, v0=np.ones(P)).eigenvalues[0]
        lam_min = top_eigenpairs(matvec, k=1, tol=tol, v0=np.ones(P), which="smallest").eigenvalues[
            0
        ]
        dense = False
    radius_full = _radius(lr, lam_min, lam_max)
    Qn = None
    if jacobian is not None:
        J = as_array("jacobian", jacobian, ndim=2)
        if J.shape[1] != P:
            raise ValueError(f"jacobian must have shape (m, {P}) (P columns), got {J.shape}")
        _, s, Vt = np.linalg.svd(J, full_matrices=False)
        r = int(np.sum(s > rank_tol * (s[0] if s.size else 0.0)))
        Qn = Vt[:r].T
    elif dense:
        scale = max(abs(lam_min), abs(lam_max))
        keep = np.abs(lam) > rank_tol * scale
        if not keep.all():
            Qn = U[:, keep]
    if Qn is None:
        return GDStability(
            lr,
            radius_full,
            radius_full,
            lam_max,
            lam_min,
            lam_max,
            lam_min,
            P,
            "full",
            radius_full < 1.0,
        )
    r = Qn.shape[1]
    if r == 0:
        return GDStability(lr, radius_full, 0.0, lam_max, lam_min, 0.0, 0.0, 0, "normal", True)
    HQ = np.column_stack([matvec(Qn[:, i]) for i in range(r)]) if not dense else A @ Qn
    Hn = Qn.T @ HQ
    lam_n = np.linalg.eigvalsh(0.5 * (Hn + Hn.T))
    radius_normal = _radius(lr, lam_n[0], lam_n[-1])
    return GDStability(
        lr,
        radius_full,
        radius_normal,
        lam_max,
        lam_min,
        float(lam_n[-1]),
        float(lam_n[0]),
        r,
        "normal",
        radius_normal < 1.0,
    )


# -- gradient descent as a dynamical system ---------------------------------------------------
@dataclass(frozen=True)
class GDRun:
    """Record of :func:`gradient_descent`.

    Attributes
    ----------
    step : array (T,), steps 0..T-1.
    loss : array (T,), loss at θ_k (the mini-batch loss for SGD).
    grad_norm : array (T,), ||∇L(θ_k)|| (mini-batch gradient for SGD).
    sharpness_step : array (S,), steps at which the sharpness was measured.
    sharpness : array (S, k), top-k eigenvalues of the full-batch Hessian at those steps.
    lr : the step η; ``two_over_lr`` = 2/η, the stability threshold of the sharpness.
    theta : array (P,), parameters after the last step.
    path : run file (or None).
    """

    step: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    sharpness_step: np.ndarray
    sharpness: np.ndarray
    lr: float
    theta: np.ndarray
    path: str | None = None

    @property
    def two_over_lr(self) -> float:
        return 2.0 / self.lr


def gradient_descent(
    mlp: MLP,
    theta0: Any,
    X: Any,
    Y: Any,
    *,
    lr: float,
    steps: int,
    sharpness_every: int = 0,
    k: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
    sharpness_tol: float = 1e-6,
    chunk_steps: int = 1000,
    out: Any = None,
    overwrite: bool = False,
    resume: bool = False,
) -> GDRun:
    """Run θ_{k+1} = θ_k − η ∇L_B(θ_k), recording loss, gradient norm and sharpness.

    Full-batch gradient descent (B = all points) by default; with ``batch_size`` each step
    uses a mini-batch of that many distinct points drawn from ``np.random.default_rng(seed)``
    (SGD). The steps run in Numba chunks (``mlp_gd_advance``); every ``sharpness_every`` steps
    the top-k eigenvalues of the full-batch Hessian are computed by Lanczos on exact
    Hessian-vector products, warm-started from the previous top eigenvector. With ``out`` the
    run streams to an HDF5 run file (series ``trajectory``: step, loss, grad_norm; series
    ``sharpness``: step, value (k,); params: lr, two_over_lr, sizes, ...; the checkpoint holds
    θ, the step and the generator state, so ``resume=True`` continues a killed run exactly).

    Parameters
    ----------
    mlp : MLP
    theta0 : array (P,), initial parameters (ignored when resuming).
    X : array (n, d_0)
    Y : array (n, d_L)
    lr : float
        Step η > 0.
    steps : int
        Total number of steps (>= 1).
    sharpness_every : int
        Measure the sharpness every this many steps and after the last step (0: never).
    k : int
        Number of top eigenvalues recorded (1 <= k <= P).
    batch_size : int, optional
        Mini-batch size for SGD (1 <= batch_size <= n); None for full-batch GD.
    seed : int
        Seed of the mini-batch draws.
    sharpness_tol : float
        Relative accuracy of the recorded eigenvalues.
    chunk_steps : int
        Steps per kernel call and per committed chunk when ``sharpness_every`` is 0.
    out : path, optional
        Run file to stream to.
    overwrite, resume : bool
        Replace an existing ``out`` / continue the run stored in ``out``.

    Returns
    -------
    GDRun

    Raises
    ------
    ValueError
        Bad shapes, lr <= 0, steps < 1, k > P, batch_size out of range.
    NonFiniteStateError
        The loss or gradient became NaN/inf (divergence); the steps before are kept in ``out``.
    """
    from ._validate import check_out_path, check_positive
    from .errors import NonFiniteStateError
    from .storage import TrajectoryWriter

    mlp = _check_mlp(mlp)
    X, Y = _data(mlp, X, Y)
    lr = check_positive("lr", lr)
    steps = check_int("steps", steps, minimum=1)
    sharpness_every = check_int("sharpness_every", sharpness_every, minimum=0)
    k = _check_k(k, mlp.n_params)
    n = X.shape[0]
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if batch_size > n:
            raise ValueError(
                f"batch_size must be <= the number of points n = {n}, got {batch_size}"
            )
    seed = check_int("seed", seed, minimum=0)
    sharpness_tol = check_positive("sharpness_tol", sharpness_tol)
    chunk_steps = check_int("chunk_steps", chunk_steps, minimum=1)
    overwrite = check_bool("overwrite", overwrite)
    resume = check_bool("resume", resume)
    chunk = sharpness_every if sharpness_every > 0 else chunk_steps
    # every step's loss and gradient norm are kept, and each chunk's mini-batch indices
    n_sharp = steps // sharpness_every + 2 if sharpness_every > 0 else 0
    check_memory(
        f"a run of steps = {steps}",
        16.0 * steps + 8.0 * n_sharp * k + 8.0 * min(chunk, steps) * (batch_size or 0),
    )
    rng = np.random.default_rng(seed)
    writer = None
    start = 0
    v0 = None
    if resume:
        if out is None:
            raise ValueError("resume=True needs out, the run file to continue")
        check_out_path("out", out, resume=True)
        writer = TrajectoryWriter.resume(out)
        ck = writer.checkpoint
        theta = np.array(ck["theta"], dtype=np.float64)
        if theta.shape != (mlp.n_params,):
            writer.close("failed", "checkpoint does not match the network")
            raise ValueError(
                f"out: checkpoint θ has shape {theta.shape}, expected ({mlp.n_params},)"
            )
        start = int(ck["step"])
        rng.bit_generator.state = ck["rng"]
        v0 = ck.get("v0")
    else:
        theta = _theta(mlp, theta0, copy=True, name="theta0")
        if out is not None:
            check_out_path("out", out, overwrite=overwrite)
            writer = TrajectoryWriter.create(
                out,
                kind="gradient_descent",
                params={
                    "sizes": np.asarray(mlp.sizes),
                    "activation": mlp.activation,
                    "loss": mlp.loss,
                    "lr": lr,
                    "two_over_lr": 2.0 / lr,
                    "steps": steps,
                    "sharpness_every": sharpness_every,
                    "k": k,
                    "batch_size": -1 if batch_size is None else batch_size,
                    "seed": seed,
                    "X": X,
                    "Y": Y,
                    "theta0": theta.copy(),
                },
                series={
                    "trajectory": {"step": ((), np.int64), "loss": (), "grad_norm": ()},
                    "sharpness": {"step": ((), np.int64), "value": (k,)},
                },
                overwrite=overwrite,
            )
    rec_loss, rec_gn, sh_step, sh_val = [], [], [], []
    op_args = (mlp._sizes, mlp._code, mlp._loss_code)

    def measure(step: int) -> None:
        nonlocal v0
        res = sharpness(mlp, theta, X, Y, k=k, tol=sharpness_tol, v0=v0)
        v0 = res.eigenvectors[:, 0].copy()
        sh_step.append(step)
        sh_val.append(res.eigenvalues)
        if writer is not None:
            writer.append("sharpness", step=np.array([step]), value=res.eigenvalues[None, :])

    try:
        s = start
        while s < steps:
            m = min(chunk, steps - s)
            if sharpness_every > 0 and s % sharpness_every == 0:
                measure(s)
            if batch_size is None:
                batches = np.zeros((m, 0), np.int64)
            else:
                batches = np.stack([rng.choice(n, batch_size, replace=False) for _ in range(m)])
            lbuf = np.empty(m)
            gbuf = np.empty(m)
            done, status = km.mlp_gd_advance(*op_args, theta, X, Y, lr, batches, lbuf, gbuf)
            rec_loss.append(lbuf[:done])
            rec_gn.append(gbuf[:done])
            if writer is not None:
                writer.append(
                    "trajectory",
                    step=np.arange(s, s + done),
                    loss=lbuf[:done],
                    grad_norm=gbuf[:done],
                )
            if status != km.OK:
                if writer is not None:
                    writer.commit(theta=theta, step=s + done, rng=rng.bit_generator.state)
                raise NonFiniteStateError(
                    f"gradient descent diverged: non-finite loss or gradient at step {s + done} "
                    f"(lr = {lr}, 2/lr = {2 / lr:.6g}); the steps before are kept",
                    step=s + done,
                    time=float(s + done),
                )
            s += done
            if sharpness_every > 0 and s == steps:
                measure(s)
            if writer is not None:
                ck = {"theta": theta, "step": s, "rng": rng.bit_generator.state}
                if v0 is not None:
                    ck["v0"] = v0
                writer.commit(**ck)
    except BaseException as exc:
        if writer is not None:
            writer.close("failed", f"{type(exc).__name__}: {exc}")
        raise
    path = None
    if writer is not None:
        path = writer.path
        writer.close("complete")
    if resume:
        from .storage import open_run

        with open_run(out) as run:
            step_all = run.read("trajectory", "step")
            loss_all = run.read("trajectory", "loss")
            gn_all = run.read("trajectory", "grad_norm")
            sh_step_all = run.read("sharpness", "step")
            sh_all = run.read("sharpness", "value")
        return GDRun(step_all, loss_all, gn_all, sh_step_all, sh_all, lr, theta, path)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return GDRun(
        np.arange(start, start + sum(len(p) for p in rec_loss)),
        cat(rec_loss),
        cat(rec_gn),
        np.asarray(sh_step, dtype=np.int64),
        np.array(sh_val).reshape(-1, k),
        lr,
        theta,
        path,
    )


# -- the edge-of-stability experiment ---------------------------------------------------------
def eos_dataset(n: int = 100, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The fixed synthetic regression set of the edge-of-stability experiment.

    x_i ~ N(0, I_d) (d >= 3), y_i = sin(2 x_i1) cos(x_i2) + ½ x_i3², centred.
    Returns X (n, d), Y (n, 1).
    """
    n = check_int("n", n, minimum=1)
    d = check_int("d", d, minimum=3)
    check_memory(f"a data set of n = {n} points in d = {d}", 8.0 * n * (d + 2))
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    X = rng.standard_normal((n, d))
    Y = np.sin(2 * X[:, :1]) * np.cos(X[:, 1:2]) + 0.5 * X[:, 2:3] ** 2
    return X, Y - Y.mean()


def eos_experiment(
    lrs: Any = (0.2, 0.25, 0.3),
    *,
    n: int = 100,
    d: int = 5,
    width: int = 32,
    depth: int = 2,
    steps: int = 2000,
    sharpness_every: int = 25,
    seed: int = 0,
    out_dir: Any = None,
    overwrite: bool = False,
) -> dict[float, GDRun]:
    """Full-batch GD of a tanh MLP on :func:`eos_dataset` for several learning rates.

    Each run records loss, gradient norm and sharpness λ_max (see :func:`gradient_descent`);
    at the edge of stability λ_max rises to 2/η and hovers there while the loss keeps
    decreasing non-monotonically.

    Parameters
    ----------
    lrs : sequence of float > 0
    n, d : data points and input dimension
    width, depth : hidden width and number of hidden layers of the MLP (d, width×depth, 1)
    steps, sharpness_every : GD steps and spacing of the sharpness measurements
    seed : seed of the data and of the initial parameters (shared by all runs)
    out_dir : folder for one run file per learning rate (``eos_lr<η>.h5``), optional

    Returns
    -------
    dict lr -> GDRun
    """
    from pathlib import Path

    from ._validate import check_out_path, check_positive

    lrs = [check_positive("lr", lr) for lr in np.atleast_1d(np.asarray(lrs, dtype=float))]
    if not lrs:
        raise ValueError("lrs must hold at least one learning rate")
    width = check_int("width", width, minimum=1)
    depth = check_int("depth", depth, minimum=1)
    overwrite = check_bool("overwrite", overwrite)
    d_in = check_int("d", d, minimum=3)
    n_par = width * (d_in + 1) + (depth - 1) * width * (width + 1) + width + 1
    check_memory(f"an MLP of depth {depth} and width {width} ({n_par} parameters)", 24.0 * n_par)
    X, Y = eos_dataset(n, d, seed)
    mlp = MLP((d,) + (width,) * depth + (1,), "tanh", "mse")
    theta0 = mlp.init(seed)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if not out_dir.is_dir():
            raise ValueError(f"out_dir: folder {str(out_dir)!r} does not exist")
        names = [f"eos_lr{lr:g}.h5" for lr in lrs]
        if len(set(names)) < len(names):
            raise ValueError(f"lrs must be distinct (each names a run file), got {lrs}")
        for name in names:  # every run file before the first run
            check_out_path("out_dir", out_dir / name, overwrite=overwrite)
    runs = {}
    for lr in lrs:
        out = None if out_dir is None else out_dir / f"eos_lr{lr:g}.h5"
        runs[lr] = gradient_descent(
            mlp,
            theta0,
            X,
            Y,
            lr=lr,
            steps=steps,
            sharpness_every=sharpness_every,
            sharpness_tol=1e-5,
            out=out,
            overwrite=overwrite,
        )
    return runs


def _check_runs(runs: Any) -> None:
    if not isinstance(runs, dict) or not all(isinstance(r, GDRun) for r in runs.values()):
        raise TypeError(
            f"runs must be a dict {{lr: GDRun}} (from eos_experiment), got {runs!r:.80}"
        )


def eos_summary(runs: dict[float, GDRun]) -> str:
    """A text table of edge-of-stability runs, one line per learning rate η: 2/η, the
    sharpness at the first and last measurement, the mean of the late half of the sharpness
    series over 2/η (≈ 1 at the edge of stability), and the final loss."""
    _check_runs(runs)
    lines = [
        f"{'lr':>8} {'2/lr':>9} {'λ_max(0)':>9} {'λ_max end':>9} {'late mean/(2/lr)':>17} "
        f"{'loss end':>10}"
    ]
    for lr, run in sorted(runs.items()):
        s = run.sharpness[:, 0] if run.sharpness.size else np.array([np.nan])
        late = s[len(s) // 2 :] * lr / 2
        loss_end = run.loss[-1] if run.loss.size else np.nan
        lines.append(
            f"{lr:8.4g} {2 / lr:9.4g} {s[0]:9.4g} {s[-1]:9.4g} {late.mean():17.3f} {loss_end:10.3e}"
        )
    return "\n".join(lines)


def plot_eos(runs: dict[float, GDRun], path: Any) -> None:
    """Plot loss (log scale) and sharpness against 2/η (dashed) for each run; save to ``path``."""
    from ._validate import check_out_path

    _check_runs(runs)
    check_out_path("path", path, overwrite=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for i, (lr, run) in enumerate(sorted(runs.items())):
        c = f"C{i}"
        ax1.semilogy(run.step, run.loss, color=c, lw=0.8, label=f"η = {lr:g}")
        ax2.plot(run.sharpness_step, run.sharpness[:, 0], color=c, lw=1.2)
        ax2.axhline(2.0 / lr, color=c, ls="--", lw=0.8)
    ax1.set_ylabel("training loss")
    ax1.legend()
    ax2.set_ylabel("sharpness λ_max(H)   (dashed: 2/η)")
    ax2.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
