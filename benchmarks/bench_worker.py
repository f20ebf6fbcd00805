"""Live worker throughput and latency, compared in one run on one broker over the same messages.

    python benchmarks/bench_worker.py [--transactions 30000] [--registry DIR] [--bootstrap HOST:PORT]
                                      [--sweep default,batch256,...] [--quick] [--timeout 150]
                                      [--latency-settings default,wait100] [--profile DIR]
                                      [--out benchmarks/results/worker.json]

About 25 minutes on 2 shared cores with the defaults (``--quick``: about 10).

Messages: a window of ``training.history.event_stream`` over handbook_2w (transactions, the
synthetic clickstream, labels at transaction time + 7 days) starting ``--start-day`` days in, so
labels flow alongside transactions as they do in production, holding ``--transactions``
transactions. Every run starts from the window state of all the file's events before the window
(``--start-day`` days of history, seeded into its changelog as ``riskstream warmup`` does), as a
worker in production does; ``--cold`` starts from empty state (what this benchmark measured
before 2026-11-30, which flattered the worker: snapshots were small). The window's messages
are produced once into three input topics (the backlog); every throughput run below reads
that same backlog with its own consumer group and writes its own output topic.

* (a) riskstream's worker: ``python -m streams.cli worker`` (one process, a real model trained
  and published here with ``training.bundle.train_and_publish_matrix``, or ``--registry``), once per
  entry of ``SWEEP`` (pipeline max batch, max wait, model max batch, oneDNN, log level).
* (b) a plain Faust agent written the usual way (``benchmarks/plain_faust_agent.py``): one
  event at a time, user state in a Faust table, the model called per transaction (batch 1);
  with oneDNN off (its fastest at batch 1, the "default" entry) and on (the settings' default).
* (c) a raw aiokafka relay (this file's ``relay`` role): a consumer group reading the three input
  topics with ``getmany`` and producing every value to an output topic, doing no work.

Throughput is read from the output topic after the run: records over the time between the
first and the last output record (their producer timestamps), so start-up is excluded and the
harness does not compete for CPU while a run is timed. (a) and (b) emit one risk event per
transaction: their message rate counts the input messages between the first and the last
transaction. A run still going after ``--timeout`` seconds is stopped and measured over what it
produced (its status says so). CPU seconds of the process under test (and of the broker when it
is ours) over the same interval give messages per CPU-second, which varies less than wall-clock
rates on a shared machine. Micro-batch sizes are read back from the risk events (events of one
model call share their scored time and inference time).

Latency: per ``--latency-settings`` entry, a worker on fresh topics fed at a constant rate of
``--latency-fraction`` (0.5) of that setting's measured rate; percentiles of the risk events'
``latency_ms.end_to_end`` (input Kafka timestamp → risk event built), split into Kafka → worker
receipt, queue in the worker and inference, and of input timestamp → output record timestamp.
``--latency-pacing speed`` uses ``streams.replay.replay_events`` with ``speed`` instead:
event-time pacing follows the data's daily cycle, so its peaks run far above the mean rate (the
peak 1 s rate is recorded).

``--profile DIR`` adds untimed runs with py-spy attached (raw folded stacks): (a) and (b)
draining the backlog and (a) under the paced feed; ``--py-spy-args=--gil`` samples only the
thread holding the GIL (where the worker's one-core ceiling goes). Give that option with ``=``:
its value starts with ``--``.

``--latency-rate R`` feeds every setting at ``R`` × ``--latency-fraction`` instead of its own
measured rate, to compare settings at one rate (the run order matters on a shared machine: a
fresh broker's JIT warms up during the first runs; alternate the order between invocations).

Every run records the CPU seconds of the process under test (with its child processes: the
inference children of ``inference_process``), of its main thread (the event
loop: scoring, state, Faust; ``main_thread_busy`` is its share of the run's span) and of the
broker; the seconds the main thread waited for a CPU while runnable
(``main_thread_runqueue_wait_s``, from ``/proc/.../schedstat``); and the whole machine's busy
CPU seconds (``machine_cpu_s``, ``machine_busy`` as a share of all CPUs over the span) and the
hypervisor's steal (``machine_steal_s``). A thread's CPU time does not show a CPU it was kept
from; the run-queue wait does. Also the process's minor page faults over the span
(``minor_faults``) and its peak resident memory (``peak_rss_mb``, ``VmHWM`` read before it stops).

Results go to ``--out`` (JSON: machine, load averages, settings, counts, every run); a table is
printed. The targets of issue 5 are (a) ≥ 10 × (b), (a) ≥ 50 % of (c) and p99 ≤ 100 ms at half
the maximum rate, judged on default settings; the JSON says whether this run met them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "handbook_2w.parquet"
PARTITIONS = 4
DAY_MS = 86_400_000

# Worker settings tried for (a); "default" spells out the settings' defaults. ``loglevel`` is the
# worker's --loglevel (default info); the rest are RISKSTREAM_* settings.
DEFAULT_WORKER: dict[str, Any] = {
    "pipeline_max_batch": 512,
    "pipeline_max_wait_ms": 20,
    "model_max_batch": 256,
    "state_flush_interval_ms": 1000,
    "consumer_in_loop": True,
    "loglevel": "info",
}
SWEEP: dict[str, dict[str, Any]] = {
    "default": {},
    "batch256": {"pipeline_max_batch": 256},
    "batch1024": {"pipeline_max_batch": 1024},
    "batch2048": {"pipeline_max_batch": 2048},
    "batch1024-model1024": {"pipeline_max_batch": 1024, "model_max_batch": 1024},
    "model64": {"model_max_batch": 64},
    "wait5": {"pipeline_max_wait_ms": 5},
    "wait100": {"pipeline_max_wait_ms": 100},
    # oneDNN (on by default) caches primitives per input shape, so the worker pads every model
    # call to a power of two rows; off, Paddle's own CPU kernels run the unpadded batch.
    "onednn-off": {"use_onednn": False},
    "onednn-off-wait100": {"use_onednn": False, "pipeline_max_wait_ms": 100},
    # User states written after every micro-batch: what the worker did before
    # streams/state_flush.py.
    "flush-every-batch": {"state_flush_interval_ms": 0},
    "flush200": {"state_flush_interval_ms": 200},
    # Faust's worker sets the root logger to DEBUG when --loglevel is warning or above (its
    # progress spinner listens to every record), so every debug call builds a LogRecord.
    "loglevel-warning": {"loglevel": "warning"},
    # Consumer fetches: the broker holds a fetch until it has fetch_min_bytes or fetch_max_wait_ms
    # passed (the default is 64 KiB / 10 ms); 1 byte / 500 ms are aiokafka's and Java's defaults.
    "fetch-wait30": {"fetch_max_wait_ms": 30},
    "fetch-min1-wait500": {"fetch_min_bytes": 1, "fetch_max_wait_ms": 500},
    # The behaviour model in a child process (modeling/inference_process.py): a model call no
    # longer holds the worker's GIL, so the event loop (fetches included) goes on meanwhile.
    "inference-process": {"inference_process": True},
    # Faust's consumer in its own thread, as before streams/in_loop.py (the default runs it on the
    # worker's event loop).
    "consumer-thread": {"consumer_in_loop": False},
}
# (b) calls the model one transaction at a time, where oneDNN is slowest (batch 1: 0.40 ms
# against 0.11 with Paddle's own kernels, results/predictor.json): its "default" runs with oneDNN
# off, its fastest, so that (a)/(b) is not flattered; "onednn-on" is the settings' default.
PLAIN_SWEEP: dict[str, dict[str, Any]] = {
    "default": {"use_onednn": False},
    "onednn-on": {"use_onednn": True},
}
QUICK_SWEEP = ("default", "flush-every-batch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gb = round(kb / 1024 / 1024, 1)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_gb": mem_gb,
        "loadavg_start": loadavg(),
    }


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None, thread: int | None = None, *, system_only: bool = False) -> float | None:
    """User + system CPU seconds of a process (all its threads), or of one of its threads
    (``thread``: a thread id; the process id names its main thread), None when unreadable;
    ``system_only``: the kernel's part only (system calls, scheduling, futexes)."""
    if pid is None:
        return None
    stat = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[12]) if system_only else int(fields[11]) + int(fields[12])) / _TICK


