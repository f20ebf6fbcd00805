"""FetchPacer: the consumer long-polls once nothing was fetched for a second, and returns to the
configured fetch settings with the first records (the integration side: tests/integration/
test_worker_e2e.py's idle worker)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streams.fetch_pacer import IDLE_AFTER_S, FetchPacer


def test_long_polls_after_a_quiet_second_and_not_before() -> None:
    now = [100.0]
    # the two attributes aiokafka's Fetcher reads when it builds a fetch request
    fetcher: Any = SimpleNamespace(_fetch_min_bytes=65536, _fetch_max_wait_ms=10)
    switches: list[bool] = []
    pacer = FetchPacer((65536, 10), 500, lambda: fetcher, on_switch=switches.append, clock=lambda: now[0])

    def settings() -> tuple[int, int]:
        return fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms

    pacer.on_poll(12)
    now[0] += IDLE_AFTER_S - 0.01
    pacer.on_poll(0)
    assert (pacer.idle, settings(), switches) == (False, (65536, 10), [])
    now[0] += 0.02
    pacer.on_poll(0)
    assert (pacer.idle, settings(), switches) == (True, (1, 500), [True])
    now[0] += 5
    pacer.on_poll(0)  # still idle: nothing to switch
    assert switches == [True]
    pacer.on_poll(3)  # records again: the configured settings for the next request
    assert (pacer.idle, settings(), switches) == (False, (65536, 10), [True, False])
    now[0] += 0.5
    pacer.on_poll(0)  # a poll without records half a second after some: not idle yet
    assert not pacer.idle


def test_waits_for_the_fetcher_to_exist() -> None:
    now = [0.0]
    fetcher: list[Any] = []
    pacer = FetchPacer((65536, 10), 500, lambda: fetcher[0] if fetcher else None, clock=lambda: now[0])
    now[0] += 2 * IDLE_AFTER_S
    pacer.on_poll(0)
    assert not pacer.idle  # no fetcher yet: nothing switched
    fetcher.append(SimpleNamespace(_fetch_min_bytes=65536, _fetch_max_wait_ms=10))
    pacer.on_poll(0)
    assert pacer.idle and fetcher[0]._fetch_max_wait_ms == 500
