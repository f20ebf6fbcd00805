"""Feature-engine speed: live update+features per event and offline featurization.

    .venv/bin/python benchmarks/bench_features.py [--file ../shared/data/handbook_dev.parquet]

Writes benchmarks/results/features.json. Three measurements over the same events:
* in-memory: the engine on in-memory state (what the backtest and trainer run);
* live: state restored from its snapshot before and written back after every event, as the
  worker does on a cache miss (upper bound of the worker's per-event feature cost);
* offline: training.featurize over the whole file (event generation + engine + arrays);
* state sweep: reading the latest-event time from every user's snapshot (what the worker's
  dormant-state sweep does per stored state, streams/retention.py), next to restoring it;
* hot keys: one terminal taking 10 to 5,000 labelled payments a day, one user sending 100 to
  20,000 clicks a day or making 100 to 3,000 payments a day: featurizing cost per transaction and
  snapshot size, with the state bounds of FeatureConfig and without them (``--hot-keys-only``
  runs just this part, in about a minute); the busy clickstreams also with their click features
  from a scan of every click, as before ClickWindows, alone and in mixed streams of clicks and
  transactions (``click_streams``, µs per event, best of two).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from modeling.features import (
    FeatureConfig,
    FeatureEngine,
    FeatureRunner,
    TerminalState,
    UserState,
    snapshot_last_activity_ms,
)
from modeling.features import engine as engine_module
from modeling.features.engine import CLICK_INDEX_FROM
from modeling.records import ClickEvent, Label, Transaction
from streams.terminal_overlay import TerminalOverlay
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


T0 = 1_527_811_200_000  # 2018-06-01
DAY = 86_400_000


def hot_keys(config: FeatureConfig) -> list[dict[str, object]]:
    """Featurizing cost and snapshot size of one busy key, by daily volume (synthetic events,
    36-character ids as a bank's UUIDs would be)."""
    engine = FeatureEngine(config)
    out: list[dict[str, object]] = []

    def timed(st: UserState, terminal: Callable[[], TerminalState | None], at: int, reps: int = 100) -> float:
        """µs per transaction after a first one (which builds what the state derives lazily)."""
        engine.transaction(st, Transaction("probe-first", "u-hot", "T-hot", 12.5, at - 1), terminal())
        t0 = time.perf_counter()
        for i in range(reps):
            engine.transaction(st, Transaction(f"probe-{i:030d}", "u-hot", "T-hot", 12.5, at + i), terminal())
        return 1e6 * (time.perf_counter() - t0) / reps

    for per_day in (10, 100, 1_000, 5_000):
        ts = TerminalState()
        n = 0
        for d in range(40):
            for k in range(per_day):
                t = T0 + d * DAY + k * (DAY // per_day)
                engine.terminal_label(
                    ts, Label(f"{n:036d}", f"u{n % 997}", "T-hot", n % 100 == 0, t, t + 7 * DAY)
                )
                n += 1
        at = T0 + 47 * DAY
        us = timed(engine.new_user(), partial(_same_state, ts), at)
        row = _hot("terminal labels", per_day, len(ts.labels), len(ts.to_bytes()), us)
        # the worker decodes a terminal's state again whenever the terminal loop rewrote it
        raw = ts.to_bytes()
        first = Transaction("probe-decoded", "u-hot", "T-hot", 1.0, at)
        t0 = time.perf_counter()
        engine.transaction(engine.new_user(), first, TerminalState.from_bytes(raw))
        row["decode_and_first_txn_us"] = round(1e6 * (time.perf_counter() - t0), 1)
        # with a label of this worker's on top (streams/terminal_overlay.py)
        overlay = TerminalOverlay(engine, lambda: None)
        overlay.add(Label(f"{n:036d}", "u1", "T-hot", False, at - 8 * DAY, at - DAY))
        merged = partial(overlay.merged, "T-hot", ts)
        row["overlay_us_per_txn"] = round(timed(engine.new_user(), merged, at), 1)
        decode_us, overlay_us = row["decode_and_first_txn_us"], row["overlay_us_per_txn"]
        print(f"    decode + first: {decode_us} µs, overlay: {overlay_us} µs/txn", flush=True)
        out.append(row)
    for per_day in (100, 1_000, 20_000):
        st = engine.new_user()
        for d in range(2):
            for k in range(per_day):
                t = T0 + d * DAY + k * (DAY // per_day)
                device = f"{k % 5:036d}"
                engine.click(st, ClickEvent("u-hot", t, "page_view", f"s{k // 50}", device, "10.0.0.1"))
        raw = st.to_bytes()
        us = timed(st, partial(_same_state, None), T0 + 2 * DAY)
        row = _hot("user clicks", per_day, len(st.clicks), len(raw), us)
        # the same user with its click features from a scan of every click (before session 20)
        engine_module.CLICK_INDEX_FROM = 1 << 62
        try:
            row["scan_us_per_txn"] = round(
                timed(UserState.from_bytes(raw, config), partial(_same_state, None), T0 + 2 * DAY), 1
            )
        finally:
            engine_module.CLICK_INDEX_FROM = CLICK_INDEX_FROM
        print(f"    clicks scanned: {row['scan_us_per_txn']} µs/txn", flush=True)
        out.append(row)
    for per_day in (100, 1_000, 3_000):
        st = engine.new_user()
        for d in range(31):
            for k in range(per_day):
                t = T0 + d * DAY + k * (DAY // per_day)
                engine.transaction(st, Transaction(f"{k:036d}", "u-hot", f"{k % 50:036d}", 12.5, t), None)
        us = timed(st, partial(_same_state, None), T0 + 31 * DAY)
        out.append(_hot("user transactions", per_day, len(st.hist), len(st.to_bytes()), us))
    return out


def click_streams(config: FeatureConfig) -> list[dict[str, object]]:
    """µs per event of one user's mixed stream (three days of clicks in time order, a transaction
    every few clicks), click features from ClickWindows against a scan of every click."""
    engine = FeatureEngine(config)
    kinds = ["page_view"] * 5 + ["login", "login_failed"]
    out: list[dict[str, object]] = []
    for per_day, every in ((20_000, 50), (20_000, 5), (200, 5), (50, 5)):
        events: list[ClickEvent | Transaction] = []
        for k in range(3 * per_day):
            t = T0 + k * (DAY // per_day)
            events.append(ClickEvent("u", t, kinds[k % 7], "s", f"{k % 5:036d}", f"10.0.{k % 4}.1"))
            if k % every == every - 1:
                events.append(Transaction(f"{k:036d}", "u", "T", 10.0, t + 1))
        row: dict[str, object] = {"clicks_per_day": per_day, "transaction_every_clicks": every}
        for label, index_from in (("index", CLICK_INDEX_FROM), ("scan", 1 << 62)):
            engine_module.CLICK_INDEX_FROM = index_from
            try:
                best = float("inf")
                for _ in range(2):
                    st = engine.new_user()
                    t0 = time.perf_counter()
                    for ev in events:
                        if isinstance(ev, ClickEvent):
                            engine.click(st, ev)
                        else:
                            engine.transaction(st, ev, None)
                    best = min(best, time.perf_counter() - t0)
            finally:
                engine_module.CLICK_INDEX_FROM = CLICK_INDEX_FROM
            row[f"{label}_us_per_event"] = round(1e6 * best / len(events), 2)
        print(f"  click stream {row}", flush=True)
        out.append(row)
    return out


def _same_state(ts: TerminalState | None) -> TerminalState | None:
    return ts


def _hot(kind: str, per_day: int, held: int, size: int, us: float) -> dict[str, object]:
    row = {"key": kind, "per_day": per_day, "entries_held": held, "snapshot_kb": round(size / 1024, 1)}
    row["featurize_us_per_txn"] = round(us, 1)
    line = f"  {kind:18} {per_day:>6}/day: {held:>7} held, {size / 1024:8.1f} KB, {us:9.1f} µs/txn"
    print(line, flush=True)
    return row


def hot_keys_compared() -> dict[str, list[dict[str, object]]]:
    """:func:`hot_keys` with FeatureConfig's bounds and without them (set past any volume here)."""
    unbounded = FeatureConfig(max_user_transactions=10**9, max_user_clicks=10**9, max_terminal_labels=10**9)
    print("hot keys, bounded (FeatureConfig defaults)", flush=True)
    bounded = hot_keys(FeatureConfig())
    print("hot keys, unbounded", flush=True)
    return {"bounded": bounded, "unbounded": hot_keys(unbounded)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default=str(ROOT.parent / "shared/data/handbook_dev.parquet"))
    ap.add_argument("--live-events", type=int, default=300_000, help="events for the per-event timings")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/features.json"))
    ap.add_argument("--hot-keys-only", action="store_true", help="only the hot-key measurement")
    args = ap.parse_args()
    config = FeatureConfig()
    if args.hot_keys_only:
        out = Path(args.out)
        res = json.loads(out.read_text()) if out.exists() else {}
        res["hot_keys"] = hot_keys_compared()
        res["click_streams"] = click_streams(config)
        res["hot_keys_machine"] = {"python": platform.python_version(), "load_average": os.getloadavg()}
        out.write_text(json.dumps(res, indent=2) + "\n")
        return
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
        "hot_keys": hot_keys_compared(),
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
