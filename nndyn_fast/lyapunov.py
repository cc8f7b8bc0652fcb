"""Lyapunov exponents by the QR method: maps, flows, random products, SGD and deep networks.

The exponents of a linear cocycle v_{t+1} = A_t v_t are
lambda_j = lim_{t -> inf} (1/t) log sigma_j(A_{t-1} ... A_0). The QR (Benettin / Shimada–
Nagashima) method pushes k orthonormal tangent vectors through the A_t and re-orthonormalises
them, V_{t+1} R_t = A_t V_t; then lambda_j = lim (1/t) sum_s log|(R_s)_jj|.

- :func:`lyapunov_spectrum`: maps x_{t+1} = F(x_t) (A_t = DF(x_t)) and flows dx/dt = f(t, x)
  (tangent flow integrated with RK4 alongside the state).
- :func:`product_lyapunov`: products of given or sampled matrices.
- :func:`sgd_lyapunov`: SGD near an interpolation minimum, A_t = I - (lr/B) sum_{i in batch_t} H_i
  with H_i = g_i g_i^T (or explicit Hessians), on the span of the g_i.
- :func:`mean_square_exponent`: the second-moment (mean-square) growth rate of the same product.
- :func:`sgd_stability_diagram`: both over a grid of (lr, B), with the GD threshold 2/lambda_max.
- :func:`network_lyapunov`, :func:`random_network_lyapunov`: layer-to-layer Jacobian products
  diag(phi'(z_l)) W_l of MLPs (the product that backpropagation multiplies).

References
----------
G. Benettin, L. Galgani, A. Giorgilli, J.-M. Strelcyn, Meccanica 15 (1980) 9–30.
I. Shimada, T. Nagashima, Prog. Theor. Phys. 61 (1979) 1605–1616.
C. M. Newman, Commun. Math. Phys. 103 (1986) 121–126 (products of Gaussian matrices).
B. Poole et al., "Exponential expressivity in deep neural networks through transient chaos",
NeurIPS 2016 (order-to-chaos transition of random networks).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ._validate import (
    as_array,
    check_bool,
    check_int,
    check_jitted,
    check_memory,
    check_nonnegative,
    check_option,
    check_out_path,
    check_positive,
    check_real,
    check_seed,
    check_steps,
)
from .errors import NonFiniteStateError
from .kernels import lyapunov as _k

__all__ = [
    "Henon",
    "Lorenz63",
    "MapSystem",
    "FlowSystem",
    "LyapunovSpectrum",
    "lyapunov_spectrum",
    "product_lyapunov",
    "SGDLyapunov",
    "sgd_lyapunov",
    "sgd_lyapunov_mlp",
    "mean_square_exponent",
    "StabilityDiagram",
    "sgd_stability_diagram",
    "plot_stability_diagram",
    "NetworkLyapunov",
    "network_lyapunov",
    "random_network_lyapunov",
]

_SAMPLING = ("with", "without")
_SPACES = ("span", "full")
_MAX_INDEX_ENTRIES = 1 << 23  # batch indices held per chunk (32 MiB of int32)


# ============================================================================================
# Systems
# ============================================================================================
class _BuiltinSystem:
    """Shared checks of the built-in systems: every field is a finite number."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v):
                raise ValueError(f"{f.name} must be a finite number, got {v!r}")

    def args(self) -> np.ndarray:
        """The parameters as the float64 array the built-in kernels take."""
        return np.array([getattr(self, f.name) for f in fields(self)], dtype=np.float64)


class _UserSystem:
    """Shared checks of the user systems: jitted functions and a dimension >= 1."""

    def __post_init__(self) -> None:
        check_jitted(self._fn_name, getattr(self, self._fn_name))
        check_jitted("jac", self.jac)
        check_int("dim", self.dim, minimum=1)


@dataclass(frozen=True)
class Henon(_BuiltinSystem):
    """Hénon map (x, y) -> (1 - a x^2 + y, b x); det DF = -b, so lambda_1 + lambda_2 = log b."""

    a: float = 1.4
    b: float = 0.3
    kind = "map"
    dim = 2


@dataclass(frozen=True)
class Lorenz63(_BuiltinSystem):
    """Lorenz-63 flow x' = sigma (y - x), y' = x (rho - z) - y, z' = x y - beta z.

    tr Df = -(sigma + 1 + beta), so the exponents sum to -(sigma + 1 + beta).
    """

    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0
    kind = "flow"
    dim = 3


@dataclass(frozen=True)
class MapSystem(_UserSystem):
    """A user map x_{t+1} = step(x_t): Numba ``@njit`` functions ``step(x, args, out)`` and
    ``jac(x, args, J)`` (J the (dim, dim) Jacobian at x); ``args`` is passed through unchanged."""

    step: Any
    jac: Any
    dim: int
    args: Any = ()
    kind = "map"
    _fn_name = "step"


@dataclass(frozen=True)
class FlowSystem(_UserSystem):
    """A user flow dx/dt = f(t, x): Numba ``@njit`` functions ``f(t, x, args, out)`` and
    ``jac(t, x, args, J)``; ``args`` is passed through unchanged."""

    f: Any
    jac: Any
    dim: int
    args: Any = ()
    kind = "flow"
    _fn_name = "f"


_BUILTIN_NAMES = {"henon": Henon, "lorenz63": Lorenz63}


def _resolve_system(system: Any) -> Any:
    if isinstance(system, str):
        check_option("system", system, _BUILTIN_NAMES)
        return _BUILTIN_NAMES[system]()
    if not isinstance(system, (Henon, Lorenz63, MapSystem, FlowSystem)):
        raise TypeError(
            "system must be Henon, Lorenz63, MapSystem, FlowSystem or one of "
            f"{list(_BUILTIN_NAMES)}, got {type(system).__name__}"
        )
    return system


# ============================================================================================
# Results and statistics
# ============================================================================================
def _t_quantile(level: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2.0, dof))


def _block_stats(sums: np.ndarray, ends: np.ndarray, n_blocks: int) -> tuple[np.ndarray, int]:
    """Standard error of the exponents by batch means.

    ``sums`` (n_chunks, k) are the cumulative log growths at the chunk ends ``ends``
    (n_chunks,); the chunks are regrouped into ``n_blocks`` consecutive blocks, each block's
    exponent = its log growth / its length."""
    incr = np.diff(sums, axis=0, prepend=0.0)
    lengths = np.diff(ends, prepend=0.0)
    n_chunks = incr.shape[0]
    nb = min(n_blocks, n_chunks)
    if nb < 2:
        return np.full(incr.shape[1], np.nan), nb
    groups = np.array_split(np.arange(n_chunks), nb)
    est = np.array([incr[g].sum(0) / lengths[g].sum() for g in groups])
    return _standard_error(est), nb


def _standard_error(samples: np.ndarray) -> np.ndarray:
    """Standard error of the mean over the first axis (NaN with fewer than two samples)."""
    n = samples.shape[0]
    if n < 2:
        return np.full(samples.shape[1:], np.nan)
    with np.errstate(invalid="ignore"):  # -inf exponents (rank-deficient Jacobians)
        return samples.std(axis=0, ddof=1) / math.sqrt(n)


def _tangent_failure(status: int) -> str:
    """What a kernel status other than OK means, for error messages."""
    return "became NaN/inf" if status == _k.NONFINITE else "collapsed to zero (exponent -inf)"


# --------------------------------------------------------------------------------------------
# Run files: create, or resume after checking the parameters; failed/complete on exit
# --------------------------------------------------------------------------------------------
def _fingerprint(*arrays: Any) -> str:
    """A digest of arrays (dtype, shape and bytes): resuming checks that the data are the same."""
    h = hashlib.blake2b(digest_size=16)
    for arr in arrays:
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _same_param(stored: Any, value: Any) -> bool:
    if isinstance(stored, np.ndarray) or isinstance(value, np.ndarray):
        return bool(np.array_equal(np.asarray(stored), np.asarray(value)))
    return bool(stored == value)


