"""``riskstream kafka fetch|start|stop|status|topics``: the local development broker."""

from __future__ import annotations

import argparse
import asyncio
import sys

from modeling.errors import RiskstreamError

HELP = "run the local Apache Kafka broker (KRaft, one node) and create the project's topics"

# `status` exit code when no broker runs (LSB: "program is not running").
NOT_RUNNING = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["fetch", "start", "stop", "status", "topics"],
        help="fetch: download the broker's jars (Maven); start/stop/status: the local broker at "
        "127.0.0.1:RISKSTREAM_KAFKA_PORT (status exits 3 when it is not running); topics: create "
        "the project's topics on RISKSTREAM_BOOTSTRAP_SERVERS",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")


def run(args: argparse.Namespace) -> int:
    from modeling.settings import load_settings
    from streams.broker.local import LocalKafka
    from streams.broker.topics import ensure_topics, project_topics
    from streams.security import client_kwargs

    settings = load_settings()
    broker = LocalKafka.from_settings(settings)
    try:
        if args.action == "fetch":
            print(f"Apache Kafka {broker.fetch()} jars in {broker.lib_dir}")
        elif args.action == "start":
            st = broker.start(timeout=args.timeout)
            print(
                f"Apache Kafka {st.version} (KRaft) running: pid {st.pid}, bootstrap {broker.bootstrap}, "
                f"logs {broker.log_dir}"
            )
        elif args.action == "stop":
            print("broker stopped" if broker.stop(timeout=args.timeout) else "no broker was running")
        elif args.action == "status":
            st = broker.status()
            state = f"running (pid {st.pid})" if st.running else "not running"
            print(
                f"broker: {state}\nversion: {st.version or 'jars not fetched'}\n"
                f"bootstrap: {broker.bootstrap}\ncontroller port: {st.controller_port}\nhome: {st.home}"
            )
            return 0 if st.running else NOT_RUNNING
        elif args.action == "topics":
            names = project_topics(settings)
            created = asyncio.run(
                ensure_topics(
                    settings.bootstrap_servers,
                    names,
                    settings.topic_replication,
                    **client_kwargs(settings),
                )
            )
            for name, partitions in names.items():
                print(f"{name}: {partitions} partitions ({'created' if name in created else 'exists'})")
    except RiskstreamError as exc:
        print(f"riskstream kafka {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
