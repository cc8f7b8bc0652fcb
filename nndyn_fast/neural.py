"""Neural ODE models: ``NeuralODE``, ``AugmentedNeuralODE``, ``flow_map``, ``flow_jacobian``.

A neural ODE reads a network's input-output map as the time-T flow map ``Φ_T`` of
``dx/dt = f(x, t)``; the weights are constant or piecewise constant in time (a stack of L layers
on the grid ``t_layers`` over [t_0, T]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._validate import (
    as_array,
    check_bool,
    check_int,
    check_memory,
    check_option,
    check_positive,
    check_seed,
    check_time_grid,
)
from .integrate import odeint
from .kernels import neural as _kn
from .kernels.activations import ACTIVATIONS

__all__ = ["NeuralODE", "AugmentedNeuralODE", "flow_map", "flow_jacobian"]

_FORMS = {"outer": _kn.FORM_OUTER, "inner": _kn.FORM_INNER}


def _stack(name: str, value: Any, ndim: int) -> np.ndarray:
    arr = as_array(name, value, ndim=(ndim, ndim + 1))
    return arr[None] if arr.ndim == ndim else arr


@dataclass(frozen=True, eq=False)
class NeuralODE:
    """Neural vector field ``f(x, t) = W(t) σ(A(t) x + b(t))`` (form ``"outer"``), or
    ``f(x, t) = σ(A(t) x + b(t))`` (form ``"inner"``, build with :meth:`inner`).

    Parameters
    ----------
    W : (d, H) or (L, d, H) output weights (``None`` for the inner form).
    A : (H, d) or (L, H, d) input weights; for the inner form (d, d) or (L, d, d).
    b : (H,) or (L, H) biases.
    activation : one of ``identity``, ``tanh``, ``relu``, ``softplus``, ``sigmoid``, ``gelu``.
    t_layers : (L + 1,) increasing times; layer l acts on [t_layers[l], t_layers[l+1]) (the
        first and last layers extend beyond). Default ``linspace(0, T, L + 1)``.
    T : end time of the default layer grid (default 1).
    form : ``"outer"`` or ``"inner"``.

    The Jacobian is ``Df = W diag(σ'(A x + b)) A`` (outer) or ``diag(σ'(A x + b)) A`` (inner).
    """

    W: Any
    A: Any
    b: Any
    activation: str = "tanh"
    t_layers: Any = None
    T: float = 1.0
    form: str = "outer"
    _model: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_option("form", self.form, _FORMS)
        check_option("activation", self.activation, ACTIVATIONS)
        T = check_positive("T", self.T)
        A = _stack("A", self.A, 2)
        b = _stack("b", self.b, 1)
        L, H, d = A.shape
        if self.form == "outer":
            if self.W is None:
                raise ValueError("W is required for form 'outer' (use NeuralODE.inner otherwise)")
            W = _stack("W", self.W, 2)
            if W.shape != (L, d, H):
                raise ValueError(f"W must have shape ({d}, {H}) or ({L}, {d}, {H}), got {W.shape}")
        else:
            if self.W is not None:
                raise ValueError("W must be None for form 'inner' (the matrix goes in A)")
            if H != d:
                raise ValueError(f"A must be square for form 'inner', got shape {A.shape[1:]}")
            W = np.zeros((L, 0, 0))
        if b.shape != (L, H):
            raise ValueError(f"b must have shape ({H},) or ({L}, {H}), got {b.shape}")
        if self.t_layers is None:
            tl = np.linspace(0.0, T, L + 1)
        else:
            tl = check_time_grid("t_layers", self.t_layers)
            if tl.shape != (L + 1,):
                raise ValueError(f"t_layers must have shape ({L + 1},), got {tl.shape}")
        model = (
            np.ascontiguousarray(W),
            np.ascontiguousarray(W.transpose(0, 2, 1)),
            np.ascontiguousarray(A),
            np.ascontiguousarray(A.transpose(0, 2, 1)),
            np.ascontiguousarray(b),
            int(ACTIVATIONS[self.activation]),
            int(_FORMS[self.form]),
        )
        object.__setattr__(self, "W", None if self.form == "inner" else W)
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "t_layers", tl)
        object.__setattr__(self, "T", float(tl[-1]))
        object.__setattr__(self, "_model", model)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def inner(
        cls, W: Any, b: Any, activation: str = "tanh", *, t_layers: Any = None, T: float = 1.0
    ) -> NeuralODE:
        """The field ``f(x, t) = σ(W(t) x + b(t))`` with W (d, d) or (L, d, d), b (d,)/(L, d)."""
        return cls(None, W, b, activation, t_layers=t_layers, T=T, form="inner")

    @classmethod
    def random(
        cls,
        d: int,
        hidden: int | None = None,
        *,
        activation: str = "tanh",
        layers: int = 1,
        scale: float = 1.0,
        form: str = "outer",
        T: float = 1.0,
        seed: int = 0,
    ) -> NeuralODE:
        """Gaussian weights with variance ``scale² / fan_in`` (biases ``N(0, 0.1²)``)."""
        d = check_int("d", d, minimum=1)
        H = d if hidden is None or form == "inner" else check_int("hidden", hidden, minimum=1)
        layers = check_int("layers", layers, minimum=1)
        scale = check_positive("scale", scale)
        check_option("form", form, _FORMS)
        check_memory(f"{layers} layer(s) of width {H} on d = {d}", 32.0 * layers * H * (d + 1))
        rng = np.random.default_rng(check_seed("seed", seed))
        A = rng.standard_normal((layers, H, d)) * scale / np.sqrt(d)
        b = 0.1 * rng.standard_normal((layers, H))
        if form == "inner":
            return cls.inner(A, b, activation, T=T)
        W = rng.standard_normal((layers, d, H)) * scale / np.sqrt(H)
        return cls(W, A, b, activation, T=T, form=form)

    # -- properties -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """State dimension d."""
        return int(self.A.shape[2])

    @property
    def n_layers(self) -> int:
        return int(self.A.shape[0])

    def _kernel_model(self) -> tuple:
        return self._model

    def _tstops(self) -> np.ndarray:
        return np.ascontiguousarray(self.t_layers[1:-1])

    def _prepare_state(self, x: np.ndarray) -> np.ndarray:
        if x.shape[-1] != self.dim:
            raise ValueError(f"x0 must have {self.dim} columns for this model, got {x.shape}")
        return x

    def _layer(self, t: float) -> int:
        return int(np.sum(self._tstops() <= t))

    # -- evaluation -----------------------------------------------------------------------
    def __call__(self, x: Any, t: float = 0.0) -> np.ndarray:
        """``f(x, t)`` for x of shape (d,) or (B, d)."""
        X = as_array("x", x, ndim=(1, 2))
        X2 = np.ascontiguousarray(self._prepare_state(X).reshape(-1, self.dim))
        out = np.empty_like(X2)
        _kn.neural_field_batch(self._model, self._layer(float(t)), X2, out)
        return out.reshape(X.shape)

    def jacobian(self, x: Any, t: float = 0.0) -> np.ndarray:
        """Analytic Jacobian ``Df(x)`` (d, d) at one state x (d,)."""
        X = as_array("x", x, shape=(self.dim,))
        J = np.empty((self.dim, self.dim))
        pre = np.empty(self.A.shape[1])
        _kn.neural_jacobian(self._model, self._layer(float(t)), X, J, pre)
        return J


@dataclass(frozen=True, eq=False)
class AugmentedNeuralODE:
    """Augmented neural ODE: lift ``R^n -> R^(n+q)`` by zero padding, flow, read out linearly.

    ``F(x) = R Φ_T((x, 0))`` where ``Φ_T`` is the flow of ``model`` (a :class:`NeuralODE` on
    ``R^(n+q)``) and ``R`` (p, n+q) the readout (default the identity).

    Parameters
    ----------
    model : NeuralODE of state dimension ``n + n_aug``.
    n_aug : number q >= 1 of extra (zero-initialised) dimensions.
    readout : (p, n + q) readout matrix, or ``None`` for the whole state.
    """

    model: NeuralODE
    n_aug: int
    readout: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, NeuralODE):
            raise TypeError(f"model must be a NeuralODE, got {type(self.model).__name__}")
        q = check_int("n_aug", self.n_aug, minimum=1)
        m = self.model.dim
        if q >= m:
            raise ValueError(f"n_aug must be < the model dimension {m}, got {q}")
        R = np.eye(m) if self.readout is None else as_array("readout", self.readout, ndim=2)
        if R.shape[1] != m:
            raise ValueError(f"readout must have shape (p, {m}), got {R.shape}")
        object.__setattr__(self, "n_aug", q)
        object.__setattr__(self, "readout", R)

    @property
    def dim(self) -> int:
        """State dimension n + q of the flow."""
        return self.model.dim

    @property
    def n_in(self) -> int:
        """Input dimension n."""
        return self.model.dim - self.n_aug

    @property
    def T(self) -> float:
        return self.model.T

    @property
    def t_layers(self) -> np.ndarray:
        return self.model.t_layers

    def lift(self, X: Any) -> np.ndarray:
        """Zero padding ``x -> (x, 0)`` for x of shape (n,) or (B, n)."""
        X = as_array("X", X, ndim=(1, 2))
        if X.shape[-1] != self.n_in:
            raise ValueError(f"X must have {self.n_in} columns, got shape {X.shape}")
        pad = np.zeros((*X.shape[:-1], self.n_aug))
        return np.ascontiguousarray(np.concatenate([X, pad], axis=-1))

    def _kernel_model(self) -> tuple:
        return self.model._kernel_model()

    def _tstops(self) -> np.ndarray:
        return self.model._tstops()

    def _prepare_state(self, x: np.ndarray) -> np.ndarray:
        if x.shape[-1] == self.n_in:
            return self.lift(x)
        return self.model._prepare_state(x)


Model = NeuralODE | AugmentedNeuralODE


def _check_model(model: Any) -> None:
    if not isinstance(model, (NeuralODE, AugmentedNeuralODE)):
        raise TypeError(
            f"model must be a NeuralODE or AugmentedNeuralODE, got {type(model).__name__}"
        )


def _flow(model, X, T, method, rtol, atol, dt, variational):
    _check_model(model)
    X = as_array("X", X, ndim=(1, 2))
    t0 = float(model.t_layers[0])
    T = model.T if T is None else check_positive("T", T)
    if not T > t0:
        raise ValueError(f"T must be > the start time {t0} of the model, got {T}")
    if isinstance(model, AugmentedNeuralODE):
        if X.shape[-1] != model.n_in:
            raise ValueError(f"X must have {model.n_in} columns, got shape {X.shape}")
        Z = model.lift(X)
    else:
        Z = model._prepare_state(X)
    sol = odeint(
        model, Z, np.array([t0, T]), method=method, rtol=rtol, atol=atol, dt=dt,
        variational=variational,
    )  # fmt: skip
    return sol


def flow_map(
    model: Model,
    X: Any,
    T: float | None = None,
    *,
    method: str = "dopri5",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    dt: float | None = None,
) -> np.ndarray:
    """The time-T flow map ``Φ_T(X)`` of a neural ODE started at ``t_layers[0]``.

    For an :class:`AugmentedNeuralODE` this is ``R Φ_T((x, 0))``. ``X`` is (n,) or (B, n);
    the result is (d,)/(B, d) (or (p,)/(B, p) with a readout). ``T`` defaults to the end of the
    model's layer grid. Solver options as in :func:`~nndyn_fast.odeint`.
    """
    sol = _flow(model, X, T, method, rtol, atol, dt, False)
    y = sol.y[-1]
    if isinstance(model, AugmentedNeuralODE):
        y = y @ model.readout.T
    return y


def flow_jacobian(
    model: Model,
    X: Any,
    T: float | None = None,
    *,
    method: str = "dopri5",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    dt: float | None = None,
    return_flow: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Jacobian ``dΦ_T/dx`` of the flow map from the variational equation.

    ``dV/dt = Df(x(t)) V`` with ``V(t_0) = I`` is integrated alongside the state (the analytic
    Jacobian of the field, the same step-size control on state and tangents). For an
    :class:`AugmentedNeuralODE` the result is ``R V[:, :n]`` (the lift's derivative is the
    embedding ``[I; 0]``). ``X`` (n,) or (B, n) gives (p, n) or (B, p, n). With
    ``return_flow`` also returns ``flow_map(model, X, T)``.
    """
    return_flow = check_bool("return_flow", return_flow)
    sol = _flow(model, X, T, method, rtol, atol, dt, True)
    J = sol.jac[-1]
    y = sol.y[-1]
    if isinstance(model, AugmentedNeuralODE):
        J = model.readout @ J[..., : model.n_in]
        y = y @ model.readout.T
    return (J, y) if return_flow else J
