"""The threads nndyn_fast uses: one setting for its Numba kernels and the BLAS calls it makes.

``set_threads(n)`` (or the context ``with threads(n):``, or ``nndyn --threads N``) sets the
most threads any function of the package uses; the default is ``NUMBA_NUM_THREADS`` (the
environment variable, else the number of CPUs), which is also the most that can be set. The
setting is per calling thread (as ``numba.set_num_threads``, which it sets).

Within that limit each call decides: a parallel region runs on one thread unless it has
enough work for the threads (:func:`region_threads`), and BLAS calls on small matrices run on
one thread (:func:`for_work`). Results never depend on the number of threads: parallel loops
run over independent outputs (trajectories, blocks of data points, replicas) whose
arithmetic is fixed per output, and sums over blocks are taken in block order.

Why: a parallel region ends with every thread at a barrier; when another process holds a
core, the thread sharing it waits for the scheduler before it can finish its share. On the
two-core development machine, with one other busy process, that cost p = 10-15 ms per region
(gradient-descent steps, two regions each: 17.2 ms per step on one thread, 46.6 ms on two at
n P = 2.3e7; 0.13 ms against 34 ms at n P = 4.9e4), against microseconds on an idle machine.
A region of serial time W split over t threads takes about W / t idle and 2 W / t + p under
such load (its slowest thread runs at half speed, then waits p); keeping the loaded time
within 2.5x of the idle time needs W >= 2 p t: ``MIN_SECONDS_PER_THREAD`` = 2 p = 30 ms of
serial work per thread. Each caller estimates W from the work of its region and the serial
rate of its kernel, measured (see the ``_SECONDS_*`` constants where they are used);
bench/bench_load.py times the headline workloads idle and beside a busy process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numba

__all__ = ["get_threads", "set_threads", "threads"]

# serial seconds of work a parallel region needs per thread it uses (2 p, p = 15 ms measured:
# see the module docstring)
MIN_SECONDS_PER_THREAD = 0.03


def max_threads() -> int:
    """The most threads that can be set: ``NUMBA_NUM_THREADS`` (read when numba starts)."""
    return int(numba.config.NUMBA_NUM_THREADS)


# inside for_work: the setting of the calling thread when the outermost for_work began
# (numba's own setting then holds the choice for the current region)
_local = threading.local()


def get_threads() -> int:
    """The most threads nndyn_fast uses from the calling thread (default ``NUMBA_NUM_THREADS``;
    ``numba.set_num_threads`` sets it too)."""
    limit = getattr(_local, "limit", None)
    return int(numba.get_num_threads()) if limit is None else limit


def _check(n: Any) -> int:
    top = max_threads()
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"threads must be an integer, got {type(n).__name__}")
    n = int(n)
    if not 1 <= n <= top:
        raise ValueError(
            f"threads must be between 1 and NUMBA_NUM_THREADS = {top}, got {n} (set the "
            "environment variable NUMBA_NUM_THREADS before starting Python to allow more)"
        )
    return n


def set_threads(n: int | None) -> int:
    """Use at most ``n`` threads (``None``: ``NUMBA_NUM_THREADS``) from the calling thread.

    Parameters
    ----------
    n : int or None
        1 <= n <= ``NUMBA_NUM_THREADS``; applies to the package's Numba kernels (it sets
        ``numba.set_num_threads``) and to the BLAS calls its functions make. Work too small
        for ``n`` threads still runs on fewer (see the module docstring).

    Returns
    -------
    int
        The previous setting.

    Raises
    ------
    ValueError
        n outside [1, NUMBA_NUM_THREADS].
    TypeError
        n not an integer.
    """
    before = get_threads()
    n = max_threads() if n is None else _check(n)
    numba.set_num_threads(n)
    if getattr(_local, "limit", None) is not None:
        _local.limit = n
    return before


@contextmanager
def threads(n: int | None) -> Iterator[int]:
    """``with threads(n):`` runs its block with :func:`set_threads` ``(n)``, then restores.

    Parameters
    ----------
    n : int or None
        As in :func:`set_threads`.
    """
    before = set_threads(n)
    try:
        yield get_threads()
    finally:
        set_threads(before)


def region_threads(seconds: float, min_seconds: float | None = None) -> int:
    """Threads for a parallel region of ``seconds`` of serial work: as many as get
    ``MIN_SECONDS_PER_THREAD`` each (or ``min_seconds``, if smaller: regions whose work is
    handed out in small chunks wait far less for a slowed thread), at least one, at most
    :func:`get_threads`."""
    top = get_threads()
    per = (
        MIN_SECONDS_PER_THREAD if min_seconds is None else min(min_seconds, MIN_SECONDS_PER_THREAD)
    )
    if per <= 0.0:
        return top
    return max(1, min(top, int(seconds / per)))


_BLAS: Any = None


def _blas_pools() -> Any:
    """threadpoolctl's BLAS thread pools of this process (found once), or None without it."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            _BLAS = False
        else:
            _BLAS = ThreadpoolController().select(user_api="blas")
    return _BLAS or None


@contextmanager
def for_work(
    seconds: float | None, *, blas: float | None = None, min_seconds: float | None = None
) -> Iterator[int]:
    """Run a block whose parallel regions each take about ``seconds`` of serial work on
    :func:`region_threads` ``(seconds)`` threads, and, when ``blas`` (the serial seconds of
    its largest BLAS call) is given, its BLAS calls on ``region_threads(blas)`` threads.
    ``seconds`` None leaves the kernels' threads alone; ``min_seconds`` as in
    :func:`region_threads`. Nested blocks choose within the setting of the outermost one.

    Yields the number of threads of the parallel regions; restores the settings on exit.
    """
    limit = get_threads()
    outer = getattr(_local, "limit", None)
    before = int(numba.get_num_threads())
    n = before if seconds is None else region_threads(seconds, min_seconds)
    pools = None if blas is None else _blas_pools()
    _local.limit = limit
    numba.set_num_threads(n)
    try:
        if pools is None:
            yield n
        else:
            with pools.limit(limits=region_threads(blas)):
                yield n
    finally:
        numba.set_num_threads(before)
        _local.limit = outer
