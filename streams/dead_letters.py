"""What is in the dead-letter topic, and sending chosen dead letters back to their input topic.

An input message is dead-lettered with its original key and bytes and headers naming its source
topic, partition and offset, the field and the reason (``streams/unreadable.py``). Some reasons
are the worker's rules, not the message's fault, and go away when a setting changes: an event
stamped ahead of a worker whose clock was wrong (``max_event_ahead_s``), a key that is not the
user id where producers key users alike some other way (``require_user_keys``), a message over
``max_message_bytes``. Once the setting is fixed, :func:`redrive` sends those dead letters back
to the topic they came from, so the workers score them then (a transaction scored this late is
a late event: DEVELOPERS.md, "Event time, late events and delayed labels").

- Each re-sent record carries the header ``riskstream-redriven-from`` (``<dlq>:<partition>:<offset>``);
  a dead letter keeps none of the input record's own headers, so only one re-sent from its source
  (below) has those too.
- A dead letter whose value or key was cut to fit the topic (``riskstream-value-bytes``) is
  re-sent from its source record, read back at its offset and checked against the cut's sha256;
  where the source topic no longer holds it, it is skipped and counted.
- Stored states (``riskstream-state-kind``) are never re-sent: they were no input.
- What was re-sent is recorded: with each chunk's re-sent records, a record keyed by each one's
  source (``<topic>:<partition>:<offset>``, the input message it was) goes to the compacted
  topic ``<dead-letter topic>-redriven`` (:func:`redriven_topic`). A later run skips dead
  letters whose source is there, so running it twice does not send a transaction twice (the
  workers would fold it into the user's windows twice); ``again`` re-sends them anyway.
  Duplicate dead letters of one source (a worker's redelivery after a crash) are sent once. A
  message refused again after its re-send is a new dead letter with a new source, so a later
  run sends it again.
- A chunk's records and their records of what was sent go in one Kafka transaction
  (:func:`redrive_transactional_id`): a run stopped anywhere leaves each chunk either sent and
  recorded or, aborted, neither. The workers read committed records only
  (``streams/intake.py``), so they never score an aborted chunk's records, and the next run
  sends it whole. The id is one per app and dead-letter topic: a second run started while one
  is running fences it (the first fails on its next chunk, its open chunk aborted), and reads
  what was recorded only after that, so the two never send one dead letter both.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from modeling.errors import RiskstreamError
from modeling.settings import Settings
from streams.broker.ranges import read_range
from streams.broker.topics import dead_letter_max_bytes
from streams.unreadable import (
    ERROR,
    ERROR_FIELD,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    STATE_KIND,
    cut_header,
)

REDRIVEN_HEADER = "riskstream-redriven-from"


class DeadLetterError(RiskstreamError):
    """The dead-letter topic cannot be read, or a re-send failed."""


@dataclass(frozen=True)
class Letter:
    """One record of the dead-letter topic."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return None

    @property
    def state_kind(self) -> str | None:
        return self.header(STATE_KIND)

    @property
    def source(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) of the input record; None for a stored state."""
        topic, part, off = (self.header(h) for h in (SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET))
        if topic is None or part is None or off is None:
            return None
        return topic, int(part), int(off)

    @property
    def origin(self) -> str:
        """The input topic it came from, or a stored state's kind (``user-state``)."""
        return self.header(SOURCE_TOPIC) or self.state_kind or "?"

    @property
    def field(self) -> str:
        return self.header(ERROR_FIELD) or "?"

    @property
    def reason(self) -> str:
        return self.header(ERROR) or "?"

    @property
    def cut(self) -> bool:
        return any(self.header(cut_header(part, "bytes")) is not None for part in ("value", "key"))


def _selected(
    letter: Letter,
    topics: set[str] | None,
    fields: set[str] | None,
    since_ms: int | None,
    until_ms: int | None,
) -> bool:
    if since_ms is not None and letter.timestamp_ms < since_ms:
        return False
    if until_ms is not None and letter.timestamp_ms >= until_ms:
        return False
    if topics is not None and letter.origin not in topics:
        return False
    return fields is None or letter.field in fields


