"""Garbage-collector pauses of the scoring step with many decoded user states, by GC policy.

    .venv/bin/python benchmarks/bench_gc.py [--copies 20] [--transactions 3000] [--rounds 2]

A worker that restarts (or takes over partitions) decodes each user's state the first time the
user shows up, and keeps it. Each decoded state is about 18 containers the cyclic collector
tracks, so its collections get slower as states accumulate; bench_worker.py's 4,800 users do
not show it. Here the user states of handbook_2w's first ``--start-day`` days are copied under
``--copies`` distinct ids each (20: 97,880 users), and ``--transactions`` transactions of
the following days (with their clicks and labels) are sent once per copy, interleaved by event
time, through ``BatchProcessor.prepare`` in batches of 512 (featurized, no model calls: the
pauses are what is measured, and a model call costs the same under every policy), with a state
flush every second. Every user state is decoded from its snapshot on first touch, as after a
restart.

Policies, each run in a fresh process, alternated ``--rounds`` times in one invocation:

* ``python-defaults``: CPython's collector as it comes (thresholds 700 / 10 / 10).
* ``auto-full``: ``streams.gc_pauses.tune(auto_full=True)``: frozen at start, thresholds
  20,000 / 20 / 20 (the worker before session 18; ``gc_auto_full = true``).
* ``sweeps``: the same young thresholds, without automatic full collections (the worker's
  default in sessions 18-23; since session 24 it runs no automatic collection at all).
* ``sweeps-700``: CPython's young thresholds (700 / 10), without automatic full collections
  (``gc_thresholds = [700, 10]``).

Per run: every collection's pause (count, sum, max and the largest five), the CPU per message
and what a final full collection (a sweep: what the worker runs at a revocation) costs and frees.
Writes results/gc.json.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

POLICIES = ("python-defaults", "auto-full", "sweeps", "sweeps-700")
BATCH = 512


def prepare(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Snapshots and messages for every copy, pickled into ``path``."""
    import msgspec
    import orjson
    from bench_worker import DATA, load_messages
    from workerbench.messages import build_warm_state

    from modeling.records import ClickEvent, Transaction
    from streams.pipeline import KIND_CLICK, KIND_LABEL, KIND_TXN, InMessage

    m = load_messages(DATA, args.transactions, args.start_day)
    warm = build_warm_state(m.history)
    # Offsets continue after the history's, per input kind, as in one topic partition: the
    # states' applied offsets then take every window message as new.
    n_hist = {KIND_TXN: 0, KIND_CLICK: 0, KIND_LABEL: 0}
    for e in m.history:
        n_hist[_kind(e, Transaction, ClickEvent)] += 1
    snapshots = {f"{uid}~{k}": raw for k in range(args.copies) for uid, raw in warm.users.items()}
    rows: list[tuple[int, int, Any]] = []
    for k in range(args.copies):
        offsets = dict(n_hist)
        for e in m.events:
            kind = _kind(e, Transaction, ClickEvent)
            changes: dict[str, str] = {"user_id": f"{e.user_id}~{k}"}
            if not isinstance(e, ClickEvent):
                changes["transaction_id"] = f"{e.transaction_id}~{k}"
            rec = msgspec.structs.replace(e, **changes)
            t = getattr(e, "label_time_ms", None) or e.event_time_ms
            rows.append((t, k, (kind, offsets[kind], rec)))
            offsets[kind] += 1
    rows.sort(key=lambda r: (r[0], r[1]))
    now_ms, now = int(time.time() * 1000), time.monotonic()
    msgs = [
        InMessage(kind, kind, 0, off, rec.user_id.encode(), orjson.dumps(rec.to_dict()), now_ms, now)
        for _, _, (kind, off, rec) in rows
    ]
    path.write_bytes(pickle.dumps((snapshots, msgs), protocol=pickle.HIGHEST_PROTOCOL))
    return {
        "users": len(snapshots),
        "snapshot_bytes_mean": round(warm.user_bytes_mean, 1),
        "history_days": args.start_day,
        "messages": len(msgs),
        "messages_per_copy": m.counts,
    }


def _kind(e: Any, txn: type, click: type) -> str:
    from streams.pipeline import KIND_CLICK, KIND_LABEL, KIND_TXN

    return KIND_TXN if isinstance(e, txn) else KIND_CLICK if isinstance(e, click) else KIND_LABEL


