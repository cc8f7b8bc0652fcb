"""The continuum (N → ∞) limit of Kuramoto networks, and its distance from finite N.

:func:`meanfield_limit` integrates the limit equation of dθ_i = [ω_i + (K/N) Σ_j W_ij
sin(θ_j − θ_i)] dt + σ dB_i as the network grows along a graphon (or digraph measure) w:

- **Lorentzian frequencies** (half-width γ, centre ω_0, no noise): the graphon Ott–Antonsen
  equation for the local order parameter z(x, t) = ∫ e^{iθ} ρ(θ, ω, x, t) dθ dω,

      ∂_t z(x) = (iω_0 − γ) z(x) + (K/2) [(W z)(x) − z(x)² (W z̄)(x)],
      (W z)(x) = ∫ w(x, y) z(y) dμ(y),

  on the quadrature grid x_i = i/N (weights 1/N; a DigraphMeasure gives its own positions and
  weights), integrated by RK4 with the matrix-free interaction (O(N) per step for the built-in
  graphons). The recorded order parameter is Z = ∫ z dμ / ∫ dμ, r = abs(Z).
- **Identical oscillators with noise** (D = σ²/2, all-to-all or constant graphon p): the
  Fokker–Planck equation ∂_t ρ = −∂_θ(ρ v) + D ∂_θθ ρ, v = ω_0 + K p r sin(ψ − θ), solved for
  the Fourier moments z_n = ∫ e^{inθ} ρ dθ, n = 1..M (a tridiagonally coupled ODE, see
  :mod:`nndyn_fast.kernels.continuum`), by exponential time differencing (ETDRK4) so the stiff
  diffusion −D n² is integrated exactly; r = abs(z_1).

Both are streamed like every other run (:func:`nndyn_fast.runs.start_run`: kind
``"meanfield_limit"``, series ``observables`` (time, step, value (2,) = (r, ψ)) and
``trajectory`` (time, step, value (2, N) or (2, M): real and imaginary parts), a checkpoint
per chunk, bitwise resume).

:func:`finite_size_gap` puts particle runs (:func:`nndyn_fast.meanfield.simulate`,
deterministic Lorentzian frequencies) beside the limit and measures abs(r_N − r_∞).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._validate import (
    as_array,
    check_bool,
    check_int,
    check_memory,
    check_nonnegative,
    check_positive,
    check_real,
    check_size,
    check_steps,
)
from .errors import NonFiniteStateError
from .graphs import DigraphMeasure, Graphon
from .kernels import continuum as kc
from .kernels import kuramoto as kk
from .meanfield import Coupling, Kuramoto, _threads, simulate
from .progress import Progress
from .runs import start_run
from .storage import chunk_rows

__all__ = [
    "LimitRun",
    "FiniteSizeGap",
    "meanfield_limit",
    "finite_size_gap",
    "etdrk4_coefficients",
    "lorentzian_quantile_frequencies",
]


@dataclass(frozen=True)
class LimitRun:
    """Result of :func:`meanfield_limit`.

    ``t`` (S + 1,), ``r`` and ``psi`` the order parameter at every step (with an output file:
    the last chunk; read the rest with :func:`nndyn_fast.open_run`); ``state`` the final local
    order parameter z (N,) (Ott–Antonsen) or moments z_1..z_M (Fokker–Planck), complex;
    ``x`` the grid (Ott–Antonsen) or None; ``equation`` "ott_antonsen" or "fokker_planck".
    """

    t: np.ndarray
    r: np.ndarray
    psi: np.ndarray
    state: np.ndarray
    x: np.ndarray | None
    equation: str
    path: str | None = None
    steps: int = 0


def etdrk4_coefficients(L: np.ndarray, h: float, contour: int = 64) -> tuple[np.ndarray, ...]:
    """``(E, E2, Q, f1, f2, f3)`` of ETDRK4 for the diagonal linear part L (complex) and step h.

    E = e^{hL}, E2 = e^{hL/2}, Q = h φ(hL/2)/2-type weights and the Cox–Matthews f1, f2, f3,
    evaluated as means over ``contour`` points on a circle of radius 1 around each hL
    (Kassam–Trefethen), which avoids the cancellation of the closed forms at small abs(hL).
    """
    L = np.asarray(L, dtype=np.complex128)
    # the whole circle: L may be complex (a rotation i n ω_0), so no conjugate symmetry
    roots = np.exp(2j * np.pi * (np.arange(1, contour + 1) - 0.5) / contour)
    LR = h * L[:, None] + roots[None, :]
    E = np.exp(h * L)
    E2 = np.exp(h * L / 2)
    Q = h * np.mean((np.exp(LR / 2) - 1) / LR, axis=1)
    eLR = np.exp(LR)
    f1 = h * np.mean((-4 - LR + eLR * (4 - 3 * LR + LR**2)) / LR**3, axis=1)
    f2 = h * np.mean((2 + LR + eLR * (-2 + LR)) / LR**3, axis=1)
    f3 = h * np.mean((-4 - 3 * LR - LR**2 + eLR * (4 - LR)) / LR**3, axis=1)
    # the contour mean of a real-analytic function of a real hL is real up to rounding
    real = np.isreal(L)
    for arr in (Q, f1, f2, f3):
        arr[real] = arr[real].real
    return E, E2, Q, f1, f2, f3


def _oa_initial(z0: Any, n: int) -> np.ndarray:
    z = np.asarray(z0 if z0 is not None else 0.5, dtype=np.complex128)
    if z.ndim == 0:
        z = np.full(n, complex(z))
    if z.shape != (n,):
        raise ValueError(f"z0 must be a complex number or an array of shape ({n},), got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("z0 must be finite")
    if np.any(np.abs(z) > 1.0):
        raise ValueError(
            f"z0 must satisfy |z0| <= 1 (a local order parameter), got max |z0| = "
            f"{np.abs(z).max():.6g}"
        )
    return np.ascontiguousarray(z)


def _fp_initial(z0: Any, density0: Any, modes: int) -> np.ndarray:
    if density0 is not None:
        if z0 is not None:
            raise ValueError("give z0 or density0, not both")
        rho = as_array("density0", density0, ndim=1)
        if rho.size < 2 * modes + 1:
            raise ValueError(
                f"density0 must sample ρ(θ) at >= 2 modes + 1 = {2 * modes + 1} equispaced "
                f"θ_j = 2π j / L in [0, 2π), got {rho.size}"
            )
        if np.any(rho < 0) or not rho.sum() > 0:
            raise ValueError("density0 must be >= 0 and not all zero")
        theta = 2 * np.pi * np.arange(rho.size) / rho.size
        nn = np.arange(1, modes + 1)
        zn = (rho[None, :] * np.exp(1j * nn[:, None] * theta[None, :])).sum(axis=1) / rho.sum()
        return np.ascontiguousarray(zn)
    z = complex(0.5 if z0 is None else z0)
    if not np.isfinite(z) or abs(z) >= 1.0:
        raise ValueError(
            f"z0 must be a complex number with |z0| < 1 (the wrapped Cauchy density with "
            f"moments z_n = z0^n), got {z0!r}"
        )
    return z ** np.arange(1, modes + 1, dtype=np.complex128)


def meanfield_limit(
    coupling: Any,
    *,
    K: float,
    t_end: float,
    dt: float,
    gamma: float | None = None,
    omega0: float = 0.0,
    noise: float | None = None,
    x_grid: int | None = None,
    z0: Any = None,
    density0: Any = None,
    modes: int = 64,
    save_every: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    chunk_steps: int | None = None,
    progress: bool = False,
) -> LimitRun:
    """Integrate the N → ∞ limit equation of a Kuramoto network from t = 0 to t_end.

    Parameters
    ----------
    coupling : Graphon, DigraphMeasure, or (Ott–Antonsen only) a dense/sparse W or Coupling
        The graph limit w. With ``noise`` it must be a constant graphon ``Graphon.constant(p)``.
    K : float
        Coupling strength.
    t_end, dt : float
        End time and step (time units, > 0); ceil(t_end / dt) fixed steps.
    gamma : float, optional
        Half-width γ > 0 of the Lorentzian frequencies: selects the Ott–Antonsen equation.
    omega0 : float
        Centre of the frequency distribution (identical oscillators: their frequency), rad per
        time unit; it rotates ψ and leaves r unchanged.
    noise : float, optional
        σ > 0 of identical oscillators (D = σ²/2): selects the Fokker–Planck solver.
    x_grid : int, optional
        Quadrature points x_i = i/N for a Graphon (default 1000); a DigraphMeasure or a matrix
        brings its own.
    z0 : complex or array (N,), optional
        Initial local order parameter, abs(z0) <= 1 (default 0.5 everywhere). Fokker–Planck: the
        initial density is the wrapped Cauchy with moments z0^n (abs(z0) < 1).
    density0 : array (L,), optional
        Fokker–Planck only: the initial density at θ_j = 2π j / L (normalised here; L >= 2M + 1).
    modes : int
        Fokker–Planck: number M of Fourier moments kept (>= 2; the stationary moments decay
        like I_n(K r / D), so M of a few times K/D + 20 suffices).
    save_every : int, optional
        With ``out``: store the state every this many steps (default: only at t = 0 and at the
        end). Observables are stored every step.
    out, overwrite, resume : as for :func:`nndyn_fast.meanfield.simulate`.
    chunk_steps : int, optional
        Steps per kernel call and per commit (default: about 1 MiB of frames, at most 4096).
    progress : bool
        Report the steps done on stderr once per chunk (:mod:`nndyn_fast.progress`).

    Returns
    -------
    LimitRun

    Raises
    ------
    ValueError
        Neither or both of gamma and noise; gamma <= 0, noise <= 0; noise with a coupling other
        than a constant graphon; bad z0, density0, modes, grid or step; x_grid with a coupling
        that brings its own grid; an existing ``out`` (without overwrite/resume).
    NonFiniteStateError
        The state became NaN/inf; the error names the step and the file keeps the good rows.
    """
    K = check_real("K", K)
    t_end = check_positive("t_end", t_end)
    dt = check_positive("dt", dt)
    omega0 = check_real("omega0", omega0)
    overwrite = check_bool("overwrite", overwrite)
    resume = check_bool("resume", resume)
    progress = check_bool("progress", progress)
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")
    if (gamma is None) == (noise is None):
        raise ValueError(
            "give exactly one of gamma (Lorentzian frequencies: the Ott-Antonsen equation) and "
            "noise (identical oscillators with noise: the Fokker-Planck equation); the "
            "Ott-Antonsen reduction does not close with noise"
        )
    total = check_steps("t_end / dt", np.ceil(t_end / dt - 1e-9))
    if total < 1:
        raise ValueError(f"t_end = {t_end:g} is less than one step dt = {dt:g}: no step to take")
    save_every = total if save_every is None else check_int("save_every", save_every, minimum=1)
    if chunk_steps is not None:
        chunk_steps = check_int("chunk_steps", chunk_steps, minimum=1)
    params: dict[str, Any] = {"K": K, "dt": dt, "t_end": t_end, "steps": total,
                              "omega0": omega0, "save_every": save_every}  # fmt: skip
    if gamma is not None:
        gamma = check_positive("gamma", gamma)
        if density0 is not None:
            raise ValueError("density0 is for the Fokker-Planck solver (noise=); give z0")
        c, x = _limit_coupling(coupling, x_grid)
        z = _oa_initial(z0, c.n)
        params.update(equation="ott_antonsen", gamma=gamma, N=c.n,
                      coupling=c.description, fingerprint=c.fingerprint())  # fmt: skip
        params.update(c.definition)  # the coupling's definition (arrays are stored inputs)
        mu = c.cp[5] if c.kind in (kk.STRUCTURED, kk.PAIRWISE) else np.ones(c.n)

        def advance(state, k, step, frames, obs):
            with _threads(c):
                return kc.oa_advance(state, gamma, omega0, K, dt, k, save_every, step, c.kind,
                                     c.cp, c.wfun, mu, frames, obs)  # fmt: skip

        def order(state):
            return complex(np.sum(mu * state) / np.sum(mu))

        equation = "ott_antonsen"
    else:
        sigma = check_positive("noise", noise)
        if x_grid is not None:
            raise ValueError("x_grid is for the Ott-Antonsen equation; the Fokker-Planck solver "
                             "has no x (constant graphon)")  # fmt: skip
        if not (isinstance(coupling, Graphon) and coupling.name == "constant"):
            raise ValueError(
                "the Fokker-Planck solver (noise=) needs an all-to-all coupling, "
                f"Graphon.constant(p); got {_describe(coupling)}"
            )
        p = coupling.params[0]
        modes = check_int("modes", modes, minimum=2, maximum=1 << 16)
        z = _fp_initial(z0, density0, modes)
        D = 0.5 * sigma**2
        nn = np.arange(1, modes + 1)
        coef = etdrk4_coefficients(1j * nn * omega0 - D * nn**2, dt)
        params.update(equation="fokker_planck", noise=sigma, p=p, modes=modes)
        x = None
        Keff = K * p

        def advance(state, k, step, frames, obs):
            return kc.fp_advance(state, *coef, Keff, k, save_every, step, frames, obs)

        def order(state):
            return complex(state[0])

        equation = "fokker_planck"
    return _stream(advance, order, z, x, equation, params, total, save_every, chunk_steps,
                   out, overwrite, resume, progress)  # fmt: skip


def _describe(coupling: Any) -> str:
    if isinstance(coupling, Graphon):
        return f"Graphon {coupling.name!r}"
    return type(coupling).__name__


def _limit_coupling(coupling: Any, x_grid: Any) -> tuple[Coupling, np.ndarray | None]:
    if isinstance(coupling, Graphon):
        n = 1000 if x_grid is None else check_size("x_grid", x_grid, item_bytes=200)
        meas = DigraphMeasure(coupling, n)
        return Coupling(meas, n), meas.x
    if x_grid is not None:
        raise ValueError(
            f"x_grid is the quadrature grid of a Graphon; a {type(coupling).__name__} brings "
            "its own nodes"
        )
    if isinstance(coupling, DigraphMeasure):
        return Coupling(coupling, coupling.n), coupling.x
    if isinstance(coupling, Coupling):
        return coupling, getattr(getattr(coupling, "measure", None), "x", None)
    shape = getattr(coupling, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(
            "coupling must be a Graphon, DigraphMeasure, Coupling or a square (N, N) matrix, "
            f"got {type(coupling).__name__}"
        )
    return Coupling(coupling, shape[0]), None


_LIMIT_DESCRIPTION = {
    "ott_antonsen": "continuum (N -> infinity) limit of a Kuramoto network with Lorentzian "
    "frequencies: the graphon Ott-Antonsen equation dz(x)/dt = (i omega0 - gamma) z(x) + (K/2) "
    "[(W z)(x) - z(x)^2 (W conj z)(x)] on a quadrature grid x; frames of z(x) and the order "
    "parameter r e^{i psi} at every step",
    "fokker_planck": "continuum (N -> infinity) limit of identical noisy Kuramoto oscillators: "
    "the Fokker-Planck equation for the Fourier moments z_n of the phase density, by ETDRK4; "
    "frames of z_1..z_M and the order parameter r e^{i psi} = z_1 at every step",
}


def _limit_series(equation: str, n: int, has_x: bool) -> dict:
    """The series of a ``meanfield_limit`` run file, with units, names and dimensions."""
    if equation == "ott_antonsen":
        axis = "x" if has_x else "node"
        value = {"dims": ("part", axis), "long_name": "local order parameter z(x): Re, Im"}
    else:
        value = {
            "dims": ("part", "mode"),
            "long_name": "Fourier moments z_n of the density: Re, Im",
        }
    time = {"units": "1", "long_name": "time (model units)"}
    step = {"dtype": np.int64, "long_name": "integration step"}
    return {
        "trajectory": {
            "time": time,
            "step": step,
            "value": {"shape": (2, n), "units": "1", **value},
        },
        "observables": {
            "time": time,
            "step": step,
            "value": {
                "shape": (2,),
                "dims": ("observable",),
                "units": "1",
                "long_name": "order parameter: r (modulus, 1) and psi (phase, rad)",
            },
        },
    }


def _limit_coords(equation: str, x: np.ndarray | None, n: int) -> dict:
    """Coordinate values of the limit run's named axes (the grid x where there is one)."""
    traj: dict[str, Any] = {"part": (["re", "im"], "1", "real and imaginary part")}
    if equation == "ott_antonsen" and x is not None and np.shape(x) == (n,):
        traj["x"] = (np.asarray(x, dtype=np.float64), "1", "graphon position x")
    elif equation == "fokker_planck":
        traj["mode"] = (np.arange(1, n + 1), "1", "Fourier mode n")
    return {"trajectory": traj, "observables": {"observable": (["r", "psi"], "1", "observable")}}


