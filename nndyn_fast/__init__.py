"""nndyn_fast: neural networks as dynamical systems, with a Numba-compiled core.

Kernels live in :mod:`nndyn_fast.kernels`; this package holds the typed, validated API.
"""

from __future__ import annotations

__version__ = "0.1.0"

# The continuum limit of Kuramoto networks (graphon Ott-Antonsen, Fokker-Planck); coupling
# spectra and critical couplings are in .spectra below
from .continuum import FiniteSizeGap, LimitRun, finite_size_gap, meanfield_limit

# Delay differential equations and neural DDEs: ddeint, models, memory capacity
from .dde_lyapunov import DDELyapunovSpectrum, dde_lyapunov
from .delay import LinearDDE, MackeyGlass, NeuralDDE, ddeint, lipschitz_bound

# Symmetric eigen-solvers (Lanczos, power iteration) on matrix-free operators
from .eigen import Eigenpairs, gd_threshold, top_eigenpairs
from .errors import NonFiniteStateError

# Neural ODEs: integrators, models, flow maps, expressivity
from .expressivity import (
    FeedForward,
    ShearEmbedding,
    classify,
    critical_points,
    liouville_determinant,
    mlp_as_augmented_ode,
)
from .gradients import FlowGrad, flow_map_vjp  # loss_and_grad: nndyn_fast.gradients
from .graphs import DigraphMeasure, Graphon, erdos_renyi, load_matrix, w_random_graph
from .integrate import IntegrationError, Solution, odeint

# Lyapunov exponents (QR method): maps, flows, random products, deep networks
from .lyapunov import (
    FlowSystem,
    Henon,
    Lorenz63,
    LyapunovSpectrum,
    MapSystem,
    NetworkLyapunov,
    lyapunov_spectrum,
    network_lyapunov,
    product_lyapunov,
    random_network_lyapunov,
)
from .meanfield import (
    Coupling,
    FiringRate,
    Kuramoto,
    NetworkRun,
    kuramoto_order_parameter,
    order_parameter,
    rhs,
    simulate,
    twisted_state,
)
from .neural import AugmentedNeuralODE, NeuralODE, flow_jacobian, flow_map
from .plots import (
    plot_coupling_spectrum,
    plot_dde_lyapunov,
    plot_eos,
    plot_finite_size_gap,
    plot_memory_capacity,
    plot_memory_exponents,
    plot_network_run,
    plot_stability_diagram,
)

# SGD linearised at an interpolation minimum: exponents, mean-square growth, stability diagram
from .rerun import rerun
from .sgd_stability import (
    SGDLyapunov,
    StabilityDiagram,
    gd_threshold_at_minimum,
    mean_square_exponent,
    sgd_lyapunov,
    sgd_lyapunov_mlp,
    sgd_stability_diagram,
)
from .spectra import (
    CouplingSpectrum,
    coupling_spectrum,
    critical_coupling,
    graphon_eigenvalues,
    save_spectrum,
)
from .storage import RunFile, TrajectoryWriter, open_run

# Parameter sweeps: serial, local processes or a Dask cluster, streamed to HDF5
from .sweep import SweepClusterError, SweepPointError, SweepResult, sweep

# Threads: one setting for the kernels and the BLAS calls of the package
from .threads import get_threads, set_threads, threads

# Training dynamics: MLPs, exact Hessian-vector products, sharpness, GD stability, EoS
from .training import (
    MLP,
    GDRun,
    GDStability,
    SpectrumDensity,
    eos_dataset,
    eos_experiment,
    eos_summary,
    forward,
    gauss_newton_vp,
    gd_stability,
    grad,
    gradient_descent,
    hessian_operator,
    hessian_spectrum_density,
    hvp,
    loss,
    loss_and_grad,
    per_sample_gradients,
    sharpness,
)

__all__ = [
    "__version__",
    "NonFiniteStateError",
    # parameter sweeps
    "SweepClusterError",
    "SweepPointError",
    "SweepResult",
    "kuramoto_order_parameter",
    "sweep",
    # threads
    "get_threads",
    "set_threads",
    "threads",
    # storage
    "RunFile",
    "TrajectoryWriter",
    "open_run",
    "rerun",
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
    # coupling spectra and the continuum limit
    "CouplingSpectrum",
    "FiniteSizeGap",
    "LimitRun",
    "coupling_spectrum",
    "critical_coupling",
    "finite_size_gap",
    "graphon_eigenvalues",
    "meanfield_limit",
    "plot_coupling_spectrum",
    "plot_finite_size_gap",
    "save_spectrum",
    # neural ODEs
    "AugmentedNeuralODE",
    "FlowGrad",
    "flow_map_vjp",
    "FeedForward",
    "IntegrationError",
    "NeuralODE",
    "ShearEmbedding",
    "Solution",
    "classify",
    "critical_points",
    "flow_jacobian",
    "flow_map",
    "liouville_determinant",
    "mlp_as_augmented_ode",
    "odeint",
    # Lyapunov exponents
    "FlowSystem",
    "Henon",
    "Lorenz63",
    "LyapunovSpectrum",
    "MapSystem",
    "NetworkLyapunov",
    "SGDLyapunov",
    "StabilityDiagram",
    "gd_threshold",
    "gd_threshold_at_minimum",
    "lyapunov_spectrum",
    "mean_square_exponent",
    "network_lyapunov",
    "plot_stability_diagram",
    "product_lyapunov",
    "random_network_lyapunov",
    "sgd_lyapunov",
    "sgd_lyapunov_mlp",
    "sgd_stability_diagram",
    # delay differential equations
    "LinearDDE",
    "MackeyGlass",
    "NeuralDDE",
    "ddeint",
    "lipschitz_bound",
    "DDELyapunovSpectrum",
    "dde_lyapunov",
    # training dynamics
    "MLP",
    "Eigenpairs",
    "GDRun",
    "GDStability",
    "SpectrumDensity",
    "eos_dataset",
    "eos_experiment",
    "eos_summary",
    "forward",
    "gauss_newton_vp",
    "gd_stability",
    "grad",
    "gradient_descent",
    "hessian_operator",
    "hessian_spectrum_density",
    "hvp",
    "loss",
    "loss_and_grad",
    "per_sample_gradients",
    "plot_eos",
    "plot_memory_capacity",
    "plot_memory_exponents",
    "plot_dde_lyapunov",
    "plot_network_run",
    "sharpness",
    "top_eigenpairs",
]
