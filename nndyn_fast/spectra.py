"""Spectra of coupling operators and the critical couplings of the incoherent state.

The coupling operator of a network of N nodes is T = W/N, (T a)_i = (1/N) Σ_j W_ij a_j. For a
graphon or digraph measure discretised at positions x_i with node weights μ_j
(W_ij = w(x_i, x_j) μ_j) it is the quadrature of the integral operator

    (T f)(x) = ∫ w(x, y) f(y) dμ(y),

so its eigenvalues converge to those of the operator as N grows. :func:`coupling_spectrum`
finds a few of them by implicitly restarted Lanczos (symmetric T, ARPACK ``dsaupd``) or Arnoldi
(directed T, ``dnaupd``) on the matrix-free product of :mod:`nndyn_fast.kernels.kuramoto`
(O(N) work for the built-in graphons, O(N^2) for user functions, O(N) memory for both), so it
runs at N = 10^5 without forming W. The Krylov basis holds ``ncv = max(2k + 1, 20)`` vectors
of N: memory O(k N).

:func:`critical_coupling` turns the leading eigenvalue into the coupling at which the
incoherent state of Kuramoto oscillators loses stability.

References
----------
R. B. Lehoucq, D. C. Sorensen, C. Yang, "ARPACK users' guide", SIAM (1998).
G. S. Medvedev, "The nonlinear heat equation on dense graphs and graph limits", SIAM J. Math.
Anal. 46 (2014); H. Chiba, G. S. Medvedev, "The mean field analysis of the Kuramoto model on
graphs I", Discrete Contin. Dyn. Syst. 39 (2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._validate import (
    check_bool,
    check_int,
    check_memory,
    check_nonnegative,
    check_option,
    check_positive,
    check_seed,
    check_size,
)
from .graphs import DigraphMeasure, Graphon
from .kernels import kuramoto as kk
from .meanfield import Coupling, _threads

__all__ = [
    "CouplingSpectrum",
    "coupling_spectrum",
    "critical_coupling",
    "coupling_operator",
    "graphon_eigenvalues",
    "save_spectrum",
]

WHICH = ("largest", "smallest", "both")
SPECTRUM_METHODS = ("auto", "krylov", "dense")
# graphons whose kernel is symmetric, w(x, y) = w(y, x)
_SYMMETRIC_GRAPHONS = ("constant", "small_world", "power_law")
# below this size "auto" takes the dense eigensolver (ARPACK needs k < N - 1 anyway)
_DENSE_BELOW = 64


@dataclass(frozen=True)
class CouplingSpectrum:
    """Result of :func:`coupling_spectrum`.

    Attributes
    ----------
    eigenvalues : array (k,) (2k for ``which="both"``), float for a symmetric operator, complex
        for a directed one; in decreasing order (of the real part), ``"smallest"``: increasing.
    eigenvectors : array (N, k) or None
        Graphs: unit Euclidean norm. Graphons and digraph measures: the eigenfunctions at the
        nodes, normalised in L²(μ): (1/N) Σ_j μ_j abs(φ(x_j))² = 1.
    symmetric : whether the operator was treated as symmetric (Lanczos) or not (Arnoldi).
    method : "lanczos", "arnoldi" or "dense".
    n : number of nodes N.
    n_matvec : products with the operator (dense: 0).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None
    symmetric: bool
    method: str
    n: int
    n_matvec: int

    @property
    def lambda_max(self) -> float:
        """The largest eigenvalue (directed: the largest real part) among those found."""
        return float(np.max(np.real(self.eigenvalues)))


