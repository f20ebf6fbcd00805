"""The worker's garbage-collector policy, and its pauses as metrics.

The worker holds many long-lived objects (decoded user states, Faust, aiokafka, Paddle) and
allocates short-lived ones for every message. Reference counting frees almost all of them: over
a drain of 98,085 messages the cyclic collector freed 206 objects in 34 collections
(``riskstream_gc_collected_objects_total``, ``benchmarks/README.md``). Yet every collection stops
the event loop for as long as its scan of the generations involved takes, and a decoded user
state is about 18 containers the collector tracks: with 97,880 users decoded, one full
collection took 1.2–1.8 s on this machine (``benchmarks/bench_gc.py``).

So:

* :func:`tune`, once the worker is built: what exists then is frozen out of collection
  (``gc.freeze``: reference counting still frees it), and the collector never runs on its own
  (``gc_thresholds`` 0 / 0, the default since session 24): no young collection and no full one
  stops the event loop while the worker scores.
* What that gives up: a reference cycle that becomes garbage waits for a sweep.
  :meth:`Collector.sweep` (a full collection) runs when partitions are revoked (the worker is
  not scoring then), at shutdown, and every ``gc_sweep_interval_s`` (1 h; 0: only then); what
  it frees is logged and counted, so an operator sees how much garbage waited. Measured, there
  is next to none: young collections freed 7 objects in a 98,085-message drain
  (``benchmarks/README.md``, session 24).

``gc_thresholds`` > 0 brings back young collections: 20,000 / 20 was the default from session 18
to 23; 700 / 10 are CPython's own. With them ``gc_auto_full = true`` brings back automatic full
collections too (threshold 20: the worker before session 18; with ``gc_thresholds`` 0 / 0 it
takes 20,000 / 20).
Pauses are observed in ``riskstream_gc_pause_seconds`` and freed objects in
``riskstream_gc_collected_objects_total``, by ``generation``: ``0``, ``1`` and ``2`` for the
collector's own collections, ``sweep`` for this module's.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from streams.metrics import Metrics

log = logging.getLogger("riskstream.worker")

NEVER = 2**31 - 1  # the old generation's threshold when full collections are left to sweeps
OFF = (0, 0)  # gc_thresholds' default: a threshold of 0 turns automatic collection off
YOUNG = (20_000, 20)  # the young generations' thresholds when they run (sessions 18-23)
AUTO_FULL = 20  # the old generation's threshold with gc_auto_full


class Collector:
    """The sweeps of the policy (module docstring); one per worker process."""

    def __init__(self) -> None:
        self.step: str | None = None  # the pause metrics' label while a sweep collects
        self.swept = 0  # objects the sweeps freed, in all

    def observe(self, on_pause: Callable[[str, float, int], None]) -> Callable[[str, dict[str, Any]], None]:
        """Call ``on_pause(generation, seconds, freed)`` after every collection (``generation``
        is ``"sweep"`` for this collector's sweeps). Returns the ``gc.callbacks`` entry it added."""
        started = [0.0]

        def callback(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                seconds = time.perf_counter() - started[0]
                on_pause(self.step or str(info["generation"]), seconds, info["collected"])

        gc.callbacks.append(callback)
        return callback

    def sweep(self, why: str) -> int:
        """A full collection (the objects frozen at start-up excepted); returns the objects
        freed: reference cycles that became garbage after reaching the old generation."""
        t0 = time.perf_counter()
        self.step = "sweep"
        try:
            freed = gc.collect()
        finally:
            self.step = None
        self.swept += freed
        took = time.perf_counter() - t0
        log.info("gc sweep (%s): %d unreachable objects freed in %.3f s", why, freed, took)
        return freed


def tune(
    metrics: Metrics | None = None, young: tuple[int, int] = OFF, *, auto_full: bool = False
) -> Collector:
    """Freeze what exists, set the thresholds (``young``, then :data:`NEVER` or, with
    ``auto_full``, :data:`AUTO_FULL`; ``young`` 0 / 0 turns automatic collection off, unless
    ``auto_full`` asks for it: then :data:`YOUNG`) and observe every collection in ``metrics``."""
    gc.collect()
    gc.freeze()
    if auto_full and young[0] == 0:
        young = YOUNG
    gc.set_threshold(*young, AUTO_FULL if auto_full else NEVER)
    collector = Collector()
    if metrics is None:
        return collector
    hist, collected = metrics.gc_pause_seconds, metrics.gc_collected

    def record(generation: str, seconds: float, freed: int) -> None:
        hist.labels(generation).observe(seconds)
        collected.labels(generation).inc(freed)

    collector.observe(record)
    return collector


def schedule(app: Any, collector: Collector, sweep_interval_s: float) -> None:
    """Run ``collector``'s sweeps on the Faust ``app``: at every revocation, at shutdown and
    every ``sweep_interval_s`` (0: not on a timer)."""
    if sweep_interval_s > 0:

        @app.timer(interval=sweep_interval_s)  # type: ignore[untyped-decorator]
        async def gc_sweep() -> None:
            collector.sweep("interval")

    @app.on_partitions_revoked.connect  # type: ignore[untyped-decorator]
    async def gc_sweep_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        collector.sweep("partitions revoked")

    @app.on_before_shutdown.connect  # type: ignore[untyped-decorator]
    async def gc_sweep_shutdown(sender: Any, *args: Any, **kwargs: Any) -> None:
        collector.sweep("shutdown")
