"""A real trained and published behaviour model for the worker tests (trained once per session
on the first ten days of handbook_2w through the one feature engine)."""

from __future__ import annotations

import gc
from collections.abc import Generator, Iterator
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


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Unclosed sockets and clients surface (as errors, under ``-W error``) in the test that left
    them, not in whichever later test the garbage collector happens to run in: CI once failed a
    shadow-model test on a token server's socket that the OAuth test module had left open."""
    yield
    gc.collect()


WORKER_LOG_LINES = 150


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """A failed test's report carries the tail of every worker log in its ``tmp_path``: CI
    deletes its temporary folder, and session 27's failed run (a restarted worker that scored
    nothing; the seek race, DEVELOPERS.md, Faust behaviour 7) left nothing to read but the
    assertion."""
    outcome = yield
    report = outcome.get_result()
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if not report.failed or not isinstance(tmp, Path):
        return
    for log in sorted(tmp.glob("worker-*.log")):
        lines = log.read_text(errors="replace").splitlines()
        report.sections.append(
            (
                f"{log.name} (last {WORKER_LOG_LINES} of {len(lines)} lines)",
                "\n".join(lines[-WORKER_LOG_LINES:]),
            )
        )
