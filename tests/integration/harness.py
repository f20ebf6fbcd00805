"""Helpers for tests that run real worker processes against the session's Kafka broker."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

ROOT = Path(__file__).resolve().parents[2]
RISKSTREAM = [sys.executable, "-m", "streams.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Scenario:
    """One isolated deployment: its own app id, topics and registry on the shared broker."""

    bootstrap: str
    registry_dir: Path
    home: Path
    partitions: int = 4
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. Kafka security settings

    @property
    def topics(self) -> dict[str, str]:
        return {
            "transactions": f"tx-{self.name}",
            "clickstream": f"clicks-{self.name}",
            "labels": f"labels-{self.name}",
            "risk_events": f"risk-{self.name}",
            "dead_letter": f"dlq-{self.name}",
        }

    def create_kept_inputs(self) -> None:
        """The input topics, with this scenario's partition count (a broker's auto-create gives
        its own, which the worker refuses) and no time-based retention: records stamped with
        2018 event times are deleted at the broker's next retention check, and a worker
        started after it finds nothing to read (test_catch_up_order.py lost its backlog so)."""
        from streams.broker.topics import ensure_topics

        t = self.topics
        inputs = (t["transactions"], t["clickstream"], t["labels"])
        keep = {name: {"retention.ms": "-1"} for name in inputs}
        run(ensure_topics(self.bootstrap, dict.fromkeys(inputs, self.partitions), configs=keep))

    def env(self, **extra: str) -> dict[str, str]:
        t = self.topics
        env = {
            **os.environ,
            "RISKSTREAM_BOOTSTRAP_SERVERS": self.bootstrap,
            "RISKSTREAM_APP_ID": f"rs-{self.name}",
            "RISKSTREAM_TOPIC_TRANSACTIONS": t["transactions"],
            "RISKSTREAM_TOPIC_CLICKSTREAM": t["clickstream"],
            "RISKSTREAM_TOPIC_LABELS": t["labels"],
            "RISKSTREAM_TOPIC_RISK_EVENTS": t["risk_events"],
            "RISKSTREAM_TOPIC_DEAD_LETTER": t["dead_letter"],
            "RISKSTREAM_TOPIC_PARTITIONS": str(self.partitions),
            "RISKSTREAM_REGISTRY_DIR": str(self.registry_dir),
            "RISKSTREAM_REGISTRY_POLL_S": "1",
            "RISKSTREAM_PIPELINE_MAX_WAIT_MS": "20",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("RISKSTREAM_CONFIG", None)
        env.update(self.extra_env)
        env.update(extra)
        return env

    def settings(self, **overrides: Any) -> Any:
        from modeling.settings import Settings

        t = self.topics
        return Settings(
            bootstrap_servers=self.bootstrap,
            app_id=f"rs-{self.name}",
            topic_transactions=t["transactions"],
            topic_clickstream=t["clickstream"],
            topic_labels=t["labels"],
            topic_risk_events=t["risk_events"],
            topic_dead_letter=t["dead_letter"],
            topic_partitions=self.partitions,
            registry_dir=self.registry_dir,
            **overrides,
        )


def isolated_scenario(
    bootstrap: str, model_registry: Path, home: Path, partitions: int = 4, **kw: Any
) -> Scenario:
    """A :class:`Scenario` with its own copy of ``model_registry`` (``home / "registry"``), so
    that what a test publishes or refuses stays in it."""
    registry = home / "registry"
    shutil.copytree(model_registry, registry)
    return Scenario(bootstrap, registry, home, partitions=partitions, **kw)


class WorkerProc:
    def __init__(self, scenario: Scenario, tag: str, env: dict[str, str] | None = None) -> None:
        self.scenario = scenario
        self.extra_env = env or {}
        self.metrics_port = free_port()
        self.web_port = free_port()
        self.log_path = scenario.home / f"worker-{scenario.name}-{tag}.log"
        self.data_dir = scenario.home / f"data-{tag}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProc:
        env = self.scenario.env(RISKSTREAM_WORKER_DATA_DIR=str(self.data_dir), **self.extra_env)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *RISKSTREAM,
                    "worker",
                    "--web-port",
                    str(self.web_port),
                    "--metrics-port",
                    str(self.metrics_port),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, lab = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in lab for k, v in labels.items()):
                total += float(value)
        return total

    def label_sets(self, name: str) -> list[dict[str, str]]:
        """The label sets of the samples of ``name`` this worker serves now."""
        out = []
        for line in self.metrics().splitlines():
            head, _, _ = line.rpartition(" ")
            metric, _, lab = head.partition("{")
            if metric == name:
                out.append(dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', lab)))
        return out

    def wait_metrics(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"worker metrics endpoint never came up\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}\n{self.log_tail()}")

    def children(self, marker: str) -> list[int]:
        """Pids of this worker's live child processes whose command line contains ``marker``."""
        if self.proc is None:
            return []
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.proc.pid and fields[0] not in ("Z", "X") and marker in cmdline:
                found.append(int(stat.parent.name))
        return found

    def exits(self, why: str, timeout: float = 120.0) -> tuple[int, str]:
        """Wait for a worker that must stop on its own (bad credentials, say): its exit code and
        its log. One still running after ``timeout`` is killed and fails the test, saying ``why``
        it should have stopped."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the worker kept running {why}\n{self.log_tail()}") from None
        return code, self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def wait_model_info(w: WorkerProc, timeout: float = 90.0, **labels: str) -> None:
    """Wait until the worker's ``riskstream_model_info`` shows ``labels`` (versions served, in
    shadow)."""
    deadline = time.monotonic() + timeout
    while not any(
        all(s.get(k) == v for k, v in labels.items()) for s in w.label_sets("riskstream_model_info")
    ):
        assert time.monotonic() < deadline, f"model info never showed {labels}: {w.log_tail()}"
        w.check_alive()
        time.sleep(0.5)


async def produce(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes]], **kw: Any) -> int:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **kw)
    await p.start()
    n = 0
    try:
        futs = []
        for key, value in items:
            futs.append(await p.send(topic, value, key=key))
            n += 1
        await p.flush()
        for f in futs:
            await f
    finally:
        await p.stop()
    return n


async def consume(
    bootstrap: str,
    topic: str,
    *,
    until: int | None = None,
    timeout: float = 120.0,
    idle: float | None = None,
    **client_kw: Any,
) -> list[Any]:
    """Read ``topic`` from the beginning until ``until`` records, ``timeout``, or ``idle`` seconds
    without a new record. ``client_kw``: more ``AIOKafkaConsumer`` arguments (security)."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_kw,
    )
    await c.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if until is not None and len(out) >= until:
                break
            if idle is not None and out and time.monotonic() - last > idle:
                break
            batch = await c.getmany(timeout_ms=500)
            for recs in batch.values():
                out.extend(recs)
                last = time.monotonic()
    finally:
        await c.stop()
    return out


