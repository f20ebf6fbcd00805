"""The worker's scoring step without Kafka: ``BatchProcessor.process`` CPU per message, by
pipeline batch size and with a shadow model (the same weights) against without, alternated.

    .venv/bin/python benchmarks/bench_pipeline.py [--registry DIR] [--transactions 20000]

The messages are bench_worker.py's (handbook_2w from day 7, with clickstream and labels). Every
pass starts from the window state of the file's events before them (bench_worker.py's warm
state: about 4,800 users with up to 7 days of history, and the terminals' labels), decoded as a
warm worker holds it, and runs the worker's garbage-collector policy (``streams/gc_pauses.py``).
After each batch its labels are folded into the terminal states, as the worker's terminal loop
does; every ``--flush-every`` batches the touched user states are serialized back into the store,
as its state flush does. Both are timed apart from the scoring step. Without ``--registry`` a
model is trained into a temporary registry first (about 40 s). A copy of the served version is
put in shadow for the shadow runs. Writes results/pipeline.json.
"""

from __future__ import annotations

import argparse
import gc
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
from workerbench.messages import WarmState, build_warm_state

from modeling.features import FeatureEngine, TerminalState, UserState
from modeling.records import ClickEvent, Transaction, parse_label
from modeling.registry import MANIFEST, ModelRegistry
from modeling.settings import Settings, feature_config
from streams import gc_pauses
from streams.metrics import Metrics
from streams.model_watch import ModelWatcher
from streams.pipeline import KIND_CLICK, KIND_LABEL, KIND_TXN, BatchProcessor, InMessage

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GC = gc.get_threshold()


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
    msgs: list[InMessage],
    warm: WarmState,
    engine: FeatureEngine,
    watcher: ModelWatcher,
    batch: int,
    shadow: bool,
    flush_every: int,
) -> dict[str, float]:
    """One pass over ``msgs`` from the warm state; CPU per input message by part."""
    store = dict(warm.users)
    terminals = dict(warm.terminals)
    proc = BatchProcessor(
        engine, watcher.scorer, store.get, terminals.get, shadow=watcher.shadow if shadow else (lambda: None)
    )
    for uid, raw in store.items():  # decoded, as a warm worker holds them
        proc.users.put(uid, raw, UserState.from_bytes(raw, engine.config))
    pauses: list[float] = []
    callback = gc_pauses.tune().observe(lambda _g, seconds, _n: pauses.append(seconds))
    inference = shadow_inference = score = term = flush = 0.0
    try:
        for k, i in enumerate(range(0, len(msgs), batch)):
            t0 = time.process_time()
            r = proc.process(msgs[i : i + batch])
            t1 = time.process_time()
            for tid, value in r.terminal_labels:  # the terminal loop's fold
                key = tid.decode()
                held = terminals.get(key)
                ts = TerminalState.from_bytes(held) if held is not None else TerminalState()
                engine.terminal_label(ts, parse_label(value, 1 << 20))
                terminals[key] = ts.to_bytes()
            t2 = time.process_time()
            if (k + 1) % flush_every == 0:
                store.update((uid, raw) for uid, _, raw in proc.take_dirty())
            t3 = time.process_time()
            score, term, flush = score + t1 - t0, term + t2 - t1, flush + t3 - t2
            inference += r.inference_s
            shadow_inference += r.shadow_inference_s or 0.0
    finally:
        gc.callbacks.remove(callback)
        gc.unfreeze()
        gc.set_threshold(*DEFAULT_GC)
        gc.collect()
    n = len(msgs)
    return {
        "us_per_message": 1e6 * score / n,
        "inference_us_per_message": 1e6 * inference / n,
        "shadow_inference_us_per_message": 1e6 * shadow_inference / n,
        "terminal_fold_us_per_message": 1e6 * term / n,
        "state_flush_us_per_message": 1e6 * flush / n,
        "gc_pause_us_per_message": 1e6 * sum(pauses) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", type=Path, help="a registry with a published behaviour model")
    ap.add_argument("--transactions", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3, help="shadow comparison pairs (0: none)")
    ap.add_argument("--batches", default="512,128,32", help="comma-separated pipeline batch sizes")
    ap.add_argument(
        "--flush-every",
        type=int,
        default=20,
        help="batches between state flushes (the worker flushes every second: 20-30 batches of 512 draining)",
    )
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
        loaded = load_messages(DATA, args.transactions, 7.0)
        msgs = in_messages(loaded.events)
        warm = build_warm_state(loaded.history)

        def run(batch: int, shadow: bool) -> dict[str, float]:
            return measure(msgs, warm, engine, watcher, batch, shadow, args.flush_every)

        by_batch = {b: run(int(b), False) for b in args.batches.split(",")}
        pairs = []
        for _ in range(args.repeat):
            pairs.append({"without": run(512, False)})
            pairs[-1]["with"] = run(512, True)
        n_pairs = len(pairs) or 1
        mean = {k: sum(p[k]["us_per_message"] for p in pairs) / n_pairs for k in ("without", "with")}
        res = {
            "machine": machine_info(),
            "messages": len(msgs),
            "warm_state": {
                "users": len(warm.users),
                "terminals": len(warm.terminals),
                "transactions": warm.transactions,
            },
            "flush_every_batches": args.flush_every,
            "model": {"served": reg.current("behaviour"), "shadow": shadow_version},
            "by_pipeline_batch": by_batch,
            "shadow_pairs_batch_512": pairs,
            "shadow_mean_us_per_message": mean,
            "shadow_cost_ratio": mean["with"] / mean["without"] if pairs else None,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
