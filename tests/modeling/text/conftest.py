"""Fixtures for the text model: a tiny untrained ERNIE bundle (exported program + tokenizer +
manifest), enough to exercise tokenizing, bucketing and Paddle Inference without training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SAMPLE_TEXTS = [
    "您好,这里是银行客服,您的账户存在异常,请提供验证码。",
    "我想订一份外卖,送到公司楼下。",
    "请把钱转到安全账户[CARD],稍后会退还给您。",
    "恭喜您中奖了,请访问[URL]领取奖品,客服电话[PHONE]。",
    "明天上午十点预约维修洗衣机可以吗?",
    "Hello, your parcel is waiting, pay the fee now.",
]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    import paddle

    from modeling.text.filters import FilterConfig
    from modeling.text.model import ErnieSize, build_model, export_inference
    from modeling.text.scorer import text_feature_set
    from modeling.text.tokenizer import TextTokenizer

    paddle.seed(3)
    bundle = tmp_path_factory.mktemp("text-bundle")
    tok = TextTokenizer.build(SAMPLE_TEXTS * 2, bundle / "build", min_freq=1)
    model = build_model(
        tok.vocab_size,
        ErnieSize(
            num_hidden_layers=1,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        pad_token_id=tok.pad_id,
    )
    export_inference(model, bundle)
    tok.save(bundle)
    max_len = 48
    manifest = {
        "version": "text-test",
        "max_len": max_len,
        "vocab_sha256": tok.sha256,
        "feature_set": text_feature_set(tok.sha256, max_len),
        "filter": FilterConfig(max_chars=200).to_dict(),
    }
    return bundle, manifest
