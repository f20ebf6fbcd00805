"""From feature vectors to verdicts: the behaviour model, the optional text model, decisions and
reason codes. The live worker and the backtest both score through :class:`Scorer`.

Combination: when a transaction carries text and a text model is loaded, the two probabilities
are combined by a weighted noisy-OR, ``1 - (1 - p_behaviour) * (1 - w * p_text)`` with ``w`` the
``text_weight`` setting (default 0.5: text alone cannot reach a decline on its own unless the
decline threshold is below 0.5), and the reason codes say which part drove the decision
(``TEXT_RISK`` first when the weighted text score is the larger).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np

from modeling.decisions import ReasonCoder, Thresholds, decide
from modeling.errors import FeatureSetMismatch, ModelLoadError
from modeling.features import FeatureConfig, TxnFeatures, stack
from modeling.records import RiskEvent, ShadowVerdict, Transaction

LATE_REASON: Final = "LATE_EVENT"
TEXT_REASON: Final = "TEXT_RISK"


class ScoresBatch(Protocol):
    version: str
    manifest: dict[str, Any]

    @property
    def feature_set(self) -> str | None: ...

    @property
    def thresholds(self) -> dict[str, Any]: ...

    def predict(self, inputs: Any) -> Any: ...

    async def predict_async(self, inputs: Any) -> Any: ...


class TextModel(Protocol):
    @property
    def version(self) -> str: ...

    def score(self, texts: Sequence[str | None]) -> list[float | None]: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    decision: str
    reasons: tuple[str, ...]
    text_score: float | None = None
    behaviour_score: float = 0.0


class Scorer:
    """One behaviour model (and optionally one text model) ready to score batches."""

    def __init__(
        self,
        behaviour: ScoresBatch,
        config: FeatureConfig,
        text: TextModel | None = None,
        *,
        text_weight: float = 0.5,
    ) -> None:
        if not 0.0 <= text_weight <= 1.0:
            raise ValueError(f"text_weight must be in [0, 1], got {text_weight}")
        if behaviour.feature_set != config.feature_set:
            raise FeatureSetMismatch(
                "model was trained on another feature set than this worker computes",
                model=behaviour.version,
                model_feature_set=behaviour.feature_set,
                engine_feature_set=config.feature_set,
            )
        if not behaviour.thresholds:
            raise ModelLoadError("model manifest has no decision thresholds", model=behaviour.version)
        self.behaviour = behaviour
        self.text = text
        self.text_weight = text_weight
        self.config = config
        self.thresholds = Thresholds.from_dict(behaviour.thresholds)
        reasons = behaviour.manifest.get("reasons")
        self.reasons = ReasonCoder.from_dict(reasons) if isinstance(reasons, dict) else None
        self.feature_set = config.feature_set
        self.version = behaviour.version if text is None else f"{behaviour.version}+{text.version}"

    def score(
        self,
        txns: Sequence[Transaction],
        feats: list[TxnFeatures],
        *,
        text_scores: Sequence[float | None] | None = None,
    ) -> list[Verdict]:
        """Verdicts for a batch. ``text_scores``: the text model's scores for these transactions
        when already computed (a shadow model scoring the batch after the current one), so that
        the text model does not run twice."""
        tab, seq = self.inputs(feats)
        return self.verdicts(txns, feats, tab, self.behaviour.predict({"tab": tab, "seq": seq}), text_scores)

    def inputs(self, feats: list[TxnFeatures]) -> tuple[np.ndarray, np.ndarray]:
        """The behaviour model's inputs for a batch (``tab``, ``seq``): :meth:`score` in parts,
        for a caller that runs the model itself (the worker awaits ``Predictor.predict_async``)."""
        return stack(feats, self.config)

    def risk_event(
        self,
        tx: Transaction,
        v: Verdict,
        scored_time_ms: int,
        latency_ms: dict[str, float],
        shadow: ShadowVerdict | None = None,
    ) -> RiskEvent:
        """The risk event for ``tx`` scored ``v`` by this scorer (the behaviour model's own score
        rides along only when a text score was combined into ``v.score``)."""
        return RiskEvent(
            transaction_id=tx.transaction_id,
            user_id=tx.user_id,
            score=v.score,
            decision=v.decision,
            reasons=v.reasons,
            model_version=self.version,
            feature_set=self.feature_set,
            event_time_ms=tx.event_time_ms,
            scored_time_ms=scored_time_ms,
            latency_ms=latency_ms,
            text_score=v.text_score,
            behaviour_score=None if v.text_score is None else v.behaviour_score,
            shadow=shadow,
        )

    def verdicts(
        self,
        txns: Sequence[Transaction],
        feats: list[TxnFeatures],
        tab: np.ndarray,
        behaviour_scores: Any,
        text_scores: Sequence[float | None] | None = None,
    ) -> list[Verdict]:
        """The rest of :meth:`score` once the behaviour model scored ``tab`` (and ``seq``)."""
        p = np.asarray(behaviour_scores, dtype=np.float64)
        text_scores_out: list[float | None] = [None] * len(txns)
        combined = p
        if self.text is not None:
            if text_scores is None:
                idx = [i for i, t in enumerate(txns) if t.text]
                scored = self.text.score([txns[i].text for i in idx]) if idx else []
                text_scores = [None] * len(txns)
                for i, ts in zip(idx, scored, strict=True):
                    text_scores[i] = ts
            for i, s in enumerate(text_scores):
                if s is not None:
                    if combined is p:
                        combined = p.copy()
                    text_scores_out[i] = float(s)
                    combined[i] = 1.0 - (1.0 - p[i]) * (1.0 - self.text_weight * s)
        decisions = decide(combined, self.thresholds)
        flagged = [i for i, d in enumerate(decisions) if d != "approve"]
        codes: dict[int, tuple[str, ...]] = {}
        if flagged and self.reasons is not None:
            for i, c in zip(flagged, self.reasons.explain(tab[flagged]), strict=True):
                codes[i] = c
        out: list[Verdict] = []
        for i, d in enumerate(decisions):
            r = codes.get(i, ())
            ts_i = text_scores_out[i]
            if ts_i is not None and d != "approve" and self.text_weight * ts_i >= p[i]:
                r = (TEXT_REASON, *r)
            if feats[i].late:
                r = (*r, LATE_REASON)
            out.append(Verdict(float(combined[i]), d, r, ts_i, float(p[i])))
        return out
