"""Explicit Runge-Kutta integration of ODEs: ``odeint`` and its ``Solution``.

The time loop runs inside one compiled kernel (:mod:`nndyn_fast.kernels.rk`): one stepping
loop for every case (one or many trajectories, fixed or adaptive steps, built-in or user
fields, with or without variational equations). Batches of initial states are integrated in
blocks, in parallel (a few trajectories of a user field serially: that compiles faster), each
trajectory with its own adaptive steps. In batches of a built-in model (16 states or more, no
variational equations) the trajectories of a block that step together have their stages
evaluated as one blocked matrix product instead of one matrix-vector product each; steps,
step-size control and every rounding stay per trajectory, so batched and unbatched results are
bitwise identical.
"""

from __future__ import annotations

import hashlib
import os
import types
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from . import _compile_cache  # noqa: F401  (the kernels' cache policy: installed on import)
from ._first_class import call, typed
from ._validate import (
    as_array,
    check_bool,
    check_int,
    check_jitted,
    check_option,
    check_positive,
    check_steps,
    check_time_grid,
)
from .errors import NonFiniteStateError
from .kernels import rk as _rk
from .lyapunov import FlowSystem
from .threads import for_work

__all__ = ["METHODS", "IntegrationError", "Solution", "odeint"]

# name -> (A, B, C, E, D, order, adaptive)
_EMPTY = np.zeros(0)
METHODS: dict[str, tuple] = {
    "dopri5": (_rk.DOPRI5_A, _rk.DOPRI5_B, _rk.DOPRI5_C, _rk.DOPRI5_E, _rk.DOPRI5_D, 5, True),
    "rk4": (_rk.RK4_A, _rk.RK4_B, _rk.RK4_C, np.zeros(4), _EMPTY, 4, False),
    "rk2": (_rk.RK2_A, _rk.RK2_B, _rk.RK2_C, np.zeros(2), _EMPTY, 2, False),
    "euler": (_rk.EULER_A, _rk.EULER_B, _rk.EULER_C, np.zeros(1), _EMPTY, 1, False),
}
_STATUS = {
    _rk.OK: "success",
    _rk.NONFINITE: "the state became NaN/inf",
    _rk.STEP_UNDERFLOW: "the step size fell below the resolution of t",
    _rk.MAX_STEPS: "max_steps steps were taken",
}
# the user-field path passes a dummy model of the built-in type, so kernels see one signature
_DUMMY_MODEL = (
    np.zeros((1, 0, 0)),
    np.zeros((1, 0, 0)),
    np.zeros((1, 0, 0)),
    np.zeros((1, 0, 0)),
    np.zeros((1, 0)),
    0,
    0,
)


_SERIAL_USER_BATCH = 32
# batches of a built-in field from this size on are evaluated in blocks of at most _BLOCK_MAX
# trajectories, one blocked matrix product per stage and block (the arithmetic of a trajectory
# does not depend on its block, so results do not depend on the blocks at all)
_BLOCK_MIN = 16
_BLOCK_MAX = 64
# user fields, tangents and small built-in batches are evaluated row by row, in blocks of at
# most this many rows
_ROW_BLOCK_MAX = 16


class IntegrationError(FloatingPointError):
    """The integrator stopped early (step-size underflow or ``max_steps``).

    ``time`` is the time reached; ``solution`` holds the frames computed before (NaN after).
    """

    def __init__(self, message: str, *, time: float, solution: Solution | None = None):
        super().__init__(message)
        self.time = time
        self.solution = solution


@dataclass(frozen=True, eq=False)
class Solution:
    """Result of :func:`odeint`.

    Attributes
    ----------
    t : (T,) output times.
    y : (T, d) or (T, B, d) states at ``t`` (``None`` when streamed to a file).
    stats : dict with ``n_accepted``, ``n_rejected``, ``n_fev`` (totals over the batch) and
        ``per_trajectory`` (B, 3) int array of the same three counts.
    status : ``"success"`` or the reason the run stopped.
    jac : (T, d, d) or (T, B, d, d) flow Jacobians ``dx(t)/dx0`` (``variational=True``), else
        ``None``.
    path : the HDF5 run file when ``out`` was given, else ``None``.
    """

    t: np.ndarray
    y: np.ndarray | None
    stats: dict = field(default_factory=dict)
    status: str = "success"
    jac: np.ndarray | None = None
    path: str | None = None


