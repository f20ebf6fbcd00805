"""``consumer_lags`` (streams/housekeeping.py), the metrics report's lag reading, on a real
aiokafka consumer and broker: highwater minus position per partition, and no error when a
partition is given away while the report awaits another one's position.

Before, the report read every partition of one assignment snapshot, awaiting each position; a
partition revoked meanwhile made aiokafka raise, the exception left Faust's timer task, and the
app crashed (a worker stopped by its own metrics report).
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.broker.topics import ensure_topics
from streams.housekeeping import consumer_lags


def test_lags_are_highwater_minus_position_and_a_revoked_partition_is_skipped(kafka_broker: str) -> None:
    topic = f"lags-{uuid.uuid4().hex[:8]}"

    async def main() -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int], float]:
        await ensure_topics(kafka_broker, {topic: 2})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
        await producer.start()
        try:
            for p, n in ((0, 10), (1, 7)):
                for i in range(n):
                    await producer.send_and_wait(topic, b"m%d" % i, partition=p)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_broker, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        t0, t1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        try:
            consumer.assign([t0, t1])
            got = 0
            while got < 17:  # fetched: highwaters known
                batches = await consumer.getmany(timeout_ms=1000)
                got += sum(len(v) for v in batches.values())
            consumer.seek(t0, 4)
            consumer.seek(t1, 3)
            lags = await consumer_lags(consumer, [topic])

            # A rebalance while the report awaits t0's position (just assigned: its offset is
            # being reset): t0 is given away, t1 assigned afresh. Nothing raises, and t0 is
            # not reported.
            consumer.assign([t0, t1])
            asyncio.get_running_loop().call_soon(consumer.assign, [t1])
            start = asyncio.get_running_loop().time()
            after = await consumer_lags(consumer, [topic], wait_s=10.0)
            took = asyncio.get_running_loop().time() - start
        finally:
            await consumer.stop()
        return lags, after, took

    lags, after, took = asyncio.run(main())
    assert lags == {(topic, 0): 6, (topic, 1): 4}
    assert (topic, 0) not in after
    assert set(after) <= {(topic, 1)}  # t1's highwater is unknown until its next fetch
    assert took < 9.0  # the revocation ended the wait, not the 10-s bound