def _stream(advance, order, z, x, equation, params, total, save_every, chunk_steps, out, overwrite,
            resume, progress=False) -> LimitRun:  # fmt: skip
    n = z.shape[0]
    frame_rows_1mib = chunk_rows((2, n), np.float64)
    per_call = chunk_steps or max(1, min(4096, frame_rows_1mib * save_every))
    frame_rows = per_call // save_every + 1
    check_memory(
        f"the limit run's chunk buffers ({per_call} steps of a state of {n})",
        16.0 * per_call + 16.0 * n * (frame_rows + 12) + (0 if out else 16.0 * total),
    )
    state = z.copy()
    step = 0
    writer = None
    obs0 = np.array([[abs(order(z)), np.angle(order(z))]])
    if out is not None:
        writer = start_run(
            out,
            kind="meanfield_limit",
            params=params,
            inputs={"z0": np.stack([z.real, z.imag])},
            series=_limit_series(equation, n, x is not None),
            coords=_limit_coords(equation, x, n),
            description=_LIMIT_DESCRIPTION[equation],
            rows={
                "trajectory": total // save_every + 1 + (total % save_every != 0),
                "observables": total + 1,
            },  # fmt: skip
            checkpoint={"state": np.stack([z.real, z.imag]), "step": 0},
            resume=resume,
            overwrite=overwrite,
        )
        ck = writer.checkpoint
        st = np.asarray(ck["state"], dtype=np.float64)
        state = np.ascontiguousarray(st[0] + 1j * st[1])
        step = int(ck["step"])
    frames = np.empty((frame_rows, 2, n))
    obs = np.empty((per_call, 2))
    keep_t, keep_obs = [np.zeros(1)], [obs0]
    idx = np.zeros(0, np.int64)
    bar = Progress(total, desc=f"limit ({equation})", unit="step", enabled=progress)
    with writer if writer is not None else nullcontext(), bar:
        if writer is not None and writer.chunks == 0:
            zero = np.zeros(1, np.int64)
            writer.append("trajectory", time=np.zeros(1), step=zero,
                          value=np.stack([z.real, z.imag])[None])  # fmt: skip
            writer.append("observables", time=np.zeros(1), step=zero, value=obs0)
            writer.commit(state=np.stack([state.real, state.imag]), step=0)
        while step < total:
            k = min(per_call, total - step)
            done, nf, status = advance(state, k, step, frames, obs)
            idx = np.arange(step + 1, step + done + 1, dtype=np.int64)
            fsteps = idx[idx % save_every == 0]
            fvals = frames[:nf]
            last = step + done == total and total % save_every != 0 and status == kc.OK
            if last:  # the final state is always stored
                fsteps = np.append(fsteps, total)
                fvals = np.concatenate([fvals, np.stack([state.real, state.imag])[None]])
            if writer is not None:
                writer.append("observables", time=idx * params["dt"], step=idx,
                              value=obs[:done])  # fmt: skip
                writer.append("trajectory", time=fsteps * params["dt"], step=fsteps,
                              value=fvals)  # fmt: skip
                writer.commit(state=np.stack([state.real, state.imag]), step=step + done)
            else:
                keep_t.append(idx * params["dt"])
                keep_obs.append(obs[:done].copy())
            step += done
            bar.update(step)
            if status != kc.OK:
                raise NonFiniteStateError(
                    f"the limit state became non-finite at step {step + 1} "
                    f"(t = {(step + 1) * params['dt']:g}); {step} good steps were kept"
                    + (f" in {str(out)!r}" if out else ""),
                    step=step + 1,
                    time=(step + 1) * params["dt"],
                )
        if writer is not None:
            writer.summarize(r_final=float(abs(order(state))))
    if writer is not None:
        t, ob, path = idx * params["dt"], obs[: idx.size].copy(), writer.path
    else:
        t, ob, path = np.concatenate(keep_t), np.concatenate(keep_obs), None
    return LimitRun(t, ob[:, 0], ob[:, 1], state, x, equation, path, total)