async def topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's configuration as the broker reports it (``cleanup.policy`` …)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        responses = await admin.describe_configs(resources)
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for _code, _msg, _type, name, entries in response.resources:
            out[name] = {e[0]: e[1] for e in entries}
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def group_lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Messages of ``topics`` not yet committed by consumer group ``group`` (end - committed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:  # both closed whatever fails, their start included
        await admin.start()
        await c.start()
        committed = await admin.list_consumer_group_offsets(group)
        # Ask the broker: a fresh consumer's cached metadata may not list the topics yet, and a
        # topic it does not know would look caught up.
        described = await admin.describe_topics(topics)
        parts = {t["topic"]: {p["partition"] for p in t["partitions"]} for t in described}
        missing = [t for t in topics if not parts.get(t)]
        if missing:
            raise AssertionError(f"no partitions known for {missing}")
        ends = await c.end_offsets([TopicPartition(t, p) for t, ps in parts.items() for p in ps])
        done = {tp: meta.offset for tp, meta in committed.items()}
        return sum(max(end - max(done.get(tp, 0), 0), 0) for tp, end in ends.items())
    finally:
        await c.stop()
        await admin.close()


def wait_caught_up(
    scenario: Scenario, timeout: float = 300.0, worker: WorkerProc | None = None, *, terminals: bool = False
) -> None:
    """Until the scenario's group has committed every input message (the worker is done); with
    ``terminals``, also every forwarded label (the terminal table is up to date)."""
    topics = [scenario.topics[k] for k in ("transactions", "clickstream", "labels")]
    if terminals:
        topics.append(f"rs-{scenario.name}-terminal-labels")
    deadline = time.monotonic() + timeout
    lag = -1
    while time.monotonic() < deadline:
        try:
            lag = run(group_lag(scenario.bootstrap, f"rs-{scenario.name}", topics))
        except KafkaError as exc:  # e.g. the group's coordinator not elected yet on a new broker
            if not exc.retriable:
                raise
            lag = -1
        if lag == 0:
            return
        if worker is not None:
            worker.check_alive()
        time.sleep(1.0)
    raise AssertionError(f"group rs-{scenario.name} still {lag} messages behind after {timeout} s")


def served_scorer(registry: Path, settings: Any) -> Any:
    """The registry's current behaviour model behind a ``Scorer``, loaded as a worker with
    ``settings`` loads it: what the catch-up tests score their reference with."""
    from modeling.features import FeatureConfig
    from modeling.predictor import Predictor, PredictorOptions
    from modeling.registry import ModelRegistry
    from modeling.scoring import Scorer

    config = FeatureConfig()
    options = PredictorOptions.from_settings(settings)
    registry_ = ModelRegistry(registry)
    predictor = Predictor.load(registry_, "behaviour", options, expected_feature_set=config.feature_set)
    return Scorer(predictor, config)


def scores_by_transaction(records: Iterable[Any]) -> dict[str, float]:
    """Risk-event records (as :func:`consume` returns them) -> transaction id -> score."""
    import orjson

    out: dict[str, float] = {}
    for r in records:
        ev = orjson.loads(r.value)
        out[ev["transaction_id"]] = ev["score"]
    return out


class ConsumerThread:
    """Faust's consumer thread as ``perform_seek`` and ``uncommitted`` use it, over a real aiokafka
    consumer."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer

    def _ensure_consumer(self) -> AIOKafkaConsumer:
        return self.consumer

    async def call_thread(self, fun: Callable[[], Awaitable[Any]]) -> Any:
        return await fun()

    def seek(self, tp: Any, offset: int) -> None:
        self.consumer.seek(tp, offset)

    def assignment(self) -> set[Any]:
        return set(self.consumer.assignment())


def state_view(st: Any) -> tuple[object, ...]:
    """What of a ``UserState`` two equal states agree on (its fields, as comparable values)."""
    return (st.txn_last_ms, st.prev_ms, st.n_seen, list(st.hist), list(st.seq), st.frauds, st.devices)
