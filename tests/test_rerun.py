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


@pytest.mark.parametrize("kind", KINDS)
def test_rerun_reproduces_rows_bitwise(kind, tmp_path):
    src = make(kind, tmp_path)
    again = tmp_path / "again.h5"
    rerun(src, again)
    a, b = _series(src), _series(again)
    assert a and set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert np.array_equal(a[key], b[key], equal_nan=True), key
    with open_run(again) as f:
        assert f.status == "complete"


def test_rerun_of_a_user_function_says_it_is_not_stored(tmp_path):
    src = make("sweep", tmp_path)
    with pytest.raises(
        ValueError, match="user function.*kuramoto_order_parameter.*code digest .sha256:"
    ):
        rerun(src, tmp_path / "again.h5")


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
    a, b = _series(src), _series(tmp_path / "again.h5")
    assert a and all(np.array_equal(a[k], b[k]) for k in a)


def test_rerun_of_a_user_field_says_it_is_not_stored(tmp_path):
    from nndyn_fast.cli import main

    src = tmp_path / "emb.h5"
    assert main(["ode", "--demo", "embedding", "--batch", "3", "--frames", "3", "--out",
                 str(src)]) == 0  # fmt: skip
    with pytest.raises(ValueError, match="field is a user function.*shear_field.*sha256:"):
        rerun(src, tmp_path / "again.h5")
