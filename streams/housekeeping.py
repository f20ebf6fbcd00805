"""The worker's periodic rounds (model refresh, state sweeps, the metrics report):
a round that fails is logged and counted, and the next one runs on time. It never stops the
worker.

Why a guard: Faust runs each ``@app.timer`` function in one app task, and an exception that
escapes it crashes the app (mode's ``Service._execute_task`` calls ``crash``). Unguarded, one
unreadable registry pointer would stop every worker of the group at its next poll, and a
partition given away between two awaits of the metrics report would stop the worker that was
reporting it. Scoring does not depend on any of these rounds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiokafka.errors import KafkaError

log = logging.getLogger("riskstream.housekeeping")


class _Errors(Protocol):
    """A Prometheus counter with one label, the round's name."""

    def labels(self, *values: str) -> Any: ...


class Rounds:
    """Guards periodic rounds: ``guard(name, fn)`` returns a coroutine function that runs ``fn``
    and, if it raises, logs and counts the error in ``errors`` (labelled ``name``) instead.

    A streak of failures is logged once with its traceback, again whenever the error changes,
    and once more when a round succeeds; the rounds in between go to the debug log, so a
    broken registry polled every few seconds does not flood the worker's log. Cancellation
    passes through.
    """

    def __init__(self, errors: _Errors) -> None:
        self._errors = errors
        self._failing: dict[str, tuple[str, int]] = {}  # name -> (last error, failed rounds)

    def guard(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
        self._errors.labels(name)  # the series exists, at 0, before any round fails

        async def round_() -> None:
            try:
                await fn()
            except Exception as exc:
                self._failed(name, exc)
            else:
                self._succeeded(name)

        round_.__name__ = round_.__qualname__ = name  # Faust names the timer after it
        return round_

    def failing(self, name: str) -> int:
        """How many rounds of ``name`` in a row have failed (0: the last one succeeded)."""
        return self._failing.get(name, ("", 0))[1]

    def _failed(self, name: str, exc: Exception) -> None:
        self._errors.labels(name).inc()
        what = f"{type(exc).__name__}: {exc}"
        last, n = self._failing.get(name, ("", 0))
        self._failing[name] = (what, n + 1)
        if what != last:
            log.error("%s failed (%s); the worker goes on, next round as scheduled", name, what, exc_info=exc)
        else:
            log.debug("%s failed again (%d rounds in a row): %s", name, n + 1, what)

    def _succeeded(self, name: str) -> None:
        failed = self._failing.pop(name, None)
        if failed is not None:
            log.info("%s succeeded after %d failed rounds", name, failed[1])


class _Consumer(Protocol):
    """What the lag report reads of a consumer: Faust's and aiokafka's both have these."""

    def assignment(self) -> Any: ...

    def highwater(self, tp: Any) -> int | None: ...

    async def position(self, tp: Any) -> int | None: ...


async def consumer_lags(
    consumer: _Consumer, topics: Iterable[str], wait_s: float = 1.0
) -> dict[tuple[str, int], int]:
    """Messages left to consume in each of ``consumer``'s partitions of ``topics``: highwater
    minus position. Left out: a partition without a position within ``wait_s`` (its offset
    still being reset), one without a highwater yet (nothing fetched), and one given away while
    the report awaited a position. Reading a partition no longer assigned raises in aiokafka,
    and a rebalance can come at every await."""
    wanted = set(topics)
    lags: dict[tuple[str, int], int] = {}
    for tp in sorted(tp for tp in consumer.assignment() if tp.topic in wanted):
        if tp not in consumer.assignment():  # revoked while an earlier position was awaited
            continue
        try:
            pos = await asyncio.wait_for(consumer.position(tp), wait_s)
        except (KafkaError, TimeoutError):  # revoked meanwhile, or its offset is being reset
            continue
        if pos is None or tp not in consumer.assignment():
            continue
        hw = consumer.highwater(tp)
        if hw is not None:
            lags[(tp.topic, tp.partition)] = max(hw - pos, 0)
    return lags
