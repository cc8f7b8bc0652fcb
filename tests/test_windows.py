"""Graphon windows by bisection against the scan they replace (every row, bit for bit)."""

import numba
import numpy as np

from nndyn_fast.kernels import kuramoto as kk
from nndyn_fast.kernels.windows import graphon_windows_bisect


def _both(x, code, r):
    n = x.size
    p = np.array([r, 0.1])
    out = [np.zeros(n, np.int64) for _ in range(4)]
    kk.graphon_windows(x, code, p, out[0], out[1])
    graphon_windows_bisect(x, code, p, out[2], out[3])
    return out


def test_bisection_gives_the_scans_windows():
    # one thread: the rows are independent (same result on any count) and the many tiny
    # parallel calls only pay thread wake-ups
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        _compare_many()
    finally:
        numba.set_num_threads(before)


def _compare_many():
    rng = np.random.default_rng(0)
    for trial in range(800):
        n = int(rng.integers(1, 80)) if trial < 760 else int(rng.integers(100, 1500))
        kind = trial % 4
        if kind == 0:  # the grid i/N, with r on and off the grid (edge cases of rounding)
            x = np.arange(1, n + 1) / n
        elif kind == 1:
            x = np.sort(rng.random(n) ** (1 + 2 * rng.random()))  # clustered
        elif kind == 2:  # repeated positions
            x = np.sort(np.round(rng.random(n) * 5) / 10 + 0.3 * rng.random())
        else:
            x = np.sort(rng.choice([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999], n))
        x = np.clip(x, 0.0, 1.0)
        if x[0] == 0.0 and x[-1] == 1.0:
            continue  # left to the scan by graphs.DigraphMeasure.structure
        r = float(rng.choice([rng.random(), 0.3 * rng.random(), 0.25, 0.5,
                              int(rng.integers(1, n + 1)) / n]))  # fmt: skip
        if r <= 0:
            continue
        for code in (kk.G_SMALL_WORLD, kk.G_DIRECTED_RING):
            s1, l1, s2, l2 = _both(np.ascontiguousarray(x), code, r)
            np.testing.assert_array_equal(l2, l1, err_msg=f"{trial=} {code=} {r=}")
            np.testing.assert_array_equal(s2, s1, err_msg=f"{trial=} {code=} {r=}")
