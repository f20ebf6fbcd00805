"""The wire format: strict validation that names the field, and agreement with the JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modeling.errors import ValidationError
from modeling.records import (
    ClickEvent,
    Label,
    RiskEvent,
    ShadowVerdict,
    Transaction,
    parse_click,
    parse_label,
    parse_risk_event,
    parse_transaction,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "modeling" / "schemas"
T = 1_527_811_200_000
GOOD_TXN: dict[str, Any] = {
    "schema": "transaction/1",
    "transaction_id": "t1",
    "user_id": "42",
    "terminal_id": "7",
    "amount": 12.5,
    "currency": "EUR",
    "event_time": T,
}


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.json").read_text())  # type: ignore[no-any-return]


def test_round_trips() -> None:
    tx = Transaction("t1", "42", "7", 12.5, T, device_id="d", text="资金周转")
    assert parse_transaction(orjson.dumps(tx.to_dict())) == tx
    ck = ClickEvent("42", T, "login", "s", "d", "ip")
    assert parse_click(orjson.dumps(ck.to_dict())) == ck
    lb = Label("t1", "42", "7", True, T, T + 1)
    assert parse_label(orjson.dumps(lb.to_dict())) == lb
    ev = RiskEvent(
        "t1", "42", 0.5, "review", ("AMOUNT",), "behaviour-0001", "fs1-x", T, T + 5, {"inference": 1.0}
    )
    assert parse_risk_event(ev.to_json()) == ev
    for obj, name in ((tx, "transaction"), (ck, "click"), (lb, "label"), (ev, "risk_event")):
        jsonschema.validate(obj.to_dict(), schema(name))


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"amount": "12.5"}, "amount"),  # a string is not coerced
        ({"amount": float("nan")}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": True}, "amount"),
        ({"event_time": 1527811200.5}, "event_time"),  # seconds as float: refused
        ({"event_time": 12}, "event_time"),  # out of range
        ({"user_id": 42}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"currency": "eur"}, "currency"),
        ({"schema": "transaction/2"}, "schema"),
        ({"text": "x" * 5000}, "text"),
    ],
)
def test_invalid_transactions_name_the_field(patch: dict[str, Any], field: str) -> None:
    d = {**GOOD_TXN, **patch}
    raw = json.dumps(d, allow_nan=True).encode()
    with pytest.raises(ValidationError) as exc:
        parse_transaction(raw)
    assert exc.value.field == field
    # The JSON Schema given to producers refuses the same record (NaN is not JSON at all).
    if patch.get("amount") == patch.get("amount"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(d, schema("transaction"))


@pytest.mark.parametrize("missing", ["transaction_id", "user_id", "terminal_id", "amount", "event_time"])
def test_missing_fields(missing: str) -> None:
    d = {k: v for k, v in GOOD_TXN.items() if k != missing}
    with pytest.raises(ValidationError, match=missing):
        parse_transaction(orjson.dumps(d))


def test_a_record_without_a_value_is_refused() -> None:
    """A tombstone (a Kafka record with a null value) on an input topic: refused by name, not a
    TypeError that stopped the worker on every restart (session 34)."""
    for parse in (parse_transaction, parse_click, parse_label):
        with pytest.raises(ValidationError, match="null value") as exc:
            parse(None)
        assert exc.value.field == "<message>"


def test_bad_json_and_huge_payloads() -> None:
    with pytest.raises(ValidationError, match="not valid JSON"):
        parse_transaction(b"{not json")
    with pytest.raises(ValidationError, match="JSON object"):
        parse_transaction(b"[1, 2]")
    with pytest.raises(ValidationError, match="exceeds"):
        parse_transaction(b" " * 70_000)


_CLICK = ClickEvent("42", T, "login", "s", "d", "ip").to_dict()
_LABEL = Label("t1", "42", "7", True, T, T + 1).to_dict()
_STRING_FIELDS = (
    [
        (parse_transaction, GOOD_TXN, f)
        for f in ("transaction_id", "user_id", "terminal_id", "device_id", "ip", "text")
    ]
    + [(parse_click, _CLICK, f) for f in ("user_id", "session_id", "device_id", "ip")]
    + [(parse_label, _LABEL, f) for f in ("transaction_id", "user_id", "terminal_id")]
)


@pytest.mark.parametrize(("parse", "good", "field"), _STRING_FIELDS)
def test_a_lone_surrogate_is_refused_and_a_pair_accepted(
    parse: Any, good: dict[str, Any], field: str
) -> None:
    """A string with an unpaired UTF-16 surrogate cannot be encoded as UTF-8, so its risk event,
    changelog key or forwarded label could never be written: before session 34 msgspec's fast
    path accepted one, and the worker stopped on that message after every restart."""
    for lone in (b"\\ud800", b"a\\uDFFFb", b"\\ude00\\ud83d"):  # high alone, low alone, swapped
        raw = orjson.dumps({**good, field: "PLACEHOLDER"}).replace(b"PLACEHOLDER", lone)
        with pytest.raises(ValidationError, match="lone surrogate") as exc:
            parse(raw)
        assert exc.value.field == field
        with pytest.raises(ValidationError, match="lone surrogate"):
            parse(raw.decode())  # a str holding the escape
        with pytest.raises(ValidationError, match="lone surrogate"):
            parse(json.loads(raw))  # a dict holding the lone surrogate itself
    # the same bytes a CESU-8 encoder writes for U+D800: json's lenient fallback reads them
    cesu = orjson.dumps({**good, field: "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"\xed\xa0\x80")
    with pytest.raises(ValidationError):
        parse(cesu)
    pair = orjson.dumps({**good, field: "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"x\\ud83d\\ude00")
    assert getattr(parse(pair), field) == "x\U0001f600"
    escaped = orjson.dumps({**good, field: "\\ud800"})  # a backslash, then "ud800": plain text
    assert getattr(parse(escaped), field) == "\\ud800"


def test_click_and_label_validation() -> None:
    good = ClickEvent("42", T, "login", "s", "d", "ip").to_dict()
    with pytest.raises(ValidationError) as exc:
        parse_click(orjson.dumps({**good, "type": "teleport"}))
    assert exc.value.field == "type"
    lb = Label("t1", "42", "7", True, T, T + 1).to_dict()
    with pytest.raises(ValidationError) as exc2:
        parse_label(orjson.dumps({**lb, "is_fraud": 1}))
    assert exc2.value.field == "is_fraud"
    with pytest.raises(ValidationError) as exc3:
        parse_label(orjson.dumps({**lb, "label_time": T - 1}))
    assert exc3.value.field == "label_time"


def test_risk_event_with_a_shadow_verdict() -> None:
    shadow = ShadowVerdict("behaviour-0002", 0.93, "decline")
    ev = RiskEvent(
        "t1", "42", 0.5, "review", ("AMOUNT",), "behaviour-0001", "fs2-x", T, T + 5, {}, shadow=shadow
    )
    d = ev.to_dict()
    assert d["shadow"] == {"model_version": "behaviour-0002", "score": 0.93, "decision": "decline"}
    jsonschema.validate(d, schema("risk_event"))
    assert parse_risk_event(ev.to_json()) == ev
    plain = RiskEvent("t1", "42", 0.5, "review", (), "m", "f", T, T, {}).to_dict()
    assert "shadow" not in plain and "text_score" not in plain and plain["latency_ms"] == {}
    for bad, field in (
        ({"model_version": "b", "score": 1.5, "decision": "review"}, "shadow.score"),
        ({"model_version": "b", "score": 0.5, "decision": "block"}, "shadow.decision"),
        ({"score": 0.5, "decision": "review"}, "shadow.model_version"),
        ("decline", "shadow"),
    ):
        with pytest.raises(ValidationError) as ei:
            parse_risk_event({**d, "shadow": bad})
        assert ei.value.field == field
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**d, "shadow": bad}, schema("risk_event"))


# ------------------------------------------------------------------ fast decoding agrees with the checks
# Bytes are decoded by msgspec straight into the record, and only what it refuses goes through the
# checked parser; a dict always takes the checked parser. So parsing the same object as bytes and
# as a dict compares the two paths: same record, or the same field named.
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.sampled_from(["", "EUR", "eur", "AB1", "x" * 129, "é" * 128, "login", "teleport"]),
    st.sampled_from([T, T + 1, T - 1, 946_684_800_000, 4_102_444_800_000, 0.0, -0.0, 1e12, 1e13]),
    st.lists(st.integers(), max_size=2),
)
_KEYS = {
    "transaction": (parse_transaction, GOOD_TXN),
    "click": (parse_click, ClickEvent("42", T, "login", "s", "d", "ip").to_dict()),
    "label": (parse_label, Label("t1", "42", "7", True, T, T + 1).to_dict()),
}


def _outcome(parse: Any, raw: Any) -> Any:
    try:
        return parse(raw)
    except ValidationError as exc:
        return ("refused", exc.field)


@given(
    kind=st.sampled_from(sorted(_KEYS)),
    patch=st.dictionaries(
        st.sampled_from(
            [
                "schema",
                "transaction_id",
                "user_id",
                "terminal_id",
                "amount",
                "event_time",
                "currency",
                "device_id",
                "ip",
                "text",
                "type",
                "session_id",
                "is_fraud",
                "transaction_time",
                "label_time",
            ]
        ),
        _ANY,
        max_size=3,
    ),
    drop=st.lists(st.sampled_from(["user_id", "event_time", "amount", "type", "label_time"]), max_size=1),
)
def test_the_fast_decoder_and_the_checked_parser_agree(
    kind: str, patch: dict[str, Any], drop: list[str]
) -> None:
    parse, good = _KEYS[kind]
    d = {k: v for k, v in {**good, **patch}.items() if k not in drop}
    try:
        raw = orjson.dumps(d)
    except orjson.JSONEncodeError:  # integers past 64 bits: not sendable as JSON by this encoder
        return
    assert _outcome(parse, raw) == _outcome(parse, orjson.loads(raw))


def test_records_are_not_tracked_by_the_garbage_collector() -> None:
    import gc

    assert not gc.is_tracked(parse_transaction(orjson.dumps(GOOD_TXN)))
