"""Table changelogs applied a fetch at a time: the global terminal table's and the user-state
table's, once recovery is done and while Faust's recovery reads them.

Every worker reads the terminal table's changelog back into its replica (``streams/app.py``):
about one record per label forwarded by any worker. Faust's path for one such record, after
recovery: the consumer awaits the conductor's callback (a lock, flow control, the producer's
ebb), the record becomes an ``Event`` on the tables' changelog queue, and Faust's recovery loop
takes it with an ``asyncio.wait_for`` (a task and a timer per record), records its offset and
applies it alone (``recovery_buffer_size=1``, so that the replica is current). py-spy put that
path at about 6 % of a drain's samples on one worker (``benchmarks/README.md``, session 32), and
with several workers each reads the labels of all of them.

:class:`DirectReplica` applies the records of one fetch with one ``Table.apply_changelog_batch``,
the call Faust's recovery makes, decoded by the changelog topic's own schema, and keeps Faust's
books as its recovery loop does: the partition's offset in ``active_offsets`` (or
``standby_offsets``), where Faust's next recovery seeks from. It does so only while all of
these hold, and otherwise hands the records to Faust's path as before:

* no recovery or rebalance is running (Faust reads and seeks changelogs itself then);
* the partition is one Faust's recovery tracks (an active or standby changelog partition);
* Faust has taken every record of the partition handed to it: its recorded offset has reached
  the last offset handed over. A record still on Faust's queue would otherwise be skipped as
  older than one applied here, and its key keep an older state; what Faust took and buffered
  is applied first;
* the table has no changelog-event callback (Faust's path would call it per record).

**During a recovery** (``during_recovery``: both tables' instances; the terminal table's since
session 34). A started worker rebuilds its partitions' user states from the changelog (the
memory store has nothing on disk, faust-streaming #284), one record per user once compacted:
through Faust's loop 13.2k-16.6k records a second, a fetch at a time here 43.0k-56.6k
(``benchmarks/results/recovery.json``). Every worker reads the global terminal table's whole
changelog the same way: Faust assigns a global table's changelog partitions to every worker as
active (and standby), so its recovery reads them as active.
While Faust's recovery reads a partition as active (its start offset and highwater built, no
new recovery pending), this instance applies each fetch's records of it the same way, with the
same ordering rule as above. Faust's recovery buffer is applied first: Faust applies a table's
recovered records 1,000 at a time, so records it took may still wait there. When the batch
brings every active partition to its highwater, it ends the recovery as Faust's loop does on
its next record: buffers flushed, recovery marked ended, the recovery-end signal set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic
from typing import Any

log = logging.getLogger("riskstream.replica")


class DirectReplica:
    """Applies a table's changelog records in bulk when Faust's recovery is idle, or also while
    it reads an active partition (``during_recovery``)."""

    def __init__(
        self,
        app: Any,
        table: Any,
        on_applied: Callable[[str, int], None] = lambda path, n: None,
        *,
        during_recovery: bool = False,
    ) -> None:
        self.app = app
        self.table = table
        self.topic: str = table.changelog_topic.get_topic_name()
        self.on_applied = on_applied  # (path, records): "direct" or "faust"
        self.during_recovery = during_recovery
        # The last offset handed to Faust's path, per partition (a TP): its recovery loop has
        # taken everything handed to it once its recorded offset reaches this.
        self.handed: dict[Any, int] = {}

    def _offsets(self, tp: Any) -> Any:
        """Faust's recovery offsets that track ``tp`` (active first, as its loop looks), or None
        while Faust must see the partition's records itself."""
        app = self.app
        recovery = app.tables.recovery
        if getattr(self.table, "_on_changelog_event", None) is not None:
            return None
        if not (app.rebalancing or recovery.in_recovery) and recovery.completed.is_set():
            if tp in recovery.active_tps:
                offsets = recovery.active_offsets
            elif tp in recovery.standby_tps:
                offsets = recovery.standby_offsets
            else:
                return None
        elif self._recovering(recovery, tp):
            offsets = recovery.active_offsets
        else:
            return None
        handed = self.handed.get(tp)
        if handed is not None:
            seen = offsets.get(tp)
            if seen is None or seen < handed:
                # Faust's queue may still hold some of them. An empty queue is not enough: its
                # loop takes a record off it (asyncio.wait_for's own task) a step before it
                # records the offset, and would then skip the record as older than ours.
                return None
        return offsets

    def _recovering(self, recovery: Any, tp: Any) -> bool:
        """Faust's recovery is reading ``tp`` as active: its start offset and highwater are
        built and no new recovery is pending."""
        return bool(
            self.during_recovery
            and recovery.in_recovery
            and not recovery.signal_recovery_start.is_set()
            and tp in recovery.active_tps
            and recovery.active_highwaters.get(tp) is not None
            and recovery.active_offsets.get(tp) is not None
        )

    async def take(
        self,
        records: list[tuple[Any, Any]],
        read_offset: Callable[[Any], int | None],
        set_read_offset: Callable[[Any, int], None],
    ) -> list[tuple[Any, Any]]:
        """Apply this table's records of one fetch (``(tp, message)``, in fetch order) where
        Faust's recovery is idle; return the records left for Faust's path, in their order.
        ``read_offset`` / ``set_read_offset``: the consumer's read offsets, kept as its own
        delivery keeps them."""
        topic = self.topic
        if not any(tp.topic == topic for tp, _ in records):
            return records
        rest: list[tuple[Any, Any]] = []
        events: list[Any] = []
        n_faust = 0
        direct: dict[Any, Any] = {}  # tp -> its offsets, or None: Faust's path for this fetch
        decode = self.table.changelog_topic.decode
        for tp, message in records:
            if tp.topic != topic:
                rest.append((tp, message))
                continue
            if tp not in direct:
                direct[tp] = self._offsets(tp)
            offsets = direct[tp]
            if offsets is not None:
                offset = message.offset
                r_offset = read_offset(tp)
                if r_offset is not None and offset < r_offset:
                    continue  # as Faust's delivery: read already
                try:
                    event = await decode(message, propagate=True)
                except Exception:  # Faust's path reports it as it always did
                    log.warning("%s offset %d: not decoded; handed to Faust", tp, offset, exc_info=True)
                    direct[tp] = offsets = None
                else:
                    seen = offsets.get(tp)
                    if seen is None or offset > seen:
                        events.append(event)
                        offsets[tp] = offset
                    set_read_offset(tp, offset)
                    continue
            rest.append((tp, message))
            self.handed[tp] = message.offset
            n_faust += 1
        if events:
            recovery = self.app.tables.recovery
            if recovery.buffers.get(self.table):
                recovery.flush_buffers()  # Faust's buffered events are older: they go first
            self.table.apply_changelog_batch(events)
            self.on_applied("direct", len(events))
            if self.during_recovery and recovery.in_recovery:
                self._recovered(recovery, direct)
        if n_faust:
            self.on_applied("faust", n_faust)
        return rest

    def _recovered(self, recovery: Any, direct: dict[Any, Any]) -> None:
        """Faust's books after records applied during a recovery, as its loop keeps them; and
        the recovery's end, as its loop ends it, once every active partition is at its
        highwater."""
        now = monotonic()
        for tp, offsets in direct.items():
            if offsets is not None:
                recovery._active_events_received_at[tp] = now  # its stalled-recovery warnings
        recovery._last_flush_at = now
        if not recovery.need_recovery():
            recovery.flush_buffers()
            recovery._set_recovery_ended()
            recovery.signal_recovery_end.set()
