"""stack(): the model's input arrays, shared by the live scorer and the trainer, equal numpy's
own float32 conversion of the same features bit for bit, whether the engine packed them or not."""

from __future__ import annotations

import dataclasses
import random
import struct
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, TxnFeatures, UserState, stack
from modeling.records import ClickEvent, Label, Transaction
from training.history import event_stream, load_history

CONFIG = FeatureConfig()
NF, WIDTH, DIM = CONFIG.n_features, CONFIG.seq_len, CONFIG.seq_dim

# Every double, float32's range included: values between float32 steps, subnormals, ±0, ±inf, NaN.
doubles = st.floats(allow_nan=True, allow_infinity=True, min_value=None, max_value=None).filter(
    lambda x: not np.isfinite(x) or abs(x) <= float(np.finfo(np.float32).max)
)
steps = st.tuples(*[doubles] * DIM)
features = st.builds(
    TxnFeatures,
    st.tuples(*[doubles] * NF),
    st.lists(steps, min_size=0, max_size=WIDTH).map(tuple),
    st.booleans(),
)


def numpy_stack(feats: list[TxnFeatures]) -> tuple[np.ndarray, np.ndarray]:
    """The conversion stack() replaced: numpy's, row by row."""
    tab = np.zeros((len(feats), NF), np.float32)
    seq = np.zeros((len(feats), WIDTH, DIM), np.float32)
    for i, f in enumerate(feats):
        tab[i] = f.tab
        if f.seq:
            seq[i, WIDTH - len(f.seq) :] = f.seq
    return tab, seq


@settings(max_examples=150, deadline=None)
@given(st.lists(features, max_size=12))
def test_stack_equals_numpy_conversion_bit_for_bit(feats: list[TxnFeatures]) -> None:
    tab, seq = stack(feats, CONFIG)
    want_tab, want_seq = numpy_stack(feats)
    assert tab.dtype == seq.dtype == np.float32
    assert tab.shape == (len(feats), NF) and seq.shape == (len(feats), WIDTH, DIM)
    # the same bits, NaN payloads aside (compared as NaN)
    assert np.array_equal(tab, want_tab, equal_nan=True)
    assert np.array_equal(seq, want_seq, equal_nan=True)
    assert np.array_equal(np.signbit(tab), np.signbit(want_tab))


def test_stack_pads_short_sequences_at_the_front_and_gives_writable_arrays() -> None:
    step = tuple(float(k + 1) for k in range(DIM))
    f = TxnFeatures(tuple(0.5 for _ in range(NF)), (step, step), False)
    tab, seq = stack([f], CONFIG)
    assert not seq[0, : WIDTH - 2].any()
    assert seq[0, WIDTH - 1].tolist() == list(step)
    tab[0, 0] = 1.0  # owned arrays: a caller may write
    seq[0, 0, 0] = 1.0
    assert stack([], CONFIG)[0].shape == (0, NF)


