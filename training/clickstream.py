"""A seeded generator of SYNTHETIC clickstream for the handbook's customers.

The handbook simulator has no clickstream, so riskstream makes one, documented here and
labelled synthetic wherever it is used:

* About 35% of transactions are online: a session precedes them — a login 1–15 minutes before
  (8% of the time after a mistyped password: ``login_failed``), then 1–4 page views. The session
  runs on the customer's usual device (a second personal device in 10% of sessions; its first
  use emits ``new_device``) from the customer's usual IP.
* Genuine noise: 1.5% of customers change their password once, 1% add a payee once, 0.5% show a
  burst of failed logins — so no single click signal is a perfect fraud marker.
* Account takeover: for 70% of the customers the simulator compromises (its scenario 3), a few
  hours before the first fraudulent transaction the attacker fails to log in 1–4 times from a new
  device and IP, logs in, registers the device, changes the password and (half the time) adds a
  payee; 80% of the fraudulent transactions then run online from the attacker's device.

The generator reads the scenario column to place account takeovers; models never see that
column. Evaluations against the handbook's published figures run without clickstream features.

Randomness is a seeded hash of the transaction id (or the customer id), not a sequence of draws,
so a transaction gets the same session whichever slice of the history it is generated with;
only choices that look at several transactions (a customer's first session in the slice, the
first fraud of a compromise) can move when a slice cuts through them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_MIN = 60_000
_HOUR = 60 * _MIN


def _hash(keys: np.ndarray, salt: str, seed: int) -> np.ndarray:
    """A uint64 per key, stable across runs and slices."""
    return pd.util.hash_array(np.char.add(keys.astype(str), f"|{salt}"), hash_key=f"riskstream{seed:06d}")


def _uniform(keys: np.ndarray, salt: str, seed: int) -> np.ndarray:
    return (_hash(keys, salt, seed) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _integers(keys: np.ndarray, salt: str, seed: int, low: int, high: int) -> np.ndarray:
    return low + (_hash(keys, salt, seed) % np.uint64(high - low)).astype(np.int64)


def generate_clickstream(txns: pd.DataFrame, seed: int = 7) -> tuple[pd.DataFrame, np.ndarray]:
    """Return (clicks sorted by time, device id per transaction or None)."""
    n = len(txns)
    user = txns["user_id"].to_numpy().astype(str)
    t = txns["time_ms"].to_numpy().astype(np.int64)
    tx_id = txns["transaction_id"].to_numpy().astype(str)
    scen = txns["scenario"].to_numpy() if "scenario" in txns.columns else np.zeros(n, np.int64)

    home_dev = np.char.add("dev-", user)
    second_dev = np.char.add(home_dev, "-b")
    home_ip = np.char.add("ip-", user)

    online = _uniform(tx_id, "online", seed) < 0.35
    ato_tx = (scen == 3) & (_uniform(tx_id, "ato", seed) < 0.8)
    # Account takeovers for 70% of compromised customers.
    ato_users: set[str] = set()
    first_ato: dict[str, int] = {}
    if (scen == 3).any():
        s3 = pd.DataFrame({"u": user[scen == 3], "t": t[scen == 3]}).groupby("u")["t"].min()
        pick = _uniform(s3.index.to_numpy(), "ato-user", seed) < 0.7
        first_ato = {u: int(v) for u, v, p in zip(s3.index, s3.to_numpy(), pick, strict=True) if p}
        ato_users = set(first_ato)
    is_ato_user = np.fromiter((u in ato_users for u in user), bool, n)
    attacker = ato_tx & is_ato_user
    online |= attacker

    dev = np.where(_uniform(tx_id, "device", seed) < 0.10, second_dev, home_dev)
    dev = np.where(attacker, np.char.add("atk-", user), dev)
    ip = np.where(attacker, np.char.add("ipx-", user), home_ip)

    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("user_id", "time_ms", "type", "session_id", "device_id", "ip")
    }

    def add(u: np.ndarray, tm: np.ndarray, kind: str, sess: np.ndarray, d: np.ndarray, i: np.ndarray) -> None:
        cols["user_id"].append(u)
        cols["time_ms"].append(tm)
        cols["type"].append(np.full(len(u), kind))
        cols["session_id"].append(sess)
        cols["device_id"].append(d)
        cols["ip"].append(i)

    o = np.flatnonzero(online)
    sess = np.char.add("s-", tx_id[o])
    oid = tx_id[o]
    login_t = t[o] - _integers(oid, "login", seed, 1 * _MIN, 15 * _MIN)
    typo = _uniform(oid, "typo", seed) < 0.08
    add(
        user[o][typo],
        login_t[typo] - _integers(oid[typo], "typo-t", seed, 10_000, 60_000),
        "login_failed",
        sess[typo],
        dev[o][typo],
        ip[o][typo],
    )
    add(user[o], login_t, "login", sess, dev[o], ip[o])
    n_views = _integers(oid, "views", seed, 1, 5)
    rep = np.repeat(np.arange(len(o)), n_views)
    nth = np.arange(len(rep)) - np.repeat(np.cumsum(n_views) - n_views, n_views)
    span = (t[o] - login_t)[rep]
    u = _uniform(np.char.add(oid[rep], nth.astype(str)), "view", seed)
    view_t = login_t[rep] + (u * np.maximum(span - 1000, 1)).astype(np.int64)
    add(user[o][rep], view_t, "page_view", sess[rep], dev[o][rep], ip[o][rep])

    # First use of a second personal device registers it.
    sec = pd.DataFrame({"i": o, "d": dev[o], "t": login_t})
    sec = sec[sec["d"].str.endswith("-b")].groupby("d").first()
    si = sec["i"].to_numpy()
    add(user[si], sec["t"].to_numpy() + 1000, "new_device", np.char.add("s-", tx_id[si]), dev[si], ip[si])

    # Genuine noise, once per chosen customer, attached to one of their online sessions.
    for kind, share in (("change_password", 0.015), ("add_payee", 0.01), ("login_failed", 0.005)):
        pick = pd.Series(np.arange(len(o))).groupby(user[o]).first().to_numpy()
        pick = pick[_uniform(user[o][pick], kind, seed) < share]
        reps = 3 if kind == "login_failed" else 1
        for r in range(reps):
            add(user[o][pick], login_t[pick] + 2000 + r * 5000, kind, sess[pick], dev[o][pick], ip[o][pick])

    # Account takeovers.
    if first_ato:
        au = np.array(list(first_ato), dtype=str)
        t0 = np.array([first_ato[u] for u in au], dtype=np.int64)
        t0 -= _integers(au, "ato-t", seed, _HOUR, 6 * _HOUR)
        adev, aip = np.char.add("atk-", au), np.char.add("ipx-", au)
        asess = np.char.add("ato-", au)
        fails = _integers(au, "ato-fails", seed, 1, 5)
        rep = np.repeat(np.arange(len(au)), fails)
        add(
            au[rep],
            t0[rep] - 60_000 * (1 + np.arange(len(rep)) % 5),
            "login_failed",
            asess[rep],
            adev[rep],
            aip[rep],
        )
        add(au, t0, "login", asess, adev, aip)
        add(au, t0 + 20_000, "new_device", asess, adev, aip)
        add(au, t0 + 60_000, "change_password", asess, adev, aip)
        payee = _uniform(au, "ato-payee", seed) < 0.5
        add(au[payee], t0[payee] + 120_000, "add_payee", asess[payee], adev[payee], aip[payee])

    clicks = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    clicks["time_ms"] = clicks["time_ms"].astype("int64")
    clicks = clicks.sort_values(["time_ms", "user_id", "type"], kind="stable").reset_index(drop=True)
    devices = dev.astype(object)
    devices[~online] = None
    return clicks, devices
