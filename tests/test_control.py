"""The shared integrator control (:mod:`nndyn_fast.kernels.control`): status codes defined once,
the weighted RMS error norm, the PI controller and the starting-step rule against values worked
out by hand, and a delay run given its first step against the method-of-steps closed form."""

from __future__ import annotations

import ast
import importlib
import math
from pathlib import Path

import numpy as np
import pytest

import nndyn_fast.kernels.control as kc
from nndyn_fast.delay import LinearDDE, ddeint

ROOT = Path(__file__).resolve().parents[1]
STATUS = ("OK", "NONFINITE", "STEP_UNDERFLOW", "MAX_STEPS", "RING_FULL", "LOCK_OVER", "DEGENERATE")
FLAG_SETS = ("FASTMATH", "CONTRACT", "EXACT")
# rounding: a few ulps of one pow / sqrt
REL = 1e-14


# --- one set of status codes and flag sets --------------------------------------------------
def _module_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for tgt in targets:
            for n in ast.walk(tgt):
                if isinstance(n, ast.Name):
                    names.add(n.id)
    return names


def test_status_codes_and_flag_sets_are_defined_once_in_control():
    values = [getattr(kc, name) for name in STATUS]
    assert len(set(values)) == len(values), dict(zip(STATUS, values, strict=True))
    assert kc.OK == 0 and kc.NONFINITE == 1  # the API and tests compare with these
    assert kc.DEGENERATE > kc.NONFINITE  # the worst status of replicas is the largest
    shared = set(STATUS) | set(FLAG_SETS)
    for path in sorted((ROOT / "kernels").glob("*.py")) + sorted(
        (ROOT / "nndyn_fast").glob("*.py")
    ):
        if path == ROOT / "kernels" / "control.py":
            continue
        tree = ast.parse(path.read_text())
        again = _module_level_names(tree) & shared
        assert not again, f"{path.relative_to(ROOT)} defines {sorted(again)} again"
    for path in sorted((ROOT / "kernels").glob("*.py")):
        if path.stem == "control":
            continue
        mod = importlib.import_module(f"nndyn_fast.kernels.{path.stem}")
        tree = ast.parse(path.read_text())
        from_control = {
            a.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module == "control" and node.level == 1
            for a in node.names
        }
        for name in shared:
            if hasattr(mod, name):
                assert name in from_control, f"kernels/{path.name}: {name} not from .control"
                assert getattr(mod, name) is getattr(kc, name)


def test_fastmath_flags_are_the_shared_sets_without_nnan_or_ninf():
    for flags in (kc.FASTMATH, kc.CONTRACT):
        assert not flags & {"nnan", "ninf", "fast"}
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "fastmath":
                ok = isinstance(node.value, ast.Name) and node.value.id in FLAG_SETS
                assert ok, f"kernels/{path.name}:{node.value.lineno}: fastmath= a shared flag set"


# --- error norm ------------------------------------------------------------------------------
def test_wrms_norm_hand_values():
    e = np.array([3.0, 4.0])
    y = np.array([1.0, 0.0])
    ynew = np.array([-3.0, 5.0])
    rtol = np.array([0.5, 0.0])
    atol = np.array([0.5, 1.0])
    # scales 0.5 + 0.5 max(1, 3) = 2 and 1 + 0 = 1: sqrt((1.5^2 + 4^2) / 2) = sqrt(9.125)
    assert kc.wrms_norm(e, y, ynew, rtol, atol) == pytest.approx(math.sqrt(9.125), rel=REL)
    # ynew = y: scales 0.5 + 0.5 = 1 and 1: sqrt((9 + 16) / 2)
    assert kc.wrms_norm(e, y, y, rtol, atol) == pytest.approx(math.sqrt(12.5), rel=REL)
    assert kc.wrms_norm(np.zeros(2), y, ynew, rtol, atol) == 0.0


# --- PI controller ---------------------------------------------------------------------------
def test_pi_exponent_of_dopri5():
    assert kc.pi_exponent(5) == pytest.approx(0.2 - 0.75 * 0.04, rel=REL)  # 0.17


