"""Coalesced table writes: each dirty user state is snapshotted once per flush, not once per batch.

With a month of history a user's snapshot is a few kilobytes, and a busy user appears in most
micro-batches; writing every touched state after every batch made ``msgpack.packb`` and the
changelog records the worker's largest cost (DEVELOPERS.md, "Profile of the demo's worker").
Instead the batch loop leaves touched states dirty in :class:`streams.pipeline.BatchProcessor`
and a :class:`StateFlusher` writes them out every ``interval_s`` (sooner once ``max_dirty``
users are dirty).

At-least-once still holds: a batch is acked only after its own records *and* the flush that
holds its state changes were delivered. Each batch takes the flusher's current :meth:`epoch`, a
future that the next flush resolves once the broker acknowledged its records; the batch loop
adds it to the batch's delivery futures. Taking the epoch and marking states dirty happen with
no ``await`` in between, and a flush swaps the epoch in the same step as it takes the dirty
states, so a batch's state is always in the flush its epoch belongs to. A crash before the
flush leaves the batch's offsets uncommitted: it is processed again against the older state,
which the per-partition ``applied`` offsets in each state make harmless.

Rebalances and shutdown: Faust waits for every tracked message to be acked before it gives
partitions away or stops (``Consumer.wait_empty``). The flusher keeps running through that wait
(it is not stopped by ``app.should_stop``, only cancelled with the app's tasks), so the pending
batches are flushed and acked within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

log = logging.getLogger("riskstream.worker")

Flush = Callable[[], Awaitable[Sequence[asyncio.Future[Any]]]]


class StateFlusher:
    """Runs ``flush`` (which takes the dirty states and returns their delivery futures) every
    ``interval_s``, or as soon as :meth:`wake` is called; resolves the epoch futures."""

    def __init__(
        self,
        flush: Flush,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._flush = flush
        self.interval_s = interval_s
        self._clock = clock
        self._epoch: asyncio.Future[None] | None = None
        self._pending = False  # a batch took the current epoch: its states await a flush
        self._pending_since = 0.0
        self._wake = asyncio.Event()  # flush now
        self._armed = asyncio.Event()  # a batch is waiting for a flush
        self._lock = asyncio.Lock()  # flushes go out one after another, in order

    def epoch(self) -> asyncio.Future[None]:
        """The future of the next flush; call it right after marking states dirty (no await
        in between)."""
        if self._epoch is None:
            self._epoch = asyncio.get_running_loop().create_future()
        if not self._pending:
            self._pending = True
            self._pending_since = self._clock()
            self._armed.set()
        return self._epoch

    @property
    def lock(self) -> asyncio.Lock:
        """Held from a flush's taking of the dirty states to its records' hand-over to the
        producer; whoever else writes the state changelog (streams/retention.py) takes it too."""
        return self._lock

    @property
    def pending(self) -> bool:
        return self._pending

    def wake(self) -> None:
        """Flush now (from the flusher's task) rather than at the end of the interval."""
        self._wake.set()

    def _remaining(self) -> float:
        """Seconds until the oldest unflushed change is ``interval_s`` old."""
        return self.interval_s - (self._clock() - self._pending_since)

    def due(self) -> bool:
        """Whether the oldest unflushed change is ``interval_s`` old."""
        return self._pending and self._remaining() <= 0

    async def flush(self) -> None:
        """Write what is dirty now; the current epoch resolves when its records are delivered.
        Flushes are serialized, so a user's snapshots reach the changelog in order."""
        async with self._lock:
            if not self._pending:
                return
            epoch, self._epoch, self._pending = self._epoch, None, False
            try:
                futures = await self._flush()  # takes the dirty states before its first await
            except BaseException as exc:
                if epoch is not None:
                    fail(epoch, exc)
                raise
        if epoch is not None:
            resolve_when_delivered(epoch, futures)

    async def run(self) -> None:
        """The flusher's task: until cancelled (it must outlive ``app.should_stop``, see the
        module docstring). Idle, it sleeps until a batch takes an epoch."""
        while True:
            if not self._pending:
                await self._armed.wait()
            self._armed.clear()
            remaining = self._remaining()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            self._wake.clear()
            await self.flush()


def fail(fut: asyncio.Future[None], exc: BaseException) -> None:
    """Fail ``fut`` with ``exc`` (a cancellation or exit becomes a RuntimeError), unless done."""
    if not fut.done():
        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))


def resolve_when_delivered(epoch: asyncio.Future[None], futures: Sequence[asyncio.Future[Any]]) -> None:
    """Resolve ``epoch`` once every one of ``futures`` is (its first failure, or cancelled)."""
    if not futures:
        if not epoch.done():
            epoch.set_result(None)
        return
    done = asyncio.gather(*futures)

    def _finish(fut: asyncio.Future[Any]) -> None:
        if epoch.done():
            return
        if fut.cancelled():
            epoch.cancel()
        elif fut.exception() is not None:
            epoch.set_exception(fut.exception())  # type: ignore[arg-type]
        else:
            epoch.set_result(None)

    done.add_done_callback(_finish)
