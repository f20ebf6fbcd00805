"""``BatchingConsumer.uncommitted`` on a real aiokafka consumer and broker: what the worker
reports as ``riskstream_consumer_uncommitted`` every 5 s (``RiskstreamInputStuck`` reads it).

A partition with nothing committed counts from its log start, where a group with
``auto_offset_reset`` earliest starts reading; before session 29 it was not reported at all, so a
group stuck before its first commit showed nothing. The log end is the last fetch's high-water
mark, or the broker's answer for a partition not fetched yet. After a producer's Kafka
transaction, the marker that ends it is no message: once fetched past, it counts 0.
"""

from __future__ import annotations

import asyncio
import types
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from harness import ConsumerThread

from streams.broker.topics import ensure_topics
from streams.intake import BatchingConsumer


def counter(consumer: AIOKafkaConsumer, topic: str) -> Any:
    """The parts of a :class:`BatchingConsumer` that ``uncommitted`` touches."""
    app = types.SimpleNamespace(input_buffers={topic: None})
    owner = types.SimpleNamespace(_thread=ConsumerThread(consumer), handed_out={}, app=app)
    for name in ("uncommitted", "committed_offsets"):
        setattr(owner, name, types.MethodType(getattr(BatchingConsumer, name), owner))
    return owner


def test_uncommitted_counts_from_the_committed_offset_or_else_the_log_start(kafka_broker: str) -> None:
    topic, other = f"uncommitted-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    tps = [TopicPartition(topic, p) for p in range(4)]
    expected = {
        (topic, 0): 6 - 4,  # 6 records, committed at 4
        (topic, 1): 5 - 2,  # 5 records, nothing committed, the first 2 deleted (log start 2)
        (topic, 2): 0,  # empty, nothing committed
        (topic, 3): 0,  # a transaction of 2 records, committed at 2 once handed out: its marker follows
    }

    async def main() -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        await ensure_topics(kafka_broker, {topic: 4, other: 1})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
        await producer.start()
        try:
            for p, n in ((0, 6), (1, 5)):
                for i in range(n):
                    await producer.send_and_wait(topic, b"m%d" % i, partition=p)
            await producer.send_and_wait(other, b"x", partition=0)
        finally:
            await producer.stop()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker, transactional_id=f"tx-{topic}")
        await producer.start()
        try:
            async with producer.transaction():
                for i in range(2):
                    await producer.send_and_wait(topic, b"t%d" % i, partition=3)
        finally:
            await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker)
        await admin.start()
        try:
            assert await admin.delete_records({tps[1]: RecordsToDelete(2)}) == {tps[1]: 2}
        finally:
            await admin.close()
        group = f"g-{topic}"
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_broker,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # the worker's (aiokafka's default is latest)
        )
        await consumer.start()
        try:
            consumer.assign([*tps, TopicPartition(other, 0)])
            consumer.pause(*tps)  # not fetched: no high-water mark known yet
            await consumer.commit({tps[0]: 4})
            owner = counter(consumer, topic)
            assert all(consumer.highwater(tp) is None for tp in tps)
            before = await owner.uncommitted([topic])  # log ends from the broker
            consumer.resume(*tps)
            fetched: set[int] = set()
            deadline = asyncio.get_running_loop().time() + 20
            while fetched != {0, 1, 3} and asyncio.get_running_loop().time() < deadline:
                records = await consumer.getmany(*tps, timeout_ms=200)
                fetched |= {tp.partition for tp in records}
                # what BatchingConsumer._drain_messages records of every record handed out
                owner.handed_out.update({tp: batch[-1].offset for tp, batch in records.items()})
            while await consumer.position(tps[3]) < 3 and asyncio.get_running_loop().time() < deadline:
                await consumer.getmany(tps[3], timeout_ms=200)  # past the marker
            assert owner.handed_out == {tps[0]: 5, tps[1]: 4, tps[3]: 1}
            await consumer.commit({tps[3]: 2})  # as the worker does once both are scored
            assert [consumer.highwater(tp) for tp in tps] == [6, 5, 0, 3]
            return before, await owner.uncommitted([topic])  # the fetches' high-water marks
        finally:
            await consumer.stop()

    before, after = asyncio.run(asyncio.wait_for(main(), 60))
    # nothing committed on partition 3 yet: its 2 records and the marker, not fetched yet
    assert before == {**expected, (topic, 3): 3}
    assert after == expected
