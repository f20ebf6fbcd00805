"""Historical streams: load a file of transactions and turn it into the ordered event sequence
(transactions, synthetic clickstream, delayed labels) that both replay and featurization use."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modeling.features.config import FeatureConfig
from modeling.records import ClickEvent, Label, Transaction

# Handbook column -> our column.
_HANDBOOK = {
    "TRANSACTION_ID": "transaction_id",
    "CUSTOMER_ID": "user_id",
    "TERMINAL_ID": "terminal_id",
    "TX_AMOUNT": "amount",
    "TX_FRAUD": "is_fraud",
    "TX_FRAUD_SCENARIO": "scenario",
}
REQUIRED = ("transaction_id", "user_id", "terminal_id", "amount", "time_ms")

KIND_CLICK, KIND_TXN, KIND_LABEL = 0, 1, 2


def load_history(
    path: str | Path,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Read parquet, CSV or JSON lines of transactions into the standard columns, sorted by time.

    Accepts the handbook's columns (TRANSACTION_ID, TX_DATETIME, …) or the wire format's
    (transaction_id, user_id, terminal_id, amount, event_time in epoch ms, optional is_fraud,
    currency, device_id, ip, text). ``start``/``end`` bound the event time (end exclusive).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        df = pd.read_parquet(p)
    elif suffix == ".csv":
        df = pd.read_csv(p)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        df = pd.read_json(p, lines=True)
    else:
        raise ValueError(f"{p}: unsupported file type {suffix!r} (use .parquet, .csv or .jsonl)")
    df = df.rename(columns=_HANDBOOK)
    if "TX_DATETIME" in df.columns:
        dt = pd.to_datetime(df["TX_DATETIME"])
        df["time_ms"] = dt.astype("datetime64[ms]").astype("int64")
    elif "event_time" in df.columns:
        df["time_ms"] = df["event_time"].astype("int64")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{p}: missing columns {missing}")
    for c in ("transaction_id", "user_id", "terminal_id"):
        df[c] = df[c].astype(str)
    df["amount"] = df["amount"].astype("float64")
    if start is not None:
        df = df[df["time_ms"] >= _ms(start)]
    if end is not None:
        df = df[df["time_ms"] < _ms(end)]
    df = df.sort_values(["time_ms", "transaction_id"], kind="stable").reset_index(drop=True)
    if "is_fraud" in df.columns:
        df["is_fraud"] = df["is_fraud"].astype("int8")
    return df


def _ms(x: str | pd.Timestamp) -> int:
    return int(pd.Timestamp(x).value // 1_000_000)


@dataclass
class EventStream:
    """Transactions, clicks and labels merged into one event-time order."""

    txns: pd.DataFrame
    clicks: pd.DataFrame | None
    label_delay_ms: int
    with_labels: bool

    def order(self) -> tuple[np.ndarray, np.ndarray]:
        """(kind, row) of every event, sorted by time; ties: clicks, then transactions, then labels."""
        parts_t = [self.txns["time_ms"].to_numpy()]
        parts_k = [np.full(len(self.txns), KIND_TXN, np.int8)]
        parts_r = [np.arange(len(self.txns))]
        if self.clicks is not None and len(self.clicks):
            parts_t.append(self.clicks["time_ms"].to_numpy())
            parts_k.append(np.full(len(self.clicks), KIND_CLICK, np.int8))
            parts_r.append(np.arange(len(self.clicks)))
        if self.with_labels and "is_fraud" in self.txns.columns:
            parts_t.append(self.txns["time_ms"].to_numpy() + self.label_delay_ms)
            parts_k.append(np.full(len(self.txns), KIND_LABEL, np.int8))
            parts_r.append(np.arange(len(self.txns)))
        t = np.concatenate(parts_t)
        k = np.concatenate(parts_k)
        r = np.concatenate(parts_r)
        idx = np.lexsort((r, k, t))
        return k[idx], r[idx]

    def __len__(self) -> int:
        n = len(self.txns) + (0 if self.clicks is None else len(self.clicks))
        return n + (len(self.txns) if self.with_labels and "is_fraud" in self.txns.columns else 0)

    def events(self) -> Iterator[Transaction | ClickEvent | Label]:
        """Yield the records in event-time order (labels at transaction time + label delay)."""
        kinds, rows = self.order()
        tx = self.txns
        tid = tx["transaction_id"].tolist()
        uid = tx["user_id"].tolist()
        term = tx["terminal_id"].tolist()
        amt = tx["amount"].tolist()
        tms = tx["time_ms"].tolist()
        dev = tx["device_id"].tolist() if "device_id" in tx.columns else [None] * len(tx)
        ips = tx["ip"].tolist() if "ip" in tx.columns else [None] * len(tx)
        txt = tx["text"].tolist() if "text" in tx.columns else [None] * len(tx)
        cur = tx["currency"].tolist() if "currency" in tx.columns else ["EUR"] * len(tx)
        fraud = tx["is_fraud"].tolist() if "is_fraud" in tx.columns else None
        if self.clicks is not None:
            c = self.clicks
            cu, ct, cty = c["user_id"].tolist(), c["time_ms"].tolist(), c["type"].tolist()
            cs, cd, ci = c["session_id"].tolist(), c["device_id"].tolist(), c["ip"].tolist()
        delay = self.label_delay_ms
        for k, r in zip(kinds.tolist(), rows.tolist(), strict=True):
            if k == KIND_TXN:
                yield Transaction(
                    tid[r], uid[r], term[r], amt[r], tms[r], cur[r], _opt(dev[r]), _opt(ips[r]), _opt(txt[r])
                )
            elif k == KIND_CLICK:
                yield ClickEvent(cu[r], ct[r], cty[r], cs[r], cd[r], ci[r])
            else:
                assert fraud is not None
                yield Label(tid[r], uid[r], term[r], bool(fraud[r]), tms[r], tms[r] + delay)


def _opt(v: object) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return str(v)


def event_stream(
    txns: pd.DataFrame,
    config: FeatureConfig,
    *,
    clicks: bool = True,
    labels: bool = True,
    seed: int = 7,
) -> EventStream:
    """Build the merged stream; with ``clicks`` the synthetic clickstream is generated (seeded)
    and online transactions get the session's device id."""
    from training.clickstream import generate_clickstream

    click_df = None
    if clicks:
        click_df, devices = generate_clickstream(txns, seed=seed)
        txns = txns.assign(device_id=devices)
    return EventStream(txns, click_df, config.label_delay_ms, labels)
