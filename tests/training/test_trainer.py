"""Single-process training: learning, seeds, early stopping, gradient accumulation, publishing."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from synthetic import F, N, S, synthetic

from modeling.decisions import ReasonCoder, Thresholds
from modeling.evaluation import DAY_MS
from modeling.networks import NetConfig
from modeling.predictor import Predictor, PredictorOptions
from modeling.registry import ModelRegistry
from training.bundle import point_in_time_split, train_and_publish
from training.trainer import Arrays, TrainConfig, fit, param_fingerprint, resolve_pos_weight, score

NAMES = ("amount_log", "t_risk_7d", "u_count_1d", *(f"f{i}" for i in range(F - 3)))


NET = NetConfig(F, N, S, tab_hidden=(16, 8), seq_channels=8, head_hidden=8, dropout=0.0)
CFG = TrainConfig(epochs=3, batch_size=128, lr=3e-3, device="cpu", progress=False, seed=5, patience=0)


def test_fit_learns_and_is_reproducible() -> None:
    train, val = synthetic(3072, 0), synthetic(1000, 1)
    a = fit(NET, train, val, CFG)
    b = fit(NET, train, val, CFG)
    assert param_fingerprint(a.model) == param_fingerprint(b.model)
    losses = [h.train_loss for h in a.history]
    assert losses[-1] < losses[0]
    assert a.best_val_ap is not None and a.best_val_ap > 3 * float(np.mean(val.y))
    assert all(h.seconds > 0 and h.samples_per_s > 0 for h in a.history)
    assert a.summary()["epochs"][0]["epoch"] == 1
    c = fit(NET, train, val, replace(CFG, seed=6))
    assert param_fingerprint(c.model) != param_fingerprint(a.model)


def test_pos_weight_and_prior_correction() -> None:
    y = np.array([1] * 4 + [0] * 396, dtype=np.int8)
    assert resolve_pos_weight(CFG, y) == pytest.approx(math.sqrt(99))
    assert resolve_pos_weight(replace(CFG, pos_weight=3.0), y) == 3.0
    train = synthetic(1024, 2)
    res = fit(NET, train, None, replace(CFG, epochs=1))
    assert float(res.model.logit_offset.numpy()[0]) == pytest.approx(-math.log(res.pos_weight), rel=1e-6)
    assert res.best_epoch == 1 and res.best_val_ap is None
    with pytest.raises(ValueError, match="no fraud"):
        fit(NET, Arrays(train.tab, train.seq, np.zeros_like(train.y)), None, CFG)


def test_early_stopping_keeps_the_best_epoch() -> None:
    train = synthetic(3072, 3)
    val = synthetic(1000, 4)
    val.y = (val.tab[:, 1] < -1.0).astype(np.int8)  # the opposite of what training teaches
    res = fit(NET, train, val, replace(CFG, epochs=8, patience=2))
    assert res.best_epoch == 1
    assert len(res.history) == 3  # epoch 1, then two epochs without improvement
    restored = score(res.model, val.tab, val.seq)
    from modeling.evaluation import average_precision

    assert average_precision(val.y, restored) == pytest.approx(res.history[0].val_ap)


def test_gradient_accumulation_matches_a_larger_batch() -> None:
    train = synthetic(3072, 5)
    big = fit(NET, train, None, replace(CFG, batch_size=256, epochs=2))
    acc = fit(NET, train, None, replace(CFG, batch_size=128, grad_accum=2, epochs=2))
    for (k, v), (_, w) in zip(
        sorted(big.model.state_dict().items()), sorted(acc.model.state_dict().items()), strict=True
    ):
        np.testing.assert_allclose(v.numpy(), w.numpy(), rtol=1e-3, atol=1e-4, err_msg=k)


def test_train_and_publish_writes_a_verified_bundle(tmp_path: Path) -> None:
    data = synthetic(6000, 6)
    t0 = 1_527_811_200_000  # 2018-06-01
    time_ms = np.sort(t0 + np.random.default_rng(0).integers(0, 20 * DAY_MS, len(data))).astype(np.int64)
    cards = np.random.default_rng(1).integers(0, 300, len(data)).astype(str)
    split = point_in_time_split(time_ms, t0, t0 + 20 * DAY_MS, val_days=6, delay_days=4)
    assert not np.any(split.train & split.val)
    assert time_ms[split.train].max() < split.val_range[0] - 4 * DAY_MS + 1
    reg = ModelRegistry(tmp_path / "registry")
    pub = train_and_publish(
        tab=data.tab,
        seq=data.seq,
        y=data.y,
        time_ms=time_ms,
        cards=cards,
        feature_names=NAMES,
        feature_set="fs-synthetic",
        split=split,
        net_overrides={"tab_hidden": (16, 8), "seq_channels": 8, "head_hidden": 8},
        train_cfg=replace(CFG, epochs=2),
        registry=reg,
        source="synthetic",
    )
    assert pub.version == "behaviour-0001" == reg.current("behaviour")
    m = reg.load(pub.version, "fs-synthetic").manifest
    assert m["training_data"]["label_delay_days"] == 4.0
    assert m["training_data"]["n_train"] == int(split.train.sum())
    assert set(m["metrics"]["validation"]) >= {"auc_roc", "average_precision", "card_precision_at_100"}
    assert m["hyperparameters"]["net"]["seq_channels"] == 8
    th = Thresholds.from_dict(m["thresholds"])
    assert th.review_rate == 0.01 and th.decline_rate == 0.002
    coder = ReasonCoder.from_dict(m["reasons"])
    assert coder.feature_names == NAMES
    p = Predictor.load(reg, "behaviour", PredictorOptions(device="cpu"), expected_feature_set="fs-synthetic")
    rc = p.reason_coder()
    assert p.decision_thresholds() == th and rc is not None and rc.to_dict() == coder.to_dict()
    val_scores = p.predict({"tab": data.tab[split.val], "seq": data.seq[split.val]})
    assert np.mean(val_scores >= th.review) == pytest.approx(0.01, abs=0.005)
    flagged = data.tab[split.val][val_scores >= th.review]
    reasons = coder.explain(flagged)
    assert any(r for r in reasons)
    # the generator's fraud signal is column 1, named t_risk_7d: it should be the usual top reason
    tops = [r[0] for r in reasons if r]
    assert max(set(tops), key=tops.count) == "TERMINAL_RISK_7D_HIGH"
    with pytest.raises(ValueError, match="no training period"):
        point_in_time_split(time_ms, t0, t0 + 5 * DAY_MS, val_days=3, delay_days=3)


def test_a_blend_of_two_members_exports_as_one_program(tmp_path: Path) -> None:
    from modeling.networks import FraudEnsemble, export_fraudnet, paddle
    from training.trainer import fit_ensemble

    train, val = synthetic(2048, 7), synthetic(500, 8)
    smooth = replace(NET, numeric_encoding="none", seq_encoder="attn")
    res = fit_ensemble(
        [(NET, replace(CFG, epochs=1)), (smooth, replace(CFG, epochs=1, lr=6e-3, pos_weight=2.0))], train, val
    )
    assert isinstance(res.model, FraudEnsemble) and len(res.model.members) == 2
    assert {h.member for h in res.history} == {0, 1}
    assert res.member_best_epochs == [1, 1] and res.best_epoch == 1
    assert res.best_val_ap is not None and res.pos_weight == resolve_pos_weight(CFG, train.y)
    with paddle.no_grad():
        t, s = paddle.to_tensor(val.tab), paddle.to_tensor(val.seq)
        mean_logit = (res.model.members[0].logits(t, s) + res.model.members[1].logits(t, s)) / 2
        want = (1 / (1 + res.pos_weight * np.exp(-mean_logit.numpy()))).ravel()
    np.testing.assert_allclose(score(res.model, val.tab, val.seq), want, rtol=1e-5)
    info = export_fraudnet(res.model, tmp_path)
    p = Predictor(
        tmp_path / info.model_file,
        tmp_path / info.params_file,
        info.inputs,
        PredictorOptions(device="cpu", use_onednn=False),
    )
    np.testing.assert_allclose(p.predict({"tab": val.tab, "seq": val.seq}), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        FraudEnsemble([res.model.members[0], type(res.model.members[0])(replace(NET, n_features=F + 1))])
