"""``BatchingConsumer.perform_seek`` on a real aiokafka consumer and broker, while the fetcher
keeps handing records out: what a worker does after every partition assignment.

Session 28 found the cause of a rare CI failure (a restarted worker logged "Worker ready" and
scored nothing; `tests/integration/test_unreadable_state.py` in session 27, `test_big_state.py`
in session 21). The seek went through aiokafka's ``seek_to_committed``, which awaits each
partition's committed offset in turn and seeks it before reading the next. The fetcher ran in
those awaits and handed a sought partition's records out again; the delivery rule skipped them
(delivered already), and the buffer discard after the seek dropped the first copies, with the
position past both. The events waited for the partition's next record, and the test sent none.

Here the partition's records were handed out before the seek, as when a test's input is in
Kafka before the group join, and each committed-offset read is slowed so that the fetcher
certainly runs between them. Whatever the interleaving, the buffer must end up holding every
record from the committed offset on, once.
"""

from __future__ import annotations

import asyncio
import types
import uuid
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from harness import ConsumerThread

from streams.broker.topics import ensure_topics
from streams.intake import DELIVER, GAP, RESEEK, BatchingConsumer, DeliveryCursors, InputBuffer

GENERATION = 3
PARTITIONS = 4
COMMITTED = 4  # of the 6 records in each partition


class Message(NamedTuple):  # what the buffer reads of Faust's ConsumerMessage
    tp: Any
    offset: int
    timestamp: float


def seeker(consumer: AIOKafkaConsumer, topic: str, buffer: InputBuffer) -> Any:
    """The parts of a :class:`BatchingConsumer` that ``perform_seek`` touches."""
    owner = types.SimpleNamespace(
        _thread=ConsumerThread(consumer),
        cursors=DeliveryCursors(),
        _read_offset={},
        _committed_offset={},
        app=types.SimpleNamespace(consumer_generation_id=GENERATION, input_buffers={topic: buffer}),
    )
    methods = ("perform_seek", "committed_offsets", "log_starts", "_expect", "_discard_buffered", "_buffers")
    for name in methods:
        setattr(owner, name, types.MethodType(getattr(BatchingConsumer, name), owner))
    return owner


async def deliver(consumer: AIOKafkaConsumer, owner: Any, buffer: InputBuffer, stop: asyncio.Event) -> None:
    """``BatchingConsumer._drain_messages``'s delivery rule for a batch topic."""
    fetch_no = 0
    while not stop.is_set():
        fetch_no += 1
        records = await consumer.getmany(timeout_ms=20)
        for tp, batch in records.items():
            for r in batch:
                action, nxt = owner.cursors.decide(tp, r.offset, GENERATION, fetch_no)
                if action is RESEEK:
                    consumer.seek(tp, nxt)
                elif action in (DELIVER, GAP):
                    buffer.put(Message(tp, r.offset, r.timestamp / 1000.0))


