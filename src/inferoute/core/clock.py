"""Time, as the core sees it: a number of seconds handed in by the caller.

The core never reads a clock. Shells pass `time.monotonic()` (live) or a virtual time (the
benchmark). `ManualClock` is for tests and the discrete-event benchmark.
"""

from __future__ import annotations

__all__ = ["ManualClock"]


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self._t += seconds
        return self._t

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError("time cannot go backwards")
        self._t = t
