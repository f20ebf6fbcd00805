"""The worker's garbage-collector settings, and its pauses as a metric.

The worker holds many long-lived objects (decoded user states, Faust, aiokafka, Paddle) and
allocates short-lived ones for every message. With CPython's default thresholds (700, 10, 10)
the collector scans that whole heap every few seconds under load; each full collection stops
the event loop for as long as the scan takes (Faust logged its timers waking 0.3–0.5 s late
during the demo). Here what exists once the worker is built is frozen out of collection
(``gc.freeze``: reference counting still frees it), and young collections run less often so
that fewer objects survive into the old generation. Pauses are observed in
``riskstream_gc_pause_seconds`` per generation.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from streams.metrics import Metrics

THRESHOLDS = (20_000, 20, 20)


def tune(metrics: Metrics | None = None, thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    if metrics is None:
        return
    started = [0.0]
    hist = metrics.gc_pause_seconds

    def observe(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            hist.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

    gc.callbacks.append(observe)
