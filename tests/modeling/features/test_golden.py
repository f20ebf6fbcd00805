"""The feature vectors are pinned to the feature set's identity.

A served model carries the ``feature_set`` it was trained on, and the worker refuses a model
whose feature set differs from the one it computes (``FeatureSetMismatch``). That identity hashes
the config, the feature names and ``FEATURE_ENGINE_VERSION``, not the code: an edit to the
feature code that changes the vectors without a new version would feed every served model
vectors it was never trained on, silently. This test pins the vectors of a fixed sample (150
customers of handbook_2w, about 4k transactions with their clicks and labels) to the feature set,
column by column.

When it fails on purpose (the features were meant to change): bump ``FEATURE_ENGINE_VERSION`` in
``modeling/features/config.py`` (models trained before are then refused until retrained) and
write the new pins with ``python tests/modeling/features/test_golden.py --write``.

Each column is pinned by a hash of its float32 values rounded to 4 decimals: any change of a
value by more than about 1e-4 shows, while a last-bit difference of another platform's libm
(which the float32 rounding absorbs almost always) does not fail the test.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, stack
from modeling.features.config import SEQ_FIELDS
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "handbook_2w.parquet"
PINS = Path(__file__).with_name("golden_features.json")
N_USERS = 150


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.round(values.astype(np.float64), 4).tobytes()).hexdigest()[:16]


Vectors = tuple[np.ndarray, np.ndarray, int]  # tab, seq, how many transactions came late


def vectors(config: FeatureConfig) -> Vectors:
    """The sample's ``tab`` and ``seq`` arrays, and how many of its transactions came late."""
    df = load_history(DATA)
    users = sorted(df["user_id"].unique())[:N_USERS]
    sample = df[df["user_id"].isin(users)].reset_index(drop=True)
    runner = FeatureRunner(FeatureEngine(config))
    feats = [f for _, f in runner.run(event_stream(sample, config).events())]
    tab, seq = stack(feats, config)
    return tab, seq, sum(f.late for f in feats)


def compute(config: FeatureConfig, arrays: Vectors | None = None) -> dict[str, object]:
    """The pins of ``config``'s vectors over the sample (``arrays``: :func:`vectors`, if done)."""
    tab, seq, late = arrays if arrays is not None else vectors(config)
    return {
        "feature_engine_version": config.version,
        "feature_set": config.feature_set,
        "transactions": len(tab),
        "late": late,
        "tab": {name: _digest(tab[:, j]) for j, name in enumerate(config.feature_names)},
        "seq": {name: _digest(seq[:, :, k]) for k, name in enumerate(SEQ_FIELDS)},
    }


@pytest.fixture(scope="module")
def pinned() -> dict[str, object]:
    return dict(json.loads(PINS.read_text()))


@pytest.fixture(scope="module")
def sample_vectors() -> Vectors:
    return vectors(FeatureConfig())


def test_the_sample_exercises_every_feature(sample_vectors: Vectors) -> None:
    # A pin over a column that never varies in the sample would catch little.
    config = FeatureConfig()
    tab, seq, _ = sample_vectors
    assert len(tab) > 3_000
    constant = [n for j, n in enumerate(config.feature_names) if np.unique(tab[:, j]).size < 2]
    constant += [n for k, n in enumerate(SEQ_FIELDS) if np.unique(seq[:, :, k]).size < 2]
    # The simulated clickstream gives an online transaction its session's device, whose clicks
    # come first: no transaction here has an unknown device.
    assert constant == ["c_txn_device_unknown"]


def test_vectors_match_their_feature_set(pinned: dict[str, object], sample_vectors: Vectors) -> None:
    config = FeatureConfig()
    where = f"{PINS.name}: python tests/modeling/features/test_golden.py --write"
    pinned_version, pinned_set = pinned["feature_engine_version"], pinned["feature_set"]
    assert pinned_version == config.version, (
        f"FEATURE_ENGINE_VERSION is {config.version}, the pins are for {pinned_version}; regenerate {where}"
    )
    assert pinned_set == config.feature_set, (
        f"the default feature set is now {config.feature_set}, the pins are for {pinned_set}; "
        f"regenerate {where}"
    )
    got = compute(config, sample_vectors)
    changed = [
        f"{part}.{name}"
        for part in ("tab", "seq")
        for name, digest in got[part].items()  # type: ignore[attr-defined]
        if pinned[part].get(name) != digest  # type: ignore[attr-defined]
    ]
    assert not changed and got["transactions"] == pinned["transactions"] and got["late"] == pinned["late"], (
        f"the feature vectors changed while the feature set stayed {config.feature_set}: "
        f"{changed or 'row counts'}. "
        "Models trained on the previous vectors would be served these. If intended, bump "
        f"FEATURE_ENGINE_VERSION in modeling/features/config.py and regenerate {where}."
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/modeling/features/test_golden.py --write")
    PINS.write_text(json.dumps(compute(FeatureConfig()), indent=1) + "\n")
    print(f"wrote {PINS}")