class _Operator:
    """The product a ↦ T a = (1/N) W a of a coupling, matrix-free."""

    def __init__(self, coupling: Any, n: int | None, symmetric: bool | None):
        self.scale = None  # √μ of a symmetrised digraph measure
        self.graphon = isinstance(coupling, (Graphon, DigraphMeasure))
        if isinstance(coupling, Coupling):
            c = coupling
            sym = _coupling_symmetric(c) if symmetric is None else symmetric
            self.graphon = c.kind in (kk.STRUCTURED, kk.PAIRWISE)
            self.mu = c.cp[5] if self.graphon else None
        elif self.graphon:
            meas = coupling
            if isinstance(coupling, Graphon):
                if n is None:
                    raise ValueError("a Graphon needs n, the number of grid points x_i = i/N")
                meas = DigraphMeasure(coupling, check_size("n", n, item_bytes=200))
            elif n is not None and n != meas.n:
                raise ValueError(f"n = {n} differs from the digraph measure's {meas.n} nodes")
            sym = _graphon_symmetric(meas.w) if symmetric is None else symmetric
            self.mu = meas.mu
            if sym and np.any(meas.mu != 1.0):
                # T = w diag(μ)/N is similar to the symmetric diag(√μ) w diag(√μ)/N
                self.scale = np.sqrt(meas.mu)
                meas = DigraphMeasure(meas.w, meas.x)
            c = Coupling(meas, meas.n)
        else:
            if sp.issparse(coupling):
                size = coupling.shape[0]
            else:
                coupling = np.asarray(coupling)
                if coupling.ndim != 2:
                    raise ValueError(
                        "coupling must be a square matrix, a sparse matrix, a Graphon or a "
                        f"DigraphMeasure, got an array of shape {coupling.shape}"
                    )
                size = coupling.shape[0]
            if n is not None and n != size:
                raise ValueError(f"n = {n} differs from the coupling's {size} rows")
            if size < 1:
                raise ValueError("coupling must have at least one node")
            c = Coupling(coupling, size)
            sym = _coupling_symmetric(c) if symmetric is None else symmetric
            self.mu = None
        self.c, self.n, self.symmetric = c, c.n, bool(sym)
        self.sa, self.sb = np.empty(self.n), np.empty(self.n)
        self.count = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(np.ravel(v), dtype=np.float64)
        if self.scale is not None:
            a = a * self.scale
        c = self.c
        kk.coupling_sums(c.kind, c.cp, c.wfun, a, a, False, self.sa, self.sb)
        self.count += 1
        out = self.sa * (1.0 / self.n)
        if self.scale is not None:
            out *= self.scale
        return out

    def dense(self) -> np.ndarray:
        """T as a dense (N, N) array (the symmetrised form when ``scale`` is set)."""
        check_memory(f"the dense coupling operator of N = {self.n}", 16.0 * self.n * self.n)
        c = self.c
        if c.kind == kk.DENSE:
            A = np.array(c.cp[0], dtype=np.float64)
        elif c.kind == kk.CSR:
            A = sp.csr_matrix((c.cp[3], c.cp[2], c.cp[1]), shape=(self.n, self.n)).toarray()
        else:
            A = c.measure.matrix()
        A /= self.n
        if self.scale is not None:
            A *= self.scale[:, None] * self.scale[None, :]
        return A


def _graphon_symmetric(w: Graphon) -> bool:
    if w.name in _SYMMETRIC_GRAPHONS:
        return True
    if w.name != "user":
        return False
    # a user kernel: compare w(x, y) with w(y, x) on fixed pseudo-random pairs
    xy = np.random.default_rng(0).random((2, 256))
    a, b = w(xy[0], xy[1]), w(xy[1], xy[0])
    return bool(np.allclose(a, b, rtol=1e-12, atol=0.0))


def _coupling_symmetric(c: Coupling) -> bool:
    if c.kind == kk.DENSE:
        W = c.cp[0]
        return bool(np.array_equal(W, W.T))
    if c.kind == kk.CSR:
        A = sp.csr_matrix((c.cp[3], c.cp[2], c.cp[1]), shape=(c.n, c.n))
        return (A - A.T).count_nonzero() == 0
    return _graphon_symmetric(c.measure.w) and bool(np.all(c.measure.mu == c.measure.mu[0]))


def coupling_operator(coupling: Any, *, n: int | None = None) -> Any:
    """The coupling operator T = W/N as a ``scipy.sparse.linalg.LinearOperator`` (matrix-free).

    ``coupling`` as for :func:`coupling_spectrum`; the product is the kernels' own interaction
    sum, O(N) work for the built-in graphons, O(edges) for sparse and O(N^2) for dense or
    user-function couplings.
    """
    from scipy.sparse.linalg import LinearOperator

    op = _Operator(coupling, n, False)  # the plain W/N (no symmetrisation)
    return LinearOperator((op.n, op.n), matvec=op, dtype=np.float64)


