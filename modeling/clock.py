"""Clocks: wall time for live serving, event time for replay and tests.

The feature engine never reads a clock: every update takes the event's own time. Clocks are
used where "now" matters — latencies, the scored-at stamp of a risk event, registry timestamps —
so that replays and tests can run on a controlled time.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch (UTC)."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()


class ReplayClock:
    """A clock driven by event time: ``advance_to`` moves it forward, never back."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance_to(self, t: float) -> None:
        if t > self._now:
            self._now = t
