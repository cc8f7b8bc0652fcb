"""Neural-DDE gradients (nndyn_fast.dde_gradients) against central differences of ddeint and of
a numpy method of steps on the frozen step sequence (tests/reference_dde_gradients.py)."""

import tracemalloc

import numpy as np
import pytest
from reference_dde_gradients import frozen_map

import nndyn_fast as nf
from nndyn_fast.dde_gradients import _options, _record, dde_flow_vjp, dde_loss_and_grad
from nndyn_fast.delay import NeuralDDE, ddeint

# one worker compiles the adjoint kernels once and runs these in turn (under two workers
# each compiled them, at the same time)
pytestmark = pytest.mark.xdist_group("gradients")

# delays that are not multiples of dt and a T off the step grid: ddeint splits steps at the
# propagated discontinuities and ends on a shorter step, and the adjoint follows its nodes
T_MODEL, DT, TAUS = 2.0, 0.1, [0.3, 0.45]
T = 1.95  # no discontinuity within 1e-3 of it (sums of <= 4 delays from 0 and from 1)


def _model(act="tanh", **kw):
    rng = np.random.default_rng(0)
    L, d, H, m = 2, 2, 3, 2
    p = {
        "W": rng.standard_normal((L, d, H)) * 0.7,
        "A": rng.standard_normal((L, H, d)) * 0.7,
        "B": rng.standard_normal((L, m, H, d)) * 0.7,
        "b": 0.1 * rng.standard_normal((L, H)),
    }
    p.update(kw)
    return NeuralDDE(p["W"], p["A"], p["B"], p["b"], act, T=T_MODEL), p


def _central(fun, v, eps):
    out = np.zeros_like(v)
    for idx in np.ndindex(v.shape):
        vp, vm = v.copy(), v.copy()
        vp[idx] += eps
        vm[idx] -= eps
        out[idx] = (fun(vp) - fun(vm)) / (2 * eps)
    return out


def _check_all(g, P, X, C, F, eps, tol):
    """Every gradient of sum C·F against central differences of F(params, X, T)."""
    for k, v in P.items():
        num = _central(lambda p, k=k: np.sum(C * F({k: p}, X, T)), v, eps)
        np.testing.assert_allclose(g.params[k], num, atol=tol, rtol=0, err_msg=k)
    num = _central(lambda x: np.sum(C * F({}, x, T)), X, eps)
    np.testing.assert_allclose(g.X, num, atol=tol, rtol=0, err_msg="X")
    dT = (np.sum(C * F({}, X, T + eps)) - np.sum(C * F({}, X, T - eps))) / (2 * eps)
    assert abs(g.T - dT) < tol, (g.T, dT)


def test_rk4_gradients_match_central_differences_of_ddeint():
    # two layers (a switch at t = 1), two delays: the RK4 method of steps with Hermite-
    # interpolated delayed values, differentiated through the interpolation, the history, the
    # layer switch and the last (shorter) step
    model, P = _model()
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3, 2))
    C = rng.standard_normal((3, 2))
    g = dde_flow_vjp(model, X, T, C, delays=TAUS, dt=DT)

    def F(kw, x, t_end):
        m = _model(**kw)[0]
        return ddeint(m, x, np.array([0.0, t_end]), delays=TAUS, method="rk4", dt=DT).y[-1]

    # the map is ddeint's (same kernel; rounding only)
    np.testing.assert_allclose(g.y, F({}, X, T), atol=1e-13, rtol=0)
    # eps = 1e-6: truncation eps^2 |F'''| ~ 1e-12, rounding 1e-16 / eps ~ 1e-10, so 1e-6
    # leaves four orders of margin (ddeint's map is smooth here: its steps do not move)
    _check_all(g, P, X, C, F, 1e-6, 1e-6)
    # a single row: the (d,) shapes, and the loss
    g1 = dde_flow_vjp(model, X[0], T, C[0], delays=TAUS, dt=DT)
    assert g1.X.shape == (2,) and g1.y.shape == (2,)
    np.testing.assert_allclose(g1.X, g.X[0], atol=1e-13, rtol=0)  # rows are independent
    loss, gl = dde_loss_and_grad(model, X, np.zeros((3, 2)), T, delays=TAUS, dt=DT)
    assert abs(loss - 0.5 * np.sum(g.y**2) / 3) < 1e-13
    gy = dde_flow_vjp(model, X, T, g.y / 3, delays=TAUS, dt=DT)
    np.testing.assert_allclose(gl.params["B"], gy.params["B"], atol=1e-14, rtol=0)


