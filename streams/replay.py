"""Replay a historical file into Kafka: transactions, the synthetic clickstream and labels (each
emitted at transaction time + label delay), in event-time order, keyed by user id.

The event time always travels in the payload. Kafka record timestamps are the send time by
default (so end-to-end latency is measurable); ``kafka_timestamps="event"`` stamps records with
the event time instead. ``speed`` paces the replay at that multiple of real time (None: as fast
as possible). Producer errors are raised, never swallowed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import orjson
from tqdm import tqdm

from modeling.records import ClickEvent, Label, Transaction
from modeling.settings import Settings

Event = Transaction | ClickEvent | Label


@dataclass
class ReplayReport:
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def topic_for(ev: Event, settings: Settings) -> str:
    if isinstance(ev, Transaction):
        return settings.topic_transactions
    if isinstance(ev, ClickEvent):
        return settings.topic_clickstream
    return settings.topic_labels


def _time_ms(ev: Event) -> int:
    return ev.label_time_ms if isinstance(ev, Label) else ev.event_time_ms


async def replay_events(
    events: Iterable[Event],
    settings: Settings,
    *,
    total: int | None = None,
    speed: float | None = None,
    kafka_timestamps: Literal["now", "event"] = "now",
    progress: bool = True,
    in_flight: int = 20_000,
) -> ReplayReport:
    from aiokafka import AIOKafkaProducer

    from streams.security import client_kwargs

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        **client_kwargs(settings),
        linger_ms=5,
        max_batch_size=512 * 1024,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=30_000,
    )
    await producer.start()
    report = ReplayReport()
    bar = tqdm(total=total, unit="msg", desc="replay", disable=not progress, mininterval=1.0)
    pending: list[asyncio.Future[object]] = []
    t_wall0 = time.monotonic()
    t_event0: int | None = None
    since_yield = 0
    try:
        for ev in events:
            t_ev = _time_ms(ev)
            since_yield += 1
            if speed:
                if t_event0 is None:
                    t_event0 = t_ev
                due = (t_ev - t_event0) / 1000.0 / speed
                ahead = due - (time.monotonic() - t_wall0)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
                    since_yield = 0
            if since_yield >= 64:
                # send() only appends to the producer's batches; its sender task needs a turn of
                # the event loop to send them (a replay running behind never sleeps)
                await asyncio.sleep(0)
                since_yield = 0
            topic = topic_for(ev, settings)
            ts = t_ev if kafka_timestamps == "event" else None
            fut = await producer.send(
                topic, orjson.dumps(ev.to_dict()), key=ev.user_id.encode(), timestamp_ms=ts
            )
            pending.append(fut)
            report.counts[topic] += 1
            if len(pending) >= in_flight:
                await _drain(pending)
                bar.update(in_flight)
        await producer.flush()
        await _drain(pending)
    finally:
        bar.update(report.total - bar.n)
        bar.close()
        await producer.stop()
    report.seconds = time.monotonic() - t_wall0
    return report


async def _drain(pending: list[asyncio.Future[object]]) -> None:
    """Await the delivery of every pending send; the first failure is raised."""
    results = await asyncio.gather(*pending, return_exceptions=True)
    pending.clear()
    for r in results:
        if isinstance(r, BaseException):
            raise r
