"""dde_lyapunov with the step chosen for a tolerance (``rtol=``) and with user fields reaching
the kernels by their signature. References it did not produce: Lambert W roots, a dopri5
ddeint solution at rtol 1e-12, Mackey-Glass's known structure, resume == uninterrupted, and the
dispatchers' cache statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from faults import every_kill_point
from numba import njit
from scipy.special import lambertw
from test_dde_lyapunov import lambert_exponents, mg_field, mg_jac

from nndyn_fast.dde_lyapunov import dde_lyapunov
from nndyn_fast.delay import LinearDDE, MackeyGlass, ddeint
from nndyn_fast.storage import open_run


# -- accuracy --------------------------------------------------------------------------------
# rtol 1e-5 picks 31, 52 and 61 steps per delay here (the pilot follows the top 3 tangent
# directions, oscillating modes included); T = 2000: the QR estimate of a complex pair
# oscillates by O(1/T) ~ 1e-4 and the discretisation error is below 1e-5 (measured), so 1e-3
@pytest.mark.parametrize("a_tau", [0.2, 1.0, 1.65])  # 1/e < 1.0, pi/2 < 1.65
def test_rtol_matches_lambert_w(a_tau):
    k = 3
    res = dde_lyapunov(LinearDDE(0.0, -a_tau), [0.0], delays=1.0, k=k, t_end=2000.0,
                       rtol=1e-5, transient=20.0)  # fmt: skip
    assert res.rtol == 1e-5 and 0 < res.error_estimate <= 0.5e-5
    assert abs(1.0 / res.dt - round(1.0 / res.dt)) < 1e-9  # a whole number of steps per delay
    np.testing.assert_allclose(res.exponents, lambert_exponents(a_tau, 1.0, k), atol=1e-3, rtol=0)


@pytest.mark.parametrize("rtol", [1e-5, 1e-6])
def test_chosen_step_meets_rtol_against_ddeint(rtol):
    """Mackey-Glass from the constant history over the pilot window (t_end = 2 tau, no
    transient, so the pilot measures this very run): the solution's actual relative error per
    unit time, against dopri5 at rtol 1e-12, is below rtol (the pilot aims at rtol / 2) and
    above rtol / 20 (the step is not needlessly small). Measured: 0.61 and 0.60 rtol."""
    tau, T = 17.0, 34.0
    res = dde_lyapunov(MackeyGlass(), [0.9], delays=tau, k=1, t_end=T, rtol=rtol)
    N = round(tau / res.dt)
    times = T - tau + res.dt * np.arange(N + 1)  # the final segment, oldest node first
    ref = ddeint(MackeyGlass(), [0.9], np.r_[0.0, times], delays=tau, rtol=1e-12, atol=1e-14)
    y = ref.y[1:, 0]
    rate = np.abs(res.X[0, :, 0] - y).max() / np.abs(y).max() / T
    assert rtol / 20 < rate < rtol


_SIGMA, _OMEGA = lambertw(-1.0, 0).real, lambertw(-1.0, 0).imag


@njit
def _eigen_solution(t):
    return np.array([np.exp(_SIGMA * t) * np.cos(_OMEGA * t)])


@pytest.mark.parametrize("transient", [0.0, 10.0])
@pytest.mark.parametrize("rtol", [1e-5, 1e-7])
def test_chosen_step_meets_rtol_on_an_exact_solution(rtol, transient):
    """x' = -x(t - 1) from the history e^(sigma t) cos(omega t), sigma + i omega = W_0(-1): the
    solution is that function for all t (no kink at t0), so the error of the whole run, the
    transient included, is known in closed form. Relative error per unit time of the final
    segment between rtol / 20 and rtol (measured 0.37-0.60 rtol)."""
    res = dde_lyapunov(LinearDDE(0.0, -1.0), _eigen_solution, delays=1.0, k=1, t_end=2.0,
                       rtol=rtol, transient=transient)  # fmt: skip
    T = transient + 2.0
    times = T - 1.0 + res.dt * np.arange(round(1.0 / res.dt) + 1)
    exact = np.exp(_SIGMA * times) * np.cos(_OMEGA * times)
    rate = np.abs(res.X[0, :, 0] - exact).max() / np.abs(exact).max() / T
    assert rtol / 20 < rate < rtol


def test_mackey_glass_stable_as_rtol_is_halved():
    """tau = 17: lambda_1 > 0, one exponent ~ 0, a negative sum at both tolerances (35 and 41
    steps per delay), and lambda_1 moves by less than twice the standard error of the
    difference of the two estimates (different grids, so different chaotic trajectories:
    independent estimates; measured 0.6 sigma)."""
    kw = {"delays": 17.0, "k": 4, "t_end": 10000.0, "transient": 300.0}
    a, b = (dde_lyapunov(MackeyGlass(), [0.9], rtol=r, **kw) for r in (1e-5, 0.5e-5))
    assert b.dt < a.dt
    for r in (a, b):
        lam, se = r.exponents, r.stderr
        assert lam[0] > 2 * se[0] and abs(lam[1]) < 3 * se[1] and r.sum < 0
    assert abs(a.exponents[0] - b.exponents[0]) < 2 * np.hypot(a.stderr[0], b.stderr[0])


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"dt": 0.1, "rtol": 1e-6}, "exactly one of dt"),
        ({}, "exactly one of dt"),
        ({"rtol": 0.0}, "rtol must be a finite number > 0"),
        ({"rtol": -1e-6}, "rtol must be a finite number > 0"),
        ({"rtol": float("nan")}, "rtol must be finite"),
        ({"rtol": float("inf")}, "rtol must be finite"),
        ({"rtol": "1e-6"}, "rtol must be a real number"),
        ({"rtol": 1e-6, "delays": [1.0, 2**0.5]}, "commensurate"),
        ({"rtol": 1e-3, "k": 10**9}, "k = 1000000000 needs a segment"),
        ({"rtol": 1e-3, "k": 10**5}, "memory|exceeds|too large"),
    ],
)
def test_bad_rtol(kw, match):
    args = {"delays": 1.0, "k": 2, "t_end": 10.0, **kw}
    with pytest.raises(ValueError, match=match):
        dde_lyapunov(MackeyGlass(), [1.0], **args)


def test_unreachable_rtol_is_refused(monkeypatch):
    # rounding bounds the error estimate near 1e-16 per unit time; steps capped at 64 per
    # delay here to keep the test short (2^18 in use)
    monkeypatch.setattr(sys.modules["nndyn_fast.dde_lyapunov"], "_MAX_NODES", 64)
    with pytest.raises(ValueError, match="rtol = 1e-30 is not reached .*at most 64"):
        dde_lyapunov(LinearDDE(0.0, -1.0), [1.0], delays=1.0, k=1, t_end=1.0, rtol=1e-30)


def test_commensurate_delays_share_the_grid():
    # delays 1 and 1.5: steps of 0.5 / n; the chosen step divides both
    res = dde_lyapunov(LinearDDE(0.0, [-0.3, -0.2]), [1.0], delays=[1.0, 1.5], k=2, t_end=20.0,
                       rtol=1e-4)  # fmt: skip
    for tau in (1.0, 1.5):
        assert abs(tau / res.dt - round(tau / res.dt)) < 1e-9


# -- run files -------------------------------------------------------------------------------
def _run(out, rtol=1e-4, resume=False):
    return dde_lyapunov(
        MackeyGlass(), [[0.9], [1.2]], delays=1.7, k=2, t_end=40.0, rtol=rtol, transient=3.0,
        n_records=3, n_blocks=2, out=out, resume=resume,
    )  # fmt: skip


def test_rtol_run_stores_the_step_and_resumes_bitwise(tmp_path):
    ref_path = tmp_path / "ref.h5"
    ref = _run(ref_path)
    with open_run(ref_path) as f:
        p, summary = dict(f.params), f.summary
    # the arguments as given, and the step chosen with its estimate
    assert p["rtol"] == 1e-4 and p["dt"] is None
    assert p["dt_chosen"] == ref.dt and p["dt_error_estimate"] == ref.error_estimate
    assert summary["dt"] == ref.dt and summary["rtol"] == 1e-4
    # a rerun passes the stored arguments back: the pilot chooses the same step, bitwise
    again = dde_lyapunov(
        MackeyGlass(), [[0.9], [1.2]], delays=1.7, k=2, t_end=40.0, dt=p["dt"], rtol=p["rtol"],
        transient=3.0, n_records=3, n_blocks=2,
    )  # fmt: skip
    assert again.dt == ref.dt
    np.testing.assert_array_equal(again.exponents, ref.exponents)
    with open_run(ref_path) as f:
        want = {n: f.read("running", n) for n in f["running"]}
    out = tmp_path / "k.h5"
    got = {}

    def run():
        got["res"] = _run(out)

    def resume():
        got["res"] = _run(out, resume=True)

    def check():
        with open_run(out) as f:
            assert f.status == "complete" and f.summary == summary
            for n, v in want.items():
                np.testing.assert_array_equal(f.read("running", n), v, err_msg=n)
        for name in ("exponents", "stderr", "X", "V", "dt", "error_estimate"):
            np.testing.assert_array_equal(getattr(got["res"], name), getattr(ref, name))

    seen = every_kill_point(out, run, resume, check)
    assert seen["resumed"] > 3
    with pytest.raises(ValueError, match="rtol"):
        _run(out, rtol=2e-4, resume=True)


def test_cli_rtol(tmp_path, capsys):
    """``nndyn dde lyapunov --rtol``: x' = -x(t - 1), its top exponents the Lambert W pair."""
    from nndyn_fast.cli import main

    out = tmp_path / "l.h5"
    args = ["dde", "lyapunov", "--model", "linear", "--a", "0", "--b", "-1", "--tau", "1",
            "--history", "0", "--k", "2", "--t-end", "1000", "--transient", "20",
            "--out", str(out)]  # fmt: skip
    assert main([*args, "--rtol", "1e-5"]) == 0
    assert "chosen for rtol = 1e-05" in capsys.readouterr().out
    with open_run(out) as f:
        assert f.params["rtol"] == 1e-5 and f.params["dt_chosen"] < 0.1
        lam = np.array(f.summary["exponents"])
    # a complex pair: O(1/T) oscillation of each estimate ~ 1e-3 at T = 1000
    np.testing.assert_allclose(lam, lambert_exponents(1.0, 1.0, 2), atol=3e-3)
    assert main([*args, "--rtol", "1e-5", "--dt", "0.1", "--overwrite"]) == 2


