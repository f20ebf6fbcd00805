"""``riskstream train-text`` end to end on 200 rows of the shared TeleAntiFraud CSV: train with
early stopping, evaluate beside the baselines, export, publish into a registry, load the bundle
back through the registry's checksum verification and score raw text with TextScorer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from modeling.errors import ValidationError
from modeling.registry import ModelRegistry
from modeling.text.filters import CARD_TOKEN
from modeling.text.scorer import TextScorer, text_feature_set
from modeling.text.tokenizer import TextTokenizer
from streams.cli import main
from training.text_train import read_labeled_csv, training_batches

DATA = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "teleantifraud"
    / "teleantifraud_dialogues_zh.csv"
)
SMALL = ["--layers", "1", "--hidden", "64", "--heads", "2", "--intermediate", "128", "--max-len", "64"]


@pytest.fixture(scope="module")
def rows200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts, labels = read_labeled_csv(DATA)
    out = tmp_path_factory.mktemp("data") / "tele200.csv"
    with out.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(zip(texts[:200], labels[:200].tolist(), strict=True))
    return out


def test_read_labeled_csv(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text('text,label\n"转账,到账",1\n外卖,0\n', encoding="utf-8")
    texts, labels = read_labeled_csv(good)
    assert texts == ["转账,到账", "外卖"] and labels.tolist() == [1, 0]
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("body,y\nx,1\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="text,label"):
        read_labeled_csv(bad_header)
    bad_label = tmp_path / "l.csv"
    bad_label.write_text("text,label\nx,yes\n", encoding="utf-8")
    with pytest.raises(ValidationError) as err:
        read_labeled_csv(bad_label)
    assert err.value.context["line"] == 2


def test_training_batches_cover_every_row_once_with_similar_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=333).tolist()
    batches = training_batches(lengths, 16, rng, pool=4)
    assert sorted(i for b in batches for i in b) == list(range(333))
    assert max(len(b) for b in batches) == 16


@pytest.mark.slow
def test_train_publish_load_score_round_trip(rows200: Path, tmp_path: Path) -> None:
    registry_dir = tmp_path / "registry"
    metrics_out = tmp_path / "metrics.json"
    rc = main(
        [
            "train-text",
            str(rows200),
            "--registry",
            str(registry_dir),
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--metrics-out",
            str(metrics_out),
            *SMALL,
        ]
    )
    assert rc == 0

    registry = ModelRegistry(registry_dir)
    version = registry.current("text")
    assert version == "text-0001"
    bundle = registry.load(version)  # verifies every file's sha256
    m = bundle.manifest
    tok = TextTokenizer.from_pretrained(bundle.path)
    assert m["vocab_sha256"] == tok.sha256
    assert m["max_len"] == 64
    assert m["feature_set"] == text_feature_set(tok.sha256, 64)
    assert registry.load(version, expected_feature_set=m["feature_set"]).version == version
    assert set(m["metrics"]) == {"test", "validation", "length_baseline", "char_bigram_nb_baseline"}
    for key in ("precision", "recall", "f1", "auc"):
        assert 0.0 <= m["metrics"]["test"][key] <= 1.0
    assert m["metrics"]["test"]["n"] == 30 and m["training_data"]["split"] == {
        "train": 140,
        "val": 30,
        "test": 30,
    }
    assert m["training_data"]["file"] == "tele200.csv"
    assert m["hyperparameters"]["architecture"]["hidden_size"] == 64
    assert 0.0 <= m["thresholds"]["review"] <= m["thresholds"]["decline"] <= 1.0
    assert m["model"]["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": [-1, -1]}]
    assert 1 <= m["best_epoch"] <= len(m["history"]) <= 3
    assert json.loads(metrics_out.read_text(encoding="utf-8"))["metrics"]["test"] == m["metrics"]["test"]

    scorer = TextScorer.from_registry(registry_dir)
    assert scorer.version == version and scorer.feature_set == m["feature_set"]
    texts, _ = read_labeled_csv(DATA)
    sample = [*texts[200:210], None, "", f"卡号6222021234567890123 {CARD_TOKEN}"]
    scores = scorer.score(sample)
    assert scores[10] is None and scores[11] is None
    assert all(s is not None and 0.0 <= s <= 1.0 for i, s in enumerate(scores) if i not in (10, 11))
