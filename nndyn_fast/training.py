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
backpropagation for ∇L, Pearlmutter's R-operator for H v, parallel over data points. The
eigen-solvers (Lanczos, power iteration, stochastic Lanczos quadrature) are in
:mod:`nndyn_fast.eigen`; :func:`top_eigenpairs`, :class:`Eigenpairs` and
:class:`SpectrumDensity` are re-exported here.

References
----------
B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6 (1994).
J. Cohen, S. Kaur, Y. Li, J. Z. Kolter, A. Talwalkar, "Gradient descent on neural networks
typically occurs at the edge of stability", ICLR 2021.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _compile_cache  # noqa: F401  (the kernels' cache policy: installed on import)
from ._validate import as_array, check_bool, check_int, check_memory, check_option
from .eigen import (
    METHODS,
    Eigenpairs,
    SpectrumDensity,
    _as_operator,
    _blas_seconds,
    _check_k,
    _slq,
    gd_threshold,
    top_eigenpairs,
)
from .errors import NonFiniteStateError
from .kernels import mlp as km
from .kernels.activations import ACTIVATIONS
from .runs import restore_rng, rng_state, start_run
from .storage import open_run
from .threads import for_work

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
    "gd_threshold",
    "gradient_descent",
    "eos_dataset",
    "eos_experiment",
    "eos_summary",
]

LOSSES = {"mse": km.MSE, "cross_entropy": km.XENT}
# Serial seconds per point and parameter of one kernel call, for the thread choice of
# threads.for_work (measured on one thread, 20-64-64-1 tanh MLP, 2000 points, best of 15 on
# the shared machine): forward pass (loss) 0.9e-10, loss and gradient 1.7e-10, Hessian-vector
# product 3.7e-10 (3.0e-10, 3.7e-10, 5.7e-10 before the kernels used numpy's error model).
_SECONDS_PER_NP_FORWARD = 1e-10
_SECONDS_PER_NP_GRAD = 1.7e-10
_SECONDS_PER_NP_HVP = 3.7e-10
_EMPTY_I = np.zeros(0, np.int64)
# Serial seconds per multiply-add of the kernels' BLAS layer products on a block of
# km.BLOCK points (about 1e-10 on one thread for 64 x 32 x 32); such products are too small
# for BLAS threads, which under load cost far more than they save.
_SECONDS_PER_GEMM_MADD = 1e-10


def _block_blas_seconds(mlp: MLP) -> float:
    """Serial seconds of the largest layer product the MLP kernels hand to BLAS (a block of
    km.BLOCK points through the widest layer), for the BLAS thread choice of for_work."""
    s = mlp.sizes
    return _SECONDS_PER_GEMM_MADD * km.BLOCK * max(s[l] * s[l + 1] for l in range(len(s) - 1))


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
    with for_work(_SECONDS_PER_NP_FORWARD * X.shape[0] * mlp.n_params):
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
    with for_work(_SECONDS_PER_NP_FORWARD * X.shape[0] * mlp.n_params):
        L = km.mlp_loss_grad(mlp._sizes, mlp._code, mlp._loss_code, theta, X, Y, _EMPTY_I, False, g)
    return float(L)


def loss_and_grad(mlp: MLP, theta: Any, X: Any, Y: Any) -> tuple[float, np.ndarray]:
    """L(θ) and ∇L(θ) (P,) from one forward and one backward pass (arguments as :func:`grad`)."""
    mlp, theta, X, Y = _checked(mlp, theta, X, Y)
    g = np.empty(mlp.n_params)
    with for_work(_SECONDS_PER_NP_GRAD * X.shape[0] * mlp.n_params):
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
    with for_work(_SECONDS_PER_NP_HVP * X.shape[0] * mlp.n_params):
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
    with for_work(_SECONDS_PER_NP_GRAD * out.size):
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
    seconds = _SECONDS_PER_NP_HVP * X.shape[0] * mlp.n_params

    def matvec(v: np.ndarray) -> np.ndarray:
        out = np.empty(mlp.n_params)
        with for_work(seconds):
            kern(*args, np.ascontiguousarray(v, dtype=np.float64).reshape(-1), out)
        return out

    P = mlp.n_params
    return LinearOperator((P, P), matvec=matvec, rmatvec=matvec, dtype=np.float64)