def coupling_spectrum(
    coupling: Any,
    k: int = 6,
    which: str = "largest",
    vectors: bool = False,
    *,
    n: int | None = None,
    method: str = "auto",
    symmetric: bool | None = None,
    tol: float = 1e-12,
    maxiter: int | None = None,
    seed: int = 0,
) -> CouplingSpectrum:
    """A few eigenvalues λ (and eigenvectors) of the coupling operator T = W/N.

    For a graph, T a = (1/N) W a; for a graphon w discretised on x_i = i/N (or a digraph
    measure with positions x_i and node weights μ_j), T is the quadrature of the integral
    operator (T f)(x) = ∫ w(x, y) f(y) dμ(y), whose spectrum it approximates: e.g. the ring
    graphon w = 1[dist(x, y) ≤ r] has eigenvalues 2r (constant mode) and sin(2πkr)/(πk),
    k ≥ 1, each twice (cos and sin modes), up to O(1/N) quadrature error.

    Parameters
    ----------
    coupling : array (N, N), scipy.sparse matrix, Graphon, DigraphMeasure or meanfield.Coupling
        W_ij = weight of the edge j → i.
    k : int
        Number of eigenvalues from each requested end (1 <= k; Krylov: k < N - 1).
    which : "largest", "smallest" or "both"
        Largest or smallest algebraic eigenvalues (directed: by real part); "both" gives k of
        each, 2k values in decreasing order.
    vectors : bool
        Also return the eigenvectors (N, k).
    n : int, optional
        Number of grid points for a :class:`Graphon` (required there; checked otherwise).
    method : "auto", "krylov" or "dense"
        ARPACK Lanczos/Arnoldi on the matrix-free product, or LAPACK on the dense matrix
        (O(N^2) memory). "auto": dense below N = 64, Krylov above.
    symmetric : bool, optional
        Treat T as symmetric (Lanczos) or not (Arnoldi). Default: dense/sparse W compared with
        Wᵀ exactly; built-in graphons by kind (``directed_ring`` is not symmetric); a user
        graphon function by w(x, y) = w(y, x) on 256 fixed pairs. A symmetric kernel with
        unequal node weights μ is handled through the similar symmetric operator
        diag(√μ) w diag(√μ) / N.
    tol : float
        Relative accuracy asked of ARPACK (> 0).
    maxiter : int, optional
        ARPACK restarts (default ARPACK's 10 N).
    seed : int
        Seed of the starting vector.

    Returns
    -------
    CouplingSpectrum

    Raises
    ------
    ValueError
        Bad k, which, method or tol; a Graphon without n; a non-square W.
    scipy.sparse.linalg.ArpackNoConvergence
        The Krylov iteration did not converge within ``maxiter``.
    """
    k = check_int("k", k, minimum=1)
    check_option("which", which, WHICH)
    vectors = check_bool("vectors", vectors)
    check_option("method", method, SPECTRUM_METHODS)
    if symmetric is not None:
        symmetric = check_bool("symmetric", symmetric)
    tol = check_positive("tol", tol)
    seed = check_seed("seed", seed)
    if maxiter is not None:
        maxiter = check_int("maxiter", maxiter, minimum=1)
    op = _Operator(coupling, n, symmetric)
    N = op.n
    ends = 2 * k if which == "both" else k
    if ends > N:
        raise ValueError(f"k must be <= N = {N} (which={which!r} asks {ends} eigenvalues)")
    if method == "auto":
        method = "dense" if N < _DENSE_BELOW else "krylov"
    if method == "krylov" and k >= N - 1:
        raise ValueError(f"k must be < N - 1 = {N - 1} for method='krylov', got {k}")
    with _threads(op.c):
        if method == "dense":
            vals, vecs, name = _dense(op, k, which, vectors)
        else:
            vals, vecs, name = _krylov(op, k, which, vectors, tol, maxiter, seed)
            if vals is None:  # T v0 = 0 (see _arpack): the dense solver
                vals, vecs, name = _dense(op, k, which, vectors)
    if vecs is not None:
        vecs = _normalise(op, vecs)
    return CouplingSpectrum(vals, vecs, op.symmetric, name, N, op.count)


