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


def test_the_loop_threads_cpu_time_is_counted() -> None:
    """Busy work on the loop counts; time the loop spends asleep does not."""
    metrics = Metrics()

    def cpu_total() -> float:
        return next(
            s.value
            for m in metrics.registry.collect()
            for s in m.samples
            if s.name == "riskstream_event_loop_cpu_seconds_total"
        )

    async def go() -> tuple[float, float]:
        lag, cpu = metrics.event_loop_lag_seconds, metrics.event_loop_cpu_seconds
        task = asyncio.ensure_future(watch_loop_lag(lag, interval_s=0.01, cpu_counter=cpu))
        await asyncio.sleep(0.05)
        idle0 = cpu_total()
        await asyncio.sleep(0.4)  # idle: the loop waits in select
        idle = cpu_total() - idle0
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.3:  # 0.3 CPU-seconds of synchronous work on the loop
            pass
        await asyncio.sleep(0.05)  # the monitor wakes and counts it
        busy = cpu_total() - idle0 - idle
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return idle, busy

    idle, busy = asyncio.run(go())
    assert busy >= 0.29
    assert idle < 0.2


def test_the_worker_registry_serves_process_metrics() -> None:
    """The dashboard's CPU panel sets the loop thread against the whole process."""
    names = {s.name for m in Metrics().registry.collect() for s in m.samples}
    assert "process_cpu_seconds_total" in names
    assert "process_resident_memory_bytes" in names
