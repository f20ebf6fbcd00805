"""StateFlusher (coalesced state writes, acks gated on the flush) and the processor's dirty states."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from modeling.features import FeatureEngine, UserState
from modeling.records import ClickEvent, parse_click
from modeling.scoring import Scorer
from streams.batch_loop import InOrderAcks
from streams.pipeline import KIND_CLICK, BatchProcessor, InMessage
from streams.state_flush import StateFlusher


async def settle() -> None:
    """Let chained done-callbacks run (each hop is one loop iteration)."""
    for _ in range(10):
        await asyncio.sleep(0)


class Recorder:
    """A flush function: takes what is dirty (synchronously), returns futures the test resolves."""

    def __init__(self) -> None:
        self.dirty: list[str] = []
        self.flushed: list[list[str]] = []
        self.deliveries: list[asyncio.Future[Any]] = []
        self.block: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def __call__(self) -> list[asyncio.Future[Any]]:
        taken, self.dirty = self.dirty, []
        self.flushed.append(taken)
        if self.fail is not None:
            raise self.fail
        if self.block is not None:
            await self.block.wait()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries.append(fut)
        return [fut]


def test_a_batch_is_acked_only_after_the_flush_holding_its_state_is_delivered() -> None:
    async def go() -> None:
        rec = Recorder()
        flusher = StateFlusher(rec, interval_s=3600.0)
        acked: list[int] = []
        acks = InOrderAcks(acked.append, lambda exc, msgs: None)
        own: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        rec.dirty.append("u1")
        acks.add([own, flusher.epoch()], [1])
        rec.dirty.append("u2")
        acks.add([flusher.epoch()], [2])  # same epoch: both states go in the next flush
        own.set_result(None)
        await asyncio.sleep(0)
        assert acked == []  # its own records are delivered, its state is not written yet

        await flusher.flush()
        assert rec.flushed == [["u1", "u2"]]
        rec.dirty.append("u3")
        acks.add([flusher.epoch()], [3])  # after the flush took the states: the next epoch
        await asyncio.sleep(0)
        assert acked == []  # the flush's records are not delivered yet

        rec.deliveries[0].set_result(None)
        await settle()
        assert acked == [1, 2]

        await flusher.flush()
        rec.deliveries[1].set_result(None)
        await settle()
        assert acked == [1, 2, 3]
        assert rec.flushed == [["u1", "u2"], ["u3"]]

    asyncio.run(go())


def test_flush_without_pending_batches_writes_nothing() -> None:
    async def go() -> None:
        rec = Recorder()
        flusher = StateFlusher(rec, interval_s=3600.0)
        await flusher.flush()
        assert rec.flushed == []
        assert not flusher.pending

    asyncio.run(go())


def test_a_failed_flush_fails_its_epoch_and_stops_the_acks() -> None:
    async def go() -> None:
        rec = Recorder()
        flusher = StateFlusher(rec, interval_s=3600.0)
        failures: list[BaseException] = []
        acked: list[int] = []
        acks = InOrderAcks(acked.append, lambda exc, msgs: failures.append(exc))
        acks.add([flusher.epoch()], [1])
        await flusher.flush()
        rec.deliveries[0].set_exception(RuntimeError("broker said no"))
        await settle()
        assert acked == []
        assert [str(e) for e in failures] == ["broker said no"]

        rec.fail = ValueError("record too large")
        acks2 = InOrderAcks(acked.append, lambda exc, msgs: failures.append(exc))
        acks2.add([flusher.epoch()], [2])
        with pytest.raises(ValueError):
            await flusher.flush()
        await settle()
        assert acked == []
        assert isinstance(failures[-1], ValueError)

    asyncio.run(go())


def test_flushes_are_serialized_in_order() -> None:
    async def go() -> None:
        rec = Recorder()
        rec.block = asyncio.Event()
        flusher = StateFlusher(rec, interval_s=3600.0)
        rec.dirty.append("a")
        flusher.epoch()
        first = asyncio.ensure_future(flusher.flush())
        await asyncio.sleep(0.01)
        rec.dirty.append("b")
        second_epoch = flusher.epoch()
        second = asyncio.ensure_future(flusher.flush())
        await asyncio.sleep(0.01)
        assert rec.flushed == [["a"]]  # the second waits for the first to hand its records over
        rec.block.set()
        await asyncio.gather(first, second)
        assert rec.flushed == [["a"], ["b"]]
        assert not second_epoch.done()  # resolves with its own deliveries only
        rec.deliveries[1].set_result(None)
        await settle()
        assert second_epoch.done()

    asyncio.run(go())


def test_the_flusher_task_flushes_after_the_interval_or_when_woken() -> None:
    async def go() -> None:
        rec = Recorder()
        fast = StateFlusher(rec, interval_s=0.05)
        task = asyncio.ensure_future(fast.run())
        rec.dirty.append("x")
        epoch = fast.epoch()
        for _ in range(200):  # no wake: the interval alone triggers it
            if rec.flushed:
                break
            await asyncio.sleep(0.01)
        assert rec.flushed == [["x"]]
        rec.deliveries[0].set_result(None)
        await settle()
        assert epoch.done()
        task.cancel()

        rec2 = Recorder()
        slow = StateFlusher(rec2, interval_s=3600.0)
        task2 = asyncio.ensure_future(slow.run())
        rec2.dirty.append("y")
        slow.epoch()
        await asyncio.sleep(0.1)
        assert rec2.flushed == []  # an hour's interval: nothing yet
        assert not slow.due()
        slow.wake()
        for _ in range(200):
            if rec2.flushed:
                break
            await asyncio.sleep(0.01)
        assert rec2.flushed == [["y"]]
        task2.cancel()
        await asyncio.gather(task, task2, return_exceptions=True)

    asyncio.run(go())


# ------------------------------------------------------------------------- processor dirty states


def _clicks(user: str, start_offset: int, times: list[int]) -> list[InMessage]:
    out = []
    for i, t in enumerate(times):
        ev = ClickEvent(
            user_id=user, event_time_ms=t, type="login", session_id="s1", device_id=f"d{i % 2}", ip="10.0.0.1"
        )
        out.append(
            InMessage(
                KIND_CLICK,
                "clickstream",
                0,
                start_offset + i,
                user.encode(),
                orjson.dumps(ev.to_dict()),
                t,
                0.0,
            )
        )
    return out


def _no_scorer() -> Scorer:
    raise AssertionError("clicks only: the model is not called")


def test_dirty_states_carry_across_batches_and_are_written_once() -> None:
    engine = FeatureEngine()
    store: dict[str, bytes] = {}
    proc = BatchProcessor(engine, _no_scorer, store.get, lambda t: None)
    t0 = 1_530_000_000_000
    b1 = _clicks("u1", 0, [t0, t0 + 1000]) + _clicks("u2", 0, [t0 + 5])
    b2 = _clicks("u1", 2, [t0 + 2000, t0 + 3000])
    proc.process(b1)
    proc.process(b2)
    assert store == {}  # nothing written per batch
    written = proc.take_dirty()
    assert sorted(uid for uid, _, _ in written) == ["u1", "u2"]
    assert proc.take_dirty() == []  # clean afterwards
    for uid, part, raw in written:
        assert part == 0
        store[uid] = raw

    expected = engine.new_user()
    for m in b1[:2] + b2:
        engine.click(expected, parse_click(m.value, 1 << 16))
    got = UserState.from_bytes(store["u1"], engine.config)
    assert got.clicks == expected.clicks
    assert got.logins == expected.logins
    assert got.applied == {"click:0": 3}

    # A redelivered batch (offsets already applied) is not folded in again.
    proc.process(b2)
    again = dict((uid, raw) for uid, _, raw in proc.take_dirty())
    assert UserState.from_bytes(again["u1"], engine.config).clicks == expected.clicks


def test_forget_drops_dirty_states() -> None:
    engine = FeatureEngine()
    store: dict[str, bytes] = {}
    proc = BatchProcessor(engine, _no_scorer, store.get, lambda t: None)
    proc.process(_clicks("u1", 0, [1_530_000_000_000]))
    assert set(proc.dirty) == {"u1"}
    proc.forget()
    assert proc.take_dirty() == []
    proc.process(_clicks("u1", 1, [1_530_000_001_000]))
    ((_uid, _, raw),) = proc.take_dirty()
    assert len(UserState.from_bytes(raw, engine.config).clicks) == 1  # the forgotten one is gone


def test_states_being_flushed_stay_visible_to_later_batches() -> None:
    engine = FeatureEngine()
    store: dict[str, bytes] = {}
    proc = BatchProcessor(engine, _no_scorer, store.get, lambda t: None)
    t0 = 1_530_000_000_000
    proc.process(_clicks("new-user", 0, [t0, t0 + 1000]))
    taken = proc.begin_flush()  # a flush has taken it but not written it to the table yet
    assert [uid for uid, _, _ in taken] == ["new-user"] and store == {}
    proc.process(_clicks("new-user", 2, [t0 + 2000]))  # a batch in between: same live state
    for uid, _, st in taken:
        store[uid] = proc.snapshot(uid, st)
    proc.end_flush()
    ((_uid, _, raw),) = proc.take_dirty()  # dirty again: the later batch's change goes next
    st = UserState.from_bytes(raw, engine.config)
    assert len(st.clicks) == 3
    assert st.applied == {"click:0": 2}
