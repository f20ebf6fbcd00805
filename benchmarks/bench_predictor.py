"""Paddle Inference predictor throughput and latency by batch size, CPU settings compared.

    python benchmarks/bench_predictor.py [--quick] [--out benchmarks/results/predictor.json]
    python benchmarks/bench_predictor.py --varying-only [--registry DIR]   # the last table alone
    python benchmarks/bench_predictor.py --call-sizes [--registry DIR]     # ms per call by size
    python benchmarks/bench_predictor.py --between-calls [--registry DIR]  # what runs between calls

Exports a FraudNet with the feature engine's input shapes (random weights: speed does not depend
on their values), then times ``Predictor.predict`` for batch sizes 1…4096 with oneDNN on/off and
1/2 math threads (and the GPU when one is visible), and once in a child process
(``in_process: false``, ``modeling/inference_process.py``: what the socket round trip costs).
``model_max_batch`` is set to the batch size so each call is one predictor run. A second table
compares sequence encoders (attn, gru, none) on one thread. Results are medians over repeated
calls; the machine's load average is recorded because shared machines make numbers noisy.
A last table (``varying_batches``) times calls of varying sizes, as the worker makes them, with
and without oneDNN and padding (to a power of two rows, or to multiples of 32).
``--call-sizes`` times one call of each size from 1 to 512 rows, the worker's oneDNN setting
(padded to multiples of 32) against Paddle's own kernels, alternated over 5 rounds
(``call_sizes``): where oneDNN's fixed cost per call outweighs its faster kernels.
``--between-calls`` times the worker's kind of call (the worker's settings, about 140 rows,
varying) back to back, after 30 ms of Python work and after 30 ms of sleep, alternated over 3
rounds (``between_calls``): what a model call costs when it does not follow another one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
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


ROUNDS = 8
# (label, variant): oneDNN, padding, pad_step
VARIANTS = (
    ("paddle", False, False, 0),
    ("onednn", True, False, 0),
    ("onednn-pad-pow2", True, True, 0),
    ("onednn-pad-step32", True, True, 32),
    ("paddle-pad-pow2", False, True, 0),
)


def run_varying(
    make: Callable[[PredictorOptions], Predictor], cfg: NetConfig, n: int
) -> list[dict[str, Any]]:
    """The worker's case: model calls of varying sizes (``model_max_batch`` 256), with and
    without oneDNN and padding (``PredictorOptions.pad_batches``): to a power of two rows
    (``pad_step`` 0) or to powers of two below 32 and multiples of 32 above (the default).

    Three call-size distributions: uniform over 1–512 rows, and Poisson around 74 and 159 rows,
    the mean calls of a worker fed at half its rate and of one draining a backlog
    (``results/worker.json``). The variants take turns, in ``ROUNDS`` rounds with the order
    reversed every other round, so a shared machine's swings hit them alike."""
    rng = np.random.default_rng(0)
    dists = {
        "uniform-1-512": rng.integers(1, 513, size=n),
        "poisson-74": np.clip(rng.poisson(74, size=n), 1, 512),
        "poisson-159": np.clip(rng.poisson(159, size=n), 1, 512),
    }
    preds = {}
    for label, onednn, pad, step in VARIANTS:
        opts = PredictorOptions(
            device="cpu", use_onednn=onednn, pad_batches=pad, pad_step=step, model_max_batch=256
        )
        preds[label] = make(opts)
    inputs = next(iter(preds.values())).inputs
    tab = next(d.name for d in inputs if len(d.shape) == 2)
    seq = next(d.name for d in inputs if len(d.shape) == 3)
    out = []
    for dist, sizes in dists.items():
        batches = [
            {
                tab: rng.lognormal(size=(b, cfg.n_features)).astype(np.float32),
                seq: rng.normal(size=(b, cfg.seq_len, cfg.seq_features)).astype(np.float32),
            }
            for b in sizes
        ]
        rows = int(sizes.sum())
        times: dict[str, list[float]] = {label: [] for label in preds}
        for pred in preds.values():
            for b in batches[:5]:
                pred.predict(b)
        for r in range(ROUNDS):
            turns = list(preds.items())
            for label, pred in turns if r % 2 == 0 else reversed(turns):
                t0 = time.perf_counter()
                for b in batches:
                    pred.predict(b)
                times[label].append((time.perf_counter() - t0) / rows * 1e6)
        for label, onednn, pad, step in VARIANTS:
            out.append(
                {
                    "sizes": dist,
                    "variant": label,
                    "use_onednn": onednn,
                    "pad_batches": pad,
                    "pad_step": step,
                    "calls": n,
                    "rows": rows,
                    "us_per_row": [round(t, 2) for t in times[label]],
                    "us_per_row_median": round(float(np.median(times[label])), 2),
                }
            )
            med = float(np.median(times[label]))
            print(
                f"varying batches {dist:<14} {label:<18}: {med:.2f} µs/row (median of {ROUNDS})", flush=True
            )
    for pred in preds.values():
        pred.close()
    return out


