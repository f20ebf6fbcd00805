"""InputBuffer with event-time alignment: co-partitioned input topics are taken in timestamp
order, a lagging partition holds its group back for at most the idle bound, and a partition
with a batch buffered is held back from fetching."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.input_buffer import Alignment, InputBuffer, LabelRule

TOPICS = ("tx", "clicks", "labels")


class TP(NamedTuple):
    topic: str
    partition: int


class Msg(NamedTuple):
    tp: TP
    offset: int
    timestamp: float


def put_all(buf: InputBuffer, tp: TP, stamps: list[float], start: int = 0) -> None:
    for i, ts in enumerate(stamps):
        buf.put(Msg(tp, start + i, ts))


def aligned(lagging: set[TP] | None = None, max_idle_s: float = 5.0, **kw: Any) -> InputBuffer:
    lag = lagging if lagging is not None else set()
    return InputBuffer(100_000, align=Alignment(TOPICS, lambda tp: tp in lag, max_idle_s), **kw)


def stamps(taken: list[tuple[float, Any]]) -> list[float]:
    return [m.timestamp for _, m in taken]


def test_without_alignment_messages_come_in_arrival_order() -> None:
    async def go() -> list[float]:
        buf = InputBuffer(100)
        put_all(buf, TP("tx", 0), [5, 6])
        put_all(buf, TP("clicks", 0), [1, 2])
        return stamps(await buf.take(10, 0.0))

    assert asyncio.run(go()) == [5, 6, 1, 2]


def test_aligned_take_merges_co_partitioned_topics_by_timestamp() -> None:
    async def go() -> list[float]:
        buf = aligned()
        put_all(buf, TP("tx", 0), [5, 6, 7])  # the fetcher handed out the transactions first
        put_all(buf, TP("clicks", 0), [1, 2, 8])
        put_all(buf, TP("labels", 0), [3])
        return stamps(await buf.take(10, 0.0))

    assert asyncio.run(go()) == [1, 2, 3, 5, 6, 7, 8]


def test_a_lagging_partition_with_nothing_buffered_holds_its_group_back() -> None:
    lag = {TP("clicks", 0)}

    async def go() -> tuple[list[float], float]:
        buf = aligned(lag)
        put_all(buf, TP("tx", 0), [5, 6])
        loop = asyncio.get_running_loop()

        def clicks_arrive() -> None:
            put_all(buf, TP("clicks", 0), [1, 2])
            lag.clear()  # the partition's end reached

        loop.call_later(0.1, clicks_arrive)
        t0 = time.monotonic()
        got = await buf.take(10, 0.0)
        return stamps(got), time.monotonic() - t0

    got, waited = asyncio.run(asyncio.wait_for(go(), 5))
    assert got == [1, 2, 5, 6]  # the clicks that came first in event time, first
    assert waited >= 0.09


def test_the_wait_for_a_lagging_partition_is_bounded() -> None:
    async def go() -> tuple[list[float], float]:
        buf = aligned({TP("clicks", 0)}, max_idle_s=0.2)
        put_all(buf, TP("tx", 0), [5, 6])
        t0 = time.monotonic()
        got = await buf.take(10, 0.0)
        return stamps(got), time.monotonic() - t0

    got, waited = asyncio.run(asyncio.wait_for(go(), 5))
    assert got == [5, 6]
    assert 0.18 <= waited < 2.0


def test_a_wait_that_runs_out_is_reported_once() -> None:
    expired: list[str] = []
    lag = {TP("clicks", 0)}

    async def go() -> list[float]:
        buf = InputBuffer(
            100_000, align=Alignment(TOPICS, lambda tp: tp in lag, 0.1, on_expired=expired.append)
        )
        put_all(buf, TP("tx", 0), [5])
        got = stamps(await buf.take(10, 0.0))  # ran out: the group went on
        put_all(buf, TP("tx", 0), [6])
        got += stamps(await buf.take(10, 0.0))  # the same wait, still out: not counted again
        put_all(buf, TP("clicks", 0), [7])  # the partition delivered: that wait is over
        got += stamps(await buf.take(10, 0.0))
        put_all(buf, TP("tx", 0), [8])
        got += stamps(await buf.take(10, 0.0))  # a new wait, which runs out too
        return got

    assert asyncio.run(asyncio.wait_for(go(), 5)) == [5, 6, 7, 8]
    assert expired == ["group", "group"]


def test_time_spent_outside_take_does_not_run_the_idle_bound() -> None:
    """The fetcher shares the event loop with the scoring: while the worker scores the batch it
    took, a lagging partition cannot be filled, so that time must not expire its group's wait."""
    skew = [0.0]  # the scoring of each batch, as a jump of the clock between takes

    async def go() -> tuple[list[list[tuple[int, float]]], float]:
        buf = InputBuffer(
            100_000,
            clock=lambda: time.monotonic() + skew[0],
            align=Alignment(TOPICS, lambda tp: tp == TP("clicks", 0), 0.2),
        )
        put_all(buf, TP("tx", 0), [5])  # partition 0's clicks are still to come
        put_all(buf, TP("tx", 1), [10, 11, 12])
        got = []
        for _ in range(3):
            got.append([(m.tp.partition, m.timestamp) for _, m in await buf.take(1, 0.0)])
            skew[0] += 1.0  # a second of scoring, five times the bound
        t0 = time.monotonic()
        got.append([(m.tp.partition, m.timestamp) for _, m in await buf.take(1, 0.0)])
        return got, time.monotonic() - t0

    got, waited = asyncio.run(asyncio.wait_for(go(), 5))
    # partition 0 waits through three seconds of scoring; once nothing else is left, the buffer
    # waits the bound itself and then lets it go on
    assert got == [[(1, 10)], [(1, 11)], [(1, 12)], [(0, 5)]]
    assert 0.18 <= waited < 2.0


