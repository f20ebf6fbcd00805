"""How long a started worker takes to rebuild its user (or terminal) states from the changelog,
by state count.

    python benchmarks/bench_recovery.py [--users 50000,200000] [--paths direct,faust] [--repeat 2]
                                        [--table user|terminal] [--registry DIR] [--broker-dir /dev/shm]
                                        [--out benchmarks/results/recovery.json]

About 3 minutes on 2 shared cores with the defaults and ``--registry`` (measured).

The worker's tables are Faust memory stores, so a started worker replays its partitions' whole
user-state changelog (faust-streaming #284), one record per user once compacted. This seeds a
fresh changelog with N user states and starts one worker (default settings, empty input topics)
on it. The states are the 4,814 real snapshots of ``bench_worker.py``'s warm state (every event of
handbook_2w before its message window), repeated under new keys. Each count runs with both
recovery paths (``--paths``, alternated, the order reversed in every other round): ``direct``
(``user_recovery_direct``, the default: a fetch's records applied at a time,
``streams/replica.py``) and ``faust`` (every record through Faust's recovery loop). Recorded per run:

* from Faust's log: seconds from "Restoring state from changelog topics" to "Done reading from
  changelog topics" (the replay), from the process's start to "Worker ready", and the records
  its recovery read (``workerbench.tables.recovery_after``);
* from the worker's metrics once ready: the user states it holds (must be N), and the records
  read back by path (``riskstream_user_state_records_read_total``, ``records_by_path``);
* the worker's CPU seconds and peak resident memory when ready.

``--table terminal`` does the same for the global terminal table (one changelog partition,
which every worker reads whole): N terminal states from the warm state's terminals, the paths
``terminal_replica_direct`` on and off, records by path from
``riskstream_terminal_replica_records_total``. ``--users`` then counts terminal states.

Results go to ``--out`` (JSON: every run; per state count, replay records per second and the
peak memory added per state against the smallest count).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # workerbench/

from workerbench.config import DATA, DEFAULT_WORKER, PARTITIONS
from workerbench.kafka import Topics, create_topics, finish, seed_changelogs, start_broker
from workerbench.messages import build_warm_state, load_messages, train_registry
from workerbench.procs import Ctx, Proc, riskstream_env
from workerbench.system import (
    add_run_options,
    cpu_seconds,
    peak_rss_mb,
    start_result,
    unwind_on_sigterm,
)
from workerbench.tables import log_times, recovery_after, scrape_tables

RESTORING = "Restoring state from changelog topics..."
DONE = "Done reading from changelog topics"
READY = "Worker ready"


def states(base: dict[str, bytes], n: int) -> dict[str, bytes]:
    """``n`` states: ``base``'s snapshots in turn under new keys (``base`` itself first)."""
    items = list(base.items())
    out: dict[str, bytes] = {}
    for i in range(n):
        key, raw = items[i % len(items)]
        out[key if i < len(items) else f"{key}~{i // len(items)}"] = raw
    return out


# The setting that has the worker apply a fetch's changelog records at a time while Faust's
# recovery reads them (streams/replica.py), or every record take Faust's path; and the table's
# changelog partitions
PATHS = {"direct": True, "faust": False}
TABLES = {"user": ("user_recovery_direct", PARTITIONS), "terminal": ("terminal_replica_direct", 1)}
# The table on disk (streams/user_store.py, streams/terminal_store.py): a first start on an empty
# data directory ("disk"), then the same worker restarted on what that start wrote ("disk-restart")
DISK = {
    "user": {"user_store": "disk", "user_recovery_direct": True},
    "terminal": {"terminal_store": "disk", "terminal_replica_direct": True},
}
RESTART = "disk-restart"


