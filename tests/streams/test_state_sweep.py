"""The state sweep's rules without Kafka: which stored states it deletes, which it keeps, that
it stops when a rebalance begins and that it waits for a flush in progress (the broker path is in
tests/integration/test_state_retention.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from modeling.features import FeatureConfig, FeatureEngine, UserState
from modeling.features.config import DAY_MS
from modeling.records import Transaction
from streams.pipeline import BatchProcessor
from streams.retention import StateSweeper
from streams.terminal_store import MemoryTerminalStore
from streams.user_store import MemoryUserStore

T0 = 1_527_811_200_000
CONFIG = FeatureConfig(user_retention_ms=40 * DAY_MS)
NOW = T0 + 100 * DAY_MS  # wall clock of the test: past every event


def _state(engine: FeatureEngine, t: int) -> UserState:
    st = engine.new_user()
    engine.transaction(st, Transaction(f"x{t}", "u", "term", 12.5, t), None)
    return st


class Fixture:
    def __init__(self, chunk: int = 1000) -> None:
        self.engine = FeatureEngine(CONFIG)
        self.processor = BatchProcessor(self.engine, self._no_scorer, lambda _: None, lambda _: None)
        self.store: dict[str, bytes] = {}
        self.parts: dict[str, int] = {}
        self.sent: list[tuple[str, int]] = []
        self.lock = asyncio.Lock()
        self.owned = {0, 1}
        self.paused = False
        self.sweeper = StateSweeper(
            self.processor,
            CONFIG,
            MemoryUserStore(self.store, self.parts),
            self._send,
            lock=self.lock,
            owned=lambda: self.owned,
            paused=lambda: self.paused,
            now_ms=lambda: NOW,
            chunk=chunk,
        )

    @staticmethod
    def _no_scorer() -> Any:
        raise AssertionError("the sweep never scores")

    async def _send(self, gone: list[tuple[str, int]]) -> list[asyncio.Future[Any]]:
        self.sent += gone
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return [fut]

    def put(self, uid: str, last: int, part: int = 0) -> None:
        self.store[uid] = _state(self.engine, last).to_bytes()
        self.parts[uid] = part


def test_deletes_exactly_the_expired_states_of_owned_partitions() -> None:
    f = Fixture()
    wm = T0 + 50 * DAY_MS
    f.processor.watermark.observe("transaction:0", wm)
    cutoff = wm - 40 * DAY_MS - DAY_MS  # retention + grace
    f.put("old", cutoff - 1)
    f.put("edge", cutoff)  # not before the cutoff: kept
    f.put("recent", wm - DAY_MS)
    f.put("standby", cutoff - 1, part=7)  # another worker's partition (a standby copy)
    f.put("dirty", cutoff - 1)
    f.processor.dirty["dirty"] = UserState.from_bytes(f.store["dirty"], CONFIG)
    f.put("flushing", cutoff - 1)
    f.processor.flushing["flushing"] = UserState.from_bytes(f.store["flushing"], CONFIG)
    f.store["garbage"], f.parts["garbage"] = b"RSU\xc1", 1
    res = asyncio.run(f.sweeper.sweep())
    assert f.sent == [("old", 0)]
    assert "old" not in f.store and "old" not in f.parts
    assert set(f.store) == {"edge", "recent", "standby", "dirty", "flushing", "garbage"}
    assert (res.watermark_ms, res.deleted, res.unreadable, res.checked) == (wm, 1, 1, 4)


def test_nothing_before_any_input_or_during_a_rebalance() -> None:
    f = Fixture()
    f.put("old", T0)
    assert asyncio.run(f.sweeper.sweep()).watermark_ms is None and f.sent == []
    f.processor.watermark.observe("transaction:0", T0 + 90 * DAY_MS)
    f.paused = True
    asyncio.run(f.sweeper.sweep())
    assert f.sent == [] and "old" in f.store
    f.paused = False
    assert asyncio.run(f.sweeper.sweep()).deleted == 1 and f.sent == [("old", 0)]


def test_a_rebalance_stops_the_sweep_between_chunks() -> None:
    f = Fixture(chunk=2)
    f.processor.watermark.observe("transaction:0", T0 + 90 * DAY_MS)
    for k in range(6):
        f.put(f"u{k}", T0)
    real_send = f._send

    async def send_then_rebalance(gone: list[tuple[str, int]]) -> list[asyncio.Future[Any]]:
        f.paused = True  # partitions start moving after the first chunk
        return await real_send(gone)

    f.sweeper.send_tombstones = send_then_rebalance
    res = asyncio.run(f.sweeper.sweep())
    assert res.interrupted and res.deleted == 2 and len(f.store) == 4


def test_waits_for_a_flush_in_progress() -> None:
    """A chunk runs under the flusher's lock: no tombstone while a flush holds it."""
    f = Fixture()
    f.processor.watermark.observe("transaction:0", T0 + 90 * DAY_MS)
    f.put("old", T0)

    async def scenario() -> None:
        await f.lock.acquire()  # a flush between taking its states and sending them
        task = asyncio.create_task(f.sweeper.sweep())
        for _ in range(5):
            await asyncio.sleep(0)
        assert f.sent == [] and "old" in f.store
        f.lock.release()
        assert (await task).deleted == 1

    asyncio.run(scenario())
    assert f.sent == [("old", 0)]


def test_terminal_sweep_deletes_the_states_whose_labels_no_longer_count() -> None:
    from modeling.features import TerminalState
    from modeling.records import Label
    from streams.retention import TerminalSweeper

    engine = FeatureEngine(CONFIG)
    processor = BatchProcessor(engine, Fixture._no_scorer, lambda _: None, lambda _: None)
    wm = T0 + 90 * DAY_MS
    processor.watermark.observe("label:0", wm)
    cutoff = wm - CONFIG.label_delay_ms - CONFIG.terminal_windows_ms[-1] - DAY_MS

    def state(*tx_times: int) -> TerminalState:
        ts = TerminalState()
        for i, t in enumerate(tx_times):
            engine.terminal_label(ts, Label(f"x{t}{i}", "u", "term", i == 0, t, t + DAY_MS))
        return ts

    own = {"stale": state(cutoff - 5, cutoff - 1), "fresh": state(cutoff - 9, cutoff + 1)}
    store = {tid: ts.to_bytes() for tid, ts in own.items()}
    store["stale-stored"] = state(cutoff - 2).to_bytes()  # not written by this worker: decoded
    store["edge"] = state(cutoff).to_bytes()  # a label at the cutoff still counts
    store["garbage"] = b"RST\xc1"
    sent: list[str] = []
    owner = [True]

    async def send(gone: list[str]) -> list[asyncio.Future[Any]]:
        sent.extend(gone)
        return []

    sweeper = TerminalSweeper(
        processor,
        CONFIG,
        own,
        MemoryTerminalStore(store),
        send,
        lock=asyncio.Lock(),
        owner=lambda: owner[0],
        paused=lambda: False,
        now_ms=lambda: NOW,
    )
    owner[0] = False  # another worker writes the terminal states: it sweeps them
    assert asyncio.run(sweeper.sweep()).deleted == 0 and not sent
    owner[0] = True
    res = asyncio.run(sweeper.sweep())
    assert sorted(sent) == ["stale", "stale-stored"]
    assert set(store) == {"fresh", "edge", "garbage"} and set(own) == {"fresh"}
    assert (res.deleted, res.unreadable, res.checked) == (2, 1, 4)
