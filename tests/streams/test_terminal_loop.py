"""The terminal loop's decoded states (``WrittenTerminals``): bounded by memory, and a state
leaves only once the table has read back the batch that last wrote it."""

from __future__ import annotations

from modeling.features import TerminalState
from modeling.features.state import terminal_decoded_bytes
from streams.terminal_loop import WrittenTerminals


def _state(n: int) -> TerminalState:
    ts = TerminalState()
    ts.labels = {f"t{i}": (i, i + 1, 0) for i in range(n)}
    return ts


def test_states_within_the_bound_all_stay() -> None:
    w = WrittenTerminals(max_bytes=10 * terminal_decoded_bytes(100))
    for i in range(5):
        w.wrote(f"T{i}", _state(3), position=i + 1, snapshot_len=100)
    w.trim(held=5)
    assert list(w) == [f"T{i}" for i in range(5)]
    assert w.bytes == 5 * terminal_decoded_bytes(100)
    assert w.evictions == 0


def test_past_the_bound_only_states_the_table_read_back_go_oldest_written_first() -> None:
    one = terminal_decoded_bytes(100)
    w = WrittenTerminals(max_bytes=2 * one)
    for i in range(5):  # T0 written by the batch at position 1, ..., T4 at 5
        w.wrote(f"T{i}", _state(3), position=i + 1, snapshot_len=100)
    w.wrote("T0", _state(4), position=6, snapshot_len=100)  # T0 written again: now the newest
    w.trim(held=None)  # the table has read back nothing: every state stays, over the bound
    assert len(w) == 5 and w.evictions == 0
    w.trim(held=3)  # batches up to position 3 read back: T1 and T2 may go, not T3, T4, T0
    assert list(w) == ["T3", "T4", "T0"]
    assert w.evictions == 2 and w.bytes == 3 * one
    w.trim(held=6)  # everything read back: the oldest go until the bound holds
    assert list(w) == ["T4", "T0"]
    assert w.bytes == 2 * one


def test_states_taken_out_by_the_sweep_leave_the_count() -> None:
    w = WrittenTerminals(max_bytes=1 << 20)
    w.wrote("A", _state(2), position=1, snapshot_len=50)
    w["B"] = _state(2)  # a state read from the table
    assert w.get("A") is not None and "B" in w
    assert w.pop("A").labels == _state(2).labels
    del w["B"]
    assert len(w) == 0 and w.bytes == 0
    w.wrote("C", _state(1), position=2, snapshot_len=40)
    w.clear()
    assert len(w) == 0 and w.bytes == 0
