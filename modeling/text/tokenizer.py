"""Tokenizer for the text model: paddlenlp's ``ErnieTokenizer``, over a character vocabulary built
from training text when no pretrained vocabulary is given, or loaded from a local directory with
``from_pretrained(local_dir)`` when one is.

Either way the mask tokens of :mod:`modeling.text.filters` (``[URL]`` ``[PHONE]`` ``[CARD]``) are
special tokens: kept whole by the tokenizer and given their own ids.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from modeling.errors import ModelLoadError
from modeling.text.env import prepare_paddlenlp, quiet_paddlenlp
from modeling.text.filters import MASK_TOKENS

prepare_paddlenlp()

from paddlenlp.transformers import BasicTokenizer, ErnieTokenizer  # noqa: E402

PAD: Final = "[PAD]"
CLS: Final = "[CLS]"
SEP: Final = "[SEP]"
UNK: Final = "[UNK]"
MASK: Final = "[MASK]"
SPECIAL_TOKENS: Final = (PAD, CLS, SEP, UNK, MASK)
VOCAB_FILE: Final = "vocab.txt"

_MASK_SPLIT_RE: Final = re.compile("(" + "|".join(re.escape(t) for t in MASK_TOKENS) + ")")


def _words(text: str, basic: Any) -> Iterable[str]:
    """The words ErnieTokenizer hands to WordPiece: mask tokens whole, every CJK character alone."""
    for piece in _MASK_SPLIT_RE.split(text):
        if piece in MASK_TOKENS or not piece:
            continue
        yield from basic.tokenize(piece)


def build_vocab(texts: Iterable[str], *, min_freq: int = 2, max_size: int = 8000) -> list[str]:
    """A character vocabulary: special and mask tokens first, then every character seen at least
    ``min_freq`` times as a word start (``c``) or inside a word (``##c``), most frequent first.
    Characters below the cut become ``[UNK]``, which therefore is seen in training too."""
    if max_size <= len(SPECIAL_TOKENS) + len(MASK_TOKENS):
        raise ValueError(f"max_size {max_size} leaves no room for characters")
    basic = BasicTokenizer(do_lower_case=True)
    counts: Counter[str] = Counter()
    for text in texts:
        for word in _words(text, basic):
            counts[word[0]] += 1
            counts.update("##" + c for c in word[1:])
    reserved = set(SPECIAL_TOKENS) | set(MASK_TOKENS)
    chars = sorted(
        (t for t, n in counts.items() if n >= min_freq and t not in reserved), key=lambda t: (-counts[t], t)
    )
    room = max_size - len(SPECIAL_TOKENS) - len(MASK_TOKENS)
    return [*SPECIAL_TOKENS, *MASK_TOKENS, *chars[:room]]


def _splits_before(ch: str) -> bool:
    # ErnieTokenizer always splits before whitespace and CJK ideographs; mask and special tokens
    # contain neither, so a cut there never falls inside a word or a token
    return ch.isspace() or "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def token_prefix(text: str, max_chars: int) -> str:
    """The longest prefix of ``text`` of at most ``max_chars`` characters that ends where the
    tokenizer splits anyway. Its tokens are a prefix of the tokens of ``text``."""
    if len(text) <= max_chars:
        return text
    for cut in range(max_chars, 0, -1):
        if _splits_before(text[cut]):
            return text[:cut]
    return text


def vocab_sha256(tokens: Sequence[str]) -> str:
    """Checksum of a vocabulary in id order; equals the sha256 of its ``vocab.txt``."""
    h = hashlib.sha256()
    for t in tokens:
        h.update(t.encode("utf-8") + b"\n")
    return h.hexdigest()


class TextTokenizer:
    """A typed face over ``ErnieTokenizer`` (``.inner``): encode cleaned text to ids."""

    def __init__(self, inner: Any) -> None:
        with quiet_paddlenlp():
            inner.add_special_tokens({"additional_special_tokens": list(MASK_TOKENS)})
        self.inner = inner
        for tok in SPECIAL_TOKENS:
            if tok not in inner.get_vocab():
                raise ModelLoadError(f"tokenizer vocabulary lacks the special token {tok}")

    @classmethod
    def from_vocab(cls, tokens: Sequence[str], directory: Path) -> TextTokenizer:
        """Write ``tokens`` as ``directory/vocab.txt`` and open an ErnieTokenizer over it."""
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / VOCAB_FILE
        path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        return cls(ErnieTokenizer(str(path), do_lower_case=True))

    @classmethod
    def build(
        cls, texts: Iterable[str], directory: Path, *, min_freq: int = 2, max_size: int = 8000
    ) -> TextTokenizer:
        """Character vocabulary from (cleaned) training text, saved under ``directory``."""
        return cls.from_vocab(build_vocab(texts, min_freq=min_freq, max_size=max_size), directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TextTokenizer:
        """Load a tokenizer saved in a local directory (ours, or e.g. ``ernie-3.0-mini-zh``'s).

        Only local directories: a model name would make paddlenlp try to download it."""
        path = Path(directory)
        if not (path / VOCAB_FILE).is_file():
            raise ModelLoadError("no tokenizer vocabulary in directory", path=str(path))
        with quiet_paddlenlp():
            inner = ErnieTokenizer.from_pretrained(str(path))
        return cls(inner)

    def save(self, directory: Path) -> Path:
        """``save_pretrained`` into ``directory``; returns the ``vocab.txt`` path."""
        directory.mkdir(parents=True, exist_ok=True)
        with quiet_paddlenlp():
            self.inner.save_pretrained(str(directory))
        return directory / VOCAB_FILE

    @property
    def tokens(self) -> list[str]:
        """Every token in id order, tokens added beyond ``vocab.txt`` included."""
        vocab: dict[str, int] = self.inner.get_vocab()
        return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]

    @property
    def vocab_size(self) -> int:
        return len(self.inner)

    @property
    def pad_id(self) -> int:
        return int(self.inner.pad_token_id)

    @property
    def sha256(self) -> str:
        return vocab_sha256(self.tokens)

    def tokenize(self, text: str) -> list[str]:
        out: list[str] = self.inner.tokenize(text)
        return out

    def encode(self, texts: Sequence[str], max_len: int) -> list[list[int]]:
        """``[CLS] … [SEP]`` ids per text, truncated to ``max_len`` ids in all; no padding.

        Only a prefix of each text is tokenized (ending on a split point, grown until it yields
        enough tokens), which gives the same ids as tokenizing all of it: a 5,000-character text
        costs what its first few hundred characters cost."""
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3, got {max_len}")
        out: list[list[int]] = []
        for text in texts:
            chars = max_len + max_len // 2
            while True:
                prefix = token_prefix(text, chars)
                ids = self._encode_one(prefix, max_len)
                if len(ids) >= max_len or len(prefix) == len(text):
                    break
                chars *= 2
            out.append(ids)
        return out

    def encode_full(self, text: str, max_len: int) -> list[int]:
        """Tokenize all of ``text`` (the reference :meth:`encode` must agree with)."""
        return self._encode_one(text, max_len)

    def _encode_one(self, text: str, max_len: int) -> list[int]:
        enc = self.inner(
            text,
            max_length=max_len,
            truncation=True,
            return_token_type_ids=False,
            return_attention_mask=False,
        )
        return list(enc["input_ids"])

    def decode(self, ids: Sequence[int]) -> list[str]:
        out: list[str] = self.inner.convert_ids_to_tokens(list(ids))
        return out
