"""A local, versioned model registry: one directory per bundle, verified on load.

Layout under ``root``::

    <kind>/                      one namespace per model kind ("behaviour", "text", …)
        <kind>-0001/             a bundle: the exported program, params, extras, manifest.json
        <kind>-0002/
        CURRENT                  {"version": "<kind>-0002", ...}: what the scorer serves
        SHADOW                   {"version": "<kind>-0003", ...}: scored beside it, not acted on
    .staging-*/                  in-flight publishes (never read)

Publishing is atomic: files are copied into a staging directory inside ``root`` (same file
system), fsynced, and the directory is renamed into place with ``os.rename`` — which fails if the
name exists, so two concurrent publishers can never claim the same version (the loser retries with
the next number). Only then is ``CURRENT`` replaced (temp file, fsync, ``os.replace``). A reader
sees either no bundle or a complete one, and either the old or the new pointer.

``manifest.json`` records the sha256 of every other file of the bundle; :meth:`ModelRegistry.load`
recomputes them, refuses missing, altered or unlisted files, and refuses a bundle built for a
different feature set, each with an error naming the file or field.

A *shadow* version (a challenger) is scored by the workers next to the current one: its score and
decision go into every risk event and the metrics, but the decision served is the current
model's. ``publish(..., shadow=True)`` or :meth:`ModelRegistry.set_shadow` start it,
:meth:`ModelRegistry.promote` makes it current, :meth:`ModelRegistry.clear_shadow` stops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from modeling.clock import Clock, SystemClock
from modeling.errors import FeatureSetMismatch, ModelLoadError, RegistryError

MANIFEST: Final = "manifest.json"
CURRENT: Final = "CURRENT"
SHADOW: Final = "SHADOW"
BEHAVIOUR: Final = "behaviour"
TEXT: Final = "text"
_KIND_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_VERSION_RE: Final = re.compile(r"^([a-z][a-z0-9_]{0,31})-(\d{4,})$")
_CHUNK: Final = 1 << 20
#: manifest fields the caller supplies; the registry adds version, kind, created, files, libraries
REQUIRED_FIELDS: Final = ("training_data", "hyperparameters", "metrics", "thresholds")
_RESERVED: Final = ("version", "kind", "created", "files", "libraries")


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle: its directory and manifest. Files are not copied; do not modify them."""

    version: str
    kind: str
    path: Path
    manifest: dict[str, Any]

    @property
    def feature_set(self) -> str | None:
        fs = self.manifest.get("feature_set")
        return None if fs is None else str(fs)

    def file(self, name: str) -> Path:
        return self.path / name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def parse_version(version: str) -> tuple[str, int]:
    m = _VERSION_RE.match(version)
    if m is None:
        raise RegistryError(f"not a model version: {version!r} (expected '<kind>-NNNN')", version=version)
    return m.group(1), int(m.group(2))


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist, key in (
        ("paddlepaddle", "paddle"),
        ("paddlepaddle-gpu", "paddle"),
        ("numpy", "numpy"),
        ("riskstream", "riskstream"),
        ("paddlenlp", "paddlenlp"),
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.setdefault(key, metadata.version(dist))
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; bundles are read by other users (workers)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _bundle_files(root: Path) -> Iterator[Path]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST:
            yield p


class ModelRegistry:
    """Versioned bundles under ``root`` (the setting ``registry_dir``)."""

    def __init__(self, root: Path | str, clock: Clock | None = None) -> None:
        self.root = Path(root)
        self._clock: Clock = clock or SystemClock()

    # ------------------------------------------------------------------------------ reading

    def kinds(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _KIND_RE.match(p.name))

    def list(self, kind: str) -> list[str]:
        """Published versions of ``kind``, oldest first."""
        d = self._kind_dir(kind)
        if not d.is_dir():
            return []
        found = []
        for p in d.iterdir():
            m = _VERSION_RE.match(p.name)
            if p.is_dir() and m and m.group(1) == kind:
                found.append((int(m.group(2)), p.name))
        return [name for _, name in sorted(found)]

    def path(self, version: str) -> Path:
        kind, _ = parse_version(version)
        return self._kind_dir(kind) / version

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.path(version) / MANIFEST
        if not path.parent.is_dir():
            raise RegistryError(f"unknown model version {version!r}", root=str(self.root))
        try:
            obj = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise ModelLoadError(f"bundle {version} has no {MANIFEST}", path=str(path)) from None
        except json.JSONDecodeError as exc:
            raise ModelLoadError(
                f"{MANIFEST} of {version} is not valid JSON: {exc}", path=str(path)
            ) from None
        if not isinstance(obj, dict):
            raise ModelLoadError(f"{MANIFEST} of {version} is not a JSON object", path=str(path))
        return obj

    def current(self, kind: str) -> str | None:
        """The version the scorer serves: the latest published unless rolled back; None if none."""
        version = self._pointer(kind, CURRENT)
        if version is None:
            versions = self.list(kind)
            return versions[-1] if versions else None
        return version

    def shadow(self, kind: str) -> str | None:
        """The version scored in shadow beside the current one; None if none."""
        return self._pointer(kind, SHADOW)

    def _pointer(self, kind: str, name: str) -> str | None:
        """The version a pointer file names; None if there is no such file."""
        pointer = self._kind_dir(kind) / name
        try:
            obj = json.loads(pointer.read_bytes())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{pointer} is corrupt: {exc}", kind=kind) from None
        version = obj.get("version") if isinstance(obj, dict) else None
        if not isinstance(version, str):
            raise RegistryError(f"{pointer} names no version", kind=kind)
        return version

    def current_info(self, kind: str) -> dict[str, Any]:
        """The pointer's content (version, updated time, reason); {} if never written."""
        pointer = self._kind_dir(kind) / CURRENT
        try:
            obj = json.loads(pointer.read_bytes())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def load(self, version: str, expected_feature_set: str | None = None) -> LoadedBundle:
        """Verify and return a bundle: every checksum, no unlisted file, the feature set.

        :raises ModelLoadError: a file is missing, altered or not listed in the manifest.
        :raises FeatureSetMismatch: the bundle's ``feature_set`` differs from ``expected_feature_set``.
        """
        kind, _ = parse_version(version)
        path = self.path(version)
        if not path.is_dir():
            raise ModelLoadError(f"model bundle {version} does not exist", path=str(path))
        manifest = self.manifest(version)
        if manifest.get("version") != version or manifest.get("kind") != kind:
            raise ModelLoadError(
                f"{MANIFEST} of {version} names version {manifest.get('version')!r}, "
                f"kind {manifest.get('kind')!r}",
                path=str(path),
            )
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise ModelLoadError(f"{MANIFEST} of {version} lists no files with checksums", path=str(path))
        for name, expected in sorted(files.items()):
            f = path / name
            if not f.is_file():
                raise ModelLoadError(f"bundle {version} is missing file {name!r}", file=name, path=str(path))
            actual = sha256_file(f)
            if actual != expected:
                raise ModelLoadError(
                    f"checksum mismatch for {name!r} in bundle {version}: manifest says {expected}, "
                    f"file has {actual}",
                    file=name,
                    path=str(path),
                )
        for f in _bundle_files(path):
            rel = f.relative_to(path).as_posix()
            if rel not in files:
                raise ModelLoadError(
                    f"bundle {version} contains unlisted file {rel!r}", file=rel, path=str(path)
                )
        if expected_feature_set is not None:
            actual_fs = manifest.get("feature_set")
            if actual_fs != expected_feature_set:
                raise FeatureSetMismatch(
                    f"model {version} was trained on feature set {actual_fs!r} but the engine computes "
                    f"{expected_feature_set!r}",
                    field="feature_set",
                    version=version,
                )
        return LoadedBundle(version=version, kind=kind, path=path, manifest=manifest)

    def load_current(self, kind: str, expected_feature_set: str | None = None) -> LoadedBundle:
        version = self.current(kind)
        if version is None:
            raise RegistryError(f"no {kind!r} model has been published", root=str(self.root), kind=kind)
        return self.load(version, expected_feature_set)

    # ------------------------------------------------------------------------------ writing

    def publish(
        self, kind: str, staging_dir: Path | str, manifest: Mapping[str, Any], *, shadow: bool = False
    ) -> str:
        """Copy ``staging_dir`` into a new version of ``kind``, make it current (with ``shadow``:
        the shadow version, the current one unchanged), return the version."""
        if not _KIND_RE.match(kind):
            raise RegistryError(f"invalid model kind {kind!r} (lowercase letters, digits, underscores)")
        src = Path(staging_dir)
        if not src.is_dir():
            raise RegistryError(f"staging directory {src} does not exist")
        missing = [k for k in REQUIRED_FIELDS if k not in manifest]
        if kind == BEHAVIOUR and not manifest.get("feature_set"):
            missing.append("feature_set")
        if missing:
            raise RegistryError(f"manifest lacks required field(s) {missing}", kind=kind)
        reserved = [k for k in _RESERVED if k in manifest]
        if reserved:
            raise RegistryError(f"manifest field(s) {reserved} are set by the registry", kind=kind)
        if (src / MANIFEST).exists():
            raise RegistryError(f"staging directory already has a {MANIFEST}", path=str(src))

        if shadow:
            self._pin_current(kind)
        kind_dir = self._kind_dir(kind)
        kind_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; serving workers may run as another user
            files = {f.relative_to(tmp).as_posix(): sha256_file(f) for f in _bundle_files(tmp)}
            if not files:
                raise RegistryError(f"staging directory {src} is empty")
            body = dict(manifest)
            body.update(
                kind=kind,
                created=datetime.fromtimestamp(self._clock.now(), tz=UTC).isoformat(),
                files=files,
                libraries=library_versions(),
            )
            for f in _bundle_files(tmp):
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
            version = self._claim(kind, tmp, body)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if shadow:
            self._write_pointer(kind, SHADOW, version, reason="publish")
        else:
            self._set_current(kind, version, reason="publish")
        return version

    def set_shadow(self, kind: str, version: str) -> str:
        """Score ``version`` in shadow (verified first); returns it."""
        self._known(kind, version)
        if version == self.current(kind):
            raise RegistryError(f"{version} is the current {kind!r} version; it cannot also be its shadow")
        self.load(version)
        self._pin_current(kind)
        self._write_pointer(kind, SHADOW, version, reason="shadow")
        return version

    def clear_shadow(self, kind: str) -> str | None:
        """Stop scoring a shadow version; returns the version that was, if any."""
        version = self.shadow(kind)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._kind_dir(kind) / SHADOW)
            _fsync_dir(self._kind_dir(kind))
        return version

    def promote(self, kind: str) -> str:
        """Serve the shadow version (verified first) and stop shadowing; returns it."""
        version = self.shadow(kind)
        if version is None:
            raise RegistryError(f"no {kind!r} version is in shadow", kind=kind)
        self.load(version)
        # Current first: a worker that reads both between the two steps sees the shadow equal to
        # the current version, which it treats as no shadow.
        self._set_current(kind, version, reason="promote")
        self.clear_shadow(kind)
        return version

    def rollback(self, kind: str, to: str | None = None) -> str:
        """Serve ``to``, or the version published before the current one; returns it."""
        versions = self.list(kind)
        if not versions:
            raise RegistryError(f"no {kind!r} model has been published", kind=kind)
        if to is None:
            cur = self.current(kind)
            pos = versions.index(cur) if cur in versions else len(versions)
            if pos == 0:
                raise RegistryError(
                    f"{cur} is the oldest {kind!r} version; nothing to roll back to", kind=kind
                )
            target = versions[pos - 1]
        else:
            self._known(kind, to)
            target = to
        self.load(target)  # refuse to point the scorer at a corrupt bundle
        self._set_current(kind, target, reason="rollback")
        return target

    # ------------------------------------------------------------------------------ internals

    def _kind_dir(self, kind: str) -> Path:
        if not _KIND_RE.match(kind):
            raise RegistryError(f"invalid model kind {kind!r}")
        return self.root / kind

    def _claim(self, kind: str, tmp: Path, body: dict[str, Any]) -> str:
        kind_dir = self._kind_dir(kind)
        existing = self.list(kind)
        number = parse_version(existing[-1])[1] + 1 if existing else 1
        for _ in range(1000):
            version = f"{kind}-{number:04d}"
            body["version"] = version
            _write_json_atomic(tmp / MANIFEST, body)
            _fsync_dir(tmp)
            try:
                os.rename(tmp, kind_dir / version)
            except OSError:
                if (kind_dir / version).exists():
                    number += 1  # a concurrent publisher took this number
                    continue
                raise
            _fsync_dir(kind_dir)
            return version
        raise RegistryError(f"could not claim a version number for {kind!r}", kind=kind)

    def _known(self, kind: str, version: str) -> None:
        versions = self.list(kind)
        if parse_version(version)[0] != kind or version not in versions:
            raise RegistryError(f"unknown {kind!r} version {version!r}", kind=kind, known=versions)

    def _pin_current(self, kind: str) -> None:
        """Write the CURRENT pointer if only implied (the latest version): a shadow publish must
        not become current by being the latest."""
        if (self._kind_dir(kind) / CURRENT).exists():
            return
        cur = self.current(kind)
        if cur is None:
            raise RegistryError(f"no {kind!r} model is served yet, so none can run in shadow", kind=kind)
        self._set_current(kind, cur, reason="pinned")

    def _set_current(self, kind: str, version: str, reason: str) -> None:
        self._write_pointer(kind, CURRENT, version, reason)

    def _write_pointer(self, kind: str, name: str, version: str, reason: str) -> None:
        when = datetime.fromtimestamp(self._clock.now(), tz=UTC).isoformat()
        _write_json_atomic(
            self._kind_dir(kind) / name, {"version": version, "updated": when, "reason": reason}
        )
