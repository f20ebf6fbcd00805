"""Batched intake: the Faust consumer hands input messages to the scorer a batch at a time.

Faust delivers every message on its own: its fetcher races each delivery against a rebalance
(``wait_first`` — two asyncio tasks per message), wraps it in an ``Event`` and pushes it through a
``Stream`` with sensors, processors and per-event acks. Measured here, that path alone costs
about 170–200 µs of CPU per message with an agent that does nothing: the ceiling of any Faust agent
on this machine is about 5–6k messages/s before any work is done (``benchmarks/README.md``).

This module keeps everything Faust is good at — the consumer group and its partition assignor,
changelog-backed tables and their recovery, offset tracking and commits, flow control during a
rebalance, timers and the web server — and replaces only that per-message hand-off for the topics
the worker consumes in batches:

* :class:`BatchingConsumer` is Faust's aiokafka consumer with ``_drain_messages`` changed in one
  place: a message of a batch topic is appended to that topic's :class:`InputBuffer` (no task, no
  ``Event``); every other topic (table changelogs among them) takes Faust's own path.
* :class:`InputBuffer` (``streams/input_buffer.py``) holds them per partition. The fetcher stops
  fetching while a buffer is over its high-water mark (back-pressure), and a partition with many
  messages buffered is held back on its own. Messages not taken when their partition moves are
  dropped (older consumer generation) and fetched again by the partition's next owner.
* :meth:`InputBuffer.take` returns a micro-batch: up to ``max_n`` messages, waiting at most
  ``max_wait_s`` after the first of them arrived, in Kafka-timestamp order across the
  co-partitioned input topics (their event-time alignment).
* :class:`BatchingApp` is ``faust.App`` using that consumer.

Offsets stay Faust's business: the scorer tracks a message when it takes it
(``Consumer.track_message``, as a ``Stream`` does) and acks it (``Consumer.ack``) once its outputs
are delivered; Faust commits acked offsets only, and flushes the producer before every commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

import faust
from faust.transport.consumer import ensure_TP
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.input_buffer import InputBuffer as InputBuffer  # re-exported: the consumer fills it
from streams.partition_state import held_back, unfetched

log = logging.getLogger("riskstream.intake")


DELIVER, SKIP, RESEEK, GAP = "deliver", "skip", "reseek", "gap"


class DeliveryCursors:
    """The next offset to deliver per partition, and what to do with each fetched message.

    Kafka's own rule: a message is delivered only if it is its partition's next offset, so
    stale copies are dropped and nothing is skipped. :meth:`expect` sets the next offset (a seek);
    it belongs to the consumer generation it was set in, and a partition with none (never sought
    in this generation) takes the first message that comes. :meth:`decide` answers, per message:

    * ``DELIVER`` — it is the next offset (or the first one): the next offset moves past it;
    * ``SKIP`` — below the next offset (delivered already, or a copy from before a seek), or
      ahead of it in a fetch that already asked for a seek back;
    * ``RESEEK`` — ahead of the next offset, first time: seek the partition back to it (a fetch
      begun before a seek can hand out records of the old position after it);
    * ``GAP`` — ahead of it again in a later fetch, after seeking back: the offsets are not in
      the log (transaction markers, compaction). The caller marks them as a gap for commits, as
      Faust does, and delivers the message; the next offset moves past it.
    """

    def __init__(self) -> None:
        self._next: dict[Any, tuple[int, int]] = {}  # partition -> (generation, next offset)
        self._reseek: dict[Any, tuple[int, int]] = {}  # partition -> (offset sought back to, fetch no)

    def expect(self, tp: Any, offset: int, generation: int) -> None:
        self._next[tp] = (generation, offset)
        self._reseek.pop(tp, None)

    def next_offset(self, tp: Any, generation: int) -> int | None:
        cur = self._next.get(tp)
        return cur[1] if cur is not None and cur[0] == generation else None

    def decide(self, tp: Any, offset: int, generation: int, fetch_no: int) -> tuple[str, int]:
        """``(action, next offset before this message)`` for a message fetched by fetch ``fetch_no``
        (with no next offset yet, the message's own)."""
        nxt = self.next_offset(tp, generation)
        if nxt is None:
            nxt = offset
        action = DELIVER
        if offset != nxt:
            if offset < nxt:
                return SKIP, nxt
            tried = self._reseek.get(tp)
            if tried is None or tried[0] != nxt:
                self._reseek[tp] = (nxt, fetch_no)
                return RESEEK, nxt
            if tried[1] == fetch_no:
                return SKIP, nxt
            action = GAP
        if self._reseek:
            self._reseek.pop(tp, None)
        self._next[tp] = (generation, offset + 1)
        return action, nxt


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer; messages of batch topics go to their :class:`InputBuffer`.

    Seeks are the delicate part. Faust seeks every stream partition back to its committed offset
    after a rebalance and table recovery while the fetcher keeps running; a fetch that started
    before the seek can still be handed out after it. Earlier versions of this class lost events
    in the SIGKILL test through that window (one cleared its buffer on resume, one dropped
    fetches that overlapped a seek, one dropped what a group's first run had fetched before a
    seek that never came). Delivery now follows :class:`DeliveryCursors`: each seek sets the
    partition's next offset, only that offset is delivered, and a message ahead of it makes the
    partition seek back once. After each assignment every partition is sought, to its committed
    offset or, with nothing committed, to its log start (:meth:`perform_seek`), and the seek
    drops what the buffer holds of it, since it will be fetched again. Buffers are not cleared
    on resume; the scorer drops messages of an older consumer generation itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursors = DeliveryCursors()
        # the offset of the last record the fetcher handed out, per batch-topic partition,
        # whatever was done with it (:meth:`uncommitted`)
        self.handed_out: dict[Any, int] = {}

    def _new_consumer_thread(self) -> Any:
        return BatchingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        """Faust's fetch of the records the fetcher holds, the partitions an aligned wait is
        waiting for first (:meth:`InputBuffer.awaited`).

        aiokafka hands out fetched records in the order it fetched them, up to
        ``max_poll_records`` a call, partition by partition. Draining a backlog, a partition a
        whole group waited for had its records fetched, but behind other partitions' thousands:
        each call took those first, and the group's wait ran out before its turn came (session
        17: 100 ms of waiting, and 260-760 ms on the wall clock, before it arrived)."""
        if active_partitions:
            wanted = {tp for b in self._buffers() for tp in b.awaited()}
            wanted = {ensure_TP(tp) for tp in wanted} & active_partitions
            if wanted:
                records = await super()._getmany(wanted, 0.0)
                if records:
                    return records
        return await super()._getmany(active_partitions, timeout)

    def _buffers(self) -> list[InputBuffer]:
        """The app's input buffers, each once (several topics share one)."""
        return list({id(b): b for b in getattr(self.app, "input_buffers", {}).values()}.values())

    def look_again(self) -> None:
        """Make a ``getmany`` that waits for new records look at what aiokafka holds again: a
        partition just let go of (``on_buffer_drop``) may have records fetched while it was held.

        aiokafka's ``fetched_records`` looks at the partitions asked for, then sleeps until a
        fetch brings new records or its timeout (1 s here) passes. Records of a partition
        released meanwhile waited for that: with batches of 8 (a partition held and released
        every few batches), groups waited for them up to 1 s (session 17)."""
        fetcher = getattr(aiokafka_consumer(self), "_fetcher", None)
        if fetcher is None:
            return

        def wake() -> None:
            for waiter in list(fetcher._fetch_waiters):
                fetcher._notify(waiter)

        # the fetcher's own loop: Faust's consumer thread's when the consumer is not in the loop
        fetcher._loop.call_soon_threadsafe(wake)

    def unfetched(self, tp: Any) -> bool | None:
        """Whether partition ``tp`` has messages in Kafka that this consumer has not handed out
        yet: its high-water mark (from the last fetch) beyond its position, which moves past
        transaction markers and compacted gaps as records are handed out. False when it is not
        assigned; None when unknown (assigned, not fetched yet)."""
        client = aiokafka_consumer(self)
        return unfetched(client, tp) if client is not None else False

    def held(self, topics: Collection[str]) -> dict[tuple[str, int], tuple[int, int]]:
        """Each assigned partition of ``topics`` fetched read committed: ``(last stable offset,
        messages past it)`` from its last fetch (:func:`held_back`)."""
        client = aiokafka_consumer(self)
        if client is None:
            return {}
        wanted = set(topics)
        out = {}
        for tp in list(client.assignment()):
            if tp.topic in wanted and (found := held_back(client, tp)) is not None:
                out[(tp.topic, tp.partition)] = found
        return out

    def _discard_buffered(self, tps: Any) -> None:
        for buf in self._buffers():
            buf.discard(tps)

    def _expect(self, tp: Any, offset: int) -> None:
        self.cursors.expect(tp, offset, self.app.consumer_generation_id)

    async def perform_seek(self) -> None:
        """Faust's ``perform_seek``, with the delivery rule kept in step (class docstring).

        Every assigned partition of the batch topics is sought, and delivery restarts there: to
        its committed offset, or, with nothing committed, to the start of its log (where the
        worker's ``auto_offset_reset``, earliest, starts a group). What the buffer holds of the
        sought partitions goes: it will be fetched again. Other topics' partitions (the tables'
        changelogs, which Faust's recovery positions) are sought only to a committed offset, as
        Faust does.

        Seeking the partitions with nothing committed too (session 41). Faust's ``getmany``
        drops what is left of a fetch when the flow stops or the consumer generation changes in
        the middle of it, and all of a fetch that returns while the flow is stopped, with
        aiokafka's position already past those records; it counts on this seek to fetch them
        again. Before, a partition with nothing committed was left where the fetcher had got
        to (so as to keep what had been fetched of it: dropped from the buffer unsought, it
        would never have come again; a group's first run lost events that way). Its dropped
        records were then lost for good: a worker that took over a labels partition from a
        killed one, none of whose labels had been committed yet, delivered none of them, and
        the group's lag stayed at the partition's size (tests/integration/test_seek_race.py).

        The offsets are read first and every seek made after, with the cursors and the buffers,
        in one stretch without an await. Faust's ``seek_to_committed`` (aiokafka's) awaits each
        partition's committed offset in turn and seeks it before reading the next; the fetcher
        ran in those awaits and handed out a sought partition's records again, which the buffer
        discard after it then dropped, with the position already past them. Those events
        waited, unscored, for the partition's next record (whose gap seeks back), and with none
        the restarted worker of tests/integration/test_unreadable_state.py scored nothing
        (session 27's rare CI failure; found in session 28, DEVELOPERS.md).
        """
        committed = await self.committed_offsets()
        batch = set(getattr(self.app, "input_buffers", {}))  # the other topics are Faust's to seek
        unread = [tp for tp, off in committed.items() if (off is None or off < 0) and tp.topic in batch]
        starts = await self.log_starts(unread) if unread else {}
        # No await from here on: the fetcher cannot deliver between the seeks and these updates.
        # A partition revoked during those awaits is its next owner's to seek.
        assigned = self._thread.assignment()
        committed = {tp: offset for tp, offset in committed.items() if tp in assigned}
        sought = {tp: starts[tp] for tp in committed if tp in starts}
        sought.update({tp: offset for tp, offset in committed.items() if offset is not None and offset >= 0})
        for tp, offset in sought.items():
            self._thread.seek(tp, offset)
        self._read_offset.update({tp: sought.get(tp) for tp in committed})
        self._committed_offset.update(
            {ensure_TP(tp): offset or None for tp, offset in committed.items() if offset is not None}
        )
        for tp, offset in sought.items():
            self._expect(tp, offset)
        if sought:
            self._discard_buffered(set(sought))

    async def log_starts(self, tps: Collection[Any]) -> dict[Any, int]:
        """The first offset of each partition's log (its start after retention), nothing sought."""

        async def read() -> dict[Any, int]:
            consumer = self._thread._ensure_consumer()
            return dict(await consumer.beginning_offsets(list(tps)))

        return dict(await self._thread.call_thread(read))

    async def committed_offsets(self, topics: Collection[str] | None = None) -> dict[Any, int | None]:
        """The group's committed offset of every assigned partition (of ``topics`` only, when
        given; None: nothing committed), nothing sought."""

        async def read() -> dict[Any, int | None]:
            consumer = self._thread._ensure_consumer()
            tps = [tp for tp in consumer.assignment() if topics is None or tp.topic in topics]
            return {tp: await consumer.committed(tp) for tp in tps}

        return dict(await self._thread.call_thread(read))

    async def uncommitted(self, topics: Collection[str]) -> dict[tuple[str, int], int]:
        """Messages after the group's committed offset on every assigned partition of
        ``topics``: log end minus committed, as Kafka's consumer-group lag counts them. A
        partition with nothing committed counts from its log start, where the group starts
        reading it (the worker's ``auto_offset_reset`` is earliest). The log end is the last
        fetch's high-water mark, or asked of the broker for a partition not fetched yet.

        One difference from Kafka's count: a partition fetched to its end whose last record
        handed out lies before the committed offset counts 0. The fetcher went past what lies
        between without handing it out, so those are no messages: the control records that end
        every Kafka transaction (and an aborted one's records, read committed). A producer
        writing the input in transactions otherwise left 1 per partition after the last marker,
        for good, where nothing waits (tests/integration/test_transactional_input.py)."""
        committed = await self.committed_offsets(topics)
        handed_out = self.handed_out
        recorded = set(getattr(self.app, "input_buffers", {}))  # handed_out: batch topics only

        async def read() -> dict[tuple[str, int], int]:
            consumer = self._thread._ensure_consumer()
            unread = [tp for tp, offset in committed.items() if offset is None]
            base = {**committed, **(await consumer.beginning_offsets(unread) if unread else {})}
            assigned = consumer.assignment()  # a partition revoked meanwhile is not ours to report
            ends = {tp: consumer.highwater(tp) for tp in committed if tp in assigned}
            # Fetched to its end (assigned, no await since), nothing handed out from the
            # committed offset on: only control records lie between.
            markers = {
                tp
                for tp in ends
                if tp.topic in recorded
                and unfetched(consumer, tp) is False
                and handed_out.get(tp, -1) < base[tp]
            }
            unknown = [tp for tp, end in ends.items() if end is None]
            if unknown:
                ends.update(await consumer.end_offsets(unknown))
            return {
                (tp.topic, tp.partition): 0 if tp in markers else max(end - base[tp], 0)
                for tp, end in ends.items()
            }

        return dict(await self._thread.call_thread(read))

    async def seek(self, partition: Any, offset: int) -> None:
        await super().seek(partition, offset)
        self._expect(partition, offset)
        self._discard_buffered({partition})

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised via Kafka
        buffers: dict[str, InputBuffer] = getattr(self.app, "input_buffers", {})
        # The loop of faust.transport.consumer.Consumer._drain_messages (faust-streaming 0.11 to
        # 0.15), with batch-topic messages handed to their buffer (delivery rule: class docstring)
        # and a back-pressure wait; other topics (table changelogs) take Faust's path unchanged.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        sleep = asyncio.sleep
        app = self.app
        yield_every = 100  # changelog records delivered between two yields
        fetch_no = 0
        decide = self.cursors.decide
        handed_out = self.handed_out
        deferred: list[tuple[Any, Any]] = []
        on_fetch = getattr(app, "on_fetch", lambda n: None)
        on_poll = getattr(app, "on_poll", None)  # every poll, empty ones too (streams/fetch_pacer.py)
        replicas = getattr(app, "direct_replicas", ())  # the tables' (streams/replica.py)

        async def deliver(records: list[tuple[Any, Any]]) -> None:
            # Faust's per-record delivery, in order; a suspension cancels what is left (the
            # partitions are sought again after the rebalance).
            for i, (tp, message) in enumerate(records):
                if i % yield_every == yield_every - 1:
                    await sleep(0)
                offset = message.offset
                r_offset = get_read_offset(tp)
                if r_offset is None or offset >= r_offset:
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    await callback(message)
                    set_read_offset(tp, offset)

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                for buf in buffers.values():
                    if buf.full():
                        await self.wait_first(buf.wait_for_room(), self.suspend_flow.wait())
                fetch_no += 1
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                n_fetched = 0
                # No yield to the event loop inside a fetch (at most 2 x pipeline_max_batch
                # records, about 4 us each in a drain's profile): a yield let a whole
                # micro-batch run before the rest of the fetch reached the buffer, and the next
                # batch took a smaller one. Faust yields every 100 records; not yielding took
                # p99 at half rate from 746, 826 and 1,073 ms to 420, 731 and 709 (three
                # alternated pairs, benchmarks/README.md).
                async for tp, message in ait:
                    n_fetched += 1
                    offset = message.offset
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    target = buffers.get(tp.topic)
                    if target is not None:
                        handed_out[tp] = offset
                        if message.generation_id != app.consumer_generation_id:
                            continue  # an older assignment's; the seek after a rebalance refetches it
                        action, nxt = decide(tp, offset, message.generation_id, fetch_no)
                        if action is not DELIVER:
                            if action is SKIP:
                                continue
                            if action is RESEEK:
                                log.warning("seeking %s back to %d (got %d)", tp, nxt, offset)
                                await super().seek(tp, nxt)  # not self.seek: the cursor stays
                                continue
                            log.warning("%s: offsets %d..%d absent, taken as a gap", tp, nxt, offset - 1)
                            if acks_enabled_for(message.topic):
                                await self._add_gap(tp, nxt, offset - 1)
                        target.put(message)
                        set_read_offset(tp, offset)
                        continue
                    deferred.append((tp, message))
                # Other topics (table changelogs: the global terminal table's is read all the
                # time) take Faust's per-message path, which awaits for every record; each await
                # can let a whole micro-batch run. They go after this fetch's input messages are
                # in their buffers, so those do not wait behind them, and all of them in one
                # race against a flow suspension (Faust races each record: four tasks apiece).
                if n_fetched:
                    on_fetch(n_fetched)
                if on_poll is not None:
                    on_poll(n_fetched)
                for replica in replicas:
                    if not deferred:
                        break
                    deferred = await replica.take(deferred, get_read_offset, set_read_offset)
                if deferred:
                    await self.wait_first(deliver(deferred), self.suspend_flow.wait())
                    deferred = []
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


def aiokafka_consumer(consumer: Any) -> Any:
    """The aiokafka consumer behind a Faust consumer's thread (None before it is created)."""
    return getattr(getattr(consumer, "_thread", None), "_consumer", None)


def throttle_metadata_retries(client: Any, max_backoff_s: float = 1.0) -> None:
    """After a failed metadata update, wait before the next one: ``retry_backoff_ms``, doubling
    with each failure in a row up to ``max_backoff_s``; a success resets it.

    aiokafka (0.12) retries at once: with the broker gone, its fetcher finds no partition leader,
    forces a metadata update, the update fails at once (connection refused), and round again. A
    worker whose broker went away spun one core and logged about two errors per millisecond
    until it was killed (``tests/integration/test_broker_outage.py``). The Java client backs off
    between failed requests in the same way (``retry.backoff.ms`` up to
    ``retry.backoff.max.ms``). ``client`` is an ``aiokafka.AIOKafkaClient``; its
    ``_metadata_update`` is wrapped on this instance only.
    """
    update = client._metadata_update
    first = float(client._retry_backoff)
    failures = 0

    async def _metadata_update(cluster_metadata: Any, topics: Any) -> bool:
        nonlocal failures
        ok = bool(await update(cluster_metadata, topics))
        if ok:
            failures = 0
        else:
            await asyncio.sleep(min(first * 2**failures, max(first, max_backoff_s)))
            failures = min(failures + 1, 30)
        return ok

    client._metadata_update = _metadata_update


class BatchingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the app's fetch settings (Faust fixes 1 byte / 1.5 s),
    metadata retries that back off (:func:`throttle_metadata_retries`), and reading committed
    records only (the setting ``input_isolation_level``).

    Faust reads uncommitted records unless the app itself runs exactly-once. A producer that
    writes the input in Kafka transactions and aborts one would then have its records scored
    and folded into the users' windows, in no backtest's history. Read committed, the fetcher
    hands out a partition's records up to its last stable offset (the first record of a
    transaction still open) and never those of an aborted one. Records written without
    transactions (every changelog of the worker's) are all committed."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher.
        consumer._isolation_level = getattr(self.app, "isolation_level", "read_committed")
        fetch = getattr(self.app, "fetch_settings", None)
        if fetch is not None:
            consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = fetch
        throttle_metadata_retries(consumer._client)
        return consumer


class BackoffProducer(faust_aiokafka.Producer):
    """Faust's producer; its client's metadata retries back off (:func:`throttle_metadata_retries`)."""

    def _new_producer(self, transactional_id: str | None = None) -> Any:
        producer = super()._new_producer(transactional_id)
        throttle_metadata_retries(producer.client)
        return producer


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer
    Producer = BackoffProducer


class BatchingApp(faust.App):
    """``faust.App`` whose consumer fills :attr:`input_buffers` for the topics registered there."""

    input_buffers: dict[str, InputBuffer]
    fetch_settings: tuple[int, int] | None  # (fetch_min_bytes, fetch_max_wait_ms); None: Faust's
    isolation_level: str  # the consumer's (BatchingConsumerThread)
    on_fetch: Any  # called with the number of records of each fetch (a metric's observe)
    on_poll: Any  # called after every poll of the fetcher, with its records (0 too), or None
    direct_replicas: tuple[Any, ...] = ()  # streams/replica.py's DirectReplica of each table that has one

    def __init__(
        self,
        *args: Any,
        fetch_settings: tuple[int, int] | None = None,
        isolation_level: str = "read_committed",
        transport_type: type[faust_aiokafka.Transport] = BatchingTransport,
        **kwargs: Any,
    ) -> None:
        self.transport_type = transport_type  # read by _new_transport during super().__init__
        super().__init__(*args, **kwargs)
        self.input_buffers = {}
        self.fetch_settings = fetch_settings
        self.isolation_level = isolation_level
        self.on_fetch = lambda n: None
        self.on_poll = None

    def batch_topics(self, topic: Any, buffer: InputBuffer) -> None:
        """Consume ``topic`` (a ``faust.Topic``) into ``buffer``: subscribed, never streamed."""
        for name in topic.topics:
            self.input_buffers[name] = buffer
        self.topics.add(topic)  # the conductor subscribes the consumer and enables acks

    def _new_transport(self) -> Any:
        return self.transport_type(self.conf.broker_consumer, self)
