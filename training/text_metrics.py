"""Splits, metrics and baselines for the text model. Pure numpy.

* :func:`stratified_split`: seeded train/validation/test indices with the class ratio kept in each.
* :func:`binary_metrics` (AUC and average precision from :mod:`modeling.evaluation`),
  :func:`best_f1_threshold`, :func:`threshold_for_precision`.
* :class:`LengthBaseline`: logistic regression on standardised text length (and its log).
* :class:`CharBigramNB`: multinomial naive Bayes over character uni- and bigrams.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modeling.evaluation import average_precision, roc_auc

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Split:
    train: IntArray
    val: IntArray
    test: IntArray


def stratified_split(labels: npt.ArrayLike, val_frac: float, test_frac: float, seed: int) -> Split:
    """Indices into ``labels`` for train/val/test; each class is shuffled and cut in the same ratio."""
    y = np.asarray(labels)
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"bad fractions: val {val_frac}, test {test_frac}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[IntArray]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls)).astype(np.int64)
        n_test = max(1, round(len(idx) * test_frac))
        n_val = max(1, round(len(idx) * val_frac))
        if n_test + n_val >= len(idx):
            raise ValueError(f"class {cls} has {len(idx)} rows: too few to split")
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    out = {k: rng.permutation(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}
    return Split(train=out["train"], val=out["val"], test=out["test"])


def binary_metrics(y: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and accuracy at ``score >= threshold``, AUC over all thresholds."""
    yt = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pred = s >= threshold
    tp = int((pred & yt).sum())
    fp = int((pred & ~yt).sum())
    fn = int((~pred & yt).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": roc_auc(yt, s),
        "average_precision": average_precision(yt, s),
        "accuracy": float((pred == yt).mean()) if len(yt) else math.nan,
        "threshold": float(threshold),
        "n": len(yt),
        "positives": int(yt.sum()),
    }


def _margin_cut(cuts: FloatArray, k: int) -> float:
    """Halfway between cut ``k`` and the next lower distinct score: the same decisions on the data
    the cut was chosen on, with a margin on both sides instead of sitting on a positive's score."""
    return float(cuts[k]) if k == 0 else float((cuts[k - 1] + cuts[k]) / 2.0)


def best_f1_threshold(y: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """The threshold that maximises F1 (ties: the middle of the tied cuts), placed halfway between
    the chosen score and the next lower one; 0.5 when there are no positives."""
    yt = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not yt.any():
        return 0.5
    cuts = np.unique(s)
    f1 = np.array([binary_metrics(yt, s, float(t))["f1"] for t in cuts])
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return _margin_cut(cuts, int(best[len(best) // 2]))


def threshold_for_precision(y: npt.ArrayLike, scores: npt.ArrayLike, target: float) -> float | None:
    """The threshold with the most recall whose precision reaches ``target``, placed halfway below
    the qualifying score (as :func:`best_f1_threshold`); None when no cut reaches it."""
    yt = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    cuts = np.unique(s)
    for k, t in enumerate(cuts):  # ascending: the first cut that qualifies keeps the most recall
        pred = s >= t
        if pred.any() and float(yt[pred].mean()) >= target:
            return _margin_cut(cuts, k)
    return None


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
    return out


@dataclass(frozen=True, slots=True)
class LengthBaseline:
    """Logistic regression on (length, log length), standardised, fitted by Newton's method."""

    mean: FloatArray
    std: FloatArray
    weights: FloatArray

    @staticmethod
    def _design(lengths: npt.ArrayLike) -> FloatArray:
        n = np.asarray(lengths, dtype=np.float64)
        return np.stack([n, np.log1p(n)], axis=1)

    @classmethod
    def fit(
        cls, lengths: npt.ArrayLike, y: npt.ArrayLike, *, l2: float = 1e-3, iters: int = 50
    ) -> LengthBaseline:
        x = cls._design(lengths)
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
        a = np.hstack([np.ones((len(x), 1)), (x - mean) / std])
        t = np.asarray(y, dtype=np.float64)
        w = np.zeros(a.shape[1])
        reg = l2 * np.eye(a.shape[1])
        reg[0, 0] = 0.0
        for _ in range(iters):
            p = _sigmoid(a @ w)
            grad = a.T @ (p - t) + reg @ w
            hess = (a * (p * (1 - p))[:, None]).T @ a + reg + 1e-9 * np.eye(a.shape[1])
            step = np.linalg.solve(hess, grad)
            w = w - step
            if float(np.abs(step).max()) < 1e-8:
                break
        return cls(mean=mean, std=std, weights=w)

    def predict_proba(self, lengths: npt.ArrayLike) -> FloatArray:
        x = (self._design(lengths) - self.mean) / self.std
        return _sigmoid(self.weights[0] + x @ self.weights[1:])


def char_ngrams(text: str) -> Iterable[str]:
    yield from text
    yield from (text[i : i + 2] for i in range(len(text) - 1))


@dataclass(frozen=True, slots=True)
class CharBigramNB:
    """Multinomial naive Bayes over character unigrams and bigrams, Laplace-smoothed."""

    log_prior: tuple[float, float]
    log_like: tuple[dict[str, float], dict[str, float]]
    log_unseen: tuple[float, float]

    @classmethod
    def fit(cls, texts: Sequence[str], y: npt.ArrayLike, *, alpha: float = 1.0) -> CharBigramNB:
        labels = np.asarray(y).astype(int)
        counts: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
        for text, label in zip(texts, labels, strict=True):
            counts[label].update(char_ngrams(text))
        vocab = set(counts[0]) | set(counts[1])
        v = len(vocab) + 1
        priors = [(labels == c).mean() for c in (0, 1)]
        likes: list[dict[str, float]] = []
        unseen: list[float] = []
        for c in (0, 1):
            total = sum(counts[c].values()) + alpha * v
            likes.append({g: math.log((counts[c][g] + alpha) / total) for g in vocab})
            unseen.append(math.log(alpha / total))
        return cls(
            log_prior=(math.log(max(priors[0], 1e-12)), math.log(max(priors[1], 1e-12))),
            log_like=(likes[0], likes[1]),
            log_unseen=(unseen[0], unseen[1]),
        )

    def log_odds(self, texts: Sequence[str]) -> FloatArray:
        """log P(1|text) - log P(0|text): a score that does not saturate as probabilities do."""
        out = np.empty(len(texts), dtype=np.float64)
        for i, text in enumerate(texts):
            s = [self.log_prior[c] for c in (0, 1)]
            for g in char_ngrams(text):
                s[0] += self.log_like[0].get(g, self.log_unseen[0])
                s[1] += self.log_like[1].get(g, self.log_unseen[1])
            out[i] = s[1] - s[0]
        return out
