"""Options shared by the verbs that write a run file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "GRAPHS",
    "REPRESENTATIONS",
    "DefaultsHelpFormatter",
    "add_coupling_options",
    "add_run_file_options",
    "build_coupling",
    "graphon_of",
    "cli_params",
    "progress_enabled",
    "use_defaults_formatter",
]


def add_run_file_options(
    p: argparse.ArgumentParser,
    *,
    resume_help: str = "continue the run in --out from its last committed chunk (give the "
    "same options: each is compared with the file)",
    overwrite_help: str = "replace an existing --out",
    chunk_frames: bool = False,
) -> None:
    """``--overwrite``, ``--resume`` and ``--progress/--no-progress`` (and ``--chunk-frames``
    where a verb streams frames)."""
    p.add_argument("--overwrite", action="store_true", help=overwrite_help + " (default: off)")
    p.add_argument("--resume", action="store_true", help=resume_help + " (default: off)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="report progress on stderr once per chunk (default: when stderr is a terminal)",
    )
    if chunk_frames:
        p.add_argument(
            "--chunk-frames",
            type=int,
            default=None,
            help="frames per committed chunk (default: about 1 MiB)",
        )


GRAPHS = ("complete", "erdos-renyi", "ring", "small-world", "power-law", "directed-ring")
REPRESENTATIONS = ("auto", "matrix-free", "dense", "sampled")


def add_coupling_options(p: argparse.ArgumentParser, *, files: bool = True) -> None:
    """The coupling options of the network verbs (``nndyn kuramoto``, ``spectrum``, ``limit``):
    ``--graph``, ``--p``, ``--r``, ``--gamma``, ``--representation`` (``files``: ``--graph`` may
    also name a matrix file)."""
    extra = " or a .npz/.npy/.h5 matrix file" if files else ""
    p.add_argument("--graph", default="complete", help=f"one of {list(GRAPHS)}{extra}")
    p.add_argument(
        "--p",
        type=float,
        default=0.1,
        help="edge probability (erdos-renyi), rewiring level (small-world)",
    )
    p.add_argument("--r", type=float, default=0.25, help="coupling range of ring graphons")
    p.add_argument("--gamma", type=float, default=0.5, help="power-law exponent in (0, 1)")
    p.add_argument(
        "--representation",
        default="auto",
        choices=REPRESENTATIONS,
        help="graphons: matrix-free (auto), dense matrix, or sampled W-random graph",
    )


def graphon_of(o: argparse.Namespace) -> Any:
    """The graphon ``--graph`` names (erdos-renyi: its limit, the constant graphon p)."""
    from nndyn_fast._validate import check_real
    from nndyn_fast.graphs import Graphon

    if o.graph not in GRAPHS:
        raise ValueError(f"--graph must be one of {list(GRAPHS)} here, got {o.graph!r}")
    if o.graph == "erdos-renyi":
        check_real("--p", o.p, low=0.0, high=1.0)
        return Graphon.constant(o.p)
    return {
        "complete": lambda: Graphon.constant(1.0),
        "ring": lambda: Graphon.ring(o.r),
        "small-world": lambda: Graphon.small_world(o.r, o.p),
        "power-law": lambda: Graphon.power_law(o.gamma),
        "directed-ring": lambda: Graphon.directed_ring(o.r),
    }[o.graph]()


def build_coupling(o: argparse.Namespace, n: int, dtype: str = "float64") -> Any:
    """The coupling of ``n`` nodes the coupling options describe: a matrix file, an
    Erdős–Rényi graph (seed ``o.seed + 1``), or a graphon matrix-free, as a dense matrix or
    as a sampled W-random graph."""
    import numpy as np

    from nndyn_fast.graphs import load_matrix, w_random_graph

    if o.graph not in GRAPHS:
        if Path(o.graph).suffix.lower() in (".npz", ".npy", ".h5", ".hdf5"):
            return load_matrix(o.graph)
        raise ValueError(f"--graph must be one of {list(GRAPHS)} or a matrix file, got {o.graph!r}")
    w = graphon_of(o)
    if o.graph == "erdos-renyi":
        return w_random_graph(w, n, seed=o.seed + 1)
    if o.representation == "dense":
        return w.matrix(n, dtype=np.float32 if dtype == "float32" else np.float64)
    if o.representation == "sampled":
        return w_random_graph(w, n, seed=o.seed + 1)
    return w


def cli_params(command: str, o: argparse.Namespace, names: Iterable[str]) -> dict[str, str]:
    """The ``extra_params`` a command stores in its run file: ``cli_command`` and its options
    ``names`` (the ones that decide the result: sizes, seeds, generators) as ``cli_options``
    JSON, so the file says how it was made. Options that do not change the result (``--out``,
    ``--resume``, ``--progress``, schedulers) are left out: a resume compares these."""
    return {"cli_command": command, "cli_options": json.dumps({k: getattr(o, k) for k in names})}


def progress_enabled(o: argparse.Namespace) -> bool:
    """``--progress`` / ``--no-progress``, else whether stderr is a terminal."""
    chosen = getattr(o, "progress", None)
    return sys.stderr.isatty() if chosen is None else bool(chosen)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the text already states one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def use_defaults_formatter(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and all its subcommands' parsers :class:`DefaultsHelpFormatter`."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_defaults_formatter(sub)
