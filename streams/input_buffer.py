"""The worker's input buffer: fetched messages of the batch topics, taken in micro-batches.

Each partition's messages wait in their own FIFO. :meth:`InputBuffer.take` returns up to
``max_n`` of them, waiting at most ``max_wait_s`` after the oldest arrived, merged across
partitions:

* without an :class:`Alignment`, in the order they arrived;
* with one, in the order of their Kafka timestamps, and only as far as every co-partitioned
  input partition allows (Kafka Streams' timestamp synchronization, below).

Why align. Kafka orders messages within a partition, not across topics. Live, the worker reads
every topic as it arrives and the skew between topics is small. Draining a backlog, the
fetcher hands out long runs of one topic at a time: measured on 196k messages, 26,148 clicks
were taken before the 3,548th transaction, and labels ran tens of thousands of messages behind
the transactions (``benchmarks/README.md``, session 12). Transactions were then scored without
labels and clicks that a replay in event-time order has. The input topics are keyed alike, so
partition *p* of each holds the events of the same users; a message is taken only when every
partition of its group (partition *p* of each input topic) either has messages buffered (the
heads compare by timestamp) or has nothing more to fetch. A partition with nothing buffered
that still has messages to fetch holds its group back for at most ``max_idle_s``
(``max.task.idle.ms`` in Kafka Streams), after which the group goes on without it.

That bound counts only the time the buffer itself waits in :meth:`InputBuffer.take`, not the
time the worker spends on the batches it took. The fetcher runs on the worker's event loop
(``streams/in_loop.py``): while a batch is scored it cannot run, so a wall-clock bound expired
under a backlog before the fetcher had a chance to fill the partition. After a SIGKILL the
restarted worker's groups then went on without the labels and clicks that came first, and
about 100 to 300 of 4,300 risk events differed from the backtest
(``tests/integration/test_crash_scores.py``). Live, the buffer waits for its batches to fill
most of the time, and this clock runs nearly as fast as the wall clock.

Labels across groups (:class:`LabelRule`). Terminal risk mixes the labels of every user, so a
transaction also waits for the labels of every partition of this worker, not only its group's,
up to its timestamp minus the label allowance (a label counts only once it is that old). A
labels partition with nothing buffered and more to fetch counts as holding a label at the
timestamp of the last one taken from it (Kafka timestamps rise within a partition), for at most
``max_idle_s``. Without it, one group's transactions were taken while another group's labels
were still in Kafka (``tests/integration/test_terminal_catch_up.py``). The labels partitions other
workers own count through the floors they publish (``streams/terminal_feed.py``): a partition's
floor holds a transaction back for at most ``remote_max_idle_s`` after it last changed (wall
clock: another worker's progress does not depend on this one's event loop).

Back-pressure per partition: a partition with ``tp_limit`` messages buffered is held back from
fetching (``hold``, Faust's ``Consumer.on_buffer_full``) until it drops to half (``release``),
so that one topic running ahead cannot fill the buffer while its group waits for another. The
whole buffer's ``high_water`` stops the fetcher altogether, except while everything buffered
waits for a lagging partition (:meth:`InputBuffer.full`): only a fetch can end that wait, and
the fetcher then fetches the partitions not held back, which a fetch fills to at most
``tp_limit`` plus one fetch's records before they are held too. Before that exception, a worker
starting on a backlog stopped its fetcher with most partitions at their limit while the
partitions its groups waited for had their records already fetched inside aiokafka; each wait
ran out, and transactions were scored before the labels and clicks that came first (session
17, DEVELOPERS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Taken = list[tuple[float, Any]]  # (monotonic receipt time, message)


@dataclass(frozen=True)
class LabelRule:
    """Terminal risk mixes the labels of every user, so a transaction waits for the labels of every
    partition, not only its group's, up to its timestamp minus ``lead_s`` (the label allowance: a
    label counts only once it is that old, so newer ones need not be waited for)."""

    txn_topic: str
    labels_topic: str
    lead_s: float
    partitions: Callable[[], Iterable[Any]]  # the labels partitions this worker is assigned
    # The labels partitions other workers own (numbers), the floors they published (the lowest
    # timestamp of a label not forwarded yet; inf: none pending) and when each floor last
    # changed (this buffer's clock): streams/terminal_feed.py.
    others: Callable[[], Iterable[int]] = tuple
    floors: Mapping[int, float] = field(default_factory=dict)
    changed: Mapping[int, float] = field(default_factory=dict)


class Alignment:
    """Which groups of co-partitioned input partitions must wait for a lagging member.

    ``topics``: the input topics, co-partitioned (same key, same partition count).
    ``lagging(tp)``: the partition has messages in Kafka that the buffer has not received yet.
    ``labels``: a transaction also waits for the labels of *every* partition of this worker up to
    its timestamp minus a lead (:class:`LabelRule`). None: groups only.
    """

    def __init__(
        self,
        topics: Iterable[str],
        lagging: Callable[[Any], bool],
        max_idle_s: float,
        *,
        labels: LabelRule | None = None,
        remote_max_idle_s: float | None = None,
        on_expired: Callable[[str], object] | None = None,
    ) -> None:
        self.topics = tuple(topics)
        self.lagging = lagging
        self.max_idle_s = max_idle_s
        self.labels = labels
        # how long another worker's floor may hold a transaction back after it last changed
        self.remote_max_idle_s = max_idle_s if remote_max_idle_s is None else remote_max_idle_s
        # lagging member with nothing buffered -> since; ("remote", p): another worker's labels
        # partition p, before its first floor
        self._idle_since: dict[Any, float] = {}
        # Called once per wait that ran out, with its kind: "group" (a group went on without a
        # member), "labels" (transactions without one of this worker's labels partitions),
        # "remote" (without another worker's). Each may have put events out of event-time order.
        self._on_expired = on_expired
        self._expired: set[Any] = set()  # waits that ran out and are not over yet

    def members(self, tp: Any) -> list[Any]:
        """Partition ``tp.partition`` of every input topic (of ``tp``'s own type)."""
        make = type(tp)
        return [make(topic, tp.partition) for topic in self.topics]

    def held_until(self, tp: Any, buffered: Callable[[Any], bool], now: float) -> float | None:
        """None if ``tp``'s group may be taken from now; otherwise the time its wait expires.
        ``now``: the idle clock (:class:`InputBuffer` passes the time it has waited), as for
        :meth:`label_floor`."""
        until = None
        for member in self.members(tp):
            if buffered(member) or not self.lagging(member):
                self._idle_since.pop(member, None)
                self._expired.discard(member)
                continue
            expiry = self._idle_since.setdefault(member, now) + self.max_idle_s
            if expiry > now:
                until = expiry if until is None else min(until, expiry)
            else:
                self._ran_out(member, "group")
        return until

    def _ran_out(self, key: Any, kind: str) -> None:
        if key not in self._expired:
            self._expired.add(key)
            if self._on_expired is not None:
                self._on_expired(kind)

    def label_floor(
        self,
        labels_tps: Iterable[Any],
        head: Callable[[Any], float | None],
        last: Mapping[Any, float],
        now: float,
    ) -> tuple[float, float | None]:
        """The earliest timestamp a label not taken yet can have, as far as this worker knows,
        over ``labels_tps``: a buffered head; for a partition with nothing buffered and messages
        still to fetch, the timestamp of the last label taken from it (minus infinity before
        the first), for at most ``max_idle_s``. Also when the earliest such wait ends."""
        floor = math.inf
        until = None
        for tp in labels_tps:
            ts = head(tp)
            if ts is not None or not self.lagging(tp):
                self._idle_since.pop(tp, None)
                self._expired.discard(("labels", tp))
                if ts is not None and ts < floor:
                    floor = ts
                continue
            expiry = self._idle_since.setdefault(tp, now) + self.max_idle_s
            if expiry > now:
                floor = min(floor, last.get(tp, -math.inf))
                until = expiry if until is None else min(until, expiry)
            else:
                self._ran_out(("labels", tp), "labels")
        return floor, until

    def remote_floor(self, now: float) -> tuple[float, float | None]:
        """:meth:`label_floor` over the labels partitions of other workers, from the floors they
        published, each for at most ``remote_max_idle_s`` after it last changed (or after the
        wait began, before its first). Fixed during one take: the feed updates them between."""
        floor = math.inf
        until = None
        rule = self.labels
        if rule is None:
            return floor, until
        for p in rule.others():
            f = rule.floors.get(p, -math.inf)
            if f == math.inf:
                continue
            since = rule.changed.get(p)
            if since is None:
                since = self._idle_since.setdefault(("remote", p), now)
            expiry = since + self.remote_max_idle_s
            if expiry > now:
                self._expired.discard(("remote", p))
                floor = min(floor, f)
                until = expiry if until is None else min(until, expiry)
            else:
                self._ran_out(("remote", p), "remote")
        return floor, until

    def waiting_for(self) -> list[Any]:
        """The partitions a wait has begun for (of this worker: not another worker's floors) and
        not ended yet, run out or not."""
        return [key for key in self._idle_since if hasattr(key, "topic")]

    def forget(self, tps: Iterable[Any] | None = None) -> None:
        if tps is None:
            self._idle_since.clear()
            self._expired.clear()
        else:
            for tp in tps:
                self._idle_since.pop(tp, None)
                self._expired.discard(tp)
                self._expired.discard(("labels", tp))


class InputBuffer:
    """Messages fetched for some topics, waiting to be taken in micro-batches."""

    def __init__(
        self,
        high_water: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        align: Alignment | None = None,
        tp_limit: int | None = None,
        hold: Callable[[Any], object] | None = None,
        release: Callable[[Any], object] | None = None,
        on_wait: Callable[[], object] | None = None,
    ) -> None:
        self.high_water = high_water
        self.align = align
        self._clock = clock
        self._wall = wall  # the clock Kafka timestamps are read against (take's max_age_s)
        self._q: dict[Any, deque[tuple[float, Any, int]]] = {}  # tp -> (receipt, message, seq)
        self._n = 0
        self._seq = 0
        self._tp_limit = tp_limit
        self._hold = hold
        self._release = release
        self._on_wait = on_wait  # called when everything buffered waits (aligned)
        self._held: set[Any] = set()
        self._label_last: dict[Any, float] = {}  # labels partition -> last timestamp taken
        self._stream_ts = -math.inf  # the latest timestamp taken from any partition
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        # seconds spent waiting in take(): the clock of the alignment's idle bound (module doc)
        self._waited = 0.0
        # Everything buffered waits for a lagging partition: the fetcher goes on past the
        # high-water mark (full(), module doc).
        self._starved = False

    def __len__(self) -> int:
        return self._n

    def put(self, message: Any) -> None:
        tp = message.tp
        d = self._q.get(tp)
        if d is None:
            d = self._q[tp] = deque()
        self._seq += 1
        d.append((self._clock(), message, self._seq))
        self._n += 1
        self._arrived.set()
        if self._n >= self.high_water and not self._starved:
            self._room.clear()
        if self._hold is not None and self._tp_limit is not None and len(d) >= self._tp_limit:
            # every time: Faust resets its active partitions after a rebalance or recovery
            self._held.add(tp)
            self._hold(tp)

    def poke(self) -> None:
        """Something a wait depends on changed (another worker's label floor): look again."""
        self._arrived.set()

    def label_floors(self) -> dict[int, float]:
        """For each labels partition of this worker, the lowest timestamp a label not taken yet
        can have, as far as this buffer knows: its buffered head; with nothing buffered, the
        last one taken (minus infinity before the first) while it has more to fetch, and when it
        has none, the latest timestamp taken from any partition (a label produced later is
        stamped later: live, it is stamped now; a replay produces in time order). What a
        progress record publishes (``streams/terminal_feed.py``). Not infinity, as this buffer
        assumes for its own partitions when it looks: another worker reads the floor later, when
        more labels may have arrived (two workers catching up failed that way)."""
        align = self.align
        rule = align.labels if align is not None else None
        if align is None or rule is None:
            return {}
        out: dict[int, float] = {}
        for tp in rule.partitions():
            ts = self._head_ts(tp)
            if ts is None:
                ts = self._label_last.get(tp, -math.inf) if align.lagging(tp) else self._stream_ts
            out[tp.partition] = ts
        return out

    def awaited(self) -> list[Any]:
        """The partitions an aligned wait is waiting for now: nothing buffered, messages still to
        fetch. The consumer hands out their fetched records first (streams/intake.py,
        ``BatchingConsumer._getmany``)."""
        align = self.align
        if align is None:
            return []
        return [tp for tp in align.waiting_for() if not self._buffered(tp) and align.lagging(tp)]

    def full(self) -> bool:
        """Whether the fetcher should wait for room: at the high-water mark, unless everything
        buffered waits for a lagging partition, which only a fetch can fill (module doc)."""
        return self._n >= self.high_water and not self._starved

    async def wait_for_room(self) -> None:
        await self._room.wait()

    def discard(self, tps: Any = None) -> None:
        """Drop what was not taken yet, of the topic-partitions ``tps`` (``None``: all)."""
        gone = list(self._q) if tps is None else [tp for tp in self._q if tp in tps]
        for tp in gone:
            self._n -= len(self._q.pop(tp))
        if self.align is not None:
            self.align.forget(None if tps is None else gone)
        for tp in [tp for tp in self._held if tp not in self._q]:
            self._unhold(tp)
        if self._n < self.high_water:
            self._room.set()

    def _unhold(self, tp: Any) -> None:
        self._held.discard(tp)
        if self._release is not None:
            self._release(tp)

    def _oldest_receipt(self) -> float:
        return min(d[0][0] for d in self._q.values() if d)

    def _age_deadline(self, max_age_s: float) -> float:
        """When the oldest buffered head (by Kafka timestamp: seconds since the epoch, as Faust's
        messages carry it) is ``max_age_s`` old, on this buffer's clock; infinity without
        timestamps. The timestamps come from the producers' clocks (or the broker's, with
        LogAppendTime): a producer clock behind this host's makes batches close sooner, never
        later than ``max_wait_s``."""
        stamped: list[float] = [d[0][1].timestamp for d in self._q.values() if d and d[0][1].timestamp]
        if not stamped:
            return math.inf
        return self._clock() + (min(stamped) + max_age_s - self._wall())

    def _buffered(self, tp: Any) -> bool:
        d = self._q.get(tp)
        return bool(d)

    def _head_ts(self, tp: Any) -> float | None:
        d = self._q.get(tp)
        return (d[0][1].timestamp or 0.0) if d else None

    async def take(self, max_n: int, max_wait_s: float, max_age_s: float = 0.0) -> Taken:
        """Up to ``max_n`` messages; waits at most ``max_wait_s`` after the oldest one arrived
        (and, aligned, while every buffered message waits for a lagging partition). With
        ``max_age_s``, no longer than that after the oldest buffered head's Kafka timestamp
        either: a message that took long to arrive does not wait for its batch to fill."""
        while True:
            while not self._n:
                await self._wait(None)
            if self._n < max_n:
                deadline = self._oldest_receipt() + max_wait_s
                if max_age_s > 0:
                    deadline = min(deadline, self._age_deadline(max_age_s))
                while self._n < max_n:
                    remaining = deadline - self._clock()
                    if remaining <= 0 or not await self._wait(remaining):
                        break
                    if not self._n:  # discarded by a seek while we waited
                        return []
            out, wake = self._select(max_n)
            if out or wake is None:
                self._starved = False
                return out
            # Everything buffered waits for a lagging partition: until it delivers or the
            # wait expires. Only a fetch can end the wait, so a full buffer must not stop the
            # fetcher (module doc).
            self._starved = True
            self._room.set()
            self._arrived.clear()
            if self._on_wait is not None:
                self._on_wait()
            await self._wait(max(wake - self._clock(), 0.0), clear=False)

    async def _wait(self, timeout: float | None, *, clear: bool = True) -> bool:
        """Wait for the next put (or poke), at most ``timeout`` seconds; False if none came.
        The time waited runs the alignment's idle clock."""
        if clear:
            self._arrived.clear()
        t0 = self._clock()
        try:
            if timeout is None:
                await self._arrived.wait()
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
            return self._arrived.is_set()
        finally:
            self._waited += self._clock() - t0

    def _select(self, max_n: int) -> tuple[Taken, float | None]:
        """Up to ``max_n`` messages merged across partitions, and (when none could be taken
        because of lagging partitions) the time the earliest such wait expires."""
        align = self.align
        now = self._clock()
        # The idle bound runs on the time waited (module doc); its expiries are turned into the
        # earliest wall-clock time they can come, which is when take() looks again.
        waited = self._waited

        def wall(until: float | None) -> float | None:
            return None if until is None else now + (until - waited)

        held: dict[int, float | None] = {}  # partition number -> its wait's expiry (None: none)
        heap: list[tuple[Any, Any]] = []
        for tp, d in self._q.items():
            if not d:
                continue
            if align is not None:
                p = tp.partition
                if p not in held:
                    held[p] = wall(align.held_until(tp, self._buffered, waited))
                if held[p] is not None:
                    continue
            _, m, s = d[0]
            heap.append(((m.timestamp or 0.0, s) if align is not None else s, tp))
        heapq.heapify(heap)
        out: Taken = []
        q = self._q
        # Transactions also wait for the labels of every partition (Alignment.labels)
        labels = align.labels if align is not None else None
        floor, floor_until = math.inf, None
        txn_topic = labels_topic = ""
        lead = 0.0
        labels_tps: list[Any] = []
        remote: tuple[float, float | None] = (math.inf, None)
        if align is not None and labels is not None:
            txn_topic, labels_topic, lead = labels.txn_topic, labels.labels_topic, labels.lead_s
            labels_tps = list(labels.partitions())
            remote = align.remote_floor(now)
            floor, floor_until = _lower(self._local_floor(labels_tps, waited, wall), remote)
        stopped: set[int] = set()  # groups whose next transaction waits for a label
        while heap and len(out) < max_n:
            _, tp = heapq.heappop(heap)
            if align is not None and (held.get(tp.partition) is not None or tp.partition in stopped):
                continue  # a member of its group ran dry while it still had messages to fetch
            d = q[tp]
            if labels is not None and tp.topic == txn_topic and (d[0][1].timestamp or 0.0) - lead >= floor:
                stopped.add(tp.partition)  # a label it may use is still to be taken
                continue
            r, m, _s = d.popleft()
            out.append((r, m))
            if labels is not None:
                ts = m.timestamp or 0.0
                if ts > self._stream_ts:
                    self._stream_ts = ts
                if tp.topic == labels_topic:
                    self._label_last[tp] = ts
                    if align is not None and (ts <= floor or not d):
                        floor, floor_until = _lower(self._local_floor(labels_tps, waited, wall), remote)
            if d:
                _, m2, s2 = d[0]
                heapq.heappush(heap, ((m2.timestamp or 0.0, s2) if align is not None else s2, tp))
            elif align is not None:
                until = wall(align.held_until(tp, self._buffered, waited))
                if until is not None:
                    held[tp.partition] = until
        self._n -= len(out)
        if self._n < self.high_water:
            self._room.set()
        if self._held and self._tp_limit is not None:
            low = self._tp_limit // 2
            for tp in [tp for tp in self._held if len(q.get(tp, ())) <= low]:
                self._unhold(tp)
        waits = [t for t in held.values() if t is not None]
        if floor_until is not None:
            waits.append(floor_until)
        return out, (min(waits) if waits and not out else None)

    def _local_floor(
        self, labels_tps: list[Any], waited: float, wall: Callable[[float | None], float | None]
    ) -> tuple[float, float | None]:
        assert self.align is not None
        floor, until = self.align.label_floor(labels_tps, self._head_ts, self._label_last, waited)
        return floor, wall(until)


def _lower(a: tuple[float, float | None], b: tuple[float, float | None]) -> tuple[float, float | None]:
    """The lower of two (floor, wait expiry) pairs; the earlier expiry of those that wait."""
    untils = [u for u in (a[1], b[1]) if u is not None]
    return min(a[0], b[0]), (min(untils) if untils else None)
