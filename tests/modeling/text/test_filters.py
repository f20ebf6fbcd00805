"""Each input-filtering rule of ``modeling.text.filters``, alone and through ``clean_text``."""

from __future__ import annotations

import pytest

from modeling.text.filters import (
    CARD_TOKEN,
    PHONE_TOKEN,
    URL_TOKEN,
    FilterConfig,
    cap_length,
    clean_text,
    collapse_whitespace,
    mask_cards,
    mask_phones,
    mask_urls,
    normalize_width,
    strip_invisible,
)

# ------------------------------------------------------------------------------------- empty input


@pytest.mark.parametrize(
    "text", [None, "", " ", "\t\n\r", "\u200b\u200c\u200d\ufeff", "\u3000\u3000", "\x00\x07"]
)
def test_nothing_scoreable_gives_none(text: str | None) -> None:
    assert clean_text(text) is None


# ---------------------------------------------------------------------------------------- NFKC


def test_full_width_becomes_half_width() -> None:
    assert normalize_width("ＡＢＣ１２３！？（）") == "ABC123!?()"
    assert clean_text("ＶＩＰ客服") == "VIP客服"


def test_ideographic_space_becomes_a_space() -> None:
    assert clean_text("转账\u3000\u3000到账") == "转账 到账"


def test_chinese_punctuation_and_characters_are_kept() -> None:
    assert clean_text("您好，请问。、《》") == "您好,请问。、《》"  # full-width comma → ","


# ------------------------------------------------------------------------------ invisible characters


@pytest.mark.parametrize(
    "invisible",
    [
        "\u200b",
        "\u200c",
        "\u200d",
        "\u2060",
        "\ufeff",
        "\u00ad",
        "\u202e",
        "\u2066",
        "\x00",
        "\x1b",
        "\ue000",
    ],
)
def test_control_format_and_private_use_characters_are_removed(invisible: str) -> None:
    assert strip_invisible(f"安{invisible}全") == "安全"


def test_zero_width_characters_cannot_hide_a_card_number() -> None:
    hidden = "\u200b".join("6222021234567890123")
    assert clean_text(f"卡号{hidden}") == f"卡号{CARD_TOKEN}"


def test_control_whitespace_becomes_space() -> None:
    assert strip_invisible("a\tb\nc\rd") == "a b c d"


# ---------------------------------------------------------------------------------------- whitespace


def test_whitespace_runs_collapse_and_ends_are_stripped() -> None:
    assert collapse_whitespace("  a \t\n  b   c  ") == "a b c"
    assert clean_text(" A:您好   B:你好 \n") == "A:您好 B:你好"


# ----------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("点击 https://evil.example.cn/a?b=1&c=2 领取", f"点击 {URL_TOKEN} 领取"),
        ("打开http://1.2.3.4:8080/x领取", f"打开{URL_TOKEN}领取"),
        ("访问www.icbc-verify.com。", f"访问{URL_TOKEN}。"),
        ("登录 bank-safe.top/login 验证", f"登录 {URL_TOKEN} 验证"),
        ("短链 bit.ly/3xYz 点开", f"短链 {URL_TOKEN} 点开"),
        ("网址ＨＴＴＰＳ：／／ｅｖｉｌ．ｃｎ", f"网址{URL_TOKEN}"),  # full width: NFKC first
    ],
)
def test_urls_are_masked(text: str, expected: str) -> None:
    assert clean_text(text) == expected


def test_url_trailing_punctuation_is_kept_outside_the_token() -> None:
    assert mask_urls("see https://a.cn/x, then") == f"see {URL_TOKEN}, then"


def test_plain_words_and_decimals_are_not_urls() -> None:
    assert mask_urls("金额 12.50 元, version 2.0, e.g. ok") == "金额 12.50 元, version 2.0, e.g. ok"


# ---------------------------------------------------------------------------------------- phones


@pytest.mark.parametrize(
    "phone",
    [
        "13812345678",
        "199 1234 5678",
        "138-1234-5678",
        "+8613812345678",
        "+86 138 1234 5678",
        "0086-13812345678",
        "(+86)13812345678",
        "010-12345678",
        "0755 8765432",
        "(021)12345678",
        "+86 10 12345678",
        "400-123-4567",
        "8008201234",
    ],
)
def test_phone_numbers_are_masked(phone: str) -> None:
    assert clean_text(f"请拨打{phone}咨询") == f"请拨打{PHONE_TOKEN}咨询"


