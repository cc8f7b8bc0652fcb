"""Lyapunov exponents by the QR method: maps, flows, random products and deep networks.

The exponents of a linear cocycle v_{t+1} = A_t v_t are
lambda_j = lim_{t -> inf} (1/t) log sigma_j(A_{t-1} ... A_0). The QR (Benettin / Shimada–
Nagashima) method pushes k orthonormal tangent vectors through the A_t and re-orthonormalises
them, V_{t+1} R_t = A_t V_t; then lambda_j = lim (1/t) sum_s log|(R_s)_jj|.

- :func:`lyapunov_spectrum`: maps x_{t+1} = F(x_t) (A_t = DF(x_t)) and flows dx/dt = f(t, x)
  (tangent flow integrated with RK4 alongside the state).
- :func:`product_lyapunov`: products of given or sampled matrices.
- :func:`network_lyapunov`, :func:`random_network_lyapunov`: layer-to-layer Jacobian products
  diag(phi'(z_l)) W_l of MLPs (the product that backpropagation multiplies).

The SGD linearisation at an interpolation minimum (its exponents, mean-square growth and
stability diagram) is in :mod:`nndyn_fast.sgd_stability`. Long runs stream to a run file and
resume exactly through :func:`nndyn_fast.runs.start_run`.

References
----------
G. Benettin, L. Galgani, A. Giorgilli, J.-M. Strelcyn, Meccanica 15 (1980) 9–30.
I. Shimada, T. Nagashima, Prog. Theor. Phys. 61 (1979) 1605–1616.
C. M. Newman, Commun. Math. Phys. 103 (1986) 121–126 (products of Gaussian matrices).
B. Poole et al., "Exponential expressivity in deep neural networks through transient chaos",
NeurIPS 2016 (order-to-chaos transition of random networks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from . import _compile_cache  # noqa: F401  (the kernels' cache policy: installed on import)
from ._first_class import call, typed
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
    check_seed,
    check_steps,
)
from .errors import NonFiniteStateError
from .kernels import lyapunov as _k
from .progress import progress_bar
from .runs import restore_rng, rng_state, start_run
from .threads import for_work

if TYPE_CHECKING:
    pass

__all__ = [
    "Henon",
    "Lorenz63",
    "MapSystem",
    "FlowSystem",
    "LyapunovSpectrum",
    "lyapunov_spectrum",
    "product_lyapunov",
    "NetworkLyapunov",
    "network_lyapunov",
    "random_network_lyapunov",
]


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
    """A user map x_{t+1} = step(x_t): Numba ``@njit`` functions ``step(x, args, out)`` (or
    ``step(x, args) -> x_next``) and ``jac(x, args, J)`` (J the (dim, dim) Jacobian at x);
    ``args`` is passed through unchanged."""

    step: Any
    jac: Any
    dim: int
    args: Any = ()
    kind = "map"
    _fn_name = "step"


@dataclass(frozen=True)
class FlowSystem(_UserSystem):
    """A user flow dx/dt = f(t, x): Numba ``@njit`` functions ``f(t, x, args, out)`` (or the
    simple form ``f(t, x, args) -> dx``, as for :func:`nndyn_fast.odeint`) and
    ``jac(t, x, args, J)``; ``args`` is passed through unchanged. ``odeint(system, x0, t)``
    integrates it."""

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
# Run files (the lifecycle itself is nndyn_fast.runs.start_run)
# --------------------------------------------------------------------------------------------
def _running_series(k: int) -> dict:
    """The ``running`` series of a Lyapunov run file, with units and names."""
    exps = {"shape": (k,), "dims": ("exponent",)}
    return {
        "running": {
            "time": {"units": "1", "long_name": "time (model units; steps for maps)"},
            "step": {"long_name": "step"},
            "estimate": {
                **exps,
                "units": "1/time",
                "long_name": "running Lyapunov exponent estimates",
            },
            "logsum": {**exps, "units": "1", "long_name": "accumulated log stretching factors"},
        }
    }


def _committed_rows(run: Any, series: str, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The committed rows of ``series`` in the file of the open run ``run``."""
    from .storage import open_run

    with open_run(run.path) as f:
        return {name: f.read(series, name) for name in names}


