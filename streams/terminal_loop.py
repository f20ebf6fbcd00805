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
from collections.abc import Callable
from typing import Any

from modeling.errors import ValidationError
from modeling.features import FeatureEngine, TerminalState
from modeling.records import parse_label
from modeling.settings import Settings
from streams.metrics import Metrics
from streams.output import BatchOutput
from streams.terminal_feed import PROGRESS_KEY
from streams.terminal_overlay import APPLIED_KEY, encode_position
from streams.unreadable import KIND_TERMINAL_STATE, dead_letter_record, input_dead_letter, terminal_or_new

log = logging.getLogger("riskstream.worker")


class TerminalLoop:
    """Folds label batches into the terminal table (:meth:`handle`) and deletes expired
    terminals (:meth:`send_tombstones`, for ``streams/retention.py``'s sweeper)."""

    def __init__(
        self,
        engine: FeatureEngine,
        settings: Settings,
        metrics: Metrics,
        out: BatchOutput,
        store: Callable[[], dict[str, bytes]],
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
        self.store = store  # the table's store (the global table: every terminal)
        self.changelog = changelog
        self.keys = keys
        self.labels_topic = labels_topic
        # The terminal states this worker wrote, authoritative while it owns the terminal-labels
        # partition: it must not build on the store, because the global table reads every
        # changelog record back into the store, its own included, and a record read back after
        # a newer write replaces that write with an older state; building on that lost labels
        # (SIGKILL test's terminal-state check). The scorer reads the store: a moment stale at
        # worst.
        self.own: dict[str, TerminalState] = {}
        self.lock = asyncio.Lock()  # label batches and the terminal sweep (streams/retention.py)
        self._cpu = metrics.stage_cpu_seconds.labels("terminal_labels")

    async def handle(self, taken: list[tuple[float, Any]]) -> list[Any]:
        async with self.lock:
            return await self._handle(taken)

    async def _handle(self, taken: list[tuple[float, Any]]) -> list[Any]:
        t0 = time.thread_time()
        touched: dict[str, TerminalState] = {}
        store = self.store()
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
                    self.own[lb.terminal_id] = ts
                touched[lb.terminal_id] = ts
            self.engine.terminal_label(ts, lb)
        for tid, ts in touched.items():
            raw = ts.to_bytes()
            records.append((self.changelog, 0, self.keys(tid), raw, None))  # one partition
            store[tid] = raw
        # The loop's position after these states, in the same changelog partition: a table
        # holding it holds every label below it (streams/terminal_overlay.py). Not written to the
        # store here: the store gets it when the changelog is read back, after these states. A
        # read-back of an older batch replaces newer states written above with older ones, and
        # a position written here would then claim labels the store no longer holds.
        nxt = encode_position(max(m.offset for _, m in taken) + 1)
        records.append((self.changelog, 0, self.keys(APPLIED_KEY), nxt, None))
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
