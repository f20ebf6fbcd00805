"""Thresholds for target alert rates, decisions and reason codes."""

from __future__ import annotations

import numpy as np
import pytest

from modeling.decisions import (
    ReasonCoder,
    Thresholds,
    choose_thresholds,
    decide,
    decide_codes,
    directed_code,
    fit_linear_surrogate,
    reason_code,
    reason_codes,
)


def test_thresholds_hit_the_target_alert_rates() -> None:
    scores = np.random.default_rng(0).random(100_000)
    th = choose_thresholds(scores, review_rate=0.01, decline_rate=0.002)
    codes = decide_codes(scores, th)
    assert np.mean(codes >= 1) == pytest.approx(0.01, abs=1e-4)
    assert np.mean(codes == 2) == pytest.approx(0.002, abs=1e-4)
    assert th.review_rate == 0.01 and th.decline_rate == 0.002
    assert Thresholds.from_dict(th.to_dict()) == th


def test_decide_maps_scores_to_names() -> None:
    th = Thresholds(review=0.5, decline=0.9)
    assert decide([0.1, 0.5, 0.89, 0.9, 1.0], th) == ["approve", "review", "review", "decline", "decline"]
    assert decide_codes(np.array([]), th).shape == (0,)


def test_threshold_validation() -> None:
    with pytest.raises(ValueError):
        Thresholds(review=0.9, decline=0.5)
    with pytest.raises(ValueError):
        choose_thresholds([0.1, 0.2], review_rate=0.001, decline_rate=0.01)
    with pytest.raises(ValueError):
        choose_thresholds([], 0.01, 0.002)
    with pytest.raises(ValueError):
        choose_thresholds([0.1], review_rate=1.5)
    # tiny sets still flag at least one event
    th = choose_thresholds([0.1, 0.3, 0.2], review_rate=0.01, decline_rate=0.002)
    assert th.review == th.decline == 0.3


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("t_risk_7d", "TERMINAL_RISK_7D"),
        ("amount_vs_mean_30d", "AMOUNT_VS_HISTORY"),
        ("amount_zscore_30d", "AMOUNT_VS_HISTORY"),
        ("amount_log", "AMOUNT"),
        ("u_count_10m", "TXN_COUNT_10M"),
        ("u_known_frauds_30d", "KNOWN_FRAUD_HISTORY"),
        ("hour_sin", "UNUSUAL_HOUR"),
        ("c_failed_logins_1h", "FAILED_LOGINS_1H"),
        ("c_txn_device_unknown", "UNKNOWN_DEVICE"),
        ("Some weird-name", "SOME_WEIRD_NAME"),
    ],
)
def test_reason_code_mapping(name: str, code: str) -> None:
    assert reason_code(name) == code


def test_directed_codes() -> None:
    assert directed_code("TERMINAL_RISK_7D", True) == "TERMINAL_RISK_7D_HIGH"
    assert directed_code("AMOUNT", False) == "AMOUNT_LOW"
    assert directed_code("UNUSUAL_HOUR", True) == "UNUSUAL_HOUR"
    assert reason_codes(["t_risk_1d", "hour_cos"]) == ("TERMINAL_RISK_1D", "UNUSUAL_HOUR")


def coder(top_k: int = 2) -> ReasonCoder:
    names = ("amount_vs_mean_30d", "t_risk_7d", "hour_sin", "hour_cos", "u_count_1d")
    return ReasonCoder(
        feature_names=names,
        mean=np.zeros(5, np.float32),
        inv_std=np.ones(5, np.float32),
        weights=np.array([2.0, 1.0, 0.5, 0.5, -1.0], np.float32),
        log_inputs=False,
        top_k=top_k,
    )


def test_explain_ranks_positive_contributions() -> None:
    c = coder()
    tab = np.array(
        [
            [3.0, 1.0, 0.0, 0.0, 0.0],  # amount (6) > terminal (1)
            [0.1, 4.0, 0.0, 0.0, -2.0],  # terminal (4) > low count (2)
            [0.0, 0.0, 1.0, 1.0, 0.0],  # both hour features → one code
            [-1.0, -1.0, 0.0, 0.0, 1.0],  # nothing pushes the score up
        ],
        np.float32,
    )
    got = c.explain(tab)
    assert got[0] == ("AMOUNT_VS_HISTORY_HIGH", "TERMINAL_RISK_7D_HIGH")
    assert got[1] == ("TERMINAL_RISK_7D_HIGH", "TXN_COUNT_1D_LOW")
    assert got[2] == ("UNUSUAL_HOUR",)
    assert got[3] == ()
    np.testing.assert_allclose(c.contributions(tab)[0], [6.0, 1.0, 0.0, 0.0, 0.0])
    assert c.explain(tab[0]) == [got[0]]


def test_coder_round_trips_through_the_manifest_and_standardizes_like_the_network() -> None:
    c = ReasonCoder(
        feature_names=("a", "b"),
        mean=np.array([1.0, 0.0], np.float32),
        inv_std=np.array([2.0, 0.5], np.float32),
        weights=np.array([1.0, 1.0], np.float32),
    )
    d = ReasonCoder.from_dict(c.to_dict())
    assert d.feature_names == c.feature_names and d.log_inputs and d.top_k == 3
    x = np.array([[np.e - 1, -1000.0]], np.float32)
    z = d.standardize(x)
    np.testing.assert_allclose(z[0, 0], 0.0, atol=1e-6)  # log1p(e - 1) = 1 → (1 - 1) * 2
    assert z[0, 1] == pytest.approx(-np.log1p(1000.0) * 0.5, rel=1e-5)
    with pytest.raises(ValueError, match="one entry per feature"):
        ReasonCoder(("a",), np.zeros(2, np.float32), np.ones(1, np.float32), np.ones(1, np.float32))


def test_linear_surrogate_recovers_linear_weights() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5000, 4))
    logit = 0.7 + z @ np.array([2.0, -1.0, 0.0, 0.5]) + rng.normal(scale=0.01, size=5000)
    np.testing.assert_allclose(fit_linear_surrogate(z, logit, ridge=1e-6), [2.0, -1.0, 0.0, 0.5], atol=0.01)
    # a step is seen as a positive slope (a gradient would be zero almost everywhere)
    step = (z[:, 0] > 1.0).astype(float) * 5.0
    assert fit_linear_surrogate(z, step)[0] > 0.5
    # near-duplicate features share the weight instead of cancelling out
    dup = np.column_stack([z[:, 0], z[:, 0] + rng.normal(scale=0.01, size=5000)])
    w = fit_linear_surrogate(dup, 2.0 * z[:, 0])
    assert np.all(w > 0.5) and abs(w[0] - w[1]) < 0.1
    with pytest.raises(ValueError):
        fit_linear_surrogate(z, logit[:10])