# -- eigenvalues ------------------------------------------------------------------------------
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
        (of max(abs(node), 1) when all nodes coincide).

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
    with for_work(None, blas=_blas_seconds(P, None, m_max)):
        return _slq(op.matvec, probes, m_max, grid, sigma)


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
        return gd_threshold(self.lam_max_normal if self.space == "normal" else self.lam_max)


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
    radius ρ = max abs(1 − ηλ) over the eigenvalues λ of H on the relevant subspace is < 1.
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
        span of its eigenvectors with abs(λ) > ``rank_tol``·max abs(λ), and a matrix-free H only the
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
    m = 0 if jacobian is None else int(np.shape(jacobian)[0])
    blas = _SECONDS_PER_CUBE * max(P**3 if A is not None else 0, m * P * min(m, P))
    with for_work(None, blas=blas):  # LAPACK on small matrices: one thread
        return _gd_stability(lr, rank_tol, tol, jacobian, matvec, P, A)


# Serial seconds of a symmetric eigendecomposition per P^3 and of an SVD per m P min(m, P)
# (measured on one thread: eigh 2.7e-10 to 4.2e-10, svd 5.5e-10 to 7.2e-10, P = 200 to 800)
_SECONDS_PER_CUBE = 5e-10


def _gd_stability(lr, rank_tol, tol, jacobian, matvec, P, A) -> GDStability:
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
        """2/η (:func:`gd_threshold` of the step): the sharpness above which η is unstable."""
        return gd_threshold(self.lr)


def _first_start(P: int) -> np.ndarray:
    """The starting vector of the first sharpness measurement of a run (later ones start from
    the previous top eigenvector); it is :func:`top_eigenpairs`' default for seed 0."""
    return np.random.default_rng(0).standard_normal(P)