def minor_faults(pid: int | None) -> int | None:
    """Minor page faults of a process so far (all its threads), None when unreadable: memory the
    kernel had to map in (memory touched for the first time, or freed back and touched again)."""
    if pid is None:
        return None
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        return None


def peak_rss_mb(pid: int | None) -> float | None:
    """The process's peak resident memory (``VmHWM``) in MiB, None when unreadable."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, IndexError, ValueError):
        return None
    return None


def tree_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds of a process and its live child processes (the worker's inference children,
    ``RISKSTREAM_INFERENCE_PROCESS``), None when the process is unreadable."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            own += cpu_seconds(int(stat.parent.name)) or 0.0
    return own


def runqueue_wait_seconds(pid: int | None, thread: int | None) -> float | None:
    """Seconds a thread spent runnable but waiting for a CPU (``/proc/.../schedstat``), None
    when unreadable. CPU time says what a thread used; this says what it was kept from."""
    if pid is None or thread is None:
        return None
    try:
        return int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def machine_cpu_seconds(*, steal: bool = False) -> float | None:
    """CPU seconds the whole machine spent busy, all CPUs together (``/proc/stat``; idle and
    iowait excluded); ``steal``: the seconds the hypervisor gave to other guests instead."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    if steal:
        return fields[7] / _TICK if len(fields) > 7 else None
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    return (sum(fields[:8]) - fields[3] - fields[4] - (fields[7] if len(fields) > 7 else 0)) / _TICK


# ------------------------------------------------------------------------------------ messages


@dataclass
class Messages:
    events: list[Any]
    counts: dict[str, int]
    first_txn: int  # index of the first and the last transaction in ``events``
    last_txn: int
    window: tuple[int, int]  # event-time range [ms]
    bytes: int
    history: list[Any] = field(default_factory=list)  # the file's events before the window

    @property
    def n_txn(self) -> int:
        return self.counts["transactions"]

    @property
    def between_txns(self) -> int:
        """Input messages from the first to the last transaction, both included."""
        return self.last_txn - self.first_txn + 1


def event_time(ev: Any) -> int:
    from modeling.records import Label

    return int(ev.label_time_ms if isinstance(ev, Label) else ev.event_time_ms)


def load_messages(path: Path, n_txn: int, start_day: float) -> Messages:
    import orjson

    from modeling.features import FeatureConfig
    from modeling.records import ClickEvent, Transaction
    from training.history import event_stream, load_history

    df = load_history(path)
    stream = event_stream(df, FeatureConfig())
    t0 = int(df["time_ms"].min()) + int(start_day * DAY_MS)
    events: list[Any] = []
    history: list[Any] = []
    n = 0
    for ev in stream.events():
        if event_time(ev) < t0:
            history.append(ev)
            continue
        if isinstance(ev, Transaction):
            if n == n_txn:
                break
            n += 1
        events.append(ev)
    kinds = [
        "transactions" if isinstance(e, Transaction) else "clicks" if isinstance(e, ClickEvent) else "labels"
        for e in events
    ]
    tx_idx = [i for i, k in enumerate(kinds) if k == "transactions"]
    counts = {k: kinds.count(k) for k in ("transactions", "clicks", "labels")}
    counts["messages"] = len(events)
    size = sum(len(orjson.dumps(e.to_dict())) for e in events)
    return Messages(
        events, counts, tx_idx[0], tx_idx[-1], (event_time(events[0]), event_time(events[-1])), size, history
    )


@dataclass
class WarmState:
    """Window state as of the message window's start: every event of the file before it, run
    through the feature engine (what ``riskstream warmup`` seeds). Serialized once, written into
    each run's changelog before its process starts, so every run starts from the same state."""

    users: dict[str, bytes]
    terminals: dict[str, bytes]
    transactions: int
    user_bytes_mean: float


def build_warm_state(history: list[Any]) -> WarmState:
    from modeling.features import FeatureConfig, FeatureEngine
    from streams.warmup import build_state, snapshots

    runner, n = build_state(history, FeatureEngine(FeatureConfig()))
    users, terms = snapshots(runner)
    mean = sum(map(len, users.values())) / max(len(users), 1)
    return WarmState(users, terms, n, mean)


async def seed_changelogs(bootstrap: str, logs: dict[str, tuple[Mapping[str, bytes], int]]) -> None:
    """``streams.warmup.write_snapshots`` into topics created here first."""
    from streams.broker.topics import ensure_topics
    from streams.warmup import write_snapshots

    await ensure_topics(bootstrap, {t: n for t, (_, n) in logs.items()})
    await write_snapshots(bootstrap, logs)


async def seed_worker(ctx: Ctx, app_id: str) -> None:
    if ctx.warm is not None:
        await seed_changelogs(
            ctx.bootstrap,
            {
                f"{app_id}-user-state-changelog": (ctx.warm.users, PARTITIONS),
                f"{app_id}-terminal-state-changelog": (ctx.warm.terminals, 1),
            },
        )


async def seed_plain(ctx: Ctx, app_id: str) -> None:
    # The plain agent keeps terminal state in a dict, not a table: it starts without it.
    if ctx.warm is not None:
        await seed_changelogs(ctx.bootstrap, {f"{app_id}-users-changelog": (ctx.warm.users, PARTITIONS)})


# ------------------------------------------------------------------------------------ model


def train_registry(root: Path) -> Path:
    """Train and publish a real behaviour model (as tests/integration/conftest.py does)."""
    from modeling.features import FeatureConfig
    from modeling.registry import ModelRegistry
    from training.bundle import point_in_time_split, train_and_publish_matrix
    from training.featurize import featurize_frame
    from training.history import load_history
    from training.trainer import TrainConfig

    df = load_history(DATA, "2018-06-01", "2018-06-11")
    m = featurize_frame(df, FeatureConfig())
    start, end = int(m.time_ms.min()), int(m.time_ms.max()) + 1
    split = point_in_time_split(m.time_ms, start, end, val_days=2, delay_days=0)
    train_and_publish_matrix(
        m,
        split,
        net_overrides={},
        train_cfg=TrainConfig(epochs=2, progress=False, device="cpu"),
        registry=ModelRegistry(root),
        source=str(DATA),
    )
    return root


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


# ------------------------------------------------------------------------------------ processes


