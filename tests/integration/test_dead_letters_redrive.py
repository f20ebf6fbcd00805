"""``riskstream dead-letters``: a summary of the dead-letter topic, and dead letters sent back to
their input topic once the setting that refused them changed, through the real broker and two
workers (streams/dead_letters.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import RISKSTREAM, ROOT, Scenario, WorkerProc, consume, isolated_scenario, produce, run

from modeling.records import Transaction
from streams.broker.topics import ensure_topics
from streams.dead_letters import (
    REDRIVEN_HEADER,
    DeadLetterError,
    iter_letters,
    redrive,
    redrive_transactional_id,
)
from streams.unreadable import ERROR, ERROR_FIELD, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC

BIG = 2 << 20  # over the 1 MiB + 64 KiB the dead-letter topic takes (state_max_record_bytes 1 MiB)


def _cli(sc: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    env = sc.env(RISKSTREAM_STATE_MAX_RECORD_BYTES=str(1 << 20))
    cmd = [*RISKSTREAM, "dead-letters", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def _txn(tid: str, minute: int, padding: int = 0) -> bytes:
    """A valid transaction, ``padding`` bytes of JSON whitespace long past its fields."""
    d = Transaction(tid, "u1", "t1", 10.0 + minute, 1_528_000_000_000 + minute * 60_000).to_dict()
    return orjson.dumps(d) + b" " * padding


def test_dead_letters_refused_by_a_setting_are_scored_once_it_changes(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=1)
    t = sc.topics
    inputs = (t["transactions"], t["clickstream"], t["labels"])
    big = {"max.message.bytes": str(4 << 20), "retention.ms": "-1"}
    run(ensure_topics(sc.bootstrap, dict.fromkeys(inputs, 1), configs=dict.fromkeys(inputs, big)))
    small = {"RISKSTREAM_STATE_MAX_RECORD_BYTES": str(1 << 20)}

    # 1. a worker with the default message limit (64 KiB) refuses two valid transactions over it,
    #    one of them too long for the dead-letter topic (cut), and one bad record
    a = WorkerProc(sc, "a", env=small).start()
    try:
        a.wait_metrics()
        sent = [
            (b"u1", _txn("ok-1", 0)),
            (b"u1", _txn("long-2", 1, 70_000)),
            (b"u1", _txn("huge-3", 2, BIG)),
            (b"u1", b"{not json"),
        ]
        run(produce(sc.bootstrap, t["transactions"], sent, max_request_size=4 << 20))
        first = run(consume(sc.bootstrap, t["risk_events"], until=1, timeout=120, idle=None))
        assert [orjson.loads(r.value)["transaction_id"] for r in first] == ["ok-1"]
        assert len(run(consume(sc.bootstrap, t["dead_letter"], until=3, timeout=60))) == 3
    finally:
        a.stop()

    res = _cli(sc, "summary", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["total"] == 3 and summary["cut"] == 1
    assert [(g["origin"], g["field"], g["count"]) for g in summary["groups"]] == [
        (t["transactions"], "<message>", 3)
    ]
    assert "exceeds the 65536-byte limit" in summary["groups"][0]["example"]  # the first: long-2

    res = _cli(sc, "redrive")  # nothing chosen: refused
    assert res.returncode == 2 and "--topic" in res.stderr
    res = _cli(sc, "redrive", "--topic", t["transactions"], "--field", "<message>", "--dry-run")
    assert res.returncode == 0 and f"would send 3 back to {t['transactions']}" in res.stdout, (
        res.stdout + res.stderr
    )
    assert "1 read again from their source record" in res.stdout
    assert len(run(consume(sc.bootstrap, t["transactions"], timeout=10, idle=2))) == 4  # nothing sent

    # 2. a worker that takes messages of up to 4 MiB; the three dead letters sent back
    b = WorkerProc(sc, "b", env={**small, "RISKSTREAM_MAX_MESSAGE_BYTES": str(4 << 20)}).start()
    try:
        b.wait_metrics()
        res = _cli(sc, "redrive", "--topic", t["transactions"], "--field", "<message>")
        assert res.returncode == 0 and f"sent 3 back to {t['transactions']}" in res.stdout, (
            res.stdout + res.stderr
        )
        records = run(consume(sc.bootstrap, t["transactions"], timeout=10, idle=2))
        again = records[4:]
        assert [bytes(r.value) for r in again] == [v for _, v in sent[1:]]  # the huge one whole again
        assert all(dict(r.headers)[REDRIVEN_HEADER].startswith(t["dead_letter"].encode()) for r in again)
        scored = run(consume(sc.bootstrap, t["risk_events"], until=3, timeout=120, idle=None))
        assert sorted(orjson.loads(r.value)["transaction_id"] for r in scored) == ["huge-3", "long-2", "ok-1"]
        # the bad record is refused again, once more
        dead = run(consume(sc.bootstrap, t["dead_letter"], until=4, timeout=60))
        assert len(dead) == 4 and bytes(dead[-1].value) == b"{not json"
        b.check_alive()
    finally:
        b.stop()

    # 3. what was sent back is recorded: a second run sends only the new dead letter (the bad
    #    record refused again, from its new offset), a third nothing; --again sends them all
    choose = ("--topic", t["transactions"], "--field", "<message>")
    res = _cli(sc, "redrive", *choose)
    assert f"sent 1 back to {t['transactions']}" in res.stdout, res.stdout + res.stderr
    assert "skipped 3 sent back before" in res.stdout and res.returncode == 0
    res = _cli(sc, "redrive", *choose)
    assert "sent nothing" in res.stdout and "skipped 4 sent back before" in res.stdout, res.stdout
    res = _cli(sc, "redrive", *choose, "--again", "--dry-run")
    assert f"would send 4 back to {t['transactions']}" in res.stdout, res.stdout + res.stderr
    marks = run(consume(sc.bootstrap, f"{t['dead_letter']}-redriven", timeout=10, idle=2))
    assert sorted(bytes(r.value).decode() for r in marks) == [f"{t['dead_letter']}:0:{i}" for i in range(4)]
    assert len(run(consume(sc.bootstrap, t["transactions"], timeout=10, idle=2))) == 4 + 3 + 1


async def _write_letters(bootstrap: str, topic: str, letters: list[tuple[str, bytes]]) -> None:
    """Dead letters as a worker writes them (``streams/unreadable.py``): the input's bytes,
    headers naming its source (``letters``: source topic, value; each at offset 0)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for source, value in letters:
            headers = [
                (SOURCE_TOPIC, source.encode()),
                (SOURCE_PARTITION, b"0"),
                (SOURCE_OFFSET, b"0"),
                (ERROR_FIELD, b"<message>"),
                (ERROR, b"refused by a setting since changed"),
            ]
            await producer.send_and_wait(topic, value, key=b"u1", headers=headers)
    finally:
        await producer.stop()


