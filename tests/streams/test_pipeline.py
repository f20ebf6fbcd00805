"""BatchProcessor: the worker's overlapped path (prepare now, await the model in its child
process, finish) gives the same risk events and states as one synchronous ``process`` call;
labels forwarded earlier in a batch count; redelivered input is not applied twice; the
decoded-state caches stay within their memory bound without changing a feature; a text model in
shadow scores the texts beside the served models; an unreadable stored state is dead-lettered
and its key starts over, unless another format version wrote it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest

from modeling.errors import StateVersionError
from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, UserState
from modeling.predictor import Predictor, PredictorOptions
from modeling.records import ClickEvent, Label, Transaction, parse_click, parse_label, parse_transaction
from modeling.registry import ModelRegistry
from modeling.scoring import Scorer
from streams.pipeline import (
    KIND_CLICK,
    KIND_LABEL,
    KIND_TXN,
    BatchProcessor,
    BatchResult,
    InMessage,
    Prepared,
    StateCache,
)

CONFIG = FeatureConfig()
T0 = 1_530_000_000_000


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory,
    publish_small_model: Callable[[Path, int], tuple[ModelRegistry, str]],
) -> tuple[ModelRegistry, list[str]]:
    """Two small behaviour models (served and shadow) over the engine's feature layout."""
    root = tmp_path_factory.mktemp("pipeline")
    versions = [publish_small_model(root, seed)[1] for seed in (1, 2)]
    return ModelRegistry(root / "registry"), versions


def _messages(n: int, seed: int) -> list[InMessage]:
    """Transactions, clicks and labels of a few users, in partition order per topic."""
    rng = np.random.default_rng(seed)
    out: list[InMessage] = []
    offsets = {KIND_TXN: 0, KIND_CLICK: 0, KIND_LABEL: 0}
    for i in range(n):
        user = f"u{rng.integers(8)}"
        t = T0 + i * 40_000
        kind = (KIND_TXN, KIND_CLICK, KIND_LABEL)[int(rng.integers(3))]
        if kind == KIND_TXN:
            value = Transaction(
                f"t{i}", user, f"term{rng.integers(5)}", float(rng.gamma(2.0, 30.0)), t
            ).to_dict()
        elif kind == KIND_CLICK:
            value = ClickEvent(user, t, "login", "s1", f"d{rng.integers(3)}", "10.0.0.1").to_dict()
        else:
            value = Label(
                f"t{max(i - 30, 0)}", user, "term1", bool(rng.integers(2)), t - 600_000, t
            ).to_dict()
        topic = {KIND_TXN: "transactions", KIND_CLICK: "clickstream", KIND_LABEL: "labels"}[kind]
        out.append(InMessage(kind, topic, 0, offsets[kind], user.encode(), orjson.dumps(value), t, 0.0))
        offsets[kind] += 1
    return out


def _comparable(raw: bytes) -> dict[str, object]:
    ev = orjson.loads(raw)
    del ev["scored_time"], ev["latency_ms"]
    return dict(ev)


