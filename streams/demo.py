"""``riskstream demo``: the main job on the shipped data, end to end on this machine.

1. start the local Apache Kafka broker (unless one answers at the configured bootstrap);
2. train and publish a behaviour model on the weeks before the demo period, unless the
   registry already has one;
3. seed the workers' user and terminal state from the month before the demo period
   (``riskstream warmup``), then start live scorer worker processes (one consumer group);
4. replay two weeks of shipped transactions (plus the synthetic clickstream and delayed labels)
   into Kafka as fast as the producer goes;
5. read the risk events back and print throughput, latency and how much fraud was caught.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HELP = "Run the whole product on the shipped data: local Kafka, a trained model, workers, replay, results."

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history", default=str(SHARED / "handbook_dev.parquet"), help="training file")
    p.add_argument("--file", default=str(SHARED / "handbook_2w.parquet"), help="file replayed live")
    p.add_argument("--train-from", default="2018-04-01")
    p.add_argument("--train-until", default="2018-05-25", help="exclusive; keep a gap before the replay")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--warmup-days", type=float, default=35.0, help="history seeded into the workers' state")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--limit", type=int, default=None, help="replay only the first N transactions")
    p.add_argument("--retrain", action="store_true", help="train a new model even if one is published")


def _riskstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", *args]


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    import numpy as np

    from modeling.evaluation import average_precision, card_precision_top_k, days_from_ms, roc_auc
    from modeling.records import parse_risk_event
    from modeling.registry import ModelRegistry
    from modeling.settings import feature_config, load_settings
    from streams.broker.local import LocalKafka, port_open
    from streams.broker.topics import ensure_project_topics
    from streams.replay import replay_events
    from training.history import event_stream, load_history

    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # the demo prints its own progress
    run_id = time.strftime("%Y%m%d%H%M%S")
    base = load_settings()
    # Each demo run gets its own topics and consumer group, so runs never mix.
    env = {
        **os.environ,
        "RISKSTREAM_APP_ID": f"riskstream-demo-{run_id}",
        "RISKSTREAM_TOPIC_TRANSACTIONS": f"demo-{run_id}-transactions",
        "RISKSTREAM_TOPIC_CLICKSTREAM": f"demo-{run_id}-clickstream",
        "RISKSTREAM_TOPIC_LABELS": f"demo-{run_id}-labels",
        "RISKSTREAM_TOPIC_RISK_EVENTS": f"demo-{run_id}-risk-events",
        "RISKSTREAM_TOPIC_DEAD_LETTER": f"demo-{run_id}-dead-letter",
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith("RISKSTREAM_")})
    settings = load_settings()

    print("== 1. Kafka")
    host, _, port = settings.bootstrap_servers.split(",")[0].rpartition(":")
    if port_open(host or "127.0.0.1", int(port)):
        print(f"using the broker at {settings.bootstrap_servers}")
    else:
        st = LocalKafka.from_settings(base).start()
        print(f"started Apache Kafka {st.version} at {settings.bootstrap_servers} (pid {st.pid})")

    print("== 2. Model")
    registry = ModelRegistry(settings.registry_dir)
    config = feature_config(settings)
    current = registry.current("behaviour")
    usable = current is not None and registry.manifest(current).get("feature_set") == config.feature_set
    if args.retrain or not usable:
        cmd = _riskstream(
            "train",
            args.history,
            "--from",
            args.train_from,
            "--until",
            args.train_until,
            "--epochs",
            str(args.epochs),
        )
        print("$", " ".join(cmd[2:]))
        subprocess.run(cmd, check=True, env=env)
        current = registry.current("behaviour")
    print(f"serving {current} from {settings.registry_dir}")

    df = load_history(args.file)
    if args.limit:
        df = df.iloc[: args.limit]
    stream = event_stream(df, config)
    n_tx = len(df)
    asyncio.run(ensure_project_topics(settings))

    if args.warmup_days > 0:
        import pandas as pd

        from modeling.features import FeatureEngine
        from streams.warmup import build_state, seed_state

        start = pd.Timestamp(int(df["time_ms"].min()), unit="ms").normalize()
        since = start - pd.Timedelta(days=args.warmup_days)
        t0 = time.monotonic()
        hist = load_history(args.history, since, start)
        runner, n_hist = build_state(event_stream(hist, config).events(), FeatureEngine(config))
        users, terminals = asyncio.run(seed_state(runner, settings))
        print(
            f"== warm-up: {users:,} user and {terminals:,} terminal states from {n_hist:,} transactions "
            f"({since.date()} .. {start.date()}) in {time.monotonic() - t0:.0f} s"
        )

    print(f"== 3. {args.workers} worker(s)")
    logdir = settings.worker_data_dir / "demo-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(args.workers):
        wenv = {**env, "RISKSTREAM_WORKER_DATA_DIR": str(settings.worker_data_dir / f"demo-{run_id}-{i}")}
        log = (logdir / f"worker-{run_id}-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                _riskstream("worker", "--web-port", str(6066 + i), "--metrics-port", str(9464 + i)),
                env=wenv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    print(f"logs in {logdir}")
    try:
        results = asyncio.run(_replay_and_collect(settings, stream, n_tx, procs, replay_events))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    report, events, t_first_in, t_last_out = results
    print("== 5. Results")
    print(
        f"replayed {report.total:,} messages ({n_tx:,} transactions) in {report.seconds:.1f} s "
        f"= {report.rate:,.0f} msg/s"
    )
    evs = [parse_risk_event(r.value) for r in events]
    got = {e.transaction_id: e for e in evs}
    print(f"risk events: {len(evs):,} ({len(got):,} distinct transactions of {n_tx:,})")
    span = t_last_out - t_first_in
    print(f"scored throughput: {len(got) / span:,.0f} transactions/s over {span:.1f} s (replay included)")
    e2e = np.array([e.latency_ms["end_to_end"] for e in evs])
    inf = np.array([e.latency_ms["inference"] for e in evs])
    print(
        f"end-to-end latency ms: p50 {np.percentile(e2e, 50):.1f}  p99 {np.percentile(e2e, 99):.1f}; "
        f"inference per batch ms: p50 {np.percentile(inf, 50):.2f}\n"
        "  (the replay outruns the worker, so end-to-end latency includes waiting behind the backlog;\n"
        "   benchmarks/bench_worker.py measures it at a sustainable rate)"
    )
    ids = df["transaction_id"].astype(str).to_numpy()
    mask = np.array([i in got for i in ids])
    y = df["is_fraud"].to_numpy()[mask].astype(bool)
    s = np.array([got[i].score for i in ids[mask]])
    dec = np.array([got[i].decision for i in ids[mask]])
    days = days_from_ms(df["time_ms"].to_numpy()[mask])
    cards = df["user_id"].to_numpy()[mask]
    print(
        f"detection: AUC {roc_auc(y, s):.4f}  AP {average_precision(y, s):.4f}  "
        f"CP@100 {card_precision_top_k(y, s, cards, days).mean:.4f}  "
        f"(synthetic clickstream included)"
    )
    amount = df["amount"].to_numpy()[mask]
    for d in ("decline", "review"):
        flagged = dec == d if d == "decline" else dec != "approve"
        caught = int((flagged & y).sum())
        print(
            f"  {d:>7}{'+decline' if d == 'review' else ''}: {flagged.mean():.2%} of transactions, "
            f"{caught}/{int(y.sum())} frauds ({caught / max(int(y.sum()), 1):.1%}), "
            f"{amount[flagged & y].sum():,.0f} of {amount[y].sum():,.0f} fraud amount"
        )
    return 0 if len(got) == n_tx else 1


async def _replay_and_collect(
    settings: Any,
    stream: Any,
    n_tx: int,
    procs: list[subprocess.Popen[bytes]],
    replay_events: Any,
) -> tuple[Any, list[Any], float, float]:
    import orjson
    from aiokafka import AIOKafkaConsumer

    from streams.security import client_kwargs

    consumer = AIOKafkaConsumer(
        settings.topic_risk_events,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        **client_kwargs(settings),
    )
    await consumer.start()
    print("== 4. Replay (clickstream is synthetic)")
    t_first_in = time.monotonic()
    report = await replay_events(stream.events(), settings, total=len(stream))
    events = []
    seen: set[str] = set()
    t_last = time.monotonic()
    try:
        # Wait as long as risk events keep coming; give up after two minutes without one.
        while len(seen) < n_tx and time.monotonic() - t_last < 120.0:
            for p in procs:
                if p.poll() is not None:
                    raise SystemExit(f"a worker exited with {p.returncode}; see its log")
            batch = await consumer.getmany(timeout_ms=1000)
            for recs in batch.values():
                for r in recs:
                    events.append(r)
                    seen.add(orjson.loads(r.value)["transaction_id"])
                    t_last = time.monotonic()
    finally:
        await consumer.stop()
    return report, events, t_first_in, t_last
