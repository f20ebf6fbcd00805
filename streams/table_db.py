"""RocksDB under the worker's disk-backed tables (``streams/user_store.py``,
``streams/terminal_store.py``): the store they use, its store arguments, the atomic write of
states with their changelog offset, and the databases' memory.

:class:`Store` is Faust's RocksDB store with one change: ``apply_changelog_batch`` (how Faust's
recovery, the standby copies and ``streams/replica.py`` write changelog records read back) writes
each partition's records and their last offset in one RocksDB write batch. Faust's own writes
the records, then the offset by a second write: a worker killed between the two left a database
holding records past its offset, which the start-time check (``streams/store_files.py``) finds
stale (for the terminal table almost surely: every batch of the terminal loop rewrites its
position key), and the partition was then read again from the whole changelog.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from faust.stores import STORES
from faust.stores.rocksdb import Store as FaustRocksDBStore

# Faust's RocksDB store keeps the offset of the last changelog record a partition database
# holds under this key (faust.stores.rocksdb.Store.offset_key).
OFFSET_KEY = FaustRocksDBStore.offset_key
# The tables' store URL scheme (faust.stores.by_url): this module's Store
SCHEME = "riskstream-rocksdb"
# riskstream_user_store_bytes{kind}, riskstream_terminal_store_bytes{kind}: RocksDB's property for each
USAGE = {
    "sst": "rocksdb.total-sst-files-size",
    "memtables": "rocksdb.cur-size-all-mem-tables",
    "block_cache": "rocksdb.block-cache-usage",
}


class Store(FaustRocksDBStore):
    """Faust's RocksDB store, changelog batches written with their offset atomically."""

    def apply_changelog_batch(
        self, batch: Iterable[Any], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        items: dict[int, list[tuple[bytes, bytes | None]]] = {}
        last: dict[int, int] = {}
        for event in batch:
            msg = event.message
            items.setdefault(msg.partition, []).append((msg.key, msg.value))
            last[msg.partition] = max(msg.offset, last.get(msg.partition, msg.offset))
        for partition, writes in items.items():
            write(self._db_for_partition(partition), writes, last[partition])


def write(db: Any, items: Iterable[tuple[bytes, bytes | None]], offset: int) -> None:
    """Puts and deletes, and the partition's changelog offset, in one atomic write batch."""
    from rocksdict import WriteBatch

    batch = WriteBatch(raw_mode=True)
    for key, raw in items:
        if raw is None:
            batch.delete(key)
        else:
            batch.put(key, raw)
    batch.put(OFFSET_KEY, str(offset).encode())
    db.write(batch)


def usage(dbs: Iterable[Any]) -> dict[str, int]:
    """Bytes over open databases: files on disk, write buffers and block cache in memory
    (RocksDB's own properties)."""
    out = dict.fromkeys(USAGE, 0)
    for db in dbs:
        for kind, prop in USAGE.items():
            out[kind] += int(db.property_int_value(prop) or 0)
    return out


def rocksdb_table(app_id: str, table: str, block_cache_mb: int) -> dict[str, Any]:
    """A table's store arguments for :class:`Store` (``app.Table(**...)``)."""
    STORES.aliases[SCHEME] = f"{__name__}:Store"  # faust.stores.by_url finds it by the scheme
    mb = 1 << 20
    return {
        # Files <worker_data_dir>/v1/tables/<app id>-<table>-<partition>.db: the app id in the
        # name, so that another app started on the same directory does not take them for its
        # own. (A path is needed anyway: yarl's URL("rocksdb://") is false, and Faust's table
        # then takes the app's store, memory, instead.)
        "store": f"{SCHEME}:{re.sub(r'[^A-Za-z0-9._-]', '_', app_id)}-{table}",
        "options": {
            "driver": "rocksdict",
            # Faust's defaults allow 2 GiB of block cache and 3 x 64 MiB of memtables per
            # partition: bounded here per partition database.
            "block_cache_size": block_cache_mb * mb,
            "write_buffer_size": 16 * mb,
            "max_write_buffer_number": 2,
        },
    }
