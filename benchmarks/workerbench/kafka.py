"""Topics, reading them back, seeding changelogs; and the relay role, system (c)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workerbench.config import PARTITIONS

# ------------------------------------------------------------------------------------ Kafka


@dataclass
class Topics:
    transactions: str
    clickstream: str
    labels: str

    @property
    def inputs(self) -> list[str]:
        return [self.transactions, self.clickstream, self.labels]


def settings_for(bootstrap: str, topics: Topics, out: str = "unused-risk") -> Any:
    from modeling.settings import Settings

    return Settings(
        bootstrap_servers=bootstrap,
        topic_transactions=topics.transactions,
        topic_clickstream=topics.clickstream,
        topic_labels=topics.labels,
        topic_risk_events=out,
        topic_partitions=PARTITIONS,
    )


async def create_topics(bootstrap: str, names: Sequence[str], *, log_append: Sequence[str] = ()) -> None:
    """``log_append``: topics whose records carry the broker's append time as their timestamp
    (``message.timestamp.type=LogAppendTime``) instead of the producer's creation time."""
    from streams.broker.topics import ensure_topics

    configs = {n: {"message.timestamp.type": "LogAppendTime"} for n in log_append}
    await ensure_topics(bootstrap, dict.fromkeys(names, PARTITIONS), configs=configs)


async def end_count(consumer: Any, topic: str) -> int:
    from aiokafka import TopicPartition

    offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    return int(sum(offsets.values()))


async def read_all(bootstrap: str, topic: str) -> list[tuple[int, bytes]]:
    """Every record of ``topic`` as (producer timestamp ms, value)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=10_000)
    await c.start()
    out: list[tuple[int, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await c.getmany(timeout_ms=1000)
            for recs in batch.values():
                out.extend((r.timestamp, r.value) for r in recs)
            for tp in list(remaining):
                if await c.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await c.stop()
    return out


async def seed_changelogs(bootstrap: str, logs: dict[str, tuple[Mapping[str, bytes], int]]) -> None:
    """``streams.warmup.write_snapshots`` into topics created here first."""
    from streams.broker.topics import ensure_topics
    from streams.warmup import write_snapshots

    await ensure_topics(bootstrap, {t: n for t, (_, n) in logs.items()})
    await write_snapshots(bootstrap, logs)


def start_broker(work: Path, broker_dir: Path | None) -> tuple[Any, dict[str, Any]]:
    """A local Kafka broker (``streams.broker.local``) on free ports, its data under ``work`` or
    in a folder of its own under ``broker_dir`` (/dev/shm: in memory); the broker and what the
    results record about it."""
    import tempfile

    from modeling.settings import load_settings
    from streams.broker.local import LocalKafka, free_port_pair

    port, controller_port = free_port_pair()  # distinct: two free_port() calls may repeat
    home = work / "kafka"
    if broker_dir is not None:
        home = Path(tempfile.mkdtemp(prefix="bench-kafka-", dir=broker_dir))
    kafka = LocalKafka(
        home,
        port=port,
        controller_port=controller_port,
        lib_dir=load_settings().kafka_home / "lib",
        partitions=PARTITIONS,
    )
    print("starting a local Kafka broker ...", flush=True)
    st = kafka.start()
    info = {
        "bootstrap": st.bootstrap,
        "pid": st.pid,
        "own": True,
        "version": st.version,
        "heap": kafka.heap,
        "data_dir": str(home),
    }
    return kafka, info


def finish(kafka: Any, work: Path, out: Path, result: dict[str, Any]) -> None:
    """The end of a benchmark with its own broker (``start_broker``): the broker stopped,
    ``result`` written to ``out`` and its summary printed, the temporary folders removed."""
    import json
    import shutil

    if kafka is not None:
        kafka.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result.get("summary"), indent=2))
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)
    if kafka is not None and not kafka.home.is_relative_to(work):
        shutil.rmtree(kafka.home, ignore_errors=True)


# ------------------------------------------------------------------------------------ relay role


async def _clients(bootstrap: str, group: str, topics: Sequence[str]) -> tuple[Any, Any, asyncio.Event]:
    """A started consumer of ``topics`` in ``group`` and a started producer, as (c), (d) and (e)
    use them, and an event that SIGTERM sets."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from modeling.settings import Settings

    defaults = Settings()
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
        # the worker's fetch settings, so that (c)'s latency floor is comparable
        fetch_min_bytes=defaults.fetch_min_bytes,
        fetch_max_wait_ms=defaults.fetch_max_wait_ms,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024, acks="all"
    )
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return consumer, producer, stop


