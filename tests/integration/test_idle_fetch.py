"""An idle worker long-polls the broker (streams/fetch_pacer.py) and still scores the first
transaction after the quiet spell at once: the broker answers a long poll with its first record.
The long poll here is 5 s, so a worker that waited it out would show it in the risk event's
end-to-end latency."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from harness import WorkerProc, consume, isolated_scenario, produce, run

from modeling.records import Transaction

T = 1_528_000_000_000


def _wait_gauge(w: WorkerProc, value: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while w.metric("riskstream_fetch_long_poll") != value:
        assert time.monotonic() < deadline, f"riskstream_fetch_long_poll never {value}: {w.log_tail()}"
        w.check_alive()
        time.sleep(0.25)


def test_an_idle_worker_long_polls_and_scores_the_next_transaction_at_once(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=2)
    sc.extra_env["RISKSTREAM_FETCH_IDLE_WAIT_MS"] = "5000"
    w = WorkerProc(sc, "idle").start()
    try:
        w.wait_metrics()
        _wait_gauge(w, 1.0)  # nothing to fetch: long polls
        time.sleep(2.0)  # well into a 5-s poll
        items = []
        for i in range(3):
            t = Transaction(f"t{i}", f"u{i}", "term1", 20.0 + i, T + i)
            items.append((t.user_id.encode(), orjson.dumps(t.to_dict())))
        run(produce(sc.bootstrap, sc.topics["transactions"], items))
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], until=3, timeout=60))
        latencies = [orjson.loads(r.value)["latency_ms"]["end_to_end"] for r in recs]
        assert len(latencies) == 3 and max(latencies) < 2_000, latencies
        # records coming: the configured fetch settings again; quiet: long polls again
        seen = set()
        for i in range(3, 23):
            t = Transaction(f"t{i}", f"u{i % 5}", "term1", 20.0, T + i)
            run(
                produce(
                    sc.bootstrap, sc.topics["transactions"], [(t.user_id.encode(), orjson.dumps(t.to_dict()))]
                )
            )
            seen.add(w.metric("riskstream_fetch_long_poll"))
        assert 0.0 in seen, seen
        _wait_gauge(w, 1.0)
    finally:
        w.stop()