def test_overlapped_path_equals_the_synchronous_one(registry: tuple[ModelRegistry, list[str]]) -> None:
    reg, (served, challenger) = registry

    def scorer(version: str, in_process: bool) -> Scorer:
        opts = PredictorOptions(device="cpu", use_onednn=False, model_max_batch=32, in_process=in_process)
        return Scorer(Predictor.load(reg, "behaviour", opts, version=version), CONFIG)

    sync_scorers = scorer(served, True), scorer(challenger, True)
    child_scorers = scorer(served, False), scorer(challenger, False)
    batches = [_messages(150, seed) for seed in range(4)]
    for b, batch in enumerate(batches):  # later batches continue the offsets
        for m in batch:
            m.offset += 1000 * b
    stores: list[dict[str, bytes]] = [{}, {}]

    def processor(store: dict[str, bytes], scorers: tuple[Scorer, Scorer]) -> BatchProcessor:
        return BatchProcessor(
            FeatureEngine(CONFIG), lambda: scorers[0], store.get, lambda t: None, shadow=lambda: scorers[1]
        )

    sync = processor(stores[0], sync_scorers)
    want = [sync.process(batch) for batch in batches]

    async def overlapped() -> list[BatchResult]:
        proc = processor(stores[1], child_scorers)
        results = []
        pending = None
        for batch in batches:  # as the worker does: prepare the next batch while one is scored
            prep = proc.prepare(batch)
            if pending is not None:
                results.append(await pending)
            pending = asyncio.ensure_future(proc.process_async(prep))
        results.append(await pending)
        proc_states = {uid: proc.snapshot(uid, st) for uid, _, st in proc.begin_flush()}
        sync_states = {uid: sync.snapshot(uid, st) for uid, _, st in sync.begin_flush()}
        assert proc_states == sync_states
        return results

    try:
        got = asyncio.run(overlapped())
    finally:
        for s in child_scorers:
            assert isinstance(s.behaviour, Predictor)
            s.behaviour.close()
    n_tx = 0
    for w, g in zip(want, got, strict=True):
        assert g.n_transactions == w.n_transactions
        n_tx += w.n_transactions
        assert [k for k, _ in g.risk_events] == [k for k, _ in w.risk_events]
        assert [_comparable(v) for _, v in g.risk_events] == [_comparable(v) for _, v in w.risk_events]
        assert g.terminal_labels == w.terminal_labels
        assert g.cpu_s > 0.0
    assert n_tx > 100
    events = [orjson.loads(v) for w in want for _, v in w.risk_events]
    assert {e["shadow"]["model_version"] for e in events} == {challenger}
    assert {e["model_version"] for e in events} == {served}


def test_labels_forwarded_earlier_in_the_batch_count_for_its_transactions() -> None:
    """With the terminal overlay (streams/terminal_overlay.py) a transaction's terminal features
    hold the labels forwarded before it, this batch's included, as the backtest's runner does."""
    from streams.terminal_overlay import TerminalOverlay

    events: list[Label | Transaction] = []
    for n in range(20):
        tx_time = T0 - 8 * 86_400_000 - n * 3_600_000
        events.append(Label(f"old{n}", f"lu{n}", "term1", n % 3 == 0, tx_time, T0 - 3 * 3_600_000 + n))
    events += [Transaction(f"t{n}", f"cu{n}", "term1", 25.0 + n, T0 + n * 1000) for n in range(5)]
    msgs = [
        InMessage(
            KIND_LABEL if isinstance(e, Label) else KIND_TXN,
            "labels" if isinstance(e, Label) else "transactions",
            0,
            i,
            e.user_id.encode(),
            orjson.dumps(e.to_dict()),
            0,
            0.0,
        )
        for i, e in enumerate(events)
    ]
    want = [f.tab for _, f in FeatureRunner(FeatureEngine(CONFIG)).run(events)]

    def prepared(overlay: bool) -> list[tuple[float, ...]]:
        engine = FeatureEngine(CONFIG)
        ov = TerminalOverlay(engine, lambda: None) if overlay else None
        proc = BatchProcessor(engine, lambda: None, {}.get, lambda t: None, terminal_overlay=ov)  # type: ignore[arg-type,return-value]
        prep = proc.prepare(msgs)
        assert (prep.out.forwarded is not None) == overlay and prep.out.n_overlay == (5 if overlay else 0)
        return [f.tab for f in prep.feats]

    assert prepared(overlay=True) == want
    assert prepared(overlay=False) != want  # the table alone has none of them yet


def test_a_redelivered_batch_is_neither_applied_nor_scored_again() -> None:
    """After a crash the next owner receives uncommitted input again. What the user's state
    already holds is counted as redelivered; its transactions get no second risk event (their
    first was delivered before the state was written: streams/output_gate.py), and what the
    state does not hold yet is scored and applied as usual."""
    msgs = _messages(60, seed=3)
    engine = FeatureEngine(CONFIG)
    proc = BatchProcessor(engine, lambda: None, {}.get, lambda t: None)  # type: ignore[arg-type,return-value]
    first = proc.prepare(msgs[:40])
    states = {uid: st.to_bytes() for uid, st in proc.dirty.items()}
    # the next owner: the states as written, and the first 40 messages again with 20 new ones
    again = proc.prepare(msgs)
    kinds = {m.kind for m in msgs[:40]}
    assert sum(again.out.redelivered.values()) == 40 and set(again.out.redelivered) == kinds
    new_txns = [m for m in msgs[40:] if m.kind == KIND_TXN]
    assert [t.transaction_id for t in again.txns] == [
        orjson.loads(m.value)["transaction_id"] for m in new_txns
    ]
    assert len(first.txns) == sum(m.kind == KIND_TXN for m in msgs[:40])
    # nothing applied twice: the states changed only by the 20 new messages
    touched_again = {orjson.loads(m.value)["user_id"] for m in msgs[40:]}
    for uid, raw in states.items():
        if uid not in touched_again:
            assert proc.dirty[uid].to_bytes() == raw


