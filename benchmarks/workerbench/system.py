"""The machine and its processes: free ports, load average, and CPU time, page faults, memory and
run-queue wait read from /proc."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import platform
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def result_header(script: str, argv: Sequence[str]) -> dict[str, Any]:
    """The head of a benchmark's results file: its command, start time and machine."""
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
    }


def add_run_options(
    ap: argparse.ArgumentParser, *, data: Path, out: Path, timeout: float, timeout_help: str
) -> None:
    """The options every worker benchmark takes alike: the event file, a registry to reuse, its
    timeout, the broker's data folder and the results file."""
    ap.add_argument("--file", type=Path, default=data)
    ap.add_argument("--registry", type=Path, help="reuse a registry with a published behaviour model")
    ap.add_argument("--timeout", type=float, default=timeout, help=timeout_help)
    ap.add_argument("--broker-dir", type=Path, help="the broker's data in this folder (/dev/shm)")
    ap.add_argument("--out", type=Path, default=out)


def start_result(script: str, argv: Sequence[str]) -> dict[str, Any]:
    """A benchmark's results document, no runs yet (:func:`result_header`), with aiokafka's own
    logging quietened to errors."""
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    return {**result_header(script, argv), "runs": []}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def unwind_on_sigterm() -> None:
    """SIGTERM unwinds the benchmark as Ctrl-C does: its ``finally`` stops the broker and writes
    what it measured. Call it after Paddle's import, which installs its own handler."""
    signal.signal(signal.SIGTERM, _interrupt)


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


class HarnessGC:
    """This harness process's own garbage collector during a paced feed.

    The harness holds every message of the window, the records it read back and the feeder's
    futures: hundreds of thousands of objects. A collection of the older generations stops its
    event loop, and with it the feeder, with records already stamped (CreateTime) waiting in the
    producer's batches: that wait is then counted as the system's latency. With ``quiet``, what
    exists when the feed starts is frozen out of collection and automatic collection is off until
    it ends (reference counting still frees what the feed drops). The pauses are recorded
    either way."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.pauses: list[float] = []
        self._t0 = 0.0

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._t0)

    def __enter__(self) -> HarnessGC:
        gc.callbacks.append(self._observe)
        if self.quiet:
            gc.collect()
            gc.freeze()
            gc.disable()
        self.pauses.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._observe)
        if self.quiet:
            gc.enable()
            gc.unfreeze()

    def stats(self) -> dict[str, Any]:
        p = sorted(self.pauses)
        return {
            "quiet": self.quiet,
            "collections": len(p),
            "pause_ms_total": round(sum(p) * 1000, 1),
            "pause_ms_max": round(p[-1] * 1000, 1) if p else 0.0,
        }


def filesystem_of(path: Path) -> str | None:
    """The type of the filesystem ``path`` lies on (the longest mount point above it)."""
    best, kind, where = "", None, path.resolve()
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and where.is_relative_to(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind
