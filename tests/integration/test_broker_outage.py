"""A broker outage: the worker waits quietly while its broker is down and carries on after it
comes back, losing nothing. On its own broker (the session's one cannot be stopped)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from harness import WorkerProc, consume, isolated_scenario, run

from modeling.features import FeatureConfig
from modeling.records import Transaction
from streams.broker.local import LocalKafka, free_port_pair
from streams.replay import replay_events
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "handbook_2w.parquet"
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime of the process; its threads' time is included
    return (int(fields[11]) + int(fields[12])) / TICK


def _log_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


@pytest.fixture()
def own_broker(local_kafka: LocalKafka, tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of this test's own, from the jars the session's broker fetched."""
    port, controller_port = free_port_pair()
    broker = LocalKafka(
        tmp_path / "kafka", port=port, controller_port=controller_port, lib_dir=local_kafka.lib_dir
    )
    broker.start(timeout=180)
    try:
        yield broker
    finally:
        broker.stop()


def test_worker_idles_through_a_broker_outage_and_resumes(
    own_broker: LocalKafka, model_registry: Path, tmp_path: Path
) -> None:
    sc = isolated_scenario(own_broker.bootstrap, model_registry, tmp_path, partitions=2)
    df = load_history(DATA)
    users = sorted(df["user_id"].unique())[:40]
    events = list(
        event_stream(df[df["user_id"].isin(users)].reset_index(drop=True), FeatureConfig()).events()
    )
    txns = [e for e in events if isinstance(e, Transaction)]
    half = events.index(txns[len(txns) // 2])
    first, second = events[:half], events[half:]
    n_first = sum(isinstance(e, Transaction) for e in first)

    w = WorkerProc(sc, "outage").start()
    try:
        w.wait_metrics()
        run(replay_events(first, sc.settings(), progress=False))
        got = run(consume(sc.bootstrap, sc.topics["risk_events"], until=n_first, timeout=240))
        assert len(got) >= n_first

        assert own_broker.stop() is True
        time.sleep(5)  # the worker's clients notice: connections refused from here on
        assert w.proc is not None
        pid = w.proc.pid
        lines0, cpu0, t0 = _log_lines(w.log_path), _cpu_seconds(pid), time.monotonic()
        time.sleep(8)
        cpu1, lines1, t1 = _cpu_seconds(pid), _log_lines(w.log_path), time.monotonic()
        w.check_alive()
        core = (cpu1 - cpu0) / (t1 - t0)
        per_s = (lines1 - lines0) / (t1 - t0)
        print(f"broker down: the worker used {core:.3f} core and logged {per_s:.1f} lines/s")
        # Unthrottled, aiokafka's metadata retries spun about 0.9 core and logged ~2k lines/s.
        assert core < 0.3, f"the worker used {core:.2f} core while its broker was down"
        assert per_s < 50, f"the worker logged {per_s:.0f} lines/s while its broker was down"

        own_broker.start(timeout=180)
        run(replay_events(second, sc.settings(), progress=False))
        ids = {
            orjson.loads(r.value)["transaction_id"]
            for r in run(consume(sc.bootstrap, sc.topics["risk_events"], until=len(txns), timeout=300))
        }
        w.check_alive()
        assert {t.transaction_id for t in txns} <= ids  # nothing lost across the outage
    finally:
        w.stop()
