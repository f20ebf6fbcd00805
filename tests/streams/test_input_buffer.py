"""InputBuffer with event-time alignment: co-partitioned input topics are taken in timestamp
order, a lagging partition holds its group back for at most the idle bound, and a partition
with a batch buffered is held back from fetching."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.input_buffer import Alignment, InputBuffer

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
