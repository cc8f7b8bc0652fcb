"""``nndyn kuramoto`` and ``nndyn plot``: build a network from options, run it, plot a run."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from nndyn_fast._validate import (
    check_memory,
    check_option,
    check_out_path,
    check_positive,
    check_real,
    check_seed,
    check_size,
    load_npy,
)
from nndyn_fast.meanfield import FiringRate, Kuramoto, simulate
from nndyn_fast.storage import open_run

from .common import (
    GRAPHS,
    add_coupling_options,
    add_run_file_options,
    build_coupling,
    progress_enabled,
)

FREQUENCIES = ("lorentzian", "normal", "uniform")


def add_kuramoto_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kuramoto",
        help="simulate a Kuramoto (or firing-rate) network and stream it to HDF5",
        description="dθ_i/dt = ω_i + (K/N) Σ_j W_ij sin(θ_j − θ_i − α). The default run "
        "(N = 10000 all-to-all, Lorentzian frequencies of half-width 0.5, K = 2) compares the "
        "final order parameter with the Ott–Antonsen value sqrt(1 − 2γ/K).",
    )
    p.add_argument(
        "--model",
        default="phase",
        choices=["phase", "rate"],
        help="phase oscillators (default) or firing-rate network",
    )
    p.add_argument("--N", type=int, default=10000, help="number of nodes (default 10000)")
    p.add_argument("--K", type=float, default=2.0, help="coupling strength (default 2)")
    p.add_argument("--alpha", type=float, default=0.0, help="phase lag in radians (default 0)")
    p.add_argument(
        "--freq",
        default="lorentzian",
        help=f"frequencies: one of {list(FREQUENCIES)} or a .npy file (default "
        "lorentzian); for --model rate these are the inputs I_i",
    )
    p.add_argument(
        "--width",
        type=float,
        default=0.5,
        help="half-width γ (lorentzian), std (normal) or half-range (uniform)",
    )
    add_coupling_options(p)
    p.add_argument("--activation", default="tanh", help="activation of --model rate")
    p.add_argument(
        "--dt",
        type=float,
        default=0.05,
        help="time step (default 0.05); with --method dopri5/dop853 the save interval",
    )
    p.add_argument("--t-end", type=float, default=100.0, help="end time (default 100)")
    p.add_argument(
        "--method",
        default=None,
        choices=["rk4", "euler", "dopri5", "dop853", "em", "heun"],
        help="fixed steps (rk4, euler) or adaptive steps with dense output (dopri5, dop853); "
        "with --noise: stochastic Heun (heun, the default then) or Euler–Maruyama (em)",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=None,
        help="σ of additive white noise σ dB_i on every node (a stochastic run; seeded by --seed; "
        "default: none, a deterministic run)",
    )
    p.add_argument(
        "--realisations",
        type=int,
        default=None,
        help="with --noise: this many independent realisations in one run (in parallel; default: "
        "one, without a realisation axis)",
    )
    p.add_argument("--rtol", type=float, default=None, help="dopri5/dop853: default 1e-6")
    p.add_argument("--atol", type=float, default=None, help="dopri5/dop853: default 1e-9")
    p.add_argument(
        "--save-every", type=int, default=20, help="save phases every n steps (n save intervals)"
    )
    p.add_argument(
        "--dtype",
        default="float64",
        choices=["float64", "float32"],
        help="precision of stored weights",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of frequencies, phases, graphs")
    p.add_argument("--out", default="run.h5", help="output HDF5 file (default run.h5)")
    add_run_file_options(
        p,
        resume_help="continue the run in --out from its last committed chunk, with the options "
        "stored in the file",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_kuramoto)


_RUN_OPTIONS = (
    "model",
    "N",
    "K",
    "alpha",
    "freq",
    "width",
    "graph",
    "p",
    "r",
    "gamma",
    "representation",
    "activation",
    "dt",
    "t_end",
    "method",
    "rtol",
    "atol",
    "save_every",
    "dtype",
    "seed",
    "noise",
    "realisations",
)


def _frequencies(kind: str, n: int, width: float, rng: np.random.Generator) -> np.ndarray:
    if kind.endswith(".npy"):
        omega = load_npy("--freq", kind)
        if omega.shape != (n,):
            raise ValueError(f"--freq file holds shape {omega.shape}, expected ({n},)")
        return omega
    check_option("--freq", kind, FREQUENCIES)
    if kind == "lorentzian":
        return width * rng.standard_cauchy(n)
    if kind == "normal":
        return width * rng.standard_normal(n)
    return rng.uniform(-width, width, n)


def _graph(o: argparse.Namespace) -> Any:
    return build_coupling(o, o.N, o.dtype)


def run_kuramoto(o: argparse.Namespace) -> int:
    if o.resume:
        with open_run(o.out) as run:
            stored = run.params.get("cli_options")
        if stored is None:
            raise ValueError(f"{o.out!r} was not written by `nndyn kuramoto`; cannot resume it")
        for key, value in json.loads(stored).items():
            setattr(o, key, value)
    # frequencies, phases, the state and the O(N) sums of a matrix-free graphon
    n = check_size("--N", o.N, item_bytes=128)
    check_positive("--dt", o.dt)
    check_positive("--t-end", o.t_end)
    check_positive("--width", o.width)
    check_seed("--seed", o.seed)
    if o.graph == "erdos-renyi":
        check_real("--p", o.p, low=0.0, high=1.0)
    if o.graph in GRAPHS and o.graph != "erdos-renyi" and o.representation == "dense":
        check_memory(f"a dense --N {n} x {n} coupling matrix", 16.0 * n * n)
    check_out_path("--out", o.out, overwrite=o.overwrite, resume=o.resume)
    rng = np.random.default_rng(o.seed)
    drive = _frequencies(o.freq, n, o.width, rng)
    theta0 = rng.uniform(0.0, 2.0 * np.pi, n)
    coupling = _graph(o)
    if o.model == "phase":
        model = Kuramoto(drive, coupling, o.K, o.alpha, dtype=o.dtype)
    else:
        model = FiringRate(drive, coupling, o.K, o.activation, dtype=o.dtype)
        theta0 = rng.standard_normal(n)
    options = {k: getattr(o, k) for k in _RUN_OPTIONS}
    result = simulate(
        model,
        theta0,
        o.t_end,
        o.dt,
        method=o.method,
        rtol=o.rtol,
        atol=o.atol,
        save_every=o.save_every,
        **({} if o.noise is None else {"noise": o.noise, "seed": o.seed}),
        **({} if o.realisations is None else {"realisations": o.realisations}),
        out=o.out,
        overwrite=o.overwrite,
        resume=o.resume,
        progress=not o.quiet and progress_enabled(o),
        extra_params={"cli_command": "kuramoto", "cli_options": json.dumps(options)},
    )
    with open_run(result.path) as run:
        rows = run.rows["observables"]
        tail = run.read("observables", "value", max(0, rows - max(1, rows // 5)))
        t_last = float(run.read("observables", "time", rows - 1)[0])
    names = model.observables
    if tail.ndim == 3:  # realisations: their mean
        tail = tail.mean(axis=1)
    mean_last = tail[:, 0].mean()
    st = result.stats
    done = f"{result.steps} steps" if st is None else f"{st['n_accepted']} adaptive steps"
    print(f"wrote {result.path}: {done} to t = {t_last:g}, N = {n}")
    print(
        f"final {names[0]} = {tail[-1, 0]:.4f} (mean over the last 20% of steps: {mean_last:.4f})"
    )
    if (
        o.model == "phase"
        and o.freq == "lorentzian"
        and o.graph == "complete"
        and o.alpha == 0.0
        and o.noise is None
    ):
        kc = 2.0 * o.width
        theory = np.sqrt(1.0 - kc / o.K) if o.K > kc else 0.0
        print(f"Ott–Antonsen prediction for N → ∞: r = {theory:.4f} (K_c = 2γ = {kc:g})")
    return 0
