"""Per-user and per-terminal state, with compact versioned snapshots (msgpack, no pickle).

A restored state equals the original: the snapshot keeps the raw entries and the aggregates
are rebuilt from them, which is exact because amounts are integer cents.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgpack

from modeling.errors import StateError
from modeling.features.aggregators import DistinctAgg, WindowAgg
from modeling.features.config import FeatureConfig

USER_STATE_MAGIC = b"RSU"
TERMINAL_STATE_MAGIC = b"RST"
STATE_FORMAT_VERSION = 1


class UserState:
    """One user's behaviour: transaction windows, the recent sequence, clicks and known frauds."""

    __slots__ = (
        "aggs",
        "applied",
        "base",
        "click_last_ms",
        "clicks",
        "devices",
        "frauds",
        "heads",
        "hist",
        "logins",
        "n_seen",
        "prev_ms",
        "seq",
        "terms",
        "txn_last_ms",
    )

    def __init__(self, config: FeatureConfig) -> None:
        n = len(config.txn_windows_ms)
        self.txn_last_ms = -1  # the user's transaction watermark (effective time of the latest)
        self.prev_ms = -1  # effective time of the previous transaction added to the windows
        self.n_seen = 0  # absolute index of the next transaction entering ``hist``
        self.base = 0  # absolute index of hist[0]
        self.hist: deque[tuple[int, int, str]] = deque()  # (time_ms, cents, terminal)
        self.heads = [0] * n  # absolute index of the oldest entry inside each window
        self.aggs = [WindowAgg() for _ in range(n)]
        self.terms = DistinctAgg()  # terminals inside the longest window
        self.seq: deque[tuple[float, ...]] = deque(maxlen=max(config.seq_len - 1, 0))
        self.clicks: deque[tuple[int, str, str, str]] = deque()  # (time_ms, type, device, ip)
        self.click_last_ms = -1
        self.devices: dict[str, int] = {}  # device -> first seen (ms)
        self.logins: list[int] = []  # recent login times, ascending
        self.frauds: dict[str, tuple[int, int]] = {}  # confirmed frauds: tx id -> (tx time, label time)
        # Source positions already folded in (e.g. Kafka offset per input topic), so that a
        # batch re-delivered after a crash is not applied twice. The offline path leaves it empty.
        self.applied: dict[str, int] = {}

    # ----------------------------------------------------------------------------- snapshot

    def to_bytes(self) -> bytes:
        body = [
            STATE_FORMAT_VERSION,
            self.txn_last_ms,
            self.prev_ms,
            self.n_seen,
            self.base,
            [list(e) for e in self.hist],
            [list(s) for s in self.seq],
            [list(c) for c in self.clicks],
            self.click_last_ms,
            self.devices,
            self.logins,
            {k: list(v) for k, v in self.frauds.items()},
            self.applied,
        ]
        out: bytes = USER_STATE_MAGIC + msgpack.packb(body, use_bin_type=True)
        return out

    @classmethod
    def from_bytes(cls, data: bytes, config: FeatureConfig) -> UserState:
        body = _unpack(data, USER_STATE_MAGIC, "user")
        try:
            (
                _,
                txn_last,
                prev,
                n_seen,
                base,
                hist,
                seq,
                clicks,
                click_last,
                devices,
                login,
                frauds,
                applied,
            ) = body
            st = cls(config)
            st.txn_last_ms, st.prev_ms, st.n_seen, st.base = txn_last, prev, n_seen, base
            st.hist = deque((int(t), int(c), str(term)) for t, c, term in hist)
            st.seq.extend(tuple(float(x) for x in s) for s in seq)
            st.clicks = deque((int(t), str(k), str(d), str(ip)) for t, k, d, ip in clicks)
            st.click_last_ms = click_last
            st.devices = {str(k): int(v) for k, v in devices.items()}
            st.logins = [int(x) for x in login]
            st.frauds = {str(k): (int(a), int(b)) for k, (a, b) in frauds.items()}
            st.applied = {str(k): int(v) for k, v in applied.items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"user state snapshot is malformed: {exc}") from None
        st._rebuild(config)
        return st

    def _rebuild(self, config: FeatureConfig) -> None:
        """Recompute window aggregates from ``hist`` as the incremental path left them."""
        for j, w in enumerate(config.txn_windows_ms):
            cutoff = self.txn_last_ms - w
            agg = self.aggs[j]
            agg.initialize()
            head = self.n_seen
            for k, (t, cents, _) in enumerate(self.hist):
                if t > cutoff:
                    idx = self.base + k
                    head = min(head, idx)
                    agg.update(idx, cents)
            self.heads[j] = head
        self.terms.initialize()
        for _, _, term in self.hist:
            self.terms.update(term)


class TerminalState:
    """Labelled transactions seen at one terminal: tx id -> ``(tx time, label time, is_fraud)``.
    A later label for the same transaction replaces the earlier one (corrections, redelivery)."""

    __slots__ = ("labels", "latest_label_ms")

    def __init__(self) -> None:
        self.labels: dict[str, tuple[int, int, int]] = {}
        self.latest_label_ms = -1

    def to_bytes(self) -> bytes:
        body = [STATE_FORMAT_VERSION, self.latest_label_ms, {k: list(v) for k, v in self.labels.items()}]
        out: bytes = TERMINAL_STATE_MAGIC + msgpack.packb(body, use_bin_type=True)
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> TerminalState:
        body = _unpack(data, TERMINAL_STATE_MAGIC, "terminal")
        try:
            _, latest, labels = body
            st = cls()
            st.latest_label_ms = int(latest)
            st.labels = {str(k): (int(a), int(b), int(c)) for k, (a, b, c) in labels.items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"terminal state snapshot is malformed: {exc}") from None
        return st


def _unpack(data: bytes, magic: bytes, what: str) -> list[Any]:
    if not isinstance(data, bytes | bytearray | memoryview) or bytes(data[:3]) != magic:
        raise StateError(f"not a riskstream {what} state snapshot", magic=bytes(data[:3]))
    try:
        body = msgpack.unpackb(bytes(data[3:]), raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise StateError(f"{what} state snapshot is corrupt: {exc}") from None
    if not isinstance(body, list) or not body or body[0] != STATE_FORMAT_VERSION:
        version = body[0] if isinstance(body, list) and body else None
        raise StateError(
            f"{what} state snapshot has format version {version!r}; this build reads {STATE_FORMAT_VERSION}"
        )
    return body
