"""Exceptions raised by nndyn_fast."""

from __future__ import annotations

__all__ = ["NonFiniteStateError"]


class NonFiniteStateError(FloatingPointError):
    """A run produced NaN/inf; ``step`` and ``time`` name the first bad step.

    Everything before that step has been kept (returned frames, or committed to the run file).
    """

    def __init__(self, message: str, *, step: int, time: float):
        super().__init__(message)
        self.step = step
        self.time = time
