"""Module-level sweep targets for tests/test_sweep.py and bench/bench_sweep.py.

They live in an importable module (tests/conftest.py puts this folder on sys.path, and worker
processes inherit sys.path) so that Dask worker processes unpickle them by reference.
"""

import os
import time
from pathlib import Path

import numpy as np


def affine_noise(a, b, seed):
    """A scalar and an array result; the array depends on the point's seed only."""
    return {"s": 2.0 * a + b, "v": np.random.default_rng(seed).random(3)}


def no_seed(a, b):
    return {"p": a * b}


def slow_first(i, n, log=None):
    """Point i sleeps (n - i) * 20 ms: with two workers later points finish first. Each
    finished point appends i to the ``log`` file (if given)."""
    time.sleep(0.02 * (n - i))
    if log is not None:
        with open(log, "a") as f:
            f.write(f"{i}\n")
    return {"sq": float(i * i)}


def flaky(i, seed, marker, log):
    """Raises at i == 3 while ``marker`` does not exist (a crash), creating it; every call
    appends i to the ``log`` file so that a test can count evaluations."""
    with open(log, "a") as f:
        f.write(f"{i}\n")
    if i == 3 and not Path(marker).exists():
        Path(marker).touch()
        raise RuntimeError("simulated crash")
    return {"x": float(i) + np.random.default_rng(seed).random(), "y": np.full(2, i)}


def bad_keys(i):
    return {"x": 1.0} if i < 2 else {"z": 1.0}


def bad_shape(i):
    return {"x": np.zeros(2 if i < 2 else 3)}


def not_a_dict(i):
    return 1.0


def cheap(x):
    return {"y": x * x}


def clash(i):
    return {"i": 1.0}


def shifted(i, seed, shift, marker, w=0.0, scale=1.0):
    """x = scale * (i + shift) + w + a draw from the point's seed; raises at i == 3 while
    ``marker`` does not exist (a crash), creating it."""
    if i == 3 and not Path(marker).exists():
        Path(marker).touch()
        raise RuntimeError("simulated crash")
    return {"x": scale * (i + shift) + w + np.random.default_rng(seed).random()}


class Scaled:
    """A callable object: its state (``c``) is part of the sweep's identity."""

    def __init__(self, c):
        self.c = c

    def __call__(self, a, b):
        return {"p": self.c * a * b}


def die_from(i, at):
    """Points below ``at`` return at once; from ``at`` on the worker process dies, after a
    pause long enough for the client to fetch the finished points from it first (a result
    lost with its worker is recomputed on the next, which dies too)."""
    if i >= at:
        time.sleep(1.0)
        os._exit(3)
    return {"y": float(i) ** 2}


def interrupt_at(i, at):
    """Ctrl-C while point ``at`` runs."""
    if i == at:
        raise KeyboardInterrupt
    return {"y": float(i)}
