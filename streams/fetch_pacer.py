"""Fetch requests while nothing arrives: long polls instead of one every ``fetch_max_wait_ms``.

The worker's consumer asks the broker for ``fetch_min_bytes`` (64 KiB) or whatever is there
after ``fetch_max_wait_ms`` (10 ms): under load that bounds what a fetch adds to latency
(``modeling/settings.py``). With no input the same settings send a fetch request every 10 ms,
100 a second, each built and parsed in Python by aiokafka. An idle worker here used 0.089 and
0.094 of a core for that; long-polling, 0.015 and 0.013 (30 s each, alternated, the same broker;
the broker's own 0.015–0.017 did not change). An idle fleet paid it per worker.

:class:`FetchPacer` switches aiokafka's fetcher between two settings. While records come, the
configured ``(fetch_min_bytes, fetch_max_wait_ms)``. Once :data:`IDLE_AFTER_S` passed without a
record, ``(1 byte, fetch_idle_wait_ms)``: a long poll, which the broker answers as soon as one
record is there, so the first message after a quiet spell is not held for the 10 ms either. The
first fetch that brings records switches back. The fetcher reads both values whenever it builds
a request (aiokafka's ``Fetcher._fetch_min_bytes`` and ``_fetch_max_wait_ms``, the attributes
``AIOKafkaConsumer`` sets from its arguments): a request already in flight keeps its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from streams.intake import aiokafka_consumer

log = logging.getLogger("riskstream.intake")

IDLE_AFTER_S = 1.0  # seconds without a fetched record before the consumer long-polls


class FetchPacer:
    """Calls to :meth:`on_poll` after every poll of the fetcher's records (``n``: how many it
    handed out, changelog records included) switch the fetcher's request settings."""

    def __init__(
        self,
        active: tuple[int, int],
        idle_wait_ms: int,
        fetcher: Callable[[], Any],
        *,
        on_switch: Callable[[bool], object] = lambda idle: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.active = active  # (fetch_min_bytes, fetch_max_wait_ms) while records come
        self.idle_settings = (1, idle_wait_ms)
        self.idle = False
        self._fetcher = fetcher  # aiokafka's Fetcher, or None before the consumer started
        self._on_switch = on_switch
        self._clock = clock
        self._last = clock()

    def on_poll(self, n: int) -> None:
        now = self._clock()
        if n:
            self._last = now
            if self.idle and self._set(self.active):
                self.idle = False
                self._on_switch(False)
        elif not self.idle and now - self._last >= IDLE_AFTER_S and self._set(self.idle_settings):
            self.idle = True
            self._on_switch(True)
            log.debug("no input for %.1f s: long-polling (%d ms)", now - self._last, self.idle_settings[1])

    def _set(self, settings: tuple[int, int]) -> bool:
        fetcher = self._fetcher()
        if fetcher is None:
            return False
        fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = settings
        return True


def aiokafka_fetcher(consumer: Any) -> Any:
    """The aiokafka ``Fetcher`` behind a Faust consumer (``streams/intake.py``), or None before
    it started."""
    return getattr(aiokafka_consumer(consumer), "_fetcher", None)
