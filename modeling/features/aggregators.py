"""Sliding-window aggregators over integer values (amounts in cents), exact under revert.

Each follows ``initialize / update / revert / result`` (Quix Streams' aggregators plus river's
``revert``). Values are integers so that adding and removing never drifts: a window maintained
incrementally equals one recomputed from scratch, bit for bit (see the hypothesis tests).
"""

from __future__ import annotations

from collections import deque


class WindowAgg:
    """Count, sum, sum of squares and max of the values currently in one sliding window.

    The max uses a monotonic deque of ``(index, value)``, where ``index`` numbers the values in
    the order they entered: ``update`` drops smaller values from its tail, ``revert`` drops the
    expiring entry from its head, so all four results are O(1) amortized.
    """

    __slots__ = ("count", "maxq", "sum", "sumsq")

    def __init__(self) -> None:
        self.initialize()

    def initialize(self) -> None:
        self.count = 0
        self.sum = 0
        self.sumsq = 0
        self.maxq: deque[tuple[int, int]] = deque()

    def update(self, idx: int, v: int) -> None:
        self.count += 1
        self.sum += v
        self.sumsq += v * v
        q = self.maxq
        while q and q[-1][1] <= v:
            q.pop()
        q.append((idx, v))

    def revert(self, idx: int, v: int) -> None:
        """Remove the value that entered as ``idx``; values leave in the order they entered."""
        self.count -= 1
        self.sum -= v
        self.sumsq -= v * v
        q = self.maxq
        # Values leave in the order they entered: if the leaving one is still queued, it is the head.
        if q and q[0][0] == idx:
            q.popleft()

    def result(self) -> tuple[int, int, int, int]:
        """``(count, sum, sumsq, max)``; max is 0 for an empty window."""
        return self.count, self.sum, self.sumsq, (self.maxq[0][1] if self.maxq else 0)


class DistinctAgg:
    """Number of distinct keys in a sliding window, with revert."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.initialize()

    def initialize(self) -> None:
        self.counts: dict[str, int] = {}

    def update(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def revert(self, key: str) -> None:
        n = self.counts[key] - 1
        if n:
            self.counts[key] = n
        else:
            del self.counts[key]

    def __contains__(self, key: str) -> bool:
        return key in self.counts

    def result(self) -> int:
        return len(self.counts)