def test_dopri5_gradients_of_the_frozen_steps_and_of_ddeint():
    model, P = _model()
    rng = np.random.default_rng(2)
    X = rng.standard_normal((2, 2))
    C = rng.standard_normal((2, 2))
    g = dde_flow_vjp(model, X, T, C, delays=TAUS, method="dopri5", rtol=1e-6, atol=1e-8)
    hmax = min(TAUS) / 1.05
    opts = _options(model, X, T, TAUS, "dopri5", None, 1e-6, 1e-8, None, 10**5)[-1]
    tn, *_, ns, _, _, _ = _record(model, X, T, np.array(TAUS), "dopri5", opts, 256)
    assert np.all(ns > 10)  # adaptive steps of varying size, ending on T
    act = np.tanh

    def frozen(kw, x, t_end):
        p = {**P, **kw}
        out = []
        for r in range(x.shape[0]):
            t = tn[r, : ns[r] + 1].copy()
            t[-1] = t_end  # the last step stretched
            out.append(frozen_map(p["W"], p["A"], p["B"], p["b"], act, model._t_layers,
                                  x[r], TAUS, t, "dopri5"))  # fmt: skip
        return np.array(out)

    # the reference on ddeint's steps is ddeint's map (np.tanh against the kernels' tanh:
    # a few ulps per stage)
    y = ddeint(model, X, [0.0, T], delays=TAUS, rtol=1e-6, atol=1e-8, hmax=hmax).y[-1]
    np.testing.assert_allclose(frozen({}, X, T), y, atol=1e-12, rtol=0)
    np.testing.assert_allclose(g.y, y, atol=1e-13, rtol=0)
    # the discrete map with its steps frozen: exact, so central differences (eps = 1e-6,
    # truncation ~1e-12, rounding ~1e-10) agree to 1e-6 with room to spare
    _check_all(g, P, X, C, frozen, 1e-6, 1e-6)

    # against ddeint itself at a tight tolerance: the frozen-step gradient misses only the
    # step-size controller's response, a relative change of the local error, O(rtol) ~ 1e-10;
    # eps = 1e-4 keeps a change in the accepted steps (a jump of ~rtol in F) below 1e-6 in the
    # differences, and truncation eps^2 |F'''| ~ 1e-8
    tight = {"rtol": 1e-10, "atol": 1e-12}
    g2 = dde_flow_vjp(model, X, T, C, delays=TAUS, method="dopri5", **tight)

    def F(kw, x, t_end):
        m = _model(**kw)[0]
        return ddeint(m, x, [0.0, t_end], delays=TAUS, hmax=hmax, **tight).y[-1]

    _check_all(g2, P, X, C, F, 1e-4, 2e-6)


def test_bad_input_is_refused():
    model, _ = _model()
    X = np.ones((2, 2))
    with pytest.raises(ValueError, match="cotangent"):
        dde_flow_vjp(model, X, T, np.ones(3), delays=TAUS, dt=DT)
    with pytest.raises(ValueError, match="delays"):
        dde_flow_vjp(model, X, T, X, delays=[0.3], dt=DT)
    with pytest.raises(ValueError, match="shortest delay"):
        dde_flow_vjp(model, X, T, X, delays=TAUS, dt=0.35)
    with pytest.raises(ValueError, match="hmax"):
        dde_flow_vjp(model, X, T, X, delays=TAUS, method="dopri5", hmax=0.3)
    with pytest.raises(ValueError, match="method"):
        dde_flow_vjp(model, X, T, X, delays=TAUS, method="euler", dt=DT)
    with pytest.raises(ValueError, match="X"):
        dde_flow_vjp(model, np.full((2, 2), np.nan), T, X, delays=TAUS, dt=DT)
    with pytest.raises(ValueError, match="Y"):
        dde_loss_and_grad(model, X, np.ones((3, 2)), T, delays=TAUS, dt=DT)
    with pytest.raises(TypeError, match="NeuralDDE"):
        dde_flow_vjp(object(), X, T, X, delays=TAUS, dt=DT)
    with pytest.raises(ValueError, match="checkpoints"):
        dde_flow_vjp(model, X, T, X, delays=TAUS, dt=DT, checkpoints=0)
    with pytest.raises(ValueError, match="'all'"):
        dde_flow_vjp(model, X, T, X, delays=TAUS, dt=DT, checkpoints="every")
    with pytest.raises(ValueError, match="segment"):
        dde_loss_and_grad(model, X, X, T, delays=TAUS, method="dopri5", segment=0)


def test_memory_capacity_fit_below_and_above_the_threshold():
    from nndyn_fast.memory_capacity import memory_capacity_experiment

    # K tau = 0.2 < 1/e: the fitted 1-D time-T map is monotone (the theorem), so x^2 stays
    # badly fitted; K tau = 2 allows an interior extremum and a much better fit
    r = memory_capacity_experiment([0.2, 2.0], dims=(1,), starts=1, steps=60, n_points=11)
    lo, hi = r["fits"][0]
    assert lo["monotone"] and lo["K_tau"] <= 0.2 + 1e-12
    assert not hi["monotone"]
    assert hi["rmse"] < 0.5 * lo["rmse"]


