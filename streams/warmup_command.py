"""``riskstream warmup FILE``."""

from __future__ import annotations

import argparse

HELP = "Seed the workers' user and terminal state from a history file (run before the first worker starts)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--from", dest="start", help="first event date of the history (inclusive)")
    p.add_argument("--until", dest="end", help="end of the history (exclusive): where live traffic starts")
    p.add_argument("--no-clicks", action="store_true", help="without the synthetic clickstream")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from modeling.features import FeatureEngine
    from modeling.settings import feature_config, load_settings
    from streams.warmup import build_state, seed_state
    from training.history import event_stream, load_history

    settings = load_settings()
    t0 = time.perf_counter()
    df = load_history(args.file, args.start, args.end)
    stream = event_stream(df, feature_config(settings), clicks=not args.no_clicks)
    runner, n = build_state(stream.events(), FeatureEngine(feature_config(settings)))
    users, terminals = asyncio.run(seed_state(runner, settings))
    print(
        f"seeded {users:,} user and {terminals:,} terminal states from {n:,} transactions "
        f"into app {settings.app_id!r} in {time.perf_counter() - t0:.1f} s"
    )
    return 0