def _draw_batches(rng: np.random.Generator | None, m: int, n: int, B: int | None) -> np.ndarray:
    """Row indices (m, B) of the next m mini-batches, B distinct points each; (m, 0) for GD."""
    if rng is None or m == 0:
        return np.zeros((m, 0 if rng is None else B), np.int64)
    return np.stack([rng.choice(n, B, replace=False) for _ in range(m)])


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
    progress: bool = False,
    desc: str = "gradient descent",
    extra_params: dict[str, Any] | None = None,
) -> GDRun:
    """Run θ_{k+1} = θ_k − η ∇L_B(θ_k), recording loss, gradient norm and sharpness.

    Full-batch gradient descent (B = all points) by default; with ``batch_size`` each step
    uses a mini-batch of that many distinct points drawn from ``np.random.default_rng(seed)``
    (SGD). The steps run in Numba chunks (``mlp_gd_advance``); every ``sharpness_every`` steps
    (and after the last step) the top-k eigenvalues of the full-batch Hessian are computed by
    Lanczos on exact Hessian-vector products, warm-started from the previous top eigenvector.

    With ``out`` the run streams to a run file (:func:`nndyn_fast.runs.start_run`, kind
    ``gradient_descent``): series ``trajectory`` (step, loss, grad_norm) and ``sharpness``
    (step, value (k,)), committed every chunk; params sizes, activation, loss, lr,
    two_over_lr, steps, sharpness_every, k, batch_size, seed, sharpness_tol and the inputs
    theta0, X, Y. The checkpoint holds θ, the step, the warm-start vector and (SGD) the
    generator state, so ``resume=True`` continues a killed run to bitwise the result of an
    uninterrupted one, after checking that every parameter and input is the same.

    Parameters
    ----------
    mlp : MLP
    theta0 : array (P,), initial parameters (compared with the file's when resuming).
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
        Most steps per kernel call and per committed chunk (a chunk also ends at each
        sharpness measurement). The results do not depend on it, so a run may be resumed with
        another value.
    out : str or pathlib.Path, optional
        Run file to stream to.
    overwrite, resume : bool
        Replace an existing ``out`` / continue the run stored in ``out``.
    progress : bool
        Report progress on stderr once per chunk (see :mod:`nndyn_fast.progress`).
    desc : str
        The progress report's label.
    extra_params : dict, optional
        JSON-able options stored in the run file's ``/params`` beside the run's own (the
        command line's options); compared on resume like the others.

    Returns
    -------
    GDRun
        With ``out``, the series as stored in the file (the whole run, also after a resume).

    Raises
    ------
    ValueError
        Bad shapes, lr <= 0, steps < 1, k > P, batch_size out of range; ``resume`` without
        ``out`` or with ``overwrite``; a resume whose parameters or inputs differ from the
        file's (the message names the first difference; the file is left untouched).
    NonFiniteStateError
        The loss or gradient became NaN/inf (divergence); the steps before are kept in ``out``
        (status ``failed``).
    """
    from ._validate import check_positive

    mlp = _check_mlp(mlp)
    theta0 = _theta(mlp, theta0, name="theta0")
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
    progress = check_bool("progress", progress)
    resume = check_bool("resume", resume)
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")
    if resume and overwrite:
        raise ValueError("give overwrite or resume, not both")
    if extra_params is not None and not isinstance(extra_params, dict):
        raise TypeError(f"extra_params must be a dict or None, got {type(extra_params).__name__}")
    # every step's loss and gradient norm are kept, and each chunk's mini-batch indices
    n_sharp = steps // sharpness_every + 2 if sharpness_every > 0 else 0
    check_memory(
        f"a run of steps = {steps}",
        16.0 * steps + 8.0 * n_sharp * k + 8.0 * min(chunk_steps, steps) * (batch_size or 0),
    )

    P = mlp.n_params
    theta = theta0.copy()
    v0 = _first_start(P)
    rng = None if batch_size is None else np.random.default_rng(seed)
    step = 0
    run = None
    if out is not None:
        # measurements at 0, e, 2e, ... < steps and at the end
        n_sharp = 0 if sharpness_every == 0 else -(-steps // sharpness_every) + 1
        ck0 = {"theta": theta.copy(), "step": 0, "v0": v0}
        if rng is not None:
            ck0["rng"] = rng_state(rng)
        run = start_run(
            out,
            kind="gradient_descent",
            params={
                "sizes": list(mlp.sizes),
                "activation": mlp.activation,
                "loss": mlp.loss,
                "lr": lr,
                "two_over_lr": gd_threshold(lr),
                "steps": steps,
                "sharpness_every": sharpness_every,
                "k": k,
                "batch_size": batch_size,
                "seed": seed,
                "sharpness_tol": sharpness_tol,
                **(extra_params or {}),
            },
            inputs={"theta0": theta0, "X": X, "Y": Y},
            series={
                "trajectory": {
                    "step": {"dtype": np.int64, "long_name": "gradient descent step"},
                    "loss": {"units": "1", "long_name": f"training loss ({mlp.loss})"},
                    "grad_norm": {"units": "1", "long_name": "gradient norm |grad L|"},
                },
                "sharpness": {
                    "step": {"dtype": np.int64, "long_name": "gradient descent step"},
                    "value": {
                        "shape": (k,),
                        "dims": ("eigenvalue",),
                        "units": "1",
                        "long_name": "top Hessian eigenvalues (sharpness)",
                    },
                },
            },
            description="gradient descent theta <- theta - lr grad L(theta) on an MLP: loss "
            "and gradient norm per step, top Hessian eigenvalues (compare with 2/lr)",
            rows={"trajectory": steps, "sharpness": n_sharp},
            checkpoint=ck0,
            resume=resume,
            overwrite=overwrite,
        )
        ck = run.checkpoint
        theta = np.array(ck["theta"], dtype=np.float64)
        step = int(ck["step"])
        v0 = np.array(ck["v0"], dtype=np.float64)
        if rng is not None:
            rng = restore_rng(ck["rng"])

    rec_loss, rec_gn, sh_step, sh_val = [], [], [], []
    op_args = (mlp._sizes, mlp._code, mlp._loss_code)
    step_seconds = _SECONDS_PER_NP_GRAD * (batch_size or n) * mlp.n_params
    blas_seconds = _block_blas_seconds(mlp)

    def measure(at: int) -> None:
        nonlocal v0
        res = sharpness(mlp, theta, X, Y, k=k, tol=sharpness_tol, v0=v0)
        v0 = res.eigenvectors[:, 0].copy()
        if run is not None:
            run.append("sharpness", step=np.array([at]), value=res.eigenvalues[None, :])
        else:
            sh_step.append(at)
            sh_val.append(res.eigenvalues)

    def commit() -> None:
        ck = {"theta": theta.copy(), "step": step, "v0": v0.copy()}
        if rng is not None:
            ck["rng"] = rng_state(rng)
        run.commit(**ck)

    from .progress import progress_bar

    bar = progress_bar(progress, steps, desc=desc)
    with run if run is not None else nullcontext(), bar:
        while step < steps:
            bar.update(step)
            m = min(chunk_steps, steps - step)
            if sharpness_every > 0:
                if step % sharpness_every == 0:
                    measure(step)
                m = min(m, sharpness_every - step % sharpness_every)
            before = None if rng is None else rng_state(rng)
            batches = _draw_batches(rng, m, n, batch_size)
            lbuf = np.empty(m)
            gbuf = np.empty(m)
            # two parallel regions per step, or none on one thread; BLAS (the layer products
            # of a block of points) on one thread unless a product is large
            with for_work(step_seconds, blas=blas_seconds) as nt:
                done, status = km.mlp_gd_advance(
                    *op_args, theta, X, Y, lr, batches, lbuf, gbuf, nt == 1
                )
            if run is not None:
                run.append(
                    "trajectory",
                    step=np.arange(step, step + done),
                    loss=lbuf[:done],
                    grad_norm=gbuf[:done],
                )
            else:
                rec_loss.append(lbuf[:done])
                rec_gn.append(gbuf[:done])
            step += done
            if status != km.OK:
                if run is not None:
                    if rng is not None:  # the generator as after the `done` good steps
                        rng = restore_rng(before)
                        _draw_batches(rng, done, n, batch_size)
                    commit()
                raise NonFiniteStateError(
                    f"gradient descent diverged: non-finite loss or gradient at step {step} "
                    f"(lr = {lr}, 2/lr = {gd_threshold(lr):.6g}); the steps before are kept",
                    step=step,
                    time=float(step),
                )
            if sharpness_every > 0 and step == steps:
                measure(step)
            if run is not None:
                commit()

    if run is not None:
        with open_run(run.path) as f:
            return GDRun(
                f.read("trajectory", "step"),
                f.read("trajectory", "loss"),
                f.read("trajectory", "grad_norm"),
                f.read("sharpness", "step"),
                f.read("sharpness", "value"),
                lr,
                theta,
                run.path,
            )
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return GDRun(
        np.arange(steps),
        cat(rec_loss),
        cat(rec_gn),
        np.asarray(sh_step, dtype=np.int64),
        np.array(sh_val).reshape(-1, k),
        lr,
        theta,
        None,
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


def _eos_run_name(lr: float) -> str:
    """The run file of learning rate η in :func:`eos_experiment`'s folder: ``eos_lr<η>.h5``
    with η written as its shortest round-trip decimal (``repr``), so distinct rates never share
    a file."""
    return f"eos_lr{float(lr)!r}.h5"


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
    resume: bool = False,
    progress: bool = False,
    extra_params: dict[str, Any] | None = None,
) -> dict[float, GDRun]:
    """Full-batch GD of a tanh MLP on :func:`eos_dataset` for several learning rates.

    Each run records loss, gradient norm and sharpness λ_max (see :func:`gradient_descent`);
    at the edge of stability λ_max rises to 2/η and hovers there while the loss keeps
    decreasing non-monotonically.

    Parameters
    ----------
    lrs : sequence of distinct floats > 0
    n, d : data points and input dimension
    width, depth : hidden width and number of hidden layers of the MLP (d, width×depth, 1)
    steps, sharpness_every : GD steps and spacing of the sharpness measurements
    seed : seed of the data and of the initial parameters (shared by all runs)
    out_dir : folder for one run file per learning rate, optional: ``eos_lr<η>.h5`` with η as
        its shortest round-trip decimal (``repr``), so distinct rates never share a file
    overwrite : replace existing run files.
    resume : continue the experiment in ``out_dir``: each run file there is resumed (after
        :func:`gradient_descent` checks it is the same run; a complete one is only read), and
        the runs without a file (not started when the experiment stopped) are started.
    progress : report each run's progress on stderr (see :mod:`nndyn_fast.progress`).
    extra_params : JSON-able options stored in each run file's ``/params`` (see
        :func:`gradient_descent`).

    Returns
    -------
    dict lr -> GDRun

    Raises
    ------
    ValueError
        A bad option, repeated learning rates, ``resume`` or ``overwrite`` without
        ``out_dir`` or both, an existing run file without either (checked for every rate
        before any run starts), a run file that holds a different run.
    """
    from pathlib import Path

    from ._validate import check_out_path, check_positive

    lrs = [check_positive("lr", lr) for lr in np.atleast_1d(np.asarray(lrs, dtype=float))]
    if not lrs:
        raise ValueError("lrs must hold at least one learning rate")
    if len(set(lrs)) != len(lrs):
        raise ValueError(f"lrs must be distinct, got {lrs}")
    width = check_int("width", width, minimum=1)
    depth = check_int("depth", depth, minimum=1)
    overwrite = check_bool("overwrite", overwrite)
    progress = check_bool("progress", progress)
    resume = check_bool("resume", resume)
    if resume and overwrite:
        raise ValueError("give overwrite or resume, not both")
    d_in = check_int("d", d, minimum=3)
    n_par = width * (d_in + 1) + (depth - 1) * width * (width + 1) + width + 1
    check_memory(f"an MLP of depth {depth} and width {width} ({n_par} parameters)", 24.0 * n_par)
    X, Y = eos_dataset(n, d, seed)
    mlp = MLP((d,) + (width,) * depth + (1,), "tanh", "mse")
    theta0 = mlp.init(seed)
    paths: dict[float, Path | None] = dict.fromkeys(lrs)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if not out_dir.is_dir():
            raise ValueError(f"out_dir: folder {str(out_dir)!r} does not exist")
        paths = {lr: out_dir / _eos_run_name(lr) for lr in lrs}
        for p in paths.values():
            check_out_path("out", p, overwrite=overwrite or resume)
    elif resume:
        raise ValueError("resume=True needs out_dir, the folder of the run files to continue")
    runs = {}
    for lr in lrs:
        out = paths[lr]
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
            resume=resume and out is not None and out.exists(),
            progress=progress,
            desc=f"lr = {lr:g}",
            extra_params=extra_params,
        )
    return runs


