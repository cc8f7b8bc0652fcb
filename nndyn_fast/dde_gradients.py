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

Memory: every node of a row, ``(n + 1)(3 d + 1)`` floats, plus their adjoints (rows are
taken in chunks of at most about 64 MiB); with ``checkpoint=k`` (RK4) only the delay window
at every k-th grid point is kept and each segment is rerun from it on the reverse sweep (by
the same kernel, so the same nodes), the node adjoints of the window carried from segment to
segment: memory ``O(n w / k + k + w)`` nodes for a window of ``w`` nodes.
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
    "dde_forward",
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


def _options(model, X, T, delays, method, dt, rtol, atol, hmax, max_steps, checkpoint=None):
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
    if checkpoint is not None:
        if method != "rk4":
            raise ValueError("checkpoint is for method 'rk4' (dopri5 keeps every node)")
        opts["checkpoint"] = check_int("checkpoint", checkpoint, minimum=1)
    return X2, single, T, taus, method, opts


class _Solver:
    """ddeint's kernel for the rows of ``X`` (constant histories), advanced on demand."""

    def __init__(self, model, X, T, taus, method, opts):
        B, d = X.shape
        m = taus.size
        self.B, self.d, self.T, self.taus, self.method, self.opts = B, d, T, taus, method, opts
        hist = _dl._history(X, 0.0, float(taus.max()), None)
        code, ip, P, jumps = _dl._pack_model(model, d, m)
        self.disc, self.djump = _dl._disc_points(0.0, T, taus, jumps, _dl._DISC_LEVEL[method])
        self.fld = (code, ip, P, hist.kind, 0.0, taus)
        self.hists = (hist.hc, hist.hst, hist.hsy, hist.hsdy, hist.hp)
        self.nP = P.size
        self.kern = _kdde.dde_advance if B > 1 else _kdde.dde_advance_serial
        self.stops = model._t_layers[1 : model.n_layers]

    def fresh(self, cap):
        B, d = self.B, self.d
        ring = (np.zeros((B, cap)), np.zeros((B, cap, d)), np.zeros((B, cap, d)),
                np.zeros((B, cap, d)))  # fmt: skip
        return ring, np.zeros((B, 8), np.int64), np.zeros((B, 2))

    def advance(self, ring, ist, fst, t_end):
        o = self.opts
        budget = _dl._MAX_STEPS if self.method == "rk4" else o["max_steps"]
        ctl = (_dl.METHODS[self.method], float(o["dt"]), o["rtol"], o["atol"], o["hmax"],
               float(t_end), self.disc, self.djump, budget)  # fmt: skip
        tout = np.array([float(t_end)])
        yout = np.full((1, self.B, self.d), np.nan)
        secs = _dl._serial_seconds(self.method, self.B, self.d, self.taus.size, self.nP,
                                   np.array([0.0, float(t_end)]), float(o["dt"]))  # fmt: skip
        with for_work(secs):
            call(self.kern, None, (), None, self.fld, self.hists, ctl, tout, yout, ring, ist, fst)

    def layers(self, tn):
        """Per slot: the layer of the step from it, of the right derivative at it, and whether
        it is a layer switch (the right derivative recomputed there)."""
        tiny = 1e-9  # the solver's offset into the layer after a node (t0 = 0)
        mids = tn[:, :-1] + 0.5 * (tn[:, 1:] - tn[:, :-1])
        ls = np.searchsorted(self.stops, mids, side="right").astype(np.int64)
        lj = np.searchsorted(self.stops, tn + tiny, side="right").astype(np.int64)
        sw = self.disc[self.djump == 1]
        jf = np.isin(tn, sw) if sw.size else np.zeros(tn.shape, np.bool_)
        jf[:, 0] = False
        return np.ascontiguousarray(ls), lj, np.ascontiguousarray(jf)


def _check_steps(tn, ns, taus):
    hs = np.diff(tn, axis=1)
    valid = np.arange(tn.shape[1] - 1)[None, :] < ns[:, None]
    longest = float(np.max(np.where(valid, hs, 0.0)))
    if longest > float(taus.min()) * (1.0 + 1e-12):
        raise ValueError(
            f"a step of length {longest} exceeds the shortest delay {float(taus.min())}; "
            "the adjoint differentiates steps whose delayed times lie in the past (lower hmax)"
        )


def _record(model, X, T, taus, method, opts, cap):
    """Run ddeint's kernel on the rows of ``X`` keeping every node; returns
    ``(tn, Y, Fl, Fr, ns, ls, lj, jf)`` (the ring never wraps: it holds every node from
    slot 0)."""
    sv = _Solver(model, X, T, taus, method, opts)
    while True:
        ring, ist, fst = sv.fresh(cap)
        sv.advance(ring, ist, fst, T)
        nodes = int(ist[:, _kdde.I_ACC].max()) + 1
        full = np.any(ist[:, _kdde.I_STATUS] == _kdde.RING_FULL)
        if nodes >= cap or full:
            cap = 2 * max(cap, nodes)
            continue
        break
    _dl._raise_on_status(ist, list(ring))
    ns = ist[:, _kdde.I_ACC].copy()
    tn, Y, Fl, Fr = ring
    _check_steps(tn, ns, taus)
    return (tn, Y, Fl, Fr, ns, *sv.layers(tn))


