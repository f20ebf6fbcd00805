"""Where a worker keeps the user states of its partitions: Faust's memory store (the default) or
RocksDB files on the worker's disk (``user_store = "disk"``).

**Memory.** The table's store is a dict. Memory grows with the users a worker holds (about
1.5 KB each, README "Sizing"), and a (re)started worker rebuilds every state of its partitions
from the changelog before it scores (faust-streaming #284; 43k-57k states a second here).

**Disk.** Faust's RocksDB store (``rocksdb://`` with the ``rocksdict`` driver): one database per
changelog partition under ``worker_data_dir``, each with the offset of the last changelog
record it holds. A worker restarted on the same data directory reads only the changelog
written after that offset (Faust's recovery seeks there), and its memory holds only RocksDB's
caches, bounded by the settings below.

The database holds exactly a prefix of the changelog, as the memory store does after a replay.
The worker writes a state to the changelog only after the outputs of the batches folded into it
are delivered (``streams/output_gate.py``), and a crash must not leave on disk a state the
changelog never got: a redelivered transaction that a state already holds is not scored again,
so such a state would lose its risk event. A state is therefore written to the database only
when its changelog record is delivered, in one write batch with that record's offset
(:meth:`DiskUserStore.track`). Until then it waits in ``pending``, which every read looks at
first. Records of one partition are delivered in order, so the database's states and offset
move forward together. A partition revoked in between is not written (its database is closed
and its offset stays behind those records), and its recovery, wherever it goes, reads them from
the changelog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from streams.table_db import OFFSET_KEY, rocksdb_table, usage, write

log = logging.getLogger("riskstream.worker")
_MISSING = object()

# Sent: the output's (future, topic, partition, records) of a send (BatchOutput.send_counted).
Sent = list[tuple[Any, str, int, int]]
# A change: (user id, partition, serialized state or None for a delete).
Change = tuple[str, int, bytes | None]


class UserStore(Protocol):
    def get(self, uid: str) -> bytes | None: ...
    def put(self, uid: str, part: int, raw: bytes | None) -> None: ...
    def track(self, sent: Sent, changes: Sequence[Change]) -> None: ...
    def entries(self) -> list[tuple[str, int]]: ...
    def count(self) -> int: ...


class MemoryUserStore:
    """Faust's memory store: its dict and its key -> partition map (which recovery fills and
    the sweep reads: it only deletes keys of partitions the worker owns)."""

    def __init__(self, data: dict[str, bytes], parts: dict[str, int]) -> None:
        self.data = data
        self.parts = parts

    @classmethod
    def of(cls, table: Any) -> MemoryUserStore:
        return cls(table.data.data, table.data._key_partition)

    def get(self, uid: str) -> bytes | None:
        return self.data.get(uid)

    def put(self, uid: str, part: int, raw: bytes | None) -> None:
        if raw is None:
            self.data.pop(uid, None)
            self.parts.pop(uid, None)
        else:
            self.data[uid] = raw
            self.parts[uid] = part

    def track(self, sent: Sent, changes: Sequence[Change]) -> None:
        """Nothing to do: a restart rebuilds the dict from the changelog."""

    def entries(self) -> list[tuple[str, int]]:
        return list(self.parts.items())

    def count(self) -> int:
        return len(self.data)


class DiskUserStore:
    """The user states in Faust's RocksDB store (``table.data``), one database per partition.

    ``key_bytes``: a user id's changelog key, as the worker writes it (the databases hold the
    changelog's key bytes: Faust's recovery writes records as they are)."""

    def __init__(self, store: Any, key_bytes: Callable[[str], bytes]) -> None:
        self.store = store
        self.key_bytes = key_bytes
        self.pending: dict[str, bytes | None] = {}  # written, changelog record not delivered

    def _dbs(self) -> dict[int, Any]:
        """The open partition databases: Faust opens those of the active partitions assigned
        and closes those revoked."""
        dbs: dict[int, Any] = self.store._dbs
        return dbs

    def get(self, uid: str) -> bytes | None:
        raw = self.pending.get(uid, _MISSING)
        if raw is not _MISSING:
            return raw  # type: ignore[return-value]
        key = self.key_bytes(uid)
        for db in list(self._dbs().values()):
            if db.key_may_exist(key):  # a bloom filter: no false negatives
                value: bytes | None = db.get(key)
                if value is not None:
                    return value
        return None

    def put(self, uid: str, part: int, raw: bytes | None) -> None:
        self.pending[uid] = raw

    def track(self, sent: Sent, changes: Sequence[Change]) -> None:
        """Write ``changes`` to their databases as their changelog records are delivered.
        ``sent``: the sends of those records, which were handed to the output in the order of
        ``changes`` (the output keeps each partition's order and splits it into batches)."""
        by_part: dict[int, list[Change]] = {}
        for change in changes:
            by_part.setdefault(change[1], []).append(change)
        at = dict.fromkeys(by_part, 0)
        # Faust opens an assigned partition's database when the partition is assigned, before
        # its recovery; one not open here was revoked, and its states are no longer this
        # worker's to read (they are not written; their pending entries go on delivery).
        dbs = self._dbs()
        for fut, _, part, n in sent:
            i = at[part]
            at[part] = i + n
            chunk = by_part[part][i : i + n]
            fut.add_done_callback(self._on_delivered(dbs.get(part), part, chunk, n))

    def _on_delivered(self, db: Any, part: int, chunk: Sequence[Change], n: int) -> Callable[[Any], None]:
        pending = self.pending

        def done(fut: Any) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return  # the batch loop fails the worker on it; the changelog never had it
            if db is not None and self._dbs().get(part) is db:  # not revoked since
                write(db, [(self.key_bytes(uid), raw) for uid, _, raw in chunk], fut.result().offset + n - 1)
            for uid, _, raw in chunk:
                if uid in pending and pending[uid] is raw:  # no newer write since
                    del pending[uid]

        return done

    def entries(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for part, db in list(self._dbs().items()):
            # the table's keys are JSON strings (Faust's key serializer for tables)
            out += [(orjson.loads(key), part) for key in db.keys() if key != OFFSET_KEY]  # noqa: SIM118
        return out

    def paths(self, partitions: int) -> dict[int, Path]:
        """Each partition's database directory, as Faust names it."""
        return {p: Path(self.store.partition_path(p)) for p in range(partitions)}

    def usage(self) -> dict[str, int]:
        """Bytes over the open partition databases (:func:`usage`)."""
        return usage(list(self._dbs().values()))

    def count(self) -> int:
        """RocksDB's estimate of the keys held (exact once compacted)."""
        dbs = self._dbs().values()
        return sum(int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in dbs)


def table_store(settings: Any) -> dict[str, Any]:
    """The user-state table's store arguments (``app.Table(**table_store(settings))``)."""
    if settings.user_store == "memory":
        return {}
    return rocksdb_table(settings.app_id, "user-state", settings.user_store_block_cache_mb)


def user_store(settings: Any, table: Any, key_bytes: Callable[[str], bytes]) -> UserStore:
    if settings.user_store == "memory":
        return MemoryUserStore.of(table)
    return DiskUserStore(table.data, key_bytes)
