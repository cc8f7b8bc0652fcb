"""Stochastic Kuramoto-type networks: Euler–Maruyama and stochastic Heun with additive noise.

Two models (codes of :mod:`~nndyn_fast.kernels.kuramoto`), R independent realisations:

- ``PHASE``: dθ_i = [ω_i + (K/N) Σ_j W_ij D(θ_j − θ_i)] dt + σ dB_i with
  D(φ) = Σ_m b_m sin(m φ − α) (``harm[m-1] = b_m``; α = 0 makes D odd);
- ``RATE``: dx_i = [−x_i + (K/N) Σ_j W_ij σ(x_j) + I_i] dt + σ dB_i.

Harmonic m needs S^m_i = Σ_j W_ij sin(m θ_j) and C^m_i = Σ_j W_ij cos(m θ_j), from which
Σ_j W_ij sin(m(θ_j − θ_i) − α) = cos α (S^m c_i − C^m s_i) − sin α (C^m c_i + S^m s_i), with
s_i = sin(m θ_i), c_i = cos(m θ_i): one interaction pass per nonzero harmonic.

Noise: a counter-based generator. Philox-4x32-10 (Salmon et al. 2011) maps the counter
(oscillator pair, step low word, step high word, realisation) under the 64-bit key to four
32-bit words, i.e. two 53-bit uniforms, i.e. (Box–Muller) the standard normals of oscillators
2p and 2p + 1 at that step. The Brownian increment of oscillator i over step s is
ΔB = sqrt(dt / L) Σ_{l<L} Z(s L + l, i) (``sub`` = L = 1 normally; L > 1 drives a coarse step
with the sum of the L fine increments that a run with dt / L draws, so both see one Brownian
path). Nothing is carried between steps: a resumed run and any thread count give the same bits.

Schemes (additive noise, ΔW = σ ΔB):

- Euler–Maruyama: x ← x + dt f(x) + ΔW (strong order 1 for additive noise);
- stochastic Heun: y = x + dt f(x) + ΔW, x ← x + (dt/2)(f(x) + f(y)) + ΔW (strong order 1,
  weak order 2 for additive noise).

Parallelism: with one realisation (``par_rows``) the interaction sums are the row-parallel
kernels of :mod:`~nndyn_fast.kernels.kuramoto`; otherwise :func:`noisy_advance` takes a block of
realisations with the serial sums of :func:`~nndyn_fast.kernels.kuramoto.coupling_sums_serial`
(the same row sums on the calling thread, bitwise those of the row-parallel kernels; each block
owns its prefix-sum scratch) and releases the GIL, and the caller runs blocks on threads (a
``prange`` over realisations would compile every callee for the parallel target: minutes).
Each output is written by one thread, so results do not depend on the thread count, and a
realisation run alone is bitwise that realisation in a batch.

References
----------
J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, "Parallel random numbers: as easy as
1, 2, 3", SC'11 (2011). P. E. Kloeden, E. Platen, "Numerical Solution of Stochastic
Differential Equations", Springer 1992, sections 10.2 and 15.1.
"""

import math

import numpy as np
from numba import njit

from .activations import act
from .control import NONFINITE, OK
from .kuramoto import PHASE, coupling_sums, coupling_sums_serial

EM, HEUN = 4, 5  # stochastic methods (codes after the deterministic ones)

_M32 = np.uint64(0xFFFFFFFF)
_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = np.uint64(0x9E3779B9)
_PHILOX_W1 = np.uint64(0xBB67AE85)
_TWO_PI = 2.0 * math.pi
_INV53 = 1.0 / 9007199254740992.0  # 2^-53


