"""A worker catching up on a backlog scores with the terminal risk a backtest has.

Terminal risk is built from the fraud labels of every user, so labels do not reach it inside
the scoring loop: the worker forwards them to the terminal loop through an internal topic, and
that loop writes the global terminal table (DEVELOPERS.md, "The live scorer"). Live, that round
trip is far shorter than the one hour a label must be known before it counts. Catching up, an
hour of event time goes by in a few batches: here 1,500 labels, known two hours before the 240
transactions at their terminals, are all in Kafka before the worker starts, and the
transactions come right behind them.

The worker applies the labels it forwarded on top of the terminal table until the table holds
them (read-your-writes, ``streams/terminal_overlay.py``). Its scores must equal the backtest's,
the feature runner's over the same events in event-time order. With the overlay off
(``RISKSTREAM_TERMINAL_OVERLAY=false``) all 240 differ (checked).

With two workers catching up together each holds half of the labels partitions, and the other
half reach it from the other worker: every worker reads the labels the others forwarded, and
the floors they publish, straight from the terminal-labels topic, and a transaction waits for
the other workers' labels up to its timestamp minus the allowance (``streams/terminal_feed.py``).

Four partitions per topic: terminal risk mixes the labels of every partition, and the
overlay holds only the labels the worker has taken. The input buffer therefore holds a
transaction back until the labels of every partition are taken up to its timestamp minus the
allowance (``streams/input_buffer.py``, ``LabelRule``). Without it the transactions of one group
were taken while the labels of another were still in Kafka: with
``RISKSTREAM_INPUT_ALIGN_LABELS=false`` this test failed in 6 runs of 6 (51 to 118 of 240 scores
differed), and with the rule it passed 8 of 8.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import (
    Scenario,
    WorkerProc,
    consume,
    isolated_scenario,
    run,
    scores_by_transaction,
    served_scorer,
)

from modeling.features import Event, FeatureConfig, FeatureEngine, FeatureRunner
from modeling.records import Label, Transaction
from modeling.scoring import Scorer
from streams.broker.topics import terminal_labels_topic, terminal_state_changelog
from streams.replay import replay_events

T = 1_528_588_800_000  # 2018-06-10
SEC, MIN, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000
TERMINALS, LABELS_EACH, TXNS_EACH = 60, 25, 4


def _events() -> tuple[list[Label], list[Transaction]]:
    """Per terminal: 25 labels on transactions 8 days back (fraud on 15 of them at every third
    terminal), known about 2 h before 4 transactions at that terminal."""
    labels: list[Label] = []
    txns: list[Transaction] = []
    for j in range(TERMINALS):
        term = f"tt{j}"
        for k in range(LABELS_EACH):
            n = j * LABELS_EACH + k
            fraud = j % 3 == 0 and k < 15
            tx_time, label_time = T - 8 * DAY - k * 10 * MIN, T - 2 * HOUR + n * 100
            labels.append(Label(f"old{n}", f"lu{n % 97}", term, fraud, tx_time, label_time))
        for i in range(TXNS_EACH):
            n = j * TXNS_EACH + i
            txns.append(Transaction(f"t{n}", f"cu{n}", term, 30.0 + n % 50, T - 55 * MIN + n * SEC))
    return labels, txns


def _time(e: Event) -> int:
    return e.label_time_ms if isinstance(e, Label) else e.event_time_ms


def _backtest_scores(events: list[Event], scorer: Scorer) -> dict[str, float]:
    """The backtest's path: the feature runner (terminal labels applied in place) and the scorer."""
    pairs = list(FeatureRunner(FeatureEngine(FeatureConfig())).run(events))
    txns = [t for t, _ in pairs]
    verdicts = scorer.score(txns, [f for _, f in pairs])
    return {t.transaction_id: v.score for t, v in zip(txns, verdicts, strict=True)}


def _scenario(kafka_broker: str, model_registry: Path, tmp_path: Path) -> tuple[Scenario, Path, Any]:
    """Its own registry copy, and input topics of four partitions."""
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=4)
    reg = sc.registry_dir
    sc.create_kept_inputs()
    return sc, reg, sc.settings()


