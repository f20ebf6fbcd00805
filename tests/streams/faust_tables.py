"""Helpers of the tests that run real Faust tables and stores without a broker
(test_terminal_store.py, test_table_db.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from faust.events import Event
from faust.types import TP, Message


@contextmanager
def own_event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A new event loop, current while the block runs (Faust's services look for one)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        loop.close()
        asyncio.set_event_loop(None)


class Changelog:
    """A table's changelog as the worker reads it back: records appended to each partition at
    the next offset, then applied to the table in one ``apply_changelog_batch``, as the direct
    replica applies a fetch (streams/replica.py)."""

    def __init__(self, app: Any, table: Any, keys: Callable[[str], bytes]) -> None:
        self.app = app
        self.table = table
        self.keys = keys
        self.topic: str = table.changelog_topic.get_topic_name()
        self.log: dict[int, list[tuple[int, bytes, bytes | None]]] = {}  # partition -> (offset, key, value)

    def read_back(self, *records: tuple[int, str, bytes | None]) -> None:
        """Records ``(partition, key, value)``, a ``None`` value a tombstone."""
        events = []
        for part, key, raw in records:
            log = self.log.setdefault(part, [])
            offset, key_bytes = len(log), self.keys(key)
            log.append((offset, key_bytes, raw))
            msg = Message(
                self.topic, part, offset, 0.0, 0, None, key_bytes, raw, None, tp=TP(self.topic, part)
            )
            events.append(Event(self.app, key, raw, None, msg))
        self.table.apply_changelog_batch(events)
