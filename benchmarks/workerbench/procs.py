"""The processes under test, (a), (b) and (c), and the context every run shares."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workerbench.config import PARTITIONS, ROOT
from workerbench.kafka import Topics, seed_changelogs
from workerbench.messages import Messages, WarmState
from workerbench.system import free_port

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

    def metrics(self) -> str:
        """The worker's Prometheus exposition (its ``RISKSTREAM_METRICS_PORT``)."""
        import urllib.request

        url = f"http://127.0.0.1:{self.env['RISKSTREAM_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

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
    harness_gc: str = "quiet"  # "auto": this harness collects as usual during paced feeds (HarnessGC)

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
    env.update({f"RISKSTREAM_{k.upper()}": str(v) for k, v in worker.items() if k not in NOT_SETTINGS})
    env.update(worker.get("env", {}))
    return env


# Entries of a SWEEP setting that are not worker settings (RISKSTREAM_* variables)
NOT_SETTINGS = ("loglevel", "pure_python", "env")
# ``env``: other environment variables of the worker process (the C library's, Python's)
# ``pure_python``: the worker loads the sources of modeling/native.py's modules, not the compiled set
_PURE = (
    "import sys, modeling.native as n; n.use_sources('benchmark: pure-python');"
    " from streams.cli import main; sys.exit(main())"
)


def worker_proc(ctx: Ctx, tag: str, topics: Topics, out: str, worker: dict[str, Any]) -> Proc:
    app_id = ctx.name(tag)
    env = riskstream_env(ctx, app_id, topics, out, worker)
    entry = ["-c", _PURE] if worker.get("pure_python") else ["-m", "streams.cli"]
    cmd = [sys.executable, *entry, "worker", "--loglevel", str(worker["loglevel"])]
    return Proc(cmd, env, ctx.work / f"{app_id}.log", ctx.test_cpus)


def plain_proc(ctx: Ctx, tag: str, topics: Topics, out: str, worker: dict[str, Any]) -> Proc:
    app_id = ctx.name(tag)
    env = riskstream_env(ctx, app_id, topics, out, worker)
    port = env["RISKSTREAM_WEB_PORT"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "plain_faust_agent.py"), "worker", "-l", "info"]
    return Proc([*cmd, "--web-port", port], env, ctx.work / f"{app_id}.log", ctx.test_cpus)


def relay_proc(ctx: Ctx, tag: str, topics: Topics, out: str) -> Proc:
    # the entry point's relay role (bench_worker.py's main), not this module
    script = ROOT / "benchmarks" / "bench_worker.py"
    cmd = [sys.executable, str(script), "relay", ctx.bootstrap, ctx.name(tag), out]
    return Proc([*cmd, *topics.inputs], base_env(), ctx.work / f"{ctx.name(tag)}.log", ctx.test_cpus)


def floor_proc(ctx: Ctx, tag: str, topics: Topics, out: str, history: tuple[Path, int, float] | None) -> Proc:
    # the entry point's floor role: systems (d) and (e) (with ``history``), kafka.work_floor
    script = ROOT / "benchmarks" / "bench_worker.py"
    role = ["floor"] if history is None else ["floor-features", *(str(x) for x in history)]
    cmd = [sys.executable, str(script), *role, ctx.bootstrap, ctx.name(tag), out, str(ctx.registry)]
    return Proc([*cmd, *topics.inputs], base_env(), ctx.work / f"{ctx.name(tag)}.log", ctx.test_cpus)


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
