"""Two workers in one consumer group, with and without standby copies of the user-state table.

    python benchmarks/bench_standby.py [--transactions 30000] [--rounds 2] [--registry DIR]
                                       [--broker-dir /dev/shm] [--out benchmarks/results/standby.json]

About 3.5 minutes a round (two drains and failovers) on 2 shared cores with
``--transactions 30000`` and ``--registry`` (measured).

Faust keeps ``table_standby_replicas`` (its default: 1) standby copies of every table partition
on other workers, meant to make a failover quick. With the memory store, the only store the
worker uses, riskstream sets it to 0 (``modeling/settings.py``): Faust drops a standby
partition's keys at the end of every recovery, and a partition that becomes active is replayed
from its changelog's start whatever the standby copy held (DEVELOPERS.md, "No standby copies
of the user-state table").
This measures both settings side by side on one broker and one backlog, alternating them
``--rounds`` times (``standby0``, ``standby1``, ``standby1--2``, ``standby0--2``, …):

* **the drain**: two workers (``python -m streams.cli worker``, default settings but this one) in
  one group drain the backlog of ``bench_worker.py`` (the same message window, its window state
  seeded into the changelogs). Recorded:
  - input messages per second between the first and the last risk event, the CPU seconds of
    each worker over that span and messages per CPU-second of the two together;
  - each worker's CPU seconds from its start to the drain's end (``worker_cpu_total_s``: its
    start-up, recoveries and standby reads included) and its peak resident memory;
  - transactions per model call (read back from the risk events, as ``bench_worker.py`` does);
  - at the end: the records of the user-state changelog, and from each worker's metrics the
    user states its store holds (``riskstream_states``) and its user-state changelog
    partitions by role (``riskstream_table_partitions``);
* **the failover**: the second worker is then stopped (SIGTERM: it leaves the group) and the
  first takes its partitions over. Recorded from the first worker's log (Faust's own lines):
  seconds from the stop to its next "Worker ready", and for each user-state changelog partition
  of that recovery where Faust started reading it (-1: from the start) and its highwater, so the
  records it read back.

Results go to ``--out`` (JSON: every run and, per setting, the mean of each figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # workerbench/

from workerbench.config import DATA, DEFAULT_WORKER, sweep_entry
from workerbench.kafka import Topics, create_topics, end_count, finish, read_all, settings_for, start_broker
from workerbench.measure import _interp, batch_stats, start_profile
from workerbench.messages import build_warm_state, load_messages, train_registry
from workerbench.procs import Ctx, Proc, riskstream_env, seed_worker
from workerbench.system import (
    add_run_options,
    loadavg,
    peak_rss_mb,
    start_result,
    tree_cpu_seconds,
    unwind_on_sigterm,
)
from workerbench.tables import recovery_after, scrape_tables

SETTINGS: dict[str, dict[str, Any]] = {
    "standby0": {"table_standby_replicas": 0},  # riskstream's default
    "standby1": {"table_standby_replicas": 1},  # Faust's default
}

# ---------------------------------------------------------------------------------------- runs


async def run_pair(ctx: Ctx, label: str, timeout: float) -> dict[str, Any]:
    """Two workers drain the backlog with ``label``'s setting; then the second stops."""
    from aiokafka import AIOKafkaConsumer

    overrides = SETTINGS[sweep_entry(label)]
    worker = {**DEFAULT_WORKER, **overrides}
    app_id = ctx.name(label)
    out = ctx.name(f"{label}-risk")
    await create_topics(ctx.bootstrap, [out, f"{out}-dlq"])
    await seed_worker(ctx, app_id)
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"]
    procs = []
    for i in (1, 2):
        env = riskstream_env(ctx, app_id, ctx.backlog, out, worker)
        env["RISKSTREAM_WORKER_DATA_DIR"] = str(ctx.work / f"{app_id}-w{i}")
        procs.append(Proc(cmd, env, ctx.work / f"{app_id}-w{i}.log"))
    watcher = AIOKafkaConsumer(bootstrap_servers=ctx.bootstrap, enable_auto_commit=False)
    await watcher.start()
    samples: list[tuple[float, float | None, float | None]] = []
    status = "ok"
    spies: list[Any] = []
    res: dict[str, Any] = {"label": label, "settings": overrides, "loadavg_start": loadavg()}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        while True:
            samples.append((time.time(), tree_cpu_seconds(procs[0].pid), tree_cpu_seconds(procs[1].pid)))
            n = await end_count(watcher, out)
            if n >= ctx.msgs.n_txn:
                break
            if n and ctx.profile_dir is not None and not spies:  # --profile: py-spy once output flows
                spies = [start_profile(ctx, p, f"{label}-w{i}") for i, p in enumerate(procs, start=1)]
            dead = [p for p in procs if not p.alive()]
            if dead or time.monotonic() > deadline:
                status = f"exited: {dead[0].tail()}" if dead else f"timeout ({n}/{ctx.msgs.n_txn} records)"
                break
            await asyncio.sleep(0.25)
        # CPU from each worker's start (its import, recovery, standby reads) to the drain's end
        res["worker_cpu_total_s"] = [None if c is None else round(c, 2) for c in samples[-1][1:]]
        # what each worker's standby partitions held at the end: the other worker's writes
        res["user_changelog_records"] = await end_count(watcher, f"{app_id}-user-state-changelog")
        await asyncio.sleep(6.0)  # the gauges are reported every 5 s
        res["workers"] = [{**scrape_tables(p), "peak_rss_mb": peak_rss_mb(p.pid)} for p in procs]
        stopped = time.time()
        procs[1].stop()
        log = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = procs[0].log.read_text(errors="replace")
            if recovery_after(log, stopped, f"{app_id}-user-state-changelog")["ready_after_s"] is not None:
                break
            await asyncio.sleep(0.5)
        res["failover"] = recovery_after(log, stopped, f"{app_id}-user-state-changelog")
    finally:
        await watcher.stop()
        for spy in spies:
            if spy is not None:
                spy.wait(ctx.profile_s + 30)
        for p in procs:
            p.stop()
    records = await read_all(ctx.bootstrap, out)
    ts = sorted(t for t, _ in records)
    t0, t1 = ts[0] / 1000.0, ts[-1] / 1000.0
    span = t1 - t0
    cpu = []
    for col in (1, 2):
        series = [(s[0], s[col]) for s in samples]
        a, b = _interp(series, t0), _interp(series, t1)
        cpu.append(round(b - a, 2) if a is not None and b is not None else None)
    docs = [json.loads(v) for _, v in records]
    ids = {d["transaction_id"] for d in docs}
    covered = ctx.msgs.between_txns * min(len(ids) / ctx.msgs.n_txn, 1.0)
    res.update(
        {
            "status": status,
            "distinct_transactions": len(ids),
            "duplicates": len(records) - len(ids),
            "span_s": round(span, 2),
            "messages_per_s": round(covered / span, 1) if span else None,
            "worker_cpu_s": cpu,
            "batches": batch_stats(docs),
            "loadavg_end": loadavg(),
        }
    )
    total = sum(c or 0.0 for c in cpu)
    if None not in cpu and total:
        res["messages_per_cpu_s"] = round(covered / total, 1)
    return res


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting, the mean of each figure over its runs."""

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 2) if xs else None

    out: dict[str, Any] = {}
    for name in SETTINGS:
        rs = [r for r in runs if sweep_entry(r["label"]) == name and r["status"] == "ok"]
        ws = [w for r in rs for w in r["workers"]]
        out[name] = {
            "runs": len(rs),
            "messages_per_s": mean([r["messages_per_s"] for r in rs]),
            "messages_per_cpu_s": mean([r["messages_per_cpu_s"] for r in rs if "messages_per_cpu_s" in r]),
            "worker_cpu_total_s": mean([c for r in rs for c in r.get("worker_cpu_total_s", []) if c]),
            "user_states_per_worker": mean([w["user_states"] for w in ws if "user_states" in w]),
            "peak_rss_mb_per_worker": mean([w["peak_rss_mb"] for w in ws if w.get("peak_rss_mb")]),
            "failover_ready_after_s": mean(
                [r["failover"]["ready_after_s"] for r in rs if r["failover"]["ready_after_s"] is not None]
            ),
            "failover_records_read": mean([r["failover"]["records_read"] for r in rs]),
        }
    return out


def order(rounds: int) -> list[str]:
    """standby0, standby1, then standby1--2, standby0--2, …: each setting first as often."""
    labels: list[str] = []
    for i in range(rounds):
        pair = ["standby0", "standby1"] if i % 2 == 0 else ["standby1", "standby0"]
        labels += [x if i == 0 else f"{x}--{i + 1}" for x in pair]
    return labels


async def bench(ctx: Ctx, rounds: int, timeout: float, result: dict[str, Any]) -> None:
    from streams.replay import replay_events

    await create_topics(ctx.bootstrap, ctx.backlog.inputs)
    print(f"preloading {ctx.msgs.counts['messages']:,} messages ...", flush=True)
    await replay_events(ctx.msgs.events, settings_for(ctx.bootstrap, ctx.backlog), progress=False)
    for label in order(rounds):
        print(f"two workers, {label}: {SETTINGS[sweep_entry(label)]}", flush=True)
        r = await run_pair(ctx, label, timeout)
        result["runs"].append(r)
        print(
            f"  {r.get('messages_per_s')} msg/s, {r.get('messages_per_cpu_s')} msg/CPU-s, workers "
            f"{r.get('workers')}, failover {r.get('failover')} [{r['status']}]",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transactions", type=int, default=30_000, help="transactions in the message window")
    ap.add_argument("--start-day", type=float, default=7.0, help="window start, days into the file")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each setting, alternated")
    ap.add_argument("--profile", type=Path, help="py-spy (raw folded stacks) on both workers of every drain")
    ap.add_argument("--py-spy-args", default="--gil --rate 400", help="extra py-spy record options")
    ap.add_argument("--profile-s", type=float, default=8.0, help="seconds each py-spy records")
    add_run_options(
        ap,
        data=DATA,
        out=Path(__file__).parent / "results" / "standby.json",
        timeout=240.0,
        timeout_help="seconds per drain before giving up",
    )
    args = ap.parse_args(argv)
    result: dict[str, Any] = start_result("bench_standby.py", argv)
    work = Path(tempfile.mkdtemp(prefix="bench-standby-"))
    kafka = None
    ctx: Ctx | None = None
    try:
        msgs = load_messages(args.file, args.transactions, args.start_day)
        result["messages"] = {"file": args.file.name, "start_day": args.start_day, **msgs.counts}
        registry = args.registry or train_registry(work / "registry")
        unwind_on_sigterm()
        kafka, info = start_broker(work, args.broker_dir)
        result["broker"] = info
        run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
        backlog = Topics(f"sb-{run_id}-tx", f"sb-{run_id}-clicks", f"sb-{run_id}-labels")
        bootstrap, pid = info["bootstrap"], info["pid"]
        ctx = Ctx(bootstrap, registry, work, backlog, msgs, run_id, args.timeout, pid, args.profile)
        ctx.profile_args, ctx.profile_s = tuple(args.py_spy_args.split()), args.profile_s
        ctx.warm = build_warm_state(msgs.history)
        result["warm_state"] = {"users": len(ctx.warm.users), "terminals": len(ctx.warm.terminals)}
        asyncio.run(bench(ctx, args.rounds, args.timeout, result))
    finally:
        result["summary"] = summarize(result["runs"])
        if ctx is not None and ctx.profiles:
            result["profiles"] = ctx.profiles
        finish(kafka, work, args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
