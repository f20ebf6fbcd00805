"""The worker's scoring step without Kafka: ``BatchProcessor.process`` CPU per message, by
pipeline batch size and with a shadow model (the same weights) against without, alternated.

    .venv/bin/python benchmarks/bench_pipeline.py [--registry DIR] [--transactions 20000]

The messages are bench_worker.py's (handbook_2w, with clickstream and labels); every run starts
from the states the same messages built in a first pass (decoded, as a warm worker holds them).
Without ``--registry`` a model is trained into a temporary registry first (about 40 s). A copy
of the served version is put in shadow for the shadow runs. Writes results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_worker import DATA, load_messages, machine_info, train_registry

from modeling.features import FeatureEngine
from modeling.records import ClickEvent, Transaction
from modeling.registry import MANIFEST, ModelRegistry
from modeling.settings import Settings, feature_config
from streams.metrics import Metrics
from streams.model_watch import ModelWatcher
from streams.pipeline import KIND_CLICK, KIND_LABEL, KIND_TXN, BatchProcessor, InMessage

ROOT = Path(__file__).resolve().parents[1]


def shadow_copy(reg: ModelRegistry, work: Path) -> str:
    """Publish the served version's files again, as the shadow version."""
    current = reg.current("behaviour")
    assert current is not None
    stage = work / "shadow-stage"
    shutil.copytree(reg.path(current), stage)
    (stage / MANIFEST).unlink()
    manifest = reg.manifest(current)
    for key in ("version", "kind", "created", "files", "libraries"):
        manifest.pop(key)
    return reg.publish("behaviour", stage, manifest, shadow=True)


def in_messages(events: list[Any]) -> list[InMessage]:
    out: list[InMessage] = []
    offsets: dict[str, int] = {}
    now_ms, now = int(time.time() * 1000), time.monotonic()
    for e in events:
        kind = KIND_LABEL
        if isinstance(e, Transaction):
            kind = KIND_TXN
        elif isinstance(e, ClickEvent):
            kind = KIND_CLICK
        o = offsets.get(kind, 0)
        offsets[kind] = o + 1
        out.append(InMessage(kind, kind, 0, o, e.user_id.encode(), orjson.dumps(e.to_dict()), now_ms, now))
    return out


def measure(
    msgs: list[InMessage], engine: FeatureEngine, watcher: ModelWatcher, batch: int, shadow: bool
) -> dict[str, float]:
    store: dict[str, bytes] = {}
    warm = BatchProcessor(engine, watcher.scorer, store.get, lambda _: None)
    for i in range(0, len(msgs), batch):
        warm.process(msgs[i : i + batch])
    warm.take_dirty()
    proc = BatchProcessor(
        engine, watcher.scorer, store.get, lambda _: None, shadow=watcher.shadow if shadow else (lambda: None)
    )
    proc.users = warm.users  # decoded states, as a warm worker holds them
    inference = shadow_inference = 0.0
    t0 = time.process_time()
    for i in range(0, len(msgs), batch):
        r = proc.process(msgs[i : i + batch])
        inference += r.inference_s
        shadow_inference += r.shadow_inference_s or 0.0
    cpu = time.process_time() - t0
    n = len(msgs)
    return {
        "us_per_message": 1e6 * cpu / n,
        "inference_us_per_message": 1e6 * inference / n,
        "shadow_inference_us_per_message": 1e6 * shadow_inference / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", type=Path, help="a registry with a published behaviour model")
    ap.add_argument("--transactions", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3, help="alternated pairs for the shadow comparison")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pipeline.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="riskstream-bench-pipeline-") as tmp:
        work = Path(tmp)
        registry = work / "registry"
        if args.registry:
            shutil.copytree(args.registry, registry)
        else:
            train_registry(registry)
        reg = ModelRegistry(registry)
        reg.clear_shadow("behaviour")
        shadow_version = shadow_copy(reg, work)
        settings = Settings(registry_dir=registry)  # the worker's defaults (oneDNN, padded calls)
        engine = FeatureEngine(feature_config(settings))
        watcher = ModelWatcher(settings, engine.config, Metrics())
        assert watcher.shadow() is not None
        msgs = in_messages(load_messages(DATA, args.transactions, 7.0).events)
        by_batch = {str(b): measure(msgs, engine, watcher, b, False) for b in (512, 128, 32)}
        pairs = []
        for _ in range(args.repeat):
            pairs.append({"without": measure(msgs, engine, watcher, 512, False)})
            pairs[-1]["with"] = measure(msgs, engine, watcher, 512, True)
        mean = {k: sum(p[k]["us_per_message"] for p in pairs) / len(pairs) for k in ("without", "with")}
        res = {
            "machine": machine_info(),
            "messages": len(msgs),
            "model": {"served": reg.current("behaviour"), "shadow": shadow_version},
            "by_pipeline_batch": by_batch,
            "shadow_pairs_batch_512": pairs,
            "shadow_mean_us_per_message": mean,
            "shadow_cost_ratio": mean["with"] / mean["without"],
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
