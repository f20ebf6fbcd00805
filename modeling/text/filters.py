"""Input filtering for free text, applied identically in training and serving.

``clean_text`` runs these rules in order:

1. ``None`` stays ``None``; a raw input longer than ``FilterConfig.raw_limit`` is cut first (and a
   digit run broken by that cut is dropped, so no partial card number survives the cut).
2. Unicode NFKC: full-width letters, digits and punctuation become half-width (``１３８`` → ``138``).
3. Control, format (zero-width, bidi overrides, BOM, soft hyphen), private-use and surrogate code
   points are removed; control whitespace (tab, newline) becomes a space.
4. Whitespace runs collapse to one space; the ends are stripped.
5. URLs become ``[URL]``; card-like numbers (13–19 digits, optionally grouped by spaces or dashes)
   become ``[CARD]``; phone numbers (Chinese mobiles ``1[3-9]`` + 9 digits, landlines with an area
   code, 400/800 service numbers, with or without ``+86``/``0086``) become ``[PHONE]``.
   Masking runs before any cap, so a card or phone number never reaches a log or a model.
6. The result is capped at ``FilterConfig.max_chars`` characters without leaving half a mask token.
7. Text that is empty after all this gives ``None``: it gets no text score.

Pure Python; no Paddle.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final

URL_TOKEN: Final = "[URL]"
PHONE_TOKEN: Final = "[PHONE]"
CARD_TOKEN: Final = "[CARD]"
MASK_TOKENS: Final = (URL_TOKEN, PHONE_TOKEN, CARD_TOKEN)

# Unicode categories removed outright: control (Cc, except whitespace handled below), format (Cf:
# zero-width space/joiners, BOM, bidi controls, soft hyphen), private use (Co), surrogates (Cs).
_DROP_CATEGORIES: Final = frozenset({"Cc", "Cf", "Co", "Cs"})
_WHITESPACE_CONTROLS: Final = frozenset("\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85")

_URL_CHARS = r"[A-Za-z0-9\-._~:/?#@!$&'*+,;=%]"
_TLDS = (
    r"(?:com|cn|net|org|top|xyz|vip|cc|io|me|info|shop|app|link|club|site|online|tk|co|ly|gl|biz|tv|us|ws"
    r"|to|xin|ltd|wang|ren)"
)
_URL_RE: Final = re.compile(
    rf"(?:(?:https?|ftp)://|www\.){_URL_CHARS}+"
    rf"|(?<![A-Za-z0-9@.\-])(?:[A-Za-z0-9\-]+\.)+{_TLDS}(?![A-Za-z0-9\-])(?:[/?#]{_URL_CHARS}*)?",
    re.IGNORECASE | re.ASCII,
)
_URL_TRAILING: Final = ".,;:!?'"

# Card-like: a digit followed by 12..18 more, each optionally preceded by one space or dash. The
# callback checks the digit count and that separated groups look like groups (>= 3 digits).
_CARD_RE: Final = re.compile(r"(?<![0-9])[0-9](?:[ \-]?[0-9]){12,18}(?![0-9])", re.ASCII)

_SEP = r"[ \-]?"
_CC = r"(?:(?:\+|00)86[ \-]?|\(\+?86\)[ \-]?)"
_PHONE_RE: Final = re.compile(
    "|".join(
        (
            # mobile: 1[3-9]X XXXX XXXX
            rf"(?<![0-9])1[3-9][0-9]{_SEP}[0-9]{{4}}{_SEP}[0-9]{{4}}(?![0-9])",
            # 400 / 800 service numbers
            rf"(?<![0-9])[48]00{_SEP}[0-9]{{3}}{_SEP}[0-9]{{4}}(?![0-9])",
            # landline: (0AA[A]) or 0AA[A], then 7-8 digits
            rf"(?<![0-9])\(0[1-9][0-9]{{1,2}}\){_SEP}[0-9]{{7,8}}(?![0-9])",
            rf"(?<![0-9])0[1-9][0-9]{{1,2}}{_SEP}[0-9]{{7,8}}(?![0-9])",
        )
    ),
    re.ASCII,
)
_WS_RE: Final = re.compile(r"\s+")
_TRAILING_DIGITS_RE: Final = re.compile(r"[0-9０-９][0-9０-９ \-]*$")


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """What ``clean_text`` keeps. ``max_chars`` caps the cleaned text; ``raw_limit`` bounds the work
    done on hostile input before cleaning (it is at least ``4 * max_chars``)."""

    max_chars: int = 1024
    mask_urls: bool = True
    mask_phones: bool = True
    mask_cards: bool = True

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")

    @property
    def raw_limit(self) -> int:
        return max(4 * self.max_chars, 4096)

    def to_dict(self) -> dict[str, int | bool]:
        return {
            "max_chars": self.max_chars,
            "mask_urls": self.mask_urls,
            "mask_phones": self.mask_phones,
            "mask_cards": self.mask_cards,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> FilterConfig:
        return cls(
            max_chars=int(str(d.get("max_chars", 1024))),
            mask_urls=bool(d.get("mask_urls", True)),
            mask_phones=bool(d.get("mask_phones", True)),
            mask_cards=bool(d.get("mask_cards", True)),
        )


DEFAULT_FILTER: Final = FilterConfig()


def normalize_width(text: str) -> str:
    """NFKC: full-width ASCII forms become half-width, compatibility characters are unified."""
    return unicodedata.normalize("NFKC", text)


def strip_invisible(text: str) -> str:
    """Drop control/format/private-use code points; control whitespace becomes a space."""
    out: list[str] = []
    for ch in text:
        if ch in _WHITESPACE_CONTROLS:
            out.append(" ")
        elif unicodedata.category(ch) not in _DROP_CATEGORIES:
            out.append(ch)
    return "".join(out)


def collapse_whitespace(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


def _url_sub(m: re.Match[str]) -> str:
    s = m.group(0)
    stripped = s.rstrip(_URL_TRAILING)
    return URL_TOKEN + s[len(stripped) :]


def mask_urls(text: str) -> str:
    """``http(s)://…``, ``www.…`` and bare domains with a common TLD become ``[URL]``."""
    return _URL_RE.sub(_url_sub, text)


