"""Dormant users' states, and terminal states whose labels no longer count, leave the worker's
tables and their changelogs (streams/retention.py), through the real broker: deleted by
tombstone, gone after a restart, and a returning user's new state equals what the offline engine
builds from the same events."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from harness import Scenario, WorkerProc, consume, isolated_scenario, run, wait_caught_up

from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, UserState
from modeling.features.config import DAY_MS, HOUR_MS, MINUTE_MS
from modeling.records import Label, Transaction
from streams.replay import replay_events
from streams.terminal_overlay import APPLIED_KEY, decode_position

T0 = 1_527_811_200_000  # 2018-06-01
YEAR_LATER = T0 + 367 * DAY_MS  # past the default 365-day retention plus the 1-day grace


def _txn(i: int, user: str, t: int, terminal: str | None = None) -> Transaction:
    return Transaction(f"tx{i}", user, terminal or f"term{i % 7}", 20.0 + i % 50, t)


def _latest(sc: Scenario, table: str = "user-state") -> dict[str, bytes | None]:
    """The latest record per key of a table's changelog (None: a tombstone)."""
    recs = run(consume(sc.bootstrap, f"rs-{sc.name}-{table}-changelog", timeout=30, idle=3))
    return {orjson.loads(r.key): r.value for r in recs}


def _wait_metric(w: WorkerProc, name: str, want: float, timeout: float = 60.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    got = w.metric(name, **labels)
    while got != want and time.monotonic() < deadline:
        w.check_alive()
        time.sleep(0.5)
        got = w.metric(name, **labels)
    return got


def test_dormant_states_are_deleted_and_stay_deleted(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=2)
    env = {"RISKSTREAM_STATE_SWEEP_INTERVAL_S": "1", "RISKSTREAM_STATE_FLUSH_INTERVAL_MS": "200"}
    dormant = [f"d{k}" for k in range(6)]
    active = [f"a{k}" for k in range(30)]  # on both partitions: both move the watermark
    first: list[Transaction | Label] = [
        _txn(i, u, T0 + i * MINUTE_MS, f"old{i}" if u in dormant else None)
        for i, u in enumerate(dormant + active)
    ]
    n = len(first)
    # Labels for the dormant users' transactions, on terminals no later transaction uses: a year
    # on, none of them can count (7-day delay, 30-day window), so those terminal states go too.
    first += [
        Label(
            t.transaction_id,
            t.user_id,
            t.terminal_id,
            k == 0,
            t.event_time_ms,
            t.event_time_ms + 12 * HOUR_MS,
        )
        for k, t in enumerate(first[: len(dormant)])
        if isinstance(t, Transaction)
    ]
    old_terminals = {f"old{i}" for i in range(len(dormant))}
    later: list[Transaction | Label] = [
        _txn(n + i, u, YEAR_LATER + i * MINUTE_MS) for i, u in enumerate(active)
    ]
    # Labels keep flowing: the watermark is the earliest input partition's time, labels' included.
    later += [
        Label(t.transaction_id, t.user_id, t.terminal_id, False, t.event_time_ms, YEAR_LATER + HOUR_MS)
        for t in list(later)
        if isinstance(t, Transaction)
    ]
    live_terminals = {t.terminal_id for t in later if isinstance(t, Transaction)}
    returning = _txn(2 * n, dormant[0], YEAR_LATER + HOUR_MS)

    w = WorkerProc(sc, "first", env).start()
    try:
        w.wait_metrics()
        run(replay_events(first, sc.settings(), progress=False))
        wait_caught_up(sc, worker=w, terminals=True)
        assert _wait_metric(w, "riskstream_states", len(dormant), kind="terminal") == len(dormant)
        # A year later only the active users come back: the dormant ones' states expire.
        run(replay_events(later, sc.settings(), progress=False))
        wait_caught_up(sc, worker=w, terminals=True)
        expired = _wait_metric(w, "riskstream_states_expired_total", len(dormant), kind="user")
        assert expired == len(dormant), w.log_tail()
        assert _wait_metric(w, "riskstream_states_expired_total", len(old_terminals), kind="terminal") == len(
            old_terminals
        )
        n_live = len(live_terminals)
        assert _wait_metric(w, "riskstream_states", n_live, kind="terminal") == n_live
        terminal_log = _latest(sc, "terminal-state")
        assert decode_position(terminal_log.pop(APPLIED_KEY)), "the terminal loop's position"
        assert {t for t, v in terminal_log.items() if v is None} == old_terminals
        assert {t for t, v in terminal_log.items() if v is not None} == live_terminals
        assert w.metric("riskstream_event_time_watermark_seconds") >= YEAR_LATER / 1000
        latest = _latest(sc)
        assert {u for u, v in latest.items() if v is None} == set(dormant), "tombstones: the dormant"
        assert all(latest[u] is not None for u in active)
        assert _wait_metric(w, "riskstream_states", len(active), kind="user") == len(active)
        # One dormant user returns: scored, and starts over.
        run(replay_events([returning], sc.settings(), progress=False))
        wait_caught_up(sc, worker=w)
        assert _wait_metric(w, "riskstream_states", len(active) + 1, kind="user") == len(active) + 1
    finally:
        w.stop()

    # A restarted worker recovers the table without the deleted states.
    w2 = WorkerProc(sc, "second", env).start()
    try:
        w2.wait_metrics()
        held = _wait_metric(w2, "riskstream_states", len(active) + 1, kind="user")
        assert held == len(active) + 1, w2.log_tail()
        assert _wait_metric(w2, "riskstream_states", len(live_terminals), kind="terminal") == len(
            live_terminals
        )
        assert w2.metric("riskstream_states_expired_total") == 0  # nothing left to delete
    finally:
        w2.stop()

    risk = run(consume(sc.bootstrap, sc.topics["risk_events"], timeout=30, idle=3))
    assert {orjson.loads(r.value)["transaction_id"] for r in risk} == {
        t.transaction_id for t in [*first, *later, returning] if isinstance(t, Transaction)
    }
    # The live table equals an offline run of the same events, minus the expired states.
    config = FeatureConfig()
    runner = FeatureRunner(FeatureEngine(config))
    for _ in runner.run([*first, *later, returning]):
        pass
    latest = {u: v for u, v in _latest(sc).items() if v is not None}
    assert set(latest) == set(runner.users) - set(dormant[1:])
    for uid, raw in latest.items():
        live, offline = UserState.from_bytes(raw, config), runner.users[uid]
        assert _view(live) == _view(offline), uid
    back = UserState.from_bytes(latest[dormant[0]], config)
    entry = (returning.event_time_ms, round(returning.amount * 100), returning.terminal_id)
    assert back.n_seen == 1 and list(back.hist) == [entry]


def _view(st: UserState) -> tuple[object, ...]:
    return (st.txn_last_ms, st.prev_ms, st.n_seen, list(st.hist), list(st.seq), st.frauds, st.devices)
