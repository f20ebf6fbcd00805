"""FraudNet: encoders, padding, export signature, attribution; target-aware bins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modeling.binning import ple_tables, quantile_edges, tree_edges
from modeling.networks import (
    FraudNet,
    NetConfig,
    export_fraudnet,
    fit_standardizers,
    linear_attribution,
    paddle,
)
from modeling.predictor import Predictor, PredictorOptions

F, N, S = 7, 5, 3


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tab = rng.lognormal(size=(n, F)).astype(np.float32)
    seq = rng.normal(size=(n, N, S)).astype(np.float32)
    seq[: n // 2, :2] = 0.0
    y = (tab[:, 0] > 3.0).astype(np.int8)
    return tab, seq, y


def test_tree_edges_find_a_planted_threshold() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 500, 20_000)
    y = (x > 220).astype(int) & (rng.random(20_000) < 0.9)
    edges = tree_edges(x, y, max_bins=4)
    assert 1 <= len(edges) <= 3
    assert np.min(np.abs(edges - 220)) < 1.0
    assert len(tree_edges(x, np.zeros_like(y))) == 0  # no signal, no split
    assert len(tree_edges(np.ones(100), y[:100])) == 0  # a constant cannot be split
    q = quantile_edges(x, 4)
    assert len(q) == 3 and np.all(np.diff(q) > 0)


def test_ple_tables_encode_values_into_bins() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    lo, inv = ple_tables(x, None, max_bins=4)
    assert lo.shape == inv.shape == (1, 4)
    enc = np.clip((np.array([[2.5]])[:, :, None] - lo) * inv, 0, 1).reshape(1, -1)
    np.testing.assert_allclose(enc, [[1.0, 1.0, 0.5, 0.0]])


@pytest.mark.parametrize("encoder", ["attn", "gru", "none"])
@pytest.mark.parametrize("encoding", ["ple_tree", "ple_quantile", "none"])
def test_forward_shapes_and_padding(encoder: str, encoding: str) -> None:
    paddle.seed(0)
    cfg = NetConfig(
        F,
        N,
        S,
        tab_hidden=(8,),
        seq_channels=4,
        head_hidden=4,
        seq_encoder=encoder,
        numeric_encoding=encoding,
        n_bins=4,
    )  # type: ignore[arg-type]
    model = FraudNet(cfg)
    tab, seq, y = data(64)
    fit_standardizers(model, tab, seq, y)
    model.eval()
    seq[0] = 0.0  # a user with no history at all
    p = model(paddle.to_tensor(tab), paddle.to_tensor(seq)).numpy()
    assert p.shape == (64, 1) and np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))
    assert model.logits(paddle.to_tensor(tab), paddle.to_tensor(seq)).shape == [64, 1]
    assert NetConfig.from_dict(cfg.to_dict()) == cfg


def test_padding_steps_do_not_matter_for_attention() -> None:
    paddle.seed(1)
    cfg = NetConfig(F, N, S, tab_hidden=(8,), seq_channels=4, head_hidden=4)
    model = FraudNet(cfg)
    tab, seq, y = data(32, 1)
    fit_standardizers(model, tab, seq, y)
    model.eval()
    short = seq.copy()
    short[:, :2] = 0.0
    longer = short.copy()
    longer[:, 0] = 5.0  # fill an earlier (padding) step: the result changes …
    a = model(paddle.to_tensor(tab), paddle.to_tensor(short)).numpy()
    b = model(paddle.to_tensor(tab), paddle.to_tensor(longer)).numpy()
    assert not np.allclose(a, b)
    shifted = np.zeros_like(short)
    shifted[:, :-1] = short[:, 1:]  # … but moving the valid steps within the padding does not
    c = model(paddle.to_tensor(tab), paddle.to_tensor(shifted)).numpy()
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_export_takes_raw_features_with_a_dynamic_batch(tmp_path: Path) -> None:
    paddle.seed(2)
    model = FraudNet(NetConfig(F, N, S, tab_hidden=(8,), seq_channels=4, head_hidden=4))
    tab, seq, y = data(200, 2)
    fit_standardizers(model, tab, seq, y)
    model.set_prior_correction(9.0)
    model.eval()
    info = export_fraudnet(model, tmp_path)
    assert [d.to_dict() for d in info.inputs] == [
        {"name": "tab", "dtype": "float32", "shape": [-1, F]},
        {"name": "seq", "dtype": "float32", "shape": [-1, N, S]},
    ]
    pred = Predictor(
        tmp_path / info.model_file,
        tmp_path / info.params_file,
        info.inputs,
        PredictorOptions(device="cpu", use_onednn=False, model_max_batch=64),
    )
    for b in (1, 7, 200):
        got = pred.predict({"tab": tab[:b], "seq": seq[:b]})
        with paddle.no_grad():
            want = model(paddle.to_tensor(tab[:b]), paddle.to_tensor(seq[:b])).numpy().ravel()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the prior correction is inside the program: logits shifted by -log(9)
    with paddle.no_grad():
        logit = model.logits(paddle.to_tensor(tab[:5]), paddle.to_tensor(seq[:5])).numpy().ravel()
    np.testing.assert_allclose(
        pred.predict({"tab": tab[:5], "seq": seq[:5]}), 1 / (1 + 9 * np.exp(-logit)), rtol=1e-5
    )


def test_linear_attribution_points_at_the_driving_feature() -> None:
    from training.trainer import Arrays, TrainConfig, fit

    tab, seq, y = data(3000, 3)
    res = fit(
        NetConfig(F, N, S, tab_hidden=(16,), seq_channels=4, head_hidden=8, dropout=0.0),
        Arrays(tab, seq, y),
        None,
        TrainConfig(epochs=3, batch_size=128, device="cpu", progress=False),
    )
    w = linear_attribution(res.model, tab[y == 1], seq[y == 1])
    assert w.shape == (F,) and int(np.argmax(w)) == 0


def test_piecewise_linear_gemm_form_matches_the_definition() -> None:
    from modeling.networks import PiecewiseLinear

    tab, _, y = data(400, 4)
    enc = PiecewiseLinear(F, 6, steps=True)
    enc.fit(tab, y, min_leaf=8)
    lo, inv = ple_tables(tab, y, 6, 8)
    got_lo, got_inv = enc.bins()
    np.testing.assert_allclose(got_inv, inv, rtol=1e-6)
    np.testing.assert_allclose(got_lo[inv > 0], lo[inv > 0], rtol=1e-4, atol=1e-5)
    x = data(50, 5)[0]
    want = np.clip((x[:, :, None] - lo) * inv, 0, 1)  # [B, F, T]
    out = enc(paddle.to_tensor(x)).numpy()
    assert out.shape == (50, 2 * F * 6)
    np.testing.assert_allclose(out[:, : F * 6], want.reshape(50, -1), atol=1e-5)
    np.testing.assert_array_equal(out[:, F * 6 :], (want.reshape(50, -1) > 0).astype(np.float32))
