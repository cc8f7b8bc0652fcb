"""Rerun a run file from its stored parameters alone.

:func:`rerun` reads ``/params`` of a run file written by the package (scalars, and the input
arrays stored beside their digests), rebuilds the model and the call that wrote it, and runs
it again into a new file. Kinds whose model is a user's function (a sweep of a user's ``fn``, a
user field, history or graphon) cannot be rebuilt: only the function's name and code digest are
stored, and :func:`rerun` says so.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .storage import open_run

__all__ = ["rerun"]


class _Missing(ValueError):
    pass


def _array(v: np.ndarray) -> Any:
    return v[()] if v.ndim == 0 else np.array(v, order="C", copy=True)


def _need(p: dict, path: str, *names: str) -> list[Any]:
    """The stored values of ``names``; a clear error naming the first one the file lacks."""
    out = []
    for name in names:
        if name not in p:
            raise ValueError(
                f"cannot rerun {path!r}: it does not store {name!r} (a file written by an "
                "older version, or an input too large to store; only its digest is kept)"
            )
        out.append(p[name])
    return out


def _user(path: str, what: str, name: Any, code: Any) -> ValueError:
    return ValueError(
        f"cannot rerun {path!r}: its {what} is a user function ({name!r}, code digest "
        f"{code!r}); a run file stores a function's name and code digest, not the function "
        "itself: call the entry point again with it"
    )


def _coupling(p: dict, path: str, n: int) -> Any:
    import scipy.sparse as sp

    from .graphs import DigraphMeasure, Graphon
    from .meanfield import Coupling

    if "coupling_graphon" in p:
        name = p["coupling_graphon"]
        if name == "user":
            raise _user(path, "graphon", "user graphon", p.get("fingerprint"))
        x, mu = _need(p, path, "coupling_x", "coupling_mu")
        w = Graphon(name, tuple(float(v) for v in p["coupling_graphon_params"]))
        return Coupling(
            DigraphMeasure(w, np.asarray(x), np.asarray(mu)),
            n,
            dtype=p["dtype"],
            pairwise=bool(p["coupling_pairwise"]),
        )
    if "coupling_indptr" in p:
        indptr, indices, data = _need(
            p, path, "coupling_indptr", "coupling_indices", "coupling_data"
        )
        return sp.csr_matrix((data, indices, indptr), shape=(n, n))
    (W,) = _need(p, path, "coupling_W")
    return np.asarray(W)


def _network(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from .meanfield import FiringRate, Kuramoto, simulate

    noisy = {}
    if "noise" in p:
        if "seed" not in p or (p["seed"] is None and "noise_key" in p):
            raise ValueError(
                f"cannot rerun {path!r}: its noise seed is not stored (a SeedSequence, or a "
                "file written by an older version; only the Philox key is kept)"
            )
        noisy = dict(noise=p["noise"], seed=p["seed"], realisations=p["realisations"])
        if p["model"] == "kuramoto":
            noisy["coupling_fn"] = p["coupling_fn"]
    n = int(p["N"])
    W = _coupling(p, path, n)
    if p["model"] == "kuramoto":
        (omega,) = _need(p, path, "omega")
        model = Kuramoto(omega, W, p["K"], alpha=p["alpha"], dtype=p["dtype"])
    else:
        (inp,) = _need(p, path, "I")
        model = FiringRate(inp, W, p["K"], activation=p["activation"], dtype=p["dtype"])
    (x0,) = _need(p, path, "state0")
    tols = {k: p[k] for k in ("rtol", "atol") if k in p}
    extra = _cli(p)
    return simulate(
        model, x0, p["t_end"], p["dt"], method=p["method"], save_every=int(p["save_every"]),
        out=out, overwrite=overwrite, extra_params=extra or None, **tols, **noisy,
    )  # fmt: skip


def _ode(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from .integrate import odeint
    from .neural import NeuralODE

    if p["field"] != "NeuralODE":
        if "field_code" in p:
            raise _user(path, "field", p["field"], p["field_code"])
        raise ValueError(f"cannot rerun {path!r}: rebuilding a {p['field']} is not supported")
    W, A, b, tl, x0, t, rtol, atol = _need(
        p, path, "W", "A", "b", "t_layers", "x0", "t", "rtol", "atol"
    )
    act, form = _need(p, path, "activation_name", "form_name")
    model = NeuralODE(None if form == "inner" else W, A, b, activation=act, t_layers=tl, form=form)
    x = x0 if p["batched"] else x0[0]
    return odeint(
        model, x, t, method=p["method"], dt=p["dt"], rtol=rtol, atol=atol,
        max_steps=int(p["max_steps"]), variational=bool(p["variational"]),
        chunk_frames=int(p["chunk_frames"]), out=out, overwrite=overwrite, extra_params=_cli(p),
    )  # fmt: skip


def _cli(p: dict) -> dict | None:
    """The command line's options a file stores (``extra_params`` of the rerun)."""
    return {k: p[k] for k in ("cli_command", "cli_options") if k in p} or None


