"""Rounds (streams/housekeeping.py): a periodic round that fails is counted and logged, and
nothing escapes to Faust's timer task (which would crash the app). Through a worker and a real
registry: tests/integration/test_shadow_model.py (a corrupt CURRENT pointer while it scores)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from modeling.errors import RegistryError
from streams.housekeeping import Rounds
from streams.metrics import Metrics


def _errors(m: Metrics, name: str) -> float | None:
    return m.registry.get_sample_value("riskstream_housekeeping_errors_total", {"round": name})


def test_a_failing_round_is_counted_logged_once_per_streak_and_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()
    rounds = Rounds(m.housekeeping_errors)
    outcomes: list[Exception | None] = [
        RegistryError("CURRENT is corrupt", kind="behaviour"),
        RegistryError("CURRENT is corrupt", kind="behaviour"),
        OSError("stale file handle"),
        None,
    ]
    ran = []

    async def poll() -> None:
        ran.append(1)
        exc = outcomes[len(ran) - 1]
        if exc is not None:
            raise exc

    guarded = rounds.guard("model_refresh", poll)
    assert _errors(m, "model_refresh") == 0.0  # the series exists before anything fails
    caplog.set_level(logging.DEBUG, logger="riskstream.housekeeping")
    for k in range(3):
        asyncio.run(guarded())
        assert _errors(m, "model_refresh") == k + 1
        assert rounds.failing("model_refresh") == k + 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    # the first failure and the changed one, each with its traceback; the repeat only at debug
    assert [r.exc_info[0] for r in errors if r.exc_info] == [RegistryError, OSError]
    assert "corrupt" in errors[0].getMessage() and "stale file handle" in errors[1].getMessage()
    assert any(r.levelno == logging.DEBUG and "2 rounds in a row" in r.getMessage() for r in caplog.records)
    asyncio.run(guarded())
    assert rounds.failing("model_refresh") == 0 and _errors(m, "model_refresh") == 3
    assert any("succeeded after 3 failed rounds" in r.getMessage() for r in caplog.records)


def test_rounds_are_counted_apart_and_cancellation_passes_through() -> None:
    m = Metrics()
    rounds = Rounds(m.housekeeping_errors)

    async def broken() -> None:
        raise KeyError("x")

    async def cancelled() -> None:
        raise asyncio.CancelledError

    asyncio.run(rounds.guard("state_sweep", broken)())
    assert _errors(m, "state_sweep") == 1 and _errors(m, "metrics_report") is None
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(rounds.guard("metrics_report", cancelled)())
    assert _errors(m, "metrics_report") == 0  # a stopping worker's cancel is not a failure