# -- user fields by their signature ----------------------------------------------------------
@njit
def mg_field_2(t, x, xd, args, out):  # the same signature as mg_field, another function
    p = args[0]
    v = xd[0, 0]
    out[0] = p[0] * v / (1.0 + v ** p[2]) - p[1] * x[0] + 0.0 * t


def _package_misses() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from cache_workloads import package_dispatchers
    finally:
        sys.path.pop(0)
    return sum(sum(d.stats.cache_misses.values()) for d in package_dispatchers())


def test_a_user_field_compiles_no_package_kernel_after_the_first():
    """A user field and Jacobian go to the kernel as first-class functions typed by their
    signature: a second field of the same signature compiles no package kernel (the
    dispatchers' cache statistics; the first call may compile or load from the disk cache)."""
    p = np.array([0.2, 0.1, 10.0])
    kw = {"delays": 1.7, "k": 2, "t_end": 5.0, "dt": 0.1, "jac": mg_jac, "args": (p,)}
    one = dde_lyapunov(mg_field, [0.9], **kw)
    before = _package_misses()
    two = dde_lyapunov(mg_field_2, [0.9], **kw)
    assert _package_misses() == before
    np.testing.assert_array_equal(one.per_member, two.per_member)  # the same arithmetic
    # and the built-in model's spectrum (another order of operations: rounding only)
    built = dde_lyapunov(MackeyGlass(), [0.9], delays=1.7, k=2, t_end=5.0, dt=0.1)
    np.testing.assert_allclose(two.per_member, built.per_member, rtol=1e-9, atol=1e-12)
    # the step chosen for rtol on the user's field is the built-in model's
    kw.pop("dt")
    user = dde_lyapunov(mg_field_2, [0.9], rtol=1e-4, **kw)
    built = dde_lyapunov(MackeyGlass(), [0.9], delays=1.7, k=2, t_end=5.0, rtol=1e-4)
    assert user.dt == built.dt
    np.testing.assert_allclose(user.per_member, built.per_member, rtol=1e-9, atol=1e-12)