def _tolerance(name: str, value: Any, d: int, *, minimum: float) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number or array, got {value!r}") from None
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape != (d,)):
        raise ValueError(f"{name} must be a scalar or have shape ({d},), got {arr.shape}")
    if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if np.any(arr < minimum):
        raise ValueError(f"{name} must be >= {minimum:g} (float64 resolution), got {value!r}")
    # a writable copy: broadcast_to's read-only view would be another kernel signature
    return np.array(np.broadcast_to(arr, (d,)), dtype=np.float64)


def _check_user_output(name: str, r: Any, d: int) -> None:
    arr = np.asarray(r)
    if arr.shape != (d,):
        raise ValueError(f"{name} must return an array of shape ({d},), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must return floating-point values, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} returned NaN/inf at the initial state")


def _user_field(f: Any, x: np.ndarray, t0: float, args: tuple) -> tuple[Any, Any]:
    """Return ``(fn_inplace, fn_simple)`` after one checked call of the user's field."""
    check_jitted("f", f)
    nargs = f.py_func.__code__.co_argcount
    d = x.shape[0]
    if nargs == 4:
        out = np.full(d, np.nan)
        f(t0, x.copy(), args, out)
        _check_user_output("f(t, x, args, out)", out, d)
        return f, None
    if nargs == 3:
        r = f(t0, x.copy(), args)
        _check_user_output("f(t, x, args)", r, d)
        return None, f
    raise TypeError(
        "f must take (t, x, args, out) (in-place form) or (t, x, args) (simple form), "
        f"got a function of {nargs} argument(s)"
    )


def _user_jac(jac: Any, x: np.ndarray, t0: float, args: tuple) -> Any:
    check_jitted("jac", jac)
    if jac.py_func.__code__.co_argcount != 4:
        raise TypeError("jac must take (t, x, args, J) and fill the (d, d) array J in place")
    d = x.shape[0]
    J = np.full((d, d), np.nan)
    jac(t0, x.copy(), args, J)
    if not np.all(np.isfinite(J)):
        raise ValueError("jac(t, x, args, J) left NaN/inf in J at the initial state")
    return jac


def _is_model(f: Any) -> bool:
    return hasattr(f, "_kernel_model") and hasattr(f, "dim")


