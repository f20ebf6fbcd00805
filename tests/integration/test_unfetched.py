"""``BatchingConsumer.unfetched`` on a real aiokafka consumer and broker: the input alignment's
lag check (``streams/input_buffer.py``) reads aiokafka's partition state through it.

The first version read an attribute aiokafka does not have, so every partition counted as
"unknown", hence lagging, and the alignment waited out its idle bound whenever a partition ran
dry. The alignment's own tests inject the lag check, so they could not see that; this one reads
the real consumer's state.
"""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from streams.broker.topics import ensure_topics
from streams.intake import BatchingConsumer


def test_unfetched_follows_the_consumers_position(kafka_broker: str) -> None:
    topic = f"unfetched-{uuid.uuid4().hex[:8]}"

    async def main() -> dict[str, object]:
        await ensure_topics(kafka_broker, {topic: 2})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(topic, b"m%d" % i, partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker, enable_auto_commit=False)
        await consumer.start()
        owner = SimpleNamespace(_thread=SimpleNamespace(_consumer=consumer))
        p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        seen: dict[str, object] = {}
        try:

            def unfetched(tp: object) -> bool | None:
                return BatchingConsumer.unfetched(owner, tp)  # type: ignore[arg-type]

            seen["before_assignment"] = unfetched(p0)
            consumer.assign([p0])
            await consumer.seek_to_beginning(p0)
            first = await consumer.getmany(p0, timeout_ms=10_000, max_records=3)
            seen["handed_out"] = sum(len(v) for v in first.values())
            seen["after_3_of_10"] = unfetched(p0)
            seen["faust_tp_after_3_of_10"] = unfetched(TP(topic, 0))  # the type Faust passes
            n = seen["handed_out"]
            while isinstance(n, int) and n < 10:
                more = await consumer.getmany(p0, timeout_ms=10_000)
                n += sum(len(v) for v in more.values())
            seen["after_10_of_10"] = unfetched(p0)
            seen["not_assigned"] = unfetched(p1)
        finally:
            await consumer.stop()
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), 60))
    assert seen["before_assignment"] is False
    assert seen["handed_out"] == 3
    assert seen["after_3_of_10"] is True
    assert seen["faust_tp_after_3_of_10"] is True
    assert seen["after_10_of_10"] is False
    assert seen["not_assigned"] is False
