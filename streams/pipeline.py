"""One micro-batch of input messages -> risk events, dead letters, state writes.

Transport-agnostic: the Faust agent hands in raw messages and performs the I/O this returns.
Per batch: decode and validate each message (a bad one becomes a dead letter and the rest go
on), order the batch by event time (labels by label time; ties: clicks, transactions, labels,
as the offline path orders them), run the feature engine on each user's state, run the model
once on all the batch's transactions (sliced to the model's own max batch inside the predictor).

A touched user's state stays *dirty* (live, in memory) until a state flush serializes it
(:meth:`BatchProcessor.begin_flush`, ``streams/state_flush.py``): once per flush interval, not
once per batch, so a user active in many batches is snapshotted once per flush.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from modeling.errors import ValidationError
from modeling.features import FeatureEngine, TerminalState, TxnFeatures, UserState, Watermark
from modeling.features.state import terminal_decoded_bytes, user_decoded_bytes
from modeling.records import (
    ClickEvent,
    Label,
    ShadowVerdict,
    Transaction,
    parse_click,
    parse_label,
    parse_transaction,
)
from modeling.scoring import Scorer
from streams.terminal_overlay import Group, TerminalOverlay
from streams.unreadable import DeadLetter, input_dead_letter, terminal_or_new, user_or_new

# Final: compiled by mypyc (modeling/native.py), a constant is a C static, not a module-dict lookup
KIND_TXN: Final = "transaction"
KIND_CLICK: Final = "click"
KIND_LABEL: Final = "label"
Record = Transaction | ClickEvent | Label
_PARSERS: Final[dict[str, Callable[[bytes | None, int], Record]]] = {
    KIND_TXN: parse_transaction,
    KIND_CLICK: parse_click,
    KIND_LABEL: parse_label,
}
_RANK: Final = {KIND_CLICK: 0, KIND_TXN: 1, KIND_LABEL: 2}
_ORDER: Final = operator.itemgetter(0, 1, 2)  # (time, rank, arrival index): unique, a total order


@dataclass(slots=True)
class InMessage:
    kind: str  # which input topic it came from: transaction, click or label
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # a Kafka record may have none (a tombstone): dead-lettered
    kafka_ts_ms: int  # the broker/producer timestamp, for end-to-end latency
    received: float  # time.monotonic() when the worker got it


@dataclass
class BatchResult:
    risk_events: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, json)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    terminal_labels: list[tuple[bytes, bytes]] = field(default_factory=list)  # (terminal key, json)
    forwarded: Group | None = None  # the terminal overlay's group of those labels
    n_overlay: int = 0  # transactions whose terminal state had forwarded labels on top
    scores: list[float] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    queue_wait_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    inference_s: float = 0.0
    shadow_inference_s: float | None = None  # set when a shadow model scored the batch
    shadow_scores: list[float] = field(default_factory=list)
    shadow_decisions: list[tuple[str, str]] = field(default_factory=list)  # (served, shadow)
    n_transactions: int = 0
    n_late: int = 0
    # input events the user's state already held, by kind: received again after a crash or a
    # rebalance (a transaction among them is not scored again)
    redelivered: dict[str, int] = field(default_factory=dict)
    # transactions at a new offset whose id the user's state holds among its latest: sent
    # again upstream (a producer's retry), neither folded nor scored again (FeatureEngine.duplicate)
    duplicates: int = 0
    cpu_s: float = 0.0  # process_async: the loop thread's CPU outside its awaits
    dead_fields: list[tuple[str, str]] = field(default_factory=list)  # (topic, field)
    unreadable_states: list[str] = field(default_factory=list)  # kinds, one per dead-lettered state


@dataclass(slots=True)
class Prepared:
    """A featurized batch waiting for its model calls: what :meth:`BatchProcessor.finish` needs."""

    out: BatchResult  # dead letters, forwarded labels and counts so far
    txns: list[Transaction]
    feats: list[TxnFeatures]
    msgs: list[InMessage]  # the transactions' input messages


class StateCache:
    """Decoded states keyed by id, valid while the table still holds the same bytes: the same
    object (the memory store), or equal ones (the disk store reads a new object every time).

    Bounded by memory, not by count: each entry weighs ``weigh(len(raw))``, the estimated size of
    the decoded state (``modeling/features/state.py``: a typical user ~13 KB, a terminal at its
    label bound ~4 MB), and the least recently used entries go once the total passes
    ``max_bytes``. An entry heavier than the whole budget is not kept. An evicted state is
    decoded again from the table's bytes when next needed: correct, only slower.
    """

    def __init__(self, max_bytes: int, weigh: Callable[[int], int]) -> None:
        self._d: dict[str, tuple[bytes, object, int]] = {}  # least recently used first
        self.max_bytes = max_bytes
        self._weigh = weigh
        self.bytes = 0  # estimated decoded bytes held
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: str, raw: bytes | None) -> object | None:
        hit = self._d.get(key)
        if hit is None or raw is None or (hit[0] is not raw and hit[0] != raw):
            return None
        del self._d[key]  # most recently used: to the end
        self._d[key] = hit
        return hit[1]

    def put(self, key: str, raw: bytes, obj: object) -> None:
        self.drop(key)
        w = self._weigh(len(raw))
        if w > self.max_bytes:
            return
        d = self._d
        d[key] = (raw, obj, w)
        self.bytes += w
        while self.bytes > self.max_bytes:
            oldest = next(iter(d))
            self.bytes -= d.pop(oldest)[2]
            self.evictions += 1

    def drop(self, key: str) -> None:
        hit = self._d.pop(key, None)
        if hit is not None:
            self.bytes -= hit[2]

    def clear(self) -> None:
        self._d.clear()
        self.bytes = 0


class BatchProcessor:
    """The pure part of the worker: feature engine + scorer over one micro-batch."""

    def __init__(
        self,
        engine: FeatureEngine,
        scorer: Callable[[], Scorer],
        user_get: Callable[[str], bytes | None],
        terminal_get: Callable[[str], bytes | None],
        *,
        shadow: Callable[[], Scorer | None] = lambda: None,
        max_message_bytes: int = 64 * 1024,
        now_ms: Callable[[], float] = lambda: time.time() * 1000.0,
        terminal_overlay: TerminalOverlay | None = None,
        user_cache_bytes: int = 1 << 30,
        terminal_cache_bytes: int = 1 << 30,
        require_user_keys: bool = True,
        max_event_ahead_ms: float = 3_600_000.0,
    ) -> None:
        self.engine = engine
        self.require_user_keys = require_user_keys  # Settings.require_user_keys
        self.max_ahead_ms = max_event_ahead_ms if max_event_ahead_ms > 0 else math.inf
        # Labels this worker forwarded, on top of the terminal table until it holds them
        # (streams/terminal_overlay.py); None: the table alone
        self.overlay = terminal_overlay
        self.scorer = scorer
        self.shadow = shadow
        self.user_get = user_get
        self.terminal_get = terminal_get
        self.max_bytes = max_message_bytes
        self.now_ms = now_ms
        # Decoded states, bounded by their estimated memory (StateCache)
        self.users = StateCache(user_cache_bytes, user_decoded_bytes)
        self.terminals = StateCache(terminal_cache_bytes, terminal_decoded_bytes)
        # States changed since the last flush began, and the input partition each came from
        # (its changelog partition). A dirty state is newer than the table's bytes.
        self.dirty: dict[str, UserState] = {}
        self.dirty_partition: dict[str, int] = {}
        self.flushing: dict[str, UserState] = {}  # taken by a flush still writing them
        self._sources: dict[tuple[str, int], str] = {}  # (kind, partition) -> "kind:partition"
        # Event time per input partition: when stored states are dormant (streams/retention.py)
        self.watermark = Watermark()
        # Stored states that could not be read, for the batch's dead letters (streams/unreadable.py)
        self._unreadable_letters: list[DeadLetter] = []

    def _user(self, uid: str, touched: dict[str, UserState]) -> UserState:
        st = touched.get(uid)
        if st is not None:
            return st
        st = self.dirty.get(uid) or self.flushing.get(uid)
        if st is not None:
            touched[uid] = st
            return st
        raw = self.user_get(uid)
        cached = self.users.get(uid, raw)
        if isinstance(cached, UserState):
            st = cached
        elif raw is not None:
            st, dead = user_or_new(uid, raw, self.engine)
            if dead is not None:
                self._unreadable_letters.append(dead)
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
        ts, dead = terminal_or_new(tid, raw)
        if dead is not None:
            # dead-lettered once per stored value (cached below); the terminal loop writes a
            # new state with the terminal's next label
            self._unreadable_letters.append(dead)
        self.terminals.put(tid, raw, ts)
        return ts

    def process(self, batch: list[InMessage]) -> BatchResult:
        """One batch, start to finish: :meth:`prepare`, the models, :meth:`finish`."""
        prep = self.prepare(batch)
        if not prep.txns:
            return prep.out
        scorer, shadow = self.scorer(), self.shadow()  # one version of each for the batch
        tab, seq = scorer.inputs(prep.feats)  # the shadow shares the feature set: same inputs
        t0 = time.monotonic()
        p = scorer.behaviour.predict({"tab": tab, "seq": seq})
        t1 = time.monotonic()
        sp = None
        if shadow is not None:  # a text-only challenger shares the served behaviour model
            sp = (
                p
                if shadow.behaviour is scorer.behaviour
                else shadow.behaviour.predict({"tab": tab, "seq": seq})
            )
        return self.finish(prep, scorer, shadow, tab, p, sp, (t0, t1, time.monotonic()))

    async def process_async(self, prep: Prepared) -> BatchResult:
        """:meth:`process` after :meth:`prepare`, the model calls awaited
        (``Predictor.predict_async``): with models in child processes the event loop runs other
        work, the next batch's :meth:`prepare` included, while they compute. ``cpu_s`` of the
        result: this thread's CPU outside the awaits."""
        if not prep.txns:
            return prep.out
        c0 = time.thread_time()
        scorer, shadow = self.scorer(), self.shadow()
        tab, seq = scorer.inputs(prep.feats)
        cpu = time.thread_time() - c0
        t0 = time.monotonic()
        p = await scorer.behaviour.predict_async({"tab": tab, "seq": seq})
        t1 = time.monotonic()
        sp = None
        if shadow is not None:
            same = shadow.behaviour is scorer.behaviour
            sp = p if same else await shadow.behaviour.predict_async({"tab": tab, "seq": seq})
        c0 = time.thread_time()
        res = self.finish(prep, scorer, shadow, tab, p, sp, (t0, t1, time.monotonic()))
        res.cpu_s = cpu + time.thread_time() - c0
        return res

    def prepare(self, batch: list[InMessage]) -> Prepared:
        """Decode, order and featurize a batch: every state change happens here (the touched
        states are dirty when it returns); the models and the risk events come after."""
        out = BatchResult()
        touched: dict[str, UserState] = {}
        txns: list[Transaction] = []
        feats: list[TxnFeatures] = []
        msgs: list[InMessage] = []
        engine = self.engine
        # 1. Decode in arrival order; a bad message becomes a dead letter, the rest go on.
        #    Idempotence: a user's state records the last offset it folded in per source
        #    partition; a message at or below it (a batch redelivered after a crash) is not
        #    applied again, and a transaction among them is not scored again: its state reached
        #    the changelog only after its risk event was delivered (streams/app.py, the flush's
        #    output gate), and scoring it against a state that already holds it (and whatever
        #    followed it) would give another score. Freshness is judged against the state as the
        #    batch found it.
        items: list[tuple[int, int, int, Record, InMessage, bool, str]] = []
        sources = self._sources
        stream_time = self.watermark.latest
        now = self.now_ms()
        horizon = now + self.max_ahead_ms  # Settings.max_event_ahead_s
        for i, m in enumerate(batch):
            try:
                rec = _PARSERS[m.kind](m.value, self.max_bytes)
                if self.require_user_keys and m.key != rec.user_id.encode():
                    raise _misrouted(m.key, rec.user_id)
                t = rec.label_time_ms if isinstance(rec, Label) else rec.event_time_ms
                if t > horizon:
                    raise _ahead(isinstance(rec, Label), t, now)
            except ValidationError as exc:
                out.dead_letters.append(input_dead_letter(m, exc))
                out.dead_fields.append((m.topic, exc.field))
                continue
            st = self._user(rec.user_id, touched)
            self.dirty_partition[rec.user_id] = m.partition
            source = sources.get((m.kind, m.partition))
            if source is None:
                source = sources[(m.kind, m.partition)] = f"{m.kind}:{m.partition}"
            fresh = st.applied.get(source, -1) < m.offset
            if t > stream_time.get(source, -1):
                stream_time[source] = t
            items.append((t, _RANK[m.kind], i, rec, m, fresh, source))
        # 2. Event-time order inside the batch (ties: clicks, transactions, labels — the offline
        #    order): a small reorder buffer that absorbs skew between the three input topics.
        items.sort(key=_ORDER)
        overlay = self.overlay
        if overlay is not None:
            overlay.prune()
        redelivered = out.redelivered
        for _, _, _, rec, m, fresh, source in items:
            st = touched[rec.user_id]
            if not fresh:
                redelivered[m.kind] = redelivered.get(m.kind, 0) + 1
                if isinstance(rec, Transaction):
                    continue
            elif st.applied.get(source, -1) < m.offset:
                st.applied[source] = m.offset
            if isinstance(rec, Transaction):
                if engine.duplicate(st, rec):
                    out.duplicates += 1
                    continue
                ts = self._terminal(rec.terminal_id)
                if overlay is not None:
                    seen = ts
                    ts = overlay.merged(rec.terminal_id, ts)
                    out.n_overlay += ts is not seen
                f = engine.transaction(st, rec, ts, fold=fresh)
                txns.append(rec)
                feats.append(f)
                msgs.append(m)
                out.n_late += f.late
            elif isinstance(rec, ClickEvent):
                if fresh:
                    engine.click(st, rec)
            else:
                if fresh:
                    engine.user_label(st, rec)
                # Forwarded even when redelivered: terminal state replaces by transaction id.
                out.terminal_labels.append((rec.terminal_id.encode(), m.value or b""))  # parsed: not None
                if overlay is not None:
                    overlay.add(rec)
        if overlay is not None:
            out.forwarded = overlay.seal()
        if self._unreadable_letters:
            for dl in self._unreadable_letters:
                kind = dict(dl.headers)["riskstream-state-kind"].decode()
                out.dead_fields.append((kind, "snapshot"))
                out.unreadable_states.append(kind)
            out.dead_letters += self._unreadable_letters
            self._unreadable_letters = []
        self.dirty.update(touched)
        return Prepared(out, txns, feats, msgs)

    def finish(
        self,
        prep: Prepared,
        scorer: Scorer,
        shadow: Scorer | None,
        tab: np.ndarray,
        p: np.ndarray,
        sp: np.ndarray | None,
        times: tuple[float, float, float],
    ) -> BatchResult:
        """Verdicts and risk events for a prepared batch: ``p`` / ``sp`` are the served and the
        shadow model's scores of ``tab``; ``times`` (monotonic s): the served model's call began,
        ended, and the shadow's ended (it runs right after, so its latency is not the served one's)."""
        out, txns, feats, msgs = prep.out, prep.txns, prep.feats, prep.msgs
        t0, t1, t2 = times
        out.inference_s = t1 - t0
        verdicts = scorer.verdicts(txns, feats, tab, p)
        shadows: list[ShadowVerdict | None] = [None] * len(txns)
        if shadow is not None and sp is not None:
            # sharing the served text model, the shadow takes its scores: it does not run twice;
            # a text challenger scores the texts itself
            shared = [v.text_score for v in verdicts] if shadow.text is scorer.text else None
            sv = shadow.verdicts(txns, feats, tab, sp, shared)
            out.shadow_inference_s = t2 - t1
            shadows = [ShadowVerdict(shadow.version, x.score, x.decision) for x in sv]
            out.shadow_scores = [x.score for x in sv]
            out.shadow_decisions = [(v.decision, x.decision) for v, x in zip(verdicts, sv, strict=True)]
        now = self.now_ms()
        infer_ms = out.inference_s * 1000.0
        for tx, m, v, sh in zip(txns, msgs, verdicts, shadows, strict=True):
            wait = t0 - m.received
            e2e = now - m.kafka_ts_ms
            latency = {
                "queue": round(wait * 1000.0, 3),
                "inference": round(infer_ms, 3),
                "end_to_end": round(e2e, 3),
            }
            ev = scorer.risk_event(tx, v, int(now), latency, sh)
            out.risk_events.append((tx.user_id.encode(), ev.to_json()))
            out.scores.append(v.score)
            out.decisions.append(v.decision)
            out.queue_wait_s.append(wait)
            out.e2e_s.append(e2e / 1000.0)
        out.n_transactions = len(txns)
        return out

    def begin_flush(self) -> list[tuple[str, int, UserState]]:
        """Take the dirty states for a flush: ``(user id, changelog partition, state)``. They
        stay readable (and changeable by later batches) until :meth:`end_flush`; a snapshot
        taken after a later batch changed a state holds that batch's events too, which is
        harmless: its ``applied`` offsets say so, and a redelivered event is not applied twice."""
        part = self.dirty_partition
        out = [(uid, part[uid], st) for uid, st in self.dirty.items()]
        self.flushing = self.dirty
        self.dirty = {}
        self.dirty_partition = {}
        return out

    def snapshot(self, uid: str, st: UserState) -> bytes:
        """Serialize one state for the table; the caller stores exactly these bytes."""
        raw = st.to_bytes()
        self.users.put(uid, raw, st)
        return raw

    def end_flush(self) -> None:
        self.flushing = {}

    def take_dirty(self) -> list[tuple[str, int, bytes]]:
        """A whole flush at once: every dirty state serialized, ``(user id, partition, bytes)``."""
        out = [(uid, p, self.snapshot(uid, st)) for uid, p, st in self.begin_flush()]
        self.end_flush()
        return out

    def drop(self, uid: str) -> None:
        """Forget a deleted state's decoded copy (the table no longer holds it)."""
        self.users.drop(uid)

    def forget(self) -> None:
        """Drop decoded and dirty states (another worker may own these users next) and the
        input partitions' event times."""
        self.users.clear()
        self.dirty = {}
        self.dirty_partition = {}
        self.flushing = {}
        self.watermark.forget()


def _misrouted(key: bytes | None, user_id: str) -> ValidationError:
    shown = "none" if key is None else repr(key[:80])
    return ValidationError(
        "<key>",
        f"the Kafka key ({shown}) is not the user id {user_id!r}: one user's events must all be keyed by "
        "its id to meet in one partition (setting require_user_keys)",
    )


def _ahead(label: bool, t: int, now_ms: float) -> ValidationError:
    hours = (t - now_ms) / 3_600_000.0
    return ValidationError(
        "label_time" if label else "event_time",
        f"{t} is {hours:.2f} h ahead of this worker's clock (setting max_event_ahead_s): folded in, "
        "it would leave the user's later events behind the state's time, unfolded as late",
    )
