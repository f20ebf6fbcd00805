"""Late events, delayed labels and the feature-set identity."""

from __future__ import annotations

import pytest

from modeling.errors import StateError
from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, TerminalState, UserState
from modeling.records import ClickEvent, Label, Transaction

H = 3_600_000
D = 24 * H
T0 = 1_527_811_200_000
CFG = FeatureConfig()
NAMES = CFG.feature_names


def txn(i: int, t: int, amount: float = 10.0, user: str = "u", term: str = "T") -> Transaction:
    return Transaction(f"x{i}", user, term, amount, t)


def val(f: object, name: str) -> float:
    return f.tab[NAMES.index(name)]  # type: ignore[attr-defined,no-any-return]


def test_late_within_allowed_lateness_is_folded_at_latest_time() -> None:
    eng = FeatureEngine(CFG)
    st = eng.new_user()
    eng.transaction(st, txn(0, T0 + 10 * H), None)
    f = eng.transaction(st, txn(1, T0 + 10 * H - 30 * 60_000), None)  # 30 min late: allowed
    assert not f.late
    assert st.txn_last_ms == T0 + 10 * H  # clamped, the watermark does not move back
    assert st.aggs[0].count == 2  # both inside the 10-minute window
    g = eng.transaction(st, txn(2, T0 + 10 * H + 1), None)
    assert val(g, "u_count_10m") == pytest.approx(__import__("math").log1p(2))


def test_too_late_event_is_scored_but_leaves_state_untouched() -> None:
    eng = FeatureEngine(CFG)
    st = eng.new_user()
    eng.transaction(st, txn(0, T0 + 10 * H), None)
    before = st.to_bytes()
    f = eng.transaction(st, txn(1, T0 + 10 * H - 2 * H, amount=999.0), None)  # 2 h late
    assert f.late
    assert val(f, "u_count_1d") > 0  # scored from the state as of the user's latest time
    assert st.to_bytes() == before


def test_terminal_risk_uses_only_labels_past_the_delay_and_known() -> None:
    eng = FeatureEngine(CFG)
    ts = TerminalState()
    # A fraud at day 0 labelled at day 7 (the handbook delay).
    eng.terminal_label(ts, Label("a", "u1", "T", True, T0, T0 + 7 * D))
    st = eng.new_user()
    # Day 6: the transaction is less than 7 days old -> not in any delayed window.
    f6 = eng.transaction(st, txn(1, T0 + 6 * D), ts)
    assert val(f6, "t_count_7d") == 0.0 and val(f6, "t_risk_7d") == 0.0
    # Day 7 + 30 min: the label arrived only 30 min ago (< 1 h allowance) -> still unknown.
    f7 = eng.transaction(st, txn(2, T0 + 7 * D + 30 * 60_000), ts)
    assert val(f7, "t_risk_7d") == 0.0
    # Day 7 + 2 h: known and inside the 1-day delayed window.
    f7b = eng.transaction(st, txn(3, T0 + 7 * D + 2 * H), ts)
    assert val(f7b, "t_risk_1d") == 1.0 and val(f7b, "t_risk_30d") == 1.0
    # Day 9: out of the 1-day window, still in the 7-day one.
    f9 = eng.transaction(st, txn(4, T0 + 9 * D), ts)
    assert val(f9, "t_risk_1d") == 0.0 and val(f9, "t_risk_7d") == 1.0


def test_a_label_arriving_later_than_usual_is_not_used_before_it_arrives() -> None:
    eng = FeatureEngine(CFG)
    ts = TerminalState()
    eng.terminal_label(ts, Label("a", "u1", "T", True, T0, T0 + 20 * D))  # chargeback after 20 days
    st = eng.new_user()
    assert val(eng.transaction(st, txn(1, T0 + 10 * D), ts), "t_risk_30d") == 0.0
    assert val(eng.transaction(st, txn(2, T0 + 21 * D), ts), "t_risk_30d") == 1.0


def test_user_known_frauds_follow_label_time() -> None:
    r = FeatureRunner(FeatureEngine(CFG))
    r.on_label(Label("a", "u", "T", True, T0, T0 + 7 * D))
    r.on_label(Label("b", "u", "T", False, T0, T0 + 7 * D))
    assert val(r.on_transaction(txn(1, T0 + 3 * D)), "u_known_frauds_30d") == 0.0
    assert val(r.on_transaction(txn(2, T0 + 8 * D)), "u_has_known_fraud") == 1.0


def test_clicks_join_the_next_transaction() -> None:
    r = FeatureRunner(FeatureEngine(CFG))
    t = T0 + D
    for k, kind in enumerate(["login_failed", "login_failed", "login", "new_device", "change_password"]):
        r.on_click(ClickEvent("u", t + k * 1000, kind, "s", "atk", "ip9"))
    f = r.on_transaction(Transaction("x", "u", "T", 50.0, t + 60_000, device_id="atk"))
    assert val(f, "c_failed_logins_1h") == pytest.approx(__import__("math").log1p(2))
    assert val(f, "c_password_changes_24h") > 0
    assert val(f, "c_new_devices_24h") > 0
    assert val(f, "c_txn_device_unknown") == 0.0  # registered by the session before the purchase
    g = r.on_transaction(Transaction("y", "u", "T", 50.0, t + 2 * D, device_id="other"))
    assert val(g, "c_failed_logins_24h") == 0.0  # out of the window a day later
    assert val(g, "c_txn_device_unknown") == 1.0


