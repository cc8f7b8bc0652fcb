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

Long runs stream to a run file and resume exactly (:func:`nndyn_fast.runs.start_run`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from . import _compile_cache  # noqa: F401  (the kernels' cache policy: installed on import)
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
    dt: float,
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
        Number of exponents, 1 <= k <= (max(delays) / dt + 1) d (the discretised dimension).
    t_end : measured duration (time units; ``round(t_end / dt)`` steps).
    dt : RK4 step; max(delays) / dt >= 3.
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
        delays <= 0, dt not dividing a delay or too coarse (max(delays) / dt < 3), k outside
        [1, discretised dimension], a user field without ``jac``, Jacobians of the wrong shape,
        bad history, t_end <= 0, transient < 0.
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
    dt = check_positive("dt", dt)
    t_end = check_positive("t_end", t_end)
    transient = check_nonnegative("transient", transient)
    t0 = check_real("t0", t0)
    Nj, N = _grid(taus, dt)
    R = N + 1
    n_steps = max(1, check_steps("t_end / dt", np.round(t_end / dt)))
    n_trans = check_steps("transient / dt", np.round(transient / dt))
    k = check_int("k", k, minimum=1)
    reorth = N if reorth_every is None else check_int("reorth_every", reorth_every, minimum=1)
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
    dim = R * d
    if k > dim:
        raise ValueError(
            f"k must be <= the discretised dimension (max(delays) / dt + 1) d = {R} x {d} = "
            f"{dim}, got {k}"
        )
    check_memory(f"{k} tangent segment(s) of {R} x {d} values", 8.0 * B * (k + 1) * R * d)
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
    X = _history_grid(hist, t0, N, dt)
    jfn = _check_jac(jac, hist, X, Nj, t0, args) if user else None
    mid_off, mid_w = _stencils(Nj, N)
    wq = segment_weights(R, dt)
    # the weight of each ring row at n = 0 (oldest node -N is in row 1)
    w_rows = wq[(np.arange(R) - 1) % R]
    grid = (t0, dt, -Nj, 1 - Nj, mid_off, mid_w, wq)
    fld = (model, ip, P)
    ist = np.zeros((B, 2), dtype=np.int64)
    kern = _kl.dde_lyap_advance if B > 1 else _kl.dde_lyap_advance_serial
    unit = _SECONDS_PER_UNIT * B * (k + 1) * max(1, d * d * (m + 1), P.size)

    def advance(X, V, n: int, logsum: np.ndarray) -> None:
        with for_work(unit * n):
            kern(fn, jfn, kargs, fld, grid, X, V, ist, n, reorth, logsum)
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
            "dt": dt,
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
        res = _result(rec_t, rec_sum, n_steps, dt, n_blocks, X, V, ist, dim)
        if run is not None:
            run.summarize(exponents=res.exponents.tolist(), stderr=res.stderr.tolist())
    return res


def _result(rec_t, rec_sum, n_steps, dt, n_blocks, X, V, ist, dim) -> DDELyapunovSpectrum:
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
    )
