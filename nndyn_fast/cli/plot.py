"""``nndyn plot``: draw any run file written by the package (dispatch on its kind)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nndyn_fast._validate import check_out_path, check_real

__all__ = ["FORMATS", "add_plot_parser", "run_plot"]

FORMATS = (".pdf", ".png", ".svg")


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    from nndyn_fast.plots import RUN_PLOTS

    p = sub.add_parser(
        "plot",
        help="draw a run file (any kind the package writes) to PDF, PNG or SVG",
        description="Draw a run file with the figure of its kind, theory drawn beside the "
        f"simulation where the package knows it. Kinds: {', '.join(sorted(RUN_PLOTS))}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run file written by nndyn_fast (any nndyn command or out=)")
    p.add_argument(
        "--out",
        "--png",
        dest="out",
        default=None,
        help="figure file, .pdf, .png or .svg (default: the run file with .png)",
    )
    p.add_argument("--dpi", type=float, default=150.0, help="resolution of raster formats")
    p.set_defaults(func=run_plot)


def run_plot(o: argparse.Namespace) -> int:
    from nndyn_fast.plots import plot_run

    out = Path(o.out) if o.out else Path(o.run).with_suffix(".png")
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"--out must end in one of {list(FORMATS)}, got {str(out)!r}")
    check_out_path("--out", out, overwrite=True)
    dpi = check_real("--dpi", o.dpi, low=1.0)
    plot_run(o.run, out, dpi=dpi)
    print(f"wrote {out}")
    return 0
