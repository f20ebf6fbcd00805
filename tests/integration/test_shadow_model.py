"""A challenger in shadow through the real broker: published while the worker runs, scored on
every transaction next to the served model without changing a decision, promoted without a
restart; a shadow bundle that fails verification is refused while the served model goes on, and
so does an unreadable CURRENT pointer."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import orjson
import pandas as pd
import pytest
from harness import Scenario, WorkerProc, consume, run, wait_caught_up, wait_model_info

from modeling.features import FeatureConfig
from modeling.records import Transaction, parse_risk_event
from modeling.registry import CURRENT, MANIFEST, ModelRegistry
from streams.replay import replay_events
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "handbook_2w.parquet"


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    df = load_history(DATA, "2018-06-11", "2018-06-14")
    users = sorted(df["user_id"].unique())[:300]
    return df[df["user_id"].isin(users)].reset_index(drop=True)


def _republish(reg: ModelRegistry, version: str, tmp: Path, *, shadow: bool) -> str:
    """Publish a copy of ``version`` (same weights) as a new version."""
    stage = tmp / f"stage-{time.monotonic_ns()}"
    shutil.copytree(reg.path(version), stage)
    (stage / MANIFEST).unlink()
    manifest = reg.manifest(version)
    for key in ("version", "kind", "created", "files", "libraries"):
        manifest.pop(key)
    return reg.publish("behaviour", stage, manifest, shadow=shadow)


def test_shadow_model_scores_beside_the_served_one_and_is_promoted_live(
    kafka_broker: str, model_registry: Path, tmp_path: Path, sample: pd.DataFrame
) -> None:
    reg_dir = tmp_path / "registry"
    shutil.copytree(model_registry, reg_dir)
    reg = ModelRegistry(reg_dir)
    served = reg.current("behaviour")
    assert served is not None
    sc = Scenario(kafka_broker, reg_dir, tmp_path, partitions=2)
    events = list(event_stream(sample, FeatureConfig()).events())
    thirds = [events[i * len(events) // 3 : (i + 1) * len(events) // 3] for i in range(3)]
    w = WorkerProc(sc, "a").start()
    try:
        w.wait_metrics()
        run(replay_events(thirds[0], sc.settings(), progress=False))
        wait_caught_up(sc, worker=w)
        challenger = _republish(reg, served, tmp_path, shadow=True)
        wait_model_info(w, behaviour=served, shadow=challenger)
        run(replay_events(thirds[1], sc.settings(), progress=False))
        wait_caught_up(sc, worker=w)
        assert reg.promote("behaviour") == challenger
        wait_model_info(w, behaviour=challenger, shadow="")
        # A tampered challenger is refused; the promoted model serves on.
        bad = _republish(reg, challenger, tmp_path, shadow=True)
        (reg.path(bad) / "model.pdiparams").write_bytes(b"tampered")
        deadline = time.monotonic() + 60
        while w.metric("riskstream_model_rejections_total", kind="shadow") < 1:
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.5)
        # An unreadable CURRENT pointer (a hand edit, a torn copy): the model refresh fails,
        # is counted, and the worker scores on with the model it has (before, the error left
        # Faust's timer task and crashed the worker).
        pointer = reg_dir / "behaviour" / CURRENT
        good = pointer.read_bytes()
        pointer.write_bytes(b'{"version": ')
        deadline = time.monotonic() + 60
        while w.metric("riskstream_housekeeping_errors_total", round="model_refresh") < 2:
            w.check_alive()
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.5)
        run(replay_events(thirds[2][: len(thirds[2]) // 2], sc.settings(), progress=False))
        wait_caught_up(sc, worker=w)
        w.check_alive()
        assert "model_refresh failed (RegistryError" in w.log_tail(400)
        pointer.write_bytes(good)
        run(replay_events(thirds[2][len(thirds[2]) // 2 :], sc.settings(), progress=False))
        wait_caught_up(sc, worker=w)
        assert w.metric("riskstream_housekeeping_errors_total", round="metrics_report") == 0
        in_shadow = sum(isinstance(e, Transaction) for e in thirds[1])
        pairs = {
            (s["decision"], s["shadow_decision"]) for s in w.label_sets("riskstream_shadow_decisions_total")
        }
        assert w.metric("riskstream_shadow_decisions_total") == in_shadow
        assert all(d == sd for d, sd in pairs)  # same weights: the same decisions
        assert w.metric("riskstream_inference_seconds_count", model="shadow") > 0
        assert w.metric("riskstream_model_swaps_total", kind="shadow") == 2  # loaded, then ended
    finally:
        w.stop()

    recs = run(consume(sc.bootstrap, sc.topics["risk_events"], timeout=30, idle=3))
    evs = {}
    for r in recs:
        ev = parse_risk_event(r.value)
        evs[ev.transaction_id] = ev
    assert set(evs) == {e.transaction_id for e in events if isinstance(e, Transaction)}
    part = {
        e.transaction_id: k for k, third in enumerate(thirds) for e in third if isinstance(e, Transaction)
    }
    seen = Counter()
    for tid, ev in evs.items():
        k = part[tid]
        seen[(k, ev.model_version, ev.shadow is not None)] += 1
        if k == 1:
            assert ev.shadow is not None and ev.shadow.model_version == challenger
            # Same weights on the same features: the shadow's verdict equals the served one.
            assert (ev.shadow.score, ev.shadow.decision) == (ev.score, ev.decision)
        else:
            assert ev.shadow is None
    assert set(seen) == {(0, served, False), (1, served, True), (2, challenger, False)}, seen
    assert orjson.loads(recs[-1].value)["model_version"] == challenger