def _start_run(
    out: str | Path,
    *,
    resume: bool,
    overwrite: bool,
    kind: str,
    params: dict[str, Any],
    derived: dict[str, Any],
    series: dict[str, dict[str, Any]],
) -> tuple[Any, dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Create the run file ``out``, or reopen it to continue from its last commit.

    A resume is refused (ValueError, file untouched) unless the file holds a ``kind`` run with
    at least one commit whose stored ``params`` equal these; ``derived`` values (computed from
    the parameters) are stored but not compared. Returns the writer, the last checkpoint and the
    committed rows ``{series: {field: array}}`` (both empty for a new run).
    """
    from .storage import TrajectoryWriter, open_run

    if not resume:
        writer = TrajectoryWriter.create(
            out, kind=kind, params={**params, **derived}, series=series, overwrite=overwrite
        )
        return writer, {}, {}
    check_out_path("out", out, resume=True)
    with open_run(out) as run:
        if run.attrs.get("kind") != kind:
            raise ValueError(
                f"cannot resume {str(out)!r}: it holds a {run.attrs.get('kind')!r} run, "
                f"not a {kind!r} run"
            )
        stored = run.params
        for key, value in params.items():
            if key not in stored or not _same_param(stored[key], value):
                raise ValueError(
                    f"cannot resume {str(out)!r}: its {key} is {stored.get(key)!r}, this run's "
                    f"is {value!r}; resume with the same data and options"
                )
        ck = run.checkpoint
        if not ck:
            raise ValueError(
                f"cannot resume {str(out)!r}: it holds no committed chunk; start a new run"
            )
        rows = {s: {f: run.read(s, f) for f in cols} for s, cols in series.items()}
    return TrajectoryWriter.resume(out), ck, rows


@contextmanager
def _recording(writer: Any) -> Iterator[None]:
    """Close ``writer`` (if any) as ``complete`` when the block ends normally, ``failed`` (with
    the message, committed chunks kept) when it raises."""
    try:
        yield
    except BaseException as exc:
        if writer is not None:
            writer.close("failed", f"{type(exc).__name__}: {exc}")
        raise
    if writer is not None:
        writer.close("complete")


@dataclass(frozen=True)
class LyapunovSpectrum:
    """Result of :func:`lyapunov_spectrum` / :func:`product_lyapunov`.

    Attributes
    ----------
    exponents : (k,) estimates, in 1/time (flows) or per iteration (maps, products).
    stderr : (k,) standard error by batch means over ``n_blocks`` consecutive blocks.
    drift : (k,) |estimate at the end - estimate at half time|, a convergence diagnostic.
    time, running : (n_records,), (n_records, k) running estimates after each chunk.
    x, V : final state (d,) and orthonormal tangent rows (k, d).
    steps, t_total : measured steps (after the transient) and their duration.
    """

    exponents: np.ndarray
    stderr: np.ndarray
    drift: np.ndarray
    time: np.ndarray
    running: np.ndarray
    x: np.ndarray | None
    V: np.ndarray
    steps: int
    t_total: float

    @property
    def sum(self) -> float:
        return float(np.sum(self.exponents))


def _drift(time: np.ndarray, running: np.ndarray) -> np.ndarray:
    if len(time) < 2:
        return np.full(running.shape[1], np.nan)
    half = int(np.searchsorted(time, time[-1] / 2.0))
    half = min(max(half, 0), len(time) - 1)
    return np.abs(running[-1] - running[half])


def _orthonormal_rows(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return np.ascontiguousarray(q.T)


def _spectrum_result(
    time: Any, sums: Any, t_total: float, steps: int, n_blocks: int, x: Any, V: np.ndarray
) -> LyapunovSpectrum:
    """The result from the cumulative log sums ``sums`` (n_records, k) at the times ``time``."""
    time = np.asarray(time, dtype=np.float64)
    sums = np.asarray(sums, dtype=np.float64).reshape(len(time), -1)
    running = sums / time[:, None]
    se, _ = _block_stats(sums, time, n_blocks)
    return LyapunovSpectrum(
        exponents=sums[-1] / t_total,
        stderr=se,
        drift=_drift(time, running),
        time=time,
        running=running,
        x=x,
        V=V,
        steps=steps,
        t_total=t_total,
    )


# ============================================================================================
# Maps and flows
# ============================================================================================
def lyapunov_spectrum(
    system: Any,
    x0: Any,
    *,
    k: int | None = None,
    steps: int | None = None,
    t_end: float | None = None,
    dt: float | None = None,
    transient: float = 0.0,
    reorth_every: int = 1,
    n_records: int = 200,
    n_blocks: int = 20,
    seed: int = 0,
    V0: Any = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> LyapunovSpectrum:
    """Lyapunov spectrum of a map or a flow by the QR (Benettin) method.

    Map: x_{t+1} = F(x_t), V_{t+1} R_t = DF(x_t) V_t. Flow: dx/dt = f(t, x) with the tangent
    vectors dv/dt = Df(t, x) v, both advanced by classical RK4 with step ``dt``; V is
    re-orthonormalised every ``reorth_every`` steps. lambda_j = (1/T) sum log|R_jj|.

    Parameters
    ----------
    system : ``Henon()``, ``Lorenz63()`` (or ``"henon"``, ``"lorenz63"``), ``MapSystem`` or
        ``FlowSystem`` holding the user's ``@njit`` functions.
    x0 : (d,) initial state.
    k : number of exponents (top k), 1 <= k <= d; default d (full spectrum).
    steps : number of measured iterations (maps) or RK4 steps (flows); or give ``t_end``.
    t_end : measured duration for flows (``steps = round(t_end / dt)``).
    dt : RK4 step for flows (time units); must be None for maps.
    transient : discarded duration before measuring (time for flows, iterations for maps);
        state and tangent vectors are both advanced through it.
    reorth_every : steps between QR re-orthonormalisations.
    n_records : number of running estimates kept (the kernel chunk is steps / n_records).
    n_blocks : blocks for the batch-means standard error.
    seed : seed of the random orthonormal initial tangent vectors.
    V0 : optional (k, d) initial tangent vectors (rows, linearly independent); they are
        orthonormalised. Default: random orthonormal rows from ``seed``.
    out : optional HDF5 run file: series ``running`` (time, step, estimate (k,), logsum (k,))
        committed per chunk with a checkpoint (x, V, logsum, step) so that ``resume=True``
        continues a killed run exactly.
    overwrite : replace an existing ``out``.
    resume : continue the run in ``out`` from its last committed chunk (bitwise equal to an
        uninterrupted run); refused (ValueError) when the system or an option differs.

    Returns
    -------
    LyapunovSpectrum

    Raises
    ------
    ValueError for bad inputs; TypeError for a system of the wrong kind; NonFiniteStateError
    (a FloatingPointError) when the state or a tangent vector stops being finite, or a tangent
    vector collapses to zero (exponent -inf).
    """
    system = _resolve_system(system)
    d = int(system.dim)
    x = as_array("x0", x0, shape=(d,)).copy()
    k = d if k is None else check_int("k", k, minimum=1)
    if k > d:
        raise ValueError(f"k must be <= the dimension {d}, got {k}")
    reorth_every = check_int("reorth_every", reorth_every, minimum=1)
    n_records = check_int("n_records", n_records, minimum=1)
    n_blocks = check_int("n_blocks", n_blocks, minimum=2)
    seed = check_int("seed", seed, minimum=0)  # stored in the run file's parameters
    overwrite = check_bool("overwrite", overwrite)
    resume = check_bool("resume", resume)
    is_flow = system.kind == "flow"
    if is_flow:
        if dt is None:
            raise ValueError("dt must be given for a flow")
        dt = check_positive("dt", dt)
        if (steps is None) == (t_end is None):
            raise ValueError("give exactly one of steps and t_end")
        n_steps = (
            check_int("steps", steps, minimum=1)
            if steps is not None
            else max(1, check_steps("t_end / dt", np.round(check_positive("t_end", t_end) / dt)))
        )
        n_trans = check_steps(
            "transient / dt", np.round(check_nonnegative("transient", transient) / dt)
        )
    else:
        if dt is not None or t_end is not None:
            raise ValueError("a map takes steps (iterations), not dt or t_end")
        if steps is None:
            raise ValueError("steps must be given for a map")
        n_steps = check_int("steps", steps, minimum=1)
        dt = 1.0
        tr = check_nonnegative("transient", transient)
        if not float(tr).is_integer():
            raise ValueError(f"transient must be a whole number of iterations, got {transient!r}")
        n_trans = check_steps("transient", tr)

    bparams = np.zeros(1)
    if isinstance(system, (Henon, Lorenz63)):
        fn, jac, args, bparams = None, None, (), system.args()
    else:
        fn = system.step if not is_flow else system.f
        jac, args = system.jac, system.args
        _check_user_system(system, x, is_flow, d)
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")

    def advance(n: int, t0: float, logr: np.ndarray) -> None:
        if is_flow:
            nd, st = _k.benettin_flow_advance(
                fn, jac, _k.LORENZ63, bparams, args, x, V, t0, dt, n, reorth_every, logr
            )
        else:
            nd, st = _k.benettin_map_advance(
                fn, jac, _k.HENON, bparams, args, x, V, n, reorth_every, logr
            )
        if st != _k.OK:
            step = int(round(t0 / dt)) + nd
            raise NonFiniteStateError(
                f"state or tangent vectors {_tangent_failure(st)} at step {step} "
                f"(t = {step * dt:g})",
                step=step,
                time=step * dt,
            )

    chunk = max(1, -(-n_steps // n_records))
    chunk = -(-chunk // reorth_every) * reorth_every
    params = {
        "system": type(system).__name__,
        "kind": system.kind,
        "dim": d,
        "k": k,
        "steps": n_steps,
        "dt": dt,
        "transient_steps": n_trans,
        "reorth_every": reorth_every,
        "n_records": n_records,
        "seed": seed,
        "x0": np.asarray(x0, dtype=np.float64),
        "system_params": _fingerprint(bparams) if fn is None else _args_fingerprint(args),
        "V0": "random" if V0 is None else _fingerprint(as_array("V0", V0, shape=(k, d))),
    }
    run_file = {
        "kind": "lyapunov_spectrum",
        "params": params,
        "derived": {},
        "series": {"running": {"time": (), "step": (), "estimate": (k,), "logsum": (k,)}},
    }
    writer = None
    if resume:
        writer, ck, rows = _start_run(out, resume=True, overwrite=False, **run_file)
        x[:] = ck["x"]
        V = np.ascontiguousarray(ck["V"], dtype=np.float64)
        logsum = np.array(ck["logsum"], dtype=np.float64)
        done = int(ck["step"])
        rec_t = list(rows["running"]["time"])
        rec_sum = list(rows["running"]["logsum"])
    else:
        if V0 is None:
            V = _orthonormal_rows(np.random.default_rng(seed), k, d)
        else:
            V = np.ascontiguousarray(np.linalg.qr(as_array("V0", V0, shape=(k, d)).T)[0].T)
            if np.linalg.matrix_rank(V) < k:
                raise ValueError("V0 must have linearly independent rows")
        for pos in range(0, n_trans, chunk):
            advance(min(chunk, n_trans - pos), pos * dt, np.zeros(k))
        logsum = np.zeros(k)
        done = 0
        rec_t, rec_sum = [], []
        if out is not None:
            writer, _, _ = _start_run(out, resume=False, overwrite=overwrite, **run_file)
    t_start = n_trans * dt
    with _recording(writer):
        while done < n_steps:
            n = min(chunk, n_steps - done)
            advance(n, t_start + done * dt, logsum)
            done += n
            t = done * dt
            rec_t.append(t)
            rec_sum.append(logsum.copy())
            if writer is not None:
                writer.append(
                    "running",
                    time=np.array([t]),
                    step=np.array([float(done)]),
                    estimate=(logsum / t)[None],
                    logsum=logsum[None],
                )
                writer.commit(x=x, V=V, logsum=logsum, step=done)
    return _spectrum_result(rec_t, rec_sum, n_steps * dt, n_steps, n_blocks, x, V)


def _args_fingerprint(args: Any) -> str:
    """Fingerprint of a user system's ``args`` (numbers and arrays), or its repr otherwise."""
    items = args if isinstance(args, tuple) else (args,)
    try:
        return _fingerprint(*(np.asarray(a, dtype=np.float64) for a in items))
    except (TypeError, ValueError):
        return repr(args)


def _check_user_system(system: Any, x: np.ndarray, is_flow: bool, d: int) -> None:
    out = np.zeros(d)
    J = np.zeros((d, d))
    try:
        if is_flow:
            system.f(0.0, x.copy(), system.args, out)
            system.jac(0.0, x.copy(), system.args, J)
        else:
            system.step(x.copy(), system.args, out)
            system.jac(x.copy(), system.args, J)
    except Exception as exc:  # numba typing errors, wrong signatures
        raise TypeError(
            "calling the user's functions failed; they must have the signatures "
            + ("f(t, x, args, out), jac(t, x, args, J)" if is_flow else "step(x, args, out), ")
            + ("" if is_flow else "jac(x, args, J)")
            + f": {exc}"
        ) from exc
    if not np.all(np.isfinite(out)) or not np.all(np.isfinite(J)):
        raise ValueError("the user's functions returned NaN/inf at x0")


# ============================================================================================
# Random matrix products
# ============================================================================================
def product_lyapunov(
    factors: Any,
    *,
    k: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    chunk: int = 4096,
    n_blocks: int = 20,
    reorth_every: int = 1,
) -> LyapunovSpectrum:
    """Lyapunov exponents of the product M_T ... M_1 by the QR method.

    Parameters
    ----------
    factors : either an array (T, d, d) of factors (M_1 first), or a callable
        ``factors(rng, m) -> (m, d, d)`` drawing m i.i.d. factors from a numpy Generator; the
        callable is called once per chunk and needs ``steps``.
    k : number of exponents (default d).
    steps : number of factors when ``factors`` is a callable.
    seed : seed of the generator handed to the callable and of the initial tangent vectors.
    chunk : factors per kernel call (callable form).

    Returns
    -------
    LyapunovSpectrum with ``x=None``; exponents per factor.
    """
    seed = check_int("seed", seed, minimum=0)  # the tangent vectors use [seed, 1]
    rng = np.random.default_rng(seed)
    chunk = check_int("chunk", chunk, minimum=1)
    reorth_every = check_int("reorth_every", reorth_every, minimum=1)
    n_blocks = check_int("n_blocks", n_blocks, minimum=2)
    if callable(factors):
        if steps is None:
            raise ValueError("steps must be given when factors is a callable")
        n_steps = check_int("steps", steps, minimum=1)
        probe = None
    else:
        probe = as_array("factors", factors, ndim=3)
        if probe.shape[1] != probe.shape[2]:
            raise ValueError(f"factors must have shape (T, d, d), got {probe.shape}")
        n_steps = probe.shape[0]
        if n_steps < 1:
            raise ValueError("factors must hold at least one matrix")

    def draw(start: int, m: int) -> np.ndarray:
        if probe is not None:
            return probe[start : start + m]
        M = as_array("factors(rng, m)", factors(rng, m), ndim=3)
        if M.shape[0] != m or M.shape[1] != M.shape[2]:
            raise ValueError(f"factors(rng, {m}) must return shape ({m}, d, d), got {M.shape}")
        return M

    first = draw(0, min(chunk, n_steps))
    d = first.shape[1]
    k = d if k is None else check_int("k", k, minimum=1)
    if k > d:
        raise ValueError(f"k must be <= the dimension {d}, got {k}")
    V = _orthonormal_rows(np.random.default_rng([seed, 1]), k, d)
    logsum = np.zeros(k)
    done = 0
    rec_t, rec_sum = [], []
    M = first
    while True:
        nd, st = _k.qr_matrix_products(M, V, reorth_every, logsum)
        if st != _k.OK:
            raise NonFiniteStateError(
                f"tangent vectors {_tangent_failure(st)} at factor {done + nd}",
                step=done + nd,
                time=float(done + nd),
            )
        done += M.shape[0]
        rec_t.append(float(done))
        rec_sum.append(logsum.copy())
        if done >= n_steps:
            break
        M = draw(done, min(chunk, n_steps - done))
    return _spectrum_result(rec_t, rec_sum, float(n_steps), n_steps, n_blocks, None, V)


# ============================================================================================
# SGD near an interpolation minimum
# ============================================================================================
@dataclass(frozen=True)
class SGDLyapunov:
    """Result of :func:`sgd_lyapunov`.

    Attributes
    ----------
    exponents : (k,) top-k Lyapunov exponents per SGD step (mean over replicas).
    ci_low, ci_high : (k,) confidence interval at ``level`` (Student t over independent
        replicas, or over batch-means blocks of a single replica).
    stderr : (k,) standard error behind the interval.
    per_replica : (R, k) estimate of each independent replica.
    ci_method : ``"replicas"`` or ``"blocks"``.
    rank : dimension of the span of the g_i (the normal space).
    lam_max : largest eigenvalue of the mean Hessian (1/n) sum_i H_i.
    gd_threshold : 2 / lam_max, the deterministic (full-batch GD) stability threshold on lr.
    """

    exponents: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    stderr: np.ndarray
    per_replica: np.ndarray
    ci_method: str
    level: float
    rank: int
    lam_max: float
    gd_threshold: float
    lr: float
    batch_size: int
    steps: int
    sampling: str
    space: str

    @property
    def stable(self) -> bool:
        """True when the top exponent is negative (SGD is attracted to the minimum a.s.)."""
        return bool(self.exponents[0] < 0.0)


@dataclass(frozen=True)
class _Operator:
    """The per-sample factors in the coordinates the kernel works in."""

    kind: str  # "rank" or "hessian"
    A: np.ndarray  # (n q, m) rows, or (n, m, m) Hessians
    q: int
    n: int
    m: int
    rank: int
    lam_max: float
    source: np.ndarray  # the G given by the user (for the fingerprint of a run file)

    @property
    def gd_threshold(self) -> float:
        """2 / lam_max, the full-batch GD stability threshold on the learning rate."""
        return 2.0 / self.lam_max if self.lam_max > 0 else math.inf

    def fingerprint(self) -> str:
        """A digest of G and of how it is read (rows per sample)."""
        return _fingerprint(self.source, np.array([self.q]))


def _span_rows(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates C (N, r) of the rows of A (N, d) in an orthonormal basis of their span, and
    the singular values. C C^T = A A^T, so every inner product among the rows is kept."""
    N, d = A.shape
    eps = np.finfo(np.float64).eps
    if N * d <= 50_000_000 or N >= d:
        U, s, _ = np.linalg.svd(A, full_matrices=False)
        tol = (s[0] if s.size else 0.0) * max(N, d) * eps
        r = int(np.sum(s > tol))
        return np.ascontiguousarray(U[:, :r] * s[:r]), s[:r]
    # Wide A (d >> N): eigen-decomposition of the N x N Gram matrix, O(N^2 d) time, O(N^2) extra.
    K = A @ A.T
    w, U = np.linalg.eigh(K)
    w, U = w[::-1], U[:, ::-1]
    tol = (w[0] if w.size else 0.0) * max(N, d) * eps
    r = int(np.sum(w > tol))
    s = np.sqrt(w[:r])
    return np.ascontiguousarray(U[:, :r] * s), s


def _build_operator(G: Any, rows_per_sample: int, space: str) -> _Operator:
    arr = np.asarray(G)
    if arr.ndim == 3:
        H = as_array("G", arr, ndim=3)
        n, d, d2 = H.shape
        if d != d2:
            raise ValueError(f"per-sample Hessians must have shape (n, d, d), got {H.shape}")
        if rows_per_sample != 1:
            raise ValueError("rows_per_sample applies to gradients (n q, d), not to Hessians")
        scale = float(np.max(np.abs(H))) if H.size else 0.0
        asym = float(np.max(np.abs(H - H.transpose(0, 2, 1)))) if H.size else 0.0
        if asym > 1e-10 * max(scale, 1e-300):
            raise ValueError(f"per-sample Hessians must be symmetric, max |H - H^T| = {asym:.3g}")
        lam_max = float(np.linalg.eigvalsh(H.mean(0))[-1])
        if space == "full":
            return _Operator("hessian", H, 1, n, d, d, lam_max, H)
        Hs = H.reshape(n * d, d)
        w, U = np.linalg.eigh(Hs.T @ Hs)
        tol = (w[-1] if w.size else 0.0) * max(n * d, d) * np.finfo(np.float64).eps
        Ur = U[:, w > tol]
        r = Ur.shape[1]
        Hr = np.ascontiguousarray(np.einsum("ai,nab,bj->nij", Ur, H, Ur))
        return _Operator("hessian", Hr, 1, n, r, r, lam_max, H)
    A = as_array("G", arr, ndim=2)
    N, d = A.shape
    if N == 0 or d == 0:
        raise ValueError(f"G must be non-empty, got shape {A.shape}")
    if N % rows_per_sample:
        raise ValueError(f"G has {N} rows, not a multiple of rows_per_sample = {rows_per_sample}")
    n = N // rows_per_sample
    C, s = _span_rows(A)
    r = C.shape[1]
    lam_max = float(s[0] ** 2 / n) if r else 0.0
    if space == "full":
        return _Operator("rank", A, rows_per_sample, n, d, r, lam_max, A)
    return _Operator("rank", C, rows_per_sample, n, r, r, lam_max, A)


def _sgd_inputs(
    G: Any,
    lr: Any,
    batch_size: Any,
    sampling: Any,
    rows_per_sample: Any,
    space: str,
    operator: _Operator | None,
) -> tuple[float, int, str, _Operator]:
    """Checked (lr, B, sampling, operator) shared by the SGD exponents (``space`` checked)."""
    sampling = check_option("sampling", sampling, _SAMPLING)
    lr = check_positive("lr", lr)
    rows_per_sample = check_int("rows_per_sample", rows_per_sample, minimum=1)
    op = operator if operator is not None else _build_operator(G, rows_per_sample, space)
    B = check_int("batch_size", batch_size, minimum=1)
    if B > op.n:
        raise ValueError(f"batch_size must be <= the number of samples n = {op.n}, got {B}")
    return lr, B, sampling, op


def sgd_lyapunov(
    G: Any,
    lr: float,
    batch_size: int,
    *,
    steps: int = 100_000,
    k: int = 1,
    seed: Any = 0,
    transient: int = 1000,
    sampling: str = "with",
    replicas: int = 4,
    space: str = "span",
    rows_per_sample: int = 1,
    reorth_every: int = 1,
    n_blocks: int = 20,
    level: float = 0.95,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    _operator: _Operator | None = None,
) -> SGDLyapunov:
    """Top Lyapunov exponents of SGD linearised at an interpolation minimum.

    lambda = lim (1/t) log ||M_t ... M_1 v||, M_s = I - (lr/B) sum_{i in batch_s} H_i, with
    H_i = sum_{o<q} g_{iq+o} g_{iq+o}^T for gradient rows (squared loss at a point where every
    residual vanishes), or the given Hessians. Each factor is applied as a rank-(B q) update in
    O(m B q k) per step (no m x m matrix). With ``space="span"`` the product is taken on the span
    of the g_i (the normal space to the manifold of minima; m = its dimension r), where it is
    exact; with ``space="full"`` on all of R^d, where the d - r tangent directions carry
    exponent 0.

    Parameters
    ----------
    G : (n q, d) per-sample gradients (rows), or (n, d, d) symmetric per-sample Hessians.
    lr : learning rate eta > 0.
    batch_size : B, 1 <= B <= n.
    steps : measured SGD steps per replica (after ``transient`` discarded steps).
    k : number of exponents, 1 <= k <= r (span) or d (full).
    seed : seed for ``np.random.default_rng`` (int or sequence of ints); batch indices are
        drawn per chunk in Python and passed to the kernel, so results are reproducible.
    sampling : ``"with"`` (B i.i.d. indices) or ``"without"`` (B distinct indices) replacement.
    replicas : independent chains run in parallel; R >= 2 gives the interval from the spread
        of replicas, R = 1 from ``n_blocks`` batch-means blocks.
    rows_per_sample : q, the rows of G that belong to one sample (outputs of a network).
    level : confidence level of the interval.
    out : optional HDF5 run file: series ``blocks`` (step, logsum (R, k)) committed per chunk
        with a checkpoint (tangent blocks, log sums, generator state, batch permutations), the
        estimates and interval as root attributes.
    overwrite : replace an existing ``out``.
    resume : continue the run in ``out`` from its last committed chunk; the result and the
        stored series are bitwise those of an uninterrupted run. Refused (ValueError) when G
        or any option that changes the result differs from the stored run.

    Returns
    -------
    SGDLyapunov

    Raises
    ------
    ValueError for NaN/inf in G, lr <= 0, batch_size outside [1, n], k > rank, unknown options.
    NonFiniteStateError if the tangent vectors overflow (use a smaller ``reorth_every``).
    """
    space = check_option("space", space, _SPACES)
    lr, B, sampling, op = _sgd_inputs(
        G, lr, batch_size, sampling, rows_per_sample, space, _operator
    )
    steps = check_int("steps", steps, minimum=1)
    transient = check_int("transient", transient, minimum=0)
    k = check_int("k", k, minimum=1)
    limit = op.rank if space == "span" else op.m
    if k > limit:
        raise ValueError(
            f"k must be <= the {'rank of the span of the g_i' if space == 'span' else 'dimension'}"
            f" = {limit}, got {k}"
        )
    R = check_int("replicas", replicas, minimum=1)
    reorth_every = check_int("reorth_every", reorth_every, minimum=1)
    n_blocks = check_int("n_blocks", n_blocks, minimum=2)
    level = check_real("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    seed = check_seed("seed", seed)
    overwrite = check_bool("overwrite", overwrite)
    resume = check_bool("resume", resume)
    # the tangent blocks and batch permutations of the replicas
    check_memory(
        f"replicas = {R} chains of {k} vectors in {op.m} dimensions", 8.0 * R * (k * op.m + op.n)
    )
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")

    rng = np.random.default_rng(seed)
    m = op.m
    perm = np.tile(np.arange(op.n, dtype=np.int64), (R, 1))
    c = lr / B
    max_chunk = max(1, _MAX_INDEX_ENTRIES // (R * B))
    chunk = max(1, min(-(-steps // n_blocks), max_chunk))
    chunk = -(-chunk // reorth_every) * reorth_every
    status = np.zeros(R, dtype=np.int64)

    def run(n: int, logr: np.ndarray) -> None:
        if sampling == "with":
            idx = rng.integers(0, op.n, size=(R, n, B), dtype=np.int32)
        else:
            u = rng.random((R, n, B))
            idx = np.empty((R, n, B), dtype=np.int32)
            _k.batches_without_replacement(u, perm, idx)
        if op.kind == "rank":
            kern = _k.sgd_rank_products if R > 1 else _k.sgd_rank_products_serial
            st = kern(op.A, op.q, c, idx, V, reorth_every, logr, status)
        else:
            st = _k.sgd_hessian_products(op.A, c, idx, V, reorth_every, logr, status)
        if st != _k.OK:
            raise NonFiniteStateError(
                f"replica {int(np.argmax(status))}: tangent vectors {_tangent_failure(st)}"
                f" within a chunk of {n} steps; try reorth_every=1",
                step=-1,
                time=float("nan"),
            )

    writer = None
    run_file = {
        "kind": "sgd_lyapunov",
        "params": {
            "fingerprint": op.fingerprint() if out is not None else "",
            "lr": lr,
            "batch_size": B,
            "steps": steps,
            "k": k,
            "seed": str(seed),
            "transient": transient,
            "sampling": sampling,
            "replicas": R,
            "space": space,
            "rows_per_sample": op.q,
            "reorth_every": reorth_every,
            "chunk": chunk,
        },
        "derived": {"rank": op.rank},
        "series": {"blocks": {"step": (), "logsum": (R, k)}},
    }
    if resume:
        writer, ck, rows = _start_run(out, resume=True, overwrite=False, **run_file)
        rng.bit_generator.state = ck["rng"]
        V = np.ascontiguousarray(ck["V"], dtype=np.float64)
        perm = np.ascontiguousarray(ck["perm"], dtype=np.int64)
        logsum = np.array(ck["logsum"], dtype=np.float64)
        done = int(ck["step"])
        sums = list(rows["blocks"]["logsum"])
        ends = list(rows["blocks"]["step"])
    else:
        V = np.empty((R, k, m))
        for r in range(R):
            V[r] = _orthonormal_rows(rng, k, m)
        for pos in range(0, transient, max_chunk):
            run(min(max_chunk, transient - pos), np.zeros((R, k)))
        logsum = np.zeros((R, k))
        done = 0
        sums, ends = [], []
        if out is not None:
            writer, _, _ = _start_run(out, resume=False, overwrite=overwrite, **run_file)

    def checkpoint() -> None:
        writer.commit(V=V, perm=perm, logsum=logsum, step=done, rng=rng.bit_generator.state)

    with _recording(writer):
        if writer is not None and not resume:
            checkpoint()  # after the transient: a run killed in its first chunk resumes here
        while done < steps:
            n = min(chunk, steps - done)
            run(n, logsum)
            done += n
            sums.append(logsum.copy())
            ends.append(float(done))
            if writer is not None:
                writer.append("blocks", step=np.array([float(done)]), logsum=logsum[None])
                checkpoint()
        res = _sgd_result(logsum, sums, ends, op, lr, B, steps, sampling, space, level, n_blocks)
        if writer is not None:
            writer.set_attrs(exponents=res.exponents, ci_low=res.ci_low, ci_high=res.ci_high)
    return res


def _sgd_result(
    logsum: np.ndarray,
    sums: list,
    ends: list,
    op: _Operator,
    lr: float,
    B: int,
    steps: int,
    sampling: str,
    space: str,
    level: float,
    n_blocks: int,
) -> SGDLyapunov:
    """Estimate and interval from the final log sums (R, k) and the per-chunk record."""
    R, k = logsum.shape
    per_rep = logsum / steps
    est = per_rep.mean(0)
    if R >= 2:
        se = _standard_error(per_rep)
        dof, method = R - 1, "replicas"
    else:
        se, nb = _block_stats(np.asarray(sums)[:, 0, :], np.asarray(ends), n_blocks)
        dof, method = max(nb - 1, 1), "blocks"
    half = _t_quantile(float(level), dof) * se
    return SGDLyapunov(
        exponents=est,
        ci_low=est - half,
        ci_high=est + half,
        stderr=se,
        per_replica=per_rep,
        ci_method=method,
        level=float(level),
        rank=op.rank,
        lam_max=op.lam_max,
        gd_threshold=op.gd_threshold,
        lr=lr,
        batch_size=B,
        steps=steps,
        sampling=sampling,
        space=space,
    )


def _mlp_gradients(mlp: Any, theta: Any, X: Any) -> tuple[np.ndarray, int]:
    from . import training

    training._check_mlp(mlp)
    if getattr(mlp, "loss", "mse") != "mse":
        raise ValueError(
            f"sgd_lyapunov_mlp needs an MLP with loss='mse' (per-sample Hessian J^T J at an "
            f"interpolation minimum), got loss={mlp.loss!r}"
        )
    theta = as_array("theta", theta, shape=(int(mlp.n_params),))
    X = as_array("X", X, ndim=2)
    G = np.asarray(training.per_sample_gradients(mlp, theta, X), dtype=np.float64)
    q = G.shape[0] // X.shape[0]
    return np.ascontiguousarray(G), q


def sgd_lyapunov_mlp(
    mlp: Any, theta: Any, X: Any, lr: float, batch_size: int, **kwargs: Any
) -> SGDLyapunov:
    """:func:`sgd_lyapunov` for an MLP at an interpolation minimum ``theta``.

    At a point where f(x_i; theta) = y_i for every sample, the per-sample Hessian of the squared
    loss 1/2 ||f(x_i; theta) - y_i||^2 is J_i^T J_i with J_i = d f(x_i)/d theta (out, P); its rows
    are the per-sample gradients from ``nndyn_fast.training.per_sample_gradients``. (Any theta is
    an interpolation minimum of the targets y_i = f(x_i; theta).) Other loss normalisations
    rescale lr: a per-sample loss c ||f - y||^2 corresponds to ``lr * 2 c`` here.

    Parameters
    ----------
    mlp : ``nndyn_fast.training.MLP``.
    theta : (P,) flat parameters.
    X : (n, n_in) inputs.
    lr, batch_size, **kwargs : as in :func:`sgd_lyapunov`.
    """
    G, q = _mlp_gradients(mlp, theta, X)
    return sgd_lyapunov(G, lr, batch_size, rows_per_sample=q, **kwargs)


# --------------------------------------------------------------------------------------------
# Mean-square stability
# --------------------------------------------------------------------------------------------
def _second_moment_operator(op: _Operator, lr: float, B: int, sampling: str) -> Callable:
    n, m = op.n, op.m
    if op.kind == "rank":
        C3 = op.A.reshape(n, op.q, m)
        Hbar = op.A.T @ op.A / n

        def sum_hsh(S: np.ndarray) -> np.ndarray:
            Y = np.einsum("nqa,ab->nqb", C3, S)
            P = np.einsum("nqb,npb->nqp", Y, C3)
            Z = np.einsum("nqp,npb->nqb", P, C3)
            return op.A.T @ Z.reshape(n * op.q, m)
    else:
        H = op.A
        Hbar = H.mean(0)

        def sum_hsh(S: np.ndarray) -> np.ndarray:
            return np.einsum("nab,bc,ncd->ad", H, S, H, optimize=True)

    if sampling == "with":
        a_self, a_cross = 1.0 / (B * n), 1.0 - 1.0 / B
    else:
        p1 = B / n
        p2 = B * (B - 1) / (n * (n - 1)) if n > 1 else 0.0
        a_self = (p1 - p2) / B**2
        a_cross = p2 * n * n / B**2

    def T(S: np.ndarray) -> np.ndarray:
        HS = Hbar @ S
        return S - lr * (HS + S @ Hbar) + lr**2 * (a_self * sum_hsh(S) + a_cross * HS @ Hbar)

    return T


def _lanczos_top(matvec: Callable, v0: np.ndarray, max_iter: int = 400) -> float:
    """Largest eigenvalue of a symmetric operator by Lanczos with full reorthogonalisation.

    Stops when the top Ritz value changes by less than 1e-13 (relative) over 3 iterations; the
    Ritz value converges from below to the eigenvalue even inside a cluster."""
    from scipy.linalg import eigvalsh_tridiagonal

    n = v0.size
    max_iter = int(min(max_iter, n, max(20, 2e8 // (8 * n))))
    Q = np.empty((max_iter + 1, n))
    Q[0] = v0 / np.linalg.norm(v0)
    alpha, beta = [], []
    last, calm = -np.inf, 0
    theta = -np.inf
    for j in range(max_iter):
        w = matvec(Q[j])
        a = float(Q[j] @ w)
        alpha.append(a)
        w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = float(np.linalg.norm(w))
        top = (len(alpha) - 1, len(alpha) - 1)
        theta = float(
            eigvalsh_tridiagonal(np.array(alpha), np.array(beta), select="i", select_range=top)[0]
        )
        calm = calm + 1 if abs(theta - last) <= 1e-13 * max(1.0, abs(theta)) else 0
        last = theta
        if calm >= 3 or b <= 1e-14 * max(1.0, abs(theta)):
            break
        beta.append(b)
        Q[j + 1] = w / b
    return theta


def mean_square_exponent(
    G: Any,
    lr: float,
    batch_size: int,
    *,
    sampling: str = "with",
    rows_per_sample: int = 1,
    _operator: _Operator | None = None,
) -> float:
    """Mean-square growth rate of linearised SGD: (1/2) log rho(T), T(S) = E[M S M^T].

    With M = I - (lr/B) sum_{i in batch} H_i, the second moment S_t = E[v_t v_t^T] evolves by
    S_{t+1} = S_t - lr (Hbar S_t + S_t Hbar) + lr^2 E[(1/B^2) sum_{b,c} H_b S_t H_c], Hbar the
    mean Hessian; for B i.i.d. indices E[...] = (1/B) mean_i H_i S H_i + (1 - 1/B) Hbar S Hbar,
    for B distinct indices the pair probabilities B(B-1)/(n(n-1)) replace (1 - 1/B). T is a
    positive map, so its spectral radius is a real eigenvalue (computed on the span of the g_i).
    The linearisation is mean-square stable iff the
    returned value is < 0; it is never below the top Lyapunov exponent (Jensen), so it is the
    stricter criterion. Since each M is symmetric, T is self-adjoint for the trace inner product
    and rho(T) is its largest eigenvalue (dense for r <= 20, Lanczos otherwise).

    Parameters
    ----------
    G, lr, batch_size, sampling, rows_per_sample : as in :func:`sgd_lyapunov`.

    Returns
    -------
    float, (1/2) log rho(T) per step (-inf if T = 0).
    """
    lr, B, sampling, op = _sgd_inputs(
        G, lr, batch_size, sampling, rows_per_sample, "span", _operator
    )
    lam = max(op.lam_max, 1.0)
    if not math.isfinite(lr * lr * lam * lam * op.n):
        raise ValueError(
            f"lr = {lr:g} is too large: the second-moment map (of order lr^2 lambda_max^2) "
            "overflows float64"
        )
    T = _second_moment_operator(op, lr, B, sampling)
    m = op.m
    if m <= 20:
        cols = np.empty((m * m, m * m))
        E = np.zeros((m, m))
        for j in range(m * m):
            E.flat[j] = 1.0
            cols[:, j] = T(E).ravel()
            E.flat[j] = 0.0
        rho = float(np.max(np.abs(np.linalg.eigvals(cols))))
    else:
        # Every factor M is symmetric, so T is self-adjoint for <A, B> = tr(A^T B): Lanczos for
        # its largest eigenvalue, which is the Perron root rho(T) of the positive map.
        rho = _lanczos_top(lambda v: T(v.reshape(m, m)).ravel(), np.eye(m).ravel())
    return 0.5 * math.log(rho) if rho > 0 else -math.inf


# --------------------------------------------------------------------------------------------
# Stability diagram
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StabilityDiagram:
    """lambda over a grid of (B, lr): arrays of shape (n_batch, n_lr).

    ``lam`` (top exponent), ``lam_low``/``lam_high`` (its confidence interval), ``ms`` (mean-
    square exponent), ``lam_max`` (top eigenvalue of the mean Hessian) and ``gd_threshold``
    = 2 / lam_max.
    """

    lrs: np.ndarray
    batch_sizes: np.ndarray
    lam: np.ndarray
    lam_low: np.ndarray
    lam_high: np.ndarray
    ms: np.ndarray
    lam_max: float
    gd_threshold: float
    meta: dict = field(default_factory=dict)


def sgd_stability_diagram(
    G: Any,
    lrs: Sequence[float],
    batch_sizes: Sequence[int],
    *,
    steps: int = 20_000,
    k: int = 1,
    seed: int = 0,
    transient: int = 1000,
    sampling: str = "with",
    replicas: int = 4,
    rows_per_sample: int = 1,
    mean_square: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> StabilityDiagram:
    """Top Lyapunov exponent of linearised SGD over a grid of (lr, B), beside the GD threshold.

    For each batch size B and learning rate lr, lambda(lr, B) from :func:`sgd_lyapunov` (seed
    ``(seed, iB, ilr)``) and, with ``mean_square``, the mean-square exponent from
    :func:`mean_square_exponent`. SGD is almost surely stable where lambda < 0, mean-square
    stable where ms < 0 (a subset); full-batch GD is stable for lr < 2 / lambda_max.

    Parameters
    ----------
    G : as in :func:`sgd_lyapunov`.
    lrs : (n_lr,) learning rates > 0.
    batch_sizes : (n_batch,) batch sizes in [1, n].
    out : optional HDF5 file: series ``diagram`` with one row per batch size (batch_size, lam,
        lam_low, lam_high, ms), committed row by row, the grids in ``/params``.
    overwrite : replace an existing ``out``.
    resume : continue the diagram in ``out`` after its last committed row (each point has its
        own seed, so the result is bitwise that of an uninterrupted run); refused (ValueError)
        when G or an option differs from the stored run.

    Returns
    -------
    StabilityDiagram
    """
    lrs_a = as_array("lrs", lrs, ndim=1)
    if lrs_a.size == 0 or np.any(lrs_a <= 0):
        raise ValueError("lrs must be a non-empty list of learning rates > 0")
    bs = np.asarray(batch_sizes)
    if bs.ndim != 1 or bs.size == 0:
        raise ValueError("batch_sizes must be a non-empty list of integers")
    bs = np.array([check_int("batch_sizes", b, minimum=1) for b in bs], dtype=np.int64)
    rows_per_sample = check_int("rows_per_sample", rows_per_sample, minimum=1)
    op = _build_operator(G, rows_per_sample, "span")
    if np.any(bs > op.n):
        raise ValueError(f"batch_sizes must be <= the number of samples n = {op.n}, got {bs}")
    sampling = check_option("sampling", sampling, _SAMPLING)
    steps = check_int("steps", steps, minimum=1)
    k = check_int("k", k, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    transient = check_int("transient", transient, minimum=0)
    replicas = check_int("replicas", replicas, minimum=1)
    mean_square = check_bool("mean_square", mean_square)
    overwrite = check_bool("overwrite", overwrite)
    resume = check_bool("resume", resume)
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")
    shape = (bs.size, lrs_a.size)
    cols = {name: np.full(shape, np.nan) for name in ("lam", "lam_low", "lam_high", "ms")}
    writer = None
    first = 0
    if out is not None:
        writer, ck, rows = _start_run(
            out,
            resume=resume,
            overwrite=overwrite,
            kind="sgd_stability_diagram",
            params={
                "fingerprint": op.fingerprint(),
                "lrs": lrs_a,
                "batch_sizes": bs,
                "steps": steps,
                "k": k,
                "seed": seed,
                "transient": transient,
                "sampling": sampling,
                "replicas": replicas,
                "mean_square": bool(mean_square),
            },
            derived={"rank": op.rank, "lam_max": op.lam_max, "gd_threshold": op.gd_threshold},
            series={
                "diagram": {"batch_size": (), **{name: (lrs_a.size,) for name in cols}},
            },
        )
        if resume:
            first = int(ck["row"]) + 1
            for name, arr in cols.items():
                arr[:first] = rows["diagram"][name]
    with _recording(writer):
        for i in range(first, bs.size):
            B = int(bs[i])
            for j, lr in enumerate(lrs_a):
                res = sgd_lyapunov(
                    None,
                    float(lr),
                    B,
                    steps=steps,
                    k=k,
                    seed=[int(seed), i, j],
                    transient=transient,
                    sampling=sampling,
                    replicas=replicas,
                    _operator=op,
                )
                cols["lam"][i, j] = res.exponents[0]
                cols["lam_low"][i, j] = res.ci_low[0]
                cols["lam_high"][i, j] = res.ci_high[0]
                if mean_square:
                    cols["ms"][i, j] = mean_square_exponent(
                        None, float(lr), B, sampling=sampling, _operator=op
                    )
            if writer is not None:
                writer.append(
                    "diagram",
                    batch_size=np.array([float(B)]),
                    **{name: arr[i][None] for name, arr in cols.items()},
                )
                writer.commit(row=i)
    return StabilityDiagram(
        lrs=lrs_a,
        batch_sizes=bs,
        lam=cols["lam"],
        lam_low=cols["lam_low"],
        lam_high=cols["lam_high"],
        ms=cols["ms"],
        lam_max=op.lam_max,
        gd_threshold=op.gd_threshold,
        meta={"steps": steps, "sampling": sampling, "replicas": replicas, "rank": op.rank},
    )


def plot_stability_diagram(diagram: StabilityDiagram, path: str | Path | None = None, ax=None):
    """Plot lambda(lr, B) with the lambda = 0 and mean-square = 0 contours and lr = 2/lambda_max.

    Returns the matplotlib Axes; saves the figure when ``path`` is given.
    """
    if not isinstance(diagram, StabilityDiagram):
        raise TypeError(f"diagram must be a StabilityDiagram, got {type(diagram).__name__}")
    if path is not None:
        check_out_path("path", path, overwrite=True)
    if ax is not None:
        from matplotlib.axes import Axes

        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    import matplotlib

    if ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    from matplotlib.colors import SymLogNorm
    from matplotlib.ticker import NullFormatter

    lam = diagram.lam
    vmax = float(np.nanmax(np.abs(lam))) or 1.0
    mesh = ax.pcolormesh(
        diagram.lrs,
        diagram.batch_sizes,
        lam,
        cmap="RdBu_r",
        norm=SymLogNorm(linthresh=1e-3 * vmax, vmin=-vmax, vmax=vmax),
        shading="nearest",
    )
    fig.colorbar(mesh, ax=ax, label="top Lyapunov exponent λ per step")
    if lam.shape[0] > 1 and lam.shape[1] > 1:
        ax.contour(diagram.lrs, diagram.batch_sizes, lam, levels=[0.0], colors="k")
        if np.all(np.isfinite(diagram.ms)):
            ax.contour(
                diagram.lrs,
                diagram.batch_sizes,
                diagram.ms,
                levels=[0.0],
                colors="k",
                linestyles="dashed",
            )
    ax.axvline(diagram.gd_threshold, color="tab:green", label="GD threshold 2/λ_max")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("batch size B")
    ax.set_title("SGD stability: λ=0 (solid), mean-square (dashed)")
    ax.legend(loc="lower right", fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return ax


# ============================================================================================
# Deep networks: products of layer Jacobians
# ============================================================================================
@dataclass(frozen=True)
class NetworkLyapunov:
    """Result of :func:`network_lyapunov` / :func:`random_network_lyapunov`.

    Attributes
    ----------
    exponents : (k,) exponents per layer, (1/L) sum_l log|R_jj| averaged over inputs (and
        networks).
    per_input : (n, k) the same for each input (finite-depth exponents over input space).
    per_layer : (L, k) mean log|R_jj| at each layer (layer-resolved growth).
    singular : (n, k) (1/L) log sigma_j of the input–output Jacobian restricted to the start
        span, exactly (from the accumulated R factors).
    stderr : (k,) standard error (over networks for random networks, else over inputs).
    depth : L.
    """

    exponents: np.ndarray
    per_input: np.ndarray
    per_layer: np.ndarray
    singular: np.ndarray
    stderr: np.ndarray
    depth: int


def _pack_layers(layers: Sequence[tuple[np.ndarray, np.ndarray]]):
    sizes = [int(np.shape(layers[0][0])[1])]
    chunks, w_off, b_off = [], [], []
    pos = 0
    for li, (W, b) in enumerate(layers):
        W = as_array(f"W[{li}]", W, ndim=2)
        b = as_array(f"b[{li}]", b, shape=(W.shape[0],))
        if W.shape[1] != sizes[-1]:
            raise ValueError(f"layer {li}: W has {W.shape[1]} inputs, expected {sizes[-1]}")
        w_off.append(pos)
        chunks.append(W.ravel())
        pos += W.size
        b_off.append(pos)
        chunks.append(b)
        pos += b.size
        sizes.append(W.shape[0])
    return (
        np.ascontiguousarray(np.concatenate(chunks)),
        np.array(w_off, dtype=np.int64),
        np.array(b_off, dtype=np.int64),
        np.array(sizes, dtype=np.int64),
    )


def _run_network(layers, code, act_last, X, k, V0):
    params, w_off, b_off, sizes = _pack_layers(layers)
    n = X.shape[0]
    L = len(layers)
    logr = np.zeros((n, L, k))
    T = np.zeros((n, k, k))
    logscale = np.zeros(n)
    _k.mlp_jacobian_qr(params, w_off, b_off, sizes, code, act_last, X, V0, logr, T, logscale)
    sv = np.linalg.svd(T, compute_uv=False)
    with np.errstate(divide="ignore"):
        singular = (np.log(sv) + logscale[:, None]) / L
    return logr, singular


def _activation_code(name: str) -> int:
    from .kernels.activations import ACTIVATIONS

    check_option("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]


def network_lyapunov(
    mlp: Any,
    X: Any,
    *,
    theta: Any = None,
    seed: int = 0,
    k: int | None = None,
) -> NetworkLyapunov:
    """Finite-depth Lyapunov exponents of an MLP's layer-to-layer Jacobian product.

    For input x, z_l = W_l h_{l-1} + b_l, h_l = phi(z_l) (linear last layer), and
    d h_L / d x = J_L ... J_1 with J_l = diag(phi'(z_l)) W_l: the product backpropagation
    multiplies. The QR method gives lambda_j(x) = (1/L) sum_l log|R_jj^{(l)}| for k orthonormal
    input directions (the first k coordinate axes), and the exact (1/L) log sigma_j of the
    Jacobian on their span. Large lambda_1(x) marks the input regions that the network stretches
    (the ridges that separate classes).

    Parameters
    ----------
    mlp : ``nndyn_fast.training.MLP`` (uses ``unflatten``, ``activation``, ``n_params``,
        ``init``).
    X : (n, n_in) inputs.
    theta : (P,) parameters; default ``mlp.init(seed)``.
    k : number of exponents, default min(n_in, smallest width) (beyond the smallest width
        the Jacobian has rank deficiency and the exponents are -inf).

    Returns
    -------
    NetworkLyapunov (stderr over inputs).
    """
    from .training import _check_mlp

    _check_mlp(mlp)
    if theta is None:
        theta = mlp.init(seed)
    theta = as_array("theta", theta, shape=(int(mlp.n_params),))
    layers = [
        (np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64))
        for W, b in mlp.unflatten(theta)
    ]
    n_in = layers[0][0].shape[1]
    X = as_array("X", X, ndim=2)
    if X.shape[1] != n_in or X.shape[0] == 0:
        raise ValueError(
            f"X must have shape (n >= 1, {n_in}) (the network's inputs), got {X.shape}"
        )
    k = min(n_in, min(W.shape[0] for W, _ in layers)) if k is None else check_int("k", k, minimum=1)
    if k > n_in:
        raise ValueError(f"k must be <= the input dimension {n_in}, got {k}")
    code = _activation_code(getattr(mlp, "activation", "tanh"))
    V0 = np.ascontiguousarray(np.eye(n_in)[:k])
    logr, singular = _run_network(layers, code, False, X, k, V0)
    L = len(layers)
    per_input = logr.sum(1) / L
    return NetworkLyapunov(
        exponents=per_input.mean(0),
        per_input=per_input,
        per_layer=logr.mean(0),
        singular=singular,
        stderr=_standard_error(per_input),
        depth=L,
    )


def random_network_lyapunov(
    width: int,
    depth: int,
    sigma_w: float,
    *,
    sigma_b: float = 0.0,
    activation: str = "tanh",
    k: int = 1,
    n_inputs: int = 8,
    networks: int = 4,
    q0: float = 1.0,
    skip_layers: int = 0,
    seed: int = 0,
) -> NetworkLyapunov:
    """Lyapunov exponents per layer of deep random networks (vanishing vs exploding gradients).

    Layers h_l = phi(W_l h_{l-1} + b_l), W_l entries N(0, sigma_w^2 / width), b_l entries
    N(0, sigma_b^2), all of width N; J_l = diag(phi'(z_l)) W_l. In the mean-field limit the top
    exponent per layer is (1/2) log(sigma_w^2 E[phi'(sqrt(q*) z)^2]) at the fixed point q* of the
    activity; for tanh with sigma_b = 0 it changes sign at sigma_w = 1 (order to chaos).

    Parameters
    ----------
    width, depth : N and L.
    sigma_w, sigma_b : weight and bias scales.
    k : number of exponents (<= width).
    n_inputs : inputs per network, entries N(0, q0).
    networks : independent networks (the standard error is over networks).
    skip_layers : leading layers left out of the average (transient of the activity).
    seed : seed of ``np.random.default_rng``.
    """
    N = check_int("width", width, minimum=1)
    L = check_int("depth", depth, minimum=1)
    sw = check_positive("sigma_w", sigma_w)
    sb = check_nonnegative("sigma_b", sigma_b)
    k = check_int("k", k, minimum=1)
    if k > N:
        raise ValueError(f"k must be <= width = {N}, got {k}")
    n_in = check_int("n_inputs", n_inputs, minimum=1)
    nets = check_int("networks", networks, minimum=1)
    skip = check_int("skip_layers", skip_layers, minimum=0)
    if skip >= L:
        raise ValueError(f"skip_layers must be < depth = {L}, got {skip}")
    q0 = check_positive("q0", q0)
    code = _activation_code(activation)
    # the layers of one network and the Jacobian products of its inputs
    check_memory(
        f"{nets} network(s) of width {N} and depth {L}",
        8.0 * L * N * (N + 1) + 8.0 * n_in * (L * k + k * k + N) + 8.0 * nets * (3 * n_in + L) * k,
    )
    rng = np.random.default_rng(check_seed("seed", seed))
    per_net, per_input_all, per_layer_all, sing_all = [], [], [], []
    for _ in range(nets):
        layers = [
            (rng.standard_normal((N, N)) * (sw / math.sqrt(N)), rng.standard_normal(N) * sb)
            for _ in range(L)
        ]
        X = rng.standard_normal((n_in, N)) * math.sqrt(q0)
        V0 = _orthonormal_rows(rng, k, N)
        logr, singular = _run_network(layers, code, True, X, k, V0)
        pin = logr[:, skip:].sum(1) / (L - skip)
        per_net.append(pin.mean(0))
        per_input_all.append(pin)
        per_layer_all.append(logr.mean(0))
        sing_all.append(singular)
    per_net = np.asarray(per_net)
    se = _standard_error(per_net)
    return NetworkLyapunov(
        exponents=per_net.mean(0),
        per_input=np.vstack(per_input_all),
        per_layer=np.mean(per_layer_all, axis=0),
        singular=np.vstack(sing_all),
        stderr=se,
        depth=L,
    )
