"""Unreadable states in the tables, through the real broker: a user's and a terminal's changelog
records overwritten with corrupt bytes while no worker runs. The next worker restores them, sends
them to the dead-letter topic with the reason, scores every transaction (those keys start over)
and writes readable states over them. Before, the decode error stopped the worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from harness import WorkerProc, consume, isolated_scenario, run

from modeling.features import FeatureConfig, TerminalState, UserState
from modeling.records import Label, Transaction
from streams.replay import replay_events

T = 1_528_000_000_000  # 2018-06-03
CORRUPT_USER = b"RSU\x93\x01\xc1 not a state"
CORRUPT_TERMINAL = b"RST\xdd truncated"


async def _overwrite(bootstrap: str, records: list[tuple[str, int, bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        for topic, partition, key, value in records:
            await (await p.send(topic, value, key=key, partition=partition))
    finally:
        await p.stop()


def _latest(records: list[Any], key: bytes) -> Any:
    return next(r for r in reversed(records) if r.key == key)


def _wait_for_key(w: WorkerProc, bootstrap: str, topic: str, key: bytes) -> list[Any]:
    deadline = time.monotonic() + 60
    while True:
        w.check_alive()
        recs = run(consume(bootstrap, topic, timeout=10, idle=2))
        if any(r.key == key for r in recs):
            return recs
        assert time.monotonic() < deadline, f"no record for {key!r} in {topic}: {w.log_tail()}"


def test_unreadable_states_are_dead_lettered_and_the_worker_scores_on(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=2)
    settings = sc.settings()
    users_log, terminals_log = f"rs-{sc.name}-user-state-changelog", f"rs-{sc.name}-terminal-state-changelog"
    first: list[Transaction | Label] = [
        Transaction(f"a{i}", f"u{i}", "term1", 20.0 + i, T + i * 1000) for i in range(4)
    ]
    first.append(Label("a0", "u0", "term1", True, T, T + 5_000))
    w = WorkerProc(sc, "first").start()
    try:
        w.wait_metrics()
        run(replay_events(first, settings, progress=False))
        assert len(run(consume(sc.bootstrap, sc.topics["risk_events"], until=4, timeout=120))) == 4
        users = _wait_for_key(w, sc.bootstrap, users_log, b'"u1"')
        terminals = _wait_for_key(w, sc.bootstrap, terminals_log, b'"term1"')
    finally:
        w.stop()
    # over the states the worker wrote: same key, same partition
    run(
        _overwrite(
            sc.bootstrap,
            [
                (users_log, _latest(users, b'"u1"').partition, b'"u1"', CORRUPT_USER),
                (terminals_log, _latest(terminals, b'"term1"').partition, b'"term1"', CORRUPT_TERMINAL),
            ],
        )
    )

    second: list[Transaction | Label] = [
        Transaction("b1", "u1", "term1", 30.0, T + 60_000),
        Transaction("b2", "u2", "term1", 31.0, T + 61_000),
        Label("a1", "u1", "term1", False, T + 1000, T + 62_000),  # the terminal loop reads term1
    ]
    w2 = WorkerProc(sc, "second").start()
    try:
        w2.wait_metrics()
        run(replay_events(second, settings, progress=False))
        risk = run(consume(sc.bootstrap, sc.topics["risk_events"], until=6, timeout=120))
        assert {orjson.loads(r.value)["transaction_id"] for r in risk} == {"a0", "a1", "a2", "a3", "b1", "b2"}
        dead = run(consume(sc.bootstrap, sc.topics["dead_letter"], timeout=60, idle=3))
        by_kind: dict[bytes, set[tuple[bytes, bytes]]] = {}
        for r in dead:
            headers = dict(r.headers)
            assert b"snapshot" in headers["riskstream-error"]
            by_kind.setdefault(headers["riskstream-state-kind"], set()).add((r.key, r.value))
        assert by_kind == {
            b"user-state": {(b"u1", CORRUPT_USER)},
            b"terminal-state": {(b"term1", CORRUPT_TERMINAL)},
        }
        assert w2.metric("riskstream_states_unreadable_total", kind="user") == 1
        assert w2.metric("riskstream_states_unreadable_total", kind="terminal") >= 1
        # readable states written over the corrupt ones
        deadline = time.monotonic() + 60
        while True:
            w2.check_alive()
            users = run(consume(sc.bootstrap, users_log, timeout=10, idle=2))
            terminals = run(consume(sc.bootstrap, terminals_log, timeout=10, idle=2))
            u1, term1 = _latest(users, b'"u1"').value, _latest(terminals, b'"term1"').value
            if u1 != CORRUPT_USER and term1 != CORRUPT_TERMINAL:
                break
            assert time.monotonic() < deadline, w2.log_tail()
        assert UserState.from_bytes(u1, FeatureConfig()).applied  # b1 folded into a new state
        assert set(TerminalState.from_bytes(term1).labels) == {"a1"}  # started over with the next label
        w2.check_alive()
    finally:
        w2.stop()
