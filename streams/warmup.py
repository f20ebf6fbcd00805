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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from modeling.features import Event, FeatureEngine, FeatureRunner
from modeling.settings import Settings
from streams.broker.topics import changelog_topics, ensure_project_topics
from streams.security import client_kwargs


@dataclass
class WarmupReport:
    transactions: int
    users: int
    terminals: int
    seconds: float


async def write_snapshots(
    bootstrap: str,
    logs: dict[str, tuple[Mapping[str, bytes], int]],
    *,
    max_request_size: int = 1 << 20,
    **client_kw: Any,
) -> None:
    """Write state snapshots into changelog topics: ``{topic: (key -> snapshot, partitions)}``.
    With several partitions a key goes where the input topics put it (Kafka's default murmur2
    partitioner, as the worker's changelog records follow their input partition); with one, to
    partition 0. Keys are serialized as Faust serializes str table keys (JSON strings)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=10,
        max_batch_size=512 * 1024,
        max_request_size=max_request_size,
        acks="all",
        **client_kw,
    )
    await producer.start()
    try:
        futs = []
        for topic, (states, n) in logs.items():
            parts = list(range(n))
            for key, raw in states.items():
                p = partitioner(key.encode(), parts, parts) if n > 1 else 0
                futs.append(await producer.send(topic, raw, key=orjson.dumps(key), partition=p))
        await producer.flush()
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def snapshots(runner: FeatureRunner) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The runner's user and terminal states, serialized as the tables hold them."""
    users = {uid: st.to_bytes() for uid, st in runner.users.items()}
    terminals = {tid: ts.to_bytes() for tid, ts in runner.terminals.items()}
    return users, terminals


async def seed_state(runner: FeatureRunner, settings: Settings) -> tuple[int, int]:
    """Write the runner's states to the changelog topics; returns (users, terminals) written."""
    await ensure_project_topics(settings, internal=True)  # changelogs compacted
    user_topic, term_topic = changelog_topics(settings)
    users, terminals = snapshots(runner)
    await write_snapshots(
        settings.bootstrap_servers,
        {user_topic: (users, settings.topic_partitions), term_topic: (terminals, 1)},
        max_request_size=settings.state_max_record_bytes,
        **client_kwargs(settings),
    )
    return len(users), len(terminals)


def build_state(events: Iterable[Event], engine: FeatureEngine) -> tuple[FeatureRunner, int]:
    """Run the history through the engine; returns the runner holding the states and the
    number of transactions seen."""
    runner = FeatureRunner(engine)
    n = sum(1 for _ in runner.run(events))
    return runner, n
