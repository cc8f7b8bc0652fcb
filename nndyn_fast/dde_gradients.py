"""Exact gradients of neural-DDE time-T maps: the discrete adjoint of the RK4 method of steps.

For ``x' = W_l σ(A_l x + sum_k B_lk x(t - tau_k) + b_l)`` with the constant history ``x0`` (the
input) on ``t <= 0`` and the output ``x(T)``, :func:`dde_flow_vjp` gives ``c·∂x(T)/∂θ`` for the
weights, ``(∂x(T)/∂x0)^T c`` (through the start and the history) and ``c·x'(T)`` for T, from
the reverse sweep of :mod:`nndyn_fast.kernels.dde_adjoint`. The map differentiated is that of
:func:`~nndyn_fast.ddeint` with ``method="rk4"`` when the delays, T and the layer switches lie
on the step grid (required here): the delayed values inside a step are the package's cubic
Hermite interpolants of the past nodes, and their dependence on those nodes is part of the
gradient. The T gradient is the field at the end state (T on the grid has no discrete
derivative of its own; it is that of the flow up to the method's error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import as_array, check_positive
from .delay import NeuralDDE
from .kernels import dde_adjoint as _kd
from .kernels.activations import ACTIVATIONS
from .threads import for_work

__all__ = ["DDEGrad", "dde_flow_vjp", "dde_loss_and_grad"]

_MAX_WORKERS = 64


@dataclass(frozen=True)
class DDEGrad:
    """Gradients of ``sum_i c_i·x_i(T)``: ``params`` {W (L, d, H), A (L, H, d), B (L, m, H, d),
    b (L, H)}, ``X`` (B, d) inputs, ``T``; ``y`` (B, d) the end states."""

    params: dict
    X: np.ndarray
    T: float
    y: np.ndarray


def _on_grid(name: str, value: float, dt: float) -> int:
    k = int(round(value / dt))
    if k < 1 or abs(k * dt - value) > 1e-9 * max(value, dt):
        raise ValueError(f"{name} = {value} must be a positive multiple of dt = {dt}")
    return k


def _sweep(model, X, T, C, delays, dt):
    if not isinstance(model, NeuralDDE):
        raise TypeError(f"model must be a NeuralDDE, got {type(model).__name__}")
    W, A, B, b = model.layer_weights()
    L, d, H = W.shape
    m = B.shape[1]
    X = as_array("X", X, ndim=2)
    if X.shape[1] != d or X.shape[0] == 0:
        raise ValueError(f"X must have shape (B, {d}), got {X.shape}")
    T = check_positive("T", T)
    dt = check_positive("dt", dt)
    taus = np.atleast_1d(np.asarray(delays, dtype=float))
    if taus.ndim != 1 or taus.size != m:
        raise ValueError(f"delays must hold the model's {m} delay(s), got {np.shape(delays)}")
    N = np.array([_on_grid(f"delays[{k}]", float(t), dt) for k, t in enumerate(taus)], np.int64)
    n = _on_grid("T", T, dt)
    h = T / n
    stops = model._t_layers[1:-1]
    for s in stops:
        if 0.0 < s < T:
            _on_grid("a layer switch in t_layers", float(s), dt)
    mids = (np.arange(n) + 0.5) * h
    ls = np.searchsorted(stops, mids, side="right").astype(np.int64)
    jump = np.zeros(n, np.bool_)
    jump[1:] = ls[1:] != ls[:-1]
    Bn = X.shape[0]
    per = 8.0 * (W.size + A.size + B.size + b.size)
    nw = int(max(1, min(Bn, _MAX_WORKERS, 2.0**28 // max(per, 1.0))))
    kmodel = (W, A, B, b, int(ACTIVATIONS[model.activation]))
    Y = np.empty((nw, n + 1, d))
    Fr = np.empty((nw, n + 1, d))
    Fl = np.empty((nw, n + 1, d))
    g = {"W": np.zeros_like(W), "A": np.zeros_like(A), "B": np.zeros_like(B), "b": np.zeros_like(b)}
    ZT, FT, dX = np.empty_like(X), np.empty_like(X), np.empty_like(X)
    # serial seconds (about 2e-9 per multiply-add, forward and reverse): a parallel region
    # only with enough work per thread
    seconds = 2e-9 * Bn * n * 10 * d * H * (2 + m) * (3 if C.shape[0] else 1)
    with for_work(seconds):
        _kd.dde_rk4_vjp(kmodel, X, C, N, h, ls, jump, nw, Y, Fr, Fl, g["W"], g["A"], g["B"],
                        g["b"], ZT, FT, dX)  # fmt: skip
    if not np.all(np.isfinite(ZT)):
        raise FloatingPointError("the RK4 method of steps reached a non-finite state before T")
    return g, ZT, FT, dX


def dde_flow_vjp(
    model: NeuralDDE, X: Any, T: float, cotangent: Any, *, delays: Any, dt: float
) -> DDEGrad:
    """Vector-Jacobian products of the time-T map ``x0 -> x(T)`` of a :class:`NeuralDDE`.

    Parameters
    ----------
    model : NeuralDDE with m delays.
    X : (B, d) constant histories (the inputs) on ``t <= 0``.
    T : output time, a multiple of ``dt``.
    cotangent : (B, d).
    delays : the m delays, multiples of ``dt``.
    dt : RK4 step.
    """
    X = as_array("X", X, ndim=2)
    C = as_array("cotangent", cotangent, shape=X.shape)
    g, ZT, FT, dX = _sweep(model, X, T, C, delays, dt)
    return DDEGrad(g, dX, float(np.sum(C * FT)), ZT)


def dde_loss_and_grad(
    model: NeuralDDE, X: Any, Y: Any, T: float, *, delays: Any, dt: float
) -> tuple[float, DDEGrad]:
    """``ℓ = 1/(2B) sum_i ||x_i(T) - y_i||^2`` and its gradients (a forward sweep, then one
    forward and reverse sweep)."""
    X = as_array("X", X, ndim=2)
    Yt = as_array("Y", Y, shape=X.shape)
    _, ZT, _, _ = _sweep(model, X, T, np.zeros((0, 0)), delays, dt)
    r = ZT - Yt
    g = dde_flow_vjp(model, X, T, r / X.shape[0], delays=delays, dt=dt)
    return 0.5 * float(np.sum(r * r)) / X.shape[0], g
