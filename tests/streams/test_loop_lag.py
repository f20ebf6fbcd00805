"""The event-loop lag monitor sees a synchronous stall."""

from __future__ import annotations

import asyncio
import time

from streams.loop_lag import watch_loop_lag
from streams.metrics import Metrics


def test_a_blocking_stretch_shows_up_as_lag() -> None:
    metrics = Metrics()
    hist = metrics.event_loop_lag_seconds

    async def go() -> None:
        task = asyncio.ensure_future(watch_loop_lag(hist, interval_s=0.01))
        await asyncio.sleep(0.05)  # a few undisturbed wake-ups
        time.sleep(0.3)  # the loop stands still, as in a long synchronous batch
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    samples = {
        s.name + str(s.labels.get("le", "")): s.value for m in metrics.registry.collect() for s in m.samples
    }
    assert samples["riskstream_event_loop_lag_seconds_count"] >= 3
    assert samples["riskstream_event_loop_lag_seconds_sum"] >= 0.25  # the stall, once
    # the stall lands above 0.2 s; the undisturbed wake-ups below it
    above = (
        samples["riskstream_event_loop_lag_seconds_count"]
        - samples["riskstream_event_loop_lag_seconds_bucket0.2"]
    )
    assert above >= 1
