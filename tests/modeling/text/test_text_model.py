"""The ERNIE classifier: built from a config, saved and loaded back through
``from_pretrained(local_dir)`` (the path a user with ernie-3.0-mini-zh weights takes), exported with
``paddle.jit.save`` and run through Paddle Inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modeling.errors import ModelLoadError
from modeling.predictor import Predictor, PredictorOptions
from modeling.text.model import (
    INPUT_NAME,
    ErnieSize,
    build_model,
    export_inference,
    find_exported,
    load_pretrained,
    predict_proba,
    save_pretrained,
)
from modeling.text.scorer import TEXT_INPUTS

SMALL = ErnieSize(
    num_hidden_layers=1,
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


def _ids(rng: np.random.Generator, batch: int, length: int, vocab: int) -> np.ndarray:
    ids = rng.integers(8, vocab, size=(batch, length)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 1, 2
    return ids


def test_build_from_config_gives_an_ernie_classifier() -> None:
    import paddle
    from paddlenlp.transformers import ErnieForSequenceClassification

    model = build_model(500, ErnieSize())  # the default: 2 layers, 128 hidden, 2 heads, 512 FFN
    assert isinstance(model, ErnieForSequenceClassification)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (2, 128, 2)
    assert (cfg.intermediate_size, cfg.max_position_embeddings, cfg.vocab_size) == (512, 512, 500)
    model.eval()
    logits = model(paddle.to_tensor(_ids(np.random.default_rng(0), 3, 16, 500)))
    assert logits.shape == [3, 2]


def test_size_validation() -> None:
    with pytest.raises(ValueError):
        ErnieSize(hidden_size=130, num_attention_heads=4)


def test_save_and_from_pretrained_round_trip(tmp_path: Path) -> None:
    model = build_model(300, SMALL)
    save_pretrained(model, tmp_path / "ernie")
    again = load_pretrained(tmp_path / "ernie")
    ids = _ids(np.random.default_rng(1), 4, 20, 300)
    np.testing.assert_allclose(predict_proba(again, ids), predict_proba(model, ids), rtol=0, atol=1e-6)


def test_from_pretrained_resizes_embeddings_for_added_mask_tokens(tmp_path: Path) -> None:
    save_pretrained(build_model(300, SMALL), tmp_path / "ernie")
    model = load_pretrained(tmp_path / "ernie", vocab_size=303)
    assert model.config.vocab_size == 303
    assert model.ernie.embeddings.word_embeddings.weight.shape == [303, 32]
    with pytest.raises(ModelLoadError):
        load_pretrained(tmp_path / "ernie", vocab_size=10)


def test_from_pretrained_refuses_anything_but_a_local_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        load_pretrained(tmp_path / "missing")
    with pytest.raises(ModelLoadError):
        load_pretrained("ernie-3.0-mini-zh")  # a hub name is never downloaded


def test_export_runs_in_paddle_inference_and_matches_eager(tmp_path: Path) -> None:
    model = build_model(300, SMALL)
    program, params = export_inference(model, tmp_path)
    assert (program, params) == find_exported(tmp_path)
    predictor = Predictor(program, params, TEXT_INPUTS, PredictorOptions(device="cpu", model_max_batch=16))
    assert predictor.input_names == (INPUT_NAME,)
    rng = np.random.default_rng(2)
    for batch, length in [(1, 8), (5, 33), (16, 64)]:
        ids = _ids(rng, batch, length, 300)
        out = predictor.predict({INPUT_NAME: ids})
        assert out.shape == (batch,) and out.dtype == np.float32
        assert np.all((out > 0) & (out < 1))
        np.testing.assert_allclose(out, predict_proba(model, ids), rtol=0, atol=1e-5)


def test_padding_does_not_change_the_probability() -> None:
    model = build_model(300, SMALL)
    ids = _ids(np.random.default_rng(3), 2, 10, 300)
    padded = np.zeros((2, 40), dtype=np.int64)
    padded[:, :10] = ids
    np.testing.assert_allclose(predict_proba(model, padded), predict_proba(model, ids), rtol=0, atol=1e-5)


def test_find_exported_without_a_program(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        find_exported(tmp_path)