def test_a_transaction_sent_again_at_a_new_offset_is_a_duplicate_live_and_offline() -> None:
    """An upstream producer's retry: the same transaction at a new offset. The batch step counts
    it and neither scores nor folds it (its first risk event stands), as FeatureRunner skips it
    offline: the vectors of the rest are the same both ways. Its offset is recorded, so the
    retry redelivered after a crash is a redelivery, not a second duplicate."""
    msgs = _messages(60, seed=5)
    txns = [m for m in msgs if m.kind == KIND_TXN]
    dup = txns[4]
    last = txns[-1].offset
    resend = InMessage(dup.kind, dup.topic, 0, last + 1, dup.key, dup.value, dup.kafka_ts_ms, 0.0)
    engine = FeatureEngine(CONFIG)
    proc = BatchProcessor(engine, lambda: None, {}.get, lambda t: None)  # type: ignore[arg-type,return-value]
    first = proc.prepare(msgs)
    uid = orjson.loads(dup.value)["user_id"]
    before = proc.dirty[uid].to_bytes()
    again = proc.prepare([resend])
    assert again.out.duplicates == 1 and again.txns == [] and not again.out.redelivered
    after = proc.dirty[uid]
    st = UserState.from_bytes(before, CONFIG)
    assert [a.count for a in after.aggs] == [a.count for a in st.aggs] and after.n_seen == st.n_seen
    assert after.applied["transaction:0"] == last + 1
    third = proc.prepare([resend])
    assert third.out.duplicates == 0 and sum(third.out.redelivered.values()) == 1

    runner = FeatureRunner(FeatureEngine(CONFIG))
    events = [_record(m) for m in [*msgs, resend]]
    offline = list(runner.run(events))
    assert runner.duplicates == 1
    assert [x.transaction_id for x, _ in offline] == [x.transaction_id for x in first.txns]
    assert [f.tab for _, f in offline] == [f.tab for f in first.feats]
    assert [f.seq for _, f in offline] == [f.seq for f in first.feats]


def _record(m: InMessage) -> Transaction | ClickEvent | Label:
    parse = {KIND_TXN: parse_transaction, KIND_CLICK: parse_click, KIND_LABEL: parse_label}[m.kind]
    return parse(m.value)  # type: ignore[no-any-return]


def test_the_state_cache_keeps_the_most_recently_used_within_its_budget() -> None:
    cache = StateCache(max_bytes=25, weigh=lambda n: n)
    raws = {k: k.encode() * 10 for k in "abcdef"}  # 10 bytes each
    for k in "abc":
        cache.put(k, raws[k], k.upper())
    assert cache.get("a", raws["a"]) is None and cache.evictions == 1  # a went for c
    assert cache.get("b", raws["b"]) == "B"  # b is now the most recently used
    cache.put("d", raws["d"], "D")
    assert cache.get("c", raws["c"]) is None and cache.get("b", raws["b"]) == "B"
    assert (len(cache), cache.bytes, cache.evictions) == (2, 20, 2)
    assert cache.get("b", b"x" * 10) is None  # other bytes than the table's: stale
    assert cache.get("b", bytes(bytearray(raws["b"]))) == "B"  # equal bytes (the disk store)
    cache.put("b", raws["b"][:5], "B5")  # a new state replaces the old one's weight
    assert (len(cache), cache.bytes) == (2, 15)
    cache.put("e", raws["e"] * 3, "E")  # heavier than the whole budget: not kept
    assert cache.get("e", raws["e"] * 3) is None and cache.bytes == 15
    cache.drop("d")
    assert (len(cache), cache.bytes) == (1, 5)


