"""Where a worker keeps the global terminal table: Faust's memory store (the default) or one
RocksDB database on the worker's disk (``terminal_store = "disk"``).

Every worker holds every terminal: the scorer reads a transaction's terminal state from this
table, whichever worker's labels built it (``streams/app.py``, the diagram). One worker, the
owner of the terminal-labels partition, writes the table's changelog
(``streams/terminal_loop.py``), and every worker, that one included, reads the changelog back
into its copy (``streams/replica.py``).

**Memory.** The store is a dict: memory grows with the terminals (about 1.9 KB serialized for a
terminal with 32 labels, up to 566 KB at the label bound; DEVELOPERS.md, "Bounds on one key's
state"), and every (re)started worker reads the table's whole changelog before it scores.

**Disk.** Faust's RocksDB store with the ``rocksdict`` driver (as ``streams/table_db.py`` writes
it: each fetch's records and their offset in one write batch) for the table's one partition,
under ``worker_data_dir``, with the offset of the last changelog record it holds. A worker
restarted on the same data directory reads only the changelog written after that offset
(Faust's recovery seeks there), and its memory holds only RocksDB's caches.

The database must hold exactly a prefix of the changelog, as the memory store does after a
replay: the start-time check (``streams/store_files.py``) relies on it, and Faust's recovery reads
on from its offset. It is therefore written only from the changelog read back (Faust's
``apply_changelog_batch``, with the records' offset), never by the terminal loop ahead of that:
the loop's own states wait in its ``WrittenTerminals`` until the table reads them back, as they
already must (a read-back of an older batch replaces newer states). The memory store still takes
the loop's writes at once, which lets the scorer of the loop's own worker see them a moment
earlier; with the disk store it sees them when they are read back, as every other worker does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson

from streams.table_db import OFFSET_KEY, rocksdb_table, usage
from streams.terminal_overlay import APPLIED_KEY


class TerminalStore(Protocol):
    def get(self, tid: str) -> bytes | None: ...
    def written(self, tid: str, raw: bytes) -> None:
        """The terminal loop sent ``raw`` to the changelog (not delivered yet)."""

    def deleted(self, tid: str) -> None:
        """The sweeper sent a tombstone for ``tid`` (not delivered yet)."""

    def key_chunks(self, n: int) -> Iterator[list[str]]:
        """Every key, ``n`` at a time, each chunk read when asked for (the sweep's)."""

    def count(self) -> int:
        """Terminals held (the loop's position not counted)."""


class MemoryTerminalStore:
    """The dict inside the table's memory store, which Faust's recovery and the changelog read
    back fill (Faust keeps that one dict for the store's life); the loop's writes go in at once."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data

    @classmethod
    def of(cls, table: Any) -> MemoryTerminalStore:
        return cls(table.data.data)

    def get(self, tid: str) -> bytes | None:
        return self.data.get(tid)

    def written(self, tid: str, raw: bytes) -> None:
        self.data[tid] = raw

    def deleted(self, tid: str) -> None:
        self.data.pop(tid, None)

    def key_chunks(self, n: int) -> Iterator[list[str]]:
        keys = list(self.data)  # a copy: the dict changes between chunks
        for i in range(0, len(keys), n):
            yield keys[i : i + n]

    def count(self) -> int:
        d = self.data
        return len(d) - (APPLIED_KEY in d)


class DiskTerminalStore:
    """The table's one RocksDB database (partition 0 of Faust's store ``table.data``), written by
    the changelog read back only. ``key_bytes``: a terminal id's changelog key, as the worker
    writes it (the database holds the changelog's key bytes)."""

    def __init__(self, store: Any, key_bytes: Callable[[str], bytes]) -> None:
        self.store = store
        self.key_bytes = key_bytes

    def _db(self) -> Any:
        # Faust's own accessor, which opens the database the first time. No reference is kept:
        # Faust closes a database by dropping it, and a second handle would keep its lock.
        return self.store._db_for_partition(0)

    def get(self, tid: str) -> bytes | None:
        # The scorer's read of every transaction's terminal: one read, which consults the bloom
        # filters itself. A key_may_exist call before it made a lookup 0.8 us slower when 9 in
        # 10 terminals were there (benchmarks/results/terminal-store-ab.json).
        db = self.store._dbs.get(0)
        if db is None:
            db = self._db()
        value: bytes | None = db.get(self.key_bytes(tid))
        return value

    def written(self, tid: str, raw: bytes) -> None:
        """Nothing: the database takes the state when the changelog is read back."""

    def deleted(self, tid: str) -> None:
        """Nothing: the database takes the tombstone when the changelog is read back."""

    def key_chunks(self, n: int) -> Iterator[list[str]]:
        """In key order, each chunk from a new RocksDB iterator that starts after the previous
        chunk's last key and is gone before the chunk is handed over. Listing every key at once
        held the event loop 230 ms for 200,000 terminals; and no iterator may outlive a chunk,
        since the sweep awaits between chunks and a database Faust drops in a rebalance must
        close (a second handle would keep its lock)."""
        after: bytes | None = None
        while True:
            chunk = self._keys_after(after, n)
            if not chunk:
                return
            after = chunk[-1]
            # the table's keys are JSON strings (Faust's key serializer for tables)
            yield [orjson.loads(key) for key in chunk]

    def _keys_after(self, after: bytes | None, n: int) -> list[bytes]:
        out: list[bytes] = []
        for key in self._db().keys(from_key=after):
            if key in (after, OFFSET_KEY):
                continue
            out.append(key)
            if len(out) == n:
                break
        return out

    def count(self) -> int:
        """RocksDB's estimate of the keys held (exact once compacted), less the offset and the
        loop's position."""
        db = self._db()
        n = int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
        n -= db.get(OFFSET_KEY) is not None
        n -= db.get(self.key_bytes(APPLIED_KEY)) is not None
        return max(0, n)

    def usage(self) -> dict[str, int]:
        return usage([self._db()])

    def path(self) -> Any:
        """The database's directory, as Faust names it."""
        return self.store.partition_path(0)


def table_store(settings: Any) -> dict[str, Any]:
    """The terminal table's store arguments (``app.GlobalTable(**table_store(settings))``)."""
    if settings.terminal_store == "memory":
        return {}
    return rocksdb_table(settings.app_id, "terminal-state", settings.terminal_store_block_cache_mb)


def terminal_table(app: Any, settings: Any) -> Any:
    """The worker's global terminal table on ``app``: one changelog partition, read back a
    record at a time by Faust's own path (the replica applies a fetch at a time)."""
    return app.GlobalTable(
        "terminal-state",
        default=None,
        partitions=1,
        key_type=str,
        value_type=bytes,
        recovery_buffer_size=1,
        **table_store(settings),
    )


def terminal_store(settings: Any, table: Any, key_bytes: Callable[[str], bytes]) -> TerminalStore:
    if settings.terminal_store == "memory":
        return MemoryTerminalStore.of(table)
    return DiskTerminalStore(table.data, key_bytes)
