"""Other workers' labels, read straight from the terminal-labels topic, and how far each got.

Terminal risk mixes the labels of every user, and several workers split the labels topic's
partitions. A worker's own labels reach its scorer at once (``streams/terminal_overlay.py``);
another worker's reach it through the terminal loop and the global table's changelog, which
runs far behind while the workers catch up on a backlog. Nothing ordered them with this
worker's transactions either: measured with two workers catching up together, 232 of 240 scores
differed from the backtest's in 7 runs of 12 (DEVELOPERS.md, "Terminal state while catching up").

Two parts:

* **Progress records.** With every batch a worker forwards, after the batch's labels and in the
  same one-partition topic, a progress record (key :data:`PROGRESS_KEY`, the empty key, which no
  terminal id can be): for each labels partition it is assigned, the *floor*, the lowest Kafka
  timestamp a label of that partition not forwarded yet can have (:meth:`InputBuffer.label_floors
  <streams.input_buffer.InputBuffer.label_floors>`). Kafka orders the topic's partition, so a
  reader that has read a progress record has read every label it covers. A worker whose every
  buffered transaction waits also publishes its floors when they rose (the other worker may be
  waiting for them). The terminal loop skips these records.
* **The feed** (:class:`TerminalFeed`): every worker reads the terminal-labels topic itself, from
  the terminal table's position on (what the table holds already need not be read again). Labels
  that other workers, or an earlier process of this one, forwarded go into the overlay
  (:meth:`TerminalOverlay.add_fed <streams.terminal_overlay.TerminalOverlay.add_fed>`); its own
  (header :data:`WORKER_HEADER`) are in the overlay already and are skipped unread. Progress
  records give the floors of the partitions other workers own, and the input buffer holds a
  transaction back until they pass its timestamp minus the label allowance, for at most
  ``terminal_feed_max_wait_ms`` after the floor last changed (``streams/input_buffer.py``,
  ``LabelRule``).

A worker starts its feed once its tables are recovered, before its streams resume, and waits
(at most :data:`CATCH_UP_S`) until the feed has read what the topic held then: the labels a
previous process forwarded that the table does not hold yet are then in the overlay before the
first batch is scored. A worker holding every labels partition then pauses its feed (nobody
else forwards labels) and publishes no floors, until a rebalance gives some partitions away.
:class:`FeedState` is the pure part; :class:`TerminalFeed` the Kafka part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from modeling.errors import ValidationError
from modeling.records import parse_label
from streams.terminal_overlay import TerminalOverlay

log = logging.getLogger("riskstream.worker")

PROGRESS_KEY = b""  # terminal ids are never empty (modeling/records.py)
WORKER_HEADER = "riskstream-worker"
#: seconds a starting worker waits for its feed to read the topic's backlog
CATCH_UP_S = 30.0


def encode_progress(worker: bytes, floors: Mapping[int, float]) -> bytes:
    """A progress record's value: ``{"worker": id, "floors": {partition: seconds}}`` (Kafka
    timestamps, as the input buffer compares them)."""
    return orjson.dumps(
        {
            "worker": worker.decode(),
            # JSON has no infinities: null is "no bound", "-inf" "any label may come"
            "floors": {
                str(p): (None if f == math.inf else "-inf" if f == -math.inf else f)
                for p, f in floors.items()
            },
        }
    )


def decode_progress(raw: bytes) -> dict[int, float]:
    """Floors by labels partition (``inf``: no bound); a malformed record gives ``{}``."""
    try:
        doc = orjson.loads(raw)
        return {int(p): (math.inf if f is None else float(f)) for p, f in doc["floors"].items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return {}


class FeedState:
    """What the feed has read: floors by labels partition, and fed labels in the overlay.

    ``changed``: monotonic time each partition's floor last changed (the input buffer bounds a
    wait on a floor from then on)."""

    def __init__(
        self,
        worker: bytes,
        overlay: TerminalOverlay | None,
        *,
        max_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker = worker
        self.overlay = overlay
        self.max_bytes = max_bytes
        self.clock = clock
        self.floors: dict[int, float] = {}
        self.changed: dict[int, float] = {}
        self.counts = {"label": 0, "own": 0, "progress": 0, "unreadable": 0}

    def apply(
        self, offset: int, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]]
    ) -> bool:
        """One record of the terminal-labels topic; True when a floor changed."""
        own = any(k == WORKER_HEADER and v == self.worker for k, v in headers or ())
        if key == PROGRESS_KEY:
            self.counts["progress"] += 1
            if own or value is None:
                return False
            changed = False
            now = self.clock()
            for p, floor in decode_progress(value).items():
                if self.floors.get(p) != floor:
                    self.floors[p] = floor
                    self.changed[p] = now
                    changed = True
            return changed
        if own:
            self.counts["own"] += 1
            return False
        if value is None:
            return False
        try:
            label = parse_label(value, self.max_bytes)
        except ValidationError:
            self.counts["unreadable"] += 1  # the terminal loop forwards only parsed labels
            return False
        self.counts["label"] += 1
        if self.overlay is not None:
            self.overlay.add_fed(label, offset)
        return False


class TerminalFeed:
    """Reads the terminal-labels topic's one partition into a :class:`FeedState`.

    ``make_consumer``: builds an ``AIOKafkaConsumer`` without a group (the feed assigns its
    partition itself and commits nothing), called on the event loop at :meth:`start`.
    ``on_progress``: called when a floor changed.
    """

    def __init__(
        self,
        make_consumer: Callable[[], Any],
        topic: str,
        state: FeedState,
        on_progress: Callable[[], object],
    ) -> None:
        self.make_consumer = make_consumer
        self.consumer: Any = None
        self.topic = topic
        self.state = state
        self.on_progress = on_progress
        self.started = False
        self.paused = False
        self.caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tp: Any = None
        self._target = 0

    async def start(self, position: int | None, *, catch_up_s: float = CATCH_UP_S) -> None:
        """Read from ``position`` (the table's; None: the topic's beginning) and wait, at most
        ``catch_up_s``, until the feed has read what the topic held when it started."""
        from aiokafka import TopicPartition

        if self.started:
            return
        self.started = True
        c = self.consumer = self.make_consumer()
        await c.start()
        self._tp = TopicPartition(self.topic, 0)
        c.assign([self._tp])
        await self._read_from(position, catch_up_s)

    async def pause(self) -> None:
        """Stop reading (this worker holds every labels partition: nobody else forwards labels,
        and its own are in the overlay already) until :meth:`resume`."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self.consumer.pause(self._tp)
        self.paused = True
        log.info("terminal feed paused: this worker holds every labels partition")

    async def resume(self, position: int | None, *, catch_up_s: float = CATCH_UP_S) -> None:
        """Read again, from ``position`` (the table's now), as :meth:`start` does."""
        if not self.paused or self.consumer is None:
            return
        self.paused = False
        self.consumer.resume(self._tp)
        await self._read_from(position, catch_up_s)

    async def _read_from(self, position: int | None, catch_up_s: float) -> None:
        c, tp = self.consumer, self._tp
        if position is None:
            await c.seek_to_beginning(tp)
        else:
            c.seek(tp, position)
        self._target = (await c.end_offsets([tp]))[tp]
        start = await c.position(tp)
        self.caught_up.clear()
        if start >= self._target:
            self.caught_up.set()
        self._task = asyncio.ensure_future(self._run(tp))
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(self.caught_up.wait()), catch_up_s)
        except TimeoutError:
            log.warning(
                "terminal feed: %d of %d forwarded labels read in %.0f s; scoring goes on while it reads",
                await c.position(tp) - start,
                self._target - start,
                catch_up_s,
            )
        else:
            log.info(
                "terminal feed: read %d records of the terminal-labels topic from offset %d in %.2f s",
                self._target - start,
                start,
                time.monotonic() - t0,
            )

    async def _run(self, tp: Any) -> None:
        from aiokafka.errors import KafkaError, OffsetOutOfRangeError

        state, c = self.state, self.consumer
        while True:
            try:
                batches = await c.getmany(tp, timeout_ms=500, max_records=4096)
            except OffsetOutOfRangeError:
                # the position's records were deleted by retention: what is left, from the start
                log.warning("terminal feed: offset out of range; reading from the topic's beginning")
                await c.seek_to_beginning(tp)
                continue
            except KafkaError as exc:
                log.warning("terminal feed: %r; retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            changed = False
            for rec in batches.get(tp, ()):
                changed |= state.apply(rec.offset, rec.key, rec.value, rec.headers)
            if changed:
                self.on_progress()
            if not self.caught_up.is_set() and await c.position(tp) >= self._target:
                self.caught_up.set()

    async def stop(self) -> None:
        """Stop reading; :meth:`start` may be called again."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
        self.started = self.paused = False
        self.caught_up.clear()
