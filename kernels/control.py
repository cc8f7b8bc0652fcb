"""What the integrators share: status codes, fast-math flag sets, error norm, step control.

Kernel status codes (one set for every kernel module; each module imports the ones it returns):

- ``OK`` (0): done.
- ``NONFINITE`` (1): a NaN/inf state (or tangent vector, or error estimate that no smaller step
  cures).
- ``STEP_UNDERFLOW`` (2): the step size fell below the resolution of ``t``.
- ``MAX_STEPS`` (3): the step budget was spent.
- ``RING_FULL`` (4): a delay integrator's history ring is full (the caller grows it, calls
  again).
- ``LOCK_OVER`` (5): a delayed time fell past the last node in a lockstep block (the caller
  takes the per-member path).
- ``DEGENERATE`` (6): a tangent vector collapsed to zero (its Lyapunov exponent is -inf).
  Larger than ``NONFINITE`` on purpose: the worst status of a set of replicas is the largest.

Flag sets for ``fastmath=`` (never ``True``, which drops the NaN/inf checks):
``FASTMATH`` (reassociation, for reductions that LLVM may then vectorise) and ``CONTRACT``
(fused multiply-adds only, for every evaluation of the built-in neural fields, so all paths
round alike). Neither has ``nnan`` or ``ninf``.

Step-size control of the adaptive methods (Hairer, Norsett, Wanner, section II.4):
:func:`wrms_norm` is the weighted RMS norm of an error estimate, :func:`pi_control` the PI
controller, :func:`initial_step_guess` and :func:`initial_step_refine` the starting-step rule.

References
----------
E. Hairer, S. P. Norsett, G. Wanner, "Solving Ordinary Differential Equations I", 2nd ed.,
Springer 1993, sections II.4 (automatic step-size control, starting step size) and the code
DOPRI5 (PI control with ``beta = 0.04``).
"""

import math

from numba import njit

# --- status codes ----------------------------------------------------------------------------
OK = 0
NONFINITE = 1
STEP_UNDERFLOW = 2
MAX_STEPS = 3
RING_FULL = 4
LOCK_OVER = 5
DEGENERATE = 6

# --- fast-math flag sets ---------------------------------------------------------------------
# Reassociation lets LLVM vectorise reductions; NaN/inf semantics are kept (no nnan, ninf).
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# fused multiply-adds (one rounding per a + x y) in the built-in field evaluations
CONTRACT = {"contract"}
# no flags, set explicitly: a callee without its own flags takes its first caller's, so a kernel
# that must round alike under every caller (the step-size controller) names this set
EXACT: set[str] = set()

# --- step-size control -----------------------------------------------------------------------
SAFETY = 0.9
BETA = 0.04  # PI controller: integral exponent 1/order - 0.75 beta, proportional exponent beta
FAC_MIN = 0.2
FAC_MAX = 10.0
FAC_NONFINITE = 0.1  # step factor after a step whose result is NaN/inf
ERR_FLOOR = 1e-4  # the controller's memory of the last accepted error is at least this
EPS = 2.220446049250313e-16  # float64 machine epsilon


@njit(cache=True)
def wrms_norm(e, y, ynew, rtol, atol):
    """Weighted RMS norm ``sqrt(mean_i (e_i / (atol_i + rtol_i max(|y_i|, |ynew_i|)))^2)``.

    ``e``, ``y``, ``ynew``, ``rtol``, ``atol`` are (n,) arrays (per-component tolerances). With
    ``ynew = y`` the scale is ``atol + rtol |y|`` (the starting-step rule).
    """
    n = e.shape[0]
    acc = 0.0
    for i in range(n):
        sc = atol[i] + rtol[i] * max(abs(y[i]), abs(ynew[i]))
        q = e[i] / sc
        acc += q * q
    return math.sqrt(acc / n)


@njit(cache=True)
def pi_exponent(order):
    """Integral exponent ``1/order - 0.75 beta`` of :func:`pi_control` for an error
    estimate that is O(h^order)."""
    return 1.0 / order - 0.75 * BETA


@njit(cache=True)
def pi_control(err, finite, errold, rejected_last, expo1):
    """PI step-size control: ``(accept, factor, errold, nonfinite)`` for a step of error ``err``.

    The next step is ``factor`` times this one. Accepted (``err <= 1`` and a finite new state):
    ``factor = 0.9 err^-expo1 errold^beta`` in [0.2, 10] (10 for ``err = 0``), at most 1 right
    after a rejection, and ``errold`` becomes ``max(err, 1e-4)``. Rejected:
    ``max(0.2, 0.9 err^-expo1)``, ``errold`` kept; or ``FAC_NONFINITE`` when the step produced
    NaN/inf (``nonfinite`` then True). ``errold`` starts at ``ERR_FLOOR``; ``expo1`` from
    :func:`pi_exponent`.
    """
    if err <= 1.0 and finite:
        if err == 0.0:
            fac = FAC_MAX
        else:
            fac = SAFETY * err ** (-expo1) * errold**BETA
            fac = min(FAC_MAX, max(FAC_MIN, fac))
        if rejected_last:
            fac = min(fac, 1.0)
        return True, fac, max(err, ERR_FLOOR), False
    if math.isfinite(err) and finite:
        return False, max(FAC_MIN, SAFETY * err ** (-expo1)), errold, False
    return False, FAC_NONFINITE, errold, True


@njit(cache=True)
def initial_step_guess(y, f, rtol, atol):
    """First part of Hairer's starting-step rule: ``(h, d1)`` from ``y`` and ``f = y'``.

    With ``d0 = ||y||`` and ``d1 = ||f||`` in the norm :func:`wrms_norm` scaled by
    ``atol + rtol |y|``: ``h = 0.01 d0 / d1``, or ``1e-6`` when either is below ``1e-5``.
    The caller clips ``h`` to its interval.
    """
    d0 = wrms_norm(y, y, y, rtol, atol)
    d1 = wrms_norm(f, y, y, rtol, atol)
    h = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    return h, d1


@njit(cache=True)
def initial_step_refine(h, d1, d2, order):
    """Second part of Hairer's rule: the starting step after an explicit Euler step ``h``.

    ``d2`` is the norm of ``(f(t + h, y + h f) - f) / h`` (an estimate of ``||y''||``); with
    ``dm = max(d1, d2)`` the step is ``(0.01 / dm)^(1/order)`` (``max(1e-6, 1e-3 h)`` when
    ``dm <= 1e-15``, ``h`` when it is not finite), at most ``100 h``.
    """
    dm = max(d1, d2)
    if not math.isfinite(dm):
        h1 = h
    elif dm <= 1e-15:
        h1 = max(1e-6, h * 1e-3)
    else:
        h1 = (0.01 / dm) ** (1.0 / order)
    return min(100.0 * h, h1)
