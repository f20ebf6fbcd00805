"""``riskstream group members|remove``: the workers' consumer group as the coordinator sees it,
and static members taken out of it (``streams/group.py``)."""

from __future__ import annotations

import argparse
import asyncio
import json

HELP = "Show the workers' consumer group, or remove static members stopped for good."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["members", "remove"])
    p.add_argument(
        "instance_ids",
        nargs="*",
        metavar="INSTANCE_ID",
        help="remove: the static instance ids of workers stopped for good (scaled away); their "
        "partitions move to the others now instead of after the session timeout",
    )
    p.add_argument("--json", action="store_true", help="members: print JSON")


def run(args: argparse.Namespace) -> int:
    from modeling.settings import Settings
    from streams.group import describe_group, remove_static_members

    settings = Settings()
    if args.action == "members":
        if args.instance_ids:
            raise SystemExit("riskstream group members: takes no instance ids")
        view = asyncio.run(describe_group(settings))
        if args.json:
            print(json.dumps(view.as_dict(), indent=2))
            return 0
        print(f"group {view.group}: {view.state}, {len(view.members)} members")
        for m in view.members:
            parts = "; ".join(f"{t} {','.join(map(str, ps))}" for t, ps in m.partitions.items())
            print(f"  {m.instance_id or '(dynamic)'}  {m.member_id}  {m.client_host}  {parts or '-'}")
        return 0
    if not args.instance_ids:
        raise SystemExit("riskstream group remove: name the instance ids to remove")
    results = asyncio.run(remove_static_members(settings, args.instance_ids))
    errors = {iid: results.get(iid, "no answer for it") for iid in args.instance_ids}
    for iid, err in errors.items():
        print(f"{iid}: {'removed' if err is None else err}")
    return 1 if any(errors.values()) else 0