def _call(fn: Callable, p: dict, *, skip: tuple[str, ...] = (), **given: Any) -> Any:
    """``fn(**given, **stored)`` with every stored parameter named like one of ``fn``'s
    keyword parameters (``skip`` and ``given`` aside), so an option the entry point gains
    and stores is rerun without a change here; the command line's options go through
    ``extra_params`` when ``fn`` takes it."""
    sig = inspect.signature(fn).parameters
    kw = {
        k: v
        for k, v in p.items()
        if k in sig
        and sig[k].kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and k not in skip
        and k not in given
        and k not in ("out", "overwrite", "resume", "progress", "extra_params")
    }
    if "extra_params" in sig and "extra_params" not in given:
        given["extra_params"] = _cli(p)
    return fn(**given, **kw)


def _dde_field(p: dict, path: str) -> Any:
    """The built-in delay field a ``dde`` or ``dde_lyapunov`` file records."""
    from . import delay

    if "model_code" in p:
        raise _user(path, "field", p["model"], p["model_code"])
    name = p["model"]
    if name == "MackeyGlass":
        return delay.MackeyGlass(beta=p["beta"], gamma=p["gamma"], n=p["n"])
    if name == "LinearDDE":
        A, B = _need(p, path, "A", "B")
        return delay.LinearDDE(A, B)
    if name == "NeuralDDE":
        W, A, B, b, tl, act = _need(p, path, "W", "A", "B", "b", "t_layers", "activation")
        return delay.NeuralDDE(W, A, B, b, activation=act, t_layers=tl)
    raise ValueError(f"cannot rerun {path!r}: rebuilding a {name} is not supported")


def _dde_history(p: dict, path: str) -> Any:
    """The initial function a ``dde`` or ``dde_lyapunov`` file records (constant or samples)."""
    if "history_code" in p:
        raise _user(path, "history", p["history"], p["history_code"])
    if "history_times" in p:
        return tuple(_need(p, path, "history_times", "history_values", "history_slopes"))
    (h,) = _need(p, path, "history")
    return h if p["batched"] else h[0]