@pytest.mark.parametrize(
    "err, finite, errold, rejected_last, expected",
    [
        # 0.9 * 0.5^-0.17 * (1e-4)^0.04 = 0.9 * 2^0.17 * 10^-0.16
        (0.5, True, 1e-4, False, (True, 0.7005152734225618, 0.5, False)),
        # 0.9 * (1e-3)^-0.17 * (1e-3)^0.04 = 0.9 * 10^0.39, capped at 1 after a rejection
        (1e-3, True, 1e-3, False, (True, 2.2092380241165273, 1e-3, False)),
        (1e-3, True, 1e-3, True, (True, 1.0, 1e-3, False)),
        # 0.9 * 10^(12 * 0.17) = 98.1 -> at most 10; the memory is at least 1e-4
        (1e-12, True, 1.0, False, (True, 10.0, 1e-4, False)),
        (0.0, True, 0.3, False, (True, 10.0, 1e-4, False)),
        # err = 1 exactly is accepted: 0.9 * 1 * 1
        (1.0, True, 1.0, False, (True, 0.9, 1.0, False)),
        # rejected: 0.9 * 4^-0.17 = 0.9 * 2^-0.34, memory kept
        (4.0, True, 0.25, False, (False, 0.7110371806770395, 0.25, False)),
        # 0.9 * (1e8)^-0.17 = 0.039 -> at least 0.2
        (1e8, True, 0.25, False, (False, 0.2, 0.25, False)),
        # NaN/inf: 0.1 and flagged
        (math.inf, True, 0.25, False, (False, 0.1, 0.25, True)),
        (math.nan, True, 0.25, False, (False, 0.1, 0.25, True)),
        (0.5, False, 0.25, False, (False, 0.1, 0.25, True)),
    ],
)
def test_pi_control_hand_values(err, finite, errold, rejected_last, expected):
    accept, fac, errold_new, nonfinite = kc.pi_control(err, finite, errold, rejected_last, 0.17)
    assert (accept, nonfinite) == (expected[0], expected[3])
    assert fac == pytest.approx(expected[1], rel=REL)
    assert errold_new == expected[2]


# --- starting step ---------------------------------------------------------------------------
def test_initial_step_guess_hand_values():
    atol = np.array([0.01, 0.01])
    rtol = np.zeros(2)
    y = np.array([1.0, 0.0])
    f = np.array([0.0, 2.0])
    # d0 = sqrt(100^2 / 2), d1 = sqrt(200^2 / 2): h = 0.01 d0 / d1 = 0.005
    h, d1 = kc.initial_step_guess(y, f, rtol, atol)
    assert h == pytest.approx(0.005, rel=REL)
    assert d1 == pytest.approx(200.0 / math.sqrt(2.0), rel=REL)
    # |y| or |f| below 1e-5 in the tolerance norm: 1e-6
    assert kc.initial_step_guess(np.zeros(2), f, rtol, atol)[0] == 1e-6
    assert kc.initial_step_guess(y, np.zeros(2), rtol, atol)[0] == 1e-6


def test_initial_step_refine_hand_values():
    # dm = max(1, 4): (0.01 / 4)^(1/5) = 0.0025^0.2 = 0.30170881682725814, below 100 h = 0.5
    assert kc.initial_step_refine(0.005, 1.0, 4.0, 5) == pytest.approx(0.30170881682725814, rel=REL)
    assert kc.initial_step_refine(0.001, 1.0, 4.0, 5) == pytest.approx(0.1, rel=REL)  # 100 h
    assert kc.initial_step_refine(0.01, 0.0, 0.0, 5) == pytest.approx(1e-5, rel=REL)  # 1e-3 h
    assert kc.initial_step_refine(0.01, math.inf, 1.0, 5) == 0.01  # h itself


# --- regression: dopri5 delay run with a given first step ------------------------------------
def _minus_delay_closed_form(t: np.ndarray) -> np.ndarray:
    """x' = -x(t - 1), x = 1 on [-1, 0]: x(t) = sum_{k=0}^{floor(t)+1} (-1)^k (t - k + 1)^k / k!
    (method of steps: each unit interval adds one term)."""
    out = np.empty(t.size)
    for i, s in enumerate(t):
        out[i] = sum((-1) ** k * (s - k + 1) ** k / math.factorial(k) for k in range(int(s) + 2))
    return out


@pytest.mark.parametrize("dt", [0.5, 1e-3, 3.0])
def test_dopri5_delay_run_with_a_first_step_matches_the_closed_form(dt):
    # dt sets the first step only; the PI controller's memory used to stay 0 (ZeroDivisionError)
    t = np.linspace(0.0, 5.0, 51)
    sol = ddeint(LinearDDE(0.0, -1.0), np.array([1.0]), t, delays=1.0, method="dopri5", dt=dt,
                 rtol=1e-10, atol=1e-12)  # fmt: skip
    # rtol 1e-10 per step on a solution of size <= 1 over ~100 steps: 1e-8 is ample
    np.testing.assert_allclose(sol.y[:, 0], _minus_delay_closed_form(t), rtol=0, atol=1e-8)
    assert sol.stats["n_accepted"] > 0
