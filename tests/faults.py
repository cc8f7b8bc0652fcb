"""Fault injection for run files: end a writer at its N-th write, as a SIGKILL there would.

Every byte a run writes after its file is created goes through ``storage._pwrite``, and the
file appears at its path through one ``storage._publish`` (a link or a rename).
:func:`crash_at` makes the N-th of those calls write only a prefix of its bytes (a torn
write), drop every later write, and raise :class:`Crash`: the file is then left exactly as a
process killed at that write leaves it (the page cache keeps what was written; nothing after it
reaches the file). ``count_writes`` counts the write points of a run, so a test can visit
every one of them.

A real SIGKILL at each ``pwrite64`` (strace's fault injection) is in test_storage.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from nndyn_fast import storage


class Crash(BaseException):
    """The simulated death of the writing process (passes ``except Exception``)."""


@contextlib.contextmanager
def crash_at(n: int, torn: float = 0.5) -> Iterator[dict]:
    """Die at write point ``n`` (1-based) after writing a fraction ``torn`` of its bytes."""
    state = {"count": 0, "dead": False}
    real_pwrite, real_publish = storage._pwrite, storage._publish

    def pwrite(fd, data, offset):
        if state["dead"]:
            return
        state["count"] += 1
        if state["count"] == n:
            view = memoryview(data).cast("B")
            real_pwrite(fd, view[: int(len(view) * torn)], offset)
            state["dead"] = True
            raise Crash(f"killed at write {n}")
        real_pwrite(fd, data, offset)

    def publish(tmp, p, replace):
        if state["dead"]:
            return
        state["count"] += 1
        if state["count"] == n:
            state["dead"] = True
            raise Crash(f"killed before the file appeared (write {n})")
        real_publish(tmp, p, replace)

    storage._pwrite, storage._publish = pwrite, publish
    try:
        yield state
    finally:
        storage._pwrite, storage._publish = real_pwrite, real_publish


def count_writes(run: Callable[[], object]) -> int:
    """The number of write points of ``run()`` (a run that completes)."""
    with crash_at(0) as state:
        run()
    return state["count"]


def every_kill_point(
    path: os.PathLike,
    run: Callable[[], object],
    resume: Callable[[], object],
    check: Callable[[], None],
    torn: float = 0.5,
) -> dict[str, int]:
    """Kill ``run()`` at each of its write points; then resume (or rerun, if no file was left)
    and call ``check()``, which compares the file and result with an uninterrupted run.

    Returns how many points resumed and how many reran.
    """
    total = count_writes(run)
    os.unlink(path)
    seen = {"resumed": 0, "reran": 0, "points": total}
    for n in range(1, total + 1):
        with contextlib.suppress(Crash), crash_at(n, torn):
            run()
        if os.path.exists(path):
            resume()
            seen["resumed"] += 1
        else:
            run()
            seen["reran"] += 1
        check()
        os.unlink(path)
    return seen
