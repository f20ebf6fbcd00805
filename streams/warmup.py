"""Seed a deployment's window state from history, so a new worker does not start cold.

The history runs through the one feature engine offline (exactly what the worker would have
computed had it consumed those events), and the resulting user and terminal states are written
to the workers' changelog topics, in the partitions Faust reads them from: a user's state goes
to the partition its input events hash to (Kafka's default murmur2 partitioner on the user id),
terminal state to the global table's single partition. Workers started afterwards recover it
like any other table state. Labels due after the end of the history are included: a label only
counts once its label time has passed, so they change nothing until then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from modeling.features import Event, FeatureEngine, FeatureRunner
from modeling.settings import Settings


@dataclass
class WarmupReport:
    transactions: int
    users: int
    terminals: int
    seconds: float


def changelog_topics(settings: Settings) -> dict[str, int]:
    return {
        f"{settings.app_id}-user-state-changelog": settings.topic_partitions,
        f"{settings.app_id}-terminal-state-changelog": 1,
    }


async def _create_compacted(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, n, settings.topic_replication, topic_configs={"cleanup.policy": "compact"})
            for name, n in changelog_topics(settings).items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won
                await admin.create_topics(new)
    finally:
        await admin.close()


async def seed_state(runner: FeatureRunner, settings: Settings) -> tuple[int, int]:
    """Write the runner's states to the changelog topics; returns (users, terminals) written."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    await _create_compacted(settings)
    user_topic, term_topic = changelog_topics(settings)
    parts = list(range(settings.topic_partitions))
    partitioner = DefaultPartitioner()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, linger_ms=10, max_batch_size=512 * 1024, acks="all"
    )
    await producer.start()
    try:
        futs = []
        for uid, st in runner.users.items():
            p = partitioner(uid.encode(), parts, parts)
            # Faust serializes str table keys as JSON strings.
            futs.append(await producer.send(user_topic, st.to_bytes(), key=orjson.dumps(uid), partition=p))
        for tid, ts in runner.terminals.items():
            futs.append(await producer.send(term_topic, ts.to_bytes(), key=orjson.dumps(tid), partition=0))
        await producer.flush()
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return len(runner.users), len(runner.terminals)


def build_state(events: Iterable[Event], engine: FeatureEngine) -> tuple[FeatureRunner, int]:
    """Run the history through the engine; returns the runner holding the states and the
    number of transactions seen."""
    runner = FeatureRunner(engine)
    n = sum(1 for _ in runner.run(events))
    return runner, n
