"""``riskstream backtest FILE --model VERSION [--compare VERSION] --out DIR``."""

from __future__ import annotations

import argparse

HELP = "Backtest model versions offline over a historical file; writes metrics.json, plots and HTML."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--model", default=None, help="behaviour model version (default: the current one)")
    p.add_argument("--compare", default=None, help="a challenger version scored on the same events")
    p.add_argument("--text-model", default=None, help="text model version to combine (default: none)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument(
        "--eval-from", default=None, help="count metrics from this date; earlier events warm state up"
    )
    p.add_argument("--eval-until", default=None, help="stop at this date (exclusive)")
    p.add_argument("--no-clicks", action="store_true", help="score without the synthetic clickstream")
    p.add_argument("--batch", type=int, default=4096, help="inference batch size")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from modeling.predictor import Predictor, PredictorOptions
    from modeling.registry import ModelRegistry
    from modeling.scoring import Scorer
    from modeling.settings import feature_config, load_settings
    from modeling.text.scorer import TextScorer
    from training.backtest import backtest
    from training.report import write_report

    settings = load_settings()
    config = feature_config(settings)
    if args.no_clicks:
        from dataclasses import replace

        config = replace(config, use_clicks=False)
    registry = ModelRegistry(settings.registry_dir)
    options = PredictorOptions.from_settings(settings, model_max_batch=max(args.batch, 1))
    text = TextScorer.from_registry(settings.registry_dir, args.text_model) if args.text_model else None
    scorers: list[Scorer] = []
    for version in [args.model, args.compare]:
        if version is None and scorers:
            continue
        pred = Predictor.load(
            registry, "behaviour", options, version=version, expected_feature_set=config.feature_set
        )
        scorers.append(Scorer(pred, config, text))
    res = backtest(
        args.file,
        scorers,
        config,
        eval_from=args.eval_from,
        eval_until=args.eval_until,
        clicks=not args.no_clicks,
        batch=args.batch,
    )
    doc = write_report(res, Path(args.out), str(args.file))
    print(f"{res.n_events:,} events in {res.seconds:.1f} s = {res.events_per_s:,.0f} events/s")
    for m in doc["models"]:
        if "auc_roc" in m:
            print(
                f"{m['model_version']}: AUC {m['auc_roc']:.4f}  AP {m['average_precision']:.4f}  "
                f"CP@100 {m['card_precision_at_100']:.4f}  review alert rate "
                f"{m['at_threshold']['review']['alert_rate']:.3%} catching "
                f"{m['at_threshold']['review']['recall']:.1%} of fraud"
            )
    print(f"report: {Path(args.out) / 'index.html'}")
    return 0
