"""nndyn_fast: neural networks as dynamical systems, with a Numba-compiled core.

Kernels live in :mod:`nndyn_fast.kernels`; this package holds the typed, validated API.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .storage import RunFile, TrajectoryWriter, open_run

__all__ = [
    "__version__",
    # storage
    "RunFile",
    "TrajectoryWriter",
    "open_run",
]