def _assert_backtest_scores(
    recs: list[Any], labels: list[Label], txns: list[Transaction], scorer: Scorer
) -> dict[str, float]:
    """Every transaction scored once, each as the backtest scores it within 1e-5; the backtest's
    scores."""
    live = scores_by_transaction(recs)
    assert len(live) == len(txns)
    want = _backtest_scores(sorted([*labels, *txns], key=_time), scorer)
    ids = [t.transaction_id for t in txns]
    diff = np.abs(np.array([live[t] for t in ids]) - np.array([want[t] for t in ids]))
    assert diff.max() <= 1e-5, f"{int((diff > 1e-5).sum())} of {len(ids)} scores differ; max {diff.max():.3g}"
    return want


def test_a_backlog_of_labels_reaches_terminal_risk_before_the_transactions_after_it(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    sc, reg, settings = _scenario(kafka_broker, model_registry, tmp_path)
    labels, txns = _events()
    run(replay_events([*labels, *txns], settings, kafka_timestamps="event", progress=False))

    w = WorkerProc(sc, "catch-up").start()
    try:
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], until=len(txns), timeout=240))
        overlaid = w.metric("riskstream_terminal_overlay_transactions_total")
    finally:
        w.stop()
    scorer = served_scorer(reg, settings)
    want = _assert_backtest_scores(recs, labels, txns, scorer)
    without_labels = _backtest_scores(list(txns), scorer)
    ids = [t.transaction_id for t in txns]
    # terminal risk moves these scores: a worker that scored them before the labels would fail
    moved = np.abs(np.array([without_labels[t] for t in ids]) - np.array([want[t] for t in ids])) > 1e-3
    assert moved.mean() > 0.5
    assert overlaid >= 1  # the terminal loop was behind for some of them


def _owned_input_partitions(w: WorkerProc, topic: str) -> set[int]:
    try:
        return {
            int(ls["partition"]) for ls in w.label_sets("riskstream_consumer_lag") if ls["topic"] == topic
        }
    except OSError:
        return set()


def test_two_workers_catching_up_together_score_as_the_backtest(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    sc, reg, settings = _scenario(kafka_broker, model_registry, tmp_path)
    t = sc.topics
    workers = [WorkerProc(sc, "pair-a").start(), WorkerProc(sc, "pair-b").start()]
    try:
        # both in the group, two input partitions each, before the backlog goes in
        deadline = time.monotonic() + 180
        while True:
            owned = [_owned_input_partitions(w, t["transactions"]) for w in workers]
            if all(owned) and owned[0].isdisjoint(owned[1]) and len(owned[0] | owned[1]) == 4:
                break
            assert time.monotonic() < deadline, f"{owned}\n{workers[0].log_tail()}"
            for w in workers:
                w.check_alive()
            time.sleep(1.0)
        labels, txns = _events()
        run(replay_events([*labels, *txns], settings, kafka_timestamps="event", progress=False))
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], until=len(txns), timeout=240))
        time.sleep(6)  # the feed's counts reach the metrics every 5 s
        fed = [w.metric("riskstream_terminal_feed_records_total", kind="label") for w in workers]
        scored = [w.metric("riskstream_events_out_total", topic=t["risk_events"]) for w in workers]
        # the terminal table's changelog read back a fetch at a time (streams/replica.py)
        direct = [w.metric("riskstream_terminal_replica_records_total", path="direct") for w in workers]
    finally:
        for w in workers:
            w.stop()
    _assert_backtest_scores(recs, labels, txns, served_scorer(reg, settings))
    assert all(n > 0 for n in scored), scored  # both scored transactions
    assert all(n > 0 for n in fed), fed  # each applied labels the other forwarded
    assert all(n > 0 for n in direct), direct


