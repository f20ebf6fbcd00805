"""From a featurized history to a published, verified model version.

``train_and_publish`` splits the period point-in-time (validation = its last ``val_days``; the
training rows end ``delay_days`` before validation starts, as labels arrive that late), trains,
chooses decision thresholds and the reason-code attribution on validation, exports the
inference program, publishes it with a full manifest, then reloads it through the registry
(checksums, feature set) and Paddle Inference and checks the exported scores match.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modeling.decisions import ReasonCoder, choose_thresholds, decide_codes, fit_linear_surrogate
from modeling.evaluation import DAY_MS, days_from_ms, evaluate
from modeling.networks import NetConfig, export_fraudnet
from modeling.predictor import Predictor, PredictorOptions
from modeling.registry import BEHAVIOUR, ModelRegistry
from training.featurize import FeatureMatrix
from training.trainer import Arrays, FitResult, TrainConfig, fit_ensemble, score


@dataclass(frozen=True)
class Split:
    train: npt.NDArray[np.bool_]
    val: npt.NDArray[np.bool_]
    train_range: tuple[int, int]  # [start, end) epoch ms
    val_range: tuple[int, int]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def point_in_time_split(
    time_ms: npt.NDArray[np.int64], start_ms: int, end_ms: int, val_days: float, delay_days: float
) -> Split:
    """Validation = ``[end - val_days, end)``; training = ``[start, end - val_days - delay_days)``."""
    val_start = end_ms - int(val_days * DAY_MS)
    train_end = val_start - int(delay_days * DAY_MS)
    if train_end <= start_ms:
        raise ValueError(
            f"no training period left: {iso(start_ms)} .. {iso(end_ms)} minus {val_days} validation "
            f"and {delay_days} delay days"
        )
    t = np.asarray(time_ms)
    return Split(
        train=(t >= start_ms) & (t < train_end),
        val=(t >= val_start) & (t < end_ms),
        train_range=(start_ms, train_end),
        val_range=(val_start, end_ms),
    )


@dataclass(frozen=True)
class Published:
    version: str
    metrics: dict[str, Any]
    fit: FitResult
    path: Path


def decision_stats(
    y: npt.NDArray[Any], scores: npt.NDArray[np.float32], codes: npt.NDArray[np.int8]
) -> dict[str, Any]:
    n_fraud = max(int(np.sum(y != 0)), 1)
    out: dict[str, Any] = {}
    for name, flagged in (("review_or_decline", codes >= 1), ("decline", codes == 2)):
        n = int(flagged.sum())
        hits = int(np.sum(flagged & (y != 0)))
        out[name] = {
            "alert_rate": n / max(len(y), 1),
            "precision": hits / n if n else None,
            "recall": hits / n_fraud,
        }
    return out


def reason_coder(
    fitres: FitResult, val: Arrays, flagged: npt.NDArray[np.bool_], names: tuple[str, ...], seed: int = 0
) -> ReasonCoder:
    """Surrogate weights fitted on the validation events the model flags plus as many random ones."""
    import paddle

    model = fitres.model
    mean, inv_std = model.tab_net.norm.stats()
    base = ReasonCoder(
        names, mean, inv_std, np.zeros(len(names), np.float32), log_inputs=model.cfg.log_inputs
    )
    rng = np.random.default_rng(seed)
    n_flag = int(flagged.sum())
    others = np.flatnonzero(~flagged)
    pick = np.concatenate(
        [np.flatnonzero(flagged), rng.choice(others, min(len(others), max(n_flag, 256)), replace=False)]
    )
    with paddle.no_grad():
        logits = np.concatenate(
            [
                model.logits(
                    paddle.to_tensor(val.tab[pick[i : i + 8192]]),
                    paddle.to_tensor(val.seq[pick[i : i + 8192]]),
                )
                .numpy()
                .ravel()
                for i in range(0, len(pick), 8192)
            ]
        )
    weights = fit_linear_surrogate(base.standardize(val.tab[pick]), logits)
    return ReasonCoder(names, mean, inv_std, weights, log_inputs=model.cfg.log_inputs)


def train_and_publish(
    *,
    tab: npt.NDArray[np.float32],
    seq: npt.NDArray[np.float32],
    y: npt.NDArray[np.int8],
    time_ms: npt.NDArray[np.int64],
    cards: npt.NDArray[Any],
    feature_names: tuple[str, ...],
    feature_set: str,
    split: Split,
    net_overrides: dict[str, Any],
    train_cfg: TrainConfig,
    registry: ModelRegistry,
    review_rate: float = 0.01,
    decline_rate: float = 0.002,
    source: str = "",
    extra: dict[str, Any] | None = None,
    extra_members: Sequence[tuple[dict[str, Any], TrainConfig]] = (),
    shadow: bool = False,
) -> Published:
    """Train (``net_overrides`` + ``train_cfg``, plus ``extra_members`` blended in logit space),
    choose thresholds and reason codes on validation, export, publish (with ``shadow``: as the
    registry's shadow version, scored beside the served one), verify; see the module doc."""
    train = Arrays(tab[split.train], seq[split.train], y[split.train])
    val = Arrays(tab[split.val], seq[split.val], y[split.val])
    if len(val) == 0:
        raise ValueError("the validation period has no transactions")
    shape = {"n_features": tab.shape[1], "seq_len": seq.shape[1], "seq_features": seq.shape[2]}
    net_cfg = NetConfig(**shape, **net_overrides)
    members = [(net_cfg, train_cfg)] + [(NetConfig(**shape, **o), c) for o, c in extra_members]
    fitres = fit_ensemble(members, train, val)

    val_scores = score(fitres.model, val.tab, val.seq, train_cfg.eval_batch_size)
    thresholds = choose_thresholds(val_scores, review_rate, decline_rate)
    codes = decide_codes(val_scores, thresholds)
    val_metrics = evaluate(val.y, val_scores, cards[split.val], days_from_ms(time_ms[split.val])).to_dict()
    coder = reason_coder(fitres, val, codes >= 1, feature_names)

    with tempfile.TemporaryDirectory(prefix="riskstream-bundle-") as tmp:
        stage = Path(tmp) / "bundle"
        info = export_fraudnet(fitres.model, stage)
        manifest: dict[str, Any] = {
            "feature_set": feature_set,
            "feature_names": list(feature_names),
            "model": info.to_dict(),
            "training_data": {
                "source": source,
                "train_from": iso(split.train_range[0]),
                "train_until": iso(split.train_range[1]),
                "validation_from": iso(split.val_range[0]),
                "validation_until": iso(split.val_range[1]),
                "label_delay_days": (split.val_range[0] - split.train_range[1]) / DAY_MS,
                "n_train": len(train),
                "n_validation": len(val),
                "fraud_rate_train": float(np.mean(train.y != 0)),
                "fraud_rate_validation": float(np.mean(val.y != 0)),
            },
            "hyperparameters": {
                "net": net_cfg.to_dict(),
                "train": train_cfg.to_dict(),
                "pos_weight": fitres.pos_weight,
                "blend": [{"net": n.to_dict(), "train": c.to_dict()} for n, c in members[1:]],
            },
            "metrics": {
                "validation": val_metrics,
                "validation_note": "the validation period also chose the early-stopping epoch",
                "decisions_validation": decision_stats(val.y, val_scores, codes),
                "training": fitres.summary(),
            },
            "thresholds": thresholds.to_dict(),
            "reasons": coder.to_dict(),
        }
        manifest.update(extra or {})
        version = registry.publish(BEHAVIOUR, stage, manifest, shadow=shadow)

    # Verify what was published: checksums, feature set, and the exported program's scores.
    predictor = Predictor.load(
        registry,
        BEHAVIOUR,
        PredictorOptions(device="cpu", use_onednn=False),
        version=version,
        expected_feature_set=feature_set,
    )
    k = min(len(val), 2048)
    exported = predictor.predict({"tab": val.tab[:k], "seq": val.seq[:k]})
    if not np.allclose(exported, val_scores[:k], rtol=1e-4, atol=1e-5):
        worst = float(np.max(np.abs(exported - val_scores[:k])))
        raise RuntimeError(f"published {version} scores differ from the trained model by up to {worst:g}")
    return Published(version, manifest["metrics"], fitres, registry.path(version))


def train_and_publish_matrix(m: FeatureMatrix, split: Split, **kwargs: Any) -> Published:
    """:func:`train_and_publish` on a :class:`training.featurize.FeatureMatrix` (its arrays,
    cards = user ids, feature names and feature-set identity); ``kwargs`` as there."""
    return train_and_publish(
        tab=m.tab,
        seq=m.seq,
        y=m.y,
        time_ms=m.time_ms,
        cards=m.user_id,
        feature_names=m.feature_names,
        feature_set=m.feature_set,
        split=split,
        **kwargs,
    )
