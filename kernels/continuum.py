"""Continuum (mean-field) limits of Kuramoto networks: the graphon Ott–Antonsen equation and the
Fokker–Planck equation in Fourier modes.

- :func:`oa_advance`: RK4 steps of the graphon Ott–Antonsen equation on a quadrature grid,

      ∂_t z_i = (iω_0 − γ) z_i + (K/2) [h_i − z_i² conj(h_i)],   h_i = (1/N) Σ_j W_ij z_j,

  the sums h from the matrix-free interaction of :mod:`~nndyn_fast.kernels.kuramoto`
  (``coupling_sums`` on Re z and Im z in one pass; W real, so W z̄ = conj(W z)).
- :func:`fp_advance`: ETDRK4 steps (Cox–Matthews, coefficients by Kassam–Trefethen contour
  integrals, computed by the caller) of the moments z_n = ∫ e^{inθ} ρ dθ, n = 1..M, of the
  all-to-all noisy identical-oscillator Fokker–Planck equation
  ∂_t ρ = −∂_θ(ρ v) + D ∂_θθ ρ, v = ω_0 + K_eff Im(Z e^{−iθ}), Z = z_1:

      dz_n/dt = (i n ω_0 − D n²) z_n + (n K_eff / 2) (Z z_{n−1} − conj(Z) z_{n+1}),

  z_0 = 1, z_{M+1} = 0. The stiff diagonal part is integrated exactly.

Both record r = |Z|, ψ = arg Z every step (OA: Z = Σ μ_j z_j / Σ μ_j).

References
----------
E. Ott, T. M. Antonsen, "Low dimensional behavior of large systems of globally coupled
oscillators", Chaos 18 (2008). S. M. Cox, P. C. Matthews, "Exponential time differencing for
stiff systems", J. Comput. Phys. 176 (2002). A.-K. Kassam, L. N. Trefethen, "Fourth-order
time-stepping for stiff PDEs", SIAM J. Sci. Comput. 26 (2005).
"""

import math

import numpy as np
from numba import njit, prange

from .control import NONFINITE, OK
from .kuramoto import coupling_sums


@njit(cache=True, parallel=True)
def _oa_rhs(z, gamma, omega0, halfK, invn, kind, cp, wfun, a, b, sa, sb, out):
    n = z.shape[0]
    for i in prange(n):
        a[i] = z[i].real
        b[i] = z[i].imag
    coupling_sums(kind, cp, wfun, a, b, True, sa, sb)
    lin = complex(-gamma, omega0)
    for i in prange(n):
        h = complex(sa[i] * invn, sb[i] * invn)
        zi = z[i]
        out[i] = lin * zi + halfK * (h - zi * zi * h.conjugate())


@njit(cache=True)
def _weighted_mean(z, mu, musum):
    s = 0.0 + 0.0j
    for j in range(z.shape[0]):
        s += mu[j] * z[j]
    return s / musum


@njit(cache=True, parallel=True)
def _axpy(y, h, k, out):
    for i in prange(y.shape[0]):
        out[i] = y[i] + h * k[i]


@njit(cache=True)
def _all_finite_c(z):
    for i in range(z.shape[0]):
        if not (math.isfinite(z[i].real) and math.isfinite(z[i].imag)):
            return False
    return True