def child(policy: str, path: Path) -> dict[str, Any]:
    import gc

    from modeling.features import FeatureEngine
    from modeling.settings import Settings, feature_config
    from streams import gc_pauses
    from streams.pipeline import BatchProcessor

    snapshots, msgs = pickle.loads(path.read_bytes())
    engine = FeatureEngine(feature_config(Settings()))
    proc = BatchProcessor(engine, lambda: None, snapshots.get, lambda _: None)  # type: ignore[arg-type,return-value]
    collector = gc_pauses.Collector()
    if policy != "python-defaults":
        young = (700, 10) if policy == "sweeps-700" else gc_pauses.YOUNG
        collector = gc_pauses.tune(young=young, auto_full=policy == "auto-full")
    else:
        gc.collect()
    pauses: list[tuple[str, float, int]] = []
    callback = collector.observe(lambda gen, seconds, freed: pauses.append((gen, seconds, freed)))
    t0, c0 = time.monotonic(), time.process_time()
    next_second = t0 + 1.0
    for i in range(0, len(msgs), BATCH):
        proc.prepare(msgs[i : i + BATCH])
        if time.monotonic() >= next_second:  # once a second, as the worker's timers run
            proc.take_dirty()  # the state flush: snapshots written, the decoded states cached
            next_second = time.monotonic() + 1.0
    cpu = time.process_time() - c0
    wall = time.monotonic() - t0
    during = list(pauses)
    s0 = time.perf_counter()
    swept = collector.sweep("end of run")
    sweep_s = time.perf_counter() - s0
    gc.callbacks.remove(callback)
    by_gen: dict[str, dict[str, float]] = {}
    for gen, s, got in during:
        g = by_gen.setdefault(gen, {"count": 0, "sum_s": 0.0, "max_ms": 0.0, "collected": 0})
        g["count"] += 1
        g["sum_s"] = round(g["sum_s"] + s, 4)
        g["max_ms"] = round(max(g["max_ms"], 1e3 * s), 2)
        g["collected"] += got
    return {
        "policy": policy,
        "users_decoded": len(proc.users._d),
        "cpu_us_per_message": round(1e6 * cpu / len(msgs), 2),
        "wall_s": round(wall, 2),
        "pause_sum_s": round(sum(s for _, s, _ in during), 3),
        "pause_max_ms": round(1e3 * max((s for _, s, _ in during), default=0.0), 1),
        "pauses_over_50ms": sum(1 for _, s, _ in during if s > 0.05),
        "largest_ms": sorted((round(1e3 * s, 1) for _, s, _ in during), reverse=True)[:5],
        "by_generation": by_gen,
        "final_full_collection": {"seconds": round(sweep_s, 3), "freed": swept},
        "tracked_after": len(gc.get_objects()) + gc.get_freeze_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=20, help="user-id copies of every user state")
    ap.add_argument("--transactions", type=int, default=3000, help="window transactions per copy")
    ap.add_argument("--start-day", type=float, default=13.0, help="days of history in each state")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gc.json")
    ap.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data)))
        return
    from bench_worker import machine_info

    with tempfile.TemporaryDirectory(prefix="riskstream-bench-gc-") as tmp:
        data = Path(tmp) / "data.pickle"
        t = time.monotonic()
        setup = prepare(args, data)
        took = time.monotonic() - t
        print(f"prepared {setup['users']:,} users, {setup['messages']:,} messages in {took:.0f} s")
        runs = []
        for r in range(args.rounds):
            order = POLICIES if r % 2 == 0 else POLICIES[::-1]
            for policy in order:
                cmd = [sys.executable, __file__, "--child", policy, "--data", str(data)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                res["round"] = r
                runs.append(res)
                print(
                    f"  {policy:16} pauses {res['pause_sum_s']:.2f} s, max {res['pause_max_ms']:.0f} ms,"
                    f" >50 ms: {res['pauses_over_50ms']}; {res['cpu_us_per_message']:.1f} us/msg;"
                    f" final full collection {res['final_full_collection']['seconds']:.2f} s",
                    flush=True,
                )
    out = {"command": " ".join(sys.argv), "machine": machine_info(), "setup": setup, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