@dataclass
class Proc:
    """A process under test: its own session (so its group can be signalled), log in a file."""

    cmd: list[str]
    env: dict[str, str]
    log: Path
    cpus: frozenset[int] | None = None  # --isolate: the CPUs it may run on
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self) -> Proc:
        # taskset execs the command (same pid); the worker's inference children inherit the mask
        pin = ["taskset", "-c", ",".join(map(str, sorted(self.cpus)))] if self.cpus else []
        with self.log.open("ab") as fh:
            self.popen = subprocess.Popen(
                [*pin, *self.cmd],
                cwd=ROOT,
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.time()
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        p = self.popen
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@dataclass
class Ctx:
    bootstrap: str
    registry: Path
    work: Path
    backlog: Topics
    msgs: Messages
    run_id: str
    timeout: float
    broker_pid: int | None
    profile_dir: Path | None = None
    profile_s: float = 15.0
    profile_args: tuple[str, ...] = ()  # extra py-spy record options, e.g. --gil, --threads
    profiles: dict[str, str] = field(default_factory=dict)
    warm: WarmState | None = None
    input_timestamps: str = "create"  # "append": the paced runs' input topics use LogAppendTime
    test_cpus: frozenset[int] | None = None  # --isolate: CPUs of the process under test

    def paced_inputs(self, topics: Topics) -> Sequence[str]:
        """The input topics of a paced run that carry the broker's append time."""
        return topics.inputs if self.input_timestamps == "append" else ()

    def name(self, tag: str) -> str:
        return f"bench-{self.run_id}-{tag}"


def riskstream_env(ctx: Ctx, app_id: str, topics: Topics, out: str, worker: dict[str, Any]) -> dict[str, str]:
    env = base_env()
    env.update(
        {
            "RISKSTREAM_BOOTSTRAP_SERVERS": ctx.bootstrap,
            "RISKSTREAM_APP_ID": app_id,
            "RISKSTREAM_TOPIC_TRANSACTIONS": topics.transactions,
            "RISKSTREAM_TOPIC_CLICKSTREAM": topics.clickstream,
            "RISKSTREAM_TOPIC_LABELS": topics.labels,
            "RISKSTREAM_TOPIC_RISK_EVENTS": out,
            "RISKSTREAM_TOPIC_DEAD_LETTER": f"{out}-dlq",
            "RISKSTREAM_TOPIC_PARTITIONS": str(PARTITIONS),
            "RISKSTREAM_REGISTRY_DIR": str(ctx.registry),
            "RISKSTREAM_WORKER_DATA_DIR": str(ctx.work / app_id),
            "RISKSTREAM_WEB_PORT": str(free_port()),
            "RISKSTREAM_METRICS_PORT": str(free_port()),
            "RISKSTREAM_HOME": str(ctx.work / "home"),
        }
    )
    env.update({f"RISKSTREAM_{k.upper()}": str(v) for k, v in worker.items() if k != "loglevel"})
    return env


def worker_proc(ctx: Ctx, tag: str, topics: Topics, out: str, worker: dict[str, Any]) -> Proc:
    app_id = ctx.name(tag)
    env = riskstream_env(ctx, app_id, topics, out, worker)
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--loglevel", str(worker["loglevel"])]
    return Proc(cmd, env, ctx.work / f"{app_id}.log", ctx.test_cpus)


def plain_proc(ctx: Ctx, tag: str, topics: Topics, out: str, worker: dict[str, Any]) -> Proc:
    app_id = ctx.name(tag)
    env = riskstream_env(ctx, app_id, topics, out, worker)
    port = env["RISKSTREAM_WEB_PORT"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "plain_faust_agent.py"), "worker", "-l", "info"]
    return Proc([*cmd, "--web-port", port], env, ctx.work / f"{app_id}.log", ctx.test_cpus)


def relay_proc(ctx: Ctx, tag: str, topics: Topics, out: str) -> Proc:
    cmd = [sys.executable, str(Path(__file__).resolve()), "relay", ctx.bootstrap, ctx.name(tag), out]
    return Proc([*cmd, *topics.inputs], base_env(), ctx.work / f"{ctx.name(tag)}.log", ctx.test_cpus)


# ------------------------------------------------------------------------------------ measuring


def _interp(samples: list[tuple[float, float | None]], t: float) -> float | None:
    pts = [(a, b) for a, b in samples if b is not None]
    if not pts:
        return None
    ts = np.array([a for a, _ in pts])
    vs = np.array([b for _, b in pts])
    return float(np.interp(t, ts, vs))


def _pct(a: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(a, q)), 2) if len(a) else None


STEADY_AFTER_S = 5  # the "steady" percentiles leave out this many seconds at the feed's start


