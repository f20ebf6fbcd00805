"""Static group membership (``group_instance_id``): a worker killed and started again under its
instance id within the session timeout takes its own partitions back, and the other worker of
the group keeps scoring its own throughout: no rebalance stops it. Without the setting, the
restarted worker's join stops both until the killed one's session ends
(``benchmarks/bench_failover.py --restart-after`` measures the difference). A static worker
stopped for good is taken out of the group by ``riskstream group remove``."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import orjson
import pandas as pd
import pytest
from harness import RISKSTREAM, ROOT, Scenario, WorkerProc, consume, isolated_scenario, run, wait_caught_up

from modeling.features import FeatureConfig
from modeling.records import Transaction
from streams.replay import replay_events
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "handbook_2w.parquet"
# Long enough for a killed worker's successor to start and rejoin in a slow CI run.
SESSION_S = "45"


@pytest.fixture(scope="module")
def events() -> list[object]:
    """The first week of 200 customers, with their clicks and labels."""
    df = load_history(DATA)
    users = sorted(df["user_id"].unique())[:200]
    df = df[df["user_id"].isin(users) & (df["time_ms"] < pd.Timestamp("2018-06-08").value // 1_000_000)]
    return list(event_stream(df.reset_index(drop=True), FeatureConfig()).events())


def _owned(w: WorkerProc, topic: str) -> set[int]:
    """The partitions of ``topic`` the worker reports a consumer lag for: its assignment."""
    try:
        sets = w.label_sets("riskstream_consumer_lag")
    except OSError:  # its metrics endpoint is not up yet
        return set()
    return {int(x["partition"]) for x in sets if x["topic"] == topic}


def _wait_split(
    workers: list[WorkerProc], topic: str, partitions: int, timeout: float = 180.0
) -> list[set[int]]:
    """Until each worker owns partitions of ``topic`` and together they own all of them."""
    deadline = time.monotonic() + timeout
    while True:
        owned = [_owned(w, topic) for w in workers]
        if all(owned) and set().union(*owned) == set(range(partitions)) and not owned[0] & owned[1]:
            return owned
        for w in workers:
            w.check_alive()
        assert time.monotonic() < deadline, f"partitions of {topic} not split over the workers: {owned}"
        time.sleep(0.5)


def _assignments(w: WorkerProc) -> float:
    return w.metric("riskstream_partition_assignments_total")


def test_a_static_member_restarted_within_its_session_takes_its_partitions_back_alone(
    kafka_broker: str, model_registry: Path, tmp_path: Path, events: list[object]
) -> None:
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=4)
    sc.create_kept_inputs()
    tx_topic = sc.topics["transactions"]

    def env(instance: str) -> dict[str, str]:
        return {"RISKSTREAM_GROUP_INSTANCE_ID": instance, "RISKSTREAM_GROUP_SESSION_TIMEOUT_S": SESSION_S}

    half = len(events) // 2
    w1 = WorkerProc(sc, "one", env=env("one")).start()
    w2 = WorkerProc(sc, "two", env=env("two-{hostname}")).start()
    w2_again = WorkerProc(sc, "two", env=env("two-{hostname}"))  # same instance id and data dir
    try:
        w1.wait_metrics()
        w2.wait_metrics()
        before = _wait_split([w1, w2], tx_topic, sc.partitions)
        run(replay_events(events[:half], sc.settings(), progress=False))
        deadline = time.monotonic() + 180
        while w2.metric("riskstream_events_out_total", topic=sc.topics["risk_events"]) < 100:
            assert time.monotonic() < deadline, w2.log_tail()
            w1.check_alive()
            time.sleep(0.2)
        # w1's assignments so far: its join, and one more if w2 joined after it (a rebalance)
        w1_assigned = _assignments(w1)
        assert w1_assigned >= 1
        w2.kill()
        w2_again.start()
        w2_again.wait_metrics()
        run(replay_events(events[half:], sc.settings(), progress=False))
        after = _wait_split([w1, w2_again], tx_topic, sc.partitions)
        wait_caught_up(sc, timeout=300, worker=w1, terminals=True)
        w2_again.check_alive()
        # The restarted worker got back exactly what its predecessor held, in one assignment,
        # and the other worker was never reassigned (a rebalance would have revoked and
        # assigned its partitions again, and counted).
        assert after == before
        assert _assignments(w2_again) == 1
        assert _assignments(w1) == w1_assigned, "the surviving worker took part in a rebalance"
        assert w2_again.metric("riskstream_events_in_total") > 0
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], timeout=60, idle=3))
        seen = {orjson.loads(r.value)["transaction_id"] for r in recs}
        assert seen == {e.transaction_id for e in events if isinstance(e, Transaction)}, "lost events"
    finally:
        w1.stop()
        w2.kill()
        w2_again.stop()


def _group(sc: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RISKSTREAM, "group", *args], cwd=ROOT, env=sc.env(), capture_output=True, text=True, timeout=60
    )


def test_a_static_member_stopped_for_good_is_removed_and_its_partitions_move_at_once(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    """A static worker stopped gracefully stays in the group (it sends no LeaveGroup) until its
    session ends; ``riskstream group remove`` takes it out, and the other worker gets its
    partitions at once. The session is far longer than the test waits for that."""
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=4)
    sc.create_kept_inputs()
    tx_topic = sc.topics["transactions"]
    env = {"RISKSTREAM_GROUP_SESSION_TIMEOUT_S": "300"}
    w1 = WorkerProc(sc, "one", env={**env, "RISKSTREAM_GROUP_INSTANCE_ID": "one"}).start()
    w2 = WorkerProc(sc, "two", env={**env, "RISKSTREAM_GROUP_INSTANCE_ID": "two"}).start()
    try:
        w1.wait_metrics()
        w2.wait_metrics()
        owned = _wait_split([w1, w2], tx_topic, sc.partitions)
        shown = _group(sc, "members", "--json")
        assert shown.returncode == 0, shown.stderr
        view = json.loads(shown.stdout)
        assert view["group"] == f"rs-{sc.name}" and view["state"] == "Stable"
        members = {m["instance_id"]: m for m in view["members"]}
        assert set(members) == {"one", "two"}
        assert set(members["two"]["partitions"][tx_topic]) == owned[1]
        w2.stop()  # SIGTERM: a graceful stop, which a static member makes without leaving
        still = json.loads(_group(sc, "members", "--json").stdout)
        assert {m["instance_id"] for m in still["members"]} == {"one", "two"}
        assert _owned(w1, tx_topic) == owned[0]
        unknown = _group(sc, "remove", "nobody")
        assert unknown.returncode == 1 and "nobody: UnknownMemberIdError" in unknown.stdout, unknown
        removed = _group(sc, "remove", "two")
        assert removed.returncode == 0 and "two: removed" in removed.stdout, removed
        deadline = time.monotonic() + 120  # well inside the 300-s session
        while _owned(w1, tx_topic) != set(range(sc.partitions)):
            assert time.monotonic() < deadline, f"w1 owns {_owned(w1, tx_topic)}\n{w1.log_tail()}"
            w1.check_alive()
            time.sleep(0.5)
        after = json.loads(_group(sc, "members", "--json").stdout)
        assert [m["instance_id"] for m in after["members"]] == ["one"]
    finally:
        w1.stop()
        w2.stop()


def test_of_two_workers_on_one_instance_id_the_older_stops_and_the_newer_goes_on(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    """aiokafka's heartbeats do not carry the instance id, so the broker cannot fence the older
    of two workers sharing one: they replaced each other every 3 s, each scoring the partitions
    until its next heartbeat, for as long as both ran. Each counts the resets of its member id
    and stops at its limit; the newer one, which found the older in the group when it started,
    has a higher one (``streams/group.py``, ``MemberResets``), so the older stops and the newer
    ends with every partition. Without the count both ran on (tried); with one limit for both,
    both stopped."""
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=4)
    sc.create_kept_inputs()
    tx_topic = sc.topics["transactions"]
    env = {"RISKSTREAM_GROUP_INSTANCE_ID": "same"}
    w1 = WorkerProc(sc, "one", env=env).start()
    w2 = WorkerProc(sc, "two", env=env)
    try:
        w1.wait_metrics()
        deadline = time.monotonic() + 180
        while _owned(w1, tx_topic) != set(range(sc.partitions)):
            assert time.monotonic() < deadline, w1.log_tail()
            time.sleep(0.5)
        w2.start()
        code, log = w1.exits("with a newer worker on its group instance id", timeout=180)
        assert code != 0
        assert "another running worker uses its group instance id" in log
        assert "lost its membership and joined again" in log  # the resets before the stop
        deadline = time.monotonic() + 60
        while _owned(w2, tx_topic) != set(range(sc.partitions)):
            assert time.monotonic() < deadline, w2.log_tail()
            w2.check_alive()
            time.sleep(0.5)
        time.sleep(10)  # three heartbeats more: nobody takes them away again
        w2.check_alive()
        assert _owned(w2, tx_topic) == set(range(sc.partitions))
        assert "another running worker uses its group instance id" not in w2.log_path.read_text(
            errors="replace"
        )
    finally:
        w1.stop()
        w2.stop()
