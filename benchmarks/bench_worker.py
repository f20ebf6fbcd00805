"""Live worker throughput and latency, compared in one run on one broker over the same messages.

    python benchmarks/bench_worker.py [--transactions 30000] [--registry DIR] [--bootstrap HOST:PORT]
                                      [--sweep default,batch256,...] [--quick] [--timeout 150]
                                      [--latency-settings default,wait100] [--profile DIR]
                                      [--out benchmarks/results/worker.json]

About 25 minutes on 2 shared cores with the defaults (``--quick``: about 10).

Messages: a window of ``training.history.event_stream`` over handbook_2w (transactions, the
synthetic clickstream, labels at transaction time + 7 days) starting ``--start-day`` days in, so
labels flow alongside transactions as they do in production, holding ``--transactions``
transactions. Every run starts from the window state of all the file's events before the window
(``--start-day`` days of history, seeded into its changelog as ``riskstream warmup`` does), as a
worker in production does; ``--cold`` starts from empty state (what this benchmark measured
before 2026-11-30, which flattered the worker: snapshots were small). The window's messages
are produced once into three input topics (the backlog); every throughput run below reads
that same backlog with its own consumer group and writes its own output topic.

* (a) riskstream's worker: ``python -m streams.cli worker`` (one process, a real model trained
  and published here with ``training.bundle.train_and_publish_matrix``, or ``--registry``), once per
  entry of ``SWEEP`` (pipeline max batch, max wait, model max batch, oneDNN, log level).
* (b) a plain Faust agent written the usual way (``benchmarks/plain_faust_agent.py``): one
  event at a time, user state in a Faust table, the model called per transaction (batch 1);
  with oneDNN off (its fastest at batch 1, the "default" entry) and on (the settings' default).
* (c) a raw aiokafka relay (this file's ``relay`` role): a consumer group reading the three input
  topics with ``getmany`` and producing every value to an output topic, doing no work.
* (d) the work floor (this file's ``floor`` role; ``--no-floor`` skips (d) and (e)): the relay
  plus the part of (a)'s work that does not depend on features or state: each message decoded and
  validated by the worker's parsers, the served model (the worker's predictor settings) run on
  each fetch's transactions with one all-zero feature vector, verdicts and risk events built
  and produced. No worker with this model and this Kafka client can pass it here; the gap from
  (a) to (d) is what the feature engine, the window state and the worker's ordering cost.
* (e) (d) plus the feature engine on in-memory state (``FeatureRunner``, as the trainer runs
  it), warmed with the window's history first: the ceiling of any worker built on this feature
  engine. The gap from (a) to (e) is Faust, the state tables, alignment, acks and metrics.

Throughput is read from the output topic after the run: records over the time between the
first and the last output record (their producer timestamps), so start-up is excluded and the
harness does not compete for CPU while a run is timed. (a) and (b) emit one risk event per
transaction: their message rate counts the input messages between the first and the last
transaction. A run still going after ``--timeout`` seconds is stopped and measured over what it
produced (its status says so). CPU seconds of the process under test (and of the broker when it
is ours) over the same interval give messages per CPU-second, which varies less than wall-clock
rates on a shared machine. Micro-batch sizes are read back from the risk events (events of one
model call share their scored time and inference time).

Latency: per ``--latency-settings`` entry, a worker on fresh topics fed at a constant rate of
``--latency-fraction`` (0.5) of that setting's measured rate; percentiles of the risk events'
``latency_ms.end_to_end`` (input Kafka timestamp → risk event built), split into Kafka → worker
receipt, queue in the worker and inference, and of input timestamp → output record timestamp.
``--latency-pacing speed`` uses ``streams.replay.replay_events`` with ``speed`` instead:
event-time pacing follows the data's daily cycle, so its peaks run far above the mean rate (the
peak 1 s rate is recorded).

``--profile DIR`` adds untimed runs with py-spy attached (raw folded stacks): (a) and (b)
draining the backlog and (a) under the paced feed; ``--py-spy-args=--gil`` samples only the
thread holding the GIL (where the worker's one-core ceiling goes). Give that option with ``=``:
its value starts with ``--``.

``--latency-rate R`` feeds every setting at ``R`` × ``--latency-fraction`` instead of its own
measured rate, to compare settings at one rate (the run order matters on a shared machine:
alternate the order between invocations). ``NAME--2`` (``--3``, …) in ``--sweep`` or
``--latency-settings`` runs the entry ``NAME`` once more, so that one invocation alternates two
settings: ``--sweep default,batch512-model256,default--2,batch512-model256--2``.

Before the first timed run, ``--broker-warmup N`` (1) untimed relay drains of the backlog warm
the broker up. A fresh broker's first drains were slower (most likely the JVM's JIT compiling
its fetch path): without them the first timed run, (a) with default settings, was the slowest
(a) run in 5 of 6 invocations in session 25. Their rates are in ``broker_warmup``. Before the
first timed latency run, ``--broker-warmup-feed N`` (2) untimed paced feeds of (a) default at
that run's rate do the same for the paced paths (``workerbench.latency.warm_paced``); their
figures are in ``broker_warmup_feed``.

Every run records the CPU seconds of the process under test (with its child processes: the
inference children of ``inference_process``), of its main thread (the event
loop: scoring, state, Faust; ``main_thread_busy`` is its share of the run's span) and of the
broker; the seconds the main thread waited for a CPU while runnable
(``main_thread_runqueue_wait_s``, from ``/proc/.../schedstat``); and the whole machine's busy
CPU seconds (``machine_cpu_s``, ``machine_busy`` as a share of all CPUs over the span) and the
hypervisor's steal (``machine_steal_s``). A thread's CPU time does not show a CPU it was kept
from; the run-queue wait does. Also the process's minor page faults over the span
(``minor_faults``) and its peak resident memory (``peak_rss_mb``, ``VmHWM`` read before it stops).

``--isolate`` pins the process under test to the last CPU and this harness (the feeder, the
reader) and the broker to the others, as when the load generator and the broker run on other
hosts. With two vCPUs the feeder and the broker then share one, and a plain Faust agent, whose
consumer thread and main thread take turns on one CPU, loses about a third: compare isolated
runs with isolated runs only.

Results go to ``--out`` (JSON: machine, load averages, settings, counts, every run); a table is
printed. The targets of issue 5 are (a) ≥ 10 × (b), (a) ≥ 50 % of (c) and p99 ≤ 100 ms at half
the maximum rate, judged on default settings; the JSON says whether this run met them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # workerbench/, however this file is loaded

# "X as X": re-exported, bench_pipeline.py imports DATA, load_messages, machine_info and
# train_registry from here
from workerbench.config import DATA as DATA
from workerbench.config import (
    DAY_MS,
    DEFAULT_WORKER,
    PARTITIONS,
    PLAIN_SWEEP,
    QUICK_SWEEP,
    SWEEP,
    sweep_entry,
)
from workerbench.kafka import Topics, create_topics, relay, settings_for, start_broker, work_floor
from workerbench.latency import run_latency, run_relay_latency, warm_paced
from workerbench.messages import build_warm_state
from workerbench.messages import load_messages as load_messages
from workerbench.messages import train_registry as train_registry
from workerbench.procs import Ctx
from workerbench.report import print_table, summarize
from workerbench.runs import run_floor, run_plain, run_profiles, run_relay, run_worker
from workerbench.system import filesystem_of, loadavg, result_header, unwind_on_sigterm
from workerbench.system import machine_info as machine_info

from modeling.native import why_sources

# ------------------------------------------------------------------------------------ main


async def bench(args: argparse.Namespace, ctx: Ctx, result: dict[str, Any]) -> None:
    from streams.replay import replay_events

    await create_topics(ctx.bootstrap, ctx.backlog.inputs)
    print(f"preloading {ctx.msgs.counts['messages']:,} messages ...", flush=True)
    rep = await replay_events(ctx.msgs.events, settings_for(ctx.bootstrap, ctx.backlog), progress=False)
    result["preload"] = {"messages": rep.total, "seconds": round(rep.seconds, 2), "rate": round(rep.rate, 1)}
    runs: list[dict[str, Any]] = result["runs"]

    def keep(r: dict[str, Any]) -> None:
        runs.append(r)
        print(
            f"  ({r['system']}) {r['label']}: {r.get('messages_per_s')} msg/s, "
            f"{r.get('transactions_per_s')} txn/s, load {r['loadavg_end'][0]} [{r['status']}]",
            flush=True,
        )

    labels = args.sweep.split(",") if args.sweep else list(QUICK_SWEEP if args.quick else SWEEP)
    unknown = [x for x in labels if sweep_entry(x) not in SWEEP]
    if unknown:
        raise SystemExit(f"unknown sweep settings {unknown}; choose from {list(SWEEP)}")
    if len(set(labels)) != len(labels):
        raise SystemExit(f"a sweep label twice in {labels}: repeat an entry as NAME--2, NAME--3, ...")
    if "default" in labels:
        labels.remove("default")
    warmups: list[dict[str, Any]] = result["broker_warmup"]
    for i in range(args.broker_warmup):
        # A fresh broker's first drains are slower (most likely its JIT): the first timed run was
        # the slowest (a) run in 5 of 6 invocations of session 25 until this was added.
        print(f"warming the broker up: relay drain {i + 1} of {args.broker_warmup} (untimed)", flush=True)
        w = await run_relay(ctx, f"warm{i}")
        warmups.append({k: w.get(k) for k in ("messages_per_s", "span_s", "broker_cpu_s", "status")})
        print(f"  {warmups[-1]}", flush=True)
    print("(a) worker, default settings", flush=True)
    keep(await run_worker(ctx, "default", {}))
    if not args.skip_baselines:
        plain = PLAIN_SWEEP.items() if not args.quick else [("default", PLAIN_SWEEP["default"])]
        for label, overrides in plain:
            print(f"(b) plain Faust agent, {label}: {overrides}", flush=True)
            keep(await run_plain(ctx, label, overrides))
        print("(c) raw aiokafka relay", flush=True)
        keep(await run_relay(ctx))
        if args.floor:
            print("(d) work floor: relay + decode + model + risk events, no features or state", flush=True)
            keep(await run_floor(ctx))
            print("(e) work floor with the feature engine on in-memory state", flush=True)
            keep(await run_floor(ctx, (args.file, args.transactions, args.start_day)))
    for label in labels:
        entry = SWEEP[sweep_entry(label)]
        print(f"(a) worker, {label}: {entry}", flush=True)
        keep(await run_worker(ctx, label, entry))
    measured = {r["label"]: r.get("messages_per_s") for r in runs if r["system"] == "a"}
    pacings = ("constant", "speed") if args.latency_pacing == "both" else (args.latency_pacing,)
    latency_labels = args.latency_settings.split(",") if args.latency_seconds > 0 else []
    rates = [args.latency_rate or measured.get(x) for x in latency_labels]
    first_rate = next((r for r in rates if r), None)  # None: no latency run, so no warm-up
    for i in range(args.broker_warmup_feed):
        if not first_rate:
            break
        print(f"warming the broker up: paced feed {i + 1} of {args.broker_warmup_feed} (untimed)", flush=True)
        w = await warm_paced(ctx, i, first_rate, args.latency_fraction, args.latency_seconds, args.warmup)
        result["broker_warmup_feed"].append(w)
        print(f"  {w}", flush=True)
    for label, rate in zip(latency_labels, rates, strict=True):
        if not rate:
            print(f"no measured rate for {label!r}: latency run skipped", flush=True)
            continue
        for pacing in pacings:
            print(
                f"(a) latency, {label}: {args.latency_fraction:.0%} of {rate:,.0f} msg/s, {pacing} pacing",
                flush=True,
            )
            lat = await run_latency(
                ctx, label, rate, args.latency_fraction, args.latency_seconds, pacing, args.warmup
            )
            result["latency"].append(lat)
            print(
                f"  p50 {lat['end_to_end_ms']['p50']} ms, p99 {lat['end_to_end_ms']['p99']} ms "
                f"[{lat['status']}]",
                flush=True,
            )
            if label == "default" and pacing == "constant" and args.relay_latency:
                fed = lat["feed"].get("rate") or rate * args.latency_fraction
                print(f"(c) latency floor: the relay fed at {fed:,.0f} msg/s", flush=True)
                floor = await run_relay_latency(ctx, fed, args.latency_seconds, args.warmup)
                result["latency"].append(floor)
                q = floor["input_to_output_record_ms"]
                print(f"  p50 {q['p50']} ms, p99 {q['p99']} ms [{floor['status']}]", flush=True)
    if ctx.profile_dir is not None:
        print(f"profiling (untimed) into {ctx.profile_dir}", flush=True)
        await run_profiles(ctx, measured.get("default"), args.latency_fraction, args.warmup)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["relay"]:  # internal: system (c), started by the benchmark itself
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(relay(argv[1], argv[2], argv[3], argv[4:]))
        return 0
    if argv[:1] == ["floor"]:  # internal: system (d)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(work_floor(argv[1], argv[2], argv[3], argv[4], argv[5:]))
        return 0
    if argv[:1] == ["floor-features"]:  # internal: system (e)
        history = (argv[1], int(argv[2]), float(argv[3]))
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(work_floor(argv[4], argv[5], argv[6], argv[7], argv[8:], history))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transactions", type=int, default=30_000, help="transactions in the message window")
    ap.add_argument("--start-day", type=float, default=7.0, help="window start, days into the file")
    ap.add_argument("--file", type=Path, default=DATA)
    ap.add_argument("--registry", type=Path, help="reuse a registry with a published behaviour model")
    ap.add_argument("--bootstrap", help="use this broker instead of starting a local one")
    ap.add_argument(
        "--sweep",
        help=f"comma-separated worker settings for (a), of {','.join(SWEEP)}; NAME--2 runs NAME again",
    )
    ap.add_argument(
        "--quick", action="store_true", help=f"sweep only {','.join(QUICK_SWEEP)}; (b) default only"
    )
    ap.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip (d): the relay plus decoding, the model and risk events, without features or state",
    )
    ap.add_argument("--skip-baselines", action="store_true", help="run (a) only")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per run before giving up")
    ap.add_argument("--latency-fraction", type=float, default=0.5, help="feed rate / measured max rate")
    ap.add_argument(
        "--latency-rate",
        type=float,
        help="feed rate = this × --latency-fraction, for every setting (default: each setting's measured "
        "rate); compares settings at one rate",
    )
    ap.add_argument("--latency-seconds", type=float, default=45.0, help="length of the paced feed (0: skip)")
    ap.add_argument("--latency-pacing", choices=("constant", "speed", "both"), default="constant")
    ap.add_argument(
        "--latency-settings", default="default", help="comma-separated (a) settings measured for latency"
    )
    ap.add_argument("--warmup", type=int, default=500, help="messages sent before the paced feed")
    ap.add_argument(
        "--broker-warmup",
        type=int,
        default=1,
        help="untimed relay drains of the backlog before the first timed run (a fresh broker is slower)",
    )
    ap.add_argument(
        "--broker-warmup-feed",
        type=int,
        default=2,
        help="untimed paced feeds of (a) default before the first timed latency run (the broker's "
        "first paced feeds cost it 2-4x the CPU of later ones)",
    )
    ap.add_argument(
        "--no-relay-latency",
        dest="relay_latency",
        action="store_false",
        help="skip (c)'s latency floor under the same paced feed",
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="start every run with empty state (default: the state of every event before the window)",
    )
    ap.add_argument("--profile", type=Path, help="also run py-spy on untimed (a)/(b) runs into this folder")
    ap.add_argument(
        "--py-spy-args",
        default="",
        help='extra py-spy record options for --profile, given with "=": --py-spy-args=--gil '
        '(GIL holder only), --py-spy-args="--threads --idle"',
    )
    ap.add_argument(
        "--input-timestamps",
        choices=("create", "append"),
        default="create",
        help="paced runs: input records stamped by the feeder (create) or on arrival at the broker "
        "(append: LogAppendTime), so end to end starts where the feeder's own queueing ends",
    )
    ap.add_argument(
        "--harness-gc",
        choices=("quiet", "auto"),
        default="quiet",
        help="paced runs: this harness's garbage collector frozen and off while it feeds (quiet), or "
        "collecting as usual (auto), when its pauses hold stamped records in the feeder",
    )
    ap.add_argument(
        "--isolate",
        action="store_true",
        help="pin the process under test to the last CPU and this harness (feeder, reader) and the "
        "broker to the others, as when the load generator and the broker run on other hosts",
    )
    ap.add_argument(
        "--broker-dir",
        type=Path,
        help="keep the local broker's data in a folder under this one (default: the run's temporary "
        "folder); /dev/shm keeps it in memory, where this VM's disk cannot stall the broker's writes "
        "to its memory-mapped index files (benchmarks/README.md, session 16)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, broker data)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "worker.json")
    args = ap.parse_args(argv)
    # produce retries right after a topic is created (no leader yet) are expected; keep quiet
    logging.getLogger("aiokafka").setLevel(logging.ERROR)

    from modeling.settings import load_settings

    result: dict[str, Any] = {
        **result_header("bench_worker.py", argv),
        # modeling/native.py: null when the compiled hot-path modules ran, else why the sources did
        "sources_loaded_because": why_sources(),
        "runs": [],
        "broker_warmup": [],
        "broker_warmup_feed": [],
        "latency": [],
    }
    test_cpus: frozenset[int] | None = None
    if args.isolate:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--isolate needs at least two CPUs")
        test_cpus = frozenset(cpus[-1:])
        os.sched_setaffinity(0, cpus[:-1])  # the broker, started below, inherits this mask
        result["isolate"] = {"under_test_cpus": sorted(test_cpus), "harness_and_broker_cpus": cpus[:-1]}
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    kafka = None
    ctx: Ctx | None = None
    try:
        print(f"loading messages from {args.file.name} ...", flush=True)
        msgs = load_messages(args.file, args.transactions, args.start_day)
        result["messages"] = {
            "file": args.file.name,
            "start_day": args.start_day,
            **msgs.counts,
            "between_first_and_last_transaction": msgs.between_txns,
            "payload_bytes": msgs.bytes,
            "event_time_days": round((msgs.window[1] - msgs.window[0]) / DAY_MS, 2),
        }
        print(f"  {msgs.counts}", flush=True)
        if args.registry:
            registry = args.registry
        else:
            print("training and publishing a model ...", flush=True)
            registry = train_registry(work / "registry")
        from modeling.predictor import resolve_device
        from modeling.registry import ModelRegistry

        version = ModelRegistry(registry).current("behaviour")
        device = f"{load_settings().device} -> {resolve_device(load_settings().device)}"
        result["model"] = {"registry": str(registry), "version": version, "device": device}
        # From here on SIGTERM (``timeout``, ``kill``) unwinds like Ctrl-C, so that the broker and
        # the workers this run starts are stopped by its ``finally`` blocks instead of outliving
        # it. Set after Paddle is imported: its own handler aborts the process.
        unwind_on_sigterm()
        if args.bootstrap:
            bootstrap, broker_pid = args.bootstrap, None
            result["broker"] = {"bootstrap": bootstrap, "own": False}
        else:
            kafka, info = start_broker(work, args.broker_dir)
            bootstrap, broker_pid = info["bootstrap"], info.pop("pid")
            result["broker"] = {**info, "data_filesystem": filesystem_of(kafka.home)}
        run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
        backlog = Topics(f"bench-{run_id}-tx", f"bench-{run_id}-clicks", f"bench-{run_id}-labels")
        ctx = Ctx(bootstrap, registry, work, backlog, msgs, run_id, args.timeout, broker_pid, args.profile)
        ctx.profile_args = tuple(args.py_spy_args.split())
        ctx.harness_gc = args.harness_gc
        ctx.input_timestamps = args.input_timestamps
        ctx.test_cpus = test_cpus
        result["input_timestamps"] = args.input_timestamps
        result["harness_gc"] = args.harness_gc
        if args.cold:
            result["warm_state"] = None
        else:
            print(
                f"building window state from the {len(msgs.history):,} events before the window ...",
                flush=True,
            )
            ctx.warm = build_warm_state(msgs.history)
            result["warm_state"] = {
                "events": len(msgs.history),
                "transactions": ctx.warm.transactions,
                "users": len(ctx.warm.users),
                "terminals": len(ctx.warm.terminals),
                "user_snapshot_bytes_mean": round(ctx.warm.user_bytes_mean, 1),
            }
            print(f"  {result['warm_state']}", flush=True)
        result["settings"] = {
            "partitions": PARTITIONS,
            "timeout_s": args.timeout,
            "latency_fraction": args.latency_fraction,
            "latency_rate": args.latency_rate,
            "latency_seconds": args.latency_seconds,
            "latency_pacing": args.latency_pacing,
            "worker_defaults": DEFAULT_WORKER,
            "sweep": SWEEP,
            "plain_sweep": PLAIN_SWEEP,
        }
        asyncio.run(bench(args, ctx, result))
    finally:
        if kafka is not None:
            kafka.stop()
        result["machine"]["loadavg_end"] = loadavg()
        if ctx is not None and ctx.profiles:
            result["profiles"] = ctx.profiles
        lat = result["latency"][0] if result["latency"] else None
        result["summary"] = summarize(result["runs"], lat)
        floor = next((x for x in result["latency"] if x["system"] == "c"), None)
        if floor is not None:  # the same paced feed through the relay: what Kafka alone costs here
            result["summary"]["latency_floor_relay_ms"] = floor["input_to_output_record_ms"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print_table(result["runs"], result["latency"], result["summary"])
        print(f"\nwrote {args.out}")
        folders = [work] if kafka is None or kafka.home.is_relative_to(work) else [work, kafka.home]
        for folder in folders:
            if args.keep:
                print(f"kept {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
