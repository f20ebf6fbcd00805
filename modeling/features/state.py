"""Per-user and per-terminal state, with compact versioned snapshots (msgpack, no pickle).

Snapshots are written by msgspec's msgpack encoder (4.3 µs against 8.7 µs per user state with
msgpack-python, the same bytes: tested) and read by msgpack-python, whose ``use_list=False``
gives back the tuples the features are built from.

A restored state equals the original: the snapshot keeps the raw entries and the aggregates
are rebuilt from them, which is exact because amounts are integer cents.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from hashlib import blake2b as _blake2b
from typing import Any, Final

import msgpack
import msgspec

from modeling.errors import StateError, StateVersionError
from modeling.features.aggregators import ClickWindows, DistinctAgg, LabelIndex, WindowAgg
from modeling.features.config import FeatureConfig

USER_STATE_MAGIC: Final = b"RSU"
TERMINAL_STATE_MAGIC: Final = b"RST"
# Format versions of the snapshots this build writes, and those it reads. User format 2 added
# the user's recent transaction ids (``UserState.recent_ids``); a format-1 snapshot reads with
# none. A build that reads only format 1 stops on a format-2 snapshot (StateVersionError).
USER_STATE_FORMAT: Final = 2
USER_STATE_FORMATS_READ: Final = (1, 2)
TERMINAL_STATE_FORMAT: Final = 1
# How many of a user's latest transaction ids a state remembers: a transaction whose id is
# among them is a duplicate (an upstream producer's retry at a new offset), neither folded into
# the windows nor scored again (FeatureEngine.duplicate). Kept as 64-bit keys (txn_key): 9
# bytes each in a snapshot, where a UUID would take 37, and the same chance of two ids
# colliding in one user's 16 as of winning nothing at all (16 / 2**64).
RECENT_TXN_IDS: Final = 16


class UserState:
    """One user's behaviour: transaction windows, the recent sequence, clicks and known frauds."""

    __slots__ = (
        "aggs",
        "applied",
        "base",
        "click_index",
        "click_last_ms",
        "clicks",
        "devices",
        "frauds",
        "heads",
        "hist",
        "logins",
        "n_seen",
        "prev_ms",
        "recent_ids",
        "seq",
        "seq_packed",
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
        # ``seq``'s steps packed to float32 as the model reads them, oldest first (derived, never
        # serialized: the engine keeps it up to date; None: to be packed again from ``seq``)
        self.seq_packed: bytes | None = b""
        self.clicks: deque[tuple[int, str, str, str]] = deque()  # (time_ms, type, device, ip)
        self.click_last_ms = -1
        # the click features' windows over ``clicks`` (derived, never serialized: ClickWindows)
        self.click_index: ClickWindows | None = None
        self.devices: dict[str, int] = {}  # device -> first seen (ms)
        self.logins: list[int] = []  # recent login times, ascending
        self.frauds: dict[str, tuple[int, int]] = {}  # confirmed frauds: tx id -> (tx time, label time)
        # Source positions already folded in (e.g. Kafka offset per input topic), so that a
        # batch re-delivered after a crash is not applied twice. The offline path leaves it empty.
        self.applied: dict[str, int] = {}
        # Keys (txn_key) of the ids of the user's latest transactions folded in, oldest first.
        self.recent_ids: deque[int] = deque(maxlen=RECENT_TXN_IDS)

    def last_activity_ms(self) -> int:
        """Time of the latest event folded in: transaction, click or fraud label (-1: none)."""
        last = self.txn_last_ms if self.txn_last_ms > self.click_last_ms else self.click_last_ms
        for _, label_ms in self.frauds.values():
            if label_ms > last:
                last = label_ms
        return last

    def reset(self, config: FeatureConfig) -> None:
        """Forget the user's behaviour (a dormant user starting over); the source offsets and the
        recent transaction ids stay, so a redelivered or duplicated event is still not applied
        twice."""
        applied, recent = self.applied, self.recent_ids
        self.__init__(config)  # type: ignore[misc]
        self.applied, self.recent_ids = applied, recent

    # ----------------------------------------------------------------------------- snapshot

    def to_bytes(self) -> bytes:
        body = [
            USER_STATE_FORMAT,
            self.txn_last_ms,
            self.prev_ms,
            self.n_seen,
            self.base,
            list(self.hist),  # msgpack writes tuples as arrays
            list(self.seq),
            list(self.clicks),
            self.click_last_ms,
            self.devices,
            self.logins,
            self.frauds,
            self.applied,
            list(self.recent_ids),
        ]
        out: bytes = USER_STATE_MAGIC + _pack(body)
        return out

    @classmethod
    def from_bytes(cls, data: bytes, config: FeatureConfig) -> UserState:
        body = _unpack(data, USER_STATE_MAGIC, "user", USER_STATE_FORMATS_READ)
        try:
            if body[0] == 1:  # format 1: no recent transaction ids
                body = (*body, ())
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
                logins,
                frauds,
                applied,
                recent,
            ) = body
            st = cls(config)
            st.txn_last_ms, st.prev_ms, st.n_seen, st.base = int(txn_last), int(prev), int(n_seen), int(base)
            st.hist = deque(hist)
            st.seq.extend(seq)
            st.seq_packed = None  # packed from the steps at the user's next transaction
            st.clicks = deque(clicks)
            st.click_last_ms = int(click_last)
            st.devices = dict(devices)
            st.logins = list(logins)
            st.frauds = dict(frauds)
            st.applied = dict(applied)
            st.recent_ids.extend(recent)
            st._rebuild(config)
        except (TypeError, ValueError, AttributeError, IndexError) as exc:
            raise StateError(f"user state snapshot is malformed: {exc}") from None
        return st

    def _rebuild(self, config: FeatureConfig) -> None:
        """Recompute window aggregates from ``hist`` exactly as the incremental path left them."""
        times = [e[0] for e in self.hist]
        cents = [e[1] for e in self.hist]
        n = len(times)
        for j, w in enumerate(config.txn_windows_ms):
            k = bisect_right(times, self.txn_last_ms - w)  # first entry inside the window
            agg = self.aggs[j]
            inside = cents[k:]
            agg.count = n - k
            agg.sum = sum(inside)
            agg.sumsq = sum(c * c for c in inside)
            # The max queue holds the entries greater than every later one (suffix maxima).
            q: list[tuple[int, int]] = []
            for i in range(n - 1, k - 1, -1):
                if not q or cents[i] > q[-1][1]:
                    q.append((self.base + i, cents[i]))
            q.reverse()
            agg.maxq = q
            self.heads[j] = self.base + k
        self.terms.initialize()
        for _, _, term in self.hist:
            self.terms.update(term)


