"""Exact gradients of neural-DDE time-T maps: the discrete adjoint of the method of steps.

For ``x' = W_l σ(A_l x + sum_k B_lk x(t - tau_k) + b_l)`` with the constant history ``x0`` (the
input) on ``t <= 0`` and the output ``x(T)``, :func:`dde_flow_vjp` gives ``c·∂x(T)/∂θ`` for the
weights, ``(∂x(T)/∂x0)^T c`` (through the start and the history) and ``c·∂x(T)/∂T``, from the
reverse sweep of :mod:`nndyn_fast.kernels.dde_adjoint`.

The map differentiated is that of ``ddeint(model, x0, [0, T], delays=delays, method=...)``
itself: the forward run is :func:`~nndyn_fast.ddeint`'s kernel, whose accepted nodes are kept,
so the steps, the steps split at the propagated discontinuities and layer switches, and the
cubic Hermite interpolants that give the delayed values are the solver's (their dependence on
the nodes is part of the gradient). Delays need not be multiples of ``dt``, nor T.

- ``rk4``: fixed steps ``dt`` (at most the shortest delay). Near a T off the step grid the
  map is smooth in T (a last, shorter step), and ``∂/∂T`` is its derivative; at a T on the
  grid it is the derivative from the left (the last step stretched).
- ``dopri5``: the accepted steps of the adaptive run held fixed (the step-size controller is
  not differentiated, as for neural ODEs in :mod:`nndyn_fast.gradients`); ``∂/∂T`` stretches
  the last step. It tends to the gradient of the adaptive map as ``rtol`` -> 0. Steps are
  limited to ``hmax`` (default ``min(delays) / 1.05``, since a step landing on a
  discontinuity may exceed ``hmax`` by 5 %), so no delayed time falls inside a step.

Memory: every node of a row, ``(n + 1)(3 d + 1)`` floats (rows are taken in chunks of at most
about 64 MiB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import delay as _dl
from ._first_class import call
from ._validate import as_array, check_int, check_option, check_positive, check_steps
from .delay import NeuralDDE
from .kernels import dde as _kdde
from .kernels import dde_adjoint as _kd
from .kernels.activations import ACTIVATIONS
from .threads import for_work

__all__ = [
    "DDEGrad",
    "dde_flow_vjp",
    "dde_loss_and_grad",
    "dde_model_params",
    "dde_with_params",
]

_MAX_WORKERS = 64
_CHUNK_BYTES = 2.0**26  # recorded nodes per chunk of rows
_CAP0 = 256  # dopri5: nodes per row on the first try (doubled as needed)
_METHODS = ("rk4", "dopri5")
_HMAX_MARGIN = 1.05  # a step landing on a discontinuity may be up to 5 % longer than hmax


@dataclass(frozen=True)
class DDEGrad:
    """Gradients of ``sum_i c_i·x_i(T)`` (or of a loss) of a neural-DDE time-T map.

    Attributes
    ----------
    params : ``W`` (L, d, H), ``A`` (L, H, d), ``B`` (L, m, H, d), ``b`` (L, H).
    X : gradient with respect to the inputs (the constant histories), the shape of ``X``.
    T : gradient with respect to the end time (a float).
    y : the end states ``x(T)``, the shape of ``X``.
    n_steps : (B,) accepted steps per row.
    """

    params: dict
    X: np.ndarray
    T: float
    y: np.ndarray
    n_steps: np.ndarray


def dde_model_params(model: NeuralDDE) -> dict:
    """The trainable arrays of a NeuralDDE by name, stacked by layer: ``W`` (L, d, H), ``A``
    (L, H, d), ``B`` (L, m, H, d), ``b`` (L, H) (the structure of :attr:`DDEGrad.params`)."""
    W, A, B, b = model.layer_weights()
    return {"W": W, "A": A, "B": B, "b": b}


def dde_with_params(model: NeuralDDE, params: dict) -> NeuralDDE:
    """A copy of ``model`` with the arrays of ``params`` (names as :func:`dde_model_params`),
    its activation and layer grid kept."""
    cur = dde_model_params(model)
    new = {k: params.get(k, v) for k, v in cur.items()}
    return NeuralDDE(new["W"], new["A"], new["B"], new["b"], model.activation,
                     t_layers=model._t_layers, T=model.T)  # fmt: skip


def _options(model, X, T, delays, method, dt, rtol, atol, hmax, max_steps):
    if not isinstance(model, NeuralDDE):
        raise TypeError(f"model must be a NeuralDDE, got {type(model).__name__}")
    X = as_array("X", X, ndim=(1, 2))
    single = X.ndim == 1
    X2 = np.ascontiguousarray(X.reshape(1, -1) if single else X)
    d = model.dim
    if X2.shape[1] != d or X2.shape[0] == 0:
        raise ValueError(f"X must have shape ({d},) or (B, {d}), got {X.shape}")
    T = float(model._t_layers[-1]) if T is None else check_positive("T", T)
    taus = _dl._delays(delays)
    if taus.size != model.n_delays:
        raise ValueError(f"delays must hold the model's {model.n_delays} delay(s), got {taus.size}")
    method = check_option("method", method, _METHODS)
    taumin = float(taus.min())
    opts = {"rtol": check_positive("rtol", rtol), "atol": check_positive("atol", atol)}
    if method == "rk4":
        if dt is None:
            raise ValueError("dt must be given for method 'rk4'")
        dt = check_positive("dt", dt)
        if dt > taumin:
            raise ValueError(
                f"dt = {dt} must be at most the shortest delay {taumin}: the adjoint "
                "differentiates steps whose delayed times lie in the past"
            )
        check_steps("T / dt", T / dt)
        opts.update(dt=dt, hmax=T, max_steps=0)
    else:
        if dt is not None:
            raise ValueError("dt is for method 'rk4'; dopri5 takes rtol, atol and hmax")
        if hmax is None:
            hmax = taumin / _HMAX_MARGIN
        hmax = check_positive("hmax", hmax)
        if _HMAX_MARGIN * hmax > taumin * (1.0 + 1e-12):
            raise ValueError(
                f"hmax = {hmax} must be at most min(delays) / {_HMAX_MARGIN} = "
                f"{taumin / _HMAX_MARGIN}: the adjoint differentiates steps whose delayed "
                "times lie in the past"
            )
        opts.update(dt=0.0, hmax=hmax, max_steps=check_int("max_steps", max_steps, minimum=1))
    return X2, single, T, taus, method, opts


def _record(model, X, T, taus, method, opts, cap):
    """Run ddeint's kernel on the rows of ``X`` keeping every node; returns
    ``(tn, Y, Fl, Fr, ns)`` (the ring never wraps: it holds every node from slot 0)."""
    B, d = X.shape
    m = taus.size
    hist = _dl._history(X, 0.0, float(taus.max()), None)
    code, ip, P, jumps = _dl._pack_model(model, d, m)
    disc, djump = _dl._disc_points(0.0, T, taus, jumps, _dl._DISC_LEVEL[method])
    fld = (code, ip, P, hist.kind, 0.0, taus)
    hists = (hist.hc, hist.hst, hist.hsy, hist.hsdy, hist.hp)
    mcode = _dl.METHODS[method]
    budget = _dl._MAX_STEPS if method == "rk4" else opts["max_steps"]
    ctl = (mcode, float(opts["dt"]), opts["rtol"], opts["atol"], opts["hmax"], T, disc, djump,
           budget)  # fmt: skip
    tout = np.array([0.0, T])
    kern = _kdde.dde_advance if B > 1 else _kdde.dde_advance_serial
    while True:
        ring = (np.zeros((B, cap)), np.zeros((B, cap, d)), np.zeros((B, cap, d)),
                np.zeros((B, cap, d)))  # fmt: skip
        ist = np.zeros((B, 8), np.int64)
        fst = np.zeros((B, 2))
        yout = np.full((2, B, d), np.nan)
        secs = _dl._serial_seconds(method, B, d, m, P.size, tout, float(opts["dt"]))
        with for_work(secs):
            call(kern, None, (), None, fld, hists, ctl, tout, yout, ring, ist, fst)
        nodes = int(ist[:, _kdde.I_ACC].max()) + 1
        full = np.any(ist[:, _kdde.I_STATUS] == _kdde.RING_FULL)
        if nodes >= cap or full:
            cap = 2 * max(cap, nodes)
            continue
        break
    _dl._raise_on_status(ist, list(ring))
    ns = ist[:, _kdde.I_ACC].copy()
    tn, Y, Fl, Fr = ring
    tl = model._t_layers
    stops = tl[1 : model.n_layers]
    tiny = 1e-9
    mids = tn[:, :-1] + 0.5 * (tn[:, 1:] - tn[:, :-1])
    ls = np.searchsorted(stops, mids, side="right").astype(np.int64)
    lj = np.searchsorted(stops, tn + tiny, side="right").astype(np.int64)
    jf = np.isin(tn, disc[djump == 1]) if disc.size else np.zeros(tn.shape, np.bool_)
    jf[:, 0] = False
    hs = np.diff(tn, axis=1)
    valid = np.arange(cap - 1)[None, :] < ns[:, None]
    longest = float(np.max(np.where(valid, hs, 0.0)))
    if longest > float(taus.min()) * (1.0 + 1e-12):
        raise ValueError(
            f"a step of length {longest} exceeds the shortest delay {float(taus.min())}; "
            "the adjoint differentiates steps whose delayed times lie in the past (lower hmax)"
        )
    return tn, Y, Fl, Fr, ns, np.ascontiguousarray(ls), lj, np.ascontiguousarray(jf)


def _tables(method):
    if method == "rk4":
        return _kdde._RK4F_A, _kdde._RK4F_C
    return _kdde.DOPRI5_A, _kdde.DOPRI5_C


def _run(model, X, T, taus, method, opts, cotangent=None, Y=None):
    """Forward (and, with ``cotangent`` or targets ``Y``, reverse) over chunks of rows:
    (grads, end states, dX, dT per row, steps per row, residuals or None)."""
    W, A, B, b = model.layer_weights()
    L, d, H = W.shape
    m = B.shape[1]
    Bn = X.shape[0]
    kmodel = (W, A, B, b, int(ACTIVATIONS[model.activation]))
    TA, TC = _tables(method)
    if method == "rk4":
        cap = int(math.ceil(T / opts["dt"])) + 4 * (m + model.n_layers) + 8
    else:
        cap = _CAP0
    g = {"W": np.zeros_like(W), "A": np.zeros_like(A), "B": np.zeros_like(B), "b": np.zeros_like(b)}
    ZT, dX, dT = np.empty_like(X), np.zeros_like(X), np.zeros(Bn)
    ns = np.zeros(Bn, np.int64)
    res = None if Y is None else np.empty_like(X)
    rev = cotangent is not None or Y is not None
    chunk = int(max(1, min(Bn, _CHUNK_BYTES // (8.0 * cap * (3 * d + 1)))))
    per = 8.0 * (W.size + A.size + B.size + b.size)
    for lo in range(0, Bn, chunk):
        Xc = X[lo : lo + chunk]
        tn, Yn, Fl, Fr, nc, ls, lj, jf = _record(model, Xc, T, taus, method, opts, cap)
        cap = max(cap, tn.shape[1])
        rows = np.arange(Xc.shape[0])
        ZT[lo : lo + chunk] = Yn[rows, nc]
        ns[lo : lo + chunk] = nc
        if not np.all(np.isfinite(ZT[lo : lo + chunk])):
            raise FloatingPointError("the method of steps reached a non-finite state before T")
        if not rev:
            continue
        if Y is not None:
            r = ZT[lo : lo + chunk] - Y[lo : lo + chunk]
            res[lo : lo + chunk] = r
            C = np.ascontiguousarray(r / Bn)
        else:
            C = np.ascontiguousarray(cotangent[lo : lo + chunk])
        Bc = Xc.shape[0]
        nw = int(max(1, min(Bc, _MAX_WORKERS, 2.0**28 // max(per, 1.0))))
        aW, aA = np.zeros((nw, *W.shape)), np.zeros((nw, *A.shape))
        aB, ab = np.zeros((nw, *B.shape)), np.zeros((nw, *b.shape))
        dXc, dTc = np.empty_like(Xc), np.empty(Bc)
        # serial seconds: about 2e-9 per multiply-add, stages recomputed and reversed
        seconds = 2e-9 * float(nc.sum()) * TA.shape[0] * 3 * d * H * (2 + m)
        with for_work(seconds):
            _kd.dde_rk_vjp(kmodel, Xc, C, taus, 0.0, TA, TC, tn, Yn, Fl, Fr, nc, ls, lj, jf,
                           aW, aA, aB, ab, g["W"], g["A"], g["B"], g["b"], dXc,
                           dTc)  # fmt: skip
        dX[lo : lo + chunk] = dXc
        dT[lo : lo + chunk] = dTc
    return g, ZT, dX, dT, ns, res


def dde_flow_vjp(
    model: NeuralDDE,
    X: Any,
    T: float | None = None,
    cotangent: Any = None,
    *,
    delays: Any,
    method: str = "rk4",
    dt: float | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    hmax: float | None = None,
    max_steps: int = 100_000,
) -> DDEGrad:
    """Vector-Jacobian products of the time-T map ``x0 -> x(T)`` of a :class:`NeuralDDE`.

    ``x(T)`` is that of ``ddeint(model, x0, [0, T], delays=delays, method=method, dt=dt,
    rtol=rtol, atol=atol, hmax=hmax)``: the constant history ``x(s) = x0`` for ``s <= 0``.
    For the cotangent ``c`` returns the gradients of ``sum_i c_i·x_i(T)`` with respect to the
    weights, the inputs ``x0`` (through the start and the history) and ``T`` (see the module
    docstring for what is held fixed).

    Parameters
    ----------
    model : NeuralDDE with m delays.
    X : (d,) or (B, d) constant histories (the inputs).
    T : output time (default the end of the model's layer grid).
    cotangent : the shape of ``X``.
    delays : the m delays (> 0).
    method : ``"rk4"`` (fixed step ``dt``) or ``"dopri5"`` (adaptive, ``rtol``/``atol``).
    dt : the RK4 step, at most ``min(delays)``.
    rtol, atol, hmax, max_steps : dopri5's tolerances, largest step (default and at most
        ``min(delays) / 1.05``) and step budget per row.

    Returns
    -------
    DDEGrad

    Raises
    ------
    ValueError for a cotangent or X of the wrong shape, non-finite inputs, delays not matching
    the model, an unknown method, a step longer than the shortest delay; NonFiniteStateError
    when the forward run blows up.
    """
    X2, single, T, taus, method, opts = _options(model, X, T, delays, method, dt, rtol, atol,
                                                 hmax, max_steps)  # fmt: skip
    if cotangent is None:
        raise ValueError("cotangent is required: an array with the shape of X")
    c = as_array("cotangent", cotangent, shape=X2.shape[1:] if single else X2.shape)
    C = np.ascontiguousarray(c.reshape(X2.shape))
    g, ZT, dX, dT, ns, _ = _run(model, X2, T, taus, method, opts, cotangent=C)
    if single:
        ZT, dX = ZT[0], dX[0]
    return DDEGrad(g, dX, float(dT.sum()), ZT, ns)


def dde_loss_and_grad(
    model: NeuralDDE,
    X: Any,
    Y: Any,
    T: float | None = None,
    *,
    delays: Any,
    method: str = "rk4",
    dt: float | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    hmax: float | None = None,
    max_steps: int = 100_000,
) -> tuple[float, DDEGrad]:
    """``ℓ = 1/(2B) sum_i ||x_i(T) - y_i||^2`` and its gradients (one forward run and one
    reverse sweep), ``x_i(T)`` as in :func:`dde_flow_vjp`; ``X``, ``Y`` (B, d) finite.
    Returns ``(ℓ, DDEGrad)``; options as in :func:`dde_flow_vjp`."""
    X2, single, T, taus, method, opts = _options(model, X, T, delays, method, dt, rtol, atol,
                                                 hmax, max_steps)  # fmt: skip
    Yt = as_array("Y", Y, shape=X2.shape[1:] if single else X2.shape).reshape(X2.shape)
    g, ZT, dX, dT, ns, res = _run(model, X2, T, taus, method, opts, Y=np.ascontiguousarray(Yt))
    loss = 0.5 * float(np.sum(res * res)) / X2.shape[0]
    if single:
        ZT, dX = ZT[0], dX[0]
    return loss, DDEGrad(g, dX, float(dT.sum()), ZT, ns)


def dde_forward(
    model: NeuralDDE, X: Any, T: float | None = None, *, delays: Any, **options: Any
) -> np.ndarray:
    """The end states ``x(T)`` (the shape of ``X``) of the map :func:`dde_flow_vjp`
    differentiates (the forward run alone); options as there."""
    X2, single, T, taus, method, opts = _options(
        model, X, T, delays, options.pop("method", "rk4"), options.pop("dt", None),
        options.pop("rtol", 1e-8), options.pop("atol", 1e-10), options.pop("hmax", None),
        options.pop("max_steps", 100_000),
    )  # fmt: skip
    if options:
        raise TypeError(f"unknown options {sorted(options)}")
    ZT = _run(model, X2, T, taus, method, opts)[1]
    return ZT[0] if single else ZT
