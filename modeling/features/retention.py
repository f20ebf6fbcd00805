"""Which stored user and terminal states may be deleted: the dormant-user rule of the feature engine, seen
from a worker that holds states as snapshots and knows time only from its inputs.

The engine resets a user whose next event comes more than ``user_retention_ms`` after their
latest (``FeatureEngine.dormant``). A stored state whose latest event is older than
``watermark - retention - grace`` can therefore be deleted: the user's next event, if it is at
most ``grace`` behind the watermark, finds a new state either way, so the vectors do not change.
An event further behind than that (a partition replayed from long ago) could see a new state
where the engine would have kept the old one; :class:`Watermark` keeps such cases rare by taking
the *earliest* of the inputs' event times, not the latest.

A terminal state holds labelled transactions; a label counts for a transaction at ``te`` only if
its transaction time is within the longest terminal window before ``te - label_delay``. A state
none of whose labels is later than ``watermark - label_delay - window - grace`` can therefore
count for no event at most ``grace`` behind the watermark: its features are those of no state
(zeros), and it may be deleted.
"""

from __future__ import annotations

from modeling.features.config import DAY_MS, FeatureConfig
from modeling.features.state import TerminalState, snapshot_last_activity_ms

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


def terminal_expiry_cutoff(watermark: int, config: FeatureConfig, grace_ms: int = EXPIRY_GRACE_MS) -> int:
    """Terminal states whose labelled transactions are all before this time may be deleted."""
    window = config.terminal_windows_ms[-1] if config.terminal_windows_ms else 0
    return watermark - config.label_delay_ms - window - grace_ms


def terminal_is_expired(state: TerminalState, cutoff: int) -> bool:
    """Whether none of a terminal state's labels can count any more (an empty state included)."""
    return all(tx_ms < cutoff for tx_ms, _, _ in state.labels.values())