@pytest.mark.parametrize(
    ("feats", "match"),
    [
        ([TxnFeatures((0.0,) * (NF - 1), (), False)], "do not match the config"),
        ([TxnFeatures((0.0,) * NF, (((0.0,) * (DIM + 1)),), False)], "do not match the config"),
        ([TxnFeatures((0.0,) * NF, ((0.0,) * DIM,) * (WIDTH + 1), False)], "longer than"),
        ([TxnFeatures((1e39,) + (0.0,) * (NF - 1), (), False)], "float32 range"),
    ],
)
def test_stack_refuses_features_that_do_not_fit(feats: list[TxnFeatures], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stack(feats, CONFIG)


# ------------------------------------------------------------------ features the engine packed

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "handbook_2w.parquet"


def _packed_steps(st: UserState, dim: int) -> bytes:
    pack = struct.Struct(f"={dim}f").pack
    return b"".join(pack(*s) for s in st.seq)


@pytest.mark.parametrize("seq_len", [1, 2, 16])
def test_engine_packs_what_stack_packs_through_late_events_snapshots_and_resets(seq_len: int) -> None:
    """TxnFeatures.packed, built from the user's packed steps, gives stack() the very bytes it
    packs from the floats: with late and redelivered (not folded) transactions, states restored
    from snapshots mid-stream, and dormant users starting over; and a user's packed steps always
    equal its steps packed."""
    config = FeatureConfig(seq_len=seq_len)
    engine = FeatureEngine(config)
    events = list(event_stream(load_history(DATA).head(6_000), config).events())
    # some transactions arrive 3,000 events (hours) behind: late where their user moved on
    rng = random.Random(seq_len)
    for i in sorted(rng.sample(range(len(events) - 3_000), 300), reverse=True):
        if isinstance(events[i], Transaction):
            events.insert(i + 3_000, events.pop(i))
    runner = FeatureRunner(engine)
    feats: list[TxnFeatures] = []
    n_late = n_refeatured = 0
    for k, ev in enumerate(events):
        if isinstance(ev, Transaction):
            f = runner.on_transaction(ev)
            feats.append(f)
            n_late += f.late
            if k % 7 == 0:  # redelivered: featurized again without folding
                feats.append(engine.transaction(runner.users[ev.user_id], ev, None, fold=False))
                n_refeatured += 1
        elif isinstance(ev, ClickEvent):
            runner.on_click(ev)
        else:
            runner.on_label(ev)
        if k % 500 == 499:  # every state from its snapshot, as a restarted worker reads them
            runner.users = {u: UserState.from_bytes(s.to_bytes(), config) for u, s in runner.users.items()}
        st = runner.users.get(ev.user_id)
        if st is not None and st.seq_packed is not None:
            assert st.seq_packed == _packed_steps(st, config.seq_dim)
    # a user dormant past the retention starts over
    uid = next(iter(runner.users))
    last = [e for e in events if isinstance(e, Transaction)][-1]
    latest = max(e.label_time_ms if isinstance(e, Label) else e.event_time_ms for e in events)
    back = latest + config.user_retention_ms + 1
    again = msgspec.structs.replace(last, user_id=uid, event_time_ms=back)
    feats.append(runner.on_transaction(again))
    assert feats[-1].seq == (feats[-1].seq[-1],) and runner.users[uid].seq_packed == _packed_steps(
        runner.users[uid], config.seq_dim
    )
    assert n_late > 0 and n_refeatured > 0
    assert all(f.packed is not None for f in feats)
    tab, seq = stack(feats, config)
    want_tab, want_seq = stack([dataclasses.replace(f, packed=None) for f in feats], config)
    assert np.array_equal(tab, want_tab) and np.array_equal(seq, want_seq)
    assert tab.shape == (len(feats), config.n_features) and seq.shape == (len(feats), seq_len, config.seq_dim)


def test_a_step_out_of_float32_range_is_refused_by_stack_and_its_user_repacked_later() -> None:
    config = FeatureConfig()
    engine = FeatureEngine(config)
    events = event_stream(load_history(DATA).head(400), config, clicks=False, labels=False).events()
    txns = [e for e in events if isinstance(e, Transaction)]
    uid = txns[0].user_id
    mine = [t for t in txns if t.user_id == uid]
    st = engine.new_user()
    engine.transaction(st, mine[0], None)
    st.seq.append((1e39,) * config.seq_dim)  # what no engine writes: a corrupt restored step
    st.seq_packed = None
    later = msgspec.structs.replace(mine[0], event_time_ms=mine[0].event_time_ms + 1000)
    f = engine.transaction(st, later, None)
    assert f.packed is None and st.seq_packed is None
    with pytest.raises(ValueError, match="float32 range"):
        stack([f], config)
    st.seq.clear()  # repaired: the next transaction packs its steps again
    f = engine.transaction(st, msgspec.structs.replace(later, event_time_ms=later.event_time_ms + 1000), None)
    assert f.packed is not None and st.seq_packed == _packed_steps(st, config.seq_dim)