async def _six_records_each(kafka_broker: str, topic: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """``topic`` with 6 records in each of its partitions, and a started consumer of group
    ``g-<topic>`` (nothing committed) assigned all of them, fetching as the worker does."""
    await ensure_topics(kafka_broker, {topic: PARTITIONS})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
    await producer.start()
    try:
        for p in range(PARTITIONS):
            for i in range(6):
                await producer.send_and_wait(topic, b"m%d" % i, partition=p)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_broker,
        group_id=f"g-{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # the worker's
        fetch_max_wait_ms=10,  # the worker's
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    return consumer, tps


async def _collect(
    buffer: InputBuffer,
    n: int,
    stop: asyncio.Event,
    fetcher: asyncio.Future[None],
    consumer: AIOKafkaConsumer,
) -> dict[int, list[int]]:
    """Wait until ``buffer`` holds ``n`` records (10 s at most), and half a second more, in
    which a copy too many would come; stop the delivery and the consumer; return the offsets
    the buffer holds, by partition."""
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while len(buffer) < n and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await fetcher
        await consumer.stop()
    held: dict[int, list[int]] = {}
    for _, m in await buffer.take(100, 0.0):
        held.setdefault(m.tp.partition, []).append(m.offset)
    return held


def test_records_handed_out_during_the_seek_are_fetched_again(kafka_broker: str) -> None:
    topic = f"seek-race-{uuid.uuid4().hex[:8]}"

    async def main() -> dict[int, list[int]]:
        consumer, tps = await _six_records_each(kafka_broker, topic)
        await consumer.commit(dict.fromkeys(tps, COMMITTED))
        for tp in tps:
            consumer.seek(tp, COMMITTED)  # where the fetcher starts after an assignment
        buffer = InputBuffer(high_water=1000)
        owner = seeker(consumer, topic, buffer)
        stop = asyncio.Event()
        fetcher = asyncio.ensure_future(deliver(consumer, owner, buffer, stop))
        try:
            # the fetcher hands out offsets 4 and 5 of each partition (from the committed
            # position), as it does between the assignment and Faust's seek
            while len(buffer) < 2 * PARTITIONS:
                await asyncio.sleep(0.02)
            read = consumer.committed

            async def slow_committed(tp: TopicPartition) -> int | None:
                offset = await read(tp)
                await asyncio.sleep(0.1)  # the fetcher runs here, as between two network reads
                return offset

            consumer.committed = slow_committed  # type: ignore[method-assign]
            await owner.perform_seek()
            consumer.committed = read  # type: ignore[method-assign]
        finally:
            held = await _collect(buffer, 2 * PARTITIONS, stop, fetcher, consumer)
        return held

    # every partition but the last one sought lost both records before the fix
    assert asyncio.run(asyncio.wait_for(main(), 60)) == {p: [4, 5] for p in range(PARTITIONS)}


def test_records_of_a_partition_with_nothing_committed_dropped_before_the_seek_are_fetched_again(
    kafka_broker: str,
) -> None:
    """Faust's ``getmany`` drops what is left of a fetch when the flow stops or the consumer
    generation changes in the middle of it, and all of a fetch that comes back while the flow
    is stopped; aiokafka's position is past those records by then. It relies on the seek to the
    committed offsets after the rebalance to fetch them again. A partition with nothing
    committed (all of its records arrived after its last owner's last commit, or none was made)
    used to be left where the fetcher had got to, so its dropped records never came again: a
    worker taking over such a labels partition from a killed one delivered none of its labels,
    and its group lag stayed at the partition's size (session 41; also, most likely, session
    40's user missing its fraud label, where later labels were committed past the lost ones).
    Here partitions 0 and 1 had their records handed out into the buffer before the seek, and
    partitions 2 and 3 had theirs fetched and dropped. After ``perform_seek`` the buffer must
    hold every record of every partition once."""
    topic = f"seek-uncommitted-{uuid.uuid4().hex[:8]}"

    async def main() -> dict[int, list[int]]:
        # nothing committed: the position starts at the log start
        consumer, tps = await _six_records_each(kafka_broker, topic)
        buffer = InputBuffer(high_water=1000)
        owner = seeker(consumer, topic, buffer)
        handed = dropped = 0
        deadline = asyncio.get_running_loop().time() + 20
        while handed + dropped < 6 * PARTITIONS:
            assert asyncio.get_running_loop().time() < deadline, (handed, dropped)
            for tp, batch in (await consumer.getmany(timeout_ms=100)).items():
                for r in batch:
                    if tp.partition < 2:
                        buffer.put(Message(tp, r.offset, r.timestamp / 1000.0))
                        handed += 1
                    else:
                        dropped += 1
        for tp in tps:  # fetched to the end: what was dropped lies behind the position
            assert await consumer.position(tp) == 6
        stop = asyncio.Event()
        await owner.perform_seek()
        fetcher = asyncio.ensure_future(deliver(consumer, owner, buffer, stop))
        return await _collect(buffer, 6 * PARTITIONS, stop, fetcher, consumer)

    assert asyncio.run(asyncio.wait_for(main(), 60)) == {p: list(range(6)) for p in range(PARTITIONS)}
