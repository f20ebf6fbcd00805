"""``riskstream train FILE``: featurize a historical file, train FraudNet on a period, choose
thresholds on its last days, publish a verified model version and print it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.trainer import TrainConfig

HELP = "train the behaviour model on a historical file and publish a new model version"


def add_net_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "network",
        "The default model blends two members in logit space: a tabular network over piecewise-linear "
        "and threshold encodings of the features (sharp: high precision at the top), and a fusion "
        "network over standardized features plus an attention encoder over the last N transactions "
        "(smooth: better ranking of the hard cases). --no-blend publishes the first alone.",
    )
    g.add_argument(
        "--seq-encoder",
        choices=("attn", "gru", "none"),
        default="none",
        help="sequence encoder of the first member",
    )
    g.add_argument(
        "--encoding",
        choices=("ple_tree", "ple_quantile", "none"),
        default="ple_tree",
        help="numeric encoding of the first member",
    )
    g.add_argument("--no-blend", action="store_true", help="publish the first member alone")
    g.add_argument("--hidden", default="128,64", help="tabular MLP widths, comma separated")
    g.add_argument("--seq-channels", type=int, default=32)
    g.add_argument("--head-hidden", type=int, default=64)
    g.add_argument("--dropout", type=float, default=0.1)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=12)
    g.add_argument("--batch-size", type=int, default=512, help="per process")
    g.add_argument("--lr", type=float, default=1e-3, help="learning rate (the blend member uses 2x)")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--patience", type=int, default=3, help="early-stopping patience (epochs)")
    g.add_argument("--pos-weight", type=float, help="BCE positive weight (default sqrt(neg/pos))")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--nprocs", type=int, default=1, help="data-parallel processes (gloo on CPU, NCCL on GPU)")
    g.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    g.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    g.add_argument("--no-amp", action="store_true", help="disable mixed precision on GPU")
    g.add_argument("--no-progress", action="store_true")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", type=Path, help="transactions: parquet, CSV or JSON lines (handbook or wire columns)"
    )
    parser.add_argument("--from", dest="date_from", help="first day of the training period (UTC date)")
    parser.add_argument("--until", dest="date_until", help="end of the period, exclusive (UTC date)")
    parser.add_argument("--val-days", type=float, default=7.0, help="validation = the period's last N days")
    parser.add_argument("--delay-days", type=float, help="gap before validation (default: label_delay_days)")
    parser.add_argument("--warmup-days", type=float, default=30.0, help="history replayed to warm the state")
    parser.add_argument("--no-clicks", action="store_true", help="featurize without the clickstream")
    parser.add_argument(
        "--review-rate", type=float, default=0.01, help="target share sent to review or worse"
    )
    parser.add_argument("--decline-rate", type=float, default=0.002, help="target share declined")
    parser.add_argument(
        "--registry", type=Path, help="registry directory (default: the registry_dir setting)"
    )
    parser.add_argument("--json", type=Path, help="also write the published metrics here")
    parser.add_argument(
        "--shadow",
        action="store_true",
        help="publish as the shadow version: scored beside the served model until `models promote`",
    )
    add_net_arguments(parser)
    add_train_arguments(parser)


def blend_members(args: argparse.Namespace, cfg: TrainConfig) -> list[tuple[dict[str, Any], TrainConfig]]:
    """The smooth second member (standardized inputs, attention over the sequence), unless --no-blend."""
    if args.no_blend:
        return []
    from dataclasses import replace

    net = {**net_overrides(args), "numeric_encoding": "none", "seq_encoder": "attn"}
    return [(net, replace(cfg, lr=2 * cfg.lr, seed=cfg.seed + 1))]


def net_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "seq_encoder": args.seq_encoder,
        "numeric_encoding": args.encoding,
        "tab_hidden": tuple(int(h) for h in str(args.hidden).split(",") if h),
        "seq_channels": args.seq_channels,
        "head_hidden": args.head_hidden,
        "dropout": args.dropout,
    }


def train_config(args: argparse.Namespace) -> TrainConfig:
    from training.trainer import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        grad_accum=args.grad_accum,
        patience=args.patience,
        pos_weight=args.pos_weight,
        seed=args.seed,
        nprocs=args.nprocs,
        device=args.device,
        amp=not args.no_amp,
        threads=args.threads,
        progress=not args.no_progress,
    )


def _ms(date: str) -> int:
    import pandas as pd

    ts = pd.Timestamp(date)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from modeling.evaluation import DAY_MS
    from modeling.registry import ModelRegistry
    from modeling.settings import feature_config, load_settings
    from training.bundle import point_in_time_split, train_and_publish_matrix
    from training.featurize import featurize_file

    settings = load_settings()
    delay = settings.label_delay_days if args.delay_days is None else args.delay_days
    # The worker's feature definition (label delay, lateness, retention, clicks), so that it
    # serves what this publishes.
    config = feature_config(settings)
    if args.no_clicks:
        config = replace(config, use_clicks=False)
    print(f"featurizing {args.file} (feature set {config.feature_set})", file=sys.stderr)
    m = featurize_file(
        args.file,
        config,
        start=args.date_from,
        end=args.date_until,
        warmup_days=args.warmup_days,
        clicks=not args.no_clicks,
        progress=not args.no_progress,
    )
    if len(m) == 0:
        print("error: no transactions in the requested period", file=sys.stderr)
        return 1
    start = _ms(args.date_from) if args.date_from else int(m.time_ms.min()) + int(args.warmup_days * DAY_MS)
    end = _ms(args.date_until) if args.date_until else int(m.time_ms.max()) + 1
    try:
        split = point_in_time_split(m.time_ms, start, end, args.val_days, delay)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    registry = ModelRegistry(args.registry if args.registry is not None else settings.registry_dir)
    cfg = train_config(args)
    published = train_and_publish_matrix(
        m,
        split,
        net_overrides=net_overrides(args),
        train_cfg=cfg,
        extra_members=blend_members(args, cfg),
        registry=registry,
        review_rate=args.review_rate,
        decline_rate=args.decline_rate,
        source=str(args.file),
        shadow=args.shadow,
    )
    val = published.metrics["validation"]
    fit = published.fit
    best = (
        f"best epoch per member {', '.join(map(str, fit.member_best_epochs))}"
        if len(fit.member_best_epochs) > 1
        else f"best epoch {fit.best_epoch}"
    )
    print(
        f"validation: AUC {val['auc_roc']:.4f}  AP {val['average_precision']:.4f}  "
        f"CP@100 {val['card_precision_at_100']:.4f}  ({best}, "
        f"{sum(published.fit.epoch_seconds):.0f}s training)",
        file=sys.stderr,
    )
    if args.json:
        args.json.write_text(json.dumps({"version": published.version, **published.metrics}, indent=2))
    print(published.version)
    return 0
