"""Reading dead letters: their origin, the choice by topic, field and time, the summary, and the
check that a cut dead letter's source record is the one cut (through the broker:
tests/integration/test_dead_letters_redrive.py)."""

from __future__ import annotations

import asyncio
import hashlib

from modeling.settings import Settings
from streams.dead_letters import (
    REDRIVEN_HEADER,
    Letter,
    RedriveReport,
    _matches,
    _records,
    _selected,
    source_key,
    summarize,
)
from streams.unreadable import DeadLetter, fit


def _letter(offset: int, t: int, topic: str, field: str, value: bytes = b"{}", **extra: bytes) -> Letter:
    headers = [
        ("riskstream-source-topic", topic.encode()),
        ("riskstream-source-partition", b"2"),
        ("riskstream-source-offset", str(offset * 10).encode()),
        ("riskstream-error-field", field.encode()),
        ("riskstream-error", f"{field} is wrong".encode()),
        *extra.items(),
    ]
    return Letter(0, offset, t, b"u1", value, tuple(headers))


STATE = Letter(
    0,
    9,
    500,
    b"u7",
    b"\x00",
    (("riskstream-state-kind", b"user-state"), ("riskstream-error-field", b"snapshot")),
)


def test_a_letter_names_its_source_or_its_state_kind() -> None:
    a = _letter(1, 100, "tx", "amount")
    assert a.source == ("tx", 2, 10) and a.field == "amount" and a.reason == "amount is wrong" and not a.cut
    assert STATE.source is None and STATE.state_kind == "user-state" and STATE.field == "snapshot"


def test_letters_are_chosen_by_origin_field_and_time() -> None:
    a, b, c = (
        _letter(1, 100, "tx", "amount"),
        _letter(2, 200, "clicks", "<key>"),
        _letter(3, 300, "tx", "<key>"),
    )
    pick = [a, b, c, STATE]

    def chosen(**kw: object) -> list[Letter]:
        opts = {"topics": None, "fields": None, "since_ms": None, "until_ms": None, **kw}
        return [x for x in pick if _selected(x, **opts)]  # type: ignore[arg-type]

    assert chosen() == pick
    assert chosen(topics={"tx"}) == [a, c]
    assert chosen(topics={"user-state"}) == [STATE]
    assert chosen(fields={"<key>"}) == [b, c]
    assert chosen(topics={"tx"}, fields={"<key>"}) == [c]
    assert chosen(since_ms=200) == [b, c, STATE] and chosen(until_ms=200) == [a]


def test_the_summary_counts_by_origin_and_field_with_a_first_reason() -> None:
    cut = fit(DeadLetter(b"u1", b"x" * 50, [("riskstream-source-topic", b"tx")]), 10)
    s = summarize(
        [
            _letter(1, 300, "tx", "<key>"),
            _letter(2, 100, "tx", "<key>"),
            STATE,
            Letter(0, 4, 200, cut.key, cut.value, (*cut.headers, ("riskstream-error-field", b"<message>"))),
        ]
    )
    d = s.as_dict()
    assert d["total"] == 4 and d["cut"] == 1 and (d["first_ms"], d["last_ms"]) == (100, 500)
    assert [(g["origin"], g["field"], g["count"]) for g in d["groups"]] == [
        ("tx", "<key>", 2),
        ("user-state", "snapshot", 1),
        ("tx", "<message>", 1),
    ]
    assert d["groups"][0]["example"] == "<key> is wrong"


def test_a_source_record_matches_a_cut_letter_only_by_its_digest() -> None:
    original = b"y" * 40
    cut = fit(DeadLetter(b"u1", original, []), 16)
    letter = Letter(0, 1, 0, cut.key, cut.value, tuple(cut.headers))
    assert (
        letter.cut
        and dict(letter.headers)["riskstream-value-sha256"] == hashlib.sha256(original).hexdigest().encode()
    )
    assert _matches(letter, "value", original) and _matches(letter, "key", b"u1")
    assert not _matches(letter, "value", b"y" * 39) and not _matches(letter, "value", None)
    assert not _matches(letter, "key", b"u2")  # not cut: must equal the dead letter's


def test_a_source_sent_back_before_or_twice_in_a_run_is_sent_once() -> None:
    """``_records`` skips dead letters whose source is recorded as sent back, and a second dead
    letter of one source in the same run (a worker's redelivery dead-lettered it twice); it
    returns the records for the record topic, keyed by source. No cut letter here: no broker."""
    a, b, c = (_letter(i, 100 * i, "tx", "amount") for i in (1, 2, 3))
    twin = Letter(0, 7, 400, a.key, a.value, a.headers)  # a's source, dead-lettered again
    done = {source_key(("tx", 2, 20))}  # b's, from an earlier run
    report = RedriveReport()
    settings = Settings()
    out, sources = asyncio.run(_records(settings, [a, b, c, twin, STATE], report, done))
    assert [rec[0] for rec in out] == ["tx", "tx"] and report.sent == {"tx": 2}
    assert (report.skipped_sent, report.skipped_states) == (2, 1)
    dlq = settings.topic_dead_letter
    assert sources == [(b"tx:2:10", f"{dlq}:0:1".encode()), (b"tx:2:30", f"{dlq}:0:3".encode())]
    assert done == {b"tx:2:10", b"tx:2:20", b"tx:2:30"}
    assert dict(out[0][3])[REDRIVEN_HEADER] == f"{dlq}:0:1".encode()
