"""The model registry: versions, atomic publish, verification on load, current pointer, rollback."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from modeling.clock import ReplayClock
from modeling.errors import FeatureSetMismatch, ModelLoadError, RegistryError
from modeling.registry import MANIFEST, ModelRegistry, library_versions, sha256_file

FS = "fs1-0123456789abcdef"


def staged(tmp_path: Path, name: str = "stage", payload: bytes = b"weights") -> Path:
    d = tmp_path / name
    (d / "sub").mkdir(parents=True)
    (d / "model.json").write_text('{"program": 1}')
    (d / "model.pdiparams").write_bytes(payload)
    (d / "sub" / "vocab.txt").write_text("a\nb\n")
    return d


def manifest(**extra: object) -> dict[str, object]:
    m: dict[str, object] = {
        "feature_set": FS,
        "training_data": {"from": "2018-05-01", "until": "2018-07-01"},
        "hyperparameters": {"lr": 0.001},
        "metrics": {"val": {"average_precision": 0.7}},
        "thresholds": {"review": 0.5, "decline": 0.9},
    }
    m.update(extra)
    return m


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry", clock=ReplayClock(1_530_000_000.0))


def test_publish_assigns_versions_and_writes_a_full_manifest(reg: ModelRegistry, tmp_path: Path) -> None:
    assert reg.current("behaviour") is None
    assert reg.list("behaviour") == []
    v1 = reg.publish("behaviour", staged(tmp_path, "a"), manifest())
    v2 = reg.publish("behaviour", staged(tmp_path, "b", b"other"), manifest())
    assert (v1, v2) == ("behaviour-0001", "behaviour-0002")
    assert reg.list("behaviour") == [v1, v2]
    assert reg.current("behaviour") == v2
    m = reg.manifest(v2)
    assert m["version"] == v2 and m["kind"] == "behaviour" and m["feature_set"] == FS
    assert m["created"] == "2018-06-26T08:00:00+00:00"
    assert set(m["files"]) == {"model.json", "model.pdiparams", "sub/vocab.txt"}
    assert m["files"]["model.pdiparams"] == sha256_file(reg.path(v2) / "model.pdiparams")
    assert {"python", "numpy", "paddle", "riskstream"} <= set(m["libraries"]) == set(library_versions())
    for key in ("training_data", "hyperparameters", "metrics", "thresholds"):
        assert m[key] == manifest()[key]
    # readable by other users (workers), like any published file
    assert (reg.path(v2) / MANIFEST).stat().st_mode & 0o777 == 0o644
    assert reg.path(v2).stat().st_mode & 0o755 == 0o755
    # the staging directory is left as it was, and nothing is left over in the root
    assert not (tmp_path / "a" / MANIFEST).exists()
    assert sorted(p.name for p in reg.root.iterdir()) == ["behaviour"]


def test_kinds_are_separate_namespaces(reg: ModelRegistry, tmp_path: Path) -> None:
    reg.publish("behaviour", staged(tmp_path, "a"), manifest())
    t1 = reg.publish("text", staged(tmp_path, "b"), manifest(feature_set=None))
    assert t1 == "text-0001"
    assert reg.kinds() == ["behaviour", "text"]
    assert reg.current("text") == t1 and reg.current("behaviour") == "behaviour-0001"


def test_publish_refuses_incomplete_manifests(reg: ModelRegistry, tmp_path: Path) -> None:
    stage = staged(tmp_path)
    with pytest.raises(RegistryError, match="feature_set"):
        reg.publish("behaviour", stage, manifest(feature_set=None))
    bad = manifest()
    del bad["thresholds"]
    with pytest.raises(RegistryError, match="thresholds"):
        reg.publish("behaviour", stage, bad)
    with pytest.raises(RegistryError, match="set by the registry"):
        reg.publish("behaviour", stage, manifest(version="behaviour-0009"))
    with pytest.raises(RegistryError, match="invalid model kind"):
        reg.publish("Behaviour!", stage, manifest())
    with pytest.raises(RegistryError, match="does not exist"):
        reg.publish("behaviour", tmp_path / "nope", manifest())
    assert reg.list("behaviour") == []


def test_load_verifies_checksums_and_names_the_file(reg: ModelRegistry, tmp_path: Path) -> None:
    v = reg.publish("behaviour", staged(tmp_path), manifest())
    bundle = reg.load(v, expected_feature_set=FS)
    assert bundle.version == v and bundle.feature_set == FS and bundle.file("model.json").is_file()

    (reg.path(v) / "model.pdiparams").write_bytes(b"tampered")
    with pytest.raises(ModelLoadError, match=r"checksum mismatch for 'model.pdiparams'") as ei:
        reg.load(v)
    assert ei.value.context["file"] == "model.pdiparams"


def test_load_refuses_missing_and_unlisted_files(reg: ModelRegistry, tmp_path: Path) -> None:
    v = reg.publish("behaviour", staged(tmp_path), manifest())
    (reg.path(v) / "extra.bin").write_bytes(b"?")
    with pytest.raises(ModelLoadError, match=r"unlisted file 'extra\.bin'"):
        reg.load(v)
    (reg.path(v) / "extra.bin").unlink()
    (reg.path(v) / "sub" / "vocab.txt").unlink()
    with pytest.raises(ModelLoadError, match=r"missing file 'sub/vocab\.txt'"):
        reg.load(v)
    with pytest.raises(ModelLoadError, match="does not exist"):
        reg.load("behaviour-0042")


def test_load_refuses_a_corrupt_manifest(reg: ModelRegistry, tmp_path: Path) -> None:
    v = reg.publish("behaviour", staged(tmp_path), manifest())
    (reg.path(v) / MANIFEST).write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        reg.load(v)
    (reg.path(v) / MANIFEST).write_text(json.dumps({"version": "behaviour-0007", "kind": "behaviour"}))
    with pytest.raises(ModelLoadError, match="names version 'behaviour-0007'"):
        reg.load(v)


def test_load_refuses_another_feature_set(reg: ModelRegistry, tmp_path: Path) -> None:
    v = reg.publish("behaviour", staged(tmp_path), manifest())
    with pytest.raises(FeatureSetMismatch, match="fs1-other") as ei:
        reg.load(v, expected_feature_set="fs1-other")
    assert ei.value.context["field"] == "feature_set"
    assert reg.load_current("behaviour", FS).version == v


def test_rollback_and_publish_again(reg: ModelRegistry, tmp_path: Path) -> None:
    vs = [reg.publish("behaviour", staged(tmp_path, f"s{i}", bytes([i])), manifest()) for i in range(3)]
    assert reg.rollback("behaviour") == vs[1]
    assert reg.current("behaviour") == vs[1]
    assert reg.current_info("behaviour")["reason"] == "rollback"
    assert reg.rollback("behaviour") == vs[0]
    with pytest.raises(RegistryError, match="oldest"):
        reg.rollback("behaviour")
    assert reg.rollback("behaviour", to=vs[2]) == vs[2]
    with pytest.raises(RegistryError, match="unknown"):
        reg.rollback("behaviour", to="behaviour-0099")
    with pytest.raises(RegistryError, match="unknown"):
        reg.rollback("behaviour", to="text-0001")
    v4 = reg.publish("behaviour", staged(tmp_path, "s4"), manifest())
    assert reg.current("behaviour") == v4 == "behaviour-0004"
    with pytest.raises(RegistryError, match="no 'text' model"):
        reg.rollback("text")


def test_rollback_refuses_a_corrupt_target(reg: ModelRegistry, tmp_path: Path) -> None:
    v1 = reg.publish("behaviour", staged(tmp_path, "a"), manifest())
    reg.publish("behaviour", staged(tmp_path, "b"), manifest())
    (reg.path(v1) / "model.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"model\.json"):
        reg.rollback("behaviour")
    assert reg.current("behaviour") == "behaviour-0002"


def test_a_failed_publish_leaves_nothing_behind(reg: ModelRegistry, tmp_path: Path) -> None:
    stage = staged(tmp_path)
    (stage / "dangling").symlink_to(tmp_path / "missing-target")
    with pytest.raises(OSError):
        reg.publish("behaviour", stage, manifest())
    assert reg.list("behaviour") == []
    assert [p.name for p in reg.root.iterdir() if p.name.startswith(".staging")] == []
    assert reg.current("behaviour") is None


def test_concurrent_publishers_get_distinct_versions(reg: ModelRegistry, tmp_path: Path) -> None:
    stages = [staged(tmp_path, f"c{i}", os.urandom(64)) for i in range(6)]
    got: list[str] = []
    lock = threading.Lock()

    def pub(stage: Path) -> None:
        v = reg.publish("behaviour", stage, manifest())
        with lock:
            got.append(v)

    threads = [threading.Thread(target=pub, args=(s,)) for s in stages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"behaviour-{i:04d}" for i in range(1, 7)]
    for v in got:
        reg.load(v)


def test_a_reader_never_sees_a_half_bundle(reg: ModelRegistry, tmp_path: Path) -> None:
    """While bundles are being published, every version a reader lists loads and verifies."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            for v in reg.list("behaviour"):
                try:
                    reg.load(v)
                except BaseException as exc:  # pragma: no cover - the failure being tested for
                    errors.append(exc)
            cur = reg.current("behaviour")
            if cur is not None and cur not in reg.list("behaviour"):
                errors.append(AssertionError(f"current {cur} not listed"))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(8):
            reg.publish("behaviour", staged(tmp_path, f"r{i}", os.urandom(200_000)), manifest())
    finally:
        stop.set()
        t.join()
    assert errors == []