# -- finite N beside the limit -------------------------------------------------------------------
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def lorentzian_quantile_frequencies(n: int, gamma: float, omega0: float = 0.0) -> np.ndarray:
    """Deterministic Lorentzian frequencies ω_i = ω_0 + γ tan(π (u_i − 1/2)), u_i = frac(i g).

    u_i is the Kronecker (golden-ratio, g = (√5 − 1)/2) sequence: its empirical distribution
    is uniform with discrepancy O(log N / N) and, jointly with the positions x_i = i/N, it is a
    low-discrepancy lattice, so the frequencies are equidistributed along the graphon variable
    (sorted quantiles would put the fast oscillators at one end of a ring).
    """
    n = check_size("N", n, item_bytes=16)
    gamma = check_positive("gamma", gamma)
    u = np.mod(np.arange(1, n + 1) * _GOLDEN, 1.0)
    return omega0 + gamma * np.tan(np.pi * (u - 0.5))


@dataclass(frozen=True)
class FiniteSizeGap:
    """Result of :func:`finite_size_gap`: for each N of ``Ns``, the time-averaged order
    parameter ``r_N`` of the particle run (``r_N_std`` its standard deviation over the window),
    ``r_inf`` the limit's time average over the same window, ``gap`` = abs(r_N − r_inf), and the
    limit run itself (``limit``)."""

    Ns: np.ndarray
    r_N: np.ndarray
    r_N_std: np.ndarray
    r_inf: float
    gap: np.ndarray
    limit: LimitRun