# Memory a decoded state takes, estimated from its snapshot's length: ``fixed + per_byte · len``.
# Measured with tracemalloc (Python 3.11): a user decodes to ~4.7 KB with no history (its window
# aggregators and deques) plus 4.4–7.5× its snapshot (a typical warm user: 1.4 KB → 13.3 KB;
# 5,000 clicks: 335 KB → 1.57 MB; 1,000 payments a day: 256 KB → 1.12 MB); a terminal to
# 5.4–7.1× (10,000 labels: 580 KB → 4.1 MB with its LabelIndex). The worker's decoded-state
# caches are bounded by these estimates (streams/pipeline.py, StateCache); a test holds them
# within 1.5× of tracemalloc over those shapes, in a fresh interpreter (the same decode counted
# 3.2 MB with Paddle imported and 7.0 MB after other tests: an estimate, not an accounting).
USER_DECODED_FIXED: Final = 4608
USER_DECODED_PER_BYTE: Final = 5
TERMINAL_DECODED_FIXED: Final = 1024
TERMINAL_DECODED_PER_BYTE: Final = 7


def txn_key(transaction_id: str) -> int:
    """A transaction id's key in ``UserState.recent_ids``: the first 8 bytes of its BLAKE2b
    digest, as an unsigned integer (the same in every process, unlike ``hash()``)."""
    return int.from_bytes(_blake2b(transaction_id.encode(), digest_size=8).digest(), "little")


def user_decoded_bytes(snapshot_len: int) -> int:
    """Estimated memory of a user state decoded from a snapshot of ``snapshot_len`` bytes."""
    return USER_DECODED_FIXED + USER_DECODED_PER_BYTE * snapshot_len


def terminal_decoded_bytes(snapshot_len: int) -> int:
    """Estimated memory of a terminal state (its label index built) decoded from a snapshot of
    ``snapshot_len`` bytes."""
    return TERMINAL_DECODED_FIXED + TERMINAL_DECODED_PER_BYTE * snapshot_len