def _order(vals: np.ndarray, which: str) -> np.ndarray:
    key = np.real(vals)
    # ties in the real part (complex pairs): positive imaginary part first
    order = (
        np.lexsort((-np.imag(vals), -key))
        if which != "smallest"
        else np.lexsort((-np.imag(vals), key))
    )
    return order


def _select(vals: np.ndarray, vecs: np.ndarray | None, k: int, which: str):
    if which == "both":
        dec = _order(vals, "largest")
        idx = np.concatenate([dec[:k], dec[len(dec) - k :]])
        idx = idx[_order(vals[idx], "largest")]
    else:
        idx = _order(vals, which)[:k]
    return vals[idx], None if vecs is None else vecs[:, idx]


def _dense(op: _Operator, k: int, which: str, vectors: bool):
    import scipy.linalg as sla

    A = op.dense()
    if op.symmetric:
        vals, vecs = sla.eigh(A) if vectors else (sla.eigvalsh(A), None)
    else:
        vals, vecs = sla.eig(A, right=vectors) if vectors else (sla.eigvals(A), None)
    vals, vecs = _select(vals, vecs, k, which)
    return vals, vecs, "dense"


def _krylov(op: _Operator, k: int, which: str, vectors: bool, tol, maxiter, seed):
    from scipy.sparse.linalg import LinearOperator, eigs, eigsh

    N = op.n
    L = LinearOperator((N, N), matvec=op, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(N)
    if op.symmetric:
        mode = {"largest": ("LA", k), "smallest": ("SA", k), "both": ("BE", 2 * k)}[which]
        if mode[1] >= N:  # BE with 2k = N: ARPACK needs fewer; take the ends separately
            mode = None
        runs = [mode] if mode is not None else [("LA", k), ("SA", k)]
        found = []
        for w, kk_ in runs:
            kw = dict(k=kk_, which=w, tol=tol, maxiter=maxiter, v0=v0)
            found.append(_arpack(eigsh, L, kw, vectors))
        name = "lanczos"
    else:
        runs = {"largest": ["LR"], "smallest": ["SR"], "both": ["LR", "SR"]}[which]
        found = []
        for w in runs:
            kw = dict(k=k, which=w, tol=tol, maxiter=maxiter, v0=v0)
            got = _arpack(eigs, L, kw, vectors)
            found.append(None if got is None else _pair_members(got))
        name = "arnoldi"
    if any(f is None for f in found):
        return None, None, name
    if vectors:
        vals = np.concatenate([f[0] for f in found])
        vecs = np.concatenate([f[1] for f in found], axis=1)
    else:
        vals, vecs = np.concatenate(found), None
    if not op.symmetric and np.all(np.abs(np.imag(vals)) == 0):
        vals = vals.astype(complex)
    vals, vecs = _select(vals, vecs, k, which)
    return vals, vecs, name


def _arpack(solver: Any, L: Any, kw: dict, vectors: bool) -> Any:
    """One ARPACK run; None where the first product is zero (ARPACK's error -9: T v0 = 0, an
    invariant subspace at once, e.g. W = 0), which the caller solves densely."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence

    try:
        return solver(L, return_eigenvectors=vectors, **kw)
    except ArpackNoConvergence:
        raise
    except ArpackError as exc:
        if "error -9:" in str(exc):
            return None
        raise


def _pair_members(found: Any) -> Any:
    """A real operator's complex eigenvalues come in conjugate pairs (with conjugate vectors):
    where ARPACK's k values cut a pair, report the member with positive imaginary part."""
    vals = np.array(found[0] if isinstance(found, tuple) else found, dtype=complex)
    vecs = np.array(found[1]) if isinstance(found, tuple) else None
    for j, lam in enumerate(vals):
        if lam.imag < 0 and not np.any(np.isclose(vals, np.conj(lam), rtol=1e-8, atol=0.0)):
            vals[j] = np.conj(lam)
            if vecs is not None:
                vecs[:, j] = np.conj(vecs[:, j])
    return (vals, vecs) if vecs is not None else vals


def _normalise(op: _Operator, vecs: np.ndarray) -> np.ndarray:
    vecs = np.array(vecs)
    if op.scale is not None:  # eigenvectors of the symmetrised operator: φ = y / √μ
        with np.errstate(divide="ignore", invalid="ignore"):
            vecs = np.where(op.scale[:, None] > 0, vecs / op.scale[:, None], 0.0)
    if op.graphon:
        mu = op.mu[:, None]
        norm = np.sqrt(np.sum(mu * np.abs(vecs) ** 2, axis=0) / op.n)
    else:
        norm = np.linalg.norm(vecs, axis=0)
    return vecs / np.where(norm > 0, norm, 1.0)


OMEGA = ("identical", "lorentzian")


def critical_coupling(
    coupling: Any,
    noise: float | None = None,
    omega: str | None = None,
    gamma: float | None = None,
    *,
    n: int | None = None,
    spectrum: CouplingSpectrum | None = None,
) -> float:
    """The coupling K_c at which the incoherent state of Kuramoto oscillators loses stability.

    dθ_i = [ω_i + (K/N) Σ_j W_ij sin(θ_j − θ_i)] dt + σ dB_i. Linearising the mean-field
    (Fokker–Planck / Ott–Antonsen) equation of the graph limit about the uniform density, the
    first Fourier mode z(x) = ∫ e^{iθ} ρ(θ, ω, x) dθ dω obeys, for Lorentzian frequencies of
    half-width γ (centre ω_0) and noise intensity D = σ²/2,

        ∂_t z = (iω_0 − γ − D) z + (K/2) T z,

    so the mode along the eigenfunction of T with eigenvalue λ grows iff K λ / 2 > γ + D:

        K_c = (2γ + σ²) / λ_max,

    i.e. K_c = σ²/λ_max for identical oscillators with noise and K_c = 2γ/λ_max for Lorentzian
    frequencies without noise (all-to-all, λ_max = 1: the classic 2γ and σ²).

    Assumptions: N → ∞ limit (finite N shifts the onset by O(N^{-1/2})); frequencies
    independent of the node position; the coupling enters as sin (no phase lag). λ_max is the
    largest eigenvalue of the symmetric operator T; for a directed coupling it is the
    eigenvalue with the largest real part (the onset is then oscillatory when its imaginary part
    is nonzero, and non-normality can make transients grow earlier). λ_max <= 0 gives
    K_c = inf (incoherence is linearly stable for every K >= 0).

    Parameters
    ----------
    coupling : as for :func:`coupling_spectrum`
    noise : float, optional
        σ >= 0 (default 0).
    omega : "identical" or "lorentzian", optional
        The frequency distribution (default: "lorentzian" when gamma is given, else
        "identical").
    gamma : float, optional
        Half-width γ > 0 of the Lorentzian frequencies (required with omega="lorentzian").
    n : int, optional
        Grid points of a Graphon.
    spectrum : CouplingSpectrum, optional
        A spectrum already computed (its lambda_max is used; coupling is then not evaluated).

    Returns
    -------
    float
        K_c (inf when λ_max <= 0).

    Raises
    ------
    ValueError
        σ < 0, γ <= 0, gamma with omega="identical", omega="lorentzian" without gamma,
        identical oscillators without noise (K_c = 0), an unknown omega.
    """
    sigma = 0.0 if noise is None else check_nonnegative("noise", noise)
    if omega is None:
        omega = "identical" if gamma is None else "lorentzian"
    check_option("omega", omega, OMEGA)
    if omega == "lorentzian":
        if gamma is None:
            raise ValueError("omega='lorentzian' needs gamma, the half-width of the frequencies")
        g = check_positive("gamma", gamma)
    else:
        if gamma is not None:
            raise ValueError("gamma is the Lorentzian half-width: it needs omega='lorentzian'")
        if sigma == 0.0:
            raise ValueError(
                "identical oscillators without noise synchronise for every K > 0 (K_c = 0); "
                "give noise > 0 or Lorentzian frequencies (gamma)"
            )
        g = 0.0
    if spectrum is None:
        spectrum = coupling_spectrum(coupling, k=1, which="largest", n=n)
    elif not isinstance(spectrum, CouplingSpectrum):
        raise TypeError(f"spectrum must be a CouplingSpectrum, got {type(spectrum).__name__}")
    lam = spectrum.lambda_max
    if lam <= 0.0:
        return float("inf")
    return (2.0 * g + sigma**2) / lam


# -- closed forms and run files ------------------------------------------------------------------


def graphon_eigenvalues(w: Graphon, k: int = 6, which: str = "largest") -> np.ndarray:
    """Eigenvalues of the integral operator (T f)(x) = ∫_0^1 w(x, y) f(y) dy of a built-in
    graphon, in closed form (the N → ∞ values that :func:`coupling_spectrum` approaches).

    - constant p: p (constant mode), then 0 (every other mode);
    - small-world(r, p), w = p + (1 − 2p) 1[dist(x, y) ≤ r] (the ring graphon at p = 0), a
      circulant on the circle, with Fourier modes e^{2πimx}: p + (1 − 2p) 2r (m = 0) and
      (1 − 2p) sin(2πmr)/(πm) for m ≥ 1, each twice (cos and sin), with r capped at 1/2;
    - power-law (x y)^−γ = u(x) u(y), rank one: ∫ u² = 1/(1 − 2γ) for γ < 1/2 (for γ >= 1/2
      the operator is unbounded: inf), then 0;
    - directed ring 1[0 < (y − x) mod 1 ≤ r], a directed circulant: r (m = 0) and
      (e^{2πimr} − 1)/(2πim) for m ≠ 0 (complex: conjugate pairs).

    Parameters
    ----------
    w : Graphon
        A built-in graphon (a user function has no closed form: ValueError).
    k : int
        Number of eigenvalues from each requested end.
    which : "largest", "smallest" or "both"
        As for :func:`coupling_spectrum`: ordered alike (by the real part), so the two arrays
        compare entry by entry.

    Returns
    -------
    array (k,) or (2k,): float (complex for the directed ring).
    """
    k = check_int("k", k, minimum=1)
    check_memory(f"k = {k} closed-form eigenvalues", 96.0 * (4 * k + 64))
    check_option("which", which, WHICH)
    if not isinstance(w, Graphon):
        raise TypeError(f"w must be a Graphon, got {type(w).__name__}")
    m = np.arange(1, 4 * k + 64, dtype=np.float64)
    if w.name == "constant":
        vals = np.concatenate([[w.params[0]], np.zeros(2 * k)])
    elif w.name == "small_world":
        r, p = min(w.params[0], 0.5), w.params[1]
        modes = (1 - 2 * p) * np.sin(2 * np.pi * m * r) / (np.pi * m)
        vals = np.concatenate([[p + (1 - 2 * p) * 2 * r], np.repeat(modes, 2)])
    elif w.name == "power_law":
        g = w.params[0]
        top = 1.0 / (1.0 - 2.0 * g) if g < 0.5 else np.inf
        vals = np.concatenate([[top], np.zeros(2 * k)])
    elif w.name == "directed_ring":
        r = min(w.params[0], 1.0)
        mm = np.concatenate([m, -m])
        modes = (np.exp(2j * np.pi * mm * r) - 1) / (2j * np.pi * mm)
        vals = np.concatenate([[complex(r)], modes])
    else:
        raise ValueError(f"graphon {w.name!r} has no closed-form spectrum (a user function)")
    return _select(vals, None, k, which)[0]


SPECTRUM_KIND = "coupling_spectrum"


def _spectrum_series(n_vals: int, n: int, vectors: bool) -> dict:
    rank = {"dtype": np.int64, "coord": True, "long_name": "position j in the list (1 = first)"}
    spec: dict[str, Any] = {
        "eigenvalues": {
            "rank": rank,
            "value": {
                "shape": (2,),
                "dims": ("part",),
                "units": "1",
                "long_name": "eigenvalue lambda_j of the coupling operator W/N: Re, Im",
            },
            "reference": {
                "shape": (2,),
                "dims": ("part",),
                "units": "1",
                "long_name": "closed-form eigenvalue of the graph limit (NaN: none known): Re, Im",
            },
        }  # fmt: skip
    }
    if vectors:
        spec["eigenvectors"] = {
            "rank": rank,
            "value": {"shape": (2, n), "dims": ("part", "node"), "units": "1",
                      "long_name": "eigenvector of lambda_j at the nodes (graph limits: L2(mu) "
                      "normalised): Re, Im"},
        }  # fmt: skip
    return spec


def save_spectrum(
    spectrum: CouplingSpectrum,
    out: str | Any,
    *,
    reference: Any = None,
    noise: float | None = None,
    gamma: float | None = None,
    params: dict[str, Any] | None = None,
    x: np.ndarray | None = None,
    overwrite: bool = False,
) -> str:
    """Write a spectrum (and the critical couplings it gives) to a run file of kind
    ``coupling_spectrum`` (through :func:`nndyn_fast.runs.start_run`).

    Series ``eigenvalues`` (rank, value (2,) = (Re λ, Im λ), reference (2,): ``reference``
    or NaN) and, where the spectrum holds them, ``eigenvectors`` (rank, value (2, N)); the
    summary holds lambda_max and the critical couplings of :func:`critical_coupling` for
    ``noise`` (identical oscillators, K_c = σ²/λ_max) and ``gamma`` (Lorentzian, K_c =
    (2γ + σ²)/λ_max) where given.

    Parameters
    ----------
    spectrum : CouplingSpectrum
    out : the run file.
    reference : array, optional
        Closed-form eigenvalues in the spectrum's order (e.g. :func:`graphon_eigenvalues`).
    noise, gamma : float, optional
        σ >= 0 and the Lorentzian half-width γ > 0 (as for :func:`critical_coupling`).
    params : dict, optional
        What the coupling was (stored in ``/params`` beside the spectrum's own).
    x : array (N,), optional
        The nodes' positions (the ``node`` axis' coordinate values).
    overwrite : replace an existing ``out``.

    Returns
    -------
    str: the path written.
    """
    from .runs import start_run

    if not isinstance(spectrum, CouplingSpectrum):
        raise TypeError(f"spectrum must be a CouplingSpectrum, got {type(spectrum).__name__}")
    overwrite = check_bool("overwrite", overwrite)
    vals = np.asarray(spectrum.eigenvalues)
    ref = np.full(vals.shape, np.nan, dtype=complex)
    if reference is not None:
        r = np.asarray(reference, dtype=complex).ravel()[: vals.size]
        ref[: r.size] = r
    summary: dict[str, Any] = {"lambda_max": spectrum.lambda_max}
    if noise is not None:
        noise = check_nonnegative("noise", noise)
        if noise > 0:
            summary["K_c_identical"] = critical_coupling(None, noise, spectrum=spectrum)
    if gamma is not None:
        gamma = check_positive("gamma", gamma)
        summary["K_c_lorentzian"] = critical_coupling(None, noise, "lorentzian", gamma,
                                                      spectrum=spectrum)  # fmt: skip
    run_params = {**(params or {}), "N": spectrum.n, "k_found": int(vals.size),
                  "symmetric": spectrum.symmetric, "method": spectrum.method,
                  "n_matvec": spectrum.n_matvec, "noise": noise, "gamma": gamma}  # fmt: skip
    vecs = spectrum.eigenvectors
    series = _spectrum_series(vals.size, spectrum.n, vecs is not None)
    coords: dict[str, Any] = {"eigenvalues": {"part": (["re", "im"], "1", "real and imaginary "
                                                        "part")}}  # fmt: skip
    if vecs is not None:
        node = np.arange(spectrum.n, dtype=np.float64) if x is None else np.asarray(x, float)
        what = "node index" if x is None else "node position x"
        coords["eigenvectors"] = {"part": (["re", "im"], "1", "real and imaginary part"),
                                  "node": (node, "1", what)}  # fmt: skip
    rows = {s: int(vals.size) for s in series}
    run = start_run(
        out, kind=SPECTRUM_KIND, params=run_params, series=series, rows=rows,
        checkpoint={"done": 0}, coords=coords, overwrite=overwrite,
        description="eigenvalues of the coupling operator W/N of a network or graph limit "
        "(largest/smallest by real part), beside their closed form where known; the summary "
        "holds lambda_max and the critical couplings of the incoherent state",
    )  # fmt: skip
    with run:
        rank = np.arange(1, vals.size + 1, dtype=np.int64)
        run.append("eigenvalues", rank=rank, value=np.stack([vals.real, np.imag(vals)], axis=1),
                   reference=np.stack([ref.real, ref.imag], axis=1))  # fmt: skip
        if vecs is not None:
            v = np.asarray(vecs).T
            run.append("eigenvectors", rank=rank,
                       value=np.stack([v.real, np.imag(v)], axis=1))  # fmt: skip
        run.commit(done=1)
        run.summarize(**summary)
    return str(run.path)
