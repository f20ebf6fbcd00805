"""Evaluation exactly as the Fraud Detection Handbook defines it (Le Borgne et al., chapters 4-5):
AUC ROC, Average Precision, Card Precision@k, and the prequential protocol (7 days train,
7 days delay, 7 days test; folds shifted by a week). Pure numpy.

* :func:`roc_auc` is the Mann-Whitney statistic with tied scores counted as ½ (sklearn's
  ``roc_auc_score``).
* :func:`average_precision` is the step-wise sum ``Σ (R_n − R_{n−1}) P_n`` over distinct score
  thresholds, no interpolation (sklearn's ``average_precision_score``, which the handbook uses).
* :func:`card_precision_top_k` follows the handbook's ``card_precision_top_k``: for each day, the
  transactions of cards already *detected* (a fraudulent card that made an earlier day's top k)
  are dropped; the remaining cards are ranked by their maximum score that day; precision is the
  fraction of the top k cards with at least one fraud that day, divided by k even if fewer than k
  cards transacted; the result is the mean over days. Tied maxima are broken by card id
  (ascending), where the handbook's pandas quicksort leaves the order unspecified.
* :func:`prequential_folds` reproduces ``get_train_test_set``: the test set drops transactions of
  cards *known* to be compromised, i.e. with a fraud in the training week or in the delay period
  up to the day before each test day minus the delay (the handbook's exact day arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DAY_MS = 86_400_000

#: The handbook's published test-set results (AUC ROC, Average Precision, Card Precision@100).
HANDBOOK_RESULTS: dict[str, tuple[float, float, float]] = {
    "Logistic regression": (0.868, 0.623, 0.297),
    "Random forest": (0.870, 0.678, 0.299),
    "XGBoost": (0.869, 0.687, 0.303),
    "Feed-forward neural network": (0.876, 0.675, 0.303),
    "LSTM": (0.876, 0.665, 0.297),
}


def _check(y: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    yy = np.asarray(y).ravel() != 0
    ss = np.asarray(scores, dtype=np.float64).ravel()
    if yy.shape != ss.shape:
        raise ValueError(f"labels and scores differ in length: {yy.shape[0]} != {ss.shape[0]}")
    if not np.all(np.isfinite(ss)):
        raise ValueError("scores contain NaN or infinity")
    return yy, ss


def roc_auc(y: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    yy, ss = _check(y, scores)
    n_pos = int(yy.sum())
    n_neg = len(yy) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(ss, kind="mergesort")
    sorted_s = ss[order]
    # average rank (1-based) of each run of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(sorted_s)]
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(ss), dtype=np.float64)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    u = ranks[yy].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(y: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Average precision (step-wise, over distinct thresholds); NaN without positives."""
    yy, ss = _check(y, scores)
    n_pos = int(yy.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-ss, kind="mergesort")
    s_desc = ss[order]
    y_desc = yy[order]
    last_of_run = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tps = np.cumsum(y_desc)[last_of_run].astype(np.float64)
    precision = tps / (last_of_run + 1)
    recall_step = np.diff(np.r_[0.0, tps]) / n_pos
    return float(np.sum(recall_step * precision))


@dataclass(frozen=True)
class CardPrecision:
    mean: float
    per_day: tuple[float, ...]
    days: tuple[int, ...]
    compromised_cards_per_day: tuple[int, ...]


def card_precision_top_k(
    y: npt.ArrayLike,
    scores: npt.ArrayLike,
    cards: npt.ArrayLike,
    days: npt.ArrayLike,
    k: int = 100,
    *,
    remove_detected: bool = True,
) -> CardPrecision:
    """The handbook's Card Precision@k; ``days`` are integer day indices, ``cards`` any ids."""
    yy, ss = _check(y, scores)
    card_codes = np.unique(np.asarray(cards).ravel(), return_inverse=True)[1].ravel()
    dd = np.asarray(days).ravel()
    if not len(card_codes) == len(dd) == len(yy):
        raise ValueError("y, scores, cards and days must have the same length")
    detected = np.zeros(int(card_codes.max()) + 1 if len(card_codes) else 0, dtype=bool)
    per_day: list[float] = []
    n_compromised: list[int] = []
    day_values = np.unique(dd)
    for day in day_values:
        idx = np.flatnonzero(dd == day)
        idx = idx[~detected[card_codes[idx]]]
        u, inv = np.unique(card_codes[idx], return_inverse=True)
        inv = inv.ravel()
        max_score = np.full(len(u), -np.inf)
        np.maximum.at(max_score, inv, ss[idx])
        fraud = np.zeros(len(u), dtype=bool)
        np.logical_or.at(fraud, inv, yy[idx])
        n_compromised.append(int(fraud.sum()))
        top = np.lexsort((u, -max_score))[:k]  # highest max score first, ties by card id
        hits = u[top][fraud[top]]
        per_day.append(len(hits) / k)
        if remove_detected:
            detected[hits] = True
    mean = float(np.mean(per_day)) if per_day else float("nan")
    return CardPrecision(mean, tuple(per_day), tuple(int(d) for d in day_values), tuple(n_compromised))


