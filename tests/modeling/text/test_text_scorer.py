"""TextScorer: filter → tokenize → length buckets → Paddle Inference → scores in input order."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling.errors import FeatureSetMismatch, ModelLoadError
from modeling.text.scorer import (
    TextBundleSpec,
    TextScorer,
    bucket_for,
    effective_buckets,
    pad_batch,
    plan_batches,
    text_feature_set,
)

Bundle = tuple[Path, dict[str, Any]]

# ------------------------------------------------------------------------------------ pure helpers


def test_bucket_for_picks_the_smallest_bucket_that_fits() -> None:
    buckets = (16, 32, 64)
    assert [bucket_for(n, buckets) for n in (1, 16, 17, 32, 33, 64, 500)] == [16, 16, 32, 32, 64, 64, 64]


def test_effective_buckets_end_at_max_len() -> None:
    assert effective_buckets((16, 32, 64, 128, 256), 128) == (16, 32, 64, 128)
    assert effective_buckets((16, 32, 64, 128, 256), 100) == (16, 32, 64, 100)
    assert effective_buckets((64, 16), 8) == (8,)


def test_plan_batches_covers_every_item_once_in_bounded_batches() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 129, size=500).tolist()
    plan = plan_batches(lengths, (16, 32, 64, 128), max_batch=64)
    seen = sorted(i for _, idx in plan for i in idx)
    assert seen == list(range(500))
    for width, idx in plan:
        assert 1 <= len(idx) <= 64
        assert all(lengths[i] <= width for i in idx)
        assert all(lengths[i] > {16: 0, 32: 16, 64: 32, 128: 64}[width] for i in idx)
    assert [w for w, _ in plan] == sorted(w for w, _ in plan)
    with pytest.raises(ValueError):
        plan_batches(lengths, (16,), 0)


def test_pad_batch() -> None:
    out = pad_batch([[1, 5, 2], [1, 2]], 4, 0)
    assert out.dtype == np.int64
    assert out.tolist() == [[1, 5, 2, 0], [1, 2, 0, 0]]


def test_spec_refuses_a_feature_set_that_disagrees() -> None:
    good = {"max_len": 64, "vocab_sha256": "ab" * 32, "feature_set": text_feature_set("ab" * 32, 64)}
    assert TextBundleSpec.from_manifest(good).feature_set == "text/abababababab/64"
    with pytest.raises(FeatureSetMismatch):
        TextBundleSpec.from_manifest({**good, "feature_set": "text/abababababab/128"})
    with pytest.raises(ModelLoadError):
        TextBundleSpec.from_manifest({"vocab_sha256": "x"})


# -------------------------------------------------------------------------------------- the scorer


def test_scores_come_back_in_input_order_with_none_for_no_text(tiny_bundle: Bundle) -> None:
    path, manifest = tiny_bundle
    scorer = TextScorer(path, manifest, buckets=(8, 16, 32), max_batch=3)
    texts: list[str | None] = [
        "您好,这里是银行客服,您的账户存在异常,请提供验证码,然后把钱转到安全账户。" * 3,
        None,
        "外卖",
        "",
        "  \u200b ",
        "请拨打13812345678",
        "我想订一份外卖,送到公司楼下。",
    ] * 3
    scores = scorer.score(texts)
    assert len(scores) == len(texts)
    for text, score in zip(texts, scores, strict=True):
        if text is None or not text.strip("\u200b "):
            assert score is None
        else:
            assert score is not None and 0.0 < score < 1.0
    # a text's score depends neither on its batch-mates nor on the bucket it was padded to
    for text, score in zip(texts, scores, strict=True):
        if score is not None:
            assert scorer.score([text])[0] == pytest.approx(score, abs=1e-5)
    assert set(scorer.last_timings_ms) == {"preprocess", "inference"}


def test_scores_match_the_raw_predictor_on_padded_ids(tiny_bundle: Bundle) -> None:
    path, manifest = tiny_bundle
    scorer = TextScorer(path, manifest)
    text = "恭喜您中奖了,请访问 https://prize.cn 领取"
    ids = scorer.encode([text])[0]
    assert ids is not None
    direct = scorer.predict_ids(pad_batch([ids], manifest["max_len"], scorer.tokenizer.pad_id))
    assert scorer.score([text])[0] == pytest.approx(float(direct[0]), abs=1e-5)


def test_encoding_applies_the_filters_and_max_len(tiny_bundle: Bundle) -> None:
    path, manifest = tiny_bundle
    scorer = TextScorer(path, manifest)
    ids = scorer.encode(["卡号6222021234567890123" + "转账" * 100])[0]
    assert ids is not None and len(ids) == manifest["max_len"]
    assert scorer.tokenizer.decode(ids[:5]) == ["[CLS]", "[UNK]", "[UNK]", "[CARD]", "转"]


def test_empty_batch(tiny_bundle: Bundle) -> None:
    path, manifest = tiny_bundle
    scorer = TextScorer(path, manifest)
    assert scorer.score([]) == []
    assert scorer.score([None, ""]) == [None, None]


def test_clone_scores_the_same(tiny_bundle: Bundle) -> None:
    path, manifest = tiny_bundle
    scorer = TextScorer(path, manifest)
    texts = ["转账到安全账户", "外卖到了吗"]
    assert scorer.clone().score(texts) == pytest.approx(scorer.score(texts))
    assert scorer.warmup() >= 0.0


def test_a_bundle_whose_vocabulary_changed_is_refused(tiny_bundle: Bundle, tmp_path: Path) -> None:
    path, manifest = tiny_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(path, copy)
    with (copy / "vocab.txt").open("a", encoding="utf-8") as fh:
        fh.write("新\n")
    with pytest.raises(FeatureSetMismatch):
        TextScorer(copy, manifest)


def test_a_bundle_without_a_program_is_refused(tiny_bundle: Bundle, tmp_path: Path) -> None:
    path, manifest = tiny_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(path, copy)
    for f in copy.glob("inference.*"):
        f.unlink()
    with pytest.raises(ModelLoadError):
        TextScorer(copy, manifest)


def test_onednn_and_paddles_own_kernels_agree(tiny_bundle: Bundle) -> None:
    """The worker runs the text model with oneDNN by default; its scores must be the ones the
    model gives with Paddle's own kernels (oneDNN once moved the behaviour model's by 0.07)."""
    path, manifest = tiny_bundle
    texts: list[str | None] = [
        "您好,这里是银行客服,您的账户存在异常,请提供验证码,然后把钱转到安全账户。",
        "我想订一份外卖,送到公司楼下。",
        "请拨打13812345678",
        "外卖",
    ] * 4
    with_onednn = TextScorer(path, manifest, use_onednn=True).score(texts)
    without = TextScorer(path, manifest, use_onednn=False).score(texts)
    assert with_onednn == pytest.approx(without, abs=1e-5)


# Any text the wire format accepts (up to 4,096 code points, no lone surrogate: records.py
# refuses those) reaches the text model: none may raise, or the worker would stop on it after
# every restart (tests/streams/test_any_input.py does the same for the behaviour path).
_ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=4096)
_EDGES = st.sampled_from(
    [
        "",
        " ",
        "\x00" * 50,
        "\u200b" * 4096,
        "\U0001f600" * 4096,
        "a\u0301" * 2000,
        "\u202e" * 10 + "转账",
        "\n\t\r",
    ]
)


@pytest.fixture(scope="module")
def any_text_scorer(tiny_bundle: Bundle) -> TextScorer:
    path, manifest = tiny_bundle
    return TextScorer(path, manifest, buckets=(8, 16, 32), max_batch=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_ANY_TEXT, _EDGES, st.none()), min_size=1, max_size=6))
def test_any_accepted_text_scores_or_is_skipped(any_text_scorer: TextScorer, texts: list[str | None]) -> None:
    scores = any_text_scorer.score(texts)
    assert len(scores) == len(texts)
    for text, score in zip(texts, scores, strict=True):
        assert score is None or 0.0 <= score <= 1.0
        if text is None:
            assert score is None
