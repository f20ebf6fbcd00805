"""modeling/native.py: the compiled hot-path modules are the sources' twins, and a stale build is
never served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modeling import native

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "handbook_2w.parquet"

# Run in a fresh interpreter, compiled or from the sources: a digest of everything the compiled
# modules compute from a stretch of the shipped data (features as the model sees them, every
# user's and terminal's snapshot, the parsers' verdicts on good and bad input, the decisions),
# and how each module was loaded.
PROBE = r"""
import hashlib, json, sys
import modeling.native as native
if sys.argv[1] == "sources":
    native.use_sources("test")
import numpy as np
from modeling.decisions import Thresholds, decide
from modeling.errors import ValidationError
from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, stack
from modeling.records import RiskEvent, parse_click, parse_label, parse_transaction
from streams import pipeline, terminal_overlay  # noqa: F401  (loaded as the worker loads them)
from training.history import event_stream, load_history

config = FeatureConfig()
df = load_history(sys.argv[2]).head(int(sys.argv[3]))
runner = FeatureRunner(FeatureEngine(config))
feats = [f for _, f in runner.run(event_stream(df, config).events())]
h = hashlib.sha256()
for i in range(0, len(feats), 512):
    tab, seq = stack(feats[i : i + 512], config)
    h.update(tab.tobytes() + seq.tobytes() + bytes(f.late for f in feats[i : i + 512]))
for key in sorted(runner.users):
    h.update(key.encode() + runner.users[key].to_bytes())
for key in sorted(runner.terminals):
    h.update(key.encode() + runner.terminals[key].to_bytes())
inputs = [
    b'{"schema":"transaction/1","transaction_id":"t1","user_id":"u","terminal_id":"T","amount":12.5,'
    b'"event_time":1700000000000}',
    b'{"schema":"transaction/1","transaction_id":"t1","user_id":"u","terminal_id":"T","amount":"x",'
    b'"event_time":1700000000000}',
    b'{"schema":"transaction/1","transaction_id":"t1","user_id":"u","terminal_id":"T","amount":NaN,'
    b'"event_time":1700000000000}',
    b'{"schema":"transaction/1","transaction_id":"t1","user_id":"u","amount":1,"event_time":1}',
    b'{"schema":"click/1","user_id":"u","event_time":1700000000000,"type":"login","session_id":"s",'
    b'"device_id":"d","ip":"1.2.3.4"}',
    b'{"schema":"label/1","transaction_id":"t1","user_id":"u","terminal_id":"T","is_fraud":true,'
    b'"transaction_time":1700000000000,"label_time":1700000000001}',
    b"not json",
]
for parse in (parse_transaction, parse_click, parse_label):
    for raw in inputs:
        try:
            h.update(repr(parse(raw)).encode())
        except ValidationError as exc:
            h.update(f"{exc.field}:{exc}".encode())
event = RiskEvent("t1", "u", 0.5, "review", ("A", "B"), "m1", "fs", 1, 2, {"queue": 1.5})
h.update(event.to_json())
scores = np.linspace(0.0, 1.0, 101)
h.update(repr(decide(scores, Thresholds.from_dict({"review": 0.3, "decline": 0.8}))).encode())
print(json.dumps({"digest": h.hexdigest(), "transactions": len(feats), "status": native.status()}))
"""


def _probe(mode: str, rows: int = 20_000) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(DATA), str(rows)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _compiler() -> bool:
    return any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))


@pytest.mark.skipif(not _compiler(), reason="no C compiler: the sources run as they are")
def test_the_compiled_modules_are_built_and_current() -> None:
    """`make setup` builds them where a C compiler is present; a stale build means an edited
    hot-path module whose compiled twin was not rebuilt (`make native`)."""
    reason = native.why_sources()
    assert reason is None, f"{reason}: run `make native`"


@pytest.mark.slow
@pytest.mark.skipif(native.why_sources() is not None, reason="no current compiled build to compare")
def test_compiled_and_source_modules_compute_identical_bytes() -> None:
    compiled, sources = _probe("compiled"), _probe("sources")
    loaded_c, loaded_s = compiled["status"]["loaded"], sources["status"]["loaded"]
    assert set(loaded_c.values()) == {"compiled"} and len(loaded_c) == len(native.MODULES)
    assert set(loaded_s.values()) == {"source"} and len(loaded_s) == len(native.MODULES)
    assert compiled["transactions"] == sources["transactions"] > 5000
    assert compiled["digest"] == sources["digest"]


def test_a_build_of_other_sources_is_not_used(tmp_path: Path) -> None:
    stamp = tmp_path / "stamp.json"
    assert native.why_sources(stamp) == "not built (python -m modeling.native_build)"
    record = {"modules": list(native.MODULES), "python": sys.implementation.cache_tag, "digest": "0" * 64}
    stamp.write_text(json.dumps(record))
    assert native.why_sources(stamp) == "sources changed since the build (python -m modeling.native_build)"
    stamp.write_text(json.dumps({**record, "digest": native.source_digest(), "python": "cpython-399"}))
    assert native.why_sources(stamp) == f"built for cpython-399, running {sys.implementation.cache_tag}"
    stamp.write_text(json.dumps({**record, "modules": ["modeling.records"]}))
    assert native.why_sources(stamp) == "built for another module list"


def test_sources_cannot_be_chosen_once_a_module_is_loaded() -> None:
    import modeling.features  # noqa: F401

    with pytest.raises(RuntimeError, match="already imported"):
        native.use_sources("too late")
