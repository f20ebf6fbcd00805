"""The terminal loop: labels forwarded to the terminal-labels topic (keyed by terminal, one
partition) folded into the global terminal table, whose changelog every worker reads.

Exactly one worker owns the topic's partition at a time. Its batches write each touched
terminal's state and then the loop's position (:data:`~streams.terminal_overlay.APPLIED_KEY`)
to the terminal changelog, in that order, in one partition: a table holding the position holds
every label below it (``streams/terminal_overlay.py``). Records of other workers' terminal
feeds (:data:`~streams.terminal_feed.PROGRESS_KEY`) share the topic and are skipped here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from modeling.errors import ValidationError
from modeling.features import FeatureEngine, TerminalState
from modeling.features.state import terminal_decoded_bytes
from modeling.records import parse_label
from modeling.settings import Settings
from streams.metrics import Metrics
from streams.output import BatchOutput
from streams.terminal_feed import PROGRESS_KEY
from streams.terminal_overlay import APPLIED_KEY, decode_position, encode_position
from streams.terminal_store import TerminalStore
from streams.unreadable import KIND_TERMINAL_STATE, dead_letter_record, input_dead_letter, terminal_or_new

log = logging.getLogger("riskstream.worker")


class WrittenTerminals(MutableMapping[str, TerminalState]):
    """The terminal states this worker wrote, decoded, bounded by their estimated memory.

    The loop builds on these, not on the table: the global table reads every changelog record
    back, its own included, and a record read back after a newer write replaces that write with
    an older state. A state may leave only once the table has read back the batch that last
    wrote it: the loop's position (:data:`~streams.terminal_overlay.APPLIED_KEY`) follows a
    batch's states in the changelog's one partition, so a table holding a position at or past
    that batch's holds the state. Past ``max_bytes`` the least recently written such states go
    (:meth:`trim`), and are decoded from the table when next labelled. Unbounded, this held
    every labelled terminal decoded: about 8.3 KB each on handbook_dev, ten times its
    serialized state (DEVELOPERS.md, "The terminal loop's states")."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._d: dict[str, tuple[TerminalState, int, int]] = {}  # least recently written first
        self.bytes = 0  # estimated decoded bytes held
        self.evictions = 0

    def __getitem__(self, tid: str) -> TerminalState:
        return self._d[tid][0]

    def __setitem__(self, tid: str, state: TerminalState) -> None:
        """A state read from the table (nothing of it unwritten): weighed at its serialized size."""
        self.wrote(tid, state, -1, len(state.to_bytes()))

    def __delitem__(self, tid: str) -> None:
        self.bytes -= self._d.pop(tid)[2]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        self._d.clear()
        self.bytes = 0

    def wrote(self, tid: str, state: TerminalState, position: int, snapshot_len: int) -> None:
        """``state`` was written by the batch whose loop position is ``position`` (-1: none)."""
        old = self._d.pop(tid, None)
        if old is not None:
            self.bytes -= old[2]
        w = terminal_decoded_bytes(snapshot_len)
        self._d[tid] = (state, position, w)
        self.bytes += w

    def trim(self, held: int | None) -> None:
        """Past the bound, drop the least recently written states of batches at or before
        ``held``, the loop position the table has read back (None: none yet). The loop's
        positions only grow, so the states are in the order of their positions too: the first
        one not read back ends the walk (no walk over every state while the table lags)."""
        if self.bytes <= self.max_bytes:
            return
        gone = []
        over = self.bytes - self.max_bytes
        for tid, (_, position, w) in self._d.items():
            if position > (-1 if held is None else held):
                break
            gone.append(tid)
            over -= w
            if over <= 0:
                break
        for tid in gone:
            del self[tid]
        self.evictions += len(gone)