@pytest.mark.parametrize(("users", "terminals"), [(0, 0), (20_000, 8_000)])
def test_features_do_not_depend_on_the_decoded_state_cache(users: int, terminals: int) -> None:
    """Evicted states are decoded again from the table's bytes: the same features and states
    with caches too small to hold one state (0), holding two or three, and the default."""

    labels = [
        Label(f"old{n}", f"lu{n}", f"term{n % 5}", n % 3 == 0, T0 - 9 * 86_400_000 + n, T0 - 86_400_000 + n)
        for n in range(60)
    ]
    runner = FeatureRunner(FeatureEngine(CONFIG))
    for _ in runner.run(labels):
        pass
    terminal_store = {tid: ts.to_bytes() for tid, ts in runner.terminals.items()}
    batches = [_messages(120, seed) for seed in range(5)]
    for b, batch in enumerate(batches):
        for m in batch:
            m.offset += 1000 * b

    def run(**caches: int) -> tuple[list[tuple[float, ...]], dict[str, bytes], BatchProcessor]:
        store: dict[str, bytes] = {}
        proc = BatchProcessor(
            FeatureEngine(CONFIG),
            lambda: None,
            store.get,
            terminal_store.get,
            **caches,  # type: ignore[arg-type,return-value]
        )
        tabs = []
        for batch in batches:
            tabs += [f.tab + tuple(x for step in f.seq for x in step) for f in proc.prepare(batch).feats]
            store.update((uid, raw) for uid, _, raw in proc.take_dirty())
        return tabs, store, proc

    want, want_states, default = run()
    assert default.users.evictions == default.terminals.evictions == 0 and len(default.terminals) == 5
    got, got_states, small = run(user_cache_bytes=users, terminal_cache_bytes=terminals)
    assert got == want and got_states == want_states and len(want) > 100
    assert small.users.bytes <= users and small.terminals.bytes <= terminals
    if users:
        assert small.users.evictions > 0 and small.terminals.evictions > 0
    else:
        assert len(small.users) == len(small.terminals) == 0


class KeywordText:
    """A text model scoring by keyword; counts the texts it was asked to score."""

    def __init__(self, version: str, keyword: str) -> None:
        self.version, self.keyword, self.scored = version, keyword, 0

    def score(self, texts: Sequence[str | None]) -> list[float | None]:
        self.scored += len(texts)
        return [None if t is None else (0.9 if self.keyword in t else 0.1) for t in texts]


def test_a_text_challenger_scores_the_texts_beside_the_served_models(
    registry: tuple[ModelRegistry, list[str]],
) -> None:
    """A text model in shadow shares the served behaviour model (run once for both) and scores the
    texts itself; a behaviour challenger shares the served text model's scores instead."""
    reg, (served, challenger) = registry
    opts = PredictorOptions(device="cpu", use_onednn=False, model_max_batch=32)
    behaviour = Predictor.load(reg, "behaviour", opts, version=served)
    texts = ["请转账到安全账户", None, "订外卖", "您的快递到了"]
    msgs = [
        InMessage(
            KIND_TXN,
            "transactions",
            0,
            i,
            f"u{i % 5}".encode(),
            orjson.dumps(
                Transaction(f"t{i}", f"u{i % 5}", "term1", 20.0 + i, T0 + i, text=texts[i % 4]).to_dict()
            ),
            T0 + i,
            0.0,
        )
        for i in range(40)
    ]
    n_texts = sum(texts[i % 4] is not None for i in range(40))

    def run(shadow: Scorer | None, served_text: KeywordText) -> list[dict[str, object]]:
        scorer = Scorer(behaviour, CONFIG, served_text)
        proc = BatchProcessor(
            FeatureEngine(CONFIG), lambda: scorer, {}.get, lambda t: None, shadow=lambda: shadow
        )
        return [orjson.loads(v) for _, v in proc.process(msgs).risk_events]

    alone = run(None, KeywordText("text-0001", "转账"))
    served_text, text_challenger = KeywordText("text-0001", "转账"), KeywordText("text-0002", "快递")
    events = run(Scorer(behaviour, CONFIG, text_challenger), served_text)
    assert served_text.scored == text_challenger.scored == n_texts  # each text once per model
    differ = set()
    for ev, before in zip(events, alone, strict=True):
        shadow = ev.pop("shadow")
        differ.add(shadow["score"] != ev["score"])
        assert _comparable(orjson.dumps(ev)) == _comparable(orjson.dumps(before))  # served verdicts unchanged
        assert shadow["model_version"] == f"{served}+text-0002"
        b, text = ev.get("behaviour_score", ev["score"]), texts[int(str(ev["transaction_id"])[1:]) % 4]
        want = b if text is None else 1 - (1 - b) * (1 - 0.5 * (0.9 if "快递" in text else 0.1))
        assert shadow["score"] == pytest.approx(want, abs=1e-6)
    assert differ == {True, False}  # where the two text models disagree, and only there

    served_text = KeywordText("text-0001", "转账")
    challenger_scorer = Scorer(
        Predictor.load(reg, "behaviour", opts, version=challenger), CONFIG, served_text
    )
    events = run(challenger_scorer, served_text)
    assert served_text.scored == n_texts  # shared: not run again for the shadow
    assert {e["shadow"]["model_version"] for e in events} == {f"{challenger}+text-0001"}


