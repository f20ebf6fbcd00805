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
  (``gc.freeze``: reference counting still frees it), and young collections run less often
  (``gc_thresholds``, 20,000 / 20), so that fewer objects survive into the old generation.
* The collector never runs a full collection by itself (``gc_auto_full = false``, the default):
  the old generation, where the decoded states end up, is not scanned while the worker scores.
  Young collections (generations 0 and 1) still free the cycles among recent objects.
* What that gives up: a reference cycle that became garbage after reaching the old generation
  waits for a sweep. :meth:`Collector.sweep` (a full collection) runs when partitions are
  revoked (the worker is not scoring then), at shutdown, and every ``gc_sweep_interval_s``
  (1 h; 0: only then); what it frees is logged and counted, so an operator sees whether the old
  generation held garbage.

``gc_auto_full = true`` brings back automatic full collections (threshold 20: the worker
before session 18). ``gc_thresholds`` 700 / 10 (CPython's own) made a restart that decodes many
states faster in ``bench_gc.py``; in drains of ``bench_worker.py``'s 4,800 users it was slower
in two of three (``benchmarks/README.md``, session 18).
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
YOUNG = (20_000, 20)  # the young generations' thresholds (gc_thresholds)
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
    metrics: Metrics | None = None, young: tuple[int, int] = YOUNG, *, auto_full: bool = False
) -> Collector:
    """Freeze what exists, set the thresholds (``young``, then :data:`NEVER` or, with
    ``auto_full``, :data:`AUTO_FULL`) and observe every collection in ``metrics``."""
    gc.collect()
    gc.freeze()
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