def test_groups_do_not_wait_for_each_other() -> None:
    async def go() -> tuple[list[Any], int]:
        buf = aligned({TP("clicks", 0)})  # partition 0's clicks still to come
        put_all(buf, TP("tx", 0), [1, 2])
        put_all(buf, TP("tx", 1), [3, 4])
        got = await asyncio.wait_for(buf.take(10, 0.0), 1.0)
        return [(m.tp.partition, m.timestamp) for _, m in got], len(buf)

    got, left = asyncio.run(go())
    assert got == [(1, 3), (1, 4)]  # partition 1 went on; partition 0 waits
    assert left == 2


def test_a_partition_that_runs_dry_mid_batch_stops_its_group_there() -> None:
    async def go() -> tuple[list[float], list[float]]:
        buf = aligned({TP("clicks", 0)}, max_idle_s=0.15)  # more clicks in Kafka than buffered
        put_all(buf, TP("tx", 0), [1, 3, 5])
        put_all(buf, TP("clicks", 0), [2])
        first = await buf.take(10, 0.0)
        rest = await buf.take(10, 0.0)  # after the bounded wait
        return stamps(first), stamps(rest)

    first, rest = asyncio.run(asyncio.wait_for(go(), 5))
    # after click 2 the clicks partition is empty but not at its end: a click before 3 may come
    assert first == [1, 2]
    assert rest == [3, 5]


def test_a_partition_with_a_batch_buffered_is_held_back_until_half_of_it_is_taken() -> None:
    calls: list[tuple[str, TP]] = []
    a = TP("tx", 0)

    async def go() -> None:
        buf = aligned(
            tp_limit=4,
            hold=lambda tp: calls.append(("hold", tp)),
            release=lambda tp: calls.append(("go", tp)),
        )
        put_all(buf, a, [1, 2, 3])
        assert calls == []
        put_all(buf, a, [4], start=3)
        assert calls == [("hold", a)]
        await buf.take(1, 0.0)  # 3 left: more than half
        assert calls == [("hold", a)]
        await buf.take(1, 0.0)  # 2 left
        assert calls == [("hold", a), ("go", a)]
        put_all(buf, a, [5, 6], start=4)
        buf.discard({a})  # a seek: the held partition is let go
        assert calls[-2:] == [("hold", a), ("go", a)]

    asyncio.run(go())


def test_a_full_buffer_waiting_for_a_lagging_partition_lets_the_fetcher_fetch_it() -> None:
    # The fetcher stops while the buffer is at its high-water mark (streams/intake.py). When all
    # of it waits for a partition with nothing buffered, only a fetch can end the wait: stopping
    # the fetcher ran every such wait out (a worker's first seconds on a backlog, session 17).
    lag = {TP("clicks", 0)}

    async def go() -> tuple[list[float], float]:
        buf = InputBuffer(4, align=Alignment(TOPICS, lambda tp: tp in lag, 2.0))
        put_all(buf, TP("tx", 0), [5, 6, 7, 8])
        assert buf.full()

        async def fetcher() -> None:  # the intake loop: no fetch while the buffer is full
            while buf.full():
                await buf.wait_for_room()
            put_all(buf, TP("clicks", 0), [1, 2])
            lag.clear()

        t0 = time.monotonic()
        fetch = asyncio.ensure_future(fetcher())
        got = await buf.take(10, 0.0)
        await fetch
        return stamps(got), time.monotonic() - t0

    got, took = asyncio.run(go())
    assert got == [1, 2, 5, 6, 7, 8]
    assert took < 1.0  # the fetch came at once, not after the 2-s bound