def test_an_unreadable_stored_state_is_dead_lettered_and_its_key_starts_over() -> None:
    """A corrupt user or terminal state in the tables: its bytes go to the dead-letter topic with
    the reason, the key is featurized as new, and the batch goes on (it stopped the worker)."""
    good = FeatureRunner(FeatureEngine(CONFIG))
    for _ in good.run([Label("old", "u0", "term1", True, T0 - 9 * 86_400_000, T0 - 86_400_000)]):
        pass
    corrupt_user, corrupt_terminal = b"RSU\x93\x01\xc1 not msgpack", b"RST\x93"
    users = {"u1": corrupt_user}
    terminals = {"term1": corrupt_terminal, "term2": good.terminals["term1"].to_bytes()}
    txns = [Transaction(f"t{i}", f"u{i % 3}", f"term{1 + i % 2}", 20.0 + i, T0 + i * 1000) for i in range(12)]
    msgs = [
        InMessage(KIND_TXN, "transactions", 0, i, t.user_id.encode(), orjson.dumps(t.to_dict()), T0, 0.0)
        for i, t in enumerate(txns)
    ]

    def prepared(
        user_store: dict[str, bytes], terminal_store: dict[str, bytes]
    ) -> tuple[Prepared, BatchProcessor]:
        proc = BatchProcessor(FeatureEngine(CONFIG), lambda: None, user_store.get, terminal_store.get)  # type: ignore[arg-type,return-value]
        return proc.prepare(msgs), proc

    prep, proc = prepared(users, terminals)
    out = prep.out
    assert [(dl.key, dl.value) for dl in out.dead_letters] == [
        (b"u1", corrupt_user),
        (b"term1", corrupt_terminal),
    ]
    headers = [dict(dl.headers) for dl in out.dead_letters]
    assert [h["riskstream-state-kind"] for h in headers] == [b"user-state", b"terminal-state"]
    assert all(b"snapshot" in h["riskstream-error"] for h in headers)
    assert out.dead_fields == [("user-state", "snapshot"), ("terminal-state", "snapshot")]
    assert out.unreadable_states == ["user-state", "terminal-state"]
    # as if neither had been stored: a new user, a terminal without labels (term2 keeps its own)
    fresh, _ = prepared({}, {"term2": terminals["term2"]})
    assert [f.tab for f in prep.feats] == [f.tab for f in fresh.feats] and len(prep.feats) == 12
    assert "u1" in proc.dirty  # written at the next flush, over the unreadable state
    # the terminal is dead-lettered once, not once per transaction or batch
    again = proc.prepare(
        [InMessage(m.kind, m.topic, 0, m.offset + 100, m.key, m.value, T0, 0.0) for m in msgs]
    )
    assert again.out.dead_letters == []


def test_a_state_in_another_format_version_stops_the_batch() -> None:
    """Not corruption: another release wrote it. Starting the key over would overwrite it."""
    import msgpack

    newer = b"RSU" + msgpack.packb([3, 1, 2, 3])
    proc = BatchProcessor(FeatureEngine(CONFIG), lambda: None, {"u1": newer}.get, lambda t: None)  # type: ignore[arg-type,return-value]
    t = Transaction("t1", "u1", "term1", 20.0, T0)
    msg = InMessage(KIND_TXN, "transactions", 0, 0, b"u1", orjson.dumps(t.to_dict()), T0, 0.0)
    with pytest.raises(StateVersionError, match="format version 3; this build reads 1, 2"):
        proc.prepare([msg])


