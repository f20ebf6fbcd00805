"""Event records and their versioned JSON wire format.

Every record on a Kafka topic is one JSON object carrying a ``schema`` field
(``"<kind>/<version>"``). Times are integer milliseconds since the Unix epoch, UTC.
``parse_*`` validate strictly: a wrong type, a missing field, a non-finite amount or an
unknown schema raise :class:`~modeling.errors.ValidationError` naming the field; nothing is
coerced. JSON Schemas for producers live in ``modeling/schemas/``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Final

import msgspec
import orjson
from msgspec import Meta, Struct

from modeling.errors import ValidationError

TRANSACTION_SCHEMA: Final = "transaction/1"
CLICK_SCHEMA: Final = "click/1"
LABEL_SCHEMA: Final = "label/1"
RISK_EVENT_SCHEMA: Final = "risk_event/1"

MAX_ID_LEN: Final = 128
MAX_TEXT_LEN: Final = 4096
MIN_TIME_MS: Final = 946_684_800_000  # 2000-01-01
MAX_TIME_MS: Final = 4_102_444_800_000  # 2100-01-01
MAX_AMOUNT: Final = 1e12

CLICK_TYPES: Final = frozenset(
    {
        "login",
        "login_failed",
        "logout",
        "page_view",
        "add_payee",
        "change_password",
        "new_device",
        "change_contact",
    }
)
DECISIONS: Final = ("approve", "review", "decline")


# The three input records are msgspec Structs whose fields carry the wire format's limits, so
# that a well-formed message decodes straight into its record in C (``_fast``): 0.72 µs per
# message against 2.56 µs for orjson plus the checks below (bench_pipeline's messages).
# Anything the fast decoder refuses is parsed again by the checked path (``parse_*``), which
# decides and names the offending field; the fast path's constraints are at least as strict, so
# both paths accept the same messages with the same values (tests/modeling/test_records.py).
# Records are not GC-tracked (``gc=False``: they hold strings and numbers only).
_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
_OptId = Annotated[str, Meta(max_length=MAX_ID_LEN)] | None
_Ms = Annotated[int, Meta(ge=MIN_TIME_MS, lt=MAX_TIME_MS)]


class Transaction(Struct, frozen=True, gc=False, tag_field="schema", tag=TRANSACTION_SCHEMA):
    transaction_id: _Id
    user_id: _Id
    terminal_id: _Id
    amount: Annotated[float, Meta(ge=0.0, le=MAX_AMOUNT)]
    event_time_ms: _Ms = msgspec.field(name="event_time")
    currency: Annotated[str, Meta(pattern="^[A-Z]{3}$")] = "EUR"
    device_id: _OptId = None
    ip: _OptId = None
    text: Annotated[str, Meta(max_length=MAX_TEXT_LEN)] | None = None

    @property
    def t(self) -> float:
        return self.event_time_ms / 1000.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": TRANSACTION_SCHEMA,
            "transaction_id": self.transaction_id,
            "user_id": self.user_id,
            "terminal_id": self.terminal_id,
            "amount": self.amount,
            "currency": self.currency,
            "event_time": self.event_time_ms,
        }
        for k in ("device_id", "ip", "text"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


class ClickEvent(Struct, frozen=True, gc=False, tag_field="schema", tag=CLICK_SCHEMA):
    user_id: _Id
    event_time_ms: _Ms = msgspec.field(name="event_time")
    type: _Id  # one of CLICK_TYPES
    session_id: _Id
    device_id: _Id
    ip: _Id

    @property
    def t(self) -> float:
        return self.event_time_ms / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": CLICK_SCHEMA,
            "user_id": self.user_id,
            "event_time": self.event_time_ms,
            "type": self.type,
            "session_id": self.session_id,
            "device_id": self.device_id,
            "ip": self.ip,
        }


class Label(Struct, frozen=True, gc=False, tag_field="schema", tag=LABEL_SCHEMA):
    """The outcome of a settled transaction, known at ``label_time_ms`` (days after the fact)."""

    transaction_id: _Id
    user_id: _Id
    terminal_id: _Id
    is_fraud: bool
    transaction_time_ms: _Ms = msgspec.field(name="transaction_time")
    label_time_ms: _Ms = msgspec.field(name="label_time")

    @property
    def t(self) -> float:
        return self.label_time_ms / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": LABEL_SCHEMA,
            "transaction_id": self.transaction_id,
            "user_id": self.user_id,
            "terminal_id": self.terminal_id,
            "is_fraud": self.is_fraud,
            "transaction_time": self.transaction_time_ms,
            "label_time": self.label_time_ms,
        }


class ShadowVerdict(Struct, frozen=True, gc=False):
    """What the shadow model (a challenger, ``registry SHADOW``) would have decided."""

    model_version: str
    score: float
    decision: str


class RiskEvent(Struct, frozen=True, gc=False, tag_field="schema", tag=RISK_EVENT_SCHEMA, omit_defaults=True):
    """The scorer's output record; encoded by msgspec (``text_score``, ``behaviour_score`` and
    ``shadow`` are left out when absent)."""

    transaction_id: str
    user_id: str
    score: float
    decision: str
    reasons: tuple[str, ...]
    model_version: str
    feature_set: str
    event_time_ms: int = msgspec.field(name="event_time")
    scored_time_ms: int = msgspec.field(name="scored_time")
    latency_ms: dict[str, float]  # required: always on the wire, even empty
    text_score: float | None = None
    behaviour_score: float | None = None  # set with text_score: the behaviour model's own score
    shadow: ShadowVerdict | None = None  # the shadow (challenger) model's verdict, not acted on

    def to_dict(self) -> dict[str, Any]:
        """The wire object (JSON types: ``reasons`` a list)."""
        d: dict[str, Any] = msgspec.json.decode(_ENCODE(self))
        return d

    def to_json(self) -> bytes:
        return _ENCODE(self)


_ENCODE = msgspec.json.Encoder().encode


# ----------------------------------------------------------------------------------------- parsing


def _load(raw: bytes | str | dict[str, Any] | None, max_bytes: int) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if raw is None:  # a Kafka record may have no value
        raise ValidationError("<message>", "no value: a record with a null value (a tombstone) is no event")
    if len(raw) > max_bytes:
        raise ValidationError("<message>", f"payload of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # Strict JSON has no NaN/Infinity, but producers' encoders often emit them: parse those
        # leniently (slow path) so that validation names the offending field.
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ValidationError("<message>", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValidationError("<message>", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _schema(d: dict[str, Any], expected: str) -> None:
    s = d.get("schema")
    if s != expected:
        raise ValidationError("schema", f"expected {expected!r}, got {s!r}")


def _str(d: dict[str, Any], key: str, *, optional: bool = False, max_len: int = MAX_ID_LEN) -> Any:
    v = d.get(key)
    if v is None:
        if optional:
            return None
        raise ValidationError(key, "missing")
    if not isinstance(v, str):
        raise ValidationError(key, f"expected a string, got {type(v).__name__}")
    if not v and not optional:
        raise ValidationError(key, "empty")
    if len(v) > max_len:
        raise ValidationError(key, f"longer than {max_len} characters")
    if not v.isascii():
        try:
            v.encode()
        except UnicodeEncodeError:
            raise ValidationError(
                key, "not valid Unicode: a lone surrogate (an unpaired \\ud800-\\udfff escape)"
            ) from None
    return v


def _time(d: dict[str, Any], key: str) -> int:
    v = d.get(key)
    if v is None:
        raise ValidationError(key, "missing")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValidationError(key, f"expected integer milliseconds since the epoch, got {type(v).__name__}")
    if not MIN_TIME_MS <= v < MAX_TIME_MS:
        raise ValidationError(key, f"{v} is outside 2000-01-01..2100-01-01 in epoch milliseconds")
    return v


def _amount(d: dict[str, Any], key: str) -> float:
    v = d.get(key)
    if v is None:
        raise ValidationError(key, "missing")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValidationError(key, f"expected a number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f):
        raise ValidationError(key, "not a finite number")
    if f < 0 or f > MAX_AMOUNT:
        raise ValidationError(key, f"{f} is outside 0..{MAX_AMOUNT:g}")
    return f


def _currency(d: dict[str, Any]) -> str:
    v = d.get("currency", "EUR")
    if not isinstance(v, str) or len(v) != 3 or not v.isascii() or not v.isupper():
        raise ValidationError("currency", f"expected an ISO 4217 code such as 'EUR', got {v!r}")
    return v


DEFAULT_MAX_BYTES: Final = 64 * 1024


_DECODE_TXN = msgspec.json.Decoder(Transaction).decode
_DECODE_CLICK = msgspec.json.Decoder(ClickEvent).decode
_DECODE_LABEL = msgspec.json.Decoder(Label).decode


# A JSON escape of a UTF-16 surrogate. msgspec decodes one without its pair into a lone
# surrogate, a str that no UTF-8 encoder takes: the risk event, the changelog key and the
# forwarded label of such a record could not be written, and the worker would stop on the same
# message after every restart. Messages holding one go to the checked parser, which refuses a
# lone surrogate (a proper pair, such as an escaped emoji, passes).
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
_BACKSLASH: Final = ord("\\")


def _fast(decode: Any, raw: bytes | str | dict[str, Any] | None, max_bytes: int) -> Any:
    """The record msgspec decodes from ``raw``, or ``None``: refused, too large, a dict, no value
    or holding a surrogate escape (the checked parser then decides and names the field)."""
    if raw is None or isinstance(raw, dict) or len(raw) > max_bytes:
        return None
    if isinstance(raw, str):
        raw = raw.encode(errors="surrogatepass")
    if _BACKSLASH in raw and _SURROGATE_ESCAPE.search(raw) is not None:  # int `in`: a memchr
        return None
    try:
        return decode(raw)
    except msgspec.MsgspecError:
        return None


def parse_transaction(
    raw: bytes | str | dict[str, Any] | None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Transaction:
    txn: Transaction | None = _fast(_DECODE_TXN, raw, max_bytes)
    if txn is not None:
        return txn
    d = _load(raw, max_bytes)
    _schema(d, TRANSACTION_SCHEMA)
    return Transaction(
        transaction_id=_str(d, "transaction_id"),
        user_id=_str(d, "user_id"),
        terminal_id=_str(d, "terminal_id"),
        amount=_amount(d, "amount"),
        event_time_ms=_time(d, "event_time"),
        currency=_currency(d),
        device_id=_str(d, "device_id", optional=True),
        ip=_str(d, "ip", optional=True),
        text=_str(d, "text", optional=True, max_len=MAX_TEXT_LEN),
    )


def parse_click(raw: bytes | str | dict[str, Any] | None, max_bytes: int = DEFAULT_MAX_BYTES) -> ClickEvent:
    ev: ClickEvent | None = _fast(_DECODE_CLICK, raw, max_bytes)
    if ev is not None and ev.type in CLICK_TYPES:
        return ev
    d = _load(raw, max_bytes)
    _schema(d, CLICK_SCHEMA)
    kind = _str(d, "type")
    if kind not in CLICK_TYPES:
        raise ValidationError("type", f"unknown click type {kind!r}; expected one of {sorted(CLICK_TYPES)}")
    return ClickEvent(
        user_id=_str(d, "user_id"),
        event_time_ms=_time(d, "event_time"),
        type=kind,
        session_id=_str(d, "session_id"),
        device_id=_str(d, "device_id"),
        ip=_str(d, "ip"),
    )


def parse_label(raw: bytes | str | dict[str, Any] | None, max_bytes: int = DEFAULT_MAX_BYTES) -> Label:
    lb: Label | None = _fast(_DECODE_LABEL, raw, max_bytes)
    if lb is not None and lb.label_time_ms >= lb.transaction_time_ms:
        return lb
    d = _load(raw, max_bytes)
    _schema(d, LABEL_SCHEMA)
    is_fraud = d.get("is_fraud")
    if not isinstance(is_fraud, bool):
        raise ValidationError("is_fraud", f"expected true or false, got {is_fraud!r}")
    tx_time = _time(d, "transaction_time")
    label_time = _time(d, "label_time")
    if label_time < tx_time:
        raise ValidationError("label_time", "earlier than transaction_time")
    return Label(
        transaction_id=_str(d, "transaction_id"),
        user_id=_str(d, "user_id"),
        terminal_id=_str(d, "terminal_id"),
        is_fraud=is_fraud,
        transaction_time_ms=tx_time,
        label_time_ms=label_time,
    )


def parse_risk_event(raw: bytes | str | dict[str, Any]) -> RiskEvent:
    d = _load(raw, 1 << 20)
    _schema(d, RISK_EVENT_SCHEMA)
    score = d.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
        raise ValidationError("score", f"expected a probability in [0, 1], got {score!r}")
    decision = _str(d, "decision")
    if decision not in DECISIONS:
        raise ValidationError("decision", f"expected one of {DECISIONS}, got {decision!r}")
    reasons = d.get("reasons")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise ValidationError("reasons", "expected a list of strings")
    lat = d.get("latency_ms", {})
    if not isinstance(lat, dict):
        raise ValidationError("latency_ms", "expected an object")
    ts = d.get("text_score")
    bs = d.get("behaviour_score")
    shadow = _shadow(d.get("shadow"))
    return RiskEvent(
        transaction_id=_str(d, "transaction_id"),
        user_id=_str(d, "user_id"),
        score=float(score),
        decision=decision,
        reasons=tuple(reasons),
        model_version=_str(d, "model_version"),
        feature_set=_str(d, "feature_set"),
        event_time_ms=_time(d, "event_time"),
        scored_time_ms=_time(d, "scored_time"),
        latency_ms={str(k): float(v) for k, v in lat.items()},
        text_score=None if ts is None else float(ts),
        behaviour_score=None if bs is None else float(bs),
        shadow=shadow,
    )


def _shadow(obj: Any) -> ShadowVerdict | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ValidationError("shadow", "expected an object")
    score = obj.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
        raise ValidationError("shadow.score", f"expected a probability in [0, 1], got {score!r}")
    decision = obj.get("decision")
    if decision not in DECISIONS:
        raise ValidationError("shadow.decision", f"expected one of {DECISIONS}, got {decision!r}")
    version = obj.get("model_version")
    if not isinstance(version, str) or not version:
        raise ValidationError("shadow.model_version", "expected a non-empty string")
    return ShadowVerdict(version, float(score), str(decision))
