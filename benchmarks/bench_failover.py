"""How long a killed worker's users go unscored, with Faust's group session timeout and ours.

    python benchmarks/bench_failover.py [--sessions 60,10] [--rounds 2] [--rate 1000]
                                        [--membership dynamic,static] [--restart-after S]
                                        [--registry DIR] [--broker-dir /dev/shm]
                                        [--out benchmarks/results/failover.json]

A worker that dies without leaving its consumer group (SIGKILL, a machine gone) keeps its
partitions until the group coordinator has heard no heartbeat from it for the session timeout
(``RISKSTREAM_GROUP_SESSION_TIMEOUT_S``; Faust's default 60 s). Only then does the group
rebalance and another worker take them over, and meanwhile those partitions' transactions wait.
For each session timeout of ``--sessions`` and each group membership of ``--membership``
(``dynamic``: Kafka's default; ``static``: each worker with its own ``RISKSTREAM_GROUP_INSTANCE_ID``),
alternated ``--rounds`` times:

* two workers (``python -m streams.cli worker``, default settings but the session timeout, each
  with its own data directory) join one group on fresh topics, their user and terminal state
  seeded with the window state of the week before (as ``bench_worker.py`` does);
* the message window of ``bench_worker.py`` is fed at a constant ``--rate`` (messages a second,
  each stamped with its send time); after ``--kill-after`` seconds of it, the second worker is
  killed with SIGKILL. Its partitions are read from its ``riskstream_consumer_lag`` gauge just
  before. With ``--restart-after S`` it is started again S seconds after the kill, on its own
  data directory (a crash and its restart policy; a rolling deploy);
* the feed goes on for ``--after`` seconds; then the run waits until every transaction has its
  risk event.

Recorded per run, from the risk events (input Kafka timestamp = scored time minus end-to-end
latency; a transaction's partition from its key, as Kafka's default partitioner places it):

* ``resumed_after_s``: per partition of the killed worker, seconds from the kill to the first
  risk event of that partition written after it (the survivor's, or the restarted worker's);
* ``max_wait_s``: per partition, the longest end-to-end latency of a transaction sent after the
  kill (the killed worker's and the survivor's own: a rebalance pauses every partition);
* ``lost`` and ``duplicates``: transactions sent with no risk event (must be 0), and risk
  events beyond one per transaction (at-least-once: the killed worker's last uncommitted
  batches are scored again);
* ``survivor_assignments``: partition assignments the surviving worker received after the kill
  (``riskstream_partition_assignments_total``): each one a rebalance that stopped it.

Results go to ``--out`` (JSON: every run and, per session timeout, the mean of each figure).
About 2 minutes a run (the feed takes 105 s); 8 minutes in all with ``--rounds 2`` and
``--registry`` (measured).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
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
from workerbench.kafka import Topics, create_topics, end_count, finish, read_all, start_broker
from workerbench.latency import paced_send
from workerbench.messages import build_warm_state, load_messages, train_registry
from workerbench.procs import Ctx, Proc, riskstream_env, seed_worker
from workerbench.system import add_run_options, loadavg, start_result, unwind_on_sigterm


def partitions_of(proc: Proc, topic: str) -> set[int]:
    """The partitions of ``topic`` a worker reports a consumer lag for: its assignment."""
    from prometheus_client.parser import text_string_to_metric_families

    out: set[int] = set()
    for fam in text_string_to_metric_families(proc.metrics()):
        if fam.name == "riskstream_consumer_lag":
            out |= {int(s.labels["partition"]) for s in fam.samples if s.labels.get("topic") == topic}
    return out


def partition_for(user_id: str) -> int:
    """Where Kafka's default partitioner puts a record keyed by ``user_id``."""
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(PARTITIONS))
    return int(DefaultPartitioner()(user_id.encode(), parts, parts))


async def wait_assigned(procs: Sequence[Proc], topic: str, timeout: float) -> list[set[int]]:
    """Until every worker reports its partitions of ``topic`` and together they cover all."""
    deadline = time.monotonic() + timeout
    while True:
        parts: list[set[int]] = []
        with contextlib.suppress(OSError):
            parts = [await asyncio.to_thread(partitions_of, p, topic) for p in procs]
        if parts and all(parts) and set().union(*parts) == set(range(PARTITIONS)):
            return parts
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"a worker exited:\n{p.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers not assigned after {timeout} s: {parts}")
        await asyncio.sleep(0.5)


