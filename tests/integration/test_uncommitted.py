"""``BatchingConsumer.uncommitted`` on a real aiokafka consumer and broker: what the worker
reports as ``riskstream_consumer_uncommitted`` every 5 s (``RiskstreamInputStuck`` reads it).

A partition with nothing committed counts from its log start, where a group with
``auto_offset_reset`` earliest starts reading; before session 29 it was not reported at all, so a
group stuck before its first commit showed nothing. The log end is the last fetch's high-water
mark, or the broker's answer for a partition not fetched yet.
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


def counter(consumer: AIOKafkaConsumer) -> Any:
    """The parts of a :class:`BatchingConsumer` that ``uncommitted`` touches."""
    owner = types.SimpleNamespace(_thread=ConsumerThread(consumer))
    for name in ("uncommitted", "committed_offsets"):
        setattr(owner, name, types.MethodType(getattr(BatchingConsumer, name), owner))
    return owner


def test_uncommitted_counts_from_the_committed_offset_or_else_the_log_start(kafka_broker: str) -> None:
    topic, other = f"uncommitted-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    tps = [TopicPartition(topic, p) for p in range(3)]
    expected = {
        (topic, 0): 6 - 4,  # 6 records, committed at 4
        (topic, 1): 5 - 2,  # 5 records, nothing committed, the first 2 deleted (log start 2)
        (topic, 2): 0,  # empty, nothing committed
    }

    async def main() -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        await ensure_topics(kafka_broker, {topic: 3, other: 1})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
        await producer.start()
        try:
            for p, n in ((0, 6), (1, 5)):
                for i in range(n):
                    await producer.send_and_wait(topic, b"m%d" % i, partition=p)
            await producer.send_and_wait(other, b"x", partition=0)
        finally:
            await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker)
        await admin.start()
        try:
            assert await admin.delete_records({tps[1]: RecordsToDelete(2)}) == {tps[1]: 2}
        finally:
            await admin.close()
        group = f"g-{topic}"
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([*tps, TopicPartition(other, 0)])
            consumer.pause(*tps)  # not fetched: no high-water mark known yet
            await consumer.commit({tps[0]: 4})
            owner = counter(consumer)
            assert all(consumer.highwater(tp) is None for tp in tps)
            before = await owner.uncommitted([topic])  # log ends from the broker
            consumer.resume(*tps)
            fetched: set[int] = set()
            deadline = asyncio.get_running_loop().time() + 20
            while fetched != {0, 1} and asyncio.get_running_loop().time() < deadline:
                records = await consumer.getmany(*tps, timeout_ms=200)
                fetched |= {tp.partition for tp in records}
            assert all(consumer.highwater(tp) is not None for tp in tps[:2])
            return before, await owner.uncommitted([topic])  # the fetches' high-water marks
        finally:
            await consumer.stop()

    before, after = asyncio.run(asyncio.wait_for(main(), 60))
    assert before == expected
    assert after == expected
