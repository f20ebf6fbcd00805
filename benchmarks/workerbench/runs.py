"""Throughput: (a), (b) and (c) draining the backlog; the untimed py-spy runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workerbench.config import DEFAULT_WORKER
from workerbench.kafka import create_topics
from workerbench.latency import run_latency
from workerbench.measure import relay_stats, risk_stats, watch
from workerbench.procs import Ctx, floor_proc, plain_proc, relay_proc, seed_plain, seed_worker, worker_proc

# ------------------------------------------------------------------------------------ phases


async def run_worker(ctx: Ctx, label: str, overrides: dict[str, Any]) -> dict[str, Any]:
    worker = {**DEFAULT_WORKER, **overrides}
    out = ctx.name(f"a-{label}-risk")
    await create_topics(ctx.bootstrap, [out, f"{out}-dlq"])
    await seed_worker(ctx, ctx.name(f"a-{label}"))
    proc = worker_proc(ctx, f"a-{label}", ctx.backlog, out, worker)
    res = await watch(ctx, proc, out, ctx.msgs.n_txn, ctx.timeout, scrape=True)
    return {"system": "a", "label": label, "settings": worker, **risk_stats(res, ctx.msgs)}


async def run_plain(ctx: Ctx, label: str, overrides: dict[str, Any]) -> dict[str, Any]:
    worker = {**DEFAULT_WORKER, **overrides}
    out = ctx.name(f"b-{label}-risk")
    await create_topics(ctx.bootstrap, [out])
    await seed_plain(ctx, ctx.name(f"b-{label}"))
    proc = plain_proc(ctx, f"b-{label}", ctx.backlog, out, worker)
    res = await watch(ctx, proc, out, ctx.msgs.n_txn, ctx.timeout)
    return {"system": "b", "label": label, "settings": worker, **risk_stats(res, ctx.msgs)}


async def run_relay(ctx: Ctx, tag: str = "c") -> dict[str, Any]:
    out = ctx.name(f"{tag}-out")
    await create_topics(ctx.bootstrap, [out])
    proc = relay_proc(ctx, tag, ctx.backlog, out)
    res = await watch(ctx, proc, out, ctx.msgs.counts["messages"], ctx.timeout)
    return {"system": "c", "label": "raw-aiokafka", **relay_stats(res)}


async def run_floor(ctx: Ctx, history: tuple[Path, int, float] | None = None) -> dict[str, Any]:
    """(d), or (e) with ``history``: the file, transactions and start day of the message window."""
    system = "d" if history is None else "e"
    out = ctx.name(f"{system}-risk")
    await create_topics(ctx.bootstrap, [out])
    proc = floor_proc(ctx, system, ctx.backlog, out, history)
    res = await watch(ctx, proc, out, ctx.msgs.n_txn, ctx.timeout)
    label = "floor" if history is None else "floor-features"
    return {"system": system, "label": label, **risk_stats(res, ctx.msgs)}


async def run_profiles(ctx: Ctx, paced_rate: float | None, fraction: float, warmup: int) -> None:
    """Extra, untimed runs of (a) default and (b) draining the backlog, and of (a) default under
    the latency phase's paced feed, with py-spy attached once output flows."""
    assert ctx.profile_dir is not None
    out = ctx.name("pa-risk")
    await create_topics(ctx.bootstrap, [out, f"{out}-dlq"])
    await seed_worker(ctx, ctx.name("pa"))
    proc = worker_proc(ctx, "pa", ctx.backlog, out, DEFAULT_WORKER)
    (await watch(ctx, proc, out, ctx.msgs.n_txn, ctx.timeout, profile_as="worker")).pop("_records")
    out = ctx.name("pb-risk")
    await create_topics(ctx.bootstrap, [out])
    await seed_plain(ctx, ctx.name("pb"))
    proc = plain_proc(ctx, "pb", ctx.backlog, out, DEFAULT_WORKER)
    (await watch(ctx, proc, out, ctx.msgs.n_txn, ctx.timeout, profile_as="plain")).pop("_records")
    if paced_rate:
        secs = ctx.profile_s + 15.0
        await run_latency(ctx, "default", paced_rate, fraction, secs, "constant", warmup, "worker-paced")