def _seed_param(seed: Any) -> Any:
    """A generator seed as it is stored with a run: None, an int, or a list of ints >= 0."""
    if seed is None:
        return None
    if isinstance(seed, (list, tuple, np.ndarray)):
        return [check_int("seed", s, minimum=0) for s in np.asarray(seed).ravel().tolist()]
    return check_int("seed", seed, minimum=0)


def _function_name(fn: Any) -> str:
    """``module.qualname`` of a user's (jitted) function, its identity in a run file."""
    py = getattr(fn, "py_func", fn)
    return f"{getattr(py, '__module__', '?')}.{getattr(py, '__qualname__', repr(py))}"


def _check_resume(out: Any, resume: bool) -> None:
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")


@dataclass(frozen=True)
class LyapunovSpectrum:
    """Result of :func:`lyapunov_spectrum` / :func:`product_lyapunov`.

    Attributes
    ----------
    exponents : (k,) estimates, in 1/time (flows) or per iteration (maps, products).
    stderr : (k,) standard error by batch means over ``n_blocks`` consecutive blocks.
    drift : (k,) abs(estimate at the end - estimate at half time), a convergence diagnostic.
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
    progress: bool = False,
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
    k : int, optional
        Number of exponents (top k), 1 <= k <= d; default d (full spectrum).
    steps : number of measured iterations (maps) or RK4 steps (flows); or give ``t_end``.
    t_end : measured duration for flows (``steps = round(t_end / dt)``).
    dt : RK4 step for flows (time units); must be None for maps.
    transient : discarded duration before measuring (time for flows, iterations for maps);
        state and tangent vectors are both advanced through it.
    reorth_every : steps between QR re-orthonormalisations.
    n_records : number of running estimates kept (the kernel chunk is steps / n_records).
    n_blocks : blocks for the batch-means standard error.
    seed : seed of the random orthonormal initial tangent vectors.
    V0 : array (k, d), optional
        Optional (k, d) initial tangent vectors (rows, linearly independent); they are
        orthonormalised. Default: random orthonormal rows from ``seed``.
    out : optional HDF5 run file: series ``running`` (time, step, estimate (k,), logsum (k,))
        committed per chunk with a checkpoint (x, V, logsum, step; the first one after the
        transient) so that ``resume=True`` continues a killed run exactly; the exponents and
        their standard errors go to the run's summary.
    overwrite : replace an existing ``out``.
    resume : continue the run in ``out`` from its last committed chunk (bitwise equal to an
        uninterrupted run); refused (ValueError naming the difference) when an option, x0,
        V0 or the system differs: a built-in system's parameters, a user system's ``args``
        (arrays by digest) and its functions' names (their code is not compared).
    progress : report progress on stderr once per chunk (see :mod:`nndyn_fast.progress`).

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
    progress = check_bool("progress", progress)
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
        jac, args = system.jac, system.args
        _check_user_system(system, x, is_flow, d)
        fn = _in_place(system.step if not is_flow else system.f, is_flow)
    if V0 is not None:
        V0 = as_array("V0", V0, shape=(k, d))
    seed = _seed_param(seed)
    _check_resume(out, resume)

    # user functions go by their signature: one cached kernel serves every system of it
    f8, v, m2 = numba.types.float64, numba.types.float64[::1], numba.types.float64[:, ::1]
    a = numba.typeof(args)
    t_ = (f8,) if is_flow else ()
    fn_t, jac_t = typed(fn, *t_, v, a, v), typed(jac, *t_, v, a, m2)

    def advance(n: int, t0: float, logr: np.ndarray) -> None:
        if is_flow:
            nd, st = call(
                _k.benettin_flow_advance,
                *(fn_t, jac_t, _k.LORENZ63, bparams, args, x, V, t0, dt, n, reorth_every, logr),
            )
        else:
            nd, st = call(
                _k.benettin_map_advance,
                *(fn_t, jac_t, _k.HENON, bparams, args, x, V, n, reorth_every, logr),
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
    sys_params, sys_inputs = _system_identity(system)
    spec = {
        "kind": "lyapunov_spectrum",
        "description": "Lyapunov spectrum by the QR (Benettin) method: running estimates of "
        "the k largest exponents per record",
        "params": {
            "system": type(system).__name__,
            **sys_params,
            "dim": d,
            "k": k,
            "t_end": None if t_end is None else float(t_end),
            "steps": n_steps,
            "dt": dt if is_flow else None,
            "transient": float(transient),
            "reorth_every": reorth_every,
            "n_records": n_records,
            "n_blocks": n_blocks,
            "seed": seed,
        },
        "inputs": {"x0": x.copy(), **sys_inputs, **({} if V0 is None else {"V0": V0})},
        "series": _running_series(k),
        "rows": {"running": -(-n_steps // chunk)},
    }
    run = None
    if out is not None and resume:
        run = start_run(out, **spec, checkpoint={}, resume=True)
    else:
        if out is not None:
            check_out_path("out", out, overwrite=overwrite)
        if V0 is None:
            V = _orthonormal_rows(np.random.default_rng(seed), k, d)
        else:
            V = np.ascontiguousarray(np.linalg.qr(V0.T)[0].T)
            if np.linalg.matrix_rank(V) < k:
                raise ValueError("V0 must have linearly independent rows")
        for pos in range(0, n_trans, chunk):
            advance(min(chunk, n_trans - pos), pos * dt, np.zeros(k))
        logsum = np.zeros(k)
        done = 0
        if out is not None:
            start = {"x": x, "V": V, "logsum": logsum, "step": 0}
            run = start_run(out, **spec, checkpoint=start, overwrite=overwrite)
    t_start = n_trans * dt
    with run if run is not None else nullcontext():
        rec_t, rec_sum = [], []
        if run is not None:
            ck = run.checkpoint
            x[:] = ck["x"]
            V = np.ascontiguousarray(ck["V"], dtype=np.float64)
            logsum = np.array(ck["logsum"], dtype=np.float64)
            done = int(ck["step"])
            kept = _committed_rows(run, "running", ("time", "logsum"))
            rec_t, rec_sum = list(kept["time"]), list(kept["logsum"])
        bar = progress_bar(progress, n_steps, desc="lyapunov")
        while done < n_steps:
            n = min(chunk, n_steps - done)
            advance(n, t_start + done * dt, logsum)
            done += n
            bar.update(done)
            t = done * dt
            rec_t.append(t)
            rec_sum.append(logsum.copy())
            if run is not None:
                run.append(
                    "running",
                    time=np.array([t]),
                    step=np.array([float(done)]),
                    estimate=(logsum / t)[None],
                    logsum=logsum[None],
                )
                # copies: the writer keeps the checkpoint and writes it again on closing
                run.commit(x=x.copy(), V=V.copy(), logsum=logsum.copy(), step=done)
        res = _spectrum_result(rec_t, rec_sum, n_steps * dt, n_steps, n_blocks, x, V)
        if run is not None:
            run.summarize(exponents=res.exponents.tolist(), stderr=res.stderr.tolist())
    return res


def _system_identity(system: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(parameters, input arrays) that identify a system in a run file: the built-in systems'
    parameters by name; for user systems the functions' names and the ``args`` (arrays as
    inputs, numbers as parameters, anything else by its repr)."""
    if isinstance(system, (Henon, Lorenz63)):
        return {f.name: float(getattr(system, f.name)) for f in fields(system)}, {}
    params: dict[str, Any] = {
        system._fn_name: _function_name(getattr(system, system._fn_name)),
        "jac": _function_name(system.jac),
    }
    inputs: dict[str, np.ndarray] = {}
    several = isinstance(system.args, tuple)
    items = system.args if several else (system.args,)
    for i, a in enumerate(items):
        name = f"args[{i}]" if several else "args"
        if isinstance(a, np.ndarray):
            inputs[name] = a
        elif isinstance(a, (bool, int, float, str, np.generic)):
            params[name] = a.item() if isinstance(a, np.generic) else a
        else:
            params[name] = repr(a)
    return params, inputs