async def run_one(
    ctx: Ctx,
    label: str,
    users: dict[str, bytes],
    path: str,
    timeout: float,
    table: str = "user",
    app_id: str | None = None,
) -> dict[str, Any]:
    """One worker started on a changelog of ``users``; with ``app_id``, a restart of that
    app's worker on its data directory (nothing seeded)."""
    restart = app_id is not None
    app_id = app_id or ctx.name(label)
    topics = Topics(f"{app_id}-tx", f"{app_id}-clicks", f"{app_id}-labels")
    out = f"{app_id}-risk"
    setting, partitions = TABLES[table]
    changelog = f"{app_id}-{table}-state-changelog"
    if not restart:
        await create_topics(ctx.bootstrap, [*topics.inputs, out, f"{out}-dlq"])
        await seed_changelogs(ctx.bootstrap, {changelog: (users, partitions)})
    worker = {**DEFAULT_WORKER, **(DISK[table] if path in ("disk", RESTART) else {setting: PATHS[path]})}
    env = riskstream_env(ctx, app_id, topics, out, worker)
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"]
    proc = Proc(cmd, env, ctx.work / f"{app_id}.log").start()
    res: dict[str, Any] = {
        "label": label,
        "app_id": app_id,
        "table": table,
        "users": len(users),
        "path": path,
        "status": "ok",
    }
    try:
        deadline = time.monotonic() + timeout
        while True:
            log = proc.log.read_text(errors="replace")
            if log_times(log, proc.started, (READY,))[READY] is not None:
                break
            if not proc.alive() or time.monotonic() > deadline:
                res["status"] = "exited" if not proc.alive() else f"timeout after {timeout:.0f} s"
                return res
            await asyncio.sleep(0.2)
        res["cpu_s_when_ready"] = cpu_seconds(proc.pid)
        res["peak_rss_mb_when_ready"] = peak_rss_mb(proc.pid)
        times = log_times(log, proc.started, (RESTORING, DONE, READY))
        rec = recovery_after(log, proc.started, changelog)
        t_restore, t_done, t_ready = times[RESTORING], times[DONE], times[READY]
        replay = t_done - t_restore if t_restore is not None and t_done is not None else None
        if replay is None and rec["records_read"] == 0:
            replay = 0.0  # nothing to read: Faust logs no replay
        res.update(
            {
                "ready_after_start_s": None if t_ready is None else round(t_ready - proc.started, 2),
                "replay_s": None if replay is None else round(replay, 2),
                "records_read": rec["records_read"],
                "replay_records_per_s": round(rec["records_read"] / replay, 1) if replay else None,
                "changelog_partitions": rec["partitions"],
            }
        )
        await asyncio.sleep(6.0)  # the gauges are reported every 5 s
        res.update(scrape_tables(proc, table))
    finally:
        proc.stop()
    return res


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["status"] == "ok" and r.get("replay_s") is not None]
    counts = sorted({r["users"] for r in ok})
    out: dict[str, Any] = {}
    for n, path in ((n, p) for n in counts for p in [*PATHS, "disk", RESTART]):
        rs = [r for r in ok if r["users"] == n and r["path"] == path]
        if not rs:
            continue
        out[f"{n} {path}"] = {
            "runs": len(rs),
            "replay_s": [r["replay_s"] for r in rs],
            "records_read": [r["records_read"] for r in rs],
            "replay_records_per_s": [r["replay_records_per_s"] for r in rs],
            "ready_after_start_s": [r["ready_after_start_s"] for r in rs],
            "peak_rss_mb_when_ready": [r["peak_rss_mb_when_ready"] for r in rs],
            "states": [r.get(f"{r.get('table', 'user')}_states") for r in rs],
        }
    if len(counts) > 1:
        lo, hi = counts[0], counts[-1]

        def rss(n: int, path: str) -> float:
            xs = [float(r["peak_rss_mb_when_ready"]) for r in ok if r["users"] == n and r["path"] == path]
            return sum(xs) / len(xs) if xs else float("nan")

        for path in ("direct", "disk", RESTART):
            if any(r["path"] == path for r in ok):
                added = (rss(hi, path) - rss(lo, path)) * 1024 / (hi - lo)
                name = "peak_rss_kb_per_added_state" + ("" if path == "direct" else f"_{path}")
                out[name] = round(added, 2)
    return out


async def bench(
    ctx: Ctx,
    counts: list[int],
    paths: list[str],
    repeat: int,
    timeout: float,
    result: dict[str, Any],
    table: str = "user",
) -> None:
    assert ctx.warm is not None
    base = ctx.warm.users if table == "user" else ctx.warm.terminals
    for i in range(repeat):
        for n in counts if i % 2 == 0 else counts[::-1]:
            seeded = states(base, n)
            for path in paths if i % 2 == 0 else paths[::-1]:
                label = f"{table[0]}{n}-{path}-{i + 1}"
                print(f"worker starting on {n:,} {table} states, {path} ({label})", flush=True)
                r = await run_one(ctx, label, seeded, path, timeout, table)
                result["runs"].append(r)
                print(f"  {r}", flush=True)
                if path == "disk" and r["status"] == "ok":
                    print(f"  restarted on its data directory ({label}-restart)", flush=True)
                    r = await run_one(ctx, f"{label}-restart", seeded, RESTART, timeout, table, r["app_id"])
                    result["runs"].append(r)
                    print(f"  {r}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="50000,200000", help="comma-separated state counts")
    ap.add_argument(
        "--table", choices=sorted(TABLES), default="user", help="the table whose changelog is seeded"
    )
    ap.add_argument(
        "--paths",
        default="direct,faust",
        help="user_recovery_direct (terminal_replica_direct) on (direct), off (faust), or both; "
        "disk: the table on disk (user_store, terminal_store), started on an empty data directory "
        "and then restarted on it (disk-restart)",
    )
    ap.add_argument("--repeat", type=int, default=2, help="runs of each count, order reversed each time")
    add_run_options(
        ap,
        data=DATA,
        out=Path(__file__).parent / "results" / "recovery.json",
        timeout=600.0,
        timeout_help="seconds a worker may take to be ready",
    )
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.users.split(",")]
    result: dict[str, Any] = start_result("bench_recovery.py", argv)
    work = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    kafka = None
    try:
        # The window is not used: its history is. Labels come 7 days after their transactions,
        # so the terminal states need a longer one.
        msgs = load_messages(args.file, 1000, 7.0 if args.table == "user" else 13.0)
        registry = args.registry or train_registry(work / "registry")
        unwind_on_sigterm()
        kafka, info = start_broker(work, args.broker_dir)
        result["broker"] = info
        run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
        unused = Topics("unused", "unused", "unused")
        ctx = Ctx(info["bootstrap"], registry, work, unused, msgs, run_id, args.timeout, info["pid"])
        ctx.warm = build_warm_state(msgs.history)
        base = ctx.warm.users if args.table == "user" else ctx.warm.terminals
        sizes = [len(v) for v in base.values()]
        mean = round(sum(sizes) / len(sizes), 1)
        result["base_states"] = {"table": args.table, "states": len(sizes), "snapshot_bytes_mean": mean}
        asyncio.run(bench(ctx, counts, args.paths.split(","), args.repeat, args.timeout, result, args.table))
    finally:
        result["summary"] = summarize(result["runs"])
        finish(kafka, work, args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
