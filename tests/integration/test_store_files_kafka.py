"""The start-time check of user-state databases (streams/store_files.py) reading a real
changelog back a window at a time: past a window of deletes only, to the states before it;
a database one value off is found stale, one past every window it may read is not checked.
The whole worker through such a check: tests/integration/test_disk_store.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Scenario, produce, run

from streams.broker.topics import ensure_topics
from streams.store_files import CHECK_WINDOW, CHECK_WINDOWS, drop_stale, stored_offset
from streams.table_db import write


def _database(path: Path, items: dict[bytes, bytes], offset: int) -> None:
    from rocksdict import Options, Rdict

    db = Rdict(str(path), options=Options(raw_mode=True))
    try:
        write(db, items.items(), offset)
    finally:
        db.close()


@pytest.fixture
def changelog(kafka_broker: str, tmp_path: Path) -> tuple[Scenario, str, dict[bytes, bytes]]:
    """300 states, then 300 deletes of other keys: the last window before the end (offset
    599) holds deletes only."""
    sc = Scenario(kafka_broker, tmp_path / "registry", tmp_path, partitions=1)
    topic = f"{sc.settings().app_id}-user-state-changelog"
    run(ensure_topics(sc.bootstrap, {topic: 1}, configs={topic: {"cleanup.policy": "compact"}}))
    states = {f'"k{i}"'.encode(): f"state {i}".encode() for i in range(300)}
    records: list[tuple[bytes | None, bytes | None]] = [*states.items()]
    records += [(f'"z{i}"'.encode(), None) for i in range(300)]
    run(produce(sc.bootstrap, topic, records))  # type: ignore[arg-type]
    return sc, topic, states


def test_a_window_of_deletes_is_read_past_to_the_states_before_it(
    changelog: tuple[Scenario, str, dict[bytes, bytes]], tmp_path: Path
) -> None:
    sc, topic, states = changelog
    assert CHECK_WINDOW < 300  # the first window read back holds deletes only
    good, bad = tmp_path / "good.db", tmp_path / "bad.db"
    _database(good, states, 599)
    _database(bad, {**states, b'"k299"': b"state from elsewhere"}, 599)
    ok = run(drop_stale(sc.settings(), topic, {0: good}))[0]
    assert ok.kind == "ok" and f"{300 - (600 - 2 * CHECK_WINDOW)} states agree" in ok.reason
    assert good.exists() and stored_offset(good) == 599
    stale = run(drop_stale(sc.settings(), topic, {0: bad}))[0]
    assert stale.kind == "stale" and "key b'\"k299\"'" in stale.reason
    assert not bad.exists()


def test_a_database_whose_states_lie_past_every_window_is_not_checked_and_deleted(
    changelog: tuple[Scenario, str, dict[bytes, bytes]], tmp_path: Path
) -> None:
    sc, topic, states = changelog
    deletes = CHECK_WINDOW * CHECK_WINDOWS  # offsets read back at most
    run(produce(sc.bootstrap, topic, [(f'"y{i}"'.encode(), None) for i in range(deletes)]))  # type: ignore[misc]
    path = tmp_path / "far.db"
    _database(path, states, 599 + deletes)
    verdicts = run(drop_stale(sc.settings(), topic, {0: path}))
    assert verdicts[0].kind == "unchecked" and "hold no stored state to compare" in verdicts[0].reason
    assert not path.exists()
