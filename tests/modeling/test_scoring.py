"""The scorer over a real exported behaviour model: a shadow scorer reuses the text scores the
served scorer computed, with the verdicts it would have computed itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from modeling.features import FeatureConfig, FeatureEngine
from modeling.predictor import Predictor, PredictorOptions
from modeling.records import Transaction
from modeling.registry import ModelRegistry
from modeling.scoring import Scorer

T0 = 1_527_811_200_000
CONFIG = FeatureConfig()


class KeywordText:
    """A text model that scores by keyword and counts the texts it was asked to score."""

    version = "text-0001"

    def __init__(self) -> None:
        self.scored = 0

    def score(self, texts: Sequence[str | None]) -> list[float | None]:
        self.scored += len(texts)
        return [None if t is None else (0.9 if "转账" in t else 0.1) for t in texts]


def _predictor(publish: Callable[[Path, int], tuple[ModelRegistry, str]], root: Path, seed: int) -> Predictor:
    reg, version = publish(root, seed)
    return Predictor.load(reg, "behaviour", PredictorOptions(device="cpu", use_onednn=False), version=version)


def test_a_shadow_scorer_reuses_the_text_scores(
    tmp_path: Path, publish_small_model: Callable[[Path, int], tuple[ModelRegistry, str]]
) -> None:
    engine = FeatureEngine(CONFIG)
    txns = [
        Transaction(
            f"t{i}", f"u{i % 3}", "term", 10.0 + i, T0 + i * 60_000, text=["请转账", None, "订外卖"][i % 3]
        )
        for i in range(12)
    ]
    users = {u: engine.new_user() for u in {t.user_id for t in txns}}
    feats = [engine.transaction(users[t.user_id], t, None) for t in txns]
    text = KeywordText()
    served = Scorer(_predictor(publish_small_model, tmp_path, 1), CONFIG, text)
    shadow = Scorer(_predictor(publish_small_model, tmp_path, 2), CONFIG, text)
    verdicts = served.score(txns, feats)
    assert text.scored == 8  # the 8 transactions with text
    own = shadow.score(txns, feats)
    assert text.scored == 16
    reused = shadow.score(txns, feats, text_scores=[v.text_score for v in verdicts])
    assert text.scored == 16, "the text model ran again"
    assert reused == own
    assert [v.text_score for v in reused] == [v.text_score for v in verdicts]
    assert [v.behaviour_score for v in reused] != [v.behaviour_score for v in verdicts]  # another model
