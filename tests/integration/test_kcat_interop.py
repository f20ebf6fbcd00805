"""Interop with a non-Python Kafka client: Debian's ``kcat`` (librdkafka) against the local broker.

``make setup`` installs kcat (apt); a missing kcat fails these tests, it never skips them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid

import pytest

from streams.broker.topics import ensure_topics


@pytest.fixture(scope="module")
def kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not installed: run `make setup` (or `apt-get install kcat`)", pytrace=False)
    return path


def _run(cmd: list[str], stdin: str | None = None) -> str:
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}:\n{res.stderr}"
    return res.stdout


def _new_topic(bootstrap: str, partitions: int = 1) -> str:
    topic = f"kcat-{uuid.uuid4().hex[:10]}"
    asyncio.run(ensure_topics(bootstrap, {topic: partitions}))
    return topic


def test_kcat_lists_the_broker(kcat: str, kafka_broker: str) -> None:
    topic = _new_topic(kafka_broker, partitions=3)
    meta = json.loads(_run([kcat, "-b", kafka_broker, "-L", "-J"]))
    assert [(b["id"], b["name"]) for b in meta["brokers"]] == [(1, kafka_broker)]
    topics = {t["topic"]: len(t["partitions"]) for t in meta["topics"]}
    assert topics[topic] == 3


async def _consume(bootstrap: str, topic: str, n: int) -> list[tuple[bytes | None, bytes | None]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        got: list[tuple[bytes | None, bytes | None]] = []
        async with asyncio.timeout(60):
            while len(got) < n:
                msg = await consumer.getone()
                got.append((msg.key, msg.value))
        return got
    finally:
        await consumer.stop()


async def _produce(bootstrap: str, topic: str, records: list[tuple[str, str, str]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, trace in records:
            await producer.send_and_wait(
                topic, value.encode(), key=key.encode(), partition=0, headers=[("trace", trace.encode())]
            )
    finally:
        await producer.stop()


def test_kcat_produces_aiokafka_consumes(kcat: str, kafka_broker: str) -> None:
    topic = _new_topic(kafka_broker)
    lines = ['u1|{"amount": 12.5, "merchant": "café"}', 'u2|{"amount": 3}', "u1|plain text"]
    _run([kcat, "-b", kafka_broker, "-t", topic, "-P", "-K", "|", "-p", "0"], stdin="\n".join(lines) + "\n")
    got = asyncio.run(_consume(kafka_broker, topic, len(lines)))
    assert got == [tuple(part.encode() for part in line.split("|", 1)) for line in lines]


def test_aiokafka_produces_kcat_consumes(kcat: str, kafka_broker: str) -> None:
    topic = _new_topic(kafka_broker)
    records = [("u1", '{"amount": 12.5, "merchant": "café"}', "a1"), ("u2", "second", "b2")]
    asyncio.run(_produce(kafka_broker, topic, records))
    out = _run(
        [
            kcat,
            "-b",
            kafka_broker,
            "-t",
            topic,
            "-C",
            "-o",
            "beginning",
            "-e",
            "-c",
            str(len(records)),
            "-f",
            "%k\t%s\t%h\n",
        ]
    )
    assert [tuple(line.split("\t")) for line in out.splitlines()] == [
        (key, value, f"trace={trace}") for key, value, trace in records
    ]
