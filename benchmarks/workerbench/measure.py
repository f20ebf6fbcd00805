"""Watching a run: CPU and the output topic sampled while it runs, then rates, micro-batches,
latency percentiles and the worker's stall histograms."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from workerbench.kafka import end_count, read_all
from workerbench.messages import Messages
from workerbench.procs import Ctx, Proc
from workerbench.system import (
    cpu_seconds,
    loadavg,
    machine_cpu_seconds,
    minor_faults,
    peak_rss_mb,
    runqueue_wait_seconds,
    tree_cpu_seconds,
)

# ------------------------------------------------------------------------------------ measuring


def _interp(samples: list[tuple[float, float | None]], t: float) -> float | None:
    pts = [(a, b) for a, b in samples if b is not None]
    if not pts:
        return None
    ts = np.array([a for a, _ in pts])
    vs = np.array([b for _, b in pts])
    return float(np.interp(t, ts, vs))


def _pct(a: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(a, q)), 2) if len(a) else None


STEADY_AFTER_S = 5  # the "steady" percentiles leave out this many seconds at the feed's start


def over_time(name: str, in_ts: np.ndarray, lat: np.ndarray) -> dict[str, Any]:
    """``lat`` (ms) by second of input time (``in_ts``, ms): the median and the maximum of each
    second, which show when in the run the slow events were (start-up, a stall, all along), and
    the percentiles without the first ``STEADY_AFTER_S`` seconds."""
    if not len(in_ts):
        return {}
    sec = ((in_ts - in_ts.min()) // 1000).astype(np.int64)
    return {
        f"{name}_per_input_second": per_second(sec, lat),
        f"{name}_steady": pcts(lat[sec >= STEADY_AFTER_S]),
    }


def per_second(sec: np.ndarray, lat: np.ndarray) -> dict[str, list[float | None]]:
    """The median and the maximum of ``lat`` in each second ``sec`` (from the first input)."""
    per: dict[str, list[float | None]] = {"p50": [], "max": []}
    for i in range(int(sec.max()) + 1 if len(sec) else 0):
        vals = lat[sec == i]
        per["p50"].append(round(float(np.median(vals)), 1) if len(vals) else None)
        per["max"].append(round(float(vals.max()), 1) if len(vals) else None)
    return per


def pcts(a: np.ndarray) -> dict[str, float | None]:
    return {"p50": _pct(a, 50), "p90": _pct(a, 90), "p99": _pct(a, 99), "max": _pct(a, 100)}


async def watch(
    ctx: Ctx,
    proc: Proc,
    out: str,
    expected: int,
    timeout: float,
    profile_as: str | None = None,
    scrape: bool = False,
) -> dict[str, Any]:
    """Run ``proc`` until ``out`` holds ``expected`` records (or timeout / the process dies),
    sampling the CPU time of the process and the broker; then stop it. ``scrape``: read the
    worker's stall histograms from its metrics endpoint before stopping it."""
    from aiokafka import AIOKafkaConsumer

    watcher = AIOKafkaConsumer(bootstrap_servers=ctx.bootstrap, enable_auto_commit=False)
    await watcher.start()
    samples: list[tuple[Any, ...]] = []  # (time, then one reading per column of ``cols`` below)
    spy: subprocess.Popen[bytes] | None = None
    # (time, the event loop's CPU seconds in all and per stage) read once the first output is
    # out and again at the end: the drain's own CPU split, without the start-up's
    first_cpu: tuple[float, dict[str, float]] | None = None
    last_cpu: tuple[float, dict[str, float]] | None = None
    status = "ok"
    load0 = loadavg()
    proc.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            now = time.time()
            samples.append(
                (
                    now,
                    tree_cpu_seconds(proc.pid),
                    cpu_seconds(ctx.broker_pid),
                    cpu_seconds(proc.pid, proc.pid),
                    cpu_seconds(proc.pid, proc.pid, system_only=True),
                    runqueue_wait_seconds(proc.pid, proc.pid),
                    machine_cpu_seconds(),
                    machine_cpu_seconds(steal=True),
                    minor_faults(proc.pid),
                )
            )
            n = await end_count(watcher, out)
            if n >= expected:
                break
            if not proc.alive():
                status = f"exited with {proc.popen.returncode if proc.popen else '?'}"
                print(proc.tail(), file=sys.stderr)
                break
            if time.monotonic() > deadline:
                status = f"timeout after {timeout:.0f} s ({n}/{expected} records)"
                break
            if profile_as and spy is None and n > 0 and ctx.profile_dir is not None:
                spy = start_profile(ctx, proc, profile_as)
            if scrape and first_cpu is None and n > 0 and proc.alive():
                t_first, first = await _timed_scrape(proc)
                first_cpu = (t_first, first["cpu_s"]) if first and "cpu_s" in first else None
            await asyncio.sleep(0.25)
    finally:
        await watcher.stop()
        stalls = None
        if scrape and proc.alive():
            t_last, stalls = await _timed_scrape(proc)
            last_cpu = (t_last, stalls["cpu_s"]) if stalls and "cpu_s" in stalls else None
        peak_rss = peak_rss_mb(proc.pid) if proc.alive() else None
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(ctx.profile_s + 30)
        proc.stop()
    records = await read_all(ctx.bootstrap, out)
    ts = np.array(sorted(t for t, _ in records), dtype=np.int64)
    span = float(ts[-1] - ts[0]) / 1000.0 if len(ts) > 1 else 0.0
    res: dict[str, Any] = {
        "status": status,
        "output_records": len(records),
        "expected_records": expected,
        "span_s": round(span, 3),
        "first_output_after_start_s": round(float(ts[0]) / 1000.0 - proc.started, 2) if len(ts) else None,
        "loadavg_start": load0,
        "loadavg_end": loadavg(),
        "log": str(proc.log),
    }
    if len(ts) > 1:
        t0, t1 = float(ts[0]) / 1000.0, float(ts[-1]) / 1000.0
        # the main thread runs the event loop (scoring, state, Faust): the GIL-bound part
        cols = (
            "process_cpu_s",
            "broker_cpu_s",
            "main_thread_cpu_s",
            "main_thread_sys_cpu_s",
            "main_thread_runqueue_wait_s",
            "machine_cpu_s",
            "machine_steal_s",
            "minor_faults",
        )
        for col, key in enumerate(cols, start=1):
            series = [(s[0], s[col]) for s in samples]
            a, b = _interp(series, t0), _interp(series, t1)
            res[key] = round(b - a, 2) if a is not None and b is not None else None
        if res.get("main_thread_cpu_s") is not None and span > 0:
            res["main_thread_busy"] = round(res["main_thread_cpu_s"] / span, 3)
        if res.get("machine_cpu_s") is not None and span > 0:
            # every process on the machine: the worker, the broker, this script's feeder and reader
            res["machine_busy"] = round(res["machine_cpu_s"] / span / (os.cpu_count() or 1), 3)
    if res.get("minor_faults") is not None:
        res["minor_faults"] = int(res["minor_faults"])
    res["peak_rss_mb"] = peak_rss
    if stalls is not None:
        res["stalls"] = stalls
    if first_cpu is not None and last_cpu is not None:
        res["drain_cpu"] = drain_cpu(first_cpu, last_cpu, samples, ts)
    res["_records"] = records
    return res


