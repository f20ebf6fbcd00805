"""A real single-node Apache Kafka broker (KRaft, combined broker + controller) for tests,
benchmarks and the demo. Its cache directory (``settings.kafka_home``) holds ``pom.xml`` and
``lib/`` (the jars Maven fetches once; ``lib_dir`` may be shared), ``config/``, ``data/``,
``logs/`` (server.log, kafka.out) and ``kafka.pid``. The broker runs detached, so it outlives the
command that started it; ``stop()`` finds it through the PID file and signals it only if its
command line names this home's server.properties.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modeling.errors import RiskstreamError

if TYPE_CHECKING:
    from modeling.settings import Settings

POM = Path(__file__).with_name("pom.xml")
LOG4J = Path(__file__).with_name("log4j.properties")
MARKER = ".riskstream-fetched"
_JAR = re.compile(r"^kafka_2\.13-(?P<version>\d[\w.\-]*)\.jar$")
JVM_OPTS = ["-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]
T = TypeVar("T")


class BrokerError(RiskstreamError):
    """The local broker cannot be fetched, started or stopped."""


@dataclasses.dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    port: int
    controller_port: int
    version: str | None
    home: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def pom_version() -> str:
    """The Kafka version the bundled pom.xml asks Maven for."""
    m = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", POM.read_text())
    if m is None:
        raise BrokerError("no <kafka.version> in the bundled pom.xml", path=str(POM))
    return m.group(1)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port_pair(host: str = "127.0.0.1") -> tuple[int, int]:
    """Two distinct ports free on ``host`` now (a broker's listener and its controller)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind((host, 0))
        b.bind((host, 0))
        return int(a.getsockname()[1]), int(b.getsockname()[1])


def _tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"`{name}` not found on PATH: {why}")
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` that also works when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _has_live_broker(bootstrap: str) -> bool:
    """True once the broker answers a metadata request listing itself (i.e. it is unfenced)."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except KafkaError:
        return False
    finally:
        await client.close()


class LocalKafka:
    """Fetches, configures, starts, probes and stops one local KRaft broker."""

    def __init__(
        self,
        home: Path | str,
        *,
        port: int = 9092,
        controller_port: int = 9093,
        lib_dir: Path | str | None = None,
        partitions: int = 4,
        heap: str = "512m",
        listeners: dict[str, int] | None = None,
        properties: dict[str, str] | None = None,
        format_args: list[str] | None = None,
        jvm_args: list[str] | None = None,
    ) -> None:
        """``listeners``: more client listeners, security protocol -> port (``{"SASL_SSL": 9094}``),
        configured through ``properties`` (merged over the defaults); ``format_args`` go to
        ``kafka-storage format`` (``--add-scram …``); ``jvm_args`` to the broker's JVM
        (``-Djava.security.krb5.conf=…`` for a Kerberos listener). The plaintext listener stays."""
        self.home = Path(home).expanduser().absolute()
        self.lib_dir = Path(lib_dir).expanduser().absolute() if lib_dir else self.home / "lib"
        self.host = "127.0.0.1"
        self.port = port
        self.controller_port = controller_port
        self.partitions = partitions
        self.heap = heap
        self.listeners = dict(listeners or {})
        self.properties = dict(properties or {})
        self.format_args = list(format_args or [])
        self.jvm_args = list(jvm_args or [])
        self.config_file = self.home / "config" / "server.properties"
        self.data_dir = self.home / "data"
        self.log_dir = self.home / "logs"
        self.pid_file = self.home / "kafka.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LocalKafka:
        kw: dict[str, Any] = {
            "port": settings.kafka_port,
            "controller_port": settings.kafka_controller_port,
            "partitions": settings.topic_partitions,
        }
        kw.update(overrides)
        return cls(settings.kafka_home, **kw)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    # --- jars --------------------------------------------------------------------------------
    def _marker_text(self) -> str:
        return f"kafka {pom_version()} pom-sha256 {hashlib.sha256(POM.read_bytes()).hexdigest()}\n"

    def fetched(self) -> bool:
        marker = self.lib_dir / MARKER
        return marker.is_file() and marker.read_text() == self._marker_text()

    def fetch(self) -> str:
        """Make sure the jars of the pom's Kafka version are in ``lib_dir``; returns the version.
        Idempotent and safe against concurrent callers (file lock, atomic rename)."""
        if not self.fetched():
            cache = self.lib_dir.parent
            with _file_lock(cache / ".fetch.lock"):
                if not self.fetched():
                    mvn = _tool("mvn", "Maven is needed once to download the Kafka jars (apt install maven)")
                    shutil.copyfile(POM, cache / "pom.xml")
                    partial = cache / f"{self.lib_dir.name}.partial"
                    shutil.rmtree(partial, ignore_errors=True)
                    goal = "-q -B -Dstyle.color=never dependency:copy-dependencies -DincludeScope=runtime"
                    cmd = [mvn, *goal.split(), "-f", str(cache / "pom.xml"), f"-DoutputDirectory={partial}"]
                    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if res.returncode != 0:
                        tail = (res.stdout + res.stderr)[-3000:]
                        raise BrokerError(f"Maven could not fetch the Kafka jars:\n{tail}", cmd=" ".join(cmd))
                    (partial / MARKER).write_text(self._marker_text())
                    shutil.rmtree(self.lib_dir, ignore_errors=True)
                    partial.rename(self.lib_dir)
        return self.version()

    def version(self) -> str:
        """The broker's version, read from the name of the fetched kafka_2.13 jar."""
        for jar in sorted(self.lib_dir.glob("kafka_2.13-*.jar")):
            m = _JAR.match(jar.name)
            if m:
                return m.group("version")
        raise BrokerError(
            "the Kafka jars are not fetched: run `riskstream kafka fetch`", lib=str(self.lib_dir)
        )

    # --- configuration -----------------------------------------------------------------------
    def server_properties(self) -> dict[str, str]:
        client = [f"PLAINTEXT://{self.host}:{self.port}"]
        client += [f"{name}://{self.host}:{port}" for name, port in self.listeners.items()]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"] + [f"{n}:{n}" for n in self.listeners]
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": ",".join([*client, f"CONTROLLER://{self.host}:{self.controller_port}"]),
            "advertised.listeners": ",".join(client),
            "listener.security.protocol.map": ",".join(protocols),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.partitions),
            "default.replication.factor": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            # one node: 8 partitions instead of 50 keep the first group join quick on small machines
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "group.initial.rebalance.delay.ms": "0",
            **self.properties,
        }

    def write_config(self) -> Path:
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={v}" for k, v in self.server_properties().items()]
        self.config_file.write_text(
            "# written by riskstream (streams/broker/local.py)\n" + "\n".join(lines) + "\n"
        )
        shutil.copyfile(LOG4J, self.config_file.with_name("log4j.properties"))
        return self.config_file

    def _format_storage(self, java: str) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = "-"
        while cluster_id.startswith("-"):  # Kafka's own Uuid.randomUuid avoids these too
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        tool = [java, "-cp", f"{self.lib_dir}/*", "kafka.tools.StorageTool", "format", "--ignore-formatted"]
        cmd = [*tool, "-t", cluster_id, "-c", str(self.config_file), *self.format_args]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise BrokerError(f"formatting the broker storage failed:\n{res.stdout}{res.stderr}")

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> BrokerStatus:
        """Start the broker (a no-op when it already runs) and wait until it serves metadata."""
        if self._running_pid() is not None:
            self._wait_ready(timeout)
            return self.status()
        java = _tool("java", "Java 17+ runs the local Kafka broker (apt install openjdk-17-jre-headless)")
        self.fetch()
        for p in (self.port, self.controller_port, *self.listeners.values()):
            if port_open(self.host, p):
                raise BrokerError(
                    f"port {p} is already in use (another broker?); choose other ports "
                    "(RISKSTREAM_KAFKA_PORT / RISKSTREAM_KAFKA_CONTROLLER_PORT)",
                    home=str(self.home),
                )
        self.write_config()
        link = self.home / "lib"
        if link != self.lib_dir and not link.exists() and not link.is_symlink():
            link.symlink_to(self.lib_dir)  # so `riskstream kafka status` on this home finds the version
        self._format_storage(java)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log4j = self.config_file.with_name("log4j.properties")
        jvm = [
            f"-Xmx{self.heap}",
            *JVM_OPTS,
            f"-Dkafka.logs.dir={self.log_dir}",
            f"-Dlog4j.configuration=file:{log4j}",
            *self.jvm_args,
        ]
        cmd = [java, *jvm, "-cp", f"{self.lib_dir}/*", "kafka.Kafka", str(self.config_file)]
        with (self.log_dir / "kafka.out").open("ab") as out:  # detached: its own session, no tty
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=self.home, start_new_session=True
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.status()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pid = self._pid_from_file()
            if pid is None or not self._alive(pid):
                raise BrokerError(f"the broker exited during startup; end of its logs:\n{self.log_tail()}")
            if port_open(self.host, self.port) and _run_sync(_has_live_broker(self.bootstrap)):
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the broker was not ready after {timeout:.0f} s; end of its logs:\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``); False if none was running."""
        pid = self._running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not self._alive(pid):
                break
        else:
            raise BrokerError("the broker survived SIGKILL", pid=pid)
        self.pid_file.unlink(missing_ok=True)
        self._proc = None
        return True

    def status(self) -> BrokerStatus:
        try:
            version: str | None = self.version()
        except BrokerError:
            version = None
        pid = self._running_pid()
        return BrokerStatus(pid is not None, pid, self.port, self.controller_port, version, self.home)

    def log_tail(self, lines: int = 40) -> str:
        out: list[str] = []
        for name in ("server.log", "kafka.out"):
            path = self.log_dir / name
            if path.exists():
                out += [f"--- {path}", *path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out) or f"(no logs in {self.log_dir})"

    # --- process bookkeeping -----------------------------------------------------------------
    def _pid_from_file(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _running_pid(self) -> int | None:
        pid = self._pid_from_file()
        return pid if pid is not None and self._alive(pid) and self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return not Path("/proc/self").exists()  # no procfs (macOS): trust the PID file
        except OSError:
            return False
        return b"kafka.Kafka" in cmdline and str(self.config_file).encode() in cmdline

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        if Path("/proc/self").exists():
            try:  # a zombie (reaped by nobody in a container) counts as gone
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
            except (OSError, IndexError):
                return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
