"""The ``nndyn`` command line: one subcommand per family; it only parses and calls the API.

The package holds one module per verb (``nndyn_fast.cli.<verb>``); each provides
``add_<name>_parser(subparsers)``, which sets ``func`` to its run function, and is listed in
:data:`FAMILIES`. Options shared by the verbs that write run files are in
:mod:`nndyn_fast.cli.common`.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from nndyn_fast import __version__
from nndyn_fast.storage import RunFileError
from nndyn_fast.sweep import SweepPointError
from nndyn_fast.threads import set_threads

from .common import use_defaults_formatter

# (module, function adding the subcommand's parser): one entry per command family.
FAMILIES = [
    ("nndyn_fast.cli.kuramoto", "add_kuramoto_parser"),
    ("nndyn_fast.cli.plot", "add_plot_parser"),
    ("nndyn_fast.cli.ode", "add_ode_parser"),
    ("nndyn_fast.cli.eos", "add_eos_parser"),
    ("nndyn_fast.cli.dde", "add_dde_parser"),
    ("nndyn_fast.cli.sgd_lyapunov", "add_sgd_lyapunov_parser"),
    ("nndyn_fast.cli.sweep", "add_sweep_parser"),
    ("nndyn_fast.cli.spectrum", "add_spectrum_parser"),
    ("nndyn_fast.cli.limit", "add_limit_parser"),
    # further families register here
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nndyn",
        description="Neural networks as dynamical systems: simulations streamed to HDF5.",
    )
    parser.add_argument("--version", action="version", version=f"nndyn_fast {__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="most threads to use (default NUMBA_NUM_THREADS, else the number of CPUs; small "
        "work runs on one thread whatever N is)",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for module, adder in FAMILIES:
        getattr(importlib.import_module(module), adder)(sub)
    use_defaults_formatter(parser)  # every option's help shows its default
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nndyn``; returns the exit status.

    2 for bad input or a failed run (a failed sweep point too), 1 when writing the run file
    failed (disk full), and 130 / 143 when SIGINT / SIGTERM interrupted a run (its file keeps
    every committed chunk).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        set_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        path = getattr(exc, "run_path", None)
        if path is None:
            print(f"nndyn {args.command}: interrupted", file=sys.stderr)
        else:
            rows = ", ".join(f"{n} {s} rows" for s, n in exc.run_rows.items())
            print(
                f"nndyn {args.command}: interrupted; {path} keeps {rows} (status interrupted); "
                "continue it with the same command and --resume",
                file=sys.stderr,
            )
        return 128 + int(signum)
    except RunFileError as exc:
        print(f"nndyn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FloatingPointError, SweepPointError) as exc:
        print(f"nndyn {args.command}: error: {exc}", file=sys.stderr)
        return 2
