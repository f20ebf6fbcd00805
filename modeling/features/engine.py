"""The feature engine: the single implementation of every feature, event by event, in event time.

The live agents, the backtest and the trainer all call these functions. Each transaction is
featurized from the state *before* it (read, then update), so a vector only holds what was
known at the event's time. Labels enter the state when they arrive and are used only once
known for ``label_allowance_ms`` and only for transactions at least ``label_delay_ms`` old
(terminal risk) — the handbook's delayed-feedback rule.

Dormant users (documented policy): an event more than ``user_retention_ms`` after the user's
latest event finds the state reset, as if the user were new; the live worker may therefore delete
such states from its table (``streams/retention.py``) without changing any vector.

Late events (documented policy): a transaction at most ``allowed_lateness_ms`` behind the user's
latest transaction is folded into the windows at that latest time; an older one is still scored,
from the state as of the user's latest time, but leaves the windows untouched (``late=True``).

Duplicates (documented policy): a transaction whose id is among the user's latest
``RECENT_TXN_IDS`` folded in (:meth:`FeatureEngine.duplicate`) is the same transaction sent
again, by an upstream producer's retry, say: its callers (the live batch step,
:class:`FeatureRunner`) neither featurize, fold nor score it. Its first risk event stands. A
too-late transaction leaves the state untouched, its id included, so a duplicate of one is
scored again.
"""

from __future__ import annotations

import heapq
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Final

import numpy as np
import numpy.typing as npt

from modeling.features.aggregators import ClickWindows, LabelIndex
from modeling.features.config import DAY_MS, HOUR_MS, FeatureConfig
from modeling.features.state import TerminalState, UserState, txn_key
from modeling.records import ClickEvent, Label, Transaction

# Final: compiled by mypyc (modeling/native.py), a module constant is a C static, not a global
# looked up by name on every use
_LOG_30D_S: Final = math.log1p(30 * 86400.0)
# A terminal with at least this many labels gets its features from a LabelIndex (O(log n) per
# transaction) instead of a scan of every label; below it the scan is cheaper.
INDEX_FROM: Final = 64
# A user with at least this many clicks held gets its click features from ClickWindows (O(1)
# amortized per click) while its clicks arrive in time order; below it, or out of order, a scan.
# Not Final: tests/modeling/features/test_windows.py sets it to compare both paths.
CLICK_INDEX_FROM = 64
MAX_LOGINS: Final = 8
_TWO_PI: Final = 2.0 * math.pi
_log1p: Final = math.log1p


@dataclass(frozen=True, slots=True)
class TxnFeatures:
    """The model inputs for one transaction."""

    tab: tuple[float, ...]
    seq: tuple[tuple[float, ...], ...]  # up to seq_len steps, oldest first, this transaction last
    late: bool
    # ``tab`` and ``seq`` as :func:`stack` packs them (float32), packed by the engine while the
    # values are fresh, the sequence from the user's packed steps (``UserState.seq_packed``):
    # None where not (features built by hand), and :func:`stack` packs the floats itself.
    packed: tuple[bytes, bytes] | None = field(default=None, compare=False, repr=False)