def odeint(
    f: Any,
    x0: Any,
    t: Any,
    *,
    method: str = "dopri5",
    dt: float | None = None,
    rtol: Any = 1e-6,
    atol: Any = 1e-9,
    args: tuple = (),
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    chunk_frames: int | None = None,
    max_steps: int = 1_000_000,
    variational: bool = False,
    progress: bool = False,
    jac: Any = None,
    extra_params: dict[str, Any] | None = None,
) -> Solution:
    """Integrate ``dx/dt = f(t, x)`` from ``x(t[0]) = x0`` and return ``x`` at every ``t``.

    Parameters
    ----------
    f : a built-in model (:class:`~nndyn_fast.NeuralODE`, :class:`~nndyn_fast.AugmentedNeuralODE`)
        or a Numba ``@njit`` function in the in-place form ``f(t, x, args, out)`` or the simple
        form ``f(t, x, args) -> dx`` (told apart by the number of arguments), or a
        :class:`~nndyn_fast.FlowSystem` (its field, args and Jacobian).
    x0 : (d,) or (B, d) float initial state(s); a batch is integrated in parallel, each
        trajectory with its own steps. For an augmented model, states of the input dimension
        are lifted by zero padding.
    t : (T,) strictly increasing output times (T >= 2), same units as the field's time.
    method : ``"dopri5"`` (adaptive Dormand-Prince 5(4), PI step control, dense output),
        ``"rk4"``, ``"rk2"`` (Heun) or ``"euler"``.
    dt : fixed-step methods: largest step; every interval between output times is cut into
        ``ceil(length / dt)`` equal steps (``None``: one step per interval). ``dopri5``: first
        step (``None``: chosen automatically).
    rtol, atol : relative and absolute tolerances of ``dopri5``, scalars or (d,) arrays, > 0:
        each step's error estimate e satisfies ``rms(e / (atol + rtol |x|)) <= 1``.
    args : tuple of extra arguments passed to a user field (a ``FlowSystem`` brings its own).
    out : optional HDF5 path; frames are streamed chunk by chunk into the run file (series
        ``trajectory`` with ``time`` and ``value`` (B, d)) instead of memory; ``y`` is ``None``.
        Each chunk is committed with a checkpoint (states, proposed steps, counts), so a killed
        run keeps every committed chunk (see :func:`nndyn_fast.runs.start_run`).
    overwrite, resume : replace an existing ``out``, or continue the run it holds from its last
        checkpoint. A resume must be given the same field, inputs and options (every one is
        compared with the file, a user field by its name and a digest of its code); its result
        is bitwise that of an uninterrupted run.
    chunk_frames : output intervals per committed chunk with ``out`` (default: about 1 MiB of
        frames). The last time of each chunk is stepped onto, so ``dopri5`` results depend on
        it (to the tolerance); it is part of the run's parameters.
    max_steps : step budget per trajectory (``dopri5``; with ``out``, per chunk).
    progress : report progress on stderr per committed chunk (with ``out``; see
        :mod:`nndyn_fast.progress`).
    variational : also integrate the variational equation ``dV/dt = Df(x) V``, ``V(t0) = I``
        and return the flow Jacobians ``dx(t)/dx0`` in ``Solution.jac``. Built-in models use
        their analytic Jacobian; a user field needs ``jac``.
    jac : Numba ``@njit`` function ``jac(t, x, args, J)`` writing ``Df(x)`` (d, d) into ``J``.
    extra_params : JSON-able options stored in the run file's ``/params`` beside the run's own
        (with ``out``; compared on resume), such as the seed and sizes a caller drew the model
        and initial states with.

    Returns
    -------
    Solution with ``t``, ``y`` of shape (T, *x0.shape), ``stats``, ``status``, ``jac``.

    Raises
    ------
    ValueError for bad shapes, NaN/inf inputs, non-increasing ``t``, bad tolerances or options;
    TypeError if ``f`` is not a built-in model or a Numba-jitted function;
    NonFiniteStateError when a trajectory overflows (naming the time reached; good frames are
    kept in ``error.solution``, or in the run file with ``out``: the message says how many);
    IntegrationError on step-size underflow or ``max_steps``.

    References
    ----------
    Hairer, Norsett, Wanner, "Solving Ordinary Differential Equations I", Springer 1993.
    """
    check_option("method", method, METHODS)
    TA, TB, TC, TE, TD, order, adaptive = METHODS[method]
    tt = check_time_grid("t", t)
    x = as_array("x0", x0, ndim=(1, 2))
    if x.shape[-1] == 0 or (x.ndim == 2 and x.shape[0] == 0):
        raise ValueError(f"x0 must be non-empty, got shape {x.shape}")
    if isinstance(f, FlowSystem):  # the same user system as lyapunov_spectrum takes
        if args != ():
            raise ValueError("a FlowSystem carries its own args; pass none to odeint")
        if x.shape[-1] != f.dim:
            raise ValueError(f"x0 must have the FlowSystem's dim = {f.dim} columns, got {x.shape}")
        f, args, jac = f.f, f.args, f.jac if jac is None else jac
    elif not isinstance(args, tuple):
        raise ValueError(f"args must be a tuple, got {type(args).__name__}")
    h0 = 0.0 if dt is None else check_positive("dt", dt)
    max_steps = check_int("max_steps", max_steps, minimum=1)
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")
    if chunk_frames is not None:
        chunk_frames = check_int("chunk_frames", chunk_frames, minimum=1)
    variational = check_bool("variational", variational)
    overwrite = check_bool("overwrite", overwrite)
    progress = check_bool("progress", progress)
    if extra_params is not None and not isinstance(extra_params, dict):
        raise TypeError(f"extra_params must be a dict or None, got {type(extra_params).__name__}")
    if dt is not None and not adaptive:
        check_steps("(t[-1] - t[0]) / dt", (tt[-1] - tt[0]) / h0)

    fn_ip = fn_s = jac_fn = None
    if _is_model(f):
        x = f._prepare_state(x)
        model = f._kernel_model()
        tstops = f._tstops()
        if jac is not None:
            raise ValueError("jac is only used with user fields; built-in models have their own")
    else:
        if not callable(f):
            raise TypeError(f"f must be a built-in model or a Numba-jitted function, got {f!r}")
        x0_row = x if x.ndim == 1 else x[0]
        fn_ip, fn_s = _user_field(f, x0_row, float(tt[0]), args)
        model = _DUMMY_MODEL
        tstops = _EMPTY
        if variational:
            if jac is None:
                raise ValueError("variational=True with a user field needs jac(t, x, args, J)")
            jac_fn = _user_jac(jac, x0_row, float(tt[0]), args)
    batched = x.ndim == 2
    X = x if batched else x[None, :]
    B, d = X.shape
    rt = _tolerance("rtol", rtol, d, minimum=1e-15)
    at = _tolerance("atol", atol, d, minimum=1e-300)
    tols = {"rtol": rt, "atol": at}
    nvar = d if variational else 0
    if nvar:
        eye = np.broadcast_to(np.eye(d).ravel(), (B, d * d))
        Z0 = np.ascontiguousarray(np.concatenate([X, eye], axis=1))
        rt = np.concatenate([rt, np.full(d * d, rt.min())])
        at = np.concatenate([at, np.full(d * d, at.min())])
    else:
        Z0 = np.ascontiguousarray(X)
    kern = dict(
        fn_ip=fn_ip, fn_s=fn_s, jac_fn=jac_fn, args=args, model=model, d=d, nvar=nvar,
        tstops=tstops, dt=(0.0 if dt is None else h0), adaptive=adaptive, TA=TA, TB=TB, TC=TC,
        TE=TE, TD=TD, order=order, rtol=rt, atol=at, max_steps=max_steps,
    )  # fmt: skip
    hs = np.full(B, h0 if adaptive else 0.0)
    if out is not None:
        params, inputs = _run_params(f, fn_ip or fn_s, jac_fn, args, kern, method, batched)
        params.update(extra_params or {})
        inputs.update(x0=X, t=tt, **tols)
        stream = (out, resume, overwrite, chunk_frames, params, inputs, progress)
        return _odeint_to_file(stream, kern, Z0, tt, hs, batched)
    Y, status, nframes, t_reached, stats = _run(kern, Z0, tt, hs)
    sol = _solution(tt, Y, stats, d, nvar, batched, status)
    _raise_on_failure(status, nframes, t_reached, stats, tt, sol, batched)
    return sol


