"""fit of a NeuralDDE (exact method-of-steps gradients): descent, the gradient it sees against
central differences of ddeint's loss, the run file, and bitwise resume after every kill point."""

import numpy as np
import pytest

from nndyn_fast.dde_gradients import dde_loss_and_grad
from nndyn_fast.delay import NeuralDDE, ddeint
from nndyn_fast.fit import fit
from nndyn_fast.model_record import model_from_record
from nndyn_fast.rerun import rerun
from nndyn_fast.storage import open_run

# one worker compiles the adjoint kernels once and runs these in turn (under two workers
# each compiled them, at the same time)
pytestmark = pytest.mark.xdist_group("gradients")

TAU, T, STEPS = 0.5, 1.0, 10  # dt = T / STEPS = 0.1


def _model(seed=0, H=3):
    rng = np.random.default_rng(seed)
    return NeuralDDE(0.5 * rng.standard_normal((1, H)), rng.standard_normal((H, 1)),
                     rng.standard_normal((H, 1)), 0.1 * rng.standard_normal(H))  # fmt: skip


def _data():
    x = np.linspace(-1, 1, 7)[:, None]
    return x, 0.5 * x**2


def _loss(model, x, y):
    F = ddeint(model, x, [0.0, T], delays=TAU, method="rk4", dt=T / STEPS).y[-1]
    return 0.5 * np.mean(np.sum((F - y) ** 2, 1))


def test_lbfgs_and_adam_fit_a_neural_dde_on_its_exact_gradient():
    x, y = _data()
    m = _model()
    for method, kw in [("lbfgs", {}), ("adam", {"lr": 0.05})]:
        r = fit(m, x, y, delays=TAU, method=method, steps=12, solver_steps=STEPS, **kw)
        assert isinstance(r.model, NeuralDDE)
        assert r.loss[-1] < 0.7 * r.loss[0]
        # the recorded loss is that of the returned model's map under ddeint (independent)
        assert abs(_loss(r.model, x, y) - r.loss[-1]) < 1e-13
    # the last gradient norm is that of central differences of ddeint's loss (eps = 1e-6:
    # truncation ~1e-12, rounding ~1e-10 / 1e-6 of a loss of size 1e-1; tolerance 1e-7)
    W, A, B, b = r.model.layer_weights()
    parts = {"W": W, "A": A, "B": B, "b": b}
    num = []
    for k, v in parts.items():
        for idx in np.ndindex(v.shape):
            vp, vm = v.copy(), v.copy()
            vp[idx] += 1e-6
            vm[idx] -= 1e-6
            lp = _loss(NeuralDDE(**{**parts, k: vp}, t_layers=r.model._t_layers), x, y)
            lm = _loss(NeuralDDE(**{**parts, k: vm}, t_layers=r.model._t_layers), x, y)
            num.append((lp - lm) / 2e-6)
    assert abs(np.linalg.norm(num) - r.grad_norm[-1]) < 1e-7


def test_dde_fit_run_file_rebuilds_and_resume_compares(tmp_path):
    x, y = _data()
    m = _model(1)
    out = tmp_path / "fit.h5"
    r = fit(m, x, y, delays=TAU, steps=3, solver_steps=STEPS, out=out)
    with open_run(out) as f:
        np.testing.assert_array_equal(f.read("loss", "loss"), r.loss)
        p = f.params
        assert p["model"] == "NeuralDDE" and p["model_activation"] == "tanh"
        np.testing.assert_array_equal(p["delays"], np.atleast_1d(TAU))
        rebuilt = model_from_record(p)
        for a, b in zip(rebuilt.layer_weights(), m.layer_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    again = rerun(out, tmp_path / "again.h5")  # the stored parameters alone reproduce the fit
    np.testing.assert_array_equal(again.loss, r.loss)
    with pytest.raises(ValueError, match="delays"):
        fit(m, x, y, delays=0.3, steps=3, solver_steps=STEPS, out=out, resume=True)


def test_every_kill_point_of_an_adam_dde_fit_resumes_bitwise(tmp_path):
    from faults import every_kill_point

    x, y = _data()
    m = _model(2, H=2)
    kw = dict(delays=TAU, method="adam", steps=4, solver_steps=5, lr=0.05, batch_size=4, seed=3,
              commit_every=2)  # fmt: skip
    ref = fit(m, x, y, **kw)  # in memory: no file involved
    out = tmp_path / "k.h5"
    results = []

    def check():
        r = results[-1]
        np.testing.assert_array_equal(r.loss, ref.loss)
        for a, b in zip(r.model.layer_weights(), ref.model.layer_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        with open_run(out) as f:
            assert f.status == "complete"

    seen = every_kill_point(
        out,
        lambda: results.append(fit(m, x, y, **kw, out=out)),
        lambda: results.append(fit(m, x, y, **kw, out=out, resume=True)),
        check,
    )
    assert seen["resumed"] > 5


def test_dopri5_fit_of_a_neural_dde():
    # the accepted steps held fixed in each gradient; the recorded loss is that of ddeint's
    # adaptive map with the same tolerances and hmax (rounding only)
    x, y = _data()
    r = fit(_model(), x, y, delays=TAU, solver="dopri5", steps=5, rtol=1e-6, atol=1e-8)
    assert r.loss[-1] < 0.5 * r.loss[0]
    F = ddeint(r.model, x, [0.0, T], delays=TAU, rtol=1e-6, atol=1e-8, hmax=TAU / 1.05).y[-1]
    assert abs(0.5 * np.mean(np.sum((F - y) ** 2, 1)) - r.loss[-1]) < 1e-13


@pytest.mark.parametrize(
    "kw, match",
    [
        ({}, "delays must be given"),
        ({"delays": [0.5, 0.2]}, "delays"),
        ({"delays": TAU, "solver": "rk2"}, "solver"),
        ({"delays": TAU, "solver_steps": 1}, "shortest delay"),
    ],
)
def test_bad_dde_fit_input_is_refused(kw, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        fit(_model(), x, y, steps=2, **kw)


def test_ode_fit_refuses_delays():
    from nndyn_fast.neural import NeuralODE

    x, y = _data()
    with pytest.raises(ValueError, match="delays"):
        fit(NeuralODE.random(1, 3, seed=0), x, y, steps=2, delays=0.5)


def test_checkpoints_reach_the_dde_gradient(tmp_path, monkeypatch):
    # fit hands checkpoints to the DDE gradient and stores it with the run; the checkpointed
    # gradient is bitwise that of the default (7 rows: one worker accumulator per block),
    # so the descent is the same, bit for bit
    import nndyn_fast.fit as fit_module

    seen = []

    def spy(*args, **kw):
        seen.append(kw.get("checkpoints"))
        return dde_loss_and_grad(*args, **kw)

    x, y = _data()
    m = _model(2)
    kw = dict(delays=TAU, method="adam", steps=3, solver_steps=40, T=4.0, lr=0.05)
    ref = fit(m, x, y, **kw)
    monkeypatch.setattr(fit_module, "dde_loss_and_grad", spy)
    out = tmp_path / "fit.h5"
    r = fit(m, x, y, **kw, checkpoints=1, out=out)
    assert seen and set(seen) == {1}
    np.testing.assert_array_equal(r.loss, ref.loss)
    with open_run(out) as f:
        assert f.params["checkpoints"] == 1
    with pytest.raises(ValueError, match="checkpoints"):
        fit(m, x, y, **kw, checkpoints=2, out=out, resume=True)
