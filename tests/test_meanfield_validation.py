"""Bad input to the network API gives clear ValueErrors before any kernel runs."""

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from nndyn_fast import (
    DigraphMeasure,
    FiringRate,
    Graphon,
    Kuramoto,
    erdos_renyi,
    simulate,
    w_random_graph,
)

OK_OMEGA = np.zeros(4)
OK_W = np.ones((4, 4))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"omega": np.zeros(3)}, r"coupling must have shape \(3, 3\)"),
        ({"omega": np.zeros((2, 2))}, "omega must have 1 dimension"),
        ({"omega": []}, "N must be >= 1"),
        ({"omega": [0, np.nan, 0, 0]}, "omega must be finite"),
        ({"coupling": np.where(np.eye(4) > 0, np.nan, 1.0)}, "coupling must be finite"),
        ({"coupling": sp.csr_matrix(np.full((4, 4), np.inf))}, "coupling weights must be finite"),
        ({"coupling": sp.csr_matrix(np.ones((3, 3)))}, r"sparse coupling must have shape"),
        ({"coupling": DigraphMeasure(Graphon.ring(0.2), 5)}, "coupling has 5 nodes"),
        ({"K": np.inf}, "K must be finite"),
        ({"alpha": "x"}, "alpha must be a real number"),
        ({"dtype": "float16"}, r"dtype must be one of \['float64', 'float32'\]"),
    ],
)
def test_kuramoto_model_errors(kwargs, match):
    args = {"omega": OK_OMEGA, "coupling": OK_W, "K": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        Kuramoto(**args)


def test_firing_rate_unknown_activation():
    with pytest.raises(ValueError, match=r"activation must be one of \[.*'tanh'.*\], got 'elu'"):
        FiringRate(OK_OMEGA, OK_W, 1.0, activation="elu")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dt": 0.0}, "dt must be a finite number > 0"),
        ({"dt": -0.1}, "dt must be a finite number > 0"),
        ({"t_end": np.nan}, "t_end must be finite"),
        ({"state0": np.zeros(3)}, r"state0 must have shape \(4,\)"),
        ({"state0": np.full(4, np.inf)}, "state0 must be finite"),
        (
            {"method": "rk45"},
            r"method must be one of \['euler', 'rk4', 'dopri5', 'dop853'\], got 'rk45'",
        ),
        ({"save_every": 0}, "save_every must be an integer >= 1"),
        ({"save_every": 1.5}, "save_every must be an integer"),
        ({"model": "kuramoto"}, "model must be a Kuramoto or FiringRate"),
    ],
)
def test_simulate_errors(kwargs, match):
    args = {
        "model": Kuramoto(OK_OMEGA, OK_W, 1.0),
        "state0": np.zeros(4),
        "t_end": 1.0,
        "dt": 0.1,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        simulate(**args)


def test_graph_errors():
    with pytest.raises(ValueError, match=r"graphon must be one of \[.*\], got 'star'"):
        Graphon.by_name("star")
    with pytest.raises(ValueError, match="r must be a finite number > 0"):
        Graphon.ring(-0.1)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\)"):
        Graphon.power_law(1.5)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        erdos_renyi(10, 1.5)
    with pytest.raises(ValueError, match="N must be an integer >= 1"):
        erdos_renyi(0, 0.5)
    with pytest.raises(ValueError, match="N must be an integer >= 1"):
        DigraphMeasure(Graphon.ring(0.1), 0)
    with pytest.raises(ValueError, match="sorted"):
        DigraphMeasure(Graphon.ring(0.1), np.array([0.5, 0.1]))
    with pytest.raises(ValueError, match="mu must be finite"):
        DigraphMeasure(Graphon.ring(0.1), np.array([0.1, 0.5]), np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="Numba-jitted"):
        Graphon.from_function(lambda x, y: 1.0)
    with pytest.raises(ValueError, match="must be finite"):
        Graphon.from_function(numba.njit(lambda x, y: np.inf))
    with pytest.raises(ValueError, match="w must be a Graphon"):
        w_random_graph("ring", 10)


def test_erdos_renyi_statistics():
    n, p = 3000, 0.02
    A = erdos_renyi(n, p, seed=3)
    assert A.diagonal().sum() == 0 and A.max() == 1
    A.sum_duplicates()
    expected = n * (n - 1) * p
    # edge count ~ Binomial(N(N-1), p): within 4 standard deviations
    assert abs(A.nnz - expected) < 4 * np.sqrt(expected * (1 - p))
    deg = np.diff(A.indptr)
    # row degrees ~ Binomial(N - 1, p): mean and variance within 5% (3000 samples)
    assert abs(deg.var() / ((n - 1) * p * (1 - p)) - 1) < 0.1
    cols = A.indices
    # column usage is uniform: chi-square over 10 bins, 99.9% quantile of chi2(9) is 27.9
    counts = np.bincount(cols * 10 // n, minlength=10)
    chi2 = ((counts - counts.mean()) ** 2 / counts.mean()).sum()
    assert chi2 < 27.9


def test_w_random_graph_edge_density_matches_graphon():
    w, n = Graphon.small_world(0.2, 0.1), 1500
    A = w_random_graph(w, n, seed=5).toarray()
    W = w.matrix(n)
    np.fill_diagonal(W, 0)
    # E[A] = W; total edges within 4 standard deviations of Σ W_ij
    assert abs(A.sum() - W.sum()) < 4 * np.sqrt((W * (1 - W)).sum())