async def _timed_scrape(proc: Proc) -> tuple[float, dict[str, Any] | None]:
    """(the wall time halfway through the scrape, :func:`scrape_stalls`)."""
    t0 = time.time()
    got = await asyncio.to_thread(scrape_stalls, proc)
    return (t0 + time.time()) / 2, got


def drain_cpu(
    first: tuple[float, dict[str, float]],
    last: tuple[float, dict[str, float]],
    samples: list[tuple[Any, ...]],
    out_ts: np.ndarray,
) -> dict[str, Any]:
    """The event loop's CPU between two scrapes of the worker's counters (the first taken once
    its first risk event was out, the last after its last one): in all, per stage, and outside
    the stages (``other``: Kafka intake, Faust, asyncio, alignment, acks, metrics). With the
    risk events written in that window (``out_ts``: their timestamps, ms) and the main thread's
    CPU from ``samples`` over the same window, the figures per message come from the caller
    (``risk_stats``), which knows the message mix."""
    t0, t1 = first[0], last[0]
    d = {k: round(last[1].get(k, 0.0) - v, 4) for k, v in first[1].items()}
    stages = sum(v for k, v in d.items() if k != "event_loop")
    d["other"] = round(d.get("event_loop", 0.0) - stages, 4)
    main = [(s[0], s[3]) for s in samples]
    a, b = _interp(main, t0), _interp(main, t1)
    return {
        "window_s": round(t1 - t0, 3),
        "risk_events": int(((out_ts >= t0 * 1000) & (out_ts <= t1 * 1000)).sum()),
        "main_thread_cpu_s": round(b - a, 3) if a is not None and b is not None else None,
        "cpu_s": d,
    }


