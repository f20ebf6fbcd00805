"""Build the compiled hot-path modules of modeling/native.py with mypyc (``make native``).

    python -m modeling.native_build [build [--if-stale] | clean | status]

mypyc comes with mypy (a dev dependency); the build needs a C compiler and Python's headers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from modeling.native import (
    GROUP,
    MODULES,
    ROOT,
    STAMP,
    extension_files,
    source_digest,
    source_file,
    why_sources,
)


def build() -> None:
    """Compile :data:`MODULES` in place with mypyc and record their digest."""
    from mypyc.build import mypycify
    from setuptools import setup

    clean()
    cwd = Path.cwd()
    os.chdir(ROOT)  # build_ext --inplace places each extension by its module path
    try:
        with tempfile.TemporaryDirectory(prefix="riskstream-mypyc-") as tmp:
            files = [str(source_file(m).relative_to(ROOT)) for m in MODULES]
            ext = mypycify(files, opt_level="3", group_name=GROUP, target_dir=tmp)
            setup(
                name="riskstream-compiled",
                ext_modules=ext,
                script_args=[
                    "-q",
                    "build_ext",
                    "--inplace",
                    "--build-temp",
                    tmp,
                    "--build-lib",
                    f"{tmp}/lib",
                ],
                py_modules=[],
            )
    finally:
        os.chdir(cwd)
    record = {"modules": list(MODULES), "python": sys.implementation.cache_tag, "digest": source_digest()}
    STAMP.write_text(json.dumps(record, indent=2) + "\n")


def clean() -> None:
    STAMP.unlink(missing_ok=True)
    for f in extension_files():
        f.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = args[0] if args else "status"
    if cmd == "build":
        if "--if-stale" in args and why_sources() is None:
            print("compiled modules are current")
            return 0
        build()
        print(f"compiled {len(MODULES)} modules")
        return 0
    if cmd == "clean":
        clean()
        return 0
    if cmd == "status":
        reason = why_sources()
        print("compiled" if reason is None else f"sources: {reason}")
        return 0
    print("usage: python -m modeling.native_build [build [--if-stale] | clean | status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
