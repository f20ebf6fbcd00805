"""One feature definition: the live path (state restored from its snapshot before every event,
as a changelog-backed table does) and the offline path (training.featurize) give identical
vectors for the same events, including out-of-order and late ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, TerminalState, UserState, stack
from modeling.records import ClickEvent, Label, Transaction
from training.featurize import featurize_frame
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "handbook_2w.parquet"


def live_path(events: list[Transaction | ClickEvent | Label], config: FeatureConfig) -> dict[str, object]:
    """Featurize like the worker: every state lives as bytes between events."""
    engine = FeatureEngine(config)
    users: dict[str, bytes] = {}
    terminals: dict[str, bytes] = {}
    out: dict[str, object] = {}
    for ev in events:
        raw = users.get(ev.user_id)
        st = UserState.from_bytes(raw, config) if raw is not None else engine.new_user()
        if isinstance(ev, Transaction):
            traw = terminals.get(ev.terminal_id)
            ts = TerminalState.from_bytes(traw) if traw is not None else None
            out[ev.transaction_id] = engine.transaction(st, ev, ts)
        elif isinstance(ev, ClickEvent):
            engine.click(st, ev)
        else:
            engine.user_label(st, ev)
            traw = terminals.get(ev.terminal_id)
            ts = TerminalState.from_bytes(traw) if traw is not None else TerminalState()
            engine.terminal_label(ts, ev)
            terminals[ev.terminal_id] = ts.to_bytes()
        users[ev.user_id] = st.to_bytes()
    return out


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    df = load_history(DATA)
    # 150 customers over the two weeks: ~4k transactions with their clicks and labels.
    users = sorted(df["user_id"].unique())[:150]
    return df[df["user_id"].isin(users)].reset_index(drop=True)


def _shuffle_some(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Make some transactions arrive out of order: 5% delayed by up to 2 hours (past the
    1-hour allowed lateness for some of them)."""
    rng = np.random.default_rng(seed)
    arrival = df["time_ms"].to_numpy().copy()
    moved = rng.random(len(df)) < 0.05
    arrival[moved] += rng.integers(1, 2 * 3_600_000, moved.sum())
    order = np.argsort(arrival, kind="stable")
    return df.iloc[order].reset_index(drop=True)


@pytest.mark.parametrize("clicks", [True, False])
def test_live_equals_offline_in_order(sample: pd.DataFrame, clicks: bool) -> None:
    config = FeatureConfig(use_clicks=clicks)
    events = list(event_stream(sample, config, clicks=clicks).events())
    live = live_path(events, config)
    offline = featurize_frame(sample, config, clicks=clicks)
    feats = [live[t] for t in offline.transaction_id]
    tab, seq = stack(feats, config)  # type: ignore[arg-type]
    assert tab.shape == offline.tab.shape == (len(sample), config.n_features)
    np.testing.assert_allclose(tab, offline.tab, atol=1e-6, rtol=0)
    np.testing.assert_allclose(seq, offline.seq, atol=1e-6, rtol=0)
    # The vectors carry information: terminal risk and user windows are populated.
    names = config.feature_names
    assert offline.tab[:, names.index("t_count_7d")].max() > 0
    assert offline.tab[:, names.index("u_count_30d")].max() > 0


def test_live_equals_offline_with_out_of_order_and_late_events(sample: pd.DataFrame) -> None:
    config = FeatureConfig()
    arrived = _shuffle_some(sample, seed=3)
    # The offline path takes the file in the order given (arrival order); only labels and
    # clicks are placed by their own times.
    stream = event_stream(arrived, config)
    # event_stream sorts by time; to feed arrival order we bypass that sort for transactions.
    order_events = _arrival_events(stream, arrived)
    live = live_path(order_events, config)
    offline = _offline_in_arrival_order(order_events, config)
    assert sum(f.late for f in offline.values()) > 0, "the sample must contain too-late events"
    for tid, f in offline.items():
        g = live[tid]
        np.testing.assert_allclose(f.tab, g.tab, atol=1e-6, rtol=0)  # type: ignore[attr-defined]
        assert f.late == g.late  # type: ignore[attr-defined]


def _arrival_events(stream: object, arrived: pd.DataFrame) -> list[Transaction | ClickEvent | Label]:
    """Events where transactions keep arrival order; clicks and labels slot in by time."""
    evs = list(stream.events())  # type: ignore[attr-defined]
    txns = [e for e in evs if isinstance(e, Transaction)]
    by_id = {t.transaction_id: t for t in txns}
    arrival_txns = [by_id[t] for t in arrived["transaction_id"]]
    others = [e for e in evs if not isinstance(e, Transaction)]
    # Merge: a transaction's arrival position is its index in arrival order; put each
    # non-transaction event before the first transaction that arrives after its time.
    out: list[Transaction | ClickEvent | Label] = []
    j = 0
    for t in arrival_txns:
        while j < len(others) and others[j].t <= t.t:
            out.append(others[j])
            j += 1
        out.append(t)
    out += others[j:]
    return out


def _offline_in_arrival_order(
    events: list[Transaction | ClickEvent | Label], config: FeatureConfig
) -> dict[str, object]:
    from modeling.features import FeatureRunner

    runner = FeatureRunner(FeatureEngine(config))
    return {tx.transaction_id: f for tx, f in runner.run(events)}


def test_clicks_and_labels_arriving_early_change_nothing(sample: pd.DataFrame) -> None:
    """Clickstream and labels may run ahead of transactions (separate topics): a click or label
    from after a transaction never counts for it, so delivering them up to 30 minutes early
    gives the same vectors."""
    config = FeatureConfig()
    events = list(event_stream(sample, config).events())
    lead = 30 * 60_000

    def arrival(e: Transaction | ClickEvent | Label) -> int:
        if isinstance(e, Transaction):
            return e.event_time_ms
        t = e.label_time_ms if isinstance(e, Label) else e.event_time_ms
        return t - lead

    early = sorted(events, key=arrival)  # stable: ties keep the original order
    assert early != events
    base = {tx.transaction_id: f for tx, f in FeatureRunner(FeatureEngine(config)).run(events)}
    got = {tx.transaction_id: f for tx, f in FeatureRunner(FeatureEngine(config)).run(early)}
    for tid, f in base.items():
        np.testing.assert_allclose(got[tid].tab, f.tab, atol=1e-9, rtol=0)
        assert got[tid].seq == f.seq