def varying_only(args: argparse.Namespace) -> int:
    """``--varying-only``: the varying-size table alone, merged into the results file."""
    f, n, s = shapes()
    cfg = NetConfig(f, n, s)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        make, model = _model_source(args, cfg, Path(tmp))
        rows = run_varying(make, cfg, 60 if args.quick else 150)
    return _merge_into(args.out, "varying_batches", rows, model, load)


def _model_source(
    args: argparse.Namespace, cfg: NetConfig, tmp: Path
) -> tuple[Callable[[PredictorOptions], Predictor], dict[str, Any]]:
    """A predictor maker for ``--registry``'s current behaviour model, or else for a FraudNet
    exported into ``tmp`` with random weights; and what the results file records of the model."""
    if args.registry:
        from modeling.registry import ModelRegistry

        reg = ModelRegistry(args.registry)
        version = reg.current("behaviour")
        return (lambda o: Predictor.load(reg, "behaviour", o)), {
            "registry": str(args.registry),
            "version": version,
        }
    prog, params, inputs = export(cfg, tmp / "fraudnet")
    return (lambda o: Predictor(prog, params, inputs, o)), cfg.to_dict()


def _merge_into(out: Path, key: str, rows: Any, model: dict[str, Any], load: tuple[float, ...]) -> int:
    """Write ``rows`` as ``key`` (and ``key_run``: the model, the load) into the results file
    ``out``, keeping what else it holds."""
    result = json.loads(out.read_text()) if out.is_file() else {}
    result[key] = rows
    result[f"{key}_run"] = {"model": model, "loadavg_start": load, "loadavg_end": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


CALL_SIZES = (1, 4, 8, 16, 25, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def call_sizes(args: argparse.Namespace) -> int:
    """``--call-sizes``: ms per call by row count, oneDNN (padded) against Paddle's own kernels,
    merged into the results file as ``call_sizes``."""
    f, n, s = shapes()
    cfg = NetConfig(f, n, s)
    load = os.getloadavg()
    variants = {
        "onednn-pad-step32": PredictorOptions(
            device="cpu", use_onednn=True, pad_batches=True, model_max_batch=512
        ),
        "paddle": PredictorOptions(device="cpu", use_onednn=False, model_max_batch=512),
    }
    with tempfile.TemporaryDirectory() as tmp:
        make, model = _model_source(args, cfg, Path(tmp))
        preds = {k: make(o) for k, o in variants.items()}
        rng = np.random.default_rng(0)
        ms: dict[tuple[str, int], list[float]] = {(k, b): [] for k in preds for b in CALL_SIZES}
        for rnd in range(5):
            for b in CALL_SIZES:
                x = {"tab": rng.normal(size=(b, f)).astype(np.float32)}
                x["seq"] = rng.normal(size=(b, n, s)).astype(np.float32)
                for k in preds if rnd % 2 == 0 else reversed(list(preds)):
                    preds[k].predict(x)
                    reps = max(5, 2000 // (b + 20))
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        preds[k].predict(x)
                    ms[(k, b)].append(1e3 * (time.perf_counter() - t0) / reps)
        rows = []
        for b in CALL_SIZES:
            row: dict[str, Any] = {"rows": b}
            row.update({f"{k}_ms": round(float(np.median(ms[(k, b)])), 3) for k in preds})
            rows.append(row)
            print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return _merge_into(args.out, "call_sizes", rows, model, load)


def _python_work(seconds: float, objects: list[dict[str, float]]) -> float:
    """Python work of the worker's kind for ``seconds``: reading many small objects, allocating."""
    import random

    end = time.perf_counter() + seconds
    acc = 0.0
    while time.perf_counter() < end:
        for d in random.sample(objects, 2000):
            for v in d.values():
                acc += v
        [bytearray(256) for _ in range(2000)]
    return acc


def between_calls(args: argparse.Namespace) -> int:
    """``--between-calls``: the worker's model calls back to back, after Python work and after
    a sleep (``between_calls``). In the worker a call follows tens of ms of feature work, or an
    idle event loop; in the tables above it follows another call."""
    f, n, s = shapes()
    cfg = NetConfig(f, n, s)
    load = os.getloadavg()
    opts = PredictorOptions(device="cpu", use_onednn=True, pad_batches=True, model_max_batch=512)
    rng = np.random.default_rng(0)
    sizes = [int(b) for b in np.clip(rng.normal(140, 50, 200), 20, 330)]
    xs = [
        {
            "tab": rng.normal(size=(b, f)).astype(np.float32),
            "seq": rng.normal(size=(b, n, s)).astype(np.float32),
        }
        for b in sizes
    ]
    objects = [{f"k{i}": float(i)} for i in range(200_000)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make, model = _model_source(args, cfg, Path(tmp))
        pred = make(opts)
        for x in xs[:40]:
            pred.predict(x)
        for rnd in range(3):
            for before in ("another call", "30 ms of Python work", "30 ms of sleep"):
                wall, cpu = [], []
                for x in xs:
                    if before == "30 ms of Python work":
                        _python_work(0.03, objects)
                    elif before == "30 ms of sleep":
                        time.sleep(0.03)
                    t0, c0 = time.perf_counter(), time.thread_time()
                    pred.predict(x)
                    wall.append(time.perf_counter() - t0)
                    cpu.append(time.thread_time() - c0)
                row = {
                    "round": rnd,
                    "before_each_call": before,
                    "calls": len(xs),
                    "rows_mean": round(float(np.mean(sizes)), 1),
                    "wall_ms_mean": round(1e3 * float(np.mean(wall)), 3),
                    "wall_ms_p50": round(1e3 * float(np.median(wall)), 3),
                    "thread_cpu_ms_mean": round(1e3 * float(np.mean(cpu)), 3),
                }
                rows.append(row)
                print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return _merge_into(args.out, "between_calls", rows, model, load)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predictor.json")
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes, shorter timing")
    ap.add_argument("--budget-s", type=float, default=1.0, help="timing budget per cell")
    ap.add_argument(
        "--varying-only",
        action="store_true",
        help="only the varying-size table, written into the existing --out file's varying_batches",
    )
    ap.add_argument("--call-sizes", action="store_true", help="only ms per call by row count (call_sizes)")
    ap.add_argument(
        "--between-calls",
        action="store_true",
        help="only the worker's calls back to back, after Python work, after a sleep (between_calls)",
    )
    ap.add_argument(
        "--registry",
        type=Path,
        help="with --varying-only, --call-sizes or --between-calls: the registry's current behaviour model",
    )
    args = ap.parse_args()
    if args.varying_only:
        return varying_only(args)
    if args.call_sizes:
        return call_sizes(args)
    if args.between_calls:
        return between_calls(args)
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
        result["varying_batches"] = run_varying(
            lambda o: Predictor(prog, params, inputs, o), cfg, 60 if args.quick else 150
        )
    result["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