def _tables(method):
    if method == "rk4":
        return _kdde._RK4F_A, _kdde._RK4F_C
    return _kdde.DOPRI5_A, _kdde.DOPRI5_C


class _Reverse:
    """The reverse kernel's fixed arguments and its gradient accumulators."""

    def __init__(self, model, method, taus, g):
        W, A, B, b = model.layer_weights()
        self.kmodel = (W, A, B, b, int(ACTIVATIONS[model.activation]))
        self.TA, self.TC = _tables(method)
        self.taus, self.g = taus, g
        self.per = 8.0 * (W.size + A.size + B.size + b.size)
        self.flops = 3 * W.shape[1] * W.shape[2] * (2 + B.shape[1]) * self.TA.shape[0]

    def __call__(self, Xc, C, nodes, jlo, jhi, lay, first, final, adj, x0b, dXc, dTc):
        Bc = Xc.shape[0]
        nw = int(max(1, min(Bc, _MAX_WORKERS, 2.0**28 // max(self.per, 1.0))))
        acc = [np.zeros((nw, *v.shape)) for v in self.g.values()]
        # serial seconds: about 2e-9 per multiply-add, stages recomputed and reversed
        seconds = 2e-9 * float(np.sum(jhi - jlo)) * self.flops
        g = self.g
        with for_work(seconds):
            _kd.dde_rk_vjp(self.kmodel, Xc, C, self.taus, 0.0, self.TA, self.TC, *nodes, jlo,
                           jhi, *lay, first, final, *adj, x0b, *acc, g["W"], g["A"], g["B"],
                           g["b"], dXc, dTc)  # fmt: skip


def _segment_ends(sv, dt, T, k):
    """Ends of the recomputed segments: every k-th grid point (the next one when a
    discontinuity sits there, so each end is an ordinary node of the run), then T."""
    ends = []
    K = k
    tol = 1e-9 * dt
    while True:
        e = 0.0 + K * dt  # the solver's grid point t0 + K dt
        if e >= T - tol:
            break
        if sv.disc.size and np.min(np.abs(sv.disc - e)) <= 2 * tol:
            K += 1
            continue
        ends.append(e)
        K += k
    return ends + [T]


def _segments(model, Xc, T, taus, opts, k, rev, C_of, rv):
    """RK4 with bounded memory: a forward run keeping the delay window at every k-th grid
    point, then per segment (last first) a rerun from its window and the reverse sweep
    through it. Returns (end states, steps, dX, dT)."""
    sv = _Solver(model, Xc, T, taus, "rk4", opts)
    Bc, d = Xc.shape
    dt = opts["dt"]
    ends = _segment_ends(sv, dt, T, k)
    cap = int(math.ceil(float(taus.max()) / dt)) + k + sv.disc.size + 8
    ring, ist, fst = sv.fresh(cap)
    ckpts = []
    for e in ends:
        ist_c = ist.copy()
        n0 = int(ist_c[0, _kdde.I_COUNT])
        ckpts.append((_dl._grow_ring(list(ring), ist_c, n0) if n0 else None, ist_c, fst.copy()))
        sv.advance(ring, ist, fst, e)
        if np.any(ist[:, _kdde.I_STATUS] == _kdde.RING_FULL):  # not expected: room for k
            raise RuntimeError("dde_flow_vjp: the segment ring is full")
        _dl._raise_on_status(ist, list(ring))
    ns = ist[:, _kdde.I_ACC].copy()
    last = (ist[:, _kdde.I_HEAD] + ist[:, _kdde.I_COUNT] - 1) % cap
    ZT = ring[1][np.arange(Bc), last].copy()
    dX, dT = np.zeros_like(Xc), np.zeros(Bc)
    if not rev:
        return ZT, ns, dX, dT
    C = C_of(ZT)
    x0b = np.zeros_like(Xc)
    carry = None
    for c in range(len(ends) - 1, -1, -1):
        ck, ist_c, fst_c = ckpts[c]
        ist_r, fst_r = ist_c.copy(), fst_c.copy()
        ring_r = sv.fresh(cap)[0] if ck is None else tuple(_dl._grow_ring(ck, ist_r, cap))
        acc0, cnt0 = int(ist_r[0, _kdde.I_ACC]), int(ist_r[0, _kdde.I_COUNT])
        sv.advance(ring_r, ist_r, fst_r, ends[c])
        new = int(ist_r[0, _kdde.I_ACC]) - acc0
        base, jlo = (0, 0) if cnt0 == 0 else (acc0 + 1 - cnt0, cnt0 - 1)
        adj = tuple(np.zeros((Bc, cap, d)) for _ in range(3))
        if carry is not None:  # node adjoints of the next segment's window, already summed
            old, obase, ojlo = carry
            off = obase - base
            for a, o in zip(adj, old, strict=True):
                a[:, off : off + ojlo + 1] = o[:, : ojlo + 1]
        jl = np.full(Bc, jlo, np.int64)
        jh = np.full(Bc, jlo + new, np.int64)
        _check_steps(ring_r[0], jh, taus)
        rv(Xc, C, ring_r, jl, jh, sv.layers(ring_r[0]), c == len(ends) - 1, c == 0, adj, x0b,
           dX, dT)  # fmt: skip
        carry = (adj, base, jlo)
    return ZT, ns, dX, dT


def _run(model, X, T, taus, method, opts, cotangent=None, Y=None, checkpoint=None):
    """Forward (and, with ``cotangent`` or targets ``Y``, reverse) over chunks of rows:
    (grads, end states, dX, dT per row, steps per row, residuals or None)."""
    W, A, B, b = model.layer_weights()
    d = W.shape[1]
    Bn = X.shape[0]
    if method == "rk4":
        cap = int(math.ceil(T / opts["dt"])) + 4 * (B.shape[1] + model.n_layers) + 8
    else:
        cap = _CAP0
    g = {"W": np.zeros_like(W), "A": np.zeros_like(A), "B": np.zeros_like(B), "b": np.zeros_like(b)}
    ZT, dX, dT = np.empty_like(X), np.zeros_like(X), np.zeros(Bn)
    ns = np.zeros(Bn, np.int64)
    res = None if Y is None else np.empty_like(X)
    rev = cotangent is not None or Y is not None
    if checkpoint is not None:
        cap = int(math.ceil(float(taus.max()) / opts["dt"])) + checkpoint + 8
    chunk = int(max(1, min(Bn, _CHUNK_BYTES // (8.0 * cap * (6 * d + 1)))))
    rv = _Reverse(model, method, taus, g)
    for lo in range(0, Bn, chunk):
        sl = slice(lo, lo + chunk)
        Xc = X[sl]
        Bc = Xc.shape[0]

        def C_of(Z, sl=sl):
            if Y is not None:
                res[sl] = Z - Y[sl]
                return np.ascontiguousarray(res[sl] / Bn)
            return np.ascontiguousarray(cotangent[sl])

        if checkpoint is not None:
            ZT[sl], ns[sl], dX[sl], dT[sl] = _segments(model, Xc, T, taus, opts, checkpoint,
                                                       rev, C_of, rv)  # fmt: skip
            continue
        tn, Yn, Fl, Fr, nc, ls, lj, jf = _record(model, Xc, T, taus, method, opts, cap)
        cap = max(cap, tn.shape[1])
        ZT[sl] = Yn[np.arange(Bc), nc]
        ns[sl] = nc
        if not rev:
            continue
        C = C_of(ZT[sl])
        adj = tuple(np.zeros((Bc, tn.shape[1], d)) for _ in range(3))
        dXc, dTc = np.empty_like(Xc), np.empty(Bc)
        rv(Xc, C, (tn, Yn, Fl, Fr), np.zeros(Bc, np.int64), nc, (ls, lj, jf), True, True, adj,
           np.zeros_like(Xc), dXc, dTc)  # fmt: skip
        dX[sl] = dXc
        dT[sl] = dTc
    if not np.all(np.isfinite(ZT)):
        raise FloatingPointError("the method of steps reached a non-finite state before T")
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
    checkpoint: int | None = None,
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
    checkpoint : rk4 only: keep only the delay window at every ``checkpoint``-th grid point
        and rerun each segment from it on the reverse sweep (one more forward run), so
        memory is ``(n / checkpoint) w + checkpoint + w`` nodes per row (``w`` those in a
        delay window) instead of ``n``; ``checkpoint ~ sqrt(n w)`` makes it ``O(sqrt(n w))``.
        Default None: every node kept. The same gradient up to the order of the sums.

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
                                                 hmax, max_steps, checkpoint)  # fmt: skip
    if cotangent is None:
        raise ValueError("cotangent is required: an array with the shape of X")
    c = as_array("cotangent", cotangent, shape=X2.shape[1:] if single else X2.shape)
    C = np.ascontiguousarray(c.reshape(X2.shape))
    g, ZT, dX, dT, ns, _ = _run(model, X2, T, taus, method, opts, cotangent=C,
                                checkpoint=opts.get("checkpoint"))  # fmt: skip
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
    checkpoint: int | None = None,
) -> tuple[float, DDEGrad]:
    """``ℓ = 1/(2B) sum_i ||x_i(T) - y_i||^2`` and its gradients (one forward run and one
    reverse sweep), ``x_i(T)`` as in :func:`dde_flow_vjp`; ``X``, ``Y`` (B, d) finite.
    Returns ``(ℓ, DDEGrad)``; options as in :func:`dde_flow_vjp`."""
    X2, single, T, taus, method, opts = _options(model, X, T, delays, method, dt, rtol, atol,
                                                 hmax, max_steps, checkpoint)  # fmt: skip
    Yt = as_array("Y", Y, shape=X2.shape[1:] if single else X2.shape).reshape(X2.shape)
    g, ZT, dX, dT, ns, res = _run(model, X2, T, taus, method, opts, Y=np.ascontiguousarray(Yt),
                                  checkpoint=opts.get("checkpoint"))  # fmt: skip
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
