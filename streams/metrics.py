"""Every Prometheus metric the worker exports, in one place.

Dashboards (docker/grafana) and alerts (docker/prometheus/alerts.yml) may only use the names
defined here; tests compare their queries with what a live worker serves on its metrics endpoint.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)

_LAT = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_SIZE = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class CacheStats(Protocol):
    """What the metrics read of a decoded-state cache (streams/pipeline.py, StateCache)."""

    bytes: int
    evictions: int

    def __len__(self) -> int: ...


_SCORE = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


class Metrics:
    """The worker's metrics on their own registry (so tests can build several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        if registry is None:
            # process_cpu_seconds_total, process_resident_memory_bytes, open fds: next to the
            # event-loop thread's CPU (riskstream_event_loop_cpu_seconds) on the dashboard
            ProcessCollector(registry=r)
        self.events_in = Counter(
            "riskstream_events_in", "Messages consumed, per topic", ["topic"], registry=r
        )
        self.events_out = Counter(
            "riskstream_events_out", "Messages produced, per topic", ["topic"], registry=r
        )
        self.dead_letters = Counter(
            "riskstream_dead_letters",
            "Records sent to the dead-letter topic, by source topic and failed field: input messages, "
            "and stored states that could not be read (topic user-state or terminal-state, field "
            "snapshot)",
            ["topic", "field"],
            registry=r,
        )
        self.late_events = Counter(
            "riskstream_late_events",
            "Transactions older than the allowed lateness (scored, not folded)",
            registry=r,
        )
        self.align_expired = Counter(
            "riskstream_input_align_expired",
            "Waits of the input alignment (streams/input_buffer.py) that ran out: a partition "
            "group went on without a member that had messages still to fetch (group), or "
            "transactions without the labels of one of this worker's partitions (labels) or of "
            "another worker's (remote). Each may have scored events out of event-time order",
            ["kind"],
            registry=r,
        )
        self.redelivered = Counter(
            "riskstream_redelivered",
            "Input events received again that the user's state already holds (after a crash or a "
            "rebalance); such a transaction's risk event was delivered before its state was "
            "written, so it is not scored again",
            ["kind"],
            registry=r,
        )
        self.duplicate_transactions = Counter(
            "riskstream_duplicate_transactions",
            "Transactions at a new offset whose id the user's state holds among its latest: sent "
            "again upstream (a producer's retry), neither folded into the windows nor scored again",
            registry=r,
        )
        self.batch_size = Histogram(
            "riskstream_batch_size", "Transactions per inference micro-batch", buckets=_SIZE, registry=r
        )
        self.inference_seconds = Histogram(
            "riskstream_inference_seconds",
            "Model inference time per micro-batch",
            ["model"],
            buckets=_LAT,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "riskstream_queue_wait_seconds", "Time from receipt to inference start", buckets=_LAT, registry=r
        )
        self.end_to_end_seconds = Histogram(
            "riskstream_end_to_end_seconds",
            "Input Kafka timestamp to risk event produced",
            buckets=_LAT,
            registry=r,
        )
        self.scores = Histogram("riskstream_score", "Fraud scores emitted", buckets=_SCORE, registry=r)
        self.decisions = Counter("riskstream_decisions", "Decisions emitted", ["decision"], registry=r)
        self._partition_labels: dict[Gauge, set[tuple[str, str]]] = {}
        self.consumer_lag = Gauge(
            "riskstream_consumer_lag", "Messages behind the partition end", ["topic", "partition"], registry=r
        )
        self.consumer_uncommitted = Gauge(
            "riskstream_consumer_uncommitted",
            "Messages after the group's committed offset: not fetched yet, or fetched and not yet "
            "scored, delivered and committed (nothing committed: counted from the log start)",
            ["topic", "partition"],
            registry=r,
        )
        self.consumer_stable_offset = Gauge(
            "riskstream_consumer_stable_offset",
            "The partition's last stable offset at the worker's last fetch: the first message of "
            "the earliest Kafka transaction still open there, or the log end with none open",
            ["topic", "partition"],
            registry=r,
        )
        self.consumer_held = Gauge(
            "riskstream_consumer_held",
            "Messages past the last stable offset: written in Kafka transactions still open, or "
            "after one; read committed, the worker takes none of them until those end",
            ["topic", "partition"],
            registry=r,
        )
        self.model_info = Info("riskstream_model", "The model versions being served", registry=r)
        self.model_swaps = Counter("riskstream_model_swaps", "Hot model swaps done", ["kind"], registry=r)
        self.gc_pause_seconds = Histogram(
            "riskstream_gc_pause_seconds",
            "Python garbage-collector pauses (the event loop stands still), per generation",
            ["generation"],
            buckets=_LAT,
            registry=r,
        )
        self.gc_collected = Counter(
            "riskstream_gc_collected_objects",
            "Unreachable objects the garbage collector freed (reference cycles), per generation",
            ["generation"],
            registry=r,
        )
        self.event_loop_lag_seconds = Histogram(
            "riskstream_event_loop_lag_seconds",
            "How late the event loop wakes a sleeping task (stalls every waiting message sees)",
            buckets=_LAT,
            registry=r,
        )
        self.event_loop_cpu_seconds = Counter(
            "riskstream_event_loop_cpu_seconds",
            "CPU seconds of the event-loop thread (scoring, state, Faust; not the Kafka consumer "
            "thread): its rate near 1 means the worker is at its one-core ceiling",
            registry=r,
        )
        self.stage_cpu_seconds = Counter(
            "riskstream_stage_cpu_seconds",
            "CPU seconds of the event-loop thread per stage: score (decode, features, model, risk "
            "events), output (building produce batches), state_flush (snapshots), terminal_labels",
            ["stage"],
            registry=r,
        )
        self.terminal_overlay_labels = Gauge(
            "riskstream_terminal_overlay_labels",
            "Forwarded labels (this worker's, and other workers' read by its terminal feed) that "
            "its terminal table does not hold yet, applied on top of it when scoring "
            "(streams/terminal_overlay.py): a few batches' worth, more while the terminal loop is "
            "behind",
            registry=r,
        )
        self.terminal_overlay_transactions = Counter(
            "riskstream_terminal_overlay_transactions",
            "Transactions whose terminal state had forwarded labels the table did not hold yet",
            registry=r,
        )
        self.terminal_overlay_dropped = Counter(
            "riskstream_terminal_overlay_dropped",
            "Forwarded labels dropped from the overlay by its bound before the table held them "
            "(the terminal loop not moving): scored as the table has it",
            registry=r,
        )
        self._overlay_dropped = 0
        self.terminal_feed_records = Counter(
            "riskstream_terminal_feed_records",
            "Records of the terminal-labels topic this worker's terminal feed read "
            "(streams/terminal_feed.py), by kind: label (another worker's, applied on top of the "
            "terminal table), own (skipped), progress (label floors), unreadable",
            ["kind"],
            registry=r,
        )
        self._feed_counts: dict[str, int] = {}
        self.terminal_replica_records = Counter(
            "riskstream_terminal_replica_records",
            "Records of the global terminal table's changelog applied to this worker's replica, by "
            "path: direct (a fetch's records in one batch, Faust's recovery idle; "
            "streams/replica.py) or faust (Faust's per-record recovery path)",
            ["path"],
            registry=r,
        )
        self.user_state_records_read = Counter(
            "riskstream_user_state_records_read",
            "Records of the user-state changelog read back into this worker's store (its recovery, "
            "standby copies), by path: direct (a fetch's records in one batch; streams/replica.py) "
            "or faust (Faust's per-record recovery path)",
            ["path"],
            registry=r,
        )
        self.fetch_long_poll = Gauge(
            "riskstream_fetch_long_poll",
            "1 while the consumer long-polls because nothing was fetched for a second "
            "(streams/fetch_pacer.py), 0 while records come",
            registry=r,
        )
        self.input_fetch_records = Histogram(
            "riskstream_input_fetch_records",
            "Records per fetch the consumer hands the worker (streams/intake.py): each fetch costs "
            "the event loop a round of work, so many small fetches cost CPU a backlog's large "
            "ones do not",
            buckets=_SIZE,
            registry=r,
        )
        self.state_flush_users = Histogram(
            "riskstream_state_flush_users",
            "User states written to the state table per flush (streams/state_flush.py)",
            buckets=(*_SIZE, 8192, 16384, 32768, 65536),
            registry=r,
        )
        self.partition_assignments = Counter(
            "riskstream_partition_assignments",
            "Partition assignments this worker received from its consumer group: one when it "
            "joins, one more for every rebalance it takes part in (all of a group's workers stop "
            "in each). A static member (RISKSTREAM_GROUP_INSTANCE_ID) restarted within the "
            "session timeout gets its own back, and the others none",
            registry=r,
        )
        self.model_rejections = Counter(
            "riskstream_model_rejections",
            "Published bundles refused (verification failed)",
            ["kind"],
            registry=r,
        )
        self.housekeeping_errors = Counter(
            "riskstream_housekeeping_errors",
            "Periodic rounds that failed and were skipped (streams/housekeeping.py): model "
            "refresh (model_refresh), state sweeps (state_sweep), the metrics report (metrics_report). "
            "Scoring goes on; the round runs again at its next interval, and the worker's log says "
            "why it failed",
            ["round"],
            registry=r,
        )

        self.shadow_scores = Histogram(
            "riskstream_shadow_score", "Fraud scores of the shadow model", buckets=_SCORE, registry=r
        )
        self.shadow_decisions = Counter(
            "riskstream_shadow_decisions",
            "Transactions by the served decision and the shadow model's decision",
            ["decision", "shadow_decision"],
            registry=r,
        )
        self.states = Gauge(
            "riskstream_states",
            "States in this worker's table stores: user (its partitions', and standby copies of "
            "others' with table_standby_replicas above 0) and terminal (the global table: all of them); "
            "a table on disk (user_store, terminal_store) gives RocksDB's estimate, which counts "
            "deleted states until its files are compacted",
            ["kind"],
            registry=r,
        )
        self.table_partitions = Gauge(
            "riskstream_table_partitions",
            "Changelog partitions of each state table (user, terminal) this worker holds, by role: "
            "active (recovered at assignment: its own input partitions' states, every partition of "
            "the global terminal table) and standby (copies of other workers' partitions, "
            "table_standby_replicas)",
            ["table", "role"],
            registry=r,
        )
        self.state_cache_bytes = Gauge(
            "riskstream_state_cache_bytes",
            "Estimated memory of the decoded states the scorer keeps between batches, by kind "
            "(user, terminal; terminal_loop: those the terminal loop wrote, on the worker owning "
            "the terminal-labels partition); bounded by user_state_cache_mb, "
            "terminal_state_cache_mb and terminal_loop_cache_mb",
            ["kind"],
            registry=r,
        )
        self.state_cache_entries = Gauge(
            "riskstream_state_cache_entries",
            "Decoded states the scorer (and the terminal loop) keeps, by kind",
            ["kind"],
            registry=r,
        )
        self.state_cache_evictions = Counter(
            "riskstream_state_cache_evictions",
            "Decoded states dropped by the cache's memory bound (decoded again when next needed): "
            "a steady rate means the bound is below the working set",
            ["kind"],
            registry=r,
        )
        self._cache_evictions: dict[str, int] = {}
        self.user_store_bytes = Gauge(
            "riskstream_user_store_bytes",
            "The disk-backed user store (user_store=disk; streams/user_store.py), over its open "
            "partition databases, by kind: sst (files on disk), memtables (write buffers in memory, "
            "at most 2 x 16 MiB a partition), block_cache (read cache in memory, at most "
            "user_store_block_cache_mb a partition)",
            ["kind"],
            registry=r,
        )
        self.terminal_store_bytes = Gauge(
            "riskstream_terminal_store_bytes",
            "The disk-backed terminal table (terminal_store=disk; streams/terminal_store.py), its "
            "one database, by kind: sst (files on disk), memtables (write buffers in memory, at most "
            "2 x 16 MiB), block_cache (read cache in memory, at most terminal_store_block_cache_mb)",
            ["kind"],
            registry=r,
        )
        self.user_store_pending = Gauge(
            "riskstream_user_store_pending",
            "User states written by the disk-backed store and waiting for their changelog record's "
            "delivery before they go to disk",
            registry=r,
        )
        self.states_expired = Counter(
            "riskstream_states_expired",
            "States deleted by the state sweep: dormant users, terminals whose labels no longer count",
            ["kind"],
            registry=r,
        )
        self.states_unreadable = Counter(
            "riskstream_states_unreadable",
            "Stored states the worker could not read: a state sweep keeps them (logged); scoring "
            "dead-letters them and starts the key over",
            ["kind"],
            registry=r,
        )
        self.watermark_seconds = Gauge(
            "riskstream_event_time_watermark_seconds",
            "Event time of the worker's inputs (the earliest input partition's latest event)",
            registry=r,
        )
        self.state_sweep_seconds = Histogram(
            "riskstream_state_sweep_seconds", "Duration of a state sweep", ["kind"], buckets=_LAT, registry=r
        )

    def record_sweep(self, kind: str, res: Any, seconds: float) -> None:
        self.states_expired.labels(kind).inc(res.deleted)
        self.states_unreadable.labels(kind).inc(res.unreadable)
        self.state_sweep_seconds.labels(kind).observe(seconds)

    def record_batch(self, res: Any, risk_topic: str, dead_topic: str) -> None:
        """A scored batch's figures (``res``: a ``streams.pipeline.BatchResult``)."""
        if res.n_transactions:
            self.batch_size.observe(res.n_transactions)
            self.inference_seconds.labels("behaviour").observe(res.inference_s)
            observe_many(self.scores, res.scores)
            for d, n in Tally(res.decisions).items():
                self.decisions.labels(d).inc(n)
            observe_many(self.queue_wait_seconds, res.queue_wait_s)
            observe_many(self.end_to_end_seconds, res.e2e_s)
            if res.shadow_inference_s is not None:
                self.inference_seconds.labels("shadow").observe(res.shadow_inference_s)
                observe_many(self.shadow_scores, res.shadow_scores)
                for (served, shadow), n in Tally(res.shadow_decisions).items():
                    self.shadow_decisions.labels(served, shadow).inc(n)
            self.events_out.labels(risk_topic).inc(res.n_transactions)
        if res.dead_letters:
            self.events_out.labels(dead_topic).inc(len(res.dead_letters))
            for topic, field in res.dead_fields:
                self.dead_letters.labels(topic, field).inc()
            for kind in res.unreadable_states:  # their dead letters are counted above
                self.record_unreadable(kind, None)
        if res.n_late:
            self.late_events.inc(res.n_late)
        for kind, n in res.redelivered.items():
            self.redelivered.labels(kind).inc(n)
        if res.duplicates:
            self.duplicate_transactions.inc(res.duplicates)
        if res.n_overlay:
            self.terminal_overlay_transactions.inc(res.n_overlay)

    def set_terminal_overlay(self, labels: int, dropped: int) -> None:
        """The overlay's size now and the labels its bound dropped since start."""
        self.terminal_overlay_labels.set(labels)
        if dropped > self._overlay_dropped:
            self.terminal_overlay_dropped.inc(dropped - self._overlay_dropped)
            self._overlay_dropped = dropped

    def record_unreadable(self, kind: str, dead_topic: str | None) -> None:
        """A stored state of ``kind`` ("user-state", "terminal-state") dead-lettered
        (streams/unreadable.py); with ``dead_topic``, its dead letter is counted here too."""
        self.states_unreadable.labels(kind.removesuffix("-state")).inc()
        if dead_topic is not None:
            self.dead_letters.labels(kind, "snapshot").inc()
            self.events_out.labels(dead_topic).inc()

    def set_state_caches(self, caches: Mapping[str, CacheStats]) -> None:
        """The decoded-state caches' size now and their evictions since start, by kind."""
        for kind, cache in caches.items():
            self.state_cache_bytes.labels(kind).set(cache.bytes)
            self.state_cache_entries.labels(kind).set(len(cache))
            before = self._cache_evictions.get(kind, 0)
            if cache.evictions > before:
                self.state_cache_evictions.labels(kind).inc(cache.evictions - before)
                self._cache_evictions[kind] = cache.evictions

    def set_user_store(self, usage: Mapping[str, int], pending: int) -> None:
        """The disk-backed user store's bytes by kind and its pending states."""
        for kind, n in usage.items():
            self.user_store_bytes.labels(kind).set(n)
        self.user_store_pending.set(pending)

    def set_terminal_store(self, usage: Mapping[str, int]) -> None:
        """The disk-backed terminal table's bytes by kind."""
        for kind, n in usage.items():
            self.terminal_store_bytes.labels(kind).set(n)

    def set_terminal_feed(self, counts: dict[str, int]) -> None:
        """The terminal feed's record counts since start (``FeedState.counts``)."""
        for kind, n in counts.items():
            before = self._feed_counts.get(kind, 0)
            if n > before:
                self.terminal_feed_records.labels(kind).inc(n - before)
                self._feed_counts[kind] = n

    def set_consumer_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """The lag of exactly the partitions in ``lags``, ``(topic, partition) -> messages``:
        the partition's end minus the fetch position. A partition this worker reported before
        and no longer owns is removed: left in place, its last value would be summed with the
        new owner's (dashboard, RiskstreamBehind)."""
        self._set_per_partition(self.consumer_lag, lags)

    @staticmethod
    def count_by_path(counter: Counter) -> Callable[[str, int], None]:
        """``(path, n)``: ``n`` added to ``counter``'s ``path`` label (streams/replica.py's
        ``on_applied``)."""
        return lambda path, n: counter.labels(path).inc(n)

    def set_table_partitions(self, table: str, active: int, standby: int) -> None:
        self.table_partitions.labels(table, "active").set(active)
        self.table_partitions.labels(table, "standby").set(standby)

    def set_consumer_uncommitted(self, counts: dict[tuple[str, int], int]) -> None:
        """As :meth:`set_consumer_lag`, from the group's committed offsets: what was fetched and
        not scored counts too, which the fetch position does not show (RiskstreamInputStuck)."""
        self._set_per_partition(self.consumer_uncommitted, counts)

    def set_consumer_held(self, held: dict[tuple[str, int], tuple[int, int]]) -> None:
        """``(topic, partition) -> (last stable offset, messages past it)``, as
        :meth:`set_consumer_lag` (RiskstreamInputHeldByOpenTransaction)."""
        self._set_per_partition(self.consumer_stable_offset, {tp: lso for tp, (lso, _) in held.items()})
        self._set_per_partition(self.consumer_held, {tp: n for tp, (_, n) in held.items()})

    def _set_per_partition(self, gauge: Gauge, values: dict[tuple[str, int], int]) -> None:
        now = {(topic, str(partition)): v for (topic, partition), v in values.items()}
        before = self._partition_labels.get(gauge, set())
        for labels in before - now.keys():
            gauge.remove(*labels)
        for labels, v in now.items():
            gauge.labels(*labels).set(v)
        self._partition_labels[gauge] = set(now)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


def observe_many(hist: Any, values: Sequence[float]) -> None:
    """``hist.observe(v)`` for every ``v`` of a micro-batch, as one increment per bucket hit.

    ``Histogram.observe`` takes a lock and scans the buckets once per value; the worker observes
    four values per transaction. A value goes to the first bucket whose bound is ``>= v``, as in
    ``observe``; NaN lands in no bucket but in the sum, as with ``observe``. ``hist`` is a
    ``prometheus_client.Histogram`` (with its labels chosen); tested against ``observe``."""
    if not len(values):
        return
    bounds = hist._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds) + 1)
    hist._raise_if_not_observable()
    hist._sum.inc(float(np.sum(values)))
    buckets = hist._buckets
    for i in np.flatnonzero(counts[: len(bounds)]):
        buckets[i].inc(int(counts[i]))
