"""``riskstream replay FILE``."""

from __future__ import annotations

import argparse
import asyncio

HELP = "Replay a historical file (parquet/CSV/JSON lines) into the Kafka topics in event-time order."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--from", dest="start", help="first event date (inclusive), e.g. 2018-06-01")
    p.add_argument("--until", dest="end", help="last date (exclusive)")
    p.add_argument("--speed", type=float, default=None, help="multiple of real time, e.g. 3600; default: max")
    p.add_argument("--no-clicks", action="store_true", help="do not generate the synthetic clickstream")
    p.add_argument("--no-labels", action="store_true", help="do not emit delayed labels")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N transactions")
    p.add_argument(
        "--kafka-timestamps",
        choices=["now", "event"],
        default="now",
        help="record timestamps: the send time (default) or the event time. With event times older "
        "than the topics' retention.ms (7 days by default) the broker deletes the records at its next "
        "retention check: give the input topics retention.ms=-1 first",
    )
    p.add_argument("--create-topics", action="store_true", help="create the project's topics first")


def run(args: argparse.Namespace) -> int:
    from modeling.settings import feature_config, load_settings
    from streams.broker.topics import ensure_project_topics
    from streams.replay import replay_events
    from training.history import event_stream, load_history

    settings = load_settings()
    df = load_history(args.file, args.start, args.end)
    if args.limit:
        df = df.iloc[: args.limit]
    stream = event_stream(df, feature_config(settings), clicks=not args.no_clicks, labels=not args.no_labels)

    async def go() -> object:
        if args.create_topics:
            await ensure_project_topics(settings)
        return await replay_events(
            stream.events(),
            settings,
            total=len(stream),
            speed=args.speed,
            kafka_timestamps=args.kafka_timestamps,
        )

    report = asyncio.run(go())
    for topic, n in sorted(report.counts.items()):  # type: ignore[attr-defined]
        print(f"{topic:>28}: {n:>9,d} messages")
    print(f"{'total':>28}: {report.total:>9,d} in {report.seconds:.1f} s = {report.rate:,.0f} msg/s")  # type: ignore[attr-defined]
    return 0
