"""Read-your-writes for terminal state: the scorer sees the labels it forwarded at once.

Terminal risk is built from the labels of every user, so a label does not reach it inside the
scoring loop. The loop forwards it to the terminal loop through an internal one-partition
topic; that loop applies it and writes the global terminal table, which every worker reads back
from its changelog (DEVELOPERS.md, "The live scorer"). A label counts for a transaction once it
has been known for ``label_allowance_ms`` (1 h). Live, the round trip takes milliseconds. Catching
up on a backlog an hour of event time passes in a few micro-batches, and transactions were
scored before the labels ahead of them had reached the table (``tests/integration/
test_terminal_catch_up.py``: all 240 scores differed from the backtest's).

The overlay keeps the labels this worker forwarded until the table it reads holds them, and a
transaction's terminal state is the table's with those labels applied on top. Applying a label
twice changes nothing (terminal state keeps one entry per transaction id), so a label the table
already holds may be applied again; the features count a label by its times alone, so the order
of application does not matter. Labels earlier in the same batch count too, as in a replay.

How the worker knows what the table holds (a position token):

* after each batch of states the terminal loop writes its *position* — the next offset of the
  terminal-labels topic it will apply — into the same changelog partition, under
  :data:`APPLIED_KEY` (the empty string, which no terminal id can be). A table holding position
  *n* holds every label forwarded below offset *n*: the changelog is read back in order;
* each batch's forwarded labels are a *group*; the producer's delivery reports give the group's
  offsets, and a group is dropped once the table's position is past its last one.

Other workers' labels, and those a previous process of this worker forwarded before a restart,
come from the terminal feed (``streams/terminal_feed.py``), which reads the terminal-labels topic
from the table's position on: :meth:`TerminalOverlay.add_fed` with each label's offset, dropped
once the table's position is past it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from modeling.features import FeatureEngine, TerminalState
from modeling.features.engine import INDEX_FROM
from modeling.records import Label

log = logging.getLogger("riskstream.worker")

APPLIED_KEY: Final = ""  # terminal ids are never empty (modeling/records.py)
MERGED_KEPT: Final = 64  # busy terminals' merged states kept for reuse (TerminalOverlay.merged)


def encode_position(next_offset: int) -> bytes:
    return b"%d" % next_offset


def decode_position(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


class Delivery(Protocol):
    """A delivery future (``asyncio.Future`` of aiokafka's ``RecordMetadata``)."""

    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def exception(self) -> BaseException | None: ...
    def result(self) -> Any: ...


@dataclass(slots=True)
class Group:
    """One batch's forwarded labels; ``batches``: its record batches once handed to the producer."""

    labels: list[Label]
    batches: list[tuple[Delivery, int]] | None = None  # (delivery future, records in the batch)
    last_offset: int | None = None  # set once settled


def _settled(group: Group) -> bool:
    """Every record batch of ``group`` was delivered (or failed); its last offset is known."""
    if group.batches is None:
        return False
    last = -1
    for fut, n in group.batches:
        if not fut.done():
            return False
        if fut.cancelled() or fut.exception() is not None:
            continue  # a failed delivery fails its input batch and crashes the worker
        offset = getattr(fut.result(), "offset", None)  # None: acks=0, no offsets
        if offset is not None and offset >= 0:
            last = max(last, offset + n - 1)
    group.last_offset = last
    return True


class TerminalOverlay:
    """This worker's forwarded labels that the terminal table may not hold yet.

    ``position()``: the table's position as the scorer sees it (None before the terminal loop
    wrote one). ``max_labels`` bounds the overlay while the terminal loop does not move (its owner
    down): the oldest groups go first, and are counted.
    """

    def __init__(
        self, engine: FeatureEngine, position: Callable[[], int | None], *, max_labels: int = 200_000
    ) -> None:
        self.engine = engine
        self.position = position
        self.max_labels = max_labels
        self._groups: deque[Group] = deque()
        self._open: list[Label] = []
        self._by_terminal: dict[str, deque[Label]] = {}
        # Labels read from the terminal-labels topic (other workers'), in offset order
        self._fed: deque[tuple[int, Label]] = deque()
        self._fed_by_terminal: dict[str, deque[Label]] = {}
        self.n_labels = 0
        self.dropped = 0  # labels dropped unapplied by the bound
        # terminal id -> (what it was merged from, the merged state): busy terminals only
        self._merged: dict[str, tuple[tuple[Any, ...], TerminalState]] = {}

    def add(self, label: Label) -> None:
        """A label the batch being prepared forwards: from now on its terminal state has it."""
        self._open.append(label)
        q = self._by_terminal.get(label.terminal_id)
        if q is None:
            q = self._by_terminal[label.terminal_id] = deque()
        q.append(label)
        self.n_labels += 1

    def add_fed(self, label: Label, offset: int) -> None:
        """A label another worker forwarded, read from the terminal-labels topic at ``offset``
        (offsets rise from call to call): on top of the table until its position is past it."""
        self._fed.append((offset, label))
        q = self._fed_by_terminal.get(label.terminal_id)
        if q is None:
            q = self._fed_by_terminal[label.terminal_id] = deque()
        q.append(label)
        self.n_labels += 1
        if self.n_labels > self.max_labels:
            self._drop_fed(bounded=True)

    def seal(self) -> Group | None:
        """The batch's labels as a group; None when it forwarded none. The caller sets its
        ``batches`` once it handed them to the producer."""
        if not self._open:
            return None
        group = Group(self._open)
        self._groups.append(group)
        self._open = []
        if self.n_labels > self.max_labels:
            self._drop_front(bounded=True)
        return group

    def prune(self) -> None:
        """Forget the labels the table holds (and groups whose delivery failed)."""
        if self._fed:
            pos = self.position()
            while self._fed and pos is not None and self._fed[0][0] < pos:
                self._drop_fed(bounded=False)
        self._prune_own()

    def _prune_own(self) -> None:
        groups = self._groups
        pos: int | None = None
        while groups and _settled(groups[0]):
            last = groups[0].last_offset
            if last is not None and last >= 0:
                if pos is None:
                    pos = self.position()
                if pos is None or last >= pos:
                    return
            self._drop_front(bounded=False)

    def _drop_fed(self, *, bounded: bool) -> None:
        while self._fed:
            _, lb = self._fed.popleft()
            q = self._fed_by_terminal[lb.terminal_id]
            q.popleft()
            if not q:
                del self._fed_by_terminal[lb.terminal_id]
            self.n_labels -= 1
            if not bounded:
                return
            self.dropped += 1
            if self.n_labels <= self.max_labels:
                return

    def _drop_front(self, *, bounded: bool) -> None:
        while self._groups:
            group = self._groups.popleft()
            for lb in group.labels:  # a terminal's labels are queued in group order
                q = self._by_terminal[lb.terminal_id]
                q.popleft()
                if not q:
                    del self._by_terminal[lb.terminal_id]
            self.n_labels -= len(group.labels)
            if not bounded:
                return
            self.dropped += len(group.labels)
            if self.n_labels <= self.max_labels:
                log.warning(
                    "terminal overlay: over %d labels the terminal table does not hold yet (is the "
                    "terminal loop running?); %d dropped so far, scored as the table has it",
                    self.max_labels,
                    self.dropped,
                )
                return

    def merged(self, terminal_id: str, table_state: TerminalState | None) -> TerminalState | None:
        """The terminal's state as the scorer must see it: the table's with this worker's
        pending labels on top. ``table_state`` is not changed."""
        pending = self._by_terminal.get(terminal_id)
        fed = self._fed_by_terminal.get(terminal_id) if self._fed_by_terminal else None
        if not pending and not fed:
            return table_state
        # The queues only grow at the back and shrink at the front: their first label and their
        # length say whether they changed. A busy terminal's merged state is reused while neither
        # they nor the table's state did (a copy of 10,000 labels costs more than its features).
        key = (table_state, _head(fed), len(fed or ()), _head(pending), len(pending or ()))
        hit = self._merged.get(terminal_id)
        if hit is not None and _same(hit[0], key):
            return hit[1]
        st = TerminalState() if table_state is None else table_state.copy()
        apply = self.engine.terminal_label
        for q in (fed, pending):
            if q:
                for lb in q:
                    apply(st, lb)
        if len(st.labels) >= INDEX_FROM:
            if len(self._merged) >= MERGED_KEPT:
                self._merged.clear()
            self._merged[terminal_id] = (key, st)
        return st


def _head(q: deque[Label] | None) -> Label | None:
    return q[0] if q else None


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Merged from the same table state, the same first labels and the same queue lengths."""
    return a[0] is b[0] and a[1] is b[1] and a[2] == b[2] and a[3] is b[3] and a[4] == b[4]
