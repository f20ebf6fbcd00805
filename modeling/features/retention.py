"""Which stored user states may be deleted: the dormant-user rule of the feature engine, seen
from a worker that holds states as snapshots and knows time only from its inputs.

The engine resets a user whose next event comes more than ``user_retention_ms`` after their
latest (``FeatureEngine.dormant``). A stored state whose latest event is older than
``watermark - retention - grace`` can therefore be deleted: the user's next event, if it is at
most ``grace`` behind the watermark, finds a new state either way, so the vectors do not change.
An event further behind than that (a partition replayed from long ago) could see a new state
where the engine would have kept the old one; :class:`Watermark` keeps such cases rare by taking
the *earliest* of the inputs' event times, not the latest.
"""

from __future__ import annotations

from modeling.features.config import DAY_MS, FeatureConfig
from modeling.features.state import snapshot_last_activity_ms

# How far behind the watermark an event may arrive and still see exactly the vectors of a worker
# that deleted nothing.
EXPIRY_GRACE_MS = DAY_MS
# An input's event time counts at most this far past the wall clock: one mis-dated event must not
# make every state look dormant.
MAX_FUTURE_MS = DAY_MS


class Watermark:
    """Event time of a worker's inputs: per source (e.g. topic partition) the latest event time
    seen, and as the watermark the earliest of those, capped at the wall clock plus
    :data:`MAX_FUTURE_MS`. A source that has sent nothing does not hold it back; one that went
    quiet does (nothing is deleted on its account: the safe side)."""

    __slots__ = ("latest",)

    def __init__(self) -> None:
        self.latest: dict[str, int] = {}

    def observe(self, source: str, t: int) -> None:
        if t > self.latest.get(source, -1):
            self.latest[source] = t

    def value(self, now_ms: float) -> int | None:
        """The watermark, or None before any input."""
        if not self.latest:
            return None
        return min(min(self.latest.values()), int(now_ms) + MAX_FUTURE_MS)

    def forget(self) -> None:
        """Drop every source (after a rebalance, the worker's sources change)."""
        self.latest.clear()


def expiry_cutoff(watermark: int, config: FeatureConfig, grace_ms: int = EXPIRY_GRACE_MS) -> int:
    """States whose latest event is before this time may be deleted."""
    return watermark - config.user_retention_ms - grace_ms


def is_expired(snapshot: bytes, cutoff: int) -> bool:
    """Whether a stored user state's latest event is before ``cutoff``."""
    return snapshot_last_activity_ms(snapshot) < cutoff
