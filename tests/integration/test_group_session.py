"""The consumer group's session timeout and heartbeats reach Faust's consumer settings
(``group_session_timeout_s``; what they change for a killed worker's users is measured by
``benchmarks/bench_failover.py``)."""

from __future__ import annotations

from pathlib import Path

from modeling.settings import Settings
from streams.app import build_app


def _conf(registry: Path, data: Path, **overrides: float) -> tuple[float, float, float]:
    rt = build_app(Settings(registry_dir=registry, worker_data_dir=data, **overrides))
    c = rt.app.conf
    return c.broker_session_timeout, c.broker_heartbeat_interval, c.broker_request_timeout


def test_the_group_session_timeout_and_heartbeats_reach_faust(model_registry: Path, tmp_path: Path) -> None:
    # the default: a killed worker's partitions move after 10 s (Faust's own default is 60 s)
    assert _conf(model_registry, tmp_path / "a") == (10.0, 3.0, 90.0)
    # heartbeats every third of a shorter session
    assert _conf(model_registry, tmp_path / "b", group_session_timeout_s=7.5) == (7.5, 2.5, 90.0)
    # a session past Faust's request timeout raises that timeout with it (Faust refuses a
    # session longer than its request timeout when it creates the consumer)
    assert _conf(model_registry, tmp_path / "c", group_session_timeout_s=120.0) == (120.0, 3.0, 120.0)
