"""Offline featurization: a historical file through the one feature engine into training arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, TxnFeatures, stack
from training.history import event_stream, load_history


@dataclass
class FeatureMatrix:
    """One row per transaction, in event-time order."""

    tab: np.ndarray  # float32 [n, F]
    seq: np.ndarray  # float32 [n, N, S]
    y: np.ndarray  # int8 [n] (all zeros when the file has no labels)
    time_ms: np.ndarray  # int64 [n]
    user_id: np.ndarray  # str [n]
    transaction_id: np.ndarray  # str [n]
    amount: np.ndarray  # float64 [n]
    scenario: np.ndarray | None  # int [n], label detail for reporting only (never a feature)
    late: np.ndarray  # bool [n]
    feature_names: tuple[str, ...]
    feature_set: str

    def __len__(self) -> int:
        return len(self.y)

    def select(self, mask: np.ndarray) -> FeatureMatrix:
        return FeatureMatrix(
            self.tab[mask],
            self.seq[mask],
            self.y[mask],
            self.time_ms[mask],
            self.user_id[mask],
            self.transaction_id[mask],
            self.amount[mask],
            None if self.scenario is None else self.scenario[mask],
            self.late[mask],
            self.feature_names,
            self.feature_set,
        )


def featurize_frame(
    txns: pd.DataFrame,
    config: FeatureConfig,
    *,
    clicks: bool = True,
    keep_from_ms: int | None = None,
    progress: bool = False,
    seed: int = 7,
) -> FeatureMatrix:
    """Run every event of ``txns`` (plus synthetic clicks and delayed labels) through the engine.

    All events build state; rows are kept from ``keep_from_ms`` on (state warm-up)."""
    stream = event_stream(txns, config, clicks=clicks, seed=seed)
    runner = FeatureRunner(FeatureEngine(config))
    txns = stream.txns
    n = len(txns)
    tab = np.zeros((n, config.n_features), np.float32)
    seq = np.zeros((n, config.seq_len, config.seq_dim), np.float32)
    late = np.zeros(n, bool)
    it = runner.run(stream.events())
    bar = tqdm(total=n, unit="txn", desc="featurize", disable=not progress, mininterval=1.0)
    # Transactions come out in row order: the frame is time-sorted and ties keep row order.
    # Rows go into the arrays through the live scorer's own stack(), a chunk at a time.
    chunk: list[TxnFeatures] = []
    done = 0
    for _, f in it:
        chunk.append(f)
        if len(chunk) == _CHUNK:
            done = _put(tab, seq, late, done, chunk, config)
            bar.update(len(chunk))
            chunk = []
    done = _put(tab, seq, late, done, chunk, config)
    bar.update(len(chunk))
    bar.close()
    if done != n:
        raise RuntimeError(f"the engine gave {done} feature rows for {n} transactions")
    keep = np.ones(n, bool) if keep_from_ms is None else txns["time_ms"].to_numpy() >= keep_from_ms
    y = txns["is_fraud"].to_numpy().astype(np.int8) if "is_fraud" in txns.columns else np.zeros(n, np.int8)
    scen = txns["scenario"].to_numpy() if "scenario" in txns.columns else None
    m = FeatureMatrix(
        tab,
        seq,
        y,
        txns["time_ms"].to_numpy().astype(np.int64),
        txns["user_id"].to_numpy().astype(str),
        txns["transaction_id"].to_numpy().astype(str),
        txns["amount"].to_numpy().astype(np.float64),
        scen,
        late,
        config.feature_names,
        config.feature_set,
    )
    return m if keep.all() else m.select(keep)


_CHUNK = 4096  # rows stacked at a time


def _put(
    tab: np.ndarray,
    seq: np.ndarray,
    late: np.ndarray,
    at: int,
    chunk: list[TxnFeatures],
    config: FeatureConfig,
) -> int:
    """Rows ``at`` onward from ``chunk``; returns the next free row."""
    if chunk:
        end = at + len(chunk)
        tab[at:end], seq[at:end] = stack(chunk, config)
        late[at:end] = [f.late for f in chunk]
        at = end
    return at


def featurize_file(
    path: str | Path,
    config: FeatureConfig | None = None,
    *,
    start: str | None = None,
    end: str | None = None,
    warmup_days: float = 0.0,
    clicks: bool = True,
    progress: bool = False,
) -> FeatureMatrix:
    """Featurize ``path`` between ``start`` and ``end``; with ``warmup_days`` the state is first
    built from that many days of events before ``start``."""
    config = config or FeatureConfig()
    load_from = None
    if start is not None:
        load_from = pd.Timestamp(start) - pd.Timedelta(days=warmup_days)
    df = load_history(path, load_from, end)
    keep_from = None if start is None else int(pd.Timestamp(start).value // 1_000_000)
    return featurize_frame(df, config, clicks=clicks, keep_from_ms=keep_from, progress=progress)
