"""``nndyn limit``: the continuum (N → ∞) limit of a Kuramoto network, optionally beside
finite-N particle runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from nndyn_fast._validate import check_out_path, check_positive, check_seed
from nndyn_fast.continuum import finite_size_gap, meanfield_limit
from nndyn_fast.graphs import Graphon, w_random_graph

from .common import (
    add_coupling_options,
    add_run_file_options,
    cli_params,
    graphon_of,
    progress_enabled,
)

__all__ = ["add_limit_parser", "run_limit"]


def add_limit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "limit",
        help="integrate the continuum (N → ∞) limit of a Kuramoto network, beside finite N",
        description="The limit equation of dθ_i = [ω_i + (K/N) Σ_j W_ij sin(θ_j − θ_i)] dt "
        "+ σ dB_i as N grows along a graphon: for Lorentzian frequencies (half-width --width) the "
        "graphon Ott–Antonsen equation ∂_t z(x) = (iω_0 − γ) z + (K/2)[(W z)(x) − z² (W z̄)(x)] "
        "on --x-grid quadrature points; with --noise (identical oscillators, complete graph) the "
        "Fokker–Planck equation in --modes Fourier moments. Streamed to a run file of kind "
        "meanfield_limit. With --particles N [N ...], the limit instead goes beside particle "
        "runs of those sizes (frequencies at the Lorentzian quantiles, θ_i(0) = 0, z(x, 0) = 1) "
        "into a run file of kind finite_size_gap holding abs(r_N − r_∞).",
    )
    add_coupling_options(p, files=False)
    p.add_argument("--K", type=float, default=2.0, help="coupling strength")
    p.add_argument(
        "--width",
        type=float,
        default=0.5,
        help="half-width γ of the Lorentzian frequencies (the Ott–Antonsen equation)",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=None,
        help="σ of identical noisy oscillators: the Fokker–Planck equation instead "
        "(--graph complete or erdos-renyi only)",
    )
    p.add_argument("--omega0", type=float, default=0.0, help="centre of the frequencies")
    p.add_argument("--x-grid", type=int, default=1000, help="quadrature points x_i = i/N")
    p.add_argument("--modes", type=int, default=64, help="Fokker–Planck Fourier moments M")
    p.add_argument("--z0", type=float, default=0.5, help="initial local order parameter z(x, 0)")
    p.add_argument("--dt", type=float, default=0.05, help="time step")
    p.add_argument("--t-end", type=float, default=50.0, help="end time")
    p.add_argument(
        "--save-every",
        type=int,
        default=None,
        help="store the state z(x) every n steps (default: at t = 0 and at the end)",
    )
    p.add_argument(
        "--particles",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="also run networks of these sizes and measure abs(r_N − r_∞) (Ott–Antonsen only)",
    )
    p.add_argument(
        "--t-from",
        type=float,
        default=None,
        help="with --particles: start of the time average (default --t-end / 2)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of sampled particle graphs (seed + 1)")
    p.add_argument("--out", default="limit.h5", help="output HDF5 file")
    p.add_argument(
        "--plot",
        default=None,
        help="figure file, .png/.pdf/.svg (default: --out with .png; '' for none)",
    )
    add_run_file_options(p)
    p.set_defaults(func=run_limit)


_OPTIONS = ("graph", "p", "r", "gamma", "representation", "K", "width", "noise", "omega0",
            "x_grid", "modes", "z0", "dt", "t_end", "save_every", "particles", "t_from",
            "seed")  # fmt: skip


def _family(o: argparse.Namespace, w: Graphon):
    """The particle networks of the coupling options: the graphon matrix-free, or sampled."""
    if o.graph == "erdos-renyi" or o.representation == "sampled":
        return lambda n: w_random_graph(w, n, seed=o.seed + 1)
    if o.representation == "dense":
        return lambda n: w.matrix(n)
    return w


def run_limit(o: argparse.Namespace) -> int:
    check_seed("--seed", o.seed)
    check_out_path("--out", o.out, overwrite=o.overwrite, resume=o.resume)
    plot = Path(o.out).with_suffix(".png") if o.plot is None else (Path(o.plot) if o.plot else None)
    if plot is not None:
        check_out_path("--plot", plot, overwrite=True)
    w = graphon_of(o)
    progress = progress_enabled(o)
    extra = cli_params("limit", o, _OPTIONS)
    if o.particles:
        if o.noise is not None:
            raise ValueError(
                "--particles compares the Ott–Antonsen limit (Lorentzian frequencies) with "
                "particle runs; drop --noise"
            )
        gap = finite_size_gap(
            _family(o, w), o.particles, K=o.K, gamma=o.width, t_end=o.t_end, dt=o.dt,
            t_from=o.t_from, limit=w, x_grid=o.x_grid, omega0=o.omega0, out=o.out,
            overwrite=o.overwrite, resume=o.resume, progress=progress, extra_params=extra,
        )  # fmt: skip
        print(f"wrote {o.out}: continuum limit on {o.x_grid} points beside N = "
              f"{', '.join(str(n) for n in gap.Ns)}")  # fmt: skip
        print(f"r_inf = {gap.r_inf:.5f} (time average over t > {o.t_from or o.t_end / 2:g})")
        for n, r, g in zip(gap.Ns, gap.r_N, gap.gap, strict=True):
            print(f"N = {n}: r_N = {r:.5f}, |r_N - r_inf| = {g:.3g} (N^-1/2 = {n**-0.5:.3g})")
        path = o.out
    else:
        if o.noise is not None:
            check_positive("--noise", o.noise)
            if w.name != "constant":
                raise ValueError(
                    "--noise solves the Fokker–Planck equation of all-to-all coupling: give "
                    f"--graph complete or erdos-renyi, not {o.graph!r}"
                )
            kw = {"noise": o.noise, "modes": o.modes}
        else:
            kw = {"gamma": o.width, "x_grid": o.x_grid}
        res = meanfield_limit(
            w, K=o.K, t_end=o.t_end, dt=o.dt, omega0=o.omega0, z0=o.z0,
            save_every=o.save_every, out=o.out, overwrite=o.overwrite, resume=o.resume,
            progress=progress, **kw,
        )  # fmt: skip
        path = res.path
        what = f"{o.modes} Fourier moments" if o.noise is not None else f"{o.x_grid} points"
        print(f"wrote {path}: {res.equation} limit, {res.steps} steps to t = {o.t_end:g} ({what})")
        print(f"final r = {res.r[-1]:.5f}")
    if plot is not None:
        from nndyn_fast.plots import plot_run

        plot_run(path, plot)
        print(f"wrote {plot}")
    return 0
