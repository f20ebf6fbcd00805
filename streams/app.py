"""The Faust shell: app, topics, tables and agents around :class:`streams.pipeline.BatchProcessor`.

Topology (every input topic keyed by user id, so one user's events meet in one partition)::

    transactions ─┐
    clickstream  ─┼─> agent `score` ──> risk-events            (key: user id)
    labels       ─┘        │  │    └──> riskstream-dead-letter (original bytes + reason headers)
                           │  └──────> table `user-state`      (user id -> UserState snapshot)
                           └─────────> `<app>-terminal-labels` (key: terminal id, 1 partition)
                                              │
                                     agent `terminals` ──> global table `terminal-state`
                                                         (every worker holds every terminal)

Terminal risk is built from labels of many users, so it cannot live in the user's partition:
the scoring agent forwards each label, re-keyed by terminal, to an internal one-partition topic
whose single consumer is the only writer of the global table; every worker reads that table's
changelog into a local replica. Features use a label only once it is ``label_allowance_ms`` old,
which covers this propagation.

At-least-once: ``take_events`` acks a batch only after its body ran, and Faust flushes the
producer before it commits offsets, so an input offset is committed only after its risk event was
produced. Risk events carry the transaction id: downstream consumers deduplicate on it.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

import faust
from faust.streams import _current_event

from modeling.features import FeatureConfig, FeatureEngine, TerminalState
from modeling.records import parse_label
from modeling.settings import Settings
from streams.metrics import Metrics
from streams.model_watch import ModelWatcher
from streams.pipeline import KIND_CLICK, KIND_LABEL, KIND_TXN, BatchProcessor, InMessage

log = logging.getLogger("riskstream.worker")


@dataclass
class Runtime:
    app: faust.App
    processor: BatchProcessor
    watcher: ModelWatcher
    metrics: Metrics


def feature_config(settings: Settings) -> FeatureConfig:
    return FeatureConfig(
        label_delay_ms=int(settings.label_delay_days * 86_400_000),
        allowed_lateness_ms=int(settings.allowed_lateness_s * 1000),
    )


def build_app(settings: Settings, *, metrics: Metrics | None = None) -> Runtime:
    metrics = metrics or Metrics()
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h.strip()}" for h in settings.bootstrap_servers.split(",")],
        store="memory://",
        datadir=str(settings.worker_data_dir),
        web_enabled=True,
        web_port=settings.web_port,
        web_bind="127.0.0.1",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        key_serializer="raw",
        value_serializer="raw",
        broker_commit_interval=settings.commit_interval_s,
        producer_max_request_size=max(settings.max_message_bytes * 4, 1 << 20),
        # Batch produce requests: risk events, changelog writes and forwarded labels are many
        # small records; without linger every send is its own request.
        producer_linger=0.02,
        producer_max_batch_size=256 * 1024,
        # Messages prefetched ahead of the agent. A saturated worker keeps this queue full, so
        # it bounds the queueing latency: keep it about two micro-batches.
        stream_buffer_maxsize=2 * settings.pipeline_max_batch,
        table_cleanup_interval=3600.0,
        consumer_auto_offset_reset="earliest",
        broker_credentials=None,
    )
    engine = FeatureEngine(feature_config(settings))
    p = settings.topic_partitions
    kinds = {
        settings.topic_transactions: KIND_TXN,
        settings.topic_clickstream: KIND_CLICK,
        settings.topic_labels: KIND_LABEL,
    }
    inputs = app.topic(*kinds, key_type=bytes, value_type=bytes, partitions=p)
    risk_topic = app.topic(settings.topic_risk_events, key_type=bytes, value_type=bytes, partitions=p)
    dead_topic = app.topic(settings.topic_dead_letter, key_type=bytes, value_type=bytes, partitions=p)
    term_topic = app.topic(
        f"{settings.app_id}-terminal-labels", key_type=bytes, value_type=bytes, partitions=1, internal=True
    )
    users = app.Table("user-state", default=None, partitions=p, key_type=str, value_type=bytes)
    terminals = app.GlobalTable(
        "terminal-state", default=None, partitions=1, key_type=str, value_type=bytes, recovery_buffer_size=1
    )

    watcher = ModelWatcher(settings, engine.config, metrics)
    processor = BatchProcessor(
        engine,
        watcher.scorer,
        users.get,
        terminals.get,
        max_message_bytes=settings.max_message_bytes,
    )

    @app.agent(inputs)
    async def score(stream: Any) -> None:
        within = settings.pipeline_max_wait_ms / 1000.0
        async for events in stream.take_events(settings.pipeline_max_batch, within=within):
            batch = []
            for ev in events:
                m = ev.message
                metrics.events_in.labels(m.topic).inc()
                batch.append(
                    InMessage(
                        kinds[m.topic],
                        m.topic,
                        m.partition,
                        m.offset,
                        m.key,
                        m.value,
                        int(m.timestamp * 1000) if m.timestamp else int(time.time() * 1000),
                        m.time_in or time.monotonic(),  # set by Faust's monitor on receipt
                    )
                )
            res = processor.process(batch)
            for key, value in res.risk_events:
                await risk_topic.send(key=key, value=value)
            for dl in res.dead_letters:
                await dead_topic.send(key=dl.key, value=dl.value, headers=dl.headers)
            for key, value in res.terminal_labels:
                await term_topic.send(key=key, value=value)
            # A table write goes to the changelog partition of the current event; inside
            # take_events there is none, so point it at an event of the user's partition.
            by_partition = {ev.message.partition: ev for ev in events}
            for uid, raw in res.user_states.items():
                _current_event.set(weakref.ref(by_partition[res.user_partition[uid]]))
                users[uid] = raw
            _current_event.set(None)
            _record(metrics, settings, res)

    @app.agent(term_topic)
    async def terminal_labels(stream: Any) -> None:
        within = settings.pipeline_max_wait_ms / 1000.0
        async for events in stream.take_events(settings.pipeline_max_batch, within=within):
            touched: dict[str, TerminalState] = {}
            for ev in events:
                lb = parse_label(ev.value, settings.max_message_bytes)
                ts = touched.get(lb.terminal_id)
                if ts is None:
                    raw = terminals.get(lb.terminal_id)
                    ts = TerminalState.from_bytes(raw) if raw is not None else TerminalState()
                    touched[lb.terminal_id] = ts
                engine.terminal_label(ts, lb)
            _current_event.set(weakref.ref(events[-1]))  # one partition: any event of the batch
            for tid, ts in touched.items():
                terminals[tid] = ts.to_bytes()
            _current_event.set(None)
            metrics.events_in.labels(term_topic.get_topic_name()).inc(len(events))

    @app.timer(interval=settings.registry_poll_s)  # type: ignore[untyped-decorator]
    async def refresh_model() -> None:
        await watcher.poll()

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def report_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic not in kinds:
                continue
            hw = consumer.highwater(tp)
            pos = await consumer.position(tp)
            if hw is not None and pos is not None:
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(hw - pos, 0))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Another worker may own these users next: drop decoded states, the table is the truth.
        processor.users.clear()

    return Runtime(app, processor, watcher, metrics)


def _record(metrics: Metrics, settings: Settings, res: Any) -> None:
    if res.n_transactions:
        metrics.batch_size.observe(res.n_transactions)
        metrics.inference_seconds.labels("behaviour").observe(res.inference_s)
        for s in res.scores:
            metrics.scores.observe(s)
        for d in res.decisions:
            metrics.decisions.labels(d).inc()
        for w in res.queue_wait_s:
            metrics.queue_wait_seconds.observe(w)
        for e in res.e2e_s:
            metrics.end_to_end_seconds.observe(e)
        metrics.events_out.labels(settings.topic_risk_events).inc(res.n_transactions)
    if res.dead_letters:
        metrics.events_out.labels(settings.topic_dead_letter).inc(len(res.dead_letters))
        for topic, field in res.dead_fields:
            metrics.dead_letters.labels(topic, field).inc()
    if res.n_late:
        metrics.late_events.inc(res.n_late)
