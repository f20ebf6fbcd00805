"""benchmarks/comparisons.py: the whole-run tables are read from the results, and the READMEs'
copies of them are current."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import comparisons  # noqa: E402


def _doc(
    a: float = 20_000.0,
    b: float = 1_900.0,
    c: float = 120_000.0,
    p99: float = 95.0,
    fraction: float = 0.5,
    b_status: str = "ok",
) -> dict[str, Any]:
    def run(system: str, label: str, rate: float, status: str = "ok") -> dict[str, Any]:
        return {
            "system": system,
            "label": label,
            "status": status,
            "messages_per_s": rate,
            "messages_per_cpu_s": rate * 1.1 if system == "a" else rate,
            "machine_steal_s": 0.25,
            "settings": {"pipeline_max_batch": 1536, "model_max_batch": 512},
        }

    return {
        "started": "2026-12-04T04:30:00+0000",
        "settings": {"latency_fraction": fraction},
        "runs": [
            run("a", "default", a),
            run("a", "flush-every-batch", a / 2),
            run("b", "default", b, b_status),
            run("c", "raw-aiokafka", c),
        ],
        "latency": [
            {
                "system": "a",
                "label": "latency-default-constant",
                "status": "ok",
                "feed": {"rate": a * fraction},
                "end_to_end_ms": {"p50": 40.0, "p99": p99},
            }
        ],
    }


def test_a_whole_run_is_read_with_its_ratios_and_targets() -> None:
    run = comparisons.parse("worker-x.json", _doc())
    assert run is not None
    assert run.a == 20_000.0  # the default run, not the sweep's other setting
    assert run.a_over_b == pytest.approx(20_000 / 1_900)
    assert run.a_over_b_per_cpu == pytest.approx(20_000 * 1.1 / 1_900)
    assert run.a_over_c == pytest.approx(1 / 6)
    assert run.met == (True, False, True)
    assert run.steal_s == 0.5
    assert run.short == ()


def test_targets_not_met() -> None:
    slow = comparisons.parse("w.json", _doc(a=15_000.0, p99=100.5))
    assert slow is not None and slow.met == (False, False, False)
    # the latency target is about half rate only
    quarter = comparisons.parse("w.json", _doc(p99=50.0, fraction=0.25))
    assert quarter is not None and quarter.met[2] is False
    half = comparisons.parse("w.json", _doc(a=60_000.0, p99=100.0))
    assert half is not None and half.met == (True, True, True)


def test_partial_documents_are_not_whole_runs() -> None:
    doc = _doc()
    doc["latency"] = []
    assert comparisons.parse("w.json", doc) is None
    doc = _doc()
    doc["runs"] = [r for r in doc["runs"] if r["system"] != "b"]
    assert comparisons.parse("w.json", doc) is None
    assert comparisons.parse("w.json", ["not", "a", "run"]) is None


def test_a_run_that_timed_out_is_marked() -> None:
    run = comparisons.parse("w.json", _doc(b_status="timeout after 150 s (29999/30000 records)"))
    assert run is not None and run.short == ("b",)
    text = comparisons.table([run])
    assert "1,900 †" in text and "timed out" in text


def test_load_orders_by_start_and_counts(tmp_path: Path) -> None:
    late, early = _doc(a=25_000.0), _doc(a=12_000.0)
    early["started"] = "2026-12-01T00:00:00+0000"
    (tmp_path / "worker-late.json").write_text(json.dumps(late))
    (tmp_path / "worker-early.json").write_text(json.dumps(early))
    (tmp_path / "worker-sweep.json").write_text(json.dumps({"runs": [], "latency": []}))
    (tmp_path / "pipeline.json").write_text(json.dumps(_doc()))  # not a worker results file
    runs = comparisons.load(tmp_path)
    assert [r.file for r in runs] == ["worker-early.json", "worker-late.json"]
    text = comparisons.counts(runs)
    assert "(a) ≥ 10× (b): met in 1 of 2 runs" in text
    assert "p99 ≤ 100 ms at half rate: met in 2 of 2 runs" in text
    assert "floors" not in text  # neither run measured them


def test_floors_are_read_where_measured() -> None:
    doc = _doc()
    doc["runs"] += [
        {"system": "d", "label": "floor", "status": "ok", "messages_per_s": 90_000.0},
        {"system": "e", "label": "floor-features", "status": "ok", "messages_per_s": 36_000.0},
    ]
    run = comparisons.parse("w.json", doc)
    assert run is not None and (run.d, run.e) == (90_000.0, 36_000.0)
    text = comparisons.counts([run])
    assert "(d) 75–75 % of (c)" in text
    assert "(e) 30–30 % of (c), 40–40 % of (d)" in text
    assert "(a) 56–56 % of (e)" in text


def test_markers() -> None:
    text = "a\n<!-- comparisons:all:begin -->\nold\n<!-- comparisons:all:end -->\nb"
    i, j = comparisons.marked(text, "all")
    assert text[i:j] == "old\n"
    with pytest.raises(ValueError, match="current"):
        comparisons.marked(text, "current")


def test_the_readmes_tables_are_the_stored_results() -> None:
    """README.md and benchmarks/README.md hold what the script renders from
    benchmarks/results/ (after a new run: benchmarks/comparisons.py --write)."""
    assert comparisons.main(["--check"]) == 0
