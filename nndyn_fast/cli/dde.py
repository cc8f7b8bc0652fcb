"""``nndyn dde``: integrate a built-in delay equation to a run file; ``nndyn dde lyapunov``: its
Lyapunov spectrum (streamed, resumable); ``nndyn dde memory``: the memory-capacity (K tau)
demonstrations. Only parses arguments and calls the public API."""

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

from .common import add_run_file_options, cli_params, progress_enabled

# the options that make the run (the generator of a neural DDE's weights, the history)
_RUN_OPTIONS = ("model", "tau", "a", "b", "hidden", "dim", "seed", "history", "t_end", "frames",
                "method", "dt", "rtol", "atol", "max_steps")  # fmt: skip


def add_dde_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "dde",
        help="delay differential equations (Mackey-Glass, linear, neural DDE); 'lyapunov' "
        "spectrum; 'memory' demo",
        description="Integrate x' = f(x(t), x(t - tau)) with ddeint and stream it to HDF5, "
        "compute its top-k Lyapunov exponents ('nndyn dde lyapunov'), or run the "
        "memory-capacity demonstration ('nndyn dde memory').",
    )
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=["run", "lyapunov", "memory"],
        help="integrate one DDE to --out, its top-k Lyapunov exponents, or the memory-capacity "
        "demonstration",
    )
    p.add_argument(
        "--model",
        default="mackey-glass",
        choices=["mackey-glass", "linear", "neural"],
        help="Mackey-Glass, linear x' = a x + b x(t - tau), or a random neural DDE",
    )
    p.add_argument("--tau", type=float, default=17.0, help="delay (default 17)")
    p.add_argument("--a", type=float, default=0.0, help="linear: x' = a x + b x(t - tau)")
    p.add_argument("--b", type=float, default=-1.0, help="linear: coefficient of x(t - tau)")
    p.add_argument("--hidden", type=int, default=8, help="neural: hidden width H")
    p.add_argument(
        "--d", "--dim", dest="dim", type=int, default=1, help="neural: state dimension d"
    )
    p.add_argument("--seed", type=int, default=0, help="neural: seed of the weights")
    p.add_argument("--history", type=float, nargs="+", default=[1.2], help="constant history")
    p.add_argument("--t-end", type=float, default=1000.0, help="end time")
    p.add_argument("--frames", type=int, default=10001, help="output times")
    p.add_argument(
        "--method",
        default="dopri5",
        choices=["dopri5", "rk4"],
        help="adaptive dopri5 or fixed-step rk4 (needs --dt)",
    )
    p.add_argument(
        "--dt", type=float, default=None, help="rk4 and lyapunov: time step (lyapunov: tau / 50 "
        "unless --rtol is given)"
    )  # fmt: skip
    p.add_argument(
        "--rtol", type=float, default=None, help="dopri5 relative tolerance (default 1e-8); "
        "lyapunov: the relative error per unit time the step is chosen for (instead of --dt)"
    )  # fmt: skip
    p.add_argument("--atol", type=float, default=1e-10, help="dopri5 absolute tolerance")
    p.add_argument(
        "--out",
        default=None,
        help="run file (default dde.h5) or, for memory, the figure (default dde_memory.png)",
    )
    add_run_file_options(p, chunk_frames=True)
    p.add_argument(
        "--max-steps",
        type=int,
        default=100_000,
        help="dopri5 step budget of the whole run; a run that needs more stops with an error "
        "(default 100000)",
    )
    p.add_argument("--k", type=int, default=4, help="lyapunov: number of exponents (default 4)")
    p.add_argument(
        "--transient", type=float, default=0.0, help="lyapunov: discarded duration (default 0)"
    )
    p.add_argument(
        "--plot",
        default=None,
        help="lyapunov: also draw the running estimates to this figure (default: none)",
    )
    p.add_argument(
        "--kappas",
        type=float,
        nargs="+",
        default=[0.1, 0.3, 0.6, 1.0, 2.0, 4.0],
        help="memory: delay-coupling products K tau to fit",
    )
    p.add_argument("--starts", type=int, default=3, help="memory: random starts per fit")
    p.add_argument(
        "--fitter",
        default="lsq",
        choices=["lsq", "grad"],
        help="memory: 'lsq' (scipy least squares, the figure) or 'grad' (L-BFGS on exact "
        "neural-DDE gradients for each --dims, a table of fit error against K tau)",
    )
    p.add_argument("--dims", type=int, nargs="+", default=[1, 2], help="memory --fitter grad")
    p.set_defaults(func=run_dde)
    return p


