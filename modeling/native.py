"""The hot-path modules compiled ahead of time by mypyc, from the very same sources.

mypyc (part of mypy, which already type-checks this code strictly) compiles type-annotated
modules into C extensions. Compiled, the feature engine, its window state, the decisions, the
scorer and the worker's batch step take about a quarter less time per message (the worker end to
end: 5-10 % faster), and the feature code stays one definition: the trainer, the backtest and the
live worker import the same modules, compiled or not (``benchmarks/README.md``, session 23).

``python -m modeling.native_build`` compiles :data:`MODULES` in place (``make setup`` does, when
a C compiler is present) and records a digest of their sources. At import, the compiled set is
used only when that digest matches the sources present: after any edit, or without a build, the
sources are loaded instead, all of them (compiled modules call each other's native classes
directly, so the set is never mixed). :func:`status` says which, and why.
``python -m modeling.native_build clean`` removes the build; ``status`` prints the state.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "modeling.features.aggregators",
    "modeling.features.config",
    "modeling.features.engine",
    "modeling.features.state",
    "modeling.scoring",
    "modeling.decisions",
    "streams.pipeline",
    "streams.terminal_overlay",
)
# Not modeling/records.py: compiled, its msgspec Structs lost their class options (a risk event
# was encoded without its "schema" tag; tests/modeling/test_records.py caught it).
# The shared library the compiled modules live in, inside the package so that an editable
# install (which maps packages, not the repository root) finds it.
GROUP = "modeling._compiled"
STAMP = Path(__file__).with_name("_compiled.json")
PACKAGES = ("modeling", "streams", "training")
_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)

_reason: str | None = "not checked yet"


def source_file(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def source_digest() -> str:
    """sha256 over the compiled modules' names and sources."""
    h = hashlib.sha256()
    for m in MODULES:
        h.update(m.encode() + b"\0" + source_file(m).read_bytes() + b"\0")
    return h.hexdigest()


def extension_files() -> list[Path]:
    """Every extension module in the project's packages: the build's, and any left by an earlier
    build of another module list (none of the packages ships one of its own)."""
    return sorted({f for pkg in PACKAGES for suffix in _SUFFIXES for f in (ROOT / pkg).rglob(f"*{suffix}")})


def why_sources(stamp: Path = STAMP) -> str | None:
    """None when the compiled set matches the sources; else why the sources are loaded."""
    if not stamp.exists():
        return "not built (python -m modeling.native_build)"
    try:
        built = json.loads(stamp.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable build record {stamp.name}: {exc}"
    if built.get("modules") != list(MODULES):
        return "built for another module list"
    if built.get("python") != sys.implementation.cache_tag:
        return f"built for {built.get('python')}, running {sys.implementation.cache_tag}"
    if built.get("digest") != source_digest():
        return "sources changed since the build (python -m modeling.native_build)"
    missing = [m for m in MODULES if not _built(m)]
    if missing:
        return f"extension modules missing: {', '.join(missing)}"
    extra = sorted(extension_modules() - set(MODULES))
    if extra:
        return f"extension modules outside the build: {', '.join(extra)}"
    return None


def extension_modules() -> set[str]:
    """The module names of :func:`extension_files`, less the compiled set's shared library."""
    names = set()
    for f in extension_files():
        rel = str(f.relative_to(ROOT))
        suffix = max((s for s in _SUFFIXES if rel.endswith(s)), key=len)
        names.add(rel[: -len(suffix)].replace("/", "."))
    names.discard(GROUP + "__mypyc")
    return names


def _built(module: str) -> bool:
    stem = str(source_file(module).with_suffix(""))
    return any(Path(stem + suffix).exists() for suffix in _SUFFIXES)


class _Sources(importlib.abc.MetaPathFinder):
    """Loads :data:`MODULES`, and any other module an extension file stands beside, from their
    ``.py`` files, ahead of the extensions."""

    def __init__(self) -> None:
        self.names = {m for m in {*MODULES, *extension_modules()} if source_file(m).exists()}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, source_file(fullname))


def use_sources(reason: str) -> None:
    """Load the sources of :data:`MODULES` from now on (before any of them is imported)."""
    global _reason
    loaded = [m for m in MODULES if m in sys.modules]
    if loaded:
        raise RuntimeError(f"too late to load sources: {', '.join(loaded)} already imported")
    if not any(isinstance(f, _Sources) for f in sys.meta_path):
        sys.meta_path.insert(0, _Sources())
    _reason = reason


def install() -> None:
    """Called once by ``modeling/__init__.py``: keep the compiled set if it is current."""
    global _reason
    _reason = why_sources()
    if _reason is not None and extension_files():
        use_sources(_reason)


def status() -> dict[str, object]:
    """``compiled``: whether the compiled set is in use; ``reason``: why not; ``loaded``: how
    each of :data:`MODULES` imported so far was loaded (``compiled`` or ``source``)."""
    loaded = {
        m: "source" if str(getattr(sys.modules[m], "__file__", "")).endswith(".py") else "compiled"
        for m in MODULES
        if m in sys.modules
    }
    return {"compiled": _reason is None, "reason": _reason, "loaded": loaded}
