"""Pieces of the worker's Faust shell that ``streams/app.py`` assembles: the scoring loop's input
buffer and the terminal feed."""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import ensure_TP

from modeling.settings import Settings
from streams.input_buffer import Alignment, InputBuffer, LabelRule
from streams.intake import throttle_metadata_retries
from streams.security import client_kwargs
from streams.terminal_feed import FeedState, TerminalFeed


def input_buffer(
    app: Any,
    settings: Settings,
    topics: list[str],
    label_lead_s: float,
    feed: FeedState | None = None,
    on_wait: Any = None,
    on_expired: Any = None,
) -> InputBuffer:
    """The scoring loop's buffer: the input topics aligned by timestamp (streams/input_buffer.py),
    transactions behind the labels of every partition by at most the label allowance (those of
    other workers through ``feed``'s floors), each partition held back from fetching once it has
    a pipeline batch buffered."""
    n = settings.pipeline_max_batch
    if not settings.input_align_max_idle_ms:
        return InputBuffer(high_water=4 * n)

    def lagging(tp: Any) -> bool:
        # Messages in Kafka not yet handed to the buffer (streams/intake.py); unknown before a
        # partition's first fetch, when it counts as lagging (the wait is bounded).
        return app.consumer.unfetched(tp) is not False

    # Faust's active-partition set takes its own TP type only (a message's tp is aiokafka's).
    def hold(tp: Any) -> None:
        app.consumer.on_buffer_full(ensure_TP(tp))

    def release(tp: Any) -> None:
        consumer, tp = app.consumer, ensure_TP(tp)
        if tp in consumer.assignment():
            consumer.on_buffer_drop(tp)
            consumer.look_again()  # what was fetched of it while held (BatchingConsumer.look_again)
        else:
            consumer._buffered_partitions.discard(tp)

    def mine() -> list[Any]:
        return [tp for tp in app.consumer.assignment() if tp.topic == settings.topic_labels]

    def others() -> list[int]:
        return other_labels_partitions(app, settings)

    rule = None
    if settings.input_align_labels:
        remote: dict[str, Any] = {}
        if feed is not None:
            remote = {"others": others, "floors": feed.floors, "changed": feed.changed}
        rule = LabelRule(settings.topic_transactions, settings.topic_labels, label_lead_s, mine, **remote)
    return InputBuffer(
        # room for every partition's held batch plus a fetch (the per-partition limit does the
        # back-pressure; this stops the fetcher altogether, except while everything buffered
        # waits for a partition still to be fetched: InputBuffer.full)
        high_water=16 * n,
        align=Alignment(
            topics,
            lagging,
            settings.input_align_max_idle_ms / 1000.0,
            labels=rule,
            remote_max_idle_s=settings.terminal_feed_max_wait_ms / 1000.0,
            on_expired=on_expired,
        ),
        tp_limit=n,
        hold=hold,
        release=release,
        on_wait=on_wait,
    )


def other_labels_partitions(app: Any, settings: Settings) -> list[int]:
    """The labels partitions this worker is not assigned: other workers forward their labels."""
    owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic_labels}
    return [p for p in range(settings.topic_partitions) if p not in owned]


def terminal_feed(settings: Settings, topic: str, state: FeedState, on_progress: Any) -> TerminalFeed:
    """The terminal feed's own consumer: no group, nothing committed (streams/terminal_feed.py)."""
    from aiokafka import AIOKafkaConsumer

    def make() -> Any:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            # a failed fetch is retried (and logged) after this long: a broker outage must not
            # flood the log (tests/integration/test_broker_outage.py)
            retry_backoff_ms=1000,
            **client_kwargs(settings),
        )
        throttle_metadata_retries(consumer._client)  # as Faust's clients do (streams/intake.py)
        return consumer

    return TerminalFeed(make, topic, state, on_progress)
