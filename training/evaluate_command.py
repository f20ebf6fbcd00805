"""``riskstream evaluate FILE``: the Fraud Detection Handbook's protocol and metrics, our model
beside the handbook's published table.

Protocol (handbook ch. 5): prequential folds of 7 days training, 7 days delay, 7 days test,
shifted by one week; test sets drop cards already known to be compromised; AUC ROC, Average
Precision and Card Precision@100 per fold, averaged. Features come from the one feature engine,
without clickstream (the handbook's data has none), with the state warmed on the file's first
weeks. The first ``--tune-folds`` folds were used to choose the hyperparameters; the remaining
folds were not looked at while tuning and are reported separately as the held-out result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.train_command import (
    add_net_arguments,
    add_train_arguments,
    blend_members,
    net_overrides,
    train_config,
)

if TYPE_CHECKING:
    from training.trainer import TrainConfig

HELP = "evaluate the behaviour model with the Fraud Detection Handbook's protocol and metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="handbook transactions (e.g. handbook_dev.parquet)")
    parser.add_argument("--first-train-day", default="2018-05-01", help="training start of the first fold")
    parser.add_argument("--folds", type=int, default=11, help="number of prequential folds")
    parser.add_argument("--tune-folds", type=int, default=4, help="leading folds used for tuning")
    parser.add_argument("--only-tune-folds", action="store_true", help="run the tuning folds only")
    parser.add_argument("--train-days", type=int, default=7)
    parser.add_argument("--delay-days", type=int, default=7)
    parser.add_argument("--test-days", type=int, default=7)
    parser.add_argument("--ensemble", type=int, default=1, help="average this many seeds per fold")
    parser.add_argument("--cache", type=Path, help="npz cache of the featurized file")
    parser.add_argument("--json", type=Path, default=Path("evaluation.json"), help="write results here")
    add_net_arguments(parser)
    add_train_arguments(parser)
    parser.set_defaults(epochs=8, patience=0)


def load_features(path: Path, cache: Path | None, progress: bool) -> dict[str, Any]:
    import numpy as np

    from modeling.features import FeatureConfig
    from training.featurize import featurize_file

    config = FeatureConfig(use_clicks=False)
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=False)
        if str(z["feature_set"]) == config.feature_set:
            return {k: z[k] for k in z.files}
        print(f"cache {cache} is for feature set {z['feature_set']}, re-featurizing", file=sys.stderr)
    m = featurize_file(path, config, clicks=False, progress=progress)
    d: dict[str, Any] = {
        "tab": m.tab,
        "seq": m.seq,
        "y": m.y,
        "time_ms": m.time_ms,
        "user_id": m.user_id.astype(str),
        "feature_names": np.array(m.feature_names),
        "feature_set": np.array(m.feature_set),
    }
    if cache is not None:
        np.savez(cache, **d)
    return d


def _fmt(v: float) -> str:
    return f"{v:.3f}"


def table(rows: list[tuple[str, float, float, float]]) -> str:
    w = max(len(r[0]) for r in rows)
    out = [f"{'model':<{w}}  AUC ROC  Avg Prec  CP@100", f"{'-' * w}  -------  --------  ------"]
    out += [f"{name:<{w}}  {_fmt(a):>7}  {_fmt(p):>8}  {_fmt(c):>6}" for name, a, p, c in rows]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from modeling.evaluation import HANDBOOK_RESULTS, days_from_ms, evaluate, prequential_folds
    from modeling.networks import NetConfig
    from training.trainer import Arrays, fit_ensemble, score

    data = load_features(args.file, args.cache, progress=not args.no_progress)
    tab, seq, y, time_ms, cards = data["tab"], data["seq"], data["y"], data["time_ms"], data["user_id"]
    days = days_from_ms(time_ms)
    first = int(pd.Timestamp(args.first_train_day, tz="UTC").value // 86_400_000_000_000)
    n_folds = args.tune_folds if args.only_tune_folds else args.folds
    folds = prequential_folds(
        days,
        cards,
        y,
        first,
        n_folds,
        delta_train=args.train_days,
        delta_delay=args.delay_days,
        delta_test=args.test_days,
    )
    if folds and folds[-1].test_days[1] > int(days.max()):
        print(f"error: the last fold's test week ends after the data ({int(days.max())})", file=sys.stderr)
        return 1
    base_cfg = train_config(args)
    shape = (tab.shape[1], seq.shape[1], seq.shape[2])
    net_cfg = NetConfig(*shape, **net_overrides(args))
    extra = [(NetConfig(*shape, **o), c) for o, c in blend_members(args, base_cfg)]
    results: list[dict[str, Any]] = []
    for i, fold in enumerate(folds):
        t0 = time.perf_counter()
        train = Arrays(tab[fold.train_idx], seq[fold.train_idx], y[fold.train_idx])
        test = fold.test_idx
        scores = np.zeros(len(test), dtype=np.float64)
        epoch_s: list[float] = []
        for e in range(args.ensemble):
            members = [(net_cfg, base_cfg), *extra]
            members = [(n, _with_seed(c, c.seed + 1000 * e)) for n, c in members]
            res = fit_ensemble(members, train, None)
            scores += score(res.model, tab[test], seq[test]) / args.ensemble
            epoch_s += res.epoch_seconds
        m = evaluate(y[test], scores, cards[test], days[test])
        role = "tune" if i < args.tune_folds else "held-out"
        results.append(
            {
                "fold": i,
                "role": role,
                **fold.describe(),
                **m.to_dict(),
                "train_seconds": sum(epoch_s),
                "mean_epoch_seconds": float(np.mean(epoch_s)),
            }
        )
        print(
            f"fold {i} ({role}) test days {_day(fold.test_days[0])}..{_day(fold.test_days[1])}: "
            f"AUC {m.auc:.4f} AP {m.average_precision:.4f} CP@100 {m.card_precision_at_100:.4f} "
            f"[{time.perf_counter() - t0:.0f}s]",
            file=sys.stderr,
        )

    def mean(role: str) -> tuple[float, float, float] | None:
        rs = [r for r in results if r["role"] == role]
        if not rs:
            return None
        return tuple(
            float(np.mean([r[k] for r in rs]))
            for k in ("auc_roc", "average_precision", "card_precision_at_100")  # type: ignore[return-value]
        )

    rows = [(f"Handbook: {name}", *vals) for name, vals in HANDBOOK_RESULTS.items()]
    summary: dict[str, Any] = {}
    for role, label in (
        ("tune", "riskstream FraudNet (tuning folds)"),
        ("held-out", "riskstream FraudNet (held-out folds)"),
    ):
        mv = mean(role)
        if mv is not None:
            rows.append((label, *mv))
            summary[role] = dict(
                zip(("auc_roc", "average_precision", "card_precision_at_100"), mv, strict=True)
            )
    print(table(rows))
    best = tuple(max(v[i] for v in HANDBOOK_RESULTS.values()) for i in range(3))
    if "held-out" in summary:
        ours = tuple(summary["held-out"].values())
        beats = [o > b for o, b in zip(ours, best, strict=True)]
        print(
            f"held-out beats the best published figure on {sum(beats)}/3 metrics "
            f"(best published: AUC {best[0]}, AP {best[1]}, CP@100 {best[2]})"
        )
        summary["beats_best_published"] = dict(
            zip(("auc_roc", "average_precision", "card_precision_at_100"), beats, strict=True)
        )
    out = {
        "file": str(args.file),
        "feature_set": str(data["feature_set"]),
        "protocol": {
            "train_days": args.train_days,
            "delay_days": args.delay_days,
            "test_days": args.test_days,
            "first_train_day": args.first_train_day,
            "folds": n_folds,
            "tune_folds": args.tune_folds,
        },
        "net": net_cfg.to_dict(),
        "train": base_cfg.to_dict(),
        "blend": [{"net": n.to_dict(), "train": c.to_dict()} for n, c in extra],
        "ensemble": args.ensemble,
        "folds": results,
        "summary": summary,
        "handbook": {
            k: dict(zip(("auc_roc", "average_precision", "card_precision_at_100"), v, strict=True))
            for k, v in HANDBOOK_RESULTS.items()
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _day(day: int) -> str:
    import pandas as pd

    return str(pd.Timestamp(day * 86_400_000_000_000, tz="UTC").date())


def _with_seed(cfg: TrainConfig, seed: int) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, seed=seed)
