"""Numba kernels of nndyn_fast, installed as ``nndyn_fast.kernels``.

Arrays in, arrays out: no argument checking, no I/O. Every kernel is a module-level ``@njit``
function with ``cache=True`` unless it takes a user's jitted function.
"""
