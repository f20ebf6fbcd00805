"""``workerbench.tables``: a recovery read from a worker's log, in the format Faust 0.15 writes
(lines and tables as a worker logged them, offsets changed); ``bench_standby``'s run order."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_standby import order
from workerbench.tables import log_times, recovery_after

_LINES = """\
[2026-12-04 17:00:25,301] [6212] [INFO] [^---Recovery]: active offsets at start of reading:
+Reading Starts At - Active------------+-----------+--------+
| topic                                | partition | offset |
+--------------------------------------+-----------+--------+
| rs-118a4be2-user-state-changelog     | 0         | -1     |
| \u3003                                   | 1         | -1     |
+--------------------------------------+-----------+--------+
[2026-12-04 17:00:25,470] [6212] [INFO] [^---Recovery]: Worker ready
[2026-12-04 17:00:28,314] [6212] [INFO] generation id 2 app consumers id 2
[2026-12-04 17:00:28,492] [6212] [INFO] [^---Recovery]: Highwater for active changelog partitions:
+Highwater - Active--------------------+-----------+-----------+
| topic                                | partition | highwater |
+--------------------------------------+-----------+-----------+
| rs-118a4be2-terminal-state-changelog | 0         | 812       |
| rs-118a4be2-user-state-changelog     | 0         | 3540      |
| \u3003                                   | 1         | 3340      |
| \u3003                                   | 3         | -1        |
+--------------------------------------+-----------+-----------+
[2026-12-04 17:00:28,495] [6212] [INFO] [^---Recovery]: active offsets at start of reading:
+Reading Starts At - Active------------+-----------+--------+
| topic                                | partition | offset |
+--------------------------------------+-----------+--------+
| rs-118a4be2-terminal-state-changelog | 0         | 700    |
| rs-118a4be2-user-state-changelog     | 0         | 1226   |
| \u3003                                   | 1         | -1     |
| \u3003                                   | 3         | -1     |
+--------------------------------------+-----------+--------+
[2026-12-04 17:00:28,498] [6212] [INFO] [^---Recovery]: Recovery complete
[2026-12-04 17:00:28,554] [6212] [INFO] [^---Recovery]: Worker ready
"""
# Faust ends its log lines and the tables' last rows with a space
LOG = "".join(line + (" \n" if line.startswith(("[", "+-")) else "\n") for line in _LINES.splitlines())
CHANGELOG = "rs-118a4be2-user-state-changelog"


def _at(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))


def test_the_first_recovery_after_the_stop() -> None:
    got = recovery_after(LOG, _at("2026-12-04 17:00:27"), CHANGELOG)
    assert got["ready_after_s"] == 1.55
    # the ditto mark repeats the topic above; the terminal changelog's rows are not counted
    assert got["partitions"] == {
        0: {"start": 1226, "highwater": 3540},
        1: {"start": -1, "highwater": 3340},
        3: {"start": -1, "highwater": -1},
    }
    assert got["records_read"] == (3540 - 1226) + (3340 + 1) + 0


def test_a_recovery_before_the_stop_does_not_count() -> None:
    got = recovery_after(LOG, _at("2026-12-04 17:00:29"), CHANGELOG)
    assert got == {"ready_after_s": None, "partitions": {}, "records_read": 0}
    # the first recovery only: its tables end at its "Worker ready"
    first = recovery_after(LOG, _at("2026-12-04 17:00:25"), CHANGELOG)
    assert first["ready_after_s"] == 0.47 and first["partitions"] == {}


def test_each_setting_runs_first_as_often() -> None:
    assert order(3) == ["standby0", "standby1", "standby1--2", "standby0--2", "standby0--3", "standby1--3"]


def test_log_times_finds_the_first_line_after_since() -> None:
    got = log_times(LOG, _at("2026-12-04 17:00:26"), ("Worker ready", "Recovery complete", "Restoring state"))
    assert got["Worker ready"] == _at("2026-12-04 17:00:28") + 0.554  # not 17:00:25's
    assert got["Recovery complete"] == _at("2026-12-04 17:00:28") + 0.498
    assert got["Restoring state"] is None
