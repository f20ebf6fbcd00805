"""Reading a range of offsets of assigned partitions, a fetch at a time: the dead-letter tools
(streams/dead_letters.py) read their topics to the end as found, and the start-time check of
the user-state files (streams/store_files.py) reads a changelog back before a file's offset."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any


async def read_range(
    consumer: Any, starts: dict[Any, int], ends: dict[Any, int], stall_s: float
) -> AsyncIterator[list[Any]]:
    """The records of ``consumer``'s assigned partitions from ``starts`` to ``ends`` (exclusive),
    a fetch at a time (fewer where compaction removed some); :class:`TimeoutError` after
    ``stall_s`` without a record."""
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    todo = {tp for tp in starts if starts[tp] < ends[tp]}
    last_progress = time.monotonic()
    while todo:
        batch = await consumer.getmany(*todo, timeout_ms=1000)
        if batch:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > stall_s:
            names = sorted({tp.topic for tp in todo})
            raise TimeoutError(f"reading {', '.join(names)} made no progress for {stall_s:.0f} s")
        records = [r for tp, rs in batch.items() for r in rs if r.offset < ends[tp]]
        if records:
            yield records
        todo = {tp for tp in todo if await consumer.position(tp) < ends[tp]}