def _terminal_database(data_dir: Path) -> tuple[int, dict[str, bytes]]:
    """A stopped worker's terminal database: the changelog offset it holds, and its terminals."""
    import orjson

    from streams.store_files import open_db
    from streams.table_db import OFFSET_KEY
    from streams.terminal_overlay import APPLIED_KEY

    paths = sorted(data_dir.glob("**/*-terminal-state-0.db"))
    assert len(paths) == 1, paths
    db = open_db(paths[0])
    try:
        held = {orjson.loads(k): v for k, v in db.items() if k != OFFSET_KEY}
        offset = int(db.get(OFFSET_KEY))
    finally:
        db.close()
    held.pop(APPLIED_KEY)
    return offset, held


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_a_restarted_worker_reads_the_terminal_table_back_a_fetch_at_a_time(
    kafka_broker: str, model_registry: Path, tmp_path: Path, store: str
) -> None:
    """The labels are folded into the terminal table by a first worker, which then stops; the
    next worker starts on the table's changelog alone. Its recovery applies that changelog a
    fetch at a time (streams/replica.py, ``during_recovery``), never through Faust's per-record
    path, and its scores equal the backtest's: the restored table is the one the labels built.

    ``disk`` (``RISKSTREAM_TERMINAL_STORE=disk``, streams/terminal_store.py): the next worker is
    the first one restarted on its data directory. Its database holds every terminal, the
    start-time check finds it agreeing with the changelog, and the worker reads only the
    changelog written after the database's offset, where the memory store reads all of it."""
    sc, reg, settings = _scenario(kafka_broker, model_registry, tmp_path)
    env = {"RISKSTREAM_TERMINAL_STORE": store}
    labels, txns = _events()
    term_topic = terminal_labels_topic(settings)
    first = WorkerProc(sc, "labels", env).start()
    try:
        first.wait_metrics()
        run(replay_events(labels, settings, kafka_timestamps="event", progress=False))
        deadline = time.monotonic() + 180
        # every label forwarded and folded in by the terminal loop, and the table holding them
        while (
            first.metric("riskstream_events_in_total", topic=term_topic) < len(labels)
            or first.metric("riskstream_states", kind="terminal") < TERMINALS
        ):
            assert time.monotonic() < deadline, first.log_tail()
            first.check_alive()
            time.sleep(1.0)
        # and its changelog read back: no record more for 3 s
        read_back = [-1.0, first.metric("riskstream_terminal_replica_records_total")]
        while read_back[-1] != read_back[-2]:
            assert time.monotonic() < deadline, first.log_tail()
            time.sleep(3.0)
            read_back.append(first.metric("riskstream_terminal_replica_records_total"))
    finally:
        first.stop()
    changelog = run(consume(sc.bootstrap, terminal_state_changelog(settings), timeout=30, idle=3))
    end = max(r.offset for r in changelog) + 1
    if store == "disk":
        offset, held = _terminal_database(first.data_dir)
        assert len(held) == TERMINALS and offset < end
        tail = end - offset  # the records after the database's offset, and that one again
    w = WorkerProc(sc, "labels" if store == "disk" else "restarted", env)
    logged = w.log_path.stat().st_size if w.log_path.exists() else 0
    w.start()
    try:
        w.wait_metrics()
        deadline = time.monotonic() + 180
        while w.metric("riskstream_states", kind="terminal") < TERMINALS:  # recovered
            assert time.monotonic() < deadline, w.log_tail()
            w.check_alive()
            time.sleep(0.5)
        run(replay_events(txns, settings, kafka_timestamps="event", progress=False))
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], until=len(txns), timeout=240))
        read = {p: w.metric("riskstream_terminal_replica_records_total", path=p) for p in ("direct", "faust")}
        overlaid = w.metric("riskstream_terminal_overlay_transactions_total")
    finally:
        w.stop()
    assert read["faust"] == 0, read
    if store == "disk":
        log_text = w.log_path.read_bytes()[logged:].decode(errors="replace")
        assert "terminal-state database" in log_text and "states agree with the changelog" in log_text, (
            log_text[-3000:]
        )
        assert read["direct"] <= tail < len(changelog), (read, tail, len(changelog))
    else:
        assert read["direct"] >= TERMINALS, read
    _assert_backtest_scores(recs, labels, txns, served_scorer(reg, settings))
    assert overlaid == 0  # no label of this worker's: every one came from the restored table
