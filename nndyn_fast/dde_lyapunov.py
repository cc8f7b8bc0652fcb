"""Lyapunov spectra of delay differential equations: :func:`dde_lyapunov`.

The state of x'(t) = f(t, x(t), x(t - tau_1), ..., x(t - tau_m)) is the function segment
x_t = x|[t - tau_max, t], and its Lyapunov exponents are those of the tangent (variational)
delay equation

    v'(t) = J_0(t) v(t) + sum_j J_j(t) v(t - tau_j),
    J_0 = df/dx(t),  J_j = df/dx(t - tau_j)  (evaluated along the solution),

whose solutions are segments too. On a step ``dt`` that divides every delay the segment is a
grid of N + 1 = tau_max / dt + 1 values, the solution and k tangent segments advance together by
fixed-step RK4 (:mod:`nndyn_fast.kernels.dde_lyapunov`, the tangent map being the exact
derivative of the discrete step), and the tangent segments are re-orthonormalised by
Gram-Schmidt in the inner product of R^d x L^2(-tau_max, 0), the current point plus trapezoid
quadrature over the grid:

    <u, v> = u(t) . v(t) + int_{t - tau_max}^{t} u(s) . v(s) ds.

lambda_j = (1/T) sum log R_jj (the QR method of Benettin et al.). Exponents of the linear
scalar equations converge at O(dt^4) to the real parts of the characteristic roots.

With ``rtol=`` instead of ``dt=`` the step is chosen by step doubling on a pilot window after
the transient (:func:`_pilot_error`, :func:`_choose_dt`) and then kept fixed. User fields and
Jacobians reach the kernels as first-class functions typed by their signature
(:mod:`nndyn_fast._first_class`), so the kernels compile once and load from the disk cache.

Long runs stream to a run file and resume exactly (:func:`nndyn_fast.runs.start_run`).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numba
import numpy as np

from . import _compile_cache  # noqa: F401  (the kernels' cache policy: installed on import)
from ._first_class import call, typed
from ._validate import (
    check_bool,
    check_int,
    check_jitted,
    check_memory,
    check_nonnegative,
    check_out_path,
    check_positive,
    check_real,
    check_steps,
)
from .delay import (
    LinearDDE,
    MackeyGlass,
    NeuralDDE,
    _arity,
    _delays,
    _history,
    _pack_model,
    _run_params,
    _user_field,
)
from .errors import NonFiniteStateError
from .kernels import dde as _kd
from .kernels import dde_lyapunov as _kl
from .lyapunov import _block_stats, _committed_rows, _drift
from .runs import start_run
from .threads import for_work

__all__ = ["DDELyapunovSpectrum", "dde_lyapunov", "segment_weights"]

# relative tolerance of "dt divides the delay" (tau / dt within this of an integer)
_DIVIDE_RTOL = 1e-9
# serial seconds per RK4 step, per member, per (tangent + 1) and per d^2 (m + 1) Jacobian
# entry, for the thread choice of threads.for_work (rough: Mackey-Glass k = 4, one thread)
_SECONDS_PER_UNIT = 2e-8


@dataclass(frozen=True)
class DDELyapunovSpectrum:
    """Result of :func:`dde_lyapunov`.

    Attributes
    ----------
    exponents : (k,) estimates in 1/time, averaged over the batch members.
    stderr : (k,) standard error by batch means over ``n_blocks`` consecutive blocks of the
        member-averaged log growth.
    per_member : (B, k) each initial history's estimates.
    drift : (k,) abs(estimate at the end - estimate at half time), a convergence diagnostic.
    time, running : (n_records,), (n_records, k) running estimates (member means) after each
        chunk, the time measured from the end of the transient.
    X, V : final grid segments of the solution (B, N + 1, d) and of the orthonormal tangent
        vectors (B, k, N + 1, d), oldest node first.
    steps, t_total, dt : measured steps, their duration and the step.
    dimension : (N + 1) d, the dimension of the discretised state.
    rtol : the tolerance the step was chosen for (None when ``dt`` was given).
    error_estimate : the pilot's estimated relative error per unit time at ``dt`` (None when
        ``dt`` was given).
    """

    exponents: np.ndarray
    stderr: np.ndarray
    per_member: np.ndarray
    drift: np.ndarray
    time: np.ndarray
    running: np.ndarray
    X: np.ndarray
    V: np.ndarray
    steps: int
    t_total: float
    dt: float
    dimension: int
    rtol: float | None = None
    error_estimate: float | None = None

    @property
    def sum(self) -> float:
        return float(np.sum(self.exponents))


def segment_weights(n_nodes: int, dt: float) -> np.ndarray:
    """Quadrature weights of the segment inner product, oldest node first: trapezoid weights
    ``dt/2, dt, ..., dt, dt/2`` plus 1 at the current (newest) point."""
    w = np.full(n_nodes, float(dt))
    w[0] = w[-1] = 0.5 * dt
    w[-1] += 1.0
    return w


def _lagrange_weights(u: float) -> np.ndarray:
    """Weights of the cubic Lagrange interpolant through the nodes 0, 1, 2, 3 at ``u``."""
    nodes = np.arange(4.0)
    w = np.ones(4)
    for i in range(4):
        for j in range(4):
            if j != i:
                w[i] *= (u - nodes[j]) / (nodes[i] - nodes[j])
    return w


def _grid(taus: np.ndarray, dt: float) -> tuple[np.ndarray, int]:
    """Delays in steps N_j (checked to be whole) and N = max N_j."""
    ratio = taus / dt
    check_steps("max(delays) / dt", float(ratio.max()))
    Nj = np.rint(ratio)
    bad = np.abs(ratio - Nj) > _DIVIDE_RTOL * np.maximum(ratio, 1.0)
    if np.any(bad) or np.any(Nj < 1):
        raise ValueError(
            f"dt must divide every delay (tau / dt a whole number >= 1), got delays "
            f"{taus.tolist()} and dt = {dt!r} (tau / dt = {ratio.tolist()})"
        )
    N = int(Nj.max())
    if N < 3:
        raise ValueError(
            f"max(delays) / dt must be >= 3 (the segment needs 4 grid nodes for the cubic "
            f"interpolation of delayed values), got {N}: take dt <= {float(taus.max()) / 3!r}"
        )
    return Nj.astype(np.int64), N


def _stencils(Nj: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """Per delay: offset from n of the first of the four nodes interpolated at
    t_n + dt/2 - tau_j (centred when the segment allows) and their Lagrange weights."""
    off = np.clip(-Nj - 1, -N, -3).astype(np.int64)
    w = np.array([_lagrange_weights(float(-nj + 0.5 - o)) for nj, o in zip(Nj, off, strict=True)])
    return off, np.ascontiguousarray(w.reshape(-1, 4))


_JAC_ADAPTERS: dict[Any, Any] = {}


def _inplace_jac(jac: Any) -> Any:
    """``jac(t, x, xd, args) -> J`` as ``jac(t, x, xd, args, J)`` (wrapped once a process)."""
    if jac not in _JAC_ADAPTERS:

        @numba.njit
        def g(t, x, xd, args, J):
            r = jac(t, x, xd, args)
            J[:, :, :] = r

        _JAC_ADAPTERS[jac] = g
    return _JAC_ADAPTERS[jac]


def _history_grid(hist: Any, t0: float, N: int, dt: float) -> np.ndarray:
    """The history on the grid t0 - N dt, ..., t0 as ring rows (node i in row i mod (N + 1))."""
    R = N + 1
    X = np.zeros((hist.B, R, hist.d))
    tmp = np.zeros(hist.d)
    for b in range(hist.B):
        h = (hist.hc[b], hist.hst, hist.hsy[b], hist.hsdy[b], hist.hp[b])
        for i in range(-N, 1):
            s = t0 + i * dt
            if hist.kind == _kd.H_FUNC:
                hist.hfn(s, hist.hp[b], tmp)
            else:
                _kd.history_eval(hist.kind, h, None, s, tmp)
            X[b, i % R] = tmp
    if not np.all(np.isfinite(X)):
        raise ValueError("history must be finite on [t0 - max(delays), t0]")
    return X


def _check_jac(jac: Any, hist: Any, X: np.ndarray, Nj: np.ndarray, t0: float, args: tuple):
    """Call the user's Jacobian once at t0 (first member) and return its in-place form."""
    n = _arity(jac)
    if n not in (4, 5):
        raise ValueError(
            f"jac must be jac(t, x, xd, args, J) or jac(t, x, xd, args) -> J, got {n} parameters"
        )
    R = X.shape[1]
    m, d = Nj.size, hist.d
    x0 = X[0, 0].copy()
    xd = np.array([X[0, (-int(nj)) % R] for nj in Nj])
    try:
        if n == 5:
            J = np.zeros((m + 1, d, d))
            jac(t0, x0, xd, args, J)
        else:
            J = np.asarray(jac(t0, x0, xd, args))
    except Exception as exc:
        raise TypeError(f"jac(t0, x0, xd, args) failed at t0 = {t0}: {exc}") from exc
    if J.shape != (m + 1, d, d) or not np.issubdtype(J.dtype, np.floating):
        raise ValueError(
            f"jac must give a float array of shape (m + 1, d, d) = {(m + 1, d, d)} (J[0] with "
            f"respect to x(t), J[1 + j] to x(t - tau_j)), got {J.dtype} {J.shape}"
        )
    if not np.all(np.isfinite(J)):
        raise ValueError(f"jac gave non-finite values at t0 = {t0}")
    return jac if n == 5 else _inplace_jac(jac)


