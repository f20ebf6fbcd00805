"""Bounds on one key's state (``max_user_clicks``, ``max_terminal_labels``; the bounded user
windows are in test_windows.py's brute-force test) and the terminal label index: a terminal
keeps the same labels whatever order they came in, and its index counts as a scan does; the
estimates of a decoded state's memory that bound the worker's caches."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling.features import FeatureConfig, FeatureEngine, TerminalState
from modeling.features.aggregators import LabelIndex
from modeling.features.engine import INDEX_FROM, _scan_labels
from modeling.features.state import terminal_decoded_bytes, user_decoded_bytes
from modeling.records import ClickEvent, Label, Transaction

MIN = 60_000
DAY = 86_400_000
T0 = 1_527_811_200_000  # 2018-06-01

CONFIG = FeatureConfig(
    txn_windows_ms=(10 * MIN, 60 * MIN, 24 * 60 * MIN, 3 * 24 * 60 * MIN, 7 * 24 * 60 * MIN),
    use_clicks=False,
    max_user_transactions=5,
)


def test_user_clicks_are_bounded_oldest_arrived_first() -> None:
    config = FeatureConfig(max_user_clicks=50)
    engine = FeatureEngine(config)
    state = engine.new_user()
    for i in range(200):
        engine.click(state, ClickEvent("u", T0 + i * 1000, "page_view", "s", f"d{i % 3}", "10.0.0.1"))
    assert len(state.clicks) == 50
    assert [c[0] for c in state.clicks] == [T0 + i * 1000 for i in range(150, 200)]
    f = engine.transaction(state, Transaction("t", "u", "T", 1.0, T0 + 200_000), None)
    assert math.isclose(f.tab[config.feature_names.index("c_page_views_1h")], math.log1p(50))


def _labels(n: int, seed: int) -> list[Label]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tx = T0 + rng.randrange(40 * DAY)
        out.append(
            Label(f"x{i:05d}", f"u{i % 7}", "T", rng.random() < 0.1, tx, tx + 7 * DAY + rng.randrange(DAY))
        )
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 40), st.integers(0, 20))
def test_a_full_terminal_keeps_its_latest_transactions_labels_in_any_order(
    seed: int, cap: int, redelivered: int
) -> None:
    """The same labels in two orders (and some delivered twice) leave the same terminal state:
    the ``cap`` labels of the latest transactions among those not expired."""
    config = FeatureConfig(max_terminal_labels=cap)
    engine = FeatureEngine(config)
    labels = _labels(3 * cap + 5, seed)
    shuffled = labels[:]
    random.Random(seed + 1).shuffle(shuffled)
    shuffled += shuffled[:redelivered]
    states = []
    for order in (labels, shuffled):
        ts = TerminalState()
        for lb in order:
            engine.terminal_label(ts, lb)
            assert len(ts.labels) <= cap
        states.append(ts)
    a, b = states
    latest = max(lb.label_time_ms for lb in labels)
    keep_from = latest - config.label_delay_ms - config.terminal_windows_ms[-1] - 2 * DAY
    live = sorted(
        (lb for lb in labels if lb.transaction_time_ms > keep_from),
        key=lambda x: (x.transaction_time_ms, x.transaction_id),
    )
    want = {lb.transaction_id for lb in live[-cap:]}
    # expired entries may linger behind live ones (features skip them by age); the live ones match
    live_ids = lambda ts: {k for k, v in ts.labels.items() if v[0] > keep_from}  # noqa: E731
    assert live_ids(a) == live_ids(b) == want
    te = latest + DAY
    assert engine._terminal_features(a, te) == engine._terminal_features(b, te)


def test_a_terminal_copy_is_independent_and_bounded() -> None:
    config = FeatureConfig(max_terminal_labels=10)
    engine = FeatureEngine(config)
    ts = TerminalState()
    for lb in _labels(30, 3):
        engine.terminal_label(ts, lb)
    assert ts.order is not None
    cp = ts.copy()
    assert cp.labels == ts.labels and cp.order == ts.order and cp.order is not ts.order
    for lb in _labels(30, 4):
        engine.terminal_label(cp, msgspec.structs.replace(lb, transaction_id="y" + lb.transaction_id))
    assert len(cp.labels) == 10 and len(ts.labels) == 10
    assert TerminalState.from_bytes(cp.to_bytes()).labels == cp.labels


HOUR = 3_600_000
# Times in whole hours, so that window edges and "known by" times often fall exactly on a label
label_events = st.lists(
    st.tuples(
        st.integers(0, 39),  # transaction id (repeats: corrections and redeliveries)
        st.integers(0, 40 * 24).map(lambda h: h * HOUR),  # transaction time after T0
        st.integers(0, 10 * 24).map(lambda h: h * HOUR),  # label delay after the transaction
        st.booleans(),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    label_events,
    st.lists(st.integers(0, 60 * 24).map(lambda h: h * HOUR), min_size=1, max_size=8),
    st.integers(1, 30),
)
def test_the_label_index_counts_as_a_scan_of_every_label(
    events: list[tuple[int, int, int, bool]], probes: list[int], cap: int
) -> None:
    """A terminal's index, kept in step through replacements, expiry, the bound and copies,
    gives the counts a scan of every label gives, at any time."""
    config = FeatureConfig(max_terminal_labels=cap)
    engine = FeatureEngine(config)
    ts = TerminalState()
    ts.index = LabelIndex()  # from the start, whatever the number of labels
    wins = config.terminal_windows_ms
    for i, (tid, tx, delay, fraud) in enumerate(events):
        engine.terminal_label(ts, Label(f"x{tid}", "u", "T", fraud, T0 + tx, T0 + tx + delay))
        if i % 17 == 16:
            ts = ts.copy()
        assert len(ts.index) == len(ts.labels)
        # the given times, and every edge this label makes: known from, in each window from/to
        lt, txt = T0 + tx + delay, T0 + tx
        edges = [lt + config.label_allowance_ms, txt + config.label_delay_ms]
        edges += [txt + config.label_delay_ms + w for w in wins]
        for te in [T0 + p for p in probes] + [e + d for e in edges for d in (-1, 0, 1)]:
            end, known_by = te - config.label_delay_ms, te - config.label_allowance_ms
            assert ts.index.result(end, known_by, wins) == _scan_labels(ts, end, known_by, wins)
    rebuilt = LabelIndex(ts.labels.values())
    assert (rebuilt.tx, rebuilt.fraud_tx, rebuilt.by_label_time) == (
        ts.index.tx,
        ts.index.fraud_tx,
        ts.index.by_label_time,
    )


def test_a_big_terminal_gets_its_features_from_the_index() -> None:
    config = FeatureConfig()
    engine = FeatureEngine(config)
    ts = TerminalState()
    for lb in _labels(INDEX_FROM + 10, 5):
        engine.terminal_label(ts, lb)
    assert ts.index is None
    te = T0 + 45 * DAY
    f = engine._terminal_features(ts, te)
    assert ts.index is not None and len(ts.index) == len(ts.labels)
    counts, frauds = _scan_labels(
        ts, te - config.label_delay_ms, te - config.label_allowance_ms, config.terminal_windows_ms
    )
    assert counts[-1] > 0 and sum(frauds) > 0
    want: list[float] = []
    for n, k in zip(counts, frauds, strict=True):
        want += (math.log1p(n), k / n if n else 0.0)
    assert f == tuple(want)


# Run in a fresh interpreter: tracemalloc's count for the same decode moved from 4.1 to 7.0 MB
# (a full terminal) after other tests had run in the process (msgpack's allocations differ).
_MEASURE = r"""
import gc, json, sys, tracemalloc
from modeling.features import FeatureConfig, FeatureEngine, TerminalState, UserState
from modeling.records import ClickEvent, Label, Transaction
DAY, T0 = 86_400_000, 1_527_811_200_000
config = FeatureConfig()
engine = FeatureEngine(config)
probe = Transaction("p", "u", "T", 1.0, T0 + 47 * DAY)