@njit(cache=True)
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 of the counter (c0, c1, c2, c3) under key (k0, k1), all 32-bit words held
    in uint64; returns the four output words."""
    c0 = np.uint64(c0) & _M32
    c1 = np.uint64(c1) & _M32
    c2 = np.uint64(c2) & _M32
    c3 = np.uint64(c3) & _M32
    k0 = np.uint64(k0) & _M32
    k1 = np.uint64(k1) & _M32
    for _ in range(10):
        p0 = _PHILOX_M0 * c0
        p1 = _PHILOX_M1 * c2
        hi0 = p0 >> np.uint64(32)
        lo0 = p0 & _M32
        hi1 = p1 >> np.uint64(32)
        lo1 = p1 & _M32
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = (k0 + _PHILOX_W0) & _M32
        k1 = (k1 + _PHILOX_W1) & _M32
    return c0, c1, c2, c3


@njit(cache=True)
def normal_pair(k0, k1, pair, step, real):
    """Two independent standard normals for oscillators 2·pair, 2·pair + 1 at counter ``step``
    of realisation ``real`` (Box–Muller on two 53-bit uniforms)."""
    s = np.uint64(step)
    w0, w1, w2, w3 = philox4x32(np.uint64(pair), s & _M32, s >> np.uint64(32), real, k0, k1)
    u1 = float((w0 >> np.uint64(5)) * np.uint64(67108864) + (w1 >> np.uint64(6))) * _INV53
    u2 = float((w2 >> np.uint64(5)) * np.uint64(67108864) + (w3 >> np.uint64(6))) * _INV53
    rad = math.sqrt(-2.0 * math.log(1.0 - u1))  # 1 - u1 in (0, 1]
    return rad * math.cos(_TWO_PI * u2), rad * math.sin(_TWO_PI * u2)


@njit(cache=True)
def brownian_normals(k0, k1, real, step, out):
    """out[i] = Z(step, i): the standard normals of all oscillators at one counter step."""
    n = out.shape[0]
    for p in range((n + 1) // 2):
        z0, z1 = normal_pair(k0, k1, p, step, real)
        out[2 * p] = z0
        if 2 * p + 1 < n:
            out[2 * p + 1] = z1


@njit(cache=True)
def _increments(k0, k1, real, step, sub, scale, z, out):
    """out = scale Σ_{l<sub} Z(step·sub + l, ·) (z is scratch)."""
    brownian_normals(k0, k1, real, step * sub, out)
    for l in range(1, sub):
        brownian_normals(k0, k1, real, step * sub + l, z)
        for i in range(out.shape[0]):
            out[i] += z[i]
    for i in range(out.shape[0]):
        out[i] *= scale


@njit(cache=True)
def noisy_drift(
    model, act_code, x, drive, KN, alpha, harm, kind, cp, wfun, par_rows, a, b, sa, sb, pa, pb, out
):
    """The drift f(x) of the PHASE (harmonics ``harm``) or RATE model into ``out``."""
    n = x.shape[0]
    two = model == PHASE
    if two:
        ca = math.cos(alpha)
        sn = math.sin(alpha)
        for i in range(n):
            out[i] = 0.0  # Σ_m b_m (interaction of harmonic m)
        for m in range(harm.shape[0]):
            bm = harm[m]
            if bm == 0.0:
                continue
            q = m + 1.0
            for i in range(n):
                a[i] = math.sin(q * x[i])
                b[i] = math.cos(q * x[i])
            if par_rows:
                coupling_sums(kind, cp, wfun, a, b, two, sa, sb)
            else:
                coupling_sums_serial(kind, cp, wfun, a, b, two, sa, sb, pa, pb)
            for i in range(n):
                inter = ca * (sa[i] * b[i] - sb[i] * a[i]) - sn * (sb[i] * b[i] + sa[i] * a[i])
                out[i] += bm * inter
        for i in range(n):
            out[i] = drive[i] + KN * out[i]
    else:
        for i in range(n):
            a[i] = act(act_code, x[i])
        if par_rows:
            coupling_sums(kind, cp, wfun, a, b, two, sa, sb)
        else:
            coupling_sums_serial(kind, cp, wfun, a, b, two, sa, sb, pa, pb)
        for i in range(n):
            out[i] = -x[i] + KN * sa[i] + drive[i]


@njit(cache=True)
def record_row(model, act_code, x, obs, k, r):
    """Observables of realisation r after step k: PHASE → (r, ψ); RATE → (mean σ(x), mean x)."""
    n = x.shape[0]
    s = 0.0
    m = 0.0
    if model == PHASE:
        for j in range(n):
            s += math.cos(x[j])
            m += math.sin(x[j])
        s /= n
        m /= n
        obs[k, r, 0] = math.sqrt(s * s + m * m)
        obs[k, r, 1] = math.atan2(m, s)
    else:
        for j in range(n):
            s += act(act_code, x[j])
            m += x[j]
        obs[k, r, 0] = s / n
        obs[k, r, 1] = m / n


@njit(cache=True)
def _advance_one(
    r, model, act_code, X, drive, KN, alpha, harm, sigma, dt, method, n_steps, save_every,
    step0, k0, k1, sub, kind, cp, wfun, par_rows, pa, pb, frames, obs,
):  # fmt: skip
    """Realisation r of :func:`noisy_advance`; returns the steps done (< n_steps: non-finite)."""
    n = X.shape[1]
    x = X[r]
    a = np.empty(n)
    b = np.empty(n)
    sa = np.zeros(n)
    sb = np.zeros(n)
    f1 = np.empty(n)
    f2 = np.empty(n)
    y = np.empty(n)
    dw = np.empty(n)
    z = np.empty(n)
    scale = sigma * math.sqrt(dt / sub)
    for k in range(n_steps):
        s = step0 + k
        noisy_drift(
            model, act_code, x, drive, KN, alpha, harm, kind, cp, wfun, par_rows, a, b, sa, sb,
            pa, pb, f1,
        )  # fmt: skip
        if sigma != 0.0:
            _increments(k0, k1, r, s, sub, scale, z, dw)
        else:
            for i in range(n):
                dw[i] = 0.0
        for i in range(n):
            y[i] = x[i] + dt * f1[i] + dw[i]
        if method == HEUN:
            noisy_drift(
                model, act_code, y, drive, KN, alpha, harm, kind, cp, wfun, par_rows, a, b, sa,
                sb, pa, pb, f2,
            )  # fmt: skip
            h = 0.5 * dt
            for i in range(n):
                y[i] = x[i] + h * (f1[i] + f2[i]) + dw[i]
        for i in range(n):
            if not math.isfinite(y[i]):
                return k
        for i in range(n):
            x[i] = y[i]
        record_row(model, act_code, x, obs, k, r)
        if (s + 1) % save_every == 0:
            row = (s + 1) // save_every - step0 // save_every - 1
            for i in range(n):
                frames[row, r, i] = x[i]
    return n_steps


@njit(cache=True, nogil=True)
def noisy_advance(
    model, act_code, X, drive, KN, alpha, harm, sigma, dt, method, n_steps, save_every, step0,
    k0, k1, sub, kind, cp, wfun, r0, r1, par_rows, done, frames, obs,
):  # fmt: skip
    """Advance realisations r0 <= r < r1 of ``X`` (R, N) in place by ``n_steps`` steps of
    ``EM``/``HEUN``.

    Steps are numbered globally from ``step0`` (the noise counter); after each step k of a
    realisation r its observables go to ``obs[k, r]`` and, when the global step is a multiple of
    ``save_every``, its state to ``frames[row, r]``. ``sub`` > 1 sums that many fine
    increments per step (module docstring). ``par_rows``: the row-parallel sums of
    :func:`~nndyn_fast.kernels.kuramoto.coupling_sums` (for one realisation at large N);
    otherwise serial sums, and the kernel releases the GIL so that the caller runs blocks of
    realisations on threads of its own (a realisation is computed alike in any block). ``done[r]``
    gets the steps realisation r completed: fewer than ``n_steps`` when its next state was
    non-finite (its row of ``X`` is then the last finite state). Returns ``OK`` or
    ``NONFINITE``.
    """
    n1 = X.shape[1] + 1
    pa = np.empty(n1)
    pb = np.empty(n1)
    status = OK
    for r in range(r0, r1):
        done[r] = _advance_one(
            r, model, act_code, X, drive, KN, alpha, harm, sigma, dt, method, n_steps,
            save_every, step0, k0, k1, sub, kind, cp, wfun, par_rows, pa, pb, frames, obs,
        )  # fmt: skip
        if done[r] < n_steps:
            status = NONFINITE
    return status