def test_the_partitions_a_wait_is_for_are_named_until_they_deliver() -> None:
    # The consumer hands out their fetched records first (BatchingConsumer._getmany).
    lag = {TP("clicks", 0), TP("labels", 1)}

    async def go() -> None:
        buf = aligned(lag)
        assert buf.awaited() == []  # no wait yet
        put_all(buf, TP("tx", 0), [5])
        put_all(buf, TP("tx", 1), [6])
        task = asyncio.ensure_future(buf.take(10, 0.0))
        await asyncio.sleep(0.05)
        assert sorted(buf.awaited()) == [TP("clicks", 0), TP("labels", 1)]
        put_all(buf, TP("clicks", 0), [1])  # delivered: no longer awaited, though lagging
        assert buf.awaited() == [TP("labels", 1)]
        lag.clear()  # both ends reached: nothing to fetch
        assert buf.awaited() == []
        assert stamps(await task) == [1, 5, 6]

    asyncio.run(asyncio.wait_for(go(), 5))


def test_after_a_seek_a_lagging_partition_is_waited_for_again() -> None:
    async def go() -> tuple[list[float], list[float], float]:
        buf = aligned({TP("clicks", 0)}, max_idle_s=0.15)
        put_all(buf, TP("tx", 0), [5])
        first = stamps(await buf.take(10, 0.0))  # waited out: the group goes on without clicks
        put_all(buf, TP("tx", 0), [6], start=1)
        second = stamps(await asyncio.wait_for(buf.take(10, 0.0), 0.1))  # no new wait
        buf.discard(None)  # a seek or a rebalance: the partitions are read again
        put_all(buf, TP("tx", 0), [5])
        t0 = time.monotonic()
        third = stamps(await buf.take(10, 0.0))
        return first + second, third, time.monotonic() - t0

    before, after, waited = asyncio.run(asyncio.wait_for(go(), 5))
    assert before == [5, 6] and after == [5]
    assert waited >= 0.13


# Messages as the fetcher hands them out: each partition's in offset order, partitions
# interleaved in any order; timestamps rise within a partition (the producers' clocks).
_puts = st.lists(
    st.tuples(st.sampled_from(TOPICS), st.integers(0, 1), st.integers(0, 5)), min_size=1, max_size=80
)


def _stamped(puts: list[tuple[str, int, int]]) -> list[Msg]:
    clock: dict[TP, float] = defaultdict(float)
    offsets: dict[TP, int] = defaultdict(int)
    out = []
    for topic, p, step in puts:
        tp = TP(topic, p)
        clock[tp] += step + 0.5 * TOPICS.index(topic) / 10  # no ties across topics
        out.append(Msg(tp, offsets[tp], clock[tp]))
        offsets[tp] += 1
    return out


@settings(max_examples=60, deadline=None)
@given(_puts, st.lists(st.integers(1, 7), min_size=1, max_size=20))
def test_everything_buffered_comes_out_once_in_timestamp_order_per_group(
    puts: list[tuple[str, int, int]], sizes: list[int]
) -> None:
    msgs = _stamped(puts)

    async def go() -> list[Msg]:
        buf = aligned()
        for m in msgs:
            buf.put(m)
        out: list[Msg] = []
        i = 0
        while len(buf):
            out += [m for _, m in await buf.take(sizes[i % len(sizes)], 0.0)]
            i += 1
        return out

    out = asyncio.run(go())
    assert sorted(out) == sorted(msgs)  # each once
    for p in (0, 1):
        group = [m.timestamp for m in out if m.tp.partition == p]
        assert group == sorted(group)


