"""``nndyn eos``: the edge-of-stability experiment (full-batch GD of a tanh MLP)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nndyn_fast._validate import check_out_path
from nndyn_fast.plots import plot_eos
from nndyn_fast.training import eos_experiment, eos_summary

from .common import add_run_file_options, cli_params, progress_enabled

# the options that make each run (the data and the MLP); each file holds its own lr
_RUN_OPTIONS = ("steps", "sharpness_every", "n", "d", "width", "depth", "seed")


def add_eos_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eos",
        help="edge of stability: GD sharpness against 2/lr for several learning rates",
        description="Full-batch gradient descent of a tanh MLP on a fixed synthetic regression "
        "set, one run per learning rate, recording loss and sharpness λ_max(H) (Lanczos on exact "
        "Hessian-vector products). At the edge of stability λ_max rises to 2/lr and hovers "
        "there while the loss keeps decreasing non-monotonically.",
    )
    p.add_argument(
        "--lrs",
        nargs="+",
        default=["0.2,0.25,0.3"],
        help="learning rates, space- or comma-separated (as --lr of sgd-lyapunov; default "
        "0.2,0.25,0.3)",
    )
    p.add_argument("--steps", type=int, default=2000, help="GD steps per run (default 2000)")
    p.add_argument(
        "--sharpness-every",
        type=int,
        default=25,
        help="measure the sharpness every n steps (default 25)",
    )
    p.add_argument("--n", type=int, default=100, help="data points (default 100)")
    p.add_argument("--d", type=int, default=5, help="input dimension (default 5)")
    p.add_argument("--width", type=int, default=32, help="hidden width (default 32)")
    p.add_argument("--depth", type=int, default=2, help="hidden layers (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and initialisation")
    p.add_argument("--out-dir", default=".", help="folder for eos_lr<lr>.h5 run files")
    p.add_argument("--plot", default="eos.png", help="figure file (default eos.png; '' for none)")
    add_run_file_options(
        p,
        overwrite_help="replace existing run files",
        resume_help="continue an interrupted experiment in --out-dir with the same options: "
        "resume each run file there (refused if its options differ) and start the missing ones",
    )
    p.set_defaults(func=run_eos)


def run_eos(args: argparse.Namespace) -> int:
    items = [args.lrs] if isinstance(args.lrs, str) else list(args.lrs)
    try:
        lrs = [float(s) for item in items for s in item.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--lrs must be numbers, got {' '.join(items)!r}") from None
    if args.plot:
        check_out_path("--plot", args.plot, overwrite=True)
    runs = eos_experiment(
        lrs,
        n=args.n,
        d=args.d,
        width=args.width,
        depth=args.depth,
        steps=args.steps,
        sharpness_every=args.sharpness_every,
        seed=args.seed,
        out_dir=args.out_dir,
        overwrite=args.overwrite,
        progress=progress_enabled(args),
        resume=args.resume,
        extra_params=cli_params("eos", args, _RUN_OPTIONS),
    )
    print(eos_summary(runs))
    if args.plot:
        plot_eos(runs, args.plot)
        print(f"figure: {Path(args.plot)}")
    return 0
