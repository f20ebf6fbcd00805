"""Splits, metrics, thresholds and baselines of the text trainer (pure numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.text_metrics import (
    CharBigramNB,
    LengthBaseline,
    best_f1_threshold,
    binary_metrics,
    stratified_split,
    threshold_for_precision,
)


def test_stratified_split_is_disjoint_complete_seeded_and_keeps_the_ratio() -> None:
    y = np.array([1] * 300 + [0] * 700)
    s = stratified_split(y, 0.15, 0.15, seed=1)
    all_idx = np.concatenate([s.train, s.val, s.test])
    assert sorted(all_idx.tolist()) == list(range(1000))
    assert (len(s.train), len(s.val), len(s.test)) == (700, 150, 150)
    for part in (s.train, s.val, s.test):
        assert y[part].mean() == pytest.approx(0.3, abs=0.005)
    again = stratified_split(y, 0.15, 0.15, seed=1)
    assert np.array_equal(again.test, s.test)
    assert not np.array_equal(stratified_split(y, 0.15, 0.15, seed=2).test, s.test)


def test_stratified_split_refuses_what_cannot_be_split() -> None:
    with pytest.raises(ValueError):
        stratified_split(np.array([0, 0, 1, 1]), 0.5, 0.5, seed=0)
    with pytest.raises(ValueError):
        stratified_split(np.array([0, 0, 0, 1, 1]), 0.2, 0.2, seed=0)


def test_binary_metrics_on_a_worked_example() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.1, 0.05])
    m = binary_metrics(y, s, 0.5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(14 / 15)  # 14 of 15 (pos, neg) pairs ordered correctly
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert (m["n"], m["positives"]) == (8, 3)


def test_metrics_with_nothing_flagged_or_one_class() -> None:
    m = binary_metrics(np.array([1, 0]), np.array([0.1, 0.2]), 0.9)
    assert m["precision"] == m["recall"] == m["f1"] == 0.0
    assert math.isnan(binary_metrics(np.array([0, 0]), np.array([0.1, 0.2]), 0.5)["auc"])


def test_best_f1_threshold_and_precision_threshold() -> None:
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.5, 0.2, 0.1])
    # F1-best cut is 0.4 (all three positives at precision 3/4); the threshold sits below it
    assert best_f1_threshold(y, s) == pytest.approx(0.3)
    assert binary_metrics(y, s, best_f1_threshold(y, s))["f1"] == pytest.approx(6 / 7)
    assert threshold_for_precision(y, s, 1.0) == pytest.approx(0.65)  # cut 0.8, next lower 0.5
    assert threshold_for_precision(y, s, 0.75) == pytest.approx(0.3)
    assert threshold_for_precision(np.array([0, 0]), np.array([0.3, 0.4]), 0.5) is None
    assert best_f1_threshold(np.array([0, 0]), np.array([0.3, 0.4])) == 0.5


def test_threshold_keeps_a_margin_on_separable_scores() -> None:
    # perfectly separated: the threshold is halfway between the classes, not on the lowest positive
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.001, 0.01, 0.02, 0.98, 0.99, 0.999])
    assert best_f1_threshold(y, s) == pytest.approx(0.5)
    assert threshold_for_precision(y, s, 0.99) == pytest.approx(0.5)


def test_length_baseline_finds_length_when_it_separates_and_nothing_when_it_does_not() -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, size=n)
    separable = np.where(y == 1, rng.integers(300, 600, n), rng.integers(20, 280, n))
    model = LengthBaseline.fit(separable, y)
    assert binary_metrics(y, model.predict_proba(separable), 0.5)["auc"] > 0.99
    matched = rng.integers(20, 600, n)  # length independent of the label
    model = LengthBaseline.fit(matched[:200], y[:200])
    assert binary_metrics(y[200:], model.predict_proba(matched[200:]), 0.5)["auc"] == pytest.approx(
        0.5, abs=0.1
    )


def test_char_bigram_nb_learns_topic_words() -> None:
    fraud = ["请把钱转到安全账户", "您的银行卡账户异常请转账", "转账到指定账户解冻"]
    normal = ["我想订一份外卖", "订单已经送达", "预约明天上午维修"]
    nb = CharBigramNB.fit(fraud + normal, np.array([1, 1, 1, 0, 0, 0]))
    scores = nb.log_odds(["账户需要转账", "外卖订单"])
    assert scores[0] > 0 > scores[1]
