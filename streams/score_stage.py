"""The scoring loop's stage: what the worker does with a micro-batch of input messages.

:class:`ScoreStage` turns what the scoring :class:`streams.batch_loop.BatchLoop` took into
:class:`streams.pipeline.InMessage` records, runs them through
:class:`streams.pipeline.BatchProcessor`, sends the risk events, dead letters and forwarded
labels, and owns the coalesced user-state writes (:class:`streams.state_flush.StateFlusher`).
``streams/app.py`` builds it and hands :attr:`ScoreStage.handle` to the loop. The order it
keeps, each rule commented where it is kept:

* no ``await`` between a batch's processing and its flush epoch: the batch's state changes are
  in that epoch's flush (``streams/state_flush.py``);
* a batch's outputs reach the producer before any state snapshot that holds the batch
  (``streams/output_gate.py``);
* a labels-progress record goes after the labels it claims as forwarded
  (``streams/terminal_feed.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from modeling.settings import Settings
from streams.batch_loop import Taken
from streams.input_buffer import InputBuffer
from streams.metrics import Metrics
from streams.output import BatchOutput, ChangelogKeys, OutRecord
from streams.output_gate import OutputGate
from streams.pipeline import BatchProcessor, BatchResult, InMessage, Prepared
from streams.state_flush import StateFlusher, fail
from streams.terminal_feed import PROGRESS_KEY, WORKER_HEADER, TerminalFeed, encode_progress
from streams.unreadable import dead_letter_record
from streams.user_store import Change, Sent, UserStore

FLUSH_CHUNK = 256  # user states serialized between two yields to the event loop


class ScoreStage:
    """The scoring loop's batch handler (:attr:`handle`) and the user-state flush behind it."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        processor: BatchProcessor,
        out: BatchOutput,
        *,
        kinds: dict[str, str],
        in_buffer: InputBuffer,
        feed: TerminalFeed | None,
        users: Any,
        user_keys: ChangelogKeys,
        states: UserStore,
        term_name: str,
        worker_id: bytes,
        dead_letter_room: int,
    ) -> None:
        """``kinds``: input topic -> record kind; ``users``: the user-state table (Faust), whose
        changelog keys ``user_keys`` makes and whose states ``states`` reads and writes
        (streams/user_store.py);
        ``term_name``: the terminal-labels topic; ``worker_id``: this worker's id in the records
        it forwards there; ``dead_letter_room``: what a dead letter keeps of a value
        (streams.broker.topics.dead_letter_room)."""
        self.settings = settings
        self.dead_room = dead_letter_room
        self.metrics = metrics
        self.processor = processor
        self.out = out
        self.kinds = kinds
        self.in_buffer = in_buffer
        self.feed = feed
        self.users = users
        self.states = states
        self.user_log = users.changelog_topic.get_topic_name()
        self.user_keys = user_keys
        self.term_name = term_name
        self.worker_id = worker_id
        self.own_header = [(WORKER_HEADER, worker_id)]
        # CPU time of the loop thread per stage (synchronous stretches only: no await inside)
        self.cpu_score = metrics.stage_cpu_seconds.labels("score")
        self.cpu_flush = metrics.stage_cpu_seconds.labels("state_flush")
        self.gates = OutputGate()  # outputs before state (streams/output_gate.py)
        self.flusher = StateFlusher(self.flush_user_states, settings.state_flush_interval_ms / 1000.0)
        self.published: dict[int, float] = {}  # the label floors last sent
        self.progress_sends: set[asyncio.Future[Any]] = set()
        # With the model in a child process (settings.inference_process) its call is awaited,
        # and batches overlap: batch N+1 is featurized while batch N is in the model. At most
        # one batch is in the model and one being prepared; risk events leave in batch order.
        self.scoring: list[asyncio.Future[list[Any]]] = []  # the batch in the model, if any
        self.handle = self.handle_overlapped if settings.inference_process else self.handle_batch

    # -- input -----------------------------------------------------------------------------

    def to_messages(self, taken: Taken) -> list[InMessage]:
        batch = []
        per_topic: Counter[str] = Counter()
        kinds = self.kinds
        for received, m in taken:
            per_topic[m.topic] += 1
            ts = int(m.timestamp * 1000) if m.timestamp else int(time.time() * 1000)
            kind = kinds[m.topic]
            batch.append(InMessage(kind, m.topic, m.partition, m.offset, m.key, m.value, ts, received))
        for topic, n in per_topic.items():
            self.metrics.events_in.labels(topic).inc(n)
        return batch

    # -- labels progress (streams/terminal_feed.py) ----------------------------------------

    def progress_record(self, floors: dict[int, float]) -> OutRecord:
        self.published = floors
        return (self.term_name, 0, PROGRESS_KEY, encode_progress(self.worker_id, floors), self.own_header)

    def publish_floors(self) -> None:
        """The scoring loop waits for another worker's labels: its own floors may have risen
        since its last batch (that worker may be waiting for them). Only with no batch between
        take and emit, whose labels a floor would claim as forwarded."""
        feed = self.feed
        if feed is None or feed.paused or any(not task.done() for task in self.scoring):
            return
        floors = self.in_buffer.label_floors()
        if floors and floors != self.published:
            task = asyncio.ensure_future(self.out.send([self.progress_record(floors)]))
            self.progress_sends.add(task)  # a progress record lost is superseded by the next
            task.add_done_callback(self.progress_sends.discard)

    def floors_now(self) -> dict[int, float]:
        # nobody reads them while this worker holds every labels partition (its feed is paused)
        feed = self.feed
        return self.in_buffer.label_floors() if feed is not None and not feed.paused else {}

    # -- a batch ---------------------------------------------------------------------------

    async def emit(self, res: BatchResult, floors: dict[int, float]) -> list[Any]:
        term_name, own_header = self.term_name, self.own_header
        risk_name, dead_name = self.settings.topic_risk_events, self.settings.topic_dead_letter
        records: list[Any] = [(risk_name, None, key, value, None) for key, value in res.risk_events]
        records += [dead_letter_record(dead_name, dl, self.dead_room) for dl in res.dead_letters]
        records += [(term_name, 0, key, value, own_header) for key, value in res.terminal_labels]
        if floors and floors != self.published:
            # after the batch's labels: a reader of this record has read them
            records.append(self.progress_record(floors))
        sent = await self.out.send_counted(records)
        futures = [fut for fut, _, _, _ in sent]
        if res.forwarded is not None:  # where they landed: streams/terminal_overlay.py
            res.forwarded.batches = [(fut, n) for fut, topic, _, n in sent if topic == term_name]
        if len(self.processor.dirty) >= self.settings.state_flush_max_users:
            self.flusher.wake()  # the interval is the flusher task's own timer
        self.metrics.record_batch(res, risk_name, dead_name)
        return futures

    async def handle_batch(self, taken: Taken) -> list[Any]:
        floors = self.floors_now()  # what this batch takes is forwarded with it
        batch = self.to_messages(taken)
        t0 = time.thread_time()
        res = self.processor.process(batch)
        self.cpu_score.inc(time.thread_time() - t0)
        # No await between process() and epoch(): the batch's states are in the epoch's flush,
        # and none before the gate (the flush waits for this batch's outputs).
        flushed = self.flusher.epoch()
        gate = self.gates.open()
        await self.gates.through(gate, self.emit(res, floors))
        return [gate, flushed]  # the gate closes when the batch's outputs are delivered

    async def handle_overlapped(self, taken: Taken) -> list[Any]:
        floors = self.floors_now()
        batch = self.to_messages(taken)
        t0 = time.thread_time()
        prep = self.processor.prepare(batch)
        self.cpu_score.inc(time.thread_time() - t0)
        flushed = self.flusher.epoch()  # no await since prepare(): its states are in this epoch
        gate = self.gates.open()
        scoring = self.scoring
        try:
            if scoring:
                await asyncio.wait(scoring)  # its failure crashes the worker through its acks
                scoring.clear()
        except BaseException as exc:
            fail(gate, exc)
            raise
        task = asyncio.ensure_future(self.gates.through(gate, self._complete(prep, floors)))
        scoring.append(task)
        return [asyncio.ensure_future(_delivered(task, flushed))]

    async def _complete(self, prep: Prepared, floors: dict[int, float]) -> list[Any]:
        res = await self.processor.process_async(prep)
        self.cpu_score.inc(res.cpu_s)
        return await self.emit(res, floors)

    # -- user state ------------------------------------------------------------------------

    async def flush_user_states(self) -> list[Any]:
        """State writes: the table's store, plus a changelog record in the user's input
        partition (where Faust's table recovery looks for it). ``begin_flush()`` runs before the
        first await. Serializing a month of history takes about 0.1 ms per user, so the flush
        yields to the event loop between chunks rather than stall it for the whole set."""
        processor = self.processor
        taken = processor.begin_flush()
        put = self.states.put
        user_log, user_keys, cpu_flush = self.user_log, self.user_keys, self.cpu_flush
        futures: list[Any] = []
        snapshot = processor.snapshot
        for i in range(0, len(taken), FLUSH_CHUNK):
            if i:
                await asyncio.sleep(0)
            t0 = time.thread_time()
            records: list[Any] = []
            changes: list[Change] = []
            for uid, part, st in taken[i : i + FLUSH_CHUNK]:
                raw = snapshot(uid, st)
                put(uid, part, raw)  # memory: and its partition, as recovery records it
                changes.append((uid, part, raw))
                records.append((user_log, part, user_keys(uid), raw, None))
            cpu_flush.inc(time.thread_time() - t0)
            await self.gates.delivered()  # the outputs of the batches in these snapshots
            futures += self._send_changes(await self.out.send_counted(records), changes)
        processor.end_flush()
        self.metrics.state_flush_users.observe(len(taken))
        return futures

    async def send_tombstones(self, gone: list[tuple[str, int]]) -> list[Any]:
        """Delete expired users' states from the changelog (streams/retention.py)."""
        user_log, user_keys = self.user_log, self.user_keys
        records: list[OutRecord] = [(user_log, part, user_keys(uid), None, None) for uid, part in gone]
        sent = await self.out.send_counted(records)
        return self._send_changes(sent, [(uid, part, None) for uid, part in gone])

    def _send_changes(self, sent: Sent, changes: list[Change]) -> list[Any]:
        """The delivery futures of a send of user-state changelog records; the disk store
        writes ``changes`` as they are delivered (streams/user_store.py)."""
        self.states.track(sent, changes)
        return [fut for fut, _, _, _ in sent]


async def _delivered(task: asyncio.Future[list[Any]], flushed: asyncio.Future[Any]) -> None:
    await asyncio.gather(*await task, flushed)
