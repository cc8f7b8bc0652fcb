"""nndyn_fast: neural networks as dynamical systems, with a Numba-compiled core.

Kernels live in :mod:`nndyn_fast.kernels`; this package holds the typed, validated API.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import NonFiniteStateError
from .graphs import DigraphMeasure, Graphon, erdos_renyi, load_matrix, w_random_graph
from .meanfield import (
    Coupling,
    FiringRate,
    Kuramoto,
    NetworkRun,
    order_parameter,
    rhs,
    simulate,
    twisted_state,
)
from .storage import RunFile, TrajectoryWriter, open_run

__all__ = [
    "__version__",
    "NonFiniteStateError",
    # storage
    "RunFile",
    "TrajectoryWriter",
    "open_run",
    # mean field
    "Coupling",
    "DigraphMeasure",
    "FiringRate",
    "Graphon",
    "Kuramoto",
    "NetworkRun",
    "erdos_renyi",
    "load_matrix",
    "order_parameter",
    "rhs",
    "simulate",
    "twisted_state",
    "w_random_graph",
]
