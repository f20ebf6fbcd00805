"""A file replayed through Kafka into the live scorer gets the same scores as the offline
backtest of the same file with the same model: one feature engine, one scorer.

Clicks and labels travel on their own topics, so in a live system a click can reach the worker
after the transaction it preceded (a race the backtest does not have). The replay here removes
that race and nothing else: hour by hour of event time, it publishes the hour's clicks and labels,
waits until the worker has consumed them (and applied the labels to terminal state), then
publishes the hour's transactions. Clicks and labels from later than a transaction never count
for it (the engine filters by event time), so the early delivery cannot change a score.

The first week is not replayed: ``riskstream warmup`` seeds the worker's state from it, and the
backtest counts from the second week on while building its state from the first (--eval-from).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from harness import Scenario, WorkerProc, consume, isolated_scenario, run, scores_by_transaction

from modeling.features import Event, FeatureConfig, FeatureEngine
from modeling.predictor import Predictor, PredictorOptions
from modeling.records import Label, Transaction
from modeling.registry import ModelRegistry
from modeling.scoring import Scorer
from streams.replay import replay_events
from streams.warmup import build_state, seed_state
from training.backtest import backtest
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "handbook_2w.parquet"


def _time(e: Event) -> int:
    return e.label_time_ms if isinstance(e, Label) else e.event_time_ms


def _replay_hour_by_hour(sc: Scenario, w: WorkerProc, events: list[Event]) -> None:
    settings = sc.settings()
    hour = 3_600_000
    side_in = 0
    labels_in = 0
    chunks: dict[int, tuple[list[Event], list[Event]]] = {}
    for ev in events:
        side, txns = chunks.setdefault(_time(ev) // hour, ([], []))
        (txns if isinstance(ev, Transaction) else side).append(ev)
    term_topic = f"rs-{sc.name}-terminal-labels"
    for key in sorted(chunks):
        side, txns = chunks[key]
        if side:
            run(replay_events(side, settings, progress=False))
            side_in += len(side)
            labels_in += sum(isinstance(e, Label) for e in side)
            deadline = time.monotonic() + 60
            while not (
                w.metric("riskstream_events_in_total", topic=sc.topics["clickstream"])
                + w.metric("riskstream_events_in_total", topic=sc.topics["labels"])
                >= side_in
                and w.metric("riskstream_events_in_total", topic=term_topic) >= labels_in
            ):
                assert time.monotonic() < deadline, w.log_tail()
                time.sleep(0.02)
        if txns:
            run(replay_events(txns, settings, progress=False))


@pytest.mark.parametrize("loop_cache_mb", [None, 0], ids=["default", "terminal-loop-cache-0"])
def test_replayed_live_scores_equal_backtest(
    kafka_broker: str, model_registry: Path, tmp_path: Path, loop_cache_mb: int | None
) -> None:
    """``terminal-loop-cache-0``: the terminal loop keeps no written state past the batch the
    table has read back (streams/terminal_loop.py, WrittenTerminals), so it builds on states
    read back from the table."""
    df = load_history(DATA)
    users = sorted(df["user_id"].unique())[250:400]
    df = df[df["user_id"].isin(users)].reset_index(drop=True)
    sample = tmp_path / "sample.parquet"
    df.assign(event_time=df["time_ms"]).drop(columns=["time_ms"]).to_parquet(sample)

    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=2)
    reg = sc.registry_dir
    config = FeatureConfig()
    split = "2018-06-08"
    split_ms = int(pd.Timestamp(split).value // 1_000_000)
    # The same event sequence the backtest builds from the file, cut at the split.
    everything = list(event_stream(load_history(sample), config).events())
    history = [e for e in everything if _time(e) < split_ms]
    events = [e for e in everything if _time(e) >= split_ms]
    n_tx = sum(isinstance(e, Transaction) for e in events)
    runner, _ = build_state(history, FeatureEngine(config))
    run(seed_state(runner, sc.settings()))

    env = {} if loop_cache_mb is None else {"RISKSTREAM_TERMINAL_LOOP_CACHE_MB": str(loop_cache_mb)}
    w = WorkerProc(sc, "parity", env).start()
    try:
        w.wait_metrics()
        time.sleep(3)
        _replay_hour_by_hour(sc, w, events)
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], until=n_tx, timeout=240))
        time.sleep(6)  # the gauges are reported every 5 s
        evicted = w.metric("riskstream_state_cache_evictions_total", kind="terminal_loop")
    finally:
        w.stop()
    if loop_cache_mb == 0:
        assert evicted > 0, "the terminal loop dropped no state: the test did not build on read-back states"
    else:
        assert evicted == 0
    live = scores_by_transaction(recs)
    assert len(live) == n_tx

    registry = ModelRegistry(reg)
    # The worker's own predictor settings: kernels differ between oneDNN and plain CPU, and the
    # model's bin-edge indicators turn last-bit differences into visible score differences.
    options = PredictorOptions.from_settings(sc.settings())
    pred = Predictor.load(registry, "behaviour", options, expected_feature_set=config.feature_set)
    res = backtest(sample, [Scorer(pred, config)], config, eval_from=split, progress=False)
    offline = dict(zip(res.transaction_id.tolist(), res.runs[0].scores.tolist(), strict=True))
    ids = sorted(offline)
    a = np.array([live[i] for i in ids])
    b = np.array([offline[i] for i in ids])
    assert len(ids) == n_tx
    assert res.y is not None and res.y.sum() > 0  # the sample has fraud and terminal history
    diff = np.abs(a - b)
    assert diff.max() <= 1e-5, f"{int((diff > 1e-5).sum())} of {len(ids)} scores differ; max {diff.max():.3g}"