def measured(decode):
    gc.collect()
    tracemalloc.start()
    kept = decode()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size

def terminal(raw):
    ts = TerminalState.from_bytes(raw)
    engine.transaction(engine.new_user(), probe, ts)  # builds the label index, if any
    return ts

out = []
users = [engine.new_user()]
for per_day in (10, 1_000, 5_000):  # clicks, 36-character device ids
    st = engine.new_user()
    for k in range(2 * per_day):
        t = T0 + k * (DAY // per_day)
        engine.click(st, ClickEvent("u", t, "page_view", "s", f"{k % 5:036d}", "10.0.0.1"))
    users.append(st)
for per_day in (1, 10, 300):  # payments over 31 days
    st = engine.new_user()
    for k in range(31 * per_day):
        t = T0 + k * (DAY // per_day)
        engine.transaction(st, Transaction(f"{k:036d}", "u", f"{k % 50:036d}", 12.5, t), None)
    users.append(st)
for st in users:
    raw = st.to_bytes()
    out.append(("user", len(raw), measured(lambda: UserState.from_bytes(raw, config))))
for per_day in (1, 10, 100, 1_000):
    ts = TerminalState()
    for n in range(40 * per_day):
        t = T0 + n * (DAY // per_day)
        engine.terminal_label(ts, Label(f"{n:036d}", f"u{n % 997}", "T", n % 100 == 0, t, t + 7 * DAY))
    raw = ts.to_bytes()
    out.append(("terminal", len(raw), measured(lambda: terminal(raw))))
json.dump(out, sys.stdout)
"""


def test_decoded_state_estimates_stay_within_half_again_of_the_memory_measured() -> None:
    """The worker's decoded-state caches are bounded by these estimates (streams/pipeline.py):
    users with no history, thousands of clicks or of payments; terminals up to the label bound."""
    root = Path(__file__).resolve().parents[3]
    run = subprocess.run([sys.executable, "-c", _MEASURE], cwd=root, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    shapes = json.loads(run.stdout)
    assert len(shapes) == 11
    for kind, snapshot, size in shapes:
        estimate = (user_decoded_bytes if kind == "user" else terminal_decoded_bytes)(snapshot)
        assert 1 / 1.5 <= estimate / size <= 1.5, (kind, snapshot, size)
