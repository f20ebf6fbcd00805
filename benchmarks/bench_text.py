"""Text predictor throughput: samples/s by batch size and sequence length through Paddle Inference.

    .venv/bin/python benchmarks/bench_text.py [--registry DIR] [--threads 1] [--device cpu]

Uses the current ``text`` bundle of ``--registry`` (or, without one, a fresh untrained ERNIE of the
default size exported to a temporary directory: speed does not depend on the weights). Writes
``benchmarks/results/text.json``:

* ``grid``: predictor only, random ids, every (batch, length) cell: median latency and samples/s;
* ``dygraph_reference``: the same architecture eagerly (``paddle.no_grad``) at batch 64 × length 64;
* ``end_to_end``: ``TextScorer.score`` on real dialogues (filter + tokenize + buckets + predictor),
  split into preprocessing and inference time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "teleantifraud" / "teleantifraud_dialogues_zh.csv"


def _time(fn: Callable[[], object], min_seconds: float, min_runs: int = 5, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _fresh_bundle(directory: Path, texts: list[str]) -> tuple[Path, dict[str, Any], Any]:
    from modeling.text.filters import DEFAULT_FILTER, clean_text
    from modeling.text.model import ErnieSize, build_model, export_inference
    from modeling.text.scorer import text_feature_set
    from modeling.text.tokenizer import TextTokenizer

    docs = [d for d in (clean_text(t) for t in texts) if d is not None]
    tok = TextTokenizer.build(docs, directory / "build")
    model = build_model(tok.vocab_size, ErnieSize(), pad_token_id=tok.pad_id)
    export_inference(model, directory)
    tok.save(directory)
    max_len = 128
    manifest = {
        "version": "untrained",
        "max_len": max_len,
        "vocab_sha256": tok.sha256,
        "feature_set": text_feature_set(tok.sha256, max_len),
        "filter": DEFAULT_FILTER.to_dict(),
    }
    return directory, manifest, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, help="use the current text bundle of this registry")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu")
    parser.add_argument("--no-onednn", action="store_true")
    parser.add_argument("--batches", default="1,8,32,64,128")
    parser.add_argument("--lengths", default="32,64,128")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="per grid cell")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text.json")
    args = parser.parse_args()

    from modeling.text.env import prepare_paddlenlp

    prepare_paddlenlp()
    import paddle

    from modeling.text.model import predict_proba
    from modeling.text.scorer import TextScorer
    from training.text_train import read_labeled_csv

    paddle.base.core.set_num_threads(args.threads)
    texts, _ = read_labeled_csv(DATA)
    options: dict[str, Any] = {
        "device": args.device,
        "cpu_threads": args.threads,
        "use_onednn": not args.no_onednn,
        "max_batch": 128,
    }
    batches = [int(b) for b in args.batches.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        eager_model = None
        if args.registry:
            scorer = TextScorer.from_registry(args.registry, **options)
            source = f"registry {args.registry}, {scorer.version}"
        else:
            path, manifest, eager_model = _fresh_bundle(Path(tmp), texts[:1000])
            scorer = TextScorer(path, manifest, **options)
            source = "fresh untrained ERNIE (default size)"
        arch = scorer.manifest.get("hyperparameters", {}).get("architecture", "default ErnieSize")
        vocab = scorer.tokenizer.vocab_size
        rng = np.random.default_rng(0)

        grid: list[dict[str, Any]] = []
        for length in lengths:
            for batch in batches:
                ids = rng.integers(8, vocab, size=(batch, length)).astype(np.int64)
                ids[:, 0], ids[:, -1] = 1, 2
                times = _time(partial(scorer.predict_ids, ids), args.min_seconds)
                med = statistics.median(times)
                cell = {
                    "batch": batch,
                    "length": length,
                    "median_ms": round(med * 1e3, 3),
                    "p90_ms": round(float(np.percentile(times, 90)) * 1e3, 3),
                    "samples_per_s": round(batch / med, 1),
                    "runs": len(times),
                }
                grid.append(cell)
                print(
                    f"batch {batch:4d} × len {length:4d}: {cell['median_ms']:9.2f} ms "
                    f"({cell['samples_per_s']:9.1f} samples/s)"
                )

        dygraph: dict[str, Any] | None = None
        if eager_model is None and isinstance(arch, dict):
            from modeling.text.model import ErnieSize, build_model

            # same architecture, random weights: eager speed does not depend on the weights
            eager_model = build_model(vocab, ErnieSize(**arch), pad_token_id=scorer.tokenizer.pad_id)
        if eager_model is not None:
            ids = rng.integers(8, vocab, size=(64, 64)).astype(np.int64)
            eager_times = _time(lambda: predict_proba(eager_model, ids), args.min_seconds)
            dygraph = {"batch": 64, "length": 64, "median_ms": round(statistics.median(eager_times) * 1e3, 3)}
            print(f"dygraph 64 × 64: {dygraph['median_ms']:.2f} ms")

        sample = texts[:512]
        pre, inf = [], []
        for _ in range(3):
            for s in range(0, len(sample), 64):
                scorer.score(sample[s : s + 64])
                pre.append(scorer.last_timings_ms["preprocess"])
                inf.append(scorer.last_timings_ms["inference"])
        total_s = (sum(pre) + sum(inf)) / 1e3
        end_to_end = {
            "texts": 3 * len(sample),
            "call_batch": 64,
            "max_len": scorer.spec.max_len,
            "buckets": list(scorer.buckets),
            "median_preprocess_ms_per_call": round(statistics.median(pre), 3),
            "median_inference_ms_per_call": round(statistics.median(inf), 3),
            "texts_per_s": round(3 * len(sample) / total_s, 1),
        }
        print(f"end to end: {end_to_end}")

    result = {
        "benchmark": "text predictor (Paddle Inference)",
        "model": source,
        "architecture": arch,
        "vocab_size": vocab,
        "device": scorer.device,
        "cpu_threads": args.threads,
        "onednn": not args.no_onednn,
        "paddle": metadata.version("paddlepaddle"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), load average {os.getloadavg()}",
        "grid": grid,
        "dygraph_reference": dygraph,
        "end_to_end": end_to_end,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
