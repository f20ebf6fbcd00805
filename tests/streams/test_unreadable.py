"""Dead letters as the dead-letter topic takes them: original bytes and key, cut only past the
topic's room, with the original's length and digest (the real broker's refusal of an uncut one:
tests/integration/test_oversize_dead_letter.py)."""

from __future__ import annotations

import hashlib

import pytest

from modeling.errors import ValidationError
from modeling.records import parse_transaction
from modeling.settings import Settings
from streams.broker.topics import DEAD_LETTER_HEADROOM, dead_letter_max_bytes, dead_letter_room
from streams.pipeline import InMessage
from streams.unreadable import MAX_KEY_BYTES, DeadLetter, fit, input_dead_letter


def _letter(key: bytes | None, value: bytes | None) -> DeadLetter:
    with pytest.raises(ValidationError) as info:
        parse_transaction(value, 64)
    return input_dead_letter(InMessage("transaction", "tx", 3, 41, key, value, 0, 0.0), info.value)


def _extra(dl: DeadLetter) -> list[str]:
    return [k for k, _ in dl.headers if k.startswith(("riskstream-value-", "riskstream-key-"))]


@pytest.mark.parametrize("size", [0, 99, 100])
def test_a_value_within_the_room_is_kept_whole(size: int) -> None:
    value = b"x" * size
    dl = _letter(b"u1", value)
    assert fit(dl, 100) is dl and dl.value == value and dl.key == b"u1"
    h = dict(dl.headers)
    where = (h["riskstream-source-topic"], h["riskstream-source-partition"], h["riskstream-source-offset"])
    assert where == (b"tx", b"3", b"41") and not _extra(dl)


def test_a_tombstone_has_no_value_and_no_digest() -> None:
    dl = fit(_letter(b"u1", None), 100)
    assert dl.value is None and not _extra(dl)


def test_a_value_past_the_room_is_cut_with_its_length_and_digest() -> None:
    value = b"{" + bytes(range(256)) * 4
    whole = _letter(b"u1", value)
    dl = fit(whole, 100)
    h = dict(dl.headers)
    assert dl.value == value[:100] and dl.key == b"u1"
    assert h["riskstream-value-bytes"] == str(len(value)).encode()
    assert h["riskstream-value-sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert h["riskstream-error-field"] == b"<message>"  # the reason is the original's, not the cut's
    assert dict(whole.headers).keys() <= h.keys() and whole.value == value  # the original untouched


def test_a_key_past_its_limit_is_cut_with_its_length_and_digest() -> None:
    key = b"k" * (MAX_KEY_BYTES + 1)
    dl = fit(_letter(key, b"{}"), 100)
    h = dict(dl.headers)
    assert dl.key == key[:MAX_KEY_BYTES] and dl.value == b"{}"
    assert h["riskstream-key-bytes"] == str(len(key)).encode()
    assert h["riskstream-key-sha256"] == hashlib.sha256(key).hexdigest().encode()
    assert "riskstream-value-bytes" not in h
    exact = _letter(key[:MAX_KEY_BYTES], b"{}")
    assert fit(exact, 100) is exact


def test_a_stored_state_past_the_room_is_cut_too() -> None:
    state = DeadLetter(b"u1", b"s" * 500, [("riskstream-state-kind", b"user-state")])
    dl = fit(state, 200)
    assert dl.value == b"s" * 200 and dict(dl.headers)["riskstream-value-bytes"] == b"500"


def test_the_room_is_the_largest_state_or_less_where_the_topic_takes_less() -> None:
    s = Settings(state_max_record_bytes=1 << 20)
    assert dead_letter_room(s) == 1 << 20
    assert dead_letter_room(s, dead_letter_max_bytes(s)) == 1 << 20  # as riskstream creates it
    assert dead_letter_room(s, 9 << 20) == 1 << 20  # a larger topic: states are no larger
    assert dead_letter_room(s, 1_048_588) == 1_048_588 - DEAD_LETTER_HEADROOM  # the broker's default
    assert dead_letter_room(s, 100_000) == 50_000  # a tiny topic: half for the value
    # what a cut dead letter may still add: the longest key and the headers
    assert MAX_KEY_BYTES + 4096 < DEAD_LETTER_HEADROOM // 2