def _dde(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from . import delay

    f, history = _dde_field(p, path), _dde_history(p, path)
    t, taus = _need(p, path, "t", "delays")
    return _call(
        delay.ddeint, p, skip=("f", "history", "jac", "args", "history_args"), f=f,
        history=history, t=t, delays=taus, out=out, overwrite=overwrite,
    )  # fmt: skip


def _dde_lyapunov(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from .dde_lyapunov import dde_lyapunov

    f, history = _dde_field(p, path), _dde_history(p, path)
    return _call(
        dde_lyapunov, p, skip=("jac", "args", "history_args"), f=f, history=history, out=out,
        overwrite=overwrite,
    )  # fmt: skip


def _product(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from .lyapunov import product_lyapunov

    (factors,) = _need(p, path, "factors")
    if isinstance(factors, str):
        raise _user(path, "factor sampler", factors, "not stored")
    return _call(product_lyapunov, p, skip=("steps",), factors=factors, out=out,
                 overwrite=overwrite)  # fmt: skip


def _fit(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from .fit import fit
    from .model_record import model_from_record

    X, Y = _need(p, path, "X", "Y")
    try:
        model = model_from_record(p)
    except ValueError as exc:
        raise ValueError(f"cannot rerun {path!r}: {exc}") from None
    return _call(fit, p, model=model, X=X, Y=Y, out=out, overwrite=overwrite)


def _gd(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from .training import MLP, gradient_descent

    theta0, X, Y = _need(p, path, "theta0", "X", "Y")
    mlp = MLP(tuple(int(s) for s in p["sizes"]), activation=p["activation"], loss=p["loss"])
    return gradient_descent(
        mlp, theta0, X, Y, lr=p["lr"], steps=int(p["steps"]),
        sharpness_every=int(p["sharpness_every"]), k=int(p["k"]), batch_size=p["batch_size"],
        seed=p["seed"], sharpness_tol=p["sharpness_tol"], out=out, overwrite=overwrite,
        extra_params=_cli(p),
    )  # fmt: skip


def _lyapunov(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from . import lyapunov

    cls = getattr(lyapunov, p["system"], None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, lyapunov._BuiltinSystem):
        raise ValueError(
            f"cannot rerun {path!r}: its system {p['system']!r} is a user's (its functions are "
            "stored by name and code digest only)"
        )
    system = cls(**{f.name: p[f.name] for f in dataclasses.fields(cls) if f.name in p})
    (x0,) = _need(p, path, "x0")
    span = {"steps": int(p["steps"])} if p["t_end"] is None else {"t_end": p["t_end"]}
    return lyapunov.lyapunov_spectrum(
        system, x0, k=int(p["k"]), dt=p["dt"], transient=p["transient"],
        reorth_every=int(p["reorth_every"]), n_records=int(p["n_records"]),
        n_blocks=int(p["n_blocks"]), seed=p["seed"], V0=p.get("V0"), out=out,
        overwrite=overwrite, **span,
    )  # fmt: skip


def _sgd(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from .sgd_stability import sgd_lyapunov

    (G,) = _need(p, path, "G")
    return sgd_lyapunov(
        G, p["lr"], int(p["batch_size"]), steps=int(p["steps"]), k=int(p["k"]), seed=p["seed"],
        transient=int(p["transient"]), sampling=p["sampling"], replicas=int(p["replicas"]),
        space=p["space"], rows_per_sample=int(p["rows_per_sample"]),
        reorth_every=int(p["reorth_every"]), n_blocks=int(p["n_blocks"]), level=p["level"],
        out=out, overwrite=overwrite,
    )  # fmt: skip


def _diagram(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from .sgd_stability import sgd_stability_diagram

    G, lrs, bs = _need(p, path, "G", "lrs", "batch_sizes")
    return sgd_stability_diagram(
        G, lrs, bs, steps=int(p["steps"]), k=int(p["k"]), seed=p["seed"],
        transient=int(p["transient"]), sampling=p["sampling"], replicas=int(p["replicas"]),
        rows_per_sample=int(p["rows_per_sample"]), mean_square=bool(p["mean_square"]),
        out=out, overwrite=overwrite, extra_params=_cli(p),
    )  # fmt: skip


def _limit(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    from .continuum import meanfield_limit
    from .graphs import Graphon

    (z0,) = _need(p, path, "z0")
    z = np.asarray(z0[0]) + 1j * np.asarray(z0[1])
    common = dict(K=p["K"], t_end=p["t_end"], dt=p["dt"], omega0=p["omega0"], z0=z,
                  save_every=int(p["save_every"]), out=out, overwrite=overwrite)  # fmt: skip
    if p["equation"] == "fokker_planck":
        # the moments of a wrapped Cauchy start z_n = z0^n are rebuilt from z0 = z_1
        if not np.array_equal(z, z[0] ** np.arange(1, z.size + 1, dtype=np.complex128)):
            raise ValueError(
                f"cannot rerun {path!r}: its Fokker-Planck run started from a density0 (not "
                "stored as such); rerun it with meanfield_limit(density0=...)"
            )
        common["z0"] = complex(z[0])
        return meanfield_limit(
            Graphon.constant(p["p"]), noise=p["noise"], modes=int(p["modes"]), **common
        )
    coupling = _coupling({"dtype": "float64", **p}, path, int(p["N"]))
    return meanfield_limit(coupling, gamma=p["gamma"], **common)


def _sweep(p: dict, path: str, out: Any, overwrite: bool) -> Any:
    """A sweep of one of the package's own functions (``nndyn sweep kuramoto``): the function
    by name, checked against its stored code digest, with the options it was bound to."""
    import functools
    import importlib

    import h5py

    from .sweep import _code_digest, sweep

    name, code = p.get("fn"), p.get("fn_code", "not stored")
    module, _, qualname = str(name).rpartition(".")
    target = None
    if module.split(".")[0] == "nndyn_fast" and "fn_self" not in p and "." not in qualname:
        target = getattr(importlib.import_module(module), qualname, None)
    fixed = {k[len("fixed_") :]: v for k, v in p.items() if k.startswith("fixed_")}
    opaque = any(isinstance(v, str) and v.startswith("pickle-sha256:") for v in fixed.values())
    if target is None or opaque or _code_digest(target) != code:
        raise _user(path, "swept function", name, code)
    names = list(p["grid_names"])
    cols = {n: np.asarray(p[f"grid_{n}"]) for n in names}
    if p["cartesian"]:  # the axes back from the columns of the C-order product
        shape = tuple(int(s) for s in p["grid_shape"])
        grid: Any = {
            n: cols[n].reshape(shape)[
                tuple(slice(None) if k == j else 0 for k in range(len(shape)))
            ]
            for j, n in enumerate(names)
        }
    else:
        grid = [{n: cols[n][i].item() for n in names} for i in range(int(p["n_points"]))]
    with h5py.File(path, "r") as h5:  # the columns' units and names, as the file has them
        pts = h5["points"]
        meta = {c: (str(pts[c].attrs["units"]), str(pts[c].attrs["long_name"]))
                for c in pts if c != "index" and isinstance(pts[c], h5py.Dataset)}  # fmt: skip
    fn = functools.partial(target, **fixed) if fixed else target
    return sweep(
        fn, grid, scheduler="serial", out=out, overwrite=overwrite, seed=int(p["seed"]),
        units={c: u for c, (u, _) in meta.items()},
        long_names={c: n for c, (_, n) in meta.items()}, extra_params=_cli(p),
    )  # fmt: skip


def _command(verb: str) -> Callable[[dict, str, Any, bool], Any]:
    """The rerun of a kind only ``nndyn VERB`` writes (``coupling_spectrum``,
    ``finite_size_gap``): the command again with the options its file stores (``cli_options``),
    without its figure or its printing; returns the path written."""

    def again(p: dict, path: str, out: Any, overwrite: bool) -> str:
        import contextlib
        import io
        import json

        from .cli import build_parser

        if "cli_options" not in p:
            raise ValueError(
                f"cannot rerun {path!r}: it was not written by `nndyn {verb}`, so the coupling "
                "it describes is not stored (rerun reads the options that command stores)"
            )
        o = build_parser().parse_args([verb, "--out", str(out)])
        for k, v in json.loads(p["cli_options"]).items():
            setattr(o, k, v)
        o.out, o.overwrite, o.resume, o.plot, o.progress = str(out), overwrite, False, "", False
        with contextlib.redirect_stdout(io.StringIO()):
            o.func(o)
        return str(out)

    return again


_RERUN: dict[str, Callable[[dict, str, Any, bool], Any]] = {
    "kuramoto": _network,
    "firing_rate": _network,
    "ode": _ode,
    "dde": _dde,
    "dde_lyapunov": _dde_lyapunov,
    "product_lyapunov": _product,
    "fit": _fit,
    "gradient_descent": _gd,
    "lyapunov_spectrum": _lyapunov,
    "sgd_lyapunov": _sgd,
    "sgd_stability_diagram": _diagram,
    "meanfield_limit": _limit,
    "sweep": _sweep,
    "coupling_spectrum": _command("spectrum"),
    "finite_size_gap": _command("limit"),
}


def rerun(path: str | Path, out: str | Path, *, overwrite: bool = False) -> Any:
    """Run again the computation stored in the run file ``path``, into the new file ``out``.

    Every model, option and input is read from ``path``'s ``/params`` (nothing else is
    needed); the result of the rebuilt call is returned (its rows equal the original's
    bitwise on the same machine and version).

    Kinds rebuilt: ``kuramoto`` and ``firing_rate`` (built-in couplings, with or without
    noise), ``ode`` (:class:`~nndyn_fast.neural.NeuralODE`), ``dde`` and ``dde_lyapunov``
    (MackeyGlass, LinearDDE, NeuralDDE), ``fit`` (NeuralODE, AugmentedNeuralODE, NeuralDDE),
    ``product_lyapunov`` (a stored factor array), ``gradient_descent``, ``lyapunov_spectrum``
    (built-in systems), ``sgd_lyapunov``, ``sgd_stability_diagram``, ``meanfield_limit``, and
    ``sweep`` of one of the package's functions (``nndyn sweep kuramoto``; in-process, point
    after point, since the table does not depend on the scheduler); ``coupling_spectrum`` and
    ``finite_size_gap`` files of ``nndyn spectrum`` and ``nndyn limit --particles`` (the
    command again with its stored options; the path is returned).

    Raises
    ------
    ValueError
        ``path`` holds another kind, or a run whose model is a user function (only its name and
        code digest are stored), or lacks a stored input; ``out`` is ``path``.
    """
    path = str(path)
    if Path(out).resolve() == Path(path).resolve():
        raise ValueError(f"out must be a new file, not the run file itself ({path!r})")
    with open_run(path) as f:
        kind, params = f.kind, dict(f.params)
    if kind not in _RERUN:
        raise ValueError(
            f"cannot rerun {path!r}: reruns of {kind!r} runs are not supported (supported: "
            f"{sorted(_RERUN)})"
        )
    # stored arrays as fresh, writable C arrays (the types the original call compiled for)
    params = {k: (_array(v) if isinstance(v, np.ndarray) else v) for k, v in params.items()}
    return _RERUN[kind](params, path, out, overwrite)
