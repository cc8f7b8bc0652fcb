"""``nndyn plot``: draw a run file written by the package (network runs so far)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nndyn_fast._validate import check_out_path

__all__ = ["add_plot_parser", "run_plot"]


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot a Kuramoto/firing-rate run file to PNG")
    p.add_argument("run", help="run file written by `nndyn kuramoto`")
    p.add_argument("--png", default=None, help="output PNG (default: the run file with .png)")
    p.set_defaults(func=run_plot)


def run_plot(o: argparse.Namespace) -> int:
    from nndyn_fast.plots import plot_limit_run, plot_network_run

    png = Path(o.png) if o.png else Path(o.run).with_suffix(".png")
    check_out_path("--png", png, overwrite=True)
    draw = plot_limit_run if _kind(o.run) == "meanfield_limit" else plot_network_run
    draw(o.run, png)
    print(f"wrote {png}")
    return 0


def _kind(run: str) -> str | None:
    """The kind of a readable run file (None otherwise: the plot function says what is wrong)."""
    from nndyn_fast.storage import open_run

    try:
        with open_run(run) as f:
            return f.kind
    except (OSError, ValueError):
        return None
