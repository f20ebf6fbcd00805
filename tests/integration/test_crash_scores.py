"""After a crash, risk events should still carry the scores a crash-free run gives.

A worker killed with SIGKILL leaves input whose offsets were not committed; its successor
receives it again. Some of those events were already folded into the user states the worker
had written to the changelog. Scoring such a transaction again would use a state that already
holds it (and whatever came after it in the batch), so its second risk event would disagree with
the first and with a backtest. The worker therefore writes a user state to the changelog only
after the risk events of the batches folded into it are delivered (``streams/score_stage.py``,
``ScoreStage.flush_user_states``); a redelivered transaction its state already holds had its risk event
delivered, and is not scored again (``riskstream_redelivered_total``).

The successor drains a backlog. Its input alignment holds a partition group back while one of its
partitions has more to fetch and nothing buffered; that wait's bound counts only the time the
input buffer itself waits, not the time spent scoring (``streams/input_buffer.py``). With a
wall-clock bound, groups went on without the labels and clicks before them while the fetcher
could not run, and 104 to 330 of about 4,300 risk events differed in five runs of five. With
the bound on the time waited, 4 runs of 32 still differed, after alignment waits that still ran
out: a full input buffer stopped the fetch the waiting groups needed, aiokafka handed the
awaited partition out behind thousands of other records, and records of a partition let go of
waited for the next fetch (fixed in session 17: ``InputBuffer.full``,
``BatchingConsumer._getmany``, ``BatchingConsumer.look_again``; DEVELOPERS.md). A difference
is still recorded as an expected failure, with diagnostics, when an alignment wait ran out in
either worker (the one documented cause); without one, a difference fails the test.

The events are all in Kafka before the first worker starts, with their event times as Kafka
timestamps, so that the input alignment takes them in event-time order: the backtest's order.
Their topics keep records forever: with the default retention the broker deleted these 2018
records between the two workers, and the second one waited for input that was gone.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pandas as pd
import pytest
from harness import WorkerProc, consume, isolated_scenario, run, served_scorer, wait_caught_up

from modeling.features import Event, FeatureConfig, FeatureEngine, FeatureRunner
from modeling.records import Label, Transaction
from streams.replay import replay_events
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "handbook_2w.parquet"


@pytest.fixture(scope="module")
def events() -> list[Event]:
    """The first week of 250 customers (~3.4k transactions), with their clicks and labels."""
    df = load_history(DATA)
    users = sorted(df["user_id"].unique())[:250]
    df = df[df["user_id"].isin(users) & (df["time_ms"] < pd.Timestamp("2018-06-08").value // 1_000_000)]
    return list(event_stream(df.reset_index(drop=True), FeatureConfig()).events())


def _time(e: Event) -> int:
    return e.label_time_ms if isinstance(e, Label) else e.event_time_ms


def _expired(w: WorkerProc) -> dict[str, int]:
    """The worker's alignment waits that ran out so far, by kind."""
    return {
        kind: int(w.metric("riskstream_input_align_expired_total", kind=kind))
        for kind in ("group", "labels", "remote")
    }


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_scores_after_sigkill_equal_a_crash_free_run(
    kafka_broker: str, model_registry: Path, tmp_path: Path, events: list[Event], store: str
) -> None:
    """With ``store`` "disk" (both tables) the successor starts on the killed worker's RocksDB
    files, which must hold no state whose changelog record was not delivered
    (streams/user_store.py), and no terminal state the changelog was not read back with
    (streams/terminal_store.py)."""
    env = {"RISKSTREAM_USER_STORE": store, "RISKSTREAM_TERMINAL_STORE": store}
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=4)
    reg = sc.registry_dir
    t = sc.topics
    sc.create_kept_inputs()  # records stamped with 2018 event times: no time-based retention
    settings = sc.settings()
    txns = [e for e in events if isinstance(e, Transaction)]
    run(replay_events(sorted(events, key=_time), settings, kafka_timestamps="event", progress=False))

    first = WorkerProc(sc, "first", env).start()
    try:
        first.wait_metrics()
        # Killed mid-drain: some risk events out, most of the input still ahead, and user states
        # written (a state flush handed to the producer).
        deadline = time.monotonic() + 180
        while (
            first.metric("riskstream_events_out_total", topic=t["risk_events"]) < len(txns) // 4
            or first.metric("riskstream_state_flush_users_count") < 1
        ):
            assert time.monotonic() < deadline, first.log_tail()
            time.sleep(0.05)
        first_expired = _expired(first)  # just before the kill: milliseconds are not counted
        first.kill()
    finally:
        first.kill()
    killed_ms = time.time() * 1000.0  # risk events stamped before it are the first worker's
    n_log = len(run(consume(sc.bootstrap, f"rs-{sc.name}-user-state-changelog", timeout=30, idle=3)))
    second = WorkerProc(sc, "first" if store == "disk" else "second", env)
    logged = second.log_path.stat().st_size if second.log_path.exists() else 0
    second.start()
    try:
        second.wait_metrics()
        wait_caught_up(sc, timeout=300, worker=second)
        redelivered = int(second.metric("riskstream_redelivered_total", kind="transaction"))
        read = second.metric("riskstream_user_state_records_read_total")
        expired = _expired(second)
    finally:
        second.stop()

    if store == "memory":
        assert read >= n_log > 0, f"read {read} of {n_log} changelog records"  # all rebuilt
    else:  # the tail past the databases' offsets: records delivered but not yet on disk
        assert read < n_log, f"read {read} of {n_log} changelog records"
        # the killed worker's terminal database passed the start-time check (streams/store_files.py)
        log_text = second.log_path.read_bytes()[logged:].decode(errors="replace")
        checked = [line for line in log_text.splitlines() if "terminal-state database" in line]
        assert len(checked) == 1 and "states agree with the changelog" in checked[0], (
            checked or log_text[-3000:]
        )
    recs = run(consume(sc.bootstrap, t["risk_events"], timeout=60, idle=3))
    docs = [orjson.loads(r.value) for r in recs]
    assert {d["transaction_id"] for d in docs} == {x.transaction_id for x in txns}, "lost events"
    pairs = list(FeatureRunner(FeatureEngine(FeatureConfig())).run(sorted(events, key=_time)))
    scorer = served_scorer(reg, settings)
    verdicts = scorer.score([x for x, _ in pairs], [f for _, f in pairs])
    want = {x.transaction_id: v.score for (x, _), v in zip(pairs, verdicts, strict=True)}
    # How much of the input received again the written states already held (the path that is
    # not scored again) depends on where the kill fell: 0 in one run of four.
    # Every risk event, a second one for the same transaction included.
    wrong = [
        (d["transaction_id"], d["score"], want[d["transaction_id"]], r.timestamp < killed_ms)
        for r, d in zip(recs, docs, strict=True)
        if abs(d["score"] - want[d["transaction_id"]]) > 1e-5
    ]
    repeats = len(docs) - len({d["transaction_id"] for d in docs})
    by_first = sum(1 for r in recs if r.timestamp < killed_ms)
    if wrong:
        # Known gap, rare now. Before the output gate (session 15) 927 of 4,153 risk events
        # differed, 743 of them repeats; with the gate and a wall-clock idle bound, 104 to 330 of
        # about 4,300 in five runs of five. With the idle bound on the time waited (session 16),
        # 4 runs of 32 differed (310, 63, 47 and 337 risk events; alignment waits that still ran
        # out, in the first or in the restarted worker). With a 1-s bound, 9 runs of 9 matched,
        # but it slowed the drain by a fifth (not kept). Session 17 found why waits ran out (a
        # full buffer stopping the fetch they needed; aiokafka's hand-out order; records of a
        # partition let go of waiting for the next fetch) and fixed them (DEVELOPERS.md).
        detail = (
            f"{len(wrong)} of {len(docs)} risk events ({repeats} repeats, {redelivered} transactions"
            f" already in the written states) differ from the backtest, {sum(w[3] for w in wrong)}"
            f" of them from the first worker (which sent {by_first}; alignment waits that ran out"
            f" in it: {first_expired}); in the second worker: {expired}; (id, score,"
            f" backtest, first worker): {wrong[:5]}"
        )
        # Every difference seen so far came after an alignment wait that ran out (a group
        # scored without a lagging partition's earlier events, as designed after the bound).
        # With none in either worker, nothing explains a difference: fail.
        assert any(first_expired.values()) or any(expired.values()), detail
        pytest.xfail(detail)
