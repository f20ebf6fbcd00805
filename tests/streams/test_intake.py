"""InputBuffer (micro-batch hand-off from the consumer), DeliveryCursors (which fetched message is
delivered after seeks and rebalances) and InOrderAcks (ack order vs delivery)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.batch_loop import InOrderAcks
from streams.intake import DELIVER, GAP, RESEEK, SKIP, DeliveryCursors, InputBuffer


class TP(NamedTuple):
    topic: str
    partition: int


class Msg(NamedTuple):
    tp: TP
    offset: int


def msgs(tp: TP, n: int, start: int = 0) -> list[Msg]:
    return [Msg(tp, start + i) for i in range(n)]


A, B = TP("tx", 0), TP("tx", 1)


def test_take_returns_a_full_batch_at_once_and_keeps_order() -> None:
    async def go() -> list[list[int]]:
        buf = InputBuffer(high_water=100)
        for m in msgs(A, 10):
            buf.put(m)
        first = await buf.take(4, max_wait_s=60.0)  # full batch: no waiting for the deadline
        second = await buf.take(100, max_wait_s=0.0)
        return [[m.offset for _, m in first], [m.offset for _, m in second]]

    assert asyncio.run(asyncio.wait_for(go(), 5)) == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]


def test_take_waits_for_more_until_max_wait_after_the_first_message() -> None:
    async def go() -> tuple[list[int], float]:
        buf = InputBuffer(high_water=100)
        buf.put(Msg(A, 0))
        t0 = time.monotonic()

        async def later() -> None:
            await asyncio.sleep(0.05)
            buf.put(Msg(A, 1))

        task = asyncio.ensure_future(later())
        got = await buf.take(10, max_wait_s=0.3)
        await task
        return [m.offset for _, m in got], time.monotonic() - t0

    offsets, waited = asyncio.run(go())
    assert offsets == [0, 1]  # the late message joined the batch
    assert waited >= 0.25  # and the batch was held until the first message's deadline


def test_take_sleeps_until_something_arrives() -> None:
    async def go() -> list[int]:
        buf = InputBuffer(high_water=100)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, buf.put, Msg(B, 7))
        got = await buf.take(10, max_wait_s=0.0)
        return [m.offset for _, m in got]

    assert asyncio.run(asyncio.wait_for(go(), 5)) == [7]


def test_high_water_mark_and_room() -> None:
    async def go() -> None:
        buf = InputBuffer(high_water=3)
        for m in msgs(A, 3):
            buf.put(m)
        assert buf.full()
        waiter = asyncio.ensure_future(buf.wait_for_room())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await buf.take(2, max_wait_s=0.0)
        await asyncio.wait_for(waiter, 1)
        assert not buf.full()

    asyncio.run(go())


def test_discard_drops_only_the_sought_partitions_in_place() -> None:
    async def go() -> list[int]:
        buf = InputBuffer(high_water=100)
        buf.put(Msg(A, 0))
        taker = asyncio.ensure_future(buf.take(3, max_wait_s=0.3))  # holds the deque, waiting
        await asyncio.sleep(0.01)
        buf.put(Msg(B, 5))
        buf.discard({A})
        buf.put(Msg(B, 6))
        got = await taker
        return [m.offset for _, m in got]

    assert asyncio.run(go()) == [5, 6]
    buf = InputBuffer(high_water=2)
    for m in msgs(A, 3):
        buf.put(m)
    buf.discard(None)
    assert len(buf) == 0 and not buf.full()


def test_acks_follow_take_order_whatever_the_delivery_order() -> None:
    async def go() -> tuple[list[int], list[Any]]:
        loop = asyncio.get_running_loop()
        acked: list[int] = []
        failures: list[Any] = []
        acks = InOrderAcks(lambda m: acked.append(m.offset), lambda e, ms: failures.append((e, ms)))
        f1, f2 = loop.create_future(), loop.create_future()
        acks.add([f1], msgs(A, 2, 0))
        acks.add([f2], msgs(A, 2, 2))
        acks.add([], msgs(A, 1, 4))  # nothing to deliver: waits for the older batches all the same
        f2.set_result(None)  # the later batch is delivered first
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert acked == []  # ... and must not be acked before the earlier one
        f1.set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return acked, failures

    acked, failures = asyncio.run(go())
    assert acked == [0, 1, 2, 3, 4]
    assert failures == []


def test_a_failed_delivery_stops_acking_and_reports_the_batch() -> None:
    async def go() -> tuple[list[int], list[Any], int]:
        loop = asyncio.get_running_loop()
        acked: list[int] = []
        failures: list[Any] = []
        acks = InOrderAcks(lambda m: acked.append(m.offset), lambda e, ms: failures.append((e, ms)))
        f1, f2, f3 = loop.create_future(), loop.create_future(), loop.create_future()
        acks.add([f1], msgs(A, 1, 0))
        acks.add([f2], msgs(A, 1, 1))
        acks.add([f3], msgs(A, 1, 2))
        f1.set_result(None)
        f2.set_exception(RuntimeError("broker said no"))
        f3.set_result(None)
        for _ in range(4):
            await asyncio.sleep(0)
        return acked, failures, len(acks)

    acked, failures, pending = asyncio.run(go())
    assert acked == [0]  # nothing at or after the failed batch is acked
    assert len(failures) == 1
    exc, batch = failures[0]
    assert isinstance(exc, RuntimeError) and [m.offset for m in batch] == [1]
    assert pending == 2


@pytest.mark.parametrize("n", [1, 5])
def test_take_never_returns_more_than_asked(n: int) -> None:
    async def go() -> list[int]:
        buf = InputBuffer(high_water=100)
        for m in msgs(A, 12):
            buf.put(m)
        sizes = []
        while len(buf):
            sizes.append(len(await buf.take(n, max_wait_s=0.0)))
        return sizes

    sizes = asyncio.run(go())
    assert sum(sizes) == 12 and max(sizes) <= n


def test_cursor_without_a_seek_takes_the_first_message_then_only_the_next_offset() -> None:
    # A group's first run: nothing committed, nothing sought; delivery starts wherever the fetch
    # position is and then goes on without holes.
    c = DeliveryCursors()
    assert c.decide(A, 500, 1, 1) == (DELIVER, 500)
    assert c.decide(A, 501, 1, 1) == (DELIVER, 501)
    assert c.decide(A, 501, 1, 2)[0] == SKIP  # a copy
    assert c.next_offset(A, 1) == 502
    assert c.decide(B, 7, 1, 2) == (DELIVER, 7)  # partitions are independent


def test_cursor_after_a_seek_drops_older_copies_and_asks_once_to_seek_back_for_newer_ones() -> None:
    c = DeliveryCursors()
    for off in range(20):
        c.decide(A, off, 1, 1)
    c.expect(A, 10, 1)  # Faust seeks back to the committed offset
    assert c.decide(A, 20, 1, 2) == (RESEEK, 10)  # from a fetch begun before the seek
    assert c.decide(A, 21, 1, 2) == (SKIP, 10)  # rest of that fetch
    assert c.decide(A, 5, 1, 3) == (SKIP, 10)
    assert [c.decide(A, off, 1, 3)[0] for off in (10, 11, 12)] == [DELIVER] * 3
    assert c.next_offset(A, 1) == 13


def test_cursor_takes_a_hole_as_a_gap_only_when_a_later_fetch_starts_beyond_it_again() -> None:
    c = DeliveryCursors()
    c.expect(A, 10, 1)
    assert c.decide(A, 12, 1, 1) == (RESEEK, 10)
    assert c.decide(A, 12, 1, 1) == (SKIP, 10)  # same fetch: still the old position
    assert c.decide(A, 12, 1, 2) == (GAP, 10)  # fetched again from 10, starts at 12: not in the log
    assert c.decide(A, 13, 1, 2) == (DELIVER, 13)
    # A new hole asks for a new seek back before it is believed.
    assert c.decide(A, 16, 1, 3) == (RESEEK, 14)


def test_cursor_of_an_earlier_generation_does_not_hold_back_a_new_assignment() -> None:
    c = DeliveryCursors()
    c.expect(A, 900, 1)
    # The partition went to another worker and came back (generation 3) with no seek yet.
    assert c.decide(A, 300, 3, 1) == (DELIVER, 300)
    c.expect(A, 950, 3)
    assert c.decide(A, 301, 3, 2) == (SKIP, 950)


@given(st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=200))
def test_cursor_never_delivers_an_offset_twice_or_skips_one_it_was_shown(seeks: list[int]) -> None:
    # Fetches replay the log from the positions a seek or a reseek set; whatever the seeks, the
    # delivered offsets since the last seek are consecutive from it.
    c = DeliveryCursors()
    log = list(range(80))
    position, fetch_no = 0, 0
    for target in seeks:
        c.expect(A, target, 1)
        since: list[int] = []
        for _ in range(4):  # a few fetches of 5 records from the current position
            fetch_no += 1
            for off in log[position : position + 5]:
                action, nxt = c.decide(A, off, 1, fetch_no)
                if action is RESEEK:
                    position = nxt
                    break
                if action is DELIVER:
                    since.append(off)
                assert action is not GAP  # the log has no holes
            else:
                position += 5
        assert since == list(range(target, target + len(since)))


def test_the_consumer_fetches_with_the_apps_fetch_settings_not_faust_fixed_ones() -> None:
    from streams.intake import BatchingApp, BatchingConsumerThread

    async def main() -> tuple[str, int, int]:
        app = BatchingApp("fetch-settings-test", broker="kafka://127.0.0.1:1", fetch_settings=(12_345, 7))
        thread = app.consumer._thread
        consumer = thread._create_worker_consumer(app.transport)  # not started: no connection
        try:
            return type(thread).__name__, consumer._fetch_min_bytes, consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()
            thread.thread_loop.close()  # the consumer thread's own loop, never started here

    assert asyncio.run(main()) == (BatchingConsumerThread.__name__, 12_345, 7)