def test_a_message_keyed_by_anything_but_its_user_id_is_dead_lettered() -> None:
    """One user's events meet in one partition only if all are keyed by the user id: a message
    keyed otherwise would build a second state for the user in another partition (and its
    worker). It goes to the dead-letter topic, unless ``require_user_keys`` is off."""
    t = Transaction("t1", "u1", "term1", 20.0, T0)
    c = ClickEvent("u1", T0 - 1000, "login", "s1", "d1", "10.0.0.1")
    msgs = [
        InMessage(KIND_TXN, "transactions", 0, 0, b'"u1"', orjson.dumps(t.to_dict()), T0, 0.0),
        InMessage(KIND_CLICK, "clickstream", 0, 0, None, orjson.dumps(c.to_dict()), T0, 0.0),
        InMessage(
            KIND_TXN,
            "transactions",
            0,
            1,
            b"u1",
            orjson.dumps({**t.to_dict(), "transaction_id": "t2"}),
            T0,
            0.0,
        ),
    ]

    def prepare(require: bool) -> Prepared:
        proc = BatchProcessor(
            FeatureEngine(CONFIG), lambda: None, {}.get, lambda t: None, require_user_keys=require
        )  # type: ignore[arg-type,return-value]
        return proc.prepare(msgs)

    strict = prepare(True)
    assert [tx.transaction_id for tx in strict.txns] == ["t2"]
    assert [(dl.key, dl.value) for dl in strict.out.dead_letters] == [(m.key, m.value) for m in msgs[:2]]
    reasons = [dict(dl.headers)["riskstream-error"].decode() for dl in strict.out.dead_letters]
    assert "(b'\"u1\"') is not the user id 'u1'" in reasons[0] and "(none)" in reasons[1]
    assert all("require_user_keys" in r for r in reasons)
    assert strict.out.dead_fields == [("transactions", "<key>"), ("clickstream", "<key>")]
    lenient = prepare(False)
    assert [tx.transaction_id for tx in lenient.txns] == ["t1", "t2"] and not lenient.out.dead_letters


def test_an_event_ahead_of_the_clock_is_dead_lettered() -> None:
    """A transaction stamped a day ahead, folded in, would leave its user's real transactions
    of that day behind the state's time: late, not folded. Over an hour ahead of the worker's
    clock (``max_event_ahead_s``) an event is dead-lettered, a label by its label_time."""
    now = T0 + 10 * 86_400_000
    hour = 3_600_000
    ahead = Transaction("t-ahead", "u1", "term1", 20.0, now + hour + 1)
    edge = Transaction("t-edge", "u1", "term1", 20.0, now + hour)
    label = Label("t0", "u1", "term1", True, now - 1000, now + 2 * hour)

    def msg(kind: str, offset: int, rec: Transaction | Label) -> InMessage:
        return InMessage(kind, kind, 0, offset, b"u1", orjson.dumps(rec.to_dict()), now, 0.0)

    msgs = [msg(KIND_TXN, 0, ahead), msg(KIND_TXN, 1, edge), msg(KIND_LABEL, 0, label)]

    def prepare(ahead_ms: float) -> Prepared:
        proc = BatchProcessor(
            FeatureEngine(CONFIG),
            lambda: None,  # type: ignore[arg-type,return-value]
            {}.get,
            lambda t: None,
            now_ms=lambda: float(now),
            max_event_ahead_ms=ahead_ms,
        )
        return proc.prepare(msgs)

    checked = prepare(hour)
    assert [t.transaction_id for t in checked.txns] == ["t-edge"]
    assert checked.out.dead_fields == [(KIND_TXN, "event_time"), (KIND_LABEL, "label_time")]
    reason = dict(checked.out.dead_letters[0].headers)["riskstream-error"].decode()
    assert "1.00 h ahead of this worker's clock (setting max_event_ahead_s)" in reason
    off = prepare(0)
    assert [t.transaction_id for t in off.txns] == ["t-edge", "t-ahead"] and not off.out.dead_letters
