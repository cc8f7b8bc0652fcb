"""The ``nndyn`` command line: one subcommand per family; it only parses and calls the API.

Each family module provides ``add_<name>_parser(subparsers)`` (which sets ``func`` to its run
function) and is listed in :data:`FAMILIES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, function adding the subcommand's parser): one entry per command family.
FAMILIES = [
    ("nndyn_fast.cli_kuramoto", "add_kuramoto_parser"),
    ("nndyn_fast.cli_kuramoto", "add_plot_parser"),
    ("nndyn_fast.cli_ode", "add_ode_parser"),
    ("nndyn_fast.cli_eos", "add_eos_parser"),
    ("nndyn_fast.cli_dde", "add_dde_parser"),
    ("nndyn_fast.cli_lyapunov", "add_sgd_lyapunov_parser"),
    ("nndyn_fast.cli_sweep", "add_sweep_parser"),
    # further families register here
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nndyn",
        description="Neural networks as dynamical systems: simulations streamed to HDF5.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for module, adder in FAMILIES:
        getattr(importlib.import_module(module), adder)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nndyn``; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FloatingPointError) as exc:
        print(f"nndyn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
