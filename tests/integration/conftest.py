"""A real trained and published behaviour model for the worker tests (trained once per session
on the first ten days of handbook_2w through the one feature engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeling.features import FeatureConfig
from modeling.registry import ModelRegistry
from training.bundle import point_in_time_split, train_and_publish_matrix
from training.featurize import featurize_frame
from training.history import load_history
from training.trainer import TrainConfig

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "handbook_2w.parquet"


@pytest.fixture(scope="session")
def model_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    config = FeatureConfig()
    df = load_history(DATA, "2018-06-01", "2018-06-11")
    m = featurize_frame(df, config)
    start, end = int(m.time_ms.min()), int(m.time_ms.max()) + 1
    split = point_in_time_split(m.time_ms, start, end, val_days=2, delay_days=0)
    train_and_publish_matrix(
        m,
        split,
        net_overrides={},
        train_cfg=TrainConfig(epochs=2, progress=False, device="cpu"),
        registry=ModelRegistry(root),
        source=str(DATA),
    )
    return root