async def _redrive_in_one_chunk(settings: Any, topics: set[str]) -> Any:
    letters = [x async for chunk in iter_letters(settings, topics=topics) for x in chunk]

    async def one_chunk() -> AsyncIterator[list[Any]]:
        yield letters

    return await redrive(settings, one_chunk(), log=lambda _: None)


def test_a_chunk_that_fails_midway_is_neither_sent_nor_recorded(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    """A chunk's re-sent records and its records of what was sent go in one Kafka transaction.
    Here its second record is refused by its topic (lowered to 1,000 bytes a message) after its
    first was written: the transaction is aborted, so neither is there for a committed reader
    (the workers) and the first is sent once, by the next run."""
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=1)
    t = sc.topics
    tiny = f"tiny-{sc.name}"
    run(ensure_topics(sc.bootstrap, {t["dead_letter"]: 1, t["transactions"]: 1}))
    run(ensure_topics(sc.bootstrap, {tiny: 1}, configs={tiny: {"max.message.bytes": "1000"}}))
    settings = sc.settings()
    run(
        _write_letters(
            sc.bootstrap, t["dead_letter"], [(t["transactions"], _txn("a-1", 0)), (tiny, b"x" * 4000)]
        )
    )

    with pytest.raises(DeadLetterError, match="re-sending dead letters failed") as failed:
        run(_redrive_in_one_chunk(settings, {t["transactions"], tiny}))
    assert "MessageSizeTooLarge" in str(failed.value)
    committed = {"isolation_level": "read_committed"}
    # written, then aborted: a reader of everything sees it, a committed reader does not
    assert len(run(consume(sc.bootstrap, t["transactions"], timeout=10, idle=2))) == 1
    assert run(consume(sc.bootstrap, t["transactions"], timeout=6, idle=2, **committed)) == []
    assert run(consume(sc.bootstrap, f"{t['dead_letter']}-redriven", timeout=6, idle=2, **committed)) == []

    report = run(_redrive_in_one_chunk(settings, {t["transactions"]}))  # the one that fits
    assert dict(report.sent) == {t["transactions"]: 1}
    report = run(_redrive_in_one_chunk(settings, {t["transactions"]}))
    assert dict(report.sent) == {} and report.skipped_sent == 1
    sent = run(consume(sc.bootstrap, t["transactions"], timeout=10, idle=2, **committed))
    assert [bytes(r.value) for r in sent] == [_txn("a-1", 0)]


async def _two_runs(settings: Any, topic: str) -> tuple[Any, BaseException | None]:
    """A first run mid-chunk (its transactional producer, one record written, not committed),
    then a second run whole, then the first trying to commit: the second's report, and what
    the first's commit raised."""
    from aiokafka import AIOKafkaProducer

    first = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, transactional_id=redrive_transactional_id(settings)
    )
    await first.start()
    try:
        await first.begin_transaction()
        await first.send_and_wait(topic, _txn("from-the-first-run", 0), key=b"u1")
        report = await _redrive_in_one_chunk(settings, {topic})
        try:
            await first.commit_transaction()
        except Exception as exc:
            return report, exc
        return report, None
    finally:
        await first.stop()


def test_a_second_run_fences_a_first_still_running(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    """Both runs have the one transactional id: the second's start aborts the first's open chunk,
    and the first cannot commit it afterwards."""
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=1)
    t = sc.topics
    run(ensure_topics(sc.bootstrap, {t["dead_letter"]: 1, t["transactions"]: 1}))
    settings = sc.settings()
    run(_write_letters(sc.bootstrap, t["dead_letter"], [(t["transactions"], _txn("a-1", 0))]))
    report, raised = run(_two_runs(settings, t["transactions"]))
    assert dict(report.sent) == {t["transactions"]: 1}
    assert raised is not None and "Fenced" in type(raised).__name__, repr(raised)
    committed = run(
        consume(sc.bootstrap, t["transactions"], timeout=10, idle=2, isolation_level="read_committed")
    )
    assert [bytes(r.value) for r in committed] == [_txn("a-1", 0)]  # the first run's record aborted
