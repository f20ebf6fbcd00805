"""Dormant users: the engine's reset rule, the snapshot peek a state sweep uses, the watermark,
and the invariant that deleting expired states (as the live worker does) changes no vector."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling.errors import StateError
from modeling.features import (
    FeatureConfig,
    FeatureEngine,
    FeatureRunner,
    TerminalState,
    UserState,
    Watermark,
    expiry_cutoff,
    is_expired,
    snapshot_last_activity_ms,
    terminal_expiry_cutoff,
    terminal_is_expired,
)
from modeling.features.config import DAY_MS, HOUR_MS, MINUTE_MS
from modeling.features.retention import EXPIRY_GRACE_MS, MAX_FUTURE_MS
from modeling.records import ClickEvent, Label, Transaction
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "handbook_2w.parquet"
T0 = 1_527_811_200_000  # 2018-06-01
# Short windows so that two weeks of data hold users who go dormant and come back.
SHORT = FeatureConfig(
    txn_windows_ms=(10 * MINUTE_MS, HOUR_MS, DAY_MS),
    terminal_windows_ms=(DAY_MS,),
    known_fraud_window_ms=DAY_MS,
    user_retention_ms=2 * DAY_MS,
)

# (kind, minutes after the previous event, amount/terminal/device choice)
user_events = st.lists(
    st.tuples(
        st.sampled_from(["txn", "txn", "click", "login", "fraud", "genuine"]),
        st.integers(0, 4 * 24 * 60),
        st.integers(0, 5),
    ),
    min_size=1,
    max_size=40,
)


def _event(kind: str, t: int, k: int, i: int) -> Transaction | ClickEvent | Label:
    if kind == "txn":
        return Transaction(f"t{i}", "u", f"term{k}", 10.0 + 7 * k, t, device_id=f"d{k % 3}")
    if kind in ("click", "login"):
        return ClickEvent("u", t, "login" if kind == "login" else "page_view", f"s{i}", f"d{k}", f"ip{k}")
    return Label(f"t{max(i - 3, 0)}", "u", f"term{k}", kind == "fraud", t - 3 * DAY_MS, t)


def _apply(engine: FeatureEngine, s: UserState, ev: Transaction | ClickEvent | Label) -> object:
    if isinstance(ev, Transaction):
        return engine.transaction(s, ev, None)
    if isinstance(ev, ClickEvent):
        engine.click(s, ev)
    else:
        engine.user_label(s, ev)
    return None


@settings(max_examples=150, deadline=None)
@given(user_events)
def test_snapshot_peek_equals_restored_state(evs: list[tuple[str, int, int]]) -> None:
    engine = FeatureEngine(SHORT)
    s = engine.new_user()
    assert snapshot_last_activity_ms(s.to_bytes()) == s.last_activity_ms() == -1
    t = T0
    for i, (kind, gap, k) in enumerate(evs):
        t += gap * MINUTE_MS
        _apply(engine, s, _event(kind, t, k, i))
        raw = s.to_bytes()
        assert snapshot_last_activity_ms(raw) == UserState.from_bytes(raw, SHORT).last_activity_ms()
        assert snapshot_last_activity_ms(raw) == s.last_activity_ms()


@settings(max_examples=150, deadline=None)
@given(user_events, st.integers(0, 39))
def test_deleting_an_expired_state_changes_no_vector(evs: list[tuple[str, int, int]], cut: int) -> None:
    """Whatever the history, once the state is expired at the watermark, the next events give the
    same vectors from a new state as from the kept one."""
    engine = FeatureEngine(SHORT)
    kept = engine.new_user()
    t = T0
    timed = []
    for i, (kind, gap, k) in enumerate(evs):
        t += gap * MINUTE_MS
        timed.append(_event(kind, t, k, i))
    cut = min(cut, len(timed) - 1)
    for ev in timed[:cut]:
        _apply(engine, kept, ev)
    if cut == 0:
        return
    # The watermark is the time of the next event: the sweep runs just before it arrives.
    nxt = timed[cut]
    watermark = nxt.label_time_ms if isinstance(nxt, Label) else nxt.event_time_ms
    if not is_expired(kept.to_bytes(), expiry_cutoff(watermark, SHORT)):
        return
    fresh = engine.new_user()
    for ev in timed[cut:]:
        a, b = _apply(engine, kept, ev), _apply(engine, fresh, ev)
        assert a == b
    assert _view(kept) == _view(fresh)


def test_dormant_user_starts_over_but_keeps_source_offsets() -> None:
    engine = FeatureEngine(SHORT)
    s = engine.new_user()
    s.applied["transaction:0"] = 41
    engine.transaction(s, Transaction("a", "u", "t1", 50.0, T0), None)
    engine.user_label(s, Label("a", "u", "t1", True, T0, T0 + HOUR_MS))
    assert s.last_activity_ms() == T0 + HOUR_MS  # a fraud label counts as activity
    # Within the retention: the state is used (a previous transaction, its sequence step).
    b = Transaction("b", "u", "t1", 50.0, T0 + HOUR_MS + 2 * DAY_MS)
    within = engine.transaction(s, b, None)
    names = SHORT.feature_names
    assert within.tab[names.index("u_has_prev")] == 1.0 and len(within.seq) == 2
    assert within != engine.transaction(engine.new_user(), b, None)
    # More than the retention after the latest event: a new user, offsets kept.
    later = T0 + HOUR_MS + 2 * DAY_MS + 2 * DAY_MS + 1
    after = engine.transaction(s, Transaction("c", "u", "t1", 50.0, later), None)
    new = engine.transaction(engine.new_user(), Transaction("c", "u", "t1", 50.0, later), None)
    assert after == new
    assert after.tab[names.index("u_has_prev")] == 0.0
    assert s.applied == {"transaction:0": 41}
    assert not s.frauds and s.n_seen == 1


def test_retention_must_cover_the_windows() -> None:
    with pytest.raises(ValueError, match="user_retention_ms"):
        FeatureConfig(user_retention_ms=29 * DAY_MS)
    assert FeatureConfig(user_retention_ms=400 * DAY_MS).feature_set != FeatureConfig().feature_set


def test_snapshot_peek_rejects_what_is_not_a_user_state() -> None:
    with pytest.raises(StateError, match="not a riskstream user state"):
        snapshot_last_activity_ms(TerminalState().to_bytes())
    raw = FeatureEngine(SHORT).new_user().to_bytes()
    with pytest.raises(StateError, match="corrupt"):
        snapshot_last_activity_ms(raw[:12])
    other_version = b"RSU" + msgpack.packb([9, *([0] * 12)])
    with pytest.raises(StateError, match="format version"):
        snapshot_last_activity_ms(other_version)


def test_watermark_is_the_earliest_source_capped_by_the_wall_clock() -> None:
    w = Watermark()
    assert w.value(now_ms=T0) is None
    w.observe("transaction:0", T0 + 5_000)
    w.observe("transaction:0", T0 + 1_000)  # older: the source's time does not go back
    w.observe("click:1", T0 + 2_000)
    assert w.value(now_ms=T0 + 10 * DAY_MS) == T0 + 2_000
    w.observe("click:1", T0 + 9_000)
    assert w.value(now_ms=T0 + 10 * DAY_MS) == T0 + 5_000
    # A mis-dated input (year 2099) moves the watermark no further than a day past the clock.
    w.observe("transaction:0", 4_070_908_800_000)
    w.observe("click:1", 4_070_908_800_000)
    assert w.value(now_ms=T0) == T0 + MAX_FUTURE_MS
    w.forget()
    assert w.value(now_ms=T0) is None


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    df = load_history(DATA)
    users = sorted(df["user_id"].unique())[:300]
    return df[df["user_id"].isin(users)].reset_index(drop=True)


def test_live_path_with_state_sweeps_equals_offline(sample: pd.DataFrame) -> None:
    """The worker's path (states as snapshots, a sweep every 200 events deleting the expired
    user and terminal states by the inputs' watermark) gives the offline runner's vectors on two
    weeks of data."""
    config = SHORT
    events = list(event_stream(sample, config).events())
    offline = {tx.transaction_id: f for tx, f in FeatureRunner(FeatureEngine(config)).run(events)}

    engine = FeatureEngine(config)
    users: dict[str, bytes] = {}
    terminals: dict[str, TerminalState] = {}
    watermark = Watermark()
    deleted: set[str] = set()
    returned = terminals_deleted = 0
    for i, ev in enumerate(events):
        if i % 200 == 0 and (wm := watermark.value(now_ms=4_000_000_000_000)) is not None:
            cutoff = expiry_cutoff(wm, config)
            for uid in [u for u, raw in users.items() if is_expired(raw, cutoff)]:
                del users[uid]
                deleted.add(uid)
            t_cutoff = terminal_expiry_cutoff(wm, config)
            for tid in [t for t, ts in terminals.items() if terminal_is_expired(ts, t_cutoff)]:
                del terminals[tid]
                terminals_deleted += 1
        raw = users.get(ev.user_id)
        if raw is None and ev.user_id in deleted:
            returned += 1
            deleted.discard(ev.user_id)
        s = UserState.from_bytes(raw, config) if raw is not None else engine.new_user()
        if isinstance(ev, Transaction):
            f = engine.transaction(s, ev, terminals.get(ev.terminal_id))
            np.testing.assert_array_equal(f.tab, offline[ev.transaction_id].tab)
            np.testing.assert_array_equal(np.array(f.seq), np.array(offline[ev.transaction_id].seq))
            watermark.observe("transaction", ev.event_time_ms)
        elif isinstance(ev, ClickEvent):
            engine.click(s, ev)
            watermark.observe("click", ev.event_time_ms)
        else:
            engine.user_label(s, ev)
            engine.terminal_label(terminals.setdefault(ev.terminal_id, TerminalState()), ev)
            watermark.observe("label", ev.label_time_ms)
        users[ev.user_id] = s.to_bytes()
    # The sample exercises the rule: states were deleted and their users came back.
    assert returned >= 10, returned
    assert terminals_deleted >= 100, terminals_deleted
    assert EXPIRY_GRACE_MS == DAY_MS


def _view(s: UserState) -> tuple[object, ...]:
    return (
        s.txn_last_ms,
        s.prev_ms,
        list(s.hist),
        list(s.seq),
        list(s.clicks),
        s.click_last_ms,
        s.devices,
        s.logins,
        s.frauds,
        [a.result() for a in s.aggs],
    )
