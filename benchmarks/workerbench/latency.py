"""Latency: a process under test fed at a constant (or event-time) pace on fresh topics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from workerbench.config import DEFAULT_WORKER, SWEEP, sweep_entry
from workerbench.kafka import Topics, create_topics, end_count, read_all, settings_for
from workerbench.measure import batch_stats, over_time, pcts, per_second, scrape_stalls, watch
from workerbench.messages import event_time
from workerbench.procs import Ctx, relay_proc, seed_worker, worker_proc
from workerbench.system import HarnessGC, loadavg


async def paced_send(
    events: Sequence[Any], bootstrap: str, topics: Topics, rate: float | None
) -> dict[str, Any]:
    """Produce ``events`` in order at a constant message rate (``None``: as fast as possible),
    with replay_events' producer settings; Kafka timestamps are the send time."""
    import orjson
    from aiokafka import AIOKafkaProducer

    from modeling.records import ClickEvent, Transaction

    def topic(ev: Any) -> str:
        if isinstance(ev, Transaction):
            return topics.transactions
        return topics.clickstream if isinstance(ev, ClickEvent) else topics.labels

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=5,
        max_batch_size=512 * 1024,
        acks="all",
        enable_idempotence=True,
    )
    await producer.start()
    # Every topic's metadata before the clock starts: otherwise the first send to each topic
    # waits for it, the feed starts behind schedule and catches up in a burst.
    for name in topics.inputs:
        await producer.partitions_for(name)
    pending: list[asyncio.Future[Any]] = []
    acked: list[tuple[float, float]] = []  # (send time since the start, send -> acked)
    t0, cpu0 = time.monotonic(), time.process_time()
    behind = 0.0
    slept = 0  # index of the last message before which this loop gave way
    try:
        for i, ev in enumerate(events):
            if rate:
                ahead = t0 + i / rate - time.monotonic()
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
                    slept = i
                behind = max(behind, -ahead)
            if i - slept >= 64:
                # Behind schedule the loop never sleeps, and send() only appends to the
                # producer's batches: without a turn of the event loop its sender task cannot
                # send them, and records stamped at send() (CreateTime) waited in this process.
                await asyncio.sleep(0)
                slept = i
            t_send = time.monotonic()
            fut = await producer.send(topic(ev), orjson.dumps(ev.to_dict()), key=ev.user_id.encode())
            fut.add_done_callback(lambda _f, t=t_send: acked.append((t - t0, time.monotonic() - t)))
            pending.append(fut)
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    seconds = time.monotonic() - t0
    return {
        "messages": len(events),
        "seconds": round(seconds, 2),
        "rate": round(len(events) / seconds, 1),
        "max_behind_schedule_s": round(behind, 3),
        "producer_cpu_s": round(time.process_time() - cpu0, 2),  # this harness process
        # send() -> the broker's ack, per second of the feed: how long records stamped at send()
        # (CreateTime) took to be written
        "send_to_ack_ms_per_second": per_second(
            np.array([a[0] for a in acked]).astype(np.int64), np.array([a[1] * 1000 for a in acked])
        ),
    }


