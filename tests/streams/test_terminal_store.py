"""The disk-backed terminal table (streams/terminal_store.py) on a real Faust app and RocksDB store
(rocksdict), no broker: the database takes only the changelog read back, with its offset, never
the terminal loop's or the sweeper's writes ahead of it, so it stays a prefix of the changelog
that the start-time check accepts. Through a broker: tests/integration/test_terminal_catch_up.py
and tests/integration/test_crash_scores.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP
from faust_tables import Changelog, own_event_loop

from modeling.features import FeatureConfig, FeatureEngine, TerminalState
from modeling.features.config import DAY_MS
from modeling.records import Label
from modeling.settings import Settings
from streams.output import ChangelogKeys
from streams.pipeline import BatchProcessor
from streams.retention import TerminalSweeper
from streams.store_files import judge
from streams.table_db import OFFSET_KEY
from streams.terminal_overlay import APPLIED_KEY
from streams.terminal_store import (
    DiskTerminalStore,
    MemoryTerminalStore,
    TerminalStore,
    terminal_store,
    terminal_table,
)


class World:
    def __init__(self, home: Path, store: str = "disk") -> None:
        self.loop = asyncio.get_event_loop()
        settings = Settings(terminal_store=store)  # type: ignore[arg-type]
        self.app = faust.App(
            "t-terminals", broker="kafka://127.0.0.1:1", store="memory://", datadir=str(home)
        )
        self.table = terminal_table(self.app, settings)  # as the worker builds it
        self.keys = ChangelogKeys(self.table)
        self.states = terminal_store(settings, self.table, self.keys)
        self.changelog = Changelog(self.app, self.table, self.keys)
        self.topic = self.changelog.topic
        self.log = self.changelog.log.setdefault(0, [])  # the changelog: (offset, key, value)

    def read_back(self, *records: tuple[str, bytes | None]) -> None:
        """Records the changelog gets next, read back into the table."""
        self.changelog.read_back(*((0, tid, raw) for tid, raw in records))

    def db(self) -> Any:
        return self.table.data._db_for_partition(0)


def keys(store: TerminalStore) -> list[str]:
    return [k for chunk in store.key_chunks(2) for k in chunk]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with own_event_loop():
        yield World(tmp_path)


def test_the_database_takes_only_the_changelog_read_back(world: World) -> None:
    w = world
    assert isinstance(w.states, DiskTerminalStore)
    w.states.written("t1", b"T1")  # the terminal loop sent it; not delivered, not read back
    assert w.states.get("t1") is None and w.db().get(w.keys("t1")) is None
    assert w.table.persisted_offset(TP(w.topic, 0)) is None
    w.read_back(("t1", b"T1"), ("t2", b"T2"), (APPLIED_KEY, b"position"))
    assert (w.states.get("t1"), w.states.get("t2"), w.states.get(APPLIED_KEY)) == (b"T1", b"T2", b"position")
    # Faust's recovery seeks past the records the database holds
    assert w.table.persisted_offset(TP(w.topic, 0)) == 2
    assert sorted(keys(w.states)) == sorted(["t1", "t2", APPLIED_KEY])
    assert w.states.count() == 2  # neither the offset nor the loop's position is a terminal
    w.states.deleted("t1")  # the sweeper sent a tombstone: still held until it is read back
    assert w.states.get("t1") == b"T1"
    w.read_back(("t1", None))
    assert w.states.get("t1") is None and sorted(keys(w.states)) == sorted(["t2", APPLIED_KEY])
    assert w.states.get("never") is None
    assert set(w.states.usage()) == {"sst", "memtables", "block_cache"}
    assert w.states.usage()["memtables"] > 0


def test_the_database_is_a_prefix_the_start_time_check_accepts(world: World) -> None:
    w = world
    w.read_back(*((f"t{i % 7}", f"S{i}".encode()) for i in range(40)))
    w.states.written("t3", b"not read back")  # a loop write ahead of the changelog
    w.read_back(("t5", None), (APPLIED_KEY, b"p"))
    db = w.db()
    offset = int(db.get(OFFSET_KEY))
    assert offset == len(w.log) - 1
    verdict = judge(offset, 0, len(w.log), w.log, db.get)
    assert verdict.kind == "ok", verdict.reason
    # had the loop's write gone to the database, the check would find it stale
    assert (
        judge(
            offset, 0, len(w.log), w.log, lambda k: b"not read back" if k == w.keys("t3") else db.get(k)
        ).kind
        == "stale"
    )


def test_the_memory_store_takes_the_loops_writes_at_once(tmp_path: Path) -> None:
    with own_event_loop():
        w = World(tmp_path, store="memory")
        assert isinstance(w.states, MemoryTerminalStore)
        w.states.written("t1", b"T1")
        assert w.states.get("t1") == b"T1" and w.states.count() == 1
        w.states.written(APPLIED_KEY, b"p")
        assert w.states.count() == 1 and sorted(keys(w.states)) == sorted(["t1", APPLIED_KEY])
        w.states.deleted("t1")
        assert w.states.get("t1") is None and w.states.count() == 0


def test_the_sweep_on_disk_leaves_the_delete_to_the_tombstone_read_back(world: World) -> None:
    w = world
    config = FeatureConfig()
    engine = FeatureEngine(config)
    processor = BatchProcessor(engine, lambda: None, lambda _: None, w.states.get)  # type: ignore[arg-type,return-value]
    t0 = 1_527_811_200_000
    wm = t0 + 90 * DAY_MS
    processor.watermark.observe("label:0", wm)
    cutoff = wm - config.label_delay_ms - config.terminal_windows_ms[-1] - DAY_MS

    def state(t: int) -> bytes:
        ts = TerminalState()
        engine.terminal_label(ts, Label(f"x{t}", "u", "term", True, t, t + DAY_MS))
        return ts.to_bytes()

    w.read_back(("stale", state(cutoff - 1)), ("fresh", state(cutoff + 1)), (APPLIED_KEY, b"p"))
    sent: list[str] = []

    async def send(gone: list[str]) -> list[asyncio.Future[Any]]:
        sent.extend(gone)
        return []

    sweeper = TerminalSweeper(
        processor,
        config,
        {},
        w.states,
        send,
        lock=asyncio.Lock(),
        owner=lambda: True,
        paused=lambda: False,
        now_ms=lambda: wm + DAY_MS,
    )
    res = w.loop.run_until_complete(sweeper.sweep())
    assert sent == ["stale"] and (res.deleted, res.checked) == (1, 2)
    assert w.states.get("stale") is not None  # until the tombstone is read back
    w.read_back(("stale", None))
    assert set(keys(w.states)) == {"fresh", APPLIED_KEY}


def test_the_sweep_reads_the_keys_a_chunk_at_a_time_holding_no_iterator_between(world: World) -> None:
    """Each key once, in chunks, while states come and go between chunks; and between chunks
    the database can be dropped and opened again, as Faust does in a rebalance: an iterator
    kept across chunks would keep the old handle, and its lock."""
    import gc

    w = world
    w.read_back(*((f"t{i:02d}", b"S") for i in range(10)), (APPLIED_KEY, b"p"))
    seen: list[str] = []
    chunks = w.states.key_chunks(3)
    seen += next(chunks)
    assert seen == [APPLIED_KEY, "t00", "t01"]  # the keys' JSON order: '""' first
    w.read_back(("t05", None), ("t99", b"new"), ("t00", b"again"))  # between chunks
    store = w.table.data
    store._dbs.pop(0)  # Faust's revocation: the database dropped, then opened anew
    gc.collect()
    store._db_for_partition(0)  # RocksDB refuses a second open while a handle is alive
    for chunk in chunks:
        assert 1 <= len(chunk) <= 3
        seen += chunk
    assert seen == [APPLIED_KEY, "t00", "t01", "t02", "t03", "t04", "t06", "t07", "t08", "t09", "t99"]
