"""Sliding-window aggregators over integer values (amounts in cents), exact under revert.

Each follows ``initialize / update / revert / result`` (Quix Streams' aggregators plus river's
``revert``). Values are integers so that adding and removing never drifts: a window maintained
incrementally equals one recomputed from scratch, bit for bit (see the hypothesis tests).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any, Final


class WindowAgg:
    """Count, sum, sum of squares and max of the values currently in one sliding window.

    The max uses a monotonic queue of ``(index, value)``, where ``index`` numbers the values in
    the order they entered: ``update`` drops smaller values from its tail, ``revert`` drops the
    expiring entry from its head, so all four results are O(1) amortized. The queue is a list:
    it holds the window's suffix maxima, a handful for real amounts, and an empty list takes 56
    bytes where an empty deque takes 624 (a user has one per window: 2.8 KB of a typical
    decoded user's 16.6 KB). Dropping its head moves what is left: at most the window's length,
    which ``max_user_transactions`` bounds.
    """

    __slots__ = ("count", "maxq", "sum", "sumsq")

    def __init__(self) -> None:
        self.initialize()

    def initialize(self) -> None:
        self.count = 0
        self.sum = 0
        self.sumsq = 0
        self.maxq: list[tuple[int, int]] = []

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
            del q[0]

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


_AFTER_ANY: Final = 2**63  # sorts after every (label time, tx time, fraud) with the same label time


class LabelIndex:
    """A terminal's labels ``(tx time, label time, is_fraud)`` sorted for the terminal features:
    :meth:`result` counts labels and frauds per window in O(log n + r), r the labels known only
    after ``known_by``, exactly as a scan of every label would (the hypothesis tests compare
    them). ``update`` / ``revert`` add and remove one label (a list insert: O(n) moves in C)."""

    __slots__ = ("by_label_time", "fraud_tx", "tx")

    def __init__(self, labels: Iterable[tuple[int, int, int]] = ()) -> None:
        items = list(labels)
        self.tx = sorted(v[0] for v in items)
        self.fraud_tx = sorted(v[0] for v in items if v[2])
        self.by_label_time = sorted((v[1], v[0], v[2]) for v in items)

    def __len__(self) -> int:
        return len(self.tx)

    def copy(self) -> LabelIndex:
        out = LabelIndex()
        out.tx, out.fraud_tx, out.by_label_time = self.tx[:], self.fraud_tx[:], self.by_label_time[:]
        return out

    def update(self, tx: int, label_ms: int, fraud: int) -> None:
        insort(self.tx, tx)
        if fraud:
            insort(self.fraud_tx, tx)
        insort(self.by_label_time, (label_ms, tx, fraud))

    def revert(self, tx: int, label_ms: int, fraud: int) -> None:
        _remove(self.tx, tx)
        if fraud:
            _remove(self.fraud_tx, tx)
        _remove(self.by_label_time, (label_ms, tx, fraud))

    def result(self, end: int, known_by: int, windows: Sequence[int]) -> tuple[list[int], list[int]]:
        """Per window ``w``: labels, and frauds among them, of transactions in ``(end - w, end]``
        known by ``known_by`` (label time at most that)."""
        tx, ftx = self.tx, self.fraud_tx
        hi, fhi = bisect_right(tx, end), bisect_right(ftx, end)
        counts = [hi - bisect_right(tx, end - w) for w in windows]
        frauds = [fhi - bisect_right(ftx, end - w) for w in windows]
        known_after = self.by_label_time
        for i in range(bisect_right(known_after, (known_by, _AFTER_ANY)), len(known_after)):
            _, t, fraud = known_after[i]
            if t > end:
                continue
            for k, w in enumerate(windows):
                if t > end - w:
                    counts[k] -= 1
                    frauds[k] -= fraud
        return counts, frauds


def _remove(items: list[Any], x: Any) -> None:
    i = bisect_left(items, x)
    if i == len(items) or items[i] != x:
        raise ValueError(f"label index out of step with its labels: {x!r} is not held")
    del items[i]


Click = tuple[int, str, str, str]  # (time ms, type, device, ip), as UserState.clicks holds them
# Where each click type is counted: the hour's logins, failed logins, page views; the day's
# logins, failed logins, password changes, payees added
_HOUR_SLOTS: Final = {"login": 0, "login_failed": 1, "page_view": 2}
_DAY_SLOTS: Final = {"login": 0, "login_failed": 1, "change_password": 2, "add_payee": 3}


class ClickWindows:
    """The click features' two windows, the hour and the day up to a transaction's time ``q``
    (``(q - w, q]``), kept up to date as clicks arrive and transactions move forward: O(1)
    amortized per click, where a scan of the day's clicks cost every transaction up to 460 µs
    (a user at the 5,000-click bound).

    It holds the user's clicks in arrival order, which must also be time order: the engine drops
    it (and scans, or builds a new one) when a click arrives out of order or when the clicks it
    forgets are not its first. Transactions ask in time order (a late one is featurized at the
    user's latest time); the engine also drops it if one did not.
    Derived from ``UserState.clicks``, never serialized.
    """

    __slots__ = ("base", "clicks", "day", "hi", "hour", "lo", "q", "widths")

    def __init__(self, clicks: Iterable[Click], hour_ms: int, day_ms: int) -> None:
        self.clicks: deque[Click] = deque(clicks)
        self.base = 0  # absolute index of clicks[0]
        self.q = -(1 << 62)  # the time the windows hold: clicks in (q - width, q]
        self.widths = (hour_ms, day_ms)
        self.lo = [0, 0]  # per window, absolute index of its first click
        self.hi = [0, 0]  # ... and one past its last (lo == hi: empty)
        # hour: logins, failed logins, page views
        self.hour = [0, 0, 0]
        # day: logins, failed logins, password changes, payees added, devices, ips, login times
        self.day: tuple[list[int], dict[str, int], dict[str, int], deque[int]]
        self.day = ([0, 0, 0, 0], {}, {}, deque())

    @staticmethod
    def in_order(clicks: Iterable[Click]) -> bool:
        return all(a[0] <= b[0] for a, b in pairwise(clicks))

    @property
    def last_ms(self) -> int:
        return self.clicks[-1][0] if self.clicks else -(1 << 62)

    def _add(self, w: int, c: Click) -> None:
        self._count(w, c[1], 1)
        if w:
            _, devs, ips, logins = self.day
            devs[c[2]] = devs.get(c[2], 0) + 1
            ips[c[3]] = ips.get(c[3], 0) + 1
            if c[1] == "login":
                logins.append(c[0])

    def _remove(self, w: int, c: Click) -> None:
        self._count(w, c[1], -1)
        if w:
            _, devs, ips, logins = self.day
            for seen, key in ((devs, c[2]), (ips, c[3])):
                n = seen[key] - 1
                if n:
                    seen[key] = n
                else:
                    del seen[key]
            if c[1] == "login":
                logins.popleft()  # the window's logins leave in time order

    def _count(self, w: int, kind: str, d: int) -> None:
        counts, slots = (self.day[0], _DAY_SLOTS) if w else (self.hour, _HOUR_SLOTS)
        i = slots.get(kind)
        if i is not None:
            counts[i] += d

    def advance(self, q: int) -> None:
        """Move both windows to end at ``q`` (not earlier than the last ``q``)."""
        clicks, base, end = self.clicks, self.base, self.base + len(self.clicks)
        for w, width in enumerate(self.widths):
            lo, hi, start = self.lo[w], self.hi[w], q - width
            while lo < hi and clicks[lo - base][0] <= start:
                self._remove(w, clicks[lo - base])
                lo += 1
            if lo == hi:
                while hi < end and clicks[hi - base][0] <= start:
                    hi += 1
                lo = hi
            while hi < end and clicks[hi - base][0] <= q:
                self._add(w, clicks[hi - base])
                hi += 1
            self.lo[w], self.hi[w] = lo, hi
        self.q = q

    def append(self, c: Click) -> None:
        """A click at least as late as every click held: the next :meth:`advance` counts it if
        it is in the windows (``result`` is read only after an ``advance``)."""
        self.clicks.append(c)

    def popleft(self) -> Click:
        """Forget the first click held."""
        c = self.clicks.popleft()
        idx = self.base
        self.base += 1
        for w in (0, 1):
            if self.lo[w] <= idx < self.hi[w]:
                self._remove(w, c)
            self.lo[w] = max(self.lo[w], self.base)
            self.hi[w] = max(self.hi[w], self.base)
        return c

    def result(self) -> tuple[int, int, int, int, int, int, int, int, int, int]:
        """For the windows' ``q``: logins, failed logins and page views in the hour; logins,
        failed logins, password changes, payees added, devices and ips in the day; the day's
        latest login (-1: none)."""
        counts, devs, ips, logins = self.day
        h = self.hour
        last = logins[-1] if logins else -1
        return h[0], h[1], h[2], counts[0], counts[1], counts[2], counts[3], len(devs), len(ips), last
