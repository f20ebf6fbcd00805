"""DirectReplica (streams/replica.py): the global terminal table's changelog applied a fetch at a
time, on a real Faust app, table, recovery service and messages (no broker: nothing here sends).
Through a broker: tests/integration/test_terminal_catch_up.py (two workers reading each other's
labels back through the replica)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.types import TP, Message

from modeling.settings import Settings
from streams.output import ChangelogKeys
from streams.replica import DirectReplica
from streams.terminal_store import terminal_table


class World:
    def __init__(self) -> None:
        self.app = faust.App("t-replica", broker="kafka://127.0.0.1:1", store="memory://")
        self.table = terminal_table(self.app, Settings())  # as the worker builds it
        self.recovery = self.app.tables.recovery
        self.topic = self.table.changelog_topic.get_topic_name()
        self.tp = TP(self.topic, 0)
        self.keys = ChangelogKeys(self.table)
        self.read: dict[Any, int] = {}
        self.applied: list[tuple[str, int]] = []
        self.replica = DirectReplica(self.app, self.table, lambda path, n: self.applied.append((path, n)))

    def idle_standby(self) -> None:
        """Recovery done, the changelog partition a standby of this worker (as on every worker)."""
        self.recovery.add_standby(self.table, self.tp)
        self.recovery.completed.set()

    def msg(self, offset: int, key: str, value: bytes | None, tp: TP | None = None) -> tuple[TP, Message]:
        tp = tp or self.tp
        return tp, Message(tp.topic, tp.partition, offset, 0.0, 0, [], self.keys(key), value, None)

    def take(self, records: list[tuple[TP, Message]]) -> list[tuple[TP, Message]]:
        return asyncio.run(self.replica.take(records, self.read.get, self.read.__setitem__))

    def deliver(self, records: list[tuple[TP, Message]]) -> None:
        """Records handed to Faust's path reach its changelog queue (the conductor's callback)."""
        for rec in records:
            self.app.tables.changelog_queue.put_nowait(rec)

    def faust_takes(self, n: int, offsets: Any) -> None:
        """Faust's recovery loop takes ``n`` records off its queue: records each one's offset in
        ``offsets`` and applies it (``recovery_buffer_size=1``)."""
        queue = self.app.tables.changelog_queue
        for _ in range(n):
            tp, message = queue.get_nowait()
            event = asyncio.run(self.table.changelog_topic.decode(message, propagate=True))
            offsets[tp] = message.offset
            self.table.apply_changelog_batch([event])

    def store(self) -> dict[str, Any]:
        return dict(self.table.data.data)


def test_applies_a_fetch_at_once_and_keeps_faust_s_books() -> None:
    w = World()
    w.idle_standby()
    other = w.msg(7, "u1", b"x", tp=TP("t-replica-user-state-changelog", 2))
    rest = w.take([w.msg(0, "T1", b"a"), other, w.msg(1, "T2", b"b"), w.msg(2, "T1", b"c")])
    assert rest == [other]  # another table's record keeps Faust's path
    assert w.store() == {"T1": b"c", "T2": b"b"}
    assert w.recovery.standby_offsets[w.tp] == 2  # where Faust's next recovery seeks from
    assert w.read[w.tp] == 2  # the consumer's read offset, as its own delivery sets it
    assert w.applied == [("direct", 3)]


def test_a_tombstone_deletes_the_key() -> None:
    w = World()
    w.idle_standby()
    w.take([w.msg(0, "T1", b"a"), w.msg(1, "T2", b"b")])
    w.take([w.msg(2, "T1", None)])
    assert w.store() == {"T2": b"b"}


def test_a_record_at_or_below_the_recorded_offset_changes_nothing() -> None:
    w = World()
    w.idle_standby()
    w.take([w.msg(0, "T1", b"a"), w.msg(1, "T1", b"b")])
    w.read.clear()  # e.g. fetched again after a seek: only the recorded offset guards the store
    assert w.take([w.msg(0, "T1", b"old")]) == []
    assert w.store() == {"T1": b"b"}
    assert w.recovery.standby_offsets[w.tp] == 1


def test_records_read_already_are_dropped_as_faust_s_delivery_drops_them() -> None:
    w = World()
    w.idle_standby()
    w.read[w.tp] = 5
    assert w.take([w.msg(3, "T1", b"a"), w.msg(5, "T2", b"b")]) == []
    assert w.store() == {"T2": b"b"}


def test_everything_takes_faust_s_path_while_recovery_or_a_rebalance_runs() -> None:
    w = World()
    w.recovery.add_standby(w.table, w.tp)
    records = [w.msg(0, "T1", b"a")]
    assert w.take(records) == records  # the first recovery has not completed
    w.recovery.completed.set()
    w.recovery.in_recovery = True
    assert w.take([w.msg(1, "T1", b"b")]) != []
    w.recovery.in_recovery = False
    w.app.rebalancing = True
    assert w.take([w.msg(2, "T1", b"c")]) != []
    assert w.store() == {}
    assert w.applied == [("faust", 1)] * 3


def test_a_partition_faust_does_not_track_takes_faust_s_path() -> None:
    w = World()
    w.recovery.completed.set()  # but the partition was never assigned
    records = [w.msg(0, "T1", b"a")]
    assert w.take(records) == records


def test_waits_until_faust_took_what_it_was_handed() -> None:
    """A record handed to Faust may still be on its queue: a newer one applied meanwhile would
    be overwritten by it, so the partition stays on Faust's path until Faust caught up."""
    w = World()
    w.recovery.add_standby(w.table, w.tp)
    w.recovery.completed.set()
    w.recovery.in_recovery = True
    w.deliver(w.take([w.msg(0, "T1", b"a"), w.msg(1, "T1", b"b")]))  # handed to Faust
    w.recovery.in_recovery = False
    w.faust_takes(1, w.recovery.standby_offsets)  # offset 0 taken, 1 still on the queue
    rest = w.take([w.msg(2, "T1", b"c")])
    assert len(rest) == 1
    w.deliver(rest)
    w.faust_takes(2, w.recovery.standby_offsets)  # now it has taken everything handed to it
    assert w.take([w.msg(3, "T1", b"d")]) == []
    assert w.store() == {"T1": b"d"}
    assert w.recovery.standby_offsets[w.tp] == 3


