"""Run the feature engine over an ordered event sequence with in-memory state.

This is the path the trainer and the backtest take. The live agents call the same
:class:`~modeling.features.engine.FeatureEngine` methods on state restored from their tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from modeling.features.engine import FeatureEngine, TxnFeatures
from modeling.features.state import TerminalState, UserState
from modeling.records import ClickEvent, Label, Transaction

Event = Transaction | ClickEvent | Label


class FeatureRunner:
    """In-memory user and terminal state driven event by event."""

    def __init__(self, engine: FeatureEngine) -> None:
        self.engine = engine
        self.users: dict[str, UserState] = {}
        self.terminals: dict[str, TerminalState] = {}
        self.duplicates = 0  # transactions skipped by run() as duplicates

    def _user(self, user_id: str) -> UserState:
        st = self.users.get(user_id)
        if st is None:
            st = self.users[user_id] = self.engine.new_user()
        return st

    def on_transaction(self, txn: Transaction) -> TxnFeatures:
        return self.engine.transaction(self._user(txn.user_id), txn, self.terminals.get(txn.terminal_id))

    def on_click(self, ev: ClickEvent) -> None:
        self.engine.click(self._user(ev.user_id), ev)

    def on_label(self, label: Label) -> None:
        self.engine.user_label(self._user(label.user_id), label)
        ts = self.terminals.get(label.terminal_id)
        if ts is None:
            ts = self.terminals[label.terminal_id] = TerminalState()
        self.engine.terminal_label(ts, label)

    def run(self, events: Iterable[Event]) -> Iterator[tuple[Transaction, TxnFeatures]]:
        """Feed ``events`` in order; yield each transaction with its features, but for a
        duplicate (a transaction id the user's state holds among its latest: counted in
        :attr:`duplicates`, skipped, as the live worker skips it)."""
        on_click, on_label = self.on_click, self.on_label
        engine, user, terminals = self.engine, self._user, self.terminals
        for ev in events:
            if isinstance(ev, Transaction):
                st = user(ev.user_id)
                if engine.duplicate(st, ev):
                    self.duplicates += 1
                    continue
                yield ev, engine.transaction(st, ev, terminals.get(ev.terminal_id))
            elif isinstance(ev, ClickEvent):
                on_click(ev)
            else:
                on_label(ev)
