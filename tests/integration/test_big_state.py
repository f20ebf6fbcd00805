"""A user whose state outgrows Kafka's 1 MB default record: the worker writes it to the changelog
(whose max.message.bytes it set at creation), keeps scoring, and a worker started after a
SIGKILL restores it and scores the user's next transaction as a from-scratch replay does."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from harness import WorkerProc, consume, isolated_scenario, run, served_scorer, topic_configs

from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, UserState
from modeling.records import ClickEvent, Transaction
from streams.replay import replay_events

T = 1_528_000_000_000  # 2018-06-03
N_CLICKS = 4_500
LONG = 127  # characters; the wire format allows 128
KINDS = ("page_view", "login", "page_view", "new_device", "page_view", "login_failed")


def _long(prefix: str, i: int) -> str:
    return f"{prefix}-{i:06d}-".ljust(LONG, "x")


def _clicks() -> list[ClickEvent]:
    out = []
    for i in range(N_CLICKS):
        kind, device, ip = KINDS[i % len(KINDS)], _long("dev", i), _long("ip", i)
        out.append(ClickEvent("u-big", T + i * 1000, kind, f"s{i // 100}", device, ip))
    return out


@pytest.mark.timeout(420)
def test_a_state_over_one_megabyte_is_written_kept_and_restored(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=2)
    reg = sc.registry_dir
    settings = sc.settings()
    clicks = _clicks()
    first = Transaction("big-1", "u-big", "t1", 25.0, T + N_CLICKS * 1000, device_id=_long("dev", 1))
    second = Transaction("big-2", "u-big", "t1", 900.0, T + N_CLICKS * 1000 + 60_000, device_id="new-device")
    # the state this builds, as the engine keeps it: over 1 MB
    runner = FeatureRunner(FeatureEngine(FeatureConfig()))
    for ev in clicks:
        runner.on_click(ev)
    runner.on_transaction(first)
    assert len(runner.users["u-big"].to_bytes()) > 1 << 20

    w = WorkerProc(sc, "first").start()
    try:
        w.wait_metrics()
        run(replay_events([*clicks, first], settings, progress=False))
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], until=1, timeout=180, idle=None))
        assert [orjson.loads(r.value)["transaction_id"] for r in recs] == ["big-1"]
        # the flush after it: the user's snapshot in the changelog, whole
        log = f"rs-{sc.name}-user-state-changelog"
        deadline = time.monotonic() + 60
        biggest = 0
        while biggest <= 1 << 20 and time.monotonic() < deadline:
            w.check_alive()
            states = run(consume(sc.bootstrap, log, timeout=10, idle=2))
            biggest = max((len(r.value) for r in states if r.key == b'"u-big"' and r.value), default=0)
        assert biggest > 1 << 20, f"no snapshot over 1 MB in {log}\n{w.log_tail()}"
        stored = UserState.from_bytes(
            next(r.value for r in reversed(states) if r.key == b'"u-big"'), FeatureConfig()
        )
        assert len(stored.clicks) == N_CLICKS
        logs = [log, f"rs-{sc.name}-terminal-state-changelog"]
        configs = run(topic_configs(sc.bootstrap, logs))
        assert {int(configs[t]["max.message.bytes"]) for t in logs} == {settings.state_max_record_bytes}
        w.check_alive()
        w.kill()
    finally:
        w.kill()

    w2 = WorkerProc(sc, "second").start()
    try:
        w2.wait_metrics()
        run(replay_events([second], settings, progress=False))
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], until=2, timeout=180, idle=None))
        got = {orjson.loads(r.value)["transaction_id"]: orjson.loads(r.value)["score"] for r in recs}
        assert set(got) == {"big-1", "big-2"}
        # scored on the restored 1.2 MB state: as a replay of every event scores it
        want = served_scorer(reg, settings).score([second], [runner.on_transaction(second)])[0].score
        assert got["big-2"] == pytest.approx(want, abs=1e-5)
        # restored by the worker's own recovery path (streams/replica.py, during_recovery), not
        # Faust's per-record one
        assert w2.metric("riskstream_user_state_records_read_total", path="direct") >= 1
        assert w2.metric("riskstream_user_state_records_read_total", path="faust") == 0
        w2.check_alive()
    finally:
        w2.stop()
