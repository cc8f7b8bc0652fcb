"""``nndyn sweep <target>``: run a built-in sweep target over a grid, streamed to HDF5."""

from __future__ import annotations

import argparse
import functools
import sys

import numpy as np

from nndyn_fast._validate import check_positive, check_size, check_steps
from nndyn_fast.meanfield import kuramoto_order_parameter
from nndyn_fast.sweep import SweepClusterError, SweepPointError, sweep

from .common import add_run_file_options, cli_params, progress_enabled


def parse_values(name: str, text: str) -> np.ndarray:
    """Parse ``start:stop:num`` (``num`` points of np.linspace, both ends included), a comma
    list ``a,b,c`` or a single number into a 1-D float array."""
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, num = float(parts[0]), float(parts[1]), float(parts[2])
        else:
            return np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise ValueError(
            f"{name} must be start:stop:num (e.g. 0.5:3:11), a comma list (e.g. 1,2,4) or one "
            f"number, got {text!r}"
        ) from None
    return np.linspace(start, stop, check_size(f"{name} num", num, item_bytes=64))


def _scheduler(text: str | None) -> str | None:
    return None if text in (None, "", "auto") else text


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a parameter sweep on local processes or a Dask cluster, streamed to HDF5",
        description="Evaluate a built-in target at every grid point, in parallel (a local "
        "Dask cluster by default, --scheduler ADDRESS for a running cluster, --scheduler "
        "serial in-process), committing results to --out as they arrive; --resume skips "
        "the points a killed sweep finished.",
    )
    targets = p.add_subparsers(dest="target", metavar="<target>")
    targets.required = True
    k = targets.add_parser(
        "kuramoto",
        help="stationary order parameter r(K) of all-to-all Kuramoto, Lorentzian frequencies",
        description="r(K) of dθ_i/dt = ω_i + (K/N) Σ_j sin(θ_j − θ_i), ω Lorentzian of "
        "half-width γ, time-averaged over the second half of each run; printed beside the "
        "Ott–Antonsen value sqrt(1 − 2γ/K) (0 below K_c = 2γ).",
    )
    k.add_argument(
        "--K",
        default="0.5:3:11",
        help="couplings: start:stop:num, a comma list or one value (default 0.5:3:11)",
    )
    k.add_argument("--N", type=int, default=5000, help="oscillators per run (default 5000)")
    k.add_argument("--gamma", type=float, default=0.5, help="Lorentzian half-width (default 0.5)")
    k.add_argument("--t-end", type=float, default=100.0, help="run length (default 100)")
    k.add_argument("--dt", type=float, default=0.05, help="RK4 time step (default 0.05)")
    k.add_argument(
        "--freq",
        default="quantile",
        choices=["quantile", "random"],
        help="deterministic Cauchy quantiles (default) or random draws",
    )
    k.add_argument("--seed", type=int, default=0, help="root seed of the per-point seeds")
    k.add_argument("--out", default="sweep.h5", help="output HDF5 file (default sweep.h5)")
    k.add_argument(
        "--scheduler",
        default=None,
        help="'serial' (in-process), a cluster address such as tcp://host:8786, or "
        "omitted for a local cluster of --workers processes",
    )
    k.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes of the local cluster (default: number of CPUs)",
    )
    add_run_file_options(
        k, resume_help="continue the sweep in --out (same options): compute missing points only"
    )
    k.set_defaults(func=run_sweep_kuramoto)


# the options that make the table besides the grid (--K, --N, --gamma, --t-end and --dt are its
# columns grid_*, so that a resume names the grid value that differs); the scheduler and
# workers do not change it
_RUN_OPTIONS = ("freq", "seed")
_UNITS = {"K": "1", "N": "1", "gamma": "1", "t_end": "1", "dt": "1", "r": "1", "r_std": "1"}
_LONG_NAMES = {
    "K": "coupling strength K",
    "N": "number of oscillators N",
    "gamma": "half-width gamma of the Lorentzian frequencies",
    "t_end": "run length (model time units)",
    "dt": "RK4 time step (model time units)",
    "r": "time-averaged Kuramoto order parameter r over the second half of the run",
    "r_std": "standard deviation of r(t) over the averaging window",
}


def run_sweep_kuramoto(o: argparse.Namespace) -> int:
    # checked here, not at each point of the sweep
    check_size("--N", o.N, item_bytes=128)
    check_positive("--gamma", o.gamma)
    check_steps("--t-end / --dt", check_positive("--t-end", o.t_end) / check_positive("--dt", o.dt))
    Ks = parse_values("--K", o.K)
    grid = {"K": Ks, "N": [o.N], "gamma": [o.gamma], "t_end": [o.t_end], "dt": [o.dt]}
    fn = functools.partial(kuramoto_order_parameter, freq=o.freq)
    try:
        res = sweep(
            fn,
            grid,
            scheduler=_scheduler(o.scheduler),
            out=o.out,
            overwrite=o.overwrite,
            progress=progress_enabled(o),
            resume=o.resume,
            n_workers=o.workers,
            seed=o.seed,
            units=_UNITS,
            long_names=_LONG_NAMES,
            extra_params=cli_params("sweep kuramoto", o, _RUN_OPTIONS),
        )
    except (SweepPointError, SweepClusterError) as exc:  # a failed run: the finished points
        print(  # stay committed in --out
            f"nndyn sweep: error: {exc}\n{o.out} keeps the finished points; continue with "
            "the same command and --resume",
            file=sys.stderr,
        )
        return 2
    kc = 2.0 * o.gamma
    print(
        f"wrote {res.path}: {len(res)} points ({res.computed} computed now), N = {o.N}, "
        f"γ = {o.gamma:g}, K_c = 2γ = {kc:g}"
    )
    print(f"{'K':>8} {'r':>8} {'r_std':>8} {'OA r':>8}")
    for K, r, s in zip(res["K"], res["r"], res["r_std"], strict=True):
        theory = np.sqrt(1.0 - kc / K) if K > kc else 0.0
        print(f"{K:8.4f} {r:8.4f} {s:8.4f} {theory:8.4f}")
    return 0
