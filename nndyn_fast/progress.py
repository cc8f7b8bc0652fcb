"""Progress of long runs, updated once per committed chunk (never per step).

Every long entry point takes ``progress=False``; with ``progress=True`` it reports on stderr:
through :mod:`tqdm` when it is installed (``pip install "nndyn_fast[progress]"``), otherwise a
single line rewritten per chunk. Either way nothing appears for runs shorter than
:data:`DELAY` seconds, so short calls stay silent. The command line turns progress on when
stderr is a terminal (``--progress`` / ``--no-progress`` override it).
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["DELAY", "Progress", "progress_bar"]

DELAY = 2.0  # seconds before anything is shown


class Progress:
    """A progress report of ``total`` units (steps, frames, points, ...) on stderr.

    Call :meth:`update` with the number of units done so far (absolute, so a resumed run
    starts where its file ended), once per chunk, and :meth:`close` at the end; also a context
    manager. Disabled (``enabled=False``) it does nothing at all.
    """

    def __init__(self, total: int, *, desc: str = "", unit: str = "step", enabled: bool = True):
        self.total = max(int(total), 1)
        self.desc, self.unit, self.enabled = desc, unit, bool(enabled)
        self._t0 = time.monotonic()
        self._done = 0
        self._bar: Any = None
        self._shown = False

    def update(self, done: int) -> None:
        """Set the units done so far to ``done`` (the report ends when all are done)."""
        if not self.enabled:
            return
        done = min(int(done), self.total)
        if done >= self.total:
            if self._shown:
                self._show(done)
            self.close()
            return
        self._show(done)

    def _show(self, done: int) -> None:
        if not self._shown and time.monotonic() - self._t0 < DELAY:
            self._done = done
            return
        if self._bar is None and not self._shown:
            self._bar = _tqdm(self.total, self.desc, self.unit, self._done)
            self._shown = True
        if self._bar is not None:
            self._bar.update(done - self._done)
        else:
            self._line(done)
        self._done = done

    def _line(self, done: int) -> None:
        elapsed = time.monotonic() - self._t0
        frac = done / self.total
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        head = f"{self.desc}: " if self.desc else ""
        sys.stderr.write(
            f"\r{head}{100 * frac:5.1f}%  {done}/{self.total} {self.unit}s  "
            f"elapsed {elapsed:6.1f}s  eta {eta:6.1f}s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        """End the report (a newline after the plain line); a second call does nothing."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _tqdm(total: int, desc: str, unit: str, initial: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc or None, unit=unit, initial=initial, file=sys.stderr)


def progress_bar(progress: Any, total: int, *, desc: str = "", unit: str = "step") -> Progress:
    """A :class:`Progress` for a public function's ``progress`` argument (checked: a bool)."""
    from ._validate import check_bool

    return Progress(total, desc=desc, unit=unit, enabled=check_bool("progress", progress))
