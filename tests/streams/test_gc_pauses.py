"""The worker's garbage-collector settings and the pause metric."""

from __future__ import annotations

import gc

from streams import gc_pauses
from streams.metrics import Metrics


def test_tune_freezes_sets_thresholds_and_observes_each_collection() -> None:
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    metrics = Metrics()
    try:
        gc_pauses.tune(metrics, thresholds=(12_345, 7, 9))
        assert gc.get_threshold() == (12_345, 7, 9)
        assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's scans
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        count = metrics.registry.get_sample_value
        assert count("riskstream_gc_pause_seconds_count", {"generation": "0"}) >= 1
        assert count("riskstream_gc_pause_seconds_count", {"generation": "2"}) >= 2
        assert count("riskstream_gc_pause_seconds_sum", {"generation": "2"}) > 0
    finally:
        gc.callbacks[:] = callbacks
        gc.set_threshold(*thresholds)
        gc.unfreeze()
