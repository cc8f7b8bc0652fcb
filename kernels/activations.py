"""Activation functions chosen by an integer code, so one compiled kernel serves them all.

Codes: 0 identity, 1 tanh, 2 relu, 3 softplus, 4 sigmoid, 5 gelu (tanh approximation-free:
x Φ(x) with the exact normal CDF). ``act(code, x)`` is σ(x), ``dact`` σ'(x), ``d2act`` σ''(x).
The API maps names to codes with :data:`ACTIVATIONS`.
"""

import math

from numba import njit

IDENTITY, TANH, RELU, SOFTPLUS, SIGMOID, GELU = 0, 1, 2, 3, 4, 5
ACTIVATIONS = {
    "identity": IDENTITY,
    "tanh": TANH,
    "relu": RELU,
    "softplus": SOFTPLUS,
    "sigmoid": SIGMOID,
    "gelu": GELU,
}
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)

# tanh without a library call, so loops over it vectorise: tanh|x| = e / (e + 2) with
# e = expm1(2|x|) = 2^n (expm1(r) + 1) - 1, r = 2|x| - n ln 2 in [-ln2/2, ln2/2], expm1(r) by
# its Taylor polynomial to degree 14 (remainder < 1e-17)
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that n * _LN2_HI is exact for n < 2^11
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
(_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12, _E13, _E14) = (
    1.0 / math.factorial(k) for k in range(2, 15)
)


@njit(cache=True, inline="always")
def tanh_fast(x):
    """tanh(x) in plain arithmetic, within a few ulp of ``math.tanh``; NaN and ±0 pass through.

    No library call, so loops over it vectorise (libm ``tanh`` is a scalar call, several times
    slower per element); callers use ``error_model="numpy"``. ``|x|`` is clipped at 20, where
    tanh rounds to 1 (NaN is clipped too, so the integer conversion below never sees it).
    """
    ax = abs(x)
    if not ax <= 20.0:
        ax = 20.0
    y = 2.0 * ax
    n = math.floor(y * _INV_LN2 + 0.5)
    r = (y - n * _LN2_HI) - n * _LN2_LO
    r2 = r * r
    p = _E12 + r * _E13 + r2 * _E14
    p = _E10 + r * _E11 + r2 * p
    p = _E8 + r * _E9 + r2 * p
    p = _E6 + r * _E7 + r2 * p
    p = _E4 + r * _E5 + r2 * p
    q = r + r2 * (_E2 + r * _E3 + r2 * p)  # expm1(r)
    p2 = float(1 << (int(n) & 63))
    e = p2 * q + (p2 - 1.0)
    t = e / (e + 2.0)
    return t if x > 0.0 else (-t if x < 0.0 else x)


@njit(cache=True, inline="always")
def _sigmoid(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(cache=True)
def act(code, x):
    """σ(x) for the activation ``code``."""
    if code == TANH:
        return math.tanh(x)
    if code == RELU:
        return x if x > 0.0 else 0.0
    if code == SOFTPLUS:
        # log(1 + e^x) without overflow: max(x, 0) + log1p(e^{-|x|})
        return max(x, 0.0) + math.log1p(math.exp(-abs(x)))
    if code == SIGMOID:
        return _sigmoid(x)
    if code == GELU:
        return x * 0.5 * math.erfc(-x * _INV_SQRT2)
    return x


@njit(cache=True)
def dact(code, x):
    """σ'(x) for the activation ``code`` (relu: 0 at x = 0)."""
    if code == TANH:
        t = math.tanh(x)
        return 1.0 - t * t
    if code == RELU:
        return 1.0 if x > 0.0 else 0.0
    if code == SOFTPLUS:
        return _sigmoid(x)
    if code == SIGMOID:
        s = _sigmoid(x)
        return s * (1.0 - s)
    if code == GELU:
        return 0.5 * math.erfc(-x * _INV_SQRT2) + x * _INV_SQRT2PI * math.exp(-0.5 * x * x)
    return 1.0


@njit(cache=True)
def d2act(code, x):
    """σ''(x) for the activation ``code`` (relu and identity: 0)."""
    if code == TANH:
        t = math.tanh(x)
        return -2.0 * t * (1.0 - t * t)
    if code == SOFTPLUS:
        s = _sigmoid(x)
        return s * (1.0 - s)
    if code == SIGMOID:
        s = _sigmoid(x)
        return s * (1.0 - s) * (1.0 - 2.0 * s)
    if code == GELU:
        return _INV_SQRT2PI * math.exp(-0.5 * x * x) * (2.0 - x * x)
    return 0.0
