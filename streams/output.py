"""Produce one micro-batch's records: one aiokafka record batch per topic-partition.

Sending record by record (``faust.Topic.send`` or ``AIOKafkaProducer.send``) costs a future, a
metadata lookup and a partitioner call per record; a table write through Faust also queues a
``FutureMessage`` in Faust's send buffer, which one task drains record by record, and whose
pre-commit flush gives up after 0.1 s. Here the scorer's risk events, dead letters, forwarded
labels and table changelog records go out as whole batches built with
``AIOKafkaProducer.create_batch`` and submitted with ``send_batch`` on Faust's own producer
(same connection, same settings). Each returns a future for the batch's delivery; the batch
loop acks its input messages once all of them resolved.

Keys hash to partitions like the Java client's default partitioner (murmur2, as aiokafka's
``DefaultPartitioner`` does); a key's partition is cached per topic. Changelog records go to the
partition of their source messages, as Faust's tables expect.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

Headers = list[tuple[str, bytes]]
OutRecord = tuple[str, int | None, bytes | None, bytes | None, Headers | None]


class BatchOutput:
    """Collects records per topic-partition, then sends each group as one batch."""

    _PARTITION_CACHE_LIMIT = 1_000_000

    def __init__(self, app: Any, cpu_seconds: Any = None) -> None:
        self.app = app
        self._cpu = cpu_seconds  # a Counter (child): CPU time spent building batches
        self._partition_of: dict[tuple[str, bytes], int] = {}

    def _producer(self) -> Any:
        return self.app.producer._ensure_producer()  # Faust's aiokafka.AIOKafkaProducer

    async def _ensure_metadata(self, producer: Any, topics: set[str]) -> None:
        """Until the producer's metadata knows the partitions of every topic in ``topics``.

        Checked on every send, not once per topic: a metadata update can leave a known topic
        without partitions for a moment (a leader election; seen under load in the
        joining-worker test), and hashing a key then fails inside aiokafka."""
        cluster = producer.client.cluster
        while missing := [t for t in topics if cluster.partitions_for_topic(t) is None]:
            for topic in missing:
                await producer.client._wait_on_metadata(topic)

    def partition(self, producer: Any, topic: str, key: bytes | None) -> int:
        if key is None:
            return int(producer._partition(topic, None, None, None, None, None))
        cache = self._partition_of
        part = cache.get((topic, key))
        if part is None:
            if len(cache) >= self._PARTITION_CACHE_LIMIT:
                cache.clear()
            part = cache[(topic, key)] = int(producer._partition(topic, None, key, None, key, None))
        return part

    async def send(self, records: list[OutRecord]) -> list[asyncio.Future[Any]]:
        """``records``: (topic, partition or None to hash the key, key, value (None: a
        tombstone), headers). One delivery future per record batch."""
        return [fut for fut, _, _, _ in await self.send_counted(records)]

    async def send_counted(self, records: list[OutRecord]) -> list[tuple[asyncio.Future[Any], str, int, int]]:
        """:meth:`send`, each future with its batch's topic, partition and record count (the
        future's ``RecordMetadata.offset`` is the batch's first offset)."""
        if not records:
            return []
        producer = self._producer()
        # No await from the metadata check to the last partition computed.
        await self._ensure_metadata(producer, {r[0] for r in records})
        t0 = time.thread_time()
        groups: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, Headers | None]]] = {}
        for topic, part, key, value, headers in records:
            if part is None:
                part = self.partition(producer, topic, key)
            groups.setdefault((topic, part), []).append((key, value, headers))
        # Build every batch first (no await), then hand them over in order.
        built: list[tuple[Any, str, int, int]] = []
        for (topic, part), items in groups.items():
            batch, n = producer.create_batch(), 0
            for key, value, headers in items:
                if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                    batch.close()
                    built.append((batch, topic, part, n))
                    batch, n = producer.create_batch(), 0
                    if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                        raise ValueError(f"a record for {topic} does not fit in an empty batch")
                n += 1
            batch.close()
            built.append((batch, topic, part, n))
        if self._cpu is not None:
            self._cpu.inc(time.thread_time() - t0)
        return [
            (await producer.send_batch(batch, topic, partition=part), topic, part, n)
            for batch, topic, part, n in built
        ]


class ChangelogKeys:
    """A table's changelog key bytes, serialized as Faust serializes them, cached per key."""

    def __init__(self, table: Any, limit: int = 1_000_000) -> None:
        self._topic = table.changelog_topic
        self._serializer = table.key_serializer
        self._cache: dict[Any, bytes] = {}
        self._limit = limit

    def __call__(self, key: Any) -> bytes:
        raw = self._cache.get(key)
        if raw is None:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            raw, _ = self._topic.prepare_key(key, self._serializer)
            self._cache[key] = raw
        return raw
