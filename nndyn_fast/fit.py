"""Fitting neural ODEs and neural DDEs to data with exact gradients: ``fit`` (L-BFGS-B or Adam).

The loss is ``ℓ(θ) = 1/(2B) sum_i ||F_θ(x_i) - y_i||^2`` with ``F_θ`` the (readout of the)
flow map computed by the chosen integrator, or the time-T map of a neural DDE with the
constant history ``x_i``, and ``∇ℓ`` its discrete adjoint
(:func:`nndyn_fast.gradients.loss_and_grad`, :func:`nndyn_fast.dde_gradients.dde_loss_and_grad`),
so the optimiser sees the exact gradient of the discrete map it evaluates.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import (
    as_array,
    check_bool,
    check_int,
    check_option,
    check_positive,
    check_seed,
)
from .dde_gradients import dde_loss_and_grad, dde_model_params, dde_with_params
from .delay import NeuralDDE, _delays
from .errors import NonFiniteStateError
from .gradients import _base, loss_and_grad, model_params, with_params
from .model_record import model_record
from .neural import AugmentedNeuralODE, NeuralODE
from .runs import restore_rng, rng_state, start_run
from .storage import open_run

__all__ = ["FitResult", "fit"]

_OPTIMISERS = ("lbfgs", "adam")
_SOLVERS = ("euler", "rk2", "rk4", "dopri5")
_DDE_SOLVERS = ("rk4", "dopri5")


@dataclass(frozen=True)
class FitResult:
    """A fit: the trained ``model``, the loss after each iteration (``loss[0]`` at the start)
    and the gradient norms, the optimiser's message and the run file (or None)."""

    model: Any
    loss: np.ndarray
    grad_norm: np.ndarray
    message: str
    path: Any


def _flat(params: dict) -> np.ndarray:
    return np.concatenate([np.ravel(v) for v in params.values()])


def _unflat(template: dict, theta: np.ndarray) -> dict:
    out, k = {}, 0
    for name, v in template.items():
        n = v.size
        out[name] = theta[k : k + n].reshape(v.shape).copy()
        k += n
    return out


