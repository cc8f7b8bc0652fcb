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

Memory is bounded by default: binomial checkpointing (Griewank's revolve schedule,
:func:`nndyn_fast.kernels.adjoint.revolve_split`) over segments of ``segment`` attempted steps
(default 64). A checkpoint is what the solver needs to continue bitwise: each row's delay
window (the nodes within ``max(delays)`` before it), its counters (grid index, pointer into
the discontinuity list, accepted steps) and its step-size controller (proposed step, PI
memory, whether the last attempt was rejected). At most ``checkpoints`` (default 16) are
kept; the reverse sweep reruns each segment from one (the same kernel, stopped by its step
budget, so the same nodes) and carries the node adjoints of its window to the segment before.
Memory is ``s w + 2 (w + q)`` nodes per row (``s`` checkpoints of ``w`` window nodes, one
segment of ``q`` steps and its adjoints) whatever the number of steps ``n``; each segment is
run at most ``r + 1`` times, ``r`` the least integer with ``C(s + r, r) >= n / q``. Runs that
fit in the bound are recorded whole in one forward run (RK4: ``n + 2 <= s w / 2 + w + q``;
dopri5: a first run into ``8 s + 2 q`` nodes, kept when it fits, else it has counted the
steps for the schedule). The end states and the gradients with respect to the inputs and
T are bitwise those of keeping every node (``checkpoints="all"``: ``(n + 1)(3 d + 1)`` floats
per row and their adjoints, one forward run by the row-by-row kernel; rows are taken in
chunks of at most about 64 MiB), and so are the weight gradients while each row (dopri5) or
block of 8 rows (RK4) of a chunk has an accumulator of its own (up to 64 of them, so up to
64 or 512 rows); beyond, the sums over rows go in another order (relative differences
~1e-14). RK4 rows
share their steps: the forward runs go in lockstep over blocks of rows
(:func:`~nndyn_fast.kernels.dde_adjoint.dde_rk4_lockstep_resume`, bitwise the row-by-row
nodes) and the reverse sweep over blocks of 8 rows with blocked products
(:func:`~nndyn_fast.kernels.dde_adjoint.dde_rk4_vjp_block`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import delay as _dl
from ._validate import as_array, check_int, check_option, check_positive, check_steps
from .delay import NeuralDDE
from .kernels import dde as _kdde
from .kernels import dde_adjoint as _kd
from .kernels.activations import ACTIVATIONS
from .kernels.adjoint import revolve_split
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
_SLOTS = 16  # checkpoints (delay windows) kept per chunk of rows by default
_SEGMENT = 64  # attempted steps per recomputed segment by default
_BLOCK = 8  # RK4 rows per block of the reverse sweep
_LOCK_BLOCK = 64  # RK4 rows per block of the lockstep forward runs
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


def _options(model, X, T, delays, method, dt, rtol, atol, hmax, max_steps, checkpoints=_SLOTS,
             segment=None, checkpoint=None):  # fmt: skip
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
        warnings.warn(
            "checkpoint=k is deprecated: use segment=k (steps per recomputed segment) and "
            "checkpoints=s (delay windows kept); it now means segment=k",
            DeprecationWarning,
            stacklevel=3,
        )
        if segment is None:
            segment = checkpoint
    if checkpoints is None:
        checkpoints = _SLOTS
    elif isinstance(checkpoints, str):
        if checkpoints != "all":
            raise ValueError(
                f"checkpoints must be a number of delay windows (>= 1), None (the default, "
                f"{_SLOTS}) or 'all' (keep every node), got {checkpoints!r}"
            )
        checkpoints = None  # every node kept
    else:
        checkpoints = check_int("checkpoints", checkpoints, minimum=1)
    opts["checkpoints"] = checkpoints
    opts["segment"] = _SEGMENT if segment is None else check_int("segment", segment, minimum=1)
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
        # RK4 with every delay longer than the step: the rows share their steps (ddeint's
        # lockstep condition)
        self.lock = method == "rk4" and float(taus.min()) > float(opts["dt"])

    def fresh(self, cap):
        B, d = self.B, self.d
        ring = (np.zeros((B, cap)), np.zeros((B, cap, d)), np.zeros((B, cap, d)),
                np.zeros((B, cap, d)))  # fmt: skip
        return ring, np.zeros((B, 8), np.int64), np.zeros((B, 3))

    def advance(self, ring, ist, fst, t_end, budget=None):
        o = self.opts
        if budget is None:
            budget = _dl._MAX_STEPS if self.method == "rk4" else o["max_steps"]
        ctl = (_dl.METHODS[self.method], float(o["dt"]), o["rtol"], o["atol"], o["hmax"],
               float(t_end), self.disc, self.djump, budget)  # fmt: skip
        tout = np.array([float(t_end)])
        yout = np.full((1, self.B, self.d), np.nan)
        secs = _dl._serial_seconds(self.method, self.B, self.d, self.taus.size, self.nP,
                                   np.array([0.0, float(t_end)]), float(o["dt"]))  # fmt: skip
        with for_work(secs):
            # the dispatcher itself (no first-class functions here): the cached entry point
            # of _first_class.call leaves each call's argument tuple to the cycle collector
            self.kern(None, (), None, self.fld, self.hists, ctl, tout, yout, ring, ist, fst)

    def advance_lock(self, ring, ist, budget):
        """:meth:`advance` to T for RK4 rows in lockstep (kernels.dde_adjoint's resume of
        ddeint's lockstep loop): the same nodes, several times faster."""
        o = self.opts
        ctl = (float(o["dt"]), float(self.T), self.disc, self.djump, budget)
        secs = _dl._serial_seconds(self.method, self.B, self.d, self.taus.size, self.nP,
                                   np.array([0.0, float(self.T)]), float(o["dt"]))  # fmt: skip
        with for_work(secs / 4.0):
            _kd.dde_rk4_lockstep_resume(self.fld, self.hists, ctl, ring, ist, _LOCK_BLOCK)

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
    """The reverse kernel's fixed arguments and its gradient accumulators (one set per chunk
    of rows, carried over its segments and summed once, after the segment that starts at t0:
    the sums of one sweep over every step while each worker has one row or block). RK4 rows
    share their step times and go to
    :func:`~nndyn_fast.kernels.dde_adjoint.dde_rk4_vjp_block` in blocks of ``_BLOCK`` rows;
    dopri5 rows to the row-by-row kernel."""

    def __init__(self, model, method, taus, g):
        W, A, B, b = model.layer_weights()
        code = int(ACTIVATIONS[model.activation])
        self.kmodel = (W, A, B, b, code)
        L, m, H, d = B.shape
        BT = np.ascontiguousarray(B.transpose(0, 1, 3, 2)).reshape(L * m, d, H)
        self.bmodel = (W, np.ascontiguousarray(W.transpose(0, 2, 1)), A,
                       np.ascontiguousarray(A.transpose(0, 2, 1)), B.reshape(L * m, H, d), BT, b,
                       code)  # fmt: skip
        self.blocked = method == "rk4"
        self.TA, self.TC = _tables(method)
        self.taus, self.g = taus, g
        self.per = 8.0 * (W.size + A.size + B.size + b.size)
        self.flops = 3 * W.shape[1] * W.shape[2] * (2 + B.shape[1]) * self.TA.shape[0]
        self.acc = None

    def start(self, Bc):
        units = -(-Bc // _BLOCK) if self.blocked else Bc
        nw = int(max(1, min(units, _MAX_WORKERS, 2.0**28 // max(self.per, 1.0))))
        self.acc = [np.zeros((nw, *v.shape)) for v in self.g.values()]

    def __call__(self, Xc, C, nodes, jlo, jhi, lay, first, final, adj, x0b, dXc, dTc):
        # serial seconds: about 2e-9 per multiply-add, stages recomputed and reversed
        seconds = 2e-9 * float(np.sum(jhi - jlo)) * self.flops
        g = self.g
        aW, aA, aB, ab = self.acc
        shared = np.all(jlo == jlo[0]) and np.all(jhi == jhi[0]) and np.all(first == first[0])
        with for_work(seconds):
            if self.blocked and shared:
                L, m, H, d = aB.shape[1:]
                _kd.dde_rk4_vjp_block(self.bmodel, Xc, C, self.taus, 0.0, self.TA, self.TC,
                                      *nodes, jlo, jhi, *lay, first, final, *adj, x0b, aW, aA,
                                      aB.reshape(-1, L * m, H, d), ab, final, g["W"], g["A"],
                                      g["B"].reshape(L * m, H, d), g["b"], dXc, dTc,
                                      _BLOCK)  # fmt: skip
            elif self.blocked:  # not expected: RK4 rows share their steps
                raise RuntimeError("dde_flow_vjp: RK4 rows with different steps")
            else:
                _kd.dde_rk_vjp(self.kmodel, Xc, C, self.taus, 0.0, self.TA, self.TC, *nodes,
                               jlo, jhi, *lay, first, final, *adj, x0b, *self.acc, final,
                               g["W"], g["A"], g["B"], g["b"], dXc, dTc)  # fmt: skip


class _Segments:
    """The method of steps of a chunk of rows in segments of ``q`` attempted steps.

    A checkpoint is what :func:`~nndyn_fast.kernels.dde.dde_advance` needs to continue bitwise:
    each row's delay window (its ring, oldest node first, compacted), its counters ``ist``
    (grid index, discontinuity pointer, accepted steps) and its controller ``fst`` (proposed
    step, PI memory, rejected last). The kernel is stopped by its step budget, so a segment
    ends where the uninterrupted run is, whatever the method."""

    def __init__(self, sv, q, cap):
        self.sv, self.q, self.cap = sv, q, cap

    def fresh(self):
        B = self.sv.B
        return None, np.zeros((B, 8), np.int64), np.zeros((B, 3))

    @staticmethod
    def compact(ring, ist, fst):
        ist = ist.copy()
        n = int(ist[:, _kdde.I_COUNT].max())
        return tuple(_dl._grow_ring(list(ring), ist, n)), ist, fst.copy()

    def _restore(self, state, cap):
        ring, ist, fst = state
        ist, fst = ist.copy(), fst.copy()
        if ring is None:
            return self.sv.fresh(cap)[0], ist, fst
        return tuple(_dl._grow_ring(list(ring), ist, cap)), ist, fst

    def run(self, state, budget, record=False, to_end=False):
        """Continue from ``state`` by ``budget`` attempted steps per row (rows at T stay);
        ``record``: into a ring holding the window and every new node (no wrap, oldest at
        slot 0); ``to_end``: the budget is the run's own (a stop on it is an error)."""
        held = 0 if state[0] is None else int(state[1][:, _kdde.I_COUNT].max())
        lock = self.sv.lock
        while True:
            cap = held + budget + 2 if record else max(self.cap, held + 2)
            ring, ist, fst = self._restore(state, cap)
            if lock:
                self.sv.advance_lock(ring, ist, budget)
                st = ist[:, _kdde.I_STATUS]
                if np.any((st != _kdde.OK) & (st != _kdde.MAX_STEPS) & (st != _kdde.RING_FULL)):
                    lock = False  # a failure: the row-by-row kernel names the row and step
                    continue
            else:
                self.sv.advance(ring, ist, fst, self.sv.T, budget)
            st = ist[:, _kdde.I_STATUS]
            if np.any(st == _kdde.RING_FULL):
                if record:  # not expected: room for every node
                    raise RuntimeError("dde_flow_vjp: the segment ring is full")
                self.cap *= 2  # rerun from the checkpoint (a full ring alters the controller)
                continue
            if not to_end:
                st[st == _kdde.MAX_STEPS] = _kdde.OK  # stopped by the segment's budget
            _dl._raise_on_status(ist, list(ring))
            return ring, ist, fst


def _place(dst, src, off, upto):
    """``dst[r, off[r] + i] = src[r, i]`` for ``i <= upto[r]`` (node adjoints of a window)."""
    L = int(upto.max()) + 1
    jj = np.arange(L)
    valid = jj[None, :] <= upto[:, None]
    rr = np.broadcast_to(np.arange(dst.shape[0])[:, None], valid.shape)[valid]
    dst[rr, (off[:, None] + jj[None, :])[valid]] = src[rr, np.broadcast_to(jj, valid.shape)[valid]]


def _checkpointed(sv, Xc, opts, rev, C_of, rv):
    """Bounded memory: binomial checkpointing (Griewank's revolve, the schedule of
    :func:`nndyn_fast.kernels.adjoint.revolve_split`) over segments of ``q`` attempted steps,
    at most ``s`` checkpoints (delay windows), one segment's nodes and the node adjoints of a
    window carried from a segment to the one before it. Returns (end states, steps, dX, dT)."""
    Bc, d = Xc.shape
    q, slots = opts["segment"], opts["checkpoints"]
    wcap = _window_cap(sv, opts)
    seg = _Segments(sv, q, wcap)
    s0 = seg.fresh()
    dX, dT = np.zeros_like(Xc), np.zeros(Bc)
    pre, n = None, None
    if sv.method == "dopri5" and rev:
        # first the whole run in a ring of the bound's size: kept when it never wrapped (one
        # forward run), else it counted the steps (unless the window itself overflowed)
        cap = slots * 8 + 2 * q
        ring, ist, fst = sv.fresh(cap)
        sv.advance(ring, ist, fst, sv.T)
        if not np.any(ist[:, _kdde.I_STATUS] == _kdde.RING_FULL):
            _dl._raise_on_status(ist, list(ring))
            n = int((ist[:, _kdde.I_ACC] + ist[:, _kdde.I_REJ]).max())
            if int(ist[:, _kdde.I_ACC].max()) + 2 < cap:
                pre, q = (ring, ist), max(n, 1)
        del ring, ist, fst
    if n is None and (sv.method == "dopri5" or not rev):  # the run's length (and end)
        budget = opts["max_steps"] if sv.method == "dopri5" else _dl._MAX_STEPS
        ring, ist, _ = seg.run(s0, budget, to_end=True)
        if not rev:
            last = (ist[:, _kdde.I_HEAD] + ist[:, _kdde.I_COUNT] - 1) % ring[0].shape[1]
            return ring[1][np.arange(Bc), last].copy(), ist[:, _kdde.I_ACC].copy(), dX, dT
        n = int((ist[:, _kdde.I_ACC] + ist[:, _kdde.I_REJ]).max())
    elif sv.method == "rk4":  # grid steps and at most one more per discontinuity
        n = int(math.ceil(sv.T / opts["dt"])) + sv.disc.size + 1
        if _whole(n, opts, sv.taus):  # within the bound: one segment, one forward run
            q = n
    N = max(1, -(-n // q))
    ar = np.arange(Bc)
    x0b = np.zeros_like(Xc)
    stack = [(0, s0)]
    end = N
    carry = None
    while end > 0:
        a, st = stack[-1]
        if a == end:
            stack.pop()
            continue
        free = slots - (len(stack) - 1)
        if end - a > 1 and free > 1:
            m = a + int(revolve_split(end - a, free))
            stack.append((m, seg.compact(*seg.run(st, (m - a) * q))))
            continue
        if end - 1 > a:
            st = seg.compact(*seg.run(st, (end - 1 - a) * q))
        c = end - 1
        ring, ist = pre if pre is not None else seg.run(st, q, record=True)[:2]
        pre = None
        tn = ring[0]
        acc = ist[:, _kdde.I_ACC]
        jhi = ist[:, _kdde.I_HEAD] + ist[:, _kdde.I_COUNT] - 1
        jlo = jhi - (acc - st[1][:, _kdde.I_ACC])
        base = acc - jhi  # the run's index of slot 0
        if end == N:
            if not np.all(tn[ar, jhi] >= sv.T):  # not expected: the length bounds the steps
                raise RuntimeError("dde_flow_vjp: the segments end before T")
            ZT = ring[1][ar, jhi].copy()
            ns = acc.copy()
            endseg = (acc + ist[:, _kdde.I_REJ] - 1) // q
            C = C_of(ZT)
        adj = tuple(np.zeros((Bc, tn.shape[1], d)) for _ in range(3))
        if carry is not None:  # node adjoints of the later segment's window, summed already
            old, obase, ojlo = carry
            for x, o in zip(adj, old, strict=True):
                _place(x, o, obase - base, ojlo)
        _check_steps(tn, jhi, taus=sv.taus)
        rv(Xc, C, ring[:4], jlo.copy(), jhi.copy(), sv.layers(tn), endseg == c, c == 0, adj,
           x0b, dX, dT)  # fmt: skip
        keep = int(jlo.max()) + 1
        carry = (tuple(x[:, :keep].copy() for x in adj), base, jlo)
        del ring, tn, adj  # before the next segment's arrays
        end -= 1
    return ZT, ns, dX, dT


def _whole(n, opts, taus):
    """Whether recording all ``n`` RK4 steps at once (nodes and adjoints, ~2 n nodes) stays
    within the checkpointed bound ``s w + 2 (w + q)`` nodes (``w`` a delay window)."""
    w = int(math.ceil(float(taus.max()) / opts["dt"])) + 1
    return n + 2 <= opts["checkpoints"] * w // 2 + w + opts["segment"]


def _window_cap(sv, opts):
    """Nodes a delay window holds (RK4: as ddeint sizes its ring; dopri5: a first guess)."""
    if sv.method == "rk4":
        return int(math.ceil(float(sv.taus.max()) / opts["dt"])) + sv.disc.size + 8
    return _CAP0 // 4


def _run(model, X, T, taus, method, opts, cotangent=None, Y=None):
    """Forward (and, with ``cotangent`` or targets ``Y``, reverse) over chunks of rows:
    (grads, end states, dX, dT per row, steps per row, residuals or None)."""
    W, A, B, b = model.layer_weights()
    d = W.shape[1]
    Bn = X.shape[0]
    slots = opts["checkpoints"]
    if slots is None:  # every node
        if method == "rk4":
            cap = int(math.ceil(T / opts["dt"])) + 4 * (B.shape[1] + model.n_layers) + 8
        else:
            cap = _CAP0
        per_row = cap * (6 * d + 1)
    elif method == "rk4":  # the checkpoints used, one segment's nodes and their adjoints
        w = int(math.ceil(float(taus.max()) / opts["dt"])) + 8
        n = int(math.ceil(T / opts["dt"])) + 4 * (B.shape[1] + model.n_layers) + 8
        q = n if _whole(n, opts, taus) else opts["segment"]
        used = min(slots, -(-n // q)) + 1
        per_row = used * w * (3 * d + 1) + (w + q + 2) * (6 * d + 1)
    else:  # a window's nodes guessed
        w = _CAP0 // 4
        per_row = (slots + 1) * w * (3 * d + 1) + (w + opts["segment"] + 2) * (6 * d + 1)
    rev = cotangent is not None or Y is not None
    if not rev:  # the forward run alone: a delay window
        w = int(math.ceil(float(taus.max()) / opts["dt"])) + 8 if method == "rk4" else _CAP0
        per_row = 2 * w * (3 * d + 1)
    g = {"W": np.zeros_like(W), "A": np.zeros_like(A), "B": np.zeros_like(B), "b": np.zeros_like(b)}
    ZT, dX, dT = np.empty_like(X), np.zeros_like(X), np.zeros(Bn)
    ns = np.zeros(Bn, np.int64)
    res = None if Y is None else np.empty_like(X)
    chunk = int(max(1, min(Bn, _CHUNK_BYTES // (8.0 * per_row))))
    rv = _Reverse(model, method, taus, g)
    for lo in range(0, Bn, chunk):
        sl = slice(lo, lo + chunk)
        Xc = X[sl]
        Bc = Xc.shape[0]
        rv.start(Bc)

        def C_of(Z, sl=sl):
            if Y is not None:
                res[sl] = Z - Y[sl]
                return np.ascontiguousarray(res[sl] / Bn)
            return np.ascontiguousarray(cotangent[sl])

        if slots is not None or not rev:
            sv = _Solver(model, Xc, T, taus, method, opts)
            ZT[sl], ns[sl], dX[sl], dT[sl] = _checkpointed(sv, Xc, opts, rev, C_of, rv)
            continue
        tn, Yn, Fl, Fr, nc, ls, lj, jf = _record(model, Xc, T, taus, method, opts, cap)
        cap = max(cap, tn.shape[1])
        ZT[sl] = Yn[np.arange(Bc), nc]
        ns[sl] = nc
        C = C_of(ZT[sl])
        adj = tuple(np.zeros((Bc, tn.shape[1], d)) for _ in range(3))
        dXc, dTc = np.empty_like(Xc), np.empty(Bc)
        rv(Xc, C, (tn, Yn, Fl, Fr), np.zeros(Bc, np.int64), nc, (ls, lj, jf),
           np.ones(Bc, np.bool_), True, adj, np.zeros_like(Xc), dXc, dTc)  # fmt: skip
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
    checkpoints: int | str | None = None,
    segment: int | None = None,
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
    checkpoints : delay windows kept per chunk of rows (at least 1; None, the default: 16), or
        ``"all"`` to keep every node (one forward run, memory ~ n). Any number gives the
        same gradients (bitwise, up to the order of the sums over rows of large batches: see
        the module docstring); fewer slots cost more reruns.
    segment : attempted steps per recomputed segment (default 64): memory
        ``checkpoints * w + 2 (w + segment)`` nodes per row for a delay window of ``w``.
    checkpoint : deprecated; means ``segment=checkpoint``.

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
                                                 hmax, max_steps, checkpoints, segment,
                                                 checkpoint)  # fmt: skip
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
    checkpoints: int | str | None = None,
    segment: int | None = None,
    checkpoint: int | None = None,
) -> tuple[float, DDEGrad]:
    """``ℓ = 1/(2B) sum_i ||x_i(T) - y_i||^2`` and its gradients (one forward run and one
    reverse sweep), ``x_i(T)`` as in :func:`dde_flow_vjp`; ``X``, ``Y`` (B, d) finite.
    Returns ``(ℓ, DDEGrad)``; options as in :func:`dde_flow_vjp`."""
    X2, single, T, taus, method, opts = _options(model, X, T, delays, method, dt, rtol, atol,
                                                 hmax, max_steps, checkpoints, segment,
                                                 checkpoint)  # fmt: skip
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
    differentiates: the forward run alone, keeping only the delay window; options as there
    (``method``, ``dt``, ``rtol``, ``atol``, ``hmax``, ``max_steps``)."""
    X2, single, T, taus, method, opts = _options(
        model, X, T, delays, options.pop("method", "rk4"), options.pop("dt", None),
        options.pop("rtol", 1e-8), options.pop("atol", 1e-10), options.pop("hmax", None),
        options.pop("max_steps", 100_000),
    )  # fmt: skip
    if options:
        raise TypeError(f"unknown options {sorted(options)}")
    ZT = _run(model, X2, T, taus, method, opts)[1]
    return ZT[0] if single else ZT