def test_shadow_version_lifecycle(reg: ModelRegistry, tmp_path: Path) -> None:
    """A challenger runs in shadow beside the served version until promoted or stopped."""
    with pytest.raises(RegistryError, match="none can run in shadow"):
        reg.publish("behaviour", staged(tmp_path, "z"), manifest(), shadow=True)
    assert reg.list("behaviour") == []  # refused before anything was written
    v1 = reg.publish("behaviour", staged(tmp_path, "a"), manifest())
    assert reg.shadow("behaviour") is None
    # Published as shadow: not served, although it is the latest (the implied pointer is pinned).
    os.remove(reg.root / "behaviour" / "CURRENT")
    v2 = reg.publish("behaviour", staged(tmp_path, "b", b"challenger"), manifest(), shadow=True)
    assert (reg.current("behaviour"), reg.shadow("behaviour")) == (v1, v2)
    assert reg.current_info("behaviour")["reason"] == "pinned"
    # A normal publish leaves the shadow as it is; promote serves the shadow and ends it.
    v3 = reg.publish("behaviour", staged(tmp_path, "c", b"third"), manifest())
    assert (reg.current("behaviour"), reg.shadow("behaviour")) == (v3, v2)
    assert reg.promote("behaviour") == v2
    assert (reg.current("behaviour"), reg.shadow("behaviour")) == (v2, None)
    assert reg.current_info("behaviour")["reason"] == "promote"
    with pytest.raises(RegistryError, match="no 'behaviour' version is in shadow"):
        reg.promote("behaviour")
    # set_shadow verifies; the served version cannot be its own shadow; unknown versions refused.
    with pytest.raises(RegistryError, match="current"):
        reg.set_shadow("behaviour", v2)
    with pytest.raises(RegistryError, match="unknown"):
        reg.set_shadow("behaviour", "behaviour-0042")
    (reg.path(v1) / "model.pdiparams").write_bytes(b"tampered")
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        reg.set_shadow("behaviour", v1)
    assert reg.shadow("behaviour") is None
    assert reg.set_shadow("behaviour", v3) == v3
    assert reg.clear_shadow("behaviour") == v3
    assert reg.shadow("behaviour") is None and reg.clear_shadow("behaviour") is None
    (reg.root / "behaviour" / "SHADOW").write_text("{not json")
    with pytest.raises(RegistryError, match="corrupt"):
        reg.shadow("behaviour")
