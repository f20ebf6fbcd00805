"""Property tests for the window math: incremental windows equal recomputing from scratch."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from modeling.features import FeatureConfig, FeatureEngine, UserState
from modeling.features.aggregators import DistinctAgg, WindowAgg
from modeling.records import Transaction

MIN = 60_000
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
