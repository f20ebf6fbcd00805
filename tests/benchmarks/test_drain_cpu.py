"""``workerbench.measure.drain_cpu`` and ``workerbench.report.half_of_c_budget``: the worker's
event-loop CPU over its drain, per stage and outside the stages, and what half of (c) leaves per
message (the figures behind session 41's reading of the ≥ 50 %-of-(c) target)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from workerbench.measure import drain_cpu
from workerbench.report import half_of_c_budget


def _sample(t: float, main_cpu: float) -> tuple[float, ...]:
    # (time, tree cpu, broker cpu, main thread cpu, ...): drain_cpu reads column 3
    return (t, 0.0, 0.0, main_cpu, 0.0, 0.0, 0.0, 0.0, 0)


def test_the_drain_is_the_difference_of_two_scrapes_and_other_is_what_no_stage_counted() -> None:
    first = (100.0, {"event_loop": 2.0, "score": 0.5, "output": 0.1})
    last = (104.0, {"event_loop": 6.0, "score": 3.0, "output": 0.3})
    samples = [_sample(99.0, 1.0), _sample(101.0, 3.0), _sample(105.0, 7.0)]
    out_ts = np.array([99_900, 100_000, 102_000, 104_000, 104_500], dtype=np.int64)
    got = drain_cpu(first, last, samples, out_ts)
    assert got["window_s"] == 4.0
    assert got["risk_events"] == 3  # those written inside [100 s, 104 s]
    assert got["main_thread_cpu_s"] == pytest.approx(4.0)  # 2.0 at 100 s, 6.0 at 104 s, interpolated
    assert got["cpu_s"] == {"event_loop": 4.0, "score": 2.5, "output": 0.2, "other": 1.3}


def test_the_budget_is_two_relay_message_times_and_outside_score_is_loop_minus_score() -> None:
    a = {"drain_cpu": {"us_per_message": {"event_loop": 50.0, "score": 30.0, "other": 15.0}}}
    got = half_of_c_budget(a, 125_000.0)
    assert got == {
        "budget_us": 16.0,
        "event_loop_us": 50.0,
        "score_us": 30.0,
        "outside_score_us": 20.0,
        "outside_score_over_budget": 1.25,
    }
    assert half_of_c_budget({}, 125_000.0) is None
    assert half_of_c_budget(a, None) is None
