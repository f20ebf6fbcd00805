"""``riskstream worker``: run one scorer worker process (several form one consumer group)."""

from __future__ import annotations

import argparse
import asyncio
import logging

HELP = "Run a live scorer worker: consume transactions/clickstream/labels, emit risk events."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loglevel", default="info")
    p.add_argument("--web-port", type=int, default=None, help="Faust web port (overrides settings)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (overrides settings)")


def run(args: argparse.Namespace) -> int:
    import faust

    from modeling.native import status
    from modeling.settings import load_settings
    from streams import gc_pauses
    from streams.app import build_app
    from streams.broker.topics import (
        ensure_project_topics,
        read_topic_limits,
        terminal_state_changelog,
        user_state_changelog,
    )
    from streams.group import MemberResets, instance_in_group, watch_member_resets
    from streams.store_files import drop_stale
    from streams.terminal_store import DiskTerminalStore
    from streams.user_store import DiskUserStore

    overrides = {}
    if args.web_port is not None:
        overrides["web_port"] = args.web_port
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    settings = load_settings(**overrides)
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(ensure_project_topics(settings, internal=True))
        # an operator's dead-letter topic may take less than riskstream creates it with:
        # dead letters are cut to fit it (streams/unreadable.py, fit)
        dead_limit = loop.run_until_complete(read_topic_limits(settings, [settings.topic_dead_letter]))
    except BaseException:  # the CLI reports it (a TopicError: unreachable, partition counts)
        asyncio.set_event_loop(None)
        loop.close()
        raise
    rt = build_app(settings, dead_letter_limit=dead_limit.get(settings.topic_dead_letter))
    if settings.group_instance_id:
        # Another member on this instance id already: this worker replaces it (a restart, or a
        # second worker on one id, when the older one should be the one to stop: streams/group.py)
        replacing = loop.run_until_complete(instance_in_group(settings))
        watch_member_resets(rt.app, MemberResets(settings.group_instance_id, replacing=replacing))
    if isinstance(rt.user_states, DiskUserStore):
        # databases not built from this changelog (or that cannot be checked against it):
        # deleted before Faust opens them
        paths = rt.user_states.paths(settings.topic_partitions)
        loop.run_until_complete(drop_stale(settings, user_state_changelog(settings), paths))
    if isinstance(rt.terminal_states, DiskTerminalStore):
        terminal_paths = {0: rt.terminal_states.path()}
        terminal_log = terminal_state_changelog(settings)
        loop.run_until_complete(drop_stale(settings, terminal_log, terminal_paths, "terminal-state"))
    collector = gc_pauses.tune(rt.metrics, settings.gc_thresholds, auto_full=settings.gc_auto_full)
    gc_pauses.schedule(rt.app, collector, settings.gc_sweep_interval_s)
    rt.metrics.serve(settings.metrics_port)
    shadow = rt.watcher.shadow()
    logging.getLogger("riskstream.worker").info(
        "serving model %s (feature set %s)%s; metrics on :%d",
        rt.watcher.scorer().version,
        rt.watcher.scorer().feature_set,
        f", {shadow.behaviour.version} in shadow" if shadow is not None else "",
        settings.metrics_port,
    )
    native = status()
    logging.getLogger("riskstream.worker").info(
        "hot-path modules: %s",
        "compiled (mypyc)" if native["compiled"] else f"Python sources: {native['reason']}",
    )
    worker = faust.Worker(rt.app, loglevel=args.loglevel, loop=loop, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
