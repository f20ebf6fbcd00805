"""No input message can stop the scoring step (a poison pill): whatever the three input topics
carry, ``BatchProcessor`` either scores a transaction or dead-letters the message, and the states
it leaves are written, restored and fed again without an error.

An exception in the step stops the worker (streams/batch_loop.py); the restarted worker, or the
partition's next owner, gets the same batch again from the committed offset and stops again.
Hypothesis builds messages whose fields the wire format allows at their edges (the extreme
times and amounts, ids of any Unicode including escapes of lone surrogates, labels of unknown
or future transactions), mixed with messages it must refuse: keyed by something else than the
user id (``require_user_keys``) or stamped over an hour ahead of the worker's clock
(``max_event_ahead_s``), or with no value at all (a tombstone).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling.errors import ValidationError
from modeling.features import FeatureConfig, FeatureEngine
from modeling.predictor import Predictor, PredictorOptions
from modeling.records import (
    CLICK_TYPES,
    MAX_AMOUNT,
    MAX_TIME_MS,
    MIN_TIME_MS,
    Label,
    parse_click,
    parse_label,
    parse_risk_event,
    parse_transaction,
)
from modeling.registry import ModelRegistry
from modeling.scoring import Scorer
from streams.pipeline import KIND_CLICK, KIND_LABEL, KIND_TXN, BatchProcessor, InMessage

CONFIG = FeatureConfig()
T0 = 1_530_000_000_000
DAY = 86_400_000
_PARSE = {KIND_TXN: parse_transaction, KIND_CLICK: parse_click, KIND_LABEL: parse_label}
_TOPIC = {KIND_TXN: "transactions", KIND_CLICK: "clickstream", KIND_LABEL: "labels"}


@pytest.fixture(scope="module")
def scorer(
    tmp_path_factory: pytest.TempPathFactory,
    publish_small_model: Callable[[Path, int], tuple[ModelRegistry, str]],
) -> Scorer:
    reg, version = publish_small_model(tmp_path_factory.mktemp("any-input"), 3)
    opts = PredictorOptions(device="cpu", use_onednn=False, model_max_batch=16, in_process=True)
    return Scorer(Predictor.load(reg, "behaviour", opts, version=version), CONFIG)


# Any code point, lone surrogates included: the JSON below escapes them (\udXXX), as a producer
# whose strings hold them would.
_ANY_TEXT = st.text(st.characters(exclude_categories=()), min_size=0, max_size=130)
_ID = st.one_of(st.sampled_from(["u1", "u2", "t1", "é", "\U0001f600", "\ud800", "a\udfff"]), _ANY_TEXT)
_TIME = st.one_of(
    st.sampled_from([MIN_TIME_MS, MAX_TIME_MS - 1, T0, T0 + 1, T0 - 40 * DAY, T0 + 30 * DAY + 3_600_000]),
    st.integers(MIN_TIME_MS - 5, MAX_TIME_MS + 5),
)
_AMOUNT = st.one_of(
    st.sampled_from([0.0, 5e-324, 1e-300, 0.01, 12.5, MAX_AMOUNT, 1e12 + 1, -0.0, -1.0]),
    st.floats(0.0, MAX_AMOUNT),
)


@st.composite
def _message(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from([KIND_TXN, KIND_TXN, KIND_CLICK, KIND_LABEL]))
    user = draw(st.one_of(st.sampled_from(["u1", "u2", "u3"]), _ID))
    if draw(st.integers(0, 19)) == 0:  # a record with no value (a tombstone), keyed by the user
        return kind, {"schema": None, "user_id": user}
    if kind == KIND_TXN:
        d: dict[str, Any] = {
            "schema": "transaction/1",
            "transaction_id": draw(_ID),
            "user_id": user,
            "terminal_id": draw(st.one_of(st.sampled_from(["t1", "t2"]), _ID)),
            "amount": draw(_AMOUNT),
            "event_time": draw(_TIME),
        }
        for key in ("device_id", "ip", "text"):
            if draw(st.booleans()):
                d[key] = draw(_ID)
    elif kind == KIND_CLICK:
        d = {
            "schema": "click/1",
            "user_id": user,
            "event_time": draw(_TIME),
            "type": draw(st.sampled_from([*sorted(CLICK_TYPES), "teleport"])),
            "session_id": draw(_ID),
            "device_id": draw(_ID),
            "ip": draw(_ID),
        }
    else:
        tx_time = draw(_TIME)
        d = {
            "schema": "label/1",
            "transaction_id": draw(st.one_of(st.sampled_from(["x1", "x2"]), _ID)),
            "user_id": user,
            "terminal_id": draw(st.one_of(st.sampled_from(["t1", "t2"]), _ID)),
            "is_fraud": draw(st.booleans()),
            "transaction_time": tx_time,
            "label_time": tx_time + draw(st.sampled_from([0, 1, DAY, 7 * DAY, -1])),
        }
    return kind, d


_KEYS = st.sampled_from(["user", "user", "user", "user", "none", "quoted"])  # how it is keyed


def _batch(messages: list[tuple[str, dict[str, Any], str]], offsets: dict[str, int]) -> list[InMessage]:
    out = []
    for kind, d, keyed in messages:
        # ensure_ascii: a lone surrogate becomes its \u escape; no schema: no value at all
        raw = json.dumps(d).encode() if d["schema"] is not None else None
        uid = d.get("user_id")
        key: bytes | None = None  # keyed == "none"
        if keyed == "quoted":
            key = json.dumps(uid).encode()
        elif keyed == "user" and isinstance(uid, str):
            key = uid.encode(errors="surrogatepass")
        out.append(InMessage(kind, _TOPIC[kind], 0, offsets[kind], key, raw, T0, 0.0))
        offsets[kind] += 1
    return out


NOW = T0 + 30 * DAY  # the worker's clock: events over an hour past it are dead-lettered


def _accepted(m: InMessage) -> bool:
    try:
        rec = _PARSE[m.kind](m.value)
    except ValidationError:
        return False
    t = rec.label_time_ms if isinstance(rec, Label) else rec.event_time_ms
    # keyed by anything else, or ahead of the clock (max_event_ahead_s): dead-lettered
    return m.key == rec.user_id.encode() and t <= NOW + 3_600_000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.tuples(_message(), _KEYS), min_size=1, max_size=12), min_size=1, max_size=3))
def test_every_message_is_scored_or_dead_lettered_and_states_round_trip(
    scorer: Scorer, drawn: list[list[tuple[tuple[str, dict[str, Any]], str]]]
) -> None:
    batches = [[(kind, d, keyed) for (kind, d), keyed in batch] for batch in drawn]
    store: dict[str, bytes] = {}
    terminals: dict[str, bytes] = {}
    offsets = {KIND_TXN: 0, KIND_CLICK: 0, KIND_LABEL: 0}
    inputs = [_batch(b, offsets) for b in batches]
    first: dict[str, bytes] = {}
    for restart in (False, True):
        seen: set[tuple[str, str]] = set()  # (user, transaction id) of accepted transactions
        # the second pass is a restarted worker: states read back from the store, every batch
        # delivered again (nothing new is scored, nothing raises)
        proc = BatchProcessor(
            FeatureEngine(CONFIG), lambda: scorer, store.get, terminals.get, now_ms=lambda: float(NOW)
        )
        for batch in inputs:
            res = proc.process(batch)
            want_dead = [m for m in batch if not _accepted(m)]
            assert len(res.dead_letters) == len(want_dead)
            txns = [_PARSE[m.kind](m.value) for m in batch if m.kind == KIND_TXN and _accepted(m)]
            again = 0  # transactions sent again: their id was accepted before for their user
            for t in txns:
                again += (t.user_id, t.transaction_id) in seen
                seen.add((t.user_id, t.transaction_id))
            # a duplicate (FeatureEngine.duplicate) is neither scored nor folded; a restarted
            # worker finds every message redelivered, none duplicated
            assert res.duplicates <= again and (res.duplicates == 0 or not restart)
            assert len(res.risk_events) == (0 if restart else len(txns) - res.duplicates)
            for key, value in res.risk_events:
                ev = parse_risk_event(value)
                assert key.decode() == ev.user_id
                assert 0.0 <= ev.score <= 1.0
            for key, value in res.terminal_labels:  # forwarded labels: keyed by terminal
                assert parse_label(value).terminal_id == key.decode()
            for uid, _, raw in proc.take_dirty():
                uid.encode()  # a changelog key: Faust writes it as UTF-8
                store[uid] = raw
        if not restart:
            first = dict(store)
    assert store == first  # the batches again change no state: nothing is applied twice