def _card_sub(m: re.Match[str]) -> str:
    s = m.group(0)
    groups = re.split(r"[ \-]", s)
    n_digits = sum(len(g) for g in groups)
    if not 13 <= n_digits <= 19:
        return s
    if len(groups) > 1 and min(len(g) for g in groups) < 3:
        return s  # e.g. "13812345678 12": a phone followed by a count, not a card
    return CARD_TOKEN


def mask_cards(text: str) -> str:
    """Bank-card-like numbers (13–19 digits, contiguous or grouped by spaces/dashes) become ``[CARD]``."""
    return _CARD_RE.sub(_card_sub, text)


_PREFIXED_PHONE_RE: Final = re.compile(
    rf"{_CC}(?:1[3-9][0-9]{_SEP}[0-9]{{4}}{_SEP}[0-9]{{4}}|\(?0?[1-9][0-9]{{1,2}}\)?{_SEP}[0-9]{{7,8}})(?![0-9])",
    re.ASCII,
)


def _mask_prefixed_phones(text: str) -> str:
    return _PREFIXED_PHONE_RE.sub(PHONE_TOKEN, text)


def mask_phones(text: str) -> str:
    """Chinese mobiles, landlines and 400/800 numbers, with or without +86, become ``[PHONE]``."""
    return _PHONE_RE.sub(PHONE_TOKEN, _mask_prefixed_phones(text))


def cap_length(text: str, max_chars: int) -> str:
    """Cut to ``max_chars`` characters; a mask token cut in half is removed, not left dangling."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    for token in MASK_TOKENS:
        for k in range(len(token) - 1, 0, -1):
            if cut.endswith(token[:k]):
                return cut[:-k].rstrip()
    return cut.rstrip()


def clean_text(text: str | None, config: FilterConfig = DEFAULT_FILTER) -> str | None:
    """Apply every rule (see the module docstring). ``None`` when nothing scoreable is left."""
    if text is None:
        return None
    if len(text) > config.raw_limit:
        text = _TRAILING_DIGITS_RE.sub("", text[: config.raw_limit])
    text = normalize_width(text)
    text = strip_invisible(text)
    text = collapse_whitespace(text)
    if config.mask_urls:
        text = mask_urls(text)
    # "+86 138 1234 5678" has 13 digits: numbers with a country code are masked before the card
    # rule could read them as a card; the other phones after it, so no 11-digit run inside a card
    # number is taken for a mobile.
    if config.mask_phones:
        text = _mask_prefixed_phones(text)
    if config.mask_cards:
        text = mask_cards(text)
    if config.mask_phones:
        text = mask_phones(text)
    text = cap_length(text, config.max_chars)
    return text or None