_FRESH = """
import json, sys
import numpy as np
from numba import njit
from scipy.special import lambertw
import nndyn_fast as nf
from cache_workloads import package_dispatchers

@njit
def field(t, x, xd, args, out):
    p = args[0]
    out[0] = p[0] * xd[0, 0] / (1.0 + xd[0, 0] ** p[2]) - p[1] * x[0]

@njit
def jac(t, x, xd, args, J):
    p = args[0]
    vn = xd[0, 0] ** p[2]
    J[0, 0, 0] = -p[1]
    J[1, 0, 0] = p[0] * (1.0 + (1.0 - p[2]) * vn) / ((1.0 + vn) * (1.0 + vn))

kw = {"delays": 1.7, "k": 2, "t_end": 5.0, "jac": jac, "args": (np.array([0.2, 0.1, 10.0]),)}
nf.dde_lyapunov(field, [0.9], dt=0.1, **kw)
nf.dde_lyapunov(field, [0.9], rtol=1e-4, **kw)
print(json.dumps(sorted(f"{d.__module__}.{d.__name__}" for d in package_dispatchers()
                        if sum(d.stats.cache_misses.values()))))
"""


def test_a_fresh_process_loads_the_kernels_for_a_user_field():
    """After the test above (this process compiled, or loaded, the kernels for this signature
    and the disk cache holds them), a fresh process with its own user field compiles only
    that field: no package dispatcher has a cache miss."""
    import json
    import os
    import subprocess

    here = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run([sys.executable, "-c", _FRESH], cwd=here, env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == []
