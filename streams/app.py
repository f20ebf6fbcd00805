"""The Faust shell: app, topics, tables and batch loops around :class:`streams.pipeline.BatchProcessor`.

Topology (every input topic keyed by user id, so one user's events meet in one partition)::

    transactions ─┐
    clickstream  ─┼─> loop `score` ──> risk-events            (key: user id)
    labels       ─┘       │  │    └──> riskstream-dead-letter (original bytes + reason headers)
                          │  └──────> table `user-state`      (user id -> UserState snapshot,
                          │                                     written once per state flush)
                          └─────────> `<app>-terminal-labels` (key: terminal id, 1 partition)
                                             │
                                    loop `terminals` ──> global table `terminal-state`
                                                        (every worker holds every terminal)

Faust runs the consumer group, partition assignment, the changelog-backed tables and their
recovery, offset commits, timers and the web server. Input messages do not go through Faust's
per-event streams: the consumer hands them to an :class:`streams.intake.InputBuffer` and a
:class:`streams.batch_loop.BatchLoop` takes micro-batches from it (why: ``streams/intake.py``).
What the scoring loop does with a batch (outputs, then the coalesced user-state writes) is
:class:`streams.score_stage.ScoreStage`.

Terminal risk is built from labels of many users, so it cannot live in the user's partition:
the scoring loop forwards each label, re-keyed by terminal, to an internal one-partition topic
whose single consumer is the only writer of the global table (``streams/terminal_loop.py``);
every worker reads that table's changelog into a local replica. Features use a label only once
it is ``label_allowance_ms`` old, which covers this propagation live. Catching up on a backlog
it does not, so the scorer also applies the labels it forwarded on top of the replica until the
replica holds them (``streams/terminal_overlay.py``), and reads the labels other workers
forwarded, and how far each got, straight from the internal topic (``streams/terminal_feed.py``).

At-least-once: a batch is acked once the broker acknowledged every record it produced and the
state flush holding its state changes (``streams/state_flush.py``), batches in order, and Faust
flushes the producer before it commits offsets, so an input offset is committed only after its
risk event and its state were delivered. Risk events carry the transaction id:
downstream consumers deduplicate on it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka.errors import KafkaError

from modeling.features import FeatureEngine
from modeling.settings import Settings, feature_config
from streams.batch_loop import BatchLoop
from streams.broker.topics import dead_letter_max_bytes, dead_letter_room, terminal_labels_topic
from streams.fetch_pacer import FetchPacer, aiokafka_fetcher
from streams.housekeeping import Rounds, consumer_lags
from streams.in_loop import InLoopTransport
from streams.input_buffer import InputBuffer
from streams.intake import BatchingApp, BatchingConsumer, BatchingTransport
from streams.loop_lag import watch_loop_lag
from streams.metrics import Metrics
from streams.model_watch import ModelWatcher
from streams.output import BatchOutput, ChangelogKeys
from streams.pipeline import (
    KIND_CLICK,
    KIND_LABEL,
    KIND_TXN,
    BatchProcessor,
)
from streams.replica import DirectReplica
from streams.retention import StateSweeper, TerminalSweeper
from streams.score_stage import ScoreStage
from streams.security import faust_credentials
from streams.state_flush import StateFlusher
from streams.terminal_feed import FeedState
from streams.terminal_loop import TerminalLoop
from streams.terminal_overlay import APPLIED_KEY, TerminalOverlay, decode_position
from streams.terminal_store import DiskTerminalStore, TerminalStore, terminal_store, terminal_table
from streams.user_store import DiskUserStore, UserStore, table_store, user_store
from streams.wiring import input_buffer, other_labels_partitions, terminal_feed

log = logging.getLogger("riskstream.worker")


@dataclass
class Runtime:
    app: faust.App
    processor: BatchProcessor
    flusher: StateFlusher
    sweeper: StateSweeper
    terminal_sweeper: TerminalSweeper
    watcher: ModelWatcher
    metrics: Metrics
    user_states: UserStore
    terminal_states: TerminalStore


def build_app(
    settings: Settings, *, metrics: Metrics | None = None, dead_letter_limit: int | None = None
) -> Runtime:
    """``dead_letter_limit``: the dead-letter topic's ``max.message.bytes`` as read from the
    cluster (streams.broker.topics.read_topic_limits; None: as riskstream creates it)."""
    metrics = metrics or Metrics()
    app = BatchingApp(
        settings.app_id,
        fetch_settings=(settings.fetch_min_bytes, settings.fetch_max_wait_ms),
        isolation_level=settings.input_isolation_level,
        transport_type=InLoopTransport if settings.consumer_in_loop else BatchingTransport,
        broker=[f"kafka://{h.strip()}" for h in settings.bootstrap_servers.split(",")],
        store="memory://",
        datadir=str(settings.worker_data_dir),
        web_enabled=True,
        web_port=settings.web_port,
        # Faust names each member by this URL in the assignments, and a member refuses (its
        # coordinator stops) an assignment naming another. A static member restarted under the
        # same instance id gets its predecessor's stored assignment back, so the URL is the
        # instance id's alone, not the host's and port's, which may change with the restart.
        # Faust's web routing of table keys, the URL's other use, serves nothing here.
        **({"canonical_url": f"http://{settings.group_instance_id}"} if settings.group_instance_id else {}),
        web_bind="127.0.0.1",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        key_serializer="raw",
        value_serializer="raw",
        broker_commit_interval=settings.commit_interval_s,
        # the largest record it writes: a dead letter (a stored state or an input message, plus
        # headers); changelog records stop at state_max_record_bytes
        producer_max_request_size=max(settings.max_message_bytes * 4, dead_letter_max_bytes(settings)),
        # Batch produce requests: risk events, changelog writes and forwarded labels are many
        # small records; without linger every send is its own request.
        producer_linger=0.02,
        producer_max_batch_size=256 * 1024,
        # Records per fetch: keeps what one fetch adds to the input buffer near its high-water mark.
        broker_max_poll_records=2 * settings.pipeline_max_batch,
        table_cleanup_interval=3600.0,
        table_standby_replicas=settings.table_standby_replicas,
        broker_session_timeout=settings.group_session_timeout_s,
        consumer_group_instance_id=settings.group_instance_id,  # static membership, or None
        broker_heartbeat_interval=min(3.0, settings.group_session_timeout_s / 3),
        # Faust refuses a session longer than its request timeout (90 s by default)
        broker_request_timeout=max(90.0, settings.group_session_timeout_s),
        consumer_auto_offset_reset="earliest",
        broker_credentials=faust_credentials(settings),  # TLS / SASL (streams/security.py)
    )
    app.on_fetch = metrics.input_fetch_records.observe
    if settings.fetch_idle_wait_ms > 0 and app.fetch_settings is not None:
        app.on_poll = FetchPacer(
            app.fetch_settings,
            settings.fetch_idle_wait_ms,
            lambda: aiokafka_fetcher(app.consumer),
            on_switch=metrics.fetch_long_poll.set,
        ).on_poll
    engine = FeatureEngine(feature_config(settings))
    p = settings.topic_partitions
    kinds = {
        settings.topic_transactions: KIND_TXN,
        settings.topic_clickstream: KIND_CLICK,
        settings.topic_labels: KIND_LABEL,
    }
    inputs = app.topic(*kinds, key_type=bytes, value_type=bytes, partitions=p)
    term_topic = app.topic(
        terminal_labels_topic(settings), key_type=bytes, value_type=bytes, partitions=1, internal=True
    )
    users = app.Table(
        "user-state", default=None, partitions=p, key_type=str, value_type=bytes, **table_store(settings)
    )
    user_keys = ChangelogKeys(users)  # its changelog key bytes, cached: the scorer's and the store's
    states = user_store(settings, users, user_keys)  # streams/user_store.py
    terminals = terminal_table(app, settings)
    terminal_keys = ChangelogKeys(terminals)
    term_states = terminal_store(settings, terminals, terminal_keys)  # streams/terminal_store.py

    watcher = ModelWatcher(settings, engine.config, metrics)
    processor = BatchProcessor(
        engine,
        watcher.scorer,
        states.get,
        term_states.get,
        shadow=watcher.shadow,
        max_message_bytes=settings.max_message_bytes,
        require_user_keys=settings.require_user_keys,
        max_event_ahead_ms=settings.max_event_ahead_s * 1000.0,
        terminal_overlay=TerminalOverlay(engine, lambda: decode_position(term_states.get(APPLIED_KEY)))
        if settings.terminal_overlay
        else None,
        user_cache_bytes=settings.user_state_cache_mb << 20,
        terminal_cache_bytes=settings.terminal_state_cache_mb << 20,
    )

    # Other workers' labels and label floors, read from the terminal-labels topic; this worker's
    # records carry its id (streams/terminal_feed.py).
    worker_id = os.urandom(8).hex().encode()
    feed_state = (
        FeedState(worker_id, processor.overlay, max_bytes=settings.max_message_bytes)
        if settings.terminal_feed
        else None
    )

    stage: ScoreStage  # the scoring loop's handler, built once its buffer and feed exist
    # Every input message reaches the scorer through a batch buffer (streams/intake.py), not a
    # per-event Faust stream: the consumer appends, the loop takes micro-batches.
    in_buffer = input_buffer(
        app,
        settings,
        list(kinds),
        engine.config.label_allowance_ms / 1000.0,
        feed_state,
        on_wait=lambda: stage.publish_floors() if feed_state is not None else None,
        on_expired=lambda kind: metrics.align_expired.labels(kind).inc(),
    )
    app.batch_topics(inputs, in_buffer)
    term_buffer = InputBuffer(high_water=4 * settings.pipeline_max_batch)
    app.batch_topics(term_topic, term_buffer)
    replicas = []
    if settings.terminal_replica_direct:
        on_terminal = metrics.count_by_path(metrics.terminal_replica_records)
        replicas.append(DirectReplica(app, terminals, on_terminal, during_recovery=True))
    if settings.user_recovery_direct:
        on_user = metrics.count_by_path(metrics.user_state_records_read)
        replicas.append(DirectReplica(app, users, on_user, during_recovery=True))
    app.direct_replicas = tuple(replicas)
    out = BatchOutput(app, metrics.stage_cpu_seconds.labels("output"))
    terminal_log = terminals.changelog_topic.get_topic_name()
    user_log = users.changelog_topic.get_topic_name()
    term_name = term_topic.get_topic_name()
    feed = None if feed_state is None else terminal_feed(settings, term_name, feed_state, in_buffer.poke)
    dead_room = dead_letter_room(settings, dead_letter_limit)  # what a dead letter keeps
    stage = ScoreStage(
        settings,
        metrics,
        processor,
        out,
        kinds=kinds,
        in_buffer=in_buffer,
        feed=feed,
        users=users,
        user_keys=user_keys,
        states=states,
        term_name=term_name,
        worker_id=worker_id,
        dead_letter_room=dead_room,
    )
    flusher = stage.flusher

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic_transactions}

    sweeper = StateSweeper(
        processor,
        engine.config,
        states,
        stage.send_tombstones,
        lock=flusher.lock,
        owned=owned_partitions,
        paused=lambda: bool(app.rebalancing or app.in_recovery),
    )

    terminal_loop = TerminalLoop(
        engine,
        settings,
        metrics,
        out,
        term_states,
        terminal_log,
        terminal_keys,
        term_name,
        dead_room,
    )

    terminal_sweeper = TerminalSweeper(
        processor,
        engine.config,
        terminal_loop.own,
        term_states,
        terminal_loop.send_tombstones,
        lock=terminal_loop.lock,
        owner=lambda: any(tp.topic == term_name for tp in app.consumer.assignment()),
        paused=lambda: bool(app.rebalancing or app.in_recovery),
    )

    within = settings.pipeline_max_wait_ms / 1000.0
    loops = (
        BatchLoop(
            app,
            "score",
            in_buffer,
            settings.pipeline_max_batch,
            within,
            stage.handle,
            max_age_s=settings.pipeline_max_age_ms / 1000.0,
        ),
        BatchLoop(app, "terminals", term_buffer, settings.pipeline_max_batch, within, terminal_loop.handle),
    )

    @app.task  # type: ignore[untyped-decorator]
    async def score() -> None:
        await loops[0].run()

    @app.task  # type: ignore[untyped-decorator]
    async def terminal_labels() -> None:
        await loops[1].run()

    @app.task  # type: ignore[untyped-decorator]
    async def flush_states() -> None:
        await flusher.run()

    @app.task  # type: ignore[untyped-decorator]
    async def loop_lag() -> None:
        await watch_loop_lag(metrics.event_loop_lag_seconds, cpu_counter=metrics.event_loop_cpu_seconds)

    # A failed round of any timer below is logged and counted, never the worker's end
    # (streams/housekeeping.py).
    rounds = Rounds(metrics.housekeeping_errors)

    async def refresh_model() -> None:
        await watcher.poll()

    app.timer(interval=settings.registry_poll_s)(rounds.guard("model_refresh", refresh_model))

    if settings.state_sweep_interval_s > 0:

        async def sweep_states() -> None:
            for kind, swept in (("user", sweeper), ("terminal", terminal_sweeper)):
                t0 = time.monotonic()
                res = await swept.sweep()
                metrics.record_sweep(kind, res, time.monotonic() - t0)
                if res.deleted or res.unreadable:
                    log.info(
                        "state sweep: %d of %d %s states expired and deleted (%d unreadable) in %.2f s",
                        res.deleted,
                        res.checked,
                        kind,
                        res.unreadable,
                        time.monotonic() - t0,
                    )

        app.timer(interval=settings.state_sweep_interval_s)(rounds.guard("state_sweep", sweep_states))

    async def report_uncommitted(consumer: BatchingConsumer) -> None:
        try:
            counts = await consumer.uncommitted(kinds)
        except KafkaError as exc:  # a coordinator moving, a rebalance: the next round reports
            log.debug("uncommitted offsets not read: %r", exc)
            return
        metrics.set_consumer_uncommitted(counts)

    def report_tables() -> None:
        """The gauges that need no await: states, table partitions, caches, overlay, feed,
        watermark."""
        metrics.states.labels("user").set(states.count())
        if isinstance(states, DiskUserStore):
            metrics.set_user_store(states.usage(), len(states.pending))
        tables: Any = app.tables  # faust's TableManager: TableManagerT does not declare .recovery
        recovery = tables.recovery
        for kind, log_topic in (("user", user_log), ("terminal", terminal_log)):
            metrics.set_table_partitions(
                kind,
                sum(tp.topic == log_topic for tp in recovery.active_tps),
                sum(tp.topic == log_topic for tp in recovery.standby_tps),
            )
        metrics.states.labels("terminal").set(term_states.count())
        if isinstance(term_states, DiskTerminalStore):
            metrics.set_terminal_store(term_states.usage())
        metrics.set_state_caches(
            {"user": processor.users, "terminal": processor.terminals, "terminal_loop": terminal_loop.own}
        )
        if processor.overlay is not None:
            processor.overlay.prune()
            metrics.set_terminal_overlay(processor.overlay.n_labels, processor.overlay.dropped)
        if feed_state is not None:
            metrics.set_terminal_feed(feed_state.counts)
        wm = processor.watermark.value(time.time() * 1000.0)
        if wm is not None:
            metrics.watermark_seconds.set(wm / 1000.0)

    async def report() -> None:
        report_tables()  # first: a rebalance can change the assignment at every await below
        consumer = app.consumer
        # partitions given away in a rebalance leave the gauge
        metrics.set_consumer_lag(await consumer_lags(consumer, kinds))
        if isinstance(consumer, BatchingConsumer):  # BatchingApp's, on the loop or not
            metrics.set_consumer_held(consumer.held(kinds))
            await report_uncommitted(consumer)

    app.timer(interval=5.0)(rounds.guard("metrics_report", report))

    async def report_tables_round() -> None:
        report_tables()

    tables_now = rounds.guard("metrics_report", report_tables_round)

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def report_now(sender: Any, **kwargs: Any) -> None:
        # The tables are recovered: their gauges hold this worker's partitions and states now,
        # not up to 5 s later (until first set, a labelled gauge has no series to scrape).
        # Nothing awaited here: Faust awaits this signal before it resumes the partitions.
        await tables_now()

    if feed is not None:

        @app.on_rebalance_complete.connect  # type: ignore[arg-type]
        async def start_feed(sender: Any, **kwargs: Any) -> None:
            # Tables recovered, streams not resumed yet: the feed reads what the terminal table
            # does not hold before the first batch is scored (streams/terminal_feed.py).
            # Holding every labels partition, it pauses after that first read: nobody else
            # forwards labels (measured: reading its own back cost a single worker ~10 %).
            position = decode_position(term_states.get(APPLIED_KEY))
            try:
                if not feed.started:
                    await feed.start(position)
                if not other_labels_partitions(app, settings):
                    await feed.pause()
                else:
                    await feed.resume(position)
            except Exception:  # the worker goes on; other workers' labels wait a bound each
                log.exception("terminal feed failed; trying again at the next rebalance")
                await feed.stop()

        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def stop_feed(sender: Any, **kwargs: Any) -> None:
            await feed.stop()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def count_assignment(sender: Any, *args: Any, **kwargs: Any) -> None:
        metrics.partition_assignments.inc()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Faust waited for the acks, so the flusher has written every dirty state (or the wait
        # timed out: write what is left, content-equal to what the next owner computes again).
        await flusher.flush()
        # Another worker may own these users (and the terminal-labels partition) next: drop
        # decoded states; after the rebalance the recovered tables are the truth.
        processor.forget()
        terminal_loop.own.clear()

    return Runtime(app, processor, flusher, sweeper, terminal_sweeper, watcher, metrics, states, term_states)
