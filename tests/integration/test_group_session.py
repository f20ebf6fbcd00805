"""The consumer group's session timeout, heartbeats and static instance id reach Faust's
consumer settings (``group_session_timeout_s``, ``group_instance_id``; what they change for a
killed or restarted worker's users is measured by ``benchmarks/bench_failover.py``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

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


def test_a_static_instance_id_reaches_faust_and_names_the_member(
    model_registry: Path, tmp_path: Path
) -> None:
    conf = build_app(Settings(registry_dir=model_registry, worker_data_dir=tmp_path / "a")).app.conf
    assert conf.consumer_group_instance_id is None  # dynamic membership by default
    assert str(conf.canonical_url).endswith(":6066")  # Faust's: the host and web port
    s = Settings(
        registry_dir=model_registry, worker_data_dir=tmp_path / "b", group_instance_id="w-{hostname}"
    )
    assert s.group_instance_id == f"w-{socket.gethostname()}"
    conf = build_app(s).app.conf
    assert conf.consumer_group_instance_id == s.group_instance_id
    # the member's URL in Faust's assignments: the instance id's alone, so that a restart on
    # another host or web port gets its predecessor's stored assignment without Faust refusing it
    assert str(conf.canonical_url) == f"http://{s.group_instance_id}"
    assert Settings(registry_dir=model_registry, group_instance_id="").group_instance_id is None
    with pytest.raises(ValidationError):
        Settings(registry_dir=model_registry, group_instance_id="w 1")
