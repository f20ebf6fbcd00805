"""Backtest: the live scoring path run offline (no Kafka) over a historical file.

Events go through the same feature engine in event-time order (labels arriving after their
delay) and the same :class:`~modeling.scoring.Scorer`; transactions are batched for inference,
which cannot change a score (rows never interact in the network). With several scorers
(champion/challenger) every model scores the same feature vectors in one pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, TxnFeatures
from modeling.records import Transaction
from modeling.scoring import Scorer
from training.history import event_stream, load_history


@dataclass
class ModelRun:
    version: str
    scores: np.ndarray
    decisions: np.ndarray  # str
    text_scores: np.ndarray  # float, NaN where none
    thresholds: dict[str, float]


@dataclass
class BacktestResult:
    transaction_id: np.ndarray
    user_id: np.ndarray
    time_ms: np.ndarray
    amount: np.ndarray
    y: np.ndarray | None
    scenario: np.ndarray | None
    runs: list[ModelRun] = field(default_factory=list)
    n_events: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.n_events / self.seconds if self.seconds else 0.0


def _ms(x: str | None) -> int | None:
    return None if x is None else int(pd.Timestamp(x).value // 1_000_000)


def backtest(
    path: str | Path,
    scorers: list[Scorer],
    config: FeatureConfig,
    *,
    eval_from: str | None = None,
    eval_until: str | None = None,
    clicks: bool = True,
    batch: int = 4096,
    progress: bool = True,
) -> BacktestResult:
    """Score every transaction of ``path`` before ``eval_until``; metrics count from ``eval_from``
    on, while all earlier events still build user, terminal and label state (warm-up)."""
    df = load_history(path, None, eval_until)
    start_ms = _ms(eval_from)
    stream = event_stream(df, config, clicks=clicks)
    txns_df = stream.txns
    keep = np.ones(len(txns_df), bool) if start_ms is None else txns_df["time_ms"].to_numpy() >= start_ms
    n_keep = int(keep.sum())
    runs_scores = [np.zeros(n_keep, np.float64) for _ in scorers]
    runs_dec = [np.empty(n_keep, dtype=object) for _ in scorers]
    runs_text = [np.full(n_keep, np.nan) for _ in scorers]
    runner = FeatureRunner(FeatureEngine(config))
    buf_tx: list[Transaction] = []
    buf_f: list[TxnFeatures] = []
    filled = 0

    def flush() -> None:
        nonlocal filled
        if not buf_tx:
            return
        for k, sc in enumerate(scorers):
            verdicts = sc.score(buf_tx, buf_f)
            sl = slice(filled, filled + len(verdicts))
            runs_scores[k][sl] = [v.score for v in verdicts]
            runs_dec[k][sl] = [v.decision for v in verdicts]
            runs_text[k][sl] = [np.nan if v.text_score is None else v.text_score for v in verdicts]
        filled += len(buf_tx)
        buf_tx.clear()
        buf_f.clear()

    t0 = time.perf_counter()
    bar = tqdm(total=len(txns_df), unit="txn", desc="backtest", disable=not progress, mininterval=1.0)
    for i, (tx, f) in enumerate(runner.run(stream.events())):
        bar.update()
        if not keep[i]:
            continue
        buf_tx.append(tx)
        buf_f.append(f)
        if len(buf_tx) >= batch:
            flush()
    flush()
    bar.close()
    seconds = time.perf_counter() - t0
    sel = txns_df[keep]
    res = BacktestResult(
        transaction_id=sel["transaction_id"].to_numpy(),
        user_id=sel["user_id"].to_numpy(),
        time_ms=sel["time_ms"].to_numpy(),
        amount=sel["amount"].to_numpy(),
        y=sel["is_fraud"].to_numpy() if "is_fraud" in sel.columns else None,
        scenario=sel["scenario"].to_numpy() if "scenario" in sel.columns else None,
        n_events=len(stream),
        seconds=seconds,
    )
    for k, sc in enumerate(scorers):
        res.runs.append(
            ModelRun(
                sc.version,
                runs_scores[k],
                runs_dec[k].astype(str),
                runs_text[k],
                {"review": sc.thresholds.review, "decline": sc.thresholds.decline},
            )
        )
    return res
