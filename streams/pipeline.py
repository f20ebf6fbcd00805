"""One micro-batch of input messages -> risk events, dead letters, state writes.

Transport-agnostic: the Faust agent hands in raw messages and performs the I/O this returns.
Per batch: decode and validate each message (a bad one becomes a dead letter and the rest go
on), run the feature engine on the user's state in arrival order, run the model once on all the
batch's transactions (sliced to the model's own max batch inside the predictor), and write each
touched user's state back once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from modeling.errors import ValidationError
from modeling.features import FeatureEngine, TerminalState, TxnFeatures, UserState
from modeling.records import RiskEvent, Transaction, parse_click, parse_label, parse_transaction
from modeling.scoring import Scorer

KIND_TXN, KIND_CLICK, KIND_LABEL = "transaction", "click", "label"


@dataclass(slots=True)
class InMessage:
    kind: str  # which input topic it came from: transaction, click or label
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    kafka_ts_ms: int  # the broker/producer timestamp, for end-to-end latency
    received: float  # time.monotonic() when the worker got it


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes  # the original bytes, untouched
    headers: list[tuple[str, bytes]]


@dataclass
class BatchResult:
    risk_events: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, json)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    terminal_labels: list[tuple[bytes, bytes]] = field(default_factory=list)  # (terminal key, json)
    user_states: dict[str, bytes] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    queue_wait_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    inference_s: float = 0.0
    n_transactions: int = 0
    n_late: int = 0
    dead_fields: list[tuple[str, str]] = field(default_factory=list)  # (topic, field)


class StateCache:
    """Decoded states keyed by id, valid while the table still holds the same bytes object."""

    def __init__(self, limit: int = 200_000) -> None:
        self._d: dict[str, tuple[bytes, object]] = {}
        self._limit = limit

    def get(self, key: str, raw: bytes | None) -> object | None:
        hit = self._d.get(key)
        if hit is not None and raw is not None and hit[0] is raw:
            return hit[1]
        return None

    def put(self, key: str, raw: bytes, obj: object) -> None:
        if len(self._d) >= self._limit:
            self._d.clear()
        self._d[key] = (raw, obj)

    def clear(self) -> None:
        self._d.clear()


class BatchProcessor:
    """The pure part of the worker: feature engine + scorer over one micro-batch."""

    def __init__(
        self,
        engine: FeatureEngine,
        scorer: Callable[[], Scorer],
        user_get: Callable[[str], bytes | None],
        terminal_get: Callable[[str], bytes | None],
        *,
        max_message_bytes: int = 64 * 1024,
        now_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        self.engine = engine
        self.scorer = scorer
        self.user_get = user_get
        self.terminal_get = terminal_get
        self.max_bytes = max_message_bytes
        self.now_ms = now_ms
        self.users = StateCache()
        self.terminals = StateCache(limit=1_000_000)

    def _user(self, uid: str, touched: dict[str, UserState]) -> UserState:
        st = touched.get(uid)
        if st is not None:
            return st
        raw = self.user_get(uid)
        cached = self.users.get(uid, raw)
        if isinstance(cached, UserState):
            st = cached
        elif raw is not None:
            st = UserState.from_bytes(raw, self.engine.config)
        else:
            st = self.engine.new_user()
        touched[uid] = st
        return st

    def _terminal(self, tid: str) -> TerminalState | None:
        raw = self.terminal_get(tid)
        if raw is None:
            return None
        cached = self.terminals.get(tid, raw)
        if isinstance(cached, TerminalState):
            return cached
        ts = TerminalState.from_bytes(raw)
        self.terminals.put(tid, raw, ts)
        return ts

    def process(self, batch: list[InMessage]) -> BatchResult:
        out = BatchResult()
        touched: dict[str, UserState] = {}
        txns: list[Transaction] = []
        feats: list[TxnFeatures] = []
        msgs: list[InMessage] = []
        engine = self.engine
        for m in batch:
            # Idempotence: a user's state records the last offset it folded in per source
            # partition, so a batch redelivered after a crash is scored again but not re-applied.
            source = f"{m.kind}:{m.partition}"
            try:
                if m.kind == KIND_TXN:
                    tx = parse_transaction(m.value, self.max_bytes)
                    st = self._user(tx.user_id, touched)
                    fresh = _fresh(st, source, m.offset)
                    f = engine.transaction(st, tx, self._terminal(tx.terminal_id), fold=fresh)
                    txns.append(tx)
                    feats.append(f)
                    msgs.append(m)
                    out.n_late += f.late
                elif m.kind == KIND_CLICK:
                    ck = parse_click(m.value, self.max_bytes)
                    st = self._user(ck.user_id, touched)
                    if _fresh(st, source, m.offset):
                        engine.click(st, ck)
                else:
                    lb = parse_label(m.value, self.max_bytes)
                    st = self._user(lb.user_id, touched)
                    if _fresh(st, source, m.offset):
                        engine.user_label(st, lb)
                    # Forwarded even when redelivered: terminal state replaces by transaction id.
                    out.terminal_labels.append((lb.terminal_id.encode(), m.value))
            except ValidationError as exc:
                out.dead_letters.append(_dead_letter(m, exc))
                out.dead_fields.append((m.topic, exc.field))
        if txns:
            scorer = self.scorer()  # one model version for the whole batch
            t0 = time.monotonic()
            verdicts = scorer.score(txns, feats)
            out.inference_s = time.monotonic() - t0
            now = self.now_ms()
            infer_ms = out.inference_s * 1000.0
            for tx, m, v in zip(txns, msgs, verdicts, strict=True):
                wait = t0 - m.received
                e2e = now - m.kafka_ts_ms
                ev = RiskEvent(
                    transaction_id=tx.transaction_id,
                    user_id=tx.user_id,
                    score=v.score,
                    decision=v.decision,
                    reasons=v.reasons,
                    model_version=scorer.version,
                    feature_set=scorer.feature_set,
                    event_time_ms=tx.event_time_ms,
                    scored_time_ms=int(now),
                    latency_ms={
                        "queue": round(wait * 1000.0, 3),
                        "inference": round(infer_ms, 3),
                        "end_to_end": round(e2e, 3),
                    },
                    text_score=v.text_score,
                )
                out.risk_events.append((tx.user_id.encode(), ev.to_json()))
                out.scores.append(v.score)
                out.decisions.append(v.decision)
                out.queue_wait_s.append(wait)
                out.e2e_s.append(e2e / 1000.0)
            out.n_transactions = len(txns)
        for uid, st in touched.items():
            raw = st.to_bytes()
            out.user_states[uid] = raw
            self.users.put(uid, raw, st)
        return out


def _fresh(st: UserState, source: str, offset: int) -> bool:
    """True (and recorded) if ``offset`` of ``source`` is not yet folded into ``st``."""
    if st.applied.get(source, -1) >= offset:
        return False
    st.applied[source] = offset
    return True


def _dead_letter(m: InMessage, exc: ValidationError) -> DeadLetter:
    return DeadLetter(
        key=m.key,
        value=m.value,
        headers=[
            ("riskstream-source-topic", m.topic.encode()),
            ("riskstream-source-partition", str(m.partition).encode()),
            ("riskstream-source-offset", str(m.offset).encode()),
            ("riskstream-error-field", exc.field.encode()),
            ("riskstream-error", str(exc).encode()[:1000]),
        ],
    )
