"""Print the runtime dependencies of pyproject.toml, one requirement a line, leaving out the named
distributions. The GPU image uses it to install everything riskstream needs except the CPU build of
Paddle (``paddlepaddle``), whose place the CUDA build (``paddlepaddle-gpu``) takes; pyproject.toml
stays the only dependency list. With ``--extra NAME`` it prints that optional-dependency group
instead: the CPU image builds the ``kerberos`` extra's wheel (gssapi) in a stage of its own, and
compiles the hot-path modules with mypy (``--extra dev --only mypy``: one requirement of a group).

    python docker/pyproject_deps.py --exclude paddlepaddle [pyproject.toml]
    python docker/pyproject_deps.py --extra kerberos [pyproject.toml]
    python docker/pyproject_deps.py --extra dev --only mypy [pyproject.toml]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    m = _NAME.match(req)
    if not m:
        raise ValueError(f"not a requirement: {req!r}")
    return canonical(m.group(1))


def dependencies(pyproject: Path, exclude: set[str]) -> list[str]:
    with pyproject.open("rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    skip = {canonical(n) for n in exclude}
    unknown = skip - {requirement_name(d) for d in deps}
    if unknown:
        # A rename in pyproject.toml must not silently let the CPU build back in.
        raise SystemExit(f"--exclude names no dependency of {pyproject}: {', '.join(sorted(unknown))}")
    return [d for d in deps if requirement_name(d) not in skip]


def extra(pyproject: Path, name: str) -> list[str]:
    """The requirements of the optional-dependency group ``name``."""
    with pyproject.open("rb") as f:
        extras: dict[str, list[str]] = tomllib.load(f)["project"].get("optional-dependencies", {})
    if name not in extras:
        raise SystemExit(f"{pyproject} has no extra {name!r} (it has {', '.join(sorted(extras))})")
    return extras[name]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pyproject", nargs="?", default="pyproject.toml", type=Path)
    p.add_argument("--exclude", action="append", default=[], metavar="NAME")
    p.add_argument("--extra", metavar="NAME", help="print this optional-dependency group instead")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="with --extra: just these")
    args = p.parse_args(argv)
    if args.extra is not None and args.exclude:
        p.error("--extra and --exclude do not combine")
    if args.only and args.extra is None:
        p.error("--only needs --extra")
    if args.extra is not None:
        reqs = extra(args.pyproject, args.extra)
        if args.only:
            wanted = {canonical(n) for n in args.only}
            missing = wanted - {requirement_name(r) for r in reqs}
            if missing:
                raise SystemExit(f"extra {args.extra!r} has no {', '.join(sorted(missing))}")
            reqs = [r for r in reqs if requirement_name(r) in wanted]
    else:
        reqs = dependencies(args.pyproject, set(args.exclude))
    sys.stdout.write("".join(f"{d}\n" for d in reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
