"""``riskstream train-text FILE``: train the Chinese text risk model on a ``text,label`` CSV, report
held-out metrics beside a length-only and a character-bigram baseline, export it and publish it into
the model registry as kind ``text``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

HELP = "train the Chinese text risk model on a text,label CSV and publish it (kind 'text')"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="UTF-8 CSV with columns text,label (label 0 or 1)")
    parser.add_argument("--registry", type=Path, help="model registry directory (default: settings)")
    parser.add_argument("--no-publish", action="store_true", help="train and evaluate only")
    parser.add_argument(
        "--shadow",
        action="store_true",
        help="publish as the shadow text model: scored beside the served one until "
        "`models promote --kind text`",
    )
    parser.add_argument("--pretrained", type=Path, help="local directory with ERNIE weights and tokenizer")
    parser.add_argument("--limit", type=int, help="use only the first N rows (quick runs)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-len", type=int, default=128, help="tokens per text, [CLS]/[SEP] included")
    parser.add_argument("--max-chars", type=int, default=1024, help="characters kept after filtering")
    parser.add_argument("--epochs", type=int, default=10, help="maximum epochs (early stopping ends sooner)")
    parser.add_argument("--patience", type=int, default=2, help="epochs without validation improvement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--vocab-min-freq", type=int, default=2)
    parser.add_argument("--vocab-max-size", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: settings)")
    parser.add_argument("--metrics-out", type=Path, help="also write the metrics as JSON here")


def _table(metrics: dict[str, dict[str, Any]]) -> str:
    rows = [("model", "precision", "recall", "F1", "AUC", "threshold")]
    names = {
        "test": "ERNIE (test)",
        "length_baseline": "length only (test)",
        "char_bigram_nb_baseline": "char bigram NB (test)",
        "validation": "ERNIE (validation)",
    }
    for key, label in names.items():
        m = metrics[key]
        rows.append(
            (
                label,
                f"{m['precision']:.4f}",
                f"{m['recall']:.4f}",
                f"{m['f1']:.4f}",
                f"{m['auc']:.4f}",
                f"{m['threshold']:.4g}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def run(args: argparse.Namespace) -> int:
    from modeling.settings import load_settings
    from modeling.text.env import prepare_paddlenlp

    prepare_paddlenlp()
    from paddlenlp.utils.log import logger

    logger.set_level("WARNING")

    from modeling.text.filters import FilterConfig
    from modeling.text.model import ErnieSize
    from training.text_train import (
        TextTrainOptions,
        file_sha256,
        publish_text_model,
        read_labeled_csv,
        train_text,
    )

    settings = load_settings()
    texts, labels = read_labeled_csv(args.file)
    if args.limit:
        texts, labels = texts[: args.limit], labels[: args.limit]
    options = TextTrainOptions(
        max_len=args.max_len,
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        patience=args.patience,
        learning_rate=args.lr,
        seed=args.seed,
        vocab_min_freq=args.vocab_min_freq,
        vocab_max_size=args.vocab_max_size,
        size=ErnieSize(
            num_hidden_layers=args.layers,
            hidden_size=args.hidden,
            num_attention_heads=args.heads,
            intermediate_size=args.intermediate,
        ),
        pretrained_dir=args.pretrained,
        filter=FilterConfig(max_chars=args.max_chars),
        threads=args.threads or settings.cpu_threads,
    )
    with tempfile.TemporaryDirectory(prefix="riskstream-text-") as tmp:
        work = Path(tmp)
        result = train_text(texts, labels, options, work)
        print(_table(result.metrics))
        print(f"training took {result.train_seconds:.1f} s; best epoch {result.best_epoch}")
        if args.metrics_out:
            args.metrics_out.parent.mkdir(parents=True, exist_ok=True)
            payload = {
                "metrics": result.metrics,
                "history": result.history,
                "data": result.data,
                "train_seconds": result.train_seconds,
                "hyperparameters": options.to_dict(),
            }
            args.metrics_out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        if args.no_publish:
            return 0
        registry = args.registry or settings.registry_dir
        version = publish_text_model(
            result,
            registry,
            work / "staging",
            {"file": args.file.name, "sha256": file_sha256(args.file)},
            shadow=args.shadow,
        )
    print(f"published text model {version}{' in shadow' if args.shadow else ''} into {registry}")
    return 0
