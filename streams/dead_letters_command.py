"""``riskstream dead-letters summary|redrive``: what the dead-letter topic holds, and sending chosen
dead letters back to their input topics once a setting that refused them is fixed
(``streams/dead_letters.py``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

HELP = "Summarize the dead-letter topic, or send chosen dead letters back to their input topics."


def _time_ms(text: str) -> int:
    """An ISO date or time (UTC unless it names a zone) in epoch milliseconds."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["summary", "redrive"])
    p.add_argument(
        "--topic",
        action="append",
        help="only dead letters from this input topic (or a stored state's kind: user-state, "
        "terminal-state); repeatable",
    )
    p.add_argument(
        "--field",
        action="append",
        help="only dead letters of this field (<key>, <message>, event_time, …); repeatable",
    )
    p.add_argument("--since", type=_time_ms, help="only dead letters written at or after this time (UTC)")
    p.add_argument("--until", type=_time_ms, help="only dead letters written before this time (UTC)")
    p.add_argument("--json", action="store_true", help="summary: print JSON")
    p.add_argument("--dry-run", action="store_true", help="redrive: say what would be sent, send nothing")
    p.add_argument(
        "--again",
        action="store_true",
        help="redrive: also those sent back before (recorded in <dead-letter topic>-redriven)",
    )


def run(args: argparse.Namespace) -> int:
    from modeling.settings import load_settings
    from streams.dead_letters import iter_letters, redrive

    settings = load_settings()
    if args.action == "redrive" and not (args.topic or args.field):
        print(
            "riskstream dead-letters redrive: choose what to send back with --topic and/or --field "
            "(see `riskstream dead-letters summary`)",
            file=sys.stderr,
        )
        return 2
    choice = {
        "topics": set(args.topic) if args.topic else None,
        "fields": set(args.field) if args.field else None,
        "since_ms": args.since,
        "until_ms": args.until,
    }
    if args.action == "summary":
        s = asyncio.run(_summary(settings, choice))
        if args.json:
            print(json.dumps(s.as_dict(), indent=2))
            return 0
        print(f"{settings.topic_dead_letter}: {s.total:,d} dead letters", end="")
        if s.first_ms is not None and s.last_ms is not None:
            first, last = (
                datetime.fromtimestamp(t / 1000, UTC).isoformat(timespec="seconds")
                for t in (s.first_ms, s.last_ms)
            )
            print(f", written {first} .. {last}", end="")
        print(f"; {s.cut:,d} cut to fit the topic" if s.cut else "")
        for (origin, fld), n in s.groups.most_common():
            print(f"{n:>9,d}  {origin}  {fld}: {s.example[(origin, fld)][:160]}")
        return 0
    letters = iter_letters(settings, **choice)
    report = asyncio.run(redrive(settings, letters, dry_run=args.dry_run, again=args.again))
    verb = "would send" if args.dry_run else "sent"
    for topic, n in sorted(report.sent.items()):
        print(f"{verb} {n:,d} back to {topic}")
    if not report.sent:
        print(f"{verb} nothing: no dead letter of an input record matched")
    if report.from_source:
        print(f"  {report.from_source:,d} read again from their source record (their dead letter was cut)")
    if report.skipped_sent:
        print(
            f"skipped {report.skipped_sent:,d} sent back before (or repeated in the topic);"
            " --again sends them anyway"
        )
    if report.skipped_states:
        print(f"skipped {report.skipped_states:,d} stored states (never re-sent)")
    if report.skipped_gone:
        print(f"skipped {len(report.skipped_gone):,d} cut dead letters whose source record is gone")
    return 1 if report.skipped_gone else 0


async def _summary(settings: Any, choice: dict[str, Any]) -> Any:
    from streams.dead_letters import Summary, iter_letters, summarize

    s = Summary()
    async for chunk in iter_letters(settings, **choice):
        summarize(chunk, into=s)
    return s