def assignments(proc: Proc) -> float:
    """The worker's ``riskstream_partition_assignments_total``."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(proc.metrics()):
        if fam.name == "riskstream_partition_assignments":
            return sum(s.value for s in fam.samples if s.name.endswith("_total"))
    return 0.0


async def run_failover(
    ctx: Ctx, label: str, session_s: float, membership: str, args: argparse.Namespace
) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    from modeling.records import Transaction

    tag = f"fo-{label}"
    app_id = ctx.name(tag)
    topics = Topics(ctx.name(f"{tag}-tx"), ctx.name(f"{tag}-clicks"), ctx.name(f"{tag}-labels"))
    out = ctx.name(f"{tag}-risk")
    await create_topics(ctx.bootstrap, [*topics.inputs, out, f"{out}-dlq"])
    await seed_worker(ctx, app_id)
    worker = {**DEFAULT_WORKER, "group_session_timeout_s": session_s}
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"]
    procs = []
    for i in (1, 2):
        env = riskstream_env(ctx, app_id, topics, out, worker)
        env["RISKSTREAM_WORKER_DATA_DIR"] = str(ctx.work / f"{app_id}-w{i}")
        if membership == "static":
            env["RISKSTREAM_GROUP_INSTANCE_ID"] = f"w{i}"
        procs.append(Proc(cmd, env, ctx.work / f"{app_id}-w{i}.log"))
    events = ctx.msgs.events[: int(args.rate * (args.kill_after + args.after))]
    sent = {e.transaction_id for e in events if isinstance(e, Transaction)}
    res: dict[str, Any] = {
        "label": label,
        "group_session_timeout_s": session_s,
        "membership": membership,
        "restart_after_s": args.restart_after,
        "loadavg_start": loadavg(),
    }
    watcher = AIOKafkaConsumer(bootstrap_servers=ctx.bootstrap, enable_auto_commit=False)
    await watcher.start()
    try:
        for p in procs:
            p.start()
        t_start = time.monotonic()
        assigned = await wait_assigned(procs, topics.transactions, 180)
        res["ready_after_start_s"] = round(time.monotonic() - t_start, 1)
        feed = asyncio.create_task(paced_send(events, ctx.bootstrap, topics, args.rate))
        await asyncio.sleep(args.kill_after)
        with contextlib.suppress(OSError):
            assigned = [await asyncio.to_thread(partitions_of, p, topics.transactions) for p in procs]
        survivor_before = await asyncio.to_thread(assignments, procs[0])
        killed = time.time()
        os.killpg(procs[1].pid or 0, signal.SIGKILL)
        res["assigned_before_kill"] = [sorted(a) for a in assigned]
        if args.restart_after is not None:
            await asyncio.sleep(args.restart_after)
            procs[1].start()  # same command, environment and data directory
            res["restarted_after_kill_s"] = round(time.time() - killed, 2)
        res["feed"] = await feed
        deadline = time.monotonic() + args.timeout
        n = 0
        while time.monotonic() < deadline and procs[0].alive():
            n = await end_count(watcher, out)
            if n >= len(sent):
                break
            await asyncio.sleep(0.5)
        res["status"] = "ok" if n >= len(sent) else f"stopped at {n}/{len(sent)} risk events"
        res["survivor_assignments"] = await asyncio.to_thread(assignments, procs[0]) - survivor_before
    finally:
        await watcher.stop()
        for p in procs:
            p.stop()
    records = await read_all(ctx.bootstrap, out)
    docs = [(ts / 1000.0, json.loads(v)) for ts, v in records]
    got = {d["transaction_id"] for _, d in docs}
    res.update({"transactions": len(sent), "lost": len(sent - got), "duplicates": len(docs) - len(got)})
    res.update(waits(docs, killed, set(assigned[1])))
    res["loadavg_end"] = loadavg()
    return res


def waits(docs: list[tuple[float, dict[str, Any]]], killed: float, dead: set[int]) -> dict[str, Any]:
    """``docs``: (output record time s, risk event). Per partition: the first output after the
    kill (the killed worker's) and the longest end-to-end latency of the inputs sent after it."""
    first: dict[int, float] = {}
    longest: dict[int, float] = {}
    for out_s, d in docs:
        part = partition_for(d["user_id"])
        e2e_s = d["latency_ms"]["end_to_end"] / 1000.0
        if d["scored_time"] / 1000.0 - e2e_s >= killed:
            longest[part] = max(longest.get(part, 0.0), e2e_s)
        if out_s > killed and part in dead:
            first[part] = min(first.get(part, out_s), out_s)
    return {
        "killed_partitions": sorted(dead),
        "resumed_after_s": {p: round(first[p] - killed, 2) for p in sorted(first)},
        "max_wait_s": {p: round(v, 2) for p, v in sorted(longest.items())},
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per session timeout (and membership, where a run names one other than dynamic)."""
    out: dict[str, Any] = {}

    def key(r: dict[str, Any]) -> str:
        m = r.get("membership", "dynamic")
        return str(r["group_session_timeout_s"]) + ("" if m == "dynamic" else f" {m}")

    for k in sorted({key(r) for r in runs}, reverse=True):
        rs = [r for r in runs if key(r) == k and r.get("status") == "ok"]

        def mean(xs: list[float]) -> float | None:
            return round(sum(xs) / len(xs), 2) if xs else None

        out[k] = {
            "runs": len(rs),
            "resumed_after_s": mean([max(r["resumed_after_s"].values()) for r in rs if r["resumed_after_s"]]),
            "max_wait_s_killed": mean(
                [max(v for p, v in r["max_wait_s"].items() if p in r["killed_partitions"]) for r in rs]
            ),
            "max_wait_s_survivor": mean(
                [
                    max(
                        (v for p, v in r["max_wait_s"].items() if p not in r["killed_partitions"]),
                        default=0.0,
                    )
                    for r in rs
                ]
            ),
            "lost": sum(r["lost"] for r in rs),
            "duplicates": mean([r["duplicates"] for r in rs]),
        }
        if any("survivor_assignments" in r for r in rs):
            out[k]["survivor_assignments"] = [r.get("survivor_assignments") for r in rs]
    return out


async def bench(ctx: Ctx, args: argparse.Namespace, result: dict[str, Any]) -> None:
    combos = [(float(s), m) for s in args.sessions.split(",") for m in args.membership.split(",")]
    restart = "" if args.restart_after is None else f", restarted {args.restart_after:g} s later"
    for i in range(args.rounds):
        for session, membership in combos if i % 2 == 0 else combos[::-1]:
            label = f"s{session:g}" + ("" if membership == "dynamic" else f"-{membership}")
            label += f"--{i + 1}" if i else ""
            print(
                f"two workers ({membership}), session timeout {session:g} s, kill after"
                f" {args.kill_after} s{restart} ({label})",
                flush=True,
            )
            r = await run_failover(ctx, label, session, membership, args)
            result["runs"].append(r)
            print(
                f"  resumed after {r.get('resumed_after_s')} s; max wait {r.get('max_wait_s')} s;"
                f" lost {r.get('lost')}, duplicates {r.get('duplicates')};"
                f" survivor reassigned {r.get('survivor_assignments')} times [{r.get('status')}]",
                flush=True,
            )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", default="60,10", help="group session timeouts to compare, seconds")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each session timeout, alternated")
    ap.add_argument("--rate", type=float, default=1000.0, help="messages a second fed")
    ap.add_argument(
        "--membership",
        default="dynamic",
        help="group memberships to compare: dynamic (Kafka's default), static (group_instance_id)",
    )
    ap.add_argument(
        "--restart-after",
        type=float,
        default=None,
        help="start the killed worker again this many seconds after the kill (default: never)",
    )
    ap.add_argument("--kill-after", type=float, default=15.0, help="seconds of feed before the kill")
    ap.add_argument("--after", type=float, default=90.0, help="seconds of feed after the kill")
    ap.add_argument("--transactions", type=int, default=50_000, help="transactions in the message window")
    ap.add_argument("--start-day", type=float, default=7.0, help="window start, days into the file")
    add_run_options(
        ap,
        data=DATA,
        out=Path(__file__).parent / "results" / "failover.json",
        timeout=180.0,
        timeout_help="seconds to wait for the last risk events",
    )
    args = ap.parse_args(argv)
    if not set(args.membership.split(",")) <= {"dynamic", "static"}:
        ap.error("--membership takes dynamic and static")
    result: dict[str, Any] = start_result("bench_failover.py", argv)
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    kafka = None
    try:
        msgs = load_messages(args.file, args.transactions, args.start_day)
        need = int(args.rate * (args.kill_after + args.after))
        if need > len(msgs.events):
            raise SystemExit(
                f"--rate x (--kill-after + --after) = {need} messages; the window has {len(msgs.events)}"
            )
        result["messages"] = {"file": args.file.name, "start_day": args.start_day, "fed": need}
        registry = args.registry or train_registry(work / "registry")
        unwind_on_sigterm()
        kafka, info = start_broker(work, args.broker_dir)
        result["broker"] = info
        run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
        backlog = Topics(f"fo-{run_id}-tx", f"fo-{run_id}-clicks", f"fo-{run_id}-labels")  # unused
        ctx = Ctx(info["bootstrap"], registry, work, backlog, msgs, run_id, args.timeout, info["pid"])
        ctx.warm = build_warm_state(msgs.history)
        result["warm_state"] = {"users": len(ctx.warm.users), "terminals": len(ctx.warm.terminals)}
        asyncio.run(bench(ctx, args, result))
    finally:
        result["summary"] = summarize(result["runs"])
        finish(kafka, work, args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
