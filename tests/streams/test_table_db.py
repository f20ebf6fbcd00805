"""The disk-backed tables' RocksDB store (streams/table_db.py) on a real Faust app and database:
changelog records read back are written with their offset atomically, so a worker killed at any
point of the write leaves a database that holds a prefix of its changelog, which the start-time
check (streams/store_files.py) accepts. Faust's own store wrote the offset apart, after the
records: killed between the two, its database held records past its offset, and the check found
it stale (this test fails with it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust_tables import Changelog, own_event_loop

from modeling.settings import Settings
from streams.output import ChangelogKeys
from streams.store_files import judge
from streams.table_db import OFFSET_KEY, SCHEME, Store
from streams.user_store import table_store


class Killed(Exception):
    """The worker's end, at a write of the database."""


class KilledAfter:
    """A real database that takes ``writes`` more writes (a write batch or a single put) and
    then none, as if the process died there."""

    def __init__(self, db: Any, writes: int) -> None:
        self.db = db
        self.left = writes

    def _one(self) -> None:
        if self.left == 0:
            raise Killed
        self.left -= 1

    def write(self, batch: Any) -> None:
        self._one()
        self.db.write(batch)

    def put(self, key: bytes, value: bytes) -> None:
        self._one()
        self.db.put(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


class World:
    def __init__(self, home: Path) -> None:
        self.app = faust.App("t-table-db", broker="kafka://127.0.0.1:1", store="memory://", datadir=str(home))
        self.table = self.app.Table(
            "user-state",
            default=None,
            partitions=2,
            key_type=str,
            value_type=bytes,
            **table_store(Settings(user_store="disk")),
        )
        self.changelog = Changelog(self.app, self.table, ChangelogKeys(self.table))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with own_event_loop():
        yield World(tmp_path)


def test_the_tables_use_this_store(world: World) -> None:
    assert table_store(Settings(user_store="disk"))["store"].startswith(f"{SCHEME}:")
    assert type(world.table.data) is Store


@pytest.mark.parametrize("writes", [0, 1, 2, 3])
def test_a_worker_killed_inside_a_batch_leaves_a_prefix_of_the_changelog(world: World, writes: int) -> None:
    w = world
    w.changelog.read_back(*((i % 2, f"u{i % 5}", f"first {i}".encode()) for i in range(12)))
    store = w.table.data
    dbs = {p: store._db_for_partition(p) for p in (0, 1)}
    store._dbs.update({p: KilledAfter(db, writes) for p, db in dbs.items()})
    second = [(i % 2, f"u{i % 5}", f"second {i}".encode()) for i in range(12)]
    second.append((0, "u1", None))
    killed = False
    try:
        w.changelog.read_back(*second)
    except Killed:
        killed = True
    store._dbs.update(dbs)
    assert killed == (writes == 0)  # one write a partition: records and offset together
    for part, db in dbs.items():
        offset = int(db.get(OFFSET_KEY))
        log = w.changelog.log[part]
        assert offset == (len(log) - 1 if not killed else 5), (part, offset)
        verdict = judge(offset, 0, len(log), log, db.get)
        assert verdict.kind == "ok", (part, writes, verdict.reason)
