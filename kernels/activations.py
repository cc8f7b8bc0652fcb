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
