"""The terminal feed on a real broker: it reads the terminal-labels topic from the table's
position, waits at start until it has read what the topic held, skips the worker's own labels,
keeps reading what other workers forward, and pauses and resumes (streams/terminal_feed.py)."""

from __future__ import annotations

import asyncio
import uuid

import orjson
from aiokafka import AIOKafkaProducer

from modeling.features import FeatureConfig, FeatureEngine
from modeling.records import Label
from modeling.settings import Settings
from streams.broker.topics import ensure_topics
from streams.terminal_feed import PROGRESS_KEY, WORKER_HEADER, FeedState, encode_progress
from streams.terminal_overlay import TerminalOverlay
from streams.wiring import terminal_feed

T = 1_530_000_000_000
ME, PEER = b"me", b"peer"


def _label(n: int) -> Label:
    return Label(f"x{n}", f"u{n}", f"t{n % 3}", n % 2 == 0, T - 9 * 86_400_000, T - 7_200_000 + n)


def fed(overlay: TerminalOverlay) -> list[str]:
    """The transaction ids of the labels on top of an empty table, over the test's terminals."""
    out: list[str] = []
    for term in ("t0", "t1", "t2"):
        st = overlay.merged(term, None)
        out += [] if st is None else list(st.labels)
    return sorted(out)


def test_the_feed_reads_from_the_tables_position_and_keeps_up(kafka_broker: str) -> None:
    topic = f"terminal-labels-{uuid.uuid4().hex[:8]}"

    async def go() -> tuple[list[str], dict[int, float], dict[str, int], int, list[str], dict[int, float]]:
        await ensure_topics(kafka_broker, {topic: 1})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
        await producer.start()

        async def send(key: bytes, value: bytes, worker: bytes) -> None:
            await producer.send_and_wait(
                topic, value, key=key, partition=0, headers=[(WORKER_HEADER, worker)]
            )

        # offsets 0-3: labels the table holds; 4-7: a previous process's and another worker's
        # labels it does not hold yet, one of this worker's own, and a progress record
        for n in range(4):
            await send(b"t", orjson.dumps(_label(n).to_dict()), PEER)
        await send(b"t", orjson.dumps(_label(4).to_dict()), b"previous-process")
        await send(b"t", orjson.dumps(_label(5).to_dict()), PEER)
        await send(b"t", orjson.dumps(_label(6).to_dict()), ME)
        await send(PROGRESS_KEY, encode_progress(PEER, {1: 42.0}), PEER)

        overlay = TerminalOverlay(FeatureEngine(FeatureConfig()), lambda: 4)
        state = FeedState(ME, overlay)
        pokes: list[int] = []
        feed = terminal_feed(Settings(bootstrap_servers=kafka_broker), topic, state, lambda: pokes.append(1))
        try:
            await feed.start(4, catch_up_s=30.0)  # returns once the four records are read
            at_start = fed(overlay)
            floors_at_start = dict(state.floors)
            counts = dict(state.counts)
            # later records arrive while the worker runs
            await send(b"t", orjson.dumps(_label(7).to_dict()), PEER)
            await send(PROGRESS_KEY, encode_progress(PEER, {1: 50.0}), PEER)
            for _ in range(100):
                if state.floors.get(1) == 50.0:
                    break
                await asyncio.sleep(0.05)
            later = fed(overlay)
            # paused (the worker holds every labels partition), it reads nothing; resumed from
            # the table's position, it reads what came meanwhile
            await feed.pause()
            await send(b"t", orjson.dumps(_label(8).to_dict()), PEER)
            await asyncio.sleep(0.5)
            assert fed(overlay) == later
            await feed.resume(8, catch_up_s=30.0)
            assert fed(overlay) == [*later, "x8"]
            return at_start, floors_at_start, counts, len(pokes), later, dict(state.floors)
        finally:
            await feed.stop()
            await producer.stop()

    at_start, floors_at_start, counts, pokes, later, floors = asyncio.run(go())
    assert at_start == ["x4", "x5"]  # from the position on; its own label skipped
    assert floors_at_start == {1: 42.0}
    assert counts == {"label": 2, "own": 1, "progress": 1, "unreadable": 0}
    assert later == ["x4", "x5", "x7"] and floors == {1: 50.0}
    assert pokes == 2  # once per floor change: the input buffer looks again
