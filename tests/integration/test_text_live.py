"""A transaction carrying free text gets a text-aware risk event from the live scorer: the text
model is published into the same registry and served in the same micro-batches."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import orjson
from harness import Scenario, WorkerProc, consume, produce, run

from modeling.records import Transaction
from streams.cli import main
from training.text_train import read_labeled_csv

CSV = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "teleantifraud"
    / "teleantifraud_dialogues_zh.csv"
)
SMALL = ["--layers", "1", "--hidden", "64", "--heads", "2", "--intermediate", "128", "--max-len", "64"]


def test_transactions_with_text_get_text_scores(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    reg = tmp_path / "registry"
    shutil.copytree(model_registry, reg)
    texts, labels = read_labeled_csv(CSV)
    small = tmp_path / "tele200.csv"
    with small.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(zip(texts[:200], labels[:200].tolist(), strict=True))
    assert (
        main(
            ["train-text", str(small), "--registry", str(reg), "--epochs", "1", "--batch-size", "16", *SMALL]
        )
        == 0
    )

    sc = Scenario(kafka_broker, reg, tmp_path, partitions=2)
    worker = WorkerProc(sc, "text").start()
    try:
        worker.wait_metrics()
        t0 = 1_528_000_000_000
        txns = [
            Transaction("t-plain", "u1", "term1", 25.0, t0),
            Transaction(
                "t-memo",
                "u2",
                "term2",
                900.0,
                t0 + 1,
                text="您好,这里是银行客服,请把钱转到安全账户6222 0200 1234 5678",
            ),
            Transaction("t-empty", "u3", "term3", 12.0, t0 + 2, text=""),
        ]
        run(
            produce(
                sc.bootstrap,
                sc.topics["transactions"],
                [(t.user_id.encode(), orjson.dumps(t.to_dict())) for t in txns],
            )
        )
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], until=3, timeout=120))
    finally:
        worker.stop()
    events = {e["transaction_id"]: e for e in (orjson.loads(r.value) for r in recs)}
    assert set(events) == {"t-plain", "t-memo", "t-empty"}
    assert "text_score" not in events["t-plain"] and "text_score" not in events["t-empty"]
    memo = events["t-memo"]
    assert 0.0 <= memo["text_score"] <= 1.0
    assert "+text-" in memo["model_version"]  # both models named in the event
    b, ts = memo["behaviour_score"], memo["text_score"]
    assert abs(memo["score"] - (1 - (1 - b) * (1 - 0.5 * ts))) < 1e-6  # weighted noisy-OR
    if memo["decision"] != "approve" and 0.5 * ts >= b:
        assert memo["reasons"][0] == "TEXT_RISK"
