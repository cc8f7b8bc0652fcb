"""nndyn_fast.rerun: a run rebuilt from its file's stored parameters alone reproduces the run.

Each test makes a tiny run (tests/run_kinds.py), reruns it from the file into another file and
checks every committed row of every series is bitwise the original's (the same computation on
the same machine: the property, not an accuracy claim).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from run_kinds import make

from nndyn_fast import rerun
from nndyn_fast.storage import open_run

KINDS = [
    "kuramoto",
    "firing_rate",
    "noisy_kuramoto",
    "noisy_firing_rate",
    "ode",
    "dde",
    "gradient_descent",
    "lyapunov_spectrum",
    "sgd_lyapunov",
    "sgd_stability_diagram",
    "meanfield_limit",
    "meanfield_limit_fp",
    "fit",
    "dde_lyapunov",
    "product_lyapunov",
    "sweep",
    "coupling_spectrum",
    "coupling_spectrum_directed",
    "finite_size_gap",
]


def _series(path) -> dict:
    """Every committed row of every field of every series of a run file."""
    out = {}
    with open_run(path) as f:
        rows = f.rows
    with h5py.File(path, "r") as h5:
        for s, n in rows.items():
            for name, ds in h5[s].items():
                if isinstance(ds, h5py.Dataset) and ds.ndim >= 1 and ds.shape[0] >= n:
                    out[f"{s}/{name}"] = ds[:n]
    return out


def _same_run(src, again) -> None:
    """``again`` holds ``src``'s rows bitwise, and the same parameters (the command line's
    options too), complete."""
    a, b = _series(src), _series(again)
    assert a and set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert np.array_equal(a[key], b[key], equal_nan=True), key
    with open_run(src) as f, open_run(again) as g:
        assert g.status == "complete"
        pa, pb = f.params, g.params
        assert set(pa) == set(pb)
        for key in pa:
            assert np.array_equal(np.asarray(pa[key]), np.asarray(pb[key])), key


# the command that wrote each kind's file in tests/run_kinds.py
COMMAND = {
    "kuramoto": "kuramoto",
    "firing_rate": "kuramoto",
    "noisy_kuramoto": "kuramoto",
    "noisy_firing_rate": "kuramoto",
    "ode": "ode",
    "dde": "dde",
    "gradient_descent": "eos",
    "sgd_stability_diagram": "sgd-lyapunov",
    "sweep": "sweep kuramoto",
    "fit": "ode fit",
    "coupling_spectrum": "spectrum",
    "coupling_spectrum_directed": "spectrum",
    "finite_size_gap": "limit",
}


@pytest.mark.parametrize("kind", KINDS)
def test_rerun_reproduces_rows_bitwise(kind, tmp_path):
    """... and a command's file says how it was made: the command and the options that decide
    the run (every generator's seed), not those that do not (files, resume, schedulers)."""
    import json

    src = make(kind, tmp_path)
    again = tmp_path / "again.h5"
    rerun(src, again)
    _same_run(src, again)
    if kind in COMMAND:
        with open_run(src) as f:
            p = f.params
        assert p["cli_command"] == COMMAND[kind]
        options = json.loads(p["cli_options"])
        assert "seed" in options
        assert not {"out", "resume", "overwrite", "progress", "scheduler", "workers"} & set(options)


def test_rerun_of_a_user_function_says_it_is_not_stored(tmp_path):
    from sweep_targets import cheap

    from nndyn_fast import sweep

    src = tmp_path / "user.h5"
    sweep(cheap, {"x": [1.0, 2.0]}, scheduler="serial", out=src)
    with pytest.raises(
        ValueError, match="user function.*sweep_targets.cheap.*code digest .sha256:"
    ):
        rerun(src, tmp_path / "again.h5")


def test_rerun_of_a_sweep_of_explicit_points(tmp_path):
    """A list of points (not a product), the package's target with a bound option."""
    import functools

    from nndyn_fast import kuramoto_order_parameter, sweep

    src = tmp_path / "pts.h5"
    fn = functools.partial(kuramoto_order_parameter, freq="random")
    pts = [{"K": 1.0, "N": 12, "t_end": 1.0, "dt": 0.1}, {"K": 3.0, "N": 16, "t_end": 1.0,
                                                        "dt": 0.1}]  # fmt: skip
    sweep(fn, pts, scheduler="serial", out=src, seed=4, units={"K": "1/s"})
    rerun(src, tmp_path / "again.h5")
    _same_run(src, tmp_path / "again.h5")
    with h5py.File(tmp_path / "again.h5", "r") as h5:
        assert h5["points/K"].attrs["units"] == "1/s"


def test_rerun_refuses_the_same_file(tmp_path):
    src = make("dde", tmp_path)
    with pytest.raises(ValueError, match="new file"):
        rerun(src, src)


@pytest.mark.parametrize("graph", ["erdos_renyi", "ring", "ring_pairwise", "dense"])
def test_rerun_rebuilds_each_built_in_coupling(graph, tmp_path):
    from nndyn_fast import Coupling, Graphon, Kuramoto, erdos_renyi, simulate

    n = 24
    rng = np.random.default_rng(3)
    W = {
        "erdos_renyi": lambda: erdos_renyi(n, 0.3, seed=1),
        "ring": lambda: Graphon.ring(0.2),
        "ring_pairwise": lambda: Coupling(Graphon.ring(0.2), n, pairwise=True),
        "dense": lambda: rng.random((n, n)),
    }[graph]()
    model = Kuramoto(rng.standard_cauchy(n) * 0.5, W, 2.0)
    src = tmp_path / "src.h5"
    simulate(model, rng.uniform(0, 2 * np.pi, n), 0.5, 0.05, save_every=5, out=src)
    rerun(src, tmp_path / "again.h5")
    _same_run(src, tmp_path / "again.h5")


def test_rerun_of_a_user_field_says_it_is_not_stored(tmp_path):
    from nndyn_fast.cli import main

    src = tmp_path / "emb.h5"
    assert main(["ode", "--demo", "embedding", "--batch", "3", "--frames", "3", "--out",
                 str(src)]) == 0  # fmt: skip
    with pytest.raises(ValueError, match="field is a user function.*shear_field.*sha256:"):
        rerun(src, tmp_path / "again.h5")


def test_rerun_of_a_neural_dde(tmp_path):
    """A NeuralDDE's weights, activation, layer times and delays are stored: two layers, two
    delays, a batch of constant histories."""
    from nndyn_fast import NeuralDDE, ddeint

    rng = np.random.default_rng(5)
    L, m, H, d = 2, 2, 3, 2
    f = NeuralDDE(rng.normal(size=(L, d, H)), rng.normal(size=(L, H, d)),
                  rng.normal(size=(L, m, H, d)) * 0.5, rng.normal(size=(L, H)),
                  activation="softplus", t_layers=[0.0, 0.7, 2.0])  # fmt: skip
    src = tmp_path / "ndde.h5"
    ddeint(f, rng.normal(size=(3, d)), np.linspace(0, 2, 9), delays=[0.3, 0.5], method="rk4",
           dt=0.05, out=src)  # fmt: skip
    rerun(src, tmp_path / "again.h5")
    _same_run(src, tmp_path / "again.h5")


def test_rerun_of_a_neural_ode_fit_by_adam_in_batches(tmp_path):
    """The mini-batches are drawn from the stored seed; the inner form, two layers and
    the solver's options are rebuilt from the file."""
    from nndyn_fast import NeuralODE
    from nndyn_fast.fit import fit

    rng = np.random.default_rng(6)
    model = NeuralODE.inner(rng.normal(size=(2, 2, 2)) * 0.5, rng.normal(size=(2, 2)) * 0.1,
                            activation="tanh", T=0.5)  # fmt: skip
    X = rng.normal(size=(6, 2))
    src = tmp_path / "fit.h5"
    fit(model, X, X[:, ::-1], method="adam", steps=5, batch_size=2, seed=3, solver="rk4",
        solver_steps=3, out=src)  # fmt: skip
    rerun(src, tmp_path / "again.h5")
    _same_run(src, tmp_path / "again.h5")


def test_rerun_of_a_sampled_factor_product_says_it_is_not_stored(tmp_path):
    from nndyn_fast.lyapunov import product_lyapunov

    src = tmp_path / "prod.h5"
    product_lyapunov(_gaussian_factors, steps=20, chunk=10, out=src)
    with pytest.raises(ValueError, match="factor sampler is a user function.*_gaussian_factors"):
        rerun(src, tmp_path / "again.h5")


def _gaussian_factors(rng, m):
    return rng.normal(size=(m, 2, 2))


@pytest.mark.parametrize("action", ["run", "lyapunov"])
def test_rerun_of_the_neural_dde_command(action, tmp_path):
    """``nndyn dde [lyapunov] --model neural``: the generated weights and the command's
    options are in the file, and the rerun reproduces rows and parameters."""
    from nndyn_fast.cli import main

    src = tmp_path / "n.h5"
    opts = ["--model", "neural", "--dim", "2", "--hidden", "3", "--tau", "1", "--seed", "4",
            "--history", "0.3", "-0.2", "--out", str(src)]  # fmt: skip
    if action == "run":
        opts += ["--t-end", "3", "--frames", "7"]
    else:
        opts += ["--t-end", "2", "--dt", "0.1", "--k", "2"]
    assert main(["dde", action, *opts]) == 0
    rerun(src, tmp_path / "again.h5")
    _same_run(src, tmp_path / "again.h5")


def test_a_spectrum_saved_from_the_api_is_refused_naming_the_missing_coupling(tmp_path):
    from nndyn_fast.graphs import Graphon
    from nndyn_fast.spectra import coupling_spectrum, save_spectrum

    out = save_spectrum(coupling_spectrum(Graphon.ring(0.2), 2, n=100), tmp_path / "s.h5")
    with pytest.raises(ValueError, match="not written by `nndyn spectrum`"):
        rerun(out, tmp_path / "again.h5")
