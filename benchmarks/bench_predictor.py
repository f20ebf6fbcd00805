"""Paddle Inference predictor throughput and latency by batch size, CPU settings compared.

    python benchmarks/bench_predictor.py [--quick] [--out benchmarks/results/predictor.json]

Exports a FraudNet with the feature engine's input shapes (random weights: speed does not depend
on their values), then times ``Predictor.predict`` for batch sizes 1…4096 with oneDNN on/off and
1/2 math threads (and the GPU when one is visible), and once in a child process
(``in_process: false``, ``modeling/inference_process.py``: what the socket round trip costs).
``model_max_batch`` is set to the batch size so each call is one predictor run. A second table
compares sequence encoders (attn, gru, none) on one thread. Results are medians over repeated
calls; the machine's load average is recorded because shared machines make numbers noisy.
A last table (``varying_batches``) times calls of random sizes 1–512, as the worker makes them,
with and without oneDNN and padding to a power of two rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.networks import FraudNet, NetConfig, export_fraudnet, fit_standardizers
from modeling.predictor import Predictor, PredictorOptions, gpu_available

BATCHES = (1, 8, 32, 128, 512, 1024, 4096)


def shapes() -> tuple[int, int, int]:
    try:
        from modeling.features import FeatureConfig

        c = FeatureConfig()
        return c.n_features, c.seq_len, c.seq_dim
    except ImportError:  # pragma: no cover - the feature engine is part of the project
        return 53, 16, 8


def export(cfg: NetConfig, out: Path, seed: int = 0) -> tuple[Path, Path, Any]:
    import paddle

    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    model = FraudNet(cfg)
    tab = rng.lognormal(size=(4096, cfg.n_features)).astype(np.float32)
    seq = rng.normal(size=(4096, cfg.seq_len, cfg.seq_features)).astype(np.float32)
    fit_standardizers(model, tab, seq, (rng.random(4096) < 0.02).astype(np.int8))
    info = export_fraudnet(model, out)
    return out / info.model_file, out / info.params_file, info.inputs


def time_batch(pred: Predictor, cfg: NetConfig, batch: int, budget_s: float) -> dict[str, float]:
    rng = np.random.default_rng(batch)
    inputs = {
        "tab": rng.lognormal(size=(batch, cfg.n_features)).astype(np.float32),
        "seq": rng.normal(size=(batch, cfg.seq_len, cfg.seq_features)).astype(np.float32),
    }
    for _ in range(3):
        pred.predict(inputs)
    lat: list[float] = []
    start = time.perf_counter()
    while (time.perf_counter() - start < budget_s or len(lat) < 5) and len(lat) < 20000:
        t0 = time.perf_counter()
        pred.predict(inputs)
        lat.append(time.perf_counter() - t0)
    a = np.array(lat)
    return {
        "batch": batch,
        "calls": len(a),
        "latency_ms_p50": float(np.median(a) * 1e3),
        "latency_ms_p99": float(np.quantile(a, 0.99) * 1e3),
        "samples_per_s": float(batch / np.median(a)),
    }


def run_grid(
    prog: Path,
    params: Path,
    inputs: Any,
    cfg: NetConfig,
    settings: list[dict[str, Any]],
    batches: tuple[int, ...],
    budget_s: float,
) -> list[dict[str, Any]]:
    rows = []
    for s in settings:
        for b in batches:
            opts = PredictorOptions(model_max_batch=b, **s)
            pred = Predictor(prog, params, inputs, opts)
            r = {**s, **time_batch(pred, cfg, b, budget_s)}
            pred.close()
            rows.append(r)
            print(
                f"{s}  batch {b:>5}: {r['samples_per_s']:>12,.0f}/s  p50 {r['latency_ms_p50']:.3f} ms  "
                f"p99 {r['latency_ms_p99']:.3f} ms",
                flush=True,
            )
    return rows


def run_varying(prog: Path, params: Path, inputs: Any, cfg: NetConfig, n: int) -> list[dict[str, Any]]:
    """The worker's case: calls of random sizes 1–512 rows (``model_max_batch`` 256), with and
    without oneDNN and padding to a power of two rows (``PredictorOptions.pad_batches``)."""
    rng = np.random.default_rng(0)
    batches = [
        {
            "tab": rng.lognormal(size=(b, cfg.n_features)).astype(np.float32),
            "seq": rng.normal(size=(b, cfg.seq_len, cfg.seq_features)).astype(np.float32),
        }
        for b in rng.integers(1, 513, size=n)
    ]
    rows = sum(len(b["tab"]) for b in batches)
    out = []
    for onednn, pad in ((False, False), (True, False), (True, True), (False, True)):
        opts = PredictorOptions(device="cpu", use_onednn=onednn, pad_batches=pad, model_max_batch=256)
        pred = Predictor(prog, params, inputs, opts)
        for b in batches[:5]:
            pred.predict(b)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            for b in batches:
                pred.predict(b)
            times.append((time.perf_counter() - t0) / rows * 1e6)
        pred.close()
        out.append({"use_onednn": onednn, "pad_batches": pad, "calls": n, "rows": rows, "us_per_row": times})
        print(f"varying batches: oneDNN {onednn!s:<5} padded {pad!s:<5}: {min(times):.2f} µs/row", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predictor.json")
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes, shorter timing")
    ap.add_argument("--budget-s", type=float, default=1.0, help="timing budget per cell")
    args = ap.parse_args()
    batches = (1, 32, 512, 4096) if args.quick else BATCHES
    budget = 0.3 if args.quick else args.budget_s
    f, n, s = shapes()
    cfg = NetConfig(f, n, s)
    result: dict[str, Any] = {
        "model": cfg.to_dict(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        prog, params, inputs = export(cfg, Path(tmp) / "fraudnet")
        cpu = [{"device": "cpu", "use_onednn": o, "cpu_threads": t} for o in (False, True) for t in (1, 2)]
        # the worker's default (oneDNN off, 1 thread) with the model in a child process
        cpu.append({"device": "cpu", "use_onednn": False, "cpu_threads": 1, "in_process": False})
        result["cpu"] = run_grid(prog, params, inputs, cfg, cpu, batches, budget)
        if gpu_available():
            gpu = [
                {"device": "gpu", "use_fp16": h, "use_tensorrt": trt}
                for h in (False, True)
                for trt in (False,)
            ]
            result["gpu"] = run_grid(prog, params, inputs, cfg, gpu, batches, budget)
        enc_rows = []
        for enc in ("attn", "gru", "none"):
            ecfg = NetConfig(f, n, s, seq_encoder=enc)
            ep, epar, einp = export(ecfg, Path(tmp) / f"enc-{enc}")
            for onednn in (False, True):
                for b in (1, 256, 4096) if not args.quick else (1, 1024):
                    pred = Predictor(
                        ep,
                        epar,
                        einp,
                        PredictorOptions(device="cpu", model_max_batch=b, use_onednn=onednn, cpu_threads=1),
                    )
                    r = {"seq_encoder": enc, "use_onednn": onednn, **time_batch(pred, ecfg, b, budget)}
                    enc_rows.append(r)
                    print(
                        f"encoder {enc:<5} onednn {onednn!s:<5} batch {b:>5}: {r['samples_per_s']:>12,.0f}/s",
                        flush=True,
                    )
        result["encoders_1_thread"] = enc_rows
        result["varying_batches"] = run_varying(prog, params, inputs, cfg, 60 if args.quick else 150)
    result["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
