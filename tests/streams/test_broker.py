"""The local Kafka broker: lifecycle, a real aiokafka round trip, topic creation, the CLI."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from pathlib import Path

import pytest

from streams.broker.local import LocalKafka, pom_version
from streams.broker.topics import ensure_topics, project_topics
from streams.cli import main

Received = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- without a broker ---------------------------------------------------------------------------


def test_server_properties_kraft_single_node(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path, port=29092, controller_port=29093, partitions=3)
    props = dict(
        line.split("=", 1)
        for line in broker.write_config().read_text().splitlines()
        if not line.startswith("#")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["num.partitions"] == "3"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"
    assert (tmp_path / "config" / "log4j.properties").is_file()


def test_status_and_stop_without_a_broker(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path, port=29092, controller_port=29093, lib_dir=tmp_path / "nolib")
    st = broker.status()
    assert (st.running, st.pid, st.version) == (False, None, None)
    assert broker.stop() is False


def test_stale_pid_file_is_not_trusted(tmp_path: Path) -> None:
    # PID 1 is alive but is not this home's broker: status must not claim it, stop must not signal it
    broker = LocalKafka(tmp_path, port=29092, controller_port=29093)
    broker.pid_file.write_text("1\n")
    assert broker.status().running is False
    assert broker.stop() is False
    assert not broker.pid_file.exists()


def test_project_topics_come_from_settings() -> None:
    from modeling.settings import load_settings

    s = load_settings(topic_partitions=6, topic_dead_letter="dlq")
    assert project_topics(s) == {
        "transactions": 6,
        "clickstream": 6,
        "labels": 6,
        "risk-events": 6,
        "dlq": 6,
    }


# --- with the session broker --------------------------------------------------------------------


def test_status_reports_the_running_broker(local_kafka: LocalKafka) -> None:
    st = local_kafka.status()
    assert st.running
    assert st.pid is not None and st.pid > 1
    assert st.port == local_kafka.port
    assert st.bootstrap == local_kafka.bootstrap
    assert st.version == pom_version() == "3.9.1"
    assert local_kafka.version() == "3.9.1"


def test_start_is_idempotent(local_kafka: LocalKafka) -> None:
    pid = local_kafka.status().pid
    assert local_kafka.start(timeout=30).pid == pid


async def _round_trip(bootstrap: str, topic: str) -> list[Received]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(
                topic, f"value-{i}".encode(), key=b"user-42", headers=[("trace", f"t{i}".encode())]
            )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        got: list[Received] = []
        async with asyncio.timeout(60):
            while len(got) < 3:
                msg = await consumer.getone()
                got.append((msg.key, msg.value, list(msg.headers)))
        await consumer.commit()
        return got
    finally:
        await consumer.stop()


def test_aiokafka_round_trip_through_a_consumer_group(kafka_broker: str) -> None:
    topic = _topic("roundtrip")
    asyncio.run(ensure_topics(kafka_broker, {topic: 2}))
    got = asyncio.run(_round_trip(kafka_broker, topic))
    # one key -> one partition -> order preserved
    assert got == [(b"user-42", f"value-{i}".encode(), [("trace", f"t{i}".encode())]) for i in range(3)]


async def _partitions(bootstrap: str, topics: list[str]) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}
    finally:
        await admin.close()


def test_ensure_topics_creates_missing_topics_once(kafka_broker: str) -> None:
    names = {_topic("a"): 1, _topic("b"): 4}
    assert asyncio.run(ensure_topics(kafka_broker, names)) == sorted(names)
    assert asyncio.run(_partitions(kafka_broker, list(names))) == names
    assert asyncio.run(ensure_topics(kafka_broker, names)) == []
    extra = {**names, _topic("c"): 2}
    assert asyncio.run(ensure_topics(kafka_broker, extra)) == sorted(set(extra) - set(names))


def test_a_worker_refuses_input_topics_with_another_partition_count(
    kafka_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broker's auto-create gave the input topics its num.partitions (4), the settings say 2:
    # users of partitions 2 and 3 have no state partition. The worker used to start and crash at
    # its first state flush ("Unrecognized partition", session 17); it now says why at once.
    app = _topic("app")
    tx, clicks, labels = _topic("tx"), _topic("clicks"), _topic("labels")
    asyncio.run(ensure_topics(kafka_broker, {tx: 4, clicks: 4, labels: 4}))
    env = {
        "RISKSTREAM_BOOTSTRAP_SERVERS": kafka_broker,
        "RISKSTREAM_APP_ID": app,
        "RISKSTREAM_TOPIC_TRANSACTIONS": tx,
        "RISKSTREAM_TOPIC_CLICKSTREAM": clicks,
        "RISKSTREAM_TOPIC_LABELS": labels,
        "RISKSTREAM_TOPIC_RISK_EVENTS": _topic("risk"),
        "RISKSTREAM_TOPIC_DEAD_LETTER": _topic("dlq"),
        "RISKSTREAM_TOPIC_PARTITIONS": "2",
        "RISKSTREAM_REGISTRY_DIR": str(tmp_path / "registry"),
        "RISKSTREAM_WORKER_DATA_DIR": str(tmp_path / "worker"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RISKSTREAM_CONFIG", raising=False)
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "partition counts differ from the 2 the settings give" in err
    for name in (tx, clicks, labels):
        assert f"{name} has 4" in err
    # nothing was created for the worker before it refused
    changelog = f"{app}-user-state-changelog"
    assert asyncio.run(_partitions(kafka_broker, [changelog])).get(changelog, 0) == 0


def test_cli_status_and_topics(
    local_kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RISKSTREAM_KAFKA_HOME", str(local_kafka.home))
    monkeypatch.setenv("RISKSTREAM_KAFKA_PORT", str(local_kafka.port))
    monkeypatch.setenv("RISKSTREAM_KAFKA_CONTROLLER_PORT", str(local_kafka.controller_port))
    monkeypatch.setenv("RISKSTREAM_BOOTSTRAP_SERVERS", local_kafka.bootstrap)
    prefix = uuid.uuid4().hex[:8]
    for key in ("TRANSACTIONS", "CLICKSTREAM", "LABELS", "RISK_EVENTS", "DEAD_LETTER"):
        monkeypatch.setenv(f"RISKSTREAM_TOPIC_{key}", f"{prefix}-{key.lower()}")
    monkeypatch.setenv("RISKSTREAM_TOPIC_PARTITIONS", "2")

    assert main(["kafka", "status"]) == 0
    out = capsys.readouterr().out
    assert "running (pid" in out and "3.9.1" in out

    assert main(["kafka", "topics"]) == 0
    assert capsys.readouterr().out.count("(created)") == 5
    assert main(["kafka", "topics"]) == 0
    assert capsys.readouterr().out.count("(exists)") == 5


def test_cli_status_exits_3_when_not_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RISKSTREAM_KAFKA_HOME", str(tmp_path))
    assert main(["kafka", "status"]) == 3
    assert "not running" in capsys.readouterr().out


def test_cli_topics_reports_an_unreachable_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RISKSTREAM_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    assert main(["kafka", "topics"]) == 1
    assert "cannot reach the Kafka cluster" in capsys.readouterr().err


def test_an_existing_topic_with_a_smaller_record_limit_is_reported_not_altered(
    kafka_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The dead-letter topic must take the largest state plus headers; one created before (or by
    an operator) with the broker's 1 MB default is left alone, with a warning that says how to
    raise it."""
    small, big = _topic("dlq-small"), _topic("dlq-big")
    asyncio.run(ensure_topics(kafka_broker, {small: 1}))  # the broker's default limit
    asyncio.run(ensure_topics(kafka_broker, {big: 1}, configs={big: {"max.message.bytes": "9000000"}}))
    want = {name: {"max.message.bytes": "8454144"} for name in (small, big)}
    with caplog.at_level(logging.WARNING, logger="streams.broker.topics"):
        assert asyncio.run(ensure_topics(kafka_broker, {small: 1, big: 1}, configs=want)) == []
    warned = [r.getMessage() for r in caplog.records if "max.message.bytes" in r.getMessage()]
    assert len(warned) == 1 and small in warned[0] and "max.message.bytes=8454144" in warned[0]