def _over_time(name: str, in_ts: np.ndarray, lat: np.ndarray) -> dict[str, Any]:
    """``lat`` (ms) by second of input time (``in_ts``, ms): the median and the maximum of each
    second, which show when in the run the slow events were (start-up, a stall, all along), and
    the percentiles without the first ``STEADY_AFTER_S`` seconds."""
    if not len(in_ts):
        return {}
    sec = ((in_ts - in_ts.min()) // 1000).astype(np.int64)
    return {
        f"{name}_per_input_second": _per_second(sec, lat),
        f"{name}_steady": _pcts(lat[sec >= STEADY_AFTER_S]),
    }


def _per_second(sec: np.ndarray, lat: np.ndarray) -> dict[str, list[float | None]]:
    """The median and the maximum of ``lat`` in each second ``sec`` (from the first input)."""
    per: dict[str, list[float | None]] = {"p50": [], "max": []}
    for i in range(int(sec.max()) + 1 if len(sec) else 0):
        vals = lat[sec == i]
        per["p50"].append(round(float(np.median(vals)), 1) if len(vals) else None)
        per["max"].append(round(float(vals.max()), 1) if len(vals) else None)
    return per


def _pcts(a: np.ndarray) -> dict[str, float | None]:
    return {"p50": _pct(a, 50), "p90": _pct(a, 90), "p99": _pct(a, 99), "max": _pct(a, 100)}


async def watch(
    ctx: Ctx,
    proc: Proc,
    out: str,
    expected: int,
    timeout: float,
    profile_as: str | None = None,
    scrape: bool = False,
) -> dict[str, Any]:
    """Run ``proc`` until ``out`` holds ``expected`` records (or timeout / the process dies),
    sampling the CPU time of the process and the broker; then stop it. ``scrape``: read the
    worker's stall histograms from its metrics endpoint before stopping it."""
    from aiokafka import AIOKafkaConsumer

    watcher = AIOKafkaConsumer(bootstrap_servers=ctx.bootstrap, enable_auto_commit=False)
    await watcher.start()
    samples: list[tuple[Any, ...]] = []  # (time, then one reading per column of ``cols`` below)
    spy: subprocess.Popen[bytes] | None = None
    status = "ok"
    load0 = loadavg()
    proc.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            now = time.time()
            samples.append(
                (
                    now,
                    tree_cpu_seconds(proc.pid),
                    cpu_seconds(ctx.broker_pid),
                    cpu_seconds(proc.pid, proc.pid),
                    cpu_seconds(proc.pid, proc.pid, system_only=True),
                    runqueue_wait_seconds(proc.pid, proc.pid),
                    machine_cpu_seconds(),
                    machine_cpu_seconds(steal=True),
                    minor_faults(proc.pid),
                )
            )
            n = await end_count(watcher, out)
            if n >= expected:
                break
            if not proc.alive():
                status = f"exited with {proc.popen.returncode if proc.popen else '?'}"
                print(proc.tail(), file=sys.stderr)
                break
            if time.monotonic() > deadline:
                status = f"timeout after {timeout:.0f} s ({n}/{expected} records)"
                break
            if profile_as and spy is None and n > 0 and ctx.profile_dir is not None:
                spy = start_profile(ctx, proc, profile_as)
            await asyncio.sleep(0.25)
    finally:
        await watcher.stop()
        stalls = await asyncio.to_thread(scrape_stalls, proc) if scrape and proc.alive() else None
        peak_rss = peak_rss_mb(proc.pid) if proc.alive() else None
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(ctx.profile_s + 30)
        proc.stop()
    records = await read_all(ctx.bootstrap, out)
    ts = np.array(sorted(t for t, _ in records), dtype=np.int64)
    span = float(ts[-1] - ts[0]) / 1000.0 if len(ts) > 1 else 0.0
    res: dict[str, Any] = {
        "status": status,
        "output_records": len(records),
        "expected_records": expected,
        "span_s": round(span, 3),
        "first_output_after_start_s": round(float(ts[0]) / 1000.0 - proc.started, 2) if len(ts) else None,
        "loadavg_start": load0,
        "loadavg_end": loadavg(),
        "log": str(proc.log),
    }
    if len(ts) > 1:
        t0, t1 = float(ts[0]) / 1000.0, float(ts[-1]) / 1000.0
        # the main thread runs the event loop (scoring, state, Faust): the GIL-bound part
        cols = (
            "process_cpu_s",
            "broker_cpu_s",
            "main_thread_cpu_s",
            "main_thread_sys_cpu_s",
            "main_thread_runqueue_wait_s",
            "machine_cpu_s",
            "machine_steal_s",
            "minor_faults",
        )
        for col, key in enumerate(cols, start=1):
            series = [(s[0], s[col]) for s in samples]
            a, b = _interp(series, t0), _interp(series, t1)
            res[key] = round(b - a, 2) if a is not None and b is not None else None
        if res.get("main_thread_cpu_s") is not None and span > 0:
            res["main_thread_busy"] = round(res["main_thread_cpu_s"] / span, 3)
        if res.get("machine_cpu_s") is not None and span > 0:
            # every process on the machine: the worker, the broker, this script's feeder and reader
            res["machine_busy"] = round(res["machine_cpu_s"] / span / (os.cpu_count() or 1), 3)
    if res.get("minor_faults") is not None:
        res["minor_faults"] = int(res["minor_faults"])
    res["peak_rss_mb"] = peak_rss
    if stalls is not None:
        res["stalls"] = stalls
    res["_records"] = records
    return res


def scrape_stalls(proc: Proc) -> dict[str, Any] | None:
    """The worker's event-loop lag, GC pause and state-flush histograms, and the CPU seconds of
    its event-loop thread, in all and per stage (``cpu_s``); all cumulative since start."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{proc.env['RISKSTREAM_METRICS_PORT']}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError as exc:
        return {"error": repr(exc)}
    wanted = {
        "riskstream_event_loop_lag_seconds": "event_loop_lag_s",
        "riskstream_gc_pause_seconds": "gc_pause_s",
        "riskstream_state_flush_users": "state_flush_users",
        "riskstream_input_fetch_records": "fetch_records",
    }
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name in ("riskstream_event_loop_cpu_seconds", "riskstream_stage_cpu_seconds"):
            cpu = out.setdefault("cpu_s", {})
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    cpu[smp.labels.get("stage", "event_loop")] = round(smp.value, 4)
            continue
        key = wanted.get(fam.name)
        if key is None:
            continue
        for smp in fam.samples:
            # All label values summed; GC pauses also per generation.
            hs = [out.setdefault(key, {"buckets": {}})]
            if "generation" in smp.labels:
                by_gen = out.setdefault(f"{key}_by_generation", {})
                hs.append(by_gen.setdefault(smp.labels["generation"], {"buckets": {}}))
            for h in hs:
                if smp.name.endswith("_bucket"):
                    le = smp.labels["le"]
                    h["buckets"][le] = h["buckets"].get(le, 0) + int(smp.value)
                elif smp.name.endswith("_count"):
                    h["count"] = h.get("count", 0) + int(smp.value)
                elif smp.name.endswith("_sum"):
                    h["sum"] = round(h.get("sum", 0.0) + smp.value, 4)
    return out


def start_profile(ctx: Ctx, proc: Proc, name: str) -> subprocess.Popen[bytes] | None:
    spy_bin = Path(sys.executable).with_name("py-spy")
    if not spy_bin.exists() or ctx.profile_dir is None:
        return None
    ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.profile_dir / f"{name}.txt"
    ctx.profiles[name] = str(path)
    cmd = [str(spy_bin), "record", "-p", str(proc.pid), "-d", str(int(ctx.profile_s)), "-f", "raw"]
    cmd += ctx.profile_args
    return subprocess.Popen(
        [*cmd, "-o", str(path), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )


def risk_stats(res: dict[str, Any], msgs: Messages) -> dict[str, Any]:
    """Rates of a run that emits one risk event per transaction."""
    import orjson

    records = res.pop("_records")
    docs = [orjson.loads(v) for _, v in records]
    ids = [d["transaction_id"] for d in docs]
    res["batches"] = batch_stats(docs)
    span = res["span_s"]
    distinct = len(set(ids))
    # the messages consumed between the first and the last risk event: those between the first
    # and the last transaction, scaled down if the run stopped early
    covered = msgs.between_txns * min(distinct / msgs.n_txn, 1.0)
    res.update(
        {
            "distinct_transactions": distinct,
            "duplicates": len(ids) - distinct,
            "messages_per_s": round(covered / span, 1) if span else None,
            "transactions_per_s": round(distinct / span, 1) if span else None,
        }
    )
    if res.get("process_cpu_s"):
        res["messages_per_cpu_s"] = round(covered / res["process_cpu_s"], 1)
    return res


def batch_stats(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Micro-batches as seen in the risk events: events sharing a scored time and an inference
    time came from one model call."""
    sizes: dict[tuple[int, float], int] = {}
    for d in docs:
        k = (d["scored_time"], d["latency_ms"].get("inference", 0.0))
        sizes[k] = sizes.get(k, 0) + 1
    if not sizes:
        return {}
    n = np.array(list(sizes.values()))
    inf = np.array([k[1] for k in sizes])
    return {
        "model_calls": len(n),
        "transactions_per_call_mean": round(float(n.mean()), 1),
        "transactions_per_call_p50": float(np.median(n)),
        "transactions_per_call_max": int(n.max()),
        "inference_ms_per_call_mean": round(float(inf.mean()), 3),
        "inference_ms_total": round(float(inf.sum()), 1),
    }


def relay_stats(res: dict[str, Any]) -> dict[str, Any]:
    records = res.pop("_records")
    span = res["span_s"]
    res["messages_per_s"] = round(len(records) / span, 1) if span else None
    if res.get("process_cpu_s"):
        res["messages_per_cpu_s"] = round(len(records) / res["process_cpu_s"], 1)
    return res


# ------------------------------------------------------------------------------------ phases


async def run_worker(ctx: Ctx, label: str, overrides: dict[str, Any]) -> dict[str, Any]:
    worker = {**DEFAULT_WORKER, **overrides}
    out = ctx.name(f"a-{label}-risk")
    await create_topics(ctx.bootstrap, [out, f"{out}-dlq"])
    await seed_worker(ctx, ctx.name(f"a-{label}"))
    proc = worker_proc(ctx, f"a-{label}", ctx.backlog, out, worker)
    res = await watch(ctx, proc, out, ctx.msgs.n_txn, ctx.timeout, scrape=True)
    return {"system": "a", "label": label, "settings": worker, **risk_stats(res, ctx.msgs)}


async def run_plain(ctx: Ctx, label: str, overrides: dict[str, Any]) -> dict[str, Any]:
    worker = {**DEFAULT_WORKER, **overrides}
    out = ctx.name(f"b-{label}-risk")
    await create_topics(ctx.bootstrap, [out])
    await seed_plain(ctx, ctx.name(f"b-{label}"))
    proc = plain_proc(ctx, f"b-{label}", ctx.backlog, out, worker)
    res = await watch(ctx, proc, out, ctx.msgs.n_txn, ctx.timeout)
    return {"system": "b", "label": label, "settings": worker, **risk_stats(res, ctx.msgs)}


async def run_relay(ctx: Ctx) -> dict[str, Any]:
    out = ctx.name("c-out")
    await create_topics(ctx.bootstrap, [out])
    proc = relay_proc(ctx, "c", ctx.backlog, out)
    res = await watch(ctx, proc, out, ctx.msgs.counts["messages"], ctx.timeout)
    return {"system": "c", "label": "raw-aiokafka", **relay_stats(res)}


async def run_profiles(ctx: Ctx, paced_rate: float | None, fraction: float, warmup: int) -> None:
    """Extra, untimed runs of (a) default and (b) draining the backlog, and of (a) default under
    the latency phase's paced feed, with py-spy attached once output flows."""
    assert ctx.profile_dir is not None
    out = ctx.name("pa-risk")
    await create_topics(ctx.bootstrap, [out, f"{out}-dlq"])
    await seed_worker(ctx, ctx.name("pa"))
    proc = worker_proc(ctx, "pa", ctx.backlog, out, DEFAULT_WORKER)
    (await watch(ctx, proc, out, ctx.msgs.n_txn, ctx.timeout, profile_as="worker")).pop("_records")
    out = ctx.name("pb-risk")
    await create_topics(ctx.bootstrap, [out])
    await seed_plain(ctx, ctx.name("pb"))
    proc = plain_proc(ctx, "pb", ctx.backlog, out, DEFAULT_WORKER)
    (await watch(ctx, proc, out, ctx.msgs.n_txn, ctx.timeout, profile_as="plain")).pop("_records")
    if paced_rate:
        secs = ctx.profile_s + 15.0
        await run_latency(ctx, "default", paced_rate, fraction, secs, "constant", warmup, "worker-paced")


async def paced_send(
    events: Sequence[Any], bootstrap: str, topics: Topics, rate: float | None
) -> dict[str, Any]:
    """Produce ``events`` in order at a constant message rate (``None``: as fast as possible),
    with replay_events' producer settings; Kafka timestamps are the send time."""
    import orjson
    from aiokafka import AIOKafkaProducer

    from modeling.records import ClickEvent, Transaction

    def topic(ev: Any) -> str:
        if isinstance(ev, Transaction):
            return topics.transactions
        return topics.clickstream if isinstance(ev, ClickEvent) else topics.labels

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=5,
        max_batch_size=512 * 1024,
        acks="all",
        enable_idempotence=True,
    )
    await producer.start()
    pending: list[asyncio.Future[Any]] = []
    t0, cpu0 = time.monotonic(), time.process_time()
    behind = 0.0
    slept = 0  # index of the last message before which this loop gave way
    try:
        for i, ev in enumerate(events):
            if rate:
                ahead = t0 + i / rate - time.monotonic()
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
                    slept = i
                behind = max(behind, -ahead)
            if i - slept >= 64:
                # Behind schedule the loop never sleeps, and send() only appends to the
                # producer's batches: without a turn of the event loop its sender task cannot
                # send them, and records stamped at send() (CreateTime) waited in this process.
                await asyncio.sleep(0)
                slept = i
            pending.append(
                await producer.send(topic(ev), orjson.dumps(ev.to_dict()), key=ev.user_id.encode())
            )
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    seconds = time.monotonic() - t0
    return {
        "messages": len(events),
        "seconds": round(seconds, 2),
        "rate": round(len(events) / seconds, 1),
        "max_behind_schedule_s": round(behind, 3),
        "producer_cpu_s": round(time.process_time() - cpu0, 2),  # this harness process
    }