@dataclass(frozen=True)
class Fold:
    """One prequential fold: row indices and the (inclusive) day ranges they cover."""

    train_idx: npt.NDArray[np.int64]
    test_idx: npt.NDArray[np.int64]
    train_days: tuple[int, int]
    test_days: tuple[int, int]

    def describe(self) -> dict[str, Any]:
        return {
            "train_days": list(self.train_days),
            "test_days": list(self.test_days),
            "n_train": len(self.train_idx),
            "n_test": len(self.test_idx),
        }


def prequential_folds(
    days: npt.ArrayLike,
    cards: npt.ArrayLike,
    y: npt.ArrayLike,
    first_train_day: int,
    n_folds: int,
    *,
    delta_train: int = 7,
    delta_delay: int = 7,
    delta_test: int = 7,
) -> list[Fold]:
    """Folds in chronological order; fold ``i`` trains on days
    ``first_train_day + i·delta_test …`` (the handbook's ``prequentialSplit`` shifts backwards from
    its start date; listing forwards yields the same folds). The test set of each fold follows
    the handbook's ``get_train_test_set``, including the removal of known-compromised cards.
    """
    dd = np.asarray(days).ravel().astype(np.int64)
    yy = np.asarray(y).ravel() != 0
    card_arr = np.asarray(cards).ravel()
    folds: list[Fold] = []
    for i in range(n_folds):
        start = first_train_day + i * delta_test
        train_mask = (dd >= start) & (dd < start + delta_train)
        known = set(card_arr[train_mask & yy].tolist())
        test_parts: list[npt.NDArray[np.int64]] = []
        for day in range(delta_test):
            test_day = start + delta_train + delta_delay + day
            delay_day = start + delta_train + day - 1
            known |= set(card_arr[(dd == delay_day) & yy].tolist())
            day_idx = np.flatnonzero(dd == test_day)
            if known:
                day_idx = day_idx[~np.isin(card_arr[day_idx], np.array(list(known), dtype=card_arr.dtype))]
            test_parts.append(day_idx.astype(np.int64))
        first_test = start + delta_train + delta_delay
        folds.append(
            Fold(
                train_idx=np.flatnonzero(train_mask).astype(np.int64),
                test_idx=np.concatenate(test_parts) if test_parts else np.zeros(0, dtype=np.int64),
                train_days=(start, start + delta_train - 1),
                test_days=(first_test, first_test + delta_test - 1),
            )
        )
    return folds


@dataclass(frozen=True)
class Metrics:
    auc: float
    average_precision: float
    card_precision_at_100: float
    n: int
    n_fraud: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "auc_roc": self.auc,
            "average_precision": self.average_precision,
            "card_precision_at_100": self.card_precision_at_100,
            "n": self.n,
            "n_fraud": self.n_fraud,
        }


def evaluate(y: npt.ArrayLike, scores: npt.ArrayLike, cards: npt.ArrayLike, days: npt.ArrayLike) -> Metrics:
    """AUC ROC, Average Precision and Card Precision@100 of one scored test set."""
    yy, ss = _check(y, scores)
    return Metrics(
        auc=roc_auc(yy, ss),
        average_precision=average_precision(yy, ss),
        card_precision_at_100=card_precision_top_k(yy, ss, cards, days, 100).mean,
        n=len(yy),
        n_fraud=int(yy.sum()),
    )


def days_from_ms(time_ms: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """UTC day index (days since the epoch) of millisecond timestamps."""
    return np.asarray(time_ms, dtype=np.int64) // DAY_MS
