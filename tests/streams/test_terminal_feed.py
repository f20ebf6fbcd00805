"""The terminal feed's pure part: progress records, other workers' labels into the overlay, and
the input buffer waiting for other workers' label floors (streams/terminal_feed.py)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson
from test_input_buffer import LEAD, TOPICS, TP, Msg, put_all, stamps
from test_terminal_overlay import ENGINE, label, terminal_features

from modeling.features import TerminalState
from modeling.records import Label
from streams.input_buffer import Alignment, InputBuffer, LabelRule
from streams.terminal_feed import PROGRESS_KEY, WORKER_HEADER, FeedState, decode_progress, encode_progress
from streams.terminal_overlay import TerminalOverlay

ME, PEER = b"me", b"peer"


def label_to_json(lb: Label) -> bytes:
    return orjson.dumps(lb.to_dict())


def test_progress_records_round_trip_and_a_malformed_one_says_nothing() -> None:
    floors = {0: 12.5, 3: math.inf, 2: -math.inf}
    assert decode_progress(encode_progress(PEER, floors)) == {0: 12.5, 3: math.inf, 2: -math.inf}
    assert decode_progress(b"not json") == {}
    assert decode_progress(b'{"floors": {"x": 1}}') == {}


def test_the_feed_applies_other_workers_labels_and_floors_and_skips_its_own() -> None:
    now = [100.0]
    ov = TerminalOverlay(ENGINE, lambda: None)
    state = FeedState(ME, ov, clock=lambda: now[0])
    theirs, mine = label(1), label(2)
    assert not state.apply(5, b"t1", label_to_json(theirs), [(WORKER_HEADER, PEER)])
    assert not state.apply(6, b"t1", label_to_json(mine), [(WORKER_HEADER, ME)])
    assert not state.apply(7, b"t1", b"{broken", [(WORKER_HEADER, PEER)])
    assert state.counts == {"label": 1, "own": 1, "progress": 0, "unreadable": 1}
    merged = ov.merged("t1", None)
    assert merged is not None and set(merged.labels) == {theirs.transaction_id}

    assert state.apply(8, PROGRESS_KEY, encode_progress(PEER, {0: 10.0, 1: 20.0}), [(WORKER_HEADER, PEER)])
    assert state.floors == {0: 10.0, 1: 20.0} and state.changed == {0: 100.0, 1: 100.0}
    now[0] = 101.0
    # the same floor again changes nothing; a new one is timed from now
    assert state.apply(9, PROGRESS_KEY, encode_progress(PEER, {0: 10.0, 1: 25.0}), [])
    assert state.changed == {0: 100.0, 1: 101.0}
    # its own progress records are not news to a worker
    assert not state.apply(10, PROGRESS_KEY, encode_progress(ME, {0: 99.0}), [(WORKER_HEADER, ME)])
    assert state.floors[0] == 10.0 and state.counts["progress"] == 3


def test_fed_labels_count_on_top_of_the_table_until_its_position_is_past_them() -> None:
    pos: list[int | None] = [None]
    ov = TerminalOverlay(ENGINE, lambda: pos[0])
    table = TerminalState()
    ENGINE.terminal_label(table, label(0, fraud=False))
    for n in range(1, 4):
        ov.add_fed(label(n), offset=10 + n)  # offsets 11, 12, 13
    ov.add(label(4))  # this worker's own, not delivered yet
    everything = TerminalState()
    for n in range(5):
        ENGINE.terminal_label(everything, label(n, fraud=n > 0))
    assert terminal_features(ov.merged("t1", table)) == terminal_features(everything)
    ov.prune()
    assert ov.n_labels == 4  # no position yet: the table holds none of them
    pos[0] = 13
    ov.prune()
    assert ov.n_labels == 2  # offsets 11 and 12 are in the table; 13 and the own label remain
    pos[0] = 100
    ov.prune()
    assert ov.n_labels == 1  # the own label waits for its delivery


def test_the_bound_drops_the_oldest_fed_labels() -> None:
    ov = TerminalOverlay(ENGINE, lambda: None, max_labels=3)
    for n in range(5):
        ov.add_fed(label(n, term=f"t{n}"), offset=n)
    assert ov.n_labels == 3 and ov.dropped == 2
    assert ov.merged("t0", None) is None and ov.merged("t4", None) is not None


def remote_buffer(
    floors: dict[int, float],
    changed: dict[int, float],
    *,
    lagging: set[TP] | None = None,
    wait_s: float = 30.0,
) -> InputBuffer:
    """This worker owns partition 0 of every topic; another worker owns partition 1."""
    lag = lagging if lagging is not None else set()
    rule = LabelRule(
        "tx", "labels", LEAD, lambda: [TP("labels", 0)], others=lambda: [1], floors=floors, changed=changed
    )
    align = Alignment(TOPICS, lambda tp: tp in lag, 30.0, labels=rule, remote_max_idle_s=wait_s)
    return InputBuffer(100_000, align=align)


def test_a_transaction_waits_for_the_other_workers_floor_and_goes_when_it_passes() -> None:
    async def go() -> tuple[list[float], list[float], float]:
        floors, changed = {1: 10.0}, {1: time.monotonic()}
        buf = remote_buffer(floors, changed)
        put_all(buf, TP("labels", 0), [1.0])
        put_all(buf, TP("tx", 0), [20.0])  # needs every label up to 15; the other worker is at 10
        first = stamps(await asyncio.wait_for(buf.take(10, 0.0), 1.0))
        waiting = asyncio.ensure_future(buf.take(10, 0.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        t0 = time.monotonic()
        floors[1], changed[1] = 15.5, time.monotonic()  # its progress record arrives
        buf.poke()
        second = stamps(await asyncio.wait_for(waiting, 1.0))
        return first, second, time.monotonic() - t0

    first, second, waited = asyncio.run(go())
    assert first == [1.0] and second == [20.0] and waited < 0.5


def test_the_wait_for_another_worker_is_bounded_from_its_floors_last_change() -> None:
    async def go() -> tuple[list[float], float]:
        buf = remote_buffer({1: 10.0}, {1: time.monotonic()}, wait_s=0.15)
        put_all(buf, TP("tx", 0), [20.0])
        t0 = time.monotonic()
        got = stamps(await asyncio.wait_for(buf.take(10, 0.0), 2.0))
        return got, time.monotonic() - t0

    got, waited = asyncio.run(go())
    assert got == [20.0] and 0.1 <= waited < 1.0


def test_a_partition_without_a_floor_yet_holds_back_for_the_bound_once() -> None:
    async def go() -> tuple[float, float]:
        buf = remote_buffer({}, {}, wait_s=0.15)
        put_all(buf, TP("tx", 0), [20.0])
        t0 = time.monotonic()
        await asyncio.wait_for(buf.take(10, 0.0), 2.0)
        first = time.monotonic() - t0
        put_all(buf, TP("tx", 0), [21.0])
        t0 = time.monotonic()
        await asyncio.wait_for(buf.take(10, 0.0), 2.0)
        return first, time.monotonic() - t0

    first, second = asyncio.run(go())
    assert first >= 0.1 and second < 0.1


def test_an_open_floor_holds_nothing_back() -> None:
    async def go() -> list[float]:
        buf = remote_buffer({1: math.inf}, {1: time.monotonic()})
        put_all(buf, TP("tx", 0), [20.0])
        return stamps(await asyncio.wait_for(buf.take(10, 0.0), 1.0))

    assert asyncio.run(go()) == [20.0]


def test_the_floors_a_worker_publishes() -> None:
    async def go() -> list[dict[int, float]]:
        lagging = {TP("labels", 0)}
        buf = remote_buffer({1: math.inf}, {}, lagging=lagging)
        seen = [buf.label_floors()]  # nothing taken, more to fetch: any label may come
        put_all(buf, TP("labels", 0), [3.0, 7.0])
        put_all(buf, TP("tx", 0), [4.0])
        seen.append(buf.label_floors())  # the buffered head
        await asyncio.wait_for(buf.take(2, 0.0), 1.0)  # the label at 3 and the transaction at 4
        seen.append(buf.label_floors())
        await asyncio.wait_for(buf.take(1, 0.0), 1.0)
        seen.append(buf.label_floors())  # nothing buffered, more to fetch: the last taken
        lagging.clear()
        seen.append(buf.label_floors())  # caught up: the latest timestamp taken anywhere
        return seen

    assert asyncio.run(go()) == [{0: -math.inf}, {0: 3.0}, {0: 7.0}, {0: 7.0}, {0: 7.0}]


def test_messages_without_a_feed_are_unaffected() -> None:
    buf = InputBuffer(100_000, align=Alignment(TOPICS, lambda tp: False, 1.0))
    buf.put(Msg(TP("tx", 0), 0, 1.0))
    assert buf.label_floors() == {}

    async def go() -> Any:
        return await asyncio.wait_for(buf.take(5, 0.0), 1.0)

    assert stamps(asyncio.run(go())) == [1.0]