def fit(
    model: NeuralODE | AugmentedNeuralODE | NeuralDDE,
    X: Any,
    Y: Any,
    *,
    T: float | None = None,
    delays: Any = None,
    method: str = "lbfgs",
    steps: int = 200,
    solver: str = "rk4",
    solver_steps: int = 20,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    checkpoints: int | None = None,
    lr: float = 1e-2,
    batch_size: int | None = None,
    gtol: float = 1e-10,
    seed: int = 0,
    commit_every: int = 10,
    out: Any = None,
    overwrite: bool = False,
    resume: bool = False,
    extra_params: dict[str, Any] | None = None,
) -> FitResult:
    """Minimise ``ℓ(θ) = 1/(2B) sum_i ||F_θ(x_i) - y_i||^2`` over the model's weights.

    Parameters
    ----------
    model : :class:`NeuralODE` or :class:`AugmentedNeuralODE` (weights and readout trained;
        the layer grid, activation and form kept), or :class:`~nndyn_fast.NeuralDDE` (``W``,
        ``A``, ``B``, ``b`` trained; ``F_θ(x)`` is ``x(T)`` of
        ``ddeint(model, x, [0, T], delays=delays)`` with the constant history ``x``).
    X : (B, n) inputs; Y : (B, p) targets, finite (p = n = d for a NeuralDDE).
    T : end time of the flow (default the model's; for a NeuralDDE the end of its layer grid).
    delays : the NeuralDDE's delays (required for one, refused for an ODE).
    method : ``"lbfgs"`` (scipy's L-BFGS-B, ``steps`` iterations at most, stops early at
        ``gtol``) or ``"adam"`` (``steps`` steps of size ``lr``, full batch or mini-batches of
        ``batch_size`` drawn from ``default_rng(seed)``).
    solver, solver_steps, rtol, atol : the integrator (``rk4``/``rk2``/``euler`` with
        ``solver_steps`` steps, or ``dopri5`` with ``rtol``/``atol``); a NeuralDDE takes
        ``rk4`` with ``dt = T / solver_steps`` or ``dopri5`` (steps at most the shortest
        delay), as :func:`~nndyn_fast.dde_gradients.dde_loss_and_grad`.
    checkpoints : the memory of a neural ODE's gradient, as in
        :func:`~nndyn_fast.gradients.loss_and_grad`: None (every step's stages while they
        fit the tape's budget, else 32 checkpoint slots) or the number of slots; every choice
        gives the same bits; for a NeuralDDE the delay windows kept, as in
        :func:`~nndyn_fast.dde_gradients.dde_loss_and_grad` (None: 16).
    commit_every : iterations per committed chunk of the run file.
    out, overwrite, resume : stream the loss curve to a run file (kind ``fit``: series
        ``loss`` with step, loss, grad_norm; the parameters hold what rebuilds the model from
        the stored ``theta0`` (for a NeuralDDE its activation, layer shapes, ``t_layers`` and
        ``delays``); the checkpoint holds the parameters and, for Adam,
        its moments and the generator state). An Adam run resumed after a kill is bitwise the
        uninterrupted one; an L-BFGS run resumes from the stored parameters with a fresh
        optimiser (its curvature memory is not stored), so it continues the descent but not
        bitwise. The file records the model (class, activation, form, weights, layer times,
        readout) and every option, so :func:`nndyn_fast.rerun` repeats the fit.
    extra_params : JSON-able options stored in the run file's ``/params`` beside the run's own
        (the command line's options).

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError for bad shapes, NaN data, an unknown method or solver; NonFiniteStateError when
    the loss turns non-finite.
    """
    dde = isinstance(model, NeuralDDE)
    if dde:
        if delays is None:
            raise ValueError("delays must be given to fit a NeuralDDE: its m delays")
        taus = _delays(delays)
        if taus.size != model.n_delays:
            raise ValueError(
                f"delays must hold the NeuralDDE's {model.n_delays} delay(s), got {taus.size}"
            )
    else:
        _base(model)
        if delays is not None:
            raise ValueError("delays are for a NeuralDDE; a neural ODE takes none")
    method = check_option("method", method, _OPTIMISERS)
    solver = check_option("solver", solver, _DDE_SOLVERS if dde else _SOLVERS)
    steps = check_int("steps", steps, minimum=1)
    solver_steps = check_int("solver_steps", solver_steps, minimum=1)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    if checkpoints is not None:
        checkpoints = check_int("checkpoints", checkpoints, minimum=1)
    lr, gtol = check_positive("lr", lr), check_positive("gtol", gtol)
    seed = check_seed("seed", seed)
    commit_every = check_int("commit_every", commit_every, minimum=1)
    overwrite, resume = check_bool("overwrite", overwrite), check_bool("resume", resume)
    if extra_params is not None and not isinstance(extra_params, dict):
        raise TypeError(f"extra_params must be a dict or None, got {type(extra_params).__name__}")
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")
    X = as_array("X", X, ndim=2)
    Y = as_array("Y", Y, ndim=2)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows, got {X.shape}, {Y.shape}")
    n = X.shape[0]
    if batch_size is not None:
        if method != "adam":
            raise ValueError("batch_size is for method 'adam'")
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if batch_size > n:
            raise ValueError(f"batch_size must be <= the number of points {n}, got {batch_size}")
    if dde:
        T_end = float(model._t_layers[-1] if T is None else check_positive("T", T))
        sopts: dict = (
            {"method": "dopri5", "rtol": rtol, "atol": atol}
            if solver == "dopri5"
            else {"method": "rk4", "dt": T_end / solver_steps}
        )
        sopts["delays"] = taus
        sopts["checkpoints"] = checkpoints
        template = dde_model_params(model)
        rebuild, lossgrad = dde_with_params, dde_loss_and_grad
    else:
        T_end = float(_base(model).T if T is None else T)
        sopts = (
            {"method": "dopri5", "rtol": rtol, "atol": atol}
            if solver == "dopri5"
            else {"method": solver, "steps": solver_steps}
        )
        sopts["checkpoints"] = checkpoints
        template = model_params(model)
        rebuild, lossgrad = with_params, loss_and_grad
    theta = _flat(template)

    def value_grad(th: np.ndarray, idx: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        m = rebuild(model, _unflat(template, th))
        Xb, Yb = (X, Y) if idx is None else (X[idx], Y[idx])
        loss, g = lossgrad(m, Xb, Yb, T, **sopts)
        return loss, _flat({k: g.params[k] for k in template})

    loss0, g0 = value_grad(theta)  # checks the shapes before a file is made
    rng = np.random.default_rng(seed) if batch_size is not None else None
    state = {"theta": theta.copy(), "step": 0, "m": np.zeros_like(theta),
             "v": np.zeros_like(theta)}  # fmt: skip
    if rng is not None:
        state["rng"] = rng_state(rng)
    run = None
    if out is not None:
        mparams, minputs = model_record(model)  # the model's definition, enough to rebuild it
        run = start_run(
            out,
            kind="fit",
            params={
                "model": type(model).__name__,
                "method": method,
                "steps": steps,
                "solver": solver,
                "solver_steps": solver_steps,
                "rtol": rtol,
                "atol": atol,
                "checkpoints": checkpoints,
                "lr": lr,
                "batch_size": batch_size,
                "gtol": gtol,
                "seed": seed,
                "T": T_end,
                **mparams,
                **(extra_params or {}),
            },
            inputs={
                "theta0": theta,
                "X": X,
                "Y": Y,
                **minputs,
                **({"delays": np.asarray(sopts["delays"], float)} if dde else {}),
            },
            series={
                "loss": {
                    "step": {"dtype": np.int64, "long_name": "optimiser iteration"},
                    "loss": {"units": "1", "long_name": "loss 1/(2B) sum_i ||F(x_i) - y_i||^2"},
                    "grad_norm": {"units": "1", "long_name": "gradient norm ||grad loss||_2"},
                }
            },
            description=(
                f"fit of the {type(model).__name__} to {X.shape[0]} samples by {method} with exact "
                f"(discrete adjoint) gradients through the {solver} flow map; the loss and "
                "gradient norm at every iteration"
            ),
            rows={"loss": steps + 1},
            checkpoint=state,
            resume=resume,
            overwrite=overwrite,
        )
        ck = run.checkpoint
        state = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in ck.items()}
        state["step"] = int(state["step"])
        if rng is not None:
            rng = restore_rng(state["rng"])
    losses: list[float] = []
    gnorms: list[float] = []
    message = ""

    def record(step: int, loss: float, g: np.ndarray) -> None:
        if not np.isfinite(loss) or not np.all(np.isfinite(g)):
            raise NonFiniteStateError(
                f"fit: the loss or its gradient is not finite at iteration {step}",
                step=step,
                time=float(step),
            )
        gn = float(np.linalg.norm(g))
        losses.append(loss)
        gnorms.append(gn)
        if run is not None:
            run.append("loss", step=np.array([step]), loss=np.array([loss]),
                       grad_norm=np.array([gn]))  # fmt: skip

    with run if run is not None else nullcontext():
        th = np.array(state["theta"], dtype=float)
        if state["step"] == 0 and (run is None or run.rows["loss"] == 0):
            lo, go = (loss0, g0) if np.array_equal(th, theta) else value_grad(th)
            record(0, lo, go)
            if run is not None:
                run.commit(**state)
        if method == "adam":
            m, v = np.array(state["m"], float), np.array(state["v"], float)
            b1, b2, eps = 0.9, 0.999, 1e-8
            for k in range(state["step"] + 1, steps + 1):
                idx = None
                if rng is not None:
                    idx = np.sort(rng.choice(n, size=batch_size, replace=False))
                _, g = value_grad(th, idx)
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                th = th - lr * (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + eps)
                lk, gk = value_grad(th)  # the full-batch loss after the step
                record(k, lk, gk)
                if run is not None and (k % commit_every == 0 or k == steps):
                    ck = {"theta": th.copy(), "step": k, "m": m.copy(), "v": v.copy()}
                    if rng is not None:
                        ck["rng"] = rng_state(rng)
                    run.commit(**ck)
            message = f"adam: {steps} steps"
        else:
            from scipy.optimize import minimize

            done = state["step"]
            cache: dict = {}

            def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
                lo, go = value_grad(x)
                cache["x"], cache["f"], cache["g"] = x.copy(), lo, go
                return lo, go

            it = [done]

            def callback(xk: np.ndarray) -> None:
                it[0] += 1
                if "x" in cache and np.array_equal(cache["x"], xk):
                    lo, go = cache["f"], cache["g"]
                else:
                    lo, go = value_grad(xk)
                record(it[0], lo, go)
                if run is not None and (it[0] % commit_every == 0 or it[0] == steps):
                    run.commit(theta=xk.copy(), step=it[0], m=state["m"], v=state["v"])

            if done < steps:
                res = minimize(fun, th, jac=True, method="L-BFGS-B", callback=callback,
                               options={"maxiter": steps - done, "gtol": gtol,
                                        "ftol": 0.0})  # fmt: skip
                th = res.x
                message = f"lbfgs: {res.message}"
                if run is not None:
                    run.commit(theta=th.copy(), step=it[0], m=state["m"], v=state["v"])
            else:
                message = "lbfgs: already complete"
        if run is not None:
            run.summarize(final_loss=float(value_grad(th)[0]), message=message)
    trained = rebuild(model, _unflat(template, th))
    if run is not None:
        with open_run(run.path) as f:
            return FitResult(trained, f.read("loss", "loss"), f.read("loss", "grad_norm"),
                             message, run.path)  # fmt: skip
    return FitResult(trained, np.array(losses), np.array(gnorms), message, None)
