"""Event-loop lag: how late the loop wakes a task that asked to sleep.

Everything the worker does runs on one asyncio loop: the batch loop, the state flusher, the
hand-off from the consumer, timers. Any synchronous stretch (a large micro-batch, a model call,
a garbage collection, a state flush chunk) delays every message waiting behind it. This task
sleeps ``interval_s`` at a time and records the overshoot, so operators see stalls directly
(``riskstream_event_loop_lag_seconds``) and can tell them apart from Kafka-side delay.

The same task counts the loop thread's CPU time (``riskstream_event_loop_cpu_seconds_total``).
The feature engine and Paddle's ``run`` hold the GIL, so this thread is the worker's ceiling: a
rate near 1 CPU-second per second means the worker is as fast as it gets and lag will grow.
The Kafka consumer runs on this loop too (streams/in_loop.py); with Faust's own consumer thread
(``consumer_in_loop`` off) that thread adds about 0.2 on top (benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def watch_loop_lag(histogram: Any, interval_s: float = 0.05, cpu_counter: Any = None) -> None:
    """Until cancelled: observe each wake-up's lateness (seconds) in ``histogram``, and add the
    loop thread's CPU time since the previous wake-up to ``cpu_counter`` when given."""
    loop = asyncio.get_running_loop()
    cpu = time.thread_time()  # this task runs on the loop's thread
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        histogram.observe(max(loop.time() - start - interval_s, 0.0))
        if cpu_counter is not None:
            now = time.thread_time()
            cpu_counter.inc(max(now - cpu, 0.0))
            cpu = now