_ADAPTERS: dict[Any, Any] = {}


def _in_place(fn: Any, is_flow: bool) -> Any:
    """The user's function in the in-place form the kernels call: a simple-form
    ``f(t, x, args) -> dx`` (or ``step(x, args) -> x_next``) is wrapped once per process."""
    if fn.py_func.__code__.co_argcount == (4 if is_flow else 3):
        return fn
    if fn not in _ADAPTERS:
        if is_flow:

            @numba.njit
            def adapter(t, x, args, out):
                out[:] = fn(t, x, args)

        else:

            @numba.njit
            def adapter(x, args, out):
                out[:] = fn(x, args)

        _ADAPTERS[fn] = adapter
    return _ADAPTERS[fn]


def _check_user_system(system: Any, x: np.ndarray, is_flow: bool, d: int) -> None:
    out = np.zeros(d)
    J = np.zeros((d, d))
    fn = system.f if is_flow else system.step
    n_in = fn.py_func.__code__.co_argcount
    forms = (
        ((4, 3), "f(t, x, args, out) or f(t, x, args) -> dx")
        if is_flow
        else (
            (3, 2),
            "step(x, args, out) or step(x, args) -> x_next",
        )
    )
    if n_in not in forms[0]:
        raise TypeError(f"the user's function must take {forms[1]}, got {n_in} argument(s)")
    try:
        if is_flow:
            r = system.f(0.0, x.copy(), system.args, *([out] if n_in == 4 else []))
            system.jac(0.0, x.copy(), system.args, J)
        else:
            r = system.step(x.copy(), system.args, *([out] if n_in == 3 else []))
            system.jac(x.copy(), system.args, J)
        if r is not None:
            if np.shape(r) != (d,):
                raise ValueError(f"the user's function must return shape ({d},), got {np.shape(r)}")
            out[:] = r
    except Exception as exc:  # numba typing errors, wrong signatures
        raise TypeError(
            "calling the user's functions failed; they must have the signatures "
            + (forms[1] + ", jac(t, x, args, J)" if is_flow else forms[1] + ", jac(x, args, J)")
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
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> LyapunovSpectrum:
    """Lyapunov exponents of the product M_T ... M_1 by the QR method.

    V_{t+1} R_t = M_{t+1} V_t from k random orthonormal rows V_0; lambda_j = (1/T) sum log|R_jj|.

    Parameters
    ----------
    factors : either an array (T, d, d) of factors (M_1 first), or a callable
        ``factors(rng, m) -> (m, d, d)`` drawing m i.i.d. factors from a numpy Generator; the
        callable is called once per chunk and needs ``steps``.
    k : int, optional
        Number of exponents (default d).
    steps : number of factors when ``factors`` is a callable.
    seed : integer >= 0, seed of the generator handed to the callable and of the initial
        tangent vectors.
    chunk : factors per kernel call (and per committed row of ``out``).
    n_blocks : blocks for the batch-means standard error (>= 2).
    reorth_every : factors between QR re-orthonormalisations.
    out : optional HDF5 run file: series ``running`` (time, step, estimate (k,), logsum (k,))
        committed per chunk with a checkpoint (V, logsum, step and the generator's state).
    overwrite : replace an existing ``out``.
    resume : continue the run in ``out`` from its last committed chunk (bitwise equal to an
        uninterrupted run); refused (ValueError naming the difference) when an option or the
        factor array differs. A callable is identified by its module and name only.
    progress : report progress on stderr once per chunk (see :mod:`nndyn_fast.progress`).

    Returns
    -------
    LyapunovSpectrum with ``x=None``; exponents per factor.

    Raises
    ------
    ValueError for bad options or factors of the wrong shape; NonFiniteStateError (naming the
    factor) when the tangent vectors stop being finite or collapse to zero.
    """
    seed = check_int("seed", seed, minimum=0)
    chunk = check_int("chunk", chunk, minimum=1)
    n_blocks = check_int("n_blocks", n_blocks, minimum=2)
    reorth_every = check_int("reorth_every", reorth_every, minimum=1)
    n_blocks = check_int("n_blocks", n_blocks, minimum=2)
    _check_resume(out, resume)
    rng = np.random.default_rng(seed)
    rng_start = rng_state(rng)
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
    d = None

    def draw(start: int, m: int) -> np.ndarray:
        if probe is not None:
            return probe[start : start + m]
        M = as_array("factors(rng, m)", factors(rng, m), ndim=3)
        if M.shape[0] != m or M.shape[1] != M.shape[2] or d not in (None, M.shape[1]):
            want = f"({m}, d, d)" if d is None else f"({m}, {d}, {d})"
            raise ValueError(f"factors(rng, {m}) must return shape {want}, got {M.shape}")
        return M

    M = draw(0, min(chunk, n_steps))
    d = M.shape[1]
    k = d if k is None else check_int("k", k, minimum=1)
    if k > d:
        raise ValueError(f"k must be <= the dimension {d}, got {k}")
    spec = {
        "kind": "product_lyapunov",
        "description": "Lyapunov exponents of a product of random matrices by the QR method: "
        "running estimates of the k largest exponents per record",
        "params": {
            **({} if probe is not None else {"factors": _function_name(factors)}),
            "dim": d,
            "k": k,
            "steps": n_steps,
            "seed": seed,
            "chunk": chunk,
            "n_blocks": n_blocks,
            "reorth_every": reorth_every,
        },
        "inputs": {} if probe is None else {"factors": probe},
        "series": _running_series(k),
        "rows": {"running": -(-n_steps // chunk)},
    }
    V = _orthonormal_rows(np.random.default_rng([seed, 1]), k, d)
    logsum = np.zeros(k)
    done = 0
    run = None
    if out is not None:
        start = {"V": V, "logsum": logsum, "step": 0, "rng": rng_start}
        run = start_run(out, **spec, checkpoint=start, resume=resume, overwrite=overwrite)
    with run if run is not None else nullcontext():
        rec_t, rec_sum = [], []
        if resume:
            ck = run.checkpoint
            V = np.ascontiguousarray(ck["V"], dtype=np.float64)
            logsum = np.array(ck["logsum"], dtype=np.float64)
            done = int(ck["step"])
            rng = restore_rng(ck["rng"])
            kept = _committed_rows(run, "running", ("time", "logsum"))
            rec_t, rec_sum = list(kept["time"]), list(kept["logsum"])
            if done < n_steps:
                M = draw(done, min(chunk, n_steps - done))
        bar = progress_bar(progress, n_steps, desc="lyapunov")
        while done < n_steps:
            nd, st = _k.qr_matrix_products(M, V, reorth_every, logsum)
            if st != _k.OK:
                raise NonFiniteStateError(
                    f"tangent vectors {_tangent_failure(st)} at factor {done + nd}",
                    step=done + nd,
                    time=float(done + nd),
                )
            done += M.shape[0]
            bar.update(done)
            rec_t.append(float(done))
            rec_sum.append(logsum.copy())
            if run is not None:
                run.append(
                    "running",
                    time=np.array([float(done)]),
                    step=np.array([float(done)]),
                    estimate=(logsum / done)[None],
                    logsum=logsum[None],
                )
                # copies: the writer keeps the checkpoint and writes it again on closing
                run.commit(V=V.copy(), logsum=logsum.copy(), step=done, rng=rng_state(rng))
            if done < n_steps:
                M = draw(done, min(chunk, n_steps - done))
        res = _spectrum_result(rec_t, rec_sum, float(n_steps), n_steps, n_blocks, None, V)
        if run is not None:
            run.summarize(exponents=res.exponents.tolist(), stderr=res.stderr.tolist())
    return res


# ============================================================================================
# Deep networks: products of layer Jacobians
# ============================================================================================
@dataclass(frozen=True)
class NetworkLyapunov:
    """Result of :func:`network_lyapunov` / :func:`random_network_lyapunov`.

    Attributes
    ----------
    exponents : array (k,)
        (k,) exponents per layer, (1/L) sum_l log|R_jj| averaged over inputs (and
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


# Serial seconds per input, tangent vector and weight of the Jacobian-QR kernel, for the
# thread choice of threads.for_work (measured on one thread: 10-64-64-64-1 tanh, 500 inputs,
# k = 10: 1.05e-9).
_SECONDS_PER_JAC_UNIT = 1e-9


def _run_network(layers, code, act_last, X, k, V0):
    params, w_off, b_off, sizes = _pack_layers(layers)
    n = X.shape[0]
    L = len(layers)
    logr = np.zeros((n, L, k))
    T = np.zeros((n, k, k))
    logscale = np.zeros(n)
    seconds = _SECONDS_PER_JAC_UNIT * n * k * sum(W.size for W, _ in layers)
    with for_work(seconds):  # one region: every input in parallel
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
    k : int, optional
        Number of exponents, default min(n_in, smallest width) (beyond the smallest width
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
    k : int
        Number of exponents (<= width).
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
