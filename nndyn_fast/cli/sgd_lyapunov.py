"""``nndyn sgd-lyapunov``: the (lr, B) stability diagram of SGD at an interpolation minimum.

The per-sample gradients come from a ``.npy`` file (rows g_i), from a random teacher MLP (any
parameter vector interpolates the targets it produces itself), or from a random Gaussian matrix.
Learning rates are given in units of the full-batch GD threshold 2/lambda_max unless ``--lr``
lists absolute values. It only parses options and calls :mod:`nndyn_fast.sgd_stability`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from nndyn_fast._validate import (
    check_int,
    check_memory,
    check_option,
    check_out_path,
    check_positive,
    check_seed,
    load_npy,
)
from nndyn_fast.plots import plot_stability_diagram
from nndyn_fast.sgd_stability import gd_threshold_at_minimum, sgd_stability_diagram

from .common import add_run_file_options, cli_params, progress_enabled

# the options that make the diagram (the generator of G, the grid)
_RUN_OPTIONS = ("gradients", "mlp", "n", "d", "activation", "lr_factors", "lr", "batch_sizes",
                "steps", "transient", "replicas", "sampling", "no_mean_square", "seed")  # fmt: skip

__all__ = ["add_sgd_lyapunov_parser", "run_sgd_lyapunov", "gradients_from_options"]


def add_sgd_lyapunov_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sgd-lyapunov",
        help="stability diagram of SGD over (learning rate, batch size) by Lyapunov exponents",
        description="lambda = lim (1/t) log ||M_t ... M_1 v|| with M = I - (lr/B) sum_{i in batch}"
        " g_i g_i^T on the span of the per-sample gradients g_i, compared with the mean-square "
        "criterion and the GD threshold lr < 2/lambda_max; saved to HDF5 and plotted.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--gradients",
        help=".npy file with the per-sample gradients (n, d) (default: a random Gaussian "
        "--n x --d G)",
    )
    src.add_argument(
        "--mlp",
        help="layer widths of a random teacher MLP, e.g. 2,16,16,1 (gradients at init; "
        "default: a random Gaussian G)",
    )
    p.add_argument("--n", type=int, default=50, help="samples (random G or MLP inputs)")
    p.add_argument("--d", type=int, default=100, help="parameters of a random Gaussian G")
    p.add_argument("--activation", default="tanh", help="MLP activation (default tanh)")
    p.add_argument(
        "--lr-factors",
        type=float,
        nargs="+",
        default=None,
        help="learning rates as multiples of 2/lambda_max (default 12 values in [0.1, 5])",
    )
    p.add_argument(
        "--lr",
        type=float,
        nargs="+",
        default=None,
        help="absolute learning rates (default: --lr-factors)",
    )
    p.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="batch sizes"
    )
    p.add_argument("--steps", type=int, default=20000, help="SGD steps per replica")
    p.add_argument("--transient", type=int, default=1000, help="discarded steps")
    p.add_argument("--replicas", type=int, default=4, help="independent chains per point")
    p.add_argument(
        "--sampling",
        default="with",
        choices=["with", "without"],
        help="minibatches drawn with or without replacement",
    )
    p.add_argument("--no-mean-square", action="store_true", help="skip the mean-square exponent")
    p.add_argument("--seed", type=int, default=0, help="seed of G and of the minibatches")
    p.add_argument("--out", default="sgd_lyapunov.h5", help="output HDF5 file")
    add_run_file_options(
        p, resume_help="continue the diagram in --out after its last committed batch size"
    )
    p.add_argument(
        "--plot", default=None, help="save the diagram as this image (e.g. .png; default: none)"
    )
    p.set_defaults(func=run_sgd_lyapunov)


def gradients_from_options(args: argparse.Namespace) -> tuple[np.ndarray, int]:
    """(G, rows_per_sample) from ``--gradients``, ``--mlp`` or a random Gaussian matrix."""
    n = check_int("--n", args.n, minimum=1)
    rng = np.random.default_rng(check_seed("--seed", args.seed))
    if args.gradients:
        return load_npy("--gradients", Path(args.gradients)), 1
    if args.mlp:
        from nndyn_fast.training import MLP, per_sample_gradients

        try:
            sizes = tuple(int(s) for s in args.mlp.split(","))
        except ValueError:
            raise ValueError(f"--mlp must be comma-separated widths, got {args.mlp!r}") from None
        mlp = MLP(sizes, activation=args.activation)
        theta = mlp.init(args.seed)
        check_memory(f"--n {n} inputs and their gradients", 8.0 * n * (sizes[0] + mlp.n_params))
        X = rng.standard_normal((n, sizes[0]))
        return per_sample_gradients(mlp, theta, X), sizes[-1]
    d = check_int("--d", args.d, minimum=1)
    check_memory(f"a random --n {n} x --d {d} gradient matrix", 24.0 * n * d)
    return rng.standard_normal((n, d)) / np.sqrt(d), 1


def run_sgd_lyapunov(args: argparse.Namespace) -> int:
    check_option("--sampling", args.sampling, ("with", "without"))
    if args.resume and args.overwrite:
        raise ValueError("give --overwrite or --resume, not both")
    check_out_path("--out", args.out, overwrite=args.overwrite, resume=args.resume)
    if args.plot:
        check_out_path("--plot", args.plot, overwrite=True)
    G, q = gradients_from_options(args)
    if args.lr is not None:
        lrs = np.array([check_positive("--lr", v) for v in args.lr])
    else:
        threshold = gd_threshold_at_minimum(G, rows_per_sample=q)
        if not math.isfinite(threshold):
            raise ValueError("the gradients are all zero: lambda_max = 0")
        factors = args.lr_factors or list(np.geomspace(0.1, 5.0, 12))
        lrs = np.array([check_positive("--lr-factors", f) for f in factors]) * threshold
    diag = sgd_stability_diagram(
        G,
        np.sort(lrs),
        args.batch_sizes,
        steps=args.steps,
        seed=args.seed,
        transient=args.transient,
        sampling=args.sampling,
        replicas=args.replicas,
        rows_per_sample=q,
        mean_square=not args.no_mean_square,
        out=args.out,
        overwrite=args.overwrite,
        progress=progress_enabled(args),
        resume=args.resume,
        extra_params=cli_params("sgd-lyapunov", args, _RUN_OPTIONS),
    )
    print(
        f"rank {diag.meta['rank']}, lambda_max {diag.lam_max:.6g}, GD threshold "
        f"2/lambda_max = {diag.gd_threshold:.6g}"
    )
    print("top Lyapunov exponent per step (rows: batch size; columns: lr / GD threshold)")
    print("      B " + " ".join(f"{lr / diag.gd_threshold:9.3g}" for lr in diag.lrs))
    for i, B in enumerate(diag.batch_sizes):
        print(f"{B:7d} " + " ".join(f"{v:9.3g}" for v in diag.lam[i]))
    stable = diag.largest_stable_lr("lam")
    ms_stable = diag.largest_stable_lr("ms")
    for i, B in enumerate(diag.batch_sizes):
        line = f"B = {B}: a.s. stable up to lr = {stable[i]:.4g}"
        if not args.no_mean_square:
            line += f", mean-square up to {ms_stable[i]:.4g}"
        print(line)
    print(f"wrote {args.out}")
    if args.plot:
        plot_stability_diagram(diag, path=args.plot)
        print(f"wrote {args.plot}")
    return 0