@njit(cache=True)
def oa_advance(
    z, gamma, omega0, K, dt, n_steps, save_every, step0, kind, cp, wfun, mu, frames, obs
):
    """``n_steps`` RK4 steps of the graphon Ott–Antonsen equation, in place on ``z`` (N,).

    ``obs[s] = (r, ψ)`` after step s; ``frames[f] = (Re z, Im z)`` (2, N) after every step
    whose global number (``step0`` + s + 1) is a multiple of ``save_every``. Returns
    ``(steps done, frames written, status)``; on a non-finite state ``z`` keeps the last
    finite value and status is NONFINITE.
    """
    n = z.shape[0]
    invn = 1.0 / n
    halfK = 0.5 * K
    musum = 0.0
    for j in range(n):
        musum += mu[j]
    a = np.empty(n)
    b = np.empty(n)
    sa = np.empty(n)
    sb = np.empty(n)
    k1 = np.empty(n, np.complex128)
    k2 = np.empty(n, np.complex128)
    k3 = np.empty(n, np.complex128)
    k4 = np.empty(n, np.complex128)
    y = np.empty(n, np.complex128)
    znew = np.empty(n, np.complex128)
    nf = 0
    for s in range(n_steps):
        _oa_rhs(z, gamma, omega0, halfK, invn, kind, cp, wfun, a, b, sa, sb, k1)
        _axpy(z, 0.5 * dt, k1, y)
        _oa_rhs(y, gamma, omega0, halfK, invn, kind, cp, wfun, a, b, sa, sb, k2)
        _axpy(z, 0.5 * dt, k2, y)
        _oa_rhs(y, gamma, omega0, halfK, invn, kind, cp, wfun, a, b, sa, sb, k3)
        _axpy(z, dt, k3, y)
        _oa_rhs(y, gamma, omega0, halfK, invn, kind, cp, wfun, a, b, sa, sb, k4)
        for i in range(n):
            znew[i] = z[i] + (dt / 6.0) * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])
        if not _all_finite_c(znew):
            return s, nf, NONFINITE
        z[:] = znew
        Z = _weighted_mean(z, mu, musum)
        obs[s, 0] = abs(Z)
        obs[s, 1] = math.atan2(Z.imag, Z.real)
        if (step0 + s + 1) % save_every == 0:
            for i in range(n):
                frames[nf, 0, i] = z[i].real
                frames[nf, 1, i] = z[i].imag
            nf += 1
    return n_steps, nf, OK


@njit(cache=True)
def _fp_nonlinear(z, halfK, out):
    # (n K/2)(Z z_{n-1} − conj(Z) z_{n+1}) for n = 1..M (index n − 1), z_0 = 1, z_{M+1} = 0
    m = z.shape[0]
    Z = z[0]
    Zc = Z.conjugate()
    for i in range(m):
        nn = i + 1
        lower = 1.0 + 0.0j if i == 0 else z[i - 1]
        upper = z[i + 1] if i + 1 < m else 0.0 + 0.0j
        out[i] = nn * halfK * (Z * lower - Zc * upper)


@njit(cache=True)
def fp_advance(z, E, E2, Q, f1, f2, f3, K, n_steps, save_every, step0, frames, obs):
    """``n_steps`` ETDRK4 steps of the Fokker–Planck moments z (M,) = (z_1 .. z_M), in place.

    ``E = e^{hL}``, ``E2 = e^{hL/2}`` and ``Q, f1, f2, f3`` the ETDRK4 coefficients for the
    diagonal L_n = i n ω_0 − D n²; ``K`` the effective coupling. Records as :func:`oa_advance`
    (frames (2, M)). Returns ``(steps done, frames written, status)``.
    """
    m = z.shape[0]
    halfK = 0.5 * K
    Nu = np.empty(m, np.complex128)
    Na = np.empty(m, np.complex128)
    Nb = np.empty(m, np.complex128)
    Nc = np.empty(m, np.complex128)
    a = np.empty(m, np.complex128)
    b = np.empty(m, np.complex128)
    c = np.empty(m, np.complex128)
    znew = np.empty(m, np.complex128)
    nf = 0
    for s in range(n_steps):
        _fp_nonlinear(z, halfK, Nu)
        for i in range(m):
            a[i] = E2[i] * z[i] + Q[i] * Nu[i]
        _fp_nonlinear(a, halfK, Na)
        for i in range(m):
            b[i] = E2[i] * z[i] + Q[i] * Na[i]
        _fp_nonlinear(b, halfK, Nb)
        for i in range(m):
            c[i] = E2[i] * a[i] + Q[i] * (2.0 * Nb[i] - Nu[i])
        _fp_nonlinear(c, halfK, Nc)
        for i in range(m):
            znew[i] = E[i] * z[i] + f1[i] * Nu[i] + 2.0 * f2[i] * (Na[i] + Nb[i]) + f3[i] * Nc[i]
        if not _all_finite_c(znew):
            return s, nf, NONFINITE
        z[:] = znew
        obs[s, 0] = abs(z[0])
        obs[s, 1] = math.atan2(z[0].imag, z[0].real)
        if (step0 + s + 1) % save_every == 0:
            for i in range(m):
                frames[nf, 0, i] = z[i].real
                frames[nf, 1, i] = z[i].imag
            nf += 1
    return n_steps, nf, OK
