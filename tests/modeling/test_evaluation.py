"""Evaluation metrics against brute-force references written straight from their definitions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling.evaluation import (
    average_precision,
    card_precision_top_k,
    days_from_ms,
    evaluate,
    prequential_folds,
    roc_auc,
)


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos = s[y == 1]
    neg = s[y == 0]
    total = 0.0
    for p in pos:
        total += float(np.sum(p > neg)) + 0.5 * float(np.sum(p == neg))
    return total / (len(pos) * len(neg))


def brute_ap(y: np.ndarray, s: np.ndarray) -> float:
    # mean over positives of the precision at the threshold equal to that positive's score
    precisions = [float(np.sum((s >= t) & (y == 1)) / np.sum(s >= t)) for t in s[y == 1]]
    return float(np.mean(precisions))


def handbook_cp(df: pd.DataFrame, k: int) -> float:
    """The handbook's card_precision_top_k (pandas), with a stable tie-break by card id."""
    detected: list[int] = []
    per_day = []
    for day in sorted(df.day.unique()):
        d = df[df.day == day][["score", "card", "y"]]
        d = d[~d.card.isin(detected)]
        g = d.groupby("card").max().reset_index()
        g = g.sort_values(by=["score", "card"], ascending=[False, True]).head(k)
        hits = list(g[g.y == 1].card)
        per_day.append(len(hits) / k)
        detected.extend(hits)
    return float(np.mean(per_day))


labels_scores = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0]), min_size=n, max_size=n),
    )
)


@settings(max_examples=200, deadline=None)
@given(labels_scores)
def test_auc_and_ap_match_brute_force_with_ties(data: tuple[list[int], list[float]]) -> None:
    y = np.array(data[0])
    s = np.array(data[1])
    if 0 < y.sum() < len(y):
        assert roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    if y.sum() > 0:
        assert average_precision(y, s) == pytest.approx(brute_ap(y, s), abs=1e-12)


def test_auc_ap_continuous_scores_and_known_values() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.1).astype(int)
    s = rng.random(500) + y * 0.3
    assert roc_auc(y, s) == pytest.approx(brute_auc(y, s))
    assert average_precision(y, s) == pytest.approx(brute_ap(y, s))
    # perfect ranking, inverted ranking, a worked example
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1.0 + 2 / 3) / 2)


def test_metrics_of_a_single_class_are_nan_and_bad_input_raises() -> None:
    assert math.isnan(roc_auc([0, 0], [0.1, 0.2]))
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="length"):
        roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        average_precision([0, 1], [0.1, float("nan")])


def _random_days(seed: int, n: int = 3000, n_cards: int = 150, n_days: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    card = rng.integers(0, n_cards, n)
    compromised = rng.random(n_cards) < 0.2
    y = (compromised[card] & (rng.random(n) < 0.5)).astype(int)
    score = np.round(rng.random(n) * 0.5 + 0.4 * y, 2)  # rounded → many ties
    return pd.DataFrame({"day": rng.integers(0, n_days, n), "card": card, "y": y, "score": score})


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [5, 20, 100])
def test_card_precision_matches_the_handbook_procedure(seed: int, k: int) -> None:
    df = _random_days(seed)
    got = card_precision_top_k(df.y, df.score, df.card, df.day, k)
    assert got.mean == pytest.approx(handbook_cp(df, k))
    assert len(got.per_day) == df.day.nunique()


def test_card_precision_removes_detected_cards_on_later_days() -> None:
    # card 1 is fraudulent on both days and detected on day 0: day 1's top-1 must be card 2
    y = [1, 0, 1, 0]
    s = [0.9, 0.1, 0.9, 0.5]
    cards = [1, 2, 1, 2]
    days = [0, 0, 1, 1]
    assert card_precision_top_k(y, s, cards, days, k=1).per_day == (1.0, 0.0)
    assert card_precision_top_k(y, s, cards, days, k=1, remove_detected=False).per_day == (1.0, 1.0)
    # fewer cards than k: still divided by k; string card ids work
    assert card_precision_top_k([1], [0.5], ["a"], [3], k=100).mean == 0.01


def _protocol_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 4000
    return pd.DataFrame(
        {
            "day": rng.integers(0, 40, n),
            "card": rng.integers(0, 80, n),
            "y": (rng.random(n) < 0.03).astype(int),
        }
    )


def handbook_test_set(df: pd.DataFrame, start: int) -> set[int]:
    """get_train_test_set from the handbook, on integer days."""
    train = df[(df.day >= start) & (df.day < start + 7)]
    known = set(train[train.y == 1].card)
    out: list[int] = []
    for day in range(7):
        test_day = df[df.day == start + 14 + day]
        delay = df[df.day == start + 7 + day - 1]
        known |= set(delay[delay.y == 1].card)
        out += list(test_day[~test_day.card.isin(known)].index)
    return set(out)


def test_prequential_folds_follow_the_handbook() -> None:
    df = _protocol_frame()
    folds = prequential_folds(df.day, df.card, df.y, first_train_day=3, n_folds=3)
    assert [f.train_days for f in folds] == [(3, 9), (10, 16), (17, 23)]
    assert [f.test_days for f in folds] == [(17, 23), (24, 30), (31, 37)]
    for f in folds:
        start = f.train_days[0]
        assert set(f.train_idx) == set(df.index[(df.day >= start) & (df.day < start + 7)])
        assert set(f.test_idx) == handbook_test_set(df, start)
        assert len(f.test_idx) < int(((df.day >= f.test_days[0]) & (df.day <= f.test_days[1])).sum())
        assert f.describe()["n_test"] == len(f.test_idx)


def test_evaluate_bundles_the_three_metrics() -> None:
    df = _random_days(5)
    m = evaluate(df.y, df.score, df.card, df.day)
    assert m.auc == pytest.approx(brute_auc(df.y.to_numpy(), df.score.to_numpy()))
    assert m.card_precision_at_100 == pytest.approx(handbook_cp(df, 100))
    assert set(m.to_dict()) == {"auc_roc", "average_precision", "card_precision_at_100", "n", "n_fraud"}


def test_days_from_ms_is_utc_days() -> None:
    assert list(days_from_ms([0, 86_399_999, 86_400_000])) == [0, 0, 1]
