"""The one feature definition, shared by the live agents, the backtest and the trainer."""

from modeling.features.config import SEQ_FIELDS, FeatureConfig
from modeling.features.engine import FeatureEngine, TxnFeatures, stack
from modeling.features.retention import (
    Watermark,
    expiry_cutoff,
    is_expired,
    terminal_expiry_cutoff,
    terminal_is_expired,
)
from modeling.features.runner import Event, FeatureRunner
from modeling.features.state import TerminalState, UserState, snapshot_last_activity_ms

__all__ = [
    "SEQ_FIELDS",
    "Event",
    "FeatureConfig",
    "FeatureEngine",
    "FeatureRunner",
    "TerminalState",
    "TxnFeatures",
    "UserState",
    "Watermark",
    "expiry_cutoff",
    "is_expired",
    "snapshot_last_activity_ms",
    "stack",
    "terminal_expiry_cutoff",
    "terminal_is_expired",
]
