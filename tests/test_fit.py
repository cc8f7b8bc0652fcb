"""fit (L-BFGS / Adam on exact flow-map gradients), its run file, and the embedding statements."""

import numpy as np
import pytest

from nndyn_fast.expressivity import embedding_experiment
from nndyn_fast.fit import fit
from nndyn_fast.neural import AugmentedNeuralODE, NeuralODE, flow_map
from nndyn_fast.storage import open_run

# one worker compiles the adjoint kernels once and runs these in turn (under two workers
# each compiled them, at the same time)
pytestmark = pytest.mark.xdist_group("gradients")


def _data():
    x = np.linspace(-1, 1, 9)[:, None]
    return x, np.sin(2 * x)


def test_lbfgs_and_adam_decrease_the_loss_of_the_map_they_fit():
    x, y = _data()
    m = NeuralODE.random(1, 4, seed=0)
    for method, kw in [("lbfgs", {}), ("adam", {"lr": 0.05})]:
        r = fit(m, x, y, method=method, steps=15, solver_steps=5, **kw)
        assert r.loss[-1] < 0.6 * r.loss[0]
        # the recorded loss is that of the returned model's discrete map (independent forward)
        F = flow_map(r.model, x, method="rk4", dt=0.2)
        assert abs(0.5 * np.mean(np.sum((F - y) ** 2, 1)) - r.loss[-1]) < 1e-12


def test_every_kill_point_of_an_adam_fit_resumes_bitwise(tmp_path):
    from faults import every_kill_point

    x, y = _data()
    m = NeuralODE.random(1, 3, seed=1)
    kw = dict(method="adam", steps=4, solver_steps=3, lr=0.05, batch_size=5, seed=3,
              commit_every=2)  # fmt: skip
    ref = fit(m, x, y, **kw)  # in memory: no file involved
    out = tmp_path / "k.h5"
    results = []

    def check():
        r = results[-1]
        np.testing.assert_array_equal(r.loss, ref.loss)
        np.testing.assert_array_equal(r.model.A, ref.model.A)
        np.testing.assert_array_equal(r.model.W, ref.model.W)
        with open_run(out) as f:
            assert f.status == "complete"

    seen = every_kill_point(
        out,
        lambda: results.append(fit(m, x, y, **kw, out=out)),
        lambda: results.append(fit(m, x, y, **kw, out=out, resume=True)),
        check,
    )
    assert seen["resumed"] > 5


def test_fit_streams_the_loss_curve_and_resumes_lbfgs(tmp_path):
    x, y = _data()
    m = NeuralODE.random(1, 3, seed=2)
    out = tmp_path / "fit.h5"
    r = fit(m, x, y, steps=5, solver_steps=3, out=out, commit_every=2)
    with open_run(out) as f:
        np.testing.assert_array_equal(f.read("loss", "loss"), r.loss)
        assert f.read("loss", "step")[0] == 0
    again = fit(m, x, y, steps=5, solver_steps=3, out=out, commit_every=2, resume=True)
    np.testing.assert_array_equal(again.loss, r.loss)  # complete: nothing more to do


def test_checkpoints_reach_the_gradient_and_the_run_file(tmp_path):
    # the tape (default) and 2 slots do the same arithmetic: the same curve, bitwise; the
    # option is stored with the run, so a resume compares it and a rerun repeats it
    from nndyn_fast.rerun import rerun

    x, y = _data()
    m = NeuralODE.random(1, 3, seed=4)
    kw = dict(method="adam", steps=3, solver_steps=4, lr=0.05)
    ref = fit(m, x, y, **kw)
    out = tmp_path / "slots.h5"
    r = fit(m, x, y, **kw, checkpoints=2, out=out)
    np.testing.assert_array_equal(r.loss, ref.loss)
    with open_run(out) as f:
        assert f.params["checkpoints"] == 2
    with pytest.raises(ValueError, match="checkpoints"):
        fit(m, x, y, **kw, checkpoints=3, out=out, resume=True)
    again = rerun(out, tmp_path / "again.h5")
    np.testing.assert_array_equal(again.loss, ref.loss)
    with open_run(tmp_path / "again.h5") as f:
        assert f.params["checkpoints"] == 2


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"method": "sgd"}, "method"),
        ({"solver": "rk9"}, "solver"),
        ({"Y": np.full((9, 1), np.nan)}, "Y"),
        ({"Y": np.ones((8, 1))}, "rows"),
        ({"resume": True}, "out"),
        ({"batch_size": 3}, "adam"),
        ({"checkpoints": 0}, "checkpoints"),
    ],
)
def test_bad_input_is_refused(kw, match):
    x, y = _data()
    Y = kw.pop("Y", y)
    with pytest.raises(ValueError, match=match):
        fit(NeuralODE.random(1, 3, seed=0), x, Y, steps=2, solver_steps=2, **kw)


def test_square_needs_augmentation():
    # best monotone sup-error for x^2 on a grid holding -1, 0, 1 is 1/2 (a theorem: the fitted
    # 1-D flow with any affine readout cannot beat it); m = 2 gets within 1e-2
    r = embedding_experiment(n_points=11, hidden=6, steps=150, solver_steps=8, seed=0)
    assert r.sup_plain >= 0.5 - 1e-12
    assert r.sup_augmented <= 1e-2
    assert isinstance(r.augmented, AugmentedNeuralODE)


def test_ode_fit_command_writes_the_loss_curve(tmp_path, capsys):
    from nndyn_fast.cli import main

    out = tmp_path / "fit.h5"
    args = ["ode", "fit", "--aug", "1", "--points", "7", "--hidden", "3", "--steps", "5",
            "--solver-steps", "3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    with open_run(out) as f:
        loss = f.read("loss", "loss")
    assert loss[-1] < loss[0] and f.status == "complete"