async def iter_letters(
    settings: Settings,
    *,
    topics: set[str] | None = None,
    fields: set[str] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    stall_s: float = 60.0,
) -> AsyncIterator[list[Letter]]:
    """The dead letters from the topic's start (or ``since_ms``) to its end as the call found it,
    a fetch at a time (a topic of large records is never held whole): those of the source
    ``topics`` (a stored state's: its kind, ``user-state``) and ``fields`` given, stamped in
    [``since_ms``, ``until_ms``). Raises :class:`DeadLetterError` after ``stall_s`` without
    progress."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.security import client_kwargs

    name = settings.topic_dead_letter
    parts = await _partitions(settings, name)
    if not parts:
        raise DeadLetterError(f"no dead-letter topic {name!r} on {settings.bootstrap_servers}")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=dead_letter_max_bytes(settings),  # its records are no larger
        **client_kwargs(settings),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(name, p) for p in parts]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        if since_ms is not None:
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
            starts = {tp: (ends[tp] if o is None else o.offset) for tp, o in found.items()}
        async for records in _to_end(consumer, starts, ends, stall_s):
            chosen = [
                letter
                for r in records
                if _selected(
                    letter := Letter(r.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers)),
                    topics,
                    fields,
                    since_ms,
                    until_ms,
                )
            ]
            if chosen:
                yield chosen
    finally:
        await consumer.stop()


async def _to_end(
    consumer: Any, starts: dict[Any, int], ends: dict[Any, int], stall_s: float
) -> AsyncIterator[list[Any]]:
    """:func:`~streams.broker.ranges.read_range`, a stall raised as :class:`DeadLetterError`."""
    try:
        async for records in read_range(consumer, starts, ends, stall_s):
            yield records
    except TimeoutError as exc:
        raise DeadLetterError(str(exc)) from None


async def _partitions(settings: Settings, topic: str) -> list[int]:
    """The partitions of ``topic``; none if it does not exist. Listed before it is described:
    a broker with ``auto.create.topics.enable`` creates a topic it is asked to describe, with its
    own defaults (the redrive record's topic came out with 4 partitions, not compacted)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.security import client_kwargs

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_kwargs(settings))
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return []
        for t in await admin.describe_topics([topic]):
            if t["topic"] == topic and t["error_code"] == 0:
                return sorted(p["partition"] for p in t["partitions"])
        return []
    finally:
        await admin.close()


@dataclass
class Summary:
    """Dead letters by origin (source topic, or a stored state's kind) and field."""

    total: int = 0
    groups: Counter[tuple[str, str]] = field(default_factory=Counter)
    example: dict[tuple[str, str], str] = field(default_factory=dict)  # the first reason of each
    cut: int = 0
    first_ms: int | None = None
    last_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "cut": self.cut,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "groups": [
                {"origin": o, "field": f, "count": n, "example": self.example[(o, f)]}
                for (o, f), n in self.groups.most_common()
            ],
        }


def summarize(letters: Iterable[Letter], into: Summary | None = None) -> Summary:
    """``letters`` counted (into ``into``, a summary so far, if given)."""
    s = Summary() if into is None else into
    for letter in letters:
        group = (letter.origin, letter.field)
        s.total += 1
        s.groups[group] += 1
        s.example.setdefault(group, letter.reason)
        s.cut += letter.cut
        t = letter.timestamp_ms
        s.first_ms = t if s.first_ms is None else min(s.first_ms, t)
        s.last_ms = t if s.last_ms is None else max(s.last_ms, t)
    return s


@dataclass
class RedriveReport:
    sent: Counter[str] = field(default_factory=Counter)  # by input topic
    from_source: int = 0  # cut dead letters re-sent from their source record
    skipped_states: int = 0
    skipped_sent: int = 0  # sent back before (the record topic), or a duplicate in this run
    skipped_gone: list[str] = field(default_factory=list)  # "<topic>[<p>]@<offset>": source deleted


# The largest record a re-send takes (the producer's own check; the topic's limit is the broker's)
MAX_RESEND_BYTES = 64 << 20


def redriven_topic(settings: Settings) -> str:
    """The compacted topic that records the sources of the dead letters sent back."""
    return f"{settings.topic_dead_letter}-redriven"


def redrive_transactional_id(settings: Settings) -> str:
    """The redrive's Kafka transactional id: one per app and dead-letter topic (module doc). A
    cluster with ACLs must let the redrive's principal write and describe it."""
    return f"{settings.app_id}-redrive-{settings.topic_dead_letter}"


def source_key(source: tuple[str, int, int]) -> bytes:
    """A dead letter's source as the record topic keys it: ``<topic>:<partition>:<offset>``."""
    topic, part, offset = source
    return f"{topic}:{part}:{offset}".encode()


