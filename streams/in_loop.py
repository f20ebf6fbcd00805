"""Faust's Kafka consumer on the worker's own event loop, not in a thread of its own.

Faust runs its aiokafka consumer in a ``mode.ServiceThread``: a second thread with a second event
loop, and every call into it (``getmany``, ``commit``, ``position``, seeks) goes through a method
queue and comes back through ``call_soon_threadsafe``. In this worker the scoring loop holds the
GIL for most of each second (feature code, then Paddle's ``run``, which never releases it), so
the consumer thread's fetches waited their turn at the GIL before their records reached the input
buffer: under a paced feed the messages' wait before the worker had them was most of their
end-to-end latency (``benchmarks/README.md``, session 10).

:class:`InLoopConsumerThread` keeps Faust's consumer-thread class whole (its aiokafka consumer,
rebalance listener, commit and seek code) and changes only where it runs: ``start`` serves it as
a task on the app's loop, ``call_thread`` awaits the call directly, and stopping it leaves the
loop's other tasks alone. The rebalance callbacks still cross Faust's main-loop method queue,
which works unchanged on one loop. The fetcher's network reads and record parsing now share the
loop with the scoring, in turn rather than contending for the GIL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from mode import Service
from mode.utils.futures import maybe_async

from streams.intake import BatchingConsumer, BatchingConsumerThread, BatchingTransport


class InLoopConsumerThread(BatchingConsumerThread):
    """:class:`streams.intake.BatchingConsumerThread` served on the parent event loop."""

    def __init__(self, consumer: Any, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)
        self._serving: asyncio.Future[None] | None = None

    async def start(self) -> None:
        # mode's ServiceThread.start, with a task where it starts a thread; its keepalive (a
        # check that the thread's loop still runs) has nothing to check here.
        assert not self._thread_started.is_set()
        self._thread_started.set()
        running: asyncio.Future[None] = self.parent_loop.create_future()
        self._thread_running = running
        self._serving = asyncio.ensure_future(self._serve())
        try:
            await running
        finally:
            self._thread_running = None

    async def stop(self) -> None:
        if self._started.is_set():
            await Service.stop(self)  # signals _serve, waits for its shutdown
            if self._serving is not None:
                await asyncio.shield(self._serving)

    async def _gather_remaining_tasks(self) -> None:
        # mode cancels every task left on the thread's loop once the thread is done; this loop
        # is the app's. The aiokafka consumer stopped its own tasks in on_thread_stop.
        return None

    async def call_thread(self, fun: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))  # some of them are plain functions


class InLoopBatchingConsumer(BatchingConsumer):
    """:class:`streams.intake.BatchingConsumer` whose aiokafka consumer runs on the app's loop."""

    def _new_consumer_thread(self) -> Any:
        return InLoopConsumerThread(self, loop=self.loop, beacon=self.beacon)


class InLoopTransport(BatchingTransport):
    Consumer = InLoopBatchingConsumer
