"""The one feature definition: windows, delays, the ordered feature names and the feature-set
identity that models record and the scorer checks before serving."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Final

import orjson

FEATURE_ENGINE_VERSION = 2

# Final: compiled by mypyc (modeling/native.py), these are C constants, not globals looked up
# by name on every use
MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS


def _window_label(ms: int) -> str:
    if ms % DAY_MS == 0:
        return f"{ms // DAY_MS}d"
    if ms % HOUR_MS == 0:
        return f"{ms // HOUR_MS}h"
    return f"{ms // MINUTE_MS}m"


# Fields of one step of the behaviour sequence (the user's last N transactions).
SEQ_FIELDS: tuple[str, ...] = (
    "present",
    "log_amount",
    "log_secs_since_prev",
    "amount_vs_mean_30d",
    "new_terminal",
    "hour_sin",
    "hour_cos",
    "log_count_1d",
)

CLICK_FEATURES: tuple[str, ...] = (
    "c_logins_1h",
    "c_logins_24h",
    "c_failed_logins_1h",
    "c_failed_logins_24h",
    "c_distinct_devices_24h",
    "c_distinct_ips_24h",
    "c_new_devices_24h",
    "c_password_changes_24h",
    "c_payees_added_24h",
    "c_log_secs_since_login",
    "c_page_views_1h",
    "c_txn_device_unknown",
)


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that shapes the feature vectors. Two engines with equal configs produce equal
    vectors for equal event sequences; :attr:`feature_set` identifies the config."""

    txn_windows_ms: tuple[int, ...] = (10 * MINUTE_MS, HOUR_MS, DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
    terminal_windows_ms: tuple[int, ...] = (DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
    click_windows_ms: tuple[int, ...] = (HOUR_MS, DAY_MS)
    seq_len: int = 16
    label_delay_ms: int = 7 * DAY_MS
    # A label counts only once known for this long: covers label propagation across workers.
    label_allowance_ms: int = HOUR_MS
    # Out-of-order events up to this far behind the user's latest event are folded into the
    # state at the user's latest time; older ones are scored but leave the state untouched.
    allowed_lateness_ms: int = HOUR_MS
    known_fraud_window_ms: int = 30 * DAY_MS
    max_known_devices: int = 32
    # A user with no event for longer than this starts over: the next event finds a new state
    # (its source offsets kept). Bounds what is kept about a user (a state table that does not
    # grow with every user ever seen, data minimization) and lets the live worker delete dormant
    # states from its table (streams/retention.py) with the same vectors as keeping them.
    user_retention_ms: int = 365 * DAY_MS
    # Bounds on one key's state, whatever its volume (a bot's clickstream, a merchant taking
    # thousands of payments a day): its snapshot must fit one changelog record and its features
    # must not cost more per event as it grows (DEVELOPERS.md, "Bounds on one key's state"). Past a bound
    # the oldest entries go first: a user's oldest transactions leave every window early, its
    # oldest-arrived clicks are forgotten, and a terminal keeps the labels of its latest
    # transactions (the least (transaction time, id) goes: the same set whatever order the
    # labels came in). Vectors of keys within the bounds are unchanged.
    max_user_transactions: int = 5_000
    max_user_clicks: int = 5_000
    max_terminal_labels: int = 10_000
    use_clicks: bool = True
    version: int = field(default=FEATURE_ENGINE_VERSION)

    def __post_init__(self) -> None:
        if list(self.txn_windows_ms) != sorted(set(self.txn_windows_ms)) or not self.txn_windows_ms:
            raise ValueError("txn_windows_ms must be strictly increasing and non-empty")
        if list(self.terminal_windows_ms) != sorted(set(self.terminal_windows_ms)):
            raise ValueError("terminal_windows_ms must be strictly increasing")
        if self.click_windows_ms != (HOUR_MS, DAY_MS):
            raise ValueError("click_windows_ms is fixed at (1h, 24h) in this engine version")
        if self.seq_len < 1:
            raise ValueError("seq_len must be >= 1")
        if min(self.max_user_transactions, self.max_user_clicks, self.max_terminal_labels) < 1:
            raise ValueError("max_user_transactions, max_user_clicks and max_terminal_labels must be >= 1")
        if self.user_retention_ms < max(self.txn_windows_ms[-1], self.known_fraud_window_ms):
            raise ValueError("user_retention_ms must cover the longest transaction and known-fraud windows")

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        names = ["amount_log"]
        for w in self.txn_windows_ms:
            lab = _window_label(w)
            names += [f"u_count_{lab}", f"u_sum_{lab}", f"u_mean_{lab}", f"u_max_{lab}"]
        long = _window_label(self.txn_windows_ms[-1])
        week = "7d" if 7 * DAY_MS in self.txn_windows_ms else long
        names += [
            f"amount_vs_mean_{week}",
            f"amount_vs_mean_{long}",
            f"amount_zscore_{long}",
            f"amount_vs_max_{long}",
            "u_log_secs_since_prev",
            "u_has_prev",
            f"u_distinct_terminals_{long}",
            "u_new_terminal",
            "hour_sin",
            "hour_cos",
            "is_weekend",
            "is_night",
        ]
        names += list(CLICK_FEATURES)
        for w in self.terminal_windows_ms:
            lab = _window_label(w)
            names += [f"t_count_{lab}", f"t_risk_{lab}"]
        names += ["u_known_frauds_30d", "u_has_known_fraud"]
        return tuple(names)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def seq_dim(self) -> int:
        return len(SEQ_FIELDS)

    @cached_property
    def feature_set(self) -> str:
        """Identity of the feature set: a hash of names, order, windows, delays and version."""
        desc = {"config": asdict(self), "names": self.feature_names, "seq": SEQ_FIELDS}
        digest = hashlib.sha256(orjson.dumps(desc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
        return f"fs{self.version}-{digest}"
