"""Exact gradients of neural-ODE flow maps: the discrete adjoint of the integrator's steps.

For the map ``F(x) = R Φ_T(lift(x))`` computed by ``n`` Runge-Kutta steps, the reverse sweep
(:mod:`nndyn_fast.kernels.adjoint`) gives ``c·∂F/∂θ`` for the weights θ (and the readout), the
input gradient ``(∂F/∂x)^T c`` and ``c·∂F/∂T`` in one pass back through the steps, at a cost
of a few forward passes and a bounded memory, whatever the number of steps ``n``:

- ``checkpoints=None`` (default): every step's stages of a block of rows (the stage inputs
  ``Y_s`` and activations ``σ_s``, and the pre-activations unless σ = tanh) on a tape of
  ``n S block (d + H)`` floats per thread, when that fits ``_TAPE_BYTES`` (32 MiB) per thread and
  ``_TAPE_BYTES_ALL`` (256 MiB) over all threads: each step evaluated once, forward, then reversed
  from the tape. A Dormand-Prince row keeps its accepted steps on its tape in the run that counts
  them, as long as they fit. Otherwise (the block's or the row's steps do not fit) 32 checkpoint
  slots, as below.
- ``checkpoints=k``: ``k`` stored states per row and the stages of one window of steps
  (binomial checkpointing, the steps between recomputed).

Either way the weight gradients are summed per window of steps (``_WINDOW_ROWS`` rows of
stages) as one matrix product each, so the tape and every number of slots give the same bits.

What is differentiated is the discrete map, not the ODE's exact flow:

- fixed-step methods (``euler``, ``rk2``, ``rk4``): the map with the step counts of
  :func:`~nndyn_fast.odeint`'s schedule for ``dt = (T - t_0) / steps`` (each interval between
  layer switches cut into ``ceil(length / dt)`` equal steps); ``∂/∂T`` holds the step counts
  and stretches the steps of the last interval;
- ``dopri5``: the map with the accepted step sizes of an adaptive forward run held fixed
  (the step-size controller is not differentiated); ``∂/∂T`` stretches the last step. This is
  the gradient of the discrete map with those steps, and it tends to the flow's gradient as
  ``rtol`` -> 0 at the order of the method.

The layer grid ``t_layers`` is held fixed in ``∂/∂T``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import as_array, check_int, check_option, check_positive
from .integrate import _SECONDS_PER_DH, _SECONDS_PER_EVAL
from .kernels import activations as _act
from .kernels import adjoint as _ka
from .kernels import rk as _rk
from .neural import AugmentedNeuralODE, NeuralODE
from .threads import for_work

__all__ = ["FlowGrad", "flow_map_vjp", "loss_and_grad", "model_params", "with_params"]

_TABLEAUS = {
    "euler": (_rk.EULER_A, _rk.EULER_B),
    "rk2": (_rk.RK2_A, _rk.RK2_B),
    "rk4": (_rk.RK4_A, _rk.RK4_B),
    "dopri5": (_rk.DOPRI5_A, _rk.DOPRI5_B),
}
_BLOCK = 16  # rows per block of a fixed-step sweep (multiple of the product's 4-row tile)
_MAX_WORKERS = 64  # accumulators: a fixed count, so results do not depend on the threads
_ACC_BYTES = 2.0**28  # at most 256 MiB of per-worker gradient accumulators
_DOPRI5_CAP0 = 256  # recorded steps per row on the first try (doubled as needed)
_SLOTS = 32  # checkpoint slots per row when the tape does not fit (checkpoints=None)
_TAPE_BYTES = 2**25  # at most 32 MiB of tape per thread (every step's stages of a block)
_TAPE_BYTES_ALL = 2**28  # and 256 MiB in all
_WINDOW_ROWS = 1024  # rows (steps x stages x block rows) of a deferred weight product


@dataclass(frozen=True)
class FlowGrad:
    """Gradients of a scalar ``c·F(X)`` (or of a loss) of a neural-ODE flow map.

    Attributes
    ----------
    params : dict of arrays shaped like the model's: ``W`` (L, d, H) (absent for the inner
        form), ``A`` (L, H, d), ``b`` (L, H), and ``readout`` (p, m) for an augmented model.
    X : (B, n) gradient with respect to the inputs, ``(∂F/∂x)^T c`` row by row.
    T : gradient with respect to the end time (a float).
    y : (B, p) the flow map ``F(X)`` (the discrete map that was differentiated).
    n_steps : (B,) steps taken per row.
    n_evals : (B,) steps evaluated per row, forward, recomputed and reversed (for dopri5
        rejected tries included); ``n_evals / n_steps`` is the price of the checkpointing.
    """

    params: dict
    X: np.ndarray
    T: float
    y: np.ndarray
    n_steps: np.ndarray
    n_evals: np.ndarray | None = None


def _base(model: Any) -> NeuralODE:
    if isinstance(model, AugmentedNeuralODE):
        return model.model
    if isinstance(model, NeuralODE):
        return model
    raise TypeError(f"model must be a NeuralODE or AugmentedNeuralODE, got {type(model).__name__}")


def model_params(model: NeuralODE | AugmentedNeuralODE) -> dict:
    """The trainable arrays of ``model`` by name (``W``, ``A``, ``b``[, ``readout``]), the
    structure of :attr:`FlowGrad.params`."""
    base = _base(model)
    out = {} if base.form == "inner" else {"W": base.W}
    out.update(A=base.A, b=base.b)
    if isinstance(model, AugmentedNeuralODE):
        out["readout"] = model.readout
    return out


def with_params(model: NeuralODE | AugmentedNeuralODE, params: dict) -> Any:
    """A copy of ``model`` with the arrays of ``params`` (names as :func:`model_params`)."""
    base = _base(model)
    W = params.get("W", base.W)
    new = NeuralODE(
        None if base.form == "inner" else W,
        params.get("A", base.A),
        params.get("b", base.b),
        base.activation,
        t_layers=base.t_layers,
        form=base.form,
    )
    if isinstance(model, AugmentedNeuralODE):
        return AugmentedNeuralODE(new, model.n_aug, params.get("readout", model.readout))
    return new


def _inputs(model: Any, X: Any, T: Any) -> tuple[np.ndarray, np.ndarray, bool, float, float]:
    base = _base(model)
    X = as_array("X", X, ndim=(1, 2))
    single = X.ndim == 1
    X2 = X.reshape(1, -1) if single else X
    n_in = model.n_in if isinstance(model, AugmentedNeuralODE) else base.dim
    if X2.shape[1] != n_in or X2.shape[0] == 0:
        raise ValueError(f"X must have shape (n,) or (B, n) with n = {n_in}, got {X.shape}")
    if isinstance(model, AugmentedNeuralODE):
        Z0 = model.lift(X2)
    else:
        Z0 = np.ascontiguousarray(X2, dtype=float)
    t0 = float(base.t_layers[0])
    T = base.T if T is None else check_positive("T", T)
    if not T > t0:
        raise ValueError(f"T must be > the start time {t0} of the model, got {T}")
    return X2, Z0, single, t0, float(T)


def _fixed_steps(base: NeuralODE, t0: float, T: float, steps: Any, dt: Any):
    """The fixed-step schedule as pieces: ``(cum, h, layer, ∂h/∂T)``, steps
    ``cum[g] <= k < cum[g + 1]`` of piece g (a few pieces, whatever the number of steps)."""
    if dt is None:
        steps = check_int("steps", 100 if steps is None else steps, minimum=1)
        dt = (T - t0) / steps
    else:
        if steps is not None:
            raise ValueError("give steps or dt, not both")
        dt = check_positive("dt", dt)
    sa, sh, sm, sl, sf = _rk.fixed_schedule(np.array([t0, T]), base._tstops(), dt)
    cum = np.concatenate([[0], np.cumsum(sm)]).astype(np.int64)
    sw = np.zeros_like(sh)
    sw[-1] = 1.0 / sm[-1]  # h = (T - a) / m on the last piece
    return cum, np.ascontiguousarray(sh), np.ascontiguousarray(sl, dtype=np.int64), sw


def _dopri5_steps(base: NeuralODE, Z0: np.ndarray, t0: float, T: float, rtol, atol, max_steps):
    """The accepted steps ``(hs, ls, hw, ns)`` (B, n) of the adaptive forward runs, for
    inspection and tests: the gradient recomputes them from its checkpoints instead."""
    B, d = Z0.shape
    rt, at = _tolerances(rtol, atol, d)
    cap = _DOPRI5_CAP0
    while True:
        hs = np.zeros((B, cap))
        ls = np.zeros((B, cap), np.int64)
        ns = np.zeros(B, np.int64)
        status = np.zeros(B, np.int64)
        ZT = np.empty_like(Z0)
        _ka.dopri5_record_steps(
            base._kernel_model(), Z0, t0, T, base._tstops(), _rk.DOPRI5_A, _rk.DOPRI5_B,
            _rk.DOPRI5_E, rt, at, max_steps, hs, ls, ns, status, ZT,
        )  # fmt: skip
        full = (status == _rk.MAX_STEPS) & (ns >= cap)
        if full.any() and cap < max_steps:
            cap = min(2 * cap, max_steps)
            continue
        break
    _check_status(status, ns, max_steps)
    nmax = int(ns.max())
    hs = np.ascontiguousarray(hs[:, :nmax])
    ls = np.ascontiguousarray(ls[:, :nmax])
    hw = np.zeros_like(hs)
    hw[np.arange(B), ns - 1] = 1.0  # the last step ends at T: h_last = T - t_last
    return hs, ls, hw, ns


def _tolerances(rtol: float, atol: float, d: int) -> tuple[np.ndarray, np.ndarray]:
    rt = np.ascontiguousarray(np.broadcast_to(np.asarray(rtol, float), (d,)))
    at = np.ascontiguousarray(np.broadcast_to(np.asarray(atol, float), (d,)))
    return rt, at


def _check_status(status: np.ndarray, ns: np.ndarray, max_steps: int) -> None:
    bad = np.nonzero(status != _rk.OK)[0]
    if bad.size:
        r = int(bad[0])
        why = {_rk.NONFINITE: "non-finite state", _rk.STEP_UNDERFLOW: "step size underflow",
               _rk.MAX_STEPS: f"more than max_steps = {max_steps} steps"}  # fmt: skip
        raise FloatingPointError(
            f"dopri5 forward run of row {r} failed ({why.get(int(status[r]), 'status')}"
            f" {int(status[r])}) after {int(ns[r])} steps"
        )


def _need(TA: np.ndarray, TB: np.ndarray) -> np.ndarray:
    S = TB.shape[0]
    return np.array([TB[s] != 0.0 or bool(np.any(TA[s + 1 :, s] != 0.0)) for s in range(S)])


def _workers(nblocks: int, base: NeuralODE) -> int:
    per_acc = 8.0 * (base.A.size + base.b.size + base._kernel_model()[0].size)
    return int(max(1, min(nblocks, _MAX_WORKERS, _ACC_BYTES // max(per_acc, 1.0))))


def _tape_step_bytes(S: int, block: int, d: int, H: int, tanh: bool = True) -> int:
    """Bytes of one step on a tape: the stage inputs and activations of ``block`` rows (and
    the pre-activations, unless σ = tanh, whose derivative comes from the activations), with
    the step's size, layer and ``∂h/∂T``."""
    return 8 * (S * block * (d + (1 if tanh else 2) * H) + 3)


