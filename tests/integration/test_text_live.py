"""A transaction carrying free text gets a text-aware risk event from the live scorer: the text
model is published into the same registry and served in the same micro-batches; a second text
model published in shadow is scored beside it and then promoted, without a restart."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import orjson
from harness import Scenario, WorkerProc, consume, produce, run, wait_model_info

from modeling.records import Transaction
from modeling.registry import ModelRegistry
from modeling.text.scorer import TextScorer
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
TRAIN = ["--epochs", "1", "--batch-size", "16", *SMALL]


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
    assert main(["train-text", str(small), "--registry", str(reg), *TRAIN]) == 0

    sc = Scenario(kafka_broker, reg, tmp_path, partitions=2)

    def send(txns: list[Transaction]) -> None:
        items = [(t.user_id.encode(), orjson.dumps(t.to_dict())) for t in txns]
        run(produce(sc.bootstrap, sc.topics["transactions"], items))

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
        send(txns)
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], until=3, timeout=120))

        # A second text model in shadow: scored beside the served models, promoted without a restart
        assert (
            main(["train-text", str(small), "--registry", str(reg), "--shadow", *TRAIN, "--seed", "11"]) == 0
        )
        registry = ModelRegistry(reg)
        served_text, challenger = registry.current("text"), registry.shadow("text")
        assert served_text is not None and challenger is not None and challenger != served_text
        behaviour = registry.current("behaviour")
        wait_model_info(worker, text=served_text, text_shadow=challenger)
        later = [
            Transaction(f"s-{t.transaction_id}", t.user_id, t.terminal_id, t.amount, t0 + 10 + i, text=t.text)
            for i, t in enumerate(txns)
        ]
        send(later)
        recs2 = run(consume(sc.bootstrap, sc.topics["risk_events"], until=6, timeout=120))
        assert main(["models", "--registry", str(reg), "promote", "--kind", "text"]) == 0
        wait_model_info(worker, text=challenger, text_shadow="")
    finally:
        worker.stop()
    shadowed = {e["transaction_id"]: e for e in (orjson.loads(r.value) for r in recs2[3:])}
    assert set(shadowed) == {t.transaction_id for t in later}
    for e in shadowed.values():
        assert e["model_version"] == f"{behaviour}+{served_text}"
        assert e["shadow"]["model_version"] == f"{behaviour}+{challenger}"
    assert shadowed["s-t-plain"]["shadow"]["score"] == shadowed["s-t-plain"]["score"]  # no text: same models
    ts2 = TextScorer.from_registry(reg, challenger).score([later[1].text])[0]
    assert ts2 is not None
    memo2 = shadowed["s-t-memo"]
    b2 = memo2["behaviour_score"]  # the served behaviour model, shared by the shadow
    assert abs(memo2["shadow"]["score"] - (1 - (1 - b2) * (1 - 0.5 * ts2))) < 1e-5
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