def test_dde_memory_command_with_exact_gradients(capsys):
    from nndyn_fast.cli import main

    args = ["dde", "memory", "--fitter", "grad", "--dims", "1", "--kappas", "0.2", "--starts",
            "1"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "dim 1, K tau = 0.2 (below the threshold)" in text and "monotone" in text


def _outputs(g):
    return [g.X, g.y, np.array(g.T), g.n_steps, *g.params.values()]


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_checkpointed_gradients_are_bitwise_the_store_everything_ones(method):
    # the recomputed segments are rerun by ddeint's kernel from the stored delay windows and
    # controller states (stopped by its step budget, so they end where the uninterrupted run
    # is), the node adjoints of a window carried between segments and the parameter sums kept
    # per worker across segments: every output is that of keeping every node, bit for bit,
    # for any number of slots and any segment length. dopri5 at rtol 1e-8 rejects steps
    # (segments of 1 and 4 steps end right after a rejection, where the controller's memory
    # of it must be restored)
    model, _ = _model()
    rng = np.random.default_rng(3)
    X, C = 2.0 * rng.standard_normal((9, 2)), rng.standard_normal((9, 2))
    kw = {"dt": DT} if method == "rk4" else {"method": "dopri5", "rtol": 1e-8, "atol": 1e-10}
    ref = dde_flow_vjp(model, X, 7.3, C, delays=TAUS, checkpoints="all", **kw)
    assert ref.n_steps.min() > 70
    for slots, seg in ((1, 1), (2, 4), (5, 13), (1, 4)):  # 1, 2 and 5 slots; 1, 4, 13 steps
        g = dde_flow_vjp(model, X, 7.3, C, delays=TAUS, checkpoints=slots, segment=seg, **kw)
        for a, b in zip(_outputs(ref), _outputs(g), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{slots} slots, segment {seg}")
    # the deprecated checkpoint=k is segment=k
    with pytest.warns(DeprecationWarning, match="segment"):
        g = dde_flow_vjp(model, X, 7.3, C, delays=TAUS, checkpoint=4, **kw)
    np.testing.assert_array_equal(g.params["B"], ref.params["B"])


def _peak(call):
    # peak bytes of the numpy arrays the API allocates (the kernels allocate only fixed
    # per-call workspaces), on one thread
    with nf.threads(1):
        call()
        tracemalloc.start()
        g = call()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, g


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_peak_memory_does_not_grow_with_the_steps(method):
    model, _ = _model()
    rng = np.random.default_rng(3)
    X, C = rng.standard_normal((64, 2)), rng.standard_normal((64, 2))
    kw = {"dt": DT} if method == "rk4" else {"method": "dopri5", "rtol": 1e-6, "atol": 1e-8}
    kw.update(checkpoints=4, segment=8)  # 25 and 100 segments (RK4): every slot used in both
    runs = [_peak(lambda t=t: dde_flow_vjp(model, X, t, C, delays=TAUS, **kw)) for t in (20, 80)]
    (small, gs), (big, gb) = runs
    assert gb.n_steps.mean() > 3 * gs.n_steps.mean()
    # the same workspace for four times the steps (4 windows of ~6 nodes and one segment of
    # 8 steps, ~0.3 MB; dopri5's windows hold more or fewer nodes where its steps are short or
    # long, and Python's free lists vary by some kB)
    assert big < 1.05 * small, (small, big)
    nodes = 64 * int(gb.n_steps.max()) * (6 * 2 + 1) * 8  # every node and its adjoints
    assert big < nodes / 3, (big, nodes)
    kw.update(checkpoints="all")
    full = _peak(lambda: dde_flow_vjp(model, X, 80, C, delays=TAUS, **kw))
    assert full[0] > 3 * big


def test_softplus_rk4_gradients_of_a_block_match_central_differences_of_ddeint():
    # 9 rows: a block of 8 and one more for the blocked reverse sweep, and an activation
    # other than tanh (σ' from the pre-activations); tolerances as in the tanh test above
    model, P = _model(act="softplus")
    rng = np.random.default_rng(4)
    X = rng.standard_normal((9, 2))
    C = rng.standard_normal((9, 2))
    g = dde_flow_vjp(model, X, T, C, delays=TAUS, dt=DT)

    def F(kw, x, t_end):
        m = _model(act="softplus", **kw)[0]
        return ddeint(m, x, np.array([0.0, t_end]), delays=TAUS, method="rk4", dt=DT).y[-1]

    _check_all(g, P, X, C, F, 1e-6, 1e-6)
