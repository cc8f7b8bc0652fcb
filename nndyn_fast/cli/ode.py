"""``nndyn ode``: integrate a random built-in neural ODE (or the embedding demo) to HDF5."""

from __future__ import annotations

import argparse

import numpy as np

from nndyn_fast._validate import (
    check_int,
    check_memory,
    check_out_path,
    check_positive,
    check_seed,
    check_size,
)
from nndyn_fast.integrate import METHODS, odeint
from nndyn_fast.neural import NeuralODE
from nndyn_fast.storage import open_run

from .common import add_run_file_options, progress_enabled


def add_ode_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ode",
        help="integrate a random neural ODE batch and stream the trajectories to HDF5",
        description="dx/dt = W(t) σ(A(t) x + b(t)) (or σ(W x + b) with --form inner) with "
        "Gaussian weights, a batch of Gaussian initial states, written to --out. With "
        "--demo embedding the shear field (u, v)' = (0, u²) is integrated from (x, 0) to "
        "t = 1 and v(1) = x² is checked.",
    )
    p.add_argument(
        "--demo",
        default="random",
        choices=["random", "embedding"],
        help="random neural ODE, or the shear-field embedding check v(1) = x^2",
    )
    p.add_argument("--d", type=int, default=8, help="state dimension (default 8)")
    p.add_argument("--hidden", type=int, default=16, help="hidden width (default 16)")
    p.add_argument("--layers", type=int, default=1, help="piecewise-constant layers (default 1)")
    p.add_argument(
        "--form",
        default="outer",
        choices=["outer", "inner"],
        help="W sigma(A x + b) (outer) or sigma(W x + b) (inner)",
    )
    p.add_argument("--activation", default="tanh", help="activation (default tanh)")
    p.add_argument("--scale", type=float, default=1.5, help="weight scale (default 1.5)")
    p.add_argument("--batch", type=int, default=64, help="number of trajectories (default 64)")
    p.add_argument("--t-end", type=float, default=1.0, help="end time (default 1)")
    p.add_argument("--frames", type=int, default=101, help="output frames (default 101)")
    p.add_argument(
        "--method",
        default="dopri5",
        choices=list(METHODS),
        help="adaptive dopri5, or a fixed-step method (needs --dt)",
    )
    p.add_argument("--dt", type=float, default=None, help="step (fixed-step methods)")
    p.add_argument("--rtol", type=float, default=1e-6, help="dopri5 relative tolerance")
    p.add_argument("--atol", type=float, default=1e-9, help="dopri5 absolute tolerance")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and initial states")
    p.add_argument("--out", default="ode.h5", help="output HDF5 file (default ode.h5)")
    add_run_file_options(p, chunk_frames=True)
    p.set_defaults(func=run_ode)


def run_ode(args: argparse.Namespace) -> int:
    frames = check_size("--frames", args.frames, minimum=2)
    t_end = check_positive("--t-end", args.t_end)
    batch = check_int("--batch", args.batch, minimum=1)
    d = 2 if args.demo == "embedding" else check_int("--d", args.d, minimum=1)
    # the initial states and the solver's stages and output rows of one chunk
    check_memory(f"--batch {batch} trajectories of dimension {d}", 128.0 * batch * d)
    check_seed("--seed", args.seed)
    check_out_path("--out", args.out, overwrite=args.overwrite, resume=args.resume)
    rng = np.random.default_rng(args.seed)
    stream = {"out": args.out, "overwrite": args.overwrite, "resume": args.resume,
              "chunk_frames": args.chunk_frames, "progress": progress_enabled(args)}  # fmt: skip
    if args.demo == "embedding":
        from nndyn_fast.expressivity import PSI, shear_field

        x = np.linspace(-2.0, 2.0, batch)
        X = np.stack([x, np.zeros(batch)], axis=1)
        t = np.linspace(0.0, 1.0, frames)
        psi = (np.int64(PSI["square"]), np.int64(1))
        sol = odeint(shear_field, X, t, method=args.method, dt=args.dt, rtol=args.rtol,
                     atol=args.atol, args=psi, **stream)  # fmt: skip
        with open_run(sol.path) as run:
            v = run.read("trajectory", "value", start=frames - 1)[0][:, 1]
        print(f"embedding: max |v(1) - x^2| = {np.abs(v - x**2).max():.3e} over {batch} points")
    else:
        model = NeuralODE.random(
            args.d, args.hidden, activation=args.activation, layers=args.layers,
            scale=args.scale, form=args.form, T=t_end, seed=args.seed,
        )  # fmt: skip
        X = rng.standard_normal((batch, model.dim))
        t = np.linspace(0.0, t_end, frames)
        sol = odeint(model, X, t, method=args.method, dt=args.dt, rtol=args.rtol,
                     atol=args.atol, **stream)  # fmt: skip
    st = sol.stats
    print(
        f"wrote {sol.path}: {frames} frames x {batch} trajectories; {st['n_accepted']} steps, "
        f"{st['n_rejected']} rejected, {st['n_fev']} field evaluations"
    )
    return 0
