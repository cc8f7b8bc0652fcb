"""Fuzzing the public API: every input either works or is refused with a ValueError/TypeError.

For each public function or model of ``nndyn_fast.__all__`` that takes arguments, hypothesis
draws a valid call (tiny sizes, so it runs in milliseconds) and then replaces up to two of its
arguments by bad values: wrong types, NaN/inf, negative/zero/huge numbers, empty arrays, wrong
shapes. The property: the call returns, or raises ValueError/TypeError with a non-empty
message. A valid input whose dynamics diverge may also end in NonFiniteStateError /
IntegrationError (the documented run failures, naming the step). Any other exception
(IndexError, AttributeError, OverflowError, MemoryError, numpy's own errors, ...) fails.

Result types (Solution, NetworkRun, Eigenpairs, ...) and exception classes are not fuzzed:
users do not build them. Streaming (``out=``) is fuzzed only for paths; the run files have
their own tests. The draws are derandomized (reproducible in CI) and bounded in number.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nndyn_fast as nd
from nndyn_fast import IntegrationError, NonFiniteStateError

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=50,
    suppress_health_check=list(HealthCheck),
)

# wrong for nearly every argument (numbers that could be valid somewhere are included on
# purpose: the property holds whichever way the function reads them)
JUNK = [
    "abc",
    "1.0",
    None,
    [1, 2],
    [],
    {},
    1 + 2j,
    float("nan"),
    float("inf"),
    -float("inf"),
    -1,
    -2.5,
    0,
    0.5,
    True,
    1e308,
    -1e308,
    2**70,
    object(),
    np.array([]),
    np.zeros((2, 2)),
    np.array([np.nan]),
]
# sizes that allocate memory: refused by range or by a memory estimate, never attempted
HUGE = [1e12, 10**12, 2**40, 10**15, 1e18]


def junk(*extra):
    return JUNK + list(extra)


def huge(*extra):
    return JUNK + HUGE + list(extra)


def one(*values):
    return list(values)


def reals(lo=-2.0, hi=2.0):
    return [lo, (2 * lo + hi) / 3, (lo + 2 * hi) / 3, hi]


def pos(lo=0.05, hi=2.0):
    return reals(lo, hi)


def check_call(fn, kwargs):
    """Run ``fn(**kwargs)``; pass when it returns or raises an allowed error with a message."""
    try:
        return fn(**kwargs)
    except (ValueError, TypeError) as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message for {kwargs!r}"
    except (NonFiniteStateError, IntegrationError) as exc:
        assert str(exc).strip()
    return None


@st.composite
def calls(draw, spec):
    """A valid call of ``spec`` ({arg: (valid values, bad values)}) with up to two arguments
    replaced by bad values."""
    kw = {name: draw(st.sampled_from(valid)) for name, (valid, _) in spec.items()}
    for name in draw(st.lists(st.sampled_from(sorted(spec)), max_size=2, unique=True)):
        kw[name] = draw(st.sampled_from(spec[name][1]))
    return kw


# -- small valid objects ----------------------------------------------------------------------
RNG = np.random.default_rng(0)
N = 4
OMEGA = RNG.standard_normal(N)
W_DENSE = RNG.random((N, N))
COUPLINGS = [
    W_DENSE,
    sp.csr_matrix(W_DENSE),
    nd.Graphon.constant(1.0),
    nd.Graphon.ring(0.3),
    nd.Graphon.small_world(0.2, 0.1),
    nd.Graphon.power_law(0.5),
    nd.Graphon.directed_ring(0.3),
]
KURAMOTO = nd.Kuramoto(OMEGA, nd.Graphon.constant(1.0), 1.0)
RATE = nd.FiringRate(OMEGA, W_DENSE, 0.5, "tanh")
NODE = nd.NeuralODE.random(2, 3, seed=0)
NODE_LAYERS = nd.NeuralODE.random(3, 2, layers=2, seed=1)
AUG = nd.AugmentedNeuralODE(nd.NeuralODE.random(3, 4, seed=2), 1)
MLP = nd.MLP((2, 3, 1))
MLP2 = nd.MLP((3, 2, 2), "relu")
THETA = MLP.init(0)
X = RNG.standard_normal((5, 2))
Y = RNG.standard_normal((5, 1))
G = RNG.standard_normal((6, 4))
H_SPD = G.T @ G / 6
FF = nd.FeedForward.random((2, 3, 1), seed=0)
NDDE = nd.NeuralDDE(
    RNG.standard_normal((2, 3)), RNG.standard_normal((3, 2)), RNG.standard_normal((3, 2)),
    RNG.standard_normal(3),
)  # fmt: skip
LDDE = nd.LinearDDE(-1.0, -0.5)
MG = nd.MackeyGlass()
BAD_ARRAYS = junk(np.zeros(3), np.zeros((3, 3)), np.zeros((0, 2)), np.full((2, 2), np.inf))
BOOL = one(True, False)
BAD_BOOL = junk("yes", 2, np.array([True, False]))
ACTS = one("tanh", "relu", "identity", "sigmoid", "softplus", "gelu")
BAD_ACT = junk("elu", "TANH", "")


def _tmp():
    return tempfile.mkdtemp(prefix="nndyn_fuzz_")


@contextlib.contextmanager
def in_fresh_folder():
    """Run in a new temporary folder (removed afterwards)."""
    cwd, tmp = os.getcwd(), _tmp()
    os.chdir(tmp)
    try:
        yield tmp
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)


MISSING_DIR = os.path.join(tempfile.gettempdir(), "nndyn_fuzz_no_such_folder", "sub")
DATA = _tmp()
atexit.register(shutil.rmtree, DATA, ignore_errors=True)
W_FILE = os.path.join(DATA, "W.npy")
np.save(W_FILE, W_DENSE)
RUN_FILE = nd.simulate(KURAMOTO, OMEGA, 0.2, 0.1, out=os.path.join(DATA, "run.h5")).path


# -- the cases: (function, {argument: (valid, bad)}) -------------------------------------------
CASES = {
    # mean field
    "Kuramoto": (
        nd.Kuramoto,
        {
            "omega": (one(OMEGA, np.zeros(N), list(OMEGA)), BAD_ARRAYS),
            "coupling": (COUPLINGS, junk(np.ones((3, 3)), "ring")),
            "K": (reals(-3, 3), junk()),
            "alpha": (reals(), junk()),
            "dtype": (one("float64", "float32"), junk("float16", np.float64)),
        },
    ),
    "FiringRate": (
        nd.FiringRate,
        {
            "I": (one(OMEGA, np.zeros(N)), BAD_ARRAYS),
            "coupling": (COUPLINGS, junk(np.ones((5, 5)))),
            "K": (reals(-3, 3), junk()),
            "activation": (ACTS, BAD_ACT),
            "dtype": (one("float64", "float32"), junk("float16")),
        },
    ),
    "Coupling": (
        nd.Coupling,
        {
            "W": (COUPLINGS, junk(np.ones((3, 3)))),
            "n": (one(N), huge(3, 0)),
            "dtype": (one("float64", "float32"), junk("int8")),
            "pairwise": (BOOL, BAD_BOOL),
        },
    ),
    "simulate": (
        nd.simulate,
        {
            "model": (one(KURAMOTO, RATE), junk("kuramoto", NODE)),
            "state0": (one(np.zeros(N), OMEGA), BAD_ARRAYS),
            "t_end": (pos(0.05, 1.0), huge(1e308)),
            "dt": (pos(0.05, 0.5), junk(1e-300)),
            "method": (one("rk4", "euler"), junk("rk45")),
            "save_every": (one(1, 2, 3), huge()),
            "chunk_steps": (one(None, 1, 3, 100), huge()),
            "progress": (one(False), BAD_BOOL),
            "resume": (one(False), junk(True)),
            "overwrite": (BOOL, BAD_BOOL),
            "extra_params": (one(None, {"tag": 1}), junk(["a"])),
        },
    ),
    "rhs": (
        nd.rhs,
        {"model": (one(KURAMOTO, RATE), junk(NODE)), "state": (one(OMEGA), BAD_ARRAYS)},
    ),
    "order_parameter": (
        nd.order_parameter,
        {"theta": (one(OMEGA, np.zeros((3, N)), [0.0, 1.0]), BAD_ARRAYS)},
    ),
    "twisted_state": (
        nd.twisted_state,
        {"n": (one(1, 4, 7), huge()), "q": (one(0, 1, -2), junk()), "c": (reals(), junk())},
    ),
    # graphs
    "Graphon.constant": (nd.Graphon.constant, {"p": (pos(0, 1), junk())}),
    "Graphon.small_world": (
        nd.Graphon.small_world,
        {"r": (pos(0.01, 0.5), junk()), "p": (pos(0, 1), junk(1.5))},
    ),
    "Graphon.power_law": (nd.Graphon.power_law, {"gamma": (pos(0.01, 0.99), junk(1.0))}),
    "Graphon.directed_ring": (nd.Graphon.directed_ring, {"r": (pos(0.01, 0.9), junk())}),
    "Graphon.by_name": (
        lambda name, r: nd.Graphon.by_name(name, r=r),
        {"name": (one("ring", "directed_ring"), junk("star")), "r": (pos(0.1, 0.5), junk())},
    ),
    "DigraphMeasure": (
        nd.DigraphMeasure,
        {
            "w": (one(nd.Graphon.constant(0.5), nd.Graphon.ring(0.2)), junk("ring")),
            "x": (one(3, np.linspace(0.1, 1, 5)), huge(np.array([0.5, 0.1]), [2.0])),
            "mu": (one(None), junk(np.ones(7), -np.ones(3))),
        },
    ),
    "erdos_renyi": (
        nd.erdos_renyi,
        {
            "n": (one(1, 5, 20), huge()),
            "p": (pos(0, 1), junk(2.0)),
            "seed": (one(0, 3), junk()),
            "dtype": (one(np.float64, np.float32), junk("nope")),
        },
    ),
    "w_random_graph": (
        nd.w_random_graph,
        {
            "w": (one(nd.Graphon.ring(0.3), nd.Graphon.constant(0.5)), junk()),
            "n": (one(1, 6), huge()),
            "seed": (one(0, 1), junk()),
            "block_rows": (one(1, 4, 256), huge()),
            "dtype": (one(np.float64), junk("nope")),
        },
    ),
    "load_matrix": (
        nd.load_matrix,
        {
            "path": (one(W_FILE), junk(os.path.join(MISSING_DIR, "W.npy"), "x.txt", DATA)),
            "dataset": (one("W"), junk()),
        },
    ),
    # neural ODEs
    "NeuralODE": (
        nd.NeuralODE,
        {
            "W": (one(NODE.W[0], NODE.W), BAD_ARRAYS),
            "A": (one(NODE.A[0], NODE.A), BAD_ARRAYS),
            "b": (one(NODE.b[0], NODE.b), BAD_ARRAYS),
            "activation": (ACTS, BAD_ACT),
            "t_layers": (one(None, [0.0, 2.0]), junk([1.0, 0.0], [0.0, 1.0, 2.0])),
            "T": (pos(0.5, 2.0), junk()),
            "form": (one("outer"), junk("inner", "middle")),
        },
    ),
    "NeuralODE.random": (
        nd.NeuralODE.random,
        {
            "d": (one(1, 2, 3), huge()),
            "hidden": (one(None, 2, 4), huge()),
            "activation": (ACTS, BAD_ACT),
            "layers": (one(1, 2), huge()),
            "scale": (pos(), junk()),
            "form": (one("outer", "inner"), junk("x")),
            "T": (pos(0.5, 2), junk()),
            "seed": (one(0, 5), junk()),
        },
    ),
    "AugmentedNeuralODE": (
        nd.AugmentedNeuralODE,
        {
            "model": (one(nd.NeuralODE.random(3, 2, seed=3)), junk(MLP)),
            "n_aug": (one(1, 2), huge(3)),
            "readout": (one(None, np.ones((1, 3))), junk(np.ones((1, 2)))),
        },
    ),
    "odeint": (
        nd.odeint,
        {
            "f": (one(NODE, NODE_LAYERS), junk(lambda t, x, a: x, MLP)),
            "x0": (one(np.ones(2), np.zeros((3, 2))), BAD_ARRAYS),
            "t": (one(np.linspace(0, 1, 3), [0.0, 0.5]), junk([0.0, 1e308], [1.0, 0.0], [0.0])),
            "method": (one("dopri5", "rk4", "rk2", "euler"), junk("rk45")),
            "dt": (one(None, 0.1, 0.25), junk(1e-300)),
            "rtol": (one(1e-6, 1e-3, np.full(2, 1e-6)), junk(1e-20)),
            "atol": (one(1e-9, 1e-6), junk()),
            "args": (one(()), junk((1,))),
            "max_steps": (one(1000, 10**6), huge()),
            "variational": (BOOL, BAD_BOOL),
            "overwrite": (BOOL, BAD_BOOL),
            "jac": (one(None), junk()),
        },
    ),
    "flow_map": (
        nd.flow_map,
        {
            "model": (one(NODE, AUG), junk(MLP)),
            "X": (one(np.ones(2), np.ones((2, 2))), BAD_ARRAYS),
            "T": (one(None, 0.5, 1.0), junk()),
            "method": (one("dopri5", "rk4"), junk("rk45")),
            "rtol": (one(1e-8, 1e-6), junk()),
            "atol": (one(1e-10), junk()),
            "dt": (one(None, 0.1), junk()),
        },
    ),
    "flow_jacobian": (
        nd.flow_jacobian,
        {
            "model": (one(NODE, AUG), junk(MLP)),
            "X": (one(np.ones(2), np.ones((2, 2))), BAD_ARRAYS),
            "T": (one(None, 0.5), junk()),
            "method": (one("dopri5", "rk4"), junk("rk45")),
            "return_flow": (BOOL, BAD_BOOL),
        },
    ),
    "ShearEmbedding": (
        lambda psi, d, q, X: nd.ShearEmbedding(psi, d, q).target(X),
        {
            "psi": (one("square", "sine"), junk("exp")),
            "d": (one(1, 2), huge()),
            "q": (one(1, 2), huge()),
            "X": (one(np.ones((2, 1)), np.ones((3, 2))), BAD_ARRAYS),
        },
    ),
    "mlp_as_augmented_ode": (
        nd.mlp_as_augmented_ode,
        {
            "W2": (one(np.ones((1, 3))), BAD_ARRAYS),
            "A": (one(np.ones((3, 2))), BAD_ARRAYS),
            "b": (one(np.zeros(3)), BAD_ARRAYS),
            "activation": (ACTS, BAD_ACT),
        },
    ),
    "liouville_determinant": (
        nd.liouville_determinant,
        {
            "model": (one(NODE), junk(AUG)),
            "x0": (one(np.ones(2)), BAD_ARRAYS),
            "T": (one(None, 0.5), junk()),
            "n_quad": (one(3, 11), huge()),
            "rtol": (one(1e-8), junk()),
        },
    ),
    "FeedForward": (
        nd.FeedForward,
        {
            "weights": (one([np.ones((2, 2)), np.ones((1, 2))]), junk([np.ones(2)], [[]])),
            "biases": (one([np.zeros(2), np.zeros(1)]), junk([np.zeros(3)])),
            "activation": (ACTS, BAD_ACT),
        },
    ),
    "FeedForward.random": (
        nd.FeedForward.random,
        {
            "sizes": (one((2, 3, 1), [1, 1]), huge((2, 10**12), (2,), ("a", 1))),
            "activation": (ACTS, BAD_ACT),
            "scale": (pos(), junk()),
            "seed": (one(0, 2), junk()),
        },
    ),
    "critical_points": (
        nd.critical_points,
        {
            "model": (one(FF), junk(nd.FeedForward.random((2, 2), seed=0))),
            "box": (one([[-1, 1], [-1, 1]]), junk([[1, -1], [0, 1]], [[0, 1]])),
            "n_starts": (one(1, 2), huge()),
            "seed": (one(0, 1), junk()),
            "tol": (one(1e-8, 1e-6), junk()),
            "merge": (one(1e-4), junk()),
        },
    ),
    "classify": (
        nd.classify,
        {
            "models": (one({"ff": FF}), junk({"x": 1})),
            "box": (one([[-1, 1], [-1, 1]]), junk()),
            "n_starts": (one(1), huge()),
            "seed": (one(0), junk()),
        },
    ),
    # delay equations
    "NeuralDDE": (
        nd.NeuralDDE,
        {
            "W": (one(NDDE._W[0]), BAD_ARRAYS),
            "A": (one(NDDE._A[0]), BAD_ARRAYS),
            "B": (one(NDDE._B[0, 0], NDDE._B[0]), BAD_ARRAYS),
            "b": (one(NDDE._b[0]), BAD_ARRAYS),
            "activation": (ACTS, BAD_ACT),
            "t_layers": (one(None, [0.0, 1.0]), junk([1.0, 0.0])),
            "T": (pos(0.5, 2), junk()),
        },
    ),
    "LinearDDE": (
        nd.LinearDDE,
        {"A": (one(-1.0, [[-1.0]]), BAD_ARRAYS), "B": (one(0.5, [[0.2]]), BAD_ARRAYS)},
    ),
    "MackeyGlass": (
        nd.MackeyGlass,
        {"beta": (pos(), junk()), "gamma": (pos(), junk()), "n": (pos(1, 10), junk())},
    ),
    "lipschitz_bound": (nd.lipschitz_bound, {"model": (one(NDDE, LDDE), junk(MG))}),
    "ddeint": (
        nd.ddeint,
        {
            "f": (one(MG, LDDE), junk(NDDE, lambda t, x, y, a: x)),
            "history": (one(1.0, [0.5], np.ones((2, 1))), BAD_ARRAYS),
            "t": (one(np.linspace(0, 1, 4), [0.0, 0.5]), junk([0.0, 1e308], [1.0, 0.0])),
            "delays": (one(0.5, 1.0, [0.3]), huge(1e308, [0.5, -1.0])),
            "method": (one("dopri5", "rk4"), junk("rk45")),
            "dt": (one(None, 0.1, 0.05), junk(1e-300)),
            "rtol": (one(1e-6), junk()),
            "atol": (one(1e-9), junk()),
            "args": (one(()), junk()),
            "history_args": (one(None), junk()),
            "hmax": (one(None, 0.5), junk(1e-300)),
            "overwrite": (BOOL, BAD_BOOL),
            "chunk_frames": (one(None), huge()),
        },
    ),
    "dde_lyapunov": (
        nd.dde_lyapunov,
        {
            "f": (one(MG, LDDE), junk(NDDE, lambda t, x, y, a: x)),
            "history": (one(1.0, [0.5], np.ones((2, 1))), BAD_ARRAYS),
            "delays": (one(0.5, 1.0), huge(1e308, [0.5, -1.0], 0.55)),
            "k": (one(1, 2), huge(100)),
            "t_end": (one(1.0, 0.5), junk()),  # (a huge but allowed t_end would just run)
            "dt": (one(0.1, 0.05), junk(1e-300, 0.3)),
            "transient": (one(0.0, 0.2), junk()),
            "reorth_every": (one(None, 3), huge()),
            "n_records": (one(200, 2), huge()),
            "n_blocks": (one(20, 2), huge()),
            "seed": (one(0, 3), junk()),
            "overwrite": (BOOL, BAD_BOOL),
        },
    ),
    # training
    "MLP": (
        nd.MLP,
        {
            "sizes": (one((2, 3, 1), [1, 1], (2, 2)), huge((2,), (2, 0), ("a", 2), (2, 1e308))),
            "activation": (ACTS, BAD_ACT),
            "loss": (one("mse", "cross_entropy"), junk("l1")),
        },
    ),
    "MLP.init": (
        lambda sizes, seed: nd.MLP(sizes).init(seed),
        {"sizes": (one((2, 3, 1)), one((10**6, 10**6), (2, 10**12))), "seed": (one(0), junk())},
    ),
    **{
        name: (
            fn,
            {
                "mlp": (one(MLP), junk(MLP2, FF)),
                "theta": (one(THETA), BAD_ARRAYS),
                "X": (one(X), BAD_ARRAYS),
                "Y": (one(Y, Y.ravel()), BAD_ARRAYS),
            },
        )
        for name, fn in [("loss", nd.loss), ("grad", nd.grad), ("loss_and_grad", nd.loss_and_grad)]
    },
    **{
        name: (
            fn,
            {
                "mlp": (one(MLP), junk(MLP2)),
                "theta": (one(THETA), BAD_ARRAYS),
                "X": (one(X), BAD_ARRAYS),
                "Y": (one(Y), BAD_ARRAYS),
                "v": (one(np.ones(MLP.n_params)), BAD_ARRAYS),
            },
        )
        for name, fn in [("hvp", nd.hvp), ("gauss_newton_vp", nd.gauss_newton_vp)]
    },
    **{
        name: (
            fn,
            {
                "mlp": (one(MLP), junk(MLP2)),
                "theta": (one(THETA), BAD_ARRAYS),
                "X": (one(X), BAD_ARRAYS),
            },
        )
        for name, fn in [("forward", nd.forward), ("per_sample_gradients", nd.per_sample_gradients)]
    },
    "hessian_operator": (
        nd.hessian_operator,
        {
            "mlp": (one(MLP), junk()),
            "theta": (one(THETA), BAD_ARRAYS),
            "X": (one(X), BAD_ARRAYS),
            "Y": (one(Y), BAD_ARRAYS),
            "gauss_newton": (BOOL, BAD_BOOL),
        },
    ),
    "sharpness": (
        nd.sharpness,
        {
            "mlp": (one(MLP), junk()),
            "theta": (one(THETA), BAD_ARRAYS),
            "X": (one(X), BAD_ARRAYS),
            "Y": (one(Y), BAD_ARRAYS),
            "k": (one(1, 2), huge()),
            "method": (one("lanczos", "power"), junk("arnoldi")),
            "tol": (one(1e-8, 1e-4), junk()),
            "maxiter": (one(None, 5, 200), huge()),
            "v0": (one(None, np.ones(MLP.n_params)), BAD_ARRAYS),
            "seed": (one(0, 1), junk()),
        },
    ),
    "top_eigenpairs": (
        nd.top_eigenpairs,
        {
            "op": (one(H_SPD, H_SPD.tolist()), junk(np.ones((2, 3)), np.ones((0, 0)))),
            "k": (one(1, 2), huge()),
            "method": (one("lanczos", "power"), junk()),
            "tol": (one(1e-8), junk()),
            "maxiter": (one(None, 4, 50), huge()),
            "v0": (one(None, np.ones(4)), BAD_ARRAYS),
            "seed": (one(0), junk()),
            "which": (one("largest", "smallest"), junk("middle")),
        },
    ),
    "hessian_spectrum_density": (
        nd.hessian_spectrum_density,
        {
            "mlp": (one(MLP), junk()),
            "theta": (one(THETA), BAD_ARRAYS),
            "X": (one(X), BAD_ARRAYS),
            "Y": (one(Y), BAD_ARRAYS),
            "n_probes": (one(1, 3), huge()),
            "n_steps": (one(1, 5, 100), huge()),
            "seed": (one(0), junk()),
            "grid": (one(None, np.linspace(-1, 1, 7)), BAD_ARRAYS),
            "sigma": (one(None, 0.1), junk()),
        },
    ),
    "gd_stability": (
        nd.gd_stability,
        {
            "H": (one(H_SPD, nd.hessian_operator(MLP, THETA, X, Y)), junk(np.ones((2, 3)))),
            "lr": (pos(0.01, 3), junk()),
            "jacobian": (one(None), junk(np.ones(4), np.ones((2, 3)))),
            "rank_tol": (one(1e-9), junk()),
            "tol": (one(1e-10, 1e-6), junk()),
        },
    ),
    "gradient_descent": (
        nd.gradient_descent,
        {
            "mlp": (one(MLP), junk()),
            "theta0": (one(THETA), BAD_ARRAYS),
            "X": (one(X), BAD_ARRAYS),
            "Y": (one(Y), BAD_ARRAYS),
            "lr": (pos(0.01, 0.5), junk(1e300)),
            "steps": (one(1, 5, 20), huge()),
            "sharpness_every": (one(0, 2, 5), huge()),
            "k": (one(1, 2), huge()),
            "batch_size": (one(None, 1, 3), huge(6)),
            "seed": (one(0, 2), junk()),
            "sharpness_tol": (one(1e-6), junk()),
            "chunk_steps": (one(1, 3, 1000), huge()),
            "overwrite": (BOOL, BAD_BOOL),
            "resume": (one(False), junk(True)),
        },
    ),
    "eos_dataset": (
        nd.eos_dataset,
        {"n": (one(1, 10), huge()), "d": (one(3, 4), huge(2)), "seed": (one(0), junk())},
    ),
    "eos_experiment": (
        nd.eos_experiment,
        {
            "lrs": (one((0.1,), [0.05, 0.1], 0.1), junk((-0.1,), ("a",))),
            "n": (one(5), huge()),
            "d": (one(3), huge()),
            "width": (one(2), huge()),
            "depth": (one(1), huge()),
            "steps": (one(3), huge()),
            "sharpness_every": (one(0, 2), huge()),
            "seed": (one(0), junk()),
            "out_dir": (one(None), junk(MISSING_DIR)),
            "overwrite": (BOOL, BAD_BOOL),
        },
    ),
    "eos_summary": (nd.eos_summary, {"runs": (one({}), junk({0.1: 1}, {"a": None}))}),
    # Lyapunov exponents
    "Henon": (nd.Henon, {"a": (reals(0, 1.4), junk()), "b": (reals(0.1, 0.3), junk())}),
    "Lorenz63": (
        nd.Lorenz63,
        {"sigma": (pos(1, 10), junk()), "rho": (pos(1, 28), junk()), "beta": (pos(), junk())},
    ),
    "MapSystem": (
        nd.MapSystem,
        {
            "step": (one(numba.njit(lambda x, a, o: None)), junk(lambda x, a, o: None)),
            "jac": (one(numba.njit(lambda x, a, J: None)), junk()),
            "dim": (one(1, 2), huge()),
            "args": (one(()), junk()),
        },
    ),
    "FlowSystem": (
        nd.FlowSystem,
        {
            "f": (one(numba.njit(lambda t, x, a, o: None)), junk()),
            "jac": (one(numba.njit(lambda t, x, a, J: None)), junk()),
            "dim": (one(3), huge()),
        },
    ),
    "lyapunov_spectrum[map]": (
        nd.lyapunov_spectrum,
        {
            "system": (one("henon", nd.Henon()), junk("lorenz", NODE)),
            "x0": (one(np.zeros(2), [0.1, 0.1]), BAD_ARRAYS),
            "k": (one(None, 1, 2), huge(3)),
            "steps": (one(10, 50), junk()),
            "transient": (one(0, 5, 5.0), junk(1.5)),
            "reorth_every": (one(1, 3), huge()),
            "n_records": (one(1, 5, 200), huge()),
            "n_blocks": (one(2, 20), huge(1)),
            "seed": (one(0, 3), junk()),
            "V0": (one(None), BAD_ARRAYS),
            "dt": (one(None), junk()),
            "overwrite": (BOOL, BAD_BOOL),
            "resume": (one(False), junk(True)),
        },
    ),
    "lyapunov_spectrum[flow]": (
        nd.lyapunov_spectrum,
        {
            "system": (one("lorenz63", nd.Lorenz63()), junk("henon")),
            "x0": (one(np.ones(3)), BAD_ARRAYS),
            "k": (one(None, 1), huge()),
            "t_end": (one(0.1, 0.5), junk(1e308)),
            "dt": (one(0.01, 0.05), junk(1e-300)),
            "transient": (one(0.0, 0.1), junk(1e308)),
            "reorth_every": (one(1, 2), huge()),
            "n_records": (one(1, 10), huge()),
            "n_blocks": (one(2), huge()),
            "seed": (one(0), junk()),
        },
    ),
    "product_lyapunov": (
        nd.product_lyapunov,
        {
            "factors": (
                one(RNG.standard_normal((20, 3, 3)), lambda rng, m: rng.standard_normal((m, 2, 2))),
                junk(np.ones((3, 2, 3)), np.zeros((0, 2, 2)), lambda rng, m: "x"),
            ),
            "k": (one(None, 1, 2), huge()),
            "steps": (one(None, 30), junk()),
            "seed": (one(0, 4), junk()),
            "chunk": (one(1, 7, 4096), huge()),
            "n_blocks": (one(2, 20), huge()),
            "reorth_every": (one(1, 2), huge()),
        },
    ),
    "sgd_lyapunov": (
        nd.sgd_lyapunov,
        {
            "G": (one(G, np.stack([H_SPD] * 3)), BAD_ARRAYS),
            "lr": (pos(0.01, 2), junk()),
            "batch_size": (one(1, 2), huge(7)),
            "steps": (one(10, 40), junk()),
            "k": (one(1, 2), huge()),
            "seed": (one(0, 7, [1, 2]), junk([-1], [1.5])),
            "transient": (one(0, 5), junk()),
            "sampling": (one("with", "without"), junk("both")),
            "replicas": (one(1, 2), huge()),
            "space": (one("span", "full"), junk("half")),
            "rows_per_sample": (one(1, 2), huge()),
            "reorth_every": (one(1, 3), huge()),
            "n_blocks": (one(2, 20), huge()),
            "level": (one(0.95, 0.5), junk(1.0)),
            "overwrite": (BOOL, BAD_BOOL),
            "resume": (one(False), junk(True)),
        },
    ),
    "sgd_lyapunov_mlp": (
        lambda mlp, theta, X, lr, batch_size, steps: nd.sgd_lyapunov_mlp(
            mlp, theta, X, lr, batch_size, steps=steps, transient=0
        ),
        {
            "mlp": (one(MLP), junk(FF, nd.MLP((2, 1), loss="cross_entropy"))),
            "theta": (one(THETA), BAD_ARRAYS),
            "X": (one(X), BAD_ARRAYS),
            "lr": (pos(0.01, 1), junk()),
            "batch_size": (one(1, 2), huge()),
            "steps": (one(10), junk()),
        },
    ),
    "mean_square_exponent": (
        nd.mean_square_exponent,
        {
            "G": (one(G, np.stack([H_SPD] * 3)), BAD_ARRAYS),
            "lr": (pos(0.01, 2), junk()),
            "batch_size": (one(1, 3), huge()),
            "sampling": (one("with", "without"), junk()),
            "rows_per_sample": (one(1, 2), huge()),
        },
    ),
    "sgd_stability_diagram": (
        nd.sgd_stability_diagram,
        {
            "G": (one(G), BAD_ARRAYS),
            "lrs": (one([0.1, 0.5], (0.2,)), junk([-1.0], [[0.1]])),
            "batch_sizes": (one([1, 2], (3,)), huge([0], [1.5], [100])),
            "steps": (one(10), junk()),
            "k": (one(1), huge()),
            "seed": (one(0, 2), junk()),
            "transient": (one(0, 3), junk()),
            "sampling": (one("with"), junk()),
            "replicas": (one(1, 2), huge()),
            "rows_per_sample": (one(1), huge()),
            "mean_square": (BOOL, BAD_BOOL),
            "overwrite": (BOOL, BAD_BOOL),
            "resume": (one(False), junk(True)),
        },
    ),
    "network_lyapunov": (
        nd.network_lyapunov,
        {
            "mlp": (one(MLP, MLP2), junk(FF)),
            "X": (one(X), BAD_ARRAYS),
            "theta": (one(None), BAD_ARRAYS),
            "seed": (one(0, 1), junk()),
            "k": (one(None, 1, 2), huge()),
        },
    ),
    "random_network_lyapunov": (
        nd.random_network_lyapunov,
        {
            "width": (one(2, 4), huge()),
            "depth": (one(1, 3), huge()),
            "sigma_w": (pos(0.5, 2), junk()),
            "sigma_b": (one(0.0, 0.3), junk()),
            "activation": (ACTS, BAD_ACT),
            "k": (one(1, 2), huge()),
            "n_inputs": (one(1, 3), huge()),
            "networks": (one(1, 2), huge()),
            "q0": (one(1.0), junk()),
            "skip_layers": (one(0), huge()),
            "seed": (one(0, 3), junk()),
        },
    ),
    # sweeps
    "sweep": (
        nd.sweep,
        {
            "fn": (one(lambda x: {"y": 2.0 * x}), junk(lambda x: "y")),
            "grid": (
                one({"x": [1.0, 2.0]}, [{"x": 1}, {"x": 3}]),
                junk({"x": "ab"}, {"x": []}, {"1x": [1]}, [{"x": 1}, {"y": 2}], {"x": [np.nan]}),
            ),
            # not None or "local" (they start a cluster) nor an address (a connection attempt)
            "scheduler": (one("serial"), ["tcp", "somewhere", 1, [], object(), b"serial"]),
            "overwrite": (BOOL, BAD_BOOL),
            "resume": (one(False), junk(True)),
            "n_workers": (one(None, 1, 2), huge()),
            "seed": (one(0, 5), junk()),
        },
    ),
    "kuramoto_order_parameter": (
        nd.kuramoto_order_parameter,
        {
            "K": (reals(0, 3), junk()),
            "N": (one(1, 5, 20), huge()),
            "gamma": (pos(0.1, 1), junk()),
            "t_end": (one(0.5, 1.0), huge(1e308)),
            "dt": (one(0.05, 0.1), junk(1e-300)),
            "t_from": (one(None, 0.0, 0.2), junk(5.0)),
            "freq": (one("quantile", "random"), junk("cauchy")),
            "seed": (one(None, 0, 3, np.random.SeedSequence(1)), junk([-1], [0.5])),
        },
    ),
    "open_run": (
        lambda path: nd.open_run(path).close(),
        {"path": (one(RUN_FILE), junk(os.path.join(MISSING_DIR, "r.h5"), W_FILE, DATA))},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_base_calls_work(name):
    """The starting point of the fuzz is a valid call (else it would test one refusal only)."""
    fn, spec = CASES[name]
    fn(**{arg: valid[0] for arg, (valid, _) in spec.items()})


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_bad_value_alone_is_refused_or_works(name):
    """Every listed bad value of every argument, one at a time, in an otherwise valid call."""
    fn, spec = CASES[name]
    base = {arg: valid[0] for arg, (valid, _) in spec.items()}
    failures = []
    for arg, (_, bad) in spec.items():
        for value in bad:
            try:
                check_call(fn, {**base, arg: value})
            except Exception as exc:  # noqa: BLE001 (collected, reported below)
                failures.append(f"{arg}={value!r:.60}: {type(exc).__name__}: {exc!s:.200}")
    assert not failures, f"{name}: " + "\n".join(failures)


@pytest.mark.parametrize("name", sorted(CASES))
@FUZZ
@given(data=st.data())
def test_bad_input_is_refused_with_a_message(name, data):
    """Random valid calls with up to two bad arguments."""
    fn, spec = CASES[name]
    check_call(fn, data.draw(calls(spec), label="arguments"))


# -- streaming entry points: only the output path is fuzzed (a bad path must be refused before
# any work; a good one in a fresh folder works) ------------------------------------------------
PATHS = st.sampled_from(
    junk(
        os.path.join(MISSING_DIR, "run.h5"),
        tempfile.gettempdir(),  # a folder, not a file
        b"bytes.h5",
    )
)
STREAMING = {
    "simulate": lambda out: nd.simulate(KURAMOTO, OMEGA, 0.2, 0.1, out=out),
    "gradient_descent": lambda out: nd.gradient_descent(MLP, THETA, X, Y, lr=0.1, steps=2, out=out),
    "lyapunov_spectrum": lambda out: nd.lyapunov_spectrum("henon", np.zeros(2), steps=5, out=out),
    "sgd_lyapunov": lambda out: nd.sgd_lyapunov(G, 0.1, 1, steps=5, transient=0, out=out),
    "sgd_stability_diagram": lambda out: nd.sgd_stability_diagram(
        G, [0.1], [1], steps=5, transient=0, out=out
    ),
    "sweep": lambda out: nd.sweep(lambda x: {"y": x}, {"x": [1.0]}, scheduler="serial", out=out),
    "odeint": lambda out: nd.odeint(NODE, np.ones(2), [0.0, 0.1], out=out),
    "ddeint": lambda out: nd.ddeint(MG, 1.0, [0.0, 0.1], delays=1.0, out=out),
    "dde_lyapunov": lambda out: nd.dde_lyapunov(
        MG, 1.0, delays=0.5, k=1, t_end=0.5, dt=0.1, out=out
    ),
    "eos_experiment": lambda out: nd.eos_experiment(
        (0.1,), n=5, d=3, width=2, depth=1, steps=2, sharpness_every=0, out_dir=out
    ),
}


@pytest.mark.parametrize("name", sorted(STREAMING))
@settings(FUZZ, max_examples=12)
@given(out=PATHS)
def test_bad_output_paths_are_refused_before_any_work(name, out):
    with in_fresh_folder():  # relative paths ("abc") land there
        check_call(STREAMING[name], {"out": out})


def _diagram():
    return nd.sgd_stability_diagram(G, [0.1, 0.5], [1, 2], steps=10, transient=0, replicas=2)


@settings(FUZZ, max_examples=15)
@given(path=PATHS, ax=st.sampled_from(junk()))
def test_plots_check_their_arguments_first(path, ax):
    diagram = _diagram()
    with in_fresh_folder():
        check_call(nd.plot_stability_diagram, {"diagram": diagram, "path": path})
        check_call(nd.plot_stability_diagram, {"diagram": ax, "path": None})
        check_call(nd.plot_eos, {"runs": {}, "path": path})
        check_call(nd.plot_eos, {"runs": ax, "path": "f.png"})


# -- the failures this fuzz found, each with the message it now gives ---------------------------
KNOWN = [
    (lambda: nd.erdos_renyi(5, 0.5, seed=-1), "seed must be an integer >= 0"),
    (lambda: nd.kuramoto_order_parameter(1.0, N=5, t_end=1.0, seed=[0.5]), "seed must be"),
    (lambda: nd.sgd_lyapunov(G, 0.1, 1, steps=5, seed=-3), "seed must be an integer >= 0"),
    (lambda: nd.simulate(KURAMOTO, OMEGA, 1e308, 0.1), "t_end / dt gives"),
    (lambda: nd.lyapunov_spectrum("lorenz63", np.ones(3), t_end=1e308, dt=0.01), "t_end / dt"),
    (lambda: nd.kuramoto_order_parameter(1.0, N=5, t_end=1e308), "t_end / dt gives"),
    (lambda: nd.ddeint(MG, 1.0, [0, 1], delays=1e12, method="rk4", dt=0.1), "needs about"),
    (lambda: nd.simulate(KURAMOTO, OMEGA, 1.0, 0.1, chunk_steps=1e12), "needs about"),
    (lambda: nd.sharpness(MLP, THETA, X, Y, v0="abc"), "v0 must be convertible"),
    (lambda: nd.NeuralDDE(NDDE._W[0], NDDE._A[0], NDDE._B[0, 0], []), "b must have shape (3,)"),
    (lambda: nd.gd_stability(H_SPD, 0.1, tol="abc"), "tol must be a real number"),
    (lambda: nd.order_parameter([]), "theta must hold at least one phase"),
    (lambda: nd.gd_stability(H_SPD, 0.1, jacobian=np.ones(4)), "jacobian must have 2 dimension"),
    (lambda: nd.eos_summary("abc"), "runs must be a dict"),
    (lambda: nd.MLP((10**6, 10**6)).init(), "needs about"),
    (lambda: nd.twisted_state(10**12, 1), "N = 1000000000000 needs about"),
]


@pytest.mark.parametrize("k", range(len(KNOWN)))
def test_known_bad_inputs_are_refused_with_a_message(k):
    call, message = KNOWN[k]
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert message in str(info.value)


def test_ddeint_dopri5_with_a_first_step_runs():
    # found by the fuzz: a given dt left the step controller's memory at 0 (ZeroDivisionError)
    sol = nd.ddeint(MG, 1.0, np.linspace(0, 1, 4), delays=0.5, dt=0.1)
    ref = nd.ddeint(MG, 1.0, np.linspace(0, 1, 4), delays=0.5)
    np.testing.assert_allclose(sol.y, ref.y, rtol=1e-5)  # both within rtol 1e-6 of x(t)