def test_another_partition_s_records_on_faust_s_queue_do_not_hold_this_one_back() -> None:
    w = World()
    w.recovery.add_standby(w.table, w.tp)
    w.recovery.completed.set()
    w.recovery.in_recovery = True
    w.deliver(w.take([w.msg(0, "T1", b"a")]))
    w.recovery.in_recovery = False
    w.faust_takes(1, w.recovery.standby_offsets)
    w.deliver([w.msg(9, "u1", b"x", tp=TP("t-replica-user-state-changelog", 2))])  # still queued
    assert w.take([w.msg(1, "T1", b"b")]) == []  # Faust's offset here reached what it was handed
    assert w.store() == {"T1": b"b"}


def test_an_empty_queue_is_not_enough() -> None:
    """Faust's loop takes a record off its queue a step before it records the offset: with the
    queue empty and the offset not recorded yet, the record is still Faust's to apply."""
    w = World()
    w.recovery.add_standby(w.table, w.tp)
    w.recovery.completed.set()
    w.recovery.in_recovery = True
    w.take([w.msg(0, "T1", b"a")])  # handed to Faust, taken off its queue, offset not recorded
    w.recovery.in_recovery = False
    assert len(w.take([w.msg(1, "T2", b"b")])) == 1


def test_an_active_partition_keeps_its_active_offset() -> None:
    """The worker that owns the table's partition reads it as active after recovery
    (``recovery_buffer_size=1``): its offset is the active one."""
    w = World()
    w.recovery.add_active(w.table, w.tp)
    w.recovery.add_standby(w.table, w.tp)
    w.recovery.completed.set()
    w.take([w.msg(4, "T1", b"a")])
    assert w.recovery.active_offsets[w.tp] == 4
    assert w.recovery.standby_offsets[w.tp] is None


def test_a_record_that_does_not_decode_goes_to_faust_with_the_rest_of_its_partition() -> None:
    w = World()
    w.idle_standby()
    bad = (w.tp, Message(w.topic, 0, 1, 0.0, 0, [], b"not json", b"x", None))
    rest = w.take([w.msg(0, "T1", b"a"), bad, w.msg(2, "T2", b"b")])
    assert [m.offset for _, m in rest] == [1, 2]
    assert w.store() == {"T1": b"a"}
    assert w.recovery.standby_offsets[w.tp] == 0


def test_a_table_with_a_changelog_callback_keeps_faust_s_path() -> None:
    w = World()
    w.idle_standby()

    async def on_event(event: Any) -> None:
        pass

    w.table._on_changelog_event = on_event
    records = [w.msg(0, "T1", b"a")]
    assert w.take(records) == records


# ------------------------------------------------------------- during a recovery (user-state)


