"""The global terminal table's changelog, applied a fetch at a time once recovery is done.

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
* Faust has applied every record of the partition handed to it: its recorded offset equals the
  last offset handed over. A record still on Faust's queue (or taken off it and not applied yet)
  could otherwise land after a newer one applied here and put an older state back, and would be
  skipped as seen;
* the table has no changelog-event callback (Faust's path would call it per record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("riskstream.replica")


class DirectReplica:
    """Applies a global table's changelog records in bulk when Faust's recovery is idle."""

    def __init__(
        self, app: Any, table: Any, on_applied: Callable[[str, int], None] = lambda path, n: None
    ) -> None:
        self.app = app
        self.table = table
        self.topic: str = table.changelog_topic.get_topic_name()
        self.on_applied = on_applied  # (path, records): "direct" or "faust"
        # The last offset handed to Faust's path, per partition (a TP): its recovery loop has
        # applied everything handed to it once its recorded offset equals this.
        self.handed: dict[Any, int] = {}

    def _offsets(self, tp: Any) -> Any:
        """Faust's recovery offsets that track ``tp`` (active first, as its loop looks), or None
        while Faust must see the partition's records itself."""
        app = self.app
        recovery = app.tables.recovery
        if app.rebalancing or recovery.in_recovery or not recovery.completed.is_set():
            return None
        if getattr(self.table, "_on_changelog_event", None) is not None:
            return None
        if tp in recovery.active_tps:
            offsets = recovery.active_offsets
        elif tp in recovery.standby_tps:
            offsets = recovery.standby_offsets
        else:
            return None
        handed = self.handed.get(tp)
        if handed is not None and offsets.get(tp) != handed:
            return None  # Faust's queue may still hold some of them
        return offsets

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
            self.table.apply_changelog_batch(events)
            self.on_applied("direct", len(events))
        if n_faust:
            self.on_applied("faust", n_faust)
        return rest
