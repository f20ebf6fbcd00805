"""What a worker's state tables did: Faust's recovery as its log tells it, and the states and
changelog partitions its metrics report."""

from __future__ import annotations

import re
import time
from typing import Any

from workerbench.procs import Proc

# ------------------------------------------------------------------------------- Faust's log

_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\] \[\d+\] \[\w+\] (.*)$")
_ROW = re.compile(r"^\| (\S+)\s+\| (\d+)\s+\| (-?\d+)\s+\|")


def _line_time(m: re.Match[str]) -> float:
    """A log line's time (``_LINE``'s groups 1 and 2; local time), in seconds since the epoch."""
    return time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000.0


def recovery_after(log: str, since: float, changelog: str) -> dict[str, Any]:
    """The first recovery a worker's log shows after ``since`` (seconds since the epoch): when
    it logged "Worker ready", and for each partition of ``changelog`` Faust read as active where
    it started reading (``start``, -1: from the beginning) and the partition's last offset
    (``highwater``), from Faust's "Reading Starts At - Active" and "Highwater - Active" tables.
    Log times are local."""
    ready: float | None = None
    starts: dict[int, int] = {}
    highs: dict[int, int] = {}
    table: dict[int, int] | None = None
    topic = ""
    t: float | None = None
    for line in log.splitlines():
        m = _LINE.match(line)
        if m:
            t = _line_time(m)
            table = None
            if t >= since and m[3].rstrip().endswith("Worker ready"):
                ready = t
                break
            continue
        if t is None or t < since:
            continue
        if line.startswith("+Highwater - Active"):
            table = highs
        elif line.startswith("+Reading Starts At - Active"):
            table = starts
        elif table is not None and (r := _ROW.match(line)):
            topic = topic if r[1] == "\u3003" else r[1]  # 〃: the row above's topic
            if topic == changelog:
                table[int(r[2])] = int(r[3])
    parts = {p: {"start": starts.get(p), "highwater": h} for p, h in sorted(highs.items())}
    return {
        "ready_after_s": None if ready is None else round(ready - since, 2),
        "partitions": parts,
        "records_read": sum(h - s for p, h in highs.items() if (s := starts.get(p)) is not None),
    }


# ----------------------------------------------------------------------------------- metrics


# what each table's records read back by path are counted in (streams/metrics.py)
RECORDS_BY_PATH = {
    "user": "riskstream_user_state_records_read",
    "terminal": "riskstream_terminal_replica_records",
}


def scrape_tables(proc: Proc, table: str = "user") -> dict[str, Any]:
    """From the worker's metrics, for ``table`` (user or terminal): the states it holds
    (``<table>_states``), its changelog partitions by role and the changelog records it read
    back by path (``records_by_path``)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"records_by_path": {}}
    for fam in text_string_to_metric_families(proc.metrics()):
        for s in fam.samples:
            if fam.name == "riskstream_states" and s.labels.get("kind") == table:
                out[f"{table}_states"] = int(s.value)
            elif fam.name == "riskstream_table_partitions" and s.labels.get("table") == table:
                out[f"{table}_partitions_{s.labels['role']}"] = int(s.value)
            elif fam.name == RECORDS_BY_PATH[table] and s.name.endswith("_total"):
                out["records_by_path"][s.labels["path"]] = int(s.value)
    return out


def log_times(log: str, since: float, endings: tuple[str, ...]) -> dict[str, float | None]:
    """For each of ``endings``, the time (seconds since the epoch) of the first log line at or
    after ``since`` whose message ends with it; None where none does."""
    found: dict[str, float | None] = dict.fromkeys(endings)
    for line in log.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        t = _line_time(m)
        if t < since:
            continue
        msg = m[3].rstrip()
        for e in endings:
            if found[e] is None and msg.endswith(e):
                found[e] = t
    return found
