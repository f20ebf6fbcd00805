"""Feature-engine speed: live update+features per event and offline featurization.

    .venv/bin/python benchmarks/bench_features.py [--file ../shared/data/handbook_dev.parquet]

Writes benchmarks/results/features.json. Three measurements over the same events:
* in-memory: the engine on in-memory state (what the backtest and trainer run);
* live: state restored from its snapshot before and written back after every event, as the
  worker does on a cache miss (upper bound of the worker's per-event feature cost);
* offline: training.featurize over the whole file (event generation + engine + arrays);
* state sweep: reading the latest-event time from every user's snapshot (what the worker's
  dormant-state sweep does per stored state, streams/retention.py), next to restoring it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from modeling.features import (
    FeatureConfig,
    FeatureEngine,
    FeatureRunner,
    TerminalState,
    UserState,
    snapshot_last_activity_ms,
)
from modeling.records import ClickEvent, Transaction
from training.featurize import featurize_frame
from training.history import event_stream, load_history

ROOT = Path(__file__).resolve().parents[1]


def live_with_snapshots(events: Sequence[object], config: FeatureConfig) -> tuple[float, int]:
    engine = FeatureEngine(config)
    users: dict[str, bytes] = {}
    terminals: dict[str, TerminalState] = {}
    n = 0
    t0 = time.perf_counter()
    for ev in events:
        raw = users.get(ev.user_id)  # type: ignore[attr-defined]
        st = UserState.from_bytes(raw, config) if raw is not None else engine.new_user()
        if isinstance(ev, Transaction):
            engine.transaction(st, ev, terminals.get(ev.terminal_id))
            n += 1
        elif isinstance(ev, ClickEvent):
            engine.click(st, ev)
        else:
            engine.user_label(st, ev)  # type: ignore[arg-type]
            ts = terminals.setdefault(ev.terminal_id, TerminalState())  # type: ignore[attr-defined]
            engine.terminal_label(ts, ev)  # type: ignore[arg-type]
        users[ev.user_id] = st.to_bytes()  # type: ignore[attr-defined]
    return time.perf_counter() - t0, n


def sweep_reads(states: list[UserState], config: FeatureConfig, repeat: int = 5) -> dict[str, float]:
    """µs per state: the sweep's read of the latest-event time vs a full restore, same snapshots."""
    snaps = [st.to_bytes() for st in states]
    best = {"peek": float("inf"), "restore": float("inf")}
    for _ in range(repeat):
        t0 = time.perf_counter()
        for raw in snaps:
            snapshot_last_activity_ms(raw)
        best["peek"] = min(best["peek"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        for raw in snaps:
            UserState.from_bytes(raw, config)
        best["restore"] = min(best["restore"], time.perf_counter() - t0)
    n = len(snaps)
    return {
        "states": n,
        "snapshot_bytes_mean": sum(map(len, snaps)) / n,
        "peek_us_per_state": 1e6 * best["peek"] / n,
        "restore_us_per_state": 1e6 * best["restore"] / n,
        "restore_over_peek": best["restore"] / best["peek"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default=str(ROOT.parent / "shared/data/handbook_dev.parquet"))
    ap.add_argument("--live-events", type=int, default=300_000, help="events for the per-event timings")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/features.json"))
    args = ap.parse_args()
    config = FeatureConfig()
    df = load_history(args.file)
    t0 = time.perf_counter()
    stream = event_stream(df, config)
    t_gen = time.perf_counter() - t0
    events = []
    for ev in stream.events():
        events.append(ev)
        if len(events) >= args.live_events:
            break
    runner = FeatureRunner(FeatureEngine(config))
    t0 = time.perf_counter()
    n_tx = sum(1 for _ in runner.run(events))
    t_mem = time.perf_counter() - t0
    sweep = sweep_reads(list(runner.users.values()), config)
    t_live, _ = live_with_snapshots(events, config)
    t0 = time.perf_counter()
    m = featurize_frame(df, config)
    t_off = time.perf_counter() - t0
    res = {
        "file": Path(args.file).name,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "load_average": os.getloadavg(),
        },
        "events_timed": len(events),
        "transactions_timed": n_tx,
        "in_memory": {
            "events_per_s": len(events) / t_mem,
            "us_per_event": 1e6 * t_mem / len(events),
        },
        "live_with_snapshots": {
            "events_per_s": len(events) / t_live,
            "us_per_event": 1e6 * t_live / len(events),
        },
        "state_sweep": sweep,
        "offline_featurize": {
            "transactions": len(m),
            "events": len(stream),
            "seconds": t_off,
            "events_per_s": len(stream) / t_off,
            "transactions_per_s": len(m) / t_off,
            "event_generation_seconds": t_gen,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