def snapshot_last_activity_ms(data: bytes) -> int:
    """:meth:`UserState.last_activity_ms` read from a snapshot without restoring it: the
    history, sequence and clicks are skipped, not decoded (a state sweep reads every stored
    state)."""
    if bytes(data[:3]) != USER_STATE_MAGIC:
        raise StateError("not a riskstream user state snapshot", magic=bytes(data[:3]))
    u = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=False)
    u.feed(data[3:])
    try:
        fields = u.read_array_header()
        version = u.unpack()
        if _USER_FIELDS.get(version) != fields:
            raise StateError(f"user state snapshot is not of format version {USER_STATE_FORMATS_READ}")
        last = int(u.unpack())  # txn_last_ms
        for _ in range(6):  # prev_ms, n_seen, base, hist, seq, clicks
            u.skip()
        click_last = int(u.unpack())
        u.skip()  # devices
        u.skip()  # logins
        if click_last > last:
            last = click_last
        for _, label_ms in u.unpack().values():  # frauds
            if label_ms > last:
                last = int(label_ms)
    except (msgpack.UnpackException, ValueError, TypeError, AttributeError) as exc:
        raise StateError(f"user state snapshot is corrupt: {exc}") from None
    return last


# elements of a user snapshot's body (UserState.to_bytes), by format version
_USER_FIELDS: Final = {1: 13, 2: 14}


class TerminalState:
    """Labelled transactions seen at one terminal: tx id -> ``(tx time, label time, is_fraud)``.
    A later label for the same transaction replaces the earlier one (corrections, redelivery).

    Two derived structures, never serialized, kept in step by ``FeatureEngine.terminal_label``:

    * ``index``: the labels sorted for the terminal features (:class:`LabelIndex`), built the
      first time a terminal with many labels is featurized;
    * ``order``: a min-heap of ``(tx time, tx id)`` over the labels (it may also hold entries of
      labels since replaced or dropped: skipped when popped), built the first time the terminal
      reaches ``max_terminal_labels``: it finds the label a full terminal forgets."""

    __slots__ = ("index", "labels", "latest_label_ms", "order")

    def __init__(self) -> None:
        self.labels: dict[str, tuple[int, int, int]] = {}
        self.latest_label_ms = -1
        self.index: LabelIndex | None = None
        self.order: list[tuple[int, str]] | None = None

    def copy(self) -> TerminalState:
        """An independent copy, derived structures included."""
        st = TerminalState()
        st.labels = dict(self.labels)
        st.latest_label_ms = self.latest_label_ms
        if self.index is not None:
            st.index = self.index.copy()
        if self.order is not None:
            st.order = self.order[:]
        return st

    def to_bytes(self) -> bytes:
        body = [TERMINAL_STATE_FORMAT, self.latest_label_ms, self.labels]
        out: bytes = TERMINAL_STATE_MAGIC + _pack(body)
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> TerminalState:
        body = _unpack(data, TERMINAL_STATE_MAGIC, "terminal", (TERMINAL_STATE_FORMAT,))
        try:
            _, latest, labels = body
            st = cls()
            st.latest_label_ms = int(latest)
            st.labels = dict(labels)
        except (TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"terminal state snapshot is malformed: {exc}") from None
        return st


_pack: Final = msgspec.msgpack.Encoder().encode


def _unpack(data: bytes, magic: bytes, what: str, versions: tuple[int, ...]) -> tuple[Any, ...]:
    if not isinstance(data, bytes | bytearray | memoryview) or bytes(data[:3]) != magic:
        raise StateError(f"not a riskstream {what} state snapshot", magic=bytes(data[:3]))
    try:
        body = msgpack.unpackb(bytes(data[3:]), raw=False, strict_map_key=False, use_list=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise StateError(f"{what} state snapshot is corrupt: {exc}") from None
    if not isinstance(body, tuple) or not body or body[0] not in versions:
        version = body[0] if isinstance(body, tuple) and body else None
        reads = ", ".join(map(str, versions))
        message = f"{what} state snapshot has format version {version!r}; this build reads {reads}"
        if isinstance(version, int) and not isinstance(version, bool):
            raise StateVersionError(message, format_version=version)
        raise StateError(message)
    return body