@settings(max_examples=60, deadline=None)
@given(_puts, st.lists(st.integers(0, 7), min_size=1, max_size=20))
def test_puts_between_takes_lose_nothing_and_keep_each_partitions_order(
    puts: list[tuple[str, int, int]], takes: list[int]
) -> None:
    msgs = _stamped(puts)

    async def go() -> list[Msg]:
        buf = aligned()
        out: list[Msg] = []
        for i, m in enumerate(msgs):
            buf.put(m)
            n = takes[i % len(takes)]
            if n:
                out += [x for _, x in await buf.take(n, 0.0)]
        while len(buf):
            out += [x for _, x in await buf.take(5, 0.0)]
        return out

    out = asyncio.run(go())
    assert sorted(out) == sorted(msgs)
    for tp in {m.tp for m in msgs}:
        offs = [m.offset for m in out if m.tp == tp]
        assert offs == sorted(offs)


LEAD = 5.0  # the label allowance, in seconds of Kafka time


def label_rule(lead: float = LEAD) -> LabelRule:
    return LabelRule("tx", "labels", lead, lambda: [TP("labels", 0), TP("labels", 1)])


def with_labels(lagging: set[TP], max_idle_s: float = 5.0) -> InputBuffer:
    return InputBuffer(
        100_000, align=Alignment(TOPICS, lambda tp: tp in lagging, max_idle_s, labels=label_rule())
    )


def test_a_transaction_waits_for_older_labels_of_other_partitions() -> None:
    async def go() -> tuple[list[Any], list[Any], list[Any]]:
        lagging = {TP("labels", 1)}  # partition 1's labels: more in Kafka, none buffered
        buf = with_labels(lagging, max_idle_s=30.0)
        put_all(buf, TP("tx", 0), [20.0])
        put_all(buf, TP("tx", 1), [3.0])  # a transaction of the lagging group itself
        put_all(buf, TP("labels", 0), [1.0])
        put_all(buf, TP("clicks", 0), [21.0])
        first = await asyncio.wait_for(buf.take(10, 0.0), 1.0)
        # partition 1's label at 14 <= 20 - LEAD counts for the transaction at 20
        put_all(buf, TP("labels", 1), [14.0, 16.0])
        lagging.clear()
        second = await asyncio.wait_for(buf.take(10, 0.0), 1.0)
        return [(m.tp, m.timestamp) for _, m in first], [(m.tp, m.timestamp) for _, m in second], []

    first, second, _ = asyncio.run(go())
    # its own group's label goes; the transactions wait (tx 1 waits for its group as before)
    assert first == [(TP("labels", 0), 1.0)]
    assert second == [
        (TP("tx", 1), 3.0),
        (TP("labels", 1), 14.0),
        (TP("labels", 1), 16.0),
        (TP("tx", 0), 20.0),
        (TP("clicks", 0), 21.0),
    ]


def test_labels_newer_than_the_lead_do_not_hold_a_transaction() -> None:
    async def go() -> list[Any]:
        buf = with_labels({TP("labels", 1)})
        put_all(buf, TP("labels", 1), [16.0])  # buffered, and after 20 - LEAD: cannot count
        put_all(buf, TP("tx", 0), [20.0])
        return [(m.tp, m.timestamp) for _, m in await asyncio.wait_for(buf.take(10, 0.0), 1.0)]

    # the label at 16 goes first (timestamp order); its partition then has nothing buffered and
    # more to fetch, but what comes next is later than 16, after 20 - LEAD: the transaction goes
    assert asyncio.run(go()) == [(TP("labels", 1), 16.0), (TP("tx", 0), 20.0)]


def test_the_wait_for_another_partitions_labels_is_bounded() -> None:
    async def go() -> tuple[list[float], float]:
        buf = with_labels({TP("labels", 1)}, max_idle_s=0.15)
        put_all(buf, TP("tx", 1), [2.0])  # partition 1 is known, its labels never come
        put_all(buf, TP("tx", 0), [20.0])
        t0 = time.monotonic()
        got: list[float] = []
        while len(got) < 2:
            got += stamps(await asyncio.wait_for(buf.take(10, 0.0), 2.0))
        return got, time.monotonic() - t0

    got, waited = asyncio.run(go())
    assert sorted(got) == [2.0, 20.0] and waited >= 0.14