def stack(
    feats: Sequence[TxnFeatures], config: FeatureConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Batch features into the model's inputs: ``tab`` [B, F] and ``seq`` [B, N, S], the
    sequence zero-padded at the front (a padding step has ``present`` = 0).

    The live scorer and the trainer both build their arrays here. Each row is packed to float32
    by ``struct`` (the same rounding as numpy's conversion: tested) and the batch is read with
    one ``np.frombuffer``: numpy's own conversion of nested tuples took twice as long per
    transaction in the worker's scoring step (``benchmarks/README.md``, session 19). Features
    from the engine come packed already (:attr:`TxnFeatures.packed`): packing a worker's batch
    here, long after its floats were made, cost 7.5-15 µs per transaction (session 31)."""
    n = len(feats)
    nf, width, dim = config.n_features, config.seq_len, config.seq_dim
    pack_tab, pack_step = _packer(nf), _packer(dim)
    pads = _padding(width, dim)
    tab_len, step_len = 4 * nf, 4 * dim
    tabs: list[bytes] = []
    rows: list[bytes] = []
    try:
        for f in feats:
            p = f.packed
            if p is not None and len(p[0]) == tab_len:
                n_steps, rest = divmod(len(p[1]), step_len)
                if n_steps <= width and not rest:
                    tabs.append(p[0])
                    rows.append(pads[width - n_steps])
                    rows.append(p[1])
                    continue
            tabs.append(pack_tab(*f.tab))
            steps = f.seq
            pad = width - len(steps)
            if pad < 0:
                raise ValueError(f"a sequence of {len(steps)} steps is longer than the config's {width}")
            rows.append(pads[pad])
            rows += [pack_step(*s) for s in steps]
    except struct.error as exc:
        shape = f"{nf} tabular, {width}x{dim} sequence"
        raise ValueError(f"features do not match the config ({shape}): {exc}") from None
    except OverflowError as exc:
        raise ValueError(f"features out of float32 range: {exc}") from None
    tab_bytes = b"".join(tabs)
    tab = np.frombuffer(tab_bytes, dtype=np.float32).reshape(n, nf)
    seq = np.frombuffer(b"".join(rows), dtype=np.float32).reshape(n, width, dim)
    # frombuffer gives read-only views of immutable bytes; the predictor and the reason codes
    # only read them, but a caller may write (padding rows, tests): hand out owned arrays.
    return tab.copy(), seq.copy()


@cache
def _packer(n: int) -> Callable[..., bytes]:
    return struct.Struct(f"={n}f").pack


@cache
def _padding(width: int, dim: int) -> tuple[bytes, ...]:
    """Zero steps by count: ``[k]`` pads a sequence that has ``width - k`` steps."""
    return tuple(bytes(4 * dim * k) for k in range(width + 1))


TerminalLookup = Callable[[str], TerminalState | None]


class FeatureEngine:
    """Stateless functions over :class:`UserState` and :class:`TerminalState` for one config."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        c = self.config
        self.feature_names = c.feature_names
        self.feature_set = c.feature_set
        self._windows = c.txn_windows_ms
        self._i7 = c.txn_windows_ms.index(7 * DAY_MS) if 7 * DAY_MS in c.txn_windows_ms else -1
        self._ilong = len(c.txn_windows_ms) - 1
        self._i1d = c.txn_windows_ms.index(DAY_MS) if DAY_MS in c.txn_windows_ms else self._ilong
        self._retention = c.user_retention_ms
        self._pack_tab = _packer(c.n_features)
        self._pack_step = _packer(c.seq_dim)
        self._key_of, self._key = "", txn_key("")  # the last transaction id keyed (_txn_key)
        # the packed steps a user keeps: the previous seq_len - 1
        self._seq_keep = 4 * c.seq_dim * (c.seq_len - 1)

    def dormant(self, st: UserState, t: int) -> bool:
        """Whether an event at ``t`` comes more than the retention after the user's latest."""
        last = st.last_activity_ms()
        return last >= 0 and t - last > self._retention

    def new_user(self) -> UserState:
        return UserState(self.config)

    # ------------------------------------------------------------------------- transactions

    def duplicate(self, st: UserState, txn: Transaction) -> bool:
        """Whether ``txn`` was folded into this user's state before: its id is among the user's
        latest ``RECENT_TXN_IDS`` (module doc, "Duplicates")."""
        return self._txn_key(txn.transaction_id) in st.recent_ids

    def _txn_key(self, transaction_id: str) -> int:
        """``txn_key``, computed once for a transaction that :meth:`duplicate` then
        :meth:`transaction` both look at (the same id object)."""
        if transaction_id is self._key_of:
            return self._key
        key = self._key = txn_key(transaction_id)
        self._key_of = transaction_id
        return key

    def transaction(
        self, st: UserState, txn: Transaction, terminal: TerminalState | None, *, fold: bool = True
    ) -> TxnFeatures:
        """Featurize ``txn`` from the state before it, then fold it into ``st`` (unless ``fold``
        is false: a redelivered transaction that the state already holds)."""
        c = self.config
        t = txn.event_time_ms
        if self.dormant(st, t):
            st.reset(c)
        late = st.txn_last_ms >= 0 and t < st.txn_last_ms - c.allowed_lateness_ms
        te = t if t > st.txn_last_ms else st.txn_last_ms
        self._advance(st, te)

        amount = txn.amount
        cents = round(amount * 100.0)
        la = _log1p(amount)
        tab: list[float] = [la]
        means: list[float] = []
        for agg in st.aggs:
            n, s, _, mx = agg.result()
            mean = s / n / 100.0 if n else 0.0
            means.append(mean)
            tab += (_log1p(n), _log1p(s / 100.0), _log1p(mean), _log1p(mx / 100.0))
        n30, s30, sq30, mx30 = st.aggs[self._ilong].result()
        mean7 = means[self._i7] if self._i7 >= 0 else means[self._ilong]
        n7 = st.aggs[self._i7].count if self._i7 >= 0 else n30
        mean30 = means[self._ilong]
        vs7 = la - _log1p(mean7) if n7 else 0.0
        vs30 = la - _log1p(mean30) if n30 else 0.0
        if n30 >= 2:
            var = max(sq30 / n30 - (s30 / n30) ** 2, 0.0) / 10_000.0
            z = (amount - mean30) / (math.sqrt(var) + 1.0)
            z = -20.0 if z < -20.0 else (50.0 if z > 50.0 else z)
        else:
            z = 0.0
        vsmax = la - _log1p(mx30 / 100.0) if n30 else 0.0
        has_prev = st.prev_ms >= 0
        dt_log = _log1p((te - st.prev_ms) / 1000.0) if has_prev else _LOG_30D_S
        new_term = 0.0 if txn.terminal_id in st.terms else 1.0
        hour = (t % DAY_MS) / HOUR_MS
        hs, hc = math.sin(_TWO_PI * hour / 24.0), math.cos(_TWO_PI * hour / 24.0)
        weekday = (t // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        tab += (
            vs7,
            vs30,
            z,
            vsmax,
            dt_log,
            1.0 if has_prev else 0.0,
            _log1p(st.terms.result()),
            new_term,
            hs,
            hc,
            1.0 if weekday >= 5 else 0.0,
            1.0 if hour < 6.0 else 0.0,
        )
        tab += self._click_features(st, te, txn.device_id)
        tab += self._terminal_features(terminal, te)
        nf = self._known_frauds(st, te)
        tab += (_log1p(nf), 1.0 if nf else 0.0)

        step = (1.0, la, dt_log, vs30, new_term, hs, hc, _log1p(st.aggs[self._i1d].count))
        seq = (*st.seq, step)  # st.seq keeps the previous seq_len - 1 steps
        tab_t = tuple(tab)
        packed = self._pack(st, tab_t, step)

        if fold and not late:
            st.recent_ids.append(self._txn_key(txn.transaction_id))
            self._add(st, te, cents, txn.terminal_id)
            st.seq.append(step)
            if packed is not None:
                keep = packed[1]
                if len(keep) > self._seq_keep:
                    keep = keep[len(keep) - self._seq_keep :]
                st.seq_packed = keep
            st.prev_ms = te
            st.txn_last_ms = te
        return TxnFeatures(tab_t, seq, late, packed)

    def _pack(
        self, st: UserState, tab: tuple[float, ...], step: tuple[float, ...]
    ) -> tuple[bytes, bytes] | None:
        """``tab`` and the sequence ending in ``step`` packed as :func:`stack` packs them, from
        the user's packed steps; None (and the user's packed steps forgotten, rebuilt at its next
        transaction) where a value does not fit float32: :func:`stack` then says which."""
        prev = st.seq_packed
        try:
            if prev is None:
                prev = st.seq_packed = b"".join([self._pack_step(*s) for s in st.seq])
            return self._pack_tab(*tab), prev + self._pack_step(*step)
        except (struct.error, OverflowError):
            st.seq_packed = None
            return None

    def _advance(self, st: UserState, te: int) -> None:
        hist, base = st.hist, st.base
        n_seen = st.n_seen
        for j, w in enumerate(self._windows):
            cutoff = te - w
            head = st.heads[j]
            agg = st.aggs[j]
            while head < n_seen:
                tm, cents, _ = hist[head - base]
                if tm > cutoff:
                    break
                agg.revert(head, cents)
                head += 1
            st.heads[j] = head
        # Entries out of the longest window leave the history.
        oldest = st.heads[self._ilong]
        while st.base < oldest:
            _, _, term = hist.popleft()
            st.terms.revert(term)
            st.base += 1

    def _add(self, st: UserState, te: int, cents: int, terminal: str) -> None:
        idx = st.n_seen
        st.hist.append((te, cents, terminal))
        for agg in st.aggs:
            agg.update(idx, cents)
        st.terms.update(terminal)
        st.n_seen = idx + 1
        if len(st.hist) > self.config.max_user_transactions:
            self._forget_oldest(st)

    def _forget_oldest(self, st: UserState) -> None:
        """The user's oldest transaction leaves every window it is still in, and the history
        (``max_user_transactions``): as if its time had come."""
        oldest = st.base
        _, cents, term = st.hist.popleft()
        for j, agg in enumerate(st.aggs):
            if st.heads[j] == oldest:
                agg.revert(oldest, cents)
                st.heads[j] = oldest + 1
        st.terms.revert(term)
        st.base = oldest + 1

    # ------------------------------------------------------------------------------- clicks

    def click(self, st: UserState, ev: ClickEvent) -> None:
        """Fold a clickstream event into the user's state."""
        t = ev.event_time_ms
        if self.dormant(st, t):
            st.reset(self.config)
        click = (t, ev.type, ev.device_id, ev.ip)
        clicks, index = st.clicks, st.click_index
        clicks.append(click)
        if index is not None:
            if t >= index.last_ms:
                index.append(click)
            else:  # out of order: scanned, or indexed again once in order
                index = st.click_index = None
        if t > st.click_last_ms:
            st.click_last_ms = t
        keep_from = st.click_last_ms - DAY_MS - self.config.allowed_lateness_ms
        n_gone = 0
        while n_gone < len(clicks) and clicks[n_gone][0] <= keep_from:
            n_gone += 1
        if len(clicks) - n_gone > self.config.max_user_clicks:
            n_gone += 1  # the oldest-arrived (max_user_clicks)
        for _ in range(n_gone):
            gone = clicks.popleft()
            if index is not None:
                if index.clicks[0] is gone:
                    index.popleft()
                else:
                    index = st.click_index = None
        first = st.devices.get(ev.device_id)
        if first is None or t < first:
            st.devices[ev.device_id] = t
            if len(st.devices) > self.config.max_known_devices:
                del st.devices[min(st.devices, key=st.devices.__getitem__)]
        if ev.type == "login":
            # The most recent logins, newest last; a few are kept so that logins arriving ahead
            # of a transaction (clickstream running early) do not hide the one before it.
            logins = st.logins
            logins.append(t)
            if len(logins) > 1 and logins[-2] > t:
                logins.sort()
            if len(logins) > MAX_LOGINS:
                del logins[0]

    def _click_features(self, st: UserState, te: int, device: str | None) -> tuple[float, ...]:
        if not self.config.use_clicks:
            return (0.0,) * 11 + (0.0,)
        d_from = te - DAY_MS
        last_login = -1
        for lt in reversed(st.logins):
            if lt <= te:
                last_login = lt
                break
        index = st.click_index
        if index is not None and te < index.q:  # not reached: te never goes back (see above)
            index = st.click_index = None
        if index is None and len(st.clicks) >= CLICK_INDEX_FROM and ClickWindows.in_order(st.clicks):
            index = st.click_index = ClickWindows(st.clicks, HOUR_MS, DAY_MS)
        if index is not None:
            index.advance(te)
            counts = index.result()
        else:
            counts = _scan_clicks(st, te)
        logins_h, failed_h, views_h, logins_d, failed_d, pwd, payees, n_devs, n_ips, last = counts
        if last > last_login:
            last_login = last
        new_devs = sum(1 for first in st.devices.values() if d_from < first <= te)
        since_login = _log1p((te - last_login) / 1000.0) if last_login >= 0 else _LOG_30D_S
        if device is None:
            unknown = 0.0
        else:
            first = st.devices.get(device)
            unknown = 1.0 if first is None or first > te else 0.0
        return (
            _log1p(logins_h),
            _log1p(logins_d),
            _log1p(failed_h),
            _log1p(failed_d),
            _log1p(n_devs),
            _log1p(n_ips),
            _log1p(new_devs),
            _log1p(pwd),
            _log1p(payees),
            since_login,
            _log1p(views_h),
            unknown,
        )

    # ------------------------------------------------------------------------------- labels

    def user_label(self, st: UserState, label: Label) -> None:
        """Record a confirmed fraud on the user's card (genuine labels carry no user signal)."""
        if self.dormant(st, label.label_time_ms):
            st.reset(self.config)
        if not label.is_fraud:
            # A correction (fraud -> genuine) withdraws the earlier fraud label.
            st.frauds.pop(label.transaction_id, None)
            return
        st.frauds[label.transaction_id] = (label.transaction_time_ms, label.label_time_ms)
        newest = max(f[1] for f in st.frauds.values())
        keep_from = newest - self.config.known_fraud_window_ms - self.config.label_delay_ms - 2 * DAY_MS
        if any(f[0] <= keep_from for f in st.frauds.values()):
            st.frauds = {k: f for k, f in st.frauds.items() if f[0] > keep_from}

    def _known_frauds(self, st: UserState, te: int) -> int:
        known_by = te - self.config.label_allowance_ms
        since = te - self.config.known_fraud_window_ms
        return sum(1 for tx, lt in st.frauds.values() if lt <= known_by and tx > since)

    def terminal_label(self, ts: TerminalState, label: Label) -> None:
        """Record a label (fraud or genuine) at its terminal; a repeated label for the same
        transaction replaces the earlier one, so redelivery is harmless."""
        value = (label.transaction_time_ms, label.label_time_ms, 1 if label.is_fraud else 0)
        old = ts.labels.get(label.transaction_id)
        ts.labels[label.transaction_id] = value
        index = ts.index
        if index is not None:
            if old is not None:
                index.revert(*old)
            index.update(*value)
        if label.label_time_ms > ts.latest_label_ms:
            ts.latest_label_ms = label.label_time_ms
        c = self.config
        keep_from = ts.latest_label_ms - c.label_delay_ms - c.terminal_windows_ms[-1] - 2 * DAY_MS
        # Insertion order roughly follows time: drop expired entries from the front (amortized
        # O(1) per label). An expired entry behind a live one waits for it; features skip it by age.
        labels = ts.labels
        while labels:
            k = next(iter(labels))
            if labels[k][0] > keep_from:
                break
            gone = labels.pop(k)
            if index is not None:
                index.revert(*gone)
        order = ts.order
        if order is not None:
            heapq.heappush(order, (label.transaction_time_ms, label.transaction_id))
        if len(labels) > c.max_terminal_labels:
            self._forget_least(ts)

    def _forget_least(self, ts: TerminalState) -> None:
        """Drop the label of the least ``(tx time, tx id)`` (``max_terminal_labels``): a full
        terminal holds the labels of its latest transactions, whatever order they came in."""
        labels = ts.labels
        order = ts.order
        if order is None or len(order) > 2 * len(labels):  # first time, or mostly stale entries
            order = ts.order = [(v[0], k) for k, v in labels.items()]
            heapq.heapify(order)
        while True:
            tx, k = heapq.heappop(order)
            held = labels.get(k)
            if held is not None and held[0] == tx:
                del labels[k]
                if ts.index is not None:
                    ts.index.revert(*held)
                return

    def _terminal_features(self, ts: TerminalState | None, te: int) -> tuple[float, ...]:
        c = self.config
        wins = c.terminal_windows_ms
        if ts is None or not ts.labels:
            return (0.0, 0.0) * len(wins)
        end = te - c.label_delay_ms
        known_by = te - c.label_allowance_ms
        if len(ts.labels) >= INDEX_FROM:
            index = ts.index
            if index is None:
                index = ts.index = LabelIndex(ts.labels.values())
            counts, frauds = index.result(end, known_by, wins)
        else:
            counts, frauds = _scan_labels(ts, end, known_by, wins)
        out: list[float] = []
        for n, f in zip(counts, frauds, strict=True):
            out += (_log1p(n), f / n if n else 0.0)
        return tuple(out)


def _scan_labels(
    ts: TerminalState, end: int, known_by: int, wins: tuple[int, ...]
) -> tuple[list[int], list[int]]:
    """:meth:`LabelIndex.result` by a scan of every label (cheaper below :data:`INDEX_FROM`)."""
    counts = [0] * len(wins)
    frauds = [0] * len(wins)
    for tx, lt, fr in ts.labels.values():
        if tx > end or lt > known_by:
            continue
        age = end - tx
        for k, w in enumerate(wins):
            if age < w:
                counts[k] += 1
                frauds[k] += fr
    return counts, frauds


def _scan_clicks(st: UserState, te: int) -> tuple[int, int, int, int, int, int, int, int, int, int]:
    """:meth:`ClickWindows.result` at ``te`` by a scan of every click held."""
    h_from, d_from = te - HOUR_MS, te - DAY_MS
    logins_h = logins_d = failed_h = failed_d = pwd = payees = views_h = 0
    devs: set[str] = set()
    ips: set[str] = set()
    last_login = -1
    for tc, kind, dev, ip in st.clicks:
        if tc > te or tc <= d_from:
            continue
        in_h = tc > h_from
        devs.add(dev)
        ips.add(ip)
        if kind == "login":
            logins_d += 1
            logins_h += in_h
            if tc > last_login:
                last_login = tc
        elif kind == "login_failed":
            failed_d += 1
            failed_h += in_h
        elif kind == "page_view":
            views_h += in_h
        elif kind == "change_password":
            pwd += 1
        elif kind == "add_payee":
            payees += 1
    return logins_h, failed_h, views_h, logins_d, failed_d, pwd, payees, len(devs), len(ips), last_login