def check_runs(runs: Any) -> None:
    """Raise TypeError unless ``runs`` is ``{lr: GDRun}`` (as :func:`eos_experiment` returns)."""
    if not isinstance(runs, dict) or not all(isinstance(r, GDRun) for r in runs.values()):
        raise TypeError(
            f"runs must be a dict {{lr: GDRun}} (from eos_experiment), got {runs!r:.80}"
        )


def eos_summary(runs: dict[float, GDRun]) -> str:
    """A text table of edge-of-stability runs, one line per learning rate η: 2/η, the
    sharpness at the first and last measurement, the mean of the late half of the sharpness
    series over 2/η (≈ 1 at the edge of stability), and the final loss."""
    check_runs(runs)
    lines = [
        f"{'lr':>8} {'2/lr':>9} {'λ_max(0)':>9} {'λ_max end':>9} {'late mean/(2/lr)':>17} "
        f"{'loss end':>10}"
    ]
    for lr, run in sorted(runs.items()):
        s = run.sharpness[:, 0] if run.sharpness.size else np.array([np.nan])
        late = s[len(s) // 2 :] / run.two_over_lr
        loss_end = run.loss[-1] if run.loss.size else np.nan
        lines.append(
            f"{lr:8.4g} {run.two_over_lr:9.4g} {s[0]:9.4g} {s[-1]:9.4g} {late.mean():17.3f} "
            f"{loss_end:10.3e}"
        )
    return "\n".join(lines)
