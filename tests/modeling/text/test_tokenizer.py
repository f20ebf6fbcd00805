"""The character vocabulary and the ErnieTokenizer over it: building, saving, loading back
(``from_pretrained(local_dir)``), mask tokens kept whole, truncation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling.errors import ModelLoadError
from modeling.text.filters import CARD_TOKEN, MASK_TOKENS, PHONE_TOKEN, URL_TOKEN, clean_text
from modeling.text.tokenizer import (
    SPECIAL_TOKENS,
    VOCAB_FILE,
    TextTokenizer,
    build_vocab,
    token_prefix,
    vocab_sha256,
)

TEXTS = [
    "转账到安全账户",
    "订单已送达",
    "账户异常请转账",
    "hello world",
    f"拨打{PHONE_TOKEN}或访问{URL_TOKEN}",
]


def test_vocab_starts_with_special_then_mask_tokens() -> None:
    vocab = build_vocab(TEXTS, min_freq=1)
    assert tuple(vocab[:5]) == SPECIAL_TOKENS == ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
    assert tuple(vocab[5:8]) == MASK_TOKENS
    assert len(vocab) == len(set(vocab))


def test_vocab_holds_characters_and_word_continuations() -> None:
    vocab = set(build_vocab(TEXTS, min_freq=1))
    assert {"转", "账", "h", "##e", "##l", "##o", "w"} <= vocab
    assert "hello" not in vocab  # characters only
    assert "[" not in vocab and "##U" not in vocab  # the mask tokens are not split into characters


def test_min_freq_and_max_size_cut_rare_characters() -> None:
    vocab = build_vocab(TEXTS, min_freq=2)
    assert "账" in vocab and "转" in vocab  # 3 and 2 occurrences
    assert "订" not in vocab  # once
    assert len(build_vocab(TEXTS, min_freq=1, max_size=10)) == 10
    with pytest.raises(ValueError):
        build_vocab(TEXTS, max_size=8)


def test_round_trip_through_a_local_directory(tmp_path: Path) -> None:
    tok = TextTokenizer.build(TEXTS, tmp_path / "a", min_freq=1)
    saved = tok.save(tmp_path / "b")
    assert saved.name == VOCAB_FILE
    again = TextTokenizer.from_pretrained(tmp_path / "b")
    assert again.tokens == tok.tokens
    assert again.sha256 == tok.sha256 == hashlib.sha256(saved.read_bytes()).hexdigest()
    text = "账户异常,请转账"
    assert again.encode([text], 32) == tok.encode([text], 32)
    ids = tok.encode([text], 32)[0]
    assert tok.decode(ids) == ["[CLS]", "账", "户", "异", "常", "[UNK]", "请", "转", "账", "[SEP]"]


def test_mask_tokens_stay_whole_and_get_their_own_ids(tmp_path: Path) -> None:
    tok = TextTokenizer.build(TEXTS, tmp_path, min_freq=1)
    cleaned = clean_text("打13812345678,卡号6222021234567890123,网址 https://a.cn")
    assert cleaned is not None
    pieces = tok.tokenize(cleaned)
    for mask in (PHONE_TOKEN, CARD_TOKEN, URL_TOKEN):
        assert mask in pieces
    ids = tok.encode([cleaned], 64)[0]
    assert tok.inner.convert_tokens_to_ids(list(MASK_TOKENS)) == [5, 6, 7]
    assert {5, 6, 7} <= set(ids)


def test_encode_truncates_and_keeps_cls_sep(tmp_path: Path) -> None:
    tok = TextTokenizer.build(TEXTS, tmp_path, min_freq=1)
    ids = tok.encode(["转账" * 50, "订"], 10)
    assert len(ids[0]) == 10
    assert tok.decode([ids[0][0], ids[0][-1]]) == ["[CLS]", "[SEP]"]
    assert ids[1] == [1, tok.inner.convert_tokens_to_ids("订"), 2]
    assert tok.encode([], 10) == []
    with pytest.raises(ValueError):
        tok.encode(["x"], 2)


def test_upper_case_is_folded(tmp_path: Path) -> None:
    tok = TextTokenizer.build(TEXTS, tmp_path, min_freq=1)
    assert tok.encode(["HELLO"], 16) == tok.encode(["hello"], 16)


def test_a_pretrained_vocabulary_without_mask_tokens_gets_them_added(tmp_path: Path) -> None:
    # what ernie-3.0-mini-zh's vocab.txt looks like: specials, characters, no [URL]/[PHONE]/[CARD]
    (tmp_path / VOCAB_FILE).write_text(
        "\n".join([*SPECIAL_TOKENS, "转", "账", "##账"]) + "\n", encoding="utf-8"
    )
    tok = TextTokenizer.from_pretrained(tmp_path)
    assert tok.vocab_size == 8 + 3
    assert tok.tokenize(f"转账{CARD_TOKEN}") == ["转", "账", CARD_TOKEN]
    assert tok.tokens[-3:] == list(MASK_TOKENS)


def test_missing_directory_is_a_load_error_not_a_download(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        TextTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(ModelLoadError):
        TextTokenizer.from_pretrained("ernie-3.0-mini-zh")  # a hub name is never fetched


def test_vocab_checksum_is_order_sensitive() -> None:
    assert vocab_sha256(["a", "b"]) != vocab_sha256(["b", "a"])
    assert vocab_sha256(["a", "b"]) == hashlib.sha256(b"a\nb\n").hexdigest()


_PIECES = st.sampled_from(
    [
        "转",
        "账",
        "户",
        "订",
        "单",
        "é",
        "Hello",
        "wor",
        "ld",
        "123",
        " ",
        "  ",
        ",",
        "。",
        "[",
        "]",
        URL_TOKEN,
        PHONE_TOKEN,
        CARD_TOKEN,
        "x" * 120,
        "\u3400",
    ]
)


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    return TextTokenizer.build([*TEXTS, "Hello world 123 é"], tmp_path_factory.mktemp("tok"), min_freq=1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(_PIECES, max_size=80), max_len=st.integers(3, 40))
def test_prefix_encoding_equals_full_encoding(
    char_tokenizer: TextTokenizer, pieces: list[str], max_len: int
) -> None:
    text = "".join(pieces)
    assert char_tokenizer.encode([text], max_len) == [char_tokenizer.encode_full(text, max_len)]


def test_token_prefix_cuts_only_at_split_points() -> None:
    assert token_prefix("abc def", 5) == "abc"
    assert token_prefix("转账到账", 2) == "转账"
    assert token_prefix("ab[PHONE]cd", 6) == "ab[PHONE]cd"  # no split point: the whole text
    assert token_prefix("short", 10) == "short"
