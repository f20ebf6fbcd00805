"""Property tests for the window math: incremental windows equal recomputing from scratch
(transaction windows, and the click features' windows against a scan of every click)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from modeling.features import FeatureConfig, FeatureEngine, UserState
from modeling.features import engine as engine_module
from modeling.features.aggregators import DistinctAgg, WindowAgg
from modeling.records import ClickEvent, Transaction

MIN = 60_000
INDEX_DEFAULT = engine_module.CLICK_INDEX_FROM
T0 = 1_527_811_200_000  # 2018-06-01

events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3 * 24 * 60),  # minutes after the previous event
        st.integers(min_value=0, max_value=500_000),  # cents
        st.integers(min_value=0, max_value=6),  # terminal
    ),
    min_size=1,
    max_size=80,
)

CONFIG = FeatureConfig(
    txn_windows_ms=(10 * MIN, 60 * MIN, 24 * 60 * MIN, 3 * 24 * 60 * MIN, 7 * 24 * 60 * MIN),
    use_clicks=False,
)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(-1000, 1000)), max_size=60), st.integers(1, 10))
def test_window_agg_revert_equals_recompute(values: list[tuple[int, int]], span: int) -> None:
    """A count-based sliding window kept with update/revert equals one recomputed each step."""
    agg = WindowAgg()
    for i, (_, v) in enumerate(values):
        agg.update(i, v)
        if i - span >= 0:
            agg.revert(i - span, values[i - span][1])
        window = [x for _, x in values[max(0, i - span + 1) : i + 1]]
        fresh = WindowAgg()
        for k, x in enumerate(window):
            fresh.update(k, x)
        assert (
            agg.result()
            == fresh.result()
            == (
                len(window),
                sum(window),
                sum(x * x for x in window),
                max(window),
            )
        )


@given(st.lists(st.sampled_from("abcde"), max_size=40), st.integers(1, 6))
def test_distinct_agg_revert_equals_recompute(keys: list[str], span: int) -> None:
    agg = DistinctAgg()
    for i, k in enumerate(keys):
        agg.update(k)
        if i - span >= 0:
            agg.revert(keys[i - span])
        assert agg.result() == len(set(keys[max(0, i - span + 1) : i + 1]))


@settings(max_examples=200, deadline=None)
@given(events, st.one_of(st.none(), st.integers(1, 8)))
def test_engine_windows_equal_brute_force(evs: list[tuple[int, int, int]], cap: int | None) -> None:
    """Every window holds the user's transactions inside it; with a bound of ``cap``
    transactions (``max_user_transactions``), those of its latest ``cap`` that are inside it."""
    config = CONFIG if cap is None else replace(CONFIG, max_user_transactions=cap)
    engine = FeatureEngine(config)
    names = config.feature_names
    state = engine.new_user()
    t = T0
    past: list[tuple[int, int, str]] = []
    for gap, cents, term in evs:
        t += gap * MIN
        txn = Transaction(f"t{len(past)}", "u", f"term{term}", cents / 100.0, t)
        f = engine.transaction(state, txn, None)
        kept = past if cap is None else past[-cap:]
        for w in config.txn_windows_ms:
            lab = _label(w)
            inside = [c for (tm, c, _) in kept if tm > t - w]
            assert math.isclose(f.tab[names.index(f"u_count_{lab}")], math.log1p(len(inside)), abs_tol=1e-12)
            assert math.isclose(
                f.tab[names.index(f"u_sum_{lab}")], math.log1p(sum(inside) / 100.0), abs_tol=1e-9
            )
            mx = max(inside) / 100.0 if inside else 0.0
            assert math.isclose(f.tab[names.index(f"u_max_{lab}")], math.log1p(mx), abs_tol=1e-9)
        longest = config.txn_windows_ms[-1]
        terms = {term_ for (tm, _, term_) in kept if tm > t - longest}
        assert f.tab[names.index("u_new_terminal")] == (0.0 if f"term{term}" in terms else 1.0)
        assert math.isclose(f.tab[names.index("u_distinct_terminals_7d")], math.log1p(len(terms)))
        past.append((t, cents, f"term{term}"))
        assert cap is None or len(state.hist) <= cap
        # A snapshot restores to an identical state at every step.
        restored = UserState.from_bytes(state.to_bytes(), config)
        assert restored.to_bytes() == state.to_bytes()
        assert [a.result() for a in restored.aggs] == [a.result() for a in state.aggs]
        assert restored.heads == state.heads


def _label(ms: int) -> str:
    day, hour = 86_400_000, 3_600_000
    if ms % day == 0:
        return f"{ms // day}d"
    if ms % hour == 0:
        return f"{ms // hour}h"
    return f"{ms // MIN}m"


click_events = st.lists(
    st.tuples(
        # minutes after the previous event (hypothesis favours small integers, which would
        # keep every event inside one hour): across the windows' edges, sometimes back in time
        st.sampled_from([-90, -5, 0, 1, 20, 59, 60, 61, 180, 600, 1439, 1440, 1441, 3000]),
        st.sampled_from(["click", "click", "click", "txn"]),
        st.sampled_from(["login", "login_failed", "page_view", "change_password", "add_payee", "logout"]),
        st.integers(0, 3),  # device
        st.integers(0, 2),  # ip
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(click_events, st.sampled_from([0, 3, 12]), st.integers(4, 40), st.integers(0, 119))
def test_click_windows_equal_a_scan_of_every_click(
    evs: list[tuple[int, str, str, int, int]], index_from: int, cap: int, restart_at: int
) -> None:
    """Click features from ClickWindows (kept up to date click by click, dropped on anything out
    of order, rebuilt from the clicks held) equal a scan of every click, transaction by
    transaction: events that go back in time, the click bound, expiry and a snapshot restore."""
    config = FeatureConfig(use_clicks=True, max_user_clicks=cap)
    engine = FeatureEngine(config)
    names = config.feature_names
    cols = [i for i, n in enumerate(names) if n.startswith("c_")]
    assert len(cols) == 12
    states = {"indexed": engine.new_user(), "scanned": engine.new_user()}
    t = T0
    for k, (minutes, what, kind, dev, ip) in enumerate(evs):
        t += minutes * MIN
        if k == restart_at:  # a worker restarted: the index is rebuilt from the restored clicks
            states["indexed"] = UserState.from_bytes(states["indexed"].to_bytes(), config)
        got = {}
        for name, state in states.items():
            engine_module.CLICK_INDEX_FROM = index_from if name == "indexed" else 1 << 30
            try:
                if what == "click":
                    engine.click(state, ClickEvent("u", t, kind, "s", f"d{dev}", f"10.0.0.{ip}"))
                else:
                    f = engine.transaction(
                        state, Transaction(f"t{k}", "u", "T", 10.0, t, device_id=f"d{dev}"), None
                    )
                    got[name] = [f.tab[i] for i in cols]
            finally:
                engine_module.CLICK_INDEX_FROM = INDEX_DEFAULT
        assert got.get("indexed") == got.get("scanned"), k
        assert states["indexed"].to_bytes() == states["scanned"].to_bytes()
    assert states["scanned"].click_index is None


def test_a_busy_clickstream_is_indexed_until_a_click_comes_out_of_order() -> None:
    config = FeatureConfig(use_clicks=True)
    engine = FeatureEngine(config)
    state = engine.new_user()
    kinds = ["page_view"] * 5 + ["login", "login_failed"]
    for k in range(3000):  # a bot: a click every 40 s, transactions now and then
        t = T0 + k * 40_000
        engine.click(state, ClickEvent("u", t, kinds[k % 7], "s", f"d{k % 9}", f"10.0.{k % 4}.1"))
        if k % 50 == 49:
            engine.transaction(state, Transaction(f"t{k}", "u", "T", 10.0, t + 1), None)
    index = state.click_index
    assert index is not None and len(index.clicks) == len(state.clicks) > 2000  # a day's clicks
    before = [c for c in state.clicks]
    engine.click(state, ClickEvent("u", T0, "login", "s", "d1", "10.0.0.1"))  # 33 hours late
    assert state.click_index is None and list(state.clicks) == [*before, (T0, "login", "d1", "10.0.0.1")]


def test_a_login_that_left_the_day_window_is_not_the_latest_login() -> None:
    """Logins running ahead of a transaction fill the recent-logins list, so the day window's own
    latest login decides (none here: the one login before the transaction is 47 hours old)."""
    config = FeatureConfig(use_clicks=True, allowed_lateness_ms=3 * 24 * 60 * MIN)
    engine = FeatureEngine(config)
    col = config.feature_names.index("c_log_secs_since_login")
    got = []
    for index_from in (0, 1 << 30):
        engine_module.CLICK_INDEX_FROM = index_from
        try:
            state = engine.new_user()
            engine.click(state, ClickEvent("u", T0, "login", "s", "d", "10.0.0.1"))
            engine.transaction(state, Transaction("t1", "u", "T", 10.0, T0 + MIN), None)
            for k in range(10):
                engine.click(state, ClickEvent("u", T0 + 48 * 60 * MIN + k, "login", "s", "d", "10.0.0.1"))
            f = engine.transaction(state, Transaction("t2", "u", "T", 10.0, T0 + 47 * 60 * MIN), None)
            assert (state.click_index is not None) == (index_from == 0)
            got.append(f.tab[col])
        finally:
            engine_module.CLICK_INDEX_FROM = INDEX_DEFAULT
    assert got == [math.log1p(30 * 86400.0)] * 2