def _sweep(model, Z0, C, R, Yt, scale, t0, T, method, steps, dt, rtol, atol, checkpoints,
           max_steps):  # fmt: skip
    """Run the adjoint kernel; returns (grads dict over the base, ZT, dZ0, dT rows, res, ns,
    evaluations per row)."""
    base = _base(model)
    method = check_option("method", method, _TABLEAUS)
    TA, TB = _TABLEAUS[method]
    B, d = Z0.shape
    auto = checkpoints is None
    slots = _SLOTS if auto else check_int("checkpoints", checkpoints, minimum=1)
    kmodel = base._kernel_model()
    L, H = base.b.shape
    S = TB.shape[0]
    tanh = kmodel[5] == _act.TANH
    if method == "dopri5":
        if steps is not None or dt is not None:
            raise ValueError("steps and dt are for fixed-step methods; dopri5 takes rtol/atol")
        rtol = check_positive("rtol", rtol)
        atol = check_positive("atol", atol)
        max_steps = check_int("max_steps", max_steps, minimum=1)
        block = 1
        n_est = 100  # for the thread count only
        slots = min(slots, max_steps)  # no more states than steps
        window = max(1, _WINDOW_ROWS // (S * block))
    else:
        cum, sh, sl, sw = _fixed_steps(base, t0, T, steps, dt)
        block = _BLOCK
        n_est = int(cum[-1])
        slots = min(slots, n_est)  # more than one slot per step is never used
        window = min(max(1, _WINDOW_ROWS // (S * block)), n_est)
    gW = np.zeros(kmodel[0].shape)
    gA = np.zeros(base.A.shape)
    gb = np.zeros(base.b.shape)
    nblocks = -(-B // block)
    nw = _workers(nblocks, base)
    ZT = np.empty_like(Z0)
    dZ0 = np.empty_like(Z0)
    dTr = np.empty(B)
    res = np.empty((B if Yt.shape[0] else 0, R.shape[0]))
    nev = np.zeros(nblocks, np.int64)
    seconds = 3.0 * B * n_est * S * (_SECONDS_PER_DH * d * H * 3 + _SECONDS_PER_EVAL)
    aW = np.zeros((nw, *gW.shape))
    aA = np.zeros((nw, *gA.shape))
    ab = np.zeros((nw, *gb.shape))
    need = _need(TA, TB)
    with for_work(seconds) as nt:
        # per-lane scratch (one lane per thread), allocated here (numpy's allocations are
        # visible to tracemalloc): the checkpoint slots, the tape (every step of a block, or
        # the steps of one window) and the window's adjoints, whatever the number of steps
        nl = max(1, min(nt, nw))
        budget = min(_TAPE_BYTES, _TAPE_BYTES_ALL // nl)  # per lane
        step_bytes = _tape_step_bytes(S, block, d, H, tanh)
        if method == "dopri5":
            tape_cap = min(int(budget // step_bytes), max_steps) if auto else 0
            cap = max(window, tape_cap)
        else:
            tape = auto and n_est * step_bytes <= budget
            cap = n_est if tape else window
            if tape:
                slots = 1  # (unused)
        ckz = np.empty((nl, slots, block, d))
        ckc = np.empty((nl, slots, _ka.NCTL))
        pos = np.empty((nl, slots), np.int64)
        Yf = np.empty((nl, cap * S * block * d))
        Kf = np.empty((nl, S * block * d))
        Pf = np.empty((nl, (1 if tanh else cap) * S * block * H))
        Sf = np.empty((nl, cap * S * block * H))
        th = np.empty((nl, cap))
        tl = np.empty((nl, cap), np.int64)
        tw = np.empty((nl, cap))
        KBf = np.empty((nl, window * S * block * d))
        PBf = np.empty((nl, window * S * block * H))
        lay = np.empty((nl, window), np.int64)
        if method == "dopri5":
            rt, at = _tolerances(rtol, atol, d)
            ns = np.zeros(B, np.int64)
            status = np.zeros(B, np.int64)
            _ka.dopri5_flow_vjp(
                kmodel, Z0, C, R, Yt, float(scale), res, t0, T, base._tstops(), TA, TB,
                _rk.DOPRI5_E, need, rt, at, max_steps, tape_cap, ckz, ckc, pos, Yf, Pf, Sf, Kf,
                th, tl, tw, KBf, PBf, lay, aW, aA, ab, gW, gA, gb, ZT, dZ0, dTr, ns, status,
                nev,
            )  # fmt: skip
            _check_status(status, ns, max_steps)
            nev_rows = nev
        else:
            _ka.rk_flow_vjp(
                kmodel, Z0, C, R, Yt, float(scale), res, cum, sh, sl, sw, TA, TB, need, block,
                tape, ckz, ckc, pos, Yf, Pf, Sf, Kf, th, tl, tw, KBf, PBf, lay, aW, aA, ab, gW,
                gA, gb, ZT, dZ0, dTr, nev,
            )  # fmt: skip
            ns = np.full(B, cum[-1], np.int64)
            nev_rows = np.repeat(nev, block)[:B]
    if not np.all(np.isfinite(ZT)):
        r = int(np.nonzero(~np.all(np.isfinite(ZT), axis=1))[0][0])
        raise FloatingPointError(
            f"the {method} run of row {r} reached a non-finite state before T = {T}"
            " (try a smaller step or a smaller T)"
        )
    grads = {} if base.form == "inner" else {"W": gW}
    grads.update(A=gA, b=gb)
    return grads, ZT, dZ0, dTr, res, ns, nev_rows


def flow_map_vjp(
    model: NeuralODE | AugmentedNeuralODE,
    X: Any,
    T: float | None = None,
    cotangent: Any = None,
    *,
    method: str = "rk4",
    steps: int | None = None,
    dt: float | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    checkpoints: int | None = None,
    max_steps: int = 100_000,
) -> FlowGrad:
    """Vector-Jacobian products of the flow map ``F(X) = R Φ_T(lift(X))``.

    For the cotangent ``c`` (the shape of ``F(X)``: (p,) or (B, p)) returns the gradients of
    ``sum_i c_i·F(x_i)`` with respect to the weights, the inputs and ``T``, exact for the
    discrete map (see the module docstring), from the discrete adjoint of the steps.

    Parameters
    ----------
    model : :class:`NeuralODE` (``F = Φ_T``) or :class:`AugmentedNeuralODE`.
    X : (n,) or (B, n) inputs.
    T : end time (default the end of the model's layer grid); the flow starts at
        ``t_layers[0]``.
    cotangent : (p,) or (B, p), same shape as ``flow_map(model, X, T)``.
    method : ``"rk4"``, ``"rk2"``, ``"euler"`` (fixed steps) or ``"dopri5"`` (adaptive).
    steps, dt : fixed steps: ``dt = (T - t_0) / steps`` (default 100 steps), or ``dt``.
    rtol, atol : dopri5 tolerances.
    checkpoints : None (default): every step's stages of a block of rows on a tape while it fits
        32 MiB per thread and 256 MiB in all (each step evaluated once; 511 RK4 steps at d = H = 64,
        a Dormand-Prince row 4665 accepted steps), else 32 slots. An int: states stored per row (at
        least 1): the memory is that many states plus the stages of a window of steps, whatever the
        number of steps ``n``; each step is then evaluated at most ``r + 1`` times, ``r`` the least
        integer with ``C(checkpoints + r, r) >= n`` (with 32: 2 up to 33 steps, 3 up to 561, 4 up to
        6545, 5 up to 58905). Every choice gives the same bits.
    max_steps : dopri5 step budget per row.

    Returns
    -------
    FlowGrad with ``params`` (as :func:`model_params`), ``X`` (shape of ``X``), ``T``, ``y``.

    Raises
    ------
    ValueError for a cotangent of the wrong shape, non-finite inputs, unknown methods;
    FloatingPointError when the forward run blows up.
    """
    X2, Z0, single, t0, T = _inputs(model, X, T)
    if cotangent is None:
        raise ValueError("cotangent is required: an array with the shape of flow_map(X)")
    aug = isinstance(model, AugmentedNeuralODE)
    p = model.readout.shape[0] if aug else Z0.shape[1]
    want = (p,) if single else (X2.shape[0], p)
    c = as_array("cotangent", cotangent, shape=want)
    c2 = c.reshape(-1, p)
    C = np.ascontiguousarray(c2 @ model.readout) if aug else np.ascontiguousarray(c2)
    R = np.zeros((0, Z0.shape[1]))
    grads, ZT, dZ0, dTr, _, ns, nev = _sweep(model, Z0, C, R, np.zeros((0, 0)), 1.0, t0, T,
                                             method, steps, dt, rtol, atol, checkpoints,
                                             max_steps)  # fmt: skip
    y = ZT
    dX = dZ0
    if aug:
        grads["readout"] = c2.T @ ZT
        y = ZT @ model.readout.T
        dX = dZ0[:, : model.n_in]
    if single:
        y, dX = y[0], dX[0]
    return FlowGrad(grads, np.ascontiguousarray(dX), float(dTr.sum()), y, ns, nev)


def loss_and_grad(
    model: NeuralODE | AugmentedNeuralODE,
    X: Any,
    Y: Any,
    T: float | None = None,
    *,
    method: str = "rk4",
    steps: int | None = None,
    dt: float | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    checkpoints: int | None = None,
    max_steps: int = 100_000,
) -> tuple[float, FlowGrad]:
    """The loss ``ℓ = 1/(2B) sum_i ||F(x_i) - y_i||^2`` and its gradients (one forward and one
    reverse sweep), ``F`` the (readout of the) flow map as in :func:`flow_map_vjp`.

    ``X`` (B, n), ``Y`` (B, p) finite. Returns ``(ℓ, FlowGrad)``; options as in
    :func:`flow_map_vjp`.
    """
    X2, Z0, single, t0, T = _inputs(model, X, T)
    aug = isinstance(model, AugmentedNeuralODE)
    R = model.readout if aug else np.eye(Z0.shape[1])
    p = R.shape[0]
    B = X2.shape[0]
    Yt = as_array("Y", Y, shape=(p,) if single else (B, p)).reshape(B, p)
    Yt = np.ascontiguousarray(Yt)
    R = np.ascontiguousarray(R)
    grads, ZT, dZ0, dTr, res, ns, nev = _sweep(model, Z0, np.zeros((0, 0)), R, Yt, 1.0 / B, t0,
                                               T, method, steps, dt, rtol, atol, checkpoints,
                                               max_steps)  # fmt: skip
    loss = 0.5 * float(np.sum(res * res)) / B
    y = ZT @ R.T
    dX = dZ0
    if aug:
        grads["readout"] = (res.T @ ZT) / B
        dX = dZ0[:, : model.n_in]
    if single:
        y, dX = y[0], dX[0]
    return loss, FlowGrad(grads, np.ascontiguousarray(dX), float(dTr.sum()), y, ns, nev)