@settings(max_examples=80, deadline=None)
@given(_puts, st.lists(st.integers(0, 7), min_size=1, max_size=20))
def test_no_transaction_is_taken_before_a_label_it_may_use(
    puts: list[tuple[str, int, int]], takes: list[int]
) -> None:
    """Partitions whose messages are not all put yet are lagging (the fetcher's view); the idle
    bound never expires here. Whenever a transaction is taken, every label at or before its
    timestamp minus the lead, of any partition, was taken before it."""
    msgs = _stamped(puts)
    lead = 1.0

    async def go() -> list[Msg]:
        remaining = defaultdict(int)
        for m in msgs:
            remaining[m.tp] += 1
        lagging = {tp for tp, n in remaining.items() if n}
        buf = InputBuffer(
            100_000, align=Alignment(TOPICS, lagging.__contains__, 60.0, labels=label_rule(lead))
        )
        out: list[Msg] = []

        async def take(n: int) -> None:
            with contextlib.suppress(TimeoutError):  # everything buffered waits for a lagging partition
                out.extend(m for _, m in await asyncio.wait_for(buf.take(n, 0.0), 0.005))

        for i, m in enumerate(msgs):
            buf.put(m)
            remaining[m.tp] -= 1
            if not remaining[m.tp]:
                lagging.discard(m.tp)
            if takes[i % len(takes)]:
                await take(takes[i % len(takes)])
        while len(buf):
            await take(5)
        return out

    out = asyncio.run(go())
    assert sorted(out) == sorted(msgs)
    for i, m in enumerate(out):
        if m.tp.topic == "tx":
            before = {id(x) for x in out[:i]}
            assert all(
                id(lb) in before
                for lb in msgs
                if lb.tp.topic == "labels" and lb.timestamp <= m.timestamp - lead
            )


def test_a_batch_closes_once_its_oldest_message_is_max_age_old() -> None:
    """``max_age_s`` bounds the wait by the oldest message's Kafka timestamp (seconds since the
    epoch, as Faust's messages carry it, read against ``wall``): a message that arrived 80 ms
    after it was stamped waits 20 ms, not the full ``max_wait_s``; a fresh one waits 100 ms."""
    wall = [1_764_720_000.0]  # frozen: only the monotonic clock moves

    async def go(age_at_receipt_s: float, max_age_s: float) -> float:
        buf = InputBuffer(100, wall=lambda: wall[0])
        buf.put(Msg(TP("tx", 0), 0, wall[0] - age_at_receipt_s))
        t0 = time.monotonic()
        got = await buf.take(10, 0.5, max_age_s)
        assert len(got) == 1
        return time.monotonic() - t0

    late = asyncio.run(asyncio.wait_for(go(0.08, 0.1), 5))
    fresh = asyncio.run(asyncio.wait_for(go(0.0, 0.1), 5))
    older_than_the_bound = asyncio.run(asyncio.wait_for(go(0.3, 0.1), 5))
    off = asyncio.run(asyncio.wait_for(go(0.3, 0.0), 5))
    assert 0.01 <= late < 0.06
    assert 0.08 <= fresh < 0.3  # 100 ms after its stamp, which is when it arrived
    assert older_than_the_bound < 0.01
    assert 0.45 <= off < 2.0  # max_age_s 0: the full max_wait_s


def test_messages_without_a_timestamp_wait_max_wait() -> None:
    async def go() -> float:
        buf = InputBuffer(100)
        buf.put(Msg(TP("tx", 0), 0, 0.0))
        t0 = time.monotonic()
        await buf.take(10, 0.2, 0.01)
        return time.monotonic() - t0

    assert 0.18 <= asyncio.run(asyncio.wait_for(go(), 5)) < 1.5


def test_the_age_bound_reads_faust_messages_timestamps() -> None:
    """The bound reads the messages the worker buffers, Faust's ``ConsumerMessage``, built by
    Faust's own consumer from an aiokafka record stamped in ms (its timestamp is then seconds):
    a record stamped 80 ms before it is buffered is taken about 220 ms later with a 300 ms bound:
    not at once (a timestamp read as ms would be decades old) and not after ``max_wait_s``."""
    from types import SimpleNamespace

    from aiokafka.structs import ConsumerRecord
    from faust.transport.drivers.aiokafka import Consumer

    async def go() -> float:
        stamp_ms = int((time.time() - 0.08) * 1000)
        record = ConsumerRecord("tx", 0, 5, stamp_ms, 0, b"k", b"v", None, 1, 1, [])
        faust_self = SimpleNamespace(app=SimpleNamespace(consumer_generation_id=1))
        message = Consumer._to_message(faust_self, TP("tx", 0), record)  # type: ignore[arg-type]
        buf = InputBuffer(100)
        buf.put(message)
        t0 = time.monotonic()
        got = await buf.take(10, 2.0, 0.3)
        assert [m.offset for _, m in got] == [5]
        return time.monotonic() - t0

    assert 0.1 <= asyncio.run(asyncio.wait_for(go(), 5)) < 1.0