def run_dde(args: argparse.Namespace) -> int:
    check_seed("--seed", args.seed)
    if args.action == "memory":
        from nndyn_fast.memory_capacity import memory_demo

        check_out_path("--out", args.out or "dde_memory.png", overwrite=True)
        for k in args.kappas:
            check_positive("--kappas", k)
        check_int("--starts", args.starts, minimum=1)
        if args.fitter == "grad":
            from nndyn_fast.memory_capacity import memory_capacity_experiment

            for v in args.dims:
                if v not in (1, 2):
                    raise ValueError(f"--dims must be 1 or 2, got {v}")
            res = memory_capacity_experiment(args.kappas, dims=args.dims, starts=args.starts,
                                             seed=args.seed)  # fmt: skip
            print(f"neural DDE fits of |x|^2 (exact gradients); theory: K tau e = 1 at "
                  f"K tau = {res['theory_threshold']:.5f}")  # fmt: skip
            for i, dm in enumerate(res["dims"]):
                for j, k in enumerate(res["kappa"]):
                    f = res["fits"][i][j]
                    mono = (
                        ""
                        if f["monotone"] is None
                        else (", monotone" if f["monotone"] else ", interior extremum")
                    )
                    side = "below" if k * np.e < 1 else "above"
                    print(f"  dim {dm}, K tau = {k:g} ({side} the threshold): rmse "
                          f"{f['rmse']:.3e}{mono}")  # fmt: skip
            return 0
        res = memory_demo(
            args.out or "dde_memory.png",
            kappas=args.kappas,
            fit_kwargs={"starts": args.starts, "seed": args.seed},
        )
        print(f"linear x' = -a x(t - tau): observed threshold a tau = {res['linear_threshold']:.5f}"
              f" (theory 1/e = {res['theory_threshold']:.5f})")  # fmt: skip
        for f in res["sweep"]["fits"]:
            print(f"  K tau = {f['kappa']:g}: rmse {f['rmse']:.3e}, "
                  f"{'monotone' if f['monotone'] else 'interior extremum'}")  # fmt: skip
        print(f"neural DDE: observed threshold {res['sweep']['observed_threshold']:g} "
              f"(theory: monotone whenever K tau < 1/e)")  # fmt: skip
        return 0
    from nndyn_fast.delay import LinearDDE, MackeyGlass, NeuralDDE, ddeint, lipschitz_bound

    check_positive("--tau", args.tau)
    check_positive("--t-end", args.t_end)
    check_size("--frames", args.frames, minimum=2)
    if args.model == "neural":
        d = check_int("--dim", args.dim, minimum=1)
        H = check_int("--hidden", args.hidden, minimum=1)
        check_memory(f"a neural DDE of --dim {d} and --hidden {H}", 24.0 * d * H + 8.0 * H)
        if len(args.history) not in (1, d):
            raise ValueError(
                f"--history must hold 1 value (used for every component) or --dim = {d} values, "
                f"got {len(args.history)}"
            )
    check_out_path("--out", args.out or "dde.h5", overwrite=args.overwrite, resume=args.resume)
    if args.action == "lyapunov" and args.plot is not None:
        check_out_path("--plot", args.plot, overwrite=True)
    if args.model == "mackey-glass":
        model = MackeyGlass()
    elif args.model == "linear":
        model = LinearDDE(args.a, args.b)
    else:
        rng = np.random.default_rng(args.seed)
        d, H = args.dim, args.hidden
        model = NeuralDDE(
            rng.normal(size=(d, H)) / np.sqrt(H), rng.normal(size=(H, d)),
            rng.normal(size=(H, d)), rng.normal(size=H),
        )  # fmt: skip
    hist = np.array(args.history, dtype=float)
    if args.model == "neural" and hist.size != args.dim:
        hist = np.full(args.dim, hist[0])
    if args.action == "lyapunov":
        return _lyapunov(args, model, hist)
    t = np.linspace(0.0, args.t_end, args.frames)
    out = args.out or "dde.h5"
    sol = ddeint(
        model, hist, t, delays=args.tau, method=args.method, dt=args.dt,
        rtol=1e-8 if args.rtol is None else args.rtol,
        atol=args.atol, out=out, overwrite=args.overwrite, resume=args.resume,
        chunk_frames=args.chunk_frames, max_steps=args.max_steps, progress=progress_enabled(args),
        extra_params=cli_params("dde", args, _RUN_OPTIONS),
    )  # fmt: skip
    extra = ""
    if not isinstance(model, MackeyGlass):
        extra = f", K tau = {lipschitz_bound(model) * args.tau:.4g}"
    print(f"wrote {sol.path}: {args.frames} frames to t = {args.t_end}, "
          f"{sol.stats['n_accepted']} steps{extra}")  # fmt: skip
    return 0


def _lyapunov(args: argparse.Namespace, model, hist: np.ndarray) -> int:
    from nndyn_fast.dde_lyapunov import dde_lyapunov

    dt = args.tau / 50 if args.dt is None and args.rtol is None else args.dt
    res = dde_lyapunov(
        model, hist, delays=args.tau, k=args.k, t_end=args.t_end, dt=dt, rtol=args.rtol,
        transient=args.transient, seed=args.seed, out=args.out or "dde.h5",
        overwrite=args.overwrite, resume=args.resume,
        extra_params=cli_params("dde lyapunov", args, (*_RUN_OPTIONS, "k", "transient")),
    )  # fmt: skip
    how = "" if args.rtol is None else f" chosen for rtol = {args.rtol:g}"
    print(f"wrote {args.out or 'dde.h5'}: top {args.k} exponents to t = {args.t_end} "
          f"(dt = {res.dt:g}{how}, discretised dimension {res.dimension})")  # fmt: skip
    for j, (lam, se) in enumerate(zip(res.exponents, res.stderr, strict=True)):
        print(f"  lambda_{j + 1} = {lam:+.6f} +- {se:.1e}")
    if args.plot is not None:
        from nndyn_fast.plots import plot_dde_lyapunov

        plot_dde_lyapunov(res, args.plot)
        print(f"wrote {args.plot}")
    return 0
