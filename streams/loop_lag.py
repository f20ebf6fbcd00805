"""Event-loop lag: how late the loop wakes a task that asked to sleep.

Everything the worker does runs on one asyncio loop: the batch loop, the state flusher, the
hand-off from the consumer, timers. Any synchronous stretch (a large micro-batch, a model call,
a garbage collection, a state flush chunk) delays every message waiting behind it. This task
sleeps ``interval_s`` at a time and records the overshoot, so operators see stalls directly
(``riskstream_event_loop_lag_seconds``) and can tell them apart from Kafka-side delay.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def watch_loop_lag(histogram: Any, interval_s: float = 0.05) -> None:
    """Until cancelled: observe each wake-up's lateness (seconds) in ``histogram``."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        histogram.observe(max(loop.time() - start - interval_s, 0.0))