async def send_warmup(
    ctx: Ctx, topics: Topics, warm: Sequence[Any], out: str, n_out: int, feed: dict[str, Any]
) -> None:
    """Before a paced feed: send ``warm`` at once and wait until ``out`` holds ``n_out`` records
    (the process under test is up and assigned), then a second's pause."""
    from aiokafka import AIOKafkaConsumer

    await paced_send(warm, ctx.bootstrap, topics, None)
    c = AIOKafkaConsumer(bootstrap_servers=ctx.bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        while await end_count(c, out) < n_out:
            await asyncio.sleep(0.2)
    finally:
        await c.stop()
    await asyncio.sleep(1.0)
    feed["load_at_feed_start"] = loadavg()


async def run_latency(
    ctx: Ctx,
    label: str,
    max_rate: float,
    fraction: float,
    seconds: float,
    pacing: str,
    warmup: int,
    profile_as: str | None = None,
    tag_suffix: str = "",
) -> dict[str, Any]:
    """Fresh topics, one default worker, a constant (or event-time) paced feed; percentiles.
    ``tag_suffix`` names another set of topics for the same label (the untimed warm-up feeds)."""
    import orjson

    from modeling.records import Transaction
    from streams.replay import replay_events

    tag = f"lat-{label}-{pacing}" + (f"-{profile_as}" if profile_as else "") + tag_suffix
    worker = {**DEFAULT_WORKER, **SWEEP[sweep_entry(label)]}
    topics = Topics(ctx.name(f"{tag}-tx"), ctx.name(f"{tag}-clicks"), ctx.name(f"{tag}-labels"))
    out = ctx.name(f"{tag}-risk")
    await create_topics(
        ctx.bootstrap, [*topics.inputs, out, f"{out}-dlq"], log_append=ctx.paced_inputs(topics)
    )
    rate = max_rate * fraction
    events = ctx.msgs.events
    warm, rest = events[:warmup], events[warmup : warmup + int(rate * seconds)]
    warm_ids = {e.transaction_id for e in warm if isinstance(e, Transaction)}
    n_tx = len(warm_ids) + sum(isinstance(e, Transaction) for e in rest)
    await seed_worker(ctx, ctx.name(tag))
    proc = worker_proc(ctx, tag, topics, out, worker)
    feed: dict[str, Any] = {"pacing": pacing, "target_rate": round(rate, 1), "warmup_messages": len(warm)}

    async def produce() -> None:
        # the worker is up and assigned once the warm-up's risk events are out
        await send_warmup(ctx, topics, warm, out, len(warm_ids), feed)
        at_start = await asyncio.to_thread(scrape_stalls, proc)
        feed["_cpu_s_at_start"] = (at_start or {}).get("cpu_s")
        with HarnessGC(quiet=ctx.harness_gc == "quiet") as hgc:
            await paced_feed()
        feed["harness_gc"] = hgc.stats()

    async def paced_feed() -> None:
        if pacing == "constant":
            feed.update(await paced_send(rest, ctx.bootstrap, topics, rate))
        else:
            t = np.array([event_time(e) for e in rest], dtype=np.int64)
            natural = len(rest) / max((t[-1] - t[0]) / 1000.0, 1e-3)
            speed = rate / natural
            per_s = np.bincount(((t - t[0]) / 1000.0 / speed).astype(np.int64))
            feed.update({"speed": round(speed, 1), "peak_1s_rate": int(per_s.max())})
            rep = await replay_events(
                rest, settings_for(ctx.bootstrap, topics, out), speed=speed, progress=False
            )
            feed.update({"messages": rep.total, "seconds": round(rep.seconds, 2), "rate": round(rep.rate, 1)})

    producer_task = asyncio.create_task(produce())
    res = await watch(ctx, proc, out, n_tx, ctx.timeout + seconds, profile_as=profile_as, scrape=True)
    if not producer_task.done():
        producer_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await producer_task
    records = res.pop("_records")
    docs = [(ts, orjson.loads(v)) for ts, v in records]
    docs = [(ts, d) for ts, d in docs if d["transaction_id"] not in warm_ids]
    lat = {k: np.array([d["latency_ms"][k] for _, d in docs]) for k in ("end_to_end", "queue", "inference")}
    e2e = lat["end_to_end"]
    # Kafka timestamp -> the worker's receipt (Faust's time_in): fetch and hand-over delay
    before = e2e - lat["queue"] - lat["inference"]
    # input Kafka timestamp = scored time - end to end; output record timestamp - that
    in_ts = np.array([d["scored_time"] - d["latency_ms"]["end_to_end"] for _, d in docs])
    sec = ((in_ts - in_ts.min()) // 1000).astype(np.int64) if len(in_ts) else in_ts
    out_ts = [ts for ts, _ in docs]
    to_out = np.array(out_ts, dtype=np.float64) - in_ts
    span = (max(out_ts) - min(out_ts)) / 1000.0 if len(out_ts) > 1 else 0.0

    # The event-loop thread's CPU over the paced feed (warm-up excluded), per fed message: in all
    # and per stage (score, output, state_flush, terminal_labels; "other" is the rest: Faust, the
    # intake hand-off, asyncio, acks).
    cpu0, cpu1 = feed.pop("_cpu_s_at_start", None), (res.get("stalls") or {}).get("cpu_s")
    if cpu0 and cpu1 and feed.get("messages"):
        used = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
        used["other"] = used.get("event_loop", 0.0) - sum(v for k, v in used.items() if k != "event_loop")
        res["event_loop_cpu_us_per_message"] = {
            k: round(v / feed["messages"] * 1e6, 1) for k, v in sorted(used.items())
        }

    res.update(
        {
            "feed": feed,
            "scored_transactions": len(docs),
            "output_transactions_per_s": round(len(docs) / span, 1) if span else None,
            "batches": batch_stats([d for _, d in docs]),
            "end_to_end_ms": pcts(e2e),
            **over_time("end_to_end_ms", in_ts, e2e),
            # where each second's latency was: before the worker had the message, or in its queue
            "kafka_to_worker_receipt_ms_p50_per_input_second": per_second(sec, before)["p50"],
            "queue_in_worker_ms_p50_per_input_second": per_second(sec, lat["queue"])["p50"],
            "input_to_output_record_ms": pcts(to_out),
            "breakdown_ms": {
                "kafka_to_worker_receipt": pcts(before),
                "queue_in_worker": pcts(lat["queue"]),
                "inference_per_batch": pcts(lat["inference"]),
            },
        }
    )
    return {"system": "a", "label": f"latency-{label}-{pacing}", "settings": worker, **res}


async def warm_paced(
    ctx: Ctx, i: int, rate: float, fraction: float, seconds: float, warmup: int
) -> dict[str, Any]:
    """One untimed paced feed of (a) default (``--broker-warmup-feed``), on topics of its own.

    In every invocation of sessions 25 and 26 the broker's CPU over the first paced feeds was
    2-4x that of the later ones, whatever their settings (7.2, 3.7, 2.1, 1.7 s; 8.3, 5.3, 3.0,
    2.3 s; 6.4, 3.9, 2.9, 2.3 s), and the worker waited for a CPU accordingly: the first timed
    latency run met a broker still warming up on the paced paths (most likely its JIT), which
    the drains before it do not exercise."""
    w = await run_latency(ctx, "default", rate, fraction, seconds, "constant", warmup, tag_suffix=f"-warm{i}")
    keep = ("status", "span_s", "broker_cpu_s", "process_cpu_s", "main_thread_runqueue_wait_s")
    row: dict[str, Any] = {k: w.get(k) for k in (*keep, "machine_steal_s")}
    row.update(fed=w["feed"].get("rate"), p50_ms=w["end_to_end_ms"]["p50"], p99_ms=w["end_to_end_ms"]["p99"])
    return row


async def run_relay_latency(ctx: Ctx, rate: float, seconds: float, warmup: int) -> dict[str, Any]:
    """The latency floor: (c)'s relay on fresh topics under the same paced feed as (a)'s latency
    run; input record timestamp -> relayed record timestamp, matched by value."""
    tag = "lat-relay"
    topics = Topics(ctx.name(f"{tag}-tx"), ctx.name(f"{tag}-clicks"), ctx.name(f"{tag}-labels"))
    out = ctx.name(f"{tag}-out")
    await create_topics(ctx.bootstrap, [*topics.inputs, out], log_append=ctx.paced_inputs(topics))
    events = ctx.msgs.events
    warm, rest = events[:warmup], events[warmup : warmup + int(rate * seconds)]
    proc = relay_proc(ctx, tag, topics, out)
    feed: dict[str, Any] = {"pacing": "constant", "target_rate": round(rate, 1), "warmup_messages": len(warm)}

    async def produce() -> None:
        await send_warmup(ctx, topics, warm, out, len(warm), feed)
        with HarnessGC(quiet=ctx.harness_gc == "quiet") as hgc:
            feed.update(await paced_send(rest, ctx.bootstrap, topics, rate))
        feed["harness_gc"] = hgc.stats()

    producer_task = asyncio.create_task(produce())
    res = await watch(ctx, proc, out, len(warm) + len(rest), ctx.timeout + seconds)
    if not producer_task.done():
        producer_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await producer_task
    relayed = res.pop("_records")
    sent: dict[bytes, int] = {}
    for t in topics.inputs:
        for ts, value in await read_all(ctx.bootstrap, t):
            sent[value] = ts
    skip = len(warm)
    first_rest = sorted(sent.values())[skip] if len(sent) > skip else 0
    pairs = [(sent[v], ts - sent[v]) for ts, v in relayed if v in sent and sent[v] >= first_rest]
    in_ts = np.array([p[0] for p in pairs], dtype=np.float64)
    lat = np.array([p[1] for p in pairs], dtype=np.float64)
    res.update(
        {
            "feed": feed,
            "matched": len(lat),
            "input_to_output_record_ms": pcts(lat),
            **over_time("input_to_output_record_ms", in_ts, lat),
        }
    )
    return {"system": "c", "label": "latency-relay-constant", **res}
