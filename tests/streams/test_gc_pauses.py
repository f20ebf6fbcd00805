"""The worker's garbage-collector policy and its metrics."""

from __future__ import annotations

import gc
from typing import ClassVar

import pytest

from streams import gc_pauses
from streams.metrics import Metrics


def test_tune_freezes_sets_thresholds_and_observes_each_collection() -> None:
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    metrics = Metrics()
    try:
        gc_pauses.tune(metrics, (12_345, 7))
        assert gc.get_threshold() == (12_345, 7, gc_pauses.NEVER)  # full collections: sweeps only
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


class _Node:
    """A reference cycle's member; its finalizer records that the collector freed it."""

    freed: ClassVar[list[str]] = []

    def __init__(self, name: str) -> None:
        self.name = name
        self.other: _Node | None = None

    def __del__(self) -> None:
        _Node.freed.append(self.name)


def _cycle(name: str) -> _Node:
    a, b = _Node(name), _Node(name)
    a.other, b.other = b, a
    return a


@pytest.mark.parametrize("auto_full", [False, True])
def test_full_collections_only_in_sweeps_unless_auto_full(auto_full: bool) -> None:
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    metrics = Metrics()
    _Node.freed.clear()
    try:
        collector = gc_pauses.tune(metrics, (100, 2), auto_full=auto_full)
        assert gc.get_threshold() == (100, 2, gc_pauses.AUTO_FULL if auto_full else gc_pauses.NEVER)
        _cycle("young")  # garbage while young: a young collection frees it
        kept = _cycle("kept")
        gc.collect(1)  # survivors of the young generations move to the old one
        assert _Node.freed == ["young", "young"]
        del kept  # garbage now, in the old generation
        # Allocations that live on, enough for an automatic full collection: CPython runs one once
        # the objects promoted since the last exceed a quarter of those it kept then (frozen by
        # tune(); many in a whole test session).
        survivors = [[i] for i in range(gc.get_freeze_count() // 3 + 20_000)]
        count = metrics.registry.get_sample_value
        assert (count("riskstream_gc_pause_seconds_count", {"generation": "1"}) or 0) >= 10
        if auto_full:  # the collector's own full collections found it
            assert _Node.freed.count("kept") == 2
            return
        assert "kept" not in _Node.freed
        assert count("riskstream_gc_pause_seconds_count", {"generation": "2"}) is None
        assert collector.sweep("test") >= 2  # the full collection frees it
        assert _Node.freed.count("kept") == 2
        assert count("riskstream_gc_pause_seconds_count", {"generation": "sweep"}) == 1
        assert count("riskstream_gc_collected_objects_total", {"generation": "sweep"}) >= 2
        assert count("riskstream_gc_collected_objects_total", {"generation": "1"}) >= 2
        assert collector.swept >= 2
        del survivors
    finally:
        gc.callbacks[:] = callbacks
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def test_auto_full_brings_back_the_earlier_thresholds() -> None:
    thresholds = gc.get_threshold()
    try:
        gc_pauses.tune(auto_full=True)
        assert gc.get_threshold() == (*gc_pauses.YOUNG, gc_pauses.AUTO_FULL) == (20_000, 20, 20)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def test_by_default_the_collector_never_runs_on_its_own_and_sweeps_free_what_waited() -> None:
    """The worker's default (Settings().gc_thresholds): no automatic collection at all; a cycle
    that became garbage waits for a sweep, which frees it."""
    from modeling.settings import Settings

    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    metrics = Metrics()
    _Node.freed.clear()
    try:
        collector = gc_pauses.tune(metrics, Settings().gc_thresholds)
        assert gc.get_threshold() == (0, 0, gc_pauses.NEVER)
        _cycle("waits")
        survivors = [[i] for i in range(100_000)]  # allocations that would have run collections
        count = metrics.registry.get_sample_value
        for generation in ("0", "1", "2"):
            assert count("riskstream_gc_pause_seconds_count", {"generation": generation}) is None
        assert "waits" not in _Node.freed
        assert collector.sweep("test") >= 2
        assert _Node.freed.count("waits") == 2
        assert count("riskstream_gc_collected_objects_total", {"generation": "sweep"}) >= 2
        del survivors
    finally:
        gc.callbacks[:] = callbacks
        gc.set_threshold(*thresholds)
        gc.unfreeze()