async def relay(bootstrap: str, group: str, out: str, topics: Sequence[str]) -> None:
    """(c): consume the inputs with getmany and produce every value unchanged; no work."""
    consumer, producer, stop = await _clients(bootstrap, group, topics)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            for recs in batch.values():
                for r in recs:
                    await producer.send(out, r.value, key=r.key)
    finally:
        await producer.stop()
        await consumer.stop()


# ------------------------------------------------------------------------------------ floor roles


async def work_floor(
    bootstrap: str,
    group: str,
    out: str,
    registry: str,
    topics: Sequence[str],
    history: tuple[str, int, float] | None = None,
) -> None:
    """(d): the relay plus the work issue 5 asks for that does not depend on features or state:
    decode and validate every message with the worker's parsers, run the served behaviour model
    (the worker's predictor settings) on each fetch's transactions, build their verdicts and risk
    events, and produce those. The model's inputs are one all-zero feature vector, built once: no
    feature engine, no per-user state, no changelog, no labels folded. What this process reaches
    bounds from above what any worker with these parts could reach on this machine.

    (e), with ``history`` (file, transactions, start day: the benchmark's message window): the
    same plus the feature engine, on in-memory state (``FeatureRunner``, as the trainer and the
    backtest run it) warmed with the window's history before consuming. Every message is folded
    in fetch order; the transactions' real features are stacked for the model. What the worker
    adds on top of (e): Faust, the state tables and their changelogs, event-time alignment,
    terminal labels across workers, acks and metrics."""
    import time

    import numpy as np

    from modeling.errors import ValidationError
    from modeling.features import FeatureEngine, FeatureRunner, TxnFeatures
    from modeling.records import (
        ClickEvent,
        Label,
        Transaction,
        parse_click,
        parse_label,
        parse_transaction,
    )
    from modeling.settings import Settings, feature_config
    from streams.metrics import Metrics
    from streams.model_watch import ModelWatcher

    settings = Settings(registry_dir=registry)
    engine = FeatureEngine(feature_config(settings))
    config = engine.config
    scorer = ModelWatcher(settings, config, Metrics()).scorer()
    zero = TxnFeatures((0.0,) * config.n_features, ((0.0,) * config.seq_dim,) * config.seq_len, False)
    cap = settings.pipeline_max_batch
    tab0 = np.zeros((cap, config.n_features), np.float32)
    seq0 = np.zeros((cap, config.seq_len, config.seq_dim), np.float32)
    runner: FeatureRunner | None = None
    if history is not None:
        from workerbench.messages import load_messages

        runner = FeatureRunner(engine)
        for _ in runner.run(load_messages(Path(history[0]), history[1], history[2]).history):
            pass
    parsers = dict(zip(topics, (parse_transaction, parse_click, parse_label), strict=True))
    consumer, producer, stop = await _clients(bootstrap, group, topics)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=cap)
            txns: list[tuple[Transaction, int]] = []
            feats: list[TxnFeatures] = []
            for tp, recs in batch.items():
                parse = parsers[tp.topic]
                for r in recs:
                    try:
                        rec = parse(r.value, settings.max_message_bytes)
                    except ValidationError:
                        continue
                    if isinstance(rec, Transaction):
                        txns.append((rec, r.timestamp))
                        if runner is not None:
                            feats.append(runner.on_transaction(rec))
                    elif runner is not None and isinstance(rec, ClickEvent):
                        runner.on_click(rec)
                    elif runner is not None and isinstance(rec, Label):
                        runner.on_label(rec)
            if not txns:
                continue
            n = len(txns)
            t0 = time.monotonic()
            if runner is None:
                tab, seq, feats = tab0[:n], seq0[:n], [zero] * n
            else:
                tab, seq = scorer.inputs(feats)
            p = scorer.behaviour.predict({"tab": tab, "seq": seq})
            infer_ms = (time.monotonic() - t0) * 1000.0
            verdicts = scorer.verdicts([t for t, _ in txns], feats, tab, p)
            now = time.time() * 1000.0
            for (tx, ts), v in zip(txns, verdicts, strict=True):
                latency = {"queue": 0.0, "inference": round(infer_ms, 3), "end_to_end": round(now - ts, 3)}
                ev = scorer.risk_event(tx, v, int(now), latency)
                await producer.send(out, ev.to_json(), key=tx.user_id.encode())
    finally:
        await producer.stop()
        await consumer.stop()