async def send_warmup(
    ctx: Ctx, topics: Topics, warm: Sequence[Any], out: str, n_out: int, feed: dict[str, Any]
) -> None:
    """Before a paced feed: send ``warm`` at once and wait until ``out`` holds ``n_out`` records
    (the process under test is up and assigned), then a second's pause."""
    from aiokafka import AIOKafkaConsumer

    await paced_send(warm, ctx.bootstrap, topics, None)
    c = AIOKafkaConsumer(bootstrap_servers=ctx.bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        while await end_count(c, out) < n_out:
            await asyncio.sleep(0.2)
    finally:
        await c.stop()
    await asyncio.sleep(1.0)
    feed["load_at_feed_start"] = loadavg()


async def run_latency(
    ctx: Ctx,
    label: str,
    max_rate: float,
    fraction: float,
    seconds: float,
    pacing: str,
    warmup: int,
    profile_as: str | None = None,
) -> dict[str, Any]:
    """Fresh topics, one default worker, a constant (or event-time) paced feed; percentiles."""
    import orjson

    from modeling.records import Transaction
    from streams.replay import replay_events

    tag = f"lat-{label}-{pacing}" + (f"-{profile_as}" if profile_as else "")
    worker = {**DEFAULT_WORKER, **SWEEP[label]}
    topics = Topics(ctx.name(f"{tag}-tx"), ctx.name(f"{tag}-clicks"), ctx.name(f"{tag}-labels"))
    out = ctx.name(f"{tag}-risk")
    await create_topics(
        ctx.bootstrap, [*topics.inputs, out, f"{out}-dlq"], log_append=ctx.paced_inputs(topics)
    )
    rate = max_rate * fraction
    events = ctx.msgs.events
    warm, rest = events[:warmup], events[warmup : warmup + int(rate * seconds)]
    warm_ids = {e.transaction_id for e in warm if isinstance(e, Transaction)}
    n_tx = len(warm_ids) + sum(isinstance(e, Transaction) for e in rest)
    await seed_worker(ctx, ctx.name(tag))
    proc = worker_proc(ctx, tag, topics, out, worker)
    feed: dict[str, Any] = {"pacing": pacing, "target_rate": round(rate, 1), "warmup_messages": len(warm)}

    async def produce() -> None:
        # the worker is up and assigned once the warm-up's risk events are out
        await send_warmup(ctx, topics, warm, out, len(warm_ids), feed)
        at_start = await asyncio.to_thread(scrape_stalls, proc)
        feed["_cpu_s_at_start"] = (at_start or {}).get("cpu_s")
        if pacing == "constant":
            feed.update(await paced_send(rest, ctx.bootstrap, topics, rate))
        else:
            t = np.array([event_time(e) for e in rest], dtype=np.int64)
            natural = len(rest) / max((t[-1] - t[0]) / 1000.0, 1e-3)
            speed = rate / natural
            per_s = np.bincount(((t - t[0]) / 1000.0 / speed).astype(np.int64))
            feed.update({"speed": round(speed, 1), "peak_1s_rate": int(per_s.max())})
            rep = await replay_events(
                rest, settings_for(ctx.bootstrap, topics, out), speed=speed, progress=False
            )
            feed.update({"messages": rep.total, "seconds": round(rep.seconds, 2), "rate": round(rep.rate, 1)})

    producer_task = asyncio.create_task(produce())
    res = await watch(ctx, proc, out, n_tx, ctx.timeout + seconds, profile_as=profile_as, scrape=True)
    if not producer_task.done():
        producer_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await producer_task
    records = res.pop("_records")
    docs = [(ts, orjson.loads(v)) for ts, v in records]
    docs = [(ts, d) for ts, d in docs if d["transaction_id"] not in warm_ids]
    lat = {k: np.array([d["latency_ms"][k] for _, d in docs]) for k in ("end_to_end", "queue", "inference")}
    e2e = lat["end_to_end"]
    # Kafka timestamp -> the worker's receipt (Faust's time_in): fetch and hand-over delay
    before = e2e - lat["queue"] - lat["inference"]
    # input Kafka timestamp = scored time - end to end; output record timestamp - that
    in_ts = np.array([d["scored_time"] - d["latency_ms"]["end_to_end"] for _, d in docs])
    sec = ((in_ts - in_ts.min()) // 1000).astype(np.int64) if len(in_ts) else in_ts
    out_ts = [ts for ts, _ in docs]
    to_out = np.array(out_ts, dtype=np.float64) - in_ts
    span = (max(out_ts) - min(out_ts)) / 1000.0 if len(out_ts) > 1 else 0.0

    # The event-loop thread's CPU over the paced feed (warm-up excluded), per fed message: in all
    # and per stage (score, output, state_flush, terminal_labels; "other" is the rest: Faust, the
    # intake hand-off, asyncio, acks).
    cpu0, cpu1 = feed.pop("_cpu_s_at_start", None), (res.get("stalls") or {}).get("cpu_s")
    if cpu0 and cpu1 and feed.get("messages"):
        used = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
        used["other"] = used.get("event_loop", 0.0) - sum(v for k, v in used.items() if k != "event_loop")
        res["event_loop_cpu_us_per_message"] = {
            k: round(v / feed["messages"] * 1e6, 1) for k, v in sorted(used.items())
        }

    res.update(
        {
            "feed": feed,
            "scored_transactions": len(docs),
            "output_transactions_per_s": round(len(docs) / span, 1) if span else None,
            "batches": batch_stats([d for _, d in docs]),
            "end_to_end_ms": _pcts(e2e),
            **_over_time("end_to_end_ms", in_ts, e2e),
            # where each second's latency was: before the worker had the message, or in its queue
            "kafka_to_worker_receipt_ms_p50_per_input_second": _per_second(sec, before)["p50"],
            "queue_in_worker_ms_p50_per_input_second": _per_second(sec, lat["queue"])["p50"],
            "input_to_output_record_ms": _pcts(to_out),
            "breakdown_ms": {
                "kafka_to_worker_receipt": _pcts(before),
                "queue_in_worker": _pcts(lat["queue"]),
                "inference_per_batch": _pcts(lat["inference"]),
            },
        }
    )
    return {"system": "a", "label": f"latency-{label}-{pacing}", "settings": worker, **res}


async def run_relay_latency(ctx: Ctx, rate: float, seconds: float, warmup: int) -> dict[str, Any]:
    """The latency floor: (c)'s relay on fresh topics under the same paced feed as (a)'s latency
    run; input record timestamp -> relayed record timestamp, matched by value."""
    tag = "lat-relay"
    topics = Topics(ctx.name(f"{tag}-tx"), ctx.name(f"{tag}-clicks"), ctx.name(f"{tag}-labels"))
    out = ctx.name(f"{tag}-out")
    await create_topics(ctx.bootstrap, [*topics.inputs, out], log_append=ctx.paced_inputs(topics))
    events = ctx.msgs.events
    warm, rest = events[:warmup], events[warmup : warmup + int(rate * seconds)]
    proc = relay_proc(ctx, tag, topics, out)
    feed: dict[str, Any] = {"pacing": "constant", "target_rate": round(rate, 1), "warmup_messages": len(warm)}

    async def produce() -> None:
        await send_warmup(ctx, topics, warm, out, len(warm), feed)
        feed.update(await paced_send(rest, ctx.bootstrap, topics, rate))

    producer_task = asyncio.create_task(produce())
    res = await watch(ctx, proc, out, len(warm) + len(rest), ctx.timeout + seconds)
    if not producer_task.done():
        producer_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await producer_task
    relayed = res.pop("_records")
    sent: dict[bytes, int] = {}
    for t in topics.inputs:
        for ts, value in await read_all(ctx.bootstrap, t):
            sent[value] = ts
    skip = len(warm)
    first_rest = sorted(sent.values())[skip] if len(sent) > skip else 0
    pairs = [(sent[v], ts - sent[v]) for ts, v in relayed if v in sent and sent[v] >= first_rest]
    in_ts = np.array([p[0] for p in pairs], dtype=np.float64)
    lat = np.array([p[1] for p in pairs], dtype=np.float64)
    res.update(
        {
            "feed": feed,
            "matched": len(lat),
            "input_to_output_record_ms": _pcts(lat),
            **_over_time("input_to_output_record_ms", in_ts, lat),
        }
    )
    return {"system": "c", "label": "latency-relay-constant", **res}


# ------------------------------------------------------------------------------------ relay role


async def relay(bootstrap: str, group: str, out: str, topics: Sequence[str]) -> None:
    """(c): consume the inputs with getmany and produce every value unchanged; no work."""
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
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            for recs in batch.values():
                for r in recs:
                    await producer.send(out, r.value, key=r.key)
    finally:
        await producer.stop()
        await consumer.stop()


# ------------------------------------------------------------------------------------ report


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x and y else None


def summarize(runs: list[dict[str, Any]], latency: dict[str, Any] | None) -> dict[str, Any]:
    """Headline numbers: (a) and (b) with default settings, (c); the best of each sweep too."""

    def pick(system: str, label: str | None = None) -> dict[str, Any] | None:
        ok = [r for r in runs if r["system"] == system and r.get("messages_per_s")]
        if label is not None:
            return next((r for r in ok if r["label"] == label), None)
        return max(ok, key=lambda r: r["messages_per_s"], default=None)

    def get(r: dict[str, Any] | None, key: str) -> Any:
        return r.get(key) if r else None

    a, b, c = pick("a", "default"), pick("b", "default"), pick("c")
    a_best, b_best = pick("a"), pick("b")
    p99 = latency["end_to_end_ms"]["p99"] if latency else None
    s: dict[str, Any] = {
        "a_default_messages_per_s": get(a, "messages_per_s"),
        "a_default_transactions_per_s": get(a, "transactions_per_s"),
        "a_best": {"label": get(a_best, "label"), "messages_per_s": get(a_best, "messages_per_s")},
        "b_default_messages_per_s": get(b, "messages_per_s"),
        "b_default_transactions_per_s": get(b, "transactions_per_s"),
        "b_best": {"label": get(b_best, "label"), "messages_per_s": get(b_best, "messages_per_s")},
        "c_messages_per_s": get(c, "messages_per_s"),
        "a_over_b": _ratio(get(a, "messages_per_s"), get(b, "messages_per_s")),
        "a_over_c": _ratio(get(a, "messages_per_s"), get(c, "messages_per_s")),
        "a_best_over_b_best": _ratio(get(a_best, "messages_per_s"), get(b_best, "messages_per_s")),
        "a_best_over_c": _ratio(get(a_best, "messages_per_s"), get(c, "messages_per_s")),
        "a_over_b_per_cpu_s": _ratio(get(a, "messages_per_cpu_s"), get(b, "messages_per_cpu_s")),
        "a_over_c_per_cpu_s": _ratio(get(a, "messages_per_cpu_s"), get(c, "messages_per_cpu_s")),
        "latency_settings": latency["settings"] if latency else None,
        "latency_feed_rate": latency["feed"].get("rate") if latency else None,
        "latency_p50_ms": latency["end_to_end_ms"]["p50"] if latency else None,
        "latency_p99_ms": p99,
        # without the feed's first STEADY_AFTER_S seconds; the target is judged on the whole feed
        "latency_steady_p99_ms": (latency.get("end_to_end_ms_steady") or {}).get("p99") if latency else None,
    }
    ab, ac = s["a_over_b"], s["a_over_c"]
    s["targets"] = {
        "a_at_least_10x_b": None if ab is None else ab >= 10.0,
        "a_at_least_half_of_c": None if ac is None else ac >= 0.5,
        "p99_at_most_100ms_at_half_rate": None if p99 is None else p99 <= 100.0,
    }
    return s


def print_table(runs: list[dict[str, Any]], latency: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    cols = f"{'msg/s':>10}{'txn/s':>10}{'msg/CPU-s':>11}{'txn/call':>9}{'span s':>8}{'load':>7}"
    head = f"{'run':<28}{cols}  status"
    print("\n" + head + "\n" + "-" * len(head))
    for r in runs:
        name = f"({r['system']}) {r['label']}"
        txn = r.get("transactions_per_s")
        print(
            f"{name:<28}{r.get('messages_per_s') or 0:>10,.0f}{txn or 0:>10,.0f}"
            f"{r.get('messages_per_cpu_s') or 0:>11,.0f}"
            f"{r.get('batches', {}).get('transactions_per_call_mean') or 0:>9.1f}{r['span_s']:>8.1f}"
            f"{r['loadavg_end'][0]:>7.1f}  {r['status']}"
        )
    for lat in latency:
        f = lat["feed"]
        e = lat.get("end_to_end_ms") or lat["input_to_output_record_ms"]  # (c): record to record
        print(
            f"\n{lat['label']}: fed {f.get('rate', 0):,.0f} msg/s (target {f['target_rate']:,.0f}); "
            f"end-to-end p50 {e['p50']} ms  p90 {e['p90']} ms  p99 {e['p99']} ms  max {e['max']} ms"
            f"  [{lat['status']}]"
        )
        st = lat.get("end_to_end_ms_steady") or lat.get("input_to_output_record_ms_steady")
        if st and st["p50"] is not None:  # None: a feed shorter than STEADY_AFTER_S
            print(
                f"  after the first {STEADY_AFTER_S} s: "
                f"p50 {st['p50']} ms  p99 {st['p99']} ms  max {st['max']} ms"
            )
    t = summary["targets"]
    print(
        f"\n(a)/(b) = {summary['a_over_b']}  (target ≥ 10: {t['a_at_least_10x_b']})   "
        f"(a)/(c) = {summary['a_over_c']}  (target ≥ 0.5: {t['a_at_least_half_of_c']})   "
        f"p99 ≤ 100 ms: {t['p99_at_most_100ms_at_half_rate']}"
    )
    print(
        f"best settings: (a) {summary['a_best']['label']} / (b) {summary['b_best']['label']} = "
        f"{summary['a_best_over_b_best']}   (a) best / (c) = {summary['a_best_over_c']}"
    )
    print(
        f"per CPU-second: (a)/(b) = {summary['a_over_b_per_cpu_s']}  "
        f"(a)/(c) = {summary['a_over_c_per_cpu_s']}"
    )


# ------------------------------------------------------------------------------------ main


async def bench(args: argparse.Namespace, ctx: Ctx, result: dict[str, Any]) -> None:
    from streams.replay import replay_events

    await create_topics(ctx.bootstrap, ctx.backlog.inputs)
    print(f"preloading {ctx.msgs.counts['messages']:,} messages ...", flush=True)
    rep = await replay_events(ctx.msgs.events, settings_for(ctx.bootstrap, ctx.backlog), progress=False)
    result["preload"] = {"messages": rep.total, "seconds": round(rep.seconds, 2), "rate": round(rep.rate, 1)}
    runs: list[dict[str, Any]] = result["runs"]

    def keep(r: dict[str, Any]) -> None:
        runs.append(r)
        print(
            f"  ({r['system']}) {r['label']}: {r.get('messages_per_s')} msg/s, "
            f"{r.get('transactions_per_s')} txn/s, load {r['loadavg_end'][0]} [{r['status']}]",
            flush=True,
        )

    labels = args.sweep.split(",") if args.sweep else list(QUICK_SWEEP if args.quick else SWEEP)
    unknown = [x for x in labels if x not in SWEEP]
    if unknown:
        raise SystemExit(f"unknown sweep settings {unknown}; choose from {list(SWEEP)}")
    if "default" in labels:
        labels.remove("default")
    print("(a) worker, default settings", flush=True)
    keep(await run_worker(ctx, "default", {}))
    if not args.skip_baselines:
        plain = PLAIN_SWEEP.items() if not args.quick else [("default", PLAIN_SWEEP["default"])]
        for label, overrides in plain:
            print(f"(b) plain Faust agent, {label}: {overrides}", flush=True)
            keep(await run_plain(ctx, label, overrides))
        print("(c) raw aiokafka relay", flush=True)
        keep(await run_relay(ctx))
    for label in labels:
        print(f"(a) worker, {label}: {SWEEP[label]}", flush=True)
        keep(await run_worker(ctx, label, SWEEP[label]))
    measured = {r["label"]: r.get("messages_per_s") for r in runs if r["system"] == "a"}
    pacings = ("constant", "speed") if args.latency_pacing == "both" else (args.latency_pacing,)
    for label in args.latency_settings.split(",") if args.latency_seconds > 0 else ():
        rate = args.latency_rate or measured.get(label)
        if not rate:
            print(f"no measured rate for {label!r}: latency run skipped", flush=True)
            continue
        for pacing in pacings:
            print(
                f"(a) latency, {label}: {args.latency_fraction:.0%} of {rate:,.0f} msg/s, {pacing} pacing",
                flush=True,
            )
            lat = await run_latency(
                ctx, label, rate, args.latency_fraction, args.latency_seconds, pacing, args.warmup
            )
            result["latency"].append(lat)
            print(
                f"  p50 {lat['end_to_end_ms']['p50']} ms, p99 {lat['end_to_end_ms']['p99']} ms "
                f"[{lat['status']}]",
                flush=True,
            )
            if label == "default" and pacing == "constant" and args.relay_latency:
                fed = lat["feed"].get("rate") or rate * args.latency_fraction
                print(f"(c) latency floor: the relay fed at {fed:,.0f} msg/s", flush=True)
                floor = await run_relay_latency(ctx, fed, args.latency_seconds, args.warmup)
                result["latency"].append(floor)
                q = floor["input_to_output_record_ms"]
                print(f"  p50 {q['p50']} ms, p99 {q['p99']} ms [{floor['status']}]", flush=True)
    if ctx.profile_dir is not None:
        print(f"profiling (untimed) into {ctx.profile_dir}", flush=True)
        await run_profiles(ctx, measured.get("default"), args.latency_fraction, args.warmup)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["relay"]:  # internal: system (c), started by the benchmark itself
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(relay(argv[1], argv[2], argv[3], argv[4:]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transactions", type=int, default=30_000, help="transactions in the message window")
    ap.add_argument("--start-day", type=float, default=7.0, help="window start, days into the file")
    ap.add_argument("--file", type=Path, default=DATA)
    ap.add_argument("--registry", type=Path, help="reuse a registry with a published behaviour model")
    ap.add_argument("--bootstrap", help="use this broker instead of starting a local one")
    ap.add_argument("--sweep", help=f"comma-separated worker settings for (a), of {','.join(SWEEP)}")
    ap.add_argument(
        "--quick", action="store_true", help=f"sweep only {','.join(QUICK_SWEEP)}; (b) default only"
    )
    ap.add_argument("--skip-baselines", action="store_true", help="run (a) only")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per run before giving up")
    ap.add_argument("--latency-fraction", type=float, default=0.5, help="feed rate / measured max rate")
    ap.add_argument(
        "--latency-rate",
        type=float,
        help="feed rate = this × --latency-fraction, for every setting (default: each setting's measured "
        "rate); compares settings at one rate",
    )
    ap.add_argument("--latency-seconds", type=float, default=45.0, help="length of the paced feed (0: skip)")
    ap.add_argument("--latency-pacing", choices=("constant", "speed", "both"), default="constant")
    ap.add_argument(
        "--latency-settings", default="default", help="comma-separated (a) settings measured for latency"
    )
    ap.add_argument("--warmup", type=int, default=500, help="messages sent before the paced feed")
    ap.add_argument(
        "--no-relay-latency",
        dest="relay_latency",
        action="store_false",
        help="skip (c)'s latency floor under the same paced feed",
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="start every run with empty state (default: the state of every event before the window)",
    )
    ap.add_argument("--profile", type=Path, help="also run py-spy on untimed (a)/(b) runs into this folder")
    ap.add_argument(
        "--py-spy-args",
        default="",
        help='extra py-spy record options for --profile, given with "=": --py-spy-args=--gil '
        '(GIL holder only), --py-spy-args="--threads --idle"',
    )
    ap.add_argument(
        "--input-timestamps",
        choices=("create", "append"),
        default="create",
        help="paced runs: input records stamped by the feeder (create) or on arrival at the broker "
        "(append: LogAppendTime), so end to end starts where the feeder's own queueing ends",
    )
    ap.add_argument(
        "--isolate",
        action="store_true",
        help="pin the process under test to the last CPU and this harness (feeder, reader) and the "
        "broker to the others, as when the load generator and the broker run on other hosts",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, broker data)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "worker.json")
    args = ap.parse_args(argv)
    # produce retries right after a topic is created (no leader yet) are expected; keep quiet
    logging.getLogger("aiokafka").setLevel(logging.ERROR)

    from modeling.settings import load_settings

    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/bench_worker.py", *argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "runs": [],
        "latency": [],
    }
    test_cpus: frozenset[int] | None = None
    if args.isolate:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--isolate needs at least two CPUs")
        test_cpus = frozenset(cpus[-1:])
        os.sched_setaffinity(0, cpus[:-1])  # the broker, started below, inherits this mask
        result["isolate"] = {"under_test_cpus": sorted(test_cpus), "harness_and_broker_cpus": cpus[:-1]}
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    kafka = None
    ctx: Ctx | None = None
    try:
        print(f"loading messages from {args.file.name} ...", flush=True)
        msgs = load_messages(args.file, args.transactions, args.start_day)
        result["messages"] = {
            "file": args.file.name,
            "start_day": args.start_day,
            **msgs.counts,
            "between_first_and_last_transaction": msgs.between_txns,
            "payload_bytes": msgs.bytes,
            "event_time_days": round((msgs.window[1] - msgs.window[0]) / DAY_MS, 2),
        }
        print(f"  {msgs.counts}", flush=True)
        if args.registry:
            registry = args.registry
        else:
            print("training and publishing a model ...", flush=True)
            registry = train_registry(work / "registry")
        from modeling.predictor import resolve_device
        from modeling.registry import ModelRegistry

        version = ModelRegistry(registry).current("behaviour")
        device = f"{load_settings().device} -> {resolve_device(load_settings().device)}"
        result["model"] = {"registry": str(registry), "version": version, "device": device}
        # From here on SIGTERM (``timeout``, ``kill``) unwinds like Ctrl-C, so that the broker and
        # the workers this run starts are stopped by its ``finally`` blocks instead of outliving
        # it. Set after Paddle is imported: its own handler aborts the process.
        signal.signal(signal.SIGTERM, _interrupt)
        if args.bootstrap:
            bootstrap, broker_pid = args.bootstrap, None
            result["broker"] = {"bootstrap": bootstrap, "own": False}
        else:
            from streams.broker.local import LocalKafka, free_port_pair

            lib = load_settings().kafka_home / "lib"
            port, controller_port = free_port_pair()  # distinct: two free_port() calls may repeat
            kafka = LocalKafka(
                work / "kafka",
                port=port,
                controller_port=controller_port,
                lib_dir=lib,
                partitions=PARTITIONS,
            )
            print("starting a local Kafka broker ...", flush=True)
            st = kafka.start()
            bootstrap, broker_pid = st.bootstrap, st.pid
            result["broker"] = {
                "bootstrap": bootstrap,
                "own": True,
                "version": st.version,
                "heap": kafka.heap,
            }
        run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
        backlog = Topics(f"bench-{run_id}-tx", f"bench-{run_id}-clicks", f"bench-{run_id}-labels")
        ctx = Ctx(bootstrap, registry, work, backlog, msgs, run_id, args.timeout, broker_pid, args.profile)
        ctx.profile_args = tuple(args.py_spy_args.split())
        ctx.input_timestamps = args.input_timestamps
        ctx.test_cpus = test_cpus
        result["input_timestamps"] = args.input_timestamps
        if args.cold:
            result["warm_state"] = None
        else:
            print(
                f"building window state from the {len(msgs.history):,} events before the window ...",
                flush=True,
            )
            ctx.warm = build_warm_state(msgs.history)
            result["warm_state"] = {
                "events": len(msgs.history),
                "transactions": ctx.warm.transactions,
                "users": len(ctx.warm.users),
                "terminals": len(ctx.warm.terminals),
                "user_snapshot_bytes_mean": round(ctx.warm.user_bytes_mean, 1),
            }
            print(f"  {result['warm_state']}", flush=True)
        result["settings"] = {
            "partitions": PARTITIONS,
            "timeout_s": args.timeout,
            "latency_fraction": args.latency_fraction,
            "latency_rate": args.latency_rate,
            "latency_seconds": args.latency_seconds,
            "latency_pacing": args.latency_pacing,
            "worker_defaults": DEFAULT_WORKER,
            "sweep": SWEEP,
            "plain_sweep": PLAIN_SWEEP,
        }
        asyncio.run(bench(args, ctx, result))
    finally:
        if kafka is not None:
            kafka.stop()
        result["machine"]["loadavg_end"] = loadavg()
        if ctx is not None and ctx.profiles:
            result["profiles"] = ctx.profiles
        lat = result["latency"][0] if result["latency"] else None
        result["summary"] = summarize(result["runs"], lat)
        floor = next((x for x in result["latency"] if x["system"] == "c"), None)
        if floor is not None:  # the same paced feed through the relay: what Kafka alone costs here
            result["summary"]["latency_floor_relay_ms"] = floor["input_to_output_record_ms"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print_table(result["runs"], result["latency"], result["summary"])
        print(f"\nwrote {args.out}")
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
