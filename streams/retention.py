"""Deleting dormant users' states from the worker's state table.

A user state is kept as long as the user is active; the feature engine resets a user whose next
event comes more than ``user_retention_ms`` after their latest (``FeatureEngine.dormant``). Such
a state is dead weight: memory in every worker that owns the partition, a record in the
compacted changelog that every recovery reads, and behaviour data kept about a customer who
left. Every ``state_sweep_interval_s`` the worker's :class:`StateSweeper` deletes the stored
states whose latest event is before ``watermark - retention - grace``
(``modeling/features/retention.py``): from the store, and from the changelog with a tombstone
(compaction then drops the key). The vectors do not change; a returning user starts over,
exactly as the engine would have reset them.

Ordering with state flushes. A tombstone must not overtake a newer snapshot of the same user
in the changelog, or a restart would lose that snapshot. Each chunk of the sweep therefore runs
under the flusher's lock: no flush is between taking its dirty states and handing their records
to the producer, so a user deleted here and active again right after is written by a later
flush, behind the tombstone. States that are dirty or being flushed are never deleted.

The sweep pauses while partitions are moving or tables recover (a recovering store may not hold
a user's latest snapshot yet) and only looks at keys of partitions the worker owns.

Terminal states (a global table: every worker holds all of them) are swept by
:class:`TerminalSweeper` in the worker that owns the terminal-labels partition, the only writer:
a state none of whose labels can count any more is deleted with a tombstone, which every
worker's global table applies. A label batch holds the same lock from changing its states to
handing their records to the producer, so a tombstone and a newer state of the same terminal
reach the changelog in the order they were made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from modeling.errors import StateError
from modeling.features import (
    FeatureConfig,
    TerminalState,
    expiry_cutoff,
    is_expired,
    terminal_expiry_cutoff,
    terminal_is_expired,
)
from streams.pipeline import BatchProcessor
from streams.terminal_overlay import APPLIED_KEY
from streams.terminal_store import TerminalStore
from streams.user_store import UserStore

log = logging.getLogger("riskstream.worker")
T = TypeVar("T")  # what a tombstone is sent for: (user id, partition) or a terminal id
K = TypeVar("K")  # what the sweep looks at: (user id, partition) or a terminal id

# Tombstones: (user id, changelog partition) -> the delivery futures of their records.
SendTombstones = Callable[[list[tuple[str, int]]], Awaitable[Sequence[asyncio.Future[Any]]]]


@dataclass
class SweepResult:
    watermark_ms: int | None = None
    checked: int = 0
    deleted: int = 0
    unreadable: int = 0
    interrupted: bool = False  # stopped early: a rebalance began


class StateSweeper:
    """Finds and deletes expired user states, a chunk at a time."""

    def __init__(
        self,
        processor: BatchProcessor,
        config: FeatureConfig,
        states: UserStore,
        send_tombstones: SendTombstones,
        *,
        lock: asyncio.Lock,
        owned: Callable[[], set[int]],
        paused: Callable[[], bool],
        now_ms: Callable[[], float] = lambda: time.time() * 1000.0,
        chunk: int = 500,
    ) -> None:
        self.processor = processor
        self.config = config
        self.states = states
        self.send_tombstones = send_tombstones
        self.lock = lock
        self.owned = owned
        self.paused = paused
        self.now_ms = now_ms
        self.chunk = chunk

    async def sweep(self) -> SweepResult:
        res = SweepResult(watermark_ms=self.processor.watermark.value(self.now_ms()))
        if res.watermark_ms is None or self.paused():
            return res
        cutoff = expiry_cutoff(res.watermark_ms, self.config)
        owned = self.owned()
        await _in_chunks(
            chunks(self.states.entries(), self.chunk),
            self.lock,
            self.paused,
            lambda keys: self._expired(keys, cutoff, owned, res),
            self.send_tombstones,
            res,
        )
        return res

    def _expired(
        self, keys: list[tuple[str, int]], cutoff: int, owned: set[int], res: SweepResult
    ) -> list[tuple[str, int]]:
        """Delete the expired states among ``keys`` from the store; synchronous (no await), so
        no batch or flush sees a state half-deleted."""
        p = self.processor
        states = self.states
        gone: list[tuple[str, int]] = []
        for uid, part in keys:
            if part not in owned or uid in p.dirty or uid in p.flushing:
                continue
            raw = states.get(uid)
            if raw is None:
                continue
            res.checked += 1
            try:
                expired = is_expired(raw, cutoff)
            except StateError as exc:
                res.unreadable += 1
                log.warning("state sweep: user %s has an unreadable state (kept): %s", uid, exc)
                continue
            if expired:
                states.put(uid, part, None)
                p.drop(uid)
                gone.append((uid, part))
        res.deleted += len(gone)
        return gone


def chunks(keys: list[K], n: int) -> Iterator[list[K]]:
    for i in range(0, len(keys), n):
        yield keys[i : i + n]


async def _in_chunks(
    key_chunks: Iterator[list[K]],
    lock: asyncio.Lock,
    stop: Callable[[], bool],
    expire: Callable[[list[K]], list[T]],
    send: Callable[[list[T]], Awaitable[Sequence[asyncio.Future[Any]]]],
    res: SweepResult,
) -> None:
    """The sweep loop of both sweepers: a chunk of keys at a time under ``lock`` (taking the
    chunk, deleting its expired keys from the store and handing their tombstones to the
    producer with no other writer in between), yielding to the event loop between chunks; stops
    when ``stop()`` says so. Then waits for the tombstones; one that fails is logged (its state
    comes back at the next recovery and a later sweep deletes it again)."""
    futures: list[asyncio.Future[Any]] = []
    while True:
        await asyncio.sleep(0)
        async with lock:
            if stop():
                res.interrupted = True
                break
            keys = next(key_chunks, None)
            if keys is None:
                break
            gone = expire(keys)
            if gone:
                futures += await send(gone)
    results = await asyncio.gather(*futures, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        log.warning("state sweep: %d tombstone batches not delivered: %r", len(failed), failed[0])


SendTerminalTombstones = Callable[[list[str]], Awaitable[Sequence[asyncio.Future[Any]]]]


class TerminalSweeper:
    """Deletes terminal states whose labels can no longer count for any feature."""

    def __init__(
        self,
        processor: BatchProcessor,
        config: FeatureConfig,
        own: MutableMapping[str, TerminalState],
        store: TerminalStore,
        send_tombstones: SendTerminalTombstones,
        *,
        lock: asyncio.Lock,
        owner: Callable[[], bool],
        paused: Callable[[], bool],
        now_ms: Callable[[], float] = lambda: time.time() * 1000.0,
        chunk: int = 500,
    ) -> None:
        self.processor = processor
        self.config = config
        self.lock = lock  # held by a label batch from changing its states to handing them over
        self.own = own  # the states this worker wrote, authoritative while it is the owner
        self.store = store
        self.send_tombstones = send_tombstones
        self.owner = owner
        self.paused = paused
        self.now_ms = now_ms
        self.chunk = chunk

    async def sweep(self) -> SweepResult:
        res = SweepResult(watermark_ms=self.processor.watermark.value(self.now_ms()))
        if res.watermark_ms is None or self.paused() or not self.owner():
            return res
        cutoff = terminal_expiry_cutoff(res.watermark_ms, self.config)
        await _in_chunks(
            self.store.key_chunks(self.chunk),
            self.lock,
            lambda: self.paused() or not self.owner(),
            lambda keys: self._expired(keys, cutoff, res),
            self.send_tombstones,
            res,
        )
        return res

    def _expired(self, keys: list[str], cutoff: int, res: SweepResult) -> list[str]:
        gone: list[str] = []
        for tid in keys:
            if tid == APPLIED_KEY:
                continue  # the terminal loop's position, not a terminal
            state = self.own.get(tid)
            if state is None:
                raw = self.store.get(tid)
                if raw is None:
                    continue
                try:
                    state = TerminalState.from_bytes(raw)
                except StateError as exc:
                    res.unreadable += 1
                    log.warning("state sweep: terminal %s has an unreadable state (kept): %s", tid, exc)
                    continue
            res.checked += 1
            if terminal_is_expired(state, cutoff):
                self.own.pop(tid, None)
                self.store.deleted(tid)
                self.processor.terminals.drop(tid)
                gone.append(tid)
        res.deleted += len(gone)
        return gone
