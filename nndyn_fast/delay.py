"""Delay differential equations and neural DDEs: ``ddeint``, ``NeuralDDE``, ``lipschitz_bound``.

The equations solved are

    x'(t) = f(t, x(t), x(t - tau_1), ..., x(t - tau_m)),   t > t0,
    x(s)  = phi(s),                                        s <= t0,

with constant delays tau_k > 0 and the history phi given as a constant vector, as samples of the
past, or as a Numba function of time. The solver is the method of steps in compiled code
(:mod:`nndyn_fast.kernels.dde`): a ring buffer of the last max(tau) of accepted steps, cubic
Hermite interpolation for delayed values, classic RK4 on a fixed grid or Dormand-Prince 5(4) with
error control that includes the interpolation error, and steps that land on the propagated
derivative discontinuities t0 + sum_k n_k tau_k.

Fixed-step RK4 of a batch (at least 8 histories) with a built-in field and every delay longer
than ``dt`` runs in lockstep: all members then take the same steps, so blocks of 128 members
share one time loop with the states stored member-innermost (vectorised over the members, blocks
in parallel). Each member's arithmetic is that of the per-trajectory kernel, so the results are
bitwise the same as integrating the members one by one, for any number of threads.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
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
    check_memory,
    check_option,
    check_positive,
    check_steps,
    check_time_grid,
)
from .errors import NonFiniteStateError
from .integrate import IntegrationError, Solution
from .kernels import dde as _kd
from .kernels.activations import ACTIVATIONS
from .threads import for_work

__all__ = [
    "DDESolution",
    "LinearDDE",
    "MackeyGlass",
    "NeuralDDE",
    "ddeint",
    "lipschitz_bound",
    "activation_lipschitz",
]

METHODS = {"rk4": _kd.RK4, "dopri5": _kd.DOPRI5}
# propagation depth of the discontinuities: a jump in x^(j+1) at level j costs a step crossing
# it O(h^(j+1)) locally, harmless once j + 1 > order
_DISC_LEVEL = {"rk4": 4, "dopri5": 5}
# fixed-step RK4 of a batch with a built-in field runs blocks of members in lockstep
# (kernels.dde.dde_rk4_lockstep) from this many members on; the block is the unit of parallelism
_LOCKSTEP_MIN_BATCH = 8
_LOCKSTEP_BLOCK = 128
_RING_ADAPTIVE = 256  # initial ring capacity per trajectory for dopri5 (doubled when full)
_MAX_STEPS = 2**62


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def activation_lipschitz(activation: str) -> float:
    """sup abs(sigma') of an activation: 1 (identity, tanh, relu, softplus), 1/4 (sigmoid),
    Phi(sqrt 2) + sqrt 2 phi(sqrt 2) ~ 1.1289 (gelu)."""
    check_option("activation", activation, ACTIVATIONS)
    if activation == "sigmoid":
        return 0.25
    if activation == "gelu":
        r = math.sqrt(2.0)
        return 0.5 * math.erfc(-r / math.sqrt(2.0)) + r * math.exp(-1.0) / math.sqrt(2.0 * math.pi)
    return 1.0


@dataclass(frozen=True)
class NeuralDDE:
    """Neural delay field x' = W_l sigma(A_l x(t) + sum_k B_lk x(t - tau_k) + b_l).

    Parameters
    ----------
    W : (d, H) or a stack of L layers (L, d, H).
    A : (H, d) or (L, H, d).
    B : delayed weights: (H, d) (one delay) or (m, H, d); with layers (L, H, d) or (L, m, H, d).
    b : (H,) or (L, H).
    activation : one of ``identity, tanh, relu, softplus, sigmoid, gelu``.
    t_layers : (L + 1,) increasing times; layer l acts on [t_layers[l], t_layers[l+1]) (the
        first and last layers extend beyond). Default ``linspace(0, T, L + 1)``, as for
        :class:`~nndyn_fast.NeuralODE`.
    T : end time of the default layer grid (default 1).

    Notes
    -----
    The delays themselves are given to :func:`ddeint`; ``n_delays`` must match ``B``.
    """

    W: np.ndarray
    A: np.ndarray
    B: np.ndarray
    b: np.ndarray
    activation: str = "tanh"
    t_layers: Any = None
    T: float = 1.0

    def __post_init__(self) -> None:
        W = as_array("W", self.W, ndim=(2, 3))
        layered = W.ndim == 3
        if not layered:
            W = W[None]
        L, d, H = W.shape
        A = as_array("A", self.A, ndim=3 if layered else 2)
        A = A if layered else A[None]
        if A.shape != (L, H, d):
            raise ValueError(
                f"A must have shape {(L, H, d)[1 - layered :]}, got {np.shape(self.A)}"
            )
        B = as_array("B", self.B, ndim=(3, 4) if layered else (2, 3))
        if B.ndim == (3 if layered else 2):
            B = B[:, None] if layered else B[None, None]
        elif not layered:
            B = B[None]
        if B.shape[0] != L or B.shape[2:] != (H, d):
            want = "(L, H, d) or (L, m, H, d)" if layered else "(H, d) or (m, H, d)"
            raise ValueError(
                f"B must have shape {want} with L={L}, H={H}, d={d}, got {np.shape(self.B)}"
            )
        b = as_array("b", self.b, ndim=2 if layered else 1)
        b = b if layered else b[None]
        if b.shape != (L, H):
            raise ValueError(f"b must have shape {(L, H)[1 - layered :]}, got {np.shape(self.b)}")
        check_option("activation", self.activation, ACTIVATIONS)
        T = check_positive("T", self.T)
        if self.t_layers is None:
            tl = np.linspace(0.0, T, L + 1)
        else:
            tl = check_time_grid("t_layers", self.t_layers)
            if tl.size != L + 1:
                raise ValueError(f"t_layers must hold L + 1 = {L + 1} times, got {tl.size}")
        for name, v in (("W", W), ("A", A), ("B", B), ("b", b), ("t_layers", tl)):
            object.__setattr__(self, "_" + name, np.ascontiguousarray(v))

    @property
    def dim(self) -> int:
        return self._W.shape[1]

    @property
    def n_layers(self) -> int:
        return self._W.shape[0]

    @property
    def n_delays(self) -> int:
        return self._B.shape[1]

    def layer_weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The normalised stacks ``W`` (L, d, H), ``A`` (L, H, d), ``B`` (L, m, H, d), ``b``."""
        return self._W, self._A, self._B, self._b

    def jacobian(self, t: float, x: Any, xd: Any) -> np.ndarray:
        """Jacobians (m + 1, d, d) at ``x`` (d,), ``xd`` (m, d) and time ``t``:
        J[0] = W diag(sigma'(z)) A, J[1 + k] = W diag(sigma'(z)) B_k with
        z = A x + sum_k B_k xd_k + b (the layer active at ``t``)."""
        from .kernels.activations import dact

        W, A, B, b = self.layer_weights()
        x = np.asarray(x, dtype=np.float64).reshape(self.dim)
        xd = np.asarray(xd, dtype=np.float64).reshape(self.n_delays, self.dim)
        lay = 0
        while lay < self.n_layers - 1 and self._t_layers[lay + 1] <= t:
            lay += 1
        z = A[lay] @ x + np.einsum("khd,kd->h", B[lay], xd) + b[lay]
        code = ACTIVATIONS[self.activation]
        ds = np.array([dact(code, float(v)) for v in z])
        Wd = W[lay] * ds
        return np.concatenate([(Wd @ A[lay])[None], np.einsum("ih,khd->kid", Wd, B[lay])])


@dataclass(frozen=True)
class LinearDDE:
    """Linear delay field x' = A x(t) + sum_k B_k x(t - tau_k), ``A`` (d, d), ``B`` (m, d, d).

    A scalar or (d, d) ``B`` means one delay. The characteristic equation of the scalar case
    x' = a x + b x(t - tau) is lambda = a + b exp(-lambda tau).
    """

    A: Any
    B: Any

    def __post_init__(self) -> None:
        A = as_array("A", self.A, ndim=(1, 2))  # a scalar arrives as shape (1,)
        if A.ndim == 1 and A.size == 1:
            A = A.reshape(1, 1)
        d = A.shape[0]
        if A.shape != (d, d):
            raise ValueError(f"A must be square (d, d), got shape {A.shape}")
        B = as_array("B", self.B, ndim=(1, 2, 3))
        if B.ndim == 1 and d == 1:
            B = B.reshape(-1, 1, 1)
        elif B.ndim == 2:
            B = B[None]
        if B.ndim != 3 or B.shape[1:] != (d, d):
            raise ValueError(f"B must have shape (d, d) or (m, d, d) with d={d}, got {B.shape}")
        object.__setattr__(self, "_A", np.ascontiguousarray(A))
        object.__setattr__(self, "_B", np.ascontiguousarray(B))

    @property
    def dim(self) -> int:
        return self._A.shape[0]

    @property
    def n_delays(self) -> int:
        return self._B.shape[0]

    def jacobian(self, t: float, x: Any, xd: Any) -> np.ndarray:
        """Jacobians (m + 1, d, d): ``[A, B_1, ..., B_m]`` (constant)."""
        return np.concatenate([self._A[None], self._B])


@dataclass(frozen=True)
class MackeyGlass:
    """Mackey-Glass field x' = beta x(t - tau) / (1 + x(t - tau)^n) - gamma x (componentwise).

    Defaults beta = 0.2, gamma = 0.1, n = 10 (chaotic for tau = 17).
    """

    beta: float = 0.2
    gamma: float = 0.1
    n: float = 10.0

    def __post_init__(self) -> None:
        for name in ("beta", "gamma", "n"):
            v = float(check_positive(name, getattr(self, name)))
            object.__setattr__(self, name, v)

    n_delays = 1
    dim = None  # any dimension, applied componentwise

    def jacobian(self, t: float, x: Any, xd: Any) -> np.ndarray:
        """Jacobians (2, d, d), diagonal: -gamma I w.r.t. x(t) and
        beta (1 + (1 - n) v^n) / (1 + v^n)^2 w.r.t. v = x(t - tau)."""
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        v = np.asarray(xd, dtype=np.float64).reshape(1, x.size)[0]
        vn = v**self.n
        J = np.zeros((2, x.size, x.size))
        J[0] = -self.gamma * np.eye(x.size)
        J[1] = np.diag(self.beta * (1.0 + (1.0 - self.n) * vn) / (1.0 + vn) ** 2)
        return J


def lipschitz_bound(model: NeuralDDE | LinearDDE) -> float:
    """A global Lipschitz constant K of the field in (x(t), x(t - tau_1), ..., x(t - tau_m)).

    For f = W sigma(A x + sum_k B_k y_k + b) (max over the layers of a stack)

        K = L_sigma ||W||_2 (||A||_2 + sum_k ||B_k||_2),

    with L_sigma = sup abs(sigma') (:func:`activation_lipschitz`), and for the linear field
    K = ||A||_2 + sum_k ||B_k||_2. This K bounds ‖f(x, y) - f(x', y')‖ both by
    K max(‖x - x'‖, ‖y_k - y_k'‖) and by K (‖x - x'‖ + sum_k ‖y_k - y_k'‖), so it serves the
    memory-capacity statements in either convention. For x' = -a x(t - tau) it equals abs(a), and
    K tau e < 1 is then the non-oscillation condition a tau < 1/e.

    Raises
    ------
    TypeError
        For a model without a global Lipschitz bound here (e.g. ``MackeyGlass``).

    References
    ----------
    C. Kuehn, S.-V. Kuntz, "The Influence of the Memory Capacity of Neural DDEs on the Universal
    Approximation Property", arXiv:2505.07244.
    """
    if isinstance(model, NeuralDDE):
        W, A, B, _ = model.layer_weights()
        ls = activation_lipschitz(model.activation)
        best = 0.0
        for layer in range(W.shape[0]):
            nb = sum(np.linalg.norm(B[layer, k], 2) for k in range(B.shape[1]))
            val = ls * np.linalg.norm(W[layer], 2) * (np.linalg.norm(A[layer], 2) + nb)
            best = max(best, float(val))
        return best
    if isinstance(model, LinearDDE):
        nb = sum(np.linalg.norm(model._B[k], 2) for k in range(model.n_delays))
        return float(np.linalg.norm(model._A, 2) + nb)
    raise TypeError(f"lipschitz_bound takes a NeuralDDE or LinearDDE, got {type(model).__name__}")


# ---------------------------------------------------------------------------------------------
# solution
# ---------------------------------------------------------------------------------------------
# ``ddeint`` returns the same result type as ``odeint``
DDESolution = Solution


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _arity(fn: Any) -> int:
    return len(inspect.signature(fn.py_func).parameters)


@functools.lru_cache(maxsize=64)
def _inplace_field(f: Any) -> Any:
    """Adapter turning ``f(t, x, xd, args) -> dx`` into ``f(t, x, xd, args, out)``."""
    from numba import njit

    @njit
    def g(t, x, xd, args, out):
        r = f(t, x, xd, args)
        for i in range(out.shape[0]):
            out[i] = r[i]

    return g


@functools.lru_cache(maxsize=64)
def _inplace_history(phi: Any, with_p: bool) -> Any:
    """Adapter turning ``phi(t) -> x`` or ``phi(t, p) -> x`` into ``phi(t, p, out)``."""
    from numba import njit

    if with_p:

        @njit
        def g(t, p, out):
            r = phi(t, p)
            for i in range(out.shape[0]):
                out[i] = r[i]

    else:

        @njit
        def g(t, p, out):
            r = phi(t)
            for i in range(out.shape[0]):
                out[i] = r[i]

    return g


def _delays(delays: Any) -> np.ndarray:
    if delays is None:
        raise ValueError("delays must be given: a number > 0 or a sequence of them")
    taus = as_array("delays", delays, ndim=(0, 1)).reshape(-1)
    if taus.size == 0:
        raise ValueError("delays must hold at least one delay")
    if not np.all(taus > 0):
        raise ValueError(f"delays must all be > 0, got {taus.tolist()}")
    return taus


@dataclass
class _History:
    kind: int
    B: int
    d: int
    hc: np.ndarray
    hst: np.ndarray
    hsy: np.ndarray
    hsdy: np.ndarray
    hfn: Any
    hp: np.ndarray
    batched: bool


def _history(history: Any, t0: float, taumax: float, history_args: Any) -> _History:
    from numba.core.registry import CPUDispatcher

    if isinstance(history, CPUDispatcher):
        n = _arity(history)
        if n not in (1, 2):
            raise ValueError(
                f"history function must take (t) or (t, p) and return x(t), got {n} parameters"
            )
        if history_args is None:
            if n == 2:
                raise ValueError("history(t, p) needs history_args of shape (B, p) or (p,)")
            hp = np.zeros((1, 0))
            batched = False
        else:
            hp = as_array("history_args", history_args, ndim=(1, 2))
            batched = hp.ndim == 2
            hp = np.ascontiguousarray(np.atleast_2d(hp))
        B = hp.shape[0]
        vals = []
        for b in range(B):
            try:
                v = history(t0) if n == 1 else history(t0, hp[b])
            except Exception as exc:  # a typing error in the user's function
                raise TypeError(f"history({t0}) failed: {exc}") from exc
            v = as_array(f"history({t0})", v, ndim=1)
            vals.append(v)
        d = vals[0].shape[0]
        hfn = _inplace_history(history, n == 2)
        return _History(
            _kd.H_FUNC,
            B,
            d,
            np.zeros((B, d)),
            np.zeros(1),
            np.zeros((B, 1, d)),
            np.zeros((B, 1, d)),
            hfn,
            hp,
            batched,
        )
    if history_args is not None:
        raise ValueError("history_args is only used with a history function")
    if isinstance(history, tuple):
        if len(history) not in (2, 3):
            raise ValueError(
                "history given as a tuple must be (times, values) or (times, values, slopes)"
            )
        ts = check_time_grid("history times", history[0])
        ys = as_array("history values", history[1], ndim=(2, 3))
        batched = ys.ndim == 3
        ys3 = ys if batched else ys[None]
        if ys3.shape[1] != ts.size:
            raise ValueError(
                f"history values must have shape (n, d) or (B, n, d) with n={ts.size} "
                f"samples, got {ys.shape}"
            )
        if len(history) == 3:
            dys = as_array("history slopes", history[2], shape=ys.shape)
            dys3 = dys if batched else dys[None]
        else:
            edge = 2 if ts.size >= 3 else 1
            dys3 = np.gradient(ys3, ts, axis=1, edge_order=edge)
        if ts[-1] != t0:
            raise ValueError(f"history times must end at the start time t[0] = {t0}, got {ts[-1]}")
        if ts[0] > t0 - taumax + 1e-12 * max(1.0, abs(t0), taumax):
            raise ValueError(
                f"history samples must cover [t0 - max(delays), t0] = [{t0 - taumax}, {t0}], "
                f"they start at {ts[0]}"
            )
        B, _, d = ys3.shape
        return _History(
            _kd.H_SAMPLES,
            B,
            d,
            np.zeros((B, d)),
            ts,
            np.ascontiguousarray(ys3),
            np.ascontiguousarray(dys3),
            None,
            np.zeros((B, 0)),
            batched,
        )
    if callable(history):
        raise TypeError(
            "history must be a constant vector, (times, values) samples, or a Numba-jitted "
            f"function of time (decorate it with @numba.njit), got {type(history).__name__}"
        )
    hc = as_array("history", history, ndim=(1, 2))
    batched = hc.ndim == 2
    hc = np.ascontiguousarray(np.atleast_2d(hc))
    B, d = hc.shape
    if d == 0 or B == 0:
        raise ValueError(f"history must not be empty, got shape {hc.shape}")
    return _History(
        _kd.H_CONST,
        B,
        d,
        hc,
        np.zeros(1),
        np.zeros((B, 1, d)),
        np.zeros((B, 1, d)),
        None,
        np.zeros((B, 0)),
        batched,
    )


def _pack_model(f: Any, d: int, m: int) -> tuple[int, np.ndarray, np.ndarray, list[float]]:
    """(model code, ip, P, times where f jumps in t) of a built-in model."""
    ip = np.zeros(10, dtype=np.int64)
    if isinstance(f, NeuralDDE):
        if f.dim != d:
            raise ValueError(f"history has dimension {d} but the NeuralDDE has d = {f.dim}")
        if f.n_delays != m:
            raise ValueError(f"the NeuralDDE has {f.n_delays} delay block(s) in B, got {m} delays")
        W, A, B, b = f.layer_weights()
        L, _, H = W.shape
        tl = f._t_layers
        # A and B transposed: the kernel's loops over hidden units run over contiguous memory
        parts = [tl, W.ravel(), A.transpose(0, 2, 1).ravel(), B.transpose(0, 1, 3, 2).ravel()]
        parts.append(b.ravel())
        offs = np.cumsum([0] + [p.size for p in parts])
        ip[:] = [_kd.NEURAL, d, m, L, H, ACTIVATIONS[f.activation], *offs[1:5]]
        jumps = [float(s) for s in tl[1:L]]
        return _kd.NEURAL, ip, np.concatenate(parts), jumps
    if isinstance(f, LinearDDE):
        if f.dim != d:
            raise ValueError(f"history has dimension {d} but the LinearDDE has d = {f.dim}")
        if f.n_delays != m:
            raise ValueError(f"the LinearDDE has {f.n_delays} delay matrix(es) B, got {m} delays")
        ip[:3] = [_kd.LINEAR, d, m]
        return _kd.LINEAR, ip, np.concatenate([f._A.ravel(), f._B.ravel()]), []
    if isinstance(f, MackeyGlass):
        if m != 1:
            raise ValueError(f"MackeyGlass takes exactly one delay, got {m}")
        ip[:3] = [_kd.MACKEY_GLASS, d, m]
        return _kd.MACKEY_GLASS, ip, np.array([f.beta, f.gamma, f.n]), []
    raise TypeError(
        "f must be a NeuralDDE, LinearDDE, MackeyGlass or a Numba-jitted function "
        f"f(t, x, xd, args[, out]), got {type(f).__name__}"
    )


def _disc_points(t0: float, tf: float, taus: np.ndarray, jumps: list[float], level: int):
    """Derivative discontinuities in (t0, tf]: t0 and the jump times of f, propagated by
    every sum of at most ``level`` delays; ``djump`` marks the jump times of f themselves."""
    pts: list[tuple[float, int]] = []
    bases = [(t0, 0)] + [(s, 1) for s in jumps if t0 < s < tf]
    pts.extend((s, 1) for s, _ in bases[1:])
    for base, _ in bases:
        for k in range(1, level + 1):
            for combo in itertools.combinations_with_replacement(taus.tolist(), k):
                s = base + sum(combo)
                if s <= tf:
                    pts.append((s, 0))
    if not pts:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    pts.sort()
    tol = 1e-12 * max(1.0, abs(t0), abs(tf))
    out_t, out_j = [pts[0][0]], [pts[0][1]]
    for s, j in pts[1:]:
        if s - out_t[-1] <= tol:
            out_j[-1] = max(out_j[-1], j)
        else:
            out_t.append(s)
            out_j.append(j)
    return np.array(out_t), np.array(out_j, dtype=np.int64)


def _grow_ring(ring: list[np.ndarray], ist: np.ndarray, cap: int) -> list[np.ndarray]:
    """Copy every trajectory's ring, oldest node first, into arrays of capacity ``cap``."""
    rt, ry, rfl, rfr = ring
    B, old = rt.shape
    d = ry.shape[2]
    nt = np.zeros((B, cap))
    ny, nl, nr = (np.zeros((B, cap, d)) for _ in range(3))
    for b in range(B):
        n = int(ist[b, _kd.I_COUNT])
        idx = (int(ist[b, _kd.I_HEAD]) + np.arange(n)) % old
        nt[b, :n] = rt[b, idx]
        ny[b, :n] = ry[b, idx]
        nl[b, :n] = rfl[b, idx]
        nr[b, :n] = rfr[b, idx]
        ist[b, _kd.I_HEAD] = 0
    return [nt, ny, nl, nr]


# ---------------------------------------------------------------------------------------------
# ddeint
# ---------------------------------------------------------------------------------------------
def ddeint(
    f: Any,
    history: Any,
    t: Any,
    *,
    delays: Any,
    method: str = "dopri5",
    dt: float | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    args: tuple = (),
    history_args: Any = None,
    hmax: float | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    chunk_frames: int | None = None,
    max_steps: int = 1_000_000,
    progress: bool = False,
    extra_params: dict[str, Any] | None = None,
) -> Solution:
    """Integrate x'(t) = f(t, x(t), x(t - tau_1), ..., x(t - tau_m)) with x = history on t <= t0.

    Parameters
    ----------
    f : a built-in model (:class:`NeuralDDE`, :class:`LinearDDE`, :class:`MackeyGlass`) or a
        Numba ``@njit`` function ``f(t, x, xd, args, out)`` (in place) or ``f(t, x, xd, args)``
        returning dx; ``x`` (d,), ``xd`` (m, d) holds x(t - tau_k) in row k.
    history : the initial function on [t0 - max(tau), t0], one of

        - a constant vector (d,) or a batch of them (B, d);
        - samples ``(times, values)`` or ``(times, values, slopes)``: ``times`` (n,) increasing,
          ending at t0 = t[0] and starting at or before t0 - max(tau); ``values`` (n, d) or a
          batch (B, n, d); slopes default to second-order finite differences;
        - a Numba function ``phi(t) -> (d,)``, or ``phi(t, p) -> (d,)`` with one parameter row
          ``p`` per batch member from ``history_args`` (B, p).

        The batch members are integrated in parallel, each with its own adaptive steps;
        with ``"rk4"``, a built-in ``f``, all delays > ``dt`` and 8 or more members (and no
        ``out``), blocks of members run in lockstep (same result, bitwise, several times faster).
    t : (T,) increasing output times; t[0] is the start time t0 and x(t0) = history(t0).
    delays : tau (> 0) or a sequence of m delays; need not be multiples of ``dt``.
    method : ``"dopri5"`` (adaptive Dormand-Prince 5(4), default) or ``"rk4"`` (fixed step).
    dt : step of ``"rk4"`` (required); initial step proposal for ``"dopri5"``.
    rtol, atol : tolerances of ``"dopri5"`` (per component, weighted RMS norm); the controlled
        error includes the error of the Hermite interpolant used for delayed values.
    args : tuple passed to a user ``f``.
    history_args : per-member parameters of a history function ``phi(t, p)``.
    hmax : largest step of ``"dopri5"`` (default: the whole interval).
    max_steps : step budget of ``"dopri5"`` per trajectory for the whole run (also across the
        chunks of a streamed run); exceeding it raises IntegrationError, keeping the frames.
    out : write the trajectory (time, value (B, d)) chunk by chunk to this HDF5 run file instead
        of returning it; memory then stays O(history window + one chunk). The last time of each
        chunk is stepped onto, so results agree with an in-memory run to the tolerance.
    overwrite, resume : replace an existing ``out`` file, or continue the run it holds from its
        last committed chunk. Each chunk is committed with a checkpoint holding everything the
        next one needs (the ring of past steps, the proposed step and controller memory, the
        discontinuity and grid pointers, the counts), so a resumed run is bitwise the same as
        an uninterrupted one. A resume must be given the same field, history, delays, inputs
        and options: each is compared with the file (a user function by its name and a digest
        of its code) and a difference is refused, naming it.
    progress : report progress on stderr per committed chunk (with ``out``; see
        :mod:`nndyn_fast.progress`).
    chunk_frames : output rows per chunk for ``out`` (default about 1 MiB per chunk); the last
        time of each chunk is stepped onto, so it is part of the run's parameters. Each commit
        also writes the checkpoint, whose size is that of the steps in the delay window
        (B x steps x (1 + 3 d) floats): for large batches, chunks of more frames write less.
    extra_params : JSON-able options stored in the run file's ``/params`` beside the run's own
        (the command line's options); compared on resume like the others.

    Returns
    -------
    Solution
        The :func:`~nndyn_fast.odeint` result type: ``y`` of shape (T, d), or (T, B, d) for a
        batch of histories (``None`` with ``out``); ``stats`` holds ``n_accepted``,
        ``n_rejected``, ``n_fev``, ``per_trajectory`` (B, 3), ``ring_capacity``,
        ``n_discontinuities`` and ``lockstep`` (whether the lockstep RK4 path ran).

    Raises
    ------
    ValueError
        Bad delays (<= 0), history of the wrong shape or holding NaN, a non-increasing ``t``,
        an unknown ``method``, ``dt``/``rtol``/``atol`` <= 0, mismatched model dimensions.
    TypeError
        ``f`` or a history function that is not Numba-jitted.
    NonFiniteStateError
        A trajectory became NaN/inf (names the time reached; with ``out``, how many frames the
        run file keeps).
    IntegrationError
        The step size underflowed (names the time reached).

    References
    ----------
    A. Bellen, M. Zennaro, "Numerical Methods for Delay Differential Equations", Oxford 2003.
    L. F. Shampine, S. Thompson, "Solving DDEs in MATLAB", Appl. Numer. Math. 37 (2001) 441.
    """
    mname = check_option("method", method, METHODS)
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")
    if extra_params is not None and not isinstance(extra_params, dict):
        raise TypeError(f"extra_params must be a dict or None, got {type(extra_params).__name__}")
    if chunk_frames is not None:
        chunk_frames = check_int("chunk_frames", chunk_frames, minimum=1)
    tt = check_time_grid("t", t)
    taus = _delays(delays)
    m = taus.size
    taumax = float(taus.max())
    t0, tf = float(tt[0]), float(tt[-1])
    if mname == "rk4":
        if dt is None:
            raise ValueError("dt must be given for method 'rk4'")
        dt = check_positive("dt", dt)
    elif dt is not None:
        dt = check_positive("dt", dt)
    rtol = check_positive("rtol", rtol)
    atol = check_positive("atol", atol)
    hmax = (tf - t0) if hmax is None else check_positive("hmax", hmax)
    max_steps = check_int("max_steps", max_steps, minimum=1)
    overwrite = check_bool("overwrite", overwrite)
    progress = check_bool("progress", progress)
    if chunk_frames is not None:
        chunk_frames = check_int("chunk_frames", chunk_frames, minimum=1)
    if mname == "rk4":
        check_steps("(t[-1] - t[0]) / dt", (tf - t0) / dt)
    if not isinstance(args, tuple):
        raise ValueError(f"args must be a tuple, got {type(args).__name__}")
    hist = _history(history, t0, taumax, history_args)
    B, d = hist.B, hist.d

    from numba.core.registry import CPUDispatcher

    if isinstance(f, CPUDispatcher):
        fn = _user_field(f, hist, t0, taus, args)
        model, ip, P, jumps = _kd.USER, np.zeros(10, dtype=np.int64), np.zeros(1), []
        kargs = args
    else:
        if callable(f):
            check_jitted("f", f)
        model, ip, P, jumps = _pack_model(f, d, m)
        fn, kargs = None, ()
    disc, djump = _disc_points(t0, tf, taus, jumps, _DISC_LEVEL[mname])

    if mname == "rk4":
        cap = check_steps("max(delays) / dt", np.ceil(taumax / dt)) + int(disc.size) + 8
        check_memory(
            f"a history ring of {cap} steps (max(delays) / dt)", 8.0 * B * cap * (3 * d + 1)
        )
    else:
        cap = _RING_ADAPTIVE
    ring = [np.zeros((B, cap)), np.zeros((B, cap, d)), np.zeros((B, cap, d)), np.zeros((B, cap, d))]
    ist = np.zeros((B, 8), dtype=np.int64)
    fst = np.zeros((B, 2))
    if mname == "dopri5" and dt is not None:
        # a given first step: the kernel then skips its own start, which also sets the PI
        # controller's memory of the last error (its divisor); set that memory as it does
        fst[:, _kd.F_H] = min(dt, hmax)
        fst[:, _kd.F_FACOLD] = 1e-4  # the step controller's memory, as after its own first guess
    fld = (model, ip, P, hist.kind, t0, taus)
    hists = (hist.hc, hist.hst, hist.hsy, hist.hsdy, hist.hp)
    method_code, dt_k = METHODS[mname], float(dt or 0.0)
    # user functions go by their signature: one cached kernel serves every field of it
    f8, v, m2 = numba.types.float64, numba.types.float64[::1], numba.types.float64[:, ::1]
    fn_t = typed(fn, f8, v, m2, numba.typeof(kargs), v)
    hfn_t = typed(hist.hfn, f8, v, v)

    def advance(tout: np.ndarray, yout: np.ndarray) -> None:
        nonlocal ring
        kern = _kd.dde_advance if B > 1 else _kd.dde_advance_serial
        # the budget left to the busiest trajectory (the kernel counts steps per call)
        used = int((ist[:, _kd.I_ACC] + ist[:, _kd.I_REJ]).max())
        budget = _MAX_STEPS if method_code == METHODS["rk4"] else max(1, max_steps - used)
        ctl = (method_code, dt_k, rtol, atol, hmax, float(tout[-1]), disc, djump, budget)
        with for_work(_serial_seconds(mname, B, d, m, P.size, tout, dt_k)):
            while True:
                call(kern, fn_t, kargs, hfn_t, fld, hists, ctl, tout, yout, tuple(ring), ist, fst)
                if np.any(ist[:, _kd.I_STATUS] == _kd.RING_FULL):
                    ring = _grow_ring(ring, ist, 2 * ring[0].shape[1])
                    continue
                return

    def stats() -> dict:
        per = ist[:, [_kd.I_ACC, _kd.I_REJ, _kd.I_NFEV]].copy()
        return {
            "n_accepted": int(per[:, 0].sum()),
            "n_rejected": int(per[:, 1].sum()),
            "n_fev": int(per[:, 2].sum()),
            "per_trajectory": per,
            "ring_capacity": int(ring[0].shape[1]),
            "n_discontinuities": int(disc.size),
            "lockstep": False,
        }

    if out is None:
        yout = np.full((tt.size, B, d), np.nan)
        if _lockstep_applies(mname, fn, B, taus, dt_k):
            with for_work(_serial_seconds(mname, B, d, m, P.size, tt, dt_k)):
                lock = _advance_lockstep(hist, fld, hists, (dt_k, tf, disc, djump), tt, yout, cap)
            if lock is not None:  # else a member failed: the per-member path names it
                st = stats()
                st.update(lock)
                y = yout if hist.batched else yout[:, 0, :]
                return Solution(tt, y, st, "success")
        advance(tt, yout)
        _raise_on_status(ist, ring)
        y = yout if hist.batched else yout[:, 0, :]
        return Solution(tt, y, stats(), "success")

    from .progress import progress_bar
    from .runs import start_run
    from .storage import chunk_rows

    bar = progress_bar(progress, tt.size, desc="dde", unit="frame")
    rows = chunk_frames if chunk_frames is not None else chunk_rows((B, d), np.float64)
    params, inputs = _run_params(f, fn is not None, history, hist, args)
    params.update(extra_params or {})
    params.update(
        method=mname, rtol=rtol, atol=atol, dt=None if not dt else float(dt), hmax=hmax,
        max_steps=max_steps, chunk_frames=rows,
        batch=B, dim=d, frames=int(tt.size),
    )  # fmt: skip
    inputs.update(t=tt, delays=taus)
    # the checkpoint's ring holds the live nodes of each trajectory (oldest first); the room
    # for them is fixed when the file is created (the records' size, twice the first one's):
    # the whole ring of fixed-step RK4; for dopri5, whose ring grows when the delay window
    # needs it, at least twice its first ring and up to about 1 MiB
    if mname == "rk4":
        room = cap
    else:
        room = max(cap, min(16 * cap, (512 << 10) // (8 * B * (1 + 3 * d))))

    def checkpoint(row: int) -> dict:
        n = max(1, int(ist[:, _kd.I_COUNT].max()))
        if n > 2 * room:
            raise ValueError(
                f"ddeint: the delay window holds {n} steps of a trajectory, more than the run "
                f"file has room for in its checkpoint ({2 * room}); loosen rtol/atol, set hmax "
                "larger, or write fewer batch members per file"
            )
        ist_c = ist.copy()  # the nodes oldest first: head 0 (results do not depend on it)
        rt, ry, rfl, rfr = _grow_ring(ring, ist_c, n)
        return dict(
            row=row, ring_capacity=int(ring[0].shape[1]), ring_t=rt, ring_y=ry, ring_fl=rfl,
            ring_fr=rfr, ist=ist_c, fst=fst.copy(),
        )  # fmt: skip

    first = checkpoint(0)
    first.update(ring_t=np.zeros((B, room)), **{k: np.zeros((B, room, d)) for k in _RING_KEYS})
    run = start_run(
        out,
        kind="dde",
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
        description="delay differential equation dx/dt = f(t, x(t), x(t - tau_1), ...): "
        "frames of the state at the requested times",
        rows={"trajectory": int(tt.size)},
        checkpoint=first,
        resume=resume,
        overwrite=overwrite,
    )
    with run:
        ck = run.checkpoint
        ist[:] = ck["ist"]
        fst[:] = ck["fst"]
        ring = _grow_ring(
            [ck["ring_t"], *(ck[k] for k in _RING_KEYS)], ist, int(ck["ring_capacity"])
        )
        for start in range(int(ck["row"]), tt.size, rows):
            tc = tt[start : start + rows]
            yc = np.full((tc.size, B, d), np.nan)
            advance(tc, yc)
            failed = bool(np.any(ist[:, _kd.I_STATUS] != _kd.OK))
            good = tc.size
            if failed:  # keep the frames every trajectory reached
                tmin = min(_t_reached(ring, ist, b) for b in range(B))
                good = int(np.searchsorted(tc, tmin, side="right"))
            have = run.rows["trajectory"] - start  # more than 0 when a failed run is resumed
            if good > have:
                run.append("trajectory", time=tc[have:good], value=yc[have:good])
            if failed:
                if good > have:
                    # the good frames, with the checkpoint of the chunk's start: a resume
                    # repeats this chunk and stops with the same error
                    run.commit(**run.checkpoint)
                _raise_on_status(ist, ring, kept=(start + good, run.path))
            run.commit(**checkpoint(start + tc.size))
            bar.update(start + tc.size)
        bar.close()
        st = stats()
        run.summarize(n_accepted=st["n_accepted"], n_rejected=st["n_rejected"], n_fev=st["n_fev"])
        path = run.path
    return Solution(tt, None, stats(), "success", path=path)


_RING_KEYS = ("ring_y", "ring_fl", "ring_fr")


def _run_params(f: Any, user: bool, history: Any, hist: _History, args: tuple):
    """The field's and history's part of a streamed run's parameters and inputs (compared on
    resume): built-in weights as inputs, user functions by name and code digest."""
    from .integrate import args_params, function_id

    params: dict[str, Any] = {"batched": bool(hist.batched)}
    inputs: dict[str, np.ndarray] = {}
    if user:
        params.update(model=f.py_func.__qualname__, model_code=function_id(f))
        params["args"], arrays = args_params(args)
        inputs.update(arrays)
    else:
        params["model"] = type(f).__name__
        if isinstance(f, NeuralDDE):
            W, A, B, b = f.layer_weights()
            params["activation"] = f.activation
            inputs.update(W=W, A=A, B=B, b=b, t_layers=f._t_layers)
        elif isinstance(f, LinearDDE):
            inputs.update(A=f._A, B=f._B)
        else:
            params.update(beta=f.beta, gamma=f.gamma, n=f.n)
    if hist.kind == _kd.H_FUNC:
        params.update(history=history.py_func.__qualname__, history_code=function_id(history))
        inputs["history_args"] = hist.hp
    elif hist.kind == _kd.H_SAMPLES:
        params["history"] = "samples"
        inputs.update(history_times=hist.hst, history_values=hist.hsy, history_slopes=hist.hsdy)
    else:
        params["history"] = "constant"
        inputs["history"] = hist.hc
    return params, inputs


# Serial seconds per field evaluation of one member, for the thread choice of
# threads.for_work (measured on one thread: Mackey-Glass rk4, 20 members, 4.5e-8 with the
# history interpolation; a NeuralDDE batch, lockstep, 4.3e-9 per weight).
_SECONDS_PER_EVAL = 4.5e-8
_SECONDS_PER_WEIGHT = 4.3e-9


def _serial_seconds(
    mname: str, B: int, d: int, m: int, n_weights: int, tout: np.ndarray, dt: float
) -> float:
    """Estimated serial seconds of advancing the batch through ``tout`` (one parallel region):
    rk4 from its step, dopri5 one step per output interval (a lower bound)."""
    steps = float(tout.size - 1)
    if mname == "rk4" and dt > 0:
        steps = max(steps, float(tout[-1] - tout[0]) / dt)
    per_eval = _SECONDS_PER_EVAL + _SECONDS_PER_WEIGHT * max(n_weights, d * d * (1 + m))
    return B * steps * (4 if mname == "rk4" else 6) * per_eval


def _lockstep_applies(mname: str, fn: Any, B: int, taus: np.ndarray, dt: float) -> bool:
    """Fixed-step RK4 with a built-in field, a batch of at least ``_LOCKSTEP_MIN_BATCH`` and
    every delay longer than the step: all members take the same steps."""
    return mname == "rk4" and fn is None and B >= _LOCKSTEP_MIN_BATCH and float(taus.min()) > dt


def _advance_lockstep(
    hist: _History,
    fld: tuple,
    hists: tuple,
    ctl: tuple,
    tt: np.ndarray,
    yout: np.ndarray,
    cap: int,
) -> dict | None:
    """Run :func:`~nndyn_fast.kernels.dde.dde_rk4_lockstep` over the whole batch; the stats
    (per member as on the per-member path), or None when a block did not finish."""
    B = hist.B
    nblk = -(-B // _LOCKSTEP_BLOCK)
    st = np.zeros((nblk, 8), dtype=np.int64)
    hfn = typed(hist.hfn, numba.types.float64, numba.types.float64[::1], numba.types.float64[::1])
    call(_kd.dde_rk4_lockstep, hfn, fld, hists, ctl, tt, yout, cap, _LOCKSTEP_BLOCK, st)
    if np.any(st[:, _kd.I_STATUS] != _kd.OK):
        yout[:] = np.nan
        return None
    per = np.repeat(st[:, [_kd.I_ACC, _kd.I_REJ, _kd.I_NFEV]], _LOCKSTEP_BLOCK, axis=0)[:B]
    return {
        "n_accepted": int(per[:, 0].sum()),
        "n_rejected": 0,
        "n_fev": int(per[:, 2].sum()),
        "per_trajectory": per,
        "lockstep": True,
    }


def _t_reached(ring: list[np.ndarray], ist: np.ndarray, b: int) -> float:
    cap = ring[0].shape[1]
    n = int(ist[b, _kd.I_COUNT])
    if n == 0:
        return -math.inf
    return float(ring[0][b, (int(ist[b, _kd.I_HEAD]) + n - 1) % cap])


def _raise_on_status(ist: np.ndarray, ring: list[np.ndarray], kept: tuple | None = None) -> None:
    """Raise the error of the first failed member; ``kept = (frames, path)`` for a streamed
    run (the frames of every member its file keeps)."""
    st = ist[:, _kd.I_STATUS]
    if np.all(st == _kd.OK):
        return
    b = int(np.argmax(st != _kd.OK))
    tr = _t_reached(ring, ist, b)
    steps = int(ist[b, _kd.I_ACC])
    tail = "" if kept is None else f"; {kept[1]!r} keeps {kept[0]} output frame(s)"
    if st[b] == _kd.NONFINITE:
        raise NonFiniteStateError(
            f"ddeint: trajectory {b} became non-finite after t = {tr} (step {steps}){tail}",
            step=steps,
            time=tr,
        )
    why = {_kd.STEP_UNDERFLOW: "the step size underflowed", _kd.MAX_STEPS: "too many steps"}
    raise IntegrationError(
        f"ddeint: trajectory {b} stopped at t = {tr} (step {steps}): "
        f"{why.get(int(st[b]), f'status {int(st[b])}')}{tail}",
        time=tr,
    )


def _user_field(f: Any, hist: _History, t0: float, taus: np.ndarray, args: tuple) -> Any:
    """Check a user's field on the first member at t0 and return its in-place form."""
    n = _arity(f)
    if n not in (4, 5):
        raise ValueError(
            f"f must be f(t, x, xd, args) -> dx or f(t, x, xd, args, out), got {n} parameters"
        )
    d, m = hist.d, taus.size
    x0 = np.empty(d)
    xd = np.empty((m, d))
    hf = hist.hfn
    if hist.kind == _kd.H_FUNC:
        hf(t0, hist.hp[0], x0)
        for k in range(m):
            hf(t0 - taus[k], hist.hp[0], xd[k])
    else:
        h0 = (hist.hc[0], hist.hst, hist.hsy[0], hist.hsdy[0], hist.hp[0])
        _kd.history_eval(hist.kind, h0, None, t0, x0)
        for k in range(m):
            _kd.history_eval(hist.kind, h0, None, t0 - taus[k], xd[k])
    try:
        if n == 5:
            r = np.zeros(d)
            f(t0, x0, xd, args, r)
        else:
            r = f(t0, x0, xd, args)
    except Exception as exc:
        raise TypeError(f"f(t0, x0, xd, args) failed at t0 = {t0}: {exc}") from exc
    r = np.asarray(r)
    if r.shape != (d,) or not np.issubdtype(r.dtype, np.floating):
        raise ValueError(f"f must give a float array of shape ({d},), got {r.dtype} {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"f gave non-finite values at t0 = {t0}: {r}")
    return f if n == 5 else _inplace_field(f)
