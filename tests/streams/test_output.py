"""BatchOutput against the real broker: batches per partition, and metadata that goes missing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.broker.topics import ensure_topics
from streams.output import BatchOutput


class _App:
    """What BatchOutput uses of a Faust app: its producer, here a plain aiokafka one."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = self
        self._aiokafka = producer

    def _ensure_producer(self) -> AIOKafkaProducer:
        return self._aiokafka


async def _read(bootstrap: str, topic: str, n: int) -> list[Any]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await c.start()
    out: list[Any] = []
    try:
        while len(out) < n:
            for recs in (await c.getmany(timeout_ms=10_000)).values():
                out.extend(recs)
    finally:
        await c.stop()
    return out


def test_send_waits_again_when_a_topic_drops_out_of_the_metadata(kafka_broker: str) -> None:
    """A metadata update can leave a known topic without partitions for a moment (a leader
    election); a worker hashing keys then crashed inside aiokafka (TypeError, seen under load in
    the joining-worker test). BatchOutput must wait for the metadata again instead."""
    topic = f"out-{uuid.uuid4().hex[:8]}"

    async def main() -> list[Any]:
        await ensure_topics(kafka_broker, {topic: 3})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker, linger_ms=5)
        await producer.start()
        try:
            out = BatchOutput(_App(producer))
            await asyncio.gather(*await out.send([(topic, None, b"u1", b"first", None)]))
            cluster = producer.client.cluster
            cluster._partitions.pop(topic)  # the state the worker crashed in
            assert cluster.partitions_for_topic(topic) is None
            records = [(topic, None, f"u{i}".encode(), b"second", None) for i in range(20)]
            await asyncio.gather(*await out.send(records))
            assert cluster.partitions_for_topic(topic) == {0, 1, 2}
        finally:
            await producer.stop()
        return await _read(kafka_broker, topic, 21)

    got = asyncio.run(main())
    assert sorted(r.value for r in got) == [b"first"] + [b"second"] * 20
    by_key = {r.key: r.partition for r in got}
    assert len(set(by_key.values())) > 1  # keys spread over the partitions, by hash