def _run(kern: dict, Z0: np.ndarray, tt: np.ndarray, hs: np.ndarray) -> tuple:
    B, n = Z0.shape
    T = tt.shape[0]
    Y = np.empty((T, B, n))
    status = np.zeros(B, np.int64)
    nframes = np.zeros(B, np.int64)
    t_reached = np.zeros(B)
    stats = np.zeros((B, 3), np.int64)
    k = kern
    # fixed-step runs pass no error and dense weights: their compiled loop has no adaptive code
    TE, TD = (k["TE"], k["TD"]) if k["adaptive"] else (None, None)
    tail = (k["TA"], k["TB"], k["TC"], TE, TD, k["order"], k["rtol"], k["atol"])
    user = k["fn_ip"] is not None or k["fn_s"] is not None
    with for_work(_serial_seconds(k, B, tt, user)):
        _run_kernel(k, user, Z0, tt, hs, tail, Y, status, nframes, t_reached, stats)
    if not k["adaptive"]:
        hs[:] = k["dt"]  # the step of a fixed-step run, whichever kernel ran it
    for b in np.nonzero(status != _rk.OK)[0]:
        Y[nframes[b] :, b, :] = np.nan
    return Y, status, nframes, t_reached, stats


# Serial seconds per field evaluation (measured on one thread, rk4 batches: the built-in
# field 1.7e-10 per d H multiply-add plus 5e-8 per evaluation, d = 64 / 8, H = 64 / 16;
# a user Lorenz field 4e-9 per state component), for the thread choice of threads.for_work.
_SECONDS_PER_DH = 1.7e-10
_SECONDS_PER_EVAL = 5e-8
_SECONDS_PER_USER_COMPONENT = 4e-9