class TerminalLoop:
    """Folds label batches into the terminal table (:meth:`handle`) and deletes expired
    terminals (:meth:`send_tombstones`, for ``streams/retention.py``'s sweeper)."""

    def __init__(
        self,
        engine: FeatureEngine,
        settings: Settings,
        metrics: Metrics,
        out: BatchOutput,
        store: TerminalStore,
        changelog: str,
        keys: Callable[[str], bytes],
        labels_topic: str,
        dead_letter_room: int,
    ) -> None:
        """``dead_letter_room``: what a dead letter keeps of a value
        (streams.broker.topics.dead_letter_room)."""
        self.engine = engine
        self.dead_room = dead_letter_room
        self.settings = settings
        self.metrics = metrics
        self.out = out
        self.store = store  # the global table's store: every terminal (streams/terminal_store.py)
        self.changelog = changelog
        self.keys = keys
        self.labels_topic = labels_topic
        # The terminal states this worker wrote, authoritative while it owns the terminal-labels
        # partition: it must not build on the store, because the global table reads every
        # changelog record back into the store, its own included, and a record read back after
        # a newer write replaces that write with an older state; building on that lost labels
        # (SIGKILL test's terminal-state check). The scorer reads the store: a moment stale at
        # worst.
        self.own = WrittenTerminals(settings.terminal_loop_cache_mb << 20)
        self.lock = asyncio.Lock()  # label batches and the terminal sweep (streams/retention.py)
        self._cpu = metrics.stage_cpu_seconds.labels("terminal_labels")

    async def handle(self, taken: list[tuple[float, Any]]) -> list[Any]:
        async with self.lock:
            return await self._handle(taken)

    async def _handle(self, taken: list[tuple[float, Any]]) -> list[Any]:
        t0 = time.thread_time()
        touched: dict[str, TerminalState] = {}
        store = self.store
        records: list[Any] = []
        for _, m in taken:
            if m.key == PROGRESS_KEY:
                continue  # another worker's label floors, for the terminal feeds
            try:
                lb = parse_label(m.value, self.settings.max_message_bytes)
            except ValidationError as exc:  # not a worker's forwarded label: another writer's
                self._dead_letter(m, exc, records)
                continue
            ts = touched.get(lb.terminal_id)
            if ts is None:
                ts = self.own.get(lb.terminal_id)
                if ts is None:
                    raw = store.get(lb.terminal_id)  # recovered from the changelog
                    ts = TerminalState() if raw is None else self._decode(lb.terminal_id, raw, records)
                touched[lb.terminal_id] = ts
            self.engine.terminal_label(ts, lb)
        # The loop's position after these states, in the same changelog partition: a table
        # holding it holds every label below it (streams/terminal_overlay.py). Not written to the
        # store here: the store gets it when the changelog is read back, after these states. A
        # read-back of an older batch replaces newer states written above with older ones, and
        # a position written here would then claim labels the store no longer holds.
        position = max(m.offset for _, m in taken) + 1
        for tid, ts in touched.items():
            raw = ts.to_bytes()
            records.append((self.changelog, 0, self.keys(tid), raw, None))  # one partition
            store.written(tid, raw)
            self.own.wrote(tid, ts, position, len(raw))
        records.append((self.changelog, 0, self.keys(APPLIED_KEY), encode_position(position), None))
        self.own.trim(decode_position(store.get(APPLIED_KEY)))
        self.metrics.events_in.labels(self.labels_topic).inc(len(taken))
        self._cpu.inc(time.thread_time() - t0)
        return await self.out.send(records)

    def _dead_letter(self, m: Any, exc: ValidationError, records: list[Any]) -> None:
        """A record of the terminal-labels topic that is no label: the workers forward only
        labels that passed validation, so something else wrote it (another release, a tool).
        Dead-lettered as input is, so that it cannot stop the loop on every restart."""
        dead = self.settings.topic_dead_letter
        records.append(dead_letter_record(dead, input_dead_letter(m, exc), self.dead_room))
        self.metrics.dead_letters.labels(self.labels_topic, exc.field).inc()
        self.metrics.events_out.labels(dead).inc()
        log.warning("%s[%d]@%d is not a label (%s): dead-lettered", m.topic, m.partition, m.offset, exc)

    def _decode(self, tid: str, raw: bytes, records: list[Any]) -> TerminalState:
        """A stored terminal state; an unreadable one is dead-lettered into ``records`` and the
        terminal starts over, as in the scorer (streams/unreadable.py)."""
        ts, dead = terminal_or_new(tid, raw)
        if dead is not None:
            records.append(dead_letter_record(self.settings.topic_dead_letter, dead, self.dead_room))
            self.metrics.record_unreadable(KIND_TERMINAL_STATE, self.settings.topic_dead_letter)
        return ts

    async def send_tombstones(self, gone: list[str]) -> list[Any]:
        return await self.out.send([(self.changelog, 0, self.keys(tid), None, None) for tid in gone])
