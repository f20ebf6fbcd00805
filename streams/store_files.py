"""The table databases left on a worker's disk (``user_store = "disk"``, ``terminal_store =
"disk"``), checked against their changelog before Faust opens them (streams/worker_command.py).

A partition's database holds exactly a prefix of its changelog partition: the states of every
record up to the offset it holds (streams/user_store.py and streams/terminal_store.py say how).
Faust's recovery trusts that offset and reads on from it. Files built from another changelog
(the topic deleted and created again while the worker was down, or a data directory restored
from another cluster) would keep every stale state they hold. So each database is checked
first, and deleted unless:

- its offset is before the changelog's end (one at or past it was built from a longer log);
- the changelog still starts at or before that offset;
- the changelog's records up to that offset agree with it. In a prefix, the last record of
  each key at or before the offset is the database's value for that key (a delete: no value).
  Compaction removes only records that a later record of the same key supersedes, so of the
  records that survive, a key's last one up to the offset is still that key's last. A
  changelog created again holds other records there: other users, or the same users' states
  from other events.

The records compared are the ones just before the offset, read back a window of
``CHECK_WINDOW`` offsets at a time (at most ``CHECK_WINDOWS`` windows) until they hold a stored
state (deletes alone prove little). A database that cannot be checked (no such state left in
that range, or the reads time out) is deleted too: its partition is then read from the whole
changelog, which is what the memory store always does.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.broker.ranges import read_range
from streams.table_db import OFFSET_KEY

log = logging.getLogger("riskstream.worker")
CHECK_WINDOW = 256  # changelog offsets read back per step
CHECK_WINDOWS = 16  # at most this many steps back from a database's offset
STALL_S = 15.0  # a read back that gets no record for this long gives the check up
# A changelog record: (offset, key, value or None for a delete).
Record = tuple[int, bytes, bytes | None]


@dataclass(frozen=True)
class Verdict:
    kind: str  # "ok", "stale" (not built from this changelog) or "unchecked"
    reason: str


def stored_offset(path: Path) -> int | None:
    """The changelog offset a closed partition database holds (None: no database, or none)."""
    if not path.exists():
        return None
    db = open_db(path)
    try:
        raw = db.get(OFFSET_KEY)
    finally:
        db.close()
    return None if raw is None else int(raw)


def judge(
    offset: int, begin: int, end: int, records: Sequence[Record], held: Callable[[bytes], bytes | None]
) -> Verdict:
    """Whether a database holding changelog ``offset`` was built from this changelog partition
    (``begin``/``end``: its first and next offsets). ``records``: the partition's records read
    back from ``offset`` (its last ones up to it, ascending); ``held``: the database's value for
    a key."""
    if offset >= end:
        return Verdict("stale", f"holds changelog offset {offset}, past the changelog's end ({end})")
    if begin > offset:
        return Verdict("unchecked", f"holds changelog offset {offset}, before the changelog's start, {begin}")
    last: dict[bytes, tuple[int, bytes | None]] = {}
    for at, key, value in records:
        if at <= offset:
            last[key] = (at, value)
    states = 0
    for key, (at, value) in last.items():
        has = held(key)
        if has != value:
            held_is = "nothing" if has is None else f"a different state ({len(has)} bytes)"
            return Verdict(
                "stale",
                f"holds changelog offset {offset}, but for key {key[:80]!r} the changelog's last record"
                f" up to that offset (offset {at}) has {_size(value)} and the database {held_is}",
            )
        states += value is not None
    if not states:
        return Verdict(
            "unchecked",
            f"holds changelog offset {offset}, and the changelog's {len(records)} records read back from it"
            " hold no stored state to compare (compacted away, or deletes only)",
        )
    return Verdict("ok", f"holds changelog offset {offset}; {states} states agree with the changelog")


def _size(value: bytes | None) -> str:
    return "a delete" if value is None else f"a state of {len(value)} bytes"


def open_db(path: Path) -> Any:
    from rocksdict import AccessType, Options, Rdict

    return Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())


async def drop_stale(
    settings: Any, topic: str, paths: dict[int, Path], kind: str = "user-state"
) -> dict[int, Verdict]:
    """Check every partition database in ``paths`` (partition -> directory) against changelog
    ``topic`` and delete those not found "ok". Returns the verdict of each database checked.
    ``kind``: the table's, for the log."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.security import client_kwargs

    offsets = {p: o for p, path in sorted(paths.items()) if (o := stored_offset(path)) is not None}
    if not offsets:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **client_kwargs(settings),
    )
    await consumer.start()
    verdicts: dict[int, Verdict] = {}
    try:
        tps = {p: TopicPartition(topic, p) for p in offsets}
        consumer.assign(list(tps.values()))
        begins = await consumer.beginning_offsets(list(tps.values()))
        ends = await consumer.end_offsets(list(tps.values()))
        for part, offset in offsets.items():
            tp = tps[part]
            db = open_db(paths[part])
            try:
                verdicts[part] = await _check(consumer, tp, offset, begins[tp], ends[tp], db.get)
            finally:
                db.close()
    finally:
        await consumer.stop()
    for part, verdict in verdicts.items():
        if verdict.kind == "ok":
            log.info("%s database %s %s", kind, paths[part], verdict.reason)
            continue
        log.warning(
            "%s database %s %s: %s; deleted, the partition is read from the changelog",
            kind,
            paths[part],
            verdict.reason,
            "not built from this changelog" if verdict.kind == "stale" else "it cannot be checked",
        )
        shutil.rmtree(paths[part])
    return verdicts


async def _check(
    consumer: Any, tp: Any, offset: int, begin: int, end: int, held: Callable[[bytes], bytes | None]
) -> Verdict:
    records: list[Record] = []
    verdict = judge(offset, begin, end, records, held)
    hi = offset + 1
    for _ in range(CHECK_WINDOWS):
        if verdict.kind != "unchecked" or hi <= begin:
            break
        lo = max(begin, hi - CHECK_WINDOW)
        try:
            window = [
                (r.offset, r.key, r.value)
                async for rs in read_range(consumer, {tp: lo}, {tp: hi}, STALL_S)
                for r in rs
            ]
        except TimeoutError:
            reason = f"holds changelog offset {offset}; reading offsets {lo}-{hi - 1} timed out"
            return Verdict("unchecked", reason)
        records = window + records
        verdict = judge(offset, begin, end, records, held)
        hi = lo
    return verdict