async def sent_before(settings: Settings) -> set[bytes]:
    """The sources recorded in :func:`redriven_topic` (none if it does not exist)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.security import client_kwargs

    name = redriven_topic(settings)
    parts = await _partitions(settings, name)
    if not parts:
        return set()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",  # an aborted chunk's records were not sent
        **client_kwargs(settings),
    )
    await consumer.start()
    keys: set[bytes] = set()
    try:
        tps = [TopicPartition(name, p) for p in parts]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        async for records in _to_end(consumer, starts, ends, 60.0):
            keys.update(r.key for r in records if r.key is not None and r.value is not None)
    finally:
        await consumer.stop()
    return keys


async def _ensure_record_topic(settings: Settings) -> None:
    from streams.broker.topics import ensure_topics
    from streams.security import client_kwargs

    name = redriven_topic(settings)
    await ensure_topics(
        settings.bootstrap_servers,
        {name: 1},
        settings.topic_replication,
        configs={name: {"cleanup.policy": "compact"}},
        **client_kwargs(settings),
    )


async def redrive(
    settings: Settings,
    chunks: AsyncIterator[list[Letter]],
    *,
    dry_run: bool = False,
    again: bool = False,
    log: Callable[[str], None] = print,
) -> RedriveReport:
    """Send the dead letters of ``chunks`` (:func:`iter_letters`) back to their source topics, in
    their order, a chunk at a time, and record their sources; skip those recorded before unless
    ``again`` (module doc)."""
    from aiokafka import AIOKafkaProducer

    from streams.security import client_kwargs

    report = RedriveReport()
    producer = None
    if not dry_run:
        await _ensure_record_topic(settings)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            transactional_id=redrive_transactional_id(settings),
            max_request_size=MAX_RESEND_BYTES,
            **client_kwargs(settings),
        )
        # fences an earlier run still running (module doc) before what was sent is read
        await producer.start()
    try:
        done = set() if again else await sent_before(settings)
        record = redriven_topic(settings)
        async for letters in chunks:
            out, sources = await _records(settings, letters, report, done)
            if producer is None or not out:
                continue
            try:
                async with producer.transaction():  # aborted on an error
                    sends = [
                        await producer.send(topic, value, key=key, headers=h) for topic, key, value, h in out
                    ]
                    sends += [await producer.send(record, origin, key=key) for key, origin in sources]
                    for fut in sends:
                        await fut
            except Exception as exc:
                before = sum(report.sent.values()) - len(out)
                raise DeadLetterError(
                    f"re-sending dead letters failed after {before:,d} were sent; the chunk that"
                    f" failed was not (its transaction aborted): {exc!r}"
                ) from exc
    finally:
        if producer is not None:
            await producer.stop()
    for gone in report.skipped_gone:
        log(f"skipped {gone}: the dead letter was cut and its source record is no longer there")
    return report


async def _records(
    settings: Settings, letters: list[Letter], report: RedriveReport, done: set[bytes]
) -> tuple[list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]], list[tuple[bytes, bytes]]]:
    """The records that send ``letters`` back, counted in ``report``, and the records of their
    sources for :func:`redriven_topic`; ``done``: the sources sent before, which this adds to."""
    todo: list[tuple[Letter, tuple[str, int, int]]] = []
    for letter in letters:
        source = letter.source
        if source is None:
            report.skipped_states += 1
        elif source_key(source) in done:
            report.skipped_sent += 1
        else:
            done.add(source_key(source))
            todo.append((letter, source))
    originals = await _originals(settings, [letter for letter, _ in todo if letter.cut])
    out: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    sources: list[tuple[bytes, bytes]] = []
    for letter, (topic, part, offset) in todo:
        key, value = letter.key, letter.value
        headers: list[tuple[str, bytes]] = []
        if letter.cut:
            original = originals.get((letter.partition, letter.offset))
            if original is None:
                report.skipped_gone.append(f"{topic}[{part}]@{offset}")
                continue
            key, value, headers = original
            report.from_source += 1
        origin = f"{settings.topic_dead_letter}:{letter.partition}:{letter.offset}"
        out.append((topic, key, value, [*headers, (REDRIVEN_HEADER, origin.encode())]))
        sources.append((source_key((topic, part, offset)), origin.encode()))
        report.sent[topic] += 1
    return out, sources


async def _originals(
    settings: Settings, letters: list[Letter]
) -> dict[tuple[int, int], tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """The source records of cut dead letters, by the dead letter's (partition, offset): read at
    the source offset, and kept only if the record there is the one cut (its sha256)."""
    if not letters:
        return {}
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.security import client_kwargs

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="none",
        isolation_level="read_committed",  # as the workers read the input
        max_partition_fetch_bytes=MAX_RESEND_BYTES,
        **client_kwargs(settings),
    )
    await consumer.start()
    found: dict[tuple[int, int], tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = {}
    try:
        for letter in letters:
            source = letter.source
            if source is None:
                continue
            topic, part, offset = source
            tp = TopicPartition(topic, part)
            consumer.assign([tp])
            if offset < (await consumer.beginning_offsets([tp]))[tp]:
                continue  # deleted by the topic's retention
            consumer.seek(tp, offset)
            batch = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
            record = next(iter(batch.get(tp, [])), None)
            if record is None or record.offset != offset:
                continue
            if _matches(letter, "value", record.value) and _matches(letter, "key", record.key):
                found[(letter.partition, letter.offset)] = (record.key, record.value, list(record.headers))
    finally:
        await consumer.stop()
    return found


def _matches(letter: Letter, part: str, data: bytes | None) -> bool:
    """Whether ``data`` is what the dead letter's ``part`` (value or key) was cut from, or, not
    cut, equals it."""
    digest = letter.header(cut_header(part, "sha256"))
    if digest is None:
        return data == (letter.value if part == "value" else letter.key)
    return data is not None and hashlib.sha256(data).hexdigest() == digest