def test_feature_set_identity_changes_with_the_definition() -> None:
    a = FeatureConfig()
    assert a.feature_set == FeatureConfig().feature_set
    assert a.feature_set != FeatureConfig(seq_len=8).feature_set
    assert a.feature_set != FeatureConfig(label_delay_ms=3 * D).feature_set
    assert a.feature_set != FeatureConfig(use_clicks=False).feature_set
    assert len(a.feature_names) == len(set(a.feature_names)) == a.n_features


def test_corrupt_snapshots_raise_state_error() -> None:
    st = UserState(CFG)
    blob = st.to_bytes()
    with pytest.raises(StateError):
        UserState.from_bytes(b"garbage", CFG)
    with pytest.raises(StateError):
        UserState.from_bytes(blob[:-3], CFG)
    with pytest.raises(StateError, match="format version"):
        UserState.from_bytes(blob[:3] + b"\x91\x63", CFG)  # msgpack [99]
    with pytest.raises(StateError):
        TerminalState.from_bytes(blob)


def test_snapshots_are_the_bytes_msgpack_python_writes() -> None:
    """The snapshot format is on disk and in changelogs: encoding with msgspec must not change it.
    Re-encoding a snapshot's content with msgpack-python gives back the very same bytes."""
    import msgpack

    eng = FeatureEngine(CFG)
    st, ts = eng.new_user(), TerminalState()
    for i in range(40):
        t = T0 + i * 7 * H + 12_345
        eng.click(st, ClickEvent("u", t - 60_000, "login", f"s{i}", f"dev{i % 3}", f"ip{i % 5}"))
        eng.transaction(st, txn(i, t, amount=3.5 + 1000.25 * i + 0.01 * (i % 7), term=f"T{i % 4}"), ts)
        lb = Label(f"x{i}", "u", f"T{i % 4}", i % 5 == 0, t, t + 8 * D)
        eng.user_label(st, lb)
        eng.terminal_label(ts, lb)
    st.applied["transaction:3"] = 2**40 + 7
    for raw in (st.to_bytes(), ts.to_bytes()):
        body = msgpack.unpackb(raw[3:], raw=False, strict_map_key=False)
        assert msgpack.packb(body, use_bin_type=True) == raw[3:]
    assert UserState.from_bytes(st.to_bytes(), CFG).to_bytes() == st.to_bytes()


def test_a_transaction_sent_again_is_a_duplicate_until_its_id_leaves_the_recent_ones() -> None:
    """A transaction id among the user's latest RECENT_TXN_IDS folded in is a duplicate: the
    offline runner skips it (and counts it), as the live batch step does, so the windows count
    it once. Ids are per user; a too-late transaction leaves its id out, as the rest of its
    state; a dormant user's reset keeps them."""
    from modeling.features.state import RECENT_TXN_IDS, txn_key

    events = [txn(0, T0), txn(1, T0 + H), txn(0, T0 + 2 * H), txn(0, T0 + 3 * H, user="v")]
    runner = FeatureRunner(FeatureEngine(CFG))
    out = list(runner.run(events))
    assert [(x.transaction_id, x.user_id) for x, _ in out] == [("x0", "u"), ("x1", "u"), ("x0", "v")]
    assert runner.duplicates == 1
    assert runner.users["u"].aggs[CFG.txn_windows_ms.index(D)].count == 2
    assert list(runner.users["u"].recent_ids) == [txn_key("x0"), txn_key("x1")]
    # the keys are in snapshots: pinned, so that no release changes them
    assert txn_key("x0") == 0x734852D20975E6BE

    eng = FeatureEngine(CFG)
    st = eng.new_user()
    for i in range(RECENT_TXN_IDS + 1):
        eng.transaction(st, txn(i, T0 + i * 600_000), None)
    assert not eng.duplicate(st, txn(0, T0)) and eng.duplicate(st, txn(1, T0))  # x0 forgotten
    late = txn(99, T0)  # more than an hour behind the user's latest
    assert eng.transaction(st, late, None).late and not eng.duplicate(st, late)
    st.reset(CFG)
    assert eng.duplicate(st, txn(RECENT_TXN_IDS, T0)) and st.n_seen == 0


def test_a_format_1_snapshot_reads_with_no_recent_ids() -> None:
    """Format 2 added the recent transaction ids; a state written by a build before reads."""
    import msgpack

    from modeling.features.state import snapshot_last_activity_ms

    eng = FeatureEngine(CFG)
    st = eng.new_user()
    for i in range(5):
        eng.transaction(st, txn(i, T0 + i * H), None)
    raw = st.to_bytes()
    body = msgpack.unpackb(raw[3:], raw=False, strict_map_key=False)
    assert body[0] == 2 and len(body[-1]) == 5
    v1 = raw[:3] + msgpack.packb([1, *body[1:-1]], use_bin_type=True)
    old = UserState.from_bytes(v1, CFG)
    assert list(old.recent_ids) == [] and old.n_seen == 5
    assert UserState.from_bytes(raw, CFG).recent_ids == st.recent_ids
    assert snapshot_last_activity_ms(v1) == snapshot_last_activity_ms(raw) == T0 + 4 * H
    # a format-1 body with a format-2 length, or the reverse, is malformed
    with pytest.raises(StateError):
        UserState.from_bytes(raw[:3] + msgpack.packb([1, *body[1:]], use_bin_type=True), CFG)
    with pytest.raises(StateError):
        snapshot_last_activity_ms(raw[:3] + msgpack.packb([2, *body[1:-1]], use_bin_type=True))
