"""The message window every run reads, the window state it starts from, and the model it scores
with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workerbench.config import DATA, DAY_MS

# ------------------------------------------------------------------------------------ messages


@dataclass
class Messages:
    events: list[Any]
    counts: dict[str, int]
    first_txn: int  # index of the first and the last transaction in ``events``
    last_txn: int
    window: tuple[int, int]  # event-time range [ms]
    bytes: int
    history: list[Any] = field(default_factory=list)  # the file's events before the window

    @property
    def n_txn(self) -> int:
        return self.counts["transactions"]

    @property
    def between_txns(self) -> int:
        """Input messages from the first to the last transaction, both included."""
        return self.last_txn - self.first_txn + 1


def event_time(ev: Any) -> int:
    from modeling.records import Label

    return int(ev.label_time_ms if isinstance(ev, Label) else ev.event_time_ms)


def load_messages(path: Path, n_txn: int, start_day: float) -> Messages:
    import orjson

    from modeling.features import FeatureConfig
    from modeling.records import ClickEvent, Transaction
    from training.history import event_stream, load_history

    df = load_history(path)
    stream = event_stream(df, FeatureConfig())
    t0 = int(df["time_ms"].min()) + int(start_day * DAY_MS)
    events: list[Any] = []
    history: list[Any] = []
    n = 0
    for ev in stream.events():
        if event_time(ev) < t0:
            history.append(ev)
            continue
        if isinstance(ev, Transaction):
            if n == n_txn:
                break
            n += 1
        events.append(ev)
    kinds = [
        "transactions" if isinstance(e, Transaction) else "clicks" if isinstance(e, ClickEvent) else "labels"
        for e in events
    ]
    tx_idx = [i for i, k in enumerate(kinds) if k == "transactions"]
    counts = {k: kinds.count(k) for k in ("transactions", "clicks", "labels")}
    counts["messages"] = len(events)
    size = sum(len(orjson.dumps(e.to_dict())) for e in events)
    return Messages(
        events, counts, tx_idx[0], tx_idx[-1], (event_time(events[0]), event_time(events[-1])), size, history
    )


@dataclass
class WarmState:
    """Window state as of the message window's start: every event of the file before it, run
    through the feature engine (what ``riskstream warmup`` seeds). Serialized once, written into
    each run's changelog before its process starts, so every run starts from the same state."""

    users: dict[str, bytes]
    terminals: dict[str, bytes]
    transactions: int
    user_bytes_mean: float


def build_warm_state(history: list[Any]) -> WarmState:
    from modeling.features import FeatureConfig, FeatureEngine
    from streams.warmup import build_state, snapshots

    runner, n = build_state(history, FeatureEngine(FeatureConfig()))
    users, terms = snapshots(runner)
    mean = sum(map(len, users.values())) / max(len(users), 1)
    return WarmState(users, terms, n, mean)


# ------------------------------------------------------------------------------------ model


def train_registry(root: Path) -> Path:
    """Train and publish a real behaviour model (as tests/integration/conftest.py does)."""
    from modeling.features import FeatureConfig
    from modeling.registry import ModelRegistry
    from training.bundle import point_in_time_split, train_and_publish_matrix
    from training.featurize import featurize_frame
    from training.history import load_history
    from training.trainer import TrainConfig

    df = load_history(DATA, "2018-06-01", "2018-06-11")
    m = featurize_frame(df, FeatureConfig())
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
