"""The disk-backed user store (streams/user_store.py) on a real Faust app and RocksDB store
(rocksdict), no broker: a state reaches the database only when its changelog record is
delivered, with that record's offset, which Faust's recovery then seeks from. Through a broker:
tests/integration/test_disk_store.py."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka.structs import RecordMetadata, TopicPartition
from faust.types import TP, Message

from modeling.settings import Settings
from streams.output import ChangelogKeys
from streams.store_files import stored_offset
from streams.table_db import OFFSET_KEY
from streams.user_store import (
    DiskUserStore,
    MemoryUserStore,
    table_store,
    user_store,
)


class World:
    def __init__(self, home: Path) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        settings = Settings(user_store="disk")
        self.app = faust.App("t-store", broker="kafka://127.0.0.1:1", store="memory://", datadir=str(home))
        self.table = self.app.Table(
            "user-state", default=None, partitions=4, key_type=str, value_type=bytes, **table_store(settings)
        )
        self.topic = self.table.changelog_topic.get_topic_name()
        self.keys = ChangelogKeys(self.table)
        store = user_store(settings, self.table, self.keys)
        assert isinstance(store, DiskUserStore)
        self.states = store
        self.db = {p: self.table.data._db_for_partition(p) for p in (0, 1)}  # as Faust assigns them

    def sent(self, *batches: tuple[int, int]) -> list[tuple[Any, str, int, int]]:
        """Futures for record batches ``(partition, records)``, as BatchOutput.send_counted
        returns them."""
        return [(self.loop.create_future(), self.topic, part, n) for part, n in batches]

    def deliver(self, fut: Any, part: int, first: int) -> None:
        tp = TopicPartition(self.topic, part)
        fut.set_result(RecordMetadata(self.topic, part, tp, first, -1, 0, 0))
        self.loop.run_until_complete(asyncio.sleep(0))  # the done callbacks

    def on_disk(self, part: int, uid: str) -> bytes | None:
        value: bytes | None = self.db[part].get(self.keys(uid))
        return value


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.loop.close()
    asyncio.set_event_loop(None)


def test_a_state_reaches_disk_with_its_offset_only_when_delivered(world: World) -> None:
    w = world
    changes = [("a", 0, b"A1"), ("b", 1, b"B1"), ("c", 0, b"C1")]
    for uid, part, raw in changes:
        w.states.put(uid, part, raw)
    sent = w.sent((0, 2), (1, 1))
    w.states.track(sent, changes)
    assert w.states.get("a") == b"A1" and w.states.get("b") == b"B1"  # read before delivery
    assert w.on_disk(0, "a") is None and w.table.persisted_offset(TP(w.topic, 0)) is None
    w.deliver(sent[0][0], 0, first=40)
    assert (w.on_disk(0, "a"), w.on_disk(0, "c")) == (b"A1", b"C1")
    # Faust's recovery reads this offset and seeks past the records the database holds
    assert w.table.persisted_offset(TP(w.topic, 0)) == 41
    assert w.on_disk(1, "b") is None and w.states.pending == {"b": b"B1"}
    w.deliver(sent[1][0], 1, first=7)
    assert w.on_disk(1, "b") == b"B1" and w.table.persisted_offset(TP(w.topic, 1)) == 7
    assert w.states.pending == {}
    assert w.states.get("b") == b"B1" and w.states.get("nobody") is None
    assert sorted(w.states.entries()) == [("a", 0), ("b", 1), ("c", 0)]


def test_batches_split_by_the_output_get_their_own_records(world: World) -> None:
    w = world
    changes = [(f"u{i}", 0, f"S{i}".encode()) for i in range(5)]
    for uid, part, raw in changes:
        w.states.put(uid, part, raw)
    sent = w.sent((0, 3), (0, 2))  # one partition's records in two batches
    w.states.track(sent, changes)
    w.deliver(sent[0][0], 0, first=10)
    assert [w.on_disk(0, f"u{i}") for i in range(5)] == [b"S0", b"S1", b"S2", None, None]
    assert w.table.persisted_offset(TP(w.topic, 0)) == 12
    w.deliver(sent[1][0], 0, first=13)
    assert w.on_disk(0, "u4") == b"S4" and w.table.persisted_offset(TP(w.topic, 0)) == 14


def test_a_newer_pending_state_outlives_the_older_delivery(world: World) -> None:
    w = world
    w.states.put("a", 0, b"old")
    first = w.sent((0, 1))
    w.states.track(first, [("a", 0, b"old")])
    w.states.put("a", 0, b"new")  # the next flush, not delivered yet
    second = w.sent((0, 1))
    w.states.track(second, [("a", 0, b"new")])
    w.deliver(first[0][0], 0, first=1)
    assert w.on_disk(0, "a") == b"old" and w.states.get("a") == b"new"
    w.deliver(second[0][0], 0, first=2)
    assert w.on_disk(0, "a") == b"new" and w.states.pending == {}


def test_a_delete_reaches_disk_when_its_tombstone_is_delivered(world: World) -> None:
    w = world
    w.states.put("a", 0, b"A")
    sent = w.sent((0, 1))
    w.states.track(sent, [("a", 0, b"A")])
    w.deliver(sent[0][0], 0, first=0)
    w.states.put("a", 0, None)  # the sweep deletes it
    assert w.states.get("a") is None and w.on_disk(0, "a") == b"A"
    tomb = w.sent((0, 1))
    w.states.track(tomb, [("a", 0, None)])
    w.deliver(tomb[0][0], 0, first=1)
    assert w.on_disk(0, "a") is None and w.states.pending == {} and w.states.get("a") is None
    assert w.table.persisted_offset(TP(w.topic, 0)) == 1


def test_an_undelivered_or_revoked_record_never_reaches_disk(world: World) -> None:
    w = world
    for uid, part in (("a", 0), ("b", 1)):
        w.states.put(uid, part, b"X")
    failed, revoked = w.sent((0, 1)), w.sent((1, 1))
    w.states.track(failed, [("a", 0, b"X")])
    w.states.track(revoked, [("b", 1, b"X")])
    failed[0][0].set_exception(RuntimeError("not delivered"))
    w.loop.run_until_complete(asyncio.sleep(0))
    assert w.on_disk(0, "a") is None and w.table.persisted_offset(TP(w.topic, 0)) is None
    assert w.states.get("a") == b"X"  # still what the worker scored with (it stops on the failure)
    w.table.data._dbs.pop(1)  # revoked: Faust's revoke_partitions
    del w.db[1]
    w.deliver(revoked[0][0], 1, first=5)
    assert w.states.pending == {"a": b"X"}  # b's partition is not this worker's any more
    gc.collect()  # as Faust's revoke does: the database closes once nothing holds it
    # Opened again (assigned back): the record was not written and the database's offset stays
    # behind it, so its recovery reads it from the changelog.
    assert w.table.data._db_for_partition(1).get(w.keys("b")) is None
    assert w.table.persisted_offset(TP(w.topic, 1)) is None


def test_recovered_records_are_found_under_the_same_keys(world: World) -> None:
    """Faust's recovery (and streams/replica.py) writes a changelog record's key bytes as they
    are; the store looks users up by the bytes the worker writes to the changelog."""
    w = world
    tp = TP(w.topic, 1)
    events = [
        w.loop.run_until_complete(
            w.table.changelog_topic.decode(
                Message(w.topic, 1, off, 0.0, 0, [], w.keys(uid), raw, None), propagate=True
            )
        )
        for off, (uid, raw) in enumerate([("u1", b"R1"), ("u2", b"R2"), ("u1", b"R3")])
    ]
    w.table.apply_changelog_batch(events)
    assert w.states.get("u1") == b"R3" and w.states.get("u2") == b"R2"
    assert w.table.persisted_offset(tp) == 2
    assert sorted(w.states.entries()) == [("u1", 1), ("u2", 1)]
    assert OFFSET_KEY in w.db[1]
    assert w.states.count() >= 2


def test_the_memory_store_writes_at_once_and_tracks_nothing() -> None:
    data: dict[str, bytes] = {}
    parts: dict[str, int] = {}
    states = MemoryUserStore(data, parts)
    states.put("a", 3, b"A")
    assert data == {"a": b"A"} and parts == {"a": 3} and states.entries() == [("a", 3)]
    states.put("a", 3, None)
    assert data == {} and parts == {} and states.count() == 0


def test_a_closed_database_s_offset_is_read_before_faust_opens_it(world: World) -> None:
    """streams/store_files.py checks each database's offset against the changelog at a
    worker's start, before Faust opens the databases."""
    w = world
    for part, first in ((0, 10), (1, 3)):
        w.states.put(f"u{part}", part, b"S")
        sent = w.sent((part, 1))
        w.states.track(sent, [(f"u{part}", part, b"S")])
        w.deliver(sent[0][0], part, first=first)
    paths = w.states.paths(4)
    assert paths[0].name.endswith("-user-state-0.db") and paths[0].name.startswith("riskstream")
    w.table.data._dbs.clear()
    w.db.clear()
    gc.collect()  # closed, as at a worker's start
    assert [stored_offset(paths[p]) for p in range(4)] == [10, 3, None, None]


def test_usage_reads_rocksdb_s_own_figures(world: World) -> None:
    w = world
    changes = [(f"u{i}", i % 2, bytes(1000)) for i in range(200)]
    for uid, part, raw in changes:
        w.states.put(uid, part, raw)
    sent = w.sent((0, 100), (1, 100))
    w.states.track(sent, changes)
    w.deliver(sent[0][0], 0, first=0)
    w.deliver(sent[1][0], 1, first=0)
    usage = w.states.usage()
    assert set(usage) == {"sst", "memtables", "block_cache"}
    assert usage["memtables"] >= 200 * 1000  # written, not flushed to files yet
    for db in w.db.values():
        db.flush()
    assert w.states.usage()["sst"] > 0
