"""stack(): the model's input arrays, shared by the live scorer and the trainer, equal numpy's
own float32 conversion of the same features bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling.features import FeatureConfig, TxnFeatures, stack

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
