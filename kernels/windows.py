"""Graphon windows by bisection: the rows of :func:`~nndyn_fast.kernels.kuramoto.graphon_windows`
in O(log N) per row instead of a scan over the window (O(N · window)).

For sorted positions the floating-point circular distance c(m) = min(d, 1 − d) from x_i to the
node m steps ahead (or behind) is made of at most four monotone pieces: before and after the
wrap of the index (where d is a rounded difference of sorted values, hence monotone), each
split where d <= 1 − d changes (monotone too, since d and 1 − d move oppositely). On a
non-decreasing piece the predicate c <= r is true then false (bisection finds the first
false); on a non-increasing piece it is false then true, so its first value decides. The run
of consecutive true values from offset 1, which the scan counts, follows exactly. The directed
ring's forward displacement is monotone on each side of the wrap. Positions holding both 0 and 1
(where d − floor(d) is not monotone) are left to the scan by the caller.
"""

import math

import numpy as np
from numba import njit, prange

from .kuramoto import G_SMALL_WORLD, _in_window


@njit(cache=True)
def _d_ahead(x, i, j):
    # |x_i − x_j| − floor(·), as circular_distance computes it before the min
    d = abs(x[i] - x[j])
    return d - math.floor(d)


@njit(cache=True)
def _true_run(x, i, step, lo, hi, code, params):
    """Consecutive offsets m = lo..hi (node (i + step·m) mod n, one side of the index wrap,
    so d is monotone in m) with the window predicate true, from m = lo; returns the last
    true offset (lo − 1 if none) and whether the run reached hi."""
    n = x.shape[0]
    if lo > hi:
        return hi, True
    if code != G_SMALL_WORLD:
        # directed ring: 0 < displacement <= r, the displacement non-decreasing in m
        if not _in_window(code, params, x[i], x[(i + step * lo) % n]):
            return lo - 1, False
        if _in_window(code, params, x[i], x[(i + step * hi) % n]):
            return hi, True
        a, b = lo, hi  # pred(a) true, pred(b) false
        while b - a > 1:
            c = (a + b) // 2
            if _in_window(code, params, x[i], x[(i + step * c) % n]):
                a = c
            else:
                b = c
        return a, False
    # small world: split [lo, hi] where "d <= 1 − d" changes (monotone: true then false when d
    # grows with m, false then true when it shrinks)
    d_lo = _d_ahead(x, i, (i + step * lo) % n)
    d_hi = _d_ahead(x, i, (i + step * hi) % n)
    grows = d_hi >= d_lo
    first = (d_lo <= 1.0 - d_lo) if grows else not (d_lo <= 1.0 - d_lo)
    # s = last offset of the first piece (condition as at lo)
    if (d_hi <= 1.0 - d_hi) == (d_lo <= 1.0 - d_lo):
        s = hi
    else:
        a, b = lo, hi
        cond_lo = d_lo <= 1.0 - d_lo
        while b - a > 1:
            c = (a + b) // 2
            dc = _d_ahead(x, i, (i + step * c) % n)
            if (dc <= 1.0 - dc) == cond_lo:
                a = c
            else:
                b = c
        s = a
    # piece 1 on [lo, s]: c(m) non-decreasing if "first" (d grows with c = d, or d shrinks with
    # c = 1 − d), non-increasing otherwise; piece 2 on [s + 1, hi] the opposite
    pieces_lo = (lo, s + 1)
    pieces_hi = (s, hi)
    for p in range(2):
        a0, b0 = pieces_lo[p], pieces_hi[p]
        if a0 > b0:
            continue
        up = first if p == 0 else not first
        if up:
            if not _in_window(code, params, x[i], x[(i + step * a0) % n]):
                return a0 - 1, False
            if not _in_window(code, params, x[i], x[(i + step * b0) % n]):
                a, b = a0, b0
                while b - a > 1:
                    c = (a + b) // 2
                    if _in_window(code, params, x[i], x[(i + step * c) % n]):
                        a = c
                    else:
                        b = c
                return a, False
        else:
            if not _in_window(code, params, x[i], x[(i + step * a0) % n]):
                return a0 - 1, False
    return hi, True


@njit(cache=True)
def _run_length(x, i, step, cap, code, params):
    """Number of consecutive offsets m = 1, 2, ... <= cap with the predicate true (the scan's
    count), node (i + step·m) mod n; the index wrap splits the offsets in two monotone sides."""
    n = x.shape[0]
    cap = min(cap, n - 1)  # offset n is the node itself (never in a directed window)
    if cap <= 0:
        return 0
    wrap = (n - 1 - i) if step > 0 else i  # offsets before the index wraps
    first_hi = min(cap, wrap)
    last, full = _true_run(x, i, step, 1, first_hi, code, params)
    if not full or first_hi == cap:
        return last
    last, full = _true_run(x, i, step, first_hi + 1, cap, code, params)
    return last


@njit(cache=True, parallel=True)
def graphon_windows_bisect(x, code, params, start, length):
    """Same output as ``kuramoto.graphon_windows`` for sorted ``x`` in [0, 1] not holding both
    0 and 1 (in place): start[i], length[i] of row i's circular index window."""
    n = x.shape[0]
    for k in prange(n):
        i = np.int64(k)  # signed: offsets step·m are negative going back
        back = 0
        if code == G_SMALL_WORLD:
            back = _run_length(x, i, -1, n - 1, code, params)
        self_in = 1 if code == G_SMALL_WORLD else 0
        fwd = _run_length(x, i, 1, n - back - self_in, code, params)
        if self_in == 1:
            start[i] = (i - back) % n
            length[i] = back + fwd + 1
        else:
            start[i] = (i + 1) % n
            length[i] = fwd