GAP_KIND = "finite_size_gap"


def _gap_series() -> dict:
    """The series of a ``finite_size_gap`` run file."""
    return {
        "limit": {
            "time": {"units": "1", "long_name": "time (model units)"},
            "r": {"units": "1", "long_name": "order parameter r_inf(t) of the continuum limit"},
        },
        "sizes": {
            "N": {"dtype": np.int64, "coord": True, "long_name": "network size N"},
            "r_N": {
                "units": "1",
                "long_name": "time average of the particle run's r(t), t > t_from",
            },
            "r_N_std": {"units": "1", "long_name": "standard deviation of r(t) over the window"},
            "gap": {"units": "1", "long_name": "abs(r_N - r_inf), r_inf the limit's time average"},
        },
    }


def finite_size_gap(
    coupling_family: Any,
    Ns: Sequence[int],
    *,
    K: float,
    gamma: float,
    t_end: float,
    dt: float = 0.05,
    t_from: float | None = None,
    limit: Graphon | DigraphMeasure | None = None,
    x_grid: int = 2000,
    omega0: float = 0.0,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    extra_params: dict[str, Any] | None = None,
) -> FiniteSizeGap:
    """abs(r_N − r_∞) of Kuramoto networks with Lorentzian frequencies against the graphon limit.

    Each N runs dθ_i/dt = ω_i + (K/N) Σ_j W_ij sin(θ_j − θ_i) (RK4, step dt) from θ_i = 0 with
    the deterministic frequencies of :func:`lorentzian_quantile_frequencies`; the limit is
    :func:`meanfield_limit` (Ott–Antonsen, z0 = 1, the same start) on ``x_grid`` points.
    r_N and r_∞ are the time averages of r(t) over t > t_from. Sampling noise of the
    frequencies is O(N^{-1}) here (quantiles), so the gap measures the network's own
    finite-size effects, O(N^{-1/2}) for random graphs.

    Parameters
    ----------
    coupling_family : Graphon, or callable N -> coupling
        A Graphon is discretised at each N (matrix-free); a callable returns the coupling of N
        nodes (e.g. ``lambda N: w_random_graph(w, N)``) and needs ``limit``.
    Ns : sequence of int
        Network sizes (each >= 1).
    K, gamma : float
        Coupling and Lorentzian half-width (> 0).
    t_end, dt : float
        Run length and step.
    t_from : float, optional
        Start of the averaging window (default t_end / 2).
    limit : Graphon or DigraphMeasure, optional
        The limit of the family (default: ``coupling_family`` when it is a Graphon).
    x_grid : int
        Quadrature points of the limit.
    omega0 : float
        Centre of the frequencies.
    out : str or Path, optional
        A run file of kind ``finite_size_gap`` (through :func:`nndyn_fast.runs.start_run`):
        series ``limit`` (time, r: the limit's r_∞(t), committed first) and ``sizes`` (N, r_N,
        r_N_std, gap: one row committed per network size), the summary r_inf.
    overwrite, resume : replace ``out``, or continue it after its last committed size (every
        parameter is compared with the file; the sizes done are read back, not rerun).
    progress : report the runs done (the limit, then each N) on stderr.
    extra_params : dict, optional
        Stored in ``/params`` too (what a callable family was, say).

    Returns
    -------
    FiniteSizeGap
    """
    if isinstance(coupling_family, Graphon):
        make: Callable[[int], Any] = lambda n: coupling_family  # noqa: E731
        limit = coupling_family if limit is None else limit
    elif callable(coupling_family):
        make = coupling_family
        if limit is None:
            raise ValueError("a callable coupling_family needs limit=, the graphon it tends to")
    else:
        raise TypeError(
            "coupling_family must be a Graphon or a callable N -> coupling, got "
            f"{type(coupling_family).__name__}"
        )
    Ns_ = [check_int("Ns[i]", n_, minimum=1) for n_ in Ns]
    if not Ns_:
        raise ValueError("Ns must hold at least one network size")
    K = check_real("K", K)
    gamma = check_positive("gamma", gamma)
    t_end = check_positive("t_end", t_end)
    dt = check_positive("dt", dt)
    t_from = t_end / 2 if t_from is None else check_nonnegative("t_from", t_from)
    if t_from >= t_end:
        raise ValueError(f"t_from must be in [0, t_end) = [0, {t_end:g}), got {t_from!r}")
    overwrite = check_bool("overwrite", overwrite)
    resume = check_bool("resume", resume)
    progress = check_bool("progress", progress)
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")
    if extra_params is not None and not isinstance(extra_params, dict):
        raise TypeError(f"extra_params must be a dict, got {type(extra_params).__name__}")
    grid = x_grid if isinstance(limit, Graphon) else None
    steps = check_steps("t_end / dt", np.ceil(t_end / dt - 1e-9))
    writer = None
    if out is not None:
        desc = limit.w if isinstance(limit, DigraphMeasure) else limit
        params: dict[str, Any] = {
            "K": K, "gamma": gamma, "t_end": t_end, "dt": dt, "t_from": t_from,
            "omega0": omega0, "x_grid": -1 if grid is None else int(grid), "Ns": Ns_,
            "limit": _describe(limit),
            "limit_params": list(getattr(desc, "params", ())),
            **(extra_params or {}),
        }  # fmt: skip
        writer = start_run(
            out, kind=GAP_KIND, params=params, series=_gap_series(),
            rows={"limit": steps + 1, "sizes": len(Ns_)}, checkpoint={"next": 0},
            resume=resume, overwrite=overwrite,
            description="finite-size gap of Kuramoto networks with Lorentzian frequencies: the "
            "continuum (Ott-Antonsen graphon) limit r_inf(t) beside the time-averaged order "
            "parameter r_N of particle runs of N oscillators, and abs(r_N - r_inf)",
        )  # fmt: skip
    bar = Progress(len(Ns_) + 1, desc="finite-size gap", unit="run", enabled=progress)
    with writer if writer is not None else nullcontext(), bar:
        lim = meanfield_limit(
            limit, K=K, t_end=t_end, dt=dt, gamma=gamma, omega0=omega0, x_grid=grid, z0=1.0
        )
        r_inf = float(lim.r[lim.t > t_from].mean())
        first = 0
        r_N, r_sd = [], []
        if writer is not None:
            if writer.chunks == 0:
                writer.append("limit", time=lim.t, r=lim.r)
                writer.commit(next=0)
            first = int(writer.checkpoint["next"])
            if first:
                from .lyapunov import _committed_rows

                kept = _committed_rows(writer, "sizes", ("r_N", "r_N_std"))
                r_N, r_sd = [float(v) for v in kept["r_N"]], [float(v) for v in kept["r_N_std"]]
        bar.update(first + 1)
        for i in range(first, len(Ns_)):
            n_ = Ns_[i]
            model = Kuramoto(lorentzian_quantile_frequencies(n_, gamma, omega0), make(n_), K)
            run = simulate(model, np.zeros(n_), t_end, dt, save_every=max(steps, 1))
            r = run.r[run.t > t_from]
            r_N.append(float(r.mean()))
            r_sd.append(float(r.std()))
            if writer is not None:
                writer.append("sizes", N=np.array([n_]), r_N=np.array(r_N[-1:]),
                              r_N_std=np.array(r_sd[-1:]),
                              gap=np.abs(np.array(r_N[-1:]) - r_inf))  # fmt: skip
                writer.commit(next=i + 1)
            bar.update(i + 2)
        if writer is not None:
            writer.summarize(r_inf=r_inf)
    r_N_ = np.array(r_N)
    return FiniteSizeGap(np.array(Ns_), r_N_, np.array(r_sd), r_inf, np.abs(r_N_ - r_inf), lim)
