"""The worker's processing loop: take a micro-batch, handle it, ack it once its output is delivered.

One loop per :class:`streams.intake.InputBuffer`. Per batch:

1. :meth:`InputBuffer.take` — up to ``max_n`` messages, at most ``max_wait_s`` after the first
   (and, with ``max_age_s``, at most that after the oldest one's Kafka timestamp).
2. Flow control: while Faust is rebalancing the loop waits; messages fetched under an older
   consumer generation are dropped untracked (the partition's next owner fetches them again from
   the committed offset), exactly as a Faust ``Stream`` skips them.
3. Each message is tracked (as ``Consumer.track_message`` does: Faust now waits for its ack
   before it gives the partition away or stops).
4. ``handle`` runs the batch and returns the delivery futures of what it produced.
5. The batch is acked when every future succeeded, and batches are acked in the order they were
   taken (a later batch whose records were delivered first waits): Faust commits the first run
   of consecutive acked offsets per partition and does not check that the run starts at the
   committed offset (``Consumer._new_offset``), so out-of-order acks could commit past a batch
   still in flight. Faust flushes the producer before each commit, so an input offset is
   committed only after the broker acknowledged its risk event. A failed delivery leaves the batch unacked
   and crashes the worker: the restarted worker (or the partition's next owner) processes it
   again, and idempotent state updates plus transaction ids keep that harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.intake import InputBuffer

log = logging.getLogger("riskstream.worker")

Taken = list[tuple[float, Any]]  # (monotonic receipt time, faust ConsumerMessage)
Handler = Callable[[Taken], Awaitable[Sequence[asyncio.Future[Any]]]]


class InOrderAcks:
    """Acks batches in the order they were taken, each once all its deliveries succeeded.

    ``add(futures, messages)`` registers a batch; when the oldest registered batches are all
    delivered they are acked (``ack(message)`` for each) and forgotten. A failed delivery stops
    acking there for good and calls ``on_failure(exc, messages)``.
    """

    def __init__(
        self, ack: Callable[[Any], object], on_failure: Callable[[BaseException, list[Any]], None]
    ) -> None:
        self._ack = ack
        self._on_failure = on_failure
        self._pending: deque[tuple[asyncio.Future[Any] | None, list[Any]]] = deque()
        self.failed = False

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, futures: Sequence[asyncio.Future[Any]], messages: list[Any]) -> None:
        done = asyncio.gather(*futures) if futures else None
        self._pending.append((done, messages))
        if done is None:
            self._drain()
        else:
            done.add_done_callback(self._delivered)

    def _drain(self) -> None:
        q = self._pending
        while q and not self.failed:
            done, msgs = q[0]
            if done is not None and not (done.done() and not done.cancelled() and done.exception() is None):
                return
            q.popleft()
            for m in msgs:
                self._ack(m)

    def _delivered(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self._drain()
            return
        if not self.failed:
            self.failed = True
            self._on_failure(exc, next(m for d, m in self._pending if d is fut))


class BatchLoop:
    def __init__(
        self,
        app: Any,
        name: str,
        buffer: InputBuffer,
        max_n: int,
        max_wait_s: float,
        handle: Handler,
        max_age_s: float = 0.0,
    ) -> None:
        self.app = app
        self.name = name
        self.buffer = buffer
        self.max_n = max_n
        self.max_wait_s = max_wait_s
        self.max_age_s = max_age_s
        self.handle = handle
        self._crash: asyncio.Future[Any] | None = None  # holds the crash task while it runs
        self.acks = InOrderAcks(lambda m: self.app.consumer.ack(m), self._failed)

    async def run(self) -> None:
        try:
            while not self.app.should_stop:
                await self.run_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s loop failed; stopping the worker", self.name)
            await self.app.crash(exc)
            raise

    async def run_once(self) -> None:
        app = self.app
        taken = await self.buffer.take(self.max_n, self.max_wait_s, self.max_age_s)
        if not app.flow_control.is_active():
            await app.flow_control.acquire()
        gen = app.consumer_generation_id
        batch = [x for x in taken if x[1].generation_id == gen]
        if not batch:
            return
        # Track as a Faust Stream does (Consumer.track_message without its per-message sensor):
        # Faust now waits for these acks before it hands the partition over or stops.
        unacked = app.consumer._unacked_messages
        msgs = [m for _, m in batch]
        for m in msgs:
            m.tracked = True
        unacked.update(msgs)
        futures = await self.handle(batch)
        self.acks.add(futures, msgs)

    def _failed(self, exc: BaseException, msgs: list[Any]) -> None:
        first = msgs[0]
        log.error(
            "%s: delivery failed for a batch of %d starting at %s[%d]@%d: %r; not acking, stopping",
            self.name,
            len(msgs),
            first.topic,
            first.partition,
            first.offset,
            exc,
        )
        self._crash = asyncio.ensure_future(self.app.crash(exc))