def test_full_width_phone_is_masked() -> None:
    assert clean_text("电话：１３８１２３４５６７８") == f"电话:{PHONE_TOKEN}"


@pytest.mark.parametrize("not_phone", ["12345678901", "订单123456", "2024年", "验证码 834921", "1381234567"])
def test_other_numbers_are_not_phones(not_phone: str) -> None:
    assert mask_phones(not_phone) == not_phone


def test_phone_followed_by_a_count_is_a_phone_not_a_card() -> None:
    assert clean_text("13812345678 12次") == f"{PHONE_TOKEN} 12次"


# ----------------------------------------------------------------------------------------- cards


@pytest.mark.parametrize(
    "card",
    [
        "6222021234567890123",  # 19 digits
        "6222021234567890",  # 16
        "4111111111111",  # 13
        "6222 0212 3456 7890 123",
        "6222-0212-3456-7890",
        "622202 1234567890123",
    ],
)
def test_card_numbers_are_masked(card: str) -> None:
    assert clean_text(f"卡号{card}转账") == f"卡号{CARD_TOKEN}转账"


def test_full_width_card_is_masked() -> None:
    assert clean_text("卡号６２２２０２１２３４５６７８９０") == f"卡号{CARD_TOKEN}"


@pytest.mark.parametrize("not_card", ["123456789012", "12345678901234567890", "2024 01 01"])
def test_too_short_or_too_long_numbers_are_not_cards(not_card: str) -> None:
    assert mask_cards(not_card) == not_card


def test_no_card_digits_survive_cleaning() -> None:
    card = "6222021234567890123"
    out = clean_text(
        f"请把钱转到{card},户名张三,卡号 {card[:4]} {card[4:8]} {card[8:12]} {card[12:16]} {card[16:]}"
    )
    assert out is not None
    assert "62220" not in out and "1234" not in out
    assert out.count(CARD_TOKEN) == 2


# ---------------------------------------------------------------------------------------- length


def test_length_is_capped() -> None:
    assert clean_text("转" * 5000, FilterConfig(max_chars=100)) == "转" * 100


def test_cap_never_leaves_half_a_mask_token() -> None:
    text = "a" * 8 + PHONE_TOKEN
    for cut in range(8, 8 + len(PHONE_TOKEN)):
        assert cap_length(text, cut) == "a" * 8
    assert cap_length(text, len(text)) == text


def test_masking_runs_before_the_cap() -> None:
    # the card straddles the cap: masking first means no leading digits of it survive
    assert clean_text("转账" + "6222021234567890123", FilterConfig(max_chars=6)) == "转账"
    assert clean_text("转账" + "6222021234567890123", FilterConfig(max_chars=8)) == f"转账{CARD_TOKEN}"


def test_hostile_raw_input_is_bounded_and_no_partial_card_survives_the_raw_cut() -> None:
    cfg = FilterConfig(max_chars=10)
    raw = "x" * (cfg.raw_limit - 6) + "6222021234567890123"
    out = clean_text(raw, cfg)
    assert out == "x" * 10
    assert clean_text("好" * 1_000_000, cfg) == "好" * 10


def test_rules_can_be_switched_off() -> None:
    cfg = FilterConfig(mask_urls=False, mask_phones=False, mask_cards=False)
    assert clean_text("www.a.cn 13812345678", cfg) == "www.a.cn 13812345678"


def test_config_round_trips_through_a_dict() -> None:
    cfg = FilterConfig(max_chars=77, mask_urls=False)
    assert FilterConfig.from_dict(dict(cfg.to_dict())) == cfg
    with pytest.raises(ValueError):
        FilterConfig(max_chars=0)


def test_cleaning_is_idempotent() -> None:
    text = "ＶＩＰ客服\u200b: 请访问 https://x.cn 或拨打 138 1234 5678, 卡号 6222021234567890123"
    once = clean_text(text)
    assert once is not None
    assert clean_text(once) == once