def scrape_stalls(proc: Proc) -> dict[str, Any] | None:
    """The worker's event-loop lag, GC pause and state-flush histograms, and the CPU seconds of
    its event-loop thread, in all and per stage (``cpu_s``), the messages consumed and produced
    per topic (``events_in``, ``events_out``), the alignment waits that ran out by kind
    (``align_expired``), what the collector freed by generation (``gc_collected``) and the waits
    for the terminal table (``terminal_overlay``: transactions scored with forwarded labels on
    top of the terminal table); all cumulative since start."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = proc.metrics()
    except OSError as exc:
        return {"error": repr(exc)}
    wanted = {
        "riskstream_event_loop_lag_seconds": "event_loop_lag_s",
        "riskstream_gc_pause_seconds": "gc_pause_s",
        "riskstream_state_flush_users": "state_flush_users",
        "riskstream_input_fetch_records": "fetch_records",
    }
    counted = {
        # alignment waits that ran out, by kind: each may have scored events out of order
        "riskstream_input_align_expired": ("align_expired", "kind"),
        # what the cyclic collector freed, by generation (reference cycles)
        "riskstream_gc_collected_objects": ("gc_collected", "generation"),
        # messages per topic so far (the terminal loop's: its internal topic)
        "riskstream_events_in": ("events_in", "topic"),
        "riskstream_events_out": ("events_out", "topic"),
    }
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name in ("riskstream_event_loop_cpu_seconds", "riskstream_stage_cpu_seconds"):
            cpu = out.setdefault("cpu_s", {})
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    cpu[smp.labels.get("stage", "event_loop")] = round(smp.value, 4)
            continue
        if fam.name.startswith("riskstream_terminal_overlay_"):
            # streams/terminal_overlay.py: transactions that used it, labels dropped, its size now
            ov = out.setdefault("terminal_overlay", {})
            for smp in fam.samples:
                if not smp.name.endswith("_created"):
                    ov[fam.name.removeprefix("riskstream_terminal_overlay_")] = int(smp.value)
            continue
        by_label = counted.get(fam.name)
        if by_label is not None:
            # counter totals by one label, cumulative since start
            name, label = by_label
            got = out.setdefault(name, {})
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    got[smp.labels[label]] = int(smp.value)
            continue
        key = wanted.get(fam.name)
        if key is None:
            continue
        for smp in fam.samples:
            # All label values summed; GC pauses also per generation.
            hs = [out.setdefault(key, {"buckets": {}})]
            if "generation" in smp.labels:
                by_gen = out.setdefault(f"{key}_by_generation", {})
                hs.append(by_gen.setdefault(smp.labels["generation"], {"buckets": {}}))
            for h in hs:
                if smp.name.endswith("_bucket"):
                    le = smp.labels["le"]
                    h["buckets"][le] = h["buckets"].get(le, 0) + int(smp.value)
                elif smp.name.endswith("_count"):
                    h["count"] = h.get("count", 0) + int(smp.value)
                elif smp.name.endswith("_sum"):
                    h["sum"] = round(h.get("sum", 0.0) + smp.value, 4)
    return out


def start_profile(ctx: Ctx, proc: Proc, name: str) -> subprocess.Popen[bytes] | None:
    spy_bin = Path(sys.executable).with_name("py-spy")
    if not spy_bin.exists() or ctx.profile_dir is None:
        return None
    ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.profile_dir / f"{name}.txt"
    ctx.profiles[name] = str(path)
    cmd = [str(spy_bin), "record", "-p", str(proc.pid), "-d", str(int(ctx.profile_s)), "-f", "raw"]
    cmd += ctx.profile_args
    return subprocess.Popen(
        [*cmd, "-o", str(path), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )


def risk_stats(res: dict[str, Any], msgs: Messages) -> dict[str, Any]:
    """Rates of a run that emits one risk event per transaction."""
    import orjson

    records = res.pop("_records")
    docs = [orjson.loads(v) for _, v in records]
    ids = [d["transaction_id"] for d in docs]
    res["batches"] = batch_stats(docs)
    span = res["span_s"]
    distinct = len(set(ids))
    # the messages consumed between the first and the last risk event: those between the first
    # and the last transaction, scaled down if the run stopped early
    covered = msgs.between_txns * min(distinct / msgs.n_txn, 1.0)
    res.update(
        {
            "distinct_transactions": distinct,
            "duplicates": len(ids) - distinct,
            "messages_per_s": round(covered / span, 1) if span else None,
            "transactions_per_s": round(distinct / span, 1) if span else None,
        }
    )
    if res.get("process_cpu_s"):
        res["messages_per_cpu_s"] = round(covered / res["process_cpu_s"], 1)
    dc = res.get("drain_cpu")
    if dc and dc["risk_events"]:
        # the messages consumed while those risk events were written, at the window's mix
        n = dc["messages"] = round(dc["risk_events"] * msgs.between_txns / msgs.n_txn)
        dc["us_per_message"] = {k: round(v / n * 1e6, 2) for k, v in dc["cpu_s"].items()}
    return res


def batch_stats(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Micro-batches as seen in the risk events: events sharing a scored time and an inference
    time came from one model call."""
    sizes: dict[tuple[int, float], int] = {}
    for d in docs:
        k = (d["scored_time"], d["latency_ms"].get("inference", 0.0))
        sizes[k] = sizes.get(k, 0) + 1
    if not sizes:
        return {}
    n = np.array(list(sizes.values()))
    inf = np.array([k[1] for k in sizes])
    return {
        "model_calls": len(n),
        "transactions_per_call_mean": round(float(n.mean()), 1),
        "transactions_per_call_p50": float(np.median(n)),
        "transactions_per_call_max": int(n.max()),
        "inference_ms_per_call_mean": round(float(inf.mean()), 3),
        "inference_ms_total": round(float(inf.sum()), 1),
    }


def relay_stats(res: dict[str, Any]) -> dict[str, Any]:
    records = res.pop("_records")
    span = res["span_s"]
    res["messages_per_s"] = round(len(records) / span, 1) if span else None
    if res.get("process_cpu_s"):
        res["messages_per_cpu_s"] = round(len(records) / res["process_cpu_s"], 1)
    return res