def _serial_seconds(k: dict, B: int, tt: np.ndarray, user: bool) -> float:
    """Estimated serial seconds of a run: one parallel region (the kernel call) for all of it.

    Fixed steps: the steps of the schedule; adaptive: one step per output interval (a lower
    bound: the step count is not known before the run).
    """
    S = k["TB"].shape[0]
    T = tt.shape[0]
    steps = float(T - 1)
    if not k["adaptive"] and k["dt"] > 0:
        steps = max(steps, float((tt[-1] - tt[0]) / k["dt"]))
    d, nvar = k["d"], k["nvar"]
    if user:
        per_eval = _SECONDS_PER_USER_COMPONENT * d * (1 + nvar)
    else:
        H = k["model"][4].shape[1]
        per_eval = _SECONDS_PER_DH * d * H * (1 + nvar) + _SECONDS_PER_EVAL
    return B * steps * S * per_eval


def _run_kernel(k, user, Z0, tt, hs, tail, Y, status, nframes, t_reached, stats) -> None:
    B = Z0.shape[0]
    if not user and k["nvar"] == 0 and B >= _BLOCK_MIN:
        # enough blocks for every thread, in multiples of four rows (the product's tile)
        per_thread = -(-B // numba.get_num_threads())
        block = min(_BLOCK_MAX, 4 * -(-per_thread // 4))
        blocked = 1
    else:
        # evaluated row by row; a block is only the unit of parallel work here
        block = min(_ROW_BLOCK_MAX, -(-B // numba.get_num_threads()))
        blocked = 0
    # user functions go by their signature: one cached kernel serves every field of it
    a = numba.typeof(k["args"])
    f8, v, m = numba.types.float64, numba.types.float64[::1], numba.types.float64[:, ::1]
    run = (
        typed(k["fn_ip"], f8, v, a, v), typed(k["fn_s"], f8, v, a), typed(k["jac_fn"], f8, v, a, m),
        k["args"], k["model"], blocked, k["d"], k["nvar"],
        Z0, tt, k["tstops"], k["dt"], *tail, hs, k["max_steps"], block,
        Y, status, nframes, t_reached, stats,
    )  # fmt: skip
    if user and (B < _SERIAL_USER_BATCH or numba.get_num_threads() == 1):
        # a few trajectories of a user field, or one thread: the serial driver (no threads to
        # start for a small run; it also compiles in about half the time of the parallel one)
        call(_rk.rk_solve_serial, *run)
    else:
        call(_rk.rk_solve, *run)


def _stats(stats: np.ndarray) -> dict:
    tot = stats.sum(axis=0)
    return {
        "n_accepted": int(tot[0]),
        "n_rejected": int(tot[1]),
        "n_fev": int(tot[2]),
        "per_trajectory": stats,
    }


def _solution(tt, Y, stats, d, nvar, batched, status) -> Solution:
    T, B, _ = Y.shape
    y = Y[:, :, :d]
    jacs = Y[:, :, d:].reshape(T, B, d, d) if nvar else None
    if not batched:
        y = y[:, 0, :]
        jacs = jacs[:, 0] if jacs is not None else None
    bad = status != _rk.OK
    st = "success" if not bad.any() else _STATUS[int(status[np.argmax(bad)])]
    return Solution(
        t=tt, y=np.ascontiguousarray(y), stats=_stats(stats), status=st,
        jac=None if jacs is None else np.ascontiguousarray(jacs),
    )  # fmt: skip


def _raise_on_failure(status, nframes, t_reached, stats, tt, sol, batched, kept=None) -> None:
    """Raise the error of the first failed trajectory (the earliest ``t_reached``).

    ``kept = (frames, t_last, path)``: a streamed run, whose file keeps ``frames`` frames of
    every trajectory (``tt``, ``nframes`` then belong to the failed chunk alone).
    """
    bad = np.nonzero(status != _rk.OK)[0]
    if bad.size == 0:
        return
    b = int(bad[np.argmin(t_reached[bad])])
    code = int(status[b])
    who = f"trajectory {b}" if batched else "the trajectory"
    msg = f"{who} stopped at t = {t_reached[b]:.17g} after {int(stats[b, 0])} steps: "
    msg += f"{_STATUS[code]}; "
    if kept is None:
        msg += f"{int(nframes[b])} output frame(s) up to t = {tt[nframes[b] - 1]:.17g} are kept"
    else:
        frames, t_last, path = kept
        msg += (
            f"{path!r} keeps {frames} output frame(s) of every trajectory, up to t = {t_last:.17g}"
        )
    if code == _rk.NONFINITE:
        err = NonFiniteStateError(msg, step=int(stats[b, 0]), time=float(t_reached[b]))
        err.solution = sol
        raise err
    raise IntegrationError(msg, time=float(t_reached[b]), solution=sol)


def function_id(fn: Any) -> str:
    """``sha256:<hex>`` identifying a Numba-jitted function by its code.

    The digest covers the bytecode, the names and the constants of ``fn.py_func`` (nested code
    objects by their own code, so no memory address enters), the code of the jitted functions
    it calls through globals or closures, and the values it captures (arrays by their digest).
    A resume compares it, so that a run is never continued with a different function.
    """
    from numba.core.registry import CPUDispatcher

    from .runs import digest

    h = hashlib.sha256()
    seen: set[int] = set()

    def code(c: types.CodeType) -> None:
        h.update(c.co_code)
        h.update(repr((c.co_names, c.co_varnames, c.co_argcount)).encode())
        for k in c.co_consts:
            if isinstance(k, types.CodeType):
                code(k)
            elif isinstance(k, frozenset):  # set literals: no hash-seed dependent order
                h.update(repr(sorted(map(repr, k))).encode())
            else:
                h.update(repr(k).encode())

    def value(v: Any) -> None:
        if isinstance(v, CPUDispatcher):
            func(v.py_func)
        elif isinstance(v, np.ndarray):
            h.update(digest(v).encode())
        elif isinstance(v, (bool, int, float, complex, str, bytes, np.generic, tuple)):
            h.update(repr(v).encode())

    def func(py: Any) -> None:
        if id(py) in seen:
            return
        seen.add(id(py))
        h.update(py.__qualname__.encode())
        code(py.__code__)
        for name in _names(py.__code__):
            if name in py.__globals__ and isinstance(py.__globals__[name], CPUDispatcher):
                value(py.__globals__[name])
        for cell in py.__closure__ or ():
            value(cell.cell_contents)

    func(fn.py_func)
    return "sha256:" + h.hexdigest()


def _names(c: types.CodeType) -> list[str]:
    out = list(c.co_names)
    for k in c.co_consts:
        if isinstance(k, types.CodeType):
            out += _names(k)
    return out


def args_params(args: tuple, name: str = "args") -> tuple[list, dict[str, np.ndarray]]:
    """The extra arguments of a user function as run parameters: a list describing each one
    (dtype and exact value of a scalar, dtype and shape of an array) and the arrays among them
    as named inputs (``args[i]``, ``args[i][j]`` inside tuples)."""
    desc: list = []
    arrays: dict[str, np.ndarray] = {}
    for i, v in enumerate(args):
        key = f"{name}[{i}]"
        if isinstance(v, np.ndarray):
            desc.append(f"array {v.dtype.str} {list(v.shape)}")
            arrays[key] = v
        elif isinstance(v, tuple):
            sub, sub_arrays = args_params(v, key)
            desc.append(sub)
            arrays.update(sub_arrays)
        elif isinstance(v, (bool, int, float, complex, np.generic)):
            a = np.asarray(v)  # the type the compiled code sees (1.5 and float64(1.5) alike)
            desc.append(f"{a.dtype.str}:{a.item()!r}")
        else:
            desc.append(f"{type(v).__name__}:{v!r}")
    return desc, arrays


def _run_params(f, fn, jac_fn, args, kern, method, batched) -> tuple[dict, dict]:
    """Every option and input of an ``odeint`` run, for the run file (compared on resume)."""
    params: dict[str, Any] = {
        "method": method,
        "dt": None if kern["dt"] == 0.0 else float(kern["dt"]),  # None: the solver's own step
        "max_steps": int(kern["max_steps"]),
        "variational": bool(kern["nvar"]),
        "batched": bool(batched),
        "d": int(kern["d"]),
    }
    inputs: dict[str, np.ndarray] = {}
    if fn is None:  # a built-in model
        W, _, A, _, b, act, form = kern["model"]
        params.update(field=type(f).__name__, activation=int(act), form=int(form))
        inputs.update(W=W, A=A, b=b, t_stops=kern["tstops"])
        if type(f).__name__ == "NeuralODE":  # the model's definition, enough to rebuild it
            params.update(activation_name=f.activation, form_name=f.form)
            inputs.update(t_layers=f.t_layers)
    else:
        params.update(field=fn.py_func.__qualname__, field_code=function_id(fn))
        params["jac"] = None if jac_fn is None else jac_fn.py_func.__qualname__
        params["jac_code"] = None if jac_fn is None else function_id(jac_fn)
        params["args"], arrays = args_params(args if isinstance(args, tuple) else (args,))
        inputs.update(arrays)
    return params, inputs


def _odeint_to_file(stream, kern, Z0, tt, hs, batched) -> Solution:
    from .progress import progress_bar
    from .runs import start_run
    from .storage import chunk_rows

    out, resume, overwrite, chunk, params, inputs, progress = stream
    bar = progress_bar(progress, tt.shape[0] - 1, desc="ode", unit="frame")
    B, n = Z0.shape
    d = kern["d"]
    T = tt.shape[0]
    chunk = chunk_rows((B, d), np.float64) if chunk is None else chunk
    params = {**params, "chunk_frames": int(chunk), "frames": int(T), "batch": int(B)}
    run = start_run(
        out,
        kind="ode",
        params=params,
        inputs=inputs,
        series={
            "trajectory": {
                "time": {"units": "1", "long_name": "time (model units)"},
                "value": {
                    "shape": (B, d),
                    "dims": ("batch", "state"),
                    "units": "1",
                    "long_name": "state x(t) of each batch member",
                },
            }
        },
        description="ordinary differential equation dx/dt = f(t, x): frames of the state at "
        "the requested times",
        rows={"trajectory": T},
        checkpoint={"state": Z0, "frame": 0, "h": hs, "stats": np.zeros((B, 3), np.int64)},
        resume=resume,
        overwrite=overwrite,
    )
    with run:
        # the checkpoint holds all a chunk depends on: every chunk starts the kernel afresh
        # from (state, proposed step) at its first frame (the controller's memory of the
        # previous error starts again at 1e-4 in each call, in a resumed run as in this one)
        ck = run.checkpoint
        z = np.array(ck["state"], dtype=np.float64)
        k0 = int(ck["frame"])
        hs = np.array(ck["h"], dtype=np.float64)  # (a copy: the kernel updates it)
        totals = np.array(ck["stats"], dtype=np.int64)
        while k0 < T - 1:
            k1 = min(T - 1, k0 + chunk)
            Y, status, nframes, t_reached, stats = _run(kern, z, tt[k0 : k1 + 1], hs)
            failed = bool((status != _rk.OK).any())
            # frames [0, end) of every trajectory are good; [0, have) are in the file (up to
            # frame k0, or more when a failed run is resumed)
            end = k0 + int(nframes.min()) if failed else k1 + 1
            have = run.rows["trajectory"]
            if end > have:
                run.append("trajectory", time=tt[have:end], value=Y[have - k0 : end - k0, :, :d])
            if failed:
                if end > have:
                    # the good frames, with the checkpoint of the chunk's start: a resume
                    # repeats this chunk and stops with the same error
                    run.commit(**run.checkpoint)
                _raise_on_failure(
                    status, nframes, t_reached, totals + stats, tt[k0:], None, batched,
                    kept=(end, float(tt[end - 1]), run.path),
                )  # fmt: skip
            totals = totals + stats
            z = np.ascontiguousarray(Y[-1])
            run.commit(state=z, frame=k1, h=hs.copy(), stats=totals)
            k0 = k1
            bar.update(k1)
        bar.close()
        st = _stats(totals)
        run.summarize(n_accepted=st["n_accepted"], n_rejected=st["n_rejected"], n_fev=st["n_fev"])
        path = run.path
    return Solution(t=tt, y=None, stats=_stats(totals), status="success", path=path)
