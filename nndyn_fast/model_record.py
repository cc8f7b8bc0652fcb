"""A built-in model's definition as run-file parameters, and the model rebuilt from them.

:func:`model_record` turns a :class:`~nndyn_fast.NeuralODE`,
:class:`~nndyn_fast.AugmentedNeuralODE` or :class:`~nndyn_fast.NeuralDDE` into scalars
(``model_activation``, ``model_form``, ``model_n_aug``) and arrays (``model_W``, ``model_A``,
``model_B``, ``model_b``, ``model_readout``, ``model_t_layers``) for
:func:`nndyn_fast.runs.start_run`; :func:`model_from_record` rebuilds the model from a run file's
``/params`` (used by :func:`nndyn_fast.rerun.rerun`). The model's class name is the ``model``
parameter. A NeuralDDE's delays are not part of the model: the entry point stores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["model_from_record", "model_record"]


def model_record(model: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(params, inputs)``: the model's class name, activation, form and augmentation, and its
    weights and layer times as arrays (enough for :func:`model_from_record` to rebuild it)."""
    from .delay import NeuralDDE
    from .neural import AugmentedNeuralODE, NeuralODE

    params: dict[str, Any] = {"model": type(model).__name__}
    inputs: dict[str, np.ndarray] = {}
    base = model.model if isinstance(model, AugmentedNeuralODE) else model
    if isinstance(base, NeuralODE):
        params.update(model_activation=base.activation, model_form=base.form)
        if base.form == "outer":
            inputs["model_W"] = base.W
        inputs.update(model_A=base.A, model_b=base.b, model_t_layers=base.t_layers)
        if isinstance(model, AugmentedNeuralODE):
            params["model_n_aug"] = int(model.n_aug)
            inputs["model_readout"] = np.asarray(model.readout)
    elif isinstance(model, NeuralDDE):
        W, A, B, b = model.layer_weights()
        params["model_activation"] = model.activation
        inputs.update(model_W=W, model_A=A, model_B=B, model_b=b, model_t_layers=model._t_layers)
    else:
        raise TypeError(
            "model must be a NeuralODE, AugmentedNeuralODE or NeuralDDE to be recorded, got "
            f"{type(model).__name__}"
        )
    return params, inputs


def model_from_record(p: Mapping[str, Any]) -> Any:
    """The model a run file's ``/params`` ``p`` records (see :func:`model_record`).

    Raises
    ------
    ValueError
        ``p`` records another model, or lacks one of the model's parameters (a file written
        before the model was recorded).
    """
    from .delay import NeuralDDE
    from .neural import AugmentedNeuralODE, NeuralODE

    name = p.get("model")
    keys = {
        "NeuralODE": ("model_activation", "model_form", "model_A", "model_b", "model_t_layers"),
        "NeuralDDE": (
            "model_activation",
            "model_W",
            "model_A",
            "model_B",
            "model_b",
            "model_t_layers",
        ),  # fmt: skip
    }
    keys["AugmentedNeuralODE"] = (*keys["NeuralODE"], "model_n_aug", "model_readout")
    if name not in keys:
        raise ValueError(f"the file records a model {name!r}, not one of {sorted(keys)}")
    missing = [k for k in keys[name] if k not in p]
    if name != "NeuralDDE" and p.get("model_form") == "outer" and "model_W" not in p:
        missing.append("model_W")
    if missing:
        raise ValueError(
            f"the file does not store the {name}'s {missing[0]!r} (a file written by an older "
            "version, or an array too large to store; only its digest is kept)"
        )
    arr = {k: np.array(p[k], dtype=np.float64, order="C") for k in p if k.startswith("model_")
           and k not in ("model_activation", "model_form", "model_n_aug")}  # fmt: skip
    if name == "NeuralDDE":
        W, A, B, b = (arr[f"model_{k}"] for k in "WABb")
        return NeuralDDE(
            W, A, B, b, activation=p["model_activation"], t_layers=arr["model_t_layers"]
        )
    form = p["model_form"]
    base = NeuralODE(
        None if form == "inner" else arr["model_W"], arr["model_A"], arr["model_b"],
        activation=p["model_activation"], t_layers=arr["model_t_layers"], form=form,
    )  # fmt: skip
    if name == "AugmentedNeuralODE":
        return AugmentedNeuralODE(base, int(p["model_n_aug"]), arr["model_readout"])
    return base
