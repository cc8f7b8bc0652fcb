"""``nndyn spectrum``: eigenvalues of a network's coupling operator and its critical couplings."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nndyn_fast._validate import (
    check_nonnegative,
    check_out_path,
    check_positive,
    check_seed,
    check_size,
)
from nndyn_fast.graphs import Graphon
from nndyn_fast.progress import Progress
from nndyn_fast.spectra import (
    WHICH,
    coupling_spectrum,
    graphon_eigenvalues,
    save_spectrum,
)

from .common import (
    GRAPHS,
    add_coupling_options,
    build_coupling,
    cli_params,
    graphon_of,
    progress_enabled,
)

__all__ = ["add_spectrum_parser", "run_spectrum"]


def add_spectrum_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "spectrum",
        help="eigenvalues of the coupling operator W/N and the critical couplings K_c",
        description="A few eigenvalues λ of the coupling operator T = W/N of a network (for a "
        "graphon: the quadrature of its integral operator, matrix-free Lanczos/Arnoldi) beside "
        "the graph limit's closed form, and the coupling where the incoherent state of Kuramoto "
        "oscillators loses stability: K_c = σ²/λ_max (identical oscillators, noise σ) and "
        "K_c = (2γ + σ²)/λ_max (Lorentzian frequencies of half-width γ). Writes a run file of "
        "kind coupling_spectrum and its figure.",
    )
    p.add_argument("--N", type=int, default=10000, help="number of nodes (default 10000)")
    add_coupling_options(p)
    p.add_argument(
        "--dtype",
        default="float64",
        choices=["float64", "float32"],
        help="precision of a dense --representation",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of sampled graphs (seed + 1)")
    p.add_argument("--k", type=int, default=6, help="eigenvalues from each requested end")
    p.add_argument("--which", default="largest", choices=list(WHICH), help="which end(s)")
    p.add_argument(
        "--vectors",
        action="store_true",
        help="also store the eigenvectors (N values each) in the run file",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=None,
        help="σ of the noise: report K_c = σ²/λ_max of identical oscillators",
    )
    p.add_argument(
        "--width",
        type=float,
        default=None,
        help="half-width γ of Lorentzian frequencies: report K_c = (2γ + σ²)/λ_max",
    )
    p.add_argument("--out", default="spectrum.h5", help="output HDF5 file")
    p.add_argument(
        "--plot",
        default=None,
        help="figure file, .png/.pdf/.svg (default: --out with .png; '' for none)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="report the stages (coupling, spectrum, file) on stderr (default: when stderr is "
        "a terminal)",
    )
    p.set_defaults(func=run_spectrum)


_OPTIONS = ("N", "graph", "p", "r", "gamma", "representation", "dtype", "seed", "k", "which",
            "vectors", "noise", "width")  # fmt: skip


def run_spectrum(o: argparse.Namespace) -> int:
    n = check_size("--N", o.N, item_bytes=400)
    check_seed("--seed", o.seed)
    if o.noise is not None:
        check_nonnegative("--noise", o.noise)
    if o.width is not None:
        check_positive("--width", o.width)
    check_out_path("--out", o.out, overwrite=o.overwrite)
    plot = Path(o.out).with_suffix(".png") if o.plot is None else (Path(o.plot) if o.plot else None)
    if plot is not None:
        check_out_path("--plot", plot, overwrite=True)
    with Progress(3, desc="spectrum", unit="stage", enabled=progress_enabled(o)) as bar:
        coupling = build_coupling(o, n, o.dtype)
        bar.update(1)
        spec = coupling_spectrum(coupling, o.k, o.which, o.vectors, n=n)
        reference = None
        if o.graph in GRAPHS:
            reference = graphon_eigenvalues(graphon_of(o), o.k, o.which)
        bar.update(2)
        x = np.arange(1, n + 1) / n if isinstance(coupling, Graphon) else None
        path = save_spectrum(
            spec,
            o.out,
            reference=reference,
            noise=o.noise,
            gamma=o.width,
            params={
                "graph": o.graph,
                **cli_params("spectrum", o, _OPTIONS),
            },
            x=x,
            overwrite=o.overwrite,
        )
        bar.update(3)
    vals = spec.eigenvalues
    shown = ", ".join(f"{v:.6g}" for v in vals[: min(6, vals.size)])
    print(f"wrote {path}: {vals.size} eigenvalues of W/N ({spec.method}, N = {spec.n}): {shown}")
    if reference is not None:
        print(f"closed form of the graph limit: {', '.join(f'{v:.6g}' for v in reference[:6])}")
    from nndyn_fast.storage import open_run

    with open_run(path) as f:
        summary = f.summary
    print(f"lambda_max = {spec.lambda_max:.6g}")
    if "K_c_identical" in summary:
        kc = summary["K_c_identical"]
        print(f"identical oscillators, noise {o.noise:g}: K_c = σ²/λ_max = {kc:.6g}")
    if "K_c_lorentzian" in summary:
        print(
            f"Lorentzian frequencies, γ = {o.width:g}: K_c = (2γ + σ²)/λ_max = "
            f"{summary['K_c_lorentzian']:.6g}"
        )
    if plot is not None:
        from nndyn_fast.plots import plot_run

        plot_run(path, plot)
        print(f"wrote {plot}")
    return 0
