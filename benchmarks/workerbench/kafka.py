"""Topics, reading them back, seeding changelogs; and the relay role, system (c)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workerbench.config import PARTITIONS

# ------------------------------------------------------------------------------------ Kafka


@dataclass
class Topics:
    transactions: str
    clickstream: str
    labels: str

    @property
    def inputs(self) -> list[str]:
        return [self.transactions, self.clickstream, self.labels]


def settings_for(bootstrap: str, topics: Topics, out: str = "unused-risk") -> Any:
    from modeling.settings import Settings

    return Settings(
        bootstrap_servers=bootstrap,
        topic_transactions=topics.transactions,
        topic_clickstream=topics.clickstream,
        topic_labels=topics.labels,
        topic_risk_events=out,
        topic_partitions=PARTITIONS,
    )


async def create_topics(bootstrap: str, names: Sequence[str], *, log_append: Sequence[str] = ()) -> None:
    """``log_append``: topics whose records carry the broker's append time as their timestamp
    (``message.timestamp.type=LogAppendTime``) instead of the producer's creation time."""
    from streams.broker.topics import ensure_topics

    configs = {n: {"message.timestamp.type": "LogAppendTime"} for n in log_append}
    await ensure_topics(bootstrap, dict.fromkeys(names, PARTITIONS), configs=configs)


async def end_count(consumer: Any, topic: str) -> int:
    from aiokafka import TopicPartition

    offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    return int(sum(offsets.values()))


async def read_all(bootstrap: str, topic: str) -> list[tuple[int, bytes]]:
    """Every record of ``topic`` as (producer timestamp ms, value)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=10_000)
    await c.start()
    out: list[tuple[int, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await c.getmany(timeout_ms=1000)
            for recs in batch.values():
                out.extend((r.timestamp, r.value) for r in recs)
            for tp in list(remaining):
                if await c.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await c.stop()
    return out


async def seed_changelogs(bootstrap: str, logs: dict[str, tuple[Mapping[str, bytes], int]]) -> None:
    """``streams.warmup.write_snapshots`` into topics created here first."""
    from streams.broker.topics import ensure_topics
    from streams.warmup import write_snapshots

    await ensure_topics(bootstrap, {t: n for t, (_, n) in logs.items()})
    await write_snapshots(bootstrap, logs)


# ------------------------------------------------------------------------------------ relay role


async def relay(bootstrap: str, group: str, out: str, topics: Sequence[str]) -> None:
    """(c): consume the inputs with getmany and produce every value unchanged; no work."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from modeling.settings import Settings

    defaults = Settings()
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
        # the worker's fetch settings, so that (c)'s latency floor is comparable
        fetch_min_bytes=defaults.fetch_min_bytes,
        fetch_max_wait_ms=defaults.fetch_max_wait_ms,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024, acks="all"
    )
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            for recs in batch.values():
                for r in recs:
                    await producer.send(out, r.value, key=r.key)
    finally:
        await producer.stop()
        await consumer.stop()