def _orthonormal_segments(rng: np.random.Generator, B: int, k: int, R: int, d: int, w_rows):
    """Random tangent segments (B, k, R, d), orthonormal in the weighted inner product
    (``w_rows`` (R,) the weight of each ring row); the same for every member, so that a member
    of a batch gives what it gives alone."""
    s = np.sqrt(w_rows)[:, None]
    G = rng.standard_normal((k, R, d))
    q, _ = np.linalg.qr((G * s).reshape(k, -1).T)
    return np.broadcast_to(q.T.reshape(k, R, d) / s, (B, k, R, d)).copy()


def _check_k(k: int, R: int, d: int) -> None:
    if k > R * d:
        raise ValueError(
            f"k must be <= the discretised dimension (max(delays) / dt + 1) d = {R} x {d} = "
            f"{R * d}, got {k}"
        )


def _stored_step(out: Any, rtol: float) -> tuple[float, float] | None:
    """The step and estimate a run file chose for ``rtol`` (None if it holds no such run:
    start_run then says what differs)."""
    from .storage import open_run

    try:
        with open_run(out) as f:
            p = dict(f.params) if f.kind == "dde_lyapunov" else {}
    except Exception:
        return None
    if p.get("rtol") != rtol or p.get("dt_chosen") is None or p.get("dt_error_estimate") is None:
        return None
    return float(p["dt_chosen"]), float(p["dt_error_estimate"])


