"""``nndyn ode``: integrate a random built-in neural ODE (or the embedding demo) to HDF5."""

from __future__ import annotations

import argparse
import json

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

from .common import add_run_file_options, cli_params, progress_enabled


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
    p.add_argument(
        "--dt",
        type=float,
        default=None,
        help="largest step of fixed-step methods (default: one step per frame interval); "
        "dopri5: first step (default: chosen automatically)",
    )
    p.add_argument("--rtol", type=float, default=1e-6, help="dopri5 relative tolerance")
    p.add_argument("--atol", type=float, default=1e-9, help="dopri5 absolute tolerance")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and initial states")
    p.add_argument("--out", default="ode.h5", help="output HDF5 file (default ode.h5)")
    add_run_file_options(p, chunk_frames=True)
    p.set_defaults(func=run_ode)
    sub_ode = p.add_subparsers(dest="ode_command", metavar="{fit}")
    f = sub_ode.add_parser(
        "fit",
        help="fit a neural ODE to data (exact gradients; L-BFGS or Adam), loss curve to HDF5",
        description="Minimise 1/(2B) sum ||F(x_i) - y_i||^2 over the weights of a random "
        "neural ODE (with --aug q: augmented by q zero dimensions, a trained linear readout) "
        "by L-BFGS-B or Adam on the discrete adjoint of the integrator. Data from --x/--y "
        "(.npy, (B, n) and (B, p)) or the task x -> x^2 on --points points of [-1, 1]. The "
        "loss curve streams to --out.",
    )
    f.add_argument("--x", default=None, help="inputs (.npy, shape (B, n); default: the x^2 task)")
    f.add_argument("--y", default=None, help="targets (.npy, shape (B, p); default: the x^2 task)")
    f.add_argument("--points", type=int, default=21, help="points of the x^2 task (default 21)")
    f.add_argument("--hidden", type=int, default=8, help="hidden width (default 8)")
    f.add_argument("--aug", type=int, default=0, help="augmented dimensions q (default 0)")
    f.add_argument(
        "--optimizer",
        default="lbfgs",
        choices=["lbfgs", "adam"],
        help="L-BFGS-B (scipy; stops early at a vanishing gradient) or Adam (default lbfgs)",
    )
    f.add_argument("--steps", type=int, default=200, help="optimiser iterations (default 200)")
    f.add_argument(
        "--solver",
        default="rk4",
        choices=["rk4", "rk2", "euler", "dopri5"],
        help="integrator of the flow map, differentiated exactly (default rk4)",
    )
    f.add_argument("--solver-steps", type=int, default=10, help="RK steps (default 10)")
    f.add_argument("--lr", type=float, default=1e-2, help="Adam step (default 0.01)")
    f.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial weights (default 0)",
    )
    f.add_argument("--out", default="fit.h5", help="run file (default fit.h5)")
    add_run_file_options(f)
    f.set_defaults(func=run_ode_fit)


_RUN_OPTIONS = ("demo", "d", "hidden", "layers", "form", "activation", "scale", "batch", "t_end",
                "frames", "method", "dt", "rtol", "atol", "seed")  # fmt: skip


# the options that make a fit (the data, the model's generator, the optimiser)
_FIT_OPTIONS = ("x", "y", "points", "hidden", "aug", "optimizer", "steps", "solver",
                "solver_steps", "lr", "seed")  # fmt: skip


def run_ode_fit(args: argparse.Namespace) -> int:
    from nndyn_fast._validate import load_npy
    from nndyn_fast.fit import fit
    from nndyn_fast.neural import AugmentedNeuralODE

    q = check_int("--aug", args.aug, minimum=0)
    hidden = check_int("--hidden", args.hidden, minimum=1)
    check_seed("--seed", args.seed)
    check_int("--steps", args.steps, minimum=1)
    check_int("--solver-steps", args.solver_steps, minimum=1)
    check_positive("--lr", args.lr)
    if (args.x is None) != (args.y is None):
        raise ValueError("give both --x and --y, or neither (the x^2 task)")
    if args.x is None:
        pts = check_size("--points", args.points, minimum=2, item_bytes=256.0)
        X = np.linspace(-1.0, 1.0, pts)[:, None]
        Y = X**2
    else:
        X, Y = load_npy("--x", args.x), load_npy("--y", args.y)
        if X.ndim != 2 or Y.ndim != 2:
            raise ValueError(f"--x and --y must hold 2-D arrays, got {X.shape} and {Y.shape}")
    check_out_path("--out", args.out, overwrite=args.overwrite, resume=args.resume)
    n, p = X.shape[1], Y.shape[1]
    if q == 0:
        if p != n:
            raise ValueError(f"without --aug the targets need n = {n} columns, got {p}")
        model = NeuralODE.random(n, hidden, seed=args.seed)
    else:
        R = np.zeros((p, n + q))
        R[:, -min(p, n + q) :] = np.eye(p, min(p, n + q))[:, : min(p, n + q)]
        model = AugmentedNeuralODE(NeuralODE.random(n + q, hidden, seed=args.seed), q, R)
    r = fit(model, X, Y, method=args.optimizer, steps=args.steps, solver=args.solver,
            solver_steps=args.solver_steps, lr=args.lr, seed=args.seed, out=args.out,
            overwrite=args.overwrite, resume=args.resume,
            extra_params=cli_params("ode fit", args, _FIT_OPTIONS))  # fmt: skip
    print(f"wrote {r.path}: loss {r.loss[0]:.6g} -> {r.loss[-1]:.6g} in {len(r.loss) - 1} "
          f"iterations ({r.message})")  # fmt: skip
    return 0


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
    # the command's own options (the generator's seed and sizes) beside the run's parameters
    options = {k: getattr(args, k) for k in _RUN_OPTIONS}
    stream["extra_params"] = {"cli_command": "ode", "cli_options": json.dumps(options)}
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
