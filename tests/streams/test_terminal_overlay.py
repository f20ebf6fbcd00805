"""TerminalOverlay: the scorer sees the labels it forwarded on top of the terminal table, and
forgets them once the table's position is past them."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from modeling.features import FeatureConfig, FeatureEngine, TerminalState
from modeling.features.engine import INDEX_FROM
from modeling.records import Label, Transaction
from streams.terminal_overlay import APPLIED_KEY, TerminalOverlay, decode_position, encode_position

DAY, HOUR = 86_400_000, 3_600_000
T = 1_530_000_000_000
ENGINE = FeatureEngine(FeatureConfig())


class Meta(NamedTuple):  # the field of aiokafka's RecordMetadata the overlay reads
    offset: int


class Fut:
    """A delivery future: pending until set."""

    def __init__(self, offset: int | None = None, error: BaseException | None = None) -> None:
        self._result = None if offset is None else Meta(offset)
        self._error = error
        self._done = offset is not None or error is not None

    def set(self, offset: int) -> None:
        self._result, self._done = Meta(offset), True

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self._error

    def result(self) -> Any:
        return self._result


def label(n: int, term: str = "t1", *, fraud: bool = True, days_ago: float = 8.0) -> Label:
    tx_time = T - int(days_ago * DAY) - n * 60_000
    return Label(f"x{n}", f"u{n}", term, fraud, tx_time, T - 2 * HOUR + n)


def terminal_features(ts: TerminalState | None) -> tuple[float, ...]:
    """The features of a transaction at T scored on ``ts`` (a new user: terminal features vary)."""
    return ENGINE.transaction(ENGINE.new_user(), Transaction("q", "uq", "t1", 10.0, T), ts).tab


def test_the_position_key_is_no_terminal_id_and_round_trips() -> None:
    assert APPLIED_KEY == ""  # terminal ids are validated non-empty (modeling/records.py)
    assert decode_position(encode_position(12345)) == 12345
    assert decode_position(None) is None
    assert decode_position(b"not a number") is None


def test_forwarded_labels_count_at_once_and_go_once_the_table_holds_them() -> None:
    table = TerminalState()
    for n in range(3):
        ENGINE.terminal_label(table, label(n, fraud=False))
    before = dict(table.labels)
    pos: list[int | None] = [None]
    ov = TerminalOverlay(ENGINE, lambda: pos[0])
    for n in range(3, 6):
        ov.add(label(n))
    assert ov.merged("t2", table) is table  # nothing pending there
    merged = ov.merged("t1", table)
    assert merged is not None and merged is not table and table.labels == before
    everything = TerminalState()
    for n in range(6):
        ENGINE.terminal_label(everything, label(n, fraud=n >= 3))
    assert terminal_features(merged) == terminal_features(everything)
    assert terminal_features(merged) != terminal_features(table)  # the frauds moved them

    group = ov.seal()
    assert group is not None and ov.seal() is None  # nothing forwarded since
    fut = Fut()
    group.batches = [(Fut(100), 2), (fut, 1)]  # offsets 100, 101 and, once delivered, 102
    ov.prune()
    assert ov.n_labels == 3  # a delivery still pending
    fut.set(102)
    pos[0] = 102
    ov.prune()
    assert ov.n_labels == 3  # the table holds offsets below 102 only
    pos[0] = 103
    ov.prune()
    assert ov.n_labels == 0 and ov.merged("t1", table) is table


def test_failed_or_offsetless_deliveries_leave_the_overlay() -> None:
    ov = TerminalOverlay(ENGINE, lambda: None)
    for fut in (Fut(error=RuntimeError("delivery failed")), Fut()):
        ov.add(label(1))
        group = ov.seal()
        assert group is not None
        group.batches = [(fut, 1)]
    ov._groups[1].batches[0][0].set(-1)  # type: ignore[index, attr-defined]  # acks=0: offset -1
    ov.prune()
    assert ov.n_labels == 0


def test_the_bound_drops_the_oldest_groups_and_counts_them() -> None:
    ov = TerminalOverlay(ENGINE, lambda: 0, max_labels=5)
    for g in range(3):
        for n in range(3):
            ov.add(label(10 * g + n, term=f"t{n}"))
        ov.seal()
    assert ov.n_labels == 3 and ov.dropped == 6
    assert ov.merged("t0", None) is not None  # the newest group's labels are still there
    assert len(ov.merged("t0", None).labels) == 1  # type: ignore[union-attr]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 40.0), st.booleans(), st.integers(0, 3), st.booleans(), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_the_table_and_the_overlay_together_give_the_features_of_all_labels(
    spec: list[tuple[float, bool, int, bool, bool]], rnd: Any
) -> None:
    """Labels of other workers in the table, this worker's in the overlay and some of them in the
    table too, applied there in any order: the merged state's features are those of every label
    applied in time order (a replay's)."""
    labels = [
        (Label(f"x{i}", "u", "t1", fraud, T - int(days * DAY), T - hours * HOUR), own, held)
        for i, (days, fraud, hours, own, held) in enumerate(spec)
    ]
    labels = [x for x in labels if x[0].label_time_ms >= x[0].transaction_time_ms]
    replay = TerminalState()
    for lb, _, _ in sorted(labels, key=lambda x: x[0].label_time_ms):
        ENGINE.terminal_label(replay, lb)
    in_table = [lb for lb, own, held in labels if held or not own]
    rnd.shuffle(in_table)
    table = TerminalState()
    for lb in in_table:
        ENGINE.terminal_label(table, lb)
    ov = TerminalOverlay(ENGINE, lambda: None)
    for lb, own, _ in labels:
        if own:
            ov.add(lb)
    assert terminal_features(ov.merged("t1", table)) == terminal_features(replay)


def test_a_busy_terminals_merged_state_is_reused_until_its_inputs_change() -> None:
    """Above INDEX_FROM labels the merged state is kept: the same object while the table's state
    and the terminal's queued labels are the same, a new one (with the right features) once
    either changed: a label added, one pruned, another table state, another worker's label."""
    table = TerminalState()
    for n in range(INDEX_FROM + 5):
        ENGINE.terminal_label(table, label(n, fraud=n % 4 == 0))
    pos: list[int | None] = [None]
    ov = TerminalOverlay(ENGINE, lambda: pos[0])
    own = [label(1000 + n) for n in range(3)]
    ov.add(own[0])
    first = ov.merged("t1", table)
    assert first is not None and first is not table and ov.merged("t1", table) is first

    def expect(merged: TerminalState | None, extra: list[Label], base: TerminalState = table) -> None:
        want = base.copy()
        for lb in extra:
            ENGINE.terminal_label(want, lb)
        assert terminal_features(merged) == terminal_features(want)

    ov.add(own[1])  # another label queued
    second = ov.merged("t1", table)
    assert second is not first
    expect(second, own[:2])
    group = ov.seal()
    assert group is not None
    ov.add(own[2])
    ov.seal()
    group.batches = [(Fut(10), 2)]
    pos[0] = 12
    ov.prune()  # the first group is in the table now: the queue's front moved
    third = ov.merged("t1", table)
    assert third is not second
    expect(third, own[2:])
    newer = table.copy()  # the table changed (same contents, another object)
    assert ov.merged("t1", newer) is not third
    ov.add_fed(label(2000, fraud=True), 50)  # another worker's label
    fourth = ov.merged("t1", newer)
    expect(fourth, [label(2000, fraud=True), own[2]], newer)
    assert ov.merged("t1", newer) is fourth


def test_a_real_asyncio_future_is_a_delivery() -> None:
    async def go() -> None:
        ov = TerminalOverlay(ENGINE, lambda: 1)
        ov.add(label(1))
        group = ov.seal()
        assert group is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        group.batches = [(fut, 1)]
        ov.prune()
        assert ov.n_labels == 1
        fut.set_result(Meta(0))
        ov.prune()
        assert ov.n_labels == 0

    asyncio.run(go())