class Recovering:
    """A worker's user-state table while Faust's recovery reads two of its partitions as active,
    from the start (offset -1), up to offset 2 (three records each)."""

    def __init__(self) -> None:
        self.app = faust.App("t-recover", broker="kafka://127.0.0.1:1", store="memory://")
        self.table = self.app.Table("user-state", default=None, partitions=4, key_type=str, value_type=bytes)
        self.recovery = self.app.tables.recovery
        topic = self.table.changelog_topic.get_topic_name()
        self.tps = [TP(topic, 0), TP(topic, 1)]
        self.keys = ChangelogKeys(self.table)
        self.read: dict[Any, int] = {}
        self.applied: list[tuple[str, int]] = []
        self.replica = DirectReplica(
            self.app, self.table, lambda path, n: self.applied.append((path, n)), during_recovery=True
        )
        for tp in self.tps:
            self.recovery.add_active(self.table, tp)
            self.recovery.active_offsets[tp] = -1  # built by Faust's recovery: from the start
            self.recovery.active_highwaters[tp] = 2
        self.recovery._set_recovery_started()

    def msg(self, p: int, offset: int, key: str, value: bytes | None) -> tuple[TP, Message]:
        tp = self.tps[p]
        return tp, Message(tp.topic, tp.partition, offset, 0.0, 0, [], self.keys(key), value, None)

    def take(self, records: list[tuple[TP, Message]]) -> list[tuple[TP, Message]]:
        return asyncio.run(self.replica.take(records, self.read.get, self.read.__setitem__))

    def ended(self) -> bool:
        return not self.recovery.in_recovery and self.recovery.signal_recovery_end.is_set()

    def store(self) -> dict[str, Any]:
        return dict(self.table.data.data)


def test_recovery_applies_fetches_and_ends_when_every_partition_is_at_its_highwater() -> None:
    r = Recovering()
    assert r.take([r.msg(0, 0, "u1", b"a"), r.msg(1, 0, "u2", b"b"), r.msg(0, 1, "u1", b"c")]) == []
    assert r.store() == {"u1": b"c", "u2": b"b"}
    assert r.recovery.active_offsets[r.tps[0]] == 1 and r.recovery.active_offsets[r.tps[1]] == 0
    assert r.applied == [("direct", 3)]
    assert not r.ended()  # both partitions have records left
    assert r.take([r.msg(0, 2, "u3", b"d"), r.msg(1, 1, "u2", None), r.msg(1, 2, "u4", b"e")]) == []
    assert r.store() == {"u1": b"c", "u3": b"d", "u4": b"e"}
    assert r.ended()  # as Faust's loop ends it: in_recovery off, the end signalled


def test_faust_s_buffered_events_are_applied_before_a_newer_batch() -> None:
    """Faust's loop took a record of the partition and buffered it (it applies recovered records
    1,000 at a time): it is older than the fetch applied now, so it must not land after it."""
    r = Recovering()
    # offset 0 taken by Faust's loop: its offset recorded, its event buffered, not applied
    r.recovery.active_offsets[r.tps[0]] = 0
    event = asyncio.run(r.table.changelog_topic.decode(r.msg(0, 0, "u1", b"old")[1], propagate=True))
    r.recovery.buffers[r.table].append(event)
    assert r.take([r.msg(0, 1, "u1", b"new"), r.msg(0, 2, "u2", b"x"), r.msg(1, 2, "u3", b"y")]) == []
    assert r.ended()
    assert r.store() == {"u1": b"new", "u2": b"x", "u3": b"y"}
    assert not r.recovery.buffers[r.table]


def test_recovery_takes_faust_s_path_for_a_standby_partition_a_pending_recovery_or_unbuilt_offsets() -> None:
    r = Recovering()
    standby = TP(r.tps[0].topic, 3)
    r.recovery.add_standby(r.table, standby)
    rec = (standby, Message(standby.topic, 3, 0, 0.0, 0, [], r.keys("u9"), b"s", None))
    assert r.take([rec]) == [rec]  # standby copies: not while recovering actives
    r.recovery.signal_recovery_start.set()  # a new rebalance: Faust restarts its recovery
    first = [r.msg(0, 0, "u1", b"a")]
    assert r.take(first) == first
    r.recovery.signal_recovery_start.clear()
    r.recovery.active_offsets[r.tps[1]] = None  # not built yet
    second = [r.msg(1, 0, "u2", b"b")]
    assert r.take(second) == second
    assert r.store() == {} and not r.ended()
    assert r.applied == [("faust", 1), ("faust", 1), ("faust", 1)]


def test_without_during_recovery_the_replica_leaves_recovery_to_faust() -> None:
    w = World()
    w.recovery.add_active(w.table, w.tp)
    w.recovery.active_offsets[w.tp] = -1
    w.recovery.active_highwaters[w.tp] = 5
    w.recovery._set_recovery_started()
    records = [w.msg(0, "T1", b"a")]
    assert w.take(records) == records