def _grid_unit(taus: np.ndarray) -> tuple[float, int]:
    """The largest g with every delay a whole multiple of g, and the fewest steps per g that
    give max(delays) / dt >= 3 (the grid steps are dt = g / n)."""
    tmax = float(taus.max())
    fr = [Fraction(float(t) / tmax).limit_denominator(_MAX_DENOMINATOR) for t in taus]
    off = [abs(float(q) - float(t) / tmax) for q, t in zip(fr, taus, strict=True)]
    if max(off) > _DIVIDE_RTOL:
        raise ValueError(
            f"rtol needs commensurate delays (each a whole multiple of one step g, with "
            f"max(delays) / g <= {_MAX_DENOMINATOR}), got delays {taus.tolist()}: give dt instead"
        )
    lcm = math.lcm(*(q.denominator for q in fr))
    ints = [q.numerator * (lcm // q.denominator) for q in fr]
    per = lcm // math.gcd(*ints)  # max(delays) = per * g
    return tmax / per, -(-3 // per)


def _grid_tuple(t0: float, dt: float, Nj: np.ndarray, N: int) -> tuple:
    """The kernel's ``grid`` argument for the step ``dt`` (delays N_j dt, segment N + 1)."""
    mid_off, mid_w = _stencils(Nj, N)
    return (t0, dt, -Nj, 1 - Nj, mid_off, mid_w, segment_weights(N + 1, dt))


def _typed_fields(fn: Any, jfn: Any, kargs: tuple) -> tuple[Any, Any]:
    """A user field and Jacobian as first-class functions (:mod:`nndyn_fast._first_class`), so
    the kernels compile once per signature and load from the on-disk cache."""
    f8, v, m2 = numba.types.float64, numba.types.float64[::1], numba.types.float64[:, ::1]
    a = numba.typeof(kargs)
    return typed(fn, f8, v, m2, a, v), typed(jfn, f8, v, m2, a, numba.types.float64[:, :, ::1])


# rtol: the step is chosen on a pilot window of this many max(delays) after the transient
_PILOT_DELAYS = 2
# ... with an estimated error at most this fraction of rtol (margin for the estimate's error)
_SAFETY = 0.5
# ... starting from about this many steps per max(delays), trying at most this many steps
_PILOT_START_NODES = 20
_MAX_PILOTS = 10
# ... up to this many steps per max(delays) (a finer step needs dt)
_MAX_NODES = 2**18
# commensurate delays: max(delays) / g at most this
_MAX_DENOMINATOR = 10_000


def _pilot_segments(B: int, k: int, R: int, d: int) -> np.ndarray:
    """k smooth, independent tangent segments (B, k, R, d) for the pilot: tangent a is
    cos(pi q s / tau_max) in component a mod d, q = a // d, s the time from the segment's
    oldest node (ring rows at n = 0), so that every other node is the same on a grid twice as
    coarse."""
    V = np.zeros((B, k, R, d))
    N = R - 1
    rows = np.arange(-N, 1) % R
    for a in range(k):
        V[:, a, rows, a % d] = np.cos(np.pi * (a // d) * np.arange(R) / N)
    return V


def _pilot_error(n, g, taus, k, t0, transient, hist, fld, fn_t, jac_t, kargs, kern, unit):
    """Estimated relative error per unit time of the method at dt = g / n (step doubling).

    The solution and k tangent segments (smooth at the start, unlike the random segments of
    the run, see :func:`_pilot_segments`) advance at dt / 2 through the transient
    (orthonormalised once per max(delays)); from that state (every other node) the solution
    advances at dt and at dt / 2 over the pilot window T_p = 2 max(delays), and so does each
    tangent segment alone, without normalisation in between, from t0 + max(transient, T_p)
    (the tangents' own start is the pilot's choice, not the run's; it carries the history's
    kink in its derivative and its error says nothing of the run). Then::

        E(dt) = 16/15 max(|x_dt - x_dt/2| / max|x_dt/2|, max_a |v_a,dt - v_a,dt/2| / max|v_a,dt/2|)
                / T_p

    at the nodes of the final segment, over the batch (Richardson: RK4's error is O(dt^4), so
    the error of the dt run is 16/15 of its difference from the dt / 2 run). The tangents are
    compared as solutions, node by node: the norm's trapezoid quadrature differs between the
    grids at O(dt^2), which changes no exponent (an equivalent norm) and is left out. inf if
    a run blew up.
    """
    B, d = hist.B, hist.d
    dt = g / n
    Nj, N = _grid(taus, dt)
    R, R2 = N + 1, 2 * N + 1
    check_memory(f"the pilot's {k} tangent segment(s) of {R2} x {d} values", 8.0 * B * k * R2 * d)
    grid2 = _grid_tuple(t0, 0.5 * dt, 2 * Nj, 2 * N)
    grid1 = _grid_tuple(t0, dt, Nj, N)
    J = check_steps("transient / dt", np.round(transient / dt))
    X2 = _history_grid(hist, t0, 2 * N, 0.5 * dt)
    V2 = _pilot_segments(B, k, R2, d)
    ist2 = np.zeros((B, 2), dtype=np.int64)

    def go(X, V, ist, steps, reorth, grid) -> tuple[bool, np.ndarray]:
        logsum = np.zeros((B, V.shape[1]))
        with for_work(unit * V.shape[1] * steps):
            call(kern, fn_t, jac_t, kargs, fld, grid, X, V, ist, steps, reorth, logsum)
        return bool(np.all(ist[:, _kl.I_STATUS] == _kl.OK)), logsum

    W = _PILOT_DELAYS * N

    def compare(J: int, a: int, with_x: bool) -> list[float] | None:
        """From the fine state at node J: the window at dt and at dt / 2, tangent a alone."""
        # coarse: its node j is the fine node 2 j; fine: the state as it is
        nodes = np.arange(J - N, J + 1)
        X1 = np.zeros((B, R, d))
        V1 = np.zeros((B, 1, R, d))
        X1[:, nodes % R] = X2[:, (2 * nodes) % R2]
        V1[:, 0, nodes % R] = V2[:, a, (2 * nodes) % R2]
        Xf, Vf = X2.copy(), V2[:, a : a + 1].copy()
        ist1, istf = ist2.copy(), ist2.copy()
        ist1[:, _kl.I_N] = J
        ok1, ls1 = go(X1, V1, ist1, W, W + 1, grid1)
        okf, lsf = go(Xf, Vf, istf, 2 * W, 2 * W + 1, grid2)
        if not (ok1 and okf):
            return None
        end = np.arange(J + W - N, J + W + 1)
        # the tangents as solutions: undo the kernel's final normalisation
        v1 = V1[:, 0][:, end % R] * np.exp(ls1)[:, :, None]
        vf = Vf[:, 0][:, (2 * end) % R2] * np.exp(lsf)[:, :, None]
        pairs = [(v1, vf)]
        if with_x:
            pairs.append((X1[:, end % R], Xf[:, (2 * end) % R2]))
        out = []
        for u, w in pairs:
            diff = np.abs(u - w).reshape(B, -1).max(axis=1)
            scale = np.abs(w).reshape(B, -1).max(axis=1)
            out.append(np.max(np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), diff)))
        return out

    # the solution from the end of the transient; the tangents once they have run for at
    # least the window's length (their own start, smooth but with the history's kink in the
    # derivative, is the pilot's choice, not the run's: its error says nothing of the run)
    Jv = max(J, W)
    errs: list[float] = []
    if J > 0 and not go(X2, V2, ist2, 2 * J, 2 * N, grid2)[0]:
        return math.inf
    if Jv > J:
        e = compare(J, 0, True)
        if e is None:
            return math.inf
        errs.append(e[1])
        if not go(X2, V2, ist2, 2 * (Jv - J), 2 * N, grid2)[0]:
            return math.inf
    for a in range(k):
        e = compare(Jv, a, a == 0 and Jv == J)
        if e is None:
            return math.inf
        errs += e
    est = 16.0 / 15.0 * max(errs) / (W * dt)
    return est if math.isfinite(est) else math.inf


def _choose_dt(rtol: float, taus: np.ndarray, k: int, d: int, pilot) -> tuple[float, float]:
    """The largest step g / n whose pilot error estimate ``pilot(n)`` is <= _SAFETY * rtol
    (and whose segment holds at least k dimensions); returns (dt, its estimate). n is
    predicted from E ~ dt^p and checked by a pilot run: p = 4 (RK4) until two pilots measure
    it (clipped to [1, 4]: below 4 where the window holds the history's kink)."""
    g, n_min = _grid_unit(taus)
    per = round(float(taus.max()) / g)
    n_min = max(n_min, -(-(-(-k // d) - 1) // per))
    n_max = max(1, _MAX_NODES // per)
    if n_min > n_max:
        raise ValueError(
            f"k = {k} needs a segment of at least {k} values (d = {d}), more than the "
            f"{_MAX_NODES} steps per max(delays) rtol may choose: give dt"
        )
    target = _SAFETY * rtol
    tested: dict[int, float] = {}
    n = min(n_max, max(n_min, round(_PILOT_START_NODES / per)))
    order = 4.0
    for _ in range(_MAX_PILOTS):
        est = tested[n] = pilot(n)
        fin = sorted(m for m, e in tested.items() if 0.0 < e < math.inf)
        if len(fin) >= 2:  # the observed order between the two nearest to n
            a, b = sorted(fin, key=lambda m: abs(m - n))[:2]
            order = min(4.0, max(1.0, math.log(tested[a] / tested[b]) / math.log(b / a)))
        ok = [m for m, e in tested.items() if e <= target]
        bad = [m for m, e in tested.items() if not e <= target]
        lo = max(bad) + 1 if bad else n_min
        if est <= target:
            # the coarsest step predicted to pass (aiming a little below the target)
            n_next = n_min if est == 0.0 else math.ceil(n * (est / (0.9 * target)) ** (1 / order))
            n_next = max(n_next, lo)
            if n_next >= 0.95 * min(ok):  # not worth another pilot
                break
        else:
            grow = (est / (0.8 * target)) ** (1 / order) if math.isfinite(est) else 2.0
            n_next = min(max(math.ceil(n * grow), n + 1), 8 * n, n_max)
            if n_next in tested or (ok and n_next >= min(ok)):
                break
        if n_next in tested:
            break
        n = n_next
    ok = [m for m, e in tested.items() if e <= target]
    if not ok:
        best = min(tested, key=lambda m: (tested[m], -m))
        raise ValueError(
            f"rtol = {rtol!r} is not reached by {len(tested)} pilot runs, with up to "
            f"{max(tested) * per} steps per max(delays) (at most {n_max * per}; estimated error "
            f"{tested[best]:.3g} per unit time at dt = {g / best!r}): take a larger rtol or "
            "give dt"
        )
    n = min(ok)
    return g / n, tested[n]


def _dde_running_series(B: int, k: int) -> dict:
    """The ``running`` series of a ``dde_lyapunov`` run file, with units and names."""
    return {
        "running": {
            "time": {"units": "1", "long_name": "time after the transient (model units)"},
            "step": {"long_name": "RK4 steps after the transient"},
            "estimate": {
                "shape": (k,),
                "dims": ("exponent",),
                "units": "1/time",
                "long_name": "running Lyapunov exponent estimates (mean over members)",
            },
            "logsum": {
                "shape": (B, k),
                "dims": ("member", "exponent"),
                "units": "1",
                "long_name": "accumulated log stretching factors log R_jj per member",
            },
        }
    }


def dde_lyapunov(
    f: Any,
    history: Any,
    *,
    delays: Any,
    k: int,
    t_end: float,
    dt: float | None = None,
    rtol: float | None = None,
    transient: float = 0.0,
    jac: Any = None,
    args: tuple = (),
    history_args: Any = None,
    t0: float = 0.0,
    reorth_every: int | None = None,
    n_records: int = 200,
    n_blocks: int = 20,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    extra_params: dict[str, Any] | None = None,
) -> DDELyapunovSpectrum:
    """Top-k Lyapunov exponents of x'(t) = f(t, x(t), x(t - tau_1), ..., x(t - tau_m)).

    The solution and k tangent segments v (solutions of v' = J_0 v + sum_j J_j v(t - tau_j))
    advance by fixed-step RK4 on the grid t0 + n dt (``dt`` divides every delay; delayed values
    at half steps by cubic interpolation of the grid values); every ``reorth_every`` steps the
    segments are orthonormalised by modified Gram-Schmidt in
    <u, v> = u(t) . v(t) + int_{t - tau_max}^t u . v ds (trapezoid rule on the grid), and
    lambda_j = (1/T) sum log R_jj.

    Parameters
    ----------
    f : a built-in model (:class:`~nndyn_fast.NeuralDDE`, :class:`~nndyn_fast.LinearDDE`,
        :class:`~nndyn_fast.MackeyGlass`, which supply their Jacobians) or a Numba ``@njit``
        field ``f(t, x, xd, args, out)`` / ``f(t, x, xd, args) -> dx`` (``xd`` (m, d)), which
        needs ``jac``.
    history : the initial function on [t0 - max(delays), t0], as for :func:`~nndyn_fast.ddeint`
        (a constant (d,) or batch (B, d), samples ``(times, values[, slopes])``, or a jitted
        ``phi(t)`` / ``phi(t, p)``). A batch runs its members in parallel.
    delays : tau (> 0) or m delays, each a whole multiple of ``dt``.
    k : int
        Number of exponents, 1 <= k <= (max(delays) / dt + 1) d (the discretised dimension;
        with ``rtol`` checked once the step is chosen).
    t_end : measured duration (time units; ``round(t_end / dt)`` steps).
    dt : RK4 step; max(delays) / dt >= 3. Give exactly one of ``dt`` and ``rtol``.
    rtol : relative error per unit time (> 0) the step is chosen for, by step doubling on the
        actual trajectory: the largest dt = g / n (g the largest step that divides every delay,
        n whole, and the segment at least k dimensions) whose pilot estimate (below) is at
        most rtol / 2; the run then goes on that fixed grid. The pilot advances the solution
        and k smooth tangent segments through the transient at dt / 2 (orthonormalised once
        per max(delays)), then from that state the solution, and from t0 + max(transient,
        T_p) each tangent segment, over a window T_p = 2 max(delays) at dt and at dt / 2, and
        estimates (RK4: error O(dt^4))::

            E(dt) = 16/15 max(|x_dt - x_dt/2| / max|x|, max_a |v_a,dt - v_a,dt/2| / max|v_a|)
                    / T_p

        at the nodes of the window's final segment, over the batch (the tangents compared as
        solutions, without normalisation). n is predicted from E ~ dt^p (p = 4, or as two
        pilots measure it) and each prediction checked by a pilot (at most 10). The chosen dt
        and E go to ``DDELyapunovSpectrum.dt`` / ``error_estimate`` and to the run file's
        params (``rtol``, ``dt_chosen``, ``dt_error_estimate``; ``dt`` is None there, the
        argument as given) and summary (``dt``, ``rtol``, ``dt_error_estimate``); a resume
        continues with the stored step, a rerun with the same rtol chooses the same step. The
        solution's error before the end of the transient is not controlled (it only places the
        state); without a transient the window holds the history's kink at t0, where the
        method is of order 2 (E then underestimates by up to 25 %). A pilot run costs about
        2 (max(transient, T_p) + 6 max(delays)) / dt steps of the solution and k tangent
        segments. Needs commensurate delays.
    transient : duration advanced (solution and tangent segments) before measuring.
    jac : for a user ``f``: ``jac(t, x, xd, args, J)`` filling J (m + 1, d, d), or
        ``jac(t, x, xd, args) -> J``; J[0] = df/dx(t), J[1 + j] = df/dx(t - tau_j).
    args : tuple passed to the user's ``f`` and ``jac``.
    history_args : per-member parameters of a history function ``phi(t, p)``.
    t0 : start time.
    reorth_every : steps between re-orthonormalisations (default max(delays) / dt).
    n_records : running estimates kept (the kernel chunk is steps / n_records).
    n_blocks : blocks for the batch-means standard error (>= 2).
    seed : seed of the random initial tangent segments.
    out : optional HDF5 run file: series ``running`` (time, step, estimate (k,), logsum
        (B, k)) committed per chunk with a checkpoint (solution and tangent segments, step
        counters, log sums), so that ``resume=True`` continues a killed run bitwise; the
        exponents and standard errors go to the run's summary.
    overwrite : replace an existing ``out``.
    resume : continue the run in ``out``; refused (ValueError naming the difference) when an
        option, the field (weights, or a user function's name and code), the history or
        ``args`` differ.
    extra_params : JSON-able options stored in the run file's ``/params`` beside the run's own
        (the command line's options); compared on resume like the others.

    Returns
    -------
    DDELyapunovSpectrum

    Raises
    ------
    ValueError
        delays <= 0, both or neither of dt and rtol, rtol not finite and > 0 (or not reached
        by a step up to 2^18 per delay), dt not dividing a delay or too coarse
        (max(delays) / dt < 3), k outside [1, discretised dimension], a user field without
        ``jac``, Jacobians of the wrong shape, bad history, t_end <= 0, transient < 0.
    TypeError
        ``f``, ``jac`` or a history function that is not Numba-jitted, or that fails when
        called at t0.
    NonFiniteStateError
        The solution or a tangent segment became NaN/inf, or a tangent segment collapsed to
        zero; names the step and time (a streamed run keeps its committed rows).

    References
    ----------
    J. D. Farmer, Physica D 4 (1982) 366; K. Ikeda, K. Matsumoto, Physica D 29 (1987) 223;
    G. Benettin et al., Meccanica 15 (1980) 9.
    """
    from numba.core.registry import CPUDispatcher

    taus = _delays(delays)
    if (dt is None) == (rtol is None):
        raise ValueError(
            "give exactly one of dt (the RK4 step) and rtol (the relative error per unit time "
            f"the step is chosen for), got dt = {dt!r} and rtol = {rtol!r}"
        )
    if rtol is not None:
        rtol = check_positive("rtol", rtol)
        g, n_min = _grid_unit(taus)
        # a provisional grid for the checks of the history and the user's functions
        dt_probe = g / max(n_min, round(_PILOT_START_NODES * g / float(taus.max())))
    else:
        dt = dt_probe = check_positive("dt", dt)
    t_end = check_positive("t_end", t_end)
    transient = check_nonnegative("transient", transient)
    t0 = check_real("t0", t0)
    Nj, N = _grid(taus, dt_probe)
    if dt is not None:
        n_steps = max(1, check_steps("t_end / dt", np.round(t_end / dt)))
        check_steps("transient / dt", np.round(transient / dt))
    k = check_int("k", k, minimum=1)
    if reorth_every is not None:
        reorth_every = check_int("reorth_every", reorth_every, minimum=1)
    n_records = check_int("n_records", n_records, minimum=1)
    n_blocks = check_int("n_blocks", n_blocks, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    overwrite = check_bool("overwrite", overwrite)
    resume = check_bool("resume", resume)
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")
    if extra_params is not None and not isinstance(extra_params, dict):
        raise TypeError(f"extra_params must be a dict or None, got {type(extra_params).__name__}")
    if not isinstance(args, tuple):
        raise ValueError(f"args must be a tuple, got {type(args).__name__}")
    hist = _history(history, t0, float(taus.max()), history_args)
    B, d, m = hist.B, hist.d, taus.size
    if dt is not None:
        _check_k(k, N + 1, d)
    user = isinstance(f, CPUDispatcher)
    if user:
        if jac is None:
            raise ValueError(
                "jac must be given for a user field f: jac(t, x, xd, args, J) with J of shape "
                f"(m + 1, d, d) = {(m + 1, d, d)} (df/dx(t), then df/dx(t - tau_j))"
            )
        check_jitted("jac", jac)
        fn = _user_field(f, hist, t0, taus, args)
        model, ip, P = _kd.USER, np.zeros(10, dtype=np.int64), np.zeros(1)
        kargs = args
    else:
        if callable(f) and not isinstance(f, (NeuralDDE, LinearDDE, MackeyGlass)):
            check_jitted("f", f)
        if jac is not None:
            raise ValueError(
                f"jac is for a user field; the built-in {type(f).__name__} supplies its own"
            )
        model, ip, P, _ = _pack_model(f, d, m)
        fn, kargs = None, ()
    check_memory(f"the history segment of {N + 1} x {d} values", 8.0 * B * (N + 1) * d)
    X = _history_grid(hist, t0, N, dt_probe)
    jfn = _check_jac(jac, hist, X, Nj, t0, args) if user else None
    fld = (model, ip, P)
    # user functions go by their signature: one cached kernel serves every field of it
    fn_t, jac_t = _typed_fields(fn, jfn, kargs)
    kern = _kl.dde_lyap_advance if B > 1 else _kl.dde_lyap_advance_serial
    unit = _SECONDS_PER_UNIT * B * (k + 1) * max(1, d * d * (m + 1), P.size)

    est = None
    if rtol is not None:
        stored = _stored_step(out, rtol) if resume else None
        if stored is not None:
            dt, est = stored
        else:
            unit1 = unit * 2 / (k + 1)  # one tangent segment

            def pilot(n: int) -> float:
                return _pilot_error(n, g, taus, k, t0, transient, hist, fld, fn_t, jac_t,
                                    kargs, kern, unit1)  # fmt: skip

            dt, est = _choose_dt(rtol, taus, k, d, pilot)
        Nj, N = _grid(taus, dt)
        _check_k(k, N + 1, d)
        n_steps = max(1, check_steps("t_end / dt", np.round(t_end / dt)))
        X = _history_grid(hist, t0, N, dt)
    R = N + 1
    dim = R * d
    n_trans = check_steps("transient / dt", np.round(transient / dt))
    reorth = N if reorth_every is None else reorth_every
    check_memory(f"{k} tangent segment(s) of {R} x {d} values", 8.0 * B * (k + 1) * R * d)
    wq = segment_weights(R, dt)
    # the weight of each ring row at n = 0 (oldest node -N is in row 1)
    w_rows = wq[(np.arange(R) - 1) % R]
    grid = _grid_tuple(t0, dt, Nj, N)
    ist = np.zeros((B, 2), dtype=np.int64)

    def advance(X, V, n: int, logsum: np.ndarray) -> None:
        with for_work(unit * n):
            call(kern, fn_t, jac_t, kargs, fld, grid, X, V, ist, n, reorth, logsum)
        st = ist[:, _kl.I_STATUS]
        if np.any(st != _kl.OK):
            b = int(np.argmax(st != _kl.OK))
            step = int(ist[b, _kl.I_N])
            what = "became NaN/inf" if st[b] == _kl.NONFINITE else "collapsed to zero"
            raise NonFiniteStateError(
                f"dde_lyapunov: member {b}: the solution or a tangent segment {what} at step "
                f"{step} (t = {t0 + step * dt:g})",
                step=step,
                time=t0 + step * dt,
            )

    chunk = max(1, -(-n_steps // n_records))
    chunk = -(-chunk // reorth) * reorth
    fparams, finputs = _run_params(f, user, history, hist, args)
    if user:
        from .integrate import function_id

        fparams.update(jac=jac.py_func.__qualname__, jac_code=function_id(jac))
    spec = {
        "kind": "dde_lyapunov",
        "params": {
            **fparams,
            "delays": taus.tolist(),
            "dim": d,
            "batch": B,
            "k": k,
            "t_end": float(t_end),
            "steps": n_steps,
            # the arguments as given (a rerun passes them back), then the step the run used
            "dt": None if rtol is not None else dt,
            "rtol": rtol,
            "dt_chosen": dt,
            "dt_error_estimate": est,
            "t0": t0,
            "transient": float(transient),
            "reorth_every": reorth,
            "n_records": n_records,
            "n_blocks": n_blocks,
            "seed": seed,
            **(extra_params or {}),
        },
        "inputs": finputs,
        "series": _dde_running_series(B, k),
        "description": (
            f"Lyapunov spectrum (k = {k} leading exponents) of a delay differential equation "
            f"({fparams.get('model', 'user field')}, delays {taus.tolist()}) by the QR method on "
            f"the RK4 segment grid, {B} initial histories; running estimates after each chunk"
        ),
        "rows": {"running": -(-n_steps // chunk)},
    }
    run = None
    if out is not None and resume:
        run = start_run(out, **spec, checkpoint={}, resume=True)
        V = None
    else:
        if out is not None:
            check_out_path("out", out, overwrite=overwrite)
        V = _orthonormal_segments(np.random.default_rng(seed), B, k, R, d, w_rows)
        for pos in range(0, n_trans, chunk):
            advance(X, V, min(chunk, n_trans - pos), np.zeros((B, k)))
        logsum = np.zeros((B, k))
        done = 0
        if out is not None:
            start = {"X": X, "V": V, "ist": ist, "logsum": logsum, "step": 0}
            run = start_run(out, **spec, checkpoint=start, overwrite=overwrite)
    with run if run is not None else nullcontext():
        rec_t, rec_sum = [], []
        if run is not None:
            ck = run.checkpoint
            X = np.ascontiguousarray(ck["X"], dtype=np.float64)
            V = np.ascontiguousarray(ck["V"], dtype=np.float64)
            ist[:] = ck["ist"]
            logsum = np.array(ck["logsum"], dtype=np.float64)
            done = int(ck["step"])
            kept = _committed_rows(run, "running", ("time", "logsum"))
            rec_t, rec_sum = list(kept["time"]), list(kept["logsum"])
        while done < n_steps:
            n = min(chunk, n_steps - done)
            advance(X, V, n, logsum)
            done += n
            t = done * dt
            rec_t.append(t)
            rec_sum.append(logsum.copy())
            if run is not None:
                run.append(
                    "running",
                    time=np.array([t]),
                    step=np.array([float(done)]),
                    estimate=(logsum.mean(0) / t)[None],
                    logsum=logsum[None],
                )
                # copies: the writer keeps the checkpoint and writes it again on closing
                run.commit(X=X.copy(), V=V.copy(), ist=ist.copy(), logsum=logsum.copy(), step=done)
        res = _result(rec_t, rec_sum, n_steps, dt, n_blocks, X, V, ist, dim, rtol, est)
        if run is not None:
            run.summarize(
                exponents=res.exponents.tolist(), stderr=res.stderr.tolist(), dt=dt, rtol=rtol,
                dt_error_estimate=est,
            )  # fmt: skip
    return res


def _result(
    rec_t, rec_sum, n_steps, dt, n_blocks, X, V, ist, dim, rtol, est
) -> DDELyapunovSpectrum:
    time = np.asarray(rec_t, dtype=np.float64)
    sums = np.asarray(rec_sum, dtype=np.float64)  # (n_records, B, k)
    mean = sums.mean(axis=1)
    running = mean / time[:, None]
    se, _ = _block_stats(mean, time, n_blocks)
    t_total = n_steps * dt
    # segments oldest node first (node n - N sits in ring row (n + 1) mod R)
    R = X.shape[1]
    order = (int(ist[0, _kl.I_N]) + 1 + np.arange(R)) % R
    return DDELyapunovSpectrum(
        exponents=mean[-1] / t_total,
        stderr=se,
        per_member=sums[-1] / t_total,
        drift=_drift(time, running),
        time=time,
        running=running,
        X=X[:, order].copy(),
        V=V[:, :, order].copy(),
        steps=int(n_steps),
        t_total=float(t_total),
        dt=float(dt),
        dimension=int(dim),
        rtol=rtol,
        error_estimate=est,
    )
