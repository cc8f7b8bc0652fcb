"""Tiny run files of every kind the package writes (for the file-format and plot tests).

``make(kind, folder)`` writes one small run of ``kind`` with the public API or the command line
and returns its path; ``KINDS`` lists them (``KIND_OF`` maps the names of the variants that
share a kind, such as noisy network runs, to the kind their file records). Each takes well under
a second once compiled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nndyn_fast.cli import main

KINDS = [
    "kuramoto",
    "firing_rate",
    "ode",
    "dde",
    "gradient_descent",
    "lyapunov_spectrum",
    "product_lyapunov",
    "sgd_lyapunov",
    "sgd_stability_diagram",
    "sweep",
    "noisy_kuramoto",
    "noisy_firing_rate",
    "fit",
    "dde_lyapunov",
    "meanfield_limit",
    "meanfield_limit_fp",
    "coupling_spectrum",
    "coupling_spectrum_directed",
    "finite_size_gap",
]

# variants written under another kind: the ``kind`` attribute their file holds
KIND_OF = {
    "noisy_kuramoto": "kuramoto",
    "noisy_firing_rate": "firing_rate",
    "meanfield_limit_fp": "meanfield_limit",
    "coupling_spectrum_directed": "coupling_spectrum",
}


def _cli(args: list[str]) -> None:
    assert main(args) == 0, args


def make(kind: str, folder: Path) -> Path:
    out = Path(folder) / f"{kind}.h5"
    o = ["--out", str(out)]
    if kind == "kuramoto":
        _cli(["kuramoto", "--N", "64", "--K", "3", "--t-end", "2", "--quiet", *o])
    elif kind == "firing_rate":
        _cli(["kuramoto", "--model", "rate", "--N", "32", "--t-end", "1", "--quiet", *o])
    elif kind == "ode":
        _cli(["ode", "--d", "3", "--hidden", "4", "--batch", "2", "--frames", "11", *o])
    elif kind == "dde":
        _cli(["dde", "--t-end", "20", "--frames", "21", *o])
    elif kind == "gradient_descent":
        _cli(
            ["eos", "--lrs", "0.2", "--steps", "30", "--sharpness-every", "10", "--n", "16",
             "--d", "3", "--width", "4", "--depth", "1", "--out-dir", str(folder), "--plot", ""]
        )  # fmt: skip
        out = Path(folder) / "eos_lr0.2.h5"
    elif kind == "lyapunov_spectrum":
        from nndyn_fast.lyapunov import Henon, lyapunov_spectrum

        lyapunov_spectrum(Henon(), np.array([0.1, 0.1]), steps=2000, n_records=20, out=out)
    elif kind == "product_lyapunov":
        from nndyn_fast.lyapunov import product_lyapunov

        M = np.random.default_rng(0).normal(size=(400, 3, 3))
        product_lyapunov(M, chunk=100, out=out)
    elif kind == "sgd_lyapunov":
        from nndyn_fast.sgd_stability import sgd_lyapunov

        G = np.random.default_rng(0).normal(size=(8, 3))
        sgd_lyapunov(G, 0.1, 2, steps=2000, transient=100, out=out)
    elif kind == "sgd_stability_diagram":
        _cli(
            ["sgd-lyapunov", "--n", "8", "--d", "3", "--lr-factors", "0.5", "1", "2",
             "--batch-sizes", "1", "2", "4", "--steps", "500", "--transient", "50",
             "--replicas", "2", *o]
        )  # fmt: skip
    elif kind == "sweep":
        _cli(
            ["sweep", "kuramoto", "--K", "0.5:3:4", "--N", "50", "--t-end", "4", "--dt", "0.1",
             "--scheduler", "serial", *o]
        )  # fmt: skip
    elif kind == "noisy_kuramoto":
        _cli(
            ["kuramoto", "--N", "16", "--K", "2", "--t-end", "1", "--dt", "0.1", "--noise", "0.3",
             "--realisations", "3", "--quiet", *o]
        )  # fmt: skip
    elif kind == "noisy_firing_rate":
        _cli(
            ["kuramoto", "--model", "rate", "--N", "8", "--t-end", "1", "--dt", "0.1", "--noise",
             "0.2", "--realisations", "2", "--quiet", *o]
        )  # fmt: skip
    elif kind == "fit":
        _cli(
            ["ode", "fit", "--aug", "1", "--points", "5", "--hidden", "3", "--steps", "4",
             "--solver-steps", "2", *o]
        )  # fmt: skip
    elif kind == "dde_lyapunov":
        from nndyn_fast.dde_lyapunov import dde_lyapunov
        from nndyn_fast.delay import MackeyGlass

        dde_lyapunov(MackeyGlass(), [[0.9], [1.1]], delays=1.7, k=2, t_end=4.0, dt=0.1,
                     transient=1.0, n_records=4, n_blocks=2, out=out)  # fmt: skip
    elif kind == "meanfield_limit":
        from nndyn_fast.continuum import meanfield_limit
        from nndyn_fast.graphs import Graphon

        meanfield_limit(Graphon.ring(0.3), K=2.0, gamma=0.3, x_grid=16, t_end=0.5, dt=0.05,
                        save_every=5, out=out)  # fmt: skip
    elif kind == "meanfield_limit_fp":  # the Fokker-Planck limit: Fourier modes, not a grid
        from nndyn_fast.continuum import meanfield_limit
        from nndyn_fast.graphs import Graphon

        meanfield_limit(Graphon.constant(1.0), K=2.0, noise=0.5, modes=8, t_end=0.5, dt=0.05,
                        save_every=5, out=out)  # fmt: skip
    elif kind == "coupling_spectrum":  # a ring graphon with eigenvectors and both K_c
        _cli(["spectrum", "--N", "40", "--graph", "ring", "--r", "0.2", "--k", "3", "--vectors",
              "--noise", "0.5", "--width", "0.3", "--plot", "", "--no-progress", *o])  # fmt: skip
    elif kind == "coupling_spectrum_directed":  # complex eigenvalues
        _cli(["spectrum", "--N", "30", "--graph", "directed-ring", "--r", "0.3", "--k", "3",
              "--width", "0.2", "--plot", "", *o])  # fmt: skip
    elif kind == "finite_size_gap":  # nndyn limit beside particle runs
        _cli(["limit", "--graph", "complete", "--K", "3", "--width", "0.5", "--x-grid", "16",
              "--t-end", "1", "--dt", "0.1", "--particles", "20", "40", "--plot", "",
              *o])  # fmt: skip
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return out
